//! Slack incoming-webhook payloads: the JSON body (or a form's `payload=` field) read into one
//! Matrix message: `text` (mrkdwn), then `blocks` (section, header, context, divider), then
//! `attachments` (pretext, author, title, text, fields, footer; `fallback` when nothing else),
//! each as following lines, and `username`. `channel`, `thread_ts`, `icon_url`, `icon_emoji`,
//! `color` and other fields are accepted and ignored.

use serde_json::{Map, Value};

use super::mrkdwn::{self, Rendered, escape};

/// Slack limits a webhook's `username` to 80 characters.
const MAX_USERNAME_CHARS: usize = 80;

/// Why a payload is refused (Slack's answers: 400 `invalid_payload`, 400 `no_text`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, not an object, a field of the wrong type, a form without `payload=`.
    #[error("invalid_payload: {0}")]
    Invalid(String),
    /// Valid, but nothing to show: no text, blocks or attachments with text.
    #[error("no_text")]
    NoText,
}

impl PayloadError {
    /// The body Slack answers with.
    pub fn slack_code(&self) -> &'static str {
        match self {
            PayloadError::Invalid(_) => "invalid_payload",
            PayloadError::NoText => "no_text",
        }
    }
}

/// One message, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub body: String,
    pub formatted_body: String,
    /// `<!here>`, `<!channel>` or `<!everyone>` appeared: `m.mentions.room`.
    pub mentions_room: bool,
    /// The payload's `username`, trimmed, at most 80 characters.
    pub username: Option<String>,
}

fn invalid(detail: impl Into<String>) -> PayloadError {
    PayloadError::Invalid(detail.into())
}

/// Reads a request body: a form with `payload=<json>` when the content type says so, JSON
/// otherwise (some senders post JSON as `text/plain`).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Message, PayloadError> {
    let essence = content_type.and_then(|c| c.split(';').next()).map(|c| c.trim().to_ascii_lowercase());
    let json: Value = if essence.as_deref() == Some("application/x-www-form-urlencoded") {
        let payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| invalid("a form body needs a `payload` field holding the JSON"))?;
        serde_json::from_str(&payload).map_err(|e| invalid(format!("payload: not JSON: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?
    };
    from_json(&json)
}

/// A string field: absent or null is None; numbers and booleans are taken as text.
fn string(obj: &Map<String, Value>, field: &str, context: &str) -> Result<Option<String>, PayloadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(_) => Err(invalid(format!("{context}{field}: expected a string"))),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, field: &str, context: &str) -> Result<&'a [Value], PayloadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(format!("{context}{field}: expected an array"))),
    }
}

fn object<'a>(v: &'a Value, context: &str) -> Result<&'a Map<String, Value>, PayloadError> {
    v.as_object().ok_or_else(|| invalid(format!("{context}: expected an object")))
}

/// The message of a parsed payload.
pub fn from_json(json: &Value) -> Result<Message, PayloadError> {
    let obj = object(json, "the payload")?;
    let mrkdwn = match obj.get("mrkdwn") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("mrkdwn: expected true or false")),
    };
    let mut out = Rendered::default();
    if let Some(text) = string(obj, "text", "")?
        && !text.trim().is_empty()
    {
        out.push_lines(mrkdwn::render(text.trim_end(), mrkdwn));
    }
    for (i, block) in array(obj, "blocks", "")?.iter().enumerate() {
        out.push_lines(render_block(object(block, &format!("blocks[{i}]"))?, &format!("blocks[{i}]."))?);
    }
    for (i, attachment) in array(obj, "attachments", "")?.iter().enumerate() {
        let context = format!("attachments[{i}].");
        out.push_lines(render_attachment(object(attachment, &format!("attachments[{i}]"))?, &context)?);
    }
    if out.plain.trim().is_empty() {
        return Err(PayloadError::NoText);
    }
    let username = string(obj, "username", "")?
        .map(|u| u.trim().chars().take(MAX_USERNAME_CHARS).collect::<String>())
        .filter(|u| !u.is_empty());
    Ok(Message { body: out.plain, formatted_body: out.html, mentions_room: out.mentions_room, username })
}

/// A Block Kit text object: `{"type": "mrkdwn" | "plain_text", "text": ...}`.
fn text_object(v: &Value, context: &str) -> Result<Rendered, PayloadError> {
    let obj = object(v, context.trim_end_matches('.'))?;
    let text = string(obj, "text", context)?.unwrap_or_default();
    Ok(match string(obj, "type", context)?.as_deref() {
        Some("mrkdwn") => mrkdwn::render(&text, true),
        _ => Rendered::plain_text(&text),
    })
}

