//! Slack workspace exports (zip): users, public channels, private groups, DMs and group DMs,
//! day files read in order, threads (`thread_ts`), reactions, edits, file shares, mrkdwn
//! mentions/links unescaped, `ts` to milliseconds. Errors name the zip member and line:column.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::model::{
    Attachment, Conversation, Export, Message, MessageKind, Problem, Reaction, ReadError, Sender, SourceKind,
};

#[derive(Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    real_name: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    real_name: Option<String>,
}

#[derive(Deserialize)]
struct Channel {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

/// Slack `ts` ("1355517523.000005") to milliseconds.
pub fn ts_to_ms(ts: &str) -> Option<i64> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
    let secs: i64 = secs.parse().ok()?;
    let mut micros = frac.to_owned();
    micros.truncate(6);
    while micros.len() < 6 {
        micros.push('0');
    }
    let micros: i64 = micros.parse().ok()?;
    Some(secs * 1000 + micros / 1000)
}

fn emoji(name: &str) -> String {
    let known = [
        ("+1", "👍"),
        ("thumbsup", "👍"),
        ("-1", "👎"),
        ("thumbsdown", "👎"),
        ("heart", "❤️"),
        ("smile", "😄"),
        ("joy", "😂"),
        ("tada", "🎉"),
        ("eyes", "👀"),
        ("white_check_mark", "✅"),
        ("pray", "🙏"),
        ("clap", "👏"),
        ("fire", "🔥"),
        ("ok_hand", "👌"),
        ("100", "💯"),
    ];
    let base = name.split("::").next().unwrap_or(name);
    known.iter().find(|(k, _)| *k == base).map(|(_, e)| (*e).to_owned()).unwrap_or_else(|| format!(":{name}:"))
}

static MARKUP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"<([^<>|]*)(?:\|([^<>]*))?>").unwrap());

/// Converts Slack mrkdwn escapes and `<…>` markup to plain text; returns mentioned names.
fn render(text: &str, users: &HashMap<String, String>) -> (String, Vec<String>) {
    let mut mentions = Vec::new();
    let out = MARKUP.replace_all(text, |c: &regex::Captures<'_>| {
        let target = &c[1];
        let label = c.get(2).map(|m| m.as_str());
        if let Some(id) = target.strip_prefix('@') {
            let name = users.get(id).cloned().or(label.map(str::to_owned)).unwrap_or_else(|| id.to_owned());
            mentions.push(name.clone());
            format!("@{name}")
        } else if let Some(ch) = target.strip_prefix('#') {
            format!("#{}", label.unwrap_or(ch))
        } else if let Some(special) = target.strip_prefix('!') {
            format!("@{}", label.unwrap_or(special.split('^').next().unwrap_or(special)))
        } else {
            match label {
                Some(l) if l != target => format!("{l} ({target})"),
                _ => target.to_owned(),
            }
        }
    });
    let out = out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    mentions.dedup();
    (out, mentions)
}

fn json_error(file: &str, member: &str, e: &serde_json::Error) -> ReadError {
    ReadError::new(
        format!("{file}:{member}"),
        e.line(),
        format!(
            "column {}: expected {} JSON, found: {e}",
            e.column(),
            if member.ends_with(".json") { "valid" } else { "" }
        ),
    )
}

fn read_member<R: Read + Seek>(
    file: &str,
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => {
            return Err(ReadError::new(
                format!("{file}:{name}"),
                0,
                format!("expected a readable zip member, found: {e}"),
            ));
        }
    };
    let mut buf = Vec::new();
    entry.read_to_end(&mut buf).map_err(|e| {
        ReadError::new(format!("{file}:{name}"), 0, format!("expected a readable zip member, found: {e}"))
    })?;
    Ok(Some(buf))
}

fn parse_list<T: for<'de> Deserialize<'de>>(
    file: &str,
    name: &str,
    bytes: Option<Vec<u8>>,
) -> Result<Vec<T>, ReadError> {
    match bytes {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| json_error(file, name, &e)),
    }
}

