//! Client config: global and room account data (and who may touch it), server-managed types,
//! room tags, and stored filters.

use ruma::{
    OwnedRoomId,
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        filter::{FilterDefinition, create_filter, get_filter},
        tag::{create_tag, delete_tag, get_tags},
    },
    events::{GlobalAccountDataEventType, RoomAccountDataEventType, tag::TagInfo},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    harness::{Client, TestServer},
    sync::{create_public_room, enc, events, joined, next_batch, sync},
};

fn global_path(user: &str, kind: &str) -> String {
    format!("/_matrix/client/v3/user/{}/account_data/{}", enc(user), enc(kind))
}

fn room_path(user: &str, room_id: &str, kind: &str) -> String {
    format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/{}", enc(user), enc(room_id), enc(kind))
}

async fn put_global(client: &Client, kind: &str, content: Value) {
    let request = set_global_account_data::v3::Request::new_raw(
        client.user_id().to_owned(),
        GlobalAccountDataEventType::from(kind),
        Raw::from_json(serde_json::value::to_raw_value(&content).unwrap()),
    );
    client.send(request).await;
}

async fn get_global(client: &Client, kind: &str) -> Value {
    let response = client
        .send(get_global_account_data::v3::Request::new(
            client.user_id().to_owned(),
            GlobalAccountDataEventType::from(kind),
        ))
        .await;
    serde_json::from_str(response.account_data.json().get()).unwrap()
}

async fn put_room(client: &Client, room_id: &OwnedRoomId, kind: &str, content: Value) {
    let request = set_room_account_data::v3::Request::new_raw(
        client.user_id().to_owned(),
        room_id.clone(),
        RoomAccountDataEventType::from(kind),
        Raw::from_json(serde_json::value::to_raw_value(&content).unwrap()),
    );
    client.send(request).await;
}

