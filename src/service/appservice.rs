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

pub struct Appservices {
    core: Arc<Core>,
    services: Vec<AppService>,
    /// SHA-256 of each as_token -> index in `services`.
    by_token: HashMap<[u8; 32], usize>,
}

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
        Ok(Self { core, services, by_token })
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

    /// Refuses a user id that an appservice other than `acting_appservice` owns exclusively.
    pub fn check_user_not_exclusive(&self, user_id: &UserId, acting_appservice: Option<&str>) -> Result<()> {
        match self.services.iter().find(|s| s.is_exclusive_user(user_id.as_str())) {
            Some(owner) if Some(owner.registration.id.as_str()) != acting_appservice => {
                Err(Error::exclusive(format!("{user_id} is reserved by an application service.")))
            }
            _ => Ok(()),
        }
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
}
