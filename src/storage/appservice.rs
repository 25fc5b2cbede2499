//! Storage of the application-service sender: the global index of timeline events by stream
//! position (what happened after a cursor, across rooms), the receipts and to-device messages
//! written in a range of positions, and each appservice's cursor and transaction in flight.

use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ReceiptRecord, Result, StreamPos};

/// A transaction written before it is sent: retried with the same id and body until the
/// appservice accepts it, across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppserviceTxn {
    pub txn_id: u64,
    /// The cursor moves here once the transaction is accepted.
    pub upto: StreamPos,
    pub body: Box<RawValue>,
    /// To-device messages carried by `body`, taken out of their inboxes once it is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_device: Vec<(OwnedUserId, OwnedDeviceId, StreamPos)>,
}

/// A durable ephemeral write, found by its stream position.
#[derive(Clone, Debug)]
pub enum StreamEphemeral {
    /// A receipt as it stands now (only at the position of its newest write).
    Receipt(ReceiptRecord),
    /// To-device messages queued at `pos` for these devices.
    ToDevice { pos: StreamPos, recipients: Vec<(OwnedUserId, OwnedDeviceId)> },
}

/// Where an appservice's delivery stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppserviceState {
    /// Every event at or below this position was delivered (or is in `in_flight`).
    pub cursor: StreamPos,
    pub next_txn_id: u64,
    pub in_flight: Option<AppserviceTxn>,
}

pub trait AppserviceStore: Send + Sync {
    /// Timeline events appended at positions in `(after, upto]`, oldest first, at most `limit`.
    fn stream_events(
        &self,
        after: StreamPos,
        upto: StreamPos,
        limit: usize,
    ) -> Result<Vec<(StreamPos, OwnedRoomId, OwnedEventId)>>;
    /// Receipts and to-device messages written at positions in `(after, upto]`, oldest first.
    fn stream_ephemeral(&self, after: StreamPos, upto: StreamPos) -> Result<Vec<StreamEphemeral>>;
    fn appservice_state(&self, id: &str) -> Result<Option<AppserviceState>>;
    fn put_appservice_state(&self, id: &str, state: &AppserviceState) -> Result<()>;
    /// `put_appservice_state` without a WAL sync of its own: durable once `wait_durable`
    /// covers the ticket, so the sync is shared with the event appends of the same moment.
    fn put_appservice_state_pending(&self, id: &str, state: &AppserviceState) -> Result<super::WriteTicket>;
}
