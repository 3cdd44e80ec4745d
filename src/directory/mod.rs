//! The per-tenant user directory: just-in-time provisioning and stable ids.
//!
//! A user is identified by `(tenant, connection, upstream subject)`. The first
//! login creates the user with a fresh random `sub` (so the same person in two
//! tenants has two unrelated `sub`s); later logins update the profile. No
//! account is ever linked by email alone.

use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use crate::upstream::Identity;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A provisioned user of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The opaque, stable subject issued to apps.
    pub sub: String,
    /// The tenant that owns the user.
    pub tenant: TenantId,
    /// The connection the user signs in through.
    pub connection: ConnectionId,
    /// The subject at the IdP.
    pub upstream_subject: String,
    /// Email address.
    pub email: Option<String>,
    /// Whether the email is verified by the IdP.
    pub email_verified: Option<bool>,
    /// Display name.
    pub name: Option<String>,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// First sign-in.
    pub created_at: DateTime<Utc>,
    /// Latest sign-in.
    pub updated_at: DateTime<Utc>,
}

/// Whether a sign-in created the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// First sign-in: the user was created (a JIT sign-up).
    Created,
    /// A returning user: the profile was updated.
    Updated,
}

/// The store-backed directory.
#[derive(Clone)]
pub struct Directory {
    store: SharedStore,
    clock: SharedClock,
}

fn link_key(t: &TenantId, c: &ConnectionId, subject: &str) -> Key {
    use sha2::Digest;
    // The subject is hashed so arbitrary upstream strings make safe keys.
    let h = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
    Key::tenant(t.as_str(), "users", format!("link:{c}:{h}"))
}
fn user_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "users", format!("user:{sub}"))
}

impl Directory {
    /// A directory over `store`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Creates or updates the user for `identity`. Concurrent first logins of
    /// one identity agree on one `sub` (the link is written with `put_if_absent`).
    pub async fn provision(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        identity: &Identity,
    ) -> Result<(User, Provisioned), StoreError> {
        let link = link_key(tenant, connection, &identity.subject);
        let candidate = format!("u_{}", crate::tokens::random_token(16));
        let (sub, outcome) = if self.store.put_if_absent(&link, candidate.as_bytes(), None).await? {
            (candidate, Provisioned::Created)
        } else {
            let raw = self
                .store
                .get(&link)
                .await?
                .ok_or_else(|| StoreError::Corrupt("identity link vanished".into()))?;
            (String::from_utf8_lossy(&raw).into_owned(), Provisioned::Updated)
        };
        let now = self.clock.now();
        let created_at = match outcome {
            Provisioned::Created => now,
            Provisioned::Updated => self.get(tenant, &sub).await?.map_or(now, |u| u.created_at),
        };
        let user = User {
            sub: sub.clone(),
            tenant: tenant.clone(),
            connection: connection.clone(),
            upstream_subject: identity.subject.clone(),
            email: identity.email.clone(),
            email_verified: identity.email_verified,
            name: identity.name.clone(),
            given_name: identity.given_name.clone(),
            family_name: identity.family_name.clone(),
            groups: identity.groups.clone(),
            created_at,
            updated_at: now,
        };
        self.store.put_json(&user_key(tenant, &sub), &user, None).await?;
        Ok((user, outcome))
    }

    /// Reads a user of `tenant`.
    pub async fn get(&self, tenant: &TenantId, sub: &str) -> Result<Option<User>, StoreError> {
        self.store.get_json(&user_key(tenant, sub)).await
    }
}
