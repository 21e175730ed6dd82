//! Function instances do not run as root: an instance started by the agent
//! runs as its own unprivileged user with no supplementary groups and
//! `no_new_privs`, and cannot move itself out of its cgroup, change its
//! memory limit, signal the agent or another instance, bind again, or read
//! another process's memory. The same probes run as root (an instance
//! started with `uid: 0`) show each of them would otherwise succeed or
//! fail differently. The seccomp filter (`hotmem-run --seccomp`, the
//! default where the guest kernel has seccomp filters) refuses binding,
//! mounts, namespaces and `chroot` with `EPERM` even to root.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hotmem_host::Vm;
use hotmem_host::{AgentTransport as _, Guest as _, MemoryDevice as _};
use hotmem_proto::{
    Instance, Op, PartitionsResult, StartInstanceArgs, StopInstanceArgs, WaitFreePartitionsArgs,
    INSTANCE_UID_BASE,
};
use hotmem_vmtests::{config, OrPanic};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 * MIB;

/// Runs each probe in a subshell and prints `name: ok` or `name: <error>`,
/// then `done`, then holds the instance.
const PROBES: &str = r#"
probe() { n=$1; shift; if out=$( ("$@") 2>&1 ); then echo "$n: ok"; else echo "$n: $out"; fi; }
cg=$(cut -d: -f3 /proc/self/cgroup)
echo "ids: $(id -u) $(id -g) $(id -G)"
echo "nnp: $(grep ^NoNewPrivs: /proc/self/status | tr -d '\t')"
echo "seccomp: $(grep ^Seccomp: /proc/self/status | tr -d '\t')"
echo "cgroup: $cg"
probe leave_cgroup sh -c 'echo $$ >/sys/fs/cgroup/cgroup.procs'
probe raise_limit sh -c "echo max >/sys/fs/cgroup$cg/memory.max"
probe kill_agent kill -0 "$AGENT"
probe kill_other kill -0 "$OTHER"
probe rebind hotmem-run --nonblock -- true
probe mem_other dd if=/proc/$OTHER/mem of=/dev/null bs=1 count=1
probe mem_agent dd if=/proc/$AGENT/mem of=/dev/null bs=1 count=1
echo done
exec sleep 600
"#;

fn start(vm: &mut Vm, argv: &[&str], env: &[(&str, String)], uid: Option<u32>) -> Instance {
    vm.agent_call(
        Op::StartInstance(StartInstanceArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            memory_limit: Some(BLOCK),
            hotmem: true,
            bind_timeout_ms: Some(10_000),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            uid,
            // Root keeps prctl(PR_HOTMEM) (the contrast below); others get
            // the filter where the guest kernel has seccomp.
            seccomp: (uid == Some(0)).then_some(false),
            ..StartInstanceArgs::default()
        }),
        None,
    )
    .or_panic("start_instance")
}

fn stop(vm: &mut Vm, instance: u64) {
    let _: Instance = vm
        .agent_call(
            Op::StopInstance(StopInstanceArgs {
                instance,
                grace_ms: 0,
            }),
            None,
        )
        .or_panic("stop_instance");
}

