//! HotMem and memory-block sysfs: partition states and onlining.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hotmem_proto::{
    ErrorInfo, ErrorKind, OnlineResult, Partition, PartitionState, PartitionsResult,
    WaitFreePartitionsArgs,
};

use crate::cancel::Cancel;

/// Page size of the (x86-64) guests, for `used_pages`.
pub const PAGE_SIZE: u64 = 4096;

/// Pause between two looks at the partitions while waiting.
const WAIT_POLL: Duration = Duration::from_millis(2);

/// Where the HotMem and memory-block attributes live (overridable for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsPaths {
    /// `/sys/kernel/mm/hotmem`.
    pub hotmem: PathBuf,
    /// `/sys/devices/system/memory`.
    pub memory: PathBuf,
    /// The HotMem virtio-mem driver's directory on the virtio bus; while
    /// it is bound to a device, that driver onlines its partitions itself.
    pub hotmem_driver: PathBuf,
}

impl Default for SysfsPaths {
    fn default() -> Self {
        Self {
            hotmem: PathBuf::from("/sys/kernel/mm/hotmem"),
            memory: PathBuf::from("/sys/devices/system/memory"),
            hotmem_driver: PathBuf::from("/sys/bus/virtio/drivers/hotmem_virtio_mem"),
        }
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ErrorInfo {
    ErrorInfo::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

fn read_trimmed(path: &Path) -> Result<String, ErrorInfo> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io_err("read", path, e))
}

fn read_u64(path: &Path) -> Result<u64, ErrorInfo> {
    let text = read_trimmed(path)?;
    text.parse().map_err(|e| {
        ErrorInfo::new(
            ErrorKind::Internal,
            format!("{}: {text:?} is not a number: {e}", path.display()),
        )
    })
}

/// Directory entries named `PREFIX<number>`, as (number, path), sorted.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>, ErrorInfo> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

impl SysfsPaths {
    /// One partition's attributes.
    pub fn partition(&self, id: u64) -> Result<Partition, ErrorInfo> {
        let dir = self.hotmem.join("partitions").join(format!("part{id}"));
        Ok(Partition {
            id,
            state: PartitionState::from_name(&read_trimmed(&dir.join("state"))?),
            users: read_u64(&dir.join("users"))?,
            used_pages: read_u64(&dir.join("used_pages"))?,
            online_blocks: read_u64(&dir.join("online_blocks"))?,
        })
    }

    /// Bytes in use in partition `id`, if it can be read.
    pub fn partition_used(&self, id: u64) -> Option<u64> {
        let path = self
            .hotmem
            .join("partitions")
            .join(format!("part{id}"))
            .join("used_pages");
        read_u64(&path).ok().map(|pages| pages * PAGE_SIZE)
    }

    /// Memory blocks in state `offline`, by number.
    fn offline_blocks(&self) -> Result<Vec<(u64, PathBuf)>, ErrorInfo> {
        let mut out = Vec::new();
        for (n, dir) in numbered(&self.memory, "memory")? {
            let state = dir.join("state");
            // A block being removed may vanish under us: skip it.
            if fs::read_to_string(&state).is_ok_and(|s| s.trim() == "offline") {
                out.push((n, state));
            }
        }
        Ok(out)
    }

    /// The `partitions` operation.
    pub fn partitions(&self) -> Result<PartitionsResult, ErrorInfo> {
        let start = Instant::now();
        let enabled = match fs::read_to_string(self.hotmem.join("enabled")) {
            Ok(s) => s.trim() == "1",
            // A kernel without CONFIG_HOTMEM: nothing to report but blocks.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("read", &self.hotmem.join("enabled"), e)),
        };
        let (partition_size, partitions) = if enabled {
            let size = read_u64(&self.hotmem.join("partition_size"))?;
            let mut parts = Vec::new();
            for (id, _) in numbered(&self.hotmem.join("partitions"), "part")? {
                match self.partition(id) {
                    Ok(p) => parts.push(p),
                    // Removed between the listing and the read.
                    Err(_) if !self.hotmem.join(format!("partitions/part{id}")).exists() => {}
                    Err(e) => return Err(e),
                }
            }
            (size, parts)
        } else {
            (0, Vec::new())
        };
        Ok(PartitionsResult {
            enabled,
            partition_size,
            partitions,
            offline_blocks: self.offline_blocks()?.len() as u64,
            onlined: 0,
            duration_us: micros(start.elapsed()),
        })
    }

