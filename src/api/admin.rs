//! `/_synapse/admin/v1/register`: shared-secret registration, compatible with Synapse's
//! `register_new_matrix_user` and the tools built on it (HMAC-SHA1 over
//! `nonce \0 user \0 password \0 admin|notadmin`).

use axum::{Json, extract::State, response::Response};
use serde::Deserialize;
use serde_json::json;

use super::ruma::error_response;
use crate::{app::App, error::Error};

/// `GET /_synapse/admin/v1/register`: a fresh nonce.
pub async fn register_nonce(State(app): State<App>) -> Response {
    if app.core.config.registration.shared_secret.is_none() {
        return error_response(Error::bad_json("Shared secret registration is not enabled."));
    }
    let nonce = app.users.new_admin_nonce();
    axum::response::IntoResponse::into_response(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
pub struct AdminRegister {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    displayname: Option<String>,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`
pub async fn register_with_secret(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let result = async {
        let Some(secret) = app.core.config.registration.shared_secret.clone() else {
            return Err(Error::bad_json("Shared secret registration is not enabled."));
        };
        let request: AdminRegister = serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                Error::not_json("Content not JSON.")
            } else {
                Error::bad_json(e.to_string())
            }
        })?;
        if !app.users.take_admin_nonce(&request.nonce) {
            return Err(Error::forbidden("Unrecognised nonce."));
        }
        let message = format!(
            "{}\0{}\0{}\0{}",
            request.nonce,
            request.username,
            request.password,
            if request.admin { "admin" } else { "notadmin" }
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
        let mac = decode_hex(&request.mac).ok_or_else(|| Error::forbidden("HMAC incorrect."))?;
        ring::hmac::verify(&key, message.as_bytes(), &mac).map_err(|_| Error::forbidden("HMAC incorrect."))?;
        let user_id = app.users.create(Some(&request.username), Some(&request.password), request.admin, None).await?;
        if let Some(name) = request.displayname {
            app.users.set_profile(&user_id, Some(Some(name)), None).await?;
        }
        let login = app.users.new_session(&user_id, None, None, false, None).await?;
        Ok(json!({
            "user_id": user_id,
            "access_token": login.access_token,
            "home_server": app.server_name(),
            "device_id": login.device_id,
        }))
    }
    .await;
    match result {
        Ok(body) => axum::response::IntoResponse::into_response(Json(body)),
        Err(error) => error_response(error),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}
