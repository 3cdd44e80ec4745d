//! Apps (OIDC clients) of the SaaS: one registry for the whole platform.
//!
//! Secrets are generated (256 bits), shown once, and stored only as a
//! SHA-256 hash: they are random keys, not passwords, so a fast hash is
//! enough and comparison is constant-time.

use crate::ids::TenantId;
use crate::secret::Secret;
use crate::store::record_cache::RecordCache;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use url::Url;

/// A registered app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    /// The client id.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Hex SHA-256 of the secret; `None` for public clients (PKCE required).
    pub secret_sha256: Option<String>,
    /// The secret replaced by the last rotation, accepted until its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Exact post-logout redirect URIs.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Tenants this app may sign users of (empty: any).
    #[serde(default)]
    pub allowed_tenants: Vec<TenantId>,
    /// API scopes (defined by resource servers) this app may be granted;
    /// the OIDC scopes are always allowed.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// The grants this app may use at the token endpoint.
    #[serde(default = "default_grant_types")]
    pub grant_types: Vec<GrantType>,
    /// The resource server its access tokens are for when a request names none.
    #[serde(default)]
    pub default_resource: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Sign-ins to this app need multi-factor authentication at the IdP.
    #[serde(default)]
    pub require_mfa: bool,
}

/// A rotated-out secret that keeps working for an overlap window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// Hex SHA-256 of the previous secret.
    pub sha256: String,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// The default overlap of a secret rotation (24 hours).
pub const DEFAULT_ROTATION_OVERLAP_SECS: u64 = 24 * 3600;
/// The longest overlap of a secret rotation (30 days).
pub const MAX_ROTATION_OVERLAP_SECS: u64 = 30 * 24 * 3600;

impl Client {
    /// True for a public client (no secret; PKCE required).
    pub fn is_public(&self) -> bool {
        self.secret_sha256.is_none()
    }

    /// Checks a presented secret in constant time: the current one, or the
    /// previous one while its overlap lasts at `now`.
    pub fn secret_matches(&self, presented: &str, now: DateTime<Utc>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(stored) = &self.secret_sha256 else {
            return false;
        };
        let hashed = hash_secret(presented);
        let current: bool = hashed.as_bytes().ct_eq(stored.as_bytes()).into();
        // Both comparisons always run, so timing does not tell which matched.
        let previous: bool = match &self.previous_secret {
            Some(p) => {
                let same: bool = hashed.as_bytes().ct_eq(p.sha256.as_bytes()).into();
                same && now < p.expires_at
            }
            None => false,
        };
        current | previous
    }

    /// Replaces the secret by `new_sha256`; the current one keeps working
    /// until `previous_expires_at`.
    pub fn rotate_secret(&mut self, new_sha256: String, previous_expires_at: DateTime<Utc>) {
        if let Some(old) = self.secret_sha256.replace(new_sha256) {
            self.previous_secret = Some(PreviousSecret {
                sha256: old,
                expires_at: previous_expires_at,
            });
        }
    }

    /// True if `tenant` may be used with this app.
    pub fn allows_tenant(&self, tenant: &TenantId) -> bool {
        self.allowed_tenants.is_empty() || self.allowed_tenants.contains(tenant)
    }

    /// True if this app may use `grant`.
    pub fn allows_grant(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// True if `requested` is one of the registered redirect URIs: an exact
    /// match, or (RFC 8252 §7.3) a registered `http` loopback IP literal
    /// (`127.0.0.0/8`, `[::1]`) with any port. `localhost` stays exact.
    pub fn redirect_uri_matches(&self, requested: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|r| r == requested || loopback_any_port(r, requested))
    }
}

/// A grant type an app may be allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// `authorization_code` (sign-in through `/authorize`).
    AuthorizationCode,
    /// `refresh_token`.
    RefreshToken,
    /// `client_credentials` (machine to machine; confidential apps only).
    ClientCredentials,
    /// RFC 8693 token exchange: a user's access token for a short-lived one
    /// scoped to one resource server by the tenant's exchange rules.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

