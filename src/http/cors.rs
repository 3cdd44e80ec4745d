//! Cross-origin reads (CORS) of the endpoints a single-page app calls from
//! its own origin: discovery, JWKS, token, userinfo and revocation. None of
//! them takes an ambient credential (no cookie: the app's code, refresh
//! token or access token travels in the request itself), so any origin may
//! read their answers: `Access-Control-Allow-Origin: *`, never with
//! credentials, and a preflight (`OPTIONS`) is answered 204 with their
//! methods and the `Authorization` and `Content-Type` request headers.
//! Nothing else carries these headers: the admin API, the setup portal,
//! the sign-in pages and introspection (for resource servers, not
//! browsers) stay unreadable from another origin.
//!
//! The headers are added by path at the edge and the shedding layer
//! ([`add_on_spa_path`]), so the answers those layers give themselves (a
//! 429 over the rate limit, a 413, a 408 for a slow body, a shed 503) are
//! readable too: a single-page app learns why it was refused and when to
//! try again, instead of an opaque network error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// How long a browser may keep a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE: u32 = 600;

/// `OPTIONS` on an endpoint for single-page apps: the preflight's answer.
pub async fn preflight() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE));
    resp
}

/// Whether `path` is one of the endpoints for single-page apps (exactly:
/// no other spelling of a path reaches a handler).
pub fn is_spa_path(path: &str) -> bool {
    matches!(
        path,
        "/.well-known/openid-configuration" | "/jwks" | "/token" | "/userinfo" | "/revoke"
    )
}

/// Every answer on an endpoint for single-page apps (its errors, its
/// preflight, its 405 and the edge's own refusals included) may be read by
/// any origin, which may also read why a bearer token was refused
/// (`WWW-Authenticate`) and when to try again (`Retry-After`).
pub fn add_on_spa_path(spa: bool, resp: &mut Response) {
    if !spa {
        return;
    }
    let headers = resp.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate, Retry-After"),
    );
}
