//! Simplified sliding sync (MSC4186) as Element X uses it: lists sorted by recency with
//! ranges and filters, required_state rules, timelines with gaps, room subscriptions, unread
//! counts, invites, connection positions (M_UNKNOWN_POS), long-polls and the extensions.
//!
//! Responses are read as raw JSON so the tests see exactly what is on the wire.

use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use crate::{
    harness::{Client, TestServer},
    sync::{create_named_room, enc, invite, join, send_text, set_name},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request; returns status and body.
async fn try_ss(client: &Client, pos: Option<&str>, timeout_ms: Option<u64>, body: &Value) -> (u16, Value) {
    let mut query = Vec::new();
    if let Some(pos) = pos {
        query.push(format!("pos={}", enc(pos)));
    }
    if let Some(timeout) = timeout_ms {
        query.push(format!("timeout={timeout}"));
    }
    let path = if query.is_empty() { PATH.to_owned() } else { format!("{PATH}?{}", query.join("&")) };
    client.raw("POST", &path, Some(&body.to_string())).await
}

/// A sliding sync request that must succeed (no long-poll).
async fn ss(client: &Client, pos: Option<&str>, body: &Value) -> Value {
    let (status, answer) = try_ss(client, pos, Some(0), body).await;
    assert_eq!(status, 200, "sliding sync failed: {answer}");
    assert!(answer["pos"].is_string(), "no pos: {answer}");
    answer
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().expect("pos").to_owned()
}

/// One list named `all` with a range, timeline limit and required state.
fn list(range: (u64, u64), timeline_limit: u64, required_state: Value) -> Value {
    json!({ "lists": { "all": { "ranges": [[range.0, range.1]], "timeline_limit": timeline_limit, "required_state": required_state } } })
}

fn room<'a>(body: &'a Value, room_id: &RoomId) -> &'a Value {
    body["rooms"].get(room_id.as_str()).unwrap_or_else(|| panic!("{room_id} not in the response: {body}"))
}

fn has_room(body: &Value, room_id: &RoomId) -> bool {
    body["rooms"].get(room_id.as_str()).is_some()
}

/// Room ids of the response sorted by `bump_stamp`, newest first (how a client orders them).
fn by_bump(body: &Value) -> Vec<String> {
    let mut rooms: Vec<(u64, String)> = body["rooms"]
        .as_object()
        .map(|rooms| rooms.iter().map(|(id, r)| (r["bump_stamp"].as_u64().expect("bump_stamp"), id.clone())).collect())
        .unwrap_or_default();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn state_keys(room: &Value, kind: &str) -> Vec<String> {
    let mut keys: Vec<String> = room["required_state"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == kind)
                .map(|e| e["state_key"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

fn state_types(room: &Value) -> Vec<String> {
    let mut types: Vec<String> = room["required_state"]
        .as_array()
        .map(|events| events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    types.sort();
    types.dedup();
    types
}

async fn create_room(client: &Client, body: Value) -> OwnedRoomId {
    let (status, answer) = client.raw("POST", "/_matrix/client/v3/createRoom", Some(&body.to_string())).await;
    assert_eq!(status, 200, "createRoom: {answer}");
    OwnedRoomId::try_from(answer["room_id"].as_str().expect("room_id")).expect("room id")
}

async fn put_global(client: &Client, kind: &str, content: Value) {
    let path = format!("/_matrix/client/v3/user/{}/account_data/{kind}", enc(client.user_id().as_str()));
    let (status, answer) = client.raw("PUT", &path, Some(&content.to_string())).await;
    assert_eq!(status, 200, "account data: {answer}");
}

async fn put_room_data(client: &Client, room_id: &RoomId, kind: &str, content: Value) {
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/{kind}",
        enc(client.user_id().as_str()),
        enc(room_id.as_str())
    );
    let (status, answer) = client.raw("PUT", &path, Some(&content.to_string())).await;
    assert_eq!(status, 200, "room account data: {answer}");
}

async fn put_state(client: &Client, room_id: &RoomId, kind: &str, key: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room_id.as_str()), enc(key));
    let (status, answer) = client.raw("PUT", &path, Some(&content.to_string())).await;
    assert_eq!(status, 200, "state: {answer}");
}

async fn read_receipt(client: &Client, room_id: &RoomId, event_id: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(room_id.as_str()), enc(event_id));
    let (status, answer) = client.raw("POST", &path, Some("{}")).await;
    assert_eq!(status, 200, "receipt: {answer}");
}

/// A long-poll from `pos` (10 s timeout) that `trigger` should wake 500 ms in; returns the
/// body and how long after the trigger it came back.
async fn long_poll_woken_by<F>(client: &Client, pos: &str, body: &Value, trigger: F) -> (Value, Duration)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        trigger.await;
        started
    });
    let (status, answer) = try_ss(client, Some(pos), Some(10_000), body).await;
    let returned = Instant::now();
    assert_eq!(status, 200, "long-poll: {answer}");
    let started = handle.await.expect("trigger");
    (answer, returned.saturating_duration_since(started))
}

