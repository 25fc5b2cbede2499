//! The federation outbox on RocksDB: per-destination queues (OUTBOX) and the transaction in
//! flight per destination (OUTBOX_TXN); see schema.rs for the key layouts.
//!
//! Sequence numbers come from a counter recovered at open from the highest OUTBOX key. One
//! enqueue takes one number for all its destinations (the same item sits at the same `seq` in
//! each queue). Numbers of fully sent items may be reused after a restart: nothing refers to
//! a deleted entry, and transaction ids are not derived from them.

use std::{collections::HashSet, sync::atomic::Ordering};

use ::rocksdb::{DB, IteratorMode, WriteBatch};
use ieum_federation::outbox::{OutboundItem, OutboundTransaction, OutboxError, OutboxSeq, OutboxStore, QueuedItem};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName, TransactionId, UInt};
use serde::{Deserialize, Serialize};

use super::{RocksStorage, backend, decode, encode, keys, parse_id, schema as cf};
use crate::storage::{Result, StorageError};

/// The OUTBOX_TXN value.
#[derive(Serialize, Deserialize)]
struct InFlightRecord {
    txn_id: OwnedTransactionId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// `(kind, seq)` of each OUTBOX entry the transaction holds, in transaction order.
    entries: Vec<(u8, OutboxSeq)>,
}

fn kind_of(item: &OutboundItem) -> u8 {
    if item.is_pdu() { keys::OUTBOX_PDU } else { keys::OUTBOX_EDU }
}

fn encode_entry(queued_at: MilliSecondsSinceUnixEpoch, item: &OutboundItem) -> Vec<u8> {
    let mut value = u64::from(queued_at.get()).to_be_bytes().to_vec();
    value.extend_from_slice(&encode(item));
    value
}

fn decode_entry(seq: OutboxSeq, value: &[u8]) -> Result<QueuedItem> {
    let (stamp, json) = value
        .split_first_chunk::<8>()
        .ok_or(StorageError::Corrupt { table: cf::OUTBOX, detail: "short value".into() })?;
    let queued_at = MilliSecondsSinceUnixEpoch(UInt::new_saturating(u64::from_be_bytes(*stamp)));
    Ok(QueuedItem { seq, queued_at, item: decode(cf::OUTBOX, json)? })
}

/// Walks the destinations present in OUTBOX, one seek per destination (not one step per item),
/// calling `visit` with each destination's bytes.
fn each_destination(db: &DB, mut visit: impl FnMut(&DB, &[u8]) -> Result<()>) -> Result<()> {
    let handle = db.cf_handle(cf::OUTBOX).ok_or(StorageError::Backend("no outbox column family".into()))?;
    let mut iter = db.raw_iterator_cf(handle);
    iter.seek_to_first();
    while let Some(key) = iter.key() {
        let (destination, _, _) = keys::split_outbox_key(key)
            .ok_or(StorageError::Corrupt { table: cf::OUTBOX, detail: "malformed key".into() })?;
        let destination = destination.to_vec();
        visit(db, &destination)?;
        iter.seek(keys::outbox_after(&destination));
    }
    iter.status().map_err(backend)
}

/// The highest sequence number in OUTBOX (0 if it is empty): the counter resumes after it.
pub(super) fn last_outbox_seq(db: &DB) -> Result<OutboxSeq> {
    let handle = db.cf_handle(cf::OUTBOX).ok_or(StorageError::Backend("no outbox column family".into()))?;
    let mut last = 0;
    each_destination(db, |db, destination| {
        let mut iter = db.raw_iterator_cf(handle);
        for kind in [keys::OUTBOX_PDU, keys::OUTBOX_EDU] {
            iter.seek_for_prev(keys::outbox_key(destination, kind, u64::MAX));
            if let Some((found, found_kind, seq)) = iter.key().and_then(keys::split_outbox_key)
                && found == destination
                && found_kind == kind
            {
                last = last.max(seq);
            }
        }
        iter.status().map_err(backend)
    })?;
    Ok(last)
}

impl RocksStorage {
    fn in_flight_record(&self, destination: &ServerName) -> Result<Option<InFlightRecord>> {
        self.get_json(cf::OUTBOX_TXN, destination.as_bytes())
    }

