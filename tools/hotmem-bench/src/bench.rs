//! `hotmemctl bench`: the paper's experiments, HotMem side by side with
//! vanilla virtio-mem.
//!
//! | experiment | what is measured |
//! | --- | --- |
//! | `fig5` | reclaim latency of one instance's memory (128 MiB … 1–2 GiB) while another instance fills the rest of the hotplugged memory; also stop + reclaim end to end |
//! | `fig6` | reclaim latency of a fixed size as guest memory use rises |
//! | `fig7` | guest CPU time spent during the reclaims of `fig5` (`/proc/stat`) |
//! | `fig9` | request latency of a co-located instance while another one is scaled down |
//! | `compare` | 1 GiB: one free 1 GiB HotMem partition vs vanilla with memhogs holding most memory, and vanilla's floor (already-empty blocks) |
//! | `sweep` | reclaim latency vs unplugged size up to 8 GiB (2 GiB with `--quick`): HotMem's fast path, vanilla under load, vanilla's floor |
//! | `hotpath` | bound vs unbound in one HotMem guest: page faults (4 KiB, THP; 1 and 2 threads), munmap, exit of a 1 / 2 GiB process ([`crate::hotpath`]) |
//!
//! **Statistics.** Every point is measured in `runs` runs (default 5, 3
//! with `--quick`), each on freshly booted guests, HotMem and vanilla
//! alternating ([`run_order`]); `bench.json` keeps every sample, the
//! summary prints `median [min–max]` and the geometric mean over runs of
//! the vanilla/HotMem ratios ([`crate::stats`]). Guest CPU times are
//! counted in 10 ms ticks and compared as at least one tick.
//!
//! **Timing.** Reclaim latency runs from QMP `qom-set requested-size`
//! until the device's size reached the target, by QEMU's own timestamp of
//! the change (`MEMORY_DEVICE_SIZE_CHANGE`, 1 µs; QEMU sends at most one a
//! second per device but keeps the newest with its own time, so the
//! report comes late but is exact); a sample whose report did not come is
//! timed by polling (1 ms) and says so. "Stop + reclaim" runs from asking
//! the agent to stop the instance (which waits for its partition to be
//! released) to the same end. Devices have 128 MiB blocks. HotMem guests (`hotmem=on`) use the Rust
//! HotMem driver by default, which plugs and onlines whole partitions
//! (`--hotmem-driver virtio_mem` uses the C driver, whose blocks the agent
//! onlines into HotMem); vanilla guests (`hotmem=off`) use the C driver
//! with blocks onlined into ZONE_MOVABLE.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use hotmem_proto::{
    Instance, Op, PartitionsResult, StartInstanceArgs, StopInstanceArgs, WaitFreePartitionsArgs,
};
use serde::{Deserialize, Serialize};

use crate::plot::{self, Axes, Bar, Point, Scale, Series};
use crate::scenario::{memhog_argv, ratio, wait_touched, write_json, Mode};
use crate::stats::{self, Summary};
use hotmem_host::scale::{self, Trigger};
use hotmem_host::{Accel, VmConfig};
use hotmem_host::{
    AgentTransport, Guest as _, MemoryDevice, ResizeClock, Vm, VmError, VmErrorKind,
};
use hotmem_host::{AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 * MIB;
const RESIZE_TIMEOUT: Duration = Duration::from_secs(600);

/// The experiments, by name.
pub const EXPERIMENTS: &[&str] = &[
    "fig5", "fig6", "fig7", "fig9", "compare", "sweep", "hotpath",
];

/// Benchmark options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Base guest configuration (kernel, initrd, accel, run dir).
    pub base: VmConfig,
    /// Where JSON and plots go.
    pub out: PathBuf,
    /// Smaller sizes and fewer points.
    pub quick: bool,
    /// Run only these experiments (`fig7` needs `fig5`'s runs).
    pub only: Vec<String>,
    /// virtio-mem driver of the HotMem guests.
    pub hotmem_driver: String,
    /// Runs of every experiment ([`default_runs`] if `None`).
    pub runs: Option<usize>,
}

/// Runs of every experiment: 5, or 3 with `--quick`.
pub fn default_runs(quick: bool) -> usize {
    if quick {
        3
    } else {
        5
    }
}

impl BenchOptions {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn runs(&self) -> usize {
        self.runs.unwrap_or_else(|| default_runs(self.quick)).max(1)
    }
}

/// The order of the two guest kinds in run `run`: HotMem first in even
/// runs, vanilla first in odd ones, so that a drift of the host (another
/// job starting, caches warming) does not favour one side.
pub fn run_order(run: usize) -> [Mode; 2] {
    if run % 2 == 0 {
        [Mode::Hotmem, Mode::Vanilla]
    } else {
        [Mode::Vanilla, Mode::Hotmem]
    }
}

/// One reclaim measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reclaim {
    /// Guest kind.
    pub mode: Mode,
    /// Bytes unplugged.
    pub bytes: u64,
    /// Trigger (QMP `requested-size` lowered) until the device had the
    /// lower size, ms.
    pub latency_ms: f64,
    /// Time to stop the instance whose memory is reclaimed (kill, reap,
    /// partition released), ms; `None` when nothing was stopped.
    #[serde(default)]
    pub stop_ms: Option<f64>,
    /// Stop + reclaim end to end: from asking the agent to stop the
    /// instance until the device had the lower size, ms.
    #[serde(default)]
    pub end_to_end_ms: Option<f64>,
    /// What timed the end of the reclaim.
    #[serde(default = "poll_clock")]
    pub clock: ResizeClock,
    /// Resolution of the latencies, ms.
    #[serde(default)]
    pub resolution_ms: f64,
    /// When the host's polling (every 10 ms) saw the lower size, ms after
    /// the trigger: a cross-check of a device-timed `latency_ms`.
    #[serde(default)]
    pub polled_ms: Option<f64>,
    /// Guest CPU time (non-idle, all vCPUs) during the reclaim, ms.
    pub guest_cpu_ms: Option<f64>,
    /// Pages migrated during the reclaim (`pgmigrate_success` delta).
    pub pages_migrated: u64,
    /// Guest memory use when the reclaim started, percent of MemTotal.
    pub guest_use_pct: f64,
}

fn poll_clock() -> ResizeClock {
    ResizeClock::Poll
}

/// Samples of both guest kinds at one point of an experiment: sample `i`
/// of each side comes from run `i`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Paired {
    /// HotMem, one per run.
    pub hotmem: Vec<Reclaim>,
    /// Vanilla, one per run.
    pub vanilla: Vec<Reclaim>,
}

impl Paired {
    /// The samples of `mode`.
    pub fn side(&mut self, mode: Mode) -> &mut Vec<Reclaim> {
        match mode {
            Mode::Hotmem => &mut self.hotmem,
            Mode::Vanilla => &mut self.vanilla,
        }
    }

    /// Summary of `f` over HotMem's samples.
    pub fn hotmem_summary(&self, f: impl Fn(&Reclaim) -> Option<f64>) -> Option<Summary> {
        Summary::of(self.hotmem.iter().filter_map(f))
    }

    /// Summary of `f` over vanilla's samples.
    pub fn vanilla_summary(&self, f: impl Fn(&Reclaim) -> Option<f64>) -> Option<Summary> {
        Summary::of(self.vanilla.iter().filter_map(f))
    }

    /// Geometric mean over runs of vanilla / HotMem of `f`.
    pub fn geomean_ratio(&self, f: impl Fn(&Reclaim) -> Option<f64>) -> Option<f64> {
        let v: Option<Vec<f64>> = self.vanilla.iter().map(&f).collect();
        let h: Option<Vec<f64>> = self.hotmem.iter().map(&f).collect();
        stats::geomean_ratio(&v?, &h?)
    }

