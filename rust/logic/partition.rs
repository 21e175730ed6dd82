// SPDX-License-Identifier: GPL-2.0

//! The driver's view of each partition of a virtio-mem device region, the
//! events that move it, and the planner that moves the plugged size toward
//! the device's `requested_size` in whole partitions.
//!
//! No heap: the caller owns one [`PartState`] per partition (a slice of
//! [`Geometry::nr_partitions`] entries) and lends it to a [`Device`]. The
//! driver serializes every call (one mutex around the device), applies an
//! [`Event`] for every fact it learns, and asks [`Device::plan`] for the next
//! [`Step`] whenever something changed (configuration change, response,
//! partition released by the kernel, retry timer).
//!
//! This file includes the `wire` module as `super::wire`: whoever includes
//! it must declare the modules `wire`, `partition` and `retry` as siblings.
//!
//! # States and events
//!
//! The normal life of a partition:
//!
//! ```text
//! Unplugged -> Plugging -> Plugged -> Online <-> Bound
//!     ^                                 |
//!     +------ Unplugging <- Offlining <-+
//! ```
//!
//! The complete table ([`transition`]); every other pair is an
//! [`InvalidTransition`]:
//!
//! ```text
//! state                  event                          next state
//! Unplugged              StartPlug                      Plugging
//! Plugging               PlugAcked                      Plugged
//! Plugging               PlugNacked, PlugBusy           Unplugged
//! Plugging               PlugError                      Failed
//! Plugged                Onlined                        Online
//! Plugged                OnlineFailed                   Plugged
//! Plugged                StartUnplug                    Unplugging
//! Plugged                FoundAdded                     Bound
//! Online                 KernelBound                    Bound
//! Online                 StartUnplug                    Offlining
//! Bound                  KernelReleased                 Online
//! Offlining              Offlined                       Unplugging
//! Offlining              OfflineBusy                    Online
//! Unplugging             UnplugAcked                    Unplugged
//! Unplugging             UnplugNacked, UnplugBusy       Plugged
//! Unplugging             UnplugError                    Failed
//! Unplugged/Plugged/     StateQueried(PLUGGED)          Plugged
//!   Failed               StateQueried(UNPLUGGED)        Unplugged
//!                        StateQueried(MIXED)            Failed
//! ```
//!
//! STATE answers ([`Event::StateQueried`]) are taken only where no memory is
//! added and no request is in flight (`Unplugged`, `Plugged`, `Failed`):
//! there the driver may adopt whatever the device says without touching the
//! kernel.
//!
//! # The plugged-size invariant
//!
//! The device changes a partition's blocks only when it ACKs a PLUG or
//! UNPLUG (NACK, BUSY and ERROR leave the device unchanged). Each state
//! therefore has a [`DeviceView`]:
//!
//! * `Unplugged`, `Plugging`: unplugged (a PLUG in flight is not ACKed yet);
//! * `Plugged`, `Online`, `Bound`, `Offlining`, `Unplugging`: plugged (an
//!   UNPLUG in flight is not ACKed yet);
//! * `Failed`: unknown.
//!
//! **Invariant:** after any sequence of events, including failures, every
//! partition whose view is known is plugged on the device exactly when its
//! view says so, and [`Device::plugged_bytes`] (partitions whose view is
//! plugged, times the partition size) is what the device reports for the
//! partitions minus whatever it holds in `Failed` ones. Once every `Failed`
//! partition is resolved by a STATE query, it is exactly the device's
//! plugged size within the partitions. Consequences for failures:
//!
//! * PLUG answered NACK or BUSY: back to `Unplugged`, nothing was plugged.
//! * UNPLUG answered NACK or BUSY: the memory was already offlined and
//!   removed, the blocks are still plugged, so the partition becomes
//!   `Plugged` (plugged, memory not added), not `Online`. Re-onlining is a
//!   kernel operation that can itself fail, and the usual reason to unplug
//!   is that the host wants the memory back; from `Plugged` the planner
//!   retries the UNPLUG while the device still wants fewer partitions and
//!   onlines it again otherwise.
//! * PLUG or UNPLUG answered ERROR: the device rejected the request as
//!   malformed or as not matching the blocks' state, which means driver and
//!   device disagree; the partition becomes `Failed` until a STATE query
//!   resolves it.
//! * A STATE answer of MIXED leaves the partition `Failed`: a whole-partition
//!   request cannot fix it. The driver resolves it with UNPLUG_ALL when no
//!   partition has memory added ([`Device::unplug_all_acked`]) or per-block
//!   requests of its own.
//! * Memory found added in a partition the driver has `Plugged` (its own
//!   add failed and the kernel could not take it back, or memory of another
//!   driver): `FoundAdded` makes it `Bound`, which is never unplugged; it
//!   becomes `Online` only if the kernel reports it a free HotMem
//!   partition.
//! * Adding or onlining the memory failed (`OnlineFailed`): the partition
//!   stays `Plugged`; the planner then unplugs it if the device wants fewer
//!   partitions, or asks to online it again (the driver rate-limits that
//!   with the `retry` policy's backoff).
//!
//! # Kernel events
//!
//! `KernelBound` and `KernelReleased` report the kernel partition going from
//! free to bound (first user) and back (last user gone and every page
//! returned). The kernel refuses to bind an offlining partition, and the
//! driver must deliver these notifications under the same lock as its own
//! offline attempt, so `KernelBound` in `Offlining` is invalid: a bind that
//! races an offline shows up as `OfflineBusy` followed by `KernelBound`.

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

