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
//! Everything that does not need the kernel lives in `rust/logic/` and is
//! tested on the host against a simulated device with injected faults: the
//! wire format and configuration checks, the per-partition state machine
//! and planner, the retry policy, sysfs parsing and errnos, the
//! request/response helper over the virtqueue's bus operations
//! (`exchange`), and the driver's work itself (`driver::Vmem`, over the
//! `driver::Env` trait).
//! This file implements `Env` with `kernel::virtio` and `kernel::hotmem`,
//! and holds the device, its work item and its sysfs files: the values and
//! triggers of the group, and one directory per partition
//! (`partitions/part<id>/state`).
//!
//! Two locks: `ops` serializes whoever works on the device (the work item,
//! an explicit unplug, the teardown) and is held while it waits for the
//! device; `view` holds the state sysfs reads, which the holder of `ops`
//! publishes before each wait (with the partition concerned in its
//! transitional state) and after each operation, and is never held across
//! a wait. Its one
//! `unsafe` block is the call that hands plugged memory to the kernel
//! (`hotmem::add_partitions()`). See
//! `Documentation/admin-guide/mm/hotmem-virtio-mem.rst`.

#![deny(unsafe_code)]

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::{
    c_str, hotmem,
    prelude::*,
    sync::{Arc, CondVar, Mutex},
    time::{self, Ktime},
    types::ARef,
    virtio,
    workqueue::{self, Work, WorkItem},
};

#[path = "logic/mod.rs"]
pub mod logic;

use logic::{control, driver, exchange, partition, wire};

use control::Refusal;
use driver::{
    Env, Kernel, KernelState, Level, ProbeError, RemoveError, RequestError, UnplugFailure, Value,
    Vmem,
};
use partition::PartState;
use wire::{Config, ConfigField, Geometry, Request, Response};

module! {
    type: HotMemVirtioMem,
    name: "hotmem_virtio_mem",
    author: "HotMem developers",
    description: "virtio-mem driver that plugs and unplugs whole HotMem partitions",
    license: "GPL",
}

kernel::virtio_device_table!(
    VMEM_IDS,
    hotmem_virtio_mem,
    [virtio::DeviceId::new(virtio::ids::MEM, virtio::ANY_VENDOR),]
);

/// The module: its own `init` (not `module_virtio_driver!`), which refuses
/// to load when HotMem is off so that udev, which loads every module with a
/// `virtio:d00000018v*` alias, leaves the device to the C driver.
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

/// The device and the kernel for `driver::Vmem`.
struct KernelEnv<'a> {
    transport: &'a virtio::Transport,
    /// The configuration as read at probe: its fixed fields are not read
    /// again.
    fixed: Config,
    vq: &'a mut virtio::Virtqueue,
    /// Where the state is published for sysfs (none during probe, when
    /// nobody can read it).
    view: Option<&'a Mutex<View>>,
    kernel: ReadEnv,
    nid: i32,
}

/// The kernel for `driver::Vmem` when it only reads (sysfs): no device.
#[derive(Clone, Copy)]
struct ReadEnv {
    index: u32,
    partition_size: u64,
}

/// The resource name of the memory the driver adds (the kernel copies it).
const RESOURCE_NAME: &CStr = c_str!("System RAM (hotmem_virtio_mem)");

/// How long a request may wait for the device's answer. QEMU answers at
/// once (BUSY during a migration); a device that does not answer in time
/// leaves the partition unknown until a STATE query answers.
const REQUEST_TIMEOUT_MS: u32 = 10_000;

/// Reads the whole configuration space, each field with its own width, in
/// one consistent snapshot (retried while the device's configuration
/// generation changes): 7 field reads and 2 generation reads.
fn read_full_config(transport: &virtio::Transport) -> Result<Config> {
    transport.read_config(|r| {
        Ok(Config {
            block_size: r.read(ConfigField::BlockSize.offset())?,
            node_id: r.read(ConfigField::NodeId.offset())?,
            addr: r.read(ConfigField::Addr.offset())?,
            region_size: r.read(ConfigField::RegionSize.offset())?,
            usable_region_size: r.read(ConfigField::UsableRegionSize.offset())?,
            plugged_size: r.read(ConfigField::PluggedSize.offset())?,
            requested_size: r.read(ConfigField::RequestedSize.offset())?,
        })
    })
}

