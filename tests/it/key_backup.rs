//! Server-side key backups: versions (numbering, update rules, deletion), keys (count, etag, the
//! spec's replacement rule, per-room and per-session reads and deletes), version errors,
//! privacy, malformed input, durability across a restart, and deletion with the account.

use ruma::{
    api::client::backup::{BackupAlgorithm, create_backup_version, get_backup_keys_for_room, get_latest_backup_info},
    owned_room_id,
    serde::Raw,
};
use serde_json::{Value, json};

use crate::harness::{Client, TestServer};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:example.org";
const ROOM_ENC: &str = "%21room%3Aexample.org";

fn auth_data(public_key: &str) -> Value {
    json!({ "public_key": public_key, "signatures": { "@alice:example.org": { "ed25519:DEV": "sig" } } })
}

fn key(verified: bool, index: u64, forwarded: u64, tag: &str) -> Value {
    json!({
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": { "ephemeral": "ZXBo", "ciphertext": tag, "mac": "bWFj" },
    })
}

async fn create(client: &Client) -> String {
    let (status, body) = client
        .raw(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            Some(&json!({ "algorithm": ALGORITHM, "auth_data": auth_data("cGs") }).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["version"].as_str().expect("a version string").to_owned()
}

async fn put_session(client: &Client, version: &str, session: &str, data: Value) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/room_keys/keys/{ROOM_ENC}/{session}?version={version}");
    client.raw("PUT", &path, Some(&data.to_string())).await
}

async fn get(client: &Client, path: &str) -> (u16, Value) {
    client.raw("GET", path, None).await
}

/// The ciphertext tag of the stored key of `session` (None when there is none).
async fn stored_tag(client: &Client, version: &str, session: &str) -> Option<String> {
    let (status, body) =
        get(client, &format!("/_matrix/client/v3/room_keys/keys/{ROOM_ENC}/{session}?version={version}")).await;
    match status {
        200 => Some(body["session_data"]["ciphertext"].as_str().expect("ciphertext").to_owned()),
        404 => {
            assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
            None
        }
        other => panic!("{other} {body}"),
    }
}

fn assert_error(answer: (u16, Value), status: u16, errcode: &str) {
    assert_eq!((answer.0, answer.1["errcode"].as_str().unwrap_or("")), (status, errcode), "{}", answer.1);
}

#[tokio::test]
async fn versions_are_created_read_updated_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/version").await, 404, "M_NOT_FOUND");

    // ruma's own types on the wire.
    let algorithm: Raw<BackupAlgorithm> =
        Raw::from_json_string(json!({ "algorithm": ALGORITHM, "auth_data": auth_data("cGs") }).to_string()).unwrap();
    let version = alice.send(create_backup_version::v3::Request::new(algorithm)).await.version;
    assert_eq!(version, "1");
    let info = alice.send(get_latest_backup_info::v3::Request::new()).await;
    assert_eq!((info.version.as_str(), u64::from(info.count)), ("1", 0));
    let parsed = info.algorithm.deserialize().expect("a megolm backup algorithm");
    assert_eq!(parsed.algorithm(), ALGORITHM);

    let (status, body) = get(&alice, "/_matrix/client/v3/room_keys/version/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm"], ALGORITHM);
    assert_eq!(body["auth_data"], auth_data("cGs"));
    assert_eq!((body["count"].clone(), body["version"].clone()), (json!(0), json!("1")));
    assert!(body["etag"].is_string(), "{body}");

    // Update: the auth data changes; the algorithm and a body version must match.
    let path = "/_matrix/client/v3/room_keys/version/1";
    let update = json!({ "algorithm": ALGORITHM, "auth_data": auth_data("bmV3"), "version": "1" });
    let (status, body) = alice.raw("PUT", path, Some(&update.to_string())).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(get(&alice, path).await.1["auth_data"], auth_data("bmV3"));
    let other_algorithm = json!({ "algorithm": "m.other", "auth_data": auth_data("eA") });
    assert_error(alice.raw("PUT", path, Some(&other_algorithm.to_string())).await, 400, "M_INVALID_PARAM");
    let other_version = json!({ "algorithm": ALGORITHM, "auth_data": auth_data("eA"), "version": "2" });
    assert_error(alice.raw("PUT", path, Some(&other_version.to_string())).await, 400, "M_INVALID_PARAM");
    assert_eq!(get(&alice, path).await.1["auth_data"], auth_data("bmV3"), "refused updates change nothing");
    let unknown = json!({ "algorithm": ALGORITHM, "auth_data": auth_data("eA") }).to_string();
    assert_error(alice.raw("PUT", "/_matrix/client/v3/room_keys/version/9", Some(&unknown)).await, 404, "M_NOT_FOUND");

    // A second version becomes current; deleting it makes the first current again.
    assert_eq!(create(&alice).await, "2");
    assert_eq!(get(&alice, "/_matrix/client/v3/room_keys/version").await.1["version"], "2");
    let (status, body) = alice.raw("DELETE", "/_matrix/client/v3/room_keys/version/2", None).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(get(&alice, "/_matrix/client/v3/room_keys/version").await.1["version"], "1");
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/version/2").await, 404, "M_NOT_FOUND");
    // Deleting a deleted version succeeds (the spec); one never created is not found.
    assert_eq!(alice.raw("DELETE", "/_matrix/client/v3/room_keys/version/2", None).await.0, 200);
    assert_error(alice.raw("DELETE", "/_matrix/client/v3/room_keys/version/5", None).await, 404, "M_NOT_FOUND");
    assert_error(alice.raw("DELETE", "/_matrix/client/v3/room_keys/version/abc", None).await, 404, "M_NOT_FOUND");
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/version/abc").await, 404, "M_NOT_FOUND");

    // Numbers are never reused, even after every version is deleted.
    assert_eq!(alice.raw("DELETE", "/_matrix/client/v3/room_keys/version/1", None).await.0, 200);
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/version").await, 404, "M_NOT_FOUND");
    assert_eq!(create(&alice).await, "3");
}

