//! A request's read of one tenant's configuration: every record it needs
//! under the hash tag `t:<tenant>:config` (the tenant record, the set of
//! connection ids, connection records and their incarnations) in one store
//! operation ([`Store::read_many_if_changed`]: one Lua script on Redis),
//! so a request waits on the store once for its configuration, and what it
//! sees is of one moment.
//!
//! Exactness is kept: records are kept decoded in memory
//! ([`RecordCache`]) but every use re-validates them against the stored
//! bytes' fingerprint in this request's read; nothing is answered from
//! memory without that. Which connections to read when the request names
//! none is a guess (the ids this replica last saw in the tenant's set): the
//! set is read in the same script, and any connection the guess missed is
//! read in a second script, so a wrong guess costs a round trip, never a
//! stale answer.
//!
//! [`Store::read_many_if_changed`]: crate::store::Store::read_many_if_changed

use super::{connection_incarnation_key, connection_key, connections_key, tenant_key, Tenant, TenantRegistry};
use crate::ids::{ConnectionId, TenantId};
use crate::store::record_cache::{self, RecordCache};
use crate::store::{IfChanged, Key, Probe, Probed, StoreError};
use crate::upstream::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many decoded tenant records a registry keeps.
const TENANTS_KEPT: usize = 100_000;
/// How many decoded connection records a registry keeps (keyed by
/// configuration; past this the least recently used are read again on their
/// next use). The gateway sets `[upstream] cached_connections` instead.
const CONNECTIONS_KEPT: usize = 100_000;
/// How many tenants' connection ids are remembered as the guess of which
/// connections to read.
const HINTS_KEPT: usize = 100_000;

/// The decoded configuration records a registry keeps, each re-validated by
/// the fingerprint of its stored bytes on every use. Cheap to clone (clones
/// share them).
#[derive(Clone)]
pub(crate) struct Kept {
    tenants: RecordCache<TenantId, Tenant>,
    connections: RecordCache<(TenantId, ConnectionId), Connection>,
    /// Per tenant, the connection ids last read from its set: only which
    /// keys to read, never an answer.
    hints: Arc<Mutex<HashMap<TenantId, Vec<ConnectionId>>>>,
}

impl Default for Kept {
    fn default() -> Self {
        Self::with_connections(CONNECTIONS_KEPT)
    }
}

impl Kept {
    /// Keeping at most `count` decoded connection records.
    pub(crate) fn with_connections(count: usize) -> Self {
        Self {
            tenants: RecordCache::new(TENANTS_KEPT),
            connections: RecordCache::new(count),
            hints: Arc::default(),
        }
    }

    fn hint(&self, tenant: &TenantId) -> Vec<ConnectionId> {
        self.hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    fn remember(&self, tenant: &TenantId, ids: &[ConnectionId]) {
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.len() >= HINTS_KEPT && !hints.contains_key(tenant) {
            hints.clear();
        }
        hints.insert(tenant.clone(), ids.to_vec());
    }

    /// Drops what is kept of a connection (after its deletion: only to
    /// free it at once; a deleted record is never answered anyway).
    pub(crate) fn forget_connection(&self, tenant: &TenantId, connection: &ConnectionId) {
        self.connections.forget(&(tenant.clone(), connection.clone()));
    }
}

/// Which connections a [`TenantRegistry::read_config`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Connections<'a> {
    /// None.
    None,
    /// This one (its record and incarnation).
    Named(&'a ConnectionId),
    /// Every connection in the tenant's set, and the set.
    All,
}

/// What [`TenantRegistry::read_config`] is to read.
#[derive(Debug, Clone, Copy)]
pub struct ConfigWant<'a> {
    /// The tenant record (`false` when the caller read it in this request).
    pub tenant: bool,
    /// The tenant's set of connection ids (always read with
    /// [`Connections::All`]).
    pub set: bool,
    /// Which connections.
    pub connections: Connections<'a>,
}

/// One connection as a [`ConfigSnapshot`] read it.
#[derive(Debug, Clone)]
pub struct ReadConnection {
    /// The connection id.
    pub id: ConnectionId,
    /// The record as stored now (`None`: there is none), shared with the
    /// replica's kept copy.
    pub record: Option<Arc<Connection>>,
    /// Its incarnation as stored now (empty when none is stored: a
    /// connection from before incarnations, or one being deleted).
    pub incarnation: String,
}

