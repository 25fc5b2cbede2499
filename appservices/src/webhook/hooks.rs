//! The hooks file (TOML): one `[[hook]]` per secret URL with its name, room (id or alias),
//! the SHA-256 of its secret (the secret itself is printed once by `add` and never stored),
//! and optional display name, avatar and msgtype. Written atomically (temporary file, fsync,
//! rename) with mode 0600; validated on every load.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

const HEADER: &str = "# ieum-bridge webhook hooks: managed by `ieum-bridge webhook add|list|remove`.\n\
# Only the SHA-256 of each secret is kept: a lost URL is replaced by removing and adding the hook.\n\
# Hand edits are read (the server reloads this file when it changes) but comments are not kept.\n\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Names the hook in logs and in `list`/`remove`: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// A room id (`!..`) or alias (`#..`); the bridge bot must be invited or the room public.
    pub room: String,
    /// Lowercase hex SHA-256 of the secret in the URL.
    pub secret_sha256: String,
    /// Who posts when the payload has no `username` (default: the bridge bot itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// An `mxc://` avatar for the ghosts this hook posts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Post `m.notice` (not notifying by default push rules) instead of `m.text`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksFile {
    #[serde(default, rename = "hook")]
    pub hooks: Vec<Hook>,
}

/// Lowercase hex SHA-256.
pub fn secret_sha256(secret: &str) -> String {
    digest(&SHA256, secret.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits, as 64 hex characters (URL-safe, unguessable).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).expect("the system random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl HooksFile {
    /// Reads and validates the file; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, String> {
        let hooks: HooksFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
            match line {
                Some(line) => format!("{file}:{line}: expected a hooks file ([[hook]] tables): {}", e.message()),
                None => format!("{file}: expected a hooks file ([[hook]] tables): {}", e.message()),
            }
        })?;
        let mut names = HashSet::new();
        let mut secrets = HashSet::new();
        for (i, hook) in hooks.hooks.iter().enumerate() {
            let at = format!("{file}: hook {} ({:?})", i + 1, hook.name);
            if !valid_name(&hook.name) {
                return Err(format!("{at}: name: expected 1-64 letters, digits, '-', '_' or '.'"));
            }
            if !names.insert(hook.name.as_str()) {
                return Err(format!("{at}: name: used by another hook"));
            }
            if ruma::RoomOrAliasId::parse(&hook.room).is_err() {
                return Err(format!(
                    "{at}: room: expected a room id (!id:server) or alias (#name:server), found {:?}",
                    hook.room
                ));
            }
            if hook.secret_sha256.len() != 64
                || !hook.secret_sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!("{at}: secret_sha256: expected 64 lowercase hex digits"));
            }
            if !secrets.insert(hook.secret_sha256.as_str()) {
                return Err(format!("{at}: secret_sha256: used by another hook"));
            }
            if let Some(avatar) = &hook.avatar_url
                && !avatar.starts_with("mxc://")
            {
                return Err(format!("{at}: avatar_url: expected an mxc:// URI, found {avatar:?}"));
            }
        }
        Ok(hooks)
    }

    /// Temporary file (mode 0600), fsync, rename: a crash leaves the old or the new file.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = format!("{HEADER}{}", toml::to_string(self).map_err(|e| format!("{}: {e}", path.display()))?);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("{}: cannot write the hooks file: {e}", path.display()))
    }

    /// Adds a hook and returns its new secret (shown once, never stored).
    pub fn add(
        &mut self,
        name: &str,
        room: &str,
        display_name: Option<String>,
        avatar_url: Option<String>,
        notice: bool,
    ) -> Result<String, String> {
        if self.hooks.iter().any(|h| h.name == name) {
            return Err(format!("a hook named {name:?} exists already (remove it first to replace its secret)"));
        }
        let secret = new_secret();
        let hook = Hook {
            name: name.to_owned(),
            room: room.to_owned(),
            secret_sha256: secret_sha256(&secret),
            display_name: display_name.filter(|d| !d.trim().is_empty()),
            avatar_url,
            notice,
        };
        let mut next = self.clone();
        next.hooks.push(hook);
        // The same checks as a load: a bad name, room or avatar never reaches the file.
        *self = Self::parse("the new hook", &toml::to_string(&next).map_err(|e| e.to_string())?)?;
        Ok(secret)
    }

    pub fn remove(&mut self, name: &str) -> Result<Hook, String> {
        let index = self.hooks.iter().position(|h| h.name == name).ok_or_else(|| format!("no hook named {name:?}"))?;
        Ok(self.hooks.remove(index))
    }

    /// The hook a secret opens. Digests are compared, not secrets: how long a comparison takes
    /// tells nothing about the secret.
    pub fn find(&self, secret: &str) -> Option<&Hook> {
        let hash = secret_sha256(secret);
        self.hooks.iter().find(|h| h.secret_sha256 == hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_remove_and_reload() {
        let mut hooks = HooksFile::default();
        let secret = hooks.add("grafana", "#alerts:ieum.test", Some("Grafana".into()), None, false).unwrap();
        assert_eq!(secret.len(), 64);
        let other = hooks.add("ci", "!room:ieum.test", None, Some("mxc://ieum.test/abc".into()), true).unwrap();
        assert_ne!(secret, other);
        assert_eq!(hooks.find(&secret).unwrap().name, "grafana");
        assert_eq!(hooks.find(&other).unwrap().name, "ci");
        assert!(hooks.find("wrong").is_none());
        assert!(hooks.add("grafana", "#x:hs", None, None, false).unwrap_err().contains("exists already"));
        assert!(hooks.add("bad name", "#x:hs", None, None, false).unwrap_err().contains("name"));
        assert!(hooks.add("x", "general", None, None, false).unwrap_err().contains("room"));
        assert!(
            hooks.add("x", "#x:hs", None, Some("https://x/a.png".into()), false).unwrap_err().contains("avatar_url")
        );
        assert_eq!(hooks.hooks.len(), 2);

        let dir = std::env::temp_dir().join(format!("ieum-hooks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hooks.toml");
        hooks.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret) && !text.contains(&other), "{text}");
        assert!(text.contains(&secret_sha256(&secret)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let mut loaded = HooksFile::load(&path).unwrap();
        assert_eq!(loaded, hooks);
        assert_eq!(loaded.remove("grafana").unwrap().name, "grafana");
        assert!(loaded.find(&secret).is_none());
        assert!(loaded.remove("grafana").is_err());
        assert_eq!(HooksFile::load(&dir.join("missing.toml")).unwrap(), HooksFile::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let err = HooksFile::parse("hooks.toml", "[[hook]]\nname = \"a\"\n").unwrap_err();
        assert!(err.starts_with("hooks.toml:"), "{err}");
        let hash = secret_sha256("s");
        let two = format!(
            "[[hook]]\nname = \"a\"\nroom = \"#a:hs\"\nsecret_sha256 = \"{hash}\"\n\n[[hook]]\nname = \"b\"\nroom = \"#b:hs\"\nsecret_sha256 = \"{hash}\"\n"
        );
        assert!(
            HooksFile::parse("hooks.toml", &two)
                .unwrap_err()
                .contains("hook 2 (\"b\"): secret_sha256: used by another hook")
        );
        let short = "[[hook]]\nname = \"a\"\nroom = \"#a:hs\"\nsecret_sha256 = \"abc\"\n";
        assert!(HooksFile::parse("hooks.toml", short).unwrap_err().contains("64 lowercase hex"));
        let typo =
            format!("[[hook]]\nname = \"a\"\nroom = \"#a:hs\"\nsecret_sha256 = \"{hash}\"\ndisplayname = \"x\"\n");
        let err = HooksFile::parse("hooks.toml", &typo).unwrap_err();
        assert!(err.contains("hooks.toml:5") && err.contains("displayname"), "{err}");
    }
}
