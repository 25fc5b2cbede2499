//! Events from other servers: the spec's checks on receipt, in its order — format for the
//! room version, signatures (redacted on a content-hash mismatch), auth against the event's
//! auth events (fetching missing ones), auth against the state before it (fetching missing
//! prev events with /get_missing_events, or the state at them with /state_ids), soft-fail
//! against the current state — then state resolution and an atomic append.
//!
//! Rejected events are stored as rejected outliers and never served as accepted.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, ServerName,
    UInt, UserId,
    api::federation::event::{get_event, get_missing_events, get_room_state_ids},
    canonical_json::redact,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{Verified, reference_hash, verify_event},
    state_res::{self, check_pdu_format},
};
use serde_json::value::RawValue;

use super::{AppendEventOwned, MAX_STATE_CHAIN, Pdu, Rooms, StateMap, rules_for};
use crate::{
    error::{Error, Result},
    storage::{StateGroup, StateGroupId},
};

/// How many missing prev events are asked for at once (and followed, in all).
const MISSING_EVENTS_LIMIT: u32 = 20;
/// How many missing auth events are fetched one by one before giving up.
const AUTH_FETCH_LIMIT: usize = 500;

/// What became of a received event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the timeline.
    Accepted,
    /// Stored but hidden: it passed auth at its position but not against current state.
    SoftFailed,
    /// Already known.
    Duplicate,
}

