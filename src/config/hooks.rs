//! `[hooks]`: how the gateway calls tenants' hooks (signed webhooks).

use super::ConfigProblem;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[hooks]`
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSettings {
    /// Timeout of one attempt when a hook's configuration names none, in
    /// milliseconds (`PORTCULLIS_HOOKS_DEFAULT_TIMEOUT_MS`).
    pub default_timeout_ms: u64,
    /// The longest timeout a tenant may configure, in milliseconds.
    pub max_timeout_ms: u64,
    /// Extra attempts after a failed one, for idempotent hooks only
    /// (pre-token generation, user migration, define and verify challenge),
    /// and only after a timeout, a refused connection or a 5xx/429 answer
    /// (`PORTCULLIS_HOOKS_RETRIES`).
    pub retries: u32,
    /// The wait before a retry, in milliseconds.
    pub retry_backoff_ms: u64,
    /// Consecutive failed calls of one tenant's hook after which this
    /// replica stops calling it for `breaker_open_secs` (the circuit opens).
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one trial call is let
    /// through (`PORTCULLIS_HOOKS_BREAKER_OPEN_SECS`).
    pub breaker_open_secs: u64,
    /// The most (tenant, hook) circuits one replica tracks; beyond it new
    /// failing hooks are not tracked (each call still fails closed).
    pub breaker_max_entries: usize,
    /// The largest answer a hook may send, in bytes.
    pub max_answer_bytes: usize,
    /// How long a replica reuses a tenant's hook configuration it read when
    /// minting tokens before reading it in full again, in seconds (0 to 60;
    /// 0: read on every mint). Every use re-validates it against the store
    /// (the stored hook's fingerprint, or that an absent hook is still
    /// absent), so a hook added, changed or removed through any replica
    /// applies on every replica at once.
    pub config_cache_secs: u64,
}

impl Default for HooksSettings {
    fn default() -> Self {
        Self {
            default_timeout_ms: 2000,
            max_timeout_ms: 10_000,
            retries: 1,
            retry_backoff_ms: 100,
            breaker_failures: 5,
            breaker_open_secs: 30,
            breaker_max_entries: 10_000,
            max_answer_bytes: 64 * 1024,
            config_cache_secs: 5,
        }
    }
}

impl HooksSettings {
    /// Applies `PORTCULLIS_HOOKS_*` overrides.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>, problems: &mut Vec<ConfigProblem>) {
        let mut number = |name: &str, target: &mut u64| {
            if let Some(v) = env.get(name) {
                match v.parse() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected a number, found {v:?}"),
                    }),
                }
            }
        };
        number("PORTCULLIS_HOOKS_DEFAULT_TIMEOUT_MS", &mut self.default_timeout_ms);
        number("PORTCULLIS_HOOKS_BREAKER_OPEN_SECS", &mut self.breaker_open_secs);
        let mut retries = u64::from(self.retries);
        number("PORTCULLIS_HOOKS_RETRIES", &mut retries);
        self.retries = u32::try_from(retries).unwrap_or(u32::MAX);
    }

    /// Checks every value; `bad(field, message)` collects the problems.
    pub fn validate(&self, bad: &mut dyn FnMut(&str, String)) {
        for (field, value, min, max) in [
            ("hooks.max_timeout_ms", self.max_timeout_ms, 100, 30_000),
            (
                "hooks.default_timeout_ms",
                self.default_timeout_ms,
                100,
                self.max_timeout_ms,
            ),
            ("hooks.retries", u64::from(self.retries), 0, 3),
            ("hooks.retry_backoff_ms", self.retry_backoff_ms, 0, 5000),
            ("hooks.breaker_failures", u64::from(self.breaker_failures), 1, 1000),
            ("hooks.breaker_open_secs", self.breaker_open_secs, 1, 3600),
            ("hooks.config_cache_secs", self.config_cache_secs, 0, 60),
            (
                "hooks.breaker_max_entries",
                u64::try_from(self.breaker_max_entries).unwrap_or(u64::MAX),
                1,
                1_000_000,
            ),
            (
                "hooks.max_answer_bytes",
                u64::try_from(self.max_answer_bytes).unwrap_or(u64::MAX),
                1024,
                1024 * 1024,
            ),
        ] {
            if value < min || value > max {
                bad(field, format!("{value} is outside {min}..={max}"));
            }
        }
    }

    /// The hook client's settings.
    pub fn hooks_config(&self, allow_private_networks: bool) -> crate::hooks::HooksConfig {
        crate::hooks::HooksConfig {
            allow_private_networks,
            default_timeout: Duration::from_millis(self.default_timeout_ms),
            max_timeout: Duration::from_millis(self.max_timeout_ms),
            retries: self.retries,
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
            breaker_failures: self.breaker_failures,
            breaker_open: Duration::from_secs(self.breaker_open_secs),
            breaker_max_entries: self.breaker_max_entries,
            max_answer_bytes: self.max_answer_bytes,
            config_cache: Duration::from_secs(self.config_cache_secs),
        }
    }
}
