//! Integration tests: messages — sending with transaction-id idempotency, /messages pagination
//! (backward and forward, tokens, `to`), /messages filters (types, not_types, senders,
//! lazy-loaded members), /context, GET /event, and history visibility (joined, shared,
//! invited, world_readable, after leaving).

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedTransactionId, RoomId, TransactionId, UInt,
    api::{
        Direction,
        client::{
            context::get_context,
            filter::LazyLoadOptions,
            membership::{invite_user, leave_room},
            message::{get_message_events, send_message_event},
            room::create_room,
            sync::sync_events,
        },
    },
    events::room::message::RoomMessageEventContent,
    uint,
};
use serde_json::{Value, json};

use crate::{
    harness::{Client, MatrixError, TestServer},
    rooms::{
        create_private_room, create_public_room, create_room_with, get_event, join, json_of, raw, send_event,
        send_text, try_get_event,
    },
};

// ---------------------------------------------------------------------------------------------
// Helpers

async fn send_with_txn(
    client: &Client,
    room_id: &RoomId,
    txn: &TransactionId,
    body: &str,
) -> Result<OwnedEventId, MatrixError> {
    let content = RoomMessageEventContent::text_plain(body);
    let request = send_message_event::v3::Request::new(room_id.to_owned(), txn.to_owned(), &content).unwrap();
    client.try_send(request).await.map(|r| r.event_id)
}

#[derive(Debug)]
struct Page {
    chunk: Vec<Value>,
    state: Vec<Value>,
    start: String,
    end: Option<String>,
}

async fn try_messages(
    client: &Client,
    room_id: &RoomId,
    dir: Direction,
    from: Option<&str>,
    limit: u32,
    f: impl FnOnce(&mut get_message_events::v3::Request),
) -> Result<Page, MatrixError> {
    let mut request = get_message_events::v3::Request::new(room_id.to_owned(), dir);
    request.from = from.map(str::to_owned);
    request.limit = UInt::from(limit);
    f(&mut request);
    let response = client.try_send(request).await?;
    Ok(Page {
        chunk: response.chunk.iter().map(json_of).collect(),
        state: response.state.iter().map(json_of).collect(),
        start: response.start,
        end: response.end,
    })
}

async fn messages(client: &Client, room_id: &RoomId, dir: Direction, from: Option<&str>, limit: u32) -> Page {
    try_messages(client, room_id, dir, from, limit, |_| {})
        .await
        .unwrap_or_else(|e| panic!("/messages: {} {}", e.status, e.body))
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

/// Pages through the whole room; returns the events in the order received and the page count.
async fn paginate_all(client: &Client, room_id: &RoomId, dir: Direction, limit: u32) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = messages(client, room_id, dir, from.as_deref(), limit).await;
        pages += 1;
        assert!(page.chunk.len() <= limit as usize, "page larger than limit: {}", page.chunk.len());
        all.extend(page.chunk.iter().cloned());
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
        assert!(pages < 100, "pagination does not terminate");
    }
    (all, pages)
}

async fn sync_token(client: &Client) -> String {
    client.send(sync_events::v3::Request::new()).await.next_batch
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn invite(client: &Client, room_id: &RoomId, user: &ruma::UserId) {
    let recipient = invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user.to_owned()));
    client.send(invite_user::v3::Request::new(room_id.to_owned(), recipient)).await;
}

async fn room_with_visibility(client: &Client, visibility: &str) -> OwnedRoomId {
    create_room_with(client, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.initial_state = vec![raw(json!({
            "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": visibility }
        }))];
    })
    .await
}

async fn login_again(server: &TestServer, user: &ruma::UserId, device: Option<&str>) -> Client {
    use ruma::api::client::{
        session::login,
        uiaa::{MatrixUserIdentifier, UserIdentifier},
    };
    let mut request = login::v3::Request::new(login::v3::LoginInfo::Password(login::v3::Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_string())),
        "password".into(),
    )));
    request.device_id = device.map(Into::into);
    let response = server.client().send(request).await;
    let mut client = server.client();
    client.token = Some(response.access_token);
    client.user_id = Some(response.user_id);
    client.device_id = Some(response.device_id);
    client
}

// ---------------------------------------------------------------------------------------------
// Sending and transaction ids

