//! The command line as scripts see it: JSON errors and exit codes.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn hotmemctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotmemctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_missing_guest_is_a_session_error_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = hotmemctl(&["--json", "status", "--dir", path]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = &json["error"];
    assert_eq!(error["kind"], "session", "{json}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no running guest"),
        "{json}"
    );
    assert_eq!(error["diagnostics"], "", "{json}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hotmemctl: error:"), "{stderr}");
}

fn up(dir: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--json",
        "up",
        "--kernel",
        "/nonexistent/bzImage",
        "--initrd",
        "/nonexistent/initrd",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    hotmemctl(&args)
}

#[test]
fn a_bad_config_and_a_failing_qemu_have_their_own_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let out = up(dir.path(), &["--smp", "0"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "config", "{json}");

    // QEMU starts and exits at once: its log is in the diagnostics.
    let out = up(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(71), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "vmm", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    if message.contains("cannot start") {
        eprintln!("no QEMU here (make deps installs it): {message}");
        return;
    }
    let diagnostics = json["error"]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("qemu.log"), "{json}");
    assert!(
        !json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("qemu.log"),
        "the message is the error alone: {json}"
    );
}

#[test]
fn durations_without_a_unit_are_usage_errors() {
    let out = hotmemctl(&["exec", "--dir", "d", "--timeout", "30", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid duration"), "{stderr}");
}
