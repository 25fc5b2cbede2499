//! The fan-out's long-poll client: one keep-alive HTTP/1.1 connection per client, the
//! request written by hand, the response head parsed with `httparse`, the body read into a
//! buffer the connection reuses.
//!
//! Why not reqwest, as everywhere else: W2 measures when each of 1,000 clients has a
//! message, and all 1,000 run on the load generator's one core. Through reqwest a /sync
//! answer cost that core about 32 µs (pool, URL, timer, header map, a `serde_json::Value`
//! and its drop) while the server spent about 35 µs producing it, so the load generator
//! was part of what W2 measured: making it 15 µs slower per answer moved the last delivery
//! 20 ms later. Each of a real deployment's clients has a phone of its own.

use std::time::Duration;

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::client::{Error, Result};

/// Bounds on what an answer may be; a larger one is an error, not a reason to grow forever.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One client's connection to `host:port`, reconnected after any failure.
pub struct PollConn {
    /// `host:port` as given in an `http://` URL: what we connect to and send as `Host`.
    authority: String,
    stream: Option<TcpStream>,
    /// The request being written, then the answer being read (head and body).
    buf: Vec<u8>,
}

/// An answer: its status and where its body lies in the connection's buffer.
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl PollConn {
    /// A connection for a base URL such as `http://127.0.0.1:8008`; None for any other
    /// scheme (https), which the caller then serves through its ordinary client.
    pub fn for_base(base: &str) -> Option<Self> {
        let authority = base.strip_prefix("http://")?.trim_end_matches('/');
        (!authority.is_empty() && !authority.contains('/')).then(|| Self {
            authority: authority.to_owned(),
            stream: None,
            buf: Vec::with_capacity(4096),
        })
    }

    /// `GET path_and_query` with a bearer token, within `timeout`.
    pub async fn get(&mut self, path_and_query: &str, token: &str, timeout: Duration) -> Result<Answer<'_>> {
        match tokio::time::timeout(timeout, self.exchange(path_and_query, token)).await {
            Ok(Ok((status, start, end))) => Ok(Answer { status, body: &self.buf[start..end] }),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(Error::msg("timeout: no answer in time"))
            }
        }
    }

    /// Writes the request and reads the answer into `buf`: (status, body start, body end).
    async fn exchange(&mut self, path_and_query: &str, token: &str) -> Result<(u16, usize, usize)> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream =
                    TcpStream::connect(&self.authority).await.map_err(|e| Error::msg(format!("connect: {e}")))?;
                stream.set_nodelay(true).map_err(|e| Error::msg(format!("connect: {e}")))?;
                self.stream.insert(stream)
            }
        };
        self.buf.clear();
        for part in
            ["GET ", path_and_query, " HTTP/1.1\r\nHost: ", &self.authority, "\r\nAuthorization: Bearer ", token]
        {
            self.buf.extend_from_slice(part.as_bytes());
        }
        self.buf.extend_from_slice(b"\r\n\r\n");
        stream.write_all(&self.buf).await.map_err(|e| Error::msg(format!("request: {e}")))?;
        self.buf.clear();

        // The head.
        let (status, head_len, framing, close) = loop {
            read_more(stream, &mut self.buf).await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    let (framing, close) = framing(response.headers)?;
                    break (status, head_len, framing, close);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err(Error::msg("body: response head too large")),
                Err(e) => return Err(Error::msg(format!("body: bad response head: {e}"))),
            }
        };

        // The body, by its length or in chunks (decoded in place after the head).
        let end = match framing {
            Framing::Length(length) => {
                if length > MAX_BODY {
                    return Err(Error::msg("body: response too large"));
                }
                while self.buf.len() < head_len + length {
                    read_more(stream, &mut self.buf).await?;
                }
                if self.buf.len() > head_len + length {
                    return Err(Error::msg("body: bytes after the response (pipelining is not used)"));
                }
                head_len + length
            }
            Framing::Chunked => dechunk(stream, &mut self.buf, head_len).await?,
        };
        if close {
            self.stream = None;
        }
        Ok((status, head_len, end))
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

/// How the body is delimited, and whether the server closes the connection after it.
fn framing(headers: &[httparse::Header<'_>]) -> Result<(Framing, bool)> {
    let mut framing = None;
    let mut close = false;
    for header in headers {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| Error::msg("body: bad Content-Length"))?;
            framing = Some(Framing::Length(length));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Some(Framing::Chunked);
        } else if header.name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    // A keep-alive answer to a GET always says how long it is; one that does not would run
    // until the connection closes, which a long-poll loop cannot wait for.
    framing.map(|f| (f, close)).ok_or_else(|| Error::msg("body: response without a length"))
}

/// Reads what the socket has onto the end of `buf`; a closed connection is an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.reserve(16 * 1024);
    match stream.read_buf(buf).await {
        Ok(0) => Err(Error::msg("body: connection closed mid-response")),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::msg(format!("body: {e}"))),
    }
}

