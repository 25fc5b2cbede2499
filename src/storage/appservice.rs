//! Storage of the application-service sender: the global index of timeline events by stream
//! position (what happened after a cursor, across rooms) and each appservice's cursor and
//! transaction in flight.

use ruma::{OwnedEventId, OwnedRoomId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Result, StreamPos};

/// A transaction written before it is sent: retried with the same id and body until the
/// appservice accepts it, across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppserviceTxn {
    pub txn_id: u64,
    /// The cursor moves here once the transaction is accepted.
    pub upto: StreamPos,
    pub body: Box<RawValue>,
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
    fn appservice_state(&self, id: &str) -> Result<Option<AppserviceState>>;
    fn put_appservice_state(&self, id: &str, state: &AppserviceState) -> Result<()>;
}
