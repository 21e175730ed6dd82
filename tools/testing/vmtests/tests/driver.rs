//! The Rust HotMem virtio-mem driver (`rust/hotmem_virtio_mem.rs`) on a
//! real guest: plug on grow, unplug of free partitions on shrink, a bound
//! partition kept until its instance exits, the sysfs trigger, and module
//! removal and reload.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_host::{Vm, VmConfig};
use hotmem_vmtests::{config, has_or_skip, meminfo, vmstat, OrPanic};

const MIB: u64 = 1 << 20;
const PARTITION: u64 = 128 * MIB;
const PLUG_TIMEOUT: Duration = Duration::from_secs(60);
const MODULE: &str = "hotmem_virtio_mem";
/// The driver's sysfs directory; the virtio-mem device is the second virtio
/// device (the first is the agent's virtio-serial).
const SYSFS: &str = "/sys/bus/virtio/devices/virtio1/hotmem";

fn driver_config(name: &str, hotmem: bool) -> VmConfig {
    let mut cfg = config(name);
    cfg.append = if hotmem {
        format!("hotmem=on hotmem_partition_size={}M", PARTITION / MIB)
    } else {
        "hotmem=off".to_owned()
    };
    cfg
}

fn sysfs(vm: &mut Vm, file: &str) -> String {
    vm.read_file(&format!("{SYSFS}/{file}"))
        .or_panic(&format!("reading {SYSFS}/{file}"))
}

/// One of the driver's single-value files (sysfs: one value per file).
fn value(vm: &mut Vm, file: &str) -> String {
    let text = sysfs(vm, file);
    let v = text.trim_end_matches('\n');
    assert!(
        !v.is_empty() && !v.contains(char::is_whitespace),
        "{SYSFS}/{file} must hold one value:\n{text}"
    );
    v.to_owned()
}

/// A number from one of the driver's single-value files.
fn number(vm: &mut Vm, file: &str) -> u64 {
    let v = value(vm, file);
    v.parse()
        .unwrap_or_else(|_| panic!("{SYSFS}/{file} is not a number: {v:?}"))
}

/// The last operation: `(last_op, last_op_result, last_op_partitions)`.
fn last_op(vm: &mut Vm) -> (String, String, u64) {
    let op = value(vm, "last_op");
    let result = value(vm, "last_op_result");
    let partitions = number(vm, "last_op_partitions");
    number(vm, "last_op_latency_us");
    (op, result, partitions)
}

/// `(partition id, state)` of every partition of the device, from the
/// driver's `partitions/part<id>/state` files (one directory per partition,
/// whatever its state), read in one command, in id order.
fn all_partitions(vm: &mut Vm) -> Vec<(u64, String)> {
    let out = vm
        .exec_ok(&[
            "sh",
            "-c",
            &format!("cd {SYSFS}/partitions && grep -H '' part*/state"),
        ])
        .or_panic("reading partitions/part*/state")
        .stdout;
    let mut parts: Vec<(u64, String)> = out
        .lines()
        .map(|l| {
            let (dir, state) = l
                .split_once("/state:")
                .unwrap_or_else(|| panic!("'part<id>/state:<state>' lines: {l:?}"));
            let id = dir
                .strip_prefix("part")
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("partition directory {dir:?}"));
            (id, state.to_owned())
        })
        .collect();
    parts.sort();
    parts
}

/// `(partition id, state)` of the partitions that are not unplugged.
fn partitions(vm: &mut Vm) -> Vec<(u64, String)> {
    all_partitions(vm)
        .into_iter()
        .filter(|(_, state)| state != "unplugged")
        .collect()
}

fn resize(vm: &mut Vm, bytes: u64) {
    vm.set_requested_size(bytes)
        .or_panic("setting requested-size");
    wait_plugged(vm, bytes);
}

