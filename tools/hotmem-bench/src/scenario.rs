//! The scale-up / scale-down scenario behind `make demo`, run once on a
//! HotMem guest and once on a vanilla virtio-mem guest, side by side.
//!
//! Per guest: boot (128 MiB device blocks = one memory block = one
//! partition), load the virtio-mem driver — the Rust HotMem driver
//! (`hotmem_virtio_mem`, which plugs and onlines whole partitions itself)
//! in the HotMem guest by default, the C driver (`virtio_mem`) in the
//! vanilla one — scale up `instances` memhog instances one after the other
//! (each plugs one unit and starts), wait until every instance has touched
//! its memory, then scale them down one by one (stop + unplug one unit over
//! QMP). HotMem guests (`hotmem=on`) bind each instance to a partition;
//! vanilla guests (`hotmem=off`) online the plugged blocks to ZONE_MOVABLE
//! and start instances unbound, so the unplug has to migrate the other
//! instances' pages.
//!
//! Everything after the boot goes through [`hotmem_host::Guest`] (the
//! device and agent traits), not QEMU.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use hotmem_host::scale::{self, ScaleDownOptions, ScaleUpOptions};
use hotmem_host::HumanSize;
use hotmem_host::{Accel, VmConfig};
use hotmem_host::{AgentTransport, Guest, Vm, VmError, VmErrorKind};
use hotmem_host::{AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY};

const MIB: u64 = 1 << 20;
/// Device block size = memory block = partition: big-block mode.
pub const UNIT: u64 = 128 * MIB;
/// Limit for instances to touch their memory.
const TOUCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Which kind of guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `hotmem=on`: partitions, bound instances, fast unplug.
    Hotmem,
    /// `hotmem=off`: ZONE_MOVABLE, unbound instances, migrating unplug.
    Vanilla,
}

impl Mode {
    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Hotmem => "HotMem",
            Mode::Vanilla => "vanilla virtio-mem",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Mode::Hotmem => "hotmem",
            Mode::Vanilla => "vanilla",
        }
    }
}

/// The C virtio-mem driver (vanilla guests; HotMem guests with
/// `--hotmem-driver virtio_mem`, where the agent onlines its blocks into
/// HotMem).
pub const C_DRIVER: &str = "virtio_mem";
/// The Rust HotMem virtio-mem driver, which plugs and onlines whole
/// partitions itself: the default for HotMem guests.
pub const RUST_DRIVER: &str = "hotmem_virtio_mem";

/// Boots a guest of `mode` in `base.run_dir/<mode>` with `vmem_size` of
/// virtio-mem region and `driver` loaded (always the C driver for vanilla).
pub fn boot_guest(
    base: &VmConfig,
    mode: Mode,
    vmem_size: u64,
    driver: &str,
) -> Result<Vm, VmError> {
    let mut cfg = base.clone();
    cfg.run_dir = base.run_dir.join(mode.dir_name());
    cfg.vmem_block_size = UNIT;
    cfg.vmem_size = vmem_size.div_ceil(UNIT).max(1) * UNIT;
    cfg.vmem_requested = 0;
    let extra = match mode {
        Mode::Hotmem => format!("hotmem=on hotmem_partition_size={}M", UNIT / MIB),
        Mode::Vanilla => "hotmem=off".to_owned(),
    };
    cfg.append = format!("{} {extra}", base.append).trim().to_owned();
    let mut vm = Vm::boot(&cfg)?;
    vm.set_command_timeout(Duration::from_secs(300));
    if mode == Mode::Vanilla {
        vm.write_file(AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY)?;
    }
    let driver = if mode == Mode::Hotmem {
        driver
    } else {
        C_DRIVER
    };
    vm.exec_ok(&["modprobe", driver])?;
    Ok(vm)
}