const WAKE_BOUND: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn versions_advertise_simplified_sliding_sync() {
    let server = TestServer::start().await;
    let (status, body) = server.client().raw("GET", "/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["unstable_features"]["org.matrix.simplified_msc3575"], true, "{body}");
}

#[tokio::test]
async fn lists_are_sorted_by_recent_activity_and_cut_by_ranges() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let first = create_named_room(&alice, "first", false).await;
    let second = create_named_room(&alice, "second", false).await;
    let third = create_named_room(&alice, "third", false).await;
    // Activity: a message in the oldest room makes it the newest; a state change (a new
    // name) in `second` is not activity and does not move it.
    send_text(&alice, &first, "hello").await;
    set_name(&alice, &second, "second, renamed").await;

    let all = ss(&alice, None, &list((0, 9), 1, json!([]))).await;
    assert_eq!(all["lists"]["all"]["count"], 3, "{all}");
    assert_eq!(by_bump(&all), vec![first.to_string(), third.to_string(), second.to_string()], "{all}");
    assert_eq!(room(&all, &first)["initial"], true);

    // A range cuts the sorted list: [0, 1] is the two most recent, [2, 2] the last one.
    let top = ss(&alice, None, &list((0, 1), 1, json!([]))).await;
    assert_eq!(top["lists"]["all"]["count"], 3, "the count ignores the range");
    let mut shown: Vec<String> = top["rooms"].as_object().unwrap().keys().cloned().collect();
    shown.sort();
    let mut expected = vec![first.to_string(), third.to_string()];
    expected.sort();
    assert_eq!(shown, expected, "{top}");
    let mut last_only = list((2, 2), 1, json!([]));
    last_only["conn_id"] = json!("last");
    let last = ss(&alice, None, &last_only).await;
    assert_eq!(last["rooms"].as_object().unwrap().keys().cloned().collect::<Vec<_>>(), vec![second.to_string()]);

    // A new message moves `second` to the top: the next incremental response on the
    // [0, 1] connection brings it, with a bump_stamp above the others.
    let top_pos = pos(&top);
    send_text(&alice, &second, "now I am recent").await;
    let next = ss(&alice, Some(&top_pos), &list((0, 1), 1, json!([]))).await;
    let second_room = room(&next, &second);
    assert_eq!(second_room["initial"], true, "new to this connection: {next}");
    assert!(second_room["bump_stamp"].as_u64().unwrap() > room(&all, &first)["bump_stamp"].as_u64().unwrap(), "{next}");
    assert_eq!(bodies(second_room), vec!["now I am recent"]);
}

#[tokio::test]
async fn incremental_responses_carry_only_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let quiet = create_named_room(&alice, "quiet", true).await;
    let busy = create_named_room(&alice, "busy", true).await;
    join(&bob, &busy).await;
    let request = list((0, 9), 5, json!([["m.room.name", ""]]));
    let first = ss(&alice, None, &request).await;
    assert_eq!(room(&first, &busy)["name"], "busy");
    assert_eq!(room(&first, &busy)["joined_count"], 2);

    // Nothing happened: no rooms at all.
    let again = ss(&alice, Some(&pos(&first)), &request).await;
    assert!(again["rooms"].as_object().is_none_or(|r| r.is_empty()), "{again}");

    // Bob speaks in `busy`: only that room, only the new event, live, not initial, and the
    // name (unchanged) is not repeated.
    send_text(&bob, &busy, "news").await;
    let news = ss(&alice, Some(&pos(&again)), &request).await;
    assert!(!has_room(&news, &quiet), "{news}");
    let busy_room = room(&news, &busy);
    assert_eq!(bodies(busy_room), vec!["news"]);
    assert_eq!(busy_room["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(busy_room["num_live"], 1);
    assert!(busy_room.get("initial").is_none(), "{busy_room}");
    assert!(busy_room.get("name").is_none(), "{busy_room}");
    assert!(busy_room.get("required_state").is_none(), "{busy_room}");

    // A rename is sent as the changed name and the changed state event.
    set_name(&alice, &busy, "busier").await;
    let renamed = ss(&alice, Some(&pos(&news)), &request).await;
    assert_eq!(room(&renamed, &busy)["name"], "busier");
    assert_eq!(state_keys(room(&renamed, &busy), "m.room.name"), vec![""]);

    // The same pos may be used again (a retry after a lost response) and gives the same data.
    let retried = ss(&alice, Some(&pos(&news)), &request).await;
    assert_eq!(room(&retried, &busy)["name"], "busier");
}

#[tokio::test]
async fn filter_is_dm_follows_m_direct() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dm = create_named_room(&alice, "dm", false).await;
    let group = create_named_room(&alice, "group", false).await;
    put_global(&alice, "m.direct", json!({ bob.user_id().as_str(): [dm.as_str()] })).await;
    let body = json!({ "lists": {
        "dms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_dm": true } },
        "groups": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_dm": false } },
    } });
    let answer = ss(&alice, None, &body).await;
    assert_eq!(answer["lists"]["dms"]["count"], 1, "{answer}");
    assert_eq!(answer["lists"]["groups"]["count"], 1, "{answer}");
    assert_eq!(room(&answer, &dm)["is_dm"], true);
    assert!(room(&answer, &group).get("is_dm").is_none());
}

#[tokio::test]
async fn filter_is_encrypted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let encrypted = create_room(
        &alice,
        json!({ "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
    )
    .await;
    let plain = create_room(&alice, json!({})).await;
    let body = json!({ "lists": {
        "enc": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } },
        "plain": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": false } },
    } });
    let answer = ss(&alice, None, &body).await;
    assert_eq!(answer["lists"]["enc"]["count"], 1, "{answer}");
    assert_eq!(answer["lists"]["plain"]["count"], 1, "{answer}");
    assert!(has_room(&answer, &encrypted) && has_room(&answer, &plain));
    let only_enc = ss(&alice, None, &json!({ "lists": { "enc": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } } } })).await;
    assert!(has_room(&only_enc, &encrypted) && !has_room(&only_enc, &plain), "{only_enc}");
}