#[tokio::test]
async fn same_txn_id_returns_same_event_and_sends_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let txn = TransactionId::new();
    let first = send_with_txn(&alice, &room_id, &txn, "only once").await.unwrap();
    let second = send_with_txn(&alice, &room_id, &txn, "only once").await.unwrap();
    assert_eq!(first, second);
    // Even with different content the same transaction is the same event.
    let third = send_with_txn(&alice, &room_id, &txn, "different body").await.unwrap();
    assert_eq!(first, third);
    let page = messages(&alice, &room_id, Direction::Backward, None, 50).await;
    assert_eq!(bodies(&page.chunk), vec!["only once".to_owned()]);
}

#[tokio::test]
async fn same_txn_id_in_another_room_is_a_new_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room1 = create_private_room(&alice).await;
    let room2 = create_private_room(&alice).await;
    let txn: OwnedTransactionId = "abc".into();
    let first = send_with_txn(&alice, &room1, &txn, "first").await.unwrap();
    let second = send_with_txn(&alice, &room2, &txn, "first").await.unwrap();
    assert_ne!(first, second);
    assert_eq!(get_event(&alice, &room2, &second).await["room_id"], room2.as_str());
    assert_eq!(bodies(&messages(&alice, &room2, Direction::Backward, None, 50).await.chunk), vec!["first".to_owned()]);
}

#[tokio::test]
async fn txn_ids_are_scoped_to_the_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let other = login_again(&server, alice.user_id(), None).await;
    let room_id = create_private_room(&alice).await;
    let txn: OwnedTransactionId = "same".into();
    let first = send_with_txn(&alice, &room_id, &txn, "from device 1").await.unwrap();
    let second = send_with_txn(&other, &room_id, &txn, "from device 2").await.unwrap();
    assert_ne!(first, second);
}

/// Spec (v1.7+): a transaction id is scoped to a client session, i.e. an access token; two
/// logins reusing one device id are two sessions (Complement TestTxnIdempotencyScopedToClientSession).
#[tokio::test]
async fn txn_ids_are_scoped_to_the_access_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let device = alice.device_id.clone().unwrap();
    let room_id = create_private_room(&alice).await;
    let txn: OwnedTransactionId = "abcdef".into();
    let first = send_with_txn(&alice, &room_id, &txn, "foo").await.unwrap();
    let second_session = login_again(&server, alice.user_id(), Some(device.as_str())).await;
    let second = send_with_txn(&second_session, &room_id, &txn, "foo").await.unwrap();
    assert_ne!(first, second);
}

#[tokio::test]
async fn transaction_id_is_returned_to_the_sender_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let other_device = login_again(&server, alice.user_id(), None).await;
    let room_id = create_private_room(&alice).await;
    let event_id = send_with_txn(&alice, &room_id, &OwnedTransactionId::from("abcdefg"), "first").await.unwrap();
    let event = get_event(&alice, &room_id, &event_id).await;
    assert_eq!(event["unsigned"]["transaction_id"], "abcdefg", "{event}");
    let page = messages(&alice, &room_id, Direction::Backward, None, 1).await;
    assert_eq!(page.chunk[0]["unsigned"]["transaction_id"], "abcdefg", "{:?}", page.chunk);
    let event = get_event(&other_device, &room_id, &event_id).await;
    assert!(event["unsigned"].get("transaction_id").is_none(), "{event}");
}

/// Complement TestTxnScopeOnLocalEcho: another session on the same device id does not get it.
#[tokio::test]
async fn transaction_id_is_not_returned_to_another_session_of_the_same_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let device = alice.device_id.clone().unwrap();
    let room_id = create_private_room(&alice).await;
    let event_id = send_with_txn(&alice, &room_id, &OwnedTransactionId::from("abdefgh"), "first").await.unwrap();
    let second_session = login_again(&server, alice.user_id(), Some(device.as_str())).await;
    let event = get_event(&second_session, &room_id, &event_id).await;
    assert!(event["unsigned"].get("transaction_id").is_none(), "{event}");
}

#[tokio::test]
async fn custom_event_types_round_trip() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let content = json!({ "nested": { "list": [1, 2, 3], "flag": true }, "text": "ünïcödé" });
    let event_id = send_event(&alice, &room_id, "org.example.custom", content.clone()).await;
    let event = get_event(&alice, &room_id, &event_id).await;
    assert_eq!(event["type"], "org.example.custom");
    assert_eq!(event["content"], content);
    assert!(event.get("state_key").is_none(), "{event}");
}