/// Reads the fields that change (`usable_region_size`, `plugged_size`,
/// `requested_size`) consistently, as virtio_mem's C driver does: 3 field
/// reads and 2 generation reads; the others are those of `fixed`.
fn read_dynamic_config(transport: &virtio::Transport, fixed: Config) -> Result<Config> {
    transport.read_config(|r| {
        Ok(Config {
            usable_region_size: r.read(ConfigField::UsableRegionSize.offset())?,
            plugged_size: r.read(ConfigField::PluggedSize.offset())?,
            requested_size: r.read(ConfigField::RequestedSize.offset())?,
            ..fixed
        })
    })
}

/// The device's virtqueue for `exchange::exchange()`, the driver's
/// request/response helper (callers hold `ops`: one request at a time).
struct VqExchange<'a>(&'a mut virtio::Virtqueue);

impl exchange::Queue for VqExchange<'_> {
    type Token = virtio::Token;
    type Used = virtio::Used;
    type Error = Error;

    fn add(&mut self, request: &[u8], response: &[u8]) -> Result<virtio::Token> {
        let copy = |bytes: &[u8]| -> Result<KVec<u8>> {
            let mut v = KVec::with_capacity(bytes.len(), GFP_KERNEL)?;
            v.extend_from_slice(bytes, GFP_KERNEL)?;
            Ok(v)
        };
        self.0.add_buf(copy(request)?, copy(response)?)
    }

    fn kick(&mut self) -> Result {
        self.0.kick()
    }

    fn get(&mut self) -> Result<Option<virtio::Used>> {
        self.0.get_buf()
    }

    fn wait(&mut self, timeout_ms: u32) -> Result<virtio::Used> {
        self.0.wait_used(timeout_ms)
    }

    fn token(used: &virtio::Used) -> virtio::Token {
        used.token()
    }

    fn now_ms(&mut self) -> u64 {
        u64::try_from(Ktime::ktime_get().to_ms()).unwrap_or(0)
    }
}

impl ReadEnv {
    fn not_added_or_in_use(&mut self, addr: u64) -> KernelState {
        if hotmem::memory_added(addr, self.partition_size) {
            KernelState::InUse
        } else {
            KernelState::NotAdded
        }
    }
}

impl Kernel for ReadEnv {
    type Error = Error;

    fn kernel_state(&mut self, addr: u64) -> KernelState {
        match hotmem::partition_info(addr) {
            // Not a HotMem partition, or no block of it online: not added
            // only if no memory at all (offline blocks, another driver's
            // memory in another zone) is added there.
            Err(e) if e == ENOENT => self.not_added_or_in_use(addr),
            Ok(i) if i.state == hotmem::State::Absent && i.online_blocks == 0 => {
                self.not_added_or_in_use(addr)
            }
            Ok(i) if i.state == hotmem::State::Free && i.users == 0 => KernelState::Free,
            // Bound, draining, in the middle of a transition, a state this
            // driver does not know, or no answer: in use.
            _ => KernelState::InUse,
        }
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        match level {
            Level::Info => pr_info!("virtio{}: {}\n", self.index, args),
            Level::Warn => pr_warn!("virtio{}: {}\n", self.index, args),
            Level::Err => pr_err!("virtio{}: {}\n", self.index, args),
        }
    }
}

impl Kernel for KernelEnv<'_> {
    type Error = Error;

    fn kernel_state(&mut self, addr: u64) -> KernelState {
        self.kernel.kernel_state(addr)
    }

    fn log(&mut self, level: Level, args: core::fmt::Arguments<'_>) {
        self.kernel.log(level, args)
    }
}

