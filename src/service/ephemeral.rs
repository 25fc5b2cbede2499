//! Ephemeral data: typing notifications and presence (in memory, sharing one serial that
//! sync tokens carry) and receipts (durable, on the stream).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{Core, now_ms};
use crate::{
    error::{Error, Result},
    storage::{ReceiptRecord, StreamPos},
};

/// Longest typing timeout a client may ask for.
const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Serial of the last change in this room.
    changed: u64,
}

impl RoomTyping {
    /// `m.typing` with the users still typing, sorted.
    fn typing_event(&self) -> Value {
        let now = Instant::now();
        let mut users: Vec<&OwnedUserId> =
            self.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u).collect();
        users.sort();
        json!({ "type": "m.typing", "content": { "user_ids": users } })
    }
}

/// A user's presence as last reported (by a local client or the user's server).
#[derive(Clone, Debug)]
pub struct Presence {
    pub presence: String,
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ts: u64,
    pub currently_active: bool,
    /// Serial of the last change.
    changed: u64,
}

impl Presence {
    /// The `m.presence` event of `user_id` (client format).
    pub fn event(&self, user_id: &UserId) -> Value {
        let mut content = json!({
            "presence": self.presence,
            "last_active_ago": now_ms().saturating_sub(self.last_active_ts),
            "currently_active": self.currently_active,
        });
        if let Some(status) = &self.status_msg {
            content["status_msg"] = Value::String(status.clone());
        }
        json!({ "type": "m.presence", "sender": user_id, "content": content })
    }

    /// The entry of `user_id` in the `push` list of an `m.presence` EDU, with the real
    /// `last_active_ago` (an offline user's is the time since they were last active).
    pub fn federation_update(&self, user_id: &UserId) -> Value {
        let mut update = json!({
            "user_id": user_id,
            "presence": self.presence,
            "last_active_ago": now_ms().saturating_sub(self.last_active_ts),
            "currently_active": self.currently_active,
        });
        if let Some(status) = &self.status_msg {
            update["status_msg"] = Value::String(status.clone());
        }
        update
    }
}

/// Local users' syncs in progress, for presence: (syncs running, when the last one ended).
#[derive(Default)]
struct Syncing {
    running: u32,
    ended: Option<Instant>,
}

/// Held while a sync runs; dropping it (the sync answered or the client went away)
/// records the end.
pub struct SyncGuard {
    ephemeral: Arc<Ephemeral>,
    user_id: OwnedUserId,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let mut syncing = self.ephemeral.syncing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = syncing.get_mut(&self.user_id) {
            entry.running = entry.running.saturating_sub(1);
            entry.ended = Some(Instant::now());
        }
    }
}

/// Presence states the spec knows.
pub const PRESENCE_STATES: &[&str] = &["online", "offline", "unavailable", "busy"];

pub struct Ephemeral {
    core: Arc<Core>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    presence: Mutex<HashMap<OwnedUserId, Presence>>,
    syncing: Mutex<HashMap<OwnedUserId, Syncing>>,
    /// Increases on every typing change (sync tokens carry it).
    serial: watch::Sender<u64>,
}

