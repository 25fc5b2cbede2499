//! The application-service transaction sender: follows the stream of timeline events from
//! each appservice's cursor, picks the events it is interested in (sender or member in its
//! user namespace, a room or alias in its namespaces), and pushes them with
//! `PUT /_matrix/app/v1/transactions/{txnId}`. A transaction is written before it is sent
//! and resent with the same id and body until accepted, across restarts; failures back off.
//!
//! Appservices registered with `receive_ephemeral` also get typing, receipts and presence in
//! `ephemeral` (and `de.sorunome.msc2409.ephemeral`, which older frameworks read), and the to-device messages of their users' devices in
//! `de.sorunome.msc2409.to_device` (with `to_user_id`/`to_device_id`, as Synapse sends them).
//! Receipts and to-device messages are durable and found by stream position like events
//! (a to-device message leaves its inbox once the transaction carrying it is accepted);
//! typing and presence are in memory and follow the ephemeral serial from the sender's start.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use ieum_appservices::namespaces::AppService;
use ruma::{RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Core, appservice::Appservices, ephemeral::Ephemeral, rooms::Rooms};
use crate::{
    error::{Error, Result},
    storage::appservice::{AppserviceState, AppserviceTxn, StreamEphemeral},
};

/// A to-device message for an appservice: recipient, device, position, message as sent.
type ToDeviceOut = (ruma::OwnedUserId, ruma::OwnedDeviceId, crate::storage::StreamPos, Value);

/// Events per transaction.
const BATCH: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct AppserviceSender {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    appservices: Arc<Appservices>,
    ephemeral: Arc<Ephemeral>,
    client: reqwest::Client,
    /// The ephemeral serial (typing, presence) each appservice has been sent up to; typing
    /// and presence from before the sender started are not replayed.
    serials: HashMap<String, u64>,
    start_serial: u64,
    /// Cursors moved past uninteresting events without a write (re-scanned after a crash).
    states: HashMap<String, AppserviceState>,
    /// Appservices whose last accepted transaction is recorded in `states` only: the write
    /// that persists the next transaction records it too (one synced write per transaction
    /// instead of two), or the sender writes it when it goes idle or stops. A crash before
    /// that resends the accepted transaction under its own txn id, which the appservice
    /// API requires appservices to treat as a repeat.
    unsaved: HashSet<String>,
    backoff: HashMap<String, (Instant, Duration)>,
}

impl AppserviceSender {
    pub fn new(core: Arc<Core>, rooms: Arc<Rooms>, appservices: Arc<Appservices>, ephemeral: Arc<Ephemeral>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let start_serial = ephemeral.typing_serial();
        Self {
            core,
            rooms,
            appservices,
            ephemeral,
            client,
            serials: HashMap::new(),
            start_serial,
            states: HashMap::new(),
            unsaved: HashSet::new(),
            backoff: HashMap::new(),
        }
    }

