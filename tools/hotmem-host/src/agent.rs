//! Host-side client of the guest agent (`hotmem-proto` over a Unix socket).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotmem_proto::{
    decode_agent_message, encode_line, AgentMessage, CancelArgs, ErrorInfo, EventList, EventsArgs,
    HelloResult, InstanceEvent, Op, Request, Response, BUILD_REVISION,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_COMMAND_TIMEOUT;
use crate::device::{AgentTransport, Diagnose};
use crate::vm::VmError;

/// How long sending a `cancel` for a timed-out request may take.
const CANCEL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest response line accepted (exec output is capped well below this).
const MAX_LINE: usize = 64 << 20;

/// A failed agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be connected.
    #[error("cannot connect to agent socket {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("agent socket I/O error during {op}: {source}")]
    Io {
        /// Operation in progress.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// No response within the deadline.
    #[error("agent did not answer {op} within {timeout:?}")]
    Timeout {
        /// Operation in progress.
        op: &'static str,
        /// The limit that expired.
        timeout: Duration,
    },
    /// QEMU closed the socket (QEMU exited, or the port was taken over).
    #[error("agent connection closed during {op}")]
    Disconnected {
        /// Operation in progress.
        op: &'static str,
    },
    /// The agent sent something that is not a valid response.
    #[error("protocol error during {op}: {detail}")]
    Protocol {
        /// Operation in progress.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The agent answered with an error.
    #[error("agent {op} failed: {} ({:?})", error.message, error.kind)]
    Remote {
        /// Operation that failed.
        op: &'static str,
        /// The agent's error.
        error: ErrorInfo,
    },
}

/// A request sent with [`AgentClient::start`], to be waited for with
/// [`AgentClient::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a started request must be finished (or it is never cancelled)"]
pub struct Pending {
    /// The request id.
    pub id: u64,
    /// The operation.
    pub op: &'static str,
}

/// A connection to a guest agent.
///
/// Requests can be pipelined: [`AgentClient::start`] several, then
/// [`AgentClient::finish`] each; answers to the others that arrive
/// meanwhile are kept. A request whose wait times out is cancelled in the
/// guest (`cancel`; agents that do not know it ignore it) and its late
/// answer is dropped.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    /// Received bytes not yet consumed as lines.
    buf: Vec<u8>,
    /// Prefix of `buf` already searched for a newline.
    scanned: usize,
    next_id: u64,
    /// Requests sent and not yet finished, by id.
    outstanding: HashMap<u64, &'static str>,
    /// Answers received for outstanding requests not being waited for.
    answered: HashMap<u64, Response>,
    /// Default limit of a request through [`AgentTransport`].
    timeout: Duration,
}

/// Decodes the result of a successful `op`.
pub fn decode_result<T: DeserializeOwned>(
    op: &'static str,
    value: serde_json::Value,
) -> Result<T, AgentError> {
    serde_json::from_value(value).map_err(|e| AgentError::Protocol {
        op,
        detail: format!("unexpected {op} result: {e}"),
    })
}

