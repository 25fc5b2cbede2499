//! Group commit for writes that are made readable before they are durable.
//!
//! A pending write goes into RocksDB without a WAL sync and takes a ticket (a sequence
//! number handed out after the write returned, so every ticket at or below a number names
//! a write already in the WAL). `wait` makes a ticket durable: the first waiter syncs the
//! WAL for everything written so far while later waiters sleep, and one fsync answers all
//! of them. Stream positions written this way are finished (made visible to readers) by
//! the sync that covers them, never before.
//!
//! The WAL is written in order, so a pending write can be durable only if every write
//! before it is: an event built on top of a pending one can never outlive it in a crash.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::Positions;
use crate::storage::{StreamPos, WriteTicket};

pub(super) struct GroupCommit {
    /// False when the store runs without durable writes (`storage.sync_writes = false`):
    /// then a pending write is finished at once and waiting is free.
    sync_writes: bool,
    state: Mutex<CommitState>,
    synced_cv: Condvar,
}

#[derive(Default)]
struct CommitState {
    /// Tickets handed out so far (the last one).
    written: u64,
    /// Every ticket at or below this is durable.
    synced: u64,
    /// A waiter is syncing the WAL right now.
    syncing: bool,
    /// Positions written under a ticket that no sync has covered yet.
    unsynced_positions: Vec<(u64, StreamPos)>,
}

impl GroupCommit {
    pub(super) fn new(sync_writes: bool) -> Self {
        Self { sync_writes, state: Mutex::default(), synced_cv: Condvar::new() }
    }

    fn state(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a write that has returned from RocksDB (unsynced); `pos` is the stream
    /// position it occupies, finished once durable.
    pub(super) fn written(&self, positions: &Positions, pos: Option<StreamPos>) -> WriteTicket {
        if !self.sync_writes {
            if let Some(pos) = pos {
                positions.finish(pos);
            }
            return WriteTicket(0);
        }
        let mut state = self.state();
        state.written += 1;
        let ticket = state.written;
        if let Some(pos) = pos {
            state.unsynced_positions.push((ticket, pos));
        }
        WriteTicket(ticket)
    }

    /// The last ticket handed out: waiting for it makes everything written so far durable.
    pub(super) fn latest(&self) -> WriteTicket {
        WriteTicket(self.state().written)
    }

    pub(super) fn has_unsynced(&self) -> bool {
        let state = self.state();
        state.written > state.synced
    }

    /// Returns once the write named by `ticket` (and every earlier one) is durable, syncing
    /// the WAL itself unless another waiter's sync covers it.
    pub(super) fn wait(
        &self,
        positions: &Positions,
        ticket: WriteTicket,
        sync_wal: impl Fn() -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.sync_writes {
            return Ok(());
        }
        let mut state = self.state();
        loop {
            if state.synced >= ticket.0 {
                return Ok(());
            }
            if state.syncing {
                state = self.synced_cv.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.syncing = true;
            let target = state.written;
            drop(state);
            let result = sync_wal();
            state = self.state();
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(target);
                let (done, rest): (Vec<_>, Vec<_>) =
                    state.unsynced_positions.drain(..).partition(|(t, _)| *t <= target);
                state.unsynced_positions = rest;
                for (_, pos) in done {
                    positions.finish(pos);
                }
            }
            self.synced_cv.notify_all();
            // A failed sync leaves the positions unfinished: the next waiter tries again.
            return result;
        }
    }
}