/// One row of the demo table.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// `scale-up` or `scale-down`.
    pub step: &'static str,
    /// Instance id.
    pub instance: u64,
    /// Its partition (HotMem only).
    pub partition: Option<u64>,
    /// Plug latency (QMP requested-size until size), ms.
    pub plug_ms: Option<f64>,
    /// Until a partition was free (onlining included), ms.
    pub ready_ms: Option<f64>,
    /// Start (scale-up) or stop (scale-down) of the instance, ms.
    pub instance_ms: f64,
    /// Reclaim latency (QMP requested-size until the device had the lower
    /// size), ms.
    pub reclaim_ms: Option<f64>,
    /// Stop + reclaim end to end (asking the agent to stop the instance
    /// until the device had the lower size), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_ms: Option<f64>,
    /// What timed the end of the reclaim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_clock: Option<hotmem_host::ResizeClock>,
    /// Resolution of the reclaim timer, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_resolution_ms: Option<f64>,
    /// Guest CPU time during the reclaim, ms.
    pub guest_cpu_ms: Option<f64>,
    /// Plugged size afterwards, bytes.
    pub plugged: u64,
    /// Guest MemFree afterwards, kB.
    pub mem_free_kib: u64,
    /// Guest HotMemFree afterwards, kB.
    pub hotmem_free_kib: u64,
}

/// One guest's run.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Kind of guest.
    pub mode: Mode,
    /// Guest kernel.
    pub kernel_release: String,
    /// Boot (and driver load) time, ms.
    pub boot_ms: f64,
    /// How long the instances took to touch their memory, ms.
    pub touch_ms: f64,
    /// Every step.
    pub rows: Vec<StepRow>,
}

impl ScenarioReport {
    fn mean(&self, step: &str, f: impl Fn(&StepRow) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.step == step)
            .filter_map(f)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Mean plug latency of the scale-ups, ms.
    pub fn mean_plug_ms(&self) -> Option<f64> {
        self.mean("scale-up", |r| r.plug_ms)
    }

    /// Mean reclaim latency of the scale-downs, ms.
    pub fn mean_reclaim_ms(&self) -> Option<f64> {
        self.mean("scale-down", |r| r.reclaim_ms)
    }

    /// Mean guest CPU time per reclaim, ms.
    pub fn mean_reclaim_cpu_ms(&self) -> Option<f64> {
        self.mean("scale-down", |r| r.guest_cpu_ms)
    }

    /// Mean stop + reclaim per instance, ms.
    pub fn mean_end_to_end_ms(&self) -> Option<f64> {
        self.mean("scale-down", |r| r.end_to_end_ms)
    }

    /// The coarsest resolution of the reclaim timer and what timed the
    /// reclaims (the device, unless one had to be polled).
    pub fn reclaim_timer(&self) -> Option<(hotmem_host::ResizeClock, f64)> {
        let rows = self.rows.iter().filter(|r| r.step == "scale-down");
        rows.filter_map(|r| r.reclaim_clock.zip(r.reclaim_resolution_ms))
            .reduce(|(c1, r1), (c2, r2)| {
                let clock = if c1 == hotmem_host::ResizeClock::Poll {
                    c1
                } else {
                    c2
                };
                (clock, r1.max(r2))
            })
    }

    /// Mean scale-up time (plug + ready + start), ms.
    pub fn mean_scale_up_ms(&self) -> Option<f64> {
        self.mean("scale-up", |r| {
            Some(r.plug_ms.unwrap_or(0.0) + r.ready_ms.unwrap_or(0.0) + r.instance_ms)
        })
    }
}

/// Scenario parameters.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioParams {
    /// Number of instances.
    pub instances: usize,
    /// Memory each instance allocates and touches (memhog `--size`).
    pub instance_mem: u64,
    /// virtio-mem driver of the HotMem guest ([`C_DRIVER`] or [`RUST_DRIVER`]).
    pub hotmem_driver: String,
}