fn wait_plugged(vm: &mut Vm, bytes: u64) -> Duration {
    let took = vm
        .wait_plugged(bytes, PLUG_TIMEOUT)
        .or_panic(&format!("waiting for {} MiB plugged", bytes / MIB));
    // The driver's view and the device's agree.
    let start = Instant::now();
    loop {
        let seen = number(vm, "plugged_bytes");
        if seen == bytes {
            break;
        }
        assert!(
            start.elapsed() < PLUG_TIMEOUT,
            "driver reports {seen} bytes plugged, QEMU {bytes}\n{}",
            vm.console_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    took
}

/// Waits until the driver's sysfs value `file` is `want`: the device's
/// plugged size can be reached before the driver has added and onlined
/// the partitions it just plugged (it publishes its state around every
/// request, see `rust/logic/`).
fn wait_number(vm: &mut Vm, file: &str, want: u64) {
    let start = Instant::now();
    loop {
        let seen = number(vm, file);
        if seen == want {
            return;
        }
        assert!(
            start.elapsed() < PLUG_TIMEOUT,
            "{file} is {seen}, not {want}\n{}",
            vm.console_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a process bound to a HotMem partition that holds 32 MiB until
/// killed; returns its partition id.
fn start_bound(vm: &mut Vm, tag: &str) -> u64 {
    let file = format!("/tmp/{tag}.partition");
    let script = format!(
        "hotmem-run --partition-file {file} -- hotmem-memhog --size 32M --hold 1h \
         >/tmp/{tag}.log 2>&1 &"
    );
    vm.exec_ok(&["sh", "-c", &script])
        .or_panic("starting a bound process");
    let start = Instant::now();
    loop {
        if let Ok(text) = vm.read_file(&file) {
            if let Ok(id) = text.trim().parse() {
                return id;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "hotmem-run did not bind\n{}",
            vm.console_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_bound(vm: &mut Vm) {
    vm.exec_ok(&["sh", "-c", "kill $(pidof hotmem-memhog)"])
        .or_panic("killing the bound process");
}

fn write_err(vm: &mut Vm, file: &str, data: &str) -> String {
    let path = format!("{SYSFS}/{file}");
    match vm.write_file(&path, data) {
        Ok(()) => panic!("writing {data:?} to {path} succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_stays_out_of_the_way_without_hotmem() {
    let mut vm = Vm::boot(&driver_config("rust_driver_without_hotmem", false))
        .or_panic("booting a hotmem=off guest");
    let out = vm.exec(&["modprobe", MODULE]).or_panic("modprobe");
    assert!(
        !out.success(),
        "modprobe {MODULE} succeeded with hotmem=off"
    );
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("HotMem is off") && dmesg.contains("virtio_mem"),
        "no clear message in dmesg:\n{}",
        vm.console_tail(20)
    );
    // The C driver can take the device.
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    vm.shutdown().or_panic("shutting down");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_plug_unplug_sysfs_reload() {
    let mut vm = Vm::boot(&driver_config("rust_driver_plug_unplug", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    assert_eq!(number(&mut vm, "plugged_bytes"), 0);
    assert_eq!(number(&mut vm, "partition_bytes"), PARTITION);
    let nr_partitions = number(&mut vm, "nr_partitions");
    assert!(nr_partitions >= 4, "nr_partitions {nr_partitions}");
    assert_eq!(number(&mut vm, "nr_unplugged"), nr_partitions);
    for file in [
        "requested_bytes",
        "target_bytes",
        "usable_region_bytes",
        "nr_plugging",
        "nr_plugged",
        "nr_online",
        "nr_bound",
        "nr_offlining",
        "nr_unplugging",
        "nr_failed",
        "broken",
    ] {
        number(&mut vm, file);
    }
    assert!(
        vm.read_file(&format!("{SYSFS}/state")).is_err(),
        "the multi-value state file is gone"
    );
    // One directory per partition of the region, all unplugged; the
    // one-page list file is gone (it is the directory now).
    let all = all_partitions(&mut vm);
    assert_eq!(all.len() as u64, nr_partitions, "{all:?}");
    assert!(all.iter().all(|(_, s)| s == "unplugged"), "{all:?}");
    assert!(
        all.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive ids: {all:?}"
    );
    assert!(
        vm.exec(&["test", "-d", &format!("{SYSFS}/partitions")])
            .or_panic("test -d")
            .success(),
        "partitions is a directory"
    );

    // Grow: four partitions appear, free.
    resize(&mut vm, 4 * PARTITION);
    let parts = partitions(&mut vm);
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert!(parts.iter().all(|(_, s)| s == "online"), "{parts:?}");
    wait_number(&mut vm, "nr_online", 4);
    assert_eq!(number(&mut vm, "requested_bytes"), 4 * PARTITION);
    assert_eq!(number(&mut vm, "target_bytes"), 4 * PARTITION);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 4 * PARTITION / 1024);
    assert_eq!(meminfo(&mut vm, "HotMemFree"), 4 * PARTITION / 1024);
    assert_eq!(last_op(&mut vm), ("plug".into(), "ok".into(), 4));

    // Bind one; the sysfs trigger refuses it and bad input, changing nothing.
    let bound = start_bound(&mut vm, "a");
    assert!(
        parts.iter().any(|(id, _)| *id == bound),
        "{bound} not in {parts:?}"
    );
    let err = write_err(&mut vm, "unplug", &bound.to_string());
    assert!(
        err.contains("os error 16"),
        "unplug of a bound partition: {err}"
    );
    for bad in ["bogus", "-1", "99999999"] {
        let err = write_err(&mut vm, "unplug", bad);
        assert!(err.contains("os error 22"), "unplug {bad:?}: {err}");
    }
    let err = write_err(&mut vm, "unplug_free", "0");
    assert!(err.contains("os error 22"), "unplug_free 0: {err}");
    let err = write_err(&mut vm, "unplug_free", "4");
    assert!(
        err.contains("os error 16"),
        "unplug_free 4 with one bound: {err}"
    );
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 4 * PARTITION);
    assert_eq!(number(&mut vm, "nr_bound"), 1);
    wait_number(&mut vm, "nr_online", 3);

    // sysfs: unplug one free partition by id, then one by count.
    let free: Vec<u64> = partitions(&mut vm)
        .into_iter()
        .filter(|(id, _)| *id != bound)
        .map(|(id, _)| id)
        .collect();
    let (fast, slow) = (
        vmstat(&mut vm, "hotmem_offline_fast"),
        vmstat(&mut vm, "hotmem_offline_slow"),
    );
    vm.write_file(&format!("{SYSFS}/unplug"), &free[0].to_string())
        .or_panic("unplugging a free partition through sysfs");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 3 * PARTITION);
    // Through the fast offline path: one 128 MiB block, nothing migrated.
    assert_eq!(vmstat(&mut vm, "hotmem_offline_fast"), fast + 1);
    assert_eq!(vmstat(&mut vm, "hotmem_offline_slow"), slow);
    assert_eq!(last_op(&mut vm), ("sysfs_unplug".into(), "ok".into(), 1));
    vm.write_file(&format!("{SYSFS}/unplug_free"), "1")
        .or_panic("unplugging one free partition through sysfs");
    wait_plugged(&mut vm, 2 * PARTITION);

    // Shrink to 0: the free partition goes, the bound one stays.
    resize(&mut vm, PARTITION);
    vm.set_requested_size(0).or_panic("requesting 0");
    let parts = partitions(&mut vm);
    assert_eq!(parts, vec![(bound, "bound".to_owned())]);
    assert_eq!(vm.plugged_size().or_panic("plugged size"), PARTITION);

    // Module removal with a bound partition keeps it (and its process).
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), PARTITION);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), PARTITION / 1024);
    vm.exec_ok(&["sh", "-c", "pidof hotmem-memhog"])
        .or_panic("the bound process survives rmmod");
    // Reload: the driver adopts the bound partition.
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe again");
    assert_eq!(partitions(&mut vm), vec![(bound, "bound".to_owned())]);

    // The instance exits: the release notifier finishes the shrink.
    stop_bound(&mut vm);
    let took = wait_plugged(&mut vm, 0);
    assert!(
        took < Duration::from_secs(20),
        "unplug after release took {took:?}"
    );
    assert!(partitions(&mut vm).is_empty());

    // Grow again, then remove the module: everything is unplugged.
    resize(&mut vm, 2 * PARTITION);
    vm.exec_ok(&["rmmod", MODULE])
        .or_panic("rmmod with free partitions");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 0);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);
    vm.exec_ok(&["modprobe", MODULE])
        .or_panic("modprobe after rmmod");
    wait_plugged(&mut vm, 2 * PARTITION);

    vm.shutdown().or_panic("shutting down");
}

/// Requests that change while the driver works (a PLUG racing a smaller
/// `requested_size` is NACKed): the driver and the device still agree, and
/// the driver ends at the last request.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_follows_racing_requests() {
    let mut vm = Vm::boot(&driver_config("rust_driver_racing_requests", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    for (size, pause_ms) in [
        (16 * PARTITION, 30),
        (2 * PARTITION, 10),
        (12 * PARTITION, 50),
        (0, 5),
        (8 * PARTITION, 40),
        (3 * PARTITION, 0),
    ] {
        vm.set_requested_size(size)
            .or_panic("setting requested-size");
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
    wait_plugged(&mut vm, 3 * PARTITION);
    wait_number(&mut vm, "nr_online", 3);
    assert_eq!(number(&mut vm, "nr_failed"), 0);
    assert_eq!(number(&mut vm, "broken"), 0);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 3 * PARTITION / 1024);
    let console = std::fs::read_to_string(vm.run_dir().console_log()).unwrap_or_default();
    eprintln!(
        "NACKed plugs seen: {}",
        console.matches("refused to plug").count()
    );
    vm.shutdown().or_panic("shutting down");
}

/// A device the driver cannot serve in partitions (device blocks larger
/// than a partition) is refused with a clear message and left alone.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_refuses_a_device_it_cannot_serve() {
    let mut cfg = driver_config("rust_driver_refuses_device", true);
    cfg.vmem_block_size = 2 * PARTITION;
    cfg.vmem_requested = 2 * PARTITION;
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("cannot serve this device") && dmesg.contains("exceeds the partition size"),
        "no clear refusal in dmesg:\n{}",
        vm.console_tail(20)
    );
    assert!(
        !vm.exec(&["test", "-d", SYSFS])
            .or_panic("test -d")
            .success(),
        "{SYSFS} exists for a refused device"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 0);
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod");
    vm.shutdown().or_panic("shutting down");
}

/// Memory of another driver is never unplugged: the C driver `virtio_mem`
/// plugs memory that is onlined movable and filled with data, and is
/// unloaded (it leaves the memory added); the Rust driver then refuses the
/// device with a clear message, QEMU's plugged size does not change, and
/// the data reads back intact.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_never_unplugs_another_drivers_memory() {
    const PLUGGED: u64 = 4 * PARTITION;
    const FILL_MIB: u64 = 640;
    const PATTERN: &str = "hotmem-pattern-0123456789abcdef";
    let mut cfg = driver_config("rust_driver_foreign_memory", true);
    cfg.memory = 512 * MIB;
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(300));
    vm.write_file(
        "/sys/devices/system/memory/auto_online_blocks",
        "online_movable",
    )
    .or_panic("auto_online_blocks");
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    vm.set_requested_size(PLUGGED)
        .or_panic("setting requested-size");
    vm.wait_plugged(PLUGGED, PLUG_TIMEOUT)
        .or_panic("virtio_mem plugging");
    // Fill more than the boot memory holds, so that part of the data lives
    // in the plugged memory.
    let fill = format!(
        "mkdir -p /mnt/fill && mount -t tmpfs -o size={FILL_MIB}M tmpfs /mnt/fill && \
         yes {PATTERN} | head -c {bytes} > /mnt/fill/data && ls -l /mnt/fill/data",
        bytes = FILL_MIB * MIB
    );
    vm.exec_ok(&["sh", "-c", &fill]).or_panic("filling memory");
    let used_kib = meminfo(&mut vm, "MemTotal") - meminfo(&mut vm, "MemFree");
    assert!(
        used_kib * 1024 > cfg.memory,
        "only {used_kib} KiB used: the data need not be in the plugged memory"
    );

    let out = vm
        .exec(&["rmmod", "virtio_mem"])
        .or_panic("rmmod virtio_mem");
    assert!(out.success(), "rmmod virtio_mem: {}", out.stderr);
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    std::thread::sleep(Duration::from_secs(5));
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("cannot reserve the device region") && dmesg.contains("not binding"),
        "no clear refusal in dmesg:\n{}",
        vm.console_tail(30)
    );
    assert!(
        !vm.exec(&["test", "-d", SYSFS])
            .or_panic("test -d")
            .success(),
        "{SYSFS} exists for a refused device"
    );
    assert_eq!(
        vm.plugged_size().or_panic("plugged size"),
        PLUGGED,
        "another driver's memory was unplugged\n{}",
        vm.console_tail(30)
    );
    let check = format!(
        "yes {PATTERN} | head -c {} | cmp - /mnt/fill/data",
        FILL_MIB * MIB
    );
    let out = vm.exec(&["sh", "-c", &check]).or_panic("checking the data");
    assert!(
        out.success(),
        "the data changed: {}{}\n{}",
        out.stdout,
        out.stderr,
        vm.console_tail(30)
    );
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod");
    vm.shutdown().or_panic("shutting down");
}

