//! The seam between the scenarios and a VMM: [`MemoryDevice`] (the
//! virtio-mem device's sizes) and [`AgentTransport`] (requests to the
//! guest agent), both implemented by [`Vm`](crate::Vm) over QMP and the
//! virtio-serial port, and [`Guest`] (both, plus shutdown).
//!
//! Only what a backend must provide is required; everything the scenarios
//! build on top (waiting for a plugged size, exec, files, `/proc/meminfo`,
//! events with a cursor) is a provided method, so a new backend gets the
//! same behaviour.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use hotmem_proto::{
    Empty, EventList, ExecArgs, ExecResult, HelloResult, Op, ReadFileArgs, ReadFileResult,
    WriteFileArgs,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::agent::{decode_result, EventCursor, Pending};
use crate::meminfo::parse_meminfo;
use crate::vm::{ShutdownMethod, VmError, VmErrorKind};

/// Interval of [`MemoryDevice::wait_plugged`] polling.
const PLUG_POLL: Duration = Duration::from_millis(10);
/// Interval of [`MemoryDevice::wait_plugged_timed`] polling on a device
/// that does not time its size changes itself.
const PRECISE_POLL: Duration = Duration::from_millis(1);
/// How long [`MemoryDevice::wait_plugged_timed`] waits for the device's
/// own report of a size change after seeing the size: QEMU delays
/// `MEMORY_DEVICE_SIZE_CHANGE` events of a device to one a second.
pub const SIZE_CHANGE_REPORT_WAIT: Duration = Duration::from_millis(1500);
/// Resolution of the device's timestamps (QEMU: microseconds).
const DEVICE_CLOCK_RESOLUTION: Duration = Duration::from_micros(1);
/// Interval of [`AgentTransport::wait_meminfo`] polling (each poll is an
/// agent round trip).
const MEMINFO_POLL: Duration = Duration::from_millis(50);
/// How much longer than a guest command's own limit the host waits.
const EXEC_MARGIN: Duration = Duration::from_secs(5);

/// Turns an error into one that tells about the guest (console tail, VMM
/// log), for the provided methods of [`MemoryDevice`] and
/// [`AgentTransport`].
pub trait Diagnose {
    /// `kind`, with what this guest can tell about its state.
    fn fail(&mut self, kind: VmErrorKind) -> VmError {
        VmError::from_kind(kind)
    }
}

/// When a timed resize started: the monotonic and the wall clock (a
/// device's own timestamps are wall-clock times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeStart {
    /// Monotonic clock.
    pub instant: Instant,
    /// Wall clock.
    pub wall: SystemTime,
}

impl ResizeStart {
    /// Now.
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What timed the end of a resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeClock {
    /// The device's own timestamp of the size change (QEMU's
    /// `MEMORY_DEVICE_SIZE_CHANGE` event, 1 µs).
    DeviceEvent,
    /// The host polling the plugged size (every 1 ms plus a round trip).
    Poll,
}

impl ResizeClock {
    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            ResizeClock::DeviceEvent => "QEMU MEMORY_DEVICE_SIZE_CHANGE timestamps",
            ResizeClock::Poll => "host polling of the plugged size",
        }
    }
}

/// A timed resize: from its start until the device reached the size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeTiming {
    /// Start until the device had the target size.
    pub elapsed: Duration,
    /// What timed the end.
    pub clock: ResizeClock,
    /// How late the end can have been seen: the device clock's tick, or
    /// the gap between the last two polls.
    pub resolution: Duration,
    /// Start until the host's polling saw the size (a cross-check of a
    /// device-timed `elapsed`, which can only be shorter).
    pub polled: Duration,
}

/// When the host's polling saw a resize end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolledResize {
    /// Start until the read that saw the target size.
    pub seen: Duration,
    /// Time between that read and the one before (or the start).
    pub gap: Duration,
}

/// A guest's virtio-mem device, as the VMM sees it.
pub trait MemoryDevice: Diagnose {
    /// Sets the size the device should have plugged (bytes).
    fn set_requested_size(&mut self, bytes: u64) -> Result<(), VmError>;

    /// The requested size (bytes).
    fn requested_size(&mut self) -> Result<u64, VmError>;

    /// What the guest has plugged (bytes).
    fn plugged_size(&mut self) -> Result<u64, VmError>;

    /// Polls the plugged size every ~10 ms until it equals `target`;
    /// returns how long that took.
    fn wait_plugged(&mut self, target: u64, timeout: Duration) -> Result<Duration, VmError> {
        let start = Instant::now();
        loop {
            let plugged = self.plugged_size()?;
            if plugged == target {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(self.fail(VmErrorKind::Timeout {
                    what: format!("virtio-mem plugged size {target} (still {plugged})"),
                    timeout,
                }));
            }
            thread::sleep(PLUG_POLL);
        }
    }

