//! The per-tenant user directory: just-in-time provisioning and stable ids.
//!
//! A user is identified by `(tenant, connection, upstream subject)` within
//! the current incarnations of the tenant and the connection: the identity
//! link's key names all five, so a tenant or connection re-created with the
//! same id provisions its users afresh, with new `sub`s. The first login
//! creates the user with a fresh random `sub` (so the same person in two
//! tenants has two unrelated `sub`s); later logins update the profile. No
//! account is ever linked by email alone.
//!
//! [`Directory::active`] is the one check everything issued to a user goes
//! through on use (SSO reuse, code and refresh grants, access tokens): the
//! user exists, is not disabled, and was provisioned under the tenant's and
//! connection's current incarnations.
//!
//! Keys (tag `t:<tenant>:users`): `user:<sub>`, `link:...`, `disabled:<sub>`
//! (kept apart from the profile so a sign-in rewriting the profile can never
//! undo a concurrent disable), `index` (the set of subs, for listing and for
//! purging a deleted tenant), and per-user indexes of refresh families and
//! SSO sessions (written by the provider and the broker).

use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, Read, SharedStore, StoreError, StoreJson, Write};
use crate::tenant::{Incarnation, Liveness, RegistryError, Tenant, TenantRegistry};

use crate::upstream::Identity;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// Latest sign-in, to within [`LAST_SIGN_IN_RESOLUTION`] (or the last
    /// change of the profile, whichever is later).
    pub updated_at: DateTime<Utc>,
    /// The tenant's incarnation the user was provisioned under.
    #[serde(default)]
    pub tenant_incarnation: String,
    /// The connection's incarnation the user was provisioned under.
    #[serde(default)]
    pub connection_incarnation: String,
    /// Unix seconds: access tokens issued (`iat`), and codes and refresh
    /// families authenticated (`auth_time`), before this are refused: the
    /// account's password was reset or changed then. Kept in the user
    /// record so the liveness read that every token use makes carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
}

/// How stale a returning user's recorded latest sign-in (`updated_at`) may
/// get before a sign-in that changes nothing else writes the record again:
/// an unchanged user costs no write per sign-in, and `updated_at` stays
/// the latest sign-in to within this.
pub const LAST_SIGN_IN_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Whether a sign-in created the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// First sign-in: the user was created (a JIT sign-up).
    Created,
    /// A returning user: the stored profile is what the IdP said now
    /// (written only when it changed, or when the recorded latest sign-in
    /// is older than [`LAST_SIGN_IN_RESOLUTION`]).
    Updated,
}

/// Why a user (and everything issued to it) is no longer accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    /// The tenant was deleted.
    TenantGone,
    /// The user's connection was deleted.
    ConnectionGone,
    /// The user was deleted.
    UserGone,
    /// The user is disabled.
    UserDisabled,
    /// The tenant or connection was deleted and re-created since the user
    /// was provisioned: the user belongs to an earlier incarnation.
    Superseded,
}

impl Inactive {
    /// A short stable name, for log fields and admin answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantGone => "tenant_gone",
            Self::ConnectionGone => "connection_gone",
            Self::UserGone => "user_gone",
            Self::UserDisabled => "user_disabled",
            Self::Superseded => "user_superseded",
        }
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The tenant or connection no longer exists.
    #[error("cannot provision: {}", .0.as_str())]
    Inactive(Inactive),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A user as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserEntry {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// Whether sign-ins and tokens are refused.
    pub disabled: bool,
}

/// The store-backed directory.
#[derive(Clone)]
pub struct Directory {
    store: SharedStore,
    clock: SharedClock,
    tenants: TenantRegistry,
}

pub(crate) fn link_key(t: &TenantId, c: &ConnectionId, inc: &Incarnation, subject: &str) -> Key {
    use sha2::Digest;
    // The subject is hashed so arbitrary upstream strings make safe keys.
    let h = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
    if inc.tenant.is_empty() && inc.connection.is_empty() {
        // Stored before incarnations existed: the original key, so those
        // users keep their `sub`.
        return Key::tenant(t.as_str(), "users", format!("link:{c}:{h}"));
    }
    Key::tenant(
        t.as_str(),
        "users",
        format!("link:{}.{c}.{}:{h}", inc.tenant, inc.connection),
    )
}
/// What provisioning reads through an identity link: the user's record and
/// disabled flag (they share the link's tag, `t:<tenant>:users`).
const THROUGH: [(&str, Read); 2] = [("user:", Read::Value), ("disabled:", Read::Presence)];

