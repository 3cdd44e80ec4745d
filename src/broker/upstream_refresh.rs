//! The upstream side of an SSO session: when the IdP issued a refresh token
//! at sign-in (OIDC with `refresh_upstream`, or unasked), it is kept under
//! the session's tenant-scoped keys, and the app's refresh asks the IdP again
//! once the last answer is older than the connection's interval (Dex's
//! `RefreshConnector` is the model). A refusal ends the SSO session (the
//! provider revokes its refresh families); a transient failure only fails
//! that one refresh.
//!
//! One refresh of a session asks the IdP at a time (a lock in the store),
//! and the others of that session that are due wait for its answer, which
//! decides for them too: the IdP may be about to say the person is gone, so
//! they are not served on the old answer meanwhile. One still waiting after
//! [`UpstreamRefresher::holder_wait`] is refused as retryable
//! (`refresh.upstream_in_progress`).
//!
//! The upstream refresh token is sealed at rest under the master key (the
//! store's sealing layer, `secrets::sealed`, seals the record's
//! `refresh_token`); it is never logged (`Secret`) and never returned by any API.

use super::session::{self, SsoSession};
use super::{connectors::ConnectorCache, Broker};
use crate::ids::ConnectionId;
use crate::provider::codes::Authorization;
use crate::provider::upstream::{UpstreamCheck, UpstreamSessions};
use crate::secret::Secret;
use crate::store::{Key, SharedStore, StoreError, StoreJson, Write};
use crate::tenant::TenantRegistry;
use crate::upstream::{Connector, Identity, RefreshFailed, UpstreamContext, UpstreamError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The shortest hold of the session's lock by one upstream refresh.
const LOCK_TTL_MIN: Duration = Duration::from_secs(30);

/// How many outbound requests one upstream refresh may make in sequence:
/// the IdP's discovery document, its token endpoint, its JWKS (a refetch
/// for a new `kid` in the refreshed ID token).
const REQUESTS_PER_REFRESH: u32 = 3;

/// What the lock outlives the IdP's answer by (the store writes after it).
const LOCK_MARGIN: Duration = Duration::from_secs(10);

/// The first pause of a refresh waiting for the lock's holder; each next
/// one doubles, up to [`WAIT_PAUSE_MAX`].
const WAIT_PAUSE_FIRST: Duration = Duration::from_millis(10);

/// The longest pause between two looks at the lock.
const WAIT_PAUSE_MAX: Duration = Duration::from_millis(100);

/// How long one upstream refresh holds the session's lock, for outbound
/// requests that each take at most `timeout`: longer than the refresh can
/// take, so the lock never expires under a refresh still waiting for the
/// IdP. Otherwise another replica would take it, read the token the first
/// one already sent, and send it again: a rotating IdP answers a spent
/// token with `invalid_grant` (or revokes the whole grant as a reuse), and
/// the person is signed out everywhere. The refresh itself is cut off
/// `LOCK_MARGIN` before the lock ends, whatever its requests do.
pub(crate) fn lock_ttl_for(timeout: Duration) -> Duration {
    timeout
        .saturating_mul(REQUESTS_PER_REFRESH)
        .saturating_add(LOCK_MARGIN)
        .max(LOCK_TTL_MIN)
}

/// What is kept of the upstream session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamSession {
    /// The connection the person signed in through.
    pub connection: ConnectionId,
    /// The IdP's current refresh token.
    pub refresh_token: Secret,
    /// When the IdP last vouched for the person (Unix seconds).
    pub refreshed_at: i64,
    /// The IdP's `sub` at sign-in.
    #[serde(default)]
    pub subject: Option<String>,
    /// The issuer that signed the person in (the ID token's `iss`): the
    /// token is sent to no other, should the connection's issuer change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

pub(crate) fn record_key(tenant: &str, sid: &str) -> Key {
    session::upstream_key(tenant, sid)
}

fn lock_key(tenant: &str, sid: &str) -> Key {
    Key::tenant(tenant, "sso", format!("upstream-lock:{sid}"))
}

impl Broker {
    /// The upstream session of `s` to keep, when the IdP gave a refresh
    /// token: its key (the SSO session's hash tag), encoded record and TTL,
    /// for [`session::save`] to write with the session in one step.
    pub(super) fn upstream_session_record(
        &self,
        s: &SsoSession,
        identity: &Identity,
    ) -> Result<Option<(Key, Vec<u8>, Duration)>, StoreError> {
        let Some(token) = &identity.upstream_refresh_token else {
            return Ok(None);
        };
        let record = UpstreamSession {
            connection: s.connection.clone(),
            refresh_token: token.clone(),
            refreshed_at: self.provider.clock.unix(),
            subject: identity.raw.get("sub").and_then(|v| v.first()).cloned(),
            issuer: identity.raw.get("iss").and_then(|v| v.first()).cloned(),
        };
        let ttl = record_ttl(self.provider.ttl.refresh_token_ttl_secs, self.session_ttl);
        let encoded = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some((record_key(s.tenant.as_str(), &s.sid), encoded, ttl)))
    }
}

