// SPDX-License-Identifier: GPL-2.0

//! The driver's request/response helper: send one request on the device's
//! virtqueue and wait, for a bounded time, for the answer to *that*
//! request.
//!
//! This is driver policy, kept out of the bus abstraction on purpose: the
//! virtqueue (`kernel::virtio::Virtqueue`) only takes buffers, kicks, and
//! hands used buffers back with the token they were added with; it owns
//! the buffers while the device may use them, so giving up on an answer is
//! always safe. What this helper decides is everything else:
//!
//! - Late answers (to earlier requests that were given up on) are taken
//!   off the virtqueue before a new request is added, and dropped if they
//!   come while waiting: an answer is only ever matched by its token.
//! - The timeout covers the whole wait, however many late answers arrive.
//! - A failure before the kick means the device never saw the request
//!   ([`RequestError::NotSent`]); any failure after it means it may act on
//!   it, now or later ([`RequestError::NoAnswer`]).
//!
//! This file includes the `driver` module as `super::driver` (for
//! [`RequestError`]): whoever includes it must declare the modules
//! `wire`, `partition`, `retry`, `control`, `driver` and `exchange` as
//! siblings.

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

use super::driver::RequestError;

/// A virtqueue as the helper sees it: the bus operations of
/// `kernel::virtio::Virtqueue`, and a clock.
pub trait Queue {
    /// Names the buffers of one request.
    type Token: Copy + PartialEq;
    /// A request the device has used, with its buffers.
    type Used;
    /// Why an operation failed.
    type Error;

    /// Gives the device `request` to read and a buffer to write that starts
    /// as a copy of `response`; returns their token. The device does not
    /// see them before [`Queue::kick`].
    fn add(&mut self, request: &[u8], response: &[u8]) -> Result<Self::Token, Self::Error>;
    /// Notifies the device.
    fn kick(&mut self) -> Result<(), Self::Error>;
    /// A used request, if there is one now.
    fn get(&mut self) -> Result<Option<Self::Used>, Self::Error>;
    /// Waits at most `timeout_ms` (0: looks once) for a used request.
    /// Fails when the time is up, as well as on a signal, a broken
    /// virtqueue or an unbound device.
    fn wait(&mut self, timeout_ms: u32) -> Result<Self::Used, Self::Error>;
    /// The token `used` was added with.
    fn token(used: &Self::Used) -> Self::Token;
    /// A monotonic clock, in milliseconds.
    fn now_ms(&mut self) -> u64;
}

/// Sends `request` and waits at most `timeout_ms` for the device to use it
/// (see the module documentation); returns the used request, whose
/// writable buffer holds the device's answer.
pub fn exchange<Q: Queue>(
    q: &mut Q,
    request: &[u8],
    response: &[u8],
    timeout_ms: u32,
) -> Result<Q::Used, RequestError<Q::Error>> {
    // Late answers to requests given up on earlier. The ring holds a
    // bounded number of buffers, so this ends.
    while q.get().map_err(RequestError::NotSent)?.is_some() {}
    let token = q.add(request, response).map_err(RequestError::NotSent)?;
    // From here on the device may act on the request.
    q.kick().map_err(RequestError::NoAnswer)?;
    let start = q.now_ms();
    loop {
        let waited = q.now_ms().saturating_sub(start);
        let left = u64::from(timeout_ms).saturating_sub(waited);
        let left = u32::try_from(left).unwrap_or(timeout_ms);
        let used = q.wait(left).map_err(RequestError::NoAnswer)?;
        if Q::token(&used) == token {
            return Ok(used);
        }
        // A late answer to an earlier request, dropped. There are at most
        // as many as the ring holds, so this ends.
    }
}
