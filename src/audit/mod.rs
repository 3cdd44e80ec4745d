//! The audit log: every change made through the admin API (or the setup
//! portal, tenant files, scheduled jobs) and every security event (sign-ins
//! that succeeded or failed and why, token reuse, throttling, key rotation),
//! with who, what, to what, when, the outcome and reason, the state before and
//! after (secrets redacted) and the request id.
//!
//! Events of a tenant go to that tenant's stream, platform-wide events (apps,
//! resource servers, signing keys, platform API keys, creating and deleting
//! tenants) to the global stream. Each is a Redis stream of bounded length
//! in which admin changes and security events keep `[audit] max_events`
//! each ([`Store::stream_add_classed`]: anyone can cause failed sign-ins,
//! and a flood of them must not push an admin's change out of the log),
//! read newest first with the stream id as the page cursor. Every event is also
//! written to the process log as one structured line (`reason = "audit"`),
//! so a log pipeline keeps the full history; and, when a webhook is
//! configured, to the delivery outbox that [`webhook`] drains (signed,
//! retried, at least once, across replicas).
//!
//! Callers build an [`AuditEvent`] (the admin edge pre-fills the actor and
//! the request id) and call [`Audit::record`] once the change is stored;
//! security events go through [`Audit::security`], which never fails the
//! caller and takes the request id from the request being served
//! ([`in_request`]).
//!
//! Never in an event: tokens, codes, assertions, secrets, private keys.
//! `before`/`after` pass through [`redact`]; security events carry only ids
//! (tenant, connection, client, `sub`) and stable reason codes.

pub mod webhook;

use crate::clock::SharedClock;
use crate::ids::TenantId;
use crate::store::{parse_stream_id, Key, SharedStore, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many events each log keeps by default (the oldest are dropped).
pub const DEFAULT_MAX_EVENTS: usize = 1000;

/// How many events of each kind the webhook outbox keeps by default:
/// undelivered events beyond it (a receiver down for that long) are dropped
/// from delivery, oldest of their kind first, and stay in the tenant's log
/// and the process log.
pub const DEFAULT_OUTBOX_MAX_EVENTS: usize = 10_000;

/// The value of [`AuditEvent::kind`] for changes made by someone.
pub const KIND_ADMIN: &str = "admin";
/// The value of [`AuditEvent::kind`] for security events.
pub const KIND_SECURITY: &str = "security";

tokio::task_local! {
    /// The id of the request being served, for events recorded while serving it.
    static REQUEST_ID: String;
}

/// Runs `fut` (serving one request) with `request_id` as the request id of
/// every security event recorded inside it. The edge wraps each request in it.
///
/// Not an `async fn`: one would keep `fut` twice in its state (the argument
/// and the scope it is moved into), and the edge's future is large.
pub fn in_request<F: std::future::Future>(request_id: String, fut: F) -> impl std::future::Future<Output = F::Output> {
    REQUEST_ID.scope(request_id, fut)
}

/// The id of the request being served, or `""` outside a request (a
/// scheduled job).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Who made a change. Rendered as `platform_token`, `platform_key:<id>`,
/// `tenant_key:<id>` or `setup_link:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The platform admin token (`PORTCULLIS_ADMIN_TOKEN`).
    PlatformToken,
    /// A named platform API key, by id.
    PlatformKey(String),
    /// A tenant API key, by id.
    TenantKey(String),
    /// A tenant admin who came through a setup link, by the link's id.
    SetupLink(String),
    /// The gateway itself (a scheduled job such as a metadata refresh).
    System(String),
    /// A signed-in user, by `sub`.
    User(String),
    /// An app (OIDC client), by client id.
    Client(String),
    /// Someone not (yet) known: a browser signing in, a caller over a limit.
    Anonymous,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PlatformToken => f.write_str("platform_token"),
            Self::PlatformKey(id) => write!(f, "platform_key:{id}"),
            Self::TenantKey(id) => write!(f, "tenant_key:{id}"),
            Self::SetupLink(id) => write!(f, "setup_link:{id}"),
            Self::System(job) => write!(f, "system:{job}"),
            Self::User(sub) => write!(f, "user:{sub}"),
            Self::Client(id) => write!(f, "client:{id}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// What a change was made to: a kind (`tenant`, `connection`, `client`,
/// `user`, `resource_server`, `signing_keys`, `api_key`...) and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The kind of thing.
    pub kind: String,
    /// Its id (a connection id, a client id, a user's `sub`...).
    pub id: String,
}

impl Target {
    /// A target of `kind` with `id`.
    pub fn new(kind: &str, id: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            id: id.into(),
        }
    }
}

