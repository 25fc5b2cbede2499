//! Push storage on RocksDB: notification records per (user, room) and per user, the implicit
//! read position of a user's own events, pushers, and the push-gateway delivery queue (see
//! schema.rs for the key layouts).

use ::rocksdb::{Direction as RDirection, IteratorMode, WriteBatch};
use ruma::{DeviceId, RoomId, UserId};

use super::{RocksStorage, backend, decode, encode, keys, schema as cf};
use crate::storage::{
    DeliveryRecord, EventNotifications, MemberNotification, NotificationRecord, PushStore, PushWrites, PusherRecord,
    Result, StorageError, StreamPos, UnreadEntry,
};

/// PUSH_ROOM_NOTIFS value: one flag byte (1 = notify, 2 = highlight), then the thread root.
const FLAG_NOTIFY: u8 = 1;
const FLAG_HIGHLIGHT: u8 = 2;

/// The first byte of a PUSH_USER_NOTIFS value in the compact format (see schema.rs); older
/// records are JSON objects, which start with `{`.
const USER_NOTIF_COMPACT: u8 = 1;

fn flags(member: &MemberNotification) -> u8 {
    (if member.notify { FLAG_NOTIFY } else { 0 }) | if member.highlight { FLAG_HIGHLIGHT } else { 0 }
}

/// A PUSH_USER_NOTIFS value: what the key (user, position) and `stream_events` (room, event)
/// do not already say. A message notifying every member of a room writes one per member,
/// so its size sets much of what a busy room writes (about 60 bytes here against 300 as JSON).
/// Written into `value` (cleared first): `write_push` reuses one buffer for every member.
fn encode_user_notif(event: &EventNotifications, member: &MemberNotification, value: &mut Vec<u8>) {
    let thread = event.thread_id.as_deref().unwrap_or("").as_bytes();
    // A thread root is an event id from the event's content, and a whole PDU is at most
    // 65,536 bytes; one that would not fit its length field is left out, never cut.
    let thread = if thread.len() > u16::MAX as usize { &[][..] } else { thread };
    let actions = member.actions.get().as_bytes();
    value.clear();
    value.extend_from_slice(&[USER_NOTIF_COMPACT, flags(member)]);
    value.extend_from_slice(&event.ts.to_be_bytes());
    value.extend_from_slice(&(thread.len() as u16).to_be_bytes());
    value.extend_from_slice(thread);
    value.extend_from_slice(actions);
}

/// The parts of a compact PUSH_USER_NOTIFS value: (flags, ts, thread root, actions).
/// `table` is the family it was read from, named in a corruption error.
fn decode_user_notif(
    table: &'static str,
    value: &[u8],
) -> Result<(u8, u64, Option<String>, Box<serde_json::value::RawValue>)> {
    let corrupt = |detail: &str| user_notif_corrupt(table, detail);
    let [USER_NOTIF_COMPACT, flags, rest @ ..] = value else { return Err(corrupt("unknown format")) };
    let (ts, rest) = rest.split_first_chunk::<8>().ok_or_else(|| corrupt("short"))?;
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(|| corrupt("short"))?;
    let (thread, actions) = rest.split_at_checked(u16::from_be_bytes(*len) as usize).ok_or_else(|| corrupt("short"))?;
    let thread_id = match thread {
        [] => None,
        bytes => Some(String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("thread root is not UTF-8"))?),
    };
    let actions = std::str::from_utf8(actions).map_err(|_| corrupt("actions are not UTF-8"))?;
    let actions = serde_json::value::RawValue::from_string(actions.to_owned()).map_err(|e| corrupt(&e.to_string()))?;
    Ok((*flags, u64::from_be_bytes(*ts), thread_id, actions))
}

/// A position in PUSH_USER_NOTIFS_NEWEST's keys: inverted, so that the newest sorts first
/// (its own inverse).
fn newest_first(pos: StreamPos) -> StreamPos {
    StreamPos::MAX - pos
}

fn user_notif_corrupt(table: &'static str, detail: &str) -> StorageError {
    StorageError::Corrupt { table, detail: detail.into() }
}

fn queue_key(seq: (StreamPos, u32)) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&seq.0.to_be_bytes());
    key[8..].copy_from_slice(&seq.1.to_be_bytes());
    key
}

