//! `hotmem-memhog --size 64M [--thp] [--fill BYTE] [--check-zero] [--fork]
//! [--hold-ms MS]`
//!
//! Maps private anonymous memory and faults every page in: a memhog-style
//! function instance. `--check-zero` verifies that every page reads as zero
//! right after it is first written at offset 0 (fresh anonymous memory must
//! never show a previous instance's data); `--fill` then writes a pattern
//! over everything so that a later instance would see it if pages were
//! handed out unzeroed. `--fork` repeats the touch in a child (COW copies).
//! Prints one `key=value` summary line.

use std::process::ExitCode;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use clap::Parser;

const PAGE: usize = 4096;

/// Allocate and touch anonymous memory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How much to map, e.g. 64M, 1G, 4096.
    #[arg(long, value_parser = parse_size)]
    size: usize,
    /// Ask for transparent huge pages (MADV_HUGEPAGE).
    #[arg(long)]
    thp: bool,
    /// Check that each page is zero when first faulted in.
    #[arg(long)]
    check_zero: bool,
    /// Fill all memory with this byte after touching it.
    #[arg(long)]
    fill: Option<u8>,
    /// Fork a child that writes to every page too (COW).
    #[arg(long)]
    fork: bool,
    /// Keep the memory this long before exiting.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    hold_ms: u64,
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
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 0),
        Some((i, _)) => {
            let shift = match s[i..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
                "K" => 10,
                "M" => 20,
                "G" => 30,
                other => return Err(format!("unknown size suffix {other:?}")),
            };
            (&s[..i], shift)
        }
    };
    let n: usize = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(1usize << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("bad size {s:?}"))
}

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, thp: bool) -> Result<Self, Error> {
        #[allow(unsafe_code)]
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Mmap(len, std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::Mmap(len, std::io::Error::other("null mapping")))?;
        if thp {
            #[allow(unsafe_code)]
            // SAFETY: advice on a range we just mapped; failure is harmless.
            unsafe {
                libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE);
            }
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        #[allow(unsafe_code)]
        // SAFETY: the mapping is valid for len bytes for as long as self,
        // readable and writable, and only reachable through &mut self.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: unmapping exactly what new() mapped; no reference outlives
        // self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
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
    let mut map = Mapping::new(args.size, args.thp)?;
    let mem = map.bytes();
    touch(mem, args.check_zero)?;
    if let Some(byte) = args.fill {
        mem.fill(byte);
    }
    if args.fork {
        fork_and_touch(mem)?;
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(args.hold_ms));
    Ok(took)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(took) => {
            println!(
                "memhog: size={} thp={} check_zero={} fork={} touch_ms={}",
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
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
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
    fn check_zero_catches_dirty_memory() {
        let mut buf = vec![0u8; 2 * PAGE];
        buf[PAGE + 7] = 9;
        assert!(matches!(
            touch(&mut buf, true),
            Err(Error::NotZero { page: 1, offset: 7 })
        ));
    }
}
