//! The HotMem host <-> guest-agent protocol, version 1.
//!
//! # Wire format
//!
//! Messages are JSON objects, one per line (`\n`-terminated, UTF-8).
//! `serde_json` never emits a raw newline inside a compact document, so a
//! line is always exactly one message. Every message carries `"v": 1`
//! ([`PROTOCOL_VERSION`]).
//!
//! Host -> agent, a [`Request`]:
//!
//! ```json
//! {"v":1,"id":7,"op":"exec","argv":["uname","-r"],"timeout_ms":5000}
//! ```
//!
//! Agent -> host, a [`Response`] to request `id`:
//!
//! ```json
//! {"v":1,"id":7,"ok":true,"result":{"status":0,"...":"..."}}
//! {"v":1,"id":null,"ok":false,"error":{"kind":"bad_request","message":"..."}}
//! ```
//!
//! or an asynchronous [`Event`] (reserved: the v1 agent sends none; instance
//! events are fetched with the `events` operation instead, so that none is
//! lost while no host is connected), which a
//! host tells apart from a response by its `"event"` key:
//!
//! ```json
//! {"v":1,"event":"instance_exited","data":{"...":"..."}}
//! ```
//!
//! The agent serves requests concurrently and may answer them in any
//! order; a host matches answers by `id`, and may [`Op::Cancel`] a request
//! it stopped waiting for.
//!
//! # Compatibility rules
//!
//! * Unknown object keys are ignored by both sides, so optional fields can be
//!   added to requests and results without a version bump.
//! * A new operation is a new `op` value; an agent that does not know it
//!   answers [`ErrorKind::UnsupportedOp`], so a host can probe for it.
//! * Error kinds unknown to a host decode as [`ErrorKind::Unknown`].
//! * An incompatible change bumps [`PROTOCOL_VERSION`]; a peer that sees a
//!   version it does not speak answers [`ErrorKind::UnsupportedVersion`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version spoken by this crate; carried in every message as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default name of the virtio-serial port the agent listens on.
pub const AGENT_PORT_NAME: &str = "org.hotmem.agent";

/// The git revision this crate was built from (`git rev-parse --short=12
/// HEAD` at build time, `unknown` outside a git tree). Agent and host both
/// carry it: an agent reporting another revision than its host runs from a
/// stale initramfs.
pub const BUILD_REVISION: &str = env!("HOTMEM_BUILD_REVISION");

/// A host -> agent request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version, always [`PROTOCOL_VERSION`] when built with [`Request::new`].
    pub v: u32,
    /// Request id chosen by the host; echoed in the response.
    pub id: u64,
    /// The operation and its arguments (flattened: `"op"` plus the argument keys).
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    /// Builds a request with the current protocol version.
    pub fn new(id: u64, op: Op) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            op,
        }
    }
}

/// An operation the agent can perform, tagged on `"op"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Liveness and identity check; answered with a [`HelloResult`].
    Hello,
    /// Run a program; answered with an [`ExecResult`].
    Exec(ExecArgs),
    /// Read a (text) file; answered with a [`ReadFileResult`].
    ReadFile(ReadFileArgs),
    /// Write a file (typically sysfs/procfs); answered with [`Empty`].
    WriteFile(WriteFileArgs),
    /// Answer [`Empty`], then sync and power the guest off.
    Poweroff,
    /// Start a function instance (bound to a HotMem partition through
    /// `hotmem-run` unless `hotmem` is false); answered with an [`Instance`].
    StartInstance(StartInstanceArgs),
    /// Stop an instance (SIGTERM, then SIGKILL after the grace period) and
    /// wait for it; answered with the final [`Instance`].
    StopInstance(StopInstanceArgs),
    /// List the instances the agent started and has not forgotten;
    /// answered with an [`InstanceList`].
    ListInstances,
    /// Take the queued instance events (exits, OOM kills); answered with an
    /// [`EventList`].
    Events(EventsArgs),
    /// Report the HotMem partitions and the offline memory blocks; answered
    /// with a [`PartitionsResult`].
    Partitions,
    /// Online every offline memory block into HotMem (`online_hotmem`); a
    /// no-op when nothing is offline. Answered with an [`OnlineResult`].
    OnlineHotmemBlocks,
    /// Wait until at least `count` partitions are free, onlining offline
    /// blocks as they appear if asked to; answered with a [`PartitionsResult`].
    WaitFreePartitions(WaitFreePartitionsArgs),
    /// Cancel the request with id `request` if it is still running (a
    /// host-side timeout); answered with a [`CancelResult`]. The cancelled
    /// request is answered with [`ErrorKind::Cancelled`].
    Cancel(CancelArgs),
}

