//! The generator's own wake delay: how long a task made ready waited for
//! one of its workers, probed every [`PERIOD`] during an open-loop stage.
//!
//! An answer that arrives while the generator's workers are busy, or held
//! off their CPU (which Redis shares with them in `scripts/perf`), is read
//! that much later, and its latency counts the wait. The gateway measures
//! the same of itself (`portcullis_runtime_wake_delay_seconds`); the two
//! together say on which side a slow operation waited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the probe sends a task: 200 a second per stage. Every
/// millisecond, the two probes of a sign-in's overlapping halves cost the
/// generator a sixth more CPU per SAML sign-in at 830 a second (0.282-0.294
/// ms against 0.233-0.251), on the CPU it shares with Redis; a hold of 5 ms
/// or more is still seen by a probe every time.
pub const PERIOD: Duration = Duration::from_millis(5);

/// A probe's intended time and its wake delay (µs).
pub type Sample = (Instant, u64);

/// A running probe of the current runtime.
pub struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts probing the runtime this is called on from a thread of its
    /// own (a task sent every `period`, its delay counted from its intended
    /// time, so a probe thread held off its CPU counts too). `None` outside
    /// a runtime or if the thread cannot start.
    pub fn start(period: Duration) -> Option<Probe> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stopped, kept) = (stop.clone(), samples.clone());
        let thread = std::thread::Builder::new()
            .name("wake-probe".into())
            .spawn(move || {
                let mut next = Instant::now() + period;
                while !stopped.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let (intended, kept) = (next, kept.clone());
                    drop(handle.spawn(async move {
                        let delay = intended.elapsed().as_micros() as u64;
                        if let Ok(mut s) = kept.lock() {
                            s.push((intended, delay));
                        }
                    }));
                    next = (intended + period).max(Instant::now());
                }
            })
            .ok()?;
        Some(Probe {
            stop,
            samples,
            thread: Some(thread),
        })
    }

    /// Stops the probe and answers its samples in order of intended time
    /// (a probe still waiting for a worker is left out).
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
        let mut samples = self
            .samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        samples.sort_unstable_by_key(|s| s.0);
        samples
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest wake delay (µs) among the samples (sorted by intended time)
/// intended within `[from, to]`; 0 if none.
pub fn longest_within(samples: &[Sample], from: Instant, to: Instant) -> u64 {
    let first = samples.partition_point(|s| s.0 < from);
    samples
        .get(first..)
        .unwrap_or_default()
        .iter()
        .take_while(|s| s.0 <= to)
        .map(|s| s.1)
        .max()
        .unwrap_or(0)
}

/// A histogram of the gateway's (`/metrics`), every series added up: the
/// buckets' cumulative counts by upper bound in seconds (the last `+Inf`).
pub type Buckets = Vec<(f64, u64)>;

/// The gateway's histograms a window reads: its wake delays, its requests'
/// latency (every route, measured from the router to the answer) and its
/// store operations' latency.
pub const HISTOGRAMS: [&str; 3] = [
    "portcullis_runtime_wake_delay_seconds",
    "portcullis_http_request_duration_seconds",
    "portcullis_redis_operation_duration_seconds",
];

