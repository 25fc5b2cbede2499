//! Server-side key backups: backup versions and the encrypted room keys clients store in them.
//!
//! The server never reads the keys: it checks their shape, keeps the best key per session by
//! the spec's rule (`BackupKeyRecord::replaces`), and counts them. Where the spec is silent we
//! follow Synapse: versions are decimal numbers that only grow, etags are per-version counters,
//! any algorithm name is accepted, a non-numeric version is simply not found.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId, UInt, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData},
    api::error::{ErrorKind, WrongRoomKeysVersionErrorData},
    exports::http::StatusCode,
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Core;
use crate::{
    error::{Error, Result},
    storage::{
        BackupDelete, BackupKeyRecord, BackupKeys, BackupKeysState, BackupScope, BackupUpdate, BackupUpload,
        BackupVersionRecord,
    },
};

/// Most session keys one upload may carry (clients send a few hundred at a time; the body
/// limit caps real requests near this anyway).
pub const MAX_SESSIONS_PER_REQUEST: usize = 5000;
/// Longest session id accepted (megolm session ids are 43 characters).
pub const MAX_SESSION_ID_BYTES: usize = 255;

/// A backup version as `GET /room_keys/version` answers it.
pub struct VersionInfo {
    pub version: String,
    /// `{"algorithm": ..., "auth_data": ...}`.
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: UInt,
    pub etag: String,
}

/// The `{count, etag}` of a version after a write.
pub struct KeysState {
    pub count: UInt,
    pub etag: String,
}

impl From<BackupKeysState> for KeysState {
    fn from(state: BackupKeysState) -> Self {
        Self { count: UInt::new_saturating(state.count), etag: state.etag.to_string() }
    }
}

/// Keys by room, then session.
pub type RoomKeys = BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>;

/// The body of version create/update, read leniently about extra fields.
#[derive(Deserialize)]
struct VersionBody {
    algorithm: String,
    auth_data: Box<RawValue>,
}

/// A `KeyBackupData` as uploaded: the fields the replacement rule reads are typed, the
/// encrypted part stays as sent.
#[derive(Deserialize, Serialize)]
struct KeyBody {
    first_message_index: UInt,
    forwarded_count: UInt,
    is_verified: bool,
    session_data: Box<RawValue>,
}

/// Versions are decimal numbers; anything else names no version (Synapse: 404).
fn parse_version(version: &str) -> Option<u64> {
    if version.is_empty() || version.len() > 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version.")
}

fn wrong_version(current: u64) -> Error {
    Error::WithStatus {
        kind: ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(current.to_string())),
        message: "The backup version is not the current one.".into(),
        status: StatusCode::FORBIDDEN,
    }
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// Reads a version create/update body: `algorithm` a non-empty string, `auth_data` an object.
fn version_body(body: &Raw<BackupAlgorithm>) -> Result<VersionBody> {
    let parsed: VersionBody = serde_json::from_str(body.json().get())
        .map_err(|e| Error::bad_json(format!("A backup version needs `algorithm` and `auth_data`: {e}")))?;
    if parsed.algorithm.is_empty() {
        return Err(Error::bad_json("`algorithm` must not be empty."));
    }
    if !is_object(&parsed.auth_data) {
        return Err(Error::bad_json("`auth_data` must be an object."));
    }
    Ok(parsed)
}

