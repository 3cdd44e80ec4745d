//! Refresh-token families: opaque tokens that rotate on every use; a reused
//! token revokes its whole family (OAuth 2.0 Security BCP §4.14).
//!
//! A token reads `<tenant>.<family>.<secret>`. The family record and its
//! token entries share the hash tag `t:<tenant>:rf:<family>`, so the rotation
//! touches one Redis Cluster slot. The current token is consumed with one
//! atomic `take_and_mark` (take the token, write its "used" marker): of any
//! number of concurrent uses, one rotates and every other sees the marker and
//! revokes the family as a reuse (RFC 9700 §4.14.2); none can see neither.
//!
//! Each family is also listed under its user (`t:<tenant>:users`
//! `families:<sub>`), so disabling or deleting a user revokes its families.

use super::codes::Authorization;
use super::Provider;
use crate::ids::TenantId;
use crate::store::{Key, Read, StoreError, StoreJson, Taken};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A family: one chain of rotated refresh tokens from one code redemption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Family {
    /// The family id.
    pub id: String,
    /// The authorization the family continues.
    pub authz: Authorization,
    /// Absolute expiry of the family (Unix seconds).
    pub expires_at: i64,
    /// When the family was started (Unix seconds); 0 for families stored
    /// before this was recorded (they count as older than any app deletion).
    #[serde(default)]
    pub started_at: i64,
}

fn group(family: &str) -> String {
    format!("rf:{family}")
}
fn family_key(t: &str, f: &str) -> Key {
    Key::tenant(t, &group(f), "family")
}
fn token_key(t: &str, f: &str, hash: &str) -> Key {
    Key::tenant(t, &group(f), format!("tok:{hash}"))
}
fn used_key(t: &str, f: &str, hash: &str) -> Key {
    Key::tenant(t, &group(f), format!("used:{hash}"))
}
fn session_families_key(t: &str, sid: &str) -> Key {
    Key::tenant(t, "sso", format!("families:{sid}"))
}
/// The families of one user (shares the tag of the user records).
pub(crate) fn user_families_key(t: &str, sub: &str) -> Key {
    Key::tenant(t, "users", format!("families:{sub}"))
}

/// The tombstone of a deleted app (see [`Provider::retire_client`]).
fn client_tombstone_key(client_id: &str) -> Key {
    Key::global("clients", format!("deleted:{client_id}"))
}

/// The parts of a presented refresh token.
struct Parsed<'a> {
    tenant: &'a str,
    family: &'a str,
    hash: String,
}

fn parse(token: &str) -> Option<Parsed<'_>> {
    if token.len() > 512 {
        return None;
    }
    let mut it = token.splitn(3, '.');
    let tenant = it.next()?;
    let family = it.next()?;
    let _secret = it.next()?;
    TenantId::parse(tenant).ok()?;
    if family.is_empty()
        || !family
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(Parsed {
        tenant,
        family,
        hash: crate::tokens::sha256_base64url(token.as_bytes()),
    })
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// Valid: the family and the next token.
    Rotated(Box<Family>, String),
    /// A token of another client: nothing was consumed.
    WrongClient,
    /// An already-used token: the family has been revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

impl Provider {
    fn remaining(&self, expires_at: i64) -> Option<Duration> {
        let left = expires_at - self.clock.unix();
        (left > 0).then(|| Duration::from_secs(left.unsigned_abs()))
    }

    /// Starts a family for `authz`; returns it with its first token.
    pub async fn start_family(&self, authz: &Authorization) -> Result<(Family, String), StoreError> {
        let now = self.clock.unix();
        let mut expires_at = now + i64::try_from(self.ttl.refresh_token_ttl_secs).unwrap_or(i64::MAX / 2);
        // Never outlive the SSO session's hard end (SAML SessionNotOnOrAfter,
        // the connection's maximum); at least one second, so the TTL is set.
        if let Some(end) = authz.session_expires_at {
            expires_at = expires_at.min(end).max(now + 1);
        }
        let family = Family {
            id: crate::tokens::random_token(16),
            authz: authz.clone(),
            expires_at,
            started_at: now,
        };
        let t = authz.tenant.as_str();
        let ttl = self.remaining(family.expires_at);
        self.store.put_json(&family_key(t, &family.id), &family, ttl).await?;
        self.store
            .set_add(&session_families_key(t, &authz.sid), &family.id, ttl)
            .await?;
        self.store
            .set_add(&user_families_key(t, &authz.sub), &family.id, ttl)
            .await?;
        let token = self.new_token(&family).await?;
        Ok((family, token))
    }

    async fn new_token(&self, family: &Family) -> Result<String, StoreError> {
        let t = family.authz.tenant.as_str();
        let token = format!("{t}.{}.{}", family.id, crate::tokens::random_token(32));
        let hash = crate::tokens::sha256_base64url(token.as_bytes());
        self.store
            .put(
                &token_key(t, &family.id, &hash),
                b"1",
                self.remaining(family.expires_at),
            )
            .await?;
        Ok(token)
    }