/// Reads a Slack export zip.
pub fn read<R: Read + Seek>(file: &str, reader: R) -> Result<Export, ReadError> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
        ReadError::new(file, 0, format!("expected a Slack export zip archive, found an unreadable one: {e}"))
    })?;
    let users_raw = read_member(file, &mut zip, "users.json")?
        .ok_or_else(|| ReadError::new(file, 0, "expected users.json in the Slack export, found none"))?;
    let users: Vec<User> = parse_list(file, "users.json", Some(users_raw))?;
    let names: HashMap<String, String> = users
        .iter()
        .map(|u| {
            let p = u.profile.as_ref();
            let name = p
                .and_then(|p| p.display_name.clone().filter(|s| !s.is_empty()))
                .or_else(|| u.real_name.clone().filter(|s| !s.is_empty()))
                .or_else(|| p.and_then(|p| p.real_name.clone().filter(|s| !s.is_empty())))
                .unwrap_or_else(|| u.name.clone());
            (u.id.clone(), name)
        })
        .collect();
    let mut groups: Vec<(&str, Vec<Channel>)> = Vec::new();
    for (kind, member) in
        [("channel", "channels.json"), ("group", "groups.json"), ("mpim", "mpims.json"), ("dm", "dms.json")]
    {
        let raw = read_member(file, &mut zip, member)?;
        groups.push((kind, parse_list(file, member, raw)?));
    }
    if groups.iter().all(|(_, c)| c.is_empty()) {
        return Err(ReadError::new(
            file,
            0,
            "expected channels.json, groups.json, mpims.json or dms.json listing conversations, found none",
        ));
    }
    let member_names: Vec<String> = zip
        .file_names()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReadError::new(file, 0, format!("expected readable zip member names, found: {e}")))?
        .into_iter()
        .map(|n| n.into_owned())
        .collect();
    let mut export = Export::default();
    for (kind, channels) in groups {
        for ch in channels {
            let dir = if kind == "dm" { ch.id.clone() } else { ch.name.clone().unwrap_or_else(|| ch.id.clone()) };
            let participants: Vec<String> =
                ch.members.iter().map(|m| names.get(m).cloned().unwrap_or_else(|| m.clone())).collect();
            let title = match kind {
                "channel" => format!("#{dir}"),
                "group" => format!("🔒{dir}"),
                _ => participants.join(", "),
            };
            let mut days: Vec<&String> =
                member_names.iter().filter(|n| n.starts_with(&format!("{dir}/")) && n.ends_with(".json")).collect();
            days.sort();
            let mut raw_messages: Vec<(String, usize, Value)> = Vec::new();
            for day in days {
                let bytes = read_member(file, &mut zip, day)?.unwrap_or_default();
                let list: Vec<Value> = serde_json::from_slice(&bytes).map_err(|e| json_error(file, day, &e))?;
                for (i, v) in list.into_iter().enumerate() {
                    raw_messages.push((day.to_string(), i, v));
                }
            }
            let mut messages = Vec::new();
            for (day, i, v) in raw_messages {
                match message(&ch.id, &v, &names) {
                    Ok(Some(mut m)) => {
                        m.origin = format!("{file}:{day}#{i}");
                        messages.push(m);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        export.problems.push(Problem { file: format!("{file}:{day}"), line: i + 1, message: why })
                    }
                }
            }
            // Day files are in order; within them Slack sorts by ts, but make sure.
            messages.sort_by_key(|m: &Message| m.ts);
            export.conversations.push(Conversation {
                kind: SourceKind::Slack,
                key: format!("slack:{}", ch.id),
                title,
                participants,
                messages,
            });
        }
    }
    Ok(export)
}

