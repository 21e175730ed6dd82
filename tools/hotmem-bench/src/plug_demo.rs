//! `hotmemctl plug-demo`: plug and unplug 1 GiB with the C virtio-mem
//! driver (no HotMem), timing each step. (`hotmemctl demo` is the
//! scale-up/scale-down scenario, [`crate::scenario`].)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use hotmem_host::HumanSize;
use hotmem_host::{Accel, VmConfig};
use hotmem_host::{
    AgentTransport, Guest, MemoryDevice, ShutdownMethod, Vm, VmError, AUTO_ONLINE_BLOCKS,
    AUTO_ONLINE_POLICY,
};

/// How much memory the demo plugs.
pub const DEMO_PLUG_BYTES: u64 = 1 << 30;
/// Limit for the device to reach a requested size.
pub const PLUG_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit for a plug/unplug to show up in the guest's MemTotal.
pub const MEMTOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Tolerance when comparing MemTotal with its expected value, in kB.
pub const MEMTOTAL_SLACK_KIB: u64 = 4 * 1024;

/// One timed step of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct DemoStep {
    /// What was done.
    pub step: String,
    /// Wall-clock time it took, on the host.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// Outcome details.
    pub detail: String,
}

/// Guest `MemTotal` at the interesting points, in kB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemTotals {
    /// After loading the driver, before plugging.
    pub before_kib: u64,
    /// After plugging.
    pub plugged_kib: u64,
    /// After unplugging.
    pub after_kib: u64,
}

/// Everything the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Accelerator used (TCG timings are not representative).
    pub accel: Accel,
    /// Where the logs are.
    pub run_dir: PathBuf,
    /// Guest kernel release.
    pub kernel_release: String,
    /// The steps, in order.
    pub steps: Vec<DemoStep>,
    /// MemTotal along the way.
    pub mem_total: MemTotals,
    /// How QEMU was stopped.
    pub shutdown: ShutdownMethod,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Collects steps and reports progress.
struct Recorder<'a> {
    steps: Vec<DemoStep>,
    progress: &'a mut dyn FnMut(&str),
    started: Instant,
}

impl Recorder<'_> {
    /// Announces a step and starts its clock.
    fn begin(&mut self, message: &str) {
        (self.progress)(message);
        self.started = Instant::now();
    }

    /// Records the step begun last, timed by the host clock.
    fn end(&mut self, step: &str, detail: String) {
        let duration = self.started.elapsed();
        self.record(step, duration, detail);
    }

    fn record(&mut self, step: &str, duration: Duration, detail: String) {
        self.steps.push(DemoStep {
            step: step.to_owned(),
            duration,
            detail,
        });
    }
}