    /// Runs until shutdown; wakes when the stream moves, and for retries.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if self.appservices.receivers().next().is_none() {
            return;
        }
        let mut positions = self.core.db.subscribe();
        let wants_ephemeral = self.appservices.receivers().any(|s| s.registration.receive_ephemeral);
        let mut serial = self.ephemeral.subscribe_typing();
        loop {
            positions.borrow_and_update();
            serial.borrow_and_update();
            let mut more = false;
            let mut next_retry: Option<Instant> = None;
            let appservices = self.appservices.clone();
            for service in appservices.receivers() {
                let id = service.registration.id.clone();
                if let Some((due, _)) = self.backoff.get(&id)
                    && *due > Instant::now()
                {
                    next_retry = Some(next_retry.map_or(*due, |n| n.min(*due)));
                    continue;
                }
                match self.step(service).await {
                    Ok(again) => {
                        self.backoff.remove(&id);
                        more |= again;
                    }
                    Err(error) => {
                        let wait =
                            self.backoff.get(&id).map_or(Duration::from_secs(1), |(_, w)| (*w * 2).min(MAX_BACKOFF));
                        tracing::info!(appservice = %id, %error, retry_in_ms = wait.as_millis() as u64, "appservice transaction failed");
                        let due = Instant::now() + wait;
                        self.backoff.insert(id, (due, wait));
                        next_retry = Some(next_retry.map_or(due, |n| n.min(due)));
                    }
                }
            }
            if more {
                continue;
            }
            let sleep = next_retry.map_or(Duration::from_secs(30), |due| due.saturating_duration_since(Instant::now()));
            tokio::select! {
                changed = positions.changed() => { if changed.is_err() { return } }
                changed = serial.changed(), if wants_ephemeral => { if changed.is_err() { return } }
                () = tokio::time::sleep(sleep) => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.save_accepted();
                    return;
                }
            }
        }
    }

    /// One transaction (or a skip over uninteresting events); true when more may be waiting.
    async fn step(&mut self, service: &AppService) -> Result<bool> {
        let id = service.registration.id.clone();
        let mut state = match self.states.get(&id) {
            Some(state) => state.clone(),
            None => match self.core.db.appservice_state(&id)? {
                Some(state) => state,
                None => {
                    // A new registration starts at the present: history is not replayed.
                    let state = AppserviceState { cursor: self.core.db.current_pos(), next_txn_id: 1, in_flight: None };
                    self.core.db.put_appservice_state(&id, &state)?;
                    state
                }
            },
        };
        if let Some(txn) = state.in_flight.clone() {
            self.put(service, &txn).await?;
            self.accepted(&id, state, &txn)?;
            return Ok(true);
        }
        let now = self.core.db.current_pos();
        let wants_ephemeral = service.registration.receive_ephemeral;
        let serial_now = self.ephemeral.typing_serial();
        let serial_seen = self.serials.get(&id).copied().unwrap_or(self.start_serial);
        if state.cursor >= now && !(wants_ephemeral && serial_now > serial_seen) {
            if self.unsaved.remove(&id) {
                // Not waited for: losing it in a crash only resends the accepted
                // transaction under its own id (see `unsaved`); the background sweep
                // syncs it shortly.
                let _unwaited = self.core.db.put_appservice_state_pending(&id, &state)?;
            }
            self.states.insert(id, state);
            return Ok(false);
        }
        let mut rooms: HashMap<ruma::OwnedRoomId, bool> = HashMap::new();
        let (events, upto) = self.interesting_events(service, &mut rooms, state.cursor, now)?;
        let (ephemeral, to_device) = if wants_ephemeral {
            self.interesting_ephemeral(service, &mut rooms, serial_seen, state.cursor, upto)?
        } else {
            Default::default()
        };
        self.serials.insert(id.clone(), serial_now);
        if events.is_empty() && ephemeral.is_empty() && to_device.is_empty() {
            state.cursor = upto;
            self.states.insert(id, state);
            return Ok(upto < now);
        }
        let mut body = json!({ "events": events });
        if wants_ephemeral {
            // Also under MSC2409's unstable name: matrix-appservice (node) reads only that one.
            body["de.sorunome.msc2409.ephemeral"] = Value::Array(ephemeral.clone());
            body["ephemeral"] = Value::Array(ephemeral);
            if !to_device.is_empty() {
                body["de.sorunome.msc2409.to_device"] =
                    Value::Array(to_device.iter().map(|(_, _, _, message)| message.clone()).collect());
            }
        }
        let txn = AppserviceTxn {
            txn_id: state.next_txn_id,
            upto,
            body: crate::service::rooms::raw(&body)?,
            to_device: to_device.into_iter().map(|(user, device, pos, _)| (user, device, pos)).collect(),
        };
        state.next_txn_id += 1;
        state.in_flight = Some(txn.clone());
        // Durable before it is sent (a transaction id never names two bodies); the WAL
        // sync is shared with the sends being answered at the same moment, and runs off
        // the async workers.
        let ticket = self.core.db.put_appservice_state_pending(&id, &state)?;
        self.core.durable.wait(&self.core.db, ticket).await?;
        self.unsaved.remove(&id);
        self.states.insert(id.clone(), state.clone());
        self.put(service, &txn).await?;
        self.accepted(&id, state, &txn)?;
        Ok(true)
    }

    /// The appservice accepted `txn`: its to-device messages leave their inboxes, the cursor
    /// moves past it.
    fn accepted(&mut self, id: &str, mut state: AppserviceState, txn: &AppserviceTxn) -> Result<()> {
        for (user_id, device_id, pos) in &txn.to_device {
            self.core.db.delete_to_device(user_id, device_id, *pos)?;
        }
        state.cursor = txn.upto;
        state.in_flight = None;
        self.states.insert(id.to_owned(), state);
        self.unsaved.insert(id.to_owned());
        Ok(())
    }

    /// Persists the accepted transactions not yet written (see `unsaved`).
    fn save_accepted(&mut self) {
        for id in std::mem::take(&mut self.unsaved) {
            if let Some(state) = self.states.get(&id)
                && let Err(error) = self.core.db.put_appservice_state(&id, state)
            {
                tracing::warn!(appservice = %id, %error, "cannot record the last accepted transaction; it will be sent again");
            }
        }
    }

    /// Timeline events after `cursor` the appservice is interested in (at most a batch), and
    /// the position the batch reaches.
    fn interesting_events(
        &self,
        service: &AppService,
        rooms: &mut HashMap<ruma::OwnedRoomId, bool>,
        cursor: crate::storage::StreamPos,
        now: crate::storage::StreamPos,
    ) -> Result<(Vec<Value>, crate::storage::StreamPos)> {
        if cursor >= now {
            return Ok((Vec::new(), now));
        }
        let entries = self.core.db.stream_events(cursor, now, BATCH)?;
        let upto = if entries.len() == BATCH { entries.last().map_or(now, |(pos, _, _)| *pos) } else { now };
        let mut events = Vec::new();
        for (_, room_id, event_id) in entries {
            let Some(pdu) = self.rooms.pdu(&event_id)? else { continue };
            let user_interest = self.user_interest(service, &pdu.sender)
                || pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| UserId::parse(k).ok())
                    .is_some_and(|u| self.user_interest(service, &u));
            if user_interest || self.cached_room_interest(service, rooms, &room_id)? {
                events.push(Value::Object(self.rooms.client_event(&pdu, None, true)));
            }
        }
        Ok((events, upto))
    }

    /// Typing and presence changed after serial `serial_seen`, receipts and to-device messages
    /// written in `(cursor, upto]`, as far as the appservice is interested in them.
    fn interesting_ephemeral(
        &self,
        service: &AppService,
        rooms: &mut HashMap<ruma::OwnedRoomId, bool>,
        serial_seen: u64,
        cursor: crate::storage::StreamPos,
        upto: crate::storage::StreamPos,
    ) -> Result<(Vec<Value>, Vec<ToDeviceOut>)> {
        let mut ephemeral = Vec::new();
        for (room_id, mut typing) in self.ephemeral.typing_changed_since(serial_seen) {
            if self.cached_room_interest(service, rooms, &room_id)? {
                typing["room_id"] = Value::String(room_id.to_string());
                ephemeral.push(typing);
            }
        }
        for (user_id, presence) in self.ephemeral.presence_since(serial_seen) {
            if self.presence_interest(service, rooms, &user_id)? {
                ephemeral.push(presence.event(&user_id));
            }
        }
        let mut to_device = Vec::new();
        if cursor < upto {
            for item in self.core.db.stream_ephemeral(cursor, upto)? {
                match item {
                    StreamEphemeral::Receipt(receipt) => {
                        // A private receipt goes only to the appservice that owns its user.
                        if (receipt.receipt_type == "m.read.private" && !self.user_interest(service, &receipt.user_id))
                            || !self.cached_room_interest(service, rooms, &receipt.room_id)?
                        {
                            continue;
                        }
                        let room_id = receipt.room_id.clone();
                        let viewer = receipt.user_id.clone();
                        if let Some(mut event) = Ephemeral::receipt_event(vec![receipt], &viewer) {
                            event["room_id"] = Value::String(room_id.to_string());
                            ephemeral.push(event);
                        }
                    }
                    StreamEphemeral::ToDevice { pos, recipients } => {
                        for (user_id, device_id) in recipients {
                            if !self.user_interest(service, &user_id) {
                                continue;
                            }
                            for (_, message) in
                                self.core.db.to_device_messages(&user_id, &device_id, pos.saturating_sub(1), pos, 1)?
                            {
                                let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(message.get())
                                else {
                                    continue;
                                };
                                message.insert("to_user_id".into(), Value::String(user_id.to_string()));
                                message.insert("to_device_id".into(), Value::String(device_id.to_string()));
                                to_device.push((user_id.clone(), device_id.clone(), pos, Value::Object(message)));
                            }
                        }
                    }
                }
            }
        }
        Ok((ephemeral, to_device))
    }

    fn cached_room_interest(
        &self,
        service: &AppService,
        rooms: &mut HashMap<ruma::OwnedRoomId, bool>,
        room_id: &RoomId,
    ) -> Result<bool> {
        if let Some(interest) = rooms.get(room_id) {
            return Ok(*interest);
        }
        let interest = self.room_interest(service, room_id)?;
        rooms.insert(room_id.to_owned(), interest);
        Ok(interest)
    }

    /// A user in the namespace, or one who shares a room the appservice is interested in.
    fn presence_interest(
        &self,
        service: &AppService,
        rooms: &mut HashMap<ruma::OwnedRoomId, bool>,
        user_id: &UserId,
    ) -> Result<bool> {
        if self.user_interest(service, user_id) {
            return Ok(true);
        }
        for (room_id, membership) in self.core.db.rooms_of_user(user_id)?.iter() {
            if membership.membership == "join" && self.cached_room_interest(service, rooms, &room_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn user_interest(&self, service: &AppService, user_id: &UserId) -> bool {
        user_id.server_name() == self.core.server_name()
            && (service.is_interested_in_user(user_id.as_str())
                || user_id.localpart() == service.registration.sender_localpart)
    }

    /// A room the appservice cares about: its id or an alias in the namespaces, or a member
    /// (joined or invited) in the user namespace.
    fn room_interest(&self, service: &AppService, room_id: &RoomId) -> Result<bool> {
        if service.is_interested_in_room(room_id.as_str()) {
            return Ok(true);
        }
        if self.core.db.aliases_of_room(room_id)?.iter().any(|a| service.is_interested_in_alias(a.as_str())) {
            return Ok(true);
        }
        Ok(self.core.db.members(room_id)?.iter().any(|(user, membership)| {
            (membership == "join" || membership == "invite") && self.user_interest(service, user)
        }))
    }

    async fn put(&self, service: &AppService, txn: &AppserviceTxn) -> Result<()> {
        let Some(url) = &service.registration.url else { return Ok(()) };
        let url = format!("{}/_matrix/app/v1/transactions/{}", url.trim_end_matches('/'), txn.txn_id);
        let response = self
            .client
            .put(&url)
            .bearer_auth(&service.registration.hs_token)
            .header("content-type", "application/json")
            .body(txn.body.get().to_owned())
            .send()
            .await
            .map_err(|e| Error::internal(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::internal(format!("{url}: HTTP {}", response.status())));
        }
        Ok(())
    }
}
