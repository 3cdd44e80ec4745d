//! The requests and answers of the hooks that local sign-in calls:
//! `user_migration` and `post_confirmation` (`custom_challenge` lives in
//! `challenge.rs`).
//!
//! `user_migration` (a local sign-in of an email the connection does not
//! know; idempotent, so retried):
//! ```json
//! {"version": 1, "kind": "user_migration", "tenant": "acme", "connection": "local",
//!  "email": "jane@acme.example", "password": "…"}
//! ```
//! answered `{"outcome": "migrate", "profile": {"given_name"?,
//! "family_name"?}}` to create the account (confirmed,
//! with that password, re-hashed) or `{"outcome": "refuse"}` when the legacy
//! base does not know these credentials (the sign-in then fails like any
//! wrong password). Anything else is `hook.bad_answer`.
//!
//! `post_confirmation` (after a local account is confirmed; a notification,
//! never retried):
//! ```json
//! {"version": 1, "kind": "post_confirmation", "tenant": "acme", "connection": "local",
//!  "email": "jane@acme.example"}
//! ```
//! answered with any 2xx JSON object (`{}`). A failure leaves the account
//! unconfirmed.

use super::{HookConfig, HookError, HookKind, Hooks};
use crate::ids::TenantId;
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::json;

/// What the legacy base says of a user's credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum Migration {
    /// Known and the password matches: create the account with this profile.
    Migrate(LegacyProfile),
    /// Unknown, or the password does not match.
    Refuse,
}

/// The profile a migration hook hands over (all optional): what a local
/// account keeps.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyProfile {
    /// Given name.
    #[serde(default)]
    pub given_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub family_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "outcome", rename_all = "snake_case")]
enum MigrationAnswer {
    Migrate {
        #[serde(default)]
        profile: LegacyProfile,
    },
    Refuse,
}

/// The longest profile value kept.
const MAX_VALUE_CHARS: usize = 256;

fn check_profile(p: &LegacyProfile) -> Result<(), HookError> {
    let bad = |v: &Option<String>| {
        v.as_ref()
            .is_some_and(|s| s.chars().count() > MAX_VALUE_CHARS || s.chars().any(char::is_control))
    };
    if bad(&p.given_name) || bad(&p.family_name) {
        return Err(HookError::BadAnswer(format!(
            "a profile value must be at most {MAX_VALUE_CHARS} printable characters"
        )));
    }
    Ok(())
}

impl Hooks {
    /// The tenant's hook of `kind`, if configured for the tenant as it is
    /// now (reads the tenant's record for its incarnation; a hook left by a
    /// deleted tenant with the same id is not this tenant's). For the rare
    /// paths (a sign-in of an unknown email, a confirmation).
    pub async fn configured(&self, tenant: &TenantId, kind: HookKind) -> Result<Option<HookConfig>, HookError> {
        let Some(hook) = self.get(tenant, kind).await? else {
            return Ok(None);
        };
        let Some(raw) = self.store.get(&crate::tenant::tenant_key(tenant)).await? else {
            return Ok(None);
        };
        let record: crate::tenant::Tenant =
            serde_json::from_slice(&raw).map_err(|e| HookError::Store(format!("tenant {tenant}: {e}")))?;
        if record.incarnation != hook.tenant_incarnation {
            tracing::warn!(reason = "hook.stale", tenant = %tenant, kind = %kind, "a hook of an earlier tenant with this id is ignored");
            return Ok(None);
        }
        Ok(Some(hook))
    }

