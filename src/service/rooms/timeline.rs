//! Reading rooms as a user: who may see what (history visibility, membership windows),
//! `/messages` pagination, `/context`, single events, state and member lists.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{EventId, OwnedUserId, RoomId, UserId, events::StateEventType};
use serde_json::{Map, Value};

use super::{Pdu, Rooms, StateMap};
use crate::{
    error::{Error, Result},
    service::sync::EventFilter,
    storage::{Direction, StreamPos},
};

/// How far a user may read a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Joined: everything up to now.
    Joined,
    /// Left, kicked or banned: everything up to and including that membership event.
    Until(StreamPos),
    /// Invited or knocking: the room as history visibility allows, up to now.
    Pending,
}

/// A page of events with the tokens around it.
pub struct Page {
    pub events: Vec<Arc<Pdu>>,
    pub start: String,
    pub end: Option<String>,
}

/// `t{pos}`: a point between the events at `pos` and `pos + 1`.
pub fn position_token(pos: StreamPos) -> String {
    number_token('t', &[pos])
}

/// `prefix` followed by the numbers joined with `_` (`s12_3`): tokens are rendered for
/// every /sync answer, so without `core::fmt`.
pub fn number_token(prefix: char, numbers: &[u64]) -> String {
    let mut token = String::with_capacity(1 + 21 * numbers.len());
    token.push(prefix);
    let mut buffer = itoa::Buffer::new();
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            token.push('_');
        }
        token.push_str(buffer.format(*n));
    }
    token
}

/// Reads a pagination token (`t{pos}`) or a sync token (`s{pos}_...`).
pub fn parse_position(token: &str) -> Result<StreamPos> {
    let digits = token
        .strip_prefix('t')
        .or_else(|| token.strip_prefix('s').map(|rest| rest.split('_').next().unwrap_or(rest)))
        .ok_or_else(|| Error::invalid_param(format!("Invalid pagination token {token:?}")))?;
    digits.parse().map_err(|_| Error::invalid_param(format!("Invalid pagination token {token:?}")))
}

impl Rooms {
    /// Whether and how far `user_id` may read `room_id`.
    pub fn access(&self, user_id: &UserId, room_id: &RoomId) -> Result<Access> {
        match self.core.db.membership(room_id, user_id)? {
            Some(record) => match record.membership.as_str() {
                "join" => Ok(Access::Joined),
                "invite" | "knock" => Ok(Access::Pending),
                // A forgotten room's history is no longer the user's to read.
                _ if self.core.db.is_forgotten(user_id, room_id)? => {
                    Err(Error::forbidden("You have forgotten this room."))
                }
                _ => Ok(Access::Until(record.pos)),
            },
            None if self.world_readable(room_id)? => Ok(Access::Pending),
            None => Err(Error::forbidden("You are not in this room.")),
        }
    }

