//! Built connectors and the connection records they were built from, kept
//! in memory per `(tenant, connection)` and re-validated against the store
//! on every use, so a replica never serves a connection that was changed or
//! deleted elsewhere.
//!
//! A connection record (metadata and certificates included) is several KB;
//! reading and decoding it on every `/authorize` and callback only to learn
//! that it did not change cost more than anything else the store did for a
//! sign-in. So the record is re-validated by its fingerprint
//! ([`Store::fingerprint`]: the SHA-1 of the stored bytes, computed by
//! Redis, 40 bytes on the wire) read in the request: when it matches the
//! fingerprint of the copy kept here, that copy is byte for byte what the
//! store holds now; otherwise the record is read again.

use crate::ids::{ConnectionId, TenantId};
use crate::store::{SharedStore, StoreError};
use crate::tenant::{RegistryError, TenantRegistry};
use crate::upstream::{self, Connection, Connector, UpstreamContext, UpstreamError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entry = (u64, Arc<dyn Connector>);

/// A connection record with the fingerprint of the stored bytes it was
/// decoded from.
type Record = (String, Connection);

/// The cache. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConnectorCache {
    inner: Arc<Mutex<HashMap<(TenantId, ConnectionId), Entry>>>,
    records: Arc<Mutex<HashMap<(TenantId, ConnectionId), Record>>>,
}

fn store_error(e: RegistryError) -> StoreError {
    match e {
        RegistryError::Store(s) => s,
        other => StoreError::Corrupt(other.to_string()),
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
    /// is none. Reads the record's fingerprint in this request; the copy
    /// kept in memory is answered only when its fingerprint is the one just
    /// read (so it is the stored record, byte for byte), otherwise the
    /// record is read (and kept when its fingerprint did not move while it
    /// was read).
    pub async fn record(
        &self,
        tenants: &TenantRegistry,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<Option<Connection>, StoreError> {
        let store: &SharedStore = tenants.store();
        let key = crate::tenant::connection_key(tenant, connection);
        let map_key = (tenant.clone(), connection.clone());
        let Some(fingerprint) = store.fingerprint(&key).await? else {
            self.forget(tenant, connection);
            return Ok(None);
        };
        {
            let map = self.records.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((kept, record)) = map.get(&map_key) {
                if *kept == fingerprint {
                    return Ok(Some(record.clone()));
                }
            }
        }
        let Some(record) = tenants.connection(tenant, connection).await.map_err(store_error)? else {
            self.forget(tenant, connection);
            return Ok(None);
        };
        // Kept only if nothing was written between the two fingerprints:
        // then the record read is the one the first fingerprint names.
        // Either way this request uses the record it read.
        if store.fingerprint(&key).await?.as_deref() == Some(fingerprint.as_str()) {
            let mut map = self.records.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(map_key, (fingerprint, record.clone()));
        }
        Ok(Some(record))
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
        self.records.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}
