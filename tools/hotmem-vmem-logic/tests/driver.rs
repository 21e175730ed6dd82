//! The driver's work (`driver::Vmem`) against a simulated virtio-mem device
//! and kernel, with injected NACK, BUSY and ERROR answers, requests that are
//! not sent, failing onlines and bound partitions.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::fmt;

use hotmem_vmem_logic::control::Refusal;
use hotmem_vmem_logic::driver::{
    Env, Kernel, KernelState, Level, Op, OpResult, RemoveError, RequestError, State, UnplugFailure,
    Value, Vmem,
};
use hotmem_vmem_logic::partition::PartState;
use hotmem_vmem_logic::wire::{BlockState, Config, Request, Response};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const MEMORY_BLOCK: u64 = 128 * MIB;
const PART: u64 = 128 * MIB;
const BLOCK: u64 = 2 * MIB;
const BASE: u64 = 1 << 32;
const N: usize = 8;

/// A fault injected into the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Busy,
    Nack,
    Error,
    NotSent,
    /// The device acts on the request, but the answer is lost (timeout,
    /// signal, broken virtqueue).
    Lost,
}

/// The simulated device and kernel.
struct Sim {
    requested: u64,
    usable: u64,
    /// Plugged on the device, per partition.
    plugged: [bool; N],
    /// Partly plugged (MIXED) partitions: one bit per device block
    /// (64 per partition); `plugged` is then false.
    mixed: [u64; N],
    /// Added in the kernel, per partition.
    added: [bool; N],
    /// Bound in the kernel, per partition.
    in_use: [bool; N],
    /// Memory another driver added, per partition (not HotMem).
    foreign: [bool; N],
    /// Memory another driver added in the region, outside the partitions.
    foreign_outside: bool,
    /// The kernel cannot tell whether memory is added.
    unknown: bool,
    faults: VecDeque<Fault>,
    fail_add: VecDeque<bool>,
    /// A failing add leaves the memory added (rollback failed).
    add_leaves_added: bool,
    /// A partition unplugged on the device while its memory was added.
    violations: Vec<String>,
    now: u64,
    log: Vec<String>,
    /// Configuration space reads.
    config_reads: u32,
    /// What the driver last published for readers (`Env::publish`).
    published: Option<(Vec<PartState>, State)>,
    /// Waits (requests, adds, removes) the driver published its state
    /// before, with the partition concerned in its transitional state.
    published_waits: u32,
}

impl Sim {
    fn new() -> Self {
        Self {
            requested: 0,
            usable: N as u64 * PART,
            plugged: [false; N],
            mixed: [0; N],
            added: [false; N],
            in_use: [false; N],
            foreign: [false; N],
            foreign_outside: false,
            unknown: false,
            faults: VecDeque::new(),
            fail_add: VecDeque::new(),
            add_leaves_added: false,
            violations: Vec::new(),
            now: 0,
            log: Vec::new(),
            config_reads: 0,
            published: None,
            published_waits: 0,
        }
    }

    /// Readers see partition `i` in `want` while the driver waits for the
    /// device or the kernel about it: the driver published its state, with
    /// that partition in its transitional state, just before.
    fn check_published(&mut self, what: &str, i: usize, want: PartState) {
        let (parts, _) = self
            .published
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the driver waits without publishing its state"));
        assert_eq!(
            parts[i], want,
            "{what}: readers see partition {i} as {:?} meanwhile",
            parts[i]
        );
        self.published_waits += 1;
    }

    fn config(&self) -> Config {
        Config {
            block_size: BLOCK,
            node_id: 0,
            addr: BASE,
            region_size: N as u64 * PART,
            usable_region_size: self.usable,
            plugged_size: self.plugged_bytes(),
            requested_size: self.requested,
        }
    }

    fn plugged_bytes(&self) -> u64 {
        self.plugged.iter().filter(|p| **p).count() as u64 * PART
            + self
                .mixed
                .iter()
                .map(|m| u64::from(m.count_ones()))
                .sum::<u64>()
                * BLOCK
    }

    /// A one-block request: `(partition, bit)`.
    fn block(&self, addr: u64, nb_blocks: u16) -> Option<(usize, u64)> {
        (nb_blocks == 1 && addr >= BASE && addr < BASE + self.usable && (addr - BASE) % BLOCK == 0)
            .then(|| (Self::index(addr), 1u64 << ((addr - BASE) % PART / BLOCK)))
    }

