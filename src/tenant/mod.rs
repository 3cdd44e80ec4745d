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
//! Nor does a connection re-pointed at another IdP (a new OIDC `issuer` or
//! SAML entity id): that change writes a fresh connection incarnation in
//! the same atomic step as the record, unless the admin keeps the users
//! ([`IssuerChange`]), so the new IdP's subjects never sign in as the old
//! IdP's users who had the same subject.

pub mod domains;
pub mod expiry;
pub mod files;
pub mod import;
pub mod refresh;
pub mod setup;
pub mod snapshot;

use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, SharedStore, StoreError, StoreJson, Write};
use crate::upstream::{Connection, ConnectionKind, Identity};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One customer of the SaaS, with its email domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    /// The tenant id.
    #[schema(value_type = String)]
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Verified email domains whose users this tenant owns (lower case):
    /// declared by the platform admin or verified by DNS. Only these route
    /// users and vouch for `email_verified`; claims still pending live
    /// apart (`domains.rs`).
    pub domains: Vec<String>,
    /// Which connections sign in the users of a verified domain: only those
    /// vouch for `email_verified` on its addresses, and a `login_hint` in it
    /// goes to them. A domain not listed is any connection's. Set per domain
    /// (`PATCH …/domains/{domain}`, a tenant file's `domain_connections`);
    /// an entry names only domains in [`Self::domains`], and the map holds
    /// at most [`MAX_DOMAIN_ASSIGNMENTS`] domain and connection pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, Vec<String>>)]
    pub domain_connections: BTreeMap<String, Vec<ConnectionId>>,
    /// When the tenant was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Random per creation: what users and their tokens are bound to. Empty
    /// for tenants stored before incarnations existed.
    #[serde(default)]
    pub incarnation: String,
    /// Per-tenant settings (absent in records stored before they existed).
    #[serde(default)]
    pub settings: TenantSettings,
}

/// The most connections a tenant admin (a tenant API key, a setup link)
/// may give its tenant: a connection is kept in the store, refreshed from
/// its metadata URL and cached by every replica that serves it, so the
/// tenant's count is the platform's cost. Checked before each creation, so
/// creations running at the same moment may pass it together (each by at
/// most one). The platform admin, tenant files and imports are not held to
/// it (`quota.connections`). The default of `[quotas]
/// connections_per_tenant`, which the checks read.
pub const MAX_CONNECTIONS: usize = 50;

/// The most (domain, connection) pairs a tenant's `domain_connections` may
/// hold, whoever sets them: the map is in the tenant's record, which every
/// sign-in and every token of the tenant reads (`domain.too_many_assignments`).
pub const MAX_DOMAIN_ASSIGNMENTS: usize = 100;

/// The most domains (verified or still claimed) a tenant admin may give
/// its tenant: each verified one is in the tenant's record, which every
/// sign-in of the tenant reads (`quota.domains`). The default of
/// `[quotas] domains_per_tenant`, which the check reads.
pub const MAX_DOMAINS: usize = 50;

/// The most apps a tenant's `settings.allowed_clients` may list: the list
/// is in the tenant's record, which every sign-in of the tenant reads.
/// Fixed, not a `[quotas]` value: only the platform admin sets the list (it
/// is no tenant admin's creation), and a longer one would slow every
/// sign-in of the tenant.
pub const MAX_ALLOWED_CLIENTS: usize = 100;

/// The most an SSO session of a tenant may be set to last (30 days).
pub const MAX_SSO_SESSION_TTL_SECS: u64 = 30 * 24 * 3600;
/// The least an SSO session of a tenant may be set to last (one minute).
pub const MIN_SSO_SESSION_TTL_SECS: u64 = 60;

/// Settings a platform admin sets per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// How long an SSO session of this tenant lasts, in seconds; `None`
    /// keeps the global lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_session_ttl_secs: Option<u64>,
    /// The apps (client ids) the tenant may use; empty means every app that
    /// allows the tenant. At most [`MAX_ALLOWED_CLIENTS`].
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// Whether sign-ins of this tenant must show multi-factor authentication.
    #[serde(default)]
    pub require_mfa: bool,
    /// The second factor Portcullis itself asks for on the connections whose
    /// first factor it checks (local accounts, the dev IdP): `off`,
    /// `optional` (enrolled users are challenged) or `required` (everyone
    /// enrols). `require_mfa` (tenant or app) counts as `required` there.
    #[serde(default)]
    pub local_mfa: LocalMfa,
    /// How the tenant's pages look.
    #[serde(default)]
    pub branding: Branding,
    /// Rate limits of this tenant that differ from the global `[throttle]`
    /// ones (set by the platform admin only). Boxed: most tenants have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Box<TenantThrottle>>,
}

/// The tenant setting `local_mfa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LocalMfa {
    /// No second factor unless the tenant or app requires MFA.
    #[default]
    Off,
    /// Users who enrolled are asked for their second factor.
    Optional,
    /// Every user enrols at the first sign-in and is asked every time.
    Required,
}

/// A tenant's own rate limits per route class; an absent class or value
/// keeps the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantThrottle {
    /// `/authorize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize: Option<TenantLimit>,
    /// The IdP callbacks (SAML ACS and continuation, OIDC callback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<TenantLimit>,
    /// `/token`, `/revoke`, `/introspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TenantLimit>,
    /// The admin API's routes of this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<TenantLimit>,
}

/// One route class's limits for a tenant, per the global window: requests
/// from one client address and requests for the tenant as a whole. `0`
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimit {
    /// Requests per window from one client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<u64>,
    /// Requests per window for the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_tenant: Option<u64>,
}

/// The most a tenant's limit may be set to (per window).
pub const MAX_TENANT_LIMIT: u64 = 1_000_000;

impl TenantSettings {
    /// Whether the tenant may use the app `client_id`.
    pub fn allows_client(&self, client_id: &str) -> bool {
        self.allowed_clients.is_empty() || self.allowed_clients.iter().any(|c| c == client_id)
    }

