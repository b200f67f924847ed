//! The loaded `Dataset`: the file's bytes, the index into them, and facts about the load.

use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;

use super::{index, integrity, mapped, pages};

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
    pub(super) bytes: Bytes,
    pub(super) index: index::Frozen,
    pub(super) info: DatasetInfo,
    /// `info.etag` as bytes that share one allocation, so a response header can be
    /// made from it without copying (the HTTP side builds the header; this module
    /// knows nothing of HTTP).
    pub(super) etag: Bytes,
    /// With `--storage mmap`: the mapping and the file's stamp when it was loaded, to
    /// tell later whether the pages being served were written since.
    pub(super) mapped: Option<(std::sync::Arc<mapped::MappedFile>, integrity::FileStamp)>,
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
        let start = self.value_start(key)?;
        Some(
            self.bytes
                .slice(start..index::value_end(&self.bytes, start)),
        )
    }

    /// Where the value of `key` starts, if it is present: the index probe of `lookup`
    /// alone, without a lock (`index::Frozen`). The batch route probes every key first
    /// and reads the values after (`prefetch_value`, `value_at`), so the values' cache misses
    /// overlap instead of queueing one key at a time.
    pub fn value_start(&self, key: u128) -> Option<usize> {
        Some(self.index.get(key)?.offset())
    }

    /// Starts loading the index lines `value_start(key)` will read (`Frozen::prefetch`):
    /// a batch calls it a few keys ahead of the one it probes.
    pub fn prefetch(&self, key: u128) {
        self.index.prefetch(key);
    }

    /// Moves the index's tables into huge pages (`pages::collapse`): lookups then miss
    /// the TLB far less. Takes about a second at 10M keys, so it is run on its own
    /// thread once the dataset serves; lookups meanwhile are answered as before.
    pub fn collapse_index(&self) -> pages::Collapsed {
        pages::collapse(self.index.allocations())
    }

    /// Starts loading the first two cache lines of the value at `start` (most values
    /// are shorter than a line, but half of them cross into the next), without
    /// waiting: a batch asks for each value as soon as its probe has found it, and
    /// reads them all after the last probe.
    pub fn prefetch_value(&self, start: usize) {
        let at = self.bytes.as_ptr().wrapping_add(start);
        pages::prefetch(at);
        pages::prefetch(at.wrapping_add(64));
    }

    /// The value starting at `start` (from `value_start`), borrowed: no reference count
    /// traffic on the shared buffer, which every worker would otherwise contend on
    /// once per key.
    pub fn value_at(&self, start: usize) -> &[u8] {
        &self.bytes[start..index::value_end(&self.bytes, start)]
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
