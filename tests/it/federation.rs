//! Federation between ieum servers on loopback (ministries A, B, C): each serves TLS with
//! a self-signed certificate on its own port, and the others reach it through the
//! `federation.overrides` map. Real X-Matrix signing, key fetching and event checks.

use std::time::Duration;

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId,
    api::client::{
        membership::{
            invite_user::{self, v3::InvitationRecipient},
            join_room_by_id_or_alias, joined_members, leave_room,
        },
        message::{get_message_events, send_message_event},
        room::create_room,
        sync::sync_events,
    },
    events::{AnyMessageLikeEventContent, room::message::RoomMessageEventContent},
    serde::Raw,
};

use crate::harness::{Client, TestServer};

/// Servers that federate with each other.
pub struct Cluster {
    pub servers: Vec<TestServer>,
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Cluster {
    /// Starts servers named `names` (e.g. "a.test"), each knowing where the others are.
    pub async fn start(names: &[&str]) -> Self {
        Self::start_with(names, &[]).await
    }

    pub async fn start_with(names: &[&str], extra: &[(&str, &str)]) -> Self {
        // The ports are chosen before the servers bind them: another test may take one in
        // between, so a cluster that cannot bind starts again on fresh ports.
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start(names, extra).await {
                return cluster;
            }
        }
        panic!("could not find free ports for a cluster");
    }

    async fn try_start(names: &[&str], extra: &[(&str, &str)]) -> Option<Self> {
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let overrides: Vec<String> =
            names.iter().zip(&ports).map(|(name, port)| format!("\"{name}\" = \"127.0.0.1:{port}\"")).collect();
        let overrides = format!("{{ {} }}", overrides.join(", "));
        let skip: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        let skip = format!("[{}]", skip.join(", "));
        let mut servers = Vec::new();
        for (name, port) in names.iter().zip(&ports) {
            let listen = format!("127.0.0.1:{port}");
            let mut env = vec![
                ("IEUM_SERVER_NAME", *name),
                ("IEUM_FEDERATION__LISTEN", listen.as_str()),
                ("IEUM_FEDERATION__SELF_SIGNED", "true"),
                ("IEUM_FEDERATION__OVERRIDES", overrides.as_str()),
                ("IEUM_FEDERATION__SKIP_VERIFY", skip.as_str()),
                ("IEUM_FEDERATION__REQUEST_TIMEOUT_MS", "10000"),
            ];
            env.extend_from_slice(extra);
            match TestServer::try_start_with(&env).await {
                Ok(server) => servers.push(server),
                Err(ieum::server::ServerError::Bind { .. }) => return None,
                Err(error) => panic!("server starts: {error}"),
            }
        }
        Some(Self { servers })
    }
}

/// Polls until `check` holds (federation is asynchronous), for at most 60 s (a loaded
/// machine running every test at once may need a retry of a transaction).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Polls `check` every 100 ms until it holds (true) or `limit` has passed (false).
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn create_public_room(client: &Client) -> OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    client.send(request).await.room_id
}

pub async fn join_via(client: &Client, room_id: &RoomId, server: &str) {
    let mut request = join_room_by_id_or_alias::v3::Request::new(room_id.to_owned().into());
    request.via = vec![OwnedServerName::try_from(server).unwrap()];
    client.send(request).await;
}

pub async fn say(client: &Client, room_id: &RoomId, text: &str) {
    let content = AnyMessageLikeEventContent::RoomMessage(RoomMessageEventContent::text_plain(text));
    let txn = ruma::TransactionId::new();
    let request = send_message_event::v3::Request::new(room_id.to_owned(), txn, &content).unwrap();
    client.send(request).await;
}

/// The message bodies of a room as `client` sees them, oldest first.
pub async fn bodies(client: &Client, room_id: &RoomId) -> Vec<String> {
    let mut request = get_message_events::v3::Request::backward(room_id.to_owned());
    request.limit = ruma::uint!(100);
    let Ok(response) = client.try_send(request).await else { return Vec::new() };
    let mut out: Vec<String> = response
        .chunk
        .iter()
        .filter_map(|event| {
            let value: serde_json::Value = event.deserialize_as().ok()?;
            (value["type"] == "m.room.message").then(|| value["content"]["body"].as_str().map(str::to_owned))?
        })
        .collect();
    out.reverse();
    out
}

