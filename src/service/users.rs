//! Accounts, passwords (argon2id), access/refresh tokens (stored as SHA-256), devices, profiles.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

const NONCE_LIFETIME: Duration = Duration::from_secs(60);

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};

use super::{Core, now_ms, random_token};
use crate::{
    error::{Error, Result},
    storage::{DeviceRecord, TokenKind, TokenRecord, UserRecord},
};

/// Who a request acts as, once its access token checked out.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The client session (login) the token belongs to; transaction ids are scoped to it.
    pub session_id: String,
    /// The application service acting (as_token), if any.
    pub appservice: Option<String>,
    /// Whether rate limits apply (off for appservices registered with `rate_limited: false`).
    pub rate_limited: bool,
}

/// What a successful login or registration hands the client.
#[derive(Clone, Debug)]
pub struct LoginResult {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

pub struct Users {
    core: Arc<Core>,
    /// Deleting or renaming a device changes the user's device list (end-to-end encryption).
    e2ee: Arc<super::e2ee::E2ee>,
    /// Nonces handed out by the shared-secret admin registration, with their age.
    admin_nonces: Mutex<HashMap<String, Instant>>,
}

/// SHA-256 of a token: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Hashes a password with argon2id (the crate's defaults follow OWASP's guidance).
pub fn hash_password(password: &str) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| Error::internal("the OS random generator failed"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| Error::internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
}

/// A real argon2id hash of a throwaway password, so checks for unknown users cost the same.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("not a real password").unwrap_or_default())
}

/// Checks a password against a stored PHC string; constant-time in the hash comparison.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

impl Users {
    pub fn new(core: Arc<Core>, e2ee: Arc<super::e2ee::E2ee>) -> Self {
        Self { core, e2ee, admin_nonces: Mutex::default() }
    }

