//! Local accounts as a connection kind (`"kind":"local"`): the connector
//! behind the same seam as every IdP. `begin` sends the browser to our own
//! sign-in page (`/local/{tenant}/{connection}/sign-in?login=…`); the page
//! checks the password ([`crate::local::Accounts::authenticate`]) and stores
//! the identity under a single-use ticket; `complete` takes the ticket and
//! reads the account again: one deleted, disabled, force-reset or given a
//! new password since the ticket was issued signs nobody in
//! (`local.account_changed`).
//!
//! Like the dev IdP it goes through the whole broker (pending login,
//! provisioning, SSO session, code), but it is available outside dev mode.

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, UpstreamContext, UpstreamError,
};
use crate::ids::{ConnectionId, TenantId};
use crate::local::{LocalConfig, LocalUser};
use crate::store::{Key, StoreError, StoreJson};
use async_trait::async_trait;
use std::time::Duration;

/// The local connector.
pub struct LocalConnector {
    tenant: TenantId,
    connection: ConnectionId,
    ctx: UpstreamContext,
}

/// How long a ticket waits for the callback.
pub const TICKET_TTL: Duration = Duration::from_secs(120);

fn ticket_key(t: &TenantId, ticket: &str) -> Key {
    Key::tenant(t.as_str(), crate::local::GROUP, format!("ticket:{ticket}"))
}

/// The identity of a local account that just proved its password.
pub fn identity(user: &LocalUser, now: i64) -> Identity {
    let name = [user.given_name.as_deref(), user.family_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Identity {
        subject: user.subject.clone(),
        email: Some(user.email.clone()),
        email_verified: Some(user.status == crate::local::AccountStatus::Confirmed),
        name: Some(name).filter(|n| !n.is_empty()),
        given_name: user.given_name.clone(),
        family_name: user.family_name.clone(),
        amr: vec!["pwd".into()],
        auth_time: Some(now),
        local_password: Some(crate::local::password_digest(user)),
        ..Identity::default()
    }
}

/// Stores the identity of a signed-in account for the pending login
/// `login_id`; returns the single-use ticket.
pub async fn issue_ticket(
    ctx: &UpstreamContext,
    tenant: &TenantId,
    connection: &ConnectionId,
    login_id: &str,
    identity: &Identity,
) -> Result<String, StoreError> {
    let ticket = crate::tokens::random_token(24);
    let value = serde_json::json!({
        "login": login_id,
        "connection": connection.as_str(),
        "identity": identity,
    });
    ctx.store
        .put_json(&ticket_key(tenant, &ticket), &value, Some(TICKET_TTL))
        .await?;
    Ok(ticket)
}

impl LocalConnector {
    /// Builds the connector.
    pub fn new(connection: &Connection, _cfg: LocalConfig, ctx: UpstreamContext) -> Self {
        Self {
            tenant: connection.tenant.clone(),
            connection: connection.id.clone(),
            ctx,
        }
    }
}

impl LocalConnector {
    /// The ticket's account must still be the one that signed in: the
    /// same subject, confirmed, not disabled, with the same password. An
    /// account deleted, disabled, force-reset or given a new password
    /// since the ticket was issued (before its first sign-in too, when no
    /// directory user exists yet to revoke) signs nobody in
    /// (`local.account_changed`); nor does a ticket that does not say
    /// which password it proved.
    async fn account_unchanged(&self, identity: &Identity) -> Result<(), UpstreamError> {
        let unchanged = match (identity.email.as_deref(), identity.local_password.as_deref()) {
            (Some(email), Some(password)) => crate::local::account_unchanged(
                &self.ctx.store,
                &self.tenant,
                &self.connection,
                email,
                &identity.subject,
                password,
            )
            .await
            .map_err(|e| UpstreamError::store(&e))?,
            _ => false,
        };
        if unchanged {
            return Ok(());
        }
        Err(UpstreamError::account(
            "local.account_changed",
            "This account changed while you were signing in (it was removed, disabled or its password was reset). Please sign in again.",
            "account changed since the ticket was issued",
        ))
    }
}

#[async_trait]
impl Connector for LocalConnector {
    async fn begin(&self, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        let mut url = self
            .ctx
            .public(&format!("local/{}/{}/sign-in", self.tenant, self.connection));
        url.query_pairs_mut().append_pair("login", req.login_id);
        if let Some(h) = req.login_hint {
            url.query_pairs_mut().append_pair("login_hint", h);
        }
        Ok(BeginLogin {
            redirect: super::UpstreamRedirect::Redirect(url),
            state: serde_json::json!({ "state": req.login_id }),
        })
    }

    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.query.get("state").map(String::as_str)
    }

    async fn complete(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        let expected = pending.and_then(|p| p.get("state")).and_then(|s| s.as_str());
        let Some(expected) = expected.filter(|e| Some(*e) == params.query.get("state").map(String::as_str)) else {
            return Err(UpstreamError::reject(
                "local.state_mismatch",
                "The sign-in state does not match.",
                "state mismatch",
            ));
        };
        let ticket = params.query.get("ticket").ok_or_else(|| {
            UpstreamError::reject("local.missing_ticket", "The sign-in was not completed.", "no ticket")
        })?;
        let value: serde_json::Value = self
            .ctx
            .store
            .take_json(&ticket_key(&self.tenant, ticket))
            .await
            .map_err(|e| UpstreamError::store(&e))?
            .ok_or_else(|| {
                UpstreamError::reject(
                    "local.unknown_ticket",
                    "The sign-in has expired. Please try again.",
                    "unknown ticket",
                )
            })?;
        // The ticket was made for this pending login and connection only.
        if value.get("login").and_then(|v| v.as_str()) != Some(expected)
            || value.get("connection").and_then(|v| v.as_str()) != Some(self.connection.as_str())
        {
            return Err(UpstreamError::reject(
                "local.ticket_mismatch",
                "The sign-in has expired. Please try again.",
                "ticket of another login",
            ));
        }
        let identity: Identity = serde_json::from_value(value.get("identity").cloned().unwrap_or_default())
            .map_err(|e| UpstreamError::internal("local.bad_ticket", e.to_string()))?;
        self.account_unchanged(&identity).await?;
        Ok(identity)
    }
}
