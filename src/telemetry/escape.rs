//! Text logs that cannot be forged: every control character a field carries (a reload
//! path with a newline, an error quoting a client's bytes, an ANSI escape) is written
//! escaped, so one event stays one line and nothing reaches a terminal raw.
//!
//! tracing-subscriber's own text format escapes ANSI only in the message, and newlines
//! nowhere; `%`-recorded values (`path = %path.display()`, `error = %err`) reach the
//! log as they are. JSON logs need none of this: the JSON encoder escapes.
//!
//! Two ways, one per audience. Logs for machines (files, collectors, a pipe) go
//! through [`EscapingWriter`], which checks each finished event once: on the access
//! log's hot path that is one scan of a line that needs nothing. Logs for a person at
//! a terminal keep their colours, which a writer could not tell from an attacker's
//! escapes, and are escaped field by field with [`EscapedFields`], which costs more
//! (an extra writer layer under every piece of every field).

use std::fmt::{self, Write};
use std::io;

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
        if clean(text.as_bytes()) {
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

/// Whether `bytes` certainly hold no control character: the common case, checked
/// without branching so it vectorizes. A C1 character is encoded as 0xC2 0x80..=0x9F,
/// so any 0xC2 (also the start of `°`, `£`, a no-break space) takes the slow way.
fn clean(bytes: &[u8]) -> bool {
    !bytes.iter().fold(false, |dirty, &b| {
        dirty | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    })
}

/// Wraps the text log's writer: every control character of an event is escaped except
/// the newline that ends it. tracing-subscriber's fmt layer hands each event over
/// whole, in one `write_all`, so the event's last byte is its end; an event that needs
/// escaping is written escaped in one call too, so lines of concurrent events never
/// interleave. Only for a layer without ANSI colours, which it would escape.
pub struct EscapingWriter<W>(pub W);

impl<W: io::Write> io::Write for EscapingWriter<W> {
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        let body = event.strip_suffix(b"\n").unwrap_or(event);
        if clean(body) {
            self.0.write_all(event)?;
            return Ok(event.len());
        }
        let text = String::from_utf8_lossy(body);
        let mut out = String::with_capacity(event.len() + 32);
        // Writing into a String cannot fail.
        let _ = Escaping(&mut out).write_str(&text);
        if body.len() < event.len() {
            out.push('\n');
        }
        self.0.write_all(out.as_bytes())?;
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
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

    /// One event with a hostile value in every kind of field, through a text layer
    /// escaping field by field (as on a terminal) or by its writer.
    fn hostile_event(by_fields: bool) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let layer = tracing_subscriber::fmt::layer().with_ansi(false);
        let evil = "x\ny\u{1b}[2J";
        let emit = || {
            let span =
                tracing::info_span!("outer", span_field = %evil, later = tracing::field::Empty);
            span.record("later", tracing::field::display(evil));
            let _entered = span.enter();
            tracing::info!(display = %evil, debug = ?evil, text = evil, "message {evil}");
        };
        if by_fields {
            let layer = layer
                .fmt_fields(EscapedFields)
                .with_writer(move || sink.clone());
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        } else {
            let layer = layer.with_writer(move || EscapingWriter(sink.clone()));
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        }
        let log = buffer.0.lock().unwrap().clone();
        String::from_utf8(log).unwrap()
    }

    /// Event fields, `%` and `?` values, the message and span fields (also fields
    /// recorded on the span later) all come out escaped, one line per event.
    #[test]
    fn every_field_of_a_text_event_is_escaped() {
        for by_fields in [true, false] {
            let log = hostile_event(by_fields);
            assert_eq!(log.matches('\n').count(), 1, "{log}");
            assert!(log.ends_with('\n'), "{log}");
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

    #[test]
    fn the_writer_keeps_clean_events_and_the_final_newline() {
        let mut out = Vec::new();
        io::Write::write_all(&mut EscapingWriter(&mut out), b"clean \xc2\xb0 line\n").unwrap();
        io::Write::write_all(&mut EscapingWriter(&mut out), b"a\nb\x1b\xc2\x9b\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "clean \u{b0} line\na\\nb\\x1b\\u{9b}\n"
        );
    }
}
