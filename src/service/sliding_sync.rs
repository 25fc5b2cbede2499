//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`):
//! room lists sorted by recency with ranges and filters, room subscriptions, per-connection
//! memory of what was sent (so later responses carry only changes), `pos` tokens, long-polls,
//! and the to_device, e2ee, account_data, receipts and typing extensions.
//!
//! Connections live in memory, keyed by (user, device, conn_id). Each response is a numbered
//! snapshot of what the client then holds; a request names the snapshot it builds on with
//! `pos`. A `pos` this process did not issue to that connection (a restart, an expired or
//! replaced connection, another user's token) is answered with M_UNKNOWN_POS, and the client
//! starts over. The wire format is ruma's (the one Synapse and the matrix-rust-sdk speak).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    JsOption, OwnedDeviceId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::{
        UnreadNotificationsCount,
        v5::{self, request, response},
    },
    events::{StateEventType, TimelineEventType},
    serde::Raw,
};
use serde_json::Value;

use super::{
    Core,
    e2ee::E2ee,
    ephemeral::Ephemeral,
    rooms::{Pdu, Rooms, StateMap, timeline::position_token},
    sync::{EventFilter, Sync, raw_event},
    users::Session,
};
use crate::{
    error::{Error, Result},
    storage::{Direction, MembershipRecord, StreamPos},
};

/// Longest long-poll a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// The most timeline events one room carries in one response.
const MAX_TIMELINE_LIMIT: usize = 500;
/// A connection not used for this long is forgotten (its next `pos` gets M_UNKNOWN_POS).
const CONNECTION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Connections one device may keep; the least recently used goes first.
const MAX_CONNECTIONS_PER_DEVICE: usize = 10;
/// Responses kept per connection that the client has not confirmed yet (retries, lost responses).
const MAX_UNCONFIRMED: usize = 10;
/// At most this many lists and room subscriptions in one request (MSC4186).
const MAX_LISTS: usize = 100;
const MAX_SUBSCRIPTIONS: usize = 100;
/// Default and largest number of to-device messages in one response.
const TO_DEVICE_LIMIT: usize = 100;
/// Stream entries a long-poll reads on a wake-up before it just recomputes.
const WAKE_SCAN_LIMIT: usize = 1000;
/// Room types and searched bump positions remembered (each map cleared when full).
const ROOM_TYPE_CACHE_LIMIT: usize = 100_000;
/// How far back a room without a recorded bump position is searched for one.
const BUMP_SCAN_LIMIT: usize = 100;

/// Event types that move a room up the list (and set its `bump_stamp`): what a person would
/// call activity. State changes, reactions and edits do not.
pub fn bumps(kind: &TimelineEventType) -> bool {
    matches!(
        kind.to_string().as_str(),
        "m.room.create"
            | "m.room.message"
            | "m.room.encrypted"
            | "m.sticker"
            | "m.call.invite"
            | "m.poll.start"
            | "org.matrix.msc3381.poll.start"
            | "m.beacon_info"
            | "org.matrix.msc3672.beacon_info"
            | "m.beacon"
            | "org.matrix.msc3672.beacon"
    )
}

/// What a request asks for, beyond ruma's types: the `spaces` filter of each list (ruma's
/// `ListFilters` has no such field; the handler reads it from the body).
#[derive(Clone, Debug, Default)]
pub struct ExtraListFilters {
    pub spaces: Option<Vec<OwnedRoomId>>,
    pub tags: Option<Vec<String>>,
    pub not_tags: Vec<String>,
}

impl ExtraListFilters {
    /// `lists.{name}.filters.{spaces,tags,not_tags}` of a request body, by list name.
    pub fn from_body(body: &[u8]) -> BTreeMap<String, Self> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else { return BTreeMap::new() };
        let Some(Value::Object(lists)) = body.get("lists") else { return BTreeMap::new() };
        let strings = |value: Option<&Value>| -> Option<Vec<String>> {
            value?.as_array().map(|items| items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect())
        };
        lists
            .iter()
            .filter_map(|(name, list)| {
                let filters = list.get("filters")?;
                let spaces = strings(filters.get("spaces"))
                    .map(|ids| ids.into_iter().filter_map(|id| OwnedRoomId::try_from(id).ok()).collect());
                let extra = Self {
                    spaces,
                    tags: strings(filters.get("tags")),
                    not_tags: strings(filters.get("not_tags")).unwrap_or_default(),
                };
                Some((name.clone(), extra))
            })
            .collect()
    }
}

/// A response and the rooms whose timeline reaches back before what the client had
/// (`expanded_timeline`, which ruma's `Room` cannot carry).
pub struct SlidingSyncOutput {
    pub response: v5::Response,
    pub expanded: Vec<OwnedRoomId>,
}

/// `required_state` of one room config, parsed: `*` wildcards, `$ME`, `$LAZY`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RequiredState {
    /// `["*", "*"]`: every state event.
    all: bool,
    /// `[type, "*"]`.
    all_keys_of: BTreeSet<String>,
    /// `["*", key]`.
    any_type_with: BTreeSet<String>,
    exact: BTreeSet<(String, String)>,
    /// `["m.room.member", "$LAZY"]`: members of the timeline's senders.
    lazy: bool,
}

impl RequiredState {
    fn parse(entries: &[(StateEventType, String)], user_id: &UserId) -> Self {
        let mut parsed = Self::default();
        for (kind, key) in entries {
            let kind = kind.to_string();
            let key = if key == "$ME" { user_id.to_string() } else { key.clone() };
            match (kind.as_str(), key.as_str()) {
                ("*", "*") => parsed.all = true,
                ("m.room.member", "$LAZY") => parsed.lazy = true,
                ("*", _) => {
                    parsed.any_type_with.insert(key);
                }
                (_, "*") => {
                    parsed.all_keys_of.insert(kind);
                }
                _ => {
                    parsed.exact.insert((kind, key));
                }
            }
        }
        parsed
    }

    /// The union of two configs (a room in several lists gets the superset).
    fn merge(&mut self, other: &Self) {
        self.all |= other.all;
        self.lazy |= other.lazy;
        self.all_keys_of.extend(other.all_keys_of.iter().cloned());
        self.any_type_with.extend(other.any_type_with.iter().cloned());
        self.exact.extend(other.exact.iter().cloned());
    }

    fn matches(&self, kind: &str, key: &str) -> bool {
        self.all
            || self.all_keys_of.contains(kind)
            || self.any_type_with.contains(key)
            || self.exact.contains(&(kind.to_owned(), key.to_owned()))
    }

