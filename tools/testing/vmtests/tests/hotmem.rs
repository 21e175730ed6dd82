//! HotMem zone and partition tests on a real guest (kernel series in
//! `patches/`), using the generic sysfs online path and the C virtio-mem
//! driver in big-block mode to plug and unplug.  What happens inside the
//! guest is checked by the series' kselftests
//! (`tools/testing/selftests/mm/hotmem_*.c`), which the initramfs carries.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hotmem_host::Vm;
use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_proto::ExecArgs;
use hotmem_vmtests::{
    config, has_or_skip, hotmem_config, meminfo, plug, vmstat, OrPanic, BLOCK, PARTITION,
    PLUG_TIMEOUT,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The series' kselftests, built into the initramfs.
const GUEST_SELFTESTS: &str = "/usr/lib/hotmem/selftests";
/// How long one kselftest program may run in the guest (TCG is slow).
const SELFTEST_TIMEOUT: Duration = Duration::from_secs(1200);

/// Plugs `n` partitions, onlines them with the C driver and the generic
/// sysfs path (kselftest `hotmem_online`), and checks that they are free.
fn plug_free_partitions(vm: &mut Vm, n: u64) {
    vm.set_command_timeout(Duration::from_secs(300));
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    plug(vm, n * PARTITION);
    online_partitions(vm, n);
}

/// Kselftest `hotmem_online`: every offline block goes online into HotMem,
/// they form `n` free partitions, and nothing else lands there (3 tests).
fn online_partitions(vm: &mut Vm, n: u64) {
    kselftest_with(
        vm,
        "hotmem_online",
        &[],
        &[("HOTMEM_PARTITIONS", &n.to_string())],
        3,
    );
}

/// Runs kselftest `name` (`tests` tests) on one free partition, then
/// unplugs it and checks that it went on the fast path.
fn one_partition_then_fast_unplug(vm: &mut Vm, name: &str, tests: usize) {
    plug_free_partitions(vm, 1);
    kselftest(vm, name, tests);
    let fast_before = vmstat(vm, "hotmem_offline_fast");
    plug(vm, 0);
    assert_eq!(
        vmstat(vm, "hotmem_offline_fast") - fast_before,
        PARTITION / BLOCK
    );
    assert_eq!(meminfo(vm, "HotMemTotal"), 0);
}

/// Runs kselftest `name`: all `tests` must pass, none may skip.
fn kselftest(vm: &mut Vm, name: &str, tests: usize) {
    kselftest_with(vm, name, &[], &[], tests);
}

/// Runs kselftest `name` with harness arguments `args` (e.g. `-f empty`
/// for one fixture) and environment `env`: all `tests` must pass, none may
/// skip.
fn kselftest_with(vm: &mut Vm, name: &str, args: &[&str], env: &[(&str, &str)], tests: usize) {
    let path = format!("{GUEST_SELFTESTS}/{name}");
    let argv = std::iter::once(path.as_str())
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let timeout_ms = u64::try_from(SELFTEST_TIMEOUT.as_millis()).unwrap();
    let out = vm
        .exec_args(ExecArgs {
            argv,
            env,
            timeout_ms: Some(timeout_ms),
        })
        .or_panic(name);
    let report = format!("{}{}", out.stdout, out.stderr);
    eprintln!("{report}");
    let passed = report.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        out.success()
            && !report.contains("not ok")
            && !report.contains("# SKIP")
            && passed == tests,
        "{name} {args:?} failed or skipped ({passed} of {tests} passed):\n{report}\nconsole:\n{}",
        vm.console_tail(40)
    );
}

