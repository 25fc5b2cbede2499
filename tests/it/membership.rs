//! Integration tests: membership — join by id and alias, invites (invite-only rooms, rejecting,
//! re-inviting), leave, forget, kick, ban/unban, knock, /joined_rooms, /joined_members and
//! /members with `membership` / `not_membership` / `at`.

use ruma::{
    OwnedRoomId, OwnedRoomOrAliasId, RoomId, UserId,
    api::client::{
        filter::FilterDefinition,
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_members, joined_rooms, kick_user, leave_room, unban_user,
        },
        message::get_message_events,
        room::create_room,
        sync::sync_events,
    },
    events::room::member::MembershipState,
    uint,
};
use serde_json::{Value, json};

use crate::{
    harness::{Client, MatrixError, TestServer},
    rooms::{
        create_private_room, create_public_room, create_room_with, join, json_of, put_state, send_text, state,
        state_event, try_state,
    },
};

// ---------------------------------------------------------------------------------------------
// Helpers

async fn try_join(client: &Client, room_id: &RoomId) -> Result<OwnedRoomId, MatrixError> {
    client.try_send(join_room_by_id::v3::Request::new(room_id.to_owned())).await.map(|r| r.room_id)
}

async fn try_invite(client: &Client, room_id: &RoomId, user: &UserId) -> Result<(), MatrixError> {
    let recipient = invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user.to_owned()));
    client.try_send(invite_user::v3::Request::new(room_id.to_owned(), recipient)).await.map(|_| ())
}

async fn invite(client: &Client, room_id: &RoomId, user: &UserId) {
    try_invite(client, room_id, user).await.unwrap_or_else(|e| panic!("invite: {} {}", e.status, e.body))
}

async fn leave(client: &Client, room_id: &RoomId) {
    client.send(leave_room::v3::Request::new(room_id.to_owned())).await;
}

async fn try_kick(client: &Client, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<(), MatrixError> {
    let mut request = kick_user::v3::Request::new(room_id.to_owned(), user.to_owned());
    request.reason = reason.map(str::to_owned);
    client.try_send(request).await.map(|_| ())
}

async fn try_ban(client: &Client, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<(), MatrixError> {
    let mut request = ban_user::v3::Request::new(room_id.to_owned(), user.to_owned());
    request.reason = reason.map(str::to_owned);
    client.try_send(request).await.map(|_| ())
}

async fn try_knock(client: &Client, room_id: &RoomId, reason: Option<&str>) -> Result<OwnedRoomId, MatrixError> {
    let mut request = knock_room::v3::Request::new(OwnedRoomOrAliasId::from(room_id.to_owned()));
    request.reason = reason.map(str::to_owned);
    client.try_send(request).await.map(|r| r.room_id)
}

async fn membership(client: &Client, room_id: &RoomId, user: &UserId) -> Value {
    state(client, room_id, "m.room.member", user.as_str()).await
}

async fn joined_room_ids(client: &Client) -> Vec<OwnedRoomId> {
    client.send(joined_rooms::v3::Request::new()).await.joined_rooms
}

async fn members(client: &Client, room_id: &RoomId, f: impl FnOnce(&mut get_member_events::v3::Request)) -> Vec<Value> {
    let mut request = get_member_events::v3::Request::new(room_id.to_owned());
    f(&mut request);
    client.send(request).await.chunk.iter().map(json_of).collect()
}

fn member_ids(events: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e["state_key"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

async fn knock_room(alice: &Client) -> OwnedRoomId {
    let room_id = create_private_room(alice).await;
    put_state(alice, &room_id, "m.room.join_rules", "", json!({ "join_rule": "knock" })).await;
    room_id
}

// ---------------------------------------------------------------------------------------------
// Join

#[tokio::test]
async fn join_public_room_by_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    assert_eq!(try_join(&bob, &room_id).await.unwrap(), room_id);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn join_by_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room_with(&alice, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.room_alias_name = Some("joinme".into());
    })
    .await;
    let alias: OwnedRoomOrAliasId = "#joinme:ieum.test".try_into().unwrap();
    let response = bob.send(join_room_by_id_or_alias::v3::Request::new(alias)).await;
    assert_eq!(response.room_id, room_id);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn join_by_id_through_join_endpoint_with_reason() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    let mut request = join_room_by_id_or_alias::v3::Request::new(OwnedRoomOrAliasId::from(room_id.clone()));
    request.reason = Some("hello there".into());
    assert_eq!(bob.send(request).await.room_id, room_id);
    let member = membership(&alice, &room_id, bob.user_id()).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["reason"], "hello there", "{member}");
}

#[tokio::test]
async fn join_unknown_alias_is_404() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alias: OwnedRoomOrAliasId = "#nowhere:ieum.test".try_into().unwrap();
    let error = bob.try_send(join_room_by_id_or_alias::v3::Request::new(alias)).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn join_unknown_room_id_is_refused() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let room_id: OwnedRoomId = "!doesnotexist:ieum.test".try_into().unwrap();
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert!(matches!(error.status, 403 | 404), "{} {}", error.status, error.body);
    assert!(matches!(error.errcode(), "M_NOT_FOUND" | "M_FORBIDDEN"), "{}", error.body);
    assert!(joined_room_ids(&bob).await.is_empty());
}