async fn get_room(client: &Client, room_id: &OwnedRoomId, kind: &str) -> Value {
    let request = get_room_account_data::v3::Request::new(
        client.user_id().to_owned(),
        room_id.clone(),
        RoomAccountDataEventType::from(kind),
    );
    serde_json::from_str(client.send(request).await.account_data.json().get()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Global and room account data
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn global_account_data_put_and_get() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    put_global(&alice, "org.example.settings", json!({"theme": "dark"})).await;
    assert_eq!(get_global(&alice, "org.example.settings").await, json!({"theme": "dark"}));

    // Putting again replaces the content.
    put_global(&alice, "org.example.settings", json!({"font": "large"})).await;
    assert_eq!(get_global(&alice, "org.example.settings").await, json!({"font": "large"}));
}

#[tokio::test]
async fn room_account_data_put_and_get_without_global_fallback() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let other_room = create_public_room(&alice).await;
    put_room(&alice, &room_id, "org.example.room", json!({"pinned": true})).await;
    assert_eq!(get_room(&alice, &room_id, "org.example.room").await, json!({"pinned": true}));

    // Room data is scoped to its room; global data does not stand in for it (and vice versa).
    let user = alice.user_id().as_str();
    let (status, body) = alice.raw("GET", &room_path(user, other_room.as_str(), "org.example.room"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.raw("GET", &global_path(user, "org.example.room"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    put_global(&alice, "org.example.global", json!({"x": 1})).await;
    let (status, body) = alice.raw("GET", &room_path(user, room_id.as_str(), "org.example.global"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "no inheritance from global: {body}");
}

#[tokio::test]
async fn unknown_account_data_type_is_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let user = alice.user_id().as_str();

    let (status, body) = alice.raw("GET", &global_path(user, "org.example.never"), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
    let (status, body) = alice.raw("GET", &room_path(user, room_id.as_str(), "org.example.never"), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn cannot_read_or_write_another_users_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    put_global(&alice, "org.example.mine", json!({"secret": 1})).await;
    put_room(&alice, &room_id, "org.example.mine", json!({"secret": 2})).await;
    let user = alice.user_id().as_str();

    for (method, path, body) in [
        ("PUT", global_path(user, "org.example.mine"), Some(r#"{"secret":"overwritten"}"#)),
        ("GET", global_path(user, "org.example.mine"), None),
        ("PUT", room_path(user, room_id.as_str(), "org.example.mine"), Some(r#"{"secret":"overwritten"}"#)),
        ("GET", room_path(user, room_id.as_str(), "org.example.mine"), None),
    ] {
        let (status, response) = bob.raw(method, &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {response}");
        assert_eq!(response["errcode"], "M_FORBIDDEN", "{method} {path}: {response}");
    }
    // Alice's data is untouched.
    assert_eq!(get_global(&alice, "org.example.mine").await, json!({"secret": 1}));
    assert_eq!(get_room(&alice, &room_id, "org.example.mine").await, json!({"secret": 2}));
}

#[tokio::test]
async fn server_managed_types_cannot_be_set_as_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let user = alice.user_id().as_str();
    let content = Some(r#"{"event_id":"$fake:ieum.test"}"#);

    for path in [
        room_path(user, room_id.as_str(), "m.fully_read"),
        global_path(user, "m.fully_read"),
        global_path(user, "m.push_rules"),
        room_path(user, room_id.as_str(), "m.push_rules"),
    ] {
        let (status, body) = alice.raw("PUT", &path, content).await;
        assert_eq!(status, 405, "PUT {path}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON", "PUT {path}: {body}");
    }
    let (status, body) = alice.raw("GET", &room_path(user, room_id.as_str(), "m.fully_read"), None).await;
    assert_eq!(status, 404, "the refused write must not have been stored: {body}");
}

#[tokio::test]
async fn account_data_content_must_be_a_json_object() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let user = alice.user_id().as_str();
    for path in [global_path(user, "org.example.bad"), room_path(user, room_id.as_str(), "org.example.bad")] {
        for body in ["[1,2,3]", "\"a string\"", "not json"] {
            let (status, response) = alice.raw("PUT", &path, Some(body)).await;
            assert_eq!(status, 400, "PUT {path} {body}: {response}");
            let errcode = response["errcode"].as_str().unwrap_or_default();
            assert!(errcode == "M_BAD_JSON" || errcode == "M_NOT_JSON", "PUT {path} {body}: {response}");
        }
    }
}

#[tokio::test]
async fn room_account_data_with_invalid_room_id_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().as_str();
    let path = room_path(user, "@notaroomid:ieum.test", "org.example.x");
    let (status, body) = alice.raw("PUT", &path, Some("{}")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let (status, body) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

#[tokio::test]
async fn global_account_data_appears_in_initial_and_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    put_global(&alice, "org.example.one", json!({"n": 1})).await;

    let initial = sync(&alice, &[]).await;
    let data = events(&initial["account_data"]);
    let one = data.iter().find(|e| e["type"] == "org.example.one").unwrap_or_else(|| panic!("{initial}"));
    assert_eq!(one["content"], json!({"n": 1}));

    put_global(&alice, "org.example.two", json!({"n": 2})).await;
    let body = sync(&alice, &[("since", &next_batch(&initial))]).await;
    let data = events(&body["account_data"]);
    let two = data.iter().find(|e| e["type"] == "org.example.two").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(two["content"], json!({"n": 2}));
    assert!(data.iter().all(|e| e["type"] != "org.example.one"), "unchanged account data repeated: {body}");
}

#[tokio::test]
async fn room_account_data_appears_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    put_room(&alice, &room_id, "org.example.room", json!({"v": 1})).await;

    let initial = sync(&alice, &[]).await;
    let data = events(&joined(&initial, &room_id)["account_data"]);
    let event = data.iter().find(|e| e["type"] == "org.example.room").unwrap_or_else(|| panic!("{initial}"));
    assert_eq!(event["content"], json!({"v": 1}));
    assert!(
        events(&initial["account_data"]).iter().all(|e| e["type"] != "org.example.room"),
        "room data leaked into global"
    );

    put_room(&alice, &room_id, "org.example.room", json!({"v": 2})).await;
    let body = sync(&alice, &[("since", &next_batch(&initial))]).await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let event = data.iter().find(|e| e["type"] == "org.example.room").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(event["content"], json!({"v": 2}));
}

#[tokio::test]
async fn account_data_filter_types_applies_to_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    put_global(&alice, "org.example.keep", json!({})).await;
    put_global(&alice, "org.example.drop", json!({})).await;

    let filter = json!({"account_data": {"types": ["org.example.keep"]}}).to_string();
    let body = sync(&alice, &[("filter", &filter)]).await;
    let types: Vec<Value> = events(&body["account_data"]).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, vec![json!("org.example.keep")], "{body}");

    let filter = json!({"account_data": {"not_types": ["org.example.drop"]}}).to_string();
    let body = sync(&alice, &[("filter", &filter)]).await;
    let types: Vec<Value> = events(&body["account_data"]).iter().map(|e| e["type"].clone()).collect();
    assert!(types.contains(&json!("org.example.keep")) && !types.contains(&json!("org.example.drop")), "{body}");
}

// ---------------------------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------------------------

async fn tags_of(client: &Client, room_id: &OwnedRoomId) -> Value {
    let response = client.send(get_tags::v3::Request::new(client.user_id().to_owned(), room_id.clone())).await;
    serde_json::to_value(&response.tags).unwrap()
}

async fn tag(client: &Client, room_id: &OwnedRoomId, name: &str, order: Option<f64>) {
    let mut info = TagInfo::new();
    info.order = order;
    client
        .send(create_tag::v3::Request::new(client.user_id().to_owned(), room_id.clone(), name.to_owned(), info))
        .await;
}

#[tokio::test]
async fn tags_can_be_created_listed_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    assert_eq!(tags_of(&alice, &room_id).await, json!({}), "a fresh room has no tags");

    tag(&alice, &room_id, "u.work", Some(0.25)).await;
    tag(&alice, &room_id, "m.favourite", None).await;
    assert_eq!(tags_of(&alice, &room_id).await, json!({"u.work": {"order": 0.25}, "m.favourite": {}}));

    // Raw wire format of GET .../tags.
    let path =
        format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(alice.user_id().as_str()), enc(room_id.as_str()));
    let (status, body) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tags"]["u.work"]["order"], 0.25, "{body}");

    alice.send(delete_tag::v3::Request::new(alice.user_id().to_owned(), room_id.clone(), "u.work".to_owned())).await;
    assert_eq!(tags_of(&alice, &room_id).await, json!({"m.favourite": {}}));
}

#[tokio::test]
async fn tags_are_per_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    crate::sync::join(&bob, &room_id).await;
    tag(&alice, &room_id, "u.alice", None).await;

    assert_eq!(tags_of(&bob, &room_id).await, json!({}), "alice's tags are hers alone");
    let path =
        format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.bob", enc(alice.user_id().as_str()), enc(room_id.as_str()));
    let (status, body) = bob.raw("PUT", &path, Some("{}")).await;
    assert_eq!(status, 403, "bob tagging for alice: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    let path =
        format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(alice.user_id().as_str()), enc(room_id.as_str()));
    let (status, body) = bob.raw("GET", &path, None).await;
    assert_eq!(status, 403, "bob reading alice's tags: {body}");
}

#[tokio::test]
async fn tags_appear_in_sync_as_m_tag() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let token = next_batch(&sync(&alice, &[]).await);

    tag(&alice, &room_id, "u.project", Some(0.5)).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let m_tag =
        data.iter().find(|e| e["type"] == "m.tag").unwrap_or_else(|| panic!("no m.tag in room account_data: {body}"));
    assert_eq!(m_tag["content"], json!({"tags": {"u.project": {"order": 0.5}}}));

    // Deleting sends the updated (now empty) set.
    let token = next_batch(&body);
    alice.send(delete_tag::v3::Request::new(alice.user_id().to_owned(), room_id.clone(), "u.project".to_owned())).await;
    let body = sync(&alice, &[("since", &token)]).await;
    let data = events(&joined(&body, &room_id)["account_data"]);
    let m_tag = data.iter().find(|e| e["type"] == "m.tag").unwrap_or_else(|| panic!("tag deletion not synced: {body}"));
    assert_eq!(m_tag["content"], json!({"tags": {}}));

    // m.tag is also readable as room account data.
    assert_eq!(get_room(&alice, &room_id, "m.tag").await, json!({"tags": {}}));
}

// ---------------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------------

fn filter_path(user: &str) -> String {
    format!("/_matrix/client/v3/user/{}/filter", enc(user))
}

#[tokio::test]
async fn filter_can_be_created_and_downloaded() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let definition = json!({
        "event_fields": ["type", "content", "sender"],
        "event_format": "client",
        "room": {"timeline": {"limit": 10, "types": ["m.room.message"]}, "state": {"lazy_load_members": true}},
        "account_data": {"types": ["m.push_rules"]}
    });
    let (status, created) =
        alice.raw("POST", &filter_path(alice.user_id().as_str()), Some(&definition.to_string())).await;
    assert_eq!(status, 200, "{created}");
    let filter_id = created["filter_id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    assert!(!filter_id.starts_with('{'), "{filter_id}");

    let (status, got) =
        alice.raw("GET", &format!("{}/{}", filter_path(alice.user_id().as_str()), enc(&filter_id)), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["event_fields"], definition["event_fields"], "{got}");
    assert_eq!(got["room"]["timeline"]["limit"], 10, "{got}");
    assert_eq!(got["room"]["timeline"]["types"], json!(["m.room.message"]), "{got}");
    assert_eq!(got["room"]["state"]["lazy_load_members"], true, "{got}");
    assert_eq!(got["account_data"]["types"], json!(["m.push_rules"]), "{got}");

    // Through ruma's types too.
    let response = alice.send(get_filter::v3::Request::new(alice.user_id().to_owned(), filter_id)).await;
    assert_eq!(response.filter.room.timeline.limit.map(u64::from), Some(10));
}

#[tokio::test]
async fn each_filter_gets_its_own_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut first = FilterDefinition::default();
    first.room.timeline.limit = Some(1u32.into());
    let mut second = FilterDefinition::default();
    second.room.timeline.limit = Some(2u32.into());
    let id1 = alice.send(create_filter::v3::Request::new(alice.user_id().to_owned(), first)).await.filter_id;
    let id2 = alice.send(create_filter::v3::Request::new(alice.user_id().to_owned(), second)).await.filter_id;
    assert_ne!(id1, id2);
    let got1 = alice.send(get_filter::v3::Request::new(alice.user_id().to_owned(), id1)).await;
    let got2 = alice.send(get_filter::v3::Request::new(alice.user_id().to_owned(), id2)).await;
    assert_eq!(got1.filter.room.timeline.limit.map(u64::from), Some(1));
    assert_eq!(got2.filter.room.timeline.limit.map(u64::from), Some(2));
}

#[tokio::test]
async fn invalid_filter_is_rejected_with_bad_json() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let path = filter_path(alice.user_id().as_str());
    for body in
        [r#"{"room":{"timeline":{"limit":"ten"}}}"#, r#"{"room":{"rooms":"!notalist:ieum.test"}}"#, r#"[1,2,3]"#]
    {
        let (status, response) = alice.raw("POST", &path, Some(body)).await;
        assert_eq!(status, 400, "POST filter {body}: {response}");
        assert_eq!(response["errcode"], "M_BAD_JSON", "POST filter {body}: {response}");
    }
}

#[tokio::test]
async fn unknown_filter_id_is_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = alice.raw("GET", &format!("{}/12345", filter_path(alice.user_id().as_str())), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn filters_belong_to_their_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let id = alice
        .send(create_filter::v3::Request::new(alice.user_id().to_owned(), FilterDefinition::default()))
        .await
        .filter_id;

    let (status, body) = bob.raw("POST", &filter_path(alice.user_id().as_str()), Some("{}")).await;
    assert_eq!(status, 403, "bob creating a filter for alice: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    // Bob cannot see alice's filter, under her name or his.
    let (status, _) = bob.raw("GET", &format!("{}/{}", filter_path(alice.user_id().as_str()), enc(&id)), None).await;
    assert!(status == 403 || status == 404, "bob read alice's filter: {status}");
    let (status, _) = bob.raw("GET", &format!("{}/{}", filter_path(bob.user_id().as_str()), enc(&id)), None).await;
    assert_eq!(status, 404, "alice's filter id must not resolve for bob");
}

#[tokio::test]
async fn filter_with_unknown_event_format_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    // `event_format` is an enum of "client" and "federation" (filter.yaml).
    let (status, response) =
        alice.raw("POST", &filter_path(alice.user_id().as_str()), Some(r#"{"event_format":"not-a-format"}"#)).await;
    assert_eq!(status, 400, "{response}");
    assert_eq!(response["errcode"], "M_BAD_JSON", "{response}");
}

#[tokio::test]
async fn push_rules_can_be_read_as_global_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    // Writing is refused (405), but "servers must allow clients to read the above event types
    // as normal" (account data module).
    let (status, body) = alice.raw("GET", &global_path(alice.user_id().as_str(), "m.push_rules"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["global"]["override"].is_array(), "m.push_rules content is the ruleset: {body}");
}

#[tokio::test]
async fn push_rules_come_down_in_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body = sync(&alice, &[]).await;
    let data = events(&body["account_data"]);
    let rules = data
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("no m.push_rules in initial sync: {body}"));
    assert!(rules["content"]["global"]["underride"].is_array(), "{rules}");
}
