//! HTTP boundary: axum + ruma, no domain logic, never touches storage.

pub mod admin;
pub mod client;
pub mod federation;
pub mod routes;
pub mod ruma;
pub mod well_known;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::future::RouteFuture,
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

/// The whole HTTP service: the router (client API, unknown-endpoint answers) inside CORS and
/// the access log.
pub fn service(app: App) -> Http {
    let router = routes::client_routes()
        .fallback(|| async { ruma::error_response(Error::unrecognized("Unrecognized request")) })
        .method_not_allowed_fallback(|| async { ruma::error_response(Error::method_not_allowed()) })
        .with_state(app.clone());
    Http { router, app }
}

/// Every client (browser-based ones too) may call the API: CORS preflights are answered here
/// and every response is marked as shareable.
/// Also the access log: `RUST_LOG=ieum::access=debug` shows method, path (never the query,
/// which may hold an access token), status and time of every request.
///
/// A tower service around the router rather than axum middleware: a `from_fn` layer boxed a
/// future of over a kilobyte and cloned the boxed inner service on every request.
#[derive(Clone)]
pub struct Http {
    router: Router,
    app: App,
}

impl tower_service::Service<Request> for Http {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready (axum's `Router::poll_ready`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Answer {
        self.app.core.answered.count();
        // The access log's fields are copied only when it is on (every request passes here).
        let logged = tracing::enabled!(target: "ieum::access", tracing::Level::DEBUG)
            .then(|| (request.method().clone(), request.uri().path().to_owned(), Instant::now()));
        let routed = (request.method() != Method::OPTIONS).then(|| self.router.call(request));
        Answer { routed, logged }
    }
}

pin_project_lite::pin_project! {
    /// `Http`'s answer: the router's (none for a preflight), with the CORS headers added.
    pub struct Answer {
        #[pin]
        routed: Option<RouteFuture<Infallible>>,
        logged: Option<(Method, String, Instant)>,
    }
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.routed.as_pin_mut() {
            Some(routed) => match routed.poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            None => StatusCode::OK.into_response(),
        };
        if let Some((method, path, started)) = this.logged.take() {
            tracing::debug!(
                target: "ieum::access", %method, %path, status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64, "request"
            );
        }
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers
            .insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date"),
        );
        Poll::Ready(Ok(response))
    }
}
