//! Application services on the homeserver side: registrations loaded (and refused when
//! invalid), as_token authentication, `user_id` masquerading inside the namespace only, ghost
//! registration, exclusive user and alias namespaces, timestamp massaging.

use serde_json::{Value, json};

use crate::harness::{Client, TestServer};

const AS_TOKEN: &str = "as_token_for_tests_0123456789";

fn registration(server_name: &str) -> String {
    format!(
        r##"
id: kakao
url: "http://127.0.0.1:9"
as_token: "{AS_TOKEN}"
hs_token: "hs_token_for_tests_0123456789"
sender_localpart: kakaobot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@kakao_.*:{server}"
  aliases:
    - exclusive: true
      regex: "#kakao_.*:{server}"
  rooms: []
"##,
        server = regex_escape(server_name)
    )
}

fn regex_escape(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\\\{c}") }).collect()
}

/// A server with the test registration, and a client holding the as_token.
async fn server_with_appservice() -> (TestServer, Client) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kakao.yaml");
    // The harness's server name.
    std::fs::write(&path, registration("ieum.test")).unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    let server = TestServer::start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await;
    // The registration is read at start-up only.
    drop(dir);
    let mut appservice = server.client();
    appservice.token = Some(AS_TOKEN.to_owned());
    (server, appservice)
}

async fn whoami(client: &Client, user_id: Option<&str>) -> (u16, Value) {
    let path = match user_id {
        Some(user) => format!("/_matrix/client/v3/account/whoami?user_id={}", crate::sync::enc(user)),
        None => "/_matrix/client/v3/account/whoami".to_owned(),
    };
    client.raw("GET", &path, None).await
}

async fn register_ghost(appservice: &Client, localpart: &str) -> (u16, Value) {
    let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
    appservice.raw("POST", "/_matrix/client/v3/register", Some(&body.to_string())).await
}

#[tokio::test]
async fn ghosts_are_registered_and_masqueraded_inside_the_namespace_only() {
    let (server, appservice) = server_with_appservice().await;
    let name = server.server_name().to_owned();
    // The sender user exists and is who the bare token acts as.
    let (status, body) = whoami(&appservice, None).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(format!("@kakaobot:{name}").as_str())), "{body}");

    let (status, body) = register_ghost(&appservice, "kakao_kim").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], format!("@kakao_kim:{name}"));
    let (status, body) = register_ghost(&appservice, "kakao_kim").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "{body}");
    let (status, body) = register_ghost(&appservice, "alice").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "outside the namespace: {body}");
    // Without the appservice's token, m.login.application_service is refused.
    let (status, _) = register_ghost(&server.client(), "kakao_lee").await;
    assert_eq!(status, 401);

    let ghost = format!("@kakao_kim:{name}");
    let (status, body) = whoami(&appservice, Some(&ghost)).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(ghost.as_str())), "{body}");
    // Not registered yet, outside the namespace, or another server: refused.
    for user in [format!("@kakao_nobody:{name}"), format!("@alice:{name}"), "@kakao_kim:elsewhere.test".to_owned()] {
        let (status, body) = whoami(&appservice, Some(&user)).await;
        assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{user}: {body}");
    }
    // A user's token with ?user_id= is the user, not a masquerade.
    let alice = server.register("alice").await;
    let (_, body) = whoami(&alice, Some(&ghost)).await;
    assert_eq!(body["user_id"], alice.user_id().as_str());
}

