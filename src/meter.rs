//! Metrics: the names, their descriptions, the process-wide Prometheus
//! recorder and one small function per thing we count.
//!
//! Every metric of Portcullis is recorded through this module, so the names
//! (a contract: dashboards, alerts and outside checks use them) live in one
//! place and every label has a bounded set of values:
//! * `reason` is always a `&'static str` reason code from the source (a
//!   closed set), never text from a request;
//! * `tenant` and `connection` are configured ids, and only ids that were
//!   found in the registry (an unknown or malformed id from a URL is counted
//!   as [`UNKNOWN`]);
//! * `route` is the matched route template (`/saml/{tenant}/{connection}/acs`),
//!   never the raw path;
//! * no user identifier (email, `sub`, upstream subject) is ever a label.
//!
//! The recorder is installed once per process ([`install`]); several gateway
//! instances in one process (the tests) share it, so counts are process-wide
//! and tests compare deltas or use labels unique to them.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Sign-ins by tenant, connection, result (`success`/`failure`) and reason code.
pub const SIGN_INS: &str = "portcullis_sign_ins_total";
/// Users created just in time at their first sign-in, by tenant and connection.
pub const SIGN_UPS: &str = "portcullis_sign_ups_total";
/// Sign-ins whose IdP said the address is verified and whose tenant did not
/// pass that on, by tenant, connection and reason code
/// (`login.email_not_vouched`, `login.email_not_plain`,
/// `login.email_other_connection`): a partner's IdP asserting the tenant's
/// own addresses shows here.
pub const EMAIL_VERIFIED_WITHHELD: &str = "portcullis_email_verified_withheld_total";
/// Tokens issued at `/token`, by grant (`authorization_code`, `refresh_token`, `client_credentials`).
pub const TOKENS_ISSUED: &str = "portcullis_tokens_issued_total";
/// Refresh tokens rotated successfully.
pub const REFRESH_SUCCESSES: &str = "portcullis_refresh_successes_total";
/// Refresh tokens presented again after use (the family is revoked).
pub const REFRESH_REUSE: &str = "portcullis_refresh_reuse_total";
/// Requests refused by a rate limit, by route (incremented by the throttle layer).
pub const THROTTLED: &str = "portcullis_throttled_total";
/// Requests refused at once by load shedding (503), by route class and
/// reason: `overload.shed` (a listener at its `[server] max_in_flight`) or
/// `overload.client_concurrency` (a client address at its
/// `max_in_flight_per_client`).
pub const SHED: &str = "portcullis_requests_shed_total";
/// Requests being served now (those counted against `[server] max_in_flight`), read at scrape time.
pub const IN_FLIGHT: &str = "portcullis_requests_in_flight";
/// The replica's `[server] max_in_flight`.
pub const MAX_IN_FLIGHT: &str = "portcullis_requests_max_in_flight";
/// Requests being served now on the separate admin listener (those
/// counted against `[server] admin_max_in_flight`), read at scrape time;
/// 0 without such a listener.
pub const ADMIN_IN_FLIGHT: &str = "portcullis_admin_requests_in_flight";
/// The replica's `[server] admin_max_in_flight`.
pub const ADMIN_MAX_IN_FLIGHT: &str = "portcullis_admin_requests_max_in_flight";
/// Request latency by matched route template, method and status.
pub const HTTP_DURATION: &str = "portcullis_http_request_duration_seconds";
/// Failed store operations (Redis unreachable, timed out or answering an error).
pub const REDIS_ERRORS: &str = "portcullis_redis_errors_total";
/// Store operation latency by operation.
pub const REDIS_DURATION: &str = "portcullis_redis_operation_duration_seconds";
/// Connections open now on each listener (`listener`: `main` or `admin`),
/// TLS handshakes included, read at scrape time.
pub const CONNECTIONS_OPEN: &str = "portcullis_http_connections_open";
/// Each listener's `[server] max_connections`.
pub const CONNECTIONS_MAX: &str = "portcullis_http_connections_max";
/// How often a listener found every slot taken and stopped accepting until
/// one was free (new connections wait in the kernel's accept queue
/// meanwhile), by listener, since the replica started.
pub const CONNECTIONS_AT_CAP: &str = "portcullis_http_connections_at_cap_total";
/// Latency of calls to and checks of upstream IdPs, by operation and result.
pub const UPSTREAM_DURATION: &str = "portcullis_upstream_duration_seconds";
/// SAML metadata refreshes by tenant, connection and result.
pub const METADATA_REFRESHES: &str = "portcullis_metadata_refreshes_total";
/// Seconds until a certificate expires (negative once expired), by tenant, connection and use.
pub const CERTIFICATE_EXPIRY: &str = "portcullis_certificate_expiry_seconds";
/// Calls of tenants' hooks by kind and outcome (`hook.answered` or the failure's reason code).
pub const HOOK_CALLS: &str = "portcullis_hook_calls_total";
/// Connections' validators built (parsed IdP certificates and keys): a
/// connection's first use on the replica, after a change, or after being
/// dropped from the bounded cache.
pub const CONNECTOR_BUILDS: &str = "portcullis_connector_builds_total";
/// Built validators dropped from the cache to stay within `[upstream] cached_connections`.
pub const CONNECTOR_EVICTIONS: &str = "portcullis_connector_evictions_total";
/// Built validators the replica keeps now, read at scrape time.
pub const CONNECTORS_CACHED: &str = "portcullis_connectors_cached";
/// The replica's `[upstream] cached_connections`.
pub const CONNECTORS_MAX: &str = "portcullis_connectors_cached_max";
/// How long a task made ready waited for one of the replica's workers,
/// probed every 10 ms (`wake_probe.rs`): long delays mean every worker was
/// busy (saturation, or a task blocking its worker).
pub const RUNTIME_WAKE_DELAY: &str = "portcullis_runtime_wake_delay_seconds";
/// Always 1; the labels say which build is running.
pub const BUILD_INFO: &str = "portcullis_build_info";

