//! Test harness: real `Server`s on 127.0.0.1:0 with temp dirs, and a client that sends
//! ruma request types over HTTP and parses ruma responses.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
};

use ieum::{Config, Server};
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt, SupportedVersions,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceTokenOptional, AuthScheme, NoAccessToken, NoAuthentication,
            SendAccessToken,
        },
        client::{
            account::register,
            uiaa::{AuthData, Dummy},
        },
        path_builder::{PathBuilder, SinglePath, VersionHistory},
    },
};
use serde_json::Value;

/// How the harness supplies each auth scheme's input.
pub trait TestAuth: AuthScheme {
    fn input(token: Option<&str>) -> Self::Input<'_>;
}
macro_rules! token_auth {
    ($($scheme:ty),*) => {$(
        impl TestAuth for $scheme {
            fn input(token: Option<&str>) -> SendAccessToken<'_> {
                token.map(SendAccessToken::IfRequired).unwrap_or(SendAccessToken::None)
            }
        }
    )*};
}
token_auth!(AccessToken, AccessTokenOptional, NoAccessToken, AppserviceTokenOptional);
impl TestAuth for NoAuthentication {
    fn input(_token: Option<&str>) {}
}

/// How the harness picks each path builder's input.
pub trait TestPath: PathBuilder {
    fn input() -> Self::Input<'static>;
}
impl TestPath for VersionHistory {
    fn input() -> Cow<'static, SupportedVersions> {
        Cow::Owned(SupportedVersions::from_parts(&["v1.12".to_owned()], &BTreeMap::new()))
    }
}
impl TestPath for SinglePath {
    fn input() {}
}

/// A Matrix error as the client saw it.
#[derive(Debug)]
pub struct MatrixError {
    pub status: u16,
    pub body: Value,
}

impl MatrixError {
    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }
}

pub struct TestServer {
    server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub base: String,
    config: Config,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `IEUM_TEST_LOG=ieum=debug cargo test … -- --nocapture` shows the servers' logs (captured
/// per test like `println!`); without it tests log nothing.
fn init_test_log() {
    if let Ok(filter) = std::env::var("IEUM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server; `env` adds IEUM_* overrides to the test defaults.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        Self::try_start_with(env).await.expect("server starts")
    }

    /// Like `start_with`, returning the start-up error (a fixed port may be taken).
    pub async fn try_start_with(env: &[(&str, &str)]) -> Result<Self, ieum::server::ServerError> {
        init_test_log();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = test_config(&dir, env);
        let server = Server::start(config.clone()).await?;
        let base = format!("http://{}", server.addr());
        Ok(Self { server: Some(server), dir, base, config })
    }

    /// Stops the server cleanly and starts it again on the same database and ports.
    pub async fn restart(&mut self) {
        let server = self.server.take().expect("running");
        let mut config = self.config.clone();
        config.http.listen = server.addrs().to_vec();
        config.federation.listen = server.tls_addrs().to_vec();
        server.shutdown().await;
        self.server = Some(Server::start(config).await.expect("server restarts"));
    }

    /// The running server's services (to act as this server in federation tests).
    pub fn app(&self) -> std::sync::Arc<ieum::app::App> {
        self.server.as_ref().expect("running").services()
    }

    /// Stops the server (keeping its database and ports) until `start_again`.
    pub async fn stop(&mut self) {
        let server = self.server.take().expect("running");
        self.config.http.listen = server.addrs().to_vec();
        self.config.federation.listen = server.tls_addrs().to_vec();
        server.shutdown().await;
    }

    /// Starts a stopped server again on the same database and ports.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.server = Some(Server::start(self.config.clone()).await.expect("server restarts"));
    }

    /// `https://` + the first TLS listener (`federation.listen`).
    pub fn tls_base(&self) -> String {
        format!("https://{}", self.server.as_ref().expect("running").tls_addrs()[0])
    }

    /// A client of the first TLS listener that accepts any certificate (the test servers'
    /// are self-signed). It offers h2 and http/1.1 by ALPN.
    pub fn tls_client(&self) -> Client {
        let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("TLS client");
        Client { http, base: self.tls_base(), token: None, user_id: None, device_id: None }
    }

    pub fn server_name(&self) -> &str {
        self.config.server_name.as_str()
    }

