//! A cache of built connectors, keyed by tenant and connection and checked
//! against the stored revision on every use, so a replica never serves a
//! connection that was changed or deleted elsewhere.

use crate::ids::{ConnectionId, TenantId};
use crate::tenant::TenantRegistry;
use crate::upstream::{self, Connection, Connector, UpstreamContext, UpstreamError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entry = (u64, Arc<dyn Connector>);

/// The cache. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConnectorCache {
    inner: Arc<Mutex<HashMap<(TenantId, ConnectionId), Entry>>>,
}

impl ConnectorCache {
    /// The connector for `(tenant, connection)`, built if absent or stale.
    pub async fn get(
        &self,
        tenants: &TenantRegistry,
        ctx: &UpstreamContext,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<Arc<dyn Connector>, UpstreamError> {
        Ok(self.get_with_record(tenants, ctx, tenant, connection).await?.0)
    }

    /// Like [`Self::get`], and also answers the stored record the connector
    /// was checked against, so that the request reads it once (its status,
    /// for instance, needs no second read).
    pub async fn get_with_record(
        &self,
        tenants: &TenantRegistry,
        ctx: &UpstreamContext,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<(Arc<dyn Connector>, Connection), UpstreamError> {
        let stored = tenants
            .connection(tenant, connection)
            .await
            .map_err(|e| UpstreamError::store(&e))?
            .ok_or_else(|| {
                UpstreamError::reject(
                    "callback.unknown_connection",
                    "This sign-in connection does not exist (any more).",
                    format!("no connection {tenant}/{connection}"),
                )
            })?;
        let built = self.for_record(&stored, ctx)?;
        Ok((built, stored))
    }

    /// The connector for `stored`, a record the caller has just read from
    /// the store in this request: the cached connector when it was built
    /// from the same revision, else a new one. The record must be fresh
    /// (read for this request), never one kept in memory: that read is what
    /// re-validates the cache.
    pub fn for_record(&self, stored: &Connection, ctx: &UpstreamContext) -> Result<Arc<dyn Connector>, UpstreamError> {
        let key = (stored.tenant.clone(), stored.id.clone());
        {
            let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((rev, c)) = map.get(&key) {
                if *rev == stored.revision {
                    return Ok(c.clone());
                }
            }
        }
        let built = upstream::build(stored, ctx)?;
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key, (stored.revision, built.clone()));
        Ok(built)
    }

    /// Drops a cached connector (after a delete).
    pub fn forget(&self, tenant: &TenantId, connection: &ConnectionId) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(tenant.clone(), connection.clone()));
    }
}
