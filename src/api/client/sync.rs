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
/// sends them (matrix-nio rejects a sync without them).
pub fn reshape(body: Vec<u8>) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
    for section in ["join", "leave"] {
        let Some(rooms) = value.pointer_mut(&format!("/rooms/{section}")).and_then(|r| r.as_object_mut()) else {
            continue;
        };
        for room in rooms.values_mut() {
            let Some(room) = room.as_object_mut() else { continue };
            if !room.contains_key("state") && !room.contains_key("state_after") {
                room.insert("state".into(), serde_json::json!({ "events": [] }));
            }
            let timeline = room.entry("timeline").or_insert_with(|| serde_json::json!({ "events": [] }));
            if let Some(timeline) = timeline.as_object_mut() {
                timeline.entry("limited").or_insert(serde_json::Value::Bool(false));
                timeline.entry("events").or_insert_with(|| serde_json::json!([]));
            }
        }
    }
    serde_json::to_vec(&value).unwrap_or(body)
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
