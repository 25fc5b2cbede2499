//! The appservice client against stub homeservers on loopback: retries with back-off on 5xx
//! and 429, errors with the spec's errcode on 4xx, a clear error when the homeserver stays
//! down; the as_token, `user_id` and `ts` are on the wire.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ieum_appservices::import::client::{Client, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers each connection's requests with the next canned (status, body); records request heads.
async fn stub(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // Read the head and a content-length body.
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            seen2.lock().unwrap().push(String::from_utf8_lossy(&got).to_string());
            let (status, body) = answers.next().unwrap_or((500, "{}"));
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn retries_server_errors_then_succeeds() {
    let (base, seen) = stub(vec![
        (502, "{}"),
        (429, r#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":10}"#),
        (200, r#"{"event_id":"$e"}"#),
    ])
    .await;
    let mut client = Client::new(&base, "the_as_token");
    let v = client
        .json(
            reqwest::Method::PUT,
            "/_matrix/client/v3/rooms/%21r%3Ahs/send/m.room.message/t1",
            &[("user_id", "@bridge_a:hs".into()), ("ts", "1436441640000".into())],
            &serde_json::json!({"body": "안녕"}),
        )
        .await
        .unwrap();
    assert_eq!(v["event_id"], "$e");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[2].starts_with(
            "PUT /_matrix/client/v3/rooms/%21r%3Ahs/send/m.room.message/t1?user_id=%40bridge_a%3Ahs&ts=1436441640000 "
        ),
        "{}",
        seen[2]
    );
    assert!(seen[2].to_ascii_lowercase().contains("authorization: bearer the_as_token"));
    assert!(seen[2].contains("안녕"));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (base, seen) = stub(vec![(403, r#"{"errcode":"M_EXCLUSIVE","error":"not yours"}"#)]).await;
    let mut client = Client::new(&base, "t");
    let err = client.json(reqwest::Method::POST, "/x", &[], &serde_json::json!({})).await.unwrap_err();
    assert_eq!(err.errcode(), Some("M_EXCLUSIVE"));
    assert!(err.to_string().contains("403 M_EXCLUSIVE: not yours"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn homeserver_down_gives_a_clear_error() {
    // A port that was free a moment ago: nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let mut client = Client::new(&format!("http://127.0.0.1:{port}"), "t");
    client.retry_for = Duration::from_millis(700);
    let started = std::time::Instant::now();
    let err = client.json(reqwest::Method::POST, "/x", &[], &serde_json::json!({})).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }));
    assert!(
        err.to_string().contains("did not answer") && err.to_string().contains("re-run the same command to resume"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(client.requests >= 3, "retried {} times", client.requests);
}