impl AgentClient {
    /// Connects to the agent socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, AgentError> {
        let stream = UnixStream::connect(path).map_err(|source| AgentError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_stream(stream))
    }

    /// Uses an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        // Ids start at a time-derived value so that a late answer to an
        // earlier connection's request cannot be mistaken for ours.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self {
            stream,
            buf: Vec::new(),
            scanned: 0,
            next_id: seed,
            outstanding: HashMap::new(),
            answered: HashMap::new(),
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Sends `op` and waits up to `timeout` for its response; on timeout
    /// the guest-side operation is cancelled.
    ///
    /// Responses to other ids (late answers to abandoned requests) and
    /// events (reserved in protocol v1) are skipped.
    pub fn call<T: DeserializeOwned>(
        &mut self,
        op: Op,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let pending = self.start(op, timeout)?;
        self.finish(pending, timeout)
    }

    /// Sends `op` without waiting for its answer.
    pub fn start(&mut self, op: Op, timeout: Duration) -> Result<Pending, AgentError> {
        let pending = Pending {
            id: self.next_id,
            op: op.name(),
        };
        self.next_id += 1;
        self.send(&Request::new(pending.id, op), timeout)?;
        self.outstanding.insert(pending.id, pending.op);
        Ok(pending)
    }

    /// Waits up to `timeout` for the answer to `pending` and decodes it.
    /// On timeout the request is cancelled in the guest and forgotten here.
    pub fn finish<T: DeserializeOwned>(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        decode_result(pending.op, self.finish_value(pending, timeout)?)
    }

    /// Like [`AgentClient::finish`], without decoding the result.
    pub fn finish_value(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        let result = self.wait_response(pending, timeout);
        self.outstanding.remove(&pending.id);
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if matches!(e, AgentError::Timeout { .. }) {
                    tracing::debug!(id = pending.id, op = pending.op, "agent: cancelling");
                    self.cancel(pending.id);
                }
                return Err(e);
            }
        };
        response.outcome.map_err(|error| AgentError::Remote {
            op: pending.op,
            error,
        })
    }

    /// Asks the agent to cancel request `id`, without waiting for the
    /// answer (which, like the cancelled request's, is then dropped).
    fn cancel(&mut self, id: u64) {
        let cancel_id = self.next_id;
        self.next_id += 1;
        let request = Request::new(cancel_id, Op::Cancel(CancelArgs { request: id }));
        // Best effort: a broken connection shows on the next call.
        let _ = self.send(&request, CANCEL_SEND_TIMEOUT);
    }

    fn wait_response(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<Response, AgentError> {
        if let Some(response) = self.answered.remove(&pending.id) {
            return Ok(response);
        }
        let name = pending.op;
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.read_line(name, deadline, timeout)?;
            let response = match decode_agent_message(&line) {
                Ok(AgentMessage::Response(r)) => r,
                Ok(AgentMessage::Event(_)) => continue,
                Err(e) => {
                    return Err(AgentError::Protocol {
                        op: name,
                        detail: e.to_string(),
                    })
                }
            };
            match response.id {
                // An id-less error is the agent failing to parse what we sent.
                None => return Ok(response),
                Some(id) if id == pending.id => return Ok(response),
                Some(id) if self.outstanding.contains_key(&id) => {
                    self.answered.insert(id, response);
                }
                // A late answer to an abandoned request.
                Some(_) => {}
            }
        }
    }

    fn send(&mut self, request: &Request, timeout: Duration) -> Result<(), AgentError> {
        let op = request.op.name();
        let line = encode_line(request).map_err(|e| AgentError::Protocol {
            op,
            detail: format!("cannot encode request: {e}"),
        })?;
        let io = |source| AgentError::Io { op, source };
        tracing::debug!(target: "hotmem_host::agent", "-> {}", String::from_utf8_lossy(line.trim_ascii_end()));
        self.stream.set_write_timeout(Some(timeout)).map_err(io)?;
        self.stream
            .write_all(&line)
            .map_err(|source| match source.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    AgentError::Timeout { op, timeout }
                }
                _ => AgentError::Io { op, source },
            })
    }

    /// Reads one line, keeping partial data across timeouts.
    fn read_line(
        &mut self,
        op: &'static str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>, AgentError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos + 1;
                self.scanned = 0;
                let line: Vec<u8> = self.buf.drain(..end).collect();
                tracing::debug!(target: "hotmem_host::agent", "<- {}", String::from_utf8_lossy(line.trim_ascii_end()));
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(AgentError::Protocol {
                    op,
                    detail: format!("response line longer than {MAX_LINE} bytes"),
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(AgentError::Timeout { op, timeout });
            }
            let io = |source| AgentError::Io { op, source };
            self.stream.set_read_timeout(Some(remaining)).map_err(io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(AgentError::Disconnected { op }),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_retryable(&e) => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
}

/// Where a host is in an agent's event stream: the agent run and the
/// highest sequence number received. Saved between `hotmemctl events`
/// invocations in the run directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    /// The agent run the sequence numbers belong to (empty: none yet).
    pub agent_id: String,
    /// The highest sequence number received.
    pub after_seq: u64,
}

impl EventCursor {
    /// The `events` arguments for this cursor.
    pub fn request(&self, wait: Duration) -> EventsArgs {
        EventsArgs {
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            after_seq: Some(self.after_seq),
            agent_id: (!self.agent_id.is_empty()).then(|| self.agent_id.clone()),
        }
    }

    /// Moves past the events of `list` (a fresh agent run starts over).
    pub fn advance(&mut self, list: &EventList) {
        if list.agent_id != self.agent_id {
            self.agent_id = list.agent_id.clone();
            self.after_seq = 0;
        }
        if let Some(last) = list.events.iter().map(|e: &InstanceEvent| e.seq).max() {
            self.after_seq = self.after_seq.max(last);
        }
    }
}

/// What a `hello` says about the agent compared to an earlier one and to
/// this host build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentCheck {
    /// The guest rebooted since the earlier hello.
    pub rebooted: bool,
    /// The agent restarted (same boot): instances it had started are
    /// orphaned (still running, unknown to the new agent).
    pub restarted: bool,
    /// The agent was built from another git revision than this host
    /// program: the initramfs is probably stale (`make initramfs`).
    pub stale_build: Option<String>,
}