    /// True while the HotMem virtio-mem driver is bound to a device.
    pub fn hotmem_driver_bound(&self) -> bool {
        numbered(&self.hotmem_driver, "virtio").is_ok_and(|devs| !devs.is_empty())
    }

    /// The `online_hotmem_blocks` operation: `online_hotmem` into every
    /// offline block. Nothing offline is not an error. A no-op while the
    /// HotMem virtio-mem driver is bound: it onlines (or gives back) the
    /// blocks it adds itself, and racing it would make its onlining fail.
    pub fn online_hotmem_blocks(&self) -> Result<OnlineResult, ErrorInfo> {
        let start = Instant::now();
        if self.hotmem_driver_bound() {
            return Ok(OnlineResult {
                onlined: Vec::new(),
                duration_us: micros(start.elapsed()),
            });
        }
        let mut onlined = Vec::new();
        let mut failures = Vec::new();
        for (n, state) in self.offline_blocks()? {
            match fs::write(&state, "online_hotmem") {
                Ok(()) => onlined.push(n),
                // Onlined or removed by someone else meanwhile: fine.
                Err(_) if fs::read_to_string(&state).map_or(true, |s| s.trim() != "offline") => {}
                Err(e) => failures.push(format!("memory{n}: {e}")),
            }
        }
        if !failures.is_empty() {
            return Err(ErrorInfo::new(
                ErrorKind::Io,
                format!(
                    "online_hotmem failed for {} (onlined {:?})",
                    failures.join(", "),
                    onlined
                ),
            ));
        }
        Ok(OnlineResult {
            onlined,
            duration_us: micros(start.elapsed()),
        })
    }

    /// The `wait_free_partitions` operation (gives up when `cancel` fires).
    pub fn wait_free_partitions(
        &self,
        args: &WaitFreePartitionsArgs,
        cancel: &Cancel,
    ) -> Result<PartitionsResult, ErrorInfo> {
        let start = Instant::now();
        let timeout = Duration::from_millis(args.timeout_ms);
        let mut onlined = 0;
        loop {
            if args.online {
                onlined += self.online_hotmem_blocks()?.onlined.len() as u64;
            }
            let mut parts = self.partitions()?;
            if !parts.enabled && args.count > 0 {
                return Err(ErrorInfo::new(
                    ErrorKind::Io,
                    "HotMem is not enabled in this guest (boot with hotmem=on)",
                ));
            }
            if parts.free() >= args.count {
                parts.onlined = onlined;
                parts.duration_us = micros(start.elapsed());
                return Ok(parts);
            }
            if start.elapsed() >= timeout {
                return Err(ErrorInfo::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} of {} partitions free after {} ms ({} blocks offline)",
                        parts.free(),
                        args.count,
                        args.timeout_ms,
                        parts.offline_blocks
                    ),
                ));
            }
            cancel.sleep(WAIT_POLL);
            cancel.check("wait_free_partitions")?;
        }
    }
}