pub async fn joined(client: &Client, room_id: &RoomId) -> Vec<String> {
    match client
        .try_send(joined_members::v3::Request::new(room_id.to_owned()))
        .await
        .inspect_err(|e| eprintln!("joined_members: {} {}", e.status, e.body))
    {
        Ok(response) => {
            let mut users: Vec<String> = response.joined.keys().map(|u| u.to_string()).collect();
            users.sort();
            users
        }
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_room_on_one_server_spans_two() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;

    join_via(&bob, &room, "a.test").await;
    let expected = {
        let mut users = vec![alice.user_id().to_string(), bob.user_id().to_string()];
        users.sort();
        users
    };
    assert_eq!(joined(&bob, &room).await, expected, "B knows the room's members right after joining");
    eventually("A sees B's join", || async { joined(&alice, &room).await == expected }).await;

    say(&alice, &room, "hello from A").await;
    eventually("B receives A's message", || async { bodies(&bob, &room).await.contains(&"hello from A".into()) }).await;
    say(&bob, &room, "hello from B").await;
    eventually("A receives B's message", || async { bodies(&alice, &room).await.contains(&"hello from B".into()) })
        .await;

    // /sync on B shows the room joined, with A's message.
    let response = bob.send(sync_events::v3::Request::new()).await;
    let joined_room = response.rooms.join.get(&room).expect("room in B's sync");
    let texts: Vec<String> = joined_room
        .timeline
        .events
        .iter()
        .filter_map(|e| e.get_field::<serde_json::Value>("content").ok().flatten())
        .filter_map(|c| c["body"].as_str().map(str::to_owned))
        .collect();
    assert!(texts.contains(&"hello from A".to_owned()), "{texts:?}");
}

#[tokio::test]
async fn invites_cross_servers_and_can_be_accepted_or_rejected() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = alice.send(create_room::v3::Request::new()).await.room_id;

    for invitee in [&bob, &carol] {
        let recipient = InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(invitee.user_id().to_owned()));
        alice.send(invite_user::v3::Request::new(room.clone(), recipient)).await;
    }
    // The invite reaches B's users through /sync, with the room's stripped state.
    let response = bob.send(sync_events::v3::Request::new()).await;
    let invited = response.rooms.invite.get(&room).expect("bob sees the invite");
    let types: Vec<String> =
        invited.invite_state.events.iter().filter_map(|e| e.get_field::<String>("type").ok().flatten()).collect();
    for wanted in ["m.room.create", "m.room.join_rules", "m.room.member"] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in the invite's stripped state: {types:?}");
    }

    // Bob accepts (joins through the inviter's server without being told where).
    bob.send(join_room_by_id_or_alias::v3::Request::new(room.clone().into())).await;
    eventually("A sees bob joined", || async { joined(&alice, &room).await.contains(&bob.user_id().to_string()) })
        .await;

    // Carol rejects: A sees her leave.
    carol.send(leave_room::v3::Request::new(room.clone())).await;
    eventually("A sees carol's rejection", || async {
        let members =
            alice.send(ruma::api::client::membership::get_member_events::v3::Request::new(room.clone())).await.chunk;
        members.iter().any(|m| {
            let value: serde_json::Value = m.deserialize_as().unwrap();
            value["state_key"] == carol.user_id().as_str() && value["content"]["membership"] == "leave"
        })
    })
    .await;
}

