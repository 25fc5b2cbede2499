//! Server signing keys: our signed key document (`GET /_matrix/key/v2/server`), checking a
//! remote server's document (name, self-signature, validity), and a cache of remote keys
//! with their validity.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedServerSigningKeyId, ServerName,
    api::federation::discovery::{OldVerifyKey, ServerSigningKeys, VerifyKey},
    serde::{Base64, Raw},
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet, sign_json, verify_json},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key document is not valid JSON: {0}")]
    Malformed(String),
    #[error("the key document is for {found}, not {expected}")]
    WrongServer { expected: String, found: String },
    #[error("the key document is not signed by its own key: {0}")]
    BadSignature(String),
    #[error("the key document expired at {0}")]
    Expired(u64),
}

/// A key we used to sign with, retired at `expired_ts`.
#[derive(Clone, Debug)]
pub struct OldKey {
    pub key_id: OwnedServerSigningKeyId,
    pub public_key: Vec<u8>,
    pub expired_ts: u64,
}

/// Our key document, signed with our current key.
pub fn signed_key_document(
    server_name: &ServerName,
    key: &Ed25519KeyPair,
    valid_until_ms: u64,
    old_keys: &[OldKey],
) -> Result<Raw<ServerSigningKeys>, KeyError> {
    let valid_until = MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(valid_until_ms).unwrap_or(ruma::UInt::MAX));
    let mut document = ServerSigningKeys::new(server_name.to_owned(), valid_until);
    let key_id = OwnedServerSigningKeyId::try_from(format!("ed25519:{}", key.version()))
        .map_err(|e| KeyError::Malformed(e.to_string()))?;
    document.verify_keys.insert(key_id, VerifyKey::new(Base64::new(key.public_key().to_vec())));
    for old in old_keys {
        let expired = MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(old.expired_ts).unwrap_or(ruma::UInt::MAX));
        document
            .old_verify_keys
            .insert(old.key_id.clone(), OldVerifyKey::new(expired, Base64::new(old.public_key.clone())));
    }
    let mut object: CanonicalJsonObject = ruma::canonical_json::to_canonical_value(&document)
        .ok()
        .and_then(|value| match value {
            ruma::CanonicalJsonValue::Object(object) => Some(object),
            _ => None,
        })
        .ok_or_else(|| KeyError::Malformed("key document does not serialise".into()))?;
    object.remove("signatures");
    sign_json(server_name.as_str(), key, &mut object).map_err(|e| KeyError::Malformed(e.to_string()))?;
    let json = serde_json::to_string(&object).map_err(|e| KeyError::Malformed(e.to_string()))?;
    Raw::from_json_string(json).map_err(|e| KeyError::Malformed(e.to_string()))
}

/// Keys of one server we have checked, with the time until which they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKeys {
    pub server_name: OwnedServerName,
    /// Current keys: key id -> public key.
    pub keys: PublicKeySet,
    /// Old keys: key id -> (public key, expired at).
    pub old_keys: BTreeMap<String, (Base64, u64)>,
    pub valid_until: u64,
}

/// Checks a key document fetched for `expected`: right server, signed by its own current
/// key, still valid at `now_ms`.
pub fn verify_key_document(document: &str, expected: &ServerName, now_ms: u64) -> Result<VerifiedKeys, KeyError> {
    let object: CanonicalJsonObject = serde_json::from_str(document).map_err(|e| KeyError::Malformed(e.to_string()))?;
    let parsed: ServerSigningKeys = serde_json::from_str(document).map_err(|e| KeyError::Malformed(e.to_string()))?;
    if parsed.server_name != expected {
        return Err(KeyError::WrongServer { expected: expected.to_string(), found: parsed.server_name.to_string() });
    }
    let keys: PublicKeySet = parsed.verify_keys.iter().map(|(id, key)| (id.to_string(), key.key.clone())).collect();
    let map: PublicKeyMap = BTreeMap::from([(expected.to_string(), keys.clone())]);
    verify_json(&map, &object).map_err(|e| KeyError::BadSignature(e.to_string()))?;
    let valid_until: u64 = parsed.valid_until_ts.get().into();
    if valid_until <= now_ms {
        return Err(KeyError::Expired(valid_until));
    }
    let old_keys = parsed
        .old_verify_keys
        .iter()
        .map(|(id, old)| (id.to_string(), (old.key.clone(), old.expired_ts.get().into())))
        .collect();
    Ok(VerifiedKeys { server_name: parsed.server_name, keys, old_keys, valid_until })
}