    /// Checks every setting; the error names the field (relative to
    /// `settings`) and says what is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(ttl) = self.sso_session_ttl_secs {
            if !(MIN_SSO_SESSION_TTL_SECS..=MAX_SSO_SESSION_TTL_SECS).contains(&ttl) {
                return Err((
                    "settings.sso_session_ttl_secs".into(),
                    format!("must be between {MIN_SSO_SESSION_TTL_SECS} and {MAX_SSO_SESSION_TTL_SECS} seconds."),
                ));
            }
        }
        if self.allowed_clients.len() > MAX_ALLOWED_CLIENTS {
            tracing::info!(
                reason = "quota.allowed_clients",
                count = self.allowed_clients.len(),
                "too many allowed clients: refused"
            );
            return Err((
                "settings.allowed_clients".into(),
                format!("may list at most {MAX_ALLOWED_CLIENTS} apps (quota.allowed_clients)."),
            ));
        }
        for (i, c) in self.allowed_clients.iter().enumerate() {
            if !crate::ids::is_client_id(c) {
                return Err((
                    format!("settings.allowed_clients[{i}]"),
                    format!("{c:?} is not a client id."),
                ));
            }
        }
        if let Some(t) = self.throttle.as_deref() {
            for (class, limit) in [
                ("authorize", t.authorize),
                ("callback", t.callback),
                ("token", t.token),
                ("admin", t.admin),
            ] {
                let Some(limit) = limit else { continue };
                for (field, value) in [("per_ip", limit.per_ip), ("per_tenant", limit.per_tenant)] {
                    if value.is_some_and(|v| v > MAX_TENANT_LIMIT) {
                        return Err((
                            format!("settings.throttle.{class}.{field}"),
                            format!("must be at most {MAX_TENANT_LIMIT} (0 turns the limit off)."),
                        ));
                    }
                }
            }
        }
        self.branding.check()
    }
}

/// A tenant's branding, shown on its pages.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    /// The name shown to users (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The logo's address (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// The main colour, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
}

impl Branding {
    fn check(&self) -> Result<(), (String, String)> {
        if let Some(n) = &self.display_name {
            if n.trim().is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
                return Err((
                    "settings.branding.display_name".into(),
                    "must be 1 to 100 characters without control characters.".into(),
                ));
            }
        }
        if let Some(u) = &self.logo_url {
            let ok = u.len() <= 2048
                && url::Url::parse(u).is_ok_and(|p| {
                    p.scheme() == "https" && p.host_str().is_some() && p.password().is_none() && p.username().is_empty()
                });
            if !ok {
                return Err((
                    "settings.branding.logo_url".into(),
                    "must be an https URL without credentials.".into(),
                ));
            }
        }
        if let Some(c) = &self.primary_color {
            let ok = c.len() == 7 && c.starts_with('#') && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(("settings.branding.primary_color".into(), "must read #rrggbb.".into()));
            }
        }
        Ok(())
    }
}

/// The most tenants one page of a listing holds.
pub const MAX_PAGE: usize = 200;

/// What a tenant listing selects.
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    /// Only the tenant owning this domain.
    pub domain: Option<String>,
    /// Only tenants whose name starts with this (case-insensitive).
    pub name_prefix: Option<String>,
    /// Only tenants whose id, name or a domain contains this (case-insensitive).
    pub q: Option<String>,
}

impl TenantFilter {
    fn matches(&self, t: &Tenant) -> bool {
        let lower_name = t.name.to_lowercase();
        self.domain.as_ref().is_none_or(|d| t.domains.contains(d))
            && self
                .name_prefix
                .as_ref()
                .is_none_or(|p| lower_name.starts_with(&p.to_lowercase()))
            && self.q.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                t.id.as_str().contains(&q) || lower_name.contains(&q) || t.domains.iter().any(|d| d.contains(&q))
            })
    }
}

/// One page of tenants.
#[derive(Debug, Clone)]
pub struct TenantPage {
    /// The tenants, ordered by id.
    pub tenants: Vec<Tenant>,
    /// The id after which the next page starts, if there may be one.
    pub next_after: Option<String>,
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
    /// A migrated ACS URL is already served for another connection.
    #[error("the ACS URL path {path} already belongs to another connection")]
    AcsPathTaken {
        /// The path.
        path: String,
    },
    /// The record changed between the caller's read and its write (another
    /// writer won a compare-and-set): nothing was written; read it again.
    #[error("{0} changed meanwhile")]
    Changed(String),
    /// Another deletion of the tenant holds its lease
    /// ([`TenantRegistry::delete`]): nothing was done; once it ends the
    /// tenant is gone, or may be created again.
    #[error("{0} is being deleted")]
    DeletionInProgress(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`TenantRegistry::modify_tenant`] reads again after losing a
/// compare-and-set before it reports [`RegistryError::Changed`].
const MODIFY_ATTEMPTS: usize = 5;

/// Encodes a record as stored.
fn encode_record<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()).into())
}

/// A connection as stored. Every write of a connection record goes through
/// here. SAML and OIDC connections get a fresh write stamp each time
/// (`store::stamped`), so every `/authorize` and ACS re-validates them by
/// reading their first bytes instead of hashing them whole (a SAML
/// connection holds the IdP's metadata as received, often tens of KB).
/// Local and development connections are small and stay unstamped: their
/// configurations refuse unknown members, so a replica of an earlier
/// version, during a rolling update, could not read them stamped.
fn encode_connection(connection: &Connection) -> Result<Vec<u8>, RegistryError> {
    let encoded = encode_record(connection)?;
    Ok(match connection.kind {
        ConnectionKind::Saml(_) | ConnectionKind::Oidc(_) => crate::store::stamped(&encoded),
        ConnectionKind::Local(_) | ConnectionKind::Dev(_) => encoded,
    })
}

/// Whether the stored bytes `raw` hold the record `expected`. Both sides go
/// through the record type and compare as JSON values, so a record written
/// before a field with a default existed, or with map keys in another
/// order, still counts as the same record.
fn holds<T: serde::Serialize + serde::de::DeserializeOwned>(raw: &[u8], expected: &T) -> Result<bool, RegistryError> {
    let stored: T = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let as_value = |v: &T| serde_json::to_value(v).map_err(|e| StoreError::Corrupt(e.to_string()));
    Ok(as_value(&stored)? == as_value(expected)?)
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

/// Why an IdP's word that an address is verified is not passed on
/// ([`vouch_for`]); each is a reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unvouched {
    /// The address is outside the tenant's domains (`login.email_not_vouched`).
    NotTheTenants,
    /// In the tenant's domain, but not written plainly (`login.email_not_plain`).
    NotPlain,
    /// In a domain of the tenant that is assigned to other connections
    /// (`login.email_other_connection`).
    OtherConnection,
}

impl Unvouched {
    /// The reason code logged when `email_verified` is withheld.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotTheTenants => "login.email_not_vouched",
            Self::NotPlain => "login.email_not_plain",
            Self::OtherConnection => "login.email_other_connection",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Self::NotTheTenants => "email_verified withheld: the address is outside the tenant's domains",
            Self::NotPlain => "email_verified withheld: the address in the tenant's domain is not written plainly (space, control character or trailing dot)",
            Self::OtherConnection => "email_verified withheld: the address's domain is assigned to other connections of the tenant",
        }
    }
}

