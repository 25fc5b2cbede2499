//! Ephemeral room data: typing notifications (set, stop, expiry, who may set them), read
//! receipts (public, private, threaded, never backwards), read markers, and presence (set
//! by syncing, seen by room sharers only, last activity kept while idle).

use std::time::{Duration, Instant};

use ruma::{
    OwnedRoomId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        typing::create_typing_event::{
            self,
            v3::{Typing, TypingInfo},
        },
    },
    events::receipt::ReceiptThread,
};
use serde_json::{Value, json};

use crate::{
    harness::{Client, TestServer},
    sync::{create_public_room, enc, ephemeral_of, events, join, joined, leave, next_batch, room, send_text, sync},
};

async fn typing(client: &Client, room_id: &OwnedRoomId, on: Option<Duration>) {
    let state = match on {
        Some(timeout) => Typing::Yes(TypingInfo::new(timeout)),
        None => Typing::No,
    };
    client.send(create_typing_event::v3::Request::new(client.user_id().to_owned(), room_id.clone(), state)).await;
}

/// The `user_ids` of the single `m.typing` event in a joined room of a sync response.
fn typing_users(body: &Value, room_id: &OwnedRoomId) -> Vec<String> {
    let typing = ephemeral_of(joined(body, room_id), "m.typing");
    assert_eq!(typing.len(), 1, "expected one m.typing event: {body}");
    typing[0]["content"]["user_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("m.typing without user_ids: {body}"))
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The merged `m.receipt` content of a joined room in a sync response (empty if none).
fn receipts(body: &Value, room_id: &OwnedRoomId) -> Value {
    let Some(room) = room(body, "join", room_id) else { return json!({}) };
    let mut merged = serde_json::Map::new();
    for event in ephemeral_of(room, "m.receipt") {
        assert!(event.get("room_id").is_none(), "receipt events must not carry room_id: {event}");
        for (event_id, by_type) in event["content"].as_object().cloned().unwrap_or_default() {
            let entry = merged.entry(event_id).or_insert_with(|| json!({}));
            for (kind, users) in by_type.as_object().cloned().unwrap_or_default() {
                let slot = entry.as_object_mut().unwrap().entry(kind).or_insert_with(|| json!({}));
                for (user, data) in users.as_object().cloned().unwrap_or_default() {
                    slot.as_object_mut().unwrap().insert(user, data);
                }
            }
        }
    }
    Value::Object(merged)
}

async fn two_members(server: &TestServer) -> (Client, Client, OwnedRoomId) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    (alice, bob, room_id)
}

fn typing_path(room_id: &OwnedRoomId, user: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room_id.as_str()), enc(user))
}

// ---------------------------------------------------------------------------------------------
// Typing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn typing_notification_is_seen_by_other_member() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let token = next_batch(&sync(&alice, &[]).await);

    typing(&bob, &room_id, Some(Duration::from_secs(30))).await;
    let body = sync(&alice, &[("since", &token)]).await;
    assert_eq!(typing_users(&body, &room_id), vec![bob.user_id().to_string()]);
    let event = &ephemeral_of(joined(&body, &room_id), "m.typing")[0];
    assert!(event.get("room_id").is_none(), "typing events must not carry room_id: {event}");
}

#[tokio::test]
async fn typing_appears_in_initial_sync() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    typing(&bob, &room_id, Some(Duration::from_secs(30))).await;

    let body = sync(&alice, &[]).await;
    assert_eq!(typing_users(&body, &room_id), vec![bob.user_id().to_string()]);
}

#[tokio::test]
async fn typing_can_be_explicitly_stopped() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    typing(&bob, &room_id, Some(Duration::from_secs(30))).await;
    let body = sync(&alice, &[]).await;
    assert_eq!(typing_users(&body, &room_id), vec![bob.user_id().to_string()]);

    typing(&bob, &room_id, None).await;
    let body = sync(&alice, &[("since", &next_batch(&body))]).await;
    assert!(typing_users(&body, &room_id).is_empty(), "typing stopped, list must be empty: {body}");
}

