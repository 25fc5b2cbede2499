//! W3 initial sync: one user in R rooms with M messages each; times a complete initial
//! /sync (no filter, as a fresh client does). Warm: repeated on the running server, each
//! from a newly logged-in device (so no server-side response cache can answer). Cold: one
//! initial sync with the saved account right after the script restarted the server.
//!
//! The W3 account is saved to a state file so the cold measurement and W7's recovery
//! measurement (after SIGKILL) can use it from a separate `ieum-load` invocation.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::{Ctx, check_deadline, parallel, retry};
use crate::{
    client::{Error, Homeserver, PASSWORD, Result},
    report::{Better, Workload},
    stats::{ms, summarize},
};

pub struct Opts {
    pub rooms: usize,
    pub messages: usize,
    pub repeats: usize,
}

/// The W3 account, for later invocations (cold W3, W7 recovery).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedUser {
    pub url: String,
    pub user_id: String,
    pub password: String,
    pub token: String,
    /// `next_batch` of the last sync, for an incremental /sync after a restart.
    pub since: String,
    pub rooms: usize,
}

impl SavedUser {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: not a W3 state file: {e}", path.display())))
    }

    fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::msg(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }
}

pub async fn run(ctx: &Ctx, opts: &Opts, state: Option<&Path>) -> Workload {
    let mut w = Workload::new("W3");
    w.param("rooms", opts.rooms);
    w.param("messages per room", opts.messages);
    w.param("warm repeats", opts.repeats);
    if let Err(e) = measure(ctx, opts, state, &mut w).await {
        w.fail(e);
    }
    w
}

/// One initial sync: its duration, its size, and its `next_batch`. Fails unless every one
/// of the `rooms` rooms is in `rooms.join` with a non-empty timeline.
pub async fn timed_initial_sync(
    hs: &Homeserver,
    token: &str,
    rooms: usize,
    timeout: Duration,
) -> Result<(f64, usize, String)> {
    let started = Instant::now();
    let reply = hs.sync(token, &[("timeout", "0")], timeout).await?;
    let elapsed = ms(started.elapsed());
    let body: Value = reply.json()?;
    let joined = body["rooms"]["join"].as_object().map(|rooms| {
        let with_timeline = rooms
            .values()
            .filter(|room| room["timeline"]["events"].as_array().is_some_and(|events| !events.is_empty()))
            .count();
        (rooms.len(), with_timeline)
    });
    match joined {
        Some((all, with_timeline)) if all >= rooms && with_timeline >= rooms => {}
        Some((all, with_timeline)) => {
            return Err(Error::msg(format!(
                "incomplete: initial sync listed {all} joined rooms ({with_timeline} with a timeline), expected {rooms}"
            )));
        }
        None => return Err(Error::msg("incomplete: initial sync has no rooms.join")),
    }
    let since = body["next_batch"].as_str().ok_or_else(|| Error::msg("initial sync: no next_batch"))?.to_owned();
    Ok((elapsed, reply.body.len(), since))
}

async fn measure(ctx: &Ctx, opts: &Opts, state: Option<&Path>, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let hs = ctx.hs.clone();
    let localpart = ctx.localpart("w3", 0);
    let account = retry("register the W3 user", || hs.register(&localpart, Some(PASSWORD))).await?;

    create_rooms(ctx, &hs, &account.token, "W3", opts.rooms, opts.messages, deadline, w).await?;

    // One unmeasured pass (the same work a client did just after setup), then the repeats.
    let sync_timeout = hs.timeout;
    let (_, _, mut since) = timed_initial_sync(&hs, &account.token, opts.rooms, sync_timeout).await?;
    let mut times = Vec::with_capacity(opts.repeats);
    let mut size = 0;
    for _ in 0..opts.repeats {
        check_deadline(deadline, "W3 warm syncs")?;
        let device = retry("W3 login", || hs.login(&account.user_id, PASSWORD)).await?;
        match timed_initial_sync(&hs, &device.token, opts.rooms, sync_timeout).await {
            Ok((elapsed, bytes, next)) => {
                times.push(elapsed);
                size = bytes;
                since = next;
            }
            Err(e) => w.error(e.key()),
        }
    }
    let summary = summarize(times);
    if let Some(s) = summary {
        w.metric("warm p50", s.p50, "ms", Better::Lower);
        w.metric("warm min", s.min, "ms", Better::Lower);
        w.metric("warm max", s.max, "ms", Better::Lower);
        w.metric("response size", size as f64 / 1024.0, "KiB", Better::Lower);
    } else {
        w.fail("no warm initial sync completed");
    }
    if let Some(path) = state {
        SavedUser {
            url: hs.base().to_owned(),
            user_id: account.user_id.clone(),
            password: PASSWORD.to_owned(),
            token: account.token.clone(),
            since,
            rooms: opts.rooms,
        }
        .write(path)?;
    }
    Ok(())
}

/// Cold W3: one initial sync with the saved account (the script restarted the server).
pub async fn cold(hs: &Homeserver, state: &Path) -> Workload {
    let mut w = Workload::new("W3");
    let result = async {
        let saved = SavedUser::read(state)?;
        timed_initial_sync(hs, &saved.token, saved.rooms, hs.timeout).await
    }
    .await;
    match result {
        Ok((elapsed, _, _)) => w.metric("cold", elapsed, "ms", Better::Lower),
        Err(e) => w.fail(format!("cold initial sync: {e}")),
    }
    w
}

/// Setup shared by W3 and W9: the user of `token` creates `rooms` rooms named
/// "{tag} room {r}" and sends `messages` messages into each (setup_concurrency at a time).
#[allow(clippy::too_many_arguments)]
pub async fn create_rooms(
    ctx: &Ctx,
    hs: &Arc<Homeserver>,
    token: &str,
    tag: &'static str,
    rooms: usize,
    messages: usize,
    deadline: Instant,
    w: &mut Workload,
) -> Result<()> {
    let token: Arc<str> = token.into();
    let run_id = ctx.run_id.clone();
    let setup_hs = hs.clone();
    let room_in_use = Arc::new(AtomicU64::new(0));
    let in_use = room_in_use.clone();
    parallel(rooms, ctx.setup_concurrency, move |r| {
        let (hs, token, run_id, in_use) = (setup_hs.clone(), token.clone(), run_id.clone(), in_use.clone());
        async move {
            check_deadline(deadline, "room setup")?;
            let name = format!("{tag} room {r}");
            let mut attempt = 0;
            let room = loop {
                match retry("create a room", || hs.create_room(&token, &name, false)).await {
                    // Two createRoom calls of one user in the same millisecond can produce
                    // the same create event, hence the same room id (room version 12); a
                    // server may refuse the second. Counted and reported, then retried.
                    Err(e) if e.errcode.as_deref() == Some("M_ROOM_IN_USE") && attempt < 5 => {
                        in_use.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    other => break other?,
                }
            };
            for m in 0..messages {
                let txn = format!("{run_id}-{tag}-{r}-{m}");
                let text = format!("{tag} room {r} message {m}");
                retry("setup send", || hs.send_text(&token, &room, &txn, &text)).await?;
            }
            Ok(())
        }
    })
    .await?;
    check_deadline(deadline, "room setup")?;
    let refused = room_in_use.load(Ordering::Relaxed);
    if refused > 0 {
        w.notes.push(format!(
            "setup: {refused} concurrent createRoom calls were refused with M_ROOM_IN_USE (same-millisecond \
             create events of one user give the same room id) and retried"
        ));
    }
    Ok(())
}
