//! Accounts and sessions: register, availability, tokens, login, logout, whoami,
//! password change, deactivation, devices, profiles, and the Synapse admin registration.

use std::time::Duration;

use ruma::{
    UserId,
    api::client::{
        account::{
            change_password, check_registration_token_validity, deactivate, get_3pids, get_username_availability,
            register, whoami,
        },
        device::{delete_device, delete_devices, get_device, get_devices, update_device},
        profile::{delete_profile_field, get_profile, get_profile_field, set_profile_field},
        session::{get_login_types, login, logout, logout_all, refresh_token},
        uiaa::{AuthType, UserIdentifier},
    },
    profile::{ProfileFieldName, ProfileFieldValue},
};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::{
        ratelimit::Limit,
        uiaa::{Checks, registration_flows},
        users::LoginResult,
    },
    storage::DeviceRecord,
};

/// `POST /_matrix/client/v3/register`
pub async fn register(app: App, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    if req.body.login_type.as_ref() == Some(&register::LoginType::ApplicationService) {
        return register_appservice_user(app, req).await;
    }
    app.ratelimit.check(Limit::Registration, &req.client_key())?;
    let config = &app.core.config.registration;
    if req.body.kind == register::RegistrationKind::Guest {
        return Err(Error::forbidden("Guest access is not enabled on this server."));
    }
    let flows = registration_flows(config.enabled, &config.tokens);
    if flows.is_empty() {
        return Err(Error::forbidden("Registration is disabled on this server."));
    }
    if let Some(localpart) = &req.body.username {
        let user_id = app.users.check_available(localpart)?;
        app.appservices.check_user_not_exclusive(&user_id, None)?;
    }
    app.uiaa
        .authenticate(
            &app.users,
            &flows,
            req.body.auth.as_ref(),
            Checks { user: None, registration_tokens: &config.tokens },
        )
        .await?;
    let password = req.body.password.as_deref().filter(|p| !p.is_empty());
    let user_id = app.users.create(req.body.username.as_deref(), password, false, None).await?;
    let mut response = register::v3::Response::new(user_id.clone());
    if !req.body.inhibit_login {
        let login = app
            .users
            .new_session(
                &user_id,
                req.body.device_id.clone(),
                req.body.initial_device_display_name.clone(),
                req.body.refresh_token,
                req.client_addr.map(|a| a.ip().to_string()),
            )
            .await?;
        response.access_token = Some(login.access_token);
        response.device_id = Some(login.device_id);
        response.refresh_token = login.refresh_token;
        response.expires_in = login.expires_in_ms.map(Duration::from_millis);
    }
    Ok(response)
}