    fn world_readable(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .current_state_pdu(room_id, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|pdu| pdu.content_str("history_visibility"))
            .as_deref()
            == Some("world_readable"))
    }

    /// History visibility: may `user_id` see `pdu`?
    pub fn can_see(&self, user_id: &UserId, pdu: &Pdu) -> Result<bool> {
        let state = self.state_before(pdu)?;
        let own_membership_event = pdu.kind == ruma::events::TimelineEventType::RoomMember
            && pdu.state_key.as_deref() == Some(user_id.as_str());
        let member_pdu;
        let membership = if own_membership_event {
            pdu.membership_str()
        } else {
            member_pdu = self.state_pdu(&state, &StateEventType::RoomMember, user_id.as_str())?;
            member_pdu.as_deref().and_then(Pdu::membership_str)
        };
        if membership == Some("join") {
            return Ok(true);
        }
        let visibility = self
            .state_pdu(&state, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|pdu| pdu.content_str("history_visibility"))
            .unwrap_or_else(|| "shared".into());
        Ok(match visibility.as_str() {
            "world_readable" => true,
            // Shared history: members (current or former, within their window) see it all.
            "shared" => {
                self.core
                    .db
                    .membership(&pdu.room_id, user_id)?
                    .is_some_and(|m| m.membership != "invite" && m.membership != "knock")
                    || own_membership_event
            }
            "invited" => membership == Some("invite"),
            _ => false,
        })
    }

    /// The highest position `access` lets a user read.
    fn read_limit(&self, room_id: &RoomId, access: Access) -> Result<StreamPos> {
        let now = self.core.db.room_head(room_id)?.map(|h| h.last_pos).unwrap_or(0);
        Ok(match access {
            Access::Joined | Access::Pending => now,
            Access::Until(pos) => pos.min(now),
        })
    }

    /// `GET /rooms/{roomId}/messages`.
    pub fn messages(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        from: Option<&str>,
        to: Option<&str>,
        dir: Direction,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Page> {
        let access = self.access(user_id, room_id)?;
        let cap = self.read_limit(room_id, access)?;
        let from = match from {
            Some(token) => parse_position(token)?,
            None if dir == Direction::Backward => cap,
            None => 0,
        };
        let to = to.map(parse_position).transpose()?;
        let limit = limit.clamp(1, 1000);
        let mut events = Vec::new();
        // Walk in batches; filters and visibility may drop events.
        let mut cursor = from.min(cap);
        let mut exhausted = false;
        let mut scanned = 0usize;
        while events.len() < limit && !exhausted && scanned < limit * 20 + 200 {
            let batch = match dir {
                Direction::Backward => self.core.db.timeline(room_id, cursor + 1, Direction::Backward, limit)?,
                Direction::Forward => self.core.db.timeline(room_id, cursor, Direction::Forward, limit)?,
            };
            if batch.len() < limit {
                exhausted = true;
            }
            for (pos, event_id, _) in batch {
                scanned += 1;
                let past_to = match (dir, to) {
                    (Direction::Backward, Some(to)) => pos <= to,
                    (Direction::Forward, Some(to)) => pos > to,
                    _ => false,
                };
                if (dir == Direction::Forward && pos > cap) || past_to {
                    exhausted = true;
                    break;
                }
                cursor = match dir {
                    Direction::Backward => pos - 1,
                    Direction::Forward => pos,
                };
                let Some(pdu) = self.pdu(&event_id)? else { continue };
                if filter.matches(&pdu) && self.can_see(user_id, &pdu)? {
                    events.push(pdu);
                    if events.len() >= limit {
                        break;
                    }
                }
            }
        }
        let start = position_token(from.min(cap));
        let end = if exhausted && events.len() < limit { None } else { Some(position_token(cursor)) };
        Ok(Page { events, start, end })
    }

    /// `/messages` that reaches back past the oldest event this server has by backfilling
    /// from another server in the room when a backward page runs out.
    #[allow(clippy::too_many_arguments)]
    pub async fn messages_with_backfill(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        from: Option<&str>,
        to: Option<&str>,
        dir: Direction,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Page> {
        let page = self.messages(user_id, room_id, from, to, dir, limit, filter)?;
        if dir != Direction::Backward || page.end.is_some() || page.events.len() >= limit || to.is_some() {
            return Ok(page);
        }
        match self.backfill_from_remote(room_id, limit.max(20)).await {
            Ok(0) => Ok(page),
            Ok(_) => self.messages(user_id, room_id, from, to, dir, limit, filter),
            Err(error) => {
                tracing::info!(%room_id, %error, "could not backfill");
                Ok(page)
            }
        }
    }

    /// `GET /rooms/{roomId}/context/{eventId}`: (before, event, after, start, end, state).
    pub fn context(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<(Page, Arc<Pdu>, Page, Arc<StateMap>)> {
        let pdu = self.visible_event(user_id, room_id, event_id)?;
        let pos = pdu.stored.pos.ok_or_else(|| Error::not_found("Event not found."))?;
        let before_limit = limit / 2;
        let after_limit = limit - before_limit;
        let mut before = self.messages(
            user_id,
            room_id,
            Some(&position_token(pos - 1)),
            None,
            Direction::Backward,
            before_limit.max(1),
            filter,
        )?;
        if before_limit == 0 {
            before.events.clear();
            before.end = Some(position_token(pos - 1));
        }
        let mut after = self.messages(
            user_id,
            room_id,
            Some(&position_token(pos)),
            None,
            Direction::Forward,
            after_limit.max(1),
            filter,
        )?;
        if after_limit == 0 {
            after.events.clear();
            after.end = Some(position_token(pos));
        }
        let last = after.events.last().cloned().unwrap_or_else(|| pdu.clone());
        let state = self.state_after(&last)?;
        Ok((before, pdu, after, state))
    }

    /// An event the user may see, or M_NOT_FOUND.
    pub fn visible_event(&self, user_id: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<Arc<Pdu>> {
        // Outsiders get the same answer for existing and missing events (no probing).
        let access = self.access(user_id, room_id).map_err(|_| Error::not_found("Event not found."))?;
        let pdu = self
            .pdu(event_id)?
            .filter(|pdu| pdu.room_id == room_id && !pdu.stored.rejected && !pdu.stored.soft_failed)
            .ok_or_else(|| Error::not_found("Event not found."))?;
        if let (Access::Until(limit), Some(pos)) = (access, pdu.stored.pos)
            && pos > limit
        {
            return Err(Error::not_found("Event not found."));
        }
        if !self.can_see(user_id, &pdu)? {
            return Err(Error::not_found("Event not found."));
        }
        Ok(pdu)
    }

    /// Threaded receipts: `event_id` must be the thread's root or an event in that thread.
    pub fn check_in_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        root: &EventId,
    ) -> Result<()> {
        if event_id == root {
            return Ok(());
        }
        let pdu = self.visible_event(user_id, room_id, event_id)?;
        let relation = pdu.content_value().get("m.relates_to").cloned().unwrap_or_default();
        let in_thread = relation.get("rel_type").and_then(Value::as_str) == Some("m.thread")
            && relation.get("event_id").and_then(Value::as_str) == Some(root.as_str());
        if in_thread {
            Ok(())
        } else {
            Err(Error::invalid_param(format!("{event_id} is not in the thread of {root}.")))
        }
    }

    /// The state a user may read: current state when joined, the state at their leave
    /// otherwise.
    pub fn readable_state(&self, user_id: &UserId, room_id: &RoomId) -> Result<Arc<StateMap>> {
        match self.access(user_id, room_id)? {
            Access::Joined => self.current_state(room_id)?.ok_or_else(|| Error::not_found("Unknown room.")),
            Access::Until(pos) => match self.core.db.timeline_at(room_id, pos)? {
                Some((_, _, group)) => self.state(group),
                None => Err(Error::forbidden("You are not in this room.")),
            },
            Access::Pending => {
                if self.world_readable(room_id)? {
                    self.current_state(room_id)?.ok_or_else(|| Error::not_found("Unknown room."))
                } else {
                    Err(Error::forbidden("You are not joined to this room."))
                }
            }
        }
    }

    /// The state events of a map, in a stable order.
    pub fn state_events(&self, state: &StateMap) -> Result<Vec<Arc<Pdu>>> {
        let ordered: BTreeSet<_> = state.iter().collect();
        let mut out = Vec::with_capacity(ordered.len());
        for (_, event_id) in ordered {
            if let Some(pdu) = self.pdu(event_id)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// `GET /rooms/{roomId}/members`.
    pub fn member_events(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        at: Option<&str>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Arc<Pdu>>> {
        let mut state = self.readable_state(user_id, room_id)?;
        if let Some(at) = at {
            let pos = parse_position(at)?;
            if let Some((_, _, group)) = self.core.db.timeline_at(room_id, pos)? {
                state = self.state(group)?;
            }
        }
        let mut members = Vec::new();
        for ((kind, _), event_id) in state.iter() {
            if *kind != StateEventType::RoomMember {
                continue;
            }
            let Some(pdu) = self.pdu(event_id)? else { continue };
            let current = pdu.membership().unwrap_or_default();
            if membership.is_some_and(|m| m != current) || not_membership.is_some_and(|m| m == current) {
                continue;
            }
            members.push(pdu);
        }
        members.sort_by(|a, b| a.state_key.cmp(&b.state_key));
        Ok(members)
    }

    /// `GET /rooms/{roomId}/joined_members`: user -> (display name, avatar url).
    pub fn joined_members(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<(OwnedUserId, Option<String>, Option<String>)>> {
        if self.access(user_id, room_id)? != Access::Joined {
            return Err(Error::forbidden("You are not joined to this room."));
        }
        let state = self.current_state(room_id)?.ok_or_else(|| Error::not_found("Unknown room."))?;
        let mut out = Vec::new();
        for (member, membership) in self.core.db.members(room_id)?.iter() {
            if membership != "join" {
                continue;
            }
            let pdu = self.state_pdu(&state, &StateEventType::RoomMember, member.as_str())?;
            let content: Map<String, Value> = pdu.map(|p| p.content_value()).unwrap_or_default();
            let text = |field: &str| content.get(field).and_then(Value::as_str).map(str::to_owned);
            out.push((member.clone(), text("displayname"), text("avatar_url")));
        }
        Ok(out)
    }
}
