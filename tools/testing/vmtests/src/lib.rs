//! Support code for the HotMem VM tests (`tests/`), which boot real guests.
//!
//! The tests are `#[ignore]`d so that a plain `cargo test` skips them;
//! `make check` runs them with `--include-ignored`, after building the guest.
//! They are configured through the environment:
//!
//! | variable         | meaning                                              |
//! |------------------|------------------------------------------------------|
//! | `HOTMEM_KERNEL`  | guest bzImage (required)                             |
//! | `HOTMEM_INITRD`  | guest initramfs (required)                           |
//! | `HOTMEM_ACCEL`   | `tcg` (default) or `kvm`                             |
//! | `HOTMEM_RUN_DIR` | base of the per-test run dirs (default `build/vmtests`) |
//! | `HOTMEM_DEBUG_KERNEL` | set: the guest is the debug kernel, which must have what the fault tests need |
//!
//! Relative paths are taken relative to the workspace root, since cargo
//! runs test binaries in the package directory.
//!
//! Everything here panics on failure: these are test helpers, and the panic
//! message (with the guest console tail) is the test report.

use std::env;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotmem_host::{Accel, Vm, VmConfig, VmError};
use hotmem_host::{AgentTransport as _, MemoryDevice as _};

const MIB: u64 = 1 << 20;
/// The device block size of the HotMem tests that plug with the C driver:
/// one Linux memory block, so virtio-mem uses big block mode and adds whole
/// blocks that stay offline until the test onlines them.
pub const BLOCK: u64 = 128 * MIB;
/// The partition size those tests boot with (two blocks).
pub const PARTITION: u64 = 256 * MIB;
/// How long a plug or an unplug may take.
pub const PLUG_TIMEOUT: Duration = Duration::from_secs(120);

/// Root of the Cargo workspace (three levels above this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(3)
        .map_or_else(|| manifest.to_owned(), Path::to_owned)
}

/// Resolves a path from the environment against the workspace root.
fn resolve(path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        workspace_root().join(path)
    }
}

/// An artifact path from `var`, which must be set and exist.
///
/// # Panics
/// If `var` is unset or names a missing file.
fn required_artifact(var: &str) -> PathBuf {
    let Ok(value) = env::var(var) else {
        panic!(
            "{var} is not set: the VM tests need HOTMEM_KERNEL and HOTMEM_INITRD \
             (run them via `make check`, or e.g. HOTMEM_KERNEL=build/guest/bzImage \
             HOTMEM_INITRD=build/guest/initramfs.cpio.gz cargo test -p hotmem-vmtests \
             -- --include-ignored --test-threads=1)"
        );
    };
    let path = resolve(&value);
    assert!(
        path.is_file(),
        "{var}={value}: {} does not exist",
        path.display()
    );
    path
}

/// Whether the guest kernel is the debug kernel (`HOTMEM_DEBUG_KERNEL`).
/// Fault tests that need its options (memory failure, fault injection)
/// skip on the ordinary guest kernel and must run on this one.
pub fn debug_kernel() -> bool {
    env::var_os("HOTMEM_DEBUG_KERNEL").is_some()
}

/// Whether the guest has `path`; if not, the test may only be skipped on
/// the ordinary guest kernel.
///
/// # Panics
/// If `path` is missing on the debug kernel, or the guest cannot be asked.
pub fn has_or_skip(vm: &mut Vm, path: &str, what: &str) -> bool {
    let out = vm.exec(&["test", "-e", path]).or_panic("test -e");
    if out.success() {
        return true;
    }
    assert!(!debug_kernel(), "the debug kernel lacks {what} ({path})");
    eprintln!("skipped: this guest kernel has no {what}; the debug kernel runs this test");
    false
}

/// The guest configuration for test `name`, with its own run dir.
///
/// # Panics
/// If the environment is incomplete or invalid.
pub fn config(name: &str) -> VmConfig {
    let kernel = required_artifact("HOTMEM_KERNEL");
    let initrd = required_artifact("HOTMEM_INITRD");
    let accel = match env::var("HOTMEM_ACCEL") {
        Ok(s) => s
            .parse::<Accel>()
            .unwrap_or_else(|e| panic!("HOTMEM_ACCEL: {e}")),
        Err(_) => Accel::Tcg,
    };
    let base = env::var("HOTMEM_RUN_DIR")
        .map_or_else(|_| workspace_root().join("build/vmtests"), |d| resolve(&d));
    let mut cfg = VmConfig::new(kernel, initrd, base.join(name));
    cfg.accel = accel;
    cfg
}

/// The configuration for HotMem test `name`: virtio-mem with [`BLOCK`]-sized
/// device blocks, and `hotmem=on` with [`PARTITION`]-sized partitions, or
/// `hotmem=off`.
///
/// # Panics
/// Like [`config`].
pub fn hotmem_config(name: &str, on: bool) -> VmConfig {
    let mut cfg = config(name);
    cfg.vmem_block_size = BLOCK;
    cfg.append = if on {
        format!("hotmem=on hotmem_partition_size={}M", PARTITION / MIB)
    } else {
        "hotmem=off".to_owned()
    };
    cfg
}

/// Asks the virtio-mem device for `bytes` and waits until exactly that much
/// is plugged.
///
/// # Panics
/// If QMP fails or the plugged size does not get there within
/// [`PLUG_TIMEOUT`].
pub fn plug(vm: &mut Vm, bytes: u64) {
    vm.set_requested_size(bytes)
        .or_panic("setting requested-size");
    vm.wait_plugged(bytes, PLUG_TIMEOUT)
        .or_panic("waiting for the plugged size");
    assert_eq!(vm.plugged_size().or_panic("plugged size"), bytes);
}

/// Boots the guest for test `name`.
///
/// # Panics
/// If the guest does not boot; the message includes the console tail.
pub fn boot(name: &str) -> Vm {
    Vm::boot(&config(name)).or_panic("booting the guest")
}

/// The value of counter `key` in the guest's `/proc/vmstat`.
///
/// # Panics
/// If the file cannot be read or has no such counter.
pub fn vmstat(vm: &mut Vm, key: &str) -> u64 {
    let text = vm
        .read_file("/proc/vmstat")
        .or_panic("reading /proc/vmstat");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /proc/vmstat"))
}

/// The value of `key` in the guest's `/proc/meminfo` as printed (kB for the
/// lines with a `kB` unit).
///
/// # Panics
/// If the file cannot be read or has no such line.
pub fn meminfo(vm: &mut Vm, key: &str) -> u64 {
    *vm.meminfo()
        .or_panic("reading /proc/meminfo")
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from /proc/meminfo"))
}

/// Unwrapping with a useful message for [`VmError`] results.
pub trait OrPanic<T> {
    /// The value, or a panic saying what failed, with the error's
    /// diagnostics (console tail, QEMU log).
    fn or_panic(self, what: &str) -> T;
}

impl<T> OrPanic<T> for Result<T, VmError> {
    #[track_caller]
    fn or_panic(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("{what} failed: {e}"),
        }
    }
}
