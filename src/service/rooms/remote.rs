//! Rooms across servers: what other servers may read (events, state, auth chains,
//! backfill, missing events), joins and leaves in both directions (make_join/send_join,
//! make_leave/send_leave), invites in both directions, and which servers a new local
//! event goes to.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
    events::{StateEventType, TimelineEventType},
    signatures::{hash_and_sign_event, reference_hash},
    state_res,
};
use serde_json::{Map, Value, value::RawValue};

use super::{AppendEventOwned, NewEvent, Pdu, Rooms, StateMap, ingest::Outcome, raw, rules_for};
use crate::{
    error::{Error, Result},
    service::now_ms,
    storage::RoomRecord,
};

/// Room versions this server can take part in (authorises and resolves state for).
pub const SUPPORTED_VERSIONS: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Most events answered to one /backfill or /get_missing_events.
const MAX_BACKFILL: usize = 100;

impl Rooms {
    /// Servers with joined members in a room (current state), ours excluded, and those the
    /// room's server ACL denies excluded too (nothing of the room is sent to them).
    pub fn remote_servers_in_room(&self, room_id: &RoomId) -> Result<BTreeSet<OwnedServerName>> {
        let mut servers: BTreeSet<OwnedServerName> = self
            .core
            .db
            .members(room_id)?
            .iter()
            .filter(|(user, membership)| membership == "join" && user.server_name() != self.core.server_name())
            .map(|(user, _)| user.server_name().to_owned())
            .collect();
        servers.retain(|server| self.check_server_acl(server, room_id).is_ok());
        Ok(servers)
    }

