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
use super::grants::{family_claim, revoked_family_key};
use super::Provider;
use crate::ids::TenantId;
use crate::store::{Key, Read, Rotate, StoreError, StoreJson, Taken, Write};
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
/// A family's tombstone: written when a family named in advance is revoked
/// (a replayed code), so it can never start afterwards (see
/// [`Provider::forbid_family`]).
fn forbidden_key(t: &str, f: &str) -> Key {
    Key::tenant(t, &group(f), "forbidden")
}
fn session_families_key(t: &str, sid: &str) -> Key {
    Key::tenant(t, "sso", format!("families:{sid}"))
}
/// The families of one user (shares the tag of the user records).
pub(crate) fn user_families_key(t: &str, sub: &str) -> Key {
    Key::tenant(t, "users", format!("families:{sub}"))
}

/// The longest an access token lives (`tokens.access_token_ttl_secs` is
/// at most this). What outlives every access token of a family (its
/// revocation marker) is kept this long, not for the configured lifetime:
/// that one may have been longer when a token still in use was minted (an
/// operator lowered it and restarted, or replicas of a rolling restart
/// still mint with the old one).
pub const MAX_ACCESS_TOKEN_TTL_SECS: u64 = 86_400;

/// The longest a refresh family lives (`tokens.refresh_token_ttl_secs` is
/// at most this): the deleted app's tombstone is kept this long, as a
/// family started under a longer configured lifetime may still live.
pub const MAX_REFRESH_TOKEN_TTL_SECS: u64 = 365 * 86_400;

/// How long a revoked family's access-token marker is kept: longer than
/// any access token minted with the family before its revocation can live,
/// whatever lifetime it was minted with, with a minute more for one minted
/// by a request that read the family just before it was revoked.
pub const REVOKED_FAMILY_TTL: Duration = Duration::from_secs(MAX_ACCESS_TOKEN_TTL_SECS + 60);

/// How long a deleted app's tombstone is kept: longer than any token issued
/// to it before its deletion can live (a refresh family outlives every
/// access token, see [`MAX_REFRESH_TOKEN_TTL_SECS`]), with a minute more.
pub const CLIENT_TOMBSTONE_TTL: Duration = Duration::from_secs(MAX_REFRESH_TOKEN_TTL_SECS + 60);

/// The tombstone of a deleted app (see [`Provider::retire_client`]).
fn client_tombstone_key(client_id: &str) -> Key {
    Key::global("clients", format!("deleted:{client_id}"))
}

