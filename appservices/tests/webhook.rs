//! `ieum-bridge webhook` against a stub homeserver on loopback: Slack's answers (ok,
//! invalid_payload, no_text, no_service, request_too_large, rate_limited), what reaches the
//! homeserver (ghost registered and named, invited, joined, message with body and
//! formatted_body as the ghost), a fresh transaction id per request that a retried PUT keeps,
//! 503 when the homeserver is down, and a hooks file edited while the server runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::{extract::State, http::Uri};
use ieum_appservices::import::client::Registration;
use ieum_appservices::webhook::hooks::HooksFile;
use ieum_appservices::webhook::server::{Config, serve};
use serde_json::{Value, json};

/// What the stub homeserver saw, and how it misbehaves.
#[derive(Default)]
struct Stub {
    seen: Mutex<Vec<(String, String, Value)>>,
    /// Answer this many sends with 500 first.
    fail_sends: AtomicUsize,
    /// The bot is not invited: its join is refused.
    forbid_bot_join: AtomicBool,
    events: AtomicUsize,
}

impl Stub {
    fn requests(&self, method: &str, path_prefix: &str) -> Vec<(String, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(path_prefix))
            .map(|(_, p, b)| (p.clone(), b.clone()))
            .collect()
    }
}

async fn homeserver(State(stub): State<Arc<Stub>>, method: Method, uri: Uri, body: Bytes) -> axum::response::Response {
    let path = uri.to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    stub.seen.lock().unwrap().push((method.to_string(), path.clone(), body));
    let ok = |v: Value| (StatusCode::OK, v.to_string()).into_response();
    let p = uri.path();
    match (method.as_str(), p) {
        ("GET", "/_matrix/client/v3/account/whoami") => ok(json!({"user_id": "@bridgebot:hs"})),
        ("GET", "/_matrix/client/v3/directory/room/%23alerts%3Ahs") => ok(json!({"room_id": "!alerts:hs"})),
        ("GET", _) if p.starts_with("/_matrix/client/v3/directory/room/") => {
            (StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND", "error": "no alias"}).to_string()).into_response()
        }
        ("POST", "/_matrix/client/v3/register") => ok(json!({"user_id": "@x:hs"})),
        ("POST", _) if p.starts_with("/_matrix/client/v3/join/") => {
            if path.contains("user_id=%40bridgebot") && stub.forbid_bot_join.load(Ordering::SeqCst) {
                return (StatusCode::FORBIDDEN, json!({"errcode": "M_FORBIDDEN", "error": "not invited"}).to_string())
                    .into_response();
            }
            ok(json!({"room_id": "!alerts:hs"}))
        }
        ("PUT", _) if p.contains("/send/m.room.message/") => {
            if stub.fail_sends.load(Ordering::SeqCst) > 0 {
                stub.fail_sends.fetch_sub(1, Ordering::SeqCst);
                return (StatusCode::BAD_GATEWAY, "{}").into_response();
            }
            ok(json!({"event_id": format!("$e{}", stub.events.fetch_add(1, Ordering::SeqCst))}))
        }
        _ => ok(json!({})),
    }
}

async fn start_stub() -> (String, Arc<Stub>) {
    let stub = Arc::new(Stub::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(homeserver).with_state(stub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, stub)
}

const REG: &str = "id: wh\nurl: null\nas_token: as_token_0123456789\nhs_token: hs_token_0123456789\nsender_localpart: bridgebot\n\
namespaces:\n  users:\n    - exclusive: true\n      regex: '@bridge_.*:hs'\n";

struct Hooks {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Hooks {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ieum-webhook-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hooks.toml");
        Hooks { dir, path }
    }

    /// Adds a hook to the file (as `webhook add` does) and returns its secret.
    fn add(&self, name: &str, room: &str, display_name: Option<&str>) -> String {
        let mut file = HooksFile::load(&self.path).unwrap();
        let secret = file.add(name, room, display_name.map(str::to_owned), None, false).unwrap();
        file.save(&self.path).unwrap();
        secret
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the webhook server; returns its base URL.
async fn start_bridge(homeserver: &str, hooks: &Hooks, tune: impl FnOnce(&mut Config)) -> String {
    let mut config = Config {
        homeserver: homeserver.to_owned(),
        registration: Registration::parse("reg.yaml", REG).unwrap(),
        server_name: None,
        hooks_path: hooks.path.clone(),
        max_body: 64 * 1024,
        rate_per_sec: 1.0,
        burst: 20.0,
        retry_for: Duration::from_secs(5),
    };
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { serve(listener, config, std::future::pending()).await.unwrap() });
    base
}

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String, Option<String>) {
    let resp = reqwest::Client::new().post(url).header("content-type", content_type).body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, resp.text().await.unwrap(), retry_after)
}

async fn post_json(url: &str, v: Value) -> (u16, String) {
    let (status, text, _) = post(url, "application/json", v.to_string()).await;
    (status, text)
}

#[tokio::test]
async fn posts_as_a_ghost_and_answers_like_slack() {
    let (hs, stub) = start_stub().await;
    let hooks = Hooks::new("slack");
    let secret = hooks.add("grafana", "#alerts:hs", None);
    let bridge = start_bridge(&hs, &hooks, |_| {}).await;
    let url = format!("{bridge}/hooks/{secret}");

    let alert = json!({"text": "*디스크* 95% <!here> <https://grafana.example/d/1?a=1&amp;b=2|대시보드>", "username": "Grafana", "channel": "#ignored", "thread_ts": "1.1"});
    assert_eq!(post_json(&url, alert.clone()).await, (200, "ok".into()));

    // The bot joined, the ghost was registered, named, invited by the bot and joined.
    assert_eq!(stub.requests("GET", "/_matrix/client/v3/directory/room/%23alerts%3Ahs").len(), 1);
    let joins: Vec<String> = stub.requests("POST", "/_matrix/client/v3/join/").into_iter().map(|(p, _)| p).collect();
    assert_eq!(joins.len(), 2, "{joins:?}");
    assert!(joins[0].ends_with("join/%21alerts%3Ahs?user_id=%40bridgebot%3Ahs"), "{joins:?}");
    let (_, register) = stub.requests("POST", "/_matrix/client/v3/register").remove(0);
    assert_eq!(register["type"], "m.login.application_service");
    let localpart = register["username"].as_str().unwrap().to_owned();
    assert!(localpart.starts_with("bridge_webhook_"), "{localpart}");
    let ghost_q = format!("user_id=%40{localpart}%3Ahs");
    let (path, name) = stub.requests("PUT", "/_matrix/client/v3/profile/").remove(0);
    assert!(path.ends_with(&format!("/displayname?{ghost_q}")), "{path}");
    assert_eq!(name, json!({"displayname": "Grafana"}));
    let (path, invite) = stub.requests("POST", "/_matrix/client/v3/rooms/%21alerts%3Ahs/invite").remove(0);
    assert!(path.ends_with("?user_id=%40bridgebot%3Ahs"));
    assert_eq!(invite["user_id"], format!("@{localpart}:hs"));
    assert!(joins[1].ends_with(&ghost_q), "{joins:?}");

    let sends = stub.requests("PUT", "/_matrix/client/v3/rooms/%21alerts%3Ahs/send/m.room.message/");
    let (path, content) = &sends[0];
    assert!(path.ends_with(&ghost_q), "{path}");
    assert_eq!(
        content,
        &json!({
            "msgtype": "m.text",
            "body": "디스크 95% @room 대시보드 (https://grafana.example/d/1?a=1&b=2)",
            "format": "org.matrix.custom.html",
            "formatted_body": "<strong>디스크</strong> 95% @room <a href=\"https://grafana.example/d/1?a=1&amp;b=2\">대시보드</a>",
            "m.mentions": {"room": true},
        })
    );

    // The same payload again is a second message (no content dedupe), with its own txn id,
    // and the ghost is not set up again.
    assert_eq!(post_json(&url, alert).await, (200, "ok".into()));
    let sends = stub.requests("PUT", "/_matrix/client/v3/rooms/%21alerts%3Ahs/send/m.room.message/");
    assert_eq!(sends.len(), 2);
    assert_ne!(sends[0].0, sends[1].0);
    assert_eq!(sends[0].1, sends[1].1);
    assert_eq!(stub.requests("POST", "/_matrix/client/v3/register").len(), 1);
    assert_eq!(stub.requests("POST", "/_matrix/client/v3/join/").len(), 2);

    // A form with payload=, no username: the bot itself posts.
    let payload = json!({"attachments": [{"title": "배포", "text": "v1.2 _완료_"}]}).to_string();
    let form: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload).finish();
    let (status, text, _) = post(&url, "application/x-www-form-urlencoded", form).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    let sends = stub.requests("PUT", "/_matrix/client/v3/rooms/%21alerts%3Ahs/send/m.room.message/");
    assert!(sends[2].0.ends_with("?user_id=%40bridgebot%3Ahs"), "{}", sends[2].0);
    assert_eq!(sends[2].1["body"], "배포\nv1.2 완료");
    assert_eq!(sends[2].1["formatted_body"], "<blockquote><strong>배포</strong><br>v1.2 <em>완료</em></blockquote>");
    assert_eq!(sends[2].1["m.mentions"], json!({}));

    // Refusals.
    assert_eq!(post_json(&format!("{bridge}/hooks/wrong"), json!({"text": "x"})).await, (404, "no_service".into()));
    assert_eq!(post_json(&format!("{bridge}/hooks/"), json!({"text": "x"})).await, (404, "no_service".into()));
    assert_eq!(post_json(&url, json!({})).await, (400, "no_text".into()));
    assert_eq!(post_json(&url, json!({"text": 5, "attachments": "x"})).await, (400, "invalid_payload".into()));
    let (status, text, _) = post(&url, "application/json", "{\"text\": ").await;
    assert_eq!((status, text.as_str()), (400, "invalid_payload"));
    let big = json!({"text": "가".repeat(30_000)}).to_string();
    let (status, text, _) = post(&url, "application/json", big).await;
    assert_eq!((status, text.as_str()), (413, "request_too_large"));
    // None of them reached the homeserver.
    assert_eq!(stub.requests("PUT", "/_matrix/client/v3/rooms/%21alerts%3Ahs/send/").len(), 3);
}

