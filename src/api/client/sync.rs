//! Sync and ephemeral endpoints: /sync, typing, receipts, read markers.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    api::{
        OutgoingResponse,
        client::{
            read_marker::set_read_marker,
            receipt::create_receipt::{self, v3::ReceiptType},
            sync::sync_events,
            typing::create_typing_event::{self, v3::Typing},
        },
        error::IntoHttpError,
    },
    events::receipt::ReceiptThread,
    exports::http,
};
use serde::{
    Serialize, Serializer,
    ser::{self, SerializeMap},
};

use crate::{
    api::ruma::{JsonBody, Ruma},
    app::App,
    error::{Error, Result},
    service::{rooms::raw, sync::SyncParams},
};

/// `GET /_matrix/client/v3/sync`
pub async fn sync(app: App, req: Ruma<sync_events::v3::Request>) -> Result<SyncResponse> {
    let session = req.user()?;
    let _syncing = app.syncing(&session.user_id, &req.body.set_presence).await?;
    let filter = app.sync.resolve_filter(&session.user_id, req.body.filter.as_ref())?;
    let params = SyncParams {
        since: req.body.since.clone(),
        filter,
        full_state: req.body.full_state,
        timeout: req.body.timeout,
        use_state_after: req.body.use_state_after,
    };
    Ok(SyncResponse(app.sync.sync(session, params).await?))
}

/// `GET /sync`'s request. The query every long-poll sends (a filter id, `since`, `timeout`,
/// `set_presence`, `full_state`, `use_state_after`; each once, no percent-escapes) is read
/// here; anything else goes to ruma's parser. ruma reads a `filter` by trying it as JSON
/// first, so for a filter id it formats an error on every request: about 2% of a woken
/// /sync's CPU in the 1,000-client fan-out, and the whole generic query parse about 4.5%.
/// The unit tests check that both parsers read every query alike.
pub fn parse_sync_request(parts: http::request::Parts, body: &[u8], args: &[&str]) -> Result<sync_events::v3::Request> {
    match plain_sync_query(parts.uri.query().unwrap_or("")) {
        Some(request) => Ok(request),
        None => crate::api::ruma::parse::<sync_events::v3::Request>(parts, body, args),
    }
}

/// The request of a plain /sync query, or `None` for ruma to read (or reject) it.
fn plain_sync_query(query: &str) -> Option<sync_events::v3::Request> {
    use ruma::presence::PresenceState;
    let mut request = sync_events::v3::Request::new();
    let mut seen = [false; 6];
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        if value.is_empty() || pair.bytes().any(|b| b == b'%' || b == b'+') {
            return None;
        }
        let bool_value = || match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let field = match key {
            "filter" => {
                // A filter id: neither a JSON object nor a JSON array (ruma reads either as a
                // definition), so ruma reads it as an id too.
                if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
                    return None;
                }
                request.filter = Some(sync_events::v3::Filter::FilterId(value.to_owned()));
                0
            }
            "since" => {
                request.since = Some(value.to_owned());
                1
            }
            "timeout" => {
                // At most 15 digits: below 2^53, the largest JSON-safe integer ruma accepts.
                if value.len() > 15 || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                request.timeout = Some(Duration::from_millis(value.parse().ok()?));
                2
            }
            "set_presence" => {
                request.set_presence = match value {
                    "online" => PresenceState::Online,
                    "offline" => PresenceState::Offline,
                    "unavailable" => PresenceState::Unavailable,
                    _ => return None,
                };
                3
            }
            "full_state" => {
                request.full_state = bool_value()?;
                4
            }
            "use_state_after" => {
                request.use_state_after = bool_value()?;
                5
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[field], true) {
            return None;
        }
    }
    Some(request)
}

/// The /sync response as sent: ruma's, serialised with what ruma leaves out when empty but
/// clients require. Every joined and left room has `state.events` (or `state_after.events`)
/// and `timeline.limited` and `timeline.events`, as Synapse sends them (matrix-nio rejects a
/// sync without them). Written in one pass: no second parse of the serialised body.
pub struct SyncResponse(pub sync_events::v3::Response);

