//! Integration tests: the room directory — aliases (create, resolve, delete and their
//! permissions, /rooms/{id}/aliases, m.room.canonical_alias validation), room visibility in the
//! directory, and /publicRooms (GET and POST, generic_search_term, limit/since pagination).

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, RoomId,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::{Visibility, aliases, create_room},
    },
    directory::PublicRoomsChunk,
    uint,
};
use serde_json::json;

use crate::{
    harness::{Client, MatrixError, TestServer},
    rooms::{
        create_private_room, create_public_room, create_room_with, join, put_state, raw, state, try_put_state,
        try_state,
    },
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn alias(s: &str) -> OwnedRoomAliasId {
    s.try_into().unwrap_or_else(|e| panic!("alias {s}: {e}"))
}

async fn try_create_alias(client: &Client, alias_name: &str, room_id: &RoomId) -> Result<(), MatrixError> {
    client.try_send(create_alias::v3::Request::new(alias(alias_name), room_id.to_owned())).await.map(|_| ())
}

async fn try_resolve(client: &Client, alias_name: &str) -> Result<OwnedRoomId, MatrixError> {
    client.try_send(get_alias::v3::Request::new(alias(alias_name))).await.map(|r| r.room_id)
}

async fn try_delete_alias(client: &Client, alias_name: &str) -> Result<(), MatrixError> {
    client.try_send(delete_alias::v3::Request::new(alias(alias_name))).await.map(|_| ())
}

async fn room_aliases(client: &Client, room_id: &RoomId) -> Result<Vec<String>, MatrixError> {
    client
        .try_send(aliases::v3::Request::new(room_id.to_owned()))
        .await
        .map(|r| r.aliases.iter().map(|a| a.to_string()).collect())
}

async fn set_visibility(client: &Client, room_id: &RoomId, visibility: Visibility) -> Result<(), MatrixError> {
    client.try_send(set_room_visibility::v3::Request::new(room_id.to_owned(), visibility)).await.map(|_| ())
}

async fn public_rooms(client: &Client) -> Vec<PublicRoomsChunk> {
    client.send(get_public_rooms::v3::Request::new()).await.chunk
}

async fn search(client: &Client, term: &str) -> Vec<PublicRoomsChunk> {
    let mut request = get_public_rooms_filtered::v3::Request::new();
    request.filter.generic_search_term = Some(term.to_owned());
    client.send(request).await.chunk
}

async fn listed_public_room(client: &Client, f: impl FnOnce(&mut create_room::v3::Request)) -> OwnedRoomId {
    create_room_with(client, |r| {
        r.visibility = Visibility::Public;
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        f(r);
    })
    .await
}

fn admin_register_body(server_secret: &str, nonce: &str, user: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, server_secret.as_bytes());
    let message = format!("{nonce}\0{user}\0password\0admin");
    let mac: String = ring::hmac::sign(&key, message.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    json!({ "nonce": nonce, "username": user, "password": "password", "admin": true, "mac": mac }).to_string()
}

// ---------------------------------------------------------------------------------------------
// Aliases

#[tokio::test]
async fn create_alias_and_resolve_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#creates_alias:ieum.test", &room_id).await.unwrap();
    let response = alice.send(get_alias::v3::Request::new(alias("#creates_alias:ieum.test"))).await;
    assert_eq!(response.room_id, room_id);
    assert_eq!(response.servers.iter().map(|s| s.as_str()).collect::<Vec<_>>(), vec!["ieum.test"]);
}

#[tokio::test]
async fn resolving_an_alias_needs_no_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#anyone_can_resolve:ieum.test", &room_id).await.unwrap();
    assert_eq!(try_resolve(&eve, "#anyone_can_resolve:ieum.test").await.unwrap(), room_id);
}

#[tokio::test]
async fn resolve_unknown_alias_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = try_resolve(&alice, "#nothing_here:ieum.test").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn room_aliases_can_contain_unicode() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let unicode = "#老虎Â£я:ieum.test";
    try_create_alias(&alice, unicode, &room_id).await.unwrap();
    assert_eq!(try_resolve(&alice, unicode).await.unwrap(), room_id);
}

#[tokio::test]
async fn creating_an_existing_alias_is_409() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room1 = create_private_room(&alice).await;
    let room2 = create_private_room(&alice).await;
    try_create_alias(&alice, "#taken:ieum.test", &room1).await.unwrap();
    let error = try_create_alias(&alice, "#taken:ieum.test", &room2).await.unwrap_err();
    assert_eq!(error.status, 409, "{}", error.body);
    assert_eq!(try_resolve(&alice, "#taken:ieum.test").await.unwrap(), room1);
}

