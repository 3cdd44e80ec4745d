//! Decoded records kept in memory and re-validated by fingerprint on every
//! use, so a replica answers exactly what the store holds now without
//! transferring or decoding a record that did not change.
//!
//! A record is several KB (a SAML connection with its metadata and
//! certificates, an app with its redirect URIs and hashed secrets); reading
//! and decoding it on every request only to learn that it did not change
//! cost more than anything else the store did for a sign-in. Each use reads
//! the record through [`Store::get_if_changed`] (or, together with other
//! records of its hash tag, [`Store::read_many_if_changed`]: see
//! [`RecordCache::kept`] and [`RecordCache::settle`]) with the fingerprint of the
//! copy kept here (the SHA-1 of the stored bytes, computed by Redis, 40 bytes
//! on the wire): when the stored bytes still have it the store answers only
//! "unchanged" and that copy is byte for byte what the store holds now;
//! otherwise it answers the record with its new fingerprint, in the same
//! round trip. No write
//! path needs to know about the cache: any write that changes the stored
//! bytes changes the fingerprint, and a deleted record has none.

use super::{IfChanged, Key, SharedStore, StoreError};
use crate::lru::Lru;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The cache: per record id, the decoded record and the fingerprint of the
/// stored bytes it was decoded from. Keyed by configuration (ids of records
/// that exist), and bounded: past `capacity` ids the least recently used
/// sixteenth makes room ([`Lru`]; a dropped record is only read again).
/// Cheap to clone. Records are shared
/// (`Arc`): a request that finds its record unchanged takes a reference,
/// never a copy of several KB.
pub struct RecordCache<K, V> {
    map: Arc<Mutex<Lru<K, Kept<V>>>>,
}

/// A kept record: the fingerprint of the stored bytes, and the record decoded from them.
type Kept<V> = (String, Arc<V>);

impl<K, V> Clone for RecordCache<K, V> {
    fn clone(&self) -> Self {
        Self { map: self.map.clone() }
    }
}

impl<K: Eq + Hash + Clone, V> RecordCache<K, V> {
    /// An empty cache keeping at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Arc::new(Mutex::new(Lru::new(capacity))),
        }
    }

    /// The record stored at `key` as the store holds it now, `None` when
    /// there is none, in one round trip ([`Store::get_if_changed`]): the
    /// fingerprint of the copy kept for `id` goes with the read, and the
    /// store answers "unchanged" when the stored bytes still have it (the
    /// copy is then byte for byte what the store holds now), or the record
    /// with the fingerprint of the very bytes answered, which `decode`
    /// decodes and which is kept under that fingerprint. Either way this
    /// request uses what the store said in this request.
    pub async fn get<F>(&self, store: &SharedStore, key: &Key, id: &K, decode: F) -> Result<Option<Arc<V>>, StoreError>
    where
        F: FnOnce(&[u8]) -> Result<V, StoreError>,
    {
        let kept = self.kept(id);
        let known = kept.as_ref().map(|(fingerprint, _)| fingerprint.as_str());
        let answer = store.get_if_changed(key, known).await?;
        self.settle(id, kept, answer, decode)
    }

    /// The copy kept for `id` with the fingerprint of the stored bytes it
    /// was decoded from, for a caller that sends the fingerprint with other
    /// reads (`Store::read_many_if_changed`) and hands the answer to
    /// [`Self::settle`]. Never an answer by itself: only the store's word
    /// in this request says whether it is still current.
    pub fn kept(&self, id: &K) -> Option<Kept<V>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .map(|(fingerprint, record)| (fingerprint.clone(), record.clone()))
    }

    /// The record as the store answered it in this request (`answer`, to
    /// a re-validation with the fingerprint of `kept`, the copy
    /// [`Self::kept`] gave): the kept copy when unchanged, `None` when
    /// absent (the copy is dropped), else the value decoded by `decode`,
    /// which is kept under its fingerprint.
    pub fn settle<F>(
        &self,
        id: &K,
        kept: Option<Kept<V>>,
        answer: IfChanged,
        decode: F,
    ) -> Result<Option<Arc<V>>, StoreError>
    where
        F: FnOnce(&[u8]) -> Result<V, StoreError>,
    {
        match answer {
            IfChanged::Unchanged => match kept {
                Some((_, record)) => Ok(Some(record)),
                // Only answered for the fingerprint given, i.e. with a copy.
                None => Err(StoreError::Corrupt("unchanged answered without a fingerprint".into())),
            },
            IfChanged::Absent => {
                self.forget(id);
                Ok(None)
            }
            IfChanged::Value { value, fingerprint } => {
                let record = Arc::new(decode(&value)?);
                self.map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), (fingerprint, record.clone()));
                Ok(Some(record))
            }
        }
    }

    /// Drops the copy kept for `id` (after a delete, for instance; not
    /// needed for correctness, only to free it at once).
    pub fn forget(&self, id: &K) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no record is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a JSON record (the `decode` of [`RecordCache::get`] for records
/// stored as JSON).
pub fn json<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn store() -> SharedStore {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        Arc::new(crate::store::memory::MemoryStore::new(clock))
    }

    /// Reads `key` through `cache`, counting how often the record itself is read.
    async fn read(
        cache: &RecordCache<String, String>,
        store: &SharedStore,
        key: &Key,
        reads: &AtomicUsize,
    ) -> Option<String> {
        cache
            .get(store, key, &key.name().to_owned(), |v| {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(String::from_utf8_lossy(v).into_owned())
            })
            .await
            .unwrap()
            .map(|v| v.as_ref().clone())
    }

    #[tokio::test]
    async fn answers_what_is_stored_and_reads_it_only_when_it_changed() {
        let (store, cache, reads) = (store(), RecordCache::new(16), AtomicUsize::new(0));
        let key = Key::global("t", "a");
        assert_eq!(read(&cache, &store, &key, &reads).await, None);
        store.put(&key, b"one", None).await.unwrap();
        assert_eq!(read(&cache, &store, &key, &reads).await.as_deref(), Some("one"));
        assert_eq!(read(&cache, &store, &key, &reads).await.as_deref(), Some("one"));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "the second answer is the kept copy");
        store.put(&key, b"two", None).await.unwrap();
        assert_eq!(read(&cache, &store, &key, &reads).await.as_deref(), Some("two"));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        store.delete(&key).await.unwrap();
        assert_eq!(
            read(&cache, &store, &key, &reads).await,
            None,
            "a deleted record is gone at once"
        );
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn keeps_at_most_its_capacity() {
        let (store, cache, reads) = (store(), RecordCache::new(2), AtomicUsize::new(0));
        for name in ["a", "b", "c", "d"] {
            let key = Key::global("t", name);
            store.put(&key, name.as_bytes(), None).await.unwrap();
            assert_eq!(read(&cache, &store, &key, &reads).await.as_deref(), Some(name));
        }
        assert_eq!(cache.len(), 2);
        // "d" and "c" are kept (the least recently used went): read again
        // unchanged, without transferring the record.
        let before = reads.load(Ordering::SeqCst);
        for name in ["d", "c"] {
            let key = Key::global("t", name);
            assert_eq!(read(&cache, &store, &key, &reads).await.as_deref(), Some(name));
        }
        assert_eq!(reads.load(Ordering::SeqCst), before, "both were kept");
    }
}