/// The buckets of histogram `name` in a `/metrics` text, every series
/// (whatever its other labels) added up; empty if absent.
pub fn parse_buckets(text: &str, name: &str) -> Buckets {
    let mut by_le: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix("_bucket{")) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(le) = labels.split("le=\"").nth(1).and_then(|l| l.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        if le.is_nan() {
            continue;
        }
        match by_le.iter_mut().find(|(l, _)| *l == le) {
            Some(slot) => slot.1 += count as u64,
            None => by_le.push((le, count as u64)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// Every replica's [`HISTOGRAMS`] added up (`None` if a replica's
/// `/metrics` could not be read or lacks the wake delays).
pub async fn gateway_buckets(urls: &[String], token: &str) -> Option<[Buckets; 3]> {
    let client = reqwest::Client::new();
    let mut sum: [Buckets; 3] = Default::default();
    for url in urls {
        let text = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .text()
            .await
            .ok()?;
        for (total, name) in sum.iter_mut().zip(HISTOGRAMS) {
            for (le, count) in parse_buckets(&text, name) {
                match total.iter_mut().find(|(l, _)| *l == le) {
                    Some(slot) => slot.1 += count,
                    None => total.push((le, count)),
                }
            }
            total.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    (!sum[0].is_empty()).then_some(sum)
}

/// How many of a histogram's samples fell in a window, and how many of
/// them took longer than 1, 5, 10 and 25 ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Over {
    /// Samples in the window.
    pub count: u64,
    /// Of them, longer than 1 ms.
    pub over_1ms: u64,
    /// Longer than 5 ms.
    pub over_5ms: u64,
    /// Longer than 10 ms.
    pub over_10ms: u64,
    /// Longer than 25 ms.
    pub over_25ms: u64,
}

impl Over {
    /// What the buckets counted between `before` and `after` (`None` if
    /// they do not have the same bounds, or lack one of the four).
    pub fn between(before: &Buckets, after: &Buckets) -> Option<Over> {
        let at = |b: &Buckets, bound: f64| {
            b.iter()
                .find(|(le, _)| *le == bound || (*le - bound).abs() < 1e-9)
                .map(|(_, c)| *c)
        };
        let count = at(after, f64::INFINITY)?.checked_sub(at(before, f64::INFINITY).unwrap_or(0))?;
        let over = |bound: f64| -> Option<u64> {
            let within = at(after, bound)?.saturating_sub(at(before, bound).unwrap_or(0));
            Some(count.saturating_sub(within))
        };
        Some(Over {
            count,
            over_1ms: over(0.001)?,
            over_5ms: over(0.005)?,
            over_10ms: over(0.01)?,
            over_25ms: over(0.025)?,
        })
    }

    /// `N (over 1/5/10/25 ms a/b/c/d)`.
    pub fn line(&self) -> String {
        format!(
            "{} (over 1/5/10/25 ms {}/{}/{}/{})",
            self.count, self.over_1ms, self.over_5ms, self.over_10ms, self.over_25ms
        )
    }
}

/// The gateway's own view of a window, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct GatewayTails {
    /// Its wake-delay probes (100 a second per replica).
    pub wake: Over,
    /// Its requests, as its router timed them (not their wait in the
    /// socket before, which the wake delays stand for).
    pub requests: Option<Over>,
    /// Its store operations (each a round trip to Redis, or a share of a
    /// pipeline's).
    pub store: Option<Over>,
}

impl GatewayTails {
    /// What the histograms counted between two readings.
    pub fn between(before: &[Buckets; 3], after: &[Buckets; 3]) -> Option<GatewayTails> {
        Some(GatewayTails {
            wake: Over::between(&before[0], &after[0])?,
            requests: Over::between(&before[1], &after[1]),
            store: Over::between(&before[2], &after[2]),
        })
    }

    /// One line for the summary.
    pub fn line(&self) -> String {
        let mut line = format!("gateway wake probes {}", self.wake.line());
        if let Some(r) = self.requests {
            line.push_str(&format!(", requests {}", r.line()));
        }
        if let Some(s) = self.store {
            line.push_str(&format!(", store operations {}", s.line()));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_histograms_are_summed_over_their_series_and_differenced() {
        let text = |wake: [u64; 6], a: u64, b: u64| {
            let le = ["0.001", "0.0025", "0.005", "0.01", "0.025", "+Inf"];
            let mut t = String::from("# TYPE portcullis_runtime_wake_delay_seconds histogram\n");
            for (l, n) in le.iter().zip(wake) {
                t.push_str(&format!(
                    "portcullis_runtime_wake_delay_seconds_bucket{{le=\"{l}\"}} {n}\n"
                ));
            }
            t.push_str(&format!("portcullis_runtime_wake_delay_seconds_count {}\n", wake[5]));
            // Two routes: added up by bound.
            for (route, n) in [("/token", a), ("/authorize", b)] {
                for (l, k) in le.iter().zip([n / 2, n / 2, n - 2, n - 1, n, n]) {
                    t.push_str(&format!(
                        "portcullis_http_request_duration_seconds_bucket{{route=\"{route}\",method=\"POST\",status=\"200\",le=\"{l}\"}} {k}\n"
                    ));
                }
            }
            t
        };
        let before = text([90, 95, 97, 98, 99, 100], 10, 20);
        let after = text([1080, 1090, 1094, 1096, 1098, 1100], 110, 220);
        let wake = parse_buckets(&before, HISTOGRAMS[0]);
        assert_eq!(wake.len(), 6);
        assert_eq!(wake.last(), Some(&(f64::INFINITY, 100)));
        assert_eq!(parse_buckets(&before, HISTOGRAMS[1]).first(), Some(&(0.001, 15)));
        assert!(parse_buckets(&before, HISTOGRAMS[2]).is_empty());
        let read = |t: &str| [0, 1, 2].map(|k| parse_buckets(t, HISTOGRAMS[k]));
        let tails = GatewayTails::between(&read(&before), &read(&after)).unwrap();
        assert_eq!(
            tails.wake,
            Over {
                count: 1000,
                over_1ms: 10,
                over_5ms: 3,
                over_10ms: 2,
                over_25ms: 1,
            }
        );
        // 300 requests more, half of them over 1 ms; the 4 over 5 ms and the
        // 2 over 10 ms were there before the window.
        assert_eq!(
            tails.requests,
            Some(Over {
                count: 300,
                over_1ms: 150,
                ..Over::default()
            })
        );
        assert_eq!(tails.store, None);
    }

    #[test]
    fn the_longest_delay_is_taken_within_the_interval_only() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let samples = vec![
            (t, 900),
            (t + ms(1), 40),
            (t + ms(2), 300),
            (t + ms(3), 50),
            (t + ms(4), 800),
        ];
        assert_eq!(longest_within(&samples, t + ms(1), t + ms(3)), 300);
        assert_eq!(longest_within(&samples, t + ms(3), t + ms(3)), 50);
        assert_eq!(longest_within(&samples, t + ms(5), t + ms(9)), 0);
    }

    /// The generator's one worker held by a blocking task holds the probe
    /// sent meanwhile (a lower bound the block guarantees, nothing about
    /// how fast anything is).
    #[test]
    fn a_blocked_worker_shows_in_the_samples() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("a runtime");
        let samples = rt.block_on(async {
            let probe = Probe::start(Duration::from_millis(2)).expect("a probe");
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
                .await
                .expect("slept");
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(40)) })
                .await
                .expect("blocked");
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
                .await
                .expect("slept");
            probe.finish()
        });
        assert!(samples.len() >= 3, "{samples:?}");
        assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0));
        let longest = samples.iter().map(|s| s.1).max().unwrap_or(0);
        assert!(longest >= 30_000, "{samples:?}");
    }
}
