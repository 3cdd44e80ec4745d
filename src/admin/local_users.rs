//! Local accounts of a `"kind":"local"` connection, for the platform and the
//! tenant's admins: create (confirmed with a password, or `RESET_REQUIRED`
//! without one), list, read, disable, enable, force a password reset,
//! delete. Accounts are addressed by email under
//! `/tenants/{id}/connections/{cid}/users/{email}`. Password hashes are never
//! shown. Every change is audited.

use super::{audit, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::{ConnectionId, TenantId};
use crate::local::{LocalConfig, LocalError, LocalUser, Profile};
use crate::secret::Secret;
use crate::upstream::ConnectionKind;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The routes, in the tenant group.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/tenants/{id}/connections/{cid}/users",
            get(list_users).post(create_user),
        )
        .route(
            "/tenants/{id}/connections/{cid}/users/{email}",
            get(get_user).delete(delete_user),
        )
        .route(
            "/tenants/{id}/connections/{cid}/users/{email}/disable",
            post(disable_user),
        )
        .route(
            "/tenants/{id}/connections/{cid}/users/{email}/enable",
            post(enable_user),
        )
        .route(
            "/tenants/{id}/connections/{cid}/users/{email}/force-reset",
            post(force_reset),
        )
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The public view of an account (no hash).
pub fn view(u: &LocalUser) -> Value {
    json!({
        "email": u.email,
        "status": u.effective_status(),
        "upstream_subject": u.subject,
        "given_name": u.given_name,
        "family_name": u.family_name,
        "migrated": u.migrated,
        "created_at": rfc3339(u.created_at),
        "updated_at": rfc3339(u.updated_at),
    })
}

/// The tenant and local connection of the path, with the connection's settings.
async fn local_connection(
    s: &AppState,
    id: &str,
    cid: &str,
) -> Result<(TenantId, ConnectionId, LocalConfig), AdminError> {
    let id = tenant_id(id)?;
    if s.tenants.get(&id).await.map_err(registry)?.is_none() {
        return Err(AdminError::NotFound(format!("There is no tenant {id:?}.")));
    }
    let cid = ConnectionId::parse(cid).map_err(|_| AdminError::NotFound("There is no such connection.".into()))?;
    let conn = s
        .tenants
        .connection(&id, &cid)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound("There is no such connection.".into()))?;
    let ConnectionKind::Local(cfg) = conn.kind else {
        return Err(AdminError::NotFound(format!(
            "Connection {cid:?} is not a local connection (\"kind\":\"local\"): it has no local users."
        )));
    };
    Ok((id, cid, cfg))
}

/// The spelling the account of the address in a path is stored under
/// ([`crate::local::Accounts::address`]: any spelling of the address, or
/// the one the listing shows, finds it); no user when it is no address.
async fn email_of(s: &AppState, t: &TenantId, c: &ConnectionId, raw: &str) -> Result<String, AdminError> {
    s.accounts.address(t, c, raw).await.map_err(|e| match e {
        LocalError::Store(e) => e.into(),
        _ => no_user(),
    })
}

fn no_user() -> AdminError {
    AdminError::NotFound("There is no such user.".into())
}

fn local_error(e: LocalError) -> AdminError {
    match e {
        LocalError::Refused {
            reason: "local.exists", ..
        } => AdminError::Conflict {
            field: "email",
            detail: "A local user with this email exists.".into(),
        },
        LocalError::Refused {
            reason: "local.bad_email",
            message,
            ..
        } => AdminError::field("email", message),
        LocalError::Refused { reason, message, .. } if reason.starts_with("local.password") => {
            AdminError::field("password", format!("{message} ({reason})"))
        }
        LocalError::Refused { reason, message, .. } => AdminError::field("body", format!("{message} ({reason})")),
        LocalError::Store(e) => e.into(),
        LocalError::Hash(e) => AdminError::Internal(e.to_string()),
        // No admin operation calls a hook; should one, its failure is ours to log.
        LocalError::Hook(e) => AdminError::Unavailable(e.to_string()),
    }
}

/// `POST …/users`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLocalUser {
    email: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    family_name: Option<String>,
}

