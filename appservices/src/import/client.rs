//! Replaying a normalised history into a homeserver through the application-service API:
//! the registration file, the name mapping, ghost users (registration, display names), the
//! room (created or appended to), joins, messages sent as their ghosts with `?user_id=` and
//! `?ts=`, deterministic transaction ids, a resumable progress file, retries with back-off,
//! and the stderr progress bar.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::model::{Conversation, Message, MessageKind, Sender, short_hash};

// ---------------------------------------------------------------------------------------------
// Registration and mapping

/// What the importer needs from the spec's appservice registration YAML.
#[derive(Debug)]
pub struct Registration {
    pub as_token: String,
    pub sender_localpart: String,
    pub user_regexes: Vec<Regex>,
    user_sources: Vec<String>,
}

impl Registration {
    /// Reads the registration with the homeserver's own rules (`crate::registration::parse`),
    /// so the bridge accepts and refuses exactly the files ieum does.
    pub fn parse(file: &str, yaml: &str) -> Result<Self, String> {
        let raw = crate::registration::parse(Path::new(file), yaml).map_err(|e| e.to_string())?;
        let mut user_regexes = Vec::new();
        for ns in &raw.namespaces.users {
            user_regexes.push(
                Regex::new(&format!("^(?:{})$", ns.regex))
                    .map_err(|e| format!("{file}: namespaces.users: invalid regex {:?}: {e}", ns.regex))?,
            );
        }
        if user_regexes.is_empty() {
            return Err(format!(
                "{file}: namespaces.users: expected at least one user namespace for the ghosts, found none"
            ));
        }
        Ok(Self {
            as_token: raw.as_token,
            sender_localpart: raw.sender_localpart,
            user_sources: raw.namespaces.users.into_iter().map(|n| n.regex).collect(),
            user_regexes,
        })
    }

    pub fn is_ours(&self, user_id: &str) -> bool {
        self.user_regexes.iter().any(|r| r.is_match(user_id))
    }

    /// The literal localpart prefix of the first user namespace (`@bridge_.*:hs` -> `bridge_`).
    fn ghost_prefix(&self) -> String {
        let src = self.user_sources.first().map(String::as_str).unwrap_or("");
        let src = src.strip_prefix('^').unwrap_or(src);
        let src = src.strip_prefix('@').or_else(|| src.strip_prefix("\\@")).unwrap_or(src);
        let mut out = String::new();
        let mut chars = src.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if !n.is_ascii_alphanumeric() => out.push(n),
                    _ => break,
                },
                c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '=' || c == '/' => out.push(c),
                _ => break,
            }
        }
        out.to_ascii_lowercase()
    }

    /// The ghost of a source sender: deterministic, inside the namespace.
    pub fn ghost(&self, tag: &str, key: &str, server_name: &str) -> Result<String, String> {
        let user_id = format!(
            "@{}{tag}_{}:{server_name}",
            self.ghost_prefix(),
            short_hash(format!("{tag}\0{key}").as_bytes(), 12)
        );
        if self.is_ours(&user_id) {
            Ok(user_id)
        } else {
            Err(format!(
                "the ghost {user_id} is outside the registration's user namespaces ({}): use a namespace starting with a literal prefix, e.g. `@bridge_.*:{server_name}`",
                self.user_sources.join(", ")
            ))
        }
    }
}

/// Source names (or source ids) -> Matrix user ids: JSON object or simple TOML `"name" = "@u:hs"`.
pub fn parse_mapping(file: &str, text: &str) -> Result<HashMap<String, String>, String> {
    let trimmed = text.trim_start();
    let map: HashMap<String, String> = if trimmed.starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| format!("{file}:{}: expected a JSON object of name -> user id, found: {e}", e.line()))?
    } else {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("{file}:{}: expected `\"name\" = \"@user:server\"`, found {line:?}", i + 1));
            };
            let unq = |s: &str| s.trim().trim_matches('"').to_owned();
            map.insert(unq(k), unq(v));
        }
        map
    };
    for (k, v) in &map {
        if ruma::UserId::parse(v.as_str()).is_err() {
            return Err(format!("{file}: {k:?}: expected a Matrix user id like @name:server, found {v:?}"));
        }
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {path}: the homeserver answered {status} {errcode}: {error}")]
    Http { method: String, path: String, status: u16, errcode: String, error: String },
    #[error(
        "the homeserver at {base} did not answer for {secs}s (last error: {last}); progress is saved, re-run the same command to resume"
    )]
    Unreachable { base: String, secs: u64, last: String },
}

