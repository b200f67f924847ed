//! The exported server span of an API request, made directly with the OpenTelemetry
//! SDK, on both paths (the fast path and poem's), by the admission pipeline.
//!
//! Why not a `tracing` span bridged by `tracing-opentelemetry`, as before: that span
//! had to exist, with its fields, for *every* request before the sampler could say no,
//! and only the framework path made it, so traces on cost every request the slow path
//! (+60 % CPU, whatever the sampling rate). Here the sampler decides first
//! (`Tracer::build_with_context`: the provider's sampler, `OTEL_TRACES_SAMPLER`, with
//! the caller's `traceparent` as parent): an unsampled request gets a non-recording
//! span and nothing else, and stays on the fast path. Only a sampled request pays for
//! the attributes (OpenTelemetry's HTTP server conventions plus kvserve's own), the
//! name and the `traceresponse` header.

use std::borrow::Cow;
use std::fmt::Write as _;

use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Span;
use poem::http::{header, HeaderName, HeaderValue, Method, StatusCode, Version};
use poem::Response;

use super::head::Head;
use super::routes;
use super::state::HttpState;
use crate::telemetry;
use crate::telemetry::attributes::{cut, cut_lossy, value_limit};

/// W3C Trace Context Level 2: tells the caller which trace and span its request got.
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// A sampled request's span (`None`: traces off, or the sampler said no).
pub struct RequestTrace(Option<Sampled>);

struct Sampled {
    span: Span,
    /// The method as it goes into the span name (`HTTP` for one outside the standard set).
    method: &'static str,
}

impl RequestTrace {
    /// Asks the sampler about the request; only if it samples is the span filled in.
    pub fn start(head: &Head<'_>, request_id: &str) -> Self {
        let Some(tracer) = telemetry::tracer() else {
            return Self(None);
        };
        let parent = telemetry::remote_context(head.headers);
        let method = known_method(head.method);
        let builder = tracer
            .span_builder(Cow::Borrowed(method.unwrap_or("HTTP")))
            .with_kind(SpanKind::Server);
        let mut span = tracer.build_with_context(builder, &parent);
        if !span.is_recording() {
            return Self(None);
        }
        span.set_attributes(request_attributes(head, method, request_id));
        Self(Some(Sampled {
            span,
            method: method.unwrap_or("HTTP"),
        }))
    }

    /// Names the span after its route, records the answer and ends the span; a
    /// sampled answer carries `traceresponse`.
    pub fn finish(self, state: &HttpState, route: &'static str, resp: &mut Response) {
        let Some(Sampled { mut span, method }) = self.0 else {
            return;
        };
        let status = resp.status();
        // An unmatched path has no route: the span is named by the method alone.
        if route != "unmatched" {
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            span.set_status(Status::error(""));
        }
        if let Some(result) = lookup_result(route, status) {
            span.set_attribute(KeyValue::new("kvserve.lookup.result", result));
        }
        if let Some(dataset) = state.app.dataset.load().as_ref() {
            let generation = i64::try_from(dataset.info().generation).unwrap_or(i64::MAX);
            span.set_attribute(KeyValue::new("kvserve.dataset.generation", generation));
        }
        if let Ok(value) = HeaderValue::try_from(traceresponse(&span)) {
            resp.headers_mut().insert(TRACERESPONSE, value);
        }
        span.end();
    }
}

/// The standard methods by name; `None` for any other (the conventions' `_OTHER`),
/// so a client cannot choose span names.
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return None,
    })
}

