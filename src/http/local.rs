//! The pages of local accounts (`"kind":"local"` connections): sign-in,
//! sign-up, confirm, resend code, forgot password → reset by code, change
//! password. Server-rendered (askama, `templates/local/`), the portal's
//! stylesheet, no JavaScript, every form with its single-use CSRF token,
//! every refusal with its reason code on the page and in the log.
//!
//! A successful sign-in stores the identity under a single-use ticket and
//! sends the browser to `/local/{t}/{c}/callback`, where the broker
//! completes the pending login like any IdP's answer.

use super::flows::{self, check_csrf, issue_csrf, Csrf, CSRF_FIELD};
use super::pages;
use super::pairs::{SingleForm, SingleQuery};
use super::AppState;
use crate::broker::session::SESSION_FIELD;
use crate::ids::{ConnectionId, TenantId};
use crate::local::challenge::{Asked, SignInStep, CHALLENGE_SESSION_FIELD};
use crate::local::SignInMode;
use crate::local::{AccountStatus, LocalConfig, LocalError, Profile};
use crate::secret::Secret;
use crate::upstream::{CallbackParams, ConnectionKind, ConnectionStatus};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

/// The local-account routes (browser routes: they carry the session).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/local/{tenant}/{connection}/sign-in", get(sign_in_form).post(sign_in))
        .route("/local/{tenant}/{connection}/challenge", post(challenge))
        .route("/local/{tenant}/{connection}/callback", get(callback))
        .route(
            "/local/{tenant}/{connection}/sign-up",
            get(show_page::<SIGN_UP>).post(submit::<SIGN_UP>),
        )
        .route(
            "/local/{tenant}/{connection}/confirm",
            get(show_page::<CONFIRM>).post(submit::<CONFIRM>),
        )
        .route(
            "/local/{tenant}/{connection}/resend",
            get(show_page::<RESEND>).post(submit::<RESEND>),
        )
        .route(
            "/local/{tenant}/{connection}/forgot",
            get(show_page::<FORGOT>).post(submit::<FORGOT>),
        )
        .route(
            "/local/{tenant}/{connection}/reset",
            get(show_page::<RESET>).post(submit::<RESET>),
        )
        .route(
            "/local/{tenant}/{connection}/change-password",
            get(show_page::<CHANGE>).post(submit::<CHANGE>),
        )
}

/// One input of a form.
struct Field {
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
    inputmode: &'static str,
    required: bool,
    value: String,
    hint: Option<String>,
    error: Option<String>,
}

impl Field {
    fn email(value: &str) -> Self {
        Self {
            name: "email",
            label: "Email address",
            kind: "text",
            autocomplete: "username",
            inputmode: "email",
            required: true,
            value: value.to_owned(),
            hint: None,
            error: None,
        }
    }

    fn password(name: &'static str, label: &'static str, autocomplete: &'static str) -> Self {
        Self {
            name,
            label,
            kind: "password",
            autocomplete,
            inputmode: "",
            required: true,
            value: String::new(),
            hint: None,
            error: None,
        }
    }

    fn code() -> Self {
        Self {
            name: "code",
            label: "Code from the email (6 digits)",
            kind: "text",
            autocomplete: "one-time-code",
            inputmode: "numeric",
            required: true,
            value: String::new(),
            hint: None,
            error: None,
        }
    }

    fn text(name: &'static str, label: &'static str, autocomplete: &'static str, value: &str) -> Self {
        Self {
            name,
            label,
            kind: "text",
            autocomplete,
            inputmode: "",
            required: false,
            value: value.to_owned(),
            hint: None,
            error: None,
        }
    }

    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

#[derive(Template)]
#[template(path = "local/page.html")]
struct LocalPage {
    stylesheet: String,
    title: String,
    tenant_name: String,
    intro: Option<String>,
    notice: Option<String>,
    error: Option<String>,
    reason: Option<String>,
    action: String,
    csrf: String,
    hidden: Vec<(String, String)>,
    fields: Vec<Field>,
    /// Shown as a list of terms (a custom challenge's public parameters).
    details: Vec<(String, String)>,
    submit: String,
    links: Vec<(String, String)>,
}

/// The resolved local connection a request is for.
struct Local {
    t: TenantId,
    c: ConnectionId,
    cfg: LocalConfig,
    tenant_name: String,
    /// The pending login (`login=` in the query or the form), carried
    /// through every page so the person ends up back at the app.
    login: Option<String>,
}

impl Local {
    fn path(&self, page: &str) -> String {
        format!("/local/{}/{}/{page}", self.t, self.c)
    }

    fn url(&self, app: &AppState, page: &str) -> String {
        let mut url = app.upstream.public(&self.path(page));
        if let Some(l) = &self.login {
            url.query_pairs_mut().append_pair("login", l);
        }
        url.to_string()
    }

    fn hidden(&self) -> Vec<(String, String)> {
        self.login.iter().map(|l| ("login".to_owned(), l.clone())).collect()
    }
}

fn not_found(reason: &'static str) -> Response {
    tracing::info!(reason, "local page for an unknown connection");
    pages::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such sign-in page.",
        reason,
    )
}

