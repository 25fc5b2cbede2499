//! Federation sender: drains the per-destination outbox, one transaction in flight per server.
//!
//! The outbox (`OutboxStore`) is the queue; the channels here are only doorbells. `Sender::run`
//! is a supervisor that starts one task per destination with work (at start-up: every
//! destination the store lists; later: every destination an enqueue names). A destination task
//! loops: resend the transaction in flight if there is one, otherwise take the oldest pending
//! items (at most 50 PDUs and 100 EDUs, the spec's limits), record them durably as the new
//! transaction in flight, send, and on success delete them. It exits when its queue is empty.
//! Destinations never wait for each other: a peer that stalls until its timeout holds up only
//! its own task.
//!
//! Failures: a network error or an HTTP error status is retried, with the same transaction id
//! and the same contents (the receiver deduplicates by id), after an exponential back-off
//! (`SenderConfig::initial_backoff` doubling up to `max_backoff`); success or
//! `Sender::peer_is_up` (the peer just talked to us) resets it. A per-PDU error in the answer
//! (`pdus: {event_id: {error}}`) means the receiver processed and rejected that event; it is
//! logged and not retried, as resending the same event would not change the verdict.
//!
//! Ephemeral data: `m.typing` EDUs older than `SenderConfig::typing_max_age` when a transaction
//! is built are discarded instead of sent (after an outage a typing notification is stale; the
//! receiver would show someone typing who stopped long ago). Every other EDU (receipts,
//! presence, to-device, device lists) is kept and delivered however late.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, ServerName, TransactionId, UInt,
    api::federation::transactions::{edu::Edu, send_transaction_message},
    serde::Raw,
};
use serde_json::value::RawValue;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use crate::{
    client::{FederationClient, FederationError},
    outbox::{OutboundItem, OutboundTransaction, OutboxError, OutboxStore, QueuedItem},
    policy::Policy,
};

/// At most this many PDUs per transaction (spec: `/send`).
pub const MAX_PDUS_PER_TRANSACTION: usize = 50;
/// At most this many EDUs per transaction (spec: `/send`).
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;

/// What a destination answered for each PDU of a transaction: `Err(reason)` if it rejected it.
pub type PduResults = BTreeMap<OwnedEventId, Result<(), String>>;

/// The wire behind the sender: `PUT /_matrix/federation/v1/send/{txnId}`. A trait so tests can
/// run the sender without a network.
pub trait Transport: Send + Sync + 'static {
    /// Sends one transaction and returns the per-PDU results. `Err` for anything that makes the
    /// transaction worth retrying: no connection, a timeout, an HTTP error status, a bad answer.
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &TransactionId,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
        pdus: Vec<Box<RawValue>>,
        edus: Vec<Raw<Edu>>,
    ) -> impl Future<Output = Result<PduResults, FederationError>> + Send;
}

impl Transport for FederationClient {
    async fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &TransactionId,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
        pdus: Vec<Box<RawValue>>,
        edus: Vec<Raw<Edu>>,
    ) -> Result<PduResults, FederationError> {
        let mut request =
            send_transaction_message::v1::Request::new(txn_id.to_owned(), self.origin().to_owned(), origin_server_ts);
        request.pdus = pdus;
        request.edus = edus;
        Ok(self.send(destination, request).await?.pdus)
    }
}

/// Settings of the sender.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Our server name: never a destination.
    pub origin: OwnedServerName,
    /// Destinations the policy forbids are skipped (nothing is queued for them).
    pub policy: Policy,
    /// The first wait after a failed transaction; it doubles with each further failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// `m.typing` EDUs queued longer ago than this are dropped rather than sent.
    pub typing_max_age: Duration,
}

impl SenderConfig {
    /// The production defaults: 1 s doubling to 1 h; typing notifications live 60 s.
    pub fn new(origin: OwnedServerName, policy: Policy) -> Self {
        Self {
            origin,
            policy,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            typing_max_age: Duration::from_secs(60),
        }
    }
}

/// Wall-clock milliseconds that advance with tokio's clock (so paused-time tests control
/// timestamps and back-off alike).
struct Clock {
    wall_at_start: u64,
    started: Instant,
}

impl Clock {
    fn new() -> Self {
        Self { wall_at_start: MilliSecondsSinceUnixEpoch::now().get().into(), started: Instant::now() }
    }

    fn now(&self) -> MilliSecondsSinceUnixEpoch {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(self.wall_at_start.saturating_add(elapsed)))
    }
}

