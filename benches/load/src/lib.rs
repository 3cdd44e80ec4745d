//! `portcullis-load`: drives whole sign-ins and the token endpoints of a
//! running Portcullis gateway over HTTP and reports throughput, latency
//! percentiles (HdrHistogram) and the gateway's CPU time per operation.
//!
//! The generator sets up what it needs through the admin API (a tenant of
//! its own, SAML and OIDC connections to IdPs it runs itself, an app, a
//! worker app and a resource server), then runs each scenario: a warm-up
//! that is not recorded, then the measured window. See `docs/PERFORMANCE.md`.

pub mod balance;
pub mod engine;
pub mod flows;
pub mod machine;
pub mod saml_idp;
pub mod seed;
pub mod upstream;
pub mod wake;

use clap::{Parser, ValueEnum};
use serde::Serialize;
use std::time::Duration;

/// The scenarios, in the order `all` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `/authorize` → AuthnRequest → signed Response → ACS → continue → `/token` (code + PKCE).
    SamlSignin,
    /// The ACS alone with IdP-initiated (unsolicited) signed Responses, up
    /// to its 303: the continuation, where the person confirms an
    /// IdP-initiated sign-in, is not part of it.
    SamlAcs,
    /// `/authorize` → upstream OIDC → callback (code exchange, ID token) → `/token`.
    OidcSignin,
    /// `/token` alone with the authorization code grant (PKCE): codes are
    /// minted ahead of the window through `/authorize` with an SSO session
    /// (no IdP involved), so only the code exchange is timed.
    CodeGrant,
    /// The refresh grant, each chain rotating its refresh token.
    Refresh,
    /// `GET /userinfo` with an access token.
    Userinfo,
    /// `POST /introspect` of an access token by its app.
    Introspect,
    /// The `client_credentials` grant for an API.
    ClientCredentials,
    /// `GET /jwks`.
    Jwks,
    /// `GET /.well-known/openid-configuration`.
    Discovery,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 10] = [
        Scenario::SamlSignin,
        Scenario::SamlAcs,
        Scenario::OidcSignin,
        Scenario::CodeGrant,
        Scenario::Refresh,
        Scenario::Userinfo,
        Scenario::Introspect,
        Scenario::ClientCredentials,
        Scenario::Jwks,
        Scenario::Discovery,
    ];

    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SamlSignin => "saml-signin",
            Scenario::SamlAcs => "saml-acs",
            Scenario::OidcSignin => "oidc-signin",
            Scenario::CodeGrant => "code-grant",
            Scenario::Refresh => "refresh",
            Scenario::Userinfo => "userinfo",
            Scenario::Introspect => "introspect",
            Scenario::ClientCredentials => "client-credentials",
            Scenario::Jwks => "jwks",
            Scenario::Discovery => "discovery",
        }
    }
}

/// The gateway's token signing algorithm (`[tokens] algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Alg {
    /// RSA-2048 PKCS#1 v1.5 with SHA-256.
    #[value(name = "RS256")]
    RS256,
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256")]
    ES256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDSA,
}

