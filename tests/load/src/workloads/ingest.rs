//! W5 federation ingest: a remote server (the [`Peer`]) pushes transactions of 50 PDUs
//! into a room of the server under test; accepted events/second and per-transaction
//! latency.
//!
//! A local user creates a public room (version 10); the peer's user joins it through
//! make_join / send_join v2; then the peer sends T transactions one after another (one in
//! flight, as a sending server does), each of P `m.room.message` PDUs chained by
//! prev_events (the first on the previous transaction's last), authorised by the create
//! event, the power levels and the peer user's join. An event counts as accepted when the
//! /send answer has no error for it. The clock stops when the last one is readable by the
//! local user (in the timeline, not soft-failed): a server may answer /send before it has
//! processed the PDUs (Synapse stages them and processes them in the background), so the
//! /send answers alone would not say how fast events enter the room.

use std::{sync::Arc, time::Duration};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedTransactionId, OwnedUserId,
    api::federation::{
        membership::{create_join_event, prepare_join_event},
        transactions::send_transaction_message,
    },
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, register_many, retry};
use crate::{
    client::{Error, Result, enc},
    peer::{Destination, Peer, ROOM_VERSION},
    report::{Better, Workload},
    stats::{ms, summarize},
};

pub struct Opts {
    pub transactions: usize,
    pub pdus_per_transaction: usize,
    /// The server under test's federation API (HTTPS), e.g. https://127.0.0.1:8448.
    pub federation_url: String,
}

pub async fn run(ctx: &Ctx, opts: &Opts, peer: &Arc<Peer>) -> Workload {
    let mut w = Workload::new("W5");
    w.param("transactions", opts.transactions);
    w.param("pdus per transaction", opts.pdus_per_transaction);
    if let Err(e) = measure(ctx, opts, peer, &mut w).await {
        w.fail(e);
    }
    w
}

/// The server name in a user id (`@local:server`).
pub fn server_of(user_id: &str) -> Result<OwnedServerName> {
    let server = user_id.split_once(':').map(|(_, s)| s).unwrap_or_default();
    OwnedServerName::try_from(server).map_err(|e| Error::msg(format!("user id {user_id}: server name: {e}")))
}

/// Creates a public room of version 10 as `token` (raw JSON: `room_version` set).
pub async fn create_v10_room(ctx: &Ctx, token: &str, name: &str) -> Result<String> {
    let body = json!({ "preset": "public_chat", "name": name, "room_version": ROOM_VERSION.as_str() });
    let reply = retry(&format!("create the {name} room"), || {
        ctx.hs.request(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(token), Some(&body), ctx.hs.timeout)
    })
    .await?;
    reply.json()?["room_id"].as_str().map(str::to_owned).ok_or_else(|| Error::msg("body: createRoom without room_id"))
}

/// What the peer knows of a room of the server under test after its user joined.
pub struct Joined {
    pub create: String,
    pub power_levels: String,
    pub join: String,
    pub depth: u64,
}

/// The peer's `user` joins `room_id` on `to` through make_join and send_join v2.
pub async fn peer_join(peer: &Peer, to: &Destination, room_id: &str, user: &str) -> Result<Joined> {
    let room = OwnedRoomId::try_from(room_id).map_err(|e| Error::msg(format!("room id {room_id}: {e}")))?;
    let user_id = OwnedUserId::try_from(user).map_err(|e| Error::msg(format!("user id {user}: {e}")))?;
    let mut make = prepare_join_event::v1::Request::new(room.clone(), user_id);
    make.ver = vec![ROOM_VERSION];
    let template =
        peer.send(to, make).await.map_err(|e| Error { message: format!("make_join: {}", e.message), ..e })?;
    let template: Value =
        serde_json::from_str(template.event.get()).map_err(|e| Error::msg(format!("make_join: {e}")))?;
    let depth = template["depth"].as_u64().unwrap_or(1);
    let (join, pdu) = peer.sign_template(template)?;
    let raw = serde_json::value::to_raw_value(&*pdu).map_err(|e| Error::msg(e.to_string()))?;
    let event_id = OwnedEventId::try_from(join.as_str()).map_err(|e| Error::msg(format!("event id {join}: {e}")))?;
    let answer = peer
        .send(to, create_join_event::v2::Request::new(room, event_id, raw))
        .await
        .map_err(|e| Error { message: format!("send_join: {}", e.message), ..e })?;
    let parse = |raw: &Vec<Box<serde_json::value::RawValue>>| -> Vec<Value> {
        raw.iter().filter_map(|r| serde_json::from_str(r.get()).ok()).collect()
    };
    let state = parse(&answer.room_state.state);
    peer.remember(state.iter().cloned().chain(parse(&answer.room_state.auth_chain)), &ROOM_VERSION);
    let rules = ROOM_VERSION.rules().ok_or_else(|| Error::msg("room version without rules"))?;
    let id_of = |event: &Value| -> Result<String> {
        let object = serde_json::from_value(event.clone()).map_err(|e| Error::msg(format!("send_join: {e}")))?;
        ruma::signatures::reference_hash(&object, &rules)
            .map(|hash| format!("${hash}"))
            .map_err(|e| Error::msg(format!("send_join: {e}")))
    };
    let find = |kind: &str| -> Result<String> {
        let event = state
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == "")
            .ok_or_else(|| Error::msg(format!("send_join: the room's state has no {kind}")))?;
        id_of(event)
    };
    // The state after the join, so /state_ids at any later message of the peer is answered.
    let mut after: Vec<String> = state
        .iter()
        .filter(|e| !(e["type"] == "m.room.member" && e["state_key"] == user))
        .map(id_of)
        .collect::<Result<_>>()?;
    after.push(join.clone());
    peer.joined_room(room_id, after);
    Ok(Joined { create: find("m.room.create")?, power_levels: find("m.room.power_levels")?, join, depth })
}

