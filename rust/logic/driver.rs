// SPDX-License-Identifier: GPL-2.0

//! The driver's work on one device, over an [`Env`] that stands for the
//! device and the kernel: the probe-time sync, the round that moves the
//! plugged size toward `requested_size`, the explicit (sysfs) unplugs and
//! the teardown at remove. The kernel module implements [`Env`] with
//! `kernel::virtio` and `kernel::hotmem`; the host tests implement it with
//! a simulated device that answers NACK, BUSY and ERROR, and check that the
//! driver's view of what is plugged always matches the device's.
//!
//! This file includes the other logic modules as `super::wire`,
//! `super::partition`, `super::retry` and `super::control`: whoever
//! includes it must declare all five as siblings.

#![forbid(unsafe_code)]
#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::expect_used,
    clippy::float_arithmetic,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::unreachable,
    clippy::unwrap_used
)]

use core::fmt;

use super::control::{self, HoldBack, ProbeSync, Refusal};
use super::partition::{Census, Device as Parts, Event, LengthMismatch, PartState, Step};
use super::retry::{next_action, Action, RetryPolicy};
use super::wire::{BlockRange, BlockState, Config, DecodeError, Geometry, Request, Response};

// --- The environment ----------------------------------------------------------

/// Severity of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something did not happen that should have; retried later.
    Warn,
    /// A failure.
    Err,
}

/// What the kernel says about an added partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelState {
    /// No block of it is online.
    NotAdded,
    /// Online, no users, every page free: may be unplugged.
    Free,
    /// Online and bound, or draining: must not be taken.
    InUse,
}

/// Why a request got no usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError<E> {
    /// The request did not reach the device (e.g. no memory for buffers).
    NotSent(E),
    /// The device wrote something that is not a valid response: it may or
    /// may not have acted on the request.
    BadResponse(DecodeError),
    /// The request reached the device but no answer came back (the wait
    /// timed out or was interrupted, the virtqueue broke, the device is
    /// going away): it may or may not have acted on it, now or later. The
    /// partition becomes unknown until a STATE query answers.
    NoAnswer(E),
}

/// Why removing a partition's memory failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveError<E> {
    /// Bound, or it could not be emptied (`-EBUSY`): nothing changed.
    Busy,
    /// Another error; nothing changed.
    Failed(E),
}

/// The kernel, as the driver sees it: what a reader of the driver's state
/// (sysfs) needs to take the kernel's word on which partitions are in use,
/// without the device.
pub trait Kernel {
    /// The kernel's error type.
    type Error: Copy + fmt::Debug;

    /// The kernel's state of the partition at `addr`: `NotAdded` only if
    /// no memory at all (HotMem or not, any driver's) is added in it.
    fn kernel_state(&mut self, addr: u64) -> KernelState;
    /// Logs a message about the device.
    fn log(&mut self, level: Level, args: fmt::Arguments<'_>);
}

/// The device and the kernel, as the driver's work sees them.
///
/// Whoever calls into [`Vmem`] with an `Env` holds the driver's state
/// exclusively, also while the calls here wait for the device or the kernel
/// ([`Env::request`], [`Env::add`], [`Env::remove`]). Before each of them
/// the driver hands its current state to [`Env::publish`], with the
/// partition concerned in its transitional state (`Plugging`, `Plugged`
/// while it is added, `Offlining`, `Unplugging`): readers can be served
/// from that copy without waiting, as virtio_mem's C driver marks its
/// blocks and drops its `hotplug_mutex` before it calls into the kernel.
pub trait Env: Kernel {
    /// Reads the configuration space.
    fn read_config(&mut self) -> Result<Config, Self::Error>;
    /// Sends `request` and waits for the device's response.
    fn request(&mut self, request: Request) -> Result<Response, RequestError<Self::Error>>;
    /// A monotonic clock, in microseconds.
    fn now_us(&mut self) -> u64;
    /// Adds and onlines the partition at `addr` (all or nothing).
    fn add(&mut self, addr: u64, size: u64) -> Result<(), Self::Error>;
    /// Offlines and removes the partition at `addr` (all or nothing).
    fn remove(&mut self, addr: u64, size: u64) -> Result<(), RemoveError<Self::Error>>;
    /// The driver's state as it is now (`parts`, one per partition, and
    /// `st`), before a call that may wait: what readers should see
    /// meanwhile.
    fn publish(&mut self, parts: &[PartState], st: &State);
    /// Whether any memory (any driver's, HotMem or not) is added in
    /// `[addr, addr + size)`; `true` when it cannot tell. The driver sends
    /// UNPLUG or UNPLUG_ALL only for ranges where this is `false`.
    fn memory_added(&mut self, addr: u64, size: u64) -> bool;
}

// --- The driver's state ---------------------------------------------------------

/// An operation, for `last_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Binding the device.
    Probe,
    /// A round that plugged partitions.
    Plug,
    /// A round that unplugged partitions.
    Unplug,
    /// An explicit unplug through sysfs.
    SysfsUnplug,
}

impl Op {
    /// Lower-case name, for sysfs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Plug => "plug",
            Self::Unplug => "unplug",
            Self::SysfsUnplug => "sysfs_unplug",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Everything asked was done.
    Ok,
    /// Stopped by a device answer or an error (logged).
    Partial,
    /// Nothing was done.
    Failed,
}

