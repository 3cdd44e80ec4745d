//! The audit log: every change made through the admin API (or the setup
//! portal) by anyone, with who made it, what, to what, when, and the state
//! before and after, secrets redacted.
//!
//! Events of a tenant go to that tenant's log, platform-wide events (apps,
//! resource servers, signing keys, platform API keys, creating and deleting
//! tenants) to the global log. Each log is a bounded list in the store
//! ([`Store::list_push_capped`]), newest first, so it never grows without
//! limit. Every event is also written to the process log as one structured
//! line (`reason = "audit"`), so a log pipeline keeps the full history.
//!
//! Callers build an [`AuditEvent`] (the admin edge pre-fills the actor and
//! the request id) and call [`Audit::record`] once the change is stored.

use crate::clock::SharedClock;
use crate::ids::TenantId;
use crate::store::{Key, SharedStore, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many events each log keeps by default (the oldest are dropped).
pub const DEFAULT_MAX_EVENTS: usize = 1000;

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
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PlatformToken => f.write_str("platform_token"),
            Self::PlatformKey(id) => write!(f, "platform_key:{id}"),
            Self::TenantKey(id) => write!(f, "tenant_key:{id}"),
            Self::SetupLink(id) => write!(f, "setup_link:{id}"),
            Self::System(job) => write!(f, "system:{job}"),
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

/// One change, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// A random id, unique per event (the log's cursor refers to it).
    pub id: String,
    /// When (the injected clock), set by [`Audit::record`].
    pub at: DateTime<Utc>,
    /// Who: the rendered [`Actor`].
    pub actor: String,
    /// What, as `area.verb_past`: `tenant.created`, `connection.deleted`,
    /// `user.disabled`, `client.created`, `api_key.created`...
    pub action: String,
    /// The tenant the change belongs to; `None` for platform-wide changes,
    /// which go to the global log.
    pub tenant: Option<TenantId>,
    /// What was changed.
    pub target: Target,
    /// The state before (redacted); `None` when it did not exist.
    pub before: Option<Value>,
    /// The state after (redacted); `None` when it no longer exists.
    pub after: Option<Value>,
    /// The id of the request that made the change.
    pub request_id: String,
}

impl AuditEvent {
    /// An event by `actor`, doing `action` to `target`, in request `request_id`.
    pub fn new(actor: &Actor, action: &str, target: Target, request_id: &str) -> Self {
        Self {
            id: crate::tokens::random_token(12),
            at: DateTime::<Utc>::UNIX_EPOCH,
            actor: actor.to_string(),
            action: action.to_owned(),
            tenant: None,
            target,
            before: None,
            after: None,
            request_id: request_id.to_owned(),
        }
    }

    /// The change belongs to `tenant` (and goes to its log).
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

/// The audit log.
#[derive(Clone)]
pub struct Audit {
    store: SharedStore,
    clock: SharedClock,
    max_events: usize,
}

/// How many events a page reads from the store at a time while looking for
/// the cursor's event.
const SCAN_CHUNK: usize = 100;

impl Audit {
    /// The audit log in `store`, timed by `clock`, keeping
    /// [`DEFAULT_MAX_EVENTS`] per log.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self::with_max_events(store, clock, DEFAULT_MAX_EVENTS)
    }

    /// The same, keeping at most `max_events` per log.
    pub fn with_max_events(store: SharedStore, clock: SharedClock, max_events: usize) -> Self {
        Self {
            store,
            clock,
            max_events: max_events.max(1),
        }
    }

    fn log_key(tenant: Option<&TenantId>) -> Key {
        match tenant {
            Some(t) => Key::tenant(t.as_str(), "audit", "log"),
            None => Key::global("audit", "log"),
        }
    }

    /// Deletes `tenant`'s log (the tenant is deleted: a tenant created again
    /// under the same id must not read it). The global log keeps the
    /// `tenant.deleted` event, and the process log every event.
    pub async fn purge(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.store.delete(&Self::log_key(Some(tenant))).await.map(|_| ())
    }

    /// Records `event`: stamps the time, redacts `before`/`after`, writes it
    /// to the process log (`reason = "audit"`) and to its tenant's (or the
    /// global) log in the store. The process log line is written first, so a
    /// store failure (returned) still leaves a trace of the change.
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
            actor = %event.actor,
            action = %event.action,
            tenant = event.tenant.as_ref().map(|t| t.as_str()).unwrap_or(""),
            target_kind = %event.target.kind,
            target_id = %event.target.id,
            request_id = %event.request_id,
            before = %before,
            after = %after,
            "audit event"
        );
        let key = Self::log_key(event.tenant.as_ref());
        if let Err(e) = self.store.list_push_capped(&key, &bytes, self.max_events).await {
            tracing::error!(reason = "audit.store_failed", event_id = %event.id, error = %e, "audit event not stored");
            return Err(e);
        }
        Ok(())
    }

    /// A page of `tenant`'s log (the global log for `None`), newest first:
    /// at most `limit` events after `cursor` (from the start without one).
    ///
    /// A cursor reads `<position>.<event id>`: events are pushed at the head,
    /// so the event named moved at most further down, and the search for it
    /// starts at the position it had. An event trimmed away since ends the
    /// listing.
    pub async fn list(
        &self,
        tenant: Option<&TenantId>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, AuditError> {
        let key = Self::log_key(tenant);
        let start = match cursor {
            None => 0,
            Some(c) => {
                let (pos, id) = c.split_once('.').ok_or(InvalidCursor)?;
                let pos: usize = pos.parse().map_err(|_| InvalidCursor)?;
                if id.is_empty() || pos >= self.max_events {
                    return Err(InvalidCursor.into());
                }
                match self.find(&key, pos, id).await? {
                    Some(at) => at.saturating_add(1),
                    None => {
                        return Ok(Page {
                            events: Vec::new(),
                            next_cursor: None,
                        })
                    }
                }
            }
        };
        let limit = limit.max(1);
        // One more than asked tells whether another page exists.
        let raw = self.store.list_range(&key, start, limit.saturating_add(1)).await?;
        let more = raw.len() > limit;
        let mut events = Vec::new();
        for bytes in raw.into_iter().take(limit) {
            events.push(serde_json::from_slice::<AuditEvent>(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        let next_cursor = match events.last() {
            Some(last) if more => Some(format!(
                "{}.{}",
                start.saturating_add(events.len()).saturating_sub(1),
                last.id
            )),
            _ => None,
        };
        Ok(Page { events, next_cursor })
    }

    /// The position of event `id` at or after `from`, if still in the log.
    async fn find(&self, key: &Key, from: usize, id: &str) -> Result<Option<usize>, StoreError> {
        let mut at = from;
        while at < self.max_events {
            let chunk = self.store.list_range(key, at, SCAN_CHUNK).await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            for (i, bytes) in chunk.iter().enumerate() {
                #[derive(Deserialize)]
                struct IdOnly {
                    id: String,
                }
                let e: IdOnly = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if e.id == id {
                    return Ok(Some(at.saturating_add(i)));
                }
            }
            at = at.saturating_add(chunk.len());
        }
        Ok(None)
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

    #[test]
    fn actors_render_kind_and_id() {
        assert_eq!(Actor::PlatformToken.to_string(), "platform_token");
        assert_eq!(Actor::PlatformKey("a1".into()).to_string(), "platform_key:a1");
        assert_eq!(Actor::TenantKey("b2".into()).to_string(), "tenant_key:b2");
        assert_eq!(Actor::SetupLink("c3".into()).to_string(), "setup_link:c3");
    }
}
