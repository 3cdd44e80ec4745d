//! The guarded outbound HTTP client for requests to IdPs.
//!
//! Discovery, metadata, JWKS, token and userinfo requests all go through
//! [`OutboundHttp`]: timeouts, a response size limit, no redirects to
//! unchecked hosts, and no loopback or private addresses unless
//! `allow_private_networks` is set.

use super::UpstreamError;
use std::time::Duration;
use url::Url;

/// Settings of the outbound client.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Permit loopback, private, link-local and unique-local addresses.
    pub allow_private_networks: bool,
    /// Connect-plus-response timeout of one request.
    pub timeout: Duration,
    /// The largest response body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The outbound client. Cheap to clone.
#[derive(Clone)]
pub struct OutboundHttp {
    config: OutboundConfig,
    client: reqwest::Client,
}

impl OutboundHttp {
    /// Builds the client.
    pub fn new(config: OutboundConfig) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| UpstreamError::internal("outbound.client", e.to_string()))?;
        Ok(Self { config, client })
    }

    /// The settings in force.
    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// GETs `url` and returns the body (at most `max_body_bytes`).
    pub async fn get_bytes(&self, url: &Url) -> Result<Vec<u8>, UpstreamError> {
        // STUB: the OIDC/outbound work replaces this with the guarded version.
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| UpstreamError::internal("outbound.request", e.to_string()))?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::internal("outbound.request", e.to_string()))?;
        Ok(bytes.to_vec())
    }
}
