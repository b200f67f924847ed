//! The hot routes without the framework's per-request layers: an optimisation of the
//! reference path, never a second implementation of it.
//!
//! `serve` is called by `http::server` on hyper's request before poem sees it. For
//! `GET`/`HEAD` of `/v1/keys/{key}`, `/v1/keys/{key}/value` and `/get_value/{key}` it
//! runs the same admission pipeline (`http::pipeline`) and returns the very response
//! value the OpenAPI operation returns (`api::key_answer`, `api::value_answer`,
//! `legacy::answer`), turned into a response by the same poem-openapi code. What it
//! skips is poem's router, extractors and per-layer futures: measured, about half of
//! the CPU of a request (BENCHMARKS.md).
//!
//! It steps aside (returns `None`, and the operations answer) for every other request
//! and with `--fast-path false`. With traces on it stays: the pipeline makes the same
//! span on both paths (`http::trace`), and only for sampled requests.
//! `tests/it/differential.rs` sends generated requests to a server with and one
//! without it and compares the answers byte for byte.

use std::borrow::Cow;
use std::net::SocketAddr;

use poem::http::Method;
use poem::{IntoResponse, Response};

use super::api;
use super::encoding::Accept;
use super::legacy;
use super::pipeline::{self, Head};
use super::problem::Problem;
use super::routes::{self, HotRoute};
use super::state::HttpState;

/// The answer to `req` if it is a hot route, through the whole pipeline; `None` for any
/// other request, which then goes to poem.
/// `secure`: the connection is TLS.
pub fn serve<B>(
    state: &HttpState,
    req: &hyper::Request<B>,
    peer: SocketAddr,
    secure: bool,
) -> Option<Response> {
    let method = req.method();
    if !state.settings.fast_path || (method != Method::GET && method != Method::HEAD) {
        return None;
    }
    let route = HotRoute::of(req.uri().path())?;
    // The legacy route's paths are labelled as Starlette matched them, as on the
    // framework path (`routes::path_label`).
    let label = match route {
        HotRoute::Legacy(_) => routes::path_label(req.uri().path()),
        _ => route.label(),
    };
    let head = Head {
        method,
        uri: req.uri(),
        version: req.version(),
        headers: req.headers(),
        client: state.clients.resolve(req.headers(), Some(peer)),
        secure,
    };
    let exchange = pipeline::begin(state, &head);
    let resp = exchange
        .span
        .in_scope(|| match pipeline::admit(state, &head, pipeline::API) {
            Ok(admission) => {
                let mut resp = answer(state, &head, route);
                admission.stamp(state, &mut resp);
                resp
            }
            Err(refusal) => *refusal,
        });
    Some(pipeline::finish(
        state,
        exchange,
        method,
        label,
        Accept::of(head.headers),
        resp,
    ))
}

/// What the route's operation answers, from the raw key segment decoded as poem's
/// `Path` extractor decodes it; the legacy route's paths as Starlette matched them
/// (`legacy::route`).
fn answer(state: &HttpState, head: &Head<'_>, route: HotRoute<'_>) -> Response {
    let (uri, headers) = (head.uri, head.headers);
    if let HotRoute::Legacy(_) = route {
        if let Some(answer) = legacy::route(state, uri, headers, head.secure) {
            return answer.into_response();
        }
    }
    let path = uri.path();
    let raw = route.raw_key();
    let key: Cow<'_, str> = if raw.contains('%') {
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(key) => key,
            Err(_) => return Problem::invalid_path(path).into_response(),
        }
    } else {
        Cow::Borrowed(raw)
    };
    match route {
        HotRoute::Key(_) => api::key_answer(state, &key, headers).into_response(),
        HotRoute::Value(_) => api::value_answer(state, &key, headers).into_response(),
        HotRoute::Legacy(_) => legacy::answer(state, &key, headers).into_response(),
    }
}
