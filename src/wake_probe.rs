//! How long a task made ready waits for one of the runtime's workers (its
//! *wake delay*): the time a request's next step sits ready while the
//! replica's workers are busy with others, or held off their CPUs.
//!
//! A thread of its own spawns a tiny task onto the runtime every `period`
//! and the task reports how long after its intended time it first ran. The
//! delay counts from the intended time, so a probe thread itself held off
//! its CPU is counted too (it shares the workers' CPUs). On an idle replica
//! a probe waits for a parked worker to wake (tens of microseconds); a long
//! wake delay means every worker was busy for that long: saturation, or a
//! task that blocks its worker (CPU-bound work or a blocking call on an
//! async worker), which no request latency histogram can tell apart from a
//! slow store.
//!
//! The gateway ([`start_for_gateway`]) exports the delays as
//! `portcullis_runtime_wake_delay_seconds` and logs a wake delay of
//! [`STALL`] or more as `runtime.stalled`, at most once per
//! [`STALL_LOG_EVERY`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the gateway probes its runtime: 100 tiny tasks a second, a
/// worker's wake-up each when the replica is idle (about 0.1 % of a core).
pub const PERIOD: Duration = Duration::from_millis(10);

/// A wake delay this long or longer is logged (`runtime.stalled`).
pub const STALL: Duration = Duration::from_millis(100);

/// At most one `runtime.stalled` line per this long; it counts the stalls
/// since the last one.
pub const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A running probe; dropping it stops its thread at its next period.
pub struct WakeProbe {
    stop: Arc<AtomicBool>,
}

impl WakeProbe {
    /// Probes the runtime of `handle` every `period` from a thread of its
    /// own. `seen` gets each probe's intended time and wake delay, on a
    /// worker of that runtime. A probe the thread could not send on time
    /// (itself held off its CPU for more than a period) is sent late, not
    /// in a burst with the next ones, and counts its lateness.
    pub fn start(
        handle: tokio::runtime::Handle,
        period: Duration,
        seen: impl Fn(Instant, Duration) + Send + Sync + 'static,
    ) -> std::io::Result<WakeProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let seen = Arc::new(seen);
        std::thread::Builder::new().name("wake-probe".into()).spawn(move || {
            let mut next = Instant::now() + period;
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let intended = next;
                let seen = seen.clone();
                // A runtime that has shut down cancels the task at once.
                drop(handle.spawn(async move { seen(intended, intended.elapsed()) }));
                next = (intended + period).max(Instant::now());
            }
        })?;
        Ok(WakeProbe { stop })
    }
}

impl Drop for WakeProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Stalls seen since the last `runtime.stalled` line, and when that was.
#[derive(Default)]
struct StallLog {
    last: Option<Instant>,
    unlogged: u64,
    longest: Duration,
}

impl StallLog {
    /// Counts a stall of `delay` seen `now`; answers what to log now (the
    /// stalls counted, the longest), at most once per `every`.
    fn note(&mut self, now: Instant, delay: Duration, every: Duration) -> Option<(u64, Duration)> {
        self.unlogged += 1;
        self.longest = self.longest.max(delay);
        if self.last.is_some_and(|l| now.duration_since(l) < every) {
            return None;
        }
        self.last = Some(now);
        let logged = (self.unlogged, self.longest);
        self.unlogged = 0;
        self.longest = Duration::ZERO;
        Some(logged)
    }
}

/// The gateway's probe of the current runtime: every [`PERIOD`], its wake
/// delay into `portcullis_runtime_wake_delay_seconds`, and a warning for a
/// stall (see the module documentation). `None` (logged) if the thread
/// could not start; the gateway serves without it.
pub fn start_for_gateway() -> Option<WakeProbe> {
    let log = Mutex::new(StallLog::default());
    let seen = move |_intended: Instant, delay: Duration| {
        crate::meter::runtime_wake_delay(delay);
        if delay < STALL {
            return;
        }
        let logged = log
            .lock()
            .ok()
            .and_then(|mut l| l.note(Instant::now(), delay, STALL_LOG_EVERY));
        if let Some((stalls, longest)) = logged {
            tracing::warn!(
                reason = "runtime.stalled",
                stalls,
                longest_ms = longest.as_millis() as u64,
                "every worker was busy for {} ms or longer: the replica is saturated, or a task blocks its worker",
                STALL.as_millis()
            );
        }
    };
    match WakeProbe::start(tokio::runtime::Handle::current(), PERIOD, seen) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(reason = "runtime.probe_not_started", error = %e, "no wake-delay probe");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    /// A worker held by a blocking task holds every probe sent meanwhile:
    /// the probe that lands in the block waits for its end. (Only a lower
    /// bound is asserted, which the block guarantees; nothing here bounds
    /// how fast anything is.)
    #[test]
    fn a_worker_blocked_for_60_ms_shows_as_a_wake_delay_of_most_of_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let delays = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let kept = delays.clone();
        let probe = WakeProbe::start(rt.handle().clone(), Duration::from_millis(5), move |_, d| {
            kept.lock().unwrap().push(d);
        })
        .unwrap();
        // Some probes first, then the one worker blocked for 60 ms.
        std::thread::sleep(Duration::from_millis(30));
        rt.block_on(async {
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(60)) })
                .await
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(30));
        drop(probe);
        let delays = delays.lock().unwrap().clone();
        assert!(delays.len() >= 3, "{delays:?}");
        let longest = delays.iter().max().copied().unwrap_or_default();
        // A probe is due at most 5 ms after the block starts and runs only
        // after it ends.
        assert!(longest >= Duration::from_millis(50), "{delays:?}");
    }

    #[test]
    fn a_dropped_probe_stops_sending() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let probe = WakeProbe::start(rt.handle().clone(), Duration::from_millis(2), move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(probe);
        // The thread may send one more after the drop, not more.
        std::thread::sleep(Duration::from_millis(10));
        let after_stop = count.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert!(after_stop > 0);
        assert_eq!(count.load(Ordering::Relaxed), after_stop);
    }

    #[test]
    fn stalls_are_logged_at_most_once_per_interval_with_the_count_between() {
        let every = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut log = StallLog::default();
        let ms = Duration::from_millis;
        assert_eq!(log.note(t0, ms(120), every), Some((1, ms(120))));
        assert_eq!(log.note(t0 + ms(500), ms(300), every), None);
        assert_eq!(log.note(t0 + ms(9_000), ms(150), every), None);
        assert_eq!(log.note(t0 + ms(10_000), ms(110), every), Some((3, ms(300))));
        assert_eq!(log.note(t0 + ms(10_100), ms(100), every), None);
    }
}
