//! Integration tests: accounts — registration (UIA, tokens, availability, shared-secret admin
//! registration), login, logout, whoami, password change, deactivation, devices, profiles,
//! discovery (/versions, /.well-known, /capabilities) and login/registration rate limits.

use ruma::{
    OwnedDeviceId, OwnedUserId, RoomVersionId,
    api::client::{
        account::{
            change_password, check_registration_token_validity, deactivate, get_username_availability, register, whoami,
        },
        device::{delete_device, delete_devices, get_device, get_devices, update_device},
        discovery::{discover_homeserver, get_capabilities, get_supported_versions},
        membership::join_room_by_id,
        profile::{get_profile, get_profile_field, set_profile_field},
        room::create_room,
        session::{get_login_types, login, logout, logout_all, refresh_token},
        state::get_state_event_for_key,
        uiaa::{
            AuthData, Dummy, EmailUserIdentifier, MatrixUserIdentifier, Password as UiaaPassword, RegistrationToken,
            UserIdentifier,
        },
    },
    events::StateEventType,
    profile::{ProfileFieldName, ProfileFieldValue},
};
use serde_json::{Value, json};

use crate::harness::{Client, MatrixError, TestServer};

// ---------------------------------------------------------------------------------------------
// Helpers

fn password_login(user: &str, password: &str) -> login::v3::Request {
    login::v3::Request::new(login::v3::LoginInfo::Password(login::v3::Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned())),
        password.to_owned(),
    )))
}

/// Logs in with a fresh (token-less) client; returns the response or the error.
async fn try_login(server: &TestServer, user: &str, password: &str) -> Result<login::v3::Response, MatrixError> {
    server.client().try_send(password_login(user, password)).await
}

/// Logs in and returns a client for the new session.
async fn login_client(server: &TestServer, user: &OwnedUserId, password: &str) -> Client {
    let response = server.client().send(password_login(user.as_str(), password)).await;
    let mut client = server.client();
    client.token = Some(response.access_token);
    client.user_id = Some(response.user_id);
    client.device_id = Some(response.device_id);
    client
}

fn with_token(client: &Client, token: &str) -> Client {
    let mut other = client.clone();
    other.token = Some(token.to_owned());
    other
}

fn uiaa_password(user: &OwnedUserId, password: &str, session: &str) -> AuthData {
    let mut auth =
        UiaaPassword::new(UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_string())), password.into());
    auth.session = Some(session.to_owned());
    AuthData::Password(auth)
}

/// The session id and flows of a 401 UIA answer.
fn uia_session(error: &MatrixError) -> String {
    assert_eq!(error.status, 401, "expected a UIA 401: {}", error.body);
    error.body["session"].as_str().unwrap_or_else(|| panic!("UIA 401 without session: {}", error.body)).to_owned()
}