#[tokio::test]
async fn alias_on_another_server_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let error = try_create_alias(&alice, "#mine:other.example", &room_id).await.unwrap_err();
    assert_eq!(error.status, 400, "{}", error.body);
    assert!(error.body["errcode"].is_string(), "{}", error.body);
}

#[tokio::test]
async fn non_member_cannot_create_alias_for_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = create_private_room(&alice).await;
    let error = try_create_alias(&eve, "#eves_alias:ieum.test", &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(try_resolve(&alice, "#eves_alias:ieum.test").await.unwrap_err().status, 404);
}

#[tokio::test]
async fn alias_for_unknown_room_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id: OwnedRoomId = "!unknown:ieum.test".try_into().unwrap();
    let error = try_create_alias(&alice, "#ghost_room:ieum.test", &room_id).await.unwrap_err();
    assert!(matches!(error.status, 403 | 404), "{} {}", error.status, error.body);
    assert_eq!(try_resolve(&alice, "#ghost_room:ieum.test").await.unwrap_err().status, 404);
}

#[tokio::test]
async fn room_aliases_lists_the_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    assert!(room_aliases(&alice, &room_id).await.unwrap().is_empty());
    try_create_alias(&alice, "#lists_aliases:ieum.test", &room_id).await.unwrap();
    try_create_alias(&alice, "#lists_aliases_2:ieum.test", &room_id).await.unwrap();
    let mut listed = room_aliases(&alice, &room_id).await.unwrap();
    listed.sort();
    assert_eq!(listed, vec!["#lists_aliases:ieum.test", "#lists_aliases_2:ieum.test"]);
}

#[tokio::test]
async fn only_room_members_can_list_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#room_members_list:ieum.test", &room_id).await.unwrap();
    let error = room_aliases(&bob, &room_id).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
}

#[tokio::test]
async fn alias_creator_can_delete_alias_without_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_create_alias(&bob, "#no_ops_delete:ieum.test", &room_id).await.unwrap();
    try_delete_alias(&bob, "#no_ops_delete:ieum.test").await.unwrap();
    let error = try_resolve(&alice, "#no_ops_delete:ieum.test").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"));
    assert!(room_aliases(&alice, &room_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn alias_creator_can_delete_canonical_alias_without_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_create_alias(&bob, "#no_ops_delete_canonical:ieum.test", &room_id).await.unwrap();
    put_state(&alice, &room_id, "m.room.canonical_alias", "", json!({ "alias": "#no_ops_delete_canonical:ieum.test" }))
        .await;
    try_delete_alias(&bob, "#no_ops_delete_canonical:ieum.test").await.unwrap();
    assert_eq!(try_resolve(&alice, "#no_ops_delete_canonical:ieum.test").await.unwrap_err().status, 404);
}

#[tokio::test]
async fn deleting_non_existent_alias_is_404() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let error = try_delete_alias(&bob, "#scatman_portal:ieum.test").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

/// Complement "Can delete canonical alias": deleting the alias also removes it from the room's
/// m.room.canonical_alias (a new event with empty content).
#[tokio::test]
async fn deleting_canonical_alias_clears_the_canonical_alias_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#random_alias:ieum.test", &room_id).await.unwrap();
    put_state(&alice, &room_id, "m.room.canonical_alias", "", json!({ "alias": "#random_alias:ieum.test" })).await;
    try_delete_alias(&alice, "#random_alias:ieum.test").await.unwrap();
    let content = state(&alice, &room_id, "m.room.canonical_alias", "").await;
    assert_eq!(content, json!({}), "canonical alias still names a deleted alias");
}

#[tokio::test]
async fn regular_users_can_add_and_delete_aliases_in_default_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_create_alias(&bob, "#random_alias_2:ieum.test", &room_id).await.unwrap();
    assert_eq!(try_resolve(&alice, "#random_alias_2:ieum.test").await.unwrap(), room_id);
    try_delete_alias(&bob, "#random_alias_2:ieum.test").await.unwrap();
}

#[tokio::test]
async fn users_cannot_delete_others_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_create_alias(&alice, "#random_alias_4:ieum.test", &room_id).await.unwrap();
    let error = try_delete_alias(&bob, "#random_alias_4:ieum.test").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(try_resolve(&alice, "#random_alias_4:ieum.test").await.unwrap(), room_id);
}