/// QEMU answers BUSY to plug and unplug requests for the whole of a
/// migration. The driver retries with backoff, never holding its lock
/// while it waits: sysfs stays readable throughout, and the unplug
/// completes soon after the migration is cancelled; a plug then works.
/// Removal during the retry returns at once.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_retries_busy_during_a_migration() {
    use qapi::qmp;

    let mut vm = Vm::boot(&driver_config("rust_driver_busy_migration", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    resize(&mut vm, 3 * PARTITION);

    // An outgoing migration that cannot finish: 1 MiB/s into a sink.
    vm.qmp_execute(&qmp::migrate_set_parameters(qmp::MigrateSetParameters {
        max_bandwidth: Some(MIB),
        ..Default::default()
    }))
    .or_panic("migrate-set-parameters");
    vm.qmp_execute(&qmp::migrate {
        uri: Some("exec:cat >/dev/null".into()),
        channels: None,
        detach: None,
        resume: None,
    })
    .or_panic("migrate");
    let status = |vm: &mut Vm| {
        let info = vm
            .qmp_execute(&qmp::query_migrate {})
            .or_panic("query-migrate");
        info.status
    };
    let start = Instant::now();
    while status(&mut vm) != Some(qmp::MigrationStatus::active) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no active migration"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Shrink by two partitions: the device answers BUSY meanwhile.
    vm.set_requested_size(PARTITION)
        .or_panic("setting requested-size");
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        number(&mut vm, "plugged_bytes");
        partitions(&mut vm);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("slowest sysfs read during the migration: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "sysfs blocked for {slowest:?} while the device was busy"
    );
    assert_eq!(
        status(&mut vm),
        Some(qmp::MigrationStatus::active),
        "the migration ended on its own"
    );
    assert_eq!(
        vm.plugged_size().or_panic("plugged size"),
        3 * PARTITION,
        "QEMU unplugged during a migration?"
    );
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("Busy"),
        "no BUSY answer seen:\n{}",
        vm.console_tail(20)
    );

    // Cancel: the retry gets through soon (the backoff is at about 6 s
    // after 12 s of BUSY).
    let cancelled = Instant::now();
    vm.qmp_execute(&qmp::migrate_cancel {})
        .or_panic("migrate_cancel");
    let took = wait_plugged(&mut vm, PARTITION);
    eprintln!(
        "unplug completed {:?} after the cancel",
        cancelled.elapsed()
    );
    assert!(
        took < Duration::from_secs(20),
        "unplug after cancel took {took:?}"
    );
    resize(&mut vm, 2 * PARTITION);
    wait_number(&mut vm, "nr_online", 2);

    // Removal while the driver waits to retry returns at once.
    vm.qmp_execute(&qmp::migrate {
        uri: Some("exec:cat >/dev/null".into()),
        channels: None,
        detach: None,
        resume: None,
    })
    .or_panic("migrate again");
    vm.set_requested_size(0).or_panic("requesting 0");
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod while busy");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "rmmod took {:?}",
        t.elapsed()
    );
    vm.qmp_execute(&qmp::migrate_cancel {})
        .or_panic("migrate_cancel");
    vm.shutdown().or_panic("shutting down");
}

