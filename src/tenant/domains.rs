//! Email domains a tenant really owns.
//!
//! A domain routes users (home-realm discovery) and lets the tenant's IdP
//! vouch for `email_verified` only once it is *verified*: by a DNS TXT record
//! carrying the token Portcullis handed out, or by the platform admin
//! (declared in a create body or tenant file, or an explicit override).
//!
//! Verified domains are the tenant record's `domains` plus the global
//! reservation `g:domains:<domain>` (so routing and [`super::vouch_email`]
//! never see a claim in progress). A claim in progress lives under the
//! tenant's config tag as `domain:<domain>` with its token, and in the set
//! `domains` of that tag, so it can be listed.

use super::{domain_key, RegistryError, Tenant, TenantRegistry};
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreJson, Write};
use chrono::{DateTime, Utc};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The label under which the verification TXT record is published.
pub const CHALLENGE_LABEL: &str = "_portcullis-challenge";

/// Well-known free-mail providers: nobody owns these on behalf of a company,
/// so no tenant may claim them (a tenant routing `gmail.com` would capture
/// every Gmail user's sign-in, and vouch for their addresses).
/// `*` stands for any top-level domain (`gmx.*`, `yandex.*`).
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "hotmail.co.uk",
    "hotmail.fr",
    "live.com",
    "msn.com",
    "yahoo.com",
    "yahoo.co.uk",
    "yahoo.fr",
    "ymail.com",
    "rocketmail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
    "tutanota.com",
    "tuta.io",
    "zoho.com",
    "zohomail.com",
    "fastmail.com",
    "hey.com",
    "mail.com",
    "email.com",
    "inbox.com",
    "gmx.*",
    "web.de",
    "mail.ru",
    "bk.ru",
    "inbox.ru",
    "list.ru",
    "rambler.ru",
    "yandex.*",
    "ya.ru",
    "qq.com",
    "163.com",
    "126.com",
    "yeah.net",
    "sina.com",
    "naver.com",
    "daum.net",
    "rediffmail.com",
    "libero.it",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "t-online.de",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
    "interia.pl",
];

/// Why a domain cannot be claimed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unclaimable {
    /// Not a syntactically valid domain name.
    #[error("{0:?} is not a domain name")]
    Syntax(String),
    /// A public suffix (`com`, `co.uk`, `github.io`): owned by nobody.
    #[error("{0} is a public suffix, which no organization owns")]
    PublicSuffix(String),
    /// A free-mail provider's domain.
    #[error("{0} is a free email provider's domain, which no organization owns")]
    FreeMail(String),
}

/// Normalizes `raw` and checks that a tenant may claim it: a valid name,
/// not a public suffix, not a free-mail provider (nor a subdomain of one).
pub fn claimable(raw: &str) -> Result<String, Unclaimable> {
    let d = super::parse_domain(raw).ok_or_else(|| Unclaimable::Syntax(raw.to_owned()))?;
    if is_free_mail(&d) {
        return Err(Unclaimable::FreeMail(d));
    }
    // `psl` has no registrable domain for a public suffix itself (`co.uk`).
    if psl::Psl::domain(&psl::List, d.as_bytes()).is_none() {
        return Err(Unclaimable::PublicSuffix(d));
    }
    Ok(d)
}

fn is_free_mail(d: &str) -> bool {
    FREE_MAIL.iter().any(|entry| match entry.strip_suffix(".*") {
        // `gmx.*`: `gmx.` followed by any public suffix (gmx.de, gmx.co.uk), and subdomains.
        Some(stem) => {
            let labels: Vec<&str> = d.split('.').collect();
            labels.iter().enumerate().any(|(i, l)| {
                let rest = labels.iter().skip(i + 1).copied().collect::<Vec<_>>().join(".");
                *l == stem && !rest.is_empty() && psl::Psl::domain(&psl::List, rest.as_bytes()).is_none()
            })
        }
        None => d == *entry || d.ends_with(&format!(".{entry}")),
    })
}

