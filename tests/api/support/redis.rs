//! PLACEHOLDER so the `peers` branch compiles: the Redis helper's branch
//! owns this file and its real version (which starts a redis-server) wins
//! the merge. Same names: `redis_url()`, `unique_prefix()`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The URL of a running Redis server (`PORTCULLIS_TEST_REDIS_URL`).
pub async fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix unique to the caller.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
