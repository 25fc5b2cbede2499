//! Push: rules (defaults, CRUD, ordering, errors, /sync account data), notification counts
//! from push rules (mentions, muting, own messages, receipts, threads, restarts), the
//! `/notifications` list, pushers, and delivery to a stub push gateway on loopback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, routing::post};
use ruma::RoomId;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    harness::{Client, TestServer},
    rooms::{create_public_room, join, send_event, send_text},
    sync::{enc, joined, next_batch, sync},
};

const RULES: &str = "/_matrix/client/v3/pushrules/global";

async fn put_rule(client: &Client, kind: &str, id: &str, query: &str, body: Value) -> (u16, Value) {
    client.raw("PUT", &format!("{RULES}/{kind}/{id}{query}"), Some(&body.to_string())).await
}

fn rule_ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap().to_owned()).collect()
}

async fn counts(client: &Client, room_id: &RoomId) -> (u64, u64) {
    let body = sync(client, &[]).await;
    let unread = &joined(&body, room_id)["unread_notifications"];
    (unread["notification_count"].as_u64().unwrap_or(0), unread["highlight_count"].as_u64().unwrap_or(0))
}

async fn receipt(client: &Client, room_id: &RoomId, kind: &str, event_id: &ruma::EventId, thread: Option<&str>) {
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/{kind}/{}", enc(room_id.as_str()), enc(event_id.as_str()));
    let body = match thread {
        Some(thread) => json!({ "thread_id": thread }),
        None => json!({}),
    };
    let (status, answer) = client.raw("POST", &path, Some(&body.to_string())).await;
    assert_eq!(status, 200, "{answer}");
}

async fn mention(from: &Client, room_id: &RoomId, to: &Client) -> ruma::OwnedEventId {
    send_event(
        from,
        room_id,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hello you", "m.mentions": {"user_ids": [to.user_id()]}}),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn default_rules_are_the_specs() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = alice.raw("GET", "/_matrix/client/v3/pushrules/", None).await;
    assert_eq!(status, 200, "{body}");
    let overrides = rule_ids(&body["global"], "override");
    assert_eq!(overrides[0], ".m.rule.master", "{overrides:?}");
    // The spec's order, the deprecated legacy mention rules included (Synapse still serves them).
    let expected = [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.contains_display_name",
        ".m.rule.is_room_mention",
        ".m.rule.roomnotif",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ];
    assert_eq!(overrides, expected);
    assert_eq!(rule_ids(&body["global"], "content"), [".m.rule.contains_user_name"]);
    assert_eq!(body["global"]["content"][0]["pattern"], alice.user_id().localpart());
    let underrides = rule_ids(&body["global"], "underride");
    for id in [".m.rule.message", ".m.rule.encrypted", ".m.rule.room_one_to_one"] {
        assert!(underrides.contains(&id.to_owned()), "{id} missing from {underrides:?}");
    }
    let (status, global) = alice.raw("GET", "/_matrix/client/v3/pushrules/global/", None).await;
    assert_eq!(status, 200, "{global}");
    assert_eq!(global, body["global"]);
    let (status, rule) = alice.raw("GET", &format!("{RULES}/override/.m.rule.is_user_mention"), None).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["default"], true);
}

