//! Which lazy-loaded member events each device already has, so `/sync` does not send them
//! again (`lazy_load_members` without `include_redundant_members`, the spec's default).
//!
//! A member event counts as held by the client only if it went out in a response whose
//! `next_batch` is at or before the `since` of the request being answered: a response that was
//! computed but never reached the client (a long-poll that found nothing else, a dropped
//! connection, a retried token) is not trusted, and its members are sent again.
//!
//! An initial sync (no `since`) starts a new lineage: the client may have forgotten everything,
//! so what earlier lineages were sent no longer counts. Entries are kept in memory only and
//! bounded; forgetting one only means sending a member event again.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::Mutex,
};

use ruma::{DeviceId, EventId, RoomId, UserId};

use crate::hash::HashMap;
use crate::storage::StreamPos;

/// Entries kept for one device before its record starts over.
const MAX_PER_DEVICE: usize = 20_000;
/// Entries kept over all devices before every record starts over.
const MAX_TOTAL: usize = 200_000;

/// Keys are 64-bit fingerprints of (device), (room, member) and (event id), from foldhash's
/// higher-quality variant seeded per process: a false match needs two fingerprints of
/// different ids to agree at once. (SipHash, before, was 2% of a woken /sync's instructions.)
pub struct LazyMembers {
    hasher: foldhash::quality::RandomState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<u64, Device>,
    entries: usize,
    next_generation: u64,
}

#[derive(Default)]
struct Device {
    generation: u64,
    /// (room, member) → what was sent.
    sent: HashMap<u64, Sent>,
}

#[derive(Clone, Copy)]
struct Sent {
    event: u64,
    pos: StreamPos,
    generation: u64,
}

/// One response's view of its device's record: the lineage it belongs to and the position the
/// client is known to have reached.
pub struct Lineage {
    device: u64,
    generation: u64,
    since: Option<StreamPos>,
}

impl Default for LazyMembers {
    fn default() -> Self {
        Self { hasher: foldhash::quality::RandomState::default(), inner: Mutex::new(Inner::default()) }
    }
}

impl LazyMembers {
    fn hash(&self, parts: &[&str]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for part in parts {
            part.hash(&mut hasher);
        }
        hasher.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a response for a device; `since` is the request's position (None: initial sync,
    /// which starts a new lineage).
    pub fn begin(&self, user_id: &UserId, device_id: &DeviceId, since: Option<StreamPos>) -> Lineage {
        let device = self.hash(&[user_id.as_str(), device_id.as_str()]);
        let mut inner = self.lock();
        let generation = if since.is_none() {
            inner.next_generation += 1;
            let generation = inner.next_generation;
            let record = inner.devices.entry(device).or_default();
            let forgotten = record.sent.len();
            record.sent.clear();
            record.generation = generation;
            inner.entries -= forgotten;
            generation
        } else {
            inner.devices.get(&device).map_or(0, |d| d.generation)
        };
        Lineage { device, generation, since }
    }

    /// Whether the client already has this member event of this room.
    pub fn has(&self, lineage: &Lineage, room_id: &RoomId, member: &str, event_id: &EventId) -> bool {
        let Some(since) = lineage.since else { return false };
        let key = self.hash(&[room_id.as_str(), member]);
        let event = self.hash(&[event_id.as_str()]);
        let inner = self.lock();
        inner
            .devices
            .get(&lineage.device)
            .and_then(|d| d.sent.get(&key))
            .is_some_and(|sent| sent.generation == lineage.generation && sent.event == event && sent.pos <= since)
    }

    /// Records member events sent in a response whose `next_batch` is at `pos`.
    pub fn record<'a>(
        &self,
        lineage: &Lineage,
        room_id: &RoomId,
        members: impl IntoIterator<Item = (&'a str, &'a EventId)>,
        pos: StreamPos,
    ) {
        let hashed: Vec<(u64, Sent)> = members
            .into_iter()
            .map(|(member, event_id)| {
                let sent = Sent { event: self.hash(&[event_id.as_str()]), pos, generation: lineage.generation };
                (self.hash(&[room_id.as_str(), member]), sent)
            })
            .collect();
        if hashed.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.entries + hashed.len() > MAX_TOTAL {
            inner.devices.clear();
            inner.entries = 0;
        }
        let device = inner.devices.entry(lineage.device).or_default();
        let mut removed = 0;
        if device.sent.len() + hashed.len() > MAX_PER_DEVICE {
            removed = device.sent.len();
            device.sent.clear();
        }
        let before = device.sent.len();
        for (key, sent) in hashed {
            device.sent.insert(key, sent);
        }
        let added = device.sent.len() - before;
        inner.entries = inner.entries - removed + added;
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, event_id, room_id, user_id};

