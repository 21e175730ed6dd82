//! virtio-mem plug/unplug and module tests on a real guest.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hotmem_host::Vm;
use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_host::{AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY};
use hotmem_vmtests::{boot, config, OrPanic};

const GIB: u64 = 1 << 30;
const GIB_KIB: u64 = GIB / 1024;
const SLACK_KIB: u64 = 4 * 1024;
const PLUG_TIMEOUT: Duration = Duration::from_secs(120);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
const RUST_MODULE: &str = "hotmem_virtio_mem";

fn mem_total(vm: &mut Vm) -> u64 {
    let info = vm.meminfo().or_panic("reading /proc/meminfo");
    *info.get("MemTotal").expect("MemTotal in /proc/meminfo")
}

fn dir_exists(vm: &mut Vm, path: &str) -> bool {
    vm.exec(&["test", "-d", path]).or_panic("test -d").success()
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn vanilla_virtio_mem_plug_unplug() {
    let mut vm = boot("vanilla_virtio_mem_plug_unplug");
    // The agent must pass sysfs errors through (with the errno text).
    let err = vm.write_file(AUTO_ONLINE_BLOCKS, "bogus").unwrap_err();
    assert!(
        err.to_string().contains("Invalid argument (os error 22)"),
        "unexpected error for a bad sysfs write: {err}"
    );
    vm.write_file(AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY)
        .or_panic("setting the auto-online policy");
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    let before = mem_total(&mut vm);

    vm.set_requested_size(GIB).or_panic("requesting 1 GiB");
    vm.wait_plugged(GIB, PLUG_TIMEOUT)
        .or_panic("plugging 1 GiB");
    let plugged = vm.plugged_size().or_panic("reading the plugged size");
    assert_eq!(plugged, GIB, "QMP plugged size\n{}", vm.console_tail(40));

    let (grown, _) = vm
        .wait_meminfo("MemTotal", ONLINE_TIMEOUT, |v| {
            v >= before + GIB_KIB - SLACK_KIB
        })
        .or_panic("waiting for MemTotal to grow by 1 GiB");
    let delta = grown - before;
    assert!(
        (GIB_KIB - SLACK_KIB..=GIB_KIB).contains(&delta),
        "MemTotal grew by {delta} kB ({before} -> {grown}), expected 1 GiB - [0, 4 MiB]\n{}",
        vm.console_tail(40)
    );

    vm.set_requested_size(0).or_panic("requesting 0");
    vm.wait_plugged(0, PLUG_TIMEOUT)
        .or_panic("unplugging 1 GiB");
    let (after, _) = vm
        .wait_meminfo("MemTotal", ONLINE_TIMEOUT, |v| {
            v.abs_diff(before) <= SLACK_KIB
        })
        .or_panic("waiting for MemTotal to shrink back");
    assert!(
        after.abs_diff(before) <= SLACK_KIB,
        "MemTotal {after} kB is not within 4 MiB of {before} kB\n{}",
        vm.console_tail(40)
    );

    vm.shutdown().or_panic("shutting down");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_module_loads_and_unloads() {
    // The driver refuses to load without HotMem (tests/driver.rs checks
    // that), so that the C driver can be used instead.
    let mut cfg = config("rust_module_loads_and_unloads");
    cfg.append = "hotmem=on".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    let sysfs = format!("/sys/module/{RUST_MODULE}");

    vm.exec_ok(&["modprobe", RUST_MODULE])
        .or_panic("modprobe hotmem_virtio_mem");
    assert!(
        dir_exists(&mut vm, &sysfs),
        "{sysfs} missing after modprobe\n{}",
        vm.console_tail(40)
    );

    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    let console = std::fs::read_to_string(vm.run_dir().console_log()).unwrap_or_default();
    let marker = format!("{RUST_MODULE}:");
    assert!(
        dmesg.contains(&marker) || console.contains(&marker),
        "no line containing {marker:?} in dmesg or on the console\n{}",
        vm.console_tail(40)
    );

    vm.exec_ok(&["rmmod", RUST_MODULE])
        .or_panic("rmmod hotmem_virtio_mem");
    assert!(
        !dir_exists(&mut vm, &sysfs),
        "{sysfs} still present after rmmod\n{}",
        vm.console_tail(40)
    );

    vm.shutdown().or_panic("shutting down");
}