#[tokio::test]
async fn joining_twice_is_idempotent() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let first = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await["event_id"].clone();
    join(&bob, &room_id).await;
    let second = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await["event_id"].clone();
    assert_eq!(first, second);
}

#[tokio::test]
async fn join_invite_only_room_without_invite_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert!(joined_room_ids(&bob).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Invite

#[tokio::test]
async fn invited_user_can_join_invite_only_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    let member = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await;
    assert_eq!(member["content"]["membership"], "invite");
    assert_eq!(member["sender"], alice.user_id().as_str());
    join(&bob, &room_id).await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
    assert!(joined_room_ids(&bob).await.contains(&room_id));
}

#[tokio::test]
async fn invite_with_reason() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    let mut invitee = invite_user::v3::InviteUserId::new(bob.user_id().to_owned());
    invitee.reason = Some("join us".into());
    alice
        .send(invite_user::v3::Request::new(room_id.clone(), invite_user::v3::InvitationRecipient::UserId(invitee)))
        .await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["reason"], "join us");
}

#[tokio::test]
async fn invited_user_can_reject_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    leave(&bob, &room_id).await;
    let member = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await;
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["sender"], bob.user_id().as_str());
}

#[tokio::test]
async fn invited_user_can_reject_invite_for_empty_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    leave(&alice, &room_id).await;
    leave(&bob, &room_id).await;
    // Bob saw the room only through the invite; his rejection is recorded.
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
}

#[tokio::test]
async fn users_cannot_invite_themselves() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    let error = try_invite(&bob, &room_id, bob.user_id()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    let error = try_state(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await.unwrap_err();
    assert_eq!(error.status, 404);
}

#[tokio::test]
async fn cannot_invite_user_already_in_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let error = try_invite(&alice, &room_id, bob.user_id()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn non_member_cannot_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let eve = server.register("eve").await;
    let room_id = create_private_room(&alice).await;
    let error = try_invite(&eve, &room_id, bob.user_id()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn invite_needs_invite_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_room_with(&alice, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.power_level_content_override = Some(crate::rooms::raw(json!({ "invite": 50 })));
    })
    .await;
    join(&bob, &room_id).await;
    let error = try_invite(&bob, &room_id, charlie.user_id()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn invite_unknown_local_user_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let ghost: ruma::OwnedUserId = "@ghost:ieum.test".try_into().unwrap();
    let error = try_invite(&alice, &room_id, &ghost).await.unwrap_err();
    assert!(matches!(error.status, 403 | 404), "{} {}", error.status, error.body);
}

#[tokio::test]
async fn invite_remote_user_is_refused_without_federation() {
    let server = TestServer::start_with(&[("IEUM_FEDERATION__ENABLED", "false")]).await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let remote: ruma::OwnedUserId = "@someone:remote.example".try_into().unwrap();
    let error = try_invite(&alice, &room_id, &remote).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
    assert_eq!(error.body["errcode"], "M_FORBIDDEN", "{}", error.body);
    assert!(error.body["error"].as_str().unwrap().contains("remote.example"), "{}", error.body);
}

#[tokio::test]
async fn invite_to_an_unreachable_server_says_which_server() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    // `.invalid` never resolves (RFC 6761): no traffic leaves the machine.
    let remote: ruma::OwnedUserId = "@someone:nowhere.invalid".try_into().unwrap();
    let error = try_invite(&alice, &room_id, &remote).await.unwrap_err();
    assert_eq!(error.status, 502, "{}", error.body);
    assert!(error.body["error"].as_str().unwrap().contains("nowhere.invalid"), "{}", error.body);
}

#[tokio::test]
async fn third_party_invite_is_refused_cleanly() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let body = json!({ "id_server": "id.example.org", "id_access_token": "x", "medium": "email", "address": "bob@example.org" });
    let (status, body) =
        alice.raw("POST", &format!("/_matrix/client/v3/rooms/{room_id}/invite"), Some(&body.to_string())).await;
    assert!(status >= 400 && status < 500, "{status} {body}");
    assert!(body["errcode"].is_string(), "{body}");
}