#[tokio::test]
async fn event_over_64k_is_too_large() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let body = json!({ "msgtype": "m.text", "body": "x".repeat(70_000) }).to_string();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/big1");
    let (status, body) = alice.raw("PUT", &path, Some(&body)).await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{body}");
    let state_path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/");
    let big = json!({ "topic": "y".repeat(70_000) }).to_string();
    let (status, body) = alice.raw("PUT", &state_path, Some(&big)).await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{body}");
}

// ---------------------------------------------------------------------------------------------
// /messages pagination

#[tokio::test]
async fn messages_backward_pagination_returns_every_message_once_in_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    for i in 0..50 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let (events, pages) = paginate_all(&alice, &room_id, Direction::Backward, 10).await;
    let want: Vec<String> = (0..50).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&events), want);
    assert!(pages >= 6, "50 messages + state in pages of 10: {pages} pages");
    let mut unique = ids(&events);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), events.len(), "an event appeared twice");
    // The last page reaches the create event.
    assert_eq!(events.last().unwrap()["type"], "m.room.create");
}

#[tokio::test]
async fn messages_forward_pagination_returns_every_message_once_in_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    for i in 0..50 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let (events, _) = paginate_all(&alice, &room_id, Direction::Forward, 10).await;
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&events), want);
    assert_eq!(events.first().unwrap()["type"], "m.room.create", "forward without `from` starts at the beginning");
    let mut unique = ids(&events);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), events.len(), "an event appeared twice");
}

#[tokio::test]
async fn messages_backward_then_forward_from_tokens() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    for i in 0..20 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let latest = messages(&alice, &room_id, Direction::Backward, None, 5).await;
    assert_eq!(bodies(&latest.chunk), vec!["m19", "m18", "m17", "m16", "m15"]);
    let older = messages(&alice, &room_id, Direction::Backward, latest.end.as_deref(), 5).await;
    assert_eq!(bodies(&older.chunk), vec!["m14", "m13", "m12", "m11", "m10"]);
    // Going forward from the end of the older page gives back the newer page's events.
    let forward = messages(&alice, &room_id, Direction::Forward, older.end.as_deref(), 10).await;
    assert_eq!(bodies(&forward.chunk), vec!["m10", "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19"]);
    // Forward from the newest page's start: nothing new.
    let nothing = messages(&alice, &room_id, Direction::Forward, Some(&latest.start), 10).await;
    assert!(nothing.chunk.is_empty(), "{:?}", nothing.chunk);
    assert!(nothing.end.is_none() || nothing.chunk.is_empty());
}

#[tokio::test]
async fn messages_respects_the_to_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    send_text(&alice, &room_id, "before").await;
    let from = sync_token(&alice).await;
    send_text(&alice, &room_id, "a").await;
    send_text(&alice, &room_id, "b").await;
    let to = sync_token(&alice).await;
    send_text(&alice, &room_id, "after").await;
    let page =
        try_messages(&alice, &room_id, Direction::Forward, Some(&from), 50, |r| r.to = Some(to.clone())).await.unwrap();
    assert_eq!(bodies(&page.chunk), vec!["a", "b"]);
    let page = try_messages(&alice, &room_id, Direction::Backward, Some(&to), 50, |r| r.to = Some(from.clone()))
        .await
        .unwrap();
    assert_eq!(bodies(&page.chunk), vec!["b", "a"]);
}

#[tokio::test]
async fn messages_from_a_sync_token_forward() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let token = sync_token(&alice).await;
    send_text(&alice, &room_id, "TestSendAndFetchMessage").await;
    let page = messages(&alice, &room_id, Direction::Forward, Some(&token), 10).await;
    assert_eq!(bodies(&page.chunk), vec!["TestSendAndFetchMessage"]);
    assert_eq!(page.chunk.len(), 1, "{:?}", page.chunk);
}

#[tokio::test]
async fn messages_with_invalid_token_is_400() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let error = try_messages(&alice, &room_id, Direction::Backward, Some("garbage!"), 10, |_| {}).await.unwrap_err();
    assert_eq!(error.status, 400, "{}", error.body);
}