impl Alg {
    /// The JOSE name.
    pub fn jose(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// The command line.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "portcullis-load",
    args_override_self = true,
    about = "Load generator for a running Portcullis gateway",
    long_about = "Drives whole SAML and OIDC sign-ins and the token endpoints of a running \
Portcullis gateway (on a Redis store) over HTTP; reports throughput, latency percentiles and the \
gateway's CPU time per operation. Exits 1 if any request got an unexpected answer."
)]
pub struct Options {
    /// The gateway's base URL (its public URL: the issuer).
    #[arg(long, env = "PORTCULLIS_LOAD_URL")]
    pub url: url::Url,
    /// The gateway's replicas (`host:port`, repeated or comma-separated),
    /// each with `--url` as its public URL and all on one store: every
    /// request to `--url` goes to the next replica in turn, as a load
    /// balancer without stickiness would, so the steps of one sign-in land
    /// on different replicas. Without it, requests go to `--url` itself.
    #[arg(long = "replica", value_delimiter = ',')]
    pub replicas: Vec<std::net::SocketAddr>,
    /// The platform admin token (sets up the tenant, connections and apps).
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Scenarios to run (comma-separated); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// The gateway's token algorithm; when given, checked against the
    /// tokens the gateway issues (it is the gateway's configuration,
    /// `[tokens] algorithm`, not something the generator can choose).
    #[arg(long, value_enum)]
    pub alg: Option<Alg>,
    /// Closed loop: this many concurrent workers (ignored with `--rate`).
    /// 64 keeps a one-core gateway busy when Redis and the generator share
    /// the other core: at 32 it idled 3-10 % of the time, waiting on them,
    /// and every maximum read 8-17 % low (docs/performance-log.md, thirty-
    /// seventh pass); at 128 new sign-ins were shed, as they should be:
    /// `/authorize` may use three quarters of a replica's budget of
    /// requests in flight (by default 128 per CPU).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: this many operations per second, latency measured from
    /// each operation's intended start (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of unrecorded warm-up per scenario.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// The gateway's process id, for its CPU time and RSS (`/proc/<pid>`);
    /// with several replicas, each one's (repeated or comma-separated):
    /// their CPU times and RSS are added up.
    #[arg(long, value_delimiter = ',')]
    pub gateway_pid: Vec<u32>,
    /// The Redis server's process id: its CPU time per operation is
    /// reported too (the store the replicas share).
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// The gateway's `/metrics` token (`[metrics] token`): each stage also
    /// reports the gateway's own wake delays over its window (how long a
    /// task made ready waited for one of its workers,
    /// `portcullis_runtime_wake_delay_seconds`), every replica's added up.
    #[arg(long, env = "PORTCULLIS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The gateway's Redis (`redis://host:port`, a single server): each
    /// scenario also reports the commands Redis ran per operation and the
    /// time it spent in them (`INFO commandstats` around each timed stage).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Pin the generator to these CPUs (e.g. `1` or `1,2`), like `taskset -c`.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Tokio worker threads (default: the CPUs the generator may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Distinct users the sign-ins cycle through.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Tenants the sign-ins are spread over (sign-in i goes to tenant
    /// i mod N), each with its own SAML and OIDC connection; the generator
    /// creates them through the admin API, and before the first scenario
    /// signs in once to each over SAML and once over OIDC, untimed (a
    /// connection's first use on a replica builds its connector), so the
    /// windows see a long-running replica. To fill Redis with many more
    /// tenants and users than are signed in to, see `portcullis-load seed`.
    #[arg(long, default_value_t = 1)]
    pub tenants: usize,
    /// With `--tenants`: no untimed sign-in per tenant before the first
    /// scenario, so the first rounds measure connections used for the first
    /// time on the replica (a replica started under load).
    #[arg(long)]
    pub cold_tenants: bool,
    /// Signing certificates in each SAML connection's IdP metadata (at
    /// least 1): the one that signs, listed last, after N - 1 others of
    /// keys that never sign, as an IdP publishes during a key rollover.
    /// Each adds about 1.1 KB to the metadata and 2.1 KB to the stored
    /// connection record.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub idp_certificates: u16,
    /// Pad every signed SAML Response to at least this many bytes of XML
    /// (before the binding's base64; unpadded about 4.3 KB): the Assertion
    /// gets an attribute no connection maps (`entitlements`), with as many
    /// 61-byte values as it takes, as an IdP that sends many claims or
    /// group memberships does. At most 160,000: the gateway refuses ACS
    /// bodies over 256 KB, and base64 and the form's escaping add about 40 %.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=160_000))]
    pub response_bytes: Option<u64>,
    /// `saml-acs` in closed loop: IdP-initiated responses signed ahead of
    /// the window (default 2,000 per second of `--duration`; the window ends
    /// early, with a warning, if they run out). Open loop signs rate × duration.
    #[arg(long)]
    pub pool: Option<usize>,
    /// `code-grant` in closed loop: authorization codes minted ahead of the
    /// window through `/authorize` with an SSO session (default 6,000 per
    /// second of `--duration`, minted before the window starts; the window
    /// ends early, with a warning, if they run out). Codes live
    /// `[tokens] code_ttl_secs` (60 s by default): minting stops early
    /// when the first codes would expire before the window ends (see
    /// `--code-ttl`). Open loop mints rate × duration.
    #[arg(long)]
    pub code_pool: Option<usize>,
    /// `code-grant`: how long the gateway's codes live (its `[tokens]
    /// code_ttl_secs`), in seconds. The first code minted must still be
    /// alive when the window ends, so minting ahead stops, with a note,
    /// after 90 % of this less `--duration` (at least half a second): on a
    /// machine too slow to mint the whole pool in time the window then ends
    /// early when the codes run out, instead of redeeming expired ones.
    #[arg(long, default_value_t = 60)]
    pub code_ttl: u64,
    /// Sign-in scenarios run in rounds of at most this many seconds, each
    /// prepared just before it: closed loop, the IdP's answers are made
    /// between rounds; open loop, the next round's prepared first halves
    /// and their answers. Between 0.1 and 300, so a prepared login is
    /// answered well within the gateway's login TTL (600 s by default).
    #[arg(long, default_value_t = 60.0)]
    pub round: f64,
    /// Open loop: at most this many operations in flight.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// After the setup, create this file and wait until it holds a line
    /// `resume <pid>[,<pid>...]`, the gateway's process ids from then on:
    /// the caller restarts the gateway in between on the same store (for
    /// instance under a profiler, so that the setup's key generation runs at
    /// full speed), and the scenarios then charge the new processes.
    #[arg(long)]
    pub pause_after_setup: Option<std::path::PathBuf>,
}

