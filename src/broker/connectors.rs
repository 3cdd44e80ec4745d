//! Built connectors and the connection records they were built from, kept
//! in memory per `(tenant, connection)` and re-validated against the store
//! on every use, so a replica never serves a connection that was changed or
//! deleted elsewhere.
//!
//! A connection record (metadata and certificates included) is several KB,
//! so the decoded record is kept by the tenant registry and re-validated by
//! the fingerprint of the stored bytes read in the request (see
//! `store::record_cache` and `tenant::snapshot`).

use crate::ids::{ConnectionId, TenantId};
use crate::store::StoreError;
use crate::tenant::snapshot::{ConfigSnapshot, ConfigWant, Connections};
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
        let stored = self
            .record(tenants, tenant, connection)
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

    /// The connection record as the store holds it now, `None` when there
    /// is none: re-validated by the fingerprint read in this request
    /// ([`TenantRegistry::connection_record`]), read only when it changed.
    pub async fn record(
        &self,
        tenants: &TenantRegistry,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<Option<Connection>, StoreError> {
        tenants.connection_record(tenant, connection).await
    }

    /// Like [`Self::get_with_record`], and in the same store operation
    /// (one script over the tenant's configuration tag) also reads the
    /// connection's incarnation and, when `with_tenant`, the tenant record:
    /// a callback's whole configuration in one round trip.
    pub async fn get_with_config(
        &self,
        tenants: &TenantRegistry,
        ctx: &UpstreamContext,
        tenant: &TenantId,
        connection: &ConnectionId,
        with_tenant: bool,
    ) -> Result<(Arc<dyn Connector>, Connection, ConfigSnapshot), UpstreamError> {
        let want = ConfigWant {
            tenant: with_tenant,
            set: false,
            connections: Connections::Named(connection),
        };
        let snapshot = tenants
            .read_config(tenant, want)
            .await
            .map_err(|e| UpstreamError::store(&e))?;
        let stored = snapshot
            .connection(connection)
            .and_then(|c| c.record.clone())
            .ok_or_else(|| {
                UpstreamError::reject(
                    "callback.unknown_connection",
                    "This sign-in connection does not exist (any more).",
                    format!("no connection {tenant}/{connection}"),
                )
            })?;
        let built = self.for_record(&stored, ctx)?;
        Ok((built, stored, snapshot))
    }

    /// The connector for `stored`, a record the caller has obtained in this
    /// request (read from the store, or [`Self::record`], re-validated by
    /// the fingerprint read in this request): the cached connector when it
    /// was built from the same revision, else a new one. Never a record
    /// kept elsewhere in memory: that read is what re-validates the cache.
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

    /// Drops a cached connector and record (after a delete).
    pub fn forget(&self, tenant: &TenantId, connection: &ConnectionId) {
        let key = (tenant.clone(), connection.clone());
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}