fn render_block(block: &Map<String, Value>, context: &str) -> Result<Rendered, PayloadError> {
    let mut out = Rendered::default();
    match string(block, "type", context)?.as_deref() {
        Some("section") => {
            if let Some(text) = block.get("text") {
                out.push_lines(text_object(text, &format!("{context}text."))?);
            }
            for (i, field) in array(block, "fields", context)?.iter().enumerate() {
                out.push_lines(text_object(field, &format!("{context}fields[{i}]."))?);
            }
        }
        Some("header") => {
            if let Some(text) = block.get("text") {
                let r = text_object(text, &format!("{context}text."))?;
                if !r.plain.is_empty() {
                    out = r.wrap("strong");
                }
            }
        }
        Some("context") => {
            // Shown side by side in Slack: one line, text elements only (images have no text).
            for (i, element) in array(block, "elements", context)?.iter().enumerate() {
                let element_context = format!("{context}elements[{i}].");
                let element_type = object(element, &element_context)?.get("type").and_then(Value::as_str);
                if !matches!(element_type, Some("mrkdwn" | "plain_text")) {
                    continue;
                }
                let r = text_object(element, &element_context)?;
                if r.plain.is_empty() {
                    continue;
                }
                if !out.plain.is_empty() {
                    out.plain.push_str("  ");
                    out.html.push_str("  ");
                }
                out.plain.push_str(&r.plain);
                out.html.push_str(&r.html);
                out.mentions_room |= r.mentions_room;
            }
        }
        Some("divider") => {
            out = Rendered { plain: "---".into(), html: "<hr>".into(), mentions_room: false };
        }
        // Images, actions, inputs, rich text...: nothing a webhook message needs.
        _ => {}
    }
    Ok(out)
}

