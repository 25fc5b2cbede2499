//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing
//! keys and signatures (this file), device lists (`devices.rs`) and to-device messages
//! (`to_device.rs`), locally and over federation.
//!
//! The server only stores and relays public keys and signatures; it checks what it can
//! (ids match the uploader, self-signatures and cross-signatures verify) so one user cannot
//! plant keys for another.

mod devices;
mod to_device;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    CanonicalJsonObject, DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId,
    api::{client::keys::upload_signatures::v3::Failure, federation},
    serde::{Base64, Raw},
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
};
use serde_json::{Map, Value, value::RawValue};

use super::{Core, federation::Federation, rooms::Rooms};
use crate::{
    error::{Error, Result},
    storage::e2ee::{CrossSigningKeys, KeyUpload},
};

pub use devices::DeviceListDelta;

/// How long a `/keys/query` or `/keys/claim` waits for other servers by default.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most keys one `/keys/upload` may carry (each kind).
const MAX_KEYS_PER_UPLOAD: usize = 1000;
/// The most unclaimed one-time keys a device may keep per algorithm.
const MAX_ONE_TIME_KEYS: u64 = 10_000;

pub struct E2ee {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    federation: Arc<Federation>,
    /// Serialises read-merge-write of signatures on stored keys.
    signatures: tokio::sync::Mutex<()>,
    /// Remote users whose device lists are being fetched again.
    resyncing: Arc<Mutex<HashSet<OwnedUserId>>>,
}

/// Answer of `/keys/query`, in ruma's shape.
pub type KeysQuery = ruma::api::client::keys::get_keys::v3::Response;
/// Answer of `/keys/claim`: (keys, failures).
pub type KeysClaim = ruma::api::client::keys::claim_keys::v3::Response;

fn bad_json(message: impl Into<String>) -> Error {
    Error::Matrix { kind: ruma::api::error::ErrorKind::BadJson, message: message.into() }
}

fn to_raw(value: &Value) -> Result<Box<RawValue>> {
    super::rooms::raw(value)
}

fn object_of(raw: &RawValue) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_json("Keys must be JSON objects.")),
    }
}

/// Whether `object` carries a valid ed25519 signature by `signer`'s key `key_id` (e.g.
/// `ed25519:DEVICE`) made with the public key `public_key` (unpadded base64).
pub(crate) fn signature_valid(object: &Map<String, Value>, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) =
        object.get("signatures").and_then(|s| s.get(signer)).and_then(|s| s.get(key_id)).and_then(Value::as_str)
    else {
        return false;
    };
    let (Ok(signature), Ok(public_key)) = (
        Base64::<ruma::serde::base64::Standard>::parse(signature),
        Base64::<ruma::serde::base64::Standard>::parse(public_key),
    ) else {
        return false;
    };
    let Ok(canonical) = serde_json::from_value::<CanonicalJsonObject>(Value::Object(object.clone())) else {
        return false;
    };
    let Ok(bytes) = to_canonical_json_string_for_signing(&canonical) else { return false };
    verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        bytes.as_bytes(),
    )
    .is_ok()
}

/// The single public key of a cross-signing key: (`ed25519:PUBKEY`, PUBKEY).
fn cross_signing_public_key(key: &Map<String, Value>) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, public) = keys.iter().next()?;
    Some((id.clone(), public.as_str()?.to_owned()))
}

/// Merges the `signatures` of `from` into `into`.
fn merge_signatures(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    let Some(Value::Object(new)) = from.get("signatures") else { return };
    let existing = into.entry("signatures").or_insert_with(|| Value::Object(Map::new()));
    let Some(existing) = existing.as_object_mut() else { return };
    for (signer, sigs) in new {
        let Some(sigs) = sigs.as_object() else { continue };
        let entry = existing.entry(signer.clone()).or_insert_with(|| Value::Object(Map::new()));
        if let Some(entry) = entry.as_object_mut() {
            for (key_id, sig) in sigs {
                entry.insert(key_id.clone(), sig.clone());
            }
        }
    }
}