impl Options {
    /// Options for `url` and `admin_token` with the command line's defaults.
    pub fn new(url: url::Url, admin_token: &str) -> Options {
        // `--name=value`: a token may begin with `-` (base64url), which
        // as a separate argument would read as a flag.
        Options::parse_from([
            "portcullis-load".to_owned(),
            format!("--url={url}"),
            format!("--admin-token={admin_token}"),
        ])
    }

    /// The scenarios to run.
    pub fn scenarios(&self) -> Vec<Scenario> {
        if self.scenario.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            self.scenario.clone()
        }
    }

    /// The issuing mode.
    pub fn mode(&self) -> engine::Mode {
        match self.rate {
            Some(r) => engine::Mode::Open(r),
            None => engine::Mode::Closed(self.concurrency.max(1)),
        }
    }

    /// The measured window.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.0))
    }

    /// The processes whose CPU time each window is charged.
    pub fn watched(&self) -> engine::Watched {
        engine::Watched {
            gateway: self.gateway_pid.clone(),
            redis: self.redis_pid,
            redis_url: self.redis_url.clone(),
            metrics: self.metrics_token.clone().map(|token| (self.metrics_urls(), token)),
            generator: true,
        }
    }

    /// Each replica's `/metrics` (the public URL's without `--replica`).
    pub fn metrics_urls(&self) -> Vec<String> {
        if self.replicas.is_empty() {
            return self
                .url
                .join("/metrics")
                .map(|u| vec![u.to_string()])
                .unwrap_or_default();
        }
        self.replicas.iter().map(|a| format!("http://{a}/metrics")).collect()
    }
}

/// Latency percentiles, milliseconds.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram in microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One timed stage of a scenario (sign-ins have two: `/authorize`, then the
/// IdP's answer onwards).
#[derive(Serialize, Clone, Debug)]
pub struct StageReport {
    /// What the stage does.
    pub name: String,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations (not counting `shed`).
    pub errors: u64,
    /// Operations the gateway answered with 503 (shed).
    pub shed: u64,
    /// Seconds.
    pub elapsed_s: f64,
    /// Latency of the stage's operations.
    pub latency_ms: Latency,
    /// Gateway CPU seconds in the stage (every replica).
    pub gateway_cpu_s: Option<f64>,
    /// Of `gateway_cpu_s`, the seconds in the kernel (system time).
    pub gateway_system_cpu_s: Option<f64>,
    /// Redis CPU seconds in the stage (with `--redis-pid`).
    pub redis_cpu_s: Option<f64>,
    /// The stage's window as `[start, end]` seconds on `CLOCK_MONOTONIC`.
    pub monotonic_s: Option<[f64; 2]>,
    /// Open loop: the generator's lag in starting each operation after its
    /// intended send time (a part of `latency_ms` the gateway never saw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Latency>,
    /// Open loop: the slowest operation, and how its latency divides
    /// between the generator's lag and the wait for its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest: Option<engine::Slowest>,
    /// Open loop: the generator's own wake delays (`wake.rs`): how long a
    /// task made ready waited for one of its workers, probed every ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_wake_ms: Option<Latency>,
    /// Open loop: the operations of 10 ms or more, and how many of them
    /// were in flight while the generator itself was held 2 ms or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_ops: Option<engine::SlowOps>,
    /// With `--metrics-token`: the gateway's own wake-delay probes, requests
    /// and store operations over the stage, and how many of each took
    /// longer than 1, 5, 10 and 25 ms (a sign-in's overlapping halves: over
    /// both, with the second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_tails: Option<wake::GatewayTails>,
}

