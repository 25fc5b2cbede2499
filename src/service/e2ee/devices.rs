//! Device lists: who must re-query whose keys (`device_lists` in /sync, `/keys/changes`),
//! telling other servers about our users' device changes (`m.device_list_update`,
//! `m.signing_key_update`), following remote users' lists from their EDUs, and fetching a
//! list again through `/user/devices` when an update does not follow the copy we have.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{
    DeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UInt, UserId,
    api::federation::{
        device::get_devices,
        transactions::edu::{DeviceListUpdateContent, Edu, SigningKeyUpdateContent},
    },
    events::TimelineEventType,
    serde::Raw,
};
use serde_json::Value;

use super::E2ee;
use crate::{
    error::{Error, Result},
    service::Core,
    storage::{
        Direction, StreamPos,
        e2ee::{DeviceListChange, RemoteDevice, RemoteDeviceList},
    },
};

/// The `device_lists` of a sync response.
#[derive(Debug, Default)]
pub struct DeviceListDelta {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
}

/// How many timeline entries of one room are read to find membership changes.
const MEMBER_SCAN_LIMIT: usize = 500;

/// For each room looked at (within one request): the position since which some local user
/// has been joined to it without a break, or None when no local user is joined.
pub(super) type LocalJoins = HashMap<OwnedRoomId, Option<StreamPos>>;

impl E2ee {
    /// Whose device lists `user_id` must re-query after `since`: users sharing a room with
    /// them whose lists changed, users who joined a room they share (or everyone in a room
    /// they joined), and those who no longer share any room with them (`left`).
    pub fn device_list_delta(&self, user_id: &UserId, since: StreamPos, upto: StreamPos) -> Result<DeviceListDelta> {
        let my_rooms = self.core.db.rooms_of_user(user_id)?;
        self.device_list_delta_in(user_id, &my_rooms, since, upto)
    }

    /// `device_list_delta` with the user's rooms already read (`rooms_of_user`).
    pub fn device_list_delta_in(
        &self,
        user_id: &UserId,
        my_rooms: &[(OwnedRoomId, crate::storage::MembershipRecord)],
        since: StreamPos,
        upto: StreamPos,
    ) -> Result<DeviceListDelta> {
        let db = &self.core.db;
        // Most syncs see no device change and no member leaving: the set of joined rooms is
        // built only when a user must be checked against it.
        let joined: std::cell::OnceCell<BTreeSet<&RoomId>> = std::cell::OnceCell::new();
        let shares_room = |other: &UserId| -> Result<bool> {
            let joined = joined
                .get_or_init(|| my_rooms.iter().filter(|(_, m)| m.membership == "join").map(|(r, _)| &**r).collect());
            Ok(db.rooms_of_user(other)?.iter().any(|(r, m)| m.membership == "join" && joined.contains(&**r)))
        };
        let mut changed = BTreeSet::new();
        let mut candidates_left = BTreeSet::new();
        for other in db.device_list_changes(since, upto)? {
            if other == user_id || shares_room(&other)? {
                changed.insert(other);
            }
        }
        for (room_id, record) in my_rooms {
            if record.pos > since && record.pos <= upto {
                // Our own membership changed: everyone in the room is new to us, or gone.
                let members = db.members(room_id)?;
                for (other, membership) in members.iter().cloned() {
                    if other == user_id || membership != "join" {
                        continue;
                    }
                    if record.membership == "join" {
                        changed.insert(other);
                    } else {
                        candidates_left.insert(other);
                    }
                }
                continue;
            }
            if record.membership != "join" || !db.member_events_after(room_id, since) {
                continue;
            }
            let Some(head) = db.room_head(room_id)? else { continue };
            if head.last_pos <= since {
                continue;
            }
            for (pos, event_id, _) in db.timeline(room_id, since, Direction::Forward, MEMBER_SCAN_LIMIT)? {
                if pos > upto {
                    break;
                }
                let Some(pdu) = self.rooms.pdu(&event_id)? else { continue };
                if pdu.kind != TimelineEventType::RoomMember {
                    continue;
                }
                let Some(Ok(other)) = pdu.state_key.as_deref().map(UserId::parse) else { continue };
                if other == user_id {
                    continue;
                }
                match pdu.content_value().get("membership").and_then(Value::as_str) {
                    Some("join") => {
                        changed.insert(other);
                    }
                    Some("leave" | "ban") => {
                        candidates_left.insert(other);
                    }
                    _ => {}
                }
            }
        }
        let mut left = Vec::new();
        for other in candidates_left {
            if !shares_room(&other)? {
                changed.remove(&other);
                left.push(other);
            }
        }
        Ok(DeviceListDelta { changed: changed.into_iter().collect(), left })
    }

