//! What a deleted tenant leaves in the store, freed by one routine that
//! every path deleting a tenant runs: the admin API's
//! `DELETE /tenants/{id}` and a removed tenant file
//! ([`crate::tenant::files::sync`], through [`TenantPurge`]), so neither
//! forgets a part.
//!
//! Acceptance never depends on it: users, local accounts, hooks, API keys,
//! setup links and exchange rules are bound to the tenant's incarnation, and failed
//! sign-ins and the tenant's audit log are read only from the tenant's
//! creation on, so a tenant created again under the same id sees none of
//! its predecessor's even when a step fails. The purge frees the store and
//! ends sessions and refresh families early. Each step runs whatever the
//! others did; a failure is logged (`tenant.purge_failed`, with the part
//! left behind) and never cancels the rest.

use crate::http::AppState;
use crate::ids::{ConnectionId, TenantId};
use crate::tenant::files::TenantPurge;

/// Frees everything `tenant`, just deleted, left in the store:
/// `connections` are the ids it had (read before the deletion, which
/// removes their list). Runs every step; never fails.
pub async fn deleted_tenant(s: &AppState, tenant: &TenantId, connections: &[ConnectionId]) {
    let failed = |part: &'static str, error: &dyn std::fmt::Display| {
        tracing::error!(reason = "tenant.purge_failed", tenant = %tenant, part, error = %error, "part of a deleted tenant left in the store");
    };
    for c in connections {
        s.broker.connectors.forget(tenant, c);
        if let Err(e) = s.accounts.purge_connection(tenant, c).await {
            failed("local_accounts", &e);
        }
    }
    match s.broker.purge_tenant_users(tenant).await {
        Ok(n) => tracing::info!(reason = "tenant.users_purged", tenant = %tenant, users = n),
        Err(e) => failed("users", &e),
    }
    if let Err(e) = crate::provider::exchange::ExchangeRules::new(s.store.clone())
        .purge(tenant)
        .await
    {
        failed("exchange_rules", &e);
    }
    if let Err(e) = s.broker.purge_failed_sign_ins(tenant).await {
        failed("failed_sign_ins", &e);
    }
    match super::api_keys::purge_tenant(s, tenant).await {
        Ok(n) => tracing::info!(reason = "tenant.api_keys_purged", tenant = %tenant, keys = n),
        Err(e) => failed("api_keys", &e),
    }
    match crate::portal::links::SetupLinks::new(s.store.clone(), s.provider.clock.clone())
        .purge_tenant(tenant)
        .await
    {
        Ok(n) => tracing::info!(reason = "tenant.setup_links_purged", tenant = %tenant, links = n),
        Err(e) => failed("setup_links", &e),
    }
    // The `tenant.deleted` event is in the global log, which stays.
    if let Err(e) = s.audit().purge(tenant).await {
        failed("audit_log", &e);
    }
    if let Some(hooks) = &s.provider.hooks {
        if let Err(e) = hooks.purge_tenant(tenant).await {
            failed("hooks", &e);
        }
    }
}

#[async_trait::async_trait]
impl TenantPurge for AppState {
    async fn purge_deleted_tenant(&self, tenant: &TenantId, connections: &[ConnectionId]) {
        deleted_tenant(self, tenant, connections).await;
    }
}