impl Rooms {
    /// Parses and checks a PDU for `room_id` of `version`: size, format, room, event id,
    /// signatures. Returns the event id and the object (redacted when its content hash is
    /// wrong).
    pub async fn check_incoming(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        raw: &RawValue,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_for(version)?;
        if raw.get().len() > 65_536 {
            return Err(Error::too_large("The event is larger than 65536 bytes."));
        }
        let mut object: CanonicalJsonObject =
            serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("The event is not valid: {e}")))?;
        // The event id is derived from the content (v3+): a sent `event_id` is ignored.
        let event_id = match rules.event_id_format {
            EventIdFormatVersion::V1 => match object.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => {
                    EventId::parse(id).map_err(|e| Error::bad_json(format!("Bad event_id: {e}")))?
                }
                _ => return Err(Error::bad_json("The event has no event_id.")),
            },
            _ => {
                object.remove("event_id");
                let hash = reference_hash(&object, &rules)
                    .map_err(|e| Error::bad_json(format!("The event cannot be hashed: {e}")))?;
                EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))?
            }
        };
        check_pdu_format(&object, &rules.event_format)
            .map_err(|e| Error::bad_json(format!("The event is malformed: {e}")))?;
        // The room is the one the event says, never the one a path or caller claims: only a
        // v12 create event has no room_id, and then the room is named after it.
        let in_room = match object.get("room_id") {
            Some(CanonicalJsonValue::String(id)) => id == room_id.as_str(),
            None => room_id.server_name().is_none() && event_id.as_str().get(1..) == Some(room_id.strip_sigil()),
            _ => false,
        };
        if !in_room {
            return Err(Error::bad_json(format!("Event {event_id} is not in room {room_id}.")));
        }
        let keys = self.federation.event_key_map(&object, &rules).await?;
        match verify_event(&keys, &object, &rules) {
            Ok(Verified::All) => {}
            Ok(Verified::Signatures) => {
                tracing::info!(%event_id, "content hash mismatch: keeping the redacted event");
                object = redact(object, &rules.redaction, None)
                    .map_err(|e| Error::bad_json(format!("The event cannot be redacted: {e}")))?;
            }
            Err(error) => return Err(Error::forbidden(format!("Bad signature on {event_id}: {error}"))),
        }
        object.remove("unsigned");
        Ok((event_id, object))
    }

    /// Receives a PDU (from /send, /send_join, backfill of the newest edge): checks it,
    /// fetches what it refers to from `origin`, authorises it and appends it.
    pub async fn receive_pdu(&self, origin: &ServerName, room_id: &RoomId, raw: &RawValue) -> Result<Outcome> {
        self.receive_pdu_named(origin, room_id, raw).await.1
    }

    /// `receive_pdu`, also answering the event's id once its checks computed it (a
    /// transaction's answer is keyed by it; computing it again would hash the event twice).
    /// None when the PDU failed before that: the caller computes it if it can.
    pub async fn receive_pdu_named(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &RawValue,
    ) -> (Option<OwnedEventId>, Result<Outcome>) {
        let version = match self.room_version(room_id) {
            Ok(Some(version)) => version,
            Ok(None) => return (None, Err(Error::not_found(format!("Unknown room {room_id}.")))),
            Err(error) => return (None, Err(error)),
        };
        let (event_id, object) = match self.check_incoming(room_id, &version, raw).await {
            Ok(checked) => checked,
            Err(error) => return (None, Err(error)),
        };
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let outcome = self.receive_checked(origin, room_id, &version, event_id.clone(), object, true).await;
        (Some(event_id), outcome)
    }

    /// The body of `receive_pdu` once the event is checked; the room lock is held.
    pub(crate) async fn receive_checked(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
        fetch_missing: bool,
    ) -> Result<Outcome> {
        if let Some(existing) = self.pdu(&event_id)? {
            // An outlier (fetched for an auth chain) may now arrive in its own right.
            if existing.stored.pos.is_some() || existing.stored.rejected || existing.stored.soft_failed {
                return Ok(Outcome::Duplicate);
            }
        }
        let pdu = Pdu::from_object(event_id.clone(), room_id, &object)?;
        if pdu.kind == TimelineEventType::RoomCreate {
            return Err(Error::forbidden("A room's create event cannot be sent into it."));
        }
        let rules = rules_for(version)?;
        self.fetch_auth_events(origin, room_id, version, &pdu).await?;

        // 1. Auth against its own auth events.
        if let Err(reason) = self.check_against_auth_events(&rules, &pdu) {
            self.store_rejected(pdu, None).await?;
            return Err(Error::forbidden(format!("Event {event_id} fails auth against its auth events: {reason}")));
        }

        // 2. The state before it: from its prev events (fetched when missing).
        if fetch_missing {
            self.fetch_missing_prevs(origin, room_id, version, &pdu).await;
        }
        let state_before = self.state_before_prevs(origin, room_id, version, &pdu).await?;
        if let Err(reason) = self.check_against_state(&rules, &pdu, &state_before) {
            let group = self.group_for_state(None, &state_before)?;
            self.store_rejected(pdu, Some(group)).await?;
            return Err(Error::forbidden(format!("Event {event_id} fails auth against the state before it: {reason}")));
        }

        // 3. Soft fail against the current state.
        let head = self.core.db.room_head(room_id)?.ok_or_else(|| Error::internal("room without head"))?;
        let current = self.state(head.state_group)?;
        let (before_id, before_new) = self.group_for_state(Some(head.state_group), &state_before)?;
        if let Err(reason) = self.check_against_state(&rules, &pdu, &current) {
            tracing::info!(%event_id, %reason, "soft-failing an event that the current state does not allow");
            let mut stored = pdu.stored.clone();
            stored.soft_failed = true;
            stored.state_before = Some(before_id);
            let groups = before_new.into_iter().map(|g| (before_id, g)).collect();
            self.core
                .blocking(move |db| db.store_outliers(vec![(event_id, stored)], groups).map_err(Error::from))
                .await?;
            return Ok(Outcome::SoftFailed);
        }

        // 4. Accept: state after it, the room's new extremities and current state.
        self.append_remote(&rules, version, pdu, &state_before, (before_id, before_new), head, &current).await?;
        Ok(Outcome::Accepted)
    }

    /// Appends an accepted remote event: its state group, the room's new forward
    /// extremities, and the room's new current state (resolved when the event does not
    /// descend from every extremity).
    #[allow(clippy::too_many_arguments)]
    async fn append_remote(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        mut pdu: Pdu,
        state_before: &StateMap,
        before: (StateGroupId, Option<StateGroup>),
        head: crate::storage::RoomHead,
        current: &StateMap,
    ) -> Result<()> {
        let event_id = pdu.event_id.clone();
        let (before_id, before_new) = before;
        let mut new_groups: Vec<(StateGroupId, StateGroup)> = Vec::new();
        let before_len = match &before_new {
            Some(group) => group.chain_len,
            None => self.chain_len(before_id)?,
        };
        if let Some(group) = before_new {
            new_groups.push((before_id, group));
        }
        let mut state_after = state_before.clone();
        let mut after_id = before_id;
        if let Some(key) = &pdu.state_key {
            state_after.insert((pdu.kind.to_string().into(), key.clone()), event_id.clone());
            let group = make_group(Some((before_id, before_len, state_before)), &state_after);
            after_id = self.core.db.next_state_group_id();
            new_groups.push((after_id, group));
        }
        let prevs: HashSet<&OwnedEventId> = pdu.prev_events.iter().collect();
        let descends_from_all = head.extremities.iter().all(|e| prevs.contains(e));
        let mut extremities: Vec<OwnedEventId> =
            head.extremities.iter().filter(|e| !prevs.contains(e)).cloned().collect();
        extremities.push(event_id.clone());

        let (new_current, current_id) = if descends_from_all {
            (state_after, after_id)
        } else {
            // A fork is rare: a copy of the event for resolution to see costs little.
            let incoming = Arc::new(Pdu::from_stored(event_id.clone(), pdu.stored.clone())?);
            let resolved = self.resolve_states(rules, &[current, &state_after], Some(&incoming))?;
            if &resolved == current {
                (resolved, head.state_group)
            } else if resolved == state_after {
                (resolved, after_id)
            } else {
                let len = self.chain_len(head.state_group)?;
                let group = make_group(Some((head.state_group, len, current)), &resolved);
                let id = self.core.db.next_state_group_id();
                new_groups.push((id, group));
                (resolved, id)
            }
        };

        let memberships = self.membership_changes(Some(current), &new_current, &pdu)?;
        let redact = match (&pdu.kind, &pdu.redacts) {
            (TimelineEventType::RoomRedaction, Some(target)) => {
                self.prepare_redaction(rules, version, state_before, &pdu, target).unwrap_or(None)
            }
            _ => None,
        };
        pdu.stored.state_before = Some(before_id);
        pdu.stored.replaces_state = pdu
            .state_key
            .as_ref()
            .and_then(|key| state_before.get(&(pdu.kind.to_string().into(), key.clone())).cloned());
        let push = self.push.evaluate(self, &pdu, state_before, version).await?;
        let append = AppendEventOwned {
            event_id: event_id.clone(),
            event: pdu.stored.clone(),
            new_room: None,
            new_state_groups: new_groups,
            state_after: current_id,
            extremities,
            depth: head.depth.max(pdu.depth),
            memberships,
            txn_key: None,
            redact,
            push,
            bumps: crate::service::sliding_sync::bumps(&pdu.kind),
            last_bump: head.last_bump,
        };
        let redacted_id = append.redact.as_ref().map(|(id, _)| id.clone());
        self.write(append).await?;
        self.cache_state(current_id, Arc::new(new_current));
        if let Some(id) = redacted_id {
            self.forget_cached_pdu(&id);
        }
        self.forget_cached_pdu(&event_id);
        Ok(())
    }

    /// Membership index updates between two states of a room (every member of `new` when
    /// there is no `old`).
    pub(crate) fn membership_changes(
        &self,
        old: Option<&StateMap>,
        new: &StateMap,
        pending: &Pdu,
    ) -> Result<Vec<(OwnedUserId, String, OwnedEventId)>> {
        let mut changes = Vec::new();
        for ((kind, key), event_id) in new {
            if *kind != StateEventType::RoomMember
                || old.and_then(|o| o.get(&(kind.clone(), key.clone()))) == Some(event_id)
            {
                continue;
            }
            let Ok(user_id) = UserId::parse(key.as_str()) else { continue };
            // The event being appended is not stored yet.
            let membership = if *event_id == pending.event_id {
                pending.membership()
            } else {
                self.pdu(event_id)?.and_then(|pdu| pdu.membership())
            };
            if let Some(membership) = membership {
                changes.push((user_id, membership, event_id.clone()));
            }
        }
        Ok(changes)
    }

    fn chain_len(&self, group: StateGroupId) -> Result<u32> {
        Ok(self.core.db.state_group(group)?.map_or(0, |g| g.chain_len))
    }

    /// A state group holding `state`: `base` itself when its state is the same, else a new
    /// group (not yet stored) with an id.
    pub(crate) fn group_for_state(
        &self,
        base: Option<StateGroupId>,
        state: &StateMap,
    ) -> Result<(StateGroupId, Option<StateGroup>)> {
        if let Some(base) = base {
            let base_state = self.state(base)?;
            if *base_state == *state {
                return Ok((base, None));
            }
            let group = make_group(Some((base, self.chain_len(base)?, &base_state)), state);
            return Ok((self.core.db.next_state_group_id(), Some(group)));
        }
        Ok((self.core.db.next_state_group_id(), Some(make_group(None, state))))
    }

    /// Fetches the auth events of `pdu` this server lacks (and theirs, recursively) from
    /// `origin`, checks each and stores it as an outlier, oldest first.
    pub(crate) async fn fetch_auth_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<()> {
        let rules = rules_for(version)?;
        let mut wanted: VecDeque<OwnedEventId> = pdu.auth_events.iter().cloned().collect();
        let mut fetched: Vec<Pdu> = Vec::new();
        let mut seen = HashSet::new();
        while let Some(id) = wanted.pop_front() {
            if !seen.insert(id.clone()) || self.pdu(&id)?.is_some() {
                continue;
            }
            if seen.len() > AUTH_FETCH_LIMIT {
                return Err(Error::forbidden("The event's auth chain is too long to fetch."));
            }
            let auth_pdu = self.fetch_event(origin, room_id, version, &id).await?;
            wanted.extend(auth_pdu.auth_events.iter().cloned());
            fetched.push(auth_pdu);
        }
        fetched.sort_by_key(|p| p.depth);
        for auth_pdu in fetched {
            let mut stored = auth_pdu.stored.clone();
            if let Err(reason) = self.check_against_auth_events(&rules, &auth_pdu) {
                tracing::info!(event_id = %auth_pdu.event_id, %reason, "a fetched auth event fails auth");
                stored.rejected = true;
            }
            let id = auth_pdu.event_id.clone();
            self.core
                .blocking(move |db| db.store_outliers(vec![(id, stored)], Vec::new()).map_err(Error::from))
                .await?;
        }
        Ok(())
    }

    /// The state-independent auth rules, then the state-dependent ones against the
    /// event's own auth events.
    pub(crate) fn check_against_auth_events(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> std::result::Result<(), String> {
        let fetch_event = |id: &EventId| self.pdu(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)?;
        let mut auth_state: HashMap<(StateEventType, String), Arc<Pdu>> = HashMap::new();
        for id in &pdu.auth_events {
            let auth = self.pdu(id).ok().flatten().ok_or_else(|| format!("auth event {id} is missing"))?;
            if auth.stored.rejected {
                return Err(format!("auth event {id} was rejected"));
            }
            if let Some(key) = &auth.state_key {
                auth_state.insert((auth.kind.to_string().into(), key.clone()), auth);
            }
        }
        // v12: the create event is implied by the room id, not listed.
        if let Some(create) = self.create_event_of(&pdu.room_id) {
            auth_state.entry((StateEventType::RoomCreate, String::new())).or_insert(create);
        }
        let fetch_state = |kind: &StateEventType, key: &str| auth_state.get(&(kind.clone(), key.to_owned())).cloned();
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
    }

    fn create_event_of(&self, room_id: &RoomId) -> Option<Arc<Pdu>> {
        if let Some(record) = self.room_record(room_id).ok().flatten() {
            return self.pdu(&record.create_event_id).ok().flatten();
        }
        // v12 rooms are named after their create event (while joining, before the record).
        if room_id.server_name().is_none() {
            let id = EventId::parse(format!("${}", room_id.strip_sigil())).ok()?;
            return self.pdu(&id).ok().flatten();
        }
        None
    }

    /// The state-dependent auth rules against a state map.
    fn check_against_state(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> std::result::Result<(), String> {
        let fetch_state = |kind: &StateEventType, key: &str| self.state_pdu(state, kind, key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
    }

    async fn store_rejected(&self, pdu: Pdu, state_before: Option<(StateGroupId, Option<StateGroup>)>) -> Result<()> {
        tracing::info!(event_id = %pdu.event_id, "rejecting an event");
        let mut stored = pdu.stored;
        stored.rejected = true;
        let mut groups = Vec::new();
        if let Some((id, group)) = state_before {
            stored.state_before = Some(id);
            groups.extend(group.map(|g| (id, g)));
        }
        let id = pdu.event_id;
        self.forget_cached_pdu(&id);
        self.core.blocking(move |db| db.store_outliers(vec![(id, stored)], groups).map_err(Error::from)).await
    }

    /// Fills a gap before `pdu` with /get_missing_events: the events between our forward
    /// extremities and it, received oldest first. Failures only log: the state at the
    /// remaining missing prev events is fetched instead.
    async fn fetch_missing_prevs(&self, origin: &ServerName, room_id: &RoomId, version: &RoomVersionId, pdu: &Pdu) {
        let missing: Vec<&OwnedEventId> = pdu.prev_events.iter().filter(|id| !self.has_timeline_state(id)).collect();
        if missing.is_empty() {
            return;
        }
        let Ok(Some(head)) = self.core.db.room_head(room_id) else { return };
        let mut request = get_missing_events::v1::Request::new(
            room_id.to_owned(),
            head.extremities.clone(),
            vec![pdu.event_id.clone()],
        );
        request.limit = UInt::from(MISSING_EVENTS_LIMIT);
        let events = match self.federation.client.send(origin, request).await {
            Ok(response) => response.events,
            Err(error) => {
                tracing::info!(%origin, %error, "get_missing_events failed");
                return;
            }
        };
        let mut checked = Vec::new();
        for raw in events {
            match self.check_incoming(room_id, version, &raw).await {
                Ok(event) => checked.push(event),
                Err(error) => tracing::info!(%origin, %error, "a missing event does not check"),
            }
        }
        checked.sort_by_key(|(_, object)| match object.get("depth") {
            Some(CanonicalJsonValue::Integer(depth)) => i64::from(*depth),
            _ => 0,
        });
        for (event_id, object) in checked {
            // The answer may reach back past our join into events we hold as outliers (the
            // state we joined with): they are history, not new events.
            if matches!(self.pdu(&event_id), Ok(Some(_))) {
                continue;
            }
            let result =
                Box::pin(self.receive_checked(origin, room_id, version, event_id.clone(), object, false)).await;
            if let Err(error) = result {
                tracing::info!(%event_id, %error, "a missing event was not accepted");
            }
        }
    }

    /// Whether an event is known with the state at it (a timeline or soft-failed event).
    fn has_timeline_state(&self, event_id: &EventId) -> bool {
        matches!(self.pdu(event_id), Ok(Some(p)) if !p.stored.rejected
            && (p.stored.state_before.is_some() || p.kind == TimelineEventType::RoomCreate))
    }

    /// The state before `pdu`: the state after each prev event (asked of `origin` with
    /// /state_ids where we lack it), resolved together when there are several.
    async fn state_before_prevs(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<StateMap> {
        let rules = rules_for(version)?;
        let mut states: Vec<StateMap> = Vec::new();
        for prev in &pdu.prev_events {
            match self.pdu(prev)? {
                Some(prev_pdu) if self.has_timeline_state(prev) => {
                    states.push((*self.state_after(&prev_pdu)?).clone());
                }
                _ => {
                    let state = self.fetch_state_after(origin, room_id, version, prev).await?;
                    states.push(state);
                }
            }
        }
        match states.len() {
            0 => Err(Error::bad_json("The event has no prev_events.")),
            1 => Ok(states.pop().unwrap_or_default()),
            _ => {
                let refs: Vec<&StateMap> = states.iter().collect();
                self.resolve_states(&rules, &refs, None)
            }
        }
    }

    /// The state before an event, as `origin` reports it (`/state_ids`); the events are
    /// fetched, checked and stored as outliers.
    pub(crate) async fn state_before_remote(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &EventId,
    ) -> Result<StateMap> {
        let response = self
            .federation
            .client
            .send(origin, get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned()))
            .await
            .map_err(Error::remote)?;
        let mut ids: Vec<OwnedEventId> = response.pdu_ids.clone();
        ids.extend(response.auth_chain_ids);
        self.fetch_outliers(origin, room_id, version, &ids).await?;
        let mut state = StateMap::default();
        for id in response.pdu_ids {
            let Some(state_pdu) = self.pdu(&id)? else { continue };
            if let Some(key) = &state_pdu.state_key
                && !state_pdu.stored.rejected
            {
                state.insert((state_pdu.kind.to_string().into(), key.clone()), id);
            }
        }
        Ok(state)
    }

    /// The state after an event we lack: `origin`'s state before it plus the event itself
    /// (fetched, checked and stored as an outlier like the state).
    async fn fetch_state_after(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &EventId,
    ) -> Result<StateMap> {
        let mut state = self.state_before_remote(origin, room_id, version, event_id).await?;
        self.fetch_outliers(origin, room_id, version, &[event_id.to_owned()]).await?;
        if let Some(pdu) = self.pdu(event_id)?
            && let Some(key) = &pdu.state_key
            && !pdu.stored.rejected
        {
            state.insert((pdu.kind.to_string().into(), key.clone()), event_id.to_owned());
        }
        Ok(state)
    }

    /// Fetches the listed events this server lacks from `origin` (one /event each),
    /// checks their signatures and auth, and stores them as outliers.
    pub(crate) async fn fetch_outliers(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        ids: &[OwnedEventId],
    ) -> Result<()> {
        let rules = rules_for(version)?;
        let mut fetched = Vec::new();
        for id in ids {
            if self.pdu(id)?.is_some() {
                continue;
            }
            fetched.push(self.fetch_event(origin, room_id, version, id).await?);
        }
        self.store_checked_outliers(&rules, fetched).await
    }

    /// One event from `origin` (`/event`), checked: the id it answers must be the one asked.
    async fn fetch_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        id: &EventId,
    ) -> Result<Pdu> {
        let response = self
            .federation
            .client
            .send(origin, get_event::v1::Request::new(id.to_owned()))
            .await
            .map_err(Error::remote)?;
        let (fetched_id, object) = self.check_incoming(room_id, version, &response.pdu).await?;
        if fetched_id != id {
            return Err(Error::forbidden(format!("{origin} answered {fetched_id} when asked for {id}.")));
        }
        Pdu::from_object(fetched_id, room_id, &object)
    }

    /// Stores checked events as outliers, oldest first, each authorised against its own
    /// auth events (those failing are stored as rejected).
    pub(crate) async fn store_checked_outliers(&self, rules: &RoomVersionRules, mut events: Vec<Pdu>) -> Result<()> {
        events.sort_by_key(|p| p.depth);
        let mut batch = Vec::new();
        for pdu in events {
            // Each is written before the next is checked: later ones use it as an auth event.
            let mut stored = pdu.stored.clone();
            if let Err(reason) = self.check_against_auth_events(rules, &pdu) {
                tracing::info!(event_id = %pdu.event_id, %reason, "an outlier fails auth");
                stored.rejected = true;
            }
            self.forget_cached_pdu(&pdu.event_id);
            batch.push((pdu.event_id.clone(), stored.clone()));
            self.cache_pdu(Arc::new(pdu.with_stored(stored)));
        }
        self.core.blocking(move |db| db.store_outliers(batch, Vec::new()).map_err(Error::from)).await
    }

    /// State resolution of several state maps (v2, v2.1 for room v12, v1 for room version
    /// 1). `incoming` is an event that
    /// one of the states contains but that is not stored yet (the event being accepted):
    /// without it, resolution would see an unknown event and leave it out of the
    /// conflicted set — the incoming side would lose without being weighed, and two
    /// servers receiving each other's concurrent state events would each keep their own.
    pub(crate) fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        states: &[&StateMap],
        incoming: Option<&Arc<Pdu>>,
    ) -> Result<StateMap> {
        // Forks that agree on the state (the common case: messages on both sides) need no
        // resolution, and the auth chains of a large room are not cheap.
        if let Some((first, rest)) = states.split_first()
            && rest.iter().all(|state| state == first)
        {
            return Ok((*first).clone());
        }
        let fetch_event = |id: &EventId| self.pdu_or_incoming(id, incoming);
        let Some(v2_rules) = rules.state_res.v2_rules() else {
            // Room version 1.
            return Ok(super::state_res_v1::resolve(&rules.authorization, states, fetch_event));
        };
        let mut chains = Vec::new();
        let mut memo: HashMap<OwnedEventId, Arc<BTreeSet<OwnedEventId>>> = HashMap::new();
        for state in states {
            let mut chain = BTreeSet::new();
            for id in state.values() {
                chain.extend(self.auth_chain_with(id, &mut memo, incoming).iter().cloned());
            }
            chains.push(chain.into_iter().collect());
        }
        let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
            Some(self.conflicted_subgraph(conflicted.values().flatten(), incoming).into_iter().collect())
        };
        // ruma's maps use std's hasher, ours foldhash (crate::hash): copied both ways, a small
        // cost beside the auth chains.
        let std_states: Vec<state_res::StateMap<OwnedEventId>> =
            states.iter().map(|state| state.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).collect();
        state_res::resolve(&rules.authorization, v2_rules, std_states.iter(), chains, fetch_event, subgraph)
            .map(|resolved| resolved.into_iter().collect())
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))
    }

    /// A stored event, or `incoming` when that is the one asked for.
    fn pdu_or_incoming(&self, id: &EventId, incoming: Option<&Arc<Pdu>>) -> Option<Arc<Pdu>> {
        match incoming {
            Some(pdu) if pdu.event_id == id => Some(pdu.clone()),
            _ => self.pdu(id).ok().flatten(),
        }
    }

    /// Every event reachable from `event_id` through auth events (not the event itself).
    pub(crate) fn auth_chain(
        &self,
        event_id: &EventId,
        memo: &mut HashMap<OwnedEventId, Arc<BTreeSet<OwnedEventId>>>,
    ) -> Arc<BTreeSet<OwnedEventId>> {
        self.auth_chain_with(event_id, memo, None)
    }

    /// `auth_chain`, seeing `incoming` as if it were stored.
    fn auth_chain_with(
        &self,
        event_id: &EventId,
        memo: &mut HashMap<OwnedEventId, Arc<BTreeSet<OwnedEventId>>>,
        incoming: Option<&Arc<Pdu>>,
    ) -> Arc<BTreeSet<OwnedEventId>> {
        if let Some(chain) = memo.get(event_id) {
            return chain.clone();
        }
        // Iterative walk: auth chains are shallow but wide.
        let mut chain = BTreeSet::new();
        let mut stack: Vec<OwnedEventId> = match self.pdu_or_incoming(event_id, incoming) {
            Some(pdu) => pdu.auth_events.clone(),
            None => Vec::new(),
        };
        while let Some(id) = stack.pop() {
            if !chain.insert(id.clone()) {
                continue;
            }
            if let Some(known) = memo.get(&id) {
                chain.extend(known.iter().cloned());
                continue;
            }
            if let Ok(Some(pdu)) = self.pdu(&id) {
                stack.extend(pdu.auth_events.iter().cloned());
            }
        }
        let chain = Arc::new(chain);
        memo.insert(event_id.to_owned(), chain.clone());
        chain
    }

    /// The conflicted state subgraph (state resolution v2.1): events on an auth-event path
    /// from one conflicted event to another, the conflicted events included.
    fn conflicted_subgraph<'a>(
        &self,
        conflicted: impl Iterator<Item = &'a OwnedEventId>,
        incoming: Option<&Arc<Pdu>>,
    ) -> HashSet<OwnedEventId> {
        let conflicted: HashSet<OwnedEventId> = conflicted.cloned().collect();
        // Every ancestor of a conflicted event, with its auth edges.
        let mut parents: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        let mut stack: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(id) = stack.pop() {
            if parents.contains_key(&id) {
                continue;
            }
            let auth = self.pdu_or_incoming(&id, incoming).map(|p| p.auth_events.clone()).unwrap_or_default();
            stack.extend(auth.iter().cloned());
            parents.insert(id, auth);
        }
        // Those that have a conflicted event among their ancestors (or are one).
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        let ids: Vec<OwnedEventId> = parents.keys().cloned().collect();
        for id in &ids {
            reaches_conflicted(id, &parents, &conflicted, &mut reaches);
        }
        reaches.into_iter().filter(|(_, reaches)| *reaches).map(|(id, _)| id).collect()
    }
}

