//! `hotmemctl`: boot and drive HotMem QEMU guests from the command line.
//!
//! One-shot: `hotmemctl demo`. Session mode keeps a guest running between
//! commands: `up`, then `status` / `resize` / `exec`, then `down`, all
//! pointing at the same `--dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hotmem_proto::EventList;
use hotmemctl::agent::EventCursor;
use hotmemctl::bench::BenchOptions;
use hotmemctl::demo::{render_table, run_demo};
use hotmemctl::scale::{self, ScaleDownOptions, ScaleUpOptions, Trigger};
use hotmemctl::scenario::{self, ScenarioParams};
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
        /// Limit for plugging and for the partition to become free, seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
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
        /// SIGTERM grace period before SIGKILL, ms.
        #[arg(long, default_value_t = 0)]
        grace_ms: u64,
        /// Limit for the unplug, seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
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
        /// Limit for the unplug, seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
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
        /// Wait up to this long for an event if none is queued, ms.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
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
        /// Run directory [default: a fresh directory under $TMPDIR].
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
    /// The paper's experiments (Fig. 5, 6, 7, 9 and a 1 GiB comparison),
    /// HotMem side by side with vanilla virtio-mem: JSON, SVG plots and a
    /// summary table with ratios.
    Bench {
        #[command(flatten)]
        vm: VmArgs,
        /// Base run directory of the guests.
        #[arg(long)]
        dir: PathBuf,
        /// Where bench.json and the plots go.
        #[arg(long, default_value = "build/bench")]
        out: PathBuf,
        /// Fewer sizes and levels (a few minutes under TCG).
        #[arg(long)]
        quick: bool,
        /// virtio-mem driver of the HotMem guests.
        #[arg(long, default_value = scenario::RUST_DRIVER,
              value_parser = [scenario::C_DRIVER, scenario::RUST_DRIVER])]
        hotmem_driver: String,
        /// Only these experiments (comma-separated: fig5,fig6,fig7,fig9,compare).
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(hotmemctl::bench::EXPERIMENTS))]
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
    /// Boot, plug and unplug 1 GiB with the vanilla driver, with timings.
    PlugDemo {
        #[command(flatten)]
        vm: VmArgs,
        /// Run directory [default: a fresh directory under $TMPDIR].
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
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
    // Guests of a demo, bench or test run die with it, also on SIGTERM or
    // SIGHUP (where destructors do not run), not only on ^C.
    if let Err(e) = ctrlc::set_handler(|| {
        hotmemctl::vm::kill_owned_guests();
        std::process::exit(130);
    }) {
        eprintln!("hotmemctl: warning: no signal handler, guests may outlive a killed run: {e}");
    }
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
            opts.timeout = Duration::from_secs(timeout);
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
            grace_ms,
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
            opts.grace = Duration::from_millis(grace_ms);
            opts.timeout = Duration::from_secs(timeout);
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
            let report = scale::unplug(
                &mut vm,
                partition,
                &trigger,
                unit,
                Duration::from_secs(timeout),
            )?;
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
        Cmd::Events { session, wait_ms } => {
            let mut vm = Vm::attach(&session.dir)?;
            let events = next_events(&mut vm, Duration::from_millis(wait_ms))?;
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
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("hotmem-demo-{}", std::process::id()))
            });
            let params = ScenarioParams {
                instances,
                instance_mem,
                hotmem_driver,
            };
            scale_demo(&vm.config(&dir), params, json)
        }
        Cmd::BenchReport { report, out } => {
            let report = hotmemctl::bench::read_report(&report)?;
            let files = hotmemctl::bench::write_outputs(&report, &out)?;
            emit(json, &report, hotmemctl::bench::render_summary)?;
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
            hotmem_driver,
            only,
        } => {
            let opts = BenchOptions {
                base: vm.config(&dir),
                out,
                quick,
                only,
                hotmem_driver,
            };
            bench(&opts, json)
        }
        Cmd::PlugDemo { vm, dir } => {
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

fn scale_demo(cfg: &VmConfig, params: ScenarioParams, json: bool) -> Result<ExitCode, CliError> {
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
    let report = hotmemctl::bench::run_bench(opts, &mut |msg| {
        eprintln!("[{:6.1} s] {msg}", started.elapsed().as_secs_f64());
    })?;
    let files = hotmemctl::bench::write_outputs(&report, &opts.out)?;
    emit(json, &report, hotmemctl::bench::render_summary)?;
    for f in files {
        eprintln!("wrote {}", f.display());
    }
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
