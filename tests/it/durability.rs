//! A 200 means durable: the real binary is killed with SIGKILL while clients send, and
//! after a restart every acknowledged event is there, in order, and the server is
//! consistent (idempotent retries return the same event, new events append).

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    OwnedEventId, OwnedTransactionId, TransactionId,
    api::{
        Direction,
        client::{
            account::register,
            message::{get_message_events, send_message_event},
            room::{create_room, get_room_event},
            uiaa::{AuthData, Dummy},
        },
    },
    events::room::message::RoomMessageEventContent,
    uint,
};

use crate::harness::{Client, client_for};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_server(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ieum"))
        .arg("serve")
        .current_dir(dir)
        // The test harness's own switch is not a server setting (unknown IEUM_* keys are refused).
        .env_remove("IEUM_TEST_LOG")
        .env("IEUM_SERVER_NAME", "ieum.test")
        .env("IEUM_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("IEUM_STORAGE__PATH", format!("\"{}\"", dir.join("db").display()))
        .env("IEUM_RATE_LIMITS__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the ieum binary starts")
}

async fn wait_until_up(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/_matrix/client/versions")).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {base} did not come up");
}

async fn login_client(base: &str) -> Client {
    let mut client = client_for(base);
    let mut request = register::v3::Request::new();
    request.username = Some("writer".into());
    request.password = Some("password".into());
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let response = client.send(request).await;
    client.token = response.access_token;
    client.user_id = Some(response.user_id);
    client.device_id = response.device_id;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_server(dir.path(), port);
    wait_until_up(&base).await;

    let client = login_client(&base).await;
    let room_id = client.send(create_room::v3::Request::new()).await.room_id;

    // Four senders write as fast as they can; every 200 is recorded.
    let acknowledged: Arc<Mutex<Vec<(OwnedTransactionId, OwnedEventId)>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..4 {
        let client = client.clone();
        let room_id = room_id.clone();
        let acknowledged = acknowledged.clone();
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                let txn_id = TransactionId::new();
                let content = RoomMessageEventContent::text_plain(format!("sender {sender} message {n}"));
                let request = send_message_event::v3::Request::new(room_id.clone(), txn_id.clone(), &content).unwrap();
                match client.try_send_quiet(request).await {
                    Some(response) => acknowledged.lock().unwrap().push((txn_id, response.event_id)),
                    None => break,
                }
            }
        }));
    }
    // Let them run, then kill the server without warning.
    while acknowledged.lock().unwrap().len() < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 60);

    let mut child = spawn_server(dir.path(), port);
    wait_until_up(&base).await;

    // Every acknowledged event is there.
    for (_, event_id) in &acknowledged {
        client.send(get_room_event::v3::Request::new(room_id.clone(), event_id.clone())).await;
    }
    // The timeline is consistent: paginating back from the end yields each event once.
    let mut seen = Vec::new();
    let mut from = None;
    loop {
        let mut request = get_message_events::v3::Request::new(room_id.clone(), Direction::Backward);
        request.from = from.clone();
        request.limit = uint!(100);
        let page = client.send(request).await;
        for event in &page.chunk {
            seen.push(event.get_field::<String>("event_id").unwrap().unwrap());
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event appears twice in /messages");
    for (_, event_id) in &acknowledged {
        assert!(unique.contains(&event_id.to_string()), "{event_id} is missing from /messages");
    }
    // Retrying an acknowledged transaction returns the same event (the txn map survived).
    let (txn_id, event_id) = &acknowledged[0];
    let content = RoomMessageEventContent::text_plain("retry");
    let retry =
        client.send(send_message_event::v3::Request::new(room_id.clone(), txn_id.clone(), &content).unwrap()).await;
    assert_eq!(&retry.event_id, event_id);
    // And the room still takes new events.
    let content = RoomMessageEventContent::text_plain("after restart");
    client.send(send_message_event::v3::Request::new(room_id.clone(), TransactionId::new(), &content).unwrap()).await;

    child.kill().unwrap();
    child.wait().unwrap();
}
