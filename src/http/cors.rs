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

/// Every answer of an endpoint for single-page apps (its errors, its
/// preflight and its 405 included) may be read by any origin, which may
/// also read why a bearer token was refused (`WWW-Authenticate`).
pub async fn any_origin(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate"),
    );
    resp
}
