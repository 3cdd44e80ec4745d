//! Authorization codes: single-use, short-lived, bound to the client, the
//! redirect URI and the PKCE challenge.
//!
//! A code reads `<tenant>.<random>`; only its SHA-256 is a store key, so a
//! store dump does not reveal usable codes. Redemption is an atomic `take`.
//! A second redemption finds the "used" marker and revokes the refresh-token
//! family the first one started (RFC 6749 §4.1.2).

use super::Provider;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreError, StoreJson};
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

/// What the first redemption of a code issued, so a replay can revoke it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Issued {
    /// The refresh-token family started, if any.
    pub family: Option<String>,
    /// The access token's `jti`.
    pub jti: Option<String>,
    /// The access token's expiry (Unix seconds).
    pub exp: i64,
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
    /// Issues a code for `authz`.
    pub async fn issue_code(&self, authz: &Authorization) -> Result<String, StoreError> {
        let code = format!("{}.{}", authz.tenant, crate::tokens::random_token(32));
        let ttl = Duration::from_secs(self.ttl.code_ttl_secs);
        self.store
            .put_json(&code_key(authz.tenant.as_str(), &code_hash(&code)), authz, Some(ttl))
            .await?;
        Ok(code)
    }

    /// Redeems a code atomically.
    pub async fn redeem_code(&self, code: &str) -> Result<Redeemed, StoreError> {
        let Some((tenant, _)) = code.split_once('.') else {
            return Ok(Redeemed::Unknown);
        };
        if TenantId::parse(tenant).is_err() || code.len() > 256 {
            return Ok(Redeemed::Unknown);
        }
        let hash = code_hash(code);
        if let Some(authz) = self.store.take_json::<Authorization>(&code_key(tenant, &hash)).await? {
            return Ok(Redeemed::Fresh(Box::new(authz)));
        }
        match self.store.get_json::<Issued>(&used_key(tenant, &hash)).await? {
            Some(issued) => Ok(Redeemed::Reused(issued)),
            None => Ok(Redeemed::Unknown),
        }
    }

    /// Records that `code` was redeemed and what it issued.
    pub async fn mark_code_used(&self, code: &str, tenant: &TenantId, issued: &Issued) -> Result<(), StoreError> {
        // Kept well past the code's own lifetime so late replays are still caught.
        let ttl = Duration::from_secs(self.ttl.code_ttl_secs * 10);
        self.store
            .put_json(&used_key(tenant.as_str(), &code_hash(code)), issued, Some(ttl))
            .await
    }
}