/// Signatures in `new` that `old` does not have: (signer, key id).
fn added_signatures(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<(String, String)> {
    let mut added = Vec::new();
    if let Some(Value::Object(sigs)) = new.get("signatures") {
        for (signer, keys) in sigs {
            for (key_id, sig) in keys.as_object().into_iter().flatten() {
                if old.get("signatures").and_then(|s| s.get(signer)).and_then(|s| s.get(key_id)) != Some(sig) {
                    added.push((signer.clone(), key_id.clone()));
                }
            }
        }
    }
    added
}

/// The key material of a device key object without signatures and unsigned data: two
/// uploads with the same material are the same keys.
fn material(object: &Map<String, Value>) -> Map<String, Value> {
    let mut copy = object.clone();
    copy.remove("signatures");
    copy.remove("unsigned");
    copy
}

impl E2ee {
    pub fn new(core: Arc<Core>, rooms: Arc<Rooms>, federation: Arc<Federation>) -> Self {
        Self { core, rooms, federation, signatures: Default::default(), resyncing: Default::default() }
    }

    /// `POST /keys/upload`: stores the device's keys; answers its one-time key counts.
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: Option<&RawValue>,
        one_time_keys: Vec<(String, Box<RawValue>)>,
        fallback_keys: Vec<(String, Box<RawValue>)>,
    ) -> Result<BTreeMap<String, u64>> {
        if one_time_keys.len() > MAX_KEYS_PER_UPLOAD || fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::invalid_param(format!("At most {MAX_KEYS_PER_UPLOAD} keys per upload.")));
        }
        let mut upload = KeyUpload::default();
        if let Some(keys) = device_keys {
            let object = object_of(keys)?;
            check_device_keys(&object, user_id, device_id)?;
            // A re-upload of the same keys keeps the signatures others added since.
            let stored = self.core.db.device_keys(user_id)?.into_iter().find(|(d, _)| d == device_id);
            let mut object = object;
            if let Some((_, stored)) = stored {
                let stored = object_of(&stored)?;
                if material(&stored) == material(&object) {
                    let mut merged = stored;
                    merge_signatures(&mut merged, &object);
                    object = merged;
                }
            }
            upload.device_keys = Some(to_raw(&Value::Object(object))?);
        }
        for (id, key) in one_time_keys.iter().chain(fallback_keys.iter()) {
            check_one_time_key(id, key)?;
        }
        if !one_time_keys.is_empty() {
            let counts = self.core.db.one_time_key_counts(user_id, device_id)?;
            let mut adding: BTreeMap<&str, u64> = BTreeMap::new();
            for (id, key) in &one_time_keys {
                // Every key is checked before anything is stored. The same key again (a
                // retried upload) is accepted and changes nothing; another key under an id
                // still unclaimed is refused, as Synapse does (400 "One time key ... already
                // exists", M_UNKNOWN there as its error names no code). The spec names no
                // code either; M_INVALID_PARAM says what is wrong.
                match self.core.db.one_time_key(user_id, device_id, id)? {
                    Some(stored) if same_one_time_key(&stored, key) => {}
                    Some(_) => {
                        return Err(Error::invalid_param(format!(
                            "One-time key {id} already exists with a different key."
                        )));
                    }
                    None => *adding.entry(id.split_once(':').map_or("", |(a, _)| a)).or_default() += 1,
                }
            }
            if adding.iter().any(|(alg, n)| counts.get(*alg).copied().unwrap_or(0) + n > MAX_ONE_TIME_KEYS) {
                return Err(Error::invalid_param(format!(
                    "A device may keep at most {MAX_ONE_TIME_KEYS} unclaimed one-time keys per algorithm."
                )));
            }
        }
        upload.one_time_keys = one_time_keys;
        upload.fallback_keys = fallback_keys;
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        let change = self.core.blocking(move |db| Ok(db.upload_keys(&user, &device, upload)?)).await?;
        if let Some(change) = change {
            self.share_device_change(user_id, device_id, change, false).await?;
        }
        let mut counts = self.core.db.one_time_key_counts(user_id, device_id)?;
        counts.entry("signed_curve25519".to_owned()).or_insert(0);
        Ok(counts)
    }
}

