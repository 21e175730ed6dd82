// SPDX-License-Identifier: GPL-2.0

//! What the driver does with each response: a bounded exponential backoff
//! for BUSY, and the action for NACK and ERROR. Pure functions, no state:
//! the driver keeps the attempt count of the request it is retrying.
//!
//! | request    | ACK  | NACK    | BUSY          | ERROR      |
//! |------------|------|---------|---------------|------------|
//! | PLUG       | Done | Refused | Retry/GiveUp  | QueryState |
//! | UNPLUG     | Done | Retry/GiveUp (as BUSY) | Retry/GiveUp | QueryState |
//! | UNPLUG_ALL | Done | Broken  | Retry/GiveUp  | Broken     |
//! | STATE      | Done | Broken  | Retry/GiveUp  | Broken     |
//!
//! Responses the specification does not list for a request (NACK to
//! anything but PLUG, ERROR to UNPLUG_ALL, BUSY to STATE) are handled as
//! above: a NACK to UNPLUG is taken as "not now", like Linux's driver does;
//! BUSY is always safe to retry; the rest mean the driver's idea of the
//! device is wrong, and the device is marked broken.
//!
//! The partition state machine (`partition` module) has already rolled the
//! partition back when the driver acts on these (BUSY and NACK: to
//! `Unplugged` after PLUG, to `Plugged` after UNPLUG; ERROR: to `Failed`).
//!
//! This file includes the `wire` module as `super::wire`: whoever includes
//! it must declare the modules `wire`, `partition` and `retry` as siblings.

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

use super::wire::{RequestType, ResponseType};

/// Bounded exponential backoff for BUSY responses.
///
/// The delay after the `k`-th attempt answered BUSY (`k` from 1) is
/// `first_delay_ms * 2^(k-1)`, capped at `max_delay_ms`; after
/// `max_attempts` attempts the driver gives up on the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first BUSY, in milliseconds.
    pub first_delay_ms: u32,
    /// Largest delay, in milliseconds.
    pub max_delay_ms: u32,
    /// Attempts (the first send included) before giving up.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// HotMem's default: 100 ms doubling to at most 2 minutes, never
    /// giving up. The driver does not sleep between attempts: a BUSY
    /// answer ends the work step, the partition is rolled back, and the
    /// work runs again after the delay (or at once on a configuration
    /// change), with the device lock released meanwhile. QEMU answers BUSY
    /// for the whole of a migration; Linux's virtio-mem driver waits 5 s
    /// doubling to 5 min. Starting small lets HotMem give memory back soon
    /// after a short migration ends; the cap keeps a long one from being
    /// polled often.
    pub const DEFAULT: Self = Self {
        first_delay_ms: 100,
        max_delay_ms: 120_000,
        max_attempts: u32::MAX,
    };

    /// The delay before the next attempt after attempt number `attempt`
    /// (1 for the first send; 0 is taken as 1) was answered BUSY, or `None`
    /// if that was the last attempt allowed.
    pub fn delay_after(&self, attempt: u32) -> Option<u32> {
        if attempt.max(1) >= self.max_attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1);
        let delay = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.first_delay_ms.checked_mul(factor))
            .unwrap_or(u32::MAX);
        Some(delay.min(self.max_delay_ms))
    }

    /// The longest a request can be retried: the sum of every delay before
    /// the driver gives up, in milliseconds (saturating).
    pub fn total_delay_ms(&self) -> u64 {
        let mut total: u64 = 0;
        let mut attempt: u32 = 1;
        while let Some(delay) = self.delay_after(attempt) {
            if delay >= self.max_delay_ms {
                // Every remaining delay is the cap: add them at once.
                let remaining = self.max_attempts.saturating_sub(attempt);
                let rest = u64::from(remaining).saturating_mul(u64::from(self.max_delay_ms));
                return total.saturating_add(rest);
            }
            total = total.saturating_add(u64::from(delay));
            attempt = attempt.saturating_add(1);
        }
        total
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the driver does after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The request succeeded.
    Done,
    /// Send the same request again after `delay_ms` milliseconds.
    Retry {
        /// Milliseconds to wait.
        delay_ms: u32,
    },
    /// BUSY too often: abandon the request and plan again on the next
    /// trigger.
    GiveUp,
    /// The device refuses to plug (usually `requested_size` went down
    /// meanwhile): stop plugging, log, and plan again on the next
    /// configuration change.
    Refused,
    /// Driver and device disagree about the partition: send a STATE request
    /// for it and apply the answer ([`super::partition::Event::StateQueried`]),
    /// then plan again.
    QueryState,
    /// The device answered what cannot be answered to this request: stop
    /// serving the device (like Linux's `vm->broken`).
    Broken,
}

/// The action for `response` to `request`, whose attempt number `attempt`
/// (1 for the first send) this was.
pub fn next_action(
    policy: &RetryPolicy,
    request: RequestType,
    response: ResponseType,
    attempt: u32,
) -> Action {
    let retry_or_give_up = || match policy.delay_after(attempt) {
        Some(delay_ms) => Action::Retry { delay_ms },
        None => Action::GiveUp,
    };
    match (request, response) {
        (_, ResponseType::Ack) => Action::Done,
        (_, ResponseType::Busy) | (RequestType::Unplug, ResponseType::Nack) => retry_or_give_up(),
        (RequestType::Plug, ResponseType::Nack) => Action::Refused,
        (RequestType::Plug | RequestType::Unplug, ResponseType::Error) => Action::QueryState,
        (RequestType::UnplugAll | RequestType::State, ResponseType::Nack | ResponseType::Error) => {
            Action::Broken
        }
    }
}