/// Why the supervisor woke up.
enum Wake {
    /// New items are durable in these destinations' queues.
    Enqueued(Vec<OwnedServerName>),
    /// A peer talked to us: if its task is backing off, retry now.
    PeerUp(OwnedServerName),
    /// A destination task ended (queue drained, shutdown, or a panic).
    Finished(Result<DestinationExit, tokio::task::JoinError>),
    /// Time to (re)read the destinations with work from the store.
    Rescan,
    Shutdown,
}

/// Why a destination task woke up.
#[derive(Debug)]
enum DestinationWake {
    /// New items were queued (the store says what).
    Work,
    /// The peer is reachable again: end the back-off.
    PeerUp,
}

/// What a destination task hands back when it ends: its doorbell, so the supervisor can see
/// whether anything rang after the task last looked at the store.
struct DestinationExit {
    destination: OwnedServerName,
    wakes: mpsc::UnboundedReceiver<DestinationWake>,
}

/// The outbound federation sender. Cheap to share (`Arc`); `run` drives it.
pub struct Sender<T: Transport = FederationClient> {
    config: SenderConfig,
    store: Arc<dyn OutboxStore>,
    transport: Arc<T>,
    clock: Clock,
    doorbell: mpsc::UnboundedSender<Wake>,
    /// Taken by `run`.
    doorbell_rx: Mutex<Option<mpsc::UnboundedReceiver<Wake>>>,
}

impl<T: Transport> Sender<T> {
    pub fn new(config: SenderConfig, store: Arc<dyn OutboxStore>, transport: Arc<T>) -> Self {
        let (doorbell, doorbell_rx) = mpsc::unbounded_channel();
        Self { config, store, transport, clock: Clock::new(), doorbell, doorbell_rx: Mutex::new(Some(doorbell_rx)) }
    }

    /// Queues a PDU for `destinations` (durably, before returning). Our own server name and
    /// destinations the policy forbids are skipped.
    pub async fn enqueue_pdu(
        &self,
        destinations: impl IntoIterator<Item = OwnedServerName>,
        event_id: &EventId,
        pdu: &RawValue,
    ) -> Result<(), OutboxError> {
        self.enqueue(destinations, OutboundItem::pdu(event_id, pdu)).await
    }

    /// Queues an EDU (the whole `{"edu_type":..,"content":..}` object) for `destinations`
    /// (durably, before returning). Our own server name and forbidden destinations are skipped.
    pub async fn enqueue_edu(
        &self,
        destinations: impl IntoIterator<Item = OwnedServerName>,
        edu: &Raw<Edu>,
    ) -> Result<(), OutboxError> {
        self.enqueue(destinations, OutboundItem::Edu(edu.clone())).await
    }

    /// `destination` just sent us something: it is up, so end its back-off and retry now.
    pub fn peer_is_up(&self, destination: &ServerName) {
        // The receiver lives as long as `run`; before or after it, there is nothing to wake.
        let _ = self.doorbell.send(Wake::PeerUp(destination.to_owned()));
    }