#[tokio::test]
async fn invited_user_sees_room_metadata_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room_with(&alice, |r| r.name = Some("Secret club".into())).await;
    invite(&alice, &room_id, bob.user_id()).await;
    let sync = bob.send(sync_events::v3::Request::new()).await;
    let invited = sync.rooms.invite.get(&room_id).expect("room in invite section");
    let events: Vec<Value> = invited.invite_state.events.iter().map(json_of).collect();
    assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret club"), "{events:?}");
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id().as_str()),
        "{events:?}"
    );
}

#[tokio::test]
async fn creator_can_be_reinvited_to_room_they_created() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    join(&bob, &room_id).await;
    // Give bob power so he can re-invite alice after she leaves.
    let mut power = state(&alice, &room_id, "m.room.power_levels", "").await;
    power["users"][bob.user_id().as_str()] = json!(100);
    put_state(&alice, &room_id, "m.room.power_levels", "", power).await;
    leave(&alice, &room_id).await;
    invite(&bob, &room_id, alice.user_id()).await;
    join(&alice, &room_id).await;
    assert_eq!(membership(&bob, &room_id, alice.user_id()).await["membership"], "join");
}

// ---------------------------------------------------------------------------------------------
// Leave and forget

#[tokio::test]
async fn leave_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "leave");
    assert!(!joined_room_ids(&bob).await.contains(&room_id));
    // A user who left cannot send.
    let error = crate::rooms::try_send_text(&bob, &room_id, "still here?").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn joined_members_is_forbidden_after_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    let error = bob.try_send(joined_members::v3::Request::new(room_id.clone())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn departed_user_can_read_state_and_members_up_to_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room_with(&alice, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.name = Some("Before".into());
    })
    .await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    put_state(&alice, &room_id, "m.room.name", "", json!({ "name": "After" })).await;
    assert_eq!(state(&bob, &room_id, "m.room.name", "").await["name"], "Before");
    let chunk = members(&bob, &room_id, |_| {}).await;
    let bob_member = chunk.iter().find(|e| e["state_key"] == bob.user_id().as_str()).expect("bob's member event");
    assert_eq!(bob_member["content"]["membership"], "leave");
}

#[tokio::test]
async fn cannot_forget_room_you_are_still_in() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = create_private_room(&alice).await;
    let error = alice.try_send(forget_room::v3::Request::new(room_id.clone())).await.unwrap_err();
    // Spec example and Complement: 400 M_UNKNOWN.
    assert_eq!((error.status, error.errcode()), (400, "M_UNKNOWN"), "{}", error.body);
    assert!(joined_room_ids(&alice).await.contains(&room_id));
}

#[tokio::test]
async fn forgotten_room_messages_cannot_be_paginated() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    send_text(&alice, &room_id, "before leaving").await;
    leave(&bob, &room_id).await;
    // Still readable after leaving...
    let request = get_message_events::v3::Request::new(room_id.clone(), ruma::api::Direction::Backward);
    assert!(!bob.send(request).await.chunk.is_empty());
    bob.send(forget_room::v3::Request::new(room_id.clone())).await;
    // ...but not after forgetting.
    let request = get_message_events::v3::Request::new(room_id.clone(), ruma::api::Direction::Backward);
    let error = bob.try_send(request).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn forgotten_room_is_not_in_initial_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    bob.send(forget_room::v3::Request::new(room_id.clone())).await;
    let mut request = sync_events::v3::Request::new();
    let mut filter = FilterDefinition::default();
    filter.room.include_leave = true;
    request.filter = Some(sync_events::v3::Filter::FilterDefinition(filter));
    let sync = bob.send(request).await;
    assert!(!sync.rooms.leave.contains_key(&room_id), "forgotten room in leave section");
    assert!(!sync.rooms.join.contains_key(&room_id));
}