    /// Whether the device reports when its size changed
    /// ([`MemoryDevice::size_reached_at`]); then timed waits need not poll
    /// finely.
    fn reports_size_changes(&self) -> bool {
        false
    }

    /// When, by the device's own clock, its plugged size became `size` at
    /// or after `since`; waits up to `wait` for a late report. `None` if
    /// the device does not report it (the default) or did not in time.
    fn size_reached_at(
        &mut self,
        size: u64,
        since: SystemTime,
        wait: Duration,
    ) -> Result<Option<SystemTime>, VmError> {
        let _ = (size, since, wait);
        Ok(None)
    }

    /// Waits until the plugged size equals `target` and times it from
    /// `start`: by the device's report of the change when it gives one,
    /// else by polling every 1 ms. [`MemoryDevice::poll_plugged`] and
    /// [`MemoryDevice::time_resize`] in one.
    fn wait_plugged_timed(
        &mut self,
        target: u64,
        start: ResizeStart,
        timeout: Duration,
    ) -> Result<ResizeTiming, VmError> {
        let polled = self.poll_plugged(target, start, timeout)?;
        self.time_resize(target, start, polled)
    }

    /// Polls until the plugged size equals `target` (every 10 ms if the
    /// device reports its size changes, else every 1 ms); says when the
    /// host saw it.
    fn poll_plugged(
        &mut self,
        target: u64,
        start: ResizeStart,
        timeout: Duration,
    ) -> Result<PolledResize, VmError> {
        let poll = if self.reports_size_changes() {
            PLUG_POLL
        } else {
            PRECISE_POLL
        };
        // The size changed between the last two reads (or the start and
        // the first read).
        let mut last_read = start.instant;
        loop {
            let plugged = self.plugged_size()?;
            let now = Instant::now();
            let gap = now.saturating_duration_since(last_read);
            last_read = now;
            if plugged == target {
                return Ok(PolledResize {
                    seen: now.saturating_duration_since(start.instant),
                    gap,
                });
            }
            if start.instant.elapsed() >= timeout {
                return Err(self.fail(VmErrorKind::Timeout {
                    what: format!("virtio-mem plugged size {target} (still {plugged})"),
                    timeout,
                }));
            }
            thread::sleep(poll);
        }
    }

    /// Times a resize the host saw end (`polled`): by the device's report
    /// of the change to `target` if it gives one (waiting up to
    /// [`SIZE_CHANGE_REPORT_WAIT`] for it), else as polled.
    fn time_resize(
        &mut self,
        target: u64,
        start: ResizeStart,
        polled: PolledResize,
    ) -> Result<ResizeTiming, VmError> {
        if self.reports_size_changes() {
            if let Some(at) = self.size_reached_at(target, start.wall, SIZE_CHANGE_REPORT_WAIT)? {
                // The wall clock may have been stepped meanwhile: trust the
                // device only if its time fits what the host saw.
                if let Ok(elapsed) = at.duration_since(start.wall) {
                    if elapsed <= polled.seen + DEVICE_CLOCK_RESOLUTION {
                        return Ok(ResizeTiming {
                            elapsed,
                            clock: ResizeClock::DeviceEvent,
                            resolution: DEVICE_CLOCK_RESOLUTION,
                            polled: polled.seen,
                        });
                    }
                }
            }
        }
        Ok(ResizeTiming {
            elapsed: polled.seen,
            clock: ResizeClock::Poll,
            resolution: polled.gap,
            polled: polled.seen,
        })
    }
}

/// Requests to a guest's `hotmem-agent` (`hotmem-proto`).
///
/// Requests can overlap: [`AgentTransport::agent_start`] several, then
/// [`AgentTransport::agent_finish`] each; the agent serves them
/// concurrently. A request whose wait times out is cancelled in the guest.
pub trait AgentTransport: Diagnose {
    /// Sends `op` without waiting for its answer.
    fn agent_start(&mut self, op: Op) -> Result<Pending, VmError>;

