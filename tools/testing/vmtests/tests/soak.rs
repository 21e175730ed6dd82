//! `make soak`: the partition life cycle many times over, with a bystander.
//!
//! A bystander instance, bound to a partition of its own, holds 64 MiB
//! filled with a pattern throughout.  Each cycle plugs a second partition
//! (C virtio_mem in big-block mode, onlined into HotMem through sysfs),
//! runs an instance in it that touches and fills 128 MiB, lets it exit, and
//! unplugs the partition again, which must take the fast path.  At the end
//! the HotMem gauges (meminfo, sysfs, the bystander's partition) are back
//! at their baseline, no offline took the slow path, no allocation failed,
//! ordinary free memory has not leaked away, and the bystander's data is
//! intact byte for byte.
//!
//! `HOTMEM_SOAK_CYCLES` sets the number of cycles (default 1000).

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::env;
use std::time::{Duration, Instant};

use hotmem_host::{AgentTransport as _, Guest as _, Vm};
use hotmem_vmtests::{hotmem_config, meminfo, plug, vmstat, OrPanic, BLOCK, PARTITION};

const BYSTANDER_FILL: u8 = 0xa5;

/// Onlines every offline memory block into HotMem.
const ONLINE: &str = "for b in /sys/devices/system/memory/memory*; do \
     [ \"$(cat $b/state)\" = offline ] && echo online_hotmem >$b/state; done; true";

/// The HotMem gauges that must come back to their baseline.
fn gauges(vm: &mut Vm, bystander_part: &str) -> Vec<(String, u64)> {
    let mut g = vec![
        ("HotMemTotal".to_owned(), meminfo(vm, "HotMemTotal")),
        ("HotMemFree".to_owned(), meminfo(vm, "HotMemFree")),
    ];
    for file in [
        "nr_partitions".to_owned(),
        "waiters".to_owned(),
        format!("partitions/{bystander_part}/used_pages"),
        format!("partitions/{bystander_part}/free_pages"),
        format!("partitions/{bystander_part}/users"),
    ] {
        let v = vm
            .read_file(&format!("/sys/kernel/mm/hotmem/{file}"))
            .or_panic(&file);
        g.push((file, v.trim().parse().expect("a number")));
    }
    g
}

#[test]
#[ignore = "long: run via make soak"]
fn hotmem_soak() {
    let cycles: u64 = env::var("HOTMEM_SOAK_CYCLES")
        .map_or(1000, |s| s.parse().expect("HOTMEM_SOAK_CYCLES: a number"));
    let mut vm =
        Vm::boot(&hotmem_config("hotmem_soak", true)).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(300));
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");

    // The bystander: its own partition, 64 MiB of pattern, held throughout.
    plug(&mut vm, PARTITION);
    vm.exec_ok(&["sh", "-c", ONLINE]).or_panic("onlining");
    let pid = vm
        .exec_ok(&[
            "sh",
            "-c",
            &format!(
                "hotmem-run -- hotmem-memhog --size 64M --fill {BYSTANDER_FILL} --hold 36000s \
                 >/dev/null 2>&1 & echo $!; sleep 3"
            ),
        ])
        .or_panic("starting the bystander")
        .stdout
        .trim()
        .to_owned();
    let part = vm
        .exec_ok(&[
            "sh",
            "-c",
            "for p in /sys/kernel/mm/hotmem/partitions/part*; do \
             [ \"$(cat $p/state)\" = bound ] && basename $p; done",
        ])
        .or_panic("the bystander's partition")
        .stdout
        .trim()
        .to_owned();
    assert!(part.starts_with("part"), "bystander not bound: {part:?}");

    let base = gauges(&mut vm, &part);
    let mem_free = meminfo(&mut vm, "MemFree");
    let fast = vmstat(&mut vm, "hotmem_offline_fast");
    let slow = vmstat(&mut vm, "hotmem_offline_slow");
    let fail = vmstat(&mut vm, "hotmem_alloc_fail");

    let start = Instant::now();
    for cycle in 1..=cycles {
        plug(&mut vm, 2 * PARTITION);
        let out = vm
            .exec(&[
                "sh",
                "-c",
                &format!("{ONLINE}; hotmem-run --nonblock -- hotmem-memhog --size 128M --fill 90"),
            ])
            .or_panic("running an instance");
        assert!(
            out.success(),
            "cycle {cycle}: the instance failed:\n{}{}\nconsole:\n{}",
            out.stdout,
            out.stderr,
            vm.console_tail(40)
        );
        plug(&mut vm, PARTITION);
        if cycle % 100 == 0 || cycle == cycles {
            eprintln!(
                "soak: {cycle}/{cycles} cycles, {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = start.elapsed();

    assert_eq!(gauges(&mut vm, &part), base, "HotMem gauges after the soak");
    assert_eq!(
        vmstat(&mut vm, "hotmem_offline_fast") - fast,
        cycles * PARTITION / BLOCK,
        "every unplug took the fast path"
    );
    assert_eq!(vmstat(&mut vm, "hotmem_offline_slow"), slow);
    assert_eq!(vmstat(&mut vm, "hotmem_alloc_fail"), fail);
    let now_free = meminfo(&mut vm, "MemFree");
    assert!(
        now_free + 16 * 1024 >= mem_free,
        "MemFree fell from {mem_free} kB to {now_free} kB over the soak"
    );

    // The bystander's 64 MiB, read through /proc/<pid>/mem: every byte is
    // still the pattern.
    let bad = vm
        .exec_ok(&[
            "sh",
            "-c",
            &format!(
                "while read -r range perms off dev inode path; do \
                   [ -z \"$path\" ] && [ \"${{perms%??}}\" = rw ] || continue; \
                   start=$((0x${{range%-*}})); end=$((0x${{range#*-}})); \
                   [ $((end - start)) -ge 67108864 ] && break; \
                 done </proc/{pid}/maps; \
                 dd if=/proc/{pid}/mem bs=4096 skip=$((start / 4096)) count=16384 \
                   2>/dev/null | tr -d '\\{BYSTANDER_FILL:03o}' | wc -c"
            ),
        ])
        .or_panic("reading the bystander's memory")
        .stdout;
    assert_eq!(bad.trim(), "0", "bytes of the bystander that changed");
    eprintln!(
        "soak: {cycles} cycles in {:.1} s ({:.0} ms per cycle), gauges at baseline, \
         bystander intact",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64
    );
    vm.shutdown().or_panic("shutdown");
}