    /// Asks the `user_migration` hook about `email` and `password`.
    pub async fn migrate_user(
        &self,
        tenant: &TenantId,
        hook: &HookConfig,
        connection: &str,
        email: &str,
        password: &Secret,
    ) -> Result<Migration, HookError> {
        let body = json!({
            "version": 1, "kind": HookKind::UserMigration.as_str(), "tenant": tenant.as_str(),
            "connection": connection, "email": email, "password": password.expose(),
        });
        let started = tokio::time::Instant::now();
        let verdict = async {
            let answer = self.call(tenant, hook, &body).await?;
            let parsed: MigrationAnswer =
                serde_json::from_value(answer).map_err(|e| HookError::BadAnswer(super::clip(&e.to_string(), 200)))?;
            match parsed {
                MigrationAnswer::Migrate { profile } => {
                    check_profile(&profile)?;
                    Ok(Migration::Migrate(profile))
                }
                MigrationAnswer::Refuse => Ok(Migration::Refuse),
            }
        }
        .await;
        let call = super::recent::Call {
            took: started.elapsed(),
            failed: verdict.as_ref().err().cloned(),
        };
        // Shared with the other replicas (`recent.rs`); losing one only
        // thins their sample.
        let shared = self
            .store
            .list_push_capped(
                &super::recent::calls_key(tenant),
                &call.to_stored(),
                super::recent::CALLS,
            )
            .await;
        if let Err(e) = shared {
            tracing::warn!(reason = "hook.calls_unshared", tenant = %tenant, error = %e, "migration hook call not shared with other replicas");
        }
        self.recent.record(tenant.as_str(), call);
        verdict
    }

    /// For a failed local sign-in that did not ask `tenant`'s user-migration
    /// hook (the address has an account): what asking it would have looked
    /// like, so the answer does not tell the address has an account
    /// (`recent.rs`). While the hook's circuit is open, fails at once as a
    /// call would (`hook.circuit_open`); otherwise waits as long as one of
    /// its recent calls, drawn at random, and fails as it failed. Nothing
    /// is sent to the hook.
    pub async fn replay_migration(&self, tenant: &TenantId) -> Result<(), HookError> {
        let circuit = format!("{tenant}/{}", HookKind::UserMigration);
        if self.breaker.is_open(&circuit, self.now_ms()) {
            return Err(HookError::CircuitOpen);
        }
        let pick = rand::random::<u32>() as usize;
        let call = match self.recent.pick(tenant.as_str(), pick) {
            Some(call) => Some(call),
            // This replica has seen no call yet: the other replicas' calls.
            None => {
                let stored = self
                    .store
                    .list_range(&super::recent::calls_key(tenant), 0, super::recent::CALLS)
                    .await?;
                let calls = stored
                    .iter()
                    .filter_map(|raw| super::recent::Call::from_stored(raw))
                    .collect();
                self.recent.load(tenant.as_str(), calls);
                self.recent.pick(tenant.as_str(), pick)
            }
        };
        let Some(call) = call else {
            return Ok(());
        };
        tokio::time::sleep(call.took).await;
        match call.failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Tells the `post_confirmation` hook that `email` confirmed its account.
    pub async fn post_confirmation(
        &self,
        tenant: &TenantId,
        hook: &HookConfig,
        connection: &str,
        email: &str,
    ) -> Result<(), HookError> {
        let body = json!({
            "version": 1, "kind": HookKind::PostConfirmation.as_str(), "tenant": tenant.as_str(),
            "connection": connection, "email": email,
        });
        self.call(tenant, hook, &body).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_answers_are_read_strictly() {
        let m: MigrationAnswer =
            serde_json::from_value(json!({"outcome": "migrate", "profile": {"given_name": "J"}})).unwrap();
        assert!(matches!(m, MigrationAnswer::Migrate { .. }));
        let r: MigrationAnswer = serde_json::from_value(json!({"outcome": "refuse"})).unwrap();
        assert!(matches!(r, MigrationAnswer::Refuse));
        assert!(serde_json::from_value::<MigrationAnswer>(json!({"outcome": "ok"})).is_err());
        assert!(serde_json::from_value::<MigrationAnswer>(json!({})).is_err());
        assert!(serde_json::from_value::<MigrationAnswer>(
            json!({"outcome": "migrate", "profile": {"email_verified": true}})
        )
        .is_err());
        let long = LegacyProfile {
            given_name: Some("x".repeat(300)),
            ..LegacyProfile::default()
        };
        assert_eq!(check_profile(&long).unwrap_err().reason(), "hook.bad_answer");
    }
}
