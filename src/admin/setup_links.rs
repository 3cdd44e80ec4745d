//! `POST /admin/v1/tenants/{id}/setup-links`: the platform admin creates a
//! one-time, expiring setup link for a tenant's IT admin (see
//! `portal::links`). Only the link's URL carries the token; it is shown once.

use super::{audit, parse_body, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::portal::links::{LinkKind, SetupLinks, DEFAULT_LINK_TTL, MAX_LINK_TTL, MIN_LINK_TTL};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The setup-link routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/tenants/{id}/setup-links", post(create_setup_link))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLink {
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    kind: Option<LinkKind>,
}

async fn create_setup_link(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let id = tenant_id(&id)?;
    let req: NewLink = parse_body(body)?;
    let ttl = match req.ttl_secs {
        None => DEFAULT_LINK_TTL,
        Some(t) if (MIN_LINK_TTL.as_secs()..=MAX_LINK_TTL.as_secs()).contains(&t) => Duration::from_secs(t),
        Some(_) => {
            return Err(AdminError::field(
                "ttl_secs",
                format!(
                    "must be between {} and {} seconds",
                    MIN_LINK_TTL.as_secs(),
                    MAX_LINK_TTL.as_secs()
                ),
            ))
        }
    };
    let Some(tenant) = s.tenants.get(&id).await.map_err(registry)? else {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    };
    let links = SetupLinks::new(s.store.clone(), s.provider.clock.clone());
    let (token, link) = links
        .create(&id, &tenant.incarnation, req.kind, ttl)
        .await
        .map_err(AdminError::from)?;
    let url = s.upstream.public(&format!("setup/{token}"));
    let expires_at = chrono::DateTime::from_timestamp(link.expires_at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    audit::record(
        &s,
        admin
            .event("setup_link.created", Target::new("setup_link", link.id.as_str()))
            .tenant(&id)
            .after(json!({ "expires_at": expires_at, "kind": link.kind.map(LinkKind::name) })),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": link.id,
            "url": url.as_str(),
            "expires_at": expires_at,
            "kind": link.kind.map(LinkKind::name),
        })),
    )
        .into_response())
}