#[tokio::test]
async fn typing_lists_several_users() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let carol = server.register("carol").await;
    join(&carol, &room_id).await;
    let token = next_batch(&sync(&alice, &[]).await);

    typing(&bob, &room_id, Some(Duration::from_secs(30))).await;
    typing(&carol, &room_id, Some(Duration::from_secs(30))).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let mut users = typing_users(&body, &room_id);
    users.sort();
    let mut expected = vec![bob.user_id().to_string(), carol.user_id().to_string()];
    expected.sort();
    assert_eq!(users, expected, "m.typing replaces the whole list, so it must hold everyone typing");
}

#[tokio::test]
async fn typing_expires_after_its_timeout() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    typing(&bob, &room_id, Some(Duration::from_millis(1500))).await;
    let body = sync(&alice, &[]).await;
    assert_eq!(typing_users(&body, &room_id), vec![bob.user_id().to_string()]);

    // Nothing else happens: the expiry alone must wake a long-poll with an empty list.
    let started = Instant::now();
    let body = sync(&alice, &[("since", &next_batch(&body)), ("timeout", "10000")]).await;
    let elapsed = started.elapsed();
    assert!(typing_users(&body, &room_id).is_empty(), "typing should have expired: {body}");
    assert!(elapsed < Duration::from_secs(5), "expiry of a 1.5 s typing notification took {elapsed:?}");
}

#[tokio::test]
async fn cannot_set_typing_for_another_user() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let (status, body) = bob
        .raw("PUT", &typing_path(&room_id, alice.user_id().as_str()), Some(r#"{"typing":true,"timeout":30000}"#))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    // And nobody is shown as typing.
    let synced = sync(&bob, &[]).await;
    assert!(
        ephemeral_of(joined(&synced, &room_id), "m.typing").iter().all(|e| e["content"]["user_ids"] == json!([])),
        "{synced}"
    );
}

#[tokio::test]
async fn cannot_set_typing_in_a_room_not_joined() {
    let server = TestServer::start().await;
    let (_alice, _bob, room_id) = two_members(&server).await;
    let carol = server.register("carol").await;
    let (status, body) = carol
        .raw("PUT", &typing_path(&room_id, carol.user_id().as_str()), Some(r#"{"typing":true,"timeout":30000}"#))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
}

// ---------------------------------------------------------------------------------------------
// Receipts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn read_receipt_is_seen_by_other_member() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "hello").await;
    let token = next_batch(&sync(&alice, &[]).await);

    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, event_id.clone())).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let content = receipts(&body, &room_id);
    let receipt = &content[event_id.as_str()]["m.read"][bob.user_id().as_str()];
    assert!(receipt["ts"].is_u64(), "m.read receipt with ts expected: {content}");
    assert!(receipt.get("thread_id").is_none(), "unthreaded receipt has no thread_id: {receipt}");

    // Also in a fresh initial sync.
    let initial = sync(&alice, &[]).await;
    assert!(
        receipts(&initial, &room_id)[event_id.as_str()]["m.read"][bob.user_id().as_str()]["ts"].is_u64(),
        "{initial}"
    );
}

#[tokio::test]
async fn private_read_receipt_is_visible_only_to_its_owner() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "secretly read").await;
    let alice_token = next_batch(&sync(&alice, &[]).await);
    let bob_token = next_batch(&sync(&bob, &[]).await);

    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::ReadPrivate, event_id.clone())).await;

    let own = sync(&bob, &[("since", &bob_token)]).await;
    let content = receipts(&own, &room_id);
    assert!(
        content[event_id.as_str()]["m.read.private"][bob.user_id().as_str()]["ts"].is_u64(),
        "owner must see it: {own}"
    );

    for body in [sync(&alice, &[("since", &alice_token)]).await, sync(&alice, &[]).await] {
        let content = receipts(&body, &room_id);
        assert!(!content.to_string().contains("m.read.private"), "private receipt leaked to another user: {content}");
        assert!(!content.to_string().contains(bob.user_id().as_str()), "bob's private read leaked: {content}");
    }
}

#[tokio::test]
async fn threaded_main_receipt_carries_thread_id() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "main timeline").await;
    let token = next_batch(&sync(&alice, &[]).await);

    let mut request = create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, event_id.clone());
    request.thread = ReceiptThread::Main;
    bob.send(request).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let receipt = &receipts(&body, &room_id)[event_id.as_str()]["m.read"][bob.user_id().as_str()];
    assert_eq!(receipt["thread_id"], "main", "{body}");
    assert!(receipt["ts"].is_u64(), "{body}");
}

