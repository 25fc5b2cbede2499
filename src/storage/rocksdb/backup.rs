//! Server-side key backups on RocksDB: versions (BACKUP_VERSIONS) and their session keys
//! (BACKUP_KEYS); see schema.rs for the key layouts.
//!
//! Uploads read the stored keys, apply the replacement rule and write, so every method that
//! reads before it writes holds the user's stripe of `BackupLocks` until its batch is durable.
//! A version's count and etag are kept in its record, updated in the same batch as its keys.

use std::{
    hash::{Hash, Hasher},
    sync::{Mutex, MutexGuard},
};

use ::rocksdb::{Direction as RDirection, IteratorMode, WriteBatch};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::value::RawValue;

use super::{RocksStorage, backend, decode, encode, keys, parse_id, schema as cf};
use crate::storage::{
    BackupDelete, BackupKeyRecord, BackupKeys, BackupKeysState, BackupScope, BackupStore, BackupUpdate, BackupUpload,
    BackupVersionRecord, Result, StorageError,
};

const STRIPES: usize = 16;

/// Serialises read-then-write backup operations per user (striped: users share a few locks).
pub(super) struct BackupLocks([Mutex<()>; STRIPES]);

impl Default for BackupLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(())))
    }
}

impl BackupLocks {
    fn lock(&self, user_id: &UserId) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user_id.hash(&mut hasher);
        self.0[hasher.finish() as usize % STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `user_id 0xFF version`: the BACKUP_VERSIONS key, and the prefix of the version's BACKUP_KEYS.
fn version_key(user_id: &UserId, version: u64) -> Vec<u8> {
    keys::with_u64(user_id.as_bytes(), version)
}

/// `user_id 0xFF version room_id 0xFF`: the prefix of a room's keys in a version.
fn room_prefix(user_id: &UserId, version: u64, room_id: &RoomId) -> Vec<u8> {
    let mut key = version_key(user_id, version);
    key.extend_from_slice(room_id.as_bytes());
    key.push(keys::SEP);
    key
}

fn session_key(user_id: &UserId, version: u64, room_id: &RoomId, session_id: &str) -> Vec<u8> {
    let mut key = room_prefix(user_id, version, room_id);
    key.extend_from_slice(session_id.as_bytes());
    key
}

/// Splits the tail of a BACKUP_KEYS key (after the version prefix) into room and session.
fn split_tail(tail: &[u8]) -> Result<(OwnedRoomId, String)> {
    let corrupt = || StorageError::Corrupt { table: cf::BACKUP_KEYS, detail: "malformed key".into() };
    let at = tail.iter().position(|&b| b == keys::SEP).ok_or_else(corrupt)?;
    let room_id = parse_id(cf::BACKUP_KEYS, &tail[..at])?;
    let session = String::from_utf8(tail[at + 1..].to_vec()).map_err(|_| corrupt())?;
    Ok((room_id, session))
}

impl RocksStorage {
    fn version_record(&self, user_id: &UserId, version: u64) -> Result<Option<BackupVersionRecord>> {
        self.get_json(cf::BACKUP_VERSIONS, &version_key(user_id, version))
    }

    /// Every version record of a user (tombstones included), newest first.
    fn version_records(&self, user_id: &UserId) -> Result<Vec<BackupVersionRecord>> {
        let mut out: Vec<BackupVersionRecord> = self
            .scan_prefix(cf::BACKUP_VERSIONS, &keys::prefix(user_id.as_bytes()))?
            .iter()
            .map(|(_, value)| decode(cf::BACKUP_VERSIONS, value))
            .collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// The current version: the newest live one. Walks back from the newest key, so it passes
    /// only the tombstones newer than the current version.
    fn current_version(&self, user_id: &UserId) -> Result<Option<BackupVersionRecord>> {
        let user_prefix = keys::prefix(user_id.as_bytes());
        let mut iter = self.db.raw_iterator_cf(self.cf(cf::BACKUP_VERSIONS));
        iter.seek_for_prev(version_key(user_id, u64::MAX));
        while let Some((key, value)) = iter.item() {
            if !key.starts_with(&user_prefix) {
                break;
            }
            let record: BackupVersionRecord = decode(cf::BACKUP_VERSIONS, value)?;
            if !record.deleted {
                return Ok(Some(record));
            }
            iter.prev();
        }
        iter.status().map_err(backend)?;
        Ok(None)
    }

    /// The highest version number the user ever had (0 if none).
    fn last_version_number(&self, user_id: &UserId) -> Result<u64> {
        let user_prefix = keys::prefix(user_id.as_bytes());
        let mut iter = self.db.raw_iterator_cf(self.cf(cf::BACKUP_VERSIONS));
        iter.seek_for_prev(version_key(user_id, u64::MAX));
        let last = match iter.key() {
            Some(key) if key.starts_with(&user_prefix) => keys::trailing_u64(key)
                .ok_or(StorageError::Corrupt { table: cf::BACKUP_VERSIONS, detail: "short key".into() })?,
            _ => 0,
        };
        iter.status().map_err(backend)?;
        Ok(last)
    }

    /// (key, room, session, record) of a version's keys in `scope`.
    fn scope_keys(
        &self,
        user_id: &UserId,
        version: u64,
        scope: BackupScope<'_>,
    ) -> Result<Vec<(Vec<u8>, OwnedRoomId, String, BackupKeyRecord)>> {
        let base_len = version_key(user_id, version).len();
        let prefix = match scope {
            BackupScope::All => version_key(user_id, version),
            BackupScope::Room(room_id) => room_prefix(user_id, version, room_id),
            BackupScope::Session(room_id, session_id) => {
                let key = session_key(user_id, version, room_id, session_id);
                return Ok(match self.get(cf::BACKUP_KEYS, &key)? {
                    Some(value) => {
                        let record = decode(cf::BACKUP_KEYS, &value)?;
                        vec![(key, room_id.to_owned(), session_id.to_owned(), record)]
                    }
                    None => Vec::new(),
                });
            }
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::BACKUP_KEYS), IteratorMode::From(&prefix, RDirection::Forward)) {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (room_id, session_id) = split_tail(&key[base_len..])?;
            out.push((key.to_vec(), room_id, session_id, decode(cf::BACKUP_KEYS, &value)?));
        }
        Ok(out)
    }

    /// Adds to `batch` the deletion of every key of a version and its tombstone.
    fn bury_version(&self, batch: &mut WriteBatch, user_id: &UserId, mut record: BackupVersionRecord) {
        let version = record.version;
        batch.delete_range_cf(
            self.cf(cf::BACKUP_KEYS),
            version_key(user_id, version),
            version_key(user_id, version.saturating_add(1)),
        );
        record.deleted = true;
        record.count = 0;
        record.auth_data = RawValue::from_string("{}".into()).expect("valid JSON");
        batch.put_cf(self.cf(cf::BACKUP_VERSIONS), version_key(user_id, version), encode(&record));
    }
}

impl BackupStore for RocksStorage {
    fn create_backup_version(&self, user_id: &UserId, algorithm: &str, auth_data: &RawValue) -> Result<u64> {
        let _guard = self.backup_locks.lock(user_id);
        let version = self.last_version_number(user_id)? + 1;
        let record = BackupVersionRecord {
            version,
            algorithm: algorithm.to_owned(),
            auth_data: auth_data.to_owned(),
            count: 0,
            etag: 0,
            deleted: false,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::BACKUP_VERSIONS), version_key(user_id, version), encode(&record));
        self.write(batch)?;
        Ok(version)
    }

    fn backup_version(&self, user_id: &UserId, version: Option<u64>) -> Result<Option<BackupVersionRecord>> {
        match version {
            None => self.current_version(user_id),
            Some(version) => Ok(self.version_record(user_id, version)?.filter(|record| !record.deleted)),
        }
    }

    fn update_backup_version(
        &self,
        user_id: &UserId,
        version: u64,
        algorithm: &str,
        auth_data: &RawValue,
    ) -> Result<BackupUpdate> {
        let _guard = self.backup_locks.lock(user_id);
        let Some(mut record) = self.version_record(user_id, version)?.filter(|record| !record.deleted) else {
            return Ok(BackupUpdate::NoSuchVersion);
        };
        if record.algorithm != algorithm {
            return Ok(BackupUpdate::AlgorithmMismatch);
        }
        record.auth_data = auth_data.to_owned();
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::BACKUP_VERSIONS), version_key(user_id, version), encode(&record));
        self.write(batch)?;
        Ok(BackupUpdate::Updated)
    }

    fn delete_backup_version(&self, user_id: &UserId, version: u64) -> Result<BackupDelete> {
        let _guard = self.backup_locks.lock(user_id);
        let Some(record) = self.version_record(user_id, version)? else {
            return Ok(BackupDelete::NoSuchVersion);
        };
        if record.deleted {
            return Ok(BackupDelete::AlreadyDeleted);
        }
        let mut batch = WriteBatch::default();
        self.bury_version(&mut batch, user_id, record);
        self.write(batch)?;
        Ok(BackupDelete::Deleted)
    }

    fn put_backup_keys(&self, user_id: &UserId, version: u64, keys: BackupKeys) -> Result<BackupUpload> {
        let _guard = self.backup_locks.lock(user_id);
        let Some(mut current) = self.current_version(user_id)? else {
            return Ok(BackupUpload::NoSuchVersion);
        };
        if current.version != version {
            return Ok(match self.backup_version(user_id, Some(version))? {
                Some(_) => BackupUpload::NotCurrent { current: current.version },
                None => BackupUpload::NoSuchVersion,
            });
        }
        let handle = self.cf(cf::BACKUP_KEYS);
        let names: Vec<Vec<u8>> =
            keys.keys().map(|(room_id, session_id)| session_key(user_id, version, room_id, session_id)).collect();
        let stored = self.db.multi_get_cf(names.iter().map(|name| (handle, name.as_slice())));
        let mut batch = WriteBatch::default();
        let mut changed = false;
        for ((name, record), stored) in names.into_iter().zip(keys.into_values()).zip(stored) {
            match stored.map_err(backend)? {
                Some(bytes) if !record.replaces(&decode(cf::BACKUP_KEYS, &bytes)?) => continue,
                Some(_) => {}
                None => current.count += 1,
            }
            batch.put_cf(handle, name, encode(&record));
            changed = true;
        }
        if changed {
            current.etag += 1;
            batch.put_cf(self.cf(cf::BACKUP_VERSIONS), version_key(user_id, version), encode(&current));
            self.write(batch)?;
        }
        Ok(BackupUpload::Stored(BackupKeysState { count: current.count, etag: current.etag }))
    }

    fn backup_keys(
        &self,
        user_id: &UserId,
        version: u64,
        scope: BackupScope<'_>,
    ) -> Result<Option<Vec<(OwnedRoomId, String, BackupKeyRecord)>>> {
        if self.backup_version(user_id, Some(version))?.is_none() {
            return Ok(None);
        }
        let found = self.scope_keys(user_id, version, scope)?;
        Ok(Some(found.into_iter().map(|(_, room_id, session_id, record)| (room_id, session_id, record)).collect()))
    }

    fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: u64,
        scope: BackupScope<'_>,
    ) -> Result<Option<BackupKeysState>> {
        let _guard = self.backup_locks.lock(user_id);
        let Some(mut record) = self.backup_version(user_id, Some(version))? else {
            return Ok(None);
        };
        let doomed = self.scope_keys(user_id, version, scope)?;
        let mut batch = WriteBatch::default();
        for (key, ..) in &doomed {
            batch.delete_cf(self.cf(cf::BACKUP_KEYS), key);
        }
        record.count = record.count.saturating_sub(doomed.len() as u64);
        record.etag += 1;
        batch.put_cf(self.cf(cf::BACKUP_VERSIONS), version_key(user_id, version), encode(&record));
        self.write(batch)?;
        Ok(Some(BackupKeysState { count: record.count, etag: record.etag }))
    }

    fn delete_all_backups(&self, user_id: &UserId) -> Result<()> {
        let _guard = self.backup_locks.lock(user_id);
        let mut batch = WriteBatch::default();
        for record in self.version_records(user_id)? {
            if !record.deleted {
                self.bury_version(&mut batch, user_id, record);
            }
        }
        self.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_nests_sessions_in_rooms_in_versions() {
        let user = ruma::user_id!("@a:x");
        let room = ruma::room_id!("!r:x");
        let key = session_key(user, 7, room, "s1");
        assert!(key.starts_with(&room_prefix(user, 7, room)));
        assert!(key.starts_with(&version_key(user, 7)));
        assert!(key < version_key(user, 8));
        let base = version_key(user, 7).len();
        assert_eq!(split_tail(&key[base..]).unwrap(), (room.to_owned(), "s1".to_owned()));
        // Another room whose id extends this one's does not fall under its prefix.
        let longer = session_key(user, 7, ruma::room_id!("!r:xy"), "s1");
        assert!(!longer.starts_with(&room_prefix(user, 7, room)));
    }
}
