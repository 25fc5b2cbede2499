//! `/sync` v3 as the spec describes it: initial and incremental syncs, long-polling wake-ups,
//! full_state, timeline limits and gaps, filters (inline and stored), state deltas, lazy-loaded
//! members, invites, left rooms, summaries, unread counts, transaction ids, `state_after`.
//!
//! Sync responses are read as raw JSON so the tests see exactly what the server put on the
//! wire (omitted vs. empty fields, `unsigned`, `state` vs. `state_after`). The helpers here are
//! shared with `ephemeral.rs` and `account_data.rs`.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedTransactionId, RoomId,
    api::client::{
        membership::{
            invite_user::{self, v3::InviteUserId},
            join_room_by_id, kick_user, leave_room,
        },
        message::send_message_event,
        receipt::create_receipt::{self, v3::ReceiptType},
        room::create_room,
        state::send_state_event,
        typing::create_typing_event::{
            self,
            v3::{Typing, TypingInfo},
        },
    },
    events::room::{message::RoomMessageEventContent, name::RoomNameEventContent, topic::RoomTopicEventContent},
};
use serde_json::{Value, json};

use crate::harness::{Client, TestServer};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Percent-encodes a query or path component.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /sync` with the given query parameters; returns status and body.
pub(crate) async fn try_sync(client: &Client, params: &[(&str, &str)]) -> (u16, Value) {
    let query = params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&");
    client.raw("GET", &format!("/_matrix/client/v3/sync?{query}"), None).await
}

/// `GET /sync` that must succeed.
pub(crate) async fn sync(client: &Client, params: &[(&str, &str)]) -> Value {
    let (status, body) = try_sync(client, params).await;
    assert_eq!(status, 200, "GET /sync {params:?} failed: {body}");
    assert!(body["next_batch"].is_string(), "sync response without next_batch: {body}");
    body
}

pub(crate) fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

/// The room's entry in `rooms.{section}` (join, invite, leave, knock).
pub(crate) fn room<'a>(body: &'a Value, section: &str, room_id: &RoomId) -> Option<&'a Value> {
    body["rooms"][section].get(room_id.as_str())
}

pub(crate) fn joined<'a>(body: &'a Value, room_id: &RoomId) -> &'a Value {
    room(body, "join", room_id).unwrap_or_else(|| panic!("{room_id} not in rooms.join: {body}"))
}

/// The `events` array of a section (`timeline`, `state`, `ephemeral`, ...); empty if absent.
pub(crate) fn events(section: &Value) -> Vec<Value> {
    section["events"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn event_ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event_id"].as_str().expect("event_id").to_owned()).collect()
}

/// Bodies of the `m.room.message` events, in order.
pub(crate) fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The first event of `kind` with `state_key` in a list of events.
pub(crate) fn find_state<'a>(events: &'a [Value], kind: &str, state_key: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["type"] == kind && e["state_key"] == state_key)
}

/// Ephemeral events of a type in a joined room.
pub(crate) fn ephemeral_of(room: &Value, kind: &str) -> Vec<Value> {
    events(&room["ephemeral"]).into_iter().filter(|e| e["type"] == kind).collect()
}

pub(crate) async fn create_public_room(client: &Client) -> OwnedRoomId {
    let mut create = create_room::v3::Request::new();
    create.preset = Some(create_room::v3::RoomPreset::PublicChat);
    client.send(create).await.room_id
}

pub(crate) async fn create_named_room(client: &Client, name: &str, public: bool) -> OwnedRoomId {
    let mut create = create_room::v3::Request::new();
    create.preset =
        Some(if public { create_room::v3::RoomPreset::PublicChat } else { create_room::v3::RoomPreset::PrivateChat });
    create.name = Some(name.to_owned());
    client.send(create).await.room_id
}

pub(crate) async fn join(client: &Client, room_id: &RoomId) {
    client.send(join_room_by_id::v3::Request::new(room_id.to_owned())).await;
}

pub(crate) async fn invite(client: &Client, room_id: &RoomId, invitee: &Client) {
    let recipient = InviteUserId::new(invitee.user_id().to_owned()).into();
    client.send(invite_user::v3::Request::new(room_id.to_owned(), recipient)).await;
}

pub(crate) async fn leave(client: &Client, room_id: &RoomId) {
    client.send(leave_room::v3::Request::new(room_id.to_owned())).await;
}

pub(crate) async fn send_text(client: &Client, room_id: &RoomId, body: &str) -> OwnedEventId {
    send_text_txn(client, room_id, body, OwnedTransactionId::from(format!("txn-{}", rand_suffix()))).await
}

pub(crate) async fn send_text_txn(
    client: &Client,
    room_id: &RoomId,
    body: &str,
    txn: OwnedTransactionId,
) -> OwnedEventId {
    let content = RoomMessageEventContent::text_plain(body);
    let request = send_message_event::v3::Request::new(room_id.to_owned(), txn, &content).expect("request");
    client.send(request).await.event_id
}

fn rand_suffix() -> String {
    ruma::TransactionId::new().to_string()
}

pub(crate) async fn set_name(client: &Client, room_id: &RoomId, name: &str) -> OwnedEventId {
    let request = send_state_event::v3::Request::new(
        room_id.to_owned(),
        &ruma::events::EmptyStateKey,
        &RoomNameEventContent::new(name.to_owned()),
    )
    .expect("request");
    client.send(request).await.event_id
}

pub(crate) async fn set_topic(client: &Client, room_id: &RoomId, topic: &str) -> OwnedEventId {
    let request = send_state_event::v3::Request::new(
        room_id.to_owned(),
        &ruma::events::EmptyStateKey,
        &RoomTopicEventContent::new(topic.to_owned()),
    )
    .expect("request");
    client.send(request).await.event_id
}

/// Starts a long-poll (`timeout=10000`) from `since`, runs `trigger` 500 ms later, and returns
/// the sync body and how long after the trigger started the sync returned.
pub(crate) async fn long_poll_woken_by<F>(client: &Client, since: &str, trigger: F) -> (Value, Duration)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        trigger.await;
        started
    });
    let body = sync(client, &[("since", since), ("timeout", "10000")]).await;
    let returned = Instant::now();
    let triggered = handle.await.expect("trigger task");
    (body, returned.saturating_duration_since(triggered))
}

/// A generous bound for "the long-poll woke up because of the event".
pub(crate) const WAKE_BOUND: Duration = Duration::from_secs(2);

/// `GET /rooms/{roomId}/messages` backwards from `from` until the end; returns every event.
async fn paginate_back(client: &Client, room_id: &RoomId, from: &str, page: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut from = from.to_owned();
    for _ in 0..50 {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={page}&from={}",
            enc(room_id.as_str()),
            enc(&from)
        );
        let (status, body) = client.raw("GET", &path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        let done = chunk.is_empty();
        all.extend(chunk);
        match body["end"].as_str() {
            Some(end) if !done => from = end.to_owned(),
            _ => return all,
        }
    }
    panic!("pagination did not end after 50 pages");
}

/// An inline filter as the `filter` query parameter.
fn filter(value: Value) -> String {
    value.to_string()
}

// ---------------------------------------------------------------------------------------------
// Initial and incremental sync
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn initial_sync_returns_joined_room_with_state_and_timeline() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Initial Room", true).await;
    let event_id = send_text(&alice, &room_id, "first message").await;

    let body = sync(&alice, &[]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(event_ids(&timeline).last(), Some(&event_id.to_string()), "last timeline event is the message: {room}");

    // state + timeline together describe the whole room.
    let all: Vec<Value> = events(&room["state"]).into_iter().chain(timeline).collect();
    assert!(find_state(&all, "m.room.create", "").is_some(), "no m.room.create: {room}");
    assert!(find_state(&all, "m.room.join_rules", "").is_some(), "no m.room.join_rules: {room}");
    assert!(find_state(&all, "m.room.power_levels", "").is_some(), "no m.room.power_levels: {room}");
    let name = find_state(&all, "m.room.name", "").expect("m.room.name");
    assert_eq!(name["content"]["name"], "Initial Room");
    let member = find_state(&all, "m.room.member", alice.user_id().as_str()).expect("own membership");
    assert_eq!(member["content"]["membership"], "join");
    // Sync events carry no room_id (the room is the key).
    assert!(all.iter().all(|e| e.get("room_id").is_none()), "sync events must not carry room_id: {room}");
}

#[tokio::test]
async fn incremental_sync_returns_only_new_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "before").await;
    let first = sync(&alice, &[]).await;

    let new_event = send_text(&alice, &room_id, "after").await;
    let body = sync(&alice, &[("since", &next_batch(&first))]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(event_ids(&timeline), vec![new_event.to_string()], "{room}");
    assert_eq!(room["timeline"]["limited"].as_bool().unwrap_or(false), false, "{room}");
    assert!(events(&room["state"]).is_empty(), "no state changed: {room}");
}

#[tokio::test]
async fn next_batch_advances_and_unchanged_rooms_are_omitted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let first = sync(&alice, &[]).await;
    let token1 = next_batch(&first);

    // Nothing happened: the room is not in the response.
    let quiet = sync(&alice, &[("since", &token1)]).await;
    assert!(room(&quiet, "join", &room_id).is_none(), "unchanged room must be omitted: {quiet}");

    send_text(&alice, &room_id, "news").await;
    let second = sync(&alice, &[("since", &token1)]).await;
    let token2 = next_batch(&second);
    assert_ne!(token1, token2, "next_batch must advance after a new event");
    assert_eq!(bodies(&events(&joined(&second, &room_id)["timeline"])), vec!["news"]);

    // From the new token the message is not repeated.
    let third = sync(&alice, &[("since", &token2)]).await;
    assert!(room(&third, "join", &room_id).is_none(), "event delivered twice: {third}");
}

#[tokio::test]
async fn newly_joined_room_in_incremental_sync_has_full_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Join Me", true).await;
    send_text(&alice, &room_id, "welcome").await;
    let token = next_batch(&sync(&bob, &[]).await);

    join(&bob, &room_id).await;
    let body = sync(&bob, &[("since", &token)]).await;
    let room = joined(&body, &room_id);
    let all: Vec<Value> = events(&room["state"]).into_iter().chain(events(&room["timeline"])).collect();
    assert!(find_state(&all, "m.room.create", "").is_some(), "newly joined room lacks m.room.create: {room}");
    assert_eq!(find_state(&all, "m.room.name", "").expect("m.room.name")["content"]["name"], "Join Me");
    let own = find_state(&all, "m.room.member", bob.user_id().as_str()).expect("own join");
    assert_eq!(own["content"]["membership"], "join");
}

#[tokio::test]
async fn full_state_returns_all_state_again() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Full", true).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let started = Instant::now();
    let body = sync(&alice, &[("since", &token), ("full_state", "true"), ("timeout", "10000")]).await;
    // full_state ignores the timeout and answers at once.
    assert!(started.elapsed() < Duration::from_secs(5), "full_state sync waited {:?}", started.elapsed());
    let room = joined(&body, &room_id);
    assert!(events(&room["timeline"]).is_empty(), "nothing new in the timeline: {room}");
    let state = events(&room["state"]);
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name"] {
        assert!(find_state(&state, kind, "").is_some(), "full_state lacks {kind}: {room}");
    }
    assert!(
        find_state(&state, "m.room.member", alice.user_id().as_str()).is_some(),
        "full_state lacks own member: {room}"
    );
}

#[tokio::test]
async fn invalid_since_token_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for token in ["garbage", "s-1_0", "sabc"] {
        let (status, body) = try_sync(&alice, &[("since", token)]).await;
        assert_eq!(status, 400, "since={token}: {body}");
        assert!(body["errcode"].as_str().is_some_and(|e| e.starts_with("M_")), "since={token}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Long-polling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn long_poll_without_events_returns_after_timeout_with_no_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let started = Instant::now();
    let body = sync(&alice, &[("since", &token), ("timeout", "1500")]).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1300), "returned after {elapsed:?}, before the timeout");
    assert!(elapsed < Duration::from_secs(10), "returned after {elapsed:?}");
    assert!(room(&body, "join", &room_id).is_none(), "{body}");
    let join_empty = body["rooms"]["join"].as_object().is_none_or(|m| m.is_empty());
    assert!(join_empty, "nothing happened, yet rooms.join is not empty: {body}");
    // The token is still usable.
    sync(&alice, &[("since", &next_batch(&body))]).await;
}

#[tokio::test]
async fn long_poll_wakes_on_new_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (bob2, room2) = (bob.clone(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        send_text(&bob2, &room2, "wake up").await;
    })
    .await;
    assert_eq!(bodies(&events(&joined(&body, &room_id)["timeline"])), vec!["wake up"]);
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the message");
}

#[tokio::test]
async fn long_poll_wakes_on_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (bob2, room2) = (bob.clone(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        let typing = Typing::Yes(TypingInfo::new(Duration::from_secs(30)));
        bob2.send(create_typing_event::v3::Request::new(bob2.user_id().to_owned(), room2, typing)).await;
    })
    .await;
    let typing = ephemeral_of(joined(&body, &room_id), "m.typing");
    assert_eq!(typing.len(), 1, "{body}");
    assert_eq!(typing[0]["content"]["user_ids"], json!([bob.user_id()]));
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the typing notification");
}

#[tokio::test]
async fn long_poll_wakes_on_receipt() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let event_id = send_text(&alice, &room_id, "read me").await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (bob2, room2, event2) = (bob.clone(), room_id.clone(), event_id.clone());
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        bob2.send(create_receipt::v3::Request::new(room2, ReceiptType::Read, event2)).await;
    })
    .await;
    let receipts = ephemeral_of(joined(&body, &room_id), "m.receipt");
    assert_eq!(receipts.len(), 1, "{body}");
    assert!(receipts[0]["content"][event_id.as_str()]["m.read"][bob.user_id().as_str()]["ts"].is_u64(), "{body}");
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the receipt");
}

#[tokio::test]
async fn long_poll_wakes_on_global_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = next_batch(&sync(&alice, &[]).await);

    let alice2 = alice.clone();
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        let path = format!("/_matrix/client/v3/user/{}/account_data/org.example.wake", enc(alice2.user_id().as_str()));
        let (status, body) = alice2.raw("PUT", &path, Some(r#"{"awake":true}"#)).await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
    let data = events(&body["account_data"]);
    let event = data.iter().find(|e| e["type"] == "org.example.wake").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(event["content"], json!({"awake": true}));
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the account data");
}

#[tokio::test]
async fn long_poll_wakes_on_room_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (alice2, room2) = (alice.clone(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        let path = format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
            enc(alice2.user_id().as_str()),
            enc(room2.as_str())
        );
        let (status, body) = alice2.raw("PUT", &path, Some(r#"{"colour":"blue"}"#)).await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let event = data.iter().find(|e| e["type"] == "org.example.room").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(event["content"], json!({"colour": "blue"}));
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the room account data");
}

#[tokio::test]
async fn long_poll_wakes_invitee_on_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Invitation", false).await;
    let token = next_batch(&sync(&bob, &[]).await);

    let (alice2, bob2, room2) = (alice.clone(), bob.clone(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&bob, &token, async move {
        invite(&alice2, &room2, &bob2).await;
    })
    .await;
    assert!(room(&body, "invite", &room_id).is_some(), "invite not in rooms.invite: {body}");
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the invite");
}

#[tokio::test]
async fn long_poll_wakes_on_other_member_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (bob2, room2) = (bob.clone(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&alice, &token, async move {
        leave(&bob2, &room2).await;
    })
    .await;
    let timeline = events(&joined(&body, &room_id)["timeline"]);
    let member = find_state(&timeline, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{body}"));
    assert_eq!(member["content"]["membership"], "leave");
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the leave");
}

#[tokio::test]
async fn long_poll_wakes_kicked_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&bob, &[]).await);

    let (alice2, bob_id, room2) = (alice.clone(), bob.user_id().to_owned(), room_id.clone());
    let (body, lag) = long_poll_woken_by(&bob, &token, async move {
        alice2.send(kick_user::v3::Request::new(room2, bob_id)).await;
    })
    .await;
    let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("kicked room not in rooms.leave: {body}"));
    let timeline = events(&left["timeline"]);
    let member = find_state(&timeline, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{left}"));
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["sender"], alice.user_id().as_str());
    assert!(room(&body, "join", &room_id).is_none(), "{body}");
    assert!(lag < WAKE_BOUND, "long-poll returned {lag:?} after the kick");
}

// ---------------------------------------------------------------------------------------------
// Timeline limits, gaps and pagination
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn timeline_limit_sets_limited_and_prev_batch_paginates_the_rest_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    for i in 0..8 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }

    let body = sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"limit": 3}}})))]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(bodies(&timeline), vec!["m5", "m6", "m7"], "{room}");
    assert_eq!(timeline.len(), 3, "limit 3: {room}");
    assert_eq!(room["timeline"]["limited"], true, "{room}");
    let prev_batch = room["timeline"]["prev_batch"].as_str().unwrap_or_else(|| panic!("no prev_batch: {room}"));

    let earlier = paginate_back(&alice, &room_id, prev_batch, 4).await;
    assert_eq!(bodies(&earlier), vec!["m4", "m3", "m2", "m1", "m0"], "messages before the window, newest first");
    let mut ids = event_ids(&earlier);
    ids.extend(event_ids(&timeline));
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "an event came back twice across sync and /messages");
    assert!(earlier.iter().any(|e| e["type"] == "m.room.create"), "pagination should reach the start of the room");
}

#[tokio::test]
async fn gappy_incremental_sync_prev_batch_fills_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "old").await;
    let token = next_batch(&sync(&alice, &[]).await);
    for i in 0..6 {
        send_text(&alice, &room_id, &format!("n{i}")).await;
    }

    let body =
        sync(&alice, &[("since", &token), ("filter", &filter(json!({"room": {"timeline": {"limit": 3}}})))]).await;
    let room = joined(&body, &room_id);
    assert_eq!(bodies(&events(&room["timeline"])), vec!["n3", "n4", "n5"], "{room}");
    assert_eq!(room["timeline"]["limited"], true, "{room}");
    let prev_batch = room["timeline"]["prev_batch"].as_str().expect("prev_batch");

    let path =
        format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={}", enc(room_id.as_str()), enc(prev_batch));
    let (status, page) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(bodies(page["chunk"].as_array().expect("chunk")), vec!["n2", "n1", "n0"], "{page}");
}

#[tokio::test]
async fn incremental_sync_within_limit_is_not_limited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let token = next_batch(&sync(&alice, &[]).await);
    send_text(&alice, &room_id, "a").await;
    send_text(&alice, &room_id, "b").await;

    let body =
        sync(&alice, &[("since", &token), ("filter", &filter(json!({"room": {"timeline": {"limit": 2}}})))]).await;
    let room = joined(&body, &room_id);
    assert_eq!(bodies(&events(&room["timeline"])), vec!["a", "b"]);
    assert_eq!(
        room["timeline"]["limited"].as_bool().unwrap_or(false),
        false,
        "exactly limit new events is no gap: {room}"
    );
}

// ---------------------------------------------------------------------------------------------
// State deltas
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gappy_sync_state_contains_state_changed_in_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Before", true).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let name_event = set_name(&alice, &room_id, "After").await;
    for i in 0..5 {
        send_text(&alice, &room_id, &format!("filler {i}")).await;
    }
    let body =
        sync(&alice, &[("since", &token), ("filter", &filter(json!({"room": {"timeline": {"limit": 2}}})))]).await;
    let room = joined(&body, &room_id);
    assert_eq!(room["timeline"]["limited"], true, "{room}");
    let timeline = events(&room["timeline"]);
    assert!(!event_ids(&timeline).contains(&name_event.to_string()), "name change is in the gap, not the timeline");
    let state = events(&room["state"]);
    let name = find_state(&state, "m.room.name", "")
        .unwrap_or_else(|| panic!("name change from the gap missing in state: {room}"));
    assert_eq!(name["content"]["name"], "After");
    assert_eq!(name["event_id"], name_event.as_str());
    // Only changes since `since`: unchanged state is not repeated.
    assert!(find_state(&state, "m.room.create", "").is_none(), "unchanged m.room.create repeated: {room}");
    assert!(find_state(&state, "m.room.join_rules", "").is_none(), "unchanged m.room.join_rules repeated: {room}");
}

#[tokio::test]
async fn state_change_in_timeline_is_not_repeated_in_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "One", true).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let name_event = set_name(&alice, &room_id, "Two").await;
    let body = sync(&alice, &[("since", &token)]).await;
    let room = joined(&body, &room_id);
    assert_eq!(event_ids(&events(&room["timeline"])), vec![name_event.to_string()], "{room}");
    assert!(events(&room["state"]).is_empty(), "state between since and the timeline's start is empty: {room}");
}

#[tokio::test]
async fn use_state_after_returns_state_after_and_omits_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Stateful", true).await;

    let initial = sync(&alice, &[("use_state_after", "true")]).await;
    let room = joined(&initial, &room_id);
    assert!(room.get("state").is_none(), "state must be omitted with use_state_after: {room}");
    let after = events(&room["state_after"]);
    assert!(room.get("state_after").is_some(), "state_after missing: {room}");
    for kind in ["m.room.create", "m.room.name", "m.room.join_rules", "m.room.power_levels"] {
        assert!(find_state(&after, kind, "").is_some(), "initial state_after lacks {kind}: {room}");
    }

    // Incremental: a state change in the timeline is also in state_after (state at the end).
    let token = next_batch(&initial);
    let topic_event = set_topic(&alice, &room_id, "new topic").await;
    let body = sync(&alice, &[("since", &token), ("use_state_after", "true")]).await;
    let room = joined(&body, &room_id);
    assert!(room.get("state").is_none(), "state must be omitted with use_state_after: {room}");
    let after = events(&room["state_after"]);
    let topic = find_state(&after, "m.room.topic", "")
        .unwrap_or_else(|| panic!("topic change missing from state_after: {room}"));
    assert_eq!(topic["event_id"], topic_event.as_str());
    assert!(find_state(&after, "m.room.create", "").is_none(), "unchanged state repeated in state_after: {room}");
}

// ---------------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stored_filter_id_applies_to_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    for i in 0..4 {
        send_text(&alice, &room_id, &format!("s{i}")).await;
    }
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(alice.user_id().as_str()));
    let (status, created) = alice
        .raw("POST", &path, Some(&json!({"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}}).to_string()))
        .await;
    assert_eq!(status, 200, "{created}");
    let filter_id = created["filter_id"].as_str().expect("filter_id").to_owned();
    assert!(!filter_id.starts_with('{'), "filter ids must not start with '{{': {filter_id}");

    let body = sync(&alice, &[("filter", &filter_id)]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(bodies(&timeline), vec!["s3"], "{room}");
    assert_eq!(timeline.len(), 1, "{room}");
    assert_eq!(room["timeline"]["limited"], true, "{room}");
}

#[tokio::test]
async fn room_filter_rooms_and_not_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_a = create_public_room(&alice).await;
    let room_b = create_public_room(&alice).await;

    let only_a = sync(&alice, &[("filter", &filter(json!({"room": {"rooms": [room_a]}})))]).await;
    assert!(room(&only_a, "join", &room_a).is_some(), "{only_a}");
    assert!(room(&only_a, "join", &room_b).is_none(), "room B excluded by rooms: {only_a}");

    let not_a = sync(&alice, &[("filter", &filter(json!({"room": {"not_rooms": [room_a]}})))]).await;
    assert!(room(&not_a, "join", &room_a).is_none(), "room A excluded by not_rooms: {not_a}");
    assert!(room(&not_a, "join", &room_b).is_some(), "{not_a}");

    // not_rooms wins over rooms.
    let both =
        sync(&alice, &[("filter", &filter(json!({"room": {"rooms": [room_a, room_b], "not_rooms": [room_a]}})))]).await;
    assert!(room(&both, "join", &room_a).is_none(), "{both}");
    assert!(room(&both, "join", &room_b).is_some(), "{both}");
}

#[tokio::test]
async fn timeline_types_and_not_types_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "text one").await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/org.example.custom/c1", enc(room_id.as_str()));
    let (status, custom) = alice.raw("PUT", &path, Some(r#"{"hello":"world"}"#)).await;
    assert_eq!(status, 200, "{custom}");
    send_text(&alice, &room_id, "text two").await;

    let only_messages =
        sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"types": ["m.room.message"]}}})))]).await;
    let timeline = events(&joined(&only_messages, &room_id)["timeline"]);
    assert!(
        timeline.iter().all(|e| e["type"] == "m.room.message"),
        "types filter let other types through: {timeline:?}"
    );
    assert_eq!(bodies(&timeline), vec!["text one", "text two"]);

    let no_messages =
        sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"not_types": ["m.room.message"]}}})))]).await;
    let timeline = events(&joined(&no_messages, &room_id)["timeline"]);
    assert!(timeline.iter().all(|e| e["type"] != "m.room.message"), "not_types let messages through: {timeline:?}");
    assert!(timeline.iter().any(|e| e["type"] == "org.example.custom"), "custom event missing: {timeline:?}");

    let wildcard =
        sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"types": ["org.example.*"]}}})))]).await;
    let timeline = events(&joined(&wildcard, &room_id)["timeline"]);
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0]["event_id"], custom["event_id"]);
}

#[tokio::test]
async fn lazy_load_members_only_includes_timeline_senders() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Lazy", true).await;
    // Five early members are the heroes (first by join order, and by user ID too); bob and
    // carol join later, so neither is a hero.
    let mut early = Vec::new();
    for i in 0..5 {
        let member = server.register(&format!("aaa{i}")).await;
        join(&member, &room_id).await;
        early.push(member);
    }
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    join(&bob, &room_id).await;
    join(&carol, &room_id).await;
    send_text(&bob, &room_id, "from bob").await;
    send_text(&alice, &room_id, "from alice").await;

    let lazy = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}});
    let body = sync(&alice, &[("filter", &filter(lazy))]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(bodies(&timeline), vec!["from bob", "from alice"], "{room}");
    let state = events(&room["state"]);
    let members: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap_or_default())
        .collect();
    assert!(members.contains(&bob.user_id().as_str()), "timeline sender bob's membership missing: {members:?}");
    assert!(members.contains(&alice.user_id().as_str()), "own membership missing on initial sync: {members:?}");
    assert!(
        !members.contains(&carol.user_id().as_str()),
        "carol sent nothing (and is no hero) but was loaded: {members:?}"
    );
    // Non-member state still comes through.
    assert!(find_state(&state, "m.room.create", "").is_some(), "{room}");

    // Without lazy loading every member is there.
    let full = sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"limit": 2}}})))]).await;
    let state = events(&joined(&full, &room_id)["state"]);
    assert!(find_state(&state, "m.room.member", carol.user_id().as_str()).is_some(), "non-lazy sync lacks carol");
}

/// Member state of a sync response's room (state section only), by state key.
fn member_state(body: &Value, room_id: &RoomId) -> Vec<String> {
    let mut members: Vec<String> = events(&joined(body, room_id)["state"])
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    members.sort();
    members
}

#[tokio::test]
async fn lazy_loading_does_not_resend_members_the_device_has_unless_asked() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = create_named_room(&alice, "Lazy again", true).await;
    join(&bob, &room_id).await;
    send_text(&bob, &room_id, "one").await;
    let lazy = filter(json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}));
    let redundant = filter(
        json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}, "timeline": {"limit": 1}}}),
    );
    let first = sync(&alice, &[("filter", &lazy)]).await;
    let mut expected = vec![alice.user_id().to_string(), bob.user_id().to_string()];
    expected.sort();
    assert_eq!(member_state(&first, &room_id), expected, "{first}");

    // bob speaks again: his membership (and alice's) went out in the initial sync.
    send_text(&bob, &room_id, "two").await;
    let second = sync(&alice, &[("filter", &lazy), ("since", &next_batch(&first))]).await;
    assert_eq!(bodies(&events(&joined(&second, &room_id)["timeline"])), vec!["two"]);
    assert!(member_state(&second, &room_id).is_empty(), "redundant members: {second}");
    // Asked for, they are sent.
    let asked = sync(&alice, &[("filter", &redundant), ("since", &next_batch(&first))]).await;
    assert!(member_state(&asked, &room_id).contains(&bob.user_id().to_string()), "{asked}");

    // carol joins and speaks; with a timeline of one, her membership comes in the state.
    join(&carol, &room_id).await;
    send_text(&carol, &room_id, "from carol").await;
    let third = sync(&alice, &[("filter", &lazy), ("since", &next_batch(&second))]).await;
    assert_eq!(member_state(&third, &room_id), vec![carol.user_id().to_string()], "{third}");
    // The client never got that answer and asks again from the same token: carol again.
    let retried = sync(&alice, &[("filter", &lazy), ("since", &next_batch(&second))]).await;
    assert_eq!(member_state(&retried, &room_id), vec![carol.user_id().to_string()], "{retried}");
    // Once past it, she is not sent again.
    send_text(&carol, &room_id, "again").await;
    let fourth = sync(&alice, &[("filter", &lazy), ("since", &next_batch(&retried))]).await;
    assert!(member_state(&fourth, &room_id).is_empty(), "{fourth}");
    // A new initial sync starts over: the client may have forgotten everything.
    let fresh = sync(&alice, &[("filter", &lazy)]).await;
    assert!(member_state(&fresh, &room_id).contains(&carol.user_id().to_string()), "{fresh}");
}

#[tokio::test]
async fn lazy_load_members_includes_heroes_memberships() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await; // no name: heroes are needed
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    join(&bob, &room_id).await;
    join(&carol, &room_id).await;
    send_text(&alice, &room_id, "only alice talks").await;

    let lazy = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}});
    let body = sync(&alice, &[("filter", &filter(lazy))]).await;
    let room = joined(&body, &room_id);
    let heroes: Vec<String> = room["summary"]["m.heroes"]
        .as_array()
        .unwrap_or_else(|| panic!("unnamed room needs m.heroes: {room}"))
        .iter()
        .map(|h| h.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!heroes.is_empty(), "{room}");
    let all: Vec<Value> = events(&room["state"]).into_iter().chain(events(&room["timeline"])).collect();
    for hero in &heroes {
        assert!(
            find_state(&all, "m.room.member", hero).is_some(),
            "lazy loading must include the membership of hero {hero}: {room}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Invites, leaves
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invited_room_has_stripped_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Secret Plans", false).await;
    let token = next_batch(&sync(&bob, &[]).await);
    invite(&alice, &room_id, &bob).await;

    for body in [sync(&bob, &[("since", &token)]).await, sync(&bob, &[]).await] {
        assert!(room(&body, "join", &room_id).is_none(), "{body}");
        let invited = room(&body, "invite", &room_id).unwrap_or_else(|| panic!("room not in rooms.invite: {body}"));
        let state = events(&invited["invite_state"]);
        let name = find_state(&state, "m.room.name", "").unwrap_or_else(|| panic!("no m.room.name: {invited}"));
        assert_eq!(name["content"]["name"], "Secret Plans");
        let join_rules =
            find_state(&state, "m.room.join_rules", "").unwrap_or_else(|| panic!("no join_rules: {invited}"));
        assert_eq!(join_rules["content"]["join_rule"], "invite");
        let member = find_state(&state, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{invited}"));
        assert_eq!(member["content"]["membership"], "invite");
        assert_eq!(member["sender"], alice.user_id().as_str());
    }
}

#[tokio::test]
async fn invite_leaves_invite_section_after_joining() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Come In", false).await;
    invite(&alice, &room_id, &bob).await;
    let token = next_batch(&sync(&bob, &[]).await);

    join(&bob, &room_id).await;
    let body = sync(&bob, &[("since", &token)]).await;
    assert!(room(&body, "invite", &room_id).is_none(), "{body}");
    assert!(room(&body, "join", &room_id).is_some(), "{body}");
    let initial = sync(&bob, &[]).await;
    assert!(room(&initial, "invite", &room_id).is_none(), "joined room still listed as invite: {initial}");
}

#[tokio::test]
async fn left_room_appears_in_leave_section_of_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&bob, &[]).await);

    leave(&bob, &room_id).await;
    let body = sync(&bob, &[("since", &token)]).await;
    assert!(room(&body, "join", &room_id).is_none(), "{body}");
    let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("room not in rooms.leave: {body}"));
    let timeline = events(&left["timeline"]);
    let member = find_state(&timeline, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{left}"));
    assert_eq!(member["content"]["membership"], "leave");

    // And only once.
    let again = sync(&bob, &[("since", &next_batch(&body))]).await;
    assert!(room(&again, "leave", &room_id).is_none(), "{again}");
}

#[tokio::test]
async fn left_room_does_not_see_later_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&bob, &[]).await);
    leave(&bob, &room_id).await;
    send_text(&alice, &room_id, "after bob left").await;

    let body = sync(&bob, &[("since", &token)]).await;
    let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("{body}"));
    assert!(bodies(&events(&left["timeline"])).is_empty(), "leave timeline ends at the leave: {left}");
}

#[tokio::test]
async fn include_leave_controls_left_rooms_in_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;

    let default = sync(&bob, &[]).await;
    assert!(room(&default, "leave", &room_id).is_none(), "include_leave defaults to false: {default}");
    assert!(room(&default, "join", &room_id).is_none(), "{default}");

    let body = sync(&bob, &[("filter", &filter(json!({"room": {"include_leave": true}})))]).await;
    let left =
        room(&body, "leave", &room_id).unwrap_or_else(|| panic!("include_leave: room not in rooms.leave: {body}"));
    // The room's state as the client rebuilds it: `state`, then the timeline on top.
    let mut all: Vec<Value> = events(&left["state"]).into_iter().chain(events(&left["timeline"])).collect();
    all.reverse();
    let member = find_state(&all, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{left}"));
    assert_eq!(member["content"]["membership"], "leave", "{left}");
}

// ---------------------------------------------------------------------------------------------
// Summary, unread counts, transaction ids
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn summary_has_heroes_and_member_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    invite(&alice, &room_id, &carol).await;

    let body = sync(&alice, &[]).await;
    let summary = &joined(&body, &room_id)["summary"];
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 1, "{summary}");
    let heroes: Vec<&str> = summary["m.heroes"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(heroes.contains(&bob.user_id().as_str()), "{heroes:?}");
    assert!(heroes.contains(&carol.user_id().as_str()), "invited users are heroes too: {heroes:?}");
    assert!(!heroes.contains(&alice.user_id().as_str()), "heroes never include the syncing user: {heroes:?}");

    // A membership change sends an updated count.
    let token = next_batch(&body);
    join(&carol, &room_id).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let summary = &joined(&body, &room_id)["summary"];
    assert_eq!(summary["m.joined_member_count"], 3, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 0, "{summary}");
}

#[tokio::test]
async fn summary_heroes_are_the_first_five_members_by_join_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    // Localparts sort the opposite way to the join order.
    let mut joined_order = Vec::new();
    for name in ["zed", "yan", "xia", "wil", "vic", "uma"] {
        let member = server.register(name).await;
        join(&member, &room_id).await;
        joined_order.push(member.user_id().to_string());
    }
    let body = sync(&alice, &[]).await;
    let summary = &joined(&body, &room_id)["summary"];
    let heroes: Vec<String> = summary["m.heroes"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"))
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    assert!(heroes.len() >= 5, "five heroes when there are six others: {heroes:?}");
    assert_eq!(heroes[..5], joined_order[..5], "heroes should be the first five members by stream ordering");
    assert_eq!(summary["m.joined_member_count"], 7, "{summary}");
}

#[tokio::test]
async fn unread_notifications_count_messages_after_read_receipt() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "my own message").await; // own messages never count
    let first = send_text(&bob, &room_id, "one").await;
    send_text(&bob, &room_id, "two").await;
    let third = send_text(&bob, &room_id, "three").await;

    let body = sync(&alice, &[]).await;
    let unread = &joined(&body, &room_id)["unread_notifications"];
    assert_eq!(unread["notification_count"], 3, "three messages from bob, none read: {unread}");
    assert_eq!(unread["highlight_count"], 0, "{unread}");

    alice.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, first)).await;
    let body = sync(&alice, &[]).await;
    assert_eq!(joined(&body, &room_id)["unread_notifications"]["notification_count"], 2, "{body}");

    // The incremental sync that carries the receipt tells the client the count dropped.
    let token = next_batch(&body);
    alice.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, third)).await;
    let body = sync(&alice, &[("since", &token)]).await;
    assert_eq!(joined(&body, &room_id)["unread_notifications"]["notification_count"], 0, "{body}");
}

#[tokio::test]
async fn private_read_receipt_also_clears_notifications() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&bob, &room_id, "one").await;
    let last = send_text(&bob, &room_id, "two").await;
    assert_eq!(joined(&sync(&alice, &[]).await, &room_id)["unread_notifications"]["notification_count"], 2);

    alice.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::ReadPrivate, last)).await;
    let body = sync(&alice, &[]).await;
    assert_eq!(joined(&body, &room_id)["unread_notifications"]["notification_count"], 0, "{body}");
}

#[tokio::test]
async fn highlight_count_counts_mentions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&bob, &room_id, "no mention").await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention1", enc(room_id.as_str()));
    let content = json!({"msgtype": "m.text", "body": "hey you", "m.mentions": {"user_ids": [alice.user_id()]}});
    let (status, sent) = bob.raw("PUT", &path, Some(&content.to_string())).await;
    assert_eq!(status, 200, "{sent}");

    let body = sync(&alice, &[]).await;
    let unread = &joined(&body, &room_id)["unread_notifications"];
    assert_eq!(unread["notification_count"], 2, "{unread}");
    assert_eq!(unread["highlight_count"], 1, "{unread}");
}

#[tokio::test]
async fn transaction_id_only_for_the_sending_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let event_id = send_text_txn(&alice, &room_id, "with txn", OwnedTransactionId::from("my-txn-42")).await;

    let find = |body: &Value| -> Value {
        events(&joined(body, &room_id)["timeline"])
            .into_iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("event not in timeline: {body}"))
    };
    let own = find(&sync(&alice, &[]).await);
    assert_eq!(own["unsigned"]["transaction_id"], "my-txn-42", "{own}");
    assert!(own["unsigned"]["age"].is_u64(), "age is a number of milliseconds: {own}");

    // The same user on another device does not see it.
    let (status, login) = server
        .client()
        .raw(
            "POST",
            "/_matrix/client/v3/login",
            Some(
                &json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": alice.user_id().localpart()},
                    "password": "password"
                })
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let mut other_device = server.client();
    other_device.token = Some(login["access_token"].as_str().expect("access_token").to_owned());
    other_device.user_id = Some(alice.user_id().to_owned());
    assert_ne!(login["device_id"].as_str(), alice.device_id.as_ref().map(|d| d.as_str()));
    let other = find(&sync(&other_device, &[]).await);
    assert!(other["unsigned"].get("transaction_id").is_none(), "other device sees transaction_id: {other}");

    // Nor does another user.
    let theirs = find(&sync(&bob, &[]).await);
    assert!(theirs["unsigned"].get("transaction_id").is_none(), "other user sees transaction_id: {theirs}");
}

// ---------------------------------------------------------------------------------------------
// More filters, lazy loading in gaps, history, left-room history
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn state_filter_types_limits_state_section() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "Filtered", true).await;
    for i in 0..12 {
        send_text(&alice, &room_id, &format!("push state out of the timeline {i}")).await;
    }
    let body = sync(&alice, &[("filter", &filter(json!({"room": {"state": {"types": ["m.room.name"]}}})))]).await;
    let state = events(&joined(&body, &room_id)["state"]);
    assert_eq!(state.len(), 1, "only m.room.name passes the state filter: {state:?}");
    assert_eq!(state[0]["type"], "m.room.name");
    assert_eq!(state[0]["content"]["name"], "Filtered");
}

#[tokio::test]
async fn timeline_senders_and_not_senders_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "a1").await;
    send_text(&bob, &room_id, "b1").await;
    send_text(&alice, &room_id, "a2").await;

    let only_bob =
        sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"senders": [bob.user_id()]}}})))]).await;
    let timeline = events(&joined(&only_bob, &room_id)["timeline"]);
    assert!(timeline.iter().all(|e| e["sender"] == bob.user_id().as_str()), "{timeline:?}");
    assert_eq!(bodies(&timeline), vec!["b1"]);

    let not_bob =
        sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"not_senders": [bob.user_id()]}}})))]).await;
    let timeline = events(&joined(&not_bob, &room_id)["timeline"]);
    assert!(timeline.iter().all(|e| e["sender"] != bob.user_id().as_str()), "{timeline:?}");
    assert_eq!(bodies(&timeline), vec!["a1", "a2"]);
}

#[tokio::test]
async fn ephemeral_filter_can_drop_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let typing = Typing::Yes(TypingInfo::new(Duration::from_secs(30)));
    bob.send(create_typing_event::v3::Request::new(bob.user_id().to_owned(), room_id.clone(), typing)).await;

    let body = sync(&alice, &[("filter", &filter(json!({"room": {"ephemeral": {"not_types": ["m.typing"]}}})))]).await;
    assert!(ephemeral_of(joined(&body, &room_id), "m.typing").is_empty(), "{body}");
    let body = sync(&alice, &[]).await;
    assert_eq!(ephemeral_of(joined(&body, &room_id), "m.typing").len(), 1, "{body}");
}

#[tokio::test]
async fn lazy_loaded_gappy_sync_includes_memberships_from_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dave = server.register("dave").await;
    let room_id = create_named_room(&alice, "Gap members", true).await;
    join(&bob, &room_id).await;
    let lazy = filter(json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}}));
    let token = next_batch(&sync(&alice, &[("filter", &lazy)]).await);

    join(&dave, &room_id).await; // in the gap, dave never speaks
    for i in 0..5 {
        send_text(&bob, &room_id, &format!("bob {i}")).await;
    }
    let body = sync(&alice, &[("since", &token), ("filter", &lazy)]).await;
    let room = joined(&body, &room_id);
    assert_eq!(room["timeline"]["limited"], true, "{room}");
    let state = events(&room["state"]);
    let member = find_state(&state, "m.room.member", dave.user_id().as_str()).unwrap_or_else(|| {
        panic!("limited lazy sync MUST return membership events from the gap (dave's join): {room}")
    });
    assert_eq!(member["content"]["membership"], "join");
}

#[tokio::test]
async fn lazy_loaded_incremental_sync_includes_new_senders() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "New sender", true).await;
    // Five heroes who never speak (first by join order and by user ID), so bob is no hero.
    for i in 0..5 {
        join(&server.register(&format!("aaa{i}")).await, &room_id).await;
    }
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "alice speaks").await;
    let lazy = filter(json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}));
    let first = sync(&alice, &[("filter", &lazy)]).await;
    let state = events(&joined(&first, &room_id)["state"]);
    let members: Vec<&Value> = state.iter().filter(|e| e["type"] == "m.room.member").collect();
    assert!(
        find_state(&state, "m.room.member", bob.user_id().as_str()).is_none(),
        "bob has not spoken yet: {members:?} {}",
        joined(&first, &room_id)["summary"]
    );

    send_text(&bob, &room_id, "bob speaks").await;
    let body = sync(&alice, &[("since", &next_batch(&first)), ("filter", &lazy)]).await;
    let room = joined(&body, &room_id);
    let state = events(&room["state"]);
    let member = find_state(&state, "m.room.member", bob.user_id().as_str())
        .unwrap_or_else(|| panic!("new timeline sender's membership missing: {room}"));
    assert_eq!(member["content"]["membership"], "join");
}

#[tokio::test]
async fn history_visibility_joined_hides_earlier_messages_from_new_member() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(room_id.as_str()));
    let (status, body) = alice.raw("PUT", &path, Some(r#"{"history_visibility":"joined"}"#)).await;
    assert_eq!(status, 200, "{body}");
    send_text(&alice, &room_id, "before bob").await;
    let token = next_batch(&sync(&bob, &[]).await);
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "after bob").await;

    for body in [sync(&bob, &[("since", &token)]).await, sync(&bob, &[]).await] {
        let timeline = events(&joined(&body, &room_id)["timeline"]);
        assert_eq!(bodies(&timeline), vec!["after bob"], "joined visibility: no history before the join: {timeline:?}");
    }
}

#[tokio::test]
async fn history_visibility_shared_shows_earlier_messages_to_new_member() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await; // public_chat: history_visibility shared
    send_text(&alice, &room_id, "before bob").await;
    let token = next_batch(&sync(&bob, &[]).await);
    join(&bob, &room_id).await;

    let body = sync(&bob, &[("since", &token)]).await;
    let timeline = events(&joined(&body, &room_id)["timeline"]);
    assert_eq!(bodies(&timeline), vec!["before bob"], "{timeline:?}");
    let last = timeline.last().expect("timeline");
    assert_eq!(
        (last["type"].as_str(), last["state_key"].as_str()),
        (Some("m.room.member"), Some(bob.user_id().as_str()))
    );
}

#[tokio::test]
async fn rejoin_within_one_sync_shows_room_as_joined() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&bob, &[]).await);

    leave(&bob, &room_id).await;
    join(&bob, &room_id).await;
    let body = sync(&bob, &[("since", &token)]).await;
    assert!(room(&body, "leave", &room_id).is_none(), "bob is joined again: {body}");
    let timeline = events(&joined(&body, &room_id)["timeline"]);
    let memberships: Vec<&str> = timeline
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id().as_str())
        .filter_map(|e| e["content"]["membership"].as_str())
        .collect();
    // A rejoin may be treated as a fresh join (with earlier history), but it must end leave -> join.
    assert!(memberships.ends_with(&["leave", "join"]), "{memberships:?}: {timeline:?}");
}

#[tokio::test]
async fn banned_user_sees_room_in_leave_section() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&bob, &[]).await);

    let path = format!("/_matrix/client/v3/rooms/{}/ban", enc(room_id.as_str()));
    let (status, body) = alice.raw("POST", &path, Some(&json!({"user_id": bob.user_id()}).to_string())).await;
    assert_eq!(status, 200, "{body}");
    let body = sync(&bob, &[("since", &token)]).await;
    let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("banned room not in rooms.leave: {body}"));
    let timeline = events(&left["timeline"]);
    let member = find_state(&timeline, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{left}"));
    assert_eq!(member["content"]["membership"], "ban");
}

#[tokio::test]
async fn left_room_is_reported_even_behind_a_gap_in_another_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_to_leave = create_public_room(&alice).await;
    let room_to_spam = create_public_room(&alice).await;
    let gappy = filter(json!({"room": {"timeline": {"limit": 1}, "include_leave": true}}));
    let token = next_batch(&sync(&alice, &[("filter", &gappy)]).await);

    leave(&alice, &room_to_leave).await;
    for i in 0..20 {
        send_text(&alice, &room_to_spam, &format!("Mr Anderson {i}")).await;
    }
    let body = sync(&alice, &[("since", &token), ("filter", &gappy)]).await;
    assert!(room(&body, "leave", &room_to_leave).is_some(), "leave lost behind the gap: {body}");
}

#[tokio::test]
async fn left_room_in_full_state_sync_with_include_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let include_leave = filter(json!({"room": {"include_leave": true}}));
    let token = next_batch(&sync(&alice, &[("filter", &include_leave)]).await);
    leave(&alice, &room_id).await;

    let body = sync(&alice, &[("since", &token), ("filter", &include_leave), ("full_state", "true")]).await;
    let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("{body}"));
    let mut all: Vec<Value> = events(&left["state"]).into_iter().chain(events(&left["timeline"])).collect();
    all.reverse();
    assert!(find_state(&all, "m.room.create", "").is_some(), "full_state leave room has the full state: {left}");
    assert_eq!(
        find_state(&all, "m.room.member", alice.user_id().as_str()).expect("membership")["content"]["membership"],
        "leave"
    );
}

#[tokio::test]
async fn archived_room_only_contains_history_from_before_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let bob_filter = filter(json!({"room": {
        "timeline": {"types": ["m.room.message", "a.madeup.test.state"]},
        "state": {"types": ["a.madeup.test.state"]},
        "include_leave": true
    }}));
    let bob_since = next_batch(&sync(&bob, &[("filter", &bob_filter)]).await);

    let madeup = |value: &str| format!(r#"{{"my_key":"{value}"}}"#);
    let state_path = format!("/_matrix/client/v3/rooms/{}/state/a.madeup.test.state/", enc(room_id.as_str()));
    send_text(&alice, &room_id, "before").await;
    let (status, body) = alice.raw("PUT", &state_path, Some(&madeup("before"))).await;
    assert_eq!(status, 200, "{body}");
    leave(&bob, &room_id).await;
    send_text(&alice, &room_id, "after").await;
    let (status, body) = alice.raw("PUT", &state_path, Some(&madeup("after"))).await;
    assert_eq!(status, 200, "{body}");

    for (kind, body) in [
        ("initial", sync(&bob, &[("filter", &bob_filter)]).await),
        ("incremental", sync(&bob, &[("since", &bob_since), ("filter", &bob_filter)]).await),
    ] {
        let left = room(&body, "leave", &room_id).unwrap_or_else(|| panic!("{kind}: {body}"));
        assert!(events(&left["state"]).is_empty(), "{kind}: the made-up state is in the timeline, not state: {left}");
        let timeline = events(&left["timeline"]);
        assert_eq!(timeline.len(), 2, "{kind}: {left}");
        assert_eq!(timeline[0]["content"]["body"], "before", "{kind}: {left}");
        assert_eq!(timeline[1]["content"]["my_key"], "before", "{kind}: {left}");
    }
}

#[tokio::test]
async fn forgotten_room_is_not_in_include_leave_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    let path = format!("/_matrix/client/v3/rooms/{}/forget", enc(room_id.as_str()));
    let (status, body) = bob.raw("POST", &path, Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    send_text(&alice, &room_id, "bob is gone").await;

    let body = sync(&bob, &[("filter", &filter(json!({"room": {"include_leave": true}})))]).await;
    for section in ["join", "invite", "leave", "knock"] {
        assert!(room(&body, section, &room_id).is_none(), "forgotten room in rooms.{section}: {body}");
    }
}

#[tokio::test]
async fn typing_and_receipts_are_not_repeated_in_later_syncs() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let event_id = send_text(&alice, &room_id, "x").await;
    let token = next_batch(&sync(&alice, &[]).await);
    let typing = Typing::Yes(TypingInfo::new(Duration::from_secs(30)));
    bob.send(create_typing_event::v3::Request::new(bob.user_id().to_owned(), room_id.clone(), typing)).await;
    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, event_id)).await;

    let body = sync(&alice, &[("since", &token)]).await;
    let room_body = joined(&body, &room_id);
    assert_eq!(ephemeral_of(room_body, "m.typing").len(), 1, "{body}");
    assert_eq!(ephemeral_of(room_body, "m.receipt").len(), 1, "{body}");
    let again = sync(&alice, &[("since", &next_batch(&body))]).await;
    assert!(room(&again, "join", &room_id).is_none(), "unchanged ephemeral data repeated: {again}");
}

#[tokio::test]
async fn notification_count_updates_in_the_same_sync_as_the_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let token = next_batch(&sync(&alice, &[]).await);

    send_text(&bob, &room_id, "ping").await;
    let body = sync(&alice, &[("since", &token)]).await;
    let room = joined(&body, &room_id);
    assert_eq!(bodies(&events(&room["timeline"])), vec!["ping"]);
    assert_eq!(room["unread_notifications"]["notification_count"], 1, "count must arrive with the event: {room}");
}

#[tokio::test]
async fn notices_do_not_count_as_notifications() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    // Default override rule .m.rule.suppress_notices: msgtype m.notice does not notify.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/notice1", enc(room_id.as_str()));
    let (status, sent) = bob.raw("PUT", &path, Some(r#"{"msgtype":"m.notice","body":"I am a bot"}"#)).await;
    assert_eq!(status, 200, "{sent}");
    send_text(&bob, &room_id, "I am a person").await;

    let body = sync(&alice, &[]).await;
    assert_eq!(joined(&body, &room_id)["unread_notifications"]["notification_count"], 1, "{body}");
}

#[tokio::test]
async fn sending_a_message_marks_earlier_notifications_read() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&bob, &room_id, "one").await;
    send_text(&bob, &room_id, "two").await;
    assert_eq!(joined(&sync(&alice, &[]).await, &room_id)["unread_notifications"]["notification_count"], 2);

    // "When the user updates their read receipt (either by using the API or by sending an
    // event), notifications prior to and including that event MUST be marked as read."
    send_text(&alice, &room_id, "I have read everything").await;
    let body = sync(&alice, &[]).await;
    assert_eq!(joined(&body, &room_id)["unread_notifications"]["notification_count"], 0, "{body}");
}

#[tokio::test]
async fn initial_sync_with_whole_history_is_not_limited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "only message").await;

    let body = sync(&alice, &[("filter", &filter(json!({"room": {"timeline": {"limit": 50}}})))]).await;
    let room = joined(&body, &room_id);
    let timeline = events(&room["timeline"]);
    assert_eq!(timeline.first().map(|e| e["type"].clone()), Some(json!("m.room.create")), "{room}");
    assert_eq!(room["timeline"]["limited"].as_bool().unwrap_or(false), false, "the whole history fits: {room}");
}

#[tokio::test]
async fn long_poll_ignores_activity_in_other_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    create_public_room(&alice).await;
    let bobs_room = create_public_room(&bob).await;
    let token = next_batch(&sync(&alice, &[]).await);

    let (bob2, room2) = (bob.clone(), bobs_room.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_text(&bob2, &room2, "not for alice").await;
    });
    let started = Instant::now();
    let body = sync(&alice, &[("since", &token), ("timeout", "1500")]).await;
    assert!(started.elapsed() >= Duration::from_millis(1300), "returned early after {:?}: {body}", started.elapsed());
    assert!(!body.to_string().contains(bobs_room.as_str()), "bob's room leaked: {body}");
    assert!(body["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()), "{body}");
}

#[tokio::test]
async fn rejected_invite_appears_in_leave_section() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Rejected", false).await;
    invite(&alice, &room_id, &bob).await;
    let token = next_batch(&sync(&bob, &[]).await);

    leave(&bob, &room_id).await; // rejects the invite
    let body = sync(&bob, &[("since", &token)]).await;
    assert!(room(&body, "invite", &room_id).is_none(), "{body}");
    assert!(room(&body, "leave", &room_id).is_some(), "rejected invite must show up in rooms.leave: {body}");
    let initial = sync(&bob, &[]).await;
    assert!(room(&initial, "invite", &room_id).is_none(), "rejected invite still listed: {initial}");
}

#[tokio::test]
async fn knocked_room_has_knock_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "Knock Knock", false).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(room_id.as_str()));
    let (status, body) = alice.raw("PUT", &path, Some(r#"{"join_rule":"knock"}"#)).await;
    assert_eq!(status, 200, "{body}");
    let token = next_batch(&sync(&bob, &[]).await);

    let (status, body) =
        bob.raw("POST", &format!("/_matrix/client/v3/knock/{}", enc(room_id.as_str())), Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    let body = sync(&bob, &[("since", &token)]).await;
    let knocked = room(&body, "knock", &room_id).unwrap_or_else(|| panic!("room not in rooms.knock: {body}"));
    let state = events(&knocked["knock_state"]);
    let member = find_state(&state, "m.room.member", bob.user_id().as_str()).unwrap_or_else(|| panic!("{knocked}"));
    assert_eq!(member["content"]["membership"], "knock");
    assert_eq!(find_state(&state, "m.room.join_rules", "").expect("join_rules")["content"]["join_rule"], "knock");
    assert_eq!(find_state(&state, "m.room.name", "").expect("name")["content"]["name"], "Knock Knock");
    assert!(room(&body, "join", &room_id).is_none() && room(&body, "invite", &room_id).is_none(), "{body}");
}
