//! Tests of the sender against an in-memory outbox and a scripted fake transport, on tokio's
//! paused clock: back-off waits elapse instantly and the intervals between attempts are exact.

use std::collections::{HashSet, VecDeque};

use ruma::{OwnedTransactionId, owned_server_name};
use tokio::task::JoinHandle;

use super::*;
use crate::outbox::MemoryOutbox;

/// What the fake destination does with one transaction.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Accept,
    /// HTTP 500.
    Fail,
    /// No answer for this long, then a network error (the client's timeout).
    Stall(Duration),
    /// 200, but every PDU is rejected.
    RejectPdus,
}

#[derive(Clone, Debug)]
struct Attempt {
    destination: OwnedServerName,
    txn_id: OwnedTransactionId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    at: Instant,
    /// The `n` of each test PDU, in order.
    pdus: Vec<u64>,
    edus: Vec<String>,
    delivered: bool,
}

#[derive(Default)]
struct FakeTransport {
    /// Replies per destination, in order; `Accept` once a script runs out.
    script: Mutex<HashMap<OwnedServerName, VecDeque<Reply>>>,
    attempts: Mutex<Vec<Attempt>>,
    /// Transactions currently being sent per destination, and the most ever at once.
    concurrent: Mutex<HashMap<OwnedServerName, (usize, usize)>>,
    started: watch::Sender<usize>,
}