/// Whether `tenant` may pass on the word of its connection `connection`
/// that `email` is verified: only for an address in one of the tenant's
/// own domains (exact match; a subdomain is not reserved to the tenant, so
/// it does not count), written plainly (`plain_address`), in a domain not
/// assigned to other connections ([`Tenant::domain_connections`]).
///
/// Apps link accounts by verified email. A tenant's IdP vouching for an
/// address in someone else's domain would let that tenant's admin sign in
/// as anyone in any app that trusts `email_verified` (the "nOAuth"
/// takeover); likewise, a tenant that signs in its own people through one
/// IdP and a partner's through another must not let the partner's IdP
/// vouch for the tenant's own addresses.
pub fn vouch_for(tenant: &Tenant, connection: &ConnectionId, email: &str) -> Result<(), Unvouched> {
    let Some(domain) = email_domain(email).filter(|d| tenant.domains.contains(d)) else {
        return Err(Unvouched::NotTheTenants);
    };
    if !plain_address(email) {
        return Err(Unvouched::NotPlain);
    }
    match tenant.domain_connections.get(&domain) {
        Some(assigned) if !assigned.contains(connection) => Err(Unvouched::OtherConnection),
        _ => Ok(()),
    }
}

/// The connections a `login_hint` of `email` goes to: those its domain is
/// assigned to, if it is one of the tenant's and assigned at all.
pub fn connections_for_hint<'a>(tenant: &'a Tenant, email: &str) -> Option<&'a [ConnectionId]> {
    let domain = email_domain(email)?;
    tenant
        .domains
        .contains(&domain)
        .then(|| tenant.domain_connections.get(&domain))
        .flatten()
        .map(Vec::as_slice)
}

/// Whether `email` is written the one way apps compare it: exactly one `@`
/// and a local part (an address apps could split differently,
/// `a@evil.test@acme.com`, is never vouched for), no whitespace or control
/// character anywhere (`jo@acme.com\u{a0}`, which an IdP that keeps
/// addresses unique byte for byte lets a second person hold, reads as
/// `jo@acme.com` to an app that trims), and no trailing dot on the domain
/// (`jo@acme.com.`, the same address to DNS). Only the domain's case is
/// left to [`email_domain`]'s normalization.
fn plain_address(email: &str) -> bool {
    let split = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.contains('@') && !domain.ends_with('.'));
    split && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `identity`, signed in through `connection`, with `email_verified` true
/// only when the connector said so *and* the tenant vouches for the
/// address ([`vouch_for`]); otherwise false, the reason logged. Every
/// protocol passes through here before provisioning.
pub fn vouch_email(tenant: &Tenant, connection: &ConnectionId, identity: Identity) -> Identity {
    vouch_email_why(tenant, connection, identity).0
}

/// [`vouch_email`], with why the IdP's word was not passed on when it said
/// the address is verified (`None` when it was, or said nothing).
pub fn vouch_email_why(
    tenant: &Tenant,
    connection: &ConnectionId,
    mut identity: Identity,
) -> (Identity, Option<Unvouched>) {
    let asserted = identity.email_verified == Some(true);
    let verdict = match identity.email.as_deref() {
        Some(e) => vouch_for(tenant, connection, e),
        None => Err(Unvouched::NotTheTenants),
    };
    let withheld = verdict.err().filter(|_| asserted);
    if let Some(why) = withheld {
        tracing::info!(reason = why.reason(), tenant = %tenant.id, connection = %connection, "{}", why.explain());
    }
    identity.email_verified = Some(asserted && withheld.is_none());
    (identity, withheld)
}

/// The store-backed registry of tenants and connections.
#[derive(Clone)]
pub struct TenantRegistry {
    store: SharedStore,
    clock: SharedClock,
    /// Certificate expiry dates for `/metrics`, forgotten on every change.
    expiries: expiry::ExpirySnapshot,
    /// Decoded configuration records, re-validated by fingerprint on every use.
    kept: snapshot::Kept,
}

pub(crate) fn tenant_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "tenant")
}
/// The lease a deletion of the tenant holds while it runs
/// ([`TenantRegistry::delete`]): a random token, in the record's tag so a
/// creation checks it in the step that writes the record.
fn deletion_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "deleting")
}
/// The longest a deletion's lease is held: far more than the deletion's
/// store steps take (each bounded by the store's deadline), and short
/// enough that a replica that died mid-deletion blocks the id only briefly.
const DELETION_LEASE: std::time::Duration = std::time::Duration::from_secs(300);
pub(crate) fn connections_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "connections")
}
pub(crate) fn connection_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("connection:{c}"))
}
pub(crate) fn connection_incarnation_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("incarnation:{c}"))
}
pub(crate) fn domain_key(domain: &str) -> Key {
    Key::global("domains", domain)
}
pub(crate) fn acs_alias_key(path: &str) -> Key {
    Key::global("acs-alias", path)
}

/// The path of a connection's migrated ACS URL (served as an alias), if it has one.
pub(crate) fn acs_alias_path(connection: &Connection) -> Option<String> {
    let crate::upstream::ConnectionKind::Saml(cfg) = &connection.kind else {
        return None;
    };
    let url = url::Url::parse(cfg.acs_url.as_deref()?).ok()?;
    Some(url.path().to_owned())
}

fn alias_value(t: &TenantId, c: &ConnectionId) -> String {
    format!("{t}/{c}")
}

pub(crate) fn index_key() -> Key {
    Key::global("tenants", "index")
}

/// A tenant record read from the store while serving the current request
/// (by the edge, for the tenant's own rate limits), handed down in the
/// request's extensions so the request reads its tenant once. Only ever
/// used by the request that read it, and only for the tenant it names.
#[derive(Debug, Clone)]
pub struct FreshTenant(pub Arc<Tenant>);

impl FreshTenant {
    /// The record, if it is the tenant `id`'s.
    pub fn for_id(fresh: Option<&FreshTenant>, id: &TenantId) -> Option<Arc<Tenant>> {
        fresh.filter(|f| f.0.id == *id).map(|f| f.0.clone())
    }
}

