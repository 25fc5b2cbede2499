//! W8 appservice import: the legacy-import path of a bridge. An appservice (its
//! registration given to the server by scripts/bench) registers ghosts with
//! m.login.application_service, puts them in one room, then sends N messages as those
//! ghosts with `?user_id=` and `?ts=` (original timestamps, increasing), a fixed number in
//! flight; reports messages/second and per-request latency.
//!
//! The registration's `url` points at a listener run here ([`AppserviceListener`]): it
//! answers every pushed transaction 200 `{}`, as a bridge does, so the server pushes the
//! imported events exactly as in production. The workload also reports how long after the
//! last send the server had pushed every imported message to it.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{any, put},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, parallel, retry};
use crate::{
    client::{Error, Homeserver, Result, enc},
    report::{Better, Workload},
    stats::{ms, summarize},
};

/// 2020-01-01T00:00:00Z: the imported history starts here, one message a second.
const HISTORY_START_MS: u64 = 1_577_836_800_000;

pub struct Opts {
    pub messages: usize,
    pub ghosts: usize,
    pub concurrency: usize,
    /// Length of each message body in bytes (at least the message's own label).
    pub body_bytes: usize,
    /// The registration's as_token.
    pub as_token: String,
    /// How long to wait, after the last send, for the server to push every message.
    pub push_timeout: Duration,
}

/// What the appservice has been pushed: the event ids of imported messages (a retried
/// transaction repeats them), and when the last new one arrived.
#[derive(Default)]
struct Pushed {
    events: HashSet<String>,
    last_at: Option<Instant>,
    transactions: usize,
}

/// The appservice's own HTTP endpoint (the registration's `url`): PUT
/// /_matrix/app/v1/transactions/{txnId} (and the legacy unprefixed path) answered 200 `{}`;
/// user and room-alias queries answered 404 (every ghost is registered up front); anything
/// else 200 `{}`.
#[derive(Clone, Default)]
pub struct AppserviceListener {
    /// Only messages whose body starts with this marker are counted.
    marker: Arc<Mutex<String>>,
    pushed: Arc<Mutex<Pushed>>,
}

impl AppserviceListener {
    /// Binds `addr` and serves in the background for the rest of the process.
    pub async fn start(addr: SocketAddr) -> Result<Self> {
        let listener = Self::default();
        let router = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .route("/transactions/{txn}", put(transaction))
            .route("/_matrix/app/v1/users/{user}", any(not_found))
            .route("/_matrix/app/v1/rooms/{alias}", any(not_found))
            .fallback(any(|| async { Json(json!({})) }))
            .with_state(listener.clone());
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::msg(format!("appservice listener: cannot bind {addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, router).await {
                eprintln!("ieum-load: appservice listener stopped: {e}");
            }
        });
        Ok(listener)
    }

    fn expect(&self, marker: &str) {
        *self.marker.lock().expect("marker") = marker.to_owned();
        *self.pushed.lock().expect("pushed") = Pushed::default();
    }

    fn snapshot(&self) -> (usize, Option<Instant>, usize) {
        let pushed = self.pushed.lock().expect("pushed");
        (pushed.events.len(), pushed.last_at, pushed.transactions)
    }
}

async fn transaction(
    State(listener): State<AppserviceListener>,
    Path(_txn): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let marker = listener.marker.lock().expect("marker").clone();
    let mut pushed = listener.pushed.lock().expect("pushed");
    pushed.transactions += 1;
    for event in body["events"].as_array().into_iter().flatten() {
        let imported = !marker.is_empty()
            && event["type"] == "m.room.message"
            && event["content"]["body"].as_str().is_some_and(|b| b.starts_with(&marker));
        if imported
            && let Some(id) = event["event_id"].as_str()
            && pushed.events.insert(id.to_owned())
        {
            pushed.last_at = Some(Instant::now());
        }
    }
    Json(json!({}))
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND", "error": "ieum-load: no such user or alias" })))
}

pub async fn run(ctx: &Ctx, opts: &Opts, listener: Option<&AppserviceListener>) -> Workload {
    let mut w = Workload::new("W8");
    w.param("messages", opts.messages);
    w.param("ghosts", opts.ghosts);
    w.param("in flight", opts.concurrency);
    w.param("body bytes", opts.body_bytes);
    if let Err(e) = measure(ctx, opts, listener, &mut w).await {
        w.fail(e);
    }
    w
}

/// The appservice's view of the client API: the as_token, masquerading with `?user_id=`.
fn as_path(path: &str, user_id: Option<&str>, ts: Option<u64>) -> String {
    let mut query = Vec::new();
    if let Some(user_id) = user_id {
        query.push(format!("user_id={}", enc(user_id)));
    }
    if let Some(ts) = ts {
        query.push(format!("ts={ts}"));
    }
    if query.is_empty() { path.to_owned() } else { format!("{path}?{}", query.join("&")) }
}

/// `PUT /rooms/{room}/send/m.room.message/{txn}?user_id={ghost}&ts={ts}` with the as_token.
async fn send_as(hs: &Homeserver, token: &str, room: &str, ghost: &str, txn: &str, ts: u64, text: &str) -> Result<()> {
    let path = as_path(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(room), enc(txn)),
        Some(ghost),
        Some(ts),
    );
    let body = json!({ "msgtype": "m.text", "body": text });
    hs.request(reqwest::Method::PUT, &path, Some(token), Some(&body), hs.timeout).await.map(|_| ())
}

