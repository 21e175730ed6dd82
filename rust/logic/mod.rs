// SPDX-License-Identifier: GPL-2.0

//! The HotMem virtio-mem driver's kernel-independent logic: `core` only, no
//! `unsafe`, no operation that can panic. The kernel module and the host
//! test crate (`tools/hotmem-vmem-logic`) both include this directory as a
//! module, `#[path = ".../logic/mod.rs"] mod logic;`.
//!
//! - `wire`: virtio-mem requests, responses, configuration space, feature
//!   bits, and configuration validation into a partition geometry.
//! - `partition`: the per-partition state machine and the planner.
//! - `retry`: BUSY backoff and the action for each response.
//! - `control`: sysfs input and errnos, the guest hold-back after an
//!   explicit unplug, and the probe-time choice between UNPLUG_ALL and
//!   adopting partitions a previous driver instance left online.
//! - `driver`: the driver's work on a device over an `Env` trait that
//!   stands for the device and the kernel.
//! - `exchange`: one request and the wait for its answer, over the bus
//!   operations of a virtqueue (late answers, the timeout).

pub mod control;
pub mod driver;
pub mod exchange;
pub mod partition;
pub mod retry;
pub mod wire;
