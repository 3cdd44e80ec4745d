//! The built-in development identity provider. (Skeleton.)

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, UpstreamContext,
    UpstreamError,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Stored configuration of a development connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {}

/// The development connector.
pub struct DevConnector {
    _ctx: UpstreamContext,
}

impl DevConnector {
    /// Builds the connector.
    pub fn new(_connection: &Connection, _cfg: DevConfig, ctx: UpstreamContext) -> Self {
        Self { _ctx: ctx }
    }
}

#[async_trait]
impl Connector for DevConnector {
    async fn begin(&self, _req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        Err(UpstreamError::internal("dev.unimplemented", "skeleton"))
    }
    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.query.get("state").map(String::as_str)
    }
    async fn complete(
        &self,
        _pending: Option<&serde_json::Value>,
        _params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        Err(UpstreamError::internal("dev.unimplemented", "skeleton"))
    }
}