    use super::*;

    #[test]
    fn held_only_once_the_client_has_moved_past_the_response() {
        let lazy = LazyMembers::default();
        let (alice, dev) = (user_id!("@alice:x"), device_id!("D"));
        let (room, member, event) = (room_id!("!r:x"), "@bob:x", event_id!("$m1"));
        let initial = lazy.begin(alice, dev, None);
        assert!(!lazy.has(&initial, room, member, event), "an initial sync sends everything");
        lazy.record(&initial, room, [(member, event)], 10);
        // The next request comes from the response at 10: the client has the event.
        let next = lazy.begin(alice, dev, Some(10));
        assert!(lazy.has(&next, room, member, event));
        assert!(!lazy.has(&next, room, member, event_id!("$m2")), "a newer member event is sent");
        assert!(!lazy.has(&next, room_id!("!other:x"), member, event), "per room");
        // A response at 20 that never arrived: a retry from 10 must not trust it.
        lazy.record(&next, room, [("@carol:x", event_id!("$c1"))], 20);
        let retry = lazy.begin(alice, dev, Some(10));
        assert!(!lazy.has(&retry, room, "@carol:x", event_id!("$c1")));
        assert!(lazy.has(&lazy.begin(alice, dev, Some(20)), room, "@carol:x", event_id!("$c1")));
        // Other devices have their own record.
        assert!(!lazy.has(&lazy.begin(alice, device_id!("E"), Some(20)), room, member, event));
    }

    #[test]
    fn an_initial_sync_forgets_what_earlier_lineages_were_sent() {
        let lazy = LazyMembers::default();
        let (alice, dev) = (user_id!("@alice:x"), device_id!("D"));
        let (room, member, event) = (room_id!("!r:x"), "@bob:x", event_id!("$m1"));
        let old = lazy.begin(alice, dev, None);
        lazy.record(&old, room, [(member, event)], 10);
        let fresh = lazy.begin(alice, dev, None);
        assert!(!lazy.has(&lazy.begin(alice, dev, Some(30)), room, member, event));
        // A late response of the old lineage does not count for the new one.
        lazy.record(&old, room, [(member, event)], 12);
        assert!(!lazy.has(&lazy.begin(alice, dev, Some(30)), room, member, event));
        lazy.record(&fresh, room, [(member, event)], 31);
        assert!(lazy.has(&lazy.begin(alice, dev, Some(31)), room, member, event));
    }

    #[test]
    fn records_are_bounded() {
        let lazy = LazyMembers::default();
        let (alice, dev) = (user_id!("@alice:x"), device_id!("D"));
        let lineage = lazy.begin(alice, dev, None);
        let room = room_id!("!r:x");
        let members: Vec<String> = (0..MAX_PER_DEVICE + 5).map(|i| format!("@u{i}:x")).collect();
        let event = event_id!("$e");
        for member in &members {
            lazy.record(&lineage, room, [(member.as_str(), event)], 5);
        }
        let inner = lazy.lock();
        assert!(inner.devices[&lineage.device].sent.len() <= MAX_PER_DEVICE);
        assert_eq!(inner.entries, inner.devices.values().map(|d| d.sent.len()).sum::<usize>());
    }
}