/// The result of one scenario.
#[derive(Serialize, Clone, Debug)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// `closed` or `open`.
    pub mode: String,
    /// Closed loop: workers.
    pub concurrency: Option<usize>,
    /// Open loop: target operations per second.
    pub rate: Option<f64>,
    /// Completed operations (whole sign-ins for the sign-in scenarios).
    pub ok: u64,
    /// Operations that got an unexpected answer or none (not counting `shed`).
    pub errors: u64,
    /// Operations the gateway answered with 503: it shed them (over
    /// `[server] max_in_flight`, or its store unavailable). Counted apart
    /// from `errors`; an overload run expects them, any other run should
    /// have none.
    pub shed: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Seconds the gateway was driven (timed stages only).
    pub elapsed_s: f64,
    /// Completed operations per second.
    pub throughput_per_s: f64,
    /// Per-operation latency (a sign-in: the sum of its stages).
    pub latency_ms: Latency,
    /// Gateway CPU seconds (user + system, every replica) over the timed stages.
    pub gateway_cpu_s: Option<f64>,
    /// Gateway CPU milliseconds per completed operation.
    pub gateway_cpu_ms_per_op: Option<f64>,
    /// Of `gateway_cpu_s`, the seconds in the kernel (system time: the
    /// sockets to clients and Redis, waking and waiting).
    pub gateway_system_cpu_s: Option<f64>,
    /// Redis CPU seconds over the timed stages (with `--redis-pid`).
    pub redis_cpu_s: Option<f64>,
    /// Redis CPU milliseconds per completed operation.
    pub redis_cpu_ms_per_op: Option<f64>,
    /// The generator's own CPU seconds over the timed stages (this process).
    pub generator_cpu_s: Option<f64>,
    /// The generator's CPU milliseconds per completed operation.
    pub generator_cpu_ms_per_op: Option<f64>,
    /// How busy the CPUs the gateway may run on were over the timed stages,
    /// 0 to 1, whoever used them (`/proc/stat`; with `--gateway-pid`).
    pub gateway_cpus_busy: Option<f64>,
    /// How busy the generator's CPUs were over the timed stages, 0 to 1: at
    /// or near 1, the generator (or what shares its CPUs, such as Redis)
    /// may have limited the run ([`Self::cpu_warning`]).
    pub generator_cpus_busy: Option<f64>,
    /// The ticks behind the two shares: (gateway's CPUs, generator's CPUs).
    #[serde(skip)]
    pub cpu_ticks: (Option<engine::CpuLoad>, Option<engine::CpuLoad>),
    /// Seconds each side's threads were ready to run but waited for a CPU
    /// over the timed stages (summed before [`Self::waited_for_cpu_ms_per_op`]).
    #[serde(skip)]
    pub waited_s: engine::Waited,
    /// Per completed operation, the milliseconds the gateway's, Redis's and
    /// the generator's threads were ready to run but waited for a CPU
    /// (`/proc/<pid>/task/*/schedstat`): time an operation may have spent
    /// on a run queue rather than in anyone's code.
    pub waited_for_cpu_ms_per_op: engine::Waited,
    /// With `--redis-url`: per command Redis ran in the timed stages (the
    /// store's Lua scripts are `evalsha`), calls and Redis's microseconds
    /// per completed operation.
    pub redis_commands_per_op: std::collections::BTreeMap<String, RedisCommand>,
    /// Gateway resident set size at the end (every replica), KiB.
    pub gateway_rss_kib: Option<u64>,
    /// What that memory is, by kind, at the end of the measured window
    /// (every replica's added up).
    pub gateway_memory: Option<engine::MemorySplit>,
    /// When the measured window started and ended, seconds on the time axis
    /// of [`Report::gateway_rss_kib_per_s`] (with `--gateway-pid`).
    pub started_s: Option<f64>,
    /// See `started_s`.
    pub ended_s: Option<f64>,
    /// The scenario's measured run, from the start of its first timed
    /// stage to the end of its last (with what runs between them, such as
    /// a sign-in's signing of responses; open loop, a sign-in's two
    /// overlapping halves and the window around them, and past one
    /// `--round` the preparation of the next round), as `[start, end]` seconds on
    /// `CLOCK_MONOTONIC`: the window to cut from a `perf record -k
    /// CLOCK_MONOTONIC` or a callgrind run of the gateway (`scripts/perf`
    /// with `PERF_FLAMEGRAPH` or `PERF_CALLGRIND`), so a profile leaves out
    /// the setup, the warm-up, the preparation before the first stage (the
    /// codes `code-grant` mints through the gateway) and the other scenarios.
    pub monotonic_window_s: Option<[f64; 2]>,
    /// Untimed preparation (signing responses, minting ID tokens), seconds.
    pub prepare_s: f64,
    /// The timed stages.
    pub stages: Vec<StageReport>,
}

impl ScenarioReport {
    /// The one summary line.
    pub fn line(&self) -> String {
        let load = match (self.concurrency, self.rate) {
            (_, Some(r)) => format!("rate={r}"),
            (Some(c), None) => format!("c={c}"),
            (None, None) => String::new(),
        };
        let cpu = match (self.gateway_cpu_ms_per_op, self.system_share()) {
            (Some(c), Some(share)) => format!("{c:.3} ms/op ({:.0} % system)", 100.0 * share),
            (Some(c), None) => format!("{c:.3} ms/op"),
            (None, _) => "n/a".into(),
        };
        // What else was measured: Redis's CPU, the generator's, and how
        // busy each side's CPUs were.
        let mut others = self
            .redis_cpu_ms_per_op
            .map(|c| format!("  redis cpu={c:.3} ms/op"))
            .unwrap_or_default();
        if let Some(c) = self.generator_cpu_ms_per_op {
            others.push_str(&format!("  generator cpu={c:.3} ms/op"));
        }
        if let (Some(g), Some(l)) = (self.gateway_cpus_busy, self.generator_cpus_busy) {
            others.push_str(&format!(
                "  busy: gateway's cpus {:.0} %, generator's {:.0} %",
                100.0 * g,
                100.0 * l
            ));
        }
        format!(
            "{:<18} {:<6} {:<10} ok={:<8} err={:<4} shed={:<6} {:>9.1}/s  p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} ms  gateway cpu={}{}",
            self.scenario.name(),
            self.mode,
            load,
            self.ok,
            self.errors,
            self.shed,
            self.throughput_per_s,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.p99_9,
            cpu,
            others
        )
    }
}

