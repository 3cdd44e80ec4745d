//! Setup links and portal sessions, without HTTP.
//!
//! A setup link is a one-time, expiring URL the platform admin sends to a
//! customer's IT admin. Its token reads `<tenant>.<random>`: the tenant
//! prefix routes the lookup to tenant-scoped keys, and the store keeps only
//! the SHA-256 of the token (with a TTL equal to the link's lifetime).
//! Opening the link (a `POST` from the page its URL shows; a `GET` only
//! looks, [`SetupLinks::peek`]) consumes it atomically
//! ([`Store::take_and_mark`]): of two browsers opening it, one gets a portal
//! session, the other a "used" page.
//!
//! A portal session is the tenant admin's browser session in the portal: its
//! own cookie, its own random token (again `<tenant>.<random>`, hashed at
//! rest), sliding [`PORTAL_SESSION_TTL`], never longer than
//! [`PORTAL_SESSION_MAX`] after the link was opened.
//!
//! Both are bound to the tenant's incarnation, as tenant API keys are: they
//! die with the tenant, and a tenant created again under the same id (maybe
//! for another customer) inherits neither.
//!
//! The token's hash names nothing an admin can point at, so each link also
//! has an entry under its public id (`entry:<id>`, listed in the tenant's
//! `links` set; both live as long as the link plus [`PORTAL_SESSION_MAX`],
//! the longest a session opened from it can last). Revoking a link by id
//! writes a revocation marker for the id first (checked by every use of a
//! portal session opened from it, and by the exchange), then spends the
//! link itself, so an unopened link answers like a used one and an opened
//! link's portal session ends at its next request.

use crate::clock::SharedClock;
use crate::ids::TenantId;
use crate::store::{Key, Read, SharedStore, StoreError, StoreJson, Taken, Write};
use crate::tenant::{RegistryError, Tenant, TenantRegistry};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The shortest lifetime a setup link may have.
pub const MIN_LINK_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest lifetime a setup link may have.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A setup link's lifetime when the admin names none.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A portal session ends after this long without use.
pub const PORTAL_SESSION_TTL: Duration = Duration::from_secs(3600);
/// A portal session ends this long after its link was opened, used or not.
pub const PORTAL_SESSION_MAX: Duration = Duration::from_secs(12 * 3600);

/// Which connection kind a link may set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// SAML 2.0 only.
    Saml,
    /// OpenID Connect only.
    Oidc,
}

impl LinkKind {
    /// The protocol name, as in a connection's `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Saml => "saml",
            Self::Oidc => "oidc",
        }
    }
}

/// A stored setup link (under the hash of its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupLink {
    /// The link's public id (for audit records; not the token).
    pub id: String,
    /// The tenant it sets up.
    pub tenant: TenantId,
    /// The one kind it may set up, if limited.
    pub kind: Option<LinkKind>,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
    /// The tenant's incarnation when the link was made (a link stored
    /// without one is refused).
    #[serde(default)]
    pub incarnation: Option<String>,
}

/// A tenant admin's session in the portal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalSession {
    /// The tenant this session may see and change, and nothing else.
    pub tenant: TenantId,
    /// The setup link it came from.
    pub link_id: String,
    /// The one kind it may set up, if limited.
    pub kind: Option<LinkKind>,
    /// The CSRF token every portal form carries.
    pub csrf: String,
    /// The hard end (Unix seconds), whatever the use.
    pub ends_at: i64,
    /// The tenant's incarnation its link was made for (a session stored
    /// without one is refused).
    #[serde(default)]
    pub incarnation: Option<String>,
}

impl PortalSession {
    /// Whether this session was opened for the tenant as it is now, not for
    /// an earlier one under the same id.
    pub fn is_for(&self, incarnation: &str) -> bool {
        self.incarnation.as_deref() == Some(incarnation)
    }
}

/// A link as the admin API lists it (under its id; never the token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkEntry {
    /// The link's public id.
    pub id: String,
    /// The SHA-256 of its token, which names the link record.
    pub hashed: String,
    /// The one kind it may set up, if limited.
    pub kind: Option<LinkKind>,
    /// When it was made (Unix seconds).
    pub created_at: i64,
    /// When it stops working unopened (Unix seconds).
    pub expires_at: i64,
    /// The tenant's incarnation when the link was made.
    pub incarnation: Option<String>,
}