/// As long as the longer of a refresh family and an SSO session.
pub(crate) fn record_ttl(refresh_token_ttl_secs: u64, session_ttl: Duration) -> Duration {
    Duration::from_secs(refresh_token_ttl_secs).max(session_ttl)
}

/// The broker's answer to "does the IdP still vouch for this session?".
/// Cheap to clone (its parts share their state).
#[derive(Clone)]
pub struct UpstreamRefresher {
    /// Tenants and connections.
    pub tenants: TenantRegistry,
    /// Connector context.
    pub upstream: UpstreamContext,
    /// Built connectors (shared with the broker).
    pub connectors: ConnectorCache,
    /// The store.
    pub store: SharedStore,
    /// The global interval (`upstream.refresh_interval_secs`).
    pub interval_secs: u64,
    /// Lifetime of the kept record.
    pub record_ttl: Duration,
    /// How long one upstream refresh holds the session's lock
    /// ([`lock_ttl_for`] the outbound timeout).
    pub lock_ttl: Duration,
    /// How long a refresh due to ask the IdP waits for another refresh of
    /// the same session that holds the lock (one outbound request's
    /// timeout) before it is refused as retryable.
    pub holder_wait: Duration,
}

impl UpstreamRefresher {
    /// Builds the refresher; `refresh_token_ttl_secs` and `session_ttl` size the record's TTL.
    pub fn new(
        tenants: TenantRegistry,
        upstream: UpstreamContext,
        connectors: ConnectorCache,
        store: SharedStore,
        interval_secs: u64,
        refresh_token_ttl_secs: u64,
        session_ttl: Duration,
    ) -> Self {
        let timeout = upstream.http.config().timeout;
        Self {
            lock_ttl: lock_ttl_for(timeout),
            holder_wait: timeout,
            tenants,
            upstream,
            connectors,
            store,
            interval_secs,
            record_ttl: record_ttl(refresh_token_ttl_secs, session_ttl),
        }
    }

