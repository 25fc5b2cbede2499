//! End-to-end encryption support: key upload/query/claim (one-time and fallback keys, ids
//! never reused for another key), device lists in /sync and /keys/changes (remote copies
//! distrusted once no room is shared), cross-signing keys and signatures, to-device
//! messages (exactly once, durable, batched, capped per request), locally and between two
//! servers.

use ruma::{
    CanonicalJsonObject,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::{
    federation::{Cluster, create_public_room as fed_room, eventually, join_via, joined},
    harness::{Client, TestServer},
};

/// A device's signing key, made up by the test as a client would.
struct DeviceKey {
    pair: Ed25519KeyPair,
}

impl DeviceKey {
    fn new(version: &str) -> Self {
        let der = Ed25519KeyPair::generate();
        Self { pair: Ed25519KeyPair::from_der(&der, version.to_owned()).expect("key") }
    }

    /// A cross-signing key: named by its own public key, as clients name them.
    fn named() -> Self {
        let der = Ed25519KeyPair::generate();
        let public =
            Base64::<Standard, _>::new(Ed25519KeyPair::from_der(&der, "x".into()).expect("key").public_key().to_vec())
                .encode();
        Self { pair: Ed25519KeyPair::from_der(&der, public).expect("key") }
    }

    fn public(&self) -> String {
        Base64::<Standard, _>::new(self.pair.public_key().to_vec()).encode()
    }

    /// Signs `value` as `user_id` (the key's version names the key: ed25519:VERSION).
    fn sign(&self, user_id: &str, value: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value).expect("object");
        sign_json(user_id, &self.pair, &mut object).expect("sign");
        serde_json::to_value(object).expect("json")
    }
}

fn device_keys(client: &Client, key: &DeviceKey) -> Value {
    let (user, device) = (client.user_id().as_str(), client.device_id.as_deref().expect("device").as_str());
    key.sign(
        user,
        json!({
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{device}"): "curve", format!("ed25519:{device}"): key.public() },
        }),
    )
}

fn one_time_keys(client: &Client, key: &DeviceKey, ids: &[&str]) -> Value {
    let user = client.user_id().as_str();
    let mut map = serde_json::Map::new();
    for id in ids {
        map.insert(format!("signed_curve25519:{id}"), key.sign(user, json!({ "key": format!("otk-{id}") })));
    }
    Value::Object(map)
}

async fn upload(client: &Client, body: Value) -> Value {
    let (status, answer) = client.raw("POST", "/_matrix/client/v3/keys/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200, "keys/upload: {answer}");
    answer
}

async fn query(client: &Client, user: &str) -> Value {
    let body = json!({ "device_keys": { user: [] } }).to_string();
    let (status, answer) = client.raw("POST", "/_matrix/client/v3/keys/query", Some(&body)).await;
    assert_eq!(status, 200, "keys/query: {answer}");
    answer
}

async fn claim(client: &Client, user: &str, device: &str) -> Value {
    let body = json!({ "one_time_keys": { user: { device: "signed_curve25519" } } }).to_string();
    let (status, answer) = client.raw("POST", "/_matrix/client/v3/keys/claim", Some(&body)).await;
    assert_eq!(status, 200, "keys/claim: {answer}");
    answer["one_time_keys"][user][device].clone()
}

async fn sync(client: &Client, since: Option<&str>) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
    };
    let (status, body) = client.raw("GET", &path, None).await;
    assert_eq!(status, 200, "sync: {body}");
    body
}

/// A second device of `existing`'s user.
async fn login_again(server: &TestServer, existing: &Client) -> Client {
    let user = existing.user_id().as_str().to_owned();
    let mut client = server.client();
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": "password" });
    let (status, answer) = client.raw("POST", "/_matrix/client/v3/login", Some(&body.to_string())).await;
    assert_eq!(status, 200, "login: {answer}");
    client.token = answer["access_token"].as_str().map(str::to_owned);
    client.user_id = answer["user_id"].as_str().and_then(|u| u.try_into().ok());
    client.device_id = answer["device_id"].as_str().map(Into::into);
    client
}

