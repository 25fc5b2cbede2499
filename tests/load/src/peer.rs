//! The federation peer for W4 and W5: ieum-load plays a remote homeserver named
//! `127.0.0.1:<port>` (an IP literal with a port needs no DNS or .well-known). It serves
//! HTTPS with a self-signed certificate (the server under test is told to accept it),
//! publishes its signing key at /_matrix/key/v2/server, builds and signs events with ruma
//! (content hash, ed25519 signature, reference-hash event ids), signs its own requests with
//! X-Matrix, hosts rooms (W4) and answers what a server asks back: /event, /state(_ids),
//! /event_auth, /get_missing_events, /backfill, /send, make_join/send_join, profile and
//! device queries.
//!
//! It trusts what it is sent: it checks neither the X-Matrix signatures of inbound requests
//! nor the events it receives (a load generator measures the other side, not itself). Every
//! endpoint the server under test calls is counted, so the report can say what was asked.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use ruma::{
    CanonicalJsonObject, OwnedServerName, RoomVersionId,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
    },
    serde::Base64,
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash, sign_json},
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::ring,
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    },
    server::TlsStream,
};

use crate::client::{Error, Result};

/// The room version of every room W4 and W5 use (the brief: 10 or 11; 10 still carries
/// `origin`, which both servers accept in either).
pub const ROOM_VERSION: RoomVersionId = RoomVersionId::V10;

const KEY_VERSION: &str = "load1";

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// A room this peer hosts (W4): its state events in order (no state key repeats, so the
/// list is the state), the events every join is authorised by, and the tip of the DAG.
struct HostedRoom {
    state: Vec<String>,
    /// Index of each state event in `state`.
    position: HashMap<String, usize>,
    create: String,
    power_levels: String,
    join_rules: String,
    latest: String,
    depth: u64,
}

/// The remote server under test, as this peer reaches it.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Its server name (X-Matrix `destination`).
    pub name: OwnedServerName,
    /// Where its federation API listens, e.g. `https://127.0.0.1:8448`.
    pub url: String,
}

pub struct Peer {
    pub name: OwnedServerName,
    key: Ed25519KeyPair,
    http: reqwest::Client,
    /// Every PDU this peer built or was given, by event id.
    events: Mutex<HashMap<String, Arc<Value>>>,
    hosted: Mutex<HashMap<String, HostedRoom>>,
    /// Rooms of the server under test this peer joined (W5): their state after the join,
    /// which is the state at every later event of the peer (they are all messages).
    joined: Mutex<HashMap<String, Vec<String>>>,
    /// "GET /_matrix/federation/v1/event/{} 200" -> times asked (`route_of`).
    asked: Mutex<BTreeMap<String, u64>>,
}

