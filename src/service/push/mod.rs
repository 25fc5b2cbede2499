//! Push: the user's push rules (stored as `m.push_rules` account data, merged with the current
//! server defaults on read), evaluating them for every appended event, notification counts,
//! `/notifications`, and pushers. Delivery to push gateways lives in `sender.rs`.
//!
//! Evaluation runs under the room lock while an event is appended; its result
//! (`PushWrites`: notification records, queued gateway deliveries) is written in the event's
//! own atomic batch, so counts and deliveries can never disagree with the timeline.

pub mod sender;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
    api::client::push::{Pusher, PusherIds, PusherKind},
    events::StateEventType,
    push::{
        Action, AnyPushRule, FlattenedJson, InsertPushRuleError, NewPushRule, PushConditionPowerLevelsCtx,
        PushConditionRoomCtx, RemovePushRuleError, RuleKind, Ruleset,
    },
    serde::Raw,
};
use serde_json::{Value, json, value::RawValue};

use super::{
    Core, now_ms,
    rooms::{Pdu, Rooms, StateMap, raw},
};
use crate::{
    error::{Error, Result},
    hash::HashMap,
    storage::{DeliveryRecord, EventNotifications, MemberNotification, PushWrites, PusherRecord, StreamPos},
};

/// The account data type the rules are stored under.
pub const PUSH_RULES: &str = "m.push_rules";
/// Spec limits on pusher ids.
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;
/// The path every HTTP pusher's URL must have (spec: `data.url`).
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Cached rulesets before the caches are cleared (a bound on memory).
const CACHE_LIMIT: usize = 100_000;

/// A user's unread counts in one room.
#[derive(Clone, Debug, Default)]
pub struct RoomCounts {
    /// Every unread notification (main timeline and threads).
    pub all: (u64, u64),
    /// The main timeline only (events outside threads, thread roots included).
    pub main: (u64, u64),
    /// Per thread root: (notifications, highlights).
    pub threads: BTreeMap<String, (u64, u64)>,
}

pub struct Push {
    core: Arc<Core>,
    /// Users an appservice owns exclusively get no notifications (they have no clients of
    /// their own; Synapse leaves them out the same way). A bridge's import into a room of
    /// ghosts would otherwise evaluate every ghost's rules for every message.
    appservices: Arc<super::appservice::Appservices>,
    /// Each user's rules, and whether they are the server defaults (no rules stored).
    rules: Mutex<HashMap<OwnedUserId, (Arc<Ruleset>, bool)>>,
    /// Serialises read-modify-write of rulesets (rare: a user editing rules).
    rules_write: tokio::sync::Mutex<()>,
    /// The delivery task's doorbell (the database is the queue).
    pub(crate) doorbell: tokio::sync::Notify,
    /// Read positions: user → room → [(thread, position, stream position it was read at)];
    /// valid while `read_position_changed_after` that stream position is false. Nested so
    /// that a lookup borrows its key (every woken /sync reads two of them per room).
    read_positions: Mutex<ReadPositions>,
}

#[derive(Default)]
struct ReadPositions {
    entries: HashMap<OwnedUserId, HashMap<ruma::OwnedRoomId, Vec<(Option<String>, StreamPos, StreamPos)>>>,
    len: usize,
}

impl ReadPositions {
    fn get(&self, user_id: &UserId, room_id: &RoomId, thread: Option<&str>) -> Option<(StreamPos, StreamPos)> {
        let threads = self.entries.get(user_id)?.get(room_id)?;
        threads.iter().find(|(t, _, _)| t.as_deref() == thread).map(|&(_, pos, as_of)| (pos, as_of))
    }

    fn insert(&mut self, user_id: &UserId, room_id: &RoomId, thread: Option<&str>, value: (StreamPos, StreamPos)) {
        if self.len >= MAX_READ_POSITIONS {
            self.entries.clear();
            self.len = 0;
        }
        let threads = self.entries.entry(user_id.to_owned()).or_default().entry(room_id.to_owned()).or_default();
        match threads.iter_mut().find(|(t, _, _)| t.as_deref() == thread) {
            Some(entry) => (entry.1, entry.2) = value,
            None => {
                threads.push((thread.map(str::to_owned), value.0, value.1));
                self.len += 1;
            }
        }
    }
}

