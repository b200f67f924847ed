//! The hot routes without the framework's per-request layers.
//!
//! `GET`/`HEAD` of `/v1/keys/{key}`, `/v1/keys/{key}/value` and `/get_value/{key}` are
//! matched here, before poem's router and poem-openapi's extractors, and answered from
//! the same functions the OpenAPI operations call (`api::lookup`, `legacy::answer`), so
//! the contract has one implementation and the spec still describes these routes.
//!
//! Two entries: `serve`, called by `http::server` on hyper's request before poem sees
//! it, makes the checks of the API endpoint's middleware itself (limits, auth, rate
//! limit, metrics, access log, security headers: the same functions the middleware
//! calls); `FastRoutes`, a poem middleware, answers the same routes inside the full
//! chain when `serve` steps aside (with traces on: the exported span needs the chain).
//! Measured, the framework path costs about twice the CPU of a bare hyper server per
//! request; this path is what makes the difference (see BENCHMARKS.md).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use poem::http::{header, HeaderMap, HeaderValue, Method, Uri};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::api::{lookup, IfNoneMatch, Lookup, Shape};
use super::auth::{self, SCOPE_READ};
use super::legacy::{self, LegacyAnswer};
use super::problem::{Problem, ProblemKind};
use super::ratelimit::Standings;
use super::request_log::Access;
use super::AppState;
use crate::metrics::{InFlight, RouteLabel};
use crate::telemetry;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const DEPRECATION: HeaderValue = HeaderValue::from_static("true");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotRoute<'a> {
    Key(&'a str),
    Value(&'a str),
    Legacy(&'a str),
}

impl HotRoute<'_> {
    fn label(self) -> &'static str {
        match self {
            HotRoute::Key(_) => "/v1/keys/{key}",
            HotRoute::Value(_) => "/v1/keys/{key}/value",
            HotRoute::Legacy(_) => "/get_value/{key}",
        }
    }
}

/// The route template of `path` if it is a hot route, for metrics and the access log
/// of answers given before routing.
pub fn hot_route_label(path: &str) -> Option<&'static str> {
    match_path(path).map(HotRoute::label)
}

/// Which hot route `path` is, with its raw (still percent-encoded) key segment.
fn match_path(path: &str) -> Option<HotRoute<'_>> {
    if let Some(rest) = path.strip_prefix("/v1/keys/") {
        return match rest.split_once('/') {
            None if rest.is_empty() || rest == "batch" => None,
            None => Some(HotRoute::Key(rest)),
            Some((key, "value")) => Some(HotRoute::Value(key)),
            Some(_) => None,
        };
    }
    let key = path.strip_prefix("/get_value/")?;
    (!key.is_empty() && !key.contains('/')).then_some(HotRoute::Legacy(key))
}

pub struct FastRoutes(pub Arc<AppState>);

impl<E: Endpoint<Output = Response>> Middleware<E> for FastRoutes {
    type Output = FastRoutesEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        FastRoutesEndpoint {
            inner: ep,
            state: self.0.clone(),
        }
    }
}

pub struct FastRoutesEndpoint<E> {
    inner: E,
    state: Arc<AppState>,
}

impl<E: Endpoint<Output = Response>> Endpoint for FastRoutesEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let method = req.method();
        if method != Method::GET && method != Method::HEAD {
            return self.inner.call(req).await;
        }
        let Some(route) = match_path(req.uri().path()) else {
            return self.inner.call(req).await;
        };
        Ok(answer(&self.state, req.uri(), req.headers(), route))
    }
}

/// Answers a hot-route request from hyper's request, with every check the API
/// endpoint's layers would make, in their order; `None` for any other request, which
/// then goes to poem, and for every request with `--fast-path false`.
pub fn serve<B>(state: &AppState, req: &hyper::Request<B>, peer: SocketAddr) -> Option<Response> {
    let method = req.method();
    if !state.settings.fast_path
        || (method != Method::GET && method != Method::HEAD)
        || telemetry::traces_enabled()
    {
        return None;
    }
    let (uri, headers) = (req.uri(), req.headers());
    let route = match_path(uri.path())?;
    let access = Access::begin(headers, method, Some(peer));
    let span = access.span(uri.path());
    let metrics = &state.metrics;
    let started = access.started();
    let in_flight = InFlight::enter(&metrics.http_in_flight);
    let mut resp = span.in_scope(|| admitted(state, uri, headers, peer, route));
    drop(in_flight);
    // Refusals by the limits, rate limits or authentication carry no label; the
    // route is known all the same.
    let route = route.label();
    metrics.observe(method, route, resp.status(), started);
    access.finish(&span, route, &mut resp);
    resp.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, super::NOSNIFF);
    Some(resp)
}