fn render_attachment(a: &Map<String, Value>, context: &str) -> Result<Rendered, PayloadError> {
    let mut out = Rendered::default();
    if let Some(pretext) = string(a, "pretext", context)? {
        out.push_lines(mrkdwn::render(&pretext, true));
    }
    // The attachment's box: a quote in HTML.
    let mut inner = Rendered::default();
    if let Some(author) = string(a, "author_name", context)? {
        inner.push_lines(Rendered::plain_text(&author));
    }
    if let Some(title) = string(a, "title", context)? {
        let link = string(a, "title_link", context)?;
        inner.push_lines(mrkdwn::link(link.as_deref(), &title).wrap("strong"));
    }
    if let Some(text) = string(a, "text", context)? {
        inner.push_lines(mrkdwn::render(&text, true));
    }
    for (i, field) in array(a, "fields", context)?.iter().enumerate() {
        let field_context = format!("{context}fields[{i}].");
        let field = object(field, &field_context)?;
        let title = string(field, "title", &field_context)?.unwrap_or_default();
        let value = mrkdwn::render(&string(field, "value", &field_context)?.unwrap_or_default(), true);
        let r = match (title.is_empty(), value.plain.is_empty()) {
            (true, true) => continue,
            (true, false) => value,
            (false, true) => Rendered::plain_text(&title).wrap("strong"),
            (false, false) => Rendered {
                plain: format!("{title}: {}", value.plain),
                html: format!("<strong>{}</strong>: {}", escape(&title), value.html),
                mentions_room: value.mentions_room,
            },
        };
        inner.push_lines(r);
    }
    if let Some(footer) = string(a, "footer", context)? {
        inner.push_lines(mrkdwn::render(&footer, true));
    }
    if inner.plain.is_empty()
        && out.plain.is_empty()
        && let Some(fallback) = string(a, "fallback", context)?
    {
        inner.push_lines(Rendered::plain_text(&fallback));
    }
    if !inner.plain.is_empty() {
        out.push_lines(inner.wrap("blockquote"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_body(v: Value) -> Result<Message, PayloadError> {
        parse(Some("application/json"), v.to_string().as_bytes())
    }

    #[test]
    fn json_text_and_username() {
        let m = json_body(json!({"text": "*디스크* 사용률 95% <!here>", "username": "  Grafana  ", "channel": "#ops", "thread_ts": "1.2", "icon_emoji": ":ghost:"})).unwrap();
        assert_eq!(m.body, "디스크 사용률 95% @room");
        assert_eq!(m.formatted_body, "<strong>디스크</strong> 사용률 95% @room");
        assert!(m.mentions_room);
        assert_eq!(m.username.as_deref(), Some("Grafana"));
        let long = "가".repeat(200);
        let m = json_body(json!({"text": "x", "username": long})).unwrap();
        assert_eq!(m.username.unwrap().chars().count(), 80);
        assert_eq!(json_body(json!({"text": "x", "username": " "})).unwrap().username, None);
        // Some senders post JSON as text/plain, or with no content type at all.
        assert_eq!(parse(None, br#"{"text":"plain"}"#).unwrap().body, "plain");
        assert_eq!(parse(Some("text/plain; charset=utf-8"), br#"{"text":"plain"}"#).unwrap().body, "plain");
    }

    #[test]
    fn form_payload() {
        let payload = json!({"text": "배포 완료 <https://ci.example/1|#1>", "username": "CI"}).to_string();
        let body: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload).finish();
        let m = parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap();
        assert_eq!(m.body, "배포 완료 #1 (https://ci.example/1)");
        assert_eq!(m.username.as_deref(), Some("CI"));
        let err = parse(Some("application/x-www-form-urlencoded"), b"text=hello").unwrap_err();
        assert_eq!(err.slack_code(), "invalid_payload");
        let err = parse(Some("application/x-www-form-urlencoded"), b"payload=%7Bnot").unwrap_err();
        assert_eq!(err.slack_code(), "invalid_payload");
    }

    #[test]
    fn attachments() {
        let m = json_body(json!({
            "attachments": [{
                "fallback": "Required plain-text summary",
                "color": "#36a64f",
                "pretext": "새 경보",
                "author_name": "Prometheus",
                "title": "HighCPU <b>",
                "title_link": "https://prom.example/alerts?id=1&x=2",
                "text": "CPU _95%_ on `web-1`",
                "fields": [{"title": "Priority", "value": "High", "short": false}, {"title": "Count", "value": 3}],
                "footer": "alertmanager",
                "ts": 123456789
            }]
        }))
        .unwrap();
        assert_eq!(
            m.body,
            "새 경보\nPrometheus\nHighCPU <b> (https://prom.example/alerts?id=1&x=2)\nCPU 95% on `web-1`\nPriority: High\nCount: 3\nalertmanager"
        );
        assert_eq!(
            m.formatted_body,
            "새 경보<blockquote>Prometheus<br><strong><a href=\"https://prom.example/alerts?id=1&amp;x=2\">HighCPU &lt;b&gt;</a></strong><br>CPU <em>95%</em> on <code>web-1</code><br><strong>Priority</strong>: High<br><strong>Count</strong>: 3<br>alertmanager</blockquote>"
        );
        // Only a fallback: it is the message.
        let m = json_body(json!({"attachments": [{"fallback": "only <this>", "color": "danger"}]})).unwrap();
        assert_eq!(
            (m.body.as_str(), m.formatted_body.as_str()),
            ("only <this>", "<blockquote>only &lt;this&gt;</blockquote>")
        );
        // Text first, attachments as extra lines.
        let m = json_body(json!({"text": "summary", "attachments": [{"text": "detail"}]})).unwrap();
        assert_eq!(
            (m.body.as_str(), m.formatted_body.as_str()),
            ("summary\ndetail", "summary<blockquote>detail</blockquote>")
        );
    }

    #[test]
    fn blocks() {
        let m = json_body(json!({
            "text": "fallback for notifications",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "장애 알림 <1>"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "*api* is down\n<https://status.example|status>"},
                 "fields": [{"type": "mrkdwn", "text": "*Region:* 서울"}], "accessory": {"type": "image"}},
                {"type": "divider"},
                {"type": "context", "elements": [{"type": "image", "image_url": "https://x/y.png", "alt_text": "logo"},
                                                 {"type": "mrkdwn", "text": "by _oncall_"}, {"type": "plain_text", "text": "2026-01-01"}]},
                {"type": "actions", "elements": []}
            ]
        }))
        .unwrap();
        assert_eq!(
            m.body,
            "fallback for notifications\n장애 알림 <1>\napi is down\nstatus (https://status.example)\nRegion: 서울\n---\nby oncall  2026-01-01"
        );
        assert_eq!(
            m.formatted_body,
            "fallback for notifications<br><strong>장애 알림 &lt;1&gt;</strong><br><strong>api</strong> is down<br><a href=\"https://status.example\">status</a><br><strong>Region:</strong> 서울<hr>by <em>oncall</em>  2026-01-01"
        );
        // Blocks alone are enough.
        assert_eq!(
            json_body(json!({"blocks": [{"type": "section", "text": {"type": "plain_text", "text": "hi"}}]}))
                .unwrap()
                .body,
            "hi"
        );
    }

    #[test]
    fn bad_input() {
        let code = |body: &[u8]| parse(Some("application/json"), body).unwrap_err().slack_code();
        assert_eq!(code(b""), "invalid_payload");
        assert_eq!(code(b"{\"text\": \"unterminated"), "invalid_payload");
        assert_eq!(code(b"[\"text\"]"), "invalid_payload");
        assert_eq!(code(b"\"text\""), "invalid_payload");
        assert_eq!(code(b"{\"text\": {\"a\": 1}}"), "invalid_payload");
        assert_eq!(code(b"{\"attachments\": \"x\"}"), "invalid_payload");
        assert_eq!(code(b"{\"attachments\": [1]}"), "invalid_payload");
        assert_eq!(code(b"{\"blocks\": [{\"type\": \"section\", \"text\": 5}]}"), "invalid_payload");
        assert_eq!(code(b"{\"text\": \"x\", \"mrkdwn\": \"no\"}"), "invalid_payload");
        assert_eq!(code(b"\xff\xfe"), "invalid_payload");
        assert_eq!(code(b"{}"), "no_text");
        assert_eq!(code(b"{\"text\": \"  \\n \"}"), "no_text");
        assert_eq!(
            code(b"{\"text\": null, \"attachments\": [{\"color\": \"good\"}], \"blocks\": [{\"type\": \"image\"}]}"),
            "no_text"
        );
        let err = parse(Some("application/json"), b"{\"text\": [1]}").unwrap_err();
        assert!(err.to_string().contains("text: expected a string"), "{err}");
    }
}