/// Read positions remembered at most.
const MAX_READ_POSITIONS: usize = 100_000;

impl Push {
    pub fn new(core: Arc<Core>, appservices: Arc<super::appservice::Appservices>) -> Self {
        Self {
            core,
            appservices,
            rules: Mutex::default(),
            rules_write: tokio::sync::Mutex::new(()),
            doorbell: tokio::sync::Notify::new(),
            read_positions: Mutex::default(),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Rules

    /// The user's rules: the stored set merged with today's server defaults (cached).
    pub fn ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        Ok(self.ruleset_and_default(user_id)?.0)
    }

    /// The user's rules, and whether they are the server defaults (nothing stored).
    fn ruleset_and_default(&self, user_id: &UserId) -> Result<(Arc<Ruleset>, bool)> {
        if let Some(entry) = self.rules.lock().unwrap_or_else(|e| e.into_inner()).get(user_id) {
            return Ok(entry.clone());
        }
        let stored = self.core.db.account_data(user_id, None, PUSH_RULES)?;
        let entry = (Arc::new(stored_or_default(stored.as_deref(), user_id)), stored.is_none());
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(user_id.to_owned(), entry.clone());
        Ok(entry)
    }

    /// The `m.push_rules` account data content as clients see it (`{"global": ruleset}`).
    pub fn rules_content(&self, user_id: &UserId) -> Result<Box<RawValue>> {
        raw(&serde_json::json!({ "global": &*self.ruleset(user_id)? }))
    }

    /// Applies a change to the user's rules and stores the result as account data (one write,
    /// at a new stream position, so `/sync` delivers it).
    async fn update_rules(&self, user_id: &UserId, change: impl FnOnce(&mut Ruleset) -> Result<()>) -> Result<()> {
        let _guard = self.rules_write.lock().await;
        let mut rules = (*self.ruleset(user_id)?).clone();
        change(&mut rules)?;
        let content = raw(&serde_json::json!({ "global": &rules }))?;
        let owned_user = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.put_account_data(&owned_user, None, PUSH_RULES, &content)?)).await?;
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).insert(user_id.to_owned(), (Arc::new(rules), false));
        Ok(())
    }

    pub fn rule(&self, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<ruma::api::client::push::PushRule> {
        let rules = self.ruleset(user_id)?;
        let rule = rules.get(kind, rule_id).ok_or_else(|| Error::not_found("Unknown push rule."))?;
        Ok(rule.to_owned().into())
    }

    pub async fn set_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<()> {
        self.update_rules(user_id, |rules| {
            rules.insert(rule, after, before).map_err(|error| match error {
                InsertPushRuleError::ServerDefaultRuleId => {
                    Error::invalid_param("Rule ids starting with '.' are reserved for server-default rules.")
                }
                InsertPushRuleError::InvalidRuleId => Error::invalid_param("Invalid rule id."),
                InsertPushRuleError::RelativeToServerDefaultRule => {
                    Error::bad_json("A rule cannot be placed relative to a server-default rule.")
                }
                InsertPushRuleError::UnknownRuleId => Error::not_found("The before or after rule does not exist."),
                InsertPushRuleError::BeforeHigherThanAfter => {
                    Error::bad_json("The before rule has a higher priority than the after rule.")
                }
                other => Error::bad_json(other.to_string()),
            })
        })
        .await
    }

    pub async fn delete_rule(&self, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
        self.update_rules(user_id, |rules| {
            rules.remove(kind, rule_id).map_err(|error| match error {
                RemovePushRuleError::ServerDefault => Error::invalid_param("Server-default rules cannot be deleted."),
                RemovePushRuleError::NotFound => Error::not_found("Unknown push rule."),
                other => Error::bad_json(other.to_string()),
            })
        })
        .await
    }

    pub async fn set_enabled(&self, user_id: &UserId, kind: RuleKind, rule_id: &str, enabled: bool) -> Result<()> {
        self.update_rules(user_id, |rules| {
            rules.set_enabled(kind, rule_id, enabled).map_err(|_| Error::not_found("Unknown push rule."))
        })
        .await
    }

    pub async fn set_actions(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        self.update_rules(user_id, |rules| {
            rules.set_actions(kind, rule_id, actions).map_err(|_| Error::not_found("Unknown push rule."))
        })
        .await
    }

    // ----------------------------------------------------------------------------------------
    // Evaluation

    /// Evaluates every local joined member's rules (except the sender's) for an event about to
    /// be appended; `state` is the room state before it. The caller holds the room lock and
    /// writes the result in the event's batch.
    pub async fn evaluate(
        &self,
        rooms: &Rooms,
        pdu: &Pdu,
        state: &StateMap,
        version: &RoomVersionId,
    ) -> Result<PushWrites> {
        let mut writes = PushWrites::default();
        let server_name = self.core.server_name();
        if pdu.sender.server_name() == server_name {
            writes.sender_read = Some((pdu.sender.clone(), pdu.room_id.clone()));
        }
        let members = self.core.db.members(&pdu.room_id)?;
        let mut joined = 0usize;
        let mut targets: Vec<&UserId> = Vec::new();
        for (user, membership) in members.iter() {
            if membership != "join" {
                continue;
            }
            joined += 1;
            if user.server_name() == server_name && *user != pdu.sender && !self.appservices.owns_exclusively(user) {
                targets.push(user);
            }
        }
        // The invitee of an invite is not a member yet, but `.m.rule.invite_for_me` is for them.
        let invitee: Option<OwnedUserId> = (pdu.membership_str() == Some("invite"))
            .then(|| pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok()))
            .flatten();
        if let Some(invitee) = invitee.as_deref()
            && invitee.server_name() == server_name
            && invitee != pdu.sender
            && !self.appservices.owns_exclusively(invitee)
            && !targets.contains(&invitee)
        {
            targets.push(invitee);
        }
        if targets.is_empty() {
            return Ok(writes);
        }
        let power_levels: Option<PushConditionPowerLevelsCtx> =
            rooms.power_levels(state, version).ok().map(PushConditionPowerLevelsCtx::from);
        let event: Raw<ruma::events::AnySyncTimelineEvent> = Raw::from_json(pdu.stored.pdu.clone());
        // Flattened once for every member (ruma's `get_actions` would flatten it per call).
        let flattened = FlattenedJson::from_raw(&event);
        let content = pdu.content_value();
        let intentional_mentions = content.contains_key("m.mentions");
        let thread_id = thread_of(pdu);
        let member_count = UInt::try_from(joined as u64).unwrap_or_default();
        let now = now_ms();
        // Users with the default rules whom nothing in the event singles out (not mentioned,
        // neither their localpart nor their display name in the body, not a member event)
        // all get the same actions: evaluated once per event (a 1,000-member room would
        // otherwise evaluate the same rules 1,000 times).
        let body_lower = content.get("body").and_then(Value::as_str).map(str::to_lowercase).unwrap_or_default();
        let mentioned: Vec<&str> = content
            .get("m.mentions")
            .and_then(|m| m.get("user_ids"))
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let member_event = pdu.kind == ruma::events::TimelineEventType::RoomMember;
        // The shared evaluation: its actions, whether they notify / highlight, and their JSON.
        let mut shared: Option<(bool, bool, Arc<RawValue>)> = None;
        let mut notified = Vec::new();
        for &user_id in &targets {
            let (rules, is_default) = self.ruleset_and_default(user_id)?;
            let member = rooms.state_pdu(state, &StateEventType::RoomMember, user_id.as_str())?;
            let display_name = member.as_deref().and_then(Pdu::displayname).unwrap_or(user_id.localpart());
            let generic = is_default
                && !member_event
                && !display_name.is_empty()
                && !mentioned.contains(&user_id.as_str())
                && !contains_lowercased(&body_lower, user_id.localpart())
                && !contains_lowercased(&body_lower, display_name);
            let (notify, highlight, actions_json) = match (&shared, generic) {
                (Some((notify, highlight, json)), true) => (*notify, *highlight, json.clone()),
                _ => {
                    let mut context = PushConditionRoomCtx::new(
                        pdu.room_id.clone(),
                        member_count,
                        user_id.to_owned(),
                        display_name.to_owned(),
                    );
                    if let Some(power_levels) = &power_levels {
                        context = context.with_power_levels(power_levels.clone());
                    }
                    let mut actions: &[Action] = &[];
                    for rule in rules.iter() {
                        if intentional_mentions && LEGACY_MENTION_RULES.contains(&rule.rule_id()) {
                            continue;
                        }
                        if rule.applies(&flattened, &context).await {
                            actions = rule.actions();
                            break;
                        }
                    }
                    let notify = actions.iter().any(Action::should_notify);
                    let highlight = actions.iter().any(Action::is_highlight);
                    let json: Arc<RawValue> = raw(&actions)?.into();
                    if generic {
                        shared = Some((notify, highlight, json.clone()));
                    }
                    (notify, highlight, json)
                }
            };
            if !notify && !highlight {
                continue;
            }
            if notify && self.core.config.push.enabled {
                for pusher in self.pushers_of(user_id)?.iter() {
                    writes.deliveries.push(DeliveryRecord {
                        user_id: user_id.to_owned(),
                        app_id: pusher.app_id.clone(),
                        pushkey: pusher.pushkey.clone(),
                        room_id: pdu.room_id.clone(),
                        event_id: pdu.event_id.clone(),
                        actions: actions_json.as_ref().to_owned(),
                        queued_ts: now,
                        attempts: 0,
                        next_attempt_ts: 0,
                        seq: (0, 0),
                    });
                }
            }
            notified.push(MemberNotification { user_id: user_id.to_owned(), actions: actions_json, notify, highlight });
        }
        if !notified.is_empty() {
            writes.notifications =
                Some(EventNotifications { room_id: pdu.room_id.clone(), thread_id, ts: now, members: notified });
        }
        Ok(writes)
    }

    /// Called after an append's batch is durable: wakes the delivery task when it queued work.
    pub fn appended(&self, writes_had_deliveries: bool) {
        if writes_had_deliveries {
            self.doorbell.notify_one();
        }
    }

    // ----------------------------------------------------------------------------------------
    // Counts and /notifications

    /// The stream position up to which the user has read the room's main timeline (and, for an
    /// unthreaded receipt, every thread): the newest unthreaded `m.read` / `m.read.private`
    /// receipt, or the user's own latest event.
    fn read_pos(&self, room_id: &RoomId, user_id: &UserId, thread: Option<&str>) -> Result<StreamPos> {
        let cached = self.read_positions.lock().unwrap_or_else(|e| e.into_inner()).get(user_id, room_id, thread);
        if let Some((pos, as_of)) = cached
            && !self.core.db.read_position_changed_after(user_id, room_id, as_of)
        {
            return Ok(pos);
        }
        // Every write at or below `as_of` is visible to the reads below.
        let as_of = self.core.db.current_pos();
        let mut pos = 0;
        let mut cacheable = true;
        for receipt_type in ["m.read", "m.read.private"] {
            if let Some(receipt) = self.core.db.receipt(room_id, receipt_type, user_id, thread)? {
                match self.core.db.event_pos(&receipt.event_id)? {
                    Some(event_pos) => pos = pos.max(event_pos),
                    // A receipt for an event not here yet counts once the event arrives.
                    None => cacheable = false,
                }
            }
        }
        if thread.is_none()
            && let Some(sent) = self.core.db.sent_read_pos(user_id, room_id)?
        {
            pos = pos.max(sent);
        }
        if cacheable {
            self.read_positions.lock().unwrap_or_else(|e| e.into_inner()).insert(
                user_id,
                room_id,
                thread,
                (pos, as_of),
            );
        }
        Ok(pos)
    }

    /// Unread notification and highlight counts of a user in a room: notified events after the
    /// unthreaded read position, less those a threaded receipt (`main` or the thread's root) covers.
    ///
    /// Only events at or before `upto` count: a sync response passes the position it covers, so
    /// its counts never include an event its timeline does not have yet. (An append's records are
    /// readable as soon as its batch is written, before its position is published.)
    pub fn counts(&self, room_id: &RoomId, user_id: &UserId, upto: StreamPos) -> Result<RoomCounts> {
        let unthreaded = self.read_pos(room_id, user_id, None)?;
        let records = self.core.db.room_notifications(user_id, room_id, unthreaded)?;
        let mut counts = RoomCounts::default();
        // Read positions of the threads met so far (`main` for records outside threads).
        let mut thread_read: HashMap<&str, StreamPos> = HashMap::default();
        for record in records.iter().take_while(|r| r.pos <= upto) {
            let key = record.thread_id.as_deref().unwrap_or("main");
            let read = match thread_read.get(key) {
                Some(&pos) => pos,
                None => {
                    let pos = self.read_pos(room_id, user_id, Some(key))?;
                    thread_read.insert(key, pos);
                    pos
                }
            };
            if record.pos <= read {
                continue;
            }
            let (n, h) = (u64::from(record.notify), u64::from(record.highlight));
            counts.all.0 += n;
            counts.all.1 += h;
            match &record.thread_id {
                Some(thread) => {
                    let entry = counts.threads.entry(thread.clone()).or_default();
                    entry.0 += n;
                    entry.1 += h;
                }
                None => {
                    counts.main.0 += n;
                    counts.main.1 += h;
                }
            }
        }
        Ok(counts)
    }

    /// Total unread notifications over the user's joined rooms (the badge a push carries), up to
    /// the visible position (the sender pushes only events at visible positions).
    pub fn total_unread(&self, user_id: &UserId) -> Result<u64> {
        let upto = self.core.db.current_pos();
        let mut total = 0;
        for (room_id, membership) in self.core.db.rooms_of_user(user_id)?.iter() {
            if membership.membership == "join" {
                total += self.counts(&room_id, user_id, upto)?.all.0;
            }
        }
        Ok(total)
    }

    /// `GET /notifications`: notified events, newest first; `from` is the token of a previous
    /// page (a stream position), `only_highlight` keeps highlights only.
    pub fn notifications(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        from: Option<&str>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<ruma::api::client::push::get_notifications::v3::Notification>, Option<String>)> {
        use ruma::api::client::push::get_notifications::v3::Notification;
        let before = match from {
            Some(token) => token.parse::<StreamPos>().map_err(|_| Error::invalid_param("Invalid from token."))?,
            None => StreamPos::MAX,
        };
        let limit = limit.clamp(1, 1000);
        let mut out = Vec::new();
        let mut cursor = before;
        let mut read_positions: HashMap<OwnedRoomId, StreamPos> = HashMap::default();
        let mut exhausted = false;
        while out.len() < limit {
            let batch = self.core.db.user_notifications(user_id, cursor, 200)?;
            if batch.len() < 200 {
                exhausted = true;
            }
            for record in batch {
                cursor = record.pos;
                if (only_highlight && !record.highlight) || !record.notify && !record.highlight {
                    continue;
                }
                let Some(pdu) = rooms.pdu(&record.event_id)? else { continue };
                let read_pos = match read_positions.get(&record.room_id) {
                    Some(pos) => *pos,
                    None => {
                        let pos = self.read_pos(&record.room_id, user_id, None)?;
                        read_positions.insert(record.room_id.clone(), pos);
                        pos
                    }
                };
                let actions: Vec<Action> = serde_json::from_str(record.actions.get()).unwrap_or_default();
                let event = rooms.client_event(&pdu, Some((user_id, None)), true);
                let mut notification = Notification::new(
                    actions,
                    Raw::from_json(raw(&event)?),
                    record.pos <= read_pos,
                    record.room_id.clone(),
                    ruma::MilliSecondsSinceUnixEpoch(UInt::new_saturating(record.ts)),
                );
                notification.profile_tag = None;
                out.push(notification);
                if out.len() >= limit {
                    break;
                }
            }
            if exhausted {
                break;
            }
        }
        let next = (out.len() >= limit).then(|| cursor.to_string());
        Ok((out, next))
    }

    // ----------------------------------------------------------------------------------------
    // Pushers

    /// The user's pushers (read from storage each time: a short prefix scan, and logout
    /// removes pushers without going through this service, so a cache could go stale).
    fn pushers_of(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        Ok(self.core.db.pushers(user_id)?)
    }

    /// `GET /pushers`.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<Pusher>> {
        let mut out = Vec::new();
        for record in self.core.db.pushers(user_id)? {
            match serde_json::from_str::<Pusher>(record.pusher.get()) {
                Ok(pusher) => out.push(pusher),
                Err(error) => tracing::warn!(%user_id, app_id = %record.app_id, %error, "stored pusher does not parse"),
            }
        }
        Ok(out)
    }

    /// `POST /pushers/set` with a pusher: validates and stores it for the session's device.
    pub async fn set_pusher(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        pusher: Pusher,
        append: bool,
    ) -> Result<()> {
        validate_ids(&pusher.ids)?;
        match &pusher.kind {
            PusherKind::Http(data) => validate_url(&data.url)?,
            PusherKind::Email(_) => {
                return Err(Error::invalid_param("Email pushers are not supported by this server."));
            }
            _ => return Err(Error::invalid_param("Unknown pusher kind.")),
        }
        let record = PusherRecord {
            user_id: user_id.to_owned(),
            device_id: Some(device_id.to_owned()),
            app_id: pusher.ids.app_id.clone(),
            pushkey: pusher.ids.pushkey.clone(),
            pusher: raw(&pusher)?,
            pushkey_ts: now_ms(),
        };
        self.core.blocking(move |db| Ok(db.put_pusher(&record, !append)?)).await?;
        Ok(())
    }

    /// `POST /pushers/set` with `kind: null`: removes the pusher (no error if it is unknown,
    /// as Synapse answers).
    pub async fn delete_pusher(&self, user_id: &UserId, ids: PusherIds) -> Result<()> {
        validate_ids(&ids)?;
        let user = user_id.to_owned();
        self.core.blocking(move |db| Ok(db.delete_pusher(&user, &ids.app_id, &ids.pushkey)?)).await?;
        Ok(())
    }

    /// Removes the pushers a device set (the device was deleted or logged out).
    pub async fn delete_device_pushers(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<()> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.core.blocking(move |db| Ok(db.delete_device_pushers(&user, &device)?)).await?;
        Ok(())
    }
}

