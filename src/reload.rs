//! The current `Dataset` and how it is replaced: at start-up, on SIGHUP, on
//! `POST /admin/reload` and, with `--watch`, when the file changes.
//!
//! Readers take a snapshot with one atomic load (`arc-swap`) and keep it for the whole
//! request, so a swap never mixes two versions in one answer and requests in flight
//! finish on the dataset they started with. A reload builds the new dataset completely
//! before the swap; a failed one leaves the old dataset serving.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::dataset::{self, Dataset, DatasetInfo, LoadError, LoadOptions};
use crate::state::AppState;

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
        dataset
    }
}

/// What asked for a load; logged, and the start-up load is not counted as a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Signal,
    Request,
    Watch,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Startup => "start-up",
            Trigger::Signal => "SIGHUP",
            Trigger::Request => "POST /admin/reload",
            Trigger::Watch => "file change (--watch)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("a reload is already running; try again when it has finished")]
    Busy,
    #[error("reload path `{path}` is not allowed: {reason}")]
    PathNotAllowed { path: String, reason: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the loader thread panicked; see the log")]
    Panicked,
    #[error("cannot start the loader thread: {0}")]
    Spawn(std::io::Error),
    #[error("the reload was cancelled: the server is shutting down")]
    Cancelled,
}

/// Why a reload path is refused, whatever the path is: the same words whether or not
/// something exists where it leads, so a refusal tells nothing about files outside.
const NOT_IN_FOLDER: &str = "it must be the name of a file in the data file's folder (no `/`), \
and a symlink must not lead out of that folder";

/// Where and how to load, and the lock that keeps loads one at a time.
pub struct Reloader {
    /// The configured data file; trusted wherever it points. Any other file must stay
    /// inside its folder.
    configured: PathBuf,
    /// The file being served: the configured one, or the last one a reload named.
    current: Mutex<PathBuf>,
    options: LoadOptions,
    /// Owned by the running load, not by whoever asked for it: the guard moves into
    /// the load's own task, so a caller that goes away (an HTTP client hanging up)
    /// cannot let a second load start while the first one still holds a copy of the
    /// file in memory.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub fn new(data: PathBuf, options: LoadOptions) -> Self {
        Self {
            current: Mutex::new(data.clone()),
            configured: data,
            options,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The keys this instance owns (`--key-prefixes`).
    pub fn key_prefixes(&self) -> crate::dataset::prefixes::KeyPrefixes {
        self.options.key_prefixes
    }

    /// The file being served (or about to be).
    pub fn current_path(&self) -> PathBuf {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The folder reload paths must stay in.
    pub fn folder(&self) -> PathBuf {
        match self.configured.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// How to load `path`: as configured, plus confinement to the folder for every
    /// file but the configured one. Checked at each load, on the file opened, so a
    /// symlink accepted once and repointed later is caught by the next reload of it.
    fn options_for(&self, path: &Path) -> LoadOptions {
        let mut options = self.options.clone();
        if path != self.configured {
            options.confine_to = Some(self.folder());
        }
        options
    }

    /// Resolves a path given to `POST /admin/reload`: the name of a file directly in
    /// the data file's folder (the folder `--watch` watches), which, if it is a
    /// symlink, must lead to a file inside that folder.
    ///
    /// Confinement is decided before existence and every refusal reads the same, so
    /// the answer never tells whether something exists outside the folder. A name
    /// that is confined but missing is left for the load to report (422). The load
    /// checks the file it opens again, which is what closes the race with a symlink
    /// repointed after this check.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, ReloadError> {
        let refuse = || ReloadError::PathNotAllowed {
            path: requested.to_owned(),
            reason: NOT_IN_FOLDER.to_owned(),
        };
        let mut components = Path::new(requested).components();
        let name = match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) if !requested.contains('/') => name,
            _ => return Err(refuse()),
        };
        // The configured file by its own name: trusted like at start-up.
        if Some(name) == self.configured.file_name() {
            return Ok(self.configured.clone());
        }
        let folder = self.folder();
        let joined = folder.join(name);
        if !crate::dataset::integrity::leads_into(&joined, &folder) {
            return Err(refuse());
        }
        Ok(joined)
    }
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
    state: &Arc<AppState>,
    requested: Option<&str>,
    trigger: Trigger,
    wait: bool,
) -> Result<Arc<Dataset>, ReloadError> {
    let reloader = &state.reloader;
    let running = if wait {
        reloader.running.clone().lock_owned().await
    } else {
        reloader
            .running
            .clone()
            .try_lock_owned()
            .map_err(|_| ReloadError::Busy)?
    };
    let span = tracing::info_span!("reload", %trigger);
    // A refused request (path not allowed) is not a failed reload: nothing was loaded.
    let path = match requested {
        Some(requested) => span.in_scope(|| reloader.resolve(requested))?,
        None => reloader.current_path(),
    };
    let load =
        tokio::spawn(load_and_install(state.clone(), path, trigger, running).instrument(span));
    match load.await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(ReloadError::Panicked),
        Err(_) => Err(ReloadError::Cancelled),
    }
}

/// The reload proper, in its own task; `_running` is the reload lock, released when
/// the new dataset is installed or the failure recorded.
async fn load_and_install(
    state: Arc<AppState>,
    path: PathBuf,
    trigger: Trigger,
    _running: tokio::sync::OwnedMutexGuard<()>,
) -> Result<Arc<Dataset>, ReloadError> {
    let reloader = &state.reloader;
    tracing::info!(path = %path.display(), %trigger, "loading data file");
    let result = load_on_thread(path.clone(), reloader.options_for(&path)).await;
    let counted = trigger != Trigger::Startup;
    match result {
        Ok(dataset) => {
            let dataset = state.dataset.install(dataset);
            // Rendered answers of the old dataset must not outlive it.
            state.cache.purge();
            *reloader.current.lock().unwrap_or_else(|p| p.into_inner()) = path;
            let info: &DatasetInfo = dataset.info();
            state.metrics.record_dataset(info);
            if counted {
                state.metrics.record_reload(true);
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
                state.metrics.record_reload(false);
                tracing::error!(%trigger, error = %err, "reload failed; the previous dataset stays in service");
            }
            Err(err)
        }
    }
}
/// Loads on a plain thread, not `spawn_blocking`: if shutdown comes mid-load, the
/// process can exit without waiting for the runtime's blocking pool to finish it.
async fn load_on_thread(path: PathBuf, options: LoadOptions) -> Result<Dataset, ReloadError> {
    let (tx, rx) = oneshot::channel();
    // Carry the reload's span into the thread, so the load's span is its child.
    let span = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("kvserve-load".to_owned())
        .spawn(move || {
            let _ = tx.send(span.in_scope(|| dataset::load(&path, &options)));
        });
    if let Err(err) = spawned {
        return Err(ReloadError::Spawn(err));
    }
    match rx.await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ReloadError::Panicked),
    }
}
