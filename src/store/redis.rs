//! The Redis store, for production and any number of replicas. (Stub until
//! the store work lands.)

use super::{Key, Store, StoreError};
use async_trait::async_trait;
use std::time::Duration;

/// The Redis-backed store.
pub struct RedisStore;

impl RedisStore {
    /// Connects to `url`; every key is rendered under `prefix`.
    pub async fn connect(_url: &str, _prefix: &str) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable("redis store not built yet".into()))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, _: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn put(&self, _: &Key, _: &[u8], _: Option<Duration>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn put_if_absent(&self, _: &Key, _: &[u8], _: Option<Duration>) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn take(&self, _: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn delete(&self, _: &Key) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn set_add(&self, _: &Key, _: &str, _: Option<Duration>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn set_remove(&self, _: &Key, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn set_members(&self, _: &Key) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn incr(&self, _: &Key, _: Duration) -> Result<i64, StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("stub".into()))
    }
}
