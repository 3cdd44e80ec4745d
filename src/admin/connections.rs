//! Connections of a tenant: create, read, list, update in place (JSON merge
//! patch), enable/disable, delete, and the SP certificate's overlapping
//! rotation.
//!
//! SP certificate rotation, in order (see `upstream::saml::rotate_sp_key`):
//! 1. `POST …/connections/{cid}/sp-certificates/rotate`: a new SP key pair is
//!    published in the SP metadata next to the current one; requests are
//!    still signed with the current key and assertions encrypted to either
//!    key decrypt. Let the IdP pick up the new metadata.
//! 2. `POST …/sp-certificates/activate` (alias `promote`): requests are signed
//!    with the new key; the old one stays published for encryption and keeps
//!    decrypting.
//! 3. `POST …/sp-certificates/retire`: the old key leaves the metadata and
//!    decryption; or automatically `sp_key_overlap_secs` after step 2.
//!
//! Every change bumps the connection's `revision`, so every replica rebuilds
//! its cached connector on next use.

use super::auth::PrincipalKind;
use super::{audit, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::{ConnectionId, TenantId};
use crate::tenant::setup::{describe, patch_connection};
use crate::tenant::IssuerChange;
use crate::upstream::{Connection, ConnectionKind, ConnectionStatus, SetupError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The connection routes, merged into `admin::routes()`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/tenants/{id}/connections",
            post(create_connection).get(list_connections),
        )
        .route(
            "/tenants/{id}/connections/{cid}",
            get(get_connection)
                .patch(patch_connection_handler)
                .delete(delete_connection),
        )
        .route("/tenants/{id}/connections/{cid}/enable", post(enable))
        .route("/tenants/{id}/connections/{cid}/disable", post(disable))
        .route(
            "/tenants/{id}/connections/{cid}/sp-certificates/{step}",
            post(sp_certificates),
        )
}

fn setup_error(e: SetupError) -> AdminError {
    AdminError::Invalid {
        field: e.field,
        detail: e.message,
    }
}

/// Fields only the platform admin may set: a migrated SP identity.
const PLATFORM_ADMIN_FIELDS: [&str; 2] = ["sp_entity_id", "acs_url"];

/// `sp_entity_id` and `acs_url` change what the customer's IdP must trust:
/// only the platform admin may set them.
// platform-admin only: a tenant admin (API key, setup link) is refused,
// naming the field.
fn check_platform_admin_fields(admin: &Admin, body: &Value) -> Result<(), AdminError> {
    let is_platform_admin = !matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. });
    if let Some(field) = PLATFORM_ADMIN_FIELDS
        .iter()
        .find(|f| body.get(**f).is_some() && !is_platform_admin)
    {
        return Err(AdminError::field(field, "only the platform admin may set this field"));
    }
    Ok(())
}

/// A tenant admin (API key, setup link) gives its tenant at most `[quotas]
/// connections_per_tenant` connections (409, `quota.connections`), checked
/// before the metadata is fetched; the platform admin is not held to it.
pub(crate) async fn check_connection_quota(s: &AppState, admin: &Admin, id: &TenantId) -> Result<(), AdminError> {
    if !matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. }) {
        return Ok(());
    }
    let max = s.quotas.connections_per_tenant;
    if !s.tenants.room_for_connection(id, max).await.map_err(registry)? {
        tracing::info!(reason = "quota.connections", tenant = %id, max, "a tenant admin's connection over the tenant's quota: refused");
        return Err(AdminError::ConflictReason {
            reason: "quota.connections",
            detail: format!(
                "The tenant has reached its quota of {max} connections its own admin may give it: delete one first, or ask the platform's operator."
            ),
        });
    }
    Ok(())
}

/// A connection the platform admin disabled is the platform's to enable,
/// re-status or delete: a tenant admin (API key, setup link) is refused,
/// so an operator's switch-off of a tenant's IdP holds.
fn check_not_disabled_by_platform(admin: &Admin, connection: &Connection) -> Result<(), AdminError> {
    if connection.disabled_by_platform && matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. }) {
        tracing::info!(reason = "admin.disabled_by_platform", tenant = %connection.tenant, connection = %connection.id);
        return Err(AdminError::Forbidden(
            "The platform admin disabled this connection; only they can enable, change the status of or delete it.",
        ));
    }
    Ok(())
}

/// A connection a tenant file declares is the file's to change and delete:
/// its sync marks the declared table as applied, so a change made here
/// would stay unseen beside the file (a deleted connection would not come
/// back, an edited one would differ from its file) until the file is
/// edited, and then be overwritten. The API refuses (409,
/// `connection.file_declared`); its status (enable, disable) and SP
/// certificates, which no file declares, stay the API's. `action` names
/// the refused change ("deleting it").
async fn refuse_if_file_declared(
    s: &AppState,
    tenant: &TenantId,
    cid: &ConnectionId,
    action: &str,
) -> Result<(), AdminError> {
    let Some(t) = s.tenants.get(tenant).await.map_err(registry)? else {
        return Ok(());
    };
    if crate::tenant::files::file_declared(&s.tenants, &t, cid).await? {
        tracing::info!(reason = "connection.file_declared", tenant = %tenant, connection = %cid, action, "a tenant file's connection: refused");
        return Err(AdminError::ConflictReason {
            reason: "connection.file_declared",
            detail: format!(
                "Connection {:?} is declared by its tenant's file: instead of {action} here, change or remove its table in the file under tenants/.",
                cid.as_str()
            ),
        });
    }
    Ok(())
}