impl ClientError {
    pub fn errcode(&self) -> Option<&str> {
        match self {
            ClientError::Http { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    as_token: String,
    /// How long to keep retrying a homeserver that is down before giving up.
    pub retry_for: Duration,
    pub requests: u64,
}

impl Client {
    pub fn new(base: &str, as_token: &str) -> Self {
        Self::with_http(
            reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("reqwest client"),
            base,
            as_token,
        )
    }

    /// A client sharing `http`'s connection pool (the webhook server makes one per request).
    pub fn with_http(http: reqwest::Client, base: &str, as_token: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            retry_for: Duration::from_secs(120),
            requests: 0,
        }
    }

    /// One request with retries (connection errors, 5xx, 429) and exponential back-off.
    pub async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, ClientError> {
        let mut url = format!("{}{}", self.base, path);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&enc(v));
        }
        let started = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            self.requests += 1;
            let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.as_token);
            if let Some((ctype, bytes)) = &body {
                req = req.header("content-type", *ctype).body(bytes.clone());
            }
            let last = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status.is_success() {
                        return Ok(value);
                    }
                    let errcode = value.get("errcode").and_then(Value::as_str).unwrap_or("").to_owned();
                    if status.as_u16() == 429 || status.is_server_error() {
                        if let Some(ms) = value.get("retry_after_ms").and_then(Value::as_u64) {
                            delay = delay.max(Duration::from_millis(ms));
                        }
                        format!("{status} {errcode}")
                    } else {
                        return Err(ClientError::Http {
                            method: method.to_string(),
                            path: path.to_owned(),
                            status: status.as_u16(),
                            errcode,
                            error: value.get("error").and_then(Value::as_str).unwrap_or("").to_owned(),
                        });
                    }
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= self.retry_for {
                return Err(ClientError::Unreachable {
                    base: self.base.clone(),
                    secs: started.elapsed().as_secs(),
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub async fn json(
        &mut self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.call(method, path, query, Some(("application/json", serde_json::to_vec(body).expect("json")))).await
    }
}

// ---------------------------------------------------------------------------------------------
// Progress file

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConversationProgress {
    pub room_id: Option<String>,
    /// Index of the next message to send.
    pub next_index: usize,
    /// Ghosts registered with their display name set.
    #[serde(default)]
    pub ghosts: Vec<String>,
    /// Users known to be joined to the room.
    #[serde(default)]
    pub joined: Vec<String>,
    /// Event ids of sent messages that other messages relate to (thread roots, replies).
    #[serde(default)]
    pub events: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProgressFile {
    #[serde(default)]
    pub conversations: BTreeMap<String, ConversationProgress>,
}

impl ProgressFile {
    pub fn path_for(export: &Path) -> PathBuf {
        let mut s = export.as_os_str().to_owned();
        s.push(".ieum-import.json");
        PathBuf::from(s)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}:{}: expected an ieum-bridge progress file, found: {e} (delete it to start over)",
                    path.display(),
                    e.line()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Written to a temporary file, synced and renamed: a crash leaves the old or the new one.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).expect("json"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("{}: cannot save progress: {e}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// Import

pub struct ImportOptions {
    pub server_name: String,
    pub room: Option<String>,
    pub mapping: HashMap<String, String>,
    pub invite: Vec<String>,
    pub progress_bar: bool,
    /// Stop after sending this many messages (tests of resumption).
    pub limit: Option<usize>,
}

#[derive(Debug, Default)]
pub struct ImportStats {
    pub sent: usize,
    pub skipped: usize,
    pub room_id: String,
    pub elapsed: Duration,
}

/// The bar: `\r[#####.....] 1234/5000 messages, 850/s`.
struct Bar {
    enabled: bool,
    total: usize,
    started: Instant,
    last: Instant,
}

impl Bar {
    fn draw(&mut self, done: usize, sent: usize, force: bool) {
        if !self.enabled || (!force && self.last.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last = Instant::now();
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width).min(width);
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r[{}{}] {done}/{} messages, {rate:.0}/s ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn txn_id(source_id: &str, suffix: &str) -> String {
    format!("ieumimp.{}{suffix}", short_hash(source_id.as_bytes(), 32))
}

struct Senders<'a> {
    reg: &'a Registration,
    opts: &'a ImportOptions,
    tag: &'static str,
    bot: String,
}

impl Senders<'_> {
    /// The Matrix user a source sender is sent as.
    fn user_for(&self, s: &Sender) -> Result<String, String> {
        if s.name.is_empty() && s.source_id.is_none() {
            return Ok(self.bot.clone());
        }
        let mapped =
            self.opts.mapping.get(&s.name).or_else(|| s.source_id.as_ref().and_then(|id| self.opts.mapping.get(id)));
        if let Some(m) = mapped
            && self.reg.is_ours(m)
        {
            return Ok(m.clone());
        }
        self.reg.ghost(self.tag, s.key(), &self.opts.server_name)
    }

    /// Mapped real users outside the namespace: invited, their messages go through a ghost.
    fn real_users(&self) -> Vec<String> {
        let mut v: Vec<String> = self.opts.mapping.values().filter(|u| !self.reg.is_ours(u)).cloned().collect();
        v.extend(self.opts.invite.iter().cloned());
        v.sort();
        v.dedup();
        v
    }
}

/// Imports one conversation; `progress` is saved to `progress_path` as it goes.
pub async fn import_conversation(
    client: &mut Client,
    reg: &Registration,
    conv: &Conversation,
    opts: &ImportOptions,
    progress: &mut ProgressFile,
    progress_path: &Path,
) -> Result<ImportStats, String> {
    let started = Instant::now();
    let senders =
        Senders { reg, opts, tag: conv.kind.tag(), bot: format!("@{}:{}", reg.sender_localpart, opts.server_name) };
    let key = conv.key.clone();
    progress.conversations.entry(key.clone()).or_default();
    let err = |e: ClientError| e.to_string();

    // Ghosts: register (M_USER_IN_USE is fine) and set the display name, once.
    let mut ghost_names: BTreeMap<String, String> = BTreeMap::new();
    for s in conv.senders() {
        let uid = senders.user_for(s)?;
        if uid != senders.bot {
            ghost_names.entry(uid).or_insert_with(|| s.name.clone());
        }
    }
    for (uid, name) in &ghost_names {
        if progress.conversations[&key].ghosts.contains(uid) {
            continue;
        }
        let localpart = uid[1..].split(':').next().unwrap_or("");
        let body = json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true});
        match client.json(reqwest::Method::POST, "/_matrix/client/v3/register", &[], &body).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => {}
            Err(e) => return Err(format!("registering the ghost {uid}: {e}")),
        }
        if !name.is_empty() {
            client
                .json(
                    reqwest::Method::PUT,
                    &format!("/_matrix/client/v3/profile/{}/displayname", enc(uid)),
                    &[("user_id", uid.clone())],
                    &json!({"displayname": name}),
                )
                .await
                .map_err(|e| format!("setting the display name of {uid}: {e}"))?;
        }
        progress.conversations.get_mut(&key).unwrap().ghosts.push(uid.clone());
    }
    progress.save(progress_path)?;

    // The room.
    let room_id = match (progress.conversations[&key].room_id.clone(), &opts.room) {
        (Some(r), _) => r,
        (None, Some(r)) => r.clone(),
        (None, None) => {
            let body = json!({
                "name": conv.title,
                "topic": format!("Imported by ieum-bridge from a {} export ({} messages)", conv.kind.tag(), conv.messages.len()),
                "preset": "private_chat",
                "invite": senders.real_users(),
            });
            let resp = client
                .json(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/createRoom",
                    &[("user_id", senders.bot.clone())],
                    &body,
                )
                .await
                .map_err(|e| format!("creating the room: {e}"))?;
            resp.get("room_id").and_then(Value::as_str).ok_or("createRoom answered without a room_id")?.to_owned()
        }
    };
    progress.conversations.get_mut(&key).unwrap().room_id = Some(room_id.clone());
    progress.save(progress_path)?;

    // Joins: the bot invites each ghost, the ghost joins.
    for uid in ghost_names.keys() {
        if progress.conversations[&key].joined.contains(uid) {
            continue;
        }
        let invite = client
            .json(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
                &[("user_id", senders.bot.clone())],
                &json!({"user_id": uid}),
            )
            .await;
        match invite {
            Ok(_) => {}
            // Already joined (a re-run without progress): the join below settles it.
            Err(ClientError::Http { status: 403, .. }) => {}
            Err(e) => return Err(format!("inviting {uid}: {e}")),
        }
        client
            .json(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/join/{}", enc(&room_id)),
                &[("user_id", uid.clone())],
                &json!({}),
            )
            .await
            .map_err(|e| format!("joining {uid} to {room_id}: {e}"))?;
        progress.conversations.get_mut(&key).unwrap().joined.push(uid.clone());
    }
    progress.save(progress_path)?;

    // Which source ids other messages point at (their event ids must be remembered).
    let needed: HashSet<&str> =
        conv.messages.iter().flat_map(|m| m.thread_root.iter().chain(m.reply_to.iter())).map(String::as_str).collect();
    let mut names_to_users: HashMap<String, String> = HashMap::new();
    for s in conv.senders() {
        names_to_users.insert(s.name.clone(), senders.user_for(s)?);
    }
    let mut thread_last: HashMap<String, String> = HashMap::new();
    let start = progress.conversations[&key].next_index;
    let mut bar =
        Bar { enabled: opts.progress_bar, total: conv.messages.len(), started: Instant::now(), last: Instant::now() };
    let mut sent = 0;
    for (index, m) in conv.messages.iter().enumerate().skip(start) {
        if opts.limit.is_some_and(|l| sent >= l) {
            break;
        }
        let user = senders.user_for(&m.sender)?;
        let content = content_for(m, &progress.conversations[&key].events, &mut thread_last, &names_to_users, conv);
        let event_id = send(client, &room_id, &user, "m.room.message", &txn_id(&m.source_id, ""), m.ts, &content)
            .await
            .map_err(err)?;
        if let Some(root) = &m.thread_root {
            thread_last.insert(root.clone(), event_id.clone());
        }
        for (ai, a) in m.attachments.iter().enumerate() {
            let Some(data) = &a.data else { continue };
            let mime = a.mime.clone().unwrap_or_else(|| "application/octet-stream".into());
            let uri = client
                .call(
                    reqwest::Method::POST,
                    "/_matrix/media/v3/upload",
                    &[("filename", a.name.clone()), ("user_id", user.clone())],
                    Some((&mime, data.clone())),
                )
                .await
                .map_err(|e| format!("uploading {}: {e}", a.name))?;
            let uri = uri.get("content_uri").and_then(Value::as_str).unwrap_or("").to_owned();
            let msgtype = if mime.starts_with("image/") { "m.image" } else { "m.file" };
            let mut c =
                json!({"msgtype": msgtype, "body": a.name, "url": uri, "info": {"mimetype": mime, "size": data.len()}});
            if let Some(root) = &m.thread_root
                && let Some(root_ev) = progress.conversations[&key].events.get(root)
            {
                c["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root_ev, "is_falling_back": true, "m.in_reply_to": {"event_id": event_id}});
            }
            send(client, &room_id, &user, "m.room.message", &txn_id(&m.source_id, &format!(".a{ai}")), m.ts, &c)
                .await
                .map_err(err)?;
        }
        for r in &m.reactions {
            for s in &r.senders {
                let reactor = senders.user_for(s)?;
                let c = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": r.key}});
                let txn = txn_id(
                    &m.source_id,
                    &format!(".r.{}.{}", short_hash(r.key.as_bytes(), 8), short_hash(reactor.as_bytes(), 8)),
                );
                send(client, &room_id, &reactor, "m.reaction", &txn, m.ts, &c).await.map_err(err)?;
            }
        }
        let p = progress.conversations.get_mut(&key).unwrap();
        if needed.contains(m.source_id.as_str()) {
            p.events.insert(m.source_id.clone(), event_id);
        }
        p.next_index = index + 1;
        sent += 1;
        if sent % 100 == 0 {
            progress.save(progress_path)?;
        }
        bar.draw(index + 1, sent, false);
    }
    progress.save(progress_path)?;
    bar.draw(progress.conversations[&key].next_index, sent, true);
    if opts.progress_bar {
        eprintln!();
    }
    Ok(ImportStats { sent, skipped: start, room_id, elapsed: started.elapsed() })
}

async fn send(
    client: &mut Client,
    room: &str,
    user: &str,
    ty: &str,
    txn: &str,
    ts: i64,
    content: &Value,
) -> Result<String, ClientError> {
    let path = format!("/_matrix/client/v3/rooms/{}/send/{}/{}", enc(room), enc(ty), enc(txn));
    let resp = client
        .json(reqwest::Method::PUT, &path, &[("user_id", user.to_owned()), ("ts", ts.to_string())], content)
        .await?;
    Ok(resp.get("event_id").and_then(Value::as_str).unwrap_or("").to_owned())
}

/// The event content of one message.
pub fn content_for(
    m: &Message,
    events: &BTreeMap<String, String>,
    thread_last: &mut HashMap<String, String>,
    users: &HashMap<String, String>,
    conv: &Conversation,
) -> Value {
    let msgtype = match m.kind {
        MessageKind::Text => "m.text",
        MessageKind::Notice | MessageKind::Media => "m.notice",
    };
    let mut c = json!({"msgtype": msgtype, "body": m.body});
    let mut import = json!({"source": conv.kind.tag(), "source_id": m.source_id});
    if let Some(e) = m.edited_ts {
        import["edited_ts"] = json!(e);
    }
    c["ieum.import"] = import;
    let mentioned: Vec<(&String, &String)> = m.mentions.iter().filter_map(|n| users.get(n).map(|u| (n, u))).collect();
    if !mentioned.is_empty() || m.formatted_body.is_some() {
        let html = match &m.formatted_body {
            Some(f) => f.clone(),
            None => {
                let mut html = html_escape(&m.body);
                for (name, uid) in &mentioned {
                    let at = format!("@{}", html_escape(name));
                    html = html.replace(
                        &at,
                        &format!("<a href=\"https://matrix.to/#/{}\">{}</a>", html_escape(uid), html_escape(name)),
                    );
                }
                html.replace('\n', "<br>")
            }
        };
        c["format"] = json!("org.matrix.custom.html");
        c["formatted_body"] = json!(html);
        if !mentioned.is_empty() {
            c["m.mentions"] = json!({"user_ids": mentioned.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>()});
        }
    }
    if let Some(root) = &m.thread_root {
        if let Some(root_ev) = events.get(root) {
            let last = thread_last.get(root).cloned().unwrap_or_else(|| root_ev.clone());
            c["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root_ev, "is_falling_back": true, "m.in_reply_to": {"event_id": last}});
        }
    } else if let Some(reply) = m.reply_to.as_ref().and_then(|r| events.get(r)) {
        c["m.relates_to"] = json!({"m.in_reply_to": {"event_id": reply}});
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "id: b\nurl: null\nas_token: as_token_0123456789\nhs_token: hs_token_0123456789\n\
        sender_localpart: bot\nnamespaces:\n  users:\n    - regex: '@bridge_.*:hs'\n      exclusive: true\n";

    #[test]
    fn mapped_users_inside_the_namespace_are_used_outside_invited() {
        let reg = Registration::parse("r", REG).unwrap();
        let mut mapping = HashMap::new();
        mapping.insert("회원님".to_owned(), "@bridge_me:hs".to_owned());
        mapping.insert("U02".to_owned(), "@suji:hs".to_owned());
        let opts = ImportOptions {
            server_name: "hs".into(),
            room: None,
            mapping,
            invite: vec!["@reader:hs".into()],
            progress_bar: false,
            limit: None,
        };
        let s = Senders { reg: &reg, opts: &opts, tag: "kakao", bot: "@bot:hs".into() };
        assert_eq!(s.user_for(&Sender::named("회원님")).unwrap(), "@bridge_me:hs");
        assert_eq!(s.user_for(&Sender::named("")).unwrap(), "@bot:hs");
        let suji = Sender { name: "Kang Suji".into(), source_id: Some("U02".into()) };
        let ghost = s.user_for(&suji).unwrap();
        assert!(ghost.starts_with("@bridge_kakao_"), "{ghost}");
        assert_eq!(s.real_users(), vec!["@reader:hs".to_owned(), "@suji:hs".to_owned()]);
    }
}
