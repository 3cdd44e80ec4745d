//! Hooks (Cognito's Lambda triggers) as signed HTTPS webhooks, configured
//! per tenant: `pre_token_generation` (`pre_token.rs`), `user_migration`,
//! `post_confirmation` and `custom_challenge` (`kinds.rs`).
//!
//! A hook's configuration (`t:<tenant>:hooks` / `<kind>`) holds its URL,
//! timeout and HMAC secret; the secret is sealed at rest
//! (`secrets::sealed::sealed_fields`) and in backups, and shown once when the
//! gateway generates it. The URL's query may be a credential too (Azure
//! Functions' `?code=`): it is sent, sealed at rest, and never shown,
//! audited or logged ([`shown_url`]). The record carries the tenant's incarnation: a hook
//! of a deleted tenant is never called for a tenant re-created with its id.
//!
//! A call is `POST <url>` with a JSON body, through the guarded outbound
//! client (`upstream::http`: no redirects, private addresses only with
//! `allow_private_networks`), signed like the audit webhook
//! (`audit::webhook::signature_header`): `Portcullis-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, plus
//! `Portcullis-Hook: <kind>` and `Portcullis-Call-Id`. Each attempt has the
//! hook's timeout; only idempotent kinds are retried, and only after a
//! timeout, a failed connection or a 5xx/429 answer. A per-replica circuit
//! breaker (`breaker.rs`) cuts a failing hook short. Every failure is a
//! [`HookError`] with a stable reason code, and the flows that call hooks
//! fail closed on it.

pub mod breaker;
pub mod challenge;
pub mod kinds;
pub mod pre_token;
pub mod recent;

use crate::clock::SharedClock;
use crate::ids::TenantId;
use crate::lru::Lru;
use crate::secret::Secret;
use crate::store::{IfChanged, Key, SharedStore, StoreError};
use crate::upstream::http::{OutboundConfig, OutboundHttp};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The header naming the hook kind of a call.
pub const KIND_HEADER: &str = "portcullis-hook";
/// The header carrying a call's id (the same on its retries).
pub const CALL_ID_HEADER: &str = "portcullis-call-id";
/// The signature header (the audit webhook's scheme).
pub const SIGNATURE_HEADER: &str = crate::audit::webhook::SIGNATURE_HEADER;

/// The kinds of hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// Adds, overrides or suppresses claims of the tokens about to be issued.
    PreTokenGeneration,
    /// Vouches for the credentials of a user the local connection does not know yet.
    UserMigration,
    /// Told after a local account is confirmed.
    PostConfirmation,
    /// Defines, creates and verifies a custom sign-in challenge.
    CustomChallenge,
}

impl HookKind {
    /// Every kind.
    pub const ALL: [HookKind; 4] = [
        Self::PreTokenGeneration,
        Self::UserMigration,
        Self::PostConfirmation,
        Self::CustomChallenge,
    ];