    async fn run(&self, authz: &Authorization) -> Result<UpstreamCheck, StoreError> {
        let t = authz.tenant.as_str();
        let key = record_key(t, &authz.sid);
        let Some(record) = self.store.get_json::<UpstreamSession>(&key).await? else {
            return Ok(UpstreamCheck::Fine);
        };
        let connector = match self
            .connectors
            .get(&self.tenants, &self.upstream, &authz.tenant, &record.connection)
            .await
        {
            Ok(c) => c,
            // The connection is gone: nobody vouches for the person any more.
            Err(e) if !e.internal => return self.end(authz, e.code).await,
            Err(e) => {
                tracing::error!(reason = "refresh.upstream_unavailable", tenant = %authz.tenant, connection = %record.connection, detail = %e.detail, "connector unavailable");
                return Ok(UpstreamCheck::Unavailable);
            }
        };
        // The connection now names another IdP than the one that signed the
        // person in: its token is that IdP's, and nobody here vouches for
        // the person any more.
        if let (Some(had), Some(now)) = (record.issuer.as_deref(), connector.refresh_issuer()) {
            if had != now {
                return self.end(authz, "refresh.upstream_issuer_changed").await;
            }
        }
        let interval = i64::try_from(connector.refresh_interval_secs().unwrap_or(self.interval_secs)).unwrap_or(3600);
        let now = self.upstream.clock.unix();
        if now.saturating_sub(record.refreshed_at) < interval {
            return Ok(UpstreamCheck::Fine);
        }
        // One upstream refresh per session at a time: a rotating upstream
        // token must not be spent twice. A concurrent app refresh of the
        // session waits for the first one's answer, which decides for it
        // too: served on the old answer, it would get tokens the IdP may be
        // refusing at this very moment (the person deprovisioned).
        let lock = lock_key(t, &authz.sid);
        let until = tokio::time::Instant::now() + self.holder_wait;
        loop {
            if let Some(outcome) = self.refresh_once(authz, &key, &lock, &connector, interval).await? {
                return Ok(outcome);
            }
            if !self.released(&lock, until).await? {
                tracing::warn!(reason = "refresh.upstream_in_progress", tenant = %authz.tenant, connection = %authz.connection, waited_ms = self.holder_wait.as_millis(), "another refresh of the session is still asking the IdP");
                return Ok(UpstreamCheck::Busy);
            }
            // What the holder's answer left.
            let Some(record) = self.store.get_json::<UpstreamSession>(&key).await? else {
                // Its refusal ended the session (or the session ended
                // otherwise meanwhile): the tombstone says so.
                let ended = crate::provider::codes::session_ended_key(t, &authz.sid);
                return Ok(if self.store.exists(&ended).await? {
                    UpstreamCheck::Refused
                } else {
                    UpstreamCheck::Fine
                });
            };
            if self.upstream.clock.unix().saturating_sub(record.refreshed_at) < interval {
                return Ok(UpstreamCheck::Fine);
            }
            // Nobody vouched (the holder failed, or its lock expired):
            // this refresh takes the lock and asks in turn.
        }
    }

    /// Takes the session's lock and, holding it, asks the IdP; `None` if
    /// another refresh of the session holds the lock.
    ///
    /// Taking the lock, asking the IdP and releasing the lock run in a
    /// task of their own, awaited here: an app that gives up on its
    /// request (its HTTP client timed out, the connection dropped) does
    /// not cut off the IdP's answer, which may carry a rotated token
    /// that must be kept (the one sent is spent at a rotating IdP, and
    /// the next refresh would send it and end the session), nor leave
    /// the lock held until it expires.
    async fn refresh_once(
        &self,
        authz: &Authorization,
        key: &Key,
        lock: &Key,
        connector: &Arc<dyn Connector>,
        interval: i64,
    ) -> Result<Option<UpstreamCheck>, StoreError> {
        let (refresher, authz, key, lock, connector) = (
            self.clone(),
            authz.clone(),
            key.clone(),
            lock.clone(),
            connector.clone(),
        );
        let task = tokio::spawn(async move {
            if !refresher
                .store
                .put_if_absent(&lock, b"1", Some(refresher.lock_ttl))
                .await?
            {
                return Ok(None);
            }
            let outcome = refresher
                .refresh_locked(&authz, &key, connector.as_ref(), interval)
                .await;
            refresher.store.delete(&lock).await?;
            outcome.map(Some)
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(reason = "refresh.upstream_unavailable", error = %e, "the upstream refresh task failed");
                Ok(Some(UpstreamCheck::Unavailable))
            }
        }
    }

