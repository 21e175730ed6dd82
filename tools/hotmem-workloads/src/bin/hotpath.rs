//! `hotmem-hotpath fault --size 512M [--threads N] [--thp]` and
//! `hotmem-hotpath exit --size 1G`
//!
//! Times the memory hot paths of the calling process, bound to a HotMem
//! partition (run under `hotmem-run`) or not (`hotmem-run --no-bind`), and
//! prints one JSON object ([`hotmem_workloads::hotpath::Measurement`]).
//! Times are `clock_gettime(CLOCK_MONOTONIC)` in ns.
//!
//! `fault` maps a fresh 2 MiB-aligned anonymous region (`MADV_NOHUGEPAGE`,
//! or `MADV_HUGEPAGE` with `--thp`), starts N threads that wait at a
//! barrier and then each write one byte to every 4 KiB page of its
//! contiguous share (page-fault throughput), checks in
//! `/proc/self/smaps` that the region is all THP with `--thp` and none
//! without (and fails if not), then times `munmap()` of the whole region.
//!
//! `exit` forks a child that populates `--size` in 4 KiB pages and reports
//! back through a pipe; the parent then times from `kill(SIGKILL)` to its
//! `waitpid()` returning. The child's address space is torn down (every
//! page freed) before the parent is notified, so this covers the freeing.
//! A bound parent's child is bound to the same partition.

use std::process::ExitCode;
use std::sync::Barrier;

use clap::{Parser, Subcommand};
use hotmem_units::parse_size_nonzero;
use hotmem_workloads::hotpath::{
    anon_huge_kb, meminfo_kb, shares, ExitResult, FaultResult, Measurement, ProcError, THP_SIZE,
};
use hotmem_workloads::{Mapping, PAGE};

/// `PR_HOTMEM` of the HotMem series' `include/uapi/linux/prctl.h`.
const PR_HOTMEM: libc::c_int = 0x484d_454d;
/// Read the partition the calling process is bound to.
const PR_HOTMEM_GET: libc::c_ulong = 2;

/// Time the fault, munmap and exit paths of this process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    test: Test,
}

#[derive(Debug, Subcommand)]
enum Test {
    /// Page-fault throughput of a fresh region, then munmap() of it.
    Fault {
        /// Region size, e.g. 512M (rounded up to 2 MiB).
        #[arg(long, value_parser = parse_size_nonzero)]
        size: usize,
        /// Threads faulting it in, each its own share.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        threads: u32,
        /// Transparent huge pages (MADV_HUGEPAGE); else 4 KiB pages only.
        #[arg(long)]
        thp: bool,
    },
    /// Exit time of a child holding --size in 4 KiB pages.
    Exit {
        /// Memory the child populates, e.g. 1G.
        #[arg(long, value_parser = parse_size_nonzero)]
        size: usize,
    },
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("mmap of {0} bytes failed: {1}")]
    Mmap(usize, std::io::Error),
    #[error("madvise({0}) failed: {1}")]
    Madvise(&'static str, std::io::Error),
    #[error("munmap failed: {0}")]
    Munmap(std::io::Error),
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error("{0}: {1}")]
    Proc(&'static str, ProcError),
    #[error("prctl(PR_HOTMEM_GET) failed: {0}")]
    Prctl(std::io::Error),
    #[error("a faulting thread panicked")]
    Thread,
    #[error(
        "asked for transparent huge pages but only {got_kb} of {want_kb} kB are \
         AnonHugePages (THP disabled, or no free 2 MiB blocks?)"
    )]
    NoThp { got_kb: u64, want_kb: u64 },
    #[error("MADV_NOHUGEPAGE region has {0} kB of AnonHugePages")]
    UnexpectedThp(u64),
    #[error("{0} failed: {1}")]
    Sys(&'static str, std::io::Error),
    #[error("the child failed to populate its memory (status {0:#x})")]
    Child(i32),
}

/// CLOCK_MONOTONIC in ns.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: ts is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The partition this process is bound to; `None` if unbound or the kernel
/// has no HotMem.
fn partition() -> Result<Option<u64>, Error> {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_HOTMEM, PR_HOTMEM_GET) takes integers only.
    let ret = unsafe { libc::prctl(PR_HOTMEM, PR_HOTMEM_GET, 0 as libc::c_ulong, 0, 0) };
    if ret >= 0 {
        return Ok(Some(u64::from(ret.unsigned_abs())));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(None),
        _ => Err(Error::Prctl(err)),
    }
}

