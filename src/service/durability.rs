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
//! Waiting is asynchronous (`Durability::wait`): a waiter parks no thread. The first waiter
//! that finds no sync running starts one on a blocking thread; that thread syncs the WAL
//! for everything written so far, publishes the newest durable ticket, and syncs again
//! while someone waits for a later ticket. One fsync wakes every waiter it covers. The
//! sync runs detached from the waiter that started it, so a client that goes away cannot
//! strand the others.
//!
//! Nothing is acknowledged before it is durable: every `deferred` scope ends in the wait,
//! and pending positions stay invisible to stream readers until synced. A scope dropped
//! half-way (a client that went away) leaves writes that `sweep` makes durable shortly.

use std::{cell::Cell, future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    service::Core,
    storage::{Storage, WriteTicket},
};

/// Where the WAL syncs stand: shared by the waiters and the sync thread.
#[derive(Clone, Copy, Debug, Default)]
struct SyncState {
    /// Every write with a ticket at or below this is durable.
    synced: WriteTicket,
    /// The newest ticket someone waits for.
    wanted: WriteTicket,
    /// A sync thread is running (it syncs again while `wanted` is ahead of `synced`).
    syncing: bool,
    /// Failed syncs so far: a waiter fails when one fails while it waits.
    failures: u64,
}

/// Asynchronous waiting for pending writes to become durable (see the module docs).
pub struct Durability {
    state: Arc<watch::Sender<SyncState>>,
}

impl Default for Durability {
    fn default() -> Self {
        Self { state: Arc::new(watch::Sender::new(SyncState::default())) }
    }
}

impl Durability {
    /// Returns once the pending write named by `ticket`, and every write before it, is
    /// durable; fails when the WAL sync meant to cover it fails.
    pub async fn wait(&self, db: &Arc<dyn Storage>, ticket: WriteTicket) -> Result<()> {
        let mut start = None;
        let mut spawn = false;
        let mut waiting = self.state.subscribe();
        self.state.send_if_modified(|state| {
            if state.synced >= ticket {
                return false;
            }
            start = Some(state.failures);
            state.wanted = state.wanted.max(ticket);
            spawn = !state.syncing;
            state.syncing = true;
            false
        });
        let Some(failures) = start else { return Ok(()) };
        if spawn {
            let (db, state) = (db.clone(), self.state.clone());
            tokio::task::spawn_blocking(move || sync_while_wanted(&*db, &state));
        }
        let state = *waiting
            .wait_for(|state| state.synced >= ticket || state.failures != failures)
            .await
            .map_err(|_| Error::internal("durability state dropped"))?;
        if state.synced >= ticket {
            Ok(())
        } else {
            Err(Error::internal("cannot make the write durable (WAL sync failed)"))
        }
    }
}

/// The sync thread: syncs the WAL and publishes the result until nobody waits for more.
fn sync_while_wanted(db: &dyn Storage, state: &watch::Sender<SyncState>) {
    loop {
        // Every ticket anyone waits for was handed out before this: the sync covers it.
        let target = db.latest_write();
        // A panic would leave `syncing` set and every later waiter stranded: it counts as a
        // failed sync instead.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.wait_durable(target)))
            .unwrap_or_else(|_| Err(crate::storage::StorageError::Backend("WAL sync panicked".into())));
        if let Err(error) = &result {
            tracing::error!(%error, "cannot sync the write-ahead log");
        }
        let mut again = false;
        state.send_modify(|state| {
            match result {
                Ok(()) => state.synced = state.synced.max(target),
                Err(_) => state.failures += 1,
            }
            again = result.is_ok() && state.wanted > state.synced;
            state.syncing = again;
        });
        if !again {
            return;
        }
    }
}

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
        core.durable.wait(&core.db, ticket).await?;
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
    core.durable.wait(&core.db, ticket).await
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
pub async fn sweep(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        if core.db.has_unsynced() {
            let result = core.durable.wait(&core.db, core.db.latest_write()).await;
            if let Err(error) = result {
                tracing::error!(%error, "cannot sync pending writes");
            }
        }
    }
    // Whatever is still pending at shutdown is synced before the store closes.
    if let Err(error) = core.durable.wait(&core.db, core.db.latest_write()).await {
        tracing::error!(%error, "cannot sync pending writes at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::appservice::AppserviceState;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_syncs_and_a_cancelled_one_strands_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_at(dir.path()).unwrap();
        let durable = Arc::new(Durability::default());
        // A waiter that starts the sync and is dropped at once: the sync goes on without it.
        let first = db.put_appservice_state_pending("as", &AppserviceState::default()).unwrap();
        drop(tokio::time::timeout(Duration::ZERO, durable.wait(&db, first)).await);
        let mut waiters = tokio::task::JoinSet::new();
        for n in 0..64 {
            let (db, durable) = (db.clone(), durable.clone());
            waiters.spawn(async move {
                let state = AppserviceState { next_txn_id: n, ..Default::default() };
                let ticket = db.put_appservice_state_pending(&format!("as{n}"), &state).unwrap();
                durable.wait(&db, ticket).await.unwrap();
                assert!(durable.state.borrow().synced >= ticket);
            });
        }
        let all = tokio::time::timeout(Duration::from_secs(30), waiters.join_all()).await;
        assert!(all.is_ok(), "every waiter was answered");
        assert!(!db.has_unsynced());
        let state = *durable.state.borrow();
        assert!(!state.syncing && state.failures == 0 && state.synced >= first, "{state:?}");
        // A ticket already covered is answered without a sync.
        durable.wait(&db, first).await.unwrap();
    }
}