fn message(channel: &str, v: &Value, names: &HashMap<String, String>) -> Result<Option<Message>, String> {
    let obj = v.as_object().ok_or_else(|| format!("expected a message object, found {v}"))?;
    if obj.get("type").and_then(Value::as_str).is_some_and(|t| t != "message") {
        return Err(format!("expected type \"message\", found {}", obj["type"]));
    }
    let ts_str = obj.get("ts").and_then(Value::as_str).ok_or("expected a string \"ts\", found none")?;
    let ts = ts_to_ms(ts_str).ok_or_else(|| format!("expected a ts like 1355517523.000005, found {ts_str:?}"))?;
    let subtype = obj.get("subtype").and_then(Value::as_str);
    let user = obj.get("user").and_then(Value::as_str);
    let sender = match (user, subtype) {
        (Some(u), _) => {
            Sender { name: names.get(u).cloned().unwrap_or_else(|| u.to_owned()), source_id: Some(u.to_owned()) }
        }
        (None, _) => {
            let bot = obj.get("username").and_then(Value::as_str).or(obj.get("bot_id").and_then(Value::as_str));
            match bot {
                Some(b) => Sender {
                    name: b.to_owned(),
                    source_id: obj.get("bot_id").and_then(Value::as_str).map(str::to_owned),
                },
                None => return Err("expected \"user\", \"username\" or \"bot_id\", found none".into()),
            }
        }
    };
    let text = obj.get("text").and_then(Value::as_str).unwrap_or("");
    let (mut body, mentions) = render(text, names);
    let kind = match subtype {
        Some(
            "channel_join" | "channel_leave" | "channel_purpose" | "channel_topic" | "channel_name" | "group_join"
            | "group_leave" | "group_purpose" | "group_topic" | "channel_archive" | "pinned_item",
        ) => MessageKind::Notice,
        _ => MessageKind::Text,
    };
    let mut attachments = Vec::new();
    for f in obj.get("files").and_then(Value::as_array).into_iter().flatten() {
        let name = f.get("name").or(f.get("title")).and_then(Value::as_str).unwrap_or("file").to_owned();
        let url = f.get("url_private").and_then(Value::as_str).map(str::to_owned);
        let mime = f.get("mimetype").and_then(Value::as_str).map(str::to_owned);
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(&format!("[file: {name}{}]", url.as_deref().map(|u| format!(" {u}")).unwrap_or_default()));
        attachments.push(Attachment { name, mime, path: url, data: None });
    }
    for a in obj.get("attachments").and_then(Value::as_array).into_iter().flatten() {
        if let Some(fallback) = a.get("fallback").or(a.get("text")).and_then(Value::as_str) {
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(&render(fallback, names).0);
        }
    }
    let kind =
        if kind == MessageKind::Text && text.is_empty() && !attachments.is_empty() { MessageKind::Media } else { kind };
    if body.is_empty() {
        return Err("expected a text, files or attachments, found an empty message".into());
    }
    let mut m = Message::new(format!("slack:{channel}:{ts_str}"), sender, ts, body, kind, String::new());
    m.mentions = mentions;
    m.attachments = attachments;
    if let Some(root) = obj.get("thread_ts").and_then(Value::as_str)
        && root != ts_str
    {
        m.thread_root = Some(format!("slack:{channel}:{root}"));
    }
    if let Some(edited) = obj.get("edited") {
        m.edited_ts = edited.get("ts").and_then(Value::as_str).and_then(ts_to_ms);
    }
    for r in obj.get("reactions").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = r.get("name").and_then(Value::as_str) else { continue };
        let senders = r
            .get("users")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|u| Sender {
                name: names.get(u).cloned().unwrap_or_else(|| u.to_owned()),
                source_id: Some(u.to_owned()),
            })
            .collect();
        m.reactions.push(Reaction { key: emoji(name), senders });
    }
    Ok(Some(m))
}

/// Builds a Slack export zip from (member name, contents) pairs: test fixtures.
pub fn build_zip(members: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut cursor);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, contents) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(contents.as_bytes()).unwrap();
        }
        w.finish().unwrap();
    }
    cursor.into_inner()
}
