//! Cancellation of running requests: the host's `cancel` operation (sent
//! when its own timeout expired) and a host that disconnects both stop the
//! guest-side work instead of letting it run on unobserved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hotmem_proto::{ErrorInfo, ErrorKind};

/// Longest pause between two looks at a token while waiting.
pub const CHECK_EVERY: Duration = Duration::from_millis(20);

/// A flag a long operation checks while it waits.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody can cancel (for callers without a request).
    pub fn never() -> Self {
        Self::default()
    }

    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(cancelled)` once cancelled, for `?` in wait loops.
    pub fn check(&self, what: &str) -> Result<(), ErrorInfo> {
        if self.is_cancelled() {
            return Err(cancelled(what));
        }
        Ok(())
    }

    /// Sleeps `d` (in slices of at most [`CHECK_EVERY`]); false if
    /// cancelled meanwhile.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.is_cancelled() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(CHECK_EVERY));
        }
    }
}

/// The error a cancelled request is answered with.
pub fn cancelled(what: &str) -> ErrorInfo {
    ErrorInfo::new(
        ErrorKind::Cancelled,
        format!("{what}: cancelled by the host"),
    )
}

/// The requests being served, by request id.
#[derive(Debug, Default)]
pub struct Registry {
    running: Mutex<HashMap<u64, Cancel>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Cancel>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers request `id` and returns its token.
    pub fn begin(&self, id: u64) -> Cancel {
        let token = Cancel::default();
        self.lock().insert(id, token.clone());
        token
    }

    /// Forgets request `id` (answered).
    pub fn end(&self, id: u64, token: &Cancel) {
        let mut running = self.lock();
        // A reused id may belong to a newer request by now.
        if running
            .get(&id)
            .is_some_and(|t| Arc::ptr_eq(&t.0, &token.0))
        {
            running.remove(&id);
        }
    }

    /// Cancels request `id`; false if it is not running.
    pub fn cancel(&self, id: u64) -> bool {
        self.lock().get(&id).map(Cancel::cancel).is_some()
    }

    /// Cancels every running request (the host went away).
    pub fn cancel_all(&self) -> usize {
        let running = self.lock();
        running.values().for_each(Cancel::cancel);
        running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_cancels_by_id() {
        let r = Registry::default();
        let a = r.begin(1);
        let b = r.begin(2);
        assert!(r.cancel(1));
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert!(a.check("x").is_err_and(|e| e.kind == ErrorKind::Cancelled));
        r.end(1, &a);
        assert!(!r.cancel(1), "answered requests cannot be cancelled");
        assert_eq!(r.cancel_all(), 1);
        assert!(b.is_cancelled());
    }

    #[test]
    fn sleep_ends_early_when_cancelled() {
        let c = Cancel::default();
        let c2 = c.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let start = Instant::now();
        assert!(!c.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        assert!(Cancel::never().sleep(Duration::from_millis(1)));
    }
}