/// `HotMemFree` in kB, `None` without HotMem.
fn hotmem_free_kb() -> Result<Option<u64>, Error> {
    let text =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::Read("/proc/meminfo", e))?;
    meminfo_kb(&text, "HotMemFree").map_err(|e| Error::Proc("/proc/meminfo", e))
}

fn used_kb(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(before?.saturating_sub(after?))
}

/// Writes one byte to every page of `mem`.
fn touch(mem: &mut [u8]) {
    for page in mem.chunks_mut(PAGE) {
        page[0] = 1;
    }
    std::hint::black_box(mem);
}

/// A fresh anonymous region of `size` with THP advice (or its opposite).
fn region(size: usize, thp: bool) -> Result<Mapping, Error> {
    let map = Mapping::anonymous_aligned(size, THP_SIZE).map_err(|e| Error::Mmap(size, e))?;
    let (advice, name) = if thp {
        (libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")
    } else {
        (libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")
    };
    map.advise(size, advice)
        .map_err(|e| Error::Madvise(name, e))?;
    Ok(map)
}

/// Faults `mem` in with one thread per share, all starting together;
/// returns the time from the first start to the last end, ns.
fn fault_in(mem: &mut [u8], threads: u32) -> Result<u64, Error> {
    let parts = shares(mem.len(), threads as usize, THP_SIZE);
    let barrier = Barrier::new(parts.len());
    let mut chunks = Vec::with_capacity(parts.len());
    let mut rest = mem;
    for &(_, len) in &parts {
        let (chunk, tail) = rest.split_at_mut(len);
        chunks.push(chunk);
        rest = tail;
    }
    let spans: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = mono_ns();
                    touch(chunk);
                    (start, mono_ns())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| Error::Thread))
            .collect::<Result<_, _>>()
    })?;
    let start = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.1).max().unwrap_or(0);
    Ok(end.saturating_sub(start))
}

fn fault(size: usize, threads: u32, thp: bool) -> Result<FaultResult, Error> {
    let size = size.next_multiple_of(THP_SIZE);
    let partition = partition()?;
    let before = hotmem_free_kb()?;
    let mut map = region(size, thp)?;
    let fault_ns = fault_in(map.bytes(), threads)?;
    let start = map.as_ptr() as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| Error::Read("/proc/self/smaps", e))?;
    let huge = anon_huge_kb(&smaps, start, start + size).map_err(|e| Error::Proc("smaps", e))?;
    let want_kb = (size / 1024) as u64;
    if thp && huge < want_kb {
        return Err(Error::NoThp {
            got_kb: huge,
            want_kb,
        });
    }
    if !thp && huge > 0 {
        return Err(Error::UnexpectedThp(huge));
    }
    let hotmem_used_kb = used_kb(before, hotmem_free_kb()?);
    let t0 = mono_ns();
    map.unmap().map_err(Error::Munmap)?;
    let munmap_ns = mono_ns().saturating_sub(t0);
    Ok(FaultResult {
        bytes: size as u64,
        threads,
        thp,
        fault_ns,
        munmap_ns,
        anon_huge_kb: huge,
        partition,
        hotmem_used_kb,
    })
}

fn last_error(what: &'static str) -> Error {
    Error::Sys(what, std::io::Error::last_os_error())
}

/// The child of `exit`: populate, report the time through `fd`, wait to
/// be killed. Never returns.
fn child(size: usize, fd: libc::c_int) -> ! {
    let status = match region(size, false) {
        Ok(mut map) => {
            let t0 = mono_ns();
            touch(map.bytes());
            let ns = mono_ns().saturating_sub(t0).to_ne_bytes();
            #[allow(unsafe_code)]
            // SAFETY: writing our own 8-byte buffer to our pipe.
            let n = unsafe { libc::write(fd, ns.as_ptr().cast(), ns.len()) };
            if n == 8 {
                loop {
                    #[allow(unsafe_code)]
                    // SAFETY: pause() only waits for a signal.
                    unsafe {
                        libc::pause()
                    };
                }
            }
            3
        }
        Err(e) => {
            eprintln!("hotmem-hotpath: child: {e}");
            2
        }
    };
    #[allow(unsafe_code)]
    // SAFETY: _exit does not return and runs no destructors.
    unsafe {
        libc::_exit(status)
    }
}