async fn send_to_device(client: &Client, txn: &str, messages: Value) -> (u16, Value) {
    let body = json!({ "messages": messages }).to_string();
    client.raw("PUT", &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"), Some(&body)).await
}

fn to_device_bodies(sync: &Value) -> Vec<String> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| events.iter().map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

fn no_failures(answer: &Value) -> bool {
    answer["failures"].as_object().is_none_or(|f| f.is_empty())
}

fn listed(sync: &Value, section: &str, user: &str) -> bool {
    sync["device_lists"][section].as_array().is_some_and(|users| users.iter().any(|u| u == user))
}

async fn shared_room(owner: &Client, other: &Client) -> String {
    let (_, room) = owner.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let room_id = room["room_id"].as_str().expect("room id").to_owned();
    let (status, body) = other.raw("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some("{}")).await;
    assert_eq!(status, 200, "join: {body}");
    room_id
}

#[tokio::test]
async fn keys_upload_query_and_claim_with_fallback() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());
    let alice_id = alice.user_id().as_str().to_owned();
    let device = alice.device_id.as_deref().unwrap().as_str().to_owned();

    let answer = upload(
        &alice,
        json!({
            "device_keys": device_keys(&alice, &key),
            "one_time_keys": one_time_keys(&alice, &key, &["A", "B"]),
            "fallback_keys": { "signed_curve25519:F": key.sign(&alice_id, json!({"key": "fallback", "fallback": true})) },
        }),
    )
    .await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);
    let first = sync(&alice, None).await;
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(first["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Bob sees alice's device with its display name, signed as she uploaded it.
    let keys = query(&bob, &alice_id).await;
    let seen = &keys["device_keys"][&alice_id][&device];
    assert_eq!(seen["keys"][format!("ed25519:{device}")], key.public());
    assert!(seen["signatures"][&alice_id][format!("ed25519:{device}")].is_string());
    // Renaming the device: the name comes with its keys.
    let (status, _) =
        alice.raw("PUT", &format!("/_matrix/client/v3/devices/{device}"), Some(r#"{"display_name":"phone"}"#)).await;
    assert_eq!(status, 200);
    let keys = query(&bob, &alice_id).await;
    assert_eq!(keys["device_keys"][&alice_id][&device]["unsigned"]["device_display_name"], "phone", "{keys}");

    // Each one-time key is handed out once; then the fallback key, again and again.
    let mut handed = Vec::new();
    for _ in 0..2 {
        let claimed = claim(&bob, &alice_id, &device).await;
        let (id, _) = claimed.as_object().and_then(|m| m.iter().next()).expect("a key");
        handed.push(id.clone());
    }
    handed.sort();
    assert_eq!(handed, ["signed_curve25519:A", "signed_curve25519:B"]);
    assert_eq!(sync(&alice, None).await["device_one_time_keys_count"]["signed_curve25519"], 0);
    for _ in 0..2 {
        let claimed = claim(&bob, &alice_id, &device).await;
        assert!(claimed.get("signed_curve25519:F").is_some(), "fallback key: {claimed}");
    }
    assert_eq!(sync(&alice, None).await["device_unused_fallback_key_types"], json!([]));
    // New one-time keys after the old ones ran out.
    let answer = upload(&alice, json!({ "one_time_keys": one_time_keys(&alice, &key, &["C"]) })).await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 1);
    // Unknown devices and users claim nothing.
    assert_eq!(claim(&bob, &alice_id, "NOSUCHDEVICE").await, Value::Null);
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());

    // Keys naming another user or device.
    let mut forged = device_keys(&alice, &key);
    forged["user_id"] = json!(bob.user_id().as_str());
    let (status, body) =
        alice.raw("POST", "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": forged }).to_string())).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    // A signature that does not verify.
    let mut tampered = device_keys(&alice, &key);
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let (status, body) = alice
        .raw("POST", "/_matrix/client/v3/keys/upload", Some(&json!({ "device_keys": tampered }).to_string()))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    // Malformed one-time keys and bodies.
    for body in [
        r#"{"one_time_keys": {"nocolon": "x"}}"#,
        r#"{"one_time_keys": {"signed_curve25519:A": 5}}"#,
        r#"{"device_keys": "not an object"}"#,
        r#"{"one_time_keys": []}"#,
        "not json",
    ] {
        let (status, answer) = alice.raw("POST", "/_matrix/client/v3/keys/upload", Some(body)).await;
        assert!(status == 400, "{body} -> {status} {answer}");
        assert!(answer["errcode"].as_str().is_some_and(|e| e.starts_with("M_")), "{answer}");
    }
    // Nothing was stored.
    let keys = query(&bob, alice.user_id().as_str()).await;
    assert_eq!(keys["device_keys"][alice.user_id().as_str()], json!({}));
    // Without a token.
    let anonymous = server.client();
    let (status, _) = anonymous.raw("POST", "/_matrix/client/v3/keys/query", Some(r#"{"device_keys":{}}"#)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn to_device_messages_arrive_once_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_phone = login_again(&server, &bob).await;
    let bob_id = bob.user_id().as_str().to_owned();
    let bob_device = bob.device_id.as_deref().unwrap().as_str().to_owned();
    let since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    let phone_since = sync(&bob_phone, None).await["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = send_to_device(&alice, "t1", json!({ &bob_id: { &bob_device: { "body": "one" } } })).await;
    assert_eq!(status, 200, "{body}");
    // The same transaction again is not a second message.
    send_to_device(&alice, "t1", json!({ &bob_id: { &bob_device: { "body": "one" } } })).await;
    send_to_device(&alice, "t2", json!({ &bob_id: { "*": { "body": "everyone" } } })).await;

    let first = sync(&bob, Some(&since)).await;
    assert_eq!(to_device_bodies(&first), ["one", "everyone"]);
    let event = &first["to_device"]["events"][0];
    assert_eq!((event["sender"].as_str(), event["type"].as_str()), (Some(alice.user_id().as_str()), Some("m.test")));
    // The same since token again (the response was lost): delivered again.
    assert_eq!(to_device_bodies(&sync(&bob, Some(&since)).await), ["one", "everyone"]);
    // The next token acknowledges them: gone.
    let next = first["next_batch"].as_str().unwrap();
    assert!(to_device_bodies(&sync(&bob, Some(next)).await).is_empty());
    assert_eq!(to_device_bodies(&sync(&bob_phone, Some(&phone_since)).await), ["everyone"]);

    // Queued before a restart, delivered after it.
    let since = sync(&bob, Some(next)).await["next_batch"].as_str().unwrap().to_owned();
    send_to_device(&alice, "t3", json!({ &bob_id: { &bob_device: { "body": "durable" } } })).await;
    server.stop().await;
    server.start_again().await;
    assert_eq!(to_device_bodies(&sync(&bob, Some(&since)).await), ["durable"]);

    // Bad input.
    let (status, body) = send_to_device(&alice, "t4", json!({ &bob_id: { &bob_device: "not an object" } })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send_to_device(&alice, "t5", json!({ "not a user": {} })).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_long_to_device_backlog_comes_in_batches() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (bob_id, bob_device) = (bob.user_id().as_str().to_owned(), bob.device_id.as_deref().unwrap().to_string());
    let mut since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..130 {
        let (status, _) =
            send_to_device(&alice, &format!("b{i}"), json!({ &bob_id: { &bob_device: { "body": i.to_string() } } }))
                .await;
        assert_eq!(status, 200);
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        let response = sync(&bob, Some(&since)).await;
        let batch = to_device_bodies(&response);
        assert!(batch.len() <= 100, "at most 100 per response");
        received.extend(batch);
        since = response["next_batch"].as_str().unwrap().to_owned();
    }
    let expected: Vec<String> = (0..130).map(|i| i.to_string()).collect();
    assert_eq!(received, expected, "every message once, in order");
}

#[tokio::test]
async fn device_list_changes_reach_users_who_share_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let alice_id = alice.user_id().as_str().to_owned();
    let room = shared_room(&alice, &bob).await;
    let bob_since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    let carol_since = sync(&carol, None).await["next_batch"].as_str().unwrap().to_owned();

    // Alice's new device keys: bob (sharing a room) is told, carol is not.
    let key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());
    upload(&alice, json!({ "device_keys": device_keys(&alice, &key) })).await;
    let response = sync(&bob, Some(&bob_since)).await;
    assert!(listed(&response, "changed", &alice_id), "{response}");
    assert!(!listed(&sync(&carol, Some(&carol_since)).await, "changed", &alice_id));
    let (_, changes) = bob
        .raw(
            "GET",
            &format!(
                "/_matrix/client/v3/keys/changes?from={bob_since}&to={}",
                response["next_batch"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert!(changes["changed"].as_array().unwrap().iter().any(|u| u == &alice_id), "{changes}");

    // A second device logs in, uploads keys, and is deleted: bob hears each time, and the
    // deleted device's keys are gone.
    let laptop = login_again(&server, &alice).await;
    let laptop_key = DeviceKey::new(laptop.device_id.as_deref().unwrap().as_str());
    upload(&laptop, json!({ "device_keys": device_keys(&laptop, &laptop_key) })).await;
    let since = response["next_batch"].as_str().unwrap().to_owned();
    let response = sync(&bob, Some(&since)).await;
    assert!(listed(&response, "changed", &alice_id));
    assert_eq!(query(&bob, &alice_id).await["device_keys"][&alice_id].as_object().unwrap().len(), 2);
    let since = response["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = laptop.raw("POST", "/_matrix/client/v3/logout", Some("{}")).await;
    assert_eq!(status, 200);
    assert!(listed(&sync(&bob, Some(&since)).await, "changed", &alice_id));
    assert_eq!(query(&bob, &alice_id).await["device_keys"][&alice_id].as_object().unwrap().len(), 1);

    // Carol joins: bob must now track her devices; then she leaves and shares no room: left.
    let since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    carol.raw("POST", &format!("/_matrix/client/v3/join/{room}"), Some("{}")).await;
    let response = sync(&bob, Some(&since)).await;
    assert!(listed(&response, "changed", carol.user_id().as_str()), "{response}");
    let since = response["next_batch"].as_str().unwrap().to_owned();
    carol.raw("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some("{}")).await;
    let response = sync(&bob, Some(&since)).await;
    assert!(listed(&response, "left", carol.user_id().as_str()), "{response}");
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (alice_id, bob_id) = (alice.user_id().as_str().to_owned(), bob.user_id().as_str().to_owned());
    let device_key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());
    upload(&alice, json!({ "device_keys": device_keys(&alice, &device_key) })).await;

    let cross_signing = |user: &str, master: &DeviceKey, ssk: &DeviceKey, usk: &DeviceKey| {
        let master_json = json!({ "user_id": user, "usage": ["master"], "keys": { format!("ed25519:{}", master.public()): master.public() } });
        let ssk_json = master.sign(
            user,
            json!({ "user_id": user, "usage": ["self_signing"], "keys": { format!("ed25519:{}", ssk.public()): ssk.public() } }),
        );
        let usk_json = master.sign(
            user,
            json!({ "user_id": user, "usage": ["user_signing"], "keys": { format!("ed25519:{}", usk.public()): usk.public() } }),
        );
        json!({ "master_key": master_json, "self_signing_key": ssk_json, "user_signing_key": usk_json })
    };
    let named = |_: ()| DeviceKey::named();
    let (master, ssk, usk) = (named(()), named(()), named(()));

    // The first upload needs no password; replacing the keys does.
    let body = cross_signing(&alice_id, &master, &ssk, &usk);
    let (status, answer) =
        alice.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    // The same keys again: no auth needed either.
    let (status, _) = alice.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200);
    let (master2, ssk2, usk2) = (named(()), named(()), named(()));
    let replacement = cross_signing(&alice_id, &master2, &ssk2, &usk2);
    let (status, answer) =
        alice.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&replacement.to_string())).await;
    assert_eq!(status, 401, "replacing needs auth: {answer}");
    assert!(answer["flows"].is_array());
    // A self-signing key not signed by the master key is refused.
    let mut unsigned = body.clone();
    unsigned["self_signing_key"]["signatures"] = json!({});
    let bob_body = {
        let mut b = unsigned.clone();
        for k in ["master_key", "self_signing_key", "user_signing_key"] {
            b[k]["user_id"] = json!(bob_id);
        }
        b
    };
    let (status, answer) =
        bob.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&bob_body.to_string())).await;
    assert_eq!(status, 400, "{answer}");

    // Alice sees her user-signing key; bob sees her master and self-signing keys only.
    let own = query(&alice, &alice_id).await;
    assert!(own["user_signing_keys"][&alice_id].is_object(), "{own}");
    let theirs = query(&bob, &alice_id).await;
    assert!(theirs["master_keys"][&alice_id].is_object() && theirs["self_signing_keys"][&alice_id].is_object());
    assert!(theirs["user_signing_keys"].get(&alice_id).is_none());

    // Alice's self-signing key signs her device: everyone sees the signature.
    let device = alice.device_id.as_deref().unwrap().as_str().to_owned();
    let signed_device = ssk.sign(&alice_id, device_keys(&alice, &device_key));
    let body = json!({ &alice_id: { &device: signed_device } });
    let (status, answer) =
        alice.raw("POST", "/_matrix/client/v3/keys/signatures/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    assert!(no_failures(&answer), "{answer}");
    let seen = query(&bob, &alice_id).await;
    assert!(
        seen["device_keys"][&alice_id][&device]["signatures"][&alice_id][format!("ed25519:{}", ssk.public())]
            .is_string()
    );
    // A forged signature is a failure and changes nothing.
    let forged = DeviceKey::new(&ssk.public());
    let body = json!({ &alice_id: { &device: forged.sign(&alice_id, device_keys(&alice, &device_key)) } });
    let (_, answer) = alice.raw("POST", "/_matrix/client/v3/keys/signatures/upload", Some(&body.to_string())).await;
    assert_eq!(answer["failures"][&alice_id][&device]["errcode"], "M_INVALID_SIGNATURE", "{answer}");

    // Bob cross-signs alice's master key with his user-signing key: only bob sees it.
    let (bob_master, bob_ssk, bob_usk) = (named(()), named(()), named(()));
    let body = cross_signing(&bob_id, &bob_master, &bob_ssk, &bob_usk);
    let (status, _) = bob.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200);
    let alice_master = query(&bob, &alice_id).await["master_keys"][&alice_id].clone();
    let mut to_sign = alice_master.clone();
    to_sign.as_object_mut().unwrap().remove("signatures");
    let body = json!({ &alice_id: { master.public(): bob_usk.sign(&bob_id, to_sign) } });
    let (_, answer) = bob.raw("POST", "/_matrix/client/v3/keys/signatures/upload", Some(&body.to_string())).await;
    assert!(no_failures(&answer), "{answer}");
    let usk_id = format!("ed25519:{}", bob_usk.public());
    assert!(query(&bob, &alice_id).await["master_keys"][&alice_id]["signatures"][&bob_id][&usk_id].is_string());
    assert!(query(&alice, &alice_id).await["master_keys"][&alice_id]["signatures"].get(&bob_id).is_none());
}

