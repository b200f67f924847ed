//! `--watch`: reload by itself when the data file (or its `.sha256`) is replaced.
//!
//! The folder is watched rather than the file, because publishers usually write a new
//! file and rename it over the old one, which a watch on the old inode would miss.
//! Events are debounced: a reload starts once the data file and its `.sha256` have
//! been quiet for the debounce period, so a publisher writing in several steps causes
//! one reload. Only files directly in the folder are watched, which is also where
//! `POST /admin/reload` may point (a file name, no `/`).

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reload::Trigger;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", folder.display())]
pub struct WatchError {
    folder: std::path::PathBuf,
    source: notify::Error,
}

/// Starts watching; the returned watcher must be kept alive for as long as it should
/// run. Reloads are queued behind any running one, never refused.
pub fn spawn(
    state: Arc<AppState>,
    debounce: Duration,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let folder = state.reloader.folder();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<OsString>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if changes_content(&event.kind) {
            let names = event
                .paths
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_owned()));
            let _ = tx.send(names.collect());
        }
    })
    .map_err(|source| WatchError {
        folder: folder.clone(),
        source,
    })?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            folder: folder.clone(),
            source,
        })?;
    tracing::info!(folder = %folder.display(), debounce = %humantime::format_duration(debounce), "watching the data file");

    tokio::spawn(async move {
        while let Some(names) = rx.recv().await {
            if !concerns_data_file(&state, &names) {
                continue;
            }
            // Wait for quiet: every further event about the file restarts the wait;
            // events about other files in the folder do not, or a log written next to
            // the data would hold back its reload for as long as it is written to.
            let mut quiet_at = tokio::time::Instant::now() + debounce;
            loop {
                match tokio::time::timeout_at(quiet_at, rx.recv()).await {
                    Ok(Some(names)) => {
                        if concerns_data_file(&state, &names) {
                            quiet_at = tokio::time::Instant::now() + debounce;
                        }
                    }
                    Ok(None) => return,
                    Err(_elapsed) => break,
                }
            }
            let _ = state.reload(None, Trigger::Watch, true).await;
        }
    });
    Ok(watcher)
}

/// Whether an event can mean new content. Reads are not: the loader's own reads of
/// the file would otherwise trigger the next reload, forever.
fn changes_content(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(
                ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any | ModifyKind::Other
            )
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Whether an event names the file being served or its checksum sidecar.
fn concerns_data_file(state: &AppState, names: &[OsString]) -> bool {
    let current = state.reloader.current_path();
    let Some(file) = current.file_name() else {
        return false;
    };
    let sidecar = crate::dataset::integrity::sidecar_path(Path::new(file));
    names
        .iter()
        .any(|name| name == file || name == sidecar.as_os_str())
}

/// `--watch` for the TLS certificates: reloads every listener's pair once the folders
/// holding the certificate and key files have been quiet for `debounce` after a
/// change. The folders are watched, not the files, for the same reason as the data
/// file's, and any change in them counts: a Kubernetes secret volume swaps a `..data`
/// symlink rather than writing `tls.crt`. A reload of unchanged files does nothing
/// (`tls::CertResolver::reload`), and a bad new pair keeps the old one.
pub fn spawn_tls(
    certs: Vec<Arc<crate::tls::CertResolver>>,
    debounce: Duration,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let mut folders: Vec<std::path::PathBuf> = Vec::new();
    for resolver in &certs {
        let files = resolver.files();
        for file in [&files.cert, &files.key] {
            let folder = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| changes_content(&event.kind)) {
            let _ = tx.send(());
        }
    })
    .map_err(|source| WatchError {
        folder: folders.first().cloned().unwrap_or_default(),
        source,
    })?;
    for folder in &folders {
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                folder: folder.clone(),
                source,
            })?;
        tracing::info!(folder = %folder.display(), "watching the TLS certificate files");
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let mut quiet_at = tokio::time::Instant::now() + debounce;
            loop {
                match tokio::time::timeout_at(quiet_at, rx.recv()).await {
                    Ok(Some(())) => quiet_at = tokio::time::Instant::now() + debounce,
                    Ok(None) => return,
                    Err(_elapsed) => break,
                }
            }
            crate::tls::reload_all(&certs, "file change (--watch)");
        }
    });
    Ok(watcher)
}
