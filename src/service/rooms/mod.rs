//! Rooms: building, authorising and appending events; room state (state groups); caches.
//!
//! Every local event goes through `Rooms::send`: under the room's lock it is built for
//! the room version (prev/auth events, depth, content hash, signature, reference-hash
//! event id), checked with ruma's event auth rules against the current state, and
//! appended with all its derived indexes in one atomic storage write.

use std::sync::{Arc, Mutex};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
    canonical_json::redact,
    events::{
        StateEventType, TimelineEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    signatures::{add_content_hash_to_event, hash_and_sign_event, reference_hash},
    state_res,
};
use serde_json::{Map, Value, value::RawValue};

use super::{Core, now_ms};
use crate::{
    error::{Error, Result},
    hash::HashMap,
    storage::{AppendEvent, RoomHead, RoomRecord, StateGroup, StateGroupId, StoredEvent},
};

mod cache;
pub mod create;
pub mod ingest;
pub mod membership;
pub mod pdu;
pub mod remote;
mod state_res_v1;
pub mod timeline;

pub use pdu::Pdu;

/// Room versions ieum creates rooms in. Every version 1-12 is authorised on receipt.
pub const SUPPORTED_CREATE_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// Room state: (type, state key) -> event id.
pub type StateMap = HashMap<(StateEventType, String), OwnedEventId>;

/// A `(type, state key)` as a `StateMap` lookup takes it, borrowed: `state.get(&(kind, key) as
/// &dyn StateKeyRef)` finds the entry without building an owned key (a `String` per lookup).
pub trait StateKeyRef {
    fn parts(&self) -> (&StateEventType, &str);
}

impl StateKeyRef for (StateEventType, String) {
    fn parts(&self) -> (&StateEventType, &str) {
        (&self.0, &self.1)
    }
}

impl StateKeyRef for (&StateEventType, &str) {
    fn parts(&self) -> (&StateEventType, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn StateKeyRef + 'a> for (StateEventType, String) {
    fn borrow(&self) -> &(dyn StateKeyRef + 'a) {
        self
    }
}

/// Hashes as the owned tuple does (each field in turn), as `Borrow` requires.
impl std::hash::Hash for dyn StateKeyRef + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (kind, key) = self.parts();
        kind.hash(state);
        key.hash(state);
    }
}

impl PartialEq for dyn StateKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn StateKeyRef + '_ {}

/// Snapshots are written every this many deltas so loading state stays cheap.
pub(crate) const MAX_STATE_CHAIN: u32 = 32;
/// At most this many prev_events per new event (the spec's limit is 20).
const MAX_PREV_EVENTS: usize = 20;

/// A new event a local user (or the server on their behalf) wants to send.
#[derive(Debug)]
pub struct NewEvent {
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Map<String, Value>,
    /// The sending client session and its transaction id (idempotency within the
    /// session, room and event type; `unsigned.transaction_id`).
    pub txn: Option<(String, String)>,
    /// Timestamp override (appservice timestamp massaging).
    pub ts: Option<u64>,
}

impl NewEvent {
    pub fn new(
        room_id: &RoomId,
        sender: &UserId,
        kind: TimelineEventType,
        state_key: Option<String>,
        content: Map<String, Value>,
    ) -> Self {
        Self { room_id: room_id.to_owned(), sender: sender.to_owned(), kind, state_key, content, txn: None, ts: None }
    }

    /// The idempotency key of a transaction id: the same id may be reused in another room
    /// or for another event type (the spec scopes it to the request path).
    fn txn_key(&self, txn_id: &str) -> String {
        format!("{}\u{1f}{}\u{1f}{txn_id}", self.room_id, self.kind)
    }

    pub fn state(room_id: &RoomId, sender: &UserId, kind: StateEventType, key: &str, content: Value) -> Self {
        let content = match content {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self::new(room_id, sender, kind.to_string().into(), Some(key.to_owned()), content)
    }
}

pub struct Rooms {
    pub(crate) core: Arc<Core>,
    pub(crate) federation: Arc<super::federation::Federation>,
    pdu_cache: cache::BoundedCache<OwnedEventId, Arc<Pdu>>,
    state_cache: cache::BoundedCache<StateGroupId, Arc<StateMap>>,
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Rooms whose backfill failed recently: not asked again before this time (ms), so a
    /// client paging back while the other servers are down is not held up every time.
    backfill_retry: Mutex<HashMap<OwnedRoomId, u64>>,
    /// Rooms a local user is joining over federation: PDUs that arrive for them before the
    /// join completes wait here and are processed once it has (see `remote::JoinQueue`).
    joining: Mutex<HashMap<OwnedRoomId, Vec<(ruma::OwnedServerName, Box<serde_json::value::RawValue>)>>>,
    /// Push rules evaluated for every appended event (see `super::push`).
    pub push: Arc<super::push::Push>,
    /// /sync's renderings of recent events, shared within a millisecond (`sync_event_raw`).
    renderings: cache::Renderings<Pdu>,
    /// The timestamp of the last v12 create event built here (see `create_ts`).
    last_create_ts: std::sync::atomic::AtomicU64,
}

impl Rooms {
    pub fn new(
        core: Arc<Core>,
        federation: Arc<super::federation::Federation>,
        appservices: Arc<super::appservice::Appservices>,
    ) -> Self {
        // Memory for cached events and for cached state maps (estimated heap bytes each).
        let memory = &core.config.memory;
        Self {
            federation,
            pdu_cache: cache::BoundedCache::new(memory.event_cache_mb << 20, |pdu| pdu.heap_size()),
            state_cache: cache::BoundedCache::new(memory.state_cache_mb << 20, |state| state_map_heap_size(state)),
            locks: Mutex::default(),
            backfill_retry: Mutex::default(),
            joining: Mutex::default(),
            renderings: cache::Renderings::default(),
            last_create_ts: std::sync::atomic::AtomicU64::new(0),
            push: Arc::new(super::push::Push::new(core.clone(), appservices)),
            core,
        }
    }

