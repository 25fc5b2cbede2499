//! Server discovery: from a server name to where to connect, which `Host` header to send and
//! which TLS server name to present, exactly in the spec's order — IP literal; explicit
//! port; `/.well-known/matrix/server` (cached, failures backed off); SRV `_matrix-fed._tcp`
//! then the deprecated `_matrix._tcp`; port 8448. A configured override map (server name
//! -> address) comes first, for tests and private networks.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Where and how to reach a homeserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Host (name or IP literal, without brackets) to open the TCP connection to.
    pub connect_host: String,
    pub port: u16,
    /// The `Host` header of requests.
    pub host_header: String,
    /// The name for TLS SNI and certificate checks; None for IP literals.
    pub tls_name: Option<String>,
}

/// What discovery needs from the network (DNS SRV and the well-known file); a trait so
/// the algorithm is tested without a network.
pub trait Lookup: Send + Sync {
    /// `m.server` of `https://{host}/.well-known/matrix/server`, with how long it may be
    /// cached; None when the file is absent or invalid.
    fn well_known(&self, host: &str) -> impl Future<Output = Option<(String, Duration)>> + Send;
    /// SRV records for `name` as (target, port), in priority order; empty when none.
    fn srv(&self, name: &str) -> impl Future<Output = Vec<(String, u16)>> + Send;
}

const DEFAULT_PORT: u16 = 8448;
/// How long a failed well-known lookup is remembered before trying again.
const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(600);
/// Upper bound on how long a successful well-known answer is trusted.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);

/// Splits `host[:port]` (IPv6 literals in brackets). None for malformed names.
pub fn split_server_name(name: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            port => Some(port.strip_prefix(':')?.parse().ok()?),
        };
        return Some((ip.to_owned(), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((name.to_owned(), None)),
    }
}

