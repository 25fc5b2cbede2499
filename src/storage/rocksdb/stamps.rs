//! Change stamps: the last stream position at which each of a few per-key streams changed
//! (a user's account data, a device's inbox, a room's receipts, a room's member events,
//! the device-list changes of everyone, what sets a user's read position in a room), kept in memory so that a reader asking "what
//! changed after `since`?" skips its RocksDB scan when the answer is "nothing".
//!
//! Invariant: a stamp is raised inside the write's batch builder, before the position is
//! handed to the group commit, so it is raised before the position can become visible. A
//! reader whose `since` is at or above the stamp therefore cannot miss a change. Keys never
//! seen answer `floor`, which starts at the last position on disk (everything stored is at
//! or below it); when the map grows past its bound it is emptied and `floor` raised to the
//! highest position handed out, which keeps every answer conservative.
//!
//! `inbox_deleted` remembers how far each device's inbox was trimmed, so a sync that
//! acknowledges nothing new skips the delete scan too (unknown devices answer 0: scan).

use std::sync::Mutex;

use crate::hash::HashMap;

use super::StreamPos;

/// Bound on remembered keys (each ~100 bytes): beyond it the map is reset.
const MAX_KEYS: usize = 200_000;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[repr(usize)]
pub(super) enum Stream {
    /// Global and room account data of a user (key: user id).
    AccountData,
    /// A device's to-device inbox (key: `user SEP device`).
    Inbox,
    /// Receipts in a room (key: room id).
    Receipts,
    /// Member events in a room's timeline (key: room id).
    Members,
    /// Device-list changes of any user (key: empty).
    DeviceLists,
    /// What decides a user's read position in a room: their receipts and their own sends
    /// (key: `user SEP room`).
    ReadPosition,
}

const STREAMS: usize = Stream::ReadPosition as usize + 1;

#[derive(Default)]
struct Inner {
    floor: StreamPos,
    /// The highest position any stamp was raised to.
    highest: StreamPos,
    /// One map per stream (indexed by `Stream as usize`), so a lookup borrows its key.
    stamps: [HashMap<Box<[u8]>, StreamPos>; STREAMS],
    /// Keys held over all streams.
    keys: usize,
    inbox_deleted: HashMap<Box<[u8]>, StreamPos>,
}

impl Inner {
    /// The last position `stream`/`key` may have changed at: its stamp, never below `floor`.
    fn stamp(&self, stream: Stream, key: &[u8]) -> StreamPos {
        self.stamps[stream as usize].get(key).copied().unwrap_or(self.floor).max(self.floor)
    }
}

pub(super) struct Stamps {
    inner: Mutex<Inner>,
}

impl Stamps {
    /// `last` is the last stream position in the database.
    pub fn new(last: StreamPos) -> Self {
        Self { inner: Mutex::new(Inner { floor: last, highest: last, ..Inner::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change of `stream`/`key` at `pos`; call before `pos` can become visible.
    pub fn raise(&self, stream: Stream, key: &[u8], pos: StreamPos) {
        let mut inner = self.lock();
        inner.highest = inner.highest.max(pos);
        if let Some(stamp) = inner.stamps[stream as usize].get_mut(key) {
            *stamp = (*stamp).max(pos);
            return;
        }
        if inner.keys >= MAX_KEYS {
            inner.floor = inner.highest;
            inner.stamps.iter_mut().for_each(HashMap::clear);
            inner.keys = 0;
        }
        inner.keys += 1;
        inner.stamps[stream as usize].insert(key.into(), pos);
    }

    /// Whether `stream`/`key` may have changed after `since` (false: a scan would find nothing).
    pub fn changed_after(&self, stream: Stream, key: &[u8], since: StreamPos) -> bool {
        let inner = self.lock();
        inner.stamp(stream, key) > since
    }

    /// Whether the inbox `device` may hold messages at or below `upto` (false: trimmed already).
    pub fn inbox_holds_up_to(&self, device: &[u8], upto: StreamPos) -> bool {
        let inner = self.lock();
        let trimmed = inner.inbox_deleted.get(device).copied().unwrap_or(0);
        let stamp = inner.stamp(Stream::Inbox, device);
        // Nothing arrived since the last trim, or the last trim already covered `upto`.
        stamp > trimmed && upto > trimmed
    }

    /// The inbox `device` holds nothing at or below `upto` any more.
    pub fn inbox_trimmed(&self, device: &[u8], upto: StreamPos) {
        let mut inner = self.lock();
        if inner.inbox_deleted.len() >= MAX_KEYS && !inner.inbox_deleted.contains_key(device) {
            inner.inbox_deleted.clear();
        }
        let trimmed = inner.inbox_deleted.entry(device.into()).or_insert(0);
        *trimmed = (*trimmed).max(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_answer_the_floor_and_raised_keys_their_stamp() {
        let stamps = Stamps::new(10);
        assert!(stamps.changed_after(Stream::AccountData, b"@a:x", 9), "data on disk may be at 10");
        assert!(!stamps.changed_after(Stream::AccountData, b"@a:x", 10));
        stamps.raise(Stream::AccountData, b"@a:x", 15);
        assert!(stamps.changed_after(Stream::AccountData, b"@a:x", 14));
        assert!(!stamps.changed_after(Stream::AccountData, b"@a:x", 15));
        assert!(!stamps.changed_after(Stream::AccountData, b"@b:x", 10), "other keys keep the floor");
        assert!(!stamps.changed_after(Stream::Receipts, b"@a:x", 10), "streams are separate");
        stamps.raise(Stream::AccountData, b"@a:x", 12);
        assert!(stamps.changed_after(Stream::AccountData, b"@a:x", 14), "stamps never go down");
    }

    #[test]
    fn overflow_raises_the_floor_and_stays_conservative() {
        let stamps = Stamps::new(0);
        for i in 0..MAX_KEYS {
            stamps.raise(Stream::Receipts, format!("!{i}:x").as_bytes(), i as StreamPos + 1);
        }
        assert!(!stamps.changed_after(Stream::Receipts, b"!0:x", 1));
        stamps.raise(Stream::Receipts, b"!new:x", 5);
        // Reset: every key now answers the highest position handed out.
        assert!(stamps.changed_after(Stream::Receipts, b"!0:x", 1));
        assert!(stamps.changed_after(Stream::Receipts, b"!never:x", MAX_KEYS as StreamPos - 1));
        assert!(!stamps.changed_after(Stream::Receipts, b"!never:x", MAX_KEYS as StreamPos));
    }

    #[test]
    fn inbox_trim_is_skipped_only_when_nothing_new_arrived() {
        let stamps = Stamps::new(0);
        let device = b"@a:x\xffDEV";
        assert!(!stamps.inbox_holds_up_to(device, 5), "empty database, nothing to trim");
        stamps.raise(Stream::Inbox, device, 3);
        assert!(stamps.inbox_holds_up_to(device, 5));
        stamps.inbox_trimmed(device, 5);
        assert!(!stamps.inbox_holds_up_to(device, 5));
        assert!(!stamps.inbox_holds_up_to(device, 7), "nothing arrived after the trim");
        stamps.raise(Stream::Inbox, device, 6);
        assert!(stamps.inbox_holds_up_to(device, 7));
        assert!(!stamps.inbox_holds_up_to(device, 5), "the trim already covered 5");
        let reopened = Stamps::new(8);
        assert!(reopened.inbox_holds_up_to(device, 8), "after a restart the inbox is scanned once");
    }
}
