//! Scaling function instances up and down on a running guest.
//!
//! * **scale-up**: make sure a free HotMem partition exists — if none is,
//!   raise the virtio-mem `requested-size` by one partition (QMP), wait for
//!   the device to plug it and for the guest to turn it into a free
//!   partition (the agent's `wait_free_partitions`, which onlines offline
//!   blocks with `online_hotmem` when no HotMem-aware driver did) — then
//!   start the function bound to a partition (`hotmem-run`).
//! * **scale-down**: stop the instance (its partition is then empty) and
//!   give one partition back: lower `requested-size` by one partition (QMP
//!   trigger), or ask the guest driver through its sysfs trigger, and wait
//!   until the device's plugged `size` dropped.
//!
//! In a `hotmem=off` guest ("vanilla") the same steps plug and unplug
//! `unit` bytes of ZONE_MOVABLE memory and start instances unbound; the
//! unplug then has to find and migrate used pages.
//!
//! Every step is timed on the host; reclaim latency is the time from the
//! trigger until the device's plugged size is the lower one, by the
//! device's own timestamp of the change where it gives one (QEMU's
//! `MEMORY_DEVICE_SIZE_CHANGE` event, 1 µs), else by polling it every
//! 1 ms ([`MemoryDevice::wait_plugged_timed`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hotmem_proto::{
    Instance, InstanceList, Op, PartitionsResult, StartInstanceArgs, StopInstanceArgs,
    WaitFreePartitionsArgs,
};
use serde::Serialize;

use crate::device::{AgentTransport, MemoryDevice, ResizeClock, ResizeStart, ResizeTiming};
use crate::vm::{VmError, VmErrorKind};
use hotmem_units::HumanSize;

/// Default amount plugged per instance in a vanilla guest.
pub const DEFAULT_VANILLA_UNIT: u64 = 128 << 20;
/// Default limit for plugging/unplugging and for a partition to become free.
pub const DEFAULT_SCALE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `hotmem-run` may wait for a partition once one is free.
const BIND_TIMEOUT_MS: u64 = 10_000;

/// How a scale-down gives memory back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    /// Lower the device's `requested-size` over QMP (the default).
    Qmp,
    /// Write `value` to a guest sysfs file of the HotMem virtio-mem driver
    /// (e.g. the partition id to `/sys/bus/virtio/devices/virtio1/hotmem/unplug`);
    /// `{partition}` in either is replaced by the instance's partition id.
    Sysfs {
        /// The trigger file.
        path: String,
        /// What to write.
        value: String,
    },
}

/// Options of [`scale_up`].
#[derive(Debug, Clone)]
pub struct ScaleUpOptions {
    /// The function's command.
    pub argv: Vec<String>,
    /// Memory limit (cgroup `memory.max`) of the instance.
    pub memory_limit: Option<u64>,
    /// Bytes to plug per instance in a vanilla guest (HotMem guests plug
    /// one partition, `/sys/kernel/mm/hotmem/partition_size`).
    pub vanilla_unit: u64,
    /// Always plug, even if a free partition exists.
    pub force_plug: bool,
    /// Limit for each wait.
    pub timeout: Duration,
}

impl ScaleUpOptions {
    /// Options with defaults for `argv`.
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            memory_limit: None,
            vanilla_unit: DEFAULT_VANILLA_UNIT,
            force_plug: false,
            timeout: DEFAULT_SCALE_TIMEOUT,
        }
    }
}

/// Options of [`scale_down`].
#[derive(Debug, Clone)]
pub struct ScaleDownOptions {
    /// The instance to stop.
    pub instance: u64,
    /// How to give the memory back.
    pub trigger: Trigger,
    /// Stop the instance but keep the memory plugged.
    pub keep_plugged: bool,
    /// Bytes to unplug in a vanilla guest.
    pub vanilla_unit: u64,
    /// SIGTERM grace period before SIGKILL.
    pub grace: Duration,
    /// Limit for the unplug.
    pub timeout: Duration,
}