    async fn enqueue(
        &self,
        destinations: impl IntoIterator<Item = OwnedServerName>,
        item: OutboundItem,
    ) -> Result<(), OutboxError> {
        let mut targets: Vec<OwnedServerName> = destinations.into_iter().filter(|d| self.may_send_to(d)).collect();
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            return Ok(());
        }
        let queued_at = self.clock.now();
        let written = targets.clone();
        blocking(&self.store, move |store| store.enqueue_outbound(&written, &item, queued_at)).await?;
        // Durable first, doorbell second: a task that misses the bell still finds the items.
        let _ = self.doorbell.send(Wake::Enqueued(targets));
        Ok(())
    }

    fn may_send_to(&self, destination: &ServerName) -> bool {
        if destination == self.config.origin {
            return false;
        }
        if !self.config.policy.permits(destination.as_str()) {
            tracing::debug!(%destination, "not sending: federation policy forbids this server");
            return false;
        }
        true
    }

    /// Runs the sender until `shutdown` becomes true: starts a task for every destination with
    /// work, then one for every destination that gets new work, and forwards `peer_is_up`.
    /// Transactions interrupted by shutdown stay recorded in flight and are resent at the next
    /// start. Call once.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let taken = self.doorbell_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut doorbell) = taken else {
            tracing::error!("federation sender: run called twice");
            return;
        };
        let mut tasks: JoinSet<DestinationExit> = JoinSet::new();
        let mut running: HashMap<OwnedServerName, mpsc::UnboundedSender<DestinationWake>> = HashMap::new();
        let mut task_names: HashMap<tokio::task::Id, OwnedServerName> = HashMap::new();
        let mut rescan_at = Some(Instant::now());
        loop {
            let wake = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => Wake::Finished(joined),
                Some(wake) = doorbell.recv() => wake,
                _ = sleep_until_some(rescan_at), if rescan_at.is_some() => Wake::Rescan,
            };
            let mut start = Vec::new();
            match wake {
                Wake::Shutdown => break,
                Wake::Rescan => {
                    rescan_at = None;
                    match blocking(&self.store, |store| store.destinations_with_work()).await {
                        Ok(destinations) => {
                            for destination in destinations {
                                if self.may_send_to(&destination) {
                                    start.push(destination);
                                } else {
                                    tracing::info!(%destination, "federation policy forbids this server: leaving its queue unsent");
                                }
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, "federation sender: cannot list destinations; retrying");
                            rescan_at = Some(Instant::now() + self.config.initial_backoff.max(Duration::from_secs(1)));
                        }
                    }
                }
                Wake::Enqueued(destinations) => start = destinations,
                Wake::PeerUp(destination) => {
                    if let Some(task) = running.get(&destination) {
                        let _ = task.send(DestinationWake::PeerUp);
                    }
                }
                Wake::Finished(Ok(exit)) => {
                    running.remove(&exit.destination);
                    task_names.retain(|_, name| *name != exit.destination);
                    // A bell that rang after the task last read the store: start it again.
                    if !exit.wakes.is_empty() {
                        start.push(exit.destination);
                    }
                }
                Wake::Finished(Err(error)) => {
                    // A bug: the destination waits for its next enqueue (or the next start).
                    let name = task_names.remove(&error.id());
                    if let Some(name) = &name {
                        running.remove(name);
                    }
                    tracing::error!(destination = ?name, %error, "federation sender: destination task failed");
                }
            }
            for destination in start {
                if let Some(task) = running.get(&destination) {
                    let _ = task.send(DestinationWake::Work);
                    continue;
                }
                let (bell, wakes) = mpsc::unbounded_channel();
                let task = DestinationTask {
                    sender: self.clone(),
                    destination: destination.clone(),
                    wakes,
                    shutdown: shutdown.clone(),
                    backoff: Backoff::new(self.config.initial_backoff),
                };
                let handle = tasks.spawn(task.run());
                task_names.insert(handle.id(), destination.clone());
                running.insert(destination, bell);
            }
        }
        // Destination tasks watch `shutdown` too; wait for them to put their pens down.
        while tasks.join_next().await.is_some() {}
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a blocking store call on tokio's blocking pool.
async fn blocking<R: Send + 'static>(
    store: &Arc<dyn OutboxStore>,
    call: impl FnOnce(&dyn OutboxStore) -> Result<R, OutboxError> + Send + 'static,
) -> Result<R, OutboxError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&*store))
        .await
        .map_err(|e| OutboxError(format!("outbox task failed: {e}")))?
}

/// The back-off of one destination: when the next attempt may start.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    /// The wait after the next failure.
    next_delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn new(initial: Duration) -> Self {
        Self { initial, next_delay: initial, retry_at: None }
    }

    fn failed(&mut self, max: Duration) -> Duration {
        let delay = self.next_delay;
        self.retry_at = Some(Instant::now() + delay);
        self.next_delay = (delay * 2).min(max);
        delay
    }

    fn reset(&mut self) {
        self.next_delay = self.initial;
        self.retry_at = None;
    }
}

/// One destination's loop: the only code that sends to that destination while it runs.
struct DestinationTask<T: Transport> {
    sender: Arc<Sender<T>>,
    destination: OwnedServerName,
    wakes: mpsc::UnboundedReceiver<DestinationWake>,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
}

