//! Server-rendered pages for people in a browser: errors, choosers, the
//! auto-submitted SAML POST form. Every dynamic value is HTML-escaped.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub use crate::markup::escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2328}\
h1{font-size:1.4rem}code,pre{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}pre{padding:1rem;overflow:auto}\
.muted{color:#656d76;font-size:.9rem}input{font-size:1rem;padding:.4rem;margin:.2rem 0;width:100%;box-sizing:border-box}\
button{font-size:1rem;padding:.5rem 1.2rem;margin-top:.6rem}.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem 1rem;border-radius:6px}";

/// A whole page. `body` must already be escaped.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\
<style>{STYLE}</style></head><body>{body}</body></html>",
        t = esc(title)
    )
}

/// A readable error page with a reason code the person can quote to support.
pub fn error_page(status: StatusCode, title: &str, message: &str, reason: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p class=\"muted\">Reason code: <code>{}</code></p>",
        esc(title),
        esc(message),
        esc(reason)
    );
    (status, no_store(), Html(layout(title, &body))).into_response()
}

/// A page that posts `fields` to `action` as soon as it loads (SAML HTTP-POST
/// binding), with a button for browsers without JavaScript.
pub fn auto_post(action: &str, fields: &[(String, String)]) -> Response {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    let body = format!(
        "<form method=\"post\" action=\"{}\" id=\"f\">{inputs}<noscript><p>Press Continue to go on signing in.</p></noscript>\
<button type=\"submit\">Continue</button></form><script>document.getElementById('f').submit()</script>",
        esc(action)
    );
    (StatusCode::OK, no_store(), Html(layout("Signing in…", &body))).into_response()
}

/// `Cache-Control: no-store` (and `Pragma`), for every page that carries state.
pub fn no_store() -> [(axum::http::HeaderName, &'static str); 2] {
    [
        (axum::http::header::CACHE_CONTROL, "no-store"),
        (axum::http::header::PRAGMA, "no-cache"),
    ]
}
