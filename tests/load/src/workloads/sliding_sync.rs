//! W9 sliding sync first page: one user in R rooms (one message each); times the first
//! simplified sliding sync response (MSC4186) of a newly logged-in device asking, as
//! Element X does on first start, for the 20 most recent rooms with their names and latest
//! event. Each repeat logs in a new device, so no connection state can answer from memory.
//! The response must list every room in the count and carry 20 rooms with a name and a
//! non-empty timeline.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, check_deadline, initial_sync::create_rooms, retry};
use crate::{
    client::{Error, Homeserver, PASSWORD, Result},
    report::{Better, Workload},
    stats::{ms, summarize},
};

pub const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Rooms in the first page (Element X's first range is 0..=19).
const PAGE: usize = 20;

pub struct Opts {
    pub rooms: usize,
    pub repeats: usize,
}

pub async fn run(ctx: &Ctx, opts: &Opts) -> Workload {
    let mut w = Workload::new("W9");
    w.param("rooms", opts.rooms);
    w.param("warm repeats", opts.repeats);
    if let Err(e) = measure(ctx, opts, &mut w).await {
        w.fail(e);
    }
    w
}

/// The body of Element X's first room-list request (matrix-sdk-ui 0.18), trimmed to what
/// a server computes: the page, the state its room list shows, one timeline event.
pub fn first_request() -> Value {
    json!({
        "conn_id": "room-list",
        "lists": {
            "all_rooms": {
                "ranges": [[0, PAGE - 1]],
                "required_state": [
                    ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                    ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
                    ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                    ["m.room.join_rules", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
                    ["m.room.tombstone", ""]
                ],
                "timeline_limit": 1,
                "filters": { "not_room_types": ["m.space"] }
            }
        },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true }
        }
    })
}

/// One first request: its duration and size. Fails unless the count covers `rooms` and
/// the page has 20 rooms, each with a name and a timeline event.
async fn timed_first_page(hs: &Homeserver, token: &str, rooms: usize) -> Result<(f64, usize)> {
    let body = first_request();
    let started = Instant::now();
    let reply =
        hs.request(reqwest::Method::POST, &format!("{PATH}?timeout=0"), Some(token), Some(&body), hs.timeout).await?;
    let elapsed = ms(started.elapsed());
    let json = reply.json()?;
    let count = json["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0) as usize;
    let page = json["rooms"].as_object().map(|r| r.values().collect::<Vec<_>>()).unwrap_or_default();
    let complete = page
        .iter()
        .filter(|room| {
            room["name"].as_str().is_some_and(|n| !n.is_empty())
                && room["timeline"].as_array().is_some_and(|t| !t.is_empty())
        })
        .count();
    let want = rooms.min(PAGE);
    if count < rooms || page.len() < want || complete < want {
        return Err(Error::msg(format!(
            "incomplete: count {count} (expected {rooms}), {} rooms in the page, {complete} with a name and an \
             event (expected {want})",
            page.len()
        )));
    }
    Ok((elapsed, reply.body.len()))
}

async fn measure(ctx: &Ctx, opts: &Opts, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let hs = ctx.hs.clone();
    let localpart = ctx.localpart("w9", 0);
    let account = retry("register the W9 user", || hs.register(&localpart, Some(PASSWORD))).await?;
    create_rooms(ctx, &hs, &account.token, "W9", opts.rooms, 1, deadline, w).await?;

    // Unsupported (404/400 M_UNRECOGNIZED) is a result, not a failure of the run.
    if let Err(e) = timed_first_page(&hs, &account.token, opts.rooms).await {
        if matches!(e.status, Some(404 | 400 | 405)) && e.errcode.as_deref() == Some("M_UNRECOGNIZED") {
            w.status = format!("{}: the server does not offer simplified sliding sync", crate::report::NOT_RUN);
            return Ok(());
        }
        return Err(e);
    }
    let mut times = Vec::with_capacity(opts.repeats);
    let mut size = 0;
    for _ in 0..opts.repeats {
        check_deadline(deadline, "W9 first pages")?;
        let device = retry("W9 login", || hs.login(&account.user_id, PASSWORD)).await?;
        match timed_first_page(&hs, &device.token, opts.rooms).await {
            Ok((elapsed, bytes)) => {
                times.push(elapsed);
                size = bytes;
            }
            Err(e) => w.error(e.key()),
        }
        // Let the server settle between devices (background work a login starts).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match summarize(times) {
        Some(s) => {
            w.metric("first page p50", s.p50, "ms", Better::Lower);
            w.metric("first page min", s.min, "ms", Better::Lower);
            w.metric("first page max", s.max, "ms", Better::Lower);
            w.metric("response size", size as f64 / 1024.0, "KiB", Better::Lower);
        }
        None => w.fail("no first page completed"),
    }
    Ok(())
}