/// Decodes a chunked body that starts at `buf[start..]`, reading more as needed, and moves
/// the decoded bytes down to `buf[start..end]`; returns `end`. Trailers are read and dropped.
async fn dechunk(stream: &mut TcpStream, buf: &mut Vec<u8>, start: usize) -> Result<usize> {
    let (mut out, mut at) = (start, start);
    loop {
        let line_end = loop {
            if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            if buf.len() - at > 1024 {
                return Err(Error::msg("body: bad chunk header"));
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(|_| Error::msg("body: bad chunk header"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| Error::msg("body: bad chunk size"))?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    if i == 0 {
                        return Ok(out);
                    }
                    at += i + 2;
                    continue;
                }
                read_more(stream, buf).await?;
            }
        }
        if out - start + size > MAX_BODY {
            return Err(Error::msg("body: response too large"));
        }
        while buf.len() < at + size + 2 {
            read_more(stream, buf).await?;
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(Error::msg("body: chunk without its CRLF"));
        }
        buf.copy_within(at..at + size, out);
        out += size;
        at += size + 2;
    }
}

/// The parts of a /sync answer the fan-out looks at: `next_batch` and the bodies of the
/// timeline events of joined rooms. Everything else is skipped without being built.
#[derive(Deserialize)]
pub struct SyncBody {
    pub next_batch: Option<String>,
    #[serde(default)]
    pub rooms: Rooms,
}

#[derive(Default, Deserialize)]
pub struct Rooms {
    #[serde(default)]
    pub join: std::collections::HashMap<String, Joined>,
}

#[derive(Deserialize)]
pub struct Joined {
    #[serde(default)]
    pub timeline: Timeline,
}

#[derive(Default, Deserialize)]
pub struct Timeline {
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Deserialize)]
pub struct Event {
    #[serde(default)]
    pub content: Content,
}

#[derive(Default, Deserialize)]
pub struct Content {
    // Not every event's content has a string body; any other shape is just not a probe.
    #[serde(default, deserialize_with = "string_or_none")]
    pub body: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves each canned answer on one accepted connection, recording the requests.
    async fn serve(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            for answer in answers {
                let mut buf = Vec::new();
                while !buf.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    socket.read_exact(&mut byte).await.unwrap();
                    buf.push(byte[0]);
                }
                requests.push(String::from_utf8(buf).unwrap());
                // Written in two pieces, so the client must read more than once.
                let (a, b) = answer.split_at(answer.len() / 2);
                socket.write_all(a).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                socket.write_all(b).await.unwrap();
            }
            requests
        });
        (base, task)
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let (base, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nA: b\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
        ])
        .await;
        let mut conn = PollConn::for_base(&base).unwrap();
        let timeout = Duration::from_secs(5);
        let a = conn.get("/one?x=1", "tok", timeout).await.unwrap();
        assert_eq!((a.status, a.body), (200, &b"hello"[..]));
        let b = conn.get("/two", "tok", timeout).await.unwrap();
        assert_eq!((b.status, b.body), (200, &b"abcdefg"[..]));
        let c = conn.get("/three", "tok", timeout).await.unwrap();
        assert_eq!((c.status, c.body), (404, &b"{}"[..]));
        let requests = server.await.unwrap();
        assert_eq!(requests.len(), 3, "one connection served all three");
        let host = base.strip_prefix("http://").unwrap();
        assert_eq!(requests[0], format!("GET /one?x=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer tok\r\n\r\n"));
    }

    #[tokio::test]
    async fn refuses_answers_it_cannot_delimit_and_reconnects_after() {
        let (base, server) = serve(vec![b"HTTP/1.1 200 OK\r\n\r\nno length"]).await;
        let mut conn = PollConn::for_base(&base).unwrap();
        let error = conn.get("/", "tok", Duration::from_secs(5)).await.err().unwrap();
        assert!(error.message.contains("without a length"), "{error}");
        assert!(conn.stream.is_none(), "a failed exchange drops the connection");
        server.await.unwrap();
    }

    #[test]
    fn only_plain_http_bases() {
        assert!(PollConn::for_base("https://127.0.0.1:1").is_none());
        assert!(PollConn::for_base("http://").is_none());
        assert_eq!(PollConn::for_base("http://127.0.0.1:8008/").unwrap().authority, "127.0.0.1:8008");
    }

    #[test]
    fn sync_body_keeps_what_the_fan_out_reads() {
        let body: SyncBody = serde_json::from_str(
            r#"{"next_batch":"s1","account_data":{"events":[]},"rooms":{"join":{"!r:x":{"timeline":{"events":[
                {"type":"m.room.message","content":{"body":"hi","msgtype":"m.text"}},
                {"type":"m.room.member","content":{"membership":"join"}},
                {"type":"x","content":{"body":7}}]}}}}}"#,
        )
        .unwrap();
        assert_eq!(body.next_batch.as_deref(), Some("s1"));
        let bodies: Vec<_> = body.rooms.join["!r:x"].timeline.events.iter().map(|e| e.content.body.clone()).collect();
        assert_eq!(bodies, [Some("hi".to_owned()), None, None]);
        let empty: SyncBody = serde_json::from_str(r#"{"next_batch":"s2"}"#).unwrap();
        assert!(empty.rooms.join.is_empty());
    }
}
