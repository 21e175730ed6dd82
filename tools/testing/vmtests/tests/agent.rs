//! Guest agent instance operations on a real hotmem=on guest: start bound
//! instances, list them with their partition and memory use, stop them,
//! and receive exit and OOM-kill events.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hotmem_host::agent::AgentError;
use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_host::{Vm, VmConfig, VmErrorKind};
use hotmem_proto::{
    ErrorKind, EventList, EventsArgs, Instance, InstanceEventKind, InstanceList, InstanceState, Op,
    PartitionState, PartitionsResult, StartInstanceArgs, StopInstanceArgs, WaitFreePartitionsArgs,
};
use hotmem_vmtests::{config, OrPanic};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 * MIB;

fn hotmem_config(name: &str) -> VmConfig {
    let mut cfg = config(name);
    cfg.vmem_block_size = BLOCK;
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    cfg
}

fn start(vm: &mut Vm, argv: &[&str], limit: Option<u64>) -> Result<Instance, hotmem_host::VmError> {
    vm.agent_call(
        Op::StartInstance(StartInstanceArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            memory_limit: limit,
            hotmem: true,
            bind_timeout_ms: None,
            ..StartInstanceArgs::default()
        }),
        None,
    )
}

fn stop(vm: &mut Vm, instance: u64) -> Instance {
    vm.agent_call(
        Op::StopInstance(StopInstanceArgs {
            instance,
            grace_ms: 0,
        }),
        None,
    )
    .or_panic("stop_instance")
}

fn list(vm: &mut Vm) -> InstanceList {
    vm.agent_call(Op::ListInstances, None)
        .or_panic("list_instances")
}

fn partitions(vm: &mut Vm) -> PartitionsResult {
    vm.agent_call(Op::Partitions, None).or_panic("partitions")
}

/// The agent error kind of a failed call.
fn remote_kind(err: &hotmem_host::VmError) -> ErrorKind {
    match err.kind() {
        VmErrorKind::Agent(AgentError::Remote { error, .. }) => error.kind,
        other => panic!("expected an agent error, got {other}"),
    }
}

