//! The webhook server: `POST /hooks/{secret}` answered like Slack (`ok`, `invalid_payload`,
//! `no_text`, `no_service`, `rate_limited`, ...), a token bucket per hook, and the message sent
//! through the appservice API as the bridge bot or as a ghost per `username` (registered,
//! display name set, invited by the bot and joined on first use). Each accepted request gets a
//! fresh transaction id, reused by every retry of its PUT, so the homeserver's transaction
//! dedupe absorbs our retries while identical alerts are never merged. A homeserver that stays
//! down is a 503: the sender retries, no message is acknowledged and lost.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use super::hooks::{Hook, HooksFile};
use super::payload::{self, Message};
use crate::import::client::{Client, ClientError, Registration, enc};

/// Everything `ieum-bridge webhook` is started with.
pub struct Config {
    /// Client-server base URL of the homeserver.
    pub homeserver: String,
    pub registration: Registration,
    /// The homeserver's name; asked with `/account/whoami` when not given.
    pub server_name: Option<String>,
    pub hooks_path: PathBuf,
    /// Largest accepted request body (Slack-compatible senders stay far below 64 KiB).
    pub max_body: usize,
    /// Token bucket per hook: sustained messages per second and burst.
    pub rate_per_sec: f64,
    pub burst: f64,
    /// How long one homeserver call is retried (connection errors, 5xx, 429) before a 503.
    pub retry_for: Duration,
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::new(Bridge::new(config)));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// `POST /hooks/{secret}`, `GET /health`; anything else is Slack's 404 `no_service`. Served
/// with the peer's address (`ConnectInfo`), which the log lines carry.
fn router(bridge: Arc<Bridge>) -> Router {
    let limit = bridge.config.max_body;
    Router::new()
        .route("/hooks/{secret}", post(hook))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "no_service") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(bridge)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], body).into_response()
}

/// A token bucket (`burst` tokens, refilled at `rate` per second).
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The hooks file as last read, and what its metadata was (to reload it when it changes).
struct Loaded {
    file: HooksFile,
    stamp: Option<(SystemTime, u64, u64)>,
}

/// The shared state of the server.
struct Bridge {
    config: Config,
    http: reqwest::Client,
    hooks: Mutex<Loaded>,
    buckets: Mutex<HashMap<String, Bucket>>,
    server_name: OnceLock<String>,
    /// Configured room (id or alias) -> room id.
    rooms: Mutex<HashMap<String, String>>,
    /// (user, room id) known to be joined.
    joined: Mutex<HashSet<(String, String)>>,
    /// Ghost -> (display name, avatar) set on its profile.
    profiles: Mutex<HashMap<String, (String, Option<String>)>>,
}

/// Why a message could not be posted; each is one Slack-style answer.
#[derive(Debug)]
enum PostError {
    /// Down, 5xx or 429 for longer than `retry_for`: 503, the sender should retry.
    Unavailable(String),
    /// The room alias does not resolve: 404 `channel_not_found`.
    RoomNotFound(String),
    /// The bot cannot join or invite, a ghost cannot post: 403 `action_prohibited`.
    Forbidden(String),
    /// The event would be too large: 413 `msg_too_long`.
    TooLarge(String),
    /// Any other refusal or a bridge misconfiguration: 502 `homeserver_error`.
    Refused(String),
}

impl PostError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            PostError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "homeserver_unavailable"),
            PostError::RoomNotFound(_) => (StatusCode::NOT_FOUND, "channel_not_found"),
            PostError::Forbidden(_) => (StatusCode::FORBIDDEN, "action_prohibited"),
            PostError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "msg_too_long"),
            PostError::Refused(_) => (StatusCode::BAD_GATEWAY, "homeserver_error"),
        }
    }

    fn detail(&self) -> &str {
        match self {
            PostError::Unavailable(d)
            | PostError::RoomNotFound(d)
            | PostError::Forbidden(d)
            | PostError::TooLarge(d)
            | PostError::Refused(d) => d,
        }
    }

    /// A homeserver error, with what we were doing.
    fn from_client(doing: &str, e: ClientError) -> Self {
        let detail = format!("{doing}: {e}");
        match e {
            // (The client's own text speaks of resuming an import.)
            ClientError::Unreachable { base, secs, last } => PostError::Unavailable(format!(
                "{doing}: the homeserver at {base} did not answer for {secs}s (last error: {last}); answered 503"
            )),
            ClientError::Http { status: 403, .. } => PostError::Forbidden(detail),
            ClientError::Http { status: 413, .. } => PostError::TooLarge(detail),
            ClientError::Http { .. } => PostError::Refused(detail),
        }
    }
}

