//! `hotmemctl bench`: the paper's experiments, HotMem side by side with
//! vanilla virtio-mem, one run each.
//!
//! | experiment | what is measured |
//! | --- | --- |
//! | `fig5` | reclaim latency of one instance's memory (128 MiB … 1–2 GiB) while another instance fills the rest of the hotplugged memory |
//! | `fig6` | reclaim latency of a fixed size as guest memory use rises |
//! | `fig7` | guest CPU time spent during the reclaims of `fig5` (`/proc/stat`) |
//! | `fig9` | request latency of a co-located instance while another one is scaled down |
//! | `compare` | 1 GiB: one free 1 GiB HotMem partition vs vanilla with memhogs holding most memory, and vanilla's floor (already-empty blocks) |
//!
//! Reclaim latency is the host-side time from QMP `qom-set requested-size`
//! until the device's `size` reaches the target (polled every ~10 ms).
//! Devices have 128 MiB blocks. HotMem guests (`hotmem=on`) use the Rust
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

use crate::plot::{self, Series};
use crate::scenario::{memhog_argv, ratio, wait_touched, write_json, Mode};
use hotmem_host::scale::{self, Trigger};
use hotmem_host::{Accel, VmConfig};
use hotmem_host::{AgentTransport, Guest as _, MemoryDevice, Vm, VmError, VmErrorKind};
use hotmem_host::{AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 128 * MIB;
const RESIZE_TIMEOUT: Duration = Duration::from_secs(600);

/// The experiments, by name.
pub const EXPERIMENTS: &[&str] = &["fig5", "fig6", "fig7", "fig9", "compare"];

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
}

impl BenchOptions {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// One reclaim measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reclaim {
    /// Guest kind.
    pub mode: Mode,
    /// Bytes unplugged.
    pub bytes: u64,
    /// Trigger → QMP size reached, ms.
    pub latency_ms: f64,
    /// Guest CPU time (non-idle, all vCPUs) during the reclaim, ms.
    pub guest_cpu_ms: Option<f64>,
    /// Pages migrated during the reclaim (`pgmigrate_success` delta).
    pub pages_migrated: u64,
    /// Guest memory use when the reclaim started, percent of MemTotal.
    pub guest_use_pct: f64,
}

/// A point of Fig. 5/7: one instance size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizePoint {
    /// Instance (= partition, = unplugged) size, bytes.
    pub size: u64,
    /// HotMem.
    pub hotmem: Reclaim,
    /// Vanilla.
    pub vanilla: Reclaim,
}

/// A point of Fig. 6: one memory-use level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsePoint {
    /// Target use level, percent.
    pub target_pct: u32,
    /// HotMem.
    pub hotmem: Reclaim,
    /// Vanilla.
    pub vanilla: Reclaim,
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

/// Fig. 9 for one guest kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Colocated {
    /// Guest kind.
    pub mode: Mode,
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

