// SPDX-License-Identifier: GPL-2.0

//! HotMem virtio-mem driver.
//!
//! Plugs and unplugs the memory of a virtio-mem device in whole HotMem
//! partitions: one PLUG request per partition, then the partition is added
//! and onlined into `ZONE_HOTMEM` (`hotmem_add_partitions()`); to shrink,
//! partitions with no users are offlined on the fast path
//! (`hotmem_remove_partitions()`) and unplugged with one UNPLUG request
//! each. A bound partition is never taken from a running instance: a shrink
//! that finds too few free partitions finishes when the kernel reports
//! partitions released (HotMem notifier).
//!
//! Everything that does not need the kernel (wire format, configuration
//! checks, the per-partition state machine, the planner and the retry
//! policy) lives in `rust/logic/` and is unit-tested on the host. This file
//! only glues it to `kernel::virtio` and `kernel::hotmem`, and contains no
//! `unsafe` code. See `Documentation/admin-guide/mm/hotmem-virtio-mem.rst`.

#![forbid(unsafe_code)]

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::{
    c_str, fmt, hotmem,
    prelude::*,
    str::CString,
    sync::{Arc, Mutex},
    time::{self, Ktime},
    types::ARef,
    virtio,
    workqueue::{self, Work, WorkItem},
};

#[path = "logic/wire.rs"]
pub mod wire;

#[path = "logic/partition.rs"]
pub mod partition;

#[path = "logic/retry.rs"]
pub mod retry;

#[path = "logic/control.rs"]
pub mod control;

use control::{HoldBack, ProbeSync, Refusal};
use partition::{Device as Parts, Event, PartState, Step, UnplugError};
use retry::{next_action, Action, RetryPolicy};
use wire::{BlockState, Config, Geometry, Request, Response};

module! {
    type: HotMemVirtioMem,
    name: "hotmem_virtio_mem",
    author: "HotMem developers",
    description: "virtio-mem driver that plugs and unplugs whole HotMem partitions",
    license: "GPL",
}

struct HotMemVirtioMem {
    _reg: virtio::Registration<VmemDriver>,
}

impl kernel::Module for HotMemVirtioMem {
    fn init(module: &'static ThisModule) -> Result<Self> {
        if !hotmem::enabled() {
            pr_err!(
                "HotMem is off (boot with hotmem=on to use this driver); \
                 use the C driver virtio_mem for virtio-mem devices\n"
            );
            return Err(ENODEV);
        }
        let reg = virtio::Registration::new(module)?;
        pr_info!(
            "loaded: partitions of {} MiB\n",
            hotmem::partition_bytes() >> 20
        );
        Ok(Self { _reg: reg })
    }
}

impl Drop for HotMemVirtioMem {
    fn drop(&mut self) {
        pr_info!("unloading\n");
    }
}

/// The last operation, for sysfs.
#[derive(Clone, Copy)]
struct LastOp {
    op: &'static str,
    result: &'static str,
    partitions: usize,
    latency_us: i64,
}

/// What the driver knows about a device, under `VmemDev::inner`.
struct Inner {
    vq: virtio::Virtqueue,
    parts: KVec<PartState>,
    config: Config,
    /// After a guest-initiated (sysfs) unplug: do not plug back until the
    /// device's `requested_size` changes.
    hold: HoldBack,
    /// The device answered what it must not; stop serving it.
    broken: bool,
    last_op: LastOp,
}

/// One virtio-mem device.
#[pin_data]
struct VmemDev {
    dev: ARef<virtio::Device>,
    index: u32,
    geometry: Geometry,
    nid: i32,
    /// Resource name of the added memory; leaked, because memory of bound
    /// partitions may stay added after the driver is gone.
    resource: &'static CStr,
    dying: AtomicBool,
    #[pin]
    inner: Mutex<Inner>,
    #[pin]
    work: Work<VmemDev>,
}

kernel::impl_has_work! {
    impl HasWork<Self> for VmemDev { self.work }
}

impl WorkItem for VmemDev {
    type Pointer = Arc<VmemDev>;

    fn run(this: Arc<VmemDev>) {
        this.process();
    }
}

