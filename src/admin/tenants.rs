//! Tenants: create, read, update (JSON merge patch, RFC 7396), list with
//! cursor pagination and filters, delete.

use super::auth::PrincipalKind;
use super::{audit, parse_body, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::tenant::{parse_domain, Tenant, TenantFilter, TenantSettings};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The platform's tenant routes: create, list, delete.
pub fn platform_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{id}", delete(delete_tenant))
}

/// The routes a tenant's own admin may use too: read and patch the tenant
/// (its `domains` only by the platform: a declared domain counts as verified).
pub fn tenant_routes() -> Router<Arc<AppState>> {
    Router::new().route("/tenants/{id}", get(get_tenant).patch(patch_tenant))
}

/// The body of `POST /admin/v1/tenants`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    /// The tenant id.
    id: String,
    /// Display name (the id when absent).
    #[serde(default)]
    name: Option<String>,
    /// Email domains, declared by the platform admin.
    #[serde(default)]
    domains: Vec<String>,
    /// Per-tenant settings.
    #[serde(default)]
    settings: Option<TenantSettings>,
}

/// Normalizes declared domains (deduplicated, in order); the error names
/// the entry at fault.
fn check_domains(domains: &[String]) -> Result<Vec<String>, AdminError> {
    let mut out = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        // Public suffixes and free-mail domains can never be a tenant's.
        let d = crate::tenant::domains::claimable(d).map_err(|e| {
            AdminError::field(
                &format!("domains[{i}]"),
                format!("{}.", super::capitalize(&e.to_string())),
            )
        })?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

fn check_settings(s: &TenantSettings) -> Result<(), AdminError> {
    s.check()
        .map_err(|(field, detail)| AdminError::Invalid { field, detail })
}

async fn create_tenant(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let req: NewTenant = parse_body(body)?;
    let id = TenantId::parse(&req.id).map_err(|e| AdminError::field("id", format!("{:?} {e}", req.id)))?;
    let domains = check_domains(&req.domains)?;
    let settings = req.settings.unwrap_or_default();
    check_settings(&settings)?;
    let name = req
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| id.to_string());
    let mut tenant = s.tenants.create(id, name, domains).await.map_err(registry)?;
    if settings != TenantSettings::default() {
        let old = tenant.clone();
        tenant.settings = settings;
        s.tenants.update(&old, &tenant).await.map_err(registry)?;
    }
    tracing::info!(reason = "admin.tenant_created", tenant = %tenant.id);
    audit::record(
        &s,
        admin
            .event("tenant.created", Target::new("tenant", tenant.id.as_str()))
            .after(json!(tenant)),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(tenant))).into_response())
}

/// The query of `GET /admin/v1/tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 200 (default 50).
    #[serde(default)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// Only the tenant owning this domain.
    #[serde(default)]
    domain: Option<String>,
    /// Only tenants whose name starts with this.
    #[serde(default)]
    name_prefix: Option<String>,
    /// Only tenants whose id, name or a domain contains this.
    #[serde(default)]
    q: Option<String>,
}

/// The query of a plain paginated listing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    #[serde(default)]
    pub(crate) limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub(crate) cursor: Option<String>,
}

/// The default page size of listings.
pub(crate) const DEFAULT_LIMIT: usize = 50;

/// Parses `limit` (1 to 200, default 50).
pub(crate) fn parse_limit(limit: Option<&str>) -> Result<usize, AdminError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::tenant::MAX_PAGE).contains(n))
            .ok_or_else(|| AdminError::field("limit", "must be an integer from 1 to 200.")),
    }
}

/// An opaque cursor for "after this id" (base64url, so callers do not
/// build them).
pub(crate) fn encode_cursor(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{after}"))
}

/// The id a cursor continues after; a cursor we did not make is refused.
pub(crate) fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, AdminError> {
    let Some(c) = cursor else { return Ok(None) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.strip_prefix("after:").map(str::to_owned))
        .map(Some)
        .ok_or_else(|| AdminError::field("cursor", "is not a cursor this API returned."))
}

async fn list_tenants(
    _: Admin,
    State(s): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(q) = query.map_err(|e| AdminError::field("query", e.body_text()))?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = decode_cursor(q.cursor.as_deref())?;
    let domain = match q.domain.as_deref() {
        Some(d) => {
            Some(parse_domain(d).ok_or_else(|| AdminError::field("domain", format!("{d:?} is not a domain name.")))?)
        }
        None => None,
    };
    let filter = TenantFilter {
        domain,
        name_prefix: q.name_prefix.filter(|p| !p.is_empty()),
        q: q.q.filter(|p| !p.is_empty()),
    };
    let page = s
        .tenants
        .page(after.as_deref(), limit, &filter)
        .await
        .map_err(registry)?;
    Ok(Json(json!({
        "tenants": page.tenants,
        "next_cursor": page.next_after.as_deref().map(encode_cursor),
    })))
}

async fn get_tenant(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let tenant = load(&s, &id).await?;
    tenant_view(&s, &tenant).await.map(Json)
}

async fn load(s: &AppState, id: &TenantId) -> Result<Tenant, AdminError> {
    s.tenants
        .get(id)
        .await
        .map_err(registry)?
        .map(Arc::unwrap_or_clone)
        .ok_or_else(|| AdminError::NotFound(format!("There is no tenant {id:?}.")))
}