/// What one request read of a tenant's configuration, all of it from the
/// store in this request (records kept in memory only when the store said
/// in this read that they are unchanged).
#[derive(Debug, Clone)]
pub struct ConfigSnapshot {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The tenant record when asked for (`Some(None)`: there is none).
    pub tenant: Option<Option<Arc<Tenant>>>,
    /// The ids in the tenant's connection set, when it was asked for.
    pub connection_ids: Option<Vec<ConnectionId>>,
    /// The connections read.
    pub connections: Vec<ReadConnection>,
}

impl ConfigSnapshot {
    /// The snapshot if it is of tenant `id`.
    pub fn of<'a>(snapshot: Option<&'a ConfigSnapshot>, id: &TenantId) -> Option<&'a ConfigSnapshot> {
        snapshot.filter(|s| s.tenant_id == *id)
    }

    /// The connection `id` as read, if it was.
    pub fn connection(&self, id: &ConnectionId) -> Option<&ReadConnection> {
        self.connections.iter().find(|c| c.id == *id)
    }

    /// The tenant record read, as a [`super::FreshTenant`] for the code
    /// that takes one (`None` when not asked for or absent).
    pub fn fresh_tenant(&self) -> Option<super::FreshTenant> {
        self.tenant.clone().flatten().map(super::FreshTenant)
    }

    /// The incarnations of `tenant` (a record read in this request) and
    /// the connection `connection`, when this snapshot read the latter.
    pub fn incarnation(&self, tenant: &Tenant, connection: &ConnectionId) -> Option<super::Incarnation> {
        if tenant.id != self.tenant_id {
            return None;
        }
        self.connection(connection).map(|c| super::Incarnation {
            tenant: tenant.incarnation.clone(),
            connection: c.incarnation.clone(),
        })
    }
}

fn incarnation_of(answer: IfChanged) -> String {
    match answer {
        IfChanged::Value { value, .. } => String::from_utf8_lossy(&value).into_owned(),
        IfChanged::Absent | IfChanged::Unchanged => String::new(),
    }
}

fn read(answer: Option<Probed>) -> Result<IfChanged, StoreError> {
    match answer {
        Some(Probed::Read(a)) => Ok(a),
        _ => Err(StoreError::Corrupt(
            "read_many_if_changed: answer of another kind".into(),
        )),
    }
}

impl TenantRegistry {
    /// Reads what `want` asks of tenant `id`'s configuration in one store
    /// operation (one script over the tag `t:<id>:config`), re-validating
    /// every kept record by the fingerprint of its stored bytes. With
    /// [`Connections::All`], connections of the set that this replica did
    /// not expect are read in a second operation.
    pub async fn read_config(&self, id: &TenantId, want: ConfigWant<'_>) -> Result<ConfigSnapshot, StoreError> {
        let guessed: Vec<ConnectionId> = match want.connections {
            Connections::None => Vec::new(),
            Connections::Named(c) => vec![c.clone()],
            Connections::All => self.kept.hint(id),
        };
        let with_set = want.set || matches!(want.connections, Connections::All);
        let (tenant, connection_ids, mut connections) = self.probe(id, want.tenant, with_set, &guessed).await?;
        let connection_ids: Option<Vec<ConnectionId>> =
            connection_ids.map(|ids| ids.iter().filter_map(|c| ConnectionId::parse(c).ok()).collect());
        if let (Connections::All, Some(ids)) = (want.connections, &connection_ids) {
            // A made-up tenant id (an empty set) leaves nothing behind.
            if !ids.is_empty() || !guessed.is_empty() {
                self.kept.remember(id, ids);
            }
            let missed: Vec<ConnectionId> = ids.iter().filter(|c| !guessed.contains(c)).cloned().collect();
            if !missed.is_empty() {
                let (_, _, more) = self.probe(id, false, false, &missed).await?;
                connections.extend(more);
            }
            connections.retain(|c| ids.contains(&c.id));
        }
        Ok(ConfigSnapshot {
            tenant_id: id.clone(),
            tenant,
            connection_ids,
            connections,
        })
    }

