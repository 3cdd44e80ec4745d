//! One refresh at a time of a value a replica caches for everyone (the
//! signing keyset, an upstream OpenID provider's discovery document and
//! keys).
//!
//! When such a copy goes stale under load, every request in flight used to
//! find it stale at once and each fetched and parsed it again: a burst of
//! identical work (keyset parsing stalled a busy worker for tens of
//! milliseconds every `cache_for`) or of identical requests to a customer's
//! IdP. With a [`Flight`], the first caller to find the copy stale takes the
//! [`Turn`] and refreshes it; the others keep using the stale copy while it
//! does, each cache bounding how stale that may be.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a refresh is in flight.
#[derive(Debug, Default)]
pub struct Flight(AtomicBool);

impl Flight {
    /// A flight with no refresh in it.
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// The turn to refresh, or `None` while another caller holds it.
    pub fn take(&self) -> Option<Turn<'_>> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Turn(&self.0))
    }
}

/// The turn to refresh: released when dropped, whether the refresh
/// succeeded, failed, or was abandoned half-way (a cancelled request).
#[derive(Debug)]
pub struct Turn<'a>(&'a AtomicBool);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_at_a_time_and_released_when_dropped() {
        let flight = Flight::new();
        let turn = flight.take();
        assert!(turn.is_some());
        assert!(flight.take().is_none(), "held");
        drop(turn);
        assert!(flight.take().is_some(), "released");
    }

    #[tokio::test]
    async fn a_cancelled_refresh_releases_its_turn() {
        let flight = Flight::new();
        let refresh = async {
            let _turn = flight.take();
            std::future::pending::<()>().await;
        };
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(1), refresh).await;
        assert!(cancelled.is_err());
        assert!(flight.take().is_some());
    }
}