    pub fn client(&self) -> Client {
        Client { http: reqwest::Client::new(), base: self.base.clone(), token: None, user_id: None, device_id: None }
    }

    /// Registers `@{name}-{n}:ieum.test` with password "password" and returns a logged-in client.
    pub async fn register(&self, name: &str) -> Client {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.register_exact(&format!("{name}-{n}")).await
    }

    pub async fn register_exact(&self, localpart: &str) -> Client {
        self.client().register_as(localpart).await
    }
}

/// The test defaults (loopback port 0, a database in `dir`, no rate limits) with `env`'s
/// IEUM_* overrides on top; for tests that call `Server::start` themselves.
pub fn test_config(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("IEUM_SERVER_NAME".to_owned(), "ieum.test".to_owned()),
        ("IEUM_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("IEUM_STORAGE__PATH".to_owned(), format!("\"{}\"", dir.path().join("db").display())),
        ("IEUM_RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(None, vars).expect("test config")
}

/// A client of any server at `base` (e.g. a spawned `ieum` binary).
pub fn client_for(base: &str) -> Client {
    Client { http: reqwest::Client::new(), base: base.to_owned(), token: None, user_id: None, device_id: None }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub user_id: Option<OwnedUserId>,
    pub device_id: Option<OwnedDeviceId>,
}

impl Client {
    /// Registers `localpart` with password "password" through this client and returns it
    /// logged in.
    pub async fn register_as(mut self, localpart: &str) -> Client {
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.password = Some("password".to_owned());
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        let response = self.send(request).await;
        self.token = response.access_token;
        self.user_id = Some(response.user_id);
        self.device_id = response.device_id;
        self
    }

    pub fn user_id(&self) -> &ruma::UserId {
        self.user_id.as_deref().expect("a registered client")
    }

    /// Sends a ruma request; panics with the server's answer if it fails.
    pub async fn send<R>(&self, request: R) -> R::IncomingResponse
    where
        R: OutgoingRequest,
        R::Authentication: TestAuth,
        R::PathBuilder: TestPath,
    {
        let name = std::any::type_name::<R>();
        match self.try_send(request).await {
            Ok(response) => response,
            Err(error) => panic!("{name} failed: {} {}", error.status, error.body),
        }
    }

    /// Sends a ruma request; returns the Matrix error instead of panicking.
    pub async fn try_send<R>(&self, request: R) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::Authentication: TestAuth,
        R::PathBuilder: TestPath,
    {
        let http_request = request
            .try_into_http_request::<Vec<u8>>(
                &self.base,
                R::Authentication::input(self.token.as_deref()),
                R::PathBuilder::input(),
            )
            .expect("request serialises");
        let (parts, body) = http_request.into_parts();
        let response = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let mut builder = ruma::exports::http::Response::builder().status(status.as_u16());
        for (name, value) in response.headers() {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
        let bytes = response.bytes().await.expect("body");
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
            return Err(MatrixError { status: status.as_u16(), body });
        }
        let http_response = builder.body(bytes.as_ref()).expect("response");
        Ok(<R::IncomingResponse as IncomingResponseExt>::try_from_http_response(http_response)
            .unwrap_or_else(|e| panic!("{} response does not parse: {e}", std::any::type_name::<R>())))
    }

    /// Sends a request; None when the server is unreachable or refuses (used while a
    /// server is being killed).
    pub async fn try_send_quiet<R>(&self, request: R) -> Option<R::IncomingResponse>
    where
        R: OutgoingRequest,
        R::Authentication: TestAuth,
        R::PathBuilder: TestPath,
    {
        let http_request = request
            .try_into_http_request::<Vec<u8>>(
                &self.base,
                R::Authentication::input(self.token.as_deref()),
                R::PathBuilder::input(),
            )
            .ok()?;
        let (parts, body) = http_request.into_parts();
        let response = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let status = response.status().as_u16();
        let bytes = response.bytes().await.ok()?;
        let http_response = ruma::exports::http::Response::builder().status(status).body(bytes.as_ref()).ok()?;
        <R::IncomingResponse as IncomingResponseExt>::try_from_http_response(http_response).ok()
    }

    /// A raw request (for malformed input): returns status and JSON body.
    pub async fn raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut request = self.http.request(method.parse().expect("method"), format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}
