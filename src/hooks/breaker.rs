//! A circuit breaker per (tenant, hook kind), kept in this replica's memory.
//!
//! After `failures` consecutive calls that found the hook down (the caller
//! records only [`super::HookError::transient`] failures: a hook that
//! answered, even to refuse the call's input, is up) the circuit opens: calls are
//! refused at once (`hook.circuit_open`) for `open_for`, so a hook that is
//! down does not hold every sign-in and token request of its tenant for a
//! full timeout. When that time has passed one trial call is let through
//! (and the circuit stays open for everyone else for another `open_for`);
//! its success closes the circuit, its failure keeps it open. A trial whose
//! caller went away simply lets the next trial through one period later.
//!
//! Only failing hooks have an entry (a success removes it), and at most
//! `max_entries` are kept: the map is bounded by configuration, not by
//! traffic. Per replica on purpose: each replica learns on its own that a
//! hook is down, at the cost of `failures` calls each; no store round trip.
//! Times come from the injected clock.

use std::collections::HashMap;
use std::sync::Mutex;

/// One circuit.
#[derive(Debug, Clone, Copy, Default)]
struct Circuit {
    /// Consecutive failures.
    failures: u32,
    /// Unix milliseconds until which calls are refused; `None`: closed.
    open_until: Option<i64>,
}

/// The breaker of one replica.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_for_ms: i64,
    max_entries: usize,
    circuits: Mutex<HashMap<String, Circuit>>,
}

/// Whether a call may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Closed,
    /// Open, but this call is the trial: call.
    Trial,
    /// Open: refuse without calling.
    Open,
}

impl Breaker {
    /// A breaker opening after `failures` consecutive failures for
    /// `open_for_ms`, tracking at most `max_entries` circuits.
    pub fn new(failures: u32, open_for_ms: i64, max_entries: usize) -> Self {
        Self {
            failures: failures.max(1),
            open_for_ms: open_for_ms.max(1),
            max_entries: max_entries.max(1),
            circuits: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        // A panic while holding the lock cannot leave a circuit half
        // written (plain copies), so a poisoned map is still usable.
        self.circuits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call of `key` may go out at `now_ms`.
    pub fn admit(&self, key: &str, now_ms: i64) -> Admission {
        let mut circuits = self.lock();
        let Some(c) = circuits.get_mut(key) else {
            return Admission::Closed;
        };
        match c.open_until {
            None => Admission::Closed,
            Some(until) if now_ms < until => Admission::Open,
            Some(_) => {
                // One trial; everyone else keeps being refused meanwhile.
                c.open_until = Some(now_ms.saturating_add(self.open_for_ms));
                Admission::Trial
            }
        }
    }

    /// Whether `key`'s circuit refuses calls at `now_ms`, without taking a
    /// trial (what [`Self::admit`] would answer `Open` to).
    pub fn is_open(&self, key: &str, now_ms: i64) -> bool {
        self.lock()
            .get(key)
            .and_then(|c| c.open_until)
            .is_some_and(|until| now_ms < until)
    }

    /// Records the outcome of a call of `key` at `now_ms`. Returns whether
    /// the circuit is open afterwards.
    pub fn record(&self, key: &str, ok: bool, now_ms: i64) -> bool {
        let mut circuits = self.lock();
        if ok {
            circuits.remove(key);
            return false;
        }
        if !circuits.contains_key(key) && circuits.len() >= self.max_entries {
            // Make room among circuits that are closed or whose open time
            // has passed; if none, this hook goes untracked (its calls still
            // fail closed, they just are not cut short).
            circuits.retain(|_, c| c.open_until.is_some_and(|u| now_ms < u));
            if circuits.len() >= self.max_entries {
                tracing::warn!(
                    reason = "hook.breaker_full",
                    "circuit breaker table full; hook not tracked"
                );
                return false;
            }
        }
        let c = circuits.entry(key.to_owned()).or_default();
        c.failures = c.failures.saturating_add(1);
        if c.failures >= self.failures {
            c.open_until = Some(now_ms.saturating_add(self.open_for_ms));
            true
        } else {
            false
        }
    }

    /// How many circuits are tracked (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no circuit is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let b = Breaker::new(3, 1000, 10);
        assert_eq!(b.admit("t/k", 0), Admission::Closed);
        assert!(!b.record("t/k", false, 0));
        assert!(!b.record("t/k", false, 1));
        // A success in between starts counting again.
        b.record("t/k", true, 2);
        assert!(!b.record("t/k", false, 3));
        assert!(!b.record("t/k", false, 4));
        assert!(b.record("t/k", false, 5), "third consecutive failure opens");
        assert_eq!(b.admit("t/k", 6), Admission::Open);
        assert_eq!(b.admit("other", 6), Admission::Closed, "per key");
        assert_eq!(b.admit("t/k", 1005), Admission::Trial);
        assert_eq!(b.admit("t/k", 1006), Admission::Open, "one trial at a time");
        assert!(b.record("t/k", false, 1010), "a failed trial keeps it open");
        assert_eq!(b.admit("t/k", 1500), Admission::Open);
        assert_eq!(b.admit("t/k", 2011), Admission::Trial);
        assert!(!b.record("t/k", true, 2012));
        assert_eq!(b.admit("t/k", 2013), Admission::Closed);
        assert!(b.is_empty());
    }

    #[test]
    fn is_bounded() {
        let b = Breaker::new(1, 1000, 2);
        assert!(b.record("a", false, 0));
        assert!(b.record("b", false, 0));
        assert!(!b.record("c", false, 10), "full of open circuits: not tracked");
        assert_eq!(b.len(), 2);
        assert!(b.record("c", false, 2000), "expired circuits make room");
        assert!(b.len() <= 2);
    }
}
