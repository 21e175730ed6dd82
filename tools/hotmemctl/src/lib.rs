//! `hotmemctl`: boot and drive HotMem QEMU guests.
//!
//! A guest is a QEMU q35 machine with a virtio-mem device (`vm0`) and a
//! virtio-serial port on which `hotmem-agent` serves `hotmem-proto`.
//! [`Vm`] owns the QEMU process, a QMP session ([`qmp`]) for the device and
//! an agent connection ([`agent`]) for everything inside the guest.
//!
//! ```no_run
//! use hotmemctl::{Vm, VmConfig};
//! use std::time::Duration;
//!
//! let cfg = VmConfig::new("build/guest/bzImage", "build/guest/initramfs.cpio.gz", "/tmp/vm");
//! let mut vm = Vm::boot(&cfg)?;
//! vm.exec_ok(&["modprobe", "virtio_mem"])?;
//! vm.set_requested_size(1 << 30)?;
//! let took = vm.wait_plugged(1 << 30, Duration::from_secs(120))?;
//! println!("plugged 1 GiB in {took:?}");
//! vm.shutdown()?;
//! # Ok::<(), hotmemctl::VmError>(())
//! ```

pub mod agent;
pub mod bench;
pub mod config;
pub mod console;
pub mod demo;
pub mod lock;
pub mod meminfo;
pub mod plot;
pub mod qmp;
pub mod scale;
pub mod scenario;
pub mod size;
pub mod vm;

pub use config::{Accel, ConfigError, RunDir, VmConfig};
pub use size::{parse_size, HumanSize, SizeError};
pub use vm::{ExecOutput, ShutdownMethod, Vm, VmError, VmErrorKind};
