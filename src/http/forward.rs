//! `GET /forward-auth`: the authorizer for reverse proxies (nginx
//! `auth_request`, Traefik ForwardAuth, Envoy ext_authz). The decision is
//! [`crate::provider::forward`]; this maps it to HTTP: 200 with the
//! identity headers, 401 + `WWW-Authenticate` (RFC 6750), 403 with
//! `error="insufficient_scope"`. Every answer names its reason code in
//! `X-Portcullis-Reason`, so the proxy can log it or pass it on.

use super::pages;
use super::AppState;
use crate::provider::forward::{DenyStatus, ForwardRequest};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The user's `sub` (the client id for an app token).
pub const SUB_HEADER: &str = "x-portcullis-sub";
/// The user's tenant (empty for an app's own token).
pub const TENANT_HEADER: &str = "x-portcullis-tenant";
/// The token's scopes, space-separated.
pub const SCOPES_HEADER: &str = "x-portcullis-scopes";
/// The app the token was issued to.
pub const CLIENT_HEADER: &str = "x-portcullis-client";
/// The decision's reason code.
pub const REASON_HEADER: &str = "x-portcullis-reason";

/// The query of `/forward-auth`.
#[derive(Debug, Deserialize)]
pub struct ForwardQuery {
    resource: Option<String>,
    scope: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn put(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// `GET /forward-auth?resource=IDENTIFIER&scope=SCOPE` (any method: nginx
/// sends the original request's), for nginx `auth_request` and Traefik
/// ForwardAuth: the original request in `X-Original-URI`/`X-Forwarded-Uri`
/// and `X-Original-Method`/`X-Forwarded-Method`.
pub async fn forward_auth(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ForwardQuery>,
    headers: HeaderMap,
) -> Response {
    let (original_uri, uri_conflict) = either(&headers, "x-original-uri", "x-forwarded-uri");
    let (original_method, method_conflict) = either(&headers, "x-original-method", "x-forwarded-method");
    let req = ForwardRequest {
        token: bearer(&headers),
        resource: q.resource.as_deref(),
        scope: q.scope.as_deref(),
        original_uri,
        original_method,
        conflicting: uri_conflict || method_conflict,
    };
    decide(&state, &req).await
}

/// `/forward-auth/{original path}` for Envoy ext_authz (HTTP service with
/// `path_prefix: /forward-auth`), which appends the original path and query
/// to the prefix and cannot add a query of its own: the resource and scope
/// come from the `X-Portcullis-Resource` and `X-Portcullis-Scope` headers
/// the proxy sets (`headers_to_add`, which overrides a client's), never
/// from the query, which is the client's. Envoy sends the check with the
/// original request's method and sets no `X-Original-Method` or
/// `X-Forwarded-Method`: such a header is the client's, and one naming
/// another method than the check's own is refused (a `DELETE` must not be
/// judged as the `GET` its sender names).
pub async fn forward_auth_prefixed(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let raw = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let original = raw.strip_prefix("/forward-auth").filter(|o| o.starts_with('/'));
    let (named_method, conflicting) = either(&headers, "x-original-method", "x-forwarded-method");
    let conflicting = conflicting || named_method.is_some_and(|named| named != method.as_str());
    let req = ForwardRequest {
        token: bearer(&headers),
        resource: header_str(&headers, "x-portcullis-resource"),
        scope: header_str(&headers, "x-portcullis-scope"),
        original_uri: original,
        original_method: named_method.or(Some(method.as_str())),
        conflicting,
    };
    decide(&state, &req).await
}

/// The original request's part named by header `a` (nginx's `X-Original-*`)
/// or `b` (Traefik's `X-Forwarded-*`), and whether both are present and
/// differ. A proxy sets its own family but may pass the other on from the
/// client (Traefik ForwardAuth copies the client's headers), so a
/// disagreement is refused, never settled by a preference.
fn either<'h>(headers: &'h HeaderMap, a: &str, b: &str) -> (Option<&'h str>, bool) {
    match (header_str(headers, a), header_str(headers, b)) {
        (Some(x), Some(y)) => (Some(x), x != y),
        (x, y) => (x.or(y), false),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

async fn decide(state: &AppState, req: &ForwardRequest<'_>) -> Response {
    let decision = match state.provider.forward_auth(req).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match decision {
        Ok(allowed) => {
            tracing::info!(
                reason = "forward_auth.allowed",
                tenant = allowed.tenant.as_deref().unwrap_or(""),
                client_id = %allowed.client_id,
                "forward auth allowed"
            );
            let mut resp = (StatusCode::OK, pages::no_store()).into_response();
            put(&mut resp, SUB_HEADER, &allowed.sub);
            // Always, empty for an app's own token: a proxy that overrides
            // only the headers an answer has (Envoy) then still overrides
            // a client's own tenant header.
            put(&mut resp, TENANT_HEADER, allowed.tenant.as_deref().unwrap_or(""));
            put(&mut resp, SCOPES_HEADER, &allowed.scopes.join(" "));
            put(&mut resp, CLIENT_HEADER, &allowed.client_id);
            put(&mut resp, REASON_HEADER, "forward_auth.allowed");
            resp
        }
        Err(d) => {
            tracing::info!(reason = d.reason, "forward auth refused");
            let (status, error) = match d.status {
                DenyStatus::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
                DenyStatus::Unauthorized => (StatusCode::UNAUTHORIZED, "invalid_token"),
                DenyStatus::Forbidden => (StatusCode::FORBIDDEN, "insufficient_scope"),
            };
            let description = crate::provider::error::rfc6749_description(&d.description);
            let body = Json(json!({"error": error, "error_description": description, "reason": d.reason}));
            let mut resp = (status, pages::no_store(), body).into_response();
            let clean = |s: &str| s.replace(['"', '\\'], "'");
            let challenge = match d.status {
                DenyStatus::BadRequest => None,
                DenyStatus::Unauthorized if d.no_token => Some("Bearer realm=\"portcullis\"".to_owned()),
                DenyStatus::Unauthorized => Some(format!(
                    "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{description}\""
                )),
                DenyStatus::Forbidden => Some(match &d.scope {
                    Some(s) => format!(
                        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
                        clean(s)
                    ),
                    None => "Bearer realm=\"portcullis\", error=\"insufficient_scope\"".to_owned(),
                }),
            };
            if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
            }
            put(&mut resp, REASON_HEADER, d.reason);
            resp
        }
    }
}
