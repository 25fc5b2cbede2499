//! `KeyStore` on RocksDB: device, one-time, fallback and cross-signing keys, the device-list
//! change stream, to-device inboxes and remote device lists (layouts in schema.rs).
//!
//! Check-then-write operations (claiming a key, a change's `prev`, a transaction id) run
//! under `create_lock`, so two claims never hand out the same one-time key.

use std::collections::BTreeMap;

use ::rocksdb::{Direction as RDirection, IteratorMode, WriteBatch};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    KIND_DEVICE_LIST, KIND_TO_DEVICE, RocksStorage, backend, decode, decode_str, encode,
    keys::{SEP, join, prefix, trailing_u64, u64_key, with_joined, with_u64},
    parse_id, schema as cf,
    stamps::Stream,
};
use crate::storage::{
    Result, StorageError, StreamPos, StreamStore,
    e2ee::{CrossSigningKeys, DeviceListChange, KeyStore, KeyUpload, RemoteDeviceList, ToDeviceMessage},
};

/// A device's fallback key of one algorithm.
#[derive(Serialize, Deserialize)]
struct FallbackKey {
    key_id: String,
    key: Box<RawValue>,
    used: bool,
}

fn raw(table: &'static str, bytes: &[u8]) -> Result<Box<RawValue>> {
    RawValue::from_string(decode_str(table, bytes)?).map_err(|e| StorageError::Corrupt { table, detail: e.to_string() })
}

impl RocksStorage {
    /// The user's previous change; call under `create_lock`.
    fn previous_change(&self, user_id: &UserId) -> Result<Option<StreamPos>> {
        Ok(self.get(cf::DEVICE_LIST_LAST, user_id.as_bytes())?.and_then(|v| trailing_u64(&v)))
    }

    /// Adds a device-list change of `user_id` at `pos` to `batch`.
    fn put_change(&self, batch: &mut WriteBatch, user_id: &UserId, pos: StreamPos) {
        self.stamps.raise(Stream::DeviceLists, b"", pos);
        batch.put_cf(self.cf(cf::DEVICE_LIST_STREAM), u64_key(pos), user_id.as_bytes());
        batch.put_cf(self.cf(cf::DEVICE_LIST_LAST), user_id.as_bytes(), u64_key(pos));
    }

    /// Writes `build` plus a device-list change of `user_id` at a new position; call under
    /// `create_lock`.
    fn write_change(&self, user_id: &UserId, build: impl FnOnce(&mut WriteBatch)) -> Result<DeviceListChange> {
        let prev = self.previous_change(user_id)?;
        let pos = self.write_at_new_pos(KIND_DEVICE_LIST, |batch, pos| {
            build(batch);
            self.put_change(batch, user_id, pos);
        })?;
        Ok(DeviceListChange { pos, prev })
    }

    /// Deletes every key, inbox message and pusher of a device into `batch` (device deletion).
    pub(super) fn delete_device_material(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<()> {
        self.delete_device_pushers_into(batch, user_id, device_id)?;
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        batch.delete_cf(self.cf(cf::DEVICE_KEYS), &device);
        for table in [cf::ONE_TIME_KEYS, cf::FALLBACK_KEYS, cf::TO_DEVICE] {
            for (key, _) in self.scan_prefix(table, &prefix(&device))? {
                batch.delete_cf(self.cf(table), key);
            }
        }
        Ok(())
    }

    /// Records a device deletion (its material deleted in the same batch).
    pub(super) fn delete_device_with_change(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        build: impl FnOnce(&mut WriteBatch),
    ) -> Result<DeviceListChange> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        self.delete_device_material(&mut batch, user_id, device_id)?;
        build(&mut batch);
        let prev = self.previous_change(user_id)?;
        let pos = self.write_prepared_at_new_pos(
            KIND_DEVICE_LIST,
            batch,
            |batch, pos| self.put_change(batch, user_id, pos),
            |_| {
                self.device_keys.written([&*join(&[user_id.as_bytes(), device_id.as_bytes()])]);
                self.pushers_written(&[user_id.as_bytes()]);
            },
        )?;
        Ok(DeviceListChange { pos, prev })
    }

