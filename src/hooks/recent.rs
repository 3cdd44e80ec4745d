//! What each tenant's user-migration hook did lately, kept per replica, so
//! that a local sign-in which did not ask the hook can take as long and end
//! as one which did.
//!
//! A tenant with a user-migration hook asks it about every address its
//! local connection does not know; an address it knows is checked against
//! its own hash. Without care the two differ in what a stranger sees:
//! the unknown address waits for the hook's round trip and, while the hook
//! is down, gets "did not answer" (503/502), while the known one answers a
//! wrong password at once with 401. Either tells which addresses have
//! accounts. So each call of the migration hook is recorded here (how long
//! it took and how it failed, if it did), the last [`CALLS`] per tenant,
//! and a failed sign-in of a known address replays one of them drawn at
//! random (`local::Accounts`): it waits as long, and fails as that call
//! failed. The draw follows the hook's recent calls, its slow ones and its
//! failures in their proportion, so neither the time nor the page of an
//! answer separates the two kinds of address.
//!
//! Per replica, in memory, bounded ([`Lru`] of [`TENANTS`]), and shared
//! through the store: each call is also pushed to the tenant's capped list
//! ([`calls_key`], the last [`CALLS`]), which a replica that has not seen a
//! call of the tenant's hook yet (just started, or the tenant dropped from
//! its cache) loads before it replays one. Only before any replica has
//! called the tenant's hook is there nothing to replay, and the answer is
//! at once. The list goes with the hook (deleted, or its tenant purged).

use super::HookError;
use crate::ids::TenantId;
use crate::lru::Lru;
use crate::store::Key;
use std::sync::Mutex;
use std::time::Duration;

/// Calls kept per tenant.
pub const CALLS: usize = 16;
/// Tenants kept (those whose migration hook this replica called lately).
pub const TENANTS: usize = 10_000;

/// One call: how long it took, and its failure if it failed.
#[derive(Debug, Clone)]
pub struct Call {
    /// From the first attempt to the verdict (retries included).
    pub took: Duration,
    /// What the call failed with; `None`: the hook answered.
    pub failed: Option<HookError>,
}

/// The store's list of `tenant`'s migration hook's recent calls, shared by
/// every replica (newest first, capped at [`CALLS`]).
pub fn calls_key(tenant: &TenantId) -> Key {
    Key::tenant(tenant.as_str(), "hook_calls", "user_migration")
}

impl Call {
    /// The call as kept in the store: its duration in milliseconds and its
    /// failure's reason code (and status), never the failure's detail.
    pub fn to_stored(&self) -> Vec<u8> {
        let ms = u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX);
        match &self.failed {
            None => format!("{ms}"),
            Some(HookError::BadStatus(status)) => format!("{ms} hook.bad_status {status}"),
            Some(e) => format!("{ms} {}", e.reason()),
        }
        .into_bytes()
    }

    /// A call as [`Call::to_stored`] wrote it; `None` for anything else.
    pub fn from_stored(raw: &[u8]) -> Option<Call> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.split(' ');
        let took = Duration::from_millis(parts.next()?.parse().ok()?);
        const DETAIL: &str = "replayed from another replica's call";
        let failed = match parts.next() {
            None => None,
            Some("hook.bad_status") => Some(HookError::BadStatus(parts.next()?.parse().ok()?)),
            Some("hook.timeout") => Some(HookError::Timeout(DETAIL.into())),
            Some("hook.unreachable") => Some(HookError::Unreachable(DETAIL.into())),
            Some("hook.forbidden_address") => Some(HookError::Forbidden(DETAIL.into())),
            Some("hook.bad_answer") => Some(HookError::BadAnswer(DETAIL.into())),
            Some("hook.protected_claim") => Some(HookError::ProtectedClaim(DETAIL.into())),
            Some("hook.unsigned_answer") => Some(HookError::Unsigned(DETAIL.into())),
            Some("hook.circuit_open") => Some(HookError::CircuitOpen),
            Some("store.unavailable") => Some(HookError::Store(DETAIL.into())),
            Some("hook.internal") => Some(HookError::Internal(DETAIL.into())),
            Some(_) => return None,
        };
        Some(Call { took, failed })
    }
}

/// The last [`CALLS`] calls of one tenant's hook, oldest overwritten.
#[derive(Default)]
struct Ring {
    calls: Vec<Call>,
    next: usize,
}

