//! `/sync` v3: tokens, long-polling, filters, timelines with gaps, state deltas, lazy-loaded
//! members, invites, left rooms, typing, receipts, account data, unread counts.
//!
//! A sync token is `s{stream_pos}_{typing_serial}`. Everything durable (events, receipts,
//! account data, memberships) is on the one stream, so "what changed since" is a range
//! scan; typing has its own in-memory serial.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, RoomEventFilter},
        sync::sync_events::{
            UnreadNotificationsCount,
            v3::{
                Ephemeral, InviteState, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom, Response,
                RoomAccountData, RoomSummary, State, StateEvents, Timeline,
            },
        },
    },
    events::{StateEventType, TimelineEventType},
    serde::Raw,
};
use serde_json::{Map, Value};

use super::{
    Core,
    e2ee::E2ee,
    ephemeral::Ephemeral as EphemeralService,
    lazy_members::{LazyMembers, Lineage},
    rooms::{
        Pdu, Rooms, StateMap, raw,
        timeline::{number_token, position_token},
    },
    users::Session,
};
use crate::{
    error::{Error, Result},
    hash::{HashMap, HashSet},
    storage::{Direction, StreamPos},
};

/// Longest long-poll a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 500;
/// The most to-device messages one sync response carries.
const TO_DEVICE_LIMIT: usize = 100;

/// A parsed `RoomEventFilter` (timeline, state, ephemeral, account data) or event filter.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub limit: Option<usize>,
    pub contains_url: Option<bool>,
    pub lazy_load_members: bool,
    /// `include_redundant_members`: send members again even when the device has them.
    pub include_redundant_members: bool,
    /// `unread_thread_notifications` (timeline filter): per-thread unread counts.
    pub unread_thread_notifications: bool,
}

/// Type patterns: `*` matches any run of characters.
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == kind,
        Some((head, rest)) => {
            let Some(tail) = kind.strip_prefix(head) else { return false };
            if !rest.contains('*') {
                // The last `*`: whatever the rest does not match (`*` alone matches anything).
                return tail.ends_with(rest);
            }
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| type_matches(rest, &tail[i..]))
        }
    }
}

impl EventFilter {
    pub fn from_room_event_filter(filter: &RoomEventFilter) -> Self {
        let strings = |list: &Vec<ruma::OwnedRoomId>| list.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        Self {
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            senders: filter.senders.as_ref().map(|s| s.iter().map(|u| u.to_string()).collect()),
            not_senders: filter.not_senders.iter().map(|u| u.to_string()).collect(),
            rooms: filter.rooms.as_ref().map(strings),
            not_rooms: strings(&filter.not_rooms),
            limit: filter.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
            contains_url: filter.url_filter.map(|f| f == ruma::api::client::filter::UrlFilter::EventsWithUrl),
            lazy_load_members: !filter.lazy_load_options.is_disabled(),
            include_redundant_members: matches!(
                filter.lazy_load_options,
                ruma::api::client::filter::LazyLoadOptions::Enabled { include_redundant_members: true }
            ),
            unread_thread_notifications: filter.unread_thread_notifications,
        }
    }

    pub fn matches_type(&self, kind: &str) -> bool {
        if self.not_types.iter().any(|p| type_matches(p, kind)) {
            return false;
        }
        self.types.as_ref().is_none_or(|types| types.iter().any(|p| type_matches(p, kind)))
    }

    pub fn matches_room(&self, room_id: &RoomId) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id.as_str())
            && self.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room_id.as_str()))
    }

    pub fn matches(&self, pdu: &Pdu) -> bool {
        let sender = pdu.sender.as_str();
        if self.not_senders.iter().any(|s| s == sender)
            || self.senders.as_ref().is_some_and(|s| !s.iter().any(|x| x == sender))
        {
            return false;
        }
        if let Some(want_url) = self.contains_url {
            let has_url = pdu.content_value().get("url").is_some_and(Value::is_string);
            if has_url != want_url {
                return false;
            }
        }
        // Most filters name no types: then the event's type is not even rendered.
        self.matches_room(&pdu.room_id)
            && ((self.types.is_none() && self.not_types.is_empty()) || self.matches_type(&pdu.kind.to_string()))
    }
}

/// The filter as sync uses it.
#[derive(Clone, Debug, Default)]
pub struct SyncFilter {
    pub timeline: EventFilter,
    pub state: EventFilter,
    pub ephemeral: EventFilter,
    pub room_account_data: EventFilter,
    pub account_data: EventFilter,
    pub presence: EventFilter,
    pub rooms: EventFilter,
    pub include_leave: bool,
}