#[tokio::test]
async fn filter_is_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let invited = create_named_room(&alice, "invite", false).await;
    invite(&alice, &invited, &bob).await;
    let own = create_named_room(&bob, "own", false).await;
    let body = |want: bool| json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": want } } } });
    let invites = ss(&bob, None, &body(true)).await;
    assert_eq!(invites["lists"]["l"]["count"], 1);
    assert!(has_room(&invites, &invited) && !has_room(&invites, &own), "{invites}");
    let others = ss(&bob, None, &body(false)).await;
    assert!(!has_room(&others, &invited) && has_room(&others, &own), "{others}");
}

#[tokio::test]
async fn filter_room_types_and_not_room_types() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let space = create_room(&alice, json!({ "creation_content": { "type": "m.space" } })).await;
    let plain = create_room(&alice, json!({})).await;
    let body =
        |filters: Value| json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": filters } } });
    let spaces = ss(&alice, None, &body(json!({ "room_types": ["m.space"] }))).await;
    assert!(has_room(&spaces, &space) && !has_room(&spaces, &plain), "{spaces}");
    let untyped = ss(&alice, None, &body(json!({ "room_types": [null] }))).await;
    assert!(!has_room(&untyped, &space) && has_room(&untyped, &plain), "{untyped}");
    let not_spaces = ss(&alice, None, &body(json!({ "not_room_types": ["m.space"] }))).await;
    assert!(!has_room(&not_spaces, &space) && has_room(&not_spaces, &plain), "{not_spaces}");
    // not_room_types wins over room_types.
    let both = ss(&alice, None, &body(json!({ "room_types": ["m.space"], "not_room_types": ["m.space"] }))).await;
    assert_eq!(both["lists"]["l"]["count"], 0, "{both}");
}

#[tokio::test]
async fn filter_spaces_lists_the_children_of_joined_spaces() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let space = create_room(&alice, json!({ "creation_content": { "type": "m.space" } })).await;
    let child = create_named_room(&alice, "child", false).await;
    let removed = create_named_room(&alice, "removed child", false).await;
    let outside = create_named_room(&alice, "outside", false).await;
    let via = json!({ "via": [server.server_name()] });
    put_state(&alice, &space, "m.space.child", child.as_str(), via.clone()).await;
    put_state(&alice, &space, "m.space.child", removed.as_str(), via).await;
    // A child entry without `via` no longer counts.
    put_state(&alice, &space, "m.space.child", removed.as_str(), json!({})).await;
    let body = json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "spaces": [space.as_str()] } } } });
    let answer = ss(&alice, None, &body).await;
    assert_eq!(answer["lists"]["l"]["count"], 1, "{answer}");
    assert!(has_room(&answer, &child), "{answer}");
    assert!(!has_room(&answer, &removed) && !has_room(&answer, &outside) && !has_room(&answer, &space));
}

#[tokio::test]
async fn required_state_wildcards() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "wild", true).await;
    join(&bob, &room_id).await;
    put_state(&alice, &room_id, "m.custom", "a", json!({ "n": 1 })).await;
    put_state(&alice, &room_id, "m.custom", "b", json!({ "n": 2 })).await;

    // ["*", "*"]: the whole state.
    let all = ss(&alice, None, &list((0, 0), 1, json!([["*", "*"]]))).await;
    let types = state_types(room(&all, &room_id));
    for kind in ["m.room.create", "m.room.power_levels", "m.room.name", "m.room.join_rules", "m.custom"] {
        assert!(types.contains(&kind.to_owned()), "{kind} missing: {types:?}");
    }
    assert_eq!(state_keys(room(&all, &room_id), "m.room.member").len(), 2);

    // [type, "*"]: every key of one type, nothing else.
    let custom = ss(&alice, None, &list((0, 0), 1, json!([["m.custom", "*"]]))).await;
    assert_eq!(state_types(room(&custom, &room_id)), vec!["m.custom"]);
    assert_eq!(state_keys(room(&custom, &room_id), "m.custom"), vec!["a", "b"]);

    // ["*", key]: that key in every type.
    let key_a = ss(&alice, None, &list((0, 0), 1, json!([["*", "a"]]))).await;
    assert_eq!(state_keys(room(&key_a, &room_id), "m.custom"), vec!["a"]);
    assert_eq!(state_types(room(&key_a, &room_id)), vec!["m.custom"]);

    // An exact pair.
    let name = ss(&alice, None, &list((0, 0), 1, json!([["m.room.name", ""]]))).await;
    assert_eq!(state_types(room(&name, &room_id)), vec!["m.room.name"]);
}

#[tokio::test]
async fn required_state_lazy_members_and_me() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = create_named_room(&alice, "lazy", true).await;
    join(&bob, &room_id).await;
    join(&carol, &room_id).await;
    send_text(&bob, &room_id, "from bob").await;

    // $LAZY: the member events of the timeline's senders only (bob), not carol's.
    let request = list((0, 0), 1, json!([["m.room.member", "$LAZY"]]));
    let lazy = ss(&alice, None, &request).await;
    assert_eq!(state_keys(room(&lazy, &room_id), "m.room.member"), vec![bob.user_id().to_string()], "{lazy}");

    // Incremental: a sender already sent is not sent again; a new one is.
    send_text(&bob, &room_id, "bob again").await;
    let again = ss(&alice, Some(&pos(&lazy)), &request).await;
    assert!(state_keys(room(&again, &room_id), "m.room.member").is_empty(), "{again}");
    send_text(&carol, &room_id, "from carol").await;
    let carol_speaks = ss(&alice, Some(&pos(&again)), &request).await;
    assert_eq!(state_keys(room(&carol_speaks, &room_id), "m.room.member"), vec![carol.user_id().to_string()]);

    // $ME: the user's own membership.
    let me = ss(&alice, None, &list((0, 0), 1, json!([["m.room.member", "$ME"]]))).await;
    assert_eq!(state_keys(room(&me, &room_id), "m.room.member"), vec![alice.user_id().to_string()]);
}

