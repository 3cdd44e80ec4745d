//! The load engine: closed loop (N workers back to back) or open loop (a
//! fixed rate, latency measured from each request's intended send time, so
//! coordinated omission is corrected), HdrHistogram latencies, and the
//! CPU time of the gateway's replicas (and of Redis) over the window from
//! `/proc/<pid>/stat`.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How requests are issued.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `n` workers, each sending its next request when the previous answered.
    Closed(usize),
    /// A fixed rate (requests per second), whatever the answers take.
    Open(f64),
}

/// How many error messages a stage keeps as samples.
const SAMPLES: usize = 5;

/// A latency histogram in microseconds (1 µs .. 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid bounds")
}

/// What one timed stage produced.
pub struct Stage<T> {
    /// Latencies of the successful operations (µs).
    pub hist: Histogram<u64>,
    /// The successful operations' outputs with their index and latency (µs),
    /// when kept.
    pub outputs: Vec<(usize, T, u64)>,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations (unexpected status, transport error), not
    /// counting those the gateway shed.
    pub errors: u64,
    /// Operations the gateway answered with 503 (it shed them: over
    /// capacity, or its store unavailable), counted apart from `errors`.
    pub shed: u64,
    /// The first few error messages.
    pub samples: Vec<String>,
    /// Wall time of the window.
    pub elapsed: Duration,
    /// Gateway CPU seconds (user + system, every replica) over the window.
    pub cpu_secs: Option<f64>,
    /// Of `cpu_secs`, the seconds in the kernel (system time).
    pub system_cpu_secs: Option<f64>,
    /// Redis CPU seconds over the window (with its pid).
    pub redis_cpu_secs: Option<f64>,
    /// The generator's own CPU seconds over the window.
    pub generator_cpu_secs: Option<f64>,
    /// The ticks of the CPUs the replicas may run on, over the window.
    pub gateway_cpus: Option<CpuLoad>,
    /// The ticks of the generator's CPUs, over the window.
    pub generator_cpus: Option<CpuLoad>,
    /// What the watched processes waited for a CPU over the window.
    pub waited: Waited,
    /// The commands Redis ran over the window (with its URL).
    pub redis_commands: Option<CommandStats>,
    /// The window as `[start, end]` seconds on `CLOCK_MONOTONIC`.
    pub monotonic_s: Option<[f64; 2]>,
    /// Open loop: how late the generator started each successful operation
    /// after its intended send time (µs; a part of its latency the gateway
    /// never saw). Empty closed loop.
    pub lag: Histogram<u64>,
    /// Open loop: the successful operation with the longest latency.
    pub slowest: Option<Slowest>,
    /// Open loop: the generator's own wake delays over the stage (µs; see
    /// `wake.rs`). Empty closed loop.
    pub wake: Histogram<u64>,
    /// Open loop: the operations over [`SLOW`], and how many of them were
    /// in flight while the generator itself was held.
    pub slow: Option<SlowOps>,
    /// The gateway's own wake delays over the window (with its metrics).
    pub gateway_tails: Option<crate::wake::GatewayTails>,
}

/// An open-loop operation that took this long or longer is *slow*: the
/// issue's p99 target.
pub const SLOW: Duration = Duration::from_millis(10);

/// A generator wake delay this long or longer, while a slow operation was
/// in flight, counts it as one the generator may have held.
pub const HELD: Duration = Duration::from_millis(2);

/// The slow operations of an open-loop stage, and which side they waited on.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SlowOps {
    /// Successful operations of [`SLOW`] or longer (from their intended time).
    pub count: u64,
    /// Of them, those in flight while a probe of the generator's own runtime
    /// waited [`HELD`] or longer: the generator may have read their answer late.
    pub generator_held: u64,
}

/// The slowest operation of an open-loop stage: when it was meant to be
/// sent and how its latency divides between the generator's lag in
/// starting it and the wait for its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Slowest {
    /// Its intended send time, seconds after the stage started.
    pub at_s: f64,
    /// From the intended send time to the generator starting it, ms.
    pub lag_ms: f64,
    /// From the generator starting it to its answer (the loopback and the
    /// gateway, and the generator's reading of the answer), ms.
    pub answer_ms: f64,
    /// The generator's longest wake delay while it was in flight, ms.
    pub generator_wake_ms: f64,
}

/// Per Redis command (lowercase, as `INFO commandstats` names it): calls
/// and microseconds Redis spent in them.
pub type CommandStats = BTreeMap<String, (u64, u64)>;

/// Redis's `INFO commandstats` (`None` if it cannot be read). The `info`
/// command itself is left out: it is the generator's own.
pub fn commandstats(redis_url: &str) -> Option<CommandStats> {
    let client = redis::Client::open(redis_url).ok()?;
    let mut con = client.get_connection().ok()?;
    let text: String = redis::cmd("INFO").arg("commandstats").query(&mut con).ok()?;
    Some(parse_commandstats(&text))
}

/// The `cmdstat_<name>:calls=N,usec=M,...` lines of `INFO commandstats`.
pub fn parse_commandstats(text: &str) -> CommandStats {
    let mut out = CommandStats::new();
    for line in text.lines() {
        let Some((name, fields)) = line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        if name == "info" {
            continue;
        }
        let field = |want: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(want)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
            out.insert(name.to_owned(), (calls, usec));
        }
    }
    out
}

