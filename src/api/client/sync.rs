//! Sync and ephemeral endpoints: /sync, typing, receipts, read markers.

use std::time::Duration;

use ruma::{
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        sync::sync_events,
        typing::create_typing_event::{self, v3::Typing},
    },
    events::receipt::ReceiptThread,
};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::{rooms::raw, sync::SyncParams},
};

/// `GET /_matrix/client/v3/sync`
pub async fn sync(app: App, req: Ruma<sync_events::v3::Request>) -> Result<sync_events::v3::Response> {
    let session = req.user()?.clone();
    let _syncing = app.syncing(&session.user_id, &req.body.set_presence).await?;
    let filter = app.sync.resolve_filter(&session.user_id, req.body.filter.as_ref())?;
    let params = SyncParams {
        since: req.body.since.clone(),
        filter,
        full_state: req.body.full_state,
        timeout: req.body.timeout,
        use_state_after: req.body.use_state_after,
    };
    app.sync.sync(&session, params).await
}

/// Fills in what ruma leaves out when empty but clients require: every joined and left
/// room has `state.events` (or `state_after.events`) and `timeline.limited`, as Synapse
/// sends them (matrix-nio rejects a sync without them). Works on the serialised body one
/// object level at a time, so events are copied as raw JSON, never parsed.
pub fn reshape(body: Vec<u8>) -> Vec<u8> {
    reshape_rooms(&body).unwrap_or(body)
}

type RawObject = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;

fn reshape_rooms(body: &[u8]) -> Option<Vec<u8>> {
    use serde_json::value::{RawValue, to_raw_value};
    fn object(raw: &RawValue) -> Option<RawObject> {
        serde_json::from_str(raw.get()).ok()
    }
    fn literal(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("a JSON literal")
    }
    let mut top: RawObject = serde_json::from_slice(body).ok()?;
    let mut rooms = object(top.get("rooms")?)?;
    let mut touched = false;
    for section in ["join", "leave"] {
        let Some(raw) = rooms.get(section) else { continue };
        let mut by_room: std::collections::BTreeMap<String, RawObject> = serde_json::from_str(raw.get()).ok()?;
        for room in by_room.values_mut() {
            if !room.contains_key("state") && !room.contains_key("state_after") {
                room.insert("state".into(), literal(r#"{"events":[]}"#));
            }
            let mut timeline = match room.get("timeline") {
                Some(raw) => object(raw)?,
                None => RawObject::new(),
            };
            timeline.entry("limited".into()).or_insert_with(|| literal("false"));
            timeline.entry("events".into()).or_insert_with(|| literal("[]"));
            room.insert("timeline".into(), to_raw_value(&timeline).ok()?);
        }
        rooms.insert(section.into(), to_raw_value(&by_room).ok()?);
        touched = true;
    }
    if !touched {
        return None;
    }
    top.insert("rooms".into(), to_raw_value(&rooms).ok()?);
    serde_json::to_vec(&top).ok()
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
    use serde_json::{Value, json};

    use super::reshape;

    #[test]
    fn reshape_fills_state_and_limited_and_keeps_everything_else() {
        let body = json!({
            "next_batch": "s5_0",
            "rooms": {
                "join": {
                    "!a:x": { "timeline": { "events": [{ "type": "m.room.message", "content": { "body": "\u{e9} \"q\"" } }] } },
                    "!b:x": { "state_after": { "events": [] }, "timeline": { "limited": true, "events": [] } },
                    "!c:x": {}
                },
                "leave": { "!d:x": { "timeline": { "events": [] } } },
                "invite": { "!e:x": { "invite_state": { "events": [] } } }
            },
            "to_device": { "events": [] }
        });
        let out: Value = serde_json::from_slice(&reshape(serde_json::to_vec(&body).unwrap())).unwrap();
        let join = &out["rooms"]["join"];
        assert_eq!(join["!a:x"]["state"], json!({ "events": [] }));
        assert_eq!(join["!a:x"]["timeline"]["limited"], json!(false));
        assert_eq!(join["!a:x"]["timeline"]["events"][0]["content"]["body"], json!("\u{e9} \"q\""));
        assert!(join["!b:x"].get("state").is_none(), "state_after is kept alone");
        assert_eq!(join["!b:x"]["timeline"]["limited"], json!(true));
        assert_eq!(join["!c:x"]["timeline"], json!({ "events": [], "limited": false }));
        assert_eq!(out["rooms"]["leave"]["!d:x"]["state"], json!({ "events": [] }));
        assert_eq!(out["rooms"]["invite"], body["rooms"]["invite"]);
        assert_eq!(out["next_batch"], json!("s5_0"));
        assert_eq!(out["to_device"], body["to_device"]);
    }

    #[test]
    fn reshape_leaves_other_bodies_alone() {
        for body in [&b"not json"[..], br#"{"next_batch":"s1_0"}"#, br#"{"rooms":5}"#] {
            assert_eq!(reshape(body.to_vec()), body);
        }
    }
}
