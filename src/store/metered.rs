//! A [`Store`] that measures another: every operation's latency
//! (`portcullis_redis_operation_duration_seconds{op}`) and every failure
//! (`portcullis_redis_errors_total`). `app::open_store` wraps the Redis store
//! in it; the memory store is not measured (it has no outage to report).
//!
//! Only the backend's [`StoreError::Unavailable`] counts as a Redis error: a
//! value that does not decode is the caller's problem, not Redis's.

use super::{IfChanged, Key, RateDecision, Read, Rotate, Store, StoreError, StreamEntry, Taken, Write};
use crate::meter;
use async_trait::async_trait;
use std::time::Duration;

/// The measuring wrapper around an inner store.
pub struct MeteredStore<S> {
    inner: S,
}

impl<S: Store> MeteredStore<S> {
    /// Measures `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// Records one operation and passes its result on.
async fn measured<T>(
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let (out, elapsed) = meter::timed(f).await;
    meter::store_operation(op, elapsed, !matches!(out, Err(StoreError::Unavailable(_))));
    out
}

#[async_trait]
impl<S: Store> Store for MeteredStore<S> {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        measured("get", self.inner.get(key)).await
    }

    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        measured("put", self.inner.put(key, value, ttl)).await
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        measured("put_if_absent", self.inner.put_if_absent(key, value, ttl)).await
    }

    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        measured("compare_and_put", self.inner.compare_and_put(key, expected, value, ttl)).await
    }

    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        measured("take", self.inner.take(key)).await
    }

    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        measured(
            "take_and_mark",
            self.inner.take_and_mark(key, marker_key, marker_value, marker_ttl),
        )
        .await
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        measured("delete", self.inner.delete(key)).await
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        measured("exists", self.inner.exists(key)).await
    }

    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        measured("fingerprint", self.inner.fingerprint(key)).await
    }

    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        measured("get_if_changed", self.inner.get_if_changed(key, known)).await
    }

    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        measured("put_then_get", self.inner.put_then_get(key, value, ttl, read)).await
    }

    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        measured("read_many", self.inner.read_many(keys)).await
    }

    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        measured("set_add", self.inner.set_add(key, member, ttl)).await
    }

    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        measured("set_remove", self.inner.set_remove(key, member)).await
    }

    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        measured("set_members", self.inner.set_members(key)).await
    }

    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError> {
        measured("set_sample", self.inner.set_sample(key, count)).await
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        measured("incr", self.inner.incr(key, ttl)).await
    }

    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        measured("list_push_capped", self.inner.list_push_capped(key, value, max_len)).await
    }

    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        measured("list_range", self.inner.list_range(key, start, count)).await
    }

    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        measured("stream_add", self.inner.stream_add(key, value, max_len)).await
    }
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        measured(
            "stream_add",
            self.inner.stream_add_classed(key, class, value, class_max, max_len),
        )
        .await
    }

    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        measured("stream_range", self.inner.stream_range(key, after, count)).await
    }

    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        measured("stream_rev_range", self.inner.stream_rev_range(key, before, count)).await
    }

    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        measured("stream_len", self.inner.stream_len(key)).await
    }

    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        measured("stream_group_create", self.inner.stream_group_create(key, group)).await
    }

    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        measured(
            "stream_group_read",
            self.inner.stream_group_read(key, group, consumer, count),
        )
        .await
    }

    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        measured("stream_ack", self.inner.stream_ack(key, group, id)).await
    }

    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        measured(
            "stream_autoclaim",
            self.inner.stream_autoclaim(key, group, consumer, min_idle, count),
        )
        .await
    }

    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        measured("rate_limit", self.inner.rate_limit(key, limit, window)).await
    }

    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        measured("rate_limit_chain", self.inner.rate_limit_chain(first, second, window)).await
    }

    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        measured(
            "rate_limit_guarded",
            self.inner.rate_limit_guarded(guard, limits, window),
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        measured("ping", self.inner.ping()).await
    }

    async fn read_many_if_changed(&self, keys: &[(&Key, super::Probe<'_>)]) -> Result<Vec<super::Probed>, StoreError> {
        measured("read_many_if_changed", self.inner.read_many_if_changed(keys)).await
    }

    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        measured("write_many", self.inner.write_many(writes)).await
    }

    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        measured("rotate", self.inner.rotate(r)).await
    }

    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        measured("read_through", self.inner.read_through(pointer, reads)).await
    }
}