impl Op {
    /// The `"op"` value of every operation defined by this protocol version.
    pub const NAMES: &'static [&'static str] = &[
        "hello",
        "exec",
        "read_file",
        "write_file",
        "poweroff",
        "start_instance",
        "stop_instance",
        "list_instances",
        "events",
        "partitions",
        "online_hotmem_blocks",
        "wait_free_partitions",
        "cancel",
    ];

    /// The wire name of this operation (its `"op"` value).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Exec(_) => "exec",
            Op::ReadFile(_) => "read_file",
            Op::WriteFile(_) => "write_file",
            Op::Poweroff => "poweroff",
            Op::StartInstance(_) => "start_instance",
            Op::StopInstance(_) => "stop_instance",
            Op::ListInstances => "list_instances",
            Op::Events(_) => "events",
            Op::Partitions => "partitions",
            Op::OnlineHotmemBlocks => "online_hotmem_blocks",
            Op::WaitFreePartitions(_) => "wait_free_partitions",
            Op::Cancel(_) => "cancel",
        }
    }
}

/// Arguments of [`Op::Exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecArgs {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables, added to the agent's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Kill the program (and its process group) after this many
    /// milliseconds; without it the agent applies [`DEFAULT_EXEC_TIMEOUT_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The agent's limit for an `exec` whose request sets no `timeout_ms`.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 600_000;

/// The agent's limit for `read_file` when the request sets no `max_bytes`.
pub const DEFAULT_READ_FILE_MAX: u64 = 4 << 20;

/// The largest `max_bytes` the agent accepts for `read_file`.
pub const READ_FILE_MAX: u64 = 32 << 20;

/// Arguments of [`Op::ReadFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileArgs {
    /// Absolute path in the guest.
    pub path: String,
    /// Fail with [`ErrorKind::TooLarge`] if the file holds more than this
    /// many bytes (default [`DEFAULT_READ_FILE_MAX`], at most [`READ_FILE_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl ReadFileArgs {
    /// Reading `path` with the default size limit.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            max_bytes: None,
        }
    }
}

/// Arguments of [`Op::Cancel`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelArgs {
    /// The id of the request to cancel.
    pub request: u64,
}

/// Result of [`Op::Cancel`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResult {
    /// Whether the request was still running (and has now been told to stop).
    pub cancelled: bool,
}

/// Arguments of [`Op::WriteFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileArgs {
    /// Absolute path in the guest; the file is created if missing and truncated.
    pub path: String,
    /// Contents to write, in a single `write(2)` where the kernel allows it.
    pub data: String,
}

/// Arguments of [`Op::StartInstance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartInstanceArgs {
    /// The function's program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Memory limit in bytes, enforced as the cgroup v2 `memory.max` of the
    /// instance's own cgroup; `None` for no limit beyond the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Bind the instance to a HotMem partition (through `hotmem-run`).
    #[serde(default = "default_true")]
    pub hotmem: bool,
    /// How long `hotmem-run` may wait for a free partition, in ms
    /// (`None`: fail at once if none is free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_timeout_ms: Option<u64>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// User id the instance runs as; `None`: a dedicated unprivileged uid
    /// for this instance (`INSTANCE_UID_BASE` + instance id). `Some(0)`
    /// runs it as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group id; `None`: the same number as the uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Install `hotmem-run`'s seccomp filter (no `prctl(PR_HOTMEM)`,
    /// `ptrace`, `process_vm_*`, mounts or namespace changes); `None`: when
    /// the guest kernel supports seccomp filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<bool>,
}

/// First of the dedicated uids (and gids) of instances: instance `n` runs
/// as `INSTANCE_UID_BASE + n` unless its start request names a user.
pub const INSTANCE_UID_BASE: u32 = 100_000;

fn default_true() -> bool {
    true
}

/// Arguments of [`Op::StopInstance`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopInstanceArgs {
    /// The instance id from [`Op::StartInstance`].
    pub instance: u64,
    /// Time between SIGTERM and SIGKILL, in ms (default 0: SIGKILL at once).
    #[serde(default)]
    pub grace_ms: u64,
}

/// Arguments of [`Op::Events`].
///
/// With `after_seq` the agent keeps every event until a later request
/// acknowledges it: `after_seq: N` acknowledges (forgets) the events up to
/// sequence number N and returns those after it, so a host that lost a
/// response asks again with the same cursor and loses nothing. Without it
/// (protocol v1 hosts) the queued events are returned and forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsArgs {
    /// If no event is queued, wait up to this long for one, in ms.
    #[serde(default)]
    pub wait_ms: u64,
    /// The highest sequence number the host has processed (0: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// The agent run `after_seq` belongs to ([`EventList::agent_id`]); if
    /// the agent is another one (it restarted), nothing is acknowledged and
    /// all its events are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// Arguments of [`Op::WaitFreePartitions`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitFreePartitionsArgs {
    /// How many partitions must be `free`.
    pub count: u64,
    /// Online offline memory blocks into HotMem while waiting (for guests
    /// whose virtio-mem driver leaves hot-added blocks offline).
    #[serde(default)]
    pub online: bool,
    /// Give up after this many ms (answered with [`ErrorKind::Timeout`]).
    pub timeout_ms: u64,
}

/// Lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Its main process is alive.
    Running,
    /// Its main process ended.
    Exited,
}

/// How an instance's main process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceExit {
    /// Exit status, if it exited normally.
    pub status: Option<i32>,
    /// Terminating signal, if a signal killed it.
    pub signal: Option<i32>,
    /// The OOM killer killed a process of the instance (from its cgroup's
    /// `memory.events`; covers memcg and partition-scoped OOM).
    pub oom_killed: bool,
    /// The agent stopped it on request.
    pub stopped: bool,
    /// Last lines of its standard error (lossy UTF-8).
    #[serde(default)]
    pub stderr_tail: String,
}

/// An instance as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Agent-assigned id, unique per agent run.
    pub instance: u64,
    /// PID of the instance's main process.
    pub pid: u32,
    /// The command.
    pub argv: Vec<String>,
    /// The HotMem partition it is bound to (`None` if unbound).
    pub partition: Option<u64>,
    /// Its cgroup, if it has one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Memory limit in bytes, if any.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Running or exited.
    pub state: InstanceState,
    /// Memory charged to its cgroup (`memory.current`), bytes.
    #[serde(default)]
    pub memory_current: Option<u64>,
    /// Pages in use in its partition, in bytes.
    #[serde(default)]
    pub partition_used: Option<u64>,
    /// Resident set size of the main process, bytes.
    #[serde(default)]
    pub rss: Option<u64>,
    /// Microseconds from spawn until the instance was bound and exec'd.
    pub start_us: u64,
    /// User id it runs as (`None` from agents that did not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group id it runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Whether it runs under `hotmem-run`'s seccomp filter.
    #[serde(default)]
    pub seccomp: bool,
    /// How it ended, once it has.
    #[serde(default)]
    pub exit: Option<InstanceExit>,
}

/// Result of [`Op::ListInstances`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    /// Instances in start order.
    pub instances: Vec<Instance>,
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceEventKind {
    /// Its main process ended (on its own or stopped).
    InstanceExited,
    /// The OOM killer killed one of its processes.
    OomKilled,
    /// An event kind defined by a newer protocol revision.
    #[serde(other)]
    Unknown,
}

/// An instance event, as queued by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEvent {
    /// Sequence number, increasing from 1 per agent run.
    pub seq: u64,
    /// What happened.
    pub kind: InstanceEventKind,
    /// The instance.
    pub instance: u64,
    /// Its partition, if it was bound.
    pub partition: Option<u64>,
    /// The exit, for [`InstanceEventKind::InstanceExited`].
    #[serde(default)]
    pub exit: Option<InstanceExit>,
    /// Guest uptime (`CLOCK_BOOTTIME`) when the agent saw it, ms.
    pub uptime_ms: u64,
}

/// Result of [`Op::Events`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    /// The events after the request's cursor (or, without one, all queued
    /// events), oldest first.
    pub events: Vec<InstanceEvent>,
    /// Events dropped because the queue was full.
    #[serde(default)]
    pub dropped: u64,
    /// The agent run these sequence numbers belong to ([`HelloResult::agent_id`]);
    /// a cursor from another run means nothing here.
    #[serde(default)]
    pub agent_id: String,
}

/// State of a HotMem partition (`/sys/kernel/mm/hotmem/partitions/partN/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// No block of it is online.
    Absent,
    /// Some, not all, of its blocks are online.
    Populating,
    /// Fully online, nobody bound.
    Free,
    /// A process is bound to it.
    Bound,
    /// Its users are gone, pages are still in use.
    Draining,
    /// Being offlined.
    Offlining,
    /// A state this side does not know (a newer kernel or agent).
    #[serde(other)]
    Unknown,
}

impl PartitionState {
    /// Every known state.
    pub const ALL: [PartitionState; 6] = [
        Self::Absent,
        Self::Populating,
        Self::Free,
        Self::Bound,
        Self::Draining,
        Self::Offlining,
    ];

