//! The index: 128-bit key → where its value starts in the data file's bytes.
//!
//! An entry is 21 bytes with 1-byte alignment: the key as `[u8; 16]` (a `u128` would
//! be 16-byte aligned and pad every entry to 32) and a 40-bit value offset. The value's
//! length is not stored: it ends at the next line feed, found with `memchr` when the
//! value is read, which costs a few nanoseconds for typical values and saves 3 bytes
//! per key (30 MB at 10M keys).

use std::hash::{Hash, Hasher};

use dashmap::DashMap;

/// The largest data file a 40-bit offset can address (1 TiB).
pub const MAX_FILE_LEN: u64 = 1 << 40;

/// Shards of the `DashMap`: many more than cores, so request threads reading rarely
/// meet on one shard's lock, and enough that at 10M keys one shard's table (about
/// 0.7 MiB) fits in a core's L2 cache while the loader fills it shard by shard: with
/// 64 shards of 5.7 MiB every insert missed the cache and indexing took twice as long.
/// Each shard costs 128 bytes when empty.
const SHARDS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl Key {
    pub fn new(key: u128) -> Self {
        Key(key.to_le_bytes())
    }

    pub fn get(self) -> u128 {
        u128::from_le_bytes(self.0)
    }
}

impl Hash for Key {
    /// One 128-bit write: the derived impl would hash a length prefix and 16 bytes.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.get());
    }
}

/// Where a value starts, in 5 bytes, big-endian so that the derived ordering is the
/// order of the offsets (which the loader uses to keep the first or last duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValueAt([u8; 5]);

impl ValueAt {
    /// Callers guarantee `offset < MAX_FILE_LEN` (the loader checks the file size).
    pub fn new(offset: usize) -> Self {
        debug_assert!((offset as u64) < MAX_FILE_LEN);
        let b = (offset as u64).to_be_bytes();
        ValueAt([b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn offset(self) -> usize {
        let b = self.0;
        u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]) as usize
    }
}

/// The hasher is keyed per process (`ahash::RandomState`): UUID bits are mostly random,
/// but sequential or time-ordered (v7) keys, or a file built to collide, must not
/// degrade lookups.
pub type Index = DashMap<Key, ValueAt, ahash::RandomState>;

/// The index once the loader has built it: never written again (a reload builds a new
/// one), so lookups read the shards without taking their locks, and the type says no
/// one can write. Measured, the locks were not what a lookup paid for: batch CPU per
/// key did not move when they went (BENCHMARKS.md); the probe's cost is its cache
/// misses into a table larger than the CPU's caches.
pub type Frozen = dashmap::ReadOnlyView<Key, ValueAt, ahash::RandomState>;

pub fn new_index(capacity: usize) -> Index {
    Index::with_capacity_and_hasher_and_shard_amount(capacity, ahash::RandomState::new(), SHARDS)
}

/// The end of the value that starts at `start`: the next line feed (or the end of
/// the file), less a carriage return before it.
pub fn value_end(bytes: &[u8], start: usize) -> usize {
    let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |n| start + n);
    if end > start && bytes[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_21_bytes() {
        assert_eq!(std::mem::size_of::<(Key, ValueAt)>(), 21);
    }

    #[test]
    fn offsets_use_40_bits() {
        for offset in [0usize, 1, 12345, (MAX_FILE_LEN - 1) as usize] {
            assert_eq!(ValueAt::new(offset).offset(), offset);
        }
        assert!(ValueAt::new(1) < ValueAt::new(256));
    }

    #[test]
    fn values_end_at_the_line_end() {
        let text = b"k v1\r\nk v2\nk v3";
        assert_eq!(&text[2..value_end(text, 2)], b"v1");
        assert_eq!(&text[8..value_end(text, 8)], b"v2");
        assert_eq!(&text[13..value_end(text, 13)], b"v3");
        assert_eq!(value_end(b"k \n", 2), 2);
    }

    #[test]
    fn keys_round_trip() {
        let key = 0x72cf48f7_d604_4423_b012_4e2329f5117b;
        assert_eq!(Key::new(key).get(), key);
    }
}
