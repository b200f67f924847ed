//! Prometheus metrics (names in the README metrics table) and the middleware that records every
//! request of the API listener.
//!
//! Counters on the hot path are plain `prometheus` atomics; per-request label lookups
//! are limited to the few routes the service has, so a client cannot create series by
//! sending odd paths (an unknown path is the single label value `unmatched`).

use std::time::{Instant, UNIX_EPOCH};

use std::cell::RefCell;
use std::collections::HashMap;

use poem::http::{Method, StatusCode};
use poem::{Endpoint, Middleware, Request, Response};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::cache::Cache;
use crate::dataset::DatasetInfo;
use crate::http::ratelimit::LimitKind;

/// Buckets from 50 µs: most answers take well under a millisecond, and a histogram
/// starting at 5 ms (the client library default) would put them all in one bucket.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Reasons an auth failure is counted under; created up front so every series exists
/// (at 0) before the first failure, which keeps dashboards and alerts simple.
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing_token",
    "invalid_token",
    "expired",
    "insufficient_scope",
];

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metric {name}: {source}")]
pub struct MetricsError {
    name: &'static str,
    source: prometheus::Error,
}

pub struct Metrics {
    /// Tells apart the registries of several servers in one process (tests), for the
    /// per-thread cache of series handles.
    id: usize,
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub(crate) http_in_flight: IntGauge,
    pub lookups_found: IntCounter,
    pub lookups_missing: IntCounter,
    /// Keys another shard owns (`--key-prefixes`), answered 421.
    pub lookups_misdirected: IntCounter,
    cache_entries: IntGauge,
    dataset_keys: IntGauge,
    dataset_bytes: IntGauge,
    dataset_generation: IntGauge,
    dataset_load_duration: Gauge,
    dataset_loaded_timestamp: Gauge,
    reloads_success: IntCounter,
    reloads_failure: IntCounter,
    rate_limited_peer: IntCounter,
    rate_limited_subject: IntCounter,
    pub auth_failures: IntCounterVec,
}

