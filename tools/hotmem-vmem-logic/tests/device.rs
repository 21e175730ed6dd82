//! `Device`: events, counting, planning and explicit unplug requests.

mod common;

use common::*;
use hotmem_vmem_logic::partition::{
    ApplyError, Census, Change, Device, Event, InvalidTransition, LengthMismatch, NotQuiescent,
    PartState as S, Plan, Step, UnplugError,
};

#[test]
fn new_checks_the_slice_length() {
    let mut states = [S::Unplugged; 3];
    assert_eq!(
        Device::new(geometry(4), parts(4), &mut states).unwrap_err(),
        LengthMismatch {
            expected: 4,
            got: 3
        }
    );
    let dev = Device::new(geometry(3), parts(3), &mut states).unwrap();
    assert_eq!(dev.nr_partitions(), 3);
    assert_eq!(dev.usable_partitions(), 3);
    assert_eq!(dev.geometry().nr_partitions(), 3);
}

#[test]
fn apply_changes_one_partition_or_nothing() {
    let mut states = [S::Unplugged; 3];
    let mut dev = device(&mut states);
    assert_eq!(dev.apply(1, Event::StartPlug), Ok(S::Plugging));
    assert_eq!(dev.state(1), Some(S::Plugging));
    assert_eq!(
        dev.apply(1, Event::StartPlug),
        Err(ApplyError::Invalid(InvalidTransition {
            from: S::Plugging,
            event: Event::StartPlug
        }))
    );
    assert_eq!(
        dev.apply(3, Event::StartPlug),
        Err(ApplyError::OutOfRange {
            index: 3,
            nr_partitions: 3
        })
    );
    assert_eq!(dev.state(3), None);
    assert_eq!(dev.states(), &[S::Unplugged, S::Plugging, S::Unplugged]);
    assert!(!ApplyError::OutOfRange {
        index: 3,
        nr_partitions: 3
    }
    .to_string()
    .is_empty());
}

#[test]
fn counting() {
    let mut states = S::ALL;
    let dev = device(&mut states);
    let census = dev.census();
    for state in S::ALL {
        assert_eq!(census.count(state), 1);
    }
    assert_eq!(census.device_plugged(), 5);
    assert_eq!(census.committed(), 4);
    assert_eq!(dev.plugged_bytes(), parts(5));
    assert_eq!(dev.plugged_blocks(), 5 * BLOCKS_PER_PARTITION);
    assert_eq!(dev.unknown_partitions(), 1);
    assert_eq!(Census::of(&[]), Census::default());
    assert_eq!(
        dev.indices_in(S::Online).collect::<Vec<_>>(),
        vec![S::ALL.iter().position(|&s| s == S::Online).unwrap()]
    );
}

fn plan_of(states: &mut [S], requested: u64) -> Plan {
    device(states).plan(requested)
}

#[test]
fn grow_from_empty_plugs_lowest_first() {
    let mut states = [S::Unplugged; 8];
    let plan = plan_of(&mut states, parts(3));
    assert_eq!(
        plan,
        Plan {
            target: 3,
            remainder: 0,
            current: 0,
            change: Change::Grow(3),
            shortfall: 0,
            next: Some(Step::Plug(0)),
        }
    );
    let mut model = Model::new(8);
    let mut dev = device(&mut states);
    drive(&mut dev, &mut model, parts(3), &mut std::iter::empty());
    assert_eq!(
        dev.states(),
        &[
            S::Online,
            S::Online,
            S::Online,
            S::Unplugged,
            S::Unplugged,
            S::Unplugged,
            S::Unplugged,
            S::Unplugged
        ]
    );
    assert!(dev.plan(parts(3)).is_settled());
    assert_eq!(dev.plugged_bytes(), parts(3));
}

#[test]
fn grow_skips_partitions_that_are_not_unplugged() {
    let mut states = [S::Online, S::Unplugged, S::Failed, S::Unplugged, S::Bound];
    let dev = device(&mut states);
    assert_eq!(dev.plug_candidates().collect::<Vec<_>>(), vec![1, 3]);
    let plan = dev.plan(parts(4));
    assert_eq!(plan.current, 2);
    assert_eq!(plan.change, Change::Grow(2));
    assert_eq!(plan.shortfall, 0);
    assert_eq!(plan.next, Some(Step::Plug(1)));
    // Failed partitions are neither counted nor chosen: one short.
    let plan = dev.plan(parts(5));
    assert_eq!(plan.change, Change::Grow(3));
    assert_eq!(plan.shortfall, 1);
}

#[test]
fn grow_onlines_plugged_partitions_first() {
    let mut states = [S::Unplugged, S::Plugged, S::Plugged];
    let plan = plan_of(&mut states, parts(3));
    assert_eq!(plan.current, 2);
    assert_eq!(plan.next, Some(Step::Online(1)));
    // At the target, a plugged partition is still onlined.
    let plan = plan_of(&mut states, parts(2));
    assert_eq!(plan.change, Change::Hold);
    assert_eq!(plan.next, Some(Step::Online(1)));
    assert!(!plan.is_settled());
}