/// Every metric family Portcullis exports (the dashboard and alert rules
/// may query only these; `tests/api/monitoring.rs` checks it).
pub const NAMES: &[&str] = &[
    SIGN_INS,
    SIGN_UPS,
    EMAIL_VERIFIED_WITHHELD,
    TOKENS_ISSUED,
    REFRESH_SUCCESSES,
    REFRESH_REUSE,
    THROTTLED,
    SHED,
    IN_FLIGHT,
    MAX_IN_FLIGHT,
    ADMIN_IN_FLIGHT,
    ADMIN_MAX_IN_FLIGHT,
    CONNECTIONS_OPEN,
    CONNECTIONS_MAX,
    CONNECTIONS_AT_CAP,
    HTTP_DURATION,
    REDIS_ERRORS,
    REDIS_DURATION,
    UPSTREAM_DURATION,
    METADATA_REFRESHES,
    CERTIFICATE_EXPIRY,
    HOOK_CALLS,
    CONNECTOR_BUILDS,
    CONNECTOR_EVICTIONS,
    CONNECTORS_CACHED,
    CONNECTORS_MAX,
    RUNTIME_WAKE_DELAY,
    BUILD_INFO,
];

/// The label value for a tenant or connection id that is not (or not yet
/// known to be) configured: keeps ids an attacker invents out of the labels.
pub const UNKNOWN: &str = "_unknown";

/// Buckets of every `*_seconds` histogram: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (first call only) and returns the handle that renders it; `None` when
/// another recorder was installed first (then `/metrics` answers 503 and
/// the reason is logged once). The first call starts the thread that folds
/// histogram samples into their buckets every [`UPKEEP_EVERY`], so memory
/// stays flat however rarely Prometheus scrapes.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            let recorder = match built {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(reason = "metrics.not_installed", error = %e, "metrics recorder not built");
                    return None;
                }
            };
            let handle = recorder.handle();
            // Started before the recorder is installed, so no sample is
            // ever recorded that nothing drains; a thread, not a task, so it
            // outlives whichever runtime installed it (tests run one per test).
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = started {
                tracing::error!(reason = "metrics.not_installed", error = %e, "no upkeep thread");
                return None;
            }
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::error!(reason = "metrics.not_installed", error = %e, "another metrics recorder is installed");
                return None;
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

