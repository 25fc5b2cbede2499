//! W2 fan-out: K clients long-poll /sync in one room; one sender sends messages one at a
//! time; reports the time from the start of each send until each client's /sync response
//! carrying it has arrived (p50/p99 over all client x message pairs), and until the last
//! client has it (p50/p99 over messages).
//!
//! All clients share one connection pool (one HTTP/1.1 connection per parked long-poll).
//! Before each send the coordinator waits until every client has had its long-poll in
//! flight for `settle`, then makes one /versions round trip so the server has read them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use super::{Ctx, check_deadline, join_many, parallel, register_many, retry};
use crate::{
    client::{Error, Homeserver, Result, enc},
    poll::{PollConn, SyncBody},
    report::Workload,
    stats::{ms, summarize},
};

pub struct Opts {
    pub clients: usize,
    pub messages: usize,
    /// How long every long-poll must have been in flight before a message is sent.
    pub settle: Duration,
    /// The `timeout` of each long-poll.
    pub poll_timeout: Duration,
    /// How long to wait for every client to receive one message.
    pub message_timeout: Duration,
    /// Print each message's delivery spread to stderr.
    pub per_message: bool,
}

pub async fn run(ctx: &Ctx, opts: &Opts) -> Workload {
    let mut w = Workload::new("W2");
    w.param("clients", opts.clients);
    w.param("messages", opts.messages);
    if let Err(e) = measure(ctx, opts, &mut w).await {
        w.fail(e);
    }
    w
}

/// A sync filter that keeps responses small and only wakes for timeline events of the room.
/// Each client uploads it once and syncs with its id, as Element does.
fn filter(room_id: &str) -> Value {
    serde_json::json!({
        "room": {
            "rooms": [room_id],
            "timeline": { "limit": 50 },
            "state": { "lazy_load_members": true },
            "ephemeral": { "not_types": ["*"] },
            "account_data": { "not_types": ["*"] },
        },
        "presence": { "not_types": ["*"] },
        "account_data": { "not_types": ["*"] },
    })
}

struct Shared {
    epoch: Instant,
    /// Per client: 1 + nanoseconds since `epoch` when its current long-poll was sent; 0
    /// while no long-poll is in flight.
    in_flight_since: Vec<AtomicU64>,
    stop: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How many clients have had a long-poll in flight for at least `settle`.
    fn parked(&self, settle: Duration) -> usize {
        let now = self.now_ns();
        let settle = settle.as_nanos() as u64;
        self.in_flight_since
            .iter()
            .filter(|s| {
                let since = s.load(Ordering::Acquire);
                since != 0 && now.saturating_sub(since - 1) >= settle
            })
            .count()
    }
}

/// Message indexes carried by the marked timeline events of `room_id` in a sync response.
fn marked(body: &SyncBody, room_id: &str, marker: &str) -> Vec<usize> {
    body.rooms.join.get(room_id).map_or_else(Vec::new, |room| {
        room.timeline
            .events
            .iter()
            .filter_map(|e| e.content.body.as_deref()?.strip_prefix(marker)?.parse().ok())
            .collect()
    })
}

/// `GET /sync` for the fan-out's clients: the stored filter, presence off.
fn sync_path(since: Option<&str>, timeout_ms: &str, filter_id: &str) -> String {
    let since = since.map(|since| format!("since={}&", enc(since))).unwrap_or_default();
    format!("/_matrix/client/v3/sync?{since}timeout={timeout_ms}&filter={}&set_presence=offline", enc(filter_id))
}

/// The parts of a 2xx /sync answer the fan-out reads; any other status is its error.
fn sync_body(status: u16, body: &[u8]) -> Result<SyncBody> {
    if !(200..300).contains(&status) {
        return Err(Error::from_status(status, body));
    }
    serde_json::from_slice(body).map_err(|e| Error::msg(format!("body: response is not JSON: {e}")))
}