fn is_ip(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// The `Host` header form of host + optional port (IPv6 in brackets).
fn host_with_port(host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

pub struct Resolver<L> {
    lookup: L,
    overrides: HashMap<String, String>,
    well_known_cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl<L: Lookup> Resolver<L> {
    /// `overrides` maps server names to `host:port` addresses to connect to directly.
    pub fn new(lookup: L, overrides: HashMap<String, String>) -> Self {
        Self { lookup, overrides, well_known_cache: Mutex::default() }
    }

    /// The network lookups behind this resolver.
    pub fn lookup(&self) -> &L {
        &self.lookup
    }

    /// Resolves a server name. None when the name is malformed.
    pub async fn resolve(&self, server_name: &str) -> Option<Destination> {
        let (host, port) = split_server_name(server_name)?;
        if let Some(address) = self.overrides.get(server_name) {
            let (connect_host, connect_port) = split_server_name(address)?;
            return Some(Destination {
                connect_host,
                port: connect_port.unwrap_or(DEFAULT_PORT),
                host_header: server_name.to_owned(),
                tls_name: (!is_ip(&host)).then(|| host.clone()),
            });
        }
        // 1. IP literal; 2. hostname with an explicit port.
        if is_ip(&host) || port.is_some() {
            return Some(Destination {
                tls_name: (!is_ip(&host)).then(|| host.clone()),
                connect_host: host.clone(),
                port: port.unwrap_or(DEFAULT_PORT),
                host_header: host_with_port(&host, port),
            });
        }
        // 3. Delegation through the well-known file.
        if let Some(delegated) = self.well_known(&host).await
            && let Some((target, target_port)) = split_server_name(&delegated)
        {
            if is_ip(&target) || target_port.is_some() {
                return Some(Destination {
                    tls_name: (!is_ip(&target)).then(|| target.clone()),
                    connect_host: target.clone(),
                    port: target_port.unwrap_or(DEFAULT_PORT),
                    host_header: host_with_port(&target, target_port),
                });
            }
            return Some(self.srv_or_default(&target).await);
        }
        // 4-6. SRV on the server name itself, then port 8448.
        Some(self.srv_or_default(&host).await)
    }

    async fn srv_or_default(&self, host: &str) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Some((target, port)) = self.lookup.srv(&format!("{service}.{host}")).await.into_iter().next() {
                return Destination {
                    connect_host: target.trim_end_matches('.').to_owned(),
                    port,
                    host_header: host.to_owned(),
                    tls_name: Some(host.to_owned()),
                };
            }
        }
        Destination {
            connect_host: host.to_owned(),
            port: DEFAULT_PORT,
            host_header: host.to_owned(),
            tls_name: Some(host.to_owned()),
        }
    }

    async fn well_known(&self, host: &str) -> Option<String> {
        if let Some((answer, until)) = self.well_known_cache.lock().unwrap_or_else(|e| e.into_inner()).get(host)
            && *until > Instant::now()
        {
            return answer.clone();
        }
        let (answer, ttl) = match self.lookup.well_known(host).await {
            Some((server, ttl)) => (Some(server), ttl.min(WELL_KNOWN_MAX_TTL)),
            None => (None, WELL_KNOWN_FAILURE_TTL),
        };
        self.well_known_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), (answer.clone(), Instant::now() + ttl));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake network: well-known answers and SRV records by name.
    #[derive(Default)]
    struct Fake {
        well_known: HashMap<&'static str, &'static str>,
        srv: HashMap<&'static str, (&'static str, u16)>,
        well_known_calls: std::sync::atomic::AtomicUsize,
    }

    impl Lookup for Fake {
        async fn well_known(&self, host: &str) -> Option<(String, Duration)> {
            self.well_known_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.well_known.get(host).map(|s| (s.to_string(), Duration::from_secs(3600)))
        }

        async fn srv(&self, name: &str) -> Vec<(String, u16)> {
            self.srv.get(name).map(|(t, p)| vec![(t.to_string(), *p)]).unwrap_or_default()
        }
    }

    fn dest(connect: &str, port: u16, host: &str, tls: Option<&str>) -> Destination {
        Destination { connect_host: connect.into(), port, host_header: host.into(), tls_name: tls.map(Into::into) }
    }

    #[tokio::test]
    async fn follows_the_spec_order() {
        let mut fake = Fake::default();
        fake.well_known.insert("delegated.test", "matrix.delegated.test:8443");
        fake.well_known.insert("delegated-srv.test", "hs.delegated-srv.test");
        fake.well_known.insert("delegated-ip.test", "10.0.0.9");
        fake.srv.insert("_matrix-fed._tcp.hs.delegated-srv.test", ("box.delegated-srv.test.", 9000));
        fake.srv.insert("_matrix-fed._tcp.srv.test", ("node.srv.test", 7000));
        fake.srv.insert("_matrix._tcp.oldsrv.test", ("node.oldsrv.test", 7001));
        let resolver = Resolver::new(fake, HashMap::from([("pinned.test".into(), "127.0.0.1:9999".into())]));
        let cases = [
            ("1.2.3.4", dest("1.2.3.4", 8448, "1.2.3.4", None)),
            ("1.2.3.4:80", dest("1.2.3.4", 80, "1.2.3.4:80", None)),
            ("[::1]:8448", dest("::1", 8448, "[::1]:8448", None)),
            ("example.test:1234", dest("example.test", 1234, "example.test:1234", Some("example.test"))),
            (
                "delegated.test",
                dest("matrix.delegated.test", 8443, "matrix.delegated.test:8443", Some("matrix.delegated.test")),
            ),
            ("delegated-ip.test", dest("10.0.0.9", 8448, "10.0.0.9", None)),
            (
                "delegated-srv.test",
                dest("box.delegated-srv.test", 9000, "hs.delegated-srv.test", Some("hs.delegated-srv.test")),
            ),
            ("srv.test", dest("node.srv.test", 7000, "srv.test", Some("srv.test"))),
            ("oldsrv.test", dest("node.oldsrv.test", 7001, "oldsrv.test", Some("oldsrv.test"))),
            ("plain.test", dest("plain.test", 8448, "plain.test", Some("plain.test"))),
            ("pinned.test", dest("127.0.0.1", 9999, "pinned.test", Some("pinned.test"))),
        ];
        for (name, expected) in cases {
            assert_eq!(resolver.resolve(name).await, Some(expected), "{name}");
        }
        assert_eq!(resolver.resolve("bad:port").await, None);
    }

    #[tokio::test]
    async fn well_known_answers_and_failures_are_cached() {
        let resolver = Resolver::new(Fake::default(), HashMap::new());
        resolver.resolve("nowhere.test").await;
        resolver.resolve("nowhere.test").await;
        assert_eq!(resolver.lookup.well_known_calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
