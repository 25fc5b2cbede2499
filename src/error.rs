//! `Error` and the ONE mapping from it to a Matrix errcode and an HTTP status.
//!
//! Services return `Error`; the API layer renders it. Backend error text never reaches a
//! client: storage failures are logged here and answered with a generic M_UNKNOWN.

use std::time::Duration;

use ruma::{
    api::{
        client::uiaa::UiaaInfo,
        error::{ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody},
    },
    assign,
    exports::http::StatusCode,
};

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error with its errcode and a message for the user.
    #[error("{kind:?}: {message}")]
    Matrix { kind: ErrorKind, message: String },
    /// The same, with an explicit status where the errcode alone does not decide it.
    #[error("{kind:?} ({status}): {message}")]
    WithStatus { kind: ErrorKind, message: String, status: StatusCode },
    /// User-interactive authentication: more stages are needed (HTTP 401 with the flows).
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    /// A storage failure: logged in full, answered with a generic message.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A bug or an impossible state: logged in full, answered with a generic message.
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($name:ident => $kind:expr),* $(,)?) => {
        $(
            pub fn $name(message: impl Into<String>) -> Self {
                Self::Matrix { kind: $kind, message: message.into() }
            }
        )*
    };
}

impl Error {
    constructors! {
        forbidden => ErrorKind::Forbidden,
        not_found => ErrorKind::NotFound,
        bad_json => ErrorKind::BadJson,
        not_json => ErrorKind::NotJson,
        missing_param => ErrorKind::MissingParam,
        invalid_param => ErrorKind::InvalidParam,
        missing_token => ErrorKind::MissingToken,
        user_in_use => ErrorKind::UserInUse,
        room_in_use => ErrorKind::RoomInUse,
        invalid_username => ErrorKind::InvalidUsername,
        exclusive => ErrorKind::Exclusive,
        too_large => ErrorKind::TooLarge,
        unrecognized => ErrorKind::Unrecognized,
        bad_state => ErrorKind::BadState,
        unsupported_room_version => ErrorKind::UnsupportedRoomVersion,
        user_deactivated => ErrorKind::UserDeactivated,
        threepid_not_found => ErrorKind::ThreepidNotFound,
        unknown => ErrorKind::Unknown,
        bad_alias => ErrorKind::BadAlias,
        weak_password => ErrorKind::WeakPassword,
        unauthorized => ErrorKind::Unauthorized,
        unknown_pos => ErrorKind::UnknownPos,
    }

    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::Matrix { kind: ErrorKind::UnknownToken(Default::default()), message: message.into() }
    }

    pub fn limit_exceeded(retry_after: Duration) -> Self {
        Self::Matrix {
            kind: ErrorKind::LimitExceeded(assign!(LimitExceededErrorData::new(), {
                retry_after: Some(RetryAfter::Delay(retry_after)),
            })),
            message: "Too many requests; retry later.".into(),
        }
    }

    /// 405 for a known path called with a method it does not serve.
    pub fn method_not_allowed() -> Self {
        Self::WithStatus {
            kind: ErrorKind::Unrecognized,
            message: "This endpoint does not support this HTTP method.".into(),
            status: StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Wrong password or unknown user at login (403 M_FORBIDDEN, one message for both).
    pub fn bad_login() -> Self {
        Self::forbidden("Invalid username or password.")
    }

    /// A failure talking to another homeserver, as the client that caused it should see it:
    /// a policy refusal is M_FORBIDDEN, anything else a 502 naming the server.
    pub fn remote(error: ieum_federation::client::FederationError) -> Self {
        use ieum_federation::client::FederationError;
        match error {
            FederationError::NotPermitted(server) => {
                Self::forbidden(format!("This server does not federate with {server}."))
            }
            other => Self::WithStatus {
                kind: ErrorKind::Unknown,
                message: format!("Could not talk to the other server: {other}"),
                status: StatusCode::BAD_GATEWAY,
            },
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The same error answered with 409 Conflict (an alias or id that exists already).
    pub fn with_status_conflict(self) -> Self {
        match self {
            Self::Matrix { kind, message } | Self::WithStatus { kind, message, .. } => {
                Self::WithStatus { kind, message, status: StatusCode::CONFLICT }
            }
            other => other,
        }
    }

    /// The HTTP status for this error (the one mapping).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::WithStatus { status, .. } => *status,
            Self::Uiaa(_) => StatusCode::UNAUTHORIZED,
            Self::Storage(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Matrix { kind, .. } => match kind {
                ErrorKind::Forbidden
                | ErrorKind::UserDeactivated
                | ErrorKind::GuestAccessForbidden
                | ErrorKind::ThreepidDenied => StatusCode::FORBIDDEN,
                // The spec lists M_EXCLUSIVE under 400 for /register (Synapse: 400 everywhere).
                ErrorKind::UnknownToken(_) | ErrorKind::MissingToken | ErrorKind::Unauthorized => {
                    StatusCode::UNAUTHORIZED
                }
                ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
                ErrorKind::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            },
        }
    }

    /// The ruma error (errcode + message) sent to the client.
    pub fn to_ruma(&self) -> ruma::api::error::Error {
        let body = match self {
            Self::Matrix { kind, message } | Self::WithStatus { kind, message, .. } => {
                StandardErrorBody::new(kind.clone(), message.clone())
            }
            Self::Storage(_) | Self::Internal(_) => {
                StandardErrorBody::new(ErrorKind::Unknown, "Internal server error.".into())
            }
            Self::Uiaa(_) => StandardErrorBody::new(ErrorKind::Unauthorized, "Authentication required.".into()),
        };
        ErrorBody::Standard(body).into_error(self.status())
    }

    /// The errcode kind, for tests and logs.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Matrix { kind, .. } | Self::WithStatus { kind, .. } => kind.clone(),
            Self::Uiaa(_) => ErrorKind::Unauthorized,
            Self::Storage(_) | Self::Internal(_) => ErrorKind::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_spec() {
        let cases = [
            (Error::forbidden("x"), 403, "M_FORBIDDEN"),
            (Error::unknown_token("x"), 401, "M_UNKNOWN_TOKEN"),
            (Error::missing_token("x"), 401, "M_MISSING_TOKEN"),
            (Error::not_found("x"), 404, "M_NOT_FOUND"),
            (Error::unrecognized("x"), 404, "M_UNRECOGNIZED"),
            (Error::method_not_allowed(), 405, "M_UNRECOGNIZED"),
            (Error::bad_json("x"), 400, "M_BAD_JSON"),
            (Error::not_json("x"), 400, "M_NOT_JSON"),
            (Error::too_large("x"), 413, "M_TOO_LARGE"),
            (Error::limit_exceeded(Duration::from_millis(1500)), 429, "M_LIMIT_EXCEEDED"),
            (Error::user_in_use("x"), 400, "M_USER_IN_USE"),
            (Error::exclusive("x"), 400, "M_EXCLUSIVE"),
            (Error::unknown_pos("x"), 400, "M_UNKNOWN_POS"),
            (Error::internal("secret detail"), 500, "M_UNKNOWN"),
        ];
        for (error, status, errcode) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.kind().errcode().to_string(), errcode, "{error}");
        }
    }

    #[test]
    fn internal_details_do_not_leak() {
        let rendered = format!("{:?}", Error::internal("rocksdb path /secret").to_ruma().body);
        assert!(!rendered.contains("secret"), "{rendered}");
    }
}