fn flows_of(error: &MatrixError) -> Vec<Vec<String>> {
    error.body["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("UIA 401 without flows: {}", error.body))
        .iter()
        .map(|flow| {
            flow["stages"].as_array().expect("stages").iter().map(|s| s.as_str().expect("stage").to_owned()).collect()
        })
        .collect()
}

async fn whoami_status(client: &Client) -> Result<OwnedUserId, MatrixError> {
    client.try_send(whoami::v3::Request::new()).await.map(|r| r.user_id)
}

fn register_request(localpart: &str, password: &str) -> register::v3::Request {
    let mut request = register::v3::Request::new();
    request.username = Some(localpart.to_owned());
    request.password = Some(password.to_owned());
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn admin_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let message = format!("{nonce}\0{user}\0{password}\0{}", if admin { "admin" } else { "notadmin" });
    hex(ring::hmac::sign(&key, message.as_bytes()).as_ref())
}

async fn admin_nonce(client: &Client) -> String {
    let (status, body) = client.raw("GET", "/_synapse/admin/v1/register", None).await;
    assert_eq!(status, 200, "{body}");
    body["nonce"].as_str().expect("nonce").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Registration

#[tokio::test]
async fn register_without_auth_answers_401_with_dummy_flow_and_session() {
    let server = TestServer::start().await;
    let error = server.client().try_send(register_request("nauth", "password")).await.unwrap_err();
    let session = uia_session(&error);
    assert!(!session.is_empty());
    assert!(flows_of(&error).contains(&vec!["m.login.dummy".to_owned()]), "{}", error.body);
}

#[tokio::test]
async fn register_empty_body_returns_flows() {
    let server = TestServer::start().await;
    let (status, body) = server.client().raw("POST", "/_matrix/client/v3/register", Some("{}")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["flows"].as_array().is_some_and(|f| !f.is_empty()), "{body}");
    assert!(body["session"].is_string(), "{body}");
}

#[tokio::test]
async fn register_completes_with_dummy_stage_in_the_session() {
    let server = TestServer::start().await;
    let client = server.client();
    let error = client.try_send(register_request("uiaflow", "password")).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = register_request("uiaflow", "password");
    let mut dummy = Dummy::new();
    dummy.session = Some(session);
    request.auth = Some(AuthData::Dummy(dummy));
    let response = client.send(request).await;
    assert_eq!(response.user_id.as_str(), "@uiaflow:ieum.test");
    let token = response.access_token.expect("access token");
    assert!(response.device_id.is_some());
    assert_eq!(whoami_status(&with_token(&client, &token)).await.unwrap().as_str(), "@uiaflow:ieum.test");
}

#[tokio::test]
async fn register_downcases_capitals_in_usernames() {
    let server = TestServer::start().await;
    let mut request = register_request("CapitalUser", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let response = server.client().send(request).await;
    assert_eq!(response.user_id.as_str(), "@capitaluser:ieum.test");
}

#[tokio::test]
async fn register_returns_the_requested_device_id() {
    let server = TestServer::start().await;
    let mut request = register_request("devreg", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    request.device_id = Some(OwnedDeviceId::from("MYDEVICE"));
    let response = server.client().send(request).await;
    assert_eq!(response.device_id.as_deref().map(|d| d.as_str()), Some("MYDEVICE"));
}

#[tokio::test]
async fn register_with_inhibit_login_returns_no_token() {
    let server = TestServer::start().await;
    let mut request = register_request("inhibited", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    request.inhibit_login = true;
    let response = server.client().send(request).await;
    assert_eq!(response.user_id.as_str(), "@inhibited:ieum.test");
    assert!(response.access_token.is_none());
    assert!(response.device_id.is_none());
    // The account exists and can log in.
    assert!(try_login(&server, "inhibited", "password").await.is_ok());
}

#[tokio::test]
async fn register_rejects_usernames_with_special_characters() {
    let server = TestServer::start().await;
    for name in ["user!", "ali ce", "bob:ieum.test", "名前", "@at"] {
        let mut request = register_request(name, "password");
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        let error = server.client().try_send(request).await.unwrap_err();
        assert_eq!((error.status, error.errcode()), (400, "M_INVALID_USERNAME"), "{name}: {}", error.body);
    }
}

#[tokio::test]
async fn register_allows_all_permitted_localpart_characters() {
    let server = TestServer::start().await;
    let mut request = register_request("a.b_c=d-e/f+1", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let response = server.client().send(request).await;
    assert_eq!(response.user_id.as_str(), "@a.b_c=d-e/f+1:ieum.test");
}

#[tokio::test]
async fn register_existing_user_is_m_user_in_use() {
    let server = TestServer::start().await;
    server.register_exact("taken").await;
    let mut request = register_request("taken", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let error = server.client().try_send(request).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_USER_IN_USE"), "{}", error.body);
}

#[tokio::test]
async fn register_accepts_non_ascii_passwords() {
    let server = TestServer::start().await;
    let password = "übers3kret-비밀번호-🔑";
    let mut request = register_request("unicodepw", password);
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    server.client().send(request).await;
    assert!(try_login(&server, "unicodepw", password).await.is_ok());
    let error = try_login(&server, "unicodepw", "ubers3kret").await.unwrap_err();
    assert_eq!(error.errcode(), "M_FORBIDDEN");
}

#[tokio::test]
async fn register_without_username_generates_a_user_id() {
    let server = TestServer::start().await;
    let mut request = register::v3::Request::new();
    request.password = Some("password".into());
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let response = server.client().send(request).await;
    assert_eq!(response.user_id.server_name().as_str(), "ieum.test");
    assert!(!response.user_id.localpart().is_empty());
    assert!(response.access_token.is_some());
}

#[tokio::test]
async fn register_as_guest_is_refused() {
    let server = TestServer::start().await;
    let mut request = register::v3::Request::new();
    request.kind = register::RegistrationKind::Guest;
    let error = server.client().try_send(request).await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
    assert!(matches!(error.errcode(), "M_FORBIDDEN" | "M_GUEST_ACCESS_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn register_is_forbidden_when_registration_is_disabled() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__ENABLED", "false")]).await;
    let mut request = register_request("nobody", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    let error = server.client().try_send(request).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    // Without auth as well: no flows are offered, the answer is a plain 403.
    let error = server.client().try_send(register_request("nobody", "password")).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn register_with_registration_token_flow() {
    let server =
        TestServer::start_with(&[("IEUM_REGISTRATION__ENABLED", "false"), ("IEUM_REGISTRATION__TOKENS", "[\"tok\"]")])
            .await;
    let client = server.client();
    let error = client.try_send(register_request("tokenuser", "password")).await.unwrap_err();
    let session = uia_session(&error);
    let flows = flows_of(&error);
    assert!(flows.contains(&vec!["m.login.registration_token".to_owned()]), "{flows:?}");
    assert!(!flows.iter().any(|f| f.contains(&"m.login.dummy".to_owned())), "dummy offered while closed: {flows:?}");

    // Dummy auth does not complete a token-only flow.
    let mut request = register_request("tokenuser", "password");
    let mut dummy = Dummy::new();
    dummy.session = Some(session.clone());
    request.auth = Some(AuthData::Dummy(dummy));
    let error = client.try_send(request).await.unwrap_err();
    assert_eq!(error.status, 401, "{}", error.body);

    // A wrong token: 401 with an error.
    let mut request = register_request("tokenuser", "password");
    let mut wrong = RegistrationToken::new("nope".into());
    wrong.session = Some(session.clone());
    request.auth = Some(AuthData::RegistrationToken(wrong));
    let error = client.try_send(request).await.unwrap_err();
    assert_eq!(error.status, 401, "{}", error.body);
    assert_eq!(error.errcode(), "M_FORBIDDEN", "{}", error.body);

    // The right token registers.
    let mut request = register_request("tokenuser", "password");
    let mut right = RegistrationToken::new("tok".into());
    right.session = Some(session);
    request.auth = Some(AuthData::RegistrationToken(right));
    let response = client.send(request).await;
    assert_eq!(response.user_id.as_str(), "@tokenuser:ieum.test");
}

#[tokio::test]
async fn registration_token_validity_endpoint() {
    let server =
        TestServer::start_with(&[("IEUM_REGISTRATION__ENABLED", "false"), ("IEUM_REGISTRATION__TOKENS", "[\"tok\"]")])
            .await;
    let client = server.client();
    let valid = client.send(check_registration_token_validity::v1::Request::new("tok".into())).await;
    assert!(valid.valid);
    let invalid = client.send(check_registration_token_validity::v1::Request::new("other".into())).await;
    assert!(!invalid.valid);
}

#[tokio::test]
async fn register_available_for_unregistered_name() {
    let server = TestServer::start().await;
    let response = server.client().send(get_username_availability::v3::Request::new("freename".into())).await;
    assert!(response.available);
}

#[tokio::test]
async fn register_available_is_m_user_in_use_for_registered_name() {
    let server = TestServer::start().await;
    server.register_exact("usedname").await;
    let error =
        server.client().try_send(get_username_availability::v3::Request::new("usedname".into())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_USER_IN_USE"), "{}", error.body);
}

#[tokio::test]
async fn register_available_is_m_invalid_username_for_invalid_name() {
    let server = TestServer::start().await;
    let error =
        server.client().try_send(get_username_availability::v3::Request::new("not valid!".into())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (400, "M_INVALID_USERNAME"), "{}", error.body);
}

// ---------------------------------------------------------------------------------------------
// Shared-secret admin registration

#[tokio::test]
async fn shared_secret_registration_creates_a_working_account() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let client = server.client();
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "adminmade", "pw12345", false);
    let body = json!({ "nonce": nonce, "username": "adminmade", "password": "pw12345", "admin": false, "mac": mac });
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@adminmade:ieum.test");
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(whoami_status(&with_token(&client, token)).await.unwrap().as_str(), "@adminmade:ieum.test");
    assert!(try_login(&server, "adminmade", "pw12345").await.is_ok());
}

#[tokio::test]
async fn shared_secret_registration_of_an_admin() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let client = server.client();
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "boss", "pw", true);
    let body = json!({ "nonce": nonce, "username": "boss", "password": "pw", "admin": true, "mac": mac });
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@boss:ieum.test");
    // A MAC computed as "notadmin" does not register an admin request.
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "boss2", "pw", false);
    let body = json!({ "nonce": nonce, "username": "boss2", "password": "pw", "admin": true, "mac": mac });
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body.to_string())).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
}

#[tokio::test]
async fn shared_secret_registration_with_wrong_mac_is_forbidden() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let client = server.client();
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("not the secret", &nonce, "intruder", "pw", false);
    let body = json!({ "nonce": nonce, "username": "intruder", "password": "pw", "mac": mac });
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body.to_string())).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let error = try_login(&server, "intruder", "pw").await.unwrap_err();
    assert_eq!(error.status, 403);
}

