//! The bridge between axum and ruma: `Ruma<R>` (a parsed, authenticated ruma request),
//! routing of ruma endpoint types, and rendering of responses and errors.
//!
//! Authentication is decided by the ruma request's auth scheme (`Authenticate`), so a
//! handler cannot forget it: access token -> a local user + device.

use std::{future::Future, net::SocketAddr};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, FromRequestParts, Path, Request, State},
    http,
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingBody, OutgoingResponse, OutgoingResponseExt,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, AuthScheme, NoAccessToken,
        NoAuthentication,
    },
    client::uiaa::UiaaResponse,
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
};
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{ServerSignatures, XMatrix},
    exports::bytes::BufMut,
};

use crate::{
    api::PeerAddr,
    app::App,
    error::{Error, Result},
    service::{appservice::Acting, users::Session},
};

/// A parsed request of endpoint `R` and who sent it.
pub struct Ruma<R> {
    pub body: R,
    /// The authenticated user, for endpoints that take an access token.
    pub session: Option<Session>,
    /// The server that signed the request, for federation endpoints (X-Matrix).
    pub origin: Option<OwnedServerName>,
    /// The client's address (for rate limits and device last-seen).
    pub client_addr: Option<SocketAddr>,
    /// The request had no body at all (endpoints whose body is required refuse that).
    pub empty_body: bool,
    /// The body as sent, for the few endpoints that keep fields ruma's types drop.
    pub raw_body: Bytes,
}

impl<R> Ruma<R> {
    /// Top-level fields of a JSON object body that are not in `known` (empty otherwise).
    pub fn extra_fields(&self, known: &[&str]) -> serde_json::Map<String, serde_json::Value> {
        let mut fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.raw_body).unwrap_or_default();
        fields.retain(|key, _| !known.contains(&key.as_str()));
        fields
    }
}

impl<R> Ruma<R> {
    /// The authenticated user. Present whenever the endpoint's auth scheme requires a token.
    pub fn user(&self) -> Result<&Session> {
        self.session.as_ref().ok_or_else(|| Error::missing_token("Missing access token."))
    }

    /// The requesting server. Present whenever the endpoint takes X-Matrix signatures.
    pub fn origin(&self) -> Result<&ServerName> {
        self.origin.as_deref().ok_or_else(|| Error::unauthorized("Missing X-Matrix authorization."))
    }

    /// A key for per-client rate limits.
    pub fn client_key(&self) -> String {
        self.client_addr.map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into())
    }
}

/// Who sent a request: a local user's session, or another server.
#[derive(Default)]
pub struct Caller {
    pub session: Option<Session>,
    pub origin: Option<OwnedServerName>,
}

impl Caller {
    fn user(session: Session) -> Self {
        Self { session: Some(session), origin: None }
    }
}

/// How each ruma auth scheme authenticates against this server.
pub trait Authenticate: AuthScheme {
    fn authenticate(app: &App, request: &http::Request<Bytes>) -> impl Future<Output = Result<Caller>> + Send;
}

fn bearer_token(request: &http::Request<Bytes>) -> Result<Option<String>> {
    // `Authorization: Bearer ` with nothing after it is sent by clients that have no token
    // yet (a default header); like Synapse, treat it as no token rather than a bad one.
    if let Some(value) = request.headers().get(http::header::AUTHORIZATION)
        && value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"bearer")
    {
        return Ok(query_param(request, "access_token").filter(|t| !t.is_empty()));
    }
    match ruma::api::auth_scheme::extract_bearer_or_query_token(request) {
        Ok(token) => Ok(token),
        Err(_) => Err(Error::unknown_token("Invalid Authorization header.")),
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        let request = http::Request::builder()
            .uri("/x?a=1&user_id=%40kakao_kim%3Aieum.test&b=%E2%9C%93&c=%zz%4")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(super::query_param(&request, "user_id").as_deref(), Some("@kakao_kim:ieum.test"));
        assert_eq!(super::query_param(&request, "b").as_deref(), Some("✓"));
        assert_eq!(super::query_param(&request, "c").as_deref(), Some("%zz%4"));
        assert_eq!(super::query_param(&request, "missing"), None);
    }

    #[test]
    fn an_empty_bearer_is_no_token() {
        let request = |auth: &str, uri: &str| {
            http::Request::builder().uri(uri).header("authorization", auth).body(Bytes::new()).unwrap()
        };
        assert_eq!(bearer_token(&request("Bearer ", "/x")).unwrap(), None);
        assert_eq!(bearer_token(&request("Bearer", "/x")).unwrap(), None);
        assert_eq!(bearer_token(&request("Bearer ", "/x?access_token=abc")).unwrap().as_deref(), Some("abc"));
        assert_eq!(bearer_token(&request("Bearer abc", "/x")).unwrap().as_deref(), Some("abc"));
        assert!(bearer_token(&request("Basic abc", "/x")).is_err());
    }
}

