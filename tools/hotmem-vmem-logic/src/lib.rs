//! Host build of the HotMem virtio-mem driver's kernel-independent logic.
//!
//! The sources live in `rust/logic/` and are shared with the out-of-tree
//! kernel module, which includes the directory exactly as this crate does:
//! `#[path = ".../rust/logic/mod.rs"] mod logic;`, whose `pub mod`s are the
//! sibling modules `wire`, `partition`, `retry`, `control`, `driver` and
//! `exchange` (they refer to each other as `super::wire` etc.).
//!
//! The files use only `core`: no allocation, no floating point, no `unsafe`,
//! and no operation that can panic (each file denies the Clippy lints for
//! indexing, unchecked arithmetic, `unwrap` and friends). This crate is
//! `no_std` whenever it is not built as its own unit-test harness, so every
//! `cargo build` and every integration test proves the `no_std` part;
//! `tests/kernel_rustc.rs` also compiles the files with the kernel's rustc
//! and lint flags.
//!
//! - [`wire`]: virtio-mem requests, responses, configuration space, feature
//!   bits, and configuration validation into a partition [`wire::Geometry`].
//! - [`partition`]: the per-partition state machine and the planner.
//! - [`retry`]: BUSY backoff and the action for each response.
//! - [`control`]: sysfs input and errnos, the guest hold-back after an
//!   explicit unplug, and the probe-time choice between UNPLUG_ALL and
//!   adopting partitions a previous driver instance left online.
//! - [`driver`]: the driver's work on a device (probe sync, rounds,
//!   explicit unplugs, teardown) over an `Env` trait standing for the
//!   device and the kernel, which the host tests simulate with faults.
//! - [`exchange`]: one request and the bounded wait for its answer over a
//!   virtqueue's bus operations (late answers dropped by token).

#![cfg_attr(not(test), no_std)]

#[path = "../../../rust/logic/mod.rs"]
mod logic;

pub use logic::{control, driver, exchange, partition, retry, wire};
