//! Server-server endpoints. So far: key publication and the server version (what another
//! server asks first); the rest of federation is being built (issue 3).

use ruma::api::federation::discovery::{get_server_keys, get_server_version};

use crate::{api::ruma::Ruma, app::App, error::Result, service::server_keys};

/// `GET /_matrix/key/v2/server`
pub async fn server_keys(app: App, _req: Ruma<get_server_keys::v2::Request>) -> Result<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(server_keys::key_document(&app.core)?))
}

/// `GET /_matrix/federation/v1/version`
pub async fn version(
    _app: App,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("ieum".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
