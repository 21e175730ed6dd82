//! Function instances: start (bound through `hotmem-run`, in a cgroup with
//! the memory limit), list, stop, and the event queue (exits, OOM kills).
//!
//! Each instance runs in its own process group with stdin on /dev/null and
//! stdout/stderr in files under its run directory, as its own unprivileged
//! user (`INSTANCE_UID_BASE` + id unless the request names one), with
//! `no_new_privs` and, where the kernel has seccomp filters, `hotmem-run`'s
//! filter. A reaper thread per instance waits for the main process, kills
//! what is left of the instance, records how it ended, queues the events
//! and removes the run directory. The host fetches events with the
//! `events` operation and a cursor; they are kept until acknowledged, so
//! none is lost while no host is connected or when an answer is lost.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hotmem_proto::{
    ErrorInfo, ErrorKind, EventList, EventsArgs, Instance, InstanceEvent, InstanceEventKind,
    InstanceExit, InstanceList, InstanceState, PartitionState, StartInstanceArgs, StopInstanceArgs,
    INSTANCE_UID_BASE,
};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::cancel::{cancelled, Cancel, CHECK_EVERY};
use crate::sysfs::{micros, SysfsPaths};

/// `PATH` for instances when the agent has none (as for `exec`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `hotmem-run`'s exit status when binding (or joining the cgroup) failed.
const BIND_FAILED: i32 = 125;
/// Extra time, beyond the bind timeout, for `hotmem-run` to report.
const START_SLACK: Duration = Duration::from_secs(10);
/// How long `stop_instance` waits for the instance to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long `stop_instance` waits for the partition's users to go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for a start or a release.
const POLL: Duration = Duration::from_millis(1);
/// Most events kept; older ones are dropped (and counted).
const MAX_EVENTS: usize = 1024;
/// Bytes of an instance's stderr reported in its exit.
const STDERR_TAIL: u64 = 2048;

/// Where instances keep their files and cgroups (overridable for tests).
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Per-instance directories (`<id>/stdout`, `stderr`, `partition`).
    pub run_dir: PathBuf,
    /// cgroup v2 mount; instances get `<root>/hotmem/i<id>`.
    pub cgroup_root: PathBuf,
    /// The launcher that binds to a partition.
    pub hotmem_run: PathBuf,
    /// HotMem sysfs, to report partition use and wait for a release.
    pub sysfs: SysfsPaths,
    /// Instance `n` runs as uid and gid `uid_base + n` by default.
    pub uid_base: u32,
    /// Whether instances get the seccomp filter when the request does not say.
    pub seccomp_default: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/hotmem/instances"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            hotmem_run: PathBuf::from("hotmem-run"),
            sysfs: SysfsPaths::default(),
            uid_base: INSTANCE_UID_BASE,
            // CONFIG_SECCOMP_FILTER: hotmem-run can install its filter.
            seccomp_default: Path::new("/proc/sys/kernel/seccomp/actions_avail").exists(),
        }
    }
}

/// Who an instance runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
    seccomp: bool,
}