/// What ran between two snapshots (a command's counters only grow unless
/// Redis was reset: then its later figures are taken as they are).
pub fn commandstats_since(after: &CommandStats, before: &CommandStats) -> CommandStats {
    after
        .iter()
        .map(|(name, &(calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            let diff = if calls >= c0 && usec >= u0 {
                (calls - c0, usec - u0)
            } else {
                (calls, usec)
            };
            (name.clone(), diff)
        })
        .filter(|(_, (calls, _))| *calls > 0)
        .collect()
}

/// The processes whose CPU time a window is charged: the gateway's
/// replicas (one pid each, summed) and, if given, the Redis server they
/// share.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// The gateway's processes.
    pub gateway: Vec<u32>,
    /// The Redis server's.
    pub redis: Option<u32>,
    /// The Redis server's URL, for the commands it ran (`INFO commandstats`).
    pub redis_url: Option<String>,
    /// The replicas' `/metrics` and the token to read them with: each window
    /// also reads the gateway's own wake delays (`wake.rs`).
    pub metrics: Option<(Vec<String>, String)>,
    /// Whether the generator's own CPU time, and the ticks of the CPUs it
    /// may run on, are read too (off for the untimed runs inside a
    /// scenario, whose window is read around them).
    pub generator: bool,
}

/// CPU seconds the watched processes have used, and how busy the CPUs
/// they may run on have been.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// Every replica together (`None`: none given, or one unreadable).
    pub gateway: Option<f64>,
    /// Of `gateway`, the seconds in the kernel (system time).
    pub gateway_system: Option<f64>,
    /// Redis.
    pub redis: Option<f64>,
    /// The generator itself (this process).
    pub generator: Option<f64>,
    /// The CPUs the replicas may run on (their affinity), whoever used them.
    pub gateway_cpus: Option<CpuLoad>,
    /// The CPUs the generator may run on (Redis may share them).
    pub generator_cpus: Option<CpuLoad>,
    /// Seconds the watched processes' threads were ready to run but waited
    /// for a CPU (`/proc/<pid>/task/*/schedstat`, the run-queue wait):
    /// every replica's together, Redis's, the generator's.
    pub waited: Waited,
}

/// Seconds threads were ready but waited for a CPU, by process.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Waited {
    /// Every replica's threads together.
    pub gateway: Option<f64>,
    /// Redis's.
    pub redis: Option<f64>,
    /// The generator's.
    pub generator: Option<f64>,
}

impl Waited {
    fn since(self, before: Waited) -> Waited {
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b).max(0.0));
        Waited {
            gateway: diff(self.gateway, before.gateway),
            redis: diff(self.redis, before.redis),
            generator: diff(self.generator, before.generator),
        }
    }

    /// Both windows' waits together.
    pub fn plus(self, other: Waited) -> Waited {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        Waited {
            gateway: sum(self.gateway, other.gateway),
            redis: sum(self.redis, other.redis),
            generator: sum(self.generator, other.generator),
        }
    }
}

/// Clock ticks of a set of CPUs (`/proc/stat`): busy (user, nice, system,
/// interrupts and steal) and in all (busy, idle and I/O wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuLoad {
    /// Ticks the CPUs ran something (or the hypervisor took them).
    pub busy: u64,
    /// Every tick of the CPUs.
    pub total: u64,
}

impl CpuLoad {
    /// The busy share, 0 to 1 (`None` with no ticks).
    pub fn share(self) -> Option<f64> {
        (self.total > 0).then(|| self.busy as f64 / self.total as f64)
    }

    /// What was used between `before` and `self`.
    fn since(self, before: CpuLoad) -> CpuLoad {
        CpuLoad {
            busy: self.busy.saturating_sub(before.busy),
            total: self.total.saturating_sub(before.total),
        }
    }

    /// Both windows' ticks together.
    pub fn plus(self, other: CpuLoad) -> CpuLoad {
        CpuLoad {
            busy: self.busy + other.busy,
            total: self.total + other.total,
        }
    }
}

impl Watched {
    /// CPU seconds used so far, and the CPUs' ticks.
    pub fn cpu(&self) -> CpuTimes {
        let me = std::process::id();
        let per_cpu = cpu_ticks_per_cpu();
        let load = |cpus: Option<Vec<usize>>| per_cpu.as_ref().zip(cpus).and_then(|(t, c)| cpu_load(t, &c));
        let gateway_cpus = if self.gateway.is_empty() {
            None
        } else {
            self.gateway
                .iter()
                .map(|&p| allowed_cpus(p))
                .collect::<Option<Vec<Vec<usize>>>>()
                .map(|sets| {
                    let mut all: Vec<usize> = sets.into_iter().flatten().collect();
                    all.sort_unstable();
                    all.dedup();
                    all
                })
        };
        CpuTimes {
            gateway: total(&self.gateway, cpu_seconds),
            gateway_system: total(&self.gateway, system_cpu_seconds),
            redis: self.redis.and_then(cpu_seconds),
            generator: self.generator.then(|| cpu_seconds(me)).flatten(),
            gateway_cpus: load(gateway_cpus),
            generator_cpus: load(self.generator.then(|| allowed_cpus(me)).flatten()),
            waited: Waited {
                gateway: total(&self.gateway, run_queue_wait_seconds),
                redis: self.redis.and_then(run_queue_wait_seconds),
                generator: self.generator.then(|| run_queue_wait_seconds(me)).flatten(),
            },
        }
    }

    /// Redis's command counters now (with its URL), read off the async
    /// workers.
    pub async fn commands(&self) -> Option<CommandStats> {
        let url = self.redis_url.clone()?;
        tokio::task::spawn_blocking(move || commandstats(&url))
            .await
            .ok()
            .flatten()
    }