/// Checks uploaded device keys: the right user and device, ed25519 and curve25519 keys of the
/// device, and a valid self-signature.
fn check_device_keys(object: &Map<String, Value>, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
    if object.get("user_id").and_then(Value::as_str) != Some(user_id.as_str())
        || object.get("device_id").and_then(Value::as_str) != Some(device_id.as_str())
    {
        return Err(Error::invalid_param("The device keys must name your user id and this device."));
    }
    let parsed: ruma::encryption::DeviceKeys = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| bad_json(format!("Malformed device keys: {e}")))?;
    let key_id = format!("ed25519:{device_id}");
    let Some(public) = parsed.keys.iter().find(|(id, _)| id.as_str() == key_id).map(|(_, k)| k.clone()) else {
        return Err(Error::invalid_param(format!("The device keys have no {key_id} key.")));
    };
    if !signature_valid(object, user_id.as_str(), &key_id, &public) {
        return Err(Error::invalid_param("The device keys are not signed by the device's ed25519 key."));
    }
    Ok(())
}

/// Checks one uploaded one-time or fallback key id (`algorithm:key_id`) and shape.
fn check_one_time_key(id: &str, key: &RawValue) -> Result<()> {
    let Some((algorithm, key_id)) = id.split_once(':') else {
        return Err(Error::invalid_param(format!("One-time key id {id:?} is not algorithm:key_id.")));
    };
    if algorithm.is_empty() || key_id.is_empty() || id.len() > 255 || id.contains('\u{FF}') {
        return Err(Error::invalid_param(format!("One-time key id {id:?} is not algorithm:key_id.")));
    }
    match serde_json::from_str::<Value>(key.get()) {
        Ok(Value::String(_) | Value::Object(_)) => Ok(()),
        _ => Err(bad_json(format!("One-time key {id:?} must be a string or a signed key object."))),
    }
}

/// Whether an uploaded one-time key is the one stored under its id: the same key, whatever
/// its signatures (a client may sign a retried upload anew), as Synapse compares them.
fn same_one_time_key(stored: &RawValue, uploaded: &RawValue) -> bool {
    let unsigned = |raw: &RawValue| match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(mut object)) => {
            object.remove("signatures");
            Some(Value::Object(object))
        }
        Ok(other) => Some(other),
        Err(_) => None,
    };
    unsigned(stored).is_some_and(|stored| Some(stored) == unsigned(uploaded))
}

/// A failure entry of `/keys/signatures/upload`.
fn signature_failure(message: &str) -> Failure {
    serde_json::from_value(serde_json::json!({ "errcode": "M_INVALID_SIGNATURE", "error": message }))
        .expect("a Failure deserialises from errcode and error")
}

/// A failure entry of `/keys/query` and `/keys/claim` for a server.
fn server_failure(error: &impl std::fmt::Display) -> Value {
    serde_json::json!({ "status": 503, "message": error.to_string() })
}

/// Groups user ids by server, skipping ours.
fn by_server<V>(
    wanted: BTreeMap<OwnedUserId, V>,
    ours: &ruma::ServerName,
) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> {
    let mut out: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> = BTreeMap::new();
    for (user, value) in wanted {
        if user.server_name() != ours {
            out.entry(user.server_name().to_owned()).or_default().insert(user, value);
        }
    }
    out
}

/// A local user's public keys as `/keys/query` answers them.
#[derive(Default)]
pub struct LocalKeys {
    pub devices: BTreeMap<OwnedDeviceId, Box<RawValue>>,
    pub master: Option<Box<RawValue>>,
    pub self_signing: Option<Box<RawValue>>,
    pub user_signing: Option<Box<RawValue>>,
}

impl E2ee {
    /// The public keys of a local user. `requester`: the local user asking (None: another
    /// server). Device display names are shown to local users only; the user-signing key to
    /// its owner only; the requester's own signature on the master key is added.
    pub fn local_keys(
        &self,
        requester: Option<&UserId>,
        user_id: &UserId,
        devices: &[OwnedDeviceId],
    ) -> Result<LocalKeys> {
        let mut out = LocalKeys::default();
        let names: BTreeMap<OwnedDeviceId, Option<String>> =
            self.core.db.devices(user_id)?.into_iter().map(|d| (d.device_id, d.display_name)).collect();
        for (device_id, keys) in self.core.db.device_keys(user_id)? {
            if !devices.is_empty() && !devices.contains(&device_id) {
                continue;
            }
            let Some(name) = names.get(&device_id) else { continue };
            let mut object = object_of(&keys)?;
            if requester.is_some()
                && let Some(name) = name
            {
                let unsigned = object.entry("unsigned").or_insert_with(|| Value::Object(Map::new()));
                if let Some(unsigned) = unsigned.as_object_mut() {
                    unsigned.insert("device_display_name".into(), Value::String(name.clone()));
                }
            }
            out.devices.insert(device_id, to_raw(&Value::Object(object))?);
        }
        let cross = self.core.db.cross_signing_keys(user_id)?;
        out.master = cross.master;
        if let (Some(requester), Some(master)) = (requester, &out.master)
            && requester != user_id
            && let Some(signature) = self.core.db.user_signature(requester, user_id)?
        {
            let mut object = object_of(master)?;
            let mut extra = Map::new();
            extra.insert("signatures".into(), serde_json::from_str(signature.get()).unwrap_or_default());
            merge_signatures(&mut object, &extra);
            out.master = Some(to_raw(&Value::Object(object))?);
        }
        out.self_signing = cross.self_signing;
        if requester == Some(user_id) {
            out.user_signing = cross.user_signing;
        }
        Ok(out)
    }