/// One query parameter, percent-decoded (`user_id` for appservice masquerading).
fn query_param(request: &http::Request<Bytes>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session of an application service acting as one of its users.
fn appservice_session(acting: Acting) -> Session {
    Session {
        session_id: format!("as:{}", acting.appservice_id),
        device_id: ruma::OwnedDeviceId::from(format!("AS_{}", acting.appservice_id)),
        user_id: acting.user_id,
        appservice: Some(acting.appservice_id),
        rate_limited: acting.rate_limited,
    }
}

/// An access token: a user's, or an application service's as_token (acting as its sender
/// user, or as `?user_id=` inside its namespace).
async fn user_or_appservice(app: &App, request: &http::Request<Bytes>, token: &str) -> Result<Caller> {
    if !app.appservices.is_empty()
        && let Some(acting) = app.appservices.authenticate(token, query_param(request, "user_id").as_deref())?
    {
        return Ok(Caller::user(appservice_session(acting)));
    }
    app.users.authenticate(token).map(Caller::user)
}

impl Authenticate for AccessToken {
    async fn authenticate(app: &App, request: &http::Request<Bytes>) -> Result<Caller> {
        let token = bearer_token(request)?.ok_or_else(|| Error::missing_token("Missing access token."))?;
        user_or_appservice(app, request, &token).await
    }
}

impl Authenticate for AccessTokenOptional {
    async fn authenticate(app: &App, request: &http::Request<Bytes>) -> Result<Caller> {
        match bearer_token(request)? {
            Some(token) => user_or_appservice(app, request, &token).await,
            None => Ok(Caller::default()),
        }
    }
}

impl Authenticate for AppserviceToken {
    /// Endpoints only an application service may call.
    async fn authenticate(app: &App, request: &http::Request<Bytes>) -> Result<Caller> {
        let token = bearer_token(request)?.ok_or_else(|| Error::missing_token("Missing access token."))?;
        let caller = user_or_appservice(app, request, &token).await?;
        if caller.session.as_ref().is_none_or(|s| s.appservice.is_none()) {
            return Err(Error::forbidden("Only an application service may call this endpoint."));
        }
        Ok(caller)
    }
}

impl Authenticate for AppserviceTokenOptional {
    /// `/login` and `/register`: a token matters only when it is an application service's,
    /// so a client's stale user token in its default headers is ignored, as Synapse does.
    async fn authenticate(app: &App, request: &http::Request<Bytes>) -> Result<Caller> {
        let Some(token) = bearer_token(request)? else { return Ok(Caller::default()) };
        if app.appservices.is_empty() {
            return Ok(Caller::default());
        }
        match app.appservices.authenticate(&token, None)? {
            Some(acting) => Ok(Caller::user(appservice_session(acting))),
            None => Ok(Caller::default()),
        }
    }
}

impl Authenticate for NoAccessToken {
    async fn authenticate(_app: &App, _request: &http::Request<Bytes>) -> Result<Caller> {
        Ok(Caller::default())
    }
}

impl Authenticate for NoAuthentication {
    async fn authenticate(_app: &App, _request: &http::Request<Bytes>) -> Result<Caller> {
        Ok(Caller::default())
    }
}

impl Authenticate for ServerSignatures {
    /// X-Matrix: the origin's signature over method, URI, origin, destination and body,
    /// checked with the origin's published keys; closed-federation policy applies first.
    async fn authenticate(app: &App, request: &http::Request<Bytes>) -> Result<Caller> {
        let xmatrix = XMatrix::extract_from_http_headers(request.headers())
            .map_err(|e| Error::unauthorized(format!("Missing or malformed X-Matrix authorization: {e}")))?;
        let origin = app.federation.verify_request(&xmatrix, request).await?;
        Ok(Caller { session: None, origin: Some(origin) })
    }
}

/// Maps ruma's parse failures to the spec's errcodes.
fn request_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::MethodMismatch { .. } => Error::method_not_allowed(),
        FromHttpRequestError::Deserialization(error) => match error {
            DeserializationError::Json(json) if json.is_syntax() || json.is_eof() => {
                Error::not_json("Content not JSON.")
            }
            DeserializationError::Json(json) => Error::bad_json(format!("Invalid request body: {json}")),
            DeserializationError::Query(query) => {
                let text = query.to_string();
                if text.contains("missing field") {
                    Error::missing_param(format!("Missing query parameter: {text}"))
                } else {
                    Error::invalid_param(format!("Invalid query parameter: {text}"))
                }
            }
            DeserializationError::Ident(id) => Error::invalid_param(format!("Invalid identifier: {id}")),
            DeserializationError::Utf8(_) => Error::not_json("Body is not UTF-8."),
            other => Error::bad_json(format!("Invalid request: {other}")),
        },
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
}