    /// An event by id (any room), from the cache or storage.
    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Arc<Pdu>>> {
        if let Some(pdu) = self.pdu_cache.get(event_id) {
            return Ok(Some(pdu));
        }
        let Some(stored) = self.core.db.event(event_id)? else { return Ok(None) };
        let pdu = Arc::new(Pdu::from_stored(event_id.to_owned(), stored)?);
        self.cache_pdu(pdu.clone());
        Ok(Some(pdu))
    }

    fn cache_pdu(&self, pdu: Arc<Pdu>) {
        self.pdu_cache.insert(pdu.event_id.clone(), pdu);
    }

    fn forget_cached_pdu(&self, event_id: &EventId) {
        self.pdu_cache.remove(event_id);
    }

    /// The full state of a state group.
    pub fn state(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        if let Some(state) = self.state_cache.get(&group) {
            return Ok(state);
        }
        // Walk to the snapshot, then apply deltas oldest first.
        let mut chain = Vec::new();
        let mut next = Some(group);
        while let Some(id) = next {
            let record =
                self.core.db.state_group(id)?.ok_or_else(|| Error::internal(format!("state group {id} is missing")))?;
            next = record.parent;
            chain.push(record);
        }
        let mut state = StateMap::default();
        for record in chain.into_iter().rev() {
            for (kind, key, event_id) in record.changes {
                state.insert((kind, key), event_id);
            }
        }
        let state = Arc::new(state);
        self.cache_state(group, state.clone());
        Ok(state)
    }

    fn cache_state(&self, group: StateGroupId, state: Arc<StateMap>) {
        self.state_cache.insert(group, state);
    }

    pub fn room_record(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        Ok(self.core.db.room(room_id)?)
    }

    pub fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        Ok(self.room_record(room_id)?.map(|r| r.room_version))
    }