/// The generator's CPUs' busy share from which [`ScenarioReport::cpu_warning`]
/// doubts a run.
pub const GENERATOR_BUSY: f64 = 0.9;

fn per_op(ms: Option<f64>) -> String {
    ms.map_or_else(|| "n/a".into(), |c| format!("{c:.3} ms/op"))
}

/// One Redis command's share of an operation.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct RedisCommand {
    /// Calls per completed operation.
    pub calls: f64,
    /// Microseconds Redis spent in them per completed operation.
    pub usec: f64,
}

impl ScenarioReport {
    /// [`Self::monotonic_window_s`] from the timed stages' windows: the
    /// first one's start to the last one's end (`None` without stages, or
    /// with a stage whose window was not read).
    pub fn measured_window(&self) -> Option<[f64; 2]> {
        let windows: Option<Vec<[f64; 2]>> = self.stages.iter().map(|s| s.monotonic_s).collect();
        let windows = windows?;
        let start = windows.iter().map(|w| w[0]).reduce(f64::min)?;
        let end = windows.iter().map(|w| w[1]).reduce(f64::max)?;
        Some([start, end])
    }

    /// Adds a window's CPU ticks (gateway's CPUs, generator's CPUs).
    pub fn add_cpu_load(&mut self, gateway: Option<engine::CpuLoad>, generator: Option<engine::CpuLoad>) {
        let add = |sum: Option<engine::CpuLoad>, more: Option<engine::CpuLoad>| match (sum, more) {
            (Some(a), Some(b)) => Some(a.plus(b)),
            (a, b) => a.or(b),
        };
        self.cpu_ticks = (add(self.cpu_ticks.0, gateway), add(self.cpu_ticks.1, generator));
    }

    /// What the CPUs' business says about this run's figures, when it casts
    /// doubt on them: the generator's CPUs at least 90 % busy (`shared`:
    /// the generator may run on some of the gateway's CPUs).
    pub fn cpu_warning(&self, shared: bool) -> Option<String> {
        let busy = self.generator_cpus_busy.filter(|b| *b >= GENERATOR_BUSY)?;
        Some(if shared {
            format!(
                "{}: the generator shares CPUs with the gateway, and its CPUs were {:.0} % busy: \
                 throughput and latency are the machine's, not the gateway's alone (pin them apart with --cpus and taskset)",
                self.scenario.name(),
                100.0 * busy
            )
        } else {
            format!(
                "{}: the generator's CPUs were {:.0} % busy (the generator {}, Redis {}): it, or what shares \
                 its CPUs, may have limited throughput and latency; give it more CPUs or another machine",
                self.scenario.name(),
                100.0 * busy,
                per_op(self.generator_cpu_ms_per_op),
                per_op(self.redis_cpu_ms_per_op)
            )
        })
    }

    /// Open loop: how much of the latency the generator itself added, by
    /// stage (the lag from each request's intended send time to the
    /// generator starting it) and where the slowest request's time went;
    /// empty closed loop. A long tail with a short lag was spent on the
    /// loopback or in the gateway, not waiting in the generator.
    pub fn lag_line(&self) -> String {
        let parts: Vec<String> = self
            .stages
            .iter()
            .filter_map(|s| {
                let lag = s.send_lag_ms.as_ref()?;
                let mut part = format!("{}: lag p99={:.3} max={:.3} ms", s.name, lag.p99, lag.max);
                if let Some(w) = &s.generator_wake_ms {
                    part.push_str(&format!(", generator wake p99={:.3} max={:.3} ms", w.p99, w.max));
                }
                if let Some(slow) = s.slow_ops {
                    part.push_str(&format!(
                        ", {} over {} ms ({} while the generator was held {} ms or more)",
                        slow.count,
                        engine::SLOW.as_millis(),
                        slow.generator_held,
                        engine::HELD.as_millis()
                    ));
                }
                if let Some(g) = s.gateway_tails {
                    part.push_str(&format!(", {}", g.line()));
                }
                if let Some(w) = s.slowest {
                    part.push_str(&format!(
                        ", slowest at +{:.1} s: lag {:.3} + answer {:.3} ms (generator held up to {:.3} ms meanwhile)",
                        w.at_s, w.lag_ms, w.answer_ms, w.generator_wake_ms
                    ));
                }
                Some(part)
            })
            .collect();
        parts.join("; ")
    }