/// The module carries the device table (`MODULE_DEVICE_TABLE(virtio, ...)`):
/// modpost gave it a `virtio:d00000018v*` alias, and loading the device's
/// modalias, as udev does on its uevent, loads it and binds the device.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_autoloads_from_its_device_table() {
    let mut vm = Vm::boot(&driver_config("rust_driver_autoload", true))
        .or_panic("booting a hotmem=on guest");
    let modalias = vm
        .read_file("/sys/bus/virtio/devices/virtio1/modalias")
        .or_panic("reading the device's modalias");
    let modalias = modalias.trim();
    assert!(modalias.starts_with("virtio:d00000018v"), "{modalias}");
    let aliases = vm
        .exec_ok(&["sh", "-c", "cat /lib/modules/$(uname -r)/modules.alias"])
        .or_panic("modules.alias")
        .stdout;
    assert!(
        aliases
            .lines()
            .any(|l| l == format!("alias virtio:d00000018v* {MODULE}")),
        "no virtio-mem alias for {MODULE}:\n{aliases}"
    );
    // Only this driver for the alias: the C virtio_mem's alias would make
    // the modprobe below load it too.
    vm.exec_ok(&[
        "sh",
        "-c",
        "sed -i '/ virtio_mem$/d' /lib/modules/$(uname -r)/modules.alias",
    ])
    .or_panic("dropping virtio_mem's alias");
    vm.exec_ok(&["modprobe", modalias])
        .or_panic("modprobe of the modalias");
    let lsmod = vm
        .exec_ok(&["cat", "/proc/modules"])
        .or_panic("lsmod")
        .stdout;
    assert!(lsmod.contains(MODULE), "{MODULE} not loaded:\n{lsmod}");
    let driver = vm
        .exec_ok(&["readlink", "/sys/bus/virtio/devices/virtio1/driver"])
        .or_panic("the device's driver")
        .stdout;
    assert!(driver.trim().ends_with(MODULE), "bound to {driver}");
    resize(&mut vm, PARTITION);
    vm.shutdown().or_panic("shutting down");
}

