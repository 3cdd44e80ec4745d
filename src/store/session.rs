//! A `tower_sessions::SessionStore` on top of [`super::Store`], so browser
//! sessions use the same Redis client (and the same in-memory fallback) as
//! everything else, and one crate talks to Redis in the whole binary.
//!
//! Records are JSON under `Key::new("g:session:<id>", "record")`, wrapped with
//! their own expiry instant. That instant is the injected clock's "now" plus
//! the configured inactivity lifetime at each save; tower-sessions'
//! `expiry_date` is computed from the wall clock and is ignored here, so the
//! sessions' lifetime follows the same clock as everything else (tests with a
//! manual clock see the sessions they create). A record whose expiry has
//! passed is never returned, whatever the backend still holds.
//!
//! A handler may save its session itself, alongside other store work
//! (`http::flows::session_alongside`); the session layer then saves it again
//! after the handler, as it does for every modified session. Inside
//! [`request_scope`] that second save is skipped when it would write what
//! this request already wrote under the same id: one store wait less, and
//! the same record.

use super::{Key, SharedStore, StoreError};
use crate::clock::SharedClock;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

/// How many fresh ids `create` tries before giving up. Ids are 128 random
/// bits, so a second attempt already means something is badly wrong.
const CREATE_ATTEMPTS: usize = 4;

tokio::task_local! {
    /// What the current request last wrote of its browser session: the id
    /// and the data.
    static WRITTEN: RefCell<Option<(Id, HashMap<String, serde_json::Value>)>>;
}

/// Runs `request` (a request through the session layer) with a record of
/// what it writes of its session, so that the layer's save after the
/// handler skips a record the handler already wrote, unchanged.
///
/// Not an `async fn`, which would keep `request` twice in its state.
pub fn request_scope<F: std::future::Future>(request: F) -> impl std::future::Future<Output = F::Output> {
    WRITTEN.scope(RefCell::new(None), request)
}

/// Notes that `record` was written in this request (outside a
/// [`request_scope`], nothing is noted and nothing skipped).
fn note_written(record: &Record) {
    let _ = WRITTEN.try_with(|w| *w.borrow_mut() = Some((record.id, record.data.clone())));
}

/// Forgets what this request wrote under `id` (deleted since).
fn forget_written(id: &Id) {
    let _ = WRITTEN.try_with(|w| {
        let mut w = w.borrow_mut();
        if w.as_ref().is_some_and(|(written, _)| written == id) {
            *w = None;
        }
    });
}

/// Whether this request already wrote `record` as it is now.
fn already_written(record: &Record) -> bool {
    WRITTEN
        .try_with(|w| {
            w.borrow()
                .as_ref()
                .is_some_and(|(id, data)| *id == record.id && *data == record.data)
        })
        .unwrap_or(false)
}

/// Browser sessions kept in a [`super::Store`].
#[derive(Clone)]
pub struct StoreSessionStore {
    store: SharedStore,
    clock: SharedClock,
    lifetime: Duration,
}

/// What is stored: the record and when it expires (injected clock, Unix ms).
#[derive(Serialize, Deserialize)]
struct Stored {
    record: Record,
    expires_at_ms: i64,
}

impl std::fmt::Debug for StoreSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSessionStore").finish_non_exhaustive()
    }
}

impl StoreSessionStore {
    /// Sessions in `store` that expire `lifetime` after their last save,
    /// measured by `clock`.
    pub fn new(store: SharedStore, clock: SharedClock, lifetime: Duration) -> Self {
        Self { store, clock, lifetime }
    }

    fn key(id: &Id) -> Key {
        // One hash tag per session: sessions are single-key, so they spread over
        // a Redis Cluster instead of piling into one slot.
        Key::new(format!("g:session:{id}"), "record")
    }

    /// The record wrapped with its expiry: the configured lifetime from now.
    fn encode(&self, record: &Record) -> Result<Vec<u8>, session_store::Error> {
        let lifetime_ms = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        let stored = Stored {
            record: record.clone(),
            expires_at_ms: self.clock.now().timestamp_millis().saturating_add(lifetime_ms),
        };
        serde_json::to_vec(&stored).map_err(|e| session_store::Error::Encode(e.to_string()))
    }
}

