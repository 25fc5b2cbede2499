//! Federation: who we may talk to (closed-federation policy), other servers' signing keys
//! (fetched from the origin or a notary, checked, cached), verifying inbound X-Matrix
//! requests, and the outbound client every federation call goes through.
//!
//! Room-level federation (receiving PDUs, joins, invites, backfill) lives in
//! `service::rooms`; this module only knows servers and keys.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ieum_federation::{
    client::{ClientConfig, FederationClient},
    keys::{KeyCache, VerifiedKeys, verify_key_document},
    outbox::OutboxStore,
    policy::Policy,
    sender::{Sender, SenderConfig},
};
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName,
    api::federation::{
        authentication::XMatrix,
        discovery::{ServerSigningKeys, get_remote_server_keys, get_server_keys},
        transactions::edu::Edu,
    },
    room_version_rules::RoomVersionRules,
    serde::{Base64, Raw},
    signatures::{PublicKeyMap, PublicKeySet, required_server_signatures_to_verify_event},
};

use super::{Core, now_ms};
use crate::error::{Error, Result};

/// After a failed key fetch, the same server is not asked again for this long.
const KEY_FETCH_BACKOFF: Duration = Duration::from_secs(10);

pub struct Federation {
    core: Arc<Core>,
    pub client: Arc<FederationClient>,
    policy: Policy,
    keys: KeyCache,
    /// The key documents as their servers signed them (served again by our notary).
    documents: Mutex<HashMap<OwnedServerName, String>>,
    /// Servers whose keys could not be fetched recently: when to try again.
    key_failures: Mutex<HashMap<OwnedServerName, u64>>,
    /// The persisted per-destination queue of outbound PDUs and EDUs.
    sender: Arc<Sender<FederationClient>>,
}

impl Federation {
    pub fn new(core: Arc<Core>) -> Result<Self> {
        let config = &core.config.federation;
        let policy = Policy { disabled: !config.enabled, allow: config.allow.clone(), deny: config.deny.clone() };
        let client_config = ClientConfig {
            overrides: config.overrides.clone().into_iter().collect(),
            skip_verify: config.skip_verify.iter().cloned().collect::<HashSet<_>>(),
            timeout: Duration::from_millis(config.request_timeout_ms),
            policy: policy.clone(),
        };
        let client = FederationClient::new(core.config.server_name.clone(), core.signing_key.clone(), client_config)
            .map_err(|e| Error::internal(format!("cannot build the federation client: {e}")))?;
        let client = Arc::new(client);
        let outbox: Arc<dyn OutboxStore> = core.db.clone();
        let sender_config = SenderConfig::new(core.config.server_name.clone(), policy.clone());
        let sender = Arc::new(Sender::new(sender_config, outbox, client.clone()));
        Ok(Self {
            sender,
            core,
            client,
            policy,
            keys: KeyCache::default(),
            documents: Mutex::default(),
            key_failures: Mutex::default(),
        })
    }

    /// Whether federation with `server` is allowed by configuration.
    pub fn permits(&self, server: &ServerName) -> bool {
        self.policy.permits(server.as_str())
    }

    /// Refuses `server` with M_FORBIDDEN unless policy allows it.
    pub fn check_permitted(&self, server: &ServerName) -> Result<()> {
        if self.permits(server) {
            Ok(())
        } else if !self.core.config.federation.enabled {
            Err(Error::forbidden("Federation is disabled on this server."))
        } else {
            Err(Error::forbidden(format!("This server does not federate with {server}.")))
        }
    }

    /// Checks an inbound request's X-Matrix signature; returns the origin.
    pub async fn verify_request(
        &self,
        xmatrix: &XMatrix,
        request: &ruma::exports::http::Request<impl AsRef<[u8]>>,
    ) -> Result<OwnedServerName> {
        let origin = &xmatrix.origin;
        self.check_permitted(origin)?;
        if origin == self.core.server_name() {
            return Err(Error::unauthorized("A server does not send itself requests."));
        }
        let keys = self.public_keys(origin, None, Some(xmatrix.key.as_str())).await?;
        if !keys.contains_key(xmatrix.key.as_str()) {
            return Err(Error::unauthorized(format!("Unknown signing key {} of {origin}.", xmatrix.key)));
        }
        let map: PublicKeyMap = BTreeMap::from([(origin.to_string(), keys)]);
        xmatrix
            .verify_http_request(request, self.core.server_name(), &map)
            .map_err(|e| Error::unauthorized(format!("Bad X-Matrix signature: {e}")))?;
        self.sender.peer_is_up(origin);
        Ok(origin.clone())
    }

