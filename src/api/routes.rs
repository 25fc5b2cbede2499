//! The route table: one line per endpoint, grouped as in the spec.

use axum::{
    Router,
    routing::{get, post},
};
use ruma::api::client::{
    self as c,
    state::{get_state_event_for_key, send_state_event},
};

use super::{
    admin,
    client::{account, config, key_backup, keys, media, push, room, sliding_sync, sync, thirdparty},
    federation,
    ruma::{route, route_extra, route_limited, route_parsed, route_responding},
    well_known,
};
use crate::app::App;

pub fn client_routes() -> Router<App> {
    let r = Router::new();
    // Discovery.
    let r = route::<c::discovery::get_supported_versions::Request, _, _>(r, well_known::versions);
    let r = route::<c::discovery::discover_homeserver::Request, _, _>(r, well_known::well_known_client);
    let r = route::<c::discovery::get_capabilities::v3::Request, _, _>(r, well_known::capabilities);
    // Push rules, pushers, notifications.
    let r = route::<c::push::get_pushrules_all::v3::Request, _, _>(r, push::get_pushrules_all);
    let r = route::<c::push::get_pushrules_global_scope::v3::Request, _, _>(r, push::get_pushrules_global_scope);
    let r = route::<c::push::get_pushrule::v3::Request, _, _>(r, push::get_pushrule);
    let r = route::<c::push::set_pushrule::v3::Request, _, _>(r, push::set_pushrule);
    let r = route::<c::push::delete_pushrule::v3::Request, _, _>(r, push::delete_pushrule);
    let r = route::<c::push::get_pushrule_enabled::v3::Request, _, _>(r, push::get_pushrule_enabled);
    let r = route::<c::push::set_pushrule_enabled::v3::Request, _, _>(r, push::set_pushrule_enabled);
    let r = route::<c::push::get_pushrule_actions::v3::Request, _, _>(r, push::get_pushrule_actions);
    let r = route::<c::push::set_pushrule_actions::v3::Request, _, _>(r, push::set_pushrule_actions);
    let r = route::<c::push::get_pushers::v3::Request, _, _>(r, push::get_pushers);
    let r = route::<c::push::set_pusher::v3::Request, _, _>(r, push::set_pusher);
    let r = route::<c::push::get_notifications::v3::Request, _, _>(r, push::get_notifications);
    // Accounts and sessions.
    let r = route::<c::account::register::v3::Request, _, _>(r, account::register);
    let r = route::<c::account::get_username_availability::v3::Request, _, _>(r, account::username_available);
    let r = route::<c::appservice::request_ping::v1::Request, _, _>(r, account::appservice_ping);
    // Third-party networks, passed through to the appservices that bridge them.
    let r = route::<c::thirdparty::get_protocols::v3::Request, _, _>(r, thirdparty::protocols);
    let r = route::<c::thirdparty::get_protocol::v3::Request, _, _>(r, thirdparty::protocol);
    let r = route::<c::thirdparty::get_location_for_protocol::v3::Request, _, _>(r, thirdparty::locations_for_protocol);
    let r = route::<c::thirdparty::get_user_for_protocol::v3::Request, _, _>(r, thirdparty::users_for_protocol);
    let r = route::<c::thirdparty::get_location_for_room_alias::v3::Request, _, _>(r, thirdparty::locations_for_alias);
    let r = route::<c::thirdparty::get_user_for_user_id::v3::Request, _, _>(r, thirdparty::users_for_user_id);
    let r = route::<c::account::check_registration_token_validity::v1::Request, _, _>(
        r,
        account::registration_token_validity,
    );
    let r = route::<c::session::get_login_types::v3::Request, _, _>(r, account::login_types);
    let r = route::<c::session::login::v3::Request, _, _>(r, account::login);
    let r = route::<c::session::refresh_token::v3::Request, _, _>(r, account::refresh);
    let r = route::<c::session::logout::v3::Request, _, _>(r, account::logout);
    let r = route::<c::session::logout_all::v3::Request, _, _>(r, account::logout_all);
    let r = route::<c::account::whoami::v3::Request, _, _>(r, account::whoami);
    let r = route::<c::account::change_password::v3::Request, _, _>(r, account::change_password);
    let r = route::<c::account::deactivate::v3::Request, _, _>(r, account::deactivate);
    let r = route::<c::account::get_3pids::v3::Request, _, _>(r, account::get_3pids);
    let r = route::<c::device::get_devices::v3::Request, _, _>(r, account::get_devices);
    let r = route::<c::device::get_device::v3::Request, _, _>(r, account::get_device);
    let r = route::<c::device::update_device::v3::Request, _, _>(r, account::update_device);
    let r = route::<c::device::delete_device::v3::Request, _, _>(r, account::delete_device);
    let r = route::<c::device::delete_devices::v3::Request, _, _>(r, account::delete_devices);
    let r = route::<c::profile::get_profile::v3::Request, _, _>(r, account::get_profile);
    let r = route::<c::profile::get_profile_field::v3::Request, _, _>(r, account::get_profile_field);
    let r = route::<c::profile::set_profile_field::v3::Request, _, _>(r, account::set_profile_field);
    let r = route::<c::profile::delete_profile_field::v3::Request, _, _>(r, account::delete_profile_field);
    // Rooms.
    let r = route::<c::room::create_room::v3::Request, _, _>(r, room::create_room);
    let r = route::<c::membership::join_room_by_id::v3::Request, _, _>(r, room::join_room_by_id);
    let r = route::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(r, room::join_room_by_id_or_alias);
    let r = route::<c::knock::knock_room::v3::Request, _, _>(r, room::knock_room);
    let r = route::<c::membership::invite_user::v3::Request, _, _>(r, room::invite_user);
    let r = route::<c::membership::leave_room::v3::Request, _, _>(r, room::leave_room);
    let r = route::<c::membership::forget_room::v3::Request, _, _>(r, room::forget_room);
    let r = route::<c::membership::kick_user::v3::Request, _, _>(r, room::kick_user);
    let r = route::<c::membership::ban_user::v3::Request, _, _>(r, room::ban_user);
    let r = route::<c::membership::unban_user::v3::Request, _, _>(r, room::unban_user);
    let r = route::<c::membership::joined_rooms::v3::Request, _, _>(r, room::joined_rooms);
    let r = route::<c::membership::joined_members::v3::Request, _, _>(r, room::joined_members);
    let r = route::<c::membership::get_member_events::v3::Request, _, _>(r, room::get_member_events);
    let r = route::<c::message::send_message_event::v3::Request, _, _>(r, room::send_message_event);
    let r = route::<c::message::get_message_events::v3::Request, _, _>(r, room::get_message_events);
    let r = route::<c::state::send_state_event::v3::Request, _, _>(r, room::send_state_event);
    let r = route::<c::state::get_state_events::v3::Request, _, _>(r, room::get_state_events);
    let r = route::<c::state::get_state_event_for_key::v3::Request, _, _>(r, room::get_state_event_for_key);
    // A state key may be empty: `.../state/{type}` and `.../state/{type}/` mean state key "".
    let r = empty_state_key_routes(r);
    let r = route::<c::redact::redact_event::v3::Request, _, _>(r, room::redact_event);
    let r = route::<c::room::get_room_event::v3::Request, _, _>(r, room::get_room_event);
    let r = route::<c::context::get_context::v3::Request, _, _>(r, room::get_context);
    let r = route::<c::room::aliases::v3::Request, _, _>(r, room::room_aliases);
    let r = route::<c::alias::create_alias::v3::Request, _, _>(r, room::create_alias);
    let r = route::<c::alias::get_alias::v3::Request, _, _>(r, room::get_alias);
    let r = route::<c::alias::delete_alias::v3::Request, _, _>(r, room::delete_alias);
    let r = route::<c::directory::get_room_visibility::v3::Request, _, _>(r, room::get_room_visibility);
    let r = route::<c::directory::set_room_visibility::v3::Request, _, _>(r, room::set_room_visibility);
    let r = route::<c::directory::get_public_rooms::v3::Request, _, _>(r, room::get_public_rooms);
    let r = route::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(r, room::get_public_rooms_filtered);
    // Sync and ephemeral data.
    let r = route_parsed::<c::sync::sync_events::v3::Request, _, _, _>(r, sync::sync, sync::parse_sync_request);
    let r = route_responding::<c::sync::sync_events::v5::Request, _, _, _>(r, sliding_sync::sliding_sync);
    let r = route::<c::typing::create_typing_event::v3::Request, _, _>(r, sync::typing);
    let r = route::<c::receipt::create_receipt::v3::Request, _, _>(r, sync::receipt);
    let r = route::<c::read_marker::set_read_marker::v3::Request, _, _>(r, sync::read_markers);
    let r = route::<c::presence::set_presence::v3::Request, _, _>(r, sync::set_presence);
    let r = route::<c::presence::get_presence::v3::Request, _, _>(r, sync::get_presence);
    // Account data, tags, filters.
    let r = route::<c::config::set_global_account_data::v3::Request, _, _>(r, config::set_global_account_data);
    let r = route::<c::config::get_global_account_data::v3::Request, _, _>(r, config::get_global_account_data);
    let r = route::<c::config::set_room_account_data::v3::Request, _, _>(r, config::set_room_account_data);
    let r = route::<c::config::get_room_account_data::v3::Request, _, _>(r, config::get_room_account_data);
    let r = route::<c::tag::get_tags::v3::Request, _, _>(r, config::get_tags);
    let r = route::<c::tag::create_tag::v3::Request, _, _>(r, config::create_tag);
    let r = route::<c::tag::delete_tag::v3::Request, _, _>(r, config::delete_tag);
    let r = route::<c::filter::create_filter::v3::Request, _, _>(r, config::create_filter);
    let r = route::<c::filter::get_filter::v3::Request, _, _>(r, config::get_filter);
    // End-to-end encryption.
    let r = route::<c::keys::upload_keys::v3::Request, _, _>(r, keys::upload_keys);
    let r = route::<c::keys::get_keys::v3::Request, _, _>(r, keys::get_keys);
    let r = route::<c::keys::claim_keys::v3::Request, _, _>(r, keys::claim_keys);
    let r = route::<c::keys::get_key_changes::v3::Request, _, _>(r, keys::get_key_changes);
    let r = route::<c::keys::upload_signing_keys::v3::Request, _, _>(r, keys::upload_signing_keys);
    let r = route::<c::keys::upload_signatures::v3::Request, _, _>(r, keys::upload_signatures);
    let r = route::<c::to_device::send_event_to_device::v3::Request, _, _>(r, keys::send_to_device);
    // Server-side key backups.
    let r = route::<c::backup::create_backup_version::v3::Request, _, _>(r, key_backup::create_backup_version);
    let r = route::<c::backup::get_latest_backup_info::v3::Request, _, _>(r, key_backup::get_latest_backup_info);
    let r = route::<c::backup::get_backup_info::v3::Request, _, _>(r, key_backup::get_backup_info);
    let r = route::<c::backup::update_backup_version::v3::Request, _, _>(r, key_backup::update_backup_version);
    let r = route::<c::backup::delete_backup_version::v3::Request, _, _>(r, key_backup::delete_backup_version);
    let r = route::<c::backup::add_backup_keys::v3::Request, _, _>(r, key_backup::add_backup_keys);
    let r = route::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(r, key_backup::add_backup_keys_for_room);
    let r =
        route::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(r, key_backup::add_backup_keys_for_session);
    let r = route::<c::backup::get_backup_keys::v3::Request, _, _>(r, key_backup::get_backup_keys);
    let r = route::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(r, key_backup::get_backup_keys_for_room);
    let r =
        route::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(r, key_backup::get_backup_keys_for_session);
    let r = route::<c::backup::delete_backup_keys::v3::Request, _, _>(r, key_backup::delete_backup_keys);
    let r =
        route::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(r, key_backup::delete_backup_keys_for_room);
    let r = route::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(
        r,
        key_backup::delete_backup_keys_for_session,
    );
    let r = federation_routes(r);
    let r = r.merge(media_routes());
    // Synapse-compatible admin registration (shared secret), used by existing tools.
    r.route("/_synapse/admin/v1/register", get(admin::register_nonce).merge(post(admin::register_with_secret)))
}