#[tokio::test]
async fn three_servers_keep_talking_when_one_stops() {
    let mut cluster = Cluster::start(&["a.test", "b.test", "c.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let bob = cluster.servers[1].register("bob").await;
    let carol = cluster.servers[2].register("carol").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    join_via(&carol, &room, "a.test").await;
    eventually("B sees C", || async { joined(&bob, &room).await.len() == 3 }).await;

    say(&alice, &room, "one").await;
    eventually("C has one", || async { bodies(&carol, &room).await.contains(&"one".into()) }).await;

    // A goes down: B and C keep talking.
    cluster.servers[0].stop().await;
    say(&bob, &room, "two").await;
    eventually("C has two while A is down", || async { bodies(&carol, &room).await.contains(&"two".into()) }).await;
    say(&carol, &room, "three").await;
    eventually("B has three while A is down", || async { bodies(&bob, &room).await.contains(&"three".into()) }).await;

    // A comes back and catches up on everything it missed, in order, without gaps.
    cluster.servers[0].start_again().await;
    say(&bob, &room, "four").await;
    eventually("A caught up", || async {
        let seen = bodies(&alice, &room).await;
        seen == ["one", "two", "three", "four"]
    })
    .await;
}

#[tokio::test]
async fn typing_and_receipts_cross_servers() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    say(&bob, &room, "read me").await;
    eventually("A has bob's message", || async { bodies(&alice, &room).await.contains(&"read me".into()) }).await;

    use ruma::api::client::{receipt::create_receipt, typing::create_typing_event};
    let typing = create_typing_event::v3::Request::new(
        bob.user_id().to_owned(),
        room.clone(),
        create_typing_event::v3::Typing::Yes(create_typing_event::v3::TypingInfo::new(Duration::from_secs(30))),
    );
    bob.send(typing).await;
    let last = alice
        .send(get_message_events::v3::Request::backward(room.clone()))
        .await
        .chunk
        .first()
        .and_then(|e| e.get_field::<ruma::OwnedEventId>("event_id").ok().flatten())
        .expect("an event");
    bob.send(create_receipt::v3::Request::new(room.clone(), create_receipt::v3::ReceiptType::Read, last.clone())).await;
    eventually("A's sync shows bob typing and bob's receipt", || async {
        let response = alice.send(sync_events::v3::Request::new()).await;
        let Some(joined) = response.rooms.join.get(&room) else { return false };
        let ephemeral: Vec<serde_json::Value> =
            joined.ephemeral.events.iter().filter_map(|e| e.deserialize_as().ok()).collect();
        let typing = ephemeral.iter().any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| u == bob.user_id().as_str()))
        });
        let receipt = ephemeral.iter().any(|e| {
            e["type"] == "m.receipt" && e["content"][last.as_str()]["m.read"][bob.user_id().as_str()].is_object()
        });
        typing && receipt
    })
    .await;
}

#[tokio::test]
async fn closed_federation_refuses_servers_outside_the_allowlist() {
    // A allows only a.test and c.test; B is outside.
    let cluster =
        Cluster::start_with(&["a.test", "b.test"], &[("IEUM_FEDERATION__ALLOW", "[\"a.test\", \"c.test\"]")]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;

    // A's user cannot invite someone on B: a clear error for the client.
    let recipient = InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(bob.user_id().to_owned()));
    let error = alice.try_send(invite_user::v3::Request::new(room.clone(), recipient)).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
    assert_eq!(error.errcode(), "M_FORBIDDEN");
    assert!(error.body["error"].as_str().unwrap().contains("b.test"), "{}", error.body);

    // B's user cannot join A's room: A refuses B's requests.
    let mut request = join_room_by_id_or_alias::v3::Request::new(room.clone().into());
    request.via = vec![OwnedServerName::try_from("a.test").unwrap()];
    let error = bob.try_send(request).await.unwrap_err();
    assert_eq!(error.errcode(), "M_FORBIDDEN", "{}", error.body);
    assert_eq!(joined(&alice, &room).await, vec![alice.user_id().to_string()]);

    // And a signed request from B straight to A is refused with M_FORBIDDEN.
    let b_app = b.app();
    let result = b_app
        .federation
        .client
        .send(
            ruma::server_name!("a.test"),
            ruma::api::federation::event::get_room_state_ids::v1::Request::new(
                ruma::event_id!("$x").to_owned(),
                room.clone(),
            ),
        )
        .await;
    match result {
        Err(ieum_federation::client::FederationError::Remote { status, body, .. }) => {
            assert_eq!(status, 403);
            assert!(body.contains("M_FORBIDDEN"), "{body}");
        }
        other => panic!("expected a 403 from A, got {other:?}"),
    }
}

