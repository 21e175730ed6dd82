//! `hotmemctl`: boot and drive HotMem QEMU guests from the command line.
//!
//! One-shot: `hotmemctl demo` (the scale-up/scale-down scenario on a HotMem
//! and a vanilla guest, `hotmem_bench::scenario`), `hotmemctl bench` (the
//! paper's experiments), `hotmemctl plug-demo` (plug and unplug 1 GiB with
//! the C driver, `hotmem_bench::plug_demo`). Session mode keeps a guest
//! running between commands: `up`, then `status` / `resize` / `exec` /
//! `scale-up` / ..., then `down`, all pointing at the same `--dir`.
//!
//! Durations are humantime's (`--timeout 30s`, `--wait 1m`), sizes binary
//! (`--size 512M`). `-v` logs QMP and agent traffic on stderr (`-vv` more;
//! `RUST_LOG` overrides). Errors and their exit codes: [`error`].

mod error;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hotmem_bench::bench::{self as benchmarks, BenchOptions};
use hotmem_bench::plug_demo::{render_table, run_plug_demo};
use hotmem_bench::scenario::{self, ScenarioParams};
use hotmem_host::agent::EventCursor;
use hotmem_host::scale::{self, ScaleDownOptions, ScaleUpOptions, Trigger};
use hotmem_host::{
    parse_duration, parse_size, Accel, AgentTransport, ExecOutput, Guest, HumanSize, MemoryDevice,
    ShutdownMethod, Vm, VmConfig,
};
use hotmem_proto::EventList;
use serde::Serialize;

use error::CliError;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(
    name = "hotmemctl",
    version,
    about = "Boot and drive HotMem QEMU guests",
    after_help = "Durations: 30s, 1m30s, 250ms (a unit is required). Sizes: 4096, 512M, 1G.\n\
Exit status on errors, by kind: usage 2, config 78, io 74, session 69, lock 75, \
timeout 79, vmm 71, agent 76, command 72, scale 65; `exec` passes the guest \
command's status through (124: killed for its timeout, 128+N: signal N)."
)]
struct Cli {
    /// Print machine-readable JSON on stdout (progress stays on stderr);
    /// errors as {"error":{"kind","message","diagnostics"}}.
    #[arg(long, global = true)]
    json: bool,

