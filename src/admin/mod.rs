//! The platform admin API (`/admin/v1`): tenants, connections, apps and
//! resource servers (`resources.rs`).
//! JSON in, JSON out; every error is `application/problem+json` (RFC 9457)
//! naming the field at fault. A wrong or missing bearer token is 401 and
//! changes nothing (`auth.rs`); a tenant principal reaches only its own
//! tenant's routes (404 elsewhere), because every route sits in the platform
//! or the tenant group of [`routes`]. Every handler takes [`Admin`] first,
//! and every change is recorded in the audit log (`audit.rs`,
//! [`crate::audit`]).

mod api_keys;
pub(crate) use api_keys::{index_key as api_key_index_key, record_key as api_key_record_key};
pub mod audit;
pub mod auth;
mod clients;
mod connections;
pub(crate) mod domains;
mod error;
mod exchange_rules;
mod hooks;
mod local_users;
pub mod openapi;
mod purge;
mod refresh;
mod resources;
mod setup_links;
mod tenants;
mod users;

pub use auth::{Access, Admin, Principal, PrincipalKind, Via};
pub use error::AdminError;

use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::tenant::RegistryError;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin routes, in two groups (see `auth.rs`): the platform group
/// serves platform principals only; the tenant group serves platform
/// principals and the tenant named by the route's `{id}`. A new route joins
/// one group here (or in its file's `routes()` merged here); a route under
/// `/tenants/{id}/` that a tenant admin may use goes in the tenant group.
pub fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let platform = Router::new()
        .route("/keys/rotate", post(rotate_keys))
        .merge(tenants::platform_routes())
        .merge(clients::routes())
        .merge(resources::routes())
        .merge(api_keys::platform_routes())
        .merge(audit::platform_routes())
        .merge(setup_links::routes());
    let tenant = Router::new()
        .merge(tenants::tenant_routes())
        .merge(connections::routes())
        .merge(users::routes())
        .merge(local_users::routes())
        .merge(refresh::routes())
        .merge(audit::tenant_routes())
        .merge(domains::routes())
        .merge(exchange_rules::routes())
        .merge(hooks::routes());
    // The document describes the API's shape, never its data: no credential needed.
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(auth::guard(platform, tenant, state))
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
    ("PATCH", "/tenants/{id}/connections/{cid}"),
    ("DELETE", "/tenants/{id}/connections/{cid}"),
    ("POST", "/tenants/{id}/connections/{cid}/enable"),
    ("POST", "/tenants/{id}/connections/{cid}/disable"),
    ("POST", "/tenants/{id}/connections/{cid}/refresh"),
    ("POST", "/tenants/{id}/connections/{cid}/sp-certificates/{step}"),
    ("POST", "/tenants/{id}/setup-links"),
    ("GET", "/tenants/{id}/setup-links"),
    ("DELETE", "/tenants/{id}/setup-links/{link_id}"),
    ("POST", "/tenants/{id}/api-keys"),
    ("GET", "/tenants/{id}/api-keys"),
    ("DELETE", "/tenants/{id}/api-keys/{kid}"),
    ("GET", "/tenants/{id}/audit"),
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
    ("DELETE", "/tenants/{id}/users/{sub}/mfa"),
    ("GET", "/tenants/{id}/users/{sub}/passkeys"),
    ("DELETE", "/tenants/{id}/users/{sub}/passkeys/{pid}"),
    ("POST", "/tenants/{id}/connections/{cid}/users"),
    ("GET", "/tenants/{id}/connections/{cid}/users"),
    ("GET", "/tenants/{id}/connections/{cid}/users/{email}"),
    ("DELETE", "/tenants/{id}/connections/{cid}/users/{email}"),
    ("POST", "/tenants/{id}/connections/{cid}/users/{email}/disable"),
    ("POST", "/tenants/{id}/connections/{cid}/users/{email}/enable"),
    ("POST", "/tenants/{id}/connections/{cid}/users/{email}/force-reset"),
    ("POST", "/keys/rotate"),
    ("POST", "/api-keys"),
    ("GET", "/api-keys"),
    ("DELETE", "/api-keys/{kid}"),
    ("GET", "/audit"),
    ("POST", "/tenants/{id}/domains"),
    ("GET", "/tenants/{id}/domains"),
    ("GET", "/tenants/{id}/domains/{domain}"),
    ("DELETE", "/tenants/{id}/domains/{domain}"),
    ("PATCH", "/tenants/{id}/domains/{domain}"),
    ("POST", "/tenants/{id}/domains/{domain}/verify"),
    ("PUT", "/tenants/{id}/mfa"),
    ("POST", "/tenants/{id}/exchange-rules"),
    ("GET", "/tenants/{id}/exchange-rules"),
    ("GET", "/tenants/{id}/exchange-rules/{rid}"),
    ("DELETE", "/tenants/{id}/exchange-rules/{rid}"),
    ("GET", "/tenants/{id}/hooks"),
    ("GET", "/tenants/{id}/hooks/{kind}"),
    ("PUT", "/tenants/{id}/hooks/{kind}"),
    ("DELETE", "/tenants/{id}/hooks/{kind}"),
];

