//! A small synchronous QMP client on top of the `qapi` crate.

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::qmp::{qmp_capabilities, qom_get, qom_set, quit, QapiCapabilities};
use qapi::{ExecuteError, Qmp};
use serde_json::Value;

/// A failed QMP operation.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed (including timeouts and EOF);
    /// the connection is unusable afterwards.
    #[error("QMP I/O error during {command}: {source}")]
    Io {
        /// The command (or `greeting`) in progress.
        command: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The server's greeting was missing or malformed.
    #[error("bad QMP greeting: {0}")]
    Greeting(String),
    /// QEMU answered the command with an error.
    #[error("QMP {command} failed: {message}")]
    Command {
        /// The command name.
        command: &'static str,
        /// QEMU's error description.
        message: String,
    },
    /// QEMU answered with a value of an unexpected type.
    #[error("QMP {command} {property}: unexpected value {value}")]
    Unexpected {
        /// The command name.
        command: &'static str,
        /// The property read.
        property: String,
        /// What QEMU returned.
        value: Value,
    },
}

type Stream = qapi::Stream<BufReader<UnixStream>, UnixStream>;

/// A connected QMP session (capabilities negotiated).
pub struct QmpClient {
    qmp: Qmp<Stream>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient").finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    /// Every later read or write fails after `timeout` without progress.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::from_stream(stream, timeout)
    }

    /// Runs the QMP handshake on an already connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        let io = |source| QmpError::Io {
            command: "greeting",
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        // Equivalent to `Qmp::from_stream`, which needs a `Clone` stream.
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut qmp = Qmp::new(qapi::Stream::new(reader, stream));
        read_greeting(qmp.inner_mut())?;
        qmp.execute(&qmp_capabilities { enable: None })
            .map_err(|e| command_error("qmp_capabilities", e))?;
        Ok(Self { qmp })
    }

    /// `qom-get path property`.
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value, QmpError> {
        let value = self.execute(&qom_get {
            path: path.to_owned(),
            property: property.to_owned(),
        })?;
        tracing::debug!(target: "hotmem_host::qmp", "<- {value}");
        Ok(value)
    }

    /// `qom-get` of an integer property.
    pub fn qom_get_u64(&mut self, path: &str, property: &str) -> Result<u64, QmpError> {
        let value = self.qom_get(path, property)?;
        value.as_u64().ok_or_else(|| QmpError::Unexpected {
            command: "qom-get",
            property: property.to_owned(),
            value,
        })
    }

    /// `qom-set path property value`.
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<(), QmpError> {
        self.execute(&qom_set {
            path: path.to_owned(),
            property: property.to_owned(),
            value,
        })
        .map(drop)
    }

    /// Any QMP command, e.g. for tests that drive a migration.
    pub fn execute<C: qapi::Command>(&mut self, command: &C) -> Result<C::Ok, QmpError> {
        trace_command(command);
        let result = self.qmp.execute(command);
        self.discard_events();
        result.map_err(|e| {
            let e = command_error(C::NAME, e);
            tracing::debug!(target: "hotmem_host::qmp", "<- {e}");
            e
        })
    }

    /// `quit`: QEMU exits immediately (the guest gets no say).
    pub fn quit(&mut self) -> Result<(), QmpError> {
        trace_command(&quit {});
        self.qmp
            .execute(&quit {})
            .map(drop)
            .map_err(|e| command_error("quit", e))
    }

    /// Drops queued asynchronous events; nothing here consumes them, and
    /// the queue would otherwise grow for the life of the connection.
    fn discard_events(&mut self) {
        self.qmp.events().for_each(drop);
    }
}

/// Logs a command about to be sent (`-v` / `RUST_LOG=hotmem_host::qmp=debug`).
fn trace_command<C: qapi::Command>(command: &C) {
    if tracing::enabled!(target: "hotmem_host::qmp", tracing::Level::DEBUG) {
        let args = serde_json::to_string(command).unwrap_or_default();
        tracing::debug!(target: "hotmem_host::qmp", "-> {} {args}", C::NAME);
    }
}

