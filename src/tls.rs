//! TLS for the HTTPS listeners (`federation.listen`): the rustls server configuration
//! (PEM certificate chain and key, ring provider, ALPN h2 + http/1.1), the development
//! self-signed pair, and `TlsListener`, which hands axum only connections whose handshake
//! has finished.
//!
//! One certificate answers every connection, whatever SNI the client sends or does not
//! send: Synapse connects to IP literals without SNI, so an SNI-based resolver would turn
//! those peers away.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};

use crate::{api::PeerAddr, config::Config};

/// How long one client gets to finish its handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight per listener. Past it the listener stops accepting until one
/// finishes (new connections wait in the kernel's backlog), so a flood of silent
/// connections costs a bounded number of tasks.
const MAX_HANDSHAKES: usize = 1024;

/// How long accepting pauses after an accept error that is not about one connection
/// (out of file descriptors, say), so the error is not retried in a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Where the development pair lives, under `storage.path`.
const SELF_SIGNED_DIR: &str = "tls";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {source}. Set federation.tls_cert to a PEM certificate chain")]
    ReadCert { path: PathBuf, source: io::Error },
    #[error("TLS certificate {path} {problem}. Set federation.tls_cert to a PEM certificate chain")]
    BadCert { path: PathBuf, problem: String },
    #[error("cannot read TLS key {path}: {source}. Set federation.tls_key to a PEM private key")]
    ReadKey { path: PathBuf, source: io::Error },
    #[error("TLS key {path} {problem}. Set federation.tls_key to a PEM private key")]
    BadKey { path: PathBuf, problem: String },
    #[error(
        "TLS certificate {cert} and key {key} are not usable together: {problem}. The key must be the RSA, \
         ECDSA (P-256, P-384) or Ed25519 private key of the first certificate in the chain"
    )]
    Unusable { cert: PathBuf, key: PathBuf, problem: String },
    #[error("rustls refused its default protocol versions with the ring provider: {0}")]
    Provider(String),
    #[error(
        "federation.listen needs federation.tls_cert and federation.tls_key (or federation.self_signed = true \
         for development)"
    )]
    NotConfigured,
    #[error(
        "cannot create the self-signed TLS pair in {dir}: {problem}. Check that the storage directory is \
         writable, or set federation.tls_cert and federation.tls_key"
    )]
    SelfSigned { dir: PathBuf, problem: String },
}

/// The rustls configuration for `config.federation`: its certificate files, or the
/// development self-signed pair (generated on first use) when `self_signed` is set and no
/// files are.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let federation = &config.federation;
    let (cert, key) = match (&federation.tls_cert, &federation.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ if !federation.self_signed => return Err(TlsError::NotConfigured),
        _ => {
            let dir = config.storage.path.join(SELF_SIGNED_DIR);
            let host = config.server_name.host().trim_start_matches('[').trim_end_matches(']');
            let (cert, key, generated) = self_signed_pair(&dir, host)?;
            tracing::warn!(
                certificate = %cert.display(),
                generated,
                "federation TLS uses a self-signed certificate: for development only, other servers \
                 refuse it unless told to skip verification"
            );
            (cert, key)
        }
    };
    load_server_config(&cert, &key)
}