/// The probe results of an instance running [`PROBES`], by name.
fn probe_results(vm: &mut Vm, inst: &Instance) -> BTreeMap<String, String> {
    let path = format!("/run/hotmem/instances/{}/stdout", inst.instance);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = vm.read_file(&path).or_panic("reading the probe output");
        if out.lines().any(|l| l == "done") {
            return out
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect();
        }
        assert!(Instant::now() < deadline, "probes did not finish: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn instances_are_unprivileged_and_isolated() {
    let mut cfg = config("instances_are_unprivileged_and_isolated");
    cfg.vmem_block_size = BLOCK;
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(120));
    vm.exec_ok(&["modprobe", "virtio_mem"])
        .or_panic("modprobe virtio_mem");
    vm.set_requested_size(3 * BLOCK).or_panic("requested-size");
    vm.wait_plugged(3 * BLOCK, Duration::from_secs(120))
        .or_panic("plug");
    let _: PartitionsResult = vm
        .agent_call(
            Op::WaitFreePartitions(WaitFreePartitionsArgs {
                count: 3,
                online: true,
                timeout_ms: 60_000,
            }),
            None,
        )
        .or_panic("wait_free_partitions");
    let agent = vm
        .exec_ok(&["pidof", "hotmem-agent"])
        .or_panic("pidof hotmem-agent")
        .stdout
        .trim()
        .to_owned();
    assert!(agent.parse::<u32>().is_ok(), "one agent pid: {agent:?}");

    // A victim, and a prober that tries to get at it, at the agent and at
    // its own cgroup.
    let victim = start(&mut vm, &["sleep", "600"], &[], None);
    let env = [("AGENT", agent.clone()), ("OTHER", victim.pid.to_string())];
    let prober = start(&mut vm, &["sh", "-c", PROBES], &env, None);
    let uid = INSTANCE_UID_BASE + u32::try_from(prober.instance).unwrap();
    assert_eq!((prober.uid, prober.gid), (Some(uid), Some(uid)));
    assert_ne!(victim.uid, prober.uid, "each instance has its own user");
    assert!(
        prober.partition.is_some(),
        "bound before dropping privileges"
    );
    let r = probe_results(&mut vm, &prober);
    assert_eq!(r["ids"], format!("{uid} {uid} {uid}"), "{r:?}");
    assert_eq!(r["nnp"], "NoNewPrivs:1", "{r:?}");
    // The guest kernel has seccomp filters, so the agent asked for one.
    assert!(prober.seccomp, "{prober:?}");
    assert_eq!(r["seccomp"], "Seccomp:2", "filter mode: {r:?}");
    assert_eq!(r["cgroup"], format!("/hotmem/i{}", prober.instance));
    let eacces = "Permission denied";
    let eperm = "Operation not permitted";
    for (probe, errno) in [
        ("leave_cgroup", eacces),
        ("raise_limit", eacces),
        ("kill_agent", eperm),
        ("kill_other", eperm),
        ("mem_other", eacces),
        ("mem_agent", eacces),
    ] {
        assert!(r[probe].ends_with(errno), "{probe}: {:?} ({r:?})", r[probe]);
    }
    // EPERM from prctl(PR_HOTMEM): no CAP_SYS_RESOURCE (or the seccomp
    // filter, where the kernel has one).
    assert!(
        r["rebind"].contains("binding needs CAP_SYS_RESOURCE"),
        "{r:?}"
    );
    // The prober is still in its cgroup, bound to its partition.
    let procs = vm
        .read_file(&format!(
            "/sys/fs/cgroup/hotmem/i{}/cgroup.procs",
            prober.instance
        ))
        .or_panic("cgroup.procs");
    assert!(
        procs.lines().any(|l| l == prober.pid.to_string()),
        "{procs}"
    );

    // The same probes as root: the checks above are not vacuous.
    let root = start(&mut vm, &["sh", "-c", PROBES], &env, Some(0));
    assert_eq!(root.uid, Some(0));
    let r = probe_results(&mut vm, &root);
    assert!(r["ids"].starts_with("0 0"), "{r:?}");
    assert_eq!(r["seccomp"], "Seccomp:0", "{r:?}");
    for probe in ["leave_cgroup", "raise_limit", "kill_agent", "kill_other"] {
        assert_eq!(r[probe], "ok", "{probe} as root: {r:?}");
    }
    // Root gets past the permission check (and then fails to read page 0).
    assert!(!r["mem_other"].ends_with(eacces), "{r:?}");
    assert!(r["rebind"].contains("already bound"), "{r:?}");

    for inst in [root, prober, victim] {
        stop(&mut vm, inst.instance);
    }
    // The run directories went with the instances.
    let left = vm
        .exec_ok(&["ls", "/run/hotmem/instances"])
        .or_panic("ls")
        .stdout;
    assert!(left.trim().is_empty(), "run dirs left: {left}");
    vm.shutdown().or_panic("shutdown");
}