#[tokio::test]
async fn can_forget_room_after_being_kicked() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_kick(&alice, &room_id, bob.user_id(), None).await.unwrap();
    bob.send(forget_room::v3::Request::new(room_id.clone())).await;
}

#[tokio::test]
async fn can_forget_room_after_rejecting_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    leave(&bob, &room_id).await;
    bob.send(forget_room::v3::Request::new(room_id.clone())).await;
}

#[tokio::test]
async fn can_rejoin_forgotten_room_if_reinvited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    join(&bob, &room_id).await;
    let before = send_text(&bob, &room_id, "before leave").await;
    leave(&bob, &room_id).await;
    bob.send(forget_room::v3::Request::new(room_id.clone())).await;
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    invite(&alice, &room_id, bob.user_id()).await;
    join(&bob, &room_id).await;
    assert!(joined_room_ids(&bob).await.contains(&room_id));
    // History from before the forget is visible again after re-joining (shared visibility).
    let mut request = get_message_events::v3::Request::new(room_id.clone(), ruma::api::Direction::Backward);
    request.limit = uint!(100);
    let chunk: Vec<Value> = bob.send(request).await.chunk.iter().map(json_of).collect();
    assert!(chunk.iter().any(|e| e["event_id"] == before.as_str()), "earlier message not visible");
    let event_id = send_text(&bob, &room_id, "back").await;
    assert_eq!(crate::rooms::get_event(&alice, &room_id, &event_id).await["content"]["body"], "back");
}

// ---------------------------------------------------------------------------------------------
// Kick

#[tokio::test]
async fn kick_user_from_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_kick(&alice, &room_id, bob.user_id(), Some("behave")).await.unwrap();
    let member = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await;
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["content"]["reason"], "behave");
    assert_eq!(member["sender"], alice.user_id().as_str());
    assert!(!joined_room_ids(&bob).await.contains(&room_id));
    // A kick is not a ban: bob may come back to a public room.
    join(&bob, &room_id).await;
}

#[tokio::test]
async fn cannot_kick_non_present_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    let error = try_kick(&alice, &room_id, bob.user_id(), None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn cannot_kick_left_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    leave(&bob, &room_id).await;
    let before = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await["event_id"].clone();
    let error = try_kick(&alice, &room_id, bob.user_id(), None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    let after = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await["event_id"].clone();
    assert_eq!(before, after);
}

#[tokio::test]
async fn user_without_power_cannot_kick() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    join(&charlie, &room_id).await;
    let error = try_kick(&bob, &room_id, charlie.user_id(), None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(membership(&alice, &room_id, charlie.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn kick_revokes_an_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    invite(&alice, &room_id, bob.user_id()).await;
    try_kick(&alice, &room_id, bob.user_id(), None).await.unwrap();
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

// ---------------------------------------------------------------------------------------------
// Ban

#[tokio::test]
async fn banned_user_cannot_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_ban(&alice, &room_id, bob.user_id(), Some("spam")).await.unwrap();
    let member = membership(&alice, &room_id, bob.user_id()).await;
    assert_eq!(member["membership"], "ban");
    assert_eq!(member["reason"], "spam");
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "ban");
}

#[tokio::test]
async fn can_ban_user_who_never_joined() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    try_ban(&alice, &room_id, bob.user_id(), None).await.unwrap();
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
}

#[tokio::test]
async fn not_present_user_cannot_ban_others() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let eve = server.register("eve").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let error = try_ban(&eve, &room_id, bob.user_id(), None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn user_without_power_cannot_ban() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let error = try_ban(&bob, &room_id, alice.user_id(), None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn banned_user_cannot_be_invited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    try_ban(&alice, &room_id, bob.user_id(), None).await.unwrap();
    let error = try_invite(&alice, &room_id, bob.user_id()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn unban_lets_user_join_again() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    try_ban(&alice, &room_id, bob.user_id(), None).await.unwrap();
    alice.send(unban_user::v3::Request::new(room_id.clone(), bob.user_id().to_owned())).await;
    let member = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await;
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["unsigned"]["prev_content"]["membership"], "ban", "{member}");
    join(&bob, &room_id).await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn unban_of_user_who_is_not_banned_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    let error =
        alice.try_send(unban_user::v3::Request::new(room_id.clone(), bob.user_id().to_owned())).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

// ---------------------------------------------------------------------------------------------
// Knock

#[tokio::test]
async fn knock_is_visible_to_members_and_can_be_accepted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    assert_eq!(try_knock(&bob, &room_id, Some("let me in")).await.unwrap(), room_id);
    let member = membership(&alice, &room_id, bob.user_id()).await;
    assert_eq!(member["membership"], "knock");
    assert_eq!(member["reason"], "let me in");
    invite(&alice, &room_id, bob.user_id()).await;
    join(&bob, &room_id).await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn knock_without_reason() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    try_knock(&bob, &room_id, None).await.unwrap();
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "knock");
}

#[tokio::test]
async fn knock_on_room_without_knock_join_rule_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_private_room(&alice).await;
    let error = try_knock(&bob, &room_id, None).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn join_knock_room_without_invite_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    let error = try_join(&bob, &room_id).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn knocking_again_is_allowed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    try_knock(&bob, &room_id, None).await.unwrap();
    try_knock(&bob, &room_id, Some("again")).await.unwrap();
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "knock");
}