impl OpResult {
    /// Lower-case name, for sysfs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Failed => "failed",
        }
    }
}

/// The last operation that changed something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastOp {
    /// What it was.
    pub op: Op,
    /// How it ended.
    pub result: OpResult,
    /// Partitions plugged or unplugged.
    pub partitions: usize,
    /// How long it took, in microseconds.
    pub latency_us: u64,
}

/// A read-only sysfs file of the driver that holds one value (the kernel's
/// sysfs rule): `Vmem::show_value` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// Bytes plugged, as far as the driver knows.
    PluggedBytes,
    /// The device's `requested_size`.
    RequestedBytes,
    /// What the driver works toward ([`Vmem::target_bytes`]).
    TargetBytes,
    /// The device's `usable_region_size`.
    UsableRegionBytes,
    /// The partition size.
    PartitionBytes,
    /// Whole partitions in the device region.
    NrPartitions,
    /// Partitions in one driver state.
    Nr(PartState),
    /// 1 if the device is broken (no more requests), else 0.
    Broken,
    /// The last operation's name.
    LastOp,
    /// How the last operation ended.
    LastOpResult,
    /// Partitions the last operation plugged or unplugged.
    LastOpPartitions,
    /// How long the last operation took, in microseconds.
    LastOpLatencyUs,
}

impl Value {
    /// Every value file, in the order the module declares them.
    pub const ALL: [Self; 19] = [
        Self::PluggedBytes,
        Self::RequestedBytes,
        Self::TargetBytes,
        Self::UsableRegionBytes,
        Self::PartitionBytes,
        Self::NrPartitions,
        Self::Nr(PartState::Unplugged),
        Self::Nr(PartState::Plugging),
        Self::Nr(PartState::Plugged),
        Self::Nr(PartState::Online),
        Self::Nr(PartState::Bound),
        Self::Nr(PartState::Offlining),
        Self::Nr(PartState::Unplugging),
        Self::Nr(PartState::Failed),
        Self::Broken,
        Self::LastOp,
        Self::LastOpResult,
        Self::LastOpPartitions,
        Self::LastOpLatencyUs,
    ];

    /// The file name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PluggedBytes => "plugged_bytes",
            Self::RequestedBytes => "requested_bytes",
            Self::TargetBytes => "target_bytes",
            Self::UsableRegionBytes => "usable_region_bytes",
            Self::PartitionBytes => "partition_bytes",
            Self::NrPartitions => "nr_partitions",
            Self::Nr(state) => match state {
                PartState::Unplugged => "nr_unplugged",
                PartState::Plugging => "nr_plugging",
                PartState::Plugged => "nr_plugged",
                PartState::Online => "nr_online",
                PartState::Bound => "nr_bound",
                PartState::Offlining => "nr_offlining",
                PartState::Unplugging => "nr_unplugging",
                PartState::Failed => "nr_failed",
            },
            Self::Broken => "broken",
            Self::LastOp => "last_op",
            Self::LastOpResult => "last_op_result",
            Self::LastOpPartitions => "last_op_partitions",
            Self::LastOpLatencyUs => "last_op_latency_us",
        }
    }

    /// Whether reading it should first take the kernel's word on which
    /// added partitions are in use ([`Vmem::refresh`]). The `last_op*`
    /// files report what happened and need not.
    pub const fn refreshes(self) -> bool {
        !matches!(
            self,
            Self::LastOp | Self::LastOpResult | Self::LastOpPartitions | Self::LastOpLatencyUs
        )
    }
}

/// What the driver keeps about a device besides the partition states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// The configuration space, as last read.
    pub config: Config,
    /// After an explicit unplug: do not plug back until the request changes.
    pub hold: HoldBack,
    /// The device answered what it must not: no more requests.
    pub broken: bool,
    /// The last operation.
    pub last_op: LastOp,
    /// Backoff for BUSY answers.
    pub policy: RetryPolicy,
    /// Consecutive BUSY answers (or requests not sent); 0 after any other
    /// answer.
    pub busy_streak: u32,
    /// Set when a request was answered BUSY (or not sent): run again after
    /// this many milliseconds.
    pub retry_after_ms: Option<u32>,
    /// UNPLUG_ALL at probe was answered BUSY: send it again first.
    pub unplug_all_pending: bool,
}

impl State {
    /// The state of a device whose configuration space reads `config`.
    pub const fn new(config: Config) -> Self {
        Self {
            config,
            hold: HoldBack::new(),
            broken: false,
            last_op: LastOp {
                op: Op::Probe,
                result: OpResult::Ok,
                partitions: 0,
                latency_us: 0,
            },
            policy: RetryPolicy::DEFAULT,
            busy_streak: 0,
            retry_after_ms: None,
            unplug_all_pending: false,
        }
    }
}

/// Why probe refuses the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError<E> {
    /// A request failed or was answered badly (logged).
    Device,
    /// The kernel has memory added that the device says is not plugged.
    Inconsistent,
    /// An error of the environment.
    Env(E),
}