#[tokio::test]
async fn a_retried_put_keeps_its_transaction_id() {
    let (hs, stub) = start_stub().await;
    stub.fail_sends.store(2, Ordering::SeqCst);
    let hooks = Hooks::new("retry");
    let mut file = HooksFile::default();
    let secret = file.add("ci", "!alerts:hs", Some("CI".into()), Some("mxc://hs/ci-logo".into()), true).unwrap();
    file.save(&hooks.path).unwrap();
    let bridge = start_bridge(&hs, &hooks, |_| {}).await;
    assert_eq!(
        post_json(&format!("{bridge}/hooks/{secret}"), json!({"text": "build 7 failed"})).await,
        (200, "ok".into())
    );
    let sends = stub.requests("PUT", "/_matrix/client/v3/rooms/%21alerts%3Ahs/send/m.room.message/");
    assert_eq!(sends.len(), 3);
    assert!(sends.iter().all(|(p, _)| p == &sends[0].0), "{sends:?}");
    // The hook's display name and avatar: a ghost named "CI" posts, notices as asked.
    let profile: Vec<Value> = stub.requests("PUT", "/_matrix/client/v3/profile/").into_iter().map(|(_, b)| b).collect();
    assert_eq!(profile, vec![json!({"displayname": "CI"}), json!({"avatar_url": "mxc://hs/ci-logo"})]);
    assert!(sends[0].0.contains("user_id=%40bridge_webhook_"), "{}", sends[0].0);
    assert_eq!(sends[0].1["msgtype"], "m.notice");
}

