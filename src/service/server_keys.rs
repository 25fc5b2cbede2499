//! This server's published signing keys (`/_matrix/key/v2/server`), signed on request
//! with a validity window, through ieum-federation's key document builder.

use std::time::Duration;

use ruma::{api::federation::discovery::ServerSigningKeys, serde::Raw};

use super::{Core, now_ms};
use crate::error::{Error, Result};

/// How long other servers may cache our keys before asking again.
pub const KEY_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Our key document, valid for `KEY_VALIDITY` from now.
pub fn key_document(core: &Core) -> Result<Raw<ServerSigningKeys>> {
    let valid_until = now_ms() + KEY_VALIDITY.as_millis() as u64;
    let old_keys = super::old_signing_keys(&*core.db)?;
    ieum_federation::keys::signed_key_document(core.server_name(), &*core.signing_key, valid_until, &old_keys)
        .map_err(|e| Error::internal(format!("cannot sign the key document: {e}")))
}
