//! Per-client rate limiting (`governor`, GCRA): `--rate-limit N` requests per second
//! with bursts of `--rate-limit-burst`.
//!
//! The client is the verified token's `sub` when auth is on, else the peer address, or
//! with `--trust-forwarded-for` the first `X-Forwarded-For` address (only behind a proxy
//! that sets it: anyone can forge the header). Keyed state is pruned on a timer, so a
//! flood of distinct clients costs memory only while their buckets are not yet full.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use poem::http::{HeaderMap, HeaderName, HeaderValue};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::auth::Principal;
use super::problem::{Problem, ProblemKind};
use super::AppState;
use crate::metrics::Metrics;

/// How often idle client state is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Address(IpAddr),
    Subject(String),
}

type Limiter = RateLimiter<
    ClientKey,
    DefaultKeyedStateStore<ClientKey>,
    DefaultClock,
    StateInformationMiddleware,
>;

pub struct ClientRateLimit {
    limiter: Limiter,
    per_second: u32,
    burst: u32,
    trust_forwarded_for: bool,
    policy: HeaderValue,
}

impl ClientRateLimit {
    pub fn new(
        per_second: NonZeroU32,
        burst: Option<NonZeroU32>,
        trust_forwarded_for: bool,
    ) -> Self {
        let burst = burst.unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let policy = format!("\"default\";q={per_second};w=1");
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            per_second: per_second.get(),
            burst: burst.get(),
            trust_forwarded_for,
            policy: HeaderValue::from_str(&policy)
                .unwrap_or(HeaderValue::from_static("\"default\"")),
        }
    }

    /// Clients with state held right now (for tests and the prune log).
    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }

    /// Drops the state of clients whose bucket has refilled: they are
    /// indistinguishable from clients never seen.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn client(
        &self,
        principal: Option<&Principal>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> ClientKey {
        if let Some(subject) = principal.and_then(|p| p.subject.clone()) {
            return ClientKey::Subject(subject);
        }
        if self.trust_forwarded_for {
            let forwarded = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|first| first.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ClientKey::Address(ip);
            }
        }
        ClientKey::Address(peer.unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    /// Takes one request from the client's bucket. `Ok`: the `RateLimit-Policy` and
    /// `RateLimit` headers for the answer; `Err`: the 429 answer itself (counted in
    /// `kvserve_rate_limited_total`). Shared by the middleware and the fast path.
    pub fn check(
        &self,
        metrics: &Metrics,
        principal: Option<&Principal>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<[(HeaderName, HeaderValue); 2], Box<Response>> {
        let key = self.client(principal, headers, peer);
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = u64::from(self.burst.saturating_sub(remaining));
                let reset = used.div_ceil(u64::from(self.per_second));
                Ok([
                    (RATELIMIT_POLICY, self.policy.clone()),
                    (RATELIMIT, self.state_header(remaining, reset)),
                ])
            }
            Err(not_until) => {
                metrics.rate_limited.inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut resp = Problem::new(
                    ProblemKind::RateLimited,
                    format!(
                        "more than {} requests per second (bursts of {}); retry in {retry_after} s",
                        self.per_second, self.burst
                    ),
                )
                .into_response();
                let headers = resp.headers_mut();
                headers.insert(
                    poem::http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after),
                );
                headers.insert(RATELIMIT_POLICY, self.policy.clone());
                headers.insert(RATELIMIT, self.state_header(0, retry_after));
                Err(Box::new(resp))
            }
        }
    }

    /// The `RateLimit` header value: remaining requests and seconds until the bucket
    /// is full again.
    fn state_header(&self, remaining: u32, reset_secs: u64) -> HeaderValue {
        HeaderValue::from_str(&format!("\"default\";r={remaining};t={reset_secs}"))
            .unwrap_or(HeaderValue::from_static("\"default\""))
    }
}

/// Starts the pruning timer; it stops when the limiter is dropped.
pub fn spawn_pruning(limiter: &Arc<ClientRateLimit>) {
    let weak = Arc::downgrade(limiter);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiter) = weak.upgrade() else {
                return;
            };
            let before = limiter.tracked_clients();
            limiter.prune();
            tracing::debug!(
                before,
                after = limiter.tracked_clients(),
                "pruned rate-limiter state"
            );
        }
    });
}

pub struct RateLimit(pub Arc<AppState>);

impl<E: Endpoint<Output = Response>> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RateLimitEndpoint {
            inner: ep,
            state: self.0.clone(),
        }
    }
}

pub struct RateLimitEndpoint<E> {
    inner: E,
    state: Arc<AppState>,
}

impl<E: Endpoint<Output = Response>> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let Some(limit) = self.state.rate_limit.as_ref() else {
            return self.inner.call(req).await;
        };
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        match limit.check(
            &self.state.metrics,
            req.data::<Principal>(),
            req.headers(),
            peer,
        ) {
            Ok(headers) => {
                let mut resp = self.inner.call(req).await?;
                for (name, value) in headers {
                    resp.headers_mut().insert(name, value);
                }
                Ok(resp)
            }
            Err(refusal) => Ok(*refusal),
        }
    }
}