    /// The name in URLs, JSON and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreTokenGeneration => "pre_token_generation",
            Self::UserMigration => "user_migration",
            Self::PostConfirmation => "post_confirmation",
            Self::CustomChallenge => "custom_challenge",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether calling twice does no harm, so a failed attempt may be
    /// repeated: answers that only compute (claims, a credential check).
    /// `post_confirmation` is a notification with effects at the receiver
    /// and `custom_challenge` may send a code on `create`: never retried.
    pub fn idempotent(self) -> bool {
        match self {
            Self::PreTokenGeneration | Self::UserMigration => true,
            Self::PostConfirmation | Self::CustomChallenge => false,
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's configuration of one hook, as stored (the secret and the
/// URL's query are sealed by the store: see [`StoredHook`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "StoredHook", from = "StoredHook")]
pub struct HookConfig {
    /// Which hook.
    pub kind: HookKind,
    /// Where it is POSTed, query included. The query may hold a credential
    /// (Azure Functions' `?code=`): it is sent, but never shown, audited or
    /// logged ([`shown_url`]).
    pub url: String,
    /// The HMAC key of the signature.
    pub secret: Secret,
    /// Timeout of one attempt, in milliseconds.
    pub timeout_ms: u64,
    /// The tenant's incarnation when the hook was configured.
    pub tenant_incarnation: String,
    /// Whether its answers must be signed ([`answer_payload`]): an answer
    /// without a valid `Portcullis-Signature` for its very call is refused
    /// (`hook.unsigned_answer`), so nothing between the gateway and the hook
    /// can make up or replay one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sign_answers: bool,
    /// When it was first configured.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for HookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookConfig")
            .field("kind", &self.kind)
            .field("url", &shown_url(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .field("sign_answers", &self.sign_answers)
            .finish_non_exhaustive()
    }
}

/// A hook configuration as stored: the URL's query in a field of its own,
/// `url_query`, which the store seals like the secret
/// (`secrets::sealed::sealed_fields`). A record written before keeps its
/// query in `url`, and is read as it is; the sealing store counts that
/// query as plaintext and moves it to `url_query` on the record's next
/// write (`portcullis keys rewrap` included).
#[derive(Serialize, Deserialize)]
struct StoredHook {
    kind: HookKind,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_query: Option<String>,
    secret: Secret,
    timeout_ms: u64,
    tenant_incarnation: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sign_answers: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<HookConfig> for StoredHook {
    fn from(h: HookConfig) -> Self {
        let (url, url_query) = match h.url.split_once('?') {
            Some((base, query)) => (base.to_owned(), Some(query.to_owned())),
            None => (h.url, None),
        };
        Self {
            kind: h.kind,
            url,
            url_query,
            secret: h.secret,
            timeout_ms: h.timeout_ms,
            tenant_incarnation: h.tenant_incarnation,
            sign_answers: h.sign_answers,
            created_at: h.created_at,
            updated_at: h.updated_at,
        }
    }
}

impl From<StoredHook> for HookConfig {
    fn from(h: StoredHook) -> Self {
        Self {
            kind: h.kind,
            url: match h.url_query {
                Some(query) => format!("{}?{query}", h.url),
                None => h.url,
            },
            secret: h.secret,
            timeout_ms: h.timeout_ms,
            tenant_incarnation: h.tenant_incarnation,
            sign_answers: h.sign_answers,
            created_at: h.created_at,
            updated_at: h.updated_at,
        }
    }
}

/// What the admin API shows and the audit log records of a hook's URL in
/// place of its query.
pub const HIDDEN_QUERY: &str = "?…";

/// A hook's URL as it may be shown, audited or logged: its query, which may
/// be a credential, replaced by [`HIDDEN_QUERY`].
pub fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}{HIDDEN_QUERY}"),
        None => url.to_owned(),
    }
}

/// The store key of a tenant's hook of `kind`.
pub fn hook_key(tenant: &TenantId, kind: HookKind) -> Key {
    Key::tenant(tenant.as_str(), "hooks", kind.as_str())
}

/// The hook client's settings (`[hooks]`).
#[derive(Debug, Clone)]
pub struct HooksConfig {
    /// Whether hooks on loopback and private addresses may be called (and configured).
    pub allow_private_networks: bool,
    /// The timeout of a hook configured without one.
    pub default_timeout: Duration,
    /// The longest timeout a hook may have.
    pub max_timeout: Duration,
    /// Extra attempts for idempotent hooks.
    pub retries: u32,
    /// The wait before a retry.
    pub retry_backoff: Duration,
    /// Consecutive failures that open a circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls.
    pub breaker_open: Duration,
    /// The most circuits tracked.
    pub breaker_max_entries: usize,
    /// The largest answer read.
    pub max_answer_bytes: usize,
    /// How long a replica reuses a hook configuration it read for minting
    /// (zero: read on every mint).
    pub config_cache: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        crate::config::hooks::HooksSettings::default().hooks_config(false)
    }
}

/// Why a hook call did not give a usable answer. Every variant has a
/// stable reason code ([`HookError::reason`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    /// No answer within the timeout (`hook.timeout`).
    #[error("the hook did not answer in time: {0}")]
    Timeout(String),
    /// The connection failed (`hook.unreachable`).
    #[error("the hook could not be reached: {0}")]
    Unreachable(String),
    /// The URL is not one the gateway may call (`hook.forbidden_address`).
    #[error("the hook's address is not allowed: {0}")]
    Forbidden(String),
    /// A non-2xx answer (`hook.bad_status`).
    #[error("the hook answered {0}")]
    BadStatus(u16),
    /// A 2xx answer that is not what the kind expects (`hook.bad_answer`).
    #[error("the hook's answer is not usable: {0}")]
    BadAnswer(String),
    /// The answer tried to change or remove a protected claim (`hook.protected_claim`).
    #[error("the hook tried to change the protected claim {0:?}")]
    ProtectedClaim(String),
    /// The hook must sign its answers and this one's signature is missing,
    /// wrong, stale or for another call (`hook.unsigned_answer`).
    #[error("the hook's answer is not signed for this call: {0}")]
    Unsigned(String),
    /// The circuit is open: the hook failed too often lately (`hook.circuit_open`).
    #[error("the hook failed repeatedly; not called for now")]
    CircuitOpen,
    /// The store could not be read (`store.unavailable`).
    #[error("store: {0}")]
    Store(String),
    /// Our own failure (`hook.internal`).
    #[error("internal: {0}")]
    Internal(String),
}

