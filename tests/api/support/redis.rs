//! PLACEHOLDER so the `peers` branch compiles on its own: the `store`
//! branch owns this file and its real version (which starts a shared
//! redis-server) wins the merge. Same public names: `url()`, `prefix()`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The URL of the Redis server the tests share (`PORTCULLIS_TEST_REDIS_URL`).
pub fn url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix unique to the caller.
pub fn prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