/// Whether `id` is conflicted or has a conflicted auth ancestor (memoised, iterative).
fn reaches_conflicted(
    start: &OwnedEventId,
    parents: &HashMap<OwnedEventId, Vec<OwnedEventId>>,
    conflicted: &HashSet<OwnedEventId>,
    memo: &mut HashMap<OwnedEventId, bool>,
) -> bool {
    let mut stack = vec![(start.clone(), false)];
    while let Some((id, expanded)) = stack.pop() {
        if memo.contains_key(&id) {
            continue;
        }
        let edges = parents.get(&id).map(Vec::as_slice).unwrap_or_default();
        if expanded {
            let value = conflicted.contains(&id) || edges.iter().any(|p| memo.get(p).copied().unwrap_or(false));
            memo.insert(id, value);
        } else {
            stack.push((id.clone(), true));
            for parent in edges {
                if !memo.contains_key(parent) {
                    stack.push((parent.clone(), false));
                }
            }
        }
    }
    memo.get(start).copied().unwrap_or(false)
}

/// A state group for `state`: a delta over `base` (id, chain length, its state) when
/// `state` only adds or replaces entries and the chain is short, else a snapshot.
pub(crate) fn make_group(base: Option<(StateGroupId, u32, &StateMap)>, state: &StateMap) -> StateGroup {
    if let Some((base_id, base_len, base_state)) = base
        && base_len + 1 < MAX_STATE_CHAIN
        && base_state.keys().all(|key| state.contains_key(key))
    {
        let changes = state
            .iter()
            .filter(|(key, id)| base_state.get(*key) != Some(*id))
            .map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone()))
            .collect();
        return StateGroup { parent: Some(base_id), chain_len: base_len + 1, changes };
    }
    let changes = state.iter().map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone())).collect();
    StateGroup { parent: None, chain_len: 0, changes }
}