async fn resolve(app: &AppState, tenant: &str, connection: &str, login: Option<&String>) -> Result<Local, Response> {
    let (Ok(t), Ok(c)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
        return Err(not_found("local.unknown_connection"));
    };
    let tenant = match app.tenants.get(&t).await {
        Ok(Some(x)) => x,
        Ok(None) => return Err(not_found("local.unknown_connection")),
        Err(e) => return Err(flows::store_unavailable(&e)),
    };
    let conn = match app.tenants.connection(&t, &c).await {
        Ok(Some(x)) => x,
        Ok(None) => return Err(not_found("local.unknown_connection")),
        Err(e) => return Err(flows::store_unavailable(&e)),
    };
    let ConnectionKind::Local(cfg) = conn.kind else {
        return Err(not_found("local.not_local"));
    };
    if conn.status != ConnectionStatus::Active {
        return Err(not_found("local.connection_inactive"));
    }
    let login = login
        .filter(|l| {
            !l.is_empty() && l.len() <= 128 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .cloned();
    Ok(Local {
        t,
        c,
        cfg,
        tenant_name: tenant.name.clone(),
        login,
    })
}

/// The CSP of a local page: the portal stylesheet, forms to ourselves and,
/// for the sign-in form (whose answer redirects back to the app), the app.
fn csp(app: &AppState, onward: Option<&str>) -> String {
    let css = app.upstream.public("portal/portal.css");
    let mut form_action = vec!["'self'".to_owned()];
    form_action.extend(pages::origin_source(&app.upstream.public_url));
    if let Some(o) = onward.and_then(|u| url::Url::parse(u).ok()) {
        form_action.extend(pages::origin_source(&o));
    }
    form_action.dedup();
    format!(
        "default-src 'none'; style-src {}; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        css.as_str().replace(';', "%3B"),
        form_action.join(" ").replace(';', "%3B")
    )
}

fn render(app: &AppState, status: StatusCode, page: &LocalPage, onward: Option<&str>) -> Response {
    match page.render() {
        Ok(html) => {
            let mut resp = (status, pages::no_store(), Html(html)).into_response();
            if let Ok(v) = HeaderValue::from_str(&csp(app, onward)) {
                resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
            }
            resp
        }
        Err(e) => {
            tracing::error!(reason = "local.render_failed", error = %e);
            pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown. Please try again.",
                "local.render_failed",
            )
        }
    }
}

/// What a page shows besides its form.
#[derive(Default)]
struct Say {
    notice: Option<String>,
    error: Option<(String, &'static str)>,
    /// The field the error belongs to.
    field: Option<&'static str>,
}

impl Say {
    fn notice(n: impl Into<String>) -> Self {
        Self {
            notice: Some(n.into()),
            ..Self::default()
        }
    }

    fn error(message: impl Into<String>, reason: &'static str, field: Option<&'static str>) -> Self {
        Self {
            error: Some((message.into(), reason)),
            field,
            ..Self::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SignIn,
    SignUp,
    Confirm,
    Resend,
    Forgot,
    Reset,
    Change,
}

impl Kind {
    fn csrf_purpose(self) -> &'static str {
        match self {
            Self::SignIn => "local.sign-in",
            Self::SignUp => "local.sign-up",
            Self::Confirm => "local.confirm",
            Self::Resend => "local.resend",
            Self::Forgot => "local.forgot",
            Self::Reset => "local.reset",
            Self::Change => "local.change-password",
        }
    }

    fn page(self) -> &'static str {
        match self {
            Self::SignIn => "sign-in",
            Self::SignUp => "sign-up",
            Self::Confirm => "confirm",
            Self::Resend => "resend",
            Self::Forgot => "forgot",
            Self::Reset => "reset",
            Self::Change => "change-password",
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn show(
    app: &AppState,
    session: &Session,
    l: &Local,
    kind: Kind,
    status: StatusCode,
    say: Say,
    form: &BTreeMap<String, String>,
) -> Response {
    let csrf = match issue_csrf(session, kind.csrf_purpose()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let signed_in = if kind == Kind::Change {
        match signed_in_account(app, session, l).await {
            Ok(a) => a,
            Err(r) => return r,
        }
    } else {
        None
    };
    let v = |k: &str| form.get(k).cloned().unwrap_or_default();
    let email = if v("email").is_empty() {
        v("login_hint")
    } else {
        v("email")
    };
    let policy = &l.cfg.password_policy;
    let policy_hint = format!(
        "At least {} characters{}. Common or breached passwords are refused.",
        policy.min_length.max(8),
        if policy.min_classes > 0 {
            format!(
                ", using at least {} of: lower case, upper case, digits, symbols",
                policy.min_classes
            )
        } else {
            String::new()
        }
    );
    let sign_in = (l.url(app, "sign-in"), "Back to sign-in".to_owned());
    let (title, intro, mut fields, submit, links): PageParts = match kind {
        Kind::SignIn => {
            let mut links = Vec::new();
            if l.cfg.allow_sign_up {
                links.push((l.url(app, "sign-up"), "Create account".to_owned()));
            }
            if l.cfg.sign_in == SignInMode::CustomChallenge {
                // Passwordless: the email only; the tenant's hook asks the rest.
                links.push((l.url(app, "confirm"), "Confirm your email with a code".to_owned()));
                (
                    "Sign in",
                    Some("Enter your email address. We will then ask you to confirm it is you."),
                    vec![Field::email(&email)],
                    "Continue",
                    links,
                )
            } else {
                if app.broker.passkeys.is_some() {
                    // WebAuthn needs a script: its own page (`http::passkey`).
                    links.push((l.url(app, "passkey"), "Sign in with a passkey".to_owned()));
                }
                links.push((l.url(app, "forgot"), "Forgot password?".to_owned()));
                links.push((l.url(app, "confirm"), "Confirm your email with a code".to_owned()));
                links.push((l.url(app, "change-password"), "Change password".to_owned()));
                (
                    "Sign in",
                    None,
                    vec![
                        Field::email(&email),
                        Field::password("password", "Password", "current-password"),
                    ],
                    "Sign in",
                    links,
                )
            }
        }
        Kind::SignUp => (
            "Create account",
            Some("We will e-mail you a 6-digit code to confirm your address."),
            vec![
                Field::email(&email),
                Field::text("given_name", "Given name (optional)", "given-name", &v("given_name")),
                Field::text(
                    "family_name",
                    "Family name (optional)",
                    "family-name",
                    &v("family_name"),
                ),
                Field::password("password", "Password", "new-password").hint(policy_hint.clone()),
                Field::password("password_confirm", "Repeat the password", "new-password"),
            ],
            "Create account",
            vec![sign_in],
        ),
        Kind::Confirm => (
            "Confirm your email",
            Some("Enter the 6-digit code we e-mailed you. It expires after 10 minutes."),
            vec![Field::email(&email), Field::code()],
            "Confirm",
            vec![(l.url(app, "resend"), "Send a new code".to_owned()), sign_in],
        ),
        Kind::Resend => (
            "Send a new code",
            None,
            vec![Field::email(&email)],
            "Send a new code",
            vec![sign_in],
        ),
        Kind::Forgot => (
            "Forgot password",
            Some("We will e-mail you a 6-digit code to choose a new password."),
            vec![Field::email(&email)],
            "Send a reset code",
            vec![sign_in],
        ),
        Kind::Reset => (
            "Choose a new password",
            Some("Enter the 6-digit code we e-mailed you and your new password."),
            vec![
                Field::email(&email),
                Field::code(),
                Field::password("password", "New password", "new-password").hint(policy_hint.clone()),
                Field::password("password_confirm", "Repeat the new password", "new-password"),
            ],
            "Set the new password",
            vec![(l.url(app, "forgot"), "Send a new code".to_owned()), sign_in],
        ),
        Kind::Change => {
            let mut fields = vec![
                Field::password("current_password", "Current password", "current-password"),
                Field::password("password", "New password", "new-password").hint(policy_hint.clone()),
                Field::password("password_confirm", "Repeat the new password", "new-password"),
            ];
            // Signed in here: the session names the account, no address asked.
            let intro = if signed_in.is_some() {
                Some("You are signed in. Enter your current password and choose a new one. Every session of your account ends, and you sign in again with the new password.")
            } else {
                fields.insert(0, Field::email(&email));
                None
            };
            ("Change password", intro, fields, "Change password", vec![sign_in])
        }
    };
    let intro = match (&signed_in, intro) {
        (Some(a), Some(i)) => Some(format!("{i} Account: {}.", a.email)),
        (_, i) => i.map(str::to_owned),
    };
    let (error, reason) = match &say.error {
        Some((m, r)) => (Some(m.clone()), Some((*r).to_owned())),
        None => (None, None),
    };
    if let (Some(name), Some(m)) = (say.field, &error) {
        if let Some(f) = fields.iter_mut().find(|f| f.name == name) {
            f.error = Some(m.clone());
        }
    }
    // The sign-in form's answer redirects through the callback to the app.
    let onward = match (&l.login, kind) {
        (Some(login), Kind::SignIn) => app.broker.pending_redirect_uri(&l.t, &l.c, login).await.ok().flatten(),
        _ => None,
    };
    let page = LocalPage {
        stylesheet: app.upstream.public("portal/portal.css").to_string(),
        title: title.to_owned(),
        tenant_name: l.tenant_name.clone(),
        intro,
        notice: say.notice,
        error,
        reason,
        action: l.path(kind.page()),
        csrf,
        hidden: l.hidden(),
        fields,
        details: Vec::new(),
        submit: submit.to_owned(),
        links,
    };
    render(app, status, &page, onward.as_deref())
}

type Form_ = BTreeMap<String, String>;

/// A page's title, introduction, fields, button and links.
type PageParts = (
    &'static str,
    Option<&'static str>,
    Vec<Field>,
    &'static str,
    Vec<(String, String)>,
);

async fn page_get(app: &AppState, session: &Session, tenant: &str, connection: &str, q: Form_, kind: Kind) -> Response {
    let l = match resolve(app, tenant, connection, q.get("login")).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if kind == Kind::SignUp && !l.cfg.allow_sign_up {
        return show(
            app,
            session,
            &l,
            Kind::SignIn,
            StatusCode::FORBIDDEN,
            Say::error(
                "Sign-up is not open here. Ask your administrator for an account.",
                "local.sign_up_disabled",
                None,
            ),
            &q,
        )
        .await;
    }
    // The message a successful form left for this page, shown once.
    let mut q = q;
    let say = match take_flash(session, &l, kind).await {
        Some(f) => {
            if let Some(email) = f.email {
                q.entry("email".to_owned()).or_insert(email);
            }
            Say::notice(f.notice)
        }
        None => Say::default(),
    };
    show(app, session, &l, kind, StatusCode::OK, say, &q).await
}

/// Resolves the connection and checks the form's CSRF token; `Err` is the answer.
async fn post_prelude(
    app: &AppState,
    session: &Session,
    tenant: &str,
    connection: &str,
    form: &Form_,
    kind: Kind,
) -> Result<Local, Response> {
    let l = resolve(app, tenant, connection, form.get("login")).await?;
    let reason = match check_csrf(session, kind.csrf_purpose(), form.get(CSRF_FIELD).map(String::as_str)).await? {
        Csrf::Valid => return Ok(l),
        Csrf::Missing => "local.csrf_missing",
        Csrf::Mismatch => "local.csrf_mismatch",
    };
    tracing::warn!(reason, tenant = %l.t, connection = %l.c, "local form refused");
    Err(show(
        app,
        session,
        &l,
        kind,
        StatusCode::FORBIDDEN,
        Say::error(
            "This form has expired or was not sent from this page. Please try again.",
            reason,
            None,
        ),
        form,
    )
    .await)
}

fn status_of(e: &LocalError) -> StatusCode {
    match e.reason() {
        "local.bad_credentials" => StatusCode::UNAUTHORIZED,
        "local.locked"
        | "local.busy"
        | "local.code_attempts_exceeded"
        | "local.code_locked"
        | "challenge.throttled" => StatusCode::TOO_MANY_REQUESTS,
        "local.disabled"
        | "local.reset_required"
        | "local.sign_up_disabled"
        | "challenge.failed"
        | "challenge.too_many_rounds"
        | "local.challenge_not_configured"
        | "local.change_needs_second_factor"
        | "local.change_needs_challenge" => StatusCode::FORBIDDEN,
        "local.mail_unavailable" | "store.unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "local.hash_failed" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => match e {
            LocalError::Hook(h) if h.transient() => StatusCode::SERVICE_UNAVAILABLE,
            LocalError::Hook(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        },
    }
}

/// Shows `kind` again with the refusal `e` (logged with its reason code).
async fn refused(app: &AppState, session: &Session, l: &Local, kind: Kind, e: LocalError, form: &Form_) -> Response {
    let reason = e.reason();
    let (message, field, retry_after) = match &e {
        LocalError::Refused {
            message, retry_after, ..
        } => {
            let field = match reason {
                "local.bad_email" => Some("email"),
                r if r.starts_with("local.password_") => Some("password"),
                "local.code_invalid" | "local.code_attempts_exceeded" => Some("code"),
                "local.name_too_long" => Profile {
                    given_name: form.get("given_name").cloned(),
                    family_name: form.get("family_name").cloned(),
                }
                .too_long(),
                _ => None,
            };
            ((*message).to_owned(), field, *retry_after)
        }
        LocalError::Store(err) => {
            tracing::error!(reason, error = %err, tenant = %l.t, connection = %l.c);
            (
                "The service could not reach its storage. Please try again in a moment.".to_owned(),
                None,
                Some(5),
            )
        }
        LocalError::Hash(err) => {
            tracing::error!(reason, error = %err, tenant = %l.t, connection = %l.c);
            (
                "Something went wrong on our side. Please try again.".to_owned(),
                None,
                None,
            )
        }
        // A tenant's hook failed: nothing was created or confirmed.
        LocalError::Hook(err) => {
            tracing::warn!(reason, error = %err, tenant = %l.t, connection = %l.c, page = kind.page(), "hook failed; nothing changed");
            let message = match kind {
                Kind::Confirm => "Your organization's account service did not answer, so your account is not confirmed yet. Please ask for a new code and try again in a moment.",
                _ => "Your organization's sign-in service did not answer, so you are not signed in and nothing was changed. Please try again in a moment.",
            };
            (message.to_owned(), None, err.transient().then_some(5))
        }
    };
    if matches!(e, LocalError::Refused { .. }) {
        tracing::info!(reason, tenant = %l.t, connection = %l.c, page = kind.page(), "local request refused");
    }
    let mut resp = show(
        app,
        session,
        l,
        kind,
        status_of(&e),
        Say::error(message, reason, field),
        form,
    )
    .await;
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn secret(form: &Form_, name: &str) -> Secret {
    Secret::new(form.get(name).cloned().unwrap_or_default())
}

fn field(form: &Form_, name: &str) -> String {
    form.get(name).cloned().unwrap_or_default()
}

fn mismatch() -> LocalError {
    LocalError::Refused {
        reason: "local.password_mismatch",
        message: "The two passwords are not the same.",
        retry_after: None,
    }
}

async fn sign_in_form(
    State(app): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(q): SingleQuery,
) -> Response {
    page_get(&app, &session, &tenant, &connection, q, Kind::SignIn).await
}

async fn sign_in(
    State(app): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    let l = match post_prelude(&app, &session, &tenant, &connection, &form, Kind::SignIn).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(login) = l.login.clone() else {
        tracing::info!(reason = "local.no_login", tenant = %l.t, connection = %l.c);
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Start from your application",
            "This sign-in was not started by an application. Open the application you want to use and sign in from there.",
            "local.no_login",
        );
    };
    let email = field(&form, "email");
    let step = match l.cfg.sign_in {
        SignInMode::Password => {
            app.accounts
                .sign_in(&l.t, &l.c, &email, &secret(&form, "password"), &login)
                .await
        }
        // Passwordless: a posted `password` is ignored, never checked.
        SignInMode::CustomChallenge => app.accounts.sign_in_passwordless(&l.t, &l.c, &email, &login).await,
    };
    signed_in_or_asked(&app, &session, &l, step, &form).await
}

/// Continues a sign-in after the password or a challenge's answer: the
/// ticket and the redirect to the callback, the (next) challenge page, or
/// the refusal (counted, audited, on the sign-in page).
async fn signed_in_or_asked(
    app: &AppState,
    session: &Session,
    l: &Local,
    step: Result<SignInStep, LocalError>,
    form: &Form_,
) -> Response {
    match step {
        Ok(SignInStep::Done {
            user,
            login,
            passwordless,
        }) => {
            let mut identity = crate::upstream::local::identity(&user, app.upstream.clock.unix());
            if passwordless {
                // RFC 8176: no password was used; what the tenant's
                // challenge checked is its own, so no method is claimed.
                identity.amr.clear();
            }
            let ticket = match crate::upstream::local::issue_ticket(&app.upstream, &l.t, &l.c, &login, &identity).await
            {
                Ok(t) => t,
                Err(e) => return flows::store_unavailable(&e),
            };
            tracing::info!(reason = "local.password_ok", tenant = %l.t, connection = %l.c);
            let mut url = app.upstream.public(&l.path("callback"));
            url.query_pairs_mut()
                .append_pair("state", &login)
                .append_pair("ticket", &ticket);
            Redirect::to(url.as_str()).into_response()
        }
        Ok(SignInStep::Ask(asked)) => {
            // Bound to this browser: its session holds the secret whose
            // hash the waiting challenge keeps; failing to store it, fail closed.
            if let Err(e) = session
                .insert(CHALLENGE_SESSION_FIELD, asked.browser_secret.expose())
                .await
            {
                tracing::error!(reason = "session.save_failed", error = %e, tenant = %l.t, connection = %l.c);
                return flows::store_unavailable(&e);
            }
            show_challenge(app, session, l, &asked).await
        }
        Err(e) => {
            let reason = e.reason();
            if matches!(e, LocalError::Refused { .. } | LocalError::Hook(_)) {
                crate::meter::sign_in_failed(l.t.as_str(), l.c.as_str(), reason);
                app.provider
                    .audit
                    .security(crate::audit::AuditEvent::signin_failed(
                        &l.t,
                        Some(l.c.as_str()),
                        reason,
                    ))
                    .await;
            }
            refused(app, session, l, Kind::SignIn, e, form).await
        }
    }
}

/// The CSRF purpose of the challenge form.
const CHALLENGE_CSRF: &str = "local.challenge";

/// The page of a custom challenge: its public parameters as text (a
/// `question` or `prompt` as the introduction, a `hint` under the answer
/// field, any other as a list), the answer field, the one-time handle, the
/// CSRF token. The private parameters never reach it.
async fn show_challenge(app: &AppState, session: &Session, l: &Local, asked: &Asked) -> Response {
    let csrf = match issue_csrf(session, CHALLENGE_CSRF).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut public = asked.public.clone();
    let intro = public
        .remove("question")
        .or_else(|| public.remove("prompt"))
        .unwrap_or_else(|| "Answer this check to finish signing in.".to_owned());
    let hint = public.remove("hint");
    let mut answer = Field {
        name: "answer",
        label: "Your answer",
        kind: "text",
        autocomplete: "off",
        inputmode: "",
        required: true,
        value: String::new(),
        hint,
        error: None,
    };
    let (error, reason) = if asked.after_wrong_answer {
        let m = "That answer is not right. Please answer this check.".to_owned();
        answer.error = Some(m.clone());
        (Some(m), Some("challenge.wrong_answer".to_owned()))
    } else {
        (None, None)
    };
    let mut hidden = vec![("handle".to_owned(), asked.handle.clone())];
    hidden.push(("login".to_owned(), asked.login.clone()));
    let page = LocalPage {
        stylesheet: app.upstream.public("portal/portal.css").to_string(),
        title: "One more step".to_owned(),
        tenant_name: l.tenant_name.clone(),
        intro: Some(intro),
        notice: None,
        error,
        reason,
        action: l.path("challenge"),
        csrf,
        hidden,
        fields: vec![answer],
        details: public.into_iter().collect(),
        submit: "Continue".to_owned(),
        links: vec![(l.url(app, "sign-in"), "Start the sign-in again".to_owned())],
    };
    // The answer redirects through the callback to the app.
    let onward = app
        .broker
        .pending_redirect_uri(&l.t, &l.c, &asked.login)
        .await
        .ok()
        .flatten();
    let status = if asked.after_wrong_answer {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(app, status, &page, onward.as_deref())
}

/// The answer to a custom challenge.
async fn challenge(
    State(app): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    let l = match resolve(&app, &tenant, &connection, form.get("login")).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let reason = match check_csrf(&session, CHALLENGE_CSRF, form.get(CSRF_FIELD).map(String::as_str)).await {
        Ok(Csrf::Valid) => None,
        Ok(Csrf::Missing) => Some("local.csrf_missing"),
        Ok(Csrf::Mismatch) => Some("local.csrf_mismatch"),
        Err(r) => return r,
    };
    if let Some(reason) = reason {
        tracing::warn!(reason, tenant = %l.t, connection = %l.c, "challenge form refused");
        return show(
            &app,
            &session,
            &l,
            Kind::SignIn,
            StatusCode::FORBIDDEN,
            Say::error(
                "This form has expired or was not sent from this page. Please sign in again.",
                reason,
                None,
            ),
            &form,
        )
        .await;
    }
    let browser = match session.get::<String>(CHALLENGE_SESSION_FIELD).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(reason = "session.save_failed", error = %e, tenant = %l.t, connection = %l.c);
            return flows::store_unavailable(&e);
        }
    };
    let step = app
        .accounts
        .answer_challenge(
            &l.t,
            &l.c,
            &field(&form, "handle"),
            browser.as_deref(),
            &field(&form, "answer"),
        )
        .await;
    signed_in_or_asked(&app, &session, &l, step, &form).await
}

async fn callback(
    State(app): State<Arc<AppState>>,
    session: Session,
    headers: axum::http::HeaderMap,
    fresh: Option<axum::Extension<crate::tenant::FreshTenant>>,
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
    let fresh = fresh.map(|e| e.0);
    flows::complete(
        &app,
        &session,
        &headers,
        &tenant,
        &connection,
        params,
        fresh.as_ref(),
        None,
    )
    .await
}

/// A local page's kind as a const parameter, so one GET and one POST
/// handler serve every form page (`show_page::<SIGN_UP>`...).
const SIGN_UP: u8 = 1;
const CONFIRM: u8 = 2;
const RESEND: u8 = 3;
const FORGOT: u8 = 4;
const RESET: u8 = 5;
const CHANGE: u8 = 6;

impl Kind {
    fn of(k: u8) -> Self {
        match k {
            SIGN_UP => Self::SignUp,
            CONFIRM => Self::Confirm,
            RESEND => Self::Resend,
            FORGOT => Self::Forgot,
            RESET => Self::Reset,
            CHANGE => Self::Change,
            _ => Self::SignIn,
        }
    }
}

/// `GET` of a form page (with the one-time message a redirect left for it).
async fn show_page<const K: u8>(
    State(app): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleQuery(q): SingleQuery,
) -> Response {
    page_get(&app, &session, &tenant, &connection, q, Kind::of(K)).await
}

/// `POST` of a form page: connection and CSRF check, the accounts domain,
/// then Post/Redirect/Get: success answers 303 to the next page (its
/// message kept for it in the session, once), so a reload or "back" never
/// sends the form again; a refusal shows the form again with its status
/// (400/401/403/429...) and reason code.
async fn submit<const K: u8>(
    State(app): State<Arc<AppState>>,
    session: Session,
    Path((tenant, connection)): Path<(String, String)>,
    SingleForm(form): SingleForm,
) -> Response {
    let kind = Kind::of(K);
    let l = match post_prelude(&app, &session, &tenant, &connection, &form, kind).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let account = if kind == Kind::Change {
        match signed_in_account(&app, &session, &l).await {
            Ok(a) => a,
            Err(r) => return r,
        }
    } else {
        None
    };
    // The browser's sign-up secret: made (once per browser session) where
    // an account is signed up, shown again where one is confirmed
    // (`LocalUser::signed_up_in`).
    let browser = match kind {
        Kind::SignUp | Kind::Confirm => match sign_up_browser(&session, kind == Kind::SignUp).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(reason = "session.save_failed", error = %e, tenant = %l.t, connection = %l.c);
                return flows::store_unavailable(&e);
            }
        },
        _ => None,
    };
    match act(&app, &l, kind, &form, account.as_ref(), browser.as_ref()).await {
        Ok(done) => {
            if done.sign_out {
                // The change ended every session of the account, this
                // browser's too: forget its id here as well.
                let mut sso = flows::load_sso(&session).await;
                sso.remove(l.t.as_str());
                if let Err(e) = session.insert(SESSION_FIELD, &sso).await {
                    return flows::session_failed(e);
                }
            }
            let flash = Flash {
                tenant: l.t.to_string(),
                connection: l.c.to_string(),
                page: done.next.page().to_owned(),
                notice: done.notice.to_owned(),
                email: done.email,
            };
            if let Err(e) = session.insert(FLASH_FIELD, &flash).await {
                return flows::session_failed(e);
            }
            tracing::info!(reason = done.reason, tenant = %l.t, connection = %l.c, page = kind.page());
            Redirect::to(&l.url(&app, done.next.page())).into_response()
        }
        Err(e) => refused(&app, &session, &l, kind, e, &form).await,
    }
}

/// What a successful form leads to.
struct Done {
    /// The page the browser is sent to.
    next: Kind,
    /// The message that page shows once.
    notice: &'static str,
    /// The address that page's form is filled with.
    email: Option<String>,
    /// The stable code logged for the success.
    reason: &'static str,
    /// Whether this browser's SSO session for the tenant ended.
    sign_out: bool,
}

impl Done {
    fn to(next: Kind, notice: &'static str, email: Option<String>, reason: &'static str) -> Self {
        Self {
            next,
            notice,
            email,
            reason,
            sign_out: false,
        }
    }
}

/// The browser-session field holding the secret of the browser that signs
/// accounts up ([`crate::local::LocalUser::signed_up_in`]).
const SIGN_UP_SESSION_FIELD: &str = "local_sign_up_browser";

/// This browser's sign-up secret, made and kept in its session when `make`
/// and there is none yet.
async fn sign_up_browser(session: &Session, make: bool) -> Result<Option<Secret>, tower_sessions::session::Error> {
    if let Some(held) = session.get::<String>(SIGN_UP_SESSION_FIELD).await? {
        return Ok(Some(Secret::new(held)));
    }
    if !make {
        return Ok(None);
    }
    let made = crate::tokens::random_token(24);
    session.insert(SIGN_UP_SESSION_FIELD, &made).await?;
    Ok(Some(Secret::new(made)))
}

/// The accounts domain's part of each form page.
async fn act(
    app: &AppState,
    l: &Local,
    kind: Kind,
    form: &Form_,
    account: Option<&SignedInAccount>,
    browser: Option<&Secret>,
) -> Result<Done, LocalError> {
    let email = field(form, "email");
    // The address the next page is filled with (never one that is not an address).
    let keep = crate::local::as_typed(&email);
    let password = secret(form, "password");
    if matches!(kind, Kind::SignUp | Kind::Reset | Kind::Change) && !password.matches(&field(form, "password_confirm"))
    {
        return Err(mismatch());
    }
    let a = &app.accounts;
    match kind {
        Kind::SignUp => {
            let profile = Profile {
                given_name: Some(field(form, "given_name")),
                family_name: Some(field(form, "family_name")),
            };
            a.sign_up(&l.t, &l.tenant_name, &l.c, &l.cfg, &email, &password, profile, browser)
                .await?;
            // The same answer whether or not the address had an account.
            Ok(Done::to(
                Kind::Confirm,
                "If this address can be used, we have sent a 6-digit code to it. Enter it below.",
                keep,
                "local.sign_up_accepted",
            ))
        }
        Kind::Confirm => {
            let user = a.confirm(&l.t, &l.c, &email, &field(form, "code"), browser).await?;
            if user.status == AccountStatus::ResetRequired {
                // Confirmed after more than one sign-up used the address,
                // or in another browser than the sign-up's: the owner, who
                // has the mailbox, chooses the password.
                a.forgot(&l.t, &l.tenant_name, &l.c, &l.cfg, &email).await?;
                return Ok(Done::to(
                    Kind::Reset,
                    "Your email address is confirmed. It was signed up in another browser or more than once, so choose your password now: we have sent a 6-digit code to it.",
                    keep,
                    "local.confirmed_reset_required",
                ));
            }
            Ok(Done::to(
                Kind::SignIn,
                "Your email address is confirmed. You can sign in now.",
                keep,
                "local.confirmed",
            ))
        }
        Kind::Resend => {
            a.resend(&l.t, &l.tenant_name, &l.c, &l.cfg, &email).await?;
            Ok(Done::to(
                Kind::Confirm,
                "If this address has an account waiting for confirmation, we have sent a new code to it.",
                keep,
                "local.resend_accepted",
            ))
        }
        Kind::Forgot => {
            a.forgot(&l.t, &l.tenant_name, &l.c, &l.cfg, &email).await?;
            Ok(Done::to(
                Kind::Reset,
                "If this address has an account, we have sent a 6-digit code to it.",
                keep,
                "local.forgot_accepted",
            ))
        }
        Kind::Reset => {
            let user = a
                .reset(&l.t, &l.c, &l.cfg, &email, &field(form, "code"), &password)
                .await?;
            // Whoever knew the old password is signed out everywhere, and
            // the tokens issued before are refused (`token.credentials_reset`).
            app.broker
                .revoke_local_account_after_change(&l.t, &l.c, &user.subject)
                .await?;
            Ok(Done::to(
                Kind::SignIn,
                "Your password has been changed. You can sign in with it now.",
                keep,
                "local.password_reset",
            ))
        }
        Kind::Change => {
            // Where the tenant's sign-in asks its custom-challenge hook, a
            // password alone does not change the password (which would sign
            // its owner out everywhere and lock them out): only from a
            // session, which passed the challenge, or by "Forgot password".
            // Refused before the password is looked at.
            if account.is_none() {
                if let Some(hooks) = &app.provider.hooks {
                    if hooks
                        .get(&l.t, crate::hooks::HookKind::CustomChallenge)
                        .await?
                        .is_some()
                    {
                        tracing::warn!(reason = "local.change_needs_challenge", tenant = %l.t, connection = %l.c, "password change without a session refused");
                        return Err(LocalError::Refused {
                            reason: "local.change_needs_challenge",
                            message: "Sign in first (your organization asks an extra question at sign-in) and change your password then, or use \"Forgot password\".",
                            retry_after: None,
                        });
                    }
                }
            }
            // Signed in: the session's account, whatever the form says.
            let email = account.map_or(email, |s| s.email.clone());
            let user = a
                .check_password_change(&l.t, &l.c, &l.cfg, &email, &secret(form, "current_password"), &password)
                .await?;
            if account.is_some_and(|s| s.subject != user.subject) {
                // The account behind the address is not the session's
                // (deleted and created again meanwhile): nothing changes.
                return Err(LocalError::Refused {
                    reason: "local.session_account_changed",
                    message: "Your session no longer matches this account. Please sign in again.",
                    retry_after: None,
                });
            }
            // An account with a second factor is not changed by its password
            // alone (which would sign its owner out everywhere and lock them
            // out): only from a session that passed the second factor, or
            // by "Forgot password" (the mailbox).
            if !account.is_some_and(|s| s.mfa)
                && app
                    .broker
                    .local_account_has_second_factor(&l.t, &l.c, &user.subject)
                    .await?
            {
                tracing::warn!(reason = "local.change_needs_second_factor", tenant = %l.t, connection = %l.c, "password change refused");
                return Err(LocalError::Refused {
                    reason: "local.change_needs_second_factor",
                    message: "This account has a second factor. Sign in with it first and change your password then, or use \"Forgot password\".",
                    retry_after: None,
                });
            }
            let user = a.set_changed_password(&l.t, &l.c, &user, &password).await?;
            // Every session and refresh family of the account ends, this
            // browser's included, and earlier tokens are refused: signing
            // in again with the new password is the proof it works.
            app.broker
                .revoke_local_account_after_change(&l.t, &l.c, &user.subject)
                .await?;
            Ok(Done {
                sign_out: account.is_some(),
                ..Done::to(
                    Kind::SignIn,
                    "Your password has been changed. Sign in with the new password.",
                    Some(user.email),
                    "local.password_changed",
                )
            })
        }
        Kind::SignIn => Err(LocalError::Refused {
            reason: "local.bad_request",
            message: "This form cannot be sent here.",
            retry_after: None,
        }),
    }
}

/// The local account this browser is signed in with on `l`'s connection
/// (its SSO session for the tenant, through that connection, of a user
/// that is still active and whose account still exists), if any.
struct SignedInAccount {
    email: String,
    subject: String,
    /// The session's sign-in passed a second factor.
    mfa: bool,
}

async fn signed_in_account(app: &AppState, session: &Session, l: &Local) -> Result<Option<SignedInAccount>, Response> {
    let sso = flows::load_sso(session).await;
    let found = async {
        let Some(s) = crate::broker::session::load(&app.store, &sso, &l.t).await? else {
            return Ok(None);
        };
        if s.connection != l.c {
            return Ok(None);
        }
        let Ok(user) = app.provider.directory.active(&l.t, &s.sub).await? else {
            return Ok(None);
        };
        let Some(email) = user.email.as_deref() else {
            return Ok(None);
        };
        Ok::<_, crate::store::StoreError>(
            app.accounts
                .get(&l.t, &l.c, email)
                .await?
                .filter(|a| a.subject == user.upstream_subject)
                .map(|a| SignedInAccount {
                    email: a.email,
                    subject: a.subject,
                    mfa: s.mfa,
                }),
        )
    };
    found.await.map_err(|e| flows::store_unavailable(&e))
}

/// The key of [`Flash`] in the browser session.
const FLASH_FIELD: &str = "local.flash";

/// A message a successful form leaves for the page it redirects to, shown
/// once (taken on that page's GET), with the address to fill in.
#[derive(serde::Serialize, serde::Deserialize)]
struct Flash {
    tenant: String,
    connection: String,
    page: String,
    notice: String,
    email: Option<String>,
}

/// Takes the message left for `kind` on `l`, if any (one left for another
/// page is dropped too: it was never followed).
async fn take_flash(session: &Session, l: &Local, kind: Kind) -> Option<Flash> {
    let flash = match session.remove::<Flash>(FLASH_FIELD).await {
        Ok(f) => f,
        // Unreadable: as if none (it only carries a message).
        Err(e) => {
            tracing::warn!(reason = "local.flash_unreadable", error = %e, tenant = %l.t, connection = %l.c);
            None
        }
    };
    flash.filter(|f| f.tenant == l.t.as_str() && f.connection == l.c.as_str() && f.page == kind.page())
}