#[tokio::test]
async fn users_with_power_can_delete_others_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room_with(&alice, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.room_version = Some("11".try_into().unwrap());
    })
    .await;
    join(&bob, &room_id).await;
    put_state(
        &alice,
        &room_id,
        "m.room.power_levels",
        "",
        json!({ "users": { alice.user_id().as_str(): 100, bob.user_id().as_str(): 100 } }),
    )
    .await;
    try_create_alias(&alice, "#random_alias_5:ieum.test", &room_id).await.unwrap();
    try_delete_alias(&bob, "#random_alias_5:ieum.test").await.unwrap();
    assert_eq!(try_resolve(&alice, "#random_alias_5:ieum.test").await.unwrap_err().status, 404);
}

#[tokio::test]
async fn server_admin_can_delete_any_alias() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#admin_target:ieum.test", &room_id).await.unwrap();
    let anon = server.client();
    let (_, nonce) = anon.raw("GET", "/_synapse/admin/v1/register", None).await;
    let body = admin_register_body("s3cret", nonce["nonce"].as_str().unwrap(), "operator");
    let (status, body) = anon.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    let mut admin = server.client();
    admin.token = Some(body["access_token"].as_str().unwrap().to_owned());
    try_delete_alias(&admin, "#admin_target:ieum.test").await.unwrap();
    assert_eq!(try_resolve(&alice, "#admin_target:ieum.test").await.unwrap_err().status, 404);
}

// ---------------------------------------------------------------------------------------------
// m.room.canonical_alias validation

#[tokio::test]
async fn canonical_alias_accepts_present_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#accepts_present:ieum.test", &room_id).await.unwrap();
    try_create_alias(&alice, "#accepts_present_alt:ieum.test", &room_id).await.unwrap();
    put_state(
        &alice,
        &room_id,
        "m.room.canonical_alias",
        "",
        json!({ "alias": "#accepts_present:ieum.test", "alt_aliases": ["#accepts_present_alt:ieum.test"] }),
    )
    .await;
    assert_eq!(state(&alice, &room_id, "m.room.canonical_alias", "").await["alias"], "#accepts_present:ieum.test");
}

#[tokio::test]
async fn canonical_alias_rejects_missing_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let error =
        try_put_state(&alice, &room_id, "m.room.canonical_alias", "", json!({ "alias": "#rejects_missing:ieum.test" }))
            .await
            .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_BAD_ALIAS"), "{}", error.body);
    try_create_alias(&alice, "#present:ieum.test", &room_id).await.unwrap();
    let error = try_put_state(
        &alice,
        &room_id,
        "m.room.canonical_alias",
        "",
        json!({ "alias": "#present:ieum.test", "alt_aliases": ["#missing_alt:ieum.test"] }),
    )
    .await
    .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_BAD_ALIAS"), "{}", error.body);
    assert!(try_state(&alice, &room_id, "m.room.canonical_alias", "").await.is_err());
}

#[tokio::test]
async fn canonical_alias_rejects_invalid_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let error =
        try_put_state(&alice, &room_id, "m.room.canonical_alias", "", json!({ "alias": "%invalid_aliases:ieum.test" }))
            .await
            .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_INVALID_PARAM"), "{}", error.body);
    try_create_alias(&alice, "#valid_main:ieum.test", &room_id).await.unwrap();
    let error = try_put_state(
        &alice,
        &room_id,
        "m.room.canonical_alias",
        "",
        json!({ "alias": "#valid_main:ieum.test", "alt_aliases": ["%invalid_alt:ieum.test"] }),
    )
    .await
    .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_INVALID_PARAM"), "{}", error.body);
}

#[tokio::test]
async fn canonical_alias_rejects_deleted_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    try_create_alias(&alice, "#deleted_aliases:ieum.test", &room_id).await.unwrap();
    try_delete_alias(&alice, "#deleted_aliases:ieum.test").await.unwrap();
    let error =
        try_put_state(&alice, &room_id, "m.room.canonical_alias", "", json!({ "alias": "#deleted_aliases:ieum.test" }))
            .await
            .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_BAD_ALIAS"), "{}", error.body);
}

#[tokio::test]
async fn canonical_alias_rejects_alias_pointing_to_different_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room1 = create_private_room(&alice).await;
    let room2 = create_private_room(&alice).await;
    try_create_alias(&alice, "#diffroom1:ieum.test", &room1).await.unwrap();
    let error = try_put_state(&alice, &room2, "m.room.canonical_alias", "", json!({ "alias": "#diffroom1:ieum.test" }))
        .await
        .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_BAD_ALIAS"), "{}", error.body);
    try_create_alias(&alice, "#diffroom2:ieum.test", &room2).await.unwrap();
    let error = try_put_state(
        &alice,
        &room2,
        "m.room.canonical_alias",
        "",
        json!({ "alias": "#diffroom2:ieum.test", "alt_aliases": ["#diffroom1:ieum.test"] }),
    )
    .await
    .unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_BAD_ALIAS"), "{}", error.body);
}

