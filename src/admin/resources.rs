//! Resource servers (`/admin/v1/resource-servers`): the APIs access tokens
//! are for and the scopes they define. The identifier is a URI, so the
//! item routes take it URL-encoded (`https%3A%2F%2Fapi.example.com`) in the
//! rest of the path.

use super::{audit, parse_body, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::provider::resources::{check_resource_server, check_routes, ResourceError, ResourceServer, RouteRule};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The resource server routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/resource-servers", post(create).get(list))
        .route("/resource-servers/{*identifier}", get(read).delete(delete))
}

/// A scope of a new resource server.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewScope {
    name: String,
    #[serde(default)]
    description: String,
}

/// The body of `POST /admin/v1/resource-servers`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewResourceServer {
    identifier: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<NewScope>,
    #[serde(default)]
    #[schema(value_type = Vec<super::openapi::RouteRuleView>)]
    routes: Vec<RouteRule>,
}

fn internal(e: crate::store::StoreError) -> AdminError {
    e.into()
}

/// The public view of a resource server.
fn view(rs: &ResourceServer) -> Value {
    json!({
        "identifier": rs.identifier, "name": rs.name, "scopes": rs.scopes, "created_at": rs.created_at,
        "routes": rs.routes,
    })
}

async fn create(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewResourceServer = parse_body(body)?;
    let pairs: Vec<(String, String)> = req.scopes.into_iter().map(|sc| (sc.name, sc.description)).collect();
    let scopes = check_resource_server(&req.identifier, &pairs)
        .map_err(|(field, detail)| AdminError::Invalid { field, detail })?;
    check_routes(&req.routes).map_err(|(field, detail)| AdminError::Invalid { field, detail })?;
    let rs = ResourceServer {
        name: req
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| req.identifier.clone()),
        identifier: req.identifier,
        scopes,
        created_at: s.provider.clock.now(),
        routes: req.routes,
    };
    s.provider.resources.create(&rs).await.map_err(|e| match e {
        ResourceError::Exists(id) => AdminError::Conflict {
            field: "identifier",
            detail: format!("The resource server {id:?} already exists."),
        },
        ResourceError::Store(e) => internal(e),
    })?;
    tracing::info!(reason = "admin.resource_server_created", identifier = %rs.identifier);
    audit::record(
        &s,
        admin
            .event(
                "resource_server.created",
                Target::new("resource_server", &rs.identifier),
            )
            .after(view(&rs)),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&rs))).into_response())
}

async fn list(_: Admin, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
    let mut out = Vec::new();
    for id in s.provider.resources.list().await.map_err(internal)? {
        if let Some(rs) = s.provider.resources.get(&id).await.map_err(internal)? {
            out.push(view(&rs));
        }
    }
    Ok(Json(json!({"resource_servers": out})))
}

async fn read(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(identifier): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let rs = s
        .provider
        .resources
        .get(&identifier)
        .await
        .map_err(internal)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no resource server {identifier:?}.")))?;
    Ok(Json(view(&rs)))
}

/// Refused while an app still refers to it (its default resource, a
/// qualified allowed scope, or an allowed bare scope no other resource
/// server defines), so no app is left pointing at nothing.
async fn delete(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(identifier): Path<String>,
) -> Result<StatusCode, AdminError> {
    let Some(rs) = s.provider.resources.get(&identifier).await.map_err(internal)? else {
        return Err(AdminError::NotFound(format!(
            "There is no resource server {identifier:?}."
        )));
    };
    let others = s.provider.resources.all().await.map_err(internal)?;
    for id in s.provider.clients.list().await.map_err(internal)? {
        if let Some(c) = s.provider.clients.get(&id).await.map_err(internal)? {
            if rs.needed_by(&c, &others) {
                tracing::info!(reason = "admin.resource_server_in_use", identifier = %identifier, client_id = %id);
                return Err(AdminError::Conflict {
                    field: "identifier",
                    detail: format!("The app {id:?} still uses this resource server; change or delete it first."),
                });
            }
        }
    }
    s.provider.resources.delete(&identifier).await.map_err(internal)?;
    tracing::info!(reason = "admin.resource_server_deleted", identifier = %identifier);
    audit::record(
        &s,
        admin
            .event("resource_server.deleted", Target::new("resource_server", &identifier))
            .before(view(&rs)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
