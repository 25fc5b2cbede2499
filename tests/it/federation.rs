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
            servers.push(TestServer::start_with(&env).await);
        }
        Self { servers }
    }
}

/// Polls until `check` holds (federation is asynchronous), for at most 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
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
    assert!(!invited.invite_state.events.is_empty());

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
