//! Tenants and their connections, kept in the store so every replica sees
//! the same configuration.
//!
//! Keys: the tenant record and its connections share the hash tag
//! `t:<tenant>:config`; each email domain is reserved under `g:domains` with
//! `put_if_absent`, so one domain can never route to two tenants.
//!
//! Incarnations: a tenant record carries a random `incarnation`, and each
//! connection has one under `incarnation:<connection>` (same tag), written
//! fresh whenever the tenant or connection is created. Users record the
//! incarnations they were provisioned under, and everything issued to a user
//! (SSO sessions, codes, refresh families, access tokens) is accepted only
//! while those are still the current ones ([`TenantRegistry::incarnation`]).
//! So a tenant or connection deleted and re-created with the same id never
//! inherits its predecessor's users, even while the store still holds them.

pub mod domains;
pub mod files;
pub mod setup;

use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use crate::upstream::{Connection, Identity};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One customer of the SaaS, with its email domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Verified email domains whose users this tenant owns (lower case):
    /// declared by the platform admin or verified by DNS. Only these route
    /// users and vouch for `email_verified`; claims still pending live
    /// apart (`domains.rs`).
    pub domains: Vec<String>,
    /// When the tenant was created.
    pub created_at: DateTime<Utc>,
    /// Random per creation: what users and their tokens are bound to. Empty
    /// for tenants stored before incarnations existed.
    #[serde(default)]
    pub incarnation: String,
    /// Sign-ins of this tenant's users need multi-factor authentication at
    /// the IdP (asked for, then checked in the answer).
    #[serde(default)]
    pub require_mfa: bool,
}

/// The current incarnations of a tenant and one of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// The tenant's incarnation.
    pub tenant: String,
    /// The connection's incarnation.
    pub connection: String,
}

/// Whether a tenant and connection exist, and as which incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Both exist.
    Live(Incarnation),
    /// The tenant does not exist.
    TenantGone,
    /// The tenant exists, the connection does not.
    ConnectionGone,
}

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The id is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// An email domain belongs to another tenant.
    #[error("the domain {domain} already belongs to another tenant")]
    DomainTaken {
        /// The domain.
        domain: String,
    },
    /// The tenant or connection does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Normalizes and checks an email domain.
pub fn parse_domain(s: &str) -> Option<String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(d)
}

/// The domain part of an email address, normalized.
pub fn email_domain(email: &str) -> Option<String> {
    let (_, domain) = email.rsplit_once('@')?;
    parse_domain(domain)
}

/// Whether `tenant` may pass on an IdP's word that `email` is verified: only
/// for an address in one of the tenant's own domains (exact match; a
/// subdomain is not reserved to the tenant, so it does not count).
///
/// Apps link accounts by verified email. A tenant's IdP vouching for an
/// address in someone else's domain would let that tenant's admin sign in
/// as anyone in any app that trusts `email_verified` (the "nOAuth" takeover).
pub fn owns_email_domain(tenant: &Tenant, email: &str) -> bool {
    // Exactly one `@` and a local part: an address apps could split
    // differently (`a@evil.test@acme.com`) is never vouched for.
    let plain = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.contains('@'));
    plain && email_domain(email).is_some_and(|d| tenant.domains.contains(&d))
}

/// `identity` with `email_verified` true only when the connector said so
/// *and* the address is in the tenant's domains ([`owns_email_domain`]);
/// otherwise false. Every protocol passes through here before provisioning.
pub fn vouch_email(tenant: &Tenant, mut identity: Identity) -> Identity {
    let asserted = identity.email_verified == Some(true);
    let owned = identity.email.as_deref().is_some_and(|e| owns_email_domain(tenant, e));
    if asserted && !owned {
        tracing::info!(
            reason = "login.email_not_vouched",
            tenant = %tenant.id,
            "email_verified withheld: the address is outside the tenant's domains"
        );
    }
    identity.email_verified = Some(asserted && owned);
    identity
}

/// The store-backed registry of tenants and connections.
#[derive(Clone)]
pub struct TenantRegistry {
    store: SharedStore,
    clock: SharedClock,
}

fn tenant_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "tenant")
}
fn connections_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "connections")
}
fn connection_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("connection:{c}"))
}
fn connection_incarnation_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("incarnation:{c}"))
}
fn domain_key(domain: &str) -> Key {
    Key::global("domains", domain)
}
fn index_key() -> Key {
    Key::global("tenants", "index")
}