/// Polls until every running instance has at least `bytes` resident.
pub fn wait_touched<G: AgentTransport + ?Sized>(
    vm: &mut G,
    bytes: u64,
) -> Result<Duration, VmError> {
    let start = Instant::now();
    loop {
        let list = scale::list_instances(vm)?;
        if let Some(dead) = list
            .instances
            .iter()
            .find(|i| i.state != hotmem_proto::InstanceState::Running)
        {
            return Err(VmError::from_kind(VmErrorKind::Scale(format!(
                "instance {} ({}) exited early: {:?}",
                dead.instance,
                dead.argv.join(" "),
                dead.exit
            ))));
        }
        if list.instances.iter().all(|i| i.rss.unwrap_or(0) >= bytes) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > TOUCH_TIMEOUT {
            return Err(VmError::from_kind(VmErrorKind::Timeout {
                what: format!("instances to touch {}", HumanSize(bytes)),
                timeout: TOUCH_TIMEOUT,
            }));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The memhog command line of an instance that holds `bytes` "forever".
pub fn memhog_argv(bytes: u64) -> Vec<String> {
    vec![
        "hotmem-memhog".into(),
        "--size".into(),
        format!("{}K", bytes / 1024),
        "--hold".into(),
        "24h".into(),
    ]
}

/// Runs the scenario on one guest of `mode`.
pub fn run_scenario(
    base: &VmConfig,
    mode: Mode,
    params: &ScenarioParams,
    progress: &mut dyn FnMut(&str),
) -> Result<ScenarioReport, VmError> {
    progress(&format!(
        "[{}] booting guest ({})...",
        mode.label(),
        base.accel
    ));
    let booted = Instant::now();
    let mut vm = boot_guest(
        base,
        mode,
        params.instances as u64 * UNIT,
        &params.hotmem_driver,
    )?;
    let boot_ms = booted.elapsed().as_secs_f64() * 1000.0;
    let kernel_release = vm
        .boot_hello()
        .map(|h| h.kernel_release.clone())
        .unwrap_or_default();
    let (rows, touch_ms) = scale_steps(&mut vm, mode, params, progress)?;
    progress(&format!("[{}] shutting down...", mode.label()));
    vm.shutdown()?;
    Ok(ScenarioReport {
        mode,
        kernel_release,
        boot_ms,
        touch_ms,
        rows,
    })
}

/// The scale-ups, the wait for the instances to touch their memory, and
/// the scale-downs, on any [`Guest`]; returns the rows and the touch time
/// (ms).
pub fn scale_steps<G: Guest + ?Sized>(
    vm: &mut G,
    mode: Mode,
    params: &ScenarioParams,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<StepRow>, f64), VmError> {
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for i in 0..params.instances {
        progress(&format!(
            "[{}] scale-up {}/{}: memhog {}",
            mode.label(),
            i + 1,
            params.instances,
            HumanSize(params.instance_mem)
        ));
        let mut opts = ScaleUpOptions::new(memhog_argv(params.instance_mem));
        opts.memory_limit = Some(UNIT);
        opts.vanilla_unit = UNIT;
        let r = scale::scale_up(vm, &opts)?;
        ids.push(r.instance.instance);
        rows.push(StepRow {
            step: "scale-up",
            instance: r.instance.instance,
            partition: r.instance.partition,
            plug_ms: r.plug_ms,
            ready_ms: r.online_ms,
            instance_ms: r.start_ms,
            reclaim_ms: None,
            end_to_end_ms: None,
            reclaim_clock: None,
            reclaim_resolution_ms: None,
            guest_cpu_ms: None,
            plugged: r.memory.plugged,
            mem_free_kib: r.memory.mem_free_kib,
            hotmem_free_kib: r.memory.hotmem_free_kib,
        });
    }
    progress(&format!(
        "[{}] waiting for the instances to touch their memory...",
        mode.label()
    ));
    let touch_ms = wait_touched(vm, params.instance_mem * 9 / 10)?.as_secs_f64() * 1000.0;
    for (n, id) in ids.iter().enumerate() {
        progress(&format!(
            "[{}] scale-down {}/{}: instance {id}",
            mode.label(),
            n + 1,
            ids.len()
        ));
        let mut opts = ScaleDownOptions::new(*id);
        opts.vanilla_unit = UNIT;
        let r = scale::scale_down(vm, &opts)?;
        rows.push(StepRow {
            step: "scale-down",
            instance: *id,
            partition: r.instance.partition,
            plug_ms: None,
            ready_ms: None,
            instance_ms: r.stop_ms,
            reclaim_ms: r.reclaim_ms,
            end_to_end_ms: r.end_to_end_ms,
            reclaim_clock: r.reclaim_clock,
            reclaim_resolution_ms: r.reclaim_resolution_ms,
            guest_cpu_ms: r.reclaim_guest_cpu_ms,
            plugged: r.memory.plugged,
            mem_free_kib: r.memory.mem_free_kib,
            hotmem_free_kib: r.memory.hotmem_free_kib,
        });
    }
    Ok((rows, touch_ms))
}

/// The demo: the scenario on both kinds of guest.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    /// Accelerator (TCG timings are not representative of KVM).
    pub accel: Accel,
    /// Parameters.
    pub params: ScenarioParams,
    /// HotMem guest.
    pub hotmem: ScenarioReport,
    /// Vanilla guest.
    pub vanilla: ScenarioReport,
    /// vanilla / HotMem mean reclaim latency.
    pub reclaim_ratio: Option<f64>,
}

/// Runs the demo: HotMem first, then vanilla, in `base.run_dir/{hotmem,vanilla}`.
pub fn run_side_by_side(
    base: &VmConfig,
    params: ScenarioParams,
    progress: &mut dyn FnMut(&str),
) -> Result<SideBySide, VmError> {
    let hotmem = run_scenario(base, Mode::Hotmem, &params, progress)?;
    let vanilla = run_scenario(base, Mode::Vanilla, &params, progress)?;
    let reclaim_ratio = ratio(vanilla.mean_reclaim_ms(), hotmem.mean_reclaim_ms());
    Ok(SideBySide {
        accel: base.accel,
        params,
        hotmem,
        vanilla,
        reclaim_ratio,
    })
}

/// `a / b` when both are known and `b > 0`.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// One guest's table.
pub fn render_scenario(r: &ScenarioReport) -> String {
    let mut out = format!(
        "== {} (kernel {}, boot {:.1} s, instances touched their memory in {:.1} s) ==\n",
        r.mode.label(),
        r.kernel_release,
        r.boot_ms / 1000.0,
        r.touch_ms / 1000.0
    );
    out.push_str(&format!(
        "{:<10} {:>4} {:>4} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>10}\n",
        "step",
        "inst",
        "part",
        "plug ms",
        "ready ms",
        "start/stop",
        "reclaim ms",
        "CPU ms",
        "plugged",
        "MemFree",
        "HotMemFree"
    ));
    for row in &r.rows {
        out.push_str(&format!(
            "{:<10} {:>4} {:>4} {:>9} {:>9} {:>10.1} {:>10} {:>8} {:>5} MiB {:>5} MiB {:>6} MiB\n",
            row.step,
            row.instance,
            row.partition
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            cell(row.plug_ms),
            cell(row.ready_ms),
            row.instance_ms,
            cell(row.reclaim_ms),
            cell(row.guest_cpu_ms),
            row.plugged / MIB,
            row.mem_free_kib / 1024,
            row.hotmem_free_kib / 1024
        ));
    }
    out
}

/// The whole demo output: both tables and the comparison.
pub fn render_side_by_side(r: &SideBySide) -> String {
    let mut out = render_scenario(&r.hotmem);
    out.push('\n');
    out.push_str(&render_scenario(&r.vanilla));
    out.push_str(&format!(
        "\n== side by side ({} instances of {} memhog, {} per instance; HotMem guest with {}) ==\n",
        r.params.instances,
        HumanSize(r.params.instance_mem),
        HumanSize(UNIT),
        r.params.hotmem_driver
    ));
    out.push_str(&format!(
        "{:<34} {:>10} {:>10} {:>16}\n",
        "mean per instance", "HotMem", "vanilla", "vanilla/HotMem"
    ));
    let line = |name: &str, h: Option<f64>, v: Option<f64>| {
        format!(
            "{:<34} {:>10} {:>10} {:>16}\n",
            name,
            cell(h),
            cell(v),
            ratio(v, h).map_or_else(|| "-".to_owned(), |x| format!("{x:.1}x"))
        )
    };
    out.push_str(&line(
        "reclaim latency (ms)",
        r.hotmem.mean_reclaim_ms(),
        r.vanilla.mean_reclaim_ms(),
    ));
    out.push_str(&line(
        "stop + reclaim, end to end (ms)",
        r.hotmem.mean_end_to_end_ms(),
        r.vanilla.mean_end_to_end_ms(),
    ));
    // CPU time is counted in 10 ms ticks: a mean below one tick is shown
    // as such and compared as one tick, as the bench does.
    let (h_cpu, v_cpu) = (
        r.hotmem.mean_reclaim_cpu_ms(),
        r.vanilla.mean_reclaim_cpu_ms(),
    );
    out.push_str(&format!(
        "{:<34} {:>10} {:>10} {:>16}\n",
        "guest CPU during reclaim (ms)",
        crate::stats::render_cpu_ms(h_cpu),
        crate::stats::render_cpu_ms(v_cpu),
        crate::stats::cpu_ratio(v_cpu, h_cpu)
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}x"))
    ));
    out.push_str(&line(
        "plug latency (ms)",
        r.hotmem.mean_plug_ms(),
        r.vanilla.mean_plug_ms(),
    ));
    out.push_str(&line(
        "scale-up, plug to running (ms)",
        r.hotmem.mean_scale_up_ms(),
        r.vanilla.mean_scale_up_ms(),
    ));
    if let Some(x) = r.reclaim_ratio {
        out.push_str(&format!(
            "HotMem reclaims an instance's memory {x:.1}x faster than vanilla virtio-mem.\n"
        ));
    }
    let timers: Vec<_> = [&r.hotmem, &r.vanilla]
        .iter()
        .filter_map(|g| g.reclaim_timer())
        .collect();
    if let Some(&(clock, res)) = timers.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        out.push_str(&format!(
            "reclaim timer: {}, resolution {}; guest CPU: 10 ms ticks, means below one tick compare as one\n",
            clock.label(),
            hotmem_host::scale::resolution(res)
        ));
    }
    if r.accel == Accel::Tcg {
        out.push_str(
            "note: the guests run under TCG (software emulation): absolute times are not \
             representative of KVM; compare the ratios.\n",
        );
    }
    out
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), VmError> {
    let io = |source| {
        VmError::from_kind(VmErrorKind::Io {
            what: format!("writing {}", path.display()),
            source,
        })
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    std::fs::write(path, text + "\n").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: &'static str, plug: Option<f64>, reclaim: Option<f64>) -> StepRow {
        StepRow {
            step,
            instance: 1,
            partition: Some(8),
            plug_ms: plug,
            ready_ms: Some(2.0),
            instance_ms: 3.0,
            reclaim_ms: reclaim,
            end_to_end_ms: reclaim.map(|r| r + 3.0),
            reclaim_clock: reclaim.map(|_| hotmem_host::ResizeClock::DeviceEvent),
            reclaim_resolution_ms: reclaim.map(|_| 0.001),
            guest_cpu_ms: reclaim.map(|_| 10.0),
            plugged: UNIT,
            mem_free_kib: 900 * 1024,
            hotmem_free_kib: 0,
        }
    }

    fn report(mode: Mode, reclaims: &[f64]) -> ScenarioReport {
        let mut rows = vec![row("scale-up", Some(4.0), None)];
        rows.extend(reclaims.iter().map(|&r| row("scale-down", None, Some(r))));
        ScenarioReport {
            mode,
            kernel_release: "6.12".into(),
            boot_ms: 5000.0,
            touch_ms: 1000.0,
            rows,
        }
    }

    #[test]
    fn means_and_ratio() {
        let h = report(Mode::Hotmem, &[10.0, 30.0]);
        let v = report(Mode::Vanilla, &[200.0, 400.0]);
        assert_eq!(h.mean_reclaim_ms(), Some(20.0));
        assert_eq!(h.mean_plug_ms(), Some(4.0));
        assert_eq!(h.mean_scale_up_ms(), Some(9.0));
        assert_eq!(ratio(v.mean_reclaim_ms(), h.mean_reclaim_ms()), Some(15.0));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(report(Mode::Hotmem, &[]).mean_reclaim_ms(), None);
    }

    /// A HotMem guest in memory: each plugged unit is a partition, bound
    /// while an instance runs in it; instances touch all their memory at
    /// once.
    fn fake_hotmem_guest() -> hotmem_host::fake::FakeGuest {
        use hotmem_proto::{InstanceState, Op};
        use serde_json::json;
        let mut running: Vec<u64> = Vec::new();
        let mut next = 1;
        hotmem_host::fake::FakeGuest::new(Box::new(move |op, dev| {
            let partitions = |running: &[u64]| {
                let parts: Vec<_> = (0..dev.plugged / UNIT)
                    .map(|i| {
                        let bound = (i as usize) < running.len();
                        json!({"id": 32 + i, "state": if bound { "bound" } else { "free" },
                               "users": u64::from(bound), "used_pages": 0, "online_blocks": 1})
                    })
                    .collect();
                json!({"enabled": true, "partition_size": UNIT, "partitions": parts,
                       "offline_blocks": 0})
            };
            let instance = |id: u64, state: InstanceState| {
                json!({"instance": id, "pid": 100 + id, "argv": ["hotmem-memhog"],
                       "partition": 31 + id, "state": state, "start_us": 0,
                       "rss": 96 * MIB})
            };
            Some(match op {
                Op::Partitions | Op::WaitFreePartitions(_) => partitions(&running),
                Op::StartInstance(_) => {
                    running.push(next);
                    next += 1;
                    instance(next - 1, InstanceState::Running)
                }
                Op::ListInstances => json!({"instances": running
                    .iter()
                    .map(|&id| instance(id, InstanceState::Running))
                    .collect::<Vec<_>>()}),
                Op::StopInstance(args) => {
                    running.retain(|&id| id != args.instance);
                    instance(args.instance, InstanceState::Exited)
                }
                Op::ReadFile(f) if f.path == "/proc/stat" => {
                    json!({"data": "cpu  1 0 0 9 0 0 0 0\n"})
                }
                Op::ReadFile(_) => json!({"data": "MemTotal: 1048576 kB\nMemFree: 524288 kB\n"}),
                _ => return None,
            })
        }))
    }

    #[test]
    fn the_scenario_runs_on_any_guest() {
        let mut guest = fake_hotmem_guest();
        let params = ScenarioParams {
            instances: 2,
            instance_mem: 96 * MIB,
            hotmem_driver: RUST_DRIVER.into(),
        };
        let (rows, _touch_ms) =
            scale_steps(&mut guest, Mode::Hotmem, &params, &mut |_| {}).unwrap();
        let steps: Vec<(&str, u64, Option<u64>, u64)> = rows
            .iter()
            .map(|r| (r.step, r.instance, r.partition, r.plugged / MIB))
            .collect();
        assert_eq!(
            steps,
            [
                ("scale-up", 1, Some(32), 128),
                ("scale-up", 2, Some(33), 256),
                ("scale-down", 1, Some(32), 128),
                ("scale-down", 2, Some(33), 0),
            ]
        );
        assert!(rows[..2].iter().all(|r| r.plug_ms.is_some()));
        assert!(rows[2..].iter().all(|r| r.reclaim_ms.is_some()));
        assert_eq!(guest.resizes, [UNIT, 2 * UNIT, UNIT, 0]);
    }

    #[test]
    fn demo_cpu_ratio_is_clamped_to_one_tick() {
        // One 10 ms tick in four HotMem reclaims is a 2.5 ms mean: it
        // compares as one tick (237.5 / 10), not as 2.5 ms (95x).
        let mut h = report(Mode::Hotmem, &[20.0, 20.0, 20.0, 20.0]);
        for (i, r) in h
            .rows
            .iter_mut()
            .filter(|r| r.step == "scale-down")
            .enumerate()
        {
            r.guest_cpu_ms = Some(if i == 3 { 10.0 } else { 0.0 });
        }
        let mut v = report(Mode::Vanilla, &[200.0; 4]);
        for r in v.rows.iter_mut().filter(|r| r.step == "scale-down") {
            r.guest_cpu_ms = Some(237.5);
        }
        assert_eq!(h.mean_reclaim_cpu_ms(), Some(2.5));
        let text = render_side_by_side(&SideBySide {
            accel: Accel::Tcg,
            params: ScenarioParams {
                instances: 4,
                instance_mem: 96 * MIB,
                hotmem_driver: RUST_DRIVER.into(),
            },
            reclaim_ratio: ratio(v.mean_reclaim_ms(), h.mean_reclaim_ms()),
            hotmem: h,
            vanilla: v,
        });
        let line = text
            .lines()
            .find(|l| l.starts_with("guest CPU during reclaim"))
            .unwrap();
        assert!(line.contains("<10") && line.contains("23.8x"), "{line}");
        assert!(!text.contains("95.0x"), "{text}");
    }

    #[test]
    fn side_by_side_table() {
        let r = SideBySide {
            accel: Accel::Tcg,
            params: ScenarioParams {
                instances: 2,
                instance_mem: 96 * MIB,
                hotmem_driver: C_DRIVER.into(),
            },
            hotmem: report(Mode::Hotmem, &[10.0, 30.0]),
            vanilla: report(Mode::Vanilla, &[200.0, 400.0]),
            reclaim_ratio: Some(15.0),
        };
        let text = render_side_by_side(&r);
        assert!(text.contains("== HotMem"), "{text}");
        assert!(text.contains("== vanilla virtio-mem"), "{text}");
        assert!(text.contains("reclaim latency (ms)"), "{text}");
        assert!(text.contains("15.0x"), "{text}");
        assert!(text.contains("TCG"), "{text}");
        assert!(text.contains("end to end"), "{text}");
        assert!(text.contains("resolution 1 us"), "{text}");
        assert_eq!(text.matches("scale-down").count(), 4, "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["hotmem"]["mode"], "hotmem");
        assert_eq!(json["vanilla"]["rows"][1]["reclaim_ms"], 200.0);
    }
}