/// Why an explicit unplug failed. Refusals change nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnplugFailure<E> {
    /// Refused before anything was done.
    Refused(Refusal),
    /// The device is broken.
    Broken,
    /// The partition got bound (or could not be emptied) meanwhile; it is
    /// online as before (`-EBUSY`).
    Busy,
    /// Removing the memory failed; it is online as before.
    Env(E),
    /// The memory was removed but the device did not unplug it (logged);
    /// it is plugged and will be retried.
    Device,
}

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Partitions plugged and onlined.
    pub plugged: usize,
    /// Partitions unplugged.
    pub unplugged: usize,
    /// Whether it stopped early on a failure.
    pub failed: bool,
    /// A request was answered BUSY (or not sent): run the round again after
    /// this many milliseconds, without holding the device lock meanwhile.
    pub retry_ms: Option<u32>,
}

/// How a step ended.
enum Outcome {
    Continue,
    Stop,
}

/// The driver's view of one device: its partitions and [`State`], over a
/// caller-owned slice (one [`PartState`] per partition).
pub struct Vmem<'a> {
    parts: Parts<'a>,
    st: &'a mut State,
}

impl<'a> Vmem<'a> {
    /// The view of a device with `geometry`, partition states `parts` and
    /// state `st`.
    pub fn new(
        geometry: Geometry,
        parts: &'a mut [PartState],
        st: &'a mut State,
    ) -> Result<Self, LengthMismatch> {
        let parts = Parts::new(geometry, st.config.usable_region_size, parts)?;
        Ok(Self { parts, st })
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        self.parts.geometry()
    }

    /// The partitions' states.
    pub fn states(&self) -> &[PartState] {
        self.parts.states()
    }

    /// How many partitions are in each state.
    pub fn census(&self) -> Census {
        self.parts.census()
    }

    /// Bytes plugged, as far as the driver knows (equal to the device's
    /// `plugged_size` once no partition is `Failed`).
    pub fn plugged_bytes(&self) -> u64 {
        self.parts.plugged_bytes()
    }

    /// The state.
    pub fn state(&self) -> &State {
        self.st
    }

    /// The size the driver works toward: `requested_size`, or less after
    /// an explicit unplug until the request changes.
    pub fn target_bytes(&mut self) -> u64 {
        let partition_size = self.parts.geometry().partition_size();
        self.st
            .hold
            .target_bytes(self.st.config.requested_size, partition_size)
    }

    /// Writes the contents of the sysfs file `value`: the value and a
    /// newline.
    pub fn show_value<W: fmt::Write>(&mut self, value: Value, out: &mut W) -> fmt::Result {
        let op = self.st.last_op;
        match value {
            Value::PluggedBytes => writeln!(out, "{}", self.plugged_bytes()),
            Value::RequestedBytes => writeln!(out, "{}", self.st.config.requested_size),
            Value::TargetBytes => writeln!(out, "{}", self.target_bytes()),
            Value::UsableRegionBytes => writeln!(out, "{}", self.st.config.usable_region_size),
            Value::PartitionBytes => writeln!(out, "{}", self.geometry().partition_size()),
            Value::NrPartitions => writeln!(out, "{}", self.geometry().nr_partitions()),
            Value::Nr(state) => writeln!(out, "{}", self.census().count(state)),
            Value::Broken => writeln!(out, "{}", u8::from(self.st.broken)),
            Value::LastOp => writeln!(out, "{}", op.op.name()),
            Value::LastOpResult => writeln!(out, "{}", op.result.name()),
            Value::LastOpPartitions => writeln!(out, "{}", op.partitions),
            Value::LastOpLatencyUs => writeln!(out, "{}", op.latency_us),
        }
    }

    /// The physical id of partition `index` (as in `/sys/kernel/mm/hotmem`).
    pub fn partition_id(&self, index: usize) -> u64 {
        control::partition_id(self.addr(index), self.geometry().partition_size())
    }

    fn addr(&self, index: usize) -> u64 {
        self.geometry()
            .partition_range(index)
            .map_or(0, |range| range.addr)
    }

    fn apply<K: Kernel>(&mut self, env: &mut K, index: usize, event: Event) {
        if let Err(e) = self.parts.apply(index, event) {
            let id = self.partition_id(index);
            env.log(Level::Err, format_args!("partition {id}: {e}"));
        }
    }

    /// Takes the configuration space as `config`; `false` (and logged) if
    /// it is invalid or its fixed part changed.
    fn take_config<E: Env>(&mut self, env: &mut E, config: Config, memory_block: u64) -> bool {
        let geometry = *self.geometry();
        match config.validate(memory_block, geometry.partition_size()) {
            Ok(g) if g == geometry => {
                self.st.config = config;
                self.parts.set_usable_region_size(config.usable_region_size);
                true
            }
            Ok(_) => {
                env.log(
                    Level::Err,
                    format_args!("device changed its fixed configuration"),
                );
                false
            }
            Err(e) => {
                env.log(Level::Err, format_args!("invalid configuration: {e}"));
                false
            }
        }
    }

