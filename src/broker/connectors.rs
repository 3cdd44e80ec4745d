//! Built connectors and the connection records they were built from, kept
//! in memory per `(tenant, connection)` and re-validated against the store
//! on every use, so a replica never serves a connection that was changed or
//! deleted elsewhere.
//!
//! A connection record (metadata and certificates included) is several KB,
//! so the decoded record is kept by the tenant registry and re-validated by
//! the fingerprint of the stored bytes read in the request (see
//! `store::record_cache` and `tenant::snapshot`).
//!
//! The cache is bounded (`[upstream] cached_connections`): a built SAML
//! connector holds its IdP's keys in xmlsec and openssl, several KB, and
//! a replica serving every tenant of a large deployment, or outliving
//! connections deleted through another replica, would otherwise keep one
//! for every connection it ever served. Past the bound the least recently
//! used are dropped ([`Lru`]); a dropped connector is built again at its
//! next use, as after a change.

use crate::ids::{ConnectionId, TenantId};
use crate::lru::Lru;
use crate::store::StoreError;
use crate::tenant::snapshot::{ConfigSnapshot, ConfigWant, Connections};
use crate::tenant::TenantRegistry;
use crate::upstream::{self, Connection, Connector, UpstreamContext, UpstreamError};
use std::sync::{Arc, Mutex};

/// How many built connectors a replica keeps unless configured otherwise
/// (`[upstream] cached_connections`).
pub const DEFAULT_CAPACITY: usize = 10_000;

type Key = (TenantId, ConnectionId);

/// One built connector and the revision it was built from.
struct Entry {
    revision: u64,
    connector: Arc<dyn Connector>,
}

/// The cache. Cheap to clone (clones share the entries).
#[derive(Clone)]
pub struct ConnectorCache {
    inner: Arc<Mutex<Lru<Key, Entry>>>,
}

impl Default for ConnectorCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ConnectorCache {
    /// An empty cache keeping at most `capacity` built connectors (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Lru::new(capacity))),
        }
    }

    /// How many built connectors are kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most kept at once.
    pub fn capacity(&self) -> usize {
        self.lock().capacity()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<Key, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

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
    ) -> Result<(Arc<dyn Connector>, Arc<Connection>), UpstreamError> {
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
    ) -> Result<Option<Arc<Connection>>, StoreError> {
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
    ) -> Result<(Arc<dyn Connector>, Arc<Connection>, ConfigSnapshot), UpstreamError> {
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
        if let Some(entry) = self.lock().get(&key) {
            if entry.revision == stored.revision {
                return Ok(entry.connector.clone());
            }
        }
        let built = upstream::build(stored, ctx)?;
        crate::meter::connector_built();
        let entry = Entry {
            revision: stored.revision,
            connector: built.clone(),
        };
        let dropped = self.lock().insert(key, entry);
        if dropped > 0 {
            crate::meter::connectors_evicted(dropped);
        }
        Ok(built)
    }

    /// Drops a cached connector and record (after a delete).
    pub fn forget(&self, tenant: &TenantId, connection: &ConnectionId) {
        let key = (tenant.clone(), connection.clone());
        self.lock().remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::upstream::dev::DevConfig;
    use crate::upstream::http::{OutboundConfig, OutboundHttp};
    use crate::upstream::{ConnectionKind, ConnectionStatus};

    fn ctx() -> UpstreamContext {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        UpstreamContext {
            http: OutboundHttp::new(OutboundConfig::default()).unwrap(),
            clock: clock.clone(),
            store: Arc::new(MemoryStore::new(clock)),
            public_url: url::Url::parse("https://sso.example.test/").unwrap(),
            clock_skew_secs: 60,
            saml_in_place_bytes: 0,
        }
    }

    fn dev(n: usize, revision: u64) -> Connection {
        Connection {
            id: ConnectionId::parse(&format!("c{n}")).unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            revision,
            status: ConnectionStatus::Active,
            disabled_by_platform: false,
            kind: ConnectionKind::Dev(DevConfig {}),
        }
    }

    #[test]
    fn a_full_cache_drops_its_least_recently_used_sixteenth() {
        let (cache, ctx) = (ConnectorCache::new(32), ctx());
        let first: Vec<_> = (0..32).map(|n| cache.for_record(&dev(n, 1), &ctx).unwrap()).collect();
        assert_eq!(cache.len(), 32);
        // c0..c15 used again: c16 and c17 are now the least recently used.
        for (n, built) in first.iter().enumerate().take(16) {
            assert!(Arc::ptr_eq(&cache.for_record(&dev(n, 1), &ctx).unwrap(), built));
        }
        cache.for_record(&dev(32, 1), &ctx).unwrap();
        assert_eq!(cache.len(), 31, "32 / 16 = 2 dropped, 1 added");
        for n in (0..16).chain(18..32) {
            assert!(
                Arc::ptr_eq(&cache.for_record(&dev(n, 1), &ctx).unwrap(), &first[n]),
                "c{n} was kept"
            );
        }
        for n in [16, 17] {
            assert!(
                !Arc::ptr_eq(&cache.for_record(&dev(n, 1), &ctx).unwrap(), &first[n]),
                "c{n} was dropped and built again"
            );
        }
        assert!(cache.len() <= 32);
    }

    #[test]
    fn a_changed_revision_replaces_its_entry_and_drops_nothing_else() {
        let (cache, ctx) = (ConnectorCache::new(2), ctx());
        let a = cache.for_record(&dev(0, 1), &ctx).unwrap();
        let b = cache.for_record(&dev(1, 1), &ctx).unwrap();
        let a2 = cache.for_record(&dev(0, 2), &ctx).unwrap();
        assert!(!Arc::ptr_eq(&a, &a2), "a new revision is built again");
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&cache.for_record(&dev(1, 1), &ctx).unwrap(), &b));
        assert!(Arc::ptr_eq(&cache.for_record(&dev(0, 2), &ctx).unwrap(), &a2));
    }

    #[test]
    fn a_cache_of_one_keeps_the_last_used() {
        let (cache, ctx) = (ConnectorCache::new(0), ctx());
        assert_eq!(cache.capacity(), 1);
        let a = cache.for_record(&dev(0, 1), &ctx).unwrap();
        assert!(Arc::ptr_eq(&cache.for_record(&dev(0, 1), &ctx).unwrap(), &a));
        cache.for_record(&dev(1, 1), &ctx).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(!Arc::ptr_eq(&cache.for_record(&dev(0, 1), &ctx).unwrap(), &a));
        cache.forget(&TenantId::parse("acme").unwrap(), &ConnectionId::parse("c0").unwrap());
        assert!(cache.is_empty());
    }
}
