//! The access log of the API listener: a request id for every request (the caller's
//! `X-Request-Id` when it sends a usable one), echoed in the answer, a tracing span that
//! every log line of the request carries, and one access-log event. The admission
//! pipeline (`http::pipeline`) opens and closes it.
//!
//! Access-log events have the target `kvserve::access`, so an operator can silence
//! them alone: `--log-level info,kvserve::access=off`. The plain line (no span, no
//! colours: the default) is formatted by `telemetry::access`, the same bytes tracing
//! would write, at a fraction of the cost.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use poem::http::{HeaderMap, HeaderName, HeaderValue, Method};
use poem::Response;
use tracing::Span;

use super::client::ClientAddr;
use crate::telemetry::{self, access, access::AccessLine};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied request id kept; longer ones are replaced, so a client
/// cannot inflate every log line.
const MAX_REQUEST_ID: usize = 128;

/// One request's entry in the access log, from its head to its answer. Opened and
/// closed by the admission pipeline (`http::pipeline`) on both paths.
pub struct Access {
    started: Instant,
    id: HeaderValue,
    method: Method,
    client: Client,
}

impl Access {
    /// Starts the clock and settles the request id: the caller's, if usable.
    pub fn begin(headers: &HeaderMap, method: &Method, client: Option<ClientAddr>) -> Self {
        let id = headers
            .get(&REQUEST_ID)
            .filter(|v| usable_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        Self {
            started: Instant::now(),
            id,
            method: method.clone(),
            client: Client(client.map(|c| (c.ip(), c.port()))),
        }
    }

    /// When the request began, for the fast path's metrics (one clock read for both).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request id as text (visible ASCII: checked or made so).
    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }

    /// The span every log line of the request carries. Created at DEBUG, so it costs
    /// nothing unless debug logs are on; the exported trace span is `http::trace`'s.
    pub fn span(&self, path: &str) -> Span {
        let (method, client) = (&self.method, &self.client);
        tracing::debug_span!(
            telemetry::REQUEST_SPAN,
            request_id = self.id(),
            method = %method,
            path = %path,
            client = %client
        )
    }

    /// Logs the answer and tags it with the request id.
    pub fn finish(self, span: &Span, route: &'static str, resp: &mut Response) {
        let line = AccessLine {
            method: self.method.as_str(),
            route,
            status: resp.status().as_u16(),
            duration_us: self.started.elapsed().as_micros() as u64,
            request_id: self.id(),
            client: self.client.0,
        };
        log(&line, span);
        resp.headers_mut().insert(REQUEST_ID, self.id);
    }
}

/// The access-log entry of a request hyper could not parse (`http::conn` answers it):
/// method `-`, route `unparsed`, a new request id, which the answer carries and which
/// is returned. `began`: when its head began to arrive.
pub fn unparsed(status: u16, began: Instant, client: SocketAddr) -> HeaderValue {
    let id = new_request_id();
    let line = AccessLine {
        method: "-",
        route: super::routes::UNPARSED,
        status,
        duration_us: began.elapsed().as_micros() as u64,
        request_id: id.to_str().unwrap_or_default(),
        client: Some((client.ip(), Some(client.port()))),
    };
    log(&line, &Span::none());
    id
}

/// Writes one access line: by hand when plain, through tracing when a span (`span`,
/// if enabled) or colours go with it.
fn log(line: &AccessLine<'_>, span: &Span) {
    if !access::write(line, !span.is_disabled()) {
        tracing::info!(
            target: access::TARGET,
            parent: span,
            method = %line.method,
            route = line.route,
            status = line.status,
            duration_us = line.duration_us,
            request_id = line.request_id,
            client = %Client(line.client),
            "request"
        );
    }
}

/// The resolved client address (`ip:port` for the peer, the bare address from
/// `X-Forwarded-For`), formatted only if a log line or span asks for it.
struct Client(Option<(IpAddr, Option<u16>)>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((ip, Some(port))) => SocketAddr::new(ip, port).fmt(f),
            Some((ip, None)) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Visible ASCII only, and not too long: it goes into headers and logs as is.
fn usable_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique id: a random prefix chosen at start-up and a counter, which is
/// cheaper than a random UUID per request and just as unique for correlating logs.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(rand::random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Formatted by hand: `format!` showed up in profiles of the hot path.
    let mut text = [b'-'; 21];
    hex_digits(u64::from(*prefix), &mut text[..8]);
    hex_digits(n, &mut text[9..]);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Writes the low `out.len()` hex digits of `n` into `out`, most significant first.
fn hex_digits(mut n: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_must_be_short_visible_ascii() {
        assert!(usable_id(b"abc-123"));
        assert!(!usable_id(b""));
        assert!(!usable_id(b"has space"));
        assert!(!usable_id(&[b'a'; 129]));
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn generated_ids_are_prefix_dash_counter_in_hex() {
        let id = new_request_id();
        let text = id.to_str().unwrap();
        let (prefix, counter) = text.split_once('-').unwrap();
        assert_eq!((prefix.len(), counter.len()), (8, 12), "{text}");
        assert!(u32::from_str_radix(prefix, 16).is_ok(), "{text}");
        assert!(u64::from_str_radix(counter, 16).is_ok(), "{text}");
        let mut out = [0; 6];
        hex_digits(0xa0bc, &mut out);
        assert_eq!(&out, b"00a0bc");
    }
}
