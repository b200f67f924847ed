//! Why a load failed.

use std::path::{Path, PathBuf};

use super::format::LineError;
use super::index::MAX_FILE_LEN;

/// Why a load failed. Every variant names the file; line errors also the 1-based line
/// number and an excerpt, so a publisher can fix the file without guessing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open data file {}: {source}{hint}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
        /// Empty, or the likely cause when the OS error alone does not say it (see
        /// [`LoadError::open`]).
        hint: String,
    },
    #[error("{} is not a regular file but {kind}; refused without reading it", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// Only files inside the data file's folder may be loaded by a reload; this names
    /// the path asked for, never where it leads or anything read from there.
    #[error("{} leads outside the data file's folder {}; refused without reading it", path.display(), folder.display())]
    OutsideFolder { path: PathBuf, folder: PathBuf },
    #[error("data file {} is {len} bytes, more than the {max} bytes (1 TiB) the index can address", path.display(), max = MAX_FILE_LEN)]
    TooLarge { path: PathBuf, len: u64 },
    /// Checked before anything is allocated: a file that cannot fit is refused with
    /// both sizes, instead of aborting the process on a failed allocation.
    #[error("data file {} is {len} bytes, more than the {limit} bytes of memory that {budget}; --storage mmap serves a file larger than memory", path.display())]
    TooLargeForMemory {
        path: PathBuf,
        len: u64,
        limit: u64,
        budget: String,
    },
    /// The index (and the records parsed for it) must fit too; estimated from the
    /// first MiB of the file, as the index's capacity is.
    #[error("data file {} has about {lines} lines, whose index needs about {need} bytes while loading, more than the {limit} bytes of memory that {budget}", path.display())]
    IndexTooLargeForMemory {
        path: PathBuf,
        lines: u64,
        need: u64,
        limit: u64,
        budget: String,
    },
    #[error("cannot allocate {len} bytes to read data file {}: {source}; --storage mmap serves a file larger than memory", path.display())]
    OutOfMemory {
        path: PathBuf,
        len: u64,
        source: std::collections::TryReserveError,
    },
    #[error("data file {} is locked exclusively by another process (a publisher still writing it?); gave up after {waited} (--lock-timeout)", path.display())]
    Locked {
        path: PathBuf,
        waited: humantime::Duration,
    },
    #[error("cannot lock data file {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read data file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data file {} changed while loading ({what}); load it again once it is complete", path.display())]
    Changed { path: PathBuf, what: String },
    #[error("cannot read checksum file {}: {source}", path.display())]
    ChecksumFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad checksum in {source_desc}: {reason}")]
    ChecksumFormat { source_desc: String, reason: String },
    #[error("SHA-256 of {} is {actual}, but {source_desc} expects {expected}", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
        source_desc: String,
    },
    #[error("{}:{line}: {reason}: {excerpt}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        reason: LineError,
        excerpt: String,
    },
    #[error("{}:{line}: duplicate key {key} (first on line {first_line}); --on-duplicate first|last accepts duplicates", path.display())]
    Duplicate {
        path: PathBuf,
        line: u64,
        first_line: u64,
        key: uuid::Uuid,
    },
    #[error("data file {} holds no records (--allow-empty serves an empty dataset)", path.display())]
    Empty { path: PathBuf },
}

impl LoadError {
    /// The message an HTTP answer (`POST /admin/reload`'s 422) gives: the same, but a
    /// malformed line is named by number and reason without its excerpt. A reload may
    /// name any file in the data file's folder, and the answer must not become a way
    /// to read the first line of one that is not a data file; the log, which only the
    /// operator reads, keeps the excerpt.
    pub fn answer_detail(&self) -> String {
        match self {
            LoadError::Malformed {
                path, line, reason, ..
            } => format!(
                "{}:{line}: {reason} (the log has an excerpt of the line)",
                path.display()
            ),
            other => other.to_string(),
        }
    }

    /// The data file (or its sidecar) at `path` could not be opened. When the file's
    /// folder is missing too, the usual cause is a data volume that is not mounted (the
    /// Kubernetes manifests mount one at /data; the image has no such folder), which
    /// "No such file or directory" alone does not say, so the message adds it.
    pub fn open(path: PathBuf, source: std::io::Error) -> Self {
        let hint = match path.parent() {
            Some(folder)
                if source.kind() == std::io::ErrorKind::NotFound
                    && !folder.as_os_str().is_empty()
                    && !Path::exists(folder) =>
            {
                format!(
                    "; the folder {} does not exist either: is the data volume mounted? \
                     (--data, KVSERVE_DATA name the file)",
                    folder.display()
                )
            }
            _ => String::new(),
        };
        LoadError::Open { path, source, hint }
    }
}