    /// Geometric mean over runs of vanilla / HotMem guest CPU time, both
    /// clamped to one tick.
    pub fn cpu_ratio(&self) -> Option<f64> {
        if self.vanilla.len() != self.hotmem.len() {
            return None;
        }
        let r: Option<Vec<f64>> = self
            .vanilla
            .iter()
            .zip(&self.hotmem)
            .map(|(v, h)| stats::cpu_ratio(v.guest_cpu_ms, h.guest_cpu_ms))
            .collect();
        stats::geomean(r?)
    }
}

/// The reclaim latency of a sample.
pub fn latency(r: &Reclaim) -> Option<f64> {
    Some(r.latency_ms)
}

/// Stop + reclaim of a sample.
pub fn end_to_end(r: &Reclaim) -> Option<f64> {
    r.end_to_end_ms
}

/// Guest CPU time of a sample.
pub fn guest_cpu(r: &Reclaim) -> Option<f64> {
    r.guest_cpu_ms
}

/// A point of Fig. 5/7: one instance size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizePoint {
    /// Instance (= partition, = unplugged) size, bytes.
    pub size: u64,
    /// The runs.
    #[serde(flatten)]
    pub runs: Paired,
}

/// A point of Fig. 6: one memory-use level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsePoint {
    /// Target use level, percent.
    pub target_pct: u32,
    /// The runs.
    #[serde(flatten)]
    pub runs: Paired,
}

/// Latency statistics of a set of requests, µs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Requests.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl LatencyStats {
    /// Statistics of `v` (any order).
    pub fn of(v: &[f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let pct = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
        Self {
            count: s.len(),
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            max_us: s[s.len() - 1],
            mean_us: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

/// Fig. 9 for one guest kind and run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Colocated {
    /// Guest kind.
    pub mode: Mode,
    /// Run (0-based).
    #[serde(default)]
    pub run: usize,
    /// The victim's reclaim.
    pub reclaim: Reclaim,
    /// Requests in the second before the scale-down.
    pub before: LatencyStats,
    /// Requests during the scale-down (stop + reclaim).
    pub during: LatencyStats,
    /// Requests in the second after it.
    pub after: LatencyStats,
    /// (ms relative to the scale-down start, latency µs) of every request.
    pub timeline: Vec<(f64, f64)>,
    /// Scale-down duration, ms (the shaded window).
    pub window_ms: f64,
}

/// The `compare` experiment, one sample per run in each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Compare {
    /// HotMem: one free 1 GiB partition.
    pub hotmem_free_partitions: Vec<Reclaim>,
    /// Vanilla: 1 GiB while memhogs hold most of the guest's memory.
    pub vanilla_loaded: Vec<Reclaim>,
    /// Vanilla floor: 1 GiB of already-empty blocks.
    pub vanilla_empty: Vec<Reclaim>,
}

/// A series of the reclaim-size sweep. Each unplugs `size` out of `2 *
/// size` plugged in 128 MiB device blocks; with load, memhogs of 3/4 of a
/// partition in every partition touched their memory together and every
/// other one was stopped, so `3/4 size` is in use, interleaved with the
/// freed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepSeries {
    /// HotMem's fast path: `size` in the free partitions (of at most
    /// 1 GiB) of the stopped memhogs.
    HotmemFast,
    /// Vanilla virtio-mem with the same memhogs, unbound.
    VanillaLoaded,
    /// Vanilla's floor: nothing uses the plugged memory.
    VanillaEmpty,
}

impl SweepSeries {
    /// Every series, in table order. (Parked partitions and the floor of a
    /// device unplug with no guest work are to come, as further series.)
    pub const ALL: [SweepSeries; 3] = [
        SweepSeries::HotmemFast,
        SweepSeries::VanillaLoaded,
        SweepSeries::VanillaEmpty,
    ];

    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            SweepSeries::HotmemFast => "HotMem fast path (free partitions)",
            SweepSeries::VanillaLoaded => "vanilla under load",
            SweepSeries::VanillaEmpty => "vanilla floor (empty blocks)",
        }
    }

    /// The guest kind it runs on.
    pub fn mode(self) -> Mode {
        match self {
            SweepSeries::HotmemFast => Mode::Hotmem,
            SweepSeries::VanillaLoaded | SweepSeries::VanillaEmpty => Mode::Vanilla,
        }
    }

    /// Column name.
    pub fn short(self) -> &'static str {
        match self {
            SweepSeries::HotmemFast => "HotMem fast ms",
            SweepSeries::VanillaLoaded => "vanilla loaded ms",
            SweepSeries::VanillaEmpty => "vanilla floor ms",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            SweepSeries::HotmemFast => "hotmem-fast",
            SweepSeries::VanillaLoaded => "vanilla-loaded",
            SweepSeries::VanillaEmpty => "vanilla-empty",
        }
    }
}

/// A point of the reclaim-size sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Which series.
    pub series: SweepSeries,
    /// Bytes unplugged.
    pub size: u64,
    /// One per run.
    pub samples: Vec<Reclaim>,
}

/// What timed the reclaims of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimerInfo {
    /// Samples timed by the device's own timestamps.
    pub device_event: usize,
    /// Samples timed by host polling (the device's report did not come).
    pub poll: usize,
    /// The coarsest resolution of any sample, ms.
    pub worst_resolution_ms: f64,
    /// How much later the host's 10 ms polling saw the size than the
    /// device's timestamp, over the device-timed samples, ms.
    #[serde(default)]
    pub poll_lag_ms: Option<Summary>,
}

impl TimerInfo {
    fn add(&mut self, r: &Reclaim) {
        match r.clock {
            ResizeClock::DeviceEvent => self.device_event += 1,
            ResizeClock::Poll => self.poll += 1,
        }
        self.worst_resolution_ms = self.worst_resolution_ms.max(r.resolution_ms);
    }

    /// One line for the summary.
    pub fn render(&self) -> String {
        let mut out = format!(
            "reclaim timer: {} of {} samples by {} (resolution 1 us)",
            self.device_event,
            self.device_event + self.poll,
            ResizeClock::DeviceEvent.label()
        );
        if self.poll > 0 {
            out.push_str(&format!(
                ", {} by {} (resolution {})",
                self.poll,
                ResizeClock::Poll.label(),
                scale::resolution(self.worst_resolution_ms)
            ));
        }
        if let Some(lag) = &self.poll_lag_ms {
            out.push_str(&format!(
                "; 10 ms polling saw the size {} ms later",
                lag.render(1)
            ));
        }
        out
    }
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// Accelerator.
    pub accel: Option<Accel>,
    /// Quick mode.
    pub quick: bool,
    /// Runs of each experiment.
    #[serde(default)]
    pub runs: usize,
    /// Guest kernel.
    pub kernel_release: String,
    /// virtio-mem driver of the HotMem guests.
    #[serde(default)]
    pub hotmem_driver: String,
    /// Fig. 5 and 7.
    pub by_size: Vec<SizePoint>,
    /// Fig. 6.
    pub by_use: Vec<UsePoint>,
    /// Fig. 9, every run of both kinds.
    pub colocated: Vec<Colocated>,
    /// Comparison and floor.
    pub compare: Option<Compare>,
    /// Reclaim-size sweep.
    #[serde(default)]
    pub sweep: Vec<SweepPoint>,
    /// Bound vs unbound hot paths.
    #[serde(default)]
    pub hotpath: Option<crate::hotpath::HotpathReport>,
    /// What timed the reclaims.
    #[serde(default)]
    pub timer: TimerInfo,
    /// Wall time of the whole run, s.
    pub wall_s: f64,
}