#[tokio::test]
async fn keys_are_counted_and_the_etag_moves_only_when_they_change() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = create(&alice).await;
    let etag_of = |body: &Value| body["etag"].as_str().expect("etag").to_owned();
    let info_path = format!("/_matrix/client/v3/room_keys/version/{version}");
    let initial = etag_of(&get(&alice, &info_path).await.1);

    let (status, body) = put_session(&alice, &version, "s1", key(false, 3, 1, "a")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    let after_first = etag_of(&body);
    assert_ne!(after_first, initial);
    // Reads do not move it; the version info agrees with the write's answer.
    let info = get(&alice, &info_path).await.1;
    assert_eq!((info["count"].clone(), etag_of(&info)), (json!(1), after_first.clone()));
    get(&alice, &format!("/_matrix/client/v3/room_keys/keys?version={version}")).await;
    assert_eq!(etag_of(&get(&alice, &info_path).await.1), after_first);

    // A key that loses to the stored one changes nothing, the etag included.
    let (_, body) = put_session(&alice, &version, "s1", key(false, 3, 1, "tie")).await;
    assert_eq!((body["count"].clone(), etag_of(&body)), (json!(1), after_first.clone()));
    assert_eq!(stored_tag(&alice, &version, "s1").await.as_deref(), Some("a"));

    // Several keys at once through /keys (two rooms), one of them already stored.
    let body = json!({ "rooms": {
        ROOM: { "sessions": { "s1": key(false, 9, 9, "worse"), "s2": key(false, 0, 0, "b") } },
        "!other:example.org": { "sessions": { "s3": key(true, 0, 0, "c") } },
    }});
    let (status, answer) = alice
        .raw("PUT", &format!("/_matrix/client/v3/room_keys/keys?version={version}"), Some(&body.to_string()))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["count"], 3);
    assert_ne!(etag_of(&answer), after_first);
    assert_eq!(get(&alice, &info_path).await.1["count"], 3);

    // Through ruma's types: a room read.
    let room = owned_room_id!("!other:example.org");
    let sessions = alice.send(get_backup_keys_for_room::v3::Request::new(version.clone(), room)).await.sessions;
    assert_eq!(sessions.keys().collect::<Vec<_>>(), ["s3"]);
    let stored: Value = serde_json::from_str(sessions["s3"].json().get()).expect("JSON");
    assert_eq!(stored, key(true, 0, 0, "c"));
}

