//! A small synchronous QMP client on top of the `qapi` crate.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use qapi::qmp::{qmp_capabilities, qom_get, qom_set, query_version, quit, Event, QapiCapabilities};
use qapi::{ExecuteError, Qmp};
use serde::Deserialize;
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

/// A `MEMORY_DEVICE_SIZE_CHANGE` event: a memory device's size changed,
/// at QEMU's timestamp (its wall clock, microseconds, taken when the size
/// changed: a rate-limited event carries the time of the change, not of
/// its late delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeChange {
    /// QOM path of the device (e.g. `/machine/peripheral/vm0`).
    pub qom_path: String,
    /// The device's new size, bytes.
    pub size: u64,
    /// When the size changed (QEMU's `g_get_real_time()`).
    pub at: SystemTime,
}

/// When the device at `qom_path` last reached `size` at or after `since`,
/// among `changes`.
pub fn size_reached_at<'a>(
    changes: impl IntoIterator<Item = &'a SizeChange>,
    qom_path: &str,
    size: u64,
    since: SystemTime,
) -> Option<SystemTime> {
    changes
        .into_iter()
        .filter(|c| c.qom_path == qom_path && c.size == size && c.at >= since)
        .map(|c| c.at)
        .max()
}

/// How many size changes a client keeps (oldest dropped first).
const SIZE_CHANGES_KEPT: usize = 1024;

/// QMP's event timestamp (`qapi_spec::Timestamp` keeps its fields private).
#[derive(Deserialize)]
struct Timestamp {
    seconds: u64,
    microseconds: u64,
}

impl SizeChange {
    /// The size change in `event`, if it is one.
    fn from_event(event: &Event) -> Option<Self> {
        let Event::MEMORY_DEVICE_SIZE_CHANGE { data, timestamp } = event else {
            return None;
        };
        let ts: Timestamp = serde_json::to_value(timestamp)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())?;
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(ts.seconds)
            + Duration::from_micros(ts.microseconds);
        Some(Self {
            qom_path: data.qom_path.clone(),
            size: data.size,
            at,
        })
    }
}

/// A connected QMP session (capabilities negotiated).
pub struct QmpClient {
    qmp: Qmp<Stream>,
    size_changes: VecDeque<SizeChange>,
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
        Ok(Self {
            qmp,
            size_changes: VecDeque::new(),
        })
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
        self.collect_events();
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

    /// Reads the events QEMU sent so far (QMP delivers them only along
    /// with command answers): a cheap `query-version`.
    pub fn poll_events(&mut self) -> Result<(), QmpError> {
        self.execute(&query_version {}).map(drop)
    }

    /// The memory-device size changes received so far (the last
    /// [`SIZE_CHANGES_KEPT`]), oldest first.
    pub fn size_changes(&self) -> impl Iterator<Item = &SizeChange> {
        self.size_changes.iter()
    }

    /// Keeps the size changes among the queued asynchronous events and
    /// drops the others (the queue would otherwise grow for the life of
    /// the connection).
    fn collect_events(&mut self) {
        for event in self.qmp.events() {
            if let Some(change) = SizeChange::from_event(&event) {
                tracing::debug!(target: "hotmem_host::qmp", "<- event {change:?}");
                if self.size_changes.len() == SIZE_CHANGES_KEPT {
                    self.size_changes.pop_front();
                }
                self.size_changes.push_back(change);
            }
        }
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

    #[test]
    fn size_changes_are_kept_with_their_timestamps() {
        let shutdown = r#"{"timestamp": {"seconds": 5, "microseconds": 0}, "event": "STOP"}"#;
        let change = r#"{"timestamp": {"seconds": 1700000000, "microseconds": 250001}, "event": "MEMORY_DEVICE_SIZE_CHANGE", "data": {"id": "vm0", "size": 134217728, "qom-path": "/machine/peripheral/vm0"}}"#;
        let mut qmp = client(vec![
            ("qom-get", vec![shutdown, r#"{"return": 0}"#]),
            (
                "query-version",
                vec![
                    change,
                    r#"{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}}"#,
                ],
            ),
        ]);
        qmp.qom_get_u64(VM0, "size").unwrap();
        assert_eq!(qmp.size_changes().count(), 0, "other events are dropped");
        qmp.poll_events().unwrap();
        let got: Vec<&SizeChange> = qmp.size_changes().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].size, 128 << 20);
        assert_eq!(got[0].qom_path, VM0);
        let us = got[0]
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        assert_eq!(us, 1_700_000_000_250_001, "microsecond resolution");
    }

    #[test]
    fn the_last_change_to_the_size_since_the_start_counts() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let c = |path: &str, size: u64, ms: u64| SizeChange {
            qom_path: path.into(),
            size,
            at: t(ms),
        };
        let changes = [
            c(VM0, 256, 10),                        // the plug passed 256 before the start
            c(VM0, 512, 20),                        // plugged
            c(VM0, 384, 120),                       // unplug under way
            c("/machine/peripheral/vm1", 256, 130), // another device
            c(VM0, 256, 150),                       // reached
        ];
        assert_eq!(size_reached_at(&changes, VM0, 256, t(100)), Some(t(150)));
        assert_eq!(size_reached_at(&changes, VM0, 128, t(100)), None);
        assert_eq!(size_reached_at(&changes, VM0, 256, t(200)), None);
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