impl BenchReport {
    /// Every reclaim sample of the report.
    pub fn samples(&self) -> Vec<&Reclaim> {
        let mut all: Vec<&Reclaim> = Vec::new();
        for p in &self.by_size {
            all.extend(p.runs.hotmem.iter().chain(&p.runs.vanilla));
        }
        for p in &self.by_use {
            all.extend(p.runs.hotmem.iter().chain(&p.runs.vanilla));
        }
        all.extend(self.colocated.iter().map(|c| &c.reclaim));
        if let Some(c) = &self.compare {
            all.extend(
                c.hotmem_free_partitions
                    .iter()
                    .chain(&c.vanilla_loaded)
                    .chain(&c.vanilla_empty),
            );
        }
        for p in &self.sweep {
            all.extend(&p.samples);
        }
        all
    }

    /// Fills [`BenchReport::timer`] from the samples.
    pub fn count_timers(&mut self) {
        let mut t = TimerInfo::default();
        for r in self.samples() {
            t.add(r);
        }
        t.poll_lag_ms = Summary::of(
            self.samples()
                .into_iter()
                .filter(|r| r.clock == ResizeClock::DeviceEvent)
                .filter_map(|r| Some(r.polled_ms? - r.latency_ms)),
        );
        self.timer = t;
    }
}

fn scale_err(msg: String) -> VmError {
    VmError::from_kind(VmErrorKind::Scale(msg))
}

/// A guest for the benchmark.
struct Guest {
    vm: Vm,
    mode: Mode,
}

impl Guest {
    fn boot(
        opts: &BenchOptions,
        mode: Mode,
        name: &str,
        boot_mem: u64,
        vmem: u64,
        partition: u64,
    ) -> Result<Guest, VmError> {
        let mut cfg = opts.base.clone();
        cfg.run_dir = opts.base.run_dir.join(name);
        cfg.memory = boot_mem;
        cfg.vmem_block_size = BLOCK;
        cfg.vmem_size = vmem;
        cfg.vmem_requested = 0;
        cfg.append = match mode {
            Mode::Hotmem => format!("hotmem=on hotmem_partition_size={}M", partition / MIB),
            Mode::Vanilla => "hotmem=off".to_owned(),
        };
        let mut vm = Vm::boot(&cfg)?;
        vm.set_command_timeout(Duration::from_secs(600));
        if mode == Mode::Vanilla {
            vm.write_file(AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY)?;
        }
        let driver = match mode {
            Mode::Hotmem => opts.hotmem_driver.as_str(),
            Mode::Vanilla => crate::scenario::C_DRIVER,
        };
        vm.exec_ok(&["modprobe", driver])?;
        Ok(Guest { vm, mode })
    }

    fn hotmem(&self) -> bool {
        self.mode == Mode::Hotmem
    }