    /// Lazy loading is moot when every membership is asked for anyway.
    fn lazy_members(&self) -> bool {
        self.lazy && !self.matches("m.room.member", "\u{0}any")
    }
}

/// The room config a room gets from every list and subscription that matched it.
#[derive(Clone, Debug, Default)]
struct RoomConfig {
    timeline_limit: usize,
    required_state: RequiredState,
    /// Lists that matched the room (extension scoping).
    lists: BTreeSet<String>,
    subscribed: bool,
}

impl RoomConfig {
    fn add(&mut self, timeline_limit: UInt, required_state: RequiredState) {
        let limit = usize::try_from(u64::from(timeline_limit)).unwrap_or(usize::MAX).min(MAX_TIMELINE_LIMIT);
        self.timeline_limit = self.timeline_limit.max(limit);
        self.required_state.merge(&required_state);
    }
}

/// What the client holds of one room, as of a snapshot.
#[derive(Clone, Debug)]
struct RoomSent {
    /// Room data is sent up to this stream position.
    pos: StreamPos,
    membership: String,
    /// The membership event the data was sent for (a new invite replaces an old one).
    membership_event: ruma::OwnedEventId,
    timeline_limit: usize,
    required_state: RequiredState,
    /// How many of the room's latest events (up to `pos`) the client holds without a gap;
    /// `usize::MAX` when it holds the whole visible history.
    contiguous: usize,
    name: Option<String>,
    avatar: Option<String>,
    heroes: Vec<(OwnedUserId, Option<String>, Option<String>)>,
    is_dm: bool,
    joined: u64,
    invited: u64,
    counts: (u64, u64),
    bump: StreamPos,
    /// Members sent because of `$LAZY` (not sent again until the timeline has a gap).
    lazy_members: HashSet<OwnedUserId>,
}

/// What a connection's client holds after one response.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    stream: StreamPos,
    typing: u64,
    rooms: HashMap<OwnedRoomId, RoomSent>,
    list_counts: BTreeMap<String, u64>,
    /// Rooms whose account data, receipts and typing were sent in full once.
    account_data_rooms: HashSet<OwnedRoomId>,
    receipt_rooms: HashSet<OwnedRoomId>,
    typing_rooms: HashSet<OwnedRoomId>,
}

type ConnectionKey = (OwnedUserId, OwnedDeviceId, String);

struct Connection {
    /// Random per connection: a `pos` of an earlier connection with the same key is unknown.
    nonce: String,
    snapshots: BTreeMap<u64, Arc<Snapshot>>,
    next: u64,
    last_used: Instant,
}

/// A user's membership in one room, with where it sorts.
struct Candidate {
    room_id: OwnedRoomId,
    record: MembershipRecord,
    bump: StreamPos,
}

/// Per-computation cache of facts the list filters need.
#[derive(Default)]
struct Facts {
    direct: HashSet<OwnedRoomId>,
    spaces: HashMap<OwnedRoomId, HashSet<OwnedRoomId>>,
    encrypted: HashMap<OwnedRoomId, bool>,
}

pub struct SlidingSync {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
    ephemeral: Arc<Ephemeral>,
    e2ee: Arc<E2ee>,
    sync: Arc<Sync>,
    connections: Mutex<HashMap<ConnectionKey, Connection>>,
    /// Room types (they never change), so the usual `not_room_types: ["m.space"]` filter costs
    /// no reads after the first request.
    room_types: Mutex<HashMap<OwnedRoomId, Option<String>>>,
    /// Bump positions found by searching rooms whose head has none (joined over federation
    /// and quiet since), with the head position they were found at.
    scanned_bumps: Mutex<HashMap<OwnedRoomId, (StreamPos, StreamPos)>>,
}

/// What one computation produced.
struct Computed {
    response: v5::Response,
    snapshot: Snapshot,
    expanded: Vec<OwnedRoomId>,
    /// Something the client does not have yet (a long-poll returns).
    changed: bool,
    /// The rooms the lists' ranges and the subscriptions matched.
    in_view: Vec<OwnedRoomId>,
}