/// Server-server endpoints (X-Matrix authenticated, except the key endpoints).
fn federation_routes(r: Router<App>) -> Router<App> {
    use ruma::api::federation as f;
    let r = route::<f::discovery::get_server_keys::v2::Request, _, _>(r, federation::server_keys);
    let r = route::<f::discovery::get_remote_server_keys::v2::Request, _, _>(r, federation::query_keys);
    let r = route::<f::discovery::get_remote_server_keys_batch::v2::Request, _, _>(r, federation::query_keys_batch);
    let r = route::<f::discovery::get_server_version::v1::Request, _, _>(r, federation::version);
    let r = route::<f::transactions::send_transaction_message::v1::Request, _, _>(r, federation::send_transaction);
    let r = route::<f::event::get_event::v1::Request, _, _>(r, federation::get_event);
    let r = route::<f::event::get_room_state_ids::v1::Request, _, _>(r, federation::get_state_ids);
    let r = route::<f::event::get_room_state::v1::Request, _, _>(r, federation::get_state);
    let r = route::<f::authorization::get_event_authorization::v1::Request, _, _>(r, federation::get_event_auth);
    let r = route::<f::backfill::get_backfill::v1::Request, _, _>(r, federation::backfill);
    let r = route::<f::event::get_missing_events::v1::Request, _, _>(r, federation::missing_events);
    let r = route::<f::membership::prepare_join_event::v1::Request, _, _>(r, federation::make_join);
    let r = route::<f::membership::create_join_event::v2::Request, _, _>(r, federation::send_join);
    let r = route::<f::membership::prepare_leave_event::v1::Request, _, _>(r, federation::make_leave);
    let r = route::<f::membership::create_leave_event::v2::Request, _, _>(r, federation::send_leave);
    let r = route::<f::membership::create_invite::v2::Request, _, _>(r, federation::invite);
    let r = route::<f::membership::prepare_knock_event::v1::Request, _, _>(r, federation::make_knock);
    let r = route::<f::membership::create_knock_event::v1::Request, _, _>(r, federation::send_knock);
    let r = route::<f::query::get_profile_information::v1::Request, _, _>(r, federation::query_profile);
    let r = route::<f::query::get_room_information::v1::Request, _, _>(r, federation::query_directory);
    let r = route::<f::device::get_devices::v1::Request, _, _>(r, federation::user_devices);
    let r = route::<f::keys::get_keys::v1::Request, _, _>(r, federation::user_keys_query);
    let r = route::<f::keys::claim_keys::v1::Request, _, _>(r, federation::user_keys_claim);
    let r = route::<f::directory::get_public_rooms::v1::Request, _, _>(r, federation::public_rooms);
    route::<f::directory::get_public_rooms_filtered::v1::Request, _, _>(r, federation::public_rooms_filtered)
}

