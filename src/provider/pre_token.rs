//! The pre-token-generation hook at minting (`grants.rs` calls
//! [`Provider::pre_token`] once per mint, for the code and refresh grants
//! alike): the tenant's hook, if configured, changes the claims within the
//! rules of `hooks::pre_token`; a failing hook fails the token request
//! (`temporarily_unavailable` when it is down, `server_error` when it
//! misbehaves), so tokens are never issued unchanged after a failure.

use super::codes::Authorization;
use super::{OAuthError, Provider};
use crate::directory::User;
use crate::hooks::{pre_token, HookConfig, HookError, HookKind};
use serde_json::{Map, Value};

impl Provider {
    /// The tenant's pre-token-generation hook, if configured (the
    /// per-replica cache, re-validated against the store on every call).
    pub(super) async fn pre_token_hook(&self, authz: &Authorization) -> Result<Option<HookConfig>, OAuthError> {
        let Some(hooks) = &self.hooks else {
            return Ok(None);
        };
        Ok(hooks.get_cached(&authz.tenant, HookKind::PreTokenGeneration).await?)
    }

    /// Runs the tenant's pre-token-generation hook `hook` (from
    /// [`Self::pre_token_hook`] in this request), if any, over the claims
    /// about to be issued: `access` (the access token's claims) and `id` (the
    /// ID token's, when one is issued; `at_hash` is added after). `user` is
    /// the user when the caller has read it already.
    pub(super) async fn pre_token(
        &self,
        hook: Option<HookConfig>,
        authz: &Authorization,
        scopes: &[String],
        mut access: Map<String, Value>,
        mut id: Option<Map<String, Value>>,
        user: Option<&User>,
    ) -> Result<(Map<String, Value>, Option<Map<String, Value>>), OAuthError> {
        let (Some(hooks), Some(hook)) = (&self.hooks, hook) else {
            return Ok((access, id));
        };
        let read;
        let user = match user {
            Some(u) => u,
            None => {
                read = self
                    .directory
                    .get(&authz.tenant, &authz.sub)
                    .await?
                    .ok_or_else(|| OAuthError::invalid_grant("code.user_gone", "The user no longer exists."))?;
                &read
            }
        };
        // The user was checked active (current tenant incarnation) earlier
        // in this request: a hook configured for an earlier tenant with this
        // id is not this tenant's.
        if hook.tenant_incarnation != user.tenant_incarnation {
            tracing::warn!(reason = "hook.stale", tenant = %authz.tenant, "a hook of an earlier tenant with this id is ignored");
            return Ok((access, id));
        }
        let ctx = pre_token::Context {
            tenant: authz.tenant.as_str(),
            connection: authz.connection.as_str(),
            client_id: &authz.client_id,
            scopes,
            resource: authz.resource.as_deref(),
            user,
        };
        let body = pre_token::request(&ctx, &access, id.as_ref());
        let outcome = match hooks.call(&authz.tenant, &hook, &body).await {
            Ok(answer) => pre_token::parse(answer).and_then(|a| pre_token::apply_answer(a, &mut access, id.as_mut())),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(reason = "hook.claims_applied", tenant = %authz.tenant, client_id = %authz.client_id, "pre-token hook applied");
                Ok((access, id))
            }
            Err(e) => {
                if let HookError::ProtectedClaim(claim) = &e {
                    tracing::warn!(reason = "hook.protected_claim", tenant = %authz.tenant, client_id = %authz.client_id, claim = %claim, "pre-token hook tried to change a protected claim; token request refused");
                    self.audit
                        .security(
                            crate::audit::AuditEvent::security(
                                &crate::audit::Actor::System("hook:pre_token_generation".into()),
                                "hook.refused",
                                crate::audit::Target::new("hook", HookKind::PreTokenGeneration.as_str()),
                                crate::audit::Outcome::Failure,
                                "hook.protected_claim",
                            )
                            .tenant(&authz.tenant)
                            .subject(&authz.sub),
                        )
                        .await;
                } else {
                    tracing::warn!(reason = e.reason(), tenant = %authz.tenant, client_id = %authz.client_id, error = %e, "pre-token hook failed; token request refused");
                }
                Err(hook_failure(&e))
            }
        }
    }
}

/// The OAuth answer to a failed hook: `temporarily_unavailable` when the
/// hook (or the store) is down, `server_error` when it answered wrongly.
pub(crate) fn hook_failure(e: &HookError) -> OAuthError {
    if e.transient() {
        OAuthError::temporarily_unavailable(
            e.reason(),
            "A hook of the organization is not answering; try again later.",
        )
    } else {
        OAuthError::server(e.reason(), e)
    }
}