#[tokio::test]
async fn threaded_and_unthreaded_receipts_are_independent() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let first = send_text(&alice, &room_id, "first").await;
    let second = send_text(&alice, &room_id, "second").await;

    // Unthreaded on the newer event, then main-thread on the older one: both stand.
    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, second.clone())).await;
    let mut request = create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, first.clone());
    request.thread = ReceiptThread::Main;
    bob.send(request).await;

    let body = sync(&alice, &[]).await;
    let content = receipts(&body, &room_id);
    let bob_id = bob.user_id().as_str();
    assert!(content[second.as_str()]["m.read"][bob_id].get("thread_id").is_none(), "{content}");
    assert_eq!(content[first.as_str()]["m.read"][bob_id]["thread_id"], "main", "{content}");
}

#[tokio::test]
async fn receipts_do_not_move_backwards() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let older = send_text(&alice, &room_id, "older").await;
    let newer = send_text(&alice, &room_id, "newer").await;

    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, newer.clone())).await;
    let token = next_batch(&sync(&alice, &[]).await);
    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, older.clone())).await;

    // The backwards receipt is not announced...
    let body = sync(&alice, &[("since", &token)]).await;
    let content = receipts(&body, &room_id);
    assert!(content.get(older.as_str()).is_none(), "a receipt moved backwards: {content}");
    // ...and the stored receipt still points at the newer event.
    let initial = sync(&alice, &[]).await;
    let content = receipts(&initial, &room_id);
    assert!(content[newer.as_str()]["m.read"][bob.user_id().as_str()]["ts"].is_u64(), "{content}");
    assert!(content.get(older.as_str()).is_none(), "{content}");
}

#[tokio::test]
async fn receipt_moves_forward_and_replaces_the_old_one() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let older = send_text(&alice, &room_id, "older").await;
    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, older.clone())).await;
    let newer = send_text(&alice, &room_id, "newer").await;
    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::Read, newer.clone())).await;

    let content = receipts(&sync(&alice, &[]).await, &room_id);
    let bob_id = bob.user_id().as_str();
    assert!(content[newer.as_str()]["m.read"][bob_id]["ts"].is_u64(), "{content}");
    assert!(content[older.as_str()]["m.read"].get(bob_id).is_none(), "one m.read per user and thread: {content}");
}

// ---------------------------------------------------------------------------------------------
// Read markers
// ---------------------------------------------------------------------------------------------

fn fully_read_path(client: &Client, room_id: &OwnedRoomId) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
        enc(client.user_id().as_str()),
        enc(room_id.as_str())
    )
}

#[tokio::test]
async fn read_markers_set_fully_read_and_read_receipt() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "marker").await;
    let alice_token = next_batch(&sync(&alice, &[]).await);
    let bob_token = next_batch(&sync(&bob, &[]).await);

    let mut request = set_read_marker::v3::Request::new(room_id.clone());
    request.fully_read = Some(event_id.clone());
    request.read_receipt = Some(event_id.clone());
    bob.send(request).await;

    // m.fully_read is readable as room account data...
    let (status, content) = bob.raw("GET", &fully_read_path(&bob, &room_id), None).await;
    assert_eq!(status, 200, "{content}");
    assert_eq!(content["event_id"], event_id.as_str());
    // ...and pushed down the owner's sync.
    let body = sync(&bob, &[("since", &bob_token)]).await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let marker =
        data.iter().find(|e| e["type"] == "m.fully_read").unwrap_or_else(|| panic!("no m.fully_read in sync: {body}"));
    assert_eq!(marker["content"]["event_id"], event_id.as_str());
    // The m.read part is an ordinary receipt.
    let body = sync(&alice, &[("since", &alice_token)]).await;
    assert!(receipts(&body, &room_id)[event_id.as_str()]["m.read"][bob.user_id().as_str()]["ts"].is_u64(), "{body}");
    // The fully-read marker itself is private.
    let alice_data = events(&joined(&body, &room_id)["account_data"]);
    assert!(alice_data.iter().all(|e| e["type"] != "m.fully_read"), "{body}");
}