impl GrantType {
    /// Its name at the token endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => TOKEN_EXCHANGE,
        }
    }

    /// Parses a `grant_type` name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            "client_credentials" => Some(Self::ClientCredentials),
            TOKEN_EXCHANGE => Some(Self::TokenExchange),
            _ => None,
        }
    }
}

/// The `grant_type` of RFC 8693 token exchange.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The grant types of an app registered without `grant_types`.
pub fn default_grant_types() -> Vec<GrantType> {
    vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
}

/// An `http` URL whose host is a loopback IP literal.
fn loopback_ip_url(uri: &str) -> Option<Url> {
    let url = Url::parse(uri).ok()?;
    let loopback = match url.host()? {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(_) => false,
    };
    (url.scheme() == "http" && loopback).then_some(url)
}

/// RFC 8252 §7.3: a registered loopback IP redirect URI matches the
/// requested one whatever the port, everything else being equal.
fn loopback_any_port(registered: &str, requested: &str) -> bool {
    let (Some(mut reg), Some(mut req)) = (loopback_ip_url(registered), loopback_ip_url(requested)) else {
        return false;
    };
    if reg.set_port(None).is_err() || req.set_port(None).is_err() {
        return false;
    }
    // Userinfo in a redirect URI is never expected; refuse rather than compare it away.
    req.username().is_empty() && req.password().is_none() && reg == req
}

/// URI schemes that are never a native app's private-use scheme.
const NOT_PRIVATE_USE: [&str; 12] = [
    "http",
    "https",
    "javascript",
    "data",
    "file",
    "vbscript",
    "blob",
    "about",
    "ftp",
    "ws",
    "wss",
    "filesystem",
];

/// Hex SHA-256 of a client secret.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Checks that a redirect URI is absolute, without fragment, and one of
/// (RFC 8252): https; http on `localhost` or a loopback IP literal
/// (`127.0.0.0/8`, `[::1]`); or a private-use scheme named by a reverse
/// domain (`com.example.app:/cb`, the scheme holding a dot).
pub fn check_redirect_uri(uri: &str) -> Result<Url, String> {
    let url = Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URL ({e})"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err(format!("{uri:?} must not contain a fragment"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if url.host_str() == Some("localhost") || loopback_ip_url(uri).is_some() => Ok(url),
        "http" => Err(format!(
            "{uri:?} must use https (http is allowed only for localhost and loopback IP addresses)"
        )),
        s if s.contains('.') && !NOT_PRIVATE_USE.contains(&s) => Ok(url),
        _ => Err(format!(
            "{uri:?} must be an https URL, an http loopback URL, or use a private-use scheme named by a reverse domain (com.example.app:/callback)"
        )),
    }
}

/// Why a client could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The id is taken.
    #[error("client {0} already exists")]
    Exists(String),
    /// The client to update is gone (deleted meanwhile): nothing was
    /// written, so a deleted app stays deleted.
    #[error("client {0} not found")]
    NotFound(String),
    /// The client changed between the caller's read and its write
    /// (another writer won a compare-and-set): nothing was written.
    #[error("client {0} changed meanwhile")]
    Changed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`ClientRegistry::modify`] reads again after losing a
/// compare-and-set before it reports [`ClientError::Changed`].
const MODIFY_ATTEMPTS: usize = 5;

/// How many decoded app records a replica keeps (keyed by configuration;
/// past this the least recently used are read again on their next use).
const CLIENTS_KEPT: usize = 10_000;

/// The store-backed client registry. Cheap to clone (clones share the kept
/// records).
#[derive(Clone)]
pub struct ClientRegistry {
    store: SharedStore,
    /// Decoded app records, re-validated by fingerprint on every read.
    records: RecordCache<String, Client>,
}

pub(crate) fn client_key(id: &str) -> Key {
    Key::global("clients", format!("client:{id}"))
}
pub(crate) fn index_key() -> Key {
    Key::global("clients", "index")
}