#[tokio::test]
async fn a_homeserver_that_is_down_is_a_503() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let hooks = Hooks::new("down");
    let secret = hooks.add("alerts", "#alerts:hs", None);
    let bridge = start_bridge(&format!("http://127.0.0.1:{port}"), &hooks, |c| {
        c.retry_for = Duration::from_millis(300);
    })
    .await;
    assert_eq!(
        post_json(&format!("{bridge}/hooks/{secret}"), json!({"text": "x"})).await,
        (503, "homeserver_unavailable".into())
    );
}

#[tokio::test]
async fn rooms_and_permissions_that_fail_are_named() {
    let (hs, stub) = start_stub().await;
    let hooks = Hooks::new("rooms");
    let missing = hooks.add("missing", "#nowhere:hs", None);
    let uninvited = hooks.add("uninvited", "!alerts:hs", None);
    let bridge = start_bridge(&hs, &hooks, |c| c.server_name = Some("hs".into())).await;
    assert_eq!(
        post_json(&format!("{bridge}/hooks/{missing}"), json!({"text": "x"})).await,
        (404, "channel_not_found".into())
    );
    stub.forbid_bot_join.store(true, Ordering::SeqCst);
    assert_eq!(
        post_json(&format!("{bridge}/hooks/{uninvited}"), json!({"text": "x"})).await,
        (403, "action_prohibited".into())
    );
    // --server-name given: no whoami.
    assert!(stub.requests("GET", "/_matrix/client/v3/account/whoami").is_empty());
}

