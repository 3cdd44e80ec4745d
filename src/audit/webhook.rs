//! Delivery of audit events to a webhook, so an operator can ship them to a
//! SIEM: signed, retried with exponential backoff, at least once across any
//! number of replicas, each event carrying its id for de-duplication.
//!
//! [`Audit::record`](super::Audit::record) appends every event to one
//! bounded outbox stream ([`outbox_key`]) when a webhook is configured. Each
//! replica runs a [`Delivery`] as a consumer of one consumer group
//! ([`GROUP`]) on it: `XREADGROUP` hands each new event to exactly one
//! replica, which POSTs it and acknowledges it (`XACK`) only after a 2xx.
//! A failed attempt is retried with exponential backoff for at most half of
//! `claim_idle`; then the event stays pending, and after `claim_idle` any
//! replica (a replica that died mid-delivery included) claims it again with
//! `XAUTOCLAIM` and starts over. A replica never retries longer than half
//! the claim time (plus one request timeout, which configuration keeps below
//! the other half), so two replicas never deliver one event concurrently; a
//! crash between the receiver's 2xx and the `XACK` delivers it again, which
//! is what the event id is for.
//!
//! The request: `POST <url>` with the event's JSON as body and
//! * `Content-Type: application/json`,
//! * `Portcullis-Event-Id: <event id>`,
//! * `Portcullis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where
//!   the HMAC is keyed with the shared secret over `<t>.<body>` (the
//!   timestamp, a dot, the exact body bytes).
//!
//! A receiver verifies by recomputing the HMAC over the header's `t`, a dot
//! and the raw body, comparing it with `v1` in constant time, refusing a `t`
//! more than a few minutes from its own clock (replay), and de-duplicating by
//! the event id ([`verify`] does the first three).

use super::AuditEvent;
use crate::clock::SharedClock;
use crate::secret::Secret;
use crate::store::{Key, SharedStore, StoreError, StreamEntry};
use crate::upstream::http::{OutboundConfig, OutboundHttp};
use std::time::Duration;
use url::Url;

/// The consumer group every replica's [`Delivery`] reads the outbox through.
pub const GROUP: &str = "webhook";

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "portcullis-signature";

/// The header carrying the event id (also in the body as `id`).
pub const EVENT_ID_HEADER: &str = "portcullis-event-id";

/// The outbox stream the webhook is fed from (one per deployment).
pub fn outbox_key() -> Key {
    Key::global("audit_outbox", "events")
}

/// The ids of one kind's events in the outbox (admin changes, security
/// events), each kind bounded on its own (`Store::stream_add_classed`).
pub fn outbox_kind_key(kind: &str) -> Key {
    Key::global("audit_outbox", super::kind_list_name(kind))
}

/// The webhook's settings (`[audit.webhook]`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where events are POSTed: https, or http to a loopback or private
    /// host only when `allow_private_networks` is on.
    pub url: Url,
    /// The HMAC key shared with the receiver.
    pub secret: Secret,
    /// Connect-plus-response timeout of one attempt.
    pub timeout: Duration,
    /// The wait after the first failed attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How long an event may stay pending with one replica before another
    /// claims it (a replica that died, or gave up for now).
    pub claim_idle: Duration,
    /// How often an idle replica looks for new events.
    pub poll_interval: Duration,
    /// How many events one replica takes at a time.
    pub batch: usize,
    /// Whether loopback and private addresses may be called.
    pub allow_private_networks: bool,
}

/// Why a webhook configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidWebhook(pub String);

/// Checks a webhook URL: https, or http only to a loopback or private host
/// when private networks are allowed (tests, a collector next to the gateway).
pub fn check_url(url: &Url, allow_private_networks: bool) -> Result<(), InvalidWebhook> {
    if url.host().is_none() || url.cannot_be_a_base() {
        return Err(InvalidWebhook("must be an absolute URL with a host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidWebhook("must not carry credentials (use the secret)".into()));
    }
    let private_host = match url.host() {
        Some(url::Host::Ipv4(ip)) => crate::upstream::http::guard::is_forbidden(ip.into()),
        Some(url::Host::Ipv6(ip)) => crate::upstream::http::guard::is_forbidden(ip.into()),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_private_networks && private_host => Ok(()),
        "http" => Err(InvalidWebhook(
            "must be https (http only to a loopback or private address, with outbound.allow_private_networks)".into(),
        )),
        _ => Err(InvalidWebhook("must be an https URL".into())),
    }
}

/// `v1`: the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    let key = openssl::pkey::PKey::hmac(secret)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
    signer.update(timestamp.to_string().as_bytes())?;
    signer.update(b".")?;
    signer.update(body)?;
    Ok(hex::encode(signer.sign_to_vec()?))
}

/// The `Portcullis-Signature` header value for `body` sent at `timestamp`.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    Ok(format!("t={timestamp},v1={}", sign(secret, timestamp, body)?))
}

