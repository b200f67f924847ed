//! Rate limiting (`governor`, GCRA), in two layers checked in this order:
//!
//! 1. **peer** (`--rate-limit N`, `--rate-limit-burst B`): per client address, before
//!    authentication, so requests with no token or a bad signature are limited before
//!    any signature is checked (a bad RS256 token costs ~17× the CPU of a request
//!    without one). The address is the request's resolved client (`http::client`: the
//!    peer, or behind trusted proxies the `X-Forwarded-For` entry they vouch for), an
//!    IPv6 client counted by its `--ipv6-prefix` network.
//! 2. **subject** (`--subject-rate-limit`, `--subject-rate-limit-burst`): per verified
//!    token `sub`, after authentication (a token without `sub` is keyed by its address).
//!
//! Both answer 429 problem+json with `Retry-After` (seconds until the next request is
//! allowed) and the `RateLimit-Policy` / `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers. A bucket of rate R per second and burst B is
//! the policy `q=B;w=ceil(B/R)`: a client that sends at most B requests in any
//! ceil(B/R) seconds is never refused. `RateLimit` says `r` (requests left now) and `t`
//! (seconds until the bucket is full again), the same quantity on a 200 and a 429.
//! With both limits on, `RateLimit-Policy` lists both and `RateLimit` the state of every
//! limit checked, the one closest to its limit first: a client reading one item reads
//! the one that binds, and one reading all sees which limit it is near.
//!
//! Keyed state is pruned on a timer, so a flood of distinct clients costs memory only
//! while their buckets are not yet full.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use poem::http::{header, HeaderMap, HeaderName, HeaderValue};
use poem::{IntoResponse, Response};

use super::auth::Principal;
use super::client::ClientAddr;
use super::problem::{Problem, ProblemKind};

/// How often idle client state is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Which limit: the policy's name in the headers and the `limit` label of
/// `kvserve_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Peer,
    Subject,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Peer => "peer",
            LimitKind::Subject => "subject",
        }
    }
}

/// The rate and burst of one limit, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    pub per_second: NonZeroU32,
    /// Default: the rate.
    pub burst: Option<NonZeroU32>,
}

/// Who the subject limit counts: the token's `sub`, or for a token without one, the
/// address it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectKey {
    Subject(String),
    Address(IpAddr),
}

type Limiter<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed GCRA limit.
struct KeyedLimit<K: Hash + Eq + Clone> {
    kind: LimitKind,
    limiter: Limiter<K>,
    per_second: u32,
    burst: u32,
}

/// Where one limit stands for a request: its `RateLimit` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Standing {
    kind: LimitKind,
    remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    full_in: u64,
}

/// A refusal: the 429 to send (without the `RateLimit` fields, which `stamp` adds).
pub struct Refused {
    /// Which limit refused, for `kvserve_rate_limited_total{limit}`.
    pub kind: LimitKind,
    answer: Box<Response>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    fn new(kind: LimitKind, spec: LimitSpec) -> Self {
        let burst = spec.burst.unwrap_or(spec.per_second);
        let quota = Quota::per_second(spec.per_second).allow_burst(burst);
        Self {
            kind,
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            per_second: spec.per_second.get(),
            burst: burst.get(),
        }
    }

    /// `"<name>";q=B;w=ceil(B/R)`: at most B requests in any window of that many seconds
    /// never meets a refusal (the bucket drains completely in B/R seconds).
    fn policy(&self) -> String {
        let window = self.burst.div_ceil(self.per_second);
        format!("\"{}\";q={};w={window}", self.kind.name(), self.burst)
    }

