//! The push-gateway sender: drains the durable delivery queue (`PushStore`), one POST to
//! `/_matrix/push/v1/notify` per queued (notification, pusher), each in its own task with a
//! timeout so a hanging gateway holds up nobody else; failures back off exponentially up to
//! a retry and age limit; pushkeys the gateway lists as `rejected` lose their pusher.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    events::{StateEventType, TimelineEventType},
    push::Action,
};
use serde_json::{Map, Value, json};
use tokio::{sync::watch, task::JoinSet};

use super::Push;
use crate::{
    error::Result,
    service::{Core, now_ms, rooms::Rooms},
    storage::{DeliveryRecord, PusherRecord},
};

/// Deliveries read from the queue per pass.
const BATCH: usize = 1000;
/// The longest the task sleeps without looking at the queue.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// Why the sender loop woke up.
enum Wake {
    Shutdown,
    Doorbell,
    Timer,
    Finished,
}

pub struct PushSender {
    core: Arc<Core>,
    push: Arc<Push>,
    rooms: Arc<Rooms>,
    client: reqwest::Client,
    in_flight: Arc<Mutex<HashSet<(u64, u32)>>>,
}

/// The outcome of one POST.
enum Outcome {
    Delivered {
        rejected: Vec<String>,
    },
    /// Worth retrying (connection failure, timeout, 5xx, 429).
    Failed(String),
    /// Never worth retrying (4xx, the event or pusher is gone).
    Dropped(String),
}

