//! `AppserviceStore` on RocksDB: the `stream_events` index (written by `append_event`) and
//! the `appservice_state` records.

use ::rocksdb::{Direction as RDirection, IteratorMode, WriteBatch};
use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId};

use super::{
    KIND_RECEIPT, KIND_TO_DEVICE, RocksStorage, backend, decode, encode,
    keys::{SEP, trailing_u64, u64_key},
    parse_id, schema as cf,
};
use crate::storage::{
    ReceiptRecord, Result, StorageError, StreamPos,
    appservice::{AppserviceState, AppserviceStore, StreamEphemeral},
};

/// The `stream` value of a receipt: its kind, then the `receipts` key it wrote.
pub(super) fn stream_receipt_value(receipt_key: &[u8]) -> Vec<u8> {
    let mut value = vec![KIND_RECEIPT];
    value.extend_from_slice(receipt_key);
    value
}

/// The `stream` value of queued to-device messages: its kind, then the recipients as JSON.
pub(super) fn stream_to_device_value(recipients: &[(&OwnedUserId, &OwnedDeviceId)]) -> Vec<u8> {
    let mut value = vec![KIND_TO_DEVICE];
    value.extend_from_slice(&encode(&recipients));
    value
}

/// The `stream_events` value: `room_id 0xFF event_id`.
pub(super) fn stream_event_value(room_id: &[u8], event_id: &[u8]) -> Vec<u8> {
    let mut value = room_id.to_vec();
    value.push(SEP);
    value.extend_from_slice(event_id);
    value
}

/// Reads a `stream_events` value back: (room, event).
pub(super) fn parse_stream_event(value: &[u8]) -> Result<(OwnedRoomId, OwnedEventId)> {
    let split = value
        .iter()
        .position(|b| *b == SEP)
        .ok_or_else(|| StorageError::Corrupt { table: cf::STREAM_EVENTS, detail: "no separator".into() })?;
    Ok((parse_id(cf::STREAM_EVENTS, &value[..split])?, parse_id(cf::STREAM_EVENTS, &value[split + 1..])?))
}

impl AppserviceStore for RocksStorage {
    fn stream_events(
        &self,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> Result<Vec<(StreamPos, OwnedRoomId, OwnedEventId)>> {
        let start = u64_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::STREAM_EVENTS), IteratorMode::From(&start, RDirection::Forward)) {
            let (key, value) = item.map_err(backend)?;
            let Some(pos) = trailing_u64(&key) else { break };
            if pos > upto || out.len() >= limit {
                break;
            }
            let (room_id, event_id) = parse_stream_event(&value)?;
            out.push((pos, room_id, event_id));
        }
        Ok(out)
    }

    fn stream_ephemeral(&self, after: StreamPos, upto: StreamPos) -> Result<Vec<StreamEphemeral>> {
        let start = u64_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::STREAM), IteratorMode::From(&start, RDirection::Forward)) {
            let (key, value) = item.map_err(backend)?;
            let Some(pos) = trailing_u64(&key) else { break };
            if pos > upto {
                break;
            }
            // Entries written before references were kept hold the kind alone.
            match value.split_first() {
                Some((&KIND_RECEIPT, receipt_key)) if !receipt_key.is_empty() => {
                    // A newer write of the same receipt is found at its own position.
                    if let Some(receipt) = self.get_json::<ReceiptRecord>(cf::RECEIPTS, receipt_key)?
                        && receipt.pos == pos
                    {
                        out.push(StreamEphemeral::Receipt(receipt));
                    }
                }
                Some((&KIND_TO_DEVICE, recipients)) if !recipients.is_empty() => {
                    let recipients: Vec<(OwnedUserId, OwnedDeviceId)> = decode(cf::STREAM, recipients)?;
                    out.push(StreamEphemeral::ToDevice { pos, recipients });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn appservice_state(&self, id: &str) -> Result<Option<AppserviceState>> {
        match self.get(cf::APPSERVICE_STATE, id.as_bytes())? {
            Some(bytes) => decode(cf::APPSERVICE_STATE, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put_appservice_state(&self, id: &str, state: &AppserviceState) -> Result<()> {
        self.write(self.appservice_state_batch(id, state))
    }

    fn put_appservice_state_pending(&self, id: &str, state: &AppserviceState) -> Result<crate::storage::WriteTicket> {
        self.write_pending(self.appservice_state_batch(id, state))
    }
}

impl RocksStorage {
    fn appservice_state_batch(&self, id: &str, state: &AppserviceState) -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::APPSERVICE_STATE), id.as_bytes(), encode(state));
        batch
    }
}