    /// The gateway's wake-delay, request and store histograms now (with `metrics`).
    pub async fn wake_buckets(&self) -> Option<[crate::wake::Buckets; 3]> {
        let (urls, token) = self.metrics.as_ref()?;
        crate::wake::gateway_buckets(urls, token).await
    }

    /// Starts a window: the counters its end subtracts.
    pub async fn open(&self) -> Window {
        let commands = self.commands().await;
        let wake = self.wake_buckets().await;
        Window {
            watched: self.clone(),
            cpu: self.cpu(),
            commands,
            wake,
        }
    }

    /// The replicas' resident set sizes together, KiB.
    pub fn gateway_rss_kib(&self) -> Option<u64> {
        total(&self.gateway, rss_kib)
    }

    /// What the replicas' resident memory is, together.
    pub fn gateway_memory(&self) -> Option<MemorySplit> {
        total(&self.gateway, memory_split)
    }
}

/// A process's resident memory by kind (`/proc/<pid>/smaps_rollup`), KiB.
#[derive(serde::Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemorySplit {
    /// Everything resident (`Rss`).
    pub resident_kib: u64,
    /// The heap, stacks and other anonymous mappings (`Anonymous`).
    pub anonymous_kib: u64,
    /// Of the anonymous memory, what transparent huge pages back
    /// (`AnonHugePages`): resident in 2 MB units.
    pub anonymous_huge_kib: u64,
    /// Mapped files: the binary and its shared libraries (`Rss` less `Anonymous`).
    pub file_kib: u64,
}

impl std::iter::Sum for MemorySplit {
    fn sum<I: Iterator<Item = MemorySplit>>(iter: I) -> Self {
        iter.fold(MemorySplit::default(), |a, b| MemorySplit {
            resident_kib: a.resident_kib + b.resident_kib,
            anonymous_kib: a.anonymous_kib + b.anonymous_kib,
            anonymous_huge_kib: a.anonymous_huge_kib + b.anonymous_huge_kib,
            file_kib: a.file_kib + b.file_kib,
        })
    }
}

impl MemorySplit {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "gateway memory: {} KiB resident: {} KiB anonymous (heap and stacks; {} KiB of it in huge pages), {} KiB mapped files (binary and libraries)",
            self.resident_kib, self.anonymous_kib, self.anonymous_huge_kib, self.file_kib
        )
    }
}

/// `pid`'s resident memory by kind, from `/proc/<pid>/smaps_rollup`.
pub fn memory_split(pid: u32) -> Option<MemorySplit> {
    parse_smaps_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// The fields of an `smaps_rollup` text that [`MemorySplit`] holds (`None`
/// when one is missing).
fn parse_smaps_rollup(text: &str) -> Option<MemorySplit> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let resident_kib = field("Rss")?;
    let anonymous_kib = field("Anonymous")?;
    Some(MemorySplit {
        resident_kib,
        anonymous_kib,
        anonymous_huge_kib: field("AnonHugePages")?,
        file_kib: resident_kib.saturating_sub(anonymous_kib),
    })
}

/// A window of [`Watched`] processes, from [`Watched::open`] to [`Window::close`].
pub struct Window {
    watched: Watched,
    cpu: CpuTimes,
    commands: Option<CommandStats>,
    wake: Option<[crate::wake::Buckets; 3]>,
}

/// What the watched processes used over a window.
pub struct Used {
    /// CPU seconds.
    pub cpu: CpuTimes,
    /// The commands Redis ran (with its URL).
    pub commands: Option<CommandStats>,
    /// The gateway's own wake delays (with `metrics`).
    pub gateway_tails: Option<crate::wake::GatewayTails>,
}

impl Window {
    /// Ends the window.
    pub async fn close(self) -> Used {
        let cpu = self.watched.cpu().since(self.cpu);
        let commands = match (self.commands, self.watched.commands().await) {
            (Some(before), Some(after)) => Some(commandstats_since(&after, &before)),
            _ => None,
        };
        let gateway_tails = match (self.wake, self.watched.wake_buckets().await) {
            (Some(before), Some(after)) => crate::wake::GatewayTails::between(&before, &after),
            _ => None,
        };
        Used {
            cpu,
            commands,
            gateway_tails,
        }
    }
}

impl CpuTimes {
    /// What was used between `before` and `self`.
    pub fn since(self, before: CpuTimes) -> CpuTimes {
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        let load = |a: Option<CpuLoad>, b: Option<CpuLoad>| a.zip(b).map(|(a, b)| a.since(b));
        CpuTimes {
            gateway: diff(self.gateway, before.gateway),
            gateway_system: diff(self.gateway_system, before.gateway_system),
            redis: diff(self.redis, before.redis),
            generator: diff(self.generator, before.generator),
            gateway_cpus: load(self.gateway_cpus, before.gateway_cpus),
            generator_cpus: load(self.generator_cpus, before.generator_cpus),
            waited: self.waited.since(before.waited),
        }
    }
}

/// The sum of `read` over `pids`: `None` when there are none or one cannot
/// be read (a replica that exited would otherwise look cheaper).
fn total<T: std::iter::Sum<T>>(pids: &[u32], read: fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| read(p)).sum()
}

struct Collector<T> {
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    /// The slowest operation and its latency (µs).
    slowest: Option<(u64, Slowest)>,
    /// Open loop: the slow successful operations' intended times and
    /// latencies (µs).
    slow: Vec<(Instant, u64)>,
    outputs: Vec<(usize, T, u64)>,
    ok: u64,
    errors: u64,
    shed: u64,
    samples: Vec<String>,
    keep: bool,
}

