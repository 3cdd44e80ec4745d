//! A warning that anyone can cause on every request (a refused scrape, a
//! forwarded header from a peer that is not trusted), logged at most once
//! per interval with how many times it happened since: the operator hears
//! of it, and a flood of requests cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One such warning's pacing.
#[derive(Debug)]
pub struct Quiet {
    every: Duration,
    since: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Quiet {
    /// A warning logged at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            since: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one occurrence. `Some(n)` when it is to be logged now, with
    /// `n` the occurrences since the last line, this one included; `None`
    /// while the last line is recent (or another occurrence is deciding
    /// right now: it logs).
    pub fn due(&self) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = match self.last.try_lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| now.duration_since(t) >= self.every);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        due.then(|| self.since.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_and_then_none_until_the_interval_has_passed() {
        let q = Quiet::new(Duration::from_secs(3600));
        assert_eq!(q.due(), Some(1));
        assert_eq!(q.due(), None);
        assert_eq!(q.due(), None);
        let q = Quiet::new(Duration::ZERO);
        assert_eq!(q.due(), Some(1));
        assert_eq!(q.due(), Some(1), "every occurrence once the interval is nil");
    }

    #[test]
    fn a_line_counts_the_occurrences_since_the_last() {
        let q = Quiet::new(Duration::from_millis(50));
        assert_eq!(q.due(), Some(1));
        assert_eq!(q.due(), None);
        assert_eq!(q.due(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(q.due(), Some(3));
    }
}
