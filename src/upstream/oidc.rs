//! The OpenID Connect upstream connector. (Skeleton: replaced by the OIDC work.)

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, SetupError,
    UpstreamContext, UpstreamError,
};
use crate::secret::Secret;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use url::Url;

/// Stored configuration of an OIDC connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OidcConfig {
    /// The IdP's issuer identifier.
    pub issuer: Url,
    /// Our client id at the IdP.
    pub client_id: String,
    /// Our client secret at the IdP (absent for public clients).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Scopes to request (`openid` is always added).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The body of `POST /admin/v1/tenants/{id}/connections` for `"kind":"oidc"`,
/// without `id` and `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConnectionRequest {
    /// The IdP's issuer identifier.
    pub issuer: Url,
    /// Our client id at the IdP.
    pub client_id: String,
    /// Our client secret at the IdP.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Validates a connection request (including discovery at the issuer) and
/// returns the configuration to store.
pub async fn setup(
    request: serde_json::Value,
    ctx: &UpstreamContext,
) -> Result<OidcConfig, SetupError> {
    let req: OidcConnectionRequest =
        serde_json::from_value(request).map_err(|e| SetupError::new("body", e.to_string()))?;
    let _ = ctx;
    Ok(OidcConfig {
        issuer: req.issuer,
        client_id: req.client_id,
        client_secret: req.client_secret,
        scopes: req.scopes,
    })
}

/// The redirect URI to register at the IdP for this connection.
pub fn redirect_uri(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!(
        "oidc/{}/{}/callback",
        connection.tenant, connection.id
    ))
}

/// The OIDC connector for one connection.
pub struct OidcConnector {
    _cfg: OidcConfig,
}

impl OidcConnector {
    /// Builds the connector.
    pub fn new(
        _connection: &Connection,
        cfg: OidcConfig,
        _ctx: UpstreamContext,
    ) -> Result<Self, UpstreamError> {
        Ok(Self { _cfg: cfg })
    }
}

#[async_trait]
impl Connector for OidcConnector {
    async fn begin(&self, _req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        Err(UpstreamError::internal("oidc.unimplemented", "skeleton"))
    }
    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.query.get("state").map(String::as_str)
    }
    async fn complete(
        &self,
        _pending: Option<&serde_json::Value>,
        _params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        Err(UpstreamError::internal("oidc.unimplemented", "skeleton"))
    }
}