impl ClientRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            records: RecordCache::new(CLIENTS_KEPT),
        }
    }

    /// Registers a client; fails if the id is taken.
    pub async fn create(&self, client: &Client) -> Result<(), ClientError> {
        if !self
            .store
            .put_json_if_absent(&client_key(&client.client_id), client, None)
            .await?
        {
            return Err(ClientError::Exists(client.client_id.clone()));
        }
        self.store.set_add(&index_key(), &client.client_id, None).await?;
        Ok(())
    }

    /// Registers or replaces a client declared in the config file, which is
    /// the authority for it. Everything else changes an app with
    /// [`Self::update`] or [`Self::modify`], which never bring back a
    /// deleted app nor overwrite a concurrent change.
    pub async fn put(&self, client: &Client) -> Result<(), ClientError> {
        self.store
            .put_json(&client_key(&client.client_id), client, None)
            .await?;
        self.store.set_add(&index_key(), &client.client_id, None).await?;
        Ok(())
    }

    /// Replaces the stored client `old` by `new` (same id).
    ///
    /// Compare-and-set against the bytes stored now: written only if they
    /// still hold `old`; otherwise nothing changes and the answer is
    /// [`ClientError::Changed`] (a concurrent update or secret rotation
    /// won). A client deleted meanwhile is not written again
    /// ([`ClientError::NotFound`], or `Changed` when the deletion came
    /// between this read and the write), and its index entry is not touched.
    pub async fn update(&self, old: &Client, new: &Client) -> Result<(), ClientError> {
        let id = &new.client_id;
        let key = client_key(id);
        let Some(raw) = self.store.get(&key).await? else {
            return Err(ClientError::NotFound(id.clone()));
        };
        if crate::store::record_cache::json::<Client>(&raw)? != *old {
            tracing::info!(reason = "client.update_conflict", client_id = %id, "the app changed meanwhile");
            return Err(ClientError::Changed(id.clone()));
        }
        let encoded = serde_json::to_vec(new).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !self.store.compare_and_put(&key, &raw, &encoded, None).await? {
            tracing::info!(reason = "client.update_conflict", client_id = %id, "the app changed meanwhile");
            return Err(ClientError::Changed(id.clone()));
        }
        Ok(())
    }

    /// Applies `change` to the stored client `id` and writes it back with a
    /// compare-and-set, reading again (up to a few times) when a concurrent
    /// writer won: for a change that is right whatever else changed
    /// meanwhile (a secret rotation). A client that is gone stays gone
    /// ([`ClientError::NotFound`]). Answers the client as written.
    pub async fn modify(&self, id: &str, mut change: impl FnMut(&mut Client) + Send) -> Result<Client, ClientError> {
        let key = client_key(id);
        for _ in 0..MODIFY_ATTEMPTS {
            let Some(raw) = self.store.get(&key).await? else {
                return Err(ClientError::NotFound(id.to_owned()));
            };
            let mut client: Client = crate::store::record_cache::json(&raw)?;
            change(&mut client);
            let encoded = serde_json::to_vec(&client).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if self.store.compare_and_put(&key, &raw, &encoded, None).await? {
                return Ok(client);
            }
        }
        tracing::warn!(reason = "client.update_conflict", client_id = %id, "the app kept changing meanwhile");
        Err(ClientError::Changed(id.to_owned()))
    }

    /// Reads a client as the store holds it now: the record's fingerprint
    /// is read on every call, and the record itself (a few KB: redirect
    /// URIs, hashed secrets) only when it changed since this replica last
    /// decoded it. So a deletion, a secret rotation or a change of
    /// `allowed_tenants` on any replica counts at once everywhere.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        if id.is_empty() || id.len() > 255 {
            return Ok(None);
        }
        let key = client_key(id);
        self.records
            .get(&self.store, &key, &id.to_owned(), crate::store::record_cache::json)
            .await
    }

    /// All client ids.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.store.set_members(&index_key()).await
    }

    /// At most `limit` clients with ids after `after`, ordered by id, and
    /// the id to continue after when there may be more.
    pub async fn page(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Client>, Option<String>), StoreError> {
        let mut ids = self.list().await?;
        ids.sort();
        let mut out = Vec::new();
        let mut last = None;
        for id in ids.iter().filter(|id| after.is_none_or(|a| id.as_str() > a)) {
            if out.len() == limit {
                return Ok((out, last));
            }
            last = Some(id.clone());
            if let Some(c) = self.get(id).await? {
                out.push(Arc::unwrap_or_clone(c));
            }
        }
        Ok((out, None))
    }

    /// Deletes a client. Returns `false` if it did not exist.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.delete(&client_key(id)).await?;
        self.records.forget(&id.to_owned());
        self.store.set_remove(&index_key(), id).await?;
        Ok(existed)
    }
}