/// The installed handle, if [`install`] succeeded.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned().flatten()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        SIGN_INS,
        "Sign-ins by tenant, connection, result (success, failure) and reason code."
    );
    describe_counter!(SIGN_UPS, "Users provisioned just in time at their first sign-in.");
    describe_counter!(
        EMAIL_VERIFIED_WITHHELD,
        "Sign-ins whose IdP said the email address is verified and whose tenant did not pass it on, by reason code."
    );
    describe_counter!(TOKENS_ISSUED, "Tokens issued at /token by grant type.");
    describe_counter!(REFRESH_SUCCESSES, "Refresh tokens rotated successfully.");
    describe_counter!(
        REFRESH_REUSE,
        "Used refresh tokens presented again (the whole family is revoked)."
    );
    describe_counter!(THROTTLED, "Requests refused by a rate limit (429), by route.");
    describe_counter!(
        SHED,
        "Requests refused at once (503) by load shedding, by route class and reason: overload.shed (the listener at its max_in_flight) or overload.client_concurrency (one client address at max_in_flight_per_client)."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Request latency by matched route template, method and status."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Store operations that failed (Redis unreachable, timed out or answering an error)."
    );
    describe_histogram!(REDIS_DURATION, Unit::Seconds, "Store operation latency by operation.");
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Latency of upstream IdP work: SAML ACS validation, OIDC token and JWKS calls."
    );
    describe_counter!(
        METADATA_REFRESHES,
        "SAML metadata refreshes by tenant, connection and result (updated, unchanged, refused, failed)."
    );
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Seconds until a certificate expires (negative once expired), by tenant, connection and use."
    );
    describe_counter!(
        HOOK_CALLS,
        "Calls of tenants' hooks by kind and outcome (hook.answered or the failure's reason code)."
    );
    describe_counter!(
        CONNECTOR_BUILDS,
        "Connections' validators built: first use on this replica, after a change, or after eviction."
    );
    describe_counter!(
        CONNECTOR_EVICTIONS,
        "Built validators dropped to stay within [upstream] cached_connections."
    );
    describe_histogram!(
        RUNTIME_WAKE_DELAY,
        Unit::Seconds,
        "How long a task made ready waited for one of the replica's workers (probed every 10 ms)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
}

/// A sign-in that succeeded (`reason` is `login.succeeded` or `sso.reused`).
pub fn sign_in_succeeded(tenant: &str, connection: &str, reason: &'static str) {
    metrics::counter!(SIGN_INS, "tenant" => tenant.to_owned(), "connection" => connection.to_owned(),
        "result" => "success", "reason" => reason)
    .increment(1);
}

/// A sign-in that was refused with `reason`. Pass ids only once the
/// connection was found in the registry, else [`UNKNOWN`].
pub fn sign_in_failed(tenant: &str, connection: &str, reason: &'static str) {
    metrics::counter!(SIGN_INS, "tenant" => tenant.to_owned(), "connection" => connection.to_owned(),
        "result" => "failure", "reason" => reason)
    .increment(1);
}

/// A sign-in whose IdP's word that the address is verified was not passed
/// on, for `reason`.
pub fn email_verified_withheld(tenant: &str, connection: &str, reason: &'static str) {
    metrics::counter!(EMAIL_VERIFIED_WITHHELD, "tenant" => tenant.to_owned(), "connection" => connection.to_owned(),
        "reason" => reason)
    .increment(1);
}

/// A user provisioned just in time.
pub fn sign_up(tenant: &str, connection: &str) {
    metrics::counter!(SIGN_UPS, "tenant" => tenant.to_owned(), "connection" => connection.to_owned()).increment(1);
}

/// Tokens issued at `/token` for `grant`.
pub fn token_issued(grant: &'static str) {
    metrics::counter!(TOKENS_ISSUED, "grant" => grant).increment(1);
}

/// A call of a tenant's hook of `kind` that ended with `outcome`
/// (`hook.answered` or a failure's reason code).
pub fn hook_called(kind: &'static str, outcome: &'static str) {
    metrics::counter!(HOOK_CALLS, "kind" => kind, "outcome" => outcome).increment(1);
}

/// A connection's validator built.
pub fn connector_built() {
    metrics::counter!(CONNECTOR_BUILDS).increment(1);
}

/// `count` built validators dropped from the bounded cache.
pub fn connectors_evicted(count: usize) {
    metrics::counter!(CONNECTOR_EVICTIONS).increment(count as u64);
}

/// A refresh token rotated.
pub fn refresh_succeeded() {
    metrics::counter!(REFRESH_SUCCESSES).increment(1);
}

/// A used refresh token presented again.
pub fn refresh_reused() {
    metrics::counter!(REFRESH_REUSE).increment(1);
}

/// A request refused by a rate limit (429), by route template (the
/// throttle layer calls this; pass the matched template or a fixed name,
/// never a raw path).
pub fn throttled(route: impl Into<String>) {
    metrics::counter!(THROTTLED, "route" => route.into()).increment(1);
}