    /// One script: the tenant record if `with_tenant`, the connection set
    /// if `with_set`, and the record and incarnation of each of `connections`.
    #[allow(clippy::type_complexity)]
    async fn probe(
        &self,
        id: &TenantId,
        with_tenant: bool,
        with_set: bool,
        connections: &[ConnectionId],
    ) -> Result<(Option<Option<Arc<Tenant>>>, Option<Vec<String>>, Vec<ReadConnection>), StoreError> {
        let kept_tenant = if with_tenant { self.kept.tenants.kept(id) } else { None };
        let kept_connections: Vec<_> = connections
            .iter()
            .map(|c| self.kept.connections.kept(&(id.clone(), c.clone())))
            .collect();
        let tenant_key = tenant_key(id);
        let set_key = connections_key(id);
        let connection_keys: Vec<(Key, Key)> = connections
            .iter()
            .map(|c| (connection_key(id, c), connection_incarnation_key(id, c)))
            .collect();
        let mut keys: Vec<(&Key, Probe<'_>)> = Vec::with_capacity(2 + 2 * connections.len());
        if with_tenant {
            keys.push((
                &tenant_key,
                Probe::IfChanged(kept_tenant.as_ref().map(|(f, _)| f.as_str())),
            ));
        }
        if with_set {
            keys.push((&set_key, Probe::Members));
        }
        for ((record, incarnation), kept) in connection_keys.iter().zip(&kept_connections) {
            keys.push((record, Probe::IfChanged(kept.as_ref().map(|(f, _)| f.as_str()))));
            keys.push((incarnation, Probe::IfChanged(None)));
        }
        let mut answers = self.store.read_many_if_changed(&keys).await?.into_iter();
        let tenant = if with_tenant {
            Some(
                self.kept
                    .tenants
                    .settle(id, kept_tenant, read(answers.next())?, record_cache::json)?,
            )
        } else {
            None
        };
        let set = if with_set {
            match answers.next() {
                Some(Probed::Members(m)) => Some(m),
                _ => {
                    return Err(StoreError::Corrupt(
                        "read_many_if_changed: answer of another kind".into(),
                    ))
                }
            }
        } else {
            None
        };
        let mut read_connections = Vec::with_capacity(connections.len());
        for (c, kept) in connections.iter().zip(kept_connections) {
            let record = self.kept.connections.settle(
                &(id.clone(), c.clone()),
                kept,
                read(answers.next())?,
                record_cache::json,
            )?;
            let incarnation = incarnation_of(read(answers.next())?);
            read_connections.push(ReadConnection {
                id: c.clone(),
                record,
                incarnation,
            });
        }
        Ok((tenant, set, read_connections))
    }

    /// The decoded copy of the tenant record this replica keeps, with the
    /// key it is stored at and the fingerprint of the stored bytes it was
    /// decoded from. Never an answer by itself: a caller uses it only with
    /// a store operation that checks the fingerprint in the same step (the
    /// edge's rate limit: `Store::rate_limit_guarded`), exactly as
    /// [`Self::tenant_record`] re-validates it.
    pub(crate) fn kept_tenant(&self, id: &TenantId) -> Option<(Key, String, Arc<Tenant>)> {
        self.kept
            .tenants
            .kept(id)
            .map(|(fingerprint, record)| (tenant_key(id), fingerprint, record))
    }

    /// The tenant record as the store holds it now, re-validated by the
    /// fingerprint of the stored bytes (one small read when unchanged).
    pub(crate) async fn tenant_record(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.kept
            .tenants
            .get(&self.store, &tenant_key(id), id, record_cache::json)
            .await
    }

    /// The connection record as the store holds it now, `None` when there
    /// is none, re-validated by the fingerprint of the stored bytes.
    pub async fn connection_record(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<Option<Arc<Connection>>, StoreError> {
        self.kept
            .connections
            .get(
                &self.store,
                &connection_key(tenant, connection),
                &(tenant.clone(), connection.clone()),
                record_cache::json,
            )
            .await
    }
}

impl TenantRegistry {
    /// The configuration an authorization request naming tenant `tenant`
    /// needs, read in one operation: the tenant record (unless `fresh` is
    /// that tenant's, read by the edge in this request), its connection
    /// set, and the connection named by `connection` or else every one,
    /// each with its incarnation. `None` when the request names no valid
    /// tenant id (a `login_hint` is resolved by domain first).
    pub async fn read_for_authorize(
        &self,
        tenant: Option<&str>,
        connection: Option<&str>,
        fresh: Option<&super::FreshTenant>,
    ) -> Option<Result<ConfigSnapshot, StoreError>> {
        let id = TenantId::parse(tenant?).ok()?;
        let with_tenant = super::FreshTenant::for_id(fresh, &id).is_none();
        Some(self.read_for_authorize_of(&id, connection, with_tenant).await)
    }

    /// [`Self::read_for_authorize`] of a valid tenant id, with its record
    /// only if `with_tenant` (the edge, which reads the record for its own
    /// limits at the same time, leaves it out).
    pub async fn read_for_authorize_of(
        &self,
        id: &TenantId,
        connection: Option<&str>,
        with_tenant: bool,
    ) -> Result<ConfigSnapshot, StoreError> {
        let named = connection.and_then(|c| ConnectionId::parse(c).ok());
        let want = ConfigWant {
            tenant: with_tenant,
            set: true,
            connections: match &named {
                Some(c) => Connections::Named(c),
                None => Connections::All,
            },
        };
        self.read_config(id, want).await
    }
}

impl TenantRegistry {
    /// What the liveness check of anything issued to a user reads of the
    /// configuration, in one operation: whether the connection `c` exists
    /// (its record is not transferred) and its incarnation (`None`: the
    /// connection is gone; empty when none is stored), and, when
    /// `with_tenant`, the tenant record, re-validated by fingerprint.
    pub async fn liveness_read(
        &self,
        id: &TenantId,
        c: &ConnectionId,
        with_tenant: bool,
    ) -> Result<(Option<Option<Arc<Tenant>>>, Option<String>), StoreError> {
        let kept_tenant = if with_tenant { self.kept.tenants.kept(id) } else { None };
        let (record_key, incarnation_key, tenant_key) =
            (connection_key(id, c), connection_incarnation_key(id, c), tenant_key(id));
        let mut keys = vec![
            (&record_key, Probe::Presence),
            (&incarnation_key, Probe::IfChanged(None)),
        ];
        if with_tenant {
            keys.push((
                &tenant_key,
                Probe::IfChanged(kept_tenant.as_ref().map(|(f, _)| f.as_str())),
            ));
        }
        let mut answers = self.store.read_many_if_changed(&keys).await?.into_iter();
        let present = match answers.next() {
            Some(Probed::Present(p)) => p,
            _ => {
                return Err(StoreError::Corrupt(
                    "read_many_if_changed: answer of another kind".into(),
                ))
            }
        };
        let incarnation = incarnation_of(read(answers.next())?);
        let tenant = if with_tenant {
            Some(
                self.kept
                    .tenants
                    .settle(id, kept_tenant, read(answers.next())?, record_cache::json)?,
            )
        } else {
            None
        };
        Ok((tenant, present.then_some(incarnation)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Probe, Probed, SharedStore, Store};
    use crate::upstream::{dev::DevConfig, ConnectionKind, ConnectionStatus};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory store counting its `read_many_if_changed` operations.
    struct Counted {
        inner: crate::store::memory::MemoryStore,
        scripts: AtomicUsize,
    }

    fn counted() -> (Arc<Counted>, TenantRegistry) {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let store = Arc::new(Counted {
            inner: crate::store::memory::MemoryStore::new(clock.clone()),
            scripts: AtomicUsize::new(0),
        });
        let registry = TenantRegistry::new(store.clone() as SharedStore, clock);
        (store, registry)
    }

    fn dev(tenant: &TenantId, id: &str) -> Connection {
        Connection {
            id: ConnectionId::parse(id).unwrap(),
            tenant: tenant.clone(),
            revision: 1,
            status: ConnectionStatus::Active,
            disabled_by_platform: false,
            kind: ConnectionKind::Dev(DevConfig {}),
        }
    }

    fn all() -> ConfigWant<'static> {
        ConfigWant {
            tenant: true,
            set: true,
            connections: Connections::All,
        }
    }

    fn ids(s: &ConfigSnapshot) -> Vec<&str> {
        s.connections.iter().map(|c| c.id.as_str()).collect()
    }

    #[tokio::test]
    async fn one_script_reads_what_the_store_holds_now_and_a_wrong_guess_costs_one_more() {
        let (store, registry) = counted();
        let t = TenantId::parse("acme").unwrap();
        registry.create(t.clone(), "Acme".into(), Vec::new()).await.unwrap();
        registry.add_connection(&dev(&t, "one")).await.unwrap();
        let scripts = || store.scripts.swap(0, Ordering::SeqCst);

        // Nothing guessed yet: the set, then the connection it names.
        let s = registry.read_config(&t, all()).await.unwrap();
        assert_eq!(scripts(), 2);
        assert_eq!(ids(&s), ["one"]);
        let read = s.connection(&ConnectionId::parse("one").unwrap()).unwrap();
        assert!(read.record.is_some());
        assert!(!read.incarnation.is_empty(), "read with the record");
        let tenant = s.tenant.clone().flatten().unwrap();
        assert_eq!(
            s.incarnation(&tenant, &read.id).unwrap().tenant,
            tenant.incarnation,
            "the tenant's incarnation with the connection's"
        );
        // Guessed right: one script, answered from the copies the store vouched for.
        let again = registry.read_config(&t, all()).await.unwrap();
        assert_eq!(scripts(), 1);
        assert_eq!(ids(&again), ["one"]);
        assert_eq!(again.tenant, s.tenant);

        // Changed elsewhere (another registry, as another replica): seen at once.
        let elsewhere = TenantRegistry::new(store.clone() as SharedStore, Arc::new(crate::clock::SystemClock));
        elsewhere.add_connection(&dev(&t, "two")).await.unwrap();
        elsewhere.set_require_mfa(&t, true).await.unwrap();
        let s = registry.read_config(&t, all()).await.unwrap();
        assert_eq!(scripts(), 2, "the connection the guess missed, in a second script");
        assert_eq!(ids(&s), ["one", "two"]);
        assert!(s.tenant.clone().flatten().unwrap().settings.require_mfa);
        elsewhere
            .delete_connection(&t, &ConnectionId::parse("one").unwrap())
            .await
            .unwrap();
        let s = registry.read_config(&t, all()).await.unwrap();
        assert_eq!(scripts(), 1);
        assert_eq!(ids(&s), ["two"], "a deleted connection is gone at once");
        assert_eq!(
            s.connection_ids.as_deref(),
            Some([ConnectionId::parse("two").unwrap()].as_slice())
        );

        // A named connection that does not exist: absent, with no incarnation.
        let gone = ConnectionId::parse("one").unwrap();
        let want = ConfigWant {
            tenant: false,
            set: false,
            connections: Connections::Named(&gone),
        };
        let s = registry.read_config(&t, want).await.unwrap();
        assert_eq!(scripts(), 1);
        assert!(s.tenant.is_none() && s.connection_ids.is_none());
        let read = s.connection(&gone).unwrap();
        assert!(read.record.is_none() && read.incarnation.is_empty());

        // The liveness read: presence and incarnation, with the tenant.
        let (tenant, incarnation) = registry
            .liveness_read(&t, &ConnectionId::parse("two").unwrap(), true)
            .await
            .unwrap();
        assert!(tenant.flatten().is_some());
        assert!(incarnation.is_some_and(|i| !i.is_empty()));
        let (_, incarnation) = registry.liveness_read(&t, &gone, false).await.unwrap();
        assert_eq!(incarnation, None, "a deleted connection is gone");
    }

    #[async_trait::async_trait]
    impl crate::store::StoreLayer for Counted {
        // `exists`, `fingerprint` and the chained and guarded rate limits are
        // made of this store's own calls (`Store`'s default bodies).
        const FORWARD_DEFAULTED: bool = false;

        fn inner(&self) -> &dyn Store {
            &self.inner
        }

        async fn read_many_if_changed(&self, keys: &[(&Key, Probe<'_>)]) -> Result<Vec<Probed>, StoreError> {
            self.scripts.fetch_add(1, Ordering::SeqCst);
            self.inner.read_many_if_changed(keys).await
        }
    }
}
