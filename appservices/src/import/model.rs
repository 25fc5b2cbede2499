//! The normalised history model every reader produces and the client replays: conversations,
//! messages in source order, problems with file:line, time zones and civil-time conversion.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    KakaoTalk,
    Slack,
    Mbox,
}

impl SourceKind {
    /// Short name used in ghost localparts and transaction ids.
    pub fn tag(self) -> &'static str {
        match self {
            SourceKind::KakaoTalk => "kakao",
            SourceKind::Slack => "slack",
            SourceKind::Mbox => "mail",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// An ordinary message.
    Text,
    /// A system line (joins, leaves, invitations, channel purpose): sent as m.notice.
    Notice,
    /// A media placeholder (`<사진>`, `<Photo>`, a Slack file without its bytes).
    Media,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sender {
    /// Display name as the source shows it.
    pub name: String,
    /// The source's own user id when it has one (Slack `U…`, an e-mail address).
    pub source_id: Option<String>,
}

impl Sender {
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), source_id: None }
    }
    /// The key ghosts are derived from: the source id when known, else the name.
    pub fn key(&self) -> &str {
        self.source_id.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The reaction key (an emoji, or `:name:` for custom Slack emoji).
    pub key: String,
    pub senders: Vec<Sender>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub mime: Option<String>,
    /// Path inside the export, or the source URL, when the bytes are not in hand.
    pub path: Option<String>,
    /// The bytes, when the export carries them (e-mail attachments).
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable id: the source's own id, or file hash + index.
    pub source_id: String,
    pub sender: Sender,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub body: String,
    pub formatted_body: Option<String>,
    pub kind: MessageKind,
    /// Source id of the thread root this message belongs to (not set on the root itself).
    pub thread_root: Option<String>,
    /// Source id of the message this one answers.
    pub reply_to: Option<String>,
    pub reactions: Vec<Reaction>,
    /// When the source says the message was edited (its body is the final text).
    pub edited_ts: Option<i64>,
    /// Display names mentioned in the body as `@name` (become pills when mapped).
    pub mentions: Vec<String>,
    pub attachments: Vec<Attachment>,
    /// Where the message starts, for reports (`file:line`).
    pub origin: String,
}

impl Message {
    pub fn new(source_id: String, sender: Sender, ts: i64, body: String, kind: MessageKind, origin: String) -> Self {
        Self {
            source_id,
            sender,
            ts,
            body,
            formatted_body: None,
            kind,
            thread_root: None,
            reply_to: None,
            reactions: Vec::new(),
            edited_ts: None,
            mentions: Vec::new(),
            attachments: Vec::new(),
            origin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub kind: SourceKind,
    /// Stable key of this conversation (progress file, transaction ids).
    pub key: String,
    pub title: String,
    pub participants: Vec<String>,
    pub messages: Vec<Message>,
}

impl Conversation {
    /// Distinct senders in order of first appearance.
    pub fn senders(&self) -> Vec<&Sender> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for m in &self.messages {
            if seen.insert(m.sender.key()) {
                out.push(&m.sender);
            }
            for r in &m.reactions {
                for s in &r.senders {
                    if seen.insert(s.key()) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }
}

/// A line or item a reader could not place exactly: reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The result of reading one export.
#[derive(Debug, Default)]
pub struct Export {
    pub conversations: Vec<Conversation>,
    pub problems: Vec<Problem>,
}

/// A reader failure that stops the import of a file (unknown layout, unreadable archive).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct ReadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl ReadError {
    pub fn new(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Self { file: file.into(), line, message: message.into() }
    }
}

/// A fixed UTC offset (`+09:00`), minutes east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tz(pub i32);

impl Tz {
    /// Asia/Seoul (no daylight saving since 1988).
    pub const SEOUL: Tz = Tz(9 * 60);

    pub fn parse(s: &str) -> Result<Tz, String> {
        let bad = || format!("expected a fixed offset like +09:00, found {s:?}");
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ if s.eq_ignore_ascii_case("utc") || s == "Z" => return Ok(Tz(0)),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').unwrap_or((rest.get(..2).unwrap_or(rest), rest.get(2..).unwrap_or("")));
        let h: i32 = h.parse().map_err(|_| bad())?;
        let m: i32 = if m.is_empty() { 0 } else { m.parse().map_err(|_| bad())? };
        if h > 14 || m > 59 {
            return Err(bad());
        }
        Ok(Tz(sign * (h * 60 + m)))
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Local civil time in `tz` to Unix milliseconds; None when the date is impossible.
pub fn civil_to_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, tz: Tz) -> Option<i64> {
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86400 + (h as i64) * 3600 + (mi as i64) * 60 + s as i64;
    Some((secs - tz.0 as i64 * 60) * 1000)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Hex SHA-256 of bytes, first `n` hex digits.
pub fn short_hash(bytes: &[u8], n: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_in_seoul() {
        // 2015-07-09 20:34 KST = 11:34 UTC.
        assert_eq!(civil_to_ms(2015, 7, 9, 20, 34, 0, Tz::SEOUL), Some(1_436_441_640_000));
        assert_eq!(civil_to_ms(2015, 2, 29, 0, 0, 0, Tz::SEOUL), None);
        assert_eq!(civil_to_ms(1970, 1, 1, 0, 0, 0, Tz(0)), Some(0));
    }

    #[test]
    fn tz_parse() {
        assert_eq!(Tz::parse("+09:00"), Ok(Tz(540)));
        assert_eq!(Tz::parse("-05:30"), Ok(Tz(-330)));
        assert_eq!(Tz::parse("UTC"), Ok(Tz(0)));
        assert!(Tz::parse("Asia/Seoul").is_err());
    }
}