#[tokio::test]
async fn rules_crud_with_ordering_enabled_and_actions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let conditions = json!([{"kind": "event_match", "key": "content.body", "pattern": "cake"}]);
    let rule = json!({"actions": ["notify"], "conditions": conditions});
    assert_eq!(put_rule(&alice, "override", "a", "", rule.clone()).await.0, 200);
    assert_eq!(put_rule(&alice, "override", "b", "?before=a", rule.clone()).await.0, 200);
    assert_eq!(put_rule(&alice, "override", "c", "?after=a", rule.clone()).await.0, 200);
    let (_, global) = alice.raw("GET", "/_matrix/client/v3/pushrules/global/", None).await;
    let ids = rule_ids(&global, "override");
    // Master stays first; user rules come before the other server defaults.
    assert_eq!(&ids[..4], [".m.rule.master", "b", "a", "c"], "{ids:?}");

    let (status, got) = alice.raw("GET", &format!("{RULES}/override/a"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["conditions"], conditions);
    assert_eq!(got["default"], false);
    assert_eq!(got["enabled"], true);

    let (status, _) = alice.raw("PUT", &format!("{RULES}/override/a/enabled"), Some(r#"{"enabled":false}"#)).await;
    assert_eq!(status, 200);
    let (_, enabled) = alice.raw("GET", &format!("{RULES}/override/a/enabled"), None).await;
    assert_eq!(enabled["enabled"], false);
    let actions = json!({"actions": ["notify", {"set_tweak": "sound", "value": "default"}]});
    let (status, _) = alice.raw("PUT", &format!("{RULES}/override/a/actions"), Some(&actions.to_string())).await;
    assert_eq!(status, 200);
    let (_, got) = alice.raw("GET", &format!("{RULES}/override/a/actions"), None).await;
    assert_eq!(got["actions"], actions["actions"]);
    // Server-default rules can be disabled and given actions too.
    let (status, _) = alice
        .raw("PUT", &format!("{RULES}/override/.m.rule.suppress_notices/enabled"), Some(r#"{"enabled":false}"#))
        .await;
    assert_eq!(status, 200);
    let (_, got) = alice.raw("GET", &format!("{RULES}/override/.m.rule.suppress_notices"), None).await;
    assert_eq!(got["enabled"], false);

    // Content and room rules.
    assert_eq!(put_rule(&alice, "content", "pie", "", json!({"actions": ["notify"], "pattern": "pie"})).await.0, 200);
    let (_, got) = alice.raw("GET", &format!("{RULES}/content/pie"), None).await;
    assert_eq!(got["pattern"], "pie");

    let (status, _) = alice.raw("DELETE", &format!("{RULES}/override/a"), None).await;
    assert_eq!(status, 200);
    let (status, body) = alice.raw("GET", &format!("{RULES}/override/a"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (_, global) = alice.raw("GET", "/_matrix/client/v3/pushrules/global/", None).await;
    assert_eq!(&rule_ids(&global, "override")[..3], [".m.rule.master", "b", "c"]);
}

#[tokio::test]
async fn rule_errors_use_the_specs_errcodes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let rule = json!({"actions": ["notify"], "conditions": []});
    let (status, body) = alice.raw("GET", &format!("{RULES}/override/nope"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.raw("DELETE", &format!("{RULES}/override/nope"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.raw("PUT", &format!("{RULES}/override/nope/enabled"), Some(r#"{"enabled":true}"#)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = put_rule(&alice, "override", ".mine", "", rule.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = alice.raw("DELETE", &format!("{RULES}/override/.m.rule.master"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = put_rule(&alice, "override", "x", "?before=missing", rule.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.raw("PUT", &format!("{RULES}/override/x"), Some("{not json")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = alice.raw("PUT", &format!("{RULES}/override/x/actions"), Some(r#"{"actions": 7}"#)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    // Nothing above changed the rules.
    let (_, global) = alice.raw("GET", "/_matrix/client/v3/pushrules/global/", None).await;
    assert!(!rule_ids(&global, "override").contains(&"x".to_owned()));
}

#[tokio::test]
async fn rule_changes_reach_sync_as_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let initial = sync(&alice, &[]).await;
    let events = initial["account_data"]["events"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["type"] == "m.push_rules").count(), 1, "{events:?}");
    let token = next_batch(&initial);
    put_rule(&alice, "room", "!quiet:ieum.test", "", json!({"actions": []})).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let events = body["account_data"]["events"].as_array().cloned().unwrap_or_default();
    let rules = events.iter().find(|e| e["type"] == "m.push_rules").expect("push rules in the incremental sync");
    assert!(rule_ids(&rules["content"]["global"], "room").contains(&"!quiet:ieum.test".to_owned()), "{rules}");
    // The merged set: defaults still there.
    assert!(rule_ids(&rules["content"]["global"], "override").contains(&".m.rule.master".to_owned()));
    // An initial sync now carries the stored rules once.
    let again = sync(&alice, &[]).await;
    let events = again["account_data"]["events"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["type"] == "m.push_rules").count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Counts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn counts_follow_push_rules() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "mine").await;
    send_text(&bob, &room_id, "one").await;
    assert_eq!(counts(&alice, &room_id).await, (1, 0));
    mention(&bob, &room_id, &alice).await;
    assert_eq!(counts(&alice, &room_id).await, (2, 1));
    // Display name in the body (.m.rule.contains_display_name) highlights too, when the
    // message has no m.mentions...
    let name = alice.user_id().localpart().to_owned();
    send_text(&bob, &room_id, &format!("hey {name}, look")).await;
    assert_eq!(counts(&alice, &room_id).await, (3, 2));
    // ...but not when it has m.mentions that do not name alice (intentional mentions win).
    let content = json!({"msgtype": "m.text", "body": format!("{name} again"), "m.mentions": {}});
    send_event(&bob, &room_id, "m.room.message", content).await;
    assert_eq!(counts(&alice, &room_id).await, (4, 2));
    // Bob's own messages never count, and his sending marked alice's earlier one read.
    assert_eq!(counts(&bob, &room_id).await.0, 0);

    // A room rule with no actions mutes the room.
    let (status, _) = put_rule(&alice, "room", room_id.as_str(), "", json!({"actions": []})).await;
    assert_eq!(status, 200);
    let last = send_text(&bob, &room_id, "muted").await;
    assert_eq!(counts(&alice, &room_id).await.0, 4);
    // An override dont_notify rule for the room also mutes (even mentions).
    let rule = json!({"actions": ["dont_notify"], "conditions": [{"kind": "event_match", "key": "room_id", "pattern": room_id}]});
    assert_eq!(put_rule(&alice, "override", "mute", "", rule).await.0, 200);
    mention(&bob, &room_id, &alice).await;
    assert_eq!(counts(&alice, &room_id).await.0, 4);

    // Read receipts clear.
    receipt(&alice, &room_id, "m.read.private", &last, None).await;
    assert_eq!(counts(&alice, &room_id).await, (0, 0));
}

#[tokio::test]
async fn thread_counts_and_threaded_receipts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let root = send_text(&bob, &room_id, "root").await;
    let in_thread = |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send_event(&bob, &room_id, "m.room.message", in_thread("t1")).await;
    let t2 = send_event(&bob, &room_id, "m.room.message", in_thread("t2")).await;
    send_text(&bob, &room_id, "main").await;

    // Without the filter flag: everything in one count.
    assert_eq!(counts(&alice, &room_id).await.0, 4);
    let filter = json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string();
    let body = sync(&alice, &[("filter", &filter)]).await;
    let room = joined(&body, &room_id);
    assert_eq!(room["unread_notifications"]["notification_count"], 2, "{room}");
    assert_eq!(room["unread_thread_notifications"][root.as_str()]["notification_count"], 2, "{room}");

    // A threaded receipt clears its thread only.
    receipt(&alice, &room_id, "m.read", &t2, Some(root.as_str())).await;
    let body = sync(&alice, &[("filter", &filter)]).await;
    let room = joined(&body, &room_id);
    assert_eq!(room["unread_notifications"]["notification_count"], 2, "{room}");
    assert!(room["unread_thread_notifications"].get(root.as_str()).is_none(), "{room}");
    assert_eq!(counts(&alice, &room_id).await.0, 2);
}

#[tokio::test]
async fn counts_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let first = send_text(&bob, &room_id, "one").await;
    mention(&bob, &room_id, &alice).await;
    send_text(&bob, &room_id, "three").await;
    assert_eq!(counts(&alice, &room_id).await, (3, 1));
    server.stop().await;
    server.start_again().await;
    assert_eq!(counts(&alice, &room_id).await, (3, 1));
    receipt(&alice, &room_id, "m.read", &first, None).await;
    assert_eq!(counts(&alice, &room_id).await, (2, 1));
}

// ---------------------------------------------------------------------------------------------
// /notifications
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn notifications_list_newest_first_with_highlight_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let one = send_text(&bob, &room_id, "one").await;
    let two = mention(&bob, &room_id, &alice).await;
    let three = send_text(&bob, &room_id, "three").await;
    receipt(&alice, &room_id, "m.read", &one, None).await;

    let (status, body) = alice.raw("GET", "/_matrix/client/v3/notifications", None).await;
    assert_eq!(status, 200, "{body}");
    let list = body["notifications"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [three.as_str(), two.as_str(), one.as_str()]);
    assert_eq!(list[0]["room_id"], room_id.as_str());
    assert_eq!(list[0]["read"], false);
    assert_eq!(list[2]["read"], true);
    assert_eq!(list[0]["event"]["content"]["body"], "three");
    assert!(list[0]["ts"].as_u64().unwrap() > 0);
    assert!(list[0]["actions"].as_array().unwrap().iter().any(|a| a == "notify"), "{}", list[0]);

    let (_, body) = alice.raw("GET", "/_matrix/client/v3/notifications?only=highlight", None).await;
    let list = body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["event"]["event_id"], two.as_str());

    // Paging.
    let (_, page) = alice.raw("GET", "/_matrix/client/v3/notifications?limit=2", None).await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let token = page["next_token"].as_str().expect("next_token").to_owned();
    let (_, rest) = alice.raw("GET", &format!("/_matrix/client/v3/notifications?limit=2&from={token}"), None).await;
    let rest = rest["notifications"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["event"]["event_id"], one.as_str());
}

// ---------------------------------------------------------------------------------------------
// Pushers
// ---------------------------------------------------------------------------------------------

fn http_pusher(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({ "url": url });
    if let Some(format) = format {
        data["format"] = json!(format);
    }
    json!({
        "kind": "http", "app_id": "com.example.app", "pushkey": pushkey, "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": data,
    })
}

async fn set_pusher(client: &Client, body: &Value) -> (u16, Value) {
    client.raw("POST", "/_matrix/client/v3/pushers/set", Some(&body.to_string())).await
}

async fn pushkeys(client: &Client) -> Vec<String> {
    let (status, body) = client.raw("GET", "/_matrix/client/v3/pushers", None).await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().unwrap().iter().map(|p| p["pushkey"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn pushers_set_list_delete_append_and_validation() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";
    assert_eq!(set_pusher(&alice, &http_pusher(url, "key1", None)).await.0, 200);
    let (_, body) = alice.raw("GET", "/_matrix/client/v3/pushers", None).await;
    let pusher = &body["pushers"][0];
    assert_eq!(pusher["kind"], "http");
    assert_eq!(pusher["data"]["url"], url);
    assert_eq!(pusher["app_display_name"], "App");

    // The same pushkey for bob without append removes alice's; with append both keep it.
    let mut appended = http_pusher(url, "key1", None);
    appended["append"] = json!(true);
    assert_eq!(set_pusher(&bob, &appended).await.0, 200);
    assert_eq!(pushkeys(&alice).await, ["key1"]);
    assert_eq!(set_pusher(&bob, &http_pusher(url, "key1", None)).await.0, 200);
    assert!(pushkeys(&alice).await.is_empty());
    assert_eq!(pushkeys(&bob).await, ["key1"]);

    // kind: null deletes.
    let delete = json!({"kind": null, "app_id": "com.example.app", "pushkey": "key1"});
    assert_eq!(set_pusher(&bob, &delete).await.0, 200);
    assert!(pushkeys(&bob).await.is_empty());

    // Validation.
    for (body, what) in [
        (http_pusher("ftp://example.org/_matrix/push/v1/notify", "k", None), "scheme"),
        (http_pusher("http://127.0.0.1:9/elsewhere", "k", None), "path"),
        (http_pusher("not a url", "k", None), "url"),
        (http_pusher(url, &"k".repeat(513), None), "pushkey length"),
    ] {
        let (status, answer) = set_pusher(&alice, &body).await;
        assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{what}: {answer}");
    }
    let mut long_app = http_pusher(url, "k", None);
    long_app["app_id"] = json!("a".repeat(65));
    assert_eq!(set_pusher(&alice, &long_app).await.1["errcode"], "M_INVALID_PARAM");
    let email = json!({"kind": "email", "app_id": "m.email", "pushkey": "a@example.org", "app_display_name": "E",
        "device_display_name": "E", "lang": "en", "data": {}});
    assert_eq!(set_pusher(&alice, &email).await.0, 400);
    let (status, _) = set_pusher(&alice, &json!({"kind": "http"})).await;
    assert_eq!(status, 400);
    assert!(pushkeys(&alice).await.is_empty());
}

#[tokio::test]
async fn pushers_go_with_their_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";
    assert_eq!(set_pusher(&alice, &http_pusher(url, "key1", None)).await.0, 200);
    let (status, _) = alice.raw("POST", "/_matrix/client/v3/logout", Some("{}")).await;
    assert_eq!(status, 200);
    let alice2 = login(&server, &alice).await;
    assert!(pushkeys(&alice2).await.is_empty());
}

async fn login(server: &TestServer, client: &Client) -> Client {
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": client.user_id()}, "password": "password"});
    let (status, answer) = server.client().raw("POST", "/_matrix/client/v3/login", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    let mut logged_in = server.client();
    logged_in.token = Some(answer["access_token"].as_str().unwrap().to_owned());
    logged_in.user_id = Some(client.user_id().to_owned());
    logged_in
}

// ---------------------------------------------------------------------------------------------
// Delivery to a push gateway
// ---------------------------------------------------------------------------------------------

/// What the stub gateway does with a request.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Accept,
    Reject,
    Fail,
    Hang,
}

#[derive(Clone)]
struct Gateway {
    mode: Arc<Mutex<Mode>>,
    seen: mpsc::UnboundedSender<Value>,
}

async fn notify(State(gateway): State<Gateway>, body: String) -> (axum::http::StatusCode, String) {
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mode = *gateway.mode.lock().unwrap();
    let _ = gateway.seen.send(value.clone());
    match mode {
        Mode::Accept => (axum::http::StatusCode::OK, json!({"rejected": []}).to_string()),
        Mode::Reject => {
            let keys: Vec<Value> =
                value["notification"]["devices"].as_array().unwrap().iter().map(|d| d["pushkey"].clone()).collect();
            (axum::http::StatusCode::OK, json!({ "rejected": keys }).to_string())
        }
        Mode::Fail => (axum::http::StatusCode::BAD_GATEWAY, "{}".to_owned()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (axum::http::StatusCode::OK, "{}".to_owned())
        }
    }
}

/// Starts a stub gateway on loopback; returns its notify URL, the mode switch and the bodies.
async fn gateway(mode: Mode) -> (String, Arc<Mutex<Mode>>, mpsc::UnboundedReceiver<Value>) {
    let (seen, received) = mpsc::unbounded_channel();
    let mode = Arc::new(Mutex::new(mode));
    let state = Gateway { mode: mode.clone(), seen };
    let app = Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/_matrix/push/v1/notify"), mode, received)
}

async fn next_push(received: &mut mpsc::UnboundedReceiver<Value>, within: Duration) -> Value {
    tokio::time::timeout(within, received.recv()).await.expect("a push arrives in time").expect("gateway running")
}

/// Fast retries for the delivery tests.
const FAST: &[(&str, &str)] = &[
    ("IEUM_PUSH__INITIAL_BACKOFF_MS", "200"),
    ("IEUM_PUSH__MAX_BACKOFF_MS", "400"),
    ("IEUM_PUSH__REQUEST_TIMEOUT_MS", "1000"),
];

#[tokio::test]
async fn gateway_receives_the_specs_body_in_both_formats() {
    let server = TestServer::start_with(FAST).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let (url, _mode, mut received) = gateway(Mode::Accept).await;
    assert_eq!(set_pusher(&alice, &http_pusher(&url, "full-key", None)).await.0, 200);

    let event_id = mention(&bob, &room_id, &alice).await;
    let body = next_push(&mut received, Duration::from_secs(5)).await;
    let n = &body["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{body}");
    assert_eq!(n["room_id"], room_id.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], bob.user_id().as_str());
    assert_eq!(n["content"]["body"], "hello you");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["app_id"], "com.example.app");
    assert_eq!(n["devices"][0]["pushkey"], "full-key");
    assert!(n["devices"][0]["pushkey_ts"].as_u64().is_some());
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true, "{body}");
    assert!(n["devices"][0]["data"].get("url").is_none(), "the url is not sent to the gateway");

    // event_id_only: ids and counts, no content.
    let delete = json!({"kind": null, "app_id": "com.example.app", "pushkey": "full-key"});
    set_pusher(&alice, &delete).await;
    assert_eq!(set_pusher(&alice, &http_pusher(&url, "id-key", Some("event_id_only"))).await.0, 200);
    let event_id = send_text(&bob, &room_id, "plain").await;
    let body = next_push(&mut received, Duration::from_secs(5)).await;
    let n = &body["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{body}");
    assert_eq!(n["room_id"], room_id.as_str());
    assert_eq!(n["counts"]["unread"], 2);
    assert!(n.get("content").is_none() && n.get("sender").is_none(), "{body}");
    assert_eq!(n["devices"][0]["pushkey"], "id-key");
    assert_eq!(n["devices"][0]["data"]["format"], "event_id_only");
}

#[tokio::test]
async fn rejected_pushkeys_lose_their_pusher() {
    let server = TestServer::start_with(FAST).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let (url, _mode, mut received) = gateway(Mode::Reject).await;
    assert_eq!(set_pusher(&alice, &http_pusher(&url, "gone-key", None)).await.0, 200);
    send_text(&bob, &room_id, "hello").await;
    next_push(&mut received, Duration::from_secs(5)).await;
    for _ in 0..50 {
        if pushkeys(&alice).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rejected pusher was not removed");
}

#[tokio::test]
async fn failing_and_hanging_gateways_get_retries_and_the_queue_survives_a_restart() {
    let mut server = TestServer::start_with(FAST).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let (url, mode, mut received) = gateway(Mode::Fail).await;
    let (hanging_url, _hanging_mode, mut hanging) = gateway(Mode::Hang).await;
    assert_eq!(set_pusher(&alice, &http_pusher(&url, "k1", None)).await.0, 200);
    assert_eq!(set_pusher(&alice, &http_pusher(&hanging_url, "k2", None)).await.0, 200);
    let event_id = send_text(&bob, &room_id, "hello").await;
    // The failing gateway is asked again and again (back-off 200 ms, 400 ms...), while the
    // hanging one holds only its own delivery.
    next_push(&mut received, Duration::from_secs(3)).await;
    next_push(&mut received, Duration::from_secs(3)).await;
    next_push(&mut hanging, Duration::from_secs(3)).await;

    // Stop ieum while the gateway still fails; the delivery is still queued after the restart.
    server.stop().await;
    while received.try_recv().is_ok() {}
    *mode.lock().unwrap() = Mode::Accept;
    server.start_again().await;
    let body = next_push(&mut received, Duration::from_secs(5)).await;
    assert_eq!(body["notification"]["event_id"], event_id.as_str());
}

// ---------------------------------------------------------------------------------------------
// Cost of evaluation (run by hand: cargo test --test it push::send_cost -- --ignored --nocapture)
// ---------------------------------------------------------------------------------------------

/// Times `Rooms::send` of 50 messages in a room with 1,000 LOCAL joined members (every one's
/// rules evaluated) and in a room with 1,000 members of another server (none evaluated: the
/// baseline without push evaluation), on the same server in the same run.
#[tokio::test]
#[ignore]
async fn send_cost_in_a_1000_member_room() {
    use ieum::service::rooms::NewEvent;
    use ruma::events::StateEventType;
    let server = TestServer::start().await;
    let app = server.app();
    let alice = server.register("alice").await;
    let mut results = Vec::new();
    for (label, domain) in
        [("remote members (no evaluation)", "elsewhere.test"), ("local members (evaluated)", "ieum.test")]
    {
        let room_id = create_public_room(&alice).await;
        for i in 0..1000 {
            let user = ruma::UserId::parse(format!("@member{i}:{domain}")).unwrap();
            let join = NewEvent::state(
                &room_id,
                &user,
                StateEventType::RoomMember,
                user.as_str(),
                json!({"membership": "join", "displayname": format!("Member {i}")}),
            );
            app.rooms.send(join).await.expect("join");
        }
        let start = std::time::Instant::now();
        for i in 0..50 {
            let mut content = serde_json::Map::new();
            content.insert("msgtype".into(), json!("m.text"));
            content.insert("body".into(), json!(format!("message {i}")));
            let message = NewEvent::new(&room_id, alice.user_id(), "m.room.message".into(), None, content);
            app.rooms.send(message).await.expect("send");
        }
        let per_send = start.elapsed() / 50;
        results.push((label, per_send));
    }
    for (label, per_send) in &results {
        println!("Rooms::send in a 1,000-member room, {label}: {per_send:?} per message");
    }
}

// ---------------------------------------------------------------------------------------------
// Remote events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn remote_events_count_and_highlight() {
    use crate::federation::{Cluster, eventually, join_via};
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join_via(&bob, &room_id, "a.test").await;
    // Alice (on a.test) mentions bob; bob's server evaluates bob's rules on receipt.
    mention(&alice, &room_id, &bob).await;
    send_text(&alice, &room_id, "and a plain one").await;
    eventually("B counts A's messages", || async {
        let body = sync(&bob, &[]).await;
        let unread = &body["rooms"]["join"][room_id.as_str()]["unread_notifications"];
        unread["notification_count"] == 2 && unread["highlight_count"] == 1
    })
    .await;
    let (_, list) = bob.raw("GET", "/_matrix/client/v3/notifications?only=highlight", None).await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn an_invite_notifies_the_invitee() {
    let server = TestServer::start_with(FAST).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (url, _mode, mut received) = gateway(Mode::Accept).await;
    assert_eq!(set_pusher(&bob, &http_pusher(&url, "bob-key", None)).await.0, 200);
    let room_id = create_public_room(&alice).await;
    let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id.as_str()));
    let (status, answer) = alice.raw("POST", &path, Some(&json!({"user_id": bob.user_id()}).to_string())).await;
    assert_eq!(status, 200, "{answer}");
    let body = next_push(&mut received, Duration::from_secs(5)).await;
    let n = &body["notification"];
    assert_eq!(n["type"], "m.room.member", "{body}");
    assert_eq!(n["user_is_target"], true, "{body}");
    assert_eq!(n["room_id"], room_id.as_str());
}