/// Whether an operation's error says the gateway answered 503: every flow
/// reports an unexpected status as `HTTP <code> <reason>`.
pub fn is_shed(message: &str) -> bool {
    message.contains("HTTP 503")
}

impl<T> Collector<T> {
    /// Open loop: the operation meant to be sent `at` into the stage, started
    /// `lag` µs late and done `micros` µs after its intended send time.
    fn record_open(&mut self, i: usize, r: Result<T, String>, micros: u64, intended: Instant, at: Duration, lag: u64) {
        if r.is_ok() {
            if micros >= SLOW.as_micros() as u64 {
                self.slow.push((intended, micros));
            }
            let _ignored_out_of_range = self.lag.record(lag.max(1));
            if self.slowest.is_none_or(|(longest, _)| micros > longest) {
                let slowest = Slowest {
                    at_s: at.as_secs_f64(),
                    lag_ms: lag as f64 / 1000.0,
                    answer_ms: micros.saturating_sub(lag) as f64 / 1000.0,
                    generator_wake_ms: 0.0,
                };
                self.slowest = Some((micros, slowest));
            }
        }
        self.record(i, r, micros);
    }

    fn record(&mut self, i: usize, r: Result<T, String>, micros: u64) {
        match r {
            Ok(v) => {
                self.ok += 1;
                let _ignored_out_of_range = self.hist.record(micros.max(1));
                if self.keep {
                    self.outputs.push((i, v, micros));
                }
            }
            Err(e) if is_shed(&e) => self.shed += 1,
            Err(e) => {
                self.errors += 1;
                if self.samples.len() < SAMPLES {
                    self.samples.push(e);
                }
            }
        }
    }
}

/// What a stage is bounded by.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// At most this many operations (indices `0..limit`).
    pub limit: Option<usize>,
    /// No operation starts after this long.
    pub duration: Option<Duration>,
    /// Open loop: at most this many requests in flight; more wait for a slot
    /// (their latency still counts from their intended send time).
    pub max_in_flight: usize,
}

/// An open loop's schedule: request `i` is meant to be sent at
/// `start + i * interval`, none at or after `deadline`, at most `limit`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    interval: Duration,
    deadline: Option<Instant>,
    limit: usize,
}

impl Schedule {
    fn intended(&self, i: usize) -> Instant {
        self.start + self.interval.mul_f64(i as f64)
    }

    /// Whether request `i` is part of the schedule at all.
    fn includes(&self, i: usize) -> bool {
        i < self.limit && self.deadline.is_none_or(|d| self.intended(i) < d)
    }
}

/// What the clock thread has declared due: requests `0..upto`, and whether
/// the schedule has ended.
struct Due {
    upto: AtomicUsize,
    ended: AtomicBool,
    changed: tokio::sync::Notify,
}

/// The shortest time between two of the clock thread's wake-ups, so at
/// most 2,000 a second. Woken for every request, the clock cost the
/// generator a third more CPU per JWKS request at 50,000 a second (0.020-0.022
/// ms against 0.015 with tokio's timer) and put it behind its schedule; at
/// 100 µs still 0.018-0.019 ms and behind in three runs of four, at 250 µs
/// behind in one of four, at 500 µs 0.014 ms and on schedule in all four
/// (in four more runs, briefly behind in three: at these rates one shared
/// vCPU is the generator's limit with any clock; docs/performance-log.md,
/// thirty-fourth pass). Below 2,000 requests a second
/// the clock wakes for each; above, a request waits at most this long for
/// its wake-up (lag p99 0.65 ms for refreshes at 3,837 a second).
const MIN_WAKE_GAP: Duration = Duration::from_micros(500);

/// The open loop's clock, on a thread of its own: it sleeps in the kernel
/// until the next request is due (a `nanosleep`, late by the thread's timer
/// slack, 50 µs, and at least [`MIN_WAKE_GAP`] after its last wake-up) and
/// declares due everything whose time has come. tokio's timer, which paced
/// the loop before, fires on whole milliseconds: requests left 0.6-1.0 ms
/// after their intended time at the median and 1.9 ms at p99 whatever the
/// rate, and that lag is part of every open-loop latency (it counts from
/// the intended time). The requests themselves are started by
/// [`dispatch`], inside the runtime.
fn clock(schedule: Schedule, due: &Due) {
    let mut next = 0usize;
    let mut woke: Option<Instant> = None;
    while schedule.includes(next) {
        let intended = schedule.intended(next);
        let at = woke.map_or(intended, |w| intended.max(w + MIN_WAKE_GAP));
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let now = Instant::now();
        woke = Some(now);
        // Behind schedule, or several due in one wake-up: all at once.
        while schedule.includes(next) && schedule.intended(next) <= now {
            next += 1;
        }
        due.upto.store(next, Ordering::Release);
        due.changed.notify_one();
    }
    due.ended.store(true, Ordering::Release);
    due.changed.notify_one();
}