/// One /sync: through the client's own connection when it has one (see poll.rs), else
/// through the shared client. Returns the answer and when it had fully arrived.
async fn sync_once(
    hs: &Homeserver,
    conn: Option<&mut PollConn>,
    token: &str,
    path: &str,
    timeout: Duration,
) -> Result<(SyncBody, Instant)> {
    match conn {
        Some(conn) => {
            let answer = conn.get(path, token, timeout).await?;
            let arrived = Instant::now();
            Ok((sync_body(answer.status, answer.body)?, arrived))
        }
        None => {
            let reply = hs.get(path, Some(token), timeout).await?;
            let arrived = Instant::now();
            Ok((sync_body(200, &reply.body)?, arrived))
        }
    }
}

/// A client's initial sync, on the connection it will then long-poll on, as a real client's
/// first /sync and its long-polls share one: the measured answers then carry no first-use
/// costs of a connection (buffers allocated on either side). Returns `next_batch` and the
/// connection (None when the server is reached over HTTPS, through the shared client).
async fn initial_sync(
    hs: &Homeserver,
    token: &str,
    room_id: &str,
    filter_id: &str,
) -> Result<(String, Option<PollConn>)> {
    let mut conn = PollConn::for_base(hs.base());
    let (body, _) = sync_once(hs, conn.as_mut(), token, &sync_path(None, "0", filter_id), hs.timeout).await?;
    if !body.rooms.join.contains_key(room_id) {
        return Err(Error::msg("initial sync: the joined room is missing from rooms.join"));
    }
    let since = body.next_batch.ok_or_else(|| Error::msg("initial sync: no next_batch"))?;
    Ok((since, conn))
}