/// One event, as recorded.
///
/// `outcome`, `reason`, `connection` and `subject` are left out of the JSON
/// when empty (`before` and `after` are `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// A random id, unique per event: receivers de-duplicate by it.
    pub id: String,
    /// [`KIND_ADMIN`] (a change someone made) or [`KIND_SECURITY`].
    #[serde(rename = "type", default = "admin_kind")]
    pub kind: String,
    /// When (the injected clock), set by [`Audit::record`].
    pub at: DateTime<Utc>,
    /// Who: the rendered [`Actor`].
    pub actor: String,
    /// What, as `area.verb_past`: `tenant.created`, `connection.deleted`,
    /// `user.disabled`, `client.created`, `signin.succeeded`,
    /// `signin.failed`, `refresh.reuse_detected`, `request.throttled`...
    pub action: String,
    /// The tenant the event belongs to; `None` for platform-wide events,
    /// which go to the global log.
    pub tenant: Option<TenantId>,
    /// What the event is about.
    pub target: Target,
    /// The state before (redacted); `None` when it did not exist.
    #[serde(default)]
    pub before: Option<Value>,
    /// The state after (redacted); `None` when it no longer exists.
    #[serde(default)]
    pub after: Option<Value>,
    /// `success` or `failure` (security events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The stable reason code of the decision (`saml.audience_mismatch`,
    /// `login.succeeded`, `refresh.reuse_detected`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The connection involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The user's `sub`, once known (a successful sign-in, a reused token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The id of the request that caused the event (`""`: none, a job).
    pub request_id: String,
}

fn admin_kind() -> String {
    KIND_ADMIN.to_owned()
}

/// `success` or `failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Success,
    /// Refused.
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl AuditEvent {
    /// An event by `actor`, doing `action` to `target`, in request `request_id`.
    pub fn new(actor: &Actor, action: &str, target: Target, request_id: &str) -> Self {
        Self {
            id: crate::tokens::random_token(12),
            kind: KIND_ADMIN.to_owned(),
            at: DateTime::<Utc>::UNIX_EPOCH,
            actor: actor.to_string(),
            action: action.to_owned(),
            tenant: None,
            target,
            before: None,
            after: None,
            outcome: None,
            reason: None,
            connection: None,
            subject: None,
            request_id: request_id.to_owned(),
        }
    }

    /// A security event: `actor` did `action` to `target` with `outcome`
    /// for `reason` (a stable reason code), in the request being served.
    pub fn security(actor: &Actor, action: &str, target: Target, outcome: Outcome, reason: &str) -> Self {
        let mut e = Self::new(actor, action, target, &current_request_id());
        e.kind = KIND_SECURITY.to_owned();
        e.outcome = Some(outcome.as_str().to_owned());
        e.reason = Some(reason.to_owned());
        e
    }

    /// A sign-in that succeeded: `sub` signed in to `tenant` through `connection`.
    pub fn signin_succeeded(tenant: &TenantId, connection: &str, sub: &str) -> Self {
        Self::security(
            &Actor::User(sub.to_owned()),
            "signin.succeeded",
            Target::new("connection", connection),
            Outcome::Success,
            "login.succeeded",
        )
        .tenant(tenant)
        .connection(connection)
        .subject(sub)
    }

    /// A sign-in refused for `reason` (no `sub`: nobody is signed in).
    pub fn signin_failed(tenant: &TenantId, connection: Option<&str>, reason: &str) -> Self {
        let target = Target::new("connection", connection.unwrap_or_default());
        let e = Self::security(&Actor::Anonymous, "signin.failed", target, Outcome::Failure, reason).tenant(tenant);
        match connection {
            Some(c) => e.connection(c),
            None => e,
        }
    }

    /// A request refused over a rate limit (`429`), for the throttling
    /// layer: `route` is the route class (`authorize`, `token`...), `scope`
    /// what was counted (`ip`, `tenant`). Pass `tenant` only for a tenant
    /// that exists (its log is a store key: a made-up tenant id must not
    /// create one); otherwise the event goes to the global log. Record it
    /// once per limited key and window, not per refused request, so an
    /// attacker cannot flood the log and the webhook.
    pub fn throttled(route: &str, scope: &str, tenant: Option<&TenantId>) -> Self {
        let e = Self::security(
            &Actor::Anonymous,
            "request.throttled",
            Target::new("route", route),
            Outcome::Failure,
            &format!("throttle.{scope}_limited"),
        );
        match tenant {
            Some(t) => e.tenant(t),
            None => e,
        }
    }

    /// The event belongs to `tenant` (and goes to its log).
    pub fn tenant(mut self, tenant: &TenantId) -> Self {
        self.tenant = Some(tenant.clone());
        self
    }

    /// The state before the change.
    pub fn before(mut self, value: Value) -> Self {
        self.before = Some(value);
        self
    }

    /// The state after the change.
    pub fn after(mut self, value: Value) -> Self {
        self.after = Some(value);
        self
    }

    /// The connection involved.
    pub fn connection(mut self, connection: &str) -> Self {
        self.connection = Some(connection.to_owned());
        self
    }

    /// The user involved, by `sub`.
    pub fn subject(mut self, sub: &str) -> Self {
        self.subject = Some(sub.to_owned());
        self
    }
}