impl Env for KernelEnv<'_> {
    fn read_config(&mut self) -> Result<Config> {
        read_dynamic_config(self.transport, self.fixed)
    }

    fn request(&mut self, request: Request) -> Result<Response, RequestError<Error>> {
        let answer = exchange::exchange(
            &mut VqExchange(self.vq),
            &request.to_bytes(),
            &Response::UNWRITTEN,
            REQUEST_TIMEOUT_MS,
        )?;
        // The whole buffer is decoded, whatever length the device says it
        // wrote (see `Response::UNWRITTEN`).
        Response::decode(answer.written(), request.request_type())
            .map_err(RequestError::BadResponse)
    }

    fn now_us(&mut self) -> u64 {
        u64::try_from(Ktime::ktime_get().to_ns() / 1000).unwrap_or(0)
    }

    fn add(&mut self, addr: u64, size: u64) -> Result {
        // SAFETY: `driver::Vmem` adds only partitions of this device's
        // region, which the driver reserved exclusively (`hotmem::Region`),
        // after the device ACKed their PLUG; they stay plugged until the
        // driver has removed them again (`Env::remove`) before it sends
        // their UNPLUG, and nothing else adds memory there.
        #[allow(unsafe_code)]
        unsafe {
            hotmem::add_partitions(self.nid, addr, size, RESOURCE_NAME)
        }
    }

    fn remove(&mut self, addr: u64, size: u64) -> Result<(), RemoveError<Error>> {
        hotmem::remove_partitions(addr, size).map_err(|e| {
            if e == EBUSY {
                RemoveError::Busy
            } else {
                RemoveError::Failed(e)
            }
        })
    }

    fn publish(&mut self, parts: &[PartState], st: &driver::State) {
        if let Some(view) = self.view {
            view.lock().set(parts, st);
        }
    }

    fn memory_added(&mut self, addr: u64, size: u64) -> bool {
        hotmem::memory_added(addr, size)
    }
}

/// What the driver knows about a device, under `VmemDev::ops`: held by
/// whoever works on the device (the work item, an explicit unplug, the
/// teardown), also while it waits for the device.
struct Inner {
    vq: virtio::Virtqueue,
    parts: KVec<PartState>,
    st: driver::State,
    /// The device region, reserved while the driver is bound (and after, if
    /// memory is left added in it, for the next instance to take over:
    /// see `hotmem::Region`).
    region: Option<hotmem::Region>,
}

/// What sysfs reads, under `VmemDev::view`: the state as the holder of
/// `ops` last published it (`Env::publish`), before every wait for the
/// device or the kernel and after every operation. Never held across a
/// wait, so reads return at once while a request is outstanding; they see
/// the partitions concerned in their transitional states.
struct View {
    parts: KVec<PartState>,
    st: driver::State,
}

impl View {
    fn set(&mut self, parts: &[PartState], st: &driver::State) {
        if self.parts.len() == parts.len() {
            self.parts.copy_from_slice(parts);
        }
        self.st = *st;
    }
}

/// One virtio-mem device.
#[pin_data]
struct VmemDev {
    dev: ARef<virtio::Device>,
    transport: virtio::Transport,
    /// The configuration read at probe, for its fixed fields.
    fixed: Config,
    geometry: Geometry,
    nid: i32,
    dying: AtomicBool,
    /// Orders the kicks of process context (notifier, sysfs) with removal:
    /// none queues the work once removal has set `dying`.
    #[pin]
    kick_lock: Mutex<()>,
    /// Set by every kick; a work step that must wait (BUSY) does not wait
    /// if it is set.
    kicked: AtomicBool,
    #[pin]
    ops: Mutex<Inner>,
    #[pin]
    view: Mutex<View>,
    /// Wakes a work step that waits to retry (BUSY), without the lock.
    #[pin]
    wake: CondVar,
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

/// Queues the device's work (coalesced if already queued) and wakes a work
/// step waiting to retry. May be called in interrupt context (configuration
/// changes).
fn kick(vmem: &Arc<VmemDev>) {
    if vmem.dying.load(Ordering::Acquire) {
        return;
    }
    vmem.kicked.store(true, Ordering::Release);
    vmem.wake.notify_all();
    // An `Err` gives the reference back: the work is already queued. Long
    // queue: a work step may wait minutes for a busy device.
    let _ = workqueue::system_long().enqueue(vmem.clone());
}

/// [`kick`] from process context.
fn kick_process(vmem: &Arc<VmemDev>) {
    let _guard = vmem.kick_lock.lock();
    kick(vmem);
}

/// HotMem notifier handler: a partition lost its last user.
struct Kick(Arc<VmemDev>);

impl hotmem::ReleaseHandler for Kick {
    fn partitions_released(&self) {
        kick_process(&self.0);
    }
}

/// Where a device's state lives while the driver is bound.
struct Site<'a> {
    dev: &'a virtio::Device,
    transport: &'a virtio::Transport,
    fixed: Config,
    geometry: Geometry,
    nid: i32,
}