impl TenantRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Creates a tenant. Domains are reserved first; if any is taken, the
    /// ones already reserved are released and nothing is left behind.
    pub async fn create(&self, id: TenantId, name: String, domains: Vec<String>) -> Result<Tenant, RegistryError> {
        let tenant = Tenant {
            require_mfa: false,
            id: id.clone(),
            name,
            domains,
            created_at: self.clock.now(),
            incarnation: new_incarnation(),
        };
        if !self.store.put_json_if_absent(&tenant_key(&id), &tenant, None).await? {
            return Err(RegistryError::Exists(format!("tenant {id}")));
        }
        let mut reserved = Vec::new();
        for domain in &tenant.domains {
            match self
                .store
                .put_if_absent(&domain_key(domain), id.as_str().as_bytes(), None)
                .await
            {
                Ok(true) => reserved.push(domain.clone()),
                Ok(false) => {
                    self.release(&id, &reserved).await;
                    return Err(RegistryError::DomainTaken { domain: domain.clone() });
                }
                Err(e) => {
                    self.release(&id, &reserved).await;
                    return Err(e.into());
                }
            }
        }
        self.store.set_add(&index_key(), id.as_str(), None).await?;
        Ok(tenant)
    }

    /// Undoes a half-made tenant. A failure here leaves a reserved domain
    /// or a tenant record behind (the caller reports the original error);
    /// it is logged so an operator can remove it.
    async fn release(&self, id: &TenantId, domains: &[String]) {
        for d in domains {
            if let Err(e) = self.store.delete(&domain_key(d)).await {
                tracing::error!(
                    reason = "tenant.rollback_failed",
                    tenant = %id,
                    domain = %d,
                    error = %e,
                    "could not release a domain of a tenant that was not created"
                );
            }
        }
        if let Err(e) = self.store.delete(&tenant_key(id)).await {
            tracing::error!(
                reason = "tenant.rollback_failed",
                tenant = %id,
                error = %e,
                "could not remove a tenant that was not created"
            );
        }
    }

    /// The current incarnations of `t` and its connection `c`, or which of
    /// them is gone. Checked on every use of anything issued to a user.
    pub async fn incarnation(&self, t: &TenantId, c: &ConnectionId) -> Result<Liveness, RegistryError> {
        // Independent reads, sent together (one round trip on Redis).
        let (tenant, connection) = tokio::try_join!(self.get(t), self.connection_incarnation(t, c))?;
        let Some(tenant) = tenant else {
            return Ok(Liveness::TenantGone);
        };
        let Some(connection) = connection else {
            return Ok(Liveness::ConnectionGone);
        };
        Ok(Liveness::Live(Incarnation {
            tenant: tenant.incarnation,
            connection,
        }))
    }

    /// The current incarnation of the connection `c` of `t`, `None` if the
    /// connection does not exist.
    pub async fn connection_incarnation(
        &self,
        t: &TenantId,
        c: &ConnectionId,
    ) -> Result<Option<String>, RegistryError> {
        let (record_key, incarnation_key) = (connection_key(t, c), connection_incarnation_key(t, c));
        let (record, incarnation) = tokio::try_join!(self.store.get(&record_key), self.store.get(&incarnation_key))?;
        if record.is_none() {
            return Ok(None);
        }
        // A connection stored before incarnations existed (or one whose
        // deletion stopped half-way) has the empty incarnation.
        Ok(Some(
            incarnation
                .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                .unwrap_or_default(),
        ))
    }

    /// [`vouch_email`] for the stored tenant `id`. Fails closed: when the
    /// tenant cannot be read, the email is not vouched for.
    pub async fn vouch_email(&self, id: &TenantId, mut identity: Identity) -> Identity {
        match self.get(id).await {
            Ok(Some(tenant)) => vouch_email(&tenant, identity),
            outcome => {
                if let Err(e) = outcome {
                    tracing::warn!(reason = "login.email_not_vouched", tenant = %id, error = %e, "tenant unreadable");
                }
                identity.email_verified = Some(false);
                identity
            }
        }
    }

    /// Reads a tenant.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, RegistryError> {
        Ok(self.store.get_json(&tenant_key(id)).await?)
    }

    /// All tenant ids, sorted.
    pub async fn list(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self.store.set_members(&index_key()).await?)
    }

    /// The tenant that owns `domain`, if any.
    pub async fn by_domain(&self, domain: &str) -> Result<Option<Tenant>, RegistryError> {
        let Some(raw) = self.store.get(&domain_key(domain)).await? else {
            return Ok(None);
        };
        let Ok(id) = TenantId::parse(&String::from_utf8_lossy(&raw)) else {
            return Ok(None);
        };
        self.get(&id).await
    }

    /// Deletes a tenant, its connections and its domains.
    pub async fn delete(&self, id: &TenantId) -> Result<(), RegistryError> {
        let Some(tenant) = self.get(id).await? else {
            return Err(RegistryError::NotFound(format!("tenant {id}")));
        };
        for c in self.store.set_members(&connections_key(id)).await? {
            if let Ok(c) = ConnectionId::parse(&c) {
                self.store.delete(&connection_incarnation_key(id, &c)).await?;
                self.store.delete(&connection_key(id, &c)).await?;
            }
        }
        self.store.delete(&connections_key(id)).await?;
        self.delete_claims(id).await?;
        for d in &tenant.domains {
            // Only release a domain that still points at this tenant.
            if self.store.get(&domain_key(d)).await?.as_deref() == Some(id.as_str().as_bytes()) {
                self.store.delete(&domain_key(d)).await?;
            }
        }
        self.store.set_remove(&index_key(), id.as_str()).await?;
        self.store.delete(&tenant_key(id)).await?;
        Ok(())
    }

    /// Stores a new connection. Fails if the id is taken within the tenant.
    pub async fn add_connection(&self, connection: &Connection) -> Result<(), RegistryError> {
        let key = connection_key(&connection.tenant, &connection.id);
        if !self.store.put_json_if_absent(&key, connection, None).await? {
            return Err(RegistryError::Exists(format!("connection {}", connection.id)));
        }
        // Always a fresh incarnation: a predecessor with this id is not inherited.
        self.store
            .put(
                &connection_incarnation_key(&connection.tenant, &connection.id),
                new_incarnation().as_bytes(),
                None,
            )
            .await?;
        self.store
            .set_add(&connections_key(&connection.tenant), connection.id.as_str(), None)
            .await?;
        Ok(())
    }

    /// Replaces a stored connection (declarative files use this).
    pub async fn put_connection(&self, connection: &Connection) -> Result<(), RegistryError> {
        let key = connection_key(&connection.tenant, &connection.id);
        // A replaced connection keeps its incarnation; a new one gets one.
        self.store
            .put_if_absent(
                &connection_incarnation_key(&connection.tenant, &connection.id),
                new_incarnation().as_bytes(),
                None,
            )
            .await?;
        self.store.put_json(&key, connection, None).await?;
        self.store
            .set_add(&connections_key(&connection.tenant), connection.id.as_str(), None)
            .await?;
        Ok(())
    }

    /// Reads a connection.
    pub async fn connection(&self, t: &TenantId, c: &ConnectionId) -> Result<Option<Connection>, RegistryError> {
        Ok(self.store.get_json(&connection_key(t, c)).await?)
    }

    /// The ids of a tenant's connections, sorted.
    pub async fn connection_ids(&self, t: &TenantId) -> Result<Vec<ConnectionId>, RegistryError> {
        Ok(self
            .store
            .set_members(&connections_key(t))
            .await?
            .iter()
            .filter_map(|c| ConnectionId::parse(c).ok())
            .collect())
    }

    /// Deletes a connection.
    pub async fn delete_connection(&self, t: &TenantId, c: &ConnectionId) -> Result<(), RegistryError> {
        // The incarnation goes first: should the rest fail, what is left is
        // a connection nobody's users match, never an inherited one.
        self.store.delete(&connection_incarnation_key(t, c)).await?;
        if !self.store.delete(&connection_key(t, c)).await? {
            return Err(RegistryError::NotFound(format!("connection {c}")));
        }
        self.store.set_remove(&connections_key(t), c.as_str()).await?;
        Ok(())
    }
}