#[tokio::test]
async fn shared_secret_registration_nonce_is_single_use() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let client = server.client();
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "once", "pw", false);
    let body = json!({ "nonce": nonce, "username": "once", "password": "pw", "mac": mac }).to_string();
    let (status, _) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert_eq!(status, 200);
    let mac = admin_mac("s3cret", &nonce, "twice", "pw", false);
    let body = json!({ "nonce": nonce, "username": "twice", "password": "pw", "mac": mac }).to_string();
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert_eq!(status, 403, "{body}");
    assert!(try_login(&server, "twice", "pw").await.is_err());
}

#[tokio::test]
async fn shared_secret_registration_rejects_symbols_and_downcases() {
    let server = TestServer::start_with(&[("IEUM_REGISTRATION__SHARED_SECRET", "\"s3cret\"")]).await;
    let client = server.client();
    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "bad!name", "pw", false);
    let body = json!({ "nonce": nonce, "username": "bad!name", "password": "pw", "mac": mac }).to_string();
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")), "{body}");

    let nonce = admin_nonce(&client).await;
    let mac = admin_mac("s3cret", &nonce, "MixedCase", "pw", false);
    let body = json!({ "nonce": nonce, "username": "MixedCase", "password": "pw", "mac": mac }).to_string();
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@mixedcase:ieum.test");
}

#[tokio::test]
async fn shared_secret_registration_is_disabled_without_a_secret() {
    let server = TestServer::start().await;
    let client = server.client();
    let (status, body) = client.raw("GET", "/_synapse/admin/v1/register", None).await;
    assert!(status >= 400 && status < 500, "{status} {body}");
    assert!(body["nonce"].is_null(), "{body}");
    let body = json!({ "nonce": "x", "username": "u", "password": "pw", "mac": "00" }).to_string();
    let (status, body) = client.raw("POST", "/_synapse/admin/v1/register", Some(&body)).await;
    assert!(status >= 400 && status < 500, "{status} {body}");
}

// ---------------------------------------------------------------------------------------------
// Login

#[tokio::test]
async fn login_types_include_password() {
    let server = TestServer::start().await;
    let response = server.client().send(get_login_types::v3::Request::new()).await;
    assert!(response.flows.iter().any(|f| f.login_type() == "m.login.password"));
}

#[tokio::test]
async fn login_with_full_user_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let response = try_login(&server, alice.user_id().as_str(), "password").await.unwrap();
    assert_eq!(response.user_id, alice.user_id());
    assert_ne!(Some(&response.device_id), alice.device_id.as_ref(), "a login makes a new device");
    let session = with_token(&alice, &response.access_token);
    assert_eq!(whoami_status(&session).await.unwrap(), alice.user_id());
}

#[tokio::test]
async fn login_with_localpart() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let response = try_login(&server, alice.user_id().localpart(), "password").await.unwrap();
    assert_eq!(response.user_id, alice.user_id());
}

#[tokio::test]
async fn login_with_uppercase_username_then_whoami() {
    let server = TestServer::start().await;
    server.register_exact("upperlogin").await;
    let response = try_login(&server, "UpperLogin", "password").await.unwrap();
    assert_eq!(response.user_id.as_str(), "@upperlogin:ieum.test");
    let client = with_token(&server.client(), &response.access_token);
    assert_eq!(whoami_status(&client).await.unwrap().as_str(), "@upperlogin:ieum.test");
}

