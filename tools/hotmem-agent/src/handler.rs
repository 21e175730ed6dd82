//! Request handling: turns one request line into one response.

use std::fs::{self, OpenOptions};
use std::io::Write;

use hotmem_proto::{
    decode_request, Empty, ErrorInfo, ErrorKind, HelloResult, Op, ReadFileResult, Request,
    Response, WriteFileArgs, PROTOCOL_VERSION,
};
use nix::sys::utsname::uname;
use nix::time::{clock_gettime, ClockId};
use serde::Serialize;

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

/// Request handler; its only state is the instance table.
#[derive(Debug, Clone)]
pub struct Handler {
    /// Cap on each captured output stream of `exec`, in bytes.
    pub output_cap: usize,
    /// The function instances started through this agent.
    pub instances: Instances,
    /// HotMem and memory-block sysfs.
    pub sysfs: SysfsPaths,
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
        }
    }

    /// Handles one raw request line; malformed input yields an error response.
    pub fn handle_line(&self, line: &[u8]) -> (Response, After) {
        match decode_request(line) {
            Ok(request) => self.handle(request),
            Err(rejected) => (rejected.into_response(), After::Continue),
        }
    }

    /// Handles one parsed request.
    pub fn handle(&self, request: Request) -> (Response, After) {
        let mut after = After::Continue;
        let outcome = match request.op {
            Op::Hello => to_result(hello()),
            Op::Exec(args) => to_result(exec::run(&args, self.output_cap)),
            Op::ReadFile(args) => to_result(read_file(&args.path)),
            Op::WriteFile(args) => to_result(write_file(&args)),
            Op::Poweroff => {
                after = After::PowerOff;
                to_result(Ok(Empty {}))
            }
            Op::StartInstance(args) => to_result(self.instances.start(&args)),
            Op::StopInstance(args) => to_result(self.instances.stop(&args)),
            Op::ListInstances => to_result(Ok(self.instances.list())),
            Op::Events(args) => to_result(Ok(self.instances.events(&args))),
            Op::Partitions => to_result(self.sysfs.partitions()),
            Op::OnlineHotmemBlocks => to_result(self.sysfs.online_hotmem_blocks()),
            Op::WaitFreePartitions(args) => to_result(self.sysfs.wait_free_partitions(&args)),
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
    })
}

/// The `read_file` operation.
fn read_file(path: &str) -> Result<ReadFileResult, ErrorInfo> {
    let bytes = fs::read(path).map_err(|e| io_error("read", path, e))?;
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
        let (resp, after) = Handler::default().handle(Request::new(11, op));
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
        let read: ReadFileResult = call(Op::ReadFile(ReadFileArgs { path })).unwrap();
        assert_eq!(read.data, "hello\n");
    }

    #[test]
    fn file_errors_carry_errno_text() {
        let err = call::<ReadFileResult>(Op::ReadFile(ReadFileArgs {
            path: "/nonexistent/x".into(),
        }))
        .unwrap_err();
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
    fn bad_lines_get_error_responses() {
        let h = Handler::default();
        let (resp, after) = h.handle_line(b"{nope");
        assert_eq!((resp.id, after), (None, After::Continue));
        assert_eq!(resp.outcome.unwrap_err().kind, ErrorKind::BadRequest);
        let (resp, _) = h.handle_line(br#"{"v":1,"id":4,"op":"frobnicate"}"#);
        assert_eq!(resp.id, Some(4));
        assert_eq!(resp.outcome.unwrap_err().kind, ErrorKind::UnsupportedOp);
        let (resp, _) = h.handle_line(br#"{"v":7,"id":5,"op":"hello"}"#);
        assert_eq!(
            resp.outcome.unwrap_err().kind,
            ErrorKind::UnsupportedVersion
        );
    }

    #[test]
    fn poweroff_is_acknowledged_before_acting() {
        let (resp, after) = Handler::default().handle(Request::new(2, Op::Poweroff));
        assert_eq!(after, After::PowerOff);
        assert_eq!(resp.outcome.unwrap(), serde_json::json!({}));
    }
}