/// Remote servers' verified keys, in memory.
#[derive(Default)]
pub struct KeyCache {
    servers: Mutex<HashMap<OwnedServerName, VerifiedKeys>>,
}

impl KeyCache {
    pub fn insert(&self, keys: VerifiedKeys) {
        self.servers.lock().unwrap_or_else(|e| e.into_inner()).insert(keys.server_name.clone(), keys);
    }

    /// The keys of `server` usable at `now_ms` for signatures made at `signed_at_ms`
    /// (old keys count for signatures made before they expired). None if unknown or stale.
    pub fn public_keys(&self, server: &ServerName, now_ms: u64, signed_at_ms: Option<u64>) -> Option<PublicKeySet> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = servers.get(server)?;
        let mut keys = if entry.valid_until > now_ms { entry.keys.clone() } else { PublicKeySet::new() };
        if let Some(signed_at) = signed_at_ms {
            for (id, (key, expired)) in &entry.old_keys {
                if signed_at < *expired {
                    keys.insert(id.clone(), key.clone());
                }
            }
        }
        (!keys.is_empty()).then_some(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
    }

    #[test]
    fn our_document_verifies_and_tampering_is_caught() {
        let server = ruma::server_name!("a.test");
        let current = key("a_1");
        let old = OldKey {
            key_id: "ed25519:a_0".try_into().unwrap(),
            public_key: key("a_0").public_key().to_vec(),
            expired_ts: 1_000,
        };
        let document = signed_key_document(server, &current, 10_000, &[old]).unwrap();
        let verified = verify_key_document(document.json().get(), server, 5_000).unwrap();
        assert_eq!(verified.keys.len(), 1);
        assert!(verified.keys.contains_key("ed25519:a_1"));
        assert_eq!(verified.old_keys["ed25519:a_0"].1, 1_000);
        assert_eq!(
            verify_key_document(document.json().get(), ruma::server_name!("b.test"), 5_000),
            Err(KeyError::WrongServer { expected: "b.test".into(), found: "a.test".into() })
        );
        assert_eq!(verify_key_document(document.json().get(), server, 20_000), Err(KeyError::Expired(10_000)));
        let tampered = document.json().get().replace("10000", "99999");
        assert!(matches!(verify_key_document(&tampered, server, 5_000), Err(KeyError::BadSignature(_))));
    }

    #[test]
    fn the_spec_signing_vector() {
        // Appendix "Signing JSON": seed YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1, key ed25519:1,
        // the empty object signs to K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ.
        let seed =
            Base64::<ruma::serde::base64::Standard>::parse("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        let mut der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(seed.as_bytes());
        let key = Ed25519KeyPair::from_der(&der, "1".into()).unwrap();
        let mut object = CanonicalJsonObject::new();
        sign_json("domain", &key, &mut object).unwrap();
        let signature = &object["signatures"];
        assert_eq!(
            serde_json::to_string(signature).unwrap(),
            r#"{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}"#
        );
    }

    #[test]
    fn old_keys_only_cover_signatures_made_before_they_expired() {
        let cache = KeyCache::default();
        cache.insert(VerifiedKeys {
            server_name: "a.test".try_into().unwrap(),
            keys: BTreeMap::from([("ed25519:new".into(), Base64::new(vec![1]))]),
            old_keys: BTreeMap::from([("ed25519:old".into(), (Base64::new(vec![2]), 500))]),
            valid_until: 1_000,
        });
        let server = ruma::server_name!("a.test");
        assert_eq!(cache.public_keys(server, 900, Some(100)).unwrap().len(), 2);
        assert_eq!(cache.public_keys(server, 900, Some(600)).unwrap().len(), 1);
        assert!(cache.public_keys(server, 2_000, Some(600)).is_none(), "stale keys are not used");
        assert!(cache.public_keys(ruma::server_name!("b.test"), 0, None).is_none());
    }
}
