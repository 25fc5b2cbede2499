//! Persistence boundary: domain-level storage traits, their record types, and `open`.
//!
//! Every trait method is one atomic unit (one RocksDB WriteBatch). Writes are durable
//! (write-ahead log, synced) before the method returns, so a caller may acknowledge them.
//! The service layer speaks only these traits; only `storage/rocksdb/` names RocksDB.
//! One trait comes from ieum-federation: `OutboxStore`, the federation sender's queues.

use std::{path::Path, sync::Arc};

use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
    events::StateEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use self::media::{FillOutcome, MediaFiles, MediaRecord, MediaStore, ThumbnailRecord};
pub use ieum_federation::outbox::{OutboundItem, OutboundTransaction, OutboxError, OutboxSeq, OutboxStore, QueuedItem};

pub mod appservice;
pub mod backup;
pub mod e2ee;
pub mod media;
pub use backup::{
    BackupDelete, BackupKeyRecord, BackupKeys, BackupKeysState, BackupScope, BackupStore, BackupUpdate, BackupUpload,
    BackupVersionRecord,
};

pub mod push;
pub mod rocksdb;
pub use self::rocksdb::StalledAppend;
pub use push::{
    DeliveryRecord, EventNotifications, MemberNotification, NotificationRecord, PushStore, PushWrites, PusherRecord,
    UnreadEntry,
};
// The one place a backend is chosen (see `open`).
use self::rocksdb as embedded;
#[cfg(test)]
mod tests;

/// A position in the server's single, totally ordered stream of changes (events, receipts,
/// account data, invites...). Sync tokens are built from it.
pub type StreamPos = u64;

/// Names a write that is readable but maybe not yet durable (see
/// `RoomStore::append_event_pending`); `StreamStore::wait_durable` makes it durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a pending write is acknowledged only after wait_durable"]
pub struct WriteTicket(pub(crate) u64);

/// The id of a stored state group (a delta over a parent group, or a full snapshot).
pub type StateGroupId = u64;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Backend(String),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A local account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: OwnedUserId,
    /// PHC string of an argon2id hash; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub created_ts: u64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    /// Set for users created by (or in the namespace of) an application service.
    #[serde(default)]
    pub appservice_id: Option<String>,
}

/// A device (session) of a local user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub created_ts: u64,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
    /// SHA-256 of the device's current access token (we never store tokens themselves).
    pub token_hash: [u8; 32],
    /// SHA-256 of the device's refresh token, when refresh tokens are in use.
    pub refresh_hash: Option<[u8; 32]>,
}

/// What an access or refresh token (looked up by its SHA-256) stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The client session this token belongs to: new at every login, kept across
    /// refreshes. Transaction ids are scoped to it.
    #[serde(default)]
    pub session_id: String,
    /// Milliseconds since the epoch after which an access token is no longer accepted.
    pub expires_at: Option<u64>,
    pub kind: TokenKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    Access,
    Refresh,
}

/// An event as stored: the full signed PDU plus what this server decided about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The PDU in federation format (signed; redacted in place once redacted).
    pub pdu: Box<RawValue>,
    pub room_id: OwnedRoomId,
    /// Position in the stream, for events in the timeline (None for outliers).
    pub pos: Option<StreamPos>,
    pub rejected: bool,
    pub soft_failed: bool,
    /// State group holding the room state before this event.
    pub state_before: Option<StateGroupId>,
    /// The state event this one replaced (for `unsigned.prev_content`).
    pub replaces_state: Option<OwnedEventId>,
    /// The sending client session and its transaction id, for `unsigned.transaction_id`.
    pub txn: Option<(String, String)>,
    /// The redaction event (client format) if this event was redacted.
    pub redacted_because: Option<Box<RawValue>>,
}

/// A state group: either a full snapshot (`parent == None`) or changes over a parent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateGroup {
    pub parent: Option<StateGroupId>,
    /// Number of deltas between this group and its snapshot (bounds load cost).
    pub chain_len: u32,
    pub changes: Vec<(StateEventType, String, OwnedEventId)>,
}

/// The membership of a user in a room, as indexed for quick lookups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: String,
    pub event_id: OwnedEventId,
    pub pos: StreamPos,
}

/// Room-level facts that never change after creation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    pub room_version: ruma::RoomVersionId,
    pub create_event_id: OwnedEventId,
    pub created_ts: u64,
}

