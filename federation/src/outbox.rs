//! The outbox: the persisted per-destination queues of PDUs and EDUs the sender drains, the
//! storage trait the server's backend implements for it (`OutboxStore`), and an in-memory
//! implementation for tests (`MemoryOutbox`).
//!
//! The store is the queue; the sender only keeps a doorbell in memory. An item is durable in
//! every destination's queue before `Sender::enqueue_*` returns, and a transaction is recorded
//! as in flight (id, timestamp, which queue entries it holds) before it is sent, so after a
//! crash the same transaction is resent under the same id and the receiver's idempotency
//! check drops the duplicate.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, OwnedTransactionId, ServerName, TransactionId,
    api::federation::transactions::edu::Edu, serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The position of an item in a destination's queue: a later enqueue gets a higher number.
/// Numbers are never reused while an item or a transaction in flight may still refer to them.
pub type OutboxSeq = u64;

/// A storage failure, as text: the backend's own error type stays in the backend.
#[derive(Debug, thiserror::Error)]
#[error("outbox storage: {0}")]
pub struct OutboxError(pub String);

/// One thing to send to a destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundItem {
    /// A PDU in federation format. Its id travels with it: from room version 3 on, a PDU does
    /// not contain its own event id, and the answer to `/send` is keyed by it.
    Pdu { event_id: OwnedEventId, pdu: Box<RawValue> },
    /// A whole EDU object: `{"edu_type": .., "content": ..}`.
    Edu(Raw<Edu>),
}

impl OutboundItem {
    pub fn pdu(event_id: &EventId, pdu: &RawValue) -> Self {
        Self::Pdu { event_id: event_id.to_owned(), pdu: pdu.to_owned() }
    }

    pub fn is_pdu(&self) -> bool {
        matches!(self, Self::Pdu { .. })
    }

    /// The `edu_type` of an EDU (`None` for PDUs and for EDUs without a readable type).
    pub fn edu_type(&self) -> Option<String> {
        match self {
            Self::Pdu { .. } => None,
            Self::Edu(edu) => edu.get_field::<String>("edu_type").ok().flatten(),
        }
    }
}

/// An item in a destination's queue.
#[derive(Clone, Debug)]
pub struct QueuedItem {
    pub seq: OutboxSeq,
    /// When the item was queued (lets the sender drop stale typing notifications).
    pub queued_at: MilliSecondsSinceUnixEpoch,
    pub item: OutboundItem,
}

/// A `/send` transaction to one destination: its id, its timestamp and the queue entries it
/// carries. Retries resend exactly this, under the same id.
#[derive(Clone, Debug)]
pub struct OutboundTransaction {
    pub txn_id: OwnedTransactionId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The queue entries, in queue order.
    pub items: Vec<QueuedItem>,
}

/// Persistence of the outbox. Every method is one atomic write (or a read), durable before it
/// returns. The methods block: the sender calls them through `tokio::task::spawn_blocking`.
pub trait OutboxStore: Send + Sync + 'static {
    /// Appends `item` to the queue of every destination in `destinations`, in one write.
    fn enqueue_outbound(
        &self,
        destinations: &[OwnedServerName],
        item: &OutboundItem,
        queued_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<(), OutboxError>;

    /// The oldest queued items of `destination` that the in-flight transaction (if any) does
    /// not hold: at most `max_pdus` PDUs and at most `max_edus` EDUs, in queue order. PDUs and
    /// EDUs are counted separately, so a backlog of PDUs does not hold EDUs back.
    fn pending_outbound(
        &self,
        destination: &ServerName,
        max_pdus: usize,
        max_edus: usize,
    ) -> Result<Vec<QueuedItem>, OutboxError>;

    /// Deletes queue entries that will never be sent (stale typing notifications). Entries
    /// that are absent are ignored.
    fn discard_outbound(&self, destination: &ServerName, items: &[QueuedItem]) -> Result<(), OutboxError>;

    /// Records `transaction` as the one in flight to `destination` (its id, timestamp and the
    /// queue entries it holds), replacing any previous record. Called before it is sent.
    fn begin_transaction(&self, destination: &ServerName, transaction: &OutboundTransaction)
    -> Result<(), OutboxError>;

    /// The transaction in flight to `destination`, with its entries read back from the queue.
    fn transaction_in_flight(&self, destination: &ServerName) -> Result<Option<OutboundTransaction>, OutboxError>;

    /// The destination acknowledged `txn_id`: deletes its queue entries and the in-flight record
    /// in one write. Does nothing if `txn_id` is not the transaction in flight.
    fn complete_transaction(&self, destination: &ServerName, txn_id: &TransactionId) -> Result<(), OutboxError>;

    /// Every destination with queued items or a transaction in flight (read at start-up).
    fn destinations_with_work(&self) -> Result<Vec<OwnedServerName>, OutboxError>;
}

