//! Discovery: `/.well-known/matrix/client`, `/versions`, `/capabilities`.

use std::collections::BTreeMap;

use ruma::{
    RoomVersionId,
    api::client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
        },
        get_supported_versions,
    },
};

use crate::{api::ruma::Ruma, app::App, error::Result, service::rooms::SUPPORTED_CREATE_VERSIONS};

/// Spec versions this server implements the client-server API of.
const VERSIONS: &[&str] =
    &["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"];

/// `GET /_matrix/client/versions`
pub async fn versions(
    _app: App,
    _req: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect());
    response.unstable_features = BTreeMap::from([
        ("org.matrix.msc2285.stable".to_owned(), true),
        // Simplified sliding sync (MSC4186), the only sync Element X speaks.
        ("org.matrix.simplified_msc3575".to_owned(), true),
    ]);
    Ok(response)
}

/// `GET /.well-known/matrix/client`
pub async fn well_known_client(
    app: App,
    _req: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(app.core.config.public_baseurl())))
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn capabilities(
    app: App,
    req: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    req.user()?;
    let mut available = BTreeMap::new();
    for version in [
        RoomVersionId::V1,
        RoomVersionId::V2,
        RoomVersionId::V3,
        RoomVersionId::V4,
        RoomVersionId::V5,
        RoomVersionId::V6,
        RoomVersionId::V7,
        RoomVersionId::V8,
        RoomVersionId::V9,
    ] {
        available.insert(version, RoomVersionStability::Unstable);
    }
    for version in SUPPORTED_CREATE_VERSIONS {
        available.insert(version.clone(), RoomVersionStability::Stable);
    }
    let mut capabilities = Capabilities::new();
    capabilities.room_versions = RoomVersionsCapability::new(app.core.config.rooms.default_version.clone(), available);
    Ok(get_capabilities::v3::Response::new(capabilities))
}