/// The media repository (client, legacy and federation endpoints), every response with
/// the media security headers (`media::media_headers`).
fn media_routes() -> Router<App> {
    #[allow(deprecated)]
    use ruma::api::client::media as legacy;
    use ruma::api::{client::authenticated_media as auth, federation::authenticated_media as f};
    let r = Router::new();
    let r = route_limited::<legacy::create_content::v3::Request, _, _>(r, media::upload, media::upload_limit);
    let r = route::<legacy::create_mxc_uri::v1::Request, _, _>(r, media::create_mxc_uri);
    let r =
        route_limited::<legacy::create_content_async::v3::Request, _, _>(r, media::upload_async, media::upload_limit);
    let r = route::<auth::get_media_config::v1::Request, _, _>(r, media::config);
    let r = route::<auth::get_content::v1::Request, _, _>(r, media::download);
    let r = route::<auth::get_content_as_filename::v1::Request, _, _>(r, media::download_as);
    let r = route::<auth::get_content_thumbnail::v1::Request, _, _>(r, media::thumbnail);
    // matrix-nio asks for `download/{serverName}/{mediaId}/` (an empty file name).
    let r = route_extra::<auth::get_content::v1::Request, _, _>(
        r,
        "/_matrix/client/v1/media/download/{server_name}/{media_id}/",
        &[],
        media::download,
    );
    #[allow(deprecated)]
    let r = {
        let r = route::<legacy::get_media_config::v3::Request, _, _>(r, media::legacy_config);
        let r = route::<legacy::get_content::v3::Request, _, _>(r, media::legacy_download);
        let r = route_extra::<legacy::get_content::v3::Request, _, _>(
            r,
            "/_matrix/media/v3/download/{server_name}/{media_id}/",
            &[],
            media::legacy_download,
        );
        let r = route::<legacy::get_content_as_filename::v3::Request, _, _>(r, media::legacy_download_as);
        route::<legacy::get_content_thumbnail::v3::Request, _, _>(r, media::legacy_thumbnail)
    };
    let r = route::<f::get_content::v1::Request, _, _>(r, federation::media::download);
    let r = route::<f::get_content_thumbnail::v1::Request, _, _>(r, federation::media::thumbnail);
    r.layer(axum::middleware::from_fn(media::media_headers))
}

fn empty_state_key_routes(r: Router<App>) -> Router<App> {
    const PREFIXES: [&str; 2] = ["/_matrix/client/r0", "/_matrix/client/v3"];
    let mut r = r;
    for prefix in PREFIXES {
        for suffix in ["", "/"] {
            let path: &'static str =
                Box::leak(format!("{prefix}/rooms/{{room_id}}/state/{{event_type}}{suffix}").into_boxed_str());
            r = route_extra::<send_state_event::v3::Request, _, _>(r, path, &[""], room::send_state_event);
            r = route_extra::<get_state_event_for_key::v3::Request, _, _>(
                r,
                path,
                &[""],
                room::get_state_event_for_key,
            );
        }
    }
    r
}
