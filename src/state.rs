//! The state of the service below HTTP: the dataset being served, the cache of rendered
//! answers, the core metrics, and the reloads that replace the dataset.
//!
//! Readers take a snapshot with one atomic load (`arc-swap`) and keep it for the whole
//! request, so a swap never mixes two versions in one answer and requests in flight
//! finish on the dataset they started with. A reload builds the new dataset completely
//! before the swap; a failed one leaves the old dataset serving.
//!
//! Data flows one way: `dataset` → `state` → `http`. Nothing here knows a request,
//! so `reload`, `watch` and `metrics` depend on this module and never on `http`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};
use bytes::Bytes;
use tracing::Instrument;

use crate::cache::Cache;
use crate::dataset::prefixes::KeyPrefixes;
use crate::dataset::{Dataset, DatasetInfo};
use crate::metrics::{Metrics, MetricsError};
use crate::reload::{ReloadError, Reloader, Trigger};

/// The slot every request reads the dataset from; empty until the first load.
#[derive(Default)]
pub struct DatasetSlot {
    current: ArcSwapOption<Dataset>,
    generation: AtomicU64,
}

impl DatasetSlot {
    /// A cheap snapshot for the request hot path (no reference count traffic in the
    /// common case).
    pub fn load(&self) -> Guard<Option<Arc<Dataset>>> {
        self.current.load()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Makes `dataset` the one every new request sees, numbering it with the next
    /// generation (1 for the first load).
    pub fn install(&self, mut dataset: Dataset) -> Arc<Dataset> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        dataset.set_generation(generation);
        let dataset = Arc::new(dataset);
        self.current.store(Some(dataset.clone()));
        collapse_index_later(&dataset);
        dataset
    }
}

/// Moves `dataset`'s index into huge pages on a thread of its own, after the dataset
/// already serves: readiness does not wait for it, and a lookup is answered the same
/// before, during and after. The thread holds the dataset until it is done (about a
/// second at 10M keys), so one replaced at once by a reload is freed that much later.
fn collapse_index_later(dataset: &Arc<Dataset>) {
    let dataset = dataset.clone();
    let spawned = std::thread::Builder::new()
        .name("kvserve-hugepages".to_owned())
        .spawn(move || {
            let started = std::time::Instant::now();
            let done = dataset.collapse_index();
            tracing::info!(
                huge_pages = done.huge_pages,
                refused = done.refused,
                ms = started.elapsed().as_millis() as u64,
                "index moved into huge pages"
            );
        });
    if let Err(err) = spawned {
        tracing::debug!(error = %err, "index stays in small pages: no thread for the move");
    }
}

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

    /// Looks `key` up in `dataset` (one index probe), counting the outcome in
    /// `kvserve_lookups_total`. The value comes back as bytes, which every route serves
    /// or renders (`http::key::escape_json`) without looking them up again.
    pub fn find(&self, dataset: &Dataset, key: u128) -> Option<Bytes> {
        let found = dataset.lookup(key);
        if found.is_some() {
            self.metrics.lookups_found.inc();
        } else {
            self.metrics.lookups_missing.inc();
        }
        found
    }

    /// Counts a batch's outcomes in `kvserve_lookups_total` at once: one atomic add per
    /// outcome per request instead of one per key (`find` counts its one key).
    pub fn count_lookups(&self, found: u64, missing: u64) {
        self.metrics.lookups_found.inc_by(found);
        self.metrics.lookups_missing.inc_by(missing);
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

    /// Loads `requested` (or the current file) and swaps it in. With `wait` false a
    /// second concurrent call fails with `Busy` instead of queueing (the HTTP route's
    /// 409); signals and file watching queue.
    ///
    /// The load runs in its own task, which owns the reload lock and does the install,
    /// the metrics and the logging; the caller only awaits its result. Dropping the
    /// caller (a client that disconnects) leaves the load running, still one at a time,
    /// still logged and counted.
    pub async fn reload(
        self: &Arc<Self>,
        requested: Option<&str>,
        trigger: Trigger,
        wait: bool,
    ) -> Result<Arc<Dataset>, ReloadError> {
        let running = self.reloader.lock(wait).await?;
        let span = tracing::info_span!("reload", %trigger);
        // A refused request (path not allowed) is not a failed reload: nothing was loaded.
        let path = match requested {
            Some(requested) => span.in_scope(|| self.reloader.resolve(requested))?,
            None => self.reloader.current_path(),
        };
        let state = self.clone();
        let load = tokio::spawn(
            async move {
                let _running = running;
                state.load_and_install(path, trigger).await
            }
            .instrument(span),
        );
        match load.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => Err(ReloadError::Panicked),
            Err(_) => Err(ReloadError::Cancelled),
        }
    }

    /// The reload proper, in its own task, under the reload lock.
    async fn load_and_install(
        &self,
        path: PathBuf,
        trigger: Trigger,
    ) -> Result<Arc<Dataset>, ReloadError> {
        tracing::info!(path = %path.display(), %trigger, "loading data file");
        let result = self.reloader.load(&path).await;
        let counted = trigger != Trigger::Startup;
        match result {
            Ok(dataset) => {
                let dataset = self.dataset.install(dataset);
                // Rendered answers of the old dataset must not outlive it.
                self.cache.purge();
                self.reloader.set_current(path);
                let info: &DatasetInfo = dataset.info();
                self.metrics.record_dataset(info);
                if counted {
                    self.metrics.record_reload(true);
                }
                tracing::info!(
                    %trigger,
                    path = %info.path.display(),
                    keys = info.keys,
                    generation = info.generation,
                    version = %info.version,
                    seconds = info.load_seconds,
                    "dataset installed"
                );
                Ok(dataset)
            }
            Err(err) => {
                if counted {
                    self.metrics.record_reload(false);
                    tracing::error!(%trigger, error = %err, "reload failed; the previous dataset stays in service");
                }
                Err(err)
            }
        }
    }
}
