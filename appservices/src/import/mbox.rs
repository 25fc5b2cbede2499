//! mbox mailboxes: split on `From ` lines (mboxrd `>From ` unescaped), RFC 5322 headers with
//! folding and RFC 2047 encoded words (B and Q, any charset encoding_rs knows: UTF-8, EUC-KR,
//! ...), dates, threads from References/In-Reply-To, MIME: text/plain preferred over text/html,
//! nested multiparts, attachments decoded from base64/quoted-printable.

use std::collections::HashMap;

use super::model::{
    Attachment, Conversation, Export, Message, MessageKind, Problem, ReadError, Sender, SourceKind, Tz, civil_to_ms,
    short_hash,
};

/// One raw message of the mailbox with the line it starts on.
fn split(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut prev_blank = true;
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with("From ") && prev_blank {
            out.push((i + 2, String::new()));
            prev_blank = false;
            continue;
        }
        prev_blank = line.is_empty();
        if let Some((_, cur)) = out.last_mut() {
            // mboxrd: one '>' less before `From `.
            let unescaped = if line.starts_with('>') && line.trim_start_matches('>').starts_with("From ") {
                &line[1..]
            } else {
                line
            };
            cur.push_str(unescaped);
            cur.push('\n');
        } else if !line.is_empty() {
            out.push((0, line.to_owned())); // content before the first From line: reported by the caller
        }
    }
    out
}

