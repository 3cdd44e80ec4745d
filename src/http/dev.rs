//! Development mode only: the built-in test IdP's pages and a demo app that
//! signs in through the real provider and shows the claims it received.

use super::pages::{self, esc};
use super::pairs::SingleQuery;
use super::AppState;
use crate::ids::TenantId;
use crate::provider::grants::TokenRequest;
use crate::upstream::{CallbackParams, Identity};
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

/// The demo app's client id.
pub const DEMO_CLIENT: &str = "demo";
/// The demo tenant's id.
pub const DEMO_TENANT: &str = "demo";

const BANNER: &str = "<p class=\"banner\"><strong>Development identity provider.</strong> \
Anyone can sign in as anyone here. It only exists when Portcullis runs in dev mode; never in production.</p>";

/// The dev-mode routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dev/{tenant}/{connection}/login", get(login_form).post(login_submit))
        .route("/dev/{tenant}/{connection}/callback", get(callback))
        .route("/demo", get(demo_home))
        .route("/demo/login", get(demo_login))
        .route("/demo/callback", get(demo_callback))
}

async fn login_form(Path((tenant, connection)): Path<(String, String)>, SingleQuery(q): SingleQuery) -> Response {
    let state = q.get("state").cloned().unwrap_or_default();
    let email = q
        .get("login_hint")
        .cloned()
        .unwrap_or_else(|| "jane.doe@demo.example".into());
    let body = format!(
        "{BANNER}<h1>Sign in to {t} / {c}</h1><form method=\"post\">\
<input type=\"hidden\" name=\"state\" value=\"{s}\">\
<label>Email <input name=\"email\" type=\"email\" value=\"{e}\" required></label>\
<label>Given name <input name=\"given_name\" value=\"Jane\"></label>\
<label>Family name <input name=\"family_name\" value=\"Doe\"></label>\
<label>Groups (comma separated) <input name=\"groups\" value=\"engineering,admins\"></label>\
<button type=\"submit\">Sign in</button></form>",
        t = esc(&tenant),
        c = esc(&connection),
        s = esc(&state),
        e = esc(&email)
    );
    pages::page(StatusCode::OK, "Dev IdP sign-in", &body, &["'self'"])
}

#[derive(Deserialize)]
struct DevLogin {
    state: String,
    email: String,
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    family_name: String,
    #[serde(default)]
    groups: String,
}

async fn login_submit(
    State(app): State<Arc<AppState>>,
    Path((tenant, connection)): Path<(String, String)>,
    Form(f): Form<DevLogin>,
) -> Response {
    let Ok(t) = TenantId::parse(&tenant) else {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "Unknown tenant",
            "No such tenant.",
            "dev.unknown_tenant",
        );
    };
    let email = f.email.trim().to_ascii_lowercase();
    if !email.contains('@') {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Invalid email",
            "Enter an email address.",
            "dev.bad_email",
        );
    }
    let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let name = [f.given_name.trim(), f.family_name.trim()].join(" ").trim().to_owned();
    let identity = Identity {
        subject: email.clone(),
        email: Some(email),
        email_verified: Some(true),
        name: opt(&name),
        given_name: opt(&f.given_name),
        family_name: opt(&f.family_name),
        groups: f.groups.split(',').filter_map(opt).collect(),
        amr: vec!["pwd".into()],
        ..Identity::default()
    };
    let ticket = match crate::upstream::dev::issue_ticket(&app.upstream, &t, &identity).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(reason = "store.unavailable", error = %e);
            return pages::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Please try again.",
                "store.unavailable",
            );
        }
    };
    let mut url = app.upstream.public(&format!("dev/{tenant}/{connection}/callback"));
    url.query_pairs_mut()
        .append_pair("state", &f.state)
        .append_pair("ticket", &ticket);
    Redirect::to(url.as_str()).into_response()
}

async fn callback(
    State(app): State<Arc<AppState>>,
    session: Session,
    headers: axum::http::HeaderMap,
    fresh: Option<axum::Extension<crate::tenant::FreshTenant>>,
    prefetched: Option<axum::Extension<Arc<crate::broker::PrefetchedCallback>>>,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(query): SingleQuery,
) -> Response {
    let params = CallbackParams {
        query,
        form: BTreeMap::new(),
    };
    let (fresh, prefetched) = (fresh.map(|e| e.0), prefetched.map(|e| e.0));
    super::flows::complete(
        &app,
        &session,
        &headers,
        &tenant,
        &connection,
        params,
        fresh.as_ref(),
        prefetched.as_deref(),
    )
    .await
}

