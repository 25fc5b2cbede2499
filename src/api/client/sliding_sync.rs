//! Simplified sliding sync (MSC4186): the handler and its response, which adds to ruma's
//! what ruma's types leave out (`expanded_timeline`); the `spaces` and `tags` list filters
//! are read from the body for the same reason.

use ruma::{
    api::{OutgoingResponse, OutgoingResponseExt, client::sync::sync_events::v5, error::IntoHttpError},
    exports::http,
};
use serde_json::Value;

use crate::{
    api::ruma::{JsonBody, Ruma},
    app::App,
    error::Result,
    service::sliding_sync::{ExtraListFilters, SlidingSyncOutput},
};

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
pub async fn sliding_sync(app: App, req: Ruma<v5::Request>) -> Result<SlidingSyncResponse> {
    let session = req.user()?.clone();
    let _syncing = app.syncing(&session.user_id, &req.body.set_presence).await?;
    let extra = ExtraListFilters::from_body(&req.raw_body);
    // `RUST_LOG=ieum::wire=trace` shows each exchange (to debug a client's view).
    tracing::trace!(target: "ieum::wire", user = %session.user_id, body = %String::from_utf8_lossy(&req.raw_body), "sliding sync request");
    let output = app.sliding_sync.sync(&session, req.body, extra).await?;
    Ok(SlidingSyncResponse(output))
}

/// The sliding sync response as sent: ruma's, with `expanded_timeline` (MSC4186) and its
/// Synapse spelling `unstable_expanded_timeline` on the rooms that have it.
pub struct SlidingSyncResponse(pub SlidingSyncOutput);

impl OutgoingResponse for SlidingSyncResponse {
    type Body = JsonBody;

    fn try_into_http_response_inner(self) -> Result<http::Response<JsonBody>, IntoHttpError> {
        let SlidingSyncOutput { response, expanded } = self.0;
        let (parts, body) = response.try_into_http_response::<Vec<u8>>()?.into_parts();
        tracing::trace!(target: "ieum::wire", body = %String::from_utf8_lossy(&body), ?expanded, "sliding sync response");
        if expanded.is_empty() {
            return Ok(http::Response::from_parts(parts, JsonBody::new(body)));
        }
        let mut value: Value = serde_json::from_slice(&body)?;
        for room_id in expanded {
            if let Some(Value::Object(room)) =
                value.pointer_mut(&format!("/rooms/{}", room_id.as_str().replace('~', "~0").replace('/', "~1")))
            {
                room.insert("expanded_timeline".into(), Value::Bool(true));
                room.insert("unstable_expanded_timeline".into(), Value::Bool(true));
            }
        }
        Ok(http::Response::from_parts(parts, JsonBody::new(serde_json::to_vec(&value)?)))
    }
}
