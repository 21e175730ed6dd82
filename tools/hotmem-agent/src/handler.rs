//! Request handling: turns one request line into one response.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use hotmem_proto::{
    CancelResult, Empty, ErrorInfo, ErrorKind, HelloResult, Op, ReadFileArgs, ReadFileResult,
    Request, Response, WriteFileArgs, BUILD_REVISION, DEFAULT_READ_FILE_MAX, PROTOCOL_VERSION,
    READ_FILE_MAX,
};
use nix::sys::utsname::uname;
use nix::time::{clock_gettime, ClockId};
use serde::Serialize;

use crate::cancel::{Cancel, Registry};
use crate::exec;
use crate::instances::{InstanceConfig, Instances};
use crate::sysfs::SysfsPaths;

/// Default cap on each captured output stream of `exec`.
pub const DEFAULT_OUTPUT_CAP: usize = 4 << 20;

/// What the serve loop must do after sending a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep serving.
    Continue,
    /// The host asked for a power-off (already acknowledged).
    PowerOff,
}

/// Request handler: the instance table and the requests being served.
#[derive(Debug, Clone)]
pub struct Handler {
    /// Cap on each captured output stream of `exec`, in bytes.
    pub output_cap: usize,
    /// The function instances started through this agent.
    pub instances: Instances,
    /// HotMem and memory-block sysfs.
    pub sysfs: SysfsPaths,
    /// Requests being served, for `cancel`.
    pub requests: Arc<Registry>,
}

impl Default for Handler {
    fn default() -> Self {
        Self::new(InstanceConfig::default())
    }
}

impl Handler {
    /// A handler whose instances use `cfg`.
    pub fn new(cfg: InstanceConfig) -> Self {
        Self {
            output_cap: DEFAULT_OUTPUT_CAP,
            sysfs: cfg.sysfs.clone(),
            instances: Instances::new(cfg),
            requests: Arc::default(),
        }
    }

    /// Cancels every request being served; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        self.requests.cancel_all()
    }

    /// Handles one parsed request; a long operation gives up when `cancel`
    /// is cancelled.
    pub fn handle(&self, request: Request, cancel: &Cancel) -> (Response, After) {
        let mut after = After::Continue;
        let outcome = match request.op {
            Op::Hello => to_result(hello()),
            Op::Exec(args) => to_result(exec::run(&args, self.output_cap, cancel)),
            Op::ReadFile(args) => to_result(read_file(&args)),
            Op::WriteFile(args) => to_result(write_file(&args)),
            Op::Poweroff => {
                after = After::PowerOff;
                to_result(Ok(Empty {}))
            }
            Op::StartInstance(args) => to_result(self.instances.start(&args, cancel)),
            Op::StopInstance(args) => to_result(self.instances.stop(&args, cancel)),
            Op::ListInstances => to_result(Ok(self.instances.list())),
            Op::Events(args) => to_result(self.instances.events(&args, cancel)),
            Op::Partitions => to_result(self.sysfs.partitions()),
            Op::OnlineHotmemBlocks => to_result(self.sysfs.online_hotmem_blocks()),
            Op::WaitFreePartitions(args) => {
                to_result(self.sysfs.wait_free_partitions(&args, cancel))
            }
            Op::Cancel(args) => to_result(Ok(CancelResult {
                cancelled: self.requests.cancel(args.request),
            })),
        };
        let response = match outcome {
            Ok(value) => Response::ok(request.id, value),
            Err(error) => Response::error(Some(request.id), error),
        };
        (response, after)
    }
}

/// Serializes an operation's typed result into the response's `result`.
fn to_result<T: Serialize>(r: Result<T, ErrorInfo>) -> Result<serde_json::Value, ErrorInfo> {
    r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| ErrorInfo::new(ErrorKind::Internal, e.to_string()))
    })
}

fn io_error(what: &str, path: &str, e: std::io::Error) -> ErrorInfo {
    ErrorInfo::new(ErrorKind::Io, format!("{what} {path}: {e}"))
}

/// This agent process within the boot: its pid and start time.
pub fn agent_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let started = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(|t| std::time::Duration::from(t).as_micros())
            .unwrap_or(0);
        format!("{}-{started}", std::process::id())
    })
}

/// The guest's boot id (empty if unreadable).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The `hello` operation.
fn hello() -> Result<HelloResult, ErrorInfo> {
    let uts = uname().map_err(|e| ErrorInfo::new(ErrorKind::Io, format!("uname: {e}")))?;
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map_err(|e| ErrorInfo::new(ErrorKind::Io, format!("clock_gettime: {e}")))?;
    let uptime = std::time::Duration::from(now);
    Ok(HelloResult {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: uts.release().to_string_lossy().into_owned(),
        uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
        boot_id: boot_id(),
        agent_id: agent_id().to_owned(),
        build_revision: BUILD_REVISION.to_owned(),
    })
}