#[tokio::test]
async fn read_markers_private_receipt_stays_private() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "marker").await;
    let token = next_batch(&sync(&alice, &[]).await);

    let mut request = set_read_marker::v3::Request::new(room_id.clone());
    request.private_read_receipt = Some(event_id.clone());
    bob.send(request).await;

    let own = receipts(&sync(&bob, &[]).await, &room_id);
    assert!(own[event_id.as_str()]["m.read.private"][bob.user_id().as_str()]["ts"].is_u64(), "{own}");
    let others = receipts(&sync(&alice, &[("since", &token)]).await, &room_id);
    assert!(!others.to_string().contains(bob.user_id().as_str()), "private receipt leaked: {others}");
}

#[tokio::test]
async fn fully_read_can_be_set_through_the_receipt_endpoint() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "marker").await;

    bob.send(create_receipt::v3::Request::new(room_id.clone(), ReceiptType::FullyRead, event_id.clone())).await;
    let (status, content) = bob.raw("GET", &fully_read_path(&bob, &room_id), None).await;
    assert_eq!(status, 200, "{content}");
    assert_eq!(content["event_id"], event_id.as_str());
    // It is a marker, not a receipt others can see.
    let body = sync(&alice, &[]).await;
    assert!(!receipts(&body, &room_id).to_string().contains("m.fully_read"), "{body}");
}

#[tokio::test]
async fn fully_read_marker_moves_with_later_read_markers() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let first = send_text(&alice, &room_id, "one").await;
    let second = send_text(&alice, &room_id, "two").await;

    let mut request = set_read_marker::v3::Request::new(room_id.clone());
    request.fully_read = Some(first.clone());
    bob.send(request).await;
    let token = next_batch(&sync(&bob, &[]).await);
    let mut request = set_read_marker::v3::Request::new(room_id.clone());
    request.fully_read = Some(second.clone());
    bob.send(request).await;

    let (_, content) = bob.raw("GET", &fully_read_path(&bob, &room_id), None).await;
    assert_eq!(content["event_id"], second.as_str());
    let body = sync(&bob, &[("since", &token)]).await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let marker = data.iter().find(|e| e["type"] == "m.fully_read").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(marker["content"]["event_id"], second.as_str());
}

#[tokio::test]
async fn typing_does_not_leak_to_users_outside_the_room() {
    let server = TestServer::start().await;
    let (_alice, bob, room_id) = two_members(&server).await;
    let carol = server.register("carol").await;
    let carol_room = create_public_room(&carol).await;
    let token = next_batch(&sync(&carol, &[]).await);

    typing(&bob, &room_id, Some(Duration::from_secs(30))).await;
    let body = sync(&carol, &[("since", &token), ("timeout", "1000")]).await;
    assert!(room(&body, "join", &room_id).is_none(), "carol is not in bob's room: {body}");
    assert!(
        room(&body, "join", &carol_room).is_none_or(|r| ephemeral_of(r, "m.typing").is_empty()),
        "typing leaked into carol's room: {body}"
    );
    let initial = sync(&carol, &[]).await;
    assert!(!initial.to_string().contains(bob.user_id().as_str()), "bob's typing leaked to carol: {initial}");
}

fn receipt_path(room_id: &OwnedRoomId, kind: &str, event_id: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/receipt/{}/{}", enc(room_id.as_str()), enc(kind), enc(event_id))
}