/// Queues the device's work (coalesced if already queued).
fn kick(vmem: &Arc<VmemDev>) {
    if vmem.dying.load(Ordering::Acquire) {
        return;
    }
    // An `Err` gives the reference back: the work is already queued.
    let _ = workqueue::system().enqueue(vmem.clone());
}

/// HotMem notifier handler: a partition lost its last user.
struct Kick(Arc<VmemDev>);

impl hotmem::ReleaseHandler for Kick {
    fn partitions_released(&self) {
        kick(&self.0);
    }
}

/// The per-device data the virtio abstraction keeps.
struct DevData {
    notifier: Option<Pin<KBox<hotmem::Notifier<Kick>>>>,
    vmem: Arc<VmemDev>,
}

/// How a step ended.
enum Outcome {
    /// Go on planning.
    Continue,
    /// Stop this round (a failure, already logged); the next trigger plans
    /// again.
    Stop,
}

const POLICY: RetryPolicy = RetryPolicy::DEFAULT;

fn micros_since(start: Ktime) -> i64 {
    (Ktime::ktime_get().to_ns() - start.to_ns()) / 1000
}

/// Sends `req` once and decodes the response.
fn send(index: u32, inner: &mut Inner, req: Request) -> Result<Response> {
    let mut resp = [0u8; wire::RESPONSE_SIZE];
    let len = inner.vq.request(&req.to_bytes(), &mut resp)?;
    let decoded = resp
        .get(..len)
        .ok_or(wire::DecodeError::TooShort {
            needed: wire::RESPONSE_HEADER_SIZE,
            got: len,
        })
        .and_then(|bytes| Response::decode(bytes, req.request_type()));
    decoded.map_err(|e| {
        // The device may or may not have acted on the request: the driver
        // can no longer tell what is plugged.
        pr_err!(
            "virtio{}: bad response to {:?}: {}; device marked broken\n",
            index,
            req.request_type(),
            e
        );
        inner.broken = true;
        EIO
    })
}

/// Sends `req`, retrying BUSY (and NACK to UNPLUG) with the bounded backoff
/// of the retry policy. Returns the last response and what to do about it.
fn send_retry(index: u32, inner: &mut Inner, req: Request) -> Result<(Response, Action)> {
    let mut attempt: u32 = 1;
    loop {
        let resp = send(index, inner, req)?;
        let action = next_action(&POLICY, req.request_type(), resp.response_type(), attempt);
        match action {
            Action::Retry { delay_ms } => {
                if attempt == 1 {
                    pr_info!(
                        "virtio{}: device answered {:?} to {:?}, retrying\n",
                        index,
                        resp,
                        req.request_type()
                    );
                }
                time::msleep(delay_ms);
                attempt = attempt.saturating_add(1);
            }
            _ => return Ok((resp, action)),
        }
    }
}

/// The partition table of `inner` as the logic's view. It was allocated
/// with `geometry.nr_partitions()` entries, so this does not fail.
fn parts_of<'a>(geometry: &Geometry, inner: &'a mut Inner) -> Result<Parts<'a>> {
    let usable = inner.config.usable_region_size;
    Parts::new(*geometry, usable, &mut inner.parts).map_err(|_| EINVAL)
}

