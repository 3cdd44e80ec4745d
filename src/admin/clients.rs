//! Apps (OIDC clients): create, read, update (JSON merge patch), list with
//! cursor pagination, delete, and secret rotation with an overlap window.

use super::tenants::{decode_cursor, encode_cursor, merge_patch, parse_limit, MergePatch, PageQuery};
use super::{audit, parse_body, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::provider::clients::{
    check_redirect_uri, default_grant_types, hash_secret, new_secret, Client, ClientError, GrantType,
    DEFAULT_ROTATION_OVERLAP_SECS, MAX_ROTATION_OVERLAP_SECS,
};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The app routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/clients", post(create_client).get(list_clients))
        .route(
            "/clients/{id}",
            get(get_client).patch(patch_client).delete(delete_client),
        )
        .route("/clients/{id}/secret/rotate", post(rotate_secret))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClient {
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
    #[schema(value_type = Vec<String>)]
    grant_types: Vec<GrantType>,
    #[serde(default)]
    default_resource: Option<String>,
    /// Sign-ins to this app need multi-factor authentication at the IdP.
    #[serde(default)]
    pub(crate) require_mfa: bool,
}

/// Checks a new client's fields; shared with the config file's `[[clients]]`.
fn check_client(req: &NewClient) -> Result<Vec<TenantId>, AdminError> {
    if !crate::ids::is_client_id(&req.client_id) {
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
    admin: Admin,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewClient = parse_body(body)?;
    let allowed_tenants = check_client(&req)?;
    check_app_fields(&s, &req).await?;
    let secret = (!req.public).then(new_secret);
    let client = Client {
        client_id: req.client_id.clone(),
        name: req.name.clone().unwrap_or_else(|| req.client_id.clone()),
        secret_sha256: secret.as_ref().map(|s| hash_secret(s.expose())),
        previous_secret: None,
        redirect_uris: req.redirect_uris.clone(),
        post_logout_redirect_uris: req.post_logout_redirect_uris.clone(),
        allowed_tenants,
        allowed_scopes: req.allowed_scopes.clone(),
        grant_types: req.grant_types.clone(),
        default_resource: req.default_resource.clone(),
        require_mfa: req.require_mfa,
        created_at: s.provider.clock.now(),
    };
    s.provider.clients.create(&client).await.map_err(|e| match e {
        ClientError::Exists(id) => AdminError::Conflict {
            field: "client_id",
            detail: format!("The client {id:?} already exists."),
        },
        other => client_store(other),
    })?;
    tracing::info!(reason = "admin.client_created", client_id = %client.client_id);
    let mut v = client_view(&client);
    audit::record(
        &s,
        admin
            .event("client.created", Target::new("client", client.client_id.as_str()))
            .after(v.clone()),
    )
    .await?;
    if let Some(secret) = secret {
        // Shown once: only its hash is stored.
        if let Some(o) = v.as_object_mut() {
            o.insert("client_secret".into(), json!(secret.expose()));
        }
    }
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response())
}

/// Checks grant types, scopes and the default resource against the
/// registered resource servers.
async fn check_app_fields(s: &AppState, req: &NewClient) -> Result<(), AdminError> {
    s.provider
        .resources
        .check_app_fields(
            req.public,
            &req.grant_types,
            &req.allowed_scopes,
            req.default_resource.as_deref(),
        )
        .await
        .map_err(internal)?
        .map_err(|(field, detail)| AdminError::Invalid { field, detail })
}

/// An app as the API shows it: never a secret or its hash.
fn client_view(c: &Client) -> Value {
    json!({
        "client_id": c.client_id, "name": c.name, "public": c.is_public(),
        "redirect_uris": c.redirect_uris, "post_logout_redirect_uris": c.post_logout_redirect_uris,
        "allowed_tenants": c.allowed_tenants, "allowed_scopes": c.allowed_scopes,
        "grant_types": c.grant_types, "default_resource": c.default_resource, "created_at": c.created_at,
    })
}

async fn list_clients(
    _: Admin,
    State(s): State<Arc<AppState>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(q) = query.map_err(|e| AdminError::field("query", e.body_text()))?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = decode_cursor(q.cursor.as_deref())?;
    let (clients, next) = s
        .provider
        .clients
        .page(after.as_deref(), limit)
        .await
        .map_err(internal)?;
    let views: Vec<Value> = clients.iter().map(client_view).collect();
    Ok(Json(
        json!({"clients": views, "next_cursor": next.as_deref().map(encode_cursor)}),
    ))
}

async fn get_client(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let c = s
        .provider
        .clients
        .get(&id)
        .await
        .map_err(AdminError::from)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no client {id:?}.")))?;
    Ok(Json(client_view(&c)))
}

async fn delete_client(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let Some(before) = s.provider.clients.get(&id).await.map_err(AdminError::from)? else {
        return Err(AdminError::NotFound(format!("There is no client {id:?}.")));
    };
    // The tombstone first: should the deletion fail, the app's tokens are
    // refused anyway, and a re-registration never inherits them.
    s.provider.retire_client(&id).await.map_err(AdminError::from)?;
    if !s.provider.clients.delete(&id).await.map_err(AdminError::from)? {
        return Err(AdminError::NotFound(format!("There is no client {id:?}.")));
    }
    // Its refresh tokens need its authentication, its access tokens are
    // checked against the registry on use, and the tombstone keeps both dead
    // should the id be registered again.
    tracing::info!(reason = "admin.client_deleted", client_id = %id);
    audit::record(
        &s,
        admin
            .event("client.deleted", Target::new("client", id.as_str()))
            .before(client_view(&before)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn internal(e: crate::store::StoreError) -> AdminError {
    e.into()
}

fn client_store(e: ClientError) -> AdminError {
    match e {
        ClientError::Store(e) => e.into(),
        ClientError::Exists(id) => AdminError::Internal(format!("client {id} already exists")),
        ClientError::NotFound(id) => AdminError::NotFound(format!("There is no client {id:?}.")),
        ClientError::Changed(id) => AdminError::Conflict {
            field: "revision",
            detail: format!("The client {id} changed meanwhile; read it again and repeat the change."),
        },
    }
}

async fn load(s: &AppState, id: &str) -> Result<Client, AdminError> {
    s.provider
        .clients
        .get(id)
        .await
        .map_err(internal)?
        .map(Arc::unwrap_or_clone)
        .ok_or_else(|| AdminError::NotFound(format!("There is no client {id:?}.")))
}

/// What an app patch may change (the merged document).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientPatch {
    name: String,
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    allowed_tenants: Vec<String>,
    #[serde(default)]
    allowed_scopes: Vec<String>,
    #[serde(default = "default_grant_types")]
    grant_types: Vec<GrantType>,
    #[serde(default)]
    default_resource: Option<String>,
}

const PATCHABLE: [&str; 7] = [
    "name",
    "redirect_uris",
    "post_logout_redirect_uris",
    "allowed_tenants",
    "allowed_scopes",
    "grant_types",
    "default_resource",
];

async fn patch_client(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    MergePatch(patch): MergePatch,
) -> Result<Json<Value>, AdminError> {
    if let Some(o) = patch.as_object() {
        for k in o.keys() {
            if !PATCHABLE.contains(&k.as_str()) {
                return Err(AdminError::field(k, "cannot be changed."));
            }
        }
        for k in ["name", "redirect_uris"] {
            if o.get(k).is_some_and(Value::is_null) {
                return Err(AdminError::field(k, "cannot be removed."));
            }
        }
    }
    let old = load(&s, &id).await?;
    let mut doc = json!({
        "name": old.name, "redirect_uris": old.redirect_uris,
        "post_logout_redirect_uris": old.post_logout_redirect_uris,
        "allowed_tenants": old.allowed_tenants, "allowed_scopes": old.allowed_scopes,
        "grant_types": old.grant_types, "default_resource": old.default_resource,
    });
    merge_patch(&mut doc, &patch);
    let p: ClientPatch = parse_body(doc)?;
    if p.name.trim().is_empty() || p.name.chars().count() > 200 {
        return Err(AdminError::field("name", "must be 1 to 200 characters."));
    }
    // Validated exactly as at creation.
    let as_new = NewClient {
        client_id: old.client_id.clone(),
        name: Some(p.name.clone()),
        redirect_uris: p.redirect_uris,
        post_logout_redirect_uris: p.post_logout_redirect_uris,
        public: old.is_public(),
        allowed_tenants: p.allowed_tenants,
        allowed_scopes: p.allowed_scopes,
        grant_types: p.grant_types,
        default_resource: p.default_resource,
        require_mfa: old.require_mfa,
    };
    let allowed_tenants = check_client(&as_new)?;
    check_app_fields(&s, &as_new).await?;
    let new = Client {
        name: p.name,
        redirect_uris: as_new.redirect_uris,
        post_logout_redirect_uris: as_new.post_logout_redirect_uris,
        allowed_tenants,
        allowed_scopes: as_new.allowed_scopes,
        grant_types: as_new.grant_types,
        default_resource: as_new.default_resource,
        ..old.clone()
    };
    // Compare-and-set against what was read: a concurrent change (a secret
    // rotation above all) is never overwritten, and a deleted app never
    // comes back (409 `revision`, 404).
    s.provider.clients.update(&old, &new).await.map_err(client_store)?;
    tracing::info!(reason = "admin.client_updated", client_id = %new.client_id);
    let view = client_view(&new);
    audit::record(
        &s,
        admin
            .event("client.updated", Target::new("client", new.client_id.as_str()))
            .before(client_view(&old))
            .after(view.clone()),
    )
    .await?;
    Ok(Json(view))
}

/// The body of `POST /admin/v1/clients/{id}/secret/rotate`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateSecret {
    /// How long the previous secret keeps working, in seconds (default
    /// 24 h, at most 30 days; 0 ends it at once).
    #[serde(default)]
    #[schema(maximum = 2_592_000)]
    overlap_secs: Option<u64>,
}

async fn rotate_secret(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    // The body is optional: none means the default overlap.
    let req: RotateSecret = if body.iter().all(u8::is_ascii_whitespace) {
        RotateSecret::default()
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| AdminError::field("body", e.to_string()))?;
        parse_body(v)?
    };
    let overlap = req.overlap_secs.unwrap_or(DEFAULT_ROTATION_OVERLAP_SECS);
    if overlap > MAX_ROTATION_OVERLAP_SECS {
        return Err(AdminError::field(
            "overlap_secs",
            format!("must be at most {MAX_ROTATION_OVERLAP_SECS} seconds (30 days)."),
        ));
    }
    if load(&s, &id).await?.is_public() {
        return Err(AdminError::field("client_id", "is a public client: it has no secret."));
    }
    let secret = new_secret();
    let overlap = i64::try_from(overlap).map_err(|e| AdminError::Internal(e.to_string()))?;
    let expires_at = s.provider.clock.now() + chrono::Duration::seconds(overlap);
    let hashed = hash_secret(secret.expose());
    // A rotation is right whatever else changed meanwhile: applied to the
    // app as stored at the write (read again if a concurrent change won),
    // and never to an app deleted meanwhile.
    let client = s
        .provider
        .clients
        .modify(&id, |c| c.rotate_secret(hashed.clone(), expires_at))
        .await
        .map_err(client_store)?;
    tracing::info!(reason = "admin.client_secret_rotated", client_id = %client.client_id, overlap_secs = overlap);
    audit::record(
        &s,
        admin
            .event(
                "client.secret_rotated",
                Target::new("client", client.client_id.as_str()),
            )
            .after(json!({ "previous_expires_at": expires_at })),
    )
    .await?;
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"client_secret": secret.expose(), "previous_expires_at": expires_at})),
    )
        .into_response())
}
