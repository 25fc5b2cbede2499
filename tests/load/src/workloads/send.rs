//! W1 send: N senders in one room send M messages in total, each sender one request at a
//! time; reports messages/second and per-request send latency.

use std::sync::Arc;

use tokio::{sync::Barrier, time::Instant};

use super::{Ctx, join_many, register_many, retry};
use crate::{
    client::Result,
    report::{Better, Workload},
    stats::{ms, summarize},
};

pub struct Opts {
    pub senders: usize,
    pub messages: usize,
}

pub async fn run(ctx: &Ctx, opts: &Opts) -> Workload {
    let mut w = Workload::new("W1");
    w.param("senders", opts.senders);
    w.param("messages", opts.messages);
    if let Err(e) = measure(ctx, opts, &mut w).await {
        w.fail(e);
    }
    w
}

struct SenderOutcome {
    latencies: Vec<f64>,
    errors: Vec<String>,
    stopped_at_deadline: bool,
}

async fn measure(ctx: &Ctx, opts: &Opts, w: &mut Workload) -> Result<()> {
    let deadline = ctx.deadline();
    let senders = opts.senders.max(1);
    let accounts = register_many(ctx, "w1", senders).await?;
    let hs = ctx.hs.clone();
    let room_id = retry("create the W1 room", || hs.create_room(&accounts[0].token, "W1 send", true)).await?;
    join_many(ctx, &accounts[1..], &room_id).await?;

    // One unmeasured message per sender: connections are open and warm before timing.
    for (s, account) in accounts.iter().enumerate() {
        let txn = format!("{}-w1warm-{s}", ctx.run_id);
        retry("W1 warm-up send", || hs.send_text(&account.token, &room_id, &txn, "warm-up")).await?;
    }

    let barrier = Arc::new(Barrier::new(senders + 1));
    let room: Arc<str> = room_id.as_str().into();
    let mut tasks = Vec::with_capacity(senders);
    for (s, account) in accounts.into_iter().enumerate() {
        let (hs, barrier, room, run_id) = (hs.clone(), barrier.clone(), room.clone(), ctx.run_id.clone());
        // Sender s sends messages s, s + N, s + 2N, ... so the total is exactly M.
        let mine: Vec<usize> = (s..opts.messages).step_by(senders).collect();
        tasks.push(tokio::spawn(async move {
            let mut outcome = SenderOutcome {
                latencies: Vec::with_capacity(mine.len()),
                errors: Vec::new(),
                stopped_at_deadline: false,
            };
            barrier.wait().await;
            for i in mine {
                if Instant::now() >= deadline {
                    outcome.stopped_at_deadline = true;
                    break;
                }
                let txn = format!("{run_id}-w1-{i}");
                let text = format!("W1 message {i} from sender {s}");
                let started = Instant::now();
                match hs.send_text(&account.token, &room, &txn, &text).await {
                    Ok(_) => outcome.latencies.push(ms(started.elapsed())),
                    Err(e) => outcome.errors.push(e.key()),
                }
            }
            outcome
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(opts.messages);
    let mut stopped = false;
    for task in tasks {
        let outcome = task.await.map_err(|e| crate::client::Error::msg(format!("task: {e}")))?;
        latencies.extend(outcome.latencies);
        for error in outcome.errors {
            w.error(error);
        }
        stopped |= outcome.stopped_at_deadline;
    }
    let elapsed = started.elapsed();
    let ok = latencies.len();
    w.metric("throughput", ok as f64 / elapsed.as_secs_f64(), "msg/s", Better::Higher);
    w.latency("send", summarize(latencies));
    w.notes.push(format!("{ok} messages in {:.2} s", elapsed.as_secs_f64()));
    if stopped {
        w.notes.push(format!("stopped at the time limit after {ok} of {} messages", opts.messages));
    }
    if ok == 0 {
        w.fail("no message was sent successfully");
    }
    Ok(())
}
