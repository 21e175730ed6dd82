//! `hotmem-run --user/--seccomp` on the host: the function runs as the
//! given user with no supplementary groups, `no_new_privs` set, and the
//! seccomp filter refuses `prctl(PR_HOTMEM)`, mounts, `ptrace` and
//! `process_vm_readv` (the VM test `isolation.rs` checks it in a guest).
//!
//! Switching users needs root; the tests say so and pass vacuously when
//! the host test run is not root (the VM tests check the same as root).

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

const RUN: &str = env!("CARGO_BIN_EXE_hotmem-run");

fn run(args: &[&str]) -> Output {
    Command::new(RUN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `/proc/self/status` field `key` of a shell run through `hotmem-run args`.
fn status_field(args: &[&str], key: &str) -> String {
    let script = format!("grep '^{key}:' /proc/self/status");
    let mut all = args.to_vec();
    all.extend(["--no-bind", "--", "sh", "-c", &script]);
    let out = run(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_owned()
}

#[test]
fn no_new_privs_is_always_set() {
    assert_eq!(status_field(&[], "NoNewPrivs"), "1");
}

#[test]
fn user_switch_clears_groups() {
    if !is_root() {
        eprintln!("not root: cannot test switching users");
        return;
    }
    let out = run(&[
        "--no-bind",
        "--user",
        "65534:65533",
        "--",
        "sh",
        "-c",
        "id -u; id -g; id -G; grep ^CapEff: /proc/self/status",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3],
        ["65534", "65533", "65533"],
        "uid, gid, and no supplementary group but the gid"
    );
    assert_eq!(lines[3].split_whitespace().nth(1), Some("0000000000000000"));
    // The uid alone sets the gid to the same number.
    let out = run(&["--no-bind", "--user", "65534", "--", "id", "-g"]);
    assert_eq!(text(&out.stdout).trim(), "65534");
}

#[test]
fn partition_file_is_written_after_dropping_to_the_user() {
    if !is_root() {
        eprintln!("not root: cannot test switching users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A root-only directory: the file must be opened before the switch.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let file = dir.path().join("partition");
    let out = run(&[
        "--no-bind",
        "--user",
        "65534",
        "--partition-file",
        file.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "none\n");
}

#[test]
fn bad_users_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for bad in ["nobody", "1:2:3", "-5", ""] {
        let out = run(&[
            "--no-bind",
            "--user",
            bad,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("UID[:GID]"),
            "{}",
            text(&out.stderr)
        );
        assert!(!marker.exists());
    }
}

#[test]
fn seccomp_filter_refuses_binding_with_eperm() {
    if !std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists() {
        eprintln!("host kernel without seccomp filters");
        return;
    }
    assert_eq!(status_field(&["--seccomp"], "Seccomp"), "2");
    // The host kernel has no PR_HOTMEM: unfiltered, prctl says EINVAL...
    let out = run(&["--no-bind", "--", RUN, "--nonblock", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("HotMem is not available"),
        "{}",
        text(&out.stderr)
    );
    // ...under the filter it never gets there: EPERM.
    let out = run(&[
        "--no-bind",
        "--seccomp",
        "--",
        RUN,
        "--nonblock",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("binding needs CAP_SYS_RESOURCE"),
        "{}",
        text(&out.stderr)
    );
    // Other prctls still work (the inner hotmem-run sets no_new_privs).
    let out = run(&[
        "--no-bind",
        "--seccomp",
        "--",
        RUN,
        "--no-bind",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Mounting is refused with EPERM even for root.
    if is_root() {
        let mnt = tempfile::tempdir().unwrap();
        let out = run(&[
            "--no-bind",
            "--seccomp",
            "--",
            "mount",
            "-t",
            "tmpfs",
            "none",
            mnt.path().to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("ermission denied")
                || text(&out.stderr).contains("not permitted"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// Set by [`seccomp_filter_refuses_ptrace`] for [`ptrace_probe`]: `1` if
/// the probe runs under the filter, `0` if not.
const PROBE_FILTERED: &str = "HOTMEM_PROBE_FILTERED";

/// `ptrace(2)` and `process_vm_readv(2)`, run by
/// [`seccomp_filter_refuses_ptrace`] through `hotmem-run` with and without
/// the filter: with it both answer `EPERM`; without, `PTRACE_PEEKDATA` of a
/// process it does not trace answers `ESRCH` and reading its own memory
/// works.
#[test]
#[ignore = "run by seccomp_filter_refuses_ptrace, with and without the filter"]
fn ptrace_probe() {
    use nix::errno::Errno;
    use nix::sys::ptrace;
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    use nix::unistd::Pid;
    use std::io::IoSliceMut;

    let Ok(filtered) = std::env::var(PROBE_FILTERED) else {
        eprintln!("only meaningful when run by seccomp_filter_refuses_ptrace");
        return;
    };
    let peek = ptrace::read(Pid::from_raw(1), std::ptr::null_mut());
    let source = [7u8];
    let mut dest = [0u8];
    let remote = [RemoteIoVec {
        base: source.as_ptr() as usize,
        len: 1,
    }];
    let read = process_vm_readv(Pid::this(), &mut [IoSliceMut::new(&mut dest)], &remote);
    if filtered == "1" {
        assert_eq!(peek, Err(Errno::EPERM));
        assert_eq!(read, Err(Errno::EPERM));
    } else {
        assert_eq!(peek, Err(Errno::ESRCH));
        assert_eq!((read, dest[0]), (Ok(1), 7));
    }
}

#[test]
fn seccomp_filter_refuses_ptrace() {
    if !std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists() {
        eprintln!("host kernel without seccomp filters");
        return;
    }
    let me = std::env::current_exe().unwrap();
    for (filtered, flags) in [
        ("1", &["--no-bind", "--seccomp"][..]),
        ("0", &["--no-bind"][..]),
    ] {
        let out = Command::new(RUN)
            .args(flags)
            .arg("--")
            .arg(&me)
            .args(["--exact", "ptrace_probe", "--ignored", "--test-threads=1"])
            .env(PROBE_FILTERED, filtered)
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "filtered={filtered}: {stdout}{}",
            text(&out.stderr)
        );
    }
}