fn queue_seq(key: &[u8]) -> Result<(StreamPos, u32)> {
    let bytes: [u8; 12] =
        key.try_into().map_err(|_| StorageError::Corrupt { table: cf::PUSH_QUEUE, detail: "bad key".into() })?;
    Ok((
        u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(bytes[8..].try_into().expect("4 bytes")),
    ))
}

fn room_prefix(user_id: &UserId, room_id: &RoomId) -> Vec<u8> {
    keys::prefix(&keys::join(&[user_id.as_bytes(), room_id.as_bytes()]))
}

/// The users who have at least one pusher (see `RocksStorage::pusher_users`).
pub(super) struct PusherUsers(std::sync::RwLock<crate::hash::HashSet<Box<[u8]>>>);

impl PusherUsers {
    /// Every user with a pusher in the table (a key scan; pushers are one per device that
    /// asked for push, at most).
    pub(super) fn load(db: &::rocksdb::DB) -> Result<Self> {
        let mut users = crate::hash::HashSet::default();
        let handle = db.cf_handle(cf::PUSHERS).expect("column family listed in schema");
        for item in db.iterator_cf(handle, IteratorMode::Start) {
            let (key, _) = item.map_err(backend)?;
            let user = key.split(|b| *b == keys::SEP).next().unwrap_or_default();
            if !users.contains(user) {
                users.insert(user.into());
            }
        }
        Ok(Self(std::sync::RwLock::new(users)))
    }

    fn has(&self, user: &[u8]) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(user)
    }

    fn set(&self, user: &[u8], has: bool) {
        let mut users = self.0.write().unwrap_or_else(|e| e.into_inner());
        if has {
            users.insert(user.into());
        } else {
            users.remove(user);
        }
    }
}

impl RocksStorage {
    /// Call after a batch that changes these users' pushers has been written: drops their
    /// cached lists and notes who still has one (a user whose table could not be read counts
    /// as having one, so readers go to the table).
    pub(super) fn pushers_written(&self, users: &[&[u8]]) {
        self.pushers.written(users.iter().copied());
        for user in users {
            let has = self.scan_prefix(cf::PUSHERS, &keys::prefix(user)).map_or(true, |rows| !rows.is_empty());
            self.pusher_users.set(user, has);
        }
    }
}

fn pusher_key(user_id: &[u8], app_id: &str, pushkey: &str) -> Vec<u8> {
    keys::join(&[user_id, app_id.as_bytes(), pushkey.as_bytes()])
}

fn pusher_index_key(app_id: &str, pushkey: &str, user_id: &[u8]) -> Vec<u8> {
    keys::join(&[app_id.as_bytes(), pushkey.as_bytes(), user_id])
}

/// A notification record as the unread cache holds it: (`user SEP room`, entry without its
/// position, which the append fills in).
pub(super) fn unread_record(event: &EventNotifications, member: &MemberNotification) -> (Vec<u8>, UnreadEntry) {
    (
        keys::join(&[member.user_id.as_bytes(), event.room_id.as_bytes()]),
        UnreadEntry { pos: 0, notify: member.notify, highlight: member.highlight, thread_id: event.thread_id.clone() },
    )
}

impl RocksStorage {
    /// Adds an event's push records to its append batch (called by `append_event`).
    pub(super) fn write_push(&self, batch: &mut WriteBatch, pos: StreamPos, push: &PushWrites) {
        // A message writes two records per notified member: the batch copies each key and
        // value, so one key and one value buffer serve them all.
        let (mut key, mut value) = (Vec::with_capacity(256), Vec::with_capacity(256));
        if let Some(event) = &push.notifications {
            let thread = event.thread_id.as_deref().unwrap_or("").as_bytes();
            for member in &event.members {
                // `room_prefix(user, room)` then the position.
                key.clear();
                key.extend_from_slice(member.user_id.as_bytes());
                key.push(keys::SEP);
                key.extend_from_slice(event.room_id.as_bytes());
                key.push(keys::SEP);
                key.extend_from_slice(&pos.to_be_bytes());
                value.clear();
                value.push(flags(member));
                value.extend_from_slice(thread);
                batch.put_cf(self.cf(cf::PUSH_ROOM_NOTIFS), &key, &value);
                // `with_u64(user, newest_first(pos))`.
                key.truncate(member.user_id.as_bytes().len() + 1);
                key.extend_from_slice(&newest_first(pos).to_be_bytes());
                encode_user_notif(event, member, &mut value);
                batch.put_cf(self.cf(cf::PUSH_USER_NOTIFS_NEWEST), &key, &value);
            }
        }
        for (index, delivery) in push.deliveries.iter().enumerate() {
            let mut delivery = delivery.clone();
            delivery.seq = (pos, index as u32);
            batch.put_cf(self.cf(cf::PUSH_QUEUE), queue_key(delivery.seq), encode(&delivery));
        }
        if let Some((user_id, room_id)) = &push.sender_read {
            let key = keys::join(&[user_id.as_bytes(), room_id.as_bytes()]);
            self.stamps.raise(super::stamps::Stream::ReadPosition, &key, pos);
            batch.put_cf(self.cf(cf::PUSH_SENT_READ), key, pos.to_be_bytes());
        }
    }
}

