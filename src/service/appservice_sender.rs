//! The application-service transaction sender: follows the stream of timeline events from
//! each appservice's cursor, picks the events it is interested in (sender or member in its
//! user namespace, a room or alias in its namespaces), and pushes them with
//! `PUT /_matrix/app/v1/transactions/{txnId}`. A transaction is written before it is sent
//! and resent with the same id and body until accepted, across restarts; failures back off.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ieum_appservices::namespaces::AppService;
use ruma::{RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Core, appservice::Appservices, rooms::Rooms};
use crate::{
    error::{Error, Result},
    storage::appservice::{AppserviceState, AppserviceTxn},
};

/// Events per transaction.
const BATCH: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct AppserviceSender {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    appservices: Arc<Appservices>,
    client: reqwest::Client,
    /// Cursors moved past uninteresting events without a write (re-scanned after a crash).
    states: HashMap<String, AppserviceState>,
    backoff: HashMap<String, (Instant, Duration)>,
}

impl AppserviceSender {
    pub fn new(core: Arc<Core>, rooms: Arc<Rooms>, appservices: Arc<Appservices>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { core, rooms, appservices, client, states: HashMap::new(), backoff: HashMap::new() }
    }

    /// Runs until shutdown; wakes when the stream moves, and for retries.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if self.appservices.receivers().next().is_none() {
            return;
        }
        let mut positions = self.core.db.subscribe();
        loop {
            positions.borrow_and_update();
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
                () = tokio::time::sleep(sleep) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
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
            state.cursor = txn.upto;
            state.in_flight = None;
            self.core.db.put_appservice_state(&id, &state)?;
            self.states.insert(id, state);
            return Ok(true);
        }
        let now = self.core.db.current_pos();
        if state.cursor >= now {
            self.states.insert(id, state);
            return Ok(false);
        }
        let entries = self.core.db.stream_events(state.cursor, now, BATCH)?;
        let upto = if entries.len() == BATCH { entries.last().map_or(now, |(pos, _, _)| *pos) } else { now };
        let mut events = Vec::new();
        let mut rooms: HashMap<ruma::OwnedRoomId, bool> = HashMap::new();
        for (_, room_id, event_id) in entries {
            let Some(pdu) = self.rooms.pdu(&event_id)? else { continue };
            let room_interest = match rooms.get(&room_id) {
                Some(interest) => *interest,
                None => {
                    let interest = self.room_interest(service, &room_id)?;
                    rooms.insert(room_id.clone(), interest);
                    interest
                }
            };
            let user_interest = self.user_interest(service, &pdu.sender)
                || pdu
                    .state_key
                    .as_deref()
                    .and_then(|k| UserId::parse(k).ok())
                    .is_some_and(|u| self.user_interest(service, &u));
            if room_interest || user_interest {
                events.push(Value::Object(self.rooms.client_event(&pdu, None, true)));
            }
        }
        if events.is_empty() {
            state.cursor = upto;
            self.states.insert(id, state);
            return Ok(upto < now);
        }
        let txn = AppserviceTxn {
            txn_id: state.next_txn_id,
            upto,
            body: crate::service::rooms::raw(&json!({ "events": events }))?,
        };
        state.next_txn_id += 1;
        state.in_flight = Some(txn.clone());
        self.core.db.put_appservice_state(&id, &state)?;
        self.states.insert(id.clone(), state.clone());
        self.put(service, &txn).await?;
        state.cursor = upto;
        state.in_flight = None;
        self.core.db.put_appservice_state(&id, &state)?;
        self.states.insert(id, state);
        Ok(true)
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
