//! Who calls the admin API, and what each caller may reach.
//!
//! [`authenticate`] runs on every admin route: it turns the bearer credential
//! into a [`Principal`] (the platform token, a platform API key, a tenant API
//! key) or answers 401, and gives the request an id. Every route then sits in
//! exactly one of two groups ([`guard`]):
//!
//! * the **platform** group (tenant list and creation, apps, resource
//!   servers, signing keys, API keys, the global audit log): platform
//!   principals only; a tenant principal gets 404 as if the route did not
//!   exist;
//! * the **tenant** group (everything under `/tenants/{id}/...`): platform
//!   principals, and a tenant principal whose tenant is the `{id}` path
//!   segment; any other tenant id answers 404.
//!
//! A refused attempt is logged (`reason = "admin.out_of_scope"`) with the
//! principal. The check belongs to the group, not to handlers, so a route
//! mounted in a group cannot forget it; and the [`Admin`] extractor refuses
//! (500) a request that went through neither group, so a route mounted
//! outside both fails closed. Read-only principals get 403 on anything but
//! GET/HEAD, after the scope check (a write to another tenant is still 404).

use super::AdminError;
use crate::audit::{Actor, AuditEvent, Target};
use crate::http::AppState;
use crate::ids::TenantId;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

/// How a tenant admin came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A tenant API key, by id.
    ApiKey(String),
    /// A setup link (made and checked by the setup portal), by id.
    SetupLink(String),
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The platform admin token: everything.
    PlatformToken,
    /// A named platform API key, by id: every tenant, within its scopes.
    PlatformKey(String),
    /// A tenant admin: that tenant only.
    TenantAdmin {
        /// The tenant.
        tenant: TenantId,
        /// Which credential.
        via: Via,
    },
}

/// What a principal may do within its reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET and HEAD only.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

/// An authenticated caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub kind: PrincipalKind,
    /// Read-only or read-write.
    pub access: Access,
}

impl Principal {
    /// The platform admin token.
    pub fn platform_token() -> Self {
        Self {
            kind: PrincipalKind::PlatformToken,
            access: Access::ReadWrite,
        }
    }

    /// A tenant admin who opened setup link `link_id` of `tenant` (for the
    /// setup portal, which checks the link itself before calling this).
    pub fn setup_link(tenant: TenantId, link_id: impl Into<String>) -> Self {
        Self {
            kind: PrincipalKind::TenantAdmin {
                tenant,
                via: Via::SetupLink(link_id.into()),
            },
            access: Access::ReadWrite,
        }
    }

    /// The tenant this principal is limited to; `None` for platform principals.
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.kind {
            PrincipalKind::TenantAdmin { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The principal as the audit log names it.
    pub fn actor(&self) -> Actor {
        match &self.kind {
            PrincipalKind::PlatformToken => Actor::PlatformToken,
            PrincipalKind::PlatformKey(id) => Actor::PlatformKey(id.clone()),
            PrincipalKind::TenantAdmin {
                via: Via::ApiKey(id), ..
            } => Actor::TenantKey(id.clone()),
            PrincipalKind::TenantAdmin {
                via: Via::SetupLink(id),
                ..
            } => Actor::SetupLink(id.clone()),
        }
    }
}

/// The id of an admin request: the caller's `X-Request-Id` when it is a
/// short plain token, otherwise a random one; echoed in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Set by [`guard`]'s group layers: the scope check ran for this request.
#[derive(Debug, Clone, Copy)]
struct ScopeChecked;

/// The caller of an admin handler: the principal, checked against the
/// route's group, and the request id. Every admin handler takes it first.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who is calling.
    pub principal: Principal,
    /// The request's id (for the audit log).
    pub request_id: String,
}

impl Admin {
    /// A caller outside the admin router (the setup portal, with
    /// [`Principal::setup_link`]), for recording its changes.
    pub fn new(principal: Principal, request_id: impl Into<String>) -> Self {
        Self {
            principal,
            request_id: request_id.into(),
        }
    }

