//! Reading registration files: the spec's YAML (id, url, as_token, hs_token,
//! sender_localpart, namespaces, rate_limited, protocols, receive_ephemeral), with errors
//! that name the file and the field, and a check of the whole set at start-up.

use std::path::{Path, PathBuf};

use ruma::api::appservice::Registration;

use crate::namespaces::{AppService, RegistrationError, validate};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read the registration file: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: not a valid registration: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: {field}: {detail}")]
    Field { path: PathBuf, field: &'static str, detail: String },
    #[error("{path}: {source}")]
    Namespaces { path: PathBuf, source: RegistrationError },
    #[error("{0}")]
    Set(RegistrationError),
}

/// Parses one registration (YAML; JSON is YAML too).
pub fn parse(path: &Path, text: &str) -> Result<Registration, LoadError> {
    let mut registration: Registration =
        serde_yaml_ng::from_str(text).map_err(|e| LoadError::Parse { path: path.to_owned(), detail: e.to_string() })?;
    // Bridges written before MSC2409 was merged ask for ephemeral events under its old name.
    if !registration.receive_ephemeral
        && let Ok(serde_yaml_ng::Value::Mapping(raw)) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
    {
        registration.receive_ephemeral =
            raw.get("de.sorunome.msc2409.push_ephemeral").and_then(serde_yaml_ng::Value::as_bool).unwrap_or(false);
    }
    let field = |field: &'static str, detail: &str| LoadError::Field {
        path: path.to_owned(),
        field,
        detail: detail.to_owned(),
    };
    if registration.id.is_empty() {
        return Err(field("id", "must not be empty"));
    }
    if registration.as_token.len() < 16 || registration.hs_token.len() < 16 {
        return Err(field("as_token/hs_token", "tokens must be at least 16 characters (use long random strings)"));
    }
    if registration.as_token == registration.hs_token {
        return Err(field("hs_token", "must differ from as_token"));
    }
    if registration.sender_localpart.is_empty()
        || !registration
            .sender_localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/'))
    {
        return Err(field("sender_localpart", "must be a valid user id localpart (a-z 0-9 . _ = - /)"));
    }
    if let Some(url) = &registration.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(field("url", "must be an http(s) URL or null"));
    }
    Ok(registration)
}

/// Loads every file, compiles the namespaces and checks the set against itself.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<AppService>, LoadError> {
    let mut services = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).map_err(|e| LoadError::Read { path: path.clone(), detail: e.to_string() })?;
        let registration = parse(path, &text)?;
        services.push(
            AppService::new(registration).map_err(|source| LoadError::Namespaces { path: path.clone(), source })?,
        );
    }
    validate(&services).map_err(LoadError::Set)?;
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id: kakao
url: "http://127.0.0.1:29318"
as_token: "as_token_0123456789abcdef"
hs_token: "hs_token_0123456789abcdef"
sender_localpart: kakaobot
rate_limited: false
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@kakao_.*:ieum.test"
  aliases: []
  rooms: []
"#;

    #[test]
    fn the_specs_yaml_parses_and_bad_fields_are_named() {
        let path = Path::new("kakao.yaml");
        let registration = parse(path, GOOD).unwrap();
        assert_eq!(registration.id, "kakao");
        assert_eq!(registration.rate_limited, Some(false));
        assert!(registration.receive_ephemeral);
        let error = parse(path, &GOOD.replace("kakaobot", "Kakao Bot")).unwrap_err().to_string();
        assert!(error.contains("kakao.yaml") && error.contains("sender_localpart"), "{error}");
        let error = parse(path, &GOOD.replace("hs_token_0123456789abcdef", "short")).unwrap_err().to_string();
        assert!(error.contains("hs_token"), "{error}");
        let error = parse(path, "id: [").unwrap_err().to_string();
        assert!(error.contains("kakao.yaml"), "{error}");
        // The pre-merge name of receive_ephemeral still asks for ephemeral events.
        let legacy = GOOD.replace("receive_ephemeral: true", "de.sorunome.msc2409.push_ephemeral: true");
        assert!(parse(path, &legacy).unwrap().receive_ephemeral);
        assert!(!parse(path, &GOOD.replace("receive_ephemeral: true", "")).unwrap().receive_ephemeral);
        // url may be null (an appservice that only acts, receives nothing).
        assert!(parse(path, &GOOD.replace("\"http://127.0.0.1:29318\"", "null")).unwrap().url.is_none());
    }
}
