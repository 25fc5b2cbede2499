//! Outbound federation requests: resolve the destination (discovery), sign the request with
//! X-Matrix (ruma), and send it over TLS (rustls) with the right SNI and `Host` header.
//!
//! reqwest picks SNI from the URL's host, so the URL names the TLS name and a DNS hook
//! (`AddressBook`) connects to the address discovery chose (an SRV target, a well-known
//! delegate, or a configured override).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use ruma::{
    OwnedServerName, ServerName,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
    },
    signatures::Ed25519KeyPair,
};

use crate::{
    discovery::{Destination, Lookup, Resolver},
    policy::Policy,
};

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation with {0} is not permitted by this server's policy")]
    NotPermitted(String),
    #[error("cannot resolve server name {0}")]
    Unresolvable(String),
    #[error("cannot reach {server}: {detail}")]
    Network { server: String, detail: String },
    #[error("{server} answered {status}: {body}")]
    Remote { server: String, status: u16, body: String },
    #[error("unexpected answer from {server}: {detail}")]
    BadResponse { server: String, detail: String },
}

/// The real network: HTTPS for well-known files, DNS for SRV records.
pub struct NetLookup {
    dns: TokioResolver,
    http: reqwest::Client,
}

impl NetLookup {
    pub fn new(timeout: Duration) -> Result<Self, FederationError> {
        let dns = TokioResolver::builder_tokio()
            .map_err(|e| FederationError::Network { server: "DNS".into(), detail: e.to_string() })?
            .build();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| FederationError::Network { server: "HTTP".into(), detail: e.to_string() })?;
        Ok(Self { dns, http })
    }

    async fn lookup_ips(&self, host: &str) -> Vec<IpAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![ip];
        }
        match self.dns.lookup_ip(host).await {
            Ok(ips) => ips.iter().collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Option<(String, Duration)> {
        let response = self.http.get(format!("https://{host}/.well-known/matrix/server")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').find_map(|part| part.trim().strip_prefix("max-age=")?.parse::<u64>().ok()))
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(24 * 3600));
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        let server = body.get("m.server")?.as_str()?.to_owned();
        Some((server, max_age))
    }

    async fn srv(&self, name: &str) -> Vec<(String, u16)> {
        match self.dns.srv_lookup(name).await {
            Ok(records) => {
                let mut records: Vec<_> =
                    records.iter().map(|srv| (srv.priority(), srv.target().to_utf8(), srv.port())).collect();
                records.sort_by_key(|(priority, _, _)| *priority);
                records.into_iter().map(|(_, target, port)| (target, port)).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// TLS names -> the addresses discovery chose for them (reqwest's DNS hook).
#[derive(Default)]
struct AddressBook {
    entries: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl Resolve for AddressBook {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(name.as_str()).cloned();
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                None => Err(format!("no address for {}", name.as_str()).into()),
            }
        })
    }
}

/// Settings of the outbound client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server name -> `host:port` to connect to instead of discovery.
    pub overrides: HashMap<String, String>,
    /// Servers whose TLS certificates are not verified (test peers only).
    pub skip_verify: HashSet<String>,
    pub timeout: Duration,
    pub policy: Policy,
}

pub struct FederationClient {
    origin: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    resolver: Resolver<NetLookup>,
    addresses: Arc<AddressBook>,
    verified: reqwest::Client,
    unverified: reqwest::Client,
    config: ClientConfig,
}

