//! The `ieum-bridge` command line: --dry-run summaries, clear errors (unknown layout, missing
//! options), the generator, and `webhook add|list|remove` (a secret shown once, never stored).

use std::process::Command;

fn bridge(args: &[&str]) -> (bool, String, String) {
    // The manifest dir is read at run time: a target dir shared by clones at other paths
    // may hold a test binary built in another clone, with that clone's path compiled in.
    let out = Command::new(env!("CARGO_BIN_EXE_ieum-bridge"))
        .args(args)
        .current_dir(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn dry_run_summarises_each_conversation() {
    let (ok, out, err) = bridge(&[
        "import",
        "kakaotalk",
        "tests/fixtures/kakao_android_ko.txt",
        "tests/fixtures/kakao_ios_ko.txt",
        "--dry-run",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("conversation \"박영우, 김민기, 강수지\""), "{out}");
    assert!(out.contains("  messages: 8"), "{out}");
    assert!(out.contains("  first: 2015-07-09 20:34:00.000 +09:00"), "{out}");
    assert!(out.contains("  last:  2015-07-15 09:10:00.000 +09:00"), "{out}");
    assert!(out.contains("conversation \"정책기획팀\""), "{out}");
    assert!(out.contains("problems: 0"), "{out}");
    let (ok, out, _) =
        bridge(&["import", "kakaotalk", "tests/fixtures/kakao_android_ko.txt", "--dry-run", "--tz", "+00:00"]);
    assert!(ok);
    assert!(out.contains("  first: 2015-07-09 20:34:00.000 +00:00"), "{out}");
    let (ok, out, _) = bridge(&["import", "mbox", "tests/fixtures/mail.mbox", "--dry-run"]);
    assert!(ok);
    assert!(out.contains("thread replies: 2, reactions: 0, attachments: 1"), "{out}");
}

#[test]
fn errors_are_clear() {
    let (ok, _, err) = bridge(&["import", "kakaotalk", "tests/fixtures/kakao_unknown.txt", "--dry-run"]);
    assert!(!ok);
    assert!(
        err.contains("ieum-bridge: error: tests/fixtures/kakao_unknown.txt:1: expected a KakaoTalk export"),
        "{err}"
    );
    let (ok, _, err) = bridge(&["import", "kakaotalk", "tests/fixtures/kakao_android_ko.txt"]);
    assert!(!ok);
    assert!(err.contains("--homeserver"), "{err}");
    let (ok, _, err) =
        bridge(&["import", "kakaotalk", "tests/fixtures/kakao_android_ko.txt", "--dry-run", "--tz", "Asia/Seoul"]);
    assert!(!ok);
    assert!(err.contains("--tz: expected a fixed offset like +09:00"), "{err}");
    let (ok, _, err) = bridge(&["webhook"]);
    assert!(!ok);
    assert!(err.contains("--registration") && err.contains("--hooks"), "{err}");
}

#[test]
fn webhook_hooks_are_added_listed_and_removed() {
    let dir = std::env::temp_dir().join(format!("ieum-bridge-cli-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hooks = dir.join("hooks.toml");
    let hooks = hooks.to_str().unwrap();
    let (ok, out, err) = bridge(&[
        "webhook",
        "add",
        "grafana",
        "--hooks",
        hooks,
        "--room",
        "#alerts:ieum.test",
        "--display-name",
        "Grafana",
        "--listen",
        "127.0.0.1:9123",
    ]);
    assert!(ok, "{err}");
    let url = out.trim();
    let secret = url.strip_prefix("http://127.0.0.1:9123/hooks/").expect(url);
    assert_eq!(secret.len(), 64);
    assert!(err.contains("shown only once"), "{err}");
    let (ok, out, _) = bridge(&[
        "webhook",
        "add",
        "ci",
        "--hooks",
        hooks,
        "--room",
        "!r:ieum.test",
        "--public-url",
        "https://hooks.example.org/",
    ]);
    assert!(ok);
    assert!(out.starts_with("https://hooks.example.org/hooks/"), "{out}");
    let (ok, _, err) = bridge(&["webhook", "add", "ci", "--hooks", hooks, "--room", "!r:ieum.test"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = bridge(&["webhook", "add", "bad", "--hooks", hooks, "--room", "alerts"]);
    assert!(!ok && err.contains("room: expected a room id"), "{err}");

    let (ok, out, _) = bridge(&["webhook", "list", "--hooks", hooks]);
    assert!(ok);
    assert_eq!(out, "grafana\t#alerts:ieum.test\tdisplay name \"Grafana\"\nci\t!r:ieum.test\n");
    let file = std::fs::read_to_string(hooks).unwrap();
    assert!(!file.contains(secret) && !out.contains(secret));

    let (ok, _, err) = bridge(&["webhook", "remove", "grafana", "--hooks", hooks]);
    assert!(ok, "{err}");
    let (_, out, _) = bridge(&["webhook", "list", "--hooks", hooks]);
    assert_eq!(out, "ci\t!r:ieum.test\n");
    let (ok, _, err) = bridge(&["webhook", "remove", "grafana", "--hooks", hooks]);
    assert!(!ok && err.contains("no hook named \"grafana\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generator_writes_n_messages() {
    let (ok, out, _) = bridge(&["gen-kakaotalk", "250"]);
    assert!(ok);
    assert!(out.starts_with("업무 협의방 님과 카카오톡 대화\n"));
    assert_eq!(out.lines().filter(|l| l.contains("#")).count(), 250);
}
