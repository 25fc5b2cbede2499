//! Application-service registrations as the homeserver uses them: namespace regexes
//! compiled once (anchored, as the spec's examples and Synapse treat them), who an
//! appservice may act as, who is closed to everyone else (exclusive), and validation of a
//! set of registrations (bad regexes, duplicate ids and tokens, clashing exclusive
//! namespaces) with errors naming the registration and field.

use regex::Regex;
use ruma::api::appservice::{Namespace, Registration};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("registration {id}: {field}: invalid regex {regex:?}: {detail}")]
    BadRegex { id: String, field: &'static str, regex: String, detail: String },
    #[error("registration {id}: {field} is the same as in registration {other}")]
    Duplicate { id: String, other: String, field: &'static str },
    #[error("registrations {id} and {other} both claim {value:?} exclusively")]
    ExclusiveClash { id: String, other: String, value: String },
}

struct Compiled {
    regex: Regex,
    exclusive: bool,
    source: String,
}

/// One registration with its namespaces compiled.
pub struct AppService {
    pub registration: Registration,
    users: Vec<Compiled>,
    aliases: Vec<Compiled>,
    rooms: Vec<Compiled>,
}

fn compile(id: &str, field: &'static str, namespaces: &[Namespace]) -> Result<Vec<Compiled>, RegistrationError> {
    namespaces
        .iter()
        .map(|namespace| {
            Regex::new(&format!("^(?:{})$", namespace.regex))
                .map(|regex| Compiled { regex, exclusive: namespace.exclusive, source: namespace.regex.clone() })
                .map_err(|e| RegistrationError::BadRegex {
                    id: id.to_owned(),
                    field,
                    regex: namespace.regex.clone(),
                    detail: e.to_string(),
                })
        })
        .collect()
}

impl AppService {
    pub fn new(registration: Registration) -> Result<Self, RegistrationError> {
        let id = registration.id.clone();
        Ok(Self {
            users: compile(&id, "namespaces.users", &registration.namespaces.users)?,
            aliases: compile(&id, "namespaces.aliases", &registration.namespaces.aliases)?,
            rooms: compile(&id, "namespaces.rooms", &registration.namespaces.rooms)?,
            registration,
        })
    }

    /// Whether the appservice may act as (masquerade as) this user id.
    pub fn is_user_in_namespace(&self, user_id: &str, sender_user_id: &str) -> bool {
        user_id == sender_user_id || self.users.iter().any(|n| n.regex.is_match(user_id))
    }

    pub fn is_exclusive_user(&self, user_id: &str) -> bool {
        self.users.iter().any(|n| n.exclusive && n.regex.is_match(user_id))
    }

    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.exclusive && n.regex.is_match(alias))
    }

    /// Whether a user is in the appservice's user namespace (exclusive or not).
    pub fn is_interested_in_user(&self, user_id: &str) -> bool {
        self.users.iter().any(|n| n.regex.is_match(user_id))
    }

    /// Whether an alias is in the appservice's alias namespace (exclusive or not).
    pub fn is_interested_in_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.regex.is_match(alias))
    }

    pub fn is_interested_in_room(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|n| n.regex.is_match(room_id))
    }
}

/// Checks a set of registrations against each other.
pub fn validate(services: &[AppService]) -> Result<(), RegistrationError> {
    for (i, a) in services.iter().enumerate() {
        for b in &services[i + 1..] {
            let (ra, rb) = (&a.registration, &b.registration);
            for (field, same) in [
                ("id", ra.id == rb.id),
                ("as_token", ra.as_token == rb.as_token),
                ("hs_token", ra.hs_token == rb.hs_token),
                ("sender_localpart", ra.sender_localpart == rb.sender_localpart),
            ] {
                if same {
                    return Err(RegistrationError::Duplicate { id: rb.id.clone(), other: ra.id.clone(), field });
                }
            }
            // Two exclusive namespaces with the same pattern cannot both own it.
            for (mine, theirs) in [(&a.users, &b.users), (&a.aliases, &b.aliases)] {
                for x in mine.iter().filter(|n| n.exclusive) {
                    if theirs.iter().any(|y| y.exclusive && y.source == x.source) {
                        return Err(RegistrationError::ExclusiveClash {
                            id: rb.id.clone(),
                            other: ra.id.clone(),
                            value: x.source.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::api::appservice::{Namespaces, RegistrationInit};

    fn registration(id: &str, user_regex: &str, exclusive: bool) -> Registration {
        let mut namespaces = Namespaces::new();
        namespaces.users = vec![Namespace::new(exclusive, user_regex.to_owned())];
        namespaces.aliases = vec![Namespace::new(true, format!("#{id}_.*:ieum.test"))];
        RegistrationInit {
            id: id.to_owned(),
            url: Some("http://127.0.0.1:9000".into()),
            as_token: format!("as-{id}"),
            hs_token: format!("hs-{id}"),
            sender_localpart: format!("{id}bot"),
            namespaces,
            rate_limited: Some(false),
            protocols: None,
        }
        .into()
    }

    #[test]
    fn namespaces_are_anchored_and_exclusive_where_said() {
        let service = AppService::new(registration("kakao", "@kakao_.*:ieum.test", true)).unwrap();
        assert!(service.is_user_in_namespace("@kakao_kim:ieum.test", "@kakaobot:ieum.test"));
        assert!(service.is_user_in_namespace("@kakaobot:ieum.test", "@kakaobot:ieum.test"));
        assert!(!service.is_user_in_namespace("@alice:ieum.test", "@kakaobot:ieum.test"));
        assert!(!service.is_user_in_namespace("@x@kakao_kim:ieum.test.evil", "@kakaobot:ieum.test"), "anchored");
        assert!(service.is_exclusive_user("@kakao_lee:ieum.test"));
        assert!(service.is_exclusive_alias("#kakao_room:ieum.test"));
        assert!(!service.is_exclusive_alias("#other:ieum.test"));
    }

    #[test]
    fn invalid_sets_are_refused_with_the_field_named() {
        let bad = AppService::new(registration("broken", "@(unclosed:ieum.test", false)).err().unwrap();
        assert!(bad.to_string().contains("broken") && bad.to_string().contains("namespaces.users"), "{bad}");
        let a = AppService::new(registration("a", "@a_.*:ieum.test", true)).unwrap();
        let a_again = AppService::new(registration("a", "@other_.*:ieum.test", true)).unwrap();
        assert!(matches!(validate(&[a, a_again]), Err(RegistrationError::Duplicate { field: "id", .. })));
        let a = AppService::new(registration("a", "@shared_.*:ieum.test", true)).unwrap();
        let b = AppService::new(registration("b", "@shared_.*:ieum.test", true)).unwrap();
        assert!(matches!(validate(&[a, b]), Err(RegistrationError::ExclusiveClash { .. })));
        let a = AppService::new(registration("a", "@a_.*:ieum.test", true)).unwrap();
        let b = AppService::new(registration("b", "@b_.*:ieum.test", true)).unwrap();
        assert_eq!(validate(&[a, b]), Ok(()));
    }
}
