//! The shortest path through the server: register, create a room, send, sync, restart.

use ruma::{
    TransactionId,
    api::client::{
        membership::{join_room_by_id, joined_members},
        message::send_message_event,
        room::create_room,
        sync::sync_events,
    },
    events::room::message::RoomMessageEventContent,
};

use crate::harness::TestServer;

#[tokio::test]
async fn join_public_room_and_see_messages_after_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut create = create_room::v3::Request::new();
    create.preset = Some(create_room::v3::RoomPreset::PublicChat);
    let room_id = alice.send(create).await.room_id;

    let bob = server.register("bob").await;
    bob.send(join_room_by_id::v3::Request::new(room_id.clone())).await;
    let members = alice.send(joined_members::v3::Request::new(room_id.clone())).await;
    assert!(members.joined.contains_key(bob.user_id()));

    let content = RoomMessageEventContent::text_plain("hello");
    let request = send_message_event::v3::Request::new(room_id.clone(), TransactionId::new(), &content).unwrap();
    let event_id = bob.send(request).await.event_id;

    server.restart().await;
    let sync = alice.send(sync_events::v3::Request::new()).await;
    let room = &sync.rooms.join[&room_id];
    let ids: Vec<String> =
        room.timeline.events.iter().map(|e| e.get_field::<String>("event_id").unwrap().unwrap()).collect();
    assert!(ids.contains(&event_id.to_string()), "{ids:?}");
}

#[tokio::test]
async fn server_keys_are_published_signed_and_stable_across_restarts() {
    use ruma::api::federation::discovery::{get_server_keys, get_server_version};
    let mut server = TestServer::start().await;
    let client = server.client();
    let now = ruma::MilliSecondsSinceUnixEpoch::now().get().into();
    let document = client.send(get_server_keys::v2::Request::new()).await.server_key;
    let verified = ieum_federation::keys::verify_key_document(
        document.json().get(),
        server.server_name().try_into().unwrap(),
        now,
    )
    .expect("a document signed by its own key, for this server, still valid");
    assert_eq!(verified.keys.len(), 1);
    assert!(verified.valid_until > now + 3_600_000, "valid for hours, not seconds");
    // The key survives a restart (other servers cache it).
    server.restart().await;
    let again = client.send(get_server_keys::v2::Request::new()).await.server_key;
    let after =
        ieum_federation::keys::verify_key_document(again.json().get(), server.server_name().try_into().unwrap(), now)
            .unwrap();
    assert_eq!(after.keys, verified.keys);
    let version = client.send(get_server_version::v1::Request::new()).await;
    assert_eq!(version.server.and_then(|s| s.name).as_deref(), Some("ieum"));
}