impl PushSender {
    pub fn new(core: Arc<Core>, push: Arc<Push>, rooms: Arc<Rooms>) -> Self {
        let timeout = Duration::from_millis(core.config.push.request_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "push HTTP client with defaults");
                reqwest::Client::new()
            });
        Self { core, push, rooms, client, in_flight: Arc::default() }
    }

    /// Runs until shutdown: every pass starts the due deliveries that are not in flight, then
    /// sleeps until the doorbell, the next due retry, a finished delivery or shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        loop {
            let next_due = match this.start_due(&mut tasks).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "push queue scan failed");
                    Some(now_ms() + 5_000)
                }
            };
            let sleep = next_due
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms()).max(10)))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            let wake = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
                _ = this.push.doorbell.notified() => Wake::Doorbell,
                _ = tokio::time::sleep(sleep) => Wake::Timer,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => Wake::Finished,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Doorbell | Wake::Timer | Wake::Finished => {}
            }
        }
        // Deliveries in flight are abandoned; they are still queued and go out after a restart.
        tasks.abort_all();
    }

    /// Starts every due delivery; returns when the earliest one not yet due is due.
    async fn start_due(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<Option<u64>> {
        // A delivery is queued in its event's batch, readable before that batch is durable:
        // only events at visible (durable) positions are pushed; a later one is looked at again
        // shortly (its append rings the doorbell too).
        let visible = self.core.db.current_pos();
        let queued = self.core.blocking(|db| Ok(db.queued_deliveries(BATCH)?)).await?;
        let now = now_ms();
        let mut next_due: Option<u64> = None;
        for delivery in queued {
            if delivery.seq.0 > visible {
                next_due = Some(next_due.map_or(now + 20, |d| d.min(now + 20)));
                continue;
            }
            if delivery.next_attempt_ts > now {
                next_due = Some(next_due.map_or(delivery.next_attempt_ts, |d| d.min(delivery.next_attempt_ts)));
                continue;
            }
            if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(delivery.seq) {
                continue;
            }
            let this = self.clone();
            tasks.spawn(async move {
                let seq = delivery.seq;
                if let Err(error) = this.deliver(delivery).await {
                    tracing::warn!(%error, "push delivery bookkeeping failed");
                }
                this.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq);
            });
        }
        Ok(next_due)
    }

    async fn deliver(&self, mut delivery: DeliveryRecord) -> Result<()> {
        let outcome = self.attempt(&delivery).await;
        let config = &self.core.config.push;
        match outcome {
            Outcome::Delivered { rejected } => {
                for pushkey in rejected {
                    tracing::info!(user_id = %delivery.user_id, app_id = %delivery.app_id, "push gateway rejected a pushkey; removing the pusher");
                    let ids = ruma::api::client::push::PusherIds::new(pushkey, delivery.app_id.clone());
                    self.push.delete_pusher(&delivery.user_id, ids).await?;
                }
                let seq = delivery.seq;
                self.core.blocking(move |db| Ok(db.delete_delivery(seq)?)).await
            }
            Outcome::Dropped(reason) => {
                tracing::info!(user_id = %delivery.user_id, event_id = %delivery.event_id, %reason, "push dropped");
                let seq = delivery.seq;
                self.core.blocking(move |db| Ok(db.delete_delivery(seq)?)).await
            }
            Outcome::Failed(reason) => {
                delivery.attempts += 1;
                let now = now_ms();
                if delivery.attempts >= config.max_attempts
                    || now.saturating_sub(delivery.queued_ts) > config.max_age_ms
                {
                    tracing::warn!(user_id = %delivery.user_id, event_id = %delivery.event_id, %reason, attempts = delivery.attempts, "push given up");
                    let seq = delivery.seq;
                    return self.core.blocking(move |db| Ok(db.delete_delivery(seq)?)).await;
                }
                let backoff = config
                    .initial_backoff_ms
                    .saturating_mul(1u64 << (delivery.attempts - 1).min(30))
                    .min(config.max_backoff_ms);
                delivery.next_attempt_ts = now + backoff;
                tracing::debug!(user_id = %delivery.user_id, %reason, backoff, "push failed; will retry");
                self.core.blocking(move |db| Ok(db.update_delivery(&delivery)?)).await
            }
        }
    }

    async fn attempt(&self, delivery: &DeliveryRecord) -> Outcome {
        let pusher = match self.core.db.pushers(&delivery.user_id) {
            Ok(list) => list.into_iter().find(|p| p.app_id == delivery.app_id && p.pushkey == delivery.pushkey),
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let Some(pusher) = pusher else { return Outcome::Dropped("the pusher is gone".into()) };
        let pusher_json: Value = serde_json::from_str(pusher.pusher.get()).unwrap_or(Value::Null);
        let Some(url) = pusher_json.pointer("/data/url").and_then(Value::as_str).map(ToOwned::to_owned) else {
            return Outcome::Dropped("the pusher has no URL".into());
        };
        let body = match self.notification_body(delivery, &pusher, &pusher_json) {
            Ok(Some(body)) => body,
            Ok(None) => return Outcome::Dropped("the event is gone".into()),
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let rejected = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("rejected").cloned())
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .unwrap_or_default();
            return Outcome::Delivered { rejected };
        }
        if status.is_client_error() && status.as_u16() != 429 {
            return Outcome::Dropped(format!("gateway answered {status}"));
        }
        Outcome::Failed(format!("gateway answered {status}"))
    }

    /// The spec's notify body for one delivery (None when the event is gone).
    fn notification_body(
        &self,
        delivery: &DeliveryRecord,
        pusher: &PusherRecord,
        pusher_json: &Value,
    ) -> Result<Option<Value>> {
        let Some(pdu) = self.rooms.pdu(&delivery.event_id)? else { return Ok(None) };
        let actions: Vec<Action> = serde_json::from_str(delivery.actions.get()).unwrap_or_default();
        let mut tweaks = Map::new();
        for action in &actions {
            // A tweak serialises as {"set_tweak": name, "value": value}; the gateway gets
            // {name: value} (value true when absent, as for `highlight`).
            if let Action::SetTweak(tweak) = action
                && let Ok(Value::Object(map)) = serde_json::to_value(tweak)
                && let Some(Value::String(name)) = map.get("set_tweak")
            {
                tweaks.insert(name.clone(), map.get("value").cloned().unwrap_or(Value::Bool(true)));
            }
        }
        let high = pdu.kind == TimelineEventType::RoomEncrypted
            || tweaks.get("highlight").is_some_and(|v| v != &Value::Bool(false))
            || tweaks.contains_key("sound");
        let mut data = pusher_json.get("data").cloned().unwrap_or_else(|| json!({}));
        if let Value::Object(map) = &mut data {
            map.remove("url");
        }
        let event_id_only = pusher_json.pointer("/data/format").and_then(Value::as_str) == Some("event_id_only");
        let unread = self.push.total_unread(&delivery.user_id)?;
        let device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.pushkey_ts / 1000,
            "data": data,
            "tweaks": tweaks,
        });
        let mut notification = json!({
            "event_id": pdu.event_id,
            "room_id": pdu.room_id,
            "counts": { "unread": unread },
            "prio": if high { "high" } else { "low" },
            "devices": [device],
        });
        if !event_id_only && let Value::Object(map) = &mut notification {
            map.insert("type".into(), Value::String(pdu.kind.to_string()));
            map.insert("sender".into(), Value::String(pdu.sender.to_string()));
            map.insert("content".into(), serde_json::from_str(pdu.content.get()).unwrap_or(Value::Null));
            if let Ok(Some(state)) = self.rooms.current_state(&pdu.room_id) {
                if let Ok(Some(member)) = self.rooms.state_pdu(&state, &StateEventType::RoomMember, pdu.sender.as_str())
                    && let Some(name) = member.content_str("displayname")
                {
                    map.insert("sender_display_name".into(), Value::String(name));
                }
                if let Ok(Some(name)) = self.rooms.state_pdu(&state, &StateEventType::RoomName, "")
                    && let Some(name) = name.content_str("name")
                {
                    map.insert("room_name".into(), Value::String(name));
                }
            }
            if pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(delivery.user_id.as_str())
            {
                map.insert("user_is_target".into(), Value::Bool(true));
            }
        }
        Ok(Some(json!({ "notification": notification })))
    }
}