    /// Waits until `lock` is released (`true`) or `until` passes (`false`),
    /// looking at it after pauses that double from [`WAIT_PAUSE_FIRST`] to
    /// [`WAIT_PAUSE_MAX`]. Holds nothing: a request given up on while it
    /// waits leaves nothing behind.
    async fn released(&self, lock: &Key, until: tokio::time::Instant) -> Result<bool, StoreError> {
        let mut pause = WAIT_PAUSE_FIRST;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(false);
            }
            tokio::time::sleep(pause.min(until - now)).await;
            if !self.store.exists(lock).await? {
                return Ok(true);
            }
            pause = pause.saturating_mul(2).min(WAIT_PAUSE_MAX);
        }
    }

    async fn refresh_locked(
        &self,
        authz: &Authorization,
        key: &Key,
        connector: &dyn Connector,
        interval: i64,
    ) -> Result<UpstreamCheck, StoreError> {
        // Read again under the lock: another replica may just have rotated it.
        let Some(record) = self.store.get_json::<UpstreamSession>(key).await? else {
            return Ok(UpstreamCheck::Fine);
        };
        let now = self.upstream.clock.unix();
        if now.saturating_sub(record.refreshed_at) < interval {
            return Ok(UpstreamCheck::Fine);
        }
        // Cut off before the lock ends, so no other refresh of the session
        // can send the same token while this one may still be answered.
        let deadline = self.lock_ttl.saturating_sub(LOCK_MARGIN);
        let answer = tokio::time::timeout(
            deadline,
            connector.refresh(&record.refresh_token, record.subject.as_deref()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RefreshFailed::from(UpstreamError::internal(
                "refresh.upstream_timeout",
                format!("the upstream refresh took longer than {} s", deadline.as_secs()),
            )))
        });
        match settle(record, answer, now) {
            Settled::Vouched(updated) => {
                if !self.keep(authz, key, &updated).await? {
                    return Ok(UpstreamCheck::Refused);
                }
                tracing::info!(reason = "refresh.upstream_refreshed", tenant = %authz.tenant, connection = %updated.connection, "the IdP still vouches for the session");
                Ok(UpstreamCheck::Fine)
            }
            Settled::NotAsked => Ok(UpstreamCheck::Fine),
            Settled::Unavailable(e, rotated) => {
                let kept = rotated.is_some();
                if let Some(record) = rotated {
                    if !self.keep(authz, key, &record).await? {
                        return Ok(UpstreamCheck::Refused);
                    }
                }
                tracing::warn!(reason = "refresh.upstream_unavailable", code = e.code, tenant = %authz.tenant, connection = %authz.connection, detail = %e.detail, rotated_token_kept = kept, "upstream refresh failed; nothing revoked");
                Ok(UpstreamCheck::Unavailable)
            }
            Settled::Refused(e) => {
                tracing::info!(code = e.code, detail = %e.detail, "the IdP refused the upstream refresh");
                self.end(authz, e.code).await
            }
        }
    }

    /// Writes the upstream session the IdP's answer left, unless the SSO
    /// session ended while the IdP was asked (sign-out, the user disabled
    /// or deleted: its tombstone is there), in one script over their
    /// shared tag: an ended session's IdP token is not written back.
    /// `false`: it had ended; nothing was written.
    async fn keep(&self, authz: &Authorization, key: &Key, record: &UpstreamSession) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ended = crate::provider::codes::session_ended_key(authz.tenant.as_str(), &authz.sid);
        let writes = [
            Write::RequireAbsent { key: &ended },
            Write::Put {
                key,
                value: &value,
                ttl: Some(self.record_ttl),
            },
        ];
        let kept = self.store.write_many(&writes).await?;
        if !kept {
            tracing::info!(reason = "refresh.session_ended", tenant = %authz.tenant, connection = %authz.connection, "the SSO session ended while the IdP was asked; its token is not kept");
        }
        Ok(kept)
    }

    /// Ends the SSO session, its kept upstream session with it (the
    /// provider revokes its refresh families).
    async fn end(&self, authz: &Authorization, code: &str) -> Result<UpstreamCheck, StoreError> {
        tracing::warn!(reason = "refresh.upstream_refused", code, tenant = %authz.tenant, connection = %authz.connection, "upstream session ended");
        session::end(&self.store, &authz.tenant, &authz.sid).await?;
        Ok(UpstreamCheck::Refused)
    }
}

/// What an upstream refresh's answer does to the kept record.
#[derive(Debug)]
enum Settled {
    /// The IdP vouched: write this record (its token, `refreshed_at` now).
    Vouched(UpstreamSession),
    /// The connector cannot tell: nothing changes.
    NotAsked,
    /// A transient failure: the app's refresh is refused for now; when the
    /// IdP rotated its token before the failure, write this record (the
    /// new token, `refreshed_at` unchanged: nobody vouched), or the next
    /// refresh would send a spent token and end the session.
    Unavailable(UpstreamError, Option<UpstreamSession>),
    /// The IdP refused: the SSO session ends.
    Refused(UpstreamError),
}