    /// An audit event by this caller, doing `action` to `target`.
    pub fn event(&self, action: &str, target: Target) -> AuditEvent {
        AuditEvent::new(&self.principal.actor(), action, target, &self.request_id)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AdminError> {
        let principal = parts.extensions.get::<Principal>().cloned();
        let checked = parts.extensions.get::<ScopeChecked>().is_some();
        let request_id = parts.extensions.get::<RequestId>().cloned();
        match (principal, checked, request_id) {
            (Some(principal), true, Some(RequestId(request_id))) => Ok(Admin { principal, request_id }),
            // A route mounted outside the platform and tenant groups: refuse
            // rather than serve it unchecked.
            _ => Err(AdminError::Internal(format!(
                "admin route {} is outside the platform and tenant groups",
                parts.uri.path()
            ))),
        }
    }
}

/// Puts `platform` and `tenant` routes behind their scope checks and both
/// behind [`authenticate`]; the admin router.
pub fn guard(
    platform: Router<Arc<AppState>>,
    tenant: Router<Arc<AppState>>,
    state: &Arc<AppState>,
) -> Router<Arc<AppState>> {
    platform
        .route_layer(from_fn(platform_only))
        .merge(tenant.route_layer(from_fn(tenant_only)))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
        .fallback(not_found)
}

async fn not_found() -> AdminError {
    AdminError::NotFound("There is no such admin route.".into())
}

/// The most characters of a caller's request id that are kept.
const MAX_REQUEST_ID: usize = 64;

fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| crate::tokens::random_token(12))
}

/// Authenticates the bearer credential into a [`Principal`] (401 otherwise)
/// and gives the request its [`RequestId`].
async fn authenticate(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let principal = match presented {
        None => Err(AdminError::Unauthorized("A bearer token is required.")),
        Some(t) => principal_for(&s, &t).await,
    };
    let mut resp = match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            req.extensions_mut().insert(RequestId(id.clone()));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The principal a bearer credential stands for. Without a platform token
/// the admin API is off, API keys included (fail closed: unsetting the token
/// turns every credential off).
async fn principal_for(s: &AppState, token: &str) -> Result<Principal, AdminError> {
    let Some(expected) = &s.admin_token else {
        return Err(AdminError::Unauthorized(
            "The admin API is disabled: set PORTCULLIS_ADMIN_TOKEN.",
        ));
    };
    if expected.matches(token) {
        return Ok(Principal::platform_token());
    }
    match super::api_keys::authenticate(s, token).await? {
        Some(p) => Ok(p),
        None => {
            tracing::info!(reason = "admin.bad_credential", "admin bearer credential refused");
            Err(AdminError::Unauthorized("The bearer token is not valid."))
        }
    }
}

/// Logs and answers an attempt outside the principal's reach: 404, the same
/// answer as a route or object that does not exist.
fn out_of_scope(p: &Principal, req: &Request, asked: Option<&str>) -> Response {
    tracing::warn!(
        reason = "admin.out_of_scope",
        principal = %p.actor(),
        tenant = p.tenant().map(|t| t.as_str()).unwrap_or(""),
        // Only a well-formed tenant id: the segment is the caller's input.
        asked_tenant = asked.filter(|a| TenantId::parse(a).is_ok()).unwrap_or(""),
        method = %req.method(),
        route = route_of(req),
        "admin request outside the principal's tenant"
    );
    AdminError::NotFound("There is no such resource.".into()).into_response()
}

/// After the scope check: read-only principals may only read.
async fn within_access(p: &Principal, mut req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !read && p.access == Access::ReadOnly {
        tracing::info!(reason = "admin.read_only", principal = %p.actor(), method = %req.method(), route = route_of(&req));
        return AdminError::Forbidden("This API key is read-only.").into_response();
    }
    req.extensions_mut().insert(ScopeChecked);
    let mut resp = next.run(req).await;
    // The edge charges the tenant's admin budget for such answers only.
    resp.extensions_mut().insert(crate::http::edge::InScope);
    resp
}

/// The route a request matched, as its template (`/admin/v1/tenants/{id}/users/{user}`),
/// never its path: a path can hold an email (local users' routes) or other
/// personal data, which the scope checks' log lines must not carry.
fn route_of(req: &Request) -> &str {
    req.extensions().get::<MatchedPath>().map_or("-", MatchedPath::as_str)
}

fn principal_of(req: &Request) -> Option<Principal> {
    req.extensions().get::<Principal>().cloned()
}

fn no_principal() -> Response {
    AdminError::Internal("admin route reached without a principal".into()).into_response()
}

/// The platform group: platform principals only.
async fn platform_only(req: Request, next: Next) -> Response {
    let Some(p) = principal_of(&req) else {
        return no_principal();
    };
    if p.tenant().is_some() {
        return out_of_scope(&p, &req, None);
    }
    within_access(&p, req, next).await
}

/// The tenant group: platform principals, or the tenant named by the `{id}`
/// path segment. A route of this group without `{id}` serves no tenant
/// principal.
async fn tenant_only(params: RawPathParams, req: Request, next: Next) -> Response {
    let Some(p) = principal_of(&req) else {
        return no_principal();
    };
    if let Some(own) = p.tenant() {
        let asked = params.iter().find(|(name, _)| *name == "id").map(|(_, v)| v);
        if asked != Some(own.as_str()) {
            return out_of_scope(&p, &req, asked);
        }
    }
    within_access(&p, req, next).await
}