    /// The public keys of `server` usable for a signature made at `signed_at` (old keys
    /// count for signatures made before they expired). Fetches them when not cached, or when
    /// `wanted` (a key id) is not among the cached ones (the server rotated its key).
    pub async fn public_keys(
        &self,
        server: &ServerName,
        signed_at: Option<u64>,
        wanted: Option<&str>,
    ) -> Result<PublicKeySet> {
        if server == self.core.server_name() {
            let key_id = format!("ed25519:{}", self.core.signing_key.version());
            return Ok(BTreeMap::from([(key_id, Base64::new(self.core.signing_key.public_key().to_vec()))]));
        }
        if let Some(keys) = self.keys.public_keys(server, now_ms(), signed_at)
            && wanted.is_none_or(|id| keys.contains_key(id))
        {
            return Ok(keys);
        }
        // Keys fetched before a restart are kept in storage: use them while still valid.
        if self.load_stored_document(server)
            && let Some(keys) = self.keys.public_keys(server, now_ms(), signed_at)
            && wanted.is_none_or(|id| keys.contains_key(id))
        {
            return Ok(keys);
        }
        if let Some(retry_at) = self.key_failures.lock().unwrap_or_else(|e| e.into_inner()).get(server)
            && *retry_at > now_ms()
        {
            return Err(Error::unauthorized(format!("The keys of {server} cannot be fetched right now.")));
        }
        match self.fetch_keys(server).await {
            Ok(()) => {}
            Err(detail) => {
                tracing::info!(%server, %detail, "cannot fetch server keys");
                self.key_failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(server.to_owned(), now_ms() + KEY_FETCH_BACKOFF.as_millis() as u64);
                return Err(Error::unauthorized(format!("The keys of {server} cannot be fetched: {detail}")));
            }
        }
        self.keys
            .public_keys(server, now_ms(), signed_at)
            .ok_or_else(|| Error::unauthorized(format!("{server} published no usable keys.")))
    }