impl RocksStorage {
    /// Up to `limit` records below `before` from PUSH_USER_NOTIFS, as written until 2026-11-25
    /// (`user SEP pos`, read backwards), newest first.
    fn older_user_notifications(
        &self,
        user_id: &UserId,
        before: StreamPos,
        limit: usize,
    ) -> Result<Vec<NotificationRecord>> {
        let prefix = keys::prefix(user_id.as_bytes());
        // Keys strictly below `before`: start at `before` itself, skipping an exact hit.
        let start = keys::with_u64(user_id.as_bytes(), before);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::PUSH_USER_NOTIFS), IteratorMode::From(&start, RDirection::Reverse))
        {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if key.as_ref() == start.as_slice() {
                continue;
            }
            if value.first() == Some(&b'{') {
                out.push(decode(cf::PUSH_USER_NOTIFS, &value)?);
                continue;
            }
            let pos = keys::trailing_u64(&key).ok_or_else(|| user_notif_corrupt(cf::PUSH_USER_NOTIFS, "bad key"))?;
            out.push(self.notification_record(cf::PUSH_USER_NOTIFS, user_id, pos, &value)?);
        }
        Ok(out)
    }

    /// The notification record of a compact value at `pos` (the room and the event are the
    /// `stream_events` entry there).
    fn notification_record(
        &self,
        table: &'static str,
        user_id: &UserId,
        pos: StreamPos,
        value: &[u8],
    ) -> Result<NotificationRecord> {
        let (flags, ts, thread_id, actions) = decode_user_notif(table, value)?;
        let event = self
            .get(cf::STREAM_EVENTS, &keys::u64_key(pos))?
            .ok_or_else(|| user_notif_corrupt(table, "no stream event"))?;
        let (room_id, event_id) = super::appservice::parse_stream_event(&event)?;
        Ok(NotificationRecord {
            user_id: user_id.to_owned(),
            room_id,
            event_id,
            actions,
            notify: flags & FLAG_NOTIFY != 0,
            highlight: flags & FLAG_HIGHLIGHT != 0,
            thread_id,
            ts,
            pos,
        })
    }
}