use core::cmp::Ordering;
use core::fmt;

use super::wire::{BlockState, Geometry, ResponseType};

// --- States -----------------------------------------------------------------

/// The driver's state of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PartState {
    /// The device has the blocks unplugged; nothing is in flight.
    #[default]
    Unplugged,
    /// A PLUG request is in flight.
    Plugging,
    /// The device has the blocks plugged; the memory is not added to the
    /// kernel (just plugged, failed to online, or failed to unplug).
    Plugged,
    /// Added and onlined as a HotMem partition, with no users: it can be
    /// bound by the kernel or unplugged by the driver.
    Online,
    /// The kernel reports users: it must not be unplugged.
    Bound,
    /// Being offlined and removed from the kernel, before the UNPLUG.
    Offlining,
    /// An UNPLUG request is in flight (the memory is no longer added).
    Unplugging,
    /// The device answered ERROR, or MIXED to a STATE query: driver and
    /// device disagree until a STATE query resolves it.
    Failed,
}

impl PartState {
    /// Every state.
    pub const ALL: [Self; 8] = [
        Self::Unplugged,
        Self::Plugging,
        Self::Plugged,
        Self::Online,
        Self::Bound,
        Self::Offlining,
        Self::Unplugging,
        Self::Failed,
    ];

    /// What the device has for this partition, given only ACKed requests.
    pub const fn device_view(self) -> DeviceView {
        match self {
            Self::Unplugged | Self::Plugging => DeviceView::Unplugged,
            Self::Plugged | Self::Online | Self::Bound | Self::Offlining | Self::Unplugging => {
                DeviceView::Plugged
            }
            Self::Failed => DeviceView::Unknown,
        }
    }

    /// Whether the partition's memory is added to the kernel.
    pub const fn memory_added(self) -> bool {
        matches!(self, Self::Online | Self::Bound | Self::Offlining)
    }

    /// Whether a request for this partition is in flight.
    pub const fn request_in_flight(self) -> bool {
        matches!(self, Self::Plugging | Self::Unplugging)
    }

    /// Whether nothing is going on: no memory added, no request in flight.
    /// Only then may the driver adopt the device's word (STATE, UNPLUG_ALL).
    pub const fn is_quiescent(self) -> bool {
        !self.memory_added() && !self.request_in_flight()
    }