async fn load(s: &AppState, id: &str, cid: &str) -> Result<(TenantId, Connection), AdminError> {
    let id = tenant_id(id)?;
    let cid = ConnectionId::parse(cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    let conn = s
        .tenants
        .connection(&id, &cid)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no connection {cid:?} in tenant {id:?}.")))?;
    Ok((id, conn))
}

async fn create_connection(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let id = tenant_id(&id)?;
    if s.tenants.get(&id).await.map_err(registry)?.is_none() {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    }
    check_platform_admin_fields(&admin, &body)?;
    check_connection_quota(&s, &admin, &id).await?;
    if body.get("metadata_url").is_some() || body.get("issuer").is_some() {
        super::charge_outbound(&s, &admin, &id).await?;
    }
    if body.get("kind").and_then(Value::as_str) == Some("saml") {
        super::charge_key_generation(&s, &admin, &id).await?;
    }
    let conn = crate::tenant::setup::build_connection(&s.upstream, &id, body, s.dev)
        .await
        .map_err(setup_error)?;
    // Build it once now, so a configuration that cannot work is refused before it is stored.
    crate::upstream::build(&conn, &s.upstream).map_err(|e| AdminError::field("body", e.message))?;
    s.tenants.add_connection(&conn).await.map_err(registry)?;
    tracing::info!(reason = "admin.connection_created", tenant = %id, connection = %conn.id, kind = conn.kind.name());
    let view = describe(&s.upstream, &conn);
    audit::record(
        &s,
        admin
            .event("connection.created", Target::new("connection", conn.id.as_str()))
            .tenant(&id)
            .after(view.clone()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_connections(
    _: Admin,
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
            out.push(super::refresh::describe_with_refresh(&s, &conn).await?);
        }
    }
    Ok(Json(json!({"connections": out})))
}

async fn get_connection(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let (_, conn) = load(&s, &id, &cid).await?;
    Ok(Json(super::refresh::describe_with_refresh(&s, &conn).await?))
}

/// Validates and stores the new version of a connection, then drops this
/// replica's cached connector (others see the new revision). A change of
/// the upstream issuer renews the connection's users unless `users` keeps
/// them ([`IssuerChange`]); the answer then says `"users_renewed": true`,
/// and the audit log has a `connection.users_renewed` event after the
/// update's.
async fn store_update(
    s: &AppState,
    admin: &Admin,
    (old, new): (&Connection, Connection),
    users: IssuerChange,
    (reason, action): (&'static str, &str),
) -> Result<Value, AdminError> {
    // Built once now, so a configuration that cannot work is refused and the old one keeps serving.
    crate::upstream::build(&new, &s.upstream).map_err(|e| AdminError::field("body", e.message))?;
    let renewed = s.tenants.update_connection(old, &new, users).await.map_err(registry)?;
    s.broker.connectors.forget(&new.tenant, &new.id);
    tracing::info!(
        reason,
        tenant = %new.tenant,
        connection = %new.id,
        status = ?new.status,
        revision = new.revision,
        users_renewed = renewed
    );
    let mut view = describe(&s.upstream, &new);
    audit::record(
        s,
        admin
            .event(action, Target::new("connection", new.id.as_str()))
            .tenant(&new.tenant)
            .before(describe(&s.upstream, old))
            .after(view.clone()),
    )
    .await?;
    if renewed {
        audit::record(
            s,
            admin
                .event("connection.users_renewed", Target::new("connection", new.id.as_str()))
                .tenant(&new.tenant)
                .before(json!({"issuer": old.kind.upstream_issuer()}))
                .after(json!({"issuer": new.kind.upstream_issuer()})),
        )
        .await?;
        if let Some(o) = view.as_object_mut() {
            o.insert("users_renewed".into(), Value::Bool(true));
        }
    }
    Ok(view)
}

/// The PATCH's query: `keep_users=true` keeps the connection's users across
/// a change of its upstream issuer.
#[derive(serde::Deserialize)]
struct PatchQuery {
    keep_users: Option<String>,
}

fn issuer_change(
    query: Result<Query<PatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<IssuerChange, AdminError> {
    let Query(q) = query.map_err(|e| AdminError::field("query", e.body_text()))?;
    match q.keep_users.as_deref() {
        None | Some("false") => Ok(IssuerChange::NewUsers),
        Some("true") => Ok(IssuerChange::KeepUsers),
        Some(_) => Err(AdminError::field("keep_users", "must be true or false.")),
    }
}

async fn patch_connection_handler(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
    query: Result<Query<PatchQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AdminError> {
    let users = issuer_change(query)?;
    let (id, old) = load(&s, &id, &cid).await?;
    if body.as_object().is_some_and(|o| o.keys().any(|k| k != "status")) {
        refuse_if_file_declared(&s, &id, &old.id, "changing its configuration").await?;
    }
    check_platform_admin_fields(&admin, &body)?;
    if body.get("status").is_some() {
        check_not_disabled_by_platform(&admin, &old)?;
    }
    // An OIDC connection's every change discovers its issuer again.
    if matches!(old.kind, ConnectionKind::Oidc(_)) || body.get("metadata_url").is_some() {
        super::charge_outbound(&s, &admin, &id).await?;
    }
    let new = patch_connection(&s.upstream, &old, body).await.map_err(|e| {
        tracing::info!(reason = "admin.connection_patch_refused", tenant = %id, connection = %old.id, field = %e.field);
        setup_error(e)
    })?;
    Ok(Json(
        store_update(
            &s,
            &admin,
            (&old, new),
            users,
            ("admin.connection_updated", "connection.updated"),
        )
        .await?,
    ))
}

async fn set_status(
    s: &AppState,
    admin: &Admin,
    (id, cid): (&str, &str),
    status: ConnectionStatus,
) -> Result<Json<Value>, AdminError> {
    let (_, old) = load(s, id, cid).await?;
    let by_platform = !matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. });
    let mut new = old.clone();
    new.status = status;
    new.disabled_by_platform = match status {
        ConnectionStatus::Disabled => old.disabled_by_platform || by_platform,
        _ => {
            check_not_disabled_by_platform(admin, &old)?;
            false
        }
    };
    while new.revision == old.revision {
        new.revision = rand::random();
    }
    Ok(Json(
        store_update(
            s,
            admin,
            (&old, new),
            IssuerChange::NewUsers,
            ("admin.connection_status_changed", "connection.status_changed"),
        )
        .await?,
    ))
}

async fn enable(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    set_status(&s, &admin, (&id, &cid), ConnectionStatus::Active).await
}

async fn disable(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    set_status(&s, &admin, (&id, &cid), ConnectionStatus::Disabled).await
}

/// `POST …/sp-certificates/{rotate|activate|promote|retire}`.
async fn sp_certificates(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, step)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    let (_, old) = load(&s, &id, &cid).await?;
    let ConnectionKind::Saml(cfg) = &old.kind else {
        return Err(AdminError::field("kind", "only a SAML connection has SP certificates"));
    };
    let mut cfg = cfg.clone();
    let now = s.upstream.clock.now();
    if step == "rotate" && cfg.sp_next_key.is_none() {
        super::charge_key_generation(&s, &admin, &old.tenant).await?;
    }
    let outcome = match step.as_str() {
        "rotate" => crate::upstream::saml::rotate_sp_key(&mut cfg, &old, now).await,
        "activate" | "promote" => crate::upstream::saml::activate_sp_key(&mut cfg, now),
        "retire" => crate::upstream::saml::retire_sp_key(&mut cfg),
        _ => {
            return Err(AdminError::NotFound(format!(
                "There is no SP certificate step {step:?}."
            )))
        }
    };
    outcome.map_err(|e| AdminError::Conflict {
        field: "sp_certificates",
        detail: format!("{}.", e.0),
    })?;
    let mut new = old.clone();
    new.kind = ConnectionKind::Saml(cfg);
    while new.revision == old.revision {
        new.revision = rand::random();
    }
    let labels = match step.as_str() {
        "rotate" => ("admin.sp_certificate_rotated", "connection.sp_certificate_rotated"),
        "retire" => ("admin.sp_certificate_retired", "connection.sp_certificate_retired"),
        _ => ("admin.sp_certificate_activated", "connection.sp_certificate_activated"),
    };
    Ok(Json(
        store_update(&s, &admin, (&old, new), IssuerChange::NewUsers, labels).await?,
    ))
}

async fn delete_connection(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    let cid = ConnectionId::parse(&cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    let before = s.tenants.connection(&id, &cid).await.map_err(registry)?;
    if let Some(c) = &before {
        check_not_disabled_by_platform(&admin, c)?;
        refuse_if_file_declared(&s, &id, &cid, "deleting it").await?;
    }
    s.tenants.delete_connection(&id, &cid).await.map_err(registry)?;
    s.broker.connectors.forget(&id, &cid);
    tracing::info!(reason = "admin.connection_deleted", tenant = %id, connection = %cid);
    let before = before.map(|c| describe(&s.upstream, &c));
    audit::record(
        &s,
        admin
            .event("connection.deleted", Target::new("connection", cid.as_str()))
            .tenant(&id)
            .before(json!(before)),
    )
    .await?;
    // Local accounts go with their connection (a new one of the same id starts empty).
    match s.accounts.purge_connection(&id, &cid).await {
        Ok(n) => tracing::info!(reason = "admin.local_users_purged", tenant = %id, connection = %cid, users = n),
        Err(e) => tracing::error!(
            reason = "admin.local_purge_failed",
            tenant = %id,
            connection = %cid,
            error = %e,
            "local accounts of a deleted connection left in the store"
        ),
    }
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