#[tokio::test]
async fn messages_from_non_existent_room_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id: OwnedRoomId = "!does-not-exist:ieum.test".try_into().unwrap();
    let error = try_messages(&alice, &room_id, Direction::Backward, None, 10, |_| {}).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn messages_events_have_client_format() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let event_id = send_text(&alice, &room_id, "shape").await;
    let page = messages(&alice, &room_id, Direction::Backward, None, 1).await;
    let event = &page.chunk[0];
    assert_eq!(event["event_id"], event_id.as_str());
    assert_eq!(event["room_id"], room_id.as_str());
    assert_eq!(event["sender"], alice.user_id().as_str());
    assert!(event["origin_server_ts"].is_u64());
    for federation_field in ["auth_events", "prev_events", "hashes", "signatures", "depth"] {
        assert!(event.get(federation_field).is_none(), "client event leaks {federation_field}: {event}");
    }
}

// ---------------------------------------------------------------------------------------------
// /messages filters

async fn room_with_two_senders(server: &TestServer) -> (Client, Client, OwnedRoomId) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "a1").await;
    send_event(&bob, &room_id, "org.example.other", json!({ "x": 1 })).await;
    send_text(&bob, &room_id, "b1").await;
    send_text(&alice, &room_id, "a2").await;
    (alice, bob, room_id)
}

#[tokio::test]
async fn messages_filter_types() {
    let server = TestServer::start().await;
    let (alice, _bob, room_id) = room_with_two_senders(&server).await;
    let page = try_messages(&alice, &room_id, Direction::Backward, None, 50, |r| {
        r.filter.types = Some(vec!["m.room.message".into()]);
    })
    .await
    .unwrap();
    assert!(page.chunk.iter().all(|e| e["type"] == "m.room.message"), "{:?}", page.chunk);
    assert_eq!(bodies(&page.chunk), vec!["a2", "b1", "a1"]);
}

#[tokio::test]
async fn messages_filter_not_types() {
    let server = TestServer::start().await;
    let (alice, _bob, room_id) = room_with_two_senders(&server).await;
    let page = try_messages(&alice, &room_id, Direction::Backward, None, 50, |r| {
        r.filter.not_types = vec!["m.room.message".into(), "m.room.member".into()];
    })
    .await
    .unwrap();
    assert!(!page.chunk.is_empty());
    assert!(
        page.chunk.iter().all(|e| e["type"] != "m.room.message" && e["type"] != "m.room.member"),
        "{:?}",
        page.chunk
    );
    assert!(page.chunk.iter().any(|e| e["type"] == "org.example.other"));
}

#[tokio::test]
async fn messages_filter_senders() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_two_senders(&server).await;
    let page = try_messages(&alice, &room_id, Direction::Backward, None, 50, |r| {
        r.filter.senders = Some(vec![bob.user_id().to_owned()]);
    })
    .await
    .unwrap();
    assert!(!page.chunk.is_empty());
    assert!(page.chunk.iter().all(|e| e["sender"] == bob.user_id().as_str()), "{:?}", page.chunk);
    assert_eq!(bodies(&page.chunk), vec!["b1"]);
    let page = try_messages(&alice, &room_id, Direction::Backward, None, 50, |r| {
        r.filter.not_senders = vec![bob.user_id().to_owned()];
        r.filter.types = Some(vec!["m.room.message".into()]);
    })
    .await
    .unwrap();
    assert_eq!(bodies(&page.chunk), vec!["a2", "a1"]);
}

#[tokio::test]
async fn messages_filter_with_limit_still_fills_the_page() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    for i in 0..30 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
        send_event(&alice, &room_id, "org.example.noise", json!({ "i": i })).await;
    }
    let page = try_messages(&alice, &room_id, Direction::Backward, None, 10, |r| {
        r.filter.types = Some(vec!["m.room.message".into()]);
    })
    .await
    .unwrap();
    let want: Vec<String> = (20..30).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&page.chunk), want);
    let next = try_messages(&alice, &room_id, Direction::Backward, page.end.as_deref(), 10, |r| {
        r.filter.types = Some(vec!["m.room.message".into()]);
    })
    .await
    .unwrap();
    let want: Vec<String> = (10..20).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&next.chunk), want);
}

#[tokio::test]
async fn messages_lazy_load_members_returns_senders_member_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    join(&charlie, &room_id).await;
    send_text(&bob, &room_id, "test").await;
    let before = sync_token(&alice).await;
    send_text(&charlie, &room_id, "test").await;
    let after = sync_token(&alice).await;
    let page = try_messages(&alice, &room_id, Direction::Forward, Some(&before), 10, |r| {
        r.to = Some(after.clone());
        r.filter.lazy_load_options = LazyLoadOptions::Enabled { include_redundant_members: false };
    })
    .await
    .unwrap();
    assert_eq!(page.chunk.len(), 1, "{:?}", page.chunk);
    assert_eq!(page.state.len(), 1, "{:?}", page.state);
    assert_eq!(page.state[0]["type"], "m.room.member");
    assert_eq!(page.state[0]["state_key"], charlie.user_id().as_str());
    assert_eq!(page.state[0]["content"]["membership"], "join");
}