/// Who verified a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifiedBy {
    /// The TXT record was found with the right token.
    Dns,
    /// The platform admin declared it or overrode the check.
    PlatformAdmin,
}

/// A domain claim of a tenant, verified or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainClaim {
    /// The domain (lower case).
    pub domain: String,
    /// The token expected in the TXT record.
    pub token: String,
    /// When it was claimed.
    pub created_at: DateTime<Utc>,
    /// Who verified it, `None` while pending.
    #[serde(default)]
    pub verified_by: Option<VerifiedBy>,
    /// When it was verified.
    #[serde(default)]
    pub verified_at: Option<DateTime<Utc>>,
}

impl DomainClaim {
    /// The name of the TXT record to publish.
    pub fn record_name(&self) -> String {
        format!("{CHALLENGE_LABEL}.{}", self.domain)
    }
}

/// A domain of a tenant as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainState {
    /// The domain.
    pub domain: String,
    /// Whether it routes users and vouches for emails.
    pub verified: bool,
    /// Who verified it.
    pub verified_by: Option<VerifiedBy>,
    /// The pending claim's TXT record, while unverified.
    pub claim: Option<DomainClaim>,
    /// The connections its users sign in with, when assigned
    /// ([`Tenant::domain_connections`]); empty: any of the tenant's.
    pub connections: Vec<ConnectionId>,
}

pub(crate) fn claim_key(t: &TenantId, domain: &str) -> Key {
    Key::tenant(t.as_str(), "config", format!("domain:{domain}"))
}
pub(crate) fn claims_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "domains")
}

/// What a DNS check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsOutcome {
    /// A TXT record with the expected value.
    Match,
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no TXT record.
    NoRecord,
    /// TXT records exist, none with the expected value (what was found).
    WrongValue(Vec<String>),
    /// The resolver did not answer in time.
    Timeout,
    /// Another resolver failure (log-only detail).
    Failed(String),
}

impl DnsOutcome {
    /// The stable reason code of a failed check.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Match => "domain.verified",
            Self::NxDomain => "domain.nxdomain",
            Self::NoRecord => "domain.no_record",
            Self::WrongValue(_) => "domain.wrong_value",
            Self::Timeout => "domain.dns_timeout",
            Self::Failed(_) => "domain.dns_failed",
        }
    }
}

/// Looks up verification TXT records through a configured resolver.
#[derive(Clone)]
pub struct DomainVerifier {
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
}

impl DomainVerifier {
    /// A verifier asking `nameservers` (the system resolver when empty),
    /// waiting at most `timeout` per check.
    pub fn new(nameservers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { nameservers, timeout }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| e.to_string())?
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = self.timeout;
        opts.attempts = 1;
        // Every check asks the server again: a record just published must count.
        opts.cache_size = 0;
        builder.build().map_err(|e| e.to_string())
    }

    /// Looks up `name`'s TXT records and compares them with `expected`.
    pub async fn check(&self, name: &str, expected: &str) -> DnsOutcome {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => return DnsOutcome::Failed(e),
        };
        let fqdn = format!("{name}.");
        // The resolver has its own timeout; this bounds the whole check.
        let lookup = match tokio::time::timeout(self.timeout + Duration::from_secs(1), resolver.txt_lookup(fqdn)).await
        {
            Err(_) => return DnsOutcome::Timeout,
            Ok(Err(e)) if e.is_nx_domain() => return DnsOutcome::NxDomain,
            Ok(Err(e)) if e.is_no_records_found() => return DnsOutcome::NoRecord,
            Ok(Err(hickory_resolver::net::NetError::Timeout)) => return DnsOutcome::Timeout,
            Ok(Err(e)) => return DnsOutcome::Failed(e.to_string()),
            Ok(Ok(l)) => l,
        };
        let found: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // A TXT record's strings are one value split in chunks of 255.
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        if found.is_empty() {
            DnsOutcome::NoRecord
        } else if found.iter().any(|v| v == expected) {
            DnsOutcome::Match
        } else {
            DnsOutcome::WrongValue(found)
        }
    }
}

