//! `hotmemctl`'s errors: one kind per cause, each with its own exit code,
//! printed as `{"error":{"kind","message","diagnostics"}}` with `--json`.
//!
//! | kind      | exit | cause |
//! |-----------|------|-------|
//! | `usage`   | 2    | bad command line (clap) |
//! | `config`  | 78   | invalid guest configuration |
//! | `io`      | 74   | a local file (run directory, output, bench.json) |
//! | `session` | 69   | no guest in `--dir`, or one already running there |
//! | `lock`    | 75   | another hotmemctl kept the guest's lock too long |
//! | `timeout` | 79   | something did not happen in time |
//! | `vmm`     | 71   | QEMU could not start, exited, or QMP failed |
//! | `agent`   | 76   | the guest agent failed, or sent something unreadable |
//! | `command` | 72   | a guest command the tool needed failed |
//! | `scale`   | 65   | a scale-up/scale-down/bench step cannot be done as asked |
//!
//! `exec` exits with the guest command's own status (124 if the agent
//! killed it for its timeout, 128+N if signal N ended it) when it ran.

use std::process::ExitCode;

use hotmem_host::{VmError, VmErrorKind};
use serde::Serialize;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A guest operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Output could not be encoded.
    #[error("cannot encode JSON output: {0}")]
    Json(#[from] serde_json::Error),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of [`CliError`], for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Invalid guest configuration.
    Config,
    /// A local file.
    Io,
    /// No guest there, or one already running.
    Session,
    /// The run directory's lock.
    Lock,
    /// Something did not happen in time.
    Timeout,
    /// QEMU or QMP.
    Vmm,
    /// The guest agent.
    Agent,
    /// A guest command failed.
    Command,
    /// A scale or bench step.
    Scale,
}

impl Kind {
    /// Every kind.
    #[cfg(test)]
    pub const ALL: [Kind; 9] = [
        Kind::Config,
        Kind::Io,
        Kind::Session,
        Kind::Lock,
        Kind::Timeout,
        Kind::Vmm,
        Kind::Agent,
        Kind::Command,
        Kind::Scale,
    ];

    /// The process exit status for this kind.
    pub fn exit_status(self) -> u8 {
        match self {
            Kind::Config => 78,
            Kind::Io => 74,
            Kind::Session => 69,
            Kind::Lock => 75,
            Kind::Timeout => 79,
            Kind::Vmm => 71,
            Kind::Agent => 76,
            Kind::Command => 72,
            Kind::Scale => 65,
        }
    }
}

impl CliError {
    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            CliError::Json(_) | CliError::Io { .. } => Kind::Io,
            CliError::Vm(e) => match e.kind() {
                VmErrorKind::Config(_) => Kind::Config,
                VmErrorKind::Io { .. } => Kind::Io,
                VmErrorKind::Spawn { .. }
                | VmErrorKind::QemuExited { .. }
                | VmErrorKind::Qmp(_) => Kind::Vmm,
                VmErrorKind::Timeout { .. } => Kind::Timeout,
                VmErrorKind::Agent(hotmem_host::agent::AgentError::Timeout { .. }) => Kind::Timeout,
                VmErrorKind::Agent(_) | VmErrorKind::Meminfo(_) => Kind::Agent,
                VmErrorKind::CommandFailed { .. } => Kind::Command,
                VmErrorKind::Scale(_) => Kind::Scale,
                VmErrorKind::Lock(_) => Kind::Lock,
                VmErrorKind::Session { .. } => Kind::Session,
            },
        }
    }

    /// The message without diagnostics.
    pub fn message(&self) -> String {
        match self {
            CliError::Vm(e) => e.kind().to_string(),
            other => other.to_string(),
        }
    }

    /// Console/QEMU log excerpts, if any.
    pub fn diagnostics(&self) -> &str {
        match self {
            CliError::Vm(e) => e.diagnostics(),
            _ => "",
        }
    }

    /// `{"error":{"kind","message","diagnostics"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind(),
                "message": self.message(),
                "diagnostics": self.diagnostics(),
            }
        })
    }

    /// The exit code of this error's kind.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind().exit_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotmem_host::agent::AgentError;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn every_kind_has_its_own_exit_status() {
        let codes: HashSet<u8> = Kind::ALL.iter().map(|k| k.exit_status()).collect();
        assert_eq!(codes.len(), Kind::ALL.len());
        // Not the generic failure, clap's usage error, exec's timeout or a signal.
        for code in codes {
            assert!(![0, 1, 2, 124].contains(&code) && code < 128, "{code}");
        }
    }

    #[test]
    fn errors_map_to_kinds_and_json() {
        let timeout = CliError::Vm(VmError::from_kind(VmErrorKind::Timeout {
            what: "the plug".into(),
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(timeout.kind(), Kind::Timeout);
        let json = timeout.to_json();
        assert_eq!(json["error"]["kind"], "timeout");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the plug"));
        assert_eq!(json["error"]["diagnostics"], "");
        let agent = CliError::Vm(VmError::from_kind(AgentError::Disconnected { op: "hello" }));
        assert_eq!(agent.kind(), Kind::Agent);
        let agent_timeout = CliError::Vm(VmError::from_kind(AgentError::Timeout {
            op: "exec",
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(agent_timeout.kind(), Kind::Timeout);
        let session = CliError::Vm(VmError::from_kind(VmErrorKind::Session {
            dir: "/x".into(),
            reason: "no running guest".into(),
        }));
        assert_eq!(session.exit_code(), ExitCode::from(69));
        let io = CliError::Io {
            what: "writing x".into(),
            source: std::io::Error::other("full"),
        };
        assert_eq!(io.to_json()["error"]["kind"], "io");
    }
}
