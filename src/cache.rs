//! A sharded LRU of hot rendered responses, in front of the dataset.
//!
//! `lru::LruCache::get` reorders the list, so even a read needs `&mut`: each shard is
//! a `Mutex`. Splitting keys over many shards keeps two requests from waiting on the
//! same lock unless they land on the same shard. These are std mutexes, not Tokio
//! ones, because nothing awaits while one is held.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;
use prometheus::IntCounter;

/// Each entry remembers the dataset generation it was rendered from: a request that
/// raced a reload cannot leave a body of the old file in the cache for the new one.
type Shard = LruCache<u128, (u64, Bytes)>;

/// A fixed-capacity LRU keyed by the 128-bit key. Capacity 0 disables it: nothing is
/// stored and nothing is counted (a miss counter rising while the cache is off would
/// read as a cache that never hits), at the cost of one branch.
pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    doorkeeper: Doorkeeper,
    /// Prometheus counters rather than bare atomics: the same cost on the hot path, and
    /// `/metrics` exports them as they are.
    hits: IntCounter,
    misses: IntCounter,
}

impl Cache {
    /// `capacity` is the total number of entries, spread evenly over the shards.
    pub fn new(capacity: usize) -> Self {
        let shard_count = if capacity == 0 {
            0
        } else {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores * 4)
                .next_power_of_two()
                .clamp(1, 64)
                .min(capacity.next_power_of_two())
        };
        let per_shard = capacity.div_ceil(shard_count.max(1));
        let shards = (0..shard_count)
            .filter_map(|_| NonZeroUsize::new(per_shard))
            .map(|cap| Mutex::new(LruCache::new(cap)))
            .collect();
        Self {
            shards,
            doorkeeper: Doorkeeper::new(capacity),
            hits: counter("kvserve_cache_hits_total", "Lookups answered from the LRU"),
            misses: counter(
                "kvserve_cache_misses_total",
                "Lookups the LRU could not answer",
            ),
        }
    }

    fn shard(&self, key: u128) -> Option<&Mutex<Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        // Fold and multiply so that keys which differ only in a few bits (sequential
        // or time-based UUIDs) still spread over the shards.
        let folded = (key as u64 ^ (key >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(&self.shards[(folded >> 32) as usize & (self.shards.len() - 1)])
    }

    /// Returns the cached entry, counting a hit or a miss while the cache is on.
    pub fn get(&self, key: u128, generation: u64) -> Option<Bytes> {
        let shard = self.shard(key)?;
        let found = lock(shard)
            .get(&key)
            .filter(|(rendered_for, _)| *rendered_for == generation)
            .map(|(_, body)| body.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.inc();
        found
    }

    /// Stores `value` if `key` was asked for before: see `Doorkeeper`.
    pub fn insert(&self, key: u128, generation: u64, value: Bytes) {
        if let Some(shard) = self.shard(key) {
            if self.doorkeeper.seen_before(key) {
                lock(shard).put(key, (generation, value));
            }
        }
    }

    /// Empties every shard (after a reload, or on an operator's request).
    pub fn purge(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
        self.doorkeeper.clear();
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).cap().get())
            .sum()
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    pub fn hits_counter(&self) -> &IntCounter {
        &self.hits
    }

    pub fn misses_counter(&self) -> &IntCounter {
        &self.misses
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    // Only an invalid name or help text can fail, and these are constants.
    IntCounter::new(name, help).unwrap_or_else(|err| panic!("metric {name}: {err}"))
}

/// Admission on the second sighting (the "doorkeeper" of TinyLFU): one bit per hash
/// slot remembers keys missed once, and only a key missed again enters the LRU. Under
/// uniform traffic over a key space much larger than the cache almost every key is
/// asked for once, and admitting each would evict a node and allocate another on every
/// request for a hit ratio near zero; hot keys are admitted on their second request.
/// The bits are cleared after as many first sightings as there are bits, so stale
/// sightings do not accumulate into admitting everything.
struct Doorkeeper {
    bits: Box<[AtomicU64]>,
    first_sightings: AtomicU64,
}

impl Doorkeeper {
    fn new(capacity: usize) -> Self {
        let words = (capacity.saturating_mul(8) / 64).next_power_of_two().max(1);
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            first_sightings: AtomicU64::new(0),
        }
    }

    /// Records `key` and says whether it had been recorded already.
    fn seen_before(&self, key: u128) -> bool {
        let hash = (key as u64 ^ (key >> 64) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let slot = (hash >> 32) as usize;
        let word = &self.bits[(slot / 64) & (self.bits.len() - 1)];
        let mask = 1u64 << (slot % 64);
        let seen = word.fetch_or(mask, Ordering::Relaxed) & mask != 0;
        if !seen {
            let sightings = self.first_sightings.fetch_add(1, Ordering::Relaxed) + 1;
            if sightings >= self.bits.len() as u64 * 64 {
                self.clear();
            }
        }
        seen
    }

    fn clear(&self) {
        self.first_sightings.store(0, Ordering::Relaxed);
        for word in self.bits.iter() {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// A panic while a shard was locked cannot leave an `LruCache` half-updated in a way
/// that matters to us (worst case a stale entry), so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: u64 = 1;

    #[test]
    fn hits_misses_and_eviction() {
        let cache = Cache::new(4);
        assert!(cache.capacity() >= 4);
        assert_eq!(cache.get(1, GEN), None);
        cache.insert(1, GEN, Bytes::from_static(b"one"));
        assert_eq!(cache.get(1, GEN), None, "a key seen once is not admitted");
        cache.insert(1, GEN, Bytes::from_static(b"one"));
        assert_eq!(cache.get(1, GEN), Some(Bytes::from_static(b"one")));
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
        for key in 0..1000u128 {
            cache.insert(key << 64 | key, GEN, Bytes::new());
            cache.insert(key << 64 | key, GEN, Bytes::new());
        }
        assert!(cache.len() <= cache.capacity());
        cache.purge();
        assert!(cache.is_empty());
    }

    #[test]
    fn entries_of_another_generation_are_misses() {
        let cache = Cache::new(4);
        cache.insert(7, 1, Bytes::from_static(b"old"));
        cache.insert(7, 1, Bytes::from_static(b"old"));
        assert_eq!(cache.get(7, 1), Some(Bytes::from_static(b"old")));
        assert_eq!(cache.get(7, 2), None, "rendered from the previous dataset");
        cache.insert(7, 2, Bytes::from_static(b"new"));
        assert_eq!(cache.get(7, 2), Some(Bytes::from_static(b"new")));
        assert_eq!(cache.get(7, 1), None);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let cache = Cache::new(0);
        cache.insert(1, GEN, Bytes::from_static(b"one"));
        assert_eq!(cache.get(1, GEN), None);
        assert_eq!(cache.capacity(), 0);
        assert_eq!(cache.misses(), 0, "an LRU that is off counts no misses");
    }
}