/// Everything one accepted timeline event changes, written in one atomic batch.
#[derive(Debug)]
pub struct AppendEvent<'a> {
    pub event_id: &'a ruma::EventId,
    pub event: StoredEvent,
    /// For `m.room.create`: the room record to create.
    pub new_room: Option<RoomRecord>,
    /// New state groups to store (the state after this event, a resolved current state).
    pub new_state_groups: Vec<(StateGroupId, StateGroup)>,
    /// The room's state group after this event (stored next to the timeline entry).
    pub state_after: StateGroupId,
    /// The room's forward extremities after this event.
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    /// Membership index updates: (user, membership, member event) for every member whose
    /// current membership this event changes (one for a local member event; several when
    /// state resolution moves the room's state).
    pub memberships: Vec<(OwnedUserId, String, OwnedEventId)>,
    /// The transaction this event answers: (user, client session, scoped txn key).
    pub txn_key: Option<(OwnedUserId, String, String)>,
    /// Redact this earlier event (its new, redacted PDU and the redaction in client format).
    pub redact: Option<(OwnedEventId, StoredEvent)>,
    /// Notification records, push deliveries and the sender's implicit read position.
    pub push: PushWrites,
    /// This event moves the room up a client's room list (its position becomes the head's
    /// `last_bump`); otherwise the head keeps `last_bump`, the previous head's value.
    pub bumps: bool,
    pub last_bump: Option<StreamPos>,
}

/// Direction of a timeline walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A receipt as stored: (room, receipt type, user, thread) -> event, data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub room_id: OwnedRoomId,
    pub receipt_type: String,
    pub user_id: OwnedUserId,
    pub thread_id: Option<String>,
    pub event_id: OwnedEventId,
    pub ts: u64,
    pub pos: StreamPos,
}

