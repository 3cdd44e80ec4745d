//! Built connectors and the connection records they were built from, kept
//! in memory per `(tenant, connection)` and re-validated against the store
//! on every use, so a replica never serves a connection that was changed or
//! deleted elsewhere.
//!
//! A connection record (metadata and certificates included) is several KB,
//! so the decoded record is kept in a [`RecordCache`] and re-validated by
//! the fingerprint of the stored bytes read in the request (see
//! `store::record_cache`).

use crate::ids::{ConnectionId, TenantId};
use crate::store::record_cache::RecordCache;
use crate::store::StoreError;
use crate::tenant::TenantRegistry;
use crate::upstream::{self, Connection, Connector, UpstreamContext, UpstreamError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entry = (u64, Arc<dyn Connector>);

/// How many decoded connection records are kept (keyed by configuration;
/// past this an arbitrary one is read again on its next use).
const RECORDS_KEPT: usize = 100_000;

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct ConnectorCache {
    inner: Arc<Mutex<HashMap<(TenantId, ConnectionId), Entry>>>,
    records: RecordCache<(TenantId, ConnectionId), Connection>,
}

impl Default for ConnectorCache {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            records: RecordCache::new(RECORDS_KEPT),
        }
    }
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
    /// ([`RecordCache::get`]), read only when it changed.
    pub async fn record(
        &self,
        tenants: &TenantRegistry,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<Option<Connection>, StoreError> {
        let key = crate::tenant::connection_key(tenant, connection);
        let id = (tenant.clone(), connection.clone());
        self.records
            .get(tenants.store(), &key, &id, crate::store::record_cache::json)
            .await
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
        self.records.forget(&key);
    }
}