    /// Remote servers sharing a room with a local user.
    fn servers_sharing(&self, user_id: &UserId) -> Result<Vec<OwnedServerName>> {
        let mut servers = BTreeSet::new();
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.membership == "join" {
                servers.extend(self.rooms.remote_servers_in_room(&room_id)?);
            }
        }
        Ok(servers.into_iter().collect())
    }

    /// Tells other servers that a local user's device changed (new keys, renamed, deleted).
    pub async fn share_device_change(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        change: DeviceListChange,
        deleted: bool,
    ) -> Result<()> {
        let servers = self.servers_sharing(user_id)?;
        if servers.is_empty() {
            return Ok(());
        }
        let mut content = DeviceListUpdateContent::new(
            user_id.to_owned(),
            device_id.to_owned(),
            UInt::try_from(change.pos).unwrap_or_default(),
        );
        content.prev_id = change.prev.and_then(|p| UInt::try_from(p).ok()).into_iter().collect();
        content.deleted = deleted.then_some(true);
        if !deleted {
            content.device_display_name = self.core.db.device(user_id, device_id)?.and_then(|d| d.display_name);
            content.keys = self
                .core
                .db
                .device_keys(user_id)?
                .into_iter()
                .find(|(d, _)| d == device_id)
                .map(|(_, keys)| Raw::from_json(keys));
        }
        let edu = Raw::new(&Edu::DeviceListUpdate(content)).map_err(|e| Error::internal(e.to_string()))?;
        self.federation.queue_edu(servers, &edu).await
    }

    /// Tells other servers about a local user's new cross-signing keys.
    pub async fn share_signing_keys(&self, user_id: &UserId) -> Result<()> {
        let servers = self.servers_sharing(user_id)?;
        if servers.is_empty() {
            return Ok(());
        }
        let keys = self.core.db.cross_signing_keys(user_id)?;
        let mut content = SigningKeyUpdateContent::new(user_id.to_owned());
        content.master_key = keys.master.map(Raw::from_json);
        content.self_signing_key = keys.self_signing.map(Raw::from_json);
        let edu = Raw::new(&Edu::SigningKeyUpdate(content)).map_err(|e| Error::internal(e.to_string()))?;
        self.federation.queue_edu(servers, &edu).await
    }

    /// A device was deleted (logout or device deletion): other servers stop encrypting to it.
    pub async fn device_deleted(&self, user_id: &UserId, device_id: &DeviceId, change: DeviceListChange) -> Result<()> {
        self.share_device_change(user_id, device_id, change, true).await
    }

    /// A device was renamed: its name is part of the device list.
    pub async fn device_renamed(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let user = user_id.to_owned();
        let change = self.core.blocking(move |db| Ok(db.record_device_list_change(&user)?)).await?;
        self.share_device_change(user_id, device_id, change, false).await
    }

    /// Whether a local user shares a room with `user_id` (so we follow their device list).
    pub(super) fn followed(&self, user_id: &UserId) -> Result<bool> {
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.membership == "join"
                && self
                    .core
                    .db
                    .members(&room_id)?
                    .iter()
                    .any(|(u, m)| m == "join" && u.server_name() == self.core.server_name())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Since when a local user has been joined to `room_id` without a break (None: no local
    /// user is). A membership record's position is that of the user's latest membership
    /// event, so a leave and a join again both move it.
    fn local_joined_since(&self, room_id: &RoomId, memo: &mut LocalJoins) -> Result<Option<StreamPos>> {
        if let Some(known) = memo.get(room_id) {
            return Ok(*known);
        }
        let db = &self.core.db;
        let mut earliest: Option<StreamPos> = None;
        for (member, membership) in db.members(room_id)?.iter() {
            if membership != "join" || member.server_name() != self.core.server_name() {
                continue;
            }
            if let Some(record) = db.membership(room_id, &member)?
                && record.membership == "join"
            {
                earliest = Some(earliest.map_or(record.pos, |pos| pos.min(record.pos)));
            }
        }
        memo.insert(room_id.to_owned(), earliest);
        Ok(earliest)
    }

    /// Whether our copy of a remote user's device list still answers for them: it is not
    /// stale, and some room has been shared by them and a local user without a break since
    /// it was fetched. Their server tells us about changes only while a room is shared; once
    /// the last one is left, changes go unheard, and a room shared again later must not
    /// bring the old copy back (Synapse stops following a user whose last shared room is
    /// left, `handle_potentially_left_users`). A new membership event of the same kind (a
    /// profile change) also counts as a break: at worst one fetch too many.
    pub(super) fn copy_is_current(
        &self,
        user_id: &UserId,
        list: &RemoteDeviceList,
        memo: &mut LocalJoins,
    ) -> Result<bool> {
        if list.stale {
            return Ok(false);
        }
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.membership == "join"
                && record.pos <= list.fetched_at
                && self.local_joined_since(&room_id, memo)?.is_some_and(|pos| pos <= list.fetched_at)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stops following a remote user no local user shares a room with any more: our copy
    /// of their list is dropped, as no further change will reach us.
    async fn stop_following(&self, user_id: &UserId) -> Result<()> {
        if self.core.db.remote_device_list(user_id)?.is_none() {
            return Ok(());
        }
        let user = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.put_remote_device_list(&user, None)?)).await?;
        Ok(())
    }

    /// An `m.device_list_update` EDU from `origin`.
    pub async fn receive_device_list_update(&self, origin: &ServerName, update: DeviceListUpdateContent) {
        if update.user_id.server_name() != origin {
            return;
        }
        if let Err(error) = self.apply_device_list_update(update).await {
            tracing::info!(%origin, %error, "could not apply a device list update");
        }
    }

    async fn apply_device_list_update(&self, update: DeviceListUpdateContent) -> Result<()> {
        let user_id = update.user_id.clone();
        if !self.followed(&user_id)? {
            return self.stop_following(&user_id).await;
        }
        let stream_id = u64::from(update.stream_id);
        let stored = self.core.db.remote_device_list(&user_id)?;
        let current = match &stored {
            Some(list) => self.copy_is_current(&user_id, list, &mut LocalJoins::new())?,
            None => false,
        };
        let follows = current
            && stored.as_ref().is_some_and(|list| {
                stream_id <= list.stream_id || update.prev_id.iter().any(|p| u64::from(*p) == list.stream_id)
            });
        match stored {
            Some(list) if follows && stream_id <= list.stream_id => Ok(()),
            Some(mut list) if follows => {
                list.devices.retain(|d| d.device_id != update.device_id);
                if update.deleted != Some(true)
                    && let Some(keys) = update.keys
                {
                    list.devices.push(RemoteDevice {
                        device_id: update.device_id.clone(),
                        display_name: update.device_display_name.clone(),
                        keys: keys.into_json(),
                    });
                }
                list.stream_id = stream_id;
                let user = user_id.clone();
                self.core.blocking(move |db| Ok(db.put_remote_device_list(&user, Some(&list))?)).await?;
                Ok(())
            }
            stored => {
                // A gap (or a user we had no current copy of): mark it stale so queries go
                // to their server, tell local users to re-query, and fetch the whole list
                // again.
                let stale = stored.map(|mut list| {
                    list.stale = true;
                    list
                });
                let user = user_id.clone();
                self.core.blocking(move |db| Ok(db.put_remote_device_list(&user, stale.as_ref())?)).await?;
                self.spawn_resync(user_id);
                Ok(())
            }
        }
    }

    /// Fetches a remote user's device list again in the background (once at a time).
    pub(super) fn spawn_resync(&self, user_id: OwnedUserId) {
        if !self.resyncing.lock().unwrap_or_else(|e| e.into_inner()).insert(user_id.clone()) {
            return;
        }
        let (core, client, resyncing) = (self.core.clone(), self.federation.client.clone(), self.resyncing.clone());
        // Taken before asking: a membership change while the answer travels makes the copy
        // look older than it is, never newer.
        let fetched_at = core.db.current_pos();
        tokio::spawn(async move {
            let server = user_id.server_name().to_owned();
            let answer = client.send(&server, get_devices::v1::Request::new(user_id.clone())).await;
            match answer {
                Ok(answer) if answer.user_id == user_id => {
                    if let Err(error) = store_resync(&core, &user_id, answer, fetched_at).await {
                        tracing::warn!(%user_id, %error, "could not store a fetched device list");
                    }
                }
                Ok(_) => tracing::info!(%user_id, "a device list answer named another user"),
                Err(error) => tracing::info!(%user_id, %error, "could not fetch a device list"),
            }
            resyncing.lock().unwrap_or_else(|e| e.into_inner()).remove(&user_id);
        });
    }

    /// An `m.signing_key_update` EDU from `origin`.
    pub async fn receive_signing_key_update(&self, origin: &ServerName, update: SigningKeyUpdateContent) {
        if update.user_id.server_name() != origin {
            return;
        }
        let result: Result<()> = async {
            if !self.followed(&update.user_id)? {
                return self.stop_following(&update.user_id).await;
            }
            let stored = self.core.db.remote_device_list(&update.user_id)?;
            let list = stored.map(|mut list| {
                if let Some(master) = update.master_key {
                    list.master_key = Some(master.into_json());
                }
                if let Some(key) = update.self_signing_key {
                    list.self_signing_key = Some(key.into_json());
                }
                list
            });
            let user = update.user_id.clone();
            self.core.blocking(move |db| Ok(db.put_remote_device_list(&user, list.as_ref())?)).await?;
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::info!(%origin, %error, "could not apply a signing key update");
        }
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's device list.
    pub fn user_devices(&self, user_id: &UserId) -> Result<get_devices::v1::Response> {
        let db = &self.core.db;
        if db.user(user_id)?.is_none() {
            return Err(Error::not_found("Unknown user."));
        }
        let stream_id = db.last_device_list_change(user_id)?.unwrap_or(0);
        let mut response =
            get_devices::v1::Response::new(user_id.to_owned(), UInt::try_from(stream_id).unwrap_or_default());
        let names: BTreeMap<_, _> = db.devices(user_id)?.into_iter().map(|d| (d.device_id, d.display_name)).collect();
        for (device_id, keys) in db.device_keys(user_id)? {
            let Some(name) = names.get(&device_id) else { continue };
            let mut device = get_devices::v1::UserDevice::new(device_id, Raw::from_json(keys));
            device.device_display_name = name.clone();
            response.devices.push(device);
        }
        let cross = db.cross_signing_keys(user_id)?;
        response.master_key = cross.master.map(Raw::from_json);
        response.self_signing_key = cross.self_signing.map(Raw::from_json);
        Ok(response)
    }
}

/// Stores a device list fetched through `/user/devices` (asked for at `fetched_at`).
async fn store_resync(
    core: &Arc<Core>,
    user_id: &UserId,
    answer: get_devices::v1::Response,
    fetched_at: StreamPos,
) -> Result<()> {
    let mut list = RemoteDeviceList {
        stream_id: u64::from(answer.stream_id),
        devices: Vec::new(),
        master_key: answer.master_key.map(Raw::into_json),
        self_signing_key: answer.self_signing_key.map(Raw::into_json),
        stale: false,
        fetched_at,
    };
    for device in answer.devices.into_iter().take(10_000) {
        // Only keys that name this user and device.
        let Ok(keys) = device.keys.deserialize() else { continue };
        if keys.user_id != user_id || keys.device_id != device.device_id {
            continue;
        }
        list.devices.push(RemoteDevice {
            device_id: device.device_id,
            display_name: device.device_display_name,
            keys: device.keys.into_json(),
        });
    }
    let user = user_id.to_owned();
    core.blocking(move |db| Ok(db.put_remote_device_list(&user, Some(&list))?)).await?;
    Ok(())
}