impl FederationClient {
    pub fn new(
        origin: OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        config: ClientConfig,
    ) -> Result<Self, FederationError> {
        let addresses = Arc::new(AddressBook::default());
        let build = |verify: bool| {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(10)))
                .dns_resolver(addresses.clone())
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(!verify)
                .build()
                .map_err(|e| FederationError::Network { server: "TLS client".into(), detail: e.to_string() })
        };
        Ok(Self {
            resolver: Resolver::new(NetLookup::new(config.timeout)?, config.overrides.clone()),
            verified: build(true)?,
            unverified: build(false)?,
            addresses,
            origin,
            key,
            config,
        })
    }

    /// Our server name: the `origin` of every request.
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    async fn destination(&self, server: &ServerName) -> Result<(String, Destination), FederationError> {
        let destination = self
            .resolver
            .resolve(server.as_str())
            .await
            .ok_or_else(|| FederationError::Unresolvable(server.to_string()))?;
        let url_host = match &destination.tls_name {
            Some(name) => {
                let ips = self.resolver.lookup().lookup_ips(&destination.connect_host).await;
                if ips.is_empty() {
                    return Err(FederationError::Unresolvable(server.to_string()));
                }
                let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, destination.port)).collect();
                self.addresses.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), addrs);
                name.clone()
            }
            None if destination.connect_host.contains(':') => format!("[{}]", destination.connect_host),
            None => destination.connect_host.clone(),
        };
        Ok((format!("https://{url_host}:{}", destination.port), destination))
    }

    /// Sends a signed federation request to `server` and parses the answer.
    pub async fn send<R>(&self, server: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_permitted(server)?;
        let (base_url, destination) = self.destination(server).await?;
        let input = XMatrixSigningInput::new(self.origin.clone(), server.to_owned(), &self.key);
        let http_request = request.try_into_http_request::<Vec<u8>>(&base_url, input, ()).map_err(|e| {
            FederationError::BadResponse { server: server.to_string(), detail: format!("cannot build request: {e}") }
        })?;
        self.execute::<R>(server, &destination, http_request, MAX_RESPONSE_BYTES).await
    }

    /// Like `send`, refusing an answer larger than `max_bytes` (remote media: the caller's
    /// own size cap, not the 256 MiB allowed for a `/send_join`).
    pub async fn send_limited<R>(
        &self,
        server: &ServerName,
        request: R,
        max_bytes: u64,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_permitted(server)?;
        let (base_url, destination) = self.destination(server).await?;
        let input = XMatrixSigningInput::new(self.origin.clone(), server.to_owned(), &self.key);
        let http_request = request.try_into_http_request::<Vec<u8>>(&base_url, input, ()).map_err(|e| {
            FederationError::BadResponse { server: server.to_string(), detail: format!("cannot build request: {e}") }
        })?;
        self.execute::<R>(server, &destination, http_request, max_bytes.min(MAX_RESPONSE_BYTES)).await
    }

    /// Sends an unauthenticated request (key fetches) to `server` and parses the answer.
    pub async fn send_unsigned<R>(
        &self,
        server: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.check_permitted(server)?;
        let (base_url, destination) = self.destination(server).await?;
        let http_request = request.try_into_http_request::<Vec<u8>>(&base_url, (), ()).map_err(|e| {
            FederationError::BadResponse { server: server.to_string(), detail: format!("cannot build request: {e}") }
        })?;
        self.execute::<R>(server, &destination, http_request, MAX_RESPONSE_BYTES).await
    }

    fn check_permitted(&self, server: &ServerName) -> Result<(), FederationError> {
        if server == self.origin {
            return Err(FederationError::NotPermitted(format!("{server} (ourselves)")));
        }
        if !self.config.policy.permits(server.as_str()) {
            return Err(FederationError::NotPermitted(server.to_string()));
        }
        Ok(())
    }

    async fn execute<R: OutgoingRequest>(
        &self,
        server: &ServerName,
        destination: &Destination,
        http_request: ruma::exports::http::Request<Vec<u8>>,
        limit: u64,
    ) -> Result<R::IncomingResponse, FederationError> {
        let client = if self.config.skip_verify.contains(server.as_str()) { &self.unverified } else { &self.verified };
        let (parts, body) = http_request.into_parts();
        let mut headers = parts.headers;
        headers.insert(
            reqwest::header::HOST,
            destination.host_header.parse().map_err(|_| FederationError::Unresolvable(server.to_string()))?,
        );
        let response = client
            .request(parts.method, parts.uri.to_string())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| FederationError::Network { server: server.to_string(), detail: error_chain(&e) })?;
        let status = response.status();
        // Kept for the parser: multipart answers (federation media) need their Content-Type.
        let headers = response.headers().clone();
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(FederationError::BadResponse {
                server: server.to_string(),
                detail: format!("answer larger than {limit} bytes"),
            });
        }
        let bytes = read_limited(response, limit)
            .await
            .map_err(|detail| FederationError::Network { server: server.to_string(), detail })?;
        if !status.is_success() {
            return Err(FederationError::Remote {
                server: server.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        let mut builder = ruma::exports::http::Response::builder().status(status.as_u16());
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
        let http_response = builder
            .body(bytes.as_slice())
            .map_err(|e| FederationError::BadResponse { server: server.to_string(), detail: e.to_string() })?;
        R::IncomingResponse::try_from_http_response(http_response)
            .map_err(|e| FederationError::BadResponse { server: server.to_string(), detail: e.to_string() })
    }
}

/// The largest answer read from another server (a /send_join of a big room is tens of MB).
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a response body, refusing to buffer more than `limit` bytes (a hostile peer may
/// stream forever).
async fn read_limited(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The whole chain of an error (reqwest hides the cause behind "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
