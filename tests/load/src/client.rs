//! HTTP to one homeserver's client API: ruma-typed calls for setup (register, login,
//! createRoom, join) and plain-JSON calls for the hot loops (send, sync), every one with a
//! bounded timeout. (W2's 1,000 long-polls have a leaner client of their own: poll.rs.)
//!
//! Why two styles: the hot loops run thousands of requests per second from one core, and
//! /sync responses for 1,000 clients are only searched for one marker string, so they are
//! handled as `serde_json::Value` rather than deserialised into ruma's full sync types.

use std::{borrow::Cow, fmt, time::Duration};

use ruma::api::{
    IncomingResponseExt, OutgoingRequest, OutgoingRequestExt, SupportedVersions,
    auth_scheme::{AuthScheme, SendAccessToken},
    client::{
        account::register,
        membership::join_room_by_id,
        room::{Visibility, create_room},
        session::login,
        uiaa::{AuthData, Dummy, MatrixUserIdentifier, UserIdentifier},
    },
    path_builder::PathBuilder,
};
use serde_json::Value;

/// Password given to accounts when the server insists on one (Synapse does).
pub const PASSWORD: &str = "ieum-load-password";

/// A failed exchange. `status` is None when no HTTP answer arrived (refused, timeout).
#[derive(Clone, Debug)]
pub struct Error {
    pub status: Option<u16>,
    pub errcode: Option<String>,
    pub message: String,
}

impl Error {
    pub fn msg(message: impl Into<String>) -> Self {
        Self { status: None, errcode: None, message: message.into() }
    }

    /// A short key for counting errors by kind: "429 M_LIMIT_EXCEEDED", "timeout", ...
    pub fn key(&self) -> String {
        match (self.status, &self.errcode) {
            (Some(status), Some(code)) => format!("{status} {code}"),
            (Some(status), None) => format!("HTTP {status}"),
            (None, _) => self.message.split(':').next().unwrap_or("error").to_owned(),
        }
    }

    fn from_reqwest(error: reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else if error.is_body() || error.is_decode() {
            "body"
        } else {
            "request"
        };
        Self::msg(format!("{kind}: {error}"))
    }

    pub fn from_status(status: u16, body: &[u8]) -> Self {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let errcode = json.as_ref().and_then(|j| j["errcode"].as_str()).map(str::to_owned);
        let text = match json.as_ref().and_then(|j| j["error"].as_str()) {
            Some(error) => error.to_owned(),
            None => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        };
        Self { status: Some(status), errcode, message: text }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status, &self.errcode) {
            (Some(status), Some(code)) => write!(f, "HTTP {status} {code}: {}", self.message),
            (Some(status), None) => write!(f, "HTTP {status}: {}", self.message),
            (None, _) => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A successful (2xx) plain exchange: the raw body.
pub struct Reply {
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| Error::msg(format!("body: response is not JSON: {e}")))
    }
}

/// A logged-in device.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    pub token: String,
}

/// One homeserver, reached at `base` (e.g. `http://127.0.0.1:8008`) through one shared
/// connection pool.
pub struct Homeserver {
    http: reqwest::Client,
    base: String,
    /// Default timeout for a request (long-polls set their own).
    pub timeout: Duration,
    versions: SupportedVersions,
}