fn backend(e: StoreError) -> session_store::Error {
    match e {
        StoreError::Unavailable(m) => session_store::Error::Backend(m),
        StoreError::Corrupt(m) => session_store::Error::Decode(m),
    }
}

#[async_trait]
impl SessionStore for StoreSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        for _ in 0..CREATE_ATTEMPTS {
            let value = self.encode(record)?;
            let written = self
                .store
                .put_if_absent(&Self::key(&record.id), &value, Some(self.lifetime))
                .await
                .map_err(backend)?;
            if written {
                note_written(record);
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
        if already_written(record) {
            return Ok(());
        }
        self.store
            .put(&Self::key(&record.id), &self.encode(record)?, Some(self.lifetime))
            .await
            .map_err(backend)?;
        note_written(record);
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let Some(bytes) = self.store.get(&Self::key(session_id)).await.map_err(backend)? else {
            return Ok(None);
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        if stored.record.id != *session_id {
            return Err(session_store::Error::Decode(
                "session record is filed under another id".to_owned(),
            ));
        }
        if stored.expires_at_ms <= self.clock.now().timestamp_millis() {
            return Ok(None);
        }
        Ok(Some(stored.record))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        forget_written(session_id);
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

    const LIFETIME: Duration = Duration::from_secs(600);

    struct Fixture {
        clock: ManualClock,
        store: Arc<MemoryStore>,
        sessions: StoreSessionStore,
    }

    /// A manual clock far from the wall clock (2040), as tests use.
    fn fixture() -> Fixture {
        let clock = ManualClock::at(
            chrono::DateTime::parse_from_rfc3339("2040-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
        );
        let shared: SharedClock = Arc::new(clock.clone());
        let store = Arc::new(MemoryStore::new(shared.clone()));
        let sessions = StoreSessionStore::new(store.clone(), shared, LIFETIME);
        Fixture { clock, store, sessions }
    }

    /// A record as tower-sessions makes it: `expiry_date` from the wall clock.
    fn record(id: i128, value: &str) -> Record {
        let mut data = std::collections::HashMap::new();
        data.insert("who".to_owned(), serde_json::json!(value));
        Record {
            id: Id(id),
            data,
            expiry_date: OffsetDateTime::now_utc() + tower_sessions::cookie::time::Duration::seconds(600),
        }
    }

    fn wrapped(r: &Record, expires_at_ms: i64) -> Vec<u8> {
        serde_json::to_vec(&Stored {
            record: r.clone(),
            expires_at_ms,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn create_then_load_roundtrips_under_a_manual_clock_far_from_the_wall_clock() {
        let f = fixture();
        let mut r = record(7, "alice");
        f.sessions.create(&mut r).await.unwrap();
        assert!(
            f.store.get(&StoreSessionStore::key(&r.id)).await.unwrap().is_some(),
            "the record must really be stored"
        );
        assert_eq!(f.sessions.load(&r.id).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn create_never_overwrites_an_existing_id() {
        let f = fixture();
        let mut first = record(7, "alice");
        f.sessions.create(&mut first).await.unwrap();
        let mut second = record(7, "mallory");
        f.sessions.create(&mut second).await.unwrap();
        assert_ne!(second.id, Id(7), "the colliding id must be replaced");
        assert_eq!(f.sessions.load(&Id(7)).await.unwrap(), Some(first));
        assert_eq!(f.sessions.load(&second.id).await.unwrap(), Some(second));
    }

    #[tokio::test]
    async fn save_replaces_the_record_and_restarts_the_lifetime() {
        let f = fixture();
        let mut r = record(9, "alice");
        f.sessions.create(&mut r).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(500));
        let updated = record(9, "alice-updated");
        f.sessions.save(&updated).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(500));
        assert_eq!(f.sessions.load(&Id(9)).await.unwrap(), Some(updated));
    }

    #[tokio::test]
    async fn the_lifetime_follows_the_injected_clock() {
        let f = fixture();
        let mut r = record(3, "alice");
        f.sessions.create(&mut r).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(599));
        assert_eq!(f.sessions.load(&Id(3)).await.unwrap(), Some(r));
        f.clock.advance(chrono::Duration::seconds(2));
        assert!(f.store.get(&StoreSessionStore::key(&Id(3))).await.unwrap().is_none());
        assert_eq!(f.sessions.load(&Id(3)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_expired_record_is_not_returned_even_if_still_stored() {
        let f = fixture();
        let r = record(4, "alice");
        // Stored with a longer backend TTL than its own expiry allows (Redis
        // counts TTLs on its own clock).
        let expires = f.clock.now().timestamp_millis() + 60_000;
        f.store
            .put(
                &StoreSessionStore::key(&Id(4)),
                &wrapped(&r, expires),
                Some(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        f.clock.advance(chrono::Duration::seconds(61));
        assert_eq!(f.sessions.load(&Id(4)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_record_under_another_id_is_rejected() {
        let f = fixture();
        let r = record(6, "alice");
        f.store
            .put(
                &StoreSessionStore::key(&Id(66)),
                &wrapped(&r, f.clock.now().timestamp_millis() + 60_000),
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
        let mut r = record(8, "alice");
        f.sessions.create(&mut r).await.unwrap();
        f.sessions.delete(&Id(8)).await.unwrap();
        assert_eq!(f.sessions.load(&Id(8)).await.unwrap(), None);
        assert_eq!(f.sessions.load(&Id(12345)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn in_a_request_scope_a_save_of_what_the_request_already_wrote_writes_nothing() {
        let f = fixture();
        request_scope(async {
            let mut r = record(21, "alice");
            f.sessions.create(&mut r).await.unwrap();
            // Gone behind the request's back: an unchanged save is skipped...
            f.store.delete(&StoreSessionStore::key(&r.id)).await.unwrap();
            f.sessions.save(&r).await.unwrap();
            assert!(f.store.get(&StoreSessionStore::key(&r.id)).await.unwrap().is_none());
            // ...a changed one is written, and then itself skipped unchanged.
            let changed = record(21, "alice-changed");
            f.sessions.save(&changed).await.unwrap();
            assert_eq!(f.sessions.load(&r.id).await.unwrap(), Some(changed.clone()));
            f.store.delete(&StoreSessionStore::key(&r.id)).await.unwrap();
            f.sessions.save(&changed).await.unwrap();
            assert!(f.store.get(&StoreSessionStore::key(&r.id)).await.unwrap().is_none());
            // Another id with the same data is written.
            let other = record(22, "alice-changed");
            f.sessions.save(&other).await.unwrap();
            assert_eq!(f.sessions.load(&other.id).await.unwrap(), Some(other.clone()));
            // Deleted in this request, then saved unchanged: written again.
            f.sessions.delete(&other.id).await.unwrap();
            f.sessions.save(&other).await.unwrap();
            assert_eq!(f.sessions.load(&other.id).await.unwrap(), Some(other));
        })
        .await;
    }

    #[tokio::test]
    async fn outside_a_request_scope_every_save_writes() {
        let f = fixture();
        let mut r = record(23, "bob");
        f.sessions.create(&mut r).await.unwrap();
        f.store.delete(&StoreSessionStore::key(&r.id)).await.unwrap();
        f.sessions.save(&r).await.unwrap();
        assert_eq!(f.sessions.load(&r.id).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn each_request_scope_starts_with_nothing_written() {
        let f = fixture();
        let mut r = record(24, "carol");
        request_scope(async { f.sessions.create(&mut r).await.unwrap() }).await;
        f.store.delete(&StoreSessionStore::key(&r.id)).await.unwrap();
        request_scope(async { f.sessions.save(&r).await.unwrap() }).await;
        assert_eq!(f.sessions.load(&r.id).await.unwrap(), Some(r), "a later request writes");
    }
}
