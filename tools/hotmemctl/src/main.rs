//! `hotmemctl`: boot and drive HotMem QEMU guests from the command line.
//!
//! One-shot: `hotmemctl demo`. Session mode keeps a guest running between
//! commands: `up`, then `status` / `resize` / `exec`, then `down`, all
//! pointing at the same `--dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hotmemctl::demo::{render_table, run_demo};
use hotmemctl::{parse_size, Accel, ExecOutput, HumanSize, ShutdownMethod, Vm, VmConfig, VmError};
use serde::Serialize;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(
    name = "hotmemctl",
    version,
    about = "Boot and drive HotMem QEMU guests"
)]
struct Cli {
    /// Print machine-readable JSON on stdout (progress stays on stderr).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot a guest that keeps running after hotmemctl exits.
    Up {
        #[command(flatten)]
        vm: VmArgs,
        /// Run directory (sockets, logs, qemu.pid).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show virtio-mem plugged/requested size and guest MemTotal/MemFree.
    Status {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Set the virtio-mem requested size.
    Resize {
        #[command(flatten)]
        session: SessionArgs,
        /// New requested size (e.g. 1G, 512M, 2MiB, 0).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Wait until the plugged size equals the requested size.
        #[arg(long)]
        wait: bool,
        /// Limit for --wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Run a command in the guest; exit with its status.
    Exec {
        #[command(flatten)]
        session: SessionArgs,
        /// Kill the command after this many seconds [default: 60].
        #[arg(long)]
        timeout: Option<u64>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Stop the guest (agent power-off, else QMP quit, else SIGKILL).
    Down {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Boot, plug and unplug 1 GiB with the vanilla driver, with timings.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
        /// Run directory [default: a fresh directory under $TMPDIR].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Selects a running session.
#[derive(Debug, Args)]
struct SessionArgs {
    /// Run directory given to `hotmemctl up`.
    #[arg(long)]
    dir: PathBuf,
}

/// Guest options; unset ones take [`VmConfig::new`]'s defaults.
#[derive(Debug, Args)]
struct VmArgs {
    /// Guest kernel (bzImage).
    #[arg(long, env = "HOTMEM_KERNEL")]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long, env = "HOTMEM_INITRD")]
    initrd: PathBuf,
    /// QEMU binary [default: qemu-system-x86_64].
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Accelerator: tcg or kvm [default: tcg].
    #[arg(long, env = "HOTMEM_ACCEL", value_parser = str::parse::<Accel>)]
    accel: Option<Accel>,
    /// Number of vCPUs [default: 2].
    #[arg(long)]
    smp: Option<u32>,
    /// Boot memory [default: 1G].
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// virtio-mem region size [default: 4G].
    #[arg(long, value_parser = parse_size)]
    vmem_size: Option<u64>,
    /// virtio-mem block size [default: 2M].
    #[arg(long, value_parser = parse_size)]
    vmem_block_size: Option<u64>,
    /// Initial virtio-mem requested size [default: 0].
    #[arg(long, value_parser = parse_size)]
    vmem_requested: Option<u64>,
    /// NUMA node of the virtio-mem device [default: 0].
    #[arg(long)]
    vmem_node: Option<u32>,
    /// Number of NUMA nodes [default: 1].
    #[arg(long)]
    numa_nodes: Option<u32>,
    /// Boot timeout in seconds [default: 120].
    #[arg(long)]
    boot_timeout: Option<u64>,
}

impl VmArgs {
    fn config(&self, dir: &Path) -> VmConfig {
        let mut cfg = VmConfig::new(&self.kernel, &self.initrd, dir);
        cfg.append.clone_from(&self.append);
        if let Some(qemu) = &self.qemu {
            cfg.qemu.clone_from(qemu);
        }
        cfg.accel = self.accel.unwrap_or(cfg.accel);
        cfg.smp = self.smp.unwrap_or(cfg.smp);
        cfg.memory = self.memory.unwrap_or(cfg.memory);
        cfg.vmem_size = self.vmem_size.unwrap_or(cfg.vmem_size);
        cfg.vmem_block_size = self.vmem_block_size.unwrap_or(cfg.vmem_block_size);
        cfg.vmem_requested = self.vmem_requested.unwrap_or(cfg.vmem_requested);
        cfg.vmem_node = self.vmem_node.unwrap_or(cfg.vmem_node);
        cfg.numa_nodes = self.numa_nodes.unwrap_or(cfg.numa_nodes);
        if let Some(secs) = self.boot_timeout {
            cfg.boot_timeout = Duration::from_secs(secs);
        }
        cfg
    }
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot encode JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Prints `value` as JSON, or `human(value)` as text.
fn emit<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                let error = serde_json::json!({ "error": e.to_string() });
                println!("{error}");
            }
            eprintln!("hotmemctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let json = cli.json;
    match cli.command {
        Cmd::Up { vm, dir } => up(&vm.config(&dir), json),
        Cmd::Status { session } => status(&session.dir, json),
        Cmd::Resize {
            session,
            size,
            wait,
            timeout,
        } => resize(
            &session.dir,
            size,
            wait.then_some(Duration::from_secs(timeout)),
            json,
        ),
        Cmd::Exec {
            session,
            timeout,
            argv,
        } => exec(&session.dir, timeout.map(Duration::from_secs), &argv, json),
        Cmd::Down { session } => down(&session.dir, json),
        Cmd::Demo { vm, dir } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("hotmem-demo-{}", std::process::id()))
            });
            demo(&vm.config(&dir), json)
        }
    }
}

#[derive(Serialize)]
struct UpOutput {
    dir: PathBuf,
    pid: i32,
    kernel_release: String,
    boot_ms: f64,
}

fn up(cfg: &VmConfig, json: bool) -> Result<ExitCode, CliError> {
    eprintln!(
        "booting guest ({}) in {}...",
        cfg.accel,
        cfg.run_dir.display()
    );
    let start = Instant::now();
    let vm = Vm::boot_detached(cfg)?;
    let out = UpOutput {
        dir: vm.run_dir().path().to_owned(),
        pid: vm.pid(),
        kernel_release: vm
            .boot_hello()
            .map(|hello| hello.kernel_release.clone())
            .unwrap_or_default(),
        boot_ms: start.elapsed().as_secs_f64() * 1000.0,
    };
    emit(json, &out, |o| {
        format!(
            "guest up: pid {}, kernel {}, boot {:.1} s, dir {}\n",
            o.pid,
            o.kernel_release,
            o.boot_ms / 1000.0,
            o.dir.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct StatusOutput {
    pid: i32,
    plugged: u64,
    requested: u64,
    mem_total_kib: Option<u64>,
    mem_free_kib: Option<u64>,
}

fn status(dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let mut vm = Vm::attach(dir)?;
    let meminfo = vm.meminfo()?;
    let out = StatusOutput {
        pid: vm.pid(),
        plugged: vm.plugged_size()?,
        requested: vm.requested_size()?,
        mem_total_kib: meminfo.get("MemTotal").copied(),
        mem_free_kib: meminfo.get("MemFree").copied(),
    };
    emit(json, &out, |o| {
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} kB"));
        format!(
            "qemu pid   {}\nplugged    {}\nrequested  {}\nMemTotal   {}\nMemFree    {}\n",
            o.pid,
            HumanSize(o.plugged),
            HumanSize(o.requested),
            kib(o.mem_total_kib),
            kib(o.mem_free_kib)
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ResizeOutput {
    requested: u64,
    plugged: u64,
    waited_ms: Option<f64>,
}

fn resize(dir: &Path, size: u64, wait: Option<Duration>, json: bool) -> Result<ExitCode, CliError> {
    let mut vm = Vm::attach(dir)?;
    vm.set_requested_size(size)?;
    let waited = wait
        .map(|timeout| vm.wait_plugged(size, timeout))
        .transpose()?;
    let out = ResizeOutput {
        requested: size,
        plugged: vm.plugged_size()?,
        waited_ms: waited.map(|d| d.as_secs_f64() * 1000.0),
    };
    emit(json, &out, |o| match o.waited_ms {
        Some(ms) => format!(
            "requested-size {}: plugged {} after {ms:.1} ms\n",
            HumanSize(o.requested),
            HumanSize(o.plugged)
        ),
        None => format!(
            "requested-size {} (plugged now {}; --wait waits for it)\n",
            HumanSize(o.requested),
            HumanSize(o.plugged)
        ),
    })?;
    Ok(ExitCode::SUCCESS)
}

fn exec(
    dir: &Path,
    timeout: Option<Duration>,
    argv: &[String],
    json: bool,
) -> Result<ExitCode, CliError> {
    let mut vm = Vm::attach(dir)?;
    if let Some(timeout) = timeout {
        vm.set_command_timeout(timeout);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = vm.exec(&argv)?;
    if json {
        emit(json, &out, |_| String::new())?;
    } else {
        print!("{}", out.stdout);
        eprint!("{}", out.stderr);
        if out.truncated {
            eprintln!("hotmemctl: note: the agent truncated the output");
        }
    }
    Ok(exit_code(&out))
}

/// Shell-style exit code of a guest command: its status, 128+signal, or
/// 124 (as timeout(1)) if the agent killed it.
fn exit_code(out: &ExecOutput) -> ExitCode {
    let code = match (out.timed_out, out.status, out.signal) {
        (true, _, _) => 124,
        (false, Some(status), _) => status,
        (false, None, Some(signal)) => 128 + signal,
        (false, None, None) => 1,
    };
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

#[derive(Serialize)]
struct DownOutput {
    method: ShutdownMethod,
}

fn down(dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let out = DownOutput {
        method: Vm::attach(dir)?.shutdown()?,
    };
    emit(json, &out, |o| format!("guest stopped ({:?})\n", o.method))?;
    Ok(ExitCode::SUCCESS)
}

fn demo(cfg: &VmConfig, json: bool) -> Result<ExitCode, CliError> {
    eprintln!("run dir: {}", cfg.run_dir.display());
    let report = run_demo(cfg, &mut |msg| eprintln!("{msg}"))?;
    emit(json, &report, render_table)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_args_fill_defaults() {
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "demo",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--memory",
            "2G",
            "--accel",
            "kvm",
            "--dir",
            "/tmp/d",
        ])
        .unwrap();
        let Cmd::Demo { vm, dir } = cli.command else {
            panic!("not demo");
        };
        let cfg = vm.config(&dir.unwrap());
        assert_eq!((cfg.memory, cfg.accel, cfg.smp), (2 << 30, Accel::Kvm, 2));
        assert_eq!(cfg.vmem_size, 4 << 30);
    }

    #[test]
    fn exec_takes_argv_after_double_dash() {
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "--json",
            "exec",
            "--dir",
            "d",
            "--",
            "ls",
            "-l",
            "/",
        ])
        .unwrap();
        assert!(cli.json);
        let Cmd::Exec { argv, .. } = cli.command else {
            panic!("not exec");
        };
        assert_eq!(argv, ["ls", "-l", "/"]);
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        let mut out = ExecOutput {
            status: Some(3),
            ..ExecOutput::default()
        };
        assert_eq!(exit_code(&out), ExitCode::from(3));
        out.status = None;
        out.signal = Some(9);
        assert_eq!(exit_code(&out), ExitCode::from(137));
        out.timed_out = true;
        assert_eq!(exit_code(&out), ExitCode::from(124));
    }
}