/// A listed link and whether it was opened.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// The link.
    pub entry: LinkEntry,
    /// When it was opened (Unix seconds), if it was.
    pub opened_at: Option<i64>,
}

/// Why a request has no portal session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    /// None was presented, or it ended (logged out, idle, past its hard end).
    Absent,
    /// The setup link it was opened from was revoked.
    Revoked,
}

/// Why a setup link was not exchanged.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Unknown, malformed or expired.
    #[error("the setup link has expired or does not exist")]
    Expired,
    /// Already opened once.
    #[error("the setup link was already used")]
    Used,
    /// Revoked by the platform admin.
    #[error("the setup link was revoked")]
    Revoked,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LinkError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "setup.link_expired",
            Self::Used => "setup.link_used",
            Self::Revoked => "setup.link_revoked",
            Self::Store(_) => "store.unavailable",
        }
    }
}

/// The longest token accepted (tenant id, a dot, 43 characters).
const MAX_TOKEN_LEN: usize = 256;

fn hash(token: &str) -> String {
    crate::tokens::sha256_base64url(token.as_bytes())
}

/// The tenant a `<tenant>.<random>` token names, if it is well-formed.
fn token_tenant(token: &str) -> Option<TenantId> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (tenant, random) = token.split_once('.')?;
    if random.len() < 32 {
        return None;
    }
    TenantId::parse(tenant).ok()
}

fn link_key(t: &TenantId, hashed: &str) -> Key {
    Key::tenant(t.as_str(), "setup", format!("link:{hashed}"))
}

fn used_key(t: &TenantId, hashed: &str) -> Key {
    Key::tenant(t.as_str(), "setup", format!("used:{hashed}"))
}

fn session_key(t: &TenantId, hashed: &str) -> Key {
    Key::tenant(t.as_str(), "portal", format!("session:{hashed}"))
}

fn entry_key(t: &TenantId, id: &str) -> Key {
    Key::tenant(t.as_str(), "setup", format!("entry:{id}"))
}

fn index_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "setup", "links")
}

fn revoked_key(t: &TenantId, id: &str) -> Key {
    Key::tenant(t.as_str(), "setup", format!("revoked:{id}"))
}

/// The "used" marker of a link spent by its revocation (an opened link's
/// marker is the time it was opened).
const REVOKED_MARKER: &[u8] = b"\"revoked\"";

