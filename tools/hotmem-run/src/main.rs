//! `hotmem-run [--nonblock | --timeout-ms MS] [--verbose] -- COMMAND [ARGS...]`
//!
//! Binds itself to a free HotMem partition, then execs COMMAND, which
//! inherits the binding (and so do its children). Exit status 125 means the
//! binding failed, 126/127 that COMMAND could not be run, as with `env`.

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
    /// Wait at most this long for a free partition.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print the partition id to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let wait = match (args.nonblock, args.timeout_ms) {
        (true, _) => Wait::No,
        (false, Some(ms)) => Wait::Millis(ms),
        (false, None) => Wait::Forever,
    };
    match bind(wait) {
        Ok(id) if args.verbose => eprintln!("hotmem-run: bound to partition {id}"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("hotmem-run: {e}");
            return ExitCode::from(125);
        }
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