async fn create_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let (t, c, cfg) = local_connection(&s, &id, &cid).await?;
    let body: NewLocalUser = super::parse_body(body)?;
    let profile = Profile {
        given_name: body.given_name,
        family_name: body.family_name,
    };
    if let Some(field) = profile.too_long() {
        return Err(AdminError::field(field, "must be at most 200 characters"));
    }
    if body.password.is_some() {
        super::charge_password_hash(&s, &admin, &t).await?;
    }
    let user = s
        .accounts
        .admin_create(&t, &c, &cfg, &body.email, body.password.as_ref(), profile)
        .await
        .map_err(local_error)?;
    tracing::info!(reason = "admin.local_user_created", tenant = %t, connection = %c);
    let v = view(&user);
    audit::record(
        &s,
        admin
            .event("local_user.created", Target::new("local_user", &user.subject))
            .tenant(&t)
            .connection(c.as_str())
            .after(v.clone()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_users(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let (t, c, _) = local_connection(&s, &id, &cid).await?;
    let users = s.accounts.list(&t, &c).await?;
    Ok(Json(json!({ "users": users.iter().map(view).collect::<Vec<_>>() })))
}

async fn get_user(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, email)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    let (t, c, _) = local_connection(&s, &id, &cid).await?;
    let email = email_of(&s, &t, &c, &email).await?;
    let user = s.accounts.get(&t, &c, &email).await?.ok_or_else(no_user)?;
    Ok(Json(view(&user)))
}

async fn delete_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, email)): Path<(String, String, String)>,
) -> Result<StatusCode, AdminError> {
    let (t, c, _) = local_connection(&s, &id, &cid).await?;
    let email = email_of(&s, &t, &c, &email).await?;
    let before = s.accounts.get(&t, &c, &email).await?.ok_or_else(no_user)?;
    // The directory user goes first (its sessions, families, MFA
    // enrolment, and with its `sub` every token issued to it); should the
    // account's deletion then fail, a retry finds it still there.
    s.broker.delete_local_account(&t, &c, &before.subject).await?;
    s.accounts.delete(&t, &c, &email).await?;
    tracing::info!(reason = "admin.local_user_deleted", tenant = %t, connection = %c);
    audit::record(
        &s,
        admin
            .event("local_user.deleted", Target::new("local_user", &before.subject))
            .tenant(&t)
            .connection(c.as_str())
            .before(view(&before)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Clone, Copy)]
enum Change {
    Disable,
    Enable,
    ForceReset,
}

async fn change(
    admin: &Admin,
    s: &AppState,
    id: &str,
    cid: &str,
    email: &str,
    what: Change,
) -> Result<Json<Value>, AdminError> {
    let (t, c, _) = local_connection(s, id, cid).await?;
    let email = email_of(s, &t, &c, email).await?;
    let before = s.accounts.get(&t, &c, &email).await?.ok_or_else(no_user)?;
    let after = match what {
        Change::Disable => s.accounts.set_disabled(&t, &c, &email, true).await?,
        Change::Enable => s.accounts.set_disabled(&t, &c, &email, false).await?,
        Change::ForceReset => s.accounts.force_reset(&t, &c, &email).await?,
    }
    .ok_or_else(no_user)?;
    match what {
        // The directory user follows the account, so the access tokens it
        // already has are refused on use while it is disabled (and what it
        // was issued ends now, not at the next sign-in).
        Change::Disable => {
            s.broker
                .set_local_account_disabled(&t, &c, &after.subject, true)
                .await?;
        }
        Change::Enable => {
            s.broker
                .set_local_account_disabled(&t, &c, &after.subject, false)
                .await?;
        }
        // Sessions and refresh families end now, and the access tokens
        // issued before are refused on use (`token.credentials_reset`).
        Change::ForceReset => {
            s.broker.revoke_local_account(&t, &c, &after.subject).await?;
        }
    }
    let (reason, action) = match what {
        Change::Disable => ("admin.local_user_disabled", "local_user.disabled"),
        Change::Enable => ("admin.local_user_enabled", "local_user.enabled"),
        Change::ForceReset => ("admin.local_user_force_reset", "local_user.force_reset"),
    };
    tracing::info!(reason, tenant = %t, connection = %c);
    audit::record(
        s,
        admin
            .event(action, Target::new("local_user", &after.subject))
            .tenant(&t)
            .connection(c.as_str())
            .before(view(&before))
            .after(view(&after)),
    )
    .await?;
    Ok(Json(view(&after)))
}

async fn disable_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, email)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    change(&admin, &s, &id, &cid, &email, Change::Disable).await
}

async fn enable_user(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, email)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    change(&admin, &s, &id, &cid, &email, Change::Enable).await
}

async fn force_reset(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, cid, email)): Path<(String, String, String)>,
) -> Result<Json<Value>, AdminError> {
    change(&admin, &s, &id, &cid, &email, Change::ForceReset).await
}