/// Removing the module while it unplugs 1 GiB returns within a bounded
/// time, leaves nothing plugged that is free, and the module loads again.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_rmmod_during_a_large_unplug_returns_soon() {
    let mut vm = Vm::boot(&driver_config("rust_driver_rmmod_unplug", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    resize(&mut vm, 8 * PARTITION);
    vm.set_requested_size(0).or_panic("requesting 0");
    let t = Instant::now();
    vm.exec_ok(&["rmmod", MODULE])
        .or_panic("rmmod during the unplug");
    let took = t.elapsed();
    eprintln!("rmmod during a 1 GiB unplug took {took:?}");
    assert!(took < Duration::from_secs(30), "rmmod took {took:?}");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 0);
    assert_eq!(meminfo(&mut vm, "HotMemTotal"), 0);
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        !dmesg.contains("BUG:") && !dmesg.contains("WARNING:"),
        "{dmesg}"
    );
    vm.exec_ok(&["modprobe", MODULE])
        .or_panic("modprobe after rmmod");
    resize(&mut vm, PARTITION);
    vm.shutdown().or_panic("shutting down");
}

/// Counts the guest's reads of the virtio-mem configuration space during
/// an unplug (QEMU's `memory_region_ops_read` trace): the driver reads
/// each field with its width and, at each step, only the three fields that
/// change, plus the generation before and after. Byte-wise reads of the
/// whole 56-byte structure (the old driver) cost 56 device-config reads per
/// step.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_reads_few_configuration_fields_per_unplug() {
    use qapi::qmp;

    let cfg = driver_config("rust_driver_config_reads", true);
    let log = cfg.run_dir.join("qemu.log");
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    resize(&mut vm, 4 * PARTITION);
    let trace = |vm: &mut Vm, enable: bool| {
        vm.qmp_execute(&qmp::trace_event_set_state {
            name: "memory_region_ops_read".into(),
            enable,
            ignore_unavailable: None,
        })
        .or_panic("trace-event-set-state");
    };
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    trace(&mut vm, true);
    resize(&mut vm, PARTITION);
    trace(&mut vm, false);
    let text = std::fs::read_to_string(&log).expect("qemu.log");
    let traced = &text[before.min(text.len())..];
    let device = traced
        .lines()
        .filter(|l| l.contains("name 'virtio-pci-device-virtio-mem'"))
        .count();
    let generation = traced
        .lines()
        .filter(|l| {
            // `config_generation`, at offset 0x15 of the common configuration.
            l.contains("name 'virtio-pci-common-virtio-mem'")
                && l.contains("15 value")
                && l.contains(" size 1 ")
        })
        .count();
    eprintln!(
        "unplug of 3 partitions: {device} device-configuration reads, {generation} generation reads"
    );
    assert!(
        device > 0,
        "nothing traced:\n{}",
        &traced[..traced.len().min(2000)]
    );
    // 4 steps (one per partition and a last one), 3 fields of 8 bytes
    // (two 32-bit accesses each on virtio-pci); a configuration change
    // notification may add a round.
    assert!(
        device <= 2 * 4 * 3 * 2,
        "{device} device-configuration reads"
    );
    assert!(
        generation > 0 && generation <= 2 * 4 * 2,
        "{generation} generation reads"
    );
    vm.shutdown().or_panic("shutting down");
}

