//! The admission pipeline of the API listener, written once as plain functions in the
//! order of the contract (docs/ARCHITECTURE.md §2):
//!
//! 1. `begin`: request id, access-log span, trace span (`http::trace`), in-flight gauge;
//! 2. `admit`: request limits and shedding → per-address rate limit → authentication →
//!    per-subject rate limit, each a refusal that ends the request;
//! 3. the route answers (the OpenAPI operations, or the fast path for hot routes);
//! 4. `Admission::stamp`: the rate-limit fields on the answer;
//! 5. `finish`: compression, the unsent-answer budget, request metrics, trace span,
//!    access-log event, request id and `nosniff` headers.
//!
//! Both paths call exactly these: `http::fast::serve` from hyper's request, and
//! `through_framework` (the poem side, one `around` layer) for everything else. A new
//! check goes into `admit`, nowhere else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, Span};

pub use super::head::Head;

use super::auth::{AuthFailure, Principal, SCOPE_READ};
use super::conn::RefusalLog;
use super::encoding::{self, Accept};
use super::host;
use super::metrics::InFlight;
use super::ratelimit::{Refused, Standings};
use super::request_log::{self, Access};
use super::routes;
use super::state::HttpState;
use super::trace::RequestTrace;

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// Who may pass on a listener: the scope a token needs, and the paths open to all.
#[derive(Clone, Copy)]
pub struct Policy {
    pub scope: &'static str,
    pub is_open: fn(&str) -> bool,
}

/// The API listener's: `kv:read`, except the spec and its viewer.
pub const API: Policy = Policy {
    scope: SCOPE_READ,
    is_open: routes::is_open_path,
};

/// One request from its head to its answer: the access-log entry, its log span, its
/// trace span if sampled, and the in-flight count (left when dropped, also if the
/// client goes away mid-answer).
pub struct Exchange {
    access: Access,
    pub span: Span,
    trace: RequestTrace,
    started: Instant,
    _in_flight: InFlight,
}

/// Step 1, for every request.
pub fn begin(state: &HttpState, head: &Head<'_>) -> Exchange {
    let access = Access::begin(head.headers, head.method, head.client);
    let span = access.span(head.uri.path());
    let trace = RequestTrace::start(head, access.id());
    Exchange {
        started: access.started(),
        access,
        span,
        trace,
        _in_flight: state.metrics.enter(),
    }
}

/// The answer that ends a request at a check (boxed: refusals are rare and a
/// `Response` is big).
pub type Refusal = Box<Response>;

/// A request that passed every check: what it holds until its answer is made.
pub struct Admission {
    /// The `--max-in-flight` slot.
    _permit: Option<OwnedSemaphorePermit>,
    standings: Option<Standings>,
}

/// Step 2: the checks, cheapest and least trusting first. `Err` is the refusal to send.
pub fn admit(state: &HttpState, head: &Head<'_>, policy: Policy) -> Result<Admission, Refusal> {
    host::check(head.version, head.headers).map_err(|problem| Box::new(problem.into_response()))?;
    let permit = state.limits.admit(head.uri, head.headers)?;
    let client = head.client.as_ref();
    let Some(limits) = &state.rate_limit else {
        authenticate(state, head, policy)?;
        return Ok(Admission {
            _permit: permit,
            standings: None,
        });
    };
    let refused = |refused: Refused, standings: &Standings| {
        state.metrics.count_rate_limited(refused.kind);
        Box::new(limits.refusal(refused, standings))
    };
    let mut standings = Standings::default();
    if let Err(refusal) = limits.check_peer(&mut standings, client) {
        let mut refusal = refused(refusal, &standings);
        let burst = limits.peer_burst().unwrap_or(0);
        state.peers.shed_refused(client, burst, &mut refusal);
        return Err(refusal);
    }
    let principal = match authenticate(state, head, policy) {
        Ok(principal) => principal,
        Err(mut refusal) => {
            limits.stamp(&standings, refusal.headers_mut());
            return Err(refusal);
        }
    };
    let subject = limits.check_subject(&mut standings, principal.as_ref(), client);
    if let Err(refusal) = subject {
        return Err(refused(refusal, &standings));
    }
    Ok(Admission {
        _permit: permit,
        standings: Some(standings),
    })
}

