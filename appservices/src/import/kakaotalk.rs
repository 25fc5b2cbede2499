//! KakaoTalk "대화 내보내기" text exports: encoding detection (UTF-8 with or without BOM,
//! UTF-16 with BOM, EUC-KR/CP949), layout detection from the header (Android Korean and
//! English, iOS Korean, Windows PC, macOS CSV, the newer dotted/bracketed/24-hour variants),
//! multi-line messages, system lines, media placeholders, minute + sequence timestamps.

use std::sync::LazyLock;

use regex::Regex;

use super::model::{
    Conversation, Export, Message, MessageKind, Problem, ReadError, Sender, SourceKind, Tz, civil_to_ms, short_hash,
};

/// The detected layout of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    AndroidKorean,
    AndroidEnglish,
    IosKorean,
    WindowsPc,
    MacCsv,
    /// No known header, but the lines are one of the newer dotted/bracketed variants.
    Headerless,
}

/// Decodes the bytes of an export, returning the text and the encoding's name.
pub fn decode(file: &str, bytes: &[u8]) -> Result<(String, &'static str), ReadError> {
    if let Some((enc, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, had_errors) = enc.decode_without_bom_handling(&bytes[bom..]);
        if had_errors {
            return Err(ReadError::new(
                file,
                1,
                format!("expected valid {} after its byte-order mark, found invalid bytes", enc.name()),
            ));
        }
        return Ok((text.into_owned(), enc.name()));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok((text.to_owned(), "UTF-8"));
    }
    let (text, had_errors) = encoding_rs::EUC_KR.decode_without_bom_handling(bytes);
    if had_errors {
        let line = first_invalid_utf8_line(bytes);
        return Err(ReadError::new(
            file,
            line,
            "expected text in UTF-8, UTF-16 (with BOM) or EUC-KR/CP949, found bytes valid in none of them",
        ));
    }
    Ok((text.into_owned(), "EUC-KR"))
}

fn first_invalid_utf8_line(bytes: &[u8]) -> usize {
    let upto = std::str::from_utf8(bytes).err().map(|e| e.valid_up_to()).unwrap_or(0);
    1 + bytes[..upto].iter().filter(|&&b| b == b'\n').count()
}

macro_rules! re {
    ($name:ident, $pat:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($pat).unwrap());
    };
}

// Headers.
re!(H_ANDROID_KO, r"^(.*?) ?님과 카카오톡 대화$");
re!(H_IOS_KO, r"^(.*?) ?(?:\((\d+)명\))?과 카카오톡 대화$");
re!(H_SAVED_KO_ANDROID, r"^저장한 날짜 ?: ?\d{4}년 ");
re!(H_SAVED_KO_IOS, r"^저장한 날짜 ?: ?\d{4}\. ");
re!(H_ANDROID_EN, r"^KakaoTalk Chats with (.*)$");
re!(H_PC, r"^(.*) with KakaoTalk Chats$");
// Message lines.
re!(L_ANDROID_KO, r"^(\d{4})년 (\d{1,2})월 (\d{1,2})일 (오전|오후) (\d{1,2}):(\d{2})(?:, (.*))?$");
re!(L_DOTTED, r"^\[?(\d{4})\. ?(\d{1,2})\. ?(\d{1,2})\.? (?:(오전|오후) )?(\d{1,2}):(\d{2})(?:\]|([,:]))? ?(.*)$");
re!(L_ANDROID_EN, r"^(\d{1,2}):(\d{2}) ?([aApP][mM]), ([A-Z][a-z]+) (\d{1,2}), (\d{4})(?:, (.*))?$");
re!(L_PC, r"^\[(.+?)\] \[(오전|오후) (\d{1,2}):(\d{2})\] ?(.*)$");
re!(L_PC_EN, r"^\[(.+?)\] \[(\d{1,2}):(\d{2}) ?([AaPp][Mm])\] ?(.*)$");
// Day separators.
re!(D_KO, r"^-*\s*(\d{4})년 (\d{1,2})월 (\d{1,2})일 ?(?:[월화수목금토일]요일)?\s*-*$");
re!(D_EN, r"^-*\s*(?:[A-Z][a-z]+day, )?([A-Z][a-z]+) (\d{1,2}), (\d{4})\s*-*$");
// System lines without a sender.
re!(
    SYSTEM,
    r"(님이 .*(?:초대했습니다|나갔습니다|들어왔습니다|가렸습니다|내보냈습니다)\.?|(?:invited|left this chatroom|joined this chatroom)\.?|^운영정책을 위반한 메시지로 신고 접수 시.*)$"
);