/// Allocation failures injected into probe (`failslab` and
/// `fail_page_alloc`, filtered to the task that binds the device through
/// sysfs, at increasing depths into the probe): each bind fails or succeeds
/// cleanly and in bounded time, nothing is left behind (the device region
/// is released — the next bind reserves it again — the device is unbound,
/// and no notifier or work item outlives a failed probe or the module),
/// the module unloads, and the kernel reports nothing. Needs the debug
/// kernel (fault injection).
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_survives_allocation_failures_in_probe() {
    let mut vm = Vm::boot(&driver_config("rust_driver_failslab", true))
        .or_panic("booting a hotmem=on guest");
    vm.exec(&["mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug"])
        .or_panic("mounting debugfs");
    if !has_or_skip(&mut vm, "/sys/kernel/debug/failslab", "failslab") {
        return;
    }
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    let drv = format!("/sys/bus/virtio/drivers/{MODULE}");
    vm.write_file(&format!("{drv}/unbind"), "virtio1")
        .or_panic("unbinding");
    let set = |vm: &mut Vm, knob: &str, value: &str| {
        vm.write_file(knob, value)
            .or_panic(&format!("writing {value} to {knob}"));
    };
    for attr in ["failslab", "fail_page_alloc"] {
        let dir = format!("/sys/kernel/debug/{attr}");
        set(&mut vm, &format!("{dir}/task-filter"), "Y");
        set(&mut vm, &format!("{dir}/probability"), "100");
        set(&mut vm, &format!("{dir}/interval"), "1");
        set(&mut vm, &format!("{dir}/verbose"), "0");
        set(&mut vm, &format!("{dir}/ignore-gfp-wait"), "N");
    }
    set(&mut vm, "/sys/kernel/debug/fail_page_alloc/min-order", "0");
    let (mut bound, mut failed) = (0, 0);
    for (attr, spaces) in [
        (
            "failslab",
            &[
                0u64, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096,
            ][..],
        ),
        ("fail_page_alloc", &[0u64, 4096, 8192, 16384, 32768][..]),
    ] {
        let dir = format!("/sys/kernel/debug/{attr}");
        for space in spaces {
            set(&mut vm, &format!("{dir}/space"), &space.to_string());
            set(&mut vm, &format!("{dir}/times"), "1");
            let t = Instant::now();
            let out = vm
                .exec(&[
                    "sh",
                    "-c",
                    &format!("echo 1 >/proc/self/make-it-fail && echo virtio1 >{drv}/bind"),
                ])
                .or_panic("binding with a failing allocation");
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "bind took {:?}",
                t.elapsed()
            );
            set(&mut vm, &format!("{dir}/times"), "0");
            let is_bound = vm
                .exec(&["test", "-e", "/sys/bus/virtio/devices/virtio1/driver"])
                .or_panic("test -e")
                .success();
            assert_eq!(is_bound, out.success(), "{attr} space {space}: {out:?}");
            if is_bound {
                bound += 1;
                vm.write_file(&format!("{drv}/unbind"), "virtio1")
                    .or_panic("unbinding");
            } else {
                failed += 1;
            }
            assert_eq!(vm.plugged_size().or_panic("plugged size"), 0);
        }
    }
    eprintln!("{failed} binds failed, {bound} succeeded");
    assert!(failed > 0, "no injected failure made a bind fail");
    // Nothing left behind: the region is free again, and the driver works.
    vm.write_file(&format!("{drv}/bind"), "virtio1")
        .or_panic("binding without faults");
    resize(&mut vm, 2 * PARTITION);
    start_bound(&mut vm, "failslab");
    stop_bound(&mut vm);
    wait_plugged(&mut vm, 2 * PARTITION);
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 0);
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    // What scripts/check-dmesg.sh looks for.
    for bad in [
        "WARNING:",
        "BUG:",
        "Oops",
        "KFENCE:",
        "KASAN:",
        "possible circular locking",
        "INFO: lockdep",
        "lockdep is turned off",
        "corruption",
        "Bad page state",
        "blocked for more than",
        "refcount_t:",
    ] {
        assert!(!dmesg.contains(bad), "dmesg has {bad}:\n{dmesg}");
    }
    vm.shutdown().or_panic("shutting down");
}

