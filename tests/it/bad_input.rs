//! Integration tests: bad input — data-driven tables of malformed or unauthorised requests
//! (bad JSON, wrong types, unknown endpoints and methods, oversized bodies, missing or bad
//! tokens, unknown rooms, invalid ids in paths and bodies, bad query parameters, rooms the
//! user is not in) with the expected status and errcode; none may answer 500, and the server
//! must keep working afterwards.

use serde_json::Value;

use crate::{
    harness::{Client, TestServer},
    rooms::{create_private_room, send_text},
};

#[derive(Clone, Copy, Debug)]
enum Auth {
    /// Alice's valid access token.
    Valid,
    /// No Authorization header.
    Missing,
    /// A syntactically fine but unknown token.
    Unknown,
    /// A raw Authorization header value.
    Header(&'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    /// Placeholders: `{room}` (alice's room), `{other}` (a private room alice is not in),
    /// `{user}` (alice's user id).
    path: String,
    body: Option<Vec<u8>>,
    auth: Auth,
    status: u16,
    /// Acceptable errcodes (the first is the preferred one).
    errcodes: &'static [&'static str],
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: Option<&str>,
    status: u16,
    errcodes: &'static [&'static str],
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        body: body.map(|b| b.as_bytes().to_vec()),
        auth: Auth::Valid,
        status,
        errcodes,
    }
}

impl Case {
    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    fn bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
}

struct Fixture {
    server: TestServer,
    alice: Client,
    room: String,
    other: String,
    http: reqwest::Client,
}

async fn fixture() -> Fixture {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_private_room(&alice).await.to_string();
    let other = create_private_room(&bob).await.to_string();
    Fixture { server, alice, room, other, http: reqwest::Client::new() }
}

impl Fixture {
    fn fill(&self, text: &str) -> String {
        text.replace("{room}", &self.room)
            .replace("{other}", &self.other)
            .replace("{user}", self.alice.user_id().as_str())
    }

    /// Sends one case. A dropped connection (e.g. a panic in the handler) is reported as
    /// status 0 so the remaining cases still run.
    async fn run(&self, case: &Case) -> (u16, Value) {
        let path = self.fill(&case.path);
        let mut request =
            self.http.request(case.method.parse().expect("method"), format!("{}{path}", self.server.base));
        match case.auth {
            Auth::Valid => request = request.bearer_auth(self.alice.token.as_deref().expect("token")),
            Auth::Missing => {}
            Auth::Unknown => request = request.bearer_auth("syt_bm90YXJlYWx0b2tlbg_NotARealToken_0000"),
            Auth::Header(value) => request = request.header("authorization", value),
        }
        if let Some(body) = &case.body {
            let body = match std::str::from_utf8(body) {
                Ok(text) => self.fill(text).into_bytes(),
                Err(_) => body.clone(),
            };
            request = request.header("content-type", "application/json").body(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return (0, Value::String(format!("no answer (connection dropped): {error}"))),
        };
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())))
    }

    /// Runs every case; returns a description of each mismatch.
    async fn check(&self, cases: &[Case]) -> Vec<String> {
        let mut failures = Vec::new();
        for case in cases {
            let (status, body) = self.run(case).await;
            let errcode = body["errcode"].as_str().unwrap_or("<none>");
            if status != case.status || !case.errcodes.contains(&errcode) {
                failures.push(format!(
                    "{}: {} {} -> {status} {errcode} (want {} {:?}); body {}",
                    case.name,
                    case.method,
                    case.path,
                    case.status,
                    case.errcodes,
                    truncate(&body)
                ));
            }
        }
        failures
    }

    /// The server still answers normal requests correctly.
    async fn assert_still_works(&self) {
        let whoami = self.alice.raw("GET", "/_matrix/client/v3/account/whoami", None).await;
        assert_eq!(whoami.0, 200, "{}", whoami.1);
        let room_id: ruma::OwnedRoomId = self.room.as_str().try_into().unwrap();
        let event_id = send_text(&self.alice, &room_id, "still alive").await;
        assert!(event_id.as_str().starts_with('$'));
        let new_room = create_private_room(&self.alice).await;
        assert_ne!(new_room, room_id);
    }
}

fn truncate(body: &Value) -> String {
    let text = body.to_string();
    if text.len() > 200 { format!("{}…", &text[..200]) } else { text }
}