    /// Sends `request` once and returns the response and the action. BUSY
    /// (and NACK to UNPLUG) is not retried here: it sets
    /// [`State::retry_after_ms`] from the backoff policy, and the caller
    /// stops and runs again later. A response that cannot be decoded marks
    /// the device broken.
    fn send<E: Env>(
        &mut self,
        env: &mut E,
        request: Request,
    ) -> Result<(Response, Action), RequestError<E::Error>> {
        let kind = request.request_type();
        self.publish(env);
        let response = match env.request(request) {
            Ok(r) => r,
            Err(RequestError::BadResponse(e)) => {
                self.st.broken = true;
                env.log(
                    Level::Err,
                    format_args!("bad response to {kind:?}: {e}; device marked broken"),
                );
                return Err(RequestError::BadResponse(e));
            }
            Err(RequestError::NoAnswer(e)) => {
                env.log(Level::Err, format_args!("no answer to {kind:?}: {e:?}"));
                self.back_off();
                return Err(RequestError::NoAnswer(e));
            }
            Err(e) => {
                env.log(Level::Err, format_args!("{kind:?} not sent: {e:?}"));
                self.back_off();
                return Err(e);
            }
        };
        let attempt = self.st.busy_streak.saturating_add(1);
        let action = next_action(&self.st.policy, kind, response.response_type(), attempt);
        match action {
            Action::Retry { delay_ms } => {
                if self.st.busy_streak == 0 {
                    env.log(
                        Level::Info,
                        format_args!("device answered {response:?} to {kind:?}, retrying"),
                    );
                }
                self.st.busy_streak = attempt;
                self.st.retry_after_ms = Some(delay_ms);
            }
            Action::Broken => {
                self.st.broken = true;
                env.log(
                    Level::Err,
                    format_args!("device answered {response:?} to {kind:?}; device marked broken"),
                );
            }
            Action::GiveUp => {}
            _ => self.st.busy_streak = 0,
        }
        Ok((response, action))
    }

    /// Schedules a retry with the backoff of the policy (a request that was
    /// not sent).
    fn back_off(&mut self) {
        let attempt = self.st.busy_streak.saturating_add(1);
        if let Some(delay_ms) = self.st.policy.delay_after(attempt) {
            self.st.busy_streak = attempt;
            self.st.retry_after_ms = Some(delay_ms);
        }
    }

    /// Asks the device about partition `index` (after an ERROR) and adopts
    /// its answer.
    fn query_state<E: Env>(&mut self, env: &mut E, index: usize) -> Option<BlockState> {
        let request = self.geometry().state_request(index).ok()?;
        if let Ok((Response::AckState(state), _)) = self.send(env, request) {
            self.apply(env, index, Event::StateQueried(state));
            let id = self.partition_id(index);
            env.log(
                Level::Info,
                format_args!("partition {id} is {state:?} on the device"),
            );
            return Some(state);
        }
        None
    }

    /// Brings partition `index` (`Failed`, MIXED on the device) back to a
    /// known state: UNPLUG_ALL if no memory is added anywhere in the
    /// region (every partition becomes `Unplugged`), else one UNPLUG per
    /// plugged device block (found with STATE). `false` if it is still
    /// unknown (BUSY, or memory is added in it).
    fn resolve_mixed<E: Env>(&mut self, env: &mut E, index: usize) -> bool {
        let config = self.st.config;
        let id = self.partition_id(index);
        if self.parts.check_quiescent().is_ok()
            && !env.memory_added(config.addr, config.region_size)
        {
            env.log(
                Level::Info,
                format_args!("partition {id} is partly plugged; UNPLUG_ALL"),
            );
            return match self.send(env, Request::UnplugAll) {
                Ok((_, Action::Done)) => self.parts.unplug_all_acked().is_ok(),
                _ => false,
            };
        }
        let geometry = *self.geometry();
        let Ok(range) = geometry.partition_range(index) else {
            return false;
        };
        if env.memory_added(range.addr, geometry.partition_size()) {
            return false;
        }
        env.log(
            Level::Info,
            format_args!("partition {id} is partly plugged; unplugging its blocks"),
        );
        let mut addr = range.addr;
        for _ in 0..geometry.blocks_per_partition() {
            let block = BlockRange { addr, nb_blocks: 1 };
            match self.send(env, Request::State(block)) {
                Ok((Response::AckState(BlockState::Unplugged), _)) => {}
                Ok((Response::AckState(BlockState::Plugged), _)) => {
                    if !matches!(
                        self.send(env, Request::Unplug(block)),
                        Ok((_, Action::Done))
                    ) {
                        return false;
                    }
                }
                _ => return false,
            }
            addr = addr.saturating_add(geometry.block_size());
        }
        self.apply(env, index, Event::StateQueried(BlockState::Unplugged));
        true
    }

    /// Asks the device about every `Failed` partition (an earlier STATE
    /// query did not get through); `false` if one is still unknown.
    fn resolve_failed<E: Env>(&mut self, env: &mut E) -> bool {
        let mut resolved = true;
        for index in 0..self.parts.nr_partitions() {
            if self.parts.state(index) == Some(PartState::Failed) {
                if self.query_state(env, index) == Some(BlockState::Mixed) {
                    self.resolve_mixed(env, index);
                }
                resolved &= self.parts.state(index) != Some(PartState::Failed);
            }
        }
        resolved
    }

    /// Takes the kernel's word on which added partitions are in use.
    pub fn refresh<K: Kernel>(&mut self, env: &mut K) {
        for index in 0..self.parts.nr_partitions() {
            self.refresh_one(env, index);
        }
    }