/// A device of 2048 partitions (a 256 GiB region in 128 MiB partitions,
/// mapped with `reserve=off` so that QEMU need not reserve 256 GiB on the
/// host): the driver binds, gives every partition its own directory, and
/// every sysfs file of the device reads, with a few partitions plugged and
/// after they are unplugged. The old one-page `partitions` list failed with
/// E2BIG past about 300 partitions.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_serves_2048_partitions() {
    const NR: u64 = 2048;
    let mut cfg = driver_config("rust_driver_2048_partitions", true);
    cfg.vmem_size = NR * PARTITION;
    cfg.vmem_reserve = false;
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(300));
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    assert_eq!(number(&mut vm, "nr_partitions"), NR);
    assert_eq!(number(&mut vm, "nr_unplugged"), NR);
    resize(&mut vm, 3 * PARTITION);

    // Every file of the device, each partition's directory included.
    let read_all = |vm: &mut Vm| -> (usize, String) {
        let out = vm
            .exec_ok(&[
                "sh",
                "-c",
                &format!(
                    "cd {SYSFS} && n=0 && for f in $(find . -type f -perm -0400); do \
                     cat $f >/dev/null || exit 1; n=$((n + 1)); done && echo $n"
                ),
            ])
            .or_panic("reading every sysfs file of the device");
        let files = out.stdout.trim().parse().expect("a count");
        let listing = vm
            .exec_ok(&["sh", "-c", &format!("cd {SYSFS} && find . -type f | sort")])
            .or_panic("find")
            .stdout;
        (files, listing)
    };
    let (files, listing) = read_all(&mut vm);
    // 19 value files and one state file per partition (unplug and
    // unplug_free are write-only).
    assert_eq!(files as u64, 19 + NR, "{listing}");
    let all = all_partitions(&mut vm);
    assert_eq!(all.len() as u64, NR);
    let first = all[0].0;
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, (id, _))| *id == first + i as u64),
        "ids are consecutive"
    );
    let online: Vec<u64> = all
        .iter()
        .filter(|(_, s)| s == "online")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(online, [first, first + 1, first + 2], "{:?}", &all[..8]);
    assert_eq!(
        all.iter().filter(|(_, s)| s == "unplugged").count() as u64,
        NR - 3
    );
    // The mm's view agrees.
    for id in &online {
        let state = vm
            .read_file(&format!("/sys/kernel/mm/hotmem/partitions/part{id}/state"))
            .or_panic("the kernel's partition state");
        assert_eq!(state.trim(), "free");
    }

    // Unplug one by id (the highest), then the rest.
    vm.write_file(&format!("{SYSFS}/unplug"), &(first + 2).to_string())
        .or_panic("unplugging through sysfs");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), 2 * PARTITION);
    resize(&mut vm, 0);
    let (files, _) = read_all(&mut vm);
    assert_eq!(files as u64, 19 + NR);
    assert!(partitions(&mut vm).is_empty());
    vm.exec_ok(&["rmmod", MODULE]).or_panic("rmmod");
    assert!(
        !vm.exec(&["test", "-d", SYSFS])
            .or_panic("test -d")
            .success(),
        "{SYSFS} outlives the driver"
    );
    vm.shutdown().or_panic("shutting down");
}

