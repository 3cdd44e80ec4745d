//! Server-rendered pages for people in a browser: errors, choosers, the
//! auto-submitted SAML POST form. Every dynamic value is HTML-escaped.
//!
//! Every page carries a Content-Security-Policy: nothing loads from anywhere
//! (`default-src 'none'`), the one stylesheet and the one script are allowed by
//! their SHA-256 hash, no page can be framed, and forms may only go where the
//! page needs them to (`form-action`). The headers every response carries
//! (nosniff, Referrer-Policy, HSTS) are set by [`security_headers`].

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use sha2::Digest;

pub use crate::markup::escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2328}\
h1{font-size:1.4rem}code,pre{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}pre{padding:1rem;overflow:auto}\
.muted{color:#656d76;font-size:.9rem}input{font-size:1rem;padding:.4rem;margin:.2rem 0;width:100%;box-sizing:border-box}\
button{font-size:1rem;padding:.5rem 1.2rem;margin-top:.6rem}.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem 1rem;border-radius:6px}";

/// The auto-post page's only script, allowed by its hash.
const AUTO_POST_SCRIPT: &str = "document.getElementById('f').submit()";

/// The policy of a response that is not a page (JSON, redirects, metadata):
/// it may load, run, frame and submit nothing.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `'sha256-…'` of `source`, as CSP hash sources are written.
fn hash_source(source: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(source.as_bytes()))
    )
}

/// The Content-Security-Policy of a page whose forms may submit to
/// `form_action` (CSP source expressions), running `script` if given.
pub fn csp(form_action: &[&str], script: Option<&str>) -> String {
    let form_action = if form_action.is_empty() {
        "'none'".to_owned()
    } else {
        form_action.join(" ")
    };
    let script = script
        .map(|s| format!("; script-src {}", hash_source(s)))
        .unwrap_or_default();
    format!(
        "default-src 'none'; style-src {}{script}; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
        hash_source(STYLE)
    )
}

/// The origin of `url` as a CSP source (`scheme://host[:port]`), or `None`
/// when it has none (opaque).
pub fn origin_source(url: &url::Url) -> Option<String> {
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// A whole page. `body` must already be escaped.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\
<style>{STYLE}</style></head><body>{body}</body></html>",
        t = esc(title)
    )
}

/// A page: `body` (already escaped) in the layout, not cached, with a CSP
/// letting its forms submit to `form_action` only.
pub fn page(status: StatusCode, title: &str, body: &str, form_action: &[&str]) -> Response {
    html_with_csp(status, layout(title, body), &csp(form_action, None))
}

fn html_with_csp(status: StatusCode, html: String, policy: &str) -> Response {
    let mut resp = (status, no_store(), Html(html)).into_response();
    match HeaderValue::from_str(policy) {
        Ok(v) => {
            resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
        Err(_) => {
            // Unreachable in practice (the policy is built from URLs); the
            // default policy the layer adds is stricter.
            tracing::error!(reason = "http.bad_csp", "could not encode a Content-Security-Policy");
        }
    }
    resp
}

/// A readable error page with a reason code the person can quote to support.
pub fn error_page(status: StatusCode, title: &str, message: &str, reason: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p class=\"muted\">Reason code: <code>{}</code></p>",
        esc(title),
        esc(message),
        esc(reason)
    );
    page(status, title, &body, &[])
}

/// A page that posts `fields` to `action` as soon as it loads (SAML HTTP-POST
/// binding), with a button for browsers without JavaScript. Its CSP allows
/// its one script (by hash) and a form submission to `action` only.
pub fn auto_post(action: &url::Url, fields: &[(String, String)]) -> Response {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    let body = format!(
        "<form method=\"post\" action=\"{}\" id=\"f\">{inputs}<noscript><p>Press Continue to go on signing in.</p></noscript>\
<button type=\"submit\">Continue</button></form><script>{AUTO_POST_SCRIPT}</script>",
        esc(action.as_str())
    );
    // The exact URL, not its origin: the form may go nowhere else.
    let target = action.as_str().replace(';', "%3B").replace(',', "%2C");
    html_with_csp(
        StatusCode::OK,
        layout("Signing in…", &body),
        &csp(&[&target], Some(AUTO_POST_SCRIPT)),
    )
}

/// `Cache-Control: no-store` (and `Pragma`), for every page that carries state.
pub fn no_store() -> [(HeaderName, &'static str); 2] {
    [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")]
}

/// The headers every response carries: `X-Content-Type-Options: nosniff`,
/// `Referrer-Policy: no-referrer` (codes and handles travel in URLs), HSTS
/// when the public URL is https, and [`DEFAULT_CSP`] when the handler set no
/// policy of its own.
pub fn security_headers(resp: &mut Response, https: bool) {
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DEFAULT_CSP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auto_post_policy_allows_exactly_its_script_and_its_target() {
        let action = url::Url::parse("https://idp.example/sso;x=1").unwrap();
        let resp = auto_post(&action, &[("SAMLRequest".into(), "x".into())]);
        let policy = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            policy.contains("form-action https://idp.example/sso%3Bx=1;"),
            "{policy}"
        );
        // The hash of the script on the page, computed independently.
        let expected = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(b"document.getElementById('f').submit()"));
        assert!(policy.contains(&format!("script-src 'sha256-{expected}'")), "{policy}");
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
    }
}
