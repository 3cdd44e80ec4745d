//! `[local]` (local accounts: password hashing, codes, lockout) and `[mail]`
//! (how verification and reset codes are sent).

use super::ConfigProblem;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[local]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSettings {
    /// argon2id memory cost in KiB (`PORTCULLIS_LOCAL_ARGON2_MEMORY_KIB`).
    pub argon2_memory_kib: u32,
    /// argon2id passes over the memory (`PORTCULLIS_LOCAL_ARGON2_ITERATIONS`).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// The most password hashes computed at once by this replica; further
    /// sign-ins wait. Bounds memory to `argon2_memory_kib` × this.
    pub max_concurrent_hashes: usize,
    /// Failed sign-ins (per account and connection, counted in the store
    /// across replicas) before the account is locked.
    pub lockout_threshold: u32,
    /// The first lock, in seconds; each further failure doubles it.
    pub lockout_base_secs: u64,
    /// The longest lock, in seconds.
    pub lockout_max_secs: u64,
    /// How long failures are counted, from the first of them, in seconds.
    pub lockout_window_secs: u64,
}

impl Default for LocalSettings {
    fn default() -> Self {
        Self {
            // OWASP's first argon2id choice (m=19 MiB, t=2, p=1): 80 ms per
            // hash measured on a loaded 2-core machine (see config/portcullis.toml).
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 4,
            lockout_threshold: 5,
            lockout_base_secs: 30,
            lockout_max_secs: 3600,
            lockout_window_secs: 86_400,
        }
    }
}

/// `[mail]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSettings {
    /// The SMTP server (`PORTCULLIS_SMTP_URL`): `smtp://[user:password@]HOST:PORT`
    /// (STARTTLS when the server offers it; required when a user is given,
    /// unless the host is loopback) or `smtps://…` (TLS from the start).
    pub smtp_url: Option<Secret>,
    /// The sender address (`PORTCULLIS_MAIL_FROM`).
    pub from: Option<String>,
    /// Dev mode only: write each message as an `.eml` file into this folder
    /// instead of sending it (`PORTCULLIS_MAIL_SINK_DIR`).
    pub sink_dir: Option<PathBuf>,
    /// Timeout of one SMTP delivery, in seconds.
    pub timeout_secs: u64,
}

impl LocalSettings {
    /// Applies `PORTCULLIS_LOCAL_*` overrides.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>, problems: &mut Vec<ConfigProblem>) {
        for (name, target) in [
            ("PORTCULLIS_LOCAL_ARGON2_MEMORY_KIB", &mut self.argon2_memory_kib),
            ("PORTCULLIS_LOCAL_ARGON2_ITERATIONS", &mut self.argon2_iterations),
        ] {
            if let Some(v) = env.get(name) {
                match v.parse() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected a whole number, found {v:?}"),
                    }),
                }
            }
        }
    }

    /// Checks the values; `bad(field, message)` records a problem.
    pub fn validate(&self, bad: &mut dyn FnMut(&str, String)) {
        if !(8 * 1024..=1024 * 1024).contains(&self.argon2_memory_kib) {
            bad("local.argon2_memory_kib", "must be between 8192 and 1048576".into());
        }
        if !(1..=16).contains(&self.argon2_iterations) {
            bad("local.argon2_iterations", "must be between 1 and 16".into());
        }
        if !(1..=8).contains(&self.argon2_parallelism) {
            bad("local.argon2_parallelism", "must be between 1 and 8".into());
        }
        if !(1..=256).contains(&self.max_concurrent_hashes) {
            bad("local.max_concurrent_hashes", "must be between 1 and 256".into());
        }
        if !(1..=100).contains(&self.lockout_threshold) {
            bad("local.lockout_threshold", "must be between 1 and 100".into());
        }
        if self.lockout_base_secs == 0 || self.lockout_base_secs > self.lockout_max_secs {
            bad(
                "local.lockout_base_secs",
                "must be at least 1 and at most local.lockout_max_secs".into(),
            );
        }
        if self.lockout_max_secs > 86_400 {
            bad("local.lockout_max_secs", "must be at most 86400".into());
        }
        if !(60..=30 * 86_400).contains(&self.lockout_window_secs) {
            bad("local.lockout_window_secs", "must be between 60 and 2592000".into());
        }
    }
}

impl MailSettings {
    /// Applies `PORTCULLIS_SMTP_URL`, `PORTCULLIS_MAIL_FROM`, `PORTCULLIS_MAIL_SINK_DIR`.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) {
        if let Some(v) = env.get("PORTCULLIS_SMTP_URL") {
            self.smtp_url = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_MAIL_FROM") {
            self.from = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = env.get("PORTCULLIS_MAIL_SINK_DIR") {
            self.sink_dir = (!v.is_empty()).then(|| PathBuf::from(v));
        }
    }

    /// Checks the values; `bad(field, message)` records a problem.
    pub fn validate(&self, dev: bool, bad: &mut dyn FnMut(&str, String)) {
        if let Some(url) = &self.smtp_url {
            if let Err(e) = crate::mail::SmtpTarget::parse(url.expose()) {
                bad("mail.smtp_url", e);
            }
        }
        if self.sink_dir.is_some() && !dev {
            bad(
                "mail.sink_dir",
                "the mail sink only exists in dev mode; set mail.smtp_url (PORTCULLIS_SMTP_URL)".into(),
            );
        }
        if let Some(from) = &self.from {
            if from.parse::<lettre::message::Mailbox>().is_err() {
                bad("mail.from", format!("{from:?} is not an email address"));
            }
        }
        if self.timeout_secs > 120 {
            bad("mail.timeout_secs", "must be at most 120".into());
        }
    }
}