impl HookError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "hook.timeout",
            Self::Unreachable(_) => "hook.unreachable",
            Self::Forbidden(_) => "hook.forbidden_address",
            Self::BadStatus(_) => "hook.bad_status",
            Self::BadAnswer(_) => "hook.bad_answer",
            Self::ProtectedClaim(_) => "hook.protected_claim",
            Self::Unsigned(_) => "hook.unsigned_answer",
            Self::CircuitOpen => "hook.circuit_open",
            Self::Store(_) => "store.unavailable",
            Self::Internal(_) => "hook.internal",
        }
    }

    /// Whether waiting and trying again may help (the hook or the store is
    /// down) rather than the hook misbehaving.
    pub fn transient(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable(_) | Self::CircuitOpen | Self::Store(_) => true,
            Self::BadStatus(s) => *s >= 500 || *s == 429,
            Self::Forbidden(_)
            | Self::BadAnswer(_)
            | Self::ProtectedClaim(_)
            | Self::Unsigned(_)
            | Self::Internal(_) => false,
        }
    }

    /// Whether a failed attempt may be repeated (for idempotent kinds).
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable(_) => true,
            Self::BadStatus(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

impl From<StoreError> for HookError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// Why a hook configuration is refused (admin API).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct InvalidHook {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub detail: String,
}

/// The smallest secret accepted from an admin (the generated ones are 32 random bytes).
pub const MIN_SECRET_CHARS: usize = 32;
/// The largest secret accepted.
pub const MAX_SECRET_CHARS: usize = 512;
/// The longest hook URL, in bytes: the configuration is cached per tenant
/// by every replica (up to `CACHE_ENTRIES` of them, counted in entries)
/// and read on every call, so its size must not be one the admin body
/// limit allows (`hook.url_too_long`).
pub const MAX_URL_BYTES: usize = 2048;

/// Tenants' hooks: their configuration in the store and the signed client
/// that calls them. Cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    store: SharedStore,
    clock: SharedClock,
    http: OutboundHttp,
    config: Arc<HooksConfig>,
    breaker: Arc<breaker::Breaker>,
    cache: Arc<std::sync::Mutex<Lru<(String, HookKind), Cached>>>,
    /// The user-migration hooks' recent calls (`recent.rs`).
    recent: Arc<recent::Recent>,
}

/// A hook configuration (or its absence) as read from the store, and when.
#[derive(Clone)]
struct Cached {
    read_at_ms: i64,
    /// The stored bytes' fingerprint ([`crate::store::Store::fingerprint`])
    /// when a hook was read; `None` for an absent hook.
    fingerprint: Option<String>,
    hook: Option<HookConfig>,
}