#[tokio::test]
async fn messages_lazy_load_members_with_raw_filter_query() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let token = sync_token(&alice).await;
    send_text(&alice, &room_id, "test").await;
    let filter = encode(r#"{ "lazy_load_members" : true }"#);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&from={}&filter={filter}", encode(&token));
    let (status, body) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    let state = body["state"].as_array().expect("state");
    assert_eq!(state.len(), 1, "{body}");
    assert_eq!(state[0]["state_key"], alice.user_id().as_str());
}

// ---------------------------------------------------------------------------------------------
// /context

#[tokio::test]
async fn context_returns_events_around_and_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_room_with(&alice, |r| r.name = Some("Ctx".into())).await;
    let mut event_ids = Vec::new();
    for i in 0..10 {
        event_ids.push(send_text(&alice, &room_id, &format!("m{i}")).await);
    }
    let mut request = get_context::v3::Request::new(room_id.clone(), event_ids[5].clone());
    request.limit = uint!(4);
    let response = alice.send(request).await;
    let event = json_of(response.event.as_ref().expect("event"));
    assert_eq!(event["event_id"], event_ids[5].as_str());
    let before: Vec<Value> = response.events_before.iter().map(json_of).collect();
    let after: Vec<Value> = response.events_after.iter().map(json_of).collect();
    assert!(before.len() + after.len() <= 4, "limit covers before+after: {} {}", before.len(), after.len());
    assert!(!before.is_empty() && !after.is_empty());
    // events_before is reverse-chronological, events_after chronological.
    assert_eq!(bodies(&before)[0], "m4");
    assert_eq!(bodies(&after)[0], "m6");
    let state: Vec<Value> = response.state.iter().map(json_of).collect();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{state:?}");
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Ctx"), "{state:?}");
    assert!(state.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id().as_str()));

    // The tokens continue the pagination on both sides.
    let start = response.start.expect("start");
    let end = response.end.expect("end");
    let older = messages(&alice, &room_id, Direction::Backward, Some(&start), 1).await;
    let last_before = bodies(&before).last().cloned().unwrap();
    let expected_older = format!("m{}", last_before[1..].parse::<u32>().unwrap() - 1);
    assert_eq!(bodies(&older.chunk), vec![expected_older]);
    let newer = messages(&alice, &room_id, Direction::Forward, Some(&end), 1).await;
    let last_after = bodies(&after).last().cloned().unwrap();
    let expected_newer = format!("m{}", last_after[1..].parse::<u32>().unwrap() + 1);
    assert_eq!(bodies(&newer.chunk), vec![expected_newer]);
}

#[tokio::test]
async fn context_of_unknown_event_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let unknown: OwnedEventId = "$unknownevent000000000000000000000000000000".try_into().unwrap();
    let error = alice.try_send(get_context::v3::Request::new(room_id, unknown)).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn context_respects_history_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "joined").await;
    send_text(&alice, &room_id, "hidden").await;
    join(&bob, &room_id).await;
    let visible = send_text(&alice, &room_id, "visible").await;
    let mut request = get_context::v3::Request::new(room_id.clone(), visible);
    request.limit = uint!(20);
    let response = bob.send(request).await;
    let before: Vec<Value> = response.events_before.iter().map(json_of).collect();
    assert!(!bodies(&before).contains(&"hidden".to_owned()), "{before:?}");
}

// ---------------------------------------------------------------------------------------------
// GET /event

#[tokio::test]
async fn get_event_returns_the_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "shared").await;
    join(&bob, &room_id).await;
    let event_id = send_text(&alice, &room_id, "Hello world").await;
    let event = get_event(&bob, &room_id, &event_id).await;
    assert_eq!(event["content"], json!({ "msgtype": "m.text", "body": "Hello world" }));
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(event["room_id"], room_id.as_str());
    assert_eq!(event["sender"], alice.user_id().as_str());
    assert_eq!(event["event_id"], event_id.as_str());
    assert!(event["origin_server_ts"].is_u64());
}