/// Boots a guest, loads `virtio_mem`, plugs and unplugs [`DEMO_PLUG_BYTES`],
/// and shuts down. `progress` receives a line per step as it starts.
pub fn run_plug_demo(
    cfg: &VmConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<DemoReport, VmError> {
    let mut rec = Recorder {
        steps: Vec::new(),
        progress,
        started: Instant::now(),
    };
    rec.begin(&format!("booting guest ({})...", cfg.accel));
    let mut vm = Vm::boot(cfg)?;
    let kernel_release = vm
        .boot_hello()
        .map(|hello| hello.kernel_release.clone())
        .unwrap_or_default();
    rec.end("boot guest", format!("kernel {kernel_release}"));

    rec.begin(&format!(
        "setting memory auto-online policy to {AUTO_ONLINE_POLICY}..."
    ));
    vm.write_file(AUTO_ONLINE_BLOCKS, AUTO_ONLINE_POLICY)?;
    rec.end("auto-online policy", AUTO_ONLINE_POLICY.to_owned());

    rec.begin("loading the C driver (modprobe virtio_mem)...");
    let out = vm.exec_ok(&["modprobe", "virtio_mem"])?;
    let guest_ms = out.duration_us as f64 / 1000.0;
    rec.end(
        "modprobe virtio_mem",
        format!("{guest_ms:.1} ms in the guest"),
    );

    let mem_total = plug_unplug(&mut vm, &mut rec)?;

    rec.begin("shutting down...");
    let shutdown = vm.shutdown()?;
    rec.end("shutdown", format!("{shutdown:?}"));
    Ok(DemoReport {
        accel: cfg.accel,
        run_dir: cfg.run_dir.clone(),
        kernel_release,
        steps: rec.steps,
        mem_total,
        shutdown,
    })
}

/// The plug/unplug cycle, with MemTotal checks.
fn plug_unplug<G: MemoryDevice + AgentTransport + ?Sized>(
    vm: &mut G,
    rec: &mut Recorder<'_>,
) -> Result<MemTotals, VmError> {
    let plug_kib = DEMO_PLUG_BYTES / 1024;
    let before_kib = mem_total(vm)?;

    rec.begin(&format!(
        "plugging {} (requested-size)...",
        HumanSize(DEMO_PLUG_BYTES)
    ));
    vm.set_requested_size(DEMO_PLUG_BYTES)?;
    vm.wait_plugged(DEMO_PLUG_BYTES, PLUG_TIMEOUT)?;
    rec.end("plug 1 GiB", "QMP size == requested-size".into());

    rec.begin("waiting for MemTotal to grow...");
    let target = before_kib + plug_kib - MEMTOTAL_SLACK_KIB;
    let (plugged_kib, _) = vm.wait_meminfo("MemTotal", MEMTOTAL_TIMEOUT, |v| v >= target)?;
    rec.end("MemTotal grows", kib_change(before_kib, plugged_kib));

    rec.begin("unplugging (requested-size 0)...");
    vm.set_requested_size(0)?;
    vm.wait_plugged(0, PLUG_TIMEOUT)?;
    rec.end("unplug 1 GiB", "QMP size == 0".into());

    rec.begin("waiting for MemTotal to shrink back...");
    let limit = before_kib + MEMTOTAL_SLACK_KIB;
    let (after_kib, _) = vm.wait_meminfo("MemTotal", MEMTOTAL_TIMEOUT, |v| v <= limit)?;
    rec.end("MemTotal back", kib_change(before_kib, after_kib));

    Ok(MemTotals {
        before_kib,
        plugged_kib,
        after_kib,
    })
}

fn mem_total<G: AgentTransport + ?Sized>(vm: &mut G) -> Result<u64, VmError> {
    let info = vm.meminfo()?;
    // Every Linux /proc/meminfo has MemTotal; 0 makes the later waits fail
    // with a clear timeout rather than inventing a new error path.
    Ok(info.get("MemTotal").copied().unwrap_or(0))
}

/// `"1004096 kB -> 2052672 kB (+1 GiB)"`.
fn kib_change(from: u64, to: u64) -> String {
    let delta = if to >= from {
        format!("+{}", HumanSize((to - from) * 1024))
    } else {
        format!("-{}", HumanSize((from - to) * 1024))
    };
    format!("{from} kB -> {to} kB ({delta})")
}

/// Renders the report as a table, with a note on TCG timings.
pub fn render_table(report: &DemoReport) -> String {
    let mut out = format!("{:<22} {:>12}  {}\n", "step", "wall time", "detail");
    for step in &report.steps {
        let ms = step.duration.as_secs_f64() * 1000.0;
        out.push_str(&format!(
            "{:<22} {:>9.1} ms  {}\n",
            step.step, ms, step.detail
        ));
    }
    if report.accel == Accel::Tcg {
        out.push_str(
            "note: timings are under TCG (software emulation); they are not representative of KVM.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_change_formats_both_directions() {
        assert_eq!(
            kib_change(1000, 1000 + 1024 * 1024),
            "1000 kB -> 1049576 kB (+1 GiB)"
        );
        assert_eq!(kib_change(3048, 1000), "3048 kB -> 1000 kB (-2 MiB)");
    }

    #[test]
    fn table_mentions_tcg() {
        let report = DemoReport {
            accel: Accel::Tcg,
            run_dir: PathBuf::from("/tmp/x"),
            kernel_release: "6.12".into(),
            steps: vec![DemoStep {
                step: "boot guest".into(),
                duration: Duration::from_millis(1500),
                detail: "kernel 6.12".into(),
            }],
            mem_total: MemTotals::default(),
            shutdown: ShutdownMethod::Poweroff,
        };
        let table = render_table(&report);
        assert!(
            table.contains("boot guest") && table.contains("1500.0 ms"),
            "{table}"
        );
        assert!(table.contains("TCG"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["steps"][0]["duration_ms"], 1500.0);
        assert_eq!(json["accel"], "tcg");
    }
}