impl Peer {
    /// A peer named after `addr`, with a fresh signing key; serves nothing yet.
    fn new(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let name = OwnedServerName::try_from(addr.to_string())
            .map_err(|e| Error::msg(format!("peer: {addr} is not a server name: {e}")))?;
        let document = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&document, KEY_VERSION.to_owned())
            .map_err(|e| Error::msg(format!("peer key: {e}")))?;
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::msg(format!("peer: building the HTTPS client: {e}")))?;
        Ok(Self {
            name,
            key,
            http,
            events: Mutex::default(),
            hosted: Mutex::default(),
            joined: Mutex::default(),
            asked: Mutex::default(),
        })
    }

    /// Binds `addr` (loopback) and serves HTTPS there for the rest of the process.
    pub async fn start(addr: SocketAddr, timeout: Duration) -> Result<Arc<Self>> {
        let peer = Arc::new(Self::new(addr, timeout)?);
        let tls = tls_config(addr)?;
        let tcp = TcpListener::bind(addr).await.map_err(|e| Error::msg(format!("peer: cannot bind {addr}: {e}")))?;
        let router = routes(peer.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(TlsListener { tcp, acceptor: TlsAcceptor::from(tls) }, router).await {
                eprintln!("ieum-load: federation peer stopped: {e}");
            }
        });
        Ok(peer)
    }

    /// The endpoints the server under test called so far, with counts.
    pub fn asked(&self) -> BTreeMap<String, u64> {
        self.asked.lock().expect("asked").clone()
    }

    /// What the server under test asked since `before` (an earlier [`Peer::asked`]), key
    /// fetches and transactions left out, as one line for a note.
    pub fn asked_since(&self, before: &BTreeMap<String, u64>) -> Option<String> {
        let asked: Vec<String> = self
            .asked()
            .into_iter()
            .filter(|(what, _)| !what.contains("/key/v2/") && !what.contains("/send/"))
            .filter_map(|(what, n)| {
                let n = n - before.get(&what).copied().unwrap_or(0);
                (n > 0).then(|| format!("{what} x{n}"))
            })
            .collect();
        (!asked.is_empty()).then(|| format!("the server asked the peer: {}", asked.join(", ")))
    }

    /// Records the state of a room of the server under test after this peer's join.
    pub fn joined_room(&self, room_id: &str, state: Vec<String>) {
        self.joined.lock().expect("joined").insert(room_id.to_owned(), state);
    }

    pub fn event(&self, id: &str) -> Option<Arc<Value>> {
        self.events.lock().expect("events").get(id).cloned()
    }

    /// Remembers events learnt elsewhere (a send_join answer), so they can be served back.
    pub fn remember(&self, pdus: impl IntoIterator<Item = Value>, version: &RoomVersionId) {
        let Some(rules) = version.rules() else { return };
        let mut events = self.events.lock().expect("events");
        for pdu in pdus {
            let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(pdu.clone()) else { continue };
            if let Ok(hash) = reference_hash(&object, &rules) {
                events.insert(format!("${hash}"), Arc::new(pdu));
            }
        }
    }

    /// Completes an event (origin, timestamp, content hash, signature), names it by its
    /// reference hash and stores it. `fields` holds type, room_id, sender, content,
    /// prev_events, auth_events, depth (and state_key).
    pub fn build(&self, mut fields: Value) -> Result<(String, Arc<Value>)> {
        let rules = ROOM_VERSION.rules().ok_or_else(|| Error::msg("peer: room version without rules"))?;
        fields["origin"] = self.name.as_str().into();
        if fields.get("origin_server_ts").is_none() {
            fields["origin_server_ts"] = now_ms().into();
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(fields)
            .map_err(|e| Error::msg(format!("peer: event is not canonical JSON: {e}")))?;
        hash_and_sign_event(self.name.as_str(), &self.key, &mut object, &rules.redaction)
            .map_err(|e| Error::msg(format!("peer: signing an event: {e}")))?;
        let id = format!("${}", reference_hash(&object, &rules).map_err(|e| Error::msg(format!("peer: {e}")))?);
        let pdu = Arc::new(serde_json::to_value(&object).map_err(|e| Error::msg(e.to_string()))?);
        self.events.lock().expect("events").insert(id.clone(), pdu.clone());
        Ok((id, pdu))
    }

    /// Signs a (make_join) template received from the server under test.
    pub fn sign_template(&self, template: Value) -> Result<(String, Arc<Value>)> {
        let mut fields = template;
        if let Some(object) = fields.as_object_mut() {
            for key in ["event_id", "signatures", "hashes", "unsigned", "origin_server_ts"] {
                object.remove(key);
            }
        }
        self.build(fields)
    }

    /// Sends a ruma federation request to `to`, signed with X-Matrix.
    pub async fn send<R>(&self, to: &Destination, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        let input = XMatrixSigningInput::new(self.name.clone(), to.name.clone(), &self.key);
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&to.url, input, ())
            .map_err(|e| Error::msg(format!("request: cannot build {}: {e}", std::any::type_name::<R>())))?;
        let request = reqwest::Request::try_from(http_request.map(reqwest::Body::from))
            .map_err(|e| Error::msg(format!("request: cannot convert: {e}")))?;
        let response = self.http.execute(request).await.map_err(|e| Error::msg(format!("federation: {e}")))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| Error::msg(format!("federation body: {e}")))?;
        if !(200..300).contains(&status) {
            let json: Option<Value> = serde_json::from_slice(&body).ok();
            return Err(Error {
                status: Some(status),
                errcode: json.as_ref().and_then(|j| j["errcode"].as_str()).map(str::to_owned),
                message: String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned(),
            });
        }
        let http_response = ruma::exports::http::Response::builder()
            .status(status)
            .body(body.as_ref())
            .map_err(|e| Error::msg(format!("body: {e}")))?;
        R::IncomingResponse::try_from_http_response(http_response)
            .map_err(|e| Error::msg(format!("body: {} does not parse: {e}", std::any::type_name::<R>())))
    }

    /// Builds a public room hosted here with `members` joined users (its creator among
    /// them): create, creator's join, power levels, join rules, history visibility, then one
    /// join per further member, each on the previous event. Returns the room id.
    pub fn host_room(&self, room_id: &str, members: usize) -> Result<()> {
        let owner = format!("@owner:{}", self.name);
        let mut state = Vec::new();
        let mut depth = 1u64;
        let mut latest: Option<String> = None;
        let mut add = |this: &Self, kind: &str, state_key: &str, sender: &str, content: Value, auth: Vec<String>| {
            let prev: Vec<String> = latest.iter().cloned().collect();
            let (id, _) = this.build(json!({
                "type": kind,
                "room_id": room_id,
                "sender": sender,
                "state_key": state_key,
                "content": content,
                "prev_events": prev,
                "auth_events": auth,
                "depth": depth,
            }))?;
            depth += 1;
            latest = Some(id.clone());
            state.push(id.clone());
            Ok::<_, Error>(id)
        };
        let create = add(
            self,
            "m.room.create",
            "",
            &owner,
            json!({ "creator": owner, "room_version": ROOM_VERSION.as_str() }),
            vec![],
        )?;
        let owner_join =
            add(self, "m.room.member", &owner, &owner, json!({ "membership": "join" }), vec![create.clone()])?;
        let power_levels = add(
            self,
            "m.room.power_levels",
            "",
            &owner,
            json!({
                "users": { owner.clone(): 100 },
                "users_default": 0,
                "events_default": 0,
                "state_default": 50,
                "ban": 50, "kick": 50, "redact": 50, "invite": 0,
                "events": {},
            }),
            vec![create.clone(), owner_join.clone()],
        )?;
        let founding = vec![create.clone(), owner_join.clone(), power_levels.clone()];
        let join_rules =
            add(self, "m.room.join_rules", "", &owner, json!({ "join_rule": "public" }), founding.clone())?;
        add(self, "m.room.history_visibility", "", &owner, json!({ "history_visibility": "shared" }), founding)?;
        for i in 1..members.max(1) {
            let user = format!("@m{i}:{}", self.name);
            add(
                self,
                "m.room.member",
                &user,
                &user,
                json!({ "membership": "join", "displayname": format!("member {i}") }),
                vec![create.clone(), power_levels.clone(), join_rules.clone()],
            )?;
        }
        let position = state.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let room =
            HostedRoom { state, position, create, power_levels, join_rules, latest: latest.unwrap_or_default(), depth };
        self.hosted.lock().expect("hosted").insert(room_id.to_owned(), room);
        Ok(())
    }

    fn pdus(&self, ids: &[String]) -> Vec<Value> {
        let events = self.events.lock().expect("events");
        ids.iter().filter_map(|id| events.get(id).map(|e| Value::clone(e))).collect()
    }

    /// The auth chain of `ids`: every event reachable through auth_events (known here).
    fn auth_chain(&self, ids: &[String]) -> Vec<String> {
        let events = self.events.lock().expect("events");
        let mut seen = HashSet::new();
        let mut todo: Vec<String> =
            ids.iter().filter_map(|id| events.get(id)).flat_map(|e| string_list(&e["auth_events"])).collect();
        let mut chain = Vec::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(event) = events.get(&id) {
                todo.extend(string_list(&event["auth_events"]));
                chain.push(id);
            }
        }
        chain
    }

    /// The state before `event_id` in a hosted room (the whole state for events after it);
    /// in a joined room, the state after the join.
    fn state_ids_at(&self, room_id: &str, event_id: &str) -> Option<Vec<String>> {
        let hosted = self.hosted.lock().expect("hosted");
        let Some(room) = hosted.get(room_id) else {
            return self.joined.lock().expect("joined").get(room_id).cloned();
        };
        Some(match room.position.get(event_id) {
            Some(&i) => room.state[..i].to_vec(),
            None => room.state.clone(),
        })
    }

    fn count(&self, what: String) {
        *self.asked.lock().expect("asked").entry(what).or_default() += 1;
    }
}