fn settle(record: UpstreamSession, answer: Result<Option<Secret>, RefreshFailed>, now: i64) -> Settled {
    match answer {
        Ok(Some(next)) => Settled::Vouched(UpstreamSession {
            refresh_token: next,
            refreshed_at: now,
            ..record
        }),
        Ok(None) => Settled::NotAsked,
        Err(f) if f.error.internal => {
            let kept = f
                .rotated
                .filter(|t| t.expose() != record.refresh_token.expose())
                .map(|refresh_token| UpstreamSession {
                    refresh_token,
                    ..record
                });
            Settled::Unavailable(f.error, kept)
        }
        Err(f) => Settled::Refused(f.error),
    }
}

#[async_trait]
impl UpstreamSessions for UpstreamRefresher {
    async fn check(&self, authz: &Authorization) -> UpstreamCheck {
        match self.run(authz).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(reason = "store.unavailable", error = %e, "upstream refresh could not use the store");
                UpstreamCheck::Unavailable
            }
        }
    }
}

/// Shares `refresher` with a provider.
pub fn hook(refresher: UpstreamRefresher) -> Arc<dyn UpstreamSessions> {
    Arc::new(refresher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> UpstreamSession {
        UpstreamSession {
            connection: ConnectionId::parse("okta").unwrap(),
            refresh_token: Secret::new("rt-1".to_owned()),
            refreshed_at: 1_000,
            subject: Some("user-1".into()),
            issuer: Some("https://idp.example.com".into()),
        }
    }

    fn transient(rotated: Option<&str>) -> RefreshFailed {
        RefreshFailed {
            error: UpstreamError::internal("oidc.jwks_unavailable", "503"),
            rotated: rotated.map(|t| Secret::new(t.to_owned())),
        }
    }

    #[test]
    fn a_transient_failure_after_a_rotation_keeps_the_new_token_but_not_as_a_confirmation() {
        match settle(record(), Err(transient(Some("rt-2"))), 5_000) {
            Settled::Unavailable(e, Some(kept)) => {
                assert_eq!(e.code, "oidc.jwks_unavailable");
                assert_eq!(kept.refresh_token.expose(), "rt-2");
                assert_eq!(kept.refreshed_at, 1_000, "nobody vouched at 5000");
                assert_eq!(kept.subject.as_deref(), Some("user-1"));
            }
            other => panic!("{other:?}"),
        }
        // Before the IdP answered, or with the same token: nothing to write.
        for rotated in [None, Some("rt-1")] {
            assert!(matches!(
                settle(record(), Err(transient(rotated)), 5_000),
                Settled::Unavailable(_, None)
            ));
        }
    }

    #[test]
    fn the_lock_outlasts_the_slowest_upstream_refresh() {
        for secs in [1, 10, 30, 60] {
            let timeout = Duration::from_secs(secs);
            let ttl = lock_ttl_for(timeout);
            // Every request of one refresh at its full timeout, and the
            // writes after them, end before the lock does.
            assert!(ttl > timeout * REQUESTS_PER_REFRESH, "{secs}: {ttl:?}");
            assert!(
                ttl.saturating_sub(LOCK_MARGIN) >= timeout * REQUESTS_PER_REFRESH,
                "{secs}: {ttl:?}"
            );
            assert!(ttl >= LOCK_TTL_MIN);
        }
    }

    #[test]
    fn a_vouch_moves_the_clock_and_a_refusal_ends() {
        match settle(record(), Ok(Some(Secret::new("rt-2".to_owned()))), 5_000) {
            Settled::Vouched(r) => assert_eq!((r.refresh_token.expose(), r.refreshed_at), ("rt-2", 5_000)),
            other => panic!("{other:?}"),
        }
        let refused = RefreshFailed::from(UpstreamError::reject("oidc.refresh_refused", "no", "invalid_grant"));
        assert!(
            matches!(settle(record(), Err(refused), 5_000), Settled::Refused(e) if e.code == "oidc.refresh_refused")
        );
        assert!(matches!(settle(record(), Ok(None), 5_000), Settled::NotAsked));
    }
}
