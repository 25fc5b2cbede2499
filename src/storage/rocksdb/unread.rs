//! A cache of `room_notifications`: the notification records of a user in a room after their
//! read position, which every sync response counts for every room it carries.
//!
//! An entry answers only for the read position it was read at (a new receipt or an own
//! event moves the position, and the next read misses). New records are added to existing
//! entries after their batch is written and before their position can become visible, in
//! position order, never twice; a reader stores
//! what it read only if no record was added since it noted the generation, so a list read
//! before a write is never cached after it. Bounded by the records held.

use std::{collections::HashMap, sync::Mutex};

use crate::storage::{StreamPos, UnreadEntry};

/// Records held at most (~60 bytes each).
const MAX_RECORDS: usize = 200_000;

#[derive(Default)]
struct Inner {
    generation: u64,
    records: usize,
    /// `user SEP room` → (the read position the list starts after, the records after it).
    entries: HashMap<Vec<u8>, (StreamPos, Vec<UnreadEntry>)>,
}

#[derive(Default)]
pub(super) struct Unread {
    inner: Mutex<Inner>,
}

impl Unread {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The records after `after`, or the generation to hand to `store` after reading RocksDB.
    pub fn get(&self, key: &[u8], after: StreamPos) -> Result<Vec<UnreadEntry>, u64> {
        let inner = self.lock();
        match inner.entries.get(key) {
            Some((read, list)) if *read == after => Ok(list.clone()),
            _ => Err(inner.generation),
        }
    }

    pub fn store(&self, key: Vec<u8>, after: StreamPos, generation: u64, list: &[UnreadEntry]) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.records + list.len() > MAX_RECORDS {
            inner.entries.clear();
            inner.records = 0;
        }
        inner.records += list.len();
        if let Some((_, old)) = inner.entries.insert(key, (after, list.to_vec())) {
            inner.records -= old.len();
        }
    }

    /// Call after a batch holding these records (`user SEP room`, record) has been written.
    pub fn written(&self, records: Vec<(Vec<u8>, UnreadEntry)>) {
        let mut inner = self.lock();
        inner.generation += 1;
        let mut added = 0;
        for (key, record) in records {
            let Some((read, list)) = inner.entries.get_mut(&key) else { continue };
            if record.pos <= *read {
                continue;
            }
            if let Err(at) = list.binary_search_by_key(&record.pos, |r| r.pos) {
                list.insert(at, record);
                added += 1;
            }
        }
        inner.records += added;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pos: StreamPos) -> UnreadEntry {
        UnreadEntry { pos, notify: true, highlight: false, thread_id: None }
    }

    #[test]
    fn new_records_join_cached_lists_once_and_in_order() {
        let cache = Unread::default();
        let key = b"@a:x\xff!r:x".to_vec();
        let generation = cache.get(&key, 5).unwrap_err();
        cache.store(key.clone(), 5, generation, &[entry(7)]);
        assert_eq!(cache.get(&key, 5).unwrap(), [entry(7)]);
        assert!(cache.get(&key, 7).is_err(), "another read position misses");
        cache.written(vec![(key.clone(), entry(9)), (key.clone(), entry(7)), (key.clone(), entry(8))]);
        assert_eq!(cache.get(&key, 5).unwrap(), [entry(7), entry(8), entry(9)]);
    }

    #[test]
    fn a_list_read_before_a_write_is_not_cached_after_it() {
        let cache = Unread::default();
        let key = b"@a:x\xff!r:x".to_vec();
        let generation = cache.get(&key, 0).unwrap_err();
        cache.written(vec![(key.clone(), entry(3))]);
        cache.store(key.clone(), 0, generation, &[]);
        assert!(cache.get(&key, 0).is_err());
    }
}