/// Our content limit, below the spec's 65,536 bytes for a whole event.
const MAX_CONTENT_BYTES: usize = 60_000;

/// `ieumwh.` and 128 random bits: new for every accepted request.
fn new_txn_id() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("the system random source");
    format!("ieumwh.{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Bridge {
    fn new(config: Config) -> Self {
        Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest client"),
            config,
            hooks: Mutex::new(Loaded { file: HooksFile::default(), stamp: None }),
            buckets: Mutex::new(HashMap::new()),
            server_name: OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashSet::new()),
            profiles: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the hooks file (again when its size, time or inode changed: `add` and `remove`
    /// take effect without a restart) and finds the hook of `secret`. A file that no longer
    /// parses keeps the hooks read before it.
    fn hook_for(&self, secret: &str) -> Option<Hook> {
        let path = &self.config.hooks_path;
        let stamp = std::fs::metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), inode)
        });
        let mut loaded = self.hooks.lock().expect("hooks lock");
        if stamp != loaded.stamp || loaded.stamp.is_none() {
            match HooksFile::load(path) {
                Ok(file) => {
                    if loaded.stamp.is_some() || !file.hooks.is_empty() {
                        tracing::info!(hooks = file.hooks.len(), file = %path.display(), "hooks file read");
                    }
                    loaded.file = file;
                }
                Err(e) => tracing::error!("{e} (keeping the {} hooks read before)", loaded.file.hooks.len()),
            }
            loaded.stamp = stamp;
        }
        loaded.file.find(secret).cloned()
    }

    /// Takes a token from the hook's bucket, or says how long until one is there.
    fn take_token(&self, hook: &str) -> Result<(), Duration> {
        let (rate, burst) = (self.config.rate_per_sec, self.config.burst);
        let mut buckets = self.buckets.lock().expect("buckets lock");
        let now = Instant::now();
        let bucket = buckets.entry(hook.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    fn client(&self) -> Client {
        let mut client =
            Client::with_http(self.http.clone(), &self.config.homeserver, &self.config.registration.as_token);
        client.retry_for = self.config.retry_for;
        client
    }

    async fn server_name(&self, client: &mut Client) -> Result<String, PostError> {
        if let Some(name) = self.config.server_name.as_ref().or(self.server_name.get()) {
            return Ok(name.clone());
        }
        let whoami = client
            .call(reqwest::Method::GET, "/_matrix/client/v3/account/whoami", &[], None)
            .await
            .map_err(|e| PostError::from_client("asking the homeserver who the bridge bot is", e))?;
        let user_id = whoami.get("user_id").and_then(Value::as_str).unwrap_or("");
        let name = user_id
            .split_once(':')
            .map(|(_, server)| server.to_owned())
            .ok_or_else(|| PostError::Refused(format!("/account/whoami answered {whoami}")))?;
        Ok(self.server_name.get_or_init(|| name).clone())
    }

    async fn room_id(&self, client: &mut Client, room: &str) -> Result<String, PostError> {
        if room.starts_with('!') {
            return Ok(room.to_owned());
        }
        if let Some(id) = self.rooms.lock().expect("rooms lock").get(room) {
            return Ok(id.clone());
        }
        let path = format!("/_matrix/client/v3/directory/room/{}", enc(room));
        let resolved = match client.call(reqwest::Method::GET, &path, &[], None).await {
            Ok(v) => v,
            Err(ClientError::Http { status: 404, .. }) => {
                return Err(PostError::RoomNotFound(format!("the room alias {room} does not exist")));
            }
            Err(e) => return Err(PostError::from_client(&format!("resolving {room}"), e)),
        };
        let id = resolved
            .get("room_id")
            .and_then(Value::as_str)
            .ok_or_else(|| PostError::Refused(format!("resolving {room}: answered without a room_id")))?
            .to_owned();
        self.rooms.lock().expect("rooms lock").insert(room.to_owned(), id.clone());
        Ok(id)
    }

    /// Registers the ghost (M_USER_IN_USE is fine) and sets its profile, once per process.
    async fn ensure_ghost(
        &self,
        client: &mut Client,
        ghost: &str,
        name: &str,
        avatar: Option<&String>,
    ) -> Result<(), PostError> {
        let want = (name.to_owned(), avatar.cloned());
        if self.profiles.lock().expect("profiles lock").get(ghost) == Some(&want) {
            return Ok(());
        }
        let localpart = ghost[1..].split(':').next().unwrap_or("");
        let body = json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true});
        match client.json(reqwest::Method::POST, "/_matrix/client/v3/register", &[], &body).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => {}
            Err(e) => return Err(PostError::from_client(&format!("registering the ghost {ghost}"), e)),
        }
        let profile = |field: &str| format!("/_matrix/client/v3/profile/{}/{field}", enc(ghost));
        client
            .json(
                reqwest::Method::PUT,
                &profile("displayname"),
                &[("user_id", ghost.to_owned())],
                &json!({"displayname": name}),
            )
            .await
            .map_err(|e| PostError::from_client(&format!("setting the display name of {ghost}"), e))?;
        if let Some(avatar) = avatar {
            client
                .json(
                    reqwest::Method::PUT,
                    &profile("avatar_url"),
                    &[("user_id", ghost.to_owned())],
                    &json!({"avatar_url": avatar}),
                )
                .await
                .map_err(|e| PostError::from_client(&format!("setting the avatar of {ghost}"), e))?;
        }
        self.profiles.lock().expect("profiles lock").insert(ghost.to_owned(), want);
        Ok(())
    }

    /// Joins `user` to the room once: the bot joins (it must be invited, or the room public);
    /// a ghost is invited by the bot first.
    async fn ensure_joined(&self, client: &mut Client, bot: &str, user: &str, room_id: &str) -> Result<(), PostError> {
        let key = (user.to_owned(), room_id.to_owned());
        if self.joined.lock().expect("joined lock").contains(&key) {
            return Ok(());
        }
        if user != bot {
            let invite = client
                .json(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
                    &[("user_id", bot.to_owned())],
                    &json!({"user_id": user}),
                )
                .await;
            match invite {
                // 403: already joined (or not allowed: the join below says so).
                Ok(_) | Err(ClientError::Http { status: 403, .. }) => {}
                Err(e) => return Err(PostError::from_client(&format!("{bot} inviting {user} to {room_id}"), e)),
            }
        }
        client
            .json(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/join/{}", enc(room_id)),
                &[("user_id", user.to_owned())],
                &json!({}),
            )
            .await
            .map_err(|e| {
                let hint = if user == bot { " (invite the bridge bot to the room)" } else { "" };
                PostError::from_client(&format!("{user} joining {room_id}{hint}"), e)
            })?;
        self.joined.lock().expect("joined lock").insert(key);
        Ok(())
    }

    /// Forgets what we believed about a room (after a 403: someone was kicked, an alias moved).
    fn forget_room(&self, room: &str, room_id: &str) {
        self.joined.lock().expect("joined lock").retain(|(_, r)| r != room_id);
        self.rooms.lock().expect("rooms lock").remove(room);
    }

    /// Sends the message; returns the sender and the event id.
    async fn post(&self, hook: &Hook, message: &Message) -> Result<(String, String), PostError> {
        let mut content = json!({
            "msgtype": if hook.notice { "m.notice" } else { "m.text" },
            "body": message.body,
            "format": "org.matrix.custom.html",
            "formatted_body": message.formatted_body,
            // Intentional mentions: only `<!here>` and friends notify, never a name in the text.
            "m.mentions": {},
        });
        if message.mentions_room {
            content["m.mentions"] = json!({"room": true});
        }
        let size = serde_json::to_vec(&content).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_CONTENT_BYTES {
            return Err(PostError::TooLarge(format!(
                "the message is {size} bytes as an event, over {MAX_CONTENT_BYTES}"
            )));
        }
        let mut client = self.client();
        let server_name = self.server_name(&mut client).await?;
        let bot = format!("@{}:{server_name}", self.config.registration.sender_localpart);
        let name = message.username.as_ref().or(hook.display_name.as_ref());
        let sender = match name {
            Some(name) => self.config.registration.ghost("webhook", name, &server_name).map_err(PostError::Refused)?,
            None => bot.clone(),
        };
        let txn_id = new_txn_id();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let room_id = self.room_id(&mut client, &hook.room).await?;
            self.ensure_joined(&mut client, &bot, &bot, &room_id).await?;
            if let Some(name) = name {
                self.ensure_ghost(&mut client, &sender, name, hook.avatar_url.as_ref()).await?;
                self.ensure_joined(&mut client, &bot, &sender, &room_id).await?;
            }
            let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(&room_id), enc(&txn_id));
            match client.json(reqwest::Method::PUT, &path, &[("user_id", sender.clone())], &content).await {
                Ok(v) => {
                    let event_id = v.get("event_id").and_then(Value::as_str).unwrap_or("").to_owned();
                    return Ok((sender, event_id));
                }
                // Our idea of the room was stale (a ghost kicked, the bot left): once more
                // from the start, with the same transaction id.
                Err(ClientError::Http { status: 403, .. }) if attempt == 1 => self.forget_room(&hook.room, &room_id),
                Err(e) => return Err(PostError::from_client(&format!("{sender} sending to {room_id}"), e)),
            }
        }
    }
}