    /// Asks the server itself, then each configured notary.
    async fn fetch_keys(&self, server: &ServerName) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        match self.client.send_unsigned(server, get_server_keys::v2::Request::new()).await {
            Ok(response) => match self.accept_document(server, response.server_key.json().get()) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.push(problem),
            },
            Err(error) => problems.push(error.to_string()),
        }
        for notary in &self.core.config.federation.trusted_key_servers {
            let Ok(notary) = ServerName::parse(notary) else { continue };
            let request = get_remote_server_keys::v2::Request::new(
                server.to_owned(),
                MilliSecondsSinceUnixEpoch::from_system_time(std::time::SystemTime::now())
                    .unwrap_or_else(MilliSecondsSinceUnixEpoch::now),
            );
            match self.client.send_unsigned(&notary, request).await {
                Ok(response) => {
                    // The notary relays the document; the origin's own signature on it is
                    // what we check, so a notary cannot forge keys.
                    for document in response.server_keys {
                        match self.accept_document(server, document.json().get()) {
                            Ok(()) => return Ok(()),
                            Err(problem) => problems.push(format!("via {notary}: {problem}")),
                        }
                    }
                }
                Err(error) => problems.push(format!("via {notary}: {error}")),
            }
        }
        Err(problems.join("; "))
    }

    fn accept_document(&self, server: &ServerName, document: &str) -> std::result::Result<(), String> {
        let verified: VerifiedKeys = verify_key_document(document, server, now_ms()).map_err(|e| e.to_string())?;
        self.keys.insert(verified);
        self.documents.lock().unwrap_or_else(|e| e.into_inner()).insert(server.to_owned(), document.to_owned());
        self.key_failures.lock().unwrap_or_else(|e| e.into_inner()).remove(server);
        if let Err(error) = self.core.db.put_server_value(&stored_keys_name(server), document.as_bytes()) {
            tracing::warn!(%server, %error, "cannot keep a server's keys in storage");
        }
        Ok(())
    }

    /// Loads a key document kept from an earlier fetch into the cache; true if one was
    /// found and is still valid.
    fn load_stored_document(&self, server: &ServerName) -> bool {
        let Ok(Some(stored)) = self.core.db.server_value(&stored_keys_name(server)) else { return false };
        let Ok(document) = String::from_utf8(stored) else { return false };
        match verify_key_document(&document, server, now_ms()) {
            Ok(verified) => {
                self.keys.insert(verified);
                self.documents.lock().unwrap_or_else(|e| e.into_inner()).insert(server.to_owned(), document);
                true
            }
            Err(_) => false,
        }
    }

    /// Key documents for the notary endpoint: ours, or a cached remote one (fetched on
    /// demand), each countersigned by us.
    pub async fn notary_documents(&self, server: &ServerName) -> Result<Vec<Raw<ServerSigningKeys>>> {
        let document = if server == self.core.server_name() {
            super::server_keys::key_document(&self.core)?.json().get().to_owned()
        } else {
            self.public_keys(server, None, None).await.ok();
            match self.documents.lock().unwrap_or_else(|e| e.into_inner()).get(server) {
                Some(document) => document.clone(),
                None => return Ok(Vec::new()),
            }
        };
        let mut object: CanonicalJsonObject =
            serde_json::from_str(&document).map_err(|e| Error::internal(format!("stored key document: {e}")))?;
        ruma::signatures::sign_json(self.core.server_name().as_str(), &*self.core.signing_key, &mut object)
            .map_err(|e| Error::internal(format!("cannot countersign: {e}")))?;
        let json = serde_json::to_string(&object).map_err(|e| Error::internal(e.to_string()))?;
        Ok(vec![Raw::from_json_string(json).map_err(|e| Error::internal(e.to_string()))?])
    }

    /// The keys needed to check an event's signatures (the sender's server, and others the
    /// room version requires).
    pub async fn event_key_map(&self, object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<PublicKeyMap> {
        let servers = required_server_signatures_to_verify_event(object, &rules.signatures)
            .map_err(|e| Error::bad_json(format!("Event cannot be verified: {e}")))?;
        let signed_at = object.get("origin_server_ts").and_then(|ts| match ts {
            ruma::CanonicalJsonValue::Integer(ts) => u64::try_from(i64::from(*ts)).ok(),
            _ => None,
        });
        let mut map = PublicKeyMap::new();
        for server in servers {
            // The key id the server signed with, so a rotated key is fetched anew.
            let wanted = match object.get("signatures") {
                Some(ruma::CanonicalJsonValue::Object(signatures)) => match signatures.get(server.as_str()) {
                    Some(ruma::CanonicalJsonValue::Object(by_key)) => by_key.keys().next().cloned(),
                    _ => None,
                },
                _ => None,
            };
            let keys = self.public_keys(&server, signed_at, wanted.as_deref()).await?;
            map.insert(server.to_string(), keys);
        }
        Ok(map)
    }

    /// Queues a PDU for other servers (durable before this returns).
    pub async fn queue_pdu(
        &self,
        destinations: Vec<OwnedServerName>,
        event_id: ruma::OwnedEventId,
        pdu: Box<serde_json::value::RawValue>,
    ) -> Result<()> {
        self.sender
            .enqueue_pdu(destinations, &event_id, &pdu)
            .await
            .map_err(|e| Error::internal(format!("cannot queue {event_id} for other servers: {}", e.0)))
    }

    /// Queues an EDU for other servers.
    pub async fn queue_edu(&self, destinations: Vec<OwnedServerName>, edu: &Raw<Edu>) -> Result<()> {
        self.sender
            .enqueue_edu(destinations, edu)
            .await
            .map_err(|e| Error::internal(format!("cannot queue an EDU for other servers: {}", e.0)))
    }

    /// A server talked to us: whatever we have queued for it goes now.
    pub fn peer_is_up(&self, server: &ServerName) {
        self.sender.peer_is_up(server);
    }

    /// The outbound sender's loop (spawned by the server).
    pub fn sender(&self) -> Arc<Sender<FederationClient>> {
        self.sender.clone()
    }
}

/// Where a remote server's key document is kept (the server-values table).
fn stored_keys_name(server: &ServerName) -> String {
    format!("remote_keys/{server}")
}