    /// One-block requests, on the bitmap of the partition.
    fn block_request(&mut self, request: Request) -> Option<Response> {
        let (Request::State(r) | Request::Unplug(r) | Request::Plug(r)) = request else {
            return None;
        };
        let (i, bit) = self.block(r.addr, r.nb_blocks)?;
        let mut bits = if self.plugged[i] {
            u64::MAX
        } else {
            self.mixed[i]
        };
        let response = match request {
            Request::State(_) if bits & bit != 0 => Response::AckState(BlockState::Plugged),
            Request::State(_) => Response::AckState(BlockState::Unplugged),
            Request::Unplug(_) if bits & bit != 0 => {
                if self.added[i] || self.foreign[i] {
                    self.violations
                        .push(format!("block of partition {i} unplugged while added"));
                }
                bits &= !bit;
                Response::Ack
            }
            Request::Plug(_) if bits & bit == 0 => {
                bits |= bit;
                Response::Ack
            }
            _ => Response::Error,
        };
        self.plugged[i] = bits == u64::MAX;
        self.mixed[i] = if self.plugged[i] { 0 } else { bits };
        Some(response)
    }

    fn index(addr: u64) -> usize {
        ((addr - BASE) / PART) as usize
    }

    fn whole(&self, addr: u64, nb_blocks: u16) -> Option<usize> {
        let i = Self::index(addr);
        (addr >= BASE
            && (addr - BASE) % PART == 0
            && u64::from(nb_blocks) * BLOCK == PART
            && addr - BASE + PART <= self.usable)
            .then_some(i)
    }
}

impl Sim {
    /// The device's answer to `request`, with `fault` injected.
    fn answer(&mut self, fault: Fault, request: Request) -> Response {
        match (fault, request) {
            (Fault::Busy, Request::State(_)) | (Fault::Nack | Fault::Error, Request::UnplugAll) => {
            }
            (Fault::Busy, _) => return Response::Busy,
            (Fault::Nack, Request::Plug(_) | Request::Unplug(_)) => return Response::Nack,
            (Fault::Error, Request::Plug(_) | Request::Unplug(_)) => return Response::Error,
            _ => {}
        }
        if let Some(response) = self.block_request(request) {
            return response;
        }
        match request {
            Request::Plug(_) | Request::Unplug(_)
                if self
                    .whole(request_addr(request), PART_BLOCKS)
                    .is_some_and(|i| self.mixed[i] != 0) =>
            {
                Response::Error
            }
            Request::Plug(r) => match self.whole(r.addr, r.nb_blocks) {
                None => Response::Error,
                Some(i) if self.plugged[i] => Response::Error,
                Some(_) if self.plugged_bytes() + PART > self.requested => Response::Nack,
                Some(i) => {
                    self.plugged[i] = true;
                    Response::Ack
                }
            },
            Request::Unplug(r) => match self.whole(r.addr, r.nb_blocks) {
                Some(i) if self.plugged[i] => {
                    if self.added[i] || self.foreign[i] {
                        self.violations
                            .push(format!("partition {i} unplugged while added"));
                    }
                    self.plugged[i] = false;
                    Response::Ack
                }
                _ => Response::Error,
            },
            Request::UnplugAll => {
                if self.added.iter().chain(&self.foreign).any(|a| *a) || self.foreign_outside {
                    self.violations.push("UNPLUG_ALL with memory added".into());
                }
                self.plugged = [false; N];
                self.mixed = [0; N];
                Response::Ack
            }
            Request::State(r) => match self.whole(r.addr, r.nb_blocks) {
                Some(i) if self.mixed[i] != 0 => Response::AckState(BlockState::Mixed),
                Some(i) if self.plugged[i] => Response::AckState(BlockState::Plugged),
                Some(_) => Response::AckState(BlockState::Unplugged),
                None => Response::Error,
            },
        }
    }
}

impl Env for Sim {
    fn read_config(&mut self) -> Result<Config, i32> {
        self.config_reads += 1;
        Ok(self.config())
    }

    fn request(&mut self, request: Request) -> Result<Response, RequestError<i32>> {
        match request {
            Request::Plug(r) if self.whole(r.addr, r.nb_blocks).is_some() => {
                self.check_published("PLUG", Self::index(r.addr), PartState::Plugging);
            }
            Request::Unplug(r) if self.whole(r.addr, r.nb_blocks).is_some() => {
                self.check_published("UNPLUG", Self::index(r.addr), PartState::Unplugging);
            }
            _ => assert!(self.published.is_some(), "{request:?} before any publish"),
        }
        match self.faults.pop_front().unwrap_or(Fault::None) {
            Fault::NotSent => Err(RequestError::NotSent(-12)),
            Fault::Lost => {
                self.answer(Fault::None, request);
                Err(RequestError::NoAnswer(-62))
            }
            fault => Ok(self.answer(fault, request)),
        }
    }