/// Waits until the listed instance `id` uses at least `bytes` in its partition.
fn wait_partition_use(vm: &mut Vm, id: u64, bytes: u64) -> Instance {
    let start = Instant::now();
    loop {
        let inst = list(vm)
            .instances
            .into_iter()
            .find(|i| i.instance == id)
            .expect("instance listed");
        if inst.partition_used.unwrap_or(0) >= bytes {
            return inst;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "instance {id} never used {bytes} bytes of its partition: {inst:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Collects events until instance `id`'s exit; checks an OOM-kill event
/// came with it when the exit says so, and returns the exit.
fn wait_exit_event(vm: &mut Vm, id: u64) -> hotmem_proto::InstanceExit {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut events = Vec::new();
    loop {
        if let Some(exit) = events.iter().find_map(|e: &hotmem_proto::InstanceEvent| {
            (e.instance == id && e.kind == InstanceEventKind::InstanceExited)
                .then(|| e.exit.clone())
                .flatten()
        }) {
            let oom_event = events
                .iter()
                .any(|e| e.instance == id && e.kind == InstanceEventKind::OomKilled);
            assert_eq!(oom_event, exit.oom_killed, "{events:?}");
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "no exit event for {id}: {events:?}"
        );
        let got: EventList = vm
            .agent_call(
                Op::Events(EventsArgs {
                    wait_ms: 2000,
                    ..EventsArgs::default()
                }),
                Some(Duration::from_secs(30)),
            )
            .or_panic("events");
        events.extend(got.events);
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn agent_instances_start_list_stop_events() {
    let mut vm = Vm::boot(&hotmem_config("agent_instances_start_list_stop_events"))
        .or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(120));
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    vm.set_requested_size(2 * BLOCK).or_panic("requested-size");
    vm.wait_plugged(2 * BLOCK, Duration::from_secs(120))
        .or_panic("plug");
    let ready: PartitionsResult = vm
        .agent_call(
            Op::WaitFreePartitions(WaitFreePartitionsArgs {
                count: 2,
                online: true,
                timeout_ms: 60_000,
            }),
            None,
        )
        .or_panic("wait_free_partitions");
    assert_eq!(ready.free(), 2, "{ready:?}");
    assert_eq!(ready.onlined, 2, "the agent onlined both blocks");
    // Nothing offline any more: onlining again is a no-op.
    let again: hotmem_proto::OnlineResult = vm
        .agent_call(Op::OnlineHotmemBlocks, None)
        .or_panic("online_hotmem_blocks");
    assert!(again.onlined.is_empty());

    // Two instances, each bound to its own partition.
    let a = start(
        &mut vm,
        &["hotmem-memhog", "--size", "48M", "--hold", "10m"],
        Some(128 * MIB),
    )
    .or_panic("start memhog");
    let b = start(
        &mut vm,
        &["hotmem-filework", "--anon", "16M", "--hold", "10m"],
        Some(128 * MIB),
    )
    .or_panic("start filework");
    let (pa, pb) = (a.partition.expect("bound"), b.partition.expect("bound"));
    assert_ne!(pa, pb);
    assert!(a.cgroup.is_some());
    let a_listed = wait_partition_use(&mut vm, a.instance, 48 * MIB);
    assert_eq!(a_listed.state, InstanceState::Running);
    assert!(a_listed.memory_current.unwrap() >= 48 * MIB, "{a_listed:?}");
    let parts = partitions(&mut vm);
    let bound: Vec<u64> = parts
        .partitions
        .iter()
        .filter(|p| p.state == PartitionState::Bound)
        .map(|p| p.id)
        .collect();
    assert_eq!(bound.len(), 2, "{parts:?}");
    assert!(bound.contains(&pa) && bound.contains(&pb));

    // No partition left: a third instance cannot bind (and is not listed).
    let err = start(&mut vm, &["sleep", "100"], None).unwrap_err();
    assert_eq!(remote_kind(&err), ErrorKind::BindFailed, "{err}");
    assert_eq!(list(&mut vm).instances.len(), 2);

    // Stopping b frees its partition at once.
    let b_final = stop(&mut vm, b.instance);
    assert!(b_final.exit.as_ref().unwrap().stopped);
    assert_eq!(
        vm.read_file(&format!("/sys/kernel/mm/hotmem/partitions/part{pb}/state"))
            .or_panic("state")
            .trim(),
        "free"
    );

    // An instance over its memory limit is OOM-killed, and says so.
    let c = start(
        &mut vm,
        &["hotmem-memhog", "--size", "100M", "--hold", "10m"],
        Some(48 * MIB),
    )
    .or_panic("start an instance over its limit");
    assert_eq!(c.partition, Some(pb));
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !events.iter().any(|e: &hotmem_proto::InstanceEvent| {
        e.instance == c.instance && e.kind == InstanceEventKind::InstanceExited
    }) {
        assert!(
            Instant::now() < deadline,
            "no exit event for {c:?}: {events:?}"
        );
        let got: EventList = vm
            .agent_call(
                Op::Events(EventsArgs {
                    wait_ms: 2000,
                    ..EventsArgs::default()
                }),
                Some(Duration::from_secs(30)),
            )
            .or_panic("events");
        events.extend(got.events);
    }
    let kinds: Vec<_> = events.iter().map(|e| (e.instance, e.kind)).collect();
    assert!(
        kinds.contains(&(b.instance, InstanceEventKind::InstanceExited)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(c.instance, InstanceEventKind::OomKilled)),
        "{events:?}"
    );
    let exit = events
        .iter()
        .find_map(|e| (e.instance == c.instance).then(|| e.exit.clone()).flatten())
        .unwrap();
    assert!(exit.oom_killed && !exit.stopped, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    let listed = list(&mut vm);
    let c_listed = listed
        .instances
        .iter()
        .find(|i| i.instance == c.instance)
        .unwrap();
    assert_eq!(c_listed.state, InstanceState::Exited);
    stop(&mut vm, c.instance);

    // Without a memory limit the partition is the bound: going past it is a
    // partition-scoped OOM kill, reported the same way.
    let d = start(
        &mut vm,
        &["hotmem-memhog", "--size", "200M", "--hold", "10m"],
        None,
    )
    .or_panic("start an instance bigger than its partition");
    assert_eq!(d.partition, Some(pb));
    let exit = wait_exit_event(&mut vm, d.instance);
    assert!(exit.oom_killed && !exit.stopped, "{exit:?}");
    stop(&mut vm, d.instance);

    // Unknown instances are errors, not crashes; the agent keeps serving.
    let err = vm
        .agent_call::<Instance>(
            Op::StopInstance(StopInstanceArgs {
                instance: 999,
                grace_ms: 0,
            }),
            None,
        )
        .unwrap_err();
    assert_eq!(remote_kind(&err), ErrorKind::NoSuchInstance);
    stop(&mut vm, a.instance);
    assert!(list(&mut vm).instances.is_empty());
    let parts = partitions(&mut vm);
    assert_eq!(parts.free(), 2, "all partitions free again: {parts:?}");

    vm.set_requested_size(0).or_panic("requested-size 0");
    vm.wait_plugged(0, Duration::from_secs(120))
        .or_panic("unplug");
    vm.shutdown().or_panic("shutdown");
}
