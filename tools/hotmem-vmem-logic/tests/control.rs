//! sysfs input and errnos, the guest hold-back, and the probe-time sync.

use hotmem_vmem_logic::control::{
    parse_decimal, partition_addr, partition_id, probe_sync, HoldBack, ParseError, ProbeSync,
    Refusal,
};
use hotmem_vmem_logic::partition::{PartState, UnplugError};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const PART: u64 = 128 * MIB;

#[test]
fn parses_what_echo_writes() {
    assert_eq!(parse_decimal(b"32\n"), Ok(32));
    assert_eq!(parse_decimal(b"0"), Ok(0));
    assert_eq!(parse_decimal(b"007\n"), Ok(7));
    assert_eq!(
        parse_decimal(b"18446744073709551615"),
        Ok(u64::MAX),
        "u64::MAX"
    );
}

#[test]
fn rejects_everything_else() {
    assert_eq!(parse_decimal(b""), Err(ParseError::Empty));
    assert_eq!(parse_decimal(b"\n"), Err(ParseError::Empty));
    for bad in [
        &b"-1"[..],
        b"+1",
        b" 1",
        b"1 ",
        b"0x10",
        b"1\n\n",
        b"1\n2",
        b"bogus",
        b"\xff",
    ] {
        assert_eq!(parse_decimal(bad), Err(ParseError::NotDecimal), "{bad:?}");
    }
    assert_eq!(
        parse_decimal(b"18446744073709551616"),
        Err(ParseError::Overflow)
    );
}

#[test]
fn refusal_errnos() {
    let cases = [
        (
            UnplugError::OutOfRange {
                index: 9,
                nr_partitions: 4,
            },
            Refusal::Invalid,
        ),
        (
            UnplugError::NotOnline {
                index: 1,
                state: PartState::Unplugged,
            },
            Refusal::Invalid,
        ),
        (UnplugError::Busy { index: 1 }, Refusal::Busy),
        (
            UnplugError::NotEnough {
                wanted: 3,
                online: 1,
                bound: 1,
            },
            Refusal::Busy,
        ),
        (
            UnplugError::NotEnough {
                wanted: 3,
                online: 1,
                bound: 0,
            },
            Refusal::NotEnough,
        ),
    ];
    for (error, refusal) in cases {
        assert_eq!(Refusal::of(&error), refusal, "{error:?}");
    }
}

#[test]
fn partition_ids_are_physical() {
    assert_eq!(partition_id(4 << 30, PART), 32);
    assert_eq!(partition_addr(32, PART), Some(4 << 30));
    assert_eq!(partition_addr(u64::MAX, PART), None);
    assert_eq!(partition_id(4 << 30, 0), 0, "no division by zero");
}

#[test]
fn hold_back_caps_until_the_request_changes() {
    let mut hold = HoldBack::default();
    assert_eq!(hold.target_bytes(4 * PART, PART), 4 * PART);
    // The guest gave one of four partitions back while 4 were requested.
    hold.set(3, 4 * PART);
    assert_eq!(hold.cap(), Some(3));
    assert_eq!(hold.target_bytes(4 * PART, PART), 3 * PART);
    assert_eq!(hold.target_bytes(4 * PART, PART), 3 * PART, "stays");
    // A new request lifts it, even a larger one.
    assert_eq!(hold.target_bytes(5 * PART, PART), 5 * PART);
    assert_eq!(hold.cap(), None);
    assert_eq!(hold.target_bytes(4 * PART, PART), 4 * PART);
    // A cap above the request does not raise the target.
    hold.set(8, 2 * PART);
    assert_eq!(hold.target_bytes(2 * PART, PART), 2 * PART);
}

#[test]
fn probe_sync_choices() {
    assert_eq!(probe_sync(0, 0), ProbeSync::Nothing);
    assert_eq!(probe_sync(PART, 0), ProbeSync::UnplugAll);
    assert_eq!(probe_sync(PART, 1), ProbeSync::Resolve);
    // Added memory the device says is not plugged: resolve (and refuse).
    assert_eq!(probe_sync(0, 1), ProbeSync::Resolve);
}

proptest! {
    #[test]
    fn parse_round_trips(n in any::<u64>(), newline in any::<bool>()) {
        let mut text = n.to_string();
        if newline {
            text.push('\n');
        }
        prop_assert_eq!(parse_decimal(text.as_bytes()), Ok(n));
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        let r = parse_decimal(&bytes);
        if let Ok(n) = r {
            let digits = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            prop_assert_eq!(std::str::from_utf8(digits).unwrap().parse::<u64>().unwrap(), n);
        }
    }

    #[test]
    fn hold_back_never_raises_the_target(
        cap in 0usize..64,
        then in 0u64..64,
        now in 0u64..64,
    ) {
        let mut hold = HoldBack::default();
        hold.set(cap, then * PART);
        let target = hold.target_bytes(now * PART, PART);
        prop_assert!(target <= now * PART);
        if now == then {
            prop_assert_eq!(target, (now.min(cap as u64)) * PART);
        } else {
            prop_assert_eq!(target, now * PART);
            prop_assert_eq!(hold.cap(), None);
        }
    }
}