    /// Log QMP and agent traffic on stderr (-vv: everything); RUST_LOG
    /// (e.g. `hotmem_host::qmp=debug`) overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

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
        /// Limit for --wait (e.g. 30s, 2m).
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        timeout: Duration,
    },
    /// Run a command in the guest; exit with its status.
    Exec {
        #[command(flatten)]
        session: SessionArgs,
        /// Kill the command after this long (e.g. 30s) [default: 60s].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Stop the guest (agent power-off, else QMP quit, else SIGKILL).
    Down {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Start a function instance: plug one partition if none is free,
    /// wait for it, start the command bound to it; report latencies.
    ScaleUp {
        #[command(flatten)]
        session: SessionArgs,
        /// Memory limit of the instance (cgroup memory.max), e.g. 128M.
        #[arg(long, value_parser = parse_size)]
        memory_limit: Option<u64>,
        /// Bytes to plug per instance in a hotmem=off (vanilla) guest.
        #[arg(long, value_parser = parse_size, default_value = "128M")]
        unit: u64,
        /// Plug a partition even if one is free.
        #[arg(long)]
        force_plug: bool,
        /// Limit for plugging and for the partition to become free.
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        timeout: Duration,
        /// The function's command (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Stop an instance and unplug its partition; report latencies.
    ScaleDown {
        #[command(flatten)]
        session: SessionArgs,
        /// The instance id (from scale-up or `instances`).
        #[arg(long)]
        instance: u64,
        /// How to unplug: QMP requested-size, or the guest driver's sysfs
        /// trigger (see --sysfs-trigger).
        #[arg(long, value_enum, default_value_t = TriggerArg::Qmp)]
        trigger: TriggerArg,
        /// The guest file written for `--trigger sysfs`; `{partition}` is
        /// replaced by the instance's partition id.
        #[arg(long, env = "HOTMEM_SYSFS_TRIGGER", default_value = DEFAULT_SYSFS_TRIGGER)]
        sysfs_trigger: String,
        /// What `--trigger sysfs` writes; `{partition}` is replaced by the
        /// instance's partition id.
        #[arg(long, default_value = "{partition}")]
        sysfs_value: String,
        /// Stop the instance but keep its memory plugged.
        #[arg(long)]
        keep_plugged: bool,
        /// Bytes to unplug per instance in a hotmem=off (vanilla) guest.
        #[arg(long, value_parser = parse_size, default_value = "128M")]
        unit: u64,
        /// SIGTERM grace period before SIGKILL (e.g. 500ms).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: Duration,
        /// Limit for the unplug.
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        timeout: Duration,
    },
    /// Unplug one partition (or --unit in a vanilla guest) without stopping
    /// an instance, e.g. a free partition left by `scale-down --keep-plugged`.
    Unplug {
        #[command(flatten)]
        session: SessionArgs,
        /// The partition, for `--trigger sysfs` (`{partition}`).
        #[arg(long)]
        partition: Option<u64>,
        /// How to unplug.
        #[arg(long, value_enum, default_value_t = TriggerArg::Qmp)]
        trigger: TriggerArg,
        /// The guest file written for `--trigger sysfs`.
        #[arg(long, env = "HOTMEM_SYSFS_TRIGGER", default_value = DEFAULT_SYSFS_TRIGGER)]
        sysfs_trigger: String,
        /// What `--trigger sysfs` writes.
        #[arg(long, default_value = "{partition}")]
        sysfs_value: String,
        /// Bytes to unplug in a hotmem=off (vanilla) guest.
        #[arg(long, value_parser = parse_size, default_value = "128M")]
        unit: u64,
        /// Limit for the unplug.
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        timeout: Duration,
    },
    /// List the guest's function instances with partition and memory use.
    Instances {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Print the instance events (exits, OOM kills) queued in the agent.
    Events {
        #[command(flatten)]
        session: SessionArgs,
        /// Wait up to this long for an event if none is queued (e.g. 10s).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
    /// Show the HotMem partitions and offline memory blocks.
    Partitions {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Scale function instances up and down on a HotMem guest, then on a
    /// vanilla virtio-mem guest; print a table per step and the ratios.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
        /// Where the run directory is made: a fresh, private (0700) one per
        /// run [default: $TMPDIR].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of function instances.
        #[arg(long, default_value_t = 4)]
        instances: usize,
        /// Memory each instance allocates and touches.
        #[arg(long, value_parser = parse_size, default_value = "96M")]
        instance_mem: u64,
        /// virtio-mem driver of the HotMem guest: the Rust HotMem driver
        /// (plugs and onlines whole partitions itself) or the C driver (the
        /// agent onlines its blocks into HotMem).
        #[arg(long, default_value = scenario::RUST_DRIVER,
              value_parser = [scenario::C_DRIVER, scenario::RUST_DRIVER])]
        hotmem_driver: String,
    },
    /// The paper's experiments (Fig. 5, 6, 7, 9, a 1 GiB comparison and a
    /// reclaim-size sweep), HotMem side by side with vanilla virtio-mem,
    /// each run several times: JSON with every sample, SVG plots and a
    /// summary of medians, ranges and ratios.
    Bench {
        #[command(flatten)]
        vm: VmArgs,
        /// Where the guests' run directory is made: a fresh, private (0700)
        /// one per run [default: $TMPDIR].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where bench.json and the plots go.
        #[arg(long, default_value = "build/bench")]
        out: PathBuf,
        /// Fewer sizes and levels, 3 runs, a sweep up to 2 GiB.
        #[arg(long)]
        quick: bool,
        /// Runs of every experiment, HotMem and vanilla alternating
        /// [default: 5, 3 with --quick].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
        runs: Option<u16>,
        /// virtio-mem driver of the HotMem guests.
        #[arg(long, default_value = scenario::RUST_DRIVER,
              value_parser = [scenario::C_DRIVER, scenario::RUST_DRIVER])]
        hotmem_driver: String,
        /// Only these experiments (comma-separated: fig5,fig6,fig7,fig9,compare,sweep).
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(benchmarks::EXPERIMENTS))]
        only: Vec<String>,
    },
    /// Re-print the summary of a saved bench.json and redraw its plots.
    BenchReport {
        /// The bench.json written by `bench`.
        #[arg(long, default_value = "build/bench/bench.json")]
        report: PathBuf,
        /// Where the plots go.
        #[arg(long, default_value = "build/bench")]
        out: PathBuf,
    },
    /// Boot, plug and unplug 1 GiB with the C virtio-mem driver, with
    /// timings.
    PlugDemo {
        #[command(flatten)]
        vm: VmArgs,
        /// Where the run directory is made: a fresh, private (0700) one per
        /// run [default: $TMPDIR].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--trigger` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TriggerArg {
    /// QMP qom-set requested-size.
    Qmp,
    /// The guest driver's sysfs trigger.
    Sysfs,
}

