//! Push rules, pushers and `/notifications` (ruma's `client::push` module).

use ruma::api::client::push::{
    delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
    get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule, set_pushrule_actions,
    set_pushrule_enabled,
};

use crate::{api::ruma::Ruma, app::App, error::Result};

/// Default page size of `/notifications`.
const DEFAULT_NOTIFICATIONS_LIMIT: usize = 20;

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    app: App,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let session = req.user()?;
    Ok(get_pushrules_all::v3::Response::new((*app.push.ruleset(&session.user_id)?).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    app: App,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let session = req.user()?;
    Ok(get_pushrules_global_scope::v3::Response::new((*app.push.ruleset(&session.user_id)?).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(app: App, req: Ruma<get_pushrule::v3::Request>) -> Result<get_pushrule::v3::Response> {
    let session = req.user()?;
    let rule = app.push.rule(&session.user_id, req.body.kind.clone(), &req.body.rule_id)?;
    Ok(get_pushrule::v3::Response::new(rule))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule(app: App, req: Ruma<set_pushrule::v3::Request>) -> Result<set_pushrule::v3::Response> {
    let session = req.user()?;
    let body = &req.body;
    app.push.set_rule(&session.user_id, body.rule.clone(), body.after.as_deref(), body.before.as_deref()).await?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule(
    app: App,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let session = req.user()?;
    app.push.delete_rule(&session.user_id, req.body.kind.clone(), &req.body.rule_id).await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    app: App,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let session = req.user()?;
    let rule = app.push.rule(&session.user_id, req.body.kind.clone(), &req.body.rule_id)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled(
    app: App,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let session = req.user()?;
    app.push.set_enabled(&session.user_id, req.body.kind.clone(), &req.body.rule_id, req.body.enabled).await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    app: App,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let session = req.user()?;
    let rule = app.push.rule(&session.user_id, req.body.kind.clone(), &req.body.rule_id)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    app: App,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let session = req.user()?;
    let body = &req.body;
    app.push.set_actions(&session.user_id, body.kind.clone(), &body.rule_id, body.actions.clone()).await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(app: App, req: Ruma<get_pushers::v3::Request>) -> Result<get_pushers::v3::Response> {
    let session = req.user()?;
    Ok(get_pushers::v3::Response::new(app.push.pushers(&session.user_id)?))
}

/// `POST /_matrix/client/v3/pushers/set`
pub async fn set_pusher(app: App, req: Ruma<set_pusher::v3::Request>) -> Result<set_pusher::v3::Response> {
    let session = req.user()?;
    match req.body.action.clone() {
        set_pusher::v3::PusherAction::Post(data) => {
            app.push.set_pusher(&session.user_id, &session.device_id, data.pusher, data.append).await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => app.push.delete_pusher(&session.user_id, ids).await?,
        _ => return Err(crate::error::Error::bad_json("Unknown pusher action.")),
    }
    Ok(set_pusher::v3::Response::new())
}

/// `GET /_matrix/client/v3/notifications`
pub async fn get_notifications(
    app: App,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let session = req.user()?;
    let limit = req.body.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let (notifications, next_token) = app.push.notifications(
        &app.rooms,
        &session.user_id,
        req.body.from.as_deref(),
        limit.unwrap_or(DEFAULT_NOTIFICATIONS_LIMIT),
        only_highlight,
    )?;
    let mut response = get_notifications::v3::Response::new(notifications);
    response.next_token = next_token;
    Ok(response)
}