/// sysfs reads do not wait for the device: while a PLUG is outstanding
/// (QEMU preallocates each partition's memory before it answers, with
/// `prealloc=on`), readers on the other vCPU get answers and see the
/// partition `plugging`. A reader that had to wait for the driver's work
/// could never see `plugging`: the work marks it and clears it with the
/// device's answer.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_sysfs_reads_do_not_wait_for_the_device() {
    const PLUGS: u64 = 8;
    let mut cfg = driver_config("rust_driver_reads_during_request", true);
    cfg.vmem_prealloc = true;
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    // Two readers (two vCPUs: one of them is not the one that waits for
    // the device), each appending what it sees while anything is plugging.
    let reader = |n: u32| {
        format!(
            "(while [ ! -e /tmp/stop ]; do read v < {SYSFS}/nr_plugging; \
             [ \"$v\" = 0 ] || echo \"$v\" >> /tmp/seen.{n}; done; echo done > /tmp/done.{n}) \
             >/dev/null 2>&1 &"
        )
    };
    vm.exec_ok(&["sh", "-c", &format!("{} {}", reader(0), reader(1))])
        .or_panic("starting the readers");
    let t = Instant::now();
    resize(&mut vm, PLUGS * PARTITION);
    eprintln!("{PLUGS} preallocated plugs took {:?}", t.elapsed());
    vm.exec_ok(&["sh", "-c", "touch /tmp/stop"])
        .or_panic("stopping the readers");
    let start = Instant::now();
    while !vm
        .exec(&["sh", "-c", "test -e /tmp/done.0 && test -e /tmp/done.1"])
        .or_panic("test -e")
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(30), "readers hang");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = vm
        .exec_ok(&["sh", "-c", "cat /tmp/seen.* 2>/dev/null; true"])
        .or_panic("reading what the readers saw")
        .stdout;
    let plugging = seen.lines().filter(|l| *l == "1").count();
    eprintln!(
        "readers saw a partition plugging {plugging} times ({} lines)",
        seen.lines().count()
    );
    assert!(
        plugging > 0,
        "no read returned while a PLUG was outstanding: {seen:?}\n{}",
        vm.console_tail(20)
    );
    assert!(
        seen.lines().all(|l| l == "1"),
        "one PLUG at a time: {seen:?}"
    );
    wait_number(&mut vm, "nr_online", PLUGS);
    vm.shutdown().or_panic("shutting down");
}

/// In a kdump kernel (`elfcorehdr=` on the command line makes
/// `is_kdump_kernel()` true; on x86 nothing else changes, /proc/vmcore just
/// finds no ELF header there) the driver refuses the device with a clear
/// message and never touches it: QEMU's plugged size stays where it was
/// although the device requests memory.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_refuses_to_probe_in_a_kdump_kernel() {
    let mut cfg = driver_config("rust_driver_kdump", true);
    cfg.append.push_str(" elfcorehdr=0x1000000");
    cfg.vmem_requested = 2 * PARTITION;
    let mut vm = Vm::boot(&cfg).or_panic("booting a kdump-like guest");
    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vm.plugged_size().or_panic("plugged size"),
        0,
        "the driver plugged memory in a kdump kernel"
    );
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("kdump kernel: not plugging or unplugging memory"),
        "no clear refusal in dmesg:\n{}",
        vm.console_tail(30)
    );
    assert!(
        !vm.exec(&["test", "-e", "/sys/bus/virtio/devices/virtio1/driver"])
            .or_panic("test -e")
            .success(),
        "the device is bound"
    );
    assert!(
        !vm.exec(&["test", "-d", SYSFS])
            .or_panic("test -d")
            .success(),
        "{SYSFS} exists for a refused device"
    );
    vm.shutdown().or_panic("shutting down");
}

/// System sleep is refused while the driver is bound (it does not re-create
/// its virtqueue on restore): suspend-to-idle, tested up to the device
/// suspend (`pm_test=devices`), fails with EBUSY and names the driver; the
/// driver keeps working afterwards. With the device unbound the same
/// suspend goes through, so the refusal is the driver's.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn rust_driver_refuses_system_sleep() {
    let mut vm =
        Vm::boot(&driver_config("rust_driver_suspend", true)).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(120));
    if !has_or_skip(&mut vm, "/sys/power/pm_test", "suspend with pm_test") {
        return;
    }
    vm.write_file("/sys/power/pm_test", "devices")
        .or_panic("pm_test");
    let suspend = |vm: &mut Vm| {
        vm.exec(&["sh", "-c", "echo freeze > /sys/power/state"])
            .or_panic("writing /sys/power/state")
    };
    // No driver bound: the devices suspend and resume.
    let out = suspend(&mut vm);
    assert!(
        out.success(),
        "suspend without the driver failed: {out:?}\n{}",
        vm.console_tail(20)
    );

    vm.exec_ok(&["modprobe", MODULE]).or_panic("modprobe");
    resize(&mut vm, 2 * PARTITION);
    let out = suspend(&mut vm);
    assert!(!out.success(), "suspend with the driver bound succeeded");
    assert!(
        out.stderr.contains("Device or resource busy"),
        "not EBUSY: {out:?}"
    );
    let dmesg = vm.exec_ok(&["dmesg"]).or_panic("dmesg").stdout;
    assert!(
        dmesg.contains("hotmem_virtio_mem does not support system sleep; refusing it"),
        "no clear refusal in dmesg:\n{}",
        vm.console_tail(30)
    );
    // Still working: an unplug completes, then a plug.
    resize(&mut vm, PARTITION);
    wait_number(&mut vm, "nr_online", 1);
    resize(&mut vm, 3 * PARTITION);
    vm.shutdown().or_panic("shutting down");
}