/// Verifies a `Portcullis-Signature` header as a receiver should: a `v1`
/// equal (constant time) to the HMAC over `t`, a dot and `body`, and `t`
/// within `tolerance_secs` of `now` (unix seconds).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return false;
    }
    let Ok(expected) = sign(secret, t, body) else {
        return false;
    };
    v1.iter().any(|v| {
        use subtle::ConstantTimeEq;
        v.len() == expected.len() && bool::from(v.as_bytes().ct_eq(expected.as_bytes()))
    })
}

/// One replica's delivery worker.
pub struct Delivery {
    store: SharedStore,
    clock: SharedClock,
    http: OutboundHttp,
    config: WebhookConfig,
    consumer: String,
}

/// The end of one delivery of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// The receiver answered 2xx and the event is acknowledged.
    Yes,
    /// Every attempt in this replica's window failed: left pending.
    GaveUp,
    /// The event cannot be sent (not an event): acknowledged and dropped.
    Unreadable,
}

impl Delivery {
    /// A worker on `store` delivering to `config.url`, under a random
    /// consumer name of its own. Fails when the URL is not allowed.
    pub fn new(store: SharedStore, clock: SharedClock, config: WebhookConfig) -> Result<Self, InvalidWebhook> {
        check_url(&config.url, config.allow_private_networks)?;
        let http = OutboundHttp::new(OutboundConfig {
            allow_private_networks: config.allow_private_networks,
            timeout: config.timeout,
            // The receiver's answer is not read beyond its status.
            max_body_bytes: 64 * 1024,
        })
        .map_err(|e| InvalidWebhook(e.detail))?;
        Ok(Self {
            store,
            clock,
            http,
            config,
            consumer: format!("replica-{}", crate::tokens::random_token(9)),
        })
    }

    /// This worker's consumer name in [`GROUP`].
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs the worker in the background until [`DeliveryHandle::stop`].
    pub fn spawn(self) -> DeliveryHandle {
        DeliveryHandle {
            task: tokio::spawn(self.run()),
        }
    }

    async fn run(self) {
        let mut group_ready = false;
        loop {
            if !group_ready {
                match self.store.stream_group_create(&outbox_key(), GROUP).await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(reason = "audit.webhook_store_failed", error = %e, "webhook outbox not readable");
                    }
                }
            }
            let handled = if group_ready {
                match self.round().await {
                    Ok(n) => n,
                    Err(e) => {
                        // The group may be gone with the data (Redis restarted
                        // without persistence): create it again next time.
                        tracing::warn!(reason = "audit.webhook_store_failed", error = %e, "webhook outbox not readable");
                        group_ready = false;
                        0
                    }
                }
            } else {
                0
            };
            if handled == 0 {
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
    }

    /// One round: claims events left pending too long (by a dead replica, or
    /// given up for now), else takes new ones, and delivers them in order.
    /// Returns how many events it handled.
    pub async fn round(&self) -> Result<usize, StoreError> {
        let key = outbox_key();
        let batch = self.config.batch.max(1);
        let mut entries = self
            .store
            .stream_autoclaim(&key, GROUP, &self.consumer, self.config.claim_idle, batch)
            .await?;
        if entries.is_empty() {
            entries = self.store.stream_group_read(&key, GROUP, &self.consumer, batch).await?;
        } else {
            tracing::info!(reason = "audit.webhook_reclaimed", events = entries.len(), consumer = %self.consumer, "pending webhook events claimed");
        }
        // Everything taken now is ours until `claim_idle` has passed: stop
        // trying at half of it, so nobody claims an event we still send.
        let deadline = tokio::time::Instant::now() + self.config.claim_idle / 2;
        let count = entries.len();
        for entry in entries {
            match self.deliver(&entry, deadline).await {
                Delivered::Yes | Delivered::Unreadable => {
                    self.store.stream_ack(&key, GROUP, &entry.id).await?;
                }
                Delivered::GaveUp => {}
            }
        }
        Ok(count)
    }

