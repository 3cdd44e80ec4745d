//! A `MemoryStore` whose replay check never refuses, shared by the SAML
//! benchmark and the memory test (`#[path]`-included by both): each
//! validates the same captures thousands of times, which a real replay cache
//! would refuse from the second time on. What they measure is validation,
//! not the replay cache.

use async_trait::async_trait;
use portcullis::store::memory::MemoryStore;
use portcullis::store::{Key, Store, StoreError};
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
impl portcullis::store::StoreLayer for ReplayFree {
    // `exists`, `fingerprint` and the chained and guarded rate limits are
    // made of this store's own calls (`Store`'s default bodies).
    const FORWARD_DEFAULTED: bool = false;

    fn inner(&self) -> &dyn Store {
        &self.0
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        match self.1 {
            ReplayWrites::Kept => self.0.put(key, value, ttl).await.map(|()| true),
            ReplayWrites::Dropped => Ok(true),
        }
    }
}
