//! The guest agent serves requests concurrently and loses no event: a
//! `partitions` (and `list_instances`) call is answered while a 10 s `exec`
//! runs; a request the host gives up on is cancelled in the guest; events
//! stay until acknowledged by the cursor; `hello` identifies the boot, the
//! agent run and its build, and a restarted agent is noticed.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hotmem_host::agent::{AgentError, EventCursor};
use hotmem_host::{AgentTransport as _, Guest as _};
use hotmem_host::{Vm, VmErrorKind};
use hotmem_proto::{
    ErrorKind, EventList, EventsArgs, ExecArgs, ExecResult, Instance, InstanceEventKind,
    InstanceList, Op, PartitionsResult, ReadFileArgs, ReadFileResult, StartInstanceArgs,
    StopInstanceArgs,
};
use hotmem_vmtests::{config, OrPanic};

fn exec_args(script: &str, timeout_ms: u64) -> Op {
    Op::Exec(ExecArgs {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        timeout_ms: Some(timeout_ms),
        ..ExecArgs::default()
    })
}

/// True if a process with `needle` in its command line runs in the guest.
fn guest_runs(vm: &mut Vm, needle: &str) -> bool {
    let ps = vm
        .exec_ok(&["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo"])
        .or_panic("listing processes")
        .stdout;
    ps.contains(needle)
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn agent_serves_concurrently_and_keeps_events() {
    let mut cfg = config("agent_serves_concurrently_and_keeps_events");
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(60));

    let hello = vm.boot_hello().cloned().expect("boot hello");
    assert_eq!(hello.boot_id.len(), 36, "{hello:?}");
    assert!(!hello.agent_id.is_empty() && !hello.build_revision.is_empty());
    let check = vm.check_agent().or_panic("check_agent");
    assert!(!check.restarted && !check.rebooted, "{check:?}");

    // A 10 s exec does not hold up partitions or list_instances.
    let started = Instant::now();
    let long = vm
        .agent_start(exec_args("sleep 10; echo slept", 30_000))
        .or_panic("starting a 10 s exec");
    let parts: PartitionsResult = vm
        .agent_call(Op::Partitions, Some(Duration::from_secs(5)))
        .or_panic("partitions during the exec");
    let parts_ms = started.elapsed();
    assert!(parts.enabled);
    let _: InstanceList = vm
        .agent_call(Op::ListInstances, Some(Duration::from_secs(5)))
        .or_panic("list_instances during the exec");
    assert!(
        parts_ms < Duration::from_secs(5),
        "partitions took {parts_ms:?}: it waited for the exec"
    );
    let done: ExecResult = vm
        .agent_finish(long, Duration::from_secs(60))
        .or_panic("the 10 s exec");
    assert!(done.success() && done.stdout == "slept\n", "{done:?}");
    assert!(started.elapsed() >= Duration::from_secs(10));

    // The host gives up on a request: the guest stops it too.
    let doomed = vm
        .agent_start(exec_args("exec sleep 6543", 600_000))
        .or_panic("starting a long exec");
    let err = vm
        .agent_finish::<ExecResult>(doomed, Duration::from_secs(2))
        .unwrap_err();
    assert!(
        matches!(err.kind(), VmErrorKind::Agent(AgentError::Timeout { .. })),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while guest_runs(&mut vm, "sleep 6543") {
        assert!(Instant::now() < deadline, "the cancelled exec still runs");
        std::thread::sleep(Duration::from_millis(200));
    }

    // read_file is capped.
    let err = vm
        .agent_call::<ReadFileResult>(
            Op::ReadFile(ReadFileArgs {
                path: "/dev/zero".into(),
                max_bytes: Some(4096),
            }),
            None,
        )
        .unwrap_err();
    let VmErrorKind::Agent(AgentError::Remote { error, .. }) = err.kind() else {
        panic!("{err}");
    };
    assert_eq!(error.kind, ErrorKind::TooLarge);

    // Events stay until the cursor acknowledges them.
    let inst: Instance = vm
        .agent_call(
            Op::StartInstance(StartInstanceArgs {
                argv: vec!["true".into()],
                hotmem: false,
                ..StartInstanceArgs::default()
            }),
            None,
        )
        .or_panic("start_instance");
    let mut cursor = EventCursor::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let got = vm
            .events(&mut cursor, Duration::from_secs(2))
            .or_panic("events");
        if !got.events.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "no exit event");
    };
    assert_eq!(first.events[0].instance, inst.instance);
    assert_eq!(first.events[0].kind, InstanceEventKind::InstanceExited);
    // Suppose that answer was lost: asking with the old cursor returns it.
    let again: EventList = vm
        .agent_call(
            Op::Events(EventsArgs {
                after_seq: Some(0),
                agent_id: Some(first.agent_id.clone()),
                ..EventsArgs::default()
            }),
            None,
        )
        .or_panic("events again");
    assert_eq!(again.events, first.events);
    // With the advanced cursor it is acknowledged and gone.
    let next = vm
        .events(&mut cursor, Duration::ZERO)
        .or_panic("events after");
    assert!(next.events.is_empty(), "{next:?}");
    let _: Instance = vm
        .agent_call(
            Op::StopInstance(StopInstanceArgs {
                instance: inst.instance,
                grace_ms: 0,
            }),
            None,
        )
        .or_panic("forget the instance");

    // The agent dies (init respawns it): the host notices the restart.
    // Requests sent while no agent reads the port may be lost: short waits.
    vm.set_command_timeout(Duration::from_secs(5));
    let suicide = vm
        .agent_start(exec_args("kill -9 $PPID", 10_000))
        .or_panic("killing the agent");
    let _ = vm.agent_finish::<ExecResult>(suicide, Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(60);
    let check = loop {
        if let Ok(check) = vm.check_agent() {
            if check.restarted {
                break check;
            }
        }
        assert!(Instant::now() < deadline, "restart not noticed");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!check.rebooted);
    assert!(check.warnings()[0].contains("orphaned"));
    vm.shutdown().or_panic("shutdown");
}