    /// Lower-case name, e.g. for sysfs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unplugged => "unplugged",
            Self::Plugging => "plugging",
            Self::Plugged => "plugged",
            Self::Online => "online",
            Self::Bound => "bound",
            Self::Offlining => "offlining",
            Self::Unplugging => "unplugging",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for PartState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the device has a partition plugged, as far as the driver knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceView {
    /// Every block of the partition is unplugged.
    Unplugged,
    /// Every block of the partition is plugged.
    Plugged,
    /// Unknown until a STATE query.
    Unknown,
}

// --- Events and transitions -------------------------------------------------

/// Something the driver learned or decided about one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The driver sends a PLUG request.
    StartPlug,
    /// The device ACKed the PLUG.
    PlugAcked,
    /// The device NACKed the PLUG (refused, e.g. over `requested_size`).
    PlugNacked,
    /// The device answered BUSY to the PLUG.
    PlugBusy,
    /// The device answered ERROR to the PLUG.
    PlugError,
    /// The memory was added and onlined as a HotMem partition.
    Onlined,
    /// Adding or onlining the memory failed.
    OnlineFailed,
    /// Memory is added in a partition the driver has not added (a failed
    /// add the kernel could not take back, or another driver's memory): it
    /// must not be unplugged.
    FoundAdded,
    /// The kernel reports the partition bound (users > 0).
    KernelBound,
    /// The kernel reports the partition free again (no users, no pages).
    KernelReleased,
    /// The driver starts unplugging: offlining if the memory is added, else
    /// sending the UNPLUG request.
    StartUnplug,
    /// The memory was offlined and removed; the driver sends the UNPLUG.
    Offlined,
    /// Offlining failed (the partition is in use); the memory stays online.
    OfflineBusy,
    /// The device ACKed the UNPLUG.
    UnplugAcked,
    /// The device NACKed the UNPLUG (not a response the specification
    /// lists for UNPLUG; handled like BUSY).
    UnplugNacked,
    /// The device answered BUSY to the UNPLUG.
    UnplugBusy,
    /// The device answered ERROR to the UNPLUG.
    UnplugError,
    /// The device answered a STATE query for the partition.
    StateQueried(BlockState),
}

impl Event {
    /// The event for the device's `response` to a PLUG request.
    pub const fn plug_response(response: ResponseType) -> Self {
        match response {
            ResponseType::Ack => Self::PlugAcked,
            ResponseType::Nack => Self::PlugNacked,
            ResponseType::Busy => Self::PlugBusy,
            ResponseType::Error => Self::PlugError,
        }
    }

    /// The event for the device's `response` to an UNPLUG request.
    pub const fn unplug_response(response: ResponseType) -> Self {
        match response {
            ResponseType::Ack => Self::UnplugAcked,
            ResponseType::Nack => Self::UnplugNacked,
            ResponseType::Busy => Self::UnplugBusy,
            ResponseType::Error => Self::UnplugError,
        }
    }
}

/// An event that cannot happen in a state (a driver or kernel bug, or a
/// response that does not belong to a request in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    /// The state the partition is in (and stays in).
    pub from: PartState,
    /// The rejected event.
    pub event: Event,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {:?} is invalid in state {}",
            self.event, self.from
        )
    }
}

/// The state after `event` in `state`, or [`InvalidTransition`].
pub const fn transition(state: PartState, event: Event) -> Result<PartState, InvalidTransition> {
    use Event as E;
    use PartState as S;
    let next = match (state, event) {
        (S::Unplugged, E::StartPlug) => S::Plugging,
        (S::Plugging, E::PlugAcked) => S::Plugged,
        (S::Plugging, E::PlugNacked | E::PlugBusy) => S::Unplugged,
        (S::Plugging, E::PlugError) => S::Failed,
        (S::Plugged, E::Onlined) => S::Online,
        (S::Plugged, E::OnlineFailed) => S::Plugged,
        (S::Plugged, E::StartUnplug) => S::Unplugging,
        (S::Plugged, E::FoundAdded) => S::Bound,
        (S::Online, E::KernelBound) => S::Bound,
        (S::Online, E::StartUnplug) => S::Offlining,
        (S::Bound, E::KernelReleased) => S::Online,
        (S::Offlining, E::Offlined) => S::Unplugging,
        (S::Offlining, E::OfflineBusy) => S::Online,
        (S::Unplugging, E::UnplugAcked) => S::Unplugged,
        (S::Unplugging, E::UnplugNacked | E::UnplugBusy) => S::Plugged,
        (S::Unplugging, E::UnplugError) => S::Failed,
        (S::Unplugged | S::Plugged | S::Failed, E::StateQueried(answer)) => match answer {
            BlockState::Plugged => S::Plugged,
            BlockState::Unplugged => S::Unplugged,
            BlockState::Mixed => S::Failed,
        },
        _ => return Err(InvalidTransition { from: state, event }),
    };
    Ok(next)
}

// --- Counting ---------------------------------------------------------------

/// Counts the items of `iter` (saturating, so no overflow check can panic).
fn count<I: Iterator>(iter: I) -> usize {
    iter.fold(0, |n: usize, _| n.saturating_add(1))
}