/// Starts each request the clock declared due, as a task of the runtime
/// (spawned from a worker, so it costs what a spawn from inside costs),
/// once one of `slots` is free. Returns when the clock has ended and every
/// request it declared is started.
async fn dispatch<T, F, Fut>(
    schedule: Schedule,
    due: &Due,
    slots: &Arc<tokio::sync::Semaphore>,
    op: &Arc<F>,
    collector: &Arc<Mutex<Collector<T>>>,
) where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let mut i = 0usize;
    loop {
        // `ended` first: once it is set, `upto` is final.
        let ended = due.ended.load(Ordering::Acquire);
        let upto = due.upto.load(Ordering::Acquire);
        if i >= upto {
            if ended {
                return;
            }
            // A notification sent since the loads is kept for this wait.
            due.changed.notified().await;
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let intended = schedule.intended(i);
        let (op, collector, start) = (op.clone(), collector.clone(), schedule.start);
        tokio::spawn(async move {
            // What the generator added: its clock, the wait for a slot,
            // the task's wait for a worker thread.
            let lag = intended.elapsed().as_micros() as u64;
            let r = op(i).await;
            // From the intended send time: a request the gateway's
            // slowness delayed is charged the delay.
            let micros = intended.elapsed().as_micros() as u64;
            if let Ok(mut c) = collector.lock() {
                c.record_open(i, r, micros, intended, intended - start, lag);
            }
            // The results first, then the slot: once every slot is
            // back, nothing else holds the results.
            drop(collector);
            drop(permit);
        });
        i += 1;
    }
}

/// Runs `op(i)` for `i = 0, 1, ...` under `mode` within `bounds`, timing
/// each, and reads the CPU time of the `watched` processes around the window.
pub async fn run<T, F, Fut>(mode: Mode, bounds: Bounds, keep: bool, watched: &Watched, op: F) -> Stage<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let collector = Arc::new(Mutex::new(Collector {
        hist: histogram(),
        lag: histogram(),
        slowest: None,
        slow: Vec::new(),
        outputs: Vec::new(),
        ok: 0,
        errors: 0,
        shed: 0,
        samples: Vec::new(),
        keep,
    }));
    let window = watched.open().await;
    let monotonic_start = monotonic_s();
    let start = Instant::now();
    let deadline = bounds.duration.map(|d| start + d);
    let limit = bounds.limit.unwrap_or(usize::MAX);
    let mut wake_samples = Vec::new();
    match mode {
        Mode::Closed(workers) => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::with_capacity(workers);
            for _ in 0..workers.max(1) {
                let (op, next, collector) = (op.clone(), next.clone(), collector.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit {
                            break;
                        }
                        let t = Instant::now();
                        let r = op(i).await;
                        let micros = t.elapsed().as_micros() as u64;
                        if let Ok(mut c) = collector.lock() {
                            c.record(i, r, micros);
                        }
                    }
                }));
            }
            for t in tasks {
                let _joined = t.await;
            }
        }
        Mode::Open(rate) => {
            let schedule = Schedule {
                start,
                interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
                deadline,
                limit,
            };
            let slots = Arc::new(tokio::sync::Semaphore::new(bounds.max_in_flight.max(1)));
            let due = Arc::new(Due {
                upto: AtomicUsize::new(0),
                ended: AtomicBool::new(false),
                changed: tokio::sync::Notify::new(),
            });
            let probe = crate::wake::Probe::start(crate::wake::PERIOD);
            // The clock has a thread of its own (see `clock`); it ends with
            // the schedule.
            let ticking = {
                let due = due.clone();
                tokio::task::spawn_blocking(move || clock(schedule, &due))
            };
            dispatch(schedule, &due, &slots, &op, &collector).await;
            let _ended = ticking.await;
            // Every slot back: every request answered.
            let _all = slots.acquire_many(bounds.max_in_flight.max(1) as u32).await;
            wake_samples = probe.map(crate::wake::Probe::finish).unwrap_or_default();
        }
    }
    let elapsed = start.elapsed();
    let monotonic = monotonic_start.zip(monotonic_s()).map(|(a, b)| [a, b]);
    let Used {
        cpu: used,
        commands: redis_commands,
        gateway_tails,
    } = window.close().await;
    let c = match Arc::try_unwrap(collector) {
        Ok(m) => m.into_inner().ok(),
        Err(_) => None,
    };
    let Some(c) = c else {
        return Stage {
            hist: histogram(),
            outputs: Vec::new(),
            ok: 0,
            errors: 1,
            shed: 0,
            samples: vec!["internal: results still shared after the stage".into()],
            elapsed,
            cpu_secs: used.gateway,
            system_cpu_secs: used.gateway_system,
            redis_cpu_secs: used.redis,
            generator_cpu_secs: used.generator,
            gateway_cpus: used.gateway_cpus,
            generator_cpus: used.generator_cpus,
            waited: used.waited,
            redis_commands,
            monotonic_s: monotonic,
            lag: histogram(),
            slowest: None,
            wake: histogram(),
            slow: None,
            gateway_tails,
        };
    };
    let mut wake = histogram();
    for &(_, delay) in &wake_samples {
        let _ignored_out_of_range = wake.record(delay.max(1));
    }
    // Which slow operations the generator itself may have held.
    let in_flight_wake = |from: Instant, micros: u64| {
        crate::wake::longest_within(&wake_samples, from, from + Duration::from_micros(micros))
    };
    let slow = (!wake_samples.is_empty()).then(|| SlowOps {
        count: c.slow.len() as u64,
        generator_held: c
            .slow
            .iter()
            .filter(|&&(from, micros)| in_flight_wake(from, micros) >= HELD.as_micros() as u64)
            .count() as u64,
    });
    let slowest = c.slowest.map(|(micros, mut s)| {
        let from = start + Duration::from_secs_f64(s.at_s);
        s.generator_wake_ms = in_flight_wake(from, micros) as f64 / 1000.0;
        s
    });
    Stage {
        hist: c.hist,
        outputs: c.outputs,
        ok: c.ok,
        errors: c.errors,
        shed: c.shed,
        samples: c.samples,
        elapsed,
        cpu_secs: used.gateway,
        system_cpu_secs: used.gateway_system,
        redis_cpu_secs: used.redis,
        generator_cpu_secs: used.generator,
        gateway_cpus: used.gateway_cpus,
        generator_cpus: used.generator_cpus,
        waited: used.waited,
        redis_commands,
        monotonic_s: monotonic,
        lag: c.lag,
        slowest,
        wake,
        slow,
        gateway_tails,
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Seconds on `CLOCK_MONOTONIC`, the clock `perf record -k CLOCK_MONOTONIC`
/// stamps its samples with (`perf script --time` takes these values).
pub fn monotonic_s() -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// User + system CPU seconds `pid` has used so far (`/proc/<pid>/stat`
/// fields 14 and 15, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let (utime, stime) = cpu_ticks(pid)?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// The system (kernel) part of [`cpu_seconds`]: field 15 alone.
pub fn system_cpu_seconds(pid: u32) -> Option<f64> {
    let (_, stime) = cpu_ticks(pid)?;
    Some(stime as f64 / clock_ticks())
}

/// Seconds `pid`'s threads (those alive now) have waited for a CPU while
/// ready to run: the second field of each `/proc/<pid>/task/<tid>/schedstat`,
/// in nanoseconds.
pub fn run_queue_wait_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// `pid`'s user and system time so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count after its ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace();
    // After ')': state is field 3, so utime (14) is the 12th, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Every CPU's `(busy, total)` clock ticks so far, by CPU number, from
/// `/proc/stat` (`None` if it cannot be read).
fn cpu_ticks_per_cpu() -> Option<BTreeMap<usize, (u64, u64)>> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `cpuN` lines of `/proc/stat`: user, nice, system, idle, iowait, irq,
/// softirq, steal (guest time is already inside user and nice).
fn parse_proc_stat(text: &str) -> Option<BTreeMap<usize, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let ticks: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq + steal;
        out.insert(cpu, (busy, busy + idle + iowait));
    }
    (!out.is_empty()).then_some(out)
}