/// The token check of `policy`. `Ok(None)`: auth is off or the path is open. A refusal
/// is counted in `kvserve_auth_failures_total`.
pub fn authenticate(
    state: &HttpState,
    head: &Head<'_>,
    policy: Policy,
) -> Result<Option<Principal>, Refusal> {
    let Some(auth) = state.auth.as_ref() else {
        return Ok(None);
    };
    if (policy.is_open)(head.uri.path()) {
        return Ok(None);
    }
    let checked = auth
        .authenticate(head.uri, head.headers)
        .and_then(|principal| {
            if principal.has_scope(policy.scope) {
                Ok(principal)
            } else {
                Err(AuthFailure::InsufficientScope(policy.scope))
            }
        });
    checked.map(Some).map_err(|failure| {
        state.metrics.count_auth_failure(failure.reason());
        Box::new(failure.into_response())
    })
}

impl Admission {
    /// Step 4: where the client stands against the rate limits it passed.
    pub fn stamp(&self, state: &HttpState, resp: &mut Response) {
        if let (Some(limits), Some(standings)) = (&state.rate_limit, &self.standings) {
            limits.stamp(standings, resp.headers_mut());
        }
    }
}

/// Step 5: compress where it pays (`encoding::encode`), charge a large answer to the
/// unsent-answer budget or refuse it (`budget::AnswerBudget::charge`), count, end the
/// trace span, log and tag the answer.
/// `accept` is the request's `Accept-Encoding`.
pub fn finish(
    state: &HttpState,
    exchange: Exchange,
    method: &Method,
    route: &'static str,
    accept: Accept,
    mut resp: Response,
) -> Response {
    encoding::encode(state.settings.compression, accept, route, &mut resp);
    state.budget.charge(&mut resp);
    state
        .metrics
        .observe(method, route, resp.status(), exchange.started);
    exchange.trace.finish(state, route, &mut resp);
    exchange.access.finish(&exchange.span, route, &mut resp);
    nosniff(&mut resp);
    head_length(method, &mut resp);
    resp
}

/// Requests hyper could not parse, answered by the connection (`http::conn`): counted
/// and logged like every other answer, under the route `unparsed`.
impl RefusalLog for HttpState {
    fn refused(&self, status: StatusCode, began: Instant, peer: SocketAddr) -> HeaderValue {
        self.metrics.observe_unparsed(status, began);
        request_log::unparsed(status.as_u16(), began, peer)
    }
}

/// A `HEAD` answer carries the `Content-Length: 0` its `GET` sends (RFC 9110 §9.3.2:
/// the same header fields). hyper writes that header itself for a `GET` answer with an
/// empty body, but not for a `HEAD` one, whose body it never sends.
fn head_length(method: &Method, resp: &mut Response) {
    let status = resp.status();
    let has_length = !(status.is_informational()
        || status == poem::http::StatusCode::NO_CONTENT
        || status == poem::http::StatusCode::NOT_MODIFIED);
    if method != Method::HEAD || !has_length || resp.headers().contains_key(header::CONTENT_LENGTH)
    {
        return;
    }
    let body = resp.take_body();
    if body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    resp.set_body(body);
}

/// `X-Content-Type-Options: nosniff` on every answer of both listeners.
pub fn nosniff(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
}

/// The pipeline around poem's router: every API request the fast path does not take.
/// `--request-timeout` bounds the route's answer (the fast path's is synchronous).
pub async fn through_framework<E: Endpoint<Output = Response>>(
    state: Arc<HttpState>,
    routes: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let method = req.method().clone();
    let before_routing = routes::path_label(req.uri().path());
    let head = Head::of(&req, &state.clients);
    let accept = Accept::of(head.headers);
    let exchange = begin(&state, &head);
    let admitted = exchange.span.in_scope(|| admit(&state, &head, API));
    let resp = match admitted {
        Err(refusal) => *refusal,
        Ok(admission) => {
            let answer = async {
                routes
                    .call(req)
                    .await
                    .unwrap_or_else(|err| err.into_response())
            };
            let mut resp = state
                .limits
                .within_timeout(answer)
                .instrument(exchange.span.clone())
                .await;
            admission.stamp(&state, &mut resp);
            resp
        }
    };
    let route = routes::route_label(&resp, before_routing);
    Ok(finish(&state, exchange, &method, route, accept, resp))
}