impl OutgoingResponse for SyncResponse {
    type Body = JsonBody;

    fn try_into_http_response_inner(self) -> std::result::Result<http::Response<JsonBody>, IntoHttpError> {
        // Sized for the events it carries: growing from serde_json's 128 bytes copied a woken
        // long-poll's answer several times.
        let mut body = Vec::with_capacity(estimated_len(&self.0));
        serde_json::to_writer(&mut body, &SyncBody(&self.0))?;
        Ok(http::Response::builder().status(http::StatusCode::OK).body(JsonBody::new(body))?)
    }
}

/// About the serialised length of a /sync response: its joined rooms' timeline and state
/// events, and room for the fields around them.
fn estimated_len(response: &sync_events::v3::Response) -> usize {
    fn events<T>(events: &[ruma::serde::Raw<T>]) -> usize {
        events.iter().map(|event| event.json().get().len() + 1).sum()
    }
    let rooms: usize = response
        .rooms
        .join
        .iter()
        .map(|(room_id, room)| {
            let state = match &room.state {
                sync_events::v3::State::Before(state) => events(&state.events),
                sync_events::v3::State::After(state) => events(&state.events),
                _ => 0,
            };
            room_id.as_str().len() + 256 + events(&room.timeline.events) + state
        })
        .sum();
    512 + rooms
}

/// Serialises like ruma's `Response`, but for the room fields described at `SyncResponse`.
struct SyncBody<'a>(&'a sync_events::v3::Response);

impl Serialize for SyncBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("next_batch", &r.next_batch)?;
        if !r.rooms.is_empty() {
            map.serialize_entry("rooms", &RoomsBody(&r.rooms))?;
        }
        if !r.presence.is_empty() {
            map.serialize_entry("presence", &r.presence)?;
        }
        if !r.account_data.is_empty() {
            map.serialize_entry("account_data", &r.account_data)?;
        }
        if !r.to_device.is_empty() {
            map.serialize_entry("to_device", &r.to_device)?;
        }
        if !r.device_lists.is_empty() {
            map.serialize_entry("device_lists", &r.device_lists)?;
        }
        if !r.device_one_time_keys_count.is_empty() {
            map.serialize_entry("device_one_time_keys_count", &r.device_one_time_keys_count)?;
        }
        if let Some(types) = &r.device_unused_fallback_key_types {
            map.serialize_entry("device_unused_fallback_key_types", types)?;
        }
        map.end()
    }
}

struct RoomsBody<'a>(&'a sync_events::v3::Rooms);

impl Serialize for RoomsBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let rooms = self.0;
        let mut map = serializer.serialize_map(None)?;
        if !rooms.leave.is_empty() {
            map.serialize_entry("leave", &RoomMap(&rooms.leave, LeftRoomBody))?;
        }
        if !rooms.join.is_empty() {
            map.serialize_entry("join", &RoomMap(&rooms.join, JoinedRoomBody))?;
        }
        if !rooms.invite.is_empty() {
            map.serialize_entry("invite", &rooms.invite)?;
        }
        if !rooms.knock.is_empty() {
            map.serialize_entry("knock", &rooms.knock)?;
        }
        map.end()
    }
}

/// A map of rooms, each written through `body` (written as the map is walked: no second map).
struct RoomMap<'a, R, B>(&'a BTreeMap<ruma::OwnedRoomId, R>, fn(&'a R) -> B);

impl<'a, R, B: Serialize> Serialize for RoomMap<'a, R, B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(room_id, room)| (room_id, (self.1)(room))))
    }
}

struct JoinedRoomBody<'a>(&'a sync_events::v3::JoinedRoom);