/// The ticks of `cpus` together (`None` if one is not in `ticks`).
fn cpu_load(ticks: &BTreeMap<usize, (u64, u64)>, cpus: &[usize]) -> Option<CpuLoad> {
    if cpus.is_empty() {
        return None;
    }
    cpus.iter().try_fold(CpuLoad::default(), |sum, c| {
        let &(busy, total) = ticks.get(c)?;
        Some(sum.plus(CpuLoad { busy, total }))
    })
}

/// The CPUs `pid` may run on (`Cpus_allowed_list` in `/proc/<pid>/status`,
/// its main thread's).
pub fn allowed_cpus(pid: u32) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    parse_cpu_list(list)
}

/// A kernel CPU list such as `0-2,5`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `pid`'s resident set size in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 operations of 50 ms each, paced at 100/s but one at a time: the
    /// queue grows, and the open loop charges it (from the intended send
    /// time) where the closed loop cannot see it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_latency_counts_from_the_intended_send_time() {
        let op = |_i: usize| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), String>(())
        };
        let bounds = Bounds {
            limit: Some(20),
            duration: None,
            max_in_flight: 1,
        };
        let open = run(Mode::Open(100.0), bounds, false, &Watched::default(), op).await;
        let closed = run(Mode::Closed(1), bounds, false, &Watched::default(), op).await;
        assert_eq!((open.ok, closed.ok, open.errors), (20, 20, 0));
        // The 20th was meant to start at 190 ms and starts at ~950 ms.
        assert!(open.hist.max() > 700_000, "open max {} µs", open.hist.max());
        assert!(closed.hist.max() < 400_000, "closed max {} µs", closed.hist.max());
        // Of that, the wait for the one slot is the generator's own lag: the
        // slowest was the last, started ~760 ms late, answered 50 ms later.
        assert!(open.lag.max() > 700_000, "open lag max {} µs", open.lag.max());
        let slowest = open.slowest.expect("the slowest operation");
        assert!((slowest.at_s - 0.19).abs() < 1e-6, "{slowest:?}");
        assert!(slowest.lag_ms > 700.0, "{slowest:?}");
        assert!((50.0..300.0).contains(&slowest.answer_ms), "{slowest:?}");
        // Closed loop has no intended send times, so no lag.
        assert!(closed.lag.is_empty() && closed.slowest.is_none());
    }

    /// Open loop with slots to spare: one slow answer is the gateway's
    /// (the answer), not the generator's (the lag).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slowest_open_loop_operation_is_split_into_lag_and_answer() {
        let op = |i: usize| async move {
            let ms = if i == 5 { 300 } else { 10 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if i == 7 {
                // A failure, however slow, is not the slowest success.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Err("op 7: HTTP 500".into());
            }
            Ok::<(), String>(())
        };
        let bounds = Bounds {
            limit: Some(10),
            duration: None,
            max_in_flight: 10,
        };
        let s = run(Mode::Open(100.0), bounds, false, &Watched::default(), op).await;
        assert_eq!((s.ok, s.errors, s.lag.len()), (9, 1, 9));
        let slowest = s.slowest.expect("the slowest operation");
        assert!((slowest.at_s - 0.05).abs() < 1e-6, "{slowest:?}");
        assert!(slowest.answer_ms >= 300.0, "{slowest:?}");
        assert!(slowest.lag_ms < 100.0, "{slowest:?}");
        assert!(s.lag.max() < 100_000, "lag max {} µs", s.lag.max());
        // Every success took its 10 ms at least, so all nine are slow; the
        // generator's own runtime was probed meanwhile.
        assert_eq!(s.slow.map(|x| x.count), Some(9));
        assert!(!s.wake.is_empty());
    }

    /// The open loop keeps its schedule on a thread of its own, which
    /// sleeps in the kernel, not with tokio's timer: that timer fires on
    /// whole milliseconds, and every request left 0.6-1.0 ms after its
    /// intended time at the median (1.5-2.0 ms at p99), a lag counted in
    /// every open-loop latency (docs/performance-log.md, thirty-fourth pass).
    /// So the loop runs on a runtime without a timer (the old pacer panics
    /// there), and it still spreads its requests over their schedule: the
    /// last of 200 at 1,000 a second is due 199 ms after the first, and a
    /// sleep never ends early. How late each request starts is measured by
    /// the generator in every open-loop run (`send_lag_ms`), not asserted.
    #[test]
    fn the_open_loop_is_paced_by_a_thread_of_its_own_not_by_tokios_timer() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime without a timer");
        let op = |_i: usize| async { Ok::<(), String>(()) };
        let bounds = Bounds {
            limit: Some(200),
            duration: None,
            max_in_flight: 64,
        };
        let s = rt.block_on(run(Mode::Open(1000.0), bounds, false, &Watched::default(), op));
        assert_eq!((s.ok, s.errors, s.lag.len()), (200, 0, 200), "{:?}", s.samples);
        assert!(
            s.elapsed >= Duration::from_millis(199),
            "200 requests at 1,000 a second took {:?}: sent ahead of their schedule",
            s.elapsed
        );
    }

    #[test]
    fn an_operation_error_is_counted_with_its_message() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let op = |i: usize| async move {
            if i.is_multiple_of(2) {
                Ok(())
            } else {
                Err(format!("op {i}: HTTP 500"))
            }
        };
        let bounds = Bounds {
            limit: Some(10),
            duration: None,
            max_in_flight: 4,
        };
        let s = rt.block_on(run(Mode::Closed(2), bounds, false, &Watched::default(), op));
        assert_eq!((s.ok, s.errors), (5, 5));
        assert!(s.samples.iter().all(|m| m.ends_with("HTTP 500")), "{:?}", s.samples);
    }

    #[test]
    fn a_503_is_counted_as_shed_not_as_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let op = |i: usize| async move {
            match i % 3 {
                0 => Ok(()),
                1 => Err(format!("op {i}: HTTP 503 Service Unavailable")),
                _ => Err(format!("op {i}: HTTP 500 Internal Server Error")),
            }
        };
        let bounds = Bounds {
            limit: Some(9),
            duration: None,
            max_in_flight: 4,
        };
        let s = rt.block_on(run(Mode::Open(1000.0), bounds, false, &Watched::default(), op));
        assert_eq!((s.ok, s.shed, s.errors), (3, 3, 3));
        assert!(s.samples.iter().all(|m| m.contains("HTTP 500")), "{:?}", s.samples);
    }

    /// Spins until the kernel has charged this process more than `than`
    /// seconds of CPU (a busy machine may take a while to give us the CPU).
    fn spin_past(than: f64) {
        let pid = std::process::id();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(pid).unwrap() <= than {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no CPU time charged in 30 s");
        }
    }

    #[test]
    fn memory_is_split_into_anonymous_huge_and_file_backed() {
        let text = "5569f5553000-7ffc48a27000 ---p 00000000 00:00 0                          [rollup]\n\
                    Rss:              101788 kB\nPss:                 386 kB\nPss_Anon:            116 kB\n\
                    Anonymous:         90116 kB\nLazyFree:              0 kB\nAnonHugePages:     40960 kB\n\
                    ShmemPmdMapped:        0 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Some(MemorySplit {
                resident_kib: 101_788,
                anonymous_kib: 90_116,
                anonymous_huge_kib: 40_960,
                file_kib: 11_672,
            })
        );
        // `Pss_Anon` is not `Anonymous`, and a missing field is no figure.
        assert_eq!(
            parse_smaps_rollup("Rss: 10 kB\nPss_Anon: 5 kB\nAnonHugePages: 0 kB\n"),
            None
        );
        // This process: some heap and some mapped binary, in KiB like its
        // `VmRSS` (read a moment apart, so not to the page).
        let me = memory_split(std::process::id()).unwrap();
        assert!(me.anonymous_kib > 0 && me.file_kib > 0);
        assert!(me.anonymous_huge_kib <= me.anonymous_kib);
        let rss = rss_kib(std::process::id()).unwrap();
        assert!(
            me.resident_kib.abs_diff(rss) * 4 < rss,
            "smaps_rollup {me:?}, VmRSS {rss} KiB"
        );
        let twice = Watched {
            gateway: vec![std::process::id(), std::process::id()],
            ..Watched::default()
        };
        // The same process twice counts twice.
        assert!(twice.gateway_memory().unwrap().resident_kib > me.resident_kib);
        assert!(memory_split(u32::MAX).is_none());
    }

    #[test]
    fn cpu_lists_and_the_cpus_ticks_are_parsed() {
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        // user nice system idle iowait irq softirq steal guest guest_nice;
        // the machine's total line (`cpu`) and the others are not CPUs.
        let text = "cpu  10 1 5 100 1 1 1 2 0 0\ncpu0 4 1 2 40 1 1 1 2 0 0\n\
                    cpu1 6 0 3 60 0 0 0 0 0 0\nintr 1 2\nctxt 7\n";
        let ticks = parse_proc_stat(text).unwrap();
        assert_eq!(ticks.len(), 2);
        assert_eq!(ticks.get(&0), Some(&(11, 52)));
        assert_eq!(ticks.get(&1), Some(&(9, 69)));
        let both = cpu_load(&ticks, &[0, 1]).unwrap();
        assert_eq!(both, CpuLoad { busy: 20, total: 121 });
        assert_eq!(cpu_load(&ticks, &[1, 2]), None, "a CPU not in /proc/stat");
        assert_eq!(cpu_load(&ticks, &[]), None);
        assert_eq!(both.since(CpuLoad { busy: 10, total: 21 }).share(), Some(0.1));
        assert_eq!(CpuLoad::default().share(), None);
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None, "too few fields");
    }

    #[test]
    fn the_generators_own_cpu_and_its_cpus_business_are_read() {
        let me = std::process::id();
        let mine = allowed_cpus(me).unwrap();
        assert!(!mine.is_empty());
        let w = Watched {
            gateway: vec![me],
            generator: true,
            ..Watched::default()
        };
        let before = w.cpu();
        spin_past(before.generator.unwrap() + 0.05);
        let used = w.cpu().since(before);
        assert!(used.generator.unwrap() >= 0.05, "{used:?}");
        // The same process on the same CPUs: both sides' CPUs were busy.
        for load in [used.gateway_cpus.unwrap(), used.generator_cpus.unwrap()] {
            assert!(load.busy > 0 && load.busy <= load.total, "{used:?}");
        }
        // Untimed runs read neither.
        let quiet = Watched::default().cpu();
        assert!(quiet.generator.is_none() && quiet.generator_cpus.is_none() && quiet.gateway_cpus.is_none());
    }

    #[test]
    fn the_run_queue_wait_is_read_over_every_thread_and_an_absent_pid_reads_as_none() {
        let me = std::process::id();
        // A second thread, so there is more than one task to add up.
        let other = std::thread::spawn(|| spin_past(0.0));
        assert!(run_queue_wait_seconds(me).is_some_and(|s| s >= 0.0));
        other.join().unwrap();
        assert!(run_queue_wait_seconds(u32::MAX).is_none());
        let w = Watched {
            gateway: vec![me],
            generator: true,
            ..Watched::default()
        }
        .cpu()
        .waited;
        assert!(w.gateway.is_some() && w.generator.is_some() && w.redis.is_none());
    }

    #[test]
    fn cpu_time_of_this_process_is_read_and_grows() {
        let pid = std::process::id();
        // At least one more tick than before.
        spin_past(cpu_seconds(pid).unwrap());
        assert!(rss_kib(pid).unwrap() > 0);
        // The kernel's part is part of the whole.
        let system = system_cpu_seconds(pid).unwrap();
        assert!(system >= 0.0 && system <= cpu_seconds(pid).unwrap());
    }

    #[test]
    fn the_replicas_cpu_times_are_summed_and_one_unreadable_pid_reads_as_none() {
        let me = std::process::id();
        // A test process run alone may not have been charged a tick yet.
        spin_past(0.0);
        let one = Watched {
            gateway: vec![me],
            redis: Some(me),
            redis_url: None,
            metrics: None,
            generator: false,
        }
        .cpu();
        let (g, r) = (one.gateway.unwrap(), one.redis.unwrap());
        assert!(g > 0.0 && r > 0.0);
        // The same process twice counts twice (read a moment later: at least as much).
        let twice = Watched {
            gateway: vec![me, me],
            ..Watched::default()
        };
        assert!(twice.cpu().gateway.unwrap() >= 2.0 * g);
        assert!(twice.cpu().redis.is_none());
        assert!(twice.gateway_rss_kib().unwrap() > rss_kib(me).unwrap());
        // A pid that is not running: no figure rather than a smaller one.
        let gone = Watched {
            gateway: vec![me, u32::MAX],
            redis: Some(u32::MAX),
            redis_url: None,
            metrics: None,
            generator: false,
        };
        assert!(gone.cpu().gateway.is_none() && gone.cpu().redis.is_none());
        assert!(gone.gateway_rss_kib().is_none());
        assert!(Watched::default().cpu().gateway.is_none());
        assert!(gone.cpu().gateway_system.is_none());
        assert!(twice.cpu().gateway_system.unwrap() <= twice.cpu().gateway.unwrap());
        let used = twice.cpu().since(one);
        assert!(used.gateway.is_some() && used.gateway_system.is_some() && used.redis.is_none());
    }

    #[test]
    fn commandstats_are_parsed_and_differenced_per_command() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=200,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_get:calls=5,usec=6,usec_per_call=1.20,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=1,usec=70,usec_per_call=70.00,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(before.get("evalsha"), Some(&(10, 200)));
        assert!(!before.contains_key("info"), "the generator's own INFO is left out");
        let after = parse_commandstats(
            "cmdstat_evalsha:calls=30,usec=650,usec_per_call=21.67\n\
             cmdstat_get:calls=5,usec=6,usec_per_call=1.20\n\
             cmdstat_set:calls=4,usec=12,usec_per_call=3.00\n\
             cmdstat_bad:calls=x,usec=1\n",
        );
        let ran = commandstats_since(&after, &before);
        let want: CommandStats = [("evalsha".to_owned(), (20, 450)), ("set".to_owned(), (4, 12))].into();
        assert_eq!(ran, want, "unchanged and unparsable commands are left out");
        // After a CONFIG RESETSTAT the counters start again from zero.
        let reset = parse_commandstats("cmdstat_evalsha:calls=3,usec=60\n");
        assert_eq!(commandstats_since(&reset, &after).get("evalsha"), Some(&(3, 60)));
    }
}