/// A tenant with its connection ids.
async fn tenant_view(s: &AppState, tenant: &Tenant) -> Result<Value, AdminError> {
    let connections = s.tenants.connection_ids(&tenant.id).await.map_err(registry)?;
    let mut v = json!(tenant);
    if let Some(o) = v.as_object_mut() {
        o.insert("connections".into(), json!(connections));
    }
    Ok(v)
}

/// A JSON merge patch body (RFC 7396): `application/merge-patch+json` or
/// `application/json`; anything else is refused.
pub(crate) struct MergePatch(pub Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for MergePatch {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AdminError> {
        let ctype = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ctype != "application/merge-patch+json" && ctype != "application/json" {
            return Err(AdminError::field(
                "body",
                "must be application/merge-patch+json or application/json.",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| AdminError::field("body", e.body_text()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| AdminError::field("body", e.to_string()))?;
        if !v.is_object() {
            return Err(AdminError::field("body", "must be a JSON object."));
        }
        Ok(MergePatch(v))
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// What a tenant patch may change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantPatch {
    /// Display name.
    name: String,
    /// Email domains (declared by the platform admin: they count as verified).
    #[serde(default)]
    domains: Vec<String>,
    /// Per-tenant settings.
    #[serde(default)]
    settings: TenantSettings,
}

async fn patch_tenant(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    MergePatch(patch): MergePatch,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    if let Some(o) = patch.as_object() {
        for k in o.keys() {
            if !matches!(k.as_str(), "name" | "domains" | "settings") {
                return Err(AdminError::field(
                    k,
                    "cannot be changed (name, domains and settings can).",
                ));
            }
        }
        if o.contains_key("domains") && matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. }) {
            return Err(AdminError::field(
                "domains",
                "only the platform admin may declare domains; add one through /domains and verify it.",
            ));
        }
        if o.get("name").is_some_and(Value::is_null) {
            return Err(AdminError::field("name", "cannot be removed."));
        }
    }
    let old = load(&s, &id).await?;
    let mut doc = json!({"name": old.name, "domains": old.domains, "settings": old.settings});
    merge_patch(&mut doc, &patch);
    let req: TenantPatch = parse_body(doc)?;
    // Rate limits protect the whole platform: a tenant admin may not lift its
    // own, however the patch spells it (`"settings": null` removes them too),
    // so the merged result is what is compared.
    if req.settings.throttle != old.settings.throttle
        && matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. })
    {
        return Err(AdminError::field(
            "settings.throttle",
            "only the platform admin may set a tenant's rate limits.",
        ));
    }
    if req.name.trim().is_empty() || req.name.chars().count() > 200 {
        return Err(AdminError::field("name", "must be 1 to 200 characters."));
    }
    let domains = check_domains(&req.domains)?;
    check_settings(&req.settings)?;
    // A domain that goes takes its connections with it (`domain_connections`).
    let mut domain_connections = old.domain_connections.clone();
    domain_connections.retain(|d, _| domains.contains(d));
    let new = Tenant {
        name: req.name,
        domains,
        domain_connections,
        settings: req.settings,
        ..old.clone()
    };
    // A file declares name and domains (settings are the API's).
    if new.name != old.name || new.domains != old.domains {
        refuse_if_file_owned(&s, &old, "changing its name or domains").await?;
    }
    if new != old {
        s.tenants.update(&old, &new).await.map_err(registry)?;
        audit::record(
            &s,
            admin
                .event("tenant.updated", Target::new("tenant", id.as_str()))
                .tenant(&id)
                .before(json!(old))
                .after(json!(new)),
        )
        .await?;
    }
    tracing::info!(reason = "admin.tenant_updated", tenant = %id);
    tenant_view(&s, &new).await.map(Json)
}

/// A tenant file's tenant is the file's to change and delete: the next
/// sync would create it again afresh (new users) or put back what the file
/// declares, so the API refuses (409, `tenant.file_owned`) rather than let
/// either happen behind the operator's back. `action` names the refused
/// change ("deleting it").
pub(super) async fn refuse_if_file_owned(s: &AppState, tenant: &Tenant, action: &str) -> Result<(), AdminError> {
    if crate::tenant::files::file_owned(&s.tenants, tenant).await? {
        tracing::info!(reason = "tenant.file_owned", tenant = %tenant.id, action, "a tenant file's tenant: refused");
        return Err(AdminError::ConflictReason {
            reason: "tenant.file_owned",
            detail: format!(
                "Tenant {:?} comes from a tenant file, which the next sync applies again: instead of {action} here, remove or change its file under tenants/.",
                tenant.id.as_str()
            ),
        });
    }
    Ok(())
}

async fn delete_tenant(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    let before = s.tenants.get(&id).await.map_err(registry)?;
    if let Some(tenant) = &before {
        refuse_if_file_owned(&s, tenant, "deleting it").await?;
    }
    let connections = s.tenants.connection_ids(&id).await.map_err(registry)?;
    s.tenants.delete(&id).await.map_err(registry)?;
    tracing::info!(reason = "admin.tenant_deleted", tenant = %id);
    // Before the audit write, which may fail: the tenant is gone either way,
    // and a retry would find nothing to delete and purge nothing.
    super::purge::deleted_tenant(&s, &id, &connections).await;
    audit::record(
        &s,
        admin
            .event("tenant.deleted", Target::new("tenant", id.as_str()))
            .before(json!(before)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3], "n": {"x": null}}));
        assert_eq!(t, json!({"a": [3], "n": {}}));
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            decode_cursor(Some(&encode_cursor("acme"))).unwrap().as_deref(),
            Some("acme")
        );
        assert!(decode_cursor(Some("acme")).is_err());
    }
}