async fn measure(ctx: &Ctx, opts: &Opts, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let k = opts.clients.max(1);
    let hs = ctx.hs.clone();
    let sender = register_many(ctx, "w2sender", 1).await?.remove(0);
    let room_id = retry("create the W2 room", || hs.create_room(&sender.token, "W2 fan-out", true)).await?;
    let clients = register_many(ctx, "w2", k).await?;
    check_deadline(deadline, "W2 registration")?;
    join_many(ctx, &clients, &room_id).await?;
    check_deadline(deadline, "W2 joins")?;
    let filter = Arc::new(filter(&room_id));
    let room: Arc<str> = room_id.as_str().into();
    let tokens: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.token.clone()).collect());
    let accounts = Arc::new(clients);
    // Per client: its filter id, the next_batch of its initial sync and the connection that
    // sync went through (None over HTTPS).
    let setups: Vec<(String, String, Option<PollConn>)> = {
        let (hs, filter, room, accounts) = (hs.clone(), filter.clone(), room.clone(), accounts.clone());
        parallel(k, ctx.setup_concurrency, move |i| {
            let (hs, filter, room, accounts) = (hs.clone(), filter.clone(), room.clone(), accounts.clone());
            async move {
                let account = &accounts[i];
                let filter_id = retry("W2 filter upload", || hs.create_filter(account, &filter)).await?;
                let (since, conn) =
                    retry("W2 initial sync", || initial_sync(&hs, &account.token, &room, &filter_id)).await?;
                Ok((filter_id, since, conn))
            }
        })
        .await?
    };
    check_deadline(deadline, "W2 initial syncs")?;

    let marker: Arc<str> = format!("W2 {} probe #", ctx.run_id).into();
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        in_flight_since: (0..k).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        errors: Mutex::new(BTreeMap::new()),
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let poll_ms = opts.poll_timeout.as_millis().to_string();
    let mut tasks = Vec::with_capacity(k);
    for (i, (filter, mut since, mut conn)) in setups.into_iter().enumerate() {
        let (hs, shared, tx, tokens, room, marker, poll_ms) =
            (hs.clone(), shared.clone(), tx.clone(), tokens.clone(), room.clone(), marker.clone(), poll_ms.clone());
        let request_timeout = opts.poll_timeout + Duration::from_secs(30);
        tasks.push(tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                shared.in_flight_since[i].store(shared.now_ns() + 1, Ordering::Release);
                let path = sync_path(Some(&since), &poll_ms, &filter);
                let parsed = sync_once(&hs, conn.as_mut(), &tokens[i], &path, request_timeout).await;
                shared.in_flight_since[i].store(0, Ordering::Release);
                match parsed {
                    Ok((body, arrived)) => {
                        for index in marked(&body, &room, &marker) {
                            let _ = tx.send((index, i, arrived));
                        }
                        match body.next_batch {
                            Some(next) => since = next,
                            None => {
                                *shared
                                    .errors
                                    .lock()
                                    .expect("errors")
                                    .entry("sync without next_batch".into())
                                    .or_default() += 1;
                            }
                        }
                    }
                    Err(e) => {
                        *shared.errors.lock().expect("errors").entry(format!("sync {}", e.key())).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    drop(tx);

    let mut delivery = Vec::with_capacity(k * opts.messages);
    let mut last_client = Vec::with_capacity(opts.messages);
    let mut send_latency = Vec::with_capacity(opts.messages);
    let mut not_parked_total = 0usize;
    let mut sent = 0usize;
    for n in 0..opts.messages {
        if Instant::now() >= deadline {
            w.notes.push(format!("stopped at the time limit after {n} of {} messages", opts.messages));
            break;
        }
        // Every client parked: in flight for `settle` (longer before the first message,
        // when all K long-polls arrive at once), then one round trip through the server.
        let settle = if n == 0 { opts.settle * 5 } else { opts.settle };
        let park_deadline = (Instant::now() + Duration::from_secs(60)).min(deadline);
        while shared.parked(settle) < k && Instant::now() < park_deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let parked = shared.parked(settle);
        if parked < k {
            not_parked_total += k - parked;
        }
        let _ = hs.versions(Duration::from_secs(10)).await;
        // Drop receipts of earlier messages that arrived after their time was up.
        while rx.try_recv().is_ok() {}

        let started = Instant::now();
        let started_wall = std::time::SystemTime::now();
        let txn = format!("{}-w2-{n}", ctx.run_id);
        match hs.send_text(&sender.token, &room, &txn, &format!("{marker}{n}")).await {
            Ok(_) => send_latency.push(ms(started.elapsed())),
            Err(e) => {
                w.error(format!("send {}", e.key()));
                continue;
            }
        }
        sent += 1;
        let mut got = vec![false; k];
        let mut count = 0;
        let mut latest = 0.0f64;
        let until = (started + opts.message_timeout).min(deadline);
        while count < k {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((index, client, arrived))) if index == n && !got[client] => {
                    got[client] = true;
                    count += 1;
                    let latency = ms(arrived.saturating_duration_since(started));
                    latest = latest.max(latency);
                    delivery.push(latency);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if opts.per_message && count > 0 {
            let mut mine: Vec<f64> = delivery[delivery.len() - count..].to_vec();
            mine.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| mine[((mine.len() - 1) as f64 * q) as usize];
            // The wall-clock start, to line a slow message up with the server's logs.
            let at_ms = started_wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            eprintln!(
                "msg {n} at {at_ms}: send {:.1} first {:.1} p10 {:.1} p25 {:.1} p50 {:.1} p75 {:.1} p90 {:.1} p99 {:.1} last {:.1}",
                send_latency.last().copied().unwrap_or(0.0),
                at(0.0),
                at(0.1),
                at(0.25),
                at(0.5),
                at(0.75),
                at(0.9),
                at(0.99),
                at(1.0)
            );
        }
        if count < k {
            for _ in count..k {
                w.error(format!("not delivered within {:.0} s", opts.message_timeout.as_secs_f64()));
            }
        } else {
            last_client.push(latest);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    for (key, count) in std::mem::take(&mut *shared.errors.lock().expect("errors")) {
        *w.errors.entry(key).or_default() += count;
    }
    if not_parked_total > 0 {
        w.notes
            .push(format!("{not_parked_total} client-sends went out with a client not yet parked for the settle time"));
    }
    let complete = last_client.len();
    let summary = summarize(delivery);
    w.latency("delivery", summary);
    if let Some(s) = summary {
        w.metric("delivery max", s.max, "ms", crate::report::Better::Lower);
    }
    w.latency("all-clients", summarize(last_client));
    w.latency("send", summarize(send_latency));
    w.notes.push(format!("{sent} messages sent, {complete} reached all {k} clients"));
    if sent == 0 {
        w.fail("no message was sent successfully");
    }
    Ok(())
}