    /// `POST /keys/query`.
    pub async fn query_keys(
        &self,
        requester: &UserId,
        wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Option<Duration>,
    ) -> Result<KeysQuery> {
        let mut response = KeysQuery::new();
        if wanted.len() > 1000 {
            return Err(Error::invalid_param("At most 1000 users per query."));
        }
        for (user_id, devices) in &wanted {
            if user_id.server_name() != self.core.server_name() {
                continue;
            }
            let keys = self.local_keys(Some(requester), user_id, devices)?;
            add_keys(&mut response, user_id, keys)?;
        }
        let timeout = timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT).min(Duration::from_secs(60));
        let mut requests = Vec::new();
        let mut local_joins = devices::LocalJoins::new();
        for (server, users) in by_server(wanted, self.core.server_name()) {
            // Users whose device lists we follow are answered from our copy, if it is current.
            let mut ask = BTreeMap::new();
            for (user_id, devices) in users {
                match self.core.db.remote_device_list(&user_id)? {
                    Some(list) if self.copy_is_current(&user_id, &list, &mut local_joins)? => {
                        let mut keys = LocalKeys::default();
                        for device in list.devices {
                            if devices.is_empty() || devices.contains(&device.device_id) {
                                keys.devices.insert(device.device_id, device.keys);
                            }
                        }
                        keys.master = list.master_key;
                        keys.self_signing = list.self_signing_key;
                        add_keys(&mut response, &user_id, keys)?;
                    }
                    stored => {
                        // Their server answers this query. A copy we kept but can no longer
                        // trust (stale, or a shared room was left and joined again) is
                        // fetched again for the next queries while we share a room.
                        if stored.is_some() && self.followed(&user_id)? {
                            self.spawn_resync(user_id.clone());
                        }
                        ask.insert(user_id, devices);
                    }
                }
            }
            if ask.is_empty() {
                continue;
            }
            requests.push((server, federation::keys::get_keys::v1::Request::new(ask)));
        }
        for (server, answer) in self.ask_servers(requests, timeout, "key query", &mut response.failures).await {
            // A server answers for its own users only.
            let own = |user_id: &UserId| user_id.server_name() == server;
            response.device_keys.extend(answer.device_keys.into_iter().filter(|(u, _)| own(u)));
            response.master_keys.extend(answer.master_keys.into_iter().filter(|(u, _)| own(u)));
            response.self_signing_keys.extend(answer.self_signing_keys.into_iter().filter(|(u, _)| own(u)));
        }
        // Signatures the requester made on remote users' master keys.
        let signed: Vec<OwnedUserId> =
            response.master_keys.keys().filter(|u| u.server_name() != self.core.server_name()).cloned().collect();
        for user_id in signed {
            if let Some(signature) = self.core.db.user_signature(requester, &user_id)?
                && let Some(master) = response.master_keys.get(&user_id)
            {
                let mut object = object_of(master.json())?;
                let mut extra = Map::new();
                extra.insert("signatures".into(), serde_json::from_str(signature.get()).unwrap_or_default());
                merge_signatures(&mut object, &extra);
                response.master_keys.insert(user_id, Raw::from_json(to_raw(&Value::Object(object))?));
            }
        }
        Ok(response)
    }

    /// `POST /keys/claim`.
    pub async fn claim_keys(
        &self,
        wanted: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
        timeout: Option<Duration>,
    ) -> Result<KeysClaim> {
        if wanted.values().map(BTreeMap::len).sum::<usize>() > 10_000 {
            return Err(Error::invalid_param("At most 10000 keys per claim."));
        }
        let mut response = KeysClaim::new(BTreeMap::new());
        for (user_id, devices) in &wanted {
            if user_id.server_name() != self.core.server_name() {
                continue;
            }
            let claimed = self.claim_local(user_id, devices).await?;
            if !claimed.is_empty() {
                response.one_time_keys.insert(user_id.clone(), claimed);
            }
        }
        let timeout = timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT).min(Duration::from_secs(60));
        let mut requests = Vec::new();
        for (server, users) in by_server(wanted, self.core.server_name()) {
            let mut claims = BTreeMap::new();
            for (user_id, devices) in users {
                let devices: BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm> =
                    devices.into_iter().map(|(d, a)| (d, ruma::OneTimeKeyAlgorithm::from(a.as_str()))).collect();
                claims.insert(user_id, devices);
            }
            requests.push((server, federation::keys::claim_keys::v1::Request::new(claims)));
        }
        for (server, answer) in self.ask_servers(requests, timeout, "key claim", &mut response.failures).await {
            // A server answers for its own users only.
            response.one_time_keys.extend(answer.one_time_keys.into_iter().filter(|(u, _)| u.server_name() == server));
        }
        Ok(response)
    }

    /// Sends each server its request at once, each bounded by `timeout`; the answers of the
    /// servers that answered, and a `failures` entry (as /keys/query and /keys/claim report
    /// them) for each one that did not.
    async fn ask_servers<R>(
        &self,
        requests: Vec<(ruma::OwnedServerName, R)>,
        timeout: Duration,
        what: &'static str,
        failures: &mut BTreeMap<String, Value>,
    ) -> Vec<(ruma::OwnedServerName, R::IncomingResponse)>
    where
        R: ruma::api::OutgoingRequest<
                Authentication = ruma::api::federation::authentication::ServerSignatures,
                PathBuilder = ruma::api::path_builder::SinglePath,
            > + Send
            + 'static,
        R::IncomingResponse: Send + 'static,
    {
        let mut remote = tokio::task::JoinSet::new();
        for (server, request) in requests {
            let client = self.federation.client.clone();
            remote.spawn(async move {
                let answer = tokio::time::timeout(timeout, client.send(&server, request)).await;
                (server, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = remote.join_next().await {
            let Ok((server, answer)) = joined else { continue };
            match answer {
                Ok(Ok(answer)) => answers.push((server, answer)),
                Ok(Err(error)) => {
                    tracing::info!(%server, %error, "a {what} to another server failed");
                    failures.insert(server.to_string(), server_failure(&error));
                }
                Err(_) => {
                    failures.insert(server.to_string(), server_failure(&"timed out"));
                }
            }
        }
        answers
    }

    /// Claims one key per device of a local user.
    pub async fn claim_local(
        &self,
        user_id: &UserId,
        devices: &BTreeMap<OwnedDeviceId, String>,
    ) -> Result<BTreeMap<OwnedDeviceId, BTreeMap<ruma::OwnedOneTimeKeyId, Raw<ruma::encryption::OneTimeKey>>>> {
        let (user, devices) = (user_id.to_owned(), devices.clone());
        let claimed = self
            .core
            .blocking(move |db| {
                let mut out = Vec::new();
                for (device_id, algorithm) in devices {
                    if let Some(key) = db.claim_key(&user, &device_id, &algorithm)? {
                        out.push((device_id, key));
                    }
                }
                Ok(out)
            })
            .await?;
        let mut out: BTreeMap<OwnedDeviceId, BTreeMap<ruma::OwnedOneTimeKeyId, Raw<ruma::encryption::OneTimeKey>>> =
            BTreeMap::new();
        for (device_id, (key_id, key)) in claimed {
            let Ok(key_id) = ruma::OwnedOneTimeKeyId::try_from(key_id.as_str()) else { continue };
            out.entry(device_id).or_default().insert(key_id, Raw::from_json(key));
        }
        Ok(out)
    }

    /// Whether uploading these cross-signing keys needs user-interactive auth: it does
    /// unless the user has no master key yet or the upload changes nothing.
    pub fn signing_upload_needs_auth(
        &self,
        user_id: &UserId,
        master: Option<&RawValue>,
        self_signing: Option<&RawValue>,
        user_signing: Option<&RawValue>,
    ) -> Result<bool> {
        let stored = self.core.db.cross_signing_keys(user_id)?;
        let Some(stored_master) = &stored.master else { return Ok(false) };
        let same = |new: Option<&RawValue>, old: &Option<Box<RawValue>>| match (new, old) {
            (None, _) => true,
            (Some(new), Some(old)) => {
                serde_json::from_str::<Value>(new.get()).ok() == serde_json::from_str::<Value>(old.get()).ok()
            }
            (Some(_), None) => false,
        };
        Ok(!(same(master, &Some(stored_master.clone()))
            && same(self_signing, &stored.self_signing)
            && same(user_signing, &stored.user_signing)))
    }

    /// `POST /keys/device_signing/upload` (after auth): checks and stores cross-signing keys.
    pub async fn upload_signing_keys(
        &self,
        user_id: &UserId,
        master: Option<&RawValue>,
        self_signing: Option<&RawValue>,
        user_signing: Option<&RawValue>,
    ) -> Result<()> {
        let _guard = self.signatures.lock().await;
        let stored = self.core.db.cross_signing_keys(user_id)?;
        let master_object = match master {
            Some(raw) => Some(check_cross_signing_key(&object_of(raw)?, user_id, "master")?),
            None => stored.master.as_deref().map(object_of).transpose()?,
        };
        let master_key = master_object.as_ref().and_then(cross_signing_public_key);
        for (raw, usage) in [(self_signing, "self_signing"), (user_signing, "user_signing")] {
            let Some(raw) = raw else { continue };
            let object = check_cross_signing_key(&object_of(raw)?, user_id, usage)?;
            let Some((master_id, master_public)) = &master_key else {
                return Err(Error::invalid_param("Upload a master key before the other cross-signing keys."));
            };
            if !signature_valid(&object, user_id.as_str(), master_id, master_public) {
                return Err(Error::Matrix {
                    kind: ruma::api::error::ErrorKind::InvalidParam,
                    message: format!("The {usage} key is not signed by your master key."),
                });
            }
        }
        if master.is_none() && self_signing.is_none() && user_signing.is_none() {
            return Ok(());
        }
        let keys = CrossSigningKeys {
            master: master.map(|m| m.to_owned()),
            self_signing: self_signing.map(|k| k.to_owned()),
            user_signing: user_signing.map(|k| k.to_owned()),
        };
        let user = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.put_cross_signing_keys(&user, keys)?)).await?;
        if master.is_some() || self_signing.is_some() {
            self.share_signing_keys(user_id).await?;
        }
        Ok(())
    }

    /// `POST /keys/signatures/upload`: adds signatures to keys; answers the failures.
    pub async fn upload_signatures(
        &self,
        user_id: &UserId,
        signed: Vec<(OwnedUserId, String, Box<RawValue>)>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Failure>>> {
        let _guard = self.signatures.lock().await;
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Failure>> = BTreeMap::new();
        let cross = self.core.db.cross_signing_keys(user_id)?;
        for (target, key_id, raw) in signed {
            let result = match object_of(&raw) {
                Err(error) => Err(error.to_string()),
                Ok(object) if target == user_id => self.sign_own_key(user_id, &key_id, object, &cross).await,
                Ok(object) => self.sign_other_user(user_id, &target, &key_id, &object, &cross),
            };
            if let Err(message) = result {
                failures.entry(target).or_default().insert(key_id, signature_failure(&message));
            }
        }
        Ok(failures)
    }

    /// A signature on one of the user's own keys: a device signed by the self-signing key,
    /// or the master key signed by a device.
    async fn sign_own_key(
        &self,
        user_id: &UserId,
        key_id: &str,
        object: Map<String, Value>,
        cross: &CrossSigningKeys,
    ) -> std::result::Result<(), String> {
        let internal = |e: Error| e.to_string();
        let devices = self.core.db.device_keys(user_id).map_err(|e| e.to_string())?;
        if let Some((device_id, stored)) = devices.iter().find(|(d, _)| d.as_str() == key_id) {
            let mut stored = object_of(stored).map_err(internal)?;
            if material(&stored) != material(&object) {
                return Err("The signed object is not this device's current keys.".into());
            }
            let ssk = cross
                .self_signing
                .as_deref()
                .map(object_of)
                .transpose()
                .map_err(internal)?
                .and_then(|k| cross_signing_public_key(&k))
                .ok_or("You have no self-signing key.")?;
            let added = added_signatures(&stored, &object);
            if added.is_empty() {
                return Ok(());
            }
            for (signer, signing_key) in &added {
                if signer != user_id.as_str()
                    || *signing_key != ssk.0
                    || !signature_valid(&object, signer, signing_key, &ssk.1)
                {
                    return Err(format!("Invalid signature by {signer} {signing_key}."));
                }
            }
            merge_signatures(&mut stored, &object);
            let keys = to_raw(&Value::Object(stored)).map_err(internal)?;
            let (user, device) = (user_id.to_owned(), device_id.clone());
            let change = self
                .core
                .blocking(move |db| Ok(db.replace_device_keys(&user, &device, &keys)?))
                .await
                .map_err(internal)?;
            self.share_device_change(user_id, device_id, change, false).await.map_err(internal)?;
            return Ok(());
        }
        let mut master = cross
            .master
            .as_deref()
            .map(object_of)
            .transpose()
            .map_err(internal)?
            .ok_or("You have no master key and no device with that id.")?;
        let (_, master_public) = cross_signing_public_key(&master).ok_or("Your master key is malformed.")?;
        if master_public != key_id || material(&master) != material(&object) {
            return Err("Unknown key.".into());
        }
        let device_keys: BTreeMap<String, String> = devices
            .iter()
            .filter_map(|(d, k)| {
                let object = object_of(k).ok()?;
                let public = object.get("keys")?.get(format!("ed25519:{d}"))?.as_str()?.to_owned();
                Some((format!("ed25519:{d}"), public))
            })
            .collect();
        let added = added_signatures(&master, &object);
        if added.is_empty() {
            return Ok(());
        }
        for (signer, signing_key) in &added {
            let valid = signer == user_id.as_str()
                && device_keys
                    .get(signing_key)
                    .is_some_and(|public| signature_valid(&object, signer, signing_key, public));
            if !valid {
                return Err(format!("Invalid signature by {signer} {signing_key}."));
            }
        }
        merge_signatures(&mut master, &object);
        let keys =
            CrossSigningKeys { master: Some(to_raw(&Value::Object(master)).map_err(internal)?), ..Default::default() };
        let user = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.put_cross_signing_keys(&user, keys)?)).await.map_err(internal)?;
        self.share_signing_keys(user_id).await.map_err(internal)
    }

    /// A signature by the user's user-signing key on another user's master key (visible to
    /// the signer only).
    fn sign_other_user(
        &self,
        user_id: &UserId,
        target: &UserId,
        key_id: &str,
        object: &Map<String, Value>,
        cross: &CrossSigningKeys,
    ) -> std::result::Result<(), String> {
        let usk = cross
            .user_signing
            .as_deref()
            .map(object_of)
            .transpose()
            .map_err(|e| e.to_string())?
            .and_then(|k| cross_signing_public_key(&k))
            .ok_or("You have no user-signing key.")?;
        if object.get("user_id").and_then(Value::as_str) != Some(target.as_str())
            || cross_signing_public_key(object).is_none_or(|(_, public)| public != key_id)
            || !object.get("usage").and_then(Value::as_array).is_some_and(|u| u.iter().any(|x| x == "master"))
        {
            return Err("Only another user's master key can be signed.".into());
        }
        // The target's master key as we know it must be the one signed.
        let known = if target.server_name() == self.core.server_name() {
            self.core.db.cross_signing_keys(target).map_err(|e| e.to_string())?.master
        } else {
            self.core.db.remote_device_list(target).map_err(|e| e.to_string())?.and_then(|l| l.master_key)
        };
        if let Some(known) = known
            && object_of(&known).map(|k| material(&k)).ok() != Some(material(object))
        {
            return Err("That is not the user's current master key.".into());
        }
        if !signature_valid(object, user_id.as_str(), &usk.0, &usk.1) {
            return Err("Invalid signature by your user-signing key.".into());
        }
        let signature = object["signatures"][user_id.as_str()][&usk.0].clone();
        let stored = serde_json::json!({ user_id.as_str(): { usk.0.clone(): signature } });
        let stored = to_raw(&stored).map_err(|e| e.to_string())?;
        self.core.db.put_user_signature(user_id, target, &stored).map_err(|e| e.to_string())
    }

    /// `/_matrix/federation/v1/user/keys/query`: keys of our users for another server.
    pub fn federation_query_keys(
        &self,
        wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<federation::keys::get_keys::v1::Response> {
        let mut answer = KeysQuery::new();
        for (user_id, devices) in wanted.into_iter().take(1000) {
            if user_id.server_name() == self.core.server_name() {
                let keys = self.local_keys(None, &user_id, &devices)?;
                add_keys(&mut answer, &user_id, keys)?;
            }
        }
        let mut response = federation::keys::get_keys::v1::Response::new(answer.device_keys);
        response.master_keys = answer.master_keys;
        response.self_signing_keys = answer.self_signing_keys;
        Ok(response)
    }

    /// `/_matrix/federation/v1/user/keys/claim`: one-time keys of our users' devices.
    pub async fn federation_claim_keys(
        &self,
        wanted: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
    ) -> Result<federation::keys::claim_keys::v1::Response> {
        let mut keys = BTreeMap::new();
        for (user_id, devices) in wanted.into_iter().take(1000) {
            if user_id.server_name() != self.core.server_name() {
                continue;
            }
            let devices = devices.into_iter().map(|(d, a)| (d, a.to_string())).collect();
            let claimed = self.claim_local(&user_id, &devices).await?;
            if !claimed.is_empty() {
                keys.insert(user_id, claimed);
            }
        }
        Ok(federation::keys::claim_keys::v1::Response::new(keys))
    }
}

/// Adds one user's keys to a `/keys/query` answer.
fn add_keys(response: &mut KeysQuery, user_id: &UserId, keys: LocalKeys) -> Result<()> {
    let devices = keys.devices.into_iter().map(|(d, k)| (d, Raw::from_json(k))).collect();
    response.device_keys.insert(user_id.to_owned(), devices);
    if let Some(master) = keys.master {
        response.master_keys.insert(user_id.to_owned(), Raw::from_json(master));
    }
    if let Some(key) = keys.self_signing {
        response.self_signing_keys.insert(user_id.to_owned(), Raw::from_json(key));
    }
    if let Some(key) = keys.user_signing {
        response.user_signing_keys.insert(user_id.to_owned(), Raw::from_json(key));
    }
    Ok(())
}

/// Checks an uploaded cross-signing key: the uploader's, with the given usage and one key.
fn check_cross_signing_key(object: &Map<String, Value>, user_id: &UserId, usage: &str) -> Result<Map<String, Value>> {
    let _: ruma::encryption::CrossSigningKey = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| bad_json(format!("Malformed {usage} key: {e}")))?;
    if object.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(format!("The {usage} key must name your user id.")));
    }
    if !object.get("usage").and_then(Value::as_array).is_some_and(|u| u.iter().any(|x| x == usage)) {
        return Err(Error::invalid_param(format!("The {usage} key must have usage {usage:?}.")));
    }
    if cross_signing_public_key(object).is_none() {
        return Err(Error::invalid_param(format!("The {usage} key must have exactly one ed25519 key.")));
    }
    Ok(object.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let key =
            ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "DEV".into())
                .unwrap();
        let mut object: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "user_id": "@a:x", "device_id": "DEV", "keys": {}, "unsigned": {"device_display_name": "phone"}
        }))
        .unwrap();
        ruma::signatures::sign_json("@a:x", &key, &mut object).unwrap();
        let public = Base64::<ruma::serde::base64::Standard, _>::new(key.public_key().to_vec()).encode();
        let Value::Object(mut map) = serde_json::to_value(&object).unwrap() else { panic!() };
        assert!(signature_valid(&map, "@a:x", "ed25519:DEV", &public));
        // `unsigned` is outside the signature.
        map.insert("unsigned".into(), serde_json::json!({}));
        assert!(signature_valid(&map, "@a:x", "ed25519:DEV", &public));
        map.insert("device_id".into(), "OTHER".into());
        assert!(!signature_valid(&map, "@a:x", "ed25519:DEV", &public));
        assert!(!signature_valid(&map, "@b:x", "ed25519:DEV", &public));
    }
}