#[derive(Serialize, Deserialize)]
struct DemoLogin {
    verifier: String,
    state: String,
    nonce: String,
}

async fn demo_home(State(app): State<Arc<AppState>>) -> Response {
    let body = format!(
        "{BANNER}<h1>Portcullis demo app</h1><p>This page plays the part of one of your products. \
It signs in through Portcullis's OpenID Connect provider (authorization code + PKCE) and shows the tokens it receives.</p>\
<p><a href=\"{}\"><button>Sign in with the demo tenant</button></a></p>\
<p class=\"muted\">Issuer: <code>{}</code></p>",
        esc(app.upstream.public("demo/login").as_str()),
        esc(&app.provider.iss())
    );
    pages::page(StatusCode::OK, "Demo app", &body, &[])
}

async fn demo_login(State(app): State<Arc<AppState>>, session: Session) -> Response {
    let login = DemoLogin {
        verifier: crate::tokens::random_token(32),
        state: crate::tokens::random_token(16),
        nonce: crate::tokens::random_token(16),
    };
    let challenge = crate::tokens::sha256_base64url(login.verifier.as_bytes());
    let mut url = app.upstream.public("authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", DEMO_CLIENT)
        .append_pair("redirect_uri", app.upstream.public("demo/callback").as_str())
        .append_pair("scope", "openid email profile groups offline_access")
        .append_pair("state", &login.state)
        .append_pair("nonce", &login.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("tenant", DEMO_TENANT);
    if let Err(e) = session.insert("demo_login", &login).await {
        return super::flows::session_failed(e);
    }
    Redirect::to(url.as_str()).into_response()
}

async fn demo_callback(State(app): State<Arc<AppState>>, session: Session, SingleQuery(q): SingleQuery) -> Response {
    let fail = |m: &str, r: &str| pages::error_page(StatusCode::BAD_REQUEST, "Demo sign-in failed", m, r);
    let Ok(Some(login)) = session.remove::<DemoLogin>("demo_login").await else {
        return fail(
            "No sign-in was started from the demo app in this browser.",
            "demo.no_login",
        );
    };
    if q.get("state") != Some(&login.state) {
        return fail("The state does not match.", "demo.state_mismatch");
    }
    if let Some(e) = q.get("error") {
        return fail(
            &format!("{e}: {}", q.get("error_description").cloned().unwrap_or_default()),
            "demo.error",
        );
    }
    let Ok(Some(client)) = app.provider.clients.get(DEMO_CLIENT).await else {
        return fail("The demo client is not registered.", "demo.no_client");
    };
    let req = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: q.get("code").cloned(),
        redirect_uri: Some(app.upstream.public("demo/callback").to_string()),
        code_verifier: Some(login.verifier),
        ..TokenRequest::default()
    };
    let tokens = match app.provider.token(&client, &req).await {
        Ok(t) => t,
        Err(e) => return fail(&e.description, e.reason),
    };
    let id_token = tokens.id_token.clone().unwrap_or_default();
    let id_claims: serde_json::Value = match app.provider.keys.verify(&id_token, "JWT", &app.provider.iss()).await {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string(), "demo.bad_id_token"),
    };
    if id_claims.get("nonce").and_then(|n| n.as_str()) != Some(login.nonce.as_str()) {
        return fail("The nonce does not match.", "demo.nonce_mismatch");
    }
    let at_claims: serde_json::Value = app
        .provider
        .keys
        .verify(&tokens.access_token, "at+jwt", &app.provider.iss())
        .await
        .unwrap_or_default();
    let pretty = |v: &serde_json::Value| esc(&serde_json::to_string_pretty(v).unwrap_or_default());
    let mut logout = app.upstream.public("logout");
    logout
        .query_pairs_mut()
        .append_pair("id_token_hint", &id_token)
        .append_pair("post_logout_redirect_uri", app.upstream.public("demo").as_str());
    let body = format!(
        "{BANNER}<h1>Signed in</h1><h2>ID token claims</h2><pre>{}</pre><h2>Access token claims (RFC 9068)</h2><pre>{}</pre>\
<p>Refresh token issued: {}</p><p><a href=\"{}\">Sign out</a> · <a href=\"{}\">Home</a></p>",
        pretty(&id_claims),
        pretty(&at_claims),
        tokens.refresh_token.is_some(),
        esc(logout.as_str()),
        esc(app.upstream.public("demo").as_str()),
    );
    pages::page(StatusCode::OK, "Demo app: signed in", &body, &[])
}
