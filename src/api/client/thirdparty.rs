//! `/_matrix/client/v3/thirdparty/*`: third-party networks bridged by appservices (the
//! lookups are passed through to them; service/appservice/thirdparty.rs).

use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
    get_user_for_user_id,
};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::appservice::thirdparty::Kind,
};

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn protocols(app: App, req: Ruma<get_protocols::v3::Request>) -> Result<get_protocols::v3::Response> {
    req.user()?;
    Ok(get_protocols::v3::Response::new(app.appservices.thirdparty_protocols().await))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn protocol(app: App, req: Ruma<get_protocol::v3::Request>) -> Result<get_protocol::v3::Response> {
    req.user()?;
    let protocol = &req.body.protocol;
    app.appservices.thirdparty_known(protocol)?;
    let description =
        app.appservices.thirdparty_protocol(protocol).await.ok_or_else(|| {
            Error::not_found(format!("No application service describes the protocol {protocol:?} now."))
        })?;
    Ok(get_protocol::v3::Response::new(description))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn locations_for_protocol(
    app: App,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<get_location_for_protocol::v3::Response> {
    req.user()?;
    app.appservices.thirdparty_known(&req.body.protocol)?;
    let found = app.appservices.thirdparty_lookup(Kind::Location, &req.body.protocol, &req.body.fields).await;
    Ok(get_location_for_protocol::v3::Response::new(found))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn users_for_protocol(
    app: App,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<get_user_for_protocol::v3::Response> {
    req.user()?;
    app.appservices.thirdparty_known(&req.body.protocol)?;
    let found = app.appservices.thirdparty_lookup(Kind::User, &req.body.protocol, &req.body.fields).await;
    Ok(get_user_for_protocol::v3::Response::new(found))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`
pub async fn locations_for_alias(
    app: App,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<get_location_for_room_alias::v3::Response> {
    req.user()?;
    let found = app.appservices.thirdparty_reverse(Kind::Location, req.body.alias.as_str()).await;
    Ok(get_location_for_room_alias::v3::Response::new(found))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`
pub async fn users_for_user_id(
    app: App,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<get_user_for_user_id::v3::Response> {
    req.user()?;
    let found = app.appservices.thirdparty_reverse(Kind::User, req.body.userid.as_str()).await;
    Ok(get_user_for_user_id::v3::Response::new(found))
}
