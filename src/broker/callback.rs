//! The second half of a sign-in: the IdP's answer comes back (OIDC
//! callback, SAML ACS, dev IdP). Find and consume the pending login, check it
//! belongs to this browser, let the connector validate, provision the user,
//! open the SSO session and hand the app a code.

use super::session::{self, BrowserLogins, BrowserSso, SsoSession};
use super::{page, pending_key, unavailable, Broker, Outcome, PendingLogin};
use crate::broker::authorize::AuthRequest;
use crate::directory::{Inactive, ProvisionError, Provisioned};
use crate::ids::{ConnectionId, TenantId};
use crate::store::StoreJson;
use crate::upstream::CallbackParams;
use url::Url;

impl Broker {
    /// The IdP's answer (OIDC callback, SAML ACS, dev IdP).
    pub async fn complete(
        &self,
        tenant: &str,
        connection: &str,
        params: CallbackParams,
        sso: &mut BrowserSso,
        logins: &mut BrowserLogins,
    ) -> Outcome {
        let (Ok(tenant), Ok(connection)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
            return page(
                404,
                "Unknown sign-in address",
                "This sign-in address does not exist.",
                "callback.unknown_connection",
            );
        };
        let connector = match self
            .connectors
            .get(&self.tenants, &self.upstream, &tenant, &connection)
            .await
        {
            Ok(c) => c,
            Err(e) => return self.upstream_failed(None, &tenant, &connection, e),
        };
        // Find (and consume) the pending login the IdP's answer refers to.
        let pending = match connector.login_id(&params) {
            Some(id) if id.len() <= 128 => {
                match self.store.take_json::<PendingLogin>(&pending_key(&tenant, id)).await {
                    Ok(p) => p,
                    Err(e) => return unavailable(e),
                }
            }
            _ => None,
        };
        if let Some(p) = &pending {
            if let Some(expected) = &p.browser_binding {
                let presented = logins
                    .iter()
                    .position(|(id, _)| Some(id.as_str()) == connector.login_id(&params))
                    .map(|i| logins.remove(i).1);
                let ok = presented.is_some_and(|s| {
                    use subtle::ConstantTimeEq;
                    crate::tokens::sha256_base64url(s.as_bytes())
                        .as_bytes()
                        .ct_eq(expected.as_bytes())
                        .into()
                });
                if !ok {
                    tracing::warn!(reason = "callback.browser_mismatch", tenant = %tenant, connection = %connection);
                    return page(
                        400,
                        "Sign-in failed",
                        "This sign-in was started in another browser or its session has ended. Please start again from the application.",
                        "callback.browser_mismatch",
                    );
                }
            }
            if p.connection != connection || p.tenant != tenant {
                tracing::warn!(reason = "callback.login_mismatch", tenant = %tenant, connection = %connection);
                return page(
                    400,
                    "Sign-in failed",
                    "This answer does not belong to the sign-in that was started.",
                    "callback.login_mismatch",
                );
            }
        }
        let request = match &pending {
            Some(p) => p.request.clone(),
            None => match connector.unsolicited_target() {
                Some((client_id, redirect_uri)) => {
                    match self.unsolicited_request(&tenant, &client_id, &redirect_uri).await {
                        Ok(r) => r,
                        Err(o) => return o,
                    }
                }
                None => {
                    let reason = if connector.login_id(&params).is_some() {
                        "callback.unknown_login"
                    } else {
                        "callback.unsolicited"
                    };
                    tracing::warn!(reason, tenant = %tenant, connection = %connection, "no pending login for this answer");
                    return page(
                        400,
                        "Sign-in failed",
                        "This sign-in has expired, was already used, or was not started here. Please start again from the application.",
                        reason,
                    );
                }
            },
        };
        let identity = match connector
            .complete(pending.as_ref().map(|p| &p.connector_state), &params)
            .await
        {
            Ok(i) => i,
            Err(e) => return self.upstream_failed(Some(&request), &tenant, &connection, e),
        };
        let (user, provisioned) = match self.provider.directory.provision(&tenant, &connection, &identity).await {
            Ok(u) => u,
            Err(ProvisionError::Inactive(why)) => return inactive_page(&tenant, &connection, why),
            Err(ProvisionError::Store(e)) => return unavailable(e),
        };
        // A login started before its tenant or connection was re-created
        // belongs to the old one: it ends here.
        if let Some(p) = &pending {
            let current = crate::tenant::Incarnation {
                tenant: user.tenant_incarnation.clone(),
                connection: user.connection_incarnation.clone(),
            };
            if p.incarnation.as_ref() != Some(&current) {
                tracing::warn!(reason = "callback.login_superseded", tenant = %tenant, connection = %connection);
                return page(
                    400,
                    "Sign-in failed",
                    "The sign-in settings changed while you were signing in. Please start again from the application.",
                    "callback.login_superseded",
                );
            }
        }
        // A disabled (or meanwhile superseded) user gets no session and no code.
        match self.provider.directory.active(&tenant, &user.sub).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return inactive_page(&tenant, &connection, why),
            Err(e) => return unavailable(e),
        }
        if provisioned == Provisioned::Created {
            tracing::info!(reason = "user.jit_created", tenant = %tenant, connection = %connection, "user provisioned");
        }
        let s = SsoSession {
            sid: crate::tokens::random_token(16),
            tenant: tenant.clone(),
            connection: connection.clone(),
            sub: user.sub.clone(),
            auth_time: self.provider.clock.unix(),
            amr: identity.amr.clone(),
        };
        if let Err(e) = session::save(&self.store, &s, self.session_ttl).await {
            return unavailable(e);
        }
        sso.insert(tenant.to_string(), s.sid.clone());
        tracing::info!(reason = "login.succeeded", tenant = %tenant, connection = %connection, "sign-in succeeded");
        self.finish(&request, &s).await
    }

    async fn unsolicited_request(
        &self,
        tenant: &TenantId,
        client_id: &str,
        redirect_uri: &Url,
    ) -> Result<AuthRequest, Outcome> {
        let client = self.provider.clients.get(client_id).await.map_err(unavailable)?;
        let Some(client) = client.filter(|c| c.redirect_uris.iter().any(|r| r == redirect_uri.as_str())) else {
            return Err(page(
                400,
                "Sign-in failed",
                "The default application of this connection is not registered.",
                "callback.unsolicited_target_invalid",
            ));
        };
        // Checked when the login arrives, so a later change of the app's tenants counts.
        if !client.allows_tenant(tenant) {
            tracing::warn!(reason = "callback.unsolicited_tenant_not_allowed", tenant = %tenant, client_id);
            return Err(page(
                403,
                "Sign-in failed",
                "The default application of this connection is not available to your organization.",
                "callback.unsolicited_tenant_not_allowed",
            ));
        }
        Ok(AuthRequest::minimal(
            client_id,
            redirect_uri.as_str(),
            None,
            &["openid", "email", "profile"],
        ))
    }
}

/// The page for a sign-in whose user may not sign in (any more).
fn inactive_page(tenant: &TenantId, connection: &ConnectionId, why: Inactive) -> Outcome {
    let (reason, status, message) = match why {
        Inactive::UserDisabled => (
            "login.user_disabled",
            403,
            "Your account has been disabled for this application. Ask your IT administrator.",
        ),
        Inactive::TenantGone => (
            "login.tenant_gone",
            404,
            "Your organization no longer uses this sign-in service.",
        ),
        Inactive::ConnectionGone => (
            "login.connection_gone",
            404,
            "This sign-in connection no longer exists. Please start again from the application.",
        ),
        Inactive::UserGone | Inactive::Superseded => (
            "login.user_gone",
            409,
            "Your account changed while you were signing in. Please start again from the application.",
        ),
    };
    tracing::warn!(reason, tenant = %tenant, connection = %connection, "sign-in refused for this user");
    page(status, "Sign-in refused", message, reason)
}
