//! The newest timeline entries of the rooms written since start, in memory. An incremental
//! /sync asks every room it wakes for "what came after my token"; in a long-poll fan-out
//! that is the same room asked once per woken client, and a RocksDB iterator per question
//! cost more than the rest of the answer.
//!
//! A tail holds every entry of its room above `complete_after`, so a forward read from at
//! or above it is answered here and anything older goes to RocksDB. Entries are recorded
//! once written, before their position can be published. Backfilled events go below the
//! room's oldest entry, which is never above `complete_after`, so no tail misses one.

use std::{collections::VecDeque, sync::Mutex};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};

use crate::hash::HashMap;
use crate::storage::{StateGroupId, StreamPos};

/// Entries kept per room: a woken long-poll usually finds one or two new events; a client
/// further behind reads from RocksDB.
const ENTRIES_PER_ROOM: usize = 16;
/// Rooms kept; past this every tail starts over (about 3 MB at most).
const MAX_ROOMS: usize = 2048;

pub(super) type Entry = (StreamPos, OwnedEventId, StateGroupId);

#[derive(Default)]
pub(super) struct Tails {
    rooms: Mutex<HashMap<OwnedRoomId, Tail>>,
}

struct Tail {
    /// Every entry of the room with a position above this is in `entries`.
    complete_after: StreamPos,
    /// Oldest first.
    entries: VecDeque<Entry>,
}

impl Tails {
    /// Records an appended entry (once its batch is written).
    pub(super) fn record(&self, room_id: &RoomId, pos: StreamPos, event_id: &EventId, state_after: StateGroupId) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if !rooms.contains_key(room_id) && rooms.len() >= MAX_ROOMS {
            rooms.clear();
        }
        let tail = rooms
            .entry(room_id.to_owned())
            // One spare slot: an entry is inserted before the oldest is dropped.
            .or_insert_with(|| Tail {
                complete_after: pos.saturating_sub(1),
                entries: VecDeque::with_capacity(ENTRIES_PER_ROOM + 1),
            });
        if pos <= tail.complete_after {
            // Older than what the tail covers (an append of this room that finished after a
            // later one): readers that could want it go to RocksDB.
            return;
        }
        let at = tail.entries.partition_point(|(p, _, _)| *p < pos);
        tail.entries.insert(at, (pos, event_id.to_owned(), state_after));
        while tail.entries.len() > ENTRIES_PER_ROOM {
            if let Some((dropped, _, _)) = tail.entries.pop_front() {
                tail.complete_after = dropped;
            }
        }
    }

    /// Up to `limit` entries of the room above `after`, oldest first; `None` when the tail
    /// does not hold everything above `after`.
    pub(super) fn after(&self, room_id: &RoomId, after: StreamPos, limit: usize) -> Option<Vec<Entry>> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let tail = rooms.get(room_id)?;
        if after < tail.complete_after {
            return None;
        }
        let start = tail.entries.partition_point(|(p, _, _)| *p <= after);
        Some(tail.entries.iter().skip(start).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, room_id};

    use super::*;

    fn ids(entries: Option<Vec<Entry>>) -> Option<Vec<StreamPos>> {
        entries.map(|e| e.into_iter().map(|(pos, _, _)| pos).collect())
    }

    #[test]
    fn answers_only_what_it_holds_completely() {
        let tails = Tails::default();
        let room = room_id!("!r:x");
        assert_eq!(tails.after(room, 0, 10), None, "an unknown room goes to the database");
        tails.record(room, 10, &owned_event_id!("$a"), 1);
        tails.record(room, 12, &owned_event_id!("$b"), 1);
        assert_eq!(ids(tails.after(room, 9, 10)), Some(vec![10, 12]));
        assert_eq!(ids(tails.after(room, 10, 10)), Some(vec![12]));
        assert_eq!(ids(tails.after(room, 12, 10)), Some(vec![]));
        assert_eq!(ids(tails.after(room, 9, 1)), Some(vec![10]));
        assert_eq!(tails.after(room, 8, 10), None, "below the tail's start");
        // An append of the room that finished late lands in order; one older than the tail
        // is left to the database.
        tails.record(room, 11, &owned_event_id!("$c"), 2);
        tails.record(room, 5, &owned_event_id!("$d"), 2);
        assert_eq!(ids(tails.after(room, 9, 10)), Some(vec![10, 11, 12]));
        assert_eq!(tails.after(room, 4, 10), None);
    }

    #[test]
    fn dropping_old_entries_raises_the_start() {
        let tails = Tails::default();
        let room = room_id!("!r:x");
        for pos in 1..=(ENTRIES_PER_ROOM as u64 + 5) {
            tails.record(room, pos, &owned_event_id!("$e"), 1);
        }
        assert_eq!(tails.after(room, 4, 100), None);
        assert_eq!(tails.after(room, 5, 100).map(|e| e.len()), Some(ENTRIES_PER_ROOM));
        let rooms = tails.rooms.lock().unwrap();
        assert!(rooms[room].entries.capacity() <= ENTRIES_PER_ROOM + 1, "the deque never grows");
    }
}