/// A duration in whole microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs with two partitions and three memory blocks.
    fn fake() -> (tempfile::TempDir, SysfsPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = SysfsPaths {
            hotmem: dir.path().join("hotmem"),
            memory: dir.path().join("memory"),
            hotmem_driver: dir.path().join("driver"),
        };
        fs::create_dir_all(&paths.hotmem).unwrap();
        fs::write(paths.hotmem.join("enabled"), "1\n").unwrap();
        fs::write(paths.hotmem.join("partition_size"), "134217728\n").unwrap();
        for (id, state, used) in [(8, "free", 0), (9, "bound", 100)] {
            let p = paths.hotmem.join(format!("partitions/part{id}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("state"), format!("{state}\n")).unwrap();
            fs::write(p.join("users"), "0\n").unwrap();
            fs::write(p.join("used_pages"), format!("{used}\n")).unwrap();
            fs::write(p.join("online_blocks"), "1\n").unwrap();
        }
        for (n, state) in [(0, "online"), (8, "online"), (10, "offline")] {
            let b = paths.memory.join(format!("memory{n}"));
            fs::create_dir_all(&b).unwrap();
            fs::write(b.join("state"), format!("{state}\n")).unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn partitions_are_listed() {
        let (_dir, paths) = fake();
        let r = paths.partitions().unwrap();
        assert!(r.enabled);
        assert_eq!(r.partition_size, 128 << 20);
        let ids: Vec<_> = r.partitions.iter().map(|p| (p.id, p.state)).collect();
        assert_eq!(ids, [(8, PartitionState::Free), (9, PartitionState::Bound)]);
        assert_eq!((r.free(), r.offline_blocks), (1, 1));
        assert_eq!(paths.partition_used(9), Some(100 * PAGE_SIZE));
        assert_eq!(paths.partition_used(11), None);
    }

    #[test]
    fn onlining_writes_online_hotmem_to_offline_blocks_only() {
        let (_dir, paths) = fake();
        let r = paths.online_hotmem_blocks().unwrap();
        assert_eq!(r.onlined, [10]);
        let state = |n: u64| fs::read_to_string(paths.memory.join(format!("memory{n}/state")));
        assert_eq!(state(10).unwrap(), "online_hotmem");
        assert_eq!(state(8).unwrap(), "online\n");
        // Nothing offline any more (the fake's state file now reads
        // "online_hotmem"): a no-op.
        assert!(paths.online_hotmem_blocks().unwrap().onlined.is_empty());
    }

    #[test]
    fn no_onlining_while_the_hotmem_driver_is_bound() {
        let (_dir, paths) = fake();
        fs::create_dir_all(paths.hotmem_driver.join("virtio1")).unwrap();
        assert!(paths.hotmem_driver_bound());
        assert!(paths.online_hotmem_blocks().unwrap().onlined.is_empty());
        let state = fs::read_to_string(paths.memory.join("memory10/state")).unwrap();
        assert_eq!(state, "offline\n");
    }

    #[test]
    fn waiting_for_partitions() {
        let (_dir, paths) = fake();
        let args = |count| WaitFreePartitionsArgs {
            count,
            online: false,
            timeout_ms: 30,
        };
        let never = Cancel::never();
        assert_eq!(
            paths.wait_free_partitions(&args(1), &never).unwrap().free(),
            1
        );
        let err = paths.wait_free_partitions(&args(2), &never).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.message.contains("1 of 2"), "{}", err.message);
        let cancelled = Cancel::default();
        cancelled.cancel();
        let long = WaitFreePartitionsArgs {
            timeout_ms: 600_000,
            ..args(2)
        };
        let start = Instant::now();
        let err = paths.wait_free_partitions(&long, &cancelled).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        assert!(start.elapsed() < Duration::from_secs(5));
        fs::write(paths.hotmem.join("enabled"), "0\n").unwrap();
        let err = paths.wait_free_partitions(&args(1), &never).unwrap_err();
        assert!(err.message.contains("hotmem=on"), "{}", err.message);
    }

    #[test]
    fn unknown_partition_states_are_reported_as_unknown() {
        let (_dir, paths) = fake();
        fs::write(paths.hotmem.join("partitions/part8/state"), "evicting\n").unwrap();
        let r = paths.partitions().unwrap();
        assert_eq!(r.partitions[0].state, PartitionState::Unknown);
        assert_eq!(r.free(), 0);
    }

    #[test]
    fn missing_hotmem_is_disabled_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SysfsPaths {
            hotmem: dir.path().join("none"),
            memory: dir.path().join("none"),
            hotmem_driver: dir.path().join("none"),
        };
        let r = paths.partitions().unwrap();
        assert!(!r.enabled && r.partitions.is_empty());
    }
}