const MEDIA: &[&str] = &[
    "<사진>",
    "<동영상>",
    "<이모티콘>",
    "<음성메시지>",
    "<Photo>",
    "<Video>",
    "<Emoticon>",
    "<Voice Note>",
    "사진",
    "동영상",
    "이모티콘",
    "photo",
    "video",
    "emoticon",
    "Photo",
    "Video",
    "Emoticon",
];

fn is_media(text: &str) -> bool {
    let t = text.trim();
    MEDIA.contains(&t)
        || t.starts_with("사진 ") && t.ends_with('장')
        || t.starts_with("파일: ")
        || t.starts_with("File: ")
}

fn month_en(name: &str) -> Option<u32> {
    const M: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    M.iter().position(|m| *m == name || m[..3] == *name).map(|i| i as u32 + 1)
}

fn hour12(ampm_pm: bool, h: u32) -> u32 {
    match (ampm_pm, h) {
        (false, 12) => 0,
        (true, 12) => 12,
        (true, h) => h + 12,
        (false, h) => h,
    }
}

/// The layout, the title, and the index of the title line (skipped when reading messages).
fn detect(lines: &[&str]) -> (Layout, String, Option<usize>) {
    let first_index = lines.iter().position(|l| !l.trim().is_empty());
    let (layout, title) = detect_inner(lines);
    let title_line = match layout {
        Layout::Headerless if title.is_empty() => None,
        _ => first_index,
    };
    (layout, title, title_line)
}

fn detect_inner(lines: &[&str]) -> (Layout, String) {
    let first = lines.iter().find(|l| !l.trim().is_empty()).map(|l| l.trim()).unwrap_or("");
    let second = lines.iter().filter(|l| !l.trim().is_empty()).nth(1).map(|l| l.trim()).unwrap_or("");
    if first.trim_start_matches('\u{feff}') == "Date,User,Message" {
        return (Layout::MacCsv, String::new());
    }
    if let Some(c) = H_ANDROID_EN.captures(first) {
        return (Layout::AndroidEnglish, c[1].to_owned());
    }
    if let Some(c) = H_PC.captures(first) {
        return (Layout::WindowsPc, c[1].to_owned());
    }
    if first.ends_with("카카오톡 대화") {
        if H_SAVED_KO_IOS.is_match(second) {
            return (Layout::IosKorean, title_ko(first));
        }
        if H_SAVED_KO_ANDROID.is_match(second) {
            return (Layout::AndroidKorean, title_ko(first));
        }
        // The header of a known family with an unknown saved-date line: still try the lines.
        return (Layout::Headerless, title_ko(first));
    }
    (Layout::Headerless, String::new())
}

fn title_ko(first: &str) -> String {
    if let Some(c) = H_ANDROID_KO.captures(first) {
        return c[1].trim().to_owned();
    }
    H_IOS_KO.captures(first).map(|c| c[1].trim().to_owned()).unwrap_or_default()
}

/// What one line is.
enum Line {
    Message { ts_min: i64, sender: String, text: String },
    System { ts_min: Option<i64>, text: String },
    Day(i64),
    Header,
    Other,
}

struct Parser {
    tz: Tz,
    day: Option<(i64, u32, u32)>,
}

impl Parser {
    fn ko(&self, y: &str, mo: &str, d: &str, ampm: Option<&str>, h: &str, mi: &str) -> Option<i64> {
        let h: u32 = h.parse().ok()?;
        let h = match ampm {
            Some(a) => {
                if h > 12 {
                    return None;
                }
                hour12(a == "오후", h)
            }
            None => h,
        };
        civil_to_ms(y.parse().ok()?, mo.parse().ok()?, d.parse().ok()?, h, mi.parse().ok()?, 0, self.tz)
    }

    fn sender_text(rest: &str) -> Option<(String, String)> {
        rest.split_once(" : ").map(|(s, t)| (s.trim().to_owned(), t.to_owned()))
    }

