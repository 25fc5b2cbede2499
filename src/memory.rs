//! Freed heap memory given back to the system once the server goes quiet.
//!
//! glibc keeps what the server frees for later allocations, and returns pages to the system
//! only from the top of a heap. After a burst, a thousand closed connections' buffers and a
//! fan-out's answers leave free pages all through the heap: measured after the headline W1,
//! W2, W3 and W9 load, `malloc_trim` gave back 13.5 MB of 134 MB PSS. This task trims after
//! a quiet second that follows activity (nobody waits on it then), and at most once a minute
//! while the server stays busy. `main.rs` (`tune_malloc`) sets the other glibc settings.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::service::Core;

/// Requests since start, counted as they arrive (`api::Http` counts every one); held in `Core`.
#[derive(Default)]
pub struct Answered(AtomicU64);

impl Answered {
    /// Counts one request.
    pub fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long without a request counts as quiet.
const QUIET: Duration = Duration::from_secs(1);
/// While busy, the longest time between two trims that had answers in between.
const BUSY_EVERY: Duration = Duration::from_secs(60);

/// Runs until `stop`: trims the heap after activity, as described above.
pub async fn trim_when_quiet(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let answered = &core.answered;
    let mut tick = tokio::time::interval(QUIET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = answered.get();
    let (mut trimmed_at, mut last_trim) = (seen, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let now = answered.get();
        let active_since_trim = now != trimmed_at;
        if active_since_trim && (now == seen || last_trim.elapsed() >= BUSY_EVERY) {
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(ms = started.elapsed().as_millis() as u64, released, "heap trimmed");
            (trimmed_at, last_trim) = (now, Instant::now());
        }
        seen = now;
    }
}

/// Gives free heap pages back to the system; true when some were.
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases memory malloc holds free; callable from any thread.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