fn string_list(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

// -- HTTPS ---------------------------------------------------------------------------

fn tls_config(addr: SocketAddr) -> Result<Arc<ServerConfig>> {
    let pair = rcgen::generate_simple_self_signed(vec![addr.ip().to_string(), "localhost".to_owned()])
        .map_err(|e| Error::msg(format!("peer: self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.signing_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::msg(format!("peer: TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(vec![pair.cert.der().clone()], key)
        .map_err(|e| Error::msg(format!("peer: TLS: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Hands axum TLS connections; handshakes run one at a time (servers keep their
/// connections open, so there are few), each bounded by a timeout.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

// -- what the server under test may ask --------------------------------------------

type Shared = State<Arc<Peer>>;

fn routes(peer: Arc<Peer>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(|| async { Json(json!({ "server": { "name": "ieum-load" } })) }))
        .route("/_matrix/federation/v1/send/{txn}", put(receive_transaction))
        .route("/_matrix/federation/v1/make_join/{room}/{user}", get(make_join))
        .route("/_matrix/federation/v2/send_join/{room}/{event}", put(send_join))
        .route("/_matrix/federation/v1/event/{event}", get(event))
        .route("/_matrix/federation/v1/state_ids/{room}", get(state_ids))
        .route("/_matrix/federation/v1/state/{room}", get(state))
        .route("/_matrix/federation/v1/event_auth/{room}/{event}", get(event_auth))
        .route("/_matrix/federation/v1/get_missing_events/{room}", post(get_missing_events))
        .route("/_matrix/federation/v1/backfill/{room}", get(backfill))
        .route("/_matrix/federation/v1/query/profile", get(profile))
        .route("/_matrix/federation/v1/user/devices/{user}", get(devices))
        .route("/_matrix/federation/v1/user/keys/query", post(|| async { Json(json!({ "device_keys": {} })) }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_UNRECOGNIZED", "error": "ieum-load: not served" })))
        })
        .layer(middleware::from_fn_with_state(peer.clone(), count_requests))
        .with_state(peer)
}

async fn count_requests(State(peer): Shared, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let method = request.method().clone();
    let response = next.run(request).await;
    peer.count(format!("{method} {route} {}", response.status().as_u16()));
    response
}

/// A request's path with its ids left out, to count requests per endpoint: every segment
/// after the API version (`/_matrix/federation/v1/`, `/_matrix/key/v2/`) that is not a plain
/// lowercase word (`make_join`, `state_ids`) is an id (`$event`, `!room:x`, a transaction id,
/// `ed25519:key`), written `{}`. (axum's `MatchedPath` would say it, but its per-request
/// extension is left out of the server's build, which this tool shares.)
fn route_of(path: &str) -> String {
    path.split('/')
        .enumerate()
        .map(|(i, segment)| {
            let word = segment.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if i >= 4 && !word { "{}" } else { segment }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND", "error": format!("ieum-load: unknown {what}") })))
        .into_response()
}

async fn server_keys(State(peer): Shared) -> Response {
    let public = Base64::<ruma::serde::base64::Standard, _>::new(peer.key.public_key().to_vec()).encode();
    let document = json!({
        "server_name": peer.name.as_str(),
        "verify_keys": { format!("ed25519:{KEY_VERSION}"): { "key": public } },
        "old_verify_keys": {},
        "valid_until_ts": now_ms() + 24 * 3600 * 1000,
    });
    let Ok(mut object) = serde_json::from_value::<CanonicalJsonObject>(document) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if sign_json(peer.name.as_str(), &peer.key, &mut object).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(object).into_response()
}

async fn receive_transaction(State(peer): Shared, Json(body): Json<Value>) -> Json<Value> {
    let mut results = serde_json::Map::new();
    let pdus: Vec<Value> = body["pdus"].as_array().cloned().unwrap_or_default();
    if let Some(rules) = ROOM_VERSION.rules() {
        for pdu in &pdus {
            if let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(pdu.clone())
                && let Ok(hash) = reference_hash(&object, &rules)
            {
                results.insert(format!("${hash}"), json!({}));
            }
        }
    }
    peer.remember(pdus, &ROOM_VERSION);
    Json(json!({ "pdus": results }))
}

async fn make_join(State(peer): Shared, Path((room_id, user_id)): Path<(String, String)>) -> Response {
    let template = {
        let hosted = peer.hosted.lock().expect("hosted");
        let Some(room) = hosted.get(&room_id) else { return not_found("room") };
        json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": { "membership": "join" },
            "prev_events": [room.latest],
            "auth_events": [room.create, room.power_levels, room.join_rules],
            "depth": room.depth,
            "origin": user_id.split_once(':').map_or("", |(_, server)| server),
            "origin_server_ts": now_ms(),
        })
    };
    Json(json!({ "room_version": ROOM_VERSION.as_str(), "event": template })).into_response()
}

async fn send_join(
    State(peer): Shared,
    Path((room_id, event_id)): Path<(String, String)>,
    Json(pdu): Json<Value>,
) -> Response {
    let state_before = {
        let mut hosted = peer.hosted.lock().expect("hosted");
        let Some(room) = hosted.get_mut(&room_id) else { return not_found("room") };
        let before = room.state.clone();
        if !room.position.contains_key(&event_id) {
            room.position.insert(event_id.clone(), room.state.len());
            room.state.push(event_id.clone());
            room.latest = event_id.clone();
            room.depth += 1;
        }
        before
    };
    peer.events.lock().expect("events").insert(event_id.clone(), Arc::new(pdu.clone()));
    let mut chain_of = state_before.clone();
    chain_of.push(event_id);
    let auth_chain = peer.auth_chain(&chain_of);
    Json(json!({
        "origin": peer.name.as_str(),
        "state": peer.pdus(&state_before),
        "auth_chain": peer.pdus(&auth_chain),
        "event": pdu,
        "members_omitted": false,
        "servers_in_room": [peer.name.as_str()],
    }))
    .into_response()
}

async fn event(State(peer): Shared, Path(event_id): Path<String>) -> Response {
    match peer.event(&event_id) {
        Some(pdu) => Json(json!({
            "origin": peer.name.as_str(),
            "origin_server_ts": now_ms(),
            "pdus": [pdu.as_ref()],
        }))
        .into_response(),
        None => not_found("event"),
    }
}

#[derive(serde::Deserialize)]
struct AtEvent {
    event_id: String,
}

async fn state_ids(State(peer): Shared, Path(room_id): Path<String>, Query(at): Query<AtEvent>) -> Response {
    let Some(ids) = peer.state_ids_at(&room_id, &at.event_id) else { return not_found("room") };
    let chain = peer.auth_chain(&ids);
    Json(json!({ "pdu_ids": ids, "auth_chain_ids": chain })).into_response()
}

async fn state(State(peer): Shared, Path(room_id): Path<String>, Query(at): Query<AtEvent>) -> Response {
    let Some(ids) = peer.state_ids_at(&room_id, &at.event_id) else { return not_found("room") };
    let chain = peer.auth_chain(&ids);
    Json(json!({ "pdus": peer.pdus(&ids), "auth_chain": peer.pdus(&chain) })).into_response()
}

async fn event_auth(State(peer): Shared, Path((_room, event_id)): Path<(String, String)>) -> Response {
    if peer.event(&event_id).is_none() {
        return not_found("event");
    }
    let chain = peer.auth_chain(&[event_id]);
    Json(json!({ "auth_chain": peer.pdus(&chain) })).into_response()
}

/// Walks prev_events back from `latest_events` (events known here only), stopping at
/// `earliest_events`, at most `limit` events, oldest first.
async fn get_missing_events(State(peer): Shared, Json(body): Json<Value>) -> Json<Value> {
    let earliest: HashSet<String> = string_list(&body["earliest_events"]).into_iter().collect();
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    let mut todo: Vec<String> = string_list(&body["latest_events"]);
    let mut seen: HashSet<String> = todo.iter().cloned().collect();
    let mut found = Vec::new();
    while let Some(id) = todo.pop() {
        let Some(event) = peer.event(&id) else { continue };
        for prev in string_list(&event["prev_events"]) {
            if earliest.contains(&prev) || !seen.insert(prev.clone()) {
                continue;
            }
            if let Some(pdu) = peer.event(&prev) {
                found.push(Value::clone(&pdu));
                todo.push(prev);
            }
        }
        if found.len() >= limit {
            break;
        }
    }
    found.truncate(limit);
    found.sort_by_key(|e| e["depth"].as_u64().unwrap_or(0));
    Json(json!({ "events": found }))
}

async fn backfill(State(peer): Shared) -> Json<Value> {
    Json(json!({ "origin": peer.name.as_str(), "origin_server_ts": now_ms(), "pdus": [] }))
}

#[derive(serde::Deserialize)]
struct ProfileQuery {
    user_id: String,
}

async fn profile(Query(query): Query<ProfileQuery>) -> Json<Value> {
    let localpart = query.user_id.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
    Json(json!({ "displayname": localpart }))
}

async fn devices(Path(user_id): Path<String>) -> Json<Value> {
    Json(json!({ "user_id": user_id, "stream_id": 0, "devices": [] }))
}

#[cfg(test)]
mod tests {
    use ruma::signatures::{PublicKeyMap, verify_event};

    use super::*;

    #[test]
    fn requests_are_counted_per_endpoint_without_their_ids() {
        for (path, route) in [
            ("/_matrix/federation/v1/event/$abc", "/_matrix/federation/v1/event/{}"),
            ("/_matrix/federation/v1/send/1700000000-3", "/_matrix/federation/v1/send/{}"),
            ("/_matrix/federation/v1/make_join/!r:x/@u:y", "/_matrix/federation/v1/make_join/{}/{}"),
            ("/_matrix/federation/v1/user/keys/query", "/_matrix/federation/v1/user/keys/query"),
            ("/_matrix/key/v2/server/ed25519:a_1", "/_matrix/key/v2/server/{}"),
            ("/_matrix/key/v2/server", "/_matrix/key/v2/server"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }

    #[test]
    fn hosted_rooms_are_signed_chained_and_named_by_reference_hash() {
        let peer = Peer::new("127.0.0.1:8450".parse().unwrap(), Duration::from_secs(1)).unwrap();
        peer.host_room("!r:127.0.0.1:8450", 3).unwrap();
        let keys: PublicKeyMap = [(
            peer.name.to_string(),
            [(format!("ed25519:{KEY_VERSION}"), Base64::new(peer.key.public_key().to_vec()))].into(),
        )]
        .into();
        let rules = ROOM_VERSION.rules().unwrap();
        let state = peer.state_ids_at("!r:127.0.0.1:8450", "$none").unwrap();
        // create, owner join, power levels, join rules, history visibility, 2 more members.
        assert_eq!(state.len(), 7);
        for (i, id) in state.iter().enumerate() {
            let pdu = peer.event(id).unwrap();
            let object: CanonicalJsonObject = serde_json::from_value(Value::clone(&pdu)).unwrap();
            verify_event(&keys, &object, &rules).unwrap();
            assert_eq!(format!("${}", reference_hash(&object, &rules).unwrap()), *id);
            let prev = string_list(&pdu["prev_events"]);
            assert_eq!(prev, state[..i].last().cloned().into_iter().collect::<Vec<_>>());
        }
        // A member's auth chain: create, power levels (and the owner's join it rests on),
        // join rules.
        let chain: HashSet<String> = peer.auth_chain(&state[6..]).into_iter().collect();
        assert_eq!(chain, HashSet::from([state[0].clone(), state[1].clone(), state[2].clone(), state[3].clone()]));
    }
}
