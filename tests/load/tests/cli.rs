//! The `ieum-load` binary itself: its command line and the machine record a results table
//! is printed with. (Also: `cargo test --workspace` builds the binary here, so the CI's
//! benchmark smoke run uses it with `--no-build` instead of building the crates again with
//! another feature set.)

use std::process::Command;

fn ieum_load(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ieum-load")).args(args).output().expect("run ieum-load")
}

#[test]
fn help_lists_every_workload() {
    let out = ieum_load(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for workload in ["w1", "w2", "w3", "w9", "w4", "w5", "w8"] {
        assert!(help.contains(workload), "`run --help` does not mention {workload}:\n{help}");
    }
}

#[test]
fn machine_is_described_as_text_and_json() {
    let dir = std::env::temp_dir().join(format!("ieum-load-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("machine.json");
    let out = ieum_load(&["machine", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CPU"), "no CPU line");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(json.is_object(), "machine record is not an object: {json}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_arguments_are_refused_with_usage() {
    let out = ieum_load(&["run", "--no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