/// Checks one uploaded key and turns it into the stored record.
fn key_record(room_id: &RoomId, session_id: &str, key: &Raw<KeyBackupData>) -> Result<BackupKeyRecord> {
    if session_id.len() > MAX_SESSION_ID_BYTES {
        return Err(Error::invalid_param(format!("Session ids are at most {MAX_SESSION_ID_BYTES} bytes.")));
    }
    let body: KeyBody = serde_json::from_str(key.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid key data for session {session_id} in {room_id}: {e}")))?;
    if !is_object(&body.session_data) {
        return Err(Error::bad_json(format!("`session_data` of session {session_id} in {room_id} must be an object.")));
    }
    Ok(BackupKeyRecord {
        first_message_index: body.first_message_index.into(),
        forwarded_count: body.forwarded_count.into(),
        is_verified: body.is_verified,
        session_data: body.session_data,
    })
}

/// A stored key as the spec's `KeyBackupData` (only its four fields, as Synapse answers).
fn key_json(record: BackupKeyRecord) -> Result<Raw<KeyBackupData>> {
    let body = KeyBody {
        first_message_index: UInt::new_saturating(record.first_message_index),
        forwarded_count: UInt::new_saturating(record.forwarded_count),
        is_verified: record.is_verified,
        session_data: record.session_data,
    };
    serde_json::value::to_raw_value(&body).map(Raw::from_json).map_err(|e| Error::internal(e.to_string()))
}

fn version_info(record: BackupVersionRecord) -> Result<VersionInfo> {
    #[derive(Serialize)]
    struct AlgorithmWithData<'a> {
        algorithm: &'a str,
        auth_data: &'a RawValue,
    }
    let algorithm = serde_json::value::to_raw_value(&AlgorithmWithData {
        algorithm: &record.algorithm,
        auth_data: &record.auth_data,
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    Ok(VersionInfo {
        version: record.version.to_string(),
        algorithm: Raw::from_json(algorithm),
        count: UInt::new_saturating(record.count),
        etag: record.etag.to_string(),
    })
}

pub struct KeyBackup {
    core: Arc<Core>,
}

impl KeyBackup {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub async fn create_version(&self, user_id: &UserId, body: &Raw<BackupAlgorithm>) -> Result<String> {
        let body = version_body(body)?;
        let user_id = user_id.to_owned();
        let version = self
            .core
            .blocking(move |db| Ok(db.create_backup_version(&user_id, &body.algorithm, &body.auth_data)?))
            .await?;
        Ok(version.to_string())
    }

    /// `GET /room_keys/version[/{version}]` (None: the current version).
    pub fn version(&self, user_id: &UserId, version: Option<&str>) -> Result<VersionInfo> {
        let number = match version {
            Some(version) => Some(parse_version(version).ok_or_else(unknown_version)?),
            None => None,
        };
        match self.core.db.backup_version(user_id, number)? {
            Some(record) => version_info(record),
            None if version.is_none() => Err(Error::not_found("No current backup version.")),
            None => Err(unknown_version()),
        }
    }

    /// `PUT /room_keys/version/{version}`: replaces the auth data. The algorithm must stay the
    /// same, and a `version` in the body must be the path's (checked first, as Synapse does).
    pub async fn update_version(&self, user_id: &UserId, version: &str, body: &Raw<BackupAlgorithm>) -> Result<()> {
        #[derive(Deserialize)]
        struct BodyVersion {
            version: Option<serde_json::Value>,
        }
        if let Ok(BodyVersion { version: Some(given) }) = serde_json::from_str(body.json().get())
            && given.as_str() != Some(version)
        {
            return Err(Error::invalid_param("The version in the body does not match the path."));
        }
        let body = version_body(body)?;
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let user_id = user_id.to_owned();
        let outcome = self
            .core
            .blocking(move |db| Ok(db.update_backup_version(&user_id, number, &body.algorithm, &body.auth_data)?))
            .await?;
        match outcome {
            BackupUpdate::Updated => Ok(()),
            BackupUpdate::NoSuchVersion => Err(unknown_version()),
            BackupUpdate::AlgorithmMismatch => {
                Err(Error::invalid_param("The algorithm does not match the backup's algorithm."))
            }
        }
    }

    /// `DELETE /room_keys/version/{version}`: the version and its keys. Deleting a deleted
    /// version succeeds again (the spec says so); one never created is not found.
    pub async fn delete_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let user_id = user_id.to_owned();
        match self.core.blocking(move |db| Ok(db.delete_backup_version(&user_id, number)?)).await? {
            BackupDelete::Deleted | BackupDelete::AlreadyDeleted => Ok(()),
            BackupDelete::NoSuchVersion => Err(unknown_version()),
        }
    }

    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: merges keys into the current version.
    pub async fn put_keys(&self, user_id: &UserId, version: &str, rooms: RoomKeys) -> Result<KeysState> {
        let total: usize = rooms.values().map(BTreeMap::len).sum();
        if total > MAX_SESSIONS_PER_REQUEST {
            return Err(Error::too_large(format!(
                "At most {MAX_SESSIONS_PER_REQUEST} session keys per request; send them in batches."
            )));
        }
        let mut keys = BackupKeys::new();
        for (room_id, sessions) in rooms {
            for (session_id, key) in sessions {
                let record = key_record(&room_id, &session_id, &key)?;
                keys.insert((room_id.clone(), session_id), record);
            }
        }
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let user_id = user_id.to_owned();
        match self.core.blocking(move |db| Ok(db.put_backup_keys(&user_id, number, keys)?)).await? {
            BackupUpload::Stored(state) => Ok(state.into()),
            BackupUpload::NoSuchVersion => Err(unknown_version()),
            BackupUpload::NotCurrent { current } => Err(wrong_version(current)),
        }
    }

    /// `GET /room_keys/keys[/{roomId}]`: the keys of a version (a room without keys: empty).
    pub fn keys(&self, user_id: &UserId, version: &str, room_id: Option<&RoomId>) -> Result<RoomKeys> {
        let scope = match room_id {
            Some(room_id) => BackupScope::Room(room_id),
            None => BackupScope::All,
        };
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let found = self.core.db.backup_keys(user_id, number, scope)?.ok_or_else(unknown_version)?;
        let mut rooms = RoomKeys::new();
        for (room_id, session_id, record) in found {
            rooms.entry(room_id).or_default().insert(session_id, key_json(record)?);
        }
        Ok(rooms)
    }

    /// `GET /room_keys/keys/{roomId}/{sessionId}`: one key, M_NOT_FOUND if absent.
    pub fn session_key(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Raw<KeyBackupData>> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let found = self
            .core
            .db
            .backup_keys(user_id, number, BackupScope::Session(room_id, session_id))?
            .ok_or_else(unknown_version)?;
        let (_, _, record) = found.into_iter().next().ok_or_else(|| Error::not_found("No key for that session."))?;
        key_json(record)
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn delete_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<KeysState> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let (user_id, room_id, session_id) =
            (user_id.to_owned(), room_id.map(ToOwned::to_owned), session_id.map(ToOwned::to_owned));
        let state = self
            .core
            .blocking(move |db| {
                let scope = match (&room_id, &session_id) {
                    (Some(room_id), Some(session_id)) => BackupScope::Session(room_id, session_id),
                    (Some(room_id), None) => BackupScope::Room(room_id),
                    _ => BackupScope::All,
                };
                Ok(db.delete_backup_keys(&user_id, number, scope)?)
            })
            .await?;
        state.map(Into::into).ok_or_else(unknown_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_plain_decimal_numbers() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("0042"), Some(42));
        for bad in ["", "+1", "-1", "1.0", " 1", "abc", "99999999999999999999999"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_data_is_checked_and_normalised() {
        let room = ruma::room_id!("!r:x");
        let good = Raw::from_json_string(
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":{"a":"b"},"extra":1}"#
                .into(),
        )
        .unwrap();
        let record = key_record(room, "s", &good).unwrap();
        assert!(record.is_verified);
        assert_eq!(record.session_data.get(), r#"{"a":"b"}"#);
        let served = key_json(record).unwrap();
        assert!(!served.json().get().contains("extra"), "{}", served.json().get());
        for bad in [
            r#"{"first_message_index":-1,"forwarded_count":0,"is_verified":true,"session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":"yes","session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":"x"}"#,
            r#"{"first_message_index":1,"is_verified":true,"session_data":{}}"#,
            r#"[]"#,
        ] {
            let raw = Raw::from_json_string(bad.into()).unwrap();
            assert_eq!(key_record(room, "s", &raw).unwrap_err().kind().errcode().to_string(), "M_BAD_JSON", "{bad}");
        }
    }
}