/// How many partitions are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// In [`PartState::Unplugged`].
    pub unplugged: usize,
    /// In [`PartState::Plugging`].
    pub plugging: usize,
    /// In [`PartState::Plugged`].
    pub plugged: usize,
    /// In [`PartState::Online`].
    pub online: usize,
    /// In [`PartState::Bound`].
    pub bound: usize,
    /// In [`PartState::Offlining`].
    pub offlining: usize,
    /// In [`PartState::Unplugging`].
    pub unplugging: usize,
    /// In [`PartState::Failed`].
    pub failed: usize,
}

impl Census {
    /// Counts `states`.
    pub fn of(states: &[PartState]) -> Self {
        let mut census = Self::default();
        for &state in states {
            let slot = census.slot_mut(state);
            *slot = slot.saturating_add(1);
        }
        census
    }

    /// The counter of `state`.
    fn slot_mut(&mut self, state: PartState) -> &mut usize {
        match state {
            PartState::Unplugged => &mut self.unplugged,
            PartState::Plugging => &mut self.plugging,
            PartState::Plugged => &mut self.plugged,
            PartState::Online => &mut self.online,
            PartState::Bound => &mut self.bound,
            PartState::Offlining => &mut self.offlining,
            PartState::Unplugging => &mut self.unplugging,
            PartState::Failed => &mut self.failed,
        }
    }

    /// Partitions in `state`.
    pub const fn count(&self, state: PartState) -> usize {
        match state {
            PartState::Unplugged => self.unplugged,
            PartState::Plugging => self.plugging,
            PartState::Plugged => self.plugged,
            PartState::Online => self.online,
            PartState::Bound => self.bound,
            PartState::Offlining => self.offlining,
            PartState::Unplugging => self.unplugging,
            PartState::Failed => self.failed,
        }
    }

    /// Partitions whose [`DeviceView`] is plugged.
    pub const fn device_plugged(&self) -> usize {
        self.plugged
            .saturating_add(self.online)
            .saturating_add(self.bound)
            .saturating_add(self.offlining)
            .saturating_add(self.unplugging)
    }

    /// Partitions that count toward the target: plugged or being plugged,
    /// and not on their way out (`Plugging`, `Plugged`, `Online`, `Bound`).
    pub const fn committed(&self) -> usize {
        self.plugging
            .saturating_add(self.plugged)
            .saturating_add(self.online)
            .saturating_add(self.bound)
    }
}

// --- Planning ---------------------------------------------------------------

/// The next thing the driver should do for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply [`Event::StartPlug`] and send a PLUG request
    /// (`Unplugged` -> `Plugging`).
    Plug(usize),
    /// Add and online the memory, then apply [`Event::Onlined`] or
    /// [`Event::OnlineFailed`] (`Plugged`).
    Online(usize),
    /// Apply [`Event::StartUnplug`], offline and remove the memory, then
    /// apply [`Event::Offlined`] and send UNPLUG, or [`Event::OfflineBusy`]
    /// (`Online` -> `Offlining`).
    Offline(usize),
    /// Apply [`Event::StartUnplug`] and send an UNPLUG request; there is no
    /// memory to offline (`Plugged` -> `Unplugging`).
    Unplug(usize),
}

impl Step {
    /// The partition the step is about.
    pub const fn index(self) -> usize {
        match self {
            Self::Plug(i) | Self::Online(i) | Self::Offline(i) | Self::Unplug(i) => i,
        }
    }

    /// The event to apply before acting, if any.
    pub const fn start_event(self) -> Option<Event> {
        match self {
            Self::Plug(_) => Some(Event::StartPlug),
            Self::Offline(_) | Self::Unplug(_) => Some(Event::StartUnplug),
            Self::Online(_) => None,
        }
    }
}

/// Which way the plugged size must move, in whole partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// At the target.
    Hold,
    /// This many more partitions are needed.
    Grow(usize),
    /// This many partitions are too many.
    Shrink(usize),
}