impl SyncFilter {
    pub fn from_definition(definition: &FilterDefinition) -> Self {
        let room = &definition.room;
        let mut rooms = EventFilter::default();
        rooms.rooms = room.rooms.as_ref().map(|r| r.iter().map(|x| x.to_string()).collect());
        rooms.not_rooms = room.not_rooms.iter().map(|x| x.to_string()).collect();
        let global = &definition.account_data;
        let presence = &definition.presence;
        Self {
            presence: EventFilter {
                types: presence.types.clone(),
                not_types: presence.not_types.clone(),
                limit: presence.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
                ..EventFilter::default()
            },
            timeline: EventFilter::from_room_event_filter(&room.timeline),
            state: EventFilter::from_room_event_filter(&room.state),
            ephemeral: EventFilter::from_room_event_filter(&room.ephemeral),
            room_account_data: EventFilter::from_room_event_filter(&room.account_data),
            account_data: EventFilter {
                types: global.types.clone(),
                not_types: global.not_types.clone(),
                limit: global.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
                ..EventFilter::default()
            },
            rooms,
            include_leave: room.include_leave,
        }
    }
}

/// A parsed `since` token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    pub pos: StreamPos,
    pub typing: u64,
    /// To-device messages were delivered up to here, when not all up to `pos` fitted in one
    /// response (None: up to `pos`).
    pub to_device: Option<StreamPos>,
}

impl SyncToken {
    pub fn new(pos: StreamPos, typing: u64) -> Self {
        Self { pos, typing, to_device: None }
    }

    pub fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param(format!("Invalid since token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '_');
        let pos = parts.next().unwrap_or_default().parse().map_err(|_| bad())?;
        let typing = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        let to_device = parts.next().map(|td| td.parse::<StreamPos>().map_err(|_| bad())).transpose()?;
        if to_device.is_some_and(|td| td > pos) {
            return Err(bad());
        }
        Ok(Self { pos, typing, to_device })
    }

    pub fn render(&self) -> String {
        match self.to_device {
            Some(td) if td != self.pos => number_token('s', &[self.pos, self.typing, td]),
            _ => number_token('s', &[self.pos, self.typing]),
        }
    }

    /// Every to-device message at or below this position has been delivered.
    pub fn to_device_pos(&self) -> StreamPos {
        self.to_device.unwrap_or(self.pos)
    }
}

/// What a client asked for.
pub struct SyncParams {
    pub since: Option<String>,
    pub filter: Arc<SyncFilter>,
    pub full_state: bool,
    pub timeout: Option<Duration>,
    pub use_state_after: bool,
}

pub struct Sync {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    ephemeral: Arc<EphemeralService>,
    e2ee: Arc<E2ee>,
    /// The lazy-loaded member events each device already has.
    lazy_members: LazyMembers,
    /// Stored filters, parsed: a filter never changes once stored, and a client passes the
    /// same id on every long-poll. By user, then filter id: a lookup borrows both.
    filters: std::sync::Mutex<HashMap<OwnedUserId, HashMap<String, Arc<SyncFilter>>>>,
}

/// Users whose parsed stored filters are kept; past this the cache starts over.
const MAX_CACHED_FILTERS: usize = 4096;

pub(crate) fn raw_event<T>(event: &Map<String, Value>) -> Result<Raw<T>> {
    Ok(Raw::from_json(raw(event)?))
}

fn stripped(pdu: &Pdu) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("type".into(), Value::String(pdu.kind.to_string()));
    event.insert("state_key".into(), Value::String(pdu.state_key.clone().unwrap_or_default()));
    event.insert("sender".into(), Value::String(pdu.sender.to_string()));
    event.insert("content".into(), serde_json::from_str(pdu.content.get()).unwrap_or(Value::Object(Map::new())));
    event
}

/// State types shown to invitees and knockers (the spec's recommended stripped state).
const STRIPPED_TYPES: &[StateEventType] = &[
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomEncryption,
    StateEventType::RoomTopic,
];

impl Sync {
    pub fn new(core: Arc<Core>, rooms: Arc<Rooms>, ephemeral: Arc<EphemeralService>, e2ee: Arc<E2ee>) -> Self {
        Self { core, rooms, ephemeral, e2ee, lazy_members: LazyMembers::default(), filters: Default::default() }
    }

    /// Resolves `filter` (inline JSON or stored id) into a `SyncFilter`.
    pub fn resolve_filter(
        &self,
        user_id: &UserId,
        filter: Option<&ruma::api::client::sync::sync_events::v3::Filter>,
    ) -> Result<Arc<SyncFilter>> {
        use ruma::api::client::sync::sync_events::v3::Filter;
        match filter {
            None => Ok(Arc::default()),
            Some(Filter::FilterDefinition(definition)) => Ok(Arc::new(SyncFilter::from_definition(definition))),
            Some(Filter::FilterId(id)) => {
                let cached = self
                    .filters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(user_id)
                    .and_then(|f| f.get(id))
                    .cloned();
                if let Some(cached) = cached {
                    return Ok(cached);
                }
                let stored = self
                    .core
                    .db
                    .filter(user_id, id)?
                    .ok_or_else(|| Error::invalid_param(format!("No filter with id {id}")))?;
                let definition: FilterDefinition =
                    serde_json::from_str(stored.get()).map_err(|e| Error::internal(format!("stored filter: {e}")))?;
                let parsed = Arc::new(SyncFilter::from_definition(&definition));
                let mut cache = self.filters.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_FILTERS {
                    cache.clear();
                }
                cache.entry(user_id.to_owned()).or_default().insert(id.clone(), parsed.clone());
                Ok(parsed)
            }
            Some(_) => Err(Error::invalid_param("Unsupported filter")),
        }
    }

