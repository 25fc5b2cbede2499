//! Server-side key backup endpoints (`/room_keys/...`), mirroring ruma's `backup` module.

use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
    delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
    get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};

use crate::{api::ruma::Ruma, app::App, error::Result};

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(
    app: App,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let session = req.user()?;
    let version = app.key_backup.create_version(&session.user_id, &req.body.algorithm).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn get_latest_backup_info(
    app: App,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let info = app.key_backup.version(&req.user()?.user_id, None)?;
    Ok(get_latest_backup_info::v3::Response::new(info.algorithm, info.count, info.etag, info.version))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(
    app: App,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let info = app.key_backup.version(&req.user()?.user_id, Some(&req.body.version))?;
    Ok(get_backup_info::v3::Response::new(info.algorithm, info.count, info.etag, info.version))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version(
    app: App,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let session = req.user()?;
    app.key_backup.update_version(&session.user_id, &req.body.version, &req.body.algorithm).await?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    app: App,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let session = req.user()?;
    app.key_backup.delete_version(&session.user_id, &req.body.version).await?;
    Ok(delete_backup_version::v3::Response::new())
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys(
    app: App,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let user_id = req.user()?.user_id.clone();
    let rooms = req.body.rooms.into_iter().map(|(room_id, room)| (room_id, room.sessions)).collect();
    let state = app.key_backup.put_keys(&user_id, &req.body.version, rooms).await?;
    Ok(add_backup_keys::v3::Response::new(state.etag, state.count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    app: App,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let user_id = req.user()?.user_id.clone();
    let rooms = [(req.body.room_id, req.body.sessions)].into();
    let state = app.key_backup.put_keys(&user_id, &req.body.version, rooms).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(state.etag, state.count))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    app: App,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let user_id = req.user()?.user_id.clone();
    let body = req.body;
    let rooms = [(body.room_id, [(body.session_id, body.session_data)].into())].into();
    let state = app.key_backup.put_keys(&user_id, &body.version, rooms).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(state.etag, state.count))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys(
    app: App,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let rooms = app.key_backup.keys(&req.user()?.user_id, &req.body.version, None)?;
    Ok(get_backup_keys::v3::Response::new(
        rooms.into_iter().map(|(room_id, sessions)| (room_id, RoomKeyBackup::new(sessions))).collect(),
    ))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_backup_keys_for_room(
    app: App,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let mut rooms = app.key_backup.keys(&req.user()?.user_id, &req.body.version, Some(&req.body.room_id))?;
    Ok(get_backup_keys_for_room::v3::Response::new(rooms.remove(&req.body.room_id).unwrap_or_default()))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_backup_keys_for_session(
    app: App,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let body = &req.body;
    let key = app.key_backup.session_key(&req.user()?.user_id, &body.version, &body.room_id, &body.session_id)?;
    Ok(get_backup_keys_for_session::v3::Response::new(key))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    app: App,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let state = app.key_backup.delete_keys(&req.user()?.user_id, &req.body.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(state.etag, state.count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    app: App,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let body = &req.body;
    let state = app.key_backup.delete_keys(&req.user()?.user_id, &body.version, Some(&body.room_id), None).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(state.etag, state.count))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    app: App,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let body = &req.body;
    let state = app
        .key_backup
        .delete_keys(&req.user()?.user_id, &body.version, Some(&body.room_id), Some(&body.session_id))
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(state.etag, state.count))
}
