//! SSO sessions: one per (browser, tenant), stored server-side with a TTL.
//! The browser's tower-sessions session holds only the map tenant → sid.

use crate::ids::{ConnectionId, TenantId};
use crate::provider::codes::{session_ended_key, SESSION_ENDED_TTL};
use crate::store::{Key, SharedStore, StoreError, StoreJson, Write};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the browser session carries: the SSO session id per tenant.
pub type BrowserSso = BTreeMap<String, String>;

/// The key of [`BrowserSso`] in the tower-sessions session.
pub const SESSION_FIELD: &str = "sso";

/// The logins this browser started: (login id, binding secret), newest last.
pub type BrowserLogins = Vec<(String, String)>;

/// The key of [`BrowserLogins`] in the tower-sessions session.
pub const LOGINS_FIELD: &str = "logins";

/// How many started logins a browser keeps (several tabs at once).
pub const MAX_BROWSER_LOGINS: usize = 8;

/// Remembers a started login in the browser's list, dropping the oldest.
pub fn remember_login(logins: &mut BrowserLogins, login_id: String, secret: String) {
    logins.push((login_id, secret));
    if logins.len() > MAX_BROWSER_LOGINS {
        logins.remove(0);
    }
}

/// A signed-in user of one tenant in one browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsoSession {
    /// Session id (the `sid` claim).
    pub sid: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The connection used.
    pub connection: ConnectionId,
    /// The user.
    pub sub: String,
    /// When the user authenticated (Unix seconds).
    pub auth_time: i64,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// When the session must end whatever else happens (Unix seconds): the
    /// IdP's SAML `SessionNotOnOrAfter` and/or the connection's maximum.
    /// Caps the refresh families started from it.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The authentication context class the IdP reported.
    #[serde(default)]
    pub acr: Option<String>,
    /// Whether the authentication showed multi-factor: a session without
    /// it is not reused for a tenant or app that requires MFA.
    #[serde(default)]
    pub mfa: bool,
    /// Whether the IdP's refresh token was kept with the session
    /// (`upstream_refresh.rs`). It is kept only when the session opens,
    /// never added later, so `Some(false)` lets the app's refresh skip
    /// reading it; `None` (a session stored before this was recorded)
    /// reads it.
    #[serde(default)]
    pub upstream: Option<bool>,
    /// The IdP did not say when the person authenticated (an OIDC ID token
    /// without `auth_time`, a SAML assertion without `AuthnStatement`):
    /// `auth_time` is when its answer arrived, an upper bound, so a request
    /// with `max_age` does not reuse the session (the IdP is asked, and an
    /// answer it again leaves undated is refused: `login.auth_time_unknown`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undated: bool,
    /// The earlier sessions of this user in this browser at this tenant
    /// that this one replaced (a sign-in again: `prompt=login`, `max_age`,
    /// MFA demanded...), newest first, at most [`MAX_REPLACED`]: they are
    /// no longer the browser's, but their codes, refresh families and kept
    /// upstream token live on, so signing out ends them with this one.
    /// Written with the record (no write of its own); absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

/// How many replaced sessions an SSO session remembers; an older one is
/// ended when the next sign-in would push it out.
pub const MAX_REPLACED: usize = 8;

/// What a new session of `sub` does with the browser's session `old_sid`
/// for the same tenant (`old`: its record, if still stored): the sids it
/// remembers as replaced, and the sids to end at once. The same user's
/// sessions are remembered (those beyond [`MAX_REPLACED`] end now); another
/// user's, with every session it had replaced, end now: the browser changed
/// hands. A record already gone is remembered: its families may outlive it.
pub fn succession(old_sid: &str, old: Option<&SsoSession>, sub: &str) -> (Vec<String>, Vec<String>) {
    let mut chain = vec![old_sid.to_owned()];
    if let Some(o) = old {
        chain.extend(o.replaces.iter().filter(|s| s.as_str() != old_sid).cloned());
    }
    match old {
        Some(o) if o.sub != sub => (Vec::new(), chain),
        _ => {
            let overflow = chain.split_off(chain.len().min(MAX_REPLACED));
            (chain, overflow)
        }
    }
}

fn key(t: &TenantId, sid: &str) -> Key {
    Key::tenant(t.as_str(), "sso", format!("session:{sid}"))
}

/// Where the upstream session of `sid` is kept (the IdP's refresh token,
/// [`super::upstream_refresh::UpstreamSession`]): the session's hash tag,
/// so ending the session removes it in the same script.
pub(crate) fn upstream_key(tenant: &str, sid: &str) -> Key {
    Key::tenant(tenant, "sso", format!("upstream:{sid}"))
}

/// The SSO sessions of one user (tag `t:<tenant>:users`), so disabling or
/// deleting the user can end them.
pub(crate) fn user_sessions_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "users", format!("sessions:{sub}"))
}