#[tokio::test]
async fn keys_and_to_device_messages_cross_servers() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = fed_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    let (alice_id, bob_id) = (alice.user_id().as_str().to_owned(), bob.user_id().as_str().to_owned());
    let alice_device = alice.device_id.as_deref().unwrap().as_str().to_owned();
    let bob_device = bob.device_id.as_deref().unwrap().as_str().to_owned();

    let key = DeviceKey::new(&alice_device);
    upload(
        &alice,
        json!({ "device_keys": device_keys(&alice, &key), "one_time_keys": one_time_keys(&alice, &key, &["A"]) }),
    )
    .await;

    // Bob (on b.test) queries and claims alice's keys through federation.
    let keys = query(&bob, &alice_id).await;
    assert_eq!(
        keys["device_keys"][&alice_id][&alice_device]["keys"][format!("ed25519:{alice_device}")],
        key.public(),
        "{keys}"
    );
    let claimed = claim(&bob, &alice_id, &alice_device).await;
    assert!(claimed.get("signed_curve25519:A").is_some(), "{claimed}");
    assert_eq!(sync(&alice, None).await["device_one_time_keys_count"]["signed_curve25519"], 0);

    // To-device messages both ways.
    let bob_since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = send_to_device(&alice, "x1", json!({ &bob_id: { &bob_device: { "body": "hello b" } } })).await;
    assert_eq!(status, 200);
    eventually("bob receives alice's to-device message", || async {
        to_device_bodies(&sync(&bob, Some(&bob_since)).await) == ["hello b"]
    })
    .await;
    let alice_since = sync(&alice, None).await["next_batch"].as_str().unwrap().to_owned();
    send_to_device(&bob, "y1", json!({ &alice_id: { "*": { "body": "hello a" } } })).await;
    eventually("alice receives bob's to-device message", || async {
        to_device_bodies(&sync(&alice, Some(&alice_since)).await) == ["hello a"]
    })
    .await;

    // Alice's new device reaches b.test as a device list update.
    let since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();
    let laptop = login_again(a, &alice).await;
    let laptop_key = DeviceKey::new(laptop.device_id.as_deref().unwrap().as_str());
    upload(&laptop, json!({ "device_keys": device_keys(&laptop, &laptop_key) })).await;
    eventually("bob's sync says alice's devices changed", || async {
        listed(&sync(&bob, Some(&since)).await, "changed", &alice_id)
    })
    .await;
    eventually("bob sees both of alice's devices", || async {
        query(&bob, &alice_id).await["device_keys"][&alice_id].as_object().map(|d| d.len()) == Some(2)
    })
    .await;
    // Deleting the laptop: bob stops seeing it.
    laptop.raw("POST", "/_matrix/client/v3/logout", Some("{}")).await;
    eventually("bob no longer sees alice's deleted device", || async {
        query(&bob, &alice_id).await["device_keys"][&alice_id].as_object().map(|d| d.len()) == Some(1)
    })
    .await;
    // Cross-signing keys reach b.test too (m.signing_key_update into its copy of the list).
    let master = DeviceKey::named();
    let ssk = DeviceKey::named();
    let body = json!({
        "master_key": { "user_id": &alice_id, "usage": ["master"], "keys": { format!("ed25519:{}", master.public()): master.public() } },
        "self_signing_key": master.sign(&alice_id, json!({ "user_id": &alice_id, "usage": ["self_signing"], "keys": { format!("ed25519:{}", ssk.public()): ssk.public() } })),
    });
    let (status, answer) =
        alice.raw("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{answer}");
    eventually("bob sees alice's cross-signing keys", || async {
        let keys = query(&bob, &alice_id).await;
        keys["master_keys"][&alice_id]["keys"][format!("ed25519:{}", master.public())] == master.public()
            && keys["self_signing_keys"][&alice_id]["keys"][format!("ed25519:{}", ssk.public())] == ssk.public()
    })
    .await;
    // b.test serves bob's device list to a.test.
    let bob_key = DeviceKey::new(&bob_device);
    upload(&bob, json!({ "device_keys": device_keys(&bob, &bob_key) })).await;
    eventually("alice sees bob's device", || async {
        query(&alice, &bob_id).await["device_keys"][&bob_id].get(&bob_device).is_some()
    })
    .await;
}