/// `GET /admin/v1/openapi.json`: the API's description; public (no data).
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
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

/// The record of the tenant `id` as it is now, read in this request (what
/// it owns is what its incarnation and creation time say), or the 404.
pub(crate) async fn tenant_record(s: &AppState, id: &str) -> Result<Arc<crate::tenant::Tenant>, AdminError> {
    let id = tenant_id(id)?;
    s.tenants
        .get(&id)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no tenant {id:?}.")))
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
        RegistryError::AcsPathTaken { path } => AdminError::Conflict {
            field: "acs_url",
            detail: format!("The ACS URL path {path} is already served for another connection."),
        },
        RegistryError::Changed(what) => AdminError::Conflict {
            field: "revision",
            detail: format!("The {what} changed meanwhile; read it again and repeat the change."),
        },
        RegistryError::DeletionInProgress(what) => AdminError::ConflictReason {
            reason: "tenant.deletion_in_progress",
            detail: format!("The {what} is being deleted; try again in a moment."),
        },
        RegistryError::Store(s) => s.into(),
    }
}

/// The most calls per minute a tenant admin (API key, setup link) may make
/// by default (`[quotas] outbound_per_minute`, which the check reads) that
/// fetch from or look up outside the gateway on its tenant's behalf:
/// creating or changing a connection with a `metadata_url` or `issuer`,
/// refreshing a connection's metadata, checking a domain's TXT record.
/// Each waits on the network for up to the outbound timeout while it holds
/// one of the admin listener's slots, so the admin API's own per-tenant
/// limit (1,200 a minute by default) would let one tenant keep the
/// gateway fetching for it (`quota.outbound`). The platform admin is not
/// held to it.
pub const MAX_OUTBOUND_PER_MINUTE: u64 = 30;

/// The most passwords per minute a tenant admin may have hashed by default
/// (`[quotas] password_hashes_per_minute`) by creating local accounts with
/// one: each hash (argon2id, 19 MiB) takes one of the replica's
/// `local.max_concurrent_hashes` slots, which every tenant's password
/// sign-ins share (`quota.password_hashes`). The platform admin is not
/// held to it.
pub const MAX_PASSWORD_HASHES_PER_MINUTE: u64 = 60;

/// The most SP key pairs per minute a tenant admin may have generated by
/// default (`[quotas] key_generations_per_minute`), by creating a SAML
/// connection or rotating its SP certificate: an RSA 2048 key takes tens
/// to hundreds of milliseconds of a CPU the replica's sign-ins share
/// (`quota.key_generations`). The platform admin is not held to it.
pub const MAX_KEY_GENERATIONS_PER_MINUTE: u64 = 10;

/// Counts one SP key generation of a tenant admin in its tenant's bucket,
/// or refuses it (429, `quota.key_generations`): see
/// [`MAX_KEY_GENERATIONS_PER_MINUTE`].
pub(crate) async fn charge_key_generation(s: &AppState, admin: &Admin, tenant: &TenantId) -> Result<(), AdminError> {
    let keys = Budget {
        bucket: "admin_key_generations",
        per_minute: s.quotas.key_generations_per_minute,
        reason: "quota.key_generations",
        what: "generate an SP key pair (a SAML connection or an SP certificate rotation)",
    };
    charge(s, admin, tenant, &keys).await
}

