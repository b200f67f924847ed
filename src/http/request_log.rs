//! The outermost layer of the API listener: a request id for every request (the
//! caller's `X-Request-Id` when it sends a usable one), echoed in the answer, a tracing
//! span that every log line of the request carries, and one access-log event.
//!
//! Access-log events have the target `kvserve::access`, so an operator can silence
//! them alone: `--log-level info,kvserve::access=off`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use poem::http::{HeaderName, HeaderValue};
use poem::{Endpoint, Middleware, Request, Response};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::route_label;
use crate::telemetry;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied request id kept; longer ones are replaced, so a client
/// cannot inflate every log line.
const MAX_REQUEST_ID: usize = 128;

pub struct RequestLog;

impl<E: Endpoint<Output = Response>> Middleware<E> for RequestLog {
    type Output = RequestLogEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RequestLogEndpoint(ep)
    }
}

pub struct RequestLogEndpoint<E>(E);

impl<E: Endpoint<Output = Response>> Endpoint for RequestLogEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let id = req
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| usable_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        let id_text = id.to_str().unwrap_or_default();
        let method = req.method().clone();
        let client = Client(req.remote_addr().clone());
        // With traces on, the span is the exported server span and must exist; without,
        // it only carries the request id into log lines of the request, so it is created
        // at DEBUG and costs nothing unless debug logs are on.
        let span = if telemetry::traces_enabled() {
            tracing::info_span!(
                "request",
                request_id = %id_text,
                method = %method,
                path = %req.uri().path(),
                client = %client,
                // OpenTelemetry conventions.
                otel.kind = "server",
                http.request.method = %method,
                http.route = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            )
        } else {
            tracing::debug_span!("request", request_id = %id_text, method = %method, path = %req.uri().path(), client = %client)
        };
        if let Some(parent) = telemetry::remote_context(req.headers()) {
            let _ = span.set_parent(parent);
        }
        let mut resp = self
            .0
            .call(req)
            .instrument(span.clone())
            .await
            .unwrap_or_else(|err| err.into_response());
        let route = route_label(&resp);
        if telemetry::traces_enabled() {
            // The span started before routing; rename it now the route is known.
            span.context()
                .span()
                .update_name(format!("{method} {route}"));
            span.record("http.route", route);
            span.record(
                "http.response.status_code",
                i64::from(resp.status().as_u16()),
            );
        }
        tracing::info!(
            target: "kvserve::access",
            parent: &span,
            method = %method,
            route,
            status = resp.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            request_id = %id_text,
            client = %client,
            "request"
        );
        resp.headers_mut().insert(REQUEST_ID, id);
        Ok(resp)
    }
}

/// The peer address, formatted only if a log line or span asks for it.
struct Client(poem::web::RemoteAddr);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_socket_addr() {
            Some(addr) => addr.fmt(f),
            None => self.0.fmt(f),
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
    HeaderValue::from_str(&format!("{prefix:08x}-{n:012x}"))
        .unwrap_or(HeaderValue::from_static("unknown"))
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
}