/// The built-in KUnit suite `suite` ran at boot and every case passed.
fn assert_kunit_passed(vm: &mut Vm, suite: &str) {
    let log = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    let result = log
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, msg)| msg.trim()))
        .find(|msg| msg.ends_with(&format!(" {suite}")) && msg.contains("ok "));
    let cases: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ok ") && l.contains(&format!("{suite}_test_")))
        .collect();
    assert!(
        matches!(result, Some(r) if r.starts_with("ok ")),
        "KUnit suite {suite}: {result:?}\n{}",
        cases.join("\n")
    );
    assert!(
        !cases.is_empty() && cases.iter().all(|c| !c.contains("not ok")),
        "KUnit cases of {suite}:\n{}",
        cases.join("\n")
    );
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_sysfs_online_and_fast_offline() {
    let mut vm = Vm::boot(&hotmem_config("hotmem_sysfs_online_and_fast_offline", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);

    plug(&mut vm, GIB);
    online_partitions(&mut vm, GIB / PARTITION);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), GIB / 1024);

    // Unplug everything: virtio-mem offlines and removes each block, and
    // every one of them must take the HotMem fast path.
    let fast_before = vmstat(&mut vm, "hotmem_offline_fast");
    let migrated_before = vmstat(&mut vm, "pgmigrate_success");
    plug(&mut vm, 0);
    let fast = vmstat(&mut vm, "hotmem_offline_fast") - fast_before;
    assert_eq!(fast, GIB / BLOCK, "blocks offlined on the fast path");
    assert_eq!(
        vmstat(&mut vm, "pgmigrate_success"),
        migrated_before,
        "the fast path migrated pages"
    );
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);
    assert_eq!(meminfo(&mut vm, "HotMemFree"), 0);
    let nr = vm
        .read_file("/sys/kernel/mm/hotmem/nr_partitions")
        .or_panic("nr_partitions");
    assert_eq!(nr.trim(), "0");
    vm.shutdown().or_panic("shutdown");
}

/// With `hotmem=off` the kernel is vanilla: no sysfs directory, no meminfo
/// lines, no `online_hotmem` online type (refused like any unknown type,
/// with EINVAL, by the auto-online policy, the boot parameter and a block),
/// no prctl.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_off_is_vanilla() {
    let mut cfg = hotmem_config("hotmem_off_is_vanilla", false);
    // Ignored like any unknown online type: the default policy stays.
    cfg.append = "memhp_default_state=online_hotmem hotmem=off".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=off guest");
    assert!(
        vm.read_file("/sys/kernel/mm/hotmem/enabled").is_err(),
        "/sys/kernel/mm/hotmem exists with hotmem=off"
    );
    let meminfo_text = vm.read_file("/proc/meminfo").or_panic("meminfo");
    assert!(
        !meminfo_text.contains("HotMem"),
        "HotMem lines in meminfo with hotmem=off:\n{meminfo_text}"
    );
    assert_kunit_passed(&mut vm, "hotmem");

    let policy = "/sys/devices/system/memory/auto_online_blocks";
    let before = vm.read_file(policy).or_panic("auto_online_blocks");
    assert_ne!(before.trim(), "online_hotmem");
    let err = vm.write_file(policy, "online_hotmem").unwrap_err();
    assert!(
        err.to_string().contains("Invalid argument"),
        "online_hotmem as auto-online policy with hotmem=off: {err}"
    );
    assert_eq!(vm.read_file(policy).or_panic("auto_online_blocks"), before);

    let out = vm
        .exec(&["hotmem-run", "--nonblock", "--", "true"])
        .or_panic("hotmem-run");
    assert!(!out.success(), "binding succeeded with hotmem=off");

    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    plug(&mut vm, BLOCK);
    let out = vm
        .exec_ok(&[
            "sh",
            "-c",
            // virtio-mem adds the memory shortly after the device acks.
            "for i in $(seq 100); do \
             grep -l offline /sys/devices/system/memory/memory*/state && exit 0; \
             sleep 0.1; done; exit 1",
        ])
        .or_panic("finding the plugged block");
    let state = out
        .stdout
        .lines()
        .next()
        .expect("an offline block")
        .to_owned();
    let err = vm.write_file(&state, "online_hotmem").unwrap_err();
    assert!(
        err.to_string().contains("Invalid argument"),
        "online_hotmem with hotmem=off: {err}"
    );
    assert_eq!(vm.read_file(&state).or_panic("state").trim(), "offline");
    // Refusing changed nothing: the block still onlines the ordinary way.
    vm.write_file(&state, "online_movable")
        .or_panic("online_movable after a refused online_hotmem");
    plug(&mut vm, 0);
    vm.shutdown().or_panic("shutdown");
}