impl FakeTransport {
    fn script(&self, destination: &ServerName, replies: &[Reply]) {
        self.script.lock().unwrap().entry(destination.to_owned()).or_default().extend(replies);
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    fn attempts_to(&self, destination: &str) -> Vec<Attempt> {
        self.attempts().into_iter().filter(|a| a.destination == destination).collect()
    }

    fn max_concurrent(&self, destination: &str) -> usize {
        self.concurrent.lock().unwrap().iter().find(|(d, _)| *d == destination).map_or(0, |(_, c)| c.1)
    }

    /// Waits until at least `n` transactions have been started (time advances meanwhile).
    async fn wait_for_attempts(&self, n: usize) {
        let mut started = self.started.subscribe();
        tokio::time::timeout(Duration::from_secs(24 * 3600), started.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} attempts: {:#?}", self.attempts()))
            .unwrap();
    }
}

impl Transport for FakeTransport {
    async fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &TransactionId,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
        pdus: Vec<Box<RawValue>>,
        edus: Vec<Raw<Edu>>,
    ) -> Result<PduResults, FederationError> {
        let reply =
            self.script.lock().unwrap().get_mut(destination).and_then(VecDeque::pop_front).unwrap_or(Reply::Accept);
        let parsed: Vec<(OwnedEventId, u64)> = pdus
            .iter()
            .map(|pdu| {
                let value: serde_json::Value = serde_json::from_str(pdu.get()).unwrap();
                (OwnedEventId::try_from(value["event_id"].as_str().unwrap()).unwrap(), value["n"].as_u64().unwrap())
            })
            .collect();
        let index = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(Attempt {
                destination: destination.to_owned(),
                txn_id: txn_id.to_owned(),
                origin_server_ts,
                at: Instant::now(),
                pdus: parsed.iter().map(|(_, n)| *n).collect(),
                edus: edus.iter().map(|edu| edu.json().get().to_owned()).collect(),
                delivered: false,
            });
            attempts.len() - 1
        };
        {
            let mut concurrent = self.concurrent.lock().unwrap();
            let entry = concurrent.entry(destination.to_owned()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        }
        self.started.send_modify(|count| *count += 1);
        let result = match reply {
            Reply::Accept => Ok(parsed.into_iter().map(|(id, _)| (id, Ok(()))).collect()),
            Reply::Fail => Err(FederationError::Remote {
                server: destination.to_string(),
                status: 500,
                body: "{\"errcode\":\"M_UNKNOWN\"}".into(),
            }),
            Reply::Stall(duration) => {
                tokio::time::sleep(duration).await;
                Err(FederationError::Network { server: destination.to_string(), detail: "timed out".into() })
            }
            Reply::RejectPdus => Ok(parsed.into_iter().map(|(id, _)| (id, Err("bad event".to_owned()))).collect()),
        };
        self.concurrent.lock().unwrap().entry(destination.to_owned()).or_default().0 -= 1;
        if result.is_ok() {
            self.attempts.lock().unwrap()[index].delivered = true;
        }
        result
    }
}

const US: &str = "us.test";

fn config() -> SenderConfig {
    SenderConfig {
        origin: owned_server_name!("us.test"),
        policy: Policy::default(),
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(8),
        typing_max_age: Duration::from_secs(60),
    }
}

fn server(name: &str) -> OwnedServerName {
    OwnedServerName::try_from(name).unwrap()
}

fn pdu(n: u64) -> (OwnedEventId, Box<RawValue>) {
    let event_id = OwnedEventId::try_from(format!("$p{n}")).unwrap();
    let json = format!(r#"{{"event_id":"{event_id}","n":{n}}}"#);
    (event_id, RawValue::from_string(json).unwrap())
}

fn edu(edu_type: &str, n: u64) -> Raw<Edu> {
    Raw::from_json_string(format!(r#"{{"edu_type":"{edu_type}","content":{{"n":{n}}}}}"#)).unwrap()
}

struct Running {
    sender: Arc<Sender<FakeTransport>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(store: &Arc<MemoryOutbox>, transport: &Arc<FakeTransport>, config: SenderConfig) -> Self {
        let sender = Arc::new(Sender::new(config, store.clone(), transport.clone()));
        Self::run(sender)
    }

    fn run(sender: Arc<Sender<FakeTransport>>) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(sender.clone().run(shutdown));
        Self { sender, stop, task }
    }

    async fn enqueue_pdus(&self, destinations: &[&str], numbers: impl IntoIterator<Item = u64>) {
        for n in numbers {
            let (event_id, json) = pdu(n);
            self.sender.enqueue_pdu(destinations.iter().map(|d| server(d)), &event_id, &json).await.unwrap();
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("the sender stops").unwrap();
    }
}

/// Polls `condition` while letting (paused) time pass in 10 ms steps, for up to an hour.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..360_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// Every PDU `n` delivered to `destination`, counting a retried transaction (same id) once, as
/// the receiver's deduplication would.
fn delivered_pdus(transport: &FakeTransport, destination: &str) -> Vec<u64> {
    let mut seen = HashSet::new();
    transport
        .attempts_to(destination)
        .into_iter()
        .filter(|a| a.delivered && seen.insert(a.txn_id.clone()))
        .flat_map(|a| a.pdus)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transactions_respect_the_spec_limits() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    let sender = Arc::new(Sender::new(config(), store.clone(), transport.clone()));
    // Queued before the sender runs: found at start-up.
    for n in 0..250 {
        if n < 120 {
            let (event_id, json) = pdu(n);
            sender.enqueue_pdu([server("a.test")], &event_id, &json).await.unwrap();
        }
        sender.enqueue_edu([server("a.test")], &edu("m.receipt", n)).await.unwrap();
    }
    let running = Running::run(sender);
    eventually("queue drained", || store.queued(&server("a.test")) == 0).await;
    let attempts = transport.attempts();
    let shape: Vec<(usize, usize)> = attempts.iter().map(|a| (a.pdus.len(), a.edus.len())).collect();
    assert_eq!(shape, [(50, 100), (50, 100), (20, 50)]);
    assert_eq!(delivered_pdus(&transport, "a.test"), (0..120).collect::<Vec<_>>(), "in order, once each");
    let txn_ids: HashSet<_> = attempts.iter().map(|a| a.txn_id.clone()).collect();
    assert_eq!(txn_ids.len(), 3, "a new id per transaction");

    // The destination's task ended with its queue; new work starts it again.
    running.enqueue_pdus(&["a.test"], [500]).await;
    eventually("late PDU delivered", || delivered_pdus(&transport, "a.test").contains(&500)).await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_destination_does_not_delay_others() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    transport.script(&server("slow.test"), &[Reply::Stall(Duration::from_secs(30))]);
    let running = Running::start(&store, &transport, config());
    let start = Instant::now();
    running.enqueue_pdus(&["slow.test", "fast.test"], [1]).await;
    transport.wait_for_attempts(2).await;
    // More work for both while the slow one's first transaction hangs.
    running.enqueue_pdus(&["slow.test", "fast.test"], 2..=5).await;
    eventually("fast drained", || store.queued(&server("fast.test")) == 0).await;
    assert!(start.elapsed() < Duration::from_secs(1), "fast.test waited for slow.test: {:?}", start.elapsed());
    assert_eq!(delivered_pdus(&transport, "fast.test"), [1, 2, 3, 4, 5]);
    assert_eq!(transport.attempts_to("slow.test").len(), 1, "one transaction in flight per destination");

    // The stall ends in a timeout; the retry carries the same transaction, then the rest.
    eventually("slow drained", || store.queued(&server("slow.test")) == 0).await;
    let slow = transport.attempts_to("slow.test");
    assert_eq!(slow[0].txn_id, slow[1].txn_id);
    assert_eq!(slow[1].pdus, [1]);
    assert_eq!(delivered_pdus(&transport, "slow.test"), [1, 2, 3, 4, 5]);
    assert_eq!(transport.max_concurrent("slow.test"), 1);
    assert_eq!(transport.max_concurrent("fast.test"), 1);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_reuses_the_transaction_id_and_contents() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    transport.script(&server("a.test"), &[Reply::Fail, Reply::Fail]);
    let sender = Arc::new(Sender::new(config(), store.clone(), transport.clone()));
    // Both queued before the sender runs, so the first transaction carries both.
    let (event_id, json) = pdu(1);
    sender.enqueue_pdu([server("a.test")], &event_id, &json).await.unwrap();
    sender.enqueue_edu([server("a.test")], &edu("m.receipt", 1)).await.unwrap();
    let running = Running::run(sender);
    transport.wait_for_attempts(1).await;
    // Queued during the retries: not added to the transaction being retried.
    running.enqueue_pdus(&["a.test"], [2]).await;
    eventually("queue drained", || store.queued(&server("a.test")) == 0).await;
    let attempts = transport.attempts();
    assert_eq!(attempts.len(), 4, "{attempts:#?}");
    for retry in &attempts[1..3] {
        assert_eq!(retry.txn_id, attempts[0].txn_id);
        assert_eq!(retry.origin_server_ts, attempts[0].origin_server_ts);
        assert_eq!(retry.pdus, attempts[0].pdus);
        assert_eq!(retry.edus, attempts[0].edus);
    }
    assert_eq!(attempts[2].pdus, [1]);
    assert_eq!(attempts[2].edus.len(), 1);
    assert_ne!(attempts[3].txn_id, attempts[0].txn_id);
    assert_eq!(attempts[3].pdus, [2]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_resends_the_transaction_in_flight_then_continues() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    transport.script(&server("a.test"), &[Reply::Stall(Duration::from_secs(3600))]);
    let first = Running::start(&store, &transport, config());
    first.enqueue_pdus(&["a.test"], 1..=3).await;
    transport.wait_for_attempts(1).await;
    first.enqueue_pdus(&["a.test"], 4..=5).await;
    // Shut down while the first transaction hangs: it stays recorded in flight.
    first.stop().await;
    let in_flight = store.transaction_in_flight(&server("a.test")).unwrap().unwrap();
    assert_eq!(in_flight.txn_id, transport.attempts()[0].txn_id);

    let second = Running::start(&store, &transport, config());
    eventually("queue drained", || store.queued(&server("a.test")) == 0).await;
    let attempts = transport.attempts();
    let first_pdus = attempts[0].pdus.clone();
    assert_eq!(attempts[1].txn_id, attempts[0].txn_id, "the same transaction id after a restart");
    assert_eq!(attempts[1].origin_server_ts, attempts[0].origin_server_ts);
    assert_eq!(attempts[1].pdus, first_pdus);
    assert!(attempts[2..].iter().all(|a| a.txn_id != attempts[0].txn_id));
    assert_eq!(delivered_pdus(&transport, "a.test"), [1, 2, 3, 4, 5], "nothing lost, nothing twice");
    assert!(store.destinations_with_work().unwrap().is_empty());
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn back_off_grows_and_peer_is_up_resets_it() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    transport.script(&server("a.test"), &[Reply::Fail; 7]);
    let running = Running::start(&store, &transport, config());
    running.enqueue_pdus(&["a.test"], [1]).await;
    transport.wait_for_attempts(6).await;
    // The sixth failure means a wait of 8 s (the cap); the peer talking to us ends it.
    running.sender.peer_is_up(&server("a.test"));
    eventually("queue drained", || store.queued(&server("a.test")) == 0).await;
    let attempts = transport.attempts();
    let gaps: Vec<u64> = attempts.windows(2).map(|w| (w[1].at - w[0].at).as_millis() as u64).collect();
    assert_eq!(gaps, [1000, 2000, 4000, 8000, 8000, 0, 1000], "1 s doubling to 8 s; reset by peer_is_up");
    assert!(attempts.iter().all(|a| a.txn_id == attempts[0].txn_id));

    // After a success the next failure waits the initial second again.
    transport.script(&server("a.test"), &[Reply::Fail]);
    running.enqueue_pdus(&["a.test"], [2]).await;
    transport.wait_for_attempts(10).await;
    let attempts = transport.attempts();
    assert_eq!((attempts[9].at - attempts[8].at).as_millis(), 1000);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rejected_pdus_are_not_retried() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    transport.script(&server("a.test"), &[Reply::RejectPdus]);
    let running = Running::start(&store, &transport, config());
    running.enqueue_pdus(&["a.test"], [1, 2]).await;
    eventually("queue drained", || store.queued(&server("a.test")) == 0).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(transport.attempts().len(), 1);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn our_own_and_forbidden_servers_are_skipped() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    let config = SenderConfig { policy: Policy { deny: vec!["*.bad.test".into()], ..Policy::default() }, ..config() };
    let running = Running::start(&store, &transport, config);
    running.enqueue_pdus(&[US, "evil.bad.test", "good.test"], [1]).await;
    running.sender.enqueue_edu([server(US), server("evil.bad.test")], &edu("m.receipt", 1)).await.unwrap();
    assert_eq!(store.queued(&server(US)), 0);
    assert_eq!(store.queued(&server("evil.bad.test")), 0);
    eventually("good drained", || store.queued(&server("good.test")) == 0).await;
    let destinations: HashSet<_> = transport.attempts().into_iter().map(|a| a.destination).collect();
    assert_eq!(destinations, HashSet::from([server("good.test")]));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stale_typing_notifications_are_dropped() {
    let store = Arc::new(MemoryOutbox::new());
    let transport = Arc::new(FakeTransport::default());
    let sender = Arc::new(Sender::new(config(), store.clone(), transport.clone()));
    let a = [server("a.test")];
    sender.enqueue_edu(a.clone(), &edu("m.typing", 1)).await.unwrap();
    sender.enqueue_edu(a.clone(), &edu("m.receipt", 2)).await.unwrap();
    // A long outage (here: the sender was not running) later...
    tokio::time::advance(Duration::from_secs(120)).await;
    sender.enqueue_edu(a.clone(), &edu("m.typing", 3)).await.unwrap();
    let running = Running::run(sender);
    eventually("queue drained", || store.queued(&a[0]) == 0).await;
    let edus: Vec<String> = transport.attempts().into_iter().flat_map(|a| a.edus).collect();
    assert_eq!(edus.len(), 2, "{edus:?}");
    assert!(edus[0].contains("m.receipt"));
    assert!(edus[1].contains("m.typing") && edus[1].contains(r#""n":3"#));
    running.stop().await;
}