#[tokio::test]
async fn get_unknown_event_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let unknown: OwnedEventId = "$unknownevent000000000000000000000000000000".try_into().unwrap();
    let error = try_get_event(&alice, &room_id, &unknown).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn get_event_through_the_wrong_room_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room1 = create_private_room(&alice).await;
    let room2 = create_private_room(&alice).await;
    let event_id = send_text(&alice, &room1, "in room 1").await;
    let error = try_get_event(&alice, &room2, &event_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

/// Complement TestFetchEventNonWorldReadable: a non-member gets 404 (no leak of existence).
#[tokio::test]
async fn get_event_in_room_you_are_not_in_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = room_with_visibility(&alice, "shared").await;
    let event_id = send_text(&alice, &room_id, "members only").await;
    let error = try_get_event(&eve, &room_id, &event_id).await.unwrap_err();
    assert_eq!(error.status, 404, "{}", error.body);
    assert!(error.body.get("content").is_none());
}

// ---------------------------------------------------------------------------------------------
// History visibility

#[tokio::test]
async fn joined_visibility_hides_history_before_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "joined").await;
    let early = send_text(&alice, &room_id, "before bob").await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "after bob").await;
    let (events, _) = paginate_all(&bob, &room_id, Direction::Backward, 10).await;
    assert_eq!(bodies(&events), vec!["after bob"]);
    let error = try_get_event(&bob, &room_id, &early).await.unwrap_err();
    assert_eq!(error.status, 404, "{}", error.body);
    // Forward from the beginning as well.
    let (events, _) = paginate_all(&bob, &room_id, Direction::Forward, 10).await;
    assert_eq!(bodies(&events), vec!["after bob"]);
    // Alice (joined throughout) sees both.
    let (events, _) = paginate_all(&alice, &room_id, Direction::Backward, 10).await;
    assert_eq!(bodies(&events), vec!["after bob", "before bob"]);
}

#[tokio::test]
async fn shared_visibility_shows_history_before_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "shared").await;
    let early = send_text(&alice, &room_id, "before bob").await;
    join(&bob, &room_id).await;
    let (events, _) = paginate_all(&bob, &room_id, Direction::Backward, 10).await;
    assert_eq!(bodies(&events), vec!["before bob"]);
    assert_eq!(get_event(&bob, &room_id, &early).await["content"]["body"], "before bob");
}

#[tokio::test]
async fn invited_visibility_shows_events_from_the_invite_on() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "invited").await;
    let before_invite = send_text(&alice, &room_id, "before invite").await;
    invite(&alice, &room_id, bob.user_id()).await;
    let between = send_text(&alice, &room_id, "between").await;
    join(&bob, &room_id).await;
    assert_eq!(get_event(&bob, &room_id, &between).await["content"]["body"], "between");
    let error = try_get_event(&bob, &room_id, &before_invite).await.unwrap_err();
    assert_eq!(error.status, 404, "{}", error.body);
    let (events, _) = paginate_all(&bob, &room_id, Direction::Backward, 10).await;
    assert_eq!(bodies(&events), vec!["between"]);
}

#[tokio::test]
async fn world_readable_room_is_readable_by_non_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = room_with_visibility(&alice, "world_readable").await;
    let event_id = send_text(&alice, &room_id, "Hello world").await;
    let event = get_event(&bob, &room_id, &event_id).await;
    assert_eq!(event["content"]["body"], "Hello world");
    let page = messages(&bob, &room_id, Direction::Backward, None, 10).await;
    assert_eq!(bodies(&page.chunk), vec!["Hello world"]);
}

#[tokio::test]
async fn non_member_cannot_read_messages_of_shared_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = room_with_visibility(&alice, "shared").await;
    send_text(&alice, &room_id, "private").await;
    let error = try_messages(&eve, &room_id, Direction::Backward, None, 10, |_| {}).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn departed_user_cannot_see_messages_after_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "while bob is here").await;
    bob.send(leave_room::v3::Request::new(room_id.clone())).await;
    let later = send_text(&alice, &room_id, "after bob left").await;
    let (events, _) = paginate_all(&bob, &room_id, Direction::Backward, 10).await;
    assert_eq!(bodies(&events), vec!["while bob is here"]);
    let error = try_get_event(&bob, &room_id, &later).await.unwrap_err();
    assert_eq!(error.status, 404, "{}", error.body);
    // Forward pagination also stops at the leave.
    let (events, _) = paginate_all(&bob, &room_id, Direction::Forward, 10).await;
    assert_eq!(bodies(&events), vec!["while bob is here"]);
}