    fn line(&mut self, layout: Layout, line: &str) -> Line {
        if layout != Layout::AndroidEnglish {
            if let Some(c) = L_ANDROID_KO.captures(line) {
                let Some(ts) = self.ko(&c[1], &c[2], &c[3], Some(&c[4]), &c[5], &c[6]) else { return Line::Other };
                return match c.get(7).map(|m| m.as_str()) {
                    None => Line::Day(ts),
                    Some(rest) => match Self::sender_text(rest) {
                        Some((sender, text)) => Line::Message { ts_min: ts, sender, text },
                        None => Line::System { ts_min: Some(ts), text: rest.to_owned() },
                    },
                };
            }
            if let Some(c) = L_DOTTED.captures(line) {
                let Some(ts) = self.ko(&c[1], &c[2], &c[3], c.get(4).map(|m| m.as_str()), &c[5], &c[6]) else {
                    return Line::Other;
                };
                let rest = c.get(8).map(|m| m.as_str()).unwrap_or("");
                let sep = c.get(7).map(|m| m.as_str());
                let bracketed = line.starts_with('[');
                if sep == Some(":") && !bracketed {
                    return Line::System { ts_min: Some(ts), text: rest.to_owned() };
                }
                if rest.is_empty() {
                    return Line::Day(ts);
                }
                return match Self::sender_text(rest) {
                    Some((sender, text)) => Line::Message { ts_min: ts, sender, text },
                    None => Line::System { ts_min: Some(ts), text: rest.to_owned() },
                };
            }
            if let Some(c) = L_PC.captures(line) {
                if let Some((y, mo, d)) = self.day {
                    let h: u32 = c[3].parse().unwrap_or(99);
                    if h <= 12
                        && let Some(ts) =
                            civil_to_ms(y, mo, d, hour12(&c[2] == "오후", h), c[4].parse().unwrap_or(99), 0, self.tz)
                    {
                        return Line::Message { ts_min: ts, sender: c[1].to_owned(), text: c[5].to_owned() };
                    }
                }
                return Line::Other;
            }
            if let Some(c) = L_PC_EN.captures(line) {
                if let Some((y, mo, d)) = self.day {
                    let h: u32 = c[2].parse().unwrap_or(99);
                    let pm = c[4].eq_ignore_ascii_case("pm");
                    if h <= 12
                        && let Some(ts) = civil_to_ms(y, mo, d, hour12(pm, h), c[3].parse().unwrap_or(99), 0, self.tz)
                    {
                        return Line::Message { ts_min: ts, sender: c[1].to_owned(), text: c[5].to_owned() };
                    }
                }
                return Line::Other;
            }
            if let Some(c) = D_EN.captures(line)
                && let (Some(mo), Ok(d), Ok(y)) = (month_en(&c[1]), c[2].parse(), c[3].parse())
                && let Some(ts) = civil_to_ms(y, mo, d, 0, 0, 0, self.tz)
            {
                self.day = Some((y, mo, d));
                return Line::Day(ts);
            }
            if let Some(c) = D_KO.captures(line) {
                let (y, mo, d) = (c[1].parse().unwrap_or(0), c[2].parse().unwrap_or(0), c[3].parse().unwrap_or(0));
                if let Some(ts) = civil_to_ms(y, mo, d, 0, 0, 0, self.tz) {
                    self.day = Some((y, mo, d));
                    return Line::Day(ts);
                }
            }
        } else {
            if let Some(c) = L_ANDROID_EN.captures(line) {
                let ts = (|| {
                    let h: u32 = c[1].parse().ok()?;
                    if h > 12 {
                        return None;
                    }
                    let pm = c[3].eq_ignore_ascii_case("pm");
                    civil_to_ms(
                        c[6].parse().ok()?,
                        month_en(&c[4])?,
                        c[5].parse().ok()?,
                        hour12(pm, h),
                        c[2].parse().ok()?,
                        0,
                        self.tz,
                    )
                })();
                let Some(ts) = ts else { return Line::Other };
                return match c.get(7).map(|m| m.as_str()) {
                    None => Line::Day(ts),
                    Some(rest) => match Self::sender_text(rest) {
                        Some((sender, text)) => Line::Message { ts_min: ts, sender, text },
                        None => Line::System { ts_min: Some(ts), text: rest.to_owned() },
                    },
                };
            }
            if let Some(c) = D_EN.captures(line)
                && let (Some(mo), Ok(d), Ok(y)) = (month_en(&c[1]), c[2].parse(), c[3].parse())
                && let Some(ts) = civil_to_ms(y, mo, d, 0, 0, 0, self.tz)
            {
                self.day = Some((y, mo, d));
                return Line::Day(ts);
            }
        }
        if line.starts_with("저장한 날짜") || line.starts_with("Date Saved") {
            return Line::Header;
        }
        if SYSTEM.is_match(line) {
            return Line::System { ts_min: None, text: line.to_owned() };
        }
        Line::Other
    }
}

