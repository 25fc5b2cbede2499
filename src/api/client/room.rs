//! Rooms: create, membership, send, state, redaction, events, /messages, /context,
//! members, aliases and the public room directory.

use ruma::{
    api::{
        Direction as RumaDirection,
        client::{
            alias::{create_alias, delete_alias, get_alias},
            context::get_context,
            directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
            knock::knock_room,
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
                joined_members, joined_rooms, kick_user, leave_room, unban_user,
            },
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{Visibility, aliases, create_room, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::{StateEventType, TimelineEventType},
    serde::Raw,
};
use serde_json::{Map, Value};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::{
        directory::PublicRoom,
        ratelimit::Limit,
        rooms::{NewEvent, Pdu, raw, rules_for},
        sync::EventFilter,
    },
    storage::Direction,
};

fn event_json<T>(app: &App, pdu: &Pdu, viewer: &crate::service::users::Session) -> Result<Raw<T>> {
    let event = app.rooms.client_event(pdu, Some((&viewer.user_id, Some(&viewer.session_id))), true);
    Ok(Raw::from_json(raw(&event)?))
}

fn content_object(raw_content: &serde_json::value::RawValue) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw_content.get()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_json("Event content must be a JSON object.")),
        Err(_) => Err(Error::not_json("Event content is not JSON.")),
    }
}

