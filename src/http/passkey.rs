//! The passkey pages (WebAuthn, `[passkeys] enabled`):
//!
//! - `/mfa/{tenant}/{connection}/passkey`: the passkey step of a waiting
//!   sign-in (use a passkey as the second factor, or register one at the
//!   enrolment);
//! - `/mfa/{tenant}/passkeys`: a signed-in user lists, registers (named) and
//!   removes their passkeys;
//! - `/local/{tenant}/{connection}/passkey`: the passwordless sign-in of a
//!   local connection ("Sign in with a passkey", a discoverable credential,
//!   user verification required);
//! - `/mfa/passkey.js`: the one script these pages load.
//!
//! Every page is a form with its single-use CSRF token, the ceremony's
//! one-time handle, the WebAuthn options in a `data-` attribute and a hidden
//! `credential` field the script fills with the browser's answer before it
//! submits the form; nothing is fetched. The script is a static file of the
//! gateway, and only these pages allow it (`script-src 'self'`): every
//! other page keeps `default-src 'none'` without scripts, and the password
//! and code forms work without JavaScript.

use super::flows::{self, check_csrf, issue_csrf, keep_session, Csrf, CSRF_FIELD};
use super::pages;
use super::pairs::{SingleForm, SingleQuery};
use super::AppState;
use crate::broker::passkey::{Listed, Manage, Mode, PasskeyAnswer, PasskeyPage};
use crate::broker::second_factor::MFA_SESSION_FIELD;
use crate::ids::{ConnectionId, TenantId};
use crate::mfa::passkey::{PasskeyError, Purpose};
use crate::upstream::{ConnectionKind, ConnectionStatus};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

/// The CSRF purpose of the passkey forms.
const PASSKEY_CSRF: &str = "passkey";

/// The browser-session field holding the secret self-service and
/// passwordless ceremonies are bound to (the second factor uses the waiting
/// sign-in's own secret).
pub const PASSKEY_SESSION_FIELD: &str = "passkey_browser";

/// The script of the passkey pages.
const SCRIPT: &str = include_str!("../../templates/mfa/passkey.js");

/// The passkey routes (inside the browser-session layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/mfa/passkey.js", get(script))
        .route("/mfa/{tenant}/{connection}/passkey", get(mfa_show).post(mfa_submit))
        // A static segment: matched before the `{connection}` route.
        .route("/mfa/{tenant}/passkeys", get(manage_show).post(manage_submit))
        .route(
            "/local/{tenant}/{connection}/passkey",
            get(passwordless_show).post(passwordless_submit),
        )
}

/// `GET /mfa/passkey.js`
async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// What the template shows.
struct View {
    css: String,
    script: String,
    tenant_name: String,
    who: String,
    title: &'static str,
    intro: &'static str,
    button: &'static str,
    /// `create` or `get` (the script's ceremony).
    ceremony_kind: &'static str,
    options: String,
    ceremony: String,
    csrf: String,
    action: String,
    hidden: Vec<(&'static str, String)>,
    ask_name: bool,
    error: Option<&'static str>,
    message: &'static str,
    notice: &'static str,
    passkeys: Vec<Listed>,
    manage: bool,
    links: Vec<(String, &'static str)>,
}

#[derive(Template)]
#[template(path = "mfa/passkey.html")]
struct PasskeyTemplate<'a> {
    v: &'a View,
}

/// What a refusal means to the person.
pub fn message(reason: Option<&str>) -> &'static str {
    match reason {
        None => "",
        Some("passkey.unknown_challenge") => "This passkey request has expired or was already used. Try again.",
        Some("passkey.missing_credential") => {
            "No passkey was used. Passkeys need JavaScript in this browser; you can also use another way to sign in."
        }
        Some("passkey.unknown_credential") => "This passkey is not registered for this account here.",
        Some("passkey.user_not_verified") => "Your device did not verify you (PIN or biometrics). Try again.",
        Some("passkey.throttled") => "Too many attempts. Wait 15 minutes, then try again.",
        Some("passkey.already_registered") => "This passkey is already registered.",
        Some("passkey.too_many") => "You have the most passkeys allowed. Remove one first.",
        Some("passkey.not_found") => "That passkey no longer exists.",
        Some("passkey.possible_clone") => {
            "This passkey reported a use count lower than before, which can mean it was copied. Contact your administrator."
        }
        Some(_) => "The passkey did not work. Try again.",
    }
}

