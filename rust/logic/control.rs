// SPDX-License-Identifier: GPL-2.0

//! The driver's decisions that involve neither the device nor the kernel:
//! parsing what user space writes to the sysfs trigger, the errno of a
//! refused explicit unplug, the guest hold-back after an explicit unplug,
//! and what to do at probe when the device reports memory plugged.
//!
//! This file includes the `partition` module as `super::partition`:
//! whoever includes it must declare the modules `wire`, `partition`,
//! `retry` and `control` as siblings.

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

use super::partition::UnplugError;

// --- sysfs input ------------------------------------------------------------

/// Why a sysfs write is not a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but an optional newline.
    Empty,
    /// A byte other than an ASCII digit (signs, spaces, hex prefixes).
    NotDecimal,
    /// More than `u64::MAX`.
    Overflow,
}

/// Parses what user space wrote to a sysfs attribute: ASCII decimal digits
/// with at most one trailing newline (what `echo` appends).
pub fn parse_decimal(input: &[u8]) -> Result<u64, ParseError> {
    let digits = input.strip_suffix(b"\n").unwrap_or(input);
    if digits.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(ParseError::NotDecimal);
        }
        let digit = u64::from(b.wrapping_sub(b'0'));
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or(ParseError::Overflow)?;
    }
    Ok(value)
}

// --- errno of a refused explicit unplug --------------------------------------

/// The error an explicit (sysfs) unplug returns to user space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `-EINVAL`: no such partition, or it is not online.
    Invalid,
    /// `-EBUSY`: the partition is bound, or too few are free because some
    /// are bound.
    Busy,
    /// `-ENOSPC`: fewer online partitions than asked for, none bound.
    NotEnough,
}

impl Refusal {
    /// The errno class of `error`.
    pub const fn of(error: &UnplugError) -> Self {
        match *error {
            UnplugError::OutOfRange { .. } | UnplugError::NotOnline { .. } => Self::Invalid,
            UnplugError::Busy { .. } => Self::Busy,
            UnplugError::NotEnough { bound, .. } if bound > 0 => Self::Busy,
            UnplugError::NotEnough { .. } => Self::NotEnough,
        }
    }
}

/// The physical partition id (as in `/sys/kernel/mm/hotmem`) of the
/// partition at `addr`: `addr / partition_size`.
pub fn partition_id(addr: u64, partition_size: u64) -> u64 {
    addr.checked_div(partition_size).unwrap_or(0)
}

/// The start address of physical partition `id`, if it is representable.
pub fn partition_addr(id: u64, partition_size: u64) -> Option<u64> {
    id.checked_mul(partition_size)
}

// --- guest hold-back ---------------------------------------------------------

/// After the guest gave partitions back on its own (sysfs), the planner
/// must not plug them again at once: the device still asks for the old
/// `requested_size`. The hold-back caps the target at what was left, until
/// the device asks for a different size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldBack {
    /// `(partitions left, requested_size then)`.
    cap: Option<(usize, u64)>,
}

impl HoldBack {
    /// No hold-back.
    pub const fn new() -> Self {
        Self { cap: None }
    }

    /// Records an explicit unplug that left `committed` partitions while
    /// the device asked for `requested_size`.
    pub fn set(&mut self, committed: usize, requested_size: u64) {
        self.cap = Some((committed, requested_size));
    }

    /// The cap in partitions, if any.
    pub const fn cap(&self) -> Option<usize> {
        match self.cap {
            Some((cap, _)) => Some(cap),
            None => None,
        }
    }

    /// The size the planner works toward: `requested_size`, or less while
    /// a hold-back from the same `requested_size` stands. A different
    /// `requested_size` lifts the hold-back.
    pub fn target_bytes(&mut self, requested_size: u64, partition_size: u64) -> u64 {
        match self.cap {
            Some((_, then)) if then != requested_size => {
                self.cap = None;
                requested_size
            }
            Some((cap, _)) => {
                let cap_bytes = u64::try_from(cap)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(partition_size);
                requested_size.min(cap_bytes)
            }
            None => requested_size,
        }
    }
}

// --- probe ------------------------------------------------------------------

/// What the driver does at probe to agree with the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSync {
    /// Nothing is plugged: every partition is unplugged.
    Nothing,
    /// Memory is plugged but the kernel has none of it added (a previous
    /// driver, a reboot of the guest): UNPLUG_ALL, as the specification
    /// asks of a driver that starts.
    UnplugAll,
    /// Some partitions are still added (left bound by a previous instance
    /// of the driver, which must not lose them): adopt those and ask the
    /// device with STATE about every other partition of the usable region.
    /// UNPLUG_ALL would take memory from running instances.
    Resolve,
}

/// The [`ProbeSync`] for a device reporting `plugged_size` bytes plugged,
/// of whose partitions `added` are online in the kernel.
pub const fn probe_sync(plugged_size: u64, added: usize) -> ProbeSync {
    if added > 0 {
        ProbeSync::Resolve
    } else if plugged_size == 0 {
        ProbeSync::Nothing
    } else {
        ProbeSync::UnplugAll
    }
}
