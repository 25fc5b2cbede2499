//! Application services (bridges, bots): registrations loaded at start-up, as_token
//! authentication with `user_id` masquerading inside the appservice's namespace, ghost
//! registration, and exclusive namespaces closed to everyone else.
//!
//! Tokens are compared by SHA-256 through a map (as access tokens are), never with `==` on
//! the secret itself.

use std::{collections::HashMap, sync::Arc};

use ieum_appservices::namespaces::AppService;
use ruma::{OwnedUserId, UserId};

use super::{Core, users::token_hash};
use crate::error::{Error, Result};

pub mod thirdparty;

pub struct Appservices {
    core: Arc<Core>,
    /// Requests to appservices (ping, user and alias queries).
    client: reqwest::Client,
    services: Vec<AppService>,
    /// SHA-256 of each as_token -> index in `services`.
    by_token: HashMap<[u8; 32], usize>,
}

/// How long a ping or a query may take.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Who an appservice request acts as.
pub struct Acting {
    pub appservice_id: String,
    pub user_id: OwnedUserId,
    pub rate_limited: bool,
}

impl Appservices {
    /// Loads and checks the configured registration files; an invalid set stops start-up
    /// with a message naming the file and the field.
    pub fn load(core: Arc<Core>) -> Result<Self> {
        let services = ieum_appservices::registration::load_all(&core.config.appservices.registrations)
            .map_err(|e| Error::internal(format!("appservice registrations: {e}")))?;
        let by_token = services.iter().enumerate().map(|(i, s)| (token_hash(&s.registration.as_token), i)).collect();
        for service in &services {
            tracing::info!(id = %service.registration.id, "application service registered");
        }
        let client = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Ok(Self { core, client, services, by_token })
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Appservices with a URL (those that receive transactions).
    pub fn receivers(&self) -> impl Iterator<Item = &AppService> {
        self.services.iter().filter(|s| s.registration.url.is_some())
    }

    fn by_token(&self, token: &str) -> Option<&AppService> {
        self.by_token.get(&token_hash(token)).map(|&i| &self.services[i])
    }

    fn sender(&self, service: &AppService) -> Result<OwnedUserId> {
        UserId::parse_with_server_name(service.registration.sender_localpart.as_str(), self.core.server_name())
            .map_err(|e| Error::internal(format!("appservice sender_localpart: {e}")))
    }

    /// The appservice whose as_token this is, acting as `user_id` (masquerading) or as its
    /// sender user. None: not an appservice token.
    pub fn authenticate(&self, token: &str, user_id: Option<&str>) -> Result<Option<Acting>> {
        let Some(service) = self.by_token(token) else { return Ok(None) };
        let sender = self.sender(service)?;
        let user_id = match user_id {
            None => sender,
            Some(wanted) => {
                let wanted = UserId::parse(wanted)
                    .map_err(|_| Error::invalid_param(format!("{wanted:?} is not a valid user id.")))?;
                if wanted.server_name() != self.core.server_name()
                    || !service.is_user_in_namespace(wanted.as_str(), sender.as_str())
                {
                    return Err(Error::forbidden(format!(
                        "Application service {} cannot act as {wanted}: outside its namespace.",
                        service.registration.id
                    )));
                }
                if wanted != sender && self.core.db.user(&wanted)?.is_none() {
                    return Err(Error::forbidden(format!(
                        "Application service has not registered {wanted}; register it first."
                    )));
                }
                wanted
            }
        };
        Ok(Some(Acting {
            appservice_id: service.registration.id.clone(),
            user_id,
            rate_limited: service.registration.rate_limited.unwrap_or(true),
        }))
    }

    /// Whether `user_id` may be registered by this appservice (`m.login.application_service`).
    pub fn may_register(&self, appservice_id: &str, user_id: &UserId) -> Result<()> {
        let service = self
            .services
            .iter()
            .find(|s| s.registration.id == appservice_id)
            .ok_or_else(|| Error::unknown_token("Unknown application service."))?;
        let sender = self.sender(service)?;
        if !service.is_user_in_namespace(user_id.as_str(), sender.as_str()) {
            return Err(Error::exclusive(format!(
                "{user_id} is outside the user namespace of application service {appservice_id}."
            )));
        }
        Ok(())
    }

    /// Whether some appservice owns `user_id` exclusively (a ghost of a bridge).
    pub fn owns_exclusively(&self, user_id: &UserId) -> bool {
        self.services.iter().any(|s| s.is_exclusive_user(user_id.as_str()))
    }

    /// Refuses a user id that an appservice other than `acting_appservice` owns exclusively.
    pub fn check_user_not_exclusive(&self, user_id: &UserId, acting_appservice: Option<&str>) -> Result<()> {
        match self.services.iter().find(|s| s.is_exclusive_user(user_id.as_str())) {
            Some(owner) if Some(owner.registration.id.as_str()) != acting_appservice => {
                Err(Error::exclusive(format!("{user_id} is reserved by an application service.")))
            }
            _ => Ok(()),
        }
    }

    /// Whether the alias is in the namespace of appservice `id`.
    pub fn alias_in_namespace(&self, id: Option<&str>, alias: &str) -> bool {
        id.is_some_and(|id| self.services.iter().any(|s| s.registration.id == id && s.is_interested_in_alias(alias)))
    }

    /// Refuses an alias that an appservice other than `acting_appservice` owns exclusively.
    pub fn check_alias_not_exclusive(&self, alias: &str, acting_appservice: Option<&str>) -> Result<()> {
        match self.services.iter().find(|s| s.is_exclusive_alias(alias)) {
            Some(owner) if Some(owner.registration.id.as_str()) != acting_appservice => {
                Err(Error::exclusive(format!("{alias} is reserved by an application service.")))
            }
            _ => Ok(()),
        }
    }

    /// Creates each appservice's sender user if it does not exist yet.
    pub async fn ensure_senders(&self, users: &super::users::Users) -> Result<()> {
        for service in &self.services {
            let sender = self.sender(service)?;
            if self.core.db.user(&sender)?.is_none() {
                match users.create(Some(sender.localpart()), None, false, Some(service.registration.id.clone())).await {
                    Ok(_) | Err(Error::Matrix { kind: ruma::api::error::ErrorKind::UserInUse, .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the homeserver pings the
    /// appservice (`POST {url}/_matrix/app/v1/ping`) and answers how long it took.
    pub async fn ping(
        &self,
        acting_appservice: &str,
        appservice_id: &str,
        transaction_id: Option<&str>,
    ) -> Result<std::time::Duration> {
        use ruma::api::error::{BadStatusErrorData, ErrorKind};
        if acting_appservice != appservice_id {
            return Err(Error::forbidden("You may only ping your own application service."));
        }
        let service = self
            .services
            .iter()
            .find(|s| s.registration.id == appservice_id)
            .ok_or_else(|| Error::forbidden("Unknown application service."))?;
        let Some(url) = &service.registration.url else {
            return Err(Error::Matrix { kind: ErrorKind::UrlNotSet, message: "The registration has no url.".into() });
        };
        let mut body = serde_json::Map::new();
        if let Some(id) = transaction_id {
            body.insert("transaction_id".into(), serde_json::Value::String(id.to_owned()));
        }
        let started = std::time::Instant::now();
        let answer = self
            .client
            .post(format!("{}/_matrix/app/v1/ping", url.trim_end_matches('/')))
            .bearer_auth(&service.registration.hs_token)
            .header("content-type", "application/json")
            .body(serde_json::Value::Object(body).to_string())
            .send()
            .await;
        let status = ruma::exports::http::StatusCode::BAD_GATEWAY;
        match answer {
            Err(error) if error.is_timeout() => Err(Error::WithStatus {
                kind: ErrorKind::ConnectionTimeout,
                message: "The application service did not answer in time.".into(),
                status: ruma::exports::http::StatusCode::GATEWAY_TIMEOUT,
            }),
            Err(error) => Err(Error::WithStatus {
                kind: ErrorKind::ConnectionFailed,
                message: format!("Cannot reach the application service: {error}"),
                status,
            }),
            Ok(response) if !response.status().is_success() => {
                let mut data = BadStatusErrorData::new();
                data.status = ruma::exports::http::StatusCode::from_u16(response.status().as_u16()).ok();
                data.body = response.text().await.ok();
                Err(Error::WithStatus {
                    kind: ErrorKind::BadStatus(data),
                    message: "The application service answered with an error.".into(),
                    status,
                })
            }
            Ok(_) => Ok(started.elapsed()),
        }
    }

    /// A local user that does not exist may be one an appservice creates on demand: asks
    /// each appservice whose namespace holds it (`GET /_matrix/app/v1/users/{userId}`).
    /// True when one answered yes (and so should have registered it).
    pub async fn query_user(&self, user_id: &UserId) -> bool {
        for service in self.services.iter().filter(|s| s.is_interested_in_user(user_id.as_str())) {
            let Some(url) = &service.registration.url else { continue };
            let url = format!("{}/_matrix/app/v1/users/{}", url.trim_end_matches('/'), encode(user_id.as_str()));
            if self.query(&url, &service.registration.hs_token).await {
                return true;
            }
        }
        false
    }

    /// An unknown local alias in an appservice's namespace: asks it
    /// (`GET /_matrix/app/v1/rooms/{alias}`); true when it answered yes (and created it).
    pub async fn query_alias(&self, alias: &str) -> bool {
        for service in self.services.iter().filter(|s| s.is_interested_in_alias(alias)) {
            let Some(url) = &service.registration.url else { continue };
            let url = format!("{}/_matrix/app/v1/rooms/{}", url.trim_end_matches('/'), encode(alias));
            if self.query(&url, &service.registration.hs_token).await {
                return true;
            }
        }
        false
    }

    async fn query(&self, url: &str, hs_token: &str) -> bool {
        match self.client.get(url).bearer_auth(hs_token).send().await {
            Ok(response) => response.status().is_success(),
            Err(error) => {
                tracing::info!(%url, %error, "application service query failed");
                false
            }
        }
    }
}

/// Percent-encodes a path segment.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl super::Services {
    /// A local alias, asking the appservice whose namespace holds it when it is unknown.
    pub async fn resolve_local_alias(&self, alias: &ruma::RoomAliasId) -> Result<(ruma::OwnedRoomId, Vec<String>)> {
        match self.directory.resolve_alias(alias) {
            Err(Error::Matrix { kind: ruma::api::error::ErrorKind::NotFound, .. })
                if self.appservices.query_alias(alias.as_str()).await =>
            {
                self.directory.resolve_alias(alias)
            }
            other => other,
        }
    }

    /// Gives the appservice whose namespace holds an unknown local user the chance to
    /// create it (a profile lookup or an invite touching a ghost not registered yet).
    pub async fn touch_local_user(&self, user_id: &UserId) -> Result<()> {
        if user_id.server_name() == self.server_name()
            && self.core.db.user(user_id)?.is_none()
            && !self.appservices.is_empty()
        {
            self.appservices.query_user(user_id).await;
        }
        Ok(())
    }
}