/// `memhp_default_state=online_hotmem` is honoured wherever it stands on
/// the command line relative to `hotmem=on`.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_default_state_before_hotmem_on() {
    let mut cfg = hotmem_config("hotmem_default_state_before_hotmem_on", true);
    cfg.append = format!("memhp_default_state=online_hotmem {}", cfg.append);
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    let policy = vm
        .read_file("/sys/devices/system/memory/auto_online_blocks")
        .or_panic("auto_online_blocks");
    assert_eq!(policy.trim(), "online_hotmem");
    vm.shutdown().or_panic("shutdown");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_bind_route_oom_and_lifetime() {
    let mut vm = Vm::boot(&hotmem_config("hotmem_bind_route_oom_and_lifetime", true))
        .or_panic("booting a hotmem=on guest");
    plug_free_partitions(&mut vm, 2);
    kselftest(&mut vm, "hotmem_bind", 8);

    // Every instance has exited: the partitions unplug on the fast path.
    let fast_before = vmstat(&mut vm, "hotmem_offline_fast");
    plug(&mut vm, 0);
    assert_eq!(
        vmstat(&mut vm, "hotmem_offline_fast") - fast_before,
        2 * PARTITION / BLOCK
    );
    vm.shutdown().or_panic("shutdown");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_full_partition_does_not_stall_khugepaged() {
    let mut vm = Vm::boot(&hotmem_config(
        "hotmem_full_partition_does_not_stall_khugepaged",
        true,
    ))
    .or_panic("booting a hotmem=on guest");
    one_partition_then_fast_unplug(&mut vm, "hotmem_khugepaged", 1);
    vm.shutdown().or_panic("shutdown");
}

/// Poisoned pages (memory failure), in use and free, neither keep their
/// partition draining nor reach an instance; the partition still unplugs
/// on the fast path.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_hwpoisoned_pages_do_not_pin_partitions() {
    let mut vm = Vm::boot(&hotmem_config(
        "hotmem_hwpoisoned_pages_do_not_pin_partitions",
        true,
    ))
    .or_panic("booting a hotmem=on guest");
    if !has_or_skip(
        &mut vm,
        "/sys/devices/system/memory/hard_offline_page",
        "CONFIG_MEMORY_FAILURE",
    ) {
        vm.shutdown().or_panic("shutdown");
        return;
    }
    one_partition_then_fast_unplug(&mut vm, "hotmem_hwpoison", 2);
    vm.shutdown().or_panic("shutdown");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_draining_partition_slow_offline() {
    let mut vm = Vm::boot(&hotmem_config(
        "hotmem_draining_partition_slow_offline",
        true,
    ))
    .or_panic("booting a hotmem=on guest");
    // Once the pipe is gone the partition unplugs on the fast path.
    one_partition_then_fast_unplug(&mut vm, "hotmem_drain", 2);
    vm.shutdown().or_panic("shutdown");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_partition_geometry_boot_and_runtime() {
    let mut vm = Vm::boot(&hotmem_config(
        "hotmem_partition_geometry_boot_and_runtime",
        true,
    ))
    .or_panic("booting a hotmem=on guest");
    kselftest_with(&mut vm, "hotmem_geometry", &["-f", "empty"], &[], 3);
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    plug(&mut vm, 2 * BLOCK);
    // virtio_mem adds the blocks shortly after the device reports them.
    let deadline = std::time::Instant::now() + PLUG_TIMEOUT;
    loop {
        let out = vm
            .exec_ok(&[
                "sh",
                "-c",
                "grep -l offline /sys/devices/system/memory/memory*/state | wc -l",
            ])
            .or_panic("counting offline blocks");
        if out.stdout.trim() == "2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kselftest_with(&mut vm, "hotmem_geometry", &["-f", "plugged"], &[], 1);
    plug(&mut vm, 0);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);
    vm.shutdown().or_panic("shutdown");
}

/// The number of HotMem partitions in `state`.
fn partitions_in(vm: &mut Vm, state: &str) -> usize {
    let out = vm
        .exec_ok(&[
            "sh",
            "-c",
            "cat /sys/kernel/mm/hotmem/partitions/part*/state 2>/dev/null; true",
        ])
        .or_panic("reading partition states");
    out.stdout.lines().filter(|l| l.trim() == state).count()
}

fn wait_partitions(vm: &mut Vm, state: &str, n: usize) {
    let deadline = std::time::Instant::now() + PLUG_TIMEOUT;
    while partitions_in(vm, state) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} {state} partitions\nconsole:\n{}",
            vm.console_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The documented C-driver path with QEMU's default 2 MiB device blocks:
/// with `online_hotmem` as the auto-online policy, virtio_mem plugs whole
/// partitions (big block mode), and a partition its instance left is
/// unplugged on the fast path when the host asks for less.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_c_driver_default_block_size_gives_memory_back() {
    let mut cfg = config("hotmem_c_driver_default_block_size_gives_memory_back");
    assert_eq!(cfg.vmem_block_size, 2 * MIB, "QEMU's default block size");
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.write_file(
        "/sys/devices/system/memory/auto_online_blocks",
        "online_hotmem",
    )
    .or_panic("auto_online_blocks");
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    plug(&mut vm, 256 * MIB);
    wait_partitions(&mut vm, "free", 2);

    vm.exec_ok(&["hotmem-run", "--", "hotmem-memhog", "--size", "64M"])
        .or_panic("a bound instance");
    wait_partitions(&mut vm, "free", 2);

    let fast_before = vmstat(&mut vm, "hotmem_offline_fast");
    vm.set_requested_size(128 * MIB)
        .or_panic("setting requested-size");
    vm.wait_plugged(128 * MIB, Duration::from_secs(60))
        .or_panic("waiting for the unplug of one partition");
    assert_eq!(vmstat(&mut vm, "hotmem_offline_fast") - fast_before, 1);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 128 * 1024);
    plug(&mut vm, 0);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);
    vm.shutdown().or_panic("shutdown");
}