    /// What each side waited for a CPU per operation, one line (empty
    /// without any figure).
    pub fn waited_line(&self) -> String {
        let w = self.waited_for_cpu_ms_per_op;
        let parts: Vec<String> = [("gateway", w.gateway), ("Redis", w.redis), ("generator", w.generator)]
            .into_iter()
            .filter_map(|(who, ms)| Some(format!("{who} {:.3} ms", ms?)))
            .collect();
        if parts.is_empty() {
            return String::new();
        }
        format!("waited for a CPU per op: {}", parts.join(", "))
    }

    /// The kernel's share of the gateway's CPU time (`None` without both
    /// figures or with no CPU time at all).
    pub fn system_share(&self) -> Option<f64> {
        let (all, system) = (self.gateway_cpu_s?, self.gateway_system_cpu_s?);
        (all > 0.0).then(|| system / all)
    }

    /// The commands that cost Redis the most per operation, one line
    /// (empty without `--redis-url`).
    pub fn redis_line(&self) -> String {
        let mut by_time: Vec<(&String, &RedisCommand)> = self.redis_commands_per_op.iter().collect();
        by_time.sort_by(|a, b| b.1.usec.total_cmp(&a.1.usec));
        let total: f64 = by_time.iter().map(|(_, c)| c.usec).sum();
        let calls: f64 = by_time.iter().map(|(_, c)| c.calls).sum();
        if by_time.is_empty() {
            return String::new();
        }
        let top: Vec<String> = by_time
            .iter()
            .take(5)
            .map(|(name, c)| format!("{name} {:.2} ({:.1} µs)", c.calls, c.usec))
            .collect();
        format!(
            "{:<18} redis per op: {calls:.2} commands, {total:.1} µs: {}",
            self.scenario.name(),
            top.join(", ")
        )
    }
}

/// The whole run.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// The gateway's public URL.
    pub url: String,
    /// With `--replica`: the requests sent to each replica.
    pub replicas: Vec<balance::ReplicaReport>,
    /// The token algorithm the gateway's ID tokens carry.
    pub gateway_alg: Option<String>,
    /// The gateway's pids (one per replica), if given.
    pub gateway_pids: Vec<u32>,
    /// The Redis server's pid, if given.
    pub redis_pid: Option<u32>,
    /// The CPUs the generator was pinned to (empty: not pinned).
    pub generator_cpus: Vec<usize>,
    /// `/proc/loadavg` when the run started.
    pub load_average: String,
    /// Measured seconds per scenario.
    pub duration_s: f64,
    /// Warm-up seconds per scenario.
    pub warmup_s: f64,
    /// Clock ticks per second used for CPU times.
    pub clock_ticks: f64,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// The tenants the sign-ins went to (`--tenants`), created for this run.
    pub tenants: Vec<String>,
    /// The untimed sign-ins made before the first scenario, one per tenant
    /// and protocol the scenarios sign in with (none with one tenant).
    pub tenant_warmup_signins: usize,
    /// Signing certificates in each SAML connection's metadata (`--idp-certificates`).
    pub idp_certificates: u16,
    /// The size of that metadata document, bytes.
    pub idp_metadata_bytes: usize,
    /// The size of one signed SP-initiated SAML Response, XML bytes before
    /// the binding's base64 (`--response-bytes` pads it).
    pub saml_response_bytes: usize,
    /// The gateway's resident set size, sampled every second from the end
    /// of the setup to the end of the run (with `--gateway-pid`; every
    /// replica's added up):
    /// `[seconds since the first sample, KiB]`. Each scenario's
    /// `started_s`/`ended_s` are on the same time axis.
    pub gateway_rss_kib_per_s: Vec<(f64, u64)>,
    /// The smallest and largest RSS sample, KiB, and the growth from the
    /// first to the last minute of samples (mean of each), KiB.
    pub gateway_rss_summary: Option<RssSummary>,
    /// The machine's yardstick on the gateway's CPUs before the first
    /// scenario and after the last ([`machine`]): runs compare when these agree.
    pub machine_before: Option<machine::Yardstick>,
    /// See `machine_before`.
    pub machine_after: Option<machine::Yardstick>,
}

/// What the RSS samples say about memory over the run.
#[derive(Serialize, Clone, Debug)]
pub struct RssSummary {
    /// Smallest sample, KiB.
    pub min_kib: u64,
    /// Largest sample, KiB.
    pub max_kib: u64,
    /// Mean of the first minute of samples (all of them in a shorter run), KiB.
    pub first_minute_mean_kib: f64,
    /// Mean of the last minute of samples, KiB.
    pub last_minute_mean_kib: f64,
}