#[tokio::test]
async fn timeline_limit_limited_and_prev_batch() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "long", false).await;
    for i in 0..6 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let answer = ss(&alice, None, &list((0, 0), 3, json!([]))).await;
    let entry = room(&answer, &room_id);
    assert_eq!(bodies(entry), vec!["m3", "m4", "m5"]);
    assert_eq!(entry["limited"], true, "{entry}");
    assert_eq!(entry["num_live"], 0, "nothing is live in a first response");
    // prev_batch continues backwards with /messages, without overlap.
    let prev_batch = entry["prev_batch"].as_str().expect("prev_batch");
    let path =
        format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=2&from={}", enc(room_id.as_str()), enc(prev_batch));
    let (status, page) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    let older: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(older, vec!["m2", "m1"]);
    // The response's `pos` is a /messages token too (MSC4186): backwards from it, the newest.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
        enc(room_id.as_str()),
        enc(&pos(&answer))
    );
    let (status, page) = alice.raw("GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "m5", "{page}");

    // A room that fits in the limit is not limited.
    let short = create_named_room(&alice, "short", false).await;
    let mut other_connection = list((0, 0), 50, json!([]));
    other_connection["conn_id"] = json!("other");
    let all = ss(&alice, None, &other_connection).await;
    let short_entry = room(&all, &short);
    assert_eq!(short_entry["timeline"][0]["type"], "m.room.create", "{short_entry}");
    assert!(short_entry.get("limited").is_none_or(|l| l == false), "{short_entry}");

    // An incremental response with more new events than the limit is limited too.
    let from = pos(&answer);
    for i in 6..10 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let gap = ss(&alice, Some(&from), &list((0, 1), 3, json!([]))).await;
    let entry = room(&gap, &room_id);
    assert_eq!(bodies(entry), vec!["m7", "m8", "m9"]);
    assert_eq!(entry["limited"], true);
    assert_eq!(entry["num_live"], 3);
}

#[tokio::test]
async fn a_larger_timeline_limit_expands_the_timeline() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_named_room(&alice, "expand", false).await;
    for i in 0..5 {
        send_text(&alice, &room_id, &format!("m{i}")).await;
    }
    let small = ss(&alice, None, &list((0, 0), 1, json!([]))).await;
    assert_eq!(bodies(room(&small, &room_id)), vec!["m4"]);
    // The same room with a larger limit: sent again at once with the older events.
    let large = ss(&alice, Some(&pos(&small)), &list((0, 0), 3, json!([]))).await;
    let entry = room(&large, &room_id);
    assert_eq!(bodies(entry), vec!["m2", "m3", "m4"]);
    assert_eq!(entry["expanded_timeline"], true, "{entry}");
    assert_eq!(entry["unstable_expanded_timeline"], true);
    assert_eq!(entry["num_live"], 0);
    // Already holding those: the same limit again sends nothing.
    let same = ss(&alice, Some(&pos(&large)), &list((0, 0), 3, json!([]))).await;
    assert!(!has_room(&same, &room_id), "{same}");
}

#[tokio::test]
async fn room_subscriptions_bring_rooms_outside_the_ranges() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let stranger = server.register("stranger").await;
    let old = create_named_room(&alice, "old", false).await;
    send_text(&alice, &old, "old news").await;
    let _newer = create_named_room(&alice, "newer", false).await;
    let private = create_named_room(&stranger, "not yours", false).await;
    let body = json!({
        "lists": { "all": { "ranges": [[0, 0]], "timeline_limit": 1 } },
        "room_subscriptions": {
            old.as_str(): { "timeline_limit": 5, "required_state": [["m.room.name", ""]] },
            private.as_str(): { "timeline_limit": 5 },
        },
    });
    let answer = ss(&alice, None, &body).await;
    let entry = room(&answer, &old);
    assert_eq!(entry["name"], "old");
    assert_eq!(state_types(entry), vec!["m.room.name"]);
    assert!(bodies(entry).contains(&"old news".to_owned()), "{entry}");
    assert!(!has_room(&answer, &private), "a room the user is not in is ignored: {answer}");
    // New events in the subscribed room arrive while it stays outside the range.
    send_text(&alice, &old, "more").await;
    let next = ss(&alice, Some(&pos(&answer)), &body).await;
    assert_eq!(bodies(room(&next, &old)), vec!["more"]);
}

#[tokio::test]
async fn unread_counts_rise_with_messages_and_clear_on_a_receipt() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "unread", true).await;
    join(&bob, &room_id).await;
    let request = list((0, 9), 1, json!([]));
    let first = ss(&alice, None, &request).await;
    assert_eq!(room(&first, &room_id)["notification_count"], 0, "{first}");
    send_text(&bob, &room_id, "one").await;
    let last = send_text(&bob, &room_id, "two").await;
    let unread = ss(&alice, Some(&pos(&first)), &request).await;
    assert_eq!(room(&unread, &room_id)["notification_count"], 2, "{unread}");
    read_receipt(&alice, &room_id, last.as_str()).await;
    let read = ss(&alice, Some(&pos(&unread)), &request).await;
    let entry = room(&read, &room_id);
    assert_eq!(entry["notification_count"], 0, "{read}");
    assert!(entry.get("timeline").is_none(), "only the counts changed: {entry}");
}

