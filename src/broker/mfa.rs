//! MFA required from the IdP: a tenant or an app may demand multi-factor
//! authentication. The broker asks the IdP for it (`BeginRequest::require_mfa`),
//! refuses an answer that does not show it (`login.mfa_required`), and does
//! not reuse an SSO session without it.

use super::{error_to_app, Broker, Outcome};
use crate::broker::authorize::AuthRequest;
use crate::ids::{ConnectionId, TenantId};
use crate::store::StoreError;
use crate::tenant::Tenant;
use crate::upstream::Identity;

const MFA_MISSING: &str = "This application requires multi-factor authentication, but your identity provider did not report one. Sign in again with a second factor, or ask your IT administrator to require it for this application.";

impl Broker {
    /// Whether the tenant or the app requires MFA, as stored now (so a
    /// change counts for logins already under way). A tenant or app that
    /// cannot be read does not relax anything: the store error fails the login.
    /// `tenant` is the tenant's record as the caller read it for this answer
    /// (`None`: gone; a missing tenant is refused later by provisioning).
    pub(super) async fn mfa_required(&self, tenant: Option<&Tenant>, client_id: &str) -> Result<bool, StoreError> {
        let tenant_requires = tenant.is_some_and(|t| t.settings.require_mfa);
        if tenant_requires {
            return Ok(true);
        }
        Ok(self
            .provider
            .clients
            .get(client_id)
            .await?
            .is_some_and(|c| c.require_mfa))
    }

    /// The refusal of an answer without MFA: `access_denied` to the app with
    /// the reason code, logged with what the IdP did report.
    pub(super) fn mfa_refused(
        &self,
        request: &AuthRequest,
        tenant: &TenantId,
        connection: &ConnectionId,
        identity: &Identity,
    ) -> Outcome {
        tracing::warn!(
            reason = "login.mfa_required",
            tenant = %tenant,
            connection = %connection,
            acr = identity.acr.as_deref().unwrap_or(""),
            amr = ?identity.amr,
            "the IdP's answer does not show multi-factor authentication"
        );
        error_to_app(
            request,
            &self.provider.iss(),
            "access_denied",
            &format!("{MFA_MISSING} (reason: login.mfa_required)"),
        )
    }
}