impl RssSummary {
    /// The summary of `samples` (`None` when there are none).
    pub fn of(samples: &[(f64, u64)]) -> Option<RssSummary> {
        let min_kib = samples.iter().map(|s| s.1).min()?;
        let max_kib = samples.iter().map(|s| s.1).max()?;
        let end = samples.last().map_or(0.0, |s| s.0);
        let mean = |it: Vec<u64>| it.iter().sum::<u64>() as f64 / it.len().max(1) as f64;
        Some(RssSummary {
            min_kib,
            max_kib,
            first_minute_mean_kib: mean(samples.iter().filter(|s| s.0 < 60.0).map(|s| s.1).collect()),
            last_minute_mean_kib: mean(samples.iter().filter(|s| s.0 >= end - 60.0).map(|s| s.1).collect()),
        })
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "gateway rss: min {} KiB, max {} KiB, first minute {:.0} KiB, last minute {:.0} KiB ({:+.0} KiB)",
            self.min_kib,
            self.max_kib,
            self.first_minute_mean_kib,
            self.last_minute_mean_kib,
            self.last_minute_mean_kib - self.first_minute_mean_kib
        )
    }
}

/// Samples the replicas' RSS (added up) every second until dropped.
struct RssSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(f64, u64)>>>,
    task: tokio::task::JoinHandle<()>,
    start: std::time::Instant,
}

impl RssSampler {
    fn start(watched: engine::Watched) -> RssSampler {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = std::time::Instant::now();
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let (Some(kib), Ok(mut v)) = (watched.gateway_rss_kib(), out.lock()) {
                    v.push((start.elapsed().as_secs_f64(), kib));
                }
            }
        });
        RssSampler { samples, task, start }
    }

    fn since_start(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn finish(self) -> Vec<(f64, u64)> {
        self.task.abort();
        let v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v
    }
}

impl Report {
    /// Failed operations over all scenarios.
    pub fn errors(&self) -> u64 {
        self.scenarios.iter().map(|s| s.errors).sum()
    }

    /// Operations shed (503) over all scenarios.
    pub fn shed(&self) -> u64 {
        self.scenarios.iter().map(|s| s.shed).sum()
    }
}

/// Whether this process may run on a CPU one of the `gateway` processes
/// may run on (unknown affinities count as shared).
fn shares_cpus(gateway: &[u32]) -> bool {
    let Some(mine) = engine::allowed_cpus(std::process::id()) else {
        return true;
    };
    gateway
        .iter()
        .any(|&pid| engine::allowed_cpus(pid).is_none_or(|theirs| theirs.iter().any(|c| mine.contains(c))))
}