/// One instance's bookkeeping.
#[derive(Debug)]
struct Entry {
    info: Instance,
    /// Set when a stop was requested (the exit then says `stopped`).
    stopping: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_seq: u64,
    table: BTreeMap<u64, Entry>,
    /// Events not yet acknowledged (or, for v1 hosts, not yet taken).
    events: VecDeque<InstanceEvent>,
    /// Events evicted unacknowledged since the last v1 `events` call.
    dropped: u64,
    /// The highest sequence number evicted unacknowledged.
    evicted_upto: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The instance table, shared with the reaper threads.
#[derive(Debug, Clone)]
pub struct Instances {
    cfg: Arc<InstanceConfig>,
    shared: Arc<Shared>,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new(kind, message)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ErrorInfo {
    err(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

/// Guest uptime in ms (`CLOCK_BOOTTIME`), 0 if unreadable.
fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| u64::try_from(Duration::from(t).as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `KEY VALUE` field of a flat-keyed file such as `memory.events`.
fn keyed_value(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let kb: u64 = l
            .strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

/// The last [`STDERR_TAIL`] bytes of `path`, lossy.
fn tail(path: &Path) -> String {
    let Ok(data) = fs::read(path) else {
        return String::new();
    };
    let from = data.len().saturating_sub(STDERR_TAIL as usize);
    String::from_utf8_lossy(&data[from..]).into_owned()
}

impl Instances {
    /// An empty table using `cfg`.
    pub fn new(cfg: InstanceConfig) -> Self {
        Self {
            cfg: Arc::new(cfg),
            shared: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the instance's cgroup (memory controller enabled, limit set).
    ///
    /// Without a usable cgroup v2 hierarchy an instance without a memory
    /// limit runs without a cgroup (no OOM attribution, no memory.current);
    /// a requested limit that cannot be set is an error.
    fn make_cgroup(&self, id: u64, limit: Option<u64>) -> Result<Option<PathBuf>, ErrorInfo> {
        let root = &self.cfg.cgroup_root;
        let parent = root.join("hotmem");
        let dir = parent.join(format!("i{id}"));
        let attempt = || -> Result<(), ErrorInfo> {
            let enable = |d: &Path| {
                let ctl = d.join("cgroup.subtree_control");
                let on = fs::read_to_string(&ctl)
                    .map_err(|e| io_err("read", &ctl, e))?
                    .split_whitespace()
                    .any(|c| c == "memory");
                if on {
                    return Ok(());
                }
                fs::write(&ctl, "+memory").map_err(|e| io_err("write +memory to", &ctl, e))
            };
            enable(root)?;
            if !parent.is_dir() {
                fs::create_dir(&parent).map_err(|e| io_err("mkdir", &parent, e))?;
            }
            enable(&parent)?;
            fs::create_dir(&dir).map_err(|e| io_err("mkdir", &dir, e))?;
            if let Some(limit) = limit {
                let max = dir.join("memory.max");
                fs::write(&max, limit.to_string()).map_err(|e| io_err("write", &max, e))?;
                // Without swap in the guest this is moot, but make the
                // limit mean "RAM + nothing else" anyway.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
            }
            Ok(())
        };
        match attempt() {
            Ok(()) => Ok(Some(dir)),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                if limit.is_some() {
                    Err(e)
                } else {
                    crate::log!("instance {id} runs without a cgroup: {}", e.message);
                    Ok(None)
                }
            }
        }
    }

    /// Who instance `id` runs as: the request's user, else its own uid.
    fn run_as(&self, id: u64, args: &StartInstanceArgs) -> Result<RunAs, ErrorInfo> {
        let uid = match args.uid {
            Some(uid) => uid,
            None => u64::from(self.cfg.uid_base)
                .checked_add(id)
                .and_then(|u| u32::try_from(u).ok())
                .filter(|&u| u != u32::MAX)
                .ok_or_else(|| {
                    err(
                        ErrorKind::Internal,
                        format!("no uid left for instance {id}"),
                    )
                })?,
        };
        if uid == u32::MAX || args.gid == Some(u32::MAX) {
            return Err(err(
                ErrorKind::BadRequest,
                "uid/gid 4294967295 is not an id",
            ));
        }
        Ok(RunAs {
            uid,
            gid: args.gid.unwrap_or(uid),
            seccomp: args.seccomp.unwrap_or(self.cfg.seccomp_default),
        })
    }

    /// Builds the command: `hotmem-run [--no-bind] ... --user U:G -- argv`
    /// (the same launcher, so bound and unbound instances start alike and
    /// both drop privileges).
    fn command(
        &self,
        args: &StartInstanceArgs,
        run_as: RunAs,
        cgroup: Option<&Path>,
        partition_file: &Path,
    ) -> Command {
        let mut cmd = Command::new(&self.cfg.hotmem_run);
        if args.hotmem {
            match args.bind_timeout_ms {
                Some(ms) => cmd.arg("--timeout").arg(format!("{}ms", ms.max(1))),
                None => cmd.arg("--nonblock"),
            };
        } else {
            cmd.arg("--no-bind");
        }
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        if (run_as.uid, run_as.gid) != (0, 0) {
            cmd.arg("--user")
                .arg(format!("{}:{}", run_as.uid, run_as.gid));
        }
        if run_as.seccomp {
            cmd.arg("--seccomp");
        }
        cmd.arg("--partition-file").arg(partition_file).arg("--");
        cmd.args(&args.argv);
        if std::env::var_os("PATH").is_none() && !args.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env("PATH", DEFAULT_PATH);
        }
        cmd.envs(args.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).process_group(0);
        cmd
    }

    /// The `start_instance` operation (gives up when `cancel` fires).
    pub fn start(&self, args: &StartInstanceArgs, cancel: &Cancel) -> Result<Instance, ErrorInfo> {
        if args.argv.is_empty() {
            return Err(err(ErrorKind::BadRequest, "start_instance: empty argv"));
        }
        if args.memory_limit == Some(0) {
            return Err(err(ErrorKind::BadRequest, "start_instance: memory_limit 0"));
        }
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            state.next_id
        };
        let run_as = self.run_as(id, args)?;
        let dir = self.cfg.run_dir.join(id.to_string());
        fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, e))?;
        let open = |name: &str| {
            let path = dir.join(name);
            File::create(&path).map_err(|e| io_err("create", &path, e))
        };
        let (stdout, stderr) = (open("stdout")?, open("stderr")?);
        let cgroup = match self.make_cgroup(id, args.memory_limit) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let partition_file = dir.join("partition");
        let mut cmd = self.command(args, run_as, cgroup.as_deref(), &partition_file);
        cmd.stdout(stdout).stderr(stderr);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                remove_cgroup(cgroup.as_deref());
                let _ = fs::remove_dir_all(&dir);
                return Err(err(
                    ErrorKind::Io,
                    format!("cannot spawn instance {:?}: {e}", args.argv[0]),
                ));
            }
        };
        // Through hotmem-run, bound or not, wait until it is about to exec
        // the instance, so that start latencies compare alike.
        let limit = Duration::from_millis(args.bind_timeout_ms.unwrap_or(0)) + START_SLACK;
        let partition = match wait_bound(&mut child, &partition_file, limit, cancel) {
            Ok(partition) => partition,
            Err(e) => {
                let stderr = tail(&dir.join("stderr"));
                if let Some(cg) = cgroup.as_deref() {
                    // A cancelled launcher may have forked nothing, but be sure.
                    let _ = fs::write(cg.join("cgroup.kill"), "1");
                    wait_cgroup_empty(cg, RELEASE_WAIT);
                }
                remove_cgroup(cgroup.as_deref());
                let _ = fs::remove_dir_all(&dir);
                return Err(err(e.kind, format!("{} {}", e.message, stderr.trim())));
            }
        };
        let info = Instance {
            instance: id,
            pid: child.id(),
            argv: args.argv.clone(),
            partition,
            cgroup: cgroup.as_ref().map(|p| p.display().to_string()),
            memory_limit: args.memory_limit,
            state: InstanceState::Running,
            memory_current: None,
            partition_used: None,
            rss: None,
            start_us: micros(started.elapsed()),
            uid: Some(run_as.uid),
            gid: Some(run_as.gid),
            seccomp: run_as.seccomp,
            exit: None,
        };
        self.lock().table.insert(
            id,
            Entry {
                info: info.clone(),
                stopping: false,
            },
        );
        let this = self.clone();
        thread::spawn(move || this.reap(id, child, cgroup, dir));
        Ok(info)
    }