/// Renders an error as the spec's JSON body with its status.
pub fn error_response(error: Error) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(%error, "request failed");
    } else {
        tracing::debug!(%error, "request refused");
    }
    let rendered = match error {
        Error::Uiaa(info) => UiaaResponse::AuthResponse(*info).try_into_http_response::<Vec<u8>>(),
        other => other.to_ruma().try_into_http_response::<Vec<u8>>(),
    };
    match rendered {
        Ok(response) => response.map(Body::from).into_response(),
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A JSON body already serialised, for a response type of our own: one whose JSON ruma's
/// types cannot express (see `api::client::sync::SyncResponse`).
pub struct JsonBody(Vec<u8>);

impl JsonBody {
    pub fn new(body: Vec<u8>) -> Self {
        Self(body)
    }
}

impl OutgoingBody for JsonBody {
    type Error = std::convert::Infallible;

    fn content_type(&self) -> Option<http::HeaderValue> {
        Some(http::HeaderValue::from_static("application/json"))
    }

    fn try_into_buf<T: Default + BufMut + AsRef<[u8]>>(self) -> std::result::Result<T, Self::Error> {
        let mut buf = T::default();
        buf.put_slice(&self.0);
        Ok(buf)
    }
}

fn success_response<T: OutgoingResponse>(response: T) -> Response {
    match response.try_into_http_response::<Vec<u8>>() {
        Ok(response) => response.map(Body::from).into_response(),
        Err(error) => error_response(Error::internal(format!("cannot serialise response: {error}"))),
    }
}

fn method_filter(method: &http::Method) -> MethodFilter {
    match *method {
        http::Method::GET => MethodFilter::GET,
        http::Method::POST => MethodFilter::POST,
        http::Method::PUT => MethodFilter::PUT,
        http::Method::DELETE => MethodFilter::DELETE,
        http::Method::PATCH => MethodFilter::PATCH,
        http::Method::HEAD => MethodFilter::HEAD,
        _ => MethodFilter::OPTIONS,
    }
}

/// The largest body an endpoint accepts, when it is not `http.max_request_bytes` (uploads).
pub type BodyLimit = fn(&App) -> usize;

/// Parses and authenticates one request for endpoint `R`.
async fn extract<R>(
    app: &App,
    request: Request,
    extra_args: &[&str],
    body_limit: Option<BodyLimit>,
    parser: Parser<R>,
) -> Result<Ruma<R>>
where
    R: IncomingRequest,
    R::Authentication: Authenticate,
{
    let (mut parts, body) = request.into_parts();
    let Path(mut args): Path<Vec<String>> = Path::from_request_parts(&mut parts, app)
        .await
        .map_err(|e| Error::invalid_param(format!("Invalid path: {e}")))?;
    args.extend(extra_args.iter().map(|arg| arg.to_string()));
    let client_addr = parts.extensions.get::<ConnectInfo<PeerAddr>>().map(|c| c.0.0);
    // An endpoint with its own (large) body limit takes an access token, which does not
    // depend on the body: it is checked before the body is read, so nobody unauthenticated
    // makes the server buffer an upload.
    let early = match body_limit {
        Some(_) => {
            Some(R::Authentication::authenticate(app, &http::Request::from_parts(parts.clone(), Bytes::new())).await?)
        }
        None => None,
    };
    let limit = body_limit.map_or(app.core.config.http.max_request_bytes, |limit| limit(app));
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::too_large(format!("Request body is larger than {limit} bytes.")))?;
    let request = http::Request::from_parts(parts, bytes);
    let Caller { session, origin } = match early {
        Some(caller) => caller,
        None => R::Authentication::authenticate(app, &request).await?,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (parts, bytes) = request.into_parts();
    let body = parser(parts, &bytes, &args)?;
    Ok(Ruma { body, session, origin, client_addr, empty_body: bytes.is_empty(), raw_body: bytes })
}

/// Reads an endpoint's request from the HTTP head, the body and the path arguments: `parse`,
/// or an endpoint's own fast path in front of it (`route_parsed`).
pub type Parser<R> = fn(http::request::Parts, &[u8], &[&str]) -> Result<R>;

/// Parses the ruma request. Many clients send no body at all where every field is
/// optional (nio's `/join/{roomIdOrAlias}`); like Synapse we read that as `{}`.
pub fn parse<R: IncomingRequest>(parts: http::request::Parts, bytes: &[u8], args: &[&str]) -> Result<R> {
    // Only an empty non-GET body may need the second try: only then keep a copy of the
    // head (its headers are a few allocations, on every request).
    if !bytes.is_empty() || parts.method == http::Method::GET {
        return parse_guarded::<R>(parts, bytes, args)?.map_err(request_error);
    }
    match parse_guarded::<R>(parts.clone(), bytes, args)? {
        Ok(request) => Ok(request),
        Err(_) => parse_guarded::<R>(parts, b"{}", args)?.map_err(request_error),
    }
}

/// ruma's parsers are trusted with hostile input, but a few index JSON maps and can panic
/// on a missing field (`/login` without `type`): such a panic is a 400, not a dropped
/// connection.
fn parse_guarded<R: IncomingRequest>(
    parts: http::request::Parts,
    bytes: &[u8],
    args: &[&str],
) -> Result<Result<R, FromHttpRequestError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        R::try_from_http_request(http::Request::from_parts(parts, bytes), args)
    }))
    .map_err(|_| Error::bad_json("The request body is missing required fields."))
}