/// What [`crate::store::Store::read_through`] answers: the pointer's value
/// and the keys read through it.
type Through = Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>;

/// An identity link read ahead of provisioning ([`Directory::read_link`]).
pub struct LinkRead {
    link: Key,
    read: Result<Through, StoreError>,
}

/// `user` with `email_verified` as its tenant vouches for it *now*: true
/// only while the address is still in one of the tenant's domains and that
/// domain is not assigned to other connections than the user's
/// ([`crate::tenant::vouch_for`]). Provisioning stored what the tenant
/// vouched for at the sign-in; a domain removed since (and perhaps
/// verified by its real owner, another tenant), or assigned since to the
/// tenant's own IdP, must not go on being vouched for by every token
/// minted from an earlier sign-in (an SSO session reused, a refresh,
/// userinfo, an exchange).
pub fn vouched_now(tenant: &Tenant, mut user: User) -> User {
    if user.email_verified == Some(true) {
        let verdict = match user.email.as_deref() {
            Some(e) => crate::tenant::vouch_for(tenant, &user.connection, e),
            None => Err(crate::tenant::Unvouched::NotTheTenants),
        };
        if let Err(why) = verdict {
            tracing::info!(
                reason = why.reason(),
                tenant = %tenant.id,
                connection = %user.connection,
                "email_verified withheld: the address is no longer one the tenant vouches for through this connection"
            );
            user.email_verified = Some(false);
        }
    }
    user
}

pub(crate) fn user_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "users", format!("user:{sub}"))
}
/// Who disabled a user ([`Directory::set_disabled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledBy {
    /// An admin, through the user (`/users/{sub}/disable`).
    Admin,
    /// The user's local account being disabled.
    LocalAccount,
}

/// The disabled flag's value when an admin set it.
const DISABLED_BY_ADMIN: &[u8] = b"1";
/// The disabled flag's value when the user's local account set it.
const DISABLED_BY_LOCAL_ACCOUNT: &[u8] = b"local";

pub(crate) fn disabled_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "users", format!("disabled:{sub}"))
}
pub(crate) fn index_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "users", "index")
}

fn registry_error(e: RegistryError) -> StoreError {
    match e {
        RegistryError::Store(s) => s,
        other => StoreError::Corrupt(other.to_string()),
    }
}