#[tokio::test]
async fn knock_can_be_rescinded_and_repeated() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    try_knock(&bob, &room_id, None).await.unwrap();
    leave(&bob, &room_id).await;
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "leave");
    try_knock(&bob, &room_id, None).await.unwrap();
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "knock");
}

#[tokio::test]
async fn member_can_reject_a_knock() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    try_knock(&bob, &room_id, None).await.unwrap();
    try_kick(&alice, &room_id, bob.user_id(), Some("no")).await.unwrap();
    let member = state_event(&alice, &room_id, "m.room.member", bob.user_id().as_str()).await;
    assert_eq!(member["content"]["membership"], "leave");
    assert_eq!(member["sender"], alice.user_id().as_str());
}

#[tokio::test]
async fn cannot_knock_when_invited_joined_or_banned() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let invited = server.register("invited").await;
    let banned = server.register("banned").await;
    let room_id = knock_room(&alice).await;
    invite(&alice, &room_id, invited.user_id()).await;
    try_ban(&alice, &room_id, banned.user_id(), None).await.unwrap();
    for (client, expect) in [(&invited, "invite"), (&alice, "join"), (&banned, "ban")] {
        let error = try_knock(client, &room_id, None).await.unwrap_err();
        assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{expect}: {}", error.body);
        assert_eq!(membership(&alice, &room_id, client.user_id()).await["membership"], expect);
    }
}

#[tokio::test]
async fn knocker_sees_room_in_knock_section_of_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = knock_room(&alice).await;
    try_knock(&bob, &room_id, None).await.unwrap();
    let sync = bob.send(sync_events::v3::Request::new()).await;
    let knocked = sync.rooms.knock.get(&room_id).expect("room in knock section");
    let events: Vec<Value> = knocked.knock_state.events.iter().map(json_of).collect();
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "knock"), "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// Listing rooms and members

#[tokio::test]
async fn joined_rooms_lists_only_joined_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let joined = create_public_room(&alice).await;
    let invited = create_private_room(&alice).await;
    let left = create_public_room(&alice).await;
    join(&bob, &joined).await;
    invite(&alice, &invited, bob.user_id()).await;
    join(&bob, &left).await;
    leave(&bob, &left).await;
    assert_eq!(joined_room_ids(&bob).await, vec![joined.clone()]);
    let mut mine = joined_room_ids(&alice).await;
    mine.sort();
    let mut want = vec![joined, invited, left];
    want.sort();
    assert_eq!(mine, want);
}

#[tokio::test]
async fn joined_members_lists_members_with_profiles() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    invite(&alice, &room_id, charlie.user_id()).await;
    let joined = alice.send(joined_members::v3::Request::new(room_id.clone())).await.joined;
    let mut ids: Vec<&str> = joined.keys().map(|u| u.as_str()).collect();
    ids.sort();
    let mut want = vec![alice.user_id().as_str(), bob.user_id().as_str()];
    want.sort();
    assert_eq!(ids, want, "invited users are not joined");
    assert_eq!(joined[bob.user_id()].display_name.as_deref(), Some(bob.user_id().localpart()));
}