    /// Waits up to `timeout` for the answer to `pending`: its raw result,
    /// or the agent's error. On timeout the guest-side operation is
    /// cancelled.
    fn agent_finish_value(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<serde_json::Value, VmError>;

    /// The default limit of a request.
    fn command_timeout(&self) -> Duration;

    /// Sets the default limit of a request.
    fn set_command_timeout(&mut self, timeout: Duration);

    /// Waits up to `timeout` for the answer to `pending` and decodes it.
    fn agent_finish<T: DeserializeOwned>(
        &mut self,
        pending: Pending,
        timeout: Duration,
    ) -> Result<T, VmError> {
        let value = self.agent_finish_value(pending, timeout)?;
        decode_result(pending.op, value).map_err(|e| self.fail(e.into()))
    }

    /// Sends `op` and decodes its result, waiting up to `timeout` (or the
    /// command timeout if `None`).
    fn agent_call<T: DeserializeOwned>(
        &mut self,
        op: Op,
        timeout: Option<Duration>,
    ) -> Result<T, VmError> {
        let timeout = timeout.unwrap_or_else(|| self.command_timeout());
        let pending = self.agent_start(op)?;
        self.agent_finish(pending, timeout)
    }

    /// Agent `hello`.
    fn hello(&mut self) -> Result<HelloResult, VmError> {
        self.agent_call(Op::Hello, None)
    }

    /// Runs `argv` in the guest; the agent kills it after the command
    /// timeout.
    fn exec(&mut self, argv: &[&str]) -> Result<ExecResult, VmError> {
        let timeout_ms = u64::try_from(self.command_timeout().as_millis()).unwrap_or(u64::MAX);
        self.exec_args(ExecArgs {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            timeout_ms: Some(timeout_ms),
        })
    }

    /// Runs a guest command with full control over environment and
    /// timeout; waits for the command's own limit plus a margin.
    fn exec_args(&mut self, args: ExecArgs) -> Result<ExecResult, VmError> {
        let wait = args.timeout_ms.map_or_else(
            || self.command_timeout(),
            |ms| Duration::from_millis(ms) + EXEC_MARGIN,
        );
        self.agent_call(Op::Exec(args), Some(wait))
    }

    /// Like [`AgentTransport::exec`], but a non-zero exit is an error
    /// carrying stderr.
    fn exec_ok(&mut self, argv: &[&str]) -> Result<ExecResult, VmError> {
        let out = self.exec(argv)?;
        if out.success() {
            return Ok(out);
        }
        Err(self.fail(VmErrorKind::CommandFailed {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            exit: out.describe_exit(),
            stderr: out.stderr.trim().to_owned(),
        }))
    }

    /// Reads a guest file.
    fn read_file(&mut self, path: &str) -> Result<String, VmError> {
        let op = Op::ReadFile(ReadFileArgs::new(path));
        self.agent_call::<ReadFileResult>(op, None).map(|r| r.data)
    }

    /// Writes a guest file (e.g. a sysfs attribute).
    fn write_file(&mut self, path: &str, data: &str) -> Result<(), VmError> {
        let op = Op::WriteFile(WriteFileArgs {
            path: path.to_owned(),
            data: data.to_owned(),
        });
        self.agent_call::<Empty>(op, None).map(drop)
    }

    /// Guest `/proc/meminfo` (values in kB, or counts for unitless lines).
    fn meminfo(&mut self) -> Result<BTreeMap<String, u64>, VmError> {
        let text = self.read_file("/proc/meminfo")?;
        parse_meminfo(&text).map_err(|e| self.fail(e.into()))
    }

    /// Polls `/proc/meminfo` until `key` satisfies `done`; returns the
    /// value and how long it took.
    fn wait_meminfo(
        &mut self,
        key: &str,
        timeout: Duration,
        done: impl Fn(u64) -> bool,
    ) -> Result<(u64, Duration), VmError> {
        let start = Instant::now();
        loop {
            let value = self.meminfo()?.get(key).copied();
            match value {
                Some(v) if done(v) => return Ok((v, start.elapsed())),
                _ if start.elapsed() >= timeout => {
                    return Err(self.fail(VmErrorKind::Timeout {
                        what: format!("{key} to reach its target (last value: {value:?} kB)"),
                        timeout,
                    }))
                }
                _ => thread::sleep(MEMINFO_POLL),
            }
        }
    }

    /// The instance events after `cursor`, waiting up to `wait` for one;
    /// the cursor moves past them, so the next call acknowledges them. If
    /// the answer is lost (timeout, broken connection) the cursor stays
    /// and the next call gets the same events again.
    fn events(&mut self, cursor: &mut EventCursor, wait: Duration) -> Result<EventList, VmError> {
        let timeout = self.command_timeout().max(wait + EXEC_MARGIN);
        let list: EventList = self.agent_call(Op::Events(cursor.request(wait)), Some(timeout))?;
        cursor.advance(&list);
        Ok(list)
    }
}

/// A guest the scenarios can run on: its memory device, its agent, and a
/// way to stop it.
pub trait Guest: MemoryDevice + AgentTransport {
    /// Stops the guest (cleanly if it can) and says how.
    fn shutdown(self) -> Result<ShutdownMethod, VmError>
    where
        Self: Sized;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use hotmem_proto::{InstanceEvent, InstanceEventKind};

    use super::*;
    use crate::agent::AgentError;
    use crate::fake::FakeGuest;