/// What [`Device::plan`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whole partitions the device asks for: `requested_size /
    /// partition_size`, rounded down (the device NACKs a PLUG beyond
    /// `requested_size`, so rounding up is never possible).
    pub target: usize,
    /// Bytes of `requested_size` beyond the whole partitions; never plugged.
    pub remainder: u64,
    /// Partitions that count toward the target now ([`Census::committed`]).
    pub current: usize,
    /// How far `current` is from `target`.
    pub change: Change,
    /// Of the change, partitions that cannot be moved now: not enough
    /// unplugged partitions in the usable region to grow, or not enough
    /// unbound ones to shrink. The driver plans again when that changes
    /// (usable region grows, a partition is released).
    pub shortfall: usize,
    /// The next step, or `None` if there is nothing to do now.
    pub next: Option<Step>,
}

impl Plan {
    /// At the target with nothing left to do.
    pub const fn is_settled(&self) -> bool {
        matches!(self.change, Change::Hold) && self.next.is_none()
    }
}

// --- Errors -----------------------------------------------------------------

/// The slice lent to [`Device::new`] does not match the geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthMismatch {
    /// [`Geometry::nr_partitions`].
    pub expected: usize,
    /// The slice's length.
    pub got: usize,
}

impl fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} partition states for {} partitions",
            self.got, self.expected
        )
    }
}

/// Why [`Device::apply`] refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// No such partition.
    OutOfRange {
        /// The index given.
        index: usize,
        /// Partitions in the device.
        nr_partitions: usize,
    },
    /// The event is invalid in the partition's state (which is unchanged).
    Invalid(InvalidTransition),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange {
                index,
                nr_partitions,
            } => write!(
                f,
                "partition {index} out of range (device has {nr_partitions})"
            ),
            Self::Invalid(e) => e.fmt(f),
        }
    }
}

/// Why an explicit unplug request (sysfs) was refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnplugError {
    /// No such partition (`-EINVAL` in the kernel).
    OutOfRange {
        /// The index given.
        index: usize,
        /// Partitions in the device.
        nr_partitions: usize,
    },
    /// The partition is neither online nor bound: unplugged, or already
    /// moving (`-EINVAL`).
    NotOnline {
        /// The partition.
        index: usize,
        /// Its state.
        state: PartState,
    },
    /// The partition is bound (`-EBUSY`).
    Busy {
        /// The partition.
        index: usize,
    },
    /// Fewer unbound online partitions than asked for (`-EBUSY` if some are
    /// bound, else `-ENOSPC`).
    NotEnough {
        /// Partitions asked for.
        wanted: usize,
        /// Online partitions with no users.
        online: usize,
        /// Bound partitions.
        bound: usize,
    },
}

impl fmt::Display for UnplugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfRange {
                index,
                nr_partitions,
            } => write!(
                f,
                "partition {index} out of range (device has {nr_partitions})"
            ),
            Self::NotOnline { index, state } => {
                write!(f, "partition {index} is {state}, not online")
            }
            Self::Busy { index } => write!(f, "partition {index} is bound"),
            Self::NotEnough {
                wanted,
                online,
                bound,
            } => write!(
                f,
                "{wanted} partitions wanted, {online} online and free ({bound} bound)"
            ),
        }
    }
}

/// A partition has memory added or a request in flight, so the driver may
/// not adopt a device-wide state (UNPLUG_ALL, reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotQuiescent {
    /// The first such partition.
    pub index: usize,
    /// Its state.
    pub state: PartState,
}

impl fmt::Display for NotQuiescent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} is {}", self.index, self.state)
    }
}

// --- Device -----------------------------------------------------------------

/// A device region's partitions, over a caller-owned state slice.
#[derive(Debug)]
pub struct Device<'a> {
    geometry: Geometry,
    usable: usize,
    parts: &'a mut [PartState],
}

impl<'a> Device<'a> {
    /// Lends `parts` (one state per partition of `geometry`, taken as they
    /// are; a fresh device starts all [`PartState::Unplugged`], see
    /// [`Device::reset`]) and limits plugging to the partitions inside
    /// `usable_region_size`.
    pub fn new(
        geometry: Geometry,
        usable_region_size: u64,
        parts: &'a mut [PartState],
    ) -> Result<Self, LengthMismatch> {
        if parts.len() != geometry.nr_partitions() {
            return Err(LengthMismatch {
                expected: geometry.nr_partitions(),
                got: parts.len(),
            });
        }
        Ok(Self {
            geometry,
            usable: geometry.usable_partitions(usable_region_size),
            parts,
        })
    }

    /// The geometry.
    pub const fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Number of partitions.
    pub fn nr_partitions(&self) -> usize {
        self.parts.len()
    }