#[test]
fn shrink_prefers_plugged_then_highest_online_and_never_bound() {
    let mut states = [S::Online, S::Bound, S::Plugged, S::Online, S::Bound];
    let dev = device(&mut states);
    assert_eq!(dev.unplug_candidates().collect::<Vec<_>>(), vec![2, 3, 0]);
    let plan = dev.plan(parts(1));
    assert_eq!(plan.current, 5);
    assert_eq!(plan.change, Change::Shrink(4));
    assert_eq!(plan.shortfall, 1, "two bound, three candidates");
    assert_eq!(plan.next, Some(Step::Unplug(2)));

    let mut model = Model::matching(&states);
    let mut dev = device(&mut states);
    drive(&mut dev, &mut model, parts(1), &mut std::iter::empty());
    assert_eq!(
        dev.states(),
        &[S::Unplugged, S::Bound, S::Unplugged, S::Unplugged, S::Bound]
    );
    let plan = dev.plan(parts(1));
    assert_eq!(
        (plan.change, plan.shortfall, plan.next),
        (Change::Shrink(1), 1, None)
    );

    // When a bound partition is released, the plan finishes the job.
    dev.apply(4, Event::KernelReleased).unwrap();
    assert_eq!(dev.plan(parts(1)).next, Some(Step::Offline(4)));
    drive(&mut dev, &mut model, parts(1), &mut std::iter::empty());
    assert!(dev.plan(parts(1)).is_settled());
    assert_eq!(dev.plugged_bytes(), parts(1));
}

#[test]
fn shrink_with_only_bound_partitions_is_all_shortfall() {
    let mut states = [S::Bound; 4];
    let plan = plan_of(&mut states, 0);
    assert_eq!(plan.change, Change::Shrink(4));
    assert_eq!(plan.shortfall, 4);
    assert_eq!(plan.next, None);
}

#[test]
fn already_at_target() {
    let mut states = [S::Online, S::Bound, S::Unplugged];
    let plan = plan_of(&mut states, parts(2));
    assert_eq!(plan.change, Change::Hold);
    assert_eq!(plan.shortfall, 0);
    assert!(plan.is_settled());
    let mut empty = [S::Unplugged; 3];
    assert!(plan_of(&mut empty, 0).is_settled());
}

#[test]
fn requested_size_rounds_down_to_whole_partitions() {
    let mut states = [S::Unplugged; 4];
    let plan = plan_of(&mut states, parts(2) + 100 * MIB);
    assert_eq!((plan.target, plan.remainder), (2, 100 * MIB));
    assert_eq!(plan.change, Change::Grow(2));
    let plan = plan_of(&mut states, PARTITION - BLOCK);
    assert_eq!((plan.target, plan.remainder), (0, PARTITION - BLOCK));
    assert!(plan.is_settled());

    // Shrinking rounds down too: 3 plugged, 2.5 requested -> 2.
    let mut states = [S::Online, S::Online, S::Online, S::Unplugged];
    let plan = plan_of(&mut states, parts(2) + PARTITION / 2);
    assert_eq!(plan.change, Change::Shrink(1));
    assert_eq!(plan.next, Some(Step::Offline(2)));
}

#[test]
fn requests_beyond_the_region_are_shortfall() {
    let mut states = [S::Unplugged; 2];
    for requested in [parts(5), u64::MAX] {
        let plan = plan_of(&mut states, requested);
        assert_eq!(plan.change, Change::Grow(plan.target));
        assert_eq!(plan.shortfall, plan.target - 2);
        assert_eq!(plan.next, Some(Step::Plug(0)));
    }
}

#[test]
fn plugging_is_limited_to_the_usable_region() {
    let mut states = [S::Unplugged; 4];
    let mut dev = Device::new(geometry(4), parts(1) + PARTITION / 2, &mut states).unwrap();
    assert_eq!(dev.usable_partitions(), 1);
    let plan = dev.plan(parts(3));
    assert_eq!((plan.change, plan.shortfall), (Change::Grow(3), 2));
    let mut model = Model::new(4);
    drive(&mut dev, &mut model, parts(3), &mut std::iter::empty());
    assert_eq!(dev.plugged_bytes(), parts(1));
    dev.set_usable_region_size(parts(4));
    assert_eq!(dev.usable_partitions(), 4);
    drive(&mut dev, &mut model, parts(3), &mut std::iter::empty());
    assert_eq!(dev.plugged_bytes(), parts(3));
}

#[test]
fn in_flight_partitions_count_toward_the_target() {
    // A PLUG in flight counts (no second PLUG); an unplug in progress
    // counts as gone (no second unplug).
    let mut states = [S::Plugging, S::Unplugged, S::Offlining, S::Unplugging];
    let plan = plan_of(&mut states, parts(1));
    assert_eq!(plan.current, 1);
    assert!(plan.is_settled());
}