    async fn deliver(&self, entry: &StreamEntry, deadline: tokio::time::Instant) -> Delivered {
        let event_id = match serde_json::from_slice::<AuditEvent>(&entry.value) {
            Ok(e) => e.id,
            Err(e) => {
                tracing::error!(reason = "audit.webhook_unreadable", entry = %entry.id, error = %e, "outbox entry is not an event: dropped");
                return Delivered::Unreadable;
            }
        };
        let mut backoff = self.config.initial_backoff;
        let mut attempt: u32 = 0;
        if tokio::time::Instant::now() >= deadline {
            // Taken too long ago: another replica may claim it any moment.
            return Delivered::GaveUp;
        }
        loop {
            attempt = attempt.saturating_add(1);
            match self.attempt(&event_id, &entry.value).await {
                Ok(()) => {
                    tracing::info!(reason = "audit.webhook_delivered", event_id = %event_id, attempt, "audit event delivered");
                    return Delivered::Yes;
                }
                Err(why) => {
                    tracing::warn!(reason = "audit.webhook_failed", event_id = %event_id, attempt, error = %why, "webhook attempt failed");
                }
            }
            let next = tokio::time::Instant::now() + backoff;
            if next >= deadline {
                tracing::warn!(reason = "audit.webhook_gave_up", event_id = %event_id, attempt, "left pending; retried after the claim time");
                return Delivered::GaveUp;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
        }
    }

    /// One POST; `Err` says why it did not count as delivered.
    async fn attempt(&self, event_id: &str, body: &[u8]) -> Result<(), String> {
        let t = self.clock.now().timestamp();
        let signature = signature_header(self.config.secret.expose().as_bytes(), t, body).map_err(|e| e.to_string())?;
        let request = http::Request::post(self.config.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event_id)
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .map_err(|e| e.to_string())?;
        let resp = self
            .http
            .execute(request)
            .await
            .map_err(|e| format!("{}: {}", e.code, e.detail))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", resp.status().as_u16()))
        }
    }
}

/// A running [`Delivery`]; dropping it leaves the worker running.
pub struct DeliveryHandle {
    task: tokio::task::JoinHandle<()>,
}

impl DeliveryHandle {
    /// Stops the worker now. An event it was sending stays pending and is
    /// claimed by another replica (or this one, restarted) after the claim
    /// time: at least once, never lost.
    pub async fn stop(self) {
        self.task.abort();
        if let Err(e) = self.task.await {
            if !e.is_cancelled() {
                tracing::error!(reason = "audit.webhook_task_failed", error = %e, "webhook worker ended abnormally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_changes() {
        let body = br#"{"id":"e1"}"#;
        let h = signature_header(b"k3y", 1_700_000_000, body).unwrap();
        assert!(h.starts_with("t=1700000000,v1="));
        assert!(verify(b"k3y", &h, body, 1_700_000_100, 300));
        assert!(!verify(b"other", &h, body, 1_700_000_100, 300));
        assert!(!verify(b"k3y", &h, br#"{"id":"e2"}"#, 1_700_000_100, 300));
        assert!(!verify(b"k3y", &h, body, 1_700_001_000, 300), "too old");
        let moved = h.replace("t=1700000000", "t=1700000001");
        assert!(!verify(b"k3y", &moved, body, 1_700_000_100, 300));
        assert!(!verify(b"k3y", "v1=00", body, 1_700_000_100, 300));
    }

    #[test]
    fn webhook_urls_are_https_unless_private_networks_are_allowed() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(check_url(&u("https://siem.example/hook"), false).is_ok());
        assert!(check_url(&u("http://siem.example/hook"), false).is_err());
        assert!(check_url(&u("http://127.0.0.1:9/hook"), true).is_ok());
        assert!(check_url(&u("http://127.0.0.1:9/hook"), false).is_err());
        assert!(check_url(&u("http://siem.example/hook"), true).is_err());
        assert!(check_url(&u("ftp://siem.example/hook"), true).is_err());
        assert!(check_url(&u("https://user:pw@siem.example/hook"), false).is_err());
    }
}