/// Adds endpoint `R` (all its paths) to the router, served by `handler`.
pub fn route<R, F, Fut>(router: Router<App>, handler: F) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    route_full(router, handler, None, parse::<R>)
}

/// Like `route`, for an endpoint whose body may be larger than `http.max_request_bytes`
/// (media uploads): `body_limit` gives its own limit (M_TOO_LARGE above it).
pub fn route_limited<R, F, Fut>(router: Router<App>, handler: F, body_limit: BodyLimit) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    route_full(router, handler, Some(body_limit), parse::<R>)
}

/// Like `route`, for a handler that answers with its own response type: ruma's response
/// plus what ruma's type cannot say (sliding sync's `expanded_timeline`, the fields /sync
/// always writes).
pub fn route_responding<R, T, F, Fut>(router: Router<App>, handler: F) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    T: OutgoingResponse,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    route_full(router, handler, None, parse::<R>)
}

/// Like `route_responding`, with the endpoint's own request parser (`/sync`'s fast path).
pub fn route_parsed<R, T, F, Fut>(router: Router<App>, handler: F, parser: Parser<R>) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    T: OutgoingResponse,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    route_full(router, handler, None, parser)
}

fn route_full<R, T, F, Fut>(
    mut router: Router<App>,
    handler: F,
    body_limit: Option<BodyLimit>,
    parser: Parser<R>,
) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    T: OutgoingResponse,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let filter = method_filter(&R::METHOD);
    for path in R::PATH_BUILDER.all_paths() {
        let handler = handler.clone();
        router = router.route(
            path,
            on(filter, move |State(app): State<App>, request: Request| {
                let handler = handler.clone();
                async move {
                    match extract::<R>(&app, request, &[], body_limit, parser).await {
                        Ok(request) => match handler(app, request).await {
                            Ok(response) => success_response(response),
                            Err(error) => error_response(error),
                        },
                        Err(error) => error_response(error),
                    }
                }
            }),
        );
    }
    router
}

/// Like `route`, for an extra path (e.g. a state URL with an empty trailing state key),
/// with fixed trailing path arguments appended.
pub fn route_extra<R, F, Fut>(
    router: Router<App>,
    path: &'static str,
    extra_args: &'static [&'static str],
    handler: F,
) -> Router<App>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    F: Fn(App, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    let filter = method_filter(&R::METHOD);
    router.route(
        path,
        on(filter, move |State(app): State<App>, request: Request| {
            let handler = handler.clone();
            async move {
                match extract::<R>(&app, request, extra_args, None, parse::<R>).await {
                    Ok(request) => match handler(app, request).await {
                        Ok(response) => success_response(response),
                        Err(error) => error_response(error),
                    },
                    Err(error) => error_response(error),
                }
            }
        }),
    )
}
