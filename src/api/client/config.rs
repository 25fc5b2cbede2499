//! Account data (global and per room), room tags and filters.

use ruma::api::client::{
    config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
    filter::{create_filter, get_filter},
    tag::{create_tag, delete_tag, get_tags},
};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::rooms::raw,
};

fn own(req_user: &ruma::UserId, path_user: &ruma::UserId) -> Result<()> {
    if req_user != path_user {
        return Err(Error::forbidden("You may only access your own account data."));
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    app: App,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    app.account_data.put(&session.user_id, None, &req.body.event_type.to_string(), req.body.data.json()).await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    app: App,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let content = app.account_data.get(&session.user_id, None, &req.body.event_type.to_string())?;
    Ok(get_global_account_data::v3::Response::new(ruma::serde::Raw::from_json(content)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    app: App,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    app.account_data
        .put(&session.user_id, Some(&req.body.room_id), &req.body.event_type.to_string(), req.body.data.json())
        .await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    app: App,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let content = app.account_data.get(&session.user_id, Some(&req.body.room_id), &req.body.event_type.to_string())?;
    Ok(get_room_account_data::v3::Response::new(ruma::serde::Raw::from_json(content)))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(app: App, req: Ruma<get_tags::v3::Request>) -> Result<get_tags::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let tags = app.account_data.tags(&session.user_id, &req.body.room_id)?;
    let tags = serde_json::from_value(serde_json::Value::Object(tags)).map_err(|e| Error::internal(e.to_string()))?;
    Ok(get_tags::v3::Response::new(tags))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag(app: App, req: Ruma<create_tag::v3::Request>) -> Result<create_tag::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let info = serde_json::to_value(&req.body.tag_info).map_err(|e| Error::internal(e.to_string()))?;
    app.account_data.set_tag(&session.user_id, &req.body.room_id, &req.body.tag, Some(info)).await?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(app: App, req: Ruma<delete_tag::v3::Request>) -> Result<delete_tag::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    app.account_data.set_tag(&session.user_id, &req.body.room_id, &req.body.tag, None).await?;
    Ok(delete_tag::v3::Response::new())
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(app: App, req: Ruma<create_filter::v3::Request>) -> Result<create_filter::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let filter = raw(&req.body.filter)?;
    let filter_id = app.account_data.create_filter(&session.user_id, &filter).await?;
    Ok(create_filter::v3::Response::new(filter_id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(app: App, req: Ruma<get_filter::v3::Request>) -> Result<get_filter::v3::Response> {
    let session = req.user()?;
    own(&session.user_id, &req.body.user_id)?;
    let stored = app.account_data.filter(&session.user_id, &req.body.filter_id)?;
    let filter = serde_json::from_str(stored.get()).map_err(|e| Error::internal(e.to_string()))?;
    Ok(get_filter::v3::Response::new(filter))
}