#[tokio::test]
async fn login_returns_the_requested_device_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut request = password_login(alice.user_id().as_str(), "password");
    request.device_id = Some(OwnedDeviceId::from("CHOSENDEV"));
    request.initial_device_display_name = Some("My laptop".into());
    let response = server.client().send(request).await;
    assert_eq!(response.device_id.as_str(), "CHOSENDEV");
    let device = alice.send(get_device::v3::Request::new(OwnedDeviceId::from("CHOSENDEV"))).await.device;
    assert_eq!(device.display_name.as_deref(), Some("My laptop"));
}

#[tokio::test]
async fn login_with_wrong_password_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = try_login(&server, alice.user_id().as_str(), "wrong").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn login_as_unknown_user_is_forbidden() {
    let server = TestServer::start().await;
    let error = try_login(&server, "@ghost:ieum.test", "password").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn login_as_user_of_another_server_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let other = format!("@{}:elsewhere.test", alice.user_id().localpart());
    let error = try_login(&server, &other, "password").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
}

#[tokio::test]
async fn login_with_third_party_identifier_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let request = login::v3::Request::new(login::v3::LoginInfo::Password(login::v3::Password::new(
        UserIdentifier::Email(EmailUserIdentifier::new("alice@example.org".into())),
        "password".into(),
    )));
    let error = server.client().try_send(request).await.unwrap_err();
    assert!(matches!(error.errcode(), "M_FORBIDDEN" | "M_UNKNOWN"), "{}", error.body);
    assert!(matches!(error.status, 400 | 403), "{} {}", error.status, error.body);
}

/// Spec (POST /login, 400): "M_UNKNOWN: an unknown login type was given" — a client error, not a 500.
#[tokio::test]
async fn login_with_unsupported_login_type_is_400() {
    let server = TestServer::start().await;
    let body = json!({ "type": "m.login.token", "token": "abc" }).to_string();
    let (status, body) = server.client().raw("POST", "/_matrix/client/v3/login", Some(&body)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{body}");
}

/// Clients may still send a stale user access token with /login; only the appservice login
/// type authenticates with a token (Synapse ignores it for m.login.password).
#[tokio::test]
async fn login_ignores_an_access_token_header_for_password_login() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": alice.user_id().as_str() },
        "password": "password",
    })
    .to_string();
    let (status, body) = alice.raw("POST", "/_matrix/client/v3/login", Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id().as_str());
}

#[tokio::test]
async fn login_with_legacy_user_field() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body =
        json!({ "type": "m.login.password", "user": alice.user_id().localpart(), "password": "password" }).to_string();
    let (status, body) = server.client().raw("POST", "/_matrix/client/v3/login", Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id().as_str());
}

// ---------------------------------------------------------------------------------------------
// Logout, whoami, refresh

#[tokio::test]
async fn whoami_returns_user_and_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let response = alice.send(whoami::v3::Request::new()).await;
    assert_eq!(response.user_id, alice.user_id());
    assert_eq!(response.device_id, alice.device_id);
    assert!(!response.is_guest);
}

#[tokio::test]
async fn logout_invalidates_the_access_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let other = login_client(&server, &alice.user_id().to_owned(), "password").await;
    alice.send(logout::v3::Request::new()).await;
    let error = whoami_status(&alice).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
    // Only this device is logged out.
    assert!(whoami_status(&other).await.is_ok());
    let devices = other.send(get_devices::v3::Request::new()).await.devices;
    assert!(!devices.iter().any(|d| Some(&d.device_id) == alice.device_id.as_ref()), "logged-out device still listed");
}

#[tokio::test]
async fn logout_all_invalidates_every_token() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let second = login_client(&server, &alice.user_id().to_owned(), "password").await;
    alice.send(logout_all::v3::Request::new()).await;
    for client in [&alice, &second] {
        let error = whoami_status(client).await.unwrap_err();
        assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
    }
    // The password still works.
    assert!(try_login(&server, alice.user_id().as_str(), "password").await.is_ok());
}

#[tokio::test]
async fn logout_with_invalid_token_is_rejected() {
    let server = TestServer::start().await;
    let client = with_token(&server.client(), "not-a-token");
    let error = client.try_send(logout::v3::Request::new()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
}

#[tokio::test]
async fn logout_without_token_is_rejected() {
    let server = TestServer::start().await;
    let (status, body) = server.client().raw("POST", "/_matrix/client/v3/logout", Some("{}")).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{body}");
}

#[tokio::test]
async fn refresh_tokens_rotate_access_tokens() {
    let server = TestServer::start_with(&[("IEUM_AUTH__ACCESS_TOKEN_LIFETIME_MS", "600000")]).await;
    let alice = server.register("alice").await;
    let mut request = password_login(alice.user_id().as_str(), "password");
    request.refresh_token = true;
    let response = server.client().send(request).await;
    let refresh = response.refresh_token.expect("a refresh token when the client supports them");
    assert!(response.expires_in.is_some());
    let old_client = with_token(&alice, &response.access_token);
    assert!(whoami_status(&old_client).await.is_ok());
    let refreshed = server.client().send(refresh_token::v3::Request::new(refresh.clone())).await;
    assert_ne!(refreshed.access_token, response.access_token);
    assert_eq!(whoami_status(&with_token(&alice, &refreshed.access_token)).await.unwrap(), alice.user_id());
    // The old access token was replaced (also when a request had just used it).
    let error = whoami_status(&old_client).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
    // The refresh token is rotated along with the access token.
    let new_refresh = refreshed.refresh_token.expect("rotated refresh token");
    assert_ne!(new_refresh, refresh);
}

// ---------------------------------------------------------------------------------------------
// Password change

#[tokio::test]
async fn change_password_requires_password_uia() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = alice.try_send(change_password::v3::Request::new("newpass".into())).await.unwrap_err();
    uia_session(&error);
    assert!(flows_of(&error).contains(&vec!["m.login.password".to_owned()]), "{}", error.body);
    // Nothing changed.
    assert!(try_login(&server, alice.user_id().as_str(), "password").await.is_ok());
}