fn notice_text(n: Option<&str>) -> &'static str {
    match n {
        Some("passkey.registered") => "The passkey was added.",
        Some("passkey.removed") => "The passkey was removed.",
        _ => "",
    }
}

/// The policy of a passkey page: the portal's stylesheet and our script (by
/// exact URL); forms to our own origin and, through the redirects that
/// follow, the app's.
fn csp(state: &AppState, app: Option<&str>) -> String {
    let css = state.upstream.public("portal/portal.css");
    let js = state.upstream.public("mfa/passkey.js");
    let app = app.filter(|a| !a.is_empty()).and_then(|a| url::Url::parse(a).ok());
    let form_action = flows::own_form_action(state, &app.iter().collect::<Vec<_>>());
    format!(
        "default-src 'none'; style-src {}; script-src {}; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        css.as_str().replace(';', "%3B"),
        js.as_str().replace(';', "%3B"),
        form_action.join(" ").replace(';', "%3B")
    )
}

fn html(state: &AppState, status: StatusCode, v: &View, app: Option<&str>) -> Response {
    let body = match (PasskeyTemplate { v }).render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(reason = "passkey.render_failed", error = %e);
            return pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown. Please try again.",
                "passkey.render_failed",
            );
        }
    };
    let mut resp = (status, pages::no_store(), Html(body)).into_response();
    if let Ok(h) = HeaderValue::from_str(&csp(state, app)) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, h);
    }
    resp
}

async fn render(state: &AppState, session: &Session, p: &PasskeyPage) -> Response {
    let csrf = match issue_csrf(session, PASSKEY_CSRF).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let manage = p.connection.is_none();
    let (action, hidden, links) = match &p.connection {
        Some(c) => {
            let base = format!("mfa/{}/{c}", p.tenant);
            let mut back = state.upstream.public(&base);
            back.query_pairs_mut().append_pair("handle", &p.mfa_handle);
            (
                state.upstream.public(&format!("{base}/passkey")).to_string(),
                vec![("handle", p.mfa_handle.clone())],
                vec![(back.to_string(), "Use another way")],
            )
        }
        None => (
            state.upstream.public(&format!("mfa/{}/passkeys", p.tenant)).to_string(),
            vec![("action", "register".to_owned())],
            vec![(
                state.upstream.public(&format!("mfa/{}/enroll", p.tenant)).to_string(),
                "Authenticator app",
            )],
        ),
    };
    let (title, intro, button, kind) = match (p.mode, manage) {
        (Mode::Register, true) => (
            "Passkeys",
            "A passkey signs you in with your device's screen lock or a security key, without a password or a code.",
            "Add a passkey",
            "create",
        ),
        (Mode::Register, false) => (
            "Add a passkey",
            "Register a passkey (your device's screen lock or a security key) as your second step.",
            "Add a passkey",
            "create",
        ),
        (Mode::Authenticate, _) => (
            "Use a passkey",
            "Confirm with your passkey (your device's screen lock or a security key).",
            "Use a passkey",
            "get",
        ),
    };
    let v = View {
        css: state.upstream.public("portal/portal.css").to_string(),
        script: state.upstream.public("mfa/passkey.js").to_string(),
        tenant_name: p.tenant_name.clone(),
        who: p.who.clone(),
        title,
        intro,
        button,
        ceremony_kind: kind,
        options: p.options.clone(),
        ceremony: p.ceremony.clone(),
        csrf,
        action,
        hidden,
        ask_name: p.mode == Mode::Register,
        error: p.error,
        message: message(p.error),
        notice: notice_text(p.notice),
        passkeys: p.passkeys.clone(),
        manage,
        links,
    };
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
    html(state, status, &v, Some(&p.app))
}

async fn answer(state: &AppState, session: &Session, a: PasskeyAnswer) -> Response {
    match a {
        PasskeyAnswer::Page(p) => render(state, session, &p).await,
        PasskeyAnswer::Mfa(m) => super::mfa::answer(state, session, m).await,
    }
}