    fn now_us(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    fn add(&mut self, addr: u64, size: u64) -> Result<(), i32> {
        assert_eq!(size, PART);
        let i = Self::index(addr);
        self.check_published("add", i, PartState::Plugged);
        assert!(self.plugged[i], "partition {i} added but not plugged");
        assert!(!self.added[i], "partition {i} added twice");
        if self.foreign[i] {
            return Err(-17);
        }
        if self.fail_add.pop_front().unwrap_or(false) {
            if self.add_leaves_added {
                self.added[i] = true;
            }
            return Err(-12);
        }
        self.added[i] = true;
        Ok(())
    }

    fn remove(&mut self, addr: u64, size: u64) -> Result<(), RemoveError<i32>> {
        assert_eq!(size, PART);
        let i = Self::index(addr);
        self.check_published("remove", i, PartState::Offlining);
        assert!(self.added[i], "partition {i} removed but not added");
        if self.in_use[i] {
            return Err(RemoveError::Busy);
        }
        self.added[i] = false;
        Ok(())
    }

    fn publish(&mut self, parts: &[PartState], st: &State) {
        self.published = Some((parts.to_vec(), *st));
    }

    fn memory_added(&mut self, addr: u64, size: u64) -> bool {
        if self.unknown {
            return true;
        }
        if size > PART {
            assert_eq!((addr, size), (BASE, N as u64 * PART), "the whole region");
            return self.foreign_outside || self.added.iter().chain(&self.foreign).any(|a| *a);
        }
        let i = Self::index(addr);
        self.added[i] || self.foreign[i]
    }
}

impl Kernel for Sim {
    type Error = i32;

    fn kernel_state(&mut self, addr: u64) -> KernelState {
        let i = Self::index(addr);
        if self.foreign[i] || self.unknown {
            return KernelState::InUse;
        }
        match (self.added[i], self.in_use[i]) {
            (false, _) => KernelState::NotAdded,
            (true, false) => KernelState::Free,
            (true, true) => KernelState::InUse,
        }
    }

    fn log(&mut self, level: Level, args: fmt::Arguments<'_>) {
        self.log.push(format!("{level:?}: {args}"));
    }
}

const PART_BLOCKS: u16 = (PART / BLOCK) as u16;

fn request_addr(request: Request) -> u64 {
    match request {
        Request::Plug(r) | Request::Unplug(r) | Request::State(r) => r.addr,
        Request::UnplugAll => 0,
    }
}

/// The driver of one simulated device.
struct Driver {
    parts: Vec<PartState>,
    st: State,
}

impl Driver {
    fn probe(sim: &mut Sim) -> Self {
        let config = sim.config();
        let geometry = config.validate(MEMORY_BLOCK, PART).unwrap();
        assert_eq!(geometry.nr_partitions(), N);
        let mut d = Self {
            parts: vec![PartState::Unplugged; N],
            st: State::new(config),
        };
        d.vmem().probe_sync(sim).unwrap();
        d
    }

    fn vmem(&mut self) -> Vmem<'_> {
        let geometry = self.st.config.validate(MEMORY_BLOCK, PART).unwrap();
        Vmem::new(geometry, &mut self.parts, &mut self.st).unwrap()
    }

    /// The invariants that hold between operations, unless the device was
    /// marked broken.
    fn check(&mut self, sim: &Sim) {
        assert!(sim.violations.is_empty(), "{:?}", sim.violations);
        if self.st.broken {
            return;
        }
        for (i, state) in self.parts.iter().enumerate() {
            assert!(
                matches!(
                    state,
                    PartState::Unplugged
                        | PartState::Plugged
                        | PartState::Online
                        | PartState::Bound
                        | PartState::Failed
                ),
                "partition {i} left {state:?}\n{:#?}",
                sim.log
            );
            if *state != PartState::Failed {
                let plugged = *state != PartState::Unplugged;
                assert_eq!(
                    plugged, sim.plugged[i],
                    "partition {i} ({state:?}): device disagrees"
                );
            }
            assert_eq!(
                state.memory_added(),
                sim.added[i] || sim.foreign[i],
                "partition {i} ({state:?}): kernel disagrees"
            );
        }
        if !self.parts.contains(&PartState::Failed) {
            let vmem = self.vmem();
            assert_eq!(vmem.plugged_bytes(), sim.plugged_bytes());
        }
    }
}

