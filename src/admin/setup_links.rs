//! `/admin/v1/tenants/{id}/setup-links`: the platform admin creates a
//! one-time, expiring setup link for a tenant's IT admin (see
//! `portal::links`), lists the tenant's links, and revokes one by id. Only
//! the link's URL carries the token; it is shown once, and never listed.

use super::{audit, parse_body, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::portal::links::{LinkKind, LinkStatus, SetupLinks, DEFAULT_LINK_TTL, MAX_LINK_TTL, MIN_LINK_TTL};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The setup-link routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/tenants/{id}/setup-links",
            post(create_setup_link).get(list_setup_links),
        )
        .route("/tenants/{id}/setup-links/{link_id}", delete(revoke_setup_link))
}

/// Unix seconds as RFC 3339 (seconds).
fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// What is shown of a link: never its token nor the token's hash.
fn view(link: &LinkStatus) -> Value {
    let e = &link.entry;
    json!({
        "id": e.id,
        "kind": e.kind.map(LinkKind::name),
        "created_at": rfc3339(e.created_at),
        "expires_at": rfc3339(e.expires_at),
        "opened": link.opened_at.is_some(),
        "opened_at": link.opened_at.map(rfc3339),
    })
}

/// The tenant, which must exist, and its current incarnation.
async fn existing(s: &AppState, id: &str) -> Result<(TenantId, String), AdminError> {
    let id = tenant_id(id)?;
    let Some(tenant) = s.tenants.get(&id).await.map_err(registry)? else {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    };
    Ok((id, tenant.incarnation.clone()))
}

/// `GET /tenants/{id}/setup-links`: the tenant's links that can still be
/// opened or whose portal session may still be live.
async fn list_setup_links(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let links = SetupLinks::new(s.store.clone(), s.provider.clock.clone())
        .list(&id, &incarnation)
        .await
        .map_err(AdminError::from)?;
    Ok(Json(
        json!({ "setup_links": links.iter().map(view).collect::<Vec<_>>() }),
    ))
}

/// `DELETE /tenants/{id}/setup-links/{link_id}`: the link can no longer be
/// opened, and a portal session opened from it ends at its next request.
async fn revoke_setup_link(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, link_id)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let Some(revoked) = SetupLinks::new(s.store.clone(), s.provider.clock.clone())
        .revoke(&id, &incarnation, &link_id)
        .await
        .map_err(AdminError::from)?
    else {
        return Err(AdminError::NotFound(format!(
            "There is no setup link {:?} of tenant {id:?}.",
            crate::hooks::clip(&link_id, 64)
        )));
    };
    audit::record(
        &s,
        admin
            .event(
                "setup_link.revoked",
                Target::new("setup_link", revoked.entry.id.as_str()),
            )
            .tenant(&id)
            .before(view(&revoked)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
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
    let expires_at = rfc3339(link.expires_at);
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