/// Builds a rustls server configuration from a PEM certificate chain (leaf first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    // The ring provider explicitly: rustls' process-wide default would depend on which
    // provider features the whole dependency graph happens to enable.
    let mut server_config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Provider(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Unusable {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            problem: error.to_string(),
        })?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server_config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCert { path: path.to_owned(), source })?;
    let bad = |problem: String| TlsError::BadCert { path: path.to_owned(), problem };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("is not valid PEM ({error})")))?;
    if chain.is_empty() {
        return Err(bad("contains no CERTIFICATE block".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadKey { path: path.to_owned(), source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::BadKey {
        path: path.to_owned(),
        problem: match error {
            tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => "contains no PRIVATE KEY, RSA PRIVATE KEY \
                                                                          or EC PRIVATE KEY block (encrypted keys \
                                                                          are not supported)"
                .into(),
            error => format!("is not valid PEM ({error})"),
        },
    })
}

/// The development pair in `dir` (`cert.pem`, `key.pem`): reused when both files exist,
/// generated otherwise for `host`, "localhost", 127.0.0.1 and ::1. Returns the two paths
/// and whether they were generated now.
fn self_signed_pair(dir: &Path, host: &str) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path, false));
    }
    let failed = |problem: String| TlsError::SelfSigned { dir: dir.to_owned(), problem };
    let mut names = vec![host.to_owned()];
    for name in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|known| known == name) {
            names.push(name.to_owned());
        }
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(|error| failed(error.to_string()))?;
    create_private_dir(dir).map_err(|error| failed(error.to_string()))?;
    // The key first, the certificate last: a pair counts as present only when both files
    // exist, so a run interrupted in between generates a fresh pair next time.
    write_new(&key_path, generated.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(|error| failed(format!("{}: {error}", key_path.display())))?;
    write_new(&cert_path, generated.cert.pem().as_bytes(), 0o644)
        .map_err(|error| failed(format!("{}: {error}", cert_path.display())))?;
    Ok((cert_path, key_path, true))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `contents` to `path` through a fresh temporary file created with `mode`, then
/// renames it into place, so the file never exists with looser permissions or half written.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("pem.tmp");
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// A TCP listener whose `accept` yields TLS streams that have finished their handshake.
///
/// Handshakes never run in the accept path: each accepted connection gets its own task,
/// bounded by `HANDSHAKE_TIMEOUT`, and `accept` returns whichever handshake finishes
/// first, so a slow or hostile client delays nobody else. Failed handshakes are logged at
/// debug level and dropped. The tasks live in a `JoinSet` owned by the listener, so when
/// axum drops the listener at shutdown the port is released and every pending handshake
/// is cancelled at once, with no task left behind.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    /// Set after an accept error that is not about one connection; accepting resumes then.
    paused_until: Option<Instant>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new(), paused_until: None }
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        // No Nagle delay: TLS records and HTTP/2 frames go out in several writes (see
        // `server::NoDelay`).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let handshake = self.acceptor.accept(tcp);
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => Some((stream, peer)),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe (axum drops this future when shutdown starts): every await below is
    // cancel-safe and no state is held across them outside `self`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let accepting = self.paused_until.is_none() && self.handshakes.len() < MAX_HANDSHAKES;
            let resume_at = self.paused_until.unwrap_or_else(Instant::now);
            tokio::select! {
                accepted = self.tcp.accept(), if accepting => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    Err(error) if is_connection_error(&error) => {}
                    Err(error) => {
                        tracing::error!(%error, "cannot accept TLS connections; retrying in a second");
                        self.paused_until = Some(Instant::now() + ACCEPT_ERROR_PAUSE);
                    }
                },
                () = tokio::time::sleep_until(resume_at), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                Some(finished) = self.handshakes.join_next() => match finished {
                    Ok(Some(connection)) => return connection,
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "TLS handshake task failed"),
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Errors that concern one connection only (the client went away before we accepted).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn generated_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key, generated) = self_signed_pair(dir, "ieum.test").unwrap();
        assert!(generated);
        (cert, key)
    }

    #[test]
    fn a_generated_pair_loads_with_alpn_h2_and_http1() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generated_pair(dir.path());
        let config = load_server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn the_generated_pair_is_reused_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let (cert, key) = generated_pair(&tls);
        let first = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        let (cert_again, key_again, generated) = self_signed_pair(&tls, "ieum.test").unwrap();
        assert!(!generated);
        assert_eq!((std::fs::read(cert_again).unwrap(), std::fs::read(key_again).unwrap()), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_certificate_names_the_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = generated_pair(dir.path());
        let missing = dir.path().join("missing.pem");
        let error = load_server_config(&missing, &key).unwrap_err().to_string();
        assert!(error.contains(&*missing.to_string_lossy()) && error.contains("federation.tls_cert"), "{error}");
    }

    #[test]
    fn a_missing_key_names_the_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated_pair(dir.path());
        let missing = dir.path().join("missing.pem");
        let error = load_server_config(&cert, &missing).unwrap_err().to_string();
        assert!(error.contains(&*missing.to_string_lossy()) && error.contains("federation.tls_key"), "{error}");
    }

    #[test]
    fn a_certificate_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = generated_pair(dir.path());
        // A key where the certificate should be: valid PEM, but no CERTIFICATE block.
        let error = load_server_config(&key, &key).unwrap_err().to_string();
        assert!(error.contains("no CERTIFICATE block") && error.contains("federation.tls_cert"), "{error}");
        let garbage =
            write(dir.path(), "garbage.pem", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        let error = load_server_config(&garbage, &key).unwrap_err().to_string();
        assert!(error.contains("not valid PEM") && error.contains(&*garbage.to_string_lossy()), "{error}");
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated_pair(dir.path());
        let error = load_server_config(&cert, &cert).unwrap_err().to_string();
        assert!(error.contains("no PRIVATE KEY") && error.contains("federation.tls_key"), "{error}");
        let empty = write(dir.path(), "empty.pem", b"");
        let error = load_server_config(&cert, &empty).unwrap_err().to_string();
        assert!(error.contains("no PRIVATE KEY") && error.contains(&*empty.to_string_lossy()), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated_pair(&dir.path().join("one"));
        let (_, other_key) = generated_pair(&dir.path().join("two"));
        let error = load_server_config(&cert, &other_key).unwrap_err().to_string();
        assert!(error.contains("not usable together") && error.contains(&*other_key.to_string_lossy()), "{error}");
    }

    #[test]
    fn pkcs1_and_sec1_keys_load() {
        // PKCS#8 is what rcgen writes (the tests above); these two come from openssl.
        let data =
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()))
                .join("tests/data/tls");
        for name in ["rsa-pkcs1", "ec-sec1"] {
            let cert = data.join(format!("{name}.cert.pem"));
            let key = data.join(format!("{name}.key.pem"));
            if let Err(error) = load_server_config(&cert, &key) {
                panic!("{name}: {error}");
            }
        }
    }
}