impl Serialize for JoinedRoomBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let room = self.0;
        let mut map = serializer.serialize_map(None)?;
        if !room.summary.is_empty() {
            map.serialize_entry("summary", &room.summary)?;
        }
        if !room.unread_notifications.is_empty() {
            map.serialize_entry("unread_notifications", &room.unread_notifications)?;
        }
        if !room.unread_thread_notifications.is_empty() {
            map.serialize_entry("unread_thread_notifications", &room.unread_thread_notifications)?;
        }
        map.serialize_entry("timeline", &TimelineBody(&room.timeline))?;
        serialize_state(&mut map, &room.state)?;
        if !room.account_data.is_empty() {
            map.serialize_entry("account_data", &room.account_data)?;
        }
        if !room.ephemeral.is_empty() {
            map.serialize_entry("ephemeral", &room.ephemeral)?;
        }
        map.end()
    }
}

struct LeftRoomBody<'a>(&'a sync_events::v3::LeftRoom);

impl Serialize for LeftRoomBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let room = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("timeline", &TimelineBody(&room.timeline))?;
        serialize_state(&mut map, &room.state)?;
        if !room.account_data.is_empty() {
            map.serialize_entry("account_data", &room.account_data)?;
        }
        map.end()
    }
}

/// `state` (or `state_after`) with its `events`, empty or not.
fn serialize_state<M: SerializeMap>(map: &mut M, state: &sync_events::v3::State) -> std::result::Result<(), M::Error> {
    use sync_events::v3::State;
    let (key, events) = match state {
        State::Before(state) => ("state", &state.events),
        State::After(state) => ("state_after", &state.events),
        // A variant a later ruma adds: written as ruma writes it (a one-entry map).
        other => {
            if let serde_json::Value::Object(entries) = serde_json::to_value(other).map_err(ser::Error::custom)? {
                for (key, value) in entries {
                    map.serialize_entry(&key, &value)?;
                }
            }
            return Ok(());
        }
    };
    map.serialize_entry(key, &EventsBody(events))
}

struct EventsBody<'a, T>(&'a [T]);

impl<T: Serialize> Serialize for EventsBody<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("events", self.0)?;
        map.end()
    }
}

struct TimelineBody<'a>(&'a sync_events::v3::Timeline);

impl Serialize for TimelineBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let timeline = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("limited", &timeline.limited)?;
        if let Some(prev_batch) = &timeline.prev_batch {
            map.serialize_entry("prev_batch", prev_batch)?;
        }
        map.serialize_entry("events", &timeline.events)?;
        map.end()
    }
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn typing(
    app: App,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let session = req.user()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You may only set your own typing state."));
    }
    if !app.rooms.is_joined(&req.body.room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not joined to this room."));
    }
    match req.body.state {
        Typing::Yes(ref data) => {
            app.ephemeral.set_typing(&req.body.room_id, &session.user_id, true, Some(data.timeout))
        }
        _ => app.ephemeral.set_typing(&req.body.room_id, &session.user_id, false, None::<Duration>),
    }
    app.share_typing(&req.body.room_id, &session.user_id, matches!(req.body.state, Typing::Yes(_))).await?;
    Ok(create_typing_event::v3::Response::new())
}