impl ScaleDownOptions {
    /// Options with defaults for `instance`.
    pub fn new(instance: u64) -> Self {
        Self {
            instance,
            trigger: Trigger::Qmp,
            keep_plugged: false,
            vanilla_unit: DEFAULT_VANILLA_UNIT,
            grace: Duration::ZERO,
            timeout: DEFAULT_SCALE_TIMEOUT,
        }
    }
}

/// Guest memory as seen after a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuestMemory {
    /// virtio-mem plugged size (QMP `size`), bytes.
    pub plugged: u64,
    /// virtio-mem `requested-size`, bytes.
    pub requested: u64,
    /// `MemTotal`, kB.
    pub mem_total_kib: u64,
    /// `MemFree`, kB.
    pub mem_free_kib: u64,
    /// `HotMemFree`, kB (0 without HotMem).
    pub hotmem_free_kib: u64,
}

/// What [`scale_up`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleUpReport {
    /// `hotmem` or `vanilla`.
    pub mode: &'static str,
    /// The started instance.
    pub instance: Instance,
    /// Bytes plugged for it (0 if a free partition was already there).
    pub plugged_bytes: u64,
    /// Time until QMP reported the new plugged size, ms.
    pub plug_ms: Option<f64>,
    /// Time until the guest had a free partition (onlining included), ms.
    pub online_ms: Option<f64>,
    /// Blocks onlined into HotMem by the agent.
    pub onlined_blocks: u64,
    /// Time to start the instance (bind included), ms.
    pub start_ms: f64,
    /// Whole operation, ms.
    pub total_ms: f64,
    /// Memory afterwards.
    pub memory: GuestMemory,
}

/// What [`scale_down`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleDownReport {
    /// `hotmem` or `vanilla`.
    pub mode: &'static str,
    /// The instance as it ended.
    pub instance: Instance,
    /// Time to stop it (kill, reap, partition released), ms.
    pub stop_ms: f64,
    /// Bytes unplugged.
    pub unplugged_bytes: u64,
    /// Reclaim latency: trigger until the device had the lower size, ms.
    pub reclaim_ms: Option<f64>,
    /// Stop and reclaim end to end: from asking the agent to stop the
    /// instance until the device had the lower size, ms.
    pub end_to_end_ms: Option<f64>,
    /// What timed the reclaim's end.
    pub reclaim_clock: Option<ResizeClock>,
    /// Resolution of `reclaim_ms` and `end_to_end_ms`, ms.
    pub reclaim_resolution_ms: Option<f64>,
    /// Guest CPU time (all vCPUs, non-idle) during the reclaim, ms, from
    /// `/proc/stat`; includes the agent's own small polling cost.
    pub reclaim_guest_cpu_ms: Option<f64>,
    /// How the memory was given back.
    pub trigger: Option<Trigger>,
    /// Whole operation, ms.
    pub total_ms: f64,
    /// Memory afterwards.
    pub memory: GuestMemory,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn failed(what: String) -> VmError {
    VmError::from_kind(VmErrorKind::Scale(what))
}

/// Agent `partitions`.
pub fn partitions<G: AgentTransport + ?Sized>(vm: &mut G) -> Result<PartitionsResult, VmError> {
    vm.agent_call(Op::Partitions, None)
}

/// Agent `list_instances`.
pub fn list_instances<G: AgentTransport + ?Sized>(vm: &mut G) -> Result<InstanceList, VmError> {
    vm.agent_call(Op::ListInstances, None)
}

/// The guest's memory figures (QMP + `/proc/meminfo`).
pub fn guest_memory<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
) -> Result<GuestMemory, VmError> {
    let info = vm.meminfo()?;
    let get = |k: &str| info.get(k).copied().unwrap_or(0);
    Ok(GuestMemory {
        plugged: vm.plugged_size()?,
        requested: vm.requested_size()?,
        mem_total_kib: get("MemTotal"),
        mem_free_kib: get("MemFree"),
        hotmem_free_kib: get("HotMemFree"),
    })
}

