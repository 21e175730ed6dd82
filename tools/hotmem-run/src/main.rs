//! `hotmem-run [--nonblock | --timeout DURATION | --no-bind] [--verbose]
//! [--cgroup DIR] [--partition-file PATH] [--user UID[:GID]] [--seccomp]
//! -- COMMAND [ARGS...]`
//!
//! Binds itself to a free HotMem partition, then execs COMMAND, which
//! inherits the binding (and so do its children). Exit status 125 means the
//! binding (or joining the cgroup, or dropping privileges) failed, 126/127
//! that COMMAND could not be run, as with `env`.
//!
//! In order: `--cgroup DIR` moves the process into the cgroup v2 directory
//! DIR (so the function's memory limit applies from its first allocation);
//! it binds (needs `CAP_SYS_RESOURCE`); `--user` drops to that user with no
//! supplementary groups; `no_new_privs` is set; `--seccomp` installs the
//! instance filter (no `prctl(PR_HOTMEM)`, `ptrace`, mounts, namespaces);
//! `--partition-file PATH` (opened before dropping privileges) receives the
//! partition id, so the guest agent knows where the instance runs and that
//! it is about to exec.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use hotmem_run::privs::{self, User};
use hotmem_run::{bind, Wait};
use hotmem_units::parse_duration;

/// Run a command bound to a HotMem partition.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Fail at once if no partition is free.
    #[arg(long, conflicts_with = "timeout")]
    nonblock: bool,
    /// Do not bind: only join --cgroup and exec (the same launcher for
    /// unbound instances, e.g. on hotmem=off guests).
    #[arg(long, conflicts_with_all = ["nonblock", "timeout"])]
    no_bind: bool,
    /// Wait at most this long for a free partition (e.g. 10s, 200ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print the partition id to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Join this cgroup v2 directory before binding.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Write the partition id (and a newline) to this file once bound, or
    /// `none` with --no-bind, right before exec: a launcher waiting for it
    /// knows the instance is about to run, bound or not.
    #[arg(long, value_name = "PATH")]
    partition_file: Option<PathBuf>,
    /// After binding, run as this user and group (numeric), with no
    /// supplementary groups.
    #[arg(long, value_name = "UID[:GID]")]
    user: Option<User>,
    /// Install the instance seccomp filter before exec.
    #[arg(long)]
    seccomp: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

/// Exit status for a failure before exec.
const SETUP_FAILED: u8 = 125;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hotmem-run: {msg}");
    ExitCode::from(SETUP_FAILED)
}

/// Joins the cgroup, binds, drops privileges; returns what to write to the
/// partition file.
fn setup(args: &Args) -> Result<String, ExitCode> {
    if let Some(dir) = &args.cgroup {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, format!("{}\n", std::process::id()))
            .map_err(|e| fail(format!("cannot join cgroup {}: {e}", dir.display())))?;
    }
    let bound = if args.no_bind {
        "none".to_owned()
    } else {
        let wait = match (args.nonblock, args.timeout) {
            (true, _) => Wait::No,
            (false, Some(t)) => Wait::Millis(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            (false, None) => Wait::Forever,
        };
        let id = bind(wait).map_err(fail)?;
        if args.verbose {
            eprintln!("hotmem-run: bound to partition {id}");
        }
        id.to_string()
    };
    if let Some(user) = args.user {
        privs::switch_user(user).map_err(fail)?;
    }
    privs::set_no_new_privs().map_err(fail)?;
    if args.seccomp {
        privs::apply_instance_filter().map_err(fail)?;
    }
    Ok(bound)
}

fn open_partition_file(path: &Path) -> Result<File, ExitCode> {
    File::create(path).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Opened while still privileged: the agent's run directory is root's.
    let partition_file = match args.partition_file.as_deref().map(open_partition_file) {
        None => None,
        Some(Ok(file)) => Some(file),
        Some(Err(code)) => return code,
    };
    let bound = match setup(&args) {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    if let (Some(mut file), Some(path)) = (partition_file, &args.partition_file) {
        if let Err(e) = file.write_all(format!("{bound}\n").as_bytes()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    let Some((program, rest)) = args.command.split_first() else {
        return ExitCode::from(SETUP_FAILED);
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