    /// Current state of a room this server knows, or None.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Option<Arc<StateMap>>> {
        match self.core.db.room_head(room_id)? {
            Some(head) => self.state(head.state_group).map(Some),
            None => Ok(None),
        }
    }

    /// One event of a state map.
    pub fn state_pdu(&self, state: &StateMap, kind: &StateEventType, key: &str) -> Result<Option<Arc<Pdu>>> {
        match state.get(&(kind, key) as &dyn StateKeyRef) {
            Some(event_id) => self.pdu(event_id),
            None => Ok(None),
        }
    }

    /// One event of the current state.
    pub fn current_state_pdu(&self, room_id: &RoomId, kind: &StateEventType, key: &str) -> Result<Option<Arc<Pdu>>> {
        match self.current_state(room_id)? {
            Some(state) => self.state_pdu(&state, kind, key),
            None => Ok(None),
        }
    }

    /// The state before an event (None for the create event).
    pub fn state_before(&self, pdu: &Pdu) -> Result<Arc<StateMap>> {
        match pdu.stored.state_before {
            Some(group) => self.state(group),
            None => Ok(Arc::new(StateMap::default())),
        }
    }

    /// The state after an event.
    pub fn state_after(&self, pdu: &Pdu) -> Result<Arc<StateMap>> {
        let before = self.state_before(pdu)?;
        match &pdu.state_key {
            Some(key) if !pdu.stored.rejected => {
                let mut after = (*before).clone();
                after.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
                Ok(Arc::new(after))
            }
            _ => Ok(before),
        }
    }

    /// The power levels of a state map, with v12 creators.
    pub fn power_levels(&self, state: &StateMap, version: &RoomVersionId) -> Result<RoomPowerLevels> {
        let rules = rules_for(version)?;
        let content = match self.state_pdu(state, &StateEventType::RoomPowerLevels, "")? {
            Some(pdu) => Some(
                serde_json::from_str::<RoomPowerLevelsEventContent>(pdu.content.get())
                    .map_err(|e| Error::internal(format!("stored power levels do not parse: {e}")))?,
            ),
            None => None,
        };
        let creators = self.creators(state)?;
        Ok(RoomPowerLevels::new(RoomPowerLevelsSource::from(content), &rules.authorization, creators))
    }

    /// The room's creators: the create event's sender and `additional_creators` (v12).
    pub fn creators(&self, state: &StateMap) -> Result<Vec<OwnedUserId>> {
        let Some(create) = self.state_pdu(state, &StateEventType::RoomCreate, "")? else {
            return Ok(Vec::new());
        };
        let mut creators = vec![create.sender.clone()];
        if let Some(Value::Array(extra)) = create.content_value().get("additional_creators") {
            creators.extend(extra.iter().filter_map(|v| v.as_str()).filter_map(|s| UserId::parse(s).ok()));
        }
        Ok(creators)
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(room_id.to_owned()).or_default().clone()
    }

    /// Builds, authorises and appends a local event. Returns its id (the earlier one when
    /// the same transaction id was already used by this device).
    ///
    /// The room's lock is held while the event is built and written, not while the disk
    /// syncs it: the answer waits for durability after the lock is released, so the
    /// room's next event is built meanwhile and one fsync serves several (group commit).
    pub async fn send(&self, new: NewEvent) -> Result<OwnedEventId> {
        crate::service::durability::deferred(&self.core, self.send_locked(new)).await
    }

    async fn send_locked(&self, new: NewEvent) -> Result<OwnedEventId> {
        let lock = self.room_lock(&new.room_id);
        let _guard = lock.lock().await;
        if let Some((session_id, txn_id)) = &new.txn
            && let Some(event_id) = self.core.db.txn_event(&new.sender, session_id, &new.txn_key(txn_id))?
        {
            // The first request may still be waiting for the disk.
            crate::service::durability::settle_latest(&self.core).await?;
            return Ok(event_id);
        }
        let record = self.room_record(&new.room_id)?;
        let head = self.core.db.room_head(&new.room_id)?;
        let (Some(record), Some(head)) = (record, head) else {
            return Err(Error::forbidden(format!("Unknown room {}", new.room_id)));
        };
        // Re-sending the current state unchanged is a no-op that answers the existing
        // event, as Synapse does (clients retry state changes freely).
        if let Some(key) = &new.state_key
            && let Some(current) = self.state_pdu(&*self.state(head.state_group)?, &new.kind.to_string().into(), key)?
            && current.sender == new.sender
            && current.content_value() == new.content
        {
            crate::service::durability::settle_latest(&self.core).await?;
            return Ok(current.event_id.clone());
        }
        let (event_id, pdu) = self.append_locked(new, &record.room_version, Some(head)).await?;
        self.broadcast(&pdu).await?;
        Ok(event_id)
    }

    /// A timestamp for a new v12 create event: now, or one past the last one handed out
    /// when that is not earlier, so no two are equal. Creating rooms faster than one per
    /// millisecond moves the timestamps ahead of the clock until creation slows down
    /// (W9's setup creates 2,000 rooms; before, a create probed 16 milliseconds from now
    /// and ran out of them).
    fn create_ts(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let previous = self
            .last_create_ts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
            .unwrap_or_else(|last| last);
        now.max(previous + 1)
    }

    /// Creates a room from its create event; returns (room id, create event id). The
    /// caller sends the rest of the initial state with `send`.
    pub(crate) async fn send_create(
        &self,
        version: &RoomVersionId,
        sender: &UserId,
        content: Map<String, Value>,
    ) -> Result<(OwnedRoomId, OwnedEventId)> {
        let rules = rules_for(version)?;
        // v1-v11 rooms have a random id; v12 rooms are named after their create event.
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(RoomId::new_v1(self.core.server_name()))
        };
        let placeholder = room_id.clone().unwrap_or_else(|| RoomId::new_v1(self.core.server_name()));
        // A v12 room id is the hash of its create event: two rooms created by the same user
        // with the same content in the same millisecond would collide, so each v12 create
        // event built here gets a timestamp of its own (`create_ts`). A collision with a
        // room from before a restart (a clock set back) tries the next one.
        for _ in 0..16 {
            let mut new = NewEvent::new(
                &placeholder,
                sender,
                TimelineEventType::RoomCreate,
                Some(String::new()),
                content.clone(),
            );
            if room_id.is_none() {
                new.ts = Some(self.create_ts());
            }
            match self.append_create(new, version, room_id.clone()).await {
                Ok((event_id, pdu)) => return Ok((pdu.room_id.clone(), event_id)),
                Err(Error::Matrix { kind: ruma::api::error::ErrorKind::RoomInUse, .. }) if room_id.is_none() => {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        Err(Error::room_in_use("Could not find a free room id; try again."))
    }

    async fn append_create(
        &self,
        new: NewEvent,
        version: &RoomVersionId,
        room_id: Option<OwnedRoomId>,
    ) -> Result<(OwnedEventId, Arc<Pdu>)> {
        let rules = rules_for(version)?;
        // A new room has no other server yet.
        let (event_id, room_id, object) = self.build(&rules, room_id.as_deref(), &new, &[], &[], 1, false)?;
        let lock = self.room_lock(&room_id);
        let _guard = lock.lock().await;
        if self.core.db.room(&room_id)?.is_some() {
            return Err(Error::room_in_use("A room with this id already exists."));
        }
        let pdu = Arc::new(Pdu::from_object(event_id.clone(), &room_id, &object)?);
        self.authorise(&rules, &pdu, &StateMap::default())?;
        let group_id = self.core.db.next_state_group_id();
        let group = StateGroup {
            parent: None,
            chain_len: 0,
            changes: vec![(StateEventType::RoomCreate, String::new(), event_id.clone())],
        };
        let mut state = StateMap::default();
        state.insert((StateEventType::RoomCreate, String::new()), event_id.clone());
        let stored = StoredEvent { state_before: None, ..pdu.stored.clone() };
        let append = AppendEventOwned {
            event_id: event_id.clone(),
            event: stored,
            new_room: Some(RoomRecord {
                room_version: version.clone(),
                create_event_id: event_id.clone(),
                created_ts: now_ms(),
            }),
            new_state_groups: vec![(group_id, group)],
            state_after: group_id,
            extremities: vec![event_id.clone()],
            depth: 1,
            memberships: Vec::new(),
            txn_key: None,
            redact: None,
            push: Default::default(),
            bumps: true,
            last_bump: None,
        };
        self.write(append).await?;
        self.cache_state(group_id, Arc::new(state));
        let pdu = self.pdu(&event_id)?.ok_or_else(|| Error::internal("create event vanished"))?;
        Ok((event_id, pdu))
    }

    /// The auth events, prev events and depth of a new event on top of `head`.
    fn references(
        &self,
        rules: &RoomVersionRules,
        new: &NewEvent,
        head: &RoomHead,
        state: &StateMap,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>, u64)> {
        let content_raw = serde_json::value::to_raw_value(&new.content).map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = state_res::auth_types_for_event(
            &new.kind,
            &new.sender,
            new.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events: Vec<OwnedEventId> = auth_types.iter().filter_map(|key| state.get(key).cloned()).collect();
        auth_events.sort();
        auth_events.dedup();
        let prev: Vec<OwnedEventId> = head.extremities.iter().take(MAX_PREV_EVENTS).cloned().collect();
        Ok((auth_events, prev, head.depth + 1))
    }

    /// Builds and appends a non-create event; the caller holds the room lock.
    async fn append_locked(
        &self,
        new: NewEvent,
        version: &RoomVersionId,
        head: Option<RoomHead>,
    ) -> Result<(OwnedEventId, Arc<Pdu>)> {
        let rules = rules_for(version)?;
        let head = head.ok_or_else(|| Error::internal("room without head"))?;
        let state = self.state(head.state_group)?;
        let (auth_events, prev, depth) = self.references(&rules, &new, &head, &state)?;
        let sign = self.goes_out_at_once(&new)?;
        let (event_id, room_id, object) =
            self.build(&rules, Some(&new.room_id), &new, &prev, &auth_events, depth, sign)?;
        let mut pdu = Pdu::from_object(event_id.clone(), &room_id, &object)?;
        self.authorise(&rules, &pdu, &state)?;
        pdu.stored.txn = new.txn.clone();
        let txn_key = new.txn.as_ref().map(|(session, txn)| (new.sender.clone(), session.clone(), new.txn_key(txn)));
        let pdu = self.append_authorised(&rules, version, head, &state, pdu, txn_key).await?;
        Ok((event_id, pdu))
    }

    /// Appends a fully built local event (an invite countersigned by the invitee's server);
    /// the caller holds the room lock.
    pub(crate) async fn append_prebuilt(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        head: RoomHead,
        state: &StateMap,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
    ) -> Result<Arc<Pdu>> {
        let pdu = Pdu::from_object(event_id, &head_room(&object)?, &object)?;
        self.authorise(rules, &pdu, state)?;
        self.append_authorised(rules, version, head, state, pdu, None).await
    }

    /// Appends an authorised local event on top of `head`: state group, membership index,
    /// redaction, in one write.
    async fn append_authorised(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        head: RoomHead,
        state: &StateMap,
        mut pdu: Pdu,
        txn_key: Option<(OwnedUserId, String, String)>,
    ) -> Result<Arc<Pdu>> {
        let event_id = pdu.event_id.clone();
        let depth = pdu.depth;
        let rules = rules.clone();
        // State bookkeeping.
        let replaces_state =
            pdu.state_key.as_ref().and_then(|key| state.get(&(pdu.kind.to_string().into(), key.clone())).cloned());
        let (state_after, new_group, new_state) = match &pdu.state_key {
            Some(key) => {
                let id = self.core.db.next_state_group_id();
                let entry = (StateEventType::from(pdu.kind.to_string()), key.clone(), event_id.clone());
                let parent = self
                    .core
                    .db
                    .state_group(head.state_group)?
                    .ok_or_else(|| Error::internal("current state group is missing"))?;
                let mut after = state.clone();
                after.insert((entry.0.clone(), entry.1.clone()), event_id.clone());
                let group = if parent.chain_len + 1 >= MAX_STATE_CHAIN {
                    let changes = after.iter().map(|((k, s), e)| (k.clone(), s.clone(), e.clone())).collect();
                    StateGroup { parent: None, chain_len: 0, changes }
                } else {
                    StateGroup { parent: Some(head.state_group), chain_len: parent.chain_len + 1, changes: vec![entry] }
                };
                (id, Some((id, group)), Some(Arc::new(after)))
            }
            None => (head.state_group, None, None),
        };

        let memberships = match (&pdu.kind, &pdu.state_key, pdu.membership()) {
            (TimelineEventType::RoomMember, Some(key), Some(membership)) => vec![(
                UserId::parse(key.as_str()).map_err(|e| Error::invalid_param(e.to_string()))?,
                membership,
                event_id.clone(),
            )],
            _ => Vec::new(),
        };

        // Redactions: check the permission to redact and redact the target in place.
        let redact = match (&pdu.kind, &pdu.redacts) {
            (TimelineEventType::RoomRedaction, Some(target_id)) => {
                self.prepare_redaction(&rules, version, state, &pdu, target_id)?
            }
            _ => None,
        };

        pdu.stored.state_before = Some(head.state_group);
        pdu.stored.replaces_state = replaces_state;
        let push = self.push.evaluate(self, &pdu, state, version).await?;
        let append = AppendEventOwned {
            event_id: event_id.clone(),
            event: pdu.stored.clone(),
            new_room: None,
            new_state_groups: new_group.into_iter().collect(),
            state_after,
            extremities: vec![event_id.clone()],
            depth,
            memberships,
            txn_key,
            redact,
            push,
            bumps: super::sliding_sync::bumps(&pdu.kind),
            last_bump: head.last_bump,
        };
        let redacted_id = append.redact.as_ref().map(|(id, _)| id.clone());
        self.write(append).await?;
        if let Some(state) = new_state {
            self.cache_state(state_after, state);
        }
        if let Some(id) = redacted_id {
            self.forget_cached_pdu(&id);
        }
        self.pdu(&event_id)?.ok_or_else(|| Error::internal("appended event vanished"))
    }

    async fn write(&self, append: AppendEventOwned) -> Result<()> {
        let deliveries = !append.push.deliveries.is_empty();
        // Written here on the async worker: a pending write is a memtable insert and a WAL
        // append to the page cache, cheaper than a hand-off to a blocking thread and back.
        // When RocksDB would hold it back, the built write goes to a blocking thread.
        let written = self.core.db.try_append_event_pending(AppendEvent {
            event_id: &append.event_id,
            event: append.event,
            new_room: append.new_room,
            new_state_groups: append.new_state_groups,
            state_after: append.state_after,
            extremities: append.extremities,
            depth: append.depth,
            memberships: append.memberships,
            txn_key: append.txn_key,
            redact: append.redact,
            push: append.push,
            bumps: append.bumps,
            last_bump: append.last_bump,
        })?;
        let ticket = match written {
            Ok((_, ticket)) => ticket,
            Err(stalled) => {
                tracing::debug!("storage is holding writes back; appending on a blocking thread");
                self.core.blocking(move |db| Ok(db.finish_stalled_append(stalled)?.1)).await?
            }
        };
        // Durable before the caller goes on, or (inside `durability::deferred`) before the
        // scope answers anyone.
        crate::service::durability::settle(&self.core, ticket).await?;
        self.push.appended(deliveries);
        Ok(())
    }

    /// A new event in federation format, not yet hashed or signed (also the make_join
    /// template another server fills in).
    pub(crate) fn template(
        &self,
        rules: &RoomVersionRules,
        new: &NewEvent,
        prev_events: &[OwnedEventId],
        auth_events: &[OwnedEventId],
        depth: u64,
    ) -> Result<CanonicalJsonObject> {
        self.template_in(rules, Some(&new.room_id), new, prev_events, auth_events, depth)
    }

    fn template_in(
        &self,
        rules: &RoomVersionRules,
        room_id: Option<&RoomId>,
        new: &NewEvent,
        prev_events: &[OwnedEventId],
        auth_events: &[OwnedEventId],
        depth: u64,
    ) -> Result<CanonicalJsonObject> {
        let mut object = CanonicalJsonObject::new();
        let content = ruma::canonical_json::to_canonical_value(&new.content)
            .map_err(|e| Error::bad_json(format!("Event content is not canonical JSON: {e}")))?;
        object.insert("type".into(), CanonicalJsonValue::String(new.kind.to_string()));
        object.insert("content".into(), content);
        object.insert("sender".into(), CanonicalJsonValue::String(new.sender.to_string()));
        let ts = new.ts.unwrap_or_else(now_ms);
        object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(int(ts)?));
        object.insert("depth".into(), CanonicalJsonValue::Integer(int(depth)?));
        // Room versions 1 and 2 reference events as [id, {"sha256": <its content hash>}].
        let pairs = rules.events_reference_format == EventsReferenceFormatVersion::V1;
        let refs = |ids: &[OwnedEventId]| {
            CanonicalJsonValue::Array(
                ids.iter()
                    .map(|id| {
                        let id_value = CanonicalJsonValue::String(id.to_string());
                        if !pairs {
                            return id_value;
                        }
                        let hashes = self
                            .pdu(id)
                            .ok()
                            .flatten()
                            .and_then(|pdu| serde_json::from_str::<CanonicalJsonObject>(pdu.stored.pdu.get()).ok())
                            .and_then(|mut object| object.remove("hashes"))
                            .unwrap_or_else(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
                        CanonicalJsonValue::Array(vec![id_value, hashes])
                    })
                    .collect(),
            )
        };
        object.insert("prev_events".into(), refs(prev_events));
        object.insert("auth_events".into(), refs(auth_events));
        if let Some(room_id) = room_id {
            object.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
        }
        if let Some(state_key) = &new.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(state_key.clone()));
        }
        if new.kind == TimelineEventType::RoomRedaction
            && !rules.redaction.keep_room_redaction_redacts
            && let Some(Value::String(redacts)) = new.content.get("redacts")
        {
            object.insert("redacts".into(), CanonicalJsonValue::String(redacts.clone()));
        }
        Ok(object)
    }

    /// Hashes and names a new event, and signs it when `sign` (see `goes_out_at_once`);
    /// an event built unsigned is signed when it first leaves the server
    /// (`Rooms::federation_pdu`). Returns (event id, room id, object).
    fn build(
        &self,
        rules: &RoomVersionRules,
        room_id: Option<&RoomId>,
        new: &NewEvent,
        prev_events: &[OwnedEventId],
        auth_events: &[OwnedEventId],
        depth: u64,
        sign: bool,
    ) -> Result<(OwnedEventId, OwnedRoomId, CanonicalJsonObject)> {
        let mut object = self.template_in(rules, room_id, new, prev_events, auth_events, depth)?;
        // Room versions 1 and 2 name events `$<random>:<origin>`, inside the signed event.
        let named = (rules.event_id_format == EventIdFormatVersion::V1).then(|| {
            let id = format!("${}:{}", super::random_token(18), self.core.server_name());
            object.insert("event_id".into(), CanonicalJsonValue::String(id.clone()));
            id
        });
        // Neither the event id nor the content hash covers the signature, so signing later
        // gives the same event.
        let hashed = if sign {
            hash_and_sign_event(
                self.core.server_name().as_str(),
                &*self.core.signing_key,
                &mut object,
                &rules.redaction,
            )
        } else {
            add_content_hash_to_event(&mut object)
        };
        hashed.map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::too_large("The event is larger than 65535 bytes."),
            other => Error::bad_json(format!("Cannot hash or sign the event: {other}")),
        })?;
        let hash = reference_hash(&object, rules).map_err(|e| Error::internal(format!("reference hash: {e}")))?;
        let event_id = match named {
            Some(id) => EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?,
            None => EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))?,
        };
        let room_id = match room_id {
            Some(room_id) => room_id.to_owned(),
            None => RoomId::new_v2(&hash).map_err(|e| Error::internal(e.to_string()))?,
        };
        // The spec bounds a PDU at 65536 bytes including signatures (counted as if signed).
        let mut size = serde_json::to_vec(&object).map(|v| v.len()).unwrap_or(usize::MAX);
        if !sign {
            size = size.saturating_add(self.signature_size());
        }
        if size > 65_536 {
            return Err(Error::too_large("The event is larger than 65536 bytes."));
        }
        Ok((event_id, room_id, object))
    }

    /// Whether a new event leaves the server as soon as it is appended: its room has a
    /// member of another server joined, or it changes the membership of a user of another
    /// server. Only such events are signed when built: the ed25519 signature is most of the
    /// CPU a message costs, and an event of a room only this server is in may never leave
    /// it. Every path that hands an event to another server goes through
    /// `Rooms::federation_pdu`, which signs one built unsigned.
    fn goes_out_at_once(&self, new: &NewEvent) -> Result<bool> {
        let ours = self.core.server_name();
        if new.kind == TimelineEventType::RoomMember
            && new.state_key.as_deref().and_then(|key| UserId::parse(key).ok()).is_some_and(|u| u.server_name() != ours)
        {
            return Ok(true);
        }
        Ok(self
            .core
            .db
            .members(&new.room_id)?
            .iter()
            .any(|(user, membership)| membership == "join" && user.server_name() != ours))
    }

    /// Bytes our signature adds to an event (`"signatures":{...}` with its comma).
    fn signature_size(&self) -> usize {
        let key_id = format!("ed25519:{}", self.core.signing_key.version());
        // An ed25519 signature is 64 bytes: 86 characters of unpadded base64.
        let signature = "A".repeat(86);
        format!(",\"signatures\":{{\"{}\":{{\"{key_id}\":\"{signature}\"}}}}", self.core.server_name()).len()
    }

    /// ruma's event auth rules: the state-independent checks, then against `state`.
    fn authorise(&self, rules: &RoomVersionRules, pdu: &Pdu, state: &StateMap) -> Result<()> {
        let fetch_event = |id: &EventId| self.pdu(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
            .map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))?;
        let fetch_state = |kind: &StateEventType, key: &str| self.state_pdu(state, kind, key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
            .map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))
    }

    /// Checks that `redaction` may redact `target_id` and returns the redacted target.
    fn prepare_redaction(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        state: &StateMap,
        redaction: &Pdu,
        target_id: &EventId,
    ) -> Result<Option<(OwnedEventId, StoredEvent)>> {
        let Some(target) = self.pdu(target_id)? else {
            // Redacting an unknown event is allowed (it may arrive later); nothing to do now.
            return Ok(None);
        };
        if target.room_id != redaction.room_id {
            return Err(Error::not_found("That event is not in this room."));
        }
        if target.sender != redaction.sender {
            let power = self.power_levels(state, version)?;
            if !power.user_can_redact_event_of_other(&redaction.sender) {
                return Err(Error::forbidden("You may not redact other users' events in this room."));
            }
        }
        if target.stored.redacted_because.is_some() {
            return Ok(None);
        }
        let object: CanonicalJsonObject = serde_json::from_str(target.stored.pdu.get())
            .map_err(|e| Error::internal(format!("stored event does not parse: {e}")))?;
        let redacted =
            redact(object, &rules.redaction, None).map_err(|e| Error::internal(format!("cannot redact: {e}")))?;
        let mut stored = target.stored.clone();
        stored.pdu = raw(&redacted)?;
        stored.redacted_because = Some(raw(&Value::Object(redaction.client_json(true)))?);
        Ok(Some((target_id.to_owned(), stored)))
    }

    /// The event in client format, with `unsigned` as `viewer` should see it.
    pub fn client_event(
        &self,
        pdu: &Pdu,
        viewer: Option<(&UserId, Option<&str>)>,
        with_room_id: bool,
    ) -> Map<String, Value> {
        let mut event = pdu.client_json(with_room_id);
        event.insert("unsigned".into(), Value::Object(self.unsigned(pdu, viewer)));
        event
    }

    /// `client_event` as JSON text, serialised straight from the event's fields (the hot
    /// path of /sync: no parsing of the content, no `Value` tree for the common event).
    pub fn client_raw(
        &self,
        pdu: &Pdu,
        viewer: Option<(&UserId, Option<&str>)>,
        with_room_id: bool,
    ) -> Result<Box<RawValue>> {
        if Self::is_plain(pdu) {
            Self::plain_raw(pdu, now_ms(), Self::own_transaction_id(pdu, viewer), with_room_id)
        } else {
            serde_json::value::to_raw_value(&pdu.client_ref(with_room_id, self.unsigned(pdu, viewer)))
                .map_err(|e| Error::internal(format!("client event {}: {e}", pdu.event_id)))
        }
    }

    /// `client_raw` for a /sync timeline (no `room_id`): the common event is rendered once per
    /// millisecond for every session but its sender's (see `cache::Renderings`), so a message
    /// that wakes a thousand long-polls is not serialised a thousand times.
    pub fn sync_event_raw(&self, pdu: &Arc<Pdu>, viewer: (&UserId, Option<&str>)) -> Result<Box<RawValue>> {
        if !Self::is_plain(pdu) || Self::own_transaction_id(pdu, Some(viewer)).is_some() {
            return self.client_raw(pdu, Some(viewer), false);
        }
        let now = now_ms();
        self.renderings.get_or_render(pdu, now, || Self::plain_raw(pdu, now, None, false))
    }

    /// Whether the event's `unsigned` is only `age` (and the sender's `transaction_id`).
    fn is_plain(pdu: &Pdu) -> bool {
        pdu.stored.redacted_because.is_none()
            && pdu.stored.replaces_state.is_none()
            && pdu.kind != ruma::events::TimelineEventType::RoomMember
    }

    /// A plain event (`is_plain`) in client format, its `age` as of `now` (ms).
    fn plain_raw(pdu: &Pdu, now: u64, transaction_id: Option<&str>, with_room_id: bool) -> Result<Box<RawValue>> {
        /// `unsigned` of the common event: only `age`, and `transaction_id` for its sender.
        #[derive(serde::Serialize)]
        struct PlainUnsigned<'a> {
            age: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            transaction_id: Option<&'a str>,
        }
        let age = now.saturating_sub(pdu.origin_server_ts.get().into());
        serde_json::value::to_raw_value(&pdu.client_ref(with_room_id, PlainUnsigned { age, transaction_id }))
            .map_err(|e| Error::internal(format!("client event {}: {e}", pdu.event_id)))
    }

    /// The event's transaction id when `viewer` is the session that sent it (only the sending
    /// device sees it).
    fn own_transaction_id<'a>(pdu: &'a Pdu, viewer: Option<(&UserId, Option<&str>)>) -> Option<&'a str> {
        let (user, session) = viewer?;
        let (txn_session, txn_id) = pdu.stored.txn.as_ref()?;
        (user == pdu.sender && session == Some(txn_session.as_str())).then_some(txn_id.as_str())
    }

    /// The `unsigned` of an event in client format, as `viewer` should see it.
    fn unsigned(&self, pdu: &Pdu, viewer: Option<(&UserId, Option<&str>)>) -> Map<String, Value> {
        let mut unsigned = Map::new();
        unsigned.insert("age".into(), Value::from(now_ms().saturating_sub(pdu.origin_server_ts.get().into())));
        if let Some(txn_id) = Self::own_transaction_id(pdu, viewer) {
            unsigned.insert("transaction_id".into(), Value::String(txn_id.to_owned()));
        }
        if let Some(because) = &pdu.stored.redacted_because
            && let Ok(value) = serde_json::from_str::<Value>(because.get())
        {
            unsigned.insert("redacted_because".into(), value);
        }
        if let Some(previous) = &pdu.stored.replaces_state {
            unsigned.insert("replaces_state".into(), Value::String(previous.to_string()));
            if let Ok(Some(prev)) = self.pdu(previous) {
                unsigned.insert("prev_sender".into(), Value::String(prev.sender.to_string()));
                if let Ok(content) = serde_json::from_str::<Value>(prev.content.get()) {
                    unsigned.insert("prev_content".into(), content);
                }
            }
        }
        // Only an invite received over federation keeps the room's state in the PDU's
        // `unsigned`; parsing every PDU to find that out made this the costliest step.
        if pdu.kind == ruma::events::TimelineEventType::RoomMember
            && pdu.stored.pdu.get().contains("\"invite_room_state\"")
            && let Some(Value::Object(stored_unsigned)) = serde_json::from_str::<Value>(pdu.stored.pdu.get())
                .ok()
                .and_then(|mut v| v.get_mut("unsigned").map(Value::take))
            && let Some(state) = stored_unsigned.get("invite_room_state")
        {
            unsigned.insert("invite_room_state".into(), state.clone());
        }
        unsigned
    }
}