#[tokio::test]
async fn exclusive_namespaces_are_closed_to_everyone_else() {
    let (server, appservice) = server_with_appservice().await;
    let name = server.server_name().to_owned();
    let (status, answer) =
        server.client().raw("GET", "/_matrix/client/v3/register/available?username=kakao_squatter", None).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{answer}");
    let body = json!({ "username": "kakao_squatter", "password": "password", "auth": { "type": "m.login.dummy" } });
    let (status, answer) = server.client().raw("POST", "/_matrix/client/v3/register", Some(&body.to_string())).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{answer}");

    let alice = server.register("alice").await;
    let (_, room) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#kakao_general:{name}");
    let path = format!("/_matrix/client/v3/directory/room/{}", crate::sync::enc(&alias));
    let body = json!({ "room_id": room_id }).to_string();
    let (status, answer) = alice.raw("PUT", &path, Some(&body)).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{answer}");
    // The appservice may, without being in the room (bridges alias rooms from their bot).
    let (status, answer) = appservice.raw("PUT", &path, Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn appservices_set_timestamps_and_users_cannot() {
    let (server, appservice) = server_with_appservice().await;
    let name = server.server_name().to_owned();
    register_ghost(&appservice, "kakao_park").await;
    let ghost = format!("@kakao_park:{name}");
    let as_ghost = |path: &str| format!("{path}?user_id={}&ts=1436451240000", crate::sync::enc(&ghost));

    let (status, room) = appservice.raw("POST", &as_ghost("/_matrix/client/v3/createRoom"), Some("{}")).await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let send = as_ghost(&format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"));
    let (status, sent) = appservice.raw("PUT", &send, Some(r#"{"msgtype":"m.text","body":"안녕하세요"}"#)).await;
    assert_eq!(status, 200, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    // The same transaction again is the same event.
    let (_, again) = appservice.raw("PUT", &send, Some(r#"{"msgtype":"m.text","body":"안녕하세요"}"#)).await;
    assert_eq!(again["event_id"], event_id.as_str());
    let state = as_ghost(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/"));
    let (status, topic) = appservice.raw("PUT", &state, Some(r#"{"topic":"imported"}"#)).await;
    assert_eq!(status, 200, "{topic}");

    let read = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}?user_id={}", crate::sync::enc(&ghost));
    let (_, event) = appservice.raw("GET", &read, None).await;
    assert_eq!(
        (event["origin_server_ts"].as_u64(), event["sender"].as_str()),
        (Some(1_436_451_240_000), Some(ghost.as_str()))
    );
    let read = format!(
        "/_matrix/client/v3/rooms/{room_id}/event/{}?user_id={}",
        topic["event_id"].as_str().unwrap(),
        crate::sync::enc(&ghost)
    );
    let (_, event) = appservice.raw("GET", &read, None).await;
    assert_eq!(event["origin_server_ts"].as_u64(), Some(1_436_451_240_000));

    // An ordinary user's ts is ignored.
    let alice = server.register("alice").await;
    let (_, room) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some("{}")).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (_, sent) = alice
        .raw(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1?ts=1000"),
            Some(r#"{"msgtype":"m.text","body":"x"}"#),
        )
        .await;
    let (_, event) = alice
        .raw("GET", &format!("/_matrix/client/v3/rooms/{room_id}/event/{}", sent["event_id"].as_str().unwrap()), None)
        .await;
    assert!(event["origin_server_ts"].as_u64().unwrap() > 1_000_000_000_000, "{event}");
}

/// Ghosts (users an appservice owns exclusively) have no clients: like Synapse, the server
/// computes no notifications for them, while ordinary members get theirs.
#[tokio::test]
async fn ghosts_get_no_notifications_ordinary_members_do() {
    let (server, appservice) = server_with_appservice().await;
    let name = server.server_name().to_owned();
    register_ghost(&appservice, "kakao_kim").await;
    let ghost = format!("@kakao_kim:{name}");
    let as_ghost = |path: &str, sep: char| format!("{path}{sep}user_id={}", crate::sync::enc(&ghost));
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, room) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let join = format!("/_matrix/client/v3/join/{}", crate::sync::enc(&room_id));
    let (status, body) = appservice.raw("POST", &as_ghost(&join, '?'), Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob.raw("POST", &join, Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    // A message that mentions both by name: a highlight for anyone who is evaluated.
    let body = format!("kakao_kim and {}, look", bob.user_id().localpart());
    let content = json!({ "msgtype": "m.text", "body": body });
    let send = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/n1");
    let (status, body) = alice.raw("PUT", &send, Some(&content.to_string())).await;
    assert_eq!(status, 200, "{body}");

    let unread = |body: &Value| body["rooms"]["join"][room_id.as_str()]["unread_notifications"].clone();
    let (status, body) = bob.raw("GET", "/_matrix/client/v3/sync", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(unread(&body), json!({ "notification_count": 1, "highlight_count": 1 }), "{body}");
    let (status, body) = appservice.raw("GET", &as_ghost("/_matrix/client/v3/sync", '?'), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["rooms"]["join"][room_id.as_str()]["timeline"].to_string().contains("look"), "{body}");
    let counts = unread(&body);
    assert_eq!(counts["notification_count"].as_u64().unwrap_or(0), 0, "{body}");
    assert_eq!(counts["highlight_count"].as_u64().unwrap_or(0), 0, "{body}");
}

#[tokio::test]
async fn invalid_registrations_stop_start_up_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, registration("ieum.test").replace("kakaobot", "Kakao Bot")).unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    let error = TestServer::try_start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await.err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("broken.yaml") && message.contains("sender_localpart"), "{message}");

    // Two registrations with the same as_token.
    let other = dir.path().join("copy.yaml");
    std::fs::write(&path, registration("ieum.test")).unwrap();
    std::fs::write(&other, registration("ieum.test").replace("id: kakao", "id: copy").replace("kakaobot", "copybot"))
        .unwrap();
    let list = format!("[{:?}, {:?}]", path.display().to_string(), other.display().to_string());
    let error = TestServer::try_start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await.err().expect("refused");
    assert!(error.to_string().contains("as_token") || error.to_string().contains("copy"), "{error}");
}

/// A stub appservice on loopback: records every transaction (id, Authorization, body);
/// answers 500 while `down` is set.
#[derive(Clone, Default)]
struct Stub {
    received: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Pings and user/alias queries received (path).
    queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Stub {
    async fn start(&self) -> String {
        use axum::{
            extract::Path,
            http::HeaderMap,
            routing::{get, post, put},
        };
        let stub = self.clone();
        let (q1, q2, q3) = (self.queries.clone(), self.queries.clone(), self.queries.clone());
        let app = axum::Router::new()
            .route(
                "/_matrix/app/v1/ping",
                post(move |headers: HeaderMap, body: String| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    q1.lock().unwrap().push(format!("ping {auth} {body}"));
                    "{}"
                }),
            )
            .route(
                "/_matrix/app/v1/users/{user}",
                get(move |Path(user): Path<String>| async move {
                    q2.lock().unwrap().push(format!("user {user}"));
                    (axum::http::StatusCode::NOT_FOUND, "{}")
                }),
            )
            .route(
                "/_matrix/app/v1/rooms/{alias}",
                get(move |Path(alias): Path<String>| async move {
                    q3.lock().unwrap().push(format!("alias {alias}"));
                    (axum::http::StatusCode::NOT_FOUND, "{}")
                }),
            )
            .route(
                "/_matrix/app/v1/thirdparty/protocol/{protocol}",
                get(|Path(protocol): Path<String>| async move {
                    let body = json!({
                        "user_fields": ["nickname"], "location_fields": ["chat"], "icon": "mxc://ieum.test/kakao",
                        "field_types": {
                            "nickname": { "regexp": ".+", "placeholder": "김민수" },
                            "chat": { "regexp": "[0-9]+", "placeholder": "1234" }
                        },
                        "instances": [{ "desc": "카카오톡", "fields": {}, "network_id": "kakao-main" }]
                    });
                    if protocol == "kakaotalk" { (axum::http::StatusCode::OK, body.to_string()) }
                    else { (axum::http::StatusCode::NOT_FOUND, "{}".to_owned()) }
                }),
            )
            .route(
                "/_matrix/app/v1/thirdparty/location/{protocol}",
                get(|axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                    json!([
                        { "alias": "#kakao_1234:ieum.test", "protocol": "kakaotalk",
                          "fields": { "chat": "1234", "query": query.unwrap_or_default() } },
                        { "alias": "#kakao_bad:ieum.test", "protocol": "other", "fields": {} },
                        { "protocol": "kakaotalk", "fields": {} }
                    ])
                    .to_string()
                }),
            )
            .route(
                "/_matrix/app/v1/thirdparty/user/{protocol}",
                get(|| async { json!([{ "userid": "@kakao_kim:ieum.test", "protocol": "kakaotalk", "fields": { "nickname": "김민수" } }]).to_string() }),
            )
            .route(
                "/_matrix/app/v1/thirdparty/location",
                get(|axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                    let alias = query.unwrap_or_default().replace("alias=", "").replace("%23", "#").replace("%3A", ":");
                    json!([{ "alias": alias, "protocol": "kakaotalk", "fields": { "chat": "1234" } }]).to_string()
                }),
            )
            .route(
                "/_matrix/app/v1/thirdparty/user",
                get(|| async { "not json".to_owned() }),
            )
            .route(
                "/_matrix/app/v1/transactions/{txn}",
                put(move |Path(txn): Path<String>, headers: HeaderMap, body: String| {
                    let stub = stub.clone();
                    async move {
                        if stub.down.load(std::sync::atomic::Ordering::SeqCst) {
                            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "{}");
                        }
                        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        stub.received.lock().unwrap().push((
                            txn,
                            auth,
                            serde_json::from_str(&body).unwrap_or(Value::Null),
                        ));
                        (axum::http::StatusCode::OK, "{}")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        format!("http://{addr}")
    }

    fn bodies(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .flat_map(|(_, _, body)| body["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A server whose registration points at `stub` (started here), with `extra` registration
/// lines; the directory holding the registration is kept for restarts.
async fn server_with_stub(stub: &Stub, extra: &str) -> (TestServer, tempfile::TempDir) {
    let url = stub.start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kakao.yaml");
    let yaml = registration("ieum.test")
        .replace("http://127.0.0.1:9", &url)
        .replace("rate_limited: false", &format!("rate_limited: false\n{extra}"));
    std::fs::write(&path, yaml).unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    (TestServer::start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await, dir)
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn transactions_carry_interesting_events_and_survive_an_outage_and_a_restart() {
    let stub = Stub::default();
    let url = stub.start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kakao.yaml");
    std::fs::write(&path, registration("ieum.test").replace("http://127.0.0.1:9", &url)).unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    let mut server = TestServer::start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await;
    let mut appservice = server.client();
    appservice.token = Some(AS_TOKEN.to_owned());
    register_ghost(&appservice, "kakao_kim").await;

    let alice = server.register("alice").await;
    let (_, bridged) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let bridged = bridged["room_id"].as_str().unwrap().to_owned();
    let (_, private) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some("{}")).await;
    let private = private["room_id"].as_str().unwrap().to_owned();
    let ghost = "@kakao_kim:ieum.test";
    let join = format!("/_matrix/client/v3/join/{bridged}?user_id={}", crate::sync::enc(ghost));
    assert_eq!(appservice.raw("POST", &join, Some("{}")).await.0, 200);
    let say = |room: &str, txn: &str, text: &str| {
        let alice = alice.clone();
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        let body = json!({ "msgtype": "m.text", "body": text }).to_string();
        async move { assert_eq!(alice.raw("PUT", &path, Some(&body)).await.0, 200) }
    };
    say(&bridged, "1", "to the bridge").await;
    say(&private, "2", "not for the bridge").await;
    wait_for("the bridge gets alice's message", || stub.bodies().contains(&"to the bridge".to_owned())).await;
    assert!(!stub.bodies().contains(&"not for the bridge".to_owned()));
    let first = stub.received.lock().unwrap()[0].clone();
    assert_eq!(first.1, "Bearer hs_token_for_tests_0123456789");

    // The appservice is down: the transaction is retried with the same id until accepted,
    // also across a restart of the homeserver.
    stub.down.store(true, std::sync::atomic::Ordering::SeqCst);
    say(&bridged, "3", "while down").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.stop().await;
    server.start_again().await;
    stub.down.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("the message sent while the bridge was down", || stub.bodies().contains(&"while down".to_owned())).await;
    let received = stub.received.lock().unwrap().clone();
    let ids: Vec<&String> = received.iter().map(|(id, _, _)| id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "each transaction accepted once");
    assert_eq!(stub.bodies().iter().filter(|b| *b == "while down").count(), 1, "{:?}", stub.bodies());
    // Without receive_ephemeral, transactions carry no ephemeral field.
    assert!(received.iter().all(|(_, _, body)| body.get("ephemeral").is_none()));
    // The last accepted transaction is recorded (at the latest when the sender goes idle or
    // stops): a restart sends nothing again.
    say(&bridged, "4", "just before a restart").await;
    wait_for("the last message", || stub.bodies().contains(&"just before a restart".to_owned())).await;
    let before = stub.received.lock().unwrap().len();
    server.stop().await;
    server.start_again().await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(stub.received.lock().unwrap().len(), before, "no transaction sent again after a clean restart");
    drop(dir);
}

#[tokio::test]
async fn ping_and_queries_reach_the_appservice() {
    let stub = Stub::default();
    let url = stub.start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kakao.yaml");
    std::fs::write(&path, registration("ieum.test").replace("http://127.0.0.1:9", &url)).unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    let server = TestServer::start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await;
    let mut appservice = server.client();
    appservice.token = Some(AS_TOKEN.to_owned());

    let (status, body) =
        appservice.raw("POST", "/_matrix/client/v1/appservice/kakao/ping", Some(r#"{"transaction_id":"p1"}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert!(stub.queries.lock().unwrap().iter().any(|q| q.contains("Bearer hs_token_for_tests") && q.contains("p1")));
    let (status, body) = appservice.raw("POST", "/_matrix/client/v1/appservice/other/ping", Some("{}")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let alice = server.register("alice").await;
    let (status, _) = alice.raw("POST", "/_matrix/client/v1/appservice/kakao/ping", Some("{}")).await;
    assert_eq!(status, 403, "users may not ping");

    // Unknown users and aliases in the namespaces are asked about.
    let (status, _) = alice.raw("GET", "/_matrix/client/v3/profile/@kakao_new:ieum.test", None).await;
    assert_eq!(status, 404);
    let (status, _) = alice.raw("GET", "/_matrix/client/v3/directory/room/%23kakao_new:ieum.test", None).await;
    assert_eq!(status, 404);
    let queries = stub.queries.lock().unwrap().clone();
    assert!(queries.contains(&"user @kakao_new:ieum.test".to_owned()), "{queries:?}");
    assert!(queries.contains(&"alias #kakao_new:ieum.test".to_owned()), "{queries:?}");
    drop(dir);
}

#[tokio::test]
async fn a_ping_to_an_appservice_that_is_down_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kakao.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(&path, registration("ieum.test").replace("http://127.0.0.1:9", &format!("http://127.0.0.1:{port}")))
        .unwrap();
    let list = format!("[{:?}]", path.display().to_string());
    let server = TestServer::start_with(&[("IEUM_APPSERVICES__REGISTRATIONS", &list)]).await;
    let mut appservice = server.client();
    appservice.token = Some(AS_TOKEN.to_owned());
    let (status, body) = appservice.raw("POST", "/_matrix/client/v1/appservice/kakao/ping", Some("{}")).await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("M_CONNECTION_FAILED")), "{body}");
    drop(dir);
}

impl Stub {
    /// Every ephemeral event received, and every to-device message (MSC2409's field).
    fn ephemeral(&self) -> (Vec<Value>, Vec<Value>) {
        let received = self.received.lock().unwrap();
        let field = |body: &Value, name: &str| body[name].as_array().cloned().unwrap_or_default();
        (
            received.iter().flat_map(|(_, _, body)| field(body, "ephemeral")).collect(),
            received.iter().flat_map(|(_, _, body)| field(body, "de.sorunome.msc2409.to_device")).collect(),
        )
    }
}

#[tokio::test]
async fn ephemeral_and_to_device_reach_appservices_that_ask_for_them() {
    let stub = Stub::default();
    let (server, dir) = server_with_stub(&stub, "receive_ephemeral: true").await;
    let mut appservice = server.client();
    appservice.token = Some(AS_TOKEN.to_owned());
    // A ghost with a device (an encrypting bridge logs its ghosts in).
    let body = json!({ "type": "m.login.application_service", "username": "kakao_kim", "device_id": "GHOSTDEV" });
    let (status, ghost_login) = appservice.raw("POST", "/_matrix/client/v3/register", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{ghost_login}");
    let ghost = "@kakao_kim:ieum.test";

    let alice = server.register("alice").await;
    let alice_id = alice.user_id.clone().unwrap().to_string();
    let (_, bridged) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let bridged = bridged["room_id"].as_str().unwrap().to_owned();
    let (_, private) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some("{}")).await;
    let private = private["room_id"].as_str().unwrap().to_owned();
    let join = format!("/_matrix/client/v3/join/{bridged}?user_id={}", crate::sync::enc(ghost));
    assert_eq!(appservice.raw("POST", &join, Some("{}")).await.0, 200);

    // Typing where the ghost is, and where it is not.
    let typing = |room: &str| format!("/_matrix/client/v3/rooms/{room}/typing/{}", crate::sync::enc(&alice_id));
    let on = json!({ "typing": true, "timeout": 30000 }).to_string();
    assert_eq!(alice.raw("PUT", &typing(&private), Some(&on)).await.0, 200);
    assert_eq!(alice.raw("PUT", &typing(&bridged), Some(&on)).await.0, 200);
    wait_for("m.typing in the bridged room", || {
        stub.ephemeral().0.iter().any(|e| {
            e["type"] == "m.typing"
                && e["room_id"] == bridged.as_str()
                && e["content"]["user_ids"][0] == alice_id.as_str()
        })
    })
    .await;
    assert!(!stub.ephemeral().0.iter().any(|e| e["room_id"] == private.as_str()), "{:?}", stub.ephemeral().0);

    // A read receipt, public and private.
    let path = format!("/_matrix/client/v3/rooms/{bridged}/send/m.room.message/r1");
    let (_, sent) = alice.raw("PUT", &path, Some(r#"{"msgtype":"m.text","body":"read me"}"#)).await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let receipt =
        |kind: &str| format!("/_matrix/client/v3/rooms/{bridged}/receipt/{kind}/{}", crate::sync::enc(&event_id));
    assert_eq!(alice.raw("POST", &receipt("m.read.private"), Some("{}")).await.0, 200);
    assert_eq!(alice.raw("POST", &receipt("m.read"), Some("{}")).await.0, 200);
    wait_for("m.receipt", || {
        stub.ephemeral().0.iter().any(|e| {
            e["type"] == "m.receipt"
                && e["room_id"] == bridged.as_str()
                && e["content"][&event_id]["m.read"][&alice_id]["ts"].is_u64()
        })
    })
    .await;
    assert!(
        !stub.ephemeral().0.iter().any(|e| e["content"][&event_id]["m.read.private"].is_object()),
        "another user's private receipt is not the appservice's"
    );

    // Presence of a user who shares a room with the ghost.
    let presence = format!("/_matrix/client/v3/presence/{}/status", crate::sync::enc(&alice_id));
    assert_eq!(alice.raw("PUT", &presence, Some(r#"{"presence":"unavailable","status_msg":"회의 중"}"#)).await.0, 200);
    wait_for("m.presence", || {
        stub.ephemeral().0.iter().any(|e| {
            e["type"] == "m.presence" && e["sender"] == alice_id.as_str() && e["content"]["status_msg"] == "회의 중"
        })
    })
    .await;

    // A to-device message for the ghost's device reaches the appservice once, then leaves the inbox.
    let body = json!({ "messages": { ghost: { "GHOSTDEV": { "secret": "only for the bridge" } } } });
    let path = "/_matrix/client/v3/sendToDevice/m.test.bridge/td1";
    assert_eq!(alice.raw("PUT", path, Some(&body.to_string())).await.0, 200);
    wait_for("the to-device message", || !stub.ephemeral().1.is_empty()).await;
    let to_device = stub.ephemeral().1;
    assert_eq!(to_device.len(), 1, "{to_device:?}");
    let message = &to_device[0];
    assert_eq!(message["type"], "m.test.bridge");
    assert_eq!(message["sender"], alice_id.as_str());
    assert_eq!((message["to_user_id"].as_str(), message["to_device_id"].as_str()), (Some(ghost), Some("GHOSTDEV")));
    assert_eq!(message["content"]["secret"], "only for the bridge");
    let mut ghost_client = server.client();
    ghost_client.token = ghost_login["access_token"].as_str().map(str::to_owned);
    let (status, sync) = ghost_client.raw("GET", "/_matrix/client/v3/sync?timeout=0", None).await;
    assert_eq!(status, 200, "{sync}");
    assert!(sync["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "delivered once: {sync}");
    drop(dir);
}

#[tokio::test]
async fn third_party_lookups_are_passed_to_the_appservices_that_declare_the_protocol() {
    let stub = Stub::default();
    let (server, dir) = server_with_stub(&stub, "protocols: [\"kakaotalk\"]").await;
    let alice = server.register("alice").await;

    let (status, body) = alice.raw("GET", "/_matrix/client/v3/thirdparty/protocols", None).await;
    assert_eq!(status, 200, "{body}");
    let kakao = &body["kakaotalk"];
    assert_eq!(kakao["user_fields"], json!(["nickname"]), "{body}");
    assert_eq!(kakao["instances"][0]["desc"], "카카오톡");
    assert_eq!(kakao["instances"][0]["instance_id"], "kakao|kakao-main", "each instance gets a unique id");
    let (status, single) = alice.raw("GET", "/_matrix/client/v3/thirdparty/protocol/kakaotalk", None).await;
    assert_eq!((status, &single), (200, kakao));
    let (status, body) = alice.raw("GET", "/_matrix/client/v3/thirdparty/protocol/irc", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // Lookups: the fields are passed on; malformed or other-protocol entries are dropped.
    let (status, body) = alice.raw("GET", "/_matrix/client/v3/thirdparty/location/kakaotalk?chat=1234", None).await;
    assert_eq!(status, 200, "{body}");
    let found = body.as_array().unwrap();
    assert_eq!(found.len(), 1, "{body}");
    assert_eq!(found[0]["alias"], "#kakao_1234:ieum.test");
    assert_eq!(found[0]["fields"]["query"], "chat=1234", "only the lookup's fields reach the appservice");
    let (status, body) = alice.raw("GET", "/_matrix/client/v3/thirdparty/user/kakaotalk?nickname=kim", None).await;
    assert_eq!((status, body[0]["userid"].as_str()), (200, Some("@kakao_kim:ieum.test")), "{body}");
    let (status, body) = alice.raw("GET", "/_matrix/client/v3/thirdparty/location/irc", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // Reverse lookups; an appservice answering garbage gives an empty list, not an error.
    let (status, body) =
        alice.raw("GET", "/_matrix/client/v3/thirdparty/location?alias=%23kakao_1234%3Aieum.test", None).await;
    assert_eq!((status, body[0]["alias"].as_str()), (200, Some("#kakao_1234:ieum.test")), "{body}");
    let (status, body) =
        alice.raw("GET", "/_matrix/client/v3/thirdparty/user?userid=%40kakao_kim%3Aieum.test", None).await;
    assert_eq!((status, body), (200, json!([])));
    // Only users may ask.
    let (status, _) = server.client().raw("GET", "/_matrix/client/v3/thirdparty/protocols", None).await;
    assert_eq!(status, 401);
    drop(dir);
}