impl VmemDev {
    fn parts<'a>(&self, inner: &'a mut Inner) -> Result<Parts<'a>> {
        parts_of(&self.geometry, inner)
    }

    fn part_addr(&self, index: usize) -> Result<u64> {
        self.geometry
            .partition_range(index)
            .map(|r| r.addr)
            .map_err(|_| EINVAL)
    }

    /// The physical partition id (as in /sys/kernel/mm/hotmem) of `index`.
    fn part_id(&self, index: usize) -> u64 {
        control::partition_id(
            self.part_addr(index).unwrap_or(0),
            self.geometry.partition_size(),
        )
    }

    /// Reads and checks the configuration space. The geometry depends only
    /// on fields that cannot change, so a different one means the device
    /// is broken.
    fn read_config(&self) -> Result<Config> {
        let mut buf = [0u8; wire::CONFIG_SIZE];
        self.dev.read_config(0, &mut buf)?;
        let config = Config::decode(&buf).map_err(|_| EIO)?;
        match config.validate(hotmem::memory_block_bytes(), self.geometry.partition_size()) {
            Ok(g) if g == self.geometry => Ok(config),
            Ok(_) => {
                pr_err!(
                    "virtio{}: device changed its fixed configuration\n",
                    self.index
                );
                Err(EIO)
            }
            Err(e) => {
                pr_err!("virtio{}: invalid configuration: {}\n", self.index, e);
                Err(EIO)
            }
        }
    }

    fn send_retry(&self, inner: &mut Inner, req: Request) -> Result<(Response, Action)> {
        send_retry(self.index, inner, req)
    }

    /// Asks the device about partition `index` (after an ERROR) and adopts
    /// its answer.
    fn query_state(&self, inner: &mut Inner, index: usize) {
        let Ok(req) = self.geometry.state_request(index) else {
            return;
        };
        match self.send_retry(inner, req) {
            Ok((Response::AckState(state), _)) => {
                let r = self.parts(inner).and_then(|mut p| {
                    p.apply(index, Event::StateQueried(state))
                        .map_err(|_| EINVAL)
                });
                pr_info!(
                    "virtio{}: partition {} is {:?} on the device ({:?})\n",
                    self.index,
                    self.part_id(index),
                    state,
                    r.map(|s| s.name())
                );
            }
            Ok((resp, _)) => {
                pr_err!(
                    "virtio{}: STATE of partition {} answered {:?}; device broken\n",
                    self.index,
                    self.part_id(index),
                    resp
                );
                inner.broken = true;
            }
            Err(e) => pr_err!("virtio{}: STATE request failed: {:?}\n", self.index, e),
        }
    }

    fn apply(&self, inner: &mut Inner, index: usize, event: Event) {
        match self.parts(inner) {
            Ok(mut p) => {
                if let Err(e) = p.apply(index, event) {
                    pr_err!(
                        "virtio{}: partition {}: {}\n",
                        self.index,
                        self.part_id(index),
                        e
                    );
                }
            }
            Err(e) => pr_err!("virtio{}: partition table: {:?}\n", self.index, e),
        }
    }

    /// Takes the kernel's word on which added partitions have users.
    fn refresh(&self, inner: &mut Inner) {
        for index in 0..inner.parts.len() {
            let state = inner.parts.get(index).copied();
            if !matches!(state, Some(PartState::Online | PartState::Bound)) {
                continue;
            }
            let Ok(addr) = self.part_addr(index) else {
                continue;
            };
            let Ok(info) = hotmem::partition_info(addr) else {
                continue;
            };
            let busy = matches!(info.state, hotmem::State::Bound | hotmem::State::Draining)
                || info.users > 0;
            match (state, busy) {
                (Some(PartState::Online), true) => self.apply(inner, index, Event::KernelBound),
                (Some(PartState::Bound), false) if info.state == hotmem::State::Free => {
                    self.apply(inner, index, Event::KernelReleased)
                }
                _ => {}
            }
        }
    }

    /// Sends UNPLUG for partition `index`, which is `Unplugging`.
    fn unplug_request(&self, inner: &mut Inner, index: usize) -> Result<Outcome> {
        let req = self.geometry.unplug_request(index).map_err(|_| EINVAL)?;
        let (resp, action) = match self.send_retry(inner, req) {
            Ok(r) => r,
            Err(e) => {
                // Nothing reached the device: still plugged.
                self.apply(inner, index, Event::UnplugBusy);
                return Err(e);
            }
        };
        self.apply(inner, index, Event::unplug_response(resp.response_type()));
        match action {
            Action::Done => Ok(Outcome::Continue),
            Action::QueryState => {
                pr_err!(
                    "virtio{}: device answered ERROR to UNPLUG of partition {}\n",
                    self.index,
                    self.part_id(index)
                );
                self.query_state(inner, index);
                Ok(Outcome::Stop)
            }
            _ => {
                pr_warn!(
                    "virtio{}: device did not unplug partition {} ({:?} after {} attempts); \
                     it stays plugged, retried on the next event\n",
                    self.index,
                    self.part_id(index),
                    resp,
                    POLICY.max_attempts
                );
                Ok(Outcome::Stop)
            }
        }
    }

    /// Offlines and removes partition `index` (`Offlining`), then unplugs it.
    fn offline_and_unplug(&self, inner: &mut Inner, index: usize) -> Result<Outcome> {
        let addr = self.part_addr(index)?;
        match hotmem::remove_partitions(addr, self.geometry.partition_size()) {
            Ok(()) => {
                self.apply(inner, index, Event::Offlined);
                self.unplug_request(inner, index)
            }
            Err(e) => {
                self.apply(inner, index, Event::OfflineBusy);
                if e == EBUSY {
                    // Bound or still draining: the next refresh says which.
                    self.refresh(inner);
                    Err(EBUSY)
                } else {
                    pr_err!(
                        "virtio{}: cannot offline partition {}: {:?}\n",
                        self.index,
                        self.part_id(index),
                        e
                    );
                    Err(e)
                }
            }
        }
    }

    /// Adds and onlines partition `index` (`Plugged`). On failure the
    /// partition is unplugged again, so the device keeps no memory that
    /// the kernel does not use.
    fn online(&self, inner: &mut Inner, index: usize) -> Result<Outcome> {
        let addr = self.part_addr(index)?;
        match hotmem::add_partitions(
            self.nid,
            addr,
            self.geometry.partition_size(),
            self.resource,
        ) {
            Ok(()) => {
                self.apply(inner, index, Event::Onlined);
                Ok(Outcome::Continue)
            }
            Err(e) => {
                self.apply(inner, index, Event::OnlineFailed);
                pr_err!(
                    "virtio{}: cannot add partition {}: {:?}; unplugging it\n",
                    self.index,
                    self.part_id(index),
                    e
                );
                self.apply(inner, index, Event::StartUnplug);
                let _ = self.unplug_request(inner, index);
                Ok(Outcome::Stop)
            }
        }
    }

    /// Plugs partition `index` (`Unplugged`) and onlines it.
    fn plug(&self, inner: &mut Inner, index: usize) -> Result<Outcome> {
        let req = self.geometry.plug_request(index).map_err(|_| EINVAL)?;
        self.apply(inner, index, Event::StartPlug);
        let (resp, action) = match self.send_retry(inner, req) {
            Ok(r) => r,
            Err(e) => {
                self.apply(inner, index, Event::PlugBusy);
                return Err(e);
            }
        };
        self.apply(inner, index, Event::plug_response(resp.response_type()));
        match action {
            Action::Done => self.online(inner, index),
            Action::Refused => {
                pr_info!(
                    "virtio{}: device refused to plug partition {} (NACK)\n",
                    self.index,
                    self.part_id(index)
                );
                Ok(Outcome::Stop)
            }
            Action::QueryState => {
                pr_err!(
                    "virtio{}: device answered ERROR to PLUG of partition {}\n",
                    self.index,
                    self.part_id(index)
                );
                self.query_state(inner, index);
                Ok(Outcome::Stop)
            }
            _ => {
                pr_warn!(
                    "virtio{}: device busy, partition {} not plugged after {} attempts\n",
                    self.index,
                    self.part_id(index),
                    POLICY.max_attempts
                );
                Ok(Outcome::Stop)
            }
        }
    }

    /// The target the planner works toward: the device's request, lowered
    /// by a guest-initiated unplug until the request changes.
    fn target_bytes(&self, inner: &mut Inner) -> u64 {
        let requested = inner.config.requested_size;
        inner
            .hold
            .target_bytes(requested, self.geometry.partition_size())
    }

    /// One round: move the plugged size toward the device's request.
    fn process(&self) {
        if self.dying.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.broken {
            return;
        }
        let start = Ktime::ktime_get();
        let (mut plugged, mut unplugged, mut failed) = (0usize, 0usize, false);
        let mut budget = inner.parts.len().saturating_mul(3).saturating_add(8);
        while budget > 0 && !inner.broken && !self.dying.load(Ordering::Acquire) {
            budget -= 1;
            match self.read_config() {
                Ok(c) => inner.config = c,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            self.refresh(inner);
            let target = self.target_bytes(inner);
            let Ok(parts) = self.parts(inner) else { break };
            let plan = parts.plan(target);
            let Some(step) = plan.next else {
                break;
            };
            let result = match step {
                Step::Plug(i) => {
                    let r = self.plug(inner, i);
                    if matches!(inner.parts.get(i), Some(PartState::Online)) {
                        plugged += 1;
                    }
                    r
                }
                Step::Online(i) => self.online(inner, i),
                Step::Offline(i) => {
                    self.apply(inner, i, Event::StartUnplug);
                    let r = self.offline_and_unplug(inner, i);
                    if matches!(inner.parts.get(i), Some(PartState::Unplugged)) {
                        unplugged += 1;
                    }
                    // EBUSY: the partition just got bound; plan again.
                    if matches!(r, Err(e) if e == EBUSY) {
                        Ok(Outcome::Continue)
                    } else {
                        r
                    }
                }
                Step::Unplug(i) => {
                    self.apply(inner, i, Event::StartUnplug);
                    let r = self.unplug_request(inner, i);
                    if matches!(inner.parts.get(i), Some(PartState::Unplugged)) {
                        unplugged += 1;
                    }
                    r
                }
            };
            match result {
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Stop) | Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if plugged > 0 || unplugged > 0 || failed {
            let latency_us = micros_since(start);
            let (op, n) = if unplugged > 0 {
                ("unplug", unplugged)
            } else {
                ("plug", plugged)
            };
            inner.last_op = LastOp {
                op,
                result: if failed { "partial" } else { "ok" },
                partitions: n,
                latency_us,
            };
            let Ok(parts) = self.parts(inner) else { return };
            let (census, plugged_bytes) = (parts.census(), parts.plugged_bytes());
            pr_info!(
                "virtio{}: {} {} partitions in {} us; plugged {} MiB, requested {} MiB, \
                 {} free, {} bound\n",
                self.index,
                if unplugged > 0 {
                    "unplugged"
                } else {
                    "plugged"
                },
                n,
                latency_us,
                plugged_bytes >> 20,
                inner.config.requested_size >> 20,
                census.online,
                census.bound
            );
        }
    }

    /// sysfs `unplug`: unplug partition `id` now.
    fn sysfs_unplug(&self, id: u64) -> Result {
        let addr = control::partition_addr(id, self.geometry.partition_size()).ok_or(EINVAL)?;
        let range = wire::BlockRange {
            addr,
            nb_blocks: self.geometry.blocks_per_partition(),
        };
        let index = self.geometry.partition_index(range).map_err(|_| EINVAL)?;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.broken {
            return Err(EIO);
        }
        self.refresh(inner);
        let start = Ktime::ktime_get();
        self.parts(inner)?
            .unplug_partition(index)
            .map_err(unplug_errno)?;
        let r = self.offline_and_unplug(inner, index);
        self.finish_sysfs(inner, start, usize::from(r.is_ok()), &r);
        r.map(|_| ())
    }

    /// sysfs `unplug_free`: unplug `n` free partitions now.
    fn sysfs_unplug_free(&self, n: usize) -> Result {
        if n == 0 {
            return Err(EINVAL);
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.broken {
            return Err(EIO);
        }
        self.refresh(inner);
        let start = Ktime::ktime_get();
        self.parts(inner)?
            .pick_for_unplug(n)
            .map_err(unplug_errno)?;
        let mut done = 0usize;
        let mut result = Ok(Outcome::Continue);
        for index in 0..inner.parts.len() {
            if inner.parts.get(index) != Some(&PartState::Offlining) {
                continue;
            }
            if result.is_ok() {
                result = self.offline_and_unplug(inner, index);
                if result.is_ok() {
                    done += 1;
                }
            } else {
                // An earlier one failed: give the rest back untouched.
                self.apply(inner, index, Event::OfflineBusy);
            }
        }
        self.finish_sysfs(inner, start, done, &result);
        result.map(|_| ())
    }

    fn finish_sysfs(&self, inner: &mut Inner, start: Ktime, done: usize, r: &Result<Outcome>) {
        let latency_us = micros_since(start);
        inner.last_op = LastOp {
            op: "sysfs_unplug",
            result: match r {
                Ok(Outcome::Continue) => "ok",
                Ok(Outcome::Stop) => "partial",
                Err(_) => "failed",
            },
            partitions: done,
            latency_us,
        };
        if done > 0 {
            // Do not plug back what the guest gave away until the device
            // asks for a different size.
            if let Ok(parts) = self.parts(inner) {
                let committed = parts.census().committed();
                inner.hold.set(committed, inner.config.requested_size);
            }
            pr_info!(
                "virtio{}: unplugged {} partitions on request in {} us\n",
                self.index,
                done,
                latency_us
            );
        }
    }

    fn show_state(&self, out: &mut virtio::SysfsBuf<'_>) -> core::fmt::Result {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        self.refresh(inner);
        let requested = inner.config.requested_size;
        let usable = inner.config.usable_region_size;
        let target = self.target_bytes(inner);
        let parts = self.parts(inner).map_err(|_| core::fmt::Error)?;
        let c = parts.census();
        writeln!(out, "plugged_bytes {}", parts.plugged_bytes())?;
        writeln!(out, "requested_bytes {}", requested)?;
        writeln!(out, "target_bytes {}", target)?;
        writeln!(out, "usable_region_bytes {}", usable)?;
        writeln!(out, "partition_bytes {}", self.geometry.partition_size())?;
        writeln!(out, "partitions {}", parts.nr_partitions())?;
        for state in PartState::ALL {
            writeln!(out, "{} {}", state.name(), c.count(state))?;
        }
        writeln!(out, "broken {}", u8::from(inner.broken))
    }

    fn show_partitions(&self, out: &mut virtio::SysfsBuf<'_>) -> core::fmt::Result {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner);
        for (index, state) in inner.parts.iter().enumerate() {
            if *state != PartState::Unplugged {
                writeln!(out, "{} {}", self.part_id(index), state.name())?;
            }
        }
        Ok(())
    }

    fn show_last_op(&self, out: &mut virtio::SysfsBuf<'_>) -> core::fmt::Result {
        let op = self.inner.lock().last_op;
        writeln!(
            out,
            "{} {} {} {}",
            op.op, op.result, op.partitions, op.latency_us
        )
    }

    /// Unplugs everything that has no users, at remove.
    fn teardown(&self) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.broken {
            return;
        }
        self.refresh(inner);
        for index in (0..inner.parts.len()).rev() {
            match inner.parts.get(index).copied() {
                Some(PartState::Online) => {
                    self.apply(inner, index, Event::StartUnplug);
                    let _ = self.offline_and_unplug(inner, index);
                }
                Some(PartState::Plugged) => {
                    self.apply(inner, index, Event::StartUnplug);
                    let _ = self.unplug_request(inner, index);
                }
                _ => {}
            }
        }
        let Ok(parts) = self.parts(inner) else { return };
        let c = parts.census();
        if c.bound > 0 || c.online > 0 || c.plugged > 0 || c.failed > 0 {
            pr_warn!(
                "virtio{}: removed with {} bound, {} free, {} plugged-not-added and {} unknown \
                 partitions left plugged; added memory stays online and in use\n",
                self.index,
                c.bound,
                c.online,
                c.plugged,
                c.failed
            );
        } else {
            pr_info!("virtio{}: all partitions unplugged\n", self.index);
        }
    }
}

fn unplug_errno(e: UnplugError) -> Error {
    match Refusal::of(&e) {
        Refusal::Invalid => EINVAL,
        Refusal::Busy => EBUSY,
        Refusal::NotEnough => ENOSPC,
    }
}

/// Whether the kernel has memory of the partition at `addr` online (a
/// partition the kernel knows of may have no block left).
fn is_added(addr: u64) -> bool {
    matches!(hotmem::partition_info(addr), Ok(i) if i.state != hotmem::State::Absent && i.online_blocks > 0)
}

/// Brings the driver's view in line with the device at probe: UNPLUG_ALL
/// if the device has memory plugged and the kernel has none of it added;
/// otherwise (a previous instance of the driver left bound partitions
/// online) adopt what is added and ask the device about the rest.
fn initial_sync(index: u32, geometry: &Geometry, inner: &mut Inner) -> Result {
    let plugged = inner.config.plugged_size;
    parts_of(geometry, inner)?
        .reset(plugged)
        .map_err(|_| EINVAL)?;
    let mut added = 0usize;
    for i in 0..geometry.nr_partitions() {
        let addr = geometry.partition_range(i).map_err(|_| EINVAL)?.addr;
        if is_added(addr) {
            added += 1;
        }
    }
    let sync = control::probe_sync(plugged, added);
    if sync == ProbeSync::Nothing {
        return Ok(());
    }
    if sync == ProbeSync::UnplugAll {
        pr_info!(
            "virtio{}: device has {} MiB plugged; UNPLUG_ALL\n",
            index,
            plugged >> 20
        );
        let (resp, action) = send_retry(index, inner, Request::UnplugAll)?;
        if action != Action::Done {
            pr_err!(
                "virtio{}: UNPLUG_ALL answered {:?}; not binding\n",
                index,
                resp
            );
            return Err(EIO);
        }
        parts_of(geometry, inner)?
            .unplug_all_acked()
            .map_err(|_| EINVAL)?;
        return Ok(());
    }
    let usable = geometry.usable_partitions(inner.config.usable_region_size);
    for i in 0..geometry.nr_partitions() {
        let range = geometry.partition_range(i).map_err(|_| EINVAL)?;
        if i >= usable {
            // Nothing is plugged outside the usable region (and the device
            // answers ERROR to requests about it).
            let _ = parts_of(geometry, inner)?.apply(i, Event::StateQueried(BlockState::Unplugged));
            continue;
        }
        let (resp, _) = send_retry(index, inner, Request::State(range))?;
        let Response::AckState(state) = resp else {
            pr_err!("virtio{}: STATE answered {:?}; not binding\n", index, resp);
            return Err(EIO);
        };
        let added = is_added(range.addr);
        let mut parts = parts_of(geometry, inner)?;
        let _ = parts.apply(i, Event::StateQueried(state));
        if added {
            if state != BlockState::Plugged || parts.apply(i, Event::Onlined).is_err() {
                pr_err!(
                    "virtio{}: partition at {:#x} is added but {:?} on the device; not binding\n",
                    index,
                    range.addr,
                    state
                );
                return Err(EIO);
            }
            pr_info!(
                "virtio{}: adopted added partition at {:#x}\n",
                index,
                range.addr
            );
        }
    }
    Ok(())
}

struct VmemDriver;

const ATTR_STATE: usize = 0;
const ATTR_PARTITIONS: usize = 1;
const ATTR_LAST_OP: usize = 2;
const ATTR_UNPLUG: usize = 3;
const ATTR_UNPLUG_FREE: usize = 4;

impl virtio::Driver for VmemDriver {
    type Data = KBox<DevData>;

    const NAME: &'static CStr = c_str!("hotmem_virtio_mem");
    const ID_TABLE: &'static [virtio::DeviceId] = &[virtio::DeviceId {
        device: virtio::ids::MEM,
        vendor: virtio::ANY_VENDOR,
    }];
    const FEATURES: &'static [u32] = &[
        wire::VIRTIO_MEM_F_ACPI_PXM,
        wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    ];
    const ATTRIBUTE_GROUP: &'static CStr = c_str!("hotmem");
    const ATTRIBUTES: &'static [virtio::Attribute] = &[
        virtio::Attribute {
            name: c_str!("state"),
            show: true,
            store: false,
        },
        virtio::Attribute {
            name: c_str!("partitions"),
            show: true,
            store: false,
        },
        virtio::Attribute {
            name: c_str!("last_op"),
            show: true,
            store: false,
        },
        virtio::Attribute {
            name: c_str!("unplug"),
            show: false,
            store: true,
        },
        virtio::Attribute {
            name: c_str!("unplug_free"),
            show: false,
            store: true,
        },
    ];

    fn probe(dev: &virtio::Device) -> Result<KBox<DevData>> {
        let index = dev.index();
        let start = Ktime::ktime_get();
        let mut buf = [0u8; wire::CONFIG_SIZE];
        dev.read_config(0, &mut buf)?;
        let config = Config::decode(&buf).map_err(|_| EIO)?;
        let partition_size = hotmem::partition_bytes();
        let geometry = config
            .validate(hotmem::memory_block_bytes(), partition_size)
            .map_err(|e| {
                pr_err!(
                    "virtio{}: cannot serve this device in partitions of {} MiB: {}\n",
                    index,
                    partition_size >> 20,
                    e
                );
                EINVAL
            })?;
        let acpi_pxm = dev.has_feature(wire::VIRTIO_MEM_F_ACPI_PXM);
        let nid = hotmem::node_for(
            acpi_pxm.then_some(config.node_id),
            geometry.first_partition_addr(),
        );
        let name = CString::try_from_fmt(fmt!("System RAM (hotmem_virtio_mem)"))?;
        let resource: &'static CString = KBox::leak(KBox::new(name, GFP_KERNEL)?);

        let mut parts = KVec::with_capacity(geometry.nr_partitions(), GFP_KERNEL)?;
        for _ in 0..geometry.nr_partitions() {
            parts.push(PartState::Unplugged, GFP_KERNEL)?;
        }
        let vq = dev.find_single_vq(c_str!("hotmem-vmem"))?;
        dev.ready();
        let mut inner = Inner {
            vq,
            parts,
            config,
            hold: HoldBack::default(),
            broken: false,
            last_op: LastOp {
                op: "probe",
                result: "ok",
                partitions: 0,
                latency_us: 0,
            },
        };
        initial_sync(index, &geometry, &mut inner)?;
        // UNPLUG_ALL may have shrunk the usable region.
        let mut buf = [0u8; wire::CONFIG_SIZE];
        dev.read_config(0, &mut buf)?;
        inner.config = Config::decode(&buf).map_err(|_| EIO)?;
        inner.last_op.latency_us = micros_since(start);

        pr_info!(
            "virtio{}: region {:#x}+{:#x}, {} partitions of {} MiB ({} blocks of {} KiB), node {}, \
             requested {} MiB{}{}\n",
            index,
            config.addr,
            config.region_size,
            geometry.nr_partitions(),
            partition_size >> 20,
            geometry.blocks_per_partition(),
            geometry.block_size() >> 10,
            nid,
            inner.config.requested_size >> 20,
            if acpi_pxm { ", ACPI PXM" } else { "" },
            if dev.has_feature(wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) {
                ", unplugged inaccessible"
            } else {
                ""
            }
        );

        let vmem = Arc::pin_init(
            pin_init!(VmemDev {
                dev: dev.into(),
                index,
                geometry,
                nid,
                resource,
                dying: AtomicBool::new(false),
                inner <- kernel::new_mutex!(inner, "VmemDev::inner"),
                work <- kernel::new_work!("VmemDev::work"),
            }),
            GFP_KERNEL,
        )?;
        let notifier = hotmem::Notifier::register(Kick(vmem.clone()))?;
        kick(&vmem);
        Ok(KBox::new(
            DevData {
                notifier: Some(notifier),
                vmem,
            },
            GFP_KERNEL,
        )?)
    }

    fn remove(_dev: &virtio::Device, mut data: KBox<DevData>) {
        let vmem = data.vmem.clone();
        vmem.dying.store(true, Ordering::Release);
        // No more kicks from the notifier, then wait for the work.
        data.notifier = None;
        vmem.work.flush();
        vmem.teardown();
        drop(data);
        // Dropping the last reference resets the device and deletes its
        // virtqueue.
        drop(vmem);
    }

    fn config_changed(_dev: &virtio::Device, data: &DevData) {
        kick(&data.vmem);
    }

    fn show(data: &DevData, index: usize, buf: &mut virtio::SysfsBuf<'_>) -> Result {
        let r = match index {
            ATTR_STATE => data.vmem.show_state(buf),
            ATTR_PARTITIONS => data.vmem.show_partitions(buf),
            ATTR_LAST_OP => data.vmem.show_last_op(buf),
            _ => return Err(EINVAL),
        };
        r.map_err(|_| E2BIG)
    }

    fn store(data: &DevData, index: usize, input: &[u8]) -> Result {
        let n = control::parse_decimal(input).map_err(|_| EINVAL)?;
        match index {
            ATTR_UNPLUG => data.vmem.sysfs_unplug(n),
            ATTR_UNPLUG_FREE => data
                .vmem
                .sysfs_unplug_free(usize::try_from(n).map_err(|_| EINVAL)?),
            _ => Err(EINVAL),
        }
    }
}