/// The most (tenant, kind) entries the configuration cache keeps; past
/// that the least recently used are dropped ([`Lru`]), so a busy tenant's
/// entry is not dropped to make room for a cold one.
const CACHE_ENTRIES: usize = 10_000;

impl Hooks {
    /// The longest one hook call may take, every attempt and backoff
    /// included: what a caller holding something across a call must allow.
    pub fn longest_call(&self) -> Duration {
        let c = &self.config;
        c.max_timeout
            .saturating_mul(c.retries.saturating_add(1))
            .saturating_add(c.retry_backoff.saturating_mul(c.retries))
    }

    /// The hooks over `store`.
    pub fn new(store: SharedStore, clock: SharedClock, config: HooksConfig) -> Result<Self, HookError> {
        let http = OutboundHttp::new(OutboundConfig {
            allow_private_networks: config.allow_private_networks,
            // Each attempt is cut at the hook's own timeout; this is the cap.
            timeout: config.max_timeout,
            max_body_bytes: config.max_answer_bytes,
        })
        .map_err(|e| HookError::Internal(e.detail))?;
        let breaker = breaker::Breaker::new(
            config.breaker_failures,
            i64::try_from(config.breaker_open.as_millis()).unwrap_or(i64::MAX),
            config.breaker_max_entries,
        );
        Ok(Self {
            store,
            clock,
            http,
            config: Arc::new(config),
            breaker: Arc::new(breaker),
            cache: Arc::new(std::sync::Mutex::new(Lru::new(CACHE_ENTRIES))),
            recent: Arc::default(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    /// The circuit breaker (tests look at it).
    pub fn breaker(&self) -> &breaker::Breaker {
        &self.breaker
    }

    /// Checks an admin's hook settings: the URL (https, or http to a
    /// loopback/private host with `allow_private_networks`; no credentials),
    /// the secret's length, the timeout's range. Returns the timeout in ms.
    pub fn check(&self, url: &str, secret: Option<&str>, timeout_ms: Option<u64>) -> Result<u64, InvalidHook> {
        if url.len() > MAX_URL_BYTES {
            tracing::info!(
                reason = "hook.url_too_long",
                bytes = url.len(),
                "a hook URL over the limit: refused"
            );
            return Err(InvalidHook {
                field: "url",
                detail: format!("must be at most {MAX_URL_BYTES} bytes (hook.url_too_long)."),
            });
        }
        let parsed = Url::parse(url).map_err(|e| InvalidHook {
            field: "url",
            detail: format!("is not a URL ({e})."),
        })?;
        crate::audit::webhook::check_url(&parsed, self.config.allow_private_networks).map_err(|e| InvalidHook {
            field: "url",
            detail: format!("{}.", e.0),
        })?;
        if parsed.fragment().is_some() {
            return Err(InvalidHook {
                field: "url",
                detail: "must not have a fragment.".into(),
            });
        }
        // What a read shows for a query, sent back: the query is never shown,
        // so give the whole URL again.
        if url.ends_with(HIDDEN_QUERY) || parsed.query() == Some("%E2%80%A6") {
            return Err(InvalidHook {
                field: "url",
                detail: format!(
                    "ends in {HIDDEN_QUERY}, which stands for a hidden query: give the whole URL, query included."
                ),
            });
        }
        if let Some(s) = secret {
            let n = s.chars().count();
            if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&n) || s.chars().any(char::is_control) {
                return Err(InvalidHook {
                    field: "secret",
                    detail: format!(
                        "must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} printable characters (leave it out to have one generated)."
                    ),
                });
            }
        }
        let max = u64::try_from(self.config.max_timeout.as_millis()).unwrap_or(u64::MAX);
        let timeout =
            timeout_ms.unwrap_or_else(|| u64::try_from(self.config.default_timeout.as_millis()).unwrap_or(max));
        if !(100..=max).contains(&timeout) {
            return Err(InvalidHook {
                field: "timeout_ms",
                detail: format!("must be between 100 and {max}."),
            });
        }
        Ok(timeout)
    }

    /// The tenant's hook of `kind`, if configured.
    pub async fn get(&self, tenant: &TenantId, kind: HookKind) -> Result<Option<HookConfig>, StoreError> {
        match self.store.get(&hook_key(tenant, kind)).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("hook {kind} of {tenant}: {e}"))),
        }
    }