/// Accounts, devices and tokens.
pub trait UserStore: Send + Sync {
    fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>>;
    /// Creates the user if the id is free; returns false (writing nothing) if it is taken.
    fn create_user(&self, user: &UserRecord) -> Result<bool>;
    fn put_user(&self, user: &UserRecord) -> Result<()>;
    fn count_users(&self) -> Result<u64>;
    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>>;
    /// Stores a device and its tokens, replacing any previous device (and its tokens) with
    /// the same id.
    fn put_device_with_tokens(
        &self,
        user_id: &UserId,
        device: &DeviceRecord,
        access: &TokenRecord,
        refresh: Option<&TokenRecord>,
    ) -> Result<()>;
    /// Updates device metadata (name, last seen) without touching its tokens.
    fn update_device(&self, user_id: &UserId, device: &DeviceRecord) -> Result<()>;
    fn device(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<Option<DeviceRecord>>;
    fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>>;
    /// Deletes a device with every token, key, pusher and to-device message that belongs to it,
    /// and records the change of the user's device list (None if there was no such device).
    fn delete_device(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<Option<e2ee::DeviceListChange>>;
}

/// Events, the timeline, state and membership.
pub trait RoomStore: Send + Sync + StreamStore {
    /// Reserves state-group ids (never reused).
    fn next_state_group_id(&self) -> StateGroupId;
    /// Appends one accepted event to a room's timeline with all its derived indexes; durable
    /// when it returns.
    fn append_event(&self, append: AppendEvent<'_>) -> Result<StreamPos> {
        let (pos, ticket) = self.append_event_pending(append)?;
        self.wait_durable(ticket)?;
        Ok(pos)
    }
    /// `append_event` without waiting for the disk: the event is readable at once (the next
    /// event of the room can be built on it), but neither durable nor visible to stream
    /// readers until `wait_durable` with its ticket, or a later one, returns. Lets a caller
    /// release the room's lock before the fsync, and many appends share one fsync.
    fn append_event_pending(&self, append: AppendEvent<'_>) -> Result<(StreamPos, WriteTicket)> {
        match self.try_append_event_pending(append)? {
            Ok(written) => Ok(written),
            Err(stalled) => self.finish_stalled_append(stalled),
        }
    }
    /// `append_event_pending` that never waits inside the store, so an async worker may
    /// call it: when RocksDB holds writes back (memtables or level-0 files waiting for a
    /// flush or a compaction), nothing is written and the built append comes back, for
    /// `finish_stalled_append` on a blocking thread. No write in the store asks for a
    /// synced write, so a write never waits behind another's fsync either.
    fn try_append_event_pending(
        &self,
        append: AppendEvent<'_>,
    ) -> Result<std::result::Result<(StreamPos, WriteTicket), StalledAppend>>;
    /// Writes an append `try_append_event_pending` gave back, waiting as long as RocksDB
    /// needs (a blocking call).
    fn finish_stalled_append(&self, stalled: StalledAppend) -> Result<(StreamPos, WriteTicket)>;
    fn event(&self, event_id: &ruma::EventId) -> Result<Option<StoredEvent>>;
    /// The stream position of an event (None: unknown, or an outlier), without decoding it.
    fn event_pos(&self, event_id: &ruma::EventId) -> Result<Option<StreamPos>>;
    fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>>;
    fn state_group(&self, id: StateGroupId) -> Result<Option<StateGroup>>;
    /// The current state group, extremities and depth of a room.
    fn room_head(&self, room_id: &RoomId) -> Result<Option<RoomHead>>;
    /// Timeline entries (position, event id, state group after) strictly after `from`
    /// (forward) or strictly before `from` (backward), up to `limit`.
    fn timeline(
        &self,
        room_id: &RoomId,
        from: StreamPos,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(StreamPos, OwnedEventId, StateGroupId)>>;
    /// The latest timeline entry at or before `pos`.
    fn timeline_at(&self, room_id: &RoomId, pos: StreamPos) -> Result<Option<(StreamPos, OwnedEventId, StateGroupId)>>;
    /// Whether a receipt of the user in the room, or an event they sent there, may have been
    /// written after `since` (false: their read position is what it was at `since`).
    fn read_position_changed_after(&self, user_id: &UserId, room_id: &RoomId, since: StreamPos) -> bool;
    /// Whether a member event may have entered a room's timeline after `since` (false: a
    /// scan of the timeline after `since` would find none).
    fn member_events_after(&self, room_id: &RoomId, since: StreamPos) -> bool;
    /// Every room a user has a membership in, with that membership.
    fn rooms_of_user(&self, user_id: &UserId) -> Result<Arc<Vec<(OwnedRoomId, MembershipRecord)>>>;
    fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipRecord>>;
    /// Every user with a membership in a room (current state).
    fn members(&self, room_id: &RoomId) -> Result<std::sync::Arc<Vec<(OwnedUserId, String)>>>;
    /// Removes a room from a user's list after they left it (`/forget`).
    fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()>;
    fn is_forgotten(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool>;
    fn txn_event(&self, user_id: &UserId, session_id: &str, txn_key: &str) -> Result<Option<OwnedEventId>>;
    /// Stores events outside the timeline (auth chains and state fetched from other
    /// servers, rejected and soft-failed events) with the state groups they refer to.
    fn store_outliers(
        &self,
        events: Vec<(OwnedEventId, StoredEvent)>,
        groups: Vec<(StateGroupId, StateGroup)>,
    ) -> Result<()>;
    /// Inserts history fetched from other servers BELOW a room's oldest timeline entry:
    /// `events` newest first, each with the state group after it. They take the timeline
    /// keys just under the oldest one (never a stream position readers could see as new).
    /// Returns how many were inserted (fewer when the keys below run out).
    fn insert_backfilled(
        &self,
        room_id: &RoomId,
        events: Vec<(OwnedEventId, StoredEvent, StateGroupId)>,
        groups: Vec<(StateGroupId, StateGroup)>,
    ) -> Result<usize>;
    /// Records a user's membership in a room this server does not take part in (an invite
    /// from another server, or its rejection), storing the membership event as an outlier.
    fn put_outside_membership(
        &self,
        user_id: &UserId,
        membership: &str,
        event_id: &ruma::EventId,
        event: StoredEvent,
    ) -> Result<StreamPos>;
}

/// The head of a room: where new events attach.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomHead {
    pub state_group: StateGroupId,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub last_pos: StreamPos,
    /// Position of the room's latest event of a type that moves it up a client's room list
    /// (`m.room.message`, `m.room.encrypted`, ...: see `service::sliding_sync::bumps`). None
    /// for rooms whose head was written before this field existed.
    #[serde(default)]
    pub last_bump: Option<StreamPos>,
}

/// Aliases, the public room directory, room tags and account data, filters, receipts.
pub trait MetaStore: Send + Sync {
    fn alias(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>>;
    /// Creates an alias if free; returns false if it already exists.
    fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<bool>;
    fn delete_alias(&self, alias: &RoomAliasId) -> Result<()>;
    fn aliases_of_room(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>>;
    fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()>;
    fn is_public(&self, room_id: &RoomId) -> Result<bool>;
    fn public_rooms(&self) -> Result<Vec<OwnedRoomId>>;

    /// Global (room None) or per-room account data; returns the stream position.
    fn put_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: &RawValue,
    ) -> Result<StreamPos>;
    fn account_data(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Box<RawValue>>>;
    /// Account data changed after `since`: (room, type, content).
    fn account_data_since(
        &self,
        user_id: &UserId,
        since: StreamPos,
    ) -> Result<Vec<(Option<OwnedRoomId>, String, Box<RawValue>)>>;

    fn put_filter(&self, user_id: &UserId, filter: &RawValue) -> Result<String>;
    fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<Box<RawValue>>>;

    /// Stores a receipt unless it would move an older-or-equal receipt backwards; returns its position.
    fn put_receipt(&self, receipt: ReceiptRecord) -> Result<StreamPos>;
    fn receipts_since(&self, room_id: &RoomId, since: StreamPos) -> Result<Vec<ReceiptRecord>>;
    fn receipt(
        &self,
        room_id: &RoomId,
        receipt_type: &str,
        user_id: &UserId,
        thread_id: Option<&str>,
    ) -> Result<Option<ReceiptRecord>>;

    /// Key/value settings of the server itself (signing keys, schema version).
    fn server_value(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn put_server_value(&self, key: &str, value: &[u8]) -> Result<()>;
}

/// The stream of changes: the position readers may see, and waiting for it to move.
pub trait StreamStore: Send + Sync {
    /// Highest position such that every change at or below it is durable and visible.
    fn current_pos(&self) -> StreamPos;
    /// A receiver that changes whenever `current_pos` advances.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<StreamPos>;
    /// Returns once the pending write named by `ticket`, and every write before it, is
    /// durable (one WAL sync serves every waiter it covers).
    fn wait_durable(&self, ticket: WriteTicket) -> Result<()>;
    /// A ticket covering every write made so far (to make a pending write that someone
    /// else made durable before answering about it).
    fn latest_write(&self) -> WriteTicket;
    /// Some pending write is not durable yet.
    fn has_unsynced(&self) -> bool;
}

/// Everything the service layer needs from a backend. The federation outbox trait is
/// ieum-federation's (the sender there drives it); an `Arc<dyn Storage>` coerces to the
/// `Arc<dyn OutboxStore>` the sender takes.
pub trait Storage:
    UserStore
    + RoomStore
    + MetaStore
    + StreamStore
    + OutboxStore
    + e2ee::KeyStore
    + MediaStore
    + BackupStore
    + PushStore
    + appservice::AppserviceStore
{
}
impl<T> Storage for T where
    T: UserStore
        + RoomStore
        + MetaStore
        + StreamStore
        + OutboxStore
        + e2ee::KeyStore
        + MediaStore
        + BackupStore
        + PushStore
        + appservice::AppserviceStore
{
}

impl From<StorageError> for OutboxError {
    fn from(error: StorageError) -> Self {
        OutboxError(error.to_string())
    }
}

/// Which backend to open, and where.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub path: std::path::PathBuf,
    /// Sync the write-ahead log before acknowledging writes (true in production).
    pub sync_writes: bool,
    /// Bytes for the backend's cache of blocks read from disk.
    pub block_cache_bytes: usize,
    /// Bytes for the backend's write buffers, all tables together.
    pub write_buffer_bytes: usize,
}

impl StorageConfig {
    /// A store at `path` with the memory budgets of `[memory]` in the config.
    pub fn new(path: &Path, sync_writes: bool, memory: &crate::config::MemoryConfig) -> Self {
        Self {
            path: path.to_owned(),
            sync_writes,
            block_cache_bytes: memory.block_cache_mb << 20,
            write_buffer_bytes: memory.write_buffer_mb << 20,
        }
    }

    /// Durable writes and the default memory budgets.
    pub fn at(path: &Path) -> Self {
        Self::new(path, true, &crate::config::MemoryConfig::default())
    }
}

/// Opens the configured backend. Only this function (called from `server.rs`) picks one.
pub fn open(config: &StorageConfig) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(embedded::RocksStorage::open(config)?))
}

/// Convenience for tests: a RocksDB store in a directory.
pub fn open_at(path: &Path) -> Result<Arc<dyn Storage>> {
    open(&StorageConfig::at(path))
}