impl RocksStorage {
    /// Adds the deletion of a device's pushers to `batch` (device deletion writes it in the
    /// same batch as the device); call under `create_lock`.
    pub(super) fn delete_device_pushers_into(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<usize> {
        let mut count = 0;
        for pusher in self.pushers(user_id)? {
            if pusher.device_id.as_deref() == Some(device_id) {
                batch.delete_cf(self.cf(cf::PUSHERS), pusher_key(user_id.as_bytes(), &pusher.app_id, &pusher.pushkey));
                batch.delete_cf(
                    self.cf(cf::PUSHER_KEYS),
                    pusher_index_key(&pusher.app_id, &pusher.pushkey, user_id.as_bytes()),
                );
                count += 1;
            }
        }
        Ok(count)
    }
}

impl PushStore for RocksStorage {
    fn room_notifications(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        after: StreamPos,
    ) -> Result<std::sync::Arc<Vec<UnreadEntry>>> {
        let cache_key = keys::join(&[user_id.as_bytes(), room_id.as_bytes()]);
        let generation = match self.unread.get_if(&*cache_key, |(read, _)| *read == after) {
            Ok((_, list)) => return Ok(list),
            Err(generation) => generation,
        };
        let prefix = room_prefix(user_id, room_id);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        let iter = self.db.iterator_cf_opt(
            self.cf(cf::PUSH_ROOM_NOTIFS),
            super::bounded(&prefix),
            IteratorMode::From(&start, RDirection::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let corrupt = || StorageError::Corrupt { table: cf::PUSH_ROOM_NOTIFS, detail: "bad entry".into() };
            let pos = keys::trailing_u64(&key).ok_or_else(corrupt)?;
            let (&flags, thread) = value.split_first().ok_or_else(corrupt)?;
            let thread_id = match thread {
                [] => None,
                bytes => Some(String::from_utf8(bytes.to_vec()).map_err(|_| corrupt())?),
            };
            out.push(UnreadEntry {
                pos,
                notify: flags & FLAG_NOTIFY != 0,
                highlight: flags & FLAG_HIGHLIGHT != 0,
                thread_id,
            });
        }
        let answer = (after, std::sync::Arc::new(out));
        self.unread.store(cache_key, generation, &answer);
        Ok(answer.1)
    }

    fn user_notifications(&self, user_id: &UserId, before: StreamPos, limit: usize) -> Result<Vec<NotificationRecord>> {
        let mut out = Vec::new();
        if before == 0 || limit == 0 {
            return Ok(out);
        }
        let prefix = keys::prefix(user_id.as_bytes());
        // Newest first in key order: the first key below `before` is that of `before - 1`.
        let start = keys::with_u64(user_id.as_bytes(), newest_first(before - 1));
        let iter = self.db.iterator_cf_opt(
            self.cf(cf::PUSH_USER_NOTIFS_NEWEST),
            super::bounded(&prefix),
            IteratorMode::From(&start, RDirection::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let pos = keys::trailing_u64(&key).map(newest_first);
            let pos = pos.ok_or_else(|| user_notif_corrupt(cf::PUSH_USER_NOTIFS_NEWEST, "bad key"))?;
            out.push(self.notification_record(cf::PUSH_USER_NOTIFS_NEWEST, user_id, pos, &value)?);
        }
        // Records written before the newest-first family. They are older than the records in it,
        // but merging by position costs nothing and assumes nothing.
        let older = self.older_user_notifications(user_id, before, limit)?;
        if !older.is_empty() {
            out.extend(older);
            out.sort_by(|a, b| b.pos.cmp(&a.pos));
            out.truncate(limit);
        }
        Ok(out)
    }

    fn sent_read_pos(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<StreamPos>> {
        Ok(self
            .get(cf::PUSH_SENT_READ, &keys::join(&[user_id.as_bytes(), room_id.as_bytes()]))?
            .and_then(|bytes| keys::trailing_u64(&bytes)))
    }

    fn pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        if !self.pusher_users.has(user_id.as_bytes()) {
            return Ok(Vec::new());
        }
        let generation = match self.pushers.get(user_id.as_bytes()) {
            Ok(list) => return Ok(list),
            Err(generation) => generation,
        };
        let list = self
            .scan_prefix(cf::PUSHERS, &keys::prefix(user_id.as_bytes()))?
            .into_iter()
            .map(|(_, value)| decode(cf::PUSHERS, &value))
            .collect::<Result<Vec<_>>>()?;
        self.pushers.store(user_id.as_bytes().to_vec(), generation, &list);
        Ok(list)
    }

    fn put_pusher(&self, pusher: &PusherRecord, replace_others: bool) -> Result<()> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let user = pusher.user_id.as_bytes();
        let mut users = vec![user.to_vec()];
        if replace_others {
            let index_prefix = keys::prefix(&keys::join(&[pusher.app_id.as_bytes(), pusher.pushkey.as_bytes()]));
            for (key, _) in self.scan_prefix(cf::PUSHER_KEYS, &index_prefix)? {
                let other = &key[index_prefix.len()..];
                if other != user {
                    batch.delete_cf(self.cf(cf::PUSHER_KEYS), &key);
                    batch.delete_cf(self.cf(cf::PUSHERS), pusher_key(other, &pusher.app_id, &pusher.pushkey));
                    users.push(other.to_vec());
                }
            }
        }
        batch.put_cf(self.cf(cf::PUSHERS), pusher_key(user, &pusher.app_id, &pusher.pushkey), encode(pusher));
        batch.put_cf(self.cf(cf::PUSHER_KEYS), pusher_index_key(&pusher.app_id, &pusher.pushkey, user), b"");
        self.write(batch)?;
        self.pushers_written(&users.iter().map(Vec::as_slice).collect::<Vec<_>>());
        Ok(())
    }

    fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = pusher_key(user_id.as_bytes(), app_id, pushkey);
        if self.get(cf::PUSHERS, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(cf::PUSHERS), key);
        batch.delete_cf(self.cf(cf::PUSHER_KEYS), pusher_index_key(app_id, pushkey, user_id.as_bytes()));
        self.write(batch)?;
        self.pushers_written(&[user_id.as_bytes()]);
        Ok(true)
    }