/// Checks the form's CSRF token: `Err(reason)` when it is missing or wrong.
async fn csrf_check(session: &Session, form: &BTreeMap<String, String>) -> Result<Result<(), &'static str>, Response> {
    Ok(
        match check_csrf(session, PASSKEY_CSRF, form.get(CSRF_FIELD).map(String::as_str)).await? {
            Csrf::Valid => Ok(()),
            Csrf::Missing => Err("passkey.csrf_missing"),
            Csrf::Mismatch => Err("passkey.csrf_mismatch"),
        },
    )
}

fn csrf_refused(reason: &'static str, tenant: &str) -> Response {
    tracing::warn!(reason, tenant, "passkey form refused");
    pages::error_page(
        StatusCode::FORBIDDEN,
        "Not accepted",
        "This form did not come from the page Portcullis showed in this browser. Go back, reload the page and try again.",
        reason,
    )
}

fn field(form: &BTreeMap<String, String>, name: &str) -> String {
    form.get(name).cloned().unwrap_or_default()
}

/// `GET /mfa/{tenant}/{connection}/passkey?handle=…`
async fn mfa_show(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(query): SingleQuery,
) -> Response {
    let handle = query.get("handle").map(String::as_str).unwrap_or_default();
    let secret = session.get::<String>(MFA_SESSION_FIELD).await.ok().flatten();
    let a = state
        .broker
        .passkey_mfa_show(&tenant, &connection, handle, secret.as_deref())
        .await;
    answer(&state, &session, a).await
}

/// `POST /mfa/{tenant}/{connection}/passkey`
async fn mfa_submit(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    match csrf_check(&session, &form).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return csrf_refused(reason, &tenant),
        Err(r) => return r,
    }
    let secret = session.get::<String>(MFA_SESSION_FIELD).await.ok().flatten();
    let sso = flows::load_sso(&session).await;
    let before = sso.clone();
    let mut sso = sso;
    let a = state
        .broker
        .passkey_mfa_submit(
            &tenant,
            &connection,
            &field(&form, "handle"),
            secret.as_deref(),
            &field(&form, "ceremony"),
            &field(&form, "credential"),
            &field(&form, "name"),
            &mut sso,
        )
        .await;
    if sso != before {
        if let Err(r) = keep_session(&session, &sso, &before).await {
            return r;
        }
        // The waiting sign-in is finished: its binding goes.
        if let Err(e) = session.remove::<String>(MFA_SESSION_FIELD).await {
            return flows::session_failed(e);
        }
    }
    answer(&state, &session, a).await
}

/// This browser's secret for self-service and passwordless ceremonies,
/// created on first use.
async fn browser_secret(session: &Session) -> Result<String, Response> {
    if let Some(s) = session
        .get::<String>(PASSKEY_SESSION_FIELD)
        .await
        .map_err(flows::session_failed)?
    {
        return Ok(s);
    }
    let fresh = crate::tokens::random_token(24);
    session
        .insert(PASSKEY_SESSION_FIELD, &fresh)
        .await
        .map_err(flows::session_failed)?;
    Ok(fresh)
}

/// `GET /mfa/{tenant}/passkeys`
async fn manage_show(State(state): State<Arc<AppState>>, session: Session, Path(tenant): Path<String>) -> Response {
    let secret = match browser_secret(&session).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sso = flows::load_sso(&session).await;
    let a = state.broker.passkeys_manage(&tenant, &sso, &secret, Manage::Show).await;
    answer(&state, &session, a).await
}

/// `POST /mfa/{tenant}/passkeys`: `action=register` (ceremony, credential,
/// name) or `action=remove` (id).
async fn manage_submit(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(tenant): Path<String>,
    SingleForm(form): SingleForm,
) -> Response {
    match csrf_check(&session, &form).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return csrf_refused(reason, &tenant),
        Err(r) => return r,
    }
    let secret = match browser_secret(&session).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ask = match form.get("action").map(String::as_str) {
        Some("remove") => Manage::Remove { id: field(&form, "id") },
        _ => Manage::Register {
            ceremony: field(&form, "ceremony"),
            credential: field(&form, "credential"),
            name: field(&form, "name"),
        },
    };
    let sso = flows::load_sso(&session).await;
    let a = state.broker.passkeys_manage(&tenant, &sso, &secret, ask).await;
    answer(&state, &session, a).await
}

