//! The data file and the in-memory `Dataset` built from it.
//!
//! Design goal: answer `lookup(key)` with one hash probe and no allocation, from an index
//! that several threads build at once. The cost: the whole file stays in memory (the
//! value buffer *is* the file's bytes, so values are never copied), plus about 30–40
//! bytes of index per key.

pub mod format;
pub mod gen;
pub mod index;
pub mod integrity;
mod load;
mod mapped;
pub mod memory;
pub mod prefixes;

use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;

pub use format::LineError;
pub use load::load;
#[doc(hidden)]
pub use load::load_with_chunk_bytes;

/// The highest `--max-line-bytes` accepted (16 MiB - 1): a bound on what one request
/// can make the server send, not a limit of the index.
pub const MAX_VALUE_LEN: usize = (1 << 24) - 1;

pub use index::MAX_FILE_LEN;

/// What to do when a key appears on two lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDuplicate {
    /// Refuse the file: two values for one key means a corrupt data file.
    #[default]
    Error,
    /// Keep the value from the earliest line.
    First,
    /// Keep the value from the latest line.
    Last,
}

impl OnDuplicate {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [Self; 3] = [Self::Error, Self::First, Self::Last];

    /// The name on the command line (and in `/admin/dataset`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::First => "first",
            Self::Last => "last",
        }
    }

    /// What the choice means, one sentence for `--help`.
    pub const fn meaning(self) -> &'static str {
        match self {
            Self::Error => "Refuse the file: two values for one key means a corrupt data file",
            Self::First => "Keep the value from the earliest line",
            Self::Last => "Keep the value from the latest line",
        }
    }
}

/// Where the values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// The file is read into one contiguous buffer that holds every value.
    #[default]
    Memory,
    /// Values are read from the memory-mapped file, for data larger than RAM; the
    /// shared lock is held for as long as the mapping lives.
    Mmap,
}

impl Storage {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [Self; 2] = [Self::Memory, Self::Mmap];

    /// The name on the command line (and in `/admin/dataset`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Mmap => "mmap",
        }
    }

    /// What the choice means, one sentence for `--help`.
    pub const fn meaning(self) -> &'static str {
        match self {
            Self::Memory => "The file is read into one contiguous buffer that holds every value",
            Self::Mmap => {
                "Values are read from the memory-mapped file, for data larger than RAM; the \
                 shared lock is held for as long as the mapping lives"
            }
        }
    }
}

/// A name that is none of a choice's `ALL`; the message lists the names accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not one of: {}", expected.join(", "))]
pub struct UnknownChoice {
    pub given: String,
    pub expected: Vec<&'static str>,
}

/// `FromStr` and `Display` by the names of `ALL`, so the command line (in `cli.rs`)
/// needs nothing from this module but the names.
macro_rules! named_choice {
    ($ty:ty) => {
        impl std::str::FromStr for $ty {
            type Err = UnknownChoice;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|choice| choice.name() == text)
                    .ok_or_else(|| UnknownChoice {
                        given: text.to_owned(),
                        expected: Self::ALL.iter().map(|choice| choice.name()).collect(),
                    })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_choice!(OnDuplicate);
named_choice!(Storage);

/// How a load treats the file; see the `serve` flags of the same names.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub max_line_bytes: usize,
    pub skip_invalid: bool,
    pub on_duplicate: OnDuplicate,
    pub lock_timeout: std::time::Duration,
    /// Expected SHA-256 (hex); when `None` a `<file>.sha256` sidecar is used if present.
    pub sha256: Option<String>,
    pub allow_empty: bool,
    pub storage: Storage,
    /// Parser threads; 0 means one per available core.
    pub threads: usize,
    /// Only keys whose first hex digit is in the set are loaded (`--key-prefixes`).
    pub key_prefixes: prefixes::KeyPrefixes,
    /// The folder the opened file (and its `.sha256`) must lie in, checked on the file
    /// actually opened; `None` trusts the path wherever it points (the configured
    /// `--data` file, `kvserve verify`).
    pub confine_to: Option<PathBuf>,
    /// The most bytes a load may allocate for the file (`Storage::Memory`) and its
    /// index (`--max-memory`); `None` means what the system says is available at the
    /// time of the load (see `memory`).
    pub max_memory: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
            skip_invalid: false,
            on_duplicate: OnDuplicate::Error,
            lock_timeout: std::time::Duration::from_secs(30),
            sha256: None,
            allow_empty: false,
            storage: Storage::Memory,
            threads: 0,
            key_prefixes: prefixes::KeyPrefixes::ALL,
            confine_to: None,
            max_memory: None,
        }
    }
}

