//! The built-in development identity provider: a form where you type who you
//! are. Only mounted in dev mode (`PORTCULLIS_DEV=true`), every page carries a
//! warning banner, and the admin API refuses `"kind":"dev"` outside dev mode.
//!
//! It still goes through the whole broker: a pending login, a single-use
//! ticket in the store, provisioning, the SSO session and a code.

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, UpstreamContext, UpstreamError,
    UpstreamRedirect,
};
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreError, StoreJson};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Stored configuration of a development connection (nothing to configure).
/// Unknown members are ignored, as for every kind: the stored record's
/// members that are not the connection's own (its write stamp) reach the
/// kind's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DevConfig {}

/// The development connector.
pub struct DevConnector {
    tenant: TenantId,
    connection: ConnectionId,
    ctx: UpstreamContext,
}

fn ticket_key(t: &TenantId, ticket: &str) -> Key {
    Key::tenant(t.as_str(), "dev", format!("ticket:{ticket}"))
}

/// Stores the identity typed into the dev form; returns a single-use ticket.
pub async fn issue_ticket(ctx: &UpstreamContext, tenant: &TenantId, identity: &Identity) -> Result<String, StoreError> {
    let ticket = crate::tokens::random_token(24);
    // Submitting the dev form is the authentication: it happened now.
    let mut identity = identity.clone();
    identity.auth_time.get_or_insert(ctx.clock.unix());
    ctx.store
        .put_json(&ticket_key(tenant, &ticket), &identity, Some(Duration::from_secs(120)))
        .await?;
    Ok(ticket)
}

impl DevConnector {
    /// Builds the connector.
    pub fn new(connection: &Connection, _cfg: DevConfig, ctx: UpstreamContext) -> Self {
        Self {
            tenant: connection.tenant.clone(),
            connection: connection.id.clone(),
            ctx,
        }
    }
}

#[async_trait]
impl Connector for DevConnector {
    async fn begin(&self, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        let mut url = self
            .ctx
            .public(&format!("dev/{}/{}/login", self.tenant, self.connection));
        url.query_pairs_mut().append_pair("state", req.login_id);
        if let Some(h) = req.login_hint {
            url.query_pairs_mut().append_pair("login_hint", h);
        }
        Ok(BeginLogin {
            redirect: UpstreamRedirect::Redirect(url),
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
        if expected.is_none() || expected != params.query.get("state").map(String::as_str) {
            return Err(UpstreamError::reject(
                "dev.state_mismatch",
                "The sign-in state does not match.",
                "state mismatch",
            ));
        }
        let ticket = params.query.get("ticket").ok_or_else(|| {
            UpstreamError::reject("dev.missing_ticket", "The sign-in was not completed.", "no ticket")
        })?;
        self.ctx
            .store
            .take_json::<Identity>(&ticket_key(&self.tenant, ticket))
            .await
            .map_err(|e| UpstreamError::store(&e))?
            .ok_or_else(|| {
                UpstreamError::reject(
                    "dev.unknown_ticket",
                    "The sign-in has expired. Please try again.",
                    "unknown ticket",
                )
            })
    }
}