/// The local connection of a passwordless page, active, with its tenant's
/// name.
async fn local_connection(
    state: &AppState,
    tenant: &str,
    connection: &str,
) -> Result<(TenantId, ConnectionId, String), Response> {
    let not_found = |reason: &'static str| {
        tracing::info!(reason, "passkey sign-in page for an unknown connection");
        pages::error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such sign-in page.",
            reason,
        )
    };
    let (Ok(t), Ok(c)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
        return Err(not_found("local.unknown_connection"));
    };
    let name = match state.tenants.get(&t).await {
        Ok(Some(x)) => x.name.clone(),
        Ok(None) => return Err(not_found("local.unknown_connection")),
        Err(e) => return Err(flows::store_unavailable(&e)),
    };
    let conn = match state.tenants.connection(&t, &c).await {
        Ok(Some(x)) => x,
        Ok(None) => return Err(not_found("local.unknown_connection")),
        Err(e) => return Err(flows::store_unavailable(&e)),
    };
    if !matches!(conn.kind, ConnectionKind::Local(_)) {
        return Err(not_found("local.not_local"));
    }
    if conn.status != ConnectionStatus::Active {
        return Err(not_found("local.connection_inactive"));
    }
    // A tenant whose local sign-in asks its custom-challenge hook keeps
    // that step: a passkey does not skip it (fail closed).
    if let Some(hooks) = &state.provider.hooks {
        match hooks.get(&t, crate::hooks::HookKind::CustomChallenge).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::info!(reason = "passkey.challenge_hook", tenant = %t, connection = %c, "passwordless passkey refused: the tenant's custom challenge applies");
                return Err(pages::error_page(
                    StatusCode::FORBIDDEN,
                    "Sign in with your password",
                    "This organisation asks an extra question at sign-in, so a passkey cannot be used to sign in here without a password.",
                    "passkey.challenge_hook",
                ));
            }
            Err(e) => return Err(flows::store_unavailable(&e)),
        }
    }
    Ok((t, c, name))
}

fn valid_login(login: Option<&String>) -> Option<String> {
    login
        .filter(|l| {
            !l.is_empty() && l.len() <= 128 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .cloned()
}

/// The passwordless page: a new discoverable ceremony for `login`.
#[allow(clippy::too_many_arguments)]
async fn passwordless_page(
    state: &AppState,
    session: &Session,
    t: &TenantId,
    c: &ConnectionId,
    tenant_name: &str,
    login: &str,
    status: StatusCode,
    error: Option<&'static str>,
) -> Response {
    let Some(pk) = state.broker.passkeys.as_ref() else {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "Passkeys are not available here.",
            "passkey.disabled",
        );
    };
    let secret = match browser_secret(session).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let started = match pk.start_passwordless(t, c, login, &secret).await {
        Ok(s) => s,
        Err(PasskeyError::Store(e)) => return flows::store_unavailable(&e),
        Err(e) => {
            tracing::error!(reason = e.reason(), tenant = %t, connection = %c, "passkey sign-in could not start");
            return pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The passkey sign-in could not start. Please try again.",
                e.reason(),
            );
        }
    };
    let csrf = match issue_csrf(session, PASSKEY_CSRF).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut back = state.upstream.public(&format!("local/{t}/{c}/sign-in"));
    back.query_pairs_mut().append_pair("login", login);
    let v = View {
        css: state.upstream.public("portal/portal.css").to_string(),
        script: state.upstream.public("mfa/passkey.js").to_string(),
        tenant_name: tenant_name.to_owned(),
        who: String::new(),
        title: "Sign in with a passkey",
        intro: "Use the passkey you registered for this account: your device's screen lock or a security key. No password needed.",
        button: "Sign in with a passkey",
        ceremony_kind: "get",
        options: started.options,
        ceremony: started.handle,
        csrf,
        action: state
            .upstream
            .public(&format!("local/{t}/{c}/passkey"))
            .to_string(),
        hidden: vec![("login", login.to_owned())],
        ask_name: false,
        error,
        message: message(error),
        notice: "",
        passkeys: Vec::new(),
        manage: false,
        links: vec![(back.to_string(), "Sign in with a password")],
    };
    // The answer redirects through the callback to the app.
    let onward = state.broker.pending_redirect_uri(t, c, login).await.ok().flatten();
    html(state, status, &v, onward.as_deref())
}

fn start_from_app() -> Response {
    pages::error_page(
        StatusCode::BAD_REQUEST,
        "Start from your application",
        "This sign-in was not started by an application. Open the application you want to use and sign in from there.",
        "local.no_login",
    )
}