impl AgentCheck {
    /// Compares `now` with `before` (if any) and with [`BUILD_REVISION`].
    pub fn compare(before: Option<&HelloResult>, now: &HelloResult) -> Self {
        let known = |s: &str| !s.is_empty();
        let (rebooted, restarted) = match before {
            Some(b) if known(&b.boot_id) && known(&now.boot_id) => {
                let rebooted = b.boot_id != now.boot_id;
                (rebooted, !rebooted && b.agent_id != now.agent_id)
            }
            _ => (false, false),
        };
        let stale_build = (now.build_revision != BUILD_REVISION).then(|| {
            format!(
                "the guest agent was built from revision {}, this program from {BUILD_REVISION}: \
                 the initramfs is stale (run `make initramfs`)",
                if now.build_revision.is_empty() {
                    "unknown (an older agent)"
                } else {
                    &now.build_revision
                }
            )
        });
        Self {
            rebooted,
            restarted,
            stale_build,
        }
    }

    /// Human-readable warnings, one per line; empty if all is well.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.rebooted {
            out.push("the guest rebooted since the session started".to_owned());
        }
        if self.restarted {
            out.push("the guest agent restarted: instances it had started are orphaned".to_owned());
        }
        out.extend(self.stale_build.clone());
        out
    }
}

impl Diagnose for AgentClient {}

/// The agent client is itself a transport (errors without diagnostics);
/// [`crate::Vm`] wraps one with reconnection and the console tail.
impl AgentTransport for AgentClient {
    fn agent_start(&mut self, op: Op) -> Result<Pending, VmError> {
        let timeout = self.timeout;
        self.start(op, timeout).map_err(VmError::from_kind)
    }

