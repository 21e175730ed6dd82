//! What `hotmem-hotpath` measures and prints (one JSON object per run),
//! and the `/proc` parsing it needs. `hotmemctl bench` (experiment
//! `hotpath`) reads the same types back.
//!
//! Every time is the program's own `clock_gettime(CLOCK_MONOTONIC)`, in
//! nanoseconds.

use serde::{Deserialize, Serialize};

/// Size of a transparent huge page on x86-64.
pub const THP_SIZE: usize = 2 << 20;

/// One measurement of `hotmem-hotpath`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum Measurement {
    /// `hotmem-hotpath fault`: fault a fresh region in, then unmap it.
    Fault(FaultResult),
    /// `hotmem-hotpath exit`: a child populates a region; time its death.
    Exit(ExitResult),
}

/// Page-fault and munmap throughput of one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultResult {
    /// Bytes of the region (2 MiB aligned).
    pub bytes: u64,
    /// Threads that faulted it in, each its own contiguous share.
    pub threads: u32,
    /// `MADV_HUGEPAGE` (else `MADV_NOHUGEPAGE`: 4 KiB pages only).
    pub thp: bool,
    /// From the threads' common start (a barrier) until the last one had
    /// written one byte to each 4 KiB page of its share, ns.
    pub fault_ns: u64,
    /// `munmap()` of the whole populated region, ns.
    pub munmap_ns: u64,
    /// `AnonHugePages` of the region in `/proc/self/smaps` once populated,
    /// kB: all of it with `thp`, none without.
    pub anon_huge_kb: u64,
    /// The HotMem partition the process is bound to (`PR_HOTMEM_GET`).
    pub partition: Option<u64>,
    /// How much `HotMemFree` fell while the region was populated, kB
    /// (`None` without HotMem): about `bytes` when bound, 0 when not.
    pub hotmem_used_kb: Option<u64>,
}

/// Exit time of a process holding a populated region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitResult {
    /// Bytes the child populated (4 KiB pages, `MADV_NOHUGEPAGE`).
    pub bytes: u64,
    /// The child's time to fault them in, ns.
    pub populate_ns: u64,
    /// From `kill(child, SIGKILL)` until the parent's `waitpid()`
    /// returned, ns. The child's `exit_mmap()` (unmapping and freeing
    /// every page) runs before its parent is notified, so this includes
    /// all the freeing.
    pub exit_ns: u64,
    /// The HotMem partition the parent (and so the child) is bound to.
    pub partition: Option<u64>,
    /// How much `HotMemFree` fell while the child held its memory, kB.
    pub hotmem_used_kb: Option<u64>,
    /// How much of it was not back in `HotMemFree` when `waitpid()`
    /// returned, kB (0: the pages were freed before the parent heard of
    /// the exit).
    pub hotmem_left_kb: Option<u64>,
}

impl Measurement {
    /// The partition the measuring process was bound to.
    pub fn partition(&self) -> Option<u64> {
        match self {
            Measurement::Fault(f) => f.partition,
            Measurement::Exit(e) => e.partition,
        }
    }

    /// Bytes measured.
    pub fn bytes(&self) -> u64 {
        match self {
            Measurement::Fault(f) => f.bytes,
            Measurement::Exit(e) => e.bytes,
        }
    }

    /// How much HotMem memory the measured region took, kB.
    pub fn hotmem_used_kb(&self) -> Option<u64> {
        match self {
            Measurement::Fault(f) => f.hotmem_used_kb,
            Measurement::Exit(e) => e.hotmem_used_kb,
        }
    }
}

/// Why `/proc` text could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    /// No smaps entry overlaps the range.
    #[error("no mapping at {start:#x}..{end:#x} in smaps")]
    NoMapping {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
    },
    /// A line that should carry a number did not.
    #[error("malformed line {0:?}")]
    Malformed(String),
}

/// The `[start, end)` of an smaps/maps header line (`7f..-7f.. rw-p ...`),
/// `None` for the `Key: value` lines.
fn range_of(line: &str) -> Option<(usize, usize)> {
    let first = line.split_whitespace().next()?;
    let (a, b) = first.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

/// `AnonHugePages` (kB) summed over the `/proc/self/smaps` entries that
/// overlap `[start, end)`.
pub fn anon_huge_kb(smaps: &str, start: usize, end: usize) -> Result<u64, ProcError> {
    let mut inside = false;
    let mut found = false;
    let mut kb = 0;
    for line in smaps.lines() {
        if let Some((a, b)) = range_of(line) {
            inside = a < end && start < b;
            found |= inside;
        } else if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                kb += kb_value(rest).ok_or_else(|| ProcError::Malformed(line.to_owned()))?;
            }
        }
    }
    if found {
        Ok(kb)
    } else {
        Err(ProcError::NoMapping { start, end })
    }
}