/// Headers (unfolded, names lowercased) and the body.
fn headers_body(raw: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = match raw.find("\n\n") {
        Some(i) => (&raw[..i], &raw[i + 2..]),
        None => (raw, ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    match encoding_rs::Encoding::for_label(charset.trim().as_bytes()) {
        Some(enc) => enc.decode(bytes).0.into_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Quoted-printable; `header` turns `_` into a space (RFC 2047 Q).
pub fn qp_decode(s: &str, header: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'=' if i + 1 < b.len() && (b[i + 1] == b'\n' || b[i + 1] == b'\r') => {
                i += 1;
                if b[i] == b'\r' && i + 1 < b.len() && b[i + 1] == b'\n' {
                    i += 1;
                }
            }
            b'=' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap());
                i += 2;
            }
            b'_' if header => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Decodes RFC 2047 encoded words; whitespace between adjacent encoded words is dropped.
pub fn decode_words(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, after) = rest.split_at(start);
        let parsed = (|| {
            let inner = &after[2..];
            let (charset, inner) = inner.split_once('?')?;
            let (enc, inner) = inner.split_once('?')?;
            let end = inner.find("?=")?;
            let text = &inner[..end];
            let bytes = match enc {
                "B" | "b" => base64_decode(text)?,
                "Q" | "q" => qp_decode(text, true),
                _ => return None,
            };
            let charset = charset.split('*').next().unwrap_or(charset);
            Some(decode_charset(charset, &bytes))
        })();
        match parsed {
            Some(decoded) => {
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                // Skip past the encoded word: find the closing "?=" after the second '?' pair.
                let inner = &after[2..];
                let q1 = inner.find('?').unwrap();
                let q2 = q1 + 1 + inner[q1 + 1..].find('?').unwrap();
                let end = q2 + 1 + inner[q2 + 1..].find("?=").unwrap();
                rest = &inner[end + 2..];
                last_was_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &after[2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `Name <addr>` -> (name, addr).
fn parse_from(v: &str) -> (String, String) {
    let v = decode_words(v);
    if let (Some(l), Some(r)) = (v.rfind('<'), v.rfind('>'))
        && l < r
    {
        let name = v[..l].trim().trim_matches('"').trim().to_owned();
        let addr = v[l + 1..r].trim().to_owned();
        return (if name.is_empty() { addr.clone() } else { name }, addr);
    }
    let addr = v.trim().to_owned();
    (addr.clone(), addr)
}

/// RFC 5322 date (`Mon, 3 Aug 2015 00:29:58 +0900`, weekday and seconds optional, obsolete zones).
pub fn parse_date(v: &str) -> Option<i64> {
    let v = v.split('(').next()?.trim();
    let v = match v.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => v,
    };
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() < 4 {
        return None;
    }
    let d: u32 = parts[0].parse().ok()?;
    let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let mo = months.iter().position(|m| parts[1].to_ascii_lowercase().starts_with(m))? as u32 + 1;
    let mut y: i64 = parts[2].parse().ok()?;
    if y < 50 {
        y += 2000;
    } else if y < 1000 {
        y += 1900;
    }
    let mut t = parts[3].split(':');
    let (h, mi) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let s = t.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let zone = parts.get(4).copied().unwrap_or("+0000");
    let tz = match zone.to_ascii_uppercase().as_str() {
        "UT" | "GMT" | "Z" => Tz(0),
        "KST" => Tz::SEOUL,
        "EST" => Tz(-300),
        "EDT" => Tz(-240),
        "CST" => Tz(-360),
        "CDT" => Tz(-300),
        "MST" => Tz(-420),
        "MDT" => Tz(-360),
        "PST" => Tz(-480),
        "PDT" => Tz(-420),
        z if (z.starts_with('+') || z.starts_with('-')) && z.len() == 5 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let hh: i32 = z[1..3].parse().ok()?;
            let mm: i32 = z[3..5].parse().ok()?;
            Tz(sign * (hh * 60 + mm))
        }
        _ => Tz(0),
    };
    civil_to_ms(y, mo, d, h, mi, s, tz)
}

/// A `Content-Type`-like header: value and parameters (lowercased names).
fn params(v: &str) -> (String, HashMap<String, String>) {
    let mut it = v.split(';');
    let main = it.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut map = HashMap::new();
    for p in it {
        if let Some((k, v)) = p.split_once('=') {
            map.insert(k.trim().to_ascii_lowercase(), decode_words(v.trim().trim_matches('"')));
        }
    }
    (main, map)
}

#[derive(Default)]
struct Parts {
    plain: Option<String>,
    html: Option<String>,
    attachments: Vec<Attachment>,
}

fn walk(headers: &[(String, String)], body: &str, parts: &mut Parts) {
    let (ctype, p) = params(header(headers, "content-type").unwrap_or("text/plain; charset=us-ascii"));
    let (disposition, dp) = params(header(headers, "content-disposition").unwrap_or(""));
    if ctype.starts_with("multipart/") {
        let Some(boundary) = p.get("boundary") else {
            parts.plain.get_or_insert_with(|| body.to_owned());
            return;
        };
        let delim = format!("--{boundary}");
        let mut sections = body.split(&delim).skip(1);
        for section in sections.by_ref() {
            if section.starts_with("--") {
                break;
            }
            let section = section.strip_prefix("\r\n").or(section.strip_prefix('\n')).unwrap_or(section);
            let (h, b) = headers_body(section);
            walk(&h, b, parts);
        }
        return;
    }
    let cte = header(headers, "content-transfer-encoding").unwrap_or("7bit").trim().to_ascii_lowercase();
    let bytes = match cte.as_str() {
        "base64" => base64_decode(body).unwrap_or_else(|| body.as_bytes().to_vec()),
        "quoted-printable" => qp_decode(body, false),
        _ => body.as_bytes().to_vec(),
    };
    let filename = dp.get("filename").or(p.get("name")).cloned();
    if disposition == "attachment" || filename.is_some() || !ctype.starts_with("text/") {
        parts.attachments.push(Attachment {
            name: filename.unwrap_or_else(|| "attachment".into()),
            mime: Some(ctype),
            path: None,
            data: Some(bytes),
        });
        return;
    }
    let text = decode_charset(p.get("charset").map(String::as_str).unwrap_or("utf-8"), &bytes);
    if ctype == "text/html" {
        parts.html.get_or_insert(text);
    } else {
        parts.plain.get_or_insert(text);
    }
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Reads an mbox file.
pub fn read(file: &str, bytes: &[u8]) -> Result<Export, ReadError> {
    let text = String::from_utf8_lossy(bytes);
    let hash = short_hash(bytes, 16);
    let raws = split(&text);
    let mut problems = Vec::new();
    if raws.iter().all(|(line, _)| *line == 0) {
        let first = text.lines().next().unwrap_or("");
        return Err(ReadError::new(
            file,
            1,
            format!("expected an mbox (`From sender date` separator lines), found {first:?}"),
        ));
    }
    let mut messages: Vec<Message> = Vec::new();
    let mut root_of: HashMap<String, String> = HashMap::new();
    for (index, (line, raw)) in raws.iter().enumerate() {
        if *line == 0 {
            problems.push(Problem {
                file: file.into(),
                line: 1,
                message: format!("expected a `From ` separator line first, found {:?}; text before it ignored", raw),
            });
            continue;
        }
        let (headers, body) = headers_body(raw);
        let Some(from) = header(&headers, "from") else {
            problems.push(Problem {
                file: file.into(),
                line: *line,
                message: "expected a From: header, found none; message skipped".into(),
            });
            continue;
        };
        let (name, addr) = parse_from(from);
        let Some(ts) = header(&headers, "date").and_then(parse_date) else {
            problems.push(Problem {
                file: file.into(),
                line: *line,
                message: format!(
                    "expected a Date: header like `Mon, 3 Aug 2015 00:29:58 +0900`, found {:?}; message skipped",
                    header(&headers, "date")
                ),
            });
            continue;
        };
        let subject = header(&headers, "subject").map(decode_words).unwrap_or_default();
        let message_id = header(&headers, "message-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| format!("<{hash}.{index}@mbox>"));
        let mut parts = Parts::default();
        walk(&headers, body, &mut parts);
        let text = parts.plain.clone().or(parts.html.as_deref().map(strip_tags)).unwrap_or_default();
        let text = text.trim_end().to_owned();
        let body_text = if subject.is_empty() { text.clone() } else { format!("{subject}\n\n{text}") };
        let mut m = Message::new(
            format!("mail:{message_id}"),
            Sender { name, source_id: Some(addr) },
            ts,
            body_text,
            MessageKind::Text,
            format!("{file}:{line}"),
        );
        m.attachments = parts.attachments;
        // Thread: the first known id in References, else In-Reply-To's root.
        let mut refs: Vec<String> = header(&headers, "references")
            .map(|r| r.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(irt) = header(&headers, "in-reply-to")
            && let Some(id) = irt.split_whitespace().find(|s| s.starts_with('<'))
        {
            refs.push(id.to_owned());
        }
        let parent = refs.last().cloned();
        let root = refs.iter().find_map(|r| root_of.get(r).cloned());
        match root {
            Some(root) => {
                m.thread_root = Some(root.clone());
                m.reply_to = parent.map(|p| format!("mail:{p}"));
                root_of.insert(message_id.clone(), root);
            }
            None => {
                if !refs.is_empty() {
                    problems.push(Problem {
                        file: file.into(),
                        line: *line,
                        message: format!("expected the message it answers ({}) in this mailbox, found none; imported as a new thread", refs.join(" ")),
                    });
                }
                root_of.insert(message_id.clone(), m.source_id.clone());
            }
        }
        if let Some(html) = parts.html
            && parts.plain.is_none()
        {
            m.formatted_body = Some(sanitize_html(&html));
        }
        messages.push(m);
    }
    // A mailbox is not always in date order; import oldest first (stable for equal dates).
    messages.sort_by_key(|m| m.ts);
    let mut participants: Vec<String> = Vec::new();
    for m in &messages {
        if !participants.contains(&m.sender.name) {
            participants.push(m.sender.name.clone());
        }
    }
    let title = std::path::Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Export {
        conversations: vec![Conversation {
            kind: SourceKind::Mbox,
            key: format!("mail:{hash}"),
            title,
            participants,
            messages,
        }],
        problems,
    })
}

/// Keeps only a small set of harmless tags (no attributes): the rest becomes text.
fn sanitize_html(html: &str) -> String {
    const ALLOWED: &[&str] = &["b", "i", "u", "em", "strong", "p", "br", "ul", "ol", "li", "blockquote", "pre", "code"];
    let mut out = String::new();
    let mut rest = html;
    while let Some(l) = rest.find('<') {
        out.push_str(&rest[..l]);
        let Some(r) = rest[l..].find('>') else { break };
        let tag = &rest[l + 1..l + r];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if ALLOWED.contains(&name.as_str()) {
            out.push_str(&format!("<{}{}>", if closing { "/" } else { "" }, name));
        }
        rest = &rest[l + r + 1..];
    }
    out.push_str(rest);
    out
}