#[tokio::test]
async fn receipt_with_invalid_thread_id_is_rejected() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let event_id = send_text(&alice, &room_id, "hi").await;

    let mut wrong = Vec::new();
    for (kind, body) in [
        ("m.read", r#"{"thread_id":""}"#),
        ("m.read.private", r#"{"thread_id":""}"#),
        ("m.read", r#"{"thread_id":"not-main-nor-an-event-id"}"#),
        ("m.read", r#"{"thread_id":42}"#),
        ("m.fully_read", r#"{"thread_id":"main"}"#),
    ] {
        let (status, response) = bob.raw("POST", &receipt_path(&room_id, kind, event_id.as_str()), Some(body)).await;
        let errcode = response["errcode"].as_str().unwrap_or_default();
        if status != 400 || !(errcode == "M_INVALID_PARAM" || errcode == "M_BAD_JSON") {
            wrong.push(format!("{kind} {body} -> {status} {response}"));
        }
    }
    assert!(wrong.is_empty(), "invalid thread_id must be a 400:\n{}", wrong.join("\n"));
    // Nothing was stored.
    let content = receipts(&sync(&alice, &[]).await, &room_id);
    assert!(!content.to_string().contains(bob.user_id().as_str()), "{content}");
}

#[tokio::test]
async fn receipt_in_a_thread_is_accepted_and_carries_the_root() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let root = send_text(&alice, &room_id, "thread root").await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/reply1", enc(room_id.as_str()));
    let reply =
        json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let (status, sent) = alice.raw("PUT", &path, Some(&reply.to_string())).await;
    assert_eq!(status, 200, "{sent}");
    let reply_id = sent["event_id"].as_str().expect("event_id").to_owned();

    let (status, body) = bob
        .raw("POST", &receipt_path(&room_id, "m.read", &reply_id), Some(&json!({"thread_id": root}).to_string()))
        .await;
    assert_eq!(status, 200, "{body}");
    let content = receipts(&sync(&alice, &[]).await, &room_id);
    assert_eq!(content[reply_id.as_str()]["m.read"][bob.user_id().as_str()]["thread_id"], root.as_str(), "{content}");
}

#[tokio::test]
async fn receipt_for_event_outside_the_named_thread_is_rejected() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let root = send_text(&alice, &room_id, "thread root").await;
    let unrelated = send_text(&alice, &room_id, "main timeline message").await;

    // "The event_id is not related to the thread_id" is a 400 (receipts.yaml).
    let (status, body) = bob
        .raw(
            "POST",
            &receipt_path(&room_id, "m.read", unrelated.as_str()),
            Some(&json!({"thread_id": root}).to_string()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

/// The presence bob's sync shows for `user`, if any.
async fn presence_seen(client: &Client, user: &ruma::UserId) -> Option<String> {
    let (_, body) = client.raw("GET", &format!("/_matrix/client/v3/presence/{user}/status"), None).await;
    body["presence"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn syncing_makes_a_user_online_and_stopping_makes_them_offline() {
    let server = TestServer::start_with(&[("IEUM_PRESENCE__OFFLINE_AFTER_MS", "1500")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&alice).await;
    join(&bob, &room).await;
    let since = next_batch(&sync(&alice, &[]).await);

    // set_presence=offline: syncing does not make bob online.
    let (status, _) = bob.raw("GET", "/_matrix/client/v3/sync?timeout=0&set_presence=offline", None).await;
    assert_eq!(status, 200);
    assert_ne!(presence_seen(&alice, bob.user_id()).await.as_deref(), Some("online"));
    // A plain sync does, and alice's sync shows it.
    bob.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    assert_eq!(presence_seen(&alice, bob.user_id()).await.as_deref(), Some("online"));
    let body = sync(&alice, &[("since", &since)]).await;
    let shown = body["presence"]["events"].as_array().is_some_and(|events| {
        events.iter().any(|e| e["sender"] == bob.user_id().as_str() && e["content"]["presence"] == "online")
    });
    assert!(shown, "{body}");
    // While a long-poll runs bob stays online; after it ends and the timeout passes, offline.
    // (The poll outlasts the check by seconds so a loaded machine cannot end it first.)
    let poller = bob.clone();
    let poll = tokio::spawn(async move {
        poller.raw("GET", "/_matrix/client/v3/sync?timeout=8000&since=s99999999999_0", None).await
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(presence_seen(&alice, bob.user_id()).await.as_deref(), Some("online"), "online during a long-poll");
    poll.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while presence_seen(&alice, bob.user_id()).await.as_deref() != Some("offline") {
        assert!(Instant::now() < deadline, "bob never went offline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A user who chose unavailable stays unavailable while syncing.
    let (status, _) = bob
        .raw(
            "PUT",
            &format!("/_matrix/client/v3/presence/{}/status", bob.user_id()),
            Some(r#"{"presence":"unavailable"}"#),
        )
        .await;
    assert_eq!(status, 200);
    bob.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    assert_eq!(presence_seen(&alice, bob.user_id()).await.as_deref(), Some("unavailable"));
}

#[tokio::test]
async fn presence_can_be_switched_off() {
    let server = TestServer::start_with(&[("IEUM_PRESENCE__ENABLED", "false")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&alice).await;
    join(&bob, &room).await;
    let (status, _) = bob
        .raw("PUT", &format!("/_matrix/client/v3/presence/{}/status", bob.user_id()), Some(r#"{"presence":"online"}"#))
        .await;
    assert_eq!(status, 200, "updates are accepted");
    bob.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    let body = sync(&alice, &[]).await;
    assert!(body["presence"]["events"].as_array().is_none_or(|e| e.is_empty()), "no presence shared: {body}");
}

/// `GET /presence/{user}/status` as `client` asks it: (status, body).
async fn get_presence(client: &Client, user: &str) -> (u16, Value) {
    client.raw("GET", &format!("/_matrix/client/v3/presence/{}/status", enc(user)), None).await
}

#[tokio::test]
async fn presence_is_shown_to_room_sharers_only() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = two_members(&server).await;
    let carol = server.register("carol").await;
    let bob_id = bob.user_id().as_str().to_owned();
    let (status, _) = bob
        .raw(
            "PUT",
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob_id)),
            Some(r#"{"presence":"online","status_msg":"at my desk"}"#),
        )
        .await;
    assert_eq!(status, 200);

    // Bob himself and alice, who shares a room with him, see it.
    for viewer in [&bob, &alice] {
        let (status, body) = get_presence(viewer, &bob_id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["presence"].as_str(), body["status_msg"].as_str()), (Some("online"), Some("at my desk")));
    }
    // Carol shares no room with him: refused, the same way as for a user nobody knows.
    let unknown = format!("@nobody:{}", server.server_name());
    for user in [&bob_id, &unknown] {
        let (status, body) = get_presence(&carol, user).await;
        assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{user}: {body}");
        assert!(body.get("presence").is_none() && !body.to_string().contains("at my desk"), "{body}");
    }
    // In the room she sees it; once she has left, no more.
    join(&carol, &room_id).await;
    assert_eq!(get_presence(&carol, &bob_id).await.0, 200);
    leave(&carol, &room_id).await;
    assert_eq!(get_presence(&carol, &bob_id).await.0, 403);
}

#[tokio::test]
async fn an_idle_users_last_active_ago_keeps_growing() {
    let server = TestServer::start_with(&[("IEUM_PRESENCE__OFFLINE_AFTER_MS", "1000")]).await;
    let (alice, bob, _) = two_members(&server).await;
    let bob_id = bob.user_id().as_str().to_owned();
    let last_active_ago = |body: &Value| body["last_active_ago"].as_u64().expect("last_active_ago");

    // Bob's client syncs once (his last activity), then stops.
    let before_sync = Instant::now();
    bob.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let offline = loop {
        let (_, body) = get_presence(&alice, &bob_id).await;
        if body["presence"] == "offline" {
            break body;
        }
        assert!(Instant::now() < deadline, "bob never went offline: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Going offline is no activity: the time since his sync, which ended at least
    // `offline_after_ms` before he was marked offline.
    let first = last_active_ago(&offline);
    assert!(first >= 1000, "{offline}");
    assert!(u128::from(first) <= before_sync.elapsed().as_millis() + 50, "{offline}");
    // It keeps growing while he stays away, and choosing `unavailable` is no activity either.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, later) = get_presence(&alice, &bob_id).await;
    assert!(last_active_ago(&later) >= first + 600, "{first} then {later}");
    let (status, _) = bob
        .raw(
            "PUT",
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob_id)),
            Some(r#"{"presence":"unavailable"}"#),
        )
        .await;
    assert_eq!(status, 200);
    let (_, unavailable) = get_presence(&alice, &bob_id).await;
    assert_eq!(unavailable["presence"], "unavailable");
    assert!(last_active_ago(&unavailable) >= last_active_ago(&later), "{later} then {unavailable}");
    // Syncing again is activity (he stays unavailable, as he chose).
    bob.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    let (_, active) = get_presence(&alice, &bob_id).await;
    assert_eq!((active["presence"].as_str(), active["currently_active"].as_bool()), (Some("unavailable"), Some(true)));
    assert!(last_active_ago(&active) < 1000, "{active}");
}