/// Reads and checks the `{"QMP": ...}` greeting.
///
/// `qapi`'s own `Qmp::handshake` panics (`expect`) when the socket closes
/// before the greeting, which happens when QEMU dies during start-up, so we
/// read the greeting ourselves (with qapi's type) and then negotiate with
/// the typed `qmp_capabilities` command.
fn read_greeting(stream: &mut Stream) -> Result<(), QmpError> {
    let mut line = String::new();
    let n = stream
        .read_line(&mut line)
        .map_err(|source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => QmpError::Greeting(
                "none received in time; QEMU serves one QMP client at a time \
                 (is another hotmemctl connected?)"
                    .into(),
            ),
            _ => QmpError::Io {
                command: "greeting",
                source,
            },
        })?;
    if n == 0 {
        return Err(QmpError::Greeting(
            "connection closed before greeting".into(),
        ));
    }
    serde_json::from_str::<QapiCapabilities>(&line)
        .map(drop)
        .map_err(|e| QmpError::Greeting(format!("{e}: {}", line.trim_end())))
}

fn command_error(command: &'static str, e: ExecuteError) -> QmpError {
    match e {
        ExecuteError::Qapi(e) => QmpError::Command {
            command,
            message: e.to_string(),
        },
        ExecuteError::Io(source) => QmpError::Io { command, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::thread;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A scripted QMP server: for each expected command, check it and send
    /// the canned reply lines.
    fn fake_qemu(script: Vec<(&'static str, Vec<&'static str>)>) -> UnixStream {
        let (client, server) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            let mut writer = server.try_clone().unwrap();
            let mut reader = BufReader::new(server);
            writeln!(writer, "{GREETING}").unwrap();
            for (expect, replies) in script {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let cmd: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(cmd["execute"], expect, "{line}");
                for reply in replies {
                    writeln!(writer, "{reply}").unwrap();
                }
            }
        });
        client
    }

    fn client(script: Vec<(&'static str, Vec<&'static str>)>) -> QmpClient {
        let mut full = vec![("qmp_capabilities", vec![r#"{"return": {}}"#])];
        full.extend(script);
        QmpClient::from_stream(fake_qemu(full), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn qom_get_skips_events() {
        let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MEMORY_DEVICE_SIZE_CHANGE", "data": {"id": "vm0", "size": 1073741824, "qom-path": "/machine/peripheral/vm0/virtio-backend"}}"#;
        let mut qmp = client(vec![("qom-get", vec![event, r#"{"return": 1073741824}"#])]);
        assert_eq!(qmp.qom_get_u64(VM0, "size").unwrap(), 1 << 30);
    }

    const VM0: &str = "/machine/peripheral/vm0";

    #[test]
    fn commands_and_answers_are_traced() {
        let log = crate::captured_traces(|| {
            let mut qmp = client(vec![("qom-get", vec![r#"{"return": 4096}"#])]);
            assert_eq!(qmp.qom_get_u64(VM0, "size").unwrap(), 4096);
        });
        assert!(
            log.contains("hotmem_host::qmp") && log.contains("-> qom-get"),
            "{log}"
        );
        assert!(log.contains(r#""property":"size""#), "{log}");
        assert!(log.contains("<- 4096"), "{log}");
    }

    #[test]
    fn qom_set_reports_qemu_errors() {
        let err =
            r#"{"error": {"class": "GenericError", "desc": "Property 'requested-size' bad"}}"#;
        let mut qmp = client(vec![
            ("qom-set", vec![r#"{"return": {}}"#]),
            ("qom-set", vec![err]),
        ]);
        qmp.qom_set(VM0, "requested-size", 0.into()).unwrap();
        let e = qmp.qom_set(VM0, "requested-size", 1.into()).unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn non_integer_values_are_rejected() {
        let mut qmp = client(vec![("qom-get", vec![r#"{"return": "x"}"#])]);
        assert!(matches!(
            qmp.qom_get_u64(VM0, "size"),
            Err(QmpError::Unexpected { .. })
        ));
    }

    #[test]
    fn silent_server_is_a_greeting_error() {
        let (client, _server) = UnixStream::pair().unwrap();
        let e = QmpClient::from_stream(client, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("one QMP client"), "{e}");
    }

    #[test]
    fn early_close_is_an_error_not_a_panic() {
        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let e = QmpClient::from_stream(client, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, QmpError::Greeting(_)), "{e}");
    }
}