/// `" 1234 kB"` → 1234.
fn kb_value(rest: &str) -> Option<u64> {
    rest.split_whitespace().next()?.parse().ok()
}

/// A `/proc/meminfo` value (kB), `None` if the key is missing.
pub fn meminfo_kb(meminfo: &str, key: &str) -> Result<Option<u64>, ProcError> {
    for line in meminfo.lines() {
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            return kb_value(rest)
                .map(Some)
                .ok_or_else(|| ProcError::Malformed(line.to_owned()));
        }
    }
    Ok(None)
}

/// Splits `len` bytes into `parts` contiguous shares, each a multiple of
/// `unit` except possibly the last; returns `(offset, len)` of each
/// non-empty share.
pub fn shares(len: usize, parts: usize, unit: usize) -> Vec<(usize, usize)> {
    let parts = parts.max(1);
    let unit = unit.max(1);
    let per = len.div_ceil(parts).div_ceil(unit) * unit;
    (0..parts)
        .map(|i| i * per)
        .filter(|&off| off < len)
        .map(|off| (off, per.min(len - off)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
AnonHugePages:         0 kB
7f0000000000-7f0020000000 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:              524288 kB
AnonHugePages:    522240 kB
THPeligible:    1
7f0020000000-7f0020001000 r--p 00000000 fd:01 42                         /bin/x
AnonHugePages:      2048 kB
";

    #[test]
    fn anon_huge_pages_of_a_range() {
        let (s, e) = (0x7f00_0000_0000, 0x7f00_2000_0000);
        assert_eq!(anon_huge_kb(SMAPS, s, e), Ok(522_240));
        // A range over two entries sums them.
        assert_eq!(anon_huge_kb(SMAPS, s, e + 1), Ok(524_288));
        assert_eq!(
            anon_huge_kb(SMAPS, 0x1000, 0x2000),
            Err(ProcError::NoMapping {
                start: 0x1000,
                end: 0x2000
            })
        );
        let bad = "7f0000000000-7f0000200000 rw-p 0 00:00 0\nAnonHugePages: lots kB\n";
        assert!(matches!(
            anon_huge_kb(bad, 0x7f00_0000_0000, 0x7f00_0000_1000),
            Err(ProcError::Malformed(_))
        ));
    }

    #[test]
    fn meminfo_values() {
        let m = "MemFree:         1000 kB\nHotMemFree:      4096 kB\nHotMemFreeX: 1 kB\n";
        assert_eq!(meminfo_kb(m, "HotMemFree"), Ok(Some(4096)));
        assert_eq!(meminfo_kb(m, "MemFree"), Ok(Some(1000)));
        assert_eq!(meminfo_kb(m, "HotMemTotal"), Ok(None));
        assert!(meminfo_kb("HotMemFree: x\n", "HotMemFree").is_err());
    }

    #[test]
    fn shares_are_contiguous_and_unit_aligned() {
        assert_eq!(
            shares(8 << 20, 2, THP_SIZE),
            [(0, 4 << 20), (4 << 20, 4 << 20)]
        );
        assert_eq!(
            shares(6 << 20, 4, THP_SIZE),
            [(0, 2 << 20), (2 << 20, 2 << 20), (4 << 20, 2 << 20)]
        );
        assert_eq!(shares(4096, 1, THP_SIZE), [(0, 4096)]);
        assert_eq!(shares(0, 2, 4096), []);
    }

    #[test]
    fn measurements_round_trip_as_tagged_json() {
        let m = Measurement::Fault(FaultResult {
            bytes: 1 << 20,
            threads: 2,
            thp: true,
            fault_ns: 5,
            munmap_ns: 6,
            anon_huge_kb: 1024,
            partition: Some(3),
            hotmem_used_kb: Some(1024),
        });
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"test":"fault","#), "{text}");
        assert_eq!(serde_json::from_str::<Measurement>(&text).unwrap(), m);
        assert_eq!(
            (m.partition(), m.bytes(), m.hotmem_used_kb()),
            (Some(3), 1 << 20, Some(1024))
        );
    }
}