    /// Up to `limit` entries of one kind of a destination's queue, oldest first, skipping `held`.
    fn outbox_run(
        &self,
        destination: &ServerName,
        kind: u8,
        limit: usize,
        held: &HashSet<(u8, OutboxSeq)>,
        out: &mut Vec<QueuedItem>,
    ) -> Result<()> {
        let run = keys::outbox_run(destination.as_bytes(), kind);
        let mut taken = 0;
        for item in self.db.iterator_cf(self.cf(cf::OUTBOX), IteratorMode::From(&run, ::rocksdb::Direction::Forward)) {
            if taken >= limit {
                break;
            }
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&run) {
                break;
            }
            let seq = keys::trailing_u64(&key)
                .ok_or(StorageError::Corrupt { table: cf::OUTBOX, detail: "short key".into() })?;
            if held.contains(&(kind, seq)) {
                continue;
            }
            out.push(decode_entry(seq, &value)?);
            taken += 1;
        }
        Ok(())
    }
}

impl OutboxStore for RocksStorage {
    fn enqueue_outbound(
        &self,
        destinations: &[OwnedServerName],
        item: &OutboundItem,
        queued_at: MilliSecondsSinceUnixEpoch,
    ) -> Result<(), OutboxError> {
        let seq = self.next_outbox_seq.fetch_add(1, Ordering::Relaxed);
        let kind = kind_of(item);
        let value = encode_entry(queued_at, item);
        let mut batch = WriteBatch::default();
        for destination in destinations {
            batch.put_cf(self.cf(cf::OUTBOX), keys::outbox_key(destination.as_bytes(), kind, seq), &value);
        }
        Ok(self.write(batch)?)
    }

    fn pending_outbound(
        &self,
        destination: &ServerName,
        max_pdus: usize,
        max_edus: usize,
    ) -> Result<Vec<QueuedItem>, OutboxError> {
        let held: HashSet<(u8, OutboxSeq)> =
            self.in_flight_record(destination)?.map(|record| record.entries.into_iter().collect()).unwrap_or_default();
        let mut out = Vec::new();
        self.outbox_run(destination, keys::OUTBOX_PDU, max_pdus, &held, &mut out)?;
        self.outbox_run(destination, keys::OUTBOX_EDU, max_edus, &held, &mut out)?;
        out.sort_by_key(|queued| queued.seq);
        Ok(out)
    }

    fn discard_outbound(&self, destination: &ServerName, items: &[QueuedItem]) -> Result<(), OutboxError> {
        let mut batch = WriteBatch::default();
        for queued in items {
            batch.delete_cf(
                self.cf(cf::OUTBOX),
                keys::outbox_key(destination.as_bytes(), kind_of(&queued.item), queued.seq),
            );
        }
        Ok(self.write(batch)?)
    }

    fn begin_transaction(
        &self,
        destination: &ServerName,
        transaction: &OutboundTransaction,
    ) -> Result<(), OutboxError> {
        let record = InFlightRecord {
            txn_id: transaction.txn_id.clone(),
            origin_server_ts: transaction.origin_server_ts,
            entries: transaction.items.iter().map(|queued| (kind_of(&queued.item), queued.seq)).collect(),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::OUTBOX_TXN), destination.as_bytes(), encode(&record));
        Ok(self.write(batch)?)
    }

    fn transaction_in_flight(&self, destination: &ServerName) -> Result<Option<OutboundTransaction>, OutboxError> {
        let Some(record) = self.in_flight_record(destination)? else { return Ok(None) };
        let mut items = Vec::with_capacity(record.entries.len());
        for (kind, seq) in record.entries {
            // An entry can only disappear with its record; if one is missing, send the rest.
            if let Some(value) = self.get(cf::OUTBOX, &keys::outbox_key(destination.as_bytes(), kind, seq))? {
                items.push(decode_entry(seq, &value)?);
            }
        }
        Ok(Some(OutboundTransaction { txn_id: record.txn_id, origin_server_ts: record.origin_server_ts, items }))
    }

    fn complete_transaction(&self, destination: &ServerName, txn_id: &TransactionId) -> Result<(), OutboxError> {
        let Some(record) = self.in_flight_record(destination)? else { return Ok(()) };
        if record.txn_id != txn_id {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (kind, seq) in record.entries {
            batch.delete_cf(self.cf(cf::OUTBOX), keys::outbox_key(destination.as_bytes(), kind, seq));
        }
        batch.delete_cf(self.cf(cf::OUTBOX_TXN), destination.as_bytes());
        Ok(self.write(batch)?)
    }

    fn destinations_with_work(&self) -> Result<Vec<OwnedServerName>, OutboxError> {
        let mut out: Vec<OwnedServerName> = Vec::new();
        each_destination(&self.db, |_, destination| {
            out.push(parse_id(cf::OUTBOX, destination)?);
            Ok(())
        })?;
        for item in self.db.iterator_cf(self.cf(cf::OUTBOX_TXN), IteratorMode::Start) {
            let (key, _) = item.map_err(backend)?;
            out.push(parse_id(cf::OUTBOX_TXN, &key)?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