// ---------------------------------------------------------------------------------------------
// Room visibility in the directory

#[tokio::test]
async fn room_visibility_defaults_to_private_and_can_be_set() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_public_room(&alice).await;
    let visibility = alice.send(get_room_visibility::v3::Request::new(room_id.clone())).await.visibility;
    assert_eq!(visibility, Visibility::Private);
    assert!(!public_rooms(&alice).await.iter().any(|r| r.room_id == room_id));

    set_visibility(&alice, &room_id, Visibility::Public).await.unwrap();
    let visibility = alice.send(get_room_visibility::v3::Request::new(room_id.clone())).await.visibility;
    assert_eq!(visibility, Visibility::Public);
    assert!(public_rooms(&alice).await.iter().any(|r| r.room_id == room_id));

    set_visibility(&alice, &room_id, Visibility::Private).await.unwrap();
    assert!(!public_rooms(&alice).await.iter().any(|r| r.room_id == room_id));
}

#[tokio::test]
async fn create_room_with_public_visibility_is_listed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = listed_public_room(&alice, |_| {}).await;
    let visibility = alice.send(get_room_visibility::v3::Request::new(room_id.clone())).await.visibility;
    assert_eq!(visibility, Visibility::Public);
    assert!(public_rooms(&alice).await.iter().any(|r| r.room_id == room_id));
}

#[tokio::test]
async fn room_visibility_is_readable_without_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = listed_public_room(&alice, |_| {}).await;
    let visibility = server.client().send(get_room_visibility::v3::Request::new(room_id)).await.visibility;
    assert_eq!(visibility, Visibility::Public);
}

#[tokio::test]
async fn unprivileged_user_cannot_publish_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let eve = server.register("eve").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    for client in [&bob, &eve] {
        let error = set_visibility(client, &room_id, Visibility::Public).await.unwrap_err();
        assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    }
    assert!(!public_rooms(&alice).await.iter().any(|r| r.room_id == room_id));
}

#[tokio::test]
async fn room_visibility_of_unknown_room_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id: OwnedRoomId = "!unknown:ieum.test".try_into().unwrap();
    let error = alice.try_send(get_room_visibility::v3::Request::new(room_id)).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

// ---------------------------------------------------------------------------------------------
// /publicRooms

#[tokio::test]
async fn public_rooms_entries_have_correct_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = listed_public_room(&alice, |r| {
        r.name = Some("Test Name".into());
        r.topic = Some("Test Topic".into());
        r.room_alias_name = Some("listed".into());
    })
    .await;
    join(&bob, &room_id).await;
    let rooms = public_rooms(&server.client()).await;
    let room = rooms.iter().find(|r| r.room_id == room_id).expect("room listed");
    assert_eq!(room.name.as_deref(), Some("Test Name"));
    assert_eq!(room.topic.as_deref(), Some("Test Topic"));
    assert_eq!(room.canonical_alias.as_ref().map(|a| a.as_str()), Some("#listed:ieum.test"));
    assert_eq!(room.num_joined_members, uint!(2));
    assert!(!room.world_readable);
    assert!(!room.guest_can_join);
    assert_eq!(room.join_rule.as_str(), "public");
    assert!(room.room_type.is_none());
}

#[tokio::test]
async fn public_rooms_get_works_without_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = listed_public_room(&alice, |_| {}).await;
    let (status, body) = server.client().raw("GET", "/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(status, 200, "{body}");
    let chunk = body["chunk"].as_array().expect("chunk");
    assert!(chunk.iter().any(|r| r["room_id"] == room_id.as_str()), "{body}");
}

#[tokio::test]
async fn public_rooms_lists_spaces_with_room_type() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = listed_public_room(&alice, |r| r.creation_content = Some(raw(json!({ "type": "m.space" })))).await;
    let rooms = public_rooms(&alice).await;
    let room = rooms.iter().find(|r| r.room_id == room_id).expect("space listed");
    assert_eq!(room.room_type.as_ref().map(|t| t.to_string()), Some("m.space".to_owned()));
}

#[tokio::test]
async fn public_rooms_does_not_list_unpublished_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let public = listed_public_room(&alice, |_| {}).await;
    let unpublished = create_public_room(&alice).await;
    let private = create_private_room(&alice).await;
    let listed: Vec<OwnedRoomId> = public_rooms(&alice).await.into_iter().map(|r| r.room_id).collect();
    assert!(listed.contains(&public));
    assert!(!listed.contains(&unpublished));
    assert!(!listed.contains(&private));
}