    /// Takes the kernel's word on whether partition `index`, if added, is
    /// in use.
    fn refresh_one<K: Kernel>(&mut self, env: &mut K, index: usize) {
        let state = self.parts.state(index);
        if !matches!(state, Some(PartState::Online | PartState::Bound)) {
            return;
        }
        let kernel = env.kernel_state(self.addr(index));
        match (state, kernel) {
            (Some(PartState::Online), KernelState::InUse) => {
                self.apply(env, index, Event::KernelBound);
            }
            (Some(PartState::Bound), KernelState::Free) => {
                self.apply(env, index, Event::KernelReleased);
            }
            _ => {}
        }
    }

    /// The state of partition `index` (`None` if there is no such
    /// partition), after taking the kernel's word on whether it is in use:
    /// what its sysfs directory shows.
    pub fn partition_state<K: Kernel>(&mut self, env: &mut K, index: usize) -> Option<PartState> {
        self.refresh_one(env, index);
        self.parts.state(index)
    }

    /// Hands the current state to [`Env::publish`].
    fn publish<E: Env>(&self, env: &mut E) {
        env.publish(self.parts.states(), self.st);
    }

    /// Sends UNPLUG for partition `index` (`Unplugging`), unless memory is
    /// added in it: then it is not sent and the partition becomes `Bound`.
    fn unplug_request<E: Env>(&mut self, env: &mut E, index: usize) -> Outcome {
        let Ok(request) = self.geometry().unplug_request(index) else {
            return Outcome::Stop;
        };
        let id = self.partition_id(index);
        if env.memory_added(self.addr(index), self.geometry().partition_size()) {
            env.log(
                Level::Err,
                format_args!("partition {id} has memory added; not unplugging it"),
            );
            self.apply(env, index, Event::UnplugBusy);
            self.apply(env, index, Event::FoundAdded);
            return Outcome::Stop;
        }
        let (response, action) = match self.send(env, request) {
            Ok(r) => r,
            Err(RequestError::NotSent(_)) => {
                // Nothing reached the device: still plugged.
                self.apply(env, index, Event::UnplugBusy);
                return Outcome::Stop;
            }
            Err(RequestError::NoAnswer(_)) => {
                // It may be unplugged, now or later: unknown (never added
                // again before a STATE query says it is plugged).
                self.apply(env, index, Event::UnplugError);
                return Outcome::Stop;
            }
            Err(RequestError::BadResponse(_)) => return Outcome::Stop,
        };
        self.apply(env, index, Event::unplug_response(response.response_type()));
        match action {
            Action::Done => Outcome::Continue,
            Action::QueryState => {
                env.log(
                    Level::Err,
                    format_args!("device answered ERROR to UNPLUG of partition {id}"),
                );
                self.query_state(env, index);
                Outcome::Stop
            }
            _ => {
                let streak = self.st.busy_streak;
                env.log(
                    Level::Warn,
                    format_args!(
                        "device did not unplug partition {id} ({response:?}, {streak} in a \
                         row); it stays plugged, retried later"
                    ),
                );
                Outcome::Stop
            }
        }
    }

    /// Removes partition `index` (`Offlining`) from the kernel, then
    /// unplugs it.
    fn offline_and_unplug<E: Env>(
        &mut self,
        env: &mut E,
        index: usize,
    ) -> Result<Outcome, UnplugFailure<E::Error>> {
        let size = self.geometry().partition_size();
        self.publish(env);
        match env.remove(self.addr(index), size) {
            Ok(()) => {
                self.apply(env, index, Event::Offlined);
                Ok(self.unplug_request(env, index))
            }
            Err(RemoveError::Busy) => {
                self.apply(env, index, Event::OfflineBusy);
                // Bound or draining: the refresh says so.
                self.refresh(env);
                Err(UnplugFailure::Busy)
            }
            Err(RemoveError::Failed(e)) => {
                self.apply(env, index, Event::OfflineBusy);
                let id = self.partition_id(index);
                env.log(
                    Level::Err,
                    format_args!("cannot offline partition {id}: {e:?}"),
                );
                Err(UnplugFailure::Env(e))
            }
        }
    }

    /// Adds and onlines partition `index` (`Plugged`). On failure it is
    /// unplugged again if the kernel confirms that nothing of it is left
    /// added (the device keeps no memory the kernel does not use); memory
    /// left added, or an answer the kernel cannot give, keeps it plugged
    /// as `Bound`.
    fn online<E: Env>(&mut self, env: &mut E, index: usize) -> Outcome {
        let size = self.geometry().partition_size();
        let addr = self.addr(index);
        self.publish(env);
        match env.add(addr, size) {
            Ok(()) => {
                self.apply(env, index, Event::Onlined);
                Outcome::Continue
            }
            Err(e) => {
                self.apply(env, index, Event::OnlineFailed);
                let id = self.partition_id(index);
                if env.memory_added(addr, size) {
                    env.log(
                        Level::Err,
                        format_args!(
                            "cannot add partition {id}: {e:?}; memory is left added there, \
                             keeping it plugged"
                        ),
                    );
                    self.apply(env, index, Event::FoundAdded);
                    return Outcome::Stop;
                }
                env.log(
                    Level::Err,
                    format_args!("cannot add partition {id}: {e:?}; unplugging it"),
                );
                self.apply(env, index, Event::StartUnplug);
                let _ = self.unplug_request(env, index);
                Outcome::Stop
            }
        }
    }

