//! A `tower_sessions::SessionStore` on top of [`super::Store`], so browser
//! sessions use the same store (and Redis client) as everything else.

use super::{Key, SharedStore};
use crate::clock::SharedClock;
use async_trait::async_trait;
use std::time::Duration;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result as StoreResult, SessionStore};

/// Browser sessions in the shared store.
#[derive(Clone)]
pub struct StoreSessionStore {
    store: SharedStore,
    clock: SharedClock,
}

impl std::fmt::Debug for StoreSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSessionStore")
    }
}

impl StoreSessionStore {
    /// Sessions in `store`, expiring by `clock`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    fn ttl(&self, record: &Record) -> Duration {
        let left = record.expiry_date.unix_timestamp() - self.clock.unix();
        Duration::from_secs(left.max(1).unsigned_abs())
    }
}

fn key(id: &Id) -> Key {
    Key::global("session", id.to_string())
}

#[async_trait]
impl SessionStore for StoreSessionStore {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        for _ in 0..8 {
            let bytes = serde_json::to_vec(&*record).map_err(|e| Error::Encode(e.to_string()))?;
            if self
                .store
                .put_if_absent(&key(&record.id), &bytes, Some(self.ttl(record)))
                .await
                .map_err(|e| Error::Backend(e.to_string()))?
            {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(Error::Backend("could not allocate a session id".into()))
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Encode(e.to_string()))?;
        self.store
            .put(&key(&record.id), &bytes, Some(self.ttl(record)))
            .await
            .map_err(|e| Error::Backend(e.to_string()))
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let Some(bytes) = self.store.get(&key(id)).await.map_err(|e| Error::Backend(e.to_string()))? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((record.expiry_date.unix_timestamp() > self.clock.unix()).then_some(record))
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        self.store.delete(&key(id)).await.map(|_| ()).map_err(|e| Error::Backend(e.to_string()))
    }
}
