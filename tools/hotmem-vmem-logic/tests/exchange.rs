//! The request/response helper over a scripted virtqueue: answers matched
//! by token, late answers dropped, one timeout for the whole wait, and
//! `NotSent` vs `NoAnswer` by whether the device may have seen the request.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::VecDeque;

use hotmem_vmem_logic::driver::RequestError;
use hotmem_vmem_logic::exchange::{exchange, Queue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Err {
    NoRoom,
    Broken,
    TimedOut,
}

/// What the device does when the driver waits.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// Uses the request of this token after this many ms.
    Answer { token: u64, after_ms: u64 },
    /// Nothing happens within the wait.
    Silence,
}

#[derive(Default)]
struct FakeQueue {
    now_ms: u64,
    next_token: u64,
    /// Used requests waiting for `get` (token, response).
    used: VecDeque<(u64, Vec<u8>)>,
    /// Requests added and not yet used: (token, request, response).
    pending: Vec<(u64, Vec<u8>, Vec<u8>)>,
    events: VecDeque<Event>,
    kicked: usize,
    fail_add: bool,
    fail_kick: bool,
    waits: Vec<u32>,
}

impl FakeQueue {
    fn use_request(&mut self, token: u64) {
        let i = self.pending.iter().position(|p| p.0 == token).unwrap();
        let (t, req, mut resp) = self.pending.remove(i);
        // The device answers with the request's first byte + 1.
        resp[0] = req[0] + 1;
        self.used.push_back((t, resp));
    }
}

impl Queue for FakeQueue {
    type Token = u64;
    type Used = (u64, Vec<u8>);
    type Error = Err;

    fn add(&mut self, request: &[u8], response: &[u8]) -> Result<u64, Err> {
        if self.fail_add {
            return Err(Err::NoRoom);
        }
        let t = self.next_token;
        self.next_token += 1;
        self.pending.push((t, request.to_vec(), response.to_vec()));
        Ok(t)
    }

    fn kick(&mut self) -> Result<(), Err> {
        if self.fail_kick {
            return Err(Err::Broken);
        }
        self.kicked += 1;
        Ok(())
    }

    fn get(&mut self) -> Result<Option<(u64, Vec<u8>)>, Err> {
        Ok(self.used.pop_front())
    }

    fn wait(&mut self, timeout_ms: u32) -> Result<(u64, Vec<u8>), Err> {
        self.waits.push(timeout_ms);
        if let Some(u) = self.used.pop_front() {
            return Ok(u);
        }
        match self.events.pop_front() {
            Some(Event::Answer { token, after_ms }) if after_ms <= u64::from(timeout_ms) => {
                self.now_ms += after_ms;
                self.use_request(token);
                Ok(self.used.pop_front().unwrap())
            }
            Some(Event::Answer { .. }) | Some(Event::Silence) | None => {
                self.now_ms += u64::from(timeout_ms);
                Err(Err::TimedOut)
            }
        }
    }

    fn token(used: &(u64, Vec<u8>)) -> u64 {
        used.0
    }

    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
}

#[test]
fn answer_is_returned() {
    let mut q = FakeQueue::default();
    q.events.push_back(Event::Answer {
        token: 0,
        after_ms: 3,
    });
    let used = exchange(&mut q, &[7], &[0xff, 0xff], 100).unwrap();
    assert_eq!(used, (0, vec![8, 0xff]));
    assert_eq!(q.kicked, 1);
    assert_eq!(q.waits, [100]);
}

#[test]
fn late_answer_is_dropped_and_the_timeout_covers_the_whole_wait() {
    let mut q = FakeQueue::default();
    // The first request gets no answer in time.
    q.events.push_back(Event::Silence);
    assert_eq!(
        exchange(&mut q, &[1], &[0], 50),
        Err(RequestError::NoAnswer(Err::TimedOut))
    );
    // The second one: the device answers the first (late) after 30 ms,
    // then the second after 15 more.
    q.events.push_back(Event::Answer {
        token: 0,
        after_ms: 30,
    });
    q.events.push_back(Event::Answer {
        token: 1,
        after_ms: 15,
    });
    let used = exchange(&mut q, &[5], &[0], 100).unwrap();
    assert_eq!(used, (1, vec![6]));
    assert_eq!(q.waits, [50, 100, 70], "the second wait is what is left");
    assert!(q.pending.is_empty() && q.used.is_empty());
}

#[test]
fn late_answers_already_used_are_taken_off_before_the_next_request() {
    let mut q = FakeQueue::default();
    q.events.push_back(Event::Silence);
    assert!(exchange(&mut q, &[1], &[0], 10).is_err());
    // The device used the abandoned request meanwhile.
    q.use_request(0);
    q.events.push_back(Event::Answer {
        token: 1,
        after_ms: 1,
    });
    assert_eq!(exchange(&mut q, &[2], &[0], 10).unwrap(), (1, vec![3]));
    assert_eq!(q.waits, [10, 10]);
}

#[test]
fn late_answers_do_not_extend_the_timeout() {
    let mut q = FakeQueue::default();
    for _ in 0..3 {
        q.events.push_back(Event::Silence);
    }
    for i in 0..3 {
        assert!(exchange(&mut q, &[i], &[0], 10).is_err());
    }
    // The abandoned requests are answered while the fourth waits, 4 ms
    // apart; the fourth never is, and the third answer would come too late.
    q.events.push_back(Event::Answer {
        token: 0,
        after_ms: 4,
    });
    q.events.push_back(Event::Answer {
        token: 1,
        after_ms: 4,
    });
    q.events.push_back(Event::Answer {
        token: 2,
        after_ms: 4,
    });
    let start = q.now_ms;
    assert_eq!(
        exchange(&mut q, &[9], &[0], 10),
        Err(RequestError::NoAnswer(Err::TimedOut))
    );
    assert_eq!(q.now_ms - start, 10, "gave up after the timeout");
    assert_eq!(&q.waits[3..], [10, 6, 2]);
}

#[test]
fn failures_before_the_kick_are_not_sent_and_after_it_no_answer() {
    let mut q = FakeQueue {
        fail_add: true,
        ..Default::default()
    };
    assert_eq!(
        exchange(&mut q, &[1], &[0], 10),
        Err(RequestError::NotSent(Err::NoRoom))
    );
    assert_eq!(q.kicked, 0);

    let mut q = FakeQueue {
        fail_kick: true,
        ..Default::default()
    };
    assert_eq!(
        exchange(&mut q, &[1], &[0], 10),
        Err(RequestError::NoAnswer(Err::Broken))
    );
    assert!(q.waits.is_empty());
}

#[test]
fn zero_timeout_looks_once() {
    let mut q = FakeQueue::default();
    q.events.push_back(Event::Answer {
        token: 0,
        after_ms: 0,
    });
    assert_eq!(exchange(&mut q, &[1], &[0], 0).unwrap(), (0, vec![2]));
    assert_eq!(q.waits, [0]);
}