/// Percent-encodes one path segment or query value (everything but RFC 3986 unreserved).
pub fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Homeserver {
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::msg(format!("--url must start with http:// or https://, got {base:?}")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::msg(format!("building the HTTP client: {e}")))?;
        let versions = SupportedVersions::from_parts(&["v1.12".to_owned()], &Default::default());
        Ok(Self { http, base, timeout, versions })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One plain request. Non-2xx answers are errors carrying status and errcode.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path_and_query}", self.base)).timeout(timeout);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Error::from_reqwest)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(Error::from_reqwest)?.to_vec();
        if !(200..300).contains(&status) {
            return Err(Error::from_status(status, &body));
        }
        Ok(Reply { body })
    }

    pub async fn get(&self, path_and_query: &str, token: Option<&str>, timeout: Duration) -> Result<Reply> {
        self.request(reqwest::Method::GET, path_and_query, token, None, timeout).await
    }

    /// `GET /_matrix/client/versions` with a short timeout (readiness probes).
    pub async fn versions(&self, timeout: Duration) -> Result<()> {
        let reply = self.get("/_matrix/client/versions", None, timeout).await?;
        match reply.json()?.get("versions") {
            Some(Value::Array(_)) => Ok(()),
            _ => Err(Error::msg("body: /versions answered without a versions list")),
        }
    }

    /// `PUT /rooms/{room}/send/m.room.message/{txn}`: returns the event id.
    pub async fn send_text(&self, token: &str, room_id: &str, txn: &str, text: &str) -> Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(room_id), enc(txn));
        let body = serde_json::json!({ "msgtype": "m.text", "body": text });
        let reply = self.request(reqwest::Method::PUT, &path, Some(token), Some(&body), self.timeout).await?;
        let json = reply.json()?;
        json["event_id"].as_str().map(str::to_owned).ok_or_else(|| Error::msg("body: send answered without event_id"))
    }

    /// `POST /user/{userId}/filter`: stores `filter` for the user and returns its id. Clients
    /// such as Element upload their sync filter once and pass the id on every /sync.
    pub async fn create_filter(&self, account: &Account, filter: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&account.user_id));
        let reply =
            self.request(reqwest::Method::POST, &path, Some(&account.token), Some(filter), self.timeout).await?;
        let json = reply.json()?;
        json["filter_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::msg("body: filter upload answered without filter_id"))
    }

    /// `GET /sync` with the given query parameters (already chosen by the caller).
    pub async fn sync(&self, token: &str, params: &[(&str, &str)], timeout: Duration) -> Result<Reply> {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        self.get(&format!("/_matrix/client/v3/sync?{}", query.join("&")), Some(token), timeout).await
    }

    /// Sends a ruma request whose auth scheme takes an access token and whose path is
    /// picked from the spec version history (all the setup endpoints used here).
    pub async fn call<R, A, P>(&self, request: R, token: Option<&str>) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = A, PathBuilder = P>,
        A: for<'a> AuthScheme<Input<'a> = SendAccessToken<'a>>,
        P: for<'a> PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let auth = match token {
            Some(token) => SendAccessToken::IfRequired(token),
            None => SendAccessToken::None,
        };
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&self.base, auth, Cow::Borrowed(&self.versions))
            .map_err(|e| Error::msg(format!("request: cannot build {}: {e}", std::any::type_name::<R>())))?;
        let mut request = reqwest::Request::try_from(http_request)
            .map_err(|e| Error::msg(format!("request: cannot convert: {e}")))?;
        *request.timeout_mut() = Some(self.timeout);
        let response = self.http.execute(request).await.map_err(Error::from_reqwest)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(Error::from_reqwest)?;
        if !(200..300).contains(&status) {
            return Err(Error::from_status(status, &body));
        }
        let http_response = ruma::exports::http::Response::builder()
            .status(status)
            .body(body.as_ref())
            .map_err(|e| Error::msg(format!("body: {e}")))?;
        R::IncomingResponse::try_from_http_response(http_response)
            .map_err(|e| Error::msg(format!("body: {} does not parse: {e}", std::any::type_name::<R>())))
    }

    /// Registers `localpart` with m.login.dummy. Without a password first (cheap on servers
    /// that allow it); again with [`PASSWORD`] when the server insists on one.
    pub async fn register(&self, localpart: &str, password: Option<&str>) -> Result<Account> {
        let mut password = password.map(str::to_owned);
        let mut session: Option<String> = None;
        for _attempt in 0..4 {
            let mut request = register::v3::Request::new();
            request.username = Some(localpart.to_owned());
            request.password = password.clone();
            request.initial_device_display_name = Some("ieum-load".to_owned());
            let mut dummy = Dummy::new();
            dummy.session = session.clone();
            request.auth = Some(AuthData::Dummy(dummy));
            match self.call(request, None).await {
                Ok(response) => {
                    let token = response
                        .access_token
                        .ok_or_else(|| Error::msg("body: register answered without access_token"))?;
                    return Ok(Account { user_id: response.user_id.to_string(), token });
                }
                Err(e)
                    if e.status == Some(400) && password.is_none() && e.message.to_lowercase().contains("password") =>
                {
                    password = Some(PASSWORD.to_owned());
                }
                Err(e) if e.status == Some(401) && session.is_none() => {
                    // User-interactive auth wants a session: start one, then complete
                    // m.login.dummy in it.
                    session = Some(self.uiaa_session(localpart, password.as_deref()).await?.ok_or(e)?);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::msg(format!("register {localpart}: the server kept refusing m.login.dummy")))
    }

    /// Reads the UIAA session id from a 401 answer to an auth-less /register.
    async fn uiaa_session(&self, localpart: &str, password: Option<&str>) -> Result<Option<String>> {
        let mut body = serde_json::json!({ "username": localpart });
        if let Some(password) = password {
            body["password"] = password.into();
        }
        let response = self
            .http
            .post(format!("{}/_matrix/client/v3/register", self.base))
            .json(&body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(Error::from_reqwest)?;
        let json: Value = response.json().await.map_err(Error::from_reqwest)?;
        Ok(json["session"].as_str().map(str::to_owned))
    }

    /// Logs in a new device with a password.
    pub async fn login(&self, user_id: &str, password: &str) -> Result<Account> {
        let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user_id.to_owned()));
        let info = login::v3::LoginInfo::Password(login::v3::Password::new(identifier, password.to_owned()));
        let mut request = login::v3::Request::new(info);
        request.initial_device_display_name = Some("ieum-load".to_owned());
        let response = self.call(request, None).await?;
        Ok(Account { user_id: response.user_id.to_string(), token: response.access_token })
    }

    /// Creates a room: public (anyone may join by id) or private.
    pub async fn create_room(&self, token: &str, name: &str, public: bool) -> Result<String> {
        let mut request = create_room::v3::Request::new();
        request.name = Some(name.to_owned());
        request.preset = Some(if public {
            create_room::v3::RoomPreset::PublicChat
        } else {
            create_room::v3::RoomPreset::PrivateChat
        });
        request.visibility = Visibility::Private; // not listed in the directory
        let response = self.call(request, Some(token)).await?;
        Ok(response.room_id.to_string())
    }

    pub async fn join(&self, token: &str, room_id: &str) -> Result<()> {
        let room_id =
            ruma::OwnedRoomId::try_from(room_id).map_err(|e| Error::msg(format!("room id {room_id}: {e}")))?;
        self.call(join_room_by_id::v3::Request::new(room_id), Some(token)).await.map(|_| ())
    }
}