/// The owned form of an append (moved into the blocking storage task).
struct AppendEventOwned {
    event_id: OwnedEventId,
    event: StoredEvent,
    new_room: Option<RoomRecord>,
    new_state_groups: Vec<(StateGroupId, StateGroup)>,
    state_after: StateGroupId,
    extremities: Vec<OwnedEventId>,
    depth: u64,
    memberships: Vec<(OwnedUserId, String, OwnedEventId)>,
    txn_key: Option<(OwnedUserId, String, String)>,
    redact: Option<(OwnedEventId, StoredEvent)>,
    push: crate::storage::PushWrites,
    bumps: bool,
    last_bump: Option<crate::storage::StreamPos>,
}

/// The room id of a built event object.
fn head_room(object: &CanonicalJsonObject) -> Result<OwnedRoomId> {
    match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) => RoomId::parse(id).map_err(|e| Error::internal(e.to_string())),
        _ => Err(Error::internal("built event without room_id")),
    }
}

/// The rules of a room version this server knows.
pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| Error::unsupported_room_version(format!("Room version {version} is not supported.")))
}

fn int(n: u64) -> Result<ruma::Int> {
    ruma::Int::try_from(n).map_err(|_| Error::invalid_param("number out of range"))
}

/// Serialises to a boxed raw JSON value.
pub fn raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))
}

