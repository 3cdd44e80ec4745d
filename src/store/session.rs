//! A `tower_sessions::SessionStore` on top of [`super::Store`], so browser
//! sessions use the same Redis client (and the same in-memory fallback) as
//! everything else, and one crate talks to Redis in the whole binary.
//!
//! Records are JSON under `Key::new("g:session:<id>", "record")`. Their TTL is the
//! record's expiry measured against the injected clock, and a record whose
//! expiry has passed is never returned, whatever the backend still holds.

use super::{Key, SharedStore, StoreError};
use crate::clock::SharedClock;
use async_trait::async_trait;
use std::time::Duration;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

/// How many fresh ids `create` tries before giving up. Ids are 128 random
/// bits, so a second attempt already means something is badly wrong.
const CREATE_ATTEMPTS: usize = 4;

/// Browser sessions kept in a [`super::Store`].
#[derive(Clone)]
pub struct StoreSessionStore {
    store: SharedStore,
    clock: SharedClock,
}

impl std::fmt::Debug for StoreSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSessionStore").finish_non_exhaustive()
    }
}

impl StoreSessionStore {
    /// Sessions in `store`, expiring according to `clock`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    fn key(id: &Id) -> Key {
        // One hash tag per session: sessions are single-key, so they spread over
        // a Redis Cluster instead of piling into one slot.
        Key::new(format!("g:session:{id}"), "record")
    }

    /// Time left until the record expires, or `None` when it already has.
    fn ttl(&self, record: &Record) -> Option<Duration> {
        let expiry_ms = record.expiry_date.unix_timestamp_nanos() / 1_000_000;
        let now_ms = i128::from(self.clock.now().timestamp_millis());
        let left = expiry_ms - now_ms;
        (left > 0).then(|| Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX)))
    }
}

fn backend(e: StoreError) -> session_store::Error {
    match e {
        StoreError::Unavailable(m) => session_store::Error::Backend(m),
        StoreError::Corrupt(m) => session_store::Error::Decode(m),
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, session_store::Error> {
    serde_json::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))
}