    /// The name the kernel (and the protocol) use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Populating => "populating",
            Self::Free => "free",
            Self::Bound => "bound",
            Self::Draining => "draining",
            Self::Offlining => "offlining",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the kernel's name; anything else is [`PartitionState::Unknown`].
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name.trim())
            .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One HotMem partition (`/sys/kernel/mm/hotmem/partitions/partN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The N of `partN`.
    pub id: u64,
    /// Its state.
    pub state: PartitionState,
    /// Processes bound to it.
    pub users: u64,
    /// Pages in use.
    pub used_pages: u64,
    /// Memory blocks online.
    pub online_blocks: u64,
}

/// Result of [`Op::Partitions`] and [`Op::WaitFreePartitions`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionsResult {
    /// Whether the guest runs with `hotmem=on`.
    pub enabled: bool,
    /// Partition size in bytes.
    pub partition_size: u64,
    /// The partitions, by id.
    pub partitions: Vec<Partition>,
    /// Memory blocks that are present but offline.
    pub offline_blocks: u64,
    /// Blocks onlined into HotMem by this request.
    #[serde(default)]
    pub onlined: u64,
    /// How long the request took in the guest, µs.
    #[serde(default)]
    pub duration_us: u64,
}

impl PartitionsResult {
    /// Number of partitions in state `free`.
    pub fn free(&self) -> u64 {
        self.partitions
            .iter()
            .filter(|p| p.state == PartitionState::Free)
            .count() as u64
    }
}

/// Result of [`Op::OnlineHotmemBlocks`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineResult {
    /// Blocks onlined (the N of `memoryN`).
    pub onlined: Vec<u64>,
    /// How long it took in the guest, µs.
    pub duration_us: u64,
}

/// Result of [`Op::Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// Protocol version the agent speaks.
    pub version: u32,
    /// Version of the agent binary.
    #[serde(default)]
    pub agent_version: String,
    /// Guest kernel release, from `uname(2)`.
    pub kernel_release: String,
    /// Guest uptime (`CLOCK_BOOTTIME`) in milliseconds.
    pub uptime_ms: u64,
    /// The guest's boot id (`/proc/sys/kernel/random/boot_id`); changes
    /// with every guest boot. Empty from older agents.
    #[serde(default)]
    pub boot_id: String,
    /// Identifies this agent process within the boot; a different value
    /// with the same `boot_id` means the agent restarted (and lost track
    /// of the instances it had started). Empty from older agents.
    #[serde(default)]
    pub agent_id: String,
    /// The git revision the agent was built from ([`BUILD_REVISION`]).
    #[serde(default)]
    pub build_revision: String,
}

/// Result of [`Op::Exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status, if the program exited normally.
    pub status: Option<i32>,
    /// Terminating signal, if the program was killed by one.
    pub signal: Option<i32>,
    /// Whether the agent killed the program because `timeout_ms` expired.
    pub timed_out: bool,
    /// Captured standard output (lossy UTF-8, possibly truncated).
    pub stdout: String,
    /// Captured standard error (lossy UTF-8, possibly truncated).
    pub stderr: String,
    /// Wall-clock run time in microseconds, from spawn to exit.
    pub duration_us: u64,
    /// Whether stdout or stderr hit the agent's capture limit.
    #[serde(default)]
    pub truncated: bool,
}

impl ExecResult {
    /// True if the program exited normally with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// A short human description of how the program ended.
    pub fn describe_exit(&self) -> String {
        match (self.timed_out, self.status, self.signal) {
            (true, _, _) => "timed out".to_owned(),
            (false, Some(code), _) => format!("exit status {code}"),
            (false, None, Some(sig)) => format!("killed by signal {sig}"),
            (false, None, None) => "unknown exit".to_owned(),
        }
    }
}

/// Result of [`Op::ReadFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileResult {
    /// File contents (lossy UTF-8).
    pub data: String,
}

/// The empty result `{}` of operations that only succeed or fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Classification of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed (bad JSON, missing or mistyped fields).
    BadRequest,
    /// The request's `"v"` is not a version the agent speaks.
    UnsupportedVersion,
    /// The `"op"` is unknown to this agent.
    UnsupportedOp,
    /// An I/O error, e.g. a failed `open`/`write` or a failed spawn.
    Io,
    /// The operation did not finish in time.
    Timeout,
    /// The request names an instance the agent does not know.
    NoSuchInstance,
    /// No HotMem partition could be bound (`hotmem-run` exit 125).
    BindFailed,
    /// A bug or unexpected state in the agent.
    Internal,
    /// The host cancelled the request ([`Op::Cancel`]).
    Cancelled,
    /// The result would exceed a size limit (e.g. `read_file`'s `max_bytes`).
    TooLarge,
    /// An error kind defined by a newer protocol revision.
    #[serde(other)]
    Unknown,
}

/// The `"error"` object of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ErrorInfo {
    /// Machine-readable class.
    pub kind: ErrorKind,
    /// Human-readable detail, e.g. `"Invalid argument (os error 22)"`.
    pub message: String,
}

impl ErrorInfo {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// An agent -> host response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// Id of the request answered; `None` if the request could not be parsed.
    pub id: Option<u64>,
    /// The operation's result object, or the error.
    pub outcome: Result<Value, ErrorInfo>,
}

impl Response {
    /// A successful response carrying `result`.
    pub fn ok(id: u64, result: Value) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id: Some(id),
            outcome: Ok(result),
        }
    }

    /// A failed response.
    pub fn error(id: Option<u64>, error: ErrorInfo) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            outcome: Err(error),
        }
    }
}

/// The on-the-wire shape of [`Response`] (`ok` + `result` | `error`).
#[derive(Clone, Serialize, Deserialize)]
struct WireResponse {
    v: u32,
    id: Option<u64>,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorInfo>,
}