    /// A one-time nonce for `/_synapse/admin/v1/register` (valid for 60 seconds).
    pub fn new_admin_nonce(&self) -> String {
        let nonce = random_token(32);
        let mut nonces = self.admin_nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, issued| issued.elapsed() < NONCE_LIFETIME);
        nonces.insert(nonce.clone(), Instant::now());
        nonce
    }

    /// Consumes a nonce; false if it is unknown or expired.
    pub fn take_admin_nonce(&self, nonce: &str) -> bool {
        let mut nonces = self.admin_nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.remove(nonce).is_some_and(|issued| issued.elapsed() < NONCE_LIFETIME)
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.core.db.user(user_id)?)
    }

    /// Whether a localpart is free and valid for a new local account.
    pub fn check_available(&self, localpart: &str) -> Result<OwnedUserId> {
        let user_id = self.parse_new_localpart(localpart)?;
        if self.core.db.user(&user_id)?.is_some() {
            return Err(Error::user_in_use("That user ID is already taken."));
        }
        Ok(user_id)
    }

    fn parse_new_localpart(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = localpart.to_lowercase();
        if localpart.is_empty()
            || !localpart
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
        {
            return Err(Error::invalid_username("User IDs may only contain a-z, 0-9, and the characters . _ = - / +"));
        }
        let user_id = UserId::parse_with_server_name(localpart.as_str(), self.core.server_name())
            .map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))?;
        if user_id.as_str().len() > 255 {
            return Err(Error::invalid_username("User ID is too long."));
        }
        Ok(user_id)
    }

    /// Creates an account. `localpart` None picks a random one.
    pub async fn create(
        &self,
        localpart: Option<&str>,
        password: Option<&str>,
        admin: bool,
        appservice_id: Option<String>,
    ) -> Result<OwnedUserId> {
        let user_id = match localpart {
            Some(localpart) => self.parse_new_localpart(localpart)?,
            None => loop {
                let candidate = self.parse_new_localpart(&random_token(10).to_lowercase())?;
                if self.core.db.user(&candidate)?.is_none() {
                    break candidate;
                }
            },
        };
        let password_hash = match password {
            Some(password) => {
                let password = password.to_owned();
                Some(
                    tokio::task::spawn_blocking(move || hash_password(&password))
                        .await
                        .map_err(|e| Error::internal(e.to_string()))??,
                )
            }
            None => None,
        };
        let record = UserRecord {
            displayname: Some(user_id.localpart().to_owned()),
            user_id: user_id.clone(),
            password_hash,
            admin,
            deactivated: false,
            created_ts: now_ms(),
            avatar_url: None,
            appservice_id,
        };
        let db = self.core.db.clone();
        let created = tokio::task::spawn_blocking(move || db.create_user(&record))
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
        if !created {
            return Err(Error::user_in_use("That user ID is already taken."));
        }
        tracing::info!(%user_id, admin, "account created");
        Ok(user_id)
    }

    /// Checks a password for a local user; returns the canonical user id.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<OwnedUserId> {
        let Some(user) = self.core.db.user(user_id)? else {
            // Spend the same time as a real check so user existence does not leak by timing.
            let password = password.to_owned();
            let _ = tokio::task::spawn_blocking(move || verify_password(&password, dummy_hash())).await;
            return Err(Error::bad_login());
        };
        if user.deactivated {
            return Err(Error::user_deactivated("This account has been deactivated."));
        }
        let Some(phc) = user.password_hash else { return Err(Error::bad_login()) };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        if ok { Ok(user.user_id) } else { Err(Error::bad_login()) }
    }

    /// Creates (or replaces) a device with fresh tokens.
    pub async fn new_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        want_refresh: bool,
        client_ip: Option<String>,
    ) -> Result<LoginResult> {
        self.issue_tokens(user_id, device_id, display_name, want_refresh, client_ip, random_token(16)).await
    }

    /// Creates (or replaces) a device's tokens within the given client session.
    async fn issue_tokens(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        want_refresh: bool,
        client_ip: Option<String>,
        session_id: String,
    ) -> Result<LoginResult> {
        let device_id = device_id.unwrap_or_else(|| OwnedDeviceId::from(random_token(10).to_uppercase()));
        let existing = self.core.db.device(user_id, &device_id)?;
        let access_token = format!("ieu_{}", random_token(40));
        let lifetime = self.core.config.auth.access_token_lifetime_ms.filter(|_| want_refresh);
        let refresh_token = lifetime.map(|_| format!("ier_{}", random_token(40)));
        let now = now_ms();
        let device = DeviceRecord {
            device_id: device_id.clone(),
            // initial_device_display_name is ignored for a device that already exists.
            display_name: match &existing {
                Some(device) => device.display_name.clone(),
                None => display_name,
            },
            created_ts: existing.as_ref().map(|d| d.created_ts).unwrap_or(now),
            last_seen_ts: Some(now),
            last_seen_ip: client_ip,
            token_hash: token_hash(&access_token),
            refresh_hash: refresh_token.as_deref().map(token_hash),
        };
        let access = TokenRecord {
            user_id: user_id.to_owned(),
            device_id: device_id.clone(),
            session_id: session_id.clone(),
            expires_at: lifetime.map(|ms| now + ms),
            kind: TokenKind::Access,
        };
        let refresh = refresh_token.as_ref().map(|_| TokenRecord {
            user_id: user_id.to_owned(),
            device_id: device_id.clone(),
            session_id,
            expires_at: None,
            kind: TokenKind::Refresh,
        });
        let owner = user_id.to_owned();
        self.core
            .blocking(move |db| Ok(db.put_device_with_tokens(&owner, &device, &access, refresh.as_ref())?))
            .await?;
        Ok(LoginResult { user_id: user_id.to_owned(), device_id, access_token, refresh_token, expires_in_ms: lifetime })
    }

    /// Exchanges a refresh token for a new token pair on the same device.
    pub async fn refresh(&self, refresh_token: &str) -> Result<LoginResult> {
        let record = self
            .core
            .db
            .token(&token_hash(refresh_token))?
            .filter(|r| r.kind == TokenKind::Refresh)
            .ok_or_else(|| Error::unknown_token("Unknown refresh token."))?;
        let device = self.core.db.device(&record.user_id, &record.device_id)?;
        // Refreshing continues the same client session (its transaction ids stay valid).
        self.issue_tokens(
            &record.user_id,
            Some(record.device_id),
            device.and_then(|d| d.display_name),
            true,
            None,
            record.session_id,
        )
        .await
    }

    /// Resolves an access token to its session.
    pub fn authenticate(&self, access_token: &str) -> Result<Session> {
        let record = self
            .core
            .db
            .token(&token_hash(access_token))?
            .filter(|r| r.kind == TokenKind::Access)
            .ok_or_else(|| Error::unknown_token("Unknown access token."))?;
        if record.expires_at.is_some_and(|at| at <= now_ms()) {
            return Err(Error::Matrix {
                kind: ruma::api::error::ErrorKind::UnknownToken(ruma::assign!(
                    ruma::api::error::UnknownTokenErrorData::new(),
                    { soft_logout: true }
                )),
                message: "Access token has expired.".into(),
            });
        }
        Ok(Session {
            user_id: record.user_id,
            device_id: record.device_id,
            session_id: record.session_id,
            appservice: None,
            rate_limited: true,
        })
    }

    /// Deletes a device with its tokens, keys and inbox; other users and servers hear of it.
    pub async fn logout(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        let change = self.core.blocking(move |db| Ok(db.delete_device(&user, &device)?)).await?;
        if let Some(change) = change {
            self.e2ee.device_deleted(user_id, device_id, change).await?;
        }
        Ok(())
    }

    /// Removes every device (and token), optionally keeping one.
    pub async fn logout_all(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<()> {
        for device in self.core.db.devices(user_id)? {
            if Some(&*device.device_id) != keep {
                self.logout(user_id, &device.device_id).await?;
            }
        }
        Ok(())
    }

    pub async fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let mut user = self.core.db.user(user_id)?.ok_or_else(|| Error::not_found("Unknown user."))?;
        let password = password.to_owned();
        user.password_hash = Some(
            tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| Error::internal(e.to_string()))??,
        );
        self.core.blocking(move |db| Ok(db.put_user(&user)?)).await
    }

    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let mut user = self.core.db.user(user_id)?.ok_or_else(|| Error::not_found("Unknown user."))?;
        user.deactivated = true;
        user.password_hash = None;
        user.displayname = None;
        user.avatar_url = None;
        self.core.blocking(move |db| Ok(db.put_user(&user)?)).await?;
        // Their key backups go with the account: nobody can read them any more.
        let owner = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.delete_all_backups(&owner)?)).await?;
        self.logout_all(user_id, None).await
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>> {
        Ok(self.core.db.devices(user_id)?)
    }

    pub fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<DeviceRecord> {
        self.core.db.device(user_id, device_id)?.ok_or_else(|| Error::not_found("Unknown device."))
    }

    pub async fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<String>) -> Result<()> {
        let mut device = self.device(user_id, device_id)?;
        device.display_name = name;
        let owner = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.update_device(&owner, &device)?)).await?;
        self.e2ee.device_renamed(user_id, device_id).await
    }

    /// Updates the profile record; the caller mirrors it into rooms.
    pub async fn set_profile(
        &self,
        user_id: &UserId,
        displayname: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> Result<()> {
        let mut user = self.core.db.user(user_id)?.ok_or_else(|| Error::not_found("Unknown user."))?;
        if let Some(name) = displayname {
            user.displayname = name;
        }
        if let Some(url) = avatar_url {
            user.avatar_url = url;
        }
        self.core.blocking(move |db| Ok(db.put_user(&user)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip_with_argon2id() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_are_long_and_hashed() {
        let a = random_token(40);
        assert_eq!(a.len(), 40);
        assert_ne!(a, random_token(40));
        assert_eq!(token_hash("abc"), token_hash("abc"));
        assert_ne!(token_hash("abc"), token_hash("abd"));
    }
}