/// Whether a JSON member name names a secret: its value never reaches the
/// audit log. Generous on purpose (a hash of a secret is redacted too).
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "key"
        || n == "d"
        || n.contains("secret")
        || n.contains("private")
        || n.contains("password")
        || n.contains("token")
        || n.ends_with("_key")
        || n.ends_with("_pem")
}

/// `value` with the value of every member that names a secret replaced by
/// [`REDACTED`], at any depth.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if is_secret_name(&k) && !v.is_null() {
                        (k, Value::String(REDACTED.to_owned()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

/// One page of a log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    /// The events, newest first.
    pub events: Vec<AuditEvent>,
    /// The cursor of the next (older) page, if there may be one.
    pub next_cursor: Option<String>,
}

/// A cursor that does not name a position in the log.
#[derive(Debug, thiserror::Error)]
#[error("the cursor is not valid")]
pub struct InvalidCursor;

/// An audit log failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cursor is malformed.
    #[error(transparent)]
    Cursor(#[from] InvalidCursor),
}

/// How the audit log is kept (`[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// The most events of each kind (admin changes, security events) each
    /// stream (per tenant, global) keeps.
    pub max_events: usize,
    /// `Some(bound)`: every event also goes to the webhook outbox, which
    /// keeps at most `bound` events; `None`: no webhook is configured.
    pub outbox_max_events: Option<usize>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
            outbox_max_events: None,
        }
    }
}

/// The name of the list of one kind's ids beside a stream that bounds the
/// kinds apart (a tenant's log, the global log, the webhook outbox).
fn kind_list_name(kind: &str) -> &'static str {
    if kind == KIND_ADMIN {
        "admin ids"
    } else {
        "security ids"
    }
}

/// The audit log.
#[derive(Clone)]
pub struct Audit {
    store: SharedStore,
    clock: SharedClock,
    config: AuditConfig,
}

