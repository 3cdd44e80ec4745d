//! `POST /admin/v1/tenants/{id}/connections/{cid}/refresh`: fetch a SAML
//! connection's metadata now (see `tenant::refresh`). Answers the connection
//! (200) with its `metadata_refresh` state, or a problem+json saying why the
//! fetched metadata was not taken while the previous configuration keeps
//! serving.

use super::{audit, registry, tenant_id, Admin, AdminError};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::ConnectionId;
use crate::tenant::refresh::{MetadataRefresher, RefreshError, RefreshOutcome, Trigger};
use crate::upstream::Connection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use std::sync::Arc;

/// The refresh routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/tenants/{id}/connections/{cid}/refresh", post(refresh_connection))
}

/// The connection answer with the refresh and certificate-expiry fields
/// (`metadata_refresh`, `certificate_expires_at`, `certificate_warning`).
/// The connection handlers can call this for `GET` as well.
pub async fn describe_with_refresh(s: &AppState, conn: &Connection) -> Result<Value, AdminError> {
    let mut v = crate::tenant::setup::describe(&s.upstream, conn);
    let extra = MetadataRefresher::new(s.tenants.clone(), s.upstream.clone())
        .describe_extra(conn)
        .await
        .map_err(registry)?;
    if let Value::Object(map) = &mut v {
        map.extend(extra);
    }
    Ok(v)
}

async fn refresh_connection(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let cid = ConnectionId::parse(&cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    super::charge_outbound(&s, &admin, &id).await?;
    let refresher = MetadataRefresher::new(s.tenants.clone(), s.upstream.clone());
    let conn = match refresher.refresh(&id, &cid, Trigger::Now).await {
        Ok(RefreshOutcome::Updated(c, before)) => {
            let before = crate::tenant::setup::describe(&s.upstream, &before);
            let after = crate::tenant::setup::describe(&s.upstream, &c);
            audit::record(
                &s,
                admin
                    .event("connection.metadata_refreshed", Target::new("connection", cid.as_str()))
                    .tenant(&id)
                    .before(before)
                    .after(after),
            )
            .await?;
            c
        }
        Ok(RefreshOutcome::Unchanged(c)) => c,
        // Only the schedule skips; read what is stored.
        Ok(RefreshOutcome::Skipped) => s
            .tenants
            .connection(&id, &cid)
            .await
            .map_err(registry)?
            .ok_or_else(|| AdminError::NotFound(format!("There is no connection {cid:?} in tenant {id:?}.")))?,
        Err(RefreshError::NotFound) => {
            return Err(AdminError::NotFound(format!(
                "There is no connection {cid:?} in tenant {id:?}."
            )))
        }
        Err(RefreshError::NotRefreshable) => {
            return Err(AdminError::field(
                "metadata_url",
                "The connection was not created from a metadata_url, so there is nothing to fetch.",
            ))
        }
        Err(RefreshError::Refused(p)) => {
            return Err(AdminError::Unprocessable {
                field: "metadata_url".into(),
                // First, so the clipped detail always says it.
                detail: format!("The previous metadata is still serving. {}: {}", p.code, p.detail),
            });
        }
        Err(RefreshError::Registry(e)) => return Err(registry(e)),
    };
    tracing::info!(reason = "admin.connection_refreshed", tenant = %id, connection = %cid);
    Ok(Json(describe_with_refresh(&s, &conn).await?))
}
