//! Turning an admin API body (or a tenant file's table) into a stored
//! [`Connection`]: one code path for both.

use crate::ids::{ConnectionId, TenantId};
use crate::upstream::{self, Connection, ConnectionKind, SetupError, UpstreamContext};
use serde_json::{json, Value};

/// Parses and validates a connection body `{"id","kind",...}` for `tenant`.
/// `dev_enabled` allows the built-in development IdP.
pub async fn build_connection(
    ctx: &UpstreamContext,
    tenant: &TenantId,
    body: Value,
    dev_enabled: bool,
) -> Result<Connection, SetupError> {
    let Value::Object(mut map) = body else {
        return Err(SetupError::new("body", "must be a JSON object"));
    };
    let id = match map.remove("id") {
        Some(Value::String(s)) => ConnectionId::parse(&s).map_err(|e| SetupError::new("id", format!("{s:?} {e}")))?,
        _ => return Err(SetupError::new("id", "is required (a string)")),
    };
    let kind = match map.remove("kind") {
        Some(Value::String(s)) => s,
        _ => return Err(SetupError::new("kind", "is required: \"saml\" or \"oidc\"")),
    };
    let rest = Value::Object(map);
    let kind = match kind.as_str() {
        "oidc" => ConnectionKind::Oidc(upstream::oidc::setup(rest, ctx).await?),
        "saml" => ConnectionKind::Saml(upstream::saml::setup(rest, ctx, tenant, &id).await?),
        "dev" if dev_enabled => {
            ConnectionKind::Dev(serde_json::from_value(rest).map_err(|e| SetupError::new("body", e.to_string()))?)
        }
        "dev" => {
            return Err(SetupError::new(
                "kind",
                "the built-in development IdP is only available in dev mode",
            ))
        }
        other => {
            return Err(SetupError::new(
                "kind",
                format!("{other:?} is not \"saml\" or \"oidc\""),
            ))
        }
    };
    Ok(Connection {
        id,
        tenant: tenant.clone(),
        revision: rand::random(),
        status: crate::upstream::ConnectionStatus::Active,
        kind,
    })
}

/// The public description of a connection (no secrets): what the tenant's
/// IT admin needs to configure at the IdP.
pub fn describe(ctx: &UpstreamContext, c: &Connection) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("id".into(), json!(c.id));
    v.insert("tenant".into(), json!(c.tenant));
    v.insert("kind".into(), json!(c.kind.name()));
    match &c.kind {
        ConnectionKind::Oidc(cfg) => {
            v.insert("issuer".into(), json!(cfg.issuer));
            v.insert("client_id".into(), json!(cfg.client_id));
            v.insert("redirect_uri".into(), json!(upstream::oidc::redirect_uri(ctx, c)));
        }
        ConnectionKind::Saml(_) => {
            v.insert("sp_entity_id".into(), json!(upstream::saml::sp_entity_id(ctx, c)));
            v.insert("acs_url".into(), json!(upstream::saml::acs_url(ctx, c)));
            v.insert("sp_metadata_url".into(), json!(upstream::saml::sp_metadata_url(ctx, c)));
        }
        ConnectionKind::Dev(_) => {}
    }
    Value::Object(v)
}