/// matrix-sdk sets a room's counts from every response that mentions the room, an absent
/// count as 0: a room sent for any other reason must carry its unchanged counts too.
#[tokio::test]
async fn every_room_sent_carries_its_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "counted", true).await;
    join(&bob, &room_id).await;
    send_text(&bob, &room_id, "unread").await;
    let request = list((0, 9), 5, json!([]));
    let first = ss(&alice, None, &request).await;
    assert_eq!(room(&first, &room_id)["notification_count"], 1, "{first}");
    // An event that notifies nobody (a member renaming themselves): the room is sent again,
    // its counts unchanged.
    let bob_id = bob.user_id().to_string();
    put_state(&bob, &room_id, "m.room.member", &bob_id, json!({ "membership": "join", "displayname": "Bob B." })).await;
    let next = ss(&alice, Some(&pos(&first)), &request).await;
    let entry = room(&next, &room_id);
    assert_eq!(entry["timeline"][0]["content"]["displayname"], "Bob B.", "{entry}");
    assert_eq!(
        (entry["notification_count"].as_u64(), entry["highlight_count"].as_u64()),
        (Some(1), Some(0)),
        "{entry}"
    );
    // A DM flag change alone (no event in the room) also carries them.
    put_global(&alice, "m.direct", json!({ bob.user_id().as_str(): [room_id.as_str()] })).await;
    let dm = ss(&alice, Some(&pos(&next)), &request).await;
    let entry = room(&dm, &room_id);
    assert_eq!(entry["is_dm"], true, "{entry}");
    assert_eq!(entry["notification_count"], 1, "{entry}");
}

#[tokio::test]
async fn invites_come_with_stripped_state_and_turn_into_joined_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "come in", false).await;
    send_text(&alice, &room_id, "secret before the invite").await;
    let request = list((0, 9), 5, json!([["m.room.name", ""]]));
    let before = ss(&bob, None, &request).await;
    assert!(!has_room(&before, &room_id));

    invite(&alice, &room_id, &bob).await;
    let invited = ss(&bob, Some(&pos(&before)), &request).await;
    let entry = room(&invited, &room_id);
    assert_eq!(entry["initial"], true);
    let stripped = entry["invite_state"].as_array().expect("invite_state");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "come in"), "{entry}");
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id().as_str()
            && e["content"]["membership"] == "invite"),
        "{entry}"
    );
    assert!(entry.get("timeline").is_none(), "no timeline before joining: {entry}");
    assert!(entry["bump_stamp"].is_u64());

    join(&bob, &room_id).await;
    let joined = ss(&bob, Some(&pos(&invited)), &request).await;
    let entry = room(&joined, &room_id);
    assert_eq!(entry["initial"], true, "joining replaces the invite: {entry}");
    assert!(entry.get("invite_state").is_none());
    assert_eq!(entry["name"], "come in");
    assert_eq!(entry["joined_count"], 2);
    assert!(
        entry["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id().as_str())
    );
}

#[tokio::test]
async fn heroes_name_a_room_without_a_name() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room_id).await;
    let answer = ss(&alice, None, &list((0, 0), 1, json!([]))).await;
    let entry = room(&answer, &room_id);
    assert!(entry.get("name").is_none(), "{entry}");
    let heroes = entry["heroes"].as_array().expect("heroes");
    assert_eq!(heroes.len(), 1);
    assert_eq!(heroes[0]["user_id"], bob.user_id().as_str());
    assert_eq!(heroes[0]["displayname"], bob.user_id().localpart());
    let named = create_named_room(&alice, "named", false).await;
    let answer = ss(&alice, None, &list((0, 0), 1, json!([]))).await;
    assert!(room(&answer, &named).get("heroes").is_none());
}

#[tokio::test]
async fn unknown_positions_are_refused_with_m_unknown_pos() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    create_named_room(&alice, "r", false).await;
    let request = list((0, 9), 1, json!([]));
    let first = ss(&alice, None, &request).await;
    let alice_pos = pos(&first);

    let (status, body) = try_ss(&alice, Some("garbage"), Some(0), &request).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    // Another user's position is not theirs.
    let (status, body) = try_ss(&bob, Some(&alice_pos), Some(0), &request).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    // Another connection of the same device is a different connection.
    let (status, body) = try_ss(&alice, Some(&alice_pos), Some(0), &json!({ "conn_id": "other", "lists": {} })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    // Starting the connection again retires its old positions.
    let restarted = ss(&alice, None, &request).await;
    let (status, body) = try_ss(&alice, Some(&alice_pos), Some(0), &request).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    assert_eq!(try_ss(&alice, Some(&pos(&restarted)), Some(0), &request).await.0, 200);
    // Once the client moved on, positions before the one it used are gone.
    let second = ss(&alice, Some(&pos(&restarted)), &request).await;
    ss(&alice, Some(&pos(&second)), &request).await;
    let (status, body) = try_ss(&alice, Some(&pos(&restarted)), Some(0), &request).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
}

#[tokio::test]
async fn a_restart_makes_positions_unknown() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let request = list((0, 9), 1, json!([]));
    let first = ss(&alice, None, &request).await;
    server.restart().await;
    let (status, body) = try_ss(&alice, Some(&pos(&first)), Some(0), &request).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
}

