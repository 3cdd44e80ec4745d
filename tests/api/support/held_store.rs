//! A store wrapper that holds one write until the test lets it go: the way
//! to force an interleaving such as "a PATCH has read the record; a DELETE
//! runs; the PATCH writes". Everything else is passed to the store inside
//! unchanged.

use crate::support::app::WrapStore;
use async_trait::async_trait;
use portcullis::store::{
    IfChanged, Key, Probe, Probed, RateDecision, Read, Rotate, SharedStore, Store, StoreError, StreamEntry, Taken,
    Write,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Which writes of the armed key name are held.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A `put` or `compare_and_put`.
    Write,
    /// A `put_if_absent`, or a `write_many` that writes the key only if
    /// absent (a creation).
    Creation,
    /// A `set_remove` (only when armed for it: never taken for "any").
    Removal,
    /// Any of those, or a `write_many` that writes the key.
    Any,
}

/// The write the test waits for.
struct Armed {
    name: String,
    kind: Kind,
    arrived: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// Holds the next `put` or `compare_and_put` (or, armed for it, the next
/// `put_if_absent`) of one key name, once.
#[derive(Clone, Default)]
pub struct Hold {
    armed: Arc<Mutex<Option<Armed>>>,
}

/// A held write: say when it arrived, and let it go.
pub struct Held {
    /// Answers once the write is waiting (before it reaches the store).
    pub arrived: oneshot::Receiver<()>,
    /// Send (or drop) to let the write reach the store.
    pub release: oneshot::Sender<()>,
}

impl Hold {
    /// A wrapper for [`crate::support::app::AppOptions::wrap_store`].
    pub fn wrap(&self) -> WrapStore {
        let hold = self.clone();
        Arc::new(move |inner| {
            Arc::new(HeldStore {
                inner,
                hold: hold.clone(),
            }) as SharedStore
        })
    }

    /// Holds the next `put` or `compare_and_put` of a key named `name`
    /// (e.g. `client:web`), whichever tag it is in.
    pub fn arm(&self, name: &str) -> Held {
        self.arm_for(name, Kind::Write)
    }

    /// Holds the next write of any kind to a key named `name`, `write_many`
    /// included: "the step that writes it, however it is written".
    pub fn arm_any(&self, name: &str) -> Held {
        self.arm_for(name, Kind::Any)
    }

    /// Holds the next `set_remove` from the set named `name` (e.g.
    /// `from-files`): "a step has written, and is about to drop a member".
    pub fn arm_removal(&self, name: &str) -> Held {
        self.arm_for(name, Kind::Removal)
    }

    /// Holds the next `put_if_absent` of a key named `name` (e.g. `tenant`),
    /// or `write_many` writing it under `RequireAbsent`:
    /// "a creation has checked that the record is absent, and writes it".
    pub fn arm_creation(&self, name: &str) -> Held {
        self.arm_for(name, Kind::Creation)
    }

    fn arm_for(&self, name: &str, kind: Kind) -> Held {
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some(Armed {
            name: name.to_owned(),
            kind,
            arrived: arrived_tx,
            release: release_rx,
        });
        Held { arrived, release }
    }

    /// Waits here if `key` is the armed one for this kind of write (and
    /// disarms it).
    async fn maybe_hold(&self, key: &Key, kind: Kind) {
        let armed = {
            let mut armed = self.armed.lock().unwrap();
            match armed.as_ref() {
                Some(a)
                    if a.name == key.name() && (a.kind == kind || (a.kind == Kind::Any && kind != Kind::Removal)) =>
                {
                    armed.take()
                }
                _ => None,
            }
        };
        if let Some(a) = armed {
            let _ = a.arrived.send(());
            let _ = a.release.await;
        }
    }
}

struct HeldStore {
    inner: SharedStore,
    hold: Hold,
}

#[async_trait]
impl Store for HeldStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }
    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        self.inner.fingerprint(key).await
    }
    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        self.inner.get_if_changed(key, known).await
    }
    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.read_many(keys).await
    }
    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.put_then_get(key, value, ttl, read).await
    }
    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.hold.maybe_hold(key, Kind::Write).await;
        self.inner.put(key, value, ttl).await
    }
    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        self.hold.maybe_hold(key, Kind::Creation).await;
        self.inner.put_if_absent(key, value, ttl).await
    }
    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.hold.maybe_hold(key, Kind::Write).await;
        self.inner.compare_and_put(key, expected, value, ttl).await
    }
    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.take(key).await
    }
    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        self.inner
            .take_and_mark(key, marker_key, marker_value, marker_ttl)
            .await
    }
    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.inner.set_add(key, member, ttl).await
    }
    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.hold.maybe_hold(key, Kind::Removal).await;
        self.inner.set_remove(key, member).await
    }
    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        self.inner.set_members(key).await
    }
    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        self.inner.incr(key, ttl).await
    }
    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        self.inner.list_push_capped(key, value, max_len).await
    }
    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.list_range(key, start, count).await
    }
    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        self.inner.stream_add(key, value, max_len).await
    }
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        self.inner
            .stream_add_classed(key, class, value, class_max, max_len)
            .await
    }
    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_range(key, after, count).await
    }
    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_rev_range(key, before, count).await
    }
    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.inner.stream_len(key).await
    }
    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        self.inner.stream_group_create(key, group).await
    }
    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_group_read(key, group, consumer, count).await
    }
    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.stream_ack(key, group, id).await
    }
    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_autoclaim(key, group, consumer, min_idle, count).await
    }
    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        self.inner.rate_limit(key, limit, window).await
    }
    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        self.inner.rate_limit_chain(first, second, window).await
    }
    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        self.inner.rate_limit_guarded(guard, limits, window).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn read_many_if_changed(&self, keys: &[(&Key, Probe<'_>)]) -> Result<Vec<Probed>, StoreError> {
        self.inner.read_many_if_changed(keys).await
    }
    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        for w in writes {
            if matches!(w, Write::Put { .. } | Write::SetAdd { .. } | Write::Delete { .. }) {
                let guarded = writes
                    .iter()
                    .any(|c| matches!(c, Write::RequireAbsent { key } if *key == w.key()));
                let kind = if guarded { Kind::Creation } else { Kind::Any };
                self.hold.maybe_hold(w.key(), kind).await;
            }
        }
        self.inner.write_many(writes).await
    }
    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        self.inner.rotate(r).await
    }
    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        self.inner.read_through(pointer, reads).await
    }
}
