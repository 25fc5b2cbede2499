//! The one place that reads configuration: a TOML file, then `IEUM_*` environment overrides.
//!
//! Environment overrides name a field by its path, upper-cased, with `__` between levels:
//! `IEUM_SERVER_NAME`, `IEUM_HTTP__LISTEN`, `IEUM_REGISTRATION__ENABLED`. Values are read as
//! TOML when they parse as TOML (`true`, `42`, `["a", "b"]`) and as plain strings otherwise.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Deserializer, Serialize};

/// Where the development server listens and what it is called when no config file is given.
pub const DEV_ADDRESS: &str = "127.0.0.1:8008";
pub const DEV_SERVER_NAME: &str = "localhost:8008";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server name: the part after the colon in user ids (`@alice:SERVER_NAME`).
    /// Cannot be changed once users exist.
    pub server_name: OwnedServerName,
    /// The public URL clients use, advertised in `/.well-known/matrix/client`.
    /// Default: `http://{server_name}`.
    #[serde(default)]
    pub public_baseurl: Option<String>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    #[serde(default)]
    pub rooms: RoomsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub appservices: AppservicesConfig,
    /// Memory for caches and for RocksDB's write buffers.
    #[serde(default)]
    pub memory: MemoryConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Track and share presence (online while a client syncs, offline soon after the last
    /// sync ends; shared in /sync and with other servers). Off: presence updates are
    /// accepted and ignored, nothing is shared, other servers' presence is dropped.
    /// Default on.
    pub enabled: bool,
    /// A user whose clients all stopped syncing is shown offline this long after the last
    /// sync ended, in milliseconds. Default 30000.
    pub offline_after_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { enabled: true, offline_after_ms: 30_000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Addresses to listen on for plain HTTP (client API). Default `["127.0.0.1:8008"]`.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Largest request body accepted, in bytes (M_TOO_LARGE above it). Default 1 MiB.
    pub max_request_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: vec![DEV_ADDRESS.parse().expect("valid address")], max_request_bytes: 1024 * 1024 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Directory of the embedded RocksDB database. Default `./data`.
    pub path: PathBuf,
    /// Fsync the write-ahead log before answering (keep true: a 200 means durable).
    pub sync_writes: bool,
}

/// How much memory the server's caches may use, in MiB each (estimated heap bytes: the
/// process uses somewhat more). Bigger caches serve more from memory on a server with many
/// large rooms. The defaults: about 130 MB PSS after the headline W1-W3 and W9 benchmark
/// load (2,500 rooms, one of 1,000 members); the W3 initial sync of 500 rooms and the
/// fan-out to 1,000 clients were no slower than with 48/48/64/32 (docs/benchmarks.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Parsed events, read by sync, push rules and authorisation.
    pub event_cache_mb: usize,
    /// Room state maps (one per state change), read by every send and sync.
    pub state_cache_mb: usize,
    /// RocksDB's cache of uncompressed blocks read from disk.
    pub block_cache_mb: usize,
    /// RocksDB's write buffers (memtables) of all tables together; a full one is flushed.
    pub write_buffer_mb: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { event_cache_mb: 32, state_cache_mb: 16, block_cache_mb: 64, write_buffer_mb: 16 }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self { path: PathBuf::from("data"), sync_writes: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Allow anyone who can reach the server to register (m.login.dummy).
    /// Default false; the development server (no config file) turns it on.
    pub enabled: bool,
    /// If non-empty, registration requires one of these tokens (m.login.registration_token)
    /// even when `enabled` is false.
    pub tokens: Vec<String>,
    /// Shared secret for `/_synapse/admin/v1/register` (HMAC-SHA1). Unset: endpoint disabled.
    pub shared_secret: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Turn every rate limit on or off. Default on.
    pub enabled: bool,
    /// Login attempts per client address.
    pub login: RateLimit,
    /// Registrations per client address.
    pub registration: RateLimit,
    /// Events sent per user.
    pub message: RateLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login: RateLimit { per_second: 0.5, burst: 10 },
            registration: RateLimit { per_second: 0.2, burst: 5 },
            message: RateLimit { per_second: 20.0, burst: 100 },
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Room version for new rooms when the client does not ask for one. Default "12".
    pub default_version: RoomVersionId,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { default_version: RoomVersionId::V12 }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens in milliseconds for clients that support refresh tokens.
    /// Unset (default): access tokens do not expire and refresh tokens are not issued.
    pub access_token_lifetime_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A tracing filter (`info`, `ieum=debug,info`). `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        // ruma's push evaluation opens an info span per nested JSON value it flattens (2% of
        // a message's CPU when formatted); state resolution logs per event at info.
        Self { filter: "info,ruma_state_res=warn,ruma_common=warn".into() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Talk to other homeservers at all. Off: every federation request is refused with
    /// M_FORBIDDEN and nothing is sent out. Default on.
    pub enabled: bool,
    /// Addresses to serve HTTPS on (federation and client API), with `tls_cert`/`tls_key`.
    /// Other servers connect to the port in the server name (default 8448). Empty: no TLS
    /// listener (behind a reverse proxy that terminates TLS, federation is served on
    /// `http.listen`).
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain for the TLS listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the TLS listeners.
    pub tls_key: Option<PathBuf>,
    /// Development only: when `tls_cert`/`tls_key` are unset, generate a self-signed pair
    /// for the server name under the storage directory (`tls/`) and use it.
    pub self_signed: bool,
    /// Closed federation: server-name patterns (`*` wildcard) this server may talk to.
    /// Empty: any server not denied. Every server of a closed federation should carry the
    /// same list.
    pub allow: Vec<String>,
    /// Server-name patterns this server never talks to (wins over `allow`).
    pub deny: Vec<String>,
    /// Server name -> `host:port` to connect to instead of discovery (tests, private networks).
    pub overrides: BTreeMap<String, String>,
    /// Servers whose TLS certificates are not verified (test peers with self-signed
    /// certificates only).
    pub skip_verify: Vec<String>,
    /// Notary servers asked for keys when a server cannot be asked itself. Default none.
    pub trusted_key_servers: Vec<String>,
    /// Timeout of one outbound federation request, in milliseconds. Default 30000.
    pub request_timeout_ms: u64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            self_signed: false,
            allow: Vec::new(),
            deny: Vec::new(),
            overrides: BTreeMap::new(),
            skip_verify: Vec::new(),
            trusted_key_servers: Vec::new(),
            request_timeout_ms: 30_000,
        }
    }
}

/// What the old unauthenticated media endpoints (`/_matrix/media/{r0,v3}/download|thumbnail`)
/// serve. Matrix 1.11 replaced them with `/_matrix/client/v1/media/*` (access token required).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyMedia {
    /// Media uploaded here (and remote media already cached) is served; remote media is
    /// never fetched for them. Older clients keep showing local images.
    Local,
    /// Every request answers M_NOT_FOUND (Synapse's `enable_authenticated_media` freeze
    /// with nothing before the freeze).
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest upload in bytes (M_TOO_LARGE above it), advertised as `m.upload.size`.
    /// Default 50 MiB.
    pub max_upload_size: usize,
    /// Largest remote file fetched over federation, in bytes. Default 50 MiB.
    pub max_remote_size: usize,
    /// The unauthenticated `/_matrix/media/{r0,v3}/download|thumbnail|config` endpoints:
    /// "local" (default) or "off". See `LegacyMedia`.
    pub legacy_unauthenticated: LegacyMedia,
    /// With `legacy_unauthenticated = "local"`: when set (ms since the epoch), only media
    /// created before this moment is served there (a freeze, as Synapse does it).
    pub legacy_frozen_after_ms: Option<u64>,
    /// Async uploads (`POST /_matrix/media/v1/create`) a user may hold unfilled at once
    /// (M_LIMIT_EXCEEDED above it). Default 10.
    pub max_pending_uploads: usize,
    /// How long a reserved async upload id stays usable, in milliseconds. Default 24 h.
    pub unused_expiry_ms: u64,
    /// Largest image (width x height, in pixels) decoded to make a thumbnail; larger ones
    /// answer M_TOO_LARGE without being decoded. Default 32 megapixels.
    pub max_thumbnail_pixels: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_size: 50 * 1024 * 1024,
            max_remote_size: 50 * 1024 * 1024,
            legacy_unauthenticated: LegacyMedia::Local,
            legacy_frozen_after_ms: None,
            max_pending_uploads: 10,
            unused_expiry_ms: 24 * 3600 * 1000,
            max_thumbnail_pixels: 32_000_000,
        }
    }
}

/// Application services (bridges, bots).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppservicesConfig {
    /// Registration files (the spec's YAML). An invalid file, or two registrations that
    /// clash (ids, tokens, exclusive namespaces), stops start-up with the file and field named.
    pub registrations: Vec<PathBuf>,
}

/// Push notifications: delivery to the push gateways of users' HTTP pushers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Send notifications to push gateways at all. Off: pushers can still be set and counts
    /// are kept, but nothing is queued or sent. Default on.
    pub enabled: bool,
    /// Timeout of one request to a push gateway (connect and answer), in milliseconds.
    /// Default 10000.
    pub request_timeout_ms: u64,
    /// Attempts per notification before it is given up. Default 10.
    pub max_attempts: u32,
    /// A notification older than this (ms since it was queued) is given up. Default one day.
    pub max_age_ms: u64,
    /// Wait after the first failure (ms); doubled after each further one. Default 1000.
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts (ms). Default one hour.
    pub max_backoff_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            request_timeout_ms: 10_000,
            max_attempts: 10,
            max_age_ms: 24 * 3600 * 1000,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 3600 * 1000,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(list) => Ok(list),
        OneOrMany::One(text) => {
            text.split(',').map(|part| part.trim().parse().map_err(serde::de::Error::custom)).collect()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads a config file (or the development defaults when `path` is None) and applies
    /// the `IEUM_*` variables from `env`.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| ConfigError::Invalid { origin: path.display().to_string(), message: e.to_string() })?;
                (table, path.display().to_string())
            }
            None => (dev_defaults(), "development defaults".to_owned()),
        };
        apply_env(&mut table, env);
        // Each limit has its own defaults, so a partial override (one field of one limit)
        // is laid over the full defaults rather than replacing them.
        let defaults = toml::Value::try_from(RateLimitConfig::default()).expect("defaults serialise");
        let section = table.entry("rate_limits").or_insert_with(|| toml::Table::new().into());
        merge_under(section, &defaults);
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid { origin: origin.clone(), message: e.to_string() })?;
        config.validate().map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.http.listen.is_empty() {
            return Err("http.listen: at least one address is needed".into());
        }
        if self.http.max_request_bytes < 65_536 {
            return Err("http.max_request_bytes: must be at least 65536 (one PDU)".into());
        }
        if self.rooms.default_version.rules().is_none()
            || !crate::service::rooms::SUPPORTED_CREATE_VERSIONS.contains(&self.rooms.default_version)
        {
            return Err(format!(
                "rooms.default_version: {} is not a version ieum creates rooms in (10, 11, 12)",
                self.rooms.default_version
            ));
        }
        let federation = &self.federation;
        if !federation.listen.is_empty()
            && (federation.tls_cert.is_none() || federation.tls_key.is_none())
            && !federation.self_signed
        {
            return Err("federation.listen: a TLS listener needs federation.tls_cert and federation.tls_key \
                        (or federation.self_signed = true for development)"
                .into());
        }
        if federation.tls_cert.is_some() != federation.tls_key.is_some() {
            return Err("federation.tls_cert and federation.tls_key: set both or neither".into());
        }
        for (name, target) in &federation.overrides {
            if ruma::ServerName::parse(name).is_err() {
                return Err(format!("federation.overrides: {name:?} is not a server name"));
            }
            if !target.contains(':') {
                return Err(format!("federation.overrides.{name}: {target:?} must be host:port"));
            }
        }
        if federation.request_timeout_ms < 100 {
            return Err("federation.request_timeout_ms: must be at least 100".into());
        }
        if self.media.max_upload_size == 0 || self.media.max_pending_uploads == 0 {
            return Err("media.max_upload_size and media.max_pending_uploads: must be positive".into());
        }
        for (name, limit) in [
            ("login", self.rate_limits.login),
            ("registration", self.rate_limits.registration),
            ("message", self.rate_limits.message),
        ] {
            if !(limit.per_second > 0.0) || limit.burst == 0 {
                return Err(format!("rate_limits.{name}: per_second and burst must be positive"));
            }
        }
        // RocksDB reads a write buffer budget of 0 as "no limit"; an absurd size would
        // overflow the byte count.
        let memory = &self.memory;
        for (name, mb) in [
            ("event_cache_mb", memory.event_cache_mb),
            ("state_cache_mb", memory.state_cache_mb),
            ("block_cache_mb", memory.block_cache_mb),
            ("write_buffer_mb", memory.write_buffer_mb),
        ] {
            if !(1..=1 << 20).contains(&mb) {
                return Err(format!("memory.{name}: must be between 1 and 1048576 (MiB)"));
            }
        }
        Ok(())
    }

    /// The base URL clients should use.
    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.server_name),
        }
    }
}

/// The development server: loopback only, so open registration is safe.
fn dev_defaults() -> toml::Table {
    let mut table = toml::Table::new();
    table.insert("server_name".into(), DEV_SERVER_NAME.into());
    let mut registration = toml::Table::new();
    registration.insert("enabled".into(), true.into());
    table.insert("registration".into(), registration.into());
    table
}

/// Fills what `value` lacks from `defaults`, recursively; what `value` has wins.
fn merge_under(value: &mut toml::Value, defaults: &toml::Value) {
    if let (toml::Value::Table(table), toml::Value::Table(defaults)) = (value, defaults) {
        for (key, default) in defaults {
            match table.get_mut(key) {
                Some(existing) => merge_under(existing, default),
                None => {
                    table.insert(key.clone(), default.clone());
                }
            }
        }
    }
}

fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    for (key, value) in env {
        let Some(path) = key.strip_prefix("IEUM_") else { continue };
        if path.is_empty() {
            continue;
        }
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut node = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = node.entry(part.clone()).or_insert_with(|| toml::Table::new().into());
            if !entry.is_table() {
                *entry = toml::Table::new().into();
            }
            node = entry.as_table_mut().expect("just made a table");
        }
        node.insert(parts[parts.len() - 1].clone(), parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dev_defaults_open_registration_on_loopback() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.server_name.as_str(), DEV_SERVER_NAME);
        assert!(config.registration.enabled);
        assert_eq!(config.http.listen, vec![DEV_ADDRESS.parse().unwrap()]);
        assert_eq!(config.rooms.default_version, RoomVersionId::V12);
    }

    #[test]
    fn env_overrides_nested_fields() {
        let config = Config::load(
            None,
            env(&[
                ("IEUM_SERVER_NAME", "example.test"),
                ("IEUM_HTTP__LISTEN", "127.0.0.1:1, 127.0.0.1:2"),
                ("IEUM_REGISTRATION__ENABLED", "false"),
                ("IEUM_RATE_LIMITS__MESSAGE__BURST", "7"),
                ("IEUM_MEMORY__STATE_CACHE_MB", "8"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server_name.as_str(), "example.test");
        assert_eq!(config.http.listen.len(), 2);
        assert!(!config.registration.enabled);
        assert_eq!(config.rate_limits.message.burst, 7);
        assert_eq!(config.memory.state_cache_mb, 8);
        assert_eq!(config.memory.event_cache_mb, MemoryConfig::default().event_cache_mb);
    }

    #[test]
    fn the_example_file_parses_and_is_complete() {
        let path = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("config/homeserver.example.toml");
        let config = Config::load(Some(&path), env(&[])).unwrap();
        // A config file means production: registration is off unless enabled.
        assert!(!config.registration.enabled);
        assert!(config.rate_limits.enabled);
        // The example shows the defaults.
        let (example, default) = (&config.memory, MemoryConfig::default());
        assert_eq!(
            (example.event_cache_mb, example.state_cache_mb, example.block_cache_mb, example.write_buffer_mb),
            (default.event_cache_mb, default.state_cache_mb, default.block_cache_mb, default.write_buffer_mb)
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = Config::load(None, env(&[("IEUM_ROOMS__DEFAULT_VERSION", "\"3\"")])).unwrap_err();
        assert!(err.to_string().contains("rooms.default_version"), "{err}");
        let err = Config::load(None, env(&[("IEUM_HTTP__LISTEN", "not-an-address")])).unwrap_err();
        assert!(err.to_string().contains("development defaults"), "{err}");
        let err = Config::load(None, env(&[("IEUM_MEMORY__WRITE_BUFFER_MB", "0")])).unwrap_err();
        assert!(err.to_string().contains("memory.write_buffer_mb"), "{err}");
    }
}