#[tokio::test]
async fn forged_and_malformed_federation_traffic_is_refused() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    say(&bob, &room, "genuine").await;
    eventually("A has the genuine message", || async { bodies(&alice, &room).await.contains(&"genuine".into()) }).await;

    // No X-Matrix header, and a header with a bad signature: 401 M_UNAUTHORIZED.
    let https = a.tls_client();
    let (status, body) = https.raw("GET", "/_matrix/federation/v1/state_ids/!x:a.test?event_id=$y", None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    let forged = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("{}/_matrix/federation/v1/query/profile?user_id={}", a.tls_base(), alice.user_id()))
        .header("Authorization", "X-Matrix origin=\"b.test\",destination=\"a.test\",key=\"ed25519:a_xyz\",sig=\"AAAA\"")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    // A tampered event (content changed after B signed it) is rejected and never shown.
    let b_app = b.app();
    let genuine_id = bob
        .send(get_message_events::v3::Request::backward(room.clone()))
        .await
        .chunk
        .iter()
        .filter_map(|e| e.deserialize_as::<serde_json::Value>().ok())
        .find(|e| e["content"]["body"] == "genuine")
        .and_then(|e| e["event_id"].as_str().map(str::to_owned))
        .expect("genuine event");
    let stored = b_app.rooms.pdu(&ruma::EventId::parse(&genuine_id).unwrap()).unwrap().unwrap();
    let mut tampered: serde_json::Value = serde_json::from_str(stored.stored.pdu.get()).unwrap();
    tampered["content"]["body"] = "forged".into();
    tampered["origin_server_ts"] = (tampered["origin_server_ts"].as_u64().unwrap() + 1).into();
    let tampered = serde_json::value::to_raw_value(&tampered).unwrap();
    let mut unknown_room: serde_json::Value = serde_json::from_str(stored.stored.pdu.get()).unwrap();
    unknown_room["room_id"] = "!nowhere:a.test".into();
    let unknown_room = serde_json::value::to_raw_value(&unknown_room).unwrap();
    let txn = ruma::OwnedTransactionId::from("replay-me");
    let request = || {
        let mut request = ruma::api::federation::transactions::send_transaction_message::v1::Request::new(
            txn.clone(),
            ruma::server_name!("b.test").to_owned(),
            ruma::MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = vec![tampered.clone(), unknown_room.clone()];
        request
    };
    let first = b_app.federation.client.send(ruma::server_name!("a.test"), request()).await.unwrap();
    assert_eq!(first.pdus.len(), 2, "{:?}", first.pdus);
    assert!(first.pdus.values().all(|r| r.is_err()), "{:?}", first.pdus);
    // The same transaction again: the same answer, nothing processed twice.
    let replay = b_app.federation.client.send(ruma::server_name!("a.test"), request()).await.unwrap();
    assert_eq!(format!("{:?}", replay.pdus), format!("{:?}", first.pdus));
    assert!(!bodies(&alice, &room).await.contains(&"forged".into()));

    // An event presented under another room's path (send_join into a room it is not in).
    let other_room = create_public_room(&alice).await;
    let request = ruma::api::federation::membership::create_join_event::v2::Request::new(
        other_room.clone(),
        ruma::EventId::parse(&genuine_id).unwrap(),
        stored.stored.pdu.clone(),
    );
    let error = b_app.federation.client.send(ruma::server_name!("a.test"), request).await.unwrap_err();
    match error {
        ieum_federation::client::FederationError::Remote { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("not in room"), "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }

    // More than 50 PDUs in one transaction: refused whole.
    let mut oversized = ruma::api::federation::transactions::send_transaction_message::v1::Request::new(
        ruma::OwnedTransactionId::from("too-big"),
        ruma::server_name!("b.test").to_owned(),
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    oversized.pdus = vec![stored.stored.pdu.clone(); 51];
    let error = b_app.federation.client.send(ruma::server_name!("a.test"), oversized).await.unwrap_err();
    assert!(matches!(error, ieum_federation::client::FederationError::Remote { status: 413, .. }), "{error:?}");
}

/// A public room of alice on A that bob on B has joined, where any member may set the name.
async fn room_either_may_name(cluster: &Cluster) -> (Client, Client, OwnedRoomId) {
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut request = create_room::v3::Request::new();
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.power_level_content_override =
        Some(Raw::new(&serde_json::json!({ "events": { "m.room.name": 0 } })).unwrap().cast_unchecked());
    let room = alice.send(request).await.room_id;
    join_via(&bob, &room, "a.test").await;
    eventually("A sees bob", || async { joined(&alice, &room).await.len() == 2 }).await;
    (alice, bob, room)
}

fn set_name(room: &RoomId, name: &str) -> ruma::api::client::state::send_state_event::v3::Request {
    ruma::api::client::state::send_state_event::v3::Request::new(
        room.to_owned(),
        &ruma::events::EmptyStateKey,
        &ruma::events::room::name::RoomNameEventContent::new(name.into()),
    )
    .unwrap()
}

/// What a server answers for the room's name: the name, or the error.
async fn name_of(client: Client, room: OwnedRoomId) -> Result<String, String> {
    use ruma::api::client::state::get_state_event_for_key;
    let request =
        get_state_event_for_key::v3::Request::new(room, ruma::events::StateEventType::RoomName, String::new());
    match client.try_send(request).await {
        Ok(r) => serde_json::from_str::<serde_json::Value>(r.event_or_content.get())
            .ok()
            .and_then(|c| c["name"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("no name in {}", r.event_or_content.get())),
        Err(error) => Err(format!("{error:?}")),
    }
}

/// Waits (60 s at most) until both servers answer the same name; returns it, or fails with
/// what each last answered.
async fn agreed_name(alice: &Client, bob: &Client, room: &RoomId) -> String {
    let last = std::sync::Arc::new(std::sync::Mutex::new((Err(String::new()), Err(String::new()))));
    let agreed = within(Duration::from_secs(60), || {
        let (alice, bob, last, room) = (alice.clone(), bob.clone(), last.clone(), room.to_owned());
        async move {
            let (na, nb) = (name_of(alice, room.clone()).await, name_of(bob, room).await);
            let same = na.is_ok() && na == nb;
            *last.lock().unwrap() = (na, nb);
            same
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    assert!(agreed, "the servers do not agree on the name: (A, B) = {last:?}");
    last.0.unwrap()
}

#[tokio::test]
async fn concurrent_state_changes_resolve_to_the_same_state_everywhere() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (alice, bob, room) = room_either_may_name(&cluster).await;
    let (ra, rb) = tokio::join!(alice.send(set_name(&room, "from A")), bob.send(set_name(&room, "from B")));
    let _ = (ra, rb);
    agreed_name(&alice, &bob, &room).await;
    // Both servers see both events, then still agree on one name.
    say(&alice, &room, "after A").await;
    say(&bob, &room, "after B").await;
    agreed_name(&alice, &bob, &room).await;
}

/// Each server changes the name while the other is down, so each receives the other's
/// change on top of its own: both must weigh the incoming event in state resolution (it
/// was once left out because it was not stored yet, and each server kept its own name).
/// Resolution orders the two name events by timestamp: the later one, B's, wins.
#[tokio::test]
async fn state_changes_made_apart_resolve_the_same_on_both_servers() {
    let mut cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (alice, bob, room) = room_either_may_name(&cluster).await;
    cluster.servers[1].stop().await;
    alice.send(set_name(&room, "from A")).await;
    cluster.servers[0].stop().await;
    cluster.servers[1].start_again().await;
    bob.send(set_name(&room, "from B")).await;
    cluster.servers[0].start_again().await;
    assert_eq!(agreed_name(&alice, &bob, &room).await, "from B");
}

/// Figures for the federation note (not a pass/fail timing test; run it by hand):
/// `cargo test --release --test it federation::figures -- --ignored --nocapture`
/// The time for a server to join a room of `IEUM_FIGURES_MEMBERS` (1000) members, and how
/// fast a burst of `IEUM_FIGURES_EVENTS` (2000) messages from one server is ingested by the other.
#[tokio::test]
#[ignore = "measurement, run by hand"]
async fn figures() {
    let members: usize = std::env::var("IEUM_FIGURES_MEMBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let events: usize = std::env::var("IEUM_FIGURES_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;
    let a_app = a.app();
    let setup = std::time::Instant::now();
    for n in 0..members.saturating_sub(1) {
        let user = a_app.users.create(Some(&format!("member{n}")), None, false, None).await.unwrap();
        a_app.rooms.join(&user, &room, None, Default::default(), &[]).await.unwrap();
    }
    eprintln!("setup: {} local members joined on A in {:?}", members, setup.elapsed());

    let started = std::time::Instant::now();
    join_via(&bob, &room, "a.test").await;
    let join_time = started.elapsed();
    eprintln!("FIGURE join of a {members}-member room over federation: {join_time:?}");

    // Ingest: B is down while A's users talk; when B is back, A's queue drains into it.
    let mut cluster = cluster;
    cluster.servers[1].stop().await;
    let started = std::time::Instant::now();
    for n in 0..events {
        let mut content = serde_json::Map::new();
        content.insert("msgtype".into(), "m.text".into());
        content.insert("body".into(), format!("burst {n}").into());
        let new = ieum::service::rooms::NewEvent::new(
            &room,
            alice.user_id(),
            ruma::events::TimelineEventType::RoomMessage,
            None,
            content,
        );
        a_app.rooms.send(new).await.unwrap();
    }
    eprintln!("setup: {events} messages sent on A while B was down, in {:?}", started.elapsed());
    cluster.servers[1].start_again().await;
    let b_app = cluster.servers[1].app();
    // B talks to A, so A stops backing off and sends the backlog at once.
    let started = std::time::Instant::now();
    say(&bob, &room, "back").await;
    let count = || b_app.core.db.timeline(&room, 0, ieum::storage::Direction::Forward, events + 100).unwrap().len();
    let mut waited = 0;
    while count() < events {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
        assert!(waited < 3000, "B has only {} of {events} events after 5 minutes", count());
    }
    let total = started.elapsed();
    eprintln!(
        "FIGURE {events} queued messages ingested by B in {total:?} = {:.0} events/s",
        events as f64 / total.as_secs_f64()
    );
}

#[tokio::test]
async fn messages_reach_back_past_the_join_by_backfilling() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;
    let history: Vec<String> = (0..30).map(|n| format!("before bob {n}")).collect();
    for text in &history {
        say(&alice, &room, text).await;
    }
    join_via(&bob, &room, "a.test").await;
    // B holds nothing older than bob's join: /messages asks A (/backfill) and shows it all.
    let seen = bodies(&bob, &room).await;
    assert_eq!(seen, history, "B's /messages shows the history from before the join, in order");
    // History fetched once stays: the second read is local and identical.
    assert_eq!(bodies(&bob, &room).await, history);
    // Live events still arrive after it.
    say(&alice, &room, "after bob").await;
    eventually("B has the live message after the history", || async {
        bodies(&bob, &room).await.last().map(String::as_str) == Some("after bob")
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_stalls_or_answers_garbage_is_contained() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // stall.test accepts connections and never answers; garbage.test answers noise.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stall_addr, garbage_addr) = (stall.local_addr().unwrap(), garbage.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stall.accept().await {
            held.push(socket);
        }
    });
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = garbage.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(b"\x16\x03\x01\x00\x05hello garbage\r\n\r\n").await;
        }
    });
    let overrides = format!("{{ \"stall.test\" = \"{stall_addr}\", \"garbage.test\" = \"{garbage_addr}\" }}");
    let server = TestServer::start_with(&[
        ("IEUM_FEDERATION__OVERRIDES", overrides.as_str()),
        ("IEUM_FEDERATION__SKIP_VERIFY", "[\"stall.test\", \"garbage.test\"]"),
        ("IEUM_FEDERATION__REQUEST_TIMEOUT_MS", "1500"),
    ])
    .await;
    let alice = server.register("alice").await;
    let room = create_public_room(&alice).await;
    for peer in ["stall.test", "garbage.test"] {
        let remote_room = OwnedRoomId::try_from(format!("!somewhere:{peer}")).unwrap();
        let mut request = join_room_by_id_or_alias::v3::Request::new(remote_room.into());
        request.via = vec![OwnedServerName::try_from(peer).unwrap()];
        let started = std::time::Instant::now();
        let error = alice.try_send(request).await.unwrap_err();
        assert_eq!(error.status, 502, "{peer}: {}", error.body);
        assert!(error.body["error"].as_str().unwrap().contains(peer), "{}", error.body);
        assert!(started.elapsed() < Duration::from_secs(30), "{peer}: bounded by the request timeout");
    }
    // The server is unharmed: local rooms work as before.
    say(&alice, &room, "still here").await;
    assert_eq!(bodies(&alice, &room).await, ["still here"]);
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_the_old_one_still_verifies() {
    let mut cluster = Cluster::start(&["a.test", "b.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let bob = cluster.servers[1].register("bob").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    say(&bob, &room, "signed with the first key").await;
    eventually("A has the first message", || async {
        bodies(&alice, &room).await.contains(&"signed with the first key".into())
    })
    .await;
    let before: serde_json::Value = cluster.servers[1].client().raw("GET", "/_matrix/key/v2/server", None).await.1;

    // B rotates its key while stopped (`ieum rotate-signing-key`).
    cluster.servers[1].stop().await;
    let db = ieum::storage::open_at(&cluster.servers[1].dir.path().join("db")).unwrap();
    let (old, new) = ieum::service::rotate_signing_key(&*db, ruma::server_name!("b.test")).unwrap();
    drop(db);
    cluster.servers[1].start_again().await;
    let after: serde_json::Value = cluster.servers[1].client().raw("GET", "/_matrix/key/v2/server", None).await.1;
    assert!(before["verify_keys"][&old].is_object(), "{before}");
    assert!(after["verify_keys"][&new].is_object(), "{after}");
    assert!(after["old_verify_keys"][&old]["expired_ts"].is_u64(), "{after}");

    // A learns the new key on first use: B's requests and events signed with it are accepted.
    say(&bob, &room, "signed with the new key").await;
    eventually("A has the second message", || async {
        bodies(&alice, &room).await.contains(&"signed with the new key".into())
    })
    .await;
}

#[tokio::test]
async fn knocking_crosses_servers() {
    use ruma::api::client::knock::knock_room;
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut request = create_room::v3::Request::new();
    request.initial_state = vec![
        Raw::new(
            &serde_json::json!({ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }),
        )
        .unwrap()
        .cast_unchecked(),
    ];
    let room = alice.send(request).await.room_id;

    let mut knock = knock_room::v3::Request::new(room.clone().into());
    knock.via = vec![OwnedServerName::try_from("a.test").unwrap()];
    knock.reason = Some("let me in".into());
    bob.send(knock).await;
    // B shows the knock with the room's stripped state; A sees bob knocking.
    let response = bob.send(sync_events::v3::Request::new()).await;
    let knocked = response.rooms.knock.get(&room).expect("bob's sync shows the knock");
    let types: Vec<String> =
        knocked.knock_state.events.iter().filter_map(|e| e.get_field::<String>("type").ok().flatten()).collect();
    assert!(types.iter().any(|t| t == "m.room.join_rules"), "{types:?}");
    eventually("A sees the knock", || async {
        alice
            .send(ruma::api::client::membership::get_member_events::v3::Request::new(room.clone()))
            .await
            .chunk
            .iter()
            .filter_map(|m| m.deserialize_as::<serde_json::Value>().ok())
            .any(|m| m["state_key"] == bob.user_id().as_str() && m["content"]["membership"] == "knock")
    })
    .await;

    // Alice lets bob in; he joins.
    let recipient = InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(bob.user_id().to_owned()));
    alice.send(invite_user::v3::Request::new(room.clone(), recipient)).await;
    bob.send(join_room_by_id_or_alias::v3::Request::new(room.clone().into())).await;
    eventually("A sees bob joined", || async { joined(&alice, &room).await.contains(&bob.user_id().to_string()) })
        .await;
}

#[tokio::test]
async fn a_server_acl_stops_traffic_both_ways() {
    let cluster = Cluster::start(&["a.test", "b.test", "c.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let bob = cluster.servers[1].register("bob").await;
    let carol = cluster.servers[2].register("carol").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    join_via(&carol, &room, "a.test").await;
    eventually("everyone is in", || async { joined(&bob, &room).await.len() == 3 }).await;

    // The room denies c.test.
    use ruma::api::client::state::send_state_event;
    let acl = serde_json::json!({ "allow": ["*"], "deny": ["c.test"], "allow_ip_literals": false });
    let request = send_state_event::v3::Request::new_raw(
        room.clone(),
        ruma::events::StateEventType::RoomServerAcl,
        String::new(),
        Raw::new(&acl).unwrap().cast_unchecked(),
    );
    alice.send(request).await;
    eventually("B has the ACL", || async {
        let request = ruma::api::client::state::get_state_event_for_key::v3::Request::new(
            room.clone(),
            ruma::events::StateEventType::RoomServerAcl,
            String::new(),
        );
        bob.try_send(request).await.is_ok()
    })
    .await;

    // C's messages are refused by A and B; A and B no longer send C anything.
    say(&carol, &room, "from a denied server").await;
    say(&alice, &room, "not for c").await;
    eventually("B has A's message", || async { bodies(&bob, &room).await.contains(&"not for c".into()) }).await;
    say(&bob, &room, "after the acl").await;
    eventually("A has B's message", || async { bodies(&alice, &room).await.contains(&"after the acl".into()) }).await;
    assert!(!bodies(&alice, &room).await.contains(&"from a denied server".into()));
    assert!(!bodies(&bob, &room).await.contains(&"from a denied server".into()));
    let at_c = bodies(&carol, &room).await;
    assert!(!at_c.contains(&"not for c".into()) && !at_c.contains(&"after the acl".into()), "{at_c:?}");
}

#[tokio::test]
async fn presence_crosses_servers() {
    use ruma::api::client::presence::{get_presence, set_presence};
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    eventually("A sees bob", || async { joined(&alice, &room).await.len() == 2 }).await;

    let mut request = set_presence::v3::Request::new(bob.user_id().to_owned(), ruma::presence::PresenceState::Online);
    request.status_msg = Some("in the ministry".into());
    bob.send(request).await;
    // Someone else may not set bob's presence.
    let forged = set_presence::v3::Request::new(bob.user_id().to_owned(), ruma::presence::PresenceState::Offline);
    assert_eq!(alice.try_send(forged).await.unwrap_err().status, 403);

    eventually("A knows bob is online", || async {
        match alice.try_send(get_presence::v3::Request::new(bob.user_id().to_owned())).await {
            Ok(response) => {
                response.presence == ruma::presence::PresenceState::Online
                    && response.status_msg.as_deref() == Some("in the ministry")
            }
            Err(_) => false,
        }
    })
    .await;
    let response = alice.send(sync_events::v3::Request::new()).await;
    let events: Vec<serde_json::Value> =
        response.presence.events.iter().filter_map(|e| e.deserialize_as().ok()).collect();
    assert!(
        events.iter().any(|e| e["sender"] == bob.user_id().as_str() && e["content"]["presence"] == "online"),
        "{events:?}"
    );

    // Going offline is not activity: A learns when bob was last active, not "just now".
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    bob.send(set_presence::v3::Request::new(bob.user_id().to_owned(), ruma::presence::PresenceState::Offline)).await;
    let started = std::time::Instant::now();
    let response = loop {
        let response = alice.send(get_presence::v3::Request::new(bob.user_id().to_owned())).await;
        if response.presence == ruma::presence::PresenceState::Offline {
            break response;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "A never learnt bob went offline");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ago = response.last_active_ago.expect("last_active_ago");
    assert!(ago >= std::time::Duration::from_millis(1000), "bob was last active {ago:?} ago, says A");
}

#[tokio::test]
async fn keys_kept_from_before_a_restart_verify_a_server_that_is_down() {
    let mut cluster = Cluster::start(&["a.test", "b.test", "c.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let bob = cluster.servers[1].register("bob").await;
    let carol = cluster.servers[2].register("carol").await;
    let room = create_public_room(&alice).await;
    join_via(&bob, &room, "a.test").await;
    join_via(&carol, &room, "a.test").await;
    // B must know C is in the room (A tells it) before A goes down, or B sends C nothing.
    eventually("B sees carol", || async { joined(&bob, &room).await.contains(&carol.user_id().to_string()) }).await;
    say(&bob, &room, "hello").await;
    eventually("A has bob's hello", || async { bodies(&alice, &room).await.contains(&"hello".into()) }).await;

    // A restarts (its key cache in memory is gone) while bob talks; then B goes down.
    cluster.servers[0].stop().await;
    say(&bob, &room, "while A was down").await;
    eventually("C has it", || async { bodies(&carol, &room).await.contains(&"while A was down".into()) }).await;
    cluster.servers[1].stop().await;
    cluster.servers[0].start_again().await;

    // C's next message leads A to fetch bob's event from C: bob's signature is checked
    // with the keys A kept, since b.test cannot be asked.
    say(&carol, &room, "after").await;
    eventually("A has bob's event through C", || async {
        let seen = bodies(&alice, &room).await;
        seen.contains(&"while A was down".into()) && seen.contains(&"after".into())
    })
    .await;
}
