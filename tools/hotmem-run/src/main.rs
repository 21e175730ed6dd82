//! `hotmem-run [--nonblock | --timeout-ms MS | --no-bind] [--verbose]
//! [--cgroup DIR] [--partition-file PATH] -- COMMAND [ARGS...]`
//!
//! Binds itself to a free HotMem partition, then execs COMMAND, which
//! inherits the binding (and so do its children). Exit status 125 means the
//! binding (or joining the cgroup) failed, 126/127 that COMMAND could not be
//! run, as with `env`.
//!
//! `--cgroup DIR` first moves the process into the cgroup v2 directory DIR
//! (so the function's memory limit applies from its first allocation);
//! `--partition-file PATH` writes the partition id to PATH once bound (the
//! guest agent reads it to report where an instance runs).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use clap::Parser;
use hotmem_run::{bind, Wait};

/// Run a command bound to a HotMem partition.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Fail at once if no partition is free.
    #[arg(long, conflicts_with = "timeout_ms")]
    nonblock: bool,
    /// Do not bind: only join --cgroup and exec (the same launcher for
    /// unbound instances, e.g. on hotmem=off guests).
    #[arg(long, conflicts_with_all = ["nonblock", "timeout_ms"])]
    no_bind: bool,
    /// Wait at most this long for a free partition.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print the partition id to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Join this cgroup v2 directory before binding.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<std::path::PathBuf>,
    /// Write the partition id (and a newline) to this file once bound, or
    /// `none` with --no-bind, right before exec: a launcher waiting for it
    /// knows the instance is about to run, bound or not.
    #[arg(long, value_name = "PATH")]
    partition_file: Option<std::path::PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn write_partition_file(path: Option<&std::path::Path>, what: &str) -> Result<(), ExitCode> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, format!("{what}\n")).map_err(|e| {
        eprintln!("hotmem-run: cannot write {}: {e}", path.display());
        ExitCode::from(125)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let wait = match (args.nonblock, args.timeout_ms) {
        (true, _) => Wait::No,
        (false, Some(ms)) => Wait::Millis(ms),
        (false, None) => Wait::Forever,
    };
    if let Some(dir) = &args.cgroup {
        let procs = dir.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, format!("{}\n", std::process::id())) {
            eprintln!("hotmem-run: cannot join cgroup {}: {e}", dir.display());
            return ExitCode::from(125);
        }
    }
    if !args.no_bind {
        let id = match bind(wait) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("hotmem-run: {e}");
                return ExitCode::from(125);
            }
        };
        if args.verbose {
            eprintln!("hotmem-run: bound to partition {id}");
        }
        if let Err(code) = write_partition_file(args.partition_file.as_deref(), &id.to_string()) {
            return code;
        }
    } else if let Err(code) = write_partition_file(args.partition_file.as_deref(), "none") {
        return code;
    }
    let Some((program, rest)) = args.command.split_first() else {
        return ExitCode::from(125);
    };
    let err = Command::new(program).args(rest).exec();
    eprintln!(
        "hotmem-run: cannot run {}: {err}",
        program.to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