async fn run_table(cases: Vec<Case>) {
    let fixture = fixture().await;
    let failures = fixture.check(&cases).await;
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
    fixture.assert_still_works().await;
}

const SEND: &str = "/_matrix/client/v3/rooms/{room}/send/m.room.message";
const CREATE: &str = "/_matrix/client/v3/createRoom";

// ---------------------------------------------------------------------------------------------
// The tables

fn not_json_cases() -> Vec<Case> {
    vec![
        case("malformed json", "POST", CREATE, Some("{not json"), 400, &["M_NOT_JSON"]),
        case("truncated json", "POST", CREATE, Some("{\"name\":"), 400, &["M_NOT_JSON"]),
        case("trailing garbage", "POST", CREATE, Some("{} x"), 400, &["M_NOT_JSON"]),
        case("empty body for an event", "PUT", &format!("{SEND}/nj1"), Some(""), 400, &["M_NOT_JSON"]),
        case("malformed event content", "PUT", &format!("{SEND}/nj2"), Some("{\"body\": }"), 400, &["M_NOT_JSON"]),
        case("malformed register body", "POST", "/_matrix/client/v3/register", Some("{"), 400, &["M_NOT_JSON"])
            .auth(Auth::Missing),
        case("malformed login body", "POST", "/_matrix/client/v3/login", Some("{\"type\""), 400, &["M_NOT_JSON"])
            .auth(Auth::Missing),
        case(
            "Infinity",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/inf",
            Some("{\"body\": Infinity}"),
            400,
            &["M_NOT_JSON"],
        ),
        case(
            "-Infinity",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/ninf",
            Some("{\"body\": -Infinity}"),
            400,
            &["M_NOT_JSON"],
        ),
        case(
            "NaN",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/nan",
            Some("{\"body\": NaN}"),
            400,
            &["M_NOT_JSON"],
        ),
        case("invalid utf-8 in event", "PUT", &format!("{SEND}/utf8"), None, 400, &["M_NOT_JSON"])
            .bytes(b"{\"msgtype\":\"m.text\",\"body\":\"\xff\xfe\"}".to_vec()),
        case("invalid utf-8 in createRoom", "POST", CREATE, None, 400, &["M_NOT_JSON"])
            .bytes(b"{\"name\":\"\xc3\x28\"}".to_vec()),
    ]
}