/// Stores a session with `companion` (a record of the session's own hash
/// tag, `t:<tenant>:sso`, with its TTL: the kept upstream session) in one
/// script, and lists it under its user, sent together: one wait. The
/// writes may fail independently; the caller fails the sign-in on any
/// failure and hands the `sid` out (browser session, code) only after all
/// succeeded, so a session left unlisted is one nobody can present, and a
/// listed `sid` without a record is skipped when the user's sessions end.
pub async fn save(
    store: &SharedStore,
    s: &SsoSession,
    ttl: Duration,
    companion: Option<&(Key, Vec<u8>, Duration)>,
) -> Result<(), StoreError> {
    let record = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let at = key(&s.tenant, &s.sid);
    let mut writes = vec![Write::Put {
        key: &at,
        value: &record,
        ttl: Some(ttl),
    }];
    if let Some((k, value, ttl)) = companion {
        writes.push(Write::Put {
            key: k,
            value,
            ttl: Some(*ttl),
        });
    }
    let index = user_sessions_key(&s.tenant, &s.sub);
    tokio::try_join!(store.write_many(&writes), store.set_add(&index, &s.sid, Some(ttl)))?;
    Ok(())
}

/// Ends every SSO session of the user `sub` (disable, delete), each as
/// [`end`] does.
pub async fn delete_user_sessions(store: &SharedStore, tenant: &TenantId, sub: &str) -> Result<(), StoreError> {
    let index = user_sessions_key(tenant, sub);
    for sid in store.set_members(&index).await? {
        end(store, tenant, &sid).await?;
    }
    store.delete(&index).await.map(|_| ())
}

/// The browser's live session for `tenant`, if any. A session id from the
/// cookie is only a lookup key: the record must belong to `tenant`.
pub async fn load(store: &SharedStore, sso: &BrowserSso, tenant: &TenantId) -> Result<Option<SsoSession>, StoreError> {
    match sso.get(tenant.as_str()) {
        Some(sid) => get(store, tenant, sid).await,
        None => Ok(None),
    }
}

/// The live session `sid` of `tenant`, if any (the record must belong to
/// `tenant`).
pub async fn get(store: &SharedStore, tenant: &TenantId, sid: &str) -> Result<Option<SsoSession>, StoreError> {
    let s: Option<SsoSession> = store.get_json(&key(tenant, sid)).await?;
    Ok(s.filter(|s| &s.tenant == tenant))
}

/// Ends a session: deletes its record and its upstream session (the IdP's
/// refresh token is not kept past the session it served, however it
/// ended: sign-out, the user disabled or deleted, the IdP's refusal) and
/// leaves its tombstone ([`crate::provider::codes::session_ended_key`]),
/// in one script (their shared tag), so a code already issued from it is
/// refused (`code.session_ended`) and starts no refresh family that would
/// outlive the sign-out. Whoever ends a session revokes its families after
/// this.
pub async fn end(store: &SharedStore, tenant: &TenantId, sid: &str) -> Result<(), StoreError> {
    let (at, ended, upstream) = (
        key(tenant, sid),
        session_ended_key(tenant.as_str(), sid),
        upstream_key(tenant.as_str(), sid),
    );
    let writes = [
        Write::Put {
            key: &ended,
            value: b"1",
            ttl: Some(SESSION_ENDED_TTL),
        },
        Write::Delete { key: &at },
        Write::Delete { key: &upstream },
    ];
    store.write_many(&writes).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sub: &str, replaces: &[&str]) -> SsoSession {
        SsoSession {
            sid: "old".into(),
            tenant: TenantId::parse("acme").unwrap(),
            connection: ConnectionId::parse("okta").unwrap(),
            sub: sub.into(),
            auth_time: 0,
            amr: Vec::new(),
            expires_at: None,
            acr: None,
            mfa: false,
            upstream: None,
            undated: false,
            replaces: replaces.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_new_session_remembers_the_same_users_and_ends_anothers() {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // The same user: remembered, newest first, with what it replaced.
        assert_eq!(
            succession("old", Some(&of("alice", &["a", "b"])), "alice"),
            (strings(&["old", "a", "b"]), vec![])
        );
        // A record already gone is remembered (its families may live on).
        assert_eq!(succession("old", None, "alice"), (strings(&["old"]), vec![]));
        // Beyond the bound, the oldest end now.
        let many: Vec<String> = (0..MAX_REPLACED).map(|i| format!("s{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (kept, ended) = succession("old", Some(&of("alice", &many)), "alice");
        assert_eq!(kept.len(), MAX_REPLACED);
        assert_eq!(kept[0], "old");
        assert_eq!(ended, strings(&[many[MAX_REPLACED - 1]]));
        // Another user: nothing remembered, everything ends now.
        assert_eq!(
            succession("old", Some(&of("bob", &["a"])), "alice"),
            (vec![], strings(&["old", "a"]))
        );
        // An absent list is not written.
        let json = serde_json::to_string(&of("alice", &[])).unwrap();
        assert!(!json.contains("replaces"), "{json}");
    }
}