impl Ephemeral {
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            typing: Mutex::default(),
            presence: Mutex::default(),
            syncing: Mutex::default(),
            serial: watch::channel(0).0,
        }
    }

    /// Records that a local user's client is syncing, until the guard is dropped.
    pub fn sync_started(self: &Arc<Self>, user_id: &UserId) -> SyncGuard {
        let mut syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        syncing.entry(user_id.to_owned()).or_default().running += 1;
        SyncGuard { ephemeral: self.clone(), user_id: user_id.to_owned() }
    }

    /// Local users shown online (or unavailable) whose last sync ended more than
    /// `presence.offline_after_ms` ago: they go offline. Forgets them.
    pub fn idle_syncers(&self) -> Vec<(OwnedUserId, Option<String>)> {
        let offline_after = Duration::from_millis(self.core.config.presence.offline_after_ms);
        let idle: Vec<OwnedUserId> = {
            let mut syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
            let idle: Vec<OwnedUserId> = syncing
                .iter()
                .filter(|(_, s)| s.running == 0 && s.ended.is_none_or(|t| t.elapsed() >= offline_after))
                .map(|(u, _)| u.clone())
                .collect();
            for user in &idle {
                syncing.remove(user);
            }
            idle
        };
        let presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        idle.into_iter()
            .filter_map(|user| {
                let current = presence.get(&user)?;
                (current.presence != "offline").then(|| (user, current.status_msg.clone()))
            })
            .collect()
    }

    pub fn typing_serial(&self) -> u64 {
        *self.serial.borrow()
    }

    pub fn subscribe_typing(&self) -> watch::Receiver<u64> {
        self.serial.subscribe()
    }

    fn bump(&self) -> u64 {
        let mut next = 0;
        self.serial.send_modify(|serial| {
            *serial += 1;
            next = *serial;
        });
        next
    }

    /// `PUT /rooms/{roomId}/typing/{userId}`.
    pub fn set_typing(&self, room_id: &RoomId, user_id: &UserId, typing: bool, timeout: Option<Duration>) {
        let mut rooms = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(room_id.to_owned()).or_default();
        let changed = if typing {
            let until = Instant::now() + timeout.unwrap_or(Duration::from_secs(30)).min(MAX_TYPING);
            room.users.insert(user_id.to_owned(), until).is_none()
        } else {
            room.users.remove(user_id).is_some()
        };
        if changed {
            room.changed = self.bump();
        }
    }

    /// Records a user's presence; returns whether anything a client sees changed.
    ///
    /// Other servers report when their users were last active. For a local user, going
    /// offline or unavailable is no activity: their last activity stays the last time a
    /// client synced or set them online (or busy), as Synapse counts it, so an idle user's
    /// `last_active_ago` keeps growing.
    pub fn set_presence(
        &self,
        user_id: &UserId,
        presence: &str,
        status_msg: Option<String>,
        last_active_ts: u64,
        currently_active: bool,
    ) -> bool {
        let mut all = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let activity = user_id.server_name() != self.core.server_name()
            || currently_active
            || matches!(presence, "online" | "busy");
        let last_active_ts = match all.get(user_id) {
            Some(old) if !activity => old.last_active_ts,
            _ => last_active_ts,
        };
        let unchanged = all.get(user_id).is_some_and(|old| {
            old.presence == presence && old.status_msg == status_msg && old.currently_active == currently_active
        });
        if unchanged {
            if let Some(old) = all.get_mut(user_id) {
                old.last_active_ts = old.last_active_ts.max(last_active_ts);
            }
            return false;
        }
        let changed = self.bump();
        all.insert(
            user_id.to_owned(),
            Presence { presence: presence.to_owned(), status_msg, last_active_ts, currently_active, changed },
        );
        true
    }

    pub fn presence_of(&self, user_id: &UserId) -> Option<Presence> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner()).get(user_id).cloned()
    }

    /// `GET /presence/{userId}/status`: a user's presence as `requester` may see it. Users
    /// see their own and that of users they share a joined room with; anyone else is
    /// refused before we say whether we know them (Synapse: 403 M_FORBIDDEN, "You are not
    /// allowed to see their presence.").
    pub fn visible_presence(&self, requester: &UserId, user_id: &UserId) -> Result<Presence> {
        if requester != user_id && !self.share_a_room(requester, user_id)? {
            return Err(Error::forbidden("You are not allowed to see their presence."));
        }
        self.presence_of(user_id).ok_or_else(|| Error::not_found("No presence is known for that user."))
    }

    /// Whether two users are both joined to some room.
    fn share_a_room(&self, one: &UserId, other: &UserId) -> Result<bool> {
        let joined = |user: &UserId| -> Result<std::collections::BTreeSet<OwnedRoomId>> {
            Ok(self
                .core
                .db
                .rooms_of_user(user)?
                .iter()
                .filter(|(_, record)| record.membership == "join")
                .map(|(room_id, _)| room_id.clone())
                .collect())
        };
        let mine = joined(one)?;
        Ok(joined(other)?.iter().any(|room_id| mine.contains(room_id)))
    }

    /// Users whose presence changed after serial `since`.
    pub fn presence_since(&self, since: u64) -> Vec<(OwnedUserId, Presence)> {
        let all = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter(|(_, p)| p.changed > since).map(|(u, p)| (u.clone(), p.clone())).collect()
    }

    /// Drops expired typing notifications (called every second by a background task).
    pub fn expire_typing(&self) {
        let now = Instant::now();
        let mut rooms = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let mut expired_rooms = Vec::new();
        for (room_id, room) in rooms.iter_mut() {
            let before = room.users.len();
            room.users.retain(|_, until| *until > now);
            if room.users.len() != before {
                expired_rooms.push(room_id.clone());
            }
        }
        for room_id in expired_rooms {
            let serial = self.bump();
            if let Some(room) = rooms.get_mut(&room_id) {
                room.changed = serial;
            }
        }
        rooms.retain(|_, room| !room.users.is_empty() || room.changed + 10_000 > *self.serial.borrow());
    }

    /// The `m.typing` event of a room if it changed after serial `since`.
    pub fn typing_event_since(&self, room_id: &RoomId, since: u64) -> Option<Value> {
        let rooms = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(room_id)?;
        (room.changed > since).then(|| room.typing_event())
    }

    /// Every room whose typing changed after serial `since`, with its `m.typing` event.
    pub fn typing_changed_since(&self, since: u64) -> Vec<(OwnedRoomId, Value)> {
        let rooms = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .filter(|(_, room)| room.changed > since)
            .map(|(id, room)| (id.clone(), room.typing_event()))
            .collect()
    }

    /// Stores a receipt; receipts never move backwards in the timeline.
    pub async fn set_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<String>,
    ) -> Result<()> {
        let event = self
            .core
            .db
            .event(event_id)?
            .filter(|e| e.room_id == room_id)
            .ok_or_else(|| Error::not_found("Event not found in this room."))?;
        if let Some(existing) = self.core.db.receipt(room_id, receipt_type, user_id, thread_id.as_deref())?
            && let (Some(old), Some(new)) = (self.core.db.event(&existing.event_id)?.and_then(|e| e.pos), event.pos)
            && new <= old
        {
            return Ok(());
        }
        let record = ReceiptRecord {
            room_id: room_id.to_owned(),
            receipt_type: receipt_type.to_owned(),
            user_id: user_id.to_owned(),
            thread_id,
            event_id: event_id.to_owned(),
            ts: now_ms(),
            pos: 0,
        };
        self.core.blocking(move |db| Ok(db.put_receipt(record)?)).await.map(|_| ())
    }

    /// Receipts in a room after `since`.
    pub fn receipts_since(&self, room_id: &RoomId, since: StreamPos) -> Result<Vec<ReceiptRecord>> {
        Ok(self.core.db.receipts_since(room_id, since)?)
    }

    /// The `m.receipt` event for `receipts`, as `viewer` may see them.
    pub fn receipt_event(receipts: Vec<ReceiptRecord>, viewer: &UserId) -> Option<Value> {
        let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for receipt in receipts {
            if receipt.receipt_type == "m.read.private" && receipt.user_id != viewer {
                continue;
            }
            let mut data = Map::new();
            data.insert("ts".into(), Value::from(receipt.ts));
            if let Some(thread) = &receipt.thread_id {
                data.insert("thread_id".into(), Value::String(thread.clone()));
            }
            let by_type = content.entry(receipt.event_id.to_string()).or_default();
            let users = by_type.entry(receipt.receipt_type.clone()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(users) = users {
                users.insert(receipt.user_id.to_string(), Value::Object(data));
            }
        }
        if content.is_empty() {
            return None;
        }
        Some(json!({ "type": "m.receipt", "content": content }))
    }

    /// The newest read receipt (public or private) of a user in a room.
    pub fn last_read(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<ReceiptRecord>> {
        let public = self.core.db.receipt(room_id, "m.read", user_id, None)?;
        let private = self.core.db.receipt(room_id, "m.read.private", user_id, None)?;
        let position =
            |r: &ReceiptRecord| self.core.db.event(&r.event_id).ok().flatten().and_then(|e| e.pos).unwrap_or(0);
        Ok(match (public, private) {
            (Some(a), Some(b)) => Some(if position(&a) >= position(&b) { a } else { b }),
            (a, b) => a.or(b),
        })
    }
}