/// What is known of a request before it is answered, as the HTTP server conventions
/// name it. What the client chose is cut to the attribute value limit as it is
/// copied, so a long head is not copied whole (the export queue cuts every span's
/// values again, for spans made elsewhere).
fn request_attributes(head: &Head<'_>, method: Option<&str>, request_id: &str) -> Vec<KeyValue> {
    let limit = value_limit();
    let text = |value: &str| cut(value, limit).to_owned();
    let mut attributes = Vec::with_capacity(12);
    match method {
        Some(method) => attributes.push(KeyValue::new("http.request.method", method.to_owned())),
        None => {
            attributes.push(KeyValue::new("http.request.method", "_OTHER"));
            attributes.push(KeyValue::new(
                "http.request.method_original",
                text(head.method.as_str()),
            ));
        }
    }
    attributes.push(KeyValue::new(
        "url.scheme",
        if head.secure { "https" } else { "http" },
    ));
    attributes.push(KeyValue::new("url.path", text(head.uri.path())));
    if let Some(query) = head.uri.query() {
        attributes.push(KeyValue::new("url.query", text(query)));
    }
    if let Some((host, port)) = head.headers.get(header::HOST).and_then(host_and_port) {
        attributes.push(KeyValue::new("server.address", text(&host)));
        attributes.push(KeyValue::new("server.port", port));
    }
    // The resolved client (`http::client`); its port only when it is the peer.
    if let Some(client) = head.client {
        attributes.push(KeyValue::new("client.address", client.ip().to_string()));
        if let Some(port) = client.port() {
            attributes.push(KeyValue::new("client.port", i64::from(port)));
        }
    }
    if let Some(agent) = head.headers.get(header::USER_AGENT) {
        let agent = cut_lossy(agent.as_bytes(), limit);
        attributes.push(KeyValue::new("user_agent.original", agent));
    }
    if let Some(version) = protocol_version(head.version) {
        attributes.push(KeyValue::new("network.protocol.version", version));
    }
    attributes.push(KeyValue::new("kvserve.request_id", text(request_id)));
    attributes
}

/// `Host` split into name and port (80, HTTP's, when it names none); `None` when it is
/// not a `host[:port]` at all.
fn host_and_port(value: &HeaderValue) -> Option<(String, i64)> {
    let authority: poem::http::uri::Authority = value.to_str().ok()?.parse().ok()?;
    let port = match authority.as_str().strip_prefix(authority.host())? {
        "" => 80,
        rest => rest.strip_prefix(':')?.parse::<u16>().ok()?,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_owned(), i64::from(port)))
}

fn protocol_version(version: Version) -> Option<&'static str> {
    Some(match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        _ => return None,
    })
}

/// What the lookup of a single-key route found, read from its answer: on those
/// routes each of these statuses has exactly one cause. `None` where no lookup was
/// made or the status does not say (a refusal before the lookup, a batch).
fn lookup_result(route: &str, status: StatusCode) -> Option<&'static str> {
    if !routes::is_single_key(route) {
        return None;
    }
    Some(match status.as_u16() {
        200 | 304 => "found",
        404 => "missing",
        400 | 422 => "invalid_key",
        421 => "misdirected",
        _ => return None,
    })
}

/// `traceresponse`'s value: version, trace id, this span's id, flags.
fn traceresponse(span: &Span) -> String {
    let context = span.span_context();
    let mut value = String::with_capacity(55);
    let _ = write!(
        value,
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_give_name_and_port() {
        let host = |v: &'static str| host_and_port(&HeaderValue::from_static(v));
        assert_eq!(host("example.com"), Some(("example.com".to_owned(), 80)));
        assert_eq!(host("127.0.0.1:8000"), Some(("127.0.0.1".to_owned(), 8000)));
        assert_eq!(host("[::1]:9"), Some(("::1".to_owned(), 9)));
        assert_eq!(host("a b"), None);
        assert_eq!(host("x:99999"), None);
    }

    #[test]
    fn only_single_key_routes_have_a_lookup_result() {
        assert_eq!(
            lookup_result("/v1/keys/{key}", StatusCode::NOT_MODIFIED),
            Some("found")
        );
        assert_eq!(
            lookup_result("/get_value/{key}", StatusCode::UNPROCESSABLE_ENTITY),
            Some("invalid_key")
        );
        assert_eq!(lookup_result("/v1/keys/batch", StatusCode::OK), None);
        assert_eq!(
            lookup_result("/v1/keys/{key}", StatusCode::TOO_MANY_REQUESTS),
            None
        );
    }

    #[test]
    fn methods_outside_the_standard_set_are_other() {
        assert_eq!(known_method(&Method::GET), Some("GET"));
        assert_eq!(known_method(&Method::from_bytes(b"BREW").unwrap()), None);
    }
}
