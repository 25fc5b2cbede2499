//! Caches of small per-key answers that every sync asks for: a user's room list
//! (`rooms_of_user`: a prefix scan plus a JSON decode per room), a device's one-time key
//! counts and unused fallback key types (two prefix scans over up to a hundred keys), and the
//! notification records of a user in a room after their read position (`room_notifications`,
//! counted for every room a sync response carries; an entry answers only for the read position
//! it was read at, and new records are added to it by the append that writes them).
//!
//! Invalidation: a writer drops the key's entry and bumps `generation` after its batch is
//! written (for a write at a stream position: before the position can become visible, see
//! `try_append_event_pending`). A reader notes the generation before reading RocksDB and stores what it read only
//! if no writer finished in between, so an answer read before a write is never cached after
//! it. Bounded by a weight (records held): past the bound the cache is emptied.

use std::{borrow::Borrow, hash::Hash, sync::Mutex};

use crate::hash::HashMap;

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
        Self { inner: Mutex::new(Inner { generation: 0, weight: 0, entries: HashMap::default() }), max_weight, weigh }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer, or the generation to hand to `store` after reading RocksDB.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        self.get_if(key, |_| true)
    }

    /// `get`, where an entry answers only when `usable` holds for it.
    pub fn get_if<Q: Hash + Eq + ?Sized>(&self, key: &Q, usable: impl Fn(&V) -> bool) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        let inner = self.lock();
        inner.entries.get(key).filter(|v| usable(v)).cloned().ok_or(inner.generation)
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

    /// `written` for changes the cache can follow: `apply` brings each cached answer up to
    /// date with its change instead of dropping it.
    pub fn written_with<'a, Q: Hash + Eq + ?Sized + 'a, C>(
        &self,
        changes: impl IntoIterator<Item = (&'a Q, C)>,
        apply: impl Fn(&mut V, C),
    ) where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        inner.generation += 1;
        for (key, change) in changes {
            let Some(value) = inner.entries.get_mut(key) else { continue };
            let before = (self.weigh)(value);
            apply(value, change);
            let after = (self.weigh)(value);
            inner.weight = inner.weight + after - before;
        }
    }
}

/// A cached `room_notifications` answer: the read position and the records after it
/// (shared with readers: a hit clones the `Arc`, an added record copies a list a reader holds).
pub(super) type Unread = (crate::storage::StreamPos, std::sync::Arc<Vec<crate::storage::UnreadEntry>>);

/// Adds a record just written to a cached answer: once, in position order, if after its read
/// position.
pub(super) fn add_unread((read, list): &mut Unread, record: crate::storage::UnreadEntry) {
    if record.pos <= *read {
        return;
    }
    if let Err(at) = list.binary_search_by_key(&record.pos, |r| r.pos) {
        std::sync::Arc::make_mut(list).insert(at, record);
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

    fn entry(pos: crate::storage::StreamPos) -> crate::storage::UnreadEntry {
        crate::storage::UnreadEntry { pos, notify: true, highlight: false, thread_id: None }
    }

    fn unread_cache() -> ReadCache<Vec<u8>, Unread> {
        ReadCache::new(200_000, |(_, list)| list.len())
    }

    #[test]
    fn new_records_join_cached_lists_once_and_in_order() {
        let cache = unread_cache();
        let key = b"@a:x\xff!r:x".to_vec();
        let at_5 = |(read, _): &Unread| *read == 5;
        let generation = cache.get_if(&*key, at_5).unwrap_err();
        cache.store(key.clone(), generation, &(5, vec![entry(7)].into()));
        let held = cache.get_if(&*key, at_5).unwrap().1;
        assert_eq!(*held, [entry(7)]);
        assert!(cache.get_if(&*key, |(read, _)| *read == 7).is_err(), "another read position misses");
        cache.written_with([(&*key, entry(9)), (&*key, entry(7)), (&*key, entry(8))], add_unread);
        assert_eq!(*cache.get_if(&*key, at_5).unwrap().1, [entry(7), entry(8), entry(9)]);
        assert_eq!(*held, [entry(7)], "a list a reader holds does not change under it");
    }

    #[test]
    fn a_list_read_before_a_record_is_written_is_not_cached_after_it() {
        let cache = unread_cache();
        let key = b"@a:x\xff!r:x".to_vec();
        let generation = cache.get(&*key).unwrap_err();
        cache.written_with([(&*key, entry(3))], add_unread);
        cache.store(key.clone(), generation, &(0, Default::default()));
        assert!(cache.get(&*key).is_err());
    }
}