impl TenantRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            expiries: expiry::ExpirySnapshot::default(),
            kept: snapshot::Kept::default(),
        }
    }

    /// The same registry keeping at most `count` decoded connection records
    /// (`[upstream] cached_connections`; the default keeps 100,000).
    pub fn keeping_connections(mut self, count: usize) -> Self {
        self.kept = snapshot::Kept::with_connections(count);
        self
    }

    /// The store the registry reads and writes.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Creates a tenant. Domains are reserved first; if any is taken, the
    /// ones already reserved are released and nothing is left behind.
    pub async fn create(&self, id: TenantId, name: String, domains: Vec<String>) -> Result<Tenant, RegistryError> {
        let tenant = Tenant {
            id: id.clone(),
            name,
            domains,
            domain_connections: BTreeMap::new(),
            created_at: self.clock.now(),
            incarnation: new_incarnation(),
            settings: TenantSettings::default(),
        };
        // A new tenant is no tenant file's until the file sync marks it so
        // (after this): written with the record in one step, so a file sync
        // that listed the id from a marker an earlier tenant left (its
        // removal failed, or the deletion predates deletions removing it)
        // and reads this record finds it marked as no file's, never takes
        // it over nor purges it.
        // Nor is it made while a deletion of the id runs: the deletion's
        // later steps (domains, the tenant list) would hit the new tenant.
        let record = serde_json::to_vec(&tenant).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (key, owner, lease) = (tenant_key(&id), files::owner_key(&id), deletion_key(&id));
        let created = self
            .store
            .write_many(&[
                Write::RequireAbsent { key: &key },
                Write::RequireAbsent { key: &lease },
                Write::Put {
                    key: &key,
                    value: &record,
                    ttl: None,
                },
                Write::Put {
                    key: &owner,
                    value: files::NO_FILE,
                    ttl: None,
                },
            ])
            .await?;
        if !created {
            if self.store.exists(&lease).await? {
                tracing::info!(reason = "tenant.deletion_in_progress", tenant = %id, "not created: a deletion of the id is under way");
                return Err(RegistryError::DeletionInProgress(format!("tenant {id}")));
            }
            return Err(RegistryError::Exists(format!("tenant {id}")));
        }
        // The list of the files' tenants forgets the id too (ownership is
        // the marker above; this keeps the list short).
        if let Err(e) = self.store.set_remove(&files::origin_key(), id.as_str()).await {
            self.release(&id, &[]).await;
            return Err(e.into());
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
        Ok(self.incarnation_with_tenant(t, c).await?.1)
    }

    /// [`Self::incarnation`], with the tenant's record it read (when the
    /// tenant exists), in the same wait.
    pub async fn incarnation_with_tenant(
        &self,
        t: &TenantId,
        c: &ConnectionId,
    ) -> Result<(Option<Arc<Tenant>>, Liveness), RegistryError> {
        // Independent reads, sent together (one round trip on Redis).
        let (tenant, connection) = tokio::try_join!(self.get(t), self.connection_incarnation(t, c))?;
        let Some(tenant) = tenant else {
            return Ok((None, Liveness::TenantGone));
        };
        let Some(connection) = connection else {
            return Ok((Some(tenant), Liveness::ConnectionGone));
        };
        let live = Liveness::Live(Incarnation {
            tenant: tenant.incarnation.clone(),
            connection,
        });
        Ok((Some(tenant), live))
    }

    /// Like [`Self::incarnation`], for a tenant record the caller has just
    /// read from the store in this request (never one kept in memory): only
    /// the connection's incarnation is read.
    pub async fn incarnation_of(&self, tenant: &Tenant, c: &ConnectionId) -> Result<Liveness, RegistryError> {
        let Some(connection) = self.connection_incarnation(&tenant.id, c).await? else {
            return Ok(Liveness::ConnectionGone);
        };
        Ok(Liveness::Live(Incarnation {
            tenant: tenant.incarnation.clone(),
            connection,
        }))
    }

    /// Like [`Self::incarnation_of`], for a connection record the caller
    /// has also read, or re-validated by its fingerprint, from the store in
    /// this request (never one kept in memory without that): the record is
    /// known to exist, so only the connection's incarnation is read. A
    /// connection deleted since that read gets the empty incarnation: the
    /// check on use refuses it as gone, and a re-created one has a fresh
    /// incarnation that the empty one does not match.
    pub async fn incarnation_of_record(
        &self,
        tenant: &Tenant,
        connection: &Connection,
    ) -> Result<Incarnation, RegistryError> {
        let raw = self
            .store
            .get(&connection_incarnation_key(&tenant.id, &connection.id))
            .await?;
        Ok(Incarnation {
            tenant: tenant.incarnation.clone(),
            connection: raw
                .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                .unwrap_or_default(),
        })
    }

    /// The current incarnation of the connection `c` of `t`, `None` if the
    /// connection does not exist.
    pub async fn connection_incarnation(
        &self,
        t: &TenantId,
        c: &ConnectionId,
    ) -> Result<Option<String>, RegistryError> {
        let (record_key, incarnation_key) = (connection_key(t, c), connection_incarnation_key(t, c));
        // Only whether the record is there: it is not transferred.
        let (record, incarnation) = tokio::try_join!(self.store.exists(&record_key), self.store.get(&incarnation_key))?;
        if !record {
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

    /// [`vouch_email_why`] for the stored tenant `id`. Fails closed: when
    /// the tenant cannot be read, the email is not vouched for.
    pub async fn vouch_email(
        &self,
        id: &TenantId,
        connection: &ConnectionId,
        mut identity: Identity,
    ) -> (Identity, Option<Unvouched>) {
        match self.get(id).await {
            Ok(Some(tenant)) => vouch_email_why(&tenant, connection, identity),
            outcome => {
                if let Err(e) = outcome {
                    tracing::warn!(reason = "login.email_not_vouched", tenant = %id, error = %e, "tenant unreadable");
                }
                let asserted = identity.email_verified == Some(true);
                identity.email_verified = Some(false);
                (identity, asserted.then_some(Unvouched::NotTheTenants))
            }
        }
    }

    /// Reads a tenant, as the store holds it now: a decoded copy is kept
    /// and re-validated by the fingerprint of the stored bytes in this
    /// read, so an unchanged record is not transferred again.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, RegistryError> {
        Ok(self.tenant_record(id).await?)
    }

    /// All tenant ids, sorted.
    pub async fn list(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self.store.set_members(&index_key()).await?)
    }

    /// A page of at most `limit` tenants after the id `after`, ordered by
    /// id, that match `filter`. Order by id is stable across pages: a
    /// tenant is listed once, whatever is created or deleted meanwhile
    /// (those may or may not appear).
    pub async fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &TenantFilter,
    ) -> Result<TenantPage, RegistryError> {
        let limit = limit.clamp(1, MAX_PAGE);
        if let Some(domain) = &filter.domain {
            // At most one tenant owns a domain: look it up directly.
            let found = self.by_domain(domain).await?;
            let tenants = found
                .filter(|t| after.is_none_or(|a| t.id.as_str() > a) && filter.matches(t))
                .map(Arc::unwrap_or_clone)
                .into_iter()
                .collect();
            return Ok(TenantPage {
                tenants,
                next_after: None,
            });
        }
        let mut ids = self.list().await?;
        ids.sort();
        let mut tenants = Vec::new();
        let mut last = None;
        let mut more = false;
        for id in ids.iter().filter(|id| after.is_none_or(|a| id.as_str() > a)) {
            if tenants.len() == limit {
                more = true;
                break;
            }
            last = Some(id.clone());
            let Ok(tid) = TenantId::parse(id) else { continue };
            if let Some(t) = self.get(&tid).await? {
                if filter.matches(&t) {
                    tenants.push(Arc::unwrap_or_clone(t));
                }
            }
        }
        Ok(TenantPage {
            tenants,
            next_after: if more { last } else { None },
        })
    }

    /// Replaces the tenant `old` by `new` (same id): the record, and the
    /// domains it owns: new ones are reserved first (a taken one refuses
    /// the whole change and releases what was reserved), removed ones are
    /// released after the record is written.
    ///
    /// Compare-and-set: the record is written only if the stored one is
    /// still `old`; otherwise nothing changes and the answer is
    /// [`RegistryError::Changed`] (a concurrent update won).
    pub async fn update(&self, old: &Tenant, new: &Tenant) -> Result<(), RegistryError> {
        let id = &new.id;
        let key = tenant_key(id);
        let current = self.current(&key, old, || format!("tenant {id}")).await?;
        let encoded = encode_record(new)?;
        let mut reserved = Vec::new();
        for domain in new.domains.iter().filter(|d| !old.domains.contains(d)) {
            match self
                .store
                .put_if_absent(&domain_key(domain), id.as_str().as_bytes(), None)
                .await
            {
                Ok(true) => reserved.push(domain.clone()),
                outcome => {
                    self.release_domains(id, &reserved).await;
                    return Err(match outcome {
                        Err(e) => e.into(),
                        _ => RegistryError::DomainTaken { domain: domain.clone() },
                    });
                }
            }
        }
        match self.store.compare_and_put(&key, &current, &encoded, None).await {
            Ok(true) => {}
            Ok(false) => {
                self.release_domains(id, &reserved).await;
                tracing::info!(reason = "tenant.update_conflict", tenant = %id, "the tenant changed meanwhile");
                return Err(RegistryError::Changed(format!("tenant {id}")));
            }
            Err(e) => {
                self.release_domains(id, &reserved).await;
                return Err(e.into());
            }
        }
        for d in old.domains.iter().filter(|d| !new.domains.contains(d)) {
            // Only release a domain that still points at this tenant.
            if self.store.get(&domain_key(d)).await?.as_deref() == Some(id.as_str().as_bytes()) {
                self.store.delete(&domain_key(d)).await?;
            }
        }
        Ok(())
    }

    /// The bytes stored at `key` if they still hold the record `expected`:
    /// [`RegistryError::NotFound`] when gone, [`RegistryError::Changed`]
    /// when another writer replaced it since the caller read it.
    async fn current<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &Key,
        expected: &T,
        what: impl Fn() -> String,
    ) -> Result<Vec<u8>, RegistryError> {
        let Some(raw) = self.store.get(key).await? else {
            return Err(RegistryError::NotFound(what()));
        };
        if !holds(&raw, expected)? {
            return Err(RegistryError::Changed(what()));
        }
        Ok(raw)
    }

    /// Applies `change` to the stored tenant `id` and writes it back with a
    /// compare-and-set, reading again (up to a few times) when a concurrent
    /// writer won: for small changes of one field that are right whatever
    /// else changed meanwhile (a verified domain, a setting). `change`
    /// answers whether it changed anything; when not, nothing is written.
    /// Answers the tenant as written (or as found).
    pub async fn modify_tenant(
        &self,
        id: &TenantId,
        mut change: impl FnMut(&mut Tenant) -> bool + Send,
    ) -> Result<Tenant, RegistryError> {
        let key = tenant_key(id);
        for _ in 0..MODIFY_ATTEMPTS {
            let Some(raw) = self.store.get(&key).await? else {
                return Err(RegistryError::NotFound(format!("tenant {id}")));
            };
            let mut tenant: Tenant = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !change(&mut tenant) {
                return Ok(tenant);
            }
            if self
                .store
                .compare_and_put(&key, &raw, &encode_record(&tenant)?, None)
                .await?
            {
                return Ok(tenant);
            }
        }
        tracing::warn!(reason = "tenant.update_conflict", tenant = %id, "the tenant kept changing meanwhile");
        Err(RegistryError::Changed(format!("tenant {id}")))
    }

    /// Releases domains reserved for a change that did not happen; a
    /// failure is logged (the caller reports the original error).
    async fn release_domains(&self, id: &TenantId, domains: &[String]) {
        for d in domains {
            if let Err(e) = self.store.delete(&domain_key(d)).await {
                tracing::error!(reason = "tenant.rollback_failed", tenant = %id, domain = %d, error = %e, "could not release a domain");
            }
        }
    }

    /// The tenant that owns `domain`, if any: the one its reservation
    /// names, and only while that tenant's record lists it. A reservation
    /// whose tenant's record does not (one left by a verification that
    /// raced the tenant's deletion, kept by a tenant created again under
    /// the id, or one mid-way through a verification or removal) routes
    /// nobody (`domain.unlisted_reservation`).
    pub async fn by_domain(&self, domain: &str) -> Result<Option<Arc<Tenant>>, RegistryError> {
        let Some(raw) = self.store.get(&domain_key(domain)).await? else {
            return Ok(None);
        };
        let Ok(id) = TenantId::parse(&String::from_utf8_lossy(&raw)) else {
            return Ok(None);
        };
        Ok(self.get(&id).await?.filter(|t| {
            let listed = t.domains.iter().any(|d| d == domain);
            if !listed {
                tracing::warn!(reason = "domain.unlisted_reservation", tenant = %id, domain = %domain, "a domain reserved for a tenant whose record does not list it routes nobody");
            }
            listed
        }))
    }

    /// Deletes a tenant, its connections and its domains, and forgets that
    /// a tenant file made or declared them (`files::origin_key`,
    /// `files::owner_key`, `files::declared_key`).
    pub async fn delete(&self, id: &TenantId) -> Result<(), RegistryError> {
        self.delete_if(id, None).await
    }

    /// [`Self::delete`], only when the tenant of the id is still the
    /// incarnation `incarnation` (`NotFound` otherwise, nothing deleted): a
    /// tenant file removes only the tenant it made, never one created under
    /// its id since it looked.
    pub async fn delete_incarnation(&self, id: &TenantId, incarnation: &str) -> Result<(), RegistryError> {
        self.delete_if(id, Some(incarnation)).await
    }

    /// One deletion of a tenant at a time, across replicas: it first takes
    /// the tenant's lease (`deletion_key`, a random token, at most
    /// [`DELETION_LEASE`]), then reads the record, and gives the lease back
    /// at the end only if it still holds it. Without it, two deletions of
    /// one tenant (two replicas' file syncs, a doubled DELETE) could both
    /// read it, one finish, a tenant be created again under the id, and the
    /// other's later steps remove the new tenant's domains, list entry and
    /// record. A deletion that finds the lease taken does nothing
    /// ([`RegistryError::DeletionInProgress`]); a creation refuses while it
    /// is held.
    async fn delete_if(&self, id: &TenantId, incarnation: Option<&str>) -> Result<(), RegistryError> {
        self.expiries.invalidate();
        let lease = deletion_key(id);
        let token = crate::tokens::random_token(16);
        if !self
            .store
            .put_if_absent(&lease, token.as_bytes(), Some(DELETION_LEASE))
            .await?
        {
            tracing::info!(reason = "tenant.deletion_in_progress", tenant = %id, "not deleted: another deletion of the tenant is under way");
            return Err(RegistryError::DeletionInProgress(format!("tenant {id}")));
        }
        let out = self.delete_leased(id, incarnation).await;
        let released = self
            .store
            .write_many(&[
                Write::RequireValue {
                    key: &lease,
                    value: token.as_bytes(),
                },
                Write::Delete { key: &lease },
            ])
            .await;
        if let Err(e) = released {
            // It lapses by itself: the id waits at most the lease's life.
            tracing::error!(reason = "tenant.deletion_lease_left", tenant = %id, error = %e, "a tenant's deletion lease was not given back");
        }
        out
    }

    /// The deletion [`Self::delete_if`] runs under the tenant's lease.
    async fn delete_leased(&self, id: &TenantId, incarnation: Option<&str>) -> Result<(), RegistryError> {
        let Some(tenant) = self.get(id).await? else {
            return Err(RegistryError::NotFound(format!("tenant {id}")));
        };
        if incarnation.is_some_and(|i| i != tenant.incarnation) {
            return Err(RegistryError::NotFound(format!("tenant {id} (another incarnation)")));
        }
        for c in self.store.set_members(&connections_key(id)).await? {
            if let Ok(c) = ConnectionId::parse(&c) {
                self.store.delete(&files::declared_key(id, c.as_str())).await?;
                self.store.delete(&connection_incarnation_key(id, &c)).await?;
                if let Some(old) = self.connection(id, &c).await? {
                    self.release_acs_alias(&old).await?;
                }
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
        self.store.delete(&files::owner_key(id)).await?;
        self.store.delete(&tenant_key(id)).await?;
        // Whichever way the tenant went (admin API, tenant file, import
        // rollback), it stops being a tenant file's, so one created again
        // under its id is not taken for the file's. A failure is only
        // logged: the tenant is gone either way (the caller's purge must
        // still run), and the marker left is dropped by the next creation
        // under the id (`create`) or by the file sync, which finds no tenant.
        if let Err(e) = self.store.set_remove(&files::origin_key(), id.as_str()).await {
            tracing::error!(reason = "tenant.file_marker_left", tenant = %id, error = %e, "a deleted tenant is still marked as a tenant file's");
        }
        Ok(())
    }

    /// Reserves the ACS alias path of `connection` (if it has one). Fails
    /// when another connection serves that path.
    async fn reserve_acs_alias(&self, connection: &Connection) -> Result<(), RegistryError> {
        let Some(path) = acs_alias_path(connection) else {
            return Ok(());
        };
        let value = alias_value(&connection.tenant, &connection.id);
        let key = acs_alias_key(&path);
        if self.store.put_if_absent(&key, value.as_bytes(), None).await? {
            return Ok(());
        }
        if self.store.get(&key).await?.as_deref() == Some(value.as_bytes()) {
            return Ok(());
        }
        Err(RegistryError::AcsPathTaken { path })
    }

    /// Releases the ACS alias path of `connection`, if it still points at it.
    async fn release_acs_alias(&self, connection: &Connection) -> Result<(), RegistryError> {
        let Some(path) = acs_alias_path(connection) else {
            return Ok(());
        };
        let key = acs_alias_key(&path);
        let value = alias_value(&connection.tenant, &connection.id);
        if self.store.get(&key).await?.as_deref() == Some(value.as_bytes()) {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// The connection whose migrated ACS URL has this path, if any.
    pub async fn acs_alias(&self, path: &str) -> Result<Option<(TenantId, ConnectionId)>, RegistryError> {
        let Some(raw) = self.store.get(&acs_alias_key(path)).await? else {
            return Ok(None);
        };
        let raw = String::from_utf8_lossy(&raw);
        let Some((t, c)) = raw.split_once('/') else {
            return Ok(None);
        };
        match (TenantId::parse(t), ConnectionId::parse(c)) {
            (Ok(t), Ok(c)) => Ok(Some((t, c))),
            _ => Ok(None),
        }
    }

    /// Replaces a stored connection with its patched version (the admin
    /// API's PATCH), moving its ACS alias when that changed. Fails if the
    /// connection is gone.
    ///
    /// Compare-and-set: written only if the stored connection is still
    /// `old`; otherwise nothing changes and the answer is
    /// [`RegistryError::Changed`] (a concurrent PATCH, refresh or
    /// activation won), so no update is ever lost silently.
    ///
    /// When the upstream issuer changes and `users` is
    /// [`IssuerChange::NewUsers`], a fresh incarnation is written in the
    /// same atomic step as the record: the connection's users, and
    /// everything issued to them, end with the old IdP, and the new IdP's
    /// users are provisioned afresh. A refused write changes neither.
    /// Answers whether the users were renewed.
    pub async fn update_connection(
        &self,
        old: &Connection,
        new: &Connection,
        users: IssuerChange,
    ) -> Result<bool, RegistryError> {
        self.expiries.invalidate();
        let key = connection_key(&new.tenant, &new.id);
        let what = || format!("connection {}", new.id);
        let current = self.current(&key, old, what).await?;
        let encoded = encode_connection(new)?;
        let alias_moves = acs_alias_path(old) != acs_alias_path(new);
        let renew = users == IssuerChange::NewUsers && issuer_changes(old, new);
        self.reserve_acs_alias(new).await?;
        let written = if renew {
            self.put_renewed(new, &encoded, Some(&current)).await?
        } else {
            self.store.compare_and_put(&key, &current, &encoded, None).await?
        };
        if !written {
            // Give back the path reserved for this change, unless the
            // connection as it is now serves it.
            let now = self.connection(&new.tenant, &new.id).await?;
            if alias_moves && now.as_ref().and_then(acs_alias_path) != acs_alias_path(new) {
                self.release_acs_alias(new).await?;
            }
            tracing::info!(reason = "connection.update_conflict", tenant = %new.tenant, connection = %new.id, "the connection changed meanwhile");
            return Err(RegistryError::Changed(what()));
        }
        if alias_moves {
            self.release_acs_alias(old).await?;
        }
        Ok(renew)
    }

    /// Writes a connection record and a fresh incarnation in one atomic
    /// step, only while the record is still `expected` when one is given:
    /// the connection's users start afresh. Answers whether it was written.
    async fn put_renewed(
        &self,
        connection: &Connection,
        encoded: &[u8],
        expected: Option<&[u8]>,
    ) -> Result<bool, RegistryError> {
        let key = connection_key(&connection.tenant, &connection.id);
        let incarnation_key = connection_incarnation_key(&connection.tenant, &connection.id);
        let incarnation = new_incarnation();
        let mut writes = Vec::with_capacity(3);
        if let Some(value) = expected {
            writes.push(Write::RequireValue { key: &key, value });
        }
        writes.push(Write::Put {
            key: &key,
            value: encoded,
            ttl: None,
        });
        writes.push(Write::Put {
            key: &incarnation_key,
            value: incarnation.as_bytes(),
            ttl: None,
        });
        let written = self.store.write_many(&writes).await?;
        if written {
            tracing::info!(reason = "connection.users_renewed", tenant = %connection.tenant, connection = %connection.id, "the connection's upstream issuer changed: its users start afresh");
        }
        Ok(written)
    }

    /// Whether tenant `t` may be given one more connection by its own
    /// admin: fewer than `max` (`[quotas] connections_per_tenant`) now. Read
    /// apart from the creation, so creations at the same moment may each
    /// pass it once.
    pub async fn room_for_connection(&self, t: &TenantId, max: usize) -> Result<bool, RegistryError> {
        Ok(self.store.set_members(&connections_key(t)).await?.len() < max)
    }

    /// Stores a new connection. Fails if the id is taken within the tenant.
    pub async fn add_connection(&self, connection: &Connection) -> Result<(), RegistryError> {
        self.expiries.invalidate();
        let key = connection_key(&connection.tenant, &connection.id);
        if self.connection(&connection.tenant, &connection.id).await?.is_some() {
            return Err(RegistryError::Exists(format!("connection {}", connection.id)));
        }
        self.reserve_acs_alias(connection).await?;
        if !self
            .store
            .put_if_absent(&key, &encode_connection(connection)?, None)
            .await?
        {
            self.release_acs_alias(connection).await?;
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

    /// Replaces a stored connection (declarative files use this). A
    /// replaced connection keeps its incarnation, unless its upstream
    /// issuer changes and `users` is [`IssuerChange::NewUsers`]: then the
    /// record and a fresh incarnation are written in one atomic step, as
    /// [`Self::update_connection`] does. Answers whether the users were
    /// renewed.
    pub async fn put_connection(&self, connection: &Connection, users: IssuerChange) -> Result<bool, RegistryError> {
        self.expiries.invalidate();
        let key = connection_key(&connection.tenant, &connection.id);
        let incarnation_key = connection_incarnation_key(&connection.tenant, &connection.id);
        let old = self.connection(&connection.tenant, &connection.id).await?;
        let renew = users == IssuerChange::NewUsers && old.as_ref().is_some_and(|old| issuer_changes(old, connection));
        self.reserve_acs_alias(connection).await?;
        if let Some(old) = old.filter(|o| acs_alias_path(o) != acs_alias_path(connection)) {
            self.release_acs_alias(&old).await?;
        }
        let encoded = encode_connection(connection)?;
        if renew {
            self.put_renewed(connection, &encoded, None).await?;
        } else {
            // A replaced connection keeps its incarnation; a new one gets one.
            self.store
                .put_if_absent(&incarnation_key, new_incarnation().as_bytes(), None)
                .await?;
            self.store.put(&key, &encoded, None).await?;
        }
        self.store
            .set_add(&connections_key(&connection.tenant), connection.id.as_str(), None)
            .await?;
        Ok(renew)
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

    /// Deletes a connection, and forgets that a tenant file declared it
    /// (`files::declared_key`): a connection created again under its id is
    /// not the file's, to skip or to remove.
    pub async fn delete_connection(&self, t: &TenantId, c: &ConnectionId) -> Result<(), RegistryError> {
        self.expiries.invalidate();
        self.store.delete(&files::declared_key(t, c.as_str())).await?;
        // The incarnation goes first: should the rest fail, what is left is
        // a connection nobody's users match, never an inherited one.
        self.store.delete(&connection_incarnation_key(t, c)).await?;
        if let Some(old) = self.connection(t, c).await? {
            self.release_acs_alias(&old).await?;
        }
        let existed = self.store.delete(&connection_key(t, c)).await?;
        self.kept.forget_connection(t, c);
        if !existed {
            return Err(RegistryError::NotFound(format!("connection {c}")));
        }
        self.store.set_remove(&connections_key(t), c.as_str()).await?;
        Ok(())
    }
}

/// What a change of a connection's upstream issuer (the OIDC `issuer`, the
/// SAML IdP's entity id) does to its users. Identity links name the
/// connection, not the issuer, so without a fresh incarnation a user of
/// the new IdP whose subject equals an old user's would sign in as that
/// user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerChange {
    /// A fresh connection incarnation: the old IdP's users, their sessions
    /// and tokens end, and the new IdP's users are provisioned afresh (new
    /// `sub`s). What every change does unless told otherwise.
    NewUsers,
    /// The users are kept: for moving a tenant between IdPs that assert the
    /// same subjects for the same people (for example email NameIDs), on
    /// the admin's word (`keep_users`).
    KeepUsers,
}

/// Whether `new` names another upstream issuer than `old`.
fn issuer_changes(old: &Connection, new: &Connection) -> bool {
    old.kind.upstream_issuer() != new.kind.upstream_issuer()
}

/// A fresh random incarnation id: 15 random bytes, 20 characters.
/// Incarnations minted before local accounts were stamped with theirs were
/// 12 bytes, 16 characters ([`mints_stamped_accounts`]).
fn new_incarnation() -> String {
    crate::tokens::random_token(15)
}

/// Whether `incarnation` was minted by a version that stamps every local
/// account with its tenant's and connection's incarnations (one longer
/// than the 16 characters of those before). A tenant or connection of
/// such an incarnation never had an unstamped account: one found under its
/// ids was left by a predecessor deleted before it.
pub fn mints_stamped_accounts(incarnation: &str) -> bool {
    incarnation.len() > 16
}

#[cfg(test)]
mod incarnation_tests {
    use super::*;

    #[test]
    fn incarnations_minted_now_are_told_from_those_before_account_stamps() {
        let now = new_incarnation();
        assert_eq!(now.len(), 20);
        assert!(mints_stamped_accounts(&now));
        // Those before: 12 random bytes, and the empty one of tenants
        // stored before incarnations existed.
        assert!(!mints_stamped_accounts(&crate::tokens::random_token(12)));
        assert!(!mints_stamped_accounts(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A memory store where another writer renames the tenant right before
    /// the first compare-and-set: the race `modify_tenant` must survive.
    struct Interfering {
        inner: crate::store::memory::MemoryStore,
        interfered: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl crate::store::StoreLayer for Interfering {
        // `exists`, `fingerprint` and the chained and guarded rate limits are
        // made of this store's own calls (`Store`'s default bodies).
        const FORWARD_DEFAULTED: bool = false;

        fn inner(&self) -> &dyn Store {
            &self.inner
        }

        async fn compare_and_put(
            &self,
            key: &Key,
            expected: &[u8],
            value: &[u8],
            ttl: Option<std::time::Duration>,
        ) -> Result<bool, StoreError> {
            if !self.interfered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let mut t: Tenant = self.inner.get_json(key).await?.unwrap();
                t.name = "Renamed meanwhile".into();
                self.inner.put_json(key, &t, None).await?;
            }
            self.inner.compare_and_put(key, expected, value, ttl).await
        }
    }

    #[tokio::test]
    async fn a_setting_change_that_loses_a_race_reads_again_and_keeps_the_other_change() {
        let clock: SharedClock = std::sync::Arc::new(crate::clock::ManualClock::at(DateTime::<Utc>::UNIX_EPOCH));
        let store = std::sync::Arc::new(Interfering {
            inner: crate::store::memory::MemoryStore::new(clock.clone()),
            interfered: std::sync::atomic::AtomicBool::new(false),
        });
        let registry = TenantRegistry::new(store.clone(), clock);
        let id = TenantId::parse("acme").unwrap();
        registry.create(id.clone(), "Acme".into(), Vec::new()).await.unwrap();
        let t = registry.set_require_mfa(&id, true).await.unwrap();
        assert!(store.interfered.load(std::sync::atomic::Ordering::SeqCst));
        let stored = registry.get(&id).await.unwrap().unwrap();
        assert_eq!(stored.name, "Renamed meanwhile");
        assert!(stored.settings.require_mfa);
        assert_eq!(t.name, stored.name);
    }

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
            id: TenantId::parse("acme").unwrap(),
            name: "Acme".into(),
            domains: vec!["acme.com".into(), "acme.io".into()],
            domain_connections: BTreeMap::new(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            incarnation: String::new(),
            settings: TenantSettings::default(),
        }
    }

    fn okta() -> ConnectionId {
        ConnectionId::parse("okta").unwrap()
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
        let v = |e, ev| vouch_email(&t, &okta(), asserted(e, ev)).email_verified;
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

    /// An address an app would trim or read as another (whitespace,
    /// control characters, a trailing dot) is not vouched for, though its
    /// domain is the tenant's: an IdP keeping addresses unique byte for
    /// byte would let a second person hold `jo@acme.com\u{a0}`.
    #[test]
    fn an_address_not_written_plainly_is_not_vouched_for_in_the_tenants_domain() {
        let t = acme();
        let v = |e: &str| vouch_email(&t, &okta(), asserted(Some(e), Some(true))).email_verified;
        for e in [
            "jo@acme.com\u{a0}",
            "\u{3000}jo@acme.com",
            " jo@acme.com",
            "jo@acme.com ",
            "jo@acme.com\n",
            "jo\u{0}@acme.com",
            "jo @acme.com",
            "jo@acme.com.",
            "jo@ACME.com.",
        ] {
            assert_eq!(v(e), Some(false), "{e:?}");
        }
        assert_eq!(v("jo@acme.com"), Some(true));
        assert_eq!(v("Jo@Acme.Com"), Some(true));
    }

    /// A domain assigned to some of the tenant's connections is vouched for
    /// by those only: a partner's IdP the tenant also signs people in with
    /// cannot vouch for the tenant's own addresses, while a domain left
    /// unassigned stays every connection's.
    #[test]
    fn an_assigned_domain_is_vouched_for_only_by_its_connections() {
        let mut t = acme();
        let partner = ConnectionId::parse("partner").unwrap();
        t.domain_connections.insert("acme.com".into(), vec![okta()]);
        assert_eq!(vouch_for(&t, &okta(), "jo@acme.com"), Ok(()));
        assert_eq!(vouch_for(&t, &partner, "jo@acme.com"), Err(Unvouched::OtherConnection));
        assert_eq!(vouch_for(&t, &partner, "Jo@ACME.com"), Err(Unvouched::OtherConnection));
        assert_eq!(vouch_for(&t, &partner, "jo@acme.io"), Ok(()), "acme.io is unassigned");
        assert_eq!(vouch_for(&t, &okta(), "jo@other.test"), Err(Unvouched::NotTheTenants));
        assert_eq!(vouch_for(&t, &okta(), "jo@acme.com."), Err(Unvouched::NotPlain));
        assert_eq!(vouch_for(&t, &okta(), "jo @acme.com"), Err(Unvouched::NotPlain));
        let v = |c: &ConnectionId| vouch_email(&t, c, asserted(Some("jo@acme.com"), Some(true))).email_verified;
        assert_eq!(v(&okta()), Some(true));
        assert_eq!(v(&partner), Some(false));
        assert_eq!(Unvouched::OtherConnection.reason(), "login.email_other_connection");
    }

    /// A hint goes to the connections its domain is assigned to, and only
    /// for a domain that is the tenant's.
    #[test]
    fn a_hint_goes_to_the_connections_its_domain_is_assigned_to() {
        let mut t = acme();
        t.domain_connections.insert("acme.com".into(), vec![okta()]);
        t.domain_connections.insert("gone.test".into(), vec![okta()]);
        assert_eq!(connections_for_hint(&t, "Jo@Acme.com"), Some(&[okta()][..]));
        assert_eq!(connections_for_hint(&t, "jo@acme.io"), None);
        assert_eq!(
            connections_for_hint(&t, "jo@gone.test"),
            None,
            "not the tenant's domain"
        );
        assert_eq!(connections_for_hint(&t, "no-at-sign"), None);
    }
}
