//! Third-party networks (`/_matrix/client/v3/thirdparty/*`): the protocols appservices
//! declare in their registrations, described and looked up by the appservices themselves
//! (`/_matrix/app/v1/thirdparty/*`), answers merged across appservices and checked before a
//! client sees them. An appservice that is down or answers garbage is left out and logged.

use std::collections::{BTreeMap, BTreeSet};

use ieum_appservices::namespaces::AppService;
use ruma::thirdparty::Protocol;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Appservices, encode};
use crate::error::{Error, Result};

/// Largest answer read from an appservice for one lookup.
const MAX_ANSWER: usize = 1 << 20;

impl Appservices {
    /// Appservices with a URL that declare `protocol`.
    fn declaring<'a>(&'a self, protocol: &'a str) -> impl Iterator<Item = &'a AppService> + 'a {
        self.services.iter().filter(move |s| {
            s.registration.url.is_some()
                && s.registration.protocols.as_ref().is_some_and(|p| p.iter().any(|name| name == protocol))
        })
    }

    /// Appservices with a URL that declare any protocol.
    fn with_protocols(&self) -> impl Iterator<Item = &AppService> {
        self.services.iter().filter(|s| {
            s.registration.url.is_some() && s.registration.protocols.as_ref().is_some_and(|p| !p.is_empty())
        })
    }

    /// `GET {url}/_matrix/app/v1/thirdparty/{path}?{query}` with the hs_token; None when the
    /// appservice is down, refuses, or does not answer JSON.
    async fn ask(&self, service: &AppService, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let base = service.registration.url.as_deref()?.trim_end_matches('/');
        let mut url = format!("{base}/_matrix/app/v1/thirdparty/{path}");
        for (i, (key, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{}={}", encode(key), encode(value)));
        }
        let id = &service.registration.id;
        let response = match self.client.get(&url).bearer_auth(&service.registration.hs_token).send().await {
            Ok(response) => response,
            Err(error) => {
                tracing::info!(appservice = %id, %path, %error, "third-party lookup failed");
                return None;
            }
        };
        if !response.status().is_success() {
            tracing::debug!(appservice = %id, %path, status = %response.status(), "third-party lookup refused");
            return None;
        }
        match response.bytes().await {
            Ok(body) if body.len() <= MAX_ANSWER => serde_json::from_slice(&body)
                .inspect_err(|error| tracing::info!(appservice = %id, %path, %error, "third-party answer is not JSON"))
                .ok(),
            Ok(_) => {
                tracing::info!(appservice = %id, %path, "third-party answer too large");
                None
            }
            Err(error) => {
                tracing::info!(appservice = %id, %path, %error, "third-party answer unreadable");
                None
            }
        }
    }

    /// `GET /thirdparty/protocols`: every declared protocol some appservice describes.
    pub async fn thirdparty_protocols(&self) -> BTreeMap<String, Protocol> {
        let names: BTreeSet<&String> =
            self.with_protocols().flat_map(|s| s.registration.protocols.iter().flatten()).collect();
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(protocol) = self.thirdparty_protocol(name).await {
                out.insert(name.clone(), protocol);
            }
        }
        out
    }

    /// `GET /thirdparty/protocol/{protocol}`: the first description, with the instances of
    /// every appservice that declares it (each given a unique `instance_id`).
    pub async fn thirdparty_protocol(&self, protocol: &str) -> Option<Protocol> {
        let mut merged: Option<Map<String, Value>> = None;
        let mut instances = Vec::new();
        for service in self.declaring(protocol) {
            let Some(Value::Object(mut answer)) =
                self.ask(service, &format!("protocol/{}", encode(protocol)), &[]).await
            else {
                continue;
            };
            if let Some(Value::Array(list)) = answer.remove("instances") {
                for instance in list {
                    let Value::Object(mut instance) = instance else { continue };
                    let network = instance.get("network_id").and_then(Value::as_str).unwrap_or_default().to_owned();
                    instance
                        .insert("instance_id".into(), Value::String(format!("{}|{network}", service.registration.id)));
                    instances.push(Value::Object(instance));
                }
            }
            merged.get_or_insert(answer);
        }
        let mut merged = merged?;
        merged.insert("instances".into(), Value::Array(instances));
        serde_json::from_value(Value::Object(merged))
            .inspect_err(|error| tracing::info!(%protocol, %error, "appservice protocol description is invalid"))
            .ok()
    }

    /// `GET /thirdparty/location/{protocol}` and `/thirdparty/user/{protocol}`: every
    /// declaring appservice is asked; valid answers for this protocol are concatenated.
    pub async fn thirdparty_lookup<T: DeserializeOwned>(
        &self,
        kind: Kind,
        protocol: &str,
        fields: &BTreeMap<String, String>,
    ) -> Vec<T> {
        let query: Vec<(&str, &str)> = fields
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "access_token" | "user_id"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let path = format!("{}/{}", kind.path(), encode(protocol));
        let mut out = Vec::new();
        for service in self.declaring(protocol) {
            out.extend(valid_entries(kind, Some(protocol), self.ask(service, &path, &query).await));
        }
        out
    }

    /// `GET /thirdparty/location?alias=` and `/thirdparty/user?userid=`: reverse lookups,
    /// asked of every appservice that declares a protocol.
    pub async fn thirdparty_reverse<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Vec<T> {
        let query = [(kind.reverse_key(), key)];
        let mut out = Vec::new();
        for service in self.with_protocols() {
            out.extend(valid_entries(kind, None, self.ask(service, kind.path(), &query).await));
        }
        out
    }

    /// A protocol no appservice declares: M_NOT_FOUND, as for a description nobody gave.
    pub fn thirdparty_known(&self, protocol: &str) -> Result<()> {
        match self.declaring(protocol).next() {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("No application service supports the protocol {protocol:?}."))),
        }
    }
}

/// What a lookup finds.
#[derive(Clone, Copy)]
pub enum Kind {
    Location,
    User,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::User => "user",
        }
    }

    fn reverse_key(self) -> &'static str {
        match self {
            Kind::Location => "alias",
            Kind::User => "userid",
        }
    }
}

/// The entries of an answer that are well formed (an object with the kind's id, `protocol`
/// (the one asked for, if any) and `fields`); the rest are logged and dropped.
fn valid_entries<T: DeserializeOwned>(kind: Kind, protocol: Option<&str>, answer: Option<Value>) -> Vec<T> {
    let Some(Value::Array(entries)) = answer else { return Vec::new() };
    entries
        .into_iter()
        .filter(|entry| {
            let ok = entry[kind.reverse_key()].is_string()
                && entry["fields"].is_object()
                && entry["protocol"].as_str().is_some_and(|p| protocol.is_none_or(|wanted| p == wanted));
            if !ok {
                tracing::info!(%entry, "dropping an invalid third-party lookup result");
            }
            ok
        })
        .filter_map(|entry| serde_json::from_value(entry).ok())
        .collect()
}
