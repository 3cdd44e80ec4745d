//! The SAML 2.0 upstream connector. (Skeleton: replaced by the SAML work.)

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, SetupError, UpstreamContext,
    UpstreamError,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use url::Url;

/// Stored configuration of a SAML connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamlConfig {
    /// The IdP metadata document.
    pub metadata_xml: String,
}

/// Validates a connection request (fetching `metadata_url` if given) and
/// returns the configuration to store. `request` is the admin body without
/// `id` and `kind`.
pub async fn setup(
    request: serde_json::Value,
    ctx: &UpstreamContext,
    tenant: &crate::ids::TenantId,
    connection: &crate::ids::ConnectionId,
) -> Result<SamlConfig, SetupError> {
    let _ = (request, ctx, tenant, connection);
    Err(SetupError::new("kind", "SAML connections are not implemented yet"))
}

/// The SP entity id of this connection.
pub fn sp_entity_id(ctx: &UpstreamContext, connection: &Connection) -> Url {
    sp_metadata_url(ctx, connection)
}

/// The Assertion Consumer Service URL of this connection.
pub fn acs_url(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!("saml/{}/{}/acs", connection.tenant, connection.id))
}

/// Where this connection's SP metadata is published.
pub fn sp_metadata_url(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!("saml/{}/{}/metadata", connection.tenant, connection.id))
}

/// The SP metadata document of this connection.
pub fn sp_metadata_xml(
    connection: &Connection,
    cfg: &SamlConfig,
    ctx: &UpstreamContext,
) -> Result<String, UpstreamError> {
    let _ = (connection, cfg, ctx);
    Err(UpstreamError::internal("saml.unimplemented", "skeleton"))
}

/// The SAML connector for one connection.
pub struct SamlConnector {
    _cfg: SamlConfig,
}

impl SamlConnector {
    /// Builds the connector, parsing certificates and keys once.
    pub fn new(_connection: &Connection, cfg: SamlConfig, _ctx: UpstreamContext) -> Result<Self, UpstreamError> {
        Ok(Self { _cfg: cfg })
    }
}

#[async_trait]
impl Connector for SamlConnector {
    async fn begin(&self, _req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        Err(UpstreamError::internal("saml.unimplemented", "skeleton"))
    }
    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.form.get("RelayState").map(String::as_str)
    }
    async fn complete(
        &self,
        _pending: Option<&serde_json::Value>,
        _params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        Err(UpstreamError::internal("saml.unimplemented", "skeleton"))
    }
}
