//! What we know about the IdP: its discovery document and its signing keys.
//!
//! Both are fetched through the guarded client and cached in the connector
//! (connectors are rebuilt when the connection changes). Expiry follows the
//! injected clock. Fetching the keys again because a token names an unknown
//! `kid` is rate-limited through the shared store, so a flood of forged
//! tokens cannot turn the gateway fleet into a JWKS hammer.

use super::super::{UpstreamContext, UpstreamError};
use crate::store::Key;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use url::Url;

/// How long a discovery document is trusted before it is fetched again.
const METADATA_TTL_SECS: i64 = 3600;
/// How long a key set is trusted before it is fetched again.
const JWKS_TTL_SECS: i64 = 3600;
/// The window in which at most one unknown-`kid` refetch happens per connection.
pub const JWKS_REFETCH_WINDOW_SECS: u64 = 10;

/// The parts of the discovery document (OpenID Connect Discovery 1.0) we use.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    /// The issuer identifier, compared byte for byte with the configured one.
    pub issuer: String,
    /// Where the browser is sent.
    pub authorization_endpoint: Url,
    /// Where the code is exchanged.
    #[serde(default)]
    pub token_endpoint: Option<Url>,
    /// The signing keys.
    pub jwks_uri: Url,
    /// Where more claims can be read with the access token.
    #[serde(default)]
    pub userinfo_endpoint: Option<Url>,
    /// Client authentication methods at the token endpoint; absent means
    /// `client_secret_basic` only.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 9207: the IdP puts `iss` on every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl ProviderMetadata {
    /// Parses and checks a discovery document for `issuer`.
    pub fn parse(bytes: &[u8], issuer: &str) -> Result<Self, String> {
        let meta: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("the discovery document is not valid: {e}"))?;
        if meta.issuer != issuer {
            return Err(format!(
                "the discovery document names issuer \"{}\", not \"{issuer}\"",
                meta.issuer
            ));
        }
        let token = meta
            .token_endpoint
            .as_ref()
            .ok_or("the discovery document has no token_endpoint")?;
        // An https issuer must not hand out endpoints that can be read or
        // altered on the wire.
        let https = issuer.starts_with("https://");
        let mut endpoints = vec![&meta.authorization_endpoint, token, &meta.jwks_uri];
        endpoints.extend(meta.userinfo_endpoint.as_ref());
        for url in endpoints {
            let ok = match url.scheme() {
                "https" => true,
                "http" => !https,
                _ => false,
            };
            if !ok {
                return Err(format!("the endpoint {url} does not use https"));
            }
        }
        Ok(meta)
    }

    /// The token endpoint (checked present by [`ProviderMetadata::parse`]).
    pub fn token_endpoint(&self) -> Result<&Url, UpstreamError> {
        self.token_endpoint
            .as_ref()
            .ok_or_else(|| UpstreamError::internal("oidc.discovery", "the IdP has no token endpoint"))
    }

    /// Whether the token endpoint takes the secret in the form body instead
    /// of HTTP Basic (only when the IdP supports post but not basic).
    pub fn prefers_client_secret_post(&self) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            None => false,
            Some(methods) => {
                !methods.iter().any(|m| m == "client_secret_basic") && methods.iter().any(|m| m == "client_secret_post")
            }
        }
    }
}

/// The discovery URL of an issuer (OpenID Connect Discovery 1.0 §4).
pub fn discovery_url(issuer: &str) -> Result<Url, String> {
    Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
    .map_err(|e| format!("the issuer is not a URL: {e}"))
}

/// Fetches and checks the discovery document of `issuer`.
pub async fn discover(ctx: &UpstreamContext, issuer: &str) -> Result<ProviderMetadata, UpstreamError> {
    let url = discovery_url(issuer).map_err(|e| UpstreamError::internal("oidc.discovery", e))?;
    let bytes = ctx.http.get_bytes(&url).await?;
    ProviderMetadata::parse(&bytes, issuer).map_err(|e| UpstreamError::internal("oidc.discovery", e))
}

struct Cached<T> {
    value: Arc<T>,
    expires: DateTime<Utc>,
}

/// The per-connector cache of metadata and keys.
pub struct Provider {
    issuer: String,
    rate_key: Key,
    metadata: Mutex<Option<Cached<ProviderMetadata>>>,
    jwks: Mutex<Option<Cached<Vec<Jwk>>>>,
}

impl Provider {
    /// An empty cache for `issuer`; `rate_key` names the shared refetch counter.
    pub fn new(issuer: String, rate_key: Key) -> Self {
        Self {
            issuer,
            rate_key,
            metadata: Mutex::new(None),
            jwks: Mutex::new(None),
        }
    }

    /// The discovery document, fetched when absent or stale.
    pub async fn metadata(&self, ctx: &UpstreamContext) -> Result<Arc<ProviderMetadata>, UpstreamError> {
        let now = ctx.clock.now();
        if let Some(hit) = fresh(&self.metadata, now) {
            return Ok(hit);
        }
        let meta = Arc::new(discover(ctx, &self.issuer).await?);
        store(&self.metadata, meta.clone(), now + Duration::seconds(METADATA_TTL_SECS));
        Ok(meta)
    }

    /// The signing keys; fetched when absent, stale or `refresh` is set.
    pub async fn keys(&self, ctx: &UpstreamContext, refresh: bool) -> Result<Arc<Vec<Jwk>>, UpstreamError> {
        let now = ctx.clock.now();
        if !refresh {
            if let Some(hit) = fresh(&self.jwks, now) {
                return Ok(hit);
            }
        }
        let meta = self.metadata(ctx).await?;
        let bytes = ctx.http.get_bytes(&meta.jwks_uri).await?;
        let keys = Arc::new(parse_jwks(&bytes)?);
        store(&self.jwks, keys.clone(), now + Duration::seconds(JWKS_TTL_SECS));
        Ok(keys)
    }

    /// Whether a refetch for an unknown `kid` may happen now. The counter
    /// lives in the shared store, so all replicas together fetch at most once
    /// per window for this connection.
    pub async fn may_refetch(&self, ctx: &UpstreamContext) -> Result<bool, UpstreamError> {
        let n = ctx
            .store
            .incr(&self.rate_key, std::time::Duration::from_secs(JWKS_REFETCH_WINDOW_SECS))
            .await
            .map_err(|e| UpstreamError::internal("oidc.store", e.to_string()))?;
        Ok(n == 1)
    }
}

fn fresh<T>(slot: &Mutex<Option<Cached<T>>>, now: DateTime<Utc>) -> Option<Arc<T>> {
    let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().filter(|c| c.expires > now).map(|c| c.value.clone())
}

fn store<T>(slot: &Mutex<Option<Cached<T>>>, value: Arc<T>, expires: DateTime<Utc>) {
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    *guard = Some(Cached { value, expires });
}

/// Parses a JWK set, keeping the keys we can use for signatures. Keys are
/// read one by one so a single exotic key does not hide the others;
/// symmetric (`oct`) keys and encryption keys are dropped.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, UpstreamError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::internal("oidc.jwks", format!("the JWKS is not valid: {e}")))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter(|k| {
            !matches!(
                k.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) | jsonwebtoken::jwk::AlgorithmParameters::Other(_)
            )
        })
        .filter(|k| {
            !matches!(
                k.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        })
        .collect())
}