fn bad_json_cases() -> Vec<Case> {
    vec![
        case("createRoom body is an array", "POST", CREATE, Some("[]"), 400, &["M_BAD_JSON"]),
        case("createRoom name is a number", "POST", CREATE, Some(r#"{"name": 42}"#), 400, &["M_BAD_JSON"]),
        case(
            "createRoom invite is not a list",
            "POST",
            CREATE,
            Some(r#"{"invite": "notalist"}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case("createRoom is_direct is a string", "POST", CREATE, Some(r#"{"is_direct": "yes"}"#), 400, &["M_BAD_JSON"]),
        case("event content is a string", "PUT", &format!("{SEND}/bj1"), Some("\"str\""), 400, &["M_BAD_JSON"]),
        case("event content is an array", "PUT", &format!("{SEND}/bj2"), Some("[1,2]"), 400, &["M_BAD_JSON"]),
        case(
            "state content is a number",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/state/m.room.topic/",
            Some("42"),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "integer above 2^53",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/n1",
            Some(r#"{"body": 9007199254740992}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "integer below -2^53",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/n2",
            Some(r#"{"body": -9007199254740992}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "float in event content",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/send/complement.dummy/n3",
            Some(r#"{"body": 1.1}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "float in state content",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/state/complement.dummy/",
            Some(r#"{"v": 0.5}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "login user is a number",
            "POST",
            "/_matrix/client/v3/login",
            Some(r#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":5},"password":"x"}"#),
            400,
            &["M_BAD_JSON"],
        )
        .auth(Auth::Missing),
        case(
            "login without type",
            "POST",
            "/_matrix/client/v3/login",
            Some(r#"{"password":"x"}"#),
            400,
            &["M_BAD_JSON", "M_MISSING_PARAM"],
        )
        .auth(Auth::Missing),
        case(
            "alias without room_id",
            "PUT",
            "/_matrix/client/v3/directory/room/%23noroom:ieum.test",
            Some("{}"),
            400,
            &["M_BAD_JSON", "M_MISSING_PARAM"],
        ),
        case(
            "displayname is a number",
            "PUT",
            "/_matrix/client/v3/profile/{user}/displayname",
            Some(r#"{"displayname": 5}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "kick without user_id",
            "POST",
            "/_matrix/client/v3/rooms/{room}/kick",
            Some("{}"),
            400,
            &["M_BAD_JSON", "M_MISSING_PARAM"],
        ),
        case(
            "room visibility is a number",
            "PUT",
            "/_matrix/client/v3/directory/list/room/{room}",
            Some(r#"{"visibility": 1}"#),
            400,
            &["M_BAD_JSON"],
        ),
        case(
            "change password without new_password",
            "POST",
            "/_matrix/client/v3/account/password",
            Some("{}"),
            400,
            &["M_BAD_JSON", "M_MISSING_PARAM"],
        ),
    ]
}

fn unknown_endpoint_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for path in [
        "/_matrix/unknown",
        "/_matrix/client/unknown",
        "/_matrix/client/v1/unknown",
        "/_matrix/client/v3/room/unknown",
        "/_matrix/client/v3/rooms/{room}/unknown",
        "/_matrix/federation/unknown",
        "/_matrix/federation/v1/unknown",
        "/_matrix/key/unknown",
        "/_matrix/key/v2/unknown",
        "/_matrix/media/unknown",
        "/_matrix/media/v3/unknown",
        "/not/matrix/at/all",
    ] {
        cases.push(case("unknown endpoint", "GET", path, None, 404, &["M_UNRECOGNIZED"]));
    }
    cases.push(
        case("unknown endpoint without token", "GET", "/_matrix/client/v3/unknown", None, 404, &["M_UNRECOGNIZED"])
            .auth(Auth::Missing),
    );
    cases
}

fn wrong_method_cases() -> Vec<Case> {
    vec![
        case("PUT /login", "PUT", "/_matrix/client/v3/login", Some("{}"), 405, &["M_UNRECOGNIZED"]),
        case("DELETE /createRoom", "DELETE", CREATE, None, 405, &["M_UNRECOGNIZED"]),
        case("POST /account/whoami", "POST", "/_matrix/client/v3/account/whoami", Some("{}"), 405, &["M_UNRECOGNIZED"]),
        case("GET /send/{txn}", "GET", &format!("{SEND}/m1"), None, 405, &["M_UNRECOGNIZED"]),
        case(
            "POST /send/{txn}",
            "POST",
            &format!("{SEND}/m2"),
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            405,
            &["M_UNRECOGNIZED"],
        ),
        case("PUT /joined_rooms", "PUT", "/_matrix/client/v3/joined_rooms", Some("{}"), 405, &["M_UNRECOGNIZED"]),
        case("DELETE /versions", "DELETE", "/_matrix/client/versions", None, 405, &["M_UNRECOGNIZED"]),
    ]
}

fn too_large_cases() -> Vec<Case> {
    let huge_name = format!("{{\"name\":\"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let huge_event = format!("{{\"msgtype\":\"m.text\",\"body\":\"{}\"}}", "b".repeat(1100 * 1024));
    vec![
        case("createRoom over 1 MiB", "POST", CREATE, Some(&huge_name), 413, &["M_TOO_LARGE"]),
        case("event over 1 MiB", "PUT", &format!("{SEND}/big"), Some(&huge_event), 413, &["M_TOO_LARGE"]),
        case("login over 1 MiB", "POST", "/_matrix/client/v3/login", Some(&huge_name), 413, &["M_TOO_LARGE"])
            .auth(Auth::Missing),
    ]
}

fn token_cases() -> Vec<Case> {
    vec![
        case("no token: joined_rooms", "GET", "/_matrix/client/v3/joined_rooms", None, 401, &["M_MISSING_TOKEN"])
            .auth(Auth::Missing),
        case("no token: createRoom", "POST", CREATE, Some("{}"), 401, &["M_MISSING_TOKEN"]).auth(Auth::Missing),
        case("no token: room state", "GET", "/_matrix/client/v3/rooms/{room}/state", None, 401, &["M_MISSING_TOKEN"])
            .auth(Auth::Missing),
        case(
            "no token: send",
            "PUT",
            &format!("{SEND}/t1"),
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            401,
            &["M_MISSING_TOKEN"],
        )
        .auth(Auth::Missing),
        case("no token: sync", "GET", "/_matrix/client/v3/sync", None, 401, &["M_MISSING_TOKEN"]).auth(Auth::Missing),
        case("unknown token: whoami", "GET", "/_matrix/client/v3/account/whoami", None, 401, &["M_UNKNOWN_TOKEN"])
            .auth(Auth::Unknown),
        case("unknown token: joined_rooms", "GET", "/_matrix/client/v3/joined_rooms", None, 401, &["M_UNKNOWN_TOKEN"])
            .auth(Auth::Unknown),
        case(
            "unknown token: send",
            "PUT",
            &format!("{SEND}/t2"),
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            401,
            &["M_UNKNOWN_TOKEN"],
        )
        .auth(Auth::Unknown),
        case(
            "unknown token in query",
            "GET",
            "/_matrix/client/v3/account/whoami?access_token=nope",
            None,
            401,
            &["M_UNKNOWN_TOKEN"],
        )
        .auth(Auth::Missing),
        case(
            "Basic auth scheme",
            "GET",
            "/_matrix/client/v3/account/whoami",
            None,
            401,
            &["M_MISSING_TOKEN", "M_UNKNOWN_TOKEN"],
        )
        .auth(Auth::Header("Basic YWxpY2U6cGFzc3dvcmQ=")),
        case(
            "Bearer without token",
            "GET",
            "/_matrix/client/v3/account/whoami",
            None,
            401,
            &["M_MISSING_TOKEN", "M_UNKNOWN_TOKEN"],
        )
        .auth(Auth::Header("Bearer")),
    ]
}

fn unknown_room_cases() -> Vec<Case> {
    vec![
        case(
            "state of unknown room",
            "GET",
            "/_matrix/client/v3/rooms/!nope:ieum.test/state",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "messages of unknown room",
            "GET",
            "/_matrix/client/v3/rooms/!nope:ieum.test/messages?dir=b",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "send to unknown room",
            "PUT",
            "/_matrix/client/v3/rooms/!nope:ieum.test/send/m.room.message/u1",
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "join unknown room",
            "POST",
            "/_matrix/client/v3/rooms/!nope:ieum.test/join",
            Some("{}"),
            404,
            &["M_NOT_FOUND"],
        ),
        case(
            "join unknown alias",
            "POST",
            "/_matrix/client/v3/join/%23nope:ieum.test",
            Some("{}"),
            404,
            &["M_NOT_FOUND"],
        ),
        case(
            "joined_members of unknown room",
            "GET",
            "/_matrix/client/v3/rooms/!nope:ieum.test/joined_members",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "members of unknown room",
            "GET",
            "/_matrix/client/v3/rooms/!nope:ieum.test/members",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "invite into unknown room",
            "POST",
            "/_matrix/client/v3/rooms/!nope:ieum.test/invite",
            Some(r#"{"user_id":"{user}"}"#),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "leave unknown room",
            "POST",
            "/_matrix/client/v3/rooms/!nope:ieum.test/leave",
            Some("{}"),
            403,
            &["M_FORBIDDEN", "M_NOT_FOUND"],
        ),
    ]
}

fn invalid_id_cases() -> Vec<Case> {
    vec![
        case(
            "room id without sigil",
            "GET",
            "/_matrix/client/v3/rooms/notaroomid/state",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "room id without sigil: send",
            "PUT",
            "/_matrix/client/v3/rooms/notaroomid/send/m.room.message/i1",
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "room id without sigil: messages",
            "GET",
            "/_matrix/client/v3/rooms/notaroomid/messages?dir=b",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case("room id with bad escape", "GET", "/_matrix/client/v3/rooms/%ZZ/state", None, 400, &["M_INVALID_PARAM"]),
        case(
            "alias without sigil: join",
            "POST",
            "/_matrix/client/v3/join/notanalias",
            Some("{}"),
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "alias without sigil: resolve",
            "GET",
            "/_matrix/client/v3/directory/room/notanalias",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "alias too long",
            "GET",
            &format!("/_matrix/client/v3/directory/room/%23{}:ieum.test", "a".repeat(300)),
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "user id without sigil: profile",
            "GET",
            "/_matrix/client/v3/profile/notauser",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "user id without server: profile",
            "GET",
            "/_matrix/client/v3/profile/@bad",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "user id in invite body",
            "POST",
            "/_matrix/client/v3/rooms/{room}/invite",
            Some(r#"{"user_id":"notauser"}"#),
            400,
            &["M_INVALID_PARAM", "M_BAD_JSON"],
        ),
        case(
            "user id in ban body",
            "POST",
            "/_matrix/client/v3/rooms/{room}/ban",
            Some(r#"{"user_id":"@nope"}"#),
            400,
            &["M_INVALID_PARAM", "M_BAD_JSON"],
        ),
        case(
            "event id without sigil",
            "GET",
            "/_matrix/client/v3/rooms/{room}/event/notanevent",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "event id without sigil: context",
            "GET",
            "/_matrix/client/v3/rooms/{room}/context/notanevent",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "event id without sigil: redact",
            "PUT",
            "/_matrix/client/v3/rooms/{room}/redact/notanevent/r1",
            Some("{}"),
            400,
            &["M_INVALID_PARAM"],
        ),
    ]
}

fn query_param_cases() -> Vec<Case> {
    vec![
        case(
            "register/available without username",
            "GET",
            "/_matrix/client/v3/register/available",
            None,
            400,
            &["M_MISSING_PARAM"],
        )
        .auth(Auth::Missing),
        case(
            "token validity without token",
            "GET",
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            None,
            400,
            &["M_MISSING_PARAM"],
        )
        .auth(Auth::Missing),
        case(
            "messages with bad dir",
            "GET",
            "/_matrix/client/v3/rooms/{room}/messages?dir=sideways",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "messages with non-numeric limit",
            "GET",
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=abc",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "messages with negative limit",
            "GET",
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=-1",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "messages with bad from token",
            "GET",
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&from=%00%01",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "messages with non-JSON filter",
            "GET",
            "/_matrix/client/v3/rooms/{room}/messages?dir=b&filter=%7Bnope",
            None,
            400,
            &["M_INVALID_PARAM", "M_NOT_JSON", "M_BAD_JSON"],
        ),
        case(
            "members with bad membership",
            "GET",
            "/_matrix/client/v3/rooms/{room}/members?membership=sleeping",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
        case(
            "publicRooms with bad limit",
            "GET",
            "/_matrix/client/v3/publicRooms?limit=many",
            None,
            400,
            &["M_INVALID_PARAM"],
        ),
    ]
}

fn not_in_room_cases() -> Vec<Case> {
    vec![
        case(
            "send to a room you are not in",
            "PUT",
            "/_matrix/client/v3/rooms/{other}/send/m.room.message/o1",
            Some(r#"{"body":"x","msgtype":"m.text"}"#),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "state into a room you are not in",
            "PUT",
            "/_matrix/client/v3/rooms/{other}/state/m.room.topic/",
            Some(r#"{"topic":"x"}"#),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "read messages of a room you are not in",
            "GET",
            "/_matrix/client/v3/rooms/{other}/messages?dir=b",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "read state of a room you are not in",
            "GET",
            "/_matrix/client/v3/rooms/{other}/state",
            None,
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "join invite-only room",
            "POST",
            "/_matrix/client/v3/rooms/{other}/join",
            Some("{}"),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "invite into a room you are not in",
            "POST",
            "/_matrix/client/v3/rooms/{other}/invite",
            Some(r#"{"user_id":"{user}"}"#),
            403,
            &["M_FORBIDDEN"],
        ),
        case(
            "redact in a room you are not in",
            "PUT",
            "/_matrix/client/v3/rooms/{other}/redact/$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG/r1",
            Some("{}"),
            403,
            &["M_FORBIDDEN"],
        ),
    ]
}

fn all_cases() -> Vec<Case> {
    let mut all = Vec::new();
    for table in [
        not_json_cases(),
        bad_json_cases(),
        unknown_endpoint_cases(),
        wrong_method_cases(),
        too_large_cases(),
        token_cases(),
        unknown_room_cases(),
        invalid_id_cases(),
        query_param_cases(),
        not_in_room_cases(),
    ] {
        all.extend(table);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// One test per table

#[tokio::test]
async fn malformed_json_is_m_not_json() {
    run_table(not_json_cases()).await;
}

#[tokio::test]
async fn wrong_json_types_are_m_bad_json() {
    run_table(bad_json_cases()).await;
}

#[tokio::test]
async fn unknown_endpoints_are_404_m_unrecognized() {
    run_table(unknown_endpoint_cases()).await;
}

#[tokio::test]
async fn wrong_methods_are_405_m_unrecognized() {
    run_table(wrong_method_cases()).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_m_too_large() {
    run_table(too_large_cases()).await;
}

#[tokio::test]
async fn missing_and_unknown_tokens_are_401() {
    run_table(token_cases()).await;
}

#[tokio::test]
async fn unknown_rooms_are_refused() {
    run_table(unknown_room_cases()).await;
}

#[tokio::test]
async fn invalid_ids_are_400() {
    run_table(invalid_id_cases()).await;
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    run_table(query_param_cases()).await;
}

#[tokio::test]
async fn rooms_you_are_not_in_are_forbidden() {
    run_table(not_in_room_cases()).await;
}

/// Every bad request in every table: never a 5xx, always a JSON error with an errcode, and the
/// server keeps working afterwards.
#[tokio::test]
async fn no_bad_request_causes_a_server_error() {
    let fixture = fixture().await;
    let mut failures = Vec::new();
    for case in all_cases() {
        let (status, body) = fixture.run(&case).await;
        if status >= 500 || !body["errcode"].is_string() {
            failures.push(format!("{}: {} {} -> {status} {}", case.name, case.method, case.path, truncate(&body)));
        }
    }
    assert!(failures.is_empty(), "server errors or non-JSON errors:\n{}", failures.join("\n"));
    fixture.assert_still_works().await;
}

/// A body that makes the request parser panic must not take the server (or later requests)
/// down, and should be answered with a 400 rather than a dropped connection.
#[tokio::test]
async fn login_without_type_is_a_400_not_a_dropped_connection() {
    let fixture = fixture().await;
    for _ in 0..3 {
        let (status, body) = fixture
            .run(
                &case("login without type", "POST", "/_matrix/client/v3/login", Some(r#"{"password":"x"}"#), 400, &[])
                    .auth(Auth::Missing),
            )
            .await;
        assert_eq!(status, 400, "{}", truncate(&body));
        assert!(matches!(body["errcode"].as_str(), Some("M_BAD_JSON" | "M_MISSING_PARAM")), "{}", truncate(&body));
    }
    fixture.assert_still_works().await;
}

#[tokio::test]
async fn deeply_nested_json_is_rejected_without_crashing() {
    let fixture = fixture().await;
    let depth = 100_000;
    let body = format!("{{\"creation_content\":{{\"x\":{}1{}}}}}", "[".repeat(depth), "]".repeat(depth));
    let (status, body) =
        fixture.run(&case("deep nesting", "POST", CREATE, Some(&body), 400, &["M_NOT_JSON", "M_BAD_JSON"])).await;
    assert_eq!(status, 400, "{}", truncate(&body));
    assert!(matches!(body["errcode"].as_str(), Some("M_NOT_JSON" | "M_BAD_JSON")), "{}", truncate(&body));
    let body =
        format!("{{\"msgtype\":\"m.text\",\"body\":\"x\",\"deep\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
    let (status, _) = fixture.run(&case("deep event", "PUT", &format!("{SEND}/deep"), Some(&body), 400, &[])).await;
    assert_eq!(status, 400);
    fixture.assert_still_works().await;
}

#[tokio::test]
async fn access_token_in_query_string_is_accepted() {
    let fixture = fixture().await;
    let token = fixture.alice.token.clone().unwrap();
    let path = format!("/_matrix/client/v3/account/whoami?access_token={token}");
    let (status, body) = fixture.run(&case("query token", "GET", &path, None, 200, &[]).auth(Auth::Missing)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], fixture.alice.user_id().as_str());
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let fixture = fixture().await;
    let response = fixture
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/_matrix/client/v3/createRoom", fixture.server.base))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let methods = response.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(methods.contains("POST") && methods.contains("PUT"), "{methods}");
    // Error responses are shareable too.
    let response = fixture.http.get(format!("{}/_matrix/client/v3/unknown", fixture.server.base)).send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}
