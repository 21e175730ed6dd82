//! `hotmemctl` scale-up / scale-down on real guests: HotMem (plug a
//! partition, bind, unplug on the fast path) and vanilla virtio-mem.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hotmem_host::scale::{self, ScaleDownOptions, ScaleUpOptions, Trigger};
use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_host::{Vm, VmConfig};
use hotmem_vmtests::{config, vmstat, OrPanic};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 * MIB;

fn guest(name: &str, hotmem: bool) -> Vm {
    let mut cfg: VmConfig = config(name);
    cfg.vmem_block_size = BLOCK;
    cfg.append = if hotmem {
        "hotmem=on hotmem_partition_size=128M".to_owned()
    } else {
        "hotmem=off".to_owned()
    };
    let mut vm = Vm::boot(&cfg).or_panic("booting the guest");
    vm.set_command_timeout(Duration::from_secs(120));
    if !hotmem {
        vm.write_file(
            "/sys/devices/system/memory/auto_online_blocks",
            "online_movable",
        )
        .or_panic("auto-online policy");
    }
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    vm
}

fn memhog(size: &str) -> ScaleUpOptions {
    let mut opts = ScaleUpOptions::new(
        ["hotmem-memhog", "--size", size, "--hold", "10m"]
            .map(str::to_owned)
            .to_vec(),
    );
    opts.memory_limit = Some(BLOCK);
    opts
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn scale_up_down_hotmem() {
    let mut vm = guest("scale_up_down_hotmem", true);
    let up1 = scale::scale_up(&mut vm, &memhog("64M")).or_panic("scale-up 1");
    assert_eq!(up1.mode, "hotmem");
    assert_eq!(
        up1.plugged_bytes, BLOCK,
        "no free partition: one is plugged"
    );
    assert!(up1.plug_ms.is_some() && up1.online_ms.is_some());
    assert_eq!(up1.onlined_blocks, 1);
    assert_eq!(up1.memory.plugged, BLOCK);
    let up2 = scale::scale_up(&mut vm, &memhog("64M")).or_panic("scale-up 2");
    assert_eq!(up2.memory.plugged, 2 * BLOCK);
    let (p1, p2) = (
        up1.instance.partition.unwrap(),
        up2.instance.partition.unwrap(),
    );
    assert_ne!(p1, p2);

    // A free partition is reused without plugging.
    let mut idle = ScaleUpOptions::new(vec!["sleep".into(), "600".into()]);
    idle.memory_limit = Some(BLOCK);
    let down1 = scale::scale_down(&mut vm, &{
        let mut o = ScaleDownOptions::new(up1.instance.instance);
        o.keep_plugged = true;
        o
    })
    .or_panic("stop without unplug");
    assert_eq!((down1.reclaim_ms, down1.memory.plugged), (None, 2 * BLOCK));
    let up3 = scale::scale_up(&mut vm, &idle).or_panic("scale-up onto a free partition");
    assert_eq!((up3.plugged_bytes, up3.plug_ms), (0, None));
    assert_eq!(up3.instance.partition, Some(p1));

    // Scale down both: each unplug takes the fast path, nothing migrates.
    let fast = vmstat(&mut vm, "hotmem_offline_fast");
    let migrated = vmstat(&mut vm, "pgmigrate_success");
    for inst in [up2.instance.instance, up3.instance.instance] {
        let down = scale::scale_down(&mut vm, &ScaleDownOptions::new(inst)).or_panic("scale-down");
        assert_eq!(down.mode, "hotmem");
        assert_eq!(down.unplugged_bytes, BLOCK);
        assert!(down.reclaim_ms.is_some() && down.instance.exit.unwrap().stopped);
        assert_eq!(down.trigger, Some(Trigger::Qmp));
    }
    assert_eq!(vm.plugged_size().or_panic("size"), 0);
    assert_eq!(vmstat(&mut vm, "hotmem_offline_fast") - fast, 2);
    assert_eq!(vmstat(&mut vm, "pgmigrate_success"), migrated);
    assert!(scale::list_instances(&mut vm)
        .or_panic("list")
        .instances
        .is_empty());

    // Nothing left to unplug, and a sysfs trigger that does not exist:
    // both are clean errors that change nothing.
    let up = scale::scale_up(&mut vm, &memhog("16M")).or_panic("scale-up 4");
    let mut bad = ScaleDownOptions::new(up.instance.instance);
    bad.trigger = Trigger::Sysfs {
        path: "/sys/nonexistent/part{partition}/unplug".into(),
        value: "{partition}".into(),
    };
    let err = scale::scale_down(&mut vm, &bad).unwrap_err();
    assert!(err.to_string().contains("/sys/nonexistent/part"), "{err}");
    assert_eq!(vm.plugged_size().or_panic("size"), BLOCK);
    vm.set_requested_size(0).or_panic("requested-size");
    vm.wait_plugged(0, Duration::from_secs(120))
        .or_panic("unplug");
    vm.shutdown().or_panic("shutdown");
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn scale_up_down_vanilla() {
    let mut vm = guest("scale_up_down_vanilla", false);
    let up = scale::scale_up(&mut vm, &memhog("64M")).or_panic("scale-up");
    assert_eq!(up.mode, "vanilla");
    assert_eq!((up.instance.partition, up.plugged_bytes), (None, BLOCK));
    assert!(up.online_ms.is_none());
    let down = scale::scale_down(&mut vm, &ScaleDownOptions::new(up.instance.instance))
        .or_panic("scale-down");
    assert_eq!(down.mode, "vanilla");
    assert!(down.reclaim_ms.is_some());
    assert_eq!(down.memory.plugged, 0);
    vm.shutdown().or_panic("shutdown");
}

/// With the Rust HotMem driver (`hotmem_virtio_mem`), which onlines
/// partitions itself: scale-up, then scale-down through its sysfs trigger
/// and through QMP.
#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn scale_up_down_rust_driver_sysfs_trigger() {
    let mut cfg: VmConfig = config("scale_up_down_rust_driver_sysfs_trigger");
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting the guest");
    vm.set_command_timeout(Duration::from_secs(120));
    vm.exec_ok(&["modprobe", "hotmem_virtio_mem"])
        .or_panic("modprobe hotmem_virtio_mem");
    let up1 = scale::scale_up(&mut vm, &memhog("32M")).or_panic("scale-up 1");
    let up2 = scale::scale_up(&mut vm, &memhog("32M")).or_panic("scale-up 2");
    assert_eq!(
        (up1.onlined_blocks, up2.onlined_blocks),
        (0, 0),
        "the driver onlines its partitions itself"
    );
    assert_eq!(up2.memory.plugged, 2 * BLOCK);
    let part1 = up1.instance.partition.unwrap();

    let mut down = ScaleDownOptions::new(up1.instance.instance);
    down.trigger = Trigger::Sysfs {
        path: "/sys/bus/virtio/devices/virtio1/hotmem/unplug".into(),
        value: "{partition}".into(),
    };
    let r = scale::scale_down(&mut vm, &down).or_panic("scale-down via sysfs");
    assert_eq!(r.memory.plugged, BLOCK);
    assert_eq!(r.memory.requested, BLOCK, "requested-size follows");
    let last_op: Vec<String> = ["last_op", "last_op_result", "last_op_partitions"]
        .into_iter()
        .map(|f| {
            vm.read_file(&format!("/sys/bus/virtio/devices/virtio1/hotmem/{f}"))
                .or_panic(f)
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(last_op, ["sysfs_unplug", "ok", "1"], "{last_op:?}");
    let state = vm
        .read_file(&format!(
            "/sys/kernel/mm/hotmem/partitions/part{part1}/state"
        ))
        .unwrap_or_else(|_| "gone".into());
    assert!(
        matches!(state.trim(), "absent" | "gone"),
        "partition {part1} was the one unplugged: {state}"
    );

    let r = scale::scale_down(&mut vm, &ScaleDownOptions::new(up2.instance.instance))
        .or_panic("scale-down via QMP");
    assert_eq!(r.memory.plugged, 0);
    vm.shutdown().or_panic("shutdown");
}