/// The recent calls of every tenant's migration hook on this replica.
pub struct Recent {
    tenants: Mutex<Lru<String, Ring>>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            tenants: Mutex::new(Lru::new(TENANTS)),
        }
    }
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<String, Ring>> {
        // Plain values: a panic while holding the lock leaves nothing half
        // written that matters.
        self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a call of `tenant`'s hook.
    pub fn record(&self, tenant: &str, call: Call) {
        let mut tenants = self.lock();
        if let Some(ring) = tenants.get(&tenant.to_owned()) {
            ring.push(call);
            return;
        }
        let mut ring = Ring::default();
        ring.push(call);
        tenants.insert(tenant.to_owned(), ring);
    }

    /// Loads `calls` of `tenant` (read from the store, newest first) when
    /// this replica knows none of its own; keeps what it knows otherwise.
    pub fn load(&self, tenant: &str, calls: Vec<Call>) {
        let mut tenants = self.lock();
        if tenants.get(&tenant.to_owned()).is_some_and(|r| !r.calls.is_empty()) || calls.is_empty() {
            return;
        }
        let mut ring = Ring::default();
        for call in calls.into_iter().take(CALLS).rev() {
            ring.push(call);
        }
        tenants.insert(tenant.to_owned(), ring);
    }

    /// Forgets `tenant`'s calls (its hook went).
    pub fn forget(&self, tenant: &str) {
        self.lock().remove(&tenant.to_owned());
    }

    /// One of `tenant`'s recent calls, the `pick`-th modulo their number
    /// (the caller draws `pick` at random); `None` when none is known.
    pub fn pick(&self, tenant: &str, pick: usize) -> Option<Call> {
        let mut tenants = self.lock();
        let ring = tenants.get(&tenant.to_owned())?;
        if ring.calls.is_empty() {
            return None;
        }
        ring.calls.get(pick % ring.calls.len()).cloned()
    }
}

impl Ring {
    fn push(&mut self, call: Call) {
        if self.calls.len() < CALLS {
            self.calls.push(call);
        } else if let Some(slot) = self.calls.get_mut(self.next) {
            *slot = call;
        }
        self.next = (self.next + 1) % CALLS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ms: u64, failed: Option<HookError>) -> Call {
        Call {
            took: Duration::from_millis(ms),
            failed,
        }
    }

    #[test]
    fn nothing_to_replay_before_a_call() {
        let r = Recent::default();
        assert!(r.pick("acme", 3).is_none());
        r.record("acme", call(5, None));
        assert!(r.pick("globex", 0).is_none(), "another tenant's calls are not replayed");
    }

    #[test]
    fn keeps_the_last_calls_of_each_tenant() {
        let r = Recent::default();
        for ms in 0..(CALLS as u64 + 4) {
            r.record("acme", call(ms, None));
        }
        let kept: Vec<u64> = (0..CALLS)
            .filter_map(|i| r.pick("acme", i))
            .map(|c| c.took.as_millis() as u64)
            .collect();
        let mut sorted = kept.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (4..(CALLS as u64 + 4)).collect::<Vec<_>>(),
            "the oldest four overwritten"
        );
    }

    #[test]
    fn a_call_kept_in_the_store_reads_back_as_it_was() {
        let calls = [
            call(7, None),
            call(1500, Some(HookError::Timeout("slow".into()))),
            call(20, Some(HookError::BadStatus(503))),
            call(3, Some(HookError::CircuitOpen)),
        ];
        for c in &calls {
            let back = Call::from_stored(&c.to_stored()).unwrap();
            assert_eq!(back.took, c.took);
            assert_eq!(
                back.failed.as_ref().map(HookError::reason),
                c.failed.as_ref().map(HookError::reason)
            );
            if let Some(HookError::BadStatus(s)) = back.failed {
                assert_eq!(s, 503);
            }
        }
        assert!(Call::from_stored(b"12 hook.made_up").is_none());
        assert!(Call::from_stored(b"soon").is_none());
    }

    #[test]
    fn loaded_calls_fill_only_a_tenant_this_replica_knows_nothing_of() {
        let r = Recent::default();
        r.load("acme", vec![call(9, None), call(8, None)]);
        assert_eq!(r.pick("acme", 0).map(|c| c.took), Some(Duration::from_millis(8)));
        r.load("acme", vec![call(1, None)]);
        let kept: Vec<_> = (0..2)
            .filter_map(|i| r.pick("acme", i))
            .map(|c| c.took.as_millis())
            .collect();
        assert_eq!(kept, [8, 9], "what the replica knew is kept");
        r.forget("acme");
        assert!(r.pick("acme", 0).is_none());
    }

    #[test]
    fn replays_failures_as_they_were() {
        let r = Recent::default();
        r.record("acme", call(1500, Some(HookError::Timeout("slow".into()))));
        let c = r.pick("acme", 7).unwrap();
        assert_eq!(c.took, Duration::from_millis(1500));
        assert_eq!(c.failed.map(|e| e.reason()), Some("hook.timeout"));
    }
}