    fn claim_key_inner(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, Box<RawValue>)>> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        let run = prefix(&join(&[&device, algorithm.as_bytes()]));
        let first = self
            .db
            .iterator_cf(self.cf(cf::ONE_TIME_KEYS), IteratorMode::From(&run, RDirection::Forward))
            .next()
            .transpose()
            .map_err(backend)?
            .filter(|(key, _)| key.starts_with(&run));
        if let Some((key, value)) = first {
            let key_id = decode_str(cf::ONE_TIME_KEYS, &key[run.len()..])?;
            let mut batch = WriteBatch::default();
            batch.delete_cf(self.cf(cf::ONE_TIME_KEYS), &key);
            self.write(batch)?;
            return Ok(Some((format!("{algorithm}:{key_id}"), raw(cf::ONE_TIME_KEYS, &value)?)));
        }
        let fallback = join(&[&device, algorithm.as_bytes()]);
        let Some(mut record) = self.get_json::<FallbackKey>(cf::FALLBACK_KEYS, &fallback)? else { return Ok(None) };
        if !record.used {
            record.used = true;
            let mut batch = WriteBatch::default();
            batch.put_cf(self.cf(cf::FALLBACK_KEYS), &fallback, encode(&record));
            self.write(batch)?;
        }
        Ok(Some((record.key_id, record.key)))
    }

    fn upload_keys_inner(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upload: KeyUpload,
    ) -> Result<Option<DeviceListChange>> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut batch = WriteBatch::default();
        for (id, key) in &upload.one_time_keys {
            let Some((algorithm, key_id)) = id.split_once(':') else { continue };
            let otk = join(&[&device, algorithm.as_bytes(), key_id.as_bytes()]);
            if self.get(cf::ONE_TIME_KEYS, &otk)?.is_none() {
                batch.put_cf(self.cf(cf::ONE_TIME_KEYS), otk, key.get().as_bytes());
            }
        }
        for (id, key) in upload.fallback_keys {
            let Some((algorithm, _)) = id.split_once(':') else { continue };
            let record = FallbackKey { key_id: id.clone(), key, used: false };
            batch.put_cf(self.cf(cf::FALLBACK_KEYS), join(&[&device, algorithm.as_bytes()]), encode(&record));
        }
        let changed = match &upload.device_keys {
            Some(keys) => self.get(cf::DEVICE_KEYS, &device)?.as_deref() != Some(keys.get().as_bytes()),
            None => false,
        };
        if !changed {
            self.write(batch)?;
            return Ok(None);
        }
        let keys = upload.device_keys.expect("changed implies present");
        batch.put_cf(self.cf(cf::DEVICE_KEYS), &device, keys.get().as_bytes());
        let prev = self.previous_change(user_id)?;
        let pos =
            self.write_prepared_at_new_pos(KIND_DEVICE_LIST, batch, |b, pos| self.put_change(b, user_id, pos), |_| {})?;
        Ok(Some(DeviceListChange { pos, prev }))
    }

    fn key_summary(&self, user_id: &UserId, device_id: &DeviceId) -> Result<KeySummary> {
        let generation =
            match with_joined(&[user_id.as_bytes(), device_id.as_bytes()], |device| self.device_keys.get(device)) {
                Ok(summary) => return Ok(summary),
                Err(generation) => generation,
            };
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        let run = prefix(&device);
        let mut counts = BTreeMap::new();
        for (key, _) in self.scan_prefix(cf::ONE_TIME_KEYS, &run)? {
            let rest = &key[run.len()..];
            let algorithm = rest.split(|b| *b == SEP).next().unwrap_or(rest);
            *counts.entry(decode_str(cf::ONE_TIME_KEYS, algorithm)?).or_insert(0) += 1;
        }
        let mut types = Vec::new();
        for (key, value) in self.scan_prefix(cf::FALLBACK_KEYS, &run)? {
            let record: FallbackKey = decode(cf::FALLBACK_KEYS, &value)?;
            if !record.used {
                types.push(decode_str(cf::FALLBACK_KEYS, &key[run.len()..])?);
            }
        }
        let summary = (counts, types);
        self.device_keys.store(device, generation, &summary);
        Ok(summary)
    }
}