/// A fresh random incarnation id.
fn new_incarnation() -> String {
    crate::tokens::random_token(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(parse_domain(" Acme.COM. ").as_deref(), Some("acme.com"));
        assert_eq!(parse_domain("localhost"), None);
        assert_eq!(parse_domain("a..b"), None);
        assert_eq!(email_domain("Jo@Sub.Acme.com").as_deref(), Some("sub.acme.com"));
        assert_eq!(email_domain("no-at-sign"), None);
    }

    fn acme() -> Tenant {
        Tenant {
            require_mfa: false,
            id: TenantId::parse("acme").unwrap(),
            name: "Acme".into(),
            domains: vec!["acme.com".into(), "acme.io".into()],
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            incarnation: String::new(),
        }
    }

    fn asserted(email: Option<&str>, verified: Option<bool>) -> Identity {
        Identity {
            subject: "s".into(),
            email: email.map(str::to_owned),
            email_verified: verified,
            ..Identity::default()
        }
    }

    #[test]
    fn email_is_vouched_only_when_asserted_and_in_the_tenants_domains() {
        let t = acme();
        let v = |e, ev| vouch_email(&t, asserted(e, ev)).email_verified;
        assert_eq!(v(Some("jo@acme.com"), Some(true)), Some(true));
        assert_eq!(v(Some("Jo@ACME.io"), Some(true)), Some(true));
        assert_eq!(v(Some("jo@acme.com"), Some(false)), Some(false));
        assert_eq!(v(Some("jo@acme.com"), None), Some(false));
        assert_eq!(v(Some("ceo@victim.com"), Some(true)), Some(false));
        assert_eq!(v(Some("jo@sub.acme.com"), Some(true)), Some(false));
        assert_eq!(v(Some("jo@acme.com.evil.test"), Some(true)), Some(false));
        assert_eq!(v(Some("jo@evil.test@acme.com"), Some(true)), Some(false));
        assert_eq!(v(Some("@acme.com"), Some(true)), Some(false));
        assert_eq!(v(None, Some(true)), Some(false));
    }
}