#[tokio::test]
async fn public_rooms_search_by_generic_search_term() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let by_name = listed_public_room(&alice, |r| r.name = Some("Department of Lighthouses".into())).await;
    let by_topic = listed_public_room(&alice, |r| r.topic = Some("all about LIGHTHOUSE keeping".into())).await;
    let by_alias = listed_public_room(&alice, |r| r.room_alias_name = Some("lighthouse-fans".into())).await;
    let other = listed_public_room(&alice, |r| r.name = Some("Tax office".into())).await;
    let found: Vec<OwnedRoomId> = search(&alice, "lighthouse").await.into_iter().map(|r| r.room_id).collect();
    for room in [&by_name, &by_topic, &by_alias] {
        assert!(found.contains(room), "{room} not found: {found:?}");
    }
    assert!(!found.contains(&other));
    assert!(search(&alice, "no-such-thing-anywhere").await.is_empty());
}

#[tokio::test]
async fn public_rooms_post_without_filter_lists_everything() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let a = listed_public_room(&alice, |_| {}).await;
    let b = listed_public_room(&alice, |_| {}).await;
    let response = alice.send(get_public_rooms_filtered::v3::Request::new()).await;
    let listed: Vec<OwnedRoomId> = response.chunk.into_iter().map(|r| r.room_id).collect();
    assert!(listed.contains(&a) && listed.contains(&b));
}

#[tokio::test]
async fn public_rooms_get_paginates_with_limit_and_since() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(listed_public_room(&alice, |r| r.name = Some(format!("room {i}"))).await);
    }
    let mut seen: Vec<OwnedRoomId> = Vec::new();
    let mut since: Option<String> = None;
    for page in 0..10 {
        let mut request = get_public_rooms::v3::Request::new();
        request.limit = Some(uint!(2));
        request.since = since.clone();
        let response = alice.send(request).await;
        assert!(response.chunk.len() <= 2, "page {page}: {}", response.chunk.len());
        if page == 0 {
            assert!(response.prev_batch.is_none());
            assert_eq!(response.total_room_count_estimate, Some(uint!(5)));
        } else {
            assert!(response.prev_batch.is_some(), "page {page} has no prev_batch");
        }
        seen.extend(response.chunk.into_iter().map(|r| r.room_id));
        match response.next_batch {
            Some(next) => since = Some(next),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a room was listed twice: {seen:?}");
    created.sort();
    assert_eq!(sorted, created);
}

#[tokio::test]
async fn public_rooms_post_paginates_with_search_term() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut matching = Vec::new();
    for i in 0..3 {
        matching.push(listed_public_room(&alice, |r| r.name = Some(format!("match {i}"))).await);
        listed_public_room(&alice, |r| r.name = Some(format!("other {i}"))).await;
    }
    let mut seen = Vec::new();
    let mut since = None;
    for _ in 0..10 {
        let mut request = get_public_rooms_filtered::v3::Request::new();
        request.limit = Some(uint!(1));
        request.since = since.clone();
        request.filter.generic_search_term = Some("MATCH".into());
        let response = alice.send(request).await;
        assert!(response.chunk.len() <= 1);
        seen.extend(response.chunk.into_iter().map(|r| r.room_id));
        match response.next_batch {
            Some(next) => since = Some(next),
            None => break,
        }
    }
    seen.sort();
    matching.sort();
    assert_eq!(seen, matching);
}

#[tokio::test]
async fn public_rooms_with_invalid_since_is_400() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut request = get_public_rooms::v3::Request::new();
    request.since = Some("not-a-token".into());
    let error = alice.try_send(request).await.unwrap_err();
    assert_eq!(error.status, 400, "{}", error.body);
}

#[tokio::test]
async fn public_rooms_of_another_server_is_refused_without_federation() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut request = get_public_rooms::v3::Request::new();
    request.server = Some("remote.example".try_into().unwrap());
    let error = alice.try_send(request).await.unwrap_err();
    assert!(error.status >= 400 && error.status < 500, "{} {}", error.status, error.body);
    assert!(error.body["errcode"].is_string());
}

#[tokio::test]
async fn public_rooms_ordered_by_joined_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let small = listed_public_room(&alice, |_| {}).await;
    let big = listed_public_room(&alice, |_| {}).await;
    join(&bob, &big).await;
    let order: Vec<OwnedRoomId> = public_rooms(&alice).await.into_iter().map(|r| r.room_id).collect();
    let big_at = order.iter().position(|r| r == &big).unwrap();
    let small_at = order.iter().position(|r| r == &small).unwrap();
    assert!(big_at < small_at, "{order:?}");
}