/// Pins the calling thread (and the threads it starts later) to `cpus`.
pub fn pin(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it
    // for indices below CPU_SETSIZE (checked), and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(format!("cpu {c} out of range"));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("sched_setaffinity: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The machine's yardstick ([`machine`]) on the gateway's CPUs (those of
/// its first process; the generator's own without a gateway pid), printed;
/// `None`, with a note, when it could not be measured.
async fn yardstick(opts: &Options, when: &'static str) -> Option<machine::Yardstick> {
    let cpus = match opts.gateway_pid.first() {
        Some(&pid) => engine::allowed_cpus(pid).unwrap_or_default(),
        None => opts.cpus.clone(),
    };
    let measured = tokio::task::spawn_blocking(move || machine::measure(&cpus))
        .await
        .map_err(|e| e.to_string())
        .and_then(|m| m);
    match measured {
        Ok(y) => {
            println!("{}", y.line(when));
            Some(y)
        }
        Err(e) => {
            eprintln!("portcullis-load: machine yardstick {when}: {e}");
            None
        }
    }
}

/// `--pause-after-setup`: creates `file`, then waits for its `resume` line
/// and answers the process ids it names.
async fn pause(file: &std::path::Path) -> Result<Vec<u32>, String> {
    std::fs::write(file, "paused after setup\n").map_err(|e| format!("--pause-after-setup {}: {e}", file.display()))?;
    eprintln!(
        "portcullis-load: paused after setup; waiting for `resume <pid>` in {}",
        file.display()
    );
    loop {
        let text = std::fs::read_to_string(file).map_err(|e| format!("--pause-after-setup {}: {e}", file.display()))?;
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix("resume ")) {
            return parse_pids(rest);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `1234` or `1234,1235`: process ids.
fn parse_pids(s: &str) -> Result<Vec<u32>, String> {
    let pids: Result<Vec<u32>, _> = s.split(',').map(|p| p.trim().parse::<u32>()).collect();
    match pids {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err(format!("--pause-after-setup: `resume {s}` does not name process ids")),
    }
}

/// Sets up and runs every scenario of `opts`, printing each summary line as
/// it completes.
pub async fn run(opts: &Options) -> Result<Report, String> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut world = flows::World::setup(opts).await?;
    let resumed;
    let opts = match &opts.pause_after_setup {
        Some(file) => {
            let pids = pause(file).await?;
            let mut o = opts.clone();
            o.gateway_pid = pids;
            world.watch(o.watched())?;
            resumed = o;
            &resumed
        }
        None => opts,
    };
    println!(
        "saml responses: {} bytes of XML{}",
        world.saml_response_bytes(),
        if opts.response_bytes.is_some() {
            ", padded (--response-bytes)"
        } else {
            ""
        }
    );
    if opts.idp_certificates > 1 {
        println!(
            "idp metadata: {} signing certificates, {} bytes",
            opts.idp_certificates,
            world.idp_metadata_bytes()
        );
    }
    if let (Some(want), Some(got)) = (opts.alg, &world.gateway_alg) {
        if want.jose() != got {
            return Err(format!(
                "--alg {} but the gateway signs its tokens with {got} (set `[tokens] algorithm`)",
                want.jose()
            ));
        }
    }
    let scenarios = opts.scenarios();
    let t = std::time::Instant::now();
    let warmed = world
        .warm_tenants(
            !opts.cold_tenants && scenarios.contains(&Scenario::SamlSignin),
            !opts.cold_tenants && scenarios.contains(&Scenario::OidcSignin),
            opts.concurrency,
        )
        .await?;
    if warmed > 0 {
        eprintln!(
            "portcullis-load: {warmed} untimed sign-ins, one per tenant and protocol, in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let machine_before = yardstick(opts, "before").await;
    let sampler = (!opts.gateway_pid.is_empty()).then(|| RssSampler::start(opts.watched()));
    let mut scenarios = Vec::new();
    for s in opts.scenarios() {
        if opts.warmup > 0.0 {
            let _discarded = world.scenario(s, Duration::from_secs_f64(opts.warmup), false).await;
        }
        let started = sampler.as_ref().map(RssSampler::since_start);
        let mut r = world.scenario(s, opts.window(), true).await;
        if r.monotonic_window_s.is_none() {
            r.monotonic_window_s = r.measured_window();
        }
        r.started_s = started;
        r.ended_s = sampler.as_ref().map(RssSampler::since_start);
        println!("{}", r.line());
        if let Some(w) = r.cpu_warning(shares_cpus(&opts.gateway_pid)) {
            eprintln!("portcullis-load: {w}");
        }
        let redis = r.redis_line();
        if !redis.is_empty() {
            println!("{redis}");
        }
        if let Some(memory) = &r.gateway_memory {
            println!("{:<18} {}", s.name(), memory.line());
        }
        let waited = r.waited_line();
        if !waited.is_empty() {
            println!("{:<18} {waited}", s.name());
        }
        let lag = r.lag_line();
        if !lag.is_empty() {
            println!("{:<18} {lag}", s.name());
        }
        for e in &r.error_samples {
            eprintln!("portcullis-load: {}: {e}", s.name());
        }
        scenarios.push(r);
    }
    let rss = sampler.map(RssSampler::finish).unwrap_or_default();
    let machine_after = yardstick(opts, "after").await;
    let summary = RssSummary::of(&rss);
    if let Some(sum) = &summary {
        println!("{}", sum.line());
    }
    let replicas = world.replicas();
    if !replicas.is_empty() {
        let each: Vec<String> = replicas
            .iter()
            .map(|r| format!("{} {}", r.address, r.requests))
            .collect();
        println!("requests per replica: {}", each.join(", "));
    }
    Ok(Report {
        gateway_rss_kib_per_s: rss,
        gateway_rss_summary: summary,
        machine_before,
        machine_after,
        tenants: world.tenants(),
        tenant_warmup_signins: warmed,
        idp_certificates: opts.idp_certificates,
        idp_metadata_bytes: world.idp_metadata_bytes(),
        saml_response_bytes: world.saml_response_bytes(),
        url: opts.url.to_string(),
        replicas,
        gateway_alg: world.gateway_alg.clone(),
        gateway_pids: opts.gateway_pid.clone(),
        redis_pid: opts.redis_pid,
        generator_cpus: opts.cpus.clone(),
        load_average,
        duration_s: opts.duration,
        warmup_s: opts.warmup,
        clock_ticks: engine::clock_ticks(),
        scenarios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admin tokens are base64url: one that begins with `-` is still the
    /// token, not a flag (the CI smoke run failed on such a token).
    #[test]
    fn options_take_a_token_that_begins_with_a_dash() {
        let url = url::Url::parse("http://127.0.0.1:8080").unwrap();
        let opts = Options::new(url.clone(), "-_starts-with-a-dash");
        assert_eq!(opts.admin_token, "-_starts-with-a-dash");
        assert_eq!(opts.url, url);
    }
}