/// Default `--sysfs-trigger`: the HotMem virtio-mem driver's `unplug`
/// attribute (takes a partition id) of the virtio-mem device, which is
/// `virtio1` in hotmemctl's guests (`virtio0` is the agent's serial port).
/// See Documentation/admin-guide/mm/hotmem-virtio-mem.rst.
const DEFAULT_SYSFS_TRIGGER: &str = "/sys/bus/virtio/devices/virtio1/hotmem/unplug";

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
    /// Do not reserve swap space for the virtio-mem region (QEMU
    /// `reserve=off`): lets a region larger than host memory be mapped.
    #[arg(long)]
    vmem_no_reserve: bool,
    /// Preallocate each block the device plugs (QEMU `prealloc=on`).
    #[arg(long)]
    vmem_prealloc: bool,
    /// Number of NUMA nodes [default: 1].
    #[arg(long)]
    numa_nodes: Option<u32>,
    /// Boot timeout (e.g. 5m) [default: 120s].
    #[arg(long, value_parser = parse_duration)]
    boot_timeout: Option<Duration>,
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
        cfg.vmem_reserve = !self.vmem_no_reserve;
        cfg.vmem_prealloc = self.vmem_prealloc;
        cfg.numa_nodes = self.numa_nodes.unwrap_or(cfg.numa_nodes);
        if let Some(timeout) = self.boot_timeout {
            cfg.boot_timeout = timeout;
        }
        cfg
    }
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

