//! The second-factor pages (`/mfa/{tenant}/{connection}`): the challenge
//! (TOTP or recovery code), the enrolment (inline SVG QR code, the secret as
//! text, a first code) and the recovery codes shown once. Server-rendered
//! askama templates (`templates/mfa/`) in the portal's look, usable without
//! JavaScript; every form carries a single-use CSRF token, and the page is
//! bound to the browser that signed in (the broker checks the secret its
//! session holds).

use super::flows::{self, check_csrf, issue_csrf, keep_session, Csrf, CSRF_FIELD};
use super::pages;
use super::pairs::{SingleForm, SingleQuery};
use super::AppState;
use crate::broker::second_factor::{MfaAnswer, MfaPage, Step, MFA_SESSION_FIELD};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

/// The CSRF purpose of the MFA forms.
const MFA_CSRF: &str = "mfa";

/// The second-factor routes (inside the browser-session layer).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/mfa/{tenant}/{connection}", get(show).post(submit))
        .route("/mfa/{tenant}/{connection}/continue", post(continue_))
        // A static segment: matched before the `{connection}` route.
        .route("/mfa/{tenant}/enroll", get(self_enrol_form).post(self_enrol))
}

/// What the templates show.
struct View {
    css: String,
    tenant_name: String,
    who: String,
    handle: String,
    csrf: String,
    action: String,
    continue_action: String,
    error: Option<&'static str>,
    message: &'static str,
    secret: String,
    qr_svg: String,
    codes: Vec<String>,
    self_service: bool,
    /// The challenge asks for a TOTP or recovery code.
    totp: bool,
    /// The passkey step of this sign-in (challenge: use one; enrolment:
    /// register one); empty when passkeys are not offered.
    passkey_url: String,
    /// A signed-in user's passkeys page; empty when passkeys are off.
    passkeys_url: String,
}

#[derive(Template)]
#[template(path = "mfa/challenge.html")]
struct ChallengePage<'a> {
    v: &'a View,
}

#[derive(Template)]
#[template(path = "mfa/enrol.html")]
struct EnrolPage<'a> {
    v: &'a View,
}

#[derive(Template)]
#[template(path = "mfa/recovery.html")]
struct RecoveryPage<'a> {
    v: &'a View,
}

/// What a refused code means to the person.
fn message(reason: Option<&str>) -> &'static str {
    match reason {
        None => "",
        Some("mfa.bad_code") => {
            "That code is not right. Check that your phone's clock is set automatically and try again."
        }
        Some("mfa.code_reused") => "That code was already used. Wait for the next code in your app.",
        Some("mfa.recovery_reused") => "That recovery code was already used. Each works once.",
        Some("mfa.throttled") => "Too many attempts. Wait 15 minutes, then try again.",
        Some("mfa.locked") => "Too many wrong codes for this account: codes from your app are refused now. Use one of your recovery codes, or ask your administrator to reset two-step verification.",
        Some("mfa.not_enrolled") => "This set-up has expired. Start the sign-in again from the application.",
        Some("mfa.not_done") => "Confirm a code from your app first.",
        Some("mfa.enrolment_started_elsewhere") => {
            "A set-up was started since in another sign-in or browser, so the key above is new: add it to your app again and type its code."
        }
        Some("mfa.enrolment_changed") => {
            "Two-step verification was set up for this account meanwhile, in another sign-in or browser, so none is added here: continue with the one that was set up."
        }
        Some(r) if r.starts_with("passkey.") => super::passkey::message(Some(r)),
        Some(_) => "That did not work. Please try again.",
    }
}

/// The policy of an MFA page: the portal's stylesheet (by exact URL); forms
/// to our own origin and, through the redirect that follows, the app's.
/// The QR code is inline SVG markup (presentation attributes, no style
/// element, no script), which needs no source of its own.
fn csp(state: &AppState, app: &str) -> String {
    let css = state.upstream.public("portal/portal.css");
    let app = Some(app)
        .filter(|a| !a.is_empty())
        .and_then(|a| url::Url::parse(a).ok());
    let form_action = flows::own_form_action(state, &app.iter().collect::<Vec<_>>());
    format!(
        "default-src 'none'; style-src {}; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        css.as_str().replace(';', "%3B"),
        form_action.join(" ")
    )
}

async fn render(state: &AppState, session: &Session, p: &MfaPage) -> Response {
    let csrf = match issue_csrf(session, MFA_CSRF).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let base = if p.self_service {
        format!("mfa/{}/enroll", p.tenant)
    } else {
        format!("mfa/{}/{}", p.tenant, p.connection)
    };
    let enrol = p.enrol.as_ref();
    let v = View {
        css: state.upstream.public("portal/portal.css").to_string(),
        tenant_name: p.tenant_name.clone(),
        who: p.who.clone(),
        handle: p.handle.clone(),
        csrf,
        action: state.upstream.public(&base).to_string(),
        continue_action: state.upstream.public(&format!("{base}/continue")).to_string(),
        error: p.error,
        message: message(p.error),
        secret: enrol.map(|e| e.secret.clone()).unwrap_or_default(),
        qr_svg: enrol.map(|e| e.qr_svg.clone()).unwrap_or_default(),
        codes: p.recovery_codes.clone(),
        self_service: p.self_service,
        totp: p.totp,
        passkey_url: if !p.self_service && (p.passkey || (p.step == Step::Enrol && p.passkeys_enabled)) {
            let mut u = state
                .upstream
                .public(&format!("mfa/{}/{}/passkey", p.tenant, p.connection));
            u.query_pairs_mut().append_pair("handle", &p.handle);
            u.to_string()
        } else {
            String::new()
        },
        passkeys_url: if p.self_service && p.passkeys_enabled {
            state.upstream.public(&format!("mfa/{}/passkeys", p.tenant)).to_string()
        } else {
            String::new()
        },
    };
    let html = match p.step {
        Step::Challenge => ChallengePage { v: &v }.render(),
        Step::Enrol => EnrolPage { v: &v }.render(),
        Step::Done => RecoveryPage { v: &v }.render(),
    };
    let html = match html {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(reason = "mfa.render_failed", error = %e);
            return pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown. Please try again.",
                "mfa.render_failed",
            );
        }
    };
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, pages::no_store(), Html(html)).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp(state, &p.app)) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

