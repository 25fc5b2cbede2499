//! End-to-end encryption: key upload, query, claim and changes, cross-signing keys and
//! signatures, and `/sendToDevice`.

use ruma::api::client::{
    keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
    to_device::send_event_to_device,
};
use serde_json::value::RawValue;

use super::account::require_password;
use crate::{api::ruma::Ruma, app::App, error::Result, service::sync::SyncToken};

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys(app: App, req: Ruma<upload_keys::v3::Request>) -> Result<upload_keys::v3::Response> {
    let session = req.user()?;
    let keys = |map: &std::collections::BTreeMap<
        ruma::OwnedOneTimeKeyId,
        ruma::serde::Raw<ruma::encryption::OneTimeKey>,
    >| {
        map.iter().map(|(id, key)| (id.to_string(), key.json().to_owned())).collect::<Vec<(String, Box<RawValue>)>>()
    };
    let counts = app
        .e2ee
        .upload_keys(
            &session.user_id,
            &session.device_id,
            req.body.device_keys.as_ref().map(|k| k.json()),
            keys(&req.body.one_time_keys),
            keys(&req.body.fallback_keys),
        )
        .await?;
    let counts = counts
        .into_iter()
        .map(|(algorithm, count)| (algorithm.as_str().into(), ruma::UInt::try_from(count).unwrap_or_default()))
        .collect();
    Ok(upload_keys::v3::Response::new(counts))
}

/// `POST /_matrix/client/v3/keys/query`
pub async fn get_keys(app: App, req: Ruma<get_keys::v3::Request>) -> Result<get_keys::v3::Response> {
    let session = req.user()?;
    app.e2ee.query_keys(&session.user_id, req.body.device_keys.clone(), req.body.timeout).await
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys(app: App, req: Ruma<claim_keys::v3::Request>) -> Result<claim_keys::v3::Response> {
    req.user()?;
    let wanted = req
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            (user.clone(), devices.iter().map(|(device, algorithm)| (device.clone(), algorithm.to_string())).collect())
        })
        .collect();
    app.e2ee.claim_keys(wanted, req.body.timeout).await
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn get_key_changes(
    app: App,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let session = req.user()?;
    let from = SyncToken::parse(&req.body.from)?;
    let to = SyncToken::parse(&req.body.to)?;
    let delta = app.e2ee.device_list_delta(&session.user_id, from.pos, to.pos)?;
    Ok(get_key_changes::v3::Response::new(delta.changed, delta.left))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
pub async fn upload_signing_keys(
    app: App,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let session = req.user()?;
    let body = &req.body;
    let (master, self_signing, user_signing) = (
        body.master_key.as_ref().map(|k| k.json()),
        body.self_signing_key.as_ref().map(|k| k.json()),
        body.user_signing_key.as_ref().map(|k| k.json()),
    );
    if app.e2ee.signing_upload_needs_auth(&session.user_id, master, self_signing, user_signing)? {
        require_password(&app, session, body.auth.as_ref()).await?;
    }
    app.e2ee.upload_signing_keys(&session.user_id, master, self_signing, user_signing).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn upload_signatures(
    app: App,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let session = req.user()?;
    let signed = req
        .body
        .signed_keys
        .iter()
        .flat_map(|(user, keys)| keys.iter().map(move |(id, key)| (user.clone(), id.to_owned(), key.to_owned())))
        .collect();
    let failures = app.e2ee.upload_signatures(&session.user_id, signed).await?;
    let mut response = upload_signatures::v3::Response::new();
    response.failures = failures;
    Ok(response)
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_to_device(
    app: App,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let session = req.user()?;
    let body = &req.body;
    app.e2ee.send_to_device(session, &body.event_type, body.txn_id.as_str(), body.messages.clone()).await?;
    Ok(send_event_to_device::v3::Response::new())
}
