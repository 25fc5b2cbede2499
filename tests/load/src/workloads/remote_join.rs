//! W4 remote join: the server under test joins, through a local user, a room hosted by
//! the [`Peer`] with M members (create, power levels, join rules, history visibility and M
//! joins, signed by the peer). The peer answers make_join and send_join v2 with the full
//! state (`members_omitted: false`, whatever the joining server asks) and whatever the
//! server asks back. Time to a usable room: from just before POST /join (`server_name` =
//! the peer) until the join has returned AND a message from the joining user has been sent
//! AND /joined_members lists M + 1 users. Each repeat joins a new room with a new user.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::time::Instant;

use super::{Ctx, check_deadline, register_many};
use crate::{
    client::{Error, Result, enc},
    peer::Peer,
    report::{Better, Workload},
    stats::{ms, summarize},
};

pub struct Opts {
    pub members: usize,
    pub repeats: usize,
}

pub async fn run(ctx: &Ctx, opts: &Opts, peer: &Arc<Peer>) -> Workload {
    let mut w = Workload::new("W4");
    w.param("members", opts.members);
    w.param("repeats", opts.repeats);
    if let Err(e) = measure(ctx, opts, peer, &mut w).await {
        w.fail(e);
    }
    w
}

struct Timing {
    join: f64,
    send: f64,
    usable: f64,
}

async fn measure(ctx: &Ctx, opts: &Opts, peer: &Arc<Peer>, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let members = opts.members.max(1);
    let joiners = register_many(ctx, "w4", opts.repeats.max(1)).await?;
    let asked_before = peer.asked();
    let mut timings = Vec::new();
    for (r, joiner) in joiners.iter().enumerate() {
        check_deadline(deadline, "W4")?;
        let room_id = format!("!w4{}r{r}:{}", ctx.run_id, peer.name);
        let built = Instant::now();
        peer.host_room(&room_id, members)?;
        if r == 0 {
            w.notes.push(format!(
                "the peer built and signed a room of {members} members in {:.0} ms",
                ms(built.elapsed())
            ));
        }
        timings.push(join_once(ctx, peer, joiner, &room_id, members).await?);
    }
    w.latency("usable", summarize(timings.iter().map(|t| t.usable).collect()));
    w.latency("join", summarize(timings.iter().map(|t| t.join).collect()));
    if let Some(s) = summarize(timings.iter().map(|t| t.send).collect()) {
        w.metric("first send p50", s.p50, "ms", Better::Lower);
    }
    w.notes.extend(peer.asked_since(&asked_before));
    Ok(())
}

async fn join_once(
    ctx: &Ctx,
    peer: &Peer,
    joiner: &crate::client::Account,
    room_id: &str,
    members: usize,
) -> Result<Timing> {
    let hs = &ctx.hs;
    let join_path = format!("/_matrix/client/v3/join/{}?server_name={}", enc(room_id), enc(peer.name.as_str()));
    let send_path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        enc(room_id),
        enc(&format!("{}-w4-{}", ctx.run_id, enc(room_id)))
    );
    let members_path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id));
    // A join of a big room may take long on a slow server: allow minutes, not the default.
    let long = hs.timeout.max(Duration::from_secs(300));

    let started = Instant::now();
    hs.request(reqwest::Method::POST, &join_path, Some(&joiner.token), Some(&json!({})), long)
        .await
        .map_err(|e| Error { message: format!("join over federation: {}", e.message), ..e })?;
    let join = ms(started.elapsed());
    let body = json!({ "msgtype": "m.text", "body": "W4: joined" });
    hs.request(reqwest::Method::PUT, &send_path, Some(&joiner.token), Some(&body), long)
        .await
        .map_err(|e| Error { message: format!("first message after the join: {}", e.message), ..e })?;
    let send = ms(started.elapsed()) - join;
    let give_up = Instant::now() + long;
    loop {
        let reply = hs.get(&members_path, Some(&joiner.token), long).await?;
        let count = reply.json()?["joined"].as_object().map_or(0, |m| m.len());
        if count > members {
            break;
        }
        if Instant::now() >= give_up {
            return Err(Error::msg(format!("joined_members lists {count} of {} users", members + 1)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Timing { join, send, usable: ms(started.elapsed()) })
}