    fn delete_device_pushers(&self, user_id: &UserId, device_id: &DeviceId) -> Result<usize> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let count = self.delete_device_pushers_into(&mut batch, user_id, device_id)?;
        if count > 0 {
            self.write(batch)?;
            self.pushers_written(&[user_id.as_bytes()]);
        }
        Ok(count)
    }

    fn queued_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::PUSH_QUEUE), IteratorMode::Start) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(backend)?;
            let mut delivery: DeliveryRecord = decode(cf::PUSH_QUEUE, &value)?;
            delivery.seq = queue_seq(&key)?;
            out.push(delivery);
        }
        Ok(out)
    }

    fn update_delivery(&self, delivery: &DeliveryRecord) -> Result<()> {
        let key = queue_key(delivery.seq);
        // A delivery deleted meanwhile (its pusher was removed) stays deleted.
        if self.get(cf::PUSH_QUEUE, &key)?.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::PUSH_QUEUE), key, encode(delivery));
        self.write(batch)
    }

    fn delete_delivery(&self, seq: (StreamPos, u32)) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(cf::PUSH_QUEUE), queue_key(seq));
        self.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id, user_id};

    use super::*;
    use crate::storage::StorageConfig;

    #[test]
    fn write_push_keys_every_record_as_before_with_reused_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let actions: std::sync::Arc<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(r#"["notify"]"#.into()).unwrap().into();
        let member = |user: &str, highlight| MemberNotification {
            user_id: user.try_into().unwrap(),
            actions: actions.clone(),
            notify: true,
            highlight,
        };
        // A long user id first, then shorter ones: no bytes of one record may stay in the next.
        let members =
            vec![member("@a-much-longer-user-name:example.org", true), member("@b:x", false), member("@c:x", false)];
        let event = |thread: Option<&str>| EventNotifications {
            room_id: room_id!("!r:x").to_owned(),
            thread_id: thread.map(Into::into),
            ts: 7,
            members: members.clone(),
        };
        // An event in a thread, then one outside any: the second's records carry no thread.
        let written = [(9, event(Some("$thread-root"))), (10, event(None))];
        for (pos, event) in &written {
            let mut batch = WriteBatch::default();
            store.write_push(
                &mut batch,
                *pos,
                &PushWrites { notifications: Some(event.clone()), ..PushWrites::default() },
            );
            store.db.write(batch).unwrap();
        }
        for (pos, event) in &written {
            for expected in &event.members {
                let mut room_key = room_prefix(&expected.user_id, &event.room_id);
                room_key.extend_from_slice(&pos.to_be_bytes());
                let mut room_value = vec![flags(expected)];
                room_value.extend_from_slice(event.thread_id.as_deref().unwrap_or("").as_bytes());
                let stored = store.get(cf::PUSH_ROOM_NOTIFS, &room_key).unwrap();
                assert_eq!(stored, Some(room_value), "{} at {pos}", expected.user_id);
                let user_key = keys::with_u64(expected.user_id.as_bytes(), newest_first(*pos));
                let user_value = store.get(cf::PUSH_USER_NOTIFS_NEWEST, &user_key).unwrap();
                let (flags, ts, thread, actions) =
                    decode_user_notif(cf::PUSH_USER_NOTIFS_NEWEST, &user_value.unwrap()).unwrap();
                assert_eq!(
                    (flags, ts, thread, actions.get()),
                    (super::flags(expected), 7, event.thread_id.clone(), r#"["notify"]"#)
                );
            }
        }
    }

    #[test]
    fn unread_records_of_one_user_and_room_read_across_memtable_and_tables() {
        // PUSH_ROOM_NOTIFS has a memtable hashed by user: a read must find exactly one user's
        // records of one room, in order, whether flushed to a table or still in the memtable.
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let actions: std::sync::Arc<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(r#"["notify"]"#.into()).unwrap().into();
        // "@a:x" is a prefix of "@a:xy": the separator keeps their keys apart.
        let users = [user_id!("@a:x"), user_id!("@a:xy"), user_id!("@b:x")];
        let rooms = [room_id!("!r:x"), room_id!("!r:xy")];
        let mut pos = 100;
        for round in 0..2 {
            for room in rooms {
                for _ in 0..3 {
                    pos += 1;
                    let members = users
                        .iter()
                        .map(|u| MemberNotification {
                            user_id: (*u).to_owned(),
                            actions: actions.clone(),
                            notify: true,
                            highlight: *u == users[1],
                        })
                        .collect();
                    let event = EventNotifications { room_id: room.to_owned(), thread_id: None, ts: 7, members };
                    let mut batch = WriteBatch::default();
                    store.write_push(
                        &mut batch,
                        pos,
                        &PushWrites { notifications: Some(event), ..PushWrites::default() },
                    );
                    store.db.write(batch).unwrap();
                }
            }
            if round == 0 {
                store.db.flush_cf(store.cf(cf::PUSH_ROOM_NOTIFS)).unwrap();
            }
        }
        // Room !r:x got positions 101-103 (in a table) and 107-109 (in the memtable).
        let read = |user, room, after| -> Vec<(StreamPos, bool)> {
            store.room_notifications(user, room, after).unwrap().iter().map(|e| (e.pos, e.highlight)).collect()
        };
        assert_eq!(read(users[0], rooms[0], 0), [101, 102, 103, 107, 108, 109].map(|p| (p, false)));
        assert_eq!(read(users[1], rooms[0], 102), [103, 107, 108, 109].map(|p| (p, true)));
        assert_eq!(read(users[2], rooms[1], 105), [106, 110, 111, 112].map(|p| (p, false)));
        assert!(read(users[0], rooms[1], 112).is_empty());
        assert!(read(user_id!("@c:x"), rooms[0], 0).is_empty());
        // Reopened, the memtable's records come back from the log.
        drop(store);
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let positions: Vec<StreamPos> =
            store.room_notifications(users[2], rooms[0], 0).unwrap().iter().map(|e| e.pos).collect();
        assert_eq!(positions, [101, 102, 103, 107, 108, 109]);
    }

    #[test]
    fn user_notifications_come_newest_first_from_both_families_across_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let room = room_id!("!r:x");
        let (a, b) = (user_id!("@a:x"), user_id!("@a:xy"));
        let actions: std::sync::Arc<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(r#"["notify"]"#.into()).unwrap().into();
        let event = |pos: StreamPos| EventNotifications {
            room_id: room.to_owned(),
            thread_id: None,
            ts: pos,
            members: [a, b]
                .map(|u| MemberNotification {
                    user_id: u.to_owned(),
                    actions: actions.clone(),
                    notify: true,
                    highlight: false,
                })
                .to_vec(),
        };
        let mut batch = WriteBatch::default();
        // Two records in the family written before 2026-11-25 (compact values, `user SEP pos`).
        for pos in [3, 5] {
            let mut value = Vec::new();
            encode_user_notif(&event(pos), &event(pos).members[0], &mut value);
            batch.put_cf(store.cf(cf::PUSH_USER_NOTIFS), keys::with_u64(a.as_bytes(), pos), &value);
        }
        for pos in 1..=12 {
            batch.put_cf(
                store.cf(cf::STREAM_EVENTS),
                keys::u64_key(pos),
                super::super::appservice::stream_event_value(room.as_bytes(), format!("$e{pos}").as_bytes()),
            );
        }
        store.db.write(batch).unwrap();
        // Then 8 and 9 flushed to a table, and 11 and 12 in the memtable.
        for pos in [8, 9, 11, 12] {
            let mut batch = WriteBatch::default();
            store.write_push(&mut batch, pos, &PushWrites { notifications: Some(event(pos)), ..PushWrites::default() });
            store.db.write(batch).unwrap();
            if pos == 9 {
                store.db.flush_cf(store.cf(cf::PUSH_USER_NOTIFS_NEWEST)).unwrap();
            }
        }
        let read = |user, before, limit| -> Vec<(StreamPos, String, u64)> {
            let records = store.user_notifications(user, before, limit).unwrap();
            records.into_iter().map(|r| (r.pos, r.event_id.to_string(), r.ts)).collect()
        };
        let positions =
            |user, before, limit| -> Vec<StreamPos> { read(user, before, limit).iter().map(|r| r.0).collect() };
        assert_eq!(read(a, StreamPos::MAX, 2), [(12, "$e12".to_owned(), 12), (11, "$e11".to_owned(), 11)]);
        assert_eq!(positions(a, StreamPos::MAX, 10), [12, 11, 9, 8, 5, 3]);
        // Strictly below `before`, across the two families.
        assert_eq!(positions(a, 12, 3), [11, 9, 8]);
        assert_eq!(positions(a, 9, 10), [8, 5, 3]);
        assert_eq!(positions(a, 8, 10), [5, 3]);
        assert_eq!(positions(a, 3, 10), Vec::<StreamPos>::new());
        assert_eq!(positions(a, 0, 10), Vec::<StreamPos>::new());
        assert_eq!(positions(a, StreamPos::MAX, 0), Vec::<StreamPos>::new());
        // `@a:x` is a prefix of `@a:xy`: neither sees the other's records.
        assert_eq!(positions(b, StreamPos::MAX, 10), [12, 11, 9, 8]);
        assert_eq!(positions(user_id!("@c:x"), StreamPos::MAX, 10), Vec::<StreamPos>::new());
    }

    #[test]
    fn user_notifications_read_both_formats_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let user = user_id!("@a:x");
        // A record in the JSON format of databases written before the compact one.
        let legacy = NotificationRecord {
            user_id: user.to_owned(),
            room_id: room_id!("!r:x").to_owned(),
            event_id: event_id!("$old").to_owned(),
            actions: serde_json::value::RawValue::from_string(r#"["notify",{"set_tweak":"highlight"}]"#.into())
                .unwrap(),
            notify: true,
            highlight: true,
            thread_id: Some("$root".into()),
            ts: 42,
            pos: 0,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(store.cf(cf::PUSH_USER_NOTIFS), keys::with_u64(user.as_bytes(), 5), encode(&legacy));
        store.db.write(batch).unwrap();
        let read = store.user_notifications(user, StreamPos::MAX, 10).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].event_id.as_str(), read[0].actions.get(), read[0].ts), ("$old", legacy.actions.get(), 42));
        assert_eq!((read[0].highlight, read[0].thread_id.as_deref()), (true, Some("$root")));

        // The compact encoding round-trips; a cut or unknown value is an error, not a panic.
        let mut value = b"left over".to_vec();
        let event = EventNotifications {
            room_id: legacy.room_id.clone(),
            thread_id: legacy.thread_id.clone(),
            ts: legacy.ts,
            members: Vec::new(),
        };
        let member = MemberNotification {
            user_id: user.to_owned(),
            actions: legacy.actions.clone().into(),
            notify: true,
            highlight: true,
        };
        encode_user_notif(&event, &member, &mut value);
        assert!(value.len() < 60, "{} bytes", value.len());
        let (flags, ts, thread, actions) = decode_user_notif(cf::PUSH_USER_NOTIFS, &value).unwrap();
        assert_eq!((flags, ts, thread.as_deref(), actions.get()), (3, 42, Some("$root"), legacy.actions.get()));
        for bad in [&value[..5], &value[..11], &value[..13], &[9u8, 0][..], &[][..]] {
            assert!(decode_user_notif(cf::PUSH_USER_NOTIFS, bad).is_err(), "{bad:?}");
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(store.cf(cf::PUSH_USER_NOTIFS), keys::with_u64(user.as_bytes(), 6), &value[..11]);
        store.db.write(batch).unwrap();
        assert!(matches!(store.user_notifications(user, StreamPos::MAX, 10), Err(StorageError::Corrupt { .. })));
    }
}
