//! Domain logic: ruma types in, ruma types out, storage through traits; never the HTTP
//! framework, never the storage engine. `Services` is built once by `server.rs` and shared by every handler.

use std::sync::Arc;

use ruma::{OwnedServerName, ServerName, signatures::Ed25519KeyPair};

use crate::{
    config::Config,
    error::{Error, Result},
    storage::Storage,
};

pub mod account_data;
pub mod appservice;
pub mod appservice_sender;
pub mod directory;
pub mod durability;
pub mod e2ee;
pub mod ephemeral;
pub mod federation;
pub mod inbound;
pub mod key_backup;
pub mod lazy_members;
pub mod media;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod server_keys;
pub mod sliding_sync;
pub mod sync;
pub mod uiaa;
pub mod users;

/// What every service shares: configuration, storage, the server's identity.
pub struct Core {
    pub config: Config,
    pub db: Arc<dyn Storage>,
    pub signing_key: Arc<Ed25519KeyPair>,
    /// Waiting for pending writes to become durable (see durability.rs).
    pub durable: durability::Durability,
    /// Requests answered, for the heap trim after bursts (see memory.rs).
    pub answered: crate::memory::Answered,
}

impl Core {
    pub fn server_name(&self) -> &ServerName {
        &self.config.server_name
    }

    /// Runs a blocking storage operation (a synced write, a long scan) off the async workers.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Storage) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&*db))
            .await
            .map_err(|e| Error::internal(format!("storage task failed: {e}")))?
    }
}

/// All services, wired together.
pub struct Services {
    pub core: Arc<Core>,
    pub users: users::Users,
    pub uiaa: uiaa::Uiaa,
    pub rooms: Arc<rooms::Rooms>,
    pub e2ee: Arc<e2ee::E2ee>,
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    pub account_data: account_data::AccountData,
    pub directory: directory::Directory,
    pub sync: Arc<sync::Sync>,
    pub sliding_sync: sliding_sync::SlidingSync,
    pub ratelimit: ratelimit::RateLimiter,
    pub federation: Arc<federation::Federation>,
    pub transactions: inbound::Transactions,
    pub media: media::Media,
    pub key_backup: key_backup::KeyBackup,
    pub push: Arc<push::Push>,
    pub appservices: Arc<appservice::Appservices>,
}

impl Services {
    pub fn new(config: Config, db: Arc<dyn Storage>) -> Result<Self> {
        let signing_key = load_or_create_signing_key(&*db, &config.server_name)?;
        let core = Arc::new(Core {
            config,
            db,
            signing_key: Arc::new(signing_key),
            durable: Default::default(),
            answered: Default::default(),
        });
        let appservices = Arc::new(appservice::Appservices::load(core.clone())?);
        let federation = Arc::new(federation::Federation::new(core.clone())?);
        let rooms = Arc::new(rooms::Rooms::new(core.clone(), federation.clone(), appservices.clone()));
        let ephemeral = Arc::new(ephemeral::Ephemeral::new(core.clone()));
        let e2ee = Arc::new(e2ee::E2ee::new(core.clone(), rooms.clone(), federation.clone()));
        let sync = Arc::new(sync::Sync::new(core.clone(), rooms.clone(), ephemeral.clone(), e2ee.clone()));
        Ok(Self {
            users: users::Users::new(core.clone(), e2ee.clone()),
            uiaa: uiaa::Uiaa::default(),
            account_data: account_data::AccountData::new(core.clone()),
            directory: directory::Directory::new(core.clone(), rooms.clone()),
            sliding_sync: sliding_sync::SlidingSync::new(
                core.clone(),
                rooms.clone(),
                ephemeral.clone(),
                e2ee.clone(),
                sync.clone(),
            ),
            sync,
            ratelimit: ratelimit::RateLimiter::new(core.config.rate_limits.clone()),
            media: media::Media::new(core.clone(), federation.clone()),
            federation,
            transactions: inbound::Transactions::default(),
            key_backup: key_backup::KeyBackup::new(core.clone()),
            push: rooms.push.clone(),
            appservices,
            rooms,
            e2ee,
            ephemeral,
            core,
        })
    }

    pub fn server_name(&self) -> &ServerName {
        self.core.server_name()
    }

    pub fn owned_server_name(&self) -> OwnedServerName {
        self.core.config.server_name.clone()
    }
}

