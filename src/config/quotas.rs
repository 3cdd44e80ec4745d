//! `[quotas]`: what a tenant's own admin (a tenant API key, a setup link)
//! may give its tenant or have the gateway do for it. The defaults are the
//! caps Portcullis always had ([`crate::tenant::MAX_CONNECTIONS`],
//! [`crate::tenant::MAX_DOMAINS`], [`crate::provider::exchange::MAX_RULES`],
//! [`crate::admin::MAX_OUTBOUND_PER_MINUTE`],
//! [`crate::admin::MAX_PASSWORD_HASHES_PER_MINUTE`],
//! [`crate::admin::MAX_KEY_GENERATIONS_PER_MINUTE`]); each value has an
//! upper bound checked at start-up, because every one of them is a cost the
//! platform carries for one tenant. `0` means a tenant admin may not do it
//! at all. The platform admin, tenant files and imports are held to none of
//! them, except the exchange rules, which bound what every token exchange
//! of the tenant reads.
//!
//! `tenant::MAX_ALLOWED_CLIENTS` is not here: it bounds a list in the
//! tenant's record that only the platform admin sets and that every
//! sign-in of the tenant reads, so it is no tenant admin's quota and
//! raising it would slow every sign-in of the tenant.

use super::ConfigProblem;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The most connections `connections_per_tenant` may allow: the tenant's
/// connection set is read whole when its sign-in page lists them, and each
/// connection is kept, refreshed and cached by every replica serving it.
pub const MAX_CONNECTIONS_PER_TENANT: u64 = 1000;
/// The most domains `domains_per_tenant` may allow: verified ones are in
/// the tenant's record, which every sign-in of the tenant reads.
pub const MAX_DOMAINS_PER_TENANT: u64 = 500;
/// The most exchange rules `exchange_rules_per_tenant` may allow: every
/// token exchange of the tenant reads each rule, one store read apiece.
pub const MAX_EXCHANGE_RULES_PER_TENANT: u64 = 500;
/// The largest `outbound_per_minute`: each call holds an admin slot for up
/// to the outbound timeout while it waits on the network.
pub const MAX_OUTBOUND_PER_MINUTE: u64 = 1000;
/// The largest `password_hashes_per_minute`: each hash (argon2id) takes a
/// hashing slot every tenant's password sign-ins share.
pub const MAX_PASSWORD_HASHES_PER_MINUTE: u64 = 1000;
/// The largest `key_generations_per_minute`: an RSA 2048 key takes tens to
/// hundreds of milliseconds of a CPU the sign-ins share.
pub const MAX_KEY_GENERATIONS_PER_MINUTE: u64 = 600;

/// `[quotas]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// The most connections a tenant admin may give its tenant
    /// (`PORTCULLIS_QUOTAS_CONNECTIONS_PER_TENANT`; 409 `quota.connections`;
    /// 0 to [`MAX_CONNECTIONS_PER_TENANT`], default 50).
    pub connections_per_tenant: usize,
    /// The most domains, verified and claimed together, a tenant admin may
    /// give its tenant (`PORTCULLIS_QUOTAS_DOMAINS_PER_TENANT`; 409
    /// `quota.domains`; 0 to [`MAX_DOMAINS_PER_TENANT`], default 50).
    pub domains_per_tenant: usize,
    /// The most token-exchange rules a tenant may have, whoever creates
    /// them, the platform admin too (`PORTCULLIS_QUOTAS_EXCHANGE_RULES_PER_TENANT`;
    /// 409 `quota.exchange_rules`; 0 to [`MAX_EXCHANGE_RULES_PER_TENANT`],
    /// default 100).
    pub exchange_rules_per_tenant: usize,
    /// The most calls a minute that fetch or look up outside the gateway
    /// (metadata, issuers, DNS) a tenant's admins may make
    /// (`PORTCULLIS_QUOTAS_OUTBOUND_PER_MINUTE`; 429 `quota.outbound`; 0 to
    /// [`MAX_OUTBOUND_PER_MINUTE`], default 30).
    pub outbound_per_minute: u64,
    /// The most passwords a minute a tenant's admins may have hashed by
    /// creating local accounts (`PORTCULLIS_QUOTAS_PASSWORD_HASHES_PER_MINUTE`;
    /// 429 `quota.password_hashes`; 0 to [`MAX_PASSWORD_HASHES_PER_MINUTE`],
    /// default 60).
    pub password_hashes_per_minute: u64,
    /// The most SP key pairs a minute a tenant's admins may have generated
    /// (SAML connections, SP certificate rotations)
    /// (`PORTCULLIS_QUOTAS_KEY_GENERATIONS_PER_MINUTE`; 429
    /// `quota.key_generations`; 0 to [`MAX_KEY_GENERATIONS_PER_MINUTE`],
    /// default 10).
    pub key_generations_per_minute: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            connections_per_tenant: crate::tenant::MAX_CONNECTIONS,
            domains_per_tenant: crate::tenant::MAX_DOMAINS,
            exchange_rules_per_tenant: crate::provider::exchange::MAX_RULES,
            outbound_per_minute: crate::admin::MAX_OUTBOUND_PER_MINUTE,
            password_hashes_per_minute: crate::admin::MAX_PASSWORD_HASHES_PER_MINUTE,
            key_generations_per_minute: crate::admin::MAX_KEY_GENERATIONS_PER_MINUTE,
        }
    }
}