    /// Plugs partition `index` (`Unplugged`) and onlines it.
    fn plug<E: Env>(&mut self, env: &mut E, index: usize) -> Outcome {
        let Ok(request) = self.geometry().plug_request(index) else {
            return Outcome::Stop;
        };
        let id = self.partition_id(index);
        self.apply(env, index, Event::StartPlug);
        let (response, action) = match self.send(env, request) {
            Ok(r) => r,
            Err(RequestError::NotSent(_)) => {
                self.apply(env, index, Event::PlugBusy);
                return Outcome::Stop;
            }
            Err(RequestError::NoAnswer(_)) => {
                // It may be plugged, now or later: unknown.
                self.apply(env, index, Event::PlugError);
                return Outcome::Stop;
            }
            // The partition stays `Plugging`: unknown, and the device is
            // broken.
            Err(RequestError::BadResponse(_)) => return Outcome::Stop,
        };
        self.apply(env, index, Event::plug_response(response.response_type()));
        match action {
            Action::Done => self.online(env, index),
            Action::Refused => {
                env.log(
                    Level::Info,
                    format_args!("device refused to plug partition {id} (NACK)"),
                );
                Outcome::Stop
            }
            Action::QueryState => {
                env.log(
                    Level::Err,
                    format_args!("device answered ERROR to PLUG of partition {id}"),
                );
                self.query_state(env, index);
                Outcome::Stop
            }
            _ => {
                let streak = self.st.busy_streak;
                env.log(
                    Level::Warn,
                    format_args!(
                        "device busy, partition {id} not plugged ({streak} in a row); retried \
                         later"
                    ),
                );
                Outcome::Stop
            }
        }
    }

    /// One round: reads the configuration and moves the plugged size toward
    /// the target in whole partitions until it is reached, nothing can be
    /// done now (bound partitions, usable region), or a failure stops it.
    /// `memory_block` is the kernel's memory block size.
    pub fn round<E: Env>(&mut self, env: &mut E, memory_block: u64) -> RoundReport {
        let mut report = RoundReport::default();
        if self.st.broken {
            return report;
        }
        self.st.retry_after_ms = None;
        let start = env.now_us();
        if self.st.unplug_all_pending && !self.unplug_all(env) {
            report.failed = true;
            report.retry_ms = self.st.retry_after_ms.take();
            return report;
        }
        let mut budget = self
            .parts
            .nr_partitions()
            .saturating_mul(3)
            .saturating_add(8);
        while budget > 0 && !self.st.broken {
            budget = budget.saturating_sub(1);
            let config = match env.read_config() {
                Ok(c) => c,
                Err(e) => {
                    env.log(Level::Err, format_args!("reading the configuration: {e:?}"));
                    report.failed = true;
                    break;
                }
            };
            if !self.take_config(env, config, memory_block) {
                report.failed = true;
                break;
            }
            self.refresh(env);
            if !self.resolve_failed(env) {
                report.failed = true;
                break;
            }
            let target = self.target_bytes();
            let Some(step) = self.parts.plan(target).next else {
                break;
            };
            let outcome = match step {
                Step::Plug(i) => {
                    let o = self.plug(env, i);
                    if self.parts.state(i) == Some(PartState::Online) {
                        report.plugged = report.plugged.saturating_add(1);
                    }
                    o
                }
                Step::Online(i) => self.online(env, i),
                Step::Offline(i) => {
                    self.apply(env, i, Event::StartUnplug);
                    let o = match self.offline_and_unplug(env, i) {
                        Ok(o) => o,
                        // It got bound meanwhile: plan again.
                        Err(UnplugFailure::Busy) => Outcome::Continue,
                        Err(_) => Outcome::Stop,
                    };
                    if self.parts.state(i) == Some(PartState::Unplugged) {
                        report.unplugged = report.unplugged.saturating_add(1);
                    }
                    o
                }
                Step::Unplug(i) => {
                    self.apply(env, i, Event::StartUnplug);
                    let o = self.unplug_request(env, i);
                    if self.parts.state(i) == Some(PartState::Unplugged) {
                        report.unplugged = report.unplugged.saturating_add(1);
                    }
                    o
                }
            };
            if matches!(outcome, Outcome::Stop) {
                report.failed = true;
                break;
            }
        }
        if report.plugged > 0 || report.unplugged > 0 || report.failed {
            let (op, partitions) = if report.unplugged > 0 {
                (Op::Unplug, report.unplugged)
            } else {
                (Op::Plug, report.plugged)
            };
            self.st.last_op = LastOp {
                op,
                result: if report.failed {
                    OpResult::Partial
                } else {
                    OpResult::Ok
                },
                partitions,
                latency_us: env.now_us().saturating_sub(start),
            };
        }
        report.retry_ms = self.st.retry_after_ms.take();
        report
    }

