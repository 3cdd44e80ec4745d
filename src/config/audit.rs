//! `[audit]`: how long the audit log is and where its events are delivered.

use super::ConfigProblem;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The most events of each kind (admin changes, security events) each
    /// audit stream keeps (per tenant, and the global one); older events of
    /// that kind are trimmed (`PORTCULLIS_AUDIT_MAX_EVENTS`).
    pub max_events: usize,
    /// `[audit.webhook]`: delivery to a SIEM; off without a `url`.
    pub webhook: WebhookSettings,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_events: crate::audit::DEFAULT_MAX_EVENTS,
            webhook: WebhookSettings::default(),
        }
    }
}

/// `[audit.webhook]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Where every audit event is POSTed (`PORTCULLIS_AUDIT_WEBHOOK_URL`);
    /// https, or http to a loopback/private address with
    /// `outbound.allow_private_networks`. Unset: no delivery.
    pub url: Option<String>,
    /// The HMAC-SHA256 key of the `Portcullis-Signature` header, at least 32
    /// characters (`PORTCULLIS_AUDIT_WEBHOOK_SECRET`).
    pub secret: Option<Secret>,
    /// Timeout of one attempt, in seconds.
    pub timeout_secs: u64,
    /// The wait after the first failed attempt, doubled after each failure.
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts.
    pub max_backoff_ms: u64,
    /// How long an event may stay with one replica before another takes it
    /// over (a replica that died or gave up for now); more than twice
    /// `timeout_secs`.
    pub claim_idle_secs: u64,
    /// How often an idle replica looks for new events.
    pub poll_interval_ms: u64,
    /// How many events a replica takes at a time.
    pub batch: usize,
    /// The most undelivered events of each kind (admin changes, security
    /// events) kept: the oldest of a kind are dropped from delivery when the
    /// receiver is down that long (they stay in the log).
    pub outbox_max_events: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            timeout_secs: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            claim_idle_secs: 120,
            poll_interval_ms: 1000,
            batch: 20,
            outbox_max_events: crate::audit::DEFAULT_OUTBOX_MAX_EVENTS,
        }
    }
}

impl AuditSettings {
    /// Applies `PORTCULLIS_AUDIT_*` overrides.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>, problems: &mut Vec<ConfigProblem>) {
        if let Some(v) = env.get("PORTCULLIS_AUDIT_WEBHOOK_URL") {
            self.webhook.url = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = env.get("PORTCULLIS_AUDIT_WEBHOOK_SECRET") {
            self.webhook.secret = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_AUDIT_MAX_EVENTS") {
            match v.parse() {
                Ok(n) => self.max_events = n,
                Err(_) => problems.push(ConfigProblem {
                    source: "PORTCULLIS_AUDIT_MAX_EVENTS".into(),
                    field: String::new(),
                    message: format!("expected a number, found {v:?}"),
                }),
            }
        }
    }

    /// Checks every value; `bad(field, message)` collects the problems.
    pub fn validate(&self, allow_private_networks: bool, bad: &mut dyn FnMut(&str, String)) {
        if !(10..=1_000_000).contains(&self.max_events) {
            bad(
                "audit.max_events",
                format!("{} is outside 10..=1000000", self.max_events),
            );
        }
        let w = &self.webhook;
        match (&w.url, &w.secret) {
            (None, None) => return,
            (None, Some(_)) => bad("audit.webhook.url", "is required when a webhook secret is set".into()),
            (Some(_), None) => bad(
                "audit.webhook.secret",
                "is required with a webhook URL (PORTCULLIS_AUDIT_WEBHOOK_SECRET)".into(),
            ),
            (Some(url), Some(secret)) => {
                match Url::parse(url) {
                    Err(e) => bad("audit.webhook.url", format!("not a URL ({e})")),
                    Ok(u) => {
                        if let Err(e) = crate::audit::webhook::check_url(&u, allow_private_networks) {
                            bad("audit.webhook.url", e.0);
                        }
                    }
                }
                if secret.expose().len() < 32 {
                    bad("audit.webhook.secret", "must be at least 32 characters".into());
                }
            }
        }
        for (field, value, min, max) in [
            ("audit.webhook.timeout_secs", w.timeout_secs, 1, 60),
            ("audit.webhook.initial_backoff_ms", w.initial_backoff_ms, 10, 60_000),
            ("audit.webhook.max_backoff_ms", w.max_backoff_ms, 10, 3_600_000),
            ("audit.webhook.claim_idle_secs", w.claim_idle_secs, 2, 86_400),
            ("audit.webhook.poll_interval_ms", w.poll_interval_ms, 10, 60_000),
        ] {
            if value < min || value > max {
                bad(field, format!("{value} is outside {min}..={max}"));
            }
        }
        // An attempt started in the first half of the claim time ends before
        // another replica may take the event over.
        if w.claim_idle_secs <= w.timeout_secs.saturating_mul(2) {
            bad(
                "audit.webhook.claim_idle_secs",
                "must be more than twice audit.webhook.timeout_secs".into(),
            );
        }
        if w.max_backoff_ms < w.initial_backoff_ms {
            bad(
                "audit.webhook.max_backoff_ms",
                "must not be less than initial_backoff_ms".into(),
            );
        }
        if !(1..=1000).contains(&w.batch) {
            bad("audit.webhook.batch", format!("{} is outside 1..=1000", w.batch));
        }
        if !(100..=10_000_000).contains(&w.outbox_max_events) {
            bad(
                "audit.webhook.outbox_max_events",
                format!("{} is outside 100..=10000000", w.outbox_max_events),
            );
        }
    }