/// A per-tenant budget of costly admin calls: its bucket under
/// `t:<tenant>:rl`, its size per minute (the configured quota), its reason
/// code and what it counts.
struct Budget {
    bucket: &'static str,
    per_minute: u64,
    reason: &'static str,
    what: &'static str,
}

/// Counts one outbound call of a tenant admin in its tenant's bucket, or
/// refuses it (429, `quota.outbound`): see [`MAX_OUTBOUND_PER_MINUTE`].
pub(crate) async fn charge_outbound(s: &AppState, admin: &Admin, tenant: &TenantId) -> Result<(), AdminError> {
    let outbound = Budget {
        bucket: "admin_outbound",
        per_minute: s.quotas.outbound_per_minute,
        reason: "quota.outbound",
        what: "fetch or look up (metadata, issuers, DNS)",
    };
    charge(s, admin, tenant, &outbound).await
}

/// Counts one password hash of a tenant admin in its tenant's bucket, or
/// refuses it (429, `quota.password_hashes`): see
/// [`MAX_PASSWORD_HASHES_PER_MINUTE`].
pub(crate) async fn charge_password_hash(s: &AppState, admin: &Admin, tenant: &TenantId) -> Result<(), AdminError> {
    let hashes = Budget {
        bucket: "admin_password_hashes",
        per_minute: s.quotas.password_hashes_per_minute,
        reason: "quota.password_hashes",
        what: "hash a new local account's password",
    };
    charge(s, admin, tenant, &hashes).await
}

async fn charge(s: &AppState, admin: &Admin, tenant: &TenantId, budget: &Budget) -> Result<(), AdminError> {
    if !matches!(admin.principal.kind, auth::PrincipalKind::TenantAdmin { .. }) {
        return Ok(());
    }
    if budget.per_minute == 0 {
        // The operator allows none: nothing to count, and no wait helps, so
        // a conflict with its reason, not a 429 whose `Retry-After` a client
        // would follow for ever.
        tracing::info!(reason = budget.reason, tenant = %tenant, max = 0, "a tenant admin's costly call the quota allows none of: refused");
        return Err(AdminError::ConflictReason {
            reason: budget.reason,
            detail: format!(
                "The gateway's quota lets the tenant's admins {} 0 times a minute: ask the platform's operator.",
                budget.what
            ),
        });
    }
    let key = crate::store::Key::tenant(tenant.as_str(), "rl", budget.bucket);
    let decision = s
        .store
        .rate_limit(&key, budget.per_minute, std::time::Duration::from_secs(60))
        .await?;
    if decision.allowed {
        return Ok(());
    }
    let retry_after_secs = decision.retry_after.as_secs().max(1);
    tracing::info!(reason = budget.reason, tenant = %tenant, max = budget.per_minute, retry_after_secs, "a tenant admin's costly calls over the tenant's budget: refused");
    Err(AdminError::TooMany {
        reason: budget.reason,
        detail: format!(
            "The tenant's admins asked the gateway to {} more than its quota of {} times a minute: try again in {retry_after_secs} s.",
            budget.what, budget.per_minute
        ),
        retry_after_secs,
    })
}

/// Deserializes an admin body; a failure names the path of the field at
/// fault (`serde_path_to_error`), e.g. `scopes[1].name`.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, AdminError> {
    crate::upstream::SetupError::from_json(body).map_err(|e| AdminError::Invalid {
        field: e.field,
        detail: e.message,
    })
}

async fn rotate_keys(admin: Admin, State(s): State<Arc<AppState>>) -> Result<Json<Value>, AdminError> {
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
    // The public keys only: which key ids are published after the rotation.
    let kids: Vec<Value> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|ks| ks.iter().filter_map(|k| k.get("kid").cloned()).collect())
        .unwrap_or_default();
    audit::record(
        &s,
        admin
            .event("signing_keys.rotated", Target::new("signing_keys", "jwks"))
            .after(json!({"kids": kids})),
    )
    .await?;
    Ok(Json(jwks))
}
