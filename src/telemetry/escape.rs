//! Text logs that cannot be forged: every control character a field carries (a reload
//! path with a newline, an error quoting a client's bytes, an ANSI escape) is written
//! escaped, so one event stays one line and nothing reaches a terminal raw.
//!
//! tracing-subscriber's own text format escapes ANSI only in the message, and newlines
//! nowhere; `%`-recorded values (`path = %path.display()`, `error = %err`) reach the
//! log as they are. JSON logs need none of this: the JSON encoder escapes.

use std::fmt::{self, Write};

use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Formats fields exactly as tracing-subscriber's `DefaultFields` does (`name=value`,
/// the message first, unnamed) but through [`Escaping`]. The text layer formats both
/// event fields and span fields with it, so both are escaped.
///
/// Field names lose the italics `DefaultFields` gives them on a terminal: the writer
/// that would carry the colour setting cannot be built outside tracing-subscriber.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaping = Escaping(&mut writer);
        let mut visitor = DefaultVisitor::new(Writer::new(&mut escaping), true);
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// A `fmt::Write` that escapes control characters (C0, DEL and C1, what
/// `char::is_control` says) on their way through: `\n`, `\r`, `\t` as such, the others
/// as `\x1b` or `\u{9b}`. Backslashes are left alone, so `Debug`-quoted values, which
/// already escape, pass unchanged.
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // The common case, on the access log's hot path: nothing to escape. A C1
        // character is encoded as 0xC2 0x80..=0x9F, so 0xC2 sends us the slow way.
        if !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(text);
        }
        let mut start = 0;
        for (at, c) in text.char_indices() {
            if !c.is_control() {
                continue;
            }
            self.0.write_str(&text[start..at])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x80 => write!(self.0, "\\x{:02x}", c as u32)?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            start = at + c.len_utf8();
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        Escaping(&mut out).write_str(text).unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain é ✓ \\n"), "plain é ✓ \\n");
        assert_eq!(
            escaped("a\nb\r\tc\u{1b}[2J\u{7f}\u{0}\u{9b}é"),
            r"a\nb\r\tc\x1b[2J\x7f\x00\u{9b}é"
        );
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Event fields, `%` and `?` values, the message and span fields (also fields
    /// recorded on the span later) all come out escaped, one line per event.
    #[test]
    fn every_field_of_a_text_event_is_escaped() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapedFields)
                .with_ansi(false)
                .with_writer(move || sink.clone()),
        );
        let evil = "x\ny\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("outer", span_field = %evil, later = tracing::field::Empty);
            span.record("later", tracing::field::display(evil));
            let _entered = span.enter();
            tracing::info!(display = %evil, debug = ?evil, text = evil, "message {evil}");
        });
        let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches('\n').count(), 1, "{log}");
        assert!(!log.contains('\u{1b}'), "{log}");
        for needle in [
            r"span_field=x\ny\x1b[2J",
            r"later=x\ny\x1b[2J",
            r"display=x\ny\x1b[2J",
            r#"debug="x\ny\u{1b}[2J""#,
            r"message x\ny\x1b[2J",
        ] {
            assert!(log.contains(needle), "{needle} in {log}");
        }
    }
}