#[tokio::test]
async fn a_stored_key_is_replaced_only_by_the_spec_rule() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = create(&alice).await;
    let put = |session: &'static str, data: Value| {
        let alice = &alice;
        let version = version.clone();
        async move {
            let (status, body) = put_session(alice, &version, session, data).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    // is_verified differs: the verified key wins, whatever the indexes.
    put("v", key(false, 0, 0, "unverified")).await;
    put("v", key(true, 5, 5, "verified")).await;
    assert_eq!(stored_tag(&alice, &version, "v").await.as_deref(), Some("verified"));
    put("v", key(false, 0, 0, "unverified, lower index")).await;
    assert_eq!(stored_tag(&alice, &version, "v").await.as_deref(), Some("verified"));
    // Same is_verified: the lower first_message_index wins, whatever the forwarded counts.
    put("i", key(false, 5, 0, "five")).await;
    put("i", key(false, 2, 9, "two")).await;
    assert_eq!(stored_tag(&alice, &version, "i").await.as_deref(), Some("two"));
    put("i", key(false, 3, 0, "three")).await;
    assert_eq!(stored_tag(&alice, &version, "i").await.as_deref(), Some("two"));
    // Same is_verified and index: the lower forwarded_count wins; a full tie keeps the old key.
    put("f", key(true, 1, 4, "four")).await;
    put("f", key(true, 1, 2, "two")).await;
    assert_eq!(stored_tag(&alice, &version, "f").await.as_deref(), Some("two"));
    put("f", key(true, 1, 3, "three")).await;
    put("f", key(true, 1, 2, "tie")).await;
    assert_eq!(stored_tag(&alice, &version, "f").await.as_deref(), Some("two"));
    assert_eq!(get(&alice, &format!("/_matrix/client/v3/room_keys/version/{version}")).await.1["count"], 3);
}

#[tokio::test]
async fn keys_are_read_and_deleted_per_room_and_per_session() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = create(&alice).await;
    let other = "!other:example.org";
    let body = json!({ "rooms": {
        ROOM: { "sessions": { "s1": key(false, 0, 0, "a"), "s2": key(false, 0, 0, "b") } },
        other: { "sessions": { "s1": key(false, 0, 0, "c") } },
    }});
    let all_path = format!("/_matrix/client/v3/room_keys/keys?version={version}");
    assert_eq!(alice.raw("PUT", &all_path, Some(&body.to_string())).await.0, 200);

    let (status, all) = get(&alice, &all_path).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["rooms"][ROOM]["sessions"]["s2"], key(false, 0, 0, "b"));
    assert_eq!(all["rooms"][other]["sessions"].as_object().unwrap().len(), 1);
    let room_path = format!("/_matrix/client/v3/room_keys/keys/{ROOM_ENC}?version={version}");
    let (_, room) = get(&alice, &room_path).await;
    assert_eq!(room["sessions"].as_object().unwrap().keys().collect::<Vec<_>>(), ["s1", "s2"]);
    // A room without keys is an empty answer; a session without a key is M_NOT_FOUND.
    let empty = format!("/_matrix/client/v3/room_keys/keys/%21empty%3Aexample.org?version={version}");
    assert_eq!(get(&alice, &empty).await, (200, json!({ "sessions": {} })));
    assert_eq!(stored_tag(&alice, &version, "nope").await, None);

    // Delete one session, then a room, then everything: count follows, etag moves.
    let (status, answer) =
        alice.raw("DELETE", &format!("/_matrix/client/v3/room_keys/keys/{ROOM_ENC}/s1?version={version}"), None).await;
    assert_eq!((status, answer["count"].clone()), (200, json!(2)), "{answer}");
    assert_eq!(stored_tag(&alice, &version, "s1").await, None);
    assert_eq!(stored_tag(&alice, &version, "s2").await.as_deref(), Some("b"));
    let etag = answer["etag"].clone();
    let (status, answer) = alice.raw("DELETE", &room_path, None).await;
    assert_eq!((status, answer["count"].clone()), (200, json!(1)), "{answer}");
    assert_ne!(answer["etag"], etag);
    assert_eq!(get(&alice, &room_path).await.1, json!({ "sessions": {} }));
    let (status, answer) = alice.raw("DELETE", &all_path, None).await;
    assert_eq!((status, answer["count"].clone()), (200, json!(0)), "{answer}");
    assert_eq!(get(&alice, &all_path).await, (200, json!({ "rooms": {} })));
}

