//! Shared test helpers: a geometry, a model device that changes only on
//! ACK, and a simulated driver that carries out planned steps.

// Each test crate uses a different subset; a panic is the failure report.
#![allow(dead_code, clippy::unwrap_used)]

use hotmem_vmem_logic::partition::{Device, Event, PartState, Step};
use hotmem_vmem_logic::wire::{BlockState, Config, Geometry, ResponseType};

/// Every event that carries no device answer.
pub const PLAIN_EVENTS: [Event; 17] = [
    Event::StartPlug,
    Event::PlugAcked,
    Event::PlugNacked,
    Event::PlugBusy,
    Event::PlugError,
    Event::Onlined,
    Event::OnlineFailed,
    Event::FoundAdded,
    Event::KernelBound,
    Event::KernelReleased,
    Event::StartUnplug,
    Event::Offlined,
    Event::OfflineBusy,
    Event::UnplugAcked,
    Event::UnplugNacked,
    Event::UnplugBusy,
    Event::UnplugError,
];

pub const MIB: u64 = 1 << 20;
pub const MEMORY_BLOCK: u64 = 128 * MIB;
pub const PARTITION: u64 = 256 * MIB;
pub const BLOCK: u64 = 2 * MIB;
pub const BLOCKS_PER_PARTITION: u64 = PARTITION / BLOCK;
/// Partition-aligned region start (4 GiB).
pub const REGION: u64 = 1 << 32;

/// A validated geometry of `n` partitions (n >= 1), region fully usable.
pub fn geometry(n: usize) -> Geometry {
    let size = PARTITION * n as u64;
    Config {
        block_size: BLOCK,
        node_id: 0,
        addr: REGION,
        region_size: size,
        usable_region_size: size,
        plugged_size: 0,
        requested_size: 0,
    }
    .validate(MEMORY_BLOCK, PARTITION)
    .unwrap()
}

/// Bytes of `n` partitions.
pub fn parts(n: usize) -> u64 {
    PARTITION * n as u64
}

/// A device over `states`, with the whole region usable.
pub fn device(states: &mut [PartState]) -> Device<'_> {
    let n = states.len();
    Device::new(geometry(n), parts(n), states).unwrap()
}

/// Truth on the device side: which partitions are plugged. It changes only
/// when it ACKs a PLUG or UNPLUG, like a real device.
#[derive(Clone, Debug)]
pub struct Model {
    pub plugged: Vec<bool>,
}

impl Model {
    pub fn new(n: usize) -> Self {
        Self {
            plugged: vec![false; n],
        }
    }

    /// A model agreeing with `states`, which must have no `Failed` entry.
    pub fn matching(states: &[PartState]) -> Self {
        let plugged = states
            .iter()
            .map(|s| match s.device_view() {
                hotmem_vmem_logic::partition::DeviceView::Plugged => true,
                hotmem_vmem_logic::partition::DeviceView::Unplugged => false,
                hotmem_vmem_logic::partition::DeviceView::Unknown => panic!("unknown"),
            })
            .collect();
        Self { plugged }
    }

    pub fn state_of(&self, index: usize) -> BlockState {
        if self.plugged[index] {
            BlockState::Plugged
        } else {
            BlockState::Unplugged
        }
    }

    pub fn plugged_bytes(&self) -> u64 {
        parts(self.plugged.iter().filter(|&&p| p).count())
    }
}

/// How one simulated request or kernel operation turns out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ACK, or kernel success.
    Ok,
    /// NACK, or kernel failure.
    Nack,
    /// BUSY, or kernel failure.
    Busy,
    /// ERROR, or kernel failure.
    Error,
}

impl Outcome {
    fn response(self) -> ResponseType {
        match self {
            Self::Ok => ResponseType::Ack,
            Self::Nack => ResponseType::Nack,
            Self::Busy => ResponseType::Busy,
            Self::Error => ResponseType::Error,
        }
    }
}

/// Next outcome from `outcomes`, `Ok` once they run out.
fn next(outcomes: &mut dyn Iterator<Item = Outcome>) -> Outcome {
    outcomes.next().unwrap_or(Outcome::Ok)
}

/// Applies `event`, which the simulated driver only sends when valid.
fn apply(dev: &mut Device<'_>, index: usize, event: Event) -> PartState {
    dev.apply(index, event)
        .unwrap_or_else(|e| panic!("driver sent an invalid event: {e}"))
}

/// Sends `request`'s response through the model and the state machine, and
/// resolves a resulting `Failed` with a STATE query answered by the model.
fn answer(dev: &mut Device<'_>, model: &mut Model, index: usize, plug: bool, outcome: Outcome) {
    let response = outcome.response();
    if response == ResponseType::Ack {
        model.plugged[index] = plug;
    }
    let event = if plug {
        Event::plug_response(response)
    } else {
        Event::unplug_response(response)
    };
    if apply(dev, index, event) == PartState::Failed {
        apply(dev, index, Event::StateQueried(model.state_of(index)));
    }
}

/// Carries out `step` as a driver would, drawing each device response and
/// kernel result from `outcomes`.
pub fn execute(
    dev: &mut Device<'_>,
    model: &mut Model,
    step: Step,
    outcomes: &mut dyn Iterator<Item = Outcome>,
) {
    let index = step.index();
    if let Some(event) = step.start_event() {
        apply(dev, index, event);
    }
    match step {
        Step::Plug(_) => answer(dev, model, index, true, next(outcomes)),
        Step::Unplug(_) => answer(dev, model, index, false, next(outcomes)),
        Step::Online(_) => {
            let event = match next(outcomes) {
                Outcome::Ok => Event::Onlined,
                _ => Event::OnlineFailed,
            };
            apply(dev, index, event);
        }
        Step::Offline(_) => match next(outcomes) {
            Outcome::Ok => {
                apply(dev, index, Event::Offlined);
                answer(dev, model, index, false, next(outcomes));
            }
            _ => {
                apply(dev, index, Event::OfflineBusy);
            }
        },
    }
}

/// Plans and executes until the plan has no next step; returns the number
/// of steps, panicking if it does not settle within a generous bound.
pub fn drive(
    dev: &mut Device<'_>,
    model: &mut Model,
    requested_size: u64,
    outcomes: &mut dyn Iterator<Item = Outcome>,
) -> usize {
    let limit = 16 * dev.nr_partitions() + 256;
    for steps in 0..limit {
        check_invariant(dev, model);
        let plan = dev.plan(requested_size);
        match plan.next {
            None => return steps,
            Some(step) => execute(dev, model, step, outcomes),
        }
    }
    panic!("no convergence after {limit} steps: {:?}", dev.states());
}

/// The plugged-size invariant of the partition module.
pub fn check_invariant(dev: &Device<'_>, model: &Model) {
    use hotmem_vmem_logic::partition::DeviceView;
    let mut unknown_plugged = 0;
    for (i, state) in dev.states().iter().enumerate() {
        match state.device_view() {
            DeviceView::Plugged => assert!(model.plugged[i], "{i}: {state} but unplugged"),
            DeviceView::Unplugged => assert!(!model.plugged[i], "{i}: {state} but plugged"),
            DeviceView::Unknown => unknown_plugged += u64::from(model.plugged[i]),
        }
    }
    assert_eq!(
        dev.plugged_bytes(),
        model.plugged_bytes() - unknown_plugged * PARTITION
    );
    assert_eq!(
        dev.plugged_blocks() * BLOCK,
        dev.plugged_bytes(),
        "blocks and bytes agree"
    );
}