    /// Whether `server` has a user joined to the room (may read its events and state).
    pub fn server_in_room(&self, server: &ServerName, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .core
            .db
            .members(room_id)?
            .iter()
            .any(|(user, membership)| user.server_name() == server && (membership == "join" || membership == "invite")))
    }

    fn check_server_in_room(&self, server: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.room_record(room_id)?.is_none() {
            return Err(Error::not_found(format!("Unknown room {room_id}.")));
        }
        self.check_server_acl(server, room_id)?;
        if !self.server_in_room(server, room_id)? {
            return Err(Error::forbidden(format!("{server} is not in room {room_id}.")));
        }
        Ok(())
    }

    /// Sends a just-appended local event to every other server in its room (and to the
    /// server of a remote user whose membership it changes).
    pub(crate) async fn broadcast(&self, pdu: &Pdu) -> Result<()> {
        let mut servers = self.remote_servers_in_room(&pdu.room_id)?;
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(Ok(target)) = pdu.state_key.as_deref().map(UserId::parse)
            && target.server_name() != self.core.server_name()
        {
            servers.insert(target.server_name().to_owned());
        }
        if servers.is_empty() {
            return Ok(());
        }
        self.federation.queue_pdu(servers.into_iter().collect(), pdu.event_id.clone(), self.federation_pdu(pdu)?).await
    }

    /// The id an incoming PDU will have (for per-PDU answers), if it can be computed.
    pub fn event_id_of(&self, room_id: &RoomId, raw_pdu: &RawValue) -> Option<OwnedEventId> {
        let version = self.room_version(room_id).ok().flatten().unwrap_or(RoomVersionId::V12);
        let rules = version.rules()?;
        let mut object: CanonicalJsonObject = serde_json::from_str(raw_pdu.get()).ok()?;
        match rules.event_id_format {
            ruma::room_version_rules::EventIdFormatVersion::V1 => match object.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => EventId::parse(id).ok(),
                _ => None,
            },
            _ => {
                object.remove("event_id");
                EventId::new_v2_or_v3(&reference_hash(&object, &rules).ok()?).ok()
            }
        }
    }

    /// Refuses a server the room's `m.room.server_acl` does not allow.
    pub fn check_server_acl(&self, server: &ServerName, room_id: &RoomId) -> Result<()> {
        let Some(acl) = self.current_state_pdu(room_id, &StateEventType::RoomServerAcl, "")? else { return Ok(()) };
        let Ok(content) =
            serde_json::from_str::<ruma::events::room::server_acl::RoomServerAclEventContent>(acl.content.get())
        else {
            return Ok(());
        };
        if content.is_allowed(server) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("{server} is denied by the room's server ACL.")))
        }
    }

    /// An event for another server: it must be in the room.
    pub fn event_for_server(&self, origin: &ServerName, event_id: &EventId) -> Result<Arc<Pdu>> {
        let pdu = self.pdu(event_id)?.ok_or_else(|| Error::not_found(format!("Unknown event {event_id}.")))?;
        if pdu.stored.rejected {
            return Err(Error::not_found(format!("Unknown event {event_id}.")));
        }
        self.check_server_in_room(origin, &pdu.room_id)?;
        Ok(pdu)
    }

    /// The state before an event and the auth chain of that state (`/state_ids`, `/state`).
    pub fn state_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let pdu = self.event_for_server(origin, event_id)?;
        if pdu.room_id != room_id {
            return Err(Error::not_found("That event is not in this room."));
        }
        if pdu.stored.state_before.is_none() && pdu.kind != TimelineEventType::RoomCreate {
            return Err(Error::not_found("This server does not know the state at that event."));
        }
        let state = self.state_before(&pdu)?;
        let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
        let chain = self.auth_chain_of(state_ids.iter())?;
        Ok((state_ids, chain))
    }

    /// The auth chain of several events (not the events themselves).
    pub fn auth_chain_of<'a>(&self, ids: impl Iterator<Item = &'a OwnedEventId>) -> Result<Vec<OwnedEventId>> {
        let mut memo = HashMap::new();
        let mut chain = BTreeSet::new();
        for id in ids {
            chain.extend(self.auth_chain(id, &mut memo).iter().cloned());
        }
        Ok(chain.into_iter().collect())
    }

    /// An event as it leaves the server: the stored PDU, signed first when it is one of
    /// ours built unsigned (see `goes_out_at_once`). Signing is deterministic, so every
    /// server gets the same bytes each time.
    pub fn federation_pdu(&self, pdu: &Pdu) -> Result<Box<RawValue>> {
        #[derive(serde::Deserialize)]
        struct Signatures {
            signatures: Option<BTreeMap<String, serde::de::IgnoredAny>>,
        }
        let ours = self.core.server_name();
        if pdu.sender.server_name() != ours {
            return Ok(pdu.stored.pdu.clone());
        }
        let signed = serde_json::from_str::<Signatures>(pdu.stored.pdu.get())
            .map_err(|e| Error::internal(format!("stored event {} does not parse: {e}", pdu.event_id)))?
            .signatures
            .is_some_and(|signatures| signatures.contains_key(ours.as_str()));
        if signed {
            return Ok(pdu.stored.pdu.clone());
        }
        let version =
            self.room_version(&pdu.room_id)?.ok_or_else(|| Error::internal(format!("no room {}", pdu.room_id)))?;
        let rules = rules_for(&version)?;
        let mut object: CanonicalJsonObject = serde_json::from_str(pdu.stored.pdu.get())
            .map_err(|e| Error::internal(format!("stored event {} does not parse: {e}", pdu.event_id)))?;
        ruma::signatures::sign_event(ours.as_str(), &*self.core.signing_key, &mut object, &rules.redaction)
            .map_err(|e| Error::internal(format!("cannot sign {}: {e}", pdu.event_id)))?;
        raw(&object)
    }

    /// The PDUs of a list of ids, as they leave the server (ids unknown here are skipped).
    pub fn pdus_json(&self, ids: &[OwnedEventId]) -> Result<Vec<Box<RawValue>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(pdu) = self.pdu(id)? {
                out.push(self.federation_pdu(&pdu)?);
            }
        }
        Ok(out)
    }

    /// `/backfill`: events before (and including) `from`, newest first, walking prev events.
    pub fn backfill_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        self.check_server_in_room(origin, room_id)?;
        let limit = limit.min(MAX_BACKFILL);
        let mut queue: VecDeque<OwnedEventId> = from.iter().cloned().collect();
        let mut seen = HashSet::new();
        let mut found: Vec<Arc<Pdu>> = Vec::new();
        while let Some(id) = queue.pop_front() {
            if found.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(pdu) = self.pdu(&id)? else { continue };
            if pdu.room_id != room_id || pdu.stored.rejected {
                continue;
            }
            queue.extend(pdu.prev_events.iter().cloned());
            found.push(pdu);
        }
        found.sort_by(|a, b| b.depth.cmp(&a.depth));
        found.iter().map(|p| self.federation_pdu(p)).collect()
    }

    /// `/get_missing_events`: events between `earliest` and `latest` (exclusive), oldest first.
    pub fn missing_events_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawValue>>> {
        self.check_server_in_room(origin, room_id)?;
        let limit = limit.min(MAX_BACKFILL);
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest {
            if let Some(pdu) = self.pdu(id)? {
                queue.extend(pdu.prev_events.iter().cloned());
            }
        }
        let mut found: Vec<Arc<Pdu>> = Vec::new();
        while let Some(id) = queue.pop_front() {
            if found.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(pdu) = self.pdu(&id)? else { continue };
            if pdu.room_id != room_id || pdu.stored.rejected || pdu.depth < min_depth {
                continue;
            }
            queue.extend(pdu.prev_events.iter().cloned());
            found.push(pdu);
        }
        found.sort_by_key(|p| p.depth);
        found.iter().map(|p| self.federation_pdu(p)).collect()
    }

    /// `/make_join` and `/make_leave`: an unsigned membership event template for a user of
    /// `origin`, built on the current state and checked against it.
    pub fn make_membership_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, Box<RawValue>)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("A server may only make membership events for its own users."));
        }
        let version =
            self.room_version(room_id)?.ok_or_else(|| Error::not_found(format!("Unknown room {room_id}.")))?;
        if membership != "leave" && !supported.contains(&version) {
            return Err(Error::Matrix {
                kind: ruma::api::error::ErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
                ),
                message: format!("The room is version {version}, which your server does not support."),
            });
        }
        if self.core.db.members(room_id)?.iter().all(|(u, m)| u.server_name() != self.core.server_name() || m != "join")
        {
            return Err(Error::not_found("No user of this server is in that room."));
        }
        let rules = rules_for(&version)?;
        let head = self.core.db.room_head(room_id)?.ok_or_else(|| Error::internal("room without head"))?;
        let state = self.state(head.state_group)?;
        let mut content = Map::new();
        content.insert("membership".into(), Value::String(membership.to_owned()));
        let new = NewEvent::new(room_id, user_id, TimelineEventType::RoomMember, Some(user_id.to_string()), content);
        let (auth_events, prev, depth) = self.references(&rules, &new, &head, &state)?;
        let object = self.template(&rules, &new, &prev, &auth_events, depth)?;
        // Check it now so the joining server hears "forbidden" before it signs anything.
        let event_id = OwnedEventId::try_from(format!("$template:{}", self.core.server_name()))
            .map_err(|e| Error::internal(e.to_string()))?;
        let pdu = Pdu::from_object(event_id, room_id, &object)?;
        self.authorise(&rules, &pdu, &state)?;
        Ok((version, raw(&object)?))
    }

    /// `/send_join` and `/send_leave`: checks the signed membership event from `origin`
    /// and appends it; for a join, answers the state before it and its auth chain.
    pub async fn receive_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw_pdu: &RawValue,
        membership: &str,
    ) -> Result<create_join_event::v2::RoomState> {
        let version =
            self.room_version(room_id)?.ok_or_else(|| Error::not_found(format!("Unknown room {room_id}.")))?;
        let (checked_id, mut object) = self.check_incoming(room_id, &version, raw_pdu).await?;
        if checked_id != event_id {
            return Err(Error::bad_json("The event id in the path does not match the event."));
        }
        let pdu = Pdu::from_object(checked_id.clone(), room_id, &object)?;
        let state_key_user = pdu.state_key.as_deref().map(UserId::parse).and_then(|r| r.ok());
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.membership().as_deref() != Some(membership)
            || state_key_user.as_deref() != Some(&*pdu.sender)
            || pdu.sender.server_name() != origin
        {
            return Err(Error::bad_json(format!("Not a {membership} event of a user of {origin}.")));
        }
        // Restricted joins are authorised by one of our users: we add our signature.
        let mut signed_event = None;
        if membership == "join"
            && pdu
                .content_str("join_authorised_via_users_server")
                .is_some_and(|u| UserId::parse(u.as_str()).is_ok_and(|u| u.server_name() == self.core.server_name()))
        {
            let rules = rules_for(&version)?;
            ruma::signatures::sign_event(
                self.core.server_name().as_str(),
                &*self.core.signing_key,
                &mut object,
                &rules.redaction,
            )
            .map_err(|e| Error::internal(format!("cannot sign the join: {e}")))?;
            signed_event = Some(raw(&object)?);
        }
        let outcome = {
            let lock = self.room_lock(room_id);
            let _guard = lock.lock().await;
            self.receive_checked(origin, room_id, &version, checked_id.clone(), object, true).await?
        };
        if outcome == Outcome::SoftFailed {
            return Err(Error::forbidden("The current state of the room does not allow that membership."));
        }
        let pdu = self.pdu(&checked_id)?.ok_or_else(|| Error::internal("accepted event vanished"))?;
        if outcome == Outcome::Accepted {
            // The resident server tells the rest of the room about the new member.
            self.broadcast(&pdu).await?;
        }
        let mut answer = create_join_event::v2::RoomState::new();
        if membership == "join" {
            let state = self.state_before(&pdu)?;
            let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
            let chain = self.auth_chain_of(state_ids.iter().chain(pdu.auth_events.iter()))?;
            answer.state = self.pdus_json(&state_ids)?;
            answer.auth_chain = self.pdus_json(&chain)?;
            answer.event = signed_event;
            let mut servers: BTreeSet<String> =
                self.remote_servers_in_room(room_id)?.into_iter().map(|s| s.to_string()).collect();
            servers.insert(self.core.server_name().to_string());
            answer.servers_in_room = Some(servers.into_iter().collect());
        }
        Ok(answer)
    }

    /// `/invite` (v2) from another server for one of our users: check, countersign, and
    /// remember the invite when we are not in the room.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        request: &create_invite::v2::Request,
    ) -> Result<Box<RawValue>> {
        let version = &request.room_version;
        if !SUPPORTED_VERSIONS.contains(version) {
            return Err(Error::Matrix {
                kind: ruma::api::error::ErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
                ),
                message: format!("This server does not support room version {version}."),
            });
        }
        let rules = rules_for(version)?;
        let (event_id, mut object) = self.check_incoming(&request.room_id, version, &request.event).await?;
        if event_id != request.event_id {
            return Err(Error::bad_json("The event id in the path does not match the event."));
        }
        let pdu = Pdu::from_object(event_id.clone(), &request.room_id, &object)?;
        let invitee = pdu.state_key.as_deref().map(UserId::parse).and_then(|r| r.ok());
        let Some(invitee) = invitee else { return Err(Error::bad_json("The invite has no valid state_key.")) };
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.membership().as_deref() != Some("invite")
            || pdu.sender.server_name() != origin
            || pdu.room_id != request.room_id
        {
            return Err(Error::bad_json("Not an invite from a user of the sending server."));
        }
        if invitee.server_name() != self.core.server_name() {
            return Err(Error::bad_json("The invited user is not on this server."));
        }
        let user = self.core.db.user(&invitee)?;
        if user.as_ref().is_none_or(|u| u.deactivated) {
            return Err(Error::not_found(format!("There is no user {invitee} here.")));
        }
        ruma::signatures::sign_event(
            self.core.server_name().as_str(),
            &*self.core.signing_key,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| Error::internal(format!("cannot sign the invite: {e}")))?;
        let signed = raw(&object)?;
        if self.room_record(&request.room_id)?.is_none() {
            // Not in the room: keep the invite with the state the inviter sent, for /sync.
            let state = Some(("invite_room_state", request.invite_room_state.as_slice()));
            self.keep_outside_membership(&invitee, "invite", &request.room_id, event_id, object, state).await?;
        }
        Ok(signed)
    }

    /// Records a local user's membership in a room this server is not in, with the room's
    /// stripped state (from the invite or the knock answer) under `unsigned.{key}` for /sync.
    async fn keep_outside_membership(
        &self,
        user_id: &UserId,
        membership: &'static str,
        room_id: &RoomId,
        event_id: OwnedEventId,
        mut object: CanonicalJsonObject,
        stripped_state: Option<(&str, &[RawStrippedState])>,
    ) -> Result<()> {
        if let Some((key, state)) = stripped_state {
            let stripped = state.iter().filter_map(stripped_value).collect();
            let unsigned = CanonicalJsonObject::from([(key.to_owned(), CanonicalJsonValue::Array(stripped))]);
            object.insert("unsigned".into(), CanonicalJsonValue::Object(unsigned));
        }
        let stored = Pdu::from_object(event_id.clone(), room_id, &object)?.stored;
        let user = user_id.to_owned();
        self.forget_cached_pdu(&event_id);
        self.core
            .blocking(move |db| db.put_outside_membership(&user, membership, &event_id, stored).map_err(Error::from))
            .await
            .map(|_| ())
    }

    /// Joins a local user to a room this server is not in, through one of `servers`.
    pub async fn join_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        mut content: Map<String, Value>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        let queue = JoinQueue::open(self, room_id);
        for server in servers.iter().filter(|s| *s != self.core.server_name()) {
            if !self.federation.permits(server) {
                problems.push(format!("{server}: not permitted by federation policy"));
                continue;
            }
            match self.join_via(user_id, room_id, server, &mut content).await {
                Ok(()) => {
                    if let Some(queue) = queue {
                        queue.process().await;
                    }
                    return Ok(());
                }
                Err(error) => {
                    tracing::info!(%room_id, %server, %error, "joining through this server failed");
                    problems.push(format!("{server}: {error}"));
                }
            }
        }
        if problems.is_empty() {
            return Err(Error::not_found("No server to join the room through; give one with `via`."));
        }
        let summary = problems.join("; ");
        if problems.iter().any(|p| p.contains("M_FORBIDDEN") || p.contains("not permitted")) {
            return Err(Error::forbidden(format!("Joining was refused: {summary}")));
        }
        Err(Error::WithStatus {
            kind: ruma::api::error::ErrorKind::Unknown,
            message: format!("Could not join the room: {summary}"),
            status: ruma::exports::http::StatusCode::BAD_GATEWAY,
        })
    }

    /// Keeps a PDU that arrived for a room this server is joining right now (the resident
    /// server sends new events to the joining server as soon as it accepts the join, which
    /// may be before the answer to send_join has been stored here). False when no join is
    /// under way or the queue is full: the caller answers "not in room".
    pub fn queue_while_joining(&self, origin: &ServerName, room_id: &RoomId, raw_pdu: &RawValue) -> bool {
        let mut joining = self.joining.lock().unwrap_or_else(|e| e.into_inner());
        match joining.get_mut(room_id) {
            Some(queue) if queue.len() < MAX_QUEUED_WHILE_JOINING => {
                queue.push((origin.to_owned(), raw_pdu.to_owned()));
                true
            }
            _ => false,
        }
    }

    async fn join_via(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        content: &mut Map<String, Value>,
    ) -> Result<()> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = SUPPORTED_VERSIONS.to_vec();
        let template = self.federation.client.send(server, request).await.map_err(Error::remote)?;
        let version = template.room_version.unwrap_or(RoomVersionId::V1);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::unsupported_room_version(format!("Room version {version} is not supported here.")));
        }
        let rules = rules_for(&version)?;
        let (event_id, object) = self.sign_template(&rules, &template.event, user_id, "join", content)?;
        let join_raw = raw(&object)?;
        let response = self
            .federation
            .client
            .send(server, create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), join_raw))
            .await
            .map_err(Error::remote)?;
        let room_state = response.room_state;
        // A restricted join comes back countersigned by the resident server.
        let object = match &room_state.event {
            Some(signed) => {
                let (signed_id, signed_object) = self.check_incoming(room_id, &version, signed).await?;
                if signed_id != event_id {
                    return Err(Error::bad_json("The resident server returned a different join event."));
                }
                signed_object
            }
            None => object,
        };
        self.complete_join(server, room_id, &version, event_id, object, room_state.state, room_state.auth_chain).await
    }

    /// Fills a make_join/make_leave template for a local user, signs and names it.
    fn sign_template(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        template: &RawValue,
        user_id: &UserId,
        membership: &str,
        content: &Map<String, Value>,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let mut object: CanonicalJsonObject = serde_json::from_str(template.get())
            .map_err(|e| Error::bad_json(format!("The other server sent a malformed template: {e}")))?;
        let sender_ok = matches!(object.get("sender"), Some(CanonicalJsonValue::String(s)) if s == user_id.as_str());
        let key_ok = matches!(object.get("state_key"), Some(CanonicalJsonValue::String(s)) if s == user_id.as_str());
        if !sender_ok || !key_ok {
            return Err(Error::bad_json("The other server's template is for another user."));
        }
        let mut full = content.clone();
        full.insert("membership".into(), Value::String(membership.to_owned()));
        if let Some(CanonicalJsonValue::Object(template_content)) = object.get("content")
            && let Some(CanonicalJsonValue::String(via)) = template_content.get("join_authorised_via_users_server")
        {
            full.insert("join_authorised_via_users_server".into(), Value::String(via.clone()));
        }
        let content = ruma::canonical_json::to_canonical_value(&full)
            .map_err(|e| Error::bad_json(format!("Member content is not canonical JSON: {e}")))?;
        object.insert("content".into(), content);
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
        );
        object.remove("event_id");
        object.remove("signatures");
        object.remove("hashes");
        object.remove("unsigned");
        if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
            object.insert("origin".into(), CanonicalJsonValue::String(self.core.server_name().to_string()));
            let id = format!("${}:{}", super::super::random_token(18), self.core.server_name());
            object.insert("event_id".into(), CanonicalJsonValue::String(id));
        }
        hash_and_sign_event(self.core.server_name().as_str(), &*self.core.signing_key, &mut object, &rules.redaction)
            .map_err(|e| Error::bad_json(format!("Cannot sign the membership event: {e}")))?;
        let event_id = match rules.event_id_format {
            ruma::room_version_rules::EventIdFormatVersion::V1 => match object.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => {
                    EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?
                }
                _ => return Err(Error::internal("event id missing")),
            },
            _ => {
                let hash =
                    reference_hash(&object, rules).map_err(|e| Error::internal(format!("reference hash: {e}")))?;
                EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))?
            }
        };
        Ok((event_id, object))
    }

    /// After /send_join: stores the room's state and auth chain (checked), creates the room
    /// here, and appends our join as the first event of our timeline.
    #[allow(clippy::too_many_arguments)]
    async fn complete_join(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        join_id: OwnedEventId,
        join_object: CanonicalJsonObject,
        state: Vec<Box<RawValue>>,
        auth_chain: Vec<Box<RawValue>>,
    ) -> Result<()> {
        let rules = rules_for(version)?;
        let mut outliers = Vec::new();
        let mut seen = HashSet::new();
        let mut state_map = StateMap::default();
        let mut create_id = None;
        for (is_state, raw_event) in state.iter().map(|e| (true, e)).chain(auth_chain.iter().map(|e| (false, e))) {
            let (id, object) = match self.check_incoming(room_id, version, raw_event).await {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::info!(%server, %error, "dropping a bad event of a send_join answer");
                    continue;
                }
            };
            let pdu = Pdu::from_object(id.clone(), room_id, &object)?;
            if pdu.room_id != room_id {
                continue;
            }
            if is_state && let Some(key) = &pdu.state_key {
                state_map.insert((pdu.kind.to_string().into(), key.clone()), id.clone());
            }
            if pdu.kind == TimelineEventType::RoomCreate {
                create_id = Some(id.clone());
            }
            if seen.insert(id) {
                outliers.push(pdu);
            }
        }
        let create_id = create_id.ok_or_else(|| Error::bad_json("The room's state has no create event."))?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        if self.room_record(room_id)?.is_some() {
            // We are in the room already (a concurrent join): receive the join normally.
            drop(_guard);
            let _ = self.receive_pdu(server, room_id, &raw(&join_object)?).await?;
            return Ok(());
        }
        // The room record first, so the outliers' auth checks find the create event.
        let record = RoomRecord { room_version: version.clone(), create_event_id: create_id, created_ts: now_ms() };
        self.store_checked_outliers(&rules, outliers).await?;
        // The state must hold up: every state event accepted.
        for id in state_map.values() {
            if self.pdu(id)?.is_none_or(|p| p.stored.rejected) {
                return Err(Error::forbidden(format!("The room's state event {id} does not pass auth.")));
            }
        }
        let join = Pdu::from_object(join_id.clone(), room_id, &join_object)?;
        let fetch_event = |id: &EventId| self.pdu(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, &join, fetch_event)
            .map_err(|reason| Error::forbidden(format!("Our join is not allowed: {reason}")))?;
        self.check_join_against(&rules, &join, &state_map)?;
        let before_id = self.core.db.next_state_group_id();
        let before_group = super::ingest::make_group(None, &state_map);
        let mut after = state_map.clone();
        after.insert((StateEventType::RoomMember, join.sender.to_string()), join_id.clone());
        let after_id = self.core.db.next_state_group_id();
        let after_group = super::ingest::make_group(Some((before_id, 0, &state_map)), &after);
        let memberships = self.membership_changes(None, &after, &join)?;
        let mut stored = join.stored.clone();
        stored.state_before = Some(before_id);
        let append = AppendEventOwned {
            event_id: join_id.clone(),
            event: stored,
            new_room: Some(record),
            new_state_groups: vec![(before_id, before_group), (after_id, after_group)],
            state_after: after_id,
            extremities: vec![join_id.clone()],
            depth: join.depth,
            memberships,
            txn_key: None,
            redact: None,
            push: Default::default(),
            // The join was not a bumping event; the room's earlier history is not ours yet.
            bumps: false,
            last_bump: None,
        };
        self.write(append).await?;
        self.cache_state(after_id, Arc::new(after));
        tracing::info!(%room_id, %server, "joined a room over federation");
        Ok(())
    }

    fn check_join_against(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        join: &Pdu,
        state: &StateMap,
    ) -> Result<()> {
        let fetch_state = |kind: &StateEventType, key: &str| self.state_pdu(state, kind, key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, join, fetch_state)
            .map_err(|reason| Error::forbidden(format!("Our join is not allowed by the room's state: {reason}")))
    }

    /// The room's recommended stripped state (full PDUs, as Matrix 1.16 asks) for an invite
    /// or a knock, with the member event of `sender` when given.
    fn stripped_for_remote(&self, state: &StateMap, sender: Option<&UserId>) -> Result<Vec<RawStrippedState>> {
        let mut stripped = Vec::new();
        for kind in [
            StateEventType::RoomCreate,
            StateEventType::RoomJoinRules,
            StateEventType::RoomName,
            StateEventType::RoomCanonicalAlias,
            StateEventType::RoomAvatar,
            StateEventType::RoomEncryption,
            StateEventType::RoomTopic,
        ] {
            if let Some(state_pdu) = self.state_pdu(state, &kind, "")? {
                stripped.push(RawStrippedState::Pdu(self.federation_pdu(&state_pdu)?));
            }
        }
        if let Some(sender) = sender
            && let Some(member) = self.state_pdu(state, &StateEventType::RoomMember, sender.as_str())?
        {
            stripped.push(RawStrippedState::Pdu(self.federation_pdu(&member)?));
        }
        Ok(stripped)
    }

    /// `/send_knock`: checks and appends the knock; answers the room's stripped state.
    pub async fn receive_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw_pdu: &RawValue,
    ) -> Result<Vec<RawStrippedState>> {
        self.receive_membership(origin, room_id, event_id, raw_pdu, "knock").await?;
        let state = self.current_state(room_id)?.unwrap_or_default();
        self.stripped_for_remote(&state, None)
    }

    /// Knocks on a room this server is not in, through one of `servers`.
    pub async fn knock_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        content: Map<String, Value>,
    ) -> Result<()> {
        let mut last_error = None;
        for server in servers.iter().filter(|s| *s != self.core.server_name()) {
            let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
            request.ver = SUPPORTED_VERSIONS.to_vec();
            let template = match self.federation.client.send(server, request).await {
                Ok(template) => template,
                Err(error) => {
                    last_error = Some(Error::remote(error));
                    continue;
                }
            };
            let version = template.room_version;
            let rules = rules_for(&version)?;
            let (event_id, object) = self.sign_template(&rules, &template.event, user_id, "knock", &content)?;
            let request = create_knock_event::v1::Request::new(room_id.to_owned(), event_id.clone(), raw(&object)?);
            match self.federation.client.send(server, request).await {
                Ok(response) => {
                    let state = Some(("knock_room_state", response.knock_room_state.as_slice()));
                    self.keep_outside_membership(user_id, "knock", room_id, event_id, object, state).await?;
                    return Ok(());
                }
                Err(error) => last_error = Some(Error::remote(error)),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found("No server to knock through; give one with `via`.")))
    }

    /// Fetches history older than the room's oldest timeline event from another server in
    /// the room (`/backfill`), checks it like any received event, and inserts it below the
    /// oldest entry. The state at the fetched events comes from one `/state_ids` at the
    /// oldest of them, carried forward event by event. Returns how many were added.
    pub async fn backfill_from_remote(&self, room_id: &RoomId, limit: usize) -> Result<usize> {
        let Some(version) = self.room_version(room_id)? else { return Ok(0) };
        if self.backfill_retry.lock().unwrap_or_else(|e| e.into_inner()).get(room_id).is_some_and(|t| *t > now_ms()) {
            return Ok(0);
        }
        let result = self.backfill_now(room_id, &version, limit).await;
        if !matches!(result, Ok(n) if n > 0) {
            // Nothing to fetch (or nobody answered): do not ask again for a minute.
            self.backfill_retry.lock().unwrap_or_else(|e| e.into_inner()).insert(room_id.to_owned(), now_ms() + 60_000);
        }
        result
    }

    async fn backfill_now(&self, room_id: &RoomId, version: &RoomVersionId, limit: usize) -> Result<usize> {
        let version = version.clone();
        let rules = rules_for(&version)?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let Some((_, oldest_id, _)) =
            self.core.db.timeline(room_id, 0, crate::storage::Direction::Forward, 1)?.into_iter().next()
        else {
            return Ok(0);
        };
        let Some(oldest) = self.pdu(&oldest_id)? else { return Ok(0) };
        if oldest.kind == TimelineEventType::RoomCreate || oldest.prev_events.is_empty() {
            return Ok(0);
        }
        let mut servers: Vec<OwnedServerName> = self.remote_servers_in_room(room_id)?.into_iter().collect();
        servers.insert(0, oldest.sender.server_name().to_owned());
        servers.dedup();
        servers.retain(|s| s != self.core.server_name() && self.federation.permits(s));
        for server in servers {
            let request = ruma::api::federation::backfill::get_backfill::v1::Request::new(
                room_id.to_owned(),
                oldest.prev_events.clone(),
                ruma::UInt::try_from(limit.min(100) as u64).unwrap_or(ruma::uint!(50)),
            );
            let response = match self.federation.client.send(&server, request).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::info!(%room_id, %server, %error, "backfill failed");
                    continue;
                }
            };
            match self.insert_history(&server, room_id, &version, &rules, response.pdus).await {
                Ok(count) => return Ok(count),
                Err(error) => tracing::info!(%room_id, %server, %error, "backfilled events not usable"),
            }
        }
        Ok(0)
    }

    /// Checks fetched history and inserts it below the room's oldest entry.
    async fn insert_history(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        rules: &ruma::room_version_rules::RoomVersionRules,
        pdus: Vec<Box<RawValue>>,
    ) -> Result<usize> {
        let mut events: Vec<Pdu> = Vec::new();
        for raw_event in pdus {
            let (id, object) = match self.check_incoming(room_id, version, &raw_event).await {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::info!(%server, %error, "dropping a backfilled event");
                    continue;
                }
            };
            if self.pdu(&id)?.is_some_and(|p| p.stored.pos.is_some()) {
                continue;
            }
            let pdu = Pdu::from_object(id, room_id, &object)?;
            self.fetch_auth_events(server, room_id, version, &pdu).await?;
            if self.check_against_auth_events(rules, &pdu).is_err() {
                tracing::info!(event_id = %pdu.event_id, "a backfilled event fails auth; not shown");
                continue;
            }
            events.push(pdu);
        }
        if events.is_empty() {
            return Ok(0);
        }
        // Oldest first to carry the state forward; stored newest first.
        events.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.event_id.cmp(&b.event_id)));
        let mut state = self.state_before_remote(server, room_id, version, &events[0].event_id).await?;
        let mut groups = Vec::new();
        let mut rows = Vec::new();
        for mut pdu in events {
            let (before_id, before_group) = self.group_for_state(None, &state)?;
            groups.extend(before_group.map(|g| (before_id, g)));
            let mut after_id = before_id;
            if let Some(key) = &pdu.state_key {
                pdu.stored.replaces_state = state.get(&(pdu.kind.to_string().into(), key.clone())).cloned();
                let mut after = state.clone();
                after.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
                let (id, group) = self.group_for_state(None, &after)?;
                groups.extend(group.map(|g| (id, g)));
                after_id = id;
                state = after;
            }
            pdu.stored.state_before = Some(before_id);
            rows.push((pdu.event_id.clone(), pdu.stored.clone(), after_id));
        }
        rows.reverse();
        let ids: Vec<OwnedEventId> = rows.iter().map(|(id, _, _)| id.clone()).collect();
        let room = room_id.to_owned();
        let inserted =
            self.core.blocking(move |db| db.insert_backfilled(&room, rows, groups).map_err(Error::from)).await?;
        for id in ids {
            self.forget_cached_pdu(&id);
        }
        Ok(inserted)
    }

    /// Leaves (or rejects an invite to) a room this server is not in, through the server
    /// that invited us.
    pub async fn leave_remote(&self, user_id: &UserId, room_id: &RoomId, servers: &[OwnedServerName]) -> Result<()> {
        let mut last_error = None;
        for server in servers.iter().filter(|s| *s != self.core.server_name()) {
            let template = match self
                .federation
                .client
                .send(server, prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned()))
                .await
            {
                Ok(template) => template,
                Err(error) => {
                    last_error = Some(Error::remote(error));
                    continue;
                }
            };
            let version = template.room_version.unwrap_or(RoomVersionId::V1);
            let rules = rules_for(&version)?;
            let (event_id, object) = self.sign_template(&rules, &template.event, user_id, "leave", &Map::new())?;
            let request = create_leave_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw(&object)?);
            match self.federation.client.send(server, request).await {
                Ok(_) => {
                    self.keep_outside_membership(user_id, "leave", room_id, event_id, object, None).await?;
                    return Ok(());
                }
                Err(error) => last_error = Some(Error::remote(error)),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found("No server to leave the room through.")))
    }

    /// Invites a user of another server: their server countersigns the invite first, then
    /// it is appended and sent to the room.
    pub async fn invite_remote(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        invitee: &UserId,
        content: Map<String, Value>,
    ) -> Result<OwnedEventId> {
        self.federation.check_permitted(invitee.server_name())?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let record = self.room_record(room_id)?.ok_or_else(|| Error::forbidden(format!("Unknown room {room_id}")))?;
        let version = record.room_version.clone();
        let rules = rules_for(&version)?;
        let head = self.core.db.room_head(room_id)?.ok_or_else(|| Error::internal("room without head"))?;
        let state = self.state(head.state_group)?;
        let new = NewEvent::new(room_id, sender, TimelineEventType::RoomMember, Some(invitee.to_string()), content);
        let (auth_events, prev, depth) = self.references(&rules, &new, &head, &state)?;
        let (event_id, _, object) = self.build(&rules, Some(room_id), &new, &prev, &auth_events, depth, true)?;
        let pdu = Pdu::from_object(event_id.clone(), room_id, &object)?;
        self.authorise(&rules, &pdu, &state)?;
        let invite_state = self.stripped_for_remote(&state, Some(sender))?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            event_id.clone(),
            version.clone(),
            raw(&object)?,
            invite_state,
        );
        let response = self.federation.client.send(invitee.server_name(), request).await.map_err(Error::remote)?;
        let (returned_id, signed) = self.check_incoming(room_id, &version, &response.event).await?;
        if returned_id != event_id {
            return Err(Error::bad_json("The invited user's server changed the invite."));
        }
        let has_their_signature = matches!(signed.get("signatures"), Some(CanonicalJsonValue::Object(s)) if s.contains_key(invitee.server_name().as_str()));
        if !has_their_signature {
            return Err(Error::forbidden("The invited user's server did not sign the invite."));
        }
        let appended = self.append_prebuilt(&rules, &version, head, &state, event_id.clone(), signed).await?;
        drop(_guard);
        self.broadcast(&appended).await?;
        Ok(event_id)
    }
}