    /// Plugs `bytes` more; in HotMem guests waits until they form
    /// `partitions` more free partitions (onlining them).
    fn plug(&mut self, bytes: u64, partitions: u64) -> Result<(), VmError> {
        let free_before = if self.hotmem() {
            scale::partitions(&mut self.vm)?.free()
        } else {
            0
        };
        let target = self.vm.requested_size()? + bytes;
        let hotmem = self.hotmem();
        scale::plug(&mut self.vm, target, hotmem, RESIZE_TIMEOUT)?;
        if self.hotmem() {
            let _: PartitionsResult = self.vm.agent_call(
                Op::WaitFreePartitions(WaitFreePartitionsArgs {
                    count: free_before + partitions,
                    online: true,
                    timeout_ms: 300_000,
                }),
                Some(Duration::from_secs(330)),
            )?;
        } else {
            // Auto-onlined on add: wait until nothing is offline.
            let start = Instant::now();
            while scale::partitions(&mut self.vm)?.offline_blocks > 0 {
                if start.elapsed() > RESIZE_TIMEOUT {
                    return Err(scale_err("plugged blocks never came online".into()));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts a memhog of `bytes`, bound if `bind` (HotMem guests only).
    fn memhog(&mut self, bytes: u64, bind: bool, extra: &[&str]) -> Result<Instance, VmError> {
        let mut argv = memhog_argv(bytes);
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        self.vm.agent_call(
            Op::StartInstance(StartInstanceArgs {
                argv,
                memory_limit: None,
                hotmem: bind && self.hotmem(),
                bind_timeout_ms: Some(30_000),
                ..StartInstanceArgs::default()
            }),
            Some(Duration::from_secs(90)),
        )
    }

    fn stop(&mut self, id: u64) -> Result<Instance, VmError> {
        self.vm.agent_call(
            Op::StopInstance(StopInstanceArgs {
                instance: id,
                grace_ms: 0,
            }),
            Some(Duration::from_secs(90)),
        )
    }

    fn vmstat(&mut self, key: &str) -> Result<u64, VmError> {
        let text = self.vm.read_file("/proc/vmstat")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Memory in use, percent of MemTotal (HotMemFree counts as free).
    fn use_pct(&mut self) -> Result<f64, VmError> {
        let m = self.vm.meminfo()?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0) as f64;
        let total = get("MemTotal").max(1.0);
        Ok((total - get("MemFree") - get("HotMemFree")) / total * 100.0)
    }

    /// Unplugs `bytes` over QMP and measures it.
    fn reclaim(&mut self, bytes: u64) -> Result<Reclaim, VmError> {
        self.measure(bytes, None)
    }

    /// Stops instance `id`, then unplugs `bytes` over QMP; measures the
    /// reclaim and the whole (stop + reclaim).
    fn stop_and_reclaim(&mut self, id: u64, bytes: u64) -> Result<Reclaim, VmError> {
        let stopped = Instant::now();
        self.stop(id)?;
        let stop_ms = stopped.elapsed().as_secs_f64() * 1000.0;
        let mut r = self.measure(bytes, Some(stopped))?;
        r.stop_ms = Some(stop_ms);
        Ok(r)
    }

    fn measure(&mut self, bytes: u64, stopped: Option<Instant>) -> Result<Reclaim, VmError> {
        let guest_use_pct = self.use_pct()?;
        let migrated = self.vmstat("pgmigrate_success")?;
        let r = scale::reclaim(&mut self.vm, bytes, &Trigger::Qmp, None, RESIZE_TIMEOUT)?;
        Ok(Reclaim {
            mode: self.mode,
            bytes,
            latency_ms: r.ms(),
            stop_ms: None,
            end_to_end_ms: stopped.map(|t| r.ms_since(t)),
            clock: r.timing.clock,
            resolution_ms: r.resolution_ms(),
            polled_ms: Some(r.timing.polled.as_secs_f64() * 1000.0),
            guest_cpu_ms: r.guest_cpu_ms,
            pages_migrated: self.vmstat("pgmigrate_success")?.saturating_sub(migrated),
            guest_use_pct,
        })
    }

    fn uptime_ms(&mut self) -> Result<u64, VmError> {
        Ok(self.vm.hello()?.uptime_ms)
    }

    fn done(self) -> Result<(), VmError> {
        self.vm.shutdown().map(drop)
    }
}

/// Fig. 5/7 for one mode and size: an instance of 3/4 `size` and a filler
/// of the same size touch their memory at the same time in `2 * size` of
/// hotplugged memory; the instance stops and `size` is unplugged.
fn size_point(
    opts: &BenchOptions,
    mode: Mode,
    run: usize,
    size: u64,
) -> Result<(Reclaim, String), VmError> {
    let name = format!("fig5-{}-{}M-{run}", mode_name(mode), size / MIB);
    let mut g = Guest::boot(opts, mode, &name, 1 << 30, 2 * size, size)?;
    let kernel =
        g.vm.boot_hello()
            .map(|h| h.kernel_release.clone())
            .unwrap_or_default();
    g.plug(2 * size, 2)?;
    let hog = size / 4 * 3;
    let target = g.memhog(hog, true, &[])?;
    let _filler = g.memhog(hog, true, &[])?;
    wait_touched(&mut g.vm, hog * 9 / 10)?;
    let r = g.stop_and_reclaim(target.instance, size)?;
    g.done()?;
    Ok((r, kernel))
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Hotmem => "hotmem",
        Mode::Vanilla => "vanilla",
    }
}

/// Fig. 6 for one mode: 2 GiB hotplugged in partitions of `unit`; per
/// level, fillers raise the use, a `unit` instance runs and stops, and
/// `unit` is unplugged (then plugged again for the next level).
fn use_points(
    opts: &BenchOptions,
    mode: Mode,
    run: usize,
    unit: u64,
    levels: &[u32],
) -> Result<Vec<(u32, Reclaim)>, VmError> {
    let hotplug = 2u64 << 30;
    let name = format!("fig6-{}-{run}", mode_name(mode));
    let mut g = Guest::boot(opts, mode, &name, 1 << 30, hotplug, unit)?;
    g.plug(hotplug, hotplug / unit)?;
    let partitions = hotplug / unit;
    let hog = unit / 8 * 7;
    let mut bound_fillers = 0u64;
    let mut out = Vec::new();
    for &level in levels {
        let m = g.vm.meminfo()?;
        let total_kib = m.get("MemTotal").copied().unwrap_or(0);
        let want = total_kib * 1024 / 100 * u64::from(level);
        let mut used = (g.use_pct()? / 100.0 * (total_kib * 1024) as f64) as u64 + hog;
        // Fill in chunks of one instance: bound ones in partitions (HotMem,
        // one partition kept for the measured instance), then unbound ones
        // in ordinary memory, keeping 160 MiB of it free.
        while used + hog / 2 < want {
            let chunk = hog.min(want - used);
            if g.hotmem() && bound_fillers + 1 < partitions {
                g.memhog(chunk, true, &[])?;
                bound_fillers += 1;
            } else {
                let free_kib = g.vm.meminfo()?.get("MemFree").copied().unwrap_or(0);
                let room = (free_kib * 1024).saturating_sub(160 * MIB);
                if room < 32 * MIB {
                    break;
                }
                g.memhog(chunk.min(room), false, &[])?;
            }
            used += chunk;
            wait_touched(&mut g.vm, 0)?;
        }
        let target = g.memhog(hog, true, &[])?;
        wait_touched(&mut g.vm, 0)?;
        wait_all_touched(&mut g.vm)?;
        let r = g.stop_and_reclaim(target.instance, unit)?;
        out.push((level, r));
        g.plug(unit, 1)?;
    }
    g.done()?;
    Ok(out)
}

/// Waits until each running memhog has touched what it was asked to.
fn wait_all_touched<G: AgentTransport + ?Sized>(vm: &mut G) -> Result<(), VmError> {
    let start = Instant::now();
    loop {
        let list = scale::list_instances(vm)?;
        let pending = list.instances.iter().any(|i| {
            let asked = i
                .argv
                .iter()
                .position(|a| a == "--size")
                .and_then(|p| i.argv.get(p + 1))
                .and_then(|s| hotmem_host::parse_size(s).ok())
                .unwrap_or(0);
            i.rss.unwrap_or(0) < asked / 10 * 9
        });
        if !pending {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(900) {
            return Err(scale_err("memhogs did not finish touching".into()));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Parses `req uptime_ms=T latency_us=L` lines.
pub fn parse_requests(text: &str) -> Vec<(u64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("req ")?;
            let mut t = None;
            let mut lat = None;
            for kv in rest.split_whitespace() {
                match kv.split_once('=')? {
                    ("uptime_ms", v) => t = v.parse().ok(),
                    ("latency_us", v) => lat = v.parse().ok(),
                    _ => {}
                }
            }
            Some((t?, lat?))
        })
        .collect()
}

/// Fig. 9 for one mode: a victim (3/4 of a 512 MiB partition) and a
/// 448 MiB filler in 1 GiB hotplugged, plus a co-located 64 MiB instance serving a
/// 256 KiB request every 4 ms; the victim is scaled down (stop + unplug
/// 512 MiB).
fn colocated(opts: &BenchOptions, mode: Mode, run: usize, part: u64) -> Result<Colocated, VmError> {
    let name = format!("fig9-{}-{run}", mode_name(mode));
    let mut g = Guest::boot(opts, mode, &name, 1 << 30, 2 * part, part)?;
    g.plug(2 * part, 2)?;
    let victim = g.memhog(part / 4 * 3, true, &[])?;
    // The filler cannot share the co-located instance's partition (one
    // instance per partition), so it is unbound: in ordinary memory with
    // HotMem, spread over the hotplugged memory in vanilla guests, where
    // with the others it leaves the unplug no empty half to take.
    g.memhog(part / 8 * 7, false, &[])?;
    let colo = g.memhog(
        64 * MIB,
        true,
        &["--request-interval", "4ms", "--request-bytes", "256K"],
    )?;
    wait_all_touched(&mut g.vm)?;
    thread::sleep(Duration::from_millis(1500));
    let t0 = g.uptime_ms()?;
    let started = Instant::now();
    let reclaim = g.stop_and_reclaim(victim.instance, part)?;
    let window_ms = started.elapsed().as_secs_f64() * 1000.0;
    let t1 = g.uptime_ms()?;
    thread::sleep(Duration::from_millis(1500));
    let out =
        g.vm.read_file(&format!("/run/hotmem/instances/{}/stdout", colo.instance))?;
    g.done()?;
    let reqs = parse_requests(&out);
    let window = |a: u64, b: u64| -> Vec<f64> {
        reqs.iter()
            .filter(|(t, _)| *t >= a && *t <= b)
            .map(|(_, l)| *l)
            .collect()
    };
    Ok(Colocated {
        mode,
        run,
        reclaim,
        before: LatencyStats::of(&window(t0.saturating_sub(1000), t0.saturating_sub(1))),
        during: LatencyStats::of(&window(t0, t1)),
        after: LatencyStats::of(&window(t1 + 1, t1 + 1000)),
        timeline: reqs
            .iter()
            .filter(|(t, _)| *t + 1000 >= t0 && *t <= t1 + 1000)
            .map(|(t, l)| (*t as f64 - t0 as f64, *l))
            .collect(),
        window_ms,
    })
}

/// Which configuration of the `compare` experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareCase {
    /// One free 1 GiB HotMem partition, memhogs in ordinary memory.
    Hotmem,
    /// Vanilla, memhogs spread over ordinary and movable memory.
    VanillaLoaded,
    /// Vanilla, nothing uses the plugged memory.
    VanillaEmpty,
}

/// One sample of the 1 GiB comparison: 2 GiB boot memory, 1 GiB plugged
/// and unplugged, 4 x 384 MiB memhogs unless `VanillaEmpty`.
fn compare_one(opts: &BenchOptions, case: CompareCase, run: usize) -> Result<Reclaim, VmError> {
    let gib = 1u64 << 30;
    let (mode, name, partition, hogs) = match case {
        CompareCase::Hotmem => (Mode::Hotmem, "compare-hotmem", gib, 4),
        CompareCase::VanillaLoaded => (Mode::Vanilla, "compare-vanilla", BLOCK, 4),
        CompareCase::VanillaEmpty => (Mode::Vanilla, "compare-floor", BLOCK, 0),
    };
    let mut g = Guest::boot(
        opts,
        mode,
        &format!("{name}-{run}"),
        2 * gib,
        gib,
        partition,
    )?;
    g.plug(gib, u64::from(mode == Mode::Hotmem))?;
    for _ in 0..hogs {
        g.memhog(384 * MIB, false, &[])?;
    }
    wait_all_touched(&mut g.vm)?;
    let r = g.reclaim(gib)?;
    g.done()?;
    Ok(r)
}

/// The sizes of the reclaim-size sweep, MiB: up to 8 GiB, 2 GiB with
/// `--quick`.
pub fn sweep_sizes(quick: bool) -> &'static [u64] {
    if quick {
        &[512, 1024, 2048]
    } else {
        &[512, 1024, 2048, 4096, 8192]
    }
}

/// HotMem partitions of the sweep: half the unplugged size, at most 1 GiB
/// (a partition is naturally aligned and QEMU puts the device's region at
/// 4 GiB here, so 8 GiB ones would not fit a 16 GiB region twice; and
/// with at least four partitions every other memhog can be stopped).
fn sweep_partition(size: u64) -> u64 {
    (size / 2).clamp(BLOCK, 1 << 30)
}

/// One sample of the sweep: `2 * size` plugged in a guest with 2 GiB of
/// boot memory (room for the memmap of 16 GiB), `size` unplugged. With
/// load, as in Fig. 5: one memhog of 3/4 of a partition per partition of
/// the `2 * size` (bound, one per partition, in HotMem guests; unbound,
/// wherever the allocator puts them, in vanilla ones) touch their memory
/// at the same time, then every other one is stopped: `3/4 size` stays
/// in use, interleaved with the freed memory and reaching into the upper
/// half of the plugged memory (memhogs of only `size` in all would fit in
/// the lower half, which vanilla does not unplug), and `size` is unplugged
/// (HotMem: the partitions of the stopped ones; vanilla: whatever blocks
/// it picks, migrating what is in use).
fn sweep_one(
    opts: &BenchOptions,
    series: SweepSeries,
    size: u64,
    run: usize,
) -> Result<Reclaim, VmError> {
    let part = sweep_partition(size);
    let name = format!("sweep-{}-{}M-{run}", series.dir_name(), size / MIB);
    let mode = series.mode();
    let mut g = Guest::boot(opts, mode, &name, 2 << 30, 2 * size, part)?;
    let partitions = 2 * size / part;
    g.plug(2 * size, if mode == Mode::Hotmem { partitions } else { 0 })?;
    if series != SweepSeries::VanillaEmpty {
        let mut hogs = Vec::new();
        for _ in 0..partitions {
            hogs.push(g.memhog(part / 4 * 3, true, &[])?.instance);
        }
        wait_all_touched(&mut g.vm)?;
        for id in hogs.iter().step_by(2) {
            g.stop(*id)?;
        }
    }
    let r = g.reclaim(size)?;
    g.done()?;
    Ok(r)
}

/// Runs the selected experiments; `progress` gets a line per step.
pub fn run_bench(
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, VmError> {
    let started = Instant::now();
    let runs = opts.runs();
    let mut report = BenchReport {
        accel: Some(opts.base.accel),
        quick: opts.quick,
        runs,
        hotmem_driver: opts.hotmem_driver.clone(),
        ..BenchReport::default()
    };
    if opts.wants("fig5") || opts.wants("fig7") {
        let sizes: &[u64] = if opts.quick {
            &[128, 256, 512]
        } else {
            &[128, 256, 512, 1024, 2048]
        };
        report.by_size = sizes
            .iter()
            .map(|&mib| SizePoint {
                size: mib * MIB,
                runs: Paired::default(),
            })
            .collect();
        for run in 0..runs {
            for point in &mut report.by_size {
                let mib = point.size / MIB;
                for mode in run_order(run) {
                    progress(&format!(
                        "fig5/7: run {}/{runs}, {mib} MiB instance, {}...",
                        run + 1,
                        mode.label()
                    ));
                    let (r, kernel) = size_point(opts, mode, run, point.size)?;
                    report.kernel_release = kernel;
                    point.runs.side(mode).push(r);
                }
            }
        }
    }
    if opts.wants("fig6") {
        let levels: &[u32] = if opts.quick {
            &[0, 40, 80]
        } else {
            &[0, 20, 40, 60, 80, 90]
        };
        let unit = 256 * MIB;
        report.by_use = levels
            .iter()
            .map(|&target_pct| UsePoint {
                target_pct,
                runs: Paired::default(),
            })
            .collect();
        for run in 0..runs {
            for mode in run_order(run) {
                progress(&format!(
                    "fig6: run {}/{runs}, memory-use levels, {}...",
                    run + 1,
                    mode.label()
                ));
                let got = use_points(opts, mode, run, unit, levels)?;
                for (point, (_, r)) in report.by_use.iter_mut().zip(got) {
                    point.runs.side(mode).push(r);
                }
            }
        }
    }
    if opts.wants("fig9") {
        for run in 0..runs {
            for mode in run_order(run) {
                progress(&format!(
                    "fig9: run {}/{runs}, co-located requests, {}...",
                    run + 1,
                    mode.label()
                ));
                report
                    .colocated
                    .push(colocated(opts, mode, run, 512 * MIB)?);
            }
        }
    }
    if opts.wants("compare") {
        let mut c = Compare::default();
        for run in 0..runs {
            for mode in run_order(run) {
                progress(&format!(
                    "compare: run {}/{runs}, 1 GiB, {}...",
                    run + 1,
                    mode.label()
                ));
                if mode == Mode::Hotmem {
                    c.hotmem_free_partitions
                        .push(compare_one(opts, CompareCase::Hotmem, run)?);
                } else {
                    c.vanilla_loaded
                        .push(compare_one(opts, CompareCase::VanillaLoaded, run)?);
                    c.vanilla_empty
                        .push(compare_one(opts, CompareCase::VanillaEmpty, run)?);
                }
            }
        }
        report.compare = Some(c);
    }
    if opts.wants("sweep") {
        let sizes = sweep_sizes(opts.quick);
        for series in SweepSeries::ALL {
            for &mib in sizes {
                report.sweep.push(SweepPoint {
                    series,
                    size: mib * MIB,
                    samples: Vec::new(),
                });
            }
        }
        for run in 0..runs {
            for &mib in sizes {
                // HotMem and vanilla alternate within each size, as above.
                let mut order: Vec<SweepSeries> = SweepSeries::ALL.to_vec();
                if run % 2 == 1 {
                    order.reverse();
                }
                for series in order {
                    progress(&format!(
                        "sweep: run {}/{runs}, {mib} MiB, {}...",
                        run + 1,
                        series.label()
                    ));
                    let r = sweep_one(opts, series, mib * MIB, run)?;
                    if let Some(p) = report
                        .sweep
                        .iter_mut()
                        .find(|p| p.series == series && p.size == mib * MIB)
                    {
                        p.samples.push(r);
                    }
                }
            }
        }
    }
    if opts.wants("hotpath") {
        let h = crate::hotpath::run_hotpath(opts, progress)?;
        if report.kernel_release.is_empty() {
            report.kernel_release = h.kernel_release.clone();
        }
        report.hotpath = Some(h);
    }
    report.count_timers();
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads a `bench.json` written by [`write_outputs`].
pub fn read_report(path: &Path) -> Result<BenchReport, VmError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        VmError::from_kind(VmErrorKind::Io {
            what: format!("reading {}", path.display()),
            source,
        })
    })?;
    serde_json::from_str(&text)
        .map_err(|e| scale_err(format!("{} is not a bench report: {e}", path.display())))
}

/// A plot point of `samples` at `x`: median and min–max of `f`.
fn point(x: f64, samples: &[Reclaim], f: impl Fn(&Reclaim) -> Option<f64>) -> Option<Point> {
    let s = Summary::of(samples.iter().filter_map(f))?;
    Some(Point {
        x,
        y: s.median,
        lo: s.min,
        hi: s.max,
    })
}

/// CPU times for a log axis: at least one tick (what `/proc/stat` counts).
fn cpu_clamped(r: &Reclaim) -> Option<f64> {
    r.guest_cpu_ms.map(stats::clamp_cpu_ms)
}

/// Writes `bench.json` and the SVG plots to `dir`; returns the files.
pub fn write_outputs(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, VmError> {
    let mut files = vec![dir.join("bench.json")];
    write_json(&files[0], report)?;
    let perr = |e: plot::PlotError| {
        VmError::from_kind(VmErrorKind::Io {
            what: e.to_string(),
            source: std::io::Error::other(e.message.clone()),
        })
    };
    // HotMem and vanilla series of `points` (x, samples).
    let two = |points: &[(f64, &Paired)], f: &dyn Fn(&Reclaim) -> Option<f64>| -> Vec<Series> {
        vec![
            Series {
                name: "HotMem".into(),
                points: points
                    .iter()
                    .filter_map(|(x, p)| point(*x, &p.hotmem, f))
                    .collect(),
            },
            Series {
                name: "vanilla virtio-mem".into(),
                points: points
                    .iter()
                    .filter_map(|(x, p)| point(*x, &p.vanilla, f))
                    .collect(),
            },
        ]
    };
    let runs = |n: usize| {
        if n > 1 {
            format!(", median and min–max of {n} runs")
        } else {
            String::new()
        }
    };
    if !report.by_size.is_empty() {
        let pts: Vec<(f64, &Paired)> = report
            .by_size
            .iter()
            .map(|p| ((p.size / MIB) as f64, &p.runs))
            .collect();
        let path = dir.join("fig5_reclaim_vs_size.svg");
        let title = format!(
            "Reclaim latency of one instance's memory (Fig. 5{})",
            runs(report.runs)
        );
        plot::line_chart(
            &path,
            &Axes {
                title: &title,
                x_desc: "instance size (MiB)",
                y_desc: "reclaim latency (ms, log)",
                x: Scale::Log,
                y: Scale::Log,
            },
            &two(&pts, &latency),
        )
        .map_err(perr)?;
        files.push(path);
        let path = dir.join("fig5_stop_and_reclaim_vs_size.svg");
        let title = format!("Stop + reclaim, end to end{}", runs(report.runs));
        plot::line_chart(
            &path,
            &Axes {
                title: &title,
                x_desc: "instance size (MiB)",
                y_desc: "stop + reclaim (ms, log)",
                x: Scale::Log,
                y: Scale::Log,
            },
            &two(&pts, &end_to_end),
        )
        .map_err(perr)?;
        files.push(path);
        let path = dir.join("fig7_guest_cpu_vs_size.svg");
        let title = format!(
            "Guest CPU time during reclaim (Fig. 7{})",
            runs(report.runs)
        );
        plot::line_chart(
            &path,
            &Axes {
                title: &title,
                x_desc: "instance size (MiB)",
                y_desc: "guest CPU time (ms, log, at least one 10 ms tick)",
                x: Scale::Log,
                y: Scale::Log,
            },
            &two(&pts, &cpu_clamped),
        )
        .map_err(perr)?;
        files.push(path);
    }
    if !report.by_use.is_empty() {
        let path = dir.join("fig6_reclaim_vs_use.svg");
        let pts: Vec<(f64, &Paired)> = report
            .by_use
            .iter()
            .map(|p| (f64::from(p.target_pct), &p.runs))
            .collect();
        let title = format!(
            "Reclaim latency of 256 MiB vs guest memory use (Fig. 6{})",
            runs(report.runs)
        );
        plot::line_chart(
            &path,
            &Axes {
                title: &title,
                x_desc: "target guest memory use (%)",
                y_desc: "reclaim latency (ms, log)",
                x: Scale::Linear,
                y: Scale::Log,
            },
            &two(&pts, &latency),
        )
        .map_err(perr)?;
        files.push(path);
    }
    if !report.colocated.is_empty() {
        let path = dir.join("fig9_colocated_latency.svg");
        // The first run of each kind: a timeline does not average.
        let series: Vec<Series> = report
            .colocated
            .iter()
            .filter(|c| c.run == 0)
            .map(|c| Series {
                name: format!("{} (scale-down 0..{:.0} ms)", c.mode.label(), c.window_ms),
                points: c
                    .timeline
                    .iter()
                    .map(|&(t, l)| Point::exact(t, l / 1000.0))
                    .collect(),
            })
            .collect();
        plot::line_chart(
            &path,
            &Axes {
                title: "Co-located instance's request latency during a scale-down (Fig. 9, run 1)",
                x_desc: "time since scale-down start (ms)",
                y_desc: "request latency (ms, log)",
                x: Scale::Linear,
                y: Scale::Log,
            },
            &series,
        )
        .map_err(perr)?;
        files.push(path);
    }
    if let Some(c) = &report.compare {
        let path = dir.join("compare_1gib.svg");
        let bar = |label: &str, v: &[Reclaim]| {
            point(0.0, v, latency).map(|value| Bar {
                label: label.into(),
                value,
            })
        };
        let bars: Vec<Bar> = [
            bar("HotMem (one free partition)", &c.hotmem_free_partitions),
            bar("vanilla (memhogs)", &c.vanilla_loaded),
            bar("vanilla floor (empty)", &c.vanilla_empty),
        ]
        .into_iter()
        .flatten()
        .collect();
        let title = format!("Removing 1 GiB{}", runs(report.runs));
        plot::bar_chart(&path, &title, "reclaim latency (ms, log)", &bars).map_err(perr)?;
        files.push(path);
    }
    if !report.sweep.is_empty() {
        let path = dir.join("sweep_reclaim_vs_size.svg");
        let series: Vec<Series> = SweepSeries::ALL
            .iter()
            .map(|&series| Series {
                name: series.label().into(),
                points: report
                    .sweep
                    .iter()
                    .filter(|p| p.series == series)
                    .filter_map(|p| point((p.size / MIB) as f64, &p.samples, latency))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        let title = format!("Reclaim latency vs size{}", runs(report.runs));
        plot::line_chart(
            &path,
            &Axes {
                title: &title,
                x_desc: "unplugged (MiB, log)",
                y_desc: "reclaim latency (ms, log)",
                x: Scale::Log,
                y: Scale::Log,
            },
            &series,
        )
        .map_err(perr)?;
        files.push(path);
    }
    Ok(files)
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}x"))
}

/// `median [min–max]` of `f` over `samples`.
fn cell(samples: &[Reclaim], f: impl Fn(&Reclaim) -> Option<f64>) -> String {
    Summary::of(samples.iter().filter_map(f)).map_or_else(|| "-".to_owned(), |s| s.render(1))
}

/// `median [min–max]` of guest CPU times, `<10` below one tick.
fn cpu_cell(samples: &[Reclaim]) -> String {
    let Some(s) = Summary::of(samples.iter().filter_map(|r| r.guest_cpu_ms)) else {
        return "-".to_owned();
    };
    let c = |v: f64| stats::render_cpu_ms(Some(v));
    if s.n == 1 || c(s.min) == c(s.max) {
        c(s.median)
    } else {
        format!("{} [{}–{}]", c(s.median), c(s.min), c(s.max))
    }
}

/// The median of `f` over `samples`.
fn median(samples: &[Reclaim], f: impl Fn(&Reclaim) -> Option<f64>) -> Option<f64> {
    Summary::of(samples.iter().filter_map(f)).map(|s| s.median)
}

/// A paired table: `key` column, HotMem and vanilla `median [min–max]` of
/// `f`, the geometric mean of the per-run ratios.
fn paired_rows<'a>(
    out: &mut String,
    head: &str,
    rows: impl Iterator<Item = (String, &'a Paired)> + Clone,
    f: &dyn Fn(&Reclaim) -> Option<f64>,
) {
    out.push_str(&format!(
        "{:>9} {:>26} {:>26} {:>10}\n",
        head, "HotMem ms", "vanilla ms", "ratio"
    ));
    for (key, p) in rows.clone() {
        out.push_str(&format!(
            "{:>9} {:>26} {:>26} {:>10}\n",
            key,
            cell(&p.hotmem, f),
            cell(&p.vanilla, f),
            x(p.geomean_ratio(f))
        ));
    }
    let all: Option<Vec<f64>> = rows.map(|(_, p)| p.geomean_ratio(f)).collect();
    out.push_str(&format!(
        "geometric mean of the vanilla/HotMem ratios: {}\n",
        x(all.and_then(stats::geomean))
    ));
}

/// The summary table with ratios.
pub fn render_summary(r: &BenchReport) -> String {
    let mut out = String::new();
    if r.runs > 1 {
        out.push_str(&format!(
            "{} runs per point, HotMem and vanilla alternating; cells are median [min–max], \
             ratios the geometric mean over runs of vanilla/HotMem\n\n",
            r.runs
        ));
    }
    if !r.by_size.is_empty() {
        let rows = r
            .by_size
            .iter()
            .map(|p| (format!("{} MiB", p.size / MIB), &p.runs));
        out.push_str(
            "== Fig. 5: reclaim of one instance's memory (other instance fills the rest) ==\n",
        );
        paired_rows(&mut out, "size", rows.clone(), &latency);
        out.push_str("\n== Fig. 5, end to end: stop the instance + reclaim its memory ==\n");
        paired_rows(&mut out, "size", rows, &end_to_end);
        out.push_str("\n== Fig. 7: guest CPU time during the reclaim (10 ms ticks) ==\n");
        out.push_str(&format!(
            "{:>9} {:>22} {:>22} {:>10} {:>12}\n",
            "size", "HotMem CPU ms", "vanilla CPU ms", "CPU ratio", "migrated"
        ));
        for p in &r.by_size {
            out.push_str(&format!(
                "{:>5} MiB {:>22} {:>22} {:>10} {:>12.0}\n",
                p.size / MIB,
                cpu_cell(&p.runs.hotmem),
                cpu_cell(&p.runs.vanilla),
                // Both sides at least one tick: below that is no measurement.
                x(p.runs.cpu_ratio()),
                median(&p.runs.vanilla, |r| Some(r.pages_migrated as f64)).unwrap_or(0.0)
            ));
        }
        out.push('\n');
    }
    if !r.by_use.is_empty() {
        out.push_str("== Fig. 6: reclaim of 256 MiB vs guest memory use ==\n");
        out.push_str(&format!(
            "{:>7} {:>9} {:>26} {:>9} {:>26} {:>9}\n",
            "target", "HotMem %", "HotMem ms", "vanilla %", "vanilla ms", "ratio"
        ));
        for p in &r.by_use {
            out.push_str(&format!(
                "{:>6}% {:>8.0}% {:>26} {:>8.0}% {:>26} {:>9}\n",
                p.target_pct,
                median(&p.runs.hotmem, |r| Some(r.guest_use_pct)).unwrap_or(0.0),
                cell(&p.runs.hotmem, latency),
                median(&p.runs.vanilla, |r| Some(r.guest_use_pct)).unwrap_or(0.0),
                cell(&p.runs.vanilla, latency),
                x(p.runs.geomean_ratio(latency))
            ));
        }
        out.push('\n');
    }
    if !r.colocated.is_empty() {
        out.push_str("== Fig. 9: co-located instance's requests (256 KiB each, every 4 ms) while another is scaled down ==\n");
        out.push_str(&format!(
            "{:<20} {:>24} {:>13} {:>13} {:>13} {:>9}\n",
            "guest", "reclaim ms", "p50 before", "p50 during", "p99 during", "slowdown"
        ));
        let of =
            |m: Mode| -> Vec<&Colocated> { r.colocated.iter().filter(|c| c.mode == m).collect() };
        let med = |cs: &[&Colocated], f: fn(&Colocated) -> f64| {
            Summary::of(cs.iter().map(|c| f(c))).map(|s| s.median)
        };
        for m in [Mode::Hotmem, Mode::Vanilla] {
            let cs = of(m);
            if cs.is_empty() {
                continue;
            }
            let reclaims: Vec<Reclaim> = cs.iter().map(|c| c.reclaim.clone()).collect();
            let slowdown: Option<Vec<f64>> = cs
                .iter()
                .map(|c| ratio(Some(c.during.p50_us), Some(c.before.p50_us)))
                .collect();
            out.push_str(&format!(
                "{:<20} {:>24} {:>10.0} us {:>10.0} us {:>10.0} us {:>9}\n",
                m.label(),
                cell(&reclaims, latency),
                med(&cs, |c| c.before.p50_us).unwrap_or(0.0),
                med(&cs, |c| c.during.p50_us).unwrap_or(0.0),
                med(&cs, |c| c.during.p99_us).unwrap_or(0.0),
                x(slowdown.and_then(stats::geomean))
            ));
        }
        let pair = |f: fn(&Colocated) -> f64| {
            let h: Vec<f64> = of(Mode::Hotmem).iter().map(|c| f(c)).collect();
            let v: Vec<f64> = of(Mode::Vanilla).iter().map(|c| f(c)).collect();
            stats::geomean_ratio(&v, &h)
        };
        out.push_str(&format!(
            "co-located latency during the scale-down, vanilla/HotMem (geometric mean): p50 {}, p99 {}\n\n",
            x(pair(|c| c.during.p50_us)),
            x(pair(|c| c.during.p99_us))
        ));
    }
    if let Some(c) = &r.compare {
        out.push_str("== Removing 1 GiB (4 x 384 MiB memhogs running) ==\n");
        let row = |name: &str, rc: &[Reclaim]| {
            format!(
                "{:<38} {:>26} ms  CPU {:>16} ms  migrated {:>7.0} pages\n",
                name,
                cell(rc, latency),
                cpu_cell(rc),
                median(rc, |r| Some(r.pages_migrated as f64)).unwrap_or(0.0)
            )
        };
        out.push_str(&row(
            "HotMem, one free 1 GiB partition",
            &c.hotmem_free_partitions,
        ));
        out.push_str(&row("vanilla, memhogs spread over it", &c.vanilla_loaded));
        out.push_str(&row(
            "vanilla floor, already-empty blocks",
            &c.vanilla_empty,
        ));
        let lat = |v: &[Reclaim]| v.iter().map(|r| r.latency_ms).collect::<Vec<_>>();
        let h = lat(&c.hotmem_free_partitions);
        out.push_str(&format!(
            "vanilla/HotMem latency (geometric mean over runs): {} under load, {} for the floor (empty blocks)\n\n",
            x(stats::geomean_ratio(&lat(&c.vanilla_loaded), &h)),
            x(stats::geomean_ratio(&lat(&c.vanilla_empty), &h))
        ));
    }
    if !r.sweep.is_empty() {
        out.push_str(
            "== Reclaim-size sweep: unplug SIZE of 2 x SIZE plugged (load: 3/4 SIZE in memhogs, interleaved with 3/4 SIZE freed) ==\n",
        );
        let sizes: Vec<u64> = {
            let mut v: Vec<u64> = r.sweep.iter().map(|p| p.size).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let get = |series: SweepSeries, size: u64| -> &[Reclaim] {
            r.sweep
                .iter()
                .find(|p| p.series == series && p.size == size)
                .map_or(&[], |p| p.samples.as_slice())
        };
        out.push_str(&format!("{:>9}", "size"));
        for series in SweepSeries::ALL {
            out.push_str(&format!(" {:>26}", series.short()));
        }
        out.push_str(&format!(" {:>10} {:>10}\n", "load/fast", "floor/fast"));
        let lat = |v: &[Reclaim]| v.iter().map(|r| r.latency_ms).collect::<Vec<_>>();
        for &size in &sizes {
            out.push_str(&format!("{:>5} MiB", size / MIB));
            for series in SweepSeries::ALL {
                out.push_str(&format!(" {:>26}", cell(get(series, size), latency)));
            }
            let fast = lat(get(SweepSeries::HotmemFast, size));
            out.push_str(&format!(
                " {:>10} {:>10}\n",
                x(stats::geomean_ratio(
                    &lat(get(SweepSeries::VanillaLoaded, size)),
                    &fast
                )),
                x(stats::geomean_ratio(
                    &lat(get(SweepSeries::VanillaEmpty, size)),
                    &fast
                ))
            ));
        }
        // Cost per GiB of the largest size, from the medians.
        if let Some(&top) = sizes.last() {
            let gib = top as f64 / (1u64 << 30) as f64;
            let per = SweepSeries::ALL
                .iter()
                .filter_map(|&s| {
                    median(get(s, top), latency).map(|m| {
                        format!(
                            "{} {:.0} ms/GiB",
                            s.short().trim_end_matches(" ms"),
                            m / gib
                        )
                    })
                })
                .collect::<Vec<_>>()
                .join(", ");
            out.push_str(&format!("at {} MiB: {per}\n", top / MIB));
        }
        out.push('\n');
    }
    if let Some(h) = &r.hotpath {
        out.push_str(&crate::hotpath::render(h));
        out.push('\n');
    }
    out.push_str(&r.timer.render());
    out.push('\n');
    out.push_str(&format!(
        "bench wall time {:.0} s; HotMem guests with {}, vanilla guests with virtio_mem\n",
        r.wall_s,
        if r.hotmem_driver.is_empty() {
            "virtio_mem"
        } else {
            &r.hotmem_driver
        }
    ));
    if r.accel == Some(Accel::Tcg) {
        out.push_str(
            "note: the guests run under TCG (software emulation): absolute times are not \
             representative of KVM; compare HotMem and vanilla through the ratios.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(mode: Mode, ms: f64) -> Reclaim {
        Reclaim {
            mode,
            bytes: BLOCK,
            latency_ms: ms,
            stop_ms: Some(5.0),
            end_to_end_ms: Some(ms + 5.0),
            clock: ResizeClock::DeviceEvent,
            resolution_ms: 0.001,
            polled_ms: Some(ms + 4.0),
            guest_cpu_ms: Some(ms / 2.0),
            pages_migrated: 10,
            guest_use_pct: 42.0,
        }
    }

    fn paired(h: &[f64], v: &[f64]) -> Paired {
        Paired {
            hotmem: h.iter().map(|&ms| rc(Mode::Hotmem, ms)).collect(),
            vanilla: v.iter().map(|&ms| rc(Mode::Vanilla, ms)).collect(),
        }
    }

    #[test]
    fn request_lines_are_parsed() {
        let text = "memhog: touched size=1\nreq uptime_ms=100 latency_us=250\nreq uptime_ms=105 latency_us=300\nreq bogus\n";
        assert_eq!(parse_requests(text), vec![(100, 250.0), (105, 300.0)]);
    }

    #[test]
    fn latency_stats() {
        let s = LatencyStats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.count, s.p50_us, s.max_us, s.mean_us), (5, 3.0, 5.0, 3.0));
        assert_eq!(LatencyStats::of(&[]).count, 0);
    }

    #[test]
    fn runs_alternate_and_default_by_mode() {
        assert_eq!(run_order(0), [Mode::Hotmem, Mode::Vanilla]);
        assert_eq!(run_order(1), [Mode::Vanilla, Mode::Hotmem]);
        assert_eq!((default_runs(false), default_runs(true)), (5, 3));
        assert_eq!(
            *sweep_sizes(false).last().unwrap(),
            8192,
            "the sweep reaches 8 GiB"
        );
        assert_eq!(sweep_partition(8 << 30), 1 << 30);
        assert_eq!(sweep_partition(512 * MIB), 256 * MIB);
    }

    #[test]
    fn paired_ratios_are_geometric_means_over_runs() {
        // Run ratios 10x and 40x: geometric mean 20x (arithmetic: 25x).
        let p = paired(&[10.0, 5.0], &[100.0, 200.0]);
        let g = p.geomean_ratio(latency).unwrap();
        assert!((g - 20.0).abs() < 1e-9, "{g}");
        assert_eq!(p.hotmem_summary(latency).unwrap().median, 7.5);
        // CPU: HotMem's 5 and 2.5 ms count as one 10 ms tick.
        let c = p.cpu_ratio().unwrap();
        assert!((c - (5.0f64 * 10.0).sqrt()).abs() < 1e-9, "{c}");
        // A missing run on one side: no paired ratio.
        assert_eq!(
            paired(&[10.0], &[100.0, 200.0]).geomean_ratio(latency),
            None
        );
    }

    fn report() -> BenchReport {
        let mut report = BenchReport {
            accel: Some(Accel::Tcg),
            quick: true,
            runs: 3,
            kernel_release: "6.12".into(),
            hotmem_driver: "virtio_mem".into(),
            by_size: vec![SizePoint {
                size: BLOCK,
                runs: paired(&[10.0, 12.0, 8.0], &[120.0, 100.0, 200.0]),
            }],
            by_use: vec![UsePoint {
                target_pct: 40,
                runs: paired(&[10.0, 10.0, 10.0], &[50.0, 50.0, 50.0]),
            }],
            colocated: vec![Colocated {
                mode: Mode::Vanilla,
                run: 0,
                reclaim: rc(Mode::Vanilla, 300.0),
                before: LatencyStats::of(&[100.0]),
                during: LatencyStats::of(&[200.0]),
                after: LatencyStats::of(&[100.0]),
                timeline: vec![(-5.0, 100.0), (3.0, 200.0)],
                window_ms: 300.0,
            }],
            compare: Some(Compare {
                hotmem_free_partitions: vec![rc(Mode::Hotmem, 20.0)],
                vanilla_loaded: vec![rc(Mode::Vanilla, 400.0)],
                vanilla_empty: vec![rc(Mode::Vanilla, 100.0)],
            }),
            sweep: SweepSeries::ALL
                .iter()
                .enumerate()
                .flat_map(|(i, &series)| {
                    [512, 1024].map(|mib| SweepPoint {
                        series,
                        size: mib * MIB,
                        samples: vec![rc(series.mode(), (i as f64 + 1.0) * mib as f64)],
                    })
                })
                .collect(),
            hotpath: None,
            timer: TimerInfo::default(),
            wall_s: 60.0,
        };
        report.count_timers();
        report
    }

    #[test]
    fn summary_has_every_experiment_with_statistics() {
        let report = report();
        assert_eq!(report.timer.device_event, 3 + 3 + 3 + 3 + 1 + 3 + 6);
        let text = render_summary(&report);
        for needle in [
            "Fig. 5",
            "10.0 [8.0–12.0]", // median [min–max]
            "120.0 [100.0–200.0]",
            "13.6x", // (12 * 8.33 * 25)^(1/3)
            "end to end",
            "15.0 [13.0–17.0]", // stop + reclaim
            "Fig. 7",
            "Fig. 6",
            "5.0x",
            "Fig. 9",
            "20.0x",
            "Reclaim-size sweep",
            "2.0x", // vanilla loaded / HotMem fast
            "resolution 1 us",
            "polling saw the size 4.0 [4.0–4.0] ms later",
            "3 runs per point",
            "TCG",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = write_outputs(&report, dir.path()).unwrap();
        assert_eq!(files.len(), 8, "{files:?}");
        let back = read_report(&files[0]).unwrap();
        assert_eq!(render_summary(&back), text);
        for f in files {
            assert!(f.exists());
        }
        // Every sample is in the JSON.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
                .unwrap();
        assert_eq!(json["by_size"][0]["vanilla"].as_array().unwrap().len(), 3);
        assert_eq!(json["by_size"][0]["hotmem"][2]["latency_ms"], 8.0);
        assert_eq!(json["sweep"][0]["series"], "hotmem_fast");
        assert_eq!(json["timer"]["worst_resolution_ms"], 0.001);
    }
}