/// Non-idle guest CPU time in USER_HZ ticks, from `/proc/stat`'s `cpu` line.
pub fn busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy)
}

/// USER_HZ of Linux guests (ticks per second in `/proc/stat`).
const USER_HZ: f64 = 100.0;

/// A measured reclaim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReclaimTiming {
    /// When the trigger was pulled.
    pub start: ResizeStart,
    /// Trigger until the device had the lower size.
    pub timing: ResizeTiming,
    /// Guest CPU time (all vCPUs, non-idle) meanwhile, ms.
    pub guest_cpu_ms: Option<f64>,
}

impl ReclaimTiming {
    /// The reclaim latency, ms.
    pub fn ms(&self) -> f64 {
        ms(self.timing.elapsed)
    }

    /// The timer's resolution, ms.
    pub fn resolution_ms(&self) -> f64 {
        ms(self.timing.resolution)
    }

    /// From `since` (e.g. the request to stop the instance) until the
    /// device had the lower size, ms.
    pub fn ms_since(&self, since: Instant) -> f64 {
        ms(self.start.instant.saturating_duration_since(since) + self.timing.elapsed)
    }
}

/// How often [`plug`] onlines blocks while the device is still plugging.
const ONLINE_EVERY: Duration = Duration::from_millis(100);
/// Interval of [`plug`]'s QMP polling.
const PLUG_POLL: Duration = Duration::from_millis(10);

/// Sets `requested-size` to `target` and waits until the device plugged
/// it; returns how long that took.
///
/// The C virtio-mem driver stops adding memory while more than its
/// offline threshold (1 GiB) of added memory is offline, so in a HotMem
/// guest (`online_hotmem` true) offline blocks are onlined into HotMem
/// every [`ONLINE_EVERY`] while the device has not reached `target`.
pub fn plug<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    target: u64,
    online_hotmem: bool,
    timeout: Duration,
) -> Result<Duration, VmError> {
    let start = Instant::now();
    vm.set_requested_size(target)?;
    let mut last_online = Instant::now();
    loop {
        let plugged = vm.plugged_size()?;
        if plugged == target {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(VmError::from_kind(VmErrorKind::Timeout {
                what: format!("virtio-mem plugged size {target} (still {plugged})"),
                timeout,
            }));
        }
        if online_hotmem && last_online.elapsed() >= ONLINE_EVERY {
            let _: hotmem_proto::OnlineResult = vm.agent_call(Op::OnlineHotmemBlocks, None)?;
            last_online = Instant::now();
        }
        std::thread::sleep(PLUG_POLL);
    }
}

/// Starts an instance, plugging memory first if the guest needs it.
pub fn scale_up<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    opts: &ScaleUpOptions,
) -> Result<ScaleUpReport, VmError> {
    let start = Instant::now();
    let parts = partitions(vm)?;
    let hotmem = parts.enabled;
    let (mut plugged_bytes, mut plug_ms, mut online_ms, mut onlined_blocks) = (0, None, None, 0);
    if !hotmem || parts.free() == 0 || opts.force_plug {
        let unit = if hotmem {
            parts.partition_size
        } else {
            opts.vanilla_unit
        };
        let target = vm.requested_size()? + unit;
        plug_ms = Some(ms(plug(vm, target, hotmem, opts.timeout)?));
        plugged_bytes = unit;
    }
    if hotmem {
        let timeout_ms = u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX);
        let waited = Instant::now();
        let ready: PartitionsResult = vm.agent_call(
            Op::WaitFreePartitions(WaitFreePartitionsArgs {
                // A fresh partition when we plugged one, else the free one.
                count: parts.free() + u64::from(plugged_bytes > 0),
                online: true,
                timeout_ms,
            }),
            Some(opts.timeout + Duration::from_secs(10)),
        )?;
        online_ms = Some(ms(waited.elapsed()));
        onlined_blocks = ready.onlined;
    }
    let started = Instant::now();
    let instance: Instance = vm.agent_call(
        Op::StartInstance(StartInstanceArgs {
            argv: opts.argv.clone(),
            memory_limit: opts.memory_limit,
            hotmem,
            bind_timeout_ms: Some(BIND_TIMEOUT_MS),
            ..StartInstanceArgs::default()
        }),
        Some(Duration::from_millis(BIND_TIMEOUT_MS) + Duration::from_secs(30)),
    )?;
    let start_ms = ms(started.elapsed());
    let total_ms = ms(start.elapsed());
    Ok(ScaleUpReport {
        mode: if hotmem { "hotmem" } else { "vanilla" },
        instance,
        plugged_bytes,
        plug_ms,
        online_ms,
        onlined_blocks,
        start_ms,
        total_ms,
        memory: guest_memory(vm)?,
    })
}

