//! Runs the real `hotmem-run` binary on the host (a kernel without HotMem).

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hotmem-run"))
        .args(args)
        .output()
        .expect("spawn hotmem-run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binding_fails_with_125_without_hotmem() {
    let (code, stderr) = run(&["--nonblock", "--", "true"]);
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("HotMem is not available"), "{stderr}");
}

#[test]
fn no_bind_joins_the_cgroup_and_execs() {
    let dir = std::env::temp_dir().join(format!("hotmem-run-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A plain directory stands in for the cgroup: cgroup.procs gets our pid.
    let (code, stderr) = run(&[
        "--no-bind",
        "--cgroup",
        dir.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(code, Some(7), "{stderr}");
    let pid: u32 = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 0);
    std::fs::remove_dir_all(&dir).unwrap();
    let (code, stderr) = run(&["--no-bind", "--cgroup", "/nonexistent/cg", "--", "true"]);
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("cannot join cgroup"), "{stderr}");
    let (code, _) = run(&["--no-bind", "--", "/nonexistent/prog"]);
    assert_eq!(code, Some(127));
}

#[test]
fn no_bind_conflicts_with_binding_options() {
    let (code, stderr) = run(&["--no-bind", "--nonblock", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn the_bind_timeout_is_a_duration() {
    // A unit is required: a bare number is a usage error, before binding.
    let (code, stderr) = run(&["--timeout", "200", "--", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid duration"), "{stderr}");
    let (code, stderr) = run(&["--timeout", "200ms", "--no-bind", "--", "true"]);
    assert_eq!(code, Some(2), "conflicts with --no-bind: {stderr}");
}