#[test]
fn failures_roll_back_and_the_plan_recovers() {
    let mut states = [S::Unplugged; 4];
    let mut model = Model::new(4);
    let mut dev = device(&mut states);
    let outcomes = [
        Outcome::Busy,  // PLUG 0
        Outcome::Nack,  // PLUG 0
        Outcome::Error, // PLUG 0 -> Failed -> STATE -> Unplugged
        Outcome::Ok,    // PLUG 0
        Outcome::Busy,  // online 0 fails -> Plugged
        Outcome::Ok,    // online 0
    ];
    drive(&mut dev, &mut model, parts(1), &mut outcomes.into_iter());
    assert_eq!(dev.states()[0], S::Online);

    let outcomes = [
        Outcome::Busy,  // offline 0 busy -> Online
        Outcome::Ok,    // offline 0
        Outcome::Busy,  // UNPLUG 0 busy -> Plugged
        Outcome::Error, // UNPLUG 0 -> Failed -> STATE -> Plugged
        Outcome::Ok,    // UNPLUG 0
    ];
    drive(&mut dev, &mut model, 0, &mut outcomes.into_iter());
    assert_eq!(dev.states(), &[S::Unplugged; 4]);
    check_invariant(&dev, &model);
}

#[test]
fn failed_unplug_leaves_plugged_and_is_re_onlined_if_wanted() {
    let mut states = [S::Unplugging, S::Online];
    let mut dev = device(&mut states);
    assert_eq!(dev.apply(0, Event::UnplugBusy), Ok(S::Plugged));
    // The host raised the request again meanwhile: online it.
    assert_eq!(dev.plan(parts(2)).next, Some(Step::Online(0)));
    // Still shrinking: retry the unplug.
    assert_eq!(dev.plan(parts(1)).next, Some(Step::Unplug(0)));
}

#[test]
fn pick_for_unplug_claims_the_highest_online_partitions() {
    let mut states = [S::Online, S::Bound, S::Online, S::Plugged, S::Online];
    let mut dev = device(&mut states);
    assert_eq!(dev.pick_for_unplug(0), Ok(0));
    assert_eq!(dev.pick_for_unplug(2), Ok(2));
    assert_eq!(
        dev.states(),
        &[S::Online, S::Bound, S::Offlining, S::Plugged, S::Offlining]
    );
    assert_eq!(dev.indices_in(S::Offlining).collect::<Vec<_>>(), vec![2, 4]);
    // All or nothing.
    let before = dev.states().to_vec();
    assert_eq!(
        dev.pick_for_unplug(2),
        Err(UnplugError::NotEnough {
            wanted: 2,
            online: 1,
            bound: 1
        })
    );
    assert_eq!(dev.states(), before.as_slice());
    assert_eq!(dev.pick_for_unplug(1), Ok(1));
    assert_eq!(dev.states()[0], S::Offlining);
    assert!(matches!(
        dev.pick_for_unplug(usize::MAX),
        Err(UnplugError::NotEnough { .. })
    ));
}

#[test]
fn unplug_partition_errors() {
    let mut states = S::ALL;
    let mut dev = device(&mut states);
    for (index, state) in S::ALL.into_iter().enumerate() {
        let expected = match state {
            S::Online => Ok(S::Offlining),
            S::Bound => Err(UnplugError::Busy { index }),
            _ => Err(UnplugError::NotOnline { index, state }),
        };
        assert_eq!(dev.unplug_partition(index), expected, "{state}");
    }
    assert_eq!(
        dev.unplug_partition(8),
        Err(UnplugError::OutOfRange {
            index: 8,
            nr_partitions: 8
        })
    );
    for e in [
        UnplugError::OutOfRange {
            index: 8,
            nr_partitions: 8,
        },
        UnplugError::NotOnline {
            index: 0,
            state: S::Plugging,
        },
        UnplugError::Busy { index: 4 },
        UnplugError::NotEnough {
            wanted: 2,
            online: 1,
            bound: 1,
        },
    ] {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn reset_and_unplug_all() {
    let mut states = [S::Unplugged, S::Plugged, S::Failed];
    let mut dev = device(&mut states);
    assert_eq!(dev.check_quiescent(), Ok(()));
    assert_eq!(dev.reset(parts(1)), Ok(()));
    assert_eq!(dev.states(), &[S::Failed; 3]);
    assert_eq!(dev.plugged_bytes(), 0);
    assert_eq!(dev.unknown_partitions(), 3);
    assert_eq!(dev.unplug_all_acked(), Ok(()));
    assert_eq!(dev.states(), &[S::Unplugged; 3]);
    assert_eq!(dev.reset(0), Ok(()));
    assert_eq!(dev.states(), &[S::Unplugged; 3]);

    for busy in [
        S::Plugging,
        S::Online,
        S::Bound,
        S::Offlining,
        S::Unplugging,
    ] {
        let mut states = [S::Unplugged, busy, S::Plugged];
        let mut dev = device(&mut states);
        let err = NotQuiescent {
            index: 1,
            state: busy,
        };
        assert_eq!(dev.check_quiescent(), Err(err));
        assert_eq!(dev.reset(0), Err(err));
        assert_eq!(dev.unplug_all_acked(), Err(err));
        assert_eq!(dev.states(), &[S::Unplugged, busy, S::Plugged]);
        assert!(err.to_string().contains(busy.name()));
    }
}
