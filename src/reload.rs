//! Where and how the data file is (re)loaded: the file being served, which files a
//! reload may name, the load options, and the lock that keeps loads one at a time.
//! Loads happen at start-up, on SIGHUP, on `POST /admin/reload` and, with `--watch`,
//! when the file changes; `state::AppState::reload` runs them and swaps the result in.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::dataset::{self, Dataset, LoadError, LoadOptions};

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

impl ReloadError {
    /// The message an HTTP answer gives (see `LoadError::answer_detail`).
    pub fn answer_detail(&self) -> String {
        match self {
            ReloadError::Load(err) => err.answer_detail(),
            other => other.to_string(),
        }
    }
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

    /// Takes the reload lock: waits for a running load with `wait`, else `Busy`. The
    /// guard belongs to the load, not to whoever asked for it (see `running`).
    pub async fn lock(&self, wait: bool) -> Result<tokio::sync::OwnedMutexGuard<()>, ReloadError> {
        if wait {
            Ok(self.running.clone().lock_owned().await)
        } else {
            self.running
                .clone()
                .try_lock_owned()
                .map_err(|_| ReloadError::Busy)
        }
    }

    /// Loads `path` with the options it is loaded with, off the async runtime.
    pub async fn load(&self, path: &Path) -> Result<Dataset, ReloadError> {
        load_on_thread(path.to_path_buf(), self.options_for(path)).await
    }

    /// Records that `path` is now the file being served.
    pub fn set_current(&self, path: PathBuf) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = path;
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
