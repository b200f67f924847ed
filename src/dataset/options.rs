//! How a load treats the file: the options of the `serve` flags of the same names.

use std::path::PathBuf;

use super::prefixes;

/// The highest `--max-line-bytes` accepted (16 MiB - 1): a bound on what one request
/// can make the server send, not a limit of the index.
pub const MAX_VALUE_LEN: usize = (1 << 24) - 1;

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