    /// Takes one request from `key`'s bucket; the standing is recorded either way.
    fn check(&self, key: &K, standings: &mut Standings, whose: &str) -> Result<(), Refused> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                // GCRA: each request used pushes the "full again" time 1/R further out;
                // the remaining capacity is exact to within one request, so this is at
                // most 1/R over, never under.
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.burst.saturating_sub(remaining);
                standings.record(Standing {
                    kind: self.kind,
                    remaining,
                    full_in: u64::from(used.div_ceil(self.per_second)),
                });
                Ok(())
            }
            Err(not_until) => {
                // The next request is allowed after `wait`; the bucket is full again
                // after that and the other B-1 requests' refill.
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let refill = Duration::from_secs_f64(
                    f64::from(self.burst.saturating_sub(1)) / f64::from(self.per_second),
                );
                standings.record(Standing {
                    kind: self.kind,
                    remaining: 0,
                    full_in: ceil_secs(wait + refill),
                });
                let retry_after = ceil_secs(wait).max(1);
                let mut resp = Problem::new(
                    ProblemKind::RateLimited,
                    format!(
                        "more than {} requests per second (bursts of {}) {whose}; retry in {retry_after} s",
                        self.per_second, self.burst
                    ),
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                Err(Refused {
                    kind: self.kind,
                    answer: Box::new(resp),
                })
            }
        }
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The key a client is limited under; all clients of unknown address share one.
fn key(client: Option<&ClientAddr>) -> IpAddr {
    client.map_or(IpAddr::from([0, 0, 0, 0]), ClientAddr::key)
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The limits' standings for one request, filled in as each limit is checked, and
/// written into the answer by `RateLimits::stamp`.
#[derive(Debug, Clone, Default)]
pub struct Standings([Option<Standing>; 2]);

impl Standings {
    fn record(&mut self, standing: Standing) {
        let slot = match standing.kind {
            LimitKind::Peer => 0,
            LimitKind::Subject => 1,
        };
        self.0[slot] = Some(standing);
    }
}

/// Both limits of the API listener; `None` in `AppState` when neither is configured.
pub struct RateLimits {
    peer: Option<KeyedLimit<IpAddr>>,
    subject: Option<KeyedLimit<SubjectKey>>,
    /// Every configured policy, as one `RateLimit-Policy` value.
    policy: HeaderValue,
}

impl RateLimits {
    /// `None` when neither limit is set.
    pub fn new(peer: Option<LimitSpec>, subject: Option<LimitSpec>) -> Option<Self> {
        if peer.is_none() && subject.is_none() {
            return None;
        }
        let peer = peer.map(|spec| KeyedLimit::new(LimitKind::Peer, spec));
        let subject = subject.map(|spec| KeyedLimit::new(LimitKind::Subject, spec));
        let policies: Vec<String> = peer
            .as_ref()
            .map(KeyedLimit::policy)
            .into_iter()
            .chain(subject.as_ref().map(KeyedLimit::policy))
            .collect();
        Some(Self {
            peer,
            subject,
            policy: HeaderValue::from_str(&policies.join(", "))
                .unwrap_or(HeaderValue::from_static("")),
        })
    }

    /// Clients with state held right now, both limits together (for tests and the
    /// prune log).
    pub fn tracked_clients(&self) -> usize {
        self.peer.as_ref().map_or(0, |l| l.limiter.len())
            + self.subject.as_ref().map_or(0, |l| l.limiter.len())
    }

    /// Drops the state of clients whose bucket has refilled: they are
    /// indistinguishable from clients never seen.
    pub fn prune(&self) {
        if let Some(peer) = &self.peer {
            peer.prune();
        }
        if let Some(subject) = &self.subject {
            subject.prune();
        }
    }

    /// The burst of the per-address limit, if it is on.
    pub fn peer_burst(&self) -> Option<u32> {
        self.peer.as_ref().map(|limit| limit.burst)
    }

    /// The per-address limit; call before authentication. A no-op when it is off.
    pub fn check_peer(
        &self,
        standings: &mut Standings,
        client: Option<&ClientAddr>,
    ) -> Result<(), Refused> {
        let Some(limit) = &self.peer else {
            return Ok(());
        };
        limit.check(&key(client), standings, "from this address")
    }

    /// The per-subject limit; call after authentication with its principal. A no-op
    /// when it is off or the request carried no verified token (auth off, open path).
    pub fn check_subject(
        &self,
        standings: &mut Standings,
        principal: Option<&Principal>,
        client: Option<&ClientAddr>,
    ) -> Result<(), Refused> {
        let (Some(limit), Some(principal)) = (&self.subject, principal) else {
            return Ok(());
        };
        let key = match &principal.subject {
            Some(subject) => SubjectKey::Subject(subject.clone()),
            None => SubjectKey::Address(key(client)),
        };
        limit.check(&key, standings, "for this token's subject")
    }

    /// Adds `RateLimit-Policy` and `RateLimit` (the limits checked, closest to their
    /// limit first) to an answer. Answers refused before any limit was checked (413,
    /// 414, shed) carry neither.
    pub fn stamp(&self, standings: &Standings, headers: &mut HeaderMap) {
        let mut items: Vec<Standing> = standings.0.iter().flatten().copied().collect();
        if items.is_empty() {
            return;
        }
        items.sort_by_key(|s| (s.remaining, std::cmp::Reverse(s.full_in)));
        let state = items
            .iter()
            .map(|s| format!("\"{}\";r={};t={}", s.kind.name(), s.remaining, s.full_in))
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        if let Ok(value) = HeaderValue::from_str(&state) {
            headers.insert(RATELIMIT, value);
        }
    }

    /// The 429 of `refused`, stamped with every standing known.
    pub fn refusal(&self, refused: Refused, standings: &Standings) -> Response {
        let mut resp = *refused.answer;
        self.stamp(standings, resp.headers_mut());
        resp
    }
}

/// Starts the pruning timer; it stops when the limits are dropped.
pub fn spawn_pruning(limits: &Arc<RateLimits>) {
    let weak = Arc::downgrade(limits);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limits) = weak.upgrade() else {
                return;
            };
            let before = limits.tracked_clients();
            limits.prune();
            tracing::debug!(
                before,
                after = limits.tracked_clients(),
                "pruned rate-limiter state"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_second: u32, burst: u32) -> LimitSpec {
        LimitSpec {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst),
        }
    }

    #[test]
    fn a_policy_carries_the_burst_and_the_time_it_takes_to_refill() {
        let policy = |r, b| KeyedLimit::<IpAddr>::new(LimitKind::Peer, spec(r, b)).policy();
        assert_eq!(policy(1, 10), "\"peer\";q=10;w=10");
        assert_eq!(policy(5, 5), "\"peer\";q=5;w=1");
        assert_eq!(policy(2, 5), "\"peer\";q=5;w=3");
        // Faster than one window of a second: conservative, never more than allowed.
        assert_eq!(policy(1000, 100), "\"peer\";q=100;w=1");
        let both = RateLimits::new(Some(spec(100, 200)), Some(spec(2, 4))).unwrap();
        assert_eq!(both.policy, "\"peer\";q=200;w=2, \"subject\";q=4;w=2");
        assert!(RateLimits::new(None, None).is_none());
    }

    #[test]
    fn the_limit_closest_to_refusal_comes_first() {
        let limits = RateLimits::new(Some(spec(10, 10)), Some(spec(1, 3))).unwrap();
        let mut standings = Standings::default();
        let stand = |kind, remaining, full_in| Standing {
            kind,
            remaining,
            full_in,
        };
        standings.record(stand(LimitKind::Peer, 9, 1));
        standings.record(stand(LimitKind::Subject, 2, 1));
        let mut headers = HeaderMap::new();
        limits.stamp(&standings, &mut headers);
        assert_eq!(headers[RATELIMIT], "\"subject\";r=2;t=1, \"peer\";r=9;t=1");
        standings.record(stand(LimitKind::Subject, 9, 3));
        limits.stamp(&standings, &mut headers);
        assert_eq!(
            headers[RATELIMIT], "\"subject\";r=9;t=3, \"peer\";r=9;t=1",
            "equal r: the longer wait first"
        );
        let mut untouched = HeaderMap::new();
        limits.stamp(&Standings::default(), &mut untouched);
        assert!(untouched.is_empty(), "no limit checked, nothing to say");
    }
}