async fn browser_secret(session: &Session) -> Option<String> {
    session.get::<String>(MFA_SESSION_FIELD).await.ok().flatten()
}

pub(super) async fn answer(state: &AppState, session: &Session, a: MfaAnswer) -> Response {
    match a {
        MfaAnswer::Page(p) => render(state, session, &p).await,
        MfaAnswer::Outcome(o) => flows::respond(state, o),
    }
}

/// `GET /mfa/{tenant}/{connection}?handle=…`
async fn show(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(query): SingleQuery,
) -> Response {
    let handle = query.get("handle").map(String::as_str).unwrap_or_default();
    let secret = browser_secret(&session).await;
    let a = state
        .broker
        .mfa_show(&tenant, &connection, handle, secret.as_deref())
        .await;
    answer(&state, &session, a).await
}

/// Checks the form's CSRF token; the refusal page otherwise.
async fn csrf_ok(session: &Session, form: &BTreeMap<String, String>, tenant: &str) -> Result<(), Response> {
    let refused = |reason: &'static str| {
        tracing::warn!(reason, tenant, "second-factor form refused");
        pages::error_page(
            StatusCode::FORBIDDEN,
            "Not accepted",
            "This form did not come from the page Portcullis showed in this browser. Go back, reload the page and try again.",
            reason,
        )
    };
    match check_csrf(session, MFA_CSRF, form.get(CSRF_FIELD).map(String::as_str)).await? {
        Csrf::Valid => Ok(()),
        Csrf::Missing => Err(refused("mfa.csrf_missing")),
        Csrf::Mismatch => Err(refused("mfa.csrf_mismatch")),
    }
}

/// Runs a step that may open the SSO session, keeping the browser's session
/// in step (a new SSO session cycles the session id).
async fn with_sso<F, Fut>(state: &AppState, session: &Session, f: F) -> Response
where
    F: FnOnce(crate::broker::session::BrowserSso) -> Fut,
    Fut: std::future::Future<Output = (MfaAnswer, crate::broker::session::BrowserSso)>,
{
    let sso = flows::load_sso(session).await;
    let before = sso.clone();
    let (a, sso) = f(sso).await;
    if sso != before {
        if let Err(r) = keep_session(session, &sso, &before).await {
            return r;
        }
        // The waiting sign-in is finished: its binding goes.
        if let Err(e) = session.remove::<String>(MFA_SESSION_FIELD).await {
            return flows::session_failed(e);
        }
    }
    answer(state, session, a).await
}

/// `POST /mfa/{tenant}/{connection}`: a code typed on the page.
async fn submit(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    if let Err(r) = csrf_ok(&session, &form, &tenant).await {
        return r;
    }
    let handle = form.get("handle").cloned().unwrap_or_default();
    let code = form.get("code").cloned().unwrap_or_default();
    let secret = browser_secret(&session).await;
    let broker = state.broker.clone();
    with_sso(&state, &session, |mut sso| async move {
        let a = broker
            .mfa_submit(&tenant, &connection, &handle, secret.as_deref(), &code, &mut sso)
            .await;
        (a, sso)
    })
    .await
}

/// `POST /mfa/{tenant}/{connection}/continue`: after the recovery codes.
async fn continue_(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    if let Err(r) = csrf_ok(&session, &form, &tenant).await {
        return r;
    }
    let handle = form.get("handle").cloned().unwrap_or_default();
    let secret = browser_secret(&session).await;
    let broker = state.broker.clone();
    with_sso(&state, &session, |mut sso| async move {
        let a = broker
            .mfa_continue(&tenant, &connection, &handle, secret.as_deref(), &mut sso)
            .await;
        (a, sso)
    })
    .await
}

/// `GET /mfa/{tenant}/enroll`: a signed-in user sets up TOTP on their own.
async fn self_enrol_form(State(state): State<Arc<AppState>>, session: Session, Path(tenant): Path<String>) -> Response {
    let sso = flows::load_sso(&session).await;
    let a = state.broker.mfa_self_enrol(&tenant, &sso, None).await;
    answer(&state, &session, a).await
}

/// `POST /mfa/{tenant}/enroll`: the first code of a self-service enrolment.
async fn self_enrol(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(tenant): Path<String>,
    SingleForm(form): SingleForm,
) -> Response {
    if let Err(r) = csrf_ok(&session, &form, &tenant).await {
        return r;
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let sso = flows::load_sso(&session).await;
    let a = state.broker.mfa_self_enrol(&tenant, &sso, Some(&code)).await;
    answer(&state, &session, a).await
}