impl Metrics {
    /// Builds the registry; `cache` contributes its own hit and miss counters.
    pub fn new(cache: &Cache) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reg = |name: &'static str, collector: Box<dyn prometheus::core::Collector>| {
            registry
                .register(collector)
                .map_err(|source| MetricsError { name, source })
        };
        let err = |name: &'static str| move |source| MetricsError { name, source };

        let http_requests = IntCounterVec::new(
            Opts::new(
                "kvserve_http_requests_total",
                "HTTP requests answered by the API listener",
            ),
            &["method", "route", "status"],
        )
        .map_err(err("kvserve_http_requests_total"))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "kvserve_http_request_duration_seconds",
                "Time from request to response head, API listener",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .map_err(err("kvserve_http_request_duration_seconds"))?;
        let http_in_flight = IntGauge::new(
            "kvserve_http_requests_in_flight",
            "API requests being answered",
        )
        .map_err(err("kvserve_http_requests_in_flight"))?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "kvserve_lookups_total",
                "Key lookups in the dataset, by outcome",
            ),
            &["result"],
        )
        .map_err(err("kvserve_lookups_total"))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "kvserve_dataset_reloads_total",
                "Reloads of the data file, by outcome",
            ),
            &["result"],
        )
        .map_err(err("kvserve_dataset_reloads_total"))?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "kvserve_auth_failures_total",
                "Requests refused by authentication, by reason",
            ),
            &["reason"],
        )
        .map_err(err("kvserve_auth_failures_total"))?;
        for reason in AUTH_FAILURE_REASONS {
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
        let gauge = |name: &'static str, help: &str| IntGauge::new(name, help).map_err(err(name));
        let float_gauge =
            |name: &'static str, help: &str| Gauge::new(name, help).map_err(err(name));
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "kvserve_build_info",
                "Always 1; the version label tells which build runs",
            ),
            &["version"],
        )
        .map_err(err("kvserve_build_info"))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let metrics = Self {
            lookups_found: lookups.with_label_values(&["found"]),
            lookups_missing: lookups.with_label_values(&["missing"]),
            lookups_misdirected: lookups.with_label_values(&["misdirected"]),
            cache_entries: gauge(
                "kvserve_cache_entries",
                "Entries in the LRU of rendered answers",
            )?,
            dataset_keys: gauge("kvserve_dataset_keys", "Keys in the dataset being served")?,
            dataset_bytes: gauge(
                "kvserve_dataset_bytes",
                "Size of the data file being served",
            )?,
            dataset_generation: gauge(
                "kvserve_dataset_generation",
                "Datasets installed since start; 1 after the first load",
            )?,
            dataset_load_duration: float_gauge(
                "kvserve_dataset_load_duration_seconds",
                "Duration of the load of the dataset being served",
            )?,
            dataset_loaded_timestamp: float_gauge(
                "kvserve_dataset_loaded_timestamp_seconds",
                "Unix time the dataset being served finished loading",
            )?,
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            rate_limited_peer: rate_limited.with_label_values(&[LimitKind::Peer.name()]),
            rate_limited_subject: rate_limited.with_label_values(&[LimitKind::Subject.name()]),
            http_requests,
            http_duration,
            http_in_flight,
            auth_failures,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry: Registry::new(),
        };
        reg(
            "kvserve_http_requests_total",
            Box::new(metrics.http_requests.clone()),
        )?;
        reg(
            "kvserve_http_request_duration_seconds",
            Box::new(metrics.http_duration.clone()),
        )?;
        reg(
            "kvserve_http_requests_in_flight",
            Box::new(metrics.http_in_flight.clone()),
        )?;
        reg("kvserve_lookups_total", Box::new(lookups))?;
        reg(
            "kvserve_cache_hits_total",
            Box::new(cache.hits_counter().clone()),
        )?;
        reg(
            "kvserve_cache_misses_total",
            Box::new(cache.misses_counter().clone()),
        )?;
        reg(
            "kvserve_cache_entries",
            Box::new(metrics.cache_entries.clone()),
        )?;
        reg(
            "kvserve_dataset_keys",
            Box::new(metrics.dataset_keys.clone()),
        )?;
        reg(
            "kvserve_dataset_bytes",
            Box::new(metrics.dataset_bytes.clone()),
        )?;
        reg(
            "kvserve_dataset_generation",
            Box::new(metrics.dataset_generation.clone()),
        )?;
        reg(
            "kvserve_dataset_load_duration_seconds",
            Box::new(metrics.dataset_load_duration.clone()),
        )?;
        reg(
            "kvserve_dataset_loaded_timestamp_seconds",
            Box::new(metrics.dataset_loaded_timestamp.clone()),
        )?;
        reg("kvserve_dataset_reloads_total", Box::new(reloads))?;
        reg("kvserve_rate_limited_total", Box::new(rate_limited))?;
        reg(
            "kvserve_auth_failures_total",
            Box::new(metrics.auth_failures.clone()),
        )?;
        reg("kvserve_build_info", Box::new(build_info))?;
        reg(
            "process",
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        )?;
        Ok(Self {
            registry,
            ..metrics
        })
    }

    /// `kvserve_rate_limited_total{limit}`: every 429 of a rate limit.
    pub fn rate_limited(&self, limit: LimitKind) -> &IntCounter {
        match limit {
            LimitKind::Peer => &self.rate_limited_peer,
            LimitKind::Subject => &self.rate_limited_subject,
        }
    }

    /// Called whenever a dataset is installed (first load and every reload).
    pub fn record_dataset(&self, info: &DatasetInfo) {
        self.dataset_keys.set(info.keys as i64);
        self.dataset_bytes.set(info.bytes as i64);
        self.dataset_generation.set(info.generation as i64);
        self.dataset_load_duration.set(info.load_seconds);
        let loaded_at = info
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.dataset_loaded_timestamp.set(loaded_at.as_secs_f64());
    }

    pub fn record_reload(&self, succeeded: bool) {
        if succeeded {
            self.reloads_success.inc();
        } else {
            self.reloads_failure.inc();
        }
    }

    /// The text exposition format, with the gauges that are read rather than pushed
    /// brought up to date first.
    pub fn render(&self, cache: &Cache) -> String {
        self.cache_entries.set(cache.len() as i64);
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts one answered request. The series handles are cached per worker thread:
    /// `with_label_values` hashes three strings and takes a lock shared by all threads,
    /// which measurably costs on a path this short.
    pub(crate) fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        let key = (self.id, method_label(method), route, status.as_u16());
        let elapsed = started.elapsed().as_secs_f64();
        SERIES.with(|series| {
            let mut series = series.borrow_mut();
            let (requests, duration) = series.entry(key).or_insert_with(|| {
                let (method, status) = (key.1, status.as_str());
                (
                    self.http_requests
                        .with_label_values(&[method, route, status]),
                    self.http_duration.with_label_values(&[method, route]),
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

/// The route template of an answer that did not go through poem's router (the fast
/// path sets it).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// The route template of an answered request, from the pattern poem's router matched,
/// as one of a fixed set of label values.
pub fn route_label(resp: &Response) -> &'static str {
    if let Some(RouteLabel(label)) = resp.data::<RouteLabel>() {
        return label;
    }
    let Some(pattern) = resp.data::<poem::PathPattern>() else {
        return "unmatched";
    };
    // poem-openapi registers path parameters positionally (`:param0`).
    match &*pattern.0 {
        "/v1/keys/:param0" => "/v1/keys/{key}",
        "/v1/keys/:param0/value" => "/v1/keys/{key}/value",
        "/v1/keys/batch" => "/v1/keys/batch",
        "/get_value/:param0" => "/get_value/{key}",
        "/openapi.json" => "/openapi.json",
        p if p.starts_with("/docs") => "/docs",
        _ => "unmatched",
    }
}

/// The route template `path` would be routed to, by its shape alone: the label of an
/// answer given before routing (a refusal by the limits, a rate limit or
/// authentication), which carries neither a `RouteLabel` nor a `PathPattern`. A path
/// no route takes is `unmatched`, so the label set stays fixed.
pub fn path_label(path: &str) -> &'static str {
    if let Some(label) = crate::http::fast::hot_route_label(path) {
        return label;
    }
    match path {
        "/v1/keys/batch" => "/v1/keys/batch",
        "/openapi.json" => "/openapi.json",
        p if p == "/docs" || p.starts_with("/docs/") => "/docs",
        _ => "unmatched",
    }
}

/// `route_label`, or `before_routing` (from `path_label`) for an answer the router
/// never saw.
pub fn route_label_or(resp: &Response, before_routing: &'static str) -> &'static str {
    match route_label(resp) {
        "unmatched" => before_routing,
        label => label,
    }
}

/// Records count, duration and in-flight gauge of every request that passes through.
pub struct HttpMetrics(pub std::sync::Arc<crate::http::AppState>);

impl<E: Endpoint<Output = Response>> Middleware<E> for HttpMetrics {
    type Output = HttpMetricsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        HttpMetricsEndpoint {
            inner: ep,
            state: self.0.clone(),
        }
    }
}

pub struct HttpMetricsEndpoint<E> {
    inner: E,
    state: std::sync::Arc<crate::http::AppState>,
}

impl<E: Endpoint<Output = Response>> Endpoint for HttpMetricsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let metrics = &self.state.metrics;
        let method = req.method().clone();
        let before_routing = path_label(req.uri().path());
        let started = Instant::now();
        let _in_flight = InFlight::enter(&metrics.http_in_flight);
        // The inner endpoint turns every error into a problem response, so this is
        // always a response; `into_response` covers an error all the same.
        let resp = self
            .inner
            .call(req)
            .await
            .unwrap_or_else(|err| err.into_response());
        let route = route_label_or(&resp, before_routing);
        metrics.observe(&method, route, resp.status(), started);
        Ok(resp)
    }
}

/// Counts a request in flight until dropped, so a request whose client went away (and
/// whose future hyper drops mid-way) still leaves the gauge.
pub(crate) struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