    /// Sends UNPLUG_ALL if nothing is added anywhere in the device region
    /// and no partition is busy; `true` if it was ACKed or is not needed any
    /// more (then the partitions, all unknown, are resolved with STATE).
    fn unplug_all<E: Env>(&mut self, env: &mut E) -> bool {
        let config = self.st.config;
        if self.parts.check_quiescent().is_err()
            || env.memory_added(config.addr, config.region_size)
        {
            env.log(
                Level::Warn,
                format_args!("memory is added in the device region; not sending UNPLUG_ALL"),
            );
            self.st.unplug_all_pending = false;
            return true;
        }
        match self.send(env, Request::UnplugAll) {
            Ok((_, Action::Done)) => {
                self.st.unplug_all_pending = false;
                let _ = self.parts.unplug_all_acked();
                env.log(Level::Info, format_args!("UNPLUG_ALL done"));
                true
            }
            Ok((response, Action::Retry { delay_ms })) => {
                env.log(
                    Level::Info,
                    format_args!("UNPLUG_ALL answered {response:?}; retried in {delay_ms} ms"),
                );
                false
            }
            Ok((response, _)) => {
                env.log(Level::Err, format_args!("UNPLUG_ALL answered {response:?}"));
                false
            }
            Err(_) => false,
        }
    }

    /// Explicit unplug of the partition with physical id `id`.
    pub fn unplug_id<E: Env>(
        &mut self,
        env: &mut E,
        id: u64,
    ) -> Result<(), UnplugFailure<E::Error>> {
        let geometry = *self.geometry();
        let index = control::partition_addr(id, geometry.partition_size())
            .map(|addr| BlockRange {
                addr,
                nb_blocks: geometry.blocks_per_partition(),
            })
            .and_then(|range| geometry.partition_index(range).ok())
            .ok_or(UnplugFailure::Refused(Refusal::Invalid))?;
        if self.st.broken {
            return Err(UnplugFailure::Broken);
        }
        self.refresh(env);
        let start = env.now_us();
        self.parts
            .unplug_partition(index)
            .map_err(|e| UnplugFailure::Refused(Refusal::of(&e)))?;
        let result = self.offline_and_unplug(env, index);
        let done = usize::from(matches!(result, Ok(Outcome::Continue)));
        let pending = usize::from(self.pending_unplug(index, &result));
        self.finish_explicit(env, start, done, pending, &result);
        if pending > 0 {
            return Ok(());
        }
        result.and_then(|o| match o {
            Outcome::Continue => Ok(()),
            Outcome::Stop => Err(UnplugFailure::Device),
        })
    }

    /// Whether partition `index` was taken out of the kernel but the device
    /// answered BUSY: the UNPLUG is retried later (and the partition is not
    /// onlined again).
    fn pending_unplug(
        &self,
        index: usize,
        result: &Result<Outcome, UnplugFailure<impl Copy>>,
    ) -> bool {
        matches!(result, Ok(Outcome::Stop))
            && self.parts.state(index) == Some(PartState::Plugged)
            && self.st.retry_after_ms.is_some()
    }

    /// Explicit unplug of `n` free partitions (all or nothing).
    pub fn unplug_free<E: Env>(
        &mut self,
        env: &mut E,
        n: usize,
    ) -> Result<(), UnplugFailure<E::Error>> {
        if n == 0 {
            return Err(UnplugFailure::Refused(Refusal::Invalid));
        }
        if self.st.broken {
            return Err(UnplugFailure::Broken);
        }
        self.refresh(env);
        let start = env.now_us();
        self.parts
            .pick_for_unplug(n)
            .map_err(|e| UnplugFailure::Refused(Refusal::of(&e)))?;
        let mut result = Ok(Outcome::Continue);
        let mut done: usize = 0;
        let mut pending: usize = 0;
        for index in 0..self.parts.nr_partitions() {
            if self.parts.state(index) != Some(PartState::Offlining) {
                continue;
            }
            if matches!(result, Ok(Outcome::Continue)) {
                result = self.offline_and_unplug(env, index);
                if matches!(result, Ok(Outcome::Continue)) {
                    done = done.saturating_add(1);
                } else if self.pending_unplug(index, &result) {
                    pending = 1;
                }
            } else {
                // An earlier one failed: give the rest back untouched.
                self.apply(env, index, Event::OfflineBusy);
            }
        }
        self.finish_explicit(env, start, done, pending, &result);
        result.and_then(|o| match o {
            Outcome::Continue => Ok(()),
            Outcome::Stop => Err(UnplugFailure::Device),
        })
    }

    /// Records an explicit unplug and holds the target back: `done`
    /// partitions were unplugged, `pending` more were taken out of the
    /// kernel and their UNPLUG is retried later.
    fn finish_explicit<E: Env>(
        &mut self,
        env: &mut E,
        start: u64,
        done: usize,
        pending: usize,
        result: &Result<Outcome, UnplugFailure<E::Error>>,
    ) {
        let outcome = match result {
            Ok(Outcome::Continue) => OpResult::Ok,
            Ok(Outcome::Stop) => OpResult::Partial,
            Err(_) if done > 0 => OpResult::Partial,
            Err(_) => OpResult::Failed,
        };
        let latency_us = env.now_us().saturating_sub(start);
        self.st.last_op = LastOp {
            op: Op::SysfsUnplug,
            result: outcome,
            partitions: done,
            latency_us,
        };
        if done > 0 || pending > 0 {
            // Do not plug back what the guest gave away until the device
            // asks for a different size.
            let committed = self.parts.census().committed().saturating_sub(pending);
            self.st.hold.set(committed, self.st.config.requested_size);
            env.log(
                Level::Info,
                format_args!("unplugged {done} partitions on request in {latency_us} us"),
            );
        }
    }