fn thread_id(thread: &ReceiptThread) -> Result<Option<String>> {
    match thread {
        ReceiptThread::Unthreaded => Ok(None),
        ReceiptThread::Main => Ok(Some("main".into())),
        ReceiptThread::Thread(event_id) => Ok(Some(event_id.to_string())),
        _ => Err(Error::invalid_param("thread_id must be \"main\" or the event id of a thread root.")),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn receipt(app: App, req: Ruma<create_receipt::v3::Request>) -> Result<create_receipt::v3::Response> {
    let session = req.user()?;
    if !app.rooms.is_joined(&req.body.room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not joined to this room."));
    }
    let room_id = &req.body.room_id;
    match &req.body.receipt_type {
        ReceiptType::FullyRead => {
            if !matches!(req.body.thread, ReceiptThread::Unthreaded) {
                return Err(Error::invalid_param("m.fully_read cannot be threaded."));
            }
            app.rooms.visible_event(&session.user_id, room_id, &req.body.event_id)?;
            let content = raw(&serde_json::json!({ "event_id": req.body.event_id }))?;
            app.account_data.put_unchecked(&session.user_id, Some(room_id), "m.fully_read", &content).await?;
        }
        kind @ (ReceiptType::Read | ReceiptType::ReadPrivate) => {
            let thread = thread_id(&req.body.thread)?;
            if let ReceiptThread::Thread(root) = &req.body.thread {
                app.rooms.check_in_thread(&session.user_id, room_id, &req.body.event_id, root)?;
            }
            app.ephemeral
                .set_receipt(room_id, &session.user_id, kind.as_str(), &req.body.event_id, thread.clone())
                .await?;
            if kind.as_str() == "m.read" {
                app.share_receipt(room_id, &session.user_id, &req.body.event_id, thread.as_deref()).await?;
            }
        }
        other => return Err(Error::invalid_param(format!("Unknown receipt type {}", other.as_str()))),
    }
    Ok(create_receipt::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn read_markers(app: App, req: Ruma<set_read_marker::v3::Request>) -> Result<set_read_marker::v3::Response> {
    let session = req.user()?;
    let room_id = &req.body.room_id;
    if !app.rooms.is_joined(room_id, &session.user_id)? {
        return Err(Error::forbidden("You are not joined to this room."));
    }
    if let Some(event_id) = &req.body.fully_read {
        app.rooms.visible_event(&session.user_id, room_id, event_id)?;
        let content = raw(&serde_json::json!({ "event_id": event_id }))?;
        app.account_data.put_unchecked(&session.user_id, Some(room_id), "m.fully_read", &content).await?;
    }
    if let Some(event_id) = &req.body.read_receipt {
        app.ephemeral.set_receipt(room_id, &session.user_id, "m.read", event_id, None).await?;
        app.share_receipt(room_id, &session.user_id, event_id, None).await?;
    }
    if let Some(event_id) = &req.body.private_read_receipt {
        app.ephemeral.set_receipt(room_id, &session.user_id, "m.read.private", event_id, None).await?;
    }
    Ok(set_read_marker::v3::Response::new())
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(
    app: App,
    req: Ruma<ruma::api::client::presence::set_presence::v3::Request>,
) -> Result<ruma::api::client::presence::set_presence::v3::Response> {
    let session = req.user()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You may only set your own presence."));
    }
    app.set_presence(&session.user_id, req.body.presence.as_str(), req.body.status_msg.clone()).await?;
    Ok(ruma::api::client::presence::set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub async fn get_presence(
    app: App,
    req: Ruma<ruma::api::client::presence::get_presence::v3::Request>,
) -> Result<ruma::api::client::presence::get_presence::v3::Response> {
    let session = req.user()?;
    let presence = app.ephemeral.visible_presence(&session.user_id, &req.body.user_id)?;
    let state = ruma::presence::PresenceState::from(presence.presence.as_str());
    let mut response = ruma::api::client::presence::get_presence::v3::Response::new(state);
    response.status_msg = presence.status_msg.clone();
    response.currently_active = Some(presence.currently_active);
    response.last_active_ago = Some(Duration::from_millis(ieum_now().saturating_sub(presence.last_active_ts)));
    Ok(response)
}

fn ieum_now() -> u64 {
    ruma::MilliSecondsSinceUnixEpoch::now().get().into()
}

#[cfg(test)]
mod tests {
    use ruma::{
        OneTimeKeyAlgorithm, api::OutgoingResponseExt, api::client::sync::sync_events::v3, owned_room_id,
        owned_user_id, serde::Raw, uint,
    };
    use serde_json::{Value, json, value::to_raw_value};

    use super::SyncResponse;

    fn raw<T>(value: Value) -> Raw<T> {
        Raw::from_json(to_raw_value(&value).unwrap())
    }

    /// A response with every field ruma writes set, and rooms both with and without what
    /// `SyncResponse` adds.
    fn full_response() -> v3::Response {
        let mut response = v3::Response::new("s5_0".into());
        let mut a = v3::JoinedRoom::new();
        a.timeline.events.push(raw(json!({ "type": "m.room.message", "content": { "body": "\u{e9} \"q\"" } })));
        a.timeline.prev_batch = Some("p1".into());
        a.summary.joined_member_count = Some(uint!(3));
        a.unread_notifications.notification_count = Some(uint!(2));
        a.unread_thread_notifications.insert(ruma::owned_event_id!("$t:x"), {
            let mut counts = ruma::api::client::sync::sync_events::UnreadNotificationsCount::new();
            counts.highlight_count = Some(uint!(1));
            counts
        });
        a.account_data.events.push(raw(json!({ "type": "m.tag", "content": { "tags": {} } })));
        a.ephemeral.events.push(raw(json!({ "type": "m.typing", "content": { "user_ids": [] } })));
        let mut b = v3::JoinedRoom::new();
        b.state = v3::State::After(v3::StateEvents::new());
        b.timeline.limited = true;
        let mut c = v3::JoinedRoom::new();
        c.state = v3::State::Before(v3::StateEvents::with_events(vec![raw(
            json!({ "type": "m.room.name", "state_key": "", "content": { "name": "n" } }),
        )]));
        response.rooms.join.insert(owned_room_id!("!a:x"), a);
        response.rooms.join.insert(owned_room_id!("!b:x"), b);
        response.rooms.join.insert(owned_room_id!("!c:x"), c);
        response.rooms.join.insert(owned_room_id!("!e:x"), v3::JoinedRoom::new());
        response.rooms.leave.insert(owned_room_id!("!d:x"), v3::LeftRoom::new());
        let mut invited = v3::InvitedRoom::new();
        invited
            .invite_state
            .events
            .push(raw(json!({ "type": "m.room.name", "state_key": "", "sender": "@u:x", "content": {} })));
        response.rooms.invite.insert(owned_room_id!("!i:x"), invited);
        response.rooms.knock.insert(owned_room_id!("!k:x"), v3::KnockedRoom::new());
        response.presence.events.push(raw(json!({ "type": "m.presence", "sender": "@u:x", "content": {} })));
        response.account_data.events.push(raw(json!({ "type": "m.direct", "content": {} })));
        response.to_device.events.push(raw(json!({ "type": "m.dummy", "sender": "@u:x", "content": {} })));
        response.device_lists.changed.push(owned_user_id!("@u:x"));
        response.device_one_time_keys_count.insert(OneTimeKeyAlgorithm::SignedCurve25519, uint!(5));
        response.device_unused_fallback_key_types = Some(vec![OneTimeKeyAlgorithm::SignedCurve25519]);
        response
    }

    fn body(response: impl ruma::api::OutgoingResponse) -> Value {
        let response = response.try_into_http_response::<Vec<u8>>().unwrap();
        assert_eq!(response.headers()["content-type"], "application/json");
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn sync_body_is_rumas_plus_state_and_timeline_of_every_room() {
        let ours = body(SyncResponse(full_response()));
        // ruma's own serialisation, completed by hand: whatever ruma writes, ours writes too.
        let mut expected = body(full_response());
        for section in ["join", "leave"] {
            for room in expected["rooms"][section].as_object_mut().unwrap().values_mut() {
                let room = room.as_object_mut().unwrap();
                match room.get_mut("state_after") {
                    Some(after) => {
                        after.as_object_mut().unwrap().entry("events").or_insert(json!([]));
                    }
                    None => {
                        room.entry("state").or_insert(json!({ "events": [] }));
                    }
                }
                let timeline = room.entry("timeline").or_insert(json!({})).as_object_mut().unwrap();
                timeline.entry("limited").or_insert(json!(false));
                timeline.entry("events").or_insert(json!([]));
            }
        }
        assert_eq!(ours, expected);

        let join = &ours["rooms"]["join"];
        assert_eq!(join["!a:x"]["state"], json!({ "events": [] }));
        assert_eq!(join["!a:x"]["timeline"]["limited"], json!(false));
        assert_eq!(join["!a:x"]["timeline"]["events"][0]["content"]["body"], json!("\u{e9} \"q\""));
        assert_eq!(join["!b:x"]["state_after"], json!({ "events": [] }));
        assert!(join["!b:x"].get("state").is_none(), "state_after replaces state");
        assert_eq!(join["!b:x"]["timeline"]["limited"], json!(true));
        assert_eq!(join["!c:x"]["state"]["events"][0]["content"]["name"], json!("n"));
        assert_eq!(join["!e:x"], json!({ "timeline": { "events": [], "limited": false }, "state": { "events": [] } }));
        assert_eq!(ours["rooms"]["leave"]["!d:x"]["state"], json!({ "events": [] }));
        assert_eq!(ours["device_one_time_keys_count"]["signed_curve25519"], json!(5));
    }

    #[test]
    fn sync_body_without_rooms_is_rumas() {
        let mut response = v3::Response::new("s1_0".into());
        response.device_unused_fallback_key_types = Some(Vec::new());
        assert_eq!(body(SyncResponse(response.clone())), body(response));
        assert_eq!(body(SyncResponse(v3::Response::new("s1_0".into()))), json!({ "next_batch": "s1_0" }));
    }

    /// ruma's reading of a /sync query (the generic parser the fast path stands in front of).
    fn ruma_reads(query: &str) -> Result<v3::Request, String> {
        use ruma::api::IncomingRequestExt;
        let request =
            ruma::exports::http::Request::get(format!("/_matrix/client/v3/sync?{query}")).body(&b""[..]).unwrap();
        v3::Request::try_from_http_request(request, &[] as &[&str]).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_sync_queries_are_read_as_ruma_reads_them() {
        let queries = [
            "",
            "filter=0",
            "filter=12&since=s72_4_0&timeout=30000",
            "since=s1_2_3&timeout=0&set_presence=offline&full_state=true&use_state_after=false",
            "set_presence=unavailable&full_state=false&use_state_after=true",
            "set_presence=online",
            "timeout=999999999999999",
            "timeout=007",
            "filter=abc_DEF-1.2",
            // Filter ids that are JSON scalars: not a definition, so an id for ruma too.
            "filter=true",
            "filter=null",
            "filter=-1",
            "filter=1e5",
            "filter=1.",
            "filter=NaN",
            "filter=0&&since=x",
            "&timeout=5&",
        ];
        for query in queries {
            let ours = super::plain_sync_query(query).unwrap_or_else(|| panic!("not a plain query: {query}"));
            let theirs = ruma_reads(query).unwrap_or_else(|e| panic!("ruma rejects {query}: {e}"));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{query}");
        }
    }

    #[test]
    fn other_sync_queries_are_left_to_ruma() {
        let queries = [
            // A filter definition, escaped or not, and escapes anywhere.
            "filter=%7B%22room%22%3A%7B%7D%7D",
            "filter={}",
            "filter=[]",
            "since=s1%5F2",
            "since=a+b",
            // Empty values, keys without a value, repeated keys.
            "filter=",
            "since=",
            "timeout",
            "timeout=1&timeout=2",
            "filter=0&filter=1",
            // Values ruma reads its own way or rejects.
            "timeout=9999999999999999",
            "timeout=-1",
            "timeout=1.5",
            "full_state=1",
            "full_state=TRUE",
            "use_state_after=yes",
            "set_presence=away",
            "set_presence=org.example.busy",
            // Keys ruma ignores or does not know.
            "_cacheBuster=123",
            "org.matrix.msc3575.pos=1",
        ];
        for query in queries {
            assert!(super::plain_sync_query(query).is_none(), "{query}");
            // The endpoint's parser gives ruma's answer: the same request, or an error (a 400).
            let (parts, ()) = ruma::exports::http::Request::get(format!("/_matrix/client/v3/sync?{query}"))
                .body(())
                .unwrap()
                .into_parts();
            let ours = super::parse_sync_request(parts, b"", &[]).map(|request| format!("{request:?}"));
            let theirs = ruma_reads(query).map(|request| format!("{request:?}"));
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{query}"),
                (Err(error), Err(_)) => assert_eq!(error.status().as_u16(), 400, "{query}"),
                _ => panic!("{query}: ours {ours:?}, ruma's {theirs:?}"),
            }
        }
    }
}
