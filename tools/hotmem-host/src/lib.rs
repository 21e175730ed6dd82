//! `hotmem-host`: boot and drive HotMem guests from a host program.
//!
//! A guest is a QEMU q35 machine with a virtio-mem device (`vm0`) and a
//! virtio-serial port on which `hotmem-agent` serves `hotmem-proto`.
//! [`Vm`] owns the QEMU process, a QMP session ([`qmp`]) for the device and
//! an agent connection ([`agent`]) for everything inside the guest.
//!
//! The scenarios ([`scale`], and the demo and benchmarks of `hotmem-bench`)
//! see a guest only through two traits ([`device`]): [`MemoryDevice`]
//! (the virtio-mem device's requested and plugged size: QMP `qom-set` /
//! `qom-get` here) and [`AgentTransport`] (agent calls over the
//! virtio-serial port here, and the helpers built on them: files, exec,
//! events, power-off). Another VMM (Cloud Hypervisor's `vm.resize`,
//! Firecracker's `PATCH /hotplug/memory`) or a vsock transport is a new
//! implementation of these traits, not a change to the scenarios.
//!
//! ```no_run
//! use hotmem_host::{AgentTransport, Guest, MemoryDevice, Vm, VmConfig};
//! use std::time::Duration;
//!
//! let cfg = VmConfig::new("build/guest/bzImage", "build/guest/initramfs.cpio.gz", "/tmp/vm");
//! let mut vm = Vm::boot(&cfg)?;
//! vm.exec_ok(&["modprobe", "virtio_mem"])?;
//! vm.set_requested_size(1 << 30)?;
//! let took = vm.wait_plugged(1 << 30, Duration::from_secs(120))?;
//! println!("plugged 1 GiB in {took:?}");
//! vm.shutdown()?;
//! # Ok::<(), hotmem_host::VmError>(())
//! ```

pub mod agent;
pub mod config;
pub mod console;
pub mod device;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod lock;
pub mod meminfo;
pub mod qmp;
pub mod scale;
pub mod vm;

/// Sizes and durations, as every HotMem program spells them.
pub use hotmem_units as units;

pub use config::{Accel, ConfigError, RunDir, VmConfig};
pub use device::{
    AgentTransport, Diagnose, Guest, MemoryDevice, PolledResize, ResizeClock, ResizeStart,
    ResizeTiming,
};
pub use hotmem_units::{parse_duration, parse_size, HumanSize, SizeError};
pub use vm::{ExecOutput, ShutdownMethod, Vm, VmError, VmErrorKind};

/// Runs `f` with debug tracing captured; returns what was logged.
#[cfg(test)]
pub(crate) fn captured_traces(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || Writer(Arc::clone(&sink)))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    return String::from_utf8_lossy(&bytes).into_owned();

    struct Writer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Writer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(data);
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

/// Sysfs policy for onlining hot-added memory. Without udev nothing onlines
/// it, so the kernel is asked to; `online_movable` keeps it unpluggable.
pub const AUTO_ONLINE_BLOCKS: &str = "/sys/devices/system/memory/auto_online_blocks";
/// The policy the vanilla guests of the demo, the benchmarks and the VM
/// tests use.
pub const AUTO_ONLINE_POLICY: &str = "online_movable";
