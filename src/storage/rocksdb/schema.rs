//! The column families of the RocksDB backend, in one list, each with its key layout.
//!
//! Separator: `0xFF` never occurs in a Matrix identifier (they are UTF-8), so it joins
//! variable-length parts; integers are big-endian so byte order is numeric order.

/// `key: &str` -> raw bytes. Server-wide settings: signing keys, schema version.
pub const META: &str = "meta";
/// `user_id` -> UserRecord (JSON).
pub const USERS: &str = "users";
/// `user_id 0xFF device_id` -> DeviceRecord (JSON).
pub const DEVICES: &str = "devices";
/// `sha256(token)` (32 bytes) -> TokenRecord (JSON).
pub const TOKENS: &str = "tokens";
/// `event_id` -> StoredEvent (JSON).
pub const EVENTS: &str = "events";
/// `room_id` -> RoomRecord (JSON).
pub const ROOMS: &str = "rooms";
/// `room_id` -> RoomHead (JSON): current state group, forward extremities, depth.
pub const ROOM_HEADS: &str = "room_heads";
/// `state_group_id u64` -> StateGroup (JSON).
pub const STATE_GROUPS: &str = "state_groups";
/// `room_id 0xFF pos u64` -> `state_group_after u64 ++ event_id`.
pub const TIMELINE: &str = "timeline";
/// `pos u64` -> one byte saying what the position was used for (recovery of the counter).
pub const STREAM: &str = "stream";
/// `user_id 0xFF room_id` -> MembershipRecord (JSON).
pub const USER_ROOMS: &str = "user_rooms";
/// `room_id 0xFF user_id` -> membership (UTF-8).
pub const ROOM_MEMBERS: &str = "room_members";
/// `user_id 0xFF room_id` -> empty. Rooms a user has forgotten.
pub const FORGOTTEN: &str = "forgotten";
/// `user_id 0xFF session_id 0xFF txn_key` -> event_id (txn_key names room, type and txn id).
pub const TXNS: &str = "txns";
/// `alias` -> `room_id 0xFF creator`.
pub const ALIASES: &str = "aliases";
/// `room_id 0xFF alias` -> empty.
pub const ROOM_ALIASES: &str = "room_aliases";
/// `room_id` -> empty. Rooms published in the local public room directory.
pub const PUBLIC_ROOMS: &str = "public_rooms";
/// `user_id 0xFF room_id-or-empty 0xFF type` -> `pos u64 ++ content JSON`.
pub const ACCOUNT_DATA: &str = "account_data";
/// `user_id 0xFF pos u64` -> the ACCOUNT_DATA key that changed at `pos`.
pub const ACCOUNT_DATA_STREAM: &str = "account_data_stream";
/// `user_id 0xFF filter_id` -> filter JSON.
pub const FILTERS: &str = "filters";
/// `room_id 0xFF receipt_type 0xFF user_id 0xFF thread-or-empty` -> ReceiptRecord (JSON).
pub const RECEIPTS: &str = "receipts";
/// `room_id 0xFF pos u64` -> the RECEIPTS key that changed at `pos`.
pub const RECEIPTS_STREAM: &str = "receipts_stream";
/// `destination 0xFF kind u8 seq u64` -> `queued_at u64 ++ OutboundItem (JSON)`. The federation
/// outbox: kind 0 = PDU, 1 = EDU, so each kind is its own ordered run per destination and a
/// backlog of one does not have to be scanned to find the other.
pub const OUTBOX: &str = "outbox";
/// `destination` -> the transaction in flight (JSON): id, timestamp, `[kind, seq]` of its
/// OUTBOX entries. Written before the transaction is sent; deleted with its entries.
pub const OUTBOX_TXN: &str = "outbox_txn";
/// `server_name 0xFF media_id` -> MediaRecord (JSON): local uploads (pending ones too) and
/// cached copies of remote media.
pub const MEDIA: &str = "media";
/// `user_id 0xFF media_id` -> `unused_expires_ts u64`: a user's reserved async uploads.
pub const MEDIA_PENDING: &str = "media_pending";
/// `server_name 0xFF media_id 0xFF method 0xFF width u32 ++ height u32` -> ThumbnailRecord (JSON).
pub const MEDIA_THUMBNAILS: &str = "media_thumbnails";

