//! To-device messages: `/sendToDevice` to local devices (durable inboxes, delivered by /sync
//! exactly once and deleted when the next sync acknowledges them) and to remote devices
//! (`m.direct_to_device` EDUs through the persisted federation sender).

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
    api::federation::transactions::edu::{DirectDeviceContent, Edu},
    events::{AnyToDeviceEventContent, ToDeviceEventType},
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::value::RawValue;

use super::E2ee;
use crate::{
    error::{Error, Result},
    service::users::Session,
    storage::StreamPos,
};

/// The most devices one `/sendToDevice` may address.
const MAX_MESSAGES: usize = 10_000;

pub type Messages = BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>>;

fn event_json(sender: &UserId, kind: &str, content: &RawValue) -> Result<Box<RawValue>> {
    let json = format!(
        r#"{{"sender":{},"type":{},"content":{}}}"#,
        serde_json::to_string(sender.as_str()).map_err(|e| Error::internal(e.to_string()))?,
        serde_json::to_string(kind).map_err(|e| Error::internal(e.to_string()))?,
        content.get()
    );
    RawValue::from_string(json).map_err(|e| Error::internal(e.to_string()))
}

impl E2ee {
    /// `PUT /sendToDevice/{eventType}/{txnId}`.
    pub async fn send_to_device(
        &self,
        session: &Session,
        event_type: &ToDeviceEventType,
        txn_id: &str,
        messages: Messages,
    ) -> Result<()> {
        let count: usize = messages.values().map(BTreeMap::len).sum();
        if count > MAX_MESSAGES {
            return Err(Error::invalid_param(format!("At most {MAX_MESSAGES} messages per request.")));
        }
        let kind = event_type.to_string();
        let ours = self.core.server_name().to_owned();
        let mut local = Vec::new();
        let mut remote: BTreeMap<OwnedServerName, Messages> = BTreeMap::new();
        for (user_id, devices) in messages {
            if user_id.server_name() != ours {
                remote.entry(user_id.server_name().to_owned()).or_default().insert(user_id, devices);
                continue;
            }
            for (target, content) in devices {
                if !matches!(
                    serde_json::from_str::<serde_json::Value>(content.json().get()),
                    Ok(serde_json::Value::Object(_))
                ) {
                    return Err(Error::Matrix {
                        kind: ruma::api::error::ErrorKind::BadJson,
                        message: "To-device message contents must be objects.".into(),
                    });
                }
                local.push((user_id.clone(), target, content));
            }
        }
        // Expand `*` to every device; unknown users and devices are skipped (the spec).
        let mut inbox: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)> = Vec::new();
        for (user_id, target, content) in local {
            let event = event_json(&session.user_id, &kind, content.json())?;
            self.address(&mut inbox, &user_id, target, event)?;
        }
        // The transaction is recorded with the local messages; a retry of a transaction we
        // already did sends nothing anywhere.
        let user = session.user_id.clone();
        let txn_key = format!("{kind}\u{1}{txn_id}");
        if self.core.db.to_device_txn_seen(&user, &session.session_id, &txn_key)? {
            return Ok(());
        }
        for (server, messages) in remote {
            let message_id = ruma::OwnedTransactionId::from(crate::service::random_token(24));
            let mut content = DirectDeviceContent::new(session.user_id.clone(), event_type.clone(), message_id);
            content.messages = messages;
            let edu = Raw::new(&Edu::DirectToDevice(content)).map_err(|e| Error::internal(e.to_string()))?;
            self.federation.queue_edu(vec![server], &edu).await?;
        }
        let session_id = session.session_id.clone();
        self.core.blocking(move |db| Ok(db.queue_to_device(Some((&user, &session_id, &txn_key)), inbox)?)).await?;
        Ok(())
    }

    /// Inbox entries for one message to a local user: each of the user's devices for `*`, the
    /// device named if it exists; unknown users and devices get nothing (the spec).
    fn address(
        &self,
        inbox: &mut Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
        user_id: &OwnedUserId,
        target: DeviceIdOrAllDevices,
        event: Box<RawValue>,
    ) -> Result<()> {
        match target {
            DeviceIdOrAllDevices::AllDevices => {
                for device in self.core.db.devices(user_id)? {
                    inbox.push((user_id.clone(), device.device_id, event.clone()));
                }
            }
            DeviceIdOrAllDevices::DeviceId(device_id) => {
                if self.core.db.device(user_id, &device_id)?.is_some() {
                    inbox.push((user_id.clone(), device_id, event));
                }
            }
        }
        Ok(())
    }

    /// An `m.direct_to_device` EDU from `origin`: into our users' inboxes.
    pub async fn receive_direct_to_device(&self, origin: &ServerName, content: DirectDeviceContent) {
        if content.sender.server_name() != origin {
            return;
        }
        let kind = content.ev_type.to_string();
        let mut inbox = Vec::new();
        let result: Result<()> = async {
            for (user_id, devices) in content.messages {
                if user_id.server_name() != self.core.server_name() {
                    continue;
                }
                for (target, message) in devices {
                    let event = event_json(&content.sender, &kind, message.json())?;
                    self.address(&mut inbox, &user_id, target, event)?;
                    if inbox.len() > MAX_MESSAGES {
                        return Err(Error::invalid_param("too many to-device messages"));
                    }
                }
            }
            if !inbox.is_empty() {
                self.core.blocking(move |db| Ok(db.queue_to_device(None, inbox)?)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::info!(%origin, %error, "could not deliver to-device messages from another server");
        }
    }

    /// The messages /sync delivers to a device: those after `after` up to `upto` (at most
    /// `limit`), after deleting those up to `acknowledged` (the client's since token shows
    /// it has them).
    pub fn to_device_for_sync(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        acknowledged: Option<StreamPos>,
        upto: StreamPos,
        limit: usize,
    ) -> Result<Vec<(StreamPos, Box<RawValue>)>> {
        if let Some(acknowledged) = acknowledged {
            self.core.db.delete_to_device(user_id, device_id, acknowledged)?;
        }
        Ok(self.core.db.to_device_messages(user_id, device_id, acknowledged.unwrap_or(0), upto, limit)?)
    }
}