/// What an unplug of one unit aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnplugTargets {
    /// The `requested-size` to set: one unit below the *requested* size,
    /// so that a plug still pending (requested above plugged) is kept,
    /// not silently cancelled.
    pub requested: u64,
    /// The plugged size to wait for.
    pub plugged: u64,
}

/// Targets for giving `unit` back with `trigger`, from the device's
/// `requested` and `plugged` sizes.
///
/// QMP lowers the requested size by a unit and waits for the device to
/// follow. The sysfs trigger has the guest unplug one unit of what is
/// plugged now; the requested size is then lowered by a unit as well.
pub fn unplug_targets(
    requested: u64,
    plugged: u64,
    unit: u64,
    trigger: &Trigger,
) -> Result<UnplugTargets, VmError> {
    let below = |size: u64, what: &str| {
        size.checked_sub(unit).ok_or_else(|| {
            failed(format!(
                "cannot unplug {} with only {} {what}",
                HumanSize(unit),
                HumanSize(size)
            ))
        })
    };
    let new_requested = below(requested, "requested")?;
    Ok(match trigger {
        Trigger::Qmp => UnplugTargets {
            requested: new_requested,
            plugged: new_requested,
        },
        Trigger::Sysfs { .. } => UnplugTargets {
            requested: new_requested,
            plugged: below(plugged, "plugged")?,
        },
    })
}

/// Gives `unit` bytes back through `trigger`; returns the reclaim latency
/// (timed by the device where it can) and the guest CPU time spent
/// meanwhile.
pub fn reclaim<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    unit: u64,
    trigger: &Trigger,
    partition: Option<u64>,
    timeout: Duration,
) -> Result<ReclaimTiming, VmError> {
    let (requested, plugged) = (vm.requested_size()?, vm.plugged_size()?);
    let targets = unplug_targets(requested, plugged, unit, trigger)?;
    let stat_before = vm.read_file("/proc/stat")?;
    let start;
    let (polled, target) = match trigger {
        Trigger::Qmp => {
            start = ResizeStart::now();
            vm.set_requested_size(targets.requested)?;
            (
                vm.poll_plugged(targets.requested, start, timeout)?,
                targets.requested,
            )
        }
        Trigger::Sysfs { path, value } => {
            let fill = |s: &str| match partition {
                Some(p) => Ok(s.replace("{partition}", &p.to_string())),
                None if s.contains("{partition}") => Err(failed(format!(
                    "sysfs trigger {s:?} needs a partition, and the instance had none"
                ))),
                None => Ok(s.to_owned()),
            };
            let (path, value) = (fill(path)?, fill(value)?);
            start = ResizeStart::now();
            vm.write_file(&path, &value)?;
            let polled = vm.poll_plugged(targets.plugged, start, timeout)?;
            // Keep the device's target in line with what the guest gave back.
            vm.set_requested_size(targets.requested)?;
            (polled, targets.plugged)
        }
    };
    // CPU time up to the end the host saw, not including the wait for the
    // device's (up to a second late) report.
    let stat_after = vm.read_file("/proc/stat")?;
    let guest_cpu_ms = busy_ticks(&stat_before)
        .zip(busy_ticks(&stat_after))
        .map(|(a, b)| b.saturating_sub(a) as f64 / USER_HZ * 1000.0);
    let timing = vm.time_resize(target, start, polled)?;
    Ok(ReclaimTiming {
        start,
        timing,
        guest_cpu_ms,
    })
}

