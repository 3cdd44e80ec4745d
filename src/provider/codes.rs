//! Authorization codes: single-use, short-lived, bound to the client, the
//! redirect URI and the PKCE challenge.
//!
//! A code reads `<tenant>.<random>`; only its SHA-256 is a store key, so a
//! store dump does not reveal usable codes.
//!
//! Redemption is one atomic [`Store::take_and_mark`](crate::store::Store::take_and_mark):
//! the code is taken and a "used" marker written in the same step, so a
//! concurrent second redemption always finds either the code or the marker,
//! never neither. A replay must revoke what the first redemption issued
//! (RFC 6749 §4.1.2), even when it arrives between the take and the
//! minting, when nothing exists yet. So the first redeemer names what it
//! will issue before it takes the code: the marker carries the access
//! token's `jti` and expiry and the refresh family's id ([`Issued`]). A
//! replayer revokes them whether or not they exist yet:
//!
//! * the `jti` goes on the deny list until the token's expiry: a token
//!   signed later with it is refused like any revoked one;
//! * the family is deleted and its tombstone written in one step
//!   ([`Provider::forbid_family`]); the first redeemer starts the family
//!   in one step that writes nothing when the tombstone is there
//!   ([`Provider::start_family`]), and then fails the grant. Both steps
//!   are on the family's keys, so of the two one runs first: the family
//!   is either deleted or never written.
//!
//! A marker written by an earlier version says only *pending* until its
//! redeemer records what it issued (write what was issued, then read the
//! replay flag, in one step); a replayer that finds one writes the replay
//! flag and reads the marker in one step ([`Provider::record_code_replay`]),
//! so of the two at least one sees the other's write. A replica of an
//! earlier version that replays a code being redeemed by this one revokes
//! the named family only if it started already: a window that exists only
//! during a rolling upgrade (the access token is revoked either way).

use super::Provider;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreError, StoreJson, Taken};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a code grants: one completed authorization of one user for one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authorization {
    /// The user's tenant.
    pub tenant: TenantId,
    /// The connection the user signed in through.
    pub connection: ConnectionId,
    /// The app.
    pub client_id: String,
    /// The redirect URI of the authorization request (must match at the token endpoint).
    pub redirect_uri: String,
    /// Granted scopes.
    pub scope: Vec<String>,
    /// The app's nonce, echoed in the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// The user.
    pub sub: String,
    /// The SSO session.
    pub sid: String,
    /// When the user authenticated at the IdP (Unix seconds).
    pub auth_time: i64,
    /// Authentication methods.
    pub amr: Vec<String>,
    /// The resource server the access tokens are for (RFC 8707), decided at
    /// `/authorize`; `None`: the client itself.
    #[serde(default)]
    pub resource: Option<String>,
    /// The SSO session's hard end (Unix seconds), if any: refresh families
    /// started from this authorization end then too.
    #[serde(default)]
    pub session_expires_at: Option<i64>,
    /// The authentication context class the IdP reported (the `acr` claim).
    #[serde(default)]
    pub acr: Option<String>,
    /// Whether the SSO session kept the IdP's refresh token (see
    /// `broker::session::SsoSession::upstream`): `Some(false)` means the
    /// refresh grant has no upstream session to check and does not read
    /// one; `None` (stored before this was recorded) reads it.
    #[serde(default)]
    pub upstream_session: Option<bool>,
    /// When the app was registered (Unix milliseconds) as the authorization
    /// request was checked: an app deleted and registered again under the
    /// same id redeems none of its predecessor's codes. `None` (stored
    /// before this was recorded) is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_registered_at: Option<i64>,
}

/// The tenant a code names (`<tenant>.<random>`), if it has the shape of
/// one of ours; anything else is unknown without a read.
fn code_tenant(code: &str) -> Option<&str> {
    let (tenant, _) = code.split_once('.')?;
    (TenantId::parse(tenant).is_ok() && code.len() <= 256).then_some(tenant)
}

fn code_hash(code: &str) -> String {
    crate::tokens::sha256_base64url(code.as_bytes())
}

fn code_key(tenant: &str, hash: &str) -> Key {
    Key::tenant(tenant, "codes", format!("code:{hash}"))
}

fn used_key(tenant: &str, hash: &str) -> Key {
    Key::tenant(tenant, "codes", format!("used:{hash}"))
}

fn replayed_key(tenant: &str, hash: &str) -> Key {
    Key::tenant(tenant, "codes", format!("replayed:{hash}"))
}

/// The longest a code lives (`tokens.code_ttl_secs` is at most this).
pub const MAX_CODE_TTL_SECS: u64 = 600;