#[async_trait]
impl SessionStore for StoreSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let Some(ttl) = self.ttl(record) else {
            // Nothing to keep: a record born expired would never load anyway.
            return Ok(());
        };
        for _ in 0..CREATE_ATTEMPTS {
            let value = encode(record)?;
            let written = self
                .store
                .put_if_absent(&Self::key(&record.id), &value, Some(ttl))
                .await
                .map_err(backend)?;
            if written {
                return Ok(());
            }
            // Never overwrite someone else's session: pick another id.
            tracing::warn!(
                reason = "session.id_collision",
                "session id already in use, regenerating"
            );
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not allocate an unused session id".to_owned(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = Self::key(&record.id);
        match self.ttl(record) {
            Some(ttl) => self.store.put(&key, &encode(record)?, Some(ttl)).await.map_err(backend),
            None => self.store.delete(&key).await.map(|_| ()).map_err(backend),
        }
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let Some(bytes) = self.store.get(&Self::key(session_id)).await.map_err(backend)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        if record.id != *session_id {
            return Err(session_store::Error::Decode(
                "session record is filed under another id".to_owned(),
            ));
        }
        if self.ttl(&record).is_none() {
            return Ok(None);
        }
        Ok(Some(record))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.store
            .delete(&Self::key(session_id))
            .await
            .map(|_| ())
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::memory::MemoryStore;
    use crate::store::Store;
    use std::sync::Arc;
    use tower_sessions::cookie::time::OffsetDateTime;

    struct Fixture {
        clock: ManualClock,
        store: Arc<MemoryStore>,
        sessions: StoreSessionStore,
    }

    fn fixture() -> Fixture {
        let clock = ManualClock::at(
            chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
        );
        let shared: SharedClock = Arc::new(clock.clone());
        let store = Arc::new(MemoryStore::new(shared.clone()));
        let sessions = StoreSessionStore::new(store.clone(), shared);
        Fixture { clock, store, sessions }
    }

    fn record(f: &Fixture, id: i128, valid_for_secs: i64, value: &str) -> Record {
        let expiry = OffsetDateTime::from_unix_timestamp(f.clock.now().timestamp() + valid_for_secs).unwrap();
        let mut data = std::collections::HashMap::new();
        data.insert("who".to_owned(), serde_json::json!(value));
        Record {
            id: Id(id),
            data,
            expiry_date: expiry,
        }
    }

    #[tokio::test]
    async fn create_then_load_roundtrips() {
        let f = fixture();
        let mut r = record(&f, 7, 600, "alice");
        f.sessions.create(&mut r).await.unwrap();
        assert_eq!(f.sessions.load(&r.id).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn create_never_overwrites_an_existing_id() {
        let f = fixture();
        let mut first = record(&f, 7, 600, "alice");
        f.sessions.create(&mut first).await.unwrap();
        let mut second = record(&f, 7, 600, "mallory");
        f.sessions.create(&mut second).await.unwrap();
        assert_ne!(second.id, Id(7), "the colliding id must be replaced");
        assert_eq!(f.sessions.load(&Id(7)).await.unwrap(), Some(first));
        assert_eq!(f.sessions.load(&second.id).await.unwrap(), Some(second));
    }

    #[tokio::test]
    async fn save_replaces_the_record() {
        let f = fixture();
        let mut r = record(&f, 9, 600, "alice");
        f.sessions.create(&mut r).await.unwrap();
        let updated = record(&f, 9, 1200, "alice-updated");
        f.sessions.save(&updated).await.unwrap();
        assert_eq!(f.sessions.load(&Id(9)).await.unwrap(), Some(updated));
    }

    #[tokio::test]
    async fn the_store_ttl_follows_the_record_expiry() {
        let f = fixture();
        let mut r = record(&f, 3, 600, "alice");
        f.sessions.create(&mut r).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(599));
        assert!(f.store.get(&StoreSessionStore::key(&Id(3))).await.unwrap().is_some());
        f.clock.advance(chrono::Duration::seconds(2));
        assert!(f.store.get(&StoreSessionStore::key(&Id(3))).await.unwrap().is_none());
        assert_eq!(f.sessions.load(&Id(3)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_expired_record_is_not_returned_even_if_still_stored() {
        let f = fixture();
        let r = record(&f, 4, 60, "alice");
        // Stored with a longer TTL than the record itself allows.
        f.store
            .put(
                &StoreSessionStore::key(&Id(4)),
                &serde_json::to_vec(&r).unwrap(),
                Some(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        f.clock.advance(chrono::Duration::seconds(61));
        assert_eq!(f.sessions.load(&Id(4)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn saving_an_expired_record_deletes_it() {
        let f = fixture();
        let mut r = record(&f, 5, 600, "alice");
        f.sessions.create(&mut r).await.unwrap();
        let expired = record(&f, 5, -1, "alice");
        f.sessions.save(&expired).await.unwrap();
        assert!(f.store.get(&StoreSessionStore::key(&Id(5))).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_record_under_another_id_is_rejected() {
        let f = fixture();
        let r = record(&f, 6, 600, "alice");
        f.store
            .put(
                &StoreSessionStore::key(&Id(66)),
                &serde_json::to_vec(&r).unwrap(),
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        let err = f.sessions.load(&Id(66)).await.unwrap_err();
        assert!(matches!(err, session_store::Error::Decode(_)));
    }

    #[tokio::test]
    async fn delete_removes_the_record() {
        let f = fixture();
        let mut r = record(&f, 8, 600, "alice");
        f.sessions.create(&mut r).await.unwrap();
        f.sessions.delete(&Id(8)).await.unwrap();
        assert_eq!(f.sessions.load(&Id(8)).await.unwrap(), None);
        assert_eq!(f.sessions.load(&Id(12345)).await.unwrap(), None);
    }
}