/// Stops an instance and gives its memory back.
pub fn scale_down<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    opts: &ScaleDownOptions,
) -> Result<ScaleDownReport, VmError> {
    let start = Instant::now();
    let parts = partitions(vm)?;
    let hotmem = parts.enabled;
    let stopped = Instant::now();
    let instance: Instance = vm.agent_call(
        Op::StopInstance(StopInstanceArgs {
            instance: opts.instance,
            grace_ms: u64::try_from(opts.grace.as_millis()).unwrap_or(u64::MAX),
        }),
        Some(opts.grace + Duration::from_secs(60)),
    )?;
    let stop_ms = ms(stopped.elapsed());
    let unit = if hotmem {
        parts.partition_size
    } else {
        opts.vanilla_unit
    };
    let (mut measured, mut unplugged_bytes, mut trigger) = (None, 0, None);
    if !opts.keep_plugged {
        let r =
            reclaim(vm, unit, &opts.trigger, instance.partition, opts.timeout).map_err(|e| {
                failed(format!(
                    "instance {} was stopped (partition {:?}), but giving its memory back \
                     failed: {e}\nIf requested-size was lowered already (`hotmemctl status`), \
                     the device may still follow; else retry with `hotmemctl unplug`",
                    instance.instance, instance.partition
                ))
            })?;
        measured = Some(r);
        unplugged_bytes = unit;
        trigger = Some(opts.trigger.clone());
    }
    Ok(ScaleDownReport {
        mode: if hotmem { "hotmem" } else { "vanilla" },
        instance,
        stop_ms,
        unplugged_bytes,
        reclaim_ms: measured.map(|r| r.ms()),
        end_to_end_ms: measured.map(|r| r.ms_since(stopped)),
        reclaim_clock: measured.map(|r| r.timing.clock),
        reclaim_resolution_ms: measured.map(|r| r.resolution_ms()),
        reclaim_guest_cpu_ms: measured.and_then(|r| r.guest_cpu_ms),
        trigger,
        total_ms: ms(start.elapsed()),
        memory: guest_memory(vm)?,
    })
}

/// What [`unplug`] did.
#[derive(Debug, Clone, Serialize)]
pub struct UnplugReport {
    /// `hotmem` or `vanilla`.
    pub mode: &'static str,
    /// Bytes unplugged.
    pub unplugged_bytes: u64,
    /// Reclaim latency, ms.
    pub reclaim_ms: f64,
    /// What timed the reclaim's end.
    pub reclaim_clock: ResizeClock,
    /// Resolution of `reclaim_ms`, ms.
    pub reclaim_resolution_ms: f64,
    /// Guest CPU time during the reclaim, ms.
    pub reclaim_guest_cpu_ms: Option<f64>,
    /// How.
    pub trigger: Trigger,
    /// Memory afterwards.
    pub memory: GuestMemory,
}

/// Gives one partition (HotMem) or `vanilla_unit` bytes back without
/// stopping anything; `partition` fills `{partition}` of a sysfs trigger.
pub fn unplug<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    partition: Option<u64>,
    trigger: &Trigger,
    vanilla_unit: u64,
    timeout: Duration,
) -> Result<UnplugReport, VmError> {
    let parts = partitions(vm)?;
    let unit = if parts.enabled {
        parts.partition_size
    } else {
        vanilla_unit
    };
    let r = reclaim(vm, unit, trigger, partition, timeout)?;
    Ok(UnplugReport {
        mode: if parts.enabled { "hotmem" } else { "vanilla" },
        unplugged_bytes: unit,
        reclaim_ms: r.ms(),
        reclaim_clock: r.timing.clock,
        reclaim_resolution_ms: r.resolution_ms(),
        reclaim_guest_cpu_ms: r.guest_cpu_ms,
        trigger: trigger.clone(),
        memory: guest_memory(vm)?,
    })
}