#[test]
fn grows_and_shrinks_in_whole_partitions() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 3 * PART + PART / 2;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.plugged, r.unplugged, r.failed), (3, 0, false));
    assert_eq!(
        sim.plugged,
        [true, true, true, false, false, false, false, false]
    );
    assert_eq!(sim.added, sim.plugged);
    assert_eq!(d.st.last_op.op, Op::Plug);
    d.check(&sim);

    sim.requested = PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.plugged, r.unplugged, r.failed), (0, 2, false));
    assert_eq!(sim.plugged_bytes(), PART);
    d.check(&sim);
}

#[test]
fn bound_partitions_stay_until_released() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 3 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.in_use[1] = true;
    sim.in_use[2] = true;
    sim.requested = 0;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r.unplugged, 1);
    assert_eq!(
        sim.plugged,
        [false, true, true, false, false, false, false, false]
    );
    d.check(&sim);
    // Nothing to do until a release.
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r, Default::default());
    sim.in_use[2] = false;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r.unplugged, 1);
    assert_eq!(sim.plugged_bytes(), PART);
    d.check(&sim);
}

#[test]
fn explicit_unplug_refusals_change_nothing() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.in_use[0] = true;
    let id0 = BASE / PART;
    let before = (sim.plugged, d.parts.clone());
    let mut v = d.vmem();
    assert_eq!(
        v.unplug_id(&mut sim, id0),
        Err(UnplugFailure::Refused(Refusal::Busy))
    );
    assert_eq!(
        v.unplug_id(&mut sim, id0 + 5),
        Err(UnplugFailure::Refused(Refusal::Invalid)),
        "not online"
    );
    assert_eq!(
        v.unplug_id(&mut sim, 3),
        Err(UnplugFailure::Refused(Refusal::Invalid)),
        "outside the device"
    );
    assert_eq!(
        v.unplug_free(&mut sim, 2),
        Err(UnplugFailure::Refused(Refusal::Busy))
    );
    assert_eq!(
        v.unplug_free(&mut sim, 0),
        Err(UnplugFailure::Refused(Refusal::Invalid))
    );
    assert_eq!(before.0, sim.plugged);
    assert_eq!(before.1[1], PartState::Online);
    // One free partition can go; it is not plugged back for the same
    // request.
    assert_eq!(d.vmem().unplug_free(&mut sim, 1), Ok(()));
    assert_eq!(sim.plugged_bytes(), PART);
    assert_eq!(
        (
            d.st.last_op.op,
            d.st.last_op.result,
            d.st.last_op.partitions
        ),
        (Op::SysfsUnplug, OpResult::Ok, 1)
    );
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r, Default::default());
    // A new request lifts the hold-back.
    sim.requested = 3 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), 3 * PART);
    d.check(&sim);
}

impl Driver {
    /// The contents of the sysfs file `value`, refreshed as the module
    /// does.
    fn show(&mut self, sim: &mut Sim, value: Value) -> String {
        let mut v = self.vmem();
        if value.refreshes() {
            v.refresh(sim);
        }
        let mut out = String::new();
        v.show_value(value, &mut out).unwrap();
        out
    }
}

