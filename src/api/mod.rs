//! HTTP boundary: axum + ruma, no domain logic, never touches storage.

pub mod admin;
pub mod client;
pub mod federation;
pub mod routes;
pub mod ruma;
pub mod well_known;

use std::{net::SocketAddr, time::Instant};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

use crate::{app::App, error::Error};

/// The client's address, as handlers see it (`ConnectInfo<PeerAddr>`), whatever listener
/// the connection came through: plain TCP or TLS.
///
/// Our own type because axum implements `Connected` for `SocketAddr` only with its own
/// listener types, and the orphan rule forbids adding that impl for ours. (One generic impl
/// over every `Listener<Addr = SocketAddr>` would collide with axum's impl for `TapIo`.)
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

// The listeners' impls are beside them: `server::NoDelay` (plain TCP) and `tls::TlsListener`.

/// The whole router: client API, CORS, unknown-endpoint answers.
pub fn router(app: App) -> Router {
    routes::client_routes()
        .fallback(|| async { ruma::error_response(Error::unrecognized("Unrecognized request")) })
        .method_not_allowed_fallback(|| async { ruma::error_response(Error::method_not_allowed()) })
        .layer(middleware::from_fn_with_state(app.clone(), cors))
        .with_state(app)
}

/// Every client (browser-based ones too) may call the API: answer CORS preflights and
/// mark every response as shareable.
/// Also the access log: `RUST_LOG=ieum::access=debug` shows method, path (never the query,
/// which may hold an access token), status and time of every request.
async fn cors(State(app): State<App>, request: Request, next: Next) -> Response {
    // The access log's fields are copied only when it is on (every request passes here).
    let logged = tracing::enabled!(target: "ieum::access", tracing::Level::DEBUG)
        .then(|| (request.method().clone(), request.uri().path().to_owned(), Instant::now()));
    let mut response =
        if request.method() == Method::OPTIONS { StatusCode::OK.into_response() } else { next.run(request).await };
    app.core.answered.count();
    if let Some((method, path, started)) = logged {
        tracing::debug!(
            target: "ieum::access", %method, %path, status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64, "request"
        );
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date"),
    );
    response
}
