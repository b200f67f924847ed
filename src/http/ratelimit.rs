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
use poem::http::{HeaderName, HeaderValue};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::auth::Principal;
use super::problem::{Problem, ProblemKind};
use super::AppState;

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

    fn client(&self, req: &Request) -> ClientKey {
        if let Some(subject) = req.data::<Principal>().and_then(|p| p.subject.clone()) {
            return ClientKey::Subject(subject);
        }
        if self.trust_forwarded_for {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|first| first.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return ClientKey::Address(ip);
            }
        }
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        ClientKey::Address(peer.unwrap_or(IpAddr::from([0, 0, 0, 0])))
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
        let key = limit.client(&req);
        match limit.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = u64::from(limit.burst.saturating_sub(remaining));
                let reset = used.div_ceil(u64::from(limit.per_second));
                let mut resp = self.inner.call(req).await?;
                let headers = resp.headers_mut();
                headers.insert(RATELIMIT_POLICY, limit.policy.clone());
                headers.insert(RATELIMIT, limit.state_header(remaining, reset));
                Ok(resp)
            }
            Err(not_until) => {
                self.state.metrics.rate_limited.inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut resp = Problem::new(
                    ProblemKind::RateLimited,
                    format!(
                        "more than {} requests per second (bursts of {}); retry in {retry_after} s",
                        limit.per_second, limit.burst
                    ),
                )
                .into_response();
                let headers = resp.headers_mut();
                headers.insert(
                    poem::http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after),
                );
                headers.insert(RATELIMIT_POLICY, limit.policy.clone());
                headers.insert(RATELIMIT, limit.state_header(0, retry_after));
                Ok(resp)
            }
        }
    }
}