    /// `GET /sync`: answers at once when something changed (or on an initial sync),
    /// otherwise waits until something does or the timeout passes.
    pub async fn sync(&self, session: &Session, params: SyncParams) -> Result<Response> {
        let since = params.since.as_deref().map(SyncToken::parse).transpose()?;
        let timeout = params.timeout.unwrap_or_default().min(MAX_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut positions = self.core.db.subscribe();
        let mut typing = self.ephemeral.subscribe_typing();
        loop {
            positions.borrow_and_update();
            typing.borrow_and_update();
            // A client that is up to date (its token is the current position and serial, and
            // no to-device backlog is pending) would get an empty response: wait without
            // computing it. This is every long-poll's first step after its previous answer.
            let up_to_date = since.is_some_and(|s| {
                s.to_device.is_none()
                    && s.pos == self.core.db.current_pos()
                    && s.typing == self.ephemeral.typing_serial()
            });
            if !up_to_date || params.full_state || tokio::time::Instant::now() >= deadline {
                let response = self.compute(session, since, &params)?;
                let done = since.is_none()
                    || params.full_state
                    || !is_empty(&response)
                    || tokio::time::Instant::now() >= deadline;
                if done {
                    return Ok(response);
                }
            }
            tokio::select! {
                changed = positions.changed() => { if changed.is_err() { return self.compute(session, since, &params) } }
                changed = typing.changed() => { if changed.is_err() { return self.compute(session, since, &params) } }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn compute(&self, session: &Session, since: Option<SyncToken>, params: &SyncParams) -> Result<Response> {
        let user_id = &session.user_id;
        let mut now = SyncToken::new(self.core.db.current_pos(), self.ephemeral.typing_serial());
        let since_or_zero = since.unwrap_or(SyncToken::new(0, 0));
        let mut response = Response::new(String::new());
        let my_rooms = self.core.db.rooms_of_user(user_id)?;
        self.add_encryption(session, &my_rooms, since, &mut now, &mut response)?;
        response.next_batch = now.render();
        let filter = &params.filter;
        let lineage = self.lazy_members.begin(user_id, &session.device_id, since.map(|s| s.pos));

        let mut room_account_data: HashMap<OwnedRoomId, Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>> =
            HashMap::default();
        for (room_id, kind, event) in self.account_data_events(user_id, since_or_zero.pos)? {
            match room_id {
                None if filter.account_data.matches_type(&kind) => {
                    response.account_data.events.push(raw_event(&event)?);
                }
                Some(room_id) if filter.room_account_data.matches_type(&kind) => {
                    room_account_data.entry(room_id).or_default().push(raw_event(&event)?);
                }
                _ => {}
            }
        }
        if let Some(limit) = filter.account_data.limit {
            response.account_data.events.truncate(limit);
        }
        self.add_presence(user_id, &my_rooms, since_or_zero.typing, &filter.presence, &mut response)?;

        for (room_id, record) in my_rooms.iter() {
            if record.pos > now.pos || !filter.rooms.matches_room(&room_id) {
                continue;
            }
            let changed_since = since.is_none_or(|s| record.pos > s.pos);
            match record.membership.as_str() {
                "join" => {
                    let account_data = room_account_data.remove(room_id).unwrap_or_default();
                    if let Some(room) =
                        self.joined_room(session, &room_id, since, now, record.pos, params, &lineage, account_data)?
                    {
                        response.rooms.join.insert(room_id.clone(), room);
                    }
                }
                "invite" if changed_since => {
                    let mut room = InvitedRoom::new();
                    room.invite_state = InviteState::from(self.stripped_state(&room_id, &record.event_id)?);
                    response.rooms.invite.insert(room_id.clone(), room);
                }
                "knock" if changed_since => {
                    let mut room = KnockedRoom::new();
                    room.knock_state = KnockState::new();
                    room.knock_state.events = self.stripped_state(&room_id, &record.event_id)?;
                    response.rooms.knock.insert(room_id.clone(), room);
                }
                "leave" | "ban" => {
                    let include = match since {
                        Some(since) => record.pos > since.pos,
                        None => filter.include_leave,
                    };
                    if include && !self.core.db.is_forgotten(user_id, &room_id)? {
                        let account_data = room_account_data.remove(room_id).unwrap_or_default();
                        let room =
                            self.left_room(session, &room_id, since, record.pos, params, &lineage, account_data)?;
                        response.rooms.leave.insert(room_id.clone(), room);
                    }
                }
                _ => {}
            }
        }
        Ok(response)
    }

    /// To-device messages, device-list changes and key counts. Delivers at most
    /// `TO_DEVICE_LIMIT` messages; when more wait, `now` records how far delivery got.
    fn add_encryption(
        &self,
        session: &Session,
        my_rooms: &[(OwnedRoomId, crate::storage::MembershipRecord)],
        since: Option<SyncToken>,
        now: &mut SyncToken,
        response: &mut Response,
    ) -> Result<()> {
        let (user_id, device_id) = (&session.user_id, &session.device_id);
        let acknowledged = since.map(|s| s.to_device_pos());
        let messages = self.e2ee.to_device_for_sync(user_id, device_id, acknowledged, now.pos, TO_DEVICE_LIMIT)?;
        if messages.len() == TO_DEVICE_LIMIT {
            now.to_device = messages.last().map(|(pos, _)| *pos);
        }
        response.to_device.events = messages.into_iter().map(|(_, event)| Raw::from_json(event)).collect();
        if let Some(since) = since {
            let delta = self.e2ee.device_list_delta_in(user_id, my_rooms, since.pos, now.pos)?;
            response.device_lists.changed = delta.changed;
            response.device_lists.left = delta.left;
        }
        let (counts, fallback) = self.key_counts(user_id, device_id)?;
        response.device_one_time_keys_count = counts;
        response.device_unused_fallback_key_types = Some(fallback);
        Ok(())
    }

    /// One-time key counts (signed_curve25519 always present, 0 when none) and unused
    /// fallback key algorithms of a device, as /sync and sliding sync's e2ee extension send them.
    pub(crate) fn key_counts(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<(std::collections::BTreeMap<ruma::OneTimeKeyAlgorithm, UInt>, Vec<ruma::OneTimeKeyAlgorithm>)> {
        let (stored_counts, stored_fallback) = self.core.db.key_counts(user_id, device_id)?;
        let mut counts = std::collections::BTreeMap::new();
        for (algorithm, count) in stored_counts {
            counts.insert(algorithm.as_str().into(), UInt::try_from(count).unwrap_or_default());
        }
        counts.entry(ruma::OneTimeKeyAlgorithm::SignedCurve25519).or_insert(UInt::from(0u32));
        let fallback = stored_fallback.iter().map(|a| ruma::OneTimeKeyAlgorithm::from(a.as_str())).collect();
        Ok((counts, fallback))
    }

    /// Account data changed after `since` (everything when 0) as events `{type, content}`,
    /// global ones with a None room. Push rules are brought up to date with the server
    /// defaults (see push.rs); an initial sync (`since == 0`) always carries them.
    pub(crate) fn account_data_events(
        &self,
        user_id: &UserId,
        since: StreamPos,
    ) -> Result<Vec<(Option<OwnedRoomId>, String, Map<String, Value>)>> {
        let mut events = Vec::new();
        let mut stored_push_rules = false;
        for (room_id, kind, mut content) in self.core.db.account_data_since(user_id, since)? {
            if room_id.is_none() && kind == "m.push_rules" {
                stored_push_rules = true;
                content = super::account_data::push_rules_content(user_id, Some(&content))?;
            }
            let mut event = Map::new();
            event.insert("type".into(), Value::String(kind.clone()));
            event.insert("content".into(), serde_json::from_str(content.get()).unwrap_or(Value::Object(Map::new())));
            events.push((room_id, kind, event));
        }
        // Push rules are account data too; clients expect them in an initial sync.
        if since == 0 && !stored_push_rules {
            let content = super::account_data::push_rules_content(user_id, None)?;
            let mut event = Map::new();
            event.insert("type".into(), Value::String("m.push_rules".into()));
            event.insert("content".into(), serde_json::from_str(content.get()).unwrap_or_default());
            events.push((None, "m.push_rules".into(), event));
        }
        Ok(events)
    }

    /// Presence changes since `since` of the user and of everyone sharing a joined room.
    fn add_presence(
        &self,
        user_id: &ruma::UserId,
        my_rooms: &[(OwnedRoomId, crate::storage::MembershipRecord)],
        since: u64,
        filter: &EventFilter,
        response: &mut Response,
    ) -> Result<()> {
        if !filter.matches_type("m.presence") || !self.core.config.presence.enabled {
            return Ok(());
        }
        let changed = self.ephemeral.presence_since(since);
        if changed.is_empty() {
            return Ok(());
        }
        let mut visible: HashSet<ruma::OwnedUserId> = HashSet::default();
        visible.insert(user_id.to_owned());
        for (room_id, record) in my_rooms {
            if record.membership == "join" {
                visible
                    .extend(self.core.db.members(room_id)?.iter().filter(|(_, m)| m == "join").map(|(u, _)| u.clone()));
            }
        }
        for (other, presence) in changed {
            if visible.contains(&other) {
                response.presence.events.push(Raw::from_json(raw(&presence.event(&other))?));
            }
        }
        if let Some(limit) = filter.limit {
            response.presence.events.truncate(limit);
        }
        Ok(())
    }

    /// Stripped state for an invite or knock: the recommended state plus the membership event.
    pub(crate) fn stripped_state<T>(&self, room_id: &RoomId, membership_event: &ruma::EventId) -> Result<Vec<Raw<T>>> {
        let mut events = Vec::new();
        let membership = self.rooms.pdu(membership_event)?;
        // A room this server is not in: the state the other server sent with the invite (or
        // the knock's answer), kept in the event's `unsigned`.
        if self.rooms.room_record(room_id)?.is_none()
            && let Some(pdu) = &membership
        {
            let unsigned = serde_json::from_str::<Value>(pdu.stored.pdu.get())
                .ok()
                .and_then(|mut v| v.get_mut("unsigned").map(Value::take))
                .unwrap_or_default();
            for key in ["invite_room_state", "knock_room_state"] {
                if let Some(Value::Array(state)) = unsigned.get(key) {
                    for entry in state {
                        if entry.get("type").is_some_and(|t| t != "m.room.member")
                            || entry.get("state_key").and_then(Value::as_str) != pdu.state_key.as_deref()
                        {
                            events.push(raw_event(entry.as_object().unwrap_or(&Map::new()))?);
                        }
                    }
                }
            }
            events.push(raw_event(&stripped(pdu))?);
            return Ok(events);
        }
        let state = match &membership {
            Some(pdu) => self.rooms.state_after(pdu)?,
            None => self.rooms.current_state(room_id)?.unwrap_or_default(),
        };
        for kind in STRIPPED_TYPES {
            if let Some(pdu) = self.rooms.state_pdu(&state, kind, "")? {
                events.push(raw_event(&stripped(&pdu))?);
            }
        }
        if let Some(pdu) = &membership {
            if let Some(inviter) = self.rooms.state_pdu(&state, &StateEventType::RoomMember, pdu.sender.as_str())?
                && inviter.sender != pdu.state_key.as_deref().unwrap_or_default()
            {
                events.push(raw_event(&stripped(&inviter))?);
            }
            events.push(raw_event(&stripped(pdu))?);
        }
        Ok(events)
    }

    /// Timeline events visible to the user in (after, up_to], newest `limit` of them.
    /// Returns (events oldest first, limited).
    pub(crate) fn timeline_window(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        after: StreamPos,
        up_to: StreamPos,
        filter: &EventFilter,
    ) -> Result<(Vec<Arc<Pdu>>, bool)> {
        let limit = filter.limit.unwrap_or(DEFAULT_TIMELINE_LIMIT).clamp(1, MAX_TIMELINE_LIMIT);
        let keep = |pdu: &Pdu| -> Result<bool> {
            Ok(!pdu.stored.rejected
                && !pdu.stored.soft_failed
                && filter.matches(pdu)
                && self.rooms.can_see(user_id, pdu)?)
        };
        // An incremental sync mostly finds a few new events: read them forward from `after`
        // (one cheap step each). Only when more than `limit` entries lie in the window is it
        // read backward from its end, as below.
        if after > 0 {
            let batch = self.core.db.timeline(room_id, after, Direction::Forward, limit + 1)?;
            let in_window = batch.iter().take_while(|(pos, _, _)| *pos <= up_to).count();
            if in_window < batch.len() || batch.len() <= limit {
                let mut collected = Vec::new();
                for (_, event_id, _) in &batch[..in_window] {
                    if let Some(pdu) = self.rooms.pdu(event_id)?
                        && keep(&pdu)?
                    {
                        collected.push(pdu);
                    }
                }
                return Ok((collected, false));
            }
        }
        let mut collected = Vec::new();
        let mut cursor = up_to + 1;
        let mut limited = false;
        'outer: loop {
            let batch = self.core.db.timeline(room_id, cursor, Direction::Backward, limit + 1)?;
            if batch.is_empty() {
                break;
            }
            for (pos, event_id, _) in &batch {
                if *pos <= after {
                    break 'outer;
                }
                cursor = *pos;
                let Some(pdu) = self.rooms.pdu(event_id)? else { continue };
                if !keep(&pdu)? {
                    continue;
                }
                if collected.len() == limit {
                    limited = true;
                    break 'outer;
                }
                collected.push(pdu);
            }
            if batch.len() < limit + 1 {
                break;
            }
        }
        collected.reverse();
        Ok((collected, limited))
    }

    /// The state at a stream position in a room (the state after the event at or before it).
    pub(crate) fn state_at_pos(&self, room_id: &RoomId, pos: StreamPos) -> Result<Arc<StateMap>> {
        match self.core.db.timeline_at(room_id, pos)? {
            Some((_, _, group)) => self.rooms.state(group),
            None => Ok(Arc::new(StateMap::default())),
        }
    }

    /// State events in `to` that differ from `from`.
    pub(crate) fn state_delta(&self, from: &StateMap, to: &StateMap) -> Vec<ruma::OwnedEventId> {
        let mut delta: Vec<_> =
            to.iter().filter(|(key, id)| from.get(*key) != Some(*id)).map(|(_, id)| id.clone()).collect();
        delta.sort();
        delta
    }

    /// Builds the state section: either `state` (at the start of the timeline) or
    /// `state_after` (at its end), filtered and lazy-loaded.
    #[allow(clippy::too_many_arguments)]
    fn state_section(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        since: Option<SyncToken>,
        full: bool,
        limited: bool,
        timeline: &[Arc<Pdu>],
        end_pos: StreamPos,
        params: &SyncParams,
        lineage: &Lineage,
        heroes: &[OwnedUserId],
    ) -> Result<State> {
        let filter = &params.filter.state;
        // When the timeline has a gap, membership changes inside the gap are sent even
        // under lazy loading, so joins, leaves and renames are not lost.
        let gap_members = !full && limited;
        let (ids, exclude_timeline): (Vec<ruma::OwnedEventId>, bool) = if params.use_state_after {
            let at_end = self.state_at_pos(room_id, end_pos)?;
            if full {
                (at_end.values().cloned().collect(), false)
            } else {
                let before = self.state_at_pos(room_id, since.map(|s| s.pos).unwrap_or(0))?;
                (self.state_delta(&before, &at_end), false)
            }
        } else {
            let at_start = match timeline.first() {
                Some(first) => self.rooms.state_before(first)?,
                None => self.state_at_pos(room_id, end_pos)?,
            };
            if full {
                (at_start.values().cloned().collect(), true)
            } else if limited {
                let before = self.state_at_pos(room_id, since.map(|s| s.pos).unwrap_or(0))?;
                (self.state_delta(&before, &at_start), true)
            } else {
                (Vec::new(), true)
            }
        };
        let in_timeline: HashSet<&ruma::EventId> = timeline.iter().map(|p| &*p.event_id).collect();
        // Lazy loading sends the members a client needs: timeline senders, the user, and
        // the heroes it names the room after.
        let senders: BTreeSet<&UserId> = timeline
            .iter()
            .map(|p| &*p.sender)
            .chain(std::iter::once(user_id))
            .chain(heroes.iter().map(|h| &**h))
            .collect();
        // Members this device already has are not sent again (unless asked, or for full state).
        let dedup = filter.lazy_load_members && !filter.include_redundant_members;
        let skip_held = dedup && !full;
        let held =
            |member: &str, pdu: &Pdu| skip_held && self.lazy_members.has(lineage, room_id, member, &pdu.event_id);
        let mut sent_members: Vec<Arc<Pdu>> = Vec::new();
        let mut events = Vec::new();
        let mut have_members = HashSet::default();
        for event_id in ids {
            if exclude_timeline && in_timeline.contains(&*event_id) {
                continue;
            }
            let Some(pdu) = self.rooms.pdu(&event_id)? else { continue };
            if !filter.matches(&pdu) {
                continue;
            }
            if filter.lazy_load_members && pdu.kind == TimelineEventType::RoomMember {
                let member = pdu.state_key.as_deref().unwrap_or_default();
                if !gap_members && !senders.iter().any(|s| s.as_str() == member) {
                    continue;
                }
                have_members.insert(member.to_owned());
                if held(member, &pdu) {
                    continue;
                }
                sent_members.push(pdu.clone());
            }
            events.push(Raw::from_json(self.rooms.client_raw(&pdu, None, false)?));
        }
        // Lazy loading: make sure every timeline sender's membership is present.
        if filter.lazy_load_members && !full {
            let at_start = match timeline.first() {
                Some(first) => self.rooms.state_before(first)?,
                None => self.state_at_pos(room_id, end_pos)?,
            };
            for sender in senders {
                if have_members.contains(sender.as_str()) {
                    continue;
                }
                if let Some(pdu) = self.rooms.state_pdu(&at_start, &StateEventType::RoomMember, sender.as_str())?
                    && !in_timeline.contains(&*pdu.event_id)
                    && !held(sender.as_str(), &pdu)
                {
                    events.push(Raw::from_json(self.rooms.client_raw(&pdu, None, false)?));
                    sent_members.push(pdu);
                }
            }
        }
        if dedup {
            let in_timeline = timeline.iter().filter(|p| p.kind == TimelineEventType::RoomMember);
            let members = sent_members
                .iter()
                .chain(in_timeline)
                .filter_map(|pdu| Some((pdu.state_key.as_deref()?, &*pdu.event_id)));
            self.lazy_members.record(lineage, room_id, members, end_pos);
        }
        let mut state_events = StateEvents::new();
        state_events.events = events;
        let events = state_events;
        Ok(if params.use_state_after { State::After(events) } else { State::Before(events) })
    }

    #[allow(clippy::too_many_arguments)]
    fn joined_room(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        now: SyncToken,
        joined_at: StreamPos,
        params: &SyncParams,
        lineage: &Lineage,
        account_data: Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>,
    ) -> Result<Option<JoinedRoom>> {
        let user_id = &session.user_id;
        let newly_joined = since.is_none_or(|s| joined_at > s.pos);
        let full = newly_joined || params.full_state;
        let after = if newly_joined { 0 } else { since.map(|s| s.pos).unwrap_or(0) };
        let (timeline, limited) = self.timeline_window(user_id, room_id, after, now.pos, &params.filter.timeline)?;
        let limited =
            limited || (newly_joined && timeline.first().is_some_and(|p| p.kind != TimelineEventType::RoomCreate));

        let mut ephemeral = Vec::new();
        if params.filter.ephemeral.matches_type("m.typing")
            && let Some(typing) = self.ephemeral.typing_event_since(room_id, since.map(|s| s.typing).unwrap_or(0))
        {
            ephemeral.push(typing);
        }
        let receipts = self.ephemeral.receipts_since(room_id, since.map(|s| s.pos).unwrap_or(0))?;
        // The user's own new receipt changes their unread counts even when filtered out.
        let receipts_changed = since.is_some() && receipts.iter().any(|r| r.user_id == *user_id);
        if params.filter.ephemeral.matches_type("m.receipt")
            && let Some(event) = EphemeralService::receipt_event(receipts, user_id)
        {
            ephemeral.push(event);
        }
        if !full && timeline.is_empty() && ephemeral.is_empty() && account_data.is_empty() && !receipts_changed {
            return Ok(None);
        }

        let members_changed = timeline.iter().any(|p| p.kind == TimelineEventType::RoomMember);
        let summary = if full || members_changed { Some(self.summary(room_id, user_id)?) } else { None };
        let heroes = summary.as_ref().map(|s| s.heroes.clone()).unwrap_or_default();
        let state =
            self.state_section(user_id, room_id, since, full, limited, &timeline, now.pos, params, lineage, &heroes)?;
        let mut room = JoinedRoom::new();
        room.timeline = Timeline::new();
        room.timeline.limited = limited;
        room.timeline.prev_batch = Some(match timeline.first().and_then(|p| p.stored.pos) {
            Some(pos) => position_token(pos - 1),
            None => position_token(now.pos),
        });
        for pdu in &timeline {
            room.timeline
                .events
                .push(Raw::from_json(self.rooms.sync_event_raw(pdu, (user_id, Some(&session.session_id)))?));
        }
        room.state = state;
        room.account_data = RoomAccountData::new();
        room.account_data.events = account_data;
        room.ephemeral = Ephemeral::new();
        for event in ephemeral {
            room.ephemeral.events.push(Raw::from_json(raw(&event)?));
        }
        if let Some(summary) = summary {
            room.summary = summary;
        }
        let (unread, unread_threads) =
            self.unread(room_id, user_id, now.pos, params.filter.timeline.unread_thread_notifications)?;
        room.unread_notifications = unread;
        room.unread_thread_notifications = unread_threads;
        Ok(Some(room))
    }

    fn left_room(
        &self,
        session: &Session,
        room_id: &RoomId,
        since: Option<SyncToken>,
        left_at: StreamPos,
        params: &SyncParams,
        lineage: &Lineage,
        account_data: Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>,
    ) -> Result<LeftRoom> {
        let user_id = &session.user_id;
        let after = since.map(|s| s.pos).unwrap_or(0);
        let (timeline, limited) = self.timeline_window(user_id, room_id, after, left_at, &params.filter.timeline)?;
        let full = since.is_none() || params.full_state;
        let mut room = LeftRoom::new();
        room.state =
            self.state_section(user_id, room_id, since, full, limited, &timeline, left_at, params, lineage, &[])?;
        room.timeline = Timeline::new();
        room.timeline.limited = limited;
        room.timeline.prev_batch = timeline.first().and_then(|p| p.stored.pos).map(|pos| position_token(pos - 1));
        for pdu in &timeline {
            room.timeline
                .events
                .push(Raw::from_json(self.rooms.sync_event_raw(pdu, (user_id, Some(&session.session_id)))?));
        }
        room.account_data = RoomAccountData::new();
        room.account_data.events = account_data;
        Ok(room)
    }

    /// Room summary: heroes (the first 5 other members by stream order, joined or
    /// invited; else any) and member counts.
    pub(crate) fn summary(&self, room_id: &RoomId, user_id: &UserId) -> Result<RoomSummary> {
        let mut members = Vec::new();
        for (member, membership) in self.core.db.members(room_id)?.iter() {
            let pos = self.core.db.membership(room_id, member)?.map(|m| m.pos).unwrap_or(StreamPos::MAX);
            members.push((member.clone(), membership.clone(), pos));
        }
        members.sort_by_key(|(_, _, pos)| *pos);
        let members: Vec<(OwnedUserId, String)> = members.into_iter().map(|(u, m, _)| (u, m)).collect();
        let joined = members.iter().filter(|(_, m)| m == "join").count();
        let invited = members.iter().filter(|(_, m)| m == "invite").count();
        let mut heroes: Vec<OwnedUserId> = members
            .iter()
            .filter(|(u, m)| u != user_id && (m == "join" || m == "invite"))
            .map(|(u, _)| u.clone())
            .collect();
        if heroes.is_empty() {
            heroes = members.iter().filter(|(u, _)| u != user_id).map(|(u, _)| u.clone()).collect();
        }
        heroes.truncate(5);
        let mut summary = RoomSummary::new();
        summary.heroes = heroes;
        summary.joined_member_count = Some(UInt::try_from(joined as u64).unwrap_or_default());
        summary.invited_member_count = Some(UInt::try_from(invited as u64).unwrap_or_default());
        Ok(summary)
    }

    /// Notification and highlight counts from the push-rule evaluation done when each event
    /// was appended (`service::push`): notified events after the user's read receipts (an
    /// unthreaded `m.read`/`m.read.private` clears everything before it, a threaded one its
    /// thread, `main` the main timeline) or their own latest event. With `by_thread`
    /// (`unread_thread_notifications` in the timeline filter), the room's counts are the main
    /// timeline's and each thread with unread notifications gets its own.
    pub(crate) fn unread(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        upto: StreamPos,
        by_thread: bool,
    ) -> Result<(UnreadNotificationsCount, std::collections::BTreeMap<ruma::OwnedEventId, UnreadNotificationsCount>)>
    {
        let counts = self.rooms.push.counts(room_id, user_id, upto)?;
        let count = |(notifications, highlights): (u64, u64)| {
            let mut count = UnreadNotificationsCount::new();
            count.notification_count = Some(UInt::try_from(notifications).unwrap_or_default());
            count.highlight_count = Some(UInt::try_from(highlights).unwrap_or_default());
            count
        };
        if !by_thread {
            return Ok((count(counts.all), std::collections::BTreeMap::new()));
        }
        let threads = counts
            .threads
            .into_iter()
            .filter_map(|(root, c)| Some((ruma::OwnedEventId::try_from(root).ok()?, count(c))))
            .collect();
        Ok((count(counts.main), threads))
    }
}

fn is_empty(response: &Response) -> bool {
    response.rooms.join.is_empty()
        && response.rooms.invite.is_empty()
        && response.rooms.leave.is_empty()
        && response.rooms.knock.is_empty()
        && response.account_data.events.is_empty()
        && response.presence.events.is_empty()
        && response.to_device.events.is_empty()
        && response.device_lists.changed.is_empty()
        && response.device_lists.left.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns() {
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(!type_matches("m.room.*", "m.typing"));
        assert!(type_matches("m.*.message", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room."));
        assert!(!type_matches("m.room.*x", "m.room.message"));
        assert!(type_matches("*.message", "m.room.message"));
        assert!(type_matches("m.*.*e", "m.room.message"));
        assert!(!type_matches("m.*.*x", "m.room.message"));
        assert!(type_matches("m.*message", "m.message"));
        assert!(!type_matches("m.room.message*", "m.room"));
        assert!(type_matches("**", ""));
        assert!(!type_matches("m.room.message", "m.room.messages"));
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = SyncToken::new(42, 7);
        assert_eq!(SyncToken::parse(&token.render()).unwrap(), token);
        let partial = SyncToken { to_device: Some(40), ..token };
        assert_eq!(SyncToken::parse(&partial.render()).unwrap(), partial);
        assert_eq!(partial.to_device_pos(), 40);
        assert!(SyncToken::parse("s42_7_43").is_err(), "to-device beyond the stream");
        assert!(SyncToken::parse("garbage").is_err());
        assert!(SyncToken::parse("s-1_2").is_err());
        assert_eq!(SyncToken::parse("s5").unwrap(), SyncToken::new(5, 0));
    }
}