#[tokio::test]
async fn change_password_with_wrong_current_password_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let error = alice.try_send(change_password::v3::Request::new("newpass".into())).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = change_password::v3::Request::new("newpass".into());
    request.auth = Some(uiaa_password(&user, "wrong", &session));
    let error = alice.try_send(request).await.unwrap_err();
    assert_eq!(error.status, 401, "{}", error.body);
    assert_eq!(error.errcode(), "M_FORBIDDEN", "{}", error.body);
    assert!(try_login(&server, user.as_str(), "password").await.is_ok());
    assert!(try_login(&server, user.as_str(), "newpass").await.is_err());
}

#[tokio::test]
async fn change_password_replaces_the_password_and_logs_out_other_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let other = login_client(&server, &user, "password").await;
    let error = alice.try_send(change_password::v3::Request::new("newpass".into())).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = change_password::v3::Request::new("newpass".into());
    request.auth = Some(uiaa_password(&user, "password", &session));
    alice.send(request).await;

    let error = try_login(&server, user.as_str(), "password").await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"));
    assert!(try_login(&server, user.as_str(), "newpass").await.is_ok());
    // The session that changed the password still works; the other one is logged out.
    assert!(whoami_status(&alice).await.is_ok());
    let error = whoami_status(&other).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"));
}

#[tokio::test]
async fn change_password_can_keep_other_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let other = login_client(&server, &user, "password").await;
    let error = alice.try_send(change_password::v3::Request::new("newpass".into())).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = change_password::v3::Request::new("newpass".into());
    request.logout_devices = false;
    request.auth = Some(uiaa_password(&user, "password", &session));
    alice.send(request).await;
    assert!(whoami_status(&other).await.is_ok());
    assert!(try_login(&server, user.as_str(), "newpass").await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Deactivation

#[tokio::test]
async fn deactivate_offers_the_password_flow() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = alice.try_send(deactivate::v3::Request::new()).await.unwrap_err();
    uia_session(&error);
    assert!(flows_of(&error).contains(&vec!["m.login.password".to_owned()]), "{}", error.body);
    assert!(whoami_status(&alice).await.is_ok(), "the account is still active");
}

#[tokio::test]
async fn deactivate_with_wrong_password_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let error = alice.try_send(deactivate::v3::Request::new()).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = deactivate::v3::Request::new();
    request.auth = Some(uiaa_password(&user, "wrong", &session));
    let error = alice.try_send(request).await.unwrap_err();
    assert_eq!(error.status, 401, "{}", error.body);
    assert_eq!(error.errcode(), "M_FORBIDDEN", "{}", error.body);
    assert!(whoami_status(&alice).await.is_ok());
}

#[tokio::test]
async fn deactivated_account_cannot_log_in_or_use_tokens() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let error = alice.try_send(deactivate::v3::Request::new()).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = deactivate::v3::Request::new();
    request.auth = Some(uiaa_password(&user, "password", &session));
    alice.send(request).await;

    let error = try_login(&server, user.as_str(), "password").await.unwrap_err();
    assert_eq!(error.status, 403, "{}", error.body);
    assert!(matches!(error.errcode(), "M_USER_DEACTIVATED" | "M_FORBIDDEN"), "{}", error.body);
    let error = whoami_status(&alice).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
    // The user id is not reusable.
    let error = server
        .client()
        .try_send(get_username_availability::v3::Request::new(user.localpart().into()))
        .await
        .unwrap_err();
    assert_eq!(error.errcode(), "M_USER_IN_USE");
}

#[tokio::test]
async fn deactivated_account_leaves_its_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut create = create_room::v3::Request::new();
    create.preset = Some(create_room::v3::RoomPreset::PublicChat);
    let room_id = alice.send(create).await.room_id;
    bob.send(join_room_by_id::v3::Request::new(room_id.clone())).await;

    let user = bob.user_id().to_owned();
    let error = bob.try_send(deactivate::v3::Request::new()).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = deactivate::v3::Request::new();
    request.auth = Some(uiaa_password(&user, "password", &session));
    bob.send(request).await;

    let member = alice
        .send(get_state_event_for_key::v3::Request::new(room_id, StateEventType::RoomMember, user.to_string()))
        .await;
    let content: Value = serde_json::from_str(member.event_or_content.get()).unwrap();
    assert_eq!(content["membership"], "leave", "{content}");
}

// ---------------------------------------------------------------------------------------------
// Devices

#[tokio::test]
async fn devices_lists_the_current_device() {
    let server = TestServer::start().await;
    let mut request = register_request("devlist", "password");
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    request.initial_device_display_name = Some("First phone".into());
    let response = server.client().send(request).await;
    let client = with_token(&server.client(), &response.access_token.unwrap());
    let devices = client.send(get_devices::v3::Request::new()).await.devices;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(Some(&devices[0].device_id), response.device_id.as_ref());
    assert_eq!(devices[0].display_name.as_deref(), Some("First phone"));
}

