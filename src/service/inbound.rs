//! Inbound federation transactions (`PUT /_matrix/federation/v1/send/{txnId}`): PDUs handed
//! to the rooms service one by one (per-PDU results), EDUs (typing, receipts) applied, and
//! replays of a transaction answered from memory without processing it again.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedTransactionId, RoomId, ServerName,
    api::federation::transactions::{edu::Edu, send_transaction_message},
};
use serde::Deserialize;

use super::Services;
use crate::error::{Error, Result};

/// A transaction carries at most this many PDUs and EDUs (the spec's limits).
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Transactions remembered for replay detection.
const REMEMBERED: usize = 4096;

type TxnKey = (OwnedServerName, OwnedTransactionId);
type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// Recently completed transactions and their answers.
#[derive(Default)]
pub struct Transactions {
    done: Mutex<(HashMap<TxnKey, PduResults>, VecDeque<TxnKey>)>,
    /// One transaction per origin at a time (the spec: senders wait for the answer).
    origins: Mutex<HashMap<OwnedServerName, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Transactions {
    fn remembered(&self, key: &TxnKey) -> Option<PduResults> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).0.get(key).cloned()
    }

    fn remember(&self, key: TxnKey, results: PduResults) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.0.insert(key.clone(), results).is_none() {
            done.1.push_back(key);
        }
        while done.1.len() > REMEMBERED {
            if let Some(old) = done.1.pop_front() {
                done.0.remove(&old);
            }
        }
    }

    fn origin_lock(&self, origin: &ServerName) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.origins.lock().unwrap_or_else(|e| e.into_inner()).entry(origin.to_owned()).or_default().clone()
    }
}

#[derive(Deserialize)]
struct RoomOf {
    room_id: Option<OwnedRoomId>,
}