/// Human rendering of an unplug.
pub fn render_unplug(r: &UnplugReport) -> String {
    format!(
        "reclaimed {} ({}) in {:.1} ms (±{}, {}; guest CPU {} ms); plugged {}, MemFree {} kB\n",
        HumanSize(r.unplugged_bytes),
        r.mode,
        r.reclaim_ms,
        resolution(r.reclaim_resolution_ms),
        r.reclaim_clock.label(),
        opt_ms(r.reclaim_guest_cpu_ms),
        HumanSize(r.memory.plugged),
        r.memory.mem_free_kib
    )
}

/// A timer resolution for humans: `1 us`, `1.2 ms`.
pub fn resolution(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} us", (ms * 1000.0).max(1.0))
    } else {
        format!("{ms:.1} ms")
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// Human rendering of a scale-up.
pub fn render_up(r: &ScaleUpReport) -> String {
    format!(
        "instance {} ({}) started on partition {}: plug {} ms ({}), ready {} ms, start {:.1} ms, total {:.1} ms\n\
         plugged {}, MemFree {} kB, HotMemFree {} kB\n",
        r.instance.instance,
        r.mode,
        r.instance
            .partition
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        opt_ms(r.plug_ms),
        HumanSize(r.plugged_bytes),
        opt_ms(r.online_ms),
        r.start_ms,
        r.total_ms,
        HumanSize(r.memory.plugged),
        r.memory.mem_free_kib,
        r.memory.hotmem_free_kib
    )
}

/// Human rendering of a scale-down.
pub fn render_down(r: &ScaleDownReport) -> String {
    format!(
        "instance {} ({}) stopped in {:.1} ms; reclaimed {} in {} ms (guest CPU {} ms), \
         stop + reclaim {} ms{}, total {:.1} ms\n\
         plugged {}, MemFree {} kB\n",
        r.instance.instance,
        r.mode,
        r.stop_ms,
        HumanSize(r.unplugged_bytes),
        opt_ms(r.reclaim_ms),
        opt_ms(r.reclaim_guest_cpu_ms),
        opt_ms(r.end_to_end_ms),
        r.reclaim_resolution_ms.zip(r.reclaim_clock).map_or_else(
            String::new,
            |(res, clock)| format!(" (±{}, {})", resolution(res), clock.label())
        ),
        r.total_ms,
        HumanSize(r.memory.plugged),
        r.memory.mem_free_kib
    )
}

/// Human rendering of the instance list.
pub fn render_instances(list: &InstanceList) -> String {
    let mut out = format!(
        "{:>4} {:>6} {:>9} {:>8} {:>12} {:>12} {:>12}  {}\n",
        "id", "pid", "partition", "state", "memcg", "part used", "rss", "command"
    );
    let size = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |b| HumanSize(b).to_string());
    for i in &list.instances {
        out.push_str(&format!(
            "{:>4} {:>6} {:>9} {:>8} {:>12} {:>12} {:>12}  {}\n",
            i.instance,
            i.pid,
            i.partition
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            format!("{:?}", i.state).to_lowercase(),
            size(i.memory_current),
            size(i.partition_used),
            size(i.rss),
            i.argv.join(" ")
        ));
    }
    out
}

