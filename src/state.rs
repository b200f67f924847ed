//! The state of the service below HTTP: the dataset being served, the cache of rendered
//! answers, the core metrics, and the reloader that replaces the dataset.
//!
//! Data flows one way: `dataset` → `state` → `http`. Nothing here knows a request,
//! so `reload`, `watch` and `metrics` depend on this module and never on `http`.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::Cache;
use crate::dataset::prefixes::KeyPrefixes;
use crate::dataset::Dataset;
use crate::metrics::{Metrics, MetricsError};
use crate::reload::{DatasetSlot, Reloader};

pub struct AppState {
    pub dataset: DatasetSlot,
    pub cache: Cache,
    pub metrics: Metrics,
    pub reloader: Reloader,
    /// The keys this instance owns (`--key-prefixes`): lookups of others are misdirected.
    pub key_prefixes: KeyPrefixes,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(cache: Cache, reloader: Reloader) -> Result<Self, MetricsError> {
        Ok(Self {
            dataset: DatasetSlot::default(),
            metrics: Metrics::new(&cache)?,
            key_prefixes: reloader.key_prefixes(),
            cache,
            reloader,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Looks `key` up in `dataset`, counting the outcome in `kvserve_lookups_total`.
    pub fn find<'d>(&self, dataset: &'d Dataset, key: u128) -> Option<&'d str> {
        let found = dataset.get_str(key);
        if found.is_some() {
            self.metrics.lookups_found.inc();
        } else {
            self.metrics.lookups_missing.inc();
        }
        found
    }

    /// Ready means: a dataset is loaded and the process is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.dataset.is_loaded() && !self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