/// A fresh client secret.
pub fn new_secret() -> Secret {
    Secret::new(crate::tokens::random_token(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_checked() {
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:3000/cb").is_ok());
        assert!(check_redirect_uri("http://app.example.com/cb").is_err());
        assert!(check_redirect_uri("https://app.example.com/cb#x").is_err());
        assert!(check_redirect_uri("/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        // RFC 8252: any loopback IP literal, private-use reverse-domain schemes.
        assert!(check_redirect_uri("http://127.0.0.2:8000/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("com.example.app:/cb").is_ok());
        assert!(check_redirect_uri("myapp:/cb").is_err(), "no dot: not a reverse domain");
        assert!(check_redirect_uri("http://128.0.0.1/cb").is_err());
        assert!(check_redirect_uri("http://127.0.0.1.example.com/cb").is_err());
        assert!(check_redirect_uri("data:text/html,x").is_err());
        assert!(check_redirect_uri("file:///etc/passwd").is_err());
        assert!(check_redirect_uri("com.example.app:/cb#frag").is_err());
    }

    #[test]
    fn loopback_ip_redirect_uris_match_any_port() {
        let c = Client {
            require_mfa: false,
            client_id: "a".into(),
            name: "A".into(),
            secret_sha256: None,
            previous_secret: None,
            redirect_uris: vec![
                "http://127.0.0.1/cb".into(),
                "http://[::1]:5000/cb".into(),
                "http://localhost:4000/cb".into(),
            ],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            allowed_scopes: vec![],
            grant_types: default_grant_types(),
            default_resource: None,
            created_at: DateTime::<Utc>::MIN_UTC,
        };
        assert!(c.redirect_uri_matches("http://127.0.0.1:51234/cb"));
        assert!(c.redirect_uri_matches("http://127.0.0.1/cb"));
        assert!(c.redirect_uri_matches("http://[::1]:1/cb"));
        assert!(!c.redirect_uri_matches("http://127.0.0.1:51234/other"));
        assert!(!c.redirect_uri_matches("http://127.0.0.2:51234/cb"), "another address");
        assert!(!c.redirect_uri_matches("http://127.0.0.1:5/cb?x=1"));
        assert!(!c.redirect_uri_matches("http://u:p@127.0.0.1:5/cb"));
        assert!(
            !c.redirect_uri_matches("http://localhost:4001/cb"),
            "localhost stays exact"
        );
        assert!(c.redirect_uri_matches("http://localhost:4000/cb"));
    }

    #[test]
    fn secrets_compare_by_hash() {
        let c = Client {
            require_mfa: false,
            client_id: "a".into(),
            name: "A".into(),
            secret_sha256: Some(hash_secret("s3cret")),
            previous_secret: None,
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            allowed_scopes: vec![],
            grant_types: default_grant_types(),
            default_resource: None,
            created_at: DateTime::<Utc>::MIN_UTC,
        };
        let now = DateTime::<Utc>::UNIX_EPOCH;
        assert!(c.secret_matches("s3cret", now));
        assert!(!c.secret_matches("s3cre", now));
        let mut r = c.clone();
        r.rotate_secret(hash_secret("n3w"), now + chrono::Duration::seconds(10));
        assert!(r.secret_matches("n3w", now));
        assert!(r.secret_matches("s3cret", now + chrono::Duration::seconds(9)));
        assert!(!r.secret_matches("s3cret", now + chrono::Duration::seconds(10)));
        assert!(!c.is_public());
    }
}
