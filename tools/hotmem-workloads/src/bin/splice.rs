//! `hotmem-splice --size 256K [--fill BYTE] FIFO`
//!
//! Maps private anonymous memory, fills it with a pattern and vmsplice()s
//! it, without `SPLICE_F_GIFT`, into the pipe `FIFO` (opened for writing;
//! some other process must hold it open for reading). The pipe then
//! references the pages themselves, not a copy, so when this process exits
//! its pages stay in use until the pipe is read or closed. Run bound to a
//! HotMem partition, it leaves that partition DRAINING: the case the slow
//! offline path exists for. The pipe is resized to hold all of `--size`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use clap::Parser;
use hotmem_units::parse_size_nonzero;

use hotmem_workloads::{Mapping, PAGE};

/// Leave anonymous pages referenced by a pipe.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Bytes to splice, a multiple of 4 KiB (e.g. 256K, 2M).
    #[arg(long, value_parser = parse_pages, default_value = "256K")]
    size: usize,
    /// Byte to fill the memory with (decimal or 0x-prefixed hex).
    #[arg(long, value_parser = parse_byte, default_value = "0xa5")]
    fill: u8,
    /// The named pipe to splice into.
    fifo: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("opening {0}: {1}")]
    Open(String, std::io::Error),
    #[error("F_SETPIPE_SZ to {0} bytes: {1}")]
    PipeSize(usize, std::io::Error),
    #[error("mmap of {0} bytes: {1}")]
    Mmap(usize, std::io::Error),
    #[error("vmsplice: {0}")]
    Vmsplice(std::io::Error),
    #[error("vmsplice took {0} of {1} bytes")]
    Short(usize, usize),
}

/// A size that is a whole number of pages.
fn parse_pages(s: &str) -> Result<usize, String> {
    let n = parse_size_nonzero(s).map_err(|e| e.to_string())?;
    if n % PAGE != 0 {
        return Err(format!("{s}: not a multiple of 4K"));
    }
    Ok(n)
}

fn parse_byte(s: &str) -> Result<u8, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("bad byte {s:?}: {e}"))
}

#[allow(unsafe_code)]
fn splice(args: &Args) -> Result<(), Error> {
    let fifo = OpenOptions::new()
        .write(true)
        .open(&args.fifo)
        .map_err(|e| Error::Open(args.fifo.display().to_string(), e))?;
    let fd = fifo.as_raw_fd();
    let size = libc::c_int::try_from(args.size)
        .map_err(|_| Error::PipeSize(args.size, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: fcntl on a file descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } < 0 {
        return Err(Error::PipeSize(args.size, std::io::Error::last_os_error()));
    }
    let mut map = Mapping::anonymous(args.size).map_err(|e| Error::Mmap(args.size, e))?;
    map.bytes().fill(args.fill);
    let iov = libc::iovec {
        iov_base: map.as_ptr().cast(),
        iov_len: map.len(),
    };
    // SAFETY: iov describes our mapping; vmsplice only reads it. Without
    // SPLICE_F_GIFT the pipe takes references to the pages.
    let n = unsafe { libc::vmsplice(fd, &iov, 1, 0) };
    if n < 0 {
        return Err(Error::Vmsplice(std::io::Error::last_os_error()));
    }
    let n = n.unsigned_abs();
    if n != args.size {
        return Err(Error::Short(n, args.size));
    }
    // The pipe holds the pages either way; the mapping simply lives until
    // the process exits.
    std::mem::forget(map);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match splice(&args) {
        Ok(()) => {
            println!("spliced={} fill=0x{:02x}", args.size, args.fill);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotmem-splice: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_whole_pages() {
        assert_eq!(parse_pages("256K"), Ok(256 << 10));
        assert_eq!(parse_pages("2MiB"), Ok(2 << 20));
        assert!(parse_pages("6K").unwrap_err().contains("multiple of 4K"));
        assert!(parse_pages("0").is_err());
        assert!(Args::try_parse_from(["splice", "--size", "1000", "f"]).is_err());
    }
}