/// A stripped state entry as JSON (full PDUs are reduced to the stripped fields).
fn stripped_value(state: &RawStrippedState) -> Option<CanonicalJsonValue> {
    #[allow(deprecated)]
    let json = match state {
        RawStrippedState::Stripped(raw) => raw.json().get().to_owned(),
        RawStrippedState::Pdu(raw) => raw.get().to_owned(),
        _ => return None,
    };
    let value: Value = serde_json::from_str(&json).ok()?;
    let mut stripped = Map::new();
    for key in ["type", "state_key", "content", "sender"] {
        stripped.insert(key.to_owned(), value.get(key)?.clone());
    }
    ruma::canonical_json::to_canonical_value(Value::Object(stripped)).ok()
}

/// At most this many PDUs wait for one room's join to complete; more are refused (the
/// sender retries nothing, but later events lead here to fetch what is missing).
const MAX_QUEUED_WHILE_JOINING: usize = 1000;

/// A join over federation in progress: while it lives, PDUs for the room are queued
/// (`Rooms::queue_while_joining`); dropping it (join failed, request cancelled) discards
/// them; `process` hands them to the normal inbound path once the join is stored.
struct JoinQueue<'a> {
    rooms: &'a Rooms,
    room_id: OwnedRoomId,
}

impl<'a> JoinQueue<'a> {
    /// None when another local user's join of the same room already holds the queue.
    fn open(rooms: &'a Rooms, room_id: &RoomId) -> Option<Self> {
        let mut joining = rooms.joining.lock().unwrap_or_else(|e| e.into_inner());
        if joining.contains_key(room_id) {
            return None;
        }
        joining.insert(room_id.to_owned(), Vec::new());
        Some(Self { rooms, room_id: room_id.to_owned() })
    }

    fn take(&self) -> Vec<(OwnedServerName, Box<RawValue>)> {
        self.rooms.joining.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.room_id).unwrap_or_default()
    }

    async fn process(self) {
        let queued = self.take();
        for (origin, raw_pdu) in queued {
            // The same checks as a transaction for a room this server is in: the ACL, then
            // signatures, hashes and auth in receive_pdu.
            let outcome = match self.rooms.check_server_acl(&origin, &self.room_id) {
                Ok(()) => self.rooms.receive_pdu(&origin, &self.room_id, &raw_pdu).await.map(|_| ()),
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                tracing::info!(room_id = %self.room_id, %origin, %error, "a PDU received while joining was not accepted");
            }
        }
    }
}

impl Drop for JoinQueue<'_> {
    fn drop(&mut self) {
        self.take();
    }
}
