//! When an appended event becomes durable (group commit at the service level).
//!
//! Event appends are written to storage as pending writes (readable at once, durable after
//! a WAL sync; see `RoomStore::append_event_pending`). Outside a `deferred` scope an append
//! waits for its own durability before the caller goes on, as before. Inside one, appends
//! only record their ticket and the scope waits once, at its end, for the newest: a local
//! send releases its room's lock before the fsync (so the next message of the room is built
//! while the disk works and one fsync serves them all), and an inbound federation
//! transaction makes its PDUs durable with one fsync before it is answered.
//!
//! Nothing is acknowledged before it is durable: every `deferred` scope ends in the wait,
//! and pending positions stay invisible to stream readers until synced. A scope dropped
//! half-way (a client that went away) leaves writes that `sweep` makes durable shortly.

use std::{cell::Cell, future::Future, time::Duration};

use crate::{error::Result, service::Core, storage::WriteTicket};

tokio::task_local! {
    static DEFERRED: Cell<Option<WriteTicket>>;
}

/// Runs `work` with the durability of its appends deferred to its end; returns once they
/// are all durable (also when `work` fails after appending something).
/// Inside another `deferred` scope, the outer one waits.
pub async fn deferred<T>(core: &Core, work: impl Future<Output = Result<T>>) -> Result<T> {
    if DEFERRED.try_with(|_| ()).is_ok() {
        return work.await;
    }
    let (out, ticket) = DEFERRED
        .scope(Cell::new(None), async {
            let out = work.await;
            (out, DEFERRED.with(Cell::take))
        })
        .await;
    if let Some(ticket) = ticket {
        core.blocking(move |db| db.wait_durable(ticket).map_err(Into::into)).await?;
    }
    out
}

/// Makes a pending write durable before the caller goes on, or, inside `deferred`, before
/// the scope ends.
pub async fn settle(core: &Core, ticket: WriteTicket) -> Result<()> {
    let recorded = DEFERRED.try_with(|cell| cell.set(Some(cell.get().map_or(ticket, |t| t.max(ticket)))));
    if recorded.is_ok() {
        return Ok(());
    }
    core.blocking(move |db| db.wait_durable(ticket).map_err(Into::into)).await
}

/// Makes everything written so far durable (like `settle`): for an answer that names a
/// write someone else made and may not have synced yet (a repeated transaction id).
pub async fn settle_latest(core: &Core) -> Result<()> {
    settle(core, core.db.latest_write()).await
}

/// How long a pending write may stay unsynced when its writer did not wait for it.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// Background: syncs pending writes whose writer went away before waiting (a cancelled
/// request), so stream readers never wait long for their positions.
pub async fn sweep(core: std::sync::Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        if core.db.has_unsynced() {
            let result = core.blocking(|db| db.wait_durable(db.latest_write()).map_err(Into::into)).await;
            if let Err(error) = result {
                tracing::error!(%error, "cannot sync pending writes");
            }
        }
    }
    // Whatever is still pending at shutdown is synced before the store closes.
    if let Err(error) = core.blocking(|db| db.wait_durable(db.latest_write()).map_err(Into::into)).await {
        tracing::error!(%error, "cannot sync pending writes at shutdown");
    }
}
