//! Caches of small per-key answers that every sync asks for: a user's room list
//! (`rooms_of_user`: a prefix scan plus a JSON decode per room) and a device's one-time key
//! counts and unused fallback key types (two prefix scans over up to a hundred keys).
//!
//! Invalidation: a writer drops the key's entry and bumps `generation` after its batch is
//! written (for a write at a stream position: before the position can become visible, see
//! `write_pending_at_new_pos`). A reader notes the generation before reading RocksDB and stores what it read only
//! if no writer finished in between, so an answer read before a write is never cached after
//! it. Bounded by a weight (records held): past the bound the cache is emptied.

use std::{borrow::Borrow, collections::HashMap, hash::Hash, sync::Mutex};

struct Inner<K, V> {
    generation: u64,
    weight: usize,
    entries: HashMap<K, V>,
}

pub(super) struct ReadCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    max_weight: usize,
    weigh: fn(&V) -> usize,
}

impl<K: Hash + Eq, V: Clone> ReadCache<K, V> {
    pub fn new(max_weight: usize, weigh: fn(&V) -> usize) -> Self {
        Self { inner: Mutex::new(Inner { generation: 0, weight: 0, entries: HashMap::new() }), max_weight, weigh }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer, or the generation to hand to `store` after reading RocksDB.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        let inner = self.lock();
        inner.entries.get(key).cloned().ok_or(inner.generation)
    }

    /// Caches an answer read from RocksDB when no write finished since `generation`.
    pub fn store(&self, key: K, generation: u64, value: &V) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let weight = (self.weigh)(value) + 1;
        if inner.weight + weight > self.max_weight {
            inner.entries.clear();
            inner.weight = 0;
        }
        inner.weight += weight;
        if let Some(old) = inner.entries.insert(key, value.clone()) {
            inner.weight -= (self.weigh)(&old) + 1;
        }
    }

    /// Call after a batch that changes the answers for these keys has been written.
    pub fn written<'a, Q: Hash + Eq + ?Sized + 'a>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        inner.generation += 1;
        for key in keys {
            if let Some(old) = inner.entries.remove(key) {
                inner.weight -= (self.weigh)(&old) + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_read_before_a_write_is_not_cached_after_it() {
        let cache: ReadCache<String, Vec<u32>> = ReadCache::new(100, Vec::len);
        let list = vec![1, 2];
        let generation = cache.get("alice").unwrap_err();
        cache.written(["alice"]);
        cache.store("alice".into(), generation, &list);
        assert!(cache.get("alice").is_err(), "the stale answer was dropped");
        let generation = cache.get("alice").unwrap_err();
        cache.store("alice".into(), generation, &list);
        assert_eq!(cache.get("alice").unwrap(), list);
        cache.written(["bob"]);
        assert_eq!(cache.get("alice").unwrap(), list, "other keys' writes keep alice's entry");
        cache.written(["alice"]);
        assert!(cache.get("alice").is_err());
    }

    #[test]
    fn past_its_weight_the_cache_empties() {
        let cache: ReadCache<u32, Vec<u32>> = ReadCache::new(10, Vec::len);
        for key in 0..3 {
            let generation = cache.get(&key).unwrap_err();
            cache.store(key, generation, &vec![0; 3]);
        }
        assert!(cache.get(&0).is_err(), "the third entry (weight 4 + 8) emptied the cache");
        assert!(cache.get(&2).is_ok());
    }
}