/// Calls the `--seccomp` filter refuses, tried by root, whom neither
/// permissions nor capabilities stop: binding (`prctl(PR_HOTMEM)`), a
/// mount, a new namespace, `chroot`.
const SYSCALL_PROBES: &str = r#"
probe() { n=$1; shift; if out=$( ("$@") 2>&1 ); then echo "$n: ok"; else echo "$n: $out"; fi; }
echo "seccomp: $(grep ^Seccomp: /proc/self/status | tr -d '\t')"
probe bind hotmem-run --nonblock -- true
mkdir -p /tmp/mnt.$$
probe mount sh -c "mount -t tmpfs none /tmp/mnt.$$ && umount /tmp/mnt.$$"
probe unshare unshare -u true
probe chroot chroot / true
echo done
exec sleep 600
"#;

#[test]
#[ignore = "boots a QEMU guest; run via make check"]
fn the_seccomp_filter_confines_even_root() {
    let mut cfg = config("the_seccomp_filter_confines_even_root");
    cfg.append = "hotmem=on hotmem_partition_size=128M".to_owned();
    let mut vm = Vm::boot(&cfg).or_panic("booting a hotmem=on guest");
    vm.set_command_timeout(Duration::from_secs(120));
    let avail = vm
        .read_file("/proc/sys/kernel/seccomp/actions_avail")
        .or_panic("the guest kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)");
    assert!(avail.contains("errno"), "{avail}");
    let root_with = |vm: &mut Vm, seccomp: bool| -> Instance {
        vm.agent_call(
            Op::StartInstance(StartInstanceArgs {
                argv: vec!["sh".into(), "-c".into(), SYSCALL_PROBES.into()],
                // Unbound: no partition is plugged; binding is what is probed.
                hotmem: false,
                uid: Some(0),
                seccomp: Some(seccomp),
                ..StartInstanceArgs::default()
            }),
            None,
        )
        .or_panic("start_instance")
    };
    let eperm = "Operation not permitted";

    let filtered = root_with(&mut vm, true);
    assert!(filtered.seccomp && filtered.uid == Some(0), "{filtered:?}");
    let r = probe_results(&mut vm, &filtered);
    assert_eq!(r["seccomp"], "Seccomp:2", "{r:?}");
    // prctl(PR_HOTMEM) answers EPERM before the kernel looks for a partition.
    assert!(
        r["bind"].contains("binding needs CAP_SYS_RESOURCE"),
        "{r:?}"
    );
    // busybox mount says "permission denied" for EPERM.
    assert!(
        r["mount"].to_lowercase().contains("permission denied") || r["mount"].contains(eperm),
        "{r:?}"
    );
    for probe in ["unshare", "chroot"] {
        assert!(r[probe].contains(eperm), "{probe}: {:?} ({r:?})", r[probe]);
    }

    // Without the filter the same root instance gets past every one of them.
    let open = root_with(&mut vm, false);
    assert!(!open.seccomp, "{open:?}");
    let r = probe_results(&mut vm, &open);
    assert_eq!(r["seccomp"], "Seccomp:0", "{r:?}");
    assert!(r["bind"].contains("no HotMem partition is free"), "{r:?}");
    for probe in ["mount", "chroot"] {
        assert_eq!(r[probe], "ok", "{probe} without the filter: {r:?}");
    }
    // unshare(2) fails with EINVAL where the guest kernel has no
    // namespaces, never with EPERM for root.
    assert!(!r["unshare"].contains(eperm), "{r:?}");

    for inst in [filtered, open] {
        stop(&mut vm, inst.instance);
    }
    vm.shutdown().or_panic("shutdown");
}