    /// The tenant's hook of `kind` if configured for the tenant's current
    /// incarnation `incarnation` (one left behind by a deleted tenant with
    /// the same id is ignored).
    pub async fn current(
        &self,
        tenant: &TenantId,
        kind: HookKind,
        incarnation: &str,
    ) -> Result<Option<HookConfig>, StoreError> {
        Ok(self.get(tenant, kind).await?.filter(|h| {
            let current = h.tenant_incarnation == incarnation;
            if !current {
                tracing::warn!(reason = "hook.stale", tenant = %tenant, kind = %kind, "a hook of an earlier tenant with this id is ignored");
            }
            current
        }))
    }

    /// The tenant's hook of `kind` for the hot path (every token mint), in
    /// one small store operation whatever is kept: the kept copy (or
    /// absence) is re-validated on every use by
    /// [`crate::store::Store::get_if_changed`] with the fingerprint of the
    /// stored bytes it was decoded from (none for an absence). So a hook
    /// added, changed or removed on another replica applies from the next
    /// use on, on every replica, and an unchanged hook is not transferred.
    /// A kept copy is read in full again at most once per `config_cache`
    /// (zero: on every use). The caller sends this read together with its
    /// other reads, so it adds no wait. Keyed by (tenant, kind): at most
    /// `CACHE_ENTRIES`, the least recently used dropped first.
    pub async fn get_cached(&self, tenant: &TenantId, kind: HookKind) -> Result<Option<HookConfig>, StoreError> {
        let ttl = i64::try_from(self.config.config_cache.as_millis()).unwrap_or(i64::MAX);
        if ttl <= 0 {
            return self.get(tenant, kind).await;
        }
        let now = self.now_ms();
        let key = (tenant.as_str().to_owned(), kind);
        let store_key = hook_key(tenant, kind);
        let kept = self.kept(&key, now, ttl);
        // A kept hook is sent by its fingerprint; an absence, or nothing
        // kept, reads the value if there is one.
        let known = kept.as_ref().and_then(|c| c.fingerprint.clone());
        match self.store.get_if_changed(&store_key, known.as_deref()).await? {
            IfChanged::Unchanged => match kept.and_then(|c| c.hook) {
                Some(hook) => Ok(Some(hook)),
                // Only answered for the fingerprint given, i.e. with a copy.
                None => Err(StoreError::Corrupt("unchanged answered without a fingerprint".into())),
            },
            IfChanged::Absent => {
                // The first time absent (or absent again): remembered, so
                // the next use's read is as small.
                if kept.is_none_or(|c| c.hook.is_some()) {
                    self.remember(key, now, None, None);
                }
                Ok(None)
            }
            IfChanged::Value { value, fingerprint } => {
                let hook: HookConfig = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt(format!("hook {kind} of {tenant}: {e}")))?;
                self.remember(key, now, Some(fingerprint), Some(hook.clone()));
                Ok(Some(hook))
            }
        }
    }

    /// The kept entry for `key` if read less than `ttl` ms before `now`
    /// (a use: it moves to the back of the line to be dropped).
    fn kept(&self, key: &(String, HookKind), now: i64, ttl: i64) -> Option<Cached> {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(key)
            .filter(|c| now >= c.read_at_ms && now - c.read_at_ms < ttl)
            .cloned()
    }

    fn remember(&self, key: (String, HookKind), now: i64, fingerprint: Option<String>, hook: Option<HookConfig>) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(
            key,
            Cached {
                read_at_ms: now,
                fingerprint,
                hook,
            },
        );
    }

    fn forget(&self, tenant: &TenantId, kind: HookKind) {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(tenant.as_str().to_owned(), kind));
    }

    /// Stores the tenant's hook of `kind` (created or replaced).
    pub async fn put(&self, tenant: &TenantId, hook: &HookConfig) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(hook).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.forget(tenant, hook.kind);
        let stored = self.store.put(&hook_key(tenant, hook.kind), &raw, None).await;
        self.forget(tenant, hook.kind);
        stored
    }

    /// Removes the tenant's hook of `kind`; whether there was one.
    pub async fn delete(&self, tenant: &TenantId, kind: HookKind) -> Result<bool, StoreError> {
        let deleted = self.store.delete(&hook_key(tenant, kind)).await;
        self.forget(tenant, kind);
        if kind == HookKind::UserMigration {
            self.forget_calls(tenant).await?;
        }
        deleted
    }

    /// Drops the migration hook's recent calls (`recent.rs`), here and in the store.
    async fn forget_calls(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.recent.forget(tenant.as_str());
        self.store.delete(&recent::calls_key(tenant)).await.map(|_| ())
    }

    /// Removes every hook of a deleted tenant (frees the store; acceptance
    /// never depends on it: the incarnation is checked on use).
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        for kind in HookKind::ALL {
            self.store.delete(&hook_key(tenant, kind)).await?;
            self.forget(tenant, kind);
        }
        self.forget_calls(tenant).await
    }

    /// Calls `hook` of `tenant` with `body` and returns its JSON answer
    /// (an object). Signed, time-limited, retried only for idempotent kinds,
    /// cut short by the circuit breaker. Logs every outcome with its reason.
    pub async fn call(&self, tenant: &TenantId, hook: &HookConfig, body: &Value) -> Result<Value, HookError> {
        self.call_as(tenant, hook, body, hook.kind.idempotent()).await
    }

    /// [`Self::call`], saying whether this call is idempotent (retried):
    /// the steps of `custom_challenge` differ.
    pub async fn call_as(
        &self,
        tenant: &TenantId,
        hook: &HookConfig,
        body: &Value,
        idempotent: bool,
    ) -> Result<Value, HookError> {
        let kind = hook.kind;
        let circuit = format!("{tenant}/{kind}");
        let admission = self.breaker.admit(&circuit, self.now_ms());
        if admission == breaker::Admission::Open {
            tracing::warn!(reason = "hook.circuit_open", tenant = %tenant, kind = %kind, "hook not called: its circuit is open");
            crate::meter::hook_called(kind.as_str(), "hook.circuit_open");
            return Err(HookError::CircuitOpen);
        }
        let result = self.attempts(tenant, hook, body, idempotent).await;
        // Only a hook that is down (no answer, a 5xx or 429) counts against
        // its circuit. One that answered, even to refuse this call's input
        // (a 4xx, an unusable or unsigned answer), is up and fails fast:
        // counting it would let anyone who can make a hook refuse an input
        // (a made-up email at a passwordless sign-in) open the circuit for
        // every user of the tenant. The call itself still fails closed.
        let opened = match &result {
            Ok(_) => self.breaker.record(&circuit, true, self.now_ms()),
            Err(e) if e.transient() => self.breaker.record(&circuit, false, self.now_ms()),
            Err(_) => false,
        };
        match &result {
            Ok(_) => {
                tracing::info!(reason = "hook.answered", tenant = %tenant, kind = %kind, trial = admission == breaker::Admission::Trial, "hook answered");
                crate::meter::hook_called(kind.as_str(), "hook.answered");
            }
            Err(e) => {
                tracing::warn!(reason = e.reason(), tenant = %tenant, kind = %kind, circuit_open = opened, error = %e, "hook call failed");
                crate::meter::hook_called(kind.as_str(), e.reason());
            }
        }
        result
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    async fn attempts(
        &self,
        tenant: &TenantId,
        hook: &HookConfig,
        body: &Value,
        idempotent: bool,
    ) -> Result<Value, HookError> {
        let url = Url::parse(&hook.url).map_err(|e| HookError::Forbidden(e.to_string()))?;
        // Checked again on use: the setting may have changed since.
        crate::audit::webhook::check_url(&url, self.config.allow_private_networks)
            .map_err(|e| HookError::Forbidden(e.0))?;
        let bytes = serde_json::to_vec(body).map_err(|e| HookError::Internal(e.to_string()))?;
        let call_id = crate::tokens::random_token(12);
        let timeout = Duration::from_millis(hook.timeout_ms).min(self.config.max_timeout);
        let tries = if idempotent {
            self.config.retries.saturating_add(1)
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(tenant, hook, &url, &call_id, &bytes, timeout).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < tries && e.retryable() => {
                    tracing::info!(reason = e.reason(), tenant = %tenant, kind = %hook.kind, attempt, "hook attempt failed; retrying");
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt(
        &self,
        tenant: &TenantId,
        hook: &HookConfig,
        url: &Url,
        call_id: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Value, HookError> {
        let t = self.clock.now().timestamp();
        let signature = crate::audit::webhook::signature_header(hook.secret.expose().as_bytes(), t, body)
            .map_err(|e| HookError::Internal(e.to_string()))?;
        let request = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(KIND_HEADER, hook.kind.as_str())
            .header("portcullis-tenant", tenant.as_str())
            .header(CALL_ID_HEADER, call_id)
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .map_err(|e| HookError::Internal(e.to_string()))?;
        let resp = match tokio::time::timeout(timeout, self.http.execute(request)).await {
            Err(_) => {
                return Err(HookError::Timeout(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            }
            Ok(Err(e)) => {
                return Err(match e.code {
                    "outbound.timeout" => HookError::Timeout(e.detail),
                    "outbound.forbidden_address" | "outbound.scheme" | "outbound.invalid_url" => {
                        HookError::Forbidden(e.detail)
                    }
                    "outbound.too_large" => HookError::BadAnswer(e.detail),
                    _ => HookError::Unreachable(e.detail),
                })
            }
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(HookError::BadStatus(resp.status().as_u16()));
        }
        if hook.sign_answers {
            let Some(header) = resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
                return Err(HookError::Unsigned(format!("no {SIGNATURE_HEADER} header")));
            };
            let payload = answer_payload(call_id, resp.body());
            let now = self.clock.now().timestamp();
            if !crate::audit::webhook::verify(hook.secret.expose().as_bytes(), header, &payload, now, ANSWER_SKEW_SECS)
            {
                return Err(HookError::Unsigned(
                    "the signature does not verify for this call (wrong secret, stale, or another call's)".into(),
                ));
            }
        }
        match serde_json::from_slice::<Value>(resp.body()) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(HookError::BadAnswer("the answer is not a JSON object".into())),
            Err(e) => Err(HookError::BadAnswer(format!("the answer is not JSON ({e})"))),
        }
    }
}

/// How far a signed answer's time may be from ours, in seconds.
pub const ANSWER_SKEW_SECS: i64 = 300;

/// What a hook signs in its answer when its answers must be signed: the
/// call's id (`Portcullis-Call-Id` of the request), a dot, and the answer's
/// body, in the request's scheme (`Portcullis-Signature: t=<unix>,v1=<hex
/// HMAC-SHA256 of "<t>.<call id>.<body>">`). The call id binds the answer
/// to its request, so an answer seen once cannot stand for another call.
pub fn answer_payload(call_id: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(call_id.len() + 1 + body.len());
    payload.extend_from_slice(call_id.as_bytes());
    payload.push(b'.');
    payload.extend_from_slice(body);
    payload
}

/// `text` cut to at most `max` characters (what an error repeats of a
/// hook's answer).
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", text.get(..at).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_tenants_hook_stays_kept_while_cold_ones_fill_the_cache() {
        let clock: SharedClock = Arc::new(crate::clock::ManualClock::at(DateTime::<Utc>::UNIX_EPOCH));
        let store: SharedStore = Arc::new(crate::store::memory::MemoryStore::new(clock.clone()));
        let hooks = Hooks::new(store, clock, HooksConfig::default()).unwrap();
        let kind = HookKind::PreTokenGeneration;
        let busy = ("busy".to_owned(), kind);
        let ttl = i64::MAX;
        hooks.remember(busy.clone(), 0, Some("f".into()), None);
        // Twice as many other tenants as the cache holds, each used once,
        // the busy one used between them.
        for i in 0..2 * CACHE_ENTRIES {
            hooks.remember((format!("t{i}"), kind), 0, None, None);
            if i % 100 == 0 {
                assert!(hooks.kept(&busy, 0, ttl).is_some(), "dropped after {i} others");
            }
        }
        assert!(hooks.kept(&busy, 0, ttl).is_some());
        let cache = hooks.cache.lock().unwrap();
        assert!(cache.len() <= CACHE_ENTRIES);
        drop(cache);
        // The first cold ones made room long ago; the last one is kept.
        assert!(hooks.kept(&("t0".to_owned(), kind), 0, ttl).is_none());
        assert!(hooks
            .kept(&(format!("t{}", 2 * CACHE_ENTRIES - 1), kind), 0, ttl)
            .is_some());
    }

    #[test]
    fn kinds_round_trip_and_only_computing_hooks_retry() {
        for k in HookKind::ALL {
            assert_eq!(HookKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
        }
        assert_eq!(HookKind::parse("pre_token"), None);
        assert!(HookKind::PreTokenGeneration.idempotent());
        assert!(!HookKind::PostConfirmation.idempotent());
    }

    #[test]
    fn hook_secrets_are_sealed_at_rest() {
        let t = TenantId::parse("acme").unwrap();
        for k in HookKind::ALL {
            let fields = crate::secrets::sealed::sealed_fields(&hook_key(&t, k)).unwrap();
            assert!(fields.iter().any(|f| *f == ["secret"]));
        }
    }

    #[test]
    fn a_urls_query_is_stored_apart_sealed_and_never_shown() {
        let t = TenantId::parse("acme").unwrap();
        let fields = crate::secrets::sealed::sealed_fields(&hook_key(&t, HookKind::PreTokenGeneration)).unwrap();
        assert!(fields.iter().any(|f| *f == ["url_query"]));
        let hook = HookConfig {
            kind: HookKind::PreTokenGeneration,
            url: "https://fn.example.net/api/x?code=abc123secret&x=1".into(),
            secret: Secret::new("s".repeat(32)),
            timeout_ms: 1000,
            tenant_incarnation: "i".into(),
            sign_answers: false,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let stored = serde_json::to_value(&hook).unwrap();
        assert_eq!(stored["url"], "https://fn.example.net/api/x");
        assert_eq!(stored["url_query"], "code=abc123secret&x=1");
        let back: HookConfig = serde_json::from_value(stored).unwrap();
        assert_eq!(back.url, hook.url);
        assert_eq!(shown_url(&hook.url), "https://fn.example.net/api/x?…");
        assert!(!format!("{hook:?}").contains("abc123secret"));
        // Written before: the query in `url`, read as it is.
        let mut old = serde_json::to_value(&hook).unwrap();
        old["url"] = serde_json::json!(hook.url);
        old.as_object_mut().unwrap().remove("url_query");
        assert_eq!(serde_json::from_value::<HookConfig>(old).unwrap().url, hook.url);
        // Without a query: no `url_query`.
        let plain = HookConfig {
            url: "https://fn.example.net/api/x".into(),
            ..hook
        };
        assert!(serde_json::to_value(&plain).unwrap().get("url_query").is_none());
    }

    #[test]
    fn reasons_are_stable() {
        assert_eq!(HookError::Timeout(String::new()).reason(), "hook.timeout");
        assert_eq!(HookError::CircuitOpen.reason(), "hook.circuit_open");
        assert_eq!(HookError::BadStatus(500).reason(), "hook.bad_status");
        assert!(HookError::BadStatus(503).retryable());
        assert!(!HookError::BadStatus(400).retryable());
        assert!(!HookError::BadAnswer(String::new()).retryable());
    }
}