#[test]
fn value_files_are_named_once_and_hold_one_value() {
    let names: Vec<&str> = Value::ALL.iter().map(|v| v.name()).collect();
    assert_eq!(
        names,
        [
            "plugged_bytes",
            "requested_bytes",
            "target_bytes",
            "usable_region_bytes",
            "partition_bytes",
            "nr_partitions",
            "nr_unplugged",
            "nr_plugging",
            "nr_plugged",
            "nr_online",
            "nr_bound",
            "nr_offlining",
            "nr_unplugging",
            "nr_failed",
            "broken",
            "last_op",
            "last_op_result",
            "last_op_partitions",
            "last_op_latency_us",
        ]
    );
    // One `nr_` file per driver state, named after it.
    for state in PartState::ALL {
        assert_eq!(Value::Nr(state).name(), format!("nr_{}", state.name()));
    }

    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 3 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.in_use[1] = true;
    assert_eq!(d.vmem().unplug_id(&mut sim, BASE / PART + 2), Ok(()));
    for value in Value::ALL {
        let text = d.show(&mut sim, value);
        let v = text.strip_suffix('\n').unwrap();
        assert!(
            !v.is_empty() && !v.contains(char::is_whitespace),
            "{}: {text:?}",
            value.name()
        );
    }
    let show = |d: &mut Driver, sim: &mut Sim, value| d.show(sim, value);
    assert_eq!(
        show(&mut d, &mut sim, Value::PluggedBytes),
        format!("{}\n", 2 * PART)
    );
    assert_eq!(
        show(&mut d, &mut sim, Value::RequestedBytes),
        format!("{}\n", 3 * PART)
    );
    assert_eq!(
        show(&mut d, &mut sim, Value::TargetBytes),
        format!("{}\n", 2 * PART)
    );
    assert_eq!(
        show(&mut d, &mut sim, Value::UsableRegionBytes),
        format!("{}\n", N as u64 * PART)
    );
    assert_eq!(
        show(&mut d, &mut sim, Value::PartitionBytes),
        format!("{PART}\n")
    );
    assert_eq!(
        show(&mut d, &mut sim, Value::NrPartitions),
        format!("{N}\n")
    );
    // The kernel's word on bound partitions is taken on read.
    assert_eq!(show(&mut d, &mut sim, Value::Nr(PartState::Bound)), "1\n");
    assert_eq!(show(&mut d, &mut sim, Value::Nr(PartState::Online)), "1\n");
    assert_eq!(
        show(&mut d, &mut sim, Value::Nr(PartState::Unplugged)),
        format!("{}\n", N - 2)
    );
    assert_eq!(show(&mut d, &mut sim, Value::Nr(PartState::Failed)), "0\n");
    assert_eq!(show(&mut d, &mut sim, Value::Broken), "0\n");
    assert_eq!(show(&mut d, &mut sim, Value::LastOp), "sysfs_unplug\n");
    assert_eq!(show(&mut d, &mut sim, Value::LastOpResult), "ok\n");
    assert_eq!(show(&mut d, &mut sim, Value::LastOpPartitions), "1\n");
    assert_eq!(
        show(&mut d, &mut sim, Value::LastOpLatencyUs),
        format!("{}\n", d.st.last_op.latency_us)
    );
    d.check(&sim);
}

#[test]
fn busy_is_retried_later_with_backoff_without_sleeping() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = PART;
    sim.faults.extend([Fault::Busy; 3]);
    let mut delays = Vec::new();
    loop {
        let now = sim.now;
        let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
        // The round returns at once; the caller waits without the lock.
        assert!(sim.now - now < 100, "the driver slept");
        d.check(&sim);
        match r.retry_ms {
            Some(ms) => delays.push(ms),
            None => {
                assert_eq!(r.plugged, 1);
                break;
            }
        }
    }
    assert_eq!(delays, [100, 200, 400]);
    assert_eq!(d.st.busy_streak, 0, "reset by the ACK");
    // A long BUSY (a migration) never gives up, and the delay is capped.
    sim.requested = 2 * PART;
    sim.faults.extend([Fault::Busy; 40]);
    let mut last = 0;
    for _ in 0..40 {
        let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
        assert_eq!(r.plugged, 0);
        last = r.retry_ms.expect("retried");
        d.check(&sim);
    }
    assert_eq!(last, 120_000);
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.plugged, r.retry_ms), (1, None));
    d.check(&sim);
}

#[test]
fn busy_unplug_all_at_probe_is_retried() {
    let mut sim = Sim::new();
    sim.plugged[3] = true;
    sim.faults.extend([Fault::Busy; 2]);
    let mut d = Driver::probe(&mut sim);
    assert!(sim.plugged[3]);
    assert!(d.st.unplug_all_pending);
    sim.requested = PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r.retry_ms, Some(200));
    assert!(sim.plugged[3]);
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.plugged, r.retry_ms), (1, None));
    assert!(!d.st.unplug_all_pending);
    assert_eq!(
        sim.plugged,
        [true, false, false, false, false, false, false, false]
    );
    d.check(&sim);
}

#[test]
fn busy_explicit_unplug_completes_later() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.faults.push_back(Fault::Busy);
    assert_eq!(d.vmem().unplug_id(&mut sim, BASE / PART + 1), Ok(()));
    assert_eq!(d.parts[1], PartState::Plugged);
    assert!(sim.plugged[1] && !sim.added[1]);
    d.check(&sim);
    // The retry unplugs it; it is not onlined again.
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.unplugged, r.retry_ms), (1, None));
    assert_eq!(sim.plugged_bytes(), PART);
    d.check(&sim);
}

#[test]
fn failed_online_is_unplugged_again() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    sim.fail_add.push_back(true);
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert!(r.failed);
    assert_eq!(sim.plugged_bytes(), 0, "nothing plugged that is not added");
    d.check(&sim);
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), 2 * PART);
    d.check(&sim);
}

