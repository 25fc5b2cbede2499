//! Storage of end-to-end encryption material: device keys, one-time and fallback keys,
//! cross-signing keys and signatures, the device-list change stream, to-device inboxes and
//! the cache of remote users' device lists.
//!
//! The server never sees a private key: everything here is public keys and signatures as
//! clients uploaded them (JSON kept verbatim), and to-device messages (usually Olm-encrypted).

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Result, StreamPos};

/// A change of a user's device list (or cross-signing keys), recorded on the stream. `pos`
/// doubles as the `stream_id` of the federation `m.device_list_update` EDU, `prev` as its
/// `prev_id` (the user's previous change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceListChange {
    pub pos: StreamPos,
    pub prev: Option<StreamPos>,
}

/// What one `/keys/upload` stores for a device.
#[derive(Debug, Default)]
pub struct KeyUpload {
    /// The device's identity keys (replacing earlier ones).
    pub device_keys: Option<Box<RawValue>>,
    /// `algorithm:key_id` -> key. A key id already stored is left as it is (the service
    /// refuses an upload that gives one a different key before storing anything).
    pub one_time_keys: Vec<(String, Box<RawValue>)>,
    /// `algorithm:key_id` -> key. Replaces the device's fallback key of that algorithm.
    pub fallback_keys: Vec<(String, Box<RawValue>)>,
}

/// A user's cross-signing public keys (each `CrossSigningKey` JSON as uploaded and signed).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrossSigningKeys {
    pub master: Option<Box<RawValue>>,
    pub self_signing: Option<Box<RawValue>>,
    pub user_signing: Option<Box<RawValue>>,
}

/// One device of a remote user, as its server told us.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteDevice {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub keys: Box<RawValue>,
}

/// Our copy of a remote user's device list, kept current by `m.device_list_update` EDUs
/// (or a resync through `/user/devices` when an update does not follow the one we have).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteDeviceList {
    pub stream_id: u64,
    pub devices: Vec<RemoteDevice>,
    pub master_key: Option<Box<RawValue>>,
    pub self_signing_key: Option<Box<RawValue>>,
    /// An update arrived that we could not apply: the copy must be fetched again.
    #[serde(default)]
    pub stale: bool,
    /// The stream position taken just before the copy was fetched. Their server sends us
    /// their changes only while one of our users shares a room with them, so the copy is
    /// current only while a room has been shared without a break since then (copies from
    /// before this field read 0 and are fetched again).
    #[serde(default)]
    pub fetched_at: StreamPos,
}

/// A message waiting in a device's to-device inbox: (stream position, event JSON
/// `{sender, type, content}`).
pub type ToDeviceMessage = (StreamPos, Box<RawValue>);

pub trait KeyStore: Send + Sync {
    /// Stores uploaded keys in one batch. When the device keys are new or different, the
    /// change is recorded on the stream and returned.
    fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upload: KeyUpload,
    ) -> Result<Option<DeviceListChange>>;
    /// The device keys of every device of a user that uploaded some.
    fn device_keys(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Box<RawValue>)>>;
    /// Replaces a device's stored keys (signatures added) and records the change.
    fn replace_device_keys(&self, user_id: &UserId, device_id: &DeviceId, keys: &RawValue) -> Result<DeviceListChange>;
    /// An unclaimed one-time key of the device by its id (`algorithm:key_id`).
    fn one_time_key(&self, user_id: &UserId, device_id: &DeviceId, id: &str) -> Result<Option<Box<RawValue>>>;
    /// Unclaimed one-time keys per algorithm.
    fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<BTreeMap<String, u64>>;
    /// Unclaimed one-time keys per algorithm, and the algorithms of the device's fallback keys
    /// not yet handed out (every /sync sends both).
    fn key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<(BTreeMap<String, u64>, Vec<String>)>;
    /// Hands out one key of `algorithm` for the device: a one-time key (removed, so it is
    /// never given twice) or, when none is left, the fallback key (marked used, kept).
    /// Returns (`algorithm:key_id`, key).
    fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, Box<RawValue>)>>;

    fn cross_signing_keys(&self, user_id: &UserId) -> Result<CrossSigningKeys>;
    /// Stores the keys that are `Some` (the others stay) and records the change.
    fn put_cross_signing_keys(&self, user_id: &UserId, keys: CrossSigningKeys) -> Result<DeviceListChange>;
    /// A signature by `signer`'s user-signing key on `target`'s master key: the signature
    /// object `{signer: {key_id: sig}}`. Only the signer sees it (the spec).
    fn put_user_signature(&self, signer: &UserId, target: &UserId, signatures: &RawValue) -> Result<()>;
    fn user_signature(&self, signer: &UserId, target: &UserId) -> Result<Option<Box<RawValue>>>;

    /// Records a change of a user's device list that stores nothing else (a device renamed).
    fn record_device_list_change(&self, user_id: &UserId) -> Result<DeviceListChange>;
    /// Users whose device lists changed at positions in `(after, upto]`.
    fn device_list_changes(&self, after: StreamPos, upto: StreamPos) -> Result<Vec<OwnedUserId>>;
    /// The position of a user's latest device-list change.
    fn last_device_list_change(&self, user_id: &UserId) -> Result<Option<StreamPos>>;

    /// Puts messages into device inboxes at one new stream position. With `txn` (sender,
    /// client session, transaction id), a transaction already seen stores nothing and
    /// returns None.
    fn queue_to_device(
        &self,
        txn: Option<(&UserId, &str, &str)>,
        messages: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
    ) -> Result<Option<StreamPos>>;
    /// Whether a `/sendToDevice` transaction (sender, client session, transaction key) was done.
    fn to_device_txn_seen(&self, user_id: &UserId, session_id: &str, txn: &str) -> Result<bool>;
    /// A device's messages at positions in `(after, upto]`, oldest first, at most `limit`.
    fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>>;
    /// Deletes a device's messages at positions up to `upto` (the client has them).
    fn delete_to_device(&self, user_id: &UserId, device_id: &DeviceId, upto: StreamPos) -> Result<()>;

    fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>>;
    /// Stores (or, with None, forgets) our copy of a remote user's devices and records a
    /// change of their device list, so local users sharing a room see it in `/sync`.
    fn put_remote_device_list(&self, user_id: &UserId, list: Option<&RemoteDeviceList>) -> Result<DeviceListChange>;
}
