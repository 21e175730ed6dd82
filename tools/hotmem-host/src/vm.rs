//! Booting, attaching to and driving a QEMU guest.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use hotmem_proto::{Empty, HelloResult, Op};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::agent::{AgentCheck, AgentClient, AgentError, Pending};
use crate::config::{
    shell_quote, ConfigError, RunDir, VmConfig, DEFAULT_COMMAND_TIMEOUT, VMEM_QOM_PATH,
};
use crate::console;
use crate::device::{AgentTransport, Diagnose, Guest, MemoryDevice};
use crate::lock::{LockError, RunDirLock};
use crate::meminfo::MeminfoError;
use crate::qmp::{self, QmpClient, QmpError};

/// Result of a guest command (the agent's `exec` result).
pub use hotmem_proto::ExecResult as ExecOutput;

/// Console/QEMU log lines included in error messages.
const DIAG_LINES: usize = 40;
/// Limit for each QMP read/write.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for one `hello` attempt while waiting for the agent.
const HELLO_ATTEMPT: Duration = Duration::from_secs(3);
/// Pause between connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long QEMU gets to exit after the guest acknowledged a power-off.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for QEMU to exit after a socket error, to tell a dying
/// QEMU from a broken connection.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long QEMU gets to exit after `quit` or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong in a [`Vm`] operation.
#[derive(Debug, thiserror::Error)]
pub enum VmErrorKind {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The QEMU binary.
        program: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// QEMU exited while we waited for something.
    #[error("QEMU exited ({status}) while waiting for {during}")]
    QemuExited {
        /// What we were waiting for.
        during: String,
        /// Exit status description.
        status: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for (with the last observed state).
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// A QMP operation failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A guest agent operation failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A guest command ran but did not succeed.
    #[error("guest command {argv:?} failed ({exit}): {stderr}")]
    CommandFailed {
        /// The command.
        argv: Vec<String>,
        /// How it ended.
        exit: String,
        /// Its (trimmed) standard error.
        stderr: String,
    },
    /// Guest data could not be parsed.
    #[error(transparent)]
    Meminfo(#[from] MeminfoError),
    /// A scale-up/scale-down or benchmark step cannot be done as asked.
    #[error("{0}")]
    Scale(String),
    /// The run directory's lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A session directory is unusable (no guest, or one already running).
    #[error("run dir {}: {reason}", dir.display())]
    Session {
        /// The run directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A failed [`Vm`] operation, with the console tail (and QEMU's log if it
/// died) attached for diagnosis.
#[derive(Debug)]
pub struct VmError {
    kind: VmErrorKind,
    diagnostics: String,
}

impl VmError {
    /// What went wrong.
    pub fn kind(&self) -> &VmErrorKind {
        &self.kind
    }

    /// Console (and QEMU log) excerpts; empty if not applicable.
    pub fn diagnostics(&self) -> &str {
        &self.diagnostics
    }

    /// An error without diagnostics.
    pub fn from_kind(kind: impl Into<VmErrorKind>) -> Self {
        Self::bare(kind)
    }

    fn bare(kind: impl Into<VmErrorKind>) -> Self {
        Self {
            kind: kind.into(),
            diagnostics: String::new(),
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.diagnostics.is_empty() {
            write!(f, "\n{}", self.diagnostics)?;
        }
        Ok(())
    }
}

impl std::error::Error for VmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// How [`Vm::shutdown`] ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownMethod {
    /// The guest powered itself off at the agent's request.
    Poweroff,
    /// QMP `quit`.
    QmpQuit,
    /// SIGKILL.
    Killed,
}

/// The QEMU process of a guest.
#[derive(Debug)]
struct QemuProcess {
    pid: Pid,
    /// Present if we spawned QEMU (and so must reap it).
    child: Option<Child>,
    kill_on_drop: bool,
    /// Exit description, once observed.
    exit: Option<String>,
}

impl QemuProcess {
    fn spawn(
        program: &Path,
        args: &[std::ffi::OsString],
        dir: &RunDir,
        own_group: bool,
    ) -> Result<Self, VmErrorKind> {
        let log_path = dir.qemu_log();
        let io = |source| VmErrorKind::Io {
            what: format!("creating {}", log_path.display()),
            source,
        };
        let log = File::create(&log_path).map_err(io)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log);
        if own_group {
            // Outside our process group, terminal signals (^C) do not reach
            // a guest that must outlive this process.
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| VmErrorKind::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let pid = pid_of(&child);
        if !own_group {
            owned_guests().push(pid);
        }
        Ok(Self {
            pid,
            child: Some(child),
            kill_on_drop: true,
            exit: None,
        })
    }

    fn foreign(pid: Pid) -> Self {
        Self {
            pid,
            child: None,
            kill_on_drop: false,
            exit: None,
        }
    }

    /// `Some(description)` once QEMU has exited.
    fn exited(&mut self) -> Option<String> {
        if self.exit.is_none() {
            self.exit = match &mut self.child {
                Some(child) => match child.try_wait() {
                    Ok(status) => status.map(|s| s.to_string()),
                    Err(e) => Some(format!("unknown status: {e}")),
                },
                None => (!pid_alive(self.pid)).then(|| "exited".to_owned()),
            };
        }
        self.exit.clone()
    }

    /// Waits up to `timeout` for QEMU to exit; true if it did.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.exited().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(RETRY_PAUSE);
        }
        true
    }

    fn kill(&mut self) {
        owned_guests().retain(|p| *p != self.pid);
        if self.exited().is_some() {
            return;
        }
        // ESRCH just means it is already gone.
        let _ = kill(self.pid, Signal::SIGKILL);
        if let Some(child) = &mut self.child {
            if let Ok(status) = child.wait() {
                self.exit = Some(status.to_string());
            }
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.kill();
        }
    }
}

/// QEMU processes that live only as long as this process (not session
/// guests started with `up`), so that a signal handler can take them down.
static OWNED_GUESTS: std::sync::Mutex<Vec<Pid>> = std::sync::Mutex::new(Vec::new());

fn owned_guests() -> std::sync::MutexGuard<'static, Vec<Pid>> {
    // A panic while holding the lock leaves a valid Vec behind.
    OWNED_GUESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills every guest this process started that must not outlive it; for
/// SIGTERM/SIGINT handlers, since destructors do not run when a signal
/// ends the process. Session guests (`hotmemctl up`) are left alone.
pub fn kill_owned_guests() {
    for pid in owned_guests().drain(..) {
        // ESRCH just means it is already gone.
        let _ = kill(pid, Signal::SIGKILL);
    }
}

fn pid_of(child: &Child) -> Pid {
    // Linux PIDs are at most 2^22, so they always fit in an i32.
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

/// True if `pid` exists and is not a zombie.
fn pid_alive(pid: Pid) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// True if `pid` is a QEMU serving the QMP socket of `dir` (guards against
/// a recycled PID in a stale pid file).
fn is_guest_qemu(pid: Pid, dir: &RunDir) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let sock = dir.qmp_socket();
    let needle = sock.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// The PID recorded in `dir` if that process is a running guest QEMU.
fn running_guest(dir: &RunDir) -> Option<Pid> {
    let text = fs::read_to_string(dir.pid_file()).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    (pid_alive(pid) && is_guest_qemu(pid, dir)).then_some(pid)
}

/// Console tail, plus QEMU's log and exit status if it exited.
fn diagnostics(dir: &RunDir, process: &mut QemuProcess) -> String {
    let mut text = console::excerpt(&dir.console_log(), DIAG_LINES);
    if let Some(status) = process.exited() {
        text.push_str(&format!("\nQEMU exited: {status}\n"));
        text.push_str(&console::excerpt(&dir.qemu_log(), DIAG_LINES));
    }
    text
}

fn with_diagnostics(kind: VmErrorKind, dir: &RunDir, process: &mut QemuProcess) -> VmError {
    VmError {
        kind,
        diagnostics: diagnostics(dir, process),
    }
}

/// Calls `attempt` until it yields a value, QEMU exits, or `deadline`.
fn retry<T>(
    process: &mut QemuProcess,
    what: &str,
    deadline: Instant,
    timeout: Duration,
    mut attempt: impl FnMut(Instant) -> Result<Option<T>, VmErrorKind>,
) -> Result<T, VmErrorKind> {
    loop {
        if let Some(status) = process.exited() {
            return Err(VmErrorKind::QemuExited {
                during: what.to_owned(),
                status,
            });
        }
        match attempt(deadline) {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            // A dying QEMU shows up as a broken socket first: report the
            // cause rather than the symptom.
            Err(e) => {
                process.wait_exit(EXIT_GRACE);
                return Err(match process.exited() {
                    Some(status) => VmErrorKind::QemuExited {
                        during: what.to_owned(),
                        status,
                    },
                    None => e,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(VmErrorKind::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        thread::sleep(RETRY_PAUSE);
    }
}

/// Connects to a Unix socket; `None` while it does not exist or listen yet.
fn try_connect(path: &Path) -> Result<Option<UnixStream>, VmErrorKind> {
    match UnixStream::connect(path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(VmErrorKind::Io {
            what: format!("connecting to {}", path.display()),
            source,
        }),
    }
}

/// Connects QMP and the agent, and waits for the agent's `hello`, all
/// within `timeout`.
fn connect(
    dir: &RunDir,
    process: &mut QemuProcess,
    timeout: Duration,
) -> Result<(QmpClient, AgentClient, HelloResult), VmErrorKind> {
    let deadline = Instant::now() + timeout;
    let qmp_sock = dir.qmp_socket();
    let qmp = retry(
        process,
        "the QMP socket",
        deadline,
        timeout,
        |_| match try_connect(&qmp_sock)? {
            Some(stream) => Ok(Some(QmpClient::from_stream(stream, QMP_TIMEOUT)?)),
            None => Ok(None),
        },
    )?;
    let agent_sock = dir.agent_socket();
    let mut agent = retry(process, "the agent socket", deadline, timeout, |_| {
        Ok(try_connect(&agent_sock)?.map(AgentClient::from_stream))
    })?;
    let what = "the guest agent's hello (guest boot + hotmem-agent start)";
    let hello = retry(process, what, deadline, timeout, |deadline| {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(HELLO_ATTEMPT);
        match agent.call::<HelloResult>(Op::Hello, wait.max(Duration::from_millis(1))) {
            Ok(hello) => Ok(Some(hello)),
            Err(AgentError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })?;
    Ok((qmp, agent, hello))
}

/// Creates the run dir, refuses to clobber a running guest, removes stale
/// files, and returns the config with an absolute run dir.
fn prepare_run_dir(cfg: &VmConfig) -> Result<VmConfig, VmErrorKind> {
    let io = |what: String| move |source| VmErrorKind::Io { what, source };
    fs::create_dir_all(&cfg.run_dir).map_err(io(format!("creating {}", cfg.run_dir.display())))?;
    let mut cfg = cfg.clone();
    cfg.run_dir = fs::canonicalize(&cfg.run_dir)
        .map_err(io(format!("resolving {}", cfg.run_dir.display())))?;
    let dir = cfg.dir();
    if let Some(pid) = running_guest(&dir) {
        return Err(VmErrorKind::Session {
            dir: cfg.run_dir,
            reason: format!("a guest is already running there (pid {pid}); stop it first"),
        });
    }
    for stale in [
        dir.console_log(),
        dir.qemu_log(),
        dir.qmp_socket(),
        dir.agent_socket(),
        dir.pid_file(),
        dir.cmdline_file(),
        dir.agent_hello(),
        dir.event_cursor(),
    ] {
        match fs::remove_file(&stale) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", stale.display()))(e))
            }
            _ => {}
        }
    }
    Ok(cfg)
}

fn write_file(path: &Path, contents: String) -> Result<(), VmErrorKind> {
    fs::write(path, contents).map_err(|source| VmErrorKind::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// Returns the client in `slot`, connecting first if there is none.
fn qmp_client<'a>(
    slot: &'a mut Option<QmpClient>,
    dir: &RunDir,
) -> Result<&'a mut QmpClient, QmpError> {
    let client = match slot.take() {
        Some(client) => client,
        None => QmpClient::connect(&dir.qmp_socket(), QMP_TIMEOUT)?,
    };
    Ok(slot.insert(client))
}

/// Returns the client in `slot`, connecting first if there is none.
fn agent_client<'a>(
    slot: &'a mut Option<AgentClient>,
    dir: &RunDir,
) -> Result<&'a mut AgentClient, AgentError> {
    let client = match slot.take() {
        Some(client) => client,
        None => AgentClient::connect(&dir.agent_socket())?,
    };
    Ok(slot.insert(client))
}

/// A running guest: its QEMU process, a QMP session and an agent connection.
///
/// Dropping a `Vm` from [`Vm::boot`] kills QEMU; one from
/// [`Vm::boot_detached`] or [`Vm::attach`] leaves it running.
///
/// QEMU serves one client at a time on each socket, so an attached `Vm`
/// connects to QMP and to the agent only when first needed: a command that
/// only resizes memory does not wait for an agent busy with another
/// client's long `exec`. A connection that failed is re-opened on next use.
#[derive(Debug)]
pub struct Vm {
    dir: RunDir,
    process: QemuProcess,
    qmp: Option<QmpClient>,
    agent: Option<AgentClient>,
    hello: Option<HelloResult>,
    command_timeout: Duration,
}

impl Vm {
    /// Boots a guest owned by this `Vm` (killed on drop) and waits for its agent.
    pub fn boot(cfg: &VmConfig) -> Result<Vm, VmError> {
        Self::start(cfg, false)
    }

    /// Boots a guest that outlives this `Vm` and this process (session mode).
    pub fn boot_detached(cfg: &VmConfig) -> Result<Vm, VmError> {
        Self::start(cfg, true)
    }

    fn start(cfg: &VmConfig, detached: bool) -> Result<Vm, VmError> {
        cfg.validate().map_err(VmError::bare)?;
        let cfg = prepare_run_dir(cfg).map_err(VmError::bare)?;
        let dir = cfg.dir();
        let args = cfg.qemu_args().map_err(VmError::bare)?;
        let cmdline = shell_quote(
            std::iter::once(cfg.qemu.as_os_str()).chain(args.iter().map(|a| a.as_os_str())),
        );
        write_file(&dir.cmdline_file(), cmdline + "\n").map_err(VmError::bare)?;
        let mut process =
            QemuProcess::spawn(&cfg.qemu, &args, &dir, detached).map_err(VmError::bare)?;
        let started = write_file(&dir.pid_file(), format!("{}\n", process.pid))
            .and_then(|()| connect(&dir, &mut process, cfg.boot_timeout));
        let (qmp, agent, hello) =
            started.map_err(|kind| with_diagnostics(kind, &dir, &mut process))?;
        // Kept so that a later attach can tell a restarted agent.
        let recorded = serde_json::to_string(&hello).unwrap_or_default();
        write_file(&dir.agent_hello(), recorded + "\n")
            .map_err(|kind| with_diagnostics(kind, &dir, &mut process))?;
        process.kill_on_drop = !detached;
        Ok(Vm {
            dir,
            process,
            qmp: Some(qmp),
            agent: Some(agent),
            hello: Some(hello),
            command_timeout: cfg.command_timeout,
        })
    }

    /// Attaches to the guest started in `dir` by another process
    /// (`hotmemctl up`); it keeps running when this `Vm` is dropped.
    ///
    /// Only checks that the guest's QEMU runs; QMP and the agent are
    /// connected on first use.
    pub fn attach(dir: impl AsRef<Path>) -> Result<Vm, VmError> {
        let (dir, process) = find_session(dir.as_ref())?;
        Ok(Vm {
            dir,
            process,
            qmp: None,
            agent: None,
            hello: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        })
    }

    /// The run directory (logs, sockets).
    pub fn run_dir(&self) -> &RunDir {
        &self.dir
    }

    /// PID of the QEMU process.
    pub fn pid(&self) -> i32 {
        self.process.pid.as_raw()
    }

    /// The agent's answer to the `hello` that ended [`Vm::boot`] (`None`
    /// for an attached guest).
    pub fn boot_hello(&self) -> Option<&HelloResult> {
        self.hello.as_ref()
    }

    /// The last `lines` lines of the guest console, titled, for messages.
    pub fn console_tail(&self, lines: usize) -> String {
        console::excerpt(&self.dir.console_log(), lines)
    }

    /// Runs `f` on the QMP client; drops the connection if it broke.
    fn with_qmp<T>(
        &mut self,
        f: impl FnOnce(&mut QmpClient) -> Result<T, QmpError>,
    ) -> Result<T, VmError> {
        let result = qmp_client(&mut self.qmp, &self.dir).and_then(f);
        if let Err(e) = &result {
            if !matches!(e, QmpError::Command { .. } | QmpError::Unexpected { .. }) {
                self.qmp = None;
            }
        }
        result.map_err(|e| self.fail(e.into()))
    }

    /// Runs `f` on the agent client with the command timeout; drops the
    /// connection if it broke (a timed-out one stays: late answers are
    /// recognised by their id).
    fn with_agent<T>(
        &mut self,
        f: impl FnOnce(&mut AgentClient, Duration) -> Result<T, AgentError>,
    ) -> Result<T, VmError> {
        let timeout = self.command_timeout;
        let result = agent_client(&mut self.agent, &self.dir).and_then(|a| f(a, timeout));
        if let Err(e) = &result {
            if !matches!(e, AgentError::Remote { .. } | AgentError::Timeout { .. }) {
                self.agent = None;
            }
        }
        result.map_err(|e| self.fail(e.into()))
    }

    /// Asks the agent who it is and compares with the `hello` recorded at
    /// boot and with this build: a rebooted guest, a restarted agent
    /// (whose instances are orphaned), a stale initramfs.
    pub fn check_agent(&mut self) -> Result<AgentCheck, VmError> {
        let now = self.hello()?;
        let before: Option<HelloResult> = fs::read_to_string(self.dir.agent_hello())
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok(AgentCheck::compare(before.as_ref(), &now))
    }

    /// Takes the run directory's lock (waiting up to `timeout`), so that
    /// no other hotmemctl changes this guest until the guard is dropped.
    pub fn lock(&self, timeout: Duration) -> Result<RunDirLock, VmError> {
        RunDirLock::acquire(&self.dir.lock_file(), timeout).map_err(VmError::bare)
    }

    /// Runs QMP `command` (for tests that drive QEMU beyond the helpers
    /// here, e.g. a migration).
    pub fn qmp_execute<C: qapi::Command>(&mut self, command: &C) -> Result<C::Ok, VmError> {
        self.with_qmp(|qmp| qmp.execute(command))
    }
}

impl Diagnose for Vm {
    /// Adds the console tail (and QEMU's log and exit status if it died).
    fn fail(&mut self, kind: VmErrorKind) -> VmError {
        with_diagnostics(kind, &self.dir, &mut self.process)
    }
}

/// The virtio-mem device `vm0`, over QMP.
impl MemoryDevice for Vm {
    fn set_requested_size(&mut self, bytes: u64) -> Result<(), VmError> {
        self.with_qmp(|qmp| qmp.qom_set(VMEM_QOM_PATH, "requested-size", bytes.into()))
    }

    fn requested_size(&mut self) -> Result<u64, VmError> {
        self.with_qmp(|qmp| qmp.qom_get_u64(VMEM_QOM_PATH, "requested-size"))
    }

    fn plugged_size(&mut self) -> Result<u64, VmError> {
        self.with_qmp(|qmp| qmp.qom_get_u64(VMEM_QOM_PATH, "size"))
    }

    /// QEMU sends `MEMORY_DEVICE_SIZE_CHANGE` with the time of the change.
    fn reports_size_changes(&self) -> bool {
        true
    }

    /// From QEMU's `MEMORY_DEVICE_SIZE_CHANGE` events. QEMU (6.2+) sends
    /// at most one a second per device and keeps the latest meanwhile,
    /// with the timestamp of when it happened; so the report of the final
    /// size can come up to a second late, but its time is exact. Events
    /// arrive only while this `Vm` keeps its QMP connection.
    fn size_reached_at(
        &mut self,
        size: u64,
        since: SystemTime,
        wait: Duration,
    ) -> Result<Option<SystemTime>, VmError> {
        let deadline = Instant::now() + wait;
        loop {
            let found = self.with_qmp(|client| {
                Ok(qmp::size_reached_at(
                    client.size_changes(),
                    VMEM_QOM_PATH,
                    size,
                    since,
                ))
            })?;
            if found.is_some() || Instant::now() >= deadline {
                return Ok(found);
            }
            thread::sleep(SIZE_CHANGE_POLL);
            self.with_qmp(QmpClient::poll_events)?;
        }
    }
}

/// How often [`Vm::size_reached_at`] asks QEMU for pending events.
const SIZE_CHANGE_POLL: Duration = Duration::from_millis(20);

/// The agent on the virtio-serial port, reconnected when a connection
/// broke.
impl AgentTransport for Vm {
    fn agent_start(&mut self, op: Op) -> Result<Pending, VmError> {
        self.with_agent(|agent, timeout| agent.start(op, timeout))
    }

    fn agent_finish_value(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<serde_json::Value, VmError> {
        self.with_agent(|agent, _| agent.finish_value(pending, timeout))
    }

    fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }
}

impl Guest for Vm {
    /// Stops the guest: agent power-off, then QMP `quit`, then SIGKILL,
    /// each only if the previous one did not end QEMU in time.
    fn shutdown(mut self) -> Result<ShutdownMethod, VmError> {
        let acked = agent_client(&mut self.agent, &self.dir)
            .and_then(|agent| agent.call::<Empty>(Op::Poweroff, QMP_TIMEOUT))
            .is_ok();
        let method = if acked && self.process.wait_exit(POWEROFF_TIMEOUT) {
            Some(ShutdownMethod::Poweroff)
        } else {
            let qmp = qmp_client(&mut self.qmp, &self.dir).ok();
            quit_or_kill(qmp, &mut self.process)
        };
        finish_stop(method, &self.dir, &mut self.process)
    }
}

/// The run dir and QEMU process of the session in `dir`.
fn find_session(path: &Path) -> Result<(RunDir, QemuProcess), VmError> {
    let session = |reason: &str| {
        VmError::bare(VmErrorKind::Session {
            dir: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let dir = RunDir::new(fs::canonicalize(path).map_err(|_| session("does not exist"))?);
    let pid = running_guest(&dir)
        .ok_or_else(|| session("no running guest (missing or stale qemu.pid)"))?;
    Ok((dir, QemuProcess::foreign(pid)))
}

/// Ends QEMU with QMP `quit` (if connected), else SIGKILL.
fn quit_or_kill(qmp: Option<&mut QmpClient>, process: &mut QemuProcess) -> Option<ShutdownMethod> {
    if let Some(qmp) = qmp {
        // QEMU may exit before answering; its answer does not matter.
        let _ = qmp.quit();
        if process.wait_exit(EXIT_TIMEOUT) {
            return Some(ShutdownMethod::QmpQuit);
        }
    }
    process.kill();
    process
        .wait_exit(EXIT_TIMEOUT)
        .then_some(ShutdownMethod::Killed)
}

/// Removes the pid file once QEMU is gone, or reports that it is not.
fn finish_stop(
    method: Option<ShutdownMethod>,
    dir: &RunDir,
    process: &mut QemuProcess,
) -> Result<ShutdownMethod, VmError> {
    let Some(method) = method else {
        let kind = VmErrorKind::Timeout {
            what: "QEMU to exit after SIGKILL".into(),
            timeout: EXIT_TIMEOUT,
        };
        return Err(with_diagnostics(kind, dir, process));
    };
    // Best effort: a stale pid file is detected anyway.
    let _ = fs::remove_file(dir.pid_file());
    Ok(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(Pid::this()));
        assert!(!pid_alive(Pid::from_raw(i32::MAX)));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = pid_of(&child);
        thread::sleep(Duration::from_millis(200));
        assert!(!pid_alive(pid), "a zombie is not alive");
        child.wait().unwrap();
    }

    #[test]
    fn boot_reports_missing_qemu_binary() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new("/nonexistent/bzImage", "/nonexistent/initrd", dir.path());
        cfg.qemu = PathBuf::from("/nonexistent/qemu");
        let err = Vm::boot(&cfg).unwrap_err();
        assert!(matches!(err.kind(), VmErrorKind::Spawn { .. }), "{err}");
        assert!(dir.path().join("qemu.cmdline").exists());
    }

    #[test]
    fn boot_reports_early_qemu_exit_with_logs() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new("/nonexistent/bzImage", "/nonexistent/initrd", dir.path());
        // `false` exits at once, like a QEMU rejecting its command line.
        cfg.qemu = PathBuf::from("false");
        let err = Vm::boot(&cfg).unwrap_err();
        assert!(
            matches!(err.kind(), VmErrorKind::QemuExited { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("console.log") && text.contains("qemu.log"),
            "{text}"
        );
    }

    #[test]
    fn attach_without_guest_is_a_session_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Vm::attach(dir.path()).unwrap_err();
        assert!(matches!(err.kind(), VmErrorKind::Session { .. }), "{err}");
        fs::write(
            dir.path().join("qemu.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let err = Vm::attach(dir.path()).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
    }
}