#[tokio::test]
async fn get_device_returns_the_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let device_id = alice.device_id.clone().unwrap();
    let device = alice.send(get_device::v3::Request::new(device_id.clone())).await.device;
    assert_eq!(device.device_id, device_id);
}

#[tokio::test]
async fn get_unknown_device_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = alice.try_send(get_device::v3::Request::new("NOSUCHDEVICE".into())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn get_device_of_another_user_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let error = alice.try_send(get_device::v3::Request::new(bob.device_id.clone().unwrap())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn update_device_renames_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let device_id = alice.device_id.clone().unwrap();
    let mut request = update_device::v3::Request::new(device_id.clone());
    request.display_name = Some("Renamed".into());
    alice.send(request).await;
    let device = alice.send(get_device::v3::Request::new(device_id)).await.device;
    assert_eq!(device.display_name.as_deref(), Some("Renamed"));
}

#[tokio::test]
async fn update_unknown_device_is_404() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut request = update_device::v3::Request::new("NOSUCHDEVICE".into());
    request.display_name = Some("x".into());
    let error = alice.try_send(request).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn delete_device_requires_uia_then_logs_it_out() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let second = login_client(&server, &user, "password").await;
    let target = second.device_id.clone().unwrap();
    let error = alice.try_send(delete_device::v3::Request::new(target.clone())).await.unwrap_err();
    let session = uia_session(&error);
    assert!(flows_of(&error).contains(&vec!["m.login.password".to_owned()]), "{}", error.body);
    assert!(whoami_status(&second).await.is_ok(), "not deleted before UIA completes");

    let mut request = delete_device::v3::Request::new(target.clone());
    request.auth = Some(uiaa_password(&user, "password", &session));
    alice.send(request).await;
    let error = whoami_status(&second).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"));
    let error = alice.try_send(get_device::v3::Request::new(target)).await.unwrap_err();
    assert_eq!(error.status, 404);
}

#[tokio::test]
async fn delete_device_requires_ui_auth_user_to_match_device_owner() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let target = alice.device_id.clone().unwrap();
    let error = alice.try_send(delete_device::v3::Request::new(target.clone())).await.unwrap_err();
    let session = uia_session(&error);
    // Bob's (valid) credentials do not authorise deleting Alice's device.
    let mut request = delete_device::v3::Request::new(target.clone());
    request.auth = Some(uiaa_password(&bob.user_id().to_owned(), "password", &session));
    let error = alice.try_send(request).await.unwrap_err();
    assert!(matches!(error.status, 401 | 403), "{} {}", error.status, error.body);
    assert_eq!(error.errcode(), "M_FORBIDDEN", "{}", error.body);
    assert!(whoami_status(&alice).await.is_ok(), "device must survive");
}

#[tokio::test]
async fn delete_devices_in_bulk_behind_uia() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let user = alice.user_id().to_owned();
    let a = login_client(&server, &user, "password").await;
    let b = login_client(&server, &user, "password").await;
    let devices = vec![a.device_id.clone().unwrap(), b.device_id.clone().unwrap()];
    let error = alice.try_send(delete_devices::v3::Request::new(devices.clone())).await.unwrap_err();
    let session = uia_session(&error);
    let mut request = delete_devices::v3::Request::new(devices);
    request.auth = Some(uiaa_password(&user, "password", &session));
    alice.send(request).await;
    assert!(whoami_status(&a).await.is_err());
    assert!(whoami_status(&b).await.is_err());
    assert!(whoami_status(&alice).await.is_ok());
    assert_eq!(alice.send(get_devices::v3::Request::new()).await.devices.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Profiles

async fn set_displayname(client: &Client, name: &str) {
    client
        .send(set_profile_field::v3::Request::new(
            client.user_id().to_owned(),
            ProfileFieldValue::DisplayName(name.into()),
        ))
        .await;
}

#[tokio::test]
async fn displayname_set_and_publicly_readable() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    set_displayname(&alice, "Alice in Wonderland").await;
    // No access token needed to read it.
    let response = server
        .client()
        .send(get_profile_field::v3::Request::new(alice.user_id().to_owned(), ProfileFieldName::DisplayName))
        .await;
    assert_eq!(response.value, Some(ProfileFieldValue::DisplayName("Alice in Wonderland".into())));
}

#[tokio::test]
async fn avatar_url_set_and_publicly_readable() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let url: ruma::OwnedMxcUri = "mxc://ieum.test/avatar1".into();
    alice
        .send(set_profile_field::v3::Request::new(
            alice.user_id().to_owned(),
            ProfileFieldValue::AvatarUrl(url.clone()),
        ))
        .await;
    let response = server
        .client()
        .send(get_profile_field::v3::Request::new(alice.user_id().to_owned(), ProfileFieldName::AvatarUrl))
        .await;
    assert_eq!(response.value, Some(ProfileFieldValue::AvatarUrl(url.clone())));
    let profile = server.client().send(get_profile::v3::Request::new(alice.user_id().to_owned())).await;
    assert_eq!(profile.get("avatar_url"), Some(&Value::String(url.to_string())));
    assert!(profile.get("displayname").is_some(), "registration sets a default display name");
}

#[tokio::test]
async fn profile_of_unknown_user_is_404() {
    let server = TestServer::start().await;
    let error = server
        .client()
        .try_send(get_profile::v3::Request::new("@nobody:ieum.test".try_into().unwrap()))
        .await
        .unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn cannot_set_another_users_displayname() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let error = alice
        .try_send(set_profile_field::v3::Request::new(
            bob.user_id().to_owned(),
            ProfileFieldValue::DisplayName("pwned".into()),
        ))
        .await
        .unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"), "{}", error.body);
    let response = server
        .client()
        .send(get_profile_field::v3::Request::new(bob.user_id().to_owned(), ProfileFieldName::DisplayName))
        .await;
    assert_ne!(response.value, Some(ProfileFieldValue::DisplayName("pwned".into())));
}

