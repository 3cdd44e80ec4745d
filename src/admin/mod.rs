//! The platform admin API (`/admin/v1`): tenants, connections, apps and
//! resource servers (`resources.rs`).
//! JSON in, JSON out; every error is `application/problem+json` (RFC 9457)
//! naming the field at fault. A wrong or missing bearer token is 401 and
//! changes nothing: every handler takes [`AdminAuth`] first.

mod domains;
mod error;
mod resources;
mod users;

pub use error::AdminError;

use crate::http::AppState;
use crate::ids::{ConnectionId, TenantId};
use crate::provider::clients::{
    check_redirect_uri, default_grant_types, hash_secret, new_secret, Client, ClientError, GrantType,
};
use crate::tenant::RegistryError;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{id}", get(get_tenant).delete(delete_tenant))
        .route(
            "/tenants/{id}/connections",
            post(create_connection).get(list_connections),
        )
        .route(
            "/tenants/{id}/connections/{cid}",
            get(get_connection).delete(delete_connection),
        )
        .route("/clients", post(create_client).get(list_clients))
        .route("/clients/{id}", get(get_client).delete(delete_client))
        .route("/keys/rotate", post(rotate_keys))
        .merge(resources::routes())
        .merge(users::routes())
        .merge(domains::routes())
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

/// `text` with its first letter in upper case (error details are sentences).
pub(crate) fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub(crate) fn tenant_id(id: &str) -> Result<TenantId, AdminError> {
    TenantId::parse(id).map_err(|_| AdminError::NotFound(format!("There is no tenant {id:?}.")))
}

pub(crate) fn registry(e: RegistryError) -> AdminError {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
}

/// Deserializes an admin body; a failure names the path of the field at
/// fault (`serde_path_to_error`), e.g. `scopes[1].name`.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, AdminError> {
    crate::upstream::SetupError::from_json(body).map_err(|e| AdminError::Invalid {
        field: e.field,
        detail: e.message,
    })
}

async fn create_tenant(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewTenant = parse_body(body)?;
    let id = TenantId::parse(&req.id).map_err(|e| AdminError::field("id", format!("{:?} {e}", req.id)))?;
    let mut domains = Vec::new();
    for (i, d) in req.domains.iter().enumerate() {
        let d = crate::tenant::domains::claimable(d)
            .map_err(|e| AdminError::field(&format!("domains[{i}]"), format!("{}.", capitalize(&e.to_string()))))?;
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    let name = req
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| id.to_string());
    let tenant = s.tenants.create(id, name, domains).await.map_err(registry)?;
    tracing::info!(reason = "admin.tenant_created", tenant = %tenant.id);
    Ok((StatusCode::CREATED, Json(json!(tenant))).into_response())
}

async fn list_tenants(_: AdminAuth, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
    Ok(Json(json!({"tenants": s.tenants.list().await.map_err(registry)?})))
}

async fn get_tenant(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let tenant = s
        .tenants
        .get(&id)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no tenant {id:?}.")))?;
    let connections = s.tenants.connection_ids(&id).await.map_err(registry)?;
    let mut v = json!(tenant);
    if let Some(o) = v.as_object_mut() {
        o.insert("connections".into(), json!(connections));
    }
    Ok(Json(v))
}

async fn delete_tenant(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    for c in s.tenants.connection_ids(&id).await.map_err(registry)? {
        s.broker.connectors.forget(&id, &c);
    }
    s.tenants.delete(&id).await.map_err(registry)?;
    tracing::info!(reason = "admin.tenant_deleted", tenant = %id);
    // Nothing of the tenant is accepted any more (incarnations are checked
    // on use); this only frees the store and ends sessions early.
    match s.broker.purge_tenant_users(&id).await {
        Ok(n) => tracing::info!(reason = "admin.tenant_users_purged", tenant = %id, users = n),
        Err(e) => {
            tracing::error!(reason = "admin.tenant_purge_failed", tenant = %id, error = %e, "users of a deleted tenant left in the store")
        }
    }
    Ok(StatusCode::NO_CONTENT)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    client_id: String,
    #[serde(default)]
    name: Option<String>,
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    allowed_tenants: Vec<String>,
    #[serde(default)]
    allowed_scopes: Vec<String>,
    #[serde(default = "default_grant_types")]
    grant_types: Vec<GrantType>,
    #[serde(default)]
    default_resource: Option<String>,
    #[serde(default)]
    require_mfa: bool,
}