#[tokio::test]
async fn uploads_go_only_to_the_current_version() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    // No backup at all: not found.
    assert_error(put_session(&alice, "1", "s", key(false, 0, 0, "a")).await, 404, "M_NOT_FOUND");
    let first = create(&alice).await;
    assert_eq!(put_session(&alice, &first, "s", key(false, 0, 0, "a")).await.0, 200);
    let second = create(&alice).await;
    let (status, body) = put_session(&alice, &first, "s", key(false, 0, 0, "b")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_WRONG_ROOM_KEYS_VERSION")), "{body}");
    assert_eq!(body["current_version"], second.as_str());
    // A version that does not exist (or is not a number) is not found, for writes and reads.
    assert_error(put_session(&alice, "42", "s", key(false, 0, 0, "b")).await, 404, "M_NOT_FOUND");
    assert_error(put_session(&alice, "x", "s", key(false, 0, 0, "b")).await, 404, "M_NOT_FOUND");
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/keys?version=42").await, 404, "M_NOT_FOUND");
    assert_error(alice.raw("DELETE", "/_matrix/client/v3/room_keys/keys?version=42", None).await, 404, "M_NOT_FOUND");
    // The older version can still be read.
    assert_eq!(stored_tag(&alice, &first, "s").await.as_deref(), Some("a"));
    // The version parameter is required.
    assert_error(get(&alice, "/_matrix/client/v3/room_keys/keys").await, 400, "M_MISSING_PARAM");
}