/// The `compare` experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compare {
    /// HotMem: one free 1 GiB partition.
    pub hotmem_free_partitions: Reclaim,
    /// Vanilla: 1 GiB while memhogs hold most of the guest's memory.
    pub vanilla_loaded: Reclaim,
    /// Vanilla floor: 1 GiB of already-empty blocks.
    pub vanilla_empty: Reclaim,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// Accelerator.
    pub accel: Option<Accel>,
    /// Quick mode.
    pub quick: bool,
    /// Guest kernel.
    pub kernel_release: String,
    /// virtio-mem driver of the HotMem guests.
    #[serde(default)]
    pub hotmem_driver: String,
    /// Fig. 5 and 7.
    pub by_size: Vec<SizePoint>,
    /// Fig. 6.
    pub by_use: Vec<UsePoint>,
    /// Fig. 9.
    pub colocated: Vec<Colocated>,
    /// Comparison and floor.
    pub compare: Option<Compare>,
    /// Wall time of the whole run, s.
    pub wall_s: f64,
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
        let guest_use_pct = self.use_pct()?;
        let migrated = self.vmstat("pgmigrate_success")?;
        let r = scale::reclaim(&mut self.vm, bytes, &Trigger::Qmp, None, RESIZE_TIMEOUT)?;
        Ok(Reclaim {
            mode: self.mode,
            bytes,
            latency_ms: r.ms(),
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
fn size_point(opts: &BenchOptions, mode: Mode, size: u64) -> Result<(Reclaim, String), VmError> {
    let name = format!("fig5-{}-{}M", mode_name(mode), size / MIB);
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
    g.stop(target.instance)?;
    let r = g.reclaim(size)?;
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
    unit: u64,
    levels: &[u32],
) -> Result<Vec<(u32, Reclaim)>, VmError> {
    let hotplug = 2u64 << 30;
    let name = format!("fig6-{}", mode_name(mode));
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
        g.stop(target.instance)?;
        let r = g.reclaim(unit)?;
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
fn colocated(opts: &BenchOptions, mode: Mode, part: u64) -> Result<Colocated, VmError> {
    let name = format!("fig9-{}", mode_name(mode));
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
    g.stop(victim.instance)?;
    let reclaim = g.reclaim(part)?;
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

/// The 1 GiB comparison and the vanilla floor.
fn compare(opts: &BenchOptions) -> Result<Compare, VmError> {
    let gib = 1u64 << 30;
    let hogs = 4;
    let hog = 384 * MIB;
    // HotMem: memhogs (unbound, ordinary memory) hold most of the guest;
    // 1 GiB, one free partition, is unplugged.
    let mut g = Guest::boot(opts, Mode::Hotmem, "compare-hotmem", 2 * gib, gib, gib)?;
    g.plug(gib, 1)?;
    for _ in 0..hogs {
        g.memhog(hog, false, &[])?;
    }
    wait_all_touched(&mut g.vm)?;
    let hotmem_free_partitions = g.reclaim(gib)?;
    g.done()?;
    // Vanilla, loaded: the same memhogs spread over ordinary and movable memory.
    let mut g = Guest::boot(opts, Mode::Vanilla, "compare-vanilla", 2 * gib, gib, BLOCK)?;
    g.plug(gib, 0)?;
    for _ in 0..hogs {
        g.memhog(hog, false, &[])?;
    }
    wait_all_touched(&mut g.vm)?;
    let vanilla_loaded = g.reclaim(gib)?;
    g.done()?;
    // Vanilla floor: nothing uses the plugged memory.
    let mut g = Guest::boot(opts, Mode::Vanilla, "compare-floor", 2 * gib, gib, BLOCK)?;
    g.plug(gib, 0)?;
    let vanilla_empty = g.reclaim(gib)?;
    g.done()?;
    Ok(Compare {
        hotmem_free_partitions,
        vanilla_loaded,
        vanilla_empty,
    })
}

/// Runs the selected experiments; `progress` gets a line per step.
pub fn run_bench(
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, VmError> {
    let started = Instant::now();
    let mut report = BenchReport {
        accel: Some(opts.base.accel),
        quick: opts.quick,
        hotmem_driver: opts.hotmem_driver.clone(),
        ..BenchReport::default()
    };
    if opts.wants("fig5") || opts.wants("fig7") {
        let sizes: &[u64] = if opts.quick {
            &[128, 256, 512]
        } else {
            &[128, 256, 512, 1024, 2048]
        };
        for &mib in sizes {
            let size = mib * MIB;
            progress(&format!("fig5/7: {mib} MiB instance, HotMem..."));
            let (hotmem, kernel) = size_point(opts, Mode::Hotmem, size)?;
            report.kernel_release = kernel;
            progress(&format!("fig5/7: {mib} MiB instance, vanilla..."));
            let (vanilla, _) = size_point(opts, Mode::Vanilla, size)?;
            progress(&format!(
                "fig5/7: {mib} MiB: HotMem {:.1} ms, vanilla {:.1} ms",
                hotmem.latency_ms, vanilla.latency_ms
            ));
            report.by_size.push(SizePoint {
                size,
                hotmem,
                vanilla,
            });
        }
    }
    if opts.wants("fig6") {
        let levels: &[u32] = if opts.quick {
            &[0, 40, 80]
        } else {
            &[0, 20, 40, 60, 80, 90]
        };
        let unit = 256 * MIB;
        progress("fig6: memory-use levels, HotMem...");
        let h = use_points(opts, Mode::Hotmem, unit, levels)?;
        progress("fig6: memory-use levels, vanilla...");
        let v = use_points(opts, Mode::Vanilla, unit, levels)?;
        for ((level, hotmem), (_, vanilla)) in h.into_iter().zip(v) {
            report.by_use.push(UsePoint {
                target_pct: level,
                hotmem,
                vanilla,
            });
        }
    }
    if opts.wants("fig9") {
        for mode in [Mode::Hotmem, Mode::Vanilla] {
            progress(&format!("fig9: co-located requests, {}...", mode.label()));
            report.colocated.push(colocated(opts, mode, 512 * MIB)?);
        }
    }
    if opts.wants("compare") {
        progress("compare: 1 GiB HotMem vs vanilla (loaded and empty)...");
        report.compare = Some(compare(opts)?);
    }
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
    let two = |f: &dyn Fn(&SizePoint) -> (f64, f64, f64)| -> Vec<Series> {
        let (mut h, mut v) = (Vec::new(), Vec::new());
        for p in &report.by_size {
            let (x, a, b) = f(p);
            h.push((x, a));
            v.push((x, b));
        }
        vec![
            Series {
                name: "HotMem".into(),
                points: h,
            },
            Series {
                name: "vanilla virtio-mem".into(),
                points: v,
            },
        ]
    };
    if !report.by_size.is_empty() {
        let path = dir.join("fig5_reclaim_vs_size.svg");
        plot::line_chart(
            &path,
            "Reclaim latency of one instance's memory (Fig. 5)",
            "instance size (MiB)",
            "reclaim latency (ms)",
            &two(&|p| {
                (
                    (p.size / MIB) as f64,
                    p.hotmem.latency_ms,
                    p.vanilla.latency_ms,
                )
            }),
        )
        .map_err(perr)?;
        files.push(path);
        let path = dir.join("fig7_guest_cpu_vs_size.svg");
        plot::line_chart(
            &path,
            "Guest CPU time during reclaim (Fig. 7)",
            "instance size (MiB)",
            "guest CPU time (ms)",
            &two(&|p| {
                (
                    (p.size / MIB) as f64,
                    p.hotmem.guest_cpu_ms.unwrap_or(0.0),
                    p.vanilla.guest_cpu_ms.unwrap_or(0.0),
                )
            }),
        )
        .map_err(perr)?;
        files.push(path);
    }
    if !report.by_use.is_empty() {
        let path = dir.join("fig6_reclaim_vs_use.svg");
        let series = vec![
            Series {
                name: "HotMem".into(),
                points: report
                    .by_use
                    .iter()
                    .map(|p| (p.hotmem.guest_use_pct, p.hotmem.latency_ms))
                    .collect(),
            },
            Series {
                name: "vanilla virtio-mem".into(),
                points: report
                    .by_use
                    .iter()
                    .map(|p| (p.vanilla.guest_use_pct, p.vanilla.latency_ms))
                    .collect(),
            },
        ];
        plot::line_chart(
            &path,
            "Reclaim latency of 256 MiB vs guest memory use (Fig. 6)",
            "guest memory use (%)",
            "reclaim latency (ms)",
            &series,
        )
        .map_err(perr)?;
        files.push(path);
    }
    if !report.colocated.is_empty() {
        let path = dir.join("fig9_colocated_latency.svg");
        let series: Vec<Series> = report
            .colocated
            .iter()
            .map(|c| Series {
                name: format!("{} (scale-down 0..{:.0} ms)", c.mode.label(), c.window_ms),
                points: c.timeline.iter().map(|&(t, l)| (t, l / 1000.0)).collect(),
            })
            .collect();
        plot::line_chart(
            &path,
            "Co-located instance's request latency during a scale-down (Fig. 9)",
            "time since scale-down start (ms)",
            "request latency (ms)",
            &series,
        )
        .map_err(perr)?;
        files.push(path);
    }
    if let Some(c) = &report.compare {
        let path = dir.join("compare_1gib.svg");
        plot::bar_chart(
            &path,
            "Removing 1 GiB",
            "reclaim latency (ms)",
            &[
                (
                    "HotMem (one free partition)".into(),
                    c.hotmem_free_partitions.latency_ms,
                ),
                ("vanilla (memhogs)".into(), c.vanilla_loaded.latency_ms),
                ("vanilla floor (empty)".into(), c.vanilla_empty.latency_ms),
            ],
        )
        .map_err(perr)?;
        files.push(path);
    }
    Ok(files)
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}x"))
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

/// The summary table with ratios.
pub fn render_summary(r: &BenchReport) -> String {
    let mut out = String::new();
    if !r.by_size.is_empty() {
        out.push_str(
            "== Fig. 5/7: reclaim of one instance's memory (other instance fills the rest) ==\n",
        );
        out.push_str(&format!(
            "{:>9} {:>12} {:>12} {:>9} {:>12} {:>12} {:>9} {:>10}\n",
            "size",
            "HotMem ms",
            "vanilla ms",
            "ratio",
            "HotMem CPU",
            "vanilla CPU",
            "CPU ratio",
            "migrated"
        ));
        for p in &r.by_size {
            out.push_str(&format!(
                "{:>5} MiB {:>12.1} {:>12.1} {:>9} {:>9} ms {:>9} ms {:>9} {:>10}\n",
                p.size / MIB,
                p.hotmem.latency_ms,
                p.vanilla.latency_ms,
                x(ratio(Some(p.vanilla.latency_ms), Some(p.hotmem.latency_ms))),
                cpu(p.hotmem.guest_cpu_ms),
                cpu(p.vanilla.guest_cpu_ms),
                // CPU time has a 10 ms resolution: compare with at least one tick.
                x(ratio(
                    p.vanilla.guest_cpu_ms,
                    p.hotmem.guest_cpu_ms.map(|c| c.max(10.0))
                )),
                p.vanilla.pages_migrated
            ));
        }
        let mean = |f: &dyn Fn(&SizePoint) -> f64| {
            r.by_size.iter().map(f).sum::<f64>() / r.by_size.len() as f64
        };
        out.push_str(&format!(
            "mean ratio {}\n\n",
            x(Some(mean(
                &|p| p.vanilla.latency_ms / p.hotmem.latency_ms.max(1e-3)
            )))
        ));
    }
    if !r.by_use.is_empty() {
        out.push_str("== Fig. 6: reclaim of 256 MiB vs guest memory use ==\n");
        out.push_str(&format!(
            "{:>7} {:>9} {:>11} {:>9} {:>11} {:>9}\n",
            "target", "HotMem %", "HotMem ms", "vanilla %", "vanilla ms", "ratio"
        ));
        for p in &r.by_use {
            out.push_str(&format!(
                "{:>6}% {:>8.0}% {:>11.1} {:>8.0}% {:>11.1} {:>9}\n",
                p.target_pct,
                p.hotmem.guest_use_pct,
                p.hotmem.latency_ms,
                p.vanilla.guest_use_pct,
                p.vanilla.latency_ms,
                x(ratio(Some(p.vanilla.latency_ms), Some(p.hotmem.latency_ms)))
            ));
        }
        out.push('\n');
    }
    if !r.colocated.is_empty() {
        out.push_str("== Fig. 9: co-located instance's requests (256 KiB each, every 4 ms) while another is scaled down ==\n");
        out.push_str(&format!(
            "{:<20} {:>10} {:>13} {:>13} {:>13} {:>9}\n",
            "guest", "reclaim ms", "p50 before", "p50 during", "p99 during", "slowdown"
        ));
        for c in &r.colocated {
            out.push_str(&format!(
                "{:<20} {:>10.1} {:>10.0} us {:>10.0} us {:>10.0} us {:>9}\n",
                c.mode.label(),
                c.reclaim.latency_ms,
                c.before.p50_us,
                c.during.p50_us,
                c.during.p99_us,
                x(ratio(Some(c.during.p50_us), Some(c.before.p50_us)))
            ));
        }
        let during = |m: Mode, f: fn(&LatencyStats) -> f64| {
            r.colocated
                .iter()
                .find(|c| c.mode == m)
                .map(|c| f(&c.during))
        };
        out.push_str(&format!(
            "co-located latency during the scale-down, vanilla/HotMem: p50 {}, p99 {}\n\n",
            x(ratio(
                during(Mode::Vanilla, |s| s.p50_us),
                during(Mode::Hotmem, |s| s.p50_us)
            )),
            x(ratio(
                during(Mode::Vanilla, |s| s.p99_us),
                during(Mode::Hotmem, |s| s.p99_us)
            ))
        ));
    }
    if let Some(c) = &r.compare {
        out.push_str("== Removing 1 GiB (4 x 384 MiB memhogs running) ==\n");
        let row = |name: &str, rc: &Reclaim| {
            format!(
                "{:<40} {:>10.1} ms  CPU {:>6} ms  migrated {:>7} pages\n",
                name,
                rc.latency_ms,
                cpu(rc.guest_cpu_ms),
                rc.pages_migrated
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
        out.push_str(&format!(
            "vanilla/HotMem latency: {} under load, {} for the floor (empty blocks)\n\n",
            x(ratio(
                Some(c.vanilla_loaded.latency_ms),
                Some(c.hotmem_free_partitions.latency_ms)
            )),
            x(ratio(
                Some(c.vanilla_empty.latency_ms),
                Some(c.hotmem_free_partitions.latency_ms)
            ))
        ));
    }
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
            guest_cpu_ms: Some(ms / 2.0),
            pages_migrated: 10,
            guest_use_pct: 42.0,
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
    fn summary_has_every_experiment_and_ratios() {
        let report = BenchReport {
            accel: Some(Accel::Tcg),
            quick: true,
            kernel_release: "6.12".into(),
            hotmem_driver: "virtio_mem".into(),
            by_size: vec![SizePoint {
                size: BLOCK,
                hotmem: rc(Mode::Hotmem, 10.0),
                vanilla: rc(Mode::Vanilla, 120.0),
            }],
            by_use: vec![UsePoint {
                target_pct: 40,
                hotmem: rc(Mode::Hotmem, 10.0),
                vanilla: rc(Mode::Vanilla, 50.0),
            }],
            colocated: vec![Colocated {
                mode: Mode::Vanilla,
                reclaim: rc(Mode::Vanilla, 300.0),
                before: LatencyStats::of(&[100.0]),
                during: LatencyStats::of(&[200.0]),
                after: LatencyStats::of(&[100.0]),
                timeline: vec![(-5.0, 100.0), (3.0, 200.0)],
                window_ms: 300.0,
            }],
            compare: Some(Compare {
                hotmem_free_partitions: rc(Mode::Hotmem, 20.0),
                vanilla_loaded: rc(Mode::Vanilla, 400.0),
                vanilla_empty: rc(Mode::Vanilla, 100.0),
            }),
            wall_s: 60.0,
        };
        let text = render_summary(&report);
        for needle in [
            "Fig. 5/7", "12.0x", "Fig. 6", "5.0x", "Fig. 9", "2.0x", "20.0x", "TCG",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = write_outputs(&report, dir.path()).unwrap();
        assert_eq!(files.len(), 6, "{files:?}");
        let back = read_report(&files[0]).unwrap();
        assert_eq!(render_summary(&back), text);
        for f in files {
            assert!(f.exists());
        }
    }
}