const SIGNING_KEY: &str = "signing_key_v1";
/// Keys we signed with before a rotation: JSON list of `OldSigningKey`.
const OLD_SIGNING_KEYS: &str = "old_signing_keys_v1";

/// A retired signing key, still published as `old_verify_keys` so events it signed verify.
#[derive(serde::Serialize, serde::Deserialize)]
struct OldSigningKey {
    key_id: String,
    public_key: String,
    expired_ts: u64,
}

/// The keys we signed with before, for our key document.
pub fn old_signing_keys(db: &dyn Storage) -> Result<Vec<ieum_federation::keys::OldKey>> {
    let Some(stored) = db.server_value(OLD_SIGNING_KEYS)? else { return Ok(Vec::new()) };
    let list: Vec<OldSigningKey> =
        serde_json::from_slice(&stored).map_err(|e| Error::internal(format!("stored old signing keys: {e}")))?;
    list.into_iter()
        .map(|old| {
            let public_key = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(&old.public_key)
                .map_err(|e| Error::internal(format!("stored old signing key: {e}")))?;
            Ok(ieum_federation::keys::OldKey {
                key_id: old.key_id.as_str().try_into().map_err(|e| Error::internal(format!("old key id: {e}")))?,
                public_key: public_key.into_inner(),
                expired_ts: old.expired_ts,
            })
        })
        .collect()
}

/// Retires the current signing key (kept as an old verify key, expired now) and makes a new
/// one; returns (old key id, new key id). The server must be stopped.
pub fn rotate_signing_key(db: &dyn Storage, server_name: &ServerName) -> Result<(String, String)> {
    let current = load_or_create_signing_key(db, server_name)?;
    let old_id = format!("ed25519:{}", current.version());
    let mut list: Vec<OldSigningKey> = match db.server_value(OLD_SIGNING_KEYS)? {
        Some(stored) => serde_json::from_slice(&stored).map_err(|e| Error::internal(e.to_string()))?,
        None => Vec::new(),
    };
    list.push(OldSigningKey {
        key_id: old_id.clone(),
        public_key: ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(current.public_key().to_vec())
            .encode(),
        expired_ts: now_ms(),
    });
    let document = Ed25519KeyPair::generate();
    let version = loop {
        let version = format!("a_{}", &random_token(4));
        if format!("ed25519:{version}") != old_id && list.iter().all(|o| o.key_id != format!("ed25519:{version}")) {
            break version;
        }
    };
    let encoded = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(document.to_vec()).encode();
    // Old keys first: a crash between the writes leaves the old key current, not lost.
    db.put_server_value(OLD_SIGNING_KEYS, &serde_json::to_vec(&list).map_err(|e| Error::internal(e.to_string()))?)?;
    db.put_server_value(SIGNING_KEY, format!("{version} {encoded}").as_bytes())?;
    Ok((old_id, format!("ed25519:{version}")))
}

/// The server's ed25519 key: generated on first start and kept in storage.
fn load_or_create_signing_key(db: &dyn Storage, server_name: &ServerName) -> Result<Ed25519KeyPair> {
    let (version, document) = match db.server_value(SIGNING_KEY)? {
        Some(stored) => {
            let text = String::from_utf8(stored).map_err(|e| Error::internal(e.to_string()))?;
            let (version, b64) = text.split_once(' ').ok_or_else(|| Error::internal("malformed stored signing key"))?;
            let document = ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(b64)
                .map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
            (version.to_owned(), document.into_inner())
        }
        None => {
            let document = Ed25519KeyPair::generate();
            let version = format!("a_{}", &random_token(4));
            let encoded = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(document.to_vec()).encode();
            db.put_server_value(SIGNING_KEY, format!("{version} {encoded}").as_bytes())?;
            tracing::info!(%server_name, key = %format!("ed25519:{version}"), "generated a new server signing key");
            (version, document.to_vec())
        }
    };
    Ed25519KeyPair::from_der(&document, version).map_err(|e| Error::internal(format!("signing key: {e}")))
}

/// A random string of `len` characters from [A-Za-z0-9], from the OS generator.
pub fn random_token(len: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).expect("the OS random generator works");
        // 62 * 4 = 248: reject 248..=255 so every character is equally likely.
        for byte in buf {
            if byte < 248 && out.len() < len {
                out.push(ALPHABET[(byte % 62) as usize] as char);
            }
        }
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    ruma::MilliSecondsSinceUnixEpoch::now().get().into()
}