impl TryFrom<WireResponse> for Response {
    type Error = String;

    fn try_from(w: WireResponse) -> Result<Self, Self::Error> {
        let outcome = match (w.ok, w.result, w.error) {
            (true, Some(result), _) => Ok(result),
            (true, None, _) => return Err("\"ok\":true response without \"result\"".into()),
            (false, _, Some(error)) => Err(error),
            (false, _, None) => return Err("\"ok\":false response without \"error\"".into()),
        };
        Ok(Self {
            v: w.v,
            id: w.id,
            outcome,
        })
    }
}

impl From<Response> for WireResponse {
    fn from(r: Response) -> Self {
        let (ok, result, error) = match r.outcome {
            Ok(result) => (true, Some(result), None),
            Err(error) => (false, None, Some(error)),
        };
        Self {
            v: r.v,
            id: r.id,
            ok,
            result,
            error,
        }
    }
}

/// An asynchronous agent -> host notification (reserved; none defined in v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Protocol version.
    pub v: u32,
    /// Event name, e.g. a future `"instance_exited"`.
    pub event: String,
    /// Event payload.
    #[serde(default)]
    pub data: Value,
}

/// Any message an agent may send.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// The answer to a request.
    Response(Response),
    /// An unsolicited notification.
    Event(Event),
}

/// A request the agent could not accept; carries what it needs to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request {id:?} rejected: {info}")]
pub struct RequestError {
    /// The request id, if it could be recovered from the input.
    pub id: Option<u64>,
    /// Why the request was rejected.
    pub info: ErrorInfo,
}

impl RequestError {
    fn new(id: Option<u64>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            id,
            info: ErrorInfo::new(kind, message),
        }
    }

    /// The error response to send back for this rejected request.
    pub fn into_response(self) -> Response {
        Response::error(self.id, self.info)
    }
}

/// Why an agent message could not be decoded by the host.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The line is not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The line is JSON but not an object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// The message's `"v"` is missing or not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0:?} (expected {PROTOCOL_VERSION})")]
    UnsupportedVersion(Option<u64>),
    /// The object does not have the shape of a response or event.
    #[error("invalid message: {0}")]
    Invalid(#[source] serde_json::Error),
}

/// Serializes `msg` as one protocol line, including the trailing `\n`.
pub fn encode_line<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    Ok(line)
}

/// Parses one request line (trailing newline optional), as the agent does.
///
/// The error says which id to answer, so the agent can always respond:
/// malformed JSON gets `id: None`; a bad version, unknown op or bad
/// arguments keep the id when it is readable.
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        RequestError::new(None, ErrorKind::BadRequest, format!("malformed JSON: {e}"))
    })?;
    let obj = value.as_object().ok_or_else(|| {
        RequestError::new(None, ErrorKind::BadRequest, "request is not a JSON object")
    })?;
    let id = obj.get("id").and_then(Value::as_u64);
    check_request_header(obj, id)?;
    serde_json::from_value(value)
        .map_err(|e| RequestError::new(id, ErrorKind::BadRequest, format!("invalid request: {e}")))
}

/// Checks `"v"` and `"op"` before the full parse, to give precise error kinds.
fn check_request_header(obj: &Map<String, Value>, id: Option<u64>) -> Result<(), RequestError> {
    match obj.get("v") {
        None => {
            return Err(RequestError::new(
                id,
                ErrorKind::BadRequest,
                "missing \"v\"",
            ))
        }
        Some(v) if v.as_u64() != Some(u64::from(PROTOCOL_VERSION)) => {
            return Err(RequestError::new(
                id,
                ErrorKind::UnsupportedVersion,
                format!("protocol version {v} is not supported (agent speaks {PROTOCOL_VERSION})"),
            ))
        }
        Some(_) => {}
    }
    match obj.get("op").map(|op| (op, op.as_str())) {
        None => Err(RequestError::new(
            id,
            ErrorKind::BadRequest,
            "missing \"op\"",
        )),
        Some((_, Some(name))) if Op::NAMES.contains(&name) => Ok(()),
        Some((op, _)) => Err(RequestError::new(
            id,
            ErrorKind::UnsupportedOp,
            format!("unsupported op {op}"),
        )),
    }
}