/// Reads one KakaoTalk export (raw bytes, any supported encoding).
pub fn read(file: &str, bytes: &[u8], tz: Tz) -> Result<Export, ReadError> {
    let (text, _encoding) = decode(file, bytes)?;
    let hash = short_hash(bytes, 16);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines: Vec<&str> = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let (layout, title, title_line) = detect(&lines);
    let mut builder = Builder::new(file, &hash, tz);
    if layout == Layout::MacCsv {
        read_csv(&mut builder, text);
    } else {
        let mut parser = Parser { tz, day: None };
        let mut placed_any = false;
        for (i, raw) in lines.iter().enumerate() {
            let n = i + 1;
            // The header lines: the title line and the saved date.
            if Some(i) == title_line {
                continue;
            }
            match parser.line(layout, raw) {
                Line::Message { ts_min, sender, text } => {
                    placed_any = true;
                    let kind = if is_media(&text) { MessageKind::Media } else { MessageKind::Text };
                    builder.push(n, ts_min, Sender::named(sender), text, kind);
                }
                Line::System { ts_min, text } => {
                    placed_any = true;
                    let ts = ts_min.or(builder.last_minute).or(builder.day_start);
                    match ts {
                        Some(ts) => builder.push(n, ts, Sender::named(""), text, MessageKind::Notice),
                        None => {
                            builder.problem(n, format!("expected a timestamp before this system line, found {raw:?}"))
                        }
                    }
                }
                Line::Day(ts) => {
                    builder.day_start = Some(ts);
                    builder.flush_blanks();
                }
                Line::Header => {}
                Line::Other => {
                    if raw.trim().is_empty() {
                        builder.pending_blanks += 1;
                    } else if !builder.continue_last(raw) {
                        if !placed_any && layout == Layout::Headerless {
                            return Err(ReadError::new(
                                file,
                                n,
                                format!(
                                    "expected a KakaoTalk export (a header like `… 님과 카카오톡 대화`, `KakaoTalk Chats with …`, `… with KakaoTalk Chats`, `Date,User,Message`, or a message line like `2024. 1. 2. 오후 3:04, 이름 : 내용`), found {:?}",
                                    raw
                                ),
                            ));
                        }
                        builder.problem(n, format!("expected a message line (`<date> <time>, <name> : <text>`), found {raw:?}; no earlier message to attach it to"));
                    }
                }
            }
        }
    }
    if builder.messages.is_empty() && builder.problems.is_empty() {
        return Err(ReadError::new(file, lines.len().max(1), "expected at least one message, found none"));
    }
    let mut participants: Vec<String> = Vec::new();
    for m in &builder.messages {
        if !m.sender.name.is_empty() && !participants.contains(&m.sender.name) {
            participants.push(m.sender.name.clone());
        }
    }
    let title = if title.is_empty() {
        std::path::Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        title
    };
    Ok(Export {
        conversations: vec![Conversation {
            kind: SourceKind::KakaoTalk,
            key: format!("kakao:{hash}"),
            title,
            participants,
            messages: builder.messages,
        }],
        problems: builder.problems,
    })
}

struct Builder<'a> {
    tz: Tz,
    file: &'a str,
    hash: &'a str,
    messages: Vec<Message>,
    problems: Vec<Problem>,
    last_minute: Option<i64>,
    day_start: Option<i64>,
    seq: i64,
    pending_blanks: usize,
}

impl<'a> Builder<'a> {
    fn new(file: &'a str, hash: &'a str, tz: Tz) -> Self {
        Self {
            tz,
            file,
            hash,
            messages: Vec::new(),
            problems: Vec::new(),
            last_minute: None,
            day_start: None,
            seq: 0,
            pending_blanks: 0,
        }
    }

    fn problem(&mut self, line: usize, message: String) {
        self.problems.push(Problem { file: self.file.to_owned(), line, message });
    }

    fn flush_blanks(&mut self) {
        self.pending_blanks = 0;
    }

