//! `hotmem-filework --file PATH --file-size 32M --anon 16M [--rounds N]
//! [--hold DURATION]`
//!
//! A function instance that exercises the file-backed and fork paths:
//!
//! 1. writes PATH (`--file-size` bytes) unless it exists with that size,
//!    then reads it with `read(2)` `--rounds` times (page cache, which
//!    HotMem keeps in ordinary memory, shared by all instances);
//! 2. maps it `MAP_PRIVATE` and writes one byte per page (copy-on-write
//!    copies of file pages: private anonymous memory, from the partition);
//! 3. forks a child that maps and touches `--anon` bytes of anonymous memory
//!    (the child inherits the parent's partition) and exits;
//! 4. holds everything for `--hold` (e.g. `10s`).
//!
//! Prints one `key=value` summary line.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hotmem_units::{parse_duration, parse_size_nonzero};

use hotmem_workloads::{Mapping, PAGE};

/// Page-cache reads, a private file mapping and a forked child.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The data file (created if missing or of another size).
    #[arg(long, default_value = "/tmp/hotmem-filework.dat")]
    file: PathBuf,
    /// Size of the data file.
    #[arg(long, value_parser = parse_size_nonzero, default_value = "16M")]
    file_size: usize,
    /// Anonymous memory the forked child touches.
    #[arg(long, value_parser = parse_size_nonzero, default_value = "16M")]
    anon: usize,
    /// How many times to read the whole file.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Keep everything this long before exiting (e.g. 10s).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    hold: Duration,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("read {got} bytes of {path}, expected {want}")]
    Short {
        path: String,
        got: usize,
        want: usize,
    },
    #[error("the child failed (wait status {0:#x})")]
    Child(i32),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// Creates the data file with a recognisable pattern unless it is there.
fn ensure_file(args: &Args) -> Result<(), Error> {
    let name = args.file.display().to_string();
    if fs::metadata(&args.file).is_ok_and(|m| m.len() == args.file_size as u64) {
        return Ok(());
    }
    let mut f = File::create(&args.file).map_err(io(format!("create {name}")))?;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut left = args.file_size;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])
            .map_err(io(format!("write {name}")))?;
        left -= n;
    }
    Ok(())
}

/// Reads the whole file; returns a checksum.
fn read_file(args: &Args) -> Result<u64, Error> {
    let name = args.file.display().to_string();
    let mut f = File::open(&args.file).map_err(io(format!("open {name}")))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut got, mut sum) = (0usize, 0u64);
    loop {
        let n = f.read(&mut buf).map_err(io(format!("read {name}")))?;
        if n == 0 {
            break;
        }
        got += n;
        sum = buf[..n]
            .iter()
            .fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
    }
    if got != args.file_size {
        return Err(Error::Short {
            path: name,
            got,
            want: args.file_size,
        });
    }
    Ok(sum)
}

/// Writes one byte per page (faults each page in, COW for files).
fn touch(map: &mut Mapping, value: u8) {
    for page in map.bytes().chunks_mut(PAGE) {
        // Volatile: the write is the point, not the value.
        #[allow(unsafe_code)]
        // SAFETY: a valid, exclusive reference to a byte of the mapping.
        unsafe {
            std::ptr::write_volatile(&mut page[0], value)
        };
    }
}

/// Forks a child that touches `anon` bytes and exits.
fn fork_child(anon: usize) -> Result<(), Error> {
    #[allow(unsafe_code)]
    // SAFETY: single-threaded program; the child only maps, touches and
    // calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Io("fork".into(), std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = match Mapping::anonymous(anon) {
            Ok(mut m) => {
                touch(&mut m, 3);
                0
            }
            Err(_) => 1,
        };
        #[allow(unsafe_code)]
        // SAFETY: _exit never returns and runs no destructors.
        unsafe {
            libc::_exit(code)
        };
    }
    let mut status = 0;
    #[allow(unsafe_code)]
    // SAFETY: waiting for our own child with a valid status pointer.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    if ret != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(Error::Child(status));
    }
    Ok(())
}

fn run(args: &Args) -> Result<String, Error> {
    let start = Instant::now();
    ensure_file(args)?;
    let mut sum = 0;
    for _ in 0..args.rounds {
        sum = read_file(args)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .open(&args.file)
        .map_err(io(format!("open {}", args.file.display())))?;
    let mut private = Mapping::private_file(args.file_size, file.as_fd())
        .map_err(io(format!("mmap {} bytes", args.file_size)))?;
    touch(&mut private, 7);
    fork_child(args.anon)?;
    let took = start.elapsed();
    std::thread::sleep(args.hold);
    drop(private);
    Ok(format!(
        "filework: file_size={} rounds={} anon={} checksum={sum} work_ms={}",
        args.file_size,
        args.rounds,
        args.anon,
        took.as_millis()
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotmem-filework: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_take_the_common_syntax() {
        let argv = [
            "filework", "--file", "f", "--anon", "2MiB", "--hold", "250ms",
        ];
        let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (args.anon, args.hold),
            (2 << 20, Duration::from_millis(250))
        );
        assert!(Args::try_parse_from(["filework", "--file", "f", "--anon", "0"]).is_err());
        assert!(Args::try_parse_from(["filework", "--file", "f", "--hold", "250"]).is_err());
    }

    #[test]
    fn runs_on_the_host() {
        let dir = std::env::temp_dir().join(format!("filework-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("d");
        let argv = [
            "filework",
            "--file",
            file.to_str().unwrap_or(""),
            "--file-size",
            "300K",
            "--anon",
            "1M",
        ];
        let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        let out = run(&args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("file_size=307200"), "{out}");
        // The private mapping's writes never reach the file.
        let data = fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((data[0], data[1], data[4096]), (0, 1, (4096 % 251) as u8));
        // A second run reuses the file; a truncated file is rewritten.
        assert!(run(&args).is_ok());
        fs::write(&file, b"short").unwrap_or_else(|e| panic!("{e}"));
        assert!(run(&args).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