/// Checks a new client's fields; shared with the config file's `[[clients]]`.
fn check_client(req: &NewClient) -> Result<Vec<TenantId>, AdminError> {
    let id_ok = !req.client_id.is_empty()
        && req.client_id.len() <= 128
        && req
            .client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !id_ok {
        return Err(AdminError::field(
            "client_id",
            "must be 1 to 128 characters of letters, digits, '-', '_' and '.'.",
        ));
    }
    if req.redirect_uris.is_empty() {
        return Err(AdminError::field("redirect_uris", "needs at least one redirect URI."));
    }
    for (i, u) in req.redirect_uris.iter().enumerate() {
        check_redirect_uri(u).map_err(|m| AdminError::field(&format!("redirect_uris[{i}]"), m))?;
    }
    for (i, u) in req.post_logout_redirect_uris.iter().enumerate() {
        check_redirect_uri(u).map_err(|m| AdminError::field(&format!("post_logout_redirect_uris[{i}]"), m))?;
    }
    req.allowed_tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TenantId::parse(t).map_err(|e| AdminError::field(&format!("allowed_tenants[{i}]"), format!("{t:?} {e}")))
        })
        .collect()
}

async fn create_client(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewClient = parse_body(body)?;
    let allowed_tenants = check_client(&req)?;
    s.provider
        .resources
        .check_app_fields(
            req.public,
            &req.grant_types,
            &req.allowed_scopes,
            req.default_resource.as_deref(),
        )
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .map_err(|(field, detail)| AdminError::Invalid { field, detail })?;
    let secret = (!req.public).then(new_secret);
    let client = Client {
        require_mfa: req.require_mfa,
        client_id: req.client_id.clone(),
        name: req.name.clone().unwrap_or_else(|| req.client_id.clone()),
        secret_sha256: secret.as_ref().map(|s| hash_secret(s.expose())),
        redirect_uris: req.redirect_uris.clone(),
        post_logout_redirect_uris: req.post_logout_redirect_uris.clone(),
        allowed_tenants,
        allowed_scopes: req.allowed_scopes.clone(),
        grant_types: req.grant_types.clone(),
        default_resource: req.default_resource.clone(),
        created_at: s.provider.clock.now(),
    };
    s.provider.clients.create(&client).await.map_err(|e| match e {
        ClientError::Exists(id) => AdminError::Conflict {
            field: "client_id",
            detail: format!("The client {id:?} already exists."),
        },
        ClientError::Store(e) => AdminError::Internal(e.to_string()),
    })?;
    tracing::info!(reason = "admin.client_created", client_id = %client.client_id);
    let mut v = client_view(&client);
    if let Some(secret) = secret {
        // Shown once: only its hash is stored.
        if let Some(o) = v.as_object_mut() {
            o.insert("client_secret".into(), json!(secret.expose()));
        }
    }
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response())
}

fn client_view(c: &Client) -> Value {
    json!({
        "client_id": c.client_id, "name": c.name, "public": c.is_public(),
        "redirect_uris": c.redirect_uris, "post_logout_redirect_uris": c.post_logout_redirect_uris,
        "allowed_tenants": c.allowed_tenants, "allowed_scopes": c.allowed_scopes,
        "grant_types": c.grant_types, "default_resource": c.default_resource, "created_at": c.created_at,
    })
}

async fn list_clients(_: AdminAuth, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
    let ids = s
        .provider
        .clients
        .list()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    Ok(Json(json!({"clients": ids})))
}

async fn get_client(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let c = s
        .provider
        .clients
        .get(&id)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .ok_or_else(|| AdminError::NotFound(format!("There is no client {id:?}.")))?;
    Ok(Json(client_view(&c)))
}

async fn delete_client(
    _: AdminAuth,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    if s.provider
        .clients
        .get(&id)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .is_none()
    {
        return Err(AdminError::NotFound(format!("There is no client {id:?}.")));
    }
    // The tombstone first: should the deletion fail, the app's tokens are
    // refused anyway, and a re-registration never inherits them.
    s.provider
        .retire_client(&id)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    if !s
        .provider
        .clients
        .delete(&id)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
    {
        return Err(AdminError::NotFound(format!("There is no client {id:?}.")));
    }
    // Its refresh tokens need its authentication, its access tokens are
    // checked against the registry on use, and the tombstone keeps both dead
    // should the id be registered again.
    tracing::info!(reason = "admin.client_deleted", client_id = %id);
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
