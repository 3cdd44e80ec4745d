//! Admin API keys: named platform keys (`/api-keys`, with scopes `read` and
//! `write`) and tenant keys (`/tenants/{id}/api-keys`), both used as
//! `Authorization: Bearer` on `/admin/v1`.
//!
//! A key reads `pk.<id>.<secret>` (platform) or `tk.<tenant>.<id>.<secret>`
//! (tenant): the id finds the record, the secret (256 random bits) is
//! checked against the SHA-256 stored in it, in constant time. The secret is
//! shown once, in the creation answer, and never stored. A tenant key is
//! bound to the tenant's incarnation: it dies with the tenant, and a tenant
//! created again under the same id does not inherit it.
//!
//! Managing keys is a platform task: both groups of routes are platform
//! routes, so a tenant principal cannot mint keys that outlive its own
//! credential (a setup link in particular).

use super::auth::{Access, Admin, Principal, PrincipalKind, Via};
use super::{parse_body, registry, tenant_id, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::provider::clients::hash_secret;
use crate::store::{Key, StoreJson};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// The longest key name.
const MAX_NAME_CHARS: usize = 100;

/// The key routes; all of them belong to the platform group.
pub fn platform_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api-keys", post(create_platform).get(list_platform))
        .route("/api-keys/{kid}", delete(delete_platform))
        .route("/tenants/{id}/api-keys", post(create_tenant).get(list_tenant))
        .route("/tenants/{id}/api-keys/{kid}", delete(delete_tenant))
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET and HEAD.
    Read,
    /// Changes too.
    Write,
}

/// A key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    secret_sha256: String,
    created_at: DateTime<Utc>,
    /// The tenant's incarnation when the key was made (tenant keys).
    #[serde(default)]
    incarnation: Option<String>,
}

impl StoredKey {
    fn access(&self) -> Access {
        if self.scopes.contains(&Scope::Write) {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        }
    }

    /// The public view (no hash).
    fn view(&self, tenant: Option<&TenantId>) -> Value {
        let mut v = json!({
            "id": self.id, "name": self.name, "scopes": self.scopes, "created_at": self.created_at,
        });
        if let (Some(t), Some(o)) = (tenant, v.as_object_mut()) {
            o.insert("tenant".into(), json!(t));
        }
        v
    }
}

pub(crate) fn record_key(tenant: Option<&TenantId>, id: &str) -> Key {
    match tenant {
        Some(t) => Key::tenant(t.as_str(), "api_keys", format!("key:{id}")),
        None => Key::global("api_keys", format!("key:{id}")),
    }
}

pub(crate) fn index_key(tenant: Option<&TenantId>) -> Key {
    match tenant {
        Some(t) => Key::tenant(t.as_str(), "api_keys", "index"),
        None => Key::global("api_keys", "index"),
    }
}

fn internal(e: crate::store::StoreError) -> AdminError {
    e.into()
}

/// A key id: 16 lower-case hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn secret_matches(stored: &StoredKey, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored.secret_sha256.as_bytes())
        .into()
}

/// The principal an API key stands for; `None` when the credential is not
/// a live key (malformed, unknown, deleted, wrong secret, dead tenant).
pub(super) async fn authenticate(s: &AppState, token: &str) -> Result<Option<Principal>, AdminError> {
    if let Some(rest) = token.strip_prefix("pk.") {
        let Some((id, secret)) = rest.split_once('.') else {
            return Ok(None);
        };
        if !valid_id(id) {
            return Ok(None);
        }
        let Some(stored) = s
            .store
            .get_json::<StoredKey>(&record_key(None, id))
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        if !secret_matches(&stored, secret) {
            return Ok(None);
        }
        return Ok(Some(Principal {
            kind: PrincipalKind::PlatformKey(stored.id.clone()),
            access: stored.access(),
        }));
    }
    if let Some(rest) = token.strip_prefix("tk.") {
        let mut parts = rest.splitn(3, '.');
        let (Some(tenant), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let (Ok(tenant), true) = (TenantId::parse(tenant), valid_id(id)) else {
            return Ok(None);
        };
        let Some(stored) = s
            .store
            .get_json::<StoredKey>(&record_key(Some(&tenant), id))
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        if !secret_matches(&stored, secret) {
            return Ok(None);
        }
        // The key lives only as long as the tenant incarnation it was made
        // for; with no tenant there is none (a key stored without an
        // incarnation does not match a tenant that is gone).
        let live = s.tenants.get(&tenant).await.map_err(registry)?;
        let current = live.map(|t| t.incarnation.clone());
        if current.is_none() || current != stored.incarnation {
            tracing::info!(reason = "admin.key_tenant_gone", tenant = %tenant, key = %stored.id);
            return Ok(None);
        }
        return Ok(Some(Principal {
            access: stored.access(),
            kind: PrincipalKind::TenantAdmin {
                tenant,
                via: Via::ApiKey(stored.id.clone()),
            },
        }));
    }
    Ok(None)
}

/// Deletes every API key of a deleted tenant (they are dead already: each
/// is bound to the tenant's incarnation; this frees the store).
pub(super) async fn purge_tenant(s: &AppState, tenant: &TenantId) -> Result<usize, crate::store::StoreError> {
    let ids = s.store.set_members(&index_key(Some(tenant))).await?;
    for id in &ids {
        s.store.delete(&record_key(Some(tenant), id)).await?;
    }
    s.store.delete(&index_key(Some(tenant))).await?;
    Ok(ids.len())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
}

fn check_new(req: NewKey) -> Result<(String, Vec<Scope>), AdminError> {
    let name = req.name.unwrap_or_default().trim().to_owned();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(AdminError::field(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters."),
        ));
    }
    let mut scopes = req.scopes.unwrap_or_else(|| vec![Scope::Read, Scope::Write]);
    if scopes.is_empty() {
        return Err(AdminError::field("scopes", "needs \"read\", \"write\" or both."));
    }
    scopes.sort_by_key(|s| *s == Scope::Write);
    scopes.dedup();
    Ok((name, scopes))
}