/// How long an ended SSO session's tombstone is kept: longer than any code
/// issued from the session can still be redeemed, with a minute more for a
/// code issued by a request that read the session just before it ended.
pub const SESSION_ENDED_TTL: Duration = Duration::from_secs(MAX_CODE_TTL_SECS + 60);

/// The tombstone of the ended SSO session `sid` (sign-out, a user's
/// sessions ended, the IdP refusing the upstream session): its codes are
/// refused (`code.session_ended`) and no refresh family is listed under it
/// any more (see [`Provider::start_family`]). It shares the tag
/// `t:<tenant>:sso` with the session's record, which is deleted in the same
/// script, and with the index of the session's refresh families.
pub fn session_ended_key(tenant: &str, sid: &str) -> Key {
    Key::tenant(tenant, "sso", format!("ended:{sid}"))
}

/// What the first redemption of a code issued, so a replay can revoke it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Issued {
    /// The refresh-token family started, if any.
    pub family: Option<String>,
    /// The access token's `jti`.
    pub jti: Option<String>,
    /// The access token's expiry (Unix seconds).
    pub exp: i64,
    /// Written by an earlier version: the first redemption has taken the
    /// code but not yet recorded what it issued (see the module docs).
    #[serde(default)]
    pub pending: bool,
}

/// The outcome of a redemption attempt.
#[derive(Debug)]
pub enum Redeemed {
    /// First use.
    Fresh(Box<Authorization>),
    /// The code was already redeemed; carries what the first use issued.
    Reused(Issued),
    /// Unknown or expired.
    Unknown,
}

impl Provider {
    /// Whether the SSO session `sid` of `tenant` was ended (its tombstone,
    /// [`session_ended_key`], is there).
    pub async fn session_ended(&self, tenant: &TenantId, sid: &str) -> Result<bool, StoreError> {
        self.store.exists(&session_ended_key(tenant.as_str(), sid)).await
    }

    /// Issues a code for `authz`.
    pub async fn issue_code(&self, authz: &Authorization) -> Result<String, StoreError> {
        let code = format!("{}.{}", authz.tenant, crate::tokens::random_token(32));
        let ttl = Duration::from_secs(self.ttl.code_ttl_secs);
        self.store
            .put_json(&code_key(authz.tenant.as_str(), &code_hash(&code)), authz, Some(ttl))
            .await?;
        Ok(code)
    }

    /// How long a "used" marker and a replay flag are kept: well past the
    /// code's own lifetime, so late replays are still caught.
    fn used_ttl(&self) -> Duration {
        Duration::from_secs(self.ttl.code_ttl_secs.saturating_mul(10).max(60))
    }

    /// What `code` grants, read without consuming it (`None`: unknown,
    /// expired or already taken). Only a hint: the redemption still takes
    /// the code ([`Self::redeem_code`]) and goes on only with the very
    /// authorization it took.
    pub async fn peek_code(&self, code: &str) -> Result<Option<Authorization>, StoreError> {
        let Some(tenant) = code_tenant(code) else {
            return Ok(None);
        };
        self.store.get_json(&code_key(tenant, &code_hash(code))).await
    }

    /// Redeems a code: takes it and leaves its "used" marker, naming what
    /// this redemption will issue (`will_issue`), in one atomic step.
    pub async fn redeem_code(&self, code: &str, will_issue: &Issued) -> Result<Redeemed, StoreError> {
        let Some(tenant) = code_tenant(code) else {
            return Ok(Redeemed::Unknown);
        };
        let hash = code_hash(code);
        let marker = serde_json::to_vec(will_issue).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match self
            .store
            .take_and_mark(
                &code_key(tenant, &hash),
                &used_key(tenant, &hash),
                &marker,
                self.used_ttl(),
            )
            .await?
        {
            Taken::Value(raw) => {
                let authz: Authorization =
                    serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Redeemed::Fresh(Box::new(authz)))
            }
            Taken::Marker(raw) => {
                let issued: Issued = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Redeemed::Reused(issued))
            }
            Taken::Absent => Ok(Redeemed::Unknown),
        }
    }

    /// Records that `code` was presented again, then answers what the first
    /// redemption has recorded as issued so far (the caller revokes it);
    /// for a marker an earlier version left pending (see the module docs).
    pub async fn record_code_replay(&self, code: &str, tenant: &TenantId) -> Result<Option<Issued>, StoreError> {
        let hash = code_hash(code);
        // Write then read, in one script (one round trip, one step).
        self.store
            .put_then_get(
                &replayed_key(tenant.as_str(), &hash),
                b"1",
                Some(self.used_ttl()),
                &used_key(tenant.as_str(), &hash),
            )
            .await?
            .map(|raw| serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}