/// A device's one-time key counts by algorithm and its unused fallback key algorithms.
pub(super) type KeySummary = (BTreeMap<String, u64>, Vec<String>);

impl KeyStore for RocksStorage {
    fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upload: KeyUpload,
    ) -> Result<Option<DeviceListChange>> {
        let uploaded = self.upload_keys_inner(user_id, device_id, upload);
        self.device_keys.written([&*join(&[user_id.as_bytes(), device_id.as_bytes()])]);
        uploaded
    }
    fn device_keys(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Box<RawValue>)>> {
        let user = prefix(user_id.as_bytes());
        self.scan_prefix(cf::DEVICE_KEYS, &user)?
            .iter()
            .map(|(key, value)| Ok((parse_id(cf::DEVICE_KEYS, &key[user.len()..])?, raw(cf::DEVICE_KEYS, value)?)))
            .collect()
    }

    fn replace_device_keys(&self, user_id: &UserId, device_id: &DeviceId, keys: &RawValue) -> Result<DeviceListChange> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        self.write_change(user_id, |batch| batch.put_cf(self.cf(cf::DEVICE_KEYS), &device, keys.get().as_bytes()))
    }

    fn one_time_key(&self, user_id: &UserId, device_id: &DeviceId, id: &str) -> Result<Option<Box<RawValue>>> {
        let Some((algorithm, key_id)) = id.split_once(':') else { return Ok(None) };
        let otk = join(&[user_id.as_bytes(), device_id.as_bytes(), algorithm.as_bytes(), key_id.as_bytes()]);
        self.get(cf::ONE_TIME_KEYS, &otk)?.map(|v| raw(cf::ONE_TIME_KEYS, &v)).transpose()
    }

    fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<BTreeMap<String, u64>> {
        Ok(self.key_summary(user_id, device_id)?.0)
    }

    fn key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
        self.key_summary(user_id, device_id)
    }

    fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, Box<RawValue>)>> {
        let claimed = self.claim_key_inner(user_id, device_id, algorithm);
        self.device_keys.written([&*join(&[user_id.as_bytes(), device_id.as_bytes()])]);
        claimed
    }
    fn cross_signing_keys(&self, user_id: &UserId) -> Result<CrossSigningKeys> {
        Ok(self.get_json(cf::CROSS_SIGNING_KEYS, user_id.as_bytes())?.unwrap_or_default())
    }

    fn put_cross_signing_keys(&self, user_id: &UserId, keys: CrossSigningKeys) -> Result<DeviceListChange> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut stored = self.cross_signing_keys(user_id)?;
        if keys.master.is_some() {
            stored.master = keys.master;
        }
        if keys.self_signing.is_some() {
            stored.self_signing = keys.self_signing;
        }
        if keys.user_signing.is_some() {
            stored.user_signing = keys.user_signing;
        }
        self.write_change(user_id, |batch| {
            batch.put_cf(self.cf(cf::CROSS_SIGNING_KEYS), user_id.as_bytes(), encode(&stored))
        })
    }

    fn put_user_signature(&self, signer: &UserId, target: &UserId, signatures: &RawValue) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::USER_SIGNATURES),
            join(&[signer.as_bytes(), target.as_bytes()]),
            signatures.get().as_bytes(),
        );
        self.write(batch)
    }

    fn user_signature(&self, signer: &UserId, target: &UserId) -> Result<Option<Box<RawValue>>> {
        self.get(cf::USER_SIGNATURES, &join(&[signer.as_bytes(), target.as_bytes()]))?
            .map(|v| raw(cf::USER_SIGNATURES, &v))
            .transpose()
    }

    fn record_device_list_change(&self, user_id: &UserId) -> Result<DeviceListChange> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.write_change(user_id, |_| {})
    }

    fn device_list_changes(&self, after: StreamPos, upto: StreamPos) -> Result<Vec<OwnedUserId>> {
        if !self.stamps.changed_after(Stream::DeviceLists, b"", after) {
            return Ok(Vec::new());
        }
        let mut users = std::collections::BTreeSet::new();
        let start = u64_key(after.saturating_add(1));
        for item in
            self.db.iterator_cf(self.cf(cf::DEVICE_LIST_STREAM), IteratorMode::From(&start, RDirection::Forward))
        {
            let (key, value) = item.map_err(backend)?;
            if trailing_u64(&key).is_none_or(|pos| pos > upto) {
                break;
            }
            users.insert(parse_id::<OwnedUserId>(cf::DEVICE_LIST_STREAM, &value)?);
        }
        Ok(users.into_iter().collect())
    }

    fn last_device_list_change(&self, user_id: &UserId) -> Result<Option<StreamPos>> {
        self.previous_change(user_id)
    }

    fn queue_to_device(
        &self,
        txn: Option<(&UserId, &str, &str)>,
        messages: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
    ) -> Result<Option<StreamPos>> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn_key = txn.map(|(user, session, id)| join(&[user.as_bytes(), session.as_bytes(), id.as_bytes()]));
        if let Some(key) = &txn_key
            && self.get(cf::TO_DEVICE_TXNS, key)?.is_some()
        {
            return Ok(None);
        }
        let pos = self.write_at_new_pos(KIND_TO_DEVICE, |batch, pos| {
            if let Some(key) = &txn_key {
                batch.put_cf(self.cf(cf::TO_DEVICE_TXNS), key, []);
            }
            for (user_id, device_id, event) in &messages {
                let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
                self.stamps.raise(Stream::Inbox, &device, pos);
                let key = with_u64(&device, pos);
                batch.put_cf(self.cf(cf::TO_DEVICE), key, event.get().as_bytes());
            }
            // Recipients by position, for appservices that receive their users' messages.
            let recipients: Vec<_> = messages.iter().map(|(user, device, _)| (user, device)).collect();
            batch.put_cf(self.cf(cf::STREAM), u64_key(pos), super::appservice::stream_to_device_value(&recipients));
        })?;
        Ok(Some(pos))
    }

    fn to_device_txn_seen(&self, user_id: &UserId, session_id: &str, txn: &str) -> Result<bool> {
        Ok(self.get(cf::TO_DEVICE_TXNS, &join(&[user_id.as_bytes(), session_id.as_bytes(), txn.as_bytes()]))?.is_some())
    }

    fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>> {
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        if !self.stamps.changed_after(Stream::Inbox, &device, after) {
            return Ok(Vec::new());
        }
        let run = prefix(&device);
        let start = with_u64(&device, after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::TO_DEVICE), IteratorMode::From(&start, RDirection::Forward)) {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&run) || key.len() != run.len() + 8 || out.len() >= limit {
                break;
            }
            let pos = trailing_u64(&key).expect("8 bytes");
            if pos > upto {
                break;
            }
            out.push((pos, raw(cf::TO_DEVICE, &value)?));
        }
        Ok(out)
    }

    fn delete_to_device(&self, user_id: &UserId, device_id: &DeviceId, upto: StreamPos) -> Result<()> {
        let device = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        // A token from the future acknowledges no more than what exists.
        let upto = upto.min(self.current_pos());
        if !self.stamps.inbox_holds_up_to(&device, upto) {
            return Ok(());
        }
        let run = prefix(&device);
        let mut batch = WriteBatch::default();
        let iter = self.db.iterator_cf_opt(
            self.cf(cf::TO_DEVICE),
            super::bounded(&run),
            IteratorMode::From(&run, RDirection::Forward),
        );
        for item in iter {
            let (key, _) = item.map_err(backend)?;
            if !key.starts_with(&run) || trailing_u64(&key).is_none_or(|pos| pos > upto) {
                break;
            }
            batch.delete_cf(self.cf(cf::TO_DEVICE), key);
        }
        if !batch.is_empty() {
            self.write(batch)?;
        }
        self.stamps.inbox_trimmed(&device, upto);
        Ok(())
    }

    fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        self.get_json(cf::REMOTE_DEVICES, user_id.as_bytes())
    }

    fn put_remote_device_list(&self, user_id: &UserId, list: Option<&RemoteDeviceList>) -> Result<DeviceListChange> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.write_change(user_id, |batch| match list {
            Some(list) => batch.put_cf(self.cf(cf::REMOTE_DEVICES), user_id.as_bytes(), encode(list)),
            None => batch.delete_cf(self.cf(cf::REMOTE_DEVICES), user_id.as_bytes()),
        })
    }
}