#[test]
fn failed_add_that_leaves_memory_added_is_not_unplugged() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    sim.fail_add.push_back(true);
    sim.add_leaves_added = true;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert!(r.failed);
    assert!(sim.plugged[0] && sim.added[0]);
    assert_eq!(d.parts[0], PartState::Bound);
    d.check(&sim);
    // It is never unplugged while the kernel has it in use, whatever the
    // device asks.
    sim.in_use[0] = true;
    sim.requested = 0;
    for _ in 0..3 {
        d.vmem().round(&mut sim, MEMORY_BLOCK);
        d.check(&sim);
    }
    assert!(sim.plugged[0]);
    let left = d.vmem().teardown(&mut sim);
    assert_eq!(left.bound, 1);
    d.check(&sim);
}

#[test]
fn memory_of_another_driver_is_never_unplugged() {
    // Another driver's memory in partitions 0 and 1, plugged and added
    // (not HotMem), partition 4 plugged only: no UNPLUG_ALL, no UNPLUG of
    // 0 or 1, whatever the device asks.
    let mut sim = Sim::new();
    for i in [0, 1] {
        sim.plugged[i] = true;
        sim.foreign[i] = true;
    }
    sim.plugged[4] = true;
    let mut d = Driver::probe(&mut sim);
    d.check(&sim);
    sim.requested = 0;
    for _ in 0..3 {
        d.vmem().round(&mut sim, MEMORY_BLOCK);
        d.check(&sim);
    }
    assert!(sim.plugged[0] && sim.plugged[1]);
    assert!(!sim.plugged[4], "the driver's own plugged memory goes");
    let _ = d.vmem().unplug_free(&mut sim, 1);
    let _ = d.vmem().unplug_id(&mut sim, BASE / PART);
    d.vmem().teardown(&mut sim);
    d.check(&sim);
    assert!(sim.plugged[0] && sim.plugged[1]);
}

#[test]
fn memory_added_outside_the_partitions_rules_out_unplug_all() {
    let mut sim = Sim::new();
    sim.plugged[3] = true;
    sim.foreign_outside = true;
    let mut d = Driver::probe(&mut sim);
    d.check(&sim);
    assert!(sim.violations.is_empty());
    // Partition 3 is the driver's to unplug (STATE said plugged, nothing
    // added in it).
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), 0);
    d.check(&sim);
}

#[test]
fn memory_the_kernel_cannot_account_for_is_in_use() {
    let mut sim = Sim::new();
    sim.plugged[3] = true;
    sim.unknown = true;
    let config = sim.config();
    let mut d = Driver {
        parts: vec![PartState::Unplugged; N],
        st: State::new(config),
    };
    // Every partition looks added: probe refuses the device (the driver's
    // view cannot be brought in line) rather than unplug anything.
    assert!(d.vmem().probe_sync(&mut sim).is_err());
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert!(sim.plugged[3]);
}

#[test]
fn a_mixed_partition_is_resolved_with_unplug_all_when_nothing_is_added() {
    let mut sim = Sim::new();
    sim.mixed[2] = 0b1011;
    sim.plugged[5] = true;
    // Plugged, nothing added: UNPLUG_ALL at probe clears it all.
    let mut d = Driver::probe(&mut sim);
    assert_eq!(sim.plugged_bytes(), 0);
    d.check(&sim);
    // Partly plugged later (e.g. by a previous driver's failed request):
    // the next round resolves it and plugs on.
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.mixed[6] = 0b110;
    d.parts[6] = PartState::Failed;
    sim.requested = 3 * PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert!(!d.parts.contains(&PartState::Failed));
    assert_eq!(sim.mixed, [0; N]);
    // Partitions 0 and 1 were added: per-block unplug, no UNPLUG_ALL.
    assert!(sim.added[0] && sim.added[1]);
    assert_eq!(r.plugged, 1);
    assert_eq!(sim.plugged_bytes(), 3 * PART);
    d.check(&sim);
}

#[test]
fn a_mixed_partition_does_not_stop_plugging() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    // Nothing added there, but partition 0 is: per-block unplug.
    sim.mixed[4] = 1 << 63 | 1;
    d.parts[4] = PartState::Failed;
    sim.requested = 2 * PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!((r.plugged, r.failed), (1, false));
    assert_eq!(d.parts[4], PartState::Unplugged);
    assert_eq!(sim.mixed[4], 0);
    assert_eq!(sim.plugged_bytes(), 2 * PART);
    d.check(&sim);
}

