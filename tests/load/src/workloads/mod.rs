//! What the workloads share: the run context, bounded-concurrency setup (register many
//! users, join many users), retries for setup steps, and deadlines.

pub mod fanout;
pub mod import;
pub mod ingest;
pub mod initial_sync;
pub mod remote_join;
pub mod send;
pub mod sliding_sync;
pub mod start;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::client::{Account, Error, Homeserver, Result};

/// Shared by every workload of one `run`.
pub struct Ctx {
    pub hs: Arc<Homeserver>,
    /// Prefix of every localpart this run creates, so runs never collide.
    pub run_id: String,
    /// How many setup requests (register, join, create) run at once.
    pub setup_concurrency: usize,
    /// No workload (setup included) runs longer than this.
    pub workload_limit: Duration,
}

impl Ctx {
    pub fn localpart(&self, role: &str, i: usize) -> String {
        format!("{}-{role}-{i}", self.run_id)
    }

    pub fn deadline(&self) -> Instant {
        Instant::now() + self.workload_limit
    }
}

/// Fails with a clear message once `deadline` has passed.
pub fn check_deadline(deadline: Instant, what: &str) -> Result<()> {
    if Instant::now() >= deadline {
        Err(Error::msg(format!("deadline: {what} did not finish within the workload time limit")))
    } else {
        Ok(())
    }
}

/// Runs `f(i)` for every i in 0..n, at most `concurrency` at a time, and returns the
/// results in order. Stops starting new items at the first error, which it returns.
pub async fn parallel<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let slots: Arc<Mutex<Vec<Option<T>>>> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (f, next, failed, slots) = (f.clone(), next.clone(), failed.clone(), slots.clone());
        workers.spawn(async move {
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                match f(i).await {
                    Ok(value) => slots.lock().expect("slots")[i] = Some(value),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        });
    }
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::msg(format!("task: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let slots = std::mem::take(&mut *slots.lock().expect("slots"));
    slots.into_iter().map(|s| s.ok_or_else(|| Error::msg("task: an item produced no result"))).collect()
}

/// Retries a setup step that failed transiently (no answer, 5xx, 429), up to 5 attempts.
pub async fn retry<T, F, Fut>(what: &str, f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < 5 && e.status.is_none_or(|s| s >= 500 || s == 429) => {
                eprintln!("ieum-load: {what}: {e} (attempt {attempt}, retrying)");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(Error { message: format!("{what}: {}", e.message), ..e }),
        }
    }
}

/// Registers `n` users named `{run}-{role}-{i}` with m.login.dummy.
pub async fn register_many(ctx: &Ctx, role: &str, n: usize) -> Result<Vec<Account>> {
    let hs = ctx.hs.clone();
    let names: Arc<Vec<String>> = Arc::new((0..n).map(|i| ctx.localpart(role, i)).collect());
    parallel(n, ctx.setup_concurrency, move |i| {
        let (hs, names) = (hs.clone(), names.clone());
        async move { retry(&format!("register {}", names[i]), || hs.register(&names[i], None)).await }
    })
    .await
}

/// Joins every account to `room_id`.
pub async fn join_many(ctx: &Ctx, accounts: &[Account], room_id: &str) -> Result<()> {
    let hs = ctx.hs.clone();
    let tokens: Arc<Vec<String>> = Arc::new(accounts.iter().map(|a| a.token.clone()).collect());
    let room: Arc<str> = room_id.into();
    parallel(accounts.len(), ctx.setup_concurrency, move |i| {
        let (hs, tokens, room) = (hs.clone(), tokens.clone(), room.clone());
        async move { retry("join", || hs.join(&tokens[i], &room)).await }
    })
    .await
    .map(|_| ())
}
