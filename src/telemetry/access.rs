//! The access line, written by hand. One line per request is the busiest log output
//! there is, and through `tracing` it cost a default-flags request about a third of
//! its CPU: each field went through `Visit`/`Debug` formatting, the timestamp through
//! a full calendar conversion, the line through the fmt layer's writer plumbing. Here
//! the line is formatted into a per-thread buffer (no allocation once warm) and pushed
//! to the same non-blocking log output ([`super::writer`]) as every other line.
//!
//! The bytes are tracing-subscriber's own, text and JSON alike (the tests below format
//! the same event both ways and compare), so log collectors see no change. Only the
//! plain case is taken: when a span is in scope (debug logs on, traces on) or stderr
//! is a terminal (colours), the caller logs through `tracing` as before.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::writer::NonBlocking;

/// The target access events have; `--log-level info,kvserve::access=off` silences it.
pub const TARGET: &str = "kvserve::access";

/// One request's access-log fields, in the order they are written.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub route: &'static str,
    pub status: u16,
    pub duration_us: u64,
    pub request_id: &'a str,
    /// The client's address, and the port when it is the peer's (`ip:port`; the bare
    /// address when it came from `X-Forwarded-For`).
    pub client: Option<(IpAddr, Option<u16>)>,
}

struct Sink {
    json: bool,
    out: NonBlocking,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Lets [`write`] take lines; `init` calls it once the subscriber that writes to `out`
/// (JSON, or text without colours) is installed.
pub(super) fn install(json: bool, out: NonBlocking) {
    let _ = SINK.set(Sink { json, out });
}

/// Writes the access line straight to the log output and says so, or returns `false`
/// when the line must go through `tracing` (a span to print around it, colours, or
/// logging not set up by `telemetry::init`). `in_span` tells whether the request's own
/// span is enabled (with traces on it always is). A line the log filter turns off
/// counts as written.
pub fn write(line: &AccessLine<'_>, in_span: bool) -> bool {
    let Some(sink) = SINK.get() else {
        return false;
    };
    if in_span || !tracing::Span::current().is_none() {
        return false;
    }
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return true;
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        format(&mut buffer, sink.json, SystemTime::now(), line);
        // The writer counts what it has to drop; nothing to report here.
        let _ = sink.out.push_line(&buffer);
    });
    true
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    /// The last whole second formatted, and its text up to the seconds' dot.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// Appends the line, `\n` included, as tracing-subscriber's fmt layer would write it.
fn format(out: &mut Vec<u8>, json: bool, now: SystemTime, line: &AccessLine<'_>) {
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":\"");
        json_str(out, line.method);
        out.extend_from_slice(b"\",\"route\":\"");
        json_str(out, line.route);
        out.extend_from_slice(b"\",\"status\":");
        decimal(out, u64::from(line.status));
        out.extend_from_slice(b",\"duration_us\":");
        decimal(out, line.duration_us);
        out.extend_from_slice(b",\"request_id\":\"");
        json_str(out, line.request_id);
        out.extend_from_slice(b"\",\"client\":\"");
        client(out, line.client);
        out.extend_from_slice(b"\",\"target\":\"kvserve::access\"}\n");
    } else {
        timestamp(out, now);
        out.extend_from_slice(b"  INFO kvserve::access: request method=");
        out.extend_from_slice(line.method.as_bytes());
        out.extend_from_slice(b" route=");
        debug_str(out, line.route);
        out.extend_from_slice(b" status=");
        decimal(out, u64::from(line.status));
        out.extend_from_slice(b" duration_us=");
        decimal(out, line.duration_us);
        // Quoted like the route: the caller chose it, and unquoted a `"x"client=…`
        // would read as a second `client=` field to a logfmt parser.
        out.extend_from_slice(b" request_id=");
        debug_str(out, line.request_id);
        out.extend_from_slice(b" client=");
        client(out, line.client);
        out.push(b'\n');
    }
}

/// RFC 3339 in UTC with microseconds (`2026-11-30T19:37:24.921007Z`), tracing-subscriber's
/// default timer. The calendar part is worked out once a second per thread.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            *second = (secs, calendar(secs));
        }
        out.extend_from_slice(&second.1);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for seconds since the epoch (civil-from-days, Howard
/// Hinnant's algorithm; years 0–9999, which `SystemTime` after 1970 stays within for
/// a long while).
fn calendar(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00.";
    two_or_more(&mut text[0..4], year.clamp(0, 9999) as u64);
    two_or_more(&mut text[5..7], month as u64);
    two_or_more(&mut text[8..10], day as u64);
    two_or_more(&mut text[11..13], rest / 3600);
    two_or_more(&mut text[14..16], rest / 60 % 60);
    two_or_more(&mut text[17..19], rest % 60);
    text
}

/// Writes the low `out.len()` decimal digits of `n`, zero-padded.
fn two_or_more(out: &mut [u8], mut n: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A `&str` field as `DefaultFields` writes it: `Debug`, quoted.
fn debug_str(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| (b.is_ascii_graphic() && b != b'"' && b != b'\\') || b == b' ')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        display(out, format_args!("{text:?}"));
    }
}