impl<T: Transport> DestinationTask<T> {
    async fn run(mut self) -> DestinationExit {
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            if let Some(retry_at) = self.backoff.retry_at {
                // Waiting out the back-off: new work does not end it, the peer coming up does.
                tokio::select! {
                    _ = self.shutdown.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep_until(retry_at) => self.backoff.retry_at = None,
                    Some(wake) = self.wakes.recv() => {
                        if let DestinationWake::PeerUp = wake {
                            self.backoff.reset();
                        }
                        continue;
                    }
                }
            }
            // The store says what there is to do; pending bells only matter for PeerUp.
            while let Ok(wake) = self.wakes.try_recv() {
                if let DestinationWake::PeerUp = wake {
                    self.backoff.reset();
                }
            }
            let transaction = match self.next_transaction().await {
                Ok(Some(transaction)) => transaction,
                Ok(None) => break,
                Err(error) => {
                    let delay = self.backoff.failed(self.sender.config.max_backoff);
                    tracing::error!(destination = %self.destination, %error, ?delay, "federation sender: outbox unreadable");
                    continue;
                }
            };
            let pdus = transaction
                .items
                .iter()
                .filter_map(|queued| match &queued.item {
                    OutboundItem::Pdu { pdu, .. } => Some(pdu.clone()),
                    OutboundItem::Edu(_) => None,
                })
                .collect();
            let edus = transaction
                .items
                .iter()
                .filter_map(|queued| match &queued.item {
                    OutboundItem::Edu(edu) => Some(edu.clone()),
                    OutboundItem::Pdu { .. } => None,
                })
                .collect();
            let send = self.sender.transport.send_transaction(
                &self.destination,
                &transaction.txn_id,
                transaction.origin_server_ts,
                pdus,
                edus,
            );
            let result = tokio::select! {
                // Dropping the request is safe: the transaction stays in flight and is resent.
                _ = self.shutdown.wait_for(|stop| *stop) => break,
                result = send => result,
            };
            match result {
                Ok(results) => {
                    for (event_id, result) in results {
                        if let Err(error) = result {
                            tracing::warn!(destination = %self.destination, %event_id, %error, "remote server rejected our event");
                        }
                    }
                    let destination = self.destination.clone();
                    let txn_id = transaction.txn_id.clone();
                    match blocking(&self.sender.store, move |store| store.complete_transaction(&destination, &txn_id))
                        .await
                    {
                        Ok(()) => self.backoff.reset(),
                        Err(error) => {
                            // The transaction is still in flight: it will be resent, and the
                            // receiver will recognise its id.
                            let delay = self.backoff.failed(self.sender.config.max_backoff);
                            tracing::error!(destination = %self.destination, %error, ?delay, "federation sender: cannot complete a transaction");
                        }
                    }
                }
                Err(error) => {
                    let delay = self.backoff.failed(self.sender.config.max_backoff);
                    tracing::info!(destination = %self.destination, txn_id = %transaction.txn_id, %error, ?delay, "transaction failed; will retry");
                }
            }
        }
        DestinationExit { destination: self.destination, wakes: self.wakes }
    }

    /// The transaction in flight, or a new one made of the oldest pending items (recorded in
    /// flight before it is returned), or `None` when the queue is empty.
    async fn next_transaction(&self) -> Result<Option<OutboundTransaction>, OutboxError> {
        let destination = self.destination.clone();
        if let Some(transaction) =
            blocking(&self.sender.store, move |store| store.transaction_in_flight(&destination)).await?
        {
            if !transaction.items.is_empty() {
                return Ok(Some(transaction));
            }
            // Its entries are gone (cannot happen through this API): close it and move on.
            let destination = self.destination.clone();
            let txn_id = transaction.txn_id.clone();
            blocking(&self.sender.store, move |store| store.complete_transaction(&destination, &txn_id)).await?;
        }
        loop {
            let destination = self.destination.clone();
            let items = blocking(&self.sender.store, move |store| {
                store.pending_outbound(&destination, MAX_PDUS_PER_TRANSACTION, MAX_EDUS_PER_TRANSACTION)
            })
            .await?;
            if items.is_empty() {
                return Ok(None);
            }
            let now = self.sender.clock.now();
            let (stale, items): (Vec<QueuedItem>, Vec<QueuedItem>) =
                items.into_iter().partition(|queued| self.is_stale_typing(queued, now));
            if !stale.is_empty() {
                tracing::debug!(destination = %self.destination, count = stale.len(), "dropping stale typing notifications");
                let destination = self.destination.clone();
                blocking(&self.sender.store, move |store| store.discard_outbound(&destination, &stale)).await?;
                // Read again, so the transaction is as full as the queue allows.
                continue;
            }
            let transaction = OutboundTransaction { txn_id: TransactionId::new(), origin_server_ts: now, items };
            let destination = self.destination.clone();
            let transaction = blocking(&self.sender.store, move |store| {
                store.begin_transaction(&destination, &transaction).map(|()| transaction)
            })
            .await?;
            return Ok(Some(transaction));
        }
    }

    fn is_stale_typing(&self, queued: &QueuedItem, now: MilliSecondsSinceUnixEpoch) -> bool {
        let age = u64::from(now.get()).saturating_sub(queued.queued_at.get().into());
        age > u64::try_from(self.sender.config.typing_max_age.as_millis()).unwrap_or(u64::MAX)
            && queued.item.edu_type().as_deref() == Some("m.typing")
    }
}

#[cfg(test)]
mod tests;