#[tokio::test]
async fn displayname_change_updates_member_event_in_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut create = create_room::v3::Request::new();
    create.preset = Some(create_room::v3::RoomPreset::PublicChat);
    let room_id = alice.send(create).await.room_id;
    bob.send(join_room_by_id::v3::Request::new(room_id.clone())).await;
    let request = || {
        get_state_event_for_key::v3::Request::new(
            room_id.clone(),
            StateEventType::RoomMember,
            bob.user_id().to_string(),
        )
    };
    let before = alice.send(request()).await;
    let before: Value = serde_json::from_str(before.event_or_content.get()).unwrap();

    set_displayname(&bob, "Bobby Tables").await;
    let mut with_event = request();
    with_event.format = get_state_event_for_key::v3::StateEventFormat::Event;
    let after = alice.send(with_event).await;
    let after: Value = serde_json::from_str(after.event_or_content.get()).unwrap();
    assert_eq!(after["content"]["displayname"], "Bobby Tables", "{after}");
    assert_eq!(after["content"]["membership"], "join", "{after}");
    assert_eq!(after["unsigned"]["prev_content"]["displayname"], before["displayname"], "{after}");
}

#[tokio::test]
async fn avatar_change_updates_member_event_in_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.send(create_room::v3::Request::new()).await.room_id;
    alice
        .send(set_profile_field::v3::Request::new(
            alice.user_id().to_owned(),
            ProfileFieldValue::AvatarUrl("mxc://ieum.test/newavatar".into()),
        ))
        .await;
    let member = alice
        .send(get_state_event_for_key::v3::Request::new(
            room_id,
            StateEventType::RoomMember,
            alice.user_id().to_string(),
        ))
        .await;
    let content: Value = serde_json::from_str(member.event_or_content.get()).unwrap();
    assert_eq!(content["avatar_url"], "mxc://ieum.test/newavatar", "{content}");
}

#[tokio::test]
async fn new_room_member_event_carries_the_profile() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    set_displayname(&alice, "Alice Prime").await;
    let room_id = alice.send(create_room::v3::Request::new()).await.room_id;
    let member = alice
        .send(get_state_event_for_key::v3::Request::new(
            room_id,
            StateEventType::RoomMember,
            alice.user_id().to_string(),
        ))
        .await;
    let content: Value = serde_json::from_str(member.event_or_content.get()).unwrap();
    assert_eq!(content["displayname"], "Alice Prime", "{content}");
}

// ---------------------------------------------------------------------------------------------
// Discovery

#[tokio::test]
async fn capabilities_default_room_version_is_12() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let capabilities = alice.send(get_capabilities::v3::Request::new()).await.capabilities;
    assert_eq!(capabilities.room_versions.default, RoomVersionId::V12);
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        assert_eq!(
            capabilities.room_versions.available.get(&version),
            Some(&get_capabilities::v3::RoomVersionStability::Stable),
            "{version}"
        );
    }
}

#[tokio::test]
async fn capabilities_follow_configured_default_version() {
    let server = TestServer::start_with(&[("IEUM_ROOMS__DEFAULT_VERSION", "\"11\"")]).await;
    let alice = server.register("alice").await;
    let capabilities = alice.send(get_capabilities::v3::Request::new()).await.capabilities;
    assert_eq!(capabilities.room_versions.default, RoomVersionId::V11);
}

#[tokio::test]
async fn capabilities_need_an_access_token() {
    let server = TestServer::start().await;
    let (status, body) = server.client().raw("GET", "/_matrix/client/v3/capabilities", None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{body}");
}

#[tokio::test]
async fn versions_responds_with_valid_structure() {
    let server = TestServer::start().await;
    let response = server.client().send(get_supported_versions::Request::new()).await;
    assert!(!response.versions.is_empty());
    for version in &response.versions {
        assert!(version.starts_with('v') || version.starts_with('r'), "{version}");
    }
    assert!(response.versions.iter().any(|v| v.starts_with("v1.")), "{:?}", response.versions);
    let (status, body) = server.client().raw("GET", "/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    assert!(body["unstable_features"].is_object() || body["unstable_features"].is_null(), "{body}");
}

#[tokio::test]
async fn well_known_client_points_at_the_homeserver() {
    let server = TestServer::start().await;
    let response = server.client().send(discover_homeserver::Request::new()).await;
    assert_eq!(response.homeserver.base_url, "http://ieum.test");
}

#[tokio::test]
async fn well_known_client_uses_public_baseurl() {
    let server = TestServer::start_with(&[("IEUM_PUBLIC_BASEURL", "\"https://matrix.ieum.test/\"")]).await;
    let (status, body) = server.client().raw("GET", "/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.ieum.test", "{body}");
}

// ---------------------------------------------------------------------------------------------
// Rate limits

#[tokio::test]
async fn login_rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with(&[
        ("IEUM_RATE_LIMITS__ENABLED", "true"),
        ("IEUM_RATE_LIMITS__LOGIN", "{ per_second = 0.01, burst = 3 }"),
    ])
    .await;
    let alice = server.register("alice").await;
    let mut limited = None;
    for _ in 0..6 {
        match try_login(&server, alice.user_id().as_str(), "wrong").await {
            Err(error) if error.status == 429 => {
                limited = Some(error);
                break;
            }
            Err(error) => assert_eq!(error.status, 403, "{}", error.body),
            Ok(_) => panic!("wrong password accepted"),
        }
    }
    let error = limited.expect("login is rate limited after the burst");
    assert_eq!(error.errcode(), "M_LIMIT_EXCEEDED");
    let retry = error.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 0, "{}", error.body);
    // A correct password is limited as well while the bucket is empty.
    let error = try_login(&server, alice.user_id().as_str(), "password").await.unwrap_err();
    assert_eq!(error.status, 429);
}