async fn measure(ctx: &Ctx, opts: &Opts, listener: Option<&AppserviceListener>, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let hs = ctx.hs.clone();
    let token: Arc<str> = opts.as_token.as_str().into();
    // Ghost localparts fall in the registration's exclusive namespace `@w8_.*`.
    let names: Arc<Vec<String>> = Arc::new((0..opts.ghosts.max(1)).map(|i| format!("w8_{}_{i}", ctx.run_id)).collect());
    let ghosts: Vec<String> = {
        let (hs, token, names) = (hs.clone(), token.clone(), names.clone());
        parallel(names.len(), ctx.setup_concurrency, move |i| {
            let (hs, token, names) = (hs.clone(), token.clone(), names.clone());
            async move {
                let body = json!({
                    "type": "m.login.application_service",
                    "username": names[i],
                    "inhibit_login": true,
                });
                let reply = retry(&format!("register ghost {}", names[i]), || {
                    hs.request(
                        reqwest::Method::POST,
                        "/_matrix/client/v3/register",
                        Some(&token),
                        Some(&body),
                        hs.timeout,
                    )
                })
                .await?;
                reply.json()?["user_id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::msg("body: register answered without user_id"))
            }
        })
        .await?
    };

    // The room: created by the appservice's sender, joined by every ghost.
    let create = json!({ "preset": "public_chat", "name": "W8 import" });
    let reply = retry("create the W8 room", || {
        hs.request(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(&token), Some(&create), hs.timeout)
    })
    .await?;
    let room_id: Arc<str> = reply.json()?["room_id"]
        .as_str()
        .ok_or_else(|| Error::msg("body: createRoom answered without room_id"))?
        .into();
    {
        let (hs, token, room, ghosts) = (hs.clone(), token.clone(), room_id.clone(), Arc::new(ghosts.clone()));
        parallel(ghosts.len(), ctx.setup_concurrency, move |i| {
            let (hs, token, room, ghosts) = (hs.clone(), token.clone(), room.clone(), ghosts.clone());
            async move {
                let path = as_path(&format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&ghosts[i]), None);
                let body = json!({});
                retry("ghost join", || hs.request(reqwest::Method::POST, &path, Some(&token), Some(&body), hs.timeout))
                    .await
                    .map(|_| ())
            }
        })
        .await?;
    }

    let marker = format!("W8 {} ", ctx.run_id);
    let concurrency = opts.concurrency.max(1);

    // One unmeasured send per connection in flight, dated just before the history (and
    // without the marker: the push count is of measured messages only).
    for c in 0..concurrency {
        let txn = format!("{}-w8warm-{c}", ctx.run_id);
        let ghost = &ghosts[c % ghosts.len()];
        retry("W8 warm-up send", || send_as(&hs, &token, &room_id, ghost, &txn, HISTORY_START_MS - 1000, "warm-up"))
            .await?;
    }
    if let Some(listener) = listener {
        listener.expect(&marker);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let ghosts = Arc::new(ghosts);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, ghosts, run_id) = (next.clone(), ghosts.clone(), ctx.run_id.clone());
        let (hs, token, room, marker) = (hs.clone(), token.clone(), room_id.clone(), marker.clone());
        let (messages, body_bytes) = (opts.messages, opts.body_bytes);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut stopped = false;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    break;
                }
                if Instant::now() >= deadline {
                    stopped = true;
                    break;
                }
                let mut text = format!("{marker}message {i}");
                while text.len() < body_bytes {
                    text.push('x');
                }
                let (ghost, txn, ts) =
                    (&ghosts[i % ghosts.len()], format!("{run_id}-w8-{i}"), HISTORY_START_MS + i as u64 * 1000);
                let begun = Instant::now();
                match send_as(&hs, &token, &room, ghost, &txn, ts, &text).await {
                    Ok(()) => latencies.push(ms(begun.elapsed())),
                    Err(e) => errors.push(e.key()),
                }
            }
            (latencies, errors, stopped)
        }));
    }
    let mut latencies = Vec::with_capacity(opts.messages);
    let mut stopped = false;
    for task in tasks {
        let (mine, errors, stop) = task.await.map_err(|e| Error::msg(format!("task: {e}")))?;
        latencies.extend(mine);
        for error in errors {
            w.error(error);
        }
        stopped |= stop;
    }
    let sent_at = Instant::now();
    let elapsed = sent_at - started;
    let ok = latencies.len();
    w.metric("throughput", ok as f64 / elapsed.as_secs_f64(), "msg/s", Better::Higher);
    w.latency("send", summarize(latencies));
    w.notes.push(format!("{ok} messages in {:.2} s", elapsed.as_secs_f64()));
    if stopped {
        w.notes.push(format!("stopped at the time limit after {ok} of {} messages", opts.messages));
    }
    if ok == 0 {
        w.fail("no message was sent successfully");
        return Ok(());
    }

    // Every imported message must also reach the appservice (the server's transactions).
    match listener {
        None => w.notes.push("no appservice listener: pushes not measured".to_owned()),
        Some(listener) => {
            let give_up = sent_at + opts.push_timeout;
            loop {
                let (count, last_at, transactions) = listener.snapshot();
                if count >= ok {
                    let lag = last_at.map_or(0.0, |at| ms(at.saturating_duration_since(sent_at)));
                    w.metric("pushed after last send", lag, "ms", Better::Lower);
                    w.notes.push(format!("all {ok} messages pushed to the appservice in {transactions} transactions"));
                    break;
                }
                if Instant::now() >= give_up {
                    w.notes.push(format!(
                        "only {count} of {ok} messages pushed to the appservice {:.0} s after the last send",
                        opts.push_timeout.as_secs_f64()
                    ));
                    *w.errors.entry("not pushed".to_owned()).or_default() += (ok - count) as u64;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok(())
}