/// `GET /local/{tenant}/{connection}/passkey?login=…`
async fn passwordless_show(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(query): SingleQuery,
) -> Response {
    let (t, c, name) = match local_connection(&state, &tenant, &connection).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let Some(login) = valid_login(query.get("login")) else {
        return start_from_app();
    };
    passwordless_page(&state, &session, &t, &c, &name, &login, StatusCode::OK, None).await
}

/// `POST /local/{tenant}/{connection}/passkey`: the browser's assertion.
/// A right one (the user handle names an account of this tenant whose
/// passkey it is, registered on this connection, user verified) signs in
/// without a password: the local account must still be confirmed and
/// enabled; the identity's `amr` is `hwk`, `user`, `mfa` (no `pwd`).
async fn passwordless_submit(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    let (t, c, name) = match local_connection(&state, &tenant, &connection).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    match csrf_check(&session, &form).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return csrf_refused(reason, &tenant),
        Err(r) => return r,
    }
    let Some(login) = valid_login(form.get("login")) else {
        return start_from_app();
    };
    let Some(pk) = state.broker.passkeys.as_ref() else {
        return passwordless_page(&state, &session, &t, &c, &name, &login, StatusCode::NOT_FOUND, None).await;
    };
    let secret = session.get::<String>(PASSKEY_SESSION_FIELD).await.ok().flatten();
    let outcome = match pk.take(&t, &field(&form, "ceremony"), secret.as_deref()).await {
        Ok(Purpose::Passwordless {
            connection: for_connection,
            login: for_login,
            state: ceremony,
        }) if for_connection == c && for_login == login => {
            pk.finish_passwordless(&t, &c, ceremony, &field(&form, "credential"))
                .await
        }
        Ok(_) => Err(PasskeyError::Mismatch),
        Err(e) => Err(e),
    };
    let refuse = |reason: &'static str| {
        let state = state.clone();
        let session = session.clone();
        let (t, c, name, login) = (t.clone(), c.clone(), name.clone(), login.clone());
        async move {
            tracing::warn!(reason, tenant = %t, connection = %c, "passkey sign-in refused");
            state.broker.record_failure(&t, Some(&c), reason).await;
            let status = if reason == "passkey.throttled" {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::BAD_REQUEST
            };
            passwordless_page(&state, &session, &t, &c, &name, &login, status, Some(reason)).await
        }
    };
    let used = match outcome {
        Ok(u) => u,
        Err(PasskeyError::Store(e)) => return flows::store_unavailable(&e),
        Err(e) => return refuse(e.reason()).await,
    };
    // The passkey's user must still be this connection's local account,
    // confirmed and enabled.
    let user = match state.provider.directory.get(&t, &used.sub).await {
        Ok(u) => u,
        Err(e) => return flows::store_unavailable(&e),
    };
    let Some(user) = user.filter(|u| u.connection == c) else {
        return refuse("passkey.account_unusable").await;
    };
    let account = match user.email.as_deref() {
        Some(email) => match state.accounts.get(&t, &c, email).await {
            Ok(a) => a,
            Err(e) => return flows::store_unavailable(&e),
        },
        None => None,
    };
    let Some(account) = account.filter(|a| {
        a.subject == user.upstream_subject && a.effective_status() == crate::local::AccountStatus::Confirmed
    }) else {
        return refuse("passkey.account_unusable").await;
    };
    let mut identity = crate::upstream::local::identity(&account, state.upstream.clock.unix());
    // RFC 8176: no password; a hardware-bound key (`hwk`), the person
    // verified by the authenticator (`user`), which together are `mfa`.
    identity.amr = if used.user_verified {
        vec!["hwk".into(), "user".into(), "mfa".into()]
    } else {
        vec!["hwk".into()]
    };
    let ticket = match crate::upstream::local::issue_ticket(&state.upstream, &t, &c, &login, &identity).await {
        Ok(t) => t,
        Err(e) => return flows::store_unavailable(&e),
    };
    tracing::info!(reason = "passkey.signed_in", tenant = %t, connection = %c, "passwordless passkey sign-in");
    let mut url = state.upstream.public(&format!("local/{t}/{c}/callback"));
    url.query_pairs_mut()
        .append_pair("state", &login)
        .append_pair("ticket", &ticket);
    Redirect::to(url.as_str()).into_response()
}