#[tokio::test]
async fn many_logins_hit_the_default_rate_limit() {
    let server = TestServer::start_with(&[("IEUM_RATE_LIMITS__ENABLED", "true")]).await;
    let alice = server.register("alice").await;
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let status = match try_login(&server, alice.user_id().as_str(), "wrong").await {
            Ok(_) => 200,
            Err(error) => {
                if error.status == 429 {
                    assert_eq!(error.errcode(), "M_LIMIT_EXCEEDED");
                    assert!(error.body["retry_after_ms"].as_u64().is_some(), "{}", error.body);
                }
                error.status
            }
        };
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn registration_is_rate_limited() {
    let server = TestServer::start_with(&[
        ("IEUM_RATE_LIMITS__ENABLED", "true"),
        ("IEUM_RATE_LIMITS__REGISTRATION", "{ per_second = 0.01, burst = 2 }"),
    ])
    .await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut request = register_request(&format!("limited{i}"), "password");
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        match server.client().try_send(request).await {
            Ok(_) => statuses.push(200),
            Err(error) => {
                assert_eq!((error.status, error.errcode()), (429, "M_LIMIT_EXCEEDED"), "{}", error.body);
                statuses.push(429);
            }
        }
    }
    assert_eq!(statuses, vec![200, 200, 429, 429]);
}

// ---------------------------------------------------------------------------------------------
// More sessions, devices and profile behaviour

#[tokio::test]
async fn login_with_existing_device_id_reuses_the_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let device = alice.device_id.clone().unwrap();
    let mut request = password_login(alice.user_id().as_str(), "password");
    request.device_id = Some(device.clone());
    request.initial_device_display_name = Some("ignored for a known device".into());
    let response = server.client().send(request).await;
    assert_eq!(response.device_id, device);
    let session = with_token(&alice, &response.access_token);
    let devices = session.send(get_devices::v3::Request::new()).await.devices;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_ne!(devices[0].display_name.as_deref(), Some("ignored for a known device"));
}

#[tokio::test]
async fn third_party_identifiers_list_is_empty() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let response = alice.send(ruma::api::client::account::get_3pids::v3::Request::new()).await;
    assert!(response.threepids.is_empty());
}

#[tokio::test]
async fn displayname_can_be_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    set_displayname(&alice, "Temporary").await;
    alice
        .send(ruma::api::client::profile::delete_profile_field::v3::Request::new(
            alice.user_id().to_owned(),
            ProfileFieldName::DisplayName,
        ))
        .await;
    let error = server
        .client()
        .try_send(get_profile_field::v3::Request::new(alice.user_id().to_owned(), ProfileFieldName::DisplayName))
        .await
        .unwrap_err();
    assert_eq!((error.status, error.errcode()), (404, "M_NOT_FOUND"), "{}", error.body);
}

#[tokio::test]
async fn overlong_displayname_is_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let error = alice
        .try_send(set_profile_field::v3::Request::new(
            alice.user_id().to_owned(),
            ProfileFieldValue::DisplayName("x".repeat(300)),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.status, 400, "{}", error.body);
    let response = server
        .client()
        .send(get_profile_field::v3::Request::new(alice.user_id().to_owned(), ProfileFieldName::DisplayName))
        .await;
    assert_ne!(response.value, Some(ProfileFieldValue::DisplayName("x".repeat(300))));
}

/// Spec (refreshing access tokens): an expired access token is answered with 401
/// M_UNKNOWN_TOKEN and `soft_logout: true`; the refresh token still works.
#[tokio::test]
async fn expired_access_token_is_soft_logout() {
    let server = TestServer::start_with(&[("IEUM_AUTH__ACCESS_TOKEN_LIFETIME_MS", "2000")]).await;
    let alice = server.register("alice").await;
    let mut request = password_login(alice.user_id().as_str(), "password");
    request.refresh_token = true;
    let response = server.client().send(request).await;
    let session = with_token(&alice, &response.access_token);
    assert!(whoami_status(&session).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let error = whoami_status(&session).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
    assert_eq!(error.body["soft_logout"], true, "{}", error.body);
    let refreshed = server.client().send(refresh_token::v3::Request::new(response.refresh_token.unwrap())).await;
    assert_eq!(whoami_status(&with_token(&alice, &refreshed.access_token)).await.unwrap(), alice.user_id());
}

#[tokio::test]
async fn login_without_refresh_support_gets_a_non_expiring_token() {
    let server = TestServer::start_with(&[("IEUM_AUTH__ACCESS_TOKEN_LIFETIME_MS", "500")]).await;
    let alice = server.register("alice").await;
    let response = server.client().send(password_login(alice.user_id().as_str(), "password")).await;
    assert!(response.refresh_token.is_none());
    assert!(response.expires_in.is_none());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(whoami_status(&with_token(&alice, &response.access_token)).await.is_ok());
}

#[tokio::test]
async fn unknown_refresh_token_is_rejected() {
    let server = TestServer::start_with(&[("IEUM_AUTH__ACCESS_TOKEN_LIFETIME_MS", "600000")]).await;
    let error = server.client().try_send(refresh_token::v3::Request::new("ier_nope".into())).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (401, "M_UNKNOWN_TOKEN"), "{}", error.body);
}