/// Whether `haystack_lower` (already lowercased) contains `needle`, ignoring case: the
/// default rules' display-name and localpart checks, per member of the room. An ASCII
/// needle is compared in place (its bytes can only match ASCII bytes of UTF-8 text);
/// others are lowercased first.
fn contains_lowercased(haystack_lower: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.is_ascii() {
        return haystack_lower
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()));
    }
    haystack_lower.contains(&needle.to_lowercase())
}

/// The thread an event belongs to: `m.relates_to.rel_type == "m.thread"` names its root.
pub fn thread_of(pdu: &Pdu) -> Option<String> {
    let content = pdu.content_value();
    let relates_to = content.get("m.relates_to")?;
    if relates_to.get("rel_type").and_then(Value::as_str) != Some("m.thread") {
        return None;
    }
    relates_to.get("event_id").and_then(Value::as_str).map(ToOwned::to_owned)
}

/// The legacy mention rules (deprecated since Matrix 1.7, still in the spec's default set):
/// never applied to an event whose content has `m.mentions` (spec: intentional mentions).
const LEGACY_MENTION_RULES: &[&str] =
    &[".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"];

/// The spec's server-default rules: ruma's set plus the deprecated legacy mention rules ruma
/// no longer lists (`.m.rule.contains_display_name` and `.m.rule.roomnotif` after the
/// intentional-mention rules, `.m.rule.contains_user_name` as the content rule), as Synapse
/// still serves them.
pub fn server_default(user_id: &UserId) -> Ruleset {
    let mut value = serde_json::to_value(Ruleset::server_default(user_id)).unwrap_or_default();
    let highlight_sound = json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]);
    let display_name = json!({
        "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
        "conditions": [{"kind": "contains_display_name"}], "actions": highlight_sound,
    });
    let room_notif = json!({
        "rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
        "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "@room"},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        "actions": ["notify", {"set_tweak": "highlight"}],
    });
    if let Some(Value::Array(overrides)) = value.get_mut("override") {
        let after =
            |id: &str, list: &Vec<Value>| list.iter().position(|r| r["rule_id"] == id).map_or(list.len(), |i| i + 1);
        let at = after(".m.rule.is_user_mention", overrides);
        overrides.insert(at, display_name);
        let at = after(".m.rule.is_room_mention", overrides);
        overrides.insert(at, room_notif);
    }
    let user_name = json!({
        "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
        "pattern": user_id.localpart(), "actions": highlight_sound,
    });
    if let Value::Object(map) = &mut value {
        let content = map.entry("content").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(content) = content {
            content.insert(0, user_name);
        }
    }
    serde_json::from_value(value).unwrap_or_else(|error| {
        tracing::warn!(%error, "legacy default push rules do not parse; serving ruma's defaults");
        Ruleset::server_default(user_id)
    })
}