#[test]
fn probe_unplugs_all_or_adopts() {
    // Plugged, nothing added: UNPLUG_ALL.
    let mut sim = Sim::new();
    sim.plugged[3] = true;
    let mut d = Driver::probe(&mut sim);
    assert_eq!(sim.plugged_bytes(), 0);
    d.check(&sim);
    // A previous driver left partition 2 added and bound, 5 plugged only.
    let mut sim = Sim::new();
    sim.plugged[2] = true;
    sim.added[2] = true;
    sim.in_use[2] = true;
    sim.plugged[5] = true;
    let mut d = Driver::probe(&mut sim);
    assert_eq!(d.parts[2], PartState::Bound);
    assert_eq!(d.parts[5], PartState::Plugged);
    d.check(&sim);
    sim.requested = 0;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), PART);
    sim.in_use[2] = false;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), 0);
    d.check(&sim);
}

#[test]
fn teardown_keeps_bound_partitions() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 3 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.in_use[0] = true;
    let left = d.vmem().teardown(&mut sim);
    assert_eq!((left.bound, left.online, left.plugged), (1, 0, 0));
    assert_eq!(
        sim.plugged,
        [true, false, false, false, false, false, false, false]
    );
    d.check(&sim);
}

#[derive(Clone, Debug)]
enum Action {
    Request(usize),
    Bind(usize),
    Release(usize),
    Round,
    UnplugId(usize),
    UnplugFree(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..=N).prop_map(Action::Request),
        2 => (0..N).prop_map(Action::Bind),
        2 => (0..N).prop_map(Action::Release),
        4 => Just(Action::Round),
        1 => (0..N + 2).prop_map(Action::UnplugId),
        1 => (0..4usize).prop_map(Action::UnplugFree),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        3 => Just(Fault::Busy),
        1 => Just(Fault::Nack),
        1 => Just(Fault::Error),
        1 => Just(Fault::NotSent),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the device answers and whatever the kernel does, between
    /// operations every partition is settled, the driver's view of what is
    /// plugged equals the device's, its view of what is added equals the
    /// kernel's, and nothing added or bound is ever unplugged.
    #[test]
    fn driver_and_device_agree_under_faults(
        actions in proptest::collection::vec(action(), 1..40),
        faults in proptest::collection::vec(fault(), 0..60),
        fail_add in proptest::collection::vec(proptest::bool::weighted(0.1), 0..10),
        add_leaves_added in proptest::bool::weighted(0.3),
    ) {
        let mut sim = Sim::new();
        sim.add_leaves_added = add_leaves_added;
        let mut d = Driver::probe(&mut sim);
        sim.faults.extend(faults);
        sim.fail_add.extend(fail_add);
        for action in actions {
            match action {
                Action::Request(n) => {
                    sim.requested = n as u64 * PART;
                    d.vmem().round(&mut sim, MEMORY_BLOCK);
                }
                Action::Bind(i) => {
                    if sim.added[i] {
                        sim.in_use[i] = true;
                    }
                }
                Action::Release(i) => {
                    sim.in_use[i] = false;
                    d.vmem().round(&mut sim, MEMORY_BLOCK);
                }
                Action::Round => {
                    d.vmem().round(&mut sim, MEMORY_BLOCK);
                }
                Action::UnplugId(i) => {
                    let bound = i < N && sim.in_use[i];
                    let r = d.vmem().unplug_id(&mut sim, BASE / PART + i as u64);
                    if bound {
                        prop_assert!(r.is_err());
                    }
                }
                Action::UnplugFree(n) => {
                    let _ = d.vmem().unplug_free(&mut sim, n);
                }
            }
            d.check(&sim);
            for i in 0..N {
                if sim.in_use[i] {
                    prop_assert!(sim.plugged[i] && sim.added[i], "bound partition {i} lost");
                }
            }
        }
        // With the faults used up, one more round settles at the target.
        if !d.st.broken {
            sim.faults.clear();
            sim.fail_add.clear();
            d.vmem().round(&mut sim, MEMORY_BLOCK);
            d.check(&sim);
            prop_assert!(!d.parts.contains(&PartState::Failed));
            let target = d.vmem().target_bytes();
            let bound = sim.in_use.iter().filter(|b| **b).count() as u64 * PART;
            prop_assert_eq!(sim.plugged_bytes(), target.max(bound) / PART * PART);
        }
    }
}

