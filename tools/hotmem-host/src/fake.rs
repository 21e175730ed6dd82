//! An in-memory [`Guest`](crate::Guest) for host tests of code written
//! against the seam (the scenarios here and in `hotmem-bench`, or a
//! platform's own): a virtio-mem device whose plugged size follows the
//! requested size at once (or not, to model a pending plug), and an agent
//! answering from a closure. A `None` answer is a response lost on the way,
//! reported as a timeout. Built for tests, and with the `fake` feature.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hotmem_proto::Op;
use serde_json::Value;

use crate::agent::{AgentError, Pending};
use crate::device::{AgentTransport, Diagnose, Guest, MemoryDevice};
use crate::vm::{ShutdownMethod, VmError};

/// The device's sizes, as the agent closure sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Device {
    /// The requested size, bytes.
    pub requested: u64,
    /// The plugged size, bytes.
    pub plugged: u64,
}

/// Answers an agent request given the device's sizes: `Some(result)`, or
/// `None` if the answer is lost.
pub type Agent = Box<dyn FnMut(&Op, Device) -> Option<Value>>;

/// An in-memory guest.
pub struct FakeGuest {
    /// The requested size, bytes.
    pub requested: u64,
    /// The plugged size, bytes.
    pub plugged: u64,
    /// Whether the device plugs/unplugs to the requested size at once.
    pub follows: bool,
    /// Every requested size set, in order.
    pub resizes: Vec<u64>,
    /// Whether the device reports when its size changed (as QEMU's
    /// `MEMORY_DEVICE_SIZE_CHANGE` events do).
    pub reports_changes: bool,
    /// (size, when) of every size change.
    pub changes: Vec<(u64, SystemTime)>,
    agent: Agent,
    started: HashMap<u64, Op>,
    next_id: u64,
    timeout: Duration,
}

impl FakeGuest {
    /// A guest with nothing plugged whose agent answers with `agent`.
    pub fn new(agent: Agent) -> Self {
        Self {
            requested: 0,
            plugged: 0,
            follows: true,
            resizes: Vec::new(),
            reports_changes: false,
            changes: Vec::new(),
            agent,
            started: HashMap::new(),
            next_id: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for FakeGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGuest")
            .field("requested", &self.requested)
            .field("plugged", &self.plugged)
            .finish_non_exhaustive()
    }
}

impl Diagnose for FakeGuest {}

impl MemoryDevice for FakeGuest {
    fn set_requested_size(&mut self, bytes: u64) -> Result<(), VmError> {
        self.requested = bytes;
        self.resizes.push(bytes);
        if self.follows && self.plugged != bytes {
            self.plugged = bytes;
            self.changes.push((bytes, SystemTime::now()));
        }
        Ok(())
    }

    fn reports_size_changes(&self) -> bool {
        self.reports_changes
    }

    fn size_reached_at(
        &mut self,
        size: u64,
        since: SystemTime,
        _wait: Duration,
    ) -> Result<Option<SystemTime>, VmError> {
        Ok(self
            .changes
            .iter()
            .filter(|&&(s, at)| self.reports_changes && s == size && at >= since)
            .map(|&(_, at)| at)
            .max())
    }

    fn requested_size(&mut self) -> Result<u64, VmError> {
        Ok(self.requested)
    }

    fn plugged_size(&mut self) -> Result<u64, VmError> {
        Ok(self.plugged)
    }
}

impl AgentTransport for FakeGuest {
    fn agent_start(&mut self, op: Op) -> Result<Pending, VmError> {
        let pending = Pending {
            id: self.next_id,
            op: op.name(),
        };
        self.next_id += 1;
        self.started.insert(pending.id, op);
        Ok(pending)
    }

    fn agent_finish_value(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<Value, VmError> {
        let op = self.started.remove(&pending.id).ok_or_else(|| {
            VmError::from_kind(AgentError::Protocol {
                op: pending.op,
                detail: "finished twice".into(),
            })
        })?;
        let device = Device {
            requested: self.requested,
            plugged: self.plugged,
        };
        (self.agent)(&op, device).ok_or_else(|| {
            VmError::from_kind(AgentError::Timeout {
                op: pending.op,
                timeout,
            })
        })
    }

    fn command_timeout(&self) -> Duration {
        self.timeout
    }

    fn set_command_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl Guest for FakeGuest {
    fn shutdown(self) -> Result<ShutdownMethod, VmError> {
        Ok(ShutdownMethod::Poweroff)
    }
}