/// The user's rules from their stored `m.push_rules` content (merged with today's defaults),
/// or the server defaults when nothing is stored.
pub fn stored_or_default(stored: Option<&RawValue>, user_id: &UserId) -> Ruleset {
    match stored.and_then(parse_stored) {
        Some(stored) => merge_with_defaults(stored, user_id),
        None => server_default(user_id),
    }
}

fn parse_stored(content: &RawValue) -> Option<Ruleset> {
    #[derive(serde::Deserialize)]
    struct Stored {
        global: Ruleset,
    }
    match serde_json::from_str::<Stored>(content.get()) {
        Ok(stored) => Some(stored.global),
        Err(error) => {
            tracing::warn!(%error, "stored push rules do not parse; using the defaults");
            None
        }
    }
}

/// The stored rules brought up to date with the current server defaults (as Synapse does): the
/// user's own rules keep their order and go before the defaults of their kind (after
/// `.m.rule.master` for override rules); every current default rule is present, in the
/// default order, with the enabled flag and actions the user gave it; defaults that no longer
/// exist are dropped.
pub fn merge_with_defaults(stored: Ruleset, user_id: &UserId) -> Ruleset {
    let defaults = server_default(user_id);
    let mut merged = Ruleset::new();
    let stored_rules: Vec<AnyPushRule> = stored.into_iter().collect();
    let user_rules: Vec<&AnyPushRule> = stored_rules.iter().filter(|rule| !rule.is_server_default()).collect();
    let find_stored = |kind: Option<RuleKind>, id: &str| {
        stored_rules.iter().find(|rule| rule_kind(rule) == kind && rule.rule_id() == id)
    };
    let mut defaults_by_kind: Vec<AnyPushRule> = Vec::new();
    for default in defaults {
        let mut rule = default;
        if let Some(saved) = find_stored(rule_kind(&rule), rule.rule_id()) {
            rule = apply_saved(rule, saved);
        }
        defaults_by_kind.push(rule);
    }
    // Override: master first, then user rules, then the other defaults.
    for rule in
        defaults_by_kind.iter().filter(|r| rule_kind(r) == Some(RuleKind::Override) && r.rule_id() == ".m.rule.master")
    {
        push_rule(&mut merged, rule.clone());
    }
    for kind in [RuleKind::Override, RuleKind::Content, RuleKind::Room, RuleKind::Sender, RuleKind::Underride] {
        for rule in user_rules.iter().filter(|r| rule_kind(r).as_ref() == Some(&kind)) {
            push_rule(&mut merged, (*rule).clone());
        }
        for rule in
            defaults_by_kind.iter().filter(|r| rule_kind(r).as_ref() == Some(&kind) && r.rule_id() != ".m.rule.master")
        {
            push_rule(&mut merged, rule.clone());
        }
    }
    merged
}