/// Makes and stores a key; answers the stored record and the secret key.
async fn issue(
    s: &AppState,
    tenant: Option<&TenantId>,
    name: String,
    scopes: Vec<Scope>,
    incarnation: Option<String>,
) -> Result<(StoredKey, String), AdminError> {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = crate::tokens::random_token(32);
    let stored = StoredKey {
        id: id.clone(),
        name,
        scopes,
        secret_sha256: hash_secret(&secret),
        created_at: s.upstream.clock.now(),
        incarnation,
    };
    let written = s
        .store
        .put_json_if_absent(&record_key(tenant, &id), &stored, None)
        .await
        .map_err(internal)?;
    if !written {
        return Err(AdminError::Internal("API key id collision".into()));
    }
    s.store.set_add(&index_key(tenant), &id, None).await.map_err(internal)?;
    let key = match tenant {
        Some(t) => format!("tk.{t}.{id}.{secret}"),
        None => format!("pk.{id}.{secret}"),
    };
    Ok((stored, key))
}

/// The keys of the platform (`tenant`: `None`) or of a tenant; a tenant's
/// only of its current `incarnation`: a key left by a deleted tenant of the
/// same id (its purge failed) authenticates nothing and is not shown.
async fn list(s: &AppState, tenant: Option<&TenantId>, incarnation: Option<&str>) -> Result<Json<Value>, AdminError> {
    let mut out = Vec::new();
    for id in s.store.set_members(&index_key(tenant)).await.map_err(internal)? {
        if let Some(k) = s
            .store
            .get_json::<StoredKey>(&record_key(tenant, &id))
            .await
            .map_err(internal)?
        {
            if tenant.is_some() && k.incarnation.as_deref() != incarnation {
                tracing::info!(reason = "admin.api_key_superseded", key = %k.id, "an API key of an earlier tenant with this id is not shown");
                continue;
            }
            out.push(k.view(tenant));
        }
    }
    Ok(Json(json!({"api_keys": out})))
}

async fn remove(admin: &Admin, s: &AppState, tenant: Option<&TenantId>, kid: &str) -> Result<StatusCode, AdminError> {
    let gone = || AdminError::NotFound(format!("There is no API key {kid:?}."));
    if !valid_id(kid) {
        return Err(gone());
    }
    let key = record_key(tenant, kid);
    let stored = s
        .store
        .get_json::<StoredKey>(&key)
        .await
        .map_err(internal)?
        .ok_or_else(gone)?;
    s.store.delete(&key).await.map_err(internal)?;
    s.store.set_remove(&index_key(tenant), kid).await.map_err(internal)?;
    tracing::info!(reason = "admin.api_key_deleted", key = %kid, tenant = tenant.map(|t| t.as_str()).unwrap_or(""));
    let mut event = admin
        .event("api_key.deleted", Target::new("api_key", kid))
        .before(stored.view(tenant));
    if let Some(t) = tenant {
        event = event.tenant(t);
    }
    s.audit().record(event).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

fn created(stored: &StoredKey, tenant: Option<&TenantId>, key: &str) -> Response {
    let mut v = stored.view(tenant);
    if let Some(o) = v.as_object_mut() {
        // Shown once: only its hash is stored.
        o.insert("key".into(), json!(key));
    }
    (StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
}

async fn create_platform(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewKey = parse_body(body)?;
    if req.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(AdminError::field("name", "a platform API key needs a name."));
    }
    let (name, scopes) = check_new(req)?;
    let (stored, key) = issue(&s, None, name, scopes, None).await?;
    tracing::info!(reason = "admin.api_key_created", key = %stored.id);
    s.audit()
        .record(
            admin
                .event("api_key.created", Target::new("api_key", &stored.id))
                .after(stored.view(None)),
        )
        .await
        .map_err(internal)?;
    Ok(created(&stored, None, &key))
}

async fn list_platform(_: Admin, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
    list(&s, None, None).await
}

async fn delete_platform(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(kid): Path<String>,
) -> Result<StatusCode, AdminError> {
    remove(&admin, &s, None, &kid).await
}

/// The body is optional: `{}` or nothing makes a read-write key.
async fn create_tenant(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let id = tenant_id(&id)?;
    let req: NewKey = if body.iter().all(u8::is_ascii_whitespace) {
        NewKey {
            name: None,
            scopes: None,
        }
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| AdminError::field("body", e.to_string()))?;
        parse_body(v)?
    };
    let (name, scopes) = check_new(req)?;
    let tenant = s
        .tenants
        .get(&id)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no tenant {id:?}.")))?;
    let (stored, key) = issue(&s, Some(&id), name, scopes, Some(tenant.incarnation.clone())).await?;
    tracing::info!(reason = "admin.api_key_created", key = %stored.id, tenant = %id);
    s.audit()
        .record(
            admin
                .event("api_key.created", Target::new("api_key", &stored.id))
                .tenant(&id)
                .after(stored.view(Some(&id))),
        )
        .await
        .map_err(internal)?;
    Ok(created(&stored, Some(&id), &key))
}

async fn list_tenant(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let Some(tenant) = s.tenants.get(&id).await.map_err(registry)? else {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    };
    list(&s, Some(&id), Some(&tenant.incarnation)).await
}

async fn delete_tenant(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, kid)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    remove(&admin, &s, Some(&id), &kid).await
}