/// Counts partitions by state, e.g. `{"bound": 2, "free": 1}`.
pub fn partition_states(parts: &PartitionsResult) -> BTreeMap<String, u64> {
    let mut states = BTreeMap::new();
    for p in &parts.partitions {
        *states.entry(p.state.name().to_owned()).or_insert(0) += 1;
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplug_targets_follow_the_requested_size() {
        const P: u64 = 128 << 20;
        let sysfs = Trigger::Sysfs {
            path: "/sys/x".into(),
            value: "1".into(),
        };
        // Settled device: one partition less either way.
        let t = unplug_targets(4 * P, 4 * P, P, &Trigger::Qmp).unwrap();
        assert_eq!((t.requested, t.plugged), (3 * P, 3 * P));
        // A plug of 2 more partitions is pending (requested 4, plugged 2):
        // lowering from the plugged size (to 1) would cancel it; from the
        // requested size it stays pending (3).
        let t = unplug_targets(4 * P, 2 * P, P, &Trigger::Qmp).unwrap();
        assert_eq!((t.requested, t.plugged), (3 * P, 3 * P));
        let t = unplug_targets(4 * P, 2 * P, P, &sysfs).unwrap();
        assert_eq!((t.requested, t.plugged), (3 * P, P));
        // Nothing to give back.
        assert!(unplug_targets(0, 0, P, &Trigger::Qmp).is_err());
        assert!(unplug_targets(P, 0, P, &sysfs).is_err());
    }

    #[test]
    fn busy_ticks_sums_non_idle_fields() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(busy_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(busy_ticks("intr 1 2 3\n"), None);
        assert_eq!(busy_ticks("cpu  1 2\n"), None);
    }

    #[test]
    fn trigger_serializes_with_kind() {
        let t = Trigger::Sysfs {
            path: "/sys/x/unplug".into(),
            value: "{partition}".into(),
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"kind": "sysfs", "path": "/sys/x/unplug", "value": "{partition}"})
        );
        assert_eq!(
            serde_json::to_value(Trigger::Qmp).unwrap(),
            serde_json::json!({"kind": "qmp"})
        );
    }

    /// A HotMem guest with one partition per 128 MiB plugged, all free
    /// except the one instance 7 runs in.
    fn hotmem_guest() -> crate::fake::FakeGuest {
        use crate::fake::FakeGuest;
        const P: u64 = 128 << 20;
        FakeGuest::new(Box::new(|op, _| match op {
            Op::Partitions => Some(serde_json::json!({
                "enabled": true,
                "partition_size": P,
                "partitions": [
                    {"id": 1, "state": "active", "users": 1, "used_pages": 10, "online_blocks": 1},
                ],
                "offline_blocks": 0,
            })),
            Op::StopInstance(args) => Some(serde_json::json!({
                "instance": args.instance,
                "pid": 99,
                "argv": ["hotmem-memhog"],
                "partition": 1,
                "state": "exited",
                "start_us": 0,
            })),
            Op::ReadFile(args) if args.path == "/proc/stat" => {
                Some(serde_json::json!({"data": "cpu  1 0 0 100 0 0 0 0\n"}))
            }
            Op::ReadFile(_) => Some(serde_json::json!({"data": "MemTotal: 1024 kB\n"})),
            _ => None,
        }))
    }

    #[test]
    fn scale_down_runs_on_any_guest_and_keeps_a_pending_plug() {
        const P: u64 = 128 << 20;
        let mut guest = hotmem_guest();
        // Four partitions requested, two plugged so far.
        guest.requested = 4 * P;
        guest.plugged = 2 * P;
        let report = scale_down(&mut guest, &ScaleDownOptions::new(7)).unwrap();
        assert_eq!(report.instance.instance, 7);
        assert_eq!(report.unplugged_bytes, P);
        assert_eq!(
            guest.resizes,
            [3 * P],
            "one partition below the requested size"
        );
        assert_eq!(report.memory.requested, 3 * P);
        assert_eq!(report.mode, "hotmem");
    }

    #[test]
    fn a_lost_stop_answer_is_an_error_not_an_unplug() {
        const P: u64 = 128 << 20;
        let mut guest = crate::fake::FakeGuest::new(Box::new(|op, _| match op {
            Op::Partitions => Some(serde_json::json!({
                "enabled": true, "partition_size": P, "partitions": [], "offline_blocks": 0,
            })),
            _ => None,
        }));
        guest.requested = P;
        guest.plugged = P;
        assert!(scale_down(&mut guest, &ScaleDownOptions::new(7)).is_err());
        assert!(
            guest.resizes.is_empty(),
            "nothing unplugged under a running instance"
        );
    }
}
