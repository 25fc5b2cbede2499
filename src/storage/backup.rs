//! `BackupStore`: server-side key backups (room key backup versions and the session keys in them).
//!
//! Every method is one atomic unit. A version's key count and etag live in its record and are
//! updated in the same batch as its keys, so reading them never scans the keys.

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Result;

/// A backup version: the algorithm, its auth data, and what its keys look like now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    pub version: u64,
    pub algorithm: String,
    /// The `auth_data` object as the client sent it.
    pub auth_data: Box<RawValue>,
    /// Number of session keys stored in this version.
    pub count: u64,
    /// A counter bumped whenever the keys change (sent to clients as a decimal string).
    pub etag: u64,
    /// Deleted versions stay as tombstones so their numbers are never handed out again.
    pub deleted: bool,
}

/// One backed-up session key (the spec's `KeyBackupData`): the metadata the replacement rule
/// reads, and the encrypted part as the client sent it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupKeyRecord {
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    /// The algorithm-dependent encrypted data, a JSON object never read by the server.
    pub session_data: Box<RawValue>,
}

impl BackupKeyRecord {
    /// The spec's rule for a key uploaded for a session that already has one: a verified key
    /// beats an unverified one; with equal `is_verified`, the lower `first_message_index` wins;
    /// with both equal, the lower `forwarded_count` wins. A tie keeps the existing key.
    ///
    /// Synapse differs where the spec is explicit: it lets an unverified key with a lower index
    /// replace a verified one, and compares `forwarded_count` without requiring equal indexes.
    pub fn replaces(&self, existing: &BackupKeyRecord) -> bool {
        if self.is_verified != existing.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != existing.first_message_index {
            return self.first_message_index < existing.first_message_index;
        }
        self.forwarded_count < existing.forwarded_count
    }
}

/// The state of a version's keys after a write: `{count, etag}` of the spec's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupKeysState {
    pub count: u64,
    pub etag: u64,
}

/// What uploading keys into a version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupUpload {
    /// The keys were merged (each one only if it beats the stored key for its session).
    Stored(BackupKeysState),
    /// The user has no backup at all, or not this version (never created or deleted).
    NoSuchVersion,
    /// The version exists but is not the current (latest) one, which is given.
    NotCurrent { current: u64 },
}

/// What updating a version's auth data did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupUpdate {
    Updated,
    NoSuchVersion,
    /// The body names another algorithm than the version's.
    AlgorithmMismatch,
}

/// What deleting a version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupDelete {
    Deleted,
    /// It had been deleted before (the spec answers this with success too).
    AlreadyDeleted,
    /// It was never created.
    NoSuchVersion,
}

/// Session keys by (room, session): one key per session by construction.
pub type BackupKeys = BTreeMap<(OwnedRoomId, String), BackupKeyRecord>;

/// Which keys of a version a read or a delete covers.
#[derive(Clone, Copy, Debug)]
pub enum BackupScope<'a> {
    All,
    Room(&'a RoomId),
    Session(&'a RoomId, &'a str),
}

/// Server-side key backups.
pub trait BackupStore: Send + Sync {
    /// Creates a version numbered one above every version the user ever had (deleted ones
    /// included); it becomes the current one. Returns its number.
    fn create_backup_version(&self, user_id: &UserId, algorithm: &str, auth_data: &RawValue) -> Result<u64>;
    /// A live (not deleted) version; `None` asks for the current one (the latest live version).
    fn backup_version(&self, user_id: &UserId, version: Option<u64>) -> Result<Option<BackupVersionRecord>>;
    /// Replaces a live version's auth data if `algorithm` is the version's.
    fn update_backup_version(
        &self,
        user_id: &UserId,
        version: u64,
        algorithm: &str,
        auth_data: &RawValue,
    ) -> Result<BackupUpdate>;
    /// Deletes a version and every key in it (the version number stays used).
    fn delete_backup_version(&self, user_id: &UserId, version: u64) -> Result<BackupDelete>;
    /// Merges keys into the current version by the spec's replacement rule
    /// (`BackupKeyRecord::replaces`); the etag moves only if a key was written.
    fn put_backup_keys(&self, user_id: &UserId, version: u64, keys: BackupKeys) -> Result<BackupUpload>;
    /// The keys of a live version in `scope`, in (room, session) order; `None` if the version
    /// is not live.
    fn backup_keys(
        &self,
        user_id: &UserId,
        version: u64,
        scope: BackupScope<'_>,
    ) -> Result<Option<Vec<(OwnedRoomId, String, BackupKeyRecord)>>>;
    /// Deletes the keys of a live version in `scope` and moves its etag (as Synapse does, even
    /// when nothing matched); `None` if the version is not live.
    fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: u64,
        scope: BackupScope<'_>,
    ) -> Result<Option<BackupKeysState>>;
    /// Deletes every version of a user and their keys (account deactivation).
    fn delete_all_backups(&self, user_id: &UserId) -> Result<()>;
}