#[tokio::test]
async fn joined_members_is_forbidden_for_non_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = create_public_room(&alice).await;
    let error = eve.try_send(joined_members::v3::Request::new(room_id)).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn members_lists_every_member_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    invite(&alice, &room_id, charlie.user_id()).await;
    let chunk = members(&alice, &room_id, |_| {}).await;
    let mut want = vec![alice.user_id().to_string(), bob.user_id().to_string(), charlie.user_id().to_string()];
    want.sort();
    assert_eq!(member_ids(&chunk), want);
    for event in &chunk {
        assert_eq!(event["type"], "m.room.member");
        assert!(event["event_id"].is_string() && event["sender"].is_string(), "{event}");
    }
}

#[tokio::test]
async fn members_filtered_by_membership_and_not_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let charlie = server.register("charlie").await;
    let room_id = create_public_room(&alice).await;
    join(&bob, &room_id).await;
    join(&charlie, &room_id).await;
    leave(&charlie, &room_id).await;

    let joined = members(&alice, &room_id, |r| r.membership = Some(MembershipState::Join)).await;
    let mut want = vec![alice.user_id().to_string(), bob.user_id().to_string()];
    want.sort();
    assert_eq!(member_ids(&joined), want);

    let left = members(&alice, &room_id, |r| r.membership = Some(MembershipState::Leave)).await;
    assert_eq!(member_ids(&left), vec![charlie.user_id().to_string()]);

    let not_joined = members(&alice, &room_id, |r| r.not_membership = Some(MembershipState::Join)).await;
    assert_eq!(member_ids(&not_joined), vec![charlie.user_id().to_string()]);

    let not_left = members(&alice, &room_id, |r| r.not_membership = Some(MembershipState::Leave)).await;
    assert_eq!(member_ids(&not_left), want);
}

#[tokio::test]
async fn members_at_a_sync_token_shows_the_past_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "before bob").await;
    let mut request = sync_events::v3::Request::new();
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(uint!(1));
    request.filter = Some(sync_events::v3::Filter::FilterDefinition(filter));
    let sync = alice.send(request).await;
    let prev_batch = sync.rooms.join[&room_id].timeline.prev_batch.clone().expect("prev_batch");
    join(&bob, &room_id).await;

    let now = members(&alice, &room_id, |_| {}).await;
    assert!(member_ids(&now).contains(&bob.user_id().to_string()));
    let then = members(&alice, &room_id, |r| r.at = Some(prev_batch.clone())).await;
    assert_eq!(member_ids(&then), vec![alice.user_id().to_string()], "{then:?}");
}

#[tokio::test]
async fn members_at_a_messages_token_shows_the_past_membership() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    send_text(&alice, &room_id, "before bob").await;
    let mut request = get_message_events::v3::Request::new(room_id.clone(), ruma::api::Direction::Backward);
    request.limit = uint!(1);
    let token = alice.send(request).await.start;
    join(&bob, &room_id).await;
    let then = members(&alice, &room_id, |r| r.at = Some(token.clone())).await;
    assert_eq!(member_ids(&then), vec![alice.user_id().to_string()], "{then:?}");
}

#[tokio::test]
async fn members_is_forbidden_for_non_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room_id = create_private_room(&alice).await;
    let error = eve.try_send(get_member_events::v3::Request::new(room_id)).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

// ---------------------------------------------------------------------------------------------
// Request bodies of the join endpoints (Complement TestRoomMembers)

#[tokio::test]
async fn join_with_no_request_body() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    let (status, body) = bob.raw("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    assert_eq!(membership(&alice, &room_id, bob.user_id()).await["membership"], "join");
}

#[tokio::test]
async fn join_by_id_with_custom_content() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_public_room(&alice).await;
    let (status, body) = bob.raw("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(r#"{"foo":"bar"}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    let member = membership(&alice, &room_id, bob.user_id()).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["foo"], "bar", "{member}");
}

#[tokio::test]
async fn join_by_alias_with_custom_content() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room_id = create_room_with(&alice, |r| {
        r.preset = Some(create_room::v3::RoomPreset::PublicChat);
        r.room_alias_name = Some("room_alias_random2".into());
    })
    .await;
    let (status, body) =
        bob.raw("POST", "/_matrix/client/v3/join/%23room_alias_random2:ieum.test", Some(r#"{"foo":"bar"}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    let member = membership(&alice, &room_id, bob.user_id()).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["foo"], "bar", "{member}");
}
