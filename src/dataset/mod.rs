//! The data file and the in-memory `Dataset` built from it.
//!
//! Design goal: answer `lookup(key)` with one hash probe and no allocation, from an index
//! that several threads build at once. The cost: the whole file stays in memory (the
//! value buffer *is* the file's bytes, so values are never copied), plus about 30–40
//! bytes of index per key.
//!
//! The rooms: `format` (the line grammar), `options` (how a load treats the file),
//! `integrity` (open, lock, stat, checksum), `memory` (the memory bound), `load` (the
//! parallel loader), `read` (the parallel read of a memory-storage load), `workers`
//! (joining the loader's threads), `pages` (huge pages and prefetch hints),
//! `index`, `mapped` (mmap storage), `store` (the `Dataset`), `error`, `prefixes`
//! (shards), `gen` (test data). This file only declares them and names what
//! the rest of the crate uses, so the rooms import each other, never this file.

mod error;
pub mod format;
pub mod gen;
pub mod index;
pub mod integrity;
mod load;
mod mapped;
pub mod memory;
mod options;
mod pages;
pub mod prefixes;
mod read;
mod store;
mod workers;

pub use error::LoadError;
pub use format::LineError;
pub use index::MAX_FILE_LEN;
pub use load::load;
#[doc(hidden)]
pub use load::load_with_chunk_bytes;
pub use options::{LoadOptions, OnDuplicate, Storage, UnknownChoice, MAX_VALUE_LEN};
pub use pages::Collapsed;
pub use store::{Dataset, DatasetInfo};