/// Whether `id` has the shape of a link id (what a route may name).
pub fn valid_link_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `secs` as a duration (zero if negative).
fn secs(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Setup links and portal sessions in the store.
#[derive(Clone)]
pub struct SetupLinks {
    store: SharedStore,
    clock: SharedClock,
}

impl SetupLinks {
    /// Over `store`, with time from `clock`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Creates a link for `tenant`, whose current incarnation is
    /// `incarnation`, living `ttl` (the caller bounds it); returns the token
    /// (shown once, never stored) and the stored link.
    pub async fn create(
        &self,
        tenant: &TenantId,
        incarnation: &str,
        kind: Option<LinkKind>,
        ttl: Duration,
    ) -> Result<(String, SetupLink), StoreError> {
        let token = format!("{tenant}.{}", crate::tokens::random_token(32));
        let now = self.clock.unix();
        let link = SetupLink {
            id: crate::tokens::random_token(12),
            tenant: tenant.clone(),
            kind,
            expires_at: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            incarnation: Some(incarnation.to_owned()),
        };
        let hashed = hash(&token);
        let entry = LinkEntry {
            id: link.id.clone(),
            hashed: hashed.clone(),
            kind,
            created_at: now,
            expires_at: link.expires_at,
            incarnation: link.incarnation.clone(),
        };
        let (link_bytes, entry_bytes) = (to_json(&link)?, to_json(&entry)?);
        // The entry lives as long as a portal session opened from the link may.
        let listed = ttl.saturating_add(PORTAL_SESSION_MAX);
        let (link_key, entry_key, index_key) = (
            link_key(tenant, &hashed),
            entry_key(tenant, &link.id),
            index_key(tenant),
        );
        // One step: no link exists that the admin cannot list and revoke.
        self.store
            .write_many(&[
                Write::Put {
                    key: &entry_key,
                    value: &entry_bytes,
                    ttl: Some(listed),
                },
                Write::SetAdd {
                    key: &index_key,
                    member: &link.id,
                    ttl: Some(listed),
                },
                Write::Put {
                    key: &link_key,
                    value: &link_bytes,
                    ttl: Some(ttl),
                },
            ])
            .await?;
        tracing::info!(reason = "setup.link_created", tenant = %tenant, link = %link.id);
        Ok((token, link))
    }

    /// The tenant a link may still be opened for, as it is now: refused when
    /// the link is expired or revoked, or its tenant gone or created again
    /// since the link was made.
    async fn live_tenant(
        &self,
        tenant: &TenantId,
        link: &SetupLink,
        now: i64,
        tenants: &TenantRegistry,
    ) -> Result<Arc<Tenant>, LinkError> {
        if link.tenant != *tenant || now >= link.expires_at {
            tracing::info!(reason = "setup.link_expired", tenant = %tenant, link = %link.id);
            return Err(LinkError::Expired);
        }
        // Revoked while an exchange was under way (the marker comes first).
        if self.store.exists(&revoked_key(tenant, &link.id)).await? {
            tracing::warn!(reason = "setup.link_revoked", tenant = %tenant, link = %link.id, "revoked setup link opened");
            return Err(LinkError::Revoked);
        }
        let live = tenants.get(tenant).await.map_err(|e| match e {
            RegistryError::Store(e) => e,
            other => StoreError::Corrupt(other.to_string()),
        })?;
        let Some(live) = live else {
            tracing::info!(reason = "setup.link_expired", tenant = %tenant, link = %link.id, "the tenant is gone");
            return Err(LinkError::Expired);
        };
        if link.incarnation.as_deref() != Some(live.incarnation.as_str()) {
            tracing::warn!(
                reason = "setup.link_expired",
                tenant = %tenant,
                link = %link.id,
                "setup link made for an earlier tenant under this id"
            );
            return Err(LinkError::Expired);
        }
        Ok(live)
    }

    /// Looks at a link without opening it (what a `GET` of its URL does, so
    /// a mail scanner or a link preview fetching it spends nothing): the
    /// link and its tenant when it may be opened, else why not, as
    /// [`Self::exchange`] would answer.
    pub async fn peek(&self, token: &str, tenants: &TenantRegistry) -> Result<(SetupLink, Arc<Tenant>), LinkError> {
        let Some(tenant) = token_tenant(token) else {
            return Err(LinkError::Expired);
        };
        let hashed = hash(token);
        let Some(raw) = self.store.get(&link_key(&tenant, &hashed)).await? else {
            return Err(match self.store.get(&used_key(&tenant, &hashed)).await? {
                Some(marker) if marker == REVOKED_MARKER => LinkError::Revoked,
                Some(_) => LinkError::Used,
                None => LinkError::Expired,
            });
        };
        let link: SetupLink = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let live = self.live_tenant(&tenant, &link, self.clock.unix(), tenants).await?;
        Ok((link, live))
    }

    /// Opens a link: consumes it atomically and, when its tenant is still the
    /// one it was made for (read from `tenants` after the take), starts a
    /// portal session. Returns the session token (for the cookie) and the
    /// session.
    pub async fn exchange(&self, token: &str, tenants: &TenantRegistry) -> Result<(String, PortalSession), LinkError> {
        let Some(tenant) = token_tenant(token) else {
            tracing::info!(reason = "setup.link_expired", "malformed setup link");
            return Err(LinkError::Expired);
        };
        let hashed = hash(token);
        let now = self.clock.unix();
        // The marker outlives any link, so a used link says "used" until it
        // would have expired anyway.
        let marker = serde_json::to_vec(&now).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let taken = self
            .store
            .take_and_mark(
                &link_key(&tenant, &hashed),
                &used_key(&tenant, &hashed),
                &marker,
                MAX_LINK_TTL,
            )
            .await?;
        let link: SetupLink = match taken {
            Taken::Value(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            Taken::Marker(marker) if marker == REVOKED_MARKER => {
                tracing::warn!(reason = "setup.link_revoked", tenant = %tenant, "revoked setup link opened");
                return Err(LinkError::Revoked);
            }
            Taken::Marker(_) => {
                tracing::warn!(reason = "setup.link_used", tenant = %tenant, "setup link opened again");
                return Err(LinkError::Used);
            }
            Taken::Absent => {
                tracing::info!(reason = "setup.link_expired", tenant = %tenant);
                return Err(LinkError::Expired);
            }
        };
        let incarnation = self
            .live_tenant(&tenant, &link, now, tenants)
            .await?
            .incarnation
            .clone();
        let session_token = format!("{tenant}.{}", crate::tokens::random_token(32));
        let session = PortalSession {
            tenant: tenant.clone(),
            link_id: link.id.clone(),
            kind: link.kind,
            csrf: crate::tokens::random_token(24),
            ends_at: now.saturating_add(i64::try_from(PORTAL_SESSION_MAX.as_secs()).unwrap_or(i64::MAX)),
            incarnation: Some(incarnation),
        };
        self.store
            .put_json(
                &session_key(&tenant, &hash(&session_token)),
                &session,
                Some(PORTAL_SESSION_TTL),
            )
            .await?;
        tracing::info!(reason = "setup.link_opened", tenant = %tenant, link = %link.id);
        Ok((session_token, session))
    }

    /// The portal session of `token`, if live and its link not revoked;
    /// each use extends it by [`PORTAL_SESSION_TTL`] (never past its hard
    /// end). A session whose link was revoked is deleted.
    pub async fn session(&self, token: &str) -> Result<Result<PortalSession, NoSession>, StoreError> {
        let Some(tenant) = token_tenant(token) else {
            return Ok(Err(NoSession::Absent));
        };
        let key = session_key(&tenant, &hash(token));
        let Some(s) = self.store.get_json::<PortalSession>(&key).await? else {
            return Ok(Err(NoSession::Absent));
        };
        let now = self.clock.unix();
        if s.tenant != tenant || now >= s.ends_at {
            return Ok(Err(NoSession::Absent));
        }
        if self.store.exists(&revoked_key(&tenant, &s.link_id)).await? {
            self.store.delete(&key).await?;
            return Ok(Err(NoSession::Revoked));
        }
        let left = u64::try_from(s.ends_at.saturating_sub(now)).unwrap_or(0);
        let ttl = PORTAL_SESSION_TTL.min(Duration::from_secs(left.max(1)));
        self.store.put_json(&key, &s, Some(ttl)).await?;
        Ok(Ok(s))
    }

    /// The links of `tenant` made for its incarnation `incarnation` that
    /// can still do something: unopened and unexpired, or opened less than
    /// [`PORTAL_SESSION_MAX`] ago (a portal session may be live). Oldest
    /// first. Entries gone from the store leave the index here.
    pub async fn list(&self, tenant: &TenantId, incarnation: &str) -> Result<Vec<LinkStatus>, StoreError> {
        let index = index_key(tenant);
        let ids = self.store.set_members(&index).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Key> = ids.iter().map(|id| entry_key(tenant, id)).collect();
        let reads: Vec<(&Key, Read)> = keys.iter().map(|k| (k, Read::Value)).collect();
        let mut entries = Vec::new();
        for (id, raw) in ids.iter().zip(self.store.read_many(&reads).await?) {
            match raw {
                Some(raw) => {
                    let entry: LinkEntry =
                        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if entry.incarnation.as_deref() == Some(incarnation) {
                        entries.push(entry);
                    }
                }
                None => self.store.set_remove(&index, id).await?,
            }
        }
        let markers: Vec<Key> = entries.iter().map(|e| used_key(tenant, &e.hashed)).collect();
        let reads: Vec<(&Key, Read)> = markers.iter().map(|k| (k, Read::Value)).collect();
        let opened = if reads.is_empty() {
            Vec::new()
        } else {
            self.store.read_many(&reads).await?
        };
        let now = self.clock.unix();
        let session_max = i64::try_from(PORTAL_SESSION_MAX.as_secs()).unwrap_or(i64::MAX);
        let mut out: Vec<LinkStatus> = entries
            .into_iter()
            .zip(opened)
            .filter_map(|(entry, marker)| {
                // A revoked link's marker: its entry is on its way out.
                if marker.as_deref() == Some(REVOKED_MARKER) {
                    return None;
                }
                let opened_at = marker.map(|m| serde_json::from_slice::<i64>(&m).unwrap_or(entry.created_at));
                let live = match opened_at {
                    Some(at) => now < at.saturating_add(session_max),
                    None => now < entry.expires_at,
                };
                live.then_some(LinkStatus { entry, opened_at })
            })
            .collect();
        out.sort_by(|a, b| (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id)));
        Ok(out)
    }

    /// Revokes `tenant`'s link `id` made for `incarnation`: it can no longer
    /// be opened, and a portal session opened from it ends at its next use.
    /// Answers the link and whether it had been opened, or `None` when
    /// there is no such link.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        incarnation: &str,
        id: &str,
    ) -> Result<Option<LinkStatus>, StoreError> {
        if !valid_link_id(id) {
            return Ok(None);
        }
        let entry_key = entry_key(tenant, id);
        let Some(entry) = self.store.get_json::<LinkEntry>(&entry_key).await? else {
            return Ok(None);
        };
        if entry.incarnation.as_deref() != Some(incarnation) {
            return Ok(None);
        }
        // The marker first, for as long as a session from the link may
        // live: whatever happens next (an exchange under way, a failure
        // below), no session opened from this link is honoured again.
        let now = self.clock.unix();
        let marker_ttl = secs(entry.expires_at.saturating_sub(now)).saturating_add(PORTAL_SESSION_MAX);
        self.store.put(&revoked_key(tenant, id), b"1", Some(marker_ttl)).await?;
        // Spends an unopened link: opening it answers "revoked" from now on.
        let taken = self
            .store
            .take_and_mark(
                &link_key(tenant, &entry.hashed),
                &used_key(tenant, &entry.hashed),
                REVOKED_MARKER,
                MAX_LINK_TTL,
            )
            .await?;
        let opened_at = match taken {
            Taken::Marker(m) if m != REVOKED_MARKER => Some(serde_json::from_slice::<i64>(&m).unwrap_or(now)),
            _ => None,
        };
        self.store.delete(&entry_key).await?;
        self.store.set_remove(&index_key(tenant), id).await?;
        tracing::info!(reason = "setup.link_revoked", tenant = %tenant, link = %id, opened = opened_at.is_some());
        Ok(Some(LinkStatus { entry, opened_at }))
    }

    /// Removes the links of a deleted tenant and their index (they are dead
    /// already: each is bound to the tenant's incarnation; this frees the
    /// store). Answers how many there were.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let index = index_key(tenant);
        let ids = self.store.set_members(&index).await?;
        for id in &ids {
            let key = entry_key(tenant, id);
            if let Some(entry) = self.store.get_json::<LinkEntry>(&key).await? {
                self.store.delete(&link_key(tenant, &entry.hashed)).await?;
            }
            self.store.delete(&key).await?;
        }
        self.store.delete(&index).await?;
        Ok(ids.len())
    }

    /// Ends a portal session.
    pub async fn end(&self, token: &str) -> Result<(), StoreError> {
        if let Some(tenant) = token_tenant(token) {
            self.store.delete(&session_key(&tenant, &hash(token))).await?;
        }
        Ok(())
    }
}

/// Who is acting through a portal session: the tenant and the setup link's
/// id (for the admin principal and audit records).
pub fn principal_of(session: &PortalSession) -> (TenantId, String) {
    (session.tenant.clone(), session.link_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_tenant_and_malformed_ones_nothing() {
        let good = format!("acme.{}", "a".repeat(43));
        assert_eq!(token_tenant(&good).map(|t| t.to_string()).as_deref(), Some("acme"));
        assert!(token_tenant("acme.short").is_none());
        assert!(token_tenant(&format!("no/slug.{}", "a".repeat(43))).is_none());
        assert!(token_tenant(&"a".repeat(300)).is_none());
        assert!(token_tenant("").is_none());
    }
}