/// Runs `f` on the driver's view of the device and its environment, and
/// publishes the state for sysfs afterwards (into `view`, if any).
fn with_vmem<R>(
    site: &Site<'_>,
    inner: &mut Inner,
    view: Option<&Mutex<View>>,
    f: impl FnOnce(&mut Vmem<'_>, &mut KernelEnv<'_>) -> R,
) -> Result<R> {
    let Inner { vq, parts, st, .. } = inner;
    let geometry = site.geometry;
    let mut env = KernelEnv {
        transport: site.transport,
        fixed: site.fixed,
        vq,
        view,
        kernel: ReadEnv {
            index: site.dev.index(),
            partition_size: geometry.partition_size(),
        },
        nid: site.nid,
    };
    // `parts` has `geometry.nr_partitions()` entries (see probe).
    let mut vmem = Vmem::new(geometry, parts, st).map_err(|_| EINVAL)?;
    let r = f(&mut vmem, &mut env);
    env.publish(vmem.states(), vmem.state());
    Ok(r)
}

impl VmemDev {
    fn site(&self) -> Site<'_> {
        Site {
            dev: &self.dev,
            transport: &self.transport,
            fixed: self.fixed,
            geometry: self.geometry,
            nid: self.nid,
        }
    }

    /// Works on the device: `f` runs under `ops`.
    fn with<R>(&self, f: impl FnOnce(&mut Vmem<'_>, &mut KernelEnv<'_>) -> R) -> Result<R> {
        let mut inner = self.ops.lock();
        with_vmem(&self.site(), &mut inner, Some(&self.view), f)
    }

    /// Reads the published state: `f` runs under `view` only, with the
    /// kernel but not the device.
    fn read<R>(&self, f: impl FnOnce(&mut Vmem<'_>, &mut ReadEnv) -> R) -> Result<R> {
        let mut view = self.view.lock();
        let View { parts, st } = &mut *view;
        let mut env = ReadEnv {
            index: self.dev.index(),
            partition_size: self.geometry.partition_size(),
        };
        let mut vmem = Vmem::new(self.geometry, parts, st).map_err(|_| EINVAL)?;
        Ok(f(&mut vmem, &mut env))
    }

    /// Moves the plugged size toward the device's request. When the device
    /// answers BUSY (e.g. the host is migrating), waits with backoff and
    /// tries again, without the device lock meanwhile (sysfs reads and
    /// explicit unplugs go on); a kick (configuration change, partitions
    /// released) ends the wait at once, removal ends it and the work.
    fn process(&self) {
        let memory_block = hotmem::memory_block_bytes();
        let mut inner = self.ops.lock();
        loop {
            if self.dying.load(Ordering::Acquire) {
                return;
            }
            self.kicked.store(false, Ordering::Release);
            let retry = with_vmem(&self.site(), &mut inner, Some(&self.view), |v, env| {
                let r = v.round(env, memory_block);
                Self::log_round(v, env, &r);
                r.retry_ms
            });
            let Ok(Some(ms)) = retry else {
                return;
            };
            if self.kicked.load(Ordering::Acquire) {
                continue;
            }
            // A kick between the check and the wait is seen when the wait
            // ends (at most the backoff's cap); removal notifies under the
            // lock and is never missed.
            let _ = self
                .wake
                .wait_interruptible_timeout(&mut inner, time::msecs_to_jiffies(ms));
        }
    }

    fn log_round(v: &mut Vmem<'_>, env: &mut KernelEnv<'_>, r: &driver::RoundReport) {
        if r.plugged > 0 || r.unplugged > 0 || r.failed {
            let c = v.census();
            let requested = v.state().config.requested_size;
            env.log(
                Level::Info,
                format_args!(
                    "plugged {} and unplugged {} partitions in {} us{}; plugged {} MiB, \
                     requested {} MiB, {} free, {} bound{}",
                    r.plugged,
                    r.unplugged,
                    v.state().last_op.latency_us,
                    if r.failed { " (stopped early)" } else { "" },
                    v.plugged_bytes() >> 20,
                    requested >> 20,
                    c.online,
                    c.bound,
                    if r.retry_ms.is_some() {
                        "; device busy, retrying"
                    } else {
                        ""
                    }
                ),
            );
        }
    }

    /// Reads one value of the published state (not waiting for the work
    /// on the device); values about the partitions first take the kernel's
    /// word on which are in use.
    fn show_value(
        &self,
        value: Value,
        out: &mut virtio::SysfsBuf<'_>,
    ) -> Result<core::fmt::Result> {
        self.read(|v, env| {
            if value.refreshes() {
                v.refresh(env);
            }
            v.show_value(value, out)
        })
    }

    /// The published state of partition `index`, after taking the kernel's
    /// word on whether it is in use.
    fn show_partition(
        &self,
        index: usize,
        out: &mut virtio::SysfsBuf<'_>,
    ) -> Result<core::fmt::Result> {
        let state = self.read(|v, env| v.partition_state(env, index))?;
        Ok(writeln!(out, "{}", state.ok_or(EINVAL)?.name()))
    }

    /// Unplugs everything that has no users, at remove; releases the device
    /// region unless memory is left added in it.
    fn teardown(&self) {
        let mut inner = self.ops.lock();
        let _ = with_vmem(&self.site(), &mut inner, Some(&self.view), |v, env| {
            let c = v.teardown(env);
            if c.bound > 0 || c.online > 0 || c.plugged > 0 || c.failed > 0 {
                env.log(
                    Level::Warn,
                    format_args!(
                        "removed with {} bound, {} free, {} plugged-not-added and {} unknown \
                         partitions left plugged; added memory stays online and in use",
                        c.bound, c.online, c.plugged, c.failed
                    ),
                );
            } else {
                env.log(Level::Info, format_args!("all partitions unplugged"));
            }
        });
        let config = inner.st.config;
        if hotmem::memory_added(config.addr, config.region_size) {
            pr_info!(
                "virtio{}: device region stays reserved for the next load of the driver\n",
                self.dev.index()
            );
        }
        // Dropping the reservation keeps it if memory is left added.
        drop(inner.region.take());
    }
}