    /// Presents a refresh token on behalf of `client_id`: rotates it, or
    /// detects reuse and revokes the family. A token of another client is
    /// refused before anything is consumed, so no client can burn another's.
    pub async fn rotate_refresh(&self, token: &str, client_id: &str) -> Result<Rotation, StoreError> {
        let Some(p) = parse(token) else {
            return Ok(Rotation::Invalid);
        };
        let Some(family) = self.store.get_json::<Family>(&family_key(p.tenant, p.family)).await? else {
            return Ok(Rotation::Invalid);
        };
        let Some(ttl) = self.remaining(family.expires_at) else {
            self.revoke_family(&family.authz.tenant, &family.id).await?;
            return Ok(Rotation::Invalid);
        };
        if family.authz.client_id != client_id {
            return Ok(Rotation::WrongClient);
        }
        match self
            .store
            .take_and_mark(
                &token_key(p.tenant, p.family, &p.hash),
                &used_key(p.tenant, p.family, &p.hash),
                b"1",
                ttl,
            )
            .await?
        {
            Taken::Value(_) => {
                let next = self.new_token(&family).await?;
                Ok(Rotation::Rotated(Box::new(family), next))
            }
            Taken::Marker(_) => {
                crate::meter::refresh_reused();
                tracing::warn!(
                    reason = "refresh.reuse_detected",
                    tenant = p.tenant,
                    client_id,
                    "refresh token reused: family revoked"
                );
                self.revoke_family(&family.authz.tenant, &family.id).await?;
                // Who and which app, never the token (nor its family id, a part of it).
                let event = crate::audit::AuditEvent::security(
                    &crate::audit::Actor::Client(client_id.to_owned()),
                    "refresh.reuse_detected",
                    crate::audit::Target::new("client", client_id),
                    crate::audit::Outcome::Failure,
                    "refresh.reuse_detected",
                )
                .tenant(&family.authz.tenant)
                .connection(family.authz.connection.as_str())
                .subject(&family.authz.sub);
                self.audit.security(event).await;
                Ok(Rotation::Reused)
            }
            Taken::Absent => Ok(Rotation::Invalid),
        }
    }

    /// The family a refresh token belongs to, without consuming it (for
    /// revocation and introspection). `None` if not current.
    pub async fn peek_refresh(&self, token: &str) -> Result<Option<Family>, StoreError> {
        let Some(p) = parse(token) else {
            return Ok(None);
        };
        // The token's presence and the family, one script over their
        // shared hash tag (one round trip, read at one moment).
        let (token, family) = (token_key(p.tenant, p.family, &p.hash), family_key(p.tenant, p.family));
        let mut read = self
            .store
            .read_many(&[(&token, Read::Presence), (&family, Read::Value)])
            .await?
            .into_iter();
        if read.next().flatten().is_none() {
            return Ok(None);
        }
        let family: Option<Family> = read
            .next()
            .flatten()
            .map(|raw| serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        Ok(family.filter(|f| f.expires_at > self.clock.unix()))
    }

    /// Revokes a family: no token of it works any more.
    pub async fn revoke_family(&self, tenant: &TenantId, family: &str) -> Result<(), StoreError> {
        self.store.delete(&family_key(tenant.as_str(), family)).await?;
        Ok(())
    }

    /// Revokes every family started in the SSO session `sid` (logout).
    pub async fn revoke_session_families(&self, tenant: &TenantId, sid: &str) -> Result<(), StoreError> {
        let key = session_families_key(tenant.as_str(), sid);
        for f in self.store.set_members(&key).await? {
            self.revoke_family(tenant, &f).await?;
        }
        self.store.delete(&key).await?;
        Ok(())
    }

    /// Records that the app `client_id` is deleted now, before it is: a
    /// tombstone (kept as long as any token can live) saying that nothing
    /// issued to this id up to now is accepted, so an app re-registered with
    /// the same id never inherits its predecessor's refresh families or
    /// access tokens.
    pub async fn retire_client(&self, client_id: &str) -> Result<(), StoreError> {
        let longest = self
            .ttl
            .refresh_token_ttl_secs
            .max(self.ttl.access_token_ttl_secs)
            .saturating_add(60);
        self.store
            .put(
                &client_tombstone_key(client_id),
                self.clock.unix().to_string().as_bytes(),
                Some(Duration::from_secs(longest)),
            )
            .await
    }

    /// When the app `client_id` was last deleted (Unix seconds), if within
    /// the lifetime of any token. An unreadable tombstone counts as "now".
    pub async fn client_retired_at(&self, client_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.store.get(&client_tombstone_key(client_id)).await?.map(|raw| {
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| self.clock.unix())
        }))
    }

    /// Revokes every family of the user `sub` (disable, delete).
    pub async fn revoke_user_families(&self, tenant: &TenantId, sub: &str) -> Result<(), StoreError> {
        let key = user_families_key(tenant.as_str(), sub);
        for f in self.store.set_members(&key).await? {
            self.revoke_family(tenant, &f).await?;
        }
        self.store.delete(&key).await?;
        Ok(())
    }
}
