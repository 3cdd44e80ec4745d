//! Apps (OIDC clients) of the SaaS: one registry for the whole platform.
//!
//! Secrets are generated (256 bits), shown once, and stored only as a
//! SHA-256 hash: they are random keys, not passwords, so a fast hash is
//! enough and comparison is constant-time.

use crate::ids::TenantId;
use crate::secret::Secret;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Exact post-logout redirect URIs.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Tenants this app may sign users of (empty: any).
    #[serde(default)]
    pub allowed_tenants: Vec<TenantId>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl Client {
    /// True for a public client (no secret; PKCE required).
    pub fn is_public(&self) -> bool {
        self.secret_sha256.is_none()
    }

    /// Checks a presented secret in constant time.
    pub fn secret_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        match &self.secret_sha256 {
            Some(stored) => hash_secret(presented).as_bytes().ct_eq(stored.as_bytes()).into(),
            None => false,
        }
    }

    /// True if `tenant` may be used with this app.
    pub fn allows_tenant(&self, tenant: &TenantId) -> bool {
        self.allowed_tenants.is_empty() || self.allowed_tenants.contains(tenant)
    }
}

/// Hex SHA-256 of a client secret.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Checks that a redirect URI is absolute, without fragment, and https
/// (plain http only on loopback hosts, RFC 8252).
pub fn check_redirect_uri(uri: &str) -> Result<Url, String> {
    let url = Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URL ({e})"))?;
    if url.fragment().is_some() {
        return Err(format!("{uri:?} must not contain a fragment"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) => Ok(url),
        "http" => Err(format!("{uri:?} must use https (http is allowed only for localhost)")),
        _ => Err(format!("{uri:?} must be an http(s) URL")),
    }
}

/// Why a client could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The id is taken.
    #[error("client {0} already exists")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store-backed client registry.
#[derive(Clone)]
pub struct ClientRegistry {
    store: SharedStore,
}

fn client_key(id: &str) -> Key {
    Key::global("clients", format!("client:{id}"))
}
fn index_key() -> Key {
    Key::global("clients", "index")
}

impl ClientRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
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

    /// Registers or replaces a client (declared in the config file).
    pub async fn put(&self, client: &Client) -> Result<(), ClientError> {
        self.store
            .put_json(&client_key(&client.client_id), client, None)
            .await?;
        self.store.set_add(&index_key(), &client.client_id, None).await?;
        Ok(())
    }

    /// Reads a client.
    pub async fn get(&self, id: &str) -> Result<Option<Client>, StoreError> {
        if id.is_empty() || id.len() > 255 {
            return Ok(None);
        }
        self.store.get_json(&client_key(id)).await
    }

    /// All client ids.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.store.set_members(&index_key()).await
    }

    /// Deletes a client. Returns `false` if it did not exist.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.delete(&client_key(id)).await?;
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
    }

    #[test]
    fn secrets_compare_by_hash() {
        let c = Client {
            client_id: "a".into(),
            name: "A".into(),
            secret_sha256: Some(hash_secret("s3cret")),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            created_at: DateTime::<Utc>::MIN_UTC,
        };
        assert!(c.secret_matches("s3cret"));
        assert!(!c.secret_matches("s3cre"));
        assert!(!c.is_public());
    }
}