/// A request refused by load shedding (503), by route class and reason
/// (`overload.shed`: the budget; `overload.client_concurrency`: the
/// client address's share of it).
pub fn shed(route: &'static str, reason: &'static str) {
    metrics::counter!(SHED, "route" => route, "reason" => reason).increment(1);
}

/// One request's latency by route template (`method` is one of a closed
/// set of names). The histogram of each (route, method, status) is looked
/// up in the recorder once and kept ([`HttpHistograms`]): a request then
/// records without building labels.
pub fn http_request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    HTTP_HISTOGRAMS.get(route, method, status).record(elapsed.as_secs_f64());
}

/// The `portcullis_http_request_duration_seconds` histograms already
/// registered, by status, method and route template. Bounded: routes are
/// templates (or [`UNKNOWN`]-like fixed names), methods a closed set,
/// statuses the few the handlers answer. Only histograms of our own
/// installed recorder are kept, so a handle taken before [`install`] (a
/// no-op) is never kept past it.
#[derive(Default)]
struct HttpHistograms {
    by_status: std::sync::RwLock<HttpHistogramMap>,
}

type HttpHistogramMap =
    std::collections::HashMap<(u16, &'static str), std::collections::HashMap<String, metrics::Histogram>>;

static HTTP_HISTOGRAMS: std::sync::LazyLock<HttpHistograms> = std::sync::LazyLock::new(HttpHistograms::default);

impl HttpHistograms {
    fn get(&self, route: &str, method: &'static str, status: u16) -> metrics::Histogram {
        let known = self
            .by_status
            .read()
            .ok()
            .and_then(|m| m.get(&(status, method)).and_then(|r| r.get(route)).cloned());
        if let Some(h) = known {
            return h;
        }
        let h = metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method,
            "status" => status.to_string());
        if handle().is_some() {
            if let Ok(mut m) = self.by_status.write() {
                m.entry((status, method))
                    .or_default()
                    .insert(route.to_owned(), h.clone());
            }
        }
        h
    }
}

/// The `portcullis_redis_operation_duration_seconds` histogram of each
/// store operation, looked up in the recorder once and kept (a store
/// operation is the most frequent thing measured: about 40 per sign-in),
/// so recording builds no labels and no metrics key. Bounded: operations
/// are the `Store` methods' static names. As for [`HttpHistograms`], only
/// handles of our installed recorder are kept.
#[derive(Default)]
struct StoreHistograms {
    by_op: std::sync::RwLock<std::collections::HashMap<&'static str, metrics::Histogram>>,
}

static STORE_HISTOGRAMS: std::sync::LazyLock<StoreHistograms> = std::sync::LazyLock::new(StoreHistograms::default);

impl StoreHistograms {
    fn get(&self, op: &'static str) -> metrics::Histogram {
        if let Some(h) = self.by_op.read().ok().and_then(|m| m.get(op).cloned()) {
            return h;
        }
        let h = metrics::histogram!(REDIS_DURATION, "op" => op);
        if handle().is_some() {
            if let Ok(mut m) = self.by_op.write() {
                m.insert(op, h.clone());
            }
        }
        h
    }
}

/// One store operation: its latency, and an error when it failed.
pub fn store_operation(op: &'static str, elapsed: Duration, ok: bool) {
    STORE_HISTOGRAMS.get(op).record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!(REDIS_ERRORS).increment(1);
    }
}

/// One wake-delay probe of the replica's runtime (`wake_probe.rs`).
pub fn runtime_wake_delay(delay: Duration) {
    metrics::histogram!(RUNTIME_WAKE_DELAY).record(delay.as_secs_f64());
}

/// One piece of upstream work (`saml_acs`, `oidc_token`, `oidc_jwks`,
/// `oidc_discovery`, `oidc_userinfo`, `oidc_refresh`): its latency and whether it succeeded.
pub fn upstream(op: &'static str, elapsed: Duration, ok: bool) {
    metrics::histogram!(UPSTREAM_DURATION, "op" => op, "result" => if ok { "ok" } else { "error" })
        .record(elapsed.as_secs_f64());
}

/// One SAML metadata refresh and its result (`updated`, `unchanged`, `refused`, `failed`).
pub fn metadata_refresh(tenant: &str, connection: &str, result: &'static str) {
    metrics::counter!(METADATA_REFRESHES, "tenant" => tenant.to_owned(), "connection" => connection.to_owned(),
        "result" => result)
    .increment(1);
}

/// Times a future: its output and how long it took.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = std::time::Instant::now();
    let out = f.await;
    (out, start.elapsed())
}