/// The `read_file` operation: at most `max_bytes`, else `too_large` (the
/// file is read with a bound, so `/dev/zero` cannot exhaust the agent).
fn read_file(args: &ReadFileArgs) -> Result<ReadFileResult, ErrorInfo> {
    let max = args.max_bytes.unwrap_or(DEFAULT_READ_FILE_MAX);
    if max > READ_FILE_MAX {
        return Err(ErrorInfo::new(
            ErrorKind::BadRequest,
            format!("read_file: max_bytes {max} is over the limit of {READ_FILE_MAX}"),
        ));
    }
    let path = &args.path;
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("read", path, e))?;
    if bytes.len() as u64 > max {
        return Err(ErrorInfo::new(
            ErrorKind::TooLarge,
            format!("read_file {path}: more than {max} bytes"),
        ));
    }
    Ok(ReadFileResult {
        data: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The `write_file` operation. The data goes out in one `write_all`, so a
/// sysfs attribute sees a single store and its errno reaches the host.
fn write_file(args: &WriteFileArgs) -> Result<Empty, ErrorInfo> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.path)
        .map_err(|e| io_error("open", &args.path, e))?;
    file.write_all(args.data.as_bytes())
        .map_err(|e| io_error("write", &args.path, e))?;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotmem_proto::{ExecArgs, ExecResult, ReadFileArgs};
    use serde::de::DeserializeOwned;

    fn call<T: DeserializeOwned>(op: Op) -> Result<T, ErrorInfo> {
        let (resp, after) = Handler::default().handle(Request::new(11, op), &Cancel::never());
        assert_eq!(resp.id, Some(11));
        assert_eq!(after, After::Continue);
        resp.outcome.map(|v| serde_json::from_value(v).unwrap())
    }

    #[test]
    fn hello_reports_kernel_and_uptime() {
        let hello: HelloResult = call(Op::Hello).unwrap();
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert!(!hello.kernel_release.is_empty());
        assert!(hello.uptime_ms > 0);
        assert_eq!(hello.build_revision, BUILD_REVISION);
        assert_eq!(hello.boot_id.len(), 36, "{hello:?}");
        assert!(hello
            .agent_id
            .starts_with(&format!("{}-", std::process::id())));
        let again: HelloResult = call(Op::Hello).unwrap();
        assert_eq!(
            (again.boot_id, again.agent_id),
            (hello.boot_id, hello.agent_id)
        );
    }

    #[test]
    fn exec_reports_status() {
        let exec = |argv: &[&str]| -> ExecResult {
            call(Op::Exec(ExecArgs {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..ExecArgs::default()
            }))
            .unwrap()
        };
        assert_eq!(exec(&["true"]).status, Some(0));
        assert_eq!(exec(&["sh", "-c", "exit 3"]).status, Some(3));
    }

    #[test]
    fn write_then_read_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f").to_string_lossy().into_owned();
        let _: Empty = call(Op::WriteFile(WriteFileArgs {
            path: path.clone(),
            data: "hello\n".into(),
        }))
        .unwrap();
        let read: ReadFileResult = call(Op::ReadFile(ReadFileArgs::new(&path))).unwrap();
        assert_eq!(read.data, "hello\n");
        let exact: ReadFileResult = call(Op::ReadFile(ReadFileArgs {
            path: path.clone(),
            max_bytes: Some(6),
        }))
        .unwrap();
        assert_eq!(exact.data, "hello\n");
        let err = call::<ReadFileResult>(Op::ReadFile(ReadFileArgs {
            path,
            max_bytes: Some(5),
        }))
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
    }

    #[test]
    fn read_file_is_capped() {
        // An endless file ends at the default cap.
        let err = call::<ReadFileResult>(Op::ReadFile(ReadFileArgs::new("/dev/zero"))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge, "{}", err.message);
        let err = call::<ReadFileResult>(Op::ReadFile(ReadFileArgs {
            path: "/dev/zero".into(),
            max_bytes: Some(READ_FILE_MAX + 1),
        }))
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn cancel_reaches_a_running_request() {
        let h = Handler::default();
        let token = h.requests.begin(5);
        let (resp, _) = h.handle(
            Request::new(6, Op::Cancel(hotmem_proto::CancelArgs { request: 5 })),
            &Cancel::never(),
        );
        assert_eq!(
            resp.outcome.unwrap(),
            serde_json::json!({"cancelled": true})
        );
        assert!(token.is_cancelled());
        let (resp, _) = h.handle(
            Request::new(7, Op::Cancel(hotmem_proto::CancelArgs { request: 99 })),
            &Cancel::never(),
        );
        assert_eq!(
            resp.outcome.unwrap(),
            serde_json::json!({"cancelled": false})
        );
    }

    #[test]
    fn file_errors_carry_errno_text() {
        let err =
            call::<ReadFileResult>(Op::ReadFile(ReadFileArgs::new("/nonexistent/x"))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(err.message.contains("(os error 2)"), "{}", err.message);
        let dir = tempfile::tempdir().unwrap();
        let err = call::<Empty>(Op::WriteFile(WriteFileArgs {
            path: dir.path().to_string_lossy().into_owned(),
            data: "x".into(),
        }))
        .unwrap_err();
        assert!(err.message.contains("(os error 21)"), "{}", err.message);
    }

    #[test]
    fn poweroff_is_acknowledged_before_acting() {
        let (resp, after) =
            Handler::default().handle(Request::new(2, Op::Poweroff), &Cancel::never());
        assert_eq!(after, After::PowerOff);
        assert_eq!(resp.outcome.unwrap(), serde_json::json!({}));
    }
}