#[tokio::test]
async fn long_poll_wakes_on_a_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "wake", true).await;
    join(&bob, &room_id).await;
    let request = list((0, 9), 1, json!([]));
    let first = ss(&alice, None, &request).await;
    // Nothing new for alice (a stranger talking in a room of their own does not count): the
    // long-poll waits out its timeout.
    let stranger = server.register("stranger").await;
    let elsewhere = create_named_room(&stranger, "elsewhere", false).await;
    let chatter = tokio::spawn(async move {
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            send_text(&stranger, &elsewhere, &format!("unrelated {i}")).await;
        }
    });
    let started = Instant::now();
    let (status, idle) = try_ss(&alice, Some(&pos(&first)), Some(700), &request).await;
    chatter.await.expect("chatter");
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(600), "returned early: {idle}");
    assert!(idle["rooms"].as_object().is_none_or(|r| r.is_empty()), "{idle}");

    let (answer, delay) = long_poll_woken_by(&alice, &pos(&idle), &request, {
        let (bob, room_id) = (bob.clone(), room_id.clone());
        async move {
            send_text(&bob, &room_id, "wake up").await;
        }
    })
    .await;
    assert!(delay < WAKE_BOUND, "woke after {delay:?}");
    assert_eq!(bodies(room(&answer, &room_id)), vec!["wake up"]);
}

#[tokio::test]
async fn long_poll_wakes_on_a_to_device_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let request = json!({ "lists": {}, "extensions": { "to_device": { "enabled": true } } });
    let first = ss(&alice, None, &request).await;
    let since = first["extensions"]["to_device"]["next_batch"].as_str().expect("next_batch").to_owned();
    let body = json!({ "lists": {}, "extensions": { "to_device": { "enabled": true, "since": since } } });
    let device = alice.device_id.clone().expect("device").to_string();
    let target = alice.user_id().to_string();
    let (answer, delay) = long_poll_woken_by(&alice, &pos(&first), &body, {
        let bob = bob.clone();
        async move {
            let messages = json!({ "messages": { target: { device: { "body": "psst" } } } });
            let (status, _) =
                bob.raw("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", Some(&messages.to_string())).await;
            assert_eq!(status, 200);
        }
    })
    .await;
    assert!(delay < WAKE_BOUND, "woke after {delay:?}");
    let events = answer["extensions"]["to_device"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{answer}");
    assert_eq!(events[0]["content"]["body"], "psst");
    assert_eq!(events[0]["sender"], bob.user_id().as_str());
}