/// The in-flight record as the memory store keeps it.
#[derive(Clone)]
struct InFlightRecord {
    txn_id: OwnedTransactionId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    seqs: Vec<OutboxSeq>,
}

#[derive(Default)]
struct MemoryState {
    next_seq: OutboxSeq,
    queues: BTreeMap<OwnedServerName, BTreeMap<OutboxSeq, QueuedItem>>,
    in_flight: HashMap<OwnedServerName, InFlightRecord>,
}

/// An outbox in memory: for tests (of the sender and of code that uses it). Not durable; a
/// "restart" is a new `Sender` over the same `MemoryOutbox`.
#[derive(Default)]
pub struct MemoryOutbox {
    state: Mutex<MemoryState>,
}

impl MemoryOutbox {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of items queued for `destination` (in flight included).
    pub fn queued(&self, destination: &ServerName) -> usize {
        self.state().queues.get(destination).map_or(0, BTreeMap::len)
    }
}

impl OutboxStore for MemoryOutbox {
    fn enqueue_outbound(
        &self,
        destinations: &[OwnedServerName],
        item: &OutboundItem,
        queued_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<(), OutboxError> {
        let mut state = self.state();
        for destination in destinations {
            state.next_seq += 1;
            let seq = state.next_seq;
            let queued = QueuedItem { seq, queued_at, item: item.clone() };
            state.queues.entry(destination.clone()).or_default().insert(seq, queued);
        }
        Ok(())
    }

    fn pending_outbound(
        &self,
        destination: &ServerName,
        max_pdus: usize,
        max_edus: usize,
    ) -> Result<Vec<QueuedItem>, OutboxError> {
        let state = self.state();
        let held = state.in_flight.get(destination).map(|record| record.seqs.as_slice()).unwrap_or_default();
        let (mut pdus, mut edus) = (0, 0);
        let mut out = Vec::new();
        for queued in state.queues.get(destination).into_iter().flat_map(BTreeMap::values) {
            if held.contains(&queued.seq) {
                continue;
            }
            let count = if queued.item.is_pdu() { (&mut pdus, max_pdus) } else { (&mut edus, max_edus) };
            if *count.0 < count.1 {
                *count.0 += 1;
                out.push(queued.clone());
            }
        }
        Ok(out)
    }

    fn discard_outbound(&self, destination: &ServerName, items: &[QueuedItem]) -> Result<(), OutboxError> {
        let mut state = self.state();
        if let Some(queue) = state.queues.get_mut(destination) {
            for item in items {
                queue.remove(&item.seq);
            }
        }
        Ok(())
    }

    fn begin_transaction(
        &self,
        destination: &ServerName,
        transaction: &OutboundTransaction,
    ) -> Result<(), OutboxError> {
        let record = InFlightRecord {
            txn_id: transaction.txn_id.clone(),
            origin_server_ts: transaction.origin_server_ts,
            seqs: transaction.items.iter().map(|item| item.seq).collect(),
        };
        self.state().in_flight.insert(destination.to_owned(), record);
        Ok(())
    }

    fn transaction_in_flight(&self, destination: &ServerName) -> Result<Option<OutboundTransaction>, OutboxError> {
        let state = self.state();
        let Some(record) = state.in_flight.get(destination) else { return Ok(None) };
        let queue = state.queues.get(destination);
        let items = record.seqs.iter().filter_map(|seq| queue.and_then(|queue| queue.get(seq)).cloned()).collect();
        Ok(Some(OutboundTransaction {
            txn_id: record.txn_id.clone(),
            origin_server_ts: record.origin_server_ts,
            items,
        }))
    }

    fn complete_transaction(&self, destination: &ServerName, txn_id: &TransactionId) -> Result<(), OutboxError> {
        let mut state = self.state();
        if state.in_flight.get(destination).is_none_or(|record| record.txn_id != txn_id) {
            return Ok(());
        }
        let Some(record) = state.in_flight.remove(destination) else { return Ok(()) };
        if let Some(queue) = state.queues.get_mut(destination) {
            for seq in &record.seqs {
                queue.remove(seq);
            }
            if queue.is_empty() {
                state.queues.remove(destination);
            }
        }
        Ok(())
    }

    fn destinations_with_work(&self) -> Result<Vec<OwnedServerName>, OutboxError> {
        let state = self.state();
        let mut out: Vec<OwnedServerName> =
            state.queues.iter().filter(|(_, queue)| !queue.is_empty()).map(|(name, _)| name.clone()).collect();
        out.extend(state.in_flight.keys().cloned());
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, owned_server_name};

    use super::*;

    #[test]
    fn items_round_trip_through_json() {
        let pdu = OutboundItem::pdu(event_id!("$e"), &RawValue::from_string(r#"{"type":"m.x"}"#.into()).unwrap());
        let json = serde_json::to_string(&pdu).unwrap();
        assert_eq!(json, r#"{"pdu":{"event_id":"$e","pdu":{"type":"m.x"}}}"#);
        let back: OutboundItem = serde_json::from_str(&json).unwrap();
        assert!(
            matches!(back, OutboundItem::Pdu { ref event_id, ref pdu } if event_id == "$e" && pdu.get() == r#"{"type":"m.x"}"#)
        );

        let edu = OutboundItem::Edu(Raw::from_json_string(r#"{"edu_type":"m.typing","content":{}}"#.into()).unwrap());
        let back: OutboundItem = serde_json::from_str(&serde_json::to_string(&edu).unwrap()).unwrap();
        assert_eq!(back.edu_type().as_deref(), Some("m.typing"));
        assert!(!back.is_pdu());
    }

    #[test]
    fn pending_skips_the_transaction_in_flight() {
        let store = MemoryOutbox::new();
        let a = owned_server_name!("a.test");
        let edu = OutboundItem::Edu(Raw::from_json_string(r#"{"edu_type":"m.x","content":{}}"#.into()).unwrap());
        let ts = MilliSecondsSinceUnixEpoch(1u32.into());
        for _ in 0..3 {
            store.enqueue_outbound(std::slice::from_ref(&a), &edu, ts).unwrap();
        }
        let first = store.pending_outbound(&a, 50, 2).unwrap();
        assert_eq!(first.len(), 2);
        let txn = OutboundTransaction { txn_id: TransactionId::new(), origin_server_ts: ts, items: first };
        store.begin_transaction(&a, &txn).unwrap();
        assert_eq!(store.pending_outbound(&a, 50, 100).unwrap().len(), 1);
        store.complete_transaction(&a, &TransactionId::new()).unwrap();
        assert_eq!(store.queued(&a), 3, "another transaction id completes nothing");
        store.complete_transaction(&a, &txn.txn_id).unwrap();
        assert_eq!(store.queued(&a), 1);
        assert!(store.transaction_in_flight(&a).unwrap().is_none());
    }
}