/// `user_id 0xFF device_id` -> the device's keys (DeviceKeys JSON as uploaded, signatures added).
pub const DEVICE_KEYS: &str = "device_keys";
/// `user_id 0xFF device_id 0xFF algorithm 0xFF key_id` -> one-time key JSON (deleted when claimed).
pub const ONE_TIME_KEYS: &str = "one_time_keys";
/// `user_id 0xFF device_id 0xFF algorithm` -> FallbackKey (JSON): key id, key, used.
pub const FALLBACK_KEYS: &str = "fallback_keys";
/// `user_id` -> CrossSigningKeys (JSON): master, self-signing, user-signing public keys.
pub const CROSS_SIGNING_KEYS: &str = "cross_signing_keys";
/// `signer 0xFF target_user` -> signatures by the signer's user-signing key on the target's
/// master key (JSON `{signer: {key_id: sig}}`), shown to the signer only.
pub const USER_SIGNATURES: &str = "user_signatures";
/// `pos u64` -> user_id. The device-list change stream (local and remote users).
pub const DEVICE_LIST_STREAM: &str = "device_list_stream";
/// `user_id` -> `pos u64`: the user's latest device-list change.
pub const DEVICE_LIST_LAST: &str = "device_list_last";
/// `user_id 0xFF device_id 0xFF pos u64` -> to-device event JSON `{sender, type, content}`.
pub const TO_DEVICE: &str = "to_device";
/// `user_id 0xFF session_id 0xFF txn_id` -> empty. `/sendToDevice` transactions already done.
pub const TO_DEVICE_TXNS: &str = "to_device_txns";
/// `user_id` -> RemoteDeviceList (JSON): our copy of a remote user's devices.
pub const REMOTE_DEVICES: &str = "remote_devices";
/// `user_id 0xFF version u64` -> BackupVersionRecord (JSON): algorithm, auth data, key count,
/// etag; deleted versions stay as tombstones so their numbers are never reused.
pub const BACKUP_VERSIONS: &str = "backup_versions";
/// `user_id 0xFF version u64 room_id 0xFF session_id` -> BackupKeyRecord (JSON).
pub const BACKUP_KEYS: &str = "backup_keys";
/// `user_id 0xFF room_id 0xFF pos u64` -> `flags u8 ++ thread root` (1 notify, 2 highlight):
/// the user's notified events in a room; counting after a read receipt is one short scan.
pub const PUSH_ROOM_NOTIFS: &str = "push_room_notifs";
/// `user_id 0xFF pos u64` -> `1 u8 ++ flags u8 ++ ts u64 ++ thread root length u16 ++ thread
/// root ++ actions (JSON)`: `/notifications` as written until 2026-11-25, read backwards; the
/// room and the event are the `stream_events` entry at `pos`. Records of databases from before
/// 2026-11 are NotificationRecord JSON objects. No longer written, still read.
pub const PUSH_USER_NOTIFS: &str = "push_user_notifs";
/// `user_id 0xFF (u64::MAX - pos) u64` -> the compact PUSH_USER_NOTIFS value: `/notifications`,
/// newest first in key order, so it is read forwards (its memtable is hashed by user and
/// cannot be read backwards, see `per_user_memtable`). Written since 2026-11-25.
pub const PUSH_USER_NOTIFS_NEWEST: &str = "push_user_notifs_newest";
/// `user_id 0xFF room_id` -> `pos u64`: the user's latest own event in the room (implicit receipt).
pub const PUSH_SENT_READ: &str = "push_sent_read";
/// `user_id 0xFF app_id 0xFF pushkey` -> PusherRecord (JSON).
pub const PUSHERS: &str = "pushers";
/// `app_id 0xFF pushkey 0xFF user_id` -> empty: who else uses a pushkey (`append: false`).
pub const PUSHER_KEYS: &str = "pusher_keys";
/// `pos u64 ++ index u32` -> DeliveryRecord (JSON): push-gateway deliveries still to make.
pub const PUSH_QUEUE: &str = "push_queue";

/// `pos u64` -> `room_id 0xFF event_id`: every timeline event by stream position (the
/// appservice sender reads what happened after its cursor, across rooms).
pub const STREAM_EVENTS: &str = "stream_events";
/// `appservice_id` -> AppserviceState (JSON): cursor and the transaction in flight.
pub const APPSERVICE_STATE: &str = "appservice_state";

pub const ALL: &[&str] = &[
    META,
    USERS,
    DEVICES,
    TOKENS,
    EVENTS,
    ROOMS,
    ROOM_HEADS,
    STATE_GROUPS,
    TIMELINE,
    STREAM,
    USER_ROOMS,
    ROOM_MEMBERS,
    FORGOTTEN,
    TXNS,
    ALIASES,
    ROOM_ALIASES,
    PUBLIC_ROOMS,
    ACCOUNT_DATA,
    ACCOUNT_DATA_STREAM,
    FILTERS,
    RECEIPTS,
    RECEIPTS_STREAM,
    OUTBOX,
    OUTBOX_TXN,
    STREAM_EVENTS,
    APPSERVICE_STATE,
    DEVICE_KEYS,
    ONE_TIME_KEYS,
    FALLBACK_KEYS,
    CROSS_SIGNING_KEYS,
    USER_SIGNATURES,
    DEVICE_LIST_STREAM,
    DEVICE_LIST_LAST,
    TO_DEVICE,
    TO_DEVICE_TXNS,
    REMOTE_DEVICES,
    MEDIA,
    MEDIA_PENDING,
    MEDIA_THUMBNAILS,
    BACKUP_VERSIONS,
    BACKUP_KEYS,
    PUSH_ROOM_NOTIFS,
    PUSH_USER_NOTIFS,
    PUSH_USER_NOTIFS_NEWEST,
    PUSH_SENT_READ,
    PUSHERS,
    PUSHER_KEYS,
    PUSH_QUEUE,
];