/// Why a domain operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The domain cannot be claimed by anyone.
    #[error(transparent)]
    Unclaimable(#[from] Unclaimable),
    /// Another tenant owns it (verified).
    #[error("the domain {0} already belongs to another tenant")]
    Taken(String),
    /// The tenant has no such domain.
    #[error("the tenant has no domain {0}")]
    Unknown(String),
    /// The domain is claimed but not verified yet.
    #[error("the domain {0} is not verified yet")]
    NotVerified(String),
    /// An assignment names a connection the tenant does not have (its index).
    #[error("the tenant has no connection {1}")]
    UnknownConnection(usize, ConnectionId),
    /// The tenant's assignments would hold more (domain, connection) pairs
    /// than [`super::MAX_DOMAIN_ASSIGNMENTS`].
    #[error("a tenant's domains are assigned to at most {0} connections in all")]
    TooManyConnections(usize),
    /// The DNS check failed.
    #[error("the DNS check failed")]
    Dns(DnsOutcome),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<crate::store::StoreError> for DomainError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Registry(e.into())
    }
}

impl TenantRegistry {
    /// Every domain of `tenant`: declared/verified ones and pending claims.
    pub async fn domain_states(&self, tenant: &Tenant) -> Result<Vec<DomainState>, RegistryError> {
        let mut out = Vec::new();
        for d in &tenant.domains {
            let claim: Option<DomainClaim> = self.store.get_json(&claim_key(&tenant.id, d)).await?;
            out.push(DomainState {
                domain: d.clone(),
                verified: true,
                // No claim record: declared by the platform admin (or stored
                // before verification existed, which is the same thing).
                verified_by: Some(claim.and_then(|c| c.verified_by).unwrap_or(VerifiedBy::PlatformAdmin)),
                claim: None,
                connections: tenant.domain_connections.get(d).cloned().unwrap_or_default(),
            });
        }
        for d in self.store.set_members(&claims_key(&tenant.id)).await? {
            if tenant.domains.contains(&d) {
                continue;
            }
            if let Some(claim) = self.store.get_json::<DomainClaim>(&claim_key(&tenant.id, &d)).await? {
                out.push(DomainState {
                    domain: d,
                    verified: false,
                    verified_by: None,
                    claim: Some(claim),
                    connections: Vec::new(),
                });
            }
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    /// Claims `raw` for tenant `t`: a pending claim with a fresh token, or
    /// the existing one (claiming twice does not change the token).
    /// Refused when unclaimable or verified by another tenant.
    pub async fn claim_domain(&self, t: &TenantId, raw: &str) -> Result<DomainState, DomainError> {
        let domain = claimable(raw)?;
        let tenant = self
            .get(t)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("tenant {t}")))?;
        if let Some(owner) = self.store.get(&domain_key(&domain)).await? {
            if owner.as_slice() != t.as_str().as_bytes() {
                return Err(DomainError::Taken(domain));
            }
        }
        if tenant.domains.contains(&domain) {
            return self
                .domain_states(&tenant)
                .await?
                .into_iter()
                .find(|s| s.domain == domain)
                .ok_or(DomainError::Unknown(domain));
        }
        let claim = DomainClaim {
            domain: domain.clone(),
            token: format!("portcullis-verification={}", crate::tokens::random_token(24)),
            created_at: self.clock.now(),
            verified_by: None,
            verified_at: None,
        };
        // A concurrent claim of the same domain by the same tenant keeps the first token.
        self.store
            .put_json_if_absent(&claim_key(t, &domain), &claim, None)
            .await?;
        self.store.set_add(&claims_key(t), &domain, None).await?;
        let claim = self
            .store
            .get_json::<DomainClaim>(&claim_key(t, &domain))
            .await?
            .ok_or_else(|| DomainError::Unknown(domain.clone()))?;
        Ok(DomainState {
            domain,
            verified: false,
            verified_by: None,
            claim: Some(claim),
            connections: Vec::new(),
        })
    }