impl Services {
    /// Handles one inbound transaction from `origin`.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        request: send_transaction_message::v1::Request,
    ) -> Result<PduResults> {
        if request.origin != origin {
            return Err(Error::forbidden("The transaction's origin is not the server that signed the request."));
        }
        if request.pdus.len() > MAX_PDUS || request.edus.len() > MAX_EDUS {
            return Err(Error::too_large(format!(
                "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs."
            )));
        }
        let key = (origin.to_owned(), request.transaction_id.clone());
        let lock = self.transactions.origin_lock(origin);
        let _guard = lock.lock().await;
        if let Some(results) = self.transactions.remembered(&key) {
            tracing::debug!(%origin, txn = %request.transaction_id, "replayed transaction");
            return Ok(results);
        }
        // The transaction's PDUs share one fsync, made before it is answered.
        let results =
            crate::service::durability::deferred(&self.core, self.receive_pdus(origin, &request.pdus)).await?;
        for edu in &request.edus {
            // Presence is read leniently: Synapse leaves out `last_active_ago` at times,
            // which ruma's type requires.
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(edu.json().get())
                && value["edu_type"] == "m.presence"
            {
                self.receive_presence(origin, &value["content"]);
                continue;
            }
            match edu.deserialize() {
                Ok(edu) => self.receive_edu(origin, edu).await,
                Err(error) => tracing::debug!(%origin, %error, "ignoring an EDU that does not parse"),
            }
        }
        self.transactions.remember(key, results.clone());
        Ok(results)
    }

    /// The PDUs of one transaction, in order, with a result for each.
    async fn receive_pdus(&self, origin: &ServerName, pdus: &[Box<serde_json::value::RawValue>]) -> Result<PduResults> {
        let mut results = PduResults::new();
        for raw in pdus {
            let room_id = match serde_json::from_str::<RoomOf>(raw.get()) {
                Ok(RoomOf { room_id: Some(room_id) }) => room_id,
                _ => {
                    tracing::info!(%origin, "dropping a PDU without a room id");
                    continue;
                }
            };
            let (event_id, outcome) = match self.rooms.room_version(&room_id) {
                Ok(Some(_)) => {
                    // Servers outside a room's ACL may not send into it.
                    match self.rooms.check_server_acl(origin, &room_id) {
                        Ok(()) => {
                            let (event_id, outcome) = self.rooms.receive_pdu_named(origin, &room_id, raw).await;
                            (event_id, outcome.map(|_| ()))
                        }
                        Err(error) => (None, Err(error)),
                    }
                }
                Ok(None) if self.rooms.queue_while_joining(origin, &room_id, raw) => (None, Ok(())),
                Ok(None) => (None, Err(Error::not_found(format!("This server is not in room {room_id}.")))),
                Err(error) => (None, Err(error)),
            };
            // Computed here only when the checks did not get that far.
            let event_id = event_id.or_else(|| self.rooms.event_id_of(&room_id, raw));
            if let Err(error) = &outcome {
                tracing::info!(%origin, %room_id, event_id = ?event_id, %error, "PDU not accepted");
            }
            if let Some(event_id) = event_id {
                results.insert(event_id, outcome.map_err(|e| e.to_string()));
            }
        }
        Ok(results)
    }

    async fn receive_edu(&self, origin: &ServerName, edu: Edu) {
        match edu {
            Edu::Typing(typing) => {
                if typing.user_id.server_name() != origin || !self.sender_in_room(&typing.room_id, origin) {
                    return;
                }
                let timeout = typing.typing.then_some(Duration::from_secs(30));
                self.ephemeral.set_typing(&typing.room_id, &typing.user_id, typing.typing, timeout);
            }
            Edu::Receipt(receipts) => {
                for (room_id, map) in receipts.receipts {
                    if !self.sender_in_room(&room_id, origin) {
                        continue;
                    }
                    for (user_id, data) in map.read {
                        if user_id.server_name() != origin {
                            continue;
                        }
                        let thread = data.data.thread.as_str().map(str::to_owned);
                        for event_id in data.event_ids {
                            if let Err(error) = self
                                .ephemeral
                                .set_receipt(&room_id, &user_id, "m.read", &event_id, thread.clone())
                                .await
                            {
                                tracing::debug!(%origin, %error, "ignoring a receipt");
                            }
                        }
                    }
                }
            }
            Edu::DeviceListUpdate(update) => self.e2ee.receive_device_list_update(origin, update).await,
            Edu::DirectToDevice(content) => self.e2ee.receive_direct_to_device(origin, content).await,
            Edu::SigningKeyUpdate(update) => self.e2ee.receive_signing_key_update(origin, update).await,
            other => {
                tracing::debug!(%origin, kind = ?std::mem::discriminant(&other), "EDU type not handled");
            }
        }
    }

    fn receive_presence(&self, origin: &ServerName, content: &serde_json::Value) {
        if !self.core.config.presence.enabled {
            return;
        }
        let Some(updates) = content["push"].as_array() else { return };
        for update in updates.iter().take(1000) {
            let Some(Ok(user_id)) = update["user_id"].as_str().map(ruma::UserId::parse) else { continue };
            let Some(presence) = update["presence"].as_str().filter(|p| super::ephemeral::PRESENCE_STATES.contains(p))
            else {
                continue;
            };
            if user_id.server_name() != origin {
                continue;
            }
            let ago = update["last_active_ago"].as_u64().unwrap_or(0);
            let status = update["status_msg"].as_str().map(str::to_owned);
            let active = update["currently_active"].as_bool().unwrap_or(false);
            self.ephemeral.set_presence(&user_id, presence, status, super::now_ms().saturating_sub(ago), active);
        }
    }

    /// A local user's client syncs (`set_presence` as it asked): online (or unavailable)
    /// while it does; the guard, dropped when the sync ends, starts the offline countdown.
    pub async fn syncing(
        &self,
        user_id: &ruma::UserId,
        set_presence: &ruma::presence::PresenceState,
    ) -> Result<Option<super::ephemeral::SyncGuard>> {
        use ruma::presence::PresenceState;
        if !self.core.config.presence.enabled || *set_presence == PresenceState::Offline {
            return Ok(None);
        }
        let guard = self.ephemeral.sync_started(user_id);
        let current = self.ephemeral.presence_of(user_id);
        let status = current.as_ref().and_then(|p| p.status_msg.clone());
        let target = match set_presence {
            PresenceState::Unavailable => "unavailable",
            // A user who chose unavailable (or busy) stays so while syncing.
            _ if current.as_ref().is_some_and(|p| p.presence != "offline") => {
                self.ephemeral.set_presence(
                    user_id,
                    &current.expect("checked").presence,
                    status,
                    super::now_ms(),
                    true,
                );
                return Ok(Some(guard));
            }
            _ => "online",
        };
        self.set_presence(user_id, target, status).await?;
        Ok(Some(guard))
    }

    /// Local users whose clients stopped syncing go offline (run every few seconds).
    pub async fn expire_presence(&self) {
        for (user_id, status) in self.ephemeral.idle_syncers() {
            if let Err(error) = self.set_presence(&user_id, "offline", status).await {
                tracing::warn!(%user_id, %error, "could not mark an idle user offline");
            }
        }
    }

    /// Sets a local user's presence and shares it with every server that shares a room.
    pub async fn set_presence(&self, user_id: &ruma::UserId, presence: &str, status_msg: Option<String>) -> Result<()> {
        if !super::ephemeral::PRESENCE_STATES.contains(&presence) {
            return Err(Error::invalid_param(format!("Unknown presence state {presence:?}.")));
        }
        if !self.core.config.presence.enabled {
            return Ok(());
        }
        let active = presence == "online";
        if !self.ephemeral.set_presence(user_id, presence, status_msg, super::now_ms(), active) {
            return Ok(());
        }
        let mut servers = std::collections::BTreeSet::new();
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.membership == "join" {
                servers.extend(self.rooms.remote_servers_in_room(&room_id)?);
            }
        }
        if servers.is_empty() {
            return Ok(());
        }
        let Some(current) = self.ephemeral.presence_of(user_id) else { return Ok(()) };
        let update = current.federation_update(user_id);
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": [update] } });
        self.federation.queue_edu(servers.into_iter().collect(), &raw_edu(&edu)?).await
    }

    /// Shares a local user's typing state with the room's other servers.
    pub async fn share_typing(&self, room_id: &RoomId, user_id: &ruma::UserId, typing: bool) -> Result<()> {
        let servers: Vec<OwnedServerName> = self.rooms.remote_servers_in_room(room_id)?.into_iter().collect();
        if servers.is_empty() {
            return Ok(());
        }
        let edu = serde_json::json!({
            "edu_type": "m.typing",
            "content": { "room_id": room_id, "user_id": user_id, "typing": typing },
        });
        self.federation.queue_edu(servers, &raw_edu(&edu)?).await
    }

    /// Shares a local user's public read receipt with the room's other servers.
    pub async fn share_receipt(
        &self,
        room_id: &RoomId,
        user_id: &ruma::UserId,
        event_id: &ruma::EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        let servers: Vec<OwnedServerName> = self.rooms.remote_servers_in_room(room_id)?.into_iter().collect();
        if servers.is_empty() {
            return Ok(());
        }
        let mut data = serde_json::json!({ "ts": super::now_ms() });
        if let Some(thread) = thread {
            data["thread_id"] = serde_json::Value::String(thread.to_owned());
        }
        let edu = serde_json::json!({
            "edu_type": "m.receipt",
            "content": { room_id.as_str(): { "m.read": { user_id.as_str(): { "data": data, "event_ids": [event_id] } } } },
        });
        self.federation.queue_edu(servers, &raw_edu(&edu)?).await
    }

    fn sender_in_room(&self, room_id: &RoomId, origin: &ServerName) -> bool {
        self.rooms.server_in_room(origin, room_id).unwrap_or(false)
            && self.rooms.check_server_acl(origin, room_id).is_ok()
    }
}

fn raw_edu(value: &serde_json::Value) -> Result<ruma::serde::Raw<Edu>> {
    let json = serde_json::to_string(value).map_err(|e| Error::internal(e.to_string()))?;
    ruma::serde::Raw::from_json_string(json).map_err(|e| Error::internal(e.to_string()))
}