/// A fresh token of `family` and the hash its store key is named by.
fn next_token(family: &Family) -> (String, String) {
    let token = format!(
        "{}.{}.{}",
        family.authz.tenant,
        family.id,
        crate::tokens::random_token(32)
    );
    let hash = crate::tokens::sha256_base64url(token.as_bytes());
    (token, hash)
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

/// What [`Provider::start_family`] did.
#[derive(Debug)]
pub struct Start {
    /// The family and its first token, when its record was written
    /// (`None`: it was forbidden before it started; nothing of it written).
    pub started: Option<(Family, String)>,
    /// The SSO session had ended (its tombstone was there): the family is
    /// not listed under it, and must not be handed out.
    pub session_ended: bool,
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

    /// A new family id, for [`Provider::start_family`].
    pub fn new_family_id() -> String {
        crate::tokens::random_token(16)
    }

    /// Starts the family `id` (from [`Provider::new_family_id`], named in
    /// advance in the code's "used" marker) for `authz`; answers it with
    /// its first token, or `None` when the family was forbidden before it
    /// started (the code was replayed meanwhile, or the session's families
    /// were revoked, see [`Provider::forbid_family`]): then nothing of it
    /// was written. It is listed under its SSO session only while the
    /// session has no tombstone ([`super::codes::session_ended_key`]),
    /// checked in the same script as that index entry: either the session
    /// ended first ([`Start::session_ended`]: the caller fails the grant
    /// and abandons the family) or the family is listed where the
    /// session's end, which writes the tombstone before it revokes the
    /// listed families, finds it.
    pub async fn start_family(&self, authz: &Authorization, id: String) -> Result<Start, StoreError> {
        let now = self.clock.unix();
        let mut expires_at = now + i64::try_from(self.ttl.refresh_token_ttl_secs).unwrap_or(i64::MAX / 2);
        // Never outlive the SSO session's hard end (SAML SessionNotOnOrAfter,
        // the connection's maximum); at least one second, so the TTL is set.
        if let Some(end) = authz.session_expires_at {
            expires_at = expires_at.min(end).max(now + 1);
        }
        let family = Family {
            id,
            // The app's registration is checked by `started_at` against its
            // tombstone from here on, not by the code's registration time.
            authz: Authorization {
                client_registered_at: None,
                ..authz.clone()
            },
            expires_at,
            started_at: now,
        };
        let t = authz.tenant.as_str();
        let ttl = self.remaining(family.expires_at);
        let (token, hash) = next_token(&family);
        let record = serde_json::to_vec(&family).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (family_at, token_at) = (family_key(t, &family.id), token_key(t, &family.id, &hash));
        let forbidden = forbidden_key(t, &family.id);
        let (by_session, by_user) = (session_families_key(t, &authz.sid), user_families_key(t, &authz.sub));
        let ended = super::codes::session_ended_key(t, &authz.sid);
        // One wait: the family and its first token in one script (their
        // shared tag), unless the family's tombstone is there, the two
        // indexes (other tags) sent with it. They may fail independently;
        // any failure fails the grant, so the token is never handed out and
        // whatever was written is inert: a family whose token nobody holds,
        // or an index naming a family that is absent (revoking it deletes
        // nothing). A replay of the code, which names this family in its
        // marker before it starts, either finds it written (and deletes it)
        // or leaves the tombstone this script honours (see `codes`).
        let together = [
            Write::RequireAbsent { key: &forbidden },
            Write::Put {
                key: &family_at,
                value: &record,
                ttl,
            },
            Write::Put {
                key: &token_at,
                value: b"1",
                ttl,
            },
        ];
        let listed = [
            Write::RequireAbsent { key: &ended },
            Write::SetAdd {
                key: &by_session,
                member: &family.id,
                ttl,
            },
        ];
        let (started, session_live, ()) = tokio::try_join!(
            self.store.write_many(&together),
            self.store.write_many(&listed),
            self.store.set_add(&by_user, &family.id, ttl),
        )?;
        Ok(Start {
            started: started.then_some((family, token)),
            session_ended: !session_live,
        })
    }

    /// Rotates `token` of `family`, as peeked (read without consuming, by
    /// [`Provider::peek_refresh`]) and prepared for in this request, in
    /// one step: the token is consumed (with its "used" marker) and the
    /// next one written only if the family still exists at that moment
    /// (one script, [`crate::store::Store::rotate`]); a family revoked
    /// meanwhile rotates nothing. The family's record is written once, at
    /// its start, and only ever deleted, so the peeked copy is what is
    /// stored. A reuse revokes the family as [`Provider::rotate_refresh`]
    /// does.
    pub async fn rotate_peeked(&self, token: &str, family: &Family, client_id: &str) -> Result<Rotation, StoreError> {
        let Some(p) = parse(token).filter(|p| p.family == family.id && p.tenant == family.authz.tenant.as_str()) else {
            return Ok(Rotation::Invalid);
        };
        let Some(ttl) = self.remaining(family.expires_at) else {
            self.revoke_family(&family.authz.tenant, &family.id).await?;
            return Ok(Rotation::Invalid);
        };
        if family.authz.client_id != client_id {
            return Ok(Rotation::WrongClient);
        }
        let (next, hash) = next_token(family);
        let (current, marker, family_at, next_at) = (
            token_key(p.tenant, p.family, &p.hash),
            used_key(p.tenant, p.family, &p.hash),
            family_key(p.tenant, p.family),
            token_key(p.tenant, p.family, &hash),
        );
        let rotation = Rotate {
            key: &current,
            marker_key: &marker,
            marker_value: b"1",
            marker_ttl: ttl,
            requires: &family_at,
            next_key: &next_at,
            next_value: b"1",
            next_ttl: Some(ttl),
        };
        match self.store.rotate(&rotation).await? {
            Taken::Value(_) => Ok(Rotation::Rotated(Box::new(family.clone()), next)),
            Taken::Marker(_) => self.reused(family, p.tenant, client_id).await,
            Taken::Absent => Ok(Rotation::Invalid),
        }
    }

    /// A reused token: revokes its family, audits it.
    async fn reused(&self, family: &Family, tenant: &str, client_id: &str) -> Result<Rotation, StoreError> {
        crate::meter::refresh_reused();
        tracing::warn!(
            reason = "refresh.reuse_detected",
            tenant,
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
                // The next token after the take: written only once this
                // rotation is known to have consumed the current one.
                let (next, hash) = next_token(&family);
                self.store
                    .put(&token_key(p.tenant, p.family, &hash), b"1", Some(ttl))
                    .await?;
                Ok(Rotation::Rotated(Box::new(family), next))
            }
            Taken::Marker(_) => self.reused(&family, p.tenant, client_id).await,
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

    /// Revokes a family: no token of it works any more, neither its refresh
    /// tokens nor the access tokens minted with it (their `fam` marker, in
    /// the same wait: the family's tag and the markers' differ).
    pub async fn revoke_family(&self, tenant: &TenantId, family: &str) -> Result<(), StoreError> {
        let key = family_key(tenant.as_str(), family);
        tokio::try_join!(self.store.delete(&key), self.deny_family_access_tokens(tenant, family))?;
        Ok(())
    }

    /// Refuses the access tokens minted with `family` from now on (see
    /// [`super::grants::AccessClaims::fam`]), for as long as any of them
    /// can live: none outlives [`MAX_ACCESS_TOKEN_TTL_SECS`] from now (an
    /// exchanged one expires with its subject token), whatever lifetime it
    /// was minted with. Not the configured lifetime: a token minted before
    /// it was lowered would be accepted again once a marker that short
    /// expired ([`REVOKED_FAMILY_TTL`]). Never shortens a marker already
    /// there, as every marker is written for this one duration.
    async fn deny_family_access_tokens(&self, tenant: &TenantId, family: &str) -> Result<(), StoreError> {
        self.store
            .put(
                &revoked_family_key(tenant, &family_claim(family)),
                b"1",
                Some(REVOKED_FAMILY_TTL),
            )
            .await
    }

    /// Revokes the family `family` whether or not it has started yet: in
    /// one step, deletes it and leaves a tombstone (as long as a family can
    /// live) that [`Provider::start_family`] honours, so a family named in
    /// advance and started after this call never starts.
    pub async fn forbid_family(&self, tenant: &TenantId, family: &str) -> Result<(), StoreError> {
        let t = tenant.as_str();
        let (family_at, forbidden) = (family_key(t, family), forbidden_key(t, family));
        let ttl = Duration::from_secs(self.ttl.refresh_token_ttl_secs.max(1));
        let writes = [
            Write::Put {
                key: &forbidden,
                value: b"1",
                ttl: Some(ttl),
            },
            Write::Delete { key: &family_at },
        ];
        tokio::try_join!(
            self.store.write_many(&writes),
            self.deny_family_access_tokens(tenant, family)
        )?;
        Ok(())
    }

    /// Revokes every family started in the SSO session `sid` (sign-out, a
    /// refused upstream session), once the session's tombstone is written.
    /// Each is forbidden, not only deleted: a family listed by a code grant
    /// just before the tombstone may not be written yet, and must then
    /// never start.
    pub async fn revoke_session_families(&self, tenant: &TenantId, sid: &str) -> Result<(), StoreError> {
        let key = session_families_key(tenant.as_str(), sid);
        for f in self.store.set_members(&key).await? {
            self.forbid_family(tenant, &f).await?;
        }
        self.store.delete(&key).await?;
        Ok(())
    }

    /// Records that the app `client_id` is deleted now, before it is: a
    /// tombstone saying that nothing issued to this id up to now is
    /// accepted, so an app re-registered with the same id never inherits
    /// its predecessor's refresh families or access tokens. Kept as long as
    /// any token can live whatever lifetimes it was issued with
    /// ([`CLIENT_TOMBSTONE_TTL`]), not for the configured ones: a family
    /// started before `refresh_token_ttl_secs` was lowered outlives those.
    pub async fn retire_client(&self, client_id: &str) -> Result<(), StoreError> {
        self.store
            .put(
                &client_tombstone_key(client_id),
                self.clock.unix().to_string().as_bytes(),
                Some(CLIENT_TOMBSTONE_TTL),
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

    /// Undoes [`Provider::start_family`] for a code grant that failed:
    /// the family's script failed, a replay had forbidden the family, or a
    /// check that ran beside its start refused the redemption. Deletes the
    /// family's record (a failed script may still have run), its first
    /// token when the start answered it, and its entries in the session's
    /// and the user's indexes, sent with it, in one wait. Nothing of it was
    /// handed out, so this only tidies: a failure is logged, and what stays
    /// is inert (a family whose token nobody holds, a token whose family is
    /// gone, or index entries naming an absent family).
    pub async fn abandon_family(&self, authz: &Authorization, id: &str, first_token: Option<&str>) {
        let t = authz.tenant.as_str();
        let (family_at, by_session, by_user) = (
            family_key(t, id),
            session_families_key(t, &authz.sid),
            user_families_key(t, &authz.sub),
        );
        let token_at = first_token.map(|token| token_key(t, id, &crate::tokens::sha256_base64url(token.as_bytes())));
        // The family and its token share a tag: one script for both.
        let mut records = vec![Write::Delete { key: &family_at }];
        if let Some(k) = &token_at {
            records.push(Write::Delete { key: k });
        }
        // Each step on its own: one failing does not cancel the others.
        let (family, session, user) = tokio::join!(
            self.store.write_many(&records),
            self.store.set_remove(&by_session, id),
            self.store.set_remove(&by_user, id),
        );
        for e in [family.err(), session.err(), user.err()].into_iter().flatten() {
            tracing::warn!(
                reason = "code.family_abandon_failed",
                tenant = %authz.tenant,
                error = %e,
                "a refresh family of a failed code grant could not be removed; it is inert (its token was never handed out)"
            );
        }
    }

    /// Whether the family `id` of `tenant` is stored (started and neither
    /// revoked nor expired).
    pub(super) async fn family_exists(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        self.store.exists(&family_key(tenant.as_str(), id)).await
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