    /// Verifies a pending claim: by DNS through `verifier`, or, when
    /// `verified_by` is [`VerifiedBy::PlatformAdmin`], without a check.
    /// On success the domain is reserved for the tenant and starts routing.
    pub async fn verify_domain(
        &self,
        t: &TenantId,
        raw: &str,
        verifier: &DomainVerifier,
        by: VerifiedBy,
    ) -> Result<DomainState, DomainError> {
        let domain = super::parse_domain(raw).ok_or_else(|| DomainError::Unknown(raw.to_owned()))?;
        let tenant = self
            .get(t)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("tenant {t}")))?;
        if tenant.domains.contains(&domain) {
            return Ok(DomainState {
                connections: tenant.domain_connections.get(&domain).cloned().unwrap_or_default(),
                domain,
                verified: true,
                verified_by: Some(by),
                claim: None,
            });
        }
        let Some(mut claim) = self.store.get_json::<DomainClaim>(&claim_key(t, &domain)).await? else {
            return Err(DomainError::Unknown(domain));
        };
        if by == VerifiedBy::Dns {
            let outcome = verifier.check(&claim.record_name(), &claim.token).await;
            if outcome != DnsOutcome::Match {
                tracing::info!(reason = outcome.reason(), tenant = %t, domain = %domain, "domain verification failed");
                if let DnsOutcome::Failed(detail) = &outcome {
                    tracing::warn!(reason = "domain.dns_failed", tenant = %t, error = %detail, "resolver failure");
                }
                return Err(DomainError::Dns(outcome));
            }
        }
        let reserved = self
            .store
            .put_if_absent(&domain_key(&domain), t.as_str().as_bytes(), None)
            .await?;
        if !reserved && self.store.get(&domain_key(&domain)).await?.as_deref() != Some(t.as_str().as_bytes()) {
            tracing::info!(reason = "domain.taken", tenant = %t, domain = %domain, "domain verified by another tenant first");
            return Err(DomainError::Taken(domain));
        }
        claim.verified_by = Some(by);
        claim.verified_at = Some(self.clock.now());
        let recorded = async {
            self.store.put_json(&claim_key(t, &domain), &claim, None).await?;
            // A compare-and-set that reads again when it loses: a concurrent
            // tenant update is never overwritten.
            self.modify_tenant(t, |tenant| {
                let add = !tenant.domains.contains(&domain);
                if add {
                    tenant.domains.push(domain.clone());
                }
                add
            })
            .await
        }
        .await;
        if let Err(e) = recorded {
            // Certainly not recorded (the tenant was deleted meanwhile, or
            // kept changing): the reservation this verification made must
            // not outlive it, or the domain would stay taken by nobody. A
            // store failure may have written the record all the same, so
            // the reservation stays: unlisted, it routes nobody
            // (`by_domain`), and a retry finds it the tenant's.
            let certain = matches!(e, RegistryError::NotFound(_) | RegistryError::Changed(_));
            if reserved && certain {
                let kept = (!matches!(e, RegistryError::NotFound(_))).then_some(&claim);
                self.release_reservation(t, &domain, kept).await;
            }
            return Err(e.into());
        }
        tracing::info!(reason = "domain.verified", tenant = %t, domain = %domain, verified_by = ?by, "domain verified");
        Ok(DomainState {
            domain,
            verified: true,
            verified_by: Some(by),
            claim: None,
            connections: Vec::new(),
        })
    }

    /// Releases the reservation of `domain` if it still names `t`, after a
    /// verification that could not record it. The claim it may have marked
    /// verified is put back pending (`pending`), or deleted when the tenant
    /// is gone (`None`). A failure is logged (the caller reports the
    /// original error).
    async fn release_reservation(&self, t: &TenantId, domain: &str, pending: Option<&DomainClaim>) {
        let key = domain_key(domain);
        let released = self
            .store
            .write_many(&[
                Write::RequireValue {
                    key: &key,
                    value: t.as_str().as_bytes(),
                },
                Write::Delete { key: &key },
            ])
            .await;
        let claim = match pending {
            Some(claim) => {
                let claim = DomainClaim {
                    verified_by: None,
                    verified_at: None,
                    ..claim.clone()
                };
                self.store.put_json(&claim_key(t, domain), &claim, None).await
            }
            None => self.store.delete(&claim_key(t, domain)).await.map(|_| ()),
        };
        if let Err(e) = released.map(|_| ()).and(claim) {
            tracing::error!(reason = "tenant.rollback_failed", tenant = %t, domain = %domain, error = %e, "could not release the reservation of a verification that failed");
        }
    }

    /// Removes a domain from tenant `t`, verified or pending; its
    /// reservation is released so it routes nobody.
    pub async fn remove_domain(&self, t: &TenantId, raw: &str) -> Result<(), DomainError> {
        let domain = super::parse_domain(raw).ok_or_else(|| DomainError::Unknown(raw.to_owned()))?;
        if self.get(t).await?.is_none() {
            return Err(RegistryError::NotFound(format!("tenant {t}")).into());
        }
        let had_claim = self.store.delete(&claim_key(t, &domain)).await?;
        self.store.set_remove(&claims_key(t), &domain).await?;
        let mut verified = false;
        // A compare-and-set that reads again when it loses.
        self.modify_tenant(t, |tenant| {
            verified = tenant.domains.contains(&domain);
            tenant.domains.retain(|d| d != &domain);
            // Its connections go with it: a domain verified again starts unassigned.
            let assigned = tenant.domain_connections.remove(&domain).is_some();
            verified || assigned
        })
        .await?;
        if self.store.get(&domain_key(&domain)).await?.as_deref() == Some(t.as_str().as_bytes()) {
            self.store.delete(&domain_key(&domain)).await?;
        }
        if !had_claim && !verified {
            return Err(DomainError::Unknown(domain));
        }
        tracing::info!(reason = "domain.removed", tenant = %t, domain = %domain, "domain removed");
        Ok(())
    }

    /// Assigns the verified domain `raw` of tenant `t` to `connections`
    /// ([`Tenant::domain_connections`]): only they vouch for its addresses,
    /// and a `login_hint` in it goes to them. Empty: any connection again.
    /// Each must be a connection of the tenant now; one deleted later
    /// stays named, so the domain is vouched for by nobody else (fails
    /// closed) until the admin assigns it again. Written with a
    /// compare-and-set of the tenant record.
    pub async fn set_domain_connections(
        &self,
        t: &TenantId,
        raw: &str,
        connections: Vec<ConnectionId>,
    ) -> Result<DomainState, DomainError> {
        let domain = super::parse_domain(raw).ok_or_else(|| DomainError::Unknown(raw.to_owned()))?;
        let mut wanted: Vec<ConnectionId> = Vec::with_capacity(connections.len());
        for c in connections {
            if !wanted.contains(&c) {
                wanted.push(c);
            }
        }
        let known = self.connection_ids(t).await?;
        if let Some((i, c)) = wanted.iter().enumerate().find(|(_, c)| !known.contains(c)) {
            return Err(DomainError::UnknownConnection(i, c.clone()));
        }
        let (mut state, mut too_many) = (None, false);
        let tenant = self
            .modify_tenant(t, |tenant| {
                too_many = false;
                if !tenant.domains.contains(&domain) {
                    state = Some(false);
                    return false;
                }
                state = Some(true);
                let now = tenant.domain_connections.get(&domain).cloned().unwrap_or_default();
                if now == wanted {
                    return false;
                }
                let others: usize = tenant
                    .domain_connections
                    .iter()
                    .filter(|(d, _)| **d != domain)
                    .map(|(_, cs)| cs.len())
                    .sum();
                if others + wanted.len() > super::MAX_DOMAIN_ASSIGNMENTS {
                    state = Some(false);
                    too_many = true;
                    return false;
                }
                if wanted.is_empty() {
                    tenant.domain_connections.remove(&domain);
                } else {
                    tenant.domain_connections.insert(domain.clone(), wanted.clone());
                }
                true
            })
            .await?;
        if too_many {
            return Err(DomainError::TooManyConnections(super::MAX_DOMAIN_ASSIGNMENTS));
        }
        if state != Some(true) {
            // A pending claim is not assigned: it routes nobody and vouches for nothing yet.
            let claimed = self
                .store
                .get_json::<DomainClaim>(&claim_key(t, &domain))
                .await?
                .is_some();
            return Err(if claimed {
                DomainError::NotVerified(domain)
            } else {
                DomainError::Unknown(domain)
            });
        }
        self.domain_states(&tenant)
            .await?
            .into_iter()
            .find(|s| s.domain == domain)
            .ok_or(DomainError::Unknown(domain))
    }

    /// Replaces every domain assignment of tenant `t` with `wanted` (a
    /// tenant file's declaration), keeping only the tenant's verified
    /// domains. `Some((before, after))` when it changed.
    #[allow(clippy::type_complexity)]
    pub async fn replace_domain_connections(
        &self,
        t: &TenantId,
        mut wanted: BTreeMap<String, Vec<ConnectionId>>,
    ) -> Result<Option<(BTreeMap<String, Vec<ConnectionId>>, BTreeMap<String, Vec<ConnectionId>>)>, RegistryError> {
        let mut before = None;
        let tenant = self
            .modify_tenant(t, |tenant| {
                before = None;
                wanted.retain(|d, _| tenant.domains.contains(d));
                if tenant.domain_connections == wanted {
                    return false;
                }
                before = Some(std::mem::replace(&mut tenant.domain_connections, wanted.clone()));
                true
            })
            .await?;
        Ok(before.map(|b| (b, tenant.domain_connections)))
    }

    /// Sets whether sign-ins of tenant `t` require MFA at the IdP. (Kept
    /// here until per-tenant settings have their own home.)
    pub async fn set_require_mfa(&self, t: &TenantId, required: bool) -> Result<Tenant, RegistryError> {
        // A compare-and-set that reads again when it loses.
        self.modify_tenant(t, |tenant| {
            let changes = tenant.settings.require_mfa != required;
            tenant.settings.require_mfa = required;
            changes
        })
        .await
    }

    /// Deletes every pending claim of `t` (when the tenant is deleted).
    pub(crate) async fn delete_claims(&self, t: &TenantId) -> Result<(), RegistryError> {
        for d in self.store.set_members(&claims_key(t)).await? {
            self.store.delete(&claim_key(t, &d)).await?;
        }
        self.store.delete(&claims_key(t)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_suffixes_and_free_mail_are_unclaimable() {
        for d in ["co.uk", "com.au", "github.io", "herokuapp.com"] {
            assert_eq!(claimable(d), Err(Unclaimable::PublicSuffix(d.into())), "{d}");
        }
        for d in [
            "gmail.com",
            "GoogleMail.com",
            "outlook.com",
            "proton.me",
            "gmx.de",
            "gmx.net",
            "gmx.co.uk",
            "yandex.ru",
            "mail.ru",
            "qq.com",
            "163.com",
        ] {
            assert!(matches!(claimable(d), Err(Unclaimable::FreeMail(_))), "{d}");
        }
        for d in [
            "acme.com",
            "acme.co.uk",
            "acme.test",
            "sub.acme.com",
            "acme.github.io",
            "notgmail.com",
            "gmxfoo.de",
        ] {
            assert_eq!(claimable(d).as_deref(), Ok(d), "{d}");
        }
        assert!(matches!(claimable("not a domain"), Err(Unclaimable::Syntax(_))));
        assert!(matches!(claimable("com"), Err(Unclaimable::Syntax(_))));
    }
}