    fn push(&mut self, line: usize, minute: i64, sender: Sender, text: String, kind: MessageKind) {
        self.pending_blanks = 0;
        if self.last_minute == Some(minute) {
            self.seq += 1;
        } else {
            self.seq = 0;
        }
        // Never go back in time within a file (a later line at an earlier minute keeps order).
        let mut ts = minute + self.seq.min(59_999);
        if let Some(prev) = self.messages.last()
            && ts <= prev.ts
        {
            ts = prev.ts + 1;
        }
        self.last_minute = Some(minute);
        let index = self.messages.len();
        self.messages.push(Message::new(
            format!("{}:{}", self.hash, index),
            sender,
            ts,
            text,
            kind,
            format!("{}:{}", self.file, line),
        ));
    }

    /// Appends an unprefixed line to the previous message (a multi-line message).
    fn continue_last(&mut self, line: &str) -> bool {
        let blanks = std::mem::take(&mut self.pending_blanks);
        let Some(last) = self.messages.last_mut() else { return false };
        for _ in 0..blanks {
            last.body.push('\n');
        }
        last.body.push('\n');
        last.body.push_str(line);
        if last.kind == MessageKind::Media {
            last.kind = MessageKind::Text;
        }
        true
    }
}

/// macOS CSV: `Date,User,Message`, RFC 4180 quoting (messages may span lines).
fn read_csv(builder: &mut Builder<'_>, text: &str) {
    let records = csv_records(text);
    for (line, fields) in records.into_iter().skip(1) {
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        if fields.len() != 3 {
            builder.problem(line, format!("expected 3 fields (Date,User,Message), found {}", fields.len()));
            continue;
        }
        let Some(ts) = parse_iso(&fields[0], builder.tz) else {
            builder.problem(line, format!("expected a date like 2024-01-02 15:04:05, found {:?}", fields[0]));
            continue;
        };
        let (sender, kind) = if fields[1].is_empty() {
            (Sender::named(""), MessageKind::Notice)
        } else if is_media(&fields[2]) {
            (Sender::named(fields[1].clone()), MessageKind::Media)
        } else {
            (Sender::named(fields[1].clone()), MessageKind::Text)
        };
        let kind = if kind == MessageKind::Text && SYSTEM.is_match(&fields[2]) && fields[1].is_empty() {
            MessageKind::Notice
        } else {
            kind
        };
        builder.push(line, ts, sender, fields[2].clone(), kind);
    }
}

fn parse_iso(s: &str, tz: Tz) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-');
    let (y, mo, dd) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let mut t = time.split(':');
    let (h, mi) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec = t.next().map(|x| x.parse().ok()).unwrap_or(Some(0))?;
    civil_to_ms(y, mo, dd, h, mi, sec, tz)
}

/// Splits CSV text into records, each with the line number it starts on.
fn csv_records(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (true, '\r') if chars.peek() == Some(&'\n') => {}
            (true, '\n') => {
                line += 1;
                field.push('\n');
            }
            (true, c) => field.push(c),
            (false, '"') => in_quotes = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                out.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push((start, fields));
    }
    out
}

/// Generates a realistic Android-Korean export with `n` messages (throughput measurements).
pub fn generate(n: usize) -> String {
    let names = ["박영우", "김민기", "강수지", "회원님", "이서연", "최준호"];
    let texts = [
        "안녕하세요 오늘 회의 자료 공유드립니다",
        "네 확인했습니다",
        "<사진>",
        "다음 주 일정은 어떻게 되나요?\n화요일 오전이 좋겠습니다",
        "감사합니다 ^^",
        "보고서 초안 검토 부탁드립니다. 수정 사항은 댓글로 남겨주세요",
    ];
    let mut out = String::from("업무 협의방 님과 카카오톡 대화\n저장한 날짜 : 2024년 12월 31일 오후 11:59\n\n");
    // Start 2020-01-01 09:00, 3 messages a minute.
    let mut minute: i64 = 0;
    for i in 0..n {
        if i % 3 == 0 && i > 0 {
            minute += 1;
        }
        let total = 9 * 60 + minute;
        let day = total / (24 * 60);
        let (h, mi) = ((total % (24 * 60)) / 60, total % 60);
        let days0 = super::model::days_from_civil(2020, 1, 1) + day;
        let (y, mo, d) = civil_from_days(days0);
        let (ampm, h12) = if h < 12 {
            ("오전", if h == 0 { 12 } else { h })
        } else {
            ("오후", if h == 12 { 12 } else { h - 12 })
        };
        out.push_str(&format!(
            "{y}년 {mo}월 {d}일 {ampm} {h12}:{mi:02}, {} : {} #{i}\n",
            names[i % names.len()],
            texts[i % texts.len()]
        ));
    }
    out
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