#[test]
fn a_lost_unplug_answer_leaves_the_partition_unknown_until_queried() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(sim.plugged_bytes(), 2 * PART);
    // The device unplugs, but its answer is lost (the wait timed out).
    sim.faults.push_back(Fault::Lost);
    sim.requested = PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert!(r.failed);
    assert_eq!(sim.plugged_bytes(), PART);
    assert!(d.parts.contains(&PartState::Failed), "{:?}", d.parts);
    d.check(&sim);
    // Growing again never adds the memory the device has unplugged (the
    // simulated kernel asserts it): the partition is queried first.
    sim.requested = 3 * PART;
    for _ in 0..3 {
        d.vmem().round(&mut sim, MEMORY_BLOCK);
    }
    assert_eq!(sim.plugged_bytes(), 3 * PART);
    assert_eq!(sim.added.iter().filter(|a| **a).count(), 3);
    assert!(!d.parts.contains(&PartState::Failed), "{:?}", d.parts);
    d.check(&sim);
}

#[test]
fn a_lost_plug_answer_leaves_the_partition_unknown_until_queried() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.faults.push_back(Fault::Lost);
    sim.requested = PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert!(r.failed);
    assert_eq!(sim.plugged_bytes(), PART);
    assert!(d.parts.contains(&PartState::Failed), "{:?}", d.parts);
    d.check(&sim);
    for _ in 0..3 {
        d.vmem().round(&mut sim, MEMORY_BLOCK);
    }
    // Queried, found plugged, and onlined (or unplugged and plugged again):
    // never plugged twice.
    assert_eq!(sim.plugged_bytes(), PART);
    assert_eq!(sim.added.iter().filter(|a| **a).count(), 1);
    d.check(&sim);
}

/// The configuration space reads of an unplug: one per step (to follow a
/// requested size that changes meanwhile) and a last one. The kernel side
/// turns each into 3 field reads and 2 generation reads (see `read_config`
/// in `rust/hotmem_virtio_mem.rs`; it was 56 byte reads and 2 generation
/// reads before).
#[test]
fn an_unplug_reads_the_configuration_once_per_partition_and_once_more() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 4 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.config_reads = 0;
    sim.requested = PART;
    let r = d.vmem().round(&mut sim, MEMORY_BLOCK);
    assert_eq!(r.unplugged, 3);
    eprintln!(
        "configuration reads for an unplug of 3 partitions: {}",
        sim.config_reads
    );
    assert_eq!(sim.config_reads, 3 + 1);
}

/// Before every wait for the device (PLUG, UNPLUG) or the kernel (add,
/// remove) the driver publishes its state with the partition concerned in
/// its transitional state (`Sim` checks each): readers, served from that
/// copy, see `plugging` while a PLUG is outstanding instead of waiting for
/// it.
#[test]
fn state_is_published_before_every_wait() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    // Two PLUGs and two adds.
    assert_eq!(sim.published_waits, 4);
    let (parts, st) = sim.published.clone().unwrap();
    assert_eq!(parts[1], PartState::Plugged, "published before adding it");
    assert_eq!(st.config.requested_size, 2 * PART);
    // A reader of the published copy sees one partition plugging while its
    // PLUG is outstanding (the state published before the request).
    sim.requested = 3 * PART;
    sim.faults.push_back(Fault::Lost);
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    let (mut parts, mut st) = sim.published.clone().unwrap();
    assert_eq!(parts[2], PartState::Plugging);
    let geometry = st.config.validate(MEMORY_BLOCK, PART).unwrap();
    let mut view = Vmem::new(geometry, &mut parts, &mut st).unwrap();
    let mut out = String::new();
    view.show_value(Value::Nr(PartState::Plugging), &mut out)
        .unwrap();
    assert_eq!(out, "1\n");
    // Explicit unplugs: one remove, one UNPLUG.
    let before = sim.published_waits;
    sim.faults.clear();
    assert_eq!(d.vmem().unplug_id(&mut sim, BASE / PART), Ok(()));
    assert_eq!(sim.published_waits, before + 2);
}

/// A partition's sysfs directory shows its state after taking the kernel's
/// word on that partition alone.
#[test]
fn partition_state_refreshes_one_partition() {
    let mut sim = Sim::new();
    let mut d = Driver::probe(&mut sim);
    sim.requested = 2 * PART;
    d.vmem().round(&mut sim, MEMORY_BLOCK);
    sim.in_use[0] = true;
    sim.in_use[1] = true;
    let mut v = d.vmem();
    assert_eq!(v.partition_state(&mut sim, 0), Some(PartState::Bound));
    assert_eq!(v.partition_state(&mut sim, 2), Some(PartState::Unplugged));
    assert_eq!(v.partition_state(&mut sim, N), None);
    // Partition 1 was not asked about.
    assert_eq!(d.parts[1], PartState::Online);
    sim.in_use[0] = false;
    assert_eq!(
        d.vmem().partition_state(&mut sim, 0),
        Some(PartState::Online)
    );
}
