//! `hotmem-memhog --size 64M [--thp | --collapse] [--fill BYTE] [--check-zero]
//! [--fork] [--hold DURATION]`
//!
//! Maps private anonymous memory and faults every page in: a memhog-style
//! function instance. `--check-zero` verifies that every page reads as zero
//! right after it is first written at offset 0 (fresh anonymous memory must
//! never show a previous instance's data); `--fill` then writes a pattern
//! over everything so that a later instance would see it if pages were
//! handed out unzeroed. `--fork` repeats the touch in a child (COW copies).
//! `--collapse` faults the memory in as small pages and then asks for huge
//! pages (MADV_HUGEPAGE), so that khugepaged collapses it while it is held.
//! `--hwpoison` then injects a memory failure into the first page
//! (MADV_HWPOISON: needs CONFIG_MEMORY_FAILURE and CAP_SYS_ADMIN); the
//! kernel kills the process with SIGBUS.
//! Prints one `key=value` summary line.
//!
//! `--request-interval DURATION` (e.g. `4ms`) turns the hold into a request
//! loop, like a function serving requests: every interval it reads and writes
//! `--request-bytes` of its memory and prints
//! `req uptime_ms=T latency_us=L` (T is CLOCK_BOOTTIME at the start of the
//! request), so a host can see how a co-located scale-down affects it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hotmem_units::{parse_duration, parse_size_nonzero};

use hotmem_workloads::{Mapping, PAGE};

/// Allocate and touch anonymous memory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How much to map, e.g. 64M, 1G, 4096.
    #[arg(long, value_parser = parse_size_nonzero)]
    size: usize,
    /// Ask for transparent huge pages (MADV_HUGEPAGE).
    #[arg(long, conflicts_with = "collapse")]
    thp: bool,
    /// Fault in small pages (MADV_NOHUGEPAGE), then MADV_HUGEPAGE: work
    /// for khugepaged.
    #[arg(long)]
    collapse: bool,
    /// After touching, poison the first page (MADV_HWPOISON).
    #[arg(long)]
    hwpoison: bool,
    /// Check that each page is zero when first faulted in.
    #[arg(long)]
    check_zero: bool,
    /// Fill all memory with this byte after touching it.
    #[arg(long)]
    fill: Option<u8>,
    /// Fork a child that writes to every page too (COW).
    #[arg(long)]
    fork: bool,
    /// Keep the memory this long before exiting (e.g. 10s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    hold: Duration,
    /// While holding, serve a "request" this often (e.g. 4ms; 0s: just
    /// sleep).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    request_interval: Duration,
    /// Memory each request reads and writes.
    #[arg(long, value_parser = parse_size_nonzero, default_value = "1M")]
    request_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("mmap of {0} bytes failed: {1}")]
    Mmap(usize, std::io::Error),
    #[error("fork failed: {0}")]
    Fork(std::io::Error),
    #[error("page {page} had a non-zero byte at offset {offset} when first faulted in")]
    NotZero { page: usize, offset: usize },
    #[error("the child failed")]
    Child,
    #[error("madvise(MADV_HWPOISON) failed: {0}")]
    Hwpoison(std::io::Error),
    #[error("madvise({0}) failed: {1}")]
    Madvise(&'static str, std::io::Error),
}

/// THP advice for the whole mapping.
#[derive(Debug, Clone, Copy)]
enum Advice {
    Huge,
    NoHuge,
}

/// The anonymous mapping of `len` bytes, with `advice` over all of it.
/// A kernel without madvise() (tinyconfig leaves the syscall out) fails
/// here rather than run another test.
fn map(len: usize, advice: Option<Advice>) -> Result<Mapping, Error> {
    let map = Mapping::anonymous(len).map_err(|e| Error::Mmap(len, e))?;
    if let Some(advice) = advice {
        let (code, name) = match advice {
            Advice::Huge => (libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
            Advice::NoHuge => (libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
        };
        map.advise(len, code).map_err(|e| Error::Madvise(name, e))?;
    }
    Ok(map)
}

fn touch(mem: &mut [u8], check_zero: bool) -> Result<(), Error> {
    for (page, chunk) in mem.chunks_mut(PAGE).enumerate() {
        chunk[0] = 1;
        if check_zero {
            if let Some(offset) = chunk.iter().skip(1).position(|&b| b != 0) {
                return Err(Error::NotZero {
                    page,
                    offset: offset + 1,
                });
            }
        }
    }
    Ok(())
}

fn fork_and_touch(mem: &mut [u8]) -> Result<(), Error> {
    #[allow(unsafe_code)]
    // SAFETY: the program is single-threaded; the child only writes to
    // its COW copy of the mapping and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Fork(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        for chunk in mem.chunks_mut(PAGE) {
            chunk[0] = 2;
        }
        #[allow(unsafe_code)]
        // SAFETY: _exit does not return and runs no destructors.
        unsafe {
            libc::_exit(0)
        };
    }
    let mut status = 0;
    #[allow(unsafe_code)]
    // SAFETY: waiting for the child we forked, status is a valid pointer.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    if ret != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(Error::Child);
    }
    Ok(())
}