#[tokio::test]
async fn to_device_extension_delivers_until_acknowledged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let device = alice.device_id.clone().expect("device").to_string();
    let messages = json!({ "messages": { alice.user_id().as_str(): { device: { "body": "hello" } } } });
    let (status, _) = bob.raw("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", Some(&messages.to_string())).await;
    assert_eq!(status, 200);
    let request = |since: Option<&str>| {
        let mut to_device = json!({ "enabled": true });
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        json!({ "extensions": { "to_device": to_device } })
    };
    let first = ss(&alice, None, &request(None)).await;
    assert_eq!(first["extensions"]["to_device"]["events"][0]["content"]["body"], "hello", "{first}");
    let next_batch = first["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();
    // Not acknowledged yet (no since): delivered again, even on a new connection.
    let again = ss(&alice, None, &request(None)).await;
    assert_eq!(again["extensions"]["to_device"]["events"].as_array().map(Vec::len), Some(1), "{again}");
    // Acknowledged: gone for good.
    let acked = ss(&alice, None, &request(Some(&next_batch))).await;
    assert!(acked["extensions"]["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{acked}");
    let later = ss(&alice, None, &request(None)).await;
    assert!(later["extensions"]["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{later}");
}

#[tokio::test]
async fn e2ee_extension_reports_device_lists_and_key_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "shared", true).await;
    join(&bob, &room_id).await;
    let request = json!({ "extensions": { "e2ee": { "enabled": true } } });
    let first = ss(&alice, None, &request).await;
    assert_eq!(first["extensions"]["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0, "{first}");
    assert_eq!(first["extensions"]["e2ee"]["device_unused_fallback_key_types"], json!([]));

    // Alice uploads one-time keys: her count goes up.
    let device = alice.device_id.clone().expect("device").to_string();
    let keys = json!({ "one_time_keys": { format!("signed_curve25519:{device}1"): { "key": "k1" }, format!("signed_curve25519:{device}2"): { "key": "k2" } } });
    let (status, answer) = alice.raw("POST", "/_matrix/client/v3/keys/upload", Some(&keys.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    // Bob gets a new device: alice must hear that his device list changed.
    let mut bob2 = server.client();
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": bob.user_id().as_str() }, "password": "password" });
    let (status, answer) = bob2.raw("POST", "/_matrix/client/v3/login", Some(&login.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    bob2.token = answer["access_token"].as_str().map(str::to_owned);
    let (status, _) = bob2.raw("POST", "/_matrix/client/v3/logout", Some("{}")).await;
    assert_eq!(status, 200);
    let next = ss(&alice, Some(&pos(&first)), &request).await;
    let e2ee = &next["extensions"]["e2ee"];
    assert_eq!(e2ee["device_one_time_keys_count"]["signed_curve25519"], 2, "{next}");
    let listed = |body: &Value, section: &str, user: &str| {
        body["extensions"]["e2ee"]["device_lists"][section].as_array().is_some_and(|c| c.iter().any(|u| u == user))
    };
    assert!(listed(&next, "changed", bob.user_id().as_str()), "{next}");

    // Carol joins (alice must track her devices), then leaves and shares no room (left).
    let carol = server.register("carol").await;
    join(&carol, &room_id).await;
    let joined = ss(&alice, Some(&pos(&next)), &request).await;
    assert!(listed(&joined, "changed", carol.user_id().as_str()), "{joined}");
    crate::sync::leave(&carol, &room_id).await;
    let left = ss(&alice, Some(&pos(&joined)), &request).await;
    assert!(listed(&left, "left", carol.user_id().as_str()), "{left}");
}

#[tokio::test]
async fn account_data_extension_global_and_per_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let inside = create_named_room(&alice, "inside", false).await;
    let outside = create_named_room(&alice, "outside", false).await;
    send_text(&alice, &inside, "bump").await;
    put_global(&alice, "m.custom.global", json!({ "a": 1 })).await;
    put_room_data(&alice, &inside, "m.custom.room", json!({ "r": 1 })).await;
    put_room_data(&alice, &outside, "m.custom.room", json!({ "r": 2 })).await;
    let request = json!({
        "lists": { "top": { "ranges": [[0, 0]], "timeline_limit": 1 } },
        "extensions": { "account_data": { "enabled": true, "lists": ["top"] } },
    });
    let first = ss(&alice, None, &request).await;
    let data = &first["extensions"]["account_data"];
    let global: Vec<&str> = data["global"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(global.contains(&"m.custom.global") && global.contains(&"m.push_rules"), "{data}");
    assert_eq!(data["rooms"][inside.as_str()][0]["content"]["r"], 1, "{data}");
    assert!(data["rooms"].get(outside.as_str()).is_none(), "outside the list's range: {data}");

    // Incremental: only what changed.
    put_global(&alice, "m.custom.global", json!({ "a": 2 })).await;
    let next = ss(&alice, Some(&pos(&first)), &request).await;
    let data = &next["extensions"]["account_data"];
    assert_eq!(data["global"].as_array().map(Vec::len), Some(1), "{data}");
    assert_eq!(data["global"][0]["content"]["a"], 2);
    assert!(data.get("rooms").is_none_or(|r| r.as_object().is_none_or(|r| r.is_empty())), "{data}");

    // `lists: []` scopes out every room.
    put_room_data(&alice, &inside, "m.custom.room", json!({ "r": 3 })).await;
    let scoped = json!({
        "lists": { "top": { "ranges": [[0, 0]], "timeline_limit": 1 } },
        "extensions": { "account_data": { "enabled": true, "lists": [], "rooms": [] } },
    });
    let none = ss(&alice, Some(&pos(&next)), &scoped).await;
    assert!(none["extensions"]["account_data"].get("rooms").is_none(), "{none}");
}

#[tokio::test]
async fn receipts_extension() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "receipts", true).await;
    join(&bob, &room_id).await;
    let event = send_text(&alice, &room_id, "read me").await;
    let request = json!({
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": { "receipts": { "enabled": true } },
    });
    let first = ss(&alice, None, &request).await;
    read_receipt(&bob, &room_id, event.as_str()).await;
    let next = ss(&alice, Some(&pos(&first)), &request).await;
    let receipt = &next["extensions"]["receipts"]["rooms"][room_id.as_str()];
    assert_eq!(receipt["type"], "m.receipt", "{next}");
    assert!(receipt["content"][event.as_str()]["m.read"][bob.user_id().as_str()]["ts"].is_u64(), "{receipt}");
    // Already sent: not repeated.
    let quiet = ss(&alice, Some(&pos(&next)), &request).await;
    assert!(quiet["extensions"]["receipts"]["rooms"].get(room_id.as_str()).is_none(), "{quiet}");
}

#[tokio::test]
async fn typing_extension() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_named_room(&alice, "typing", true).await;
    join(&bob, &room_id).await;
    let request = json!({
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": { "typing": { "enabled": true } },
    });
    let first = ss(&alice, None, &request).await;
    assert!(first["extensions"]["typing"]["rooms"].get(room_id.as_str()).is_none(), "nobody types yet: {first}");
    let (answer, delay) = long_poll_woken_by(&alice, &pos(&first), &request, {
        let (bob, room_id) = (bob.clone(), room_id.clone());
        async move {
            let path =
                format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room_id.as_str()), enc(bob.user_id().as_str()));
            let (status, _) = bob.raw("PUT", &path, Some(r#"{"typing":true,"timeout":30000}"#)).await;
            assert_eq!(status, 200);
        }
    })
    .await;
    assert!(delay < WAKE_BOUND, "woke after {delay:?}");
    let typing = &answer["extensions"]["typing"]["rooms"][room_id.as_str()];
    assert_eq!(typing["content"]["user_ids"], json!([bob.user_id().as_str()]), "{answer}");
}

#[tokio::test]
async fn left_and_kicked_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let left = create_named_room(&alice, "left", true).await;
    let kicked = create_named_room(&alice, "kicked", true).await;
    join(&bob, &left).await;
    join(&bob, &kicked).await;
    let request = list((0, 9), 5, json!([]));
    let first = ss(&bob, None, &request).await;
    assert_eq!(first["lists"]["all"]["count"], 2);
    crate::sync::leave(&bob, &left).await;
    let path = format!("/_matrix/client/v3/rooms/{}/kick", enc(kicked.as_str()));
    let (status, _) = alice.raw("POST", &path, Some(&json!({ "user_id": bob.user_id().as_str() }).to_string())).await;
    assert_eq!(status, 200);
    // Both memberships are news to the connection: both rooms come with the leave event.
    let next = ss(&bob, Some(&pos(&first)), &request).await;
    for room_id in [&left, &kicked] {
        let timeline = room(&next, room_id)["timeline"].as_array().unwrap().clone();
        let last = timeline.last().expect("leave event");
        assert_eq!(last["content"]["membership"], "leave", "{next}");
    }
    // A new connection: the kick is still shown, the room bob left himself is not.
    let fresh = ss(&bob, None, &request).await;
    assert!(has_room(&fresh, &kicked) && !has_room(&fresh, &left), "{fresh}");
    // Messages after the kick are not shown.
    send_text(&alice, &kicked, "after the kick").await;
    let after = ss(&bob, Some(&pos(&fresh)), &request).await;
    assert!(!has_room(&after, &kicked), "{after}");
}

#[tokio::test]
async fn a_user_in_many_rooms_gets_the_window_then_only_what_is_new_to_the_client() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..40 {
        rooms.push(create_named_room(&alice, &format!("room {i}"), false).await);
    }
    // Newest first: the last created room is the most recent.
    let newest_first: Vec<String> = rooms.iter().rev().map(|r| r.to_string()).collect();
    let started = Instant::now();
    let first = ss(&alice, None, &list((0, 19), 1, json!([["m.room.name", ""]]))).await;
    let took = started.elapsed();
    assert_eq!(first["lists"]["all"]["count"], 40);
    assert_eq!(by_bump(&first), newest_first[..20].to_vec(), "{first}");
    assert_eq!(room(&first, &rooms[39])["name"], "room 39");
    eprintln!("first response for 20 of 40 rooms (debug build): {took:?}");

    // Growing the range sends the 20 rooms the client does not have, not the first 20 again.
    let grown = ss(&alice, Some(&pos(&first)), &list((0, 39), 1, json!([["m.room.name", ""]]))).await;
    assert_eq!(by_bump(&grown), newest_first[20..].to_vec(), "{grown}");
    assert!(grown["rooms"].as_object().unwrap().values().all(|r| r["initial"] == true));
}

#[tokio::test]
async fn bad_requests_get_the_spec_errcodes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let backwards = json!({ "lists": { "l": { "ranges": [[5, 2]], "timeline_limit": 1 } } });
    let (status, body) = try_ss(&alice, None, Some(0), &backwards).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let bad_since = json!({ "extensions": { "to_device": { "enabled": true, "since": "yesterday" } } });
    let (status, body) = try_ss(&alice, None, Some(0), &bad_since).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let wrong_type = json!({ "lists": { "l": { "ranges": "all", "timeline_limit": 1 } } });
    let (status, body) = try_ss(&alice, None, Some(0), &wrong_type).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (status, body) = alice.raw("POST", PATH, Some("{not json")).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{body}");
    let (status, body) = server.client().raw("POST", PATH, Some("{}")).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{body}");
}

