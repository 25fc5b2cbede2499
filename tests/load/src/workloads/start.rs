//! W7 start and recovery: how long after a launch (a wall-clock instant the script took
//! just before starting the server) the server answers /versions, and answers an
//! incremental /sync for an existing account (after a SIGKILL restart).

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use super::initial_sync::SavedUser;
use crate::{
    client::{Error, Homeserver, Result},
    report::{Better, Workload},
};

/// Milliseconds from `since_unix_ns` (or from now when None) to the current instant.
fn since_ms(since_unix_ns: Option<u128>, local_start: Instant) -> f64 {
    match since_unix_ns {
        Some(ns) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            now.saturating_sub(ns) as f64 / 1e6
        }
        None => local_start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Polls until `attempt` succeeds or `limit` passes (every 2 ms; each try bounded).
async fn poll<F, Fut>(limit: Duration, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    let mut last = Error::msg("no attempt");
    while Instant::now() < deadline {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(Error::msg(format!("no success within {:.0} s (last error: {last})", limit.as_secs_f64())))
}

pub async fn wait_ready(hs: &Homeserver, since_unix_ns: Option<u128>, metric: &str, limit: Duration) -> Workload {
    let mut w = Workload::new("W7");
    let local_start = Instant::now();
    match poll(limit, || hs.versions(Duration::from_secs(1))).await {
        Ok(()) => w.metric(metric, since_ms(since_unix_ns, local_start), "ms", Better::Lower),
        Err(e) => w.fail(format!("{metric}: {e}")),
    }
    w
}

pub async fn first_sync(
    hs: &Homeserver,
    state: &Path,
    since_unix_ns: Option<u128>,
    metric: &str,
    limit: Duration,
) -> Workload {
    let mut w = Workload::new("W7");
    let local_start = Instant::now();
    let saved = match SavedUser::read(state) {
        Ok(saved) => saved,
        Err(e) => {
            w.fail(e);
            return w;
        }
    };
    let result = poll(limit, || async {
        let reply =
            hs.sync(&saved.token, &[("since", &saved.since), ("timeout", "0")], Duration::from_secs(10)).await?;
        match reply.json()?["next_batch"].as_str() {
            Some(_) => Ok(()),
            None => Err(Error::msg("sync answered without next_batch")),
        }
    })
    .await;
    match result {
        Ok(()) => w.metric(metric, since_ms(since_unix_ns, local_start), "ms", Better::Lower),
        Err(e) => w.fail(format!("{metric}: {e}")),
    }
    w
}