#[tokio::test]
async fn a_one_time_key_id_is_never_given_another_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());
    let (alice_id, device) =
        (alice.user_id().as_str().to_owned(), alice.device_id.as_deref().unwrap().as_str().to_owned());
    let answer = upload(
        &alice,
        json!({ "device_keys": device_keys(&alice, &key), "one_time_keys": one_time_keys(&alice, &key, &["A", "B"]) }),
    )
    .await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);

    // The same keys again (a retried request) are accepted and add nothing, also when
    // signed anew.
    let answer = upload(&alice, json!({ "one_time_keys": one_time_keys(&alice, &key, &["A", "B"]) })).await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);
    let other_signer = DeviceKey::new("OTHER");
    let answer = upload(&alice, json!({ "one_time_keys": one_time_keys(&alice, &other_signer, &["A"]) })).await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);

    // Another key under id A: refused, and nothing of the request is stored (not the new id
    // C beside it, nor the fallback key).
    let body = json!({
        "one_time_keys": {
            "signed_curve25519:C": key.sign(&alice_id, json!({ "key": "otk-C" })),
            "signed_curve25519:A": key.sign(&alice_id, json!({ "key": "not otk-A" })),
        },
        "fallback_keys": { "signed_curve25519:F": key.sign(&alice_id, json!({ "key": "fallback", "fallback": true })) },
    });
    let (status, answer) = alice.raw("POST", "/_matrix/client/v3/keys/upload", Some(&body.to_string())).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{answer}");
    let state = sync(&alice, None).await;
    assert_eq!(state["device_one_time_keys_count"]["signed_curve25519"], 2, "{state}");
    assert_eq!(state["device_unused_fallback_key_types"], json!([]), "{state}");
    // The same for a plain (unsigned) key.
    let body = json!({ "one_time_keys": { "curve25519:P": "plain" } });
    upload(&alice, body.clone()).await;
    upload(&alice, body).await;
    let body = json!({ "one_time_keys": { "curve25519:P": "other" } }).to_string();
    let (status, answer) = alice.raw("POST", "/_matrix/client/v3/keys/upload", Some(&body)).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{answer}");

    // Claims hand out the keys first uploaded.
    let mut handed = Vec::new();
    for _ in 0..2 {
        let claimed = claim(&bob, &alice_id, &device).await;
        handed.extend(claimed.as_object().into_iter().flatten().map(|(_, key)| key["key"].clone()));
    }
    handed.sort_by_key(|key| key.to_string());
    assert_eq!(handed, [json!("otk-A"), json!("otk-B")]);
}