/// Reads exactly 8 bytes from `fd`; `None` on EOF first.
fn read_u64(fd: libc::c_int) -> Result<Option<u64>, Error> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        #[allow(unsafe_code)]
        // SAFETY: reading into the unfilled rest of our buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n == 0 {
            return Ok(None);
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Sys("read", err));
        }
        got += n.unsigned_abs();
    }
    Ok(Some(u64::from_ne_bytes(buf)))
}

fn wait(pid: libc::pid_t) -> Result<i32, Error> {
    let mut status = 0;
    loop {
        #[allow(unsafe_code)]
        // SAFETY: waiting for our own child; status is a valid pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(status);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Sys("waitpid", err));
        }
    }
}

fn close(fd: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: closing a pipe end we own and no longer use.
    unsafe {
        libc::close(fd)
    };
}

fn exit(size: usize) -> Result<ExitResult, Error> {
    let partition = partition()?;
    let before = hotmem_free_kb()?;
    let mut fds = [0; 2];
    #[allow(unsafe_code)]
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("pipe2"));
    }
    let [rd, wr] = fds;
    #[allow(unsafe_code)]
    // SAFETY: this program is single-threaded here; the child maps and
    // writes its own memory, writes to the pipe and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error("fork"));
    }
    if pid == 0 {
        close(rd);
        child(size, wr);
    }
    close(wr);
    let populated = read_u64(rd);
    close(rd);
    let Some(populate_ns) = populated? else {
        return Err(Error::Child(wait(pid)?));
    };
    let held = hotmem_free_kb()?;
    let t0 = mono_ns();
    #[allow(unsafe_code)]
    // SAFETY: killing our own child, which we have not reaped yet.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(last_error("kill"));
    }
    wait(pid)?;
    let exit_ns = mono_ns().saturating_sub(t0);
    let after = hotmem_free_kb()?;
    Ok(ExitResult {
        bytes: size as u64,
        populate_ns,
        exit_ns,
        partition,
        hotmem_used_kb: used_kb(before, held),
        hotmem_left_kb: used_kb(before, after),
    })
}

fn run(test: &Test) -> Result<Measurement, Error> {
    Ok(match *test {
        Test::Fault { size, threads, thp } => Measurement::Fault(fault(size, threads, thp)?),
        Test::Exit { size } => Measurement::Exit(exit(size)?),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args.test) {
        Ok(m) => match serde_json::to_string(&m) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hotmem-hotpath: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("hotmem-hotpath: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = Args::try_parse_from([
            "hotpath",
            "fault",
            "--size",
            "4M",
            "--threads",
            "2",
            "--thp",
        ])
        .unwrap();
        assert!(matches!(
            a.test,
            Test::Fault {
                size: 0x40_0000,
                threads: 2,
                thp: true
            }
        ));
        assert!(
            Args::try_parse_from(["hotpath", "fault", "--size", "4M", "--threads", "0"]).is_err()
        );
        assert!(Args::try_parse_from(["hotpath", "exit", "--size", "0"]).is_err());
    }

    #[test]
    fn small_pages_fault_in_on_the_host_with_two_threads() {
        // 4 KiB pages only (MADV_NOHUGEPAGE): the host's THP policy
        // cannot make this fail. Whether the host gives THP is not ours
        // to test; the guest run checks that.
        let r = fault(4 << 20, 2, false).unwrap();
        assert_eq!((r.bytes, r.threads, r.anon_huge_kb), (4 << 20, 2, 0));
        assert_eq!(r.partition, None, "the host kernel has no HotMem");
    }

    #[test]
    fn exit_of_a_child_on_the_host() {
        let r = exit(1 << 20).unwrap();
        assert_eq!(
            (r.bytes, r.partition, r.hotmem_used_kb),
            (1 << 20, None, None)
        );
    }
}