/// Why a load failed. Every variant names the file; line errors also the 1-based line
/// number and an excerpt, so a publisher can fix the file without guessing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open data file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
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

/// Facts about a loaded dataset, for logs and `/admin/dataset`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub keys: u64,
    /// xxh3-128 of the file's bytes, lowercase hex: cheap enough to compute on every
    /// load. It names the file alone, whatever the load options, so a publisher can
    /// tell which file an instance serves.
    pub version: String,
    /// The quoted `ETag` of every value: 64 bits of `version`, folded with the load
    /// options that changed which values are served (see `load::served_etag`), so it
    /// may differ between instances serving the same file. Computed once per load
    /// rather than per response.
    pub etag: String,
    /// The SHA-256 the file was checked against (`--sha256` or the sidecar), present
    /// only when one was given. It certifies the bytes as they were during the load,
    /// at `loaded_at`: the hash is taken over exactly the bytes that are then parsed,
    /// and the load is refused if the file's size, mtime, ctime or inode moved between
    /// the stat before and the stat after. With `--storage memory` those bytes are a
    /// private copy, so it certifies what is served for the dataset's lifetime. With
    /// `--storage mmap` values are read from the file's pages for as long as the
    /// dataset is served; the shared lock keeps cooperating publishers out, but a
    /// writer that ignores it and rewrites the file in place after the load changes
    /// what is served without being noticed until the next reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(with = "humantime_serde_rfc3339")]
    pub loaded_at: SystemTime,
    pub load_seconds: f64,
    pub skipped_lines: u64,
    /// Lines whose key was already present, resolved by `--on-duplicate first|last`.
    pub duplicate_lines: u64,
    /// The first hex digits this instance owns (`--key-prefixes`), e.g. `0-f`.
    pub key_prefixes: String,
    /// Valid lines skipped because their key belongs to another shard.
    pub foreign_lines: u64,
    /// How many datasets the process has installed, this one included (0 until
    /// installed).
    pub generation: u64,
}

mod humantime_serde_rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        time: &std::time::SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }
}

/// An immutable, fully loaded data file.
pub struct Dataset {
    /// The whole file: an owned buffer (`--storage memory`) or the mapping
    /// (`--storage mmap`), either way shared with every response body cut from it.
    bytes: Bytes,
    index: index::Index,
    info: DatasetInfo,
    /// `info.etag` as bytes that share one allocation, so a response header can be
    /// made from it without copying (the HTTP side builds the header; this module
    /// knows nothing of HTTP).
    etag: Bytes,
    /// With `--storage mmap`: the mapping and the file's stamp when it was loaded, to
    /// tell later whether the pages being served were written since.
    mapped: Option<(std::sync::Arc<mapped::MappedFile>, integrity::FileStamp)>,
}

impl Dataset {
    /// The value for `key`: one probe of the index, then a zero-copy slice of the
    /// buffer (a reference count increment, no allocation), so it can become a
    /// response body directly. Every lookup route answers from this one call.
    ///
    /// The bytes are not handed out as `&str`: the loader validated the whole file as
    /// UTF-8, but with `--storage mmap` a writer that ignores the lock can change the
    /// mapped pages afterwards, so callers that need text must treat them as bytes
    /// (`http::key::escape_json` does).
    pub fn lookup(&self, key: u128) -> Option<Bytes> {
        let start = self.index.get(&index::Key::new(key))?.offset();
        let end = index::value_end(&self.bytes, start);
        Some(self.bytes.slice(start..end))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// With `--storage mmap`, whether the mapped file was written (size, mtime or
    /// ctime moved) since it was loaded, by an `fstat` of the mapped file: if so the
    /// values served may no longer be what `info().sha256` certified. `None` with
    /// `--storage memory`, whose values are a private copy. A file replaced by rename
    /// does not count: the old inode stays mapped and intact.
    pub fn mapped_file_changed(&self) -> Option<bool> {
        let (mapped, stamp) = self.mapped.as_ref()?;
        Some(match mapped.file().metadata() {
            Ok(meta) => stamp.difference(&integrity::FileStamp::of(&meta)).is_some(),
            Err(_) => true,
        })
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.info.generation = generation;
    }

    /// The `ETag` of every value of this dataset: 64 bits are plenty to tell two data
    /// files (or two loads of one file that serve different values) apart.
    pub fn etag(&self) -> &str {
        &self.info.etag
    }

    /// The same as shared bytes: cloning it is a reference count increment.
    pub fn etag_bytes(&self) -> &Bytes {
        &self.etag
    }
}
