//! Reading the audit log: `GET /audit` (the global log: platform-wide
//! changes) and `GET /tenants/{id}/audit` (one tenant's changes), newest
//! first, `limit` (1 to 200, default 50) and an opaque `cursor` taken from
//! the previous page's `next_cursor`. A tenant's log shows nothing older
//! than the tenant as it is now: events of a deleted tenant of the same id
//! whose log was not purged stay hidden.

use super::auth::Admin;
use super::AdminError;
use crate::audit::{Audit, AuditError};
use crate::http::AppState;
use crate::ids::TenantId;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest page, and the default.
const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 50;

impl AppState {
    /// The audit log, as configured (`[audit]`).
    pub fn audit(&self) -> Audit {
        self.provider.audit.clone()
    }
}

/// The global log route (platform group).
pub fn platform_routes() -> Router<Arc<AppState>> {
    Router::new().route("/audit", get(global_log))
}

/// The tenant log route (tenant group).
pub fn tenant_routes() -> Router<Arc<AppState>> {
    Router::new().route("/tenants/{id}/audit", get(tenant_log))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

type QueryResult = Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>;

/// A page of the global log (`None`), or of a tenant's log since the
/// tenant's creation.
async fn page(
    s: &AppState,
    tenant: Option<(&TenantId, DateTime<Utc>)>,
    q: QueryResult,
) -> Result<Json<Value>, AdminError> {
    let Query(q) = q.map_err(|e| AdminError::field("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(AdminError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}."),
        ));
    }
    let log = s.audit();
    let page = match tenant {
        None => log.list(None, q.cursor.as_deref(), limit).await,
        Some((id, since)) => log.list_since(id, since, q.cursor.as_deref(), limit).await,
    };
    let page = page.map_err(|e| match e {
        AuditError::Cursor(_) => AdminError::field("cursor", "is not a cursor this log gave out."),
        AuditError::Store(e) => e.into(),
    })?;
    Ok(Json(json!({"events": page.events, "next_cursor": page.next_cursor})))
}

async fn global_log(_: Admin, State(s): State<Arc<AppState>>, q: QueryResult) -> Result<Json<Value>, AdminError> {
    page(&s, None, q).await
}

async fn tenant_log(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: QueryResult,
) -> Result<Json<Value>, AdminError> {
    let tenant = super::tenant_record(&s, &id).await?;
    page(&s, Some((&tenant.id, tenant.created_at)), q).await
}

/// The most characters of a caller's request id that are kept.
const MAX_REQUEST_ID: usize = 64;

/// Gives every request an id: the caller's `X-Request-Id` when it is a short
/// plain token (set by the edge layer in front, or the client), otherwise a
/// random one. It is put back on the request (the admin API's audit events
/// read it there), serves as the request id of every security event recorded
/// while the request is handled ([`crate::audit::in_request`]) and is
/// returned in the answer's `x-request-id`.
pub async fn request_scope(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| crate::tokens::random_token(12));
    let value = axum::http::HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        req.headers_mut().insert("x-request-id", v.clone());
    }
    let mut resp = crate::audit::in_request(id, next.run(req)).await;
    if let Some(v) = value {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    resp
}

/// Records `event` in the audit log; a store failure is a 500 (the change is
/// made, and the process log already holds the event).
pub async fn record(s: &AppState, event: crate::audit::AuditEvent) -> Result<(), AdminError> {
    s.audit().record(event).await.map_err(AdminError::from)
}
