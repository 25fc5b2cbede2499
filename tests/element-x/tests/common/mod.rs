//! A real ieum process on loopback and matrix-sdk clients talking to it.

use std::{
    net::TcpListener,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use matrix_sdk::{
    Client,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::{
            account::register,
            message::send_message_event,
            room::create_room,
            uiaa::{AuthData, Dummy},
        },
        events::room::message::RoomMessageEventContent,
        serde::Raw,
    },
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::sync_service::SyncService;

pub const PASSWORD: &str = "element-x-password-1";

/// An ieum server (`$IEUM_BIN serve`) with its own data directory; killed on drop.
pub struct Ieum {
    pub url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Ieum {
    pub async fn start() -> Self {
        let binary = std::env::var("IEUM_BIN")
            .expect("IEUM_BIN must name the ieum server binary (scripts/test sets it; e.g. target/debug/ieum)");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let server_name = format!("localhost:{port}");
        let log = std::fs::File::create(dir.path().join("ieum.log")).unwrap();
        let mut command = tokio::process::Command::new(&binary);
        // The server reads IEUM_* as configuration: none of the test's own may leak in.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("IEUM_")) {
            command.env_remove(key);
        }
        let child = command
            .arg("serve")
            .env("IEUM_SERVER_NAME", &server_name)
            .env("IEUM_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("IEUM_STORAGE__PATH", dir.path().join("data"))
            .env("IEUM_REGISTRATION__ENABLED", "true")
            .env("IEUM_RATE_LIMITS__ENABLED", "false")
            // The access log is cheap and says what the client asked when a test fails.
            .env("RUST_LOG", std::env::var("IEUM_TEST_LOG").unwrap_or_else(|_| "warn,ieum::access=debug".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            let log = std::fs::read_to_string(dir.path().join("ieum.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "ieum did not listen on {url} within 30 s; its log:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { url, _child: child, _dir: dir }
    }

    /// Where the server's log is (kept when a test fails: see `Drop`).
    fn log_path(&self) -> std::path::PathBuf {
        self._dir.path().join("ieum.log")
    }

    /// A new user, logged in with a matrix-sdk client (in-memory stores) that discovers
    /// simplified sliding sync from /versions, as Element X does.
    pub async fn user(&self, name: &str) -> Client {
        static N: AtomicU32 = AtomicU32::new(0);
        let localpart = format!("{name}{}", N.fetch_add(1, Ordering::Relaxed));
        let client = Client::builder()
            .homeserver_url(&self.url)
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .build()
            .await
            .expect("client");
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.clone());
        request.password = Some(PASSWORD.to_owned());
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        request.initial_device_display_name = Some(format!("Element X test ({name})"));
        client.matrix_auth().register(request).await.expect("register");
        assert!(client.user_id().is_some(), "registering logs the client in");
        client
    }
}

/// Starts Element X's sync (room list + encryption sync services) for `client`.
pub async fn start_sync(client: &Client) -> SyncService {
    let service = SyncService::builder(client.clone()).build().await.expect("sync service");
    service.start().await;
    service
}

/// A room created by `client` without syncing (plain API call).
pub async fn create_room(client: &Client, request: create_room::v3::Request) -> OwnedRoomId {
    client.send(request).await.expect("createRoom").room_id
}

/// Sends a text message through the plain API (no sync needed); returns its event id.
pub async fn say(client: &Client, room_id: &RoomId, text: &str) -> matrix_sdk::ruma::OwnedEventId {
    let content = Raw::new(&RoomMessageEventContent::text_plain(text)).unwrap().cast_unchecked();
    let txn = matrix_sdk::ruma::TransactionId::new();
    let request = send_message_event::v3::Request::new_raw(room_id.to_owned(), txn, "m.room.message".into(), content);
    client.send(request).await.expect("send").event_id
}

/// Polls `check` until it holds (20 s at most).
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Ieum {
    /// A failing test keeps the server's log (set IEUM_TEST_LOG, e.g.
    /// `ieum=debug,ieum::wire=trace`, for more than warnings) and says where it is.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("ieum-element-x-{}.log", self.url.rsplit(':').next().unwrap_or("0")));
            if std::fs::copy(self.log_path(), &kept).is_ok() {
                let log = std::fs::read_to_string(&kept).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                eprintln!("ieum's log: {} (last 80 lines:)\n{tail}", kept.display());
            }
        }
    }
}
