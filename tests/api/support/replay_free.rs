//! A `MemoryStore` whose replay check never refuses, shared by the SAML
//! benchmark and the memory test (`#[path]`-included by both): each
//! validates the same captures thousands of times, which a real replay cache
//! would refuse from the second time on. What they measure is validation,
//! not the replay cache.

use async_trait::async_trait;
use portcullis::store::memory::MemoryStore;
use portcullis::store::{Key, Store, StoreError, StreamEntry};
use std::time::Duration;

/// What `put_if_absent` does with the replay entry it reports as fresh.
// Each includer uses one of the two.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayWrites {
    /// Writes it (`put`): the benchmark still pays the cache write.
    Kept,
    /// Drops it: the memory test sees no entry grow per validation.
    Dropped,
}

/// A `MemoryStore` whose `put_if_absent` always reports "fresh".
pub struct ReplayFree(pub MemoryStore, pub ReplayWrites);

#[async_trait]
impl Store for ReplayFree {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key).await
    }
    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<portcullis::store::IfChanged, StoreError> {
        self.0.get_if_changed(key, known).await
    }
    async fn read_many(&self, keys: &[(&Key, portcullis::store::Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.0.read_many(keys).await
    }
    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.put_then_get(key, value, ttl, read).await
    }
    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.0.put(key, value, ttl).await
    }
    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        match self.1 {
            ReplayWrites::Kept => self.0.put(key, value, ttl).await.map(|()| true),
            ReplayWrites::Dropped => Ok(true),
        }
    }
    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.0.compare_and_put(key, expected, value, ttl).await
    }
    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.take(key).await
    }
    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<portcullis::store::Taken, StoreError> {
        self.0.take_and_mark(key, marker_key, marker_value, marker_ttl).await
    }
    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.0.delete(key).await
    }
    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.0.set_add(key, member, ttl).await
    }
    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.0.set_remove(key, member).await
    }
    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        self.0.set_members(key).await
    }
    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        self.0.incr(key, ttl).await
    }
    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        self.0.list_push_capped(key, value, max_len).await
    }
    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.0.list_range(key, start, count).await
    }
    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        self.0.stream_add(key, value, max_len).await
    }
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        self.0.stream_add_classed(key, class, value, class_max, max_len).await
    }
    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        self.0.stream_range(key, after, count).await
    }
    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.0.stream_rev_range(key, before, count).await
    }
    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.0.stream_len(key).await
    }
    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        self.0.stream_group_create(key, group).await
    }
    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.0.stream_group_read(key, group, consumer, count).await
    }
    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        self.0.stream_ack(key, group, id).await
    }
    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: std::time::Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.0.stream_autoclaim(key, group, consumer, min_idle, count).await
    }
    async fn rate_limit(
        &self,
        key: &portcullis::store::Key,
        limit: u64,
        window: std::time::Duration,
    ) -> Result<portcullis::store::RateDecision, StoreError> {
        self.0.rate_limit(key, limit, window).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    async fn read_many_if_changed(
        &self,
        keys: &[(&portcullis::store::Key, portcullis::store::Probe<'_>)],
    ) -> Result<Vec<portcullis::store::Probed>, StoreError> {
        self.0.read_many_if_changed(keys).await
    }
    async fn write_many(&self, writes: &[portcullis::store::Write<'_>]) -> Result<bool, StoreError> {
        self.0.write_many(writes).await
    }
    async fn rotate(&self, r: &portcullis::store::Rotate<'_>) -> Result<portcullis::store::Taken, StoreError> {
        self.0.rotate(r).await
    }
    #[allow(clippy::type_complexity)]
    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, portcullis::store::Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        self.0.read_through(pointer, reads).await
    }
}