    /// Reaper thread body: waits for the main process, kills what is left
    /// of the instance, records its end and removes its run directory.
    ///
    /// The main process is waited for without reaping it (`WNOWAIT`): as
    /// long as it is a zombie its pid, which is the instance's process
    /// group id, cannot be reused, so the group kill cannot hit a
    /// stranger. Only then is it reaped.
    fn reap(&self, id: u64, mut child: Child, cgroup: Option<PathBuf>, dir: PathBuf) {
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                Err(e) => crate::log!("instance {id}: waitid failed: {e}"),
                Ok(_) => {}
            }
            break;
        }
        // Whatever is left of the instance (forked children) goes with it.
        let _ = killpg(pid, Signal::SIGKILL);
        if let Some(cg) = cgroup.as_deref() {
            let _ = fs::write(cg.join("cgroup.kill"), "1");
        }
        let status = loop {
            match child.wait() {
                Ok(status) => break Some(status),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log!("instance {id}: wait failed: {e}");
                    break None;
                }
            }
        };
        let oom_kills = cgroup
            .as_deref()
            .and_then(|cg| keyed_value(&cg.join("memory.events"), "oom_kill"))
            .unwrap_or(0);
        if let Some(cg) = cgroup.as_deref() {
            wait_cgroup_empty(cg, RELEASE_WAIT);
            remove_cgroup(Some(cg));
        }
        let stderr_tail = tail(&dir.join("stderr"));
        if let Err(e) = fs::remove_dir_all(&dir) {
            crate::log!("instance {id}: cannot remove {}: {e}", dir.display());
        }
        let mut state = self.lock();
        let Some(entry) = state.table.get_mut(&id) else {
            return;
        };
        let exit = InstanceExit {
            status: status.and_then(|s: ExitStatus| s.code()),
            signal: status.and_then(|s| s.signal()),
            oom_killed: oom_kills > 0,
            stopped: entry.stopping,
            stderr_tail,
        };
        entry.info.state = InstanceState::Exited;
        entry.info.exit = Some(exit.clone());
        let partition = entry.info.partition;
        let uptime = uptime_ms();
        if exit.oom_killed {
            push_event(
                &mut state,
                InstanceEventKind::OomKilled,
                id,
                partition,
                None,
                uptime,
            );
        }
        push_event(
            &mut state,
            InstanceEventKind::InstanceExited,
            id,
            partition,
            Some(exit),
            uptime,
        );
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Adds the live memory figures to `info`.
    fn with_usage(&self, mut info: Instance) -> Instance {
        if info.state == InstanceState::Running {
            info.memory_current = info
                .cgroup
                .as_deref()
                .and_then(|cg| fs::read_to_string(Path::new(cg).join("memory.current")).ok())
                .and_then(|s| s.trim().parse().ok());
            info.partition_used = info
                .partition
                .and_then(|p| self.cfg.sysfs.partition_used(p));
            info.rss = rss(info.pid);
        }
        info
    }

    /// The `list_instances` operation.
    pub fn list(&self) -> InstanceList {
        let infos: Vec<Instance> = self.lock().table.values().map(|e| e.info.clone()).collect();
        InstanceList {
            instances: infos.into_iter().map(|i| self.with_usage(i)).collect(),
        }
    }

    /// The `stop_instance` operation: SIGTERM (if a grace period is given),
    /// then SIGKILL to the whole instance; waits until it has been reaped
    /// and its partition has no user left, and forgets it.
    ///
    /// If `cancel` fires while it waits, the instance has been signalled
    /// but stays listed (its exit is still reported as an event).
    pub fn stop(&self, args: &StopInstanceArgs, cancel: &Cancel) -> Result<Instance, ErrorInfo> {
        let (pid, cgroup, running) = {
            let mut state = self.lock();
            let entry = state.table.get_mut(&args.instance).ok_or_else(|| {
                err(
                    ErrorKind::NoSuchInstance,
                    format!("no instance {}", args.instance),
                )
            })?;
            let running = entry.info.state == InstanceState::Running;
            entry.stopping |= running;
            (entry.info.pid, entry.info.cgroup.clone(), running)
        };
        if running {
            let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            if args.grace_ms > 0 {
                let _ = killpg(pgid, Signal::SIGTERM);
                self.wait_exited(args.instance, Duration::from_millis(args.grace_ms), cancel)?;
            }
            if let Some(cg) = &cgroup {
                let _ = fs::write(Path::new(cg).join("cgroup.kill"), "1");
            }
            let _ = killpg(pgid, Signal::SIGKILL);
            if !self.wait_exited(args.instance, KILL_WAIT, cancel)? {
                return Err(err(
                    ErrorKind::Timeout,
                    format!("instance {} did not exit after SIGKILL", args.instance),
                ));
            }
        }
        let entry = self.lock().table.remove(&args.instance);
        let info = entry.map(|e| e.info).ok_or_else(|| {
            err(
                ErrorKind::NoSuchInstance,
                format!("instance {} was stopped concurrently", args.instance),
            )
        })?;
        if let Some(part) = info.partition {
            self.wait_released(part, cancel)?;
        }
        Ok(info)
    }

    /// Waits until instance `id` has exited (or is gone); false on timeout.
    fn wait_exited(&self, id: u64, timeout: Duration, cancel: &Cancel) -> Result<bool, ErrorInfo> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let exited = state
                .table
                .get(&id)
                .is_none_or(|e| e.info.state == InstanceState::Exited);
            let now = Instant::now();
            if exited {
                return Ok(true);
            }
            cancel.check(&format!("stop_instance {id}"))?;
            if now >= deadline {
                return Ok(false);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(CHECK_EVERY))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits (bounded) until partition `part` has no user, so the host can
    /// unplug it as soon as `stop_instance` answers.
    fn wait_released(&self, part: u64, cancel: &Cancel) -> Result<(), ErrorInfo> {
        let deadline = Instant::now() + RELEASE_WAIT;
        while Instant::now() < deadline {
            match self.cfg.sysfs.partition(part) {
                Ok(p) if p.users > 0 || p.state == PartitionState::Bound => {
                    cancel.check("stop_instance")?;
                    thread::sleep(POLL);
                }
                _ => return Ok(()),
            }
        }
        crate::log!("partition {part} still has users {RELEASE_WAIT:?} after its instance stopped");
        Ok(())
    }

    /// The `events` operation.
    ///
    /// With a cursor (`after_seq`), acknowledges the events up to it and
    /// answers those after it, which stay queued until a later call
    /// acknowledges them; waits up to `wait_ms` if there are none. Without
    /// one (v1 hosts), answers and forgets all queued events.
    pub fn events(&self, args: &EventsArgs, cancel: &Cancel) -> Result<EventList, ErrorInfo> {
        let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
        let agent_id = crate::handler::agent_id();
        // A cursor from another agent run acknowledges nothing here.
        let after_seq = match &args.agent_id {
            Some(id) if id != agent_id => args.after_seq.map(|_| 0),
            _ => args.after_seq,
        };
        let mut state = self.lock();
        if let Some(after) = after_seq {
            while state.events.front().is_some_and(|e| e.seq <= after) {
                state.events.pop_front();
            }
        }
        while state.events.is_empty() {
            cancel.check("events")?;
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(CHECK_EVERY))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let agent_id = agent_id.to_owned();
        Ok(match after_seq {
            Some(after) => EventList {
                events: state.events.iter().cloned().collect(),
                dropped: state.evicted_upto.saturating_sub(after),
                agent_id,
            },
            None => EventList {
                events: state.events.drain(..).collect(),
                dropped: std::mem::take(&mut state.dropped),
                agent_id,
            },
        })
    }
}

