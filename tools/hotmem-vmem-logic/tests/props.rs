//! Property tests: random event sequences, random device states and random
//! device behaviour.

mod common;

use common::*;
use hotmem_vmem_logic::partition::{transition, Change, Device, Event, PartState, Step};
use hotmem_vmem_logic::wire::{BlockState, Config, Request, RequestType, Response};
use proptest::prelude::*;

fn any_state() -> impl Strategy<Value = PartState> {
    prop::sample::select(PartState::ALL.to_vec())
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        prop::sample::select(PLAIN_EVENTS.to_vec()),
        prop::sample::select(BlockState::ALL.to_vec()).prop_map(Event::StateQueried),
    ]
}

fn any_outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(vec![
        Outcome::Ok,
        Outcome::Nack,
        Outcome::Busy,
        Outcome::Error,
    ])
}

/// The states a partition rests in when no operation is going on.
fn resting_state() -> impl Strategy<Value = PartState> {
    prop::sample::select(vec![
        PartState::Unplugged,
        PartState::Plugged,
        PartState::Online,
        PartState::Bound,
    ])
}

/// Checks what a plan promises about the device it was made for.
fn check_plan(dev: &Device<'_>, requested: u64) {
    let plan = dev.plan(requested);
    let states = dev.states();
    assert_eq!(plan.target as u64, requested / PARTITION);
    assert_eq!(plan.remainder, requested % PARTITION);
    assert_eq!(plan.current, dev.census().committed());
    match plan.change {
        Change::Hold => assert_eq!(plan.current, plan.target),
        Change::Grow(by) => {
            assert_eq!(plan.current + by, plan.target);
            assert!(plan.shortfall <= by);
        }
        Change::Shrink(by) => {
            assert_eq!(plan.target + by, plan.current);
            assert!(plan.shortfall <= by);
        }
    }
    if let Some(step) = plan.next {
        let state = states[step.index()];
        assert_ne!(state, PartState::Bound, "plan chose a bound partition");
        match step {
            Step::Plug(i) => {
                assert_eq!(state, PartState::Unplugged);
                assert!(i < dev.usable_partitions());
                assert!(matches!(plan.change, Change::Grow(_)));
            }
            Step::Online(_) => {
                assert_eq!(state, PartState::Plugged);
                assert!(!matches!(plan.change, Change::Shrink(_)));
            }
            Step::Offline(_) => {
                assert_eq!(state, PartState::Online);
                assert!(matches!(plan.change, Change::Shrink(_)));
            }
            Step::Unplug(_) => {
                assert_eq!(state, PartState::Plugged);
                assert!(matches!(plan.change, Change::Shrink(_)));
            }
        }
    } else {
        // Nothing to do only when nothing can be done.
        assert_eq!(dev.census().plugged, 0);
        match plan.change {
            Change::Hold => {}
            Change::Grow(by) | Change::Shrink(by) => assert_eq!(plan.shortfall, by),
        }
    }
    for i in dev.unplug_candidates() {
        assert!(matches!(states[i], PartState::Online | PartState::Plugged));
    }
    for i in dev.plug_candidates() {
        assert_eq!(states[i], PartState::Unplugged);
        assert!(i < dev.usable_partitions());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary events on arbitrary (even out-of-range) partitions never
    /// panic; a rejected event changes nothing, an accepted one changes
    /// exactly that partition as `transition` says.
    #[test]
    fn random_events_never_panic(
        n in 1usize..12,
        events in prop::collection::vec((0usize..16, any_event()), 0..200),
        requested in any::<u64>(),
        usable in any::<u64>(),
    ) {
        let mut states = vec![PartState::Unplugged; n];
        let mut dev = Device::new(geometry(n), usable, &mut states).unwrap();
        for (index, event) in events {
            let before = dev.states().to_vec();
            let result = dev.apply(index, event);
            match (before.get(index), result) {
                (Some(&from), Ok(to)) => {
                    prop_assert_eq!(transition(from, event), Ok(to));
                    prop_assert_eq!(dev.state(index), Some(to));
                }
                (_, Err(_)) => prop_assert_eq!(dev.states(), before.as_slice()),
                (None, Ok(_)) => prop_assert!(false, "out of range accepted"),
            }
            let census = dev.census();
            let total: usize = PartState::ALL.iter().map(|&s| census.count(s)).sum();
            prop_assert_eq!(total, n);
            check_plan(&dev, requested);
        }
    }

    /// With the device answering STATE truthfully, the driver's plugged size
    /// always matches the device (see the partition module's invariant),
    /// whatever the driver tries and however the device answers.
    #[test]
    fn plugged_size_invariant(
        n in 1usize..10,
        events in prop::collection::vec((0usize..10, any_event()), 0..300),
    ) {
        let mut states = vec![PartState::Unplugged; n];
        let mut dev = Device::new(geometry(n), parts(n), &mut states).unwrap();
        let mut model = Model::new(n);
        for (index, event) in events {
            let event = match event {
                // The device answers STATE with the truth.
                Event::StateQueried(_) if index < n => Event::StateQueried(model.state_of(index)),
                other => other,
            };
            if dev.apply(index, event).is_ok() {
                match event {
                    Event::PlugAcked => model.plugged[index] = true,
                    Event::UnplugAcked => model.plugged[index] = false,
                    _ => {}
                }
            }
            check_invariant(&dev, &model);
        }
        // Resolving every unknown partition makes the sizes equal.
        for i in 0..n {
            if dev.state(i) == Some(PartState::Failed) {
                dev.apply(i, Event::StateQueried(model.state_of(i))).unwrap();
            }
        }
        prop_assert_eq!(dev.unknown_partitions(), 0);
        prop_assert_eq!(dev.plugged_bytes(), model.plugged_bytes());
    }

    /// The plan never selects a bound partition, nor does an explicit
    /// unplug take one, from any mix of states.
    #[test]
    fn plan_never_selects_bound(
        states in prop::collection::vec(any_state(), 1..16),
        requested in any::<u64>(),
        usable in any::<u64>(),
        pick in 0usize..20,
    ) {
        let n = states.len();
        let mut states = states;
        let bound_before: Vec<bool> = states.iter().map(|&s| s == PartState::Bound).collect();
        let mut dev = Device::new(geometry(n), usable, &mut states).unwrap();
        check_plan(&dev, requested);
        let online = dev.census().online;
        match dev.pick_for_unplug(pick) {
            Ok(claimed) => prop_assert_eq!(claimed, pick),
            Err(_) => prop_assert!(pick > online),
        }
        for (i, &was_bound) in bound_before.iter().enumerate() {
            prop_assert_eq!(was_bound, dev.state(i) == Some(PartState::Bound));
        }
        for i in 0..n + 2 {
            let before = dev.state(i);
            if dev.unplug_partition(i).is_ok() {
                prop_assert_eq!(before, Some(PartState::Online));
            } else {
                prop_assert_eq!(dev.state(i), before);
            }
        }
    }

    /// From any resting state, with every request and kernel operation
    /// succeeding, planning converges: to the requested size in whole
    /// partitions when enough partitions are free, else as close as the
    /// bound partitions and the usable region allow.
    #[test]
    fn plan_converges(
        states in prop::collection::vec(resting_state(), 1..16),
        requested_parts in 0usize..20,
        extra in 0u64..PARTITION,
        usable_parts in 0usize..20,
    ) {
        let n = states.len();
        let mut states = states;
        let mut model = Model::matching(&states);
        let bound = states.iter().filter(|&&s| s == PartState::Bound).count();
        let not_unplugged = states.iter().filter(|&&s| s != PartState::Unplugged).count();
        let pluggable = states
            .iter()
            .enumerate()
            .filter(|&(i, &s)| s == PartState::Unplugged && i < usable_parts)
            .count();
        let requested = parts(requested_parts) + extra;
        let mut dev = Device::new(geometry(n), parts(usable_parts), &mut states).unwrap();
        drive(&mut dev, &mut model, requested, &mut std::iter::empty());
        let expected = requested_parts.clamp(bound, not_unplugged + pluggable);
        prop_assert_eq!(dev.plugged_bytes(), parts(expected));
        prop_assert_eq!(dev.census().bound, bound, "bound partitions untouched");
        prop_assert_eq!(dev.census().plugged, 0, "everything plugged is online");
        let plan = dev.plan(requested);
        prop_assert_eq!(plan.next, None);
        if bound <= requested_parts && requested_parts <= not_unplugged + pluggable {
            prop_assert!(plan.is_settled());
        } else {
            prop_assert!(plan.shortfall > 0);
        }
    }

    /// Random device answers and kernel failures keep the invariant; once
    /// they stop, the plan still converges.
    #[test]
    fn converges_after_random_failures(
        n in 1usize..10,
        targets in prop::collection::vec(0usize..12, 1..6),
        outcomes in prop::collection::vec(any_outcome(), 0..60),
    ) {
        let mut states = vec![PartState::Unplugged; n];
        let mut dev = Device::new(geometry(n), parts(n), &mut states).unwrap();
        let mut model = Model::new(n);
        let mut outcomes = outcomes.into_iter();
        for &target in &targets {
            drive(&mut dev, &mut model, parts(target), &mut outcomes);
            check_invariant(&dev, &model);
            prop_assert_eq!(dev.plugged_bytes(), parts(target.min(n)));
        }
    }

    /// Decoders never panic on arbitrary bytes, and whatever they accept
    /// encodes back to the same meaning.
    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(request) = Request::decode(&bytes) {
            prop_assert_eq!(Request::decode(&request.to_bytes()), Ok(request));
        }
        for kind in RequestType::ALL {
            if let Ok(response) = Response::decode(&bytes, kind) {
                prop_assert_eq!(Response::decode(&response.to_bytes(), kind), Ok(response));
            }
        }
        if let Ok(config) = Config::decode(&bytes) {
            prop_assert_eq!(Config::decode(&config.to_bytes()), Ok(config));
            // Validation of arbitrary configurations never panics either.
            let _ = config.validate(MEMORY_BLOCK, PARTITION);
        }
    }

    /// Validation never panics, and a geometry it returns is consistent.
    #[test]
    fn validate_never_panics(
        config in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        shifts in (0u32..64, 0u32..64, 0u32..64, 0u32..64),
        memory_block in any::<u64>(),
        partition in any::<u64>(),
    ) {
        let (s_block, s_mb, s_part, s_addr) = shifts;
        // Half the time use power-of-two sizes so validation goes deeper.
        let config = Config {
            block_size: if config.0 % 2 == 0 { 1 << s_block } else { config.0 },
            node_id: 0,
            addr: if config.1 % 2 == 0 { (config.1 >> s_addr) << s_addr } else { config.1 },
            region_size: config.2 >> (config.2 % 64),
            usable_region_size: config.3 >> (config.3 % 64),
            plugged_size: config.4 >> (config.4 % 64),
            requested_size: config.5 >> (config.5 % 64),
        };
        for (mb, part) in [(memory_block, partition), (1 << s_mb, 1 << s_part)] {
            if let Ok(g) = config.validate(mb, part) {
                prop_assert!(g.nr_partitions() >= 1);
                let last = g.nr_partitions() - 1;
                let range = g.partition_range(last).unwrap();
                prop_assert_eq!(g.partition_index(range), Ok(last));
                prop_assert!(range.addr >= config.addr);
                let end = u128::from(range.addr) + u128::from(g.partition_size());
                prop_assert!(end <= u128::from(config.addr) + u128::from(config.region_size));
                prop_assert_eq!(
                    u64::from(g.blocks_per_partition()) * g.block_size(),
                    g.partition_size()
                );
                prop_assert!(g.usable_partitions(config.usable_region_size) <= g.nr_partitions());
            }
        }
    }
}