fn unplug_errno(e: UnplugFailure<Error>) -> Error {
    match e {
        UnplugFailure::Refused(Refusal::Invalid) => EINVAL,
        UnplugFailure::Refused(Refusal::Busy) | UnplugFailure::Busy => EBUSY,
        UnplugFailure::Refused(Refusal::NotEnough) => ENOSPC,
        UnplugFailure::Broken | UnplugFailure::Device => EIO,
        UnplugFailure::Env(e) => e,
    }
}

/// The driver's data of one bound device.
#[pin_data]
struct VmemDriver {
    /// First: unregistered (waiting for a running handler) before the
    /// device goes.
    #[pin]
    notifier: hotmem::Notifier<Kick>,
    vmem: Arc<VmemDev>,
}

/// Attributes `0..NR_VALUES` are the single-value files `Value::ALL`, in
/// that order (checked at build time below); the others follow.
const NR_VALUES: usize = Value::ALL.len();
const ATTR_UNPLUG: usize = NR_VALUES;
const ATTR_UNPLUG_FREE: usize = NR_VALUES + 1;

/// The one file of each partition's directory, `partitions/part<id>/`.
const ITEM_STATE: usize = 0;

/// A read-only attribute.
const fn ro(name: &'static CStr) -> virtio::Attribute {
    virtio::Attribute {
        name,
        show: true,
        store: false,
    }
}

/// A write-only (root) attribute.
const fn wo(name: &'static CStr) -> virtio::Attribute {
    virtio::Attribute {
        name,
        show: false,
        store: true,
    }
}