/// A count as a `u64`, saturating (for the checks and the messages).
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl QuotaSettings {
    /// Applies `PORTCULLIS_QUOTAS_*` overrides.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>, problems: &mut Vec<ConfigProblem>) {
        let mut number = |name: &str, target: &mut u64| {
            if let Some(v) = env.get(name) {
                match v.parse() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected a whole number, found {v:?}"),
                    }),
                }
            }
        };
        for (name, target) in [
            (
                "PORTCULLIS_QUOTAS_CONNECTIONS_PER_TENANT",
                &mut self.connections_per_tenant,
            ),
            ("PORTCULLIS_QUOTAS_DOMAINS_PER_TENANT", &mut self.domains_per_tenant),
            (
                "PORTCULLIS_QUOTAS_EXCHANGE_RULES_PER_TENANT",
                &mut self.exchange_rules_per_tenant,
            ),
        ] {
            let mut n = wide(*target);
            number(name, &mut n);
            *target = usize::try_from(n).unwrap_or(usize::MAX);
        }
        number("PORTCULLIS_QUOTAS_OUTBOUND_PER_MINUTE", &mut self.outbound_per_minute);
        number(
            "PORTCULLIS_QUOTAS_PASSWORD_HASHES_PER_MINUTE",
            &mut self.password_hashes_per_minute,
        );
        number(
            "PORTCULLIS_QUOTAS_KEY_GENERATIONS_PER_MINUTE",
            &mut self.key_generations_per_minute,
        );
    }

    /// Checks every value against its bound; `bad(field, message)` collects
    /// the problems.
    pub fn validate(&self, bad: &mut dyn FnMut(&str, String)) {
        for (field, value, max) in [
            (
                "quotas.connections_per_tenant",
                wide(self.connections_per_tenant),
                MAX_CONNECTIONS_PER_TENANT,
            ),
            (
                "quotas.domains_per_tenant",
                wide(self.domains_per_tenant),
                MAX_DOMAINS_PER_TENANT,
            ),
            (
                "quotas.exchange_rules_per_tenant",
                wide(self.exchange_rules_per_tenant),
                MAX_EXCHANGE_RULES_PER_TENANT,
            ),
            (
                "quotas.outbound_per_minute",
                self.outbound_per_minute,
                MAX_OUTBOUND_PER_MINUTE,
            ),
            (
                "quotas.password_hashes_per_minute",
                self.password_hashes_per_minute,
                MAX_PASSWORD_HASHES_PER_MINUTE,
            ),
            (
                "quotas.key_generations_per_minute",
                self.key_generations_per_minute,
                MAX_KEY_GENERATIONS_PER_MINUTE,
            ),
        ] {
            if value > max {
                bad(
                    field,
                    format!("{value} is outside 0..={max} (0: tenant admins may not do it at all)"),
                );
            }
        }
    }
}