/// Estimated heap bytes of a state map: per entry the key (event type and state key), the
/// event id, and the hash table's slot and control byte.
fn state_map_heap_size(state: &StateMap) -> usize {
    const SLOT: usize = std::mem::size_of::<((StateEventType, String), OwnedEventId)>() + 1;
    // An event id and a typical state key (a user id) are about 44 bytes each on the heap.
    const HEAP_PER_ENTRY: usize = 96;
    64 + state.capacity() * SLOT + state.len() * HEAP_PER_ENTRY
}

#[cfg(test)]
mod tests {
    use ruma::{events::StateEventType, owned_event_id};

    use super::{StateKeyRef, StateMap};

    #[test]
    fn a_borrowed_state_key_finds_what_the_owned_key_finds() {
        let mut state = StateMap::default();
        let custom = StateEventType::from("org.example.custom");
        state.insert((StateEventType::RoomMember, "@a:x".into()), owned_event_id!("$m"));
        state.insert((custom.clone(), String::new()), owned_event_id!("$c"));
        state.insert((StateEventType::RoomName, String::new()), owned_event_id!("$n"));
        let get = |kind: &StateEventType, key: &str| state.get(&(kind, key) as &dyn StateKeyRef).cloned();
        assert_eq!(get(&StateEventType::RoomMember, "@a:x"), Some(owned_event_id!("$m")));
        assert_eq!(get(&custom, ""), Some(owned_event_id!("$c")));
        assert_eq!(get(&StateEventType::RoomName, ""), Some(owned_event_id!("$n")));
        assert_eq!(get(&StateEventType::RoomMember, "@b:x"), None);
        assert_eq!(get(&StateEventType::RoomTopic, ""), None);
        // Same text, other field boundary: not the same key.
        assert_eq!(get(&StateEventType::from("m.room.member@a"), ":x"), None);
    }
}