/// Whether the C string `c` is `s`.
const fn same_name(c: &CStr, s: &str) -> bool {
    let c = c.as_bytes_with_nul();
    let s = s.as_bytes();
    if c.len() != s.len() + 1 {
        return false;
    }
    let mut i = 0;
    while i < s.len() {
        if c[i] != s[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Fails the build unless the value attributes are named and ordered as
/// `Value::ALL`.
const fn check_attributes() {
    let attrs = <VmemDriver as virtio::Driver>::ATTRIBUTES;
    assert!(attrs.len() == NR_VALUES + 2);
    let mut i = 0;
    while i < NR_VALUES {
        assert!(same_name(attrs[i].name, Value::ALL[i].name()));
        i += 1;
    }
    assert!(same_name(attrs[ATTR_UNPLUG].name, "unplug"));
    assert!(same_name(attrs[ATTR_UNPLUG_FREE].name, "unplug_free"));
}

/// Evaluated at build time where `show` uses it: a `const` item rather than
/// an inline `const {}` block, which needs rustc 1.79 (Linux 6.12 supports
/// 1.78).
const ATTRIBUTES_CHECKED: () = check_attributes();

impl VmemDev {
    /// Reads the device, reserves its region, syncs with the device (probe
    /// half of `driver::Vmem`) and creates the device's state; no work is
    /// queued yet.
    fn new(dev: &virtio::Device, transport: &virtio::Transport) -> Result<Arc<Self>> {
        let index = dev.index();
        if hotmem::is_kdump_kernel() {
            pr_info!(
                "virtio{}: kdump kernel: not plugging or unplugging memory\n",
                index
            );
            return Err(ENODEV);
        }
        let start = Ktime::ktime_get();
        let config = read_full_config(transport)?;
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
        let acpi_pxm = transport.has_feature(wire::VIRTIO_MEM_F_ACPI_PXM)?;
        let unplugged_inaccessible =
            transport.has_feature(wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)?;
        let nid = hotmem::node_for(
            acpi_pxm.then_some(config.node_id),
            geometry.first_partition_addr(),
        );
        // Nothing but this driver's memory may be in the region: another
        // driver's (virtio_mem's, left added when it was unloaded) must
        // never be unplugged. Its reservation, or its memory, is in the way.
        let region = hotmem::Region::reserve(config.addr, config.region_size, RESOURCE_NAME)
            .map_err(|e| {
                pr_err!(
                    "virtio{}: cannot reserve the device region {:#x}+{:#x} ({:?}): memory of \
                     another driver (virtio_mem?) is there; not binding. Reboot, or unload \
                     that driver while it has no memory added\n",
                    index,
                    config.addr,
                    config.region_size,
                    e
                );
                e
            })?;

        let parts = KVec::from_elem(PartState::Unplugged, geometry.nr_partitions(), GFP_KERNEL)?;
        let vq = transport.find_single_vq(c_str!("hotmem-vmem"))?;
        transport.ready()?;
        let mut inner = Inner {
            vq,
            parts,
            st: driver::State::new(config),
            region: Some(region),
        };
        let site = Site {
            dev,
            transport,
            fixed: config,
            geometry,
            nid,
        };
        with_vmem(&site, &mut inner, None, |v, env| v.probe_sync(env))?.map_err(|e| {
            pr_err!("virtio{}: not binding: {:?}\n", index, e);
            match e {
                ProbeError::Env(e) => e,
                ProbeError::Device | ProbeError::Inconsistent => EIO,
            }
        })?;
        // UNPLUG_ALL may have shrunk the usable region.
        inner.st.config = read_dynamic_config(transport, config)?;
        inner.st.last_op.latency_us =
            u64::try_from((Ktime::ktime_get().to_ns() - start.to_ns()) / 1000).unwrap_or(0);

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
            inner.st.config.requested_size >> 20,
            if acpi_pxm { ", ACPI PXM" } else { "" },
            if unplugged_inaccessible {
                ", unplugged inaccessible"
            } else {
                ""
            }
        );

        let mut view_parts = KVec::with_capacity(inner.parts.len(), GFP_KERNEL)?;
        view_parts.extend_from_slice(&inner.parts, GFP_KERNEL)?;
        let view = View {
            parts: view_parts,
            st: inner.st,
        };
        Arc::pin_init(
            pin_init!(VmemDev {
                dev: dev.into(),
                transport: transport.clone(),
                fixed: config,
                geometry,
                nid,
                dying: AtomicBool::new(false),
                kick_lock <- kernel::new_mutex!((), "VmemDev::kick_lock"),
                kicked: AtomicBool::new(false),
                ops <- kernel::new_mutex!(inner, "VmemDev::ops"),
                view <- kernel::new_mutex!(view, "VmemDev::view"),
                wake <- kernel::new_condvar!("VmemDev::wake"),
                work <- kernel::new_work!("VmemDev::work"),
            }),
            GFP_KERNEL,
        )
    }
}

#[vtable]
impl virtio::Driver for VmemDriver {
    const NAME: &'static CStr = c_str!("hotmem_virtio_mem");
    const ID_TABLE: &'static [virtio::DeviceId] = &VMEM_IDS;
    const FEATURES: &'static [u32] = &[
        wire::VIRTIO_MEM_F_ACPI_PXM,
        wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    ];
    const ATTRIBUTE_GROUP: &'static CStr = c_str!("hotmem");
    const ATTRIBUTES: &'static [virtio::Attribute] = &[
        ro(c_str!("plugged_bytes")),
        ro(c_str!("requested_bytes")),
        ro(c_str!("target_bytes")),
        ro(c_str!("usable_region_bytes")),
        ro(c_str!("partition_bytes")),
        ro(c_str!("nr_partitions")),
        ro(c_str!("nr_unplugged")),
        ro(c_str!("nr_plugging")),
        ro(c_str!("nr_plugged")),
        ro(c_str!("nr_online")),
        ro(c_str!("nr_bound")),
        ro(c_str!("nr_offlining")),
        ro(c_str!("nr_unplugging")),
        ro(c_str!("nr_failed")),
        ro(c_str!("broken")),
        ro(c_str!("last_op")),
        ro(c_str!("last_op_result")),
        ro(c_str!("last_op_partitions")),
        ro(c_str!("last_op_latency_us")),
        wo(c_str!("unplug")),
        wo(c_str!("unplug_free")),
    ];
    /// `partitions/part<id>/state`, one directory per partition of the
    /// device region, whatever its state (as
    /// `/sys/kernel/mm/hotmem/partitions/part<id>/`).
    const ITEMS: Option<virtio::ItemDirs> = Some(virtio::ItemDirs {
        dir: c_str!("partitions"),
        prefix: c_str!("part"),
        attributes: &[ro(c_str!("state"))],
    });

    fn probe(dev: &virtio::Device, transport: &virtio::Transport) -> impl PinInit<Self, Error> {
        // Everything that can fail comes before anything that can run the
        // work: the notifier is registered last and the work kicked once the
        // data is in place.
        let vmem = VmemDev::new(dev, transport);
        try_pin_init!(Self {
            notifier <- hotmem::Notifier::new(Kick(vmem.as_ref().map_err(|e| *e)?.clone())),
            vmem: vmem?,
        }? Error)
        .pin_chain(|this| {
            kick(&this.vmem);
            Ok(())
        })
    }

    fn remove(_dev: &virtio::Device, this: Pin<&Self>) {
        let vmem = &this.vmem;
        {
            // No kick queues the work from here on: config changes and sysfs
            // are already off, the notifier's kicks take `kick_lock`.
            let _kicks = vmem.kick_lock.lock();
            // Under the lock, so that a work step about to wait sees it or
            // is woken.
            let _guard = vmem.ops.lock();
            vmem.dying.store(true, Ordering::Release);
            vmem.wake.notify_all();
        }
        vmem.work.flush();
        vmem.teardown();
        // Then the abstraction drops the data (unregistering the notifier),
        // revokes the transport, resets the device and deletes its
        // virtqueue.
    }

    fn config_changed(_dev: &virtio::Device, this: Pin<&Self>) {
        kick(&this.vmem);
    }

    fn show(this: Pin<&Self>, index: usize, buf: &mut virtio::SysfsBuf<'_>) -> Result {
        #[allow(clippy::let_unit_value)]
        let () = ATTRIBUTES_CHECKED;
        let value = *Value::ALL.get(index).ok_or(EINVAL)?;
        this.vmem.show_value(value, buf)?.map_err(|_| E2BIG)
    }

    fn items(this: Pin<&Self>) -> Result<KVec<u64>> {
        let geometry = this.vmem.geometry;
        let mut ids = KVec::with_capacity(geometry.nr_partitions(), GFP_KERNEL)?;
        for index in 0..geometry.nr_partitions() {
            let range = geometry.partition_range(index).map_err(|_| EINVAL)?;
            ids.push(
                control::partition_id(range.addr, geometry.partition_size()),
                GFP_KERNEL,
            )?;
        }
        Ok(ids)
    }

    fn show_item(
        this: Pin<&Self>,
        item: usize,
        index: usize,
        buf: &mut virtio::SysfsBuf<'_>,
    ) -> Result {
        match index {
            ITEM_STATE => this.vmem.show_partition(item, buf)?.map_err(|_| E2BIG),
            _ => Err(EINVAL),
        }
    }

    fn store(this: Pin<&Self>, index: usize, input: &[u8]) -> Result {
        let n = control::parse_decimal(input).map_err(|_| EINVAL)?;
        let r = match index {
            ATTR_UNPLUG => this.vmem.with(|v, env| v.unplug_id(env, n))?,
            ATTR_UNPLUG_FREE => {
                let n = usize::try_from(n).map_err(|_| EINVAL)?;
                this.vmem.with(|v, env| v.unplug_free(env, n))?
            }
            _ => return Err(EINVAL),
        };
        // A BUSY device finishes the unplug from the work, with backoff.
        kick_process(&this.vmem);
        r.map_err(unplug_errno)
    }
}