    /// The audit log's settings.
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        crate::audit::AuditConfig {
            max_events: self.max_events,
            outbox_max_events: self.webhook.url.is_some().then_some(self.webhook.outbox_max_events),
        }
    }

    /// The webhook worker's settings, when a webhook is configured (and valid).
    pub fn webhook_config(&self, allow_private_networks: bool) -> Option<crate::audit::webhook::WebhookConfig> {
        let w = &self.webhook;
        let url = Url::parse(w.url.as_deref()?).ok()?;
        Some(crate::audit::webhook::WebhookConfig {
            url,
            secret: w.secret.clone()?,
            timeout: Duration::from_secs(w.timeout_secs),
            initial_backoff: Duration::from_millis(w.initial_backoff_ms),
            max_backoff: Duration::from_millis(w.max_backoff_ms),
            claim_idle: Duration::from_secs(w.claim_idle_secs),
            poll_interval: Duration::from_millis(w.poll_interval_ms),
            batch: w.batch,
            allow_private_networks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use std::collections::BTreeMap;

    fn problems(s: &Settings) -> Vec<String> {
        match s.validate("x.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn the_webhook_comes_from_the_environment_and_keeps_its_secret() {
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_AUDIT_WEBHOOK_URL", "https://siem.example.com/hook"),
            (
                "PORTCULLIS_AUDIT_WEBHOOK_SECRET",
                "0123456789abcdef0123456789abcdef-s3cr3t",
            ),
            ("PORTCULLIS_AUDIT_MAX_EVENTS", "5000"),
            ("PORTCULLIS_STORE_BACKEND", "memory"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = Settings::load(None, &env).unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!(s.audit.max_events, 5000);
        let c = s.audit.audit_config();
        assert_eq!(c.max_events, 5000);
        assert_eq!(c.outbox_max_events, Some(crate::audit::DEFAULT_OUTBOX_MAX_EVENTS));
        let w = s.audit.webhook_config(false).unwrap();
        assert_eq!(w.url.as_str(), "https://siem.example.com/hook");
        assert!(!format!("{s:?}{w:?}").contains("s3cr3t"), "secrets must not print");
        // Without a webhook: no outbox, no worker.
        let plain = Settings::default();
        assert_eq!(plain.audit.audit_config().outbox_max_events, None);
        assert!(plain.audit.webhook_config(false).is_none());
        let bad = [("PORTCULLIS_AUDIT_MAX_EVENTS".to_string(), "many".to_string())].into();
        assert!(Settings::load(None, &bad).is_err());
    }

    #[test]
    fn a_webhook_needs_https_a_long_secret_and_a_claim_time_above_two_timeouts() {
        let parse = |t: &str| Settings::parse(&format!("[store]\nbackend = \"memory\"\n{t}"), "x.toml").unwrap();
        let secret = "secret = \"0123456789abcdef0123456789abcdef\"";
        assert_eq!(
            problems(&parse(&format!(
                "[audit.webhook]\nurl = \"http://siem.example.com/h\"\n{secret}\n"
            ))),
            ["audit.webhook.url"]
        );
        assert_eq!(
            problems(&parse("[audit.webhook]\nurl = \"https://siem.example.com/h\"\n")),
            ["audit.webhook.secret"]
        );
        assert_eq!(
            problems(&parse(
                "[audit.webhook]\nurl = \"https://siem.example.com/h\"\nsecret = \"short\"\n"
            )),
            ["audit.webhook.secret"]
        );
        assert_eq!(
            problems(&parse(&format!("[audit.webhook]\n{secret}\n"))),
            ["audit.webhook.url"]
        );
        assert_eq!(
            problems(&parse(&format!(
                "[audit.webhook]\nurl = \"https://siem.example.com/h\"\n{secret}\ntimeout_secs = 10\nclaim_idle_secs = 20\n"
            ))),
            ["audit.webhook.claim_idle_secs"]
        );
        assert_eq!(problems(&parse("[audit]\nmax_events = 1\n")), ["audit.max_events"]);
        // http to loopback only with private networks allowed.
        let local = format!(
            "[outbound]\nallow_private_networks = true\n[audit.webhook]\nurl = \"http://127.0.0.1:9000/h\"\n{secret}\n"
        );
        assert!(problems(&parse(&local)).is_empty());
        assert!(
            Settings::parse("[audit.webhook]\nnope = 1\n", "x.toml").is_err(),
            "unknown keys are errors"
        );
    }
}
