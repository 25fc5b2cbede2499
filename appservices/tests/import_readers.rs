//! Reader tests for `ieum-bridge import`: every KakaoTalk layout and encoding, Slack zips
//! (threads, reactions, edits, files, mentions, bad archives and JSON), mbox (MIME, encoded
//! words, threads, attachments), and the pure parts of the client (mapping, ghosts, content).

use std::collections::{BTreeMap, HashMap};

use ieum_appservices::import::client::{Registration, content_for, parse_mapping, txn_id};
use ieum_appservices::import::model::{MessageKind, Tz, civil_to_ms};
use ieum_appservices::import::{kakaotalk, mbox, slack};

fn fixture(name: &str) -> (String, Vec<u8>) {
    let path = format!(
        "{}/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    );
    (name.to_owned(), std::fs::read(&path).unwrap())
}

fn kakao(name: &str) -> ieum_appservices::import::model::Export {
    let (n, b) = fixture(name);
    kakaotalk::read(&n, &b, Tz::SEOUL).unwrap()
}

fn kst(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    civil_to_ms(y, mo, d, h, mi, 0, Tz::SEOUL).unwrap()
}

#[test]
fn kakao_android_korean() {
    let e = kakao("kakao_android_ko.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "박영우, 김민기, 강수지");
    let m = &c.messages;
    assert_eq!(m.len(), 8);
    assert_eq!(m[0].kind, MessageKind::Notice);
    assert_eq!(m[0].body, "박영우님이 김민기님과 강수지님을 초대했습니다.");
    assert_eq!(m[0].sender.name, "");
    // Same minute: minute + sequence milliseconds.
    assert_eq!(m[0].ts, kst(2015, 7, 9, 20, 34));
    assert_eq!(m[1].ts, kst(2015, 7, 9, 20, 34) + 1);
    assert_eq!(m[2].ts, kst(2015, 7, 9, 20, 34) + 2);
    assert_eq!((m[1].sender.name.as_str(), m[1].body.as_str()), ("박영우", "안녕하세요 다들 반갑습니다"));
    // Multi-line with a blank line inside; the exporter as 회원님.
    assert_eq!(m[3].sender.name, "회원님");
    assert_eq!(m[3].body, "네 맞아요\n내일 회의는 10시입니다\n\n장소는 3층 회의실");
    assert_eq!(m[4].kind, MessageKind::Media);
    assert_eq!(m[4].body, "<사진>");
    assert_eq!(m[5].body, "자료 올렸습니다 : 확인 부탁드려요");
    // 오전 12:05 is just after midnight.
    assert_eq!(m[6].ts, kst(2015, 7, 15, 0, 5));
    assert_eq!(m[7].kind, MessageKind::Notice);
    assert_eq!(m[7].origin, "kakao_android_ko.txt:15");
    // Strictly increasing timestamps: order survives.
    assert!(m.windows(2).all(|w| w[0].ts < w[1].ts));
}

#[test]
fn kakao_encodings_all_read_the_same() {
    let base = kakao("kakao_android_ko.txt");
    for f in ["kakao_android_ko_euckr.txt", "kakao_android_ko_bom.txt", "kakao_android_ko_utf16.txt"] {
        let (n, b) = fixture(f);
        let (_, enc) = kakaotalk::decode(&n, &b).unwrap();
        assert!(["EUC-KR", "UTF-8", "UTF-16LE"].contains(&enc), "{f}: {enc}");
        let e = kakao(f);
        assert!(e.problems.is_empty(), "{f}: {:?}", e.problems);
        let bodies: Vec<_> = e.conversations[0].messages.iter().map(|m| (&m.sender.name, &m.body, m.ts)).collect();
        let want: Vec<_> = base.conversations[0].messages.iter().map(|m| (&m.sender.name, &m.body, m.ts)).collect();
        assert_eq!(bodies, want, "{f}");
    }
    assert_eq!(kakaotalk::decode("x", &fixture("kakao_android_ko_euckr.txt").1).unwrap().1, "EUC-KR");
}

#[test]
fn kakao_invalid_bytes_are_a_clear_error() {
    let err = kakaotalk::read("bad.txt", b"abc\n\xff\xff\xff\xfe\x80\n", Tz::SEOUL).unwrap_err();
    assert_eq!(err.file, "bad.txt");
    assert_eq!(err.line, 2);
    assert!(err.message.contains("EUC-KR"), "{err}");
}

#[test]
fn kakao_android_english() {
    let e = kakao("kakao_android_en.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "Park Youngwoo, Kim Minki");
    let m = &c.messages;
    assert_eq!(m.len(), 4);
    assert_eq!(m[1].sender.name, "you");
    assert_eq!(m[1].body, "Hi!\nsecond line of my message");
    assert_eq!(m[1].ts, kst(2015, 7, 9, 20, 34) + 1);
    assert_eq!(m[2].kind, MessageKind::Media);
    assert_eq!(m[3].ts, kst(2015, 7, 10, 0, 10));
}

#[test]
fn kakao_ios_korean() {
    let e = kakao("kakao_ios_ko.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "정책기획팀");
    let m = &c.messages;
    assert_eq!(m.len(), 5);
    assert_eq!(m[0].kind, MessageKind::Notice);
    assert_eq!(m[2].kind, MessageKind::Media);
    assert_eq!(m[3].body, "여러 줄 메시지\n두 번째 줄");
    assert_eq!(m[4].ts, kst(2015, 7, 10, 9, 0));
}

#[test]
fn kakao_windows_pc() {
    let e = kakao("kakao_pc.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "기획재정 TF");
    let m = &c.messages;
    assert_eq!(m.len(), 5, "{m:#?}");
    assert_eq!((m[0].sender.name.as_str(), m[0].ts), ("수지", kst(2015, 8, 1, 14, 37)));
    assert_eq!(m[1].kind, MessageKind::Media);
    assert_eq!(m[2].body, "확인했습니다\n내용이 길어서 두 줄입니다");
    assert_eq!(m[3].kind, MessageKind::Notice);
    assert_eq!(m[3].body, "민기님이 나갔습니다.");
    assert_eq!(m[4].ts, kst(2015, 8, 2, 0, 1));
}

#[test]
fn kakao_mac_csv() {
    let e = kakao("kakao_mac.csv");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let m = &e.conversations[0].messages;
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].body, "안녕하세요, 오늘 회의 자료입니다");
    assert_eq!(m[1].body, "여러 줄\n메시지, \"인용\" 포함");
    assert_eq!(m[1].ts, kst(2024, 12, 9, 9, 15) + 1);
    assert_eq!(m[2].ts, kst(2024, 12, 9, 9, 16) + 30_000);
    assert_eq!(m[2].kind, MessageKind::Media);
}

#[test]
fn kakao_newer_variants() {
    let e = kakao("kakao_newer.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "예산팀");
    let m = &c.messages;
    assert_eq!(m.len(), 5, "{m:#?}");
    assert_eq!(m[1].sender.name, "최준호");
    assert_eq!(m[1].ts, kst(2024, 12, 9, 13, 6));
    assert_eq!(m[2].ts, kst(2024, 12, 9, 13, 7));
    assert_eq!(m[3].kind, MessageKind::Notice);
    assert_eq!(m[4].kind, MessageKind::Notice);
    assert!(m[4].body.starts_with("운영정책을"));
}

#[test]
fn kakao_unknown_layout_is_a_clear_error() {
    let (n, b) = fixture("kakao_unknown.txt");
    let err = kakaotalk::read(&n, &b, Tz::SEOUL).unwrap_err();
    assert_eq!(err.line, 1);
    assert!(err.to_string().starts_with("kakao_unknown.txt:1: expected a KakaoTalk export"), "{err}");
    assert!(err.message.contains("found \"this is not a KakaoTalk export\""), "{err}");
}

#[test]
fn kakao_unplaceable_line_is_reported_not_dropped() {
    let text = "정책팀 님과 카카오톡 대화\n저장한 날짜 : 2015년 8월 3일 오전 12:51\n\n어디에도 붙일 수 없는 줄\n2015년 7월 9일 오후 8:34, 박영우 : 안녕\n";
    let e = kakaotalk::read("t.txt", text.as_bytes(), Tz::SEOUL).unwrap();
    assert_eq!(e.conversations[0].messages.len(), 1);
    assert_eq!(e.problems.len(), 1);
    assert!(e.problems[0].to_string().starts_with("t.txt:4: expected a message line"), "{}", e.problems[0]);
}

#[test]
fn kakao_tz_option() {
    let (n, b) = fixture("kakao_android_ko.txt");
    let utc = kakaotalk::read(&n, &b, Tz(0)).unwrap();
    let seoul = kakao("kakao_android_ko.txt");
    assert_eq!(utc.conversations[0].messages[1].ts - seoul.conversations[0].messages[1].ts, 9 * 3600 * 1000);
}

#[test]
fn kakao_generated_export_reads_back() {
    let text = kakaotalk::generate(1000);
    let e = kakaotalk::read("gen.txt", text.as_bytes(), Tz::SEOUL).unwrap();
    assert!(e.problems.is_empty());
    let m = &e.conversations[0].messages;
    assert_eq!(m.len(), 1000);
    assert!(m.windows(2).all(|w| w[0].ts < w[1].ts));
    assert!(m[999].body.ends_with("#999"));
}

fn slack_zip() -> Vec<u8> {
    slack::build_zip(&[
        (
            "users.json",
            r#"[{"id":"U01","name":"minki","real_name":"Kim Minki","profile":{"display_name":"김민기"}},
               {"id":"U02","name":"suji","real_name":"Kang Suji","profile":{"display_name":""}}]"#,
        ),
        ("channels.json", r#"[{"id":"C01","name":"general","members":["U01","U02"]}]"#),
        ("groups.json", r#"[{"id":"G01","name":"budget-private","members":["U01"]}]"#),
        ("dms.json", r#"[{"id":"D01","members":["U01","U02"]}]"#),
        ("mpims.json", "[]"),
        (
            "general/2020-01-01.json",
            r#"[{"type":"message","subtype":"channel_join","user":"U02","text":"<@U02> has joined the channel","ts":"1577836800.000100"},
                {"type":"message","user":"U01","text":"회의 자료 &lt;초안&gt; 봐주세요 <@U02>","ts":"1577836860.000200",
                 "thread_ts":"1577836860.000200","reply_count":1,
                 "reactions":[{"name":"+1","users":["U02"],"count":1},{"name":"partyparrot","users":["U01","U02"],"count":2}]},
                {"type":"message","user":"U02","text":"확인했습니다 <https://example.go.kr|링크>","ts":"1577836920.123456",
                 "thread_ts":"1577836860.000200","parent_user_id":"U01","edited":{"user":"U02","ts":"1577837000.000000"}}]"#,
        ),
        (
            "general/2020-01-02.json",
            r#"[{"type":"message","subtype":"file_share","user":"U01","text":"","ts":"1577923200.000000",
                 "files":[{"id":"F1","name":"budget.xlsx","mimetype":"application/vnd.ms-excel","url_private":"https://files.slack.com/budget.xlsx"}]},
                {"type":"message","subtype":"bot_message","username":"alerts","bot_id":"B01","text":"서버 점검 예정","ts":"1577923300.000000"},
                {"type":"message","text":"no sender","ts":"1577923400.000000"}]"#,
        ),
        (
            "budget-private/2020-01-01.json",
            r#"[{"type":"message","user":"U01","text":"비공개 채널","ts":"1577836800.000000"}]"#,
        ),
        ("D01/2020-01-03.json", r#"[{"type":"message","user":"U02","text":"DM 입니다","ts":"1578009600.000000"}]"#),
    ])
}

#[test]
fn slack_export() {
    let e = slack::read("export.zip", std::io::Cursor::new(slack_zip())).unwrap();
    assert_eq!(e.conversations.len(), 3);
    let general = &e.conversations[0];
    assert_eq!(general.title, "#general");
    let m = &general.messages;
    assert_eq!(m.len(), 5);
    assert_eq!(m[0].kind, MessageKind::Notice);
    assert_eq!(m[1].sender.name, "김민기");
    assert_eq!(m[1].sender.source_id.as_deref(), Some("U01"));
    assert_eq!(m[1].body, "회의 자료 <초안> 봐주세요 @Kang Suji");
    assert_eq!(m[1].mentions, vec!["Kang Suji".to_owned()]);
    assert_eq!(m[1].ts, 1_577_836_860_000);
    assert_eq!(m[1].thread_root, None);
    assert_eq!(m[1].reactions.len(), 2);
    assert_eq!(m[1].reactions[0].key, "👍");
    assert_eq!(m[1].reactions[1].key, ":partyparrot:");
    assert_eq!(m[1].reactions[1].senders.len(), 2);
    assert_eq!(m[2].thread_root.as_deref(), Some("slack:C01:1577836860.000200"));
    assert_eq!(m[2].ts, 1_577_836_920_123);
    assert_eq!(m[2].edited_ts, Some(1_577_837_000_000));
    assert_eq!(m[2].body, "확인했습니다 링크 (https://example.go.kr)");
    assert_eq!(m[3].kind, MessageKind::Media);
    assert_eq!(m[3].attachments[0].name, "budget.xlsx");
    assert!(m[3].body.contains("budget.xlsx"));
    assert_eq!(m[4].sender.name, "alerts");
    // The message without a sender is a problem with its place, not a silent drop.
    assert_eq!(e.problems.len(), 1);
    assert_eq!(
        e.problems[0].to_string(),
        "export.zip:general/2020-01-02.json:3: expected \"user\", \"username\" or \"bot_id\", found none"
    );
    assert_eq!(e.conversations[1].title, "🔒budget-private");
    assert_eq!(e.conversations[2].title, "김민기, Kang Suji");
    assert_eq!(e.conversations[2].messages[0].body, "DM 입니다");
}

#[test]
fn slack_truncated_zip_is_a_clear_error() {
    let zip = slack_zip();
    let err = slack::read("export.zip", std::io::Cursor::new(zip[..zip.len() / 2].to_vec())).unwrap_err();
    assert!(err.to_string().starts_with("export.zip:0: expected a Slack export zip archive"), "{err}");
    let err = slack::read("x.zip", std::io::Cursor::new(b"not a zip".to_vec())).unwrap_err();
    assert!(err.message.contains("zip"), "{err}");
}

#[test]
fn slack_malformed_json_names_member_and_line() {
    let zip = slack::build_zip(&[
        ("users.json", "[]"),
        ("channels.json", r#"[{"id":"C1","name":"general"}]"#),
        ("general/2020-01-01.json", "[\n{\"type\":\"message\",\n\"ts\": }\n]"),
    ]);
    let err = slack::read("e.zip", std::io::Cursor::new(zip)).unwrap_err();
    assert_eq!(err.file, "e.zip:general/2020-01-01.json");
    assert_eq!(err.line, 3);
    let zip = slack::build_zip(&[("channels.json", "[]")]);
    let err = slack::read("e.zip", std::io::Cursor::new(zip)).unwrap_err();
    assert!(err.message.contains("users.json"), "{err}");
}

#[test]
fn mbox_threads_encodings_attachments() {
    let (n, b) = fixture("mail.mbox");
    let e = mbox::read(&n, &b).unwrap();
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let m = &e.conversations[0].messages;
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].sender.name, "김민기"); // EUC-KR B encoded word
    assert_eq!(m[0].sender.source_id.as_deref(), Some("minki@example.go.kr"));
    assert_eq!(m[0].body, "2025년 예산 협의\n\n안녕하세요, 예산안 초안을 보내드립니다.\n검토 부탁드립니다.");
    assert_eq!(m[0].ts, kst(2015, 8, 3, 9, 0));
    assert_eq!(m[0].attachments.len(), 1);
    assert_eq!(m[0].attachments[0].name, "budget.xls");
    assert_eq!(m[0].attachments[0].data.as_deref(), Some(&b"PK fake xlsx bytes \x00\x01\x02 budget"[..]));
    assert!(m[1].body.starts_with("회신: 예산\n\n확인했습니다.\nFrom the finance office"), "{}", m[1].body); // EUC-KR Q, >From unescaped
    assert_eq!(m[1].thread_root.as_deref(), Some("mail:<root-1@example.go.kr>"));
    assert_eq!(m[2].thread_root.as_deref(), Some("mail:<root-1@example.go.kr>"));
    assert_eq!(m[2].reply_to.as_deref(), Some("mail:<reply-2@example.go.kr>"));
    assert_eq!(m[2].body, "Re: budget\n\nPlain part wins.");
    assert_eq!(m[3].thread_root, None);
    assert_eq!(m[3].sender.name, "other@example.org");
}

#[test]
fn mbox_bad_input() {
    let err = mbox::read("x.mbox", b"Subject: hi\n\nno separator").unwrap_err();
    assert!(err.to_string().starts_with("x.mbox:1: expected an mbox"), "{err}");
    let e = mbox::read("y.mbox", b"From a@b Mon\nFrom: a@b\nDate: garbage\n\nbody\n").unwrap();
    assert_eq!(e.conversations[0].messages.len(), 0);
    assert_eq!(e.problems.len(), 1);
    assert!(e.problems[0].to_string().starts_with("y.mbox:2: expected a Date: header"), "{}", e.problems[0]);
}

#[test]
fn encoded_words() {
    assert_eq!(mbox::decode_words("=?UTF-8?Q?caf=C3=A9_au_lait?="), "café au lait");
    assert_eq!(mbox::decode_words("=?UTF-8?B?7JWI?= =?UTF-8?B?64WV?= 하세요"), "안녕 하세요");
    assert_eq!(mbox::decode_words("plain =?bogus"), "plain =?bogus");
    assert_eq!(mbox::parse_date("3 Aug 2015 00:29 GMT"), civil_to_ms(2015, 8, 3, 0, 29, 0, Tz(0)));
}

const REG: &str = "id: bridge\nurl: null\nas_token: secret_as_0123456789\nhs_token: secret_hs_0123456789\nsender_localpart: bridgebot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@bridge_.*:example\\.org'\n  aliases: []\n  rooms: []\n";

#[test]
fn registration_ghosts_and_mapping() {
    let reg = Registration::parse("reg.yaml", REG).unwrap();
    assert_eq!(reg.as_token, "secret_as_0123456789");
    let g = reg.ghost("kakao", "박영우", "example.org").unwrap();
    assert!(g.starts_with("@bridge_kakao_") && g.ends_with(":example.org"), "{g}");
    assert_eq!(g, reg.ghost("kakao", "박영우", "example.org").unwrap());
    assert_ne!(g, reg.ghost("kakao", "김민기", "example.org").unwrap());
    let err = reg.ghost("kakao", "x", "other.org").unwrap_err();
    assert!(err.contains("outside"), "{err}");
    let err = Registration::parse("reg.yaml", "as_token: [").unwrap_err();
    assert!(err.starts_with("reg.yaml:"), "{err}");

    let m = parse_mapping("m.toml", "# names\n\"회원님\" = \"@alice:example.org\"\n").unwrap();
    assert_eq!(m["회원님"], "@alice:example.org");
    let m = parse_mapping("m.json", r#"{"U01": "@bridge_minki:example.org"}"#).unwrap();
    assert_eq!(m["U01"], "@bridge_minki:example.org");
    assert!(parse_mapping("m.toml", "a = not-a-user").unwrap_err().contains("expected a Matrix user id"));
    assert!(parse_mapping("m.toml", "garbage").unwrap_err().starts_with("m.toml:1:"));
}

#[test]
fn content_threads_and_pills() {
    let e = slack::read("export.zip", std::io::Cursor::new(slack_zip())).unwrap();
    let conv = &e.conversations[0];
    let mut events = BTreeMap::new();
    events.insert("slack:C01:1577836860.000200".to_owned(), "$root".to_owned());
    let mut users = HashMap::new();
    users.insert("Kang Suji".to_owned(), "@bridge_slack_x:example.org".to_owned());
    let mut last = HashMap::new();
    let c = content_for(&conv.messages[1], &events, &mut last, &users, conv);
    assert_eq!(c["msgtype"], "m.text");
    assert!(
        c["formatted_body"]
            .as_str()
            .unwrap()
            .contains("<a href=\"https://matrix.to/#/@bridge_slack_x:example.org\">Kang Suji</a>")
    );
    assert_eq!(c["m.mentions"]["user_ids"][0], "@bridge_slack_x:example.org");
    let c = content_for(&conv.messages[2], &events, &mut last, &users, conv);
    assert_eq!(c["m.relates_to"]["rel_type"], "m.thread");
    assert_eq!(c["m.relates_to"]["event_id"], "$root");
    assert_eq!(c["ieum.import"]["edited_ts"], 1_577_837_000_000i64);
    // Transaction ids are a pure function of the source id.
    assert_eq!(txn_id("a:1", ""), txn_id("a:1", ""));
    assert_ne!(txn_id("a:1", ""), txn_id("a:2", ""));
}

#[test]
fn kakao_windows_pc_english_with_leading_blank_line() {
    let e = kakao("kakao_pc_en.txt");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let c = &e.conversations[0];
    assert_eq!(c.title, "Budget TF");
    let m = &c.messages;
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].sender.name.as_str(), m[0].ts), ("Suji", kst(2015, 8, 1, 14, 37)));
    // 12:05 AM is earlier in the day than the line before: order is kept, not the clock.
    assert_eq!(m[1].body, "a message\nthat continues");
    assert!(m[1].ts > m[0].ts);
}