fn push_event(
    state: &mut State,
    kind: InstanceEventKind,
    instance: u64,
    partition: Option<u64>,
    exit: Option<InstanceExit>,
    uptime_ms: u64,
) {
    state.next_seq += 1;
    if state.events.len() >= MAX_EVENTS {
        if let Some(old) = state.events.pop_front() {
            state.evicted_upto = old.seq;
        }
        state.dropped += 1;
    }
    state.events.push_back(InstanceEvent {
        seq: state.next_seq,
        kind,
        instance,
        partition,
        exit,
        uptime_ms,
    });
}

/// Waits until `hotmem-run` wrote the partition file (the id when bound,
/// `none` with `--no-bind`) or exited; kills it if `cancel` fires.
fn wait_bound(
    child: &mut Child,
    file: &Path,
    limit: Duration,
    cancel: &Cancel,
) -> Result<Option<u64>, ErrorInfo> {
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            if let Some(line) = text.strip_suffix('\n') {
                if line.trim() == "none" {
                    return Ok(None);
                }
                return line.trim().parse().map(Some).map_err(|e| {
                    err(
                        ErrorKind::Internal,
                        format!("hotmem-run wrote partition {line:?}: {e}"),
                    )
                });
            }
        }
        match child.try_wait() {
            Ok(Some(status)) if status.code() == Some(BIND_FAILED) => {
                return Err(err(
                    ErrorKind::BindFailed,
                    "hotmem-run could not bind a partition (or set up the instance):",
                ))
            }
            Ok(Some(status)) => {
                // It may have bound, written the file and failed to exec.
                if let Ok(text) = fs::read_to_string(file) {
                    if text.trim() == "none" {
                        return Ok(None);
                    }
                    if let Ok(id) = text.trim().parse() {
                        return Ok(Some(id));
                    }
                }
                return Err(err(
                    ErrorKind::Io,
                    format!("hotmem-run exited ({status}) before binding:"),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(err(ErrorKind::Io, format!("waiting for hotmem-run: {e}"))),
        }
        if start.elapsed() >= limit || cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            if cancel.is_cancelled() {
                return Err(cancelled("start_instance"));
            }
            return Err(err(
                ErrorKind::Timeout,
                format!("hotmem-run did not bind within {limit:?}:"),
            ));
        }
        thread::sleep(POLL);
    }
}