fn run(args: &Args) -> Result<Duration, Error> {
    let start = Instant::now();
    let advice = if args.thp {
        Some(Advice::Huge)
    } else if args.collapse {
        Some(Advice::NoHuge)
    } else {
        None
    };
    let mut map = map(args.size, advice)?;
    let mem = map.bytes();
    touch(mem, args.check_zero)?;
    if let Some(byte) = args.fill {
        mem.fill(byte);
    }
    if args.fork {
        fork_and_touch(mem)?;
    }
    if args.collapse {
        map.advise(args.size, libc::MADV_HUGEPAGE)
            .map_err(|e| Error::Madvise("MADV_HUGEPAGE", e))?;
    }
    if args.hwpoison {
        // The kernel unmaps the first page and signals us.
        map.advise(PAGE, libc::MADV_HWPOISON)
            .map_err(Error::Hwpoison)?;
    }
    let mem = map.bytes();
    let took = start.elapsed();
    println!(
        "memhog: touched size={} touch_ms={}",
        args.size,
        took.as_millis()
    );
    let hold = args.hold;
    if args.request_interval.is_zero() {
        std::thread::sleep(hold);
    } else {
        serve_requests(mem, hold, args);
    }
    Ok(took)
}

/// CLOCK_BOOTTIME in ms (comparable with the guest agent's uptime).
fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: ts is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts)
    };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

/// One request: read-modify-write `len` bytes at `offset` (wrapping).
fn request(mem: &mut [u8], offset: usize, len: usize) -> u64 {
    let len = len.min(mem.len());
    let start = offset % (mem.len() - len + 1);
    let mut sum = 0u64;
    for b in &mut mem[start..start + len] {
        sum = sum.wrapping_add(u64::from(*b));
        *b = b.wrapping_add(1);
    }
    sum
}

/// The request loop, for `hold`, printing one line per request.
fn serve_requests(mem: &mut [u8], hold: Duration, args: &Args) {
    let interval = args.request_interval;
    let end = Instant::now() + hold;
    let mut offset = 0;
    let mut sink = 0u64;
    while Instant::now() < end {
        let t = uptime_ms();
        let began = Instant::now();
        sink = sink.wrapping_add(request(mem, offset, args.request_bytes));
        let latency = began.elapsed();
        offset = offset.wrapping_add(args.request_bytes);
        println!("req uptime_ms={t} latency_us={}", latency.as_micros());
        std::thread::sleep(interval.saturating_sub(began.elapsed()));
    }
    std::hint::black_box(sink);
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(took) => {
            println!(
                "memhog: done size={} thp={} check_zero={} fork={} touch_ms={}",
                args.size,
                args.thp,
                args.check_zero,
                args.fork,
                took.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotmem-memhog: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_take_the_common_syntax() {
        let args = Args::try_parse_from(["memhog", "--size", "1GiB", "--hold", "1m30s"]).unwrap();
        assert_eq!((args.size, args.hold), (1 << 30, Duration::from_secs(90)));
        assert!(Args::try_parse_from(["memhog", "--size", "0"]).is_err());
        assert!(Args::try_parse_from(["memhog", "--size", "1M", "--hold", "30"]).is_err());
    }

    #[test]
    fn touch_fill_and_fork_on_the_host() {
        let args = Args::try_parse_from([
            "memhog",
            "--size",
            "1M",
            "--check-zero",
            "--fill",
            "165",
            "--fork",
        ])
        .unwrap();
        assert!(run(&args).is_ok());
    }

    #[test]
    fn requests_touch_a_wrapping_window() {
        let mut mem = vec![0u8; 10];
        assert_eq!(request(&mut mem, 8, 4), 0);
        // offset 8 wraps to 8 % 7 = 1: bytes 1..5 were bumped.
        assert_eq!(mem, [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(request(&mut mem, 1, 4), 4);
        let args = Args::try_parse_from([
            "memhog",
            "--size",
            "64K",
            "--hold",
            "30ms",
            "--request-interval",
            "5ms",
            "--request-bytes",
            "8K",
        ])
        .unwrap();
        assert!(run(&args).is_ok());
        assert!(uptime_ms() > 0);
    }

    #[test]
    fn collapse_faults_small_pages_then_asks_for_huge_ones() {
        let args =
            Args::try_parse_from(["memhog", "--size", "4M", "--collapse", "--fill", "7"]).unwrap();
        assert!(run(&args).is_ok());
        assert!(Args::try_parse_from(["memhog", "--size", "4M", "--collapse", "--thp"]).is_err());
    }

    #[test]
    fn check_zero_catches_dirty_memory() {
        let mut buf = vec![0u8; 2 * PAGE];
        buf[PAGE + 7] = 9;
        assert!(matches!(
            touch(&mut buf, true),
            Err(Error::NotZero { page: 1, offset: 7 })
        ));
    }
}