async fn measure(ctx: &Ctx, opts: &Opts, peer: &Arc<Peer>, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let owner = register_many(ctx, "w5", 1).await?.remove(0);
    let to = Destination { name: server_of(&owner.user_id)?, url: opts.federation_url.clone() };
    let room_id = create_v10_room(ctx, &owner.token, "W5 ingest").await?;
    let sender = format!("@w5_{}:{}", ctx.run_id, peer.name);
    let joined = peer_join(peer, &to, &room_id, &sender).await?;

    let per = opts.pdus_per_transaction.clamp(1, 50);
    let mut prev = joined.join.clone();
    let mut depth = joined.depth;
    let auth = vec![joined.create.clone(), joined.power_levels.clone(), joined.join.clone()];
    // Every transaction is built and signed before the clock starts: the peer's own work
    // is not the server's.
    let mut transactions = Vec::with_capacity(opts.transactions);
    for t in 0..opts.transactions {
        let mut pdus = Vec::with_capacity(per);
        let mut ids = Vec::with_capacity(per);
        for i in 0..per {
            depth += 1;
            let (id, pdu) = peer.build(json!({
                "type": "m.room.message",
                "room_id": room_id,
                "sender": sender,
                "content": { "msgtype": "m.text", "body": format!("W5 {} transaction {t} message {i}", ctx.run_id) },
                "prev_events": [prev],
                "auth_events": auth,
                "depth": depth,
            }))?;
            pdus.push(serde_json::value::to_raw_value(&*pdu).map_err(|e| Error::msg(e.to_string()))?);
            ids.push(id.clone());
            prev = id;
        }
        transactions.push((OwnedTransactionId::from(format!("{}-w5-{t}", ctx.run_id)), pdus, ids));
    }

    let asked_before = peer.asked();
    let mut latencies = Vec::with_capacity(opts.transactions);
    let mut accepted = 0usize;
    let mut last_accepted: Option<String> = None;
    let mut stopped = false;
    let started = Instant::now();
    for (txn, pdus, ids) in transactions {
        if Instant::now() >= deadline {
            stopped = true;
            break;
        }
        let mut request =
            send_transaction_message::v1::Request::new(txn, peer.name.clone(), MilliSecondsSinceUnixEpoch::now());
        request.pdus = pdus;
        let begun = Instant::now();
        match peer.send(&to, request).await {
            Ok(answer) => {
                latencies.push(ms(begun.elapsed()));
                for id in &ids {
                    match answer.pdus.iter().find(|(k, _)| k.as_str() == id).map(|(_, v)| v) {
                        // A server may leave accepted PDUs out of the answer (the spec lists
                        // errors); only an error counts against it.
                        Some(Ok(())) | None => {
                            accepted += 1;
                            last_accepted = Some(id.clone());
                        }
                        Some(Err(error)) => {
                            w.error("PDU rejected");
                            if w.notes.len() < 5 {
                                w.notes.push(format!("{id}: {error}"));
                            }
                        }
                    }
                }
            }
            Err(e) => w.error(e.key()),
        }
    }
    let acked = started.elapsed();
    if stopped {
        w.notes.push("stopped at the time limit".to_owned());
    }
    let Some(last) = last_accepted else {
        w.fail("no PDU was accepted");
        return Ok(());
    };
    // Accepted means in the room: the clock runs until the local user can read the last one.
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_id), enc(&last));
    loop {
        match ctx.hs.get(&path, Some(&owner.token), ctx.hs.timeout).await {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                w.fail(format!("the last accepted PDU is not readable by the local user: {e}"));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let elapsed = started.elapsed();
    w.metric("throughput", accepted as f64 / elapsed.as_secs_f64(), "events/s", Better::Higher);
    w.metric("/send answered", accepted as f64 / acked.as_secs_f64(), "events/s", Better::Higher);
    w.latency("transaction", summarize(latencies));
    w.notes.push(format!(
        "{accepted} PDUs accepted; /send answered after {:.2} s, the last PDU readable after {:.2} s",
        acked.as_secs_f64(),
        elapsed.as_secs_f64()
    ));
    w.notes.extend(peer.asked_since(&asked_before));
    Ok(())
}