/// Timing of the first response for a user in 500 rooms (run by hand:
/// `cargo test --test it sliding_sync::first_response_timing -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn first_response_timing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for i in 0..500 {
        let room_id = create_named_room(&alice, &format!("room {i}"), true).await;
        if i % 10 == 0 {
            join(&bob, &room_id).await;
            send_text(&bob, &room_id, "hello").await;
        }
    }
    let request = json!({
        "conn_id": "room-list",
        "lists": { "all_rooms": {
            "ranges": [[0, 19]], "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.create", ""]],
            "filters": { "not_room_types": ["m.space"] },
        } },
        "extensions": { "account_data": { "enabled": true }, "receipts": { "enabled": true, "rooms": ["*"] }, "typing": { "enabled": true } },
    });
    for run in 0..3 {
        let started = Instant::now();
        let answer = ss(&alice, None, &request).await;
        eprintln!(
            "run {run}: first response, 20 of {} rooms: {:?}",
            answer["lists"]["all_rooms"]["count"],
            started.elapsed()
        );
        let started = Instant::now();
        let answer = ss(&alice, Some(&pos(&answer)), &request).await;
        eprintln!("run {run}: nothing new, 20 rooms in range: {:?}", started.elapsed());
        let mut grown = request.clone();
        grown["lists"]["all_rooms"]["ranges"] = json!([[0, 499]]);
        let started = Instant::now();
        let all = ss(&alice, Some(&pos(&answer)), &grown).await;
        eprintln!(
            "run {run}: growing to all rooms ({} new): {:?}",
            all["rooms"].as_object().map_or(0, |r| r.len()),
            started.elapsed()
        );
        // What a long-poll pays on each wake-up that turns out to concern nothing of its own.
        let started = Instant::now();
        let idle = ss(&alice, Some(&pos(&all)), &grown).await;
        assert!(idle["rooms"].as_object().is_none_or(|r| r.is_empty()), "{idle}");
        eprintln!("run {run}: nothing new, 500 rooms in range: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn filter_tags_and_not_tags() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let favourite = create_named_room(&alice, "favourite", false).await;
    let low = create_named_room(&alice, "low", false).await;
    let plain = create_named_room(&alice, "plain", false).await;
    for (room_id, tag) in [(&favourite, "m.favourite"), (&low, "m.lowpriority")] {
        let path = format!(
            "/_matrix/client/v3/user/{}/rooms/{}/tags/{tag}",
            enc(alice.user_id().as_str()),
            enc(room_id.as_str())
        );
        let (status, body) = alice.raw("PUT", &path, Some("{}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let body =
        |filters: Value| json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": filters } } });
    let favourites = ss(&alice, None, &body(json!({ "tags": ["m.favourite"] }))).await;
    assert_eq!(favourites["lists"]["l"]["count"], 1, "{favourites}");
    assert!(has_room(&favourites, &favourite));
    let rest = ss(&alice, None, &body(json!({ "not_tags": ["m.favourite", "m.lowpriority"] }))).await;
    assert_eq!(rest["lists"]["l"]["count"], 1, "{rest}");
    assert!(has_room(&rest, &plain));
}
