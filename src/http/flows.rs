//! Browser flows: turning broker outcomes into responses, the IdP callbacks
//! (OIDC redirect, SAML ACS), SAML SP metadata, and the choosers.

use super::pages::{self, esc};
use super::AppState;
use crate::broker::session::{remember_login, BrowserLogins, BrowserSso, LOGINS_FIELD, SESSION_FIELD};
use crate::broker::Outcome;
use crate::ids::{ConnectionId, TenantId};
use crate::upstream::{CallbackParams, ConnectionKind, UpstreamRedirect};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

/// The browser's SSO map (empty when there is no session or it is unreadable).
pub async fn load_sso(session: &Session) -> BrowserSso {
    session
        .get::<BrowserSso>(SESSION_FIELD)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Maps a broker outcome to a response.
pub fn respond(state: &AppState, outcome: Outcome) -> Response {
    match outcome {
        Outcome::App(url) => Redirect::to(url.as_str()).into_response(),
        Outcome::Upstream {
            redirect: UpstreamRedirect::Redirect(url),
            ..
        } => Redirect::to(url.as_str()).into_response(),
        Outcome::Upstream {
            redirect: UpstreamRedirect::PostForm { action, fields },
            ..
        } => pages::auto_post(action.as_str(), &fields),
        Outcome::Page {
            status,
            title,
            message,
            reason,
        } => pages::error_page(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &title,
            &message,
            reason,
        ),
        Outcome::ChooseTenant { params, error } => choose_tenant(state, &params, error.as_deref()),
        Outcome::ChooseConnection {
            params,
            tenant,
            connections,
        } => {
            let links: String = connections
                .iter()
                .map(|c| {
                    let mut p = params.clone();
                    p.insert("tenant".into(), tenant.id.to_string());
                    p.insert("connection".into(), c.to_string());
                    let mut url = state.upstream.public("authorize");
                    url.query_pairs_mut().extend_pairs(p.iter());
                    format!("<li><a href=\"{}\">{}</a></li>", esc(url.as_str()), esc(c.as_str()))
                })
                .collect();
            let body = format!(
                "<h1>Sign in to {}</h1><p>Choose how to sign in:</p><ul>{links}</ul>",
                esc(&tenant.name)
            );
            (pages::no_store(), Html(pages::layout("Choose a sign-in method", &body))).into_response()
        }
    }
}

fn choose_tenant(state: &AppState, params: &BTreeMap<String, String>, error: Option<&str>) -> Response {
    let inputs: String = params
        .iter()
        .filter(|(k, _)| k.as_str() != "login_hint")
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    let err = error
        .map(|e| format!("<p class=\"banner\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in with your organization</h1>{err}<form method=\"get\" action=\"{}\">{inputs}\
<label for=\"e\">Work email</label><input id=\"e\" name=\"login_hint\" type=\"email\" autocomplete=\"username\" required autofocus>\
<button type=\"submit\">Continue</button></form>",
        esc(state.upstream.public("authorize").as_str())
    );
    (pages::no_store(), Html(pages::layout("Sign in", &body))).into_response()
}

/// Completes a login at a callback and keeps the browser's session in step:
/// the used login binding is dropped, and a new sign-in gets a fresh session id.
pub async fn complete(
    state: &AppState,
    session: &Session,
    tenant: &str,
    connection: &str,
    params: CallbackParams,
) -> Response {
    let mut sso = load_sso(session).await;
    let mut logins = load_logins(session).await;
    let (sso_before, logins_before) = (sso.clone(), logins.len());
    let outcome = state
        .broker
        .complete(tenant, connection, params, &mut sso, &mut logins)
        .await;
    if sso != sso_before {
        // A new sign-in: a fresh session id, so a planted cookie cannot be fixated.
        let _ = session.cycle_id().await;
        if let Err(e) = session.insert(SESSION_FIELD, &sso).await {
            tracing::error!(reason = "session.save_failed", error = %e);
        }
    }
    if logins.len() != logins_before {
        let _ = session.insert(LOGINS_FIELD, &logins).await;
    }
    respond(state, outcome)
}

/// The logins this browser started and has not finished.
pub async fn load_logins(session: &Session) -> BrowserLogins {
    session
        .get::<BrowserLogins>(LOGINS_FIELD)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Remembers the browser binding of a login that is being sent upstream.
pub async fn remember_binding(session: &Session, outcome: &Outcome) {
    if let Outcome::Upstream {
        binding: Some((id, secret)),
        ..
    } = outcome
    {
        let mut logins = load_logins(session).await;
        remember_login(&mut logins, id.clone(), secret.clone());
        if let Err(e) = session.insert(LOGINS_FIELD, &logins).await {
            tracing::error!(reason = "session.save_failed", error = %e);
        }
    }
}

/// `GET /oidc/{tenant}/{connection}/callback`
pub async fn oidc_callback(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let Ok(query) = super::oauth::single_valued(query) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "A parameter appears more than once.",
            "callback.duplicate_parameter",
        );
    };
    let params = CallbackParams {
        query,
        form: BTreeMap::new(),
    };
    complete(&state, &session, &tenant, &connection, params).await
}

/// `POST /saml/{tenant}/{connection}/acs` (HTTP-POST binding). Reached by a
/// cross-site form post, so it never depends on the SameSite=Lax cookie.
pub async fn saml_acs(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Ok(form) = super::oauth::single_valued(form) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "A form field appears more than once.",
            "saml.duplicate_field",
        );
    };
    let params = CallbackParams {
        query: BTreeMap::new(),
        form,
    };
    complete(&state, &session, &tenant, &connection, params).await
}

/// `GET /saml/{tenant}/{connection}/metadata`: this connection's SP metadata.
pub async fn saml_metadata(
    State(state): State<Arc<AppState>>,
    Path((tenant, connection)): Path<(String, String)>,
) -> Response {
    let (Ok(t), Ok(c)) = (TenantId::parse(&tenant), ConnectionId::parse(&connection)) else {
        return not_found().await;
    };
    let conn = match state.tenants.connection(&t, &c).await {
        Ok(Some(conn)) => conn,
        Ok(None) => return not_found().await,
        Err(e) => {
            tracing::error!(reason = "store.unavailable", error = %e);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let ConnectionKind::Saml(cfg) = &conn.kind else {
        return not_found().await;
    };
    match crate::upstream::saml::sp_metadata_xml(&conn, cfg, &state.upstream) {
        Ok(xml) => ([(header::CONTENT_TYPE, "application/samlmetadata+xml")], xml).into_response(),
        Err(e) => {
            tracing::error!(reason = e.code, detail = %e.detail, "SP metadata failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Anything else: a plain 404.
pub async fn not_found() -> Response {
    pages::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
        "http.not_found",
    )
}