fn uint(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

fn count_of((notifications, highlights): (u64, u64)) -> UnreadNotificationsCount {
    let mut count = UnreadNotificationsCount::new();
    count.notification_count = Some(uint(notifications));
    count.highlight_count = Some(uint(highlights));
    count
}

fn random_nonce() -> String {
    ruma::TransactionId::new().to_string().chars().filter(char::is_ascii_alphanumeric).take(12).collect()
}

impl SlidingSync {
    pub fn new(
        core: Arc<Core>,
        rooms: Arc<Rooms>,
        ephemeral: Arc<Ephemeral>,
        e2ee: Arc<E2ee>,
        sync: Arc<Sync>,
    ) -> Self {
        Self {
            core,
            rooms,
            ephemeral,
            e2ee,
            sync,
            connections: Mutex::default(),
            room_types: Mutex::default(),
            scanned_bumps: Mutex::default(),
        }
    }

    /// One sliding sync request: answers at once when there is something to send (always for
    /// a new connection), otherwise waits up to `timeout` for something the connection cares
    /// about.
    pub async fn sync(
        &self,
        session: &Session,
        request: v5::Request,
        extra: BTreeMap<String, ExtraListFilters>,
    ) -> Result<SlidingSyncOutput> {
        if request.lists.len() > MAX_LISTS {
            return Err(Error::invalid_param(format!("At most {MAX_LISTS} lists.")));
        }
        if request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(Error::invalid_param(format!("At most {MAX_SUBSCRIPTIONS} room subscriptions.")));
        }
        for list in request.lists.values() {
            if list.ranges.iter().any(|(start, end)| start > end) {
                return Err(Error::invalid_param("A list range must not end before it starts."));
            }
        }
        let key: ConnectionKey =
            (session.user_id.clone(), session.device_id.clone(), request.conn_id.clone().unwrap_or_default());
        let (nonce, from) = self.begin(&key, request.pos.as_deref())?;
        let timeout =
            if from.is_some() { request.timeout.unwrap_or_default().min(MAX_TIMEOUT) } else { Duration::ZERO };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut positions = self.core.db.subscribe();
        let mut typing = self.ephemeral.subscribe_typing();
        positions.borrow_and_update();
        typing.borrow_and_update();
        let mut computed = self.compute(session, &request, &extra, from.as_deref())?;
        // Everything up to here was looked at: a wake-up for positions that concern nothing
        // of this connection is answered by a few cheap reads instead of a recomputation.
        let mut seen = computed.snapshot.stream;
        loop {
            if computed.changed || tokio::time::Instant::now() >= deadline {
                break;
            }
            let recompute = tokio::select! {
                changed = positions.changed() => {
                    if changed.is_err() { break }
                    positions.borrow_and_update();
                    let now = self.core.db.current_pos();
                    let concerns = self.may_concern(session, seen, now, &computed.in_view)?;
                    seen = now;
                    concerns
                }
                changed = typing.changed() => {
                    if changed.is_err() { break }
                    true
                }
                () = tokio::time::sleep_until(deadline) => break,
            };
            if recompute {
                positions.borrow_and_update();
                typing.borrow_and_update();
                computed = self.compute(session, &request, &extra, from.as_deref())?;
                seen = computed.snapshot.stream;
            }
        }
        let Computed { mut response, snapshot, expanded, .. } = computed;
        let stream = snapshot.stream;
        let number = self.finish(&key, &nonce, snapshot);
        response.pos = format!("s{stream}_{nonce}.{number}");
        response.txn_id = request.txn_id.clone();
        Ok(SlidingSyncOutput { response, expanded })
    }

    /// Finds the snapshot `pos` names (forgetting older ones: the client has moved past
    /// them), or starts a new connection when there is no `pos`.
    fn begin(&self, key: &ConnectionKey, pos: Option<&str>) -> Result<(String, Option<Arc<Snapshot>>)> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        connections.retain(|_, connection| now.duration_since(connection.last_used) < CONNECTION_TTL);
        let Some(pos) = pos else {
            let mine: Vec<(Instant, ConnectionKey)> = connections
                .iter()
                .filter(|(k, _)| k.0 == key.0 && k.1 == key.1 && k.2 != key.2)
                .map(|(k, c)| (c.last_used, k.clone()))
                .collect();
            if mine.len() >= MAX_CONNECTIONS_PER_DEVICE {
                let mut mine = mine;
                mine.sort();
                for (_, old) in mine.iter().take(mine.len() + 1 - MAX_CONNECTIONS_PER_DEVICE) {
                    connections.remove(old);
                }
            }
            let nonce = random_nonce();
            connections.insert(
                key.clone(),
                Connection { nonce: nonce.clone(), snapshots: BTreeMap::new(), next: 1, last_used: now },
            );
            return Ok((nonce, None));
        };
        let unknown = || Error::unknown_pos("Unknown or expired position; start a new sliding sync connection.");
        let (nonce, number) = pos
            .rsplit_once('_')
            .and_then(|(_, tail)| tail.split_once('.'))
            .and_then(|(nonce, number)| Some((nonce.to_owned(), number.parse::<u64>().ok()?)))
            .ok_or_else(unknown)?;
        let connection = connections.get_mut(key).filter(|c| c.nonce == nonce).ok_or_else(unknown)?;
        let snapshot = connection.snapshots.get(&number).cloned().ok_or_else(unknown)?;
        connection.snapshots = connection.snapshots.split_off(&number);
        connection.last_used = now;
        Ok((nonce, Some(snapshot)))
    }

    /// Stores the snapshot a response leaves the client with; returns its number.
    fn finish(&self, key: &ConnectionKey, nonce: &str, snapshot: Snapshot) -> u64 {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let Some(connection) = connections.get_mut(key).filter(|c| c.nonce == nonce) else {
            // The connection was replaced or expired meanwhile: this `pos` will be unknown.
            return 0;
        };
        let number = connection.next;
        connection.next += 1;
        connection.snapshots.insert(number, Arc::new(snapshot));
        while connection.snapshots.len() > MAX_UNCONFIRMED + 1 {
            // Keep the confirmed one (the smallest) and the newest unconfirmed ones.
            let Some(second) = connection.snapshots.keys().nth(1).copied() else { break };
            connection.snapshots.remove(&second);
        }
        connection.last_used = Instant::now();
        number
    }

    /// Whether the stream positions in (seen, now] may change what this connection is sent:
    /// a membership of the user, an event in one of their rooms, their account data, a
    /// to-device message for the device, any device-list change, a receipt in a room in view.
    /// A wrong "no" only delays news to the long-poll's timeout (the next computation covers
    /// everything since the snapshot), never loses it.
    fn may_concern(&self, session: &Session, seen: StreamPos, now: StreamPos, in_view: &[OwnedRoomId]) -> Result<bool> {
        if now <= seen {
            return Ok(false);
        }
        let db = &self.core.db;
        let user_id = &session.user_id;
        let my_rooms = db.rooms_of_user(user_id)?;
        let mut mine = HashSet::new();
        for (room_id, record) in my_rooms.iter() {
            if record.pos > seen {
                return Ok(true);
            }
            mine.insert(room_id);
        }
        let events = db.stream_events(seen, now, WAKE_SCAN_LIMIT)?;
        if events.len() >= WAKE_SCAN_LIMIT || events.iter().any(|(_, room_id, _)| mine.contains(room_id)) {
            return Ok(true);
        }
        if !db.account_data_since(user_id, seen)?.is_empty()
            || !db.to_device_messages(user_id, &session.device_id, seen, now, 1)?.is_empty()
            || !db.device_list_changes(seen, now)?.is_empty()
        {
            return Ok(true);
        }
        for room_id in in_view {
            if db.receipts_since(room_id, seen)?.iter().any(|r| r.pos <= now) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The user's rooms a list may show, newest activity first.
    fn candidates(&self, user_id: &UserId, now: StreamPos, from: Option<&Snapshot>) -> Result<Vec<Candidate>> {
        let mut candidates = Vec::new();
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.pos > now {
                continue;
            }
            let keep = match record.membership.as_str() {
                "join" | "invite" | "knock" => true,
                // Rooms the user left themselves are shown only when the leave is news to the
                // connection; kicks and bans always (the user may not know yet).
                "leave" | "ban" => {
                    let newly = from.is_some_and(|f| record.pos > f.stream);
                    let by_other = record.membership == "ban"
                        || self.rooms.pdu(&record.event_id)?.is_some_and(|pdu| pdu.sender != user_id);
                    (newly || by_other) && !self.core.db.is_forgotten(user_id, &room_id)?
                }
                _ => false,
            };
            if !keep {
                continue;
            }
            let bump = if record.membership == "join" { self.room_bump(&room_id)?.max(record.pos) } else { record.pos };
            candidates.push(Candidate { room_id: room_id.clone(), record: record.clone(), bump });
        }
        candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
        Ok(candidates)
    }

    /// The position of a room's latest bumping event, from its head (one read); rooms written
    /// before heads recorded it are searched backwards a little, else their last event counts.
    fn room_bump(&self, room_id: &RoomId) -> Result<StreamPos> {
        let Some(head) = self.core.db.room_head(room_id)? else { return Ok(0) };
        if let Some(bump) = head.last_bump {
            return Ok(bump);
        }
        if let Some((last_pos, bump)) = self.scanned_bumps.lock().unwrap_or_else(|e| e.into_inner()).get(room_id)
            && *last_pos == head.last_pos
        {
            return Ok(*bump);
        }
        let mut bump = head.last_pos;
        for (pos, event_id, _) in
            self.core.db.timeline(room_id, head.last_pos + 1, Direction::Backward, BUMP_SCAN_LIMIT)?
        {
            if self.rooms.pdu(&event_id)?.is_some_and(|pdu| bumps(&pdu.kind)) {
                bump = pos;
                break;
            }
        }
        let mut scanned = self.scanned_bumps.lock().unwrap_or_else(|e| e.into_inner());
        if scanned.len() >= ROOM_TYPE_CACHE_LIMIT {
            scanned.clear();
        }
        scanned.insert(room_id.to_owned(), (head.last_pos, bump));
        Ok(bump)
    }

    /// Rooms named in `m.direct` account data.
    fn direct_rooms(&self, user_id: &UserId) -> Result<HashSet<OwnedRoomId>> {
        let Some(content) = self.core.db.account_data(user_id, None, "m.direct")? else { return Ok(HashSet::new()) };
        let value: Value = serde_json::from_str(content.get()).unwrap_or_default();
        Ok(value
            .as_object()
            .into_iter()
            .flat_map(|users| users.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|room| room.as_str().and_then(|r| RoomId::parse(r).ok()))
            .collect())
    }

    /// A room's type (`m.space`, ...) from its create event (one read, then remembered: it never
    /// changes), or for a room this server is not in, from the invite's stripped state.
    fn room_type(&self, candidate: &Candidate) -> Result<Option<String>> {
        if let Some(known) = self.room_types.lock().unwrap_or_else(|e| e.into_inner()).get(&candidate.room_id) {
            return Ok(known.clone());
        }
        let room_type = match self.rooms.room_record(&candidate.room_id)? {
            Some(record) => self.rooms.pdu(&record.create_event_id)?.and_then(|create| create.content_str("type")),
            None => {
                let stripped = self.stripped_of(candidate)?;
                stripped
                    .iter()
                    .find(|e| e.get("type").and_then(Value::as_str) == Some("m.room.create"))
                    .and_then(|create| create.pointer("/content/type").and_then(Value::as_str).map(str::to_owned))
            }
        };
        let mut known = self.room_types.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= ROOM_TYPE_CACHE_LIMIT {
            known.clear();
        }
        known.insert(candidate.room_id.clone(), room_type.clone());
        Ok(room_type)
    }

    /// Whether a room has an `m.room.encryption` state event (which cannot be undone).
    fn encrypted(&self, facts: &mut Facts, candidate: &Candidate) -> Result<bool> {
        if let Some(known) = facts.encrypted.get(&candidate.room_id) {
            return Ok(*known);
        }
        let encrypted = match self.rooms.current_state(&candidate.room_id)? {
            Some(state) => state.contains_key(&(StateEventType::RoomEncryption, String::new())),
            None => self
                .stripped_of(candidate)?
                .iter()
                .any(|e| e.get("type").and_then(Value::as_str) == Some("m.room.encryption")),
        };
        facts.encrypted.insert(candidate.room_id.clone(), encrypted);
        Ok(encrypted)
    }

    fn stripped_of(&self, candidate: &Candidate) -> Result<Vec<Value>> {
        let stripped: Vec<Raw<Value>> = self.sync.stripped_state(&candidate.room_id, &candidate.record.event_id)?;
        Ok(stripped.into_iter().filter_map(|e| e.deserialize().ok()).collect())
    }

    /// The rooms a space lists as children (`m.space.child` with a `via`), if the user is in it.
    fn space_children(&self, user_id: &UserId, facts: &mut Facts, space: &RoomId) -> Result<HashSet<OwnedRoomId>> {
        if let Some(children) = facts.spaces.get(space) {
            return Ok(children.clone());
        }
        let mut children = HashSet::new();
        if self.core.db.membership(space, user_id)?.is_some_and(|m| m.membership == "join")
            && let Some(state) = self.rooms.current_state(space)?
        {
            for ((kind, key), event_id) in state.iter() {
                if *kind != StateEventType::SpaceChild {
                    continue;
                }
                let Some(pdu) = self.rooms.pdu(event_id)? else { continue };
                let has_via = pdu.content_value().get("via").and_then(Value::as_array).is_some_and(|v| !v.is_empty());
                if has_via && let Ok(room_id) = RoomId::parse(key.as_str()) {
                    children.insert(room_id);
                }
            }
        }
        facts.spaces.insert(space.to_owned(), children.clone());
        Ok(children)
    }

    fn is_dm(&self, facts: &Facts, candidate: &Candidate) -> Result<bool> {
        if facts.direct.contains(&candidate.room_id) {
            return Ok(true);
        }
        // An invite to a direct chat says so itself (before the client can write m.direct).
        Ok(candidate.record.membership == "invite"
            && self
                .rooms
                .pdu(&candidate.record.event_id)?
                .is_some_and(|pdu| pdu.content_value().get("is_direct") == Some(&Value::Bool(true))))
    }

    fn passes(
        &self,
        user_id: &UserId,
        facts: &mut Facts,
        candidate: &Candidate,
        filters: Option<&request::ListFilters>,
        extra: Option<&ExtraListFilters>,
    ) -> Result<bool> {
        if let Some(filters) = filters {
            if let Some(want) = filters.is_invite
                && want != (candidate.record.membership == "invite")
            {
                return Ok(false);
            }
            if let Some(want) = filters.is_dm
                && want != self.is_dm(facts, candidate)?
            {
                return Ok(false);
            }
            if let Some(want) = filters.is_encrypted
                && want != self.encrypted(facts, candidate)?
            {
                return Ok(false);
            }
            if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
                let room_type = self.room_type(candidate)?;
                if filters.not_room_types.iter().any(|t| t.as_str() == room_type.as_deref()) {
                    return Ok(false);
                }
                if !filters.room_types.is_empty()
                    && !filters.room_types.iter().any(|t| t.as_str() == room_type.as_deref())
                {
                    return Ok(false);
                }
            }
        }
        if let Some(extra) = extra {
            if let Some(spaces) = &extra.spaces {
                let mut inside = false;
                for space in spaces {
                    if self.space_children(user_id, facts, space)?.contains(&candidate.room_id) {
                        inside = true;
                        break;
                    }
                }
                if !inside {
                    return Ok(false);
                }
            }
            if extra.tags.is_some() || !extra.not_tags.is_empty() {
                let tags: BTreeSet<String> = self
                    .core
                    .db
                    .account_data(user_id, Some(&candidate.room_id), "m.tag")?
                    .and_then(|c| serde_json::from_str::<Value>(c.get()).ok())
                    .and_then(|v| v.get("tags").and_then(Value::as_object).map(|t| t.keys().cloned().collect()))
                    .unwrap_or_default();
                if extra.not_tags.iter().any(|t| tags.contains(t)) {
                    return Ok(false);
                }
                if let Some(want) = &extra.tags
                    && !want.iter().any(|t| tags.contains(t))
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn compute(
        &self,
        session: &Session,
        request: &v5::Request,
        extra: &BTreeMap<String, ExtraListFilters>,
        from: Option<&Snapshot>,
    ) -> Result<Computed> {
        let user_id = &session.user_id;
        let now = self.core.db.current_pos();
        let typing_serial = self.ephemeral.typing_serial();
        let mut response = v5::Response::new(String::new());
        let mut snapshot = match from {
            Some(from) => Snapshot { stream: now, typing: typing_serial, ..from.clone() },
            None => Snapshot { stream: now, typing: typing_serial, ..Snapshot::default() },
        };
        let mut changed = false;

        // Lists: every candidate room, filtered, sorted, cut by the ranges.
        let candidates = self.candidates(user_id, now, from)?;
        let mut facts = Facts { direct: self.direct_rooms(user_id)?, ..Facts::default() };
        let mut configs: BTreeMap<OwnedRoomId, RoomConfig> = BTreeMap::new();
        let mut by_room: HashMap<&RoomId, &Candidate> = HashMap::new();
        snapshot.list_counts.clear();
        for (name, list) in &request.lists {
            let required_state = RequiredState::parse(&list.room_details.required_state, user_id);
            let mut matching = Vec::new();
            for candidate in &candidates {
                if self.passes(user_id, &mut facts, candidate, list.filters.as_ref(), extra.get(name))? {
                    matching.push(candidate);
                }
            }
            let count = matching.len() as u64;
            let mut result = response::List::default();
            result.count = uint(count);
            response.lists.insert(name.clone(), result);
            if from.and_then(|f| f.list_counts.get(name)) != Some(&count) {
                changed = true;
            }
            snapshot.list_counts.insert(name.clone(), count);
            for (start, end) in &list.ranges {
                let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
                let end = usize::try_from(u64::from(*end)).unwrap_or(usize::MAX);
                for candidate in matching.iter().skip(start).take(end.saturating_sub(start).saturating_add(1)) {
                    let config = configs.entry(candidate.room_id.clone()).or_default();
                    config.add(list.room_details.timeline_limit, required_state.clone());
                    config.lists.insert(name.clone());
                    by_room.insert(&candidate.room_id, candidate);
                }
            }
        }

        // Room subscriptions: any room the user is or was in (not forgotten), or is invited to.
        let mut subscribed_candidates = Vec::new();
        for (room_id, subscription) in &request.room_subscriptions {
            if by_room.contains_key(&**room_id) {
                let config = configs.entry(room_id.clone()).or_default();
                config.add(subscription.timeline_limit, RequiredState::parse(&subscription.required_state, user_id));
                config.subscribed = true;
                continue;
            }
            let Some(record) = self.core.db.membership(room_id, user_id)? else { continue };
            if record.pos > now || self.core.db.is_forgotten(user_id, room_id)? {
                continue;
            }
            let bump = if record.membership == "join" { self.room_bump(room_id)?.max(record.pos) } else { record.pos };
            subscribed_candidates.push(Candidate { room_id: room_id.clone(), record, bump });
            let config = configs.entry(room_id.clone()).or_default();
            config.add(subscription.timeline_limit, RequiredState::parse(&subscription.required_state, user_id));
            config.subscribed = true;
        }
        for candidate in &subscribed_candidates {
            by_room.insert(&candidate.room_id, candidate);
        }

        let mut expanded = Vec::new();
        let mut timelines: HashMap<OwnedRoomId, HashSet<ruma::OwnedEventId>> = HashMap::new();
        for (room_id, config) in &configs {
            let Some(candidate) = by_room.get(&**room_id) else { continue };
            let previous = from.and_then(|f| f.rooms.get(room_id));
            let is_dm = self.is_dm(&facts, candidate)?;
            let built = self.room(session, candidate, config, previous, from, now, is_dm)?;
            if let Some(sent) = built.sent {
                snapshot.rooms.insert(room_id.clone(), sent);
            }
            if let Some(room) = built.room {
                if built.expanded {
                    expanded.push(room_id.clone());
                }
                timelines.insert(room_id.clone(), built.timeline_ids);
                response.rooms.insert(room_id.clone(), room);
                changed = true;
            }
        }

        // Extensions.
        let extensions = &request.extensions;
        let scoped = |lists: &Option<Vec<String>>, rooms: &Option<Vec<request::ExtensionRoomConfig>>| {
            let mut relevant: BTreeSet<OwnedRoomId> = BTreeSet::new();
            let all_lists = lists.as_ref().is_none_or(|l| l.iter().any(|n| n == "*"));
            let all_rooms =
                rooms.as_ref().is_none_or(|r| r.iter().any(|c| *c == request::ExtensionRoomConfig::AllSubscribed));
            for (room_id, config) in &configs {
                let by_list =
                    config.lists.iter().any(|name| all_lists || lists.as_ref().is_some_and(|l| l.contains(name)));
                let by_subscription = config.subscribed
                    && (all_rooms
                        || rooms
                            .as_ref()
                            .is_some_and(|r| r.contains(&request::ExtensionRoomConfig::Room(room_id.clone()))));
                if by_list || by_subscription {
                    relevant.insert(room_id.clone());
                }
            }
            relevant
        };

        if extensions.to_device.enabled == Some(true) {
            let acknowledged = match extensions.to_device.since.as_deref() {
                Some(since) => Some(since.parse::<StreamPos>().map_err(|_| {
                    Error::invalid_param("extensions.to_device.since must be a next_batch from this server.")
                })?),
                None => None,
            };
            let limit = extensions
                .to_device
                .limit
                .map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
                .unwrap_or(TO_DEVICE_LIMIT)
                .clamp(1, TO_DEVICE_LIMIT);
            let messages = self.e2ee.to_device_for_sync(
                user_id,
                &session.device_id,
                acknowledged.filter(|a| *a <= now),
                now,
                limit,
            )?;
            let next_batch =
                if messages.len() == limit { messages.last().map(|(pos, _)| *pos).unwrap_or(now) } else { now };
            let mut to_device = response::ToDevice::default();
            to_device.next_batch = next_batch.to_string();
            to_device.events = messages.into_iter().map(|(_, event)| Raw::from_json(event)).collect();
            changed |= !to_device.events.is_empty();
            response.extensions.to_device = Some(to_device);
        }

        if extensions.e2ee.enabled == Some(true) {
            if let Some(from) = from {
                let delta = self.e2ee.device_list_delta(user_id, from.stream, now)?;
                changed |= !delta.changed.is_empty() || !delta.left.is_empty();
                response.extensions.e2ee.device_lists.changed = delta.changed;
                response.extensions.e2ee.device_lists.left = delta.left;
            }
            let (counts, fallback) = self.sync.key_counts(user_id, &session.device_id)?;
            response.extensions.e2ee.device_one_time_keys_count = counts;
            response.extensions.e2ee.device_unused_fallback_key_types = Some(fallback);
        }

        if extensions.account_data.enabled == Some(true) {
            let relevant = scoped(&extensions.account_data.lists, &extensions.account_data.rooms);
            let since = from.map(|f| f.stream).unwrap_or(0);
            let news = self.sync.account_data_events(user_id, since)?;
            let first_time: BTreeSet<&OwnedRoomId> =
                relevant.iter().filter(|r| !snapshot.account_data_rooms.contains(*r)).collect();
            let everything = if since > 0 && !first_time.is_empty() {
                self.sync.account_data_events(user_id, 0)?
            } else {
                Vec::new()
            };
            for (room_id, _, event) in &news {
                match room_id {
                    None => response.extensions.account_data.global.push(raw_event(event)?),
                    Some(room_id) if relevant.contains(room_id) && (since == 0 || !first_time.contains(room_id)) => {
                        response
                            .extensions
                            .account_data
                            .rooms
                            .entry(room_id.clone())
                            .or_default()
                            .push(raw_event(event)?);
                    }
                    _ => {}
                }
            }
            for (room_id, _, event) in &everything {
                if let Some(room_id) = room_id
                    && first_time.contains(room_id)
                {
                    response.extensions.account_data.rooms.entry(room_id.clone()).or_default().push(raw_event(event)?);
                }
            }
            changed |= !response.extensions.account_data.is_empty();
            snapshot.account_data_rooms.extend(relevant);
        }

        if extensions.receipts.enabled == Some(true) {
            for room_id in scoped(&extensions.receipts.lists, &extensions.receipts.rooms) {
                let first_time = !snapshot.receipt_rooms.contains(&room_id);
                let mut receipts = self
                    .ephemeral
                    .receipts_since(&room_id, if first_time { 0 } else { from.map(|f| f.stream).unwrap_or(0) })?;
                if first_time {
                    // The room is new to the client: its own receipts and those on the events
                    // it is being sent, not every member's history.
                    let shown = timelines.get(&room_id);
                    receipts.retain(|r| r.user_id == *user_id || shown.is_some_and(|ids| ids.contains(&r.event_id)));
                }
                receipts.retain(|r| r.pos <= now);
                if let Some(event) = Ephemeral::receipt_event(receipts, user_id) {
                    response
                        .extensions
                        .receipts
                        .rooms
                        .insert(room_id.clone(), Raw::from_json(crate::service::rooms::raw(&event)?));
                }
                snapshot.receipt_rooms.insert(room_id);
            }
            changed |= !response.extensions.receipts.is_empty();
        }

        if extensions.typing.enabled == Some(true) {
            for room_id in scoped(&extensions.typing.lists, &extensions.typing.rooms) {
                let first_time = !snapshot.typing_rooms.contains(&room_id);
                let since = if first_time { 0 } else { from.map(|f| f.typing).unwrap_or(0) };
                if let Some(event) = self.ephemeral.typing_event_since(&room_id, since) {
                    let nobody = event.pointer("/content/user_ids").and_then(Value::as_array).is_none_or(Vec::is_empty);
                    if !(first_time && nobody) {
                        response
                            .extensions
                            .typing
                            .rooms
                            .insert(room_id.clone(), Raw::from_json(crate::service::rooms::raw(&event)?));
                    }
                }
                snapshot.typing_rooms.insert(room_id);
            }
            changed |= !response.extensions.typing.is_empty();
        }

        let in_view = configs.keys().cloned().collect();
        Ok(Computed { response, snapshot, expanded, changed, in_view })
    }

    /// One room's entry: everything on first sight (`initial`), afterwards only what changed.
    #[allow(clippy::too_many_arguments)]
    fn room(
        &self,
        session: &Session,
        candidate: &Candidate,
        config: &RoomConfig,
        previous: Option<&RoomSent>,
        from: Option<&Snapshot>,
        now: StreamPos,
        is_dm: bool,
    ) -> Result<BuiltRoom> {
        let user_id = &session.user_id;
        let room_id = &candidate.room_id;
        let record = &candidate.record;
        let membership = record.membership.as_str();
        let pending = |m: &str| m == "invite" || m == "knock";
        let initial = previous.is_none_or(|p| {
            pending(&p.membership) != pending(membership)
                || (pending(membership) && p.membership_event != record.event_id)
        });

        if pending(membership) {
            let mut sent = RoomSent {
                pos: record.pos,
                membership: membership.to_owned(),
                membership_event: record.event_id.clone(),
                timeline_limit: config.timeline_limit,
                required_state: config.required_state.clone(),
                contiguous: 0,
                name: None,
                avatar: None,
                heroes: Vec::new(),
                is_dm,
                joined: 0,
                invited: 0,
                counts: (0, 0),
                bump: candidate.bump,
                lazy_members: HashSet::new(),
            };
            let mut room = response::Room::new();
            if initial {
                room.initial = Some(true);
                room.invite_state = Some(self.sync.stripped_state(room_id, &record.event_id)?);
                room.bump_stamp = Some(uint(candidate.bump));
                room.is_dm = is_dm.then_some(true);
                return Ok(BuiltRoom { room: Some(room), sent: Some(sent), ..BuiltRoom::default() });
            }
            let previous = previous.expect("not initial");
            if previous.is_dm == is_dm {
                return Ok(BuiltRoom::default());
            }
            room.is_dm = Some(is_dm);
            sent.is_dm = is_dm;
            return Ok(BuiltRoom { room: Some(room), sent: Some(sent), ..BuiltRoom::default() });
        }

        // Joined, or left / kicked / banned: data up to the membership's end.
        let end = if membership == "join" { now } else { record.pos.min(now) };
        let limit = config.timeline_limit;
        let previous = if initial { None } else { previous };
        let expand = previous.is_some_and(|p| limit > p.timeline_limit && p.contiguous < limit);
        // No timeline entry since what was sent (one seek; receipts and account data move the
        // stream without touching the room).
        let nothing_new = match previous {
            Some(p) => self
                .core
                .db
                .timeline(room_id, p.pos, Direction::Forward, 1)?
                .first()
                .is_none_or(|(pos, _, _)| *pos > end),
            None => false,
        };
        let counts = if membership == "join" { self.rooms.push.counts(room_id, user_id, end)?.all } else { (0, 0) };

        if let Some(previous) = previous
            && nothing_new
            && !expand
            && previous.required_state == config.required_state
        {
            // Only the figures that change without events: unread counts (receipts), DM status.
            // The counts go with every room sent: matrix-sdk takes an absent count as 0.
            let mut room = response::Room::new();
            room.unread_notifications = count_of(counts);
            let any = previous.counts != counts || previous.is_dm != is_dm;
            if previous.is_dm != is_dm {
                room.is_dm = Some(is_dm);
            }
            let mut sent = previous.clone();
            sent.counts = counts;
            sent.is_dm = is_dm;
            sent.timeline_limit = limit;
            return Ok(BuiltRoom { room: any.then_some(room), sent: Some(sent), ..BuiltRoom::default() });
        }

        // Timeline.
        let after = match previous {
            Some(p) if !expand => p.pos,
            _ => 0,
        };
        let filter = EventFilter { limit: Some(limit.max(1)), ..EventFilter::default() };
        let (mut timeline, mut limited) = self.sync.timeline_window(user_id, room_id, after, end, &filter)?;
        if limit == 0 {
            limited = !timeline.is_empty() || limited;
            timeline.clear();
        }
        let live_from = previous.map(|p| p.pos).or(from.map(|f| f.stream));
        let num_live = match live_from {
            Some(live_from) => timeline.iter().filter(|p| p.stored.pos.is_some_and(|pos| pos > live_from)).count(),
            None => 0,
        };
        let previous_pos = previous.map(|p| p.pos).unwrap_or(0);
        let expanded = expand && timeline.iter().any(|p| p.stored.pos.is_some_and(|pos| pos <= previous_pos));
        let contiguous = match previous {
            Some(p) if !limited && !expand => p.contiguous.saturating_add(timeline.len()),
            _ if !limited => usize::MAX,
            _ => timeline.len(),
        };

        // State.
        let state_end = self.sync.state_at_pos(room_id, end)?;
        let required = &config.required_state;
        let mut state_ids: Vec<ruma::OwnedEventId> = Vec::new();
        let mut state_moved = previous.is_none();
        match previous {
            None => {
                for ((kind, key), event_id) in state_end.iter() {
                    if required.matches(&kind.to_string(), key) {
                        state_ids.push(event_id.clone());
                    }
                }
            }
            Some(previous) => {
                let state_before = self.sync.state_at_pos(room_id, previous.pos)?;
                let delta = self.sync.state_delta(&state_before, &state_end);
                state_moved = !delta.is_empty();
                for event_id in delta {
                    if let Some(pdu) = self.rooms.pdu(&event_id)?
                        && required.matches(&pdu.kind.to_string(), pdu.state_key.as_deref().unwrap_or_default())
                    {
                        state_ids.push(event_id);
                    }
                }
                if previous.required_state != *required {
                    // The config grew: state it matches now and did not before.
                    for ((kind, key), event_id) in state_end.iter() {
                        let kind = kind.to_string();
                        if required.matches(&kind, key) && !previous.required_state.matches(&kind, key) {
                            state_ids.push(event_id.clone());
                        }
                    }
                }
            }
        }
        let mut lazy_members = match previous {
            Some(p) if !limited => p.lazy_members.clone(),
            _ => HashSet::new(),
        };
        if required.lazy_members() {
            let mut wanted: BTreeSet<&str> = timeline.iter().map(|p| p.sender.as_str()).collect();
            for pdu in &timeline {
                if pdu.kind == TimelineEventType::RoomMember
                    && let Some(target) = &pdu.state_key
                {
                    wanted.insert(target.as_str());
                }
            }
            for member in wanted {
                let Ok(member_id) = UserId::parse(member) else { continue };
                if lazy_members.contains(&member_id) {
                    continue;
                }
                if let Some(event_id) = state_end.get(&(StateEventType::RoomMember, member.to_owned())) {
                    state_ids.push(event_id.clone());
                }
                lazy_members.insert(member_id);
            }
        }
        state_ids.sort();
        state_ids.dedup();
        let mut required_state = Vec::new();
        for event_id in &state_ids {
            if let Some(pdu) = self.rooms.pdu(event_id)? {
                required_state.push(Raw::from_json(self.rooms.client_raw(&pdu, None, false)?));
            }
        }

        // Summary figures: recomputed when the state moved (or on first sight).
        let name = self
            .rooms
            .state_pdu(&state_end, &StateEventType::RoomName, "")?
            .and_then(|pdu| pdu.content_str("name"))
            .filter(|n| !n.is_empty());
        let avatar = self
            .rooms
            .state_pdu(&state_end, &StateEventType::RoomAvatar, "")?
            .and_then(|pdu| pdu.content_str("url"))
            .filter(|u| !u.is_empty());
        let (joined, invited, heroes) = match previous {
            Some(p) if !state_moved => (p.joined, p.invited, p.heroes.clone()),
            _ => {
                let mut joined = 0;
                let mut invited = 0;
                for (_, membership) in self.core.db.members(room_id)?.iter() {
                    match membership.as_str() {
                        "join" => joined += 1,
                        "invite" => invited += 1,
                        _ => {}
                    }
                }
                let heroes = if name.is_none() { self.heroes(room_id, user_id, &state_end)? } else { Vec::new() };
                (joined, invited, heroes)
            }
        };

        let mut room = response::Room::new();
        let first = previous.is_none();
        if first {
            room.initial = Some(true);
        }
        // NOTSPEC: a removed name is not announced (ruma's `name` cannot be null); the heroes
        // that now name the room are.
        if first || previous.is_some_and(|p| p.name != name) {
            room.name = name.clone();
        }
        if first || previous.is_some_and(|p| p.avatar != avatar) {
            room.avatar = match avatar.as_deref().map(OwnedMxcUri::from) {
                Some(url) => JsOption::Some(url),
                None if first => JsOption::Undefined,
                None => JsOption::Null,
            };
        }
        if (first && !heroes.is_empty()) || previous.is_some_and(|p| p.heroes != heroes) {
            room.heroes = Some(
                heroes
                    .iter()
                    .map(|(id, display_name, avatar)| {
                        let mut hero = response::Hero::new(id.clone());
                        hero.name = display_name.clone();
                        hero.avatar = avatar.as_deref().map(OwnedMxcUri::from);
                        hero
                    })
                    .collect(),
            );
        }
        if first || previous.is_some_and(|p| p.joined != joined) {
            room.joined_count = Some(uint(joined));
        }
        if first || previous.is_some_and(|p| p.invited != invited) {
            room.invited_count = Some(uint(invited));
        }
        if first || previous.is_some_and(|p| p.counts != counts) {
            room.unread_notifications = count_of(counts);
        }
        if first || previous.is_some_and(|p| p.bump != candidate.bump) {
            room.bump_stamp = Some(uint(candidate.bump));
        }
        if (first && is_dm) || previous.is_some_and(|p| p.is_dm != is_dm) {
            room.is_dm = Some(is_dm);
        }
        let timeline_ids: HashSet<ruma::OwnedEventId> = timeline.iter().map(|p| p.event_id.clone()).collect();
        let has_news = first
            || !timeline.is_empty()
            || !required_state.is_empty()
            || room.name.is_some()
            || !room.avatar.is_undefined()
            || room.heroes.is_some()
            || room.joined_count.is_some()
            || room.invited_count.is_some()
            || !room.unread_notifications.is_empty()
            || room.bump_stamp.is_some()
            || room.is_dm.is_some();
        if has_news {
            // Every room sent carries its counts, changed or not: matrix-sdk sets a room's
            // counts from each response that mentions it, an absent count as 0.
            room.unread_notifications = count_of(counts);
            room.prev_batch = Some(match timeline.first().and_then(|p| p.stored.pos) {
                Some(pos) => position_token(pos - 1),
                None => position_token(end),
            });
            room.limited = limited;
            room.num_live = Some(uint(num_live as u64));
            for pdu in &timeline {
                room.timeline.push(self.timeline_event(session, pdu)?);
            }
            room.required_state = required_state;
        }
        let sent = RoomSent {
            pos: end,
            membership: membership.to_owned(),
            membership_event: record.event_id.clone(),
            timeline_limit: limit,
            required_state: required.clone(),
            contiguous,
            name,
            avatar,
            heroes,
            is_dm,
            joined,
            invited,
            counts,
            bump: candidate.bump,
            lazy_members,
        };
        Ok(BuiltRoom { room: has_news.then_some(room), sent: Some(sent), expanded: expanded && has_news, timeline_ids })
    }

    fn timeline_event(&self, session: &Session, pdu: &Arc<Pdu>) -> Result<Raw<ruma::events::AnySyncTimelineEvent>> {
        Ok(Raw::from_json(self.rooms.sync_event_raw(pdu, (&session.user_id, Some(&session.session_id)))?))
    }

    /// Up to 5 other members to name a room after (joined and invited first, in the order
    /// they arrived; else anyone), with the name and avatar of their member events.
    fn heroes(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        state: &StateMap,
    ) -> Result<Vec<(OwnedUserId, Option<String>, Option<String>)>> {
        let summary = self.sync.summary(room_id, user_id)?;
        let mut heroes = Vec::new();
        for hero in summary.heroes {
            let member = self.rooms.state_pdu(state, &StateEventType::RoomMember, hero.as_str())?;
            let display_name = member.as_ref().and_then(|m| m.content_str("displayname")).filter(|n| !n.is_empty());
            let avatar = member.as_ref().and_then(|m| m.content_str("avatar_url")).filter(|u| !u.is_empty());
            heroes.push((hero, display_name, avatar));
        }
        Ok(heroes)
    }
}

#[derive(Default)]
struct BuiltRoom {
    room: Option<response::Room>,
    sent: Option<RoomSent>,
    expanded: bool,
    timeline_ids: HashSet<ruma::OwnedEventId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_state_wildcards_me_and_lazy() {
        let me = ruma::user_id!("@me:x");
        let parsed = RequiredState::parse(
            &[
                (StateEventType::RoomName, String::new()),
                (StateEventType::RoomMember, "$ME".into()),
                (StateEventType::RoomMember, "$LAZY".into()),
                ("m.custom".into(), "*".into()),
                ("*".into(), "k".into()),
            ],
            me,
        );
        assert!(parsed.matches("m.room.name", ""));
        assert!(!parsed.matches("m.room.name", "other"));
        assert!(parsed.matches("m.room.member", "@me:x"));
        assert!(!parsed.matches("m.room.member", "@you:x"));
        assert!(parsed.matches("m.custom", "anything"));
        assert!(parsed.matches("m.whatever", "k"));
        assert!(parsed.lazy_members());
        let all = RequiredState::parse(&[("*".into(), "*".into()), (StateEventType::RoomMember, "$LAZY".into())], me);
        assert!(all.matches("m.room.member", "@you:x"));
        assert!(!all.lazy_members(), "every member is sent anyway");
        let mut merged = parsed.clone();
        merged.merge(&all);
        assert!(merged.all && merged.lazy);
    }

    #[test]
    fn bumping_types() {
        assert!(bumps(&TimelineEventType::RoomMessage));
        assert!(bumps(&TimelineEventType::RoomEncrypted));
        assert!(bumps(&TimelineEventType::RoomCreate));
        assert!(!bumps(&TimelineEventType::RoomName));
        assert!(!bumps(&TimelineEventType::Reaction));
        assert!(!bumps(&TimelineEventType::RoomMember));
    }
}