/// Waits (bounded) until no process is left in cgroup `cg`.
fn wait_cgroup_empty(cg: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match fs::read_to_string(cg.join("cgroup.procs")) {
            Ok(procs) if !procs.trim().is_empty() => thread::sleep(POLL),
            _ => return,
        }
    }
}

/// Removes an (empty) instance cgroup; best effort.
fn remove_cgroup(cg: Option<&Path>) {
    if let Some(cg) = cg {
        let _ = fs::remove_dir(cg);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A table whose cgroup root does not exist (no cgroups on the host)
    /// and whose `hotmem-run` is the fake shell script `fake_run`.
    pub(crate) fn table(fake_run: &str) -> (tempfile::TempDir, Instances) {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("hotmem-run");
        fs::write(&run, format!("#!/bin/sh\n{fake_run}\n")).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = InstanceConfig {
            run_dir: dir.path().join("run"),
            cgroup_root: dir.path().join("no-cgroup"),
            hotmem_run: run,
            sysfs: SysfsPaths {
                hotmem: dir.path().join("no-hotmem"),
                memory: dir.path().join("no-memory"),
                hotmem_driver: dir.path().join("no-driver"),
            },
            uid_base: 200_000,
            seccomp_default: false,
        };
        (dir, Instances::new(cfg))
    }

    /// A fake `hotmem-run` that "binds" partition 7 (or none with
    /// `--no-bind`): writes it to the `--partition-file` and execs the
    /// command after `--`. With `HOTMEM_FAKE_ARGS` set it records its
    /// options there first.
    pub(crate) const FAKE_BIND: &str = r#"[ -n "$HOTMEM_FAKE_ARGS" ] && echo "$*" >"$HOTMEM_FAKE_ARGS"
part=7
for a in "$@"; do [ "$a" = --no-bind ] && part=none; [ "$a" = -- ] && break; done
while [ "$1" != -- ]; do
  [ "$1" = --partition-file ] && { echo $part >"$2"; shift; }
  shift
done
shift
exec "$@""#;

    fn start(t: &Instances, argv: &[&str], hotmem: bool) -> Result<Instance, ErrorInfo> {
        t.start(
            &StartInstanceArgs {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                hotmem,
                bind_timeout_ms: Some(100),
                ..StartInstanceArgs::default()
            },
            &Cancel::never(),
        )
    }

    fn events(t: &Instances, wait_ms: u64, after_seq: Option<u64>) -> EventList {
        t.events(
            &EventsArgs {
                wait_ms,
                after_seq,
                agent_id: None,
            },
            &Cancel::never(),
        )
        .unwrap()
    }

    fn stop(t: &Instances, instance: u64, grace_ms: u64) -> Result<Instance, ErrorInfo> {
        t.stop(&StopInstanceArgs { instance, grace_ms }, &Cancel::never())
    }

    #[test]
    fn start_list_stop_with_exit_event() {
        let (_dir, t) = table(FAKE_BIND);
        let inst = start(&t, &["sleep", "30"], true).unwrap();
        assert_eq!(inst.partition, Some(7));
        assert_eq!(inst.state, InstanceState::Running);
        let list = t.list();
        assert_eq!(list.instances.len(), 1);
        assert!(list.instances[0].rss.is_some_and(|r| r > 0));
        let stopped = stop(&t, inst.instance, 50).unwrap();
        let exit = stopped.exit.unwrap();
        assert!(exit.stopped);
        assert_eq!(exit.signal, Some(Signal::SIGTERM as i32));
        assert!(
            t.list().instances.is_empty(),
            "a stopped instance is forgotten"
        );
        let got = events(&t, 1000, None).events;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, InstanceEventKind::InstanceExited);
        assert_eq!(
            (got[0].instance, got[0].partition),
            (inst.instance, Some(7))
        );
        let err = stop(&t, inst.instance, 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSuchInstance);
    }

    #[test]
    fn natural_exit_is_reported_and_listed() {
        let (_dir, t) = table(FAKE_BIND);
        let inst = start(&t, &["sh", "-c", "echo oops >&2; exit 4"], false).unwrap();
        assert_eq!(inst.partition, None);
        let got = events(&t, 5000, None).events;
        assert_eq!(got.len(), 1, "{got:?}");
        let exit = got[0].exit.clone().unwrap();
        assert_eq!(
            (exit.status, exit.stopped, exit.oom_killed),
            (Some(4), false, false)
        );
        assert_eq!(exit.stderr_tail, "oops\n");
        let listed = t.list().instances;
        assert_eq!(listed[0].state, InstanceState::Exited);
        // Stopping an exited instance just forgets it.
        let final_info = stop(&t, inst.instance, 0).unwrap();
        assert_eq!(final_info.exit.unwrap().status, Some(4));
        assert!(events(&t, 0, None).events.is_empty());
    }

    #[test]
    fn bind_failure_is_reported_with_stderr() {
        let (_dir, t) = table("echo 'hotmem-run: no HotMem partition is free' >&2; exit 125");
        let e = start(&t, &["sleep", "1"], true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BindFailed);
        assert!(
            e.message.contains("no HotMem partition is free"),
            "{}",
            e.message
        );
        assert!(t.list().instances.is_empty());
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let (_dir, t) = table(FAKE_BIND);
        assert_eq!(
            start(&t, &[], true).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        // hotmem-run starts, cannot exec the program: an exit like 127.
        let inst = start(&t, &["/nonexistent/prog"], false).unwrap();
        let exit = wait_events(&t, 0, 1)[0].exit.clone().unwrap();
        assert_eq!(exit.status, Some(127), "{exit:?}");
        stop(&t, inst.instance, 0).unwrap();
        // A memory limit needs a cgroup, which this table cannot create.
        let e = t
            .start(
                &StartInstanceArgs {
                    argv: vec!["true".into()],
                    memory_limit: Some(1 << 20),
                    ..StartInstanceArgs::default()
                },
                &Cancel::never(),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
    }

    #[test]
    fn events_wait_times_out_empty() {
        let (_dir, t) = table(FAKE_BIND);
        let start = Instant::now();
        assert!(events(&t, 50, None).events.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(50));
        // A cancelled wait ends early.
        let cancel = Cancel::default();
        cancel.cancel();
        let start = Instant::now();
        let e = t
            .events(
                &EventsArgs {
                    wait_ms: 600_000,
                    after_seq: Some(0),
                    agent_id: None,
                },
                &cancel,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// Waits until `n` events after `after` are queued.
    fn wait_events(t: &Instances, after: u64, n: usize) -> Vec<InstanceEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = events(t, 200, Some(after)).events;
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
        }
    }

    #[test]
    fn events_stay_until_acknowledged() {
        let (_dir, t) = table(FAKE_BIND);
        let a = start(&t, &["true"], false).unwrap();
        let b = start(&t, &["true"], false).unwrap();
        let first = wait_events(&t, 0, 2);
        assert_eq!(first.len(), 2, "{first:?}");
        // Asking again with the same cursor (an answer was lost) returns
        // the same events: nothing is lost.
        let again = events(&t, 0, Some(0));
        assert_eq!(again.events, first);
        assert!(!again.agent_id.is_empty());
        let ids: Vec<u64> = first.iter().map(|e| e.instance).collect();
        assert!(ids.contains(&a.instance) && ids.contains(&b.instance));
        // Acknowledging the first leaves the second.
        let rest = events(&t, 0, Some(first[0].seq)).events;
        assert_eq!(rest, first[1..]);
        // A cursor of another agent run acknowledges nothing.
        let other = t
            .events(
                &EventsArgs {
                    wait_ms: 0,
                    after_seq: Some(first[1].seq),
                    agent_id: Some("another-run".into()),
                },
                &Cancel::never(),
            )
            .unwrap();
        assert_eq!(other.events, first[1..]);
        // Acknowledging both: nothing left (and nothing dropped).
        let none = events(&t, 0, Some(first[1].seq));
        assert!(none.events.is_empty() && none.dropped == 0);
        // A v1 request still gets (and takes) what is queued.
        start(&t, &["true"], false).unwrap();
        let v1 = wait_events(&t, first[1].seq, 1);
        assert_eq!(v1.len(), 1);
        assert_eq!(events(&t, 0, None).events, v1);
        assert!(events(&t, 0, Some(first[1].seq)).events.is_empty());
    }

    #[test]
    fn instances_run_as_their_own_users() {
        let (dir, t) = table(FAKE_BIND);
        let record = |n: &str| dir.path().join(n);
        let start_as = |name: &str, uid: Option<u32>| {
            t.start(
                &StartInstanceArgs {
                    argv: vec!["sleep".into(), "30".into()],
                    hotmem: true,
                    bind_timeout_ms: Some(100),
                    env: vec![(
                        "HOTMEM_FAKE_ARGS".into(),
                        record(name).display().to_string(),
                    )],
                    uid,
                    seccomp: Some(name == "b"),
                    ..StartInstanceArgs::default()
                },
                &Cancel::never(),
            )
            .unwrap()
        };
        let a = start_as("a", None);
        let b = start_as("b", None);
        let root = start_as("root", Some(0));
        let args = |n: &str| fs::read_to_string(record(n)).unwrap();
        let user = |i: &Instance| format!("--user {0}:{0} ", 200_000 + i.instance);
        assert!(args("a").contains(&user(&a)), "{}", args("a"));
        assert!(args("b").contains(&user(&b)), "{}", args("b"));
        assert_ne!(a.uid, b.uid);
        assert_eq!((a.uid, a.gid), (Some(200_000 + 1), Some(200_000 + 1)));
        // The bind limit in the common duration syntax.
        assert!(args("a").contains("--timeout 100ms "), "{}", args("a"));
        assert!(!args("a").contains("--seccomp") && args("b").contains("--seccomp"));
        assert!((!a.seccomp, b.seccomp) == (true, true));
        assert!(!args("root").contains("--user"), "{}", args("root"));
        assert_eq!(root.uid, Some(0));
        for i in [a, b, root] {
            stop(&t, i.instance, 0).unwrap();
        }
    }

    #[test]
    fn reaping_kills_the_group_and_removes_the_run_dir() {
        let (dir, t) = table(FAKE_BIND);
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 100 & echo $! >{}; exit 0", pidfile.display());
        let inst = start(&t, &["sh", "-c", &script], false).unwrap();
        let run_dir = dir.path().join("run").join(inst.instance.to_string());
        let got = wait_events(&t, 0, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].exit.as_ref().unwrap().status, Some(0));
        assert!(!run_dir.exists(), "run dir left behind");
        let bg: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was killed with the group (it may linger
        // as a zombie until its new parent reaps it).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
            if matches!(state, None | Some("Z" | "X")) {
                break;
            }
            assert!(Instant::now() < deadline, "background child {bg} survived");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn memory_events_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.events");
        fs::write(
            &path,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(keyed_value(&path, "oom_kill"), Some(1));
        assert_eq!(keyed_value(&path, "oom"), Some(1));
        assert_eq!(keyed_value(&path, "missing"), None);
    }
}
