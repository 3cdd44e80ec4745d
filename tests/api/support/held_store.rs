//! A store wrapper that holds one write until the test lets it go: the way
//! to force an interleaving such as "a PATCH has read the record; a DELETE
//! runs; the PATCH writes". Everything else is passed to the store inside
//! unchanged.

use crate::support::app::WrapStore;
use async_trait::async_trait;
use portcullis::store::{Key, SharedStore, Store, StoreError, Write};
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
impl portcullis::store::StoreLayer for HeldStore {
    fn inner(&self) -> &dyn Store {
        &*self.inner
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
    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.hold.maybe_hold(key, Kind::Removal).await;
        self.inner.set_remove(key, member).await
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
}
