//! The HTTPS listeners (`federation.listen`): the same API as plain HTTP over TLS, the
//! development self-signed pair, and a listener that bad clients cannot stop or stall.

use ieum::Server;
use ruma::api::client::device::get_devices;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::{TestServer, test_config};

/// A TLS listener on port 0 with the development self-signed pair.
const TLS: &[(&str, &str)] = &[("IEUM_FEDERATION__LISTEN", "127.0.0.1:0"), ("IEUM_FEDERATION__SELF_SIGNED", "true")];

/// `GET {path}` on the TLS listener; the status code.
async fn get_status(server: &TestServer, path: &str) -> u16 {
    server.tls_client().raw("GET", path, None).await.0
}

// The clients below connect to 127.0.0.1, an IP literal, so they send no SNI (as Synapse
// does): these tests are also the check that the server answers without one.

#[tokio::test]
async fn https_serves_the_federation_and_client_apis_next_to_plain_http() {
    let server = TestServer::start_with(TLS).await;
    let client = server.tls_client();
    let (status, body) = client.raw("GET", "/_matrix/federation/v1/version", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["server"]["name"].is_string(), "{body}");
    let (status, body) = client.raw("GET", "/_matrix/client/versions", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["versions"].is_array(), "{body}");
    // The plain-HTTP listener is still there.
    assert_eq!(server.client().raw("GET", "/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn() {
    let server = TestServer::start_with(TLS).await;
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let response = http.get(format!("{}/_matrix/client/versions", server.tls_base())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn handlers_see_the_client_address_over_tls() {
    let server = TestServer::start_with(TLS).await;
    // Registration records the device's last-seen address from the connection.
    let alice = server.tls_client().register_as("alice").await;
    let devices = alice.send(get_devices::v3::Request::new()).await.devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].last_seen_ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn the_self_signed_pair_is_generated_once_and_reused_across_restarts() {
    let mut server = TestServer::start_with(TLS).await;
    let tls = server.dir.path().join("db/tls");
    let read = || (std::fs::read(tls.join("cert.pem")).unwrap(), std::fs::read(tls.join("key.pem")).unwrap());
    let before = read();
    assert!(String::from_utf8_lossy(&before.0).starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tls.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is readable by others: {mode:o}");
    }
    server.restart().await;
    assert_eq!(read(), before);
    assert_eq!(get_status(&server, "/_matrix/federation/v1/version").await, 200);
}

#[tokio::test]
async fn a_garbage_handshake_does_not_stop_the_listener() {
    let server = TestServer::start_with(TLS).await;
    let address = server.tls_base().trim_start_matches("https://").to_owned();
    let mut garbage = TcpStream::connect(&address).await.unwrap();
    garbage.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: ieum.test\r\n\r\n").await.unwrap();
    // The server gives up on this connection (an alert, or nothing) and closes it.
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));
    assert_eq!(get_status(&server, "/_matrix/client/versions").await, 200);
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_others() {
    let server = TestServer::start_with(TLS).await;
    let address = server.tls_base().trim_start_matches("https://").to_owned();
    // Connects and never says hello: its handshake waits for the handshake timeout.
    let silent = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_status(&server, "/_matrix/client/versions").await, 200);
    // The request above was answered while the silent connection was still waiting (not
    // after the server gave up on it): the server has neither closed it nor written to it.
    let mut byte = [0u8; 1];
    match silent.try_read(&mut byte) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the silent connection was closed or answered first: {other:?}"),
    }
}

#[tokio::test]
async fn missing_certificate_files_fail_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("no-such-cert.pem");
    let key = dir.path().join("no-such-key.pem");
    let config = test_config(
        &dir,
        &[
            ("IEUM_FEDERATION__LISTEN", "127.0.0.1:0"),
            ("IEUM_FEDERATION__TLS_CERT", &cert.display().to_string()),
            ("IEUM_FEDERATION__TLS_KEY", &key.display().to_string()),
        ],
    );
    let error = match Server::start(config).await {
        Ok(_) => panic!("a server started without its certificate"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&cert.display().to_string()), "{error}");
    assert!(error.contains("federation.tls_cert"), "{error}");
}