#[tokio::test]
async fn each_hook_has_its_own_rate_limit() {
    let (hs, _stub) = start_stub().await;
    let hooks = Hooks::new("rate");
    let noisy = hooks.add("noisy", "!alerts:hs", None);
    let quiet = hooks.add("quiet", "!alerts:hs", None);
    let bridge = start_bridge(&hs, &hooks, |c| {
        c.burst = 3.0;
        c.rate_per_sec = 0.2;
    })
    .await;
    let url = format!("{bridge}/hooks/{noisy}");
    for _ in 0..3 {
        assert_eq!(post_json(&url, json!({"text": "storm"})).await, (200, "ok".into()));
    }
    let (status, text, retry_after) = post(&url, "application/json", json!({"text": "storm"}).to_string()).await;
    assert_eq!((status, text.as_str()), (429, "rate_limited"));
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&secs), "{secs}");
    assert_eq!(post_json(&format!("{bridge}/hooks/{quiet}"), json!({"text": "calm"})).await, (200, "ok".into()));
}

#[tokio::test]
async fn the_hooks_file_is_reread_when_it_changes() {
    let (hs, _stub) = start_stub().await;
    let hooks = Hooks::new("reload");
    let bridge = start_bridge(&hs, &hooks, |_| {}).await;
    // No file yet: every secret is unknown.
    assert_eq!(post_json(&format!("{bridge}/hooks/abc"), json!({"text": "x"})).await, (404, "no_service".into()));
    let secret = hooks.add("late", "!alerts:hs", None);
    let url = format!("{bridge}/hooks/{secret}");
    assert_eq!(post_json(&url, json!({"text": "x"})).await, (200, "ok".into()));
    // A broken edit keeps the hooks read before.
    let good = std::fs::read_to_string(&hooks.path).unwrap();
    std::fs::write(&hooks.path, "[[hook]\n").unwrap();
    assert_eq!(post_json(&url, json!({"text": "x"})).await, (200, "ok".into()));
    std::fs::write(&hooks.path, good).unwrap();
    let mut file = HooksFile::load(&hooks.path).unwrap();
    file.remove("late").unwrap();
    file.save(&hooks.path).unwrap();
    assert_eq!(post_json(&url, json!({"text": "x"})).await, (404, "no_service".into()));
}