fn rule_kind(rule: &AnyPushRule) -> Option<RuleKind> {
    match rule {
        AnyPushRule::Override(_) => Some(RuleKind::Override),
        AnyPushRule::Underride(_) => Some(RuleKind::Underride),
        AnyPushRule::Content(_) => Some(RuleKind::Content),
        AnyPushRule::Room(_) => Some(RuleKind::Room),
        AnyPushRule::Sender(_) => Some(RuleKind::Sender),
        _ => None,
    }
}

/// A default rule with the user's saved `enabled` and `actions`.
fn apply_saved(rule: AnyPushRule, saved: &AnyPushRule) -> AnyPushRule {
    let enabled = saved.enabled();
    let actions = saved.actions().to_vec();
    match rule {
        AnyPushRule::Override(mut r) => {
            (r.enabled, r.actions) = (enabled, actions);
            AnyPushRule::Override(r)
        }
        AnyPushRule::Underride(mut r) => {
            (r.enabled, r.actions) = (enabled, actions);
            AnyPushRule::Underride(r)
        }
        AnyPushRule::Content(mut r) => {
            (r.enabled, r.actions) = (enabled, actions);
            AnyPushRule::Content(r)
        }
        AnyPushRule::Room(mut r) => {
            (r.enabled, r.actions) = (enabled, actions);
            AnyPushRule::Room(r)
        }
        AnyPushRule::Sender(mut r) => {
            (r.enabled, r.actions) = (enabled, actions);
            AnyPushRule::Sender(r)
        }
        other => other,
    }
}

