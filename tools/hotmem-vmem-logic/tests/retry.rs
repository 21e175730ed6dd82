//! BUSY backoff and the action for every (request, response) pair.

use hotmem_vmem_logic::retry::{next_action, Action, RetryPolicy};
use hotmem_vmem_logic::wire::{RequestType, ResponseType};

#[test]
fn default_policy() {
    let p = RetryPolicy::default();
    assert_eq!(p, RetryPolicy::DEFAULT);
    let delays: Vec<_> = (1..=13).map(|a| p.delay_after(a)).collect();
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 102_400, 120_000, 120_000]
            .map(Some)
    );
    assert_eq!(p.delay_after(0), Some(100), "0 is taken as 1");
    assert_eq!(p.delay_after(1000), Some(120_000), "never gives up");
    // Faster than Linux's driver (5 s .. 5 min): the first five retries
    // come within the first of its waits.
    assert!(delays.iter().take(5).map(|d| d.unwrap()).sum::<u32>() < 5_000);
}

#[test]
fn extreme_policies_never_overflow() {
    let huge = RetryPolicy {
        first_delay_ms: u32::MAX,
        max_delay_ms: u32::MAX,
        max_attempts: u32::MAX,
    };
    assert_eq!(huge.delay_after(1), Some(u32::MAX));
    assert_eq!(huge.delay_after(40), Some(u32::MAX));
    assert_eq!(huge.delay_after(u32::MAX - 1), Some(u32::MAX));
    assert_eq!(huge.delay_after(u32::MAX), None);
    assert_eq!(
        huge.total_delay_ms(),
        u64::from(u32::MAX - 1) * u64::from(u32::MAX)
    );

    let slow_cap = RetryPolicy {
        first_delay_ms: 1,
        max_delay_ms: u32::MAX,
        max_attempts: u32::MAX,
    };
    assert_eq!(slow_cap.delay_after(32), Some(1 << 31));
    assert_eq!(slow_cap.delay_after(33), Some(u32::MAX), "2^32 saturates");
    assert_eq!(slow_cap.delay_after(200), Some(u32::MAX));
    assert!(slow_cap.total_delay_ms() > 0);

    let no_retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    assert_eq!(no_retry.delay_after(1), None);
    assert_eq!(no_retry.total_delay_ms(), 0);
    let zero = RetryPolicy {
        first_delay_ms: 0,
        max_delay_ms: 0,
        max_attempts: 0,
    };
    assert_eq!(zero.delay_after(0), None);
    assert_eq!(zero.total_delay_ms(), 0);
    let cap_below_first = RetryPolicy {
        first_delay_ms: 100,
        max_delay_ms: 30,
        max_attempts: 4,
    };
    assert_eq!(cap_below_first.delay_after(1), Some(30));
    assert_eq!(cap_below_first.total_delay_ms(), 90);
}

#[test]
fn action_table() {
    use Action::*;
    use RequestType::*;
    let p = RetryPolicy::DEFAULT;
    let retry = Retry { delay_ms: 100 };
    let table = [
        (Plug, [Done, Refused, retry, QueryState]),
        (Unplug, [Done, retry, retry, QueryState]),
        (UnplugAll, [Done, Broken, retry, Broken]),
        (State, [Done, Broken, retry, Broken]),
    ];
    for (request, actions) in table {
        for (response, expected) in ResponseType::ALL.into_iter().zip(actions) {
            assert_eq!(
                next_action(&p, request, response, 1),
                expected,
                "{response:?} to {request:?}"
            );
        }
    }
}

#[test]
fn busy_backs_off_then_gives_up() {
    let p = RetryPolicy {
        max_attempts: 10,
        ..RetryPolicy::DEFAULT
    };
    for request in RequestType::ALL {
        let mut waited = 0u64;
        let mut attempt = 1;
        loop {
            match next_action(&p, request, ResponseType::Busy, attempt) {
                Action::Retry { delay_ms } => waited += u64::from(delay_ms),
                Action::GiveUp => break,
                other => panic!("{other:?}"),
            }
            attempt += 1;
        }
        assert_eq!(attempt, p.max_attempts);
        assert_eq!(waited, p.total_delay_ms());
    }
    assert_eq!(
        next_action(&p, RequestType::Unplug, ResponseType::Nack, 10),
        Action::GiveUp
    );
}