#[tokio::test]
async fn backups_are_private_and_need_a_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let version = create(&alice).await;
    assert_eq!(put_session(&alice, &version, "s", key(false, 0, 0, "secret")).await.0, 200);

    let anonymous = server.client();
    assert_error(get(&anonymous, "/_matrix/client/v3/room_keys/version").await, 401, "M_MISSING_TOKEN");
    assert_error(
        get(&anonymous, &format!("/_matrix/client/v3/room_keys/keys?version={version}")).await,
        401,
        "M_MISSING_TOKEN",
    );

    let bob = server.register("bob").await;
    assert_error(get(&bob, "/_matrix/client/v3/room_keys/version").await, 404, "M_NOT_FOUND");
    assert_error(get(&bob, &format!("/_matrix/client/v3/room_keys/version/{version}")).await, 404, "M_NOT_FOUND");
    assert_error(get(&bob, &format!("/_matrix/client/v3/room_keys/keys?version={version}")).await, 404, "M_NOT_FOUND");
    assert_error(put_session(&bob, &version, "s", key(true, 0, 0, "evil")).await, 404, "M_NOT_FOUND");
    assert_error(
        bob.raw("DELETE", &format!("/_matrix/client/v3/room_keys/version/{version}"), None).await,
        404,
        "M_NOT_FOUND",
    );
    // Bob's own backup is numbered on its own and does not see Alice's keys.
    assert_eq!(create(&bob).await, "1");
    assert_eq!(stored_tag(&bob, "1", "s").await, None);
    assert_eq!(stored_tag(&alice, &version, "s").await.as_deref(), Some("secret"));
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let path = "/_matrix/client/v3/room_keys/version";
    assert_error(alice.raw("POST", path, Some("{not json")).await, 400, "M_NOT_JSON");
    for bad in [
        json!({ "algorithm": ALGORITHM }),
        json!({ "auth_data": {} }),
        json!({ "algorithm": ALGORITHM, "auth_data": "a string" }),
        json!({ "algorithm": 7, "auth_data": {} }),
        json!({ "algorithm": "", "auth_data": {} }),
        json!([1, 2]),
    ] {
        let answer = alice.raw("POST", path, Some(&bad.to_string())).await;
        assert_eq!(answer.0, 400, "{bad} -> {}", answer.1);
        assert_eq!(answer.1["errcode"], "M_BAD_JSON", "{bad} -> {}", answer.1);
    }
    assert_error(get(&alice, path).await, 404, "M_NOT_FOUND");

    let version = create(&alice).await;
    for bad in [
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0.5, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "x" }),
        json!({ "first_message_index": 0, "is_verified": false, "session_data": {} }),
        json!("just a string"),
    ] {
        let answer = put_session(&alice, &version, "s", bad.clone()).await;
        assert_eq!((answer.0, answer.1["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{bad} -> {}", answer.1);
    }
    let keys_path = format!("/_matrix/client/v3/room_keys/keys?version={version}");
    for bad in [
        "{\"rooms\": []}".to_owned(),
        json!({ "rooms": { "not a room id": { "sessions": {} } } }).to_string(),
        json!({ "rooms": { ROOM: { "sessions": { "ok": key(false, 0, 0, "a"), "bad": { "is_verified": 1 } } } } })
            .to_string(),
        json!({ "nothing": 1 }).to_string(),
    ] {
        let answer = alice.raw("PUT", &keys_path, Some(&bad)).await;
        assert_eq!(answer.0, 400, "{bad} -> {}", answer.1);
        assert!(matches!(answer.1["errcode"].as_str(), Some("M_BAD_JSON" | "M_NOT_JSON")), "{bad} -> {}", answer.1);
    }
    assert_error(alice.raw("PUT", &keys_path, Some("{\"rooms\": {")).await, 400, "M_NOT_JSON");
    // Too many sessions in one request; an over-long session id.
    let sessions: serde_json::Map<String, Value> = (0..5001)
        .map(|i| {
            (
                format!("s{i}"),
                json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
            )
        })
        .collect();
    let big = json!({ "rooms": { ROOM: { "sessions": sessions } } }).to_string();
    assert!(big.len() < 1024 * 1024, "under the body limit: {}", big.len());
    assert_error(alice.raw("PUT", &keys_path, Some(&big)).await, 413, "M_TOO_LARGE");
    assert_error(put_session(&alice, &version, &"x".repeat(300), key(false, 0, 0, "a")).await, 400, "M_INVALID_PARAM");
    // Nothing of the refused requests was stored (the good key next to a bad one included).
    let info = get(&alice, &format!("/_matrix/client/v3/room_keys/version/{version}")).await.1;
    assert_eq!(info["count"], 0, "{info}");
}

#[tokio::test]
async fn backups_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let first = create(&alice).await;
    let version = create(&alice).await;
    assert_eq!(put_session(&alice, &version, "s1", key(true, 2, 0, "kept")).await.0, 200);
    let (_, answer) = put_session(&alice, &version, "s2", key(false, 0, 0, "other")).await;
    server.stop().await;
    server.start_again().await;

    let info = get(&alice, "/_matrix/client/v3/room_keys/version").await.1;
    assert_eq!(info["version"], version.as_str());
    assert_eq!((info["count"].clone(), info["etag"].clone()), (json!(2), answer["etag"].clone()));
    assert_eq!(info["auth_data"], auth_data("cGs"));
    assert_eq!(stored_tag(&alice, &version, "s1").await.as_deref(), Some("kept"));
    // The rule still applies to keys stored before the restart, and numbering continues.
    assert_eq!(put_session(&alice, &version, "s1", key(false, 0, 0, "loses")).await.1["count"], 2);
    assert_eq!(stored_tag(&alice, &version, "s1").await.as_deref(), Some("kept"));
    assert_eq!(alice.raw("DELETE", &format!("/_matrix/client/v3/room_keys/version/{version}"), None).await.0, 200);
    assert_eq!(get(&alice, "/_matrix/client/v3/room_keys/version").await.1["version"], first.as_str());
    assert_eq!(create(&alice).await, "3");
}

#[tokio::test]
async fn deactivating_the_account_deletes_its_backups() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let version = create(&alice).await;
    assert_eq!(put_session(&alice, &version, "s", key(false, 0, 0, "a")).await.0, 200);

    let (status, body) = alice.raw("POST", "/_matrix/client/v3/account/deactivate", Some("{}")).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().expect("a UIA session");
    let auth = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user.as_str() },
        "password": "password",
        "session": session,
    }});
    let (status, body) = alice.raw("POST", "/_matrix/client/v3/account/deactivate", Some(&auth.to_string())).await;
    assert_eq!(status, 200, "{body}");

    let app = server.app();
    let error = app.key_backup.version(&user, None).err().expect("no backup left");
    assert_eq!(error.kind().errcode().to_string(), "M_NOT_FOUND");
    let error = app.key_backup.keys(&user, &version, None).err().expect("no keys left");
    assert_eq!(error.kind().errcode().to_string(), "M_NOT_FOUND");
}