impl Directory {
    /// A directory over `store`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        let tenants = TenantRegistry::new(store.clone(), clock.clone());
        Self { store, clock, tenants }
    }

    /// The tenant registry the directory reads.
    pub fn tenants(&self) -> &TenantRegistry {
        &self.tenants
    }

    async fn liveness(&self, tenant: &TenantId, connection: &ConnectionId) -> Result<Liveness, StoreError> {
        self.tenants
            .incarnation(tenant, connection)
            .await
            .map_err(registry_error)
    }

    /// Creates or updates the user for `identity`. Concurrent first logins of
    /// one identity agree on one `sub` (the link is written with `put_if_absent`).
    pub async fn provision(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        identity: &Identity,
    ) -> Result<(User, Provisioned), ProvisionError> {
        let liveness = self.liveness(tenant, connection).await?;
        let (user, outcome, _) = self
            .provision_live(tenant, connection, identity, liveness, None)
            .await?;
        Ok((user, outcome))
    }

    /// [`Self::provision`] for the tenant record `tenant_record` and the
    /// connection record `connection_record`, both read (or re-validated by
    /// fingerprint) from the store in this request, never kept in memory
    /// without that: the connection is known to exist, so only its
    /// incarnation is read. `None`: the tenant is gone. Also answers
    /// whether the user is disabled, read with the user record in one
    /// script (a user just created has no flag). `incarnation`: the
    /// connection's incarnation when the caller read it in this request
    /// with the record (one script, `tenant::snapshot`); otherwise it is
    /// read here.
    pub async fn provision_in(
        &self,
        tenant: &TenantId,
        tenant_record: Option<&Tenant>,
        connection_record: &crate::upstream::Connection,
        incarnation: Option<Incarnation>,
        identity: &Identity,
        ahead: Option<LinkRead>,
    ) -> Result<(User, Provisioned, bool), ProvisionError> {
        let connection = &connection_record.id;
        let liveness = match tenant_record {
            Some(t) if t.id == *tenant && connection_record.tenant == *tenant => Liveness::Live(match incarnation {
                // Only with the tenant record's own incarnation.
                Some(inc) if inc.tenant == t.incarnation => inc,
                _ => self
                    .tenants
                    .incarnation_of_record(t, connection_record)
                    .await
                    .map_err(registry_error)?,
            }),
            // Absent, or (a caller's mistake) another tenant's: fail closed.
            _ => Liveness::TenantGone,
        };
        self.provision_live(tenant, connection, identity, liveness, ahead).await
    }

    /// The identity link [`Self::provision_in`] will read first for
    /// `identity`, with the same arguments, when finding it needs no read
    /// (the incarnation given is the tenant record's); `None` otherwise.
    pub fn link_for(
        &self,
        tenant: &TenantId,
        tenant_record: Option<&Tenant>,
        connection_record: &crate::upstream::Connection,
        incarnation: Option<&Incarnation>,
        identity: &Identity,
    ) -> Option<Key> {
        match (tenant_record, incarnation) {
            (Some(t), Some(inc))
                if t.id == *tenant && connection_record.tenant == *tenant && inc.tenant == t.incarnation =>
            {
                Some(link_key(tenant, &connection_record.id, inc, &identity.subject))
            }
            _ => None,
        }
    }

    /// Reads the identity link `link` (from [`Self::link_for`]) and, through
    /// it, the user's record and disabled flag, as provisioning's first
    /// step does: started alongside other work, and handed to
    /// [`Self::provision_in`], which uses it only for that very link.
    pub async fn read_link(&self, link: Key) -> LinkRead {
        let read = self.store.read_through(&link, &THROUGH).await;
        LinkRead { link, read }
    }

    async fn provision_live(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        identity: &Identity,
        liveness: Liveness,
        ahead: Option<LinkRead>,
    ) -> Result<(User, Provisioned, bool), ProvisionError> {
        let inc = match liveness {
            Liveness::Live(inc) => inc,
            Liveness::TenantGone => return Err(ProvisionError::Inactive(Inactive::TenantGone)),
            Liveness::ConnectionGone => return Err(ProvisionError::Inactive(Inactive::ConnectionGone)),
        };
        let link = link_key(tenant, connection, &inc, &identity.subject);
        let candidate = format!("u_{}", crate::tokens::random_token(16));
        // A returning user (the common case) has the link: one script reads
        // it and, through it, the user's record and disabled flag (the
        // link, `user:<sub>` and `disabled:<sub>` share the tag
        // `t:<tenant>:users`). Only when it is absent is it written, with
        // `put_if_absent`, so that concurrent first logins still agree on
        // one `sub`.
        let read = match ahead.filter(|a| a.link == link) {
            Some(ahead) => ahead.read?,
            None => self.store.read_through(&link, &THROUGH).await?,
        };
        let (existing, through) = match read {
            Some((raw, read)) => (Some(raw), Some(read)),
            None if self.store.put_if_absent(&link, candidate.as_bytes(), None).await? => (None, None),
            None => (
                Some(
                    self.store
                        .get(&link)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt("identity link vanished".into()))?,
                ),
                None,
            ),
        };
        let (sub, outcome) = match existing {
            Some(raw) => (String::from_utf8_lossy(&raw).into_owned(), Provisioned::Updated),
            None => (candidate, Provisioned::Created),
        };
        let now = self.clock.now();
        // A returning user's record and disabled flag: read with the link
        // above, or (a first login that lost the race for the link) one
        // script over their shared hash tag.
        let (stored, disabled) = match (outcome, through) {
            (Provisioned::Created, _) => (None, false),
            (Provisioned::Updated, Some(read)) => {
                let mut read = read.into_iter();
                let stored: Option<User> = read
                    .next()
                    .flatten()
                    .map(|raw| serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()?;
                (stored, read.next().flatten().is_some())
            }
            (Provisioned::Updated, None) => {
                let (user_key, flag_key) = (user_key(tenant, &sub), disabled_key(tenant, &sub));
                let mut read = self
                    .store
                    .read_many(&[(&user_key, Read::Value), (&flag_key, Read::Presence)])
                    .await?
                    .into_iter();
                let stored: Option<User> = read
                    .next()
                    .flatten()
                    .map(|raw| serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()?;
                (stored, read.next().flatten().is_some())
            }
        };
        // A returning user keeps its creation time and its credentials'
        // "not before" stamp (a sign-in must never lift it).
        let created_at = stored.as_ref().map_or(now, |u| u.created_at);
        let not_before = stored.as_ref().and_then(|u| u.not_before);
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
            tenant_incarnation: inc.tenant,
            connection_incarnation: inc.connection,
            not_before,
        };
        if let Some(stored) = stored {
            // A returning user whose record would be written as it is
            // (same profile, ids and incarnations) and whose recorded
            // sign-in is recent: nothing to write. `updated_at` is the
            // latest sign-in to within `LAST_SIGN_IN_RESOLUTION`; every
            // sign-in itself is in the audit log (`signin.succeeded`).
            let unchanged = User {
                updated_at: stored.updated_at,
                ..user.clone()
            } == stored;
            let recent = stored.updated_at <= now && now - stored.updated_at < LAST_SIGN_IN_RESOLUTION;
            if unchanged && recent {
                return Ok((stored, outcome, disabled));
            }
        }
        // The index first: a user record is never stored unlisted (should
        // the write fail, a listed sub without a record is skipped by the
        // listing and written by the next sign-in).
        self.store.set_add(&index_key(tenant), &sub, None).await?;
        self.store.put_json(&user_key(tenant, &sub), &user, None).await?;
        if outcome == Provisioned::Created {
            // Counted once the user is stored (`portcullis_sign_ups_total`).
            crate::meter::sign_up(tenant.as_str(), connection.as_str());
        }
        Ok((user, outcome, disabled))
    }

    /// The `sub` provisioned for `(connection, upstream subject)` in the
    /// current incarnation of the tenant and connection, if any (local
    /// accounts: to end a user's sessions when its password changes or an
    /// admin disables it).
    pub async fn sub_of(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
    ) -> Result<Option<String>, StoreError> {
        let Liveness::Live(inc) = self.liveness(tenant, connection).await? else {
            return Ok(None);
        };
        Ok(self
            .store
            .get(&link_key(tenant, connection, &inc, subject))
            .await?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Reads a user of `tenant` (whether or not still active).
    pub async fn get(&self, tenant: &TenantId, sub: &str) -> Result<Option<User>, StoreError> {
        if sub.is_empty() || sub.len() > 128 {
            return Ok(None);
        }
        self.store.get_json(&user_key(tenant, sub)).await
    }

    /// The user `sub` of `tenant` if everything issued to it may still be
    /// accepted; otherwise why not.
    pub async fn active(&self, tenant: &TenantId, sub: &str) -> Result<Result<User, Inactive>, StoreError> {
        Ok(self.active_in(tenant, sub).await?.1)
    }

    /// [`Self::active`], also answering the tenant record it read (`None`
    /// when the tenant is gone), so the caller's other checks of the tenant
    /// (its settings) need no second read, and the user record, so minting
    /// needs none either. Both were read in this call.
    pub async fn active_in(
        &self,
        tenant: &TenantId,
        sub: &str,
    ) -> Result<(Option<Arc<Tenant>>, Result<User, Inactive>), StoreError> {
        self.active_checked(tenant, sub, None, None).await
    }

    /// [`Self::active_in`] for a tenant record `known` read from the store
    /// in this request (never one kept in memory): when it is `tenant`'s,
    /// it is not read again here.
    pub async fn active_in_with(
        &self,
        tenant: &TenantId,
        sub: &str,
        known: Option<Arc<Tenant>>,
    ) -> Result<(Option<Arc<Tenant>>, Result<User, Inactive>), StoreError> {
        self.active_checked(tenant, sub, known.filter(|t| t.id == *tenant), None)
            .await
    }

    /// [`Self::active_in_with`] for a user expected to sign in through
    /// `connection` (the one a code or refresh family was issued for): the
    /// configuration the decision needs (that connection's presence and
    /// incarnation, the tenant record unless `known`) is read at the same
    /// time as the user, one wait on the store instead of two. Should the
    /// user's connection be another, it is read again for that one: the
    /// decision only ever uses what was read for the user's own connection.
    pub async fn active_at(
        &self,
        tenant: &TenantId,
        sub: &str,
        connection: &ConnectionId,
        known: Option<Arc<Tenant>>,
    ) -> Result<(Option<Arc<Tenant>>, Result<User, Inactive>), StoreError> {
        self.active_checked(tenant, sub, known.filter(|t| t.id == *tenant), Some(connection))
            .await
    }

    /// The user with its disabled flag, one script over their hash tag
    /// (`t:<tenant>:users`); `None` for a sub that cannot be one.
    async fn user_and_flag(&self, tenant: &TenantId, sub: &str) -> Result<(Option<User>, bool), StoreError> {
        if sub.is_empty() || sub.len() > 128 {
            return Ok((None, false));
        }
        let (user_key, flag_key) = (user_key(tenant, sub), disabled_key(tenant, sub));
        let mut read = self
            .store
            .read_many(&[(&user_key, Read::Value), (&flag_key, Read::Presence)])
            .await?
            .into_iter();
        let user: Option<User> = read
            .next()
            .flatten()
            .map(|raw| serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        Ok((user, read.next().flatten().is_some()))
    }

    /// The liveness decision, from two scripts (this runs on every token
    /// use): the user with its disabled flag (one hash tag,
    /// `t:<tenant>:users`), and, for the user's connection, whether the
    /// connection exists and its incarnation, with the tenant record unless
    /// `known` (one hash tag, `t:<tenant>:config`,
    /// [`TenantRegistry::liveness_read`]). With a `hint` of the user's
    /// connection both are sent at once; without, one after the other.
    /// Each script reads its keys at one moment, so a disable, deletion or
    /// re-creation is seen whole, never half.
    async fn active_checked(
        &self,
        tenant: &TenantId,
        sub: &str,
        known: Option<Arc<Tenant>>,
        hint: Option<&ConnectionId>,
    ) -> Result<(Option<Arc<Tenant>>, Result<User, Inactive>), StoreError> {
        let with_tenant = known.is_none();
        let ((user, disabled), early) = match hint {
            Some(c) => {
                let (user, config) = tokio::try_join!(
                    self.user_and_flag(tenant, sub),
                    self.tenants.liveness_read(tenant, c, with_tenant)
                )?;
                (user, Some((c.clone(), config)))
            }
            None => (self.user_and_flag(tenant, sub).await?, None),
        };
        let Some(user) = user else {
            // A user of a deleted tenant is reported as the tenant's loss.
            let record = match (known, early) {
                (Some(t), _) => Some(t),
                (None, Some((_, (Some(read), _)))) => read,
                (None, _) => self.tenants.tenant_record(tenant).await?,
            };
            let outcome = Err(if record.is_some() {
                Inactive::UserGone
            } else {
                Inactive::TenantGone
            });
            return Ok((record, outcome));
        };
        let (read_tenant, connection) = match early {
            Some((c, config)) if c == user.connection => config,
            _ => {
                self.tenants
                    .liveness_read(tenant, &user.connection, with_tenant)
                    .await?
            }
        };
        let record = match known {
            Some(t) => Some(t),
            None => read_tenant.flatten(),
        };
        let outcome = Self::judge(record.as_deref(), user, connection, disabled);
        Ok((record, outcome))
    }

    /// The liveness decision over what [`Self::active_checked`] read: the
    /// tenant record, the user, the incarnation of the user's connection
    /// (`None`: the connection is gone) and the disabled flag.
    fn judge(
        tenant_record: Option<&Tenant>,
        user: User,
        connection: Option<String>,
        disabled: bool,
    ) -> Result<User, Inactive> {
        let Some(tenant_record) = tenant_record else {
            return Err(Inactive::TenantGone);
        };
        let Some(connection) = connection else {
            return Err(Inactive::ConnectionGone);
        };
        if user.tenant_incarnation != tenant_record.incarnation || user.connection_incarnation != connection {
            return Err(Inactive::Superseded);
        }
        if disabled {
            return Err(Inactive::UserDisabled);
        }
        Ok(vouched_now(tenant_record, user))
    }

    /// Refuses everything issued to the user before `at` (Unix seconds):
    /// access tokens by `iat`, codes and refresh families by `auth_time`
    /// (see [`User::not_before`]). Never moves the stamp back. Written with
    /// a compare-and-set against the bytes read, retried a few times, so a
    /// concurrent profile write is not lost and does not lose the stamp
    /// (provisioning carries it over). `false` if there is no such user.
    pub async fn set_not_before(&self, tenant: &TenantId, sub: &str, at: i64) -> Result<bool, StoreError> {
        let key = user_key(tenant, sub);
        for _ in 0..5 {
            let Some(raw) = self.store.get(&key).await? else {
                return Ok(false);
            };
            let mut user: User =
                serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(format!("user {sub}: {e}")))?;
            if user.not_before.is_some_and(|nb| nb >= at) {
                return Ok(true);
            }
            user.not_before = Some(at);
            let new = serde_json::to_vec(&user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if self.store.compare_and_put(&key, &raw, &new, None).await? {
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(format!(
            "user {sub} kept changing while its credentials were reset"
        )))
    }

    /// Whether the user is disabled.
    pub async fn is_disabled(&self, tenant: &TenantId, sub: &str) -> Result<bool, StoreError> {
        Ok(self.store.get(&disabled_key(tenant, sub)).await?.is_some())
    }

    /// Disables or enables a user, as `by` says. `false` if there is no
    /// such user.
    ///
    /// The flag remembers who set it: an admin's disable of the user
    /// (`1`) or its local account's (`local`). Enabling the local account
    /// lifts only a disable its own disable set, in one atomic step, so a
    /// responder's disable of the user holds whatever is done to the
    /// account; an admin's enable of the user lifts either.
    pub async fn set_disabled(
        &self,
        tenant: &TenantId,
        sub: &str,
        disabled: bool,
        by: DisabledBy,
    ) -> Result<bool, StoreError> {
        if self.get(tenant, sub).await?.is_none() {
            return Ok(false);
        }
        let key = disabled_key(tenant, sub);
        match (disabled, by) {
            (true, DisabledBy::Admin) => self.store.put(&key, DISABLED_BY_ADMIN, None).await?,
            (true, DisabledBy::LocalAccount) => {
                // An admin's disable stays the admin's.
                self.store.put_if_absent(&key, DISABLED_BY_LOCAL_ACCOUNT, None).await?;
            }
            (false, DisabledBy::Admin) => {
                self.store.delete(&key).await?;
            }
            (false, DisabledBy::LocalAccount) => {
                self.store
                    .write_many(&[
                        Write::RequireValue {
                            key: &key,
                            value: DISABLED_BY_LOCAL_ACCOUNT,
                        },
                        Write::Delete { key: &key },
                    ])
                    .await?;
            }
        }
        Ok(true)
    }

    /// One user of `tenant` as it is now (its record, read in the request),
    /// with its disabled flag. A user left by a deleted tenant of the same
    /// id (another incarnation; its purge failed) is not this tenant's:
    /// `None`, logged `directory.user_superseded`.
    pub async fn entry(&self, tenant: &Tenant, sub: &str) -> Result<Option<UserEntry>, StoreError> {
        let Some(user) = self.get(&tenant.id, sub).await? else {
            return Ok(None);
        };
        if user.tenant_incarnation != tenant.incarnation {
            tracing::info!(reason = "directory.user_superseded", tenant = %tenant.id, "a user of an earlier tenant with this id is not shown");
            return Ok(None);
        }
        let disabled = self.is_disabled(&tenant.id, sub).await?;
        Ok(Some(UserEntry { user, disabled }))
    }

    /// All subs of `tenant`, sorted.
    pub async fn subs(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        self.store.set_members(&index_key(tenant)).await
    }

    /// A page of the users of `tenant` as it is now ([`Self::entry`]: not
    /// those of an earlier incarnation) in `sub` order, starting after
    /// `after`; with the cursor of the next page when there is one.
    pub async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<UserEntry>, Option<String>), StoreError> {
        let subs = self.subs(&tenant.id).await?;
        let mut page = Vec::new();
        let mut next = None;
        for sub in subs.iter().filter(|s| after.is_none_or(|a| s.as_str() > a)) {
            let Some(entry) = self.entry(tenant, sub).await? else {
                continue;
            };
            // A next page only when one of the tenant's own users is left.
            if page.len() == limit {
                next = page.last().map(|e: &UserEntry| e.user.sub.clone());
                break;
            }
            page.push(entry);
        }
        Ok((page, next))
    }

    /// Deletes a user and its identity link, so the next sign-in of the same
    /// person creates a new user with a new `sub`. Returns the user, if it
    /// existed. Sessions and refresh families are revoked by the caller.
    pub async fn delete(&self, tenant: &TenantId, sub: &str) -> Result<Option<User>, StoreError> {
        let user = self.get(tenant, sub).await?;
        if let Some(u) = &user {
            let inc = Incarnation {
                tenant: u.tenant_incarnation.clone(),
                connection: u.connection_incarnation.clone(),
            };
            let link = link_key(tenant, &u.connection, &inc, &u.upstream_subject);
            // Only the link that still names this user: a newer user of the
            // same person (after a race) keeps its own.
            if self.store.get(&link).await?.as_deref() == Some(sub.as_bytes()) {
                self.store.delete(&link).await?;
            }
            self.store.delete(&user_key(tenant, sub)).await?;
        }
        self.store.delete(&disabled_key(tenant, sub)).await?;
        self.store.set_remove(&index_key(tenant), sub).await?;
        Ok(user)
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    /// The identity link names the subject byte for byte: subjects an IdP
    /// tells apart (case, a trailing or no-break space, a fullwidth letter,
    /// a colon where the key has separators, NUL) are never one user, and
    /// the same subject under another connection, tenant or incarnation is
    /// another link. A link stored before incarnations keeps its key.
    #[test]
    fn subjects_that_differ_in_any_byte_are_different_links() {
        let (t, c) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("okta").unwrap());
        let inc = Incarnation {
            tenant: "t1".into(),
            connection: "c1".into(),
        };
        let subjects = [
            "ada",
            "Ada",
            "ADA",
            "ada ",
            " ada",
            "ada\u{a0}",
            "ａda",
            "ada\0",
            "ada:x",
            "ada\n",
            "",
            "ada:c1:",
        ];
        let keys: std::collections::BTreeSet<Key> = subjects.iter().map(|s| link_key(&t, &c, &inc, s)).collect();
        assert_eq!(keys.len(), subjects.len());
        let other_conn = link_key(&t, &ConnectionId::parse("okta2").unwrap(), &inc, "ada");
        let other_tenant = link_key(&TenantId::parse("acme2").unwrap(), &c, &inc, "ada");
        let other_inc = link_key(
            &t,
            &c,
            &Incarnation {
                tenant: "t1".into(),
                connection: "c2".into(),
            },
            "ada",
        );
        for other in [&other_conn, &other_tenant, &other_inc] {
            assert!(!keys.contains(other), "{other:?}");
        }
        assert_eq!(other_tenant.tag(), "t:acme2:users");
        // Today's stored format, which this test pins.
        assert_eq!(
            link_key(&t, &c, &inc, "ada").name(),
            "link:t1.okta.c1:fdee430d40bd57deeac186cd9790033d0f06f909a8806e7ce6e717ab7c7d5029"
        );
        let legacy = link_key(
            &t,
            &c,
            &Incarnation {
                tenant: String::new(),
                connection: String::new(),
            },
            "ada",
        );
        assert_eq!(
            legacy.name(),
            "link:okta:fdee430d40bd57deeac186cd9790033d0f06f909a8806e7ce6e717ab7c7d5029"
        );
    }
}
