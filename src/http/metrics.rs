//! The API listener's request metrics: count and duration by method, route template and
//! status, requests in flight, and the refusals of authentication and the rate limits.
//! Registered in the process's one registry (`crate::metrics`).
//!
//! Counters on the hot path are plain `prometheus` atomics; per-request label lookups
//! are limited to the few routes the service has (`routes::route_label`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use poem::http::{Method, StatusCode};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::auth::AuthFailure;
use super::ratelimit::LimitKind;
use crate::metrics::MetricsError;

/// Buckets from 50 µs: most answers take well under a millisecond, and a histogram
/// starting at 5 ms (the client library default) would put them all in one bucket.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

pub struct HttpMetrics {
    /// Tells apart the registries of several servers in one process (tests), for the
    /// per-thread cache of series handles.
    id: usize,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    auth_failures: IntCounterVec,
    rate_limited_peer: IntCounter,
    rate_limited_subject: IntCounter,
    connections_open: IntGaugeVec,
    connections_limit: IntGaugeVec,
    connections_refused: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let err = MetricsError::of;
        let requests = IntCounterVec::new(
            Opts::new(
                "kvserve_http_requests_total",
                "HTTP requests answered by the API listener",
            ),
            &["method", "route", "status"],
        )
        .map_err(err("kvserve_http_requests_total"))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kvserve_http_request_duration_seconds",
                "Time from request to response head, API listener",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .map_err(err("kvserve_http_request_duration_seconds"))?;
        let in_flight = IntGauge::new(
            "kvserve_http_requests_in_flight",
            "API requests being answered",
        )
        .map_err(err("kvserve_http_requests_in_flight"))?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "kvserve_auth_failures_total",
                "Requests refused by authentication, by reason",
            ),
            &["reason"],
        )
        .map_err(err("kvserve_auth_failures_total"))?;
        for reason in AuthFailure::REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "kvserve_rate_limited_total",
                "Requests refused by a rate limit, by limit (peer: per address, before \
                 authentication; subject: per token subject, after it)",
            ),
            &["limit"],
        )
        .map_err(err("kvserve_rate_limited_total"))?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "kvserve_http_connections_open",
                "Connections open, by listener (at most --max-connections each)",
            ),
            &["listener"],
        )
        .map_err(err("kvserve_http_connections_open"))?;
        let connections_limit = IntGaugeVec::new(
            Opts::new(
                "kvserve_http_connections_limit",
                "--max-connections, by listener: more connections are closed at once",
            ),
            &["listener"],
        )
        .map_err(err("kvserve_http_connections_limit"))?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "kvserve_http_connections_refused_total",
                "Connections closed at accept, by listener and reason (max_connections: the \
                 listener is full; per_address: the address holds \
                 --max-connections-per-address)",
            ),
            &["listener", "reason"],
        )
        .map_err(err("kvserve_http_connections_refused_total"))?;
        let collectors: [(&'static str, Box<dyn prometheus::core::Collector>); 8] = [
            ("kvserve_http_requests_total", Box::new(requests.clone())),
            (
                "kvserve_http_request_duration_seconds",
                Box::new(duration.clone()),
            ),
            (
                "kvserve_http_requests_in_flight",
                Box::new(in_flight.clone()),
            ),
            (
                "kvserve_auth_failures_total",
                Box::new(auth_failures.clone()),
            ),
            ("kvserve_rate_limited_total", Box::new(rate_limited.clone())),
            (
                "kvserve_http_connections_open",
                Box::new(connections_open.clone()),
            ),
            (
                "kvserve_http_connections_limit",
                Box::new(connections_limit.clone()),
            ),
            (
                "kvserve_http_connections_refused_total",
                Box::new(connections_refused.clone()),
            ),
        ];
        for (name, collector) in collectors {
            registry.register(collector).map_err(err(name))?;
        }
        Ok(Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rate_limited_peer: rate_limited.with_label_values(&[LimitKind::Peer.name()]),
            rate_limited_subject: rate_limited.with_label_values(&[LimitKind::Subject.name()]),
            requests,
            duration,
            in_flight,
            auth_failures,
            connections_open,
            connections_limit,
            connections_refused,
        })
    }

    /// `kvserve_http_connections_refused_total{listener, reason}`: created at start, so
    /// the series exists at 0 before the first refusal.
    pub fn connections_refused(&self, listener: &str, reason: &str) -> IntCounter {
        self.connections_refused
            .with_label_values(&[listener, reason])
    }

    /// Exports `limit` as `kvserve_http_connections_limit{listener}` and returns the
    /// listener's open-connections gauge, for its `ConnectionGate`.
    pub fn connections(&self, listener: &str, limit: usize) -> IntGauge {
        self.connections_limit
            .with_label_values(&[listener])
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.connections_open.with_label_values(&[listener])
    }

    /// `kvserve_rate_limited_total{limit}`: every 429 of a rate limit.
    pub fn count_rate_limited(&self, limit: LimitKind) {
        match limit {
            LimitKind::Peer => self.rate_limited_peer.inc(),
            LimitKind::Subject => self.rate_limited_subject.inc(),
        }
    }

    /// `kvserve_auth_failures_total{reason}`.
    pub fn count_auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one answered request. The series handles are cached per worker thread:
    /// `with_label_values` hashes three strings and takes a lock shared by all threads,
    /// which measurably costs on a path this short.
    pub fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        self.observe_labelled(method_label(method), route, status, started);
    }

    /// Counts a request hyper refused to parse (`routes::UNPARSED`): it has no method
    /// kvserve knows by name, so `other`.
    pub fn observe_unparsed(&self, status: StatusCode, started: Instant) {
        self.observe_labelled("other", super::routes::UNPARSED, status, started);
    }

    fn observe_labelled(
        &self,
        method: &'static str,
        route: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        let key = (self.id, method, route, status.as_u16());
        let elapsed = started.elapsed().as_secs_f64();
        SERIES.with(|series| {
            let mut series = series.borrow_mut();
            let (requests, duration) = series.entry(key).or_insert_with(|| {
                let (method, status) = (key.1, status.as_str());
                (
                    self.requests.with_label_values(&[method, route, status]),
                    self.duration.with_label_values(&[method, route]),
                )
            });
            requests.inc();
            duration.observe(elapsed);
        });
    }
}

static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

type SeriesKey = (usize, &'static str, &'static str, u16);

thread_local! {
    static SERIES: RefCell<HashMap<SeriesKey, (IntCounter, Histogram)>> = RefCell::new(HashMap::new());
}

/// The methods kvserve answers by name; anything else is counted as `other` so a
/// client cannot create series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts a request in flight until dropped, so a request whose client went away (and
/// whose future hyper drops mid-way) still leaves the gauge.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
