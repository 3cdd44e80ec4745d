//! The users of a tenant: list, read, disable, enable, delete.
//!
//! Disabling refuses the user's sign-ins (a page with `login.user_disabled`)
//! and every token already issued (checked on use), and ends its SSO
//! sessions and refresh families at once. Deleting also removes the identity
//! link, so the person's next sign-in creates a new user with a new `sub`.
//!
//! Only users of the tenant as it is now are listed or reached: a user left
//! by a deleted tenant of the same id (another incarnation) is 404 here,
//! whatever the tenant's purge did ([`crate::directory::Directory::entry`]).

use super::{audit, tenant_record, Admin, AdminError};
use crate::audit::Target;
use crate::directory::UserEntry;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::tenant::Tenant;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest page, and the default.
const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 50;

/// The user routes, under `/tenants/{id}/users`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants/{id}/users", get(list_users))
        .route("/tenants/{id}/users/{sub}", get(get_user).delete(delete_user))
        .route("/tenants/{id}/users/{sub}/disable", post(disable_user))
        .route("/tenants/{id}/users/{sub}/enable", post(enable_user))
        .route("/tenants/{id}/users/{sub}/mfa", axum::routing::delete(reset_mfa))
        .route("/tenants/{id}/users/{sub}/passkeys", get(list_passkeys))
        .route(
            "/tenants/{id}/users/{sub}/passkeys/{pid}",
            axum::routing::delete(delete_passkey),
        )
}

fn view(e: &UserEntry) -> Value {
    let u = &e.user;
    json!({
        "sub": u.sub, "tenant": u.tenant, "connection": u.connection,
        "upstream_subject": u.upstream_subject, "email": u.email,
        "email_verified": u.email_verified, "name": u.name,
        "given_name": u.given_name, "family_name": u.family_name, "groups": u.groups,
        "disabled": e.disabled, "created_at": u.created_at, "updated_at": u.updated_at,
    })
}

fn store_error(e: crate::store::StoreError) -> AdminError {
    e.into()
}

fn no_user(sub: &str, tenant: &TenantId) -> AdminError {
    AdminError::NotFound(format!("There is no user {sub:?} in tenant {tenant:?}."))
}

/// The tenant's user with its disabled flag, or the 404.
async fn existing_entry(s: &AppState, tenant: &Tenant, sub: &str) -> Result<UserEntry, AdminError> {
    s.provider
        .directory
        .entry(tenant, sub)
        .await
        .map_err(store_error)?
        .ok_or_else(|| no_user(sub, &tenant.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_users(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(page) = page.map_err(|e| AdminError::field("query", e.body_text()))?;
    let tenant = tenant_record(&s, &id).await?;
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(AdminError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}."),
        ));
    }
    let (users, next) = s
        .provider
        .directory
        .list(&tenant, page.cursor.as_deref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "users": users.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn get_user(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    Ok(Json(view(&existing_entry(&s, &tenant, &sub).await?)))
}

async fn set_disabled(
    admin: &Admin,
    s: &AppState,
    id: &str,
    sub: &str,
    disabled: bool,
) -> Result<Json<Value>, AdminError> {
    let tenant = tenant_record(s, id).await?;
    let id = &tenant.id;
    let before = existing_entry(s, &tenant, sub).await?;
    if !s
        .broker
        .set_user_disabled(id, sub, disabled, crate::directory::DisabledBy::Admin)
        .await
        .map_err(store_error)?
    {
        return Err(no_user(sub, id));
    }
    let reason = if disabled {
        "admin.user_disabled"
    } else {
        "admin.user_enabled"
    };
    tracing::info!(reason, tenant = %id);
    let entry = existing_entry(s, &tenant, sub).await?;
    let action = if disabled { "user.disabled" } else { "user.enabled" };
    audit::record(
        s,
        admin
            .event(action, Target::new("user", sub))
            .tenant(id)
            .before(view(&before))
            .after(view(&entry)),
    )
    .await?;
    Ok(Json(view(&entry)))
}

async fn disable_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    set_disabled(&admin, &s, &id, &sub, true).await
}

async fn enable_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    set_disabled(&admin, &s, &id, &sub, false).await
}

async fn delete_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    let id = &tenant.id;
    let before = existing_entry(&s, &tenant, &sub).await?;
    s.broker.delete_user(id, &sub).await.map_err(store_error)?;
    tracing::info!(reason = "admin.user_deleted", tenant = %id);
    audit::record(
        &s,
        admin
            .event("user.deleted", Target::new("user", &sub))
            .tenant(id)
            .before(view(&before)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /tenants/{id}/users/{sub}/mfa`: removes the user's TOTP
/// enrolment (and a pending one, the attempt count and the recovery codes);
/// where the tenant requires MFA the next sign-in enrols again. 204 whether
/// or not the user was enrolled; 404 for an unknown user.
async fn reset_mfa(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = existing_user(&s, &id, &sub).await?;
    let mfa = crate::mfa::Mfa::new(s.store.clone(), s.provider.clock.clone());
    let had = mfa.reset(&id, &sub).await.map_err(store_error)?;
    tracing::info!(reason = "admin.user_mfa_reset", tenant = %id, enrolled = had);
    audit::record(
        &s,
        admin
            .event("user.mfa_reset", Target::new("user", &sub))
            .tenant(&id)
            .before(json!({"enrolled": had}))
            .after(json!({"enrolled": false})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user (an existing tenant's, existing user), or the 404.
async fn existing_user(s: &AppState, id: &str, sub: &str) -> Result<TenantId, AdminError> {
    let tenant = tenant_record(s, id).await?;
    existing_entry(s, &tenant, sub).await?;
    Ok(tenant.id.clone())
}

fn passkey_view(p: &crate::mfa::passkey::StoredPasskey) -> Value {
    let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339());
    json!({
        "id": p.id, "name": p.name, "connection": p.connection,
        "created_at": at(p.created_at), "last_used_at": p.last_used_at.and_then(at),
    })
}

/// `GET /tenants/{id}/users/{sub}/passkeys`: the user's passkeys (no key material).
async fn list_passkeys(
    _admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let id = existing_user(&s, &id, &sub).await?;
    let record = crate::mfa::passkey::read(&s.store, &id, &sub)
        .await
        .map_err(store_error)?;
    let passkeys: Vec<Value> = record
        .map(|r| r.passkeys.iter().map(passkey_view).collect())
        .unwrap_or_default();
    Ok(Json(json!({ "passkeys": passkeys })))
}

/// `DELETE /tenants/{id}/users/{sub}/passkeys/{pid}`: removes one passkey
/// (audited); its next use is refused (`passkey.unknown_credential`).
async fn delete_passkey(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, sub, pid)): Path<(String, String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = existing_user(&s, &id, &sub).await?;
    let removed = match crate::mfa::passkey::remove_one(&s.store, &id, &sub, &pid).await {
        Ok(p) => p,
        Err(crate::mfa::passkey::PasskeyError::Store(e)) => return Err(store_error(e)),
        Err(crate::mfa::passkey::PasskeyError::NotFound) => {
            return Err(AdminError::NotFound(format!(
                "The user {sub:?} has no passkey {pid:?}."
            )))
        }
        Err(e) => {
            return Err(AdminError::Conflict {
                field: "pid",
                detail: format!("The passkey could not be removed ({}); try again.", e.reason()),
            })
        }
    };
    tracing::info!(reason = "admin.user_passkey_removed", tenant = %id);
    audit::record(
        &s,
        admin
            .event("user.passkey_removed", Target::new("user", &sub))
            .tenant(&id)
            .before(passkey_view(&removed))
            .after(Value::Null),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