/// Join body fields with a meaning; other fields are copied into the member event, as
/// Synapse does (clients use this for custom membership content).
const JOIN_FIELDS: &[&str] = &["reason", "third_party_signed", "membership", "join_authorised_via_users_server"];

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room(app: App, req: Ruma<create_room::v3::Request>) -> Result<create_room::v3::Response> {
    let session = req.user()?.clone();
    if session.rate_limited {
        app.ratelimit.check(Limit::Message, session.user_id.as_str())?;
    }
    let room_id = app.rooms.create_room(&session.user_id, req.body).await?;
    Ok(create_room::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(
    app: App,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let session = req.user()?;
    let extra = req.extra_fields(JOIN_FIELDS);
    let room_id = app.rooms.join(&session.user_id, &req.body.room_id, req.body.reason.as_deref(), extra, &[]).await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_room_by_id_or_alias(
    app: App,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let session = req.user()?;
    let (room_id, mut servers) = app.rooms.resolve_room_with_servers(&req.body.room_id_or_alias).await?;
    servers.splice(0..0, req.body.via.iter().cloned());
    let extra = req.extra_fields(JOIN_FIELDS);
    let room_id = app.rooms.join(&session.user_id, &room_id, req.body.reason.as_deref(), extra, &servers).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
pub async fn knock_room(app: App, req: Ruma<knock_room::v3::Request>) -> Result<knock_room::v3::Response> {
    let session = req.user()?;
    let (room_id, mut servers) = app.rooms.resolve_room_with_servers(&req.body.room_id_or_alias).await?;
    servers.splice(0..0, req.body.via.iter().cloned());
    let room_id = app.rooms.knock(&session.user_id, &room_id, req.body.reason.as_deref(), &servers).await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(app: App, req: Ruma<invite_user::v3::Request>) -> Result<invite_user::v3::Response> {
    let session = req.user()?;
    let invite_user::v3::InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported on this server."));
    };
    app.touch_local_user(&invitee.user_id).await?;
    app.rooms.invite(&session.user_id, &req.body.room_id, &invitee.user_id, invitee.reason.as_deref(), false).await?;
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(app: App, req: Ruma<leave_room::v3::Request>) -> Result<leave_room::v3::Response> {
    let session = req.user()?;
    app.rooms.leave(&session.user_id, &req.body.room_id, req.body.reason.as_deref()).await?;
    Ok(leave_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(app: App, req: Ruma<forget_room::v3::Request>) -> Result<forget_room::v3::Response> {
    app.rooms.forget(&req.user()?.user_id, &req.body.room_id)?;
    Ok(forget_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(app: App, req: Ruma<kick_user::v3::Request>) -> Result<kick_user::v3::Response> {
    let session = req.user()?;
    app.rooms.kick(&session.user_id, &req.body.room_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(app: App, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response> {
    let session = req.user()?;
    app.rooms.ban(&session.user_id, &req.body.room_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(app: App, req: Ruma<unban_user::v3::Request>) -> Result<unban_user::v3::Response> {
    let session = req.user()?;
    app.rooms.unban(&session.user_id, &req.body.room_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(unban_user::v3::Response::new())
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(app: App, req: Ruma<joined_rooms::v3::Request>) -> Result<joined_rooms::v3::Response> {
    let rooms = app
        .core
        .db
        .rooms_of_user(&req.user()?.user_id)?
        .iter()
        .filter(|(_, record)| record.membership == "join")
        .map(|(room_id, _)| room_id.clone())
        .collect();
    Ok(joined_rooms::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(app: App, req: Ruma<joined_members::v3::Request>) -> Result<joined_members::v3::Response> {
    let members = app.rooms.joined_members(&req.user()?.user_id, &req.body.room_id)?;
    let mut joined = std::collections::BTreeMap::new();
    for (user_id, display_name, avatar_url) in members {
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = display_name;
        member.avatar_url = avatar_url.map(Into::into);
        joined.insert(user_id, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn get_member_events(
    app: App,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let session = req.user()?;
    let known = |m: &ruma::events::room::member::MembershipState| -> Result<String> {
        match m.as_str() {
            value @ ("join" | "invite" | "knock" | "leave" | "ban") => Ok(value.to_owned()),
            other => Err(Error::invalid_param(format!("Unknown membership {other:?}"))),
        }
    };
    let membership = req.body.membership.as_ref().map(known).transpose()?;
    let not_membership = req.body.not_membership.as_ref().map(known).transpose()?;
    let events = app.rooms.member_events(
        &session.user_id,
        &req.body.room_id,
        req.body.at.as_deref(),
        membership.as_deref(),
        not_membership.as_deref(),
    )?;
    let chunk = events.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?;
    Ok(get_member_events::v3::Response::new(chunk))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send_message_event(
    app: App,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let session = req.user()?;
    if session.rate_limited {
        app.ratelimit.check(Limit::Message, session.user_id.as_str())?;
    }
    if req.empty_body {
        return Err(Error::not_json("An event needs a JSON object as its content."));
    }
    let kind = TimelineEventType::from(req.body.event_type.to_string());
    if matches!(kind, TimelineEventType::RoomRedaction) || is_state_only(&kind) {
        return Err(Error::bad_json(format!("{kind} events must be sent with their own endpoint.")));
    }
    let mut new = NewEvent::new(&req.body.room_id, &session.user_id, kind, None, content_object(req.body.body.json())?);
    new.txn = Some((session.session_id.clone(), req.body.txn_id.to_string()));
    new.ts = appservice_ts(session, req.body.timestamp);
    let event_id = app.rooms.send(new).await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

/// Timestamp massaging: an application service may set `origin_server_ts` (`?ts=`); anyone
/// else's `ts` is ignored, as Synapse does.
fn appservice_ts(
    session: &crate::service::users::Session,
    ts: Option<ruma::MilliSecondsSinceUnixEpoch>,
) -> Option<u64> {
    session.appservice.as_ref().and(ts).map(|ts| ts.get().into())
}

fn is_state_only(kind: &TimelineEventType) -> bool {
    matches!(kind, TimelineEventType::RoomCreate | TimelineEventType::RoomMember | TimelineEventType::RoomPowerLevels)
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event(
    app: App,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let session = req.user()?;
    if session.rate_limited {
        app.ratelimit.check(Limit::Message, session.user_id.as_str())?;
    }
    if req.empty_body {
        return Err(Error::not_json("A state event needs a JSON object as its content."));
    }
    let kind = req.body.event_type.clone();
    let content = content_object(req.body.body.json())?;
    if kind == StateEventType::RoomCreate {
        return Err(Error::bad_json("The create event cannot be replaced."));
    }
    if kind == StateEventType::RoomMember {
        let target = ruma::UserId::parse(req.body.state_key.as_str())
            .map_err(|_| Error::bad_json("The state key of m.room.member must be a user id."))?;
        let event_id = app.rooms.set_membership(&session.user_id, &req.body.room_id, &target, content).await?;
        return Ok(send_state_event::v3::Response::new(event_id));
    }
    if kind == StateEventType::RoomPowerLevels {
        app.rooms.check_power_levels_content(&req.body.room_id, &content)?;
    }
    if kind == StateEventType::RoomCanonicalAlias {
        check_canonical_alias(&app, &req.body.room_id, &content)?;
    }
    let mut new =
        NewEvent::state(&req.body.room_id, &session.user_id, kind, &req.body.state_key, Value::Object(content));
    new.ts = appservice_ts(session, req.body.timestamp);
    let event_id = app.rooms.send(new).await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

/// Canonical aliases must point at this room (spec: M_BAD_ALIAS otherwise).
fn check_canonical_alias(app: &App, room_id: &ruma::RoomId, content: &Map<String, Value>) -> Result<()> {
    let mut aliases: Vec<&str> = Vec::new();
    if let Some(alias) = content.get("alias").and_then(Value::as_str) {
        aliases.push(alias);
    }
    if let Some(Value::Array(list)) = content.get("alt_aliases") {
        aliases.extend(list.iter().filter_map(Value::as_str));
    }
    for alias in aliases {
        let alias =
            ruma::RoomAliasId::parse(alias).map_err(|_| Error::invalid_param(format!("Invalid alias {alias}")))?;
        if alias.server_name() == app.server_name() {
            match app.core.db.alias(&alias)? {
                Some((target, _)) if target == room_id => {}
                _ => return Err(Error::bad_alias(format!("{alias} does not point to this room."))),
            }
        }
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact_event(app: App, req: Ruma<redact_event::v3::Request>) -> Result<redact_event::v3::Response> {
    let session = req.user()?;
    if session.rate_limited {
        app.ratelimit.check(Limit::Message, session.user_id.as_str())?;
    }
    let version = app.rooms.room_version(&req.body.room_id)?.ok_or_else(|| Error::forbidden("Unknown room."))?;
    let _ = rules_for(&version)?;
    let mut content = Map::new();
    content.insert("redacts".into(), Value::String(req.body.event_id.to_string()));
    if let Some(reason) = &req.body.reason {
        content.insert("reason".into(), Value::String(reason.clone()));
    }
    let mut new = NewEvent::new(&req.body.room_id, &session.user_id, TimelineEventType::RoomRedaction, None, content);
    new.txn = Some((session.session_id.clone(), req.body.txn_id.to_string()));
    let event_id = app.rooms.send(new).await?;
    Ok(redact_event::v3::Response::new(event_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(app: App, req: Ruma<get_room_event::v3::Request>) -> Result<get_room_event::v3::Response> {
    let session = req.user()?;
    let pdu = app.rooms.visible_event(&session.user_id, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_event::v3::Response::new(event_json(&app, &pdu, session)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(
    app: App,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let session = req.user()?;
    let state = app.rooms.readable_state(&session.user_id, &req.body.room_id)?;
    let events = app.rooms.state_events(&state)?;
    let room_state = events.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?;
    Ok(get_state_events::v3::Response::new(room_state))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_state_event_for_key(
    app: App,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let session = req.user()?;
    let state = app.rooms.readable_state(&session.user_id, &req.body.room_id)?;
    let pdu = app
        .rooms
        .state_pdu(&state, &req.body.event_type, &req.body.state_key)?
        .ok_or_else(|| Error::not_found("No such state event."))?;
    let body = match req.body.format {
        ruma::api::client::state::get_state_event_for_key::v3::StateEventFormat::Event => {
            raw(&app.rooms.client_event(&pdu, Some((&session.user_id, Some(&session.session_id))), true))?
        }
        _ => pdu.content.clone(),
    };
    Ok(get_state_event_for_key::v3::Response::new(body))
}

fn direction(dir: RumaDirection) -> Direction {
    match dir {
        RumaDirection::Backward => Direction::Backward,
        RumaDirection::Forward => Direction::Forward,
    }
}

/// Member events for the senders of `events` (lazy-loading `state` of /messages and /context).
fn lazy_members<T>(
    app: &App,
    session: &crate::service::users::Session,
    state: &crate::service::rooms::StateMap,
    events: &[std::sync::Arc<Pdu>],
) -> Result<Vec<Raw<T>>> {
    let senders: std::collections::BTreeSet<&ruma::UserId> = events.iter().map(|p| &*p.sender).collect();
    let mut out = Vec::new();
    for sender in senders {
        if let Some(pdu) = app.rooms.state_pdu(state, &StateEventType::RoomMember, sender.as_str())? {
            out.push(event_json(app, &pdu, session)?);
        }
    }
    Ok(out)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn get_message_events(
    app: App,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let session = req.user()?;
    let filter = EventFilter::from_room_event_filter(&req.body.filter);
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(1000);
    let page = app
        .rooms
        .messages_with_backfill(
            &session.user_id,
            &req.body.room_id,
            req.body.from.as_deref(),
            req.body.to.as_deref(),
            direction(req.body.dir),
            limit,
            &filter,
        )
        .await?;
    let mut response = get_message_events::v3::Response::new();
    tracing::trace!(
        target: "ieum::wire",
        room_id = %req.body.room_id, from = ?req.body.from, dir = ?req.body.dir, limit,
        start = %page.start, end = ?page.end, events = page.events.len(),
        first = ?page.events.first().map(|p| &p.event_id), last = ?page.events.last().map(|p| &p.event_id),
        "messages"
    );
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.events.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?;
    if filter.lazy_load_members && !page.events.is_empty() {
        let state = app.rooms.readable_state(&session.user_id, &req.body.room_id)?;
        response.state = lazy_members(&app, session, &state, &page.events)?;
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub async fn get_context(app: App, req: Ruma<get_context::v3::Request>) -> Result<get_context::v3::Response> {
    let session = req.user()?;
    let filter = EventFilter::from_room_event_filter(&req.body.filter);
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(100).min(100);
    let (before, event, after, state) =
        app.rooms.context(&session.user_id, &req.body.room_id, &req.body.event_id, limit, &filter)?;
    let mut response = get_context::v3::Response::new();
    response.start = before.end.clone().or(Some(before.start.clone()));
    response.end = after.end.clone().or(Some(after.start.clone()));
    response.event = Some(event_json(&app, &event, session)?);
    response.events_before = before.events.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?;
    response.events_after = after.events.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?;
    response.state = if filter.lazy_load_members {
        let all: Vec<_> =
            before.events.iter().chain(std::iter::once(&event)).chain(after.events.iter()).cloned().collect();
        lazy_members(&app, session, &state, &all)?
    } else {
        app.rooms.state_events(&state)?.iter().map(|pdu| event_json(&app, pdu, session)).collect::<Result<_>>()?
    };
    Ok(response)
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(app: App, req: Ruma<create_alias::v3::Request>) -> Result<create_alias::v3::Response> {
    let session = req.user()?;
    let alias = req.body.room_alias.as_str();
    app.appservices.check_alias_not_exclusive(alias, session.appservice.as_deref())?;
    let own = app.appservices.alias_in_namespace(session.appservice.as_deref(), alias);
    app.directory.create_alias(&session.user_id, &req.body.room_alias, &req.body.room_id, own)?;
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(app: App, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != app.server_name() {
        let (room_id, servers) = app.rooms.resolve_room_with_servers(<&ruma::RoomOrAliasId>::from(&**alias)).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    let (room_id, servers) = app.resolve_local_alias(alias).await?;
    let servers = servers.iter().filter_map(|s| ruma::ServerName::parse(s).ok()).collect();
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn delete_alias(app: App, req: Ruma<delete_alias::v3::Request>) -> Result<delete_alias::v3::Response> {
    app.directory.delete_alias(&req.user()?.user_id, &req.body.room_alias).await?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn room_aliases(app: App, req: Ruma<aliases::v3::Request>) -> Result<aliases::v3::Response> {
    let aliases = app.directory.room_aliases(&req.user()?.user_id, &req.body.room_id)?;
    Ok(aliases::v3::Response::new(aliases))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    app: App,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let public = app.directory.is_public(&req.body.room_id)?;
    Ok(get_room_visibility::v3::Response::new(if public { Visibility::Public } else { Visibility::Private }))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_room_visibility(
    app: App,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let public = req.body.visibility == Visibility::Public;
    app.directory.set_visibility(&req.user()?.user_id, &req.body.room_id, public)?;
    Ok(set_room_visibility::v3::Response::new())
}

fn chunk(room: PublicRoom) -> PublicRoomsChunk {
    let mut chunk = PublicRoomsChunk::from(PublicRoomsChunkInit {
        num_joined_members: ruma::UInt::try_from(room.joined_members).unwrap_or_default(),
        room_id: room.room_id,
        world_readable: room.world_readable,
        guest_can_join: room.guest_can_join,
    });
    chunk.name = room.name;
    chunk.topic = room.topic;
    chunk.canonical_alias = room.canonical_alias;
    chunk.avatar_url = room.avatar_url.map(Into::into);
    chunk.join_rule = room.join_rule.as_deref().map(Into::into).unwrap_or_default();
    chunk.room_type = room.room_type.map(Into::into);
    chunk
}

/// Pages a directory listing: `since` is an offset token.
pub(crate) fn page(
    rooms: Vec<PublicRoom>,
    limit: Option<ruma::UInt>,
    since: Option<&str>,
) -> Result<(Vec<PublicRoomsChunk>, Option<String>, Option<String>, usize)> {
    let total = rooms.len();
    let offset: usize = match since {
        Some(token) => token
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token."))?,
        None => 0,
    };
    let limit = limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)).unwrap_or(usize::MAX).max(1);
    let chunk: Vec<_> = rooms.into_iter().skip(offset).take(limit).map(chunk).collect();
    let next = (offset + chunk.len() < total).then(|| format!("o{}", offset + chunk.len()));
    let prev = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    Ok((chunk, next, prev, total))
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(
    app: App,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    if req.body.server.as_deref().is_some_and(|s| s != app.server_name()) {
        return Err(Error::not_found("Federation is not enabled; only this server's directory is available."));
    }
    let rooms = app.directory.public_rooms(None)?;
    let (chunk, next, prev, total) = page(rooms, req.body.limit, req.body.since.as_deref())?;
    let mut response = get_public_rooms::v3::Response::new(Vec::new());
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = ruma::UInt::try_from(total as u64).ok();
    Ok(response)
}

/// `POST /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms_filtered(
    app: App,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    req.user()?;
    if req.body.server.as_deref().is_some_and(|s| s != app.server_name()) {
        return Err(Error::not_found("Federation is not enabled; only this server's directory is available."));
    }
    let rooms = app.directory.public_rooms(req.body.filter.generic_search_term.as_deref())?;
    let (chunk, next, prev, total) = page(rooms, req.body.limit, req.body.since.as_deref())?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = ruma::UInt::try_from(total as u64).ok();
    Ok(response)
}