#[tokio::test]
async fn a_to_device_request_addresses_at_most_10000_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (bob_id, bob_device) = (bob.user_id().as_str().to_owned(), bob.device_id.as_deref().unwrap().to_string());
    let since = sync(&bob, None).await["next_batch"].as_str().unwrap().to_owned();

    // Bob's device and 10,000 more: one message too many.
    let mut devices = serde_json::Map::new();
    devices.insert(bob_device.clone(), json!({ "body": "real" }));
    for i in 0..10_000 {
        devices.insert(format!("NOSUCHDEVICE{i}"), json!({ "body": "x" }));
    }
    let (status, body) = send_to_device(&alice, "many", json!({ &bob_id: devices })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    // Nothing was delivered, and the transaction id was not used up.
    assert!(to_device_bodies(&sync(&bob, Some(&since)).await).is_empty());
    devices.remove("NOSUCHDEVICE9999");
    let (status, body) = send_to_device(&alice, "many", json!({ &bob_id: devices })).await;
    assert_eq!(status, 200, "exactly 10,000 is allowed: {body}");
    assert_eq!(to_device_bodies(&sync(&bob, Some(&since)).await), ["real"]);
}

#[tokio::test]
async fn a_remote_device_list_is_fetched_again_when_a_room_is_shared_again() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = fed_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    let alice_id = alice.user_id().as_str().to_owned();
    let b_app = b.app();
    let copy_on_b = || b_app.core.db.remote_device_list(alice.user_id()).expect("storage");
    let devices_seen = |keys: &Value| keys["device_keys"][&alice_id].as_object().map(|d| d.len());

    // Alice's keys reach b.test, which fetches her device list and answers from its copy.
    let key = DeviceKey::new(alice.device_id.as_deref().unwrap().as_str());
    upload(&alice, json!({ "device_keys": device_keys(&alice, &key) })).await;
    eventually("b.test keeps a copy of alice's device list", || async {
        copy_on_b().is_some_and(|list| !list.stale && list.devices.len() == 1)
    })
    .await;
    assert_eq!(devices_seen(&query(&bob, &alice_id).await), Some(1));

    // Bob leaves: no room is shared, so a.test no longer tells b.test about alice's devices,
    // and she adds one meanwhile.
    let (status, body) = bob.raw("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    eventually("a.test sees bob leave", || async { joined(&alice, &room).await.len() == 1 }).await;
    let laptop = login_again(a, &alice).await;
    let laptop_key = DeviceKey::new(laptop.device_id.as_deref().unwrap().as_str());
    upload(&laptop, json!({ "device_keys": device_keys(&laptop, &laptop_key) })).await;

    // Bob joins again. b.test's copy has not heard of the laptop, so it must not answer:
    // a.test does, and b.test fetches the list again for the next queries.
    join_via(&bob, &room, "a.test").await;
    assert_eq!(copy_on_b().map(|list| list.devices.len()), Some(1), "the old copy is still there");
    let keys = query(&bob, &alice_id).await;
    assert_eq!(devices_seen(&keys), Some(2), "{keys}");
    assert!(keys["device_keys"][&alice_id].get(laptop.device_id.as_deref().unwrap().as_str()).is_some(), "{keys}");
    eventually("b.test fetches alice's device list again", || async {
        copy_on_b().is_some_and(|list| !list.stale && list.devices.len() == 2)
    })
    .await;
    assert_eq!(devices_seen(&query(&bob, &alice_id).await), Some(2));
}