/// `POST /_matrix/client/v3/register` with `type: m.login.application_service`: an
/// application service registers a user in its namespace (no UIA, no password).
async fn register_appservice_user(app: App, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    let appservice =
        req.session.as_ref().and_then(|s| s.appservice.clone()).ok_or_else(|| {
            Error::missing_token("m.login.application_service needs the application service's token.")
        })?;
    let localpart = req.body.username.as_deref().ok_or_else(|| Error::missing_param("username is required."))?;
    let user_id = app.users.check_available(localpart)?;
    app.appservices.may_register(&appservice, &user_id)?;
    let user_id = app.users.create(Some(localpart), None, false, Some(appservice)).await?;
    let mut response = register::v3::Response::new(user_id.clone());
    if !req.body.inhibit_login {
        let login = app
            .users
            .new_session(
                &user_id,
                req.body.device_id.clone(),
                req.body.initial_device_display_name.clone(),
                false,
                None,
            )
            .await?;
        response.access_token = Some(login.access_token);
        response.device_id = Some(login.device_id);
    }
    Ok(response)
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
pub async fn appservice_ping(
    app: App,
    req: Ruma<ruma::api::client::appservice::request_ping::v1::Request>,
) -> Result<ruma::api::client::appservice::request_ping::v1::Response> {
    let acting = req.user()?.appservice.clone().unwrap_or_default();
    let duration = app
        .appservices
        .ping(&acting, &req.body.appservice_id, req.body.transaction_id.as_ref().map(|t| t.as_str()))
        .await?;
    Ok(ruma::api::client::appservice::request_ping::v1::Response::new(duration))
}

/// `GET /_matrix/client/v3/register/available`
pub async fn username_available(
    app: App,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    app.ratelimit.check(Limit::Registration, &req.client_key())?;
    let user_id = app.users.check_available(&req.body.username)?;
    app.appservices.check_user_not_exclusive(&user_id, None)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn registration_token_validity(
    app: App,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    app.ratelimit.check(Limit::Registration, &req.client_key())?;
    let tokens = &app.core.config.registration.tokens;
    let valid = tokens.iter().any(|t| crate::service::uiaa::constant_time_eq(t, &req.body.token));
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

/// `GET /_matrix/client/v3/login`
pub async fn login_types(_app: App, _req: Ruma<get_login_types::v3::Request>) -> Result<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType};
    Ok(get_login_types::v3::Response::new(vec![LoginType::Password(PasswordLoginType::new())]))
}

fn login_response(login: LoginResult) -> login::v3::Response {
    let mut response = login::v3::Response::new(login.user_id, login.access_token, login.device_id);
    response.refresh_token = login.refresh_token;
    response.expires_in = login.expires_in_ms.map(Duration::from_millis);
    response
}

/// `POST /_matrix/client/v3/login`
pub async fn login(app: App, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    app.ratelimit.check(Limit::Login, &req.client_key())?;
    let login::v3::LoginInfo::Password(password) = &req.body.login_info else {
        return Err(Error::unknown("This server supports only m.login.password."));
    };
    // `user` is the deprecated spelling of an m.id.user identifier; older clients and
    // bots still send it.
    #[allow(deprecated)]
    let legacy_user = password.user.as_deref();
    let user_id = match (&password.identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(id)), _) => {
            UserId::parse_with_server_name(id.user.to_lowercase().as_str(), app.server_name())
                .map_err(|_| Error::bad_login())?
        }
        (None, Some(user)) => UserId::parse_with_server_name(user.to_lowercase().as_str(), app.server_name())
            .map_err(|_| Error::bad_login())?,
        (Some(UserIdentifier::Email(_) | UserIdentifier::Msisdn(_) | UserIdentifier::PhoneNumber(_)), _) => {
            return Err(Error::forbidden("Third-party identifiers are not supported for login on this server."));
        }
        (None, None) => return Err(Error::bad_json("Missing identifier.")),
        _ => return Err(Error::unknown("Unsupported identifier type.")),
    };
    if user_id.server_name() != app.server_name() {
        return Err(Error::bad_login());
    }
    let user_id = app.users.check_password(&user_id, &password.password).await?;
    let login = app
        .users
        .new_session(
            &user_id,
            req.body.device_id.clone(),
            req.body.initial_device_display_name.clone(),
            req.body.refresh_token,
            req.client_addr.map(|a| a.ip().to_string()),
        )
        .await?;
    tracing::info!(%user_id, device_id = %login.device_id, "logged in");
    Ok(login_response(login))
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh(app: App, req: Ruma<refresh_token::v3::Request>) -> Result<refresh_token::v3::Response> {
    let login = app.users.refresh(&req.body.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(login.access_token);
    response.refresh_token = login.refresh_token;
    response.expires_in_ms = login.expires_in_ms.map(Duration::from_millis);
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(app: App, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    let session = req.user()?;
    app.users.logout(&session.user_id, &session.device_id).await?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(app: App, req: Ruma<logout_all::v3::Request>) -> Result<logout_all::v3::Response> {
    app.users.logout_all(&req.user()?.user_id, None).await?;
    Ok(logout_all::v3::Response::new())
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(app: App, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let session = req.user()?;
    let is_guest = false;
    let mut response = whoami::v3::Response::new(session.user_id.clone(), is_guest);
    response.device_id = Some(session.device_id.clone());
    let _ = &app;
    Ok(response)
}

/// Sensitive actions ask the user to confirm their password (user-interactive auth).
pub(super) async fn require_password(
    app: &App,
    session: &crate::service::users::Session,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
) -> Result<()> {
    app.uiaa
        .authenticate(
            &app.users,
            &[vec![AuthType::Password]],
            auth,
            Checks { user: Some(&session.user_id), registration_tokens: &[] },
        )
        .await
}

/// `POST /_matrix/client/v3/account/password`
pub async fn change_password(
    app: App,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let session = req.user()?;
    require_password(&app, session, req.body.auth.as_ref()).await?;
    if req.body.new_password.is_empty() {
        return Err(Error::weak_password("The new password may not be empty."));
    }
    app.users.set_password(&session.user_id, &req.body.new_password).await?;
    if req.body.logout_devices {
        app.users.logout_all(&session.user_id, Some(&session.device_id)).await?;
    }
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate(app: App, req: Ruma<deactivate::v3::Request>) -> Result<deactivate::v3::Response> {
    let session = req.user()?;
    require_password(&app, session, req.body.auth.as_ref()).await?;
    // Leave every room first so the account's memberships end cleanly.
    for (room_id, record) in app.core.db.rooms_of_user(&session.user_id)?.iter() {
        if matches!(record.membership.as_str(), "join" | "invite" | "knock")
            && let Err(error) = app.rooms.leave(&session.user_id, &room_id, None).await
        {
            tracing::warn!(%room_id, %error, "could not leave a room while deactivating");
        }
    }
    app.users.deactivate(&session.user_id).await?;
    tracing::info!(user_id = %session.user_id, "account deactivated");
    Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport))
}

/// `GET /_matrix/client/v3/account/3pid`: this server keeps no third-party identifiers.
pub async fn get_3pids(_app: App, req: Ruma<get_3pids::v3::Request>) -> Result<get_3pids::v3::Response> {
    req.user()?;
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

fn device_view(device: DeviceRecord) -> ruma::api::client::device::Device {
    let mut view = ruma::api::client::device::Device::new(device.device_id);
    view.display_name = device.display_name;
    view.last_seen_ip = device.last_seen_ip;
    view.last_seen_ts =
        device.last_seen_ts.and_then(|ts| ruma::UInt::try_from(ts).ok()).map(ruma::MilliSecondsSinceUnixEpoch);
    view
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(app: App, req: Ruma<get_devices::v3::Request>) -> Result<get_devices::v3::Response> {
    let devices = app.users.devices(&req.user()?.user_id)?;
    Ok(get_devices::v3::Response::new(devices.into_iter().map(device_view).collect()))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(app: App, req: Ruma<get_device::v3::Request>) -> Result<get_device::v3::Response> {
    let device = app.users.device(&req.user()?.user_id, &req.body.device_id)?;
    Ok(get_device::v3::Response::new(device_view(device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update_device(app: App, req: Ruma<update_device::v3::Request>) -> Result<update_device::v3::Response> {
    app.users.rename_device(&req.user()?.user_id, &req.body.device_id, req.body.display_name.clone()).await?;
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete_device(app: App, req: Ruma<delete_device::v3::Request>) -> Result<delete_device::v3::Response> {
    let session = req.user()?;
    app.users.device(&session.user_id, &req.body.device_id)?;
    require_password(&app, session, req.body.auth.as_ref()).await?;
    app.users.logout(&session.user_id, &req.body.device_id).await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_devices(app: App, req: Ruma<delete_devices::v3::Request>) -> Result<delete_devices::v3::Response> {
    let session = req.user()?;
    require_password(&app, session, req.body.auth.as_ref()).await?;
    for device_id in &req.body.devices {
        app.users.logout(&session.user_id, device_id).await?;
    }
    Ok(delete_devices::v3::Response::new())
}

fn local_profile(app: &App, user_id: &UserId) -> Result<(Option<String>, Option<String>)> {
    if user_id.server_name() != app.server_name() {
        return Err(Error::not_found("Profiles of remote users need federation, which is not enabled."));
    }
    let user =
        app.users.get(user_id)?.filter(|u| !u.deactivated).ok_or_else(|| Error::not_found("Profile not found."))?;
    Ok((user.displayname, user.avatar_url))
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(app: App, req: Ruma<get_profile::v3::Request>) -> Result<get_profile::v3::Response> {
    app.touch_local_user(&req.body.user_id).await?;
    let (displayname, avatar_url) = local_profile(&app, &req.body.user_id)?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = displayname {
        response.set(ProfileFieldName::DisplayName.to_string(), name.into());
    }
    if let Some(url) = avatar_url {
        response.set(ProfileFieldName::AvatarUrl.to_string(), url.into());
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/profile/{userId}/{field}`
pub async fn get_profile_field(
    app: App,
    req: Ruma<get_profile_field::v3::Request>,
) -> Result<get_profile_field::v3::Response> {
    let (displayname, avatar_url) = local_profile(&app, &req.body.user_id)?;
    let value = match req.body.field {
        ProfileFieldName::DisplayName => displayname.map(ProfileFieldValue::DisplayName),
        ProfileFieldName::AvatarUrl => avatar_url.map(|u| ProfileFieldValue::AvatarUrl(u.into())),
        _ => None,
    };
    match value {
        Some(value) => Ok(get_profile_field::v3::Response::new(value)),
        None => Err(Error::not_found("Profile field not set.")),
    }
}

/// `PUT /_matrix/client/v3/profile/{userId}/{field}`
pub async fn set_profile_field(
    app: App,
    req: Ruma<set_profile_field::v3::Request>,
) -> Result<set_profile_field::v3::Response> {
    let session = req.user()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You may only change your own profile."));
    }
    match &req.body.value {
        ProfileFieldValue::DisplayName(name) => {
            if name.len() > 256 {
                return Err(Error::bad_json("Display name is too long."));
            }
            app.users.set_profile(&session.user_id, Some(Some(name.clone())), None).await?;
        }
        ProfileFieldValue::AvatarUrl(url) => {
            app.users.set_profile(&session.user_id, None, Some(Some(url.to_string()))).await?;
        }
        _ => return Err(Error::bad_json("This server stores only displayname and avatar_url.")),
    }
    app.rooms.update_profile_in_rooms(&session.user_id).await?;
    Ok(set_profile_field::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{field}`
pub async fn delete_profile_field(
    app: App,
    req: Ruma<delete_profile_field::v3::Request>,
) -> Result<delete_profile_field::v3::Response> {
    let session = req.user()?;
    if req.body.user_id != session.user_id {
        return Err(Error::forbidden("You may only change your own profile."));
    }
    match req.body.field {
        ProfileFieldName::DisplayName => app.users.set_profile(&session.user_id, Some(None), None).await?,
        ProfileFieldName::AvatarUrl => app.users.set_profile(&session.user_id, None, Some(None)).await?,
        _ => {}
    }
    app.rooms.update_profile_in_rooms(&session.user_id).await?;
    Ok(delete_profile_field::v3::Response::new())
}
