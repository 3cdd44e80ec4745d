//! The platform admin API (`/admin/v1`): tenants, connections, apps and
//! resource servers (`resources.rs`).
//! JSON in, JSON out; every error is `application/problem+json` (RFC 9457)
//! naming the field at fault. A wrong or missing bearer token is 401 and
//! changes nothing: every handler takes [`AdminAuth`] first.

mod clients;
mod error;
pub mod openapi;
mod resources;
mod tenants;
mod users;

pub use error::AdminError;

use crate::http::AppState;
use crate::ids::{ConnectionId, TenantId};
use crate::tenant::RegistryError;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/tenants/{id}/connections",
            post(create_connection).get(list_connections),
        )
        .route(
            "/tenants/{id}/connections/{cid}",
            get(get_connection).delete(delete_connection),
        )
        .route("/keys/rotate", post(rotate_keys))
        .route("/openapi.json", get(openapi_json))
        .merge(tenants::routes())
        .merge(clients::routes())
        .merge(resources::routes())
        .merge(users::routes())
}

/// Every admin route as (method, path under `/admin/v1`), in one place:
/// the OpenAPI test checks that the router serves each and that the
/// document describes exactly these. Add a line here with every route.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/tenants"),
    ("GET", "/tenants"),
    ("GET", "/tenants/{id}"),
    ("PATCH", "/tenants/{id}"),
    ("DELETE", "/tenants/{id}"),
    ("POST", "/tenants/{id}/connections"),
    ("GET", "/tenants/{id}/connections"),
    ("GET", "/tenants/{id}/connections/{cid}"),
    ("DELETE", "/tenants/{id}/connections/{cid}"),
    ("POST", "/clients"),
    ("GET", "/clients"),
    ("GET", "/clients/{id}"),
    ("PATCH", "/clients/{id}"),
    ("DELETE", "/clients/{id}"),
    ("POST", "/clients/{id}/secret/rotate"),
    ("POST", "/resource-servers"),
    ("GET", "/resource-servers"),
    ("GET", "/resource-servers/{identifier}"),
    ("DELETE", "/resource-servers/{identifier}"),
    ("GET", "/tenants/{id}/users"),
    ("GET", "/tenants/{id}/users/{sub}"),
    ("DELETE", "/tenants/{id}/users/{sub}"),
    ("POST", "/tenants/{id}/users/{sub}/disable"),
    ("POST", "/tenants/{id}/users/{sub}/enable"),
    ("POST", "/keys/rotate"),
];

/// `GET /admin/v1/openapi.json`: the API's description; public (no data).
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

/// Proof that the request carries the platform admin token.
pub struct AdminAuth;

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, AdminError> {
        let Some(expected) = &state.admin_token else {
            return Err(AdminError::Unauthorized(
                "The admin API is disabled: set PORTCULLIS_ADMIN_TOKEN.",
            ));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(t) if expected.matches(t.trim()) => Ok(AdminAuth),
            Some(_) => Err(AdminError::Unauthorized("The bearer token is not valid.")),
            None => Err(AdminError::Unauthorized("A bearer token is required.")),
        }
    }
}

/// A JSON body whose syntax errors become problem+json.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AdminError> {
        match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(AdminError::field("body", e.body_text())),
        }
    }
}

fn tenant_id(id: &str) -> Result<TenantId, AdminError> {
    TenantId::parse(id).map_err(|_| AdminError::NotFound(format!("There is no tenant {id:?}.")))
}

fn registry(e: RegistryError) -> AdminError {
    match e {
        RegistryError::Exists(what) => AdminError::Conflict {
            field: "id",
            detail: format!("{what} already exists."),
        },
        RegistryError::DomainTaken { domain } => AdminError::Conflict {
            field: "domains",
            detail: format!("The domain {domain} already belongs to another tenant."),
        },
        RegistryError::NotFound(what) => AdminError::NotFound(format!("There is no {what}.")),
        RegistryError::Store(s) => AdminError::Internal(s.to_string()),
    }
}

/// Deserializes an admin body; a failure names the path of the field at
/// fault (`serde_path_to_error`), e.g. `scopes[1].name`.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, AdminError> {
    crate::upstream::SetupError::from_json(body).map_err(|e| AdminError::Invalid {
        field: e.field,
        detail: e.message,
    })
}

async fn create_connection(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let id = tenant_id(&id)?;
    if s.tenants.get(&id).await.map_err(registry)?.is_none() {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    }
    let conn = crate::tenant::setup::build_connection(&s.upstream, &id, body, s.dev)
        .await
        .map_err(|e| AdminError::Invalid {
            field: e.field,
            detail: e.message,
        })?;
    // Build it once now, so a configuration that cannot work is refused before it is stored.
    crate::upstream::build(&conn, &s.upstream).map_err(|e| AdminError::field("body", e.message))?;
    s.tenants.add_connection(&conn).await.map_err(registry)?;
    tracing::info!(reason = "admin.connection_created", tenant = %id, connection = %conn.id, kind = conn.kind.name());
    Ok((
        StatusCode::CREATED,
        Json(crate::tenant::setup::describe(&s.upstream, &conn)),
    )
        .into_response())
}

async fn list_connections(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    if s.tenants.get(&id).await.map_err(registry)?.is_none() {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    }
    let mut out = Vec::new();
    for c in s.tenants.connection_ids(&id).await.map_err(registry)? {
        if let Some(conn) = s.tenants.connection(&id, &c).await.map_err(registry)? {
            out.push(crate::tenant::setup::describe(&s.upstream, &conn));
        }
    }
    Ok(Json(json!({"connections": out})))
}

async fn get_connection(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let cid = ConnectionId::parse(&cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    let conn = s
        .tenants
        .connection(&id, &cid)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no connection {cid:?} in tenant {id:?}.")))?;
    Ok(Json(crate::tenant::setup::describe(&s.upstream, &conn)))
}

async fn delete_connection(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    let cid = ConnectionId::parse(&cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    s.tenants.delete_connection(&id, &cid).await.map_err(registry)?;
    s.broker.connectors.forget(&id, &cid);
    tracing::info!(reason = "admin.connection_deleted", tenant = %id, connection = %cid);
    // As for a tenant: acceptance is already over; this frees the store.
    match s.broker.purge_connection_users(&id, &cid).await {
        Ok(n) => tracing::info!(reason = "admin.connection_users_purged", tenant = %id, connection = %cid, users = n),
        Err(e) => tracing::error!(
            reason = "admin.connection_purge_failed",
            tenant = %id,
            connection = %cid,
            error = %e,
            "users of a deleted connection left in the store"
        ),
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_keys(_: AdminAuth, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
    s.provider
        .keys
        .rotate()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    tracing::info!(reason = "admin.keys_rotated");
    let jwks = s
        .provider
        .keys
        .jwks()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(Json(jwks))
}
