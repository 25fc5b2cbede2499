//! A cache of `rooms_of_user`: every sync reads the user's room list first, and a RocksDB
//! prefix scan plus a JSON decode per room cost more than the rest of an idle sync.
//!
//! Invalidation: a writer drops the user's entry and bumps `generation` after its batch is
//! written. A reader notes the generation before reading RocksDB and stores what it read only
//! if no writer finished in between, so a list read before a write is never cached after it.
//! Bounded by the number of room records held: past the bound the cache is emptied.

use std::{collections::HashMap, sync::Mutex};

use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::storage::MembershipRecord;

/// Room records held at most (~120 bytes each).
const MAX_RECORDS: usize = 200_000;

pub(super) type RoomList = Vec<(OwnedRoomId, MembershipRecord)>;

#[derive(Default)]
struct Inner {
    generation: u64,
    records: usize,
    lists: HashMap<OwnedUserId, RoomList>,
}

#[derive(Default)]
pub(super) struct UserRooms {
    inner: Mutex<Inner>,
}

impl UserRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached list, or the generation to hand to `store` after reading RocksDB.
    pub fn get(&self, user_id: &UserId) -> Result<RoomList, u64> {
        let inner = self.lock();
        inner.lists.get(user_id).cloned().ok_or(inner.generation)
    }

    /// Caches a list read from RocksDB when no write finished since `generation`.
    pub fn store(&self, user_id: &UserId, generation: u64, list: &RoomList) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.records + list.len() > MAX_RECORDS {
            inner.lists.clear();
            inner.records = 0;
        }
        inner.records += list.len();
        if let Some(old) = inner.lists.insert(user_id.to_owned(), list.clone()) {
            inner.records -= old.len();
        }
    }

    /// Call after a batch that changes these users' room lists has been written.
    pub fn written<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for user_id in users {
            if let Some(old) = inner.lists.remove(user_id) {
                inner.records -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pos: u64) -> MembershipRecord {
        MembershipRecord { membership: "join".into(), event_id: ruma::owned_event_id!("$e"), pos }
    }

    #[test]
    fn a_list_read_before_a_write_is_not_cached_after_it() {
        let cache = UserRooms::default();
        let alice = ruma::user_id!("@alice:x");
        let list = vec![(ruma::owned_room_id!("!a:x"), record(1))];
        let generation = cache.get(alice).unwrap_err();
        cache.written([alice]);
        cache.store(alice, generation, &list);
        assert!(cache.get(alice).is_err(), "the stale list was dropped");
        let generation = cache.get(alice).unwrap_err();
        cache.store(alice, generation, &list);
        assert_eq!(cache.get(alice).unwrap(), list);
        cache.written([ruma::user_id!("@bob:x")]);
        assert_eq!(cache.get(alice).unwrap(), list, "other users' writes keep alice's entry");
        cache.written([alice]);
        assert!(cache.get(alice).is_err());
    }
}