impl Audit {
    /// The audit log in `store`, timed by `clock`, keeping
    /// [`DEFAULT_MAX_EVENTS`] per log, without a webhook.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self::with_config(store, clock, AuditConfig::default())
    }

    /// The same, keeping at most `max_events` per log.
    pub fn with_max_events(store: SharedStore, clock: SharedClock, max_events: usize) -> Self {
        Self::with_config(
            store,
            clock,
            AuditConfig {
                max_events,
                outbox_max_events: None,
            },
        )
    }

    /// The audit log as configured.
    pub fn with_config(store: SharedStore, clock: SharedClock, config: AuditConfig) -> Self {
        Self {
            store,
            clock,
            config: AuditConfig {
                max_events: config.max_events.max(1),
                outbox_max_events: config.outbox_max_events.map(|n| n.max(1)),
            },
        }
    }

    /// The settings in force.
    pub fn config(&self) -> AuditConfig {
        self.config
    }

    /// The stream of `tenant`'s events (the global one for `None`).
    pub fn log_key(tenant: Option<&TenantId>) -> Key {
        match tenant {
            Some(t) => Key::tenant(t.as_str(), "audit", "events"),
            None => Key::global("audit", "events"),
        }
    }

    /// The ids of one kind's events in `tenant`'s log (the global one for
    /// `None`), newest first: each kind keeps its own `max_events`, so a
    /// flood of security events (anyone can cause failed sign-ins) never
    /// pushes an admin's change out of the log, nor the other way round.
    fn kind_key(tenant: Option<&TenantId>, kind: &str) -> Key {
        let kind = kind_list_name(kind);
        match tenant {
            Some(t) => Key::tenant(t.as_str(), "audit", kind),
            None => Key::global("audit", kind),
        }
    }

    /// The list the log was kept in before it became a stream: deleted with
    /// its tenant, otherwise left as it was (the process log has its events).
    fn legacy_list_key(tenant: &TenantId) -> Key {
        Key::tenant(tenant.as_str(), "audit", "log")
    }

    /// Deletes `tenant`'s log (the tenant is deleted: a tenant created again
    /// under the same id must not read it). The global log keeps the
    /// `tenant.deleted` event, the process log every event, and the webhook
    /// outbox what it has not delivered yet.
    pub async fn purge(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.store.delete(&Self::log_key(Some(tenant))).await?;
        for kind in [KIND_ADMIN, KIND_SECURITY] {
            self.store.delete(&Self::kind_key(Some(tenant), kind)).await?;
        }
        self.store.delete(&Self::legacy_list_key(tenant)).await.map(|_| ())
    }

    /// Records `event`: stamps the time, redacts `before`/`after`, writes it
    /// to the process log (`reason = "audit"`), to its tenant's (or the
    /// global) stream and, with a webhook, to the delivery outbox. The
    /// process log line is written first, so a store failure (returned)
    /// still leaves a trace of the event.
    pub async fn record(&self, mut event: AuditEvent) -> Result<(), StoreError> {
        event.at = self.clock.now();
        event.before = event.before.map(redact);
        event.after = event.after.map(redact);
        let bytes = serde_json::to_vec(&event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let before = event.before.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let after = event.after.as_ref().map(|v| v.to_string()).unwrap_or_default();
        tracing::info!(
            reason = "audit",
            event_id = %event.id,
            event_type = %event.kind,
            at = %event.at.to_rfc3339(),
            actor = %event.actor,
            action = %event.action,
            tenant = event.tenant.as_ref().map(|t| t.as_str()).unwrap_or(""),
            connection = event.connection.as_deref().unwrap_or(""),
            subject = event.subject.as_deref().unwrap_or(""),
            outcome = event.outcome.as_deref().unwrap_or(""),
            event_reason = event.reason.as_deref().unwrap_or(""),
            target_kind = %event.target.kind,
            target_id = %event.target.id,
            request_id = %event.request_id,
            before = %before,
            after = %after,
            "audit event"
        );
        let key = Self::log_key(event.tenant.as_ref());
        let kind = Self::kind_key(event.tenant.as_ref(), &event.kind);
        // Each kind keeps `max_events` of its own; the stream holds both.
        let max = self.config.max_events;
        let written = self
            .store
            .stream_add_classed(&key, &kind, &bytes, max, max.saturating_mul(2))
            .await;
        if let Err(e) = written {
            tracing::error!(reason = "audit.store_failed", event_id = %event.id, error = %e, "audit event not stored");
            return Err(e);
        }
        if let Some(bound) = self.config.outbox_max_events {
            // Kinds bounded apart here too: a flood of security events while
            // the receiver is down never drops an admin change from delivery.
            let outbox = webhook::outbox_key();
            let kind = webhook::outbox_kind_key(&event.kind);
            let queued = self
                .store
                .stream_add_classed(&outbox, &kind, &bytes, bound, bound.saturating_mul(2))
                .await;
            if let Err(e) = queued {
                tracing::error!(reason = "audit.outbox_failed", event_id = %event.id, error = %e, "audit event not queued for the webhook");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records a security event ([`AuditEvent::security`] and its helpers).
    /// A sign-in or token decision never waits on the audit log's fate: a
    /// store failure is logged (`audit.store_failed`; the process log holds
    /// the event) and the caller goes on with its own answer.
    pub async fn security(&self, event: AuditEvent) {
        if let Err(e) = self.record(event).await {
            tracing::warn!(reason = "audit.security_event_not_stored", error = %e, "security event only in the process log");
        }
    }

    /// A page of `tenant`'s log (the global log for `None`), newest first:
    /// at most `limit` events older than `cursor` (from the newest without
    /// one). The cursor is the stream id of the last event of the previous
    /// page, so newer events never shift a page; a cursor whose event was
    /// trimmed away since still continues with whatever older events remain.
    pub async fn list(
        &self,
        tenant: Option<&TenantId>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, AuditError> {
        self.page(tenant, None, cursor, limit).await
    }

    /// [`Self::list`] of `tenant`'s log without the events before `since`,
    /// the creation of the tenant as it is now: those are a predecessor's
    /// (a tenant deleted under the same id, whose log was not purged). The
    /// log is appended in time order, so the listing ends at the first such
    /// event (no cursor past it).
    pub async fn list_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, AuditError> {
        self.page(Some(tenant), Some(since), cursor, limit).await
    }

    async fn page(
        &self,
        tenant: Option<&TenantId>,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, AuditError> {
        let key = Self::log_key(tenant);
        if cursor.is_some_and(|c| parse_stream_id(c).is_none()) {
            return Err(InvalidCursor.into());
        }
        let limit = limit.max(1);
        // One more than asked tells whether another page exists.
        let raw = self
            .store
            .stream_rev_range(&key, cursor, limit.saturating_add(1))
            .await?;
        let mut more = false;
        let mut events = Vec::new();
        let mut last_id = None;
        for entry in raw {
            let event =
                serde_json::from_slice::<AuditEvent>(&entry.value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if since.is_some_and(|since| event.at < since) {
                break;
            }
            if events.len() == limit {
                more = true;
                break;
            }
            events.push(event);
            last_id = Some(entry.id);
        }
        let next_cursor = if more { last_id } else { None };
        Ok(Page { events, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let v = redact(json!({
            "client_id": "app", "client_secret": "s3cr3t", "secret_sha256": "abc",
            "nested": [{"private_key_pem": "-----BEGIN", "name": "n"}], "key": "pk.x.y",
            "api_key": "k", "public": false,
        }));
        let text = v.to_string();
        for s in ["s3cr3t", "abc", "BEGIN", "pk.x.y", "\"k\""] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(v["client_id"], "app");
        assert_eq!(v["nested"][0]["name"], "n");
        assert_eq!(v["public"], false);
    }

    /// The scopes every request runs in keep the request's future once: an
    /// `async fn` taking it would keep it twice (its argument and the scope
    /// it is moved into), and every byte of a request's future is copied
    /// when the future is boxed and moved.
    #[tokio::test]
    async fn request_scopes_do_not_double_the_future_they_wrap() {
        async fn big() -> u8 {
            let buf = [7u8; 4096];
            tokio::task::yield_now().await;
            buf[4095]
        }
        let alone = std::mem::size_of_val(&big());
        assert!(alone >= 4096);
        let id = in_request("req".into(), big());
        let span = crate::telemetry::with_request_span(tracing::Span::none(), big());
        let session = crate::store::session::request_scope(big());
        for (what, size) in [
            ("in_request", std::mem::size_of_val(&id)),
            ("with_request_span", std::mem::size_of_val(&span)),
            ("request_scope", std::mem::size_of_val(&session)),
        ] {
            assert!(size < alone + 256, "{what}: {size} bytes for a future of {alone}");
        }
        assert_eq!((id.await, span.await, session.await), (7, 7, 7));
    }

    #[tokio::test]
    async fn security_events_take_the_request_id_of_the_request_being_served() {
        let outside = AuditEvent::throttled("token", "ip", None);
        assert_eq!(outside.request_id, "");
        let inside = in_request("req-7".into(), async { AuditEvent::throttled("token", "ip", None) }).await;
        assert_eq!(inside.request_id, "req-7");
        assert_eq!(inside.kind, KIND_SECURITY);
        assert_eq!(inside.outcome.as_deref(), Some("failure"));
        assert_eq!(inside.reason.as_deref(), Some("throttle.ip_limited"));
        assert_ne!(inside.id, outside.id);
        // Admin events keep their shape: `type` is added, empty members are left out.
        let text = serde_json::to_string(&AuditEvent::new(
            &Actor::PlatformToken,
            "tenant.created",
            Target::new("tenant", "t"),
            "r",
        ))
        .unwrap();
        assert!(text.contains("\"type\":\"admin\""), "{text}");
        assert!(text.contains("\"before\":null") && !text.contains("outcome"), "{text}");
    }

    #[test]
    fn actors_render_kind_and_id() {
        assert_eq!(Actor::PlatformToken.to_string(), "platform_token");
        assert_eq!(Actor::PlatformKey("a1".into()).to_string(), "platform_key:a1");
        assert_eq!(Actor::TenantKey("b2".into()).to_string(), "tenant_key:b2");
        assert_eq!(Actor::SetupLink("c3".into()).to_string(), "setup_link:c3");
        assert_eq!(Actor::User("s".into()).to_string(), "user:s");
        assert_eq!(Actor::Client("app".into()).to_string(), "client:app");
        assert_eq!(Actor::Anonymous.to_string(), "anonymous");
    }
}