/// `POST /hooks/{secret}`: a Slack incoming-webhook message into the hook's room.
async fn hook(
    State(bridge): State<Arc<Bridge>>,
    Path(secret): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // The secret is never logged: hooks are named by their `name`.
    let Some(hook) = bridge.hook_for(&secret) else {
        tracing::warn!(%peer, status = 404, "webhook refused: no_service (unknown secret)");
        return text(StatusCode::NOT_FOUND, "no_service");
    };
    let name = hook.name.as_str();
    if let Err(wait) = bridge.take_token(name) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(hook = name, %peer, status = 429, retry_after = secs, "webhook refused: rate_limited");
        let mut response = text(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::warn!(hook = name, %peer, status = 413, limit = bridge.config.max_body, "webhook refused: request_too_large");
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
        }
        Err(rejection) => {
            tracing::warn!(hook = name, %peer, status = 400, "webhook refused: invalid_payload ({rejection})");
            return text(StatusCode::BAD_REQUEST, "invalid_payload");
        }
    };
    let message = match payload::parse(content_type.as_deref(), &body) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(hook = name, %peer, status = 400, "webhook refused: {e}");
            return text(StatusCode::BAD_REQUEST, e.slack_code());
        }
    };
    // Each homeserver call retries for `retry_for`; the whole post is bounded too, so the sender
    // gets an answer (a 503 it will retry) while it still waits.
    let deadline = bridge.config.retry_for * 3 + Duration::from_secs(5);
    let result = match tokio::time::timeout(deadline, bridge.post(&hook, &message)).await {
        Ok(result) => result,
        Err(_) => Err(PostError::Unavailable(format!("no answer from the homeserver within {}s", deadline.as_secs()))),
    };
    match result {
        Ok((sender, event_id)) => {
            tracing::info!(hook = name, %peer, status = 200, %sender, %event_id, "webhook message posted");
            text(StatusCode::OK, "ok")
        }
        Err(e) => {
            let (status, code) = e.answer();
            tracing::error!(hook = name, %peer, status = status.as_u16(), "webhook refused: {code}: {}", e.detail());
            text(status, code)
        }
    }
}
