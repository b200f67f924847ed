//! The Prometheus registry and the metrics of the core (dataset, cache, lookups,
//! reloads, process); names in the metrics table of docs/OPERATIONS.md. The HTTP
//! listener registers its own request metrics in the same registry (`http::metrics`),
//! so one scrape shows all.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::cache::Cache;
use crate::dataset::DatasetInfo;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metric {name}: {source}")]
pub struct MetricsError {
    name: &'static str,
    source: prometheus::Error,
}

impl MetricsError {
    /// For `map_err`: the error of setting up (or registering) the metric `name`.
    pub fn of(name: &'static str) -> impl Fn(prometheus::Error) -> Self {
        move |source| Self { name, source }
    }
}

pub struct Metrics {
    registry: Registry,
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
    /// When the last reload failed: the reload alert compares it with
    /// `dataset_loaded_timestamp`, so it holds until a good reload, however long ago
    /// the failure was (the counter alone cannot tell "failed, then fixed").
    reload_failed_timestamp: Gauge,
    /// notAfter of each TLS listener's certificate (`tls`), so an alert can fire
    /// before it expires.
    tls_expiry: GaugeVec,
    /// TLS handshakes that failed or timed out, per listener.
    tls_handshake_failures: IntCounterVec,
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
        let tls_expiry = GaugeVec::new(
            Opts::new(
                "kvserve_tls_certificate_expiry_seconds",
                "Unix time of the notAfter of the certificate each TLS listener serves",
            ),
            &["listener"],
        )
        .map_err(err("kvserve_tls_certificate_expiry_seconds"))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "kvserve_tls_handshake_failures_total",
                "TLS handshakes refused (protocol error, alert, no or bad client certificate) or not finished within --header-read-timeout, per listener; a connection closed before its handshake ended is not counted",
            ),
            &["listener"],
        )
        .map_err(err("kvserve_tls_handshake_failures_total"))?;
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
            reload_failed_timestamp: float_gauge(
                "kvserve_dataset_reload_failed_timestamp_seconds",
                "Unix time the last reload failed; 0 if none failed since start",
            )?,
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            tls_expiry: tls_expiry.clone(),
            tls_handshake_failures: tls_handshake_failures.clone(),
            registry: Registry::new(),
        };
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
        // Fixed for the process: says "off" (0) where a dashboard would otherwise have
        // to infer it from counters that stay at 0.
        let cache_capacity = gauge(
            "kvserve_cache_capacity",
            "Entries the LRU of rendered answers can hold; 0 when it is off",
        )?;
        cache_capacity.set(i64::try_from(cache.capacity()).unwrap_or(i64::MAX));
        reg("kvserve_cache_capacity", Box::new(cache_capacity))?;
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
        reg(
            "kvserve_dataset_reload_failed_timestamp_seconds",
            Box::new(metrics.reload_failed_timestamp.clone()),
        )?;
        reg("kvserve_build_info", Box::new(build_info))?;
        reg(
            "kvserve_tls_certificate_expiry_seconds",
            Box::new(tls_expiry),
        )?;
        reg(
            "kvserve_tls_handshake_failures_total",
            Box::new(tls_handshake_failures),
        )?;
        reg(
            "kvserve_log_lines_dropped_total",
            Box::new(crate::telemetry::writer::DROPPED.clone()),
        )?;
        reg(
            "kvserve_trace_spans_dropped_total",
            Box::new(crate::telemetry::spans::DROPPED.clone()),
        )?;
        reg(
            "process",
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        )?;
        Ok(Self {
            registry,
            ..metrics
        })
    }

    /// Where other parts of the process (the HTTP listener) register their metrics, so
    /// one scrape shows everything.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.reload_failed_timestamp.set(now.as_secs_f64());
        }
    }

    /// The expiry gauge of a TLS listener (`tls`).
    pub fn tls_certificate_expiry(&self, listener: &str) -> Gauge {
        self.tls_expiry.with_label_values(&[listener])
    }

    /// The failed-handshake counter of a TLS listener (`http::server`).
    pub fn tls_handshake_failures(&self, listener: &str) -> IntCounter {
        self.tls_handshake_failures.with_label_values(&[listener])
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
}