/// Appends a rule at the end of its kind's list.
fn push_rule(rules: &mut Ruleset, rule: AnyPushRule) {
    match rule {
        AnyPushRule::Override(r) => {
            rules.override_.insert(r);
        }
        AnyPushRule::Underride(r) => {
            rules.underride.insert(r);
        }
        AnyPushRule::Content(r) => {
            rules.content.insert(r);
        }
        AnyPushRule::Room(r) => {
            rules.room.insert(r);
        }
        AnyPushRule::Sender(r) => {
            rules.sender.insert(r);
        }
        _ => {}
    }
}

fn validate_ids(ids: &PusherIds) -> Result<()> {
    if ids.app_id.is_empty() || ids.app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::invalid_param(format!("app_id must be 1 to {MAX_APP_ID_CHARS} characters.")));
    }
    if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::invalid_param(format!("pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes.")));
    }
    Ok(())
}

/// An HTTP pusher's URL: http(s), with the path `/_matrix/push/v1/notify`.
fn validate_url(url: &str) -> Result<()> {
    let uri: ruma::exports::http::Uri = url.parse().map_err(|_| Error::invalid_param("data.url is not a URL."))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(Error::invalid_param("data.url must be an http or https URL."));
    }
    if uri.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!("data.url must have the path {NOTIFY_PATH}.")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::contains_lowercased;

    #[test]
    fn contains_lowercased_ignores_case_as_lowercasing_would() {
        let body = "hello alice, über-straße k".to_lowercase();
        assert!(contains_lowercased(&body, "Alice"));
        assert!(contains_lowercased(&body, "ALICE,"));
        assert!(!contains_lowercased(&body, "bob"));
        assert!(contains_lowercased(&body, "ÜBER"), "non-ASCII needles are lowercased");
        assert!(contains_lowercased(&body, "Straße"));
        assert!(!contains_lowercased(&body, "strasse"));
        // The Kelvin sign lowercases to an ASCII k: the same answer as lowercasing both sides.
        assert!(contains_lowercased(&"\u{212A}".to_lowercase(), "K"));
        assert!(!contains_lowercased("", "a"));
        assert!(contains_lowercased("", ""));
    }
}
