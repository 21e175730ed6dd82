//! Host-side client of the guest agent (`hotmem-proto` over a Unix socket).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hotmem_proto::{
    decode_agent_message, encode_line, AgentMessage, Empty, ErrorInfo, ExecArgs, ExecResult,
    HelloResult, Op, ReadFileArgs, ReadFileResult, Request, WriteFileArgs,
};
use serde::de::DeserializeOwned;

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

/// A connection to a guest agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    /// Received bytes not yet consumed as lines.
    buf: Vec<u8>,
    /// Prefix of `buf` already searched for a newline.
    scanned: usize,
    next_id: u64,
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
        }
    }

    /// `hello`.
    pub fn hello(&mut self, timeout: Duration) -> Result<HelloResult, AgentError> {
        self.call(Op::Hello, timeout)
    }

    /// `exec`; waits for the agent's own `timeout_ms` plus a margin, or
    /// `timeout` when the request has none.
    pub fn exec(&mut self, args: ExecArgs, timeout: Duration) -> Result<ExecResult, AgentError> {
        let wait = args.timeout_ms.map_or(timeout, |ms| {
            Duration::from_millis(ms) + Duration::from_secs(5)
        });
        self.call(Op::Exec(args), wait)
    }

    /// `read_file`.
    pub fn read_file(&mut self, path: &str, timeout: Duration) -> Result<String, AgentError> {
        let op = Op::ReadFile(ReadFileArgs {
            path: path.to_owned(),
        });
        self.call::<ReadFileResult>(op, timeout).map(|r| r.data)
    }

    /// `write_file`.
    pub fn write_file(
        &mut self,
        path: &str,
        data: &str,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let op = Op::WriteFile(WriteFileArgs {
            path: path.to_owned(),
            data: data.to_owned(),
        });
        self.call::<Empty>(op, timeout).map(drop)
    }

    /// `poweroff`: the agent acknowledges, then powers the guest off.
    pub fn poweroff(&mut self, timeout: Duration) -> Result<(), AgentError> {
        self.call::<Empty>(Op::Poweroff, timeout).map(drop)
    }

    /// Sends `op` and waits up to `timeout` for its response.
    ///
    /// Responses to other ids (late answers to abandoned requests) and
    /// events (reserved in protocol v1) are skipped.
    pub fn call<T: DeserializeOwned>(
        &mut self,
        op: Op,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let name = op.name();
        let id = self.next_id;
        self.next_id += 1;
        let deadline = Instant::now() + timeout;
        self.send(&Request::new(id, op), timeout)?;
        loop {
            let line = self.read_line(name, deadline, timeout)?;
            let protocol = |detail: String| AgentError::Protocol { op: name, detail };
            let response = match decode_agent_message(&line) {
                Ok(AgentMessage::Response(r)) => r,
                Ok(AgentMessage::Event(_)) => continue,
                Err(e) => return Err(protocol(e.to_string())),
            };
            // An id-less error is the agent failing to parse what we sent.
            if response.id.is_some() && response.id != Some(id) {
                continue;
            }
            return match response.outcome {
                Ok(value) => serde_json::from_value(value)
                    .map_err(|e| protocol(format!("unexpected {name} result: {e}"))),
                Err(error) => Err(AgentError::Remote { op: name, error }),
            };
        }
    }

    fn send(&mut self, request: &Request, timeout: Duration) -> Result<(), AgentError> {
        let op = request.op.name();
        let line = encode_line(request).map_err(|e| AgentError::Protocol {
            op,
            detail: format!("cannot encode request: {e}"),
        })?;
        let io = |source| AgentError::Io { op, source };
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
                return Ok(self.buf.drain(..end).collect());
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
    use hotmem_proto::{decode_request, ErrorKind, Response};
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
            let hello = HelloResult {
                version: 1,
                agent_version: "t".into(),
                kernel_release: "6.12.0-hotmem".into(),
                uptime_ms: 5,
            };
            vec![ok(req.id, &hello)]
        });
        assert_eq!(agent.hello(T).unwrap().kernel_release, "6.12.0-hotmem");
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
        assert_eq!(agent.read_file("/f", T).unwrap(), "x");
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
        let err = agent.write_file("/sys/x", "bogus", T).unwrap_err();
        let AgentError::Remote { op, error } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!((*op, error.kind), ("write_file", ErrorKind::Io));
        assert!(err.to_string().contains("os error 22"), "{err}");
    }

    #[test]
    fn timeouts_and_disconnects() {
        let mut silent = fake_agent(|_| vec![]);
        let err = silent.hello(Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(err, AgentError::Timeout { op: "hello", .. }),
            "{err}"
        );

        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let err = AgentClient::from_stream(client).hello(T).unwrap_err();
        assert!(
            matches!(err, AgentError::Disconnected { .. } | AgentError::Io { .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut agent = fake_agent(|_| vec![b"<html>\n".to_vec()]);
        assert!(matches!(
            agent.hello(T),
            Err(AgentError::Protocol { op: "hello", .. })
        ));
    }
}