/// `-v`: QMP and agent traffic; `-vv`: everything at trace level;
/// `RUST_LOG` wins over both.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,hotmem_host=debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    // Guests of a demo, bench or test run die with it, also on SIGTERM or
    // SIGHUP (where destructors do not run), not only on ^C.
    if let Err(e) = ctrlc::set_handler(|| {
        hotmem_host::vm::kill_owned_guests();
        std::process::exit(130);
    }) {
        eprintln!("hotmemctl: warning: no signal handler, guests may outlive a killed run: {e}");
    }
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!("{}", e.to_json());
            }
            eprintln!("hotmemctl: error: {e}");
            e.exit_code()
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
        } => resize(&session.dir, size, wait.then_some(timeout), json),
        Cmd::Exec {
            session,
            timeout,
            argv,
        } => exec(&session.dir, timeout, &argv, json),
        Cmd::Down { session } => down(&session.dir, json),
        Cmd::ScaleUp {
            session,
            memory_limit,
            unit,
            force_plug,
            timeout,
            argv,
        } => {
            let mut opts = ScaleUpOptions::new(argv);
            opts.memory_limit = memory_limit;
            opts.vanilla_unit = unit;
            opts.force_plug = force_plug;
            opts.timeout = timeout;
            let mut vm = Vm::attach(&session.dir)?;
            let _lock = vm.lock(LOCK_TIMEOUT)?;
            let report = scale::scale_up(&mut vm, &opts)?;
            emit(json, &report, scale::render_up)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ScaleDown {
            session,
            instance,
            trigger,
            sysfs_trigger,
            sysfs_value,
            keep_plugged,
            unit,
            grace,
            timeout,
        } => {
            let mut opts = ScaleDownOptions::new(instance);
            opts.trigger = match trigger {
                TriggerArg::Qmp => Trigger::Qmp,
                TriggerArg::Sysfs => Trigger::Sysfs {
                    path: sysfs_trigger,
                    value: sysfs_value,
                },
            };
            opts.keep_plugged = keep_plugged;
            opts.vanilla_unit = unit;
            opts.grace = grace;
            opts.timeout = timeout;
            let mut vm = Vm::attach(&session.dir)?;
            let _lock = vm.lock(LOCK_TIMEOUT)?;
            let report = scale::scale_down(&mut vm, &opts)?;
            emit(json, &report, scale::render_down)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unplug {
            session,
            partition,
            trigger,
            sysfs_trigger,
            sysfs_value,
            unit,
            timeout,
        } => {
            let trigger = match trigger {
                TriggerArg::Qmp => Trigger::Qmp,
                TriggerArg::Sysfs => Trigger::Sysfs {
                    path: sysfs_trigger,
                    value: sysfs_value,
                },
            };
            let mut vm = Vm::attach(&session.dir)?;
            let _lock = vm.lock(LOCK_TIMEOUT)?;
            let report = scale::unplug(&mut vm, partition, &trigger, unit, timeout)?;
            emit(json, &report, scale::render_unplug)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Instances { session } => {
            let mut vm = Vm::attach(&session.dir)?;
            warn_about_agent(&mut vm)?;
            let list = scale::list_instances(&mut vm)?;
            emit(json, &list, scale::render_instances)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events { session, wait } => {
            let mut vm = Vm::attach(&session.dir)?;
            let events = next_events(&mut vm, wait)?;
            emit(json, &events, |e| {
                let mut out = String::new();
                for ev in &e.events {
                    out.push_str(&format!(
                        "#{} {:?} instance {} partition {:?} at {} ms{}\n",
                        ev.seq,
                        ev.kind,
                        ev.instance,
                        ev.partition,
                        ev.uptime_ms,
                        ev.exit
                            .as_ref()
                            .map(|x| format!(
                                ": status {:?} signal {:?} oom_killed {} stopped {}",
                                x.status, x.signal, x.oom_killed, x.stopped
                            ))
                            .unwrap_or_default()
                    ));
                }
                if e.dropped > 0 {
                    out.push_str(&format!("({} older events dropped)\n", e.dropped));
                }
                out
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Partitions { session } => {
            let parts = scale::partitions(&mut Vm::attach(&session.dir)?)?;
            emit(json, &parts, |p| {
                let mut out = format!(
                    "hotmem {}, partition size {}, {} offline blocks, states {:?}\n",
                    if p.enabled { "on" } else { "off" },
                    HumanSize(p.partition_size),
                    p.offline_blocks,
                    scale::partition_states(p)
                );
                for part in &p.partitions {
                    out.push_str(&format!(
                        "part{:<4} {:<10} users {} used_pages {} online_blocks {}\n",
                        part.id, part.state, part.users, part.used_pages, part.online_blocks
                    ));
                }
                out
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            vm,
            dir,
            instances,
            instance_mem,
            hotmem_driver,
        } => {
            let dir = fresh_run_dir(dir, "demo")?;
            let params = ScenarioParams {
                instances,
                instance_mem,
                hotmem_driver,
            };
            demo(&vm.config(&dir), params, json)
        }
        Cmd::BenchReport { report, out } => {
            let report = benchmarks::read_report(&report)?;
            let files = benchmarks::write_outputs(&report, &out)?;
            emit(json, &report, benchmarks::render_summary)?;
            for f in files {
                eprintln!("wrote {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            vm,
            dir,
            out,
            quick,
            runs,
            hotmem_driver,
            only,
        } => {
            let opts = BenchOptions {
                base: vm.config(&fresh_run_dir(dir, "bench")?),
                out,
                quick,
                only,
                hotmem_driver,
                runs: runs.map(usize::from),
            };
            bench(&opts, json)
        }
        Cmd::PlugDemo { vm, dir } => {
            let dir = fresh_run_dir(dir, "plug-demo")?;
            plug_demo(&vm.config(&dir), json)
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

/// How long a command waits for another hotmemctl on the same guest.
const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// The events since the last `hotmemctl events` on this run dir: the
/// cursor saved there acknowledges what that call printed, and is moved
/// past what this one gets (kept if the answer is lost, so nothing is).
fn next_events(vm: &mut Vm, wait: Duration) -> Result<EventList, CliError> {
    let _lock = vm.lock(LOCK_TIMEOUT)?;
    let path = vm.run_dir().event_cursor();
    let mut cursor: EventCursor = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let events = vm.events(&mut cursor, wait)?;
    std::fs::write(&path, serde_json::to_string(&cursor)? + "\n").map_err(|source| {
        CliError::Io {
            what: format!("writing {}", path.display()),
            source,
        }
    })?;
    Ok(events)
}

/// Prints what [`Vm::check_agent`] found wrong, if anything.
fn warn_about_agent(vm: &mut Vm) -> Result<(), CliError> {
    for warning in vm.check_agent()?.warnings() {
        eprintln!("hotmemctl: warning: {warning}");
    }
    Ok(())
}

fn up(cfg: &VmConfig, json: bool) -> Result<ExitCode, CliError> {
    eprintln!(
        "booting guest ({}) in {}...",
        cfg.accel,
        cfg.run_dir.display()
    );
    let start = Instant::now();
    let mut vm = Vm::boot_detached(cfg)?;
    warn_about_agent(&mut vm)?;
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
    warn_about_agent(&mut vm)?;
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
    let _lock = vm.lock(LOCK_TIMEOUT)?;
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

/// Makes a new run directory `hotmem-<what>-<time>-<pid>` under `parent`
/// (default `$TMPDIR`), private to this user (mode 0700); an existing one is
/// never reused, so no other user can plant sockets or logs in it.
fn fresh_run_dir(parent: Option<PathBuf>, what: &str) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = parent.unwrap_or_else(std::env::temp_dir);
    let io = |what: String| move |source| CliError::Io { what, source };
    std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = parent.join(format!("hotmem-{what}-{stamp}-{}", std::process::id()));
    // `create`, not `create_dir_all`: fails if it exists.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn demo(cfg: &VmConfig, params: ScenarioParams, json: bool) -> Result<ExitCode, CliError> {
    eprintln!("run dir: {}", cfg.run_dir.display());
    let started = Instant::now();
    let report = scenario::run_side_by_side(cfg, params, &mut |msg| {
        eprintln!("[{:6.1} s] {msg}", started.elapsed().as_secs_f64());
    })?;
    let out = cfg.run_dir.join("demo.json");
    scenario::write_json(&out, &report)?;
    emit(json, &report, scenario::render_side_by_side)?;
    eprintln!("results: {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn bench(opts: &BenchOptions, json: bool) -> Result<ExitCode, CliError> {
    if opts.base.accel == Accel::Tcg {
        eprintln!("note: guests run under TCG (software emulation); compare the ratios");
    }
    let started = Instant::now();
    eprintln!("run dir: {}", opts.base.run_dir.display());
    let report = benchmarks::run_bench(opts, &mut |msg| {
        eprintln!("[{:6.1} s] {msg}", started.elapsed().as_secs_f64());
    })?;
    let files = benchmarks::write_outputs(&report, &opts.out)?;
    emit(json, &report, benchmarks::render_summary)?;
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn plug_demo(cfg: &VmConfig, json: bool) -> Result<ExitCode, CliError> {
    eprintln!("run dir: {}", cfg.run_dir.display());
    let report = run_plug_demo(cfg, &mut |msg| eprintln!("{msg}"))?;
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
        let Cmd::Demo { vm, dir, .. } = cli.command else {
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
    fn scale_commands_parse() {
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "scale-up",
            "--dir",
            "d",
            "--memory-limit",
            "128M",
            "--",
            "hotmem-memhog",
            "--size",
            "64M",
        ])
        .unwrap();
        let Cmd::ScaleUp {
            memory_limit, argv, ..
        } = cli.command
        else {
            panic!("not scale-up");
        };
        assert_eq!(memory_limit, Some(128 << 20));
        assert_eq!(argv, ["hotmem-memhog", "--size", "64M"]);
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "scale-down",
            "--dir",
            "d",
            "--instance",
            "3",
            "--trigger",
            "sysfs",
            "--sysfs-trigger",
            "/sys/x/{partition}",
        ])
        .unwrap();
        let Cmd::ScaleDown {
            instance,
            trigger,
            sysfs_trigger,
            ..
        } = cli.command
        else {
            panic!("not scale-down");
        };
        assert_eq!((instance, trigger), (3, TriggerArg::Sysfs));
        assert_eq!(sysfs_trigger, "/sys/x/{partition}");
        assert!(Cli::try_parse_from(["hotmemctl", "scale-down", "--dir", "d"]).is_err());
    }

    #[test]
    fn help_lists_every_error_kind_with_its_exit_status() {
        let help = Cli::command().render_help().to_string();
        for kind in error::Kind::ALL {
            let name = serde_json::to_value(kind).unwrap();
            let entry = format!("{} {}", name.as_str().unwrap(), kind.exit_status());
            assert!(help.contains(&entry), "{entry} missing from:\n{help}");
        }
    }

    #[test]
    fn durations_are_humantime_everywhere() {
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "resize",
            "--dir",
            "d",
            "--size",
            "1G",
            "--wait",
            "--timeout",
            "1m30s",
        ])
        .unwrap();
        let Cmd::Resize { timeout, .. } = cli.command else {
            panic!("not resize");
        };
        assert_eq!(timeout, Duration::from_secs(90));
        let cli = Cli::try_parse_from([
            "hotmemctl",
            "-v",
            "scale-down",
            "--dir",
            "d",
            "--instance",
            "1",
            "--grace",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 1);
        let Cmd::ScaleDown { grace, timeout, .. } = cli.command else {
            panic!("not scale-down");
        };
        assert_eq!(
            (grace, timeout),
            (Duration::from_millis(250), Duration::from_secs(120))
        );
        // A bare number is ambiguous and refused.
        for argv in [
            &[
                "hotmemctl",
                "exec",
                "--dir",
                "d",
                "--timeout",
                "30",
                "--",
                "true",
            ][..],
            &["hotmemctl", "events", "--dir", "d", "--wait", "10"][..],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn run_dirs_are_fresh_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = std::env::temp_dir().join(format!("hotmemctl-test-{}", std::process::id()));
        let a = fresh_run_dir(Some(parent.clone()), "demo").unwrap();
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(a.starts_with(&parent));
        // A second run never gets the first one's directory: within the
        // same second the name repeats and is refused, later it differs.
        match fresh_run_dir(Some(parent.clone()), "demo") {
            Ok(b) => assert_ne!(a, b),
            Err(e) => assert!(e.to_string().contains("exists"), "{e}"),
        }
        std::fs::remove_dir_all(&parent).unwrap();
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