/// A string as serde_json escapes it (`crate::json`, the answers' escaper).
fn json_str(out: &mut Vec<u8>, text: &str) {
    crate::json::escape_json(out, text.as_bytes());
}

fn client(out: &mut Vec<u8>, client: Option<(IpAddr, Option<u16>)>) {
    match client {
        Some((ip, Some(port))) => display(out, SocketAddr::new(ip, port)),
        Some((ip, None)) => display(out, ip),
        None => out.push(b'-'),
    }
}

fn display(out: &mut Vec<u8>, value: impl Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// tracing-subscriber's default timer, held at one instant.
    struct At(SystemTime);

    impl FormatTime for At {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            let mut out = Vec::new();
            timestamp(&mut out, self.0);
            w.write_str(std::str::from_utf8(&out).unwrap())
        }
    }

    /// What the `tracing` event `request_log` used to emit, through the layers
    /// `telemetry::init` builds (text for machines, JSON).
    fn through_tracing(json: bool, now: SystemTime, line: &AccessLine<'_>) -> Vec<u8> {
        let captured = Captured::default();
        let out = captured.clone();
        let layer: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
            match json {
                false => Box::new(
                    tracing_subscriber::fmt::layer()
                        .with_writer(move || super::super::escape::EscapingWriter(out.clone()))
                        .with_ansi(false)
                        .with_timer(At(now)),
                ),
                true => Box::new(
                    tracing_subscriber::fmt::layer()
                        .with_writer(move || out.clone())
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_timer(At(now)),
                ),
            };
        let subscriber = tracing_subscriber::registry().with(layer);
        let client = ClientText(line.client);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "kvserve::access",
                method = %line.method,
                route = line.route,
                status = line.status,
                duration_us = line.duration_us,
                request_id = line.request_id,
                client = %client,
                "request"
            );
        });
        let bytes = captured.0.lock().unwrap().clone();
        bytes
    }

    struct ClientText(Option<(IpAddr, Option<u16>)>);

    impl Display for ClientText {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                Some((ip, Some(port))) => SocketAddr::new(ip, port).fmt(f),
                Some((ip, None)) => ip.fmt(f),
                None => f.write_str("-"),
            }
        }
    }

    fn by_hand(json: bool, now: SystemTime, line: &AccessLine<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        super::format(&mut out, json, now, line);
        out
    }

    #[test]
    fn lines_are_byte_for_byte_what_tracing_writes() {
        let ids = [
            "be9a5edc-000000000000",
            "a\"b\\c",
            "x",
            "{}[]<>'`~!@#$%^&*()=+|;:,.?/",
            "\"x\"client=6.6.6.6",
        ];
        let peer = |text: &str| {
            let addr: SocketAddr = text.parse().unwrap();
            Some((addr.ip(), Some(addr.port())))
        };
        let clients = [
            peer("127.0.0.1:36862"),
            peer("[::1]:8000"),
            peer("[fe80::1%2]:1"),
            Some(("2001:db8::7".parse().unwrap(), None)),
            Some(("203.0.113.7".parse().unwrap(), None)),
            None,
        ];
        let now = UNIX_EPOCH + Duration::new(1_796_067_444, 921_007_123);
        for json in [false, true] {
            for (i, id) in ids.iter().enumerate() {
                for client in clients {
                    for (method, route) in [
                        ("GET", "/v1/keys/{key}"),
                        ("FOO", "/get_value/{key}"),
                        ("POST", "/v1/keys/batch"),
                        ("GET", "other"),
                    ] {
                        let line = AccessLine {
                            method,
                            route,
                            status: [200, 404, 405, 429, 200][i],
                            duration_us: [0, 9, 310, u64::MAX, 1][i],
                            request_id: id,
                            client,
                        };
                        let want = through_tracing(json, now, &line);
                        let got = by_hand(json, now, &line);
                        assert_eq!(
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(&want),
                            "json: {json}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn timestamps_match_tracing_subscribers_calendar() {
        // Leap days, year ends, the epoch, and now-ish.
        for (secs, text) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_709_251_199, "2024-02-29T23:59:59."),
            (1_735_689_599, "2024-12-31T23:59:59."),
            (1_796_067_444, "2026-11-30T19:37:24."),
            (4_102_444_800, "2100-01-01T00:00:00."),
        ] {
            assert_eq!(
                std::str::from_utf8(&calendar(secs)).unwrap(),
                text,
                "{secs}"
            );
        }
        let mut out = Vec::new();
        timestamp(&mut out, UNIX_EPOCH + Duration::new(86_400, 5_000));
        assert_eq!(out, b"1970-01-02T00:00:00.000005Z");
    }

    proptest::proptest! {
        /// Against another implementation of the same format, over four centuries.
        #[test]
        fn timestamps_agree_with_humantime(secs in 0u64..12_000_000_000, nanos in 0u32..1_000_000_000) {
            let now = UNIX_EPOCH + Duration::new(secs, nanos);
            let mut out = Vec::new();
            timestamp(&mut out, now);
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_micros(now).to_string()
            );
        }
    }
}
