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
    let body = json!({ "username": "kakao_squatter", "password": "password", "auth": { "type": "m.login.dummy" } });
    let (status, answer) = server.client().raw("POST", "/_matrix/client/v3/register", Some(&body.to_string())).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{answer}");

    let alice = server.register("alice").await;
    let (_, room) = alice.raw("POST", "/_matrix/client/v3/createRoom", Some(r#"{"preset":"public_chat"}"#)).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (status, _) = appservice.raw("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some("{}")).await;
    assert_eq!(status, 200);
    let alias = format!("#kakao_general:{name}");
    let path = format!("/_matrix/client/v3/directory/room/{}", crate::sync::enc(&alias));
    let body = json!({ "room_id": room_id }).to_string();
    let (status, answer) = alice.raw("PUT", &path, Some(&body)).await;
    assert_eq!((status, answer["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{answer}");
    // The appservice may.
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
