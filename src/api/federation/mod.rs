//! Server-server endpoints: keys (own and notary), version, transactions, events, state,
//! backfill, joins, leaves, invites, queries and the public room directory. Every
//! endpoint but the key ones is authenticated by X-Matrix (`Ruma::origin`).

pub mod media;

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version},
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
            prepare_knock_event, prepare_leave_event,
        },
        query::{get_profile_information, get_room_information},
        transactions::send_transaction_message,
    },
    profile::ProfileFieldName,
};

use crate::{
    api::{client::room::page, ruma::Ruma},
    app::App,
    error::{Error, Result},
    service::server_keys,
};

/// `GET /_matrix/key/v2/server`
pub async fn server_keys(app: App, _req: Ruma<get_server_keys::v2::Request>) -> Result<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(server_keys::key_document(&app.core)?))
}

/// `GET /_matrix/key/v2/query/{serverName}`
pub async fn query_keys(
    app: App,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response> {
    Ok(get_remote_server_keys::v2::Response::new(app.federation.notary_documents(&req.body.server_name).await?))
}

/// `POST /_matrix/key/v2/query`
pub async fn query_keys_batch(
    app: App,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    let mut documents = Vec::new();
    for server in req.body.server_keys.keys().take(100) {
        documents.extend(app.federation.notary_documents(server).await?);
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(documents))
}

/// `GET /_matrix/federation/v1/version`
pub async fn version(
    _app: App,
    _req: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("ieum".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

/// `PUT /_matrix/federation/v1/send/{txnId}`
pub async fn send_transaction(
    app: App,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = req.origin()?.to_owned();
    let results = app.receive_transaction(&origin, req.body).await?;
    Ok(send_transaction_message::v1::Response::new(results))
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(app: App, req: Ruma<get_event::v1::Request>) -> Result<get_event::v1::Response> {
    let pdu = app.rooms.event_for_server(req.origin()?, &req.body.event_id)?;
    Ok(get_event::v1::Response::new(
        app.owned_server_name(),
        MilliSecondsSinceUnixEpoch::now(),
        app.rooms.federation_pdu(&pdu)?,
    ))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
pub async fn get_state_ids(
    app: App,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    let (state, chain) = app.rooms.state_for_server(req.origin()?, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_state_ids::v1::Response::new(chain, state))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
pub async fn get_state(app: App, req: Ruma<get_room_state::v1::Request>) -> Result<get_room_state::v1::Response> {
    let (state, chain) = app.rooms.state_for_server(req.origin()?, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_state::v1::Response::new(app.rooms.pdus_json(&chain)?, app.rooms.pdus_json(&state)?))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_auth(
    app: App,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let pdu = app.rooms.event_for_server(req.origin()?, &req.body.event_id)?;
    if pdu.room_id != req.body.room_id {
        return Err(Error::not_found("That event is not in this room."));
    }
    let chain = app.rooms.auth_chain_of([pdu.event_id.clone()].iter())?;
    Ok(get_event_authorization::v1::Response::new(app.rooms.pdus_json(&chain)?))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
pub async fn backfill(app: App, req: Ruma<get_backfill::v1::Request>) -> Result<get_backfill::v1::Response> {
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(usize::MAX);
    let pdus = app.rooms.backfill_for_server(req.origin()?, &req.body.room_id, &req.body.v, limit)?;
    Ok(get_backfill::v1::Response::new(app.owned_server_name(), MilliSecondsSinceUnixEpoch::now(), pdus))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn missing_events(
    app: App,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    let body = &req.body;
    let events = app.rooms.missing_events_for_server(
        req.origin()?,
        &body.room_id,
        &body.earliest_events,
        &body.latest_events,
        usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX),
        u64::from(body.min_depth),
    )?;
    Ok(get_missing_events::v1::Response::new(events))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(
    app: App,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    // Servers that send no `ver` support only room version 1.
    let supported = if req.body.ver.is_empty() { vec![ruma::RoomVersionId::V1] } else { req.body.ver.clone() };
    let (version, event) =
        app.rooms.make_membership_template(req.origin()?, &req.body.room_id, &req.body.user_id, "join", &supported)?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(app: App, req: Ruma<create_join_event::v2::Request>) -> Result<create_join_event::v2::Response> {
    let origin = req.origin()?.to_owned();
    let state =
        app.rooms.receive_membership(&origin, &req.body.room_id, &req.body.event_id, &req.body.pdu, "join").await?;
    Ok(create_join_event::v2::Response::new(state))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn make_leave(
    app: App,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    let (version, event) =
        app.rooms.make_membership_template(req.origin()?, &req.body.room_id, &req.body.user_id, "leave", &[])?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(
    app: App,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response> {
    let origin = req.origin()?.to_owned();
    app.rooms.receive_membership(&origin, &req.body.room_id, &req.body.event_id, &req.body.pdu, "leave").await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn make_knock(
    app: App,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    let (version, event) = app.rooms.make_membership_template(
        req.origin()?,
        &req.body.room_id,
        &req.body.user_id,
        "knock",
        &req.body.ver,
    )?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn send_knock(
    app: App,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response> {
    let origin = req.origin()?.to_owned();
    let state = app.rooms.receive_knock(&origin, &req.body.room_id, &req.body.event_id, &req.body.pdu).await?;
    Ok(create_knock_event::v1::Response::new(state))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub async fn invite(app: App, req: Ruma<create_invite::v2::Request>) -> Result<create_invite::v2::Response> {
    let origin = req.origin()?.to_owned();
    let signed = app.rooms.receive_invite(&origin, &req.body).await?;
    Ok(create_invite::v2::Response::new(signed))
}

/// `GET /_matrix/federation/v1/query/profile`
pub async fn query_profile(
    app: App,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    req.origin()?;
    let user_id = &req.body.user_id;
    if user_id.server_name() != app.server_name() {
        return Err(Error::invalid_param("That user is not on this server."));
    }
    let user = app.users.get(user_id)?.ok_or_else(|| Error::not_found("User not found."))?;
    let mut response = get_profile_information::v1::Response::new();
    let wants = |field: ProfileFieldName| req.body.field.as_ref().is_none_or(|f| *f == field);
    if let Some(name) = user.displayname.filter(|_| wants(ProfileFieldName::DisplayName)) {
        response.data.set(ProfileFieldName::DisplayName.to_string(), name.into());
    }
    if let Some(url) = user.avatar_url.filter(|_| wants(ProfileFieldName::AvatarUrl)) {
        response.data.set(ProfileFieldName::AvatarUrl.to_string(), url.into());
    }
    Ok(response)
}

/// `GET /_matrix/federation/v1/query/directory`
pub async fn query_directory(
    app: App,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    req.origin()?;
    let alias = &req.body.room_alias;
    if alias.server_name() != app.server_name() {
        return Err(Error::not_found("That alias is not on this server."));
    }
    let (room_id, _) = app.directory.resolve_alias(alias)?;
    let mut servers = vec![app.owned_server_name()];
    servers.extend(app.rooms.remote_servers_in_room(&room_id)?);
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub async fn user_devices(app: App, req: Ruma<get_devices::v1::Request>) -> Result<get_devices::v1::Response> {
    req.origin()?;
    let user_id = &req.body.user_id;
    if user_id.server_name() != app.server_name() {
        return Err(Error::invalid_param("That user is not on this server."));
    }
    app.e2ee.user_devices(user_id)
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn user_keys_query(
    app: App,
    req: Ruma<ruma::api::federation::keys::get_keys::v1::Request>,
) -> Result<ruma::api::federation::keys::get_keys::v1::Response> {
    req.origin()?;
    app.e2ee.federation_query_keys(req.body.device_keys.clone())
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn user_keys_claim(
    app: App,
    req: Ruma<ruma::api::federation::keys::claim_keys::v1::Request>,
) -> Result<ruma::api::federation::keys::claim_keys::v1::Response> {
    req.origin()?;
    app.e2ee.federation_claim_keys(req.body.one_time_keys.clone()).await
}

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn public_rooms(
    app: App,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    req.origin()?;
    let rooms = app.directory.public_rooms(None)?;
    let (chunk, next, prev, total) = page(rooms, req.body.limit, req.body.since.as_deref())?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn public_rooms_filtered(
    app: App,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    req.origin()?;
    let rooms = app.directory.public_rooms(req.body.filter.generic_search_term.as_deref())?;
    let (chunk, next, prev, total) = page(rooms, req.body.limit, req.body.since.as_deref())?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}