/// Memory that virtio_mem added in sub-block mode (loaded before the policy
/// was `online_hotmem`) may get pages onlined later, which a partition
/// cannot account: `online_hotmem` refuses it with EINVAL and a message,
/// and nothing changes.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_online_refuses_sub_block_memory() {
    let mut cfg = config("hotmem_online_refuses_sub_block_memory");
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    plug(&mut vm, 128 * MIB);
    let out = vm
        .exec_ok(&[
            "sh",
            "-c",
            "for i in $(seq 100); do \
             grep -l offline /sys/devices/system/memory/memory*/state && exit 0; \
             sleep 0.1; done; exit 1",
        ])
        .or_panic("finding the plugged block");
    let state = out.stdout.lines().next().expect("a block").to_owned();
    let err = vm.write_file(&state, "online_hotmem").unwrap_err();
    assert!(
        err.to_string().contains("Invalid argument"),
        "online_hotmem of sub-block memory: {err}"
    );
    assert_eq!(vm.read_file(&state).or_panic("state").trim(), "offline");
    assert!(vm.console_tail(200).contains("to HotMem in sub-block mode"));
    assert_eq!(
        partitions_in(&mut vm, "populating") + partitions_in(&mut vm, "free"),
        0
    );
    vm.write_file(&state, "online_movable")
        .or_panic("online_movable after a refused online_hotmem");
    plug(&mut vm, 0);
    vm.shutdown().or_panic("shutdown");
}

/// A bound instance's memory stays in its partition on every route that
/// used to move it out: long-term pins (io_uring fixed buffers), NUMA
/// migration (a two-node guest), swap-in through the swap cache (zram) and
/// KSM.  The kselftest `hotmem_escape` checks every page's pfn against the
/// partition and its data byte for byte; its unbound controls show that
/// the same mbind() moves memory and ksmd merges.  Nothing may be skipped.
/// `hotmem_abi` then feeds the prctl and sysfs bad input, and `hotmem_race`
/// races binders against offlining the blocks for 30 s.  Afterwards both
/// partitions unplug on the fast path: no page of an instance was left
/// behind.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn hotmem_bound_memory_never_escapes_its_partition() {
    let mut cfg = hotmem_config("hotmem_bound_memory_never_escapes_its_partition", true);
    cfg.numa_nodes = 2;
    let mut vm = Vm::boot(&cfg).or_panic("booting a two-node hotmem=on guest");
    plug_free_partitions(&mut vm, 2);
    vm.exec_ok(&[
        "sh",
        "-c",
        "echo 128M >/sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && \
         swapon /dev/zram0",
    ])
    .or_panic("swap on zram");

    kselftest(&mut vm, "hotmem_escape", 6);
    kselftest(&mut vm, "hotmem_abi", 8);
    kselftest(&mut vm, "hotmem_race", 1);
    assert!(vmstat(&mut vm, "hotmem_swapin_copy") > 0);

    vm.exec_ok(&["swapoff", "/dev/zram0"]).or_panic("swapoff");
    // io_uring drops its pins from a work item after the ring is closed.
    vm.exec_ok(&[
        "sh",
        "-c",
        "for i in $(seq 100); do \
         [ $(grep -c free /sys/kernel/mm/hotmem/partitions/part*/state | \
             grep -c ':1$') = 2 ] && exit 0; sleep 0.1; done; exit 1",
    ])
    .or_panic("both partitions free again");
    assert_eq!(partitions_in(&mut vm, "free"), 2);
    let fast_before = vmstat(&mut vm, "hotmem_offline_fast");
    plug(&mut vm, 0);
    assert_eq!(
        vmstat(&mut vm, "hotmem_offline_fast") - fast_before,
        2 * PARTITION / BLOCK
    );
    vm.shutdown().or_panic("shutdown");
}