    /// An agent keeping events 1..=3 until they are acknowledged with
    /// `after_seq`, whose first `events` answer is lost on the way.
    fn agent_with_three_events() -> (FakeGuest, Arc<Mutex<u64>>) {
        let acked = Arc::new(Mutex::new(0u64));
        let seen = Arc::clone(&acked);
        let mut lost_one = false;
        let guest = FakeGuest::new(Box::new(move |op, _| {
            let Op::Events(args) = op else {
                return None;
            };
            let mut acked = seen.lock().unwrap();
            if args.agent_id.as_deref() == Some("run1") {
                *acked = (*acked).max(args.after_seq.unwrap_or(0));
            }
            let events: Vec<InstanceEvent> = (*acked + 1..=3)
                .map(|seq| InstanceEvent {
                    seq,
                    kind: InstanceEventKind::InstanceExited,
                    instance: seq,
                    partition: None,
                    exit: None,
                    uptime_ms: seq,
                })
                .collect();
            if !lost_one {
                lost_one = true;
                return None;
            }
            let list = EventList {
                events,
                dropped: 0,
                agent_id: "run1".into(),
            };
            Some(serde_json::to_value(list).unwrap())
        }));
        (guest, acked)
    }

    #[test]
    fn a_dropped_events_response_loses_no_event() {
        let (mut guest, acked) = agent_with_three_events();
        let mut cursor = EventCursor::default();
        let err = guest.events(&mut cursor, Duration::ZERO).unwrap_err();
        assert!(
            matches!(err.kind(), VmErrorKind::Agent(AgentError::Timeout { .. })),
            "{err}"
        );
        assert_eq!(
            cursor,
            EventCursor::default(),
            "a lost answer moves nothing"
        );
        let got = guest.events(&mut cursor, Duration::ZERO).unwrap();
        let seqs: Vec<u64> = got.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "nothing lost");
        assert_eq!(
            *acked.lock().unwrap(),
            0,
            "not acknowledged before received"
        );
        assert_eq!((cursor.agent_id.as_str(), cursor.after_seq), ("run1", 3));
        // The next call acknowledges them, and they are gone.
        assert!(guest
            .events(&mut cursor, Duration::ZERO)
            .unwrap()
            .events
            .is_empty());
        assert_eq!(*acked.lock().unwrap(), 3);
    }

    #[test]
    fn timed_waits_use_the_device_clock_when_it_reports() {
        let mut guest = FakeGuest::new(Box::new(|_, _| None));
        // No reports: polled every 1 ms.
        let start = ResizeStart::now();
        guest.set_requested_size(1 << 30).unwrap();
        let t = guest
            .wait_plugged_timed(1 << 30, start, Duration::from_secs(1))
            .unwrap();
        assert_eq!(t.clock, ResizeClock::Poll);
        assert!(t.elapsed <= start.instant.elapsed());
        // Reported: the device's time of the change.
        guest.reports_changes = true;
        let start = ResizeStart::now();
        guest.set_requested_size(0).unwrap();
        thread::sleep(Duration::from_millis(5));
        let t = guest
            .wait_plugged_timed(0, start, Duration::from_secs(1))
            .unwrap();
        assert_eq!(t.clock, ResizeClock::DeviceEvent);
        assert_eq!(t.resolution, Duration::from_micros(1));
        assert!(t.elapsed < Duration::from_millis(5), "{t:?}");
        // A report older than the start does not count.
        let start = ResizeStart::now();
        guest.follows = false;
        guest.plugged = 0;
        let t = guest
            .wait_plugged_timed(0, start, Duration::from_secs(1))
            .unwrap();
        assert_eq!(t.clock, ResizeClock::Poll);
    }

    #[test]
    fn provided_helpers_decode_and_report() {
        let mut guest = FakeGuest::new(Box::new(|op, _| match op {
            Op::ReadFile(_) => Some(serde_json::json!({"data": "MemTotal: 1024 kB\n"})),
            Op::Exec(_) => Some(
                serde_json::to_value(ExecResult {
                    status: Some(3),
                    stderr: "no such module\n".into(),
                    ..ExecResult::default()
                })
                .unwrap(),
            ),
            _ => Some(serde_json::json!({"unexpected": true})),
        }));
        assert_eq!(guest.meminfo().unwrap()["MemTotal"], 1024);
        let err = guest.exec_ok(&["modprobe", "x"]).unwrap_err();
        assert!(
            matches!(err.kind(), VmErrorKind::CommandFailed { stderr, .. } if stderr == "no such module"),
            "{err}"
        );
        let err = guest.hello().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                VmErrorKind::Agent(AgentError::Protocol { op: "hello", .. })
            ),
            "{err}"
        );
        guest.follows = false;
        guest.set_requested_size(1 << 30).unwrap();
        let err = guest
            .wait_plugged(1 << 30, Duration::from_millis(30))
            .unwrap_err();
        assert!(err.to_string().contains("still 0"), "{err}");
    }
}