    /// Every partition's state, by index.
    pub fn states(&self) -> &[PartState] {
        self.parts
    }

    /// Partition `index`'s state.
    pub fn state(&self, index: usize) -> Option<PartState> {
        self.parts.get(index).copied()
    }

    /// Applies `event` to partition `index` and returns its new state. On
    /// error nothing changes.
    pub fn apply(&mut self, index: usize, event: Event) -> Result<PartState, ApplyError> {
        let nr_partitions = self.parts.len();
        let slot = self.parts.get_mut(index).ok_or(ApplyError::OutOfRange {
            index,
            nr_partitions,
        })?;
        let next = transition(*slot, event).map_err(ApplyError::Invalid)?;
        *slot = next;
        Ok(next)
    }

    /// How many partitions are in each state.
    pub fn census(&self) -> Census {
        Census::of(self.parts)
    }

    /// Bytes the device has plugged in partitions known to be plugged (see
    /// the invariant in the module documentation).
    pub fn plugged_bytes(&self) -> u64 {
        to_u64(self.census().device_plugged()).saturating_mul(self.geometry.partition_size())
    }

    /// Device blocks in partitions known to be plugged.
    pub fn plugged_blocks(&self) -> u64 {
        to_u64(self.census().device_plugged())
            .saturating_mul(u64::from(self.geometry.blocks_per_partition()))
    }

    /// Partitions whose device state is unknown (`Failed`).
    pub fn unknown_partitions(&self) -> usize {
        self.census().failed
    }

    /// Partitions inside the usable region (the first ones, by index).
    pub const fn usable_partitions(&self) -> usize {
        self.usable
    }

    /// Takes a new `usable_region_size` from the configuration space.
    pub fn set_usable_region_size(&mut self, usable_region_size: u64) {
        self.usable = self.geometry.usable_partitions(usable_region_size);
    }