    fn agent_finish_value(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<serde_json::Value, VmError> {
        self.finish_value(pending, timeout)
            .map_err(VmError::from_kind)
    }

    fn command_timeout(&self) -> Duration {
        self.timeout
    }

    fn set_command_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

/// Errors after which a read can simply be retried (deadline permitting).
fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::VmErrorKind;
    use hotmem_proto::{
        decode_request, Empty, ErrorKind, ExecArgs, ExecResult, ReadFileResult, Response,
    };
    use std::io::{BufRead, BufReader};
    use std::thread;

    const T: Duration = Duration::from_secs(5);

    /// A fake agent on the other end of a socket pair: answers each request
    /// with `answer(request)`'s lines.
    fn fake_agent<F>(answer: F) -> AgentClient
    where
        F: Fn(Request) -> Vec<Vec<u8>> + Send + 'static,
    {
        let (client, server) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            let mut writer = server.try_clone().unwrap();
            for line in BufReader::new(server).lines() {
                let request = decode_request(line.unwrap().as_bytes()).unwrap();
                for reply in answer(request) {
                    writer.write_all(&reply).unwrap();
                }
            }
        });
        AgentClient::from_stream(client)
    }

    fn ok<T: serde::Serialize>(id: u64, result: &T) -> Vec<u8> {
        encode_line(&Response::ok(id, serde_json::to_value(result).unwrap())).unwrap()
    }

    #[test]
    fn hello_roundtrip() {
        let mut agent = fake_agent(|req| {
            assert_eq!(req.op, Op::Hello);
            let hello = hello_from("b", "a1", BUILD_REVISION);
            vec![ok(req.id, &hello)]
        });
        assert_eq!(agent.hello().unwrap().kernel_release, "6.12.0-hotmem");
    }

    #[test]
    fn requests_and_answers_are_traced() {
        let log = crate::captured_traces(|| {
            let mut agent = fake_agent(|req| vec![ok(req.id, &hello_from("b", "a1", "r"))]);
            agent.hello().unwrap();
        });
        assert!(log.contains("hotmem_host::agent"), "{log}");
        assert!(
            log.contains(r#"-> {"#) && log.contains(r#""op":"hello""#),
            "{log}"
        );
        assert!(
            log.contains(r#"<- {"#) && log.contains(r#""agent_id":"a1""#),
            "{log}"
        );
    }

    #[test]
    fn stale_responses_and_events_are_skipped() {
        let mut agent = fake_agent(|req| {
            let event = br#"{"v":1,"event":"future","data":{}}"#.to_vec();
            // Split the real answer over two writes to exercise buffering.
            let real = ok(req.id, &ReadFileResult { data: "x".into() });
            let (a, b) = real.split_at(5);
            vec![
                ok(req.id - 1, &Empty {}),
                [event, b"\n".to_vec()].concat(),
                a.to_vec(),
                b.to_vec(),
            ]
        });
        assert_eq!(agent.read_file("/f").unwrap(), "x");
    }

    #[test]
    fn remote_errors_are_typed() {
        let mut agent = fake_agent(|req| {
            let info = ErrorInfo::new(
                ErrorKind::Io,
                "write /sys/x: Invalid argument (os error 22)",
            );
            vec![encode_line(&Response::error(Some(req.id), info)).unwrap()]
        });
        let err = agent.write_file("/sys/x", "bogus").unwrap_err();
        let VmErrorKind::Agent(AgentError::Remote { op, error }) = err.kind() else {
            panic!("unexpected {err:?}");
        };
        assert_eq!((*op, error.kind), ("write_file", ErrorKind::Io));
        assert!(err.to_string().contains("os error 22"), "{err}");
    }

    #[test]
    fn timeouts_and_disconnects() {
        let mut silent = fake_agent(|_| vec![]);
        silent.set_command_timeout(Duration::from_millis(100));
        let err = silent.hello().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                VmErrorKind::Agent(AgentError::Timeout { op: "hello", .. })
            ),
            "{err}"
        );

        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let err = AgentClient::from_stream(client).hello().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                VmErrorKind::Agent(AgentError::Disconnected { .. } | AgentError::Io { .. })
            ),
            "{err}"
        );
    }

    fn hello_from(boot: &str, agent: &str, rev: &str) -> HelloResult {
        HelloResult {
            version: 1,
            agent_version: "t".into(),
            kernel_release: "6.12.0-hotmem".into(),
            uptime_ms: 5,
            boot_id: boot.into(),
            agent_id: agent.into(),
            build_revision: rev.into(),
        }
    }

    #[test]
    fn a_timed_out_request_is_cancelled_in_the_guest() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let seen_tx = std::sync::Mutex::new(seen_tx);
        let mut agent = fake_agent(move |req| {
            let answer = match &req.op {
                Op::Cancel(_) => vec![ok(req.id, &serde_json::json!({"cancelled": true}))],
                _ => vec![],
            };
            seen_tx.lock().unwrap().send(req).unwrap();
            answer
        });
        agent.set_command_timeout(Duration::from_millis(100));
        let err = agent
            .exec_args(ExecArgs {
                argv: vec!["sleep".into(), "30".into()],
                ..ExecArgs::default()
            })
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                VmErrorKind::Agent(AgentError::Timeout { op: "exec", .. })
            ),
            "{err}"
        );
        let exec = seen.recv_timeout(T).unwrap();
        let cancel = seen.recv_timeout(T).unwrap();
        assert_eq!(cancel.op, Op::Cancel(CancelArgs { request: exec.id }));
        // The cancel's answer is skipped; the connection keeps working.
        let err = agent.hello().unwrap_err();
        assert!(
            matches!(err.kind(), VmErrorKind::Agent(AgentError::Timeout { .. })),
            "{err}"
        );
    }

    #[test]
    fn pipelined_requests_are_matched_by_id() {
        let held = std::sync::Mutex::new(None);
        let mut agent = fake_agent(move |req| match &req.op {
            // The exec is answered only after the hello that follows it.
            Op::Exec(_) => {
                *held.lock().unwrap() = Some(req.id);
                vec![]
            }
            _ => {
                let exec_id = held.lock().unwrap().take().unwrap();
                let exec = ExecResult {
                    status: Some(0),
                    ..ExecResult::default()
                };
                vec![ok(req.id, &hello_from("b", "a", "r")), ok(exec_id, &exec)]
            }
        });
        let exec = agent.start(Op::Exec(ExecArgs::default()), T).unwrap();
        let hello = agent.start(Op::Hello, T).unwrap();
        // Waiting for the exec first: the hello's answer comes first and
        // is kept for later.
        let r: ExecResult = agent.finish(exec, T).unwrap();
        assert_eq!(r.status, Some(0));
        let h: HelloResult = agent.finish(hello, T).unwrap();
        assert_eq!(h.agent_id, "a");
    }

    #[test]
    fn cursor_starts_over_with_a_new_agent_run() {
        let mut c = EventCursor {
            agent_id: "old".into(),
            after_seq: 40,
        };
        assert_eq!(c.request(Duration::ZERO).agent_id.as_deref(), Some("old"));
        let list = EventList {
            events: vec![],
            dropped: 0,
            agent_id: "new".into(),
        };
        c.advance(&list);
        assert_eq!((c.agent_id.as_str(), c.after_seq), ("new", 0));
        assert_eq!(
            EventCursor::default().request(Duration::ZERO).agent_id,
            None
        );
    }

    #[test]
    fn agent_restarts_and_stale_builds_are_noticed() {
        let first = hello_from("boot1", "10-5", BUILD_REVISION);
        let same = AgentCheck::compare(Some(&first), &first);
        assert_eq!(same, AgentCheck::default());
        assert!(same.warnings().is_empty());
        let restarted =
            AgentCheck::compare(Some(&first), &hello_from("boot1", "77-9", BUILD_REVISION));
        assert!(restarted.restarted && !restarted.rebooted);
        assert!(restarted.warnings()[0].contains("orphaned"));
        let rebooted =
            AgentCheck::compare(Some(&first), &hello_from("boot2", "10-5", BUILD_REVISION));
        assert!(rebooted.rebooted && !rebooted.restarted);
        let stale = AgentCheck::compare(None, &hello_from("boot1", "1", "0123456789ab"));
        assert!(stale.stale_build.unwrap().contains("make initramfs"));
        let old = AgentCheck::compare(Some(&first), &hello_from("", "", ""));
        assert!(!old.restarted && !old.rebooted);
        assert!(old.stale_build.unwrap().contains("older agent"));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut agent = fake_agent(|_| vec![b"<html>\n".to_vec()]);
        let err = agent.hello().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                VmErrorKind::Agent(AgentError::Protocol { op: "hello", .. })
            ),
            "{err}"
        );
    }
}
