//! The index: 128-bit key → where its value starts in the data file's bytes.
//!
//! An entry is 21 bytes with 1-byte alignment: the key as `[u8; 16]` (a `u128` would
//! be 16-byte aligned and pad every entry to 32) and a 40-bit value offset. The value's
//! length is not stored: it ends at the next line feed, found with `memchr` when the
//! value is read, which costs a few nanoseconds for typical values and saves 3 bytes
//! per key (30 MB at 10M keys).

use std::hash::{Hash, Hasher};

use dashmap::DashMap;

use super::pages;

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
/// misses into a table larger than the CPU's caches, which `prefetch` lets a batch
/// overlap.
pub struct Frozen {
    view: dashmap::ReadOnlyView<Key, ValueAt, ahash::RandomState>,
    /// The map's own hasher (a clone: the same keys), to find a key's slot for
    /// `prefetch` without probing.
    hasher: ahash::RandomState,
}

impl Frozen {
    pub fn new(index: Index) -> Self {
        let hasher = index.hasher().clone();
        Frozen {
            view: index.into_read_only(),
            hasher,
        }
    }

    pub fn get(&self, key: u128) -> Option<ValueAt> {
        self.view.get(&Key::new(key)).copied()
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// Slots allocated, for tests of the index's memory.
    pub fn capacity(&self) -> usize {
        self.view.capacity()
    }

    /// Asks the CPU to start loading the cache lines a `get` of `key` will read first
    /// (the control bytes and the first bucket of its probe), without waiting for
    /// them: a batch prefetches a few keys ahead of the one it probes, so the misses
    /// of several keys are in flight at once instead of one after another.
    ///
    /// Only a hint: where the lines are is computed from hashbrown's table layout
    /// (`RawTable::data_end`'s documentation: buckets below it, control bytes from
    /// it), and a wrong address would cost speed, never a wrong answer. The unit test
    /// `prefetch_finds_the_slots` checks the addresses against real probes.
    #[inline]
    pub fn prefetch(&self, key: u128) {
        let (table, pos) = self.slot(key);
        let end = table.data_end().as_ptr();
        pages::prefetch(end.cast::<u8>().wrapping_add(pos));
        pages::prefetch(end.wrapping_sub(pos + 1).cast::<u8>());
    }

    /// Where each shard's table lies in memory (start, end), for `pages::collapse`.
    pub fn allocations(&self) -> Vec<(usize, usize)> {
        self.view
            .shards()
            .iter()
            .map(|shard| {
                // SAFETY: as in `slot`: no writers.
                let table = unsafe { &*shard.data_ptr() };
                let end = table.data_end().as_ptr() as usize;
                let buckets = table.buckets();
                // Buckets below `data_end`, then one control byte per bucket and a
                // trailing group of 16.
                let start =
                    end - buckets * std::mem::size_of::<(Key, dashmap::SharedValue<ValueAt>)>();
                (start, end + buckets + 16)
            })
            .collect()
    }

    /// The table of `key`'s shard and the first slot of its probe sequence.
    fn slot(&self, key: u128) -> (&Table, usize) {
        let hash = self.hasher.hash_one(Key::new(key));
        let shards = self.view.shards();
        let shard = shard_of(hash, shards.len());
        // SAFETY: a `ReadOnlyView` has no writers, so its shards' tables may be read
        // without their locks; this is the read `ReadOnlyView::get` itself makes.
        let table = unsafe { &*shards[shard].data_ptr() };
        (table, hash as usize & (table.buckets() - 1))
    }
}

/// One shard's table, as `dashmap`'s `raw-api` exposes it.
type Table = hashbrown::raw::RawTable<(Key, dashmap::SharedValue<ValueAt>)>;

/// The shard `DashMap` picks for `hash` among `shards` (a power of two): its top bits
/// after the 7 that hashbrown keeps for the control byte.
fn shard_of(hash: u64, shards: usize) -> usize {
    let shift = usize::BITS - shards.trailing_zeros();
    ((hash as usize) << 7).checked_shr(shift).unwrap_or(0)
}

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

    /// `prefetch` points at the slots `get` really reads: the shard formula is
    /// `DashMap`'s own, and for nearly every key its bucket lies within the first
    /// group (16 slots) of the probe sequence that starts at the hinted slot.
    /// An index of `n` scattered keys, each pointing at its position in the list.
    fn filled(n: u128) -> (Index, Vec<u128>) {
        let index = new_index(n as usize);
        let keys: Vec<u128> = (0..n)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        for (i, &key) in keys.iter().enumerate() {
            index.insert(Key::new(key), ValueAt::new(i));
        }
        (index, keys)
    }

    #[test]
    fn prefetch_finds_the_slots() {
        let (index, keys) = filled(20_000);
        for hash in [0u64, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(shard_of(hash, SHARDS), index.determine_shard(hash as usize));
        }
        let frozen = Frozen::new(index);
        let mut near = 0;
        for (i, &key) in keys.iter().enumerate() {
            let (table, pos) = frozen.slot(key);
            let hash = frozen.hasher.hash_one(Key::new(key));
            let bucket = table
                .find(hash, |(k, _)| k.get() == key)
                .expect("the key is in the table its shard names");
            // SAFETY: `bucket` was just found in `table`.
            let at = unsafe { table.bucket_index(&bucket) };
            if (at + table.buckets() - pos) % table.buckets() < 16 {
                near += 1;
            }
            assert_eq!(frozen.get(key).map(ValueAt::offset), Some(i));
        }
        assert!(
            near * 100 >= keys.len() * 95,
            "{near} of {} near",
            keys.len()
        );
        frozen.prefetch(keys[0]);
    }

    /// The tables' memory as `allocations` gives it moves into huge pages, and every
    /// entry reads the same afterwards.
    #[test]
    fn collapsing_keeps_every_entry() {
        let (index, keys) = filled(400_000);
        let frozen = Frozen::new(index);
        let done = pages::collapse(frozen.allocations());
        #[cfg(target_os = "linux")]
        assert!(done.huge_pages >= 1, "{done:?}");
        let _ = done;
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(frozen.get(key).map(ValueAt::offset), Some(i));
        }
    }

    #[test]
    fn keys_round_trip() {
        let key = 0x72cf48f7_d604_4423_b012_4e2329f5117b;
        assert_eq!(Key::new(key).get(), key);
    }
}