    /// Indices of the partitions in `state`, lowest first.
    pub fn indices_in(&self, state: PartState) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.indexed()
            .filter(move |&(_, &s)| s == state)
            .map(|(i, _)| i)
    }

    /// `(index, state)` pairs. Not `enumerate()`: its counter carries an
    /// overflow check (a panic path) into kernel builds with
    /// `CONFIG_RUST_OVERFLOW_CHECKS`; a bounded range does not.
    fn indexed(&self) -> impl DoubleEndedIterator<Item = (usize, &PartState)> + '_ {
        (0..self.parts.len()).zip(self.parts.iter())
    }

    /// The partitions a grow would plug, in order: `Unplugged` ones inside
    /// the usable region, lowest index first.
    pub fn plug_candidates(&self) -> impl Iterator<Item = usize> + '_ {
        self.indices_in(PartState::Unplugged)
            .take_while(move |&i| i < self.usable)
    }

    /// The partitions a shrink would unplug, in order: `Plugged` ones (no
    /// memory to offline), then `Online` ones (no users), each highest index
    /// first. Never a `Bound` partition, nor one already moving.
    pub fn unplug_candidates(&self) -> impl Iterator<Item = usize> + '_ {
        self.indices_in(PartState::Plugged)
            .rev()
            .chain(self.indices_in(PartState::Online).rev())
    }

    /// Decides how to move toward `requested_size` in whole partitions.
    ///
    /// Grow (or hold): online any `Plugged` partition first (lowest index),
    /// then plug the lowest `Unplugged` partition in the usable region.
    /// Shrink: unplug the highest `Plugged` partition, else offline the
    /// highest `Online` one; `Bound` partitions are never chosen, and count
    /// in the shortfall. `Failed` partitions are neither counted nor chosen;
    /// `Offlining` and `Unplugging` ones count as already gone.
    pub fn plan(&self, requested_size: u64) -> Plan {
        let partition_size = self.geometry.partition_size();
        let whole = requested_size.checked_div(partition_size).unwrap_or(0);
        let remainder = requested_size
            .checked_rem(partition_size)
            .unwrap_or(requested_size);
        let target = usize::try_from(whole).unwrap_or(usize::MAX);
        let census = self.census();
        let current = census.committed();
        let (change, shortfall, next) = match current.cmp(&target) {
            Ordering::Less => self.plan_grow(target.saturating_sub(current)),
            Ordering::Greater => self.plan_shrink(current.saturating_sub(target), &census),
            Ordering::Equal => {
                let next = self.indices_in(PartState::Plugged).next().map(Step::Online);
                (Change::Hold, 0, next)
            }
        };
        Plan {
            target,
            remainder,
            current,
            change,
            shortfall,
            next,
        }
    }

    /// [`Device::plan`] when `by` more partitions are needed.
    fn plan_grow(&self, by: usize) -> (Change, usize, Option<Step>) {
        let available = count(self.plug_candidates());
        let next = self
            .indices_in(PartState::Plugged)
            .next()
            .map(Step::Online)
            .or_else(|| self.plug_candidates().next().map(Step::Plug));
        (Change::Grow(by), by.saturating_sub(available), next)
    }

    /// [`Device::plan`] when `by` partitions are too many.
    fn plan_shrink(&self, by: usize, census: &Census) -> (Change, usize, Option<Step>) {
        let available = census.plugged.saturating_add(census.online);
        let next = self
            .indices_in(PartState::Plugged)
            .next_back()
            .map(Step::Unplug)
            .or_else(|| {
                self.indices_in(PartState::Online)
                    .next_back()
                    .map(Step::Offline)
            });
        (Change::Shrink(by), by.saturating_sub(available), next)
    }

    /// Explicit request (sysfs) to unplug `n` partitions: claims the `n`
    /// highest-index `Online` partitions by moving them to `Offlining`, all
    /// or nothing, and returns `n`. The driver then offlines every
    /// `Offlining` partition ([`Device::indices_in`]). Bound partitions are
    /// never taken.
    pub fn pick_for_unplug(&mut self, n: usize) -> Result<usize, UnplugError> {
        let census = self.census();
        if census.online < n {
            return Err(UnplugError::NotEnough {
                wanted: n,
                online: census.online,
                bound: census.bound,
            });
        }
        let mut claimed: usize = 0;
        for slot in self.parts.iter_mut().rev() {
            if claimed >= n {
                break;
            }
            if *slot == PartState::Online {
                *slot = PartState::Offlining;
                claimed = claimed.saturating_add(1);
            }
        }
        Ok(claimed)
    }

    /// Explicit request (sysfs) to unplug partition `index`: moves it from
    /// `Online` to `Offlining` and returns the new state.
    pub fn unplug_partition(&mut self, index: usize) -> Result<PartState, UnplugError> {
        let nr_partitions = self.parts.len();
        let slot = self.parts.get_mut(index).ok_or(UnplugError::OutOfRange {
            index,
            nr_partitions,
        })?;
        match *slot {
            PartState::Online => {
                *slot = PartState::Offlining;
                Ok(PartState::Offlining)
            }
            PartState::Bound => Err(UnplugError::Busy { index }),
            state => Err(UnplugError::NotOnline { index, state }),
        }
    }

    /// Checks that no partition has memory added or a request in flight.
    pub fn check_quiescent(&self) -> Result<(), NotQuiescent> {
        match self.indexed().find(|(_, s)| !s.is_quiescent()) {
            Some((index, &state)) => Err(NotQuiescent { index, state }),
            None => Ok(()),
        }
    }

    /// Restarts from the device's word at probe or after a device reset:
    /// every partition becomes `Unplugged` if the device reports
    /// `device_plugged_size == 0`, else `Failed` (unknown). With memory
    /// plugged, the driver should then send UNPLUG_ALL (which also clears
    /// blocks outside the whole partitions) and call
    /// [`Device::unplug_all_acked`], or resolve each partition with STATE.
    /// Refused, changing nothing, unless [`Device::check_quiescent`] passes.
    pub fn reset(&mut self, device_plugged_size: u64) -> Result<(), NotQuiescent> {
        self.check_quiescent()?;
        let state = if device_plugged_size == 0 {
            PartState::Unplugged
        } else {
            PartState::Failed
        };
        self.parts.fill(state);
        Ok(())
    }

    /// The device ACKed UNPLUG_ALL: every partition is unplugged. The driver
    /// must send UNPLUG_ALL only when [`Device::check_quiescent`] passes;
    /// otherwise this is refused and changes nothing.
    pub fn unplug_all_acked(&mut self) -> Result<(), NotQuiescent> {
        self.reset(0)
    }
}

/// `usize` to `u64`, saturating (lossless on every Linux target).
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