/// Parses one line received from the agent, as the host does.
pub fn decode_agent_message(line: &[u8]) -> Result<AgentMessage, DecodeError> {
    let value: Value = serde_json::from_slice(line).map_err(DecodeError::Json)?;
    let obj = value.as_object().ok_or(DecodeError::NotAnObject)?;
    let v = obj.get("v").and_then(Value::as_u64);
    if v != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    if obj.contains_key("event") {
        serde_json::from_value(value)
            .map(AgentMessage::Event)
            .map_err(DecodeError::Invalid)
    } else {
        serde_json::from_value(value)
            .map(AgentMessage::Response)
            .map_err(DecodeError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip_request(req: &Request) {
        let line = encode_line(req).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(&decode_request(&line).unwrap(), req);
    }

    fn all_ops() -> Vec<Op> {
        vec![
            Op::Hello,
            Op::Exec(ExecArgs {
                argv: vec!["sh".into(), "-c".into(), "echo 'a\nb'".into()],
                env: vec![("K".into(), "V=1".into())],
                timeout_ms: Some(1500),
            }),
            Op::ReadFile(ReadFileArgs::new("/proc/meminfo")),
            Op::ReadFile(ReadFileArgs {
                path: "/proc/vmstat".into(),
                max_bytes: Some(1 << 20),
            }),
            Op::WriteFile(WriteFileArgs {
                path: "/sys/x".into(),
                data: "online_movable\n".into(),
            }),
            Op::Poweroff,
            Op::StartInstance(StartInstanceArgs {
                argv: vec!["hotmem-memhog".into(), "--size".into(), "64M".into()],
                memory_limit: Some(128 << 20),
                hotmem: true,
                bind_timeout_ms: Some(1000),
                env: vec![],
                uid: Some(1000),
                gid: None,
                seccomp: Some(false),
            }),
            Op::StopInstance(StopInstanceArgs {
                instance: 3,
                grace_ms: 100,
            }),
            Op::ListInstances,
            Op::Events(EventsArgs {
                wait_ms: 50,
                ..EventsArgs::default()
            }),
            Op::Events(EventsArgs {
                wait_ms: 0,
                after_seq: Some(12),
                agent_id: Some("7-1234".into()),
            }),
            Op::Partitions,
            Op::OnlineHotmemBlocks,
            Op::WaitFreePartitions(WaitFreePartitionsArgs {
                count: 2,
                online: true,
                timeout_ms: 5000,
            }),
            Op::Cancel(CancelArgs { request: 41 }),
        ]
    }

    #[test]
    fn requests_roundtrip() {
        for (i, op) in all_ops().into_iter().enumerate() {
            roundtrip_request(&Request::new(i as u64 + 40, op));
        }
    }

    #[test]
    fn op_names_match_serialized_tags() {
        let ops = all_ops();
        let mut names: Vec<_> = ops.iter().map(Op::name).collect();
        names.dedup();
        assert_eq!(names, Op::NAMES);
        for op in ops {
            let v = serde_json::to_value(Request::new(1, op.clone())).unwrap();
            assert_eq!(v["op"], op.name());
            assert!(Op::NAMES.contains(&op.name()));
        }
    }

    #[test]
    fn request_wire_format() {
        let req = Request::new(7, Op::Hello);
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"v": 1, "id": 7, "op": "hello"})
        );
        let exec = decode_request(br#"{"v":1,"id":3,"op":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(
            exec.op,
            Op::Exec(ExecArgs {
                argv: vec!["true".into()],
                env: vec![],
                timeout_ms: None,
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let req = decode_request(br#"{"v":1,"id":3,"op":"hello","future":{"x":1}}"#).unwrap();
        assert_eq!(req, Request::new(3, Op::Hello));
    }

    #[test]
    fn malformed_json_has_no_id() {
        for bad in [&b"{\"v\":1,\"id\":"[..], b"", b"not json", b"\xff\xfe"] {
            let err = decode_request(bad).unwrap_err();
            assert_eq!(err.id, None);
            assert_eq!(err.info.kind, ErrorKind::BadRequest);
        }
        let err = decode_request(b"[1,2]").unwrap_err();
        assert_eq!((err.id, err.info.kind), (None, ErrorKind::BadRequest));
    }

    #[test]
    fn wrong_version_keeps_id() {
        let err = decode_request(br#"{"v":2,"id":9,"op":"hello"}"#).unwrap_err();
        assert_eq!(err.id, Some(9));
        assert_eq!(err.info.kind, ErrorKind::UnsupportedVersion);
        let err = decode_request(br#"{"v":"1","id":9,"op":"hello"}"#).unwrap_err();
        assert_eq!(err.info.kind, ErrorKind::UnsupportedVersion);
        let err = decode_request(br#"{"id":9,"op":"hello"}"#).unwrap_err();
        assert_eq!((err.id, err.info.kind), (Some(9), ErrorKind::BadRequest));
    }

    #[test]
    fn start_instance_defaults() {
        let req = decode_request(br#"{"v":1,"id":8,"op":"start_instance","argv":["sleep","1"]}"#)
            .unwrap();
        let Op::StartInstance(args) = req.op else {
            panic!("not start_instance: {req:?}");
        };
        assert_eq!(args.argv, ["sleep", "1"]);
        assert!(args.hotmem, "binding is the default");
        assert_eq!((args.memory_limit, args.bind_timeout_ms), (None, None));
        let req = decode_request(br#"{"v":1,"id":8,"op":"stop_instance","instance":4}"#).unwrap();
        assert_eq!(
            req.op,
            Op::StopInstance(StopInstanceArgs {
                instance: 4,
                grace_ms: 0
            })
        );
        let req = decode_request(br#"{"v":1,"id":8,"op":"events"}"#).unwrap();
        assert_eq!(req.op, Op::Events(EventsArgs::default()));
        let Op::StartInstance(args) =
            decode_request(br#"{"v":1,"id":8,"op":"start_instance","argv":["x"]}"#)
                .unwrap()
                .op
        else {
            panic!("not start_instance");
        };
        assert_eq!(
            (args.uid, args.gid, args.seccomp),
            (None, None, None),
            "a dedicated user and seccomp-if-supported are the defaults"
        );
    }

    #[test]
    fn instance_ops_reject_bad_arguments() {
        for bad in [
            &br#"{"v":1,"id":9,"op":"start_instance"}"#[..],
            br#"{"v":1,"id":9,"op":"start_instance","argv":"sleep 1"}"#,
            br#"{"v":1,"id":9,"op":"start_instance","argv":[],"memory_limit":-1}"#,
            br#"{"v":1,"id":9,"op":"stop_instance"}"#,
            br#"{"v":1,"id":9,"op":"stop_instance","instance":"x"}"#,
            br#"{"v":1,"id":9,"op":"wait_free_partitions","count":1}"#,
            br#"{"v":1,"id":9,"op":"events","wait_ms":1.5}"#,
        ] {
            let err = decode_request(bad).unwrap_err();
            assert_eq!(
                (err.id, err.info.kind),
                (Some(9), ErrorKind::BadRequest),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn instance_results_roundtrip() {
        let exit = InstanceExit {
            status: None,
            signal: Some(9),
            oom_killed: true,
            stopped: false,
            stderr_tail: "Killed\n".into(),
        };
        let inst = Instance {
            instance: 1,
            pid: 77,
            argv: vec!["x".into()],
            partition: Some(8),
            cgroup: Some("/sys/fs/cgroup/hotmem/i1".into()),
            memory_limit: Some(1 << 27),
            state: InstanceState::Exited,
            memory_current: Some(4096),
            partition_used: Some(0),
            rss: None,
            start_us: 1200,
            uid: Some(100_001),
            gid: Some(100_001),
            seccomp: true,
            exit: Some(exit.clone()),
        };
        let list = InstanceList {
            instances: vec![inst.clone()],
        };
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["instances"][0]["state"], "exited");
        assert_eq!(serde_json::from_value::<InstanceList>(v).unwrap(), list);
        let ev = EventList {
            events: vec![InstanceEvent {
                seq: 1,
                kind: InstanceEventKind::OomKilled,
                instance: 1,
                partition: Some(8),
                exit: Some(exit),
                uptime_ms: 5,
            }],
            dropped: 0,
            agent_id: "12-345".into(),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["events"][0]["kind"], "oom_killed");
        assert_eq!(serde_json::from_value::<EventList>(v).unwrap(), ev);
        let future: InstanceEvent = serde_json::from_value(json!({
            "seq": 2, "kind": "migrated", "instance": 1, "partition": null, "uptime_ms": 1
        }))
        .unwrap();
        assert_eq!(future.kind, InstanceEventKind::Unknown);
    }

    #[test]
    fn partitions_count_free() {
        let part = |id, state: PartitionState| Partition {
            id,
            state,
            users: 0,
            used_pages: 0,
            online_blocks: 1,
        };
        let r = PartitionsResult {
            enabled: true,
            partition_size: 128 << 20,
            partitions: vec![
                part(8, PartitionState::Free),
                part(9, PartitionState::Bound),
                part(10, PartitionState::Free),
            ],
            ..PartitionsResult::default()
        };
        assert_eq!(r.free(), 2);
    }

    #[test]
    fn partition_states_parse_with_unknown_fallback() {
        for state in PartitionState::ALL {
            assert_eq!(PartitionState::from_name(state.name()), state);
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
        assert_eq!(PartitionState::from_name("free\n"), PartitionState::Free);
        assert_eq!(
            PartitionState::from_name("evicting"),
            PartitionState::Unknown
        );
        let p: Partition = serde_json::from_value(json!({
            "id": 3, "state": "evicting", "users": 0, "used_pages": 0, "online_blocks": 1
        }))
        .unwrap();
        assert_eq!(p.state, PartitionState::Unknown);
    }

    #[test]
    fn older_peers_decode() {
        // A hello from an agent before boot ids and revisions.
        let hello: HelloResult = serde_json::from_value(json!({
            "version": 1, "kernel_release": "6.12", "uptime_ms": 3
        }))
        .unwrap();
        assert!(hello.boot_id.is_empty() && hello.build_revision.is_empty());
        // An event list and an instance from an older agent.
        let list: EventList = serde_json::from_value(json!({"events": []})).unwrap();
        assert!(list.agent_id.is_empty());
        let inst: Instance = serde_json::from_value(json!({
            "instance": 1, "pid": 2, "argv": ["x"], "partition": null,
            "state": "running", "start_us": 5
        }))
        .unwrap();
        assert_eq!((inst.uid, inst.seccomp), (None, false));
        // New error kinds reach an older host as Unknown, and ours decode.
        let info: ErrorInfo =
            serde_json::from_value(json!({"kind": "cancelled", "message": "m"})).unwrap();
        assert_eq!(info.kind, ErrorKind::Cancelled);
    }

    #[test]
    fn build_revision_is_recorded() {
        assert!(!BUILD_REVISION.is_empty());
    }

    #[test]
    fn unknown_op_is_unsupported() {
        let err = decode_request(br#"{"v":1,"id":5,"op":"migrate_instance"}"#).unwrap_err();
        assert_eq!(err.id, Some(5));
        assert_eq!(err.info.kind, ErrorKind::UnsupportedOp);
        assert!(err.info.message.contains("migrate_instance"));
        let err = decode_request(br#"{"v":1,"id":5,"op":42}"#).unwrap_err();
        assert_eq!(err.info.kind, ErrorKind::UnsupportedOp);
        let err = decode_request(br#"{"v":1,"id":5}"#).unwrap_err();
        assert_eq!(err.info.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn bad_arguments_keep_id() {
        let err = decode_request(br#"{"v":1,"id":6,"op":"exec","argv":"ls"}"#).unwrap_err();
        assert_eq!((err.id, err.info.kind), (Some(6), ErrorKind::BadRequest));
        let err = decode_request(br#"{"v":1,"op":"hello"}"#).unwrap_err();
        assert_eq!((err.id, err.info.kind), (None, ErrorKind::BadRequest));
        let resp = err.into_response();
        assert_eq!(
            serde_json::to_value(&resp).unwrap()["id"],
            Value::Null,
            "unparsable id must be sent as null"
        );
    }

    #[test]
    fn response_wire_format() {
        let ok = Response::ok(7, serde_json::to_value(Empty {}).unwrap());
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"v": 1, "id": 7, "ok": true, "result": {}})
        );
        let err = Response::error(None, ErrorInfo::new(ErrorKind::Io, "boom"));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"v": 1, "id": null, "ok": false,
                   "error": {"kind": "io", "message": "boom"}})
        );
    }

    #[test]
    fn responses_roundtrip() {
        let exec = ExecResult {
            status: Some(3),
            stdout: "x\n".into(),
            duration_us: 12,
            ..ExecResult::default()
        };
        let responses = [
            Response::ok(1, serde_json::to_value(&exec).unwrap()),
            Response::error(Some(2), ErrorInfo::new(ErrorKind::Timeout, "slow")),
            Response::error(None, ErrorInfo::new(ErrorKind::BadRequest, "?")),
        ];
        for resp in responses {
            let line = encode_line(&resp).unwrap();
            match decode_agent_message(&line).unwrap() {
                AgentMessage::Response(r) => assert_eq!(r, resp),
                other => panic!("expected a response, got {other:?}"),
            }
        }
    }

    #[test]
    fn inconsistent_responses_are_rejected() {
        for bad in [
            &br#"{"v":1,"id":1,"ok":true}"#[..],
            br#"{"v":1,"id":1,"ok":false,"result":{}}"#,
            br#"{"v":1,"id":1}"#,
        ] {
            assert!(matches!(
                decode_agent_message(bad),
                Err(DecodeError::Invalid(_))
            ));
        }
        assert!(matches!(
            decode_agent_message(br#"{"v":2,"id":1,"ok":true,"result":{}}"#),
            Err(DecodeError::UnsupportedVersion(Some(2)))
        ));
        assert!(matches!(
            decode_agent_message(b"{"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn unknown_error_kind_decodes_as_unknown() {
        let line = br#"{"v":1,"id":1,"ok":false,"error":{"kind":"quota","message":"m"}}"#;
        let Ok(AgentMessage::Response(r)) = decode_agent_message(line) else {
            panic!("not a response");
        };
        assert_eq!(r.outcome.unwrap_err().kind, ErrorKind::Unknown);
    }

    #[test]
    fn events_are_distinguished_from_responses() {
        let line = br#"{"v":1,"event":"instance_exited","data":{"instance":3}}"#;
        let Ok(AgentMessage::Event(ev)) = decode_agent_message(line) else {
            panic!("not an event");
        };
        assert_eq!(ev.event, "instance_exited");
        assert_eq!(ev.data, json!({"instance": 3}));
    }

    #[test]
    fn exec_result_helpers() {
        let mut r = ExecResult {
            status: Some(0),
            ..ExecResult::default()
        };
        assert!(r.success());
        r.status = None;
        r.signal = Some(9);
        assert_eq!(r.describe_exit(), "killed by signal 9");
        r.timed_out = true;
        assert!(!r.success());
        assert_eq!(r.describe_exit(), "timed out");
    }
}
