//! User-interactive authentication: sessions, stages completed, and which flows an
//! endpoint offers (registration: dummy or registration token; sensitive actions: password).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
};

use super::{random_token, users::Users};
use crate::error::{Error, Result};

/// Sessions older than this are forgotten.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

struct Session {
    completed: Vec<AuthType>,
    created: Instant,
}

#[derive(Default)]
pub struct Uiaa {
    sessions: Mutex<HashMap<String, Session>>,
}

/// What the stages check against.
pub struct Checks<'a> {
    /// The user whose password `m.login.password` must match (None: no password stage).
    pub user: Option<&'a UserId>,
    /// Valid registration tokens (`m.login.registration_token`).
    pub registration_tokens: &'a [String],
}

impl Uiaa {
    /// Completes the stage in `auth` (if any) and succeeds once one of `flows` is done;
    /// otherwise answers 401 with the flows, the session and what is completed.
    pub async fn authenticate(
        &self,
        users: &Users,
        flows: &[Vec<AuthType>],
        auth: Option<&AuthData>,
        checks: Checks<'_>,
    ) -> Result<()> {
        let session_id = match auth.and_then(AuthData::session) {
            Some(id) => id.to_owned(),
            None => random_token(24),
        };
        let mut auth_error = None;
        if let Some(auth) = auth {
            match self.check_stage(users, auth, &checks).await {
                Ok(stage) => {
                    let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    let session = sessions
                        .entry(session_id.clone())
                        .or_insert_with(|| Session { completed: Vec::new(), created: Instant::now() });
                    if !session.completed.contains(&stage) {
                        session.completed.push(stage);
                    }
                    let done = flows.iter().any(|flow| flow.iter().all(|s| session.completed.contains(s)));
                    if done {
                        sessions.remove(&session_id);
                        return Ok(());
                    }
                }
                Err(error) => auth_error = Some(error),
            }
        }
        let completed = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
            sessions
                .entry(session_id.clone())
                .or_insert_with(|| Session { completed: Vec::new(), created: Instant::now() })
                .completed
                .clone()
        };
        let mut info = UiaaInfo::new(flows.iter().map(|stages| AuthFlow::new(stages.clone())).collect());
        info.session = Some(session_id);
        info.completed = completed;
        if let Some(error) = auth_error {
            info.auth_error = Some(Box::new(error));
        }
        Err(Error::Uiaa(Box::new(info)))
    }

    async fn check_stage(
        &self,
        users: &Users,
        auth: &AuthData,
        checks: &Checks<'_>,
    ) -> Result<AuthType, StandardErrorBody> {
        let forbidden = |message: &str| StandardErrorBody::new(ErrorKind::Forbidden, message.to_owned());
        match auth {
            AuthData::Dummy(_) => Ok(AuthType::Dummy),
            AuthData::RegistrationToken(token) => {
                if checks.registration_tokens.iter().any(|valid| constant_time_eq(valid, &token.token)) {
                    Ok(AuthType::RegistrationToken)
                } else {
                    Err(forbidden("Invalid registration token."))
                }
            }
            AuthData::Password(password) => {
                let Some(expected) = checks.user else {
                    return Err(forbidden("Password authentication is not offered here."));
                };
                let claimed = match &password.identifier {
                    UserIdentifier::Matrix(id) => {
                        UserId::parse_with_server_name(id.user.as_str(), expected.server_name()).ok()
                    }
                    _ => None,
                };
                if claimed.as_deref() != Some(expected) {
                    return Err(forbidden("Invalid username or password."));
                }
                match users.check_password(expected, &password.password).await {
                    Ok(_) => Ok(AuthType::Password),
                    Err(_) => Err(forbidden("Invalid username or password.")),
                }
            }
            other => Err(StandardErrorBody::new(
                ErrorKind::Unrecognized,
                format!("Authentication stage {:?} is not supported.", other.auth_type()),
            )),
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The registration flows this server's configuration allows.
pub fn registration_flows(open: bool, tokens: &[String]) -> Vec<Vec<AuthType>> {
    let mut flows = Vec::new();
    if open {
        flows.push(vec![AuthType::Dummy]);
    }
    if !tokens.is_empty() {
        flows.push(vec![AuthType::RegistrationToken]);
    }
    flows
}