    /// Unplugs every partition that has no users (module removal) and
    /// returns what is left.
    pub fn teardown<E: Env>(&mut self, env: &mut E) -> Census {
        if !self.st.broken {
            self.refresh(env);
            for index in (0..self.parts.nr_partitions()).rev() {
                match self.parts.state(index) {
                    Some(PartState::Online) => {
                        self.apply(env, index, Event::StartUnplug);
                        let _ = self.offline_and_unplug(env, index);
                    }
                    Some(PartState::Plugged) => {
                        self.apply(env, index, Event::StartUnplug);
                        let _ = self.unplug_request(env, index);
                    }
                    _ => {}
                }
            }
        }
        self.parts.census()
    }

    /// Brings the driver's view in line with the device at probe (every
    /// partition is taken as unknown first): UNPLUG_ALL if the device has
    /// memory plugged and the kernel has none of it added; otherwise adopt
    /// the added partitions and ask the device about the others of the
    /// usable region with STATE.
    pub fn probe_sync<E: Env>(&mut self, env: &mut E) -> Result<(), ProbeError<E::Error>> {
        let plugged = self.st.config.plugged_size;
        // Nothing is added or in flight yet, so this cannot be refused.
        let _ = self.parts.reset(plugged);
        let nr = self.parts.nr_partitions();
        let mut added: usize = 0;
        for index in 0..nr {
            if env.kernel_state(self.addr(index)) != KernelState::NotAdded {
                added = added.saturating_add(1);
            }
        }
        // Memory added in the region outside the partitions (or that the
        // kernel cannot account for) rules UNPLUG_ALL out as well.
        if added == 0
            && plugged != 0
            && env.memory_added(self.st.config.addr, self.st.config.region_size)
        {
            env.log(
                Level::Warn,
                format_args!("memory is added in the device region; not sending UNPLUG_ALL"),
            );
            return self.resolve(env);
        }
        match control::probe_sync(plugged, added) {
            ProbeSync::Nothing => Ok(()),
            ProbeSync::UnplugAll => {
                env.log(
                    Level::Info,
                    format_args!("device has {} MiB plugged; UNPLUG_ALL", plugged >> 20),
                );
                match self.send(env, Request::UnplugAll) {
                    Ok((_, Action::Done)) => {
                        let _ = self.parts.unplug_all_acked();
                        Ok(())
                    }
                    Ok((response, Action::Retry { delay_ms })) => {
                        // Every partition stays unknown until it gets through.
                        env.log(
                            Level::Info,
                            format_args!(
                                "UNPLUG_ALL answered {response:?}; retried in {delay_ms} ms"
                            ),
                        );
                        self.st.unplug_all_pending = true;
                        Ok(())
                    }
                    Ok((response, _)) => {
                        env.log(Level::Err, format_args!("UNPLUG_ALL answered {response:?}"));
                        Err(ProbeError::Device)
                    }
                    Err(RequestError::NotSent(e) | RequestError::NoAnswer(e)) => {
                        Err(ProbeError::Env(e))
                    }
                    Err(RequestError::BadResponse(_)) => Err(ProbeError::Device),
                }
            }
            ProbeSync::Resolve => self.resolve(env),
        }
    }

    /// [`Vmem::probe_sync`] when some partitions are still added.
    fn resolve<E: Env>(&mut self, env: &mut E) -> Result<(), ProbeError<E::Error>> {
        let usable = self.parts.usable_partitions();
        for index in 0..self.parts.nr_partitions() {
            let added = env.kernel_state(self.addr(index)) != KernelState::NotAdded;
            let answer = if index < usable {
                let Ok(request) = self.geometry().state_request(index) else {
                    return Err(ProbeError::Device);
                };
                match self.send(env, request) {
                    Ok((Response::AckState(state), _)) => state,
                    Ok((response, _)) => {
                        env.log(Level::Err, format_args!("STATE answered {response:?}"));
                        return Err(ProbeError::Device);
                    }
                    Err(RequestError::NotSent(e) | RequestError::NoAnswer(e)) => {
                        return Err(ProbeError::Env(e))
                    }
                    Err(RequestError::BadResponse(_)) => return Err(ProbeError::Device),
                }
            } else {
                // Nothing is plugged outside the usable region (and the
                // device answers ERROR to requests about it).
                BlockState::Unplugged
            };
            self.apply(env, index, Event::StateQueried(answer));
            if added {
                let id = self.partition_id(index);
                if answer != BlockState::Plugged || self.parts.apply(index, Event::Onlined).is_err()
                {
                    env.log(
                        Level::Err,
                        format_args!("partition {id} is added but {answer:?} on the device"),
                    );
                    return Err(ProbeError::Inconsistent);
                }
                env.log(Level::Info, format_args!("adopted added partition {id}"));
            }
        }
        self.refresh(env);
        Ok(())
    }
}