/// The middle layers of `http::api_endpoint`, in their order: limits, the per-address
/// rate limit, authentication, the per-subject rate limit.
fn admitted(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
    route: HotRoute<'_>,
) -> Response {
    let _permit = match state.limits.admit(uri, headers) {
        Ok(permit) => permit,
        Err(refusal) => return *refusal,
    };
    let Some(limits) = &state.rate_limit else {
        return match auth::authorize(state, uri, headers, SCOPE_READ, super::is_open_path) {
            Ok(_) => answer(state, uri, headers, route),
            Err(refusal) => *refusal,
        };
    };
    let (metrics, peer) = (&state.metrics, Some(peer.ip()));
    let mut standings = Standings::default();
    if let Err(refused) = limits.check_peer(&mut standings, metrics, headers, peer) {
        return limits.refusal(refused, &standings);
    }
    let mut resp = match auth::authorize(state, uri, headers, SCOPE_READ, super::is_open_path) {
        Ok(principal) => {
            match limits.check_subject(&mut standings, metrics, principal.as_ref(), headers, peer) {
                Ok(()) => answer(state, uri, headers, route),
                Err(refused) => return limits.refusal(refused, &standings),
            }
        }
        Err(refusal) => *refusal,
    };
    limits.stamp(&standings, resp.headers_mut());
    resp
}

/// The answer of a hot route, labelled with its route for metrics and the access log.
fn answer(state: &AppState, uri: &Uri, headers: &HeaderMap, route: HotRoute<'_>) -> Response {
    let mut resp = lookup_answer(state, uri, headers, route);
    resp.set_data(RouteLabel(route.label()));
    resp
}

fn lookup_answer(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    route: HotRoute<'_>,
) -> Response {
    let (HotRoute::Key(raw) | HotRoute::Value(raw) | HotRoute::Legacy(raw)) = route;
    let key: Cow<'_, str> = if raw.contains('%') {
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(key) => key,
            Err(_) => {
                let detail = format!(
                    "the path {} is not valid UTF-8 once percent-decoded",
                    uri.path()
                );
                return Problem::new(ProblemKind::InvalidPath, detail).into_response();
            }
        }
    } else {
        Cow::Borrowed(raw)
    };
    let if_none_match = || IfNoneMatch::of(headers);
    match route {
        HotRoute::Key(_) => v1(
            state,
            lookup(state, &key, if_none_match(), Shape::Json),
            JSON,
        ),
        HotRoute::Value(_) => v1(
            state,
            lookup(state, &key, if_none_match(), Shape::Value),
            TEXT,
        ),
        HotRoute::Legacy(_) => legacy_response(legacy::answer(state, &key)),
    }
}

fn v1(state: &AppState, found: Lookup, content_type: HeaderValue) -> Response {
    let cache_control = state.settings.cache_control_header.clone();
    match found {
        Lookup::Hit { body, etag } => Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ETAG, etag)
            .header(header::CACHE_CONTROL, cache_control)
            .body(body),
        Lookup::NotModified { etag } => Response::builder()
            .status(poem::http::StatusCode::NOT_MODIFIED)
            .header(header::ETAG, etag)
            .header(header::CACHE_CONTROL, cache_control)
            .finish(),
        Lookup::Failed(problem) => problem.into_response(),
    }
}

fn legacy_response(found: LegacyAnswer) -> Response {
    let link = |link: String| HeaderValue::from_str(&link).unwrap_or(HeaderValue::from_static(""));
    match found {
        LegacyAnswer::Found { body, link: to } => Response::builder()
            .header(header::CONTENT_TYPE, JSON)
            .header("deprecation", DEPRECATION)
            .header(header::LINK, link(to))
            .body(body),
        LegacyAnswer::NotFound { link: to } => Response::builder()
            .status(poem::http::StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, JSON)
            .header("deprecation", DEPRECATION)
            .header(header::LINK, link(to))
            .body(legacy::NOT_FOUND_BODY),
        LegacyAnswer::Invalid(body) => Response::builder()
            .status(poem::http::StatusCode::UNPROCESSABLE_ENTITY)
            .header(header::CONTENT_TYPE, JSON)
            .header("deprecation", DEPRECATION)
            .body(body),
        LegacyAnswer::Unavailable(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_paths() {
        assert_eq!(match_path("/v1/keys/abc"), Some(HotRoute::Key("abc")));
        assert_eq!(
            match_path("/v1/keys/abc/value"),
            Some(HotRoute::Value("abc"))
        );
        assert_eq!(match_path("/v1/keys//value"), Some(HotRoute::Value("")));
        assert_eq!(match_path("/get_value/abc"), Some(HotRoute::Legacy("abc")));
        for other in [
            "/v1/keys/",
            "/v1/keys/batch",
            "/v1/keys/a/b",
            "/v1/keys/a/value/x",
            "/get_value/",
            "/get_value/a/b",
            "/docs",
        ] {
            assert_eq!(match_path(other), None, "{other}");
        }
    }
}
