//! Browser flows: turning broker outcomes into responses, the IdP callbacks
//! (OIDC redirect, SAML ACS and its same-site continuation), SAML SP
//! metadata, the choosers, and the single-use CSRF tokens of our own forms.

use super::binding;
use super::pages::{self, esc};
use super::pairs::FormPairs;
use super::AppState;
use crate::broker::session::{remember_login, BrowserLogins, BrowserSso, LOGINS_FIELD, SESSION_FIELD};
use crate::broker::{Confirmation, Outcome, PrefetchedCallback, ToConfirm};
use crate::ids::{ConnectionId, TenantId};
use crate::tenant::FreshTenant;
use crate::upstream::{CallbackParams, ConnectionKind, UpstreamRedirect};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
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

/// The answer when the browser's session could not be read or written on a
/// security path (cycling the id, storing a binding, ending a session): the
/// request fails closed.
pub fn session_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!(reason = "session.save_failed", error = %e, "browser session could not be saved");
    pages::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Your browser session could not be saved. Please try again in a moment.",
        "session.save_failed",
    )
}

/// The 503 page of a browser route whose store read failed: the detail is
/// logged, never sent (the edge adds `Retry-After`).
pub fn store_unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(reason = "store.unavailable", error = %e, "store unavailable");
    pages::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The sign-in service could not reach its storage. Please try again in a moment.",
        "store.unavailable",
    )
}

/// The form field carrying a CSRF token on Portcullis's own forms.
pub const CSRF_FIELD: &str = "csrf";

/// What a presented CSRF token turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Csrf {
    /// It matches the one this browser's session holds.
    Valid,
    /// The form carried none.
    Missing,
    /// It does not match (or the session holds none).
    Mismatch,
}

fn csrf_key(purpose: &str) -> String {
    format!("csrf:{purpose}")
}

/// Issues a fresh CSRF token for a form of `purpose` and keeps it in the
/// browser's session (replacing any earlier one of that purpose).
pub async fn issue_csrf(session: &Session, purpose: &str) -> Result<String, Response> {
    let token = crate::tokens::random_token(32);
    session
        .insert(&csrf_key(purpose), &token)
        .await
        .map_err(session_failed)?;
    Ok(token)
}

/// Checks a presented CSRF token against the session's, in constant time,
/// and consumes the session's token whatever the result (single use).
pub async fn check_csrf(session: &Session, purpose: &str, presented: Option<&str>) -> Result<Csrf, Response> {
    let expected = session
        .remove::<String>(&csrf_key(purpose))
        .await
        .map_err(session_failed)?;
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return Ok(Csrf::Missing);
    };
    let ok = expected.is_some_and(|e| {
        use subtle::ConstantTimeEq;
        e.as_bytes().ct_eq(presented.as_bytes()).into()
    });
    Ok(if ok { Csrf::Valid } else { Csrf::Mismatch })
}

/// The form-action sources of a page of ours whose form leads, through
/// redirects, to `onward` (browsers check form-action on redirects too).
pub(crate) fn own_form_action(state: &AppState, onward: &[&url::Url]) -> Vec<String> {
    let mut sources = vec!["'self'".to_owned()];
    sources.extend(pages::origin_source(&state.upstream.public_url));
    sources.extend(onward.iter().filter_map(|u| pages::origin_source(u)));
    sources.dedup();
    sources
}

/// Maps a broker outcome to a response.
pub fn respond(state: &AppState, outcome: Outcome) -> Response {
    match outcome {
        Outcome::App(url) | Outcome::Continue(url) | Outcome::SecondFactor { url, .. } => {
            Redirect::to(url.as_str()).into_response()
        }
        Outcome::Upstream {
            redirect: UpstreamRedirect::Redirect(url),
            ..
        } => Redirect::to(url.as_str()).into_response(),
        Outcome::Upstream {
            redirect: UpstreamRedirect::PostForm { action, fields },
            ..
        } => pages::auto_post(&action, &fields),
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
            pages::page(StatusCode::OK, "Choose a sign-in method", &body, &[])
        }
        Outcome::ConfirmSignIn(_) => {
            // Only the SAML continuation produces it, and answers it itself
            // (the page needs the session for its CSRF token).
            tracing::error!(
                reason = "http.unexpected_outcome",
                "a sign-in confirmation reached the generic mapper"
            );
            pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                "Something went wrong on our side. Please start again from the application.",
                "http.unexpected_outcome",
            )
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
    // The form leads to /authorize, which redirects to whichever IdP the
    // email's tenant uses, or back to the app: https IdPs, and the app.
    let app = params.get("redirect_uri").and_then(|u| url::Url::parse(u).ok());
    let mut sources = own_form_action(state, &app.iter().collect::<Vec<_>>());
    sources.push("https:".to_owned());
    // A plain-http gateway (development, tests) has plain-http IdPs too.
    if state.upstream.public_url.scheme() == "http" {
        sources.push("http:".to_owned());
    }
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    pages::page(StatusCode::OK, "Sign in", &body, &sources)
}

/// Keeps the secret a sign-in waiting for its second factor is bound to in
/// the browser's session (mfa); failing to, the request fails closed.
pub async fn remember_second_factor(session: &Session, outcome: &Outcome) -> Result<(), Response> {
    if let Outcome::SecondFactor { secret, .. } = outcome {
        session
            .insert(crate::broker::second_factor::MFA_SESSION_FIELD, secret)
            .await
            .map_err(session_failed)?;
    }
    Ok(())
}

/// Keeps the browser's session in step after a sign-in step: a new SSO
/// session gets a fresh session id (a planted cookie cannot be fixated).
/// Any failure fails the request closed.
pub async fn keep_session(session: &Session, sso: &BrowserSso, sso_before: &BrowserSso) -> Result<(), Response> {
    keep_session_after(session, false, sso, sso_before, None).await
}

/// What the browser session's work alongside a sign-in came to
/// ([`session_alongside`]): each part not run (no SSO session opened), run,
/// or failed (the error, logged by [`session_failed`] when answered).
#[derive(Default)]
pub struct SessionWork {
    /// The id cycle: whether the session had a stored record to cycle.
    cycled: std::sync::OnceLock<Result<bool, String>>,
    /// The save of the session naming the new SSO session.
    saved: std::sync::OnceLock<Result<(), String>>,
}

impl SessionWork {
    /// Whether the session's id is fresh after the sign-in (cycled, or
    /// saved under a new id), or why it failed (the caller answers
    /// [`session_failed`]).
    fn fresh_id(self) -> Result<bool, String> {
        let cycled = self.cycled.into_inner().unwrap_or(Ok(false))?;
        let saved = self.saved.into_inner().transpose()?.is_some();
        Ok(cycled || saved)
    }
}

/// Records `outcome` in `slot`, set only here, once per request.
fn record<T>(slot: &std::sync::OnceLock<Result<T, String>>, outcome: Result<T, String>) {
    if slot.set(outcome).is_err() {
        // Unreachable, but never silent.
        tracing::error!(reason = "session.save_failed", "browser session work recorded twice");
    }
}

/// The work the broker runs alongside opening an SSO session
/// ([`crate::broker::Alongside`]), only when a session opens (a refused
/// answer leaves the browser's session as it was):
/// - with the new SSO session's writes, the id of the browser's session is
///   cycled if it has a stored record, so the old record's delete shares
///   their wait (a session with no stored record gets a fresh id when
///   first saved anyway);
/// - once they succeeded, the browser's session is saved naming the new
///   SSO session, in the same wait as the sign-in's audit event, instead
///   of by the session layer after the handler (which then finds the
///   record unchanged and skips it: `store::session::request_scope`).
///
/// The outcomes land in `work`. Call after the session was read (the
/// record is loaded); the broker does not touch the browser's session.
pub fn session_alongside<'a>(session: &'a Session, work: &'a SessionWork) -> crate::broker::Alongside<'a> {
    crate::broker::Alongside {
        with_writes: Box::pin(async move {
            let outcome = if session.id().is_none() {
                Ok(false)
            } else {
                session.cycle_id().await.map(|()| true).map_err(|e| e.to_string())
            };
            record(&work.cycled, outcome);
        }),
        once_stored: Box::new(move |sso: BrowserSso| {
            Box::pin(async move {
                let outcome = async {
                    session.insert(SESSION_FIELD, &sso).await?;
                    session.save().await
                }
                .await
                .map_err(|e| e.to_string());
                record(&work.saved, outcome);
            })
        }),
    }
}

/// [`keep_session`] when the id may already be fresh in this request
/// ([`session_alongside`]): a new SSO session then needs no second cycle.
/// A session with no stored record (none was sent, or the one named is
/// gone: the id is `None` once read) is not cycled: it gets a fresh id when
/// first saved, and a delete of a random id would only cost a wait. Call
/// after the session was read. `logins`: the session's list of login
/// bindings (an earlier version's, [`binding`]) when one of them was used.
async fn keep_session_after(
    session: &Session,
    cycled: bool,
    sso: &BrowserSso,
    sso_before: &BrowserSso,
    logins: Option<&BrowserLogins>,
) -> Result<(), Response> {
    if sso != sso_before {
        if !cycled && session.id().is_some() {
            session.cycle_id().await.map_err(session_failed)?;
        }
        session.insert(SESSION_FIELD, sso).await.map_err(session_failed)?;
    }
    if let Some(logins) = logins {
        session.insert(LOGINS_FIELD, logins).await.map_err(session_failed)?;
    }
    Ok(())
}

/// Completes a login at a top-level GET callback (OIDC, dev IdP) and keeps the
/// browser's session and bindings cookie in step.
#[allow(clippy::too_many_arguments)]
pub async fn complete(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    tenant: &str,
    connection: &str,
    params: CallbackParams,
    fresh: Option<&FreshTenant>,
    prefetched: Option<&PrefetchedCallback>,
) -> Response {
    let mut sso = load_sso(session).await;
    let presented = binding::Presented::new(state, headers, load_logins(session).await);
    let mut logins = presented.all();
    let sso_before = sso.clone();
    // The session id is cycled alongside the new session's writes, and the
    // session saved once they succeeded.
    let work = SessionWork::default();
    let outcome = state
        .broker
        .complete_alongside(
            tenant,
            connection,
            params,
            &mut sso,
            &mut logins,
            fresh,
            Some(session_alongside(session, &work)),
            prefetched,
        )
        .await;
    let cycled = match work.fresh_id() {
        Ok(c) => c,
        Err(e) => return session_failed(e),
    };
    let settled = presented.settle(&logins);
    if let Err(r) = keep_session_after(session, cycled, &sso, &sso_before, settled.session.as_ref()).await {
        return r;
    }
    if let Err(r) = remember_second_factor(session, &outcome).await {
        return r;
    }
    settled.respond(state, respond(state, outcome))
}

/// The login bindings an earlier version kept in the browser's session
/// ([`binding`]).
async fn load_logins(session: &Session) -> BrowserLogins {
    session
        .get::<BrowserLogins>(LOGINS_FIELD)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Answers `outcome` of `/authorize`; a login sent upstream has its browser
/// binding added to the browser's bindings cookie ([`binding`]), which a
/// step that cannot hand it over fails closed.
pub fn respond_binding(state: &AppState, headers: &HeaderMap, outcome: Outcome) -> Response {
    let added = match &outcome {
        Outcome::Upstream {
            binding: Some((id, secret)),
            ..
        } => {
            let mut logins = binding::from_cookie(state, headers);
            remember_login(&mut logins, id.clone(), secret.clone());
            Some(logins)
        }
        _ => None,
    };
    let resp = respond(state, outcome);
    match added {
        Some(logins) => binding::hand_over(state, &logins, resp),
        None => resp,
    }
}

/// The refusal of an IdP callback or continuation whose query names a
/// parameter twice (which of the two would count is ambiguous).
fn duplicate_parameter() -> Response {
    pages::error_page(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        "A parameter appears more than once.",
        "callback.duplicate_parameter",
    )
}

/// `GET /oidc/{tenant}/{connection}/callback`
pub async fn oidc_callback(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    fresh: Option<Extension<FreshTenant>>,
    prefetched: Option<Extension<Arc<PrefetchedCallback>>>,
    Path((tenant, connection)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let Ok(query) = super::oauth::single_valued(query) else {
        return duplicate_parameter();
    };
    let params = CallbackParams {
        query,
        form: BTreeMap::new(),
    };
    let fresh = fresh.map(|e| e.0);
    let prefetched = prefetched.map(|e| e.0);
    complete(
        &state,
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

/// `POST /saml/{tenant}/{connection}/acs` (HTTP-POST binding). Reached by a
/// cross-site form post without the SameSite=Lax cookie, and outside the
/// session layer: it validates the answer, keeps it under a one-time handle
/// and sends the browser (303) to [`saml_continue`], never touching the
/// browser's session.
pub async fn saml_acs(
    State(state): State<Arc<AppState>>,
    fresh: Option<Extension<FreshTenant>>,
    prefetched: Option<Extension<Arc<PrefetchedCallback>>>,
    Path((tenant, connection)): Path<(String, String)>,
    FormPairs(form): FormPairs,
) -> Response {
    let Ok(form) = super::oauth::single_valued(form) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "A form field appears more than once.",
            "saml.duplicate_field",
        );
    };
    let prefetched = prefetched.map(|e| e.0);
    let params = CallbackParams {
        query: BTreeMap::new(),
        form,
    };
    let fresh = fresh.map(|e| e.0);
    respond(
        &state,
        state
            .broker
            .accept_post(&tenant, &connection, params, fresh.as_ref(), prefetched.as_deref())
            .await,
    )
}

/// `GET /saml/{tenant}/{connection}/continue?handle=…`: the same-site step
/// after the ACS, with the session cookie. The browser binding is checked
/// here, and only here the SSO session is opened and the code issued.
pub async fn saml_continue(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Path((tenant, connection)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let Ok(query) = super::oauth::single_valued(query) else {
        return duplicate_parameter();
    };
    let handle = query.get("handle").map(String::as_str).unwrap_or_default();
    let asked = Confirmation::NotAsked;
    resume(&state, &session, &headers, &tenant, &connection, handle, asked).await
}

/// `POST /saml/{tenant}/{connection}/continue`: the person's answer on the
/// confirmation page of an IdP-initiated sign-in, to continue or cancel.
/// Refused without the form's CSRF token; a refusal or a cancel ends the
/// waiting sign-in, with no session and no code.
pub async fn saml_continue_confirmed(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    Path((tenant, connection)): Path<(String, String)>,
    FormPairs(form): FormPairs,
) -> Response {
    let Ok(form) = super::oauth::single_valued(form) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "A form field appears more than once.",
            "callback.duplicate_parameter",
        );
    };
    let handle = form.get("handle").map(String::as_str).unwrap_or_default();
    let refused = match check_csrf(&session, CONFIRM_CSRF, form.get(CSRF_FIELD).map(String::as_str)).await {
        Ok(Csrf::Valid) => None,
        Ok(Csrf::Missing) => Some("callback.csrf_missing"),
        Ok(Csrf::Mismatch) => Some("callback.csrf_mismatch"),
        Err(r) => return r,
    };
    if let Some(reason) = refused {
        // The broker logs and audits the refusal. A store failure there was
        // logged too; the refusal stands either way.
        let _logged = state.broker.end_continuation(&tenant, handle, reason).await;
        return pages::error_page(
            StatusCode::FORBIDDEN,
            "Sign-in not confirmed",
            "This confirmation did not come from the page Portcullis showed in this browser. Nobody was signed in. Please start again.",
            reason,
        );
    }
    // Only an explicit continue (or a page from before the cancel button,
    // which only had it) continues; anything else is a cancel.
    if !matches!(form.get(DECISION_FIELD).map(String::as_str), None | Some(CONTINUE)) {
        let reason = "callback.unsolicited_cancelled";
        return match state.broker.end_continuation(&tenant, handle, reason).await {
            Ok(()) => pages::error_page(
                StatusCode::OK,
                "Sign-in cancelled",
                "Nobody was signed in, and whoever this browser was signed in as before, it still is. You can close this page.",
                reason,
            ),
            Err(o) => respond(&state, o),
        };
    }
    let asked = Confirmation::Continue;
    resume(&state, &session, &headers, &tenant, &connection, handle, asked).await
}

/// The CSRF purpose of the confirmation form of an IdP-initiated sign-in:
/// `switch`, from when it only confirmed a switch of user, so a page an
/// earlier version showed still confirms.
const CONFIRM_CSRF: &str = "switch";

/// The confirmation form's field saying whether the person continues or cancels.
const DECISION_FIELD: &str = "decision";

/// The [`DECISION_FIELD`] value of the continue button.
const CONTINUE: &str = "continue";

/// The [`DECISION_FIELD`] value of the cancel button.
const CANCEL: &str = "cancel";

async fn resume(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    tenant: &str,
    connection: &str,
    handle: &str,
    confirmation: Confirmation,
) -> Response {
    // The browser's session read and the one-time handle taken together
    // (one store wait); nothing is decided before both are in.
    let ((mut sso, in_session), taken) = tokio::join!(
        async { (load_sso(session).await, load_logins(session).await) },
        state.broker.take_continuation(tenant, handle)
    );
    let presented = binding::Presented::new(state, headers, in_session);
    let mut logins = presented.all();
    let sso_before = sso.clone();
    // The session id is cycled alongside the new session's writes, and the
    // session saved once they succeeded.
    let work = SessionWork::default();
    let outcome = state
        .broker
        .resume_taken(
            tenant,
            connection,
            taken,
            confirmation,
            &mut sso,
            &mut logins,
            Some(session_alongside(session, &work)),
        )
        .await;
    let cycled = match work.fresh_id() {
        Ok(c) => c,
        Err(e) => return session_failed(e),
    };
    let settled = presented.settle(&logins);
    if let Err(r) = keep_session_after(session, cycled, &sso, &sso_before, settled.session.as_ref()).await {
        return r;
    }
    if let Err(r) = remember_second_factor(session, &outcome).await {
        return r;
    }
    let resp = match outcome {
        Outcome::ConfirmSignIn(ask) => match confirmation_page(state, session, ask).await {
            Ok(page) => page,
            Err(r) => return r,
        },
        other => respond(state, other),
    };
    settled.respond(state, resp)
}

/// The confirmation page of an IdP-initiated sign-in: names the
/// organization, the app and the identity, and asks to continue or cancel
/// (two forms carrying the handle and one single-use CSRF token of this
/// browser's session, issued here).
async fn confirmation_page(state: &AppState, session: &Session, ask: ToConfirm) -> Result<Response, Response> {
    let csrf = issue_csrf(session, CONFIRM_CSRF).await?;
    let action = state
        .upstream
        .public(&format!("saml/{}/{}/continue", ask.tenant, ask.connection));
    let (w, o, n) = (esc(&ask.who), esc(&ask.organization), esc(&ask.app_name));
    let t = esc(ask.tenant.as_str());
    let (title, question) = if ask.replaces {
        (
            "Switch user?",
            format!(
                "<h1>Switch user?</h1><p>This browser is already signed in to <strong>{o}</strong> \
(<code>{t}</code>) as another user. The identity provider of <strong>{o}</strong> is now signing it in to \
<strong>{n}</strong> as <strong>{w}</strong>.</p>\
<p>Continue only if you started this sign-in yourself. Otherwise cancel: you stay signed in as before.</p>"
            ),
        )
    } else {
        (
            "Continue signing in?",
            format!(
                "<h1>Continue signing in?</h1><p>The identity provider of <strong>{o}</strong> \
(<code>{t}</code>) is signing this browser in to <strong>{n}</strong> as <strong>{w}</strong>.</p>\
<p>Continue only if you started this sign-in yourself and this is your account. \
Otherwise cancel: nobody is signed in.</p>"
            ),
        )
    };
    // `label` is HTML: its one dynamic part is escaped above.
    let form = |id: &str, decision: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{a}\" id=\"{id}\"><input type=\"hidden\" name=\"handle\" value=\"{h}\">\
<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{c}\"><input type=\"hidden\" name=\"{DECISION_FIELD}\" value=\"{decision}\">\
<button type=\"submit\">{label}</button></form>",
            a = esc(action.as_str()),
            h = esc(&ask.handle),
            c = esc(&csrf),
        )
    };
    let body = format!(
        "{question}{}{}",
        form("confirm", CONTINUE, &format!("Continue as {w}")),
        form("cancel", CANCEL, "Cancel"),
    );
    // After the continue POST the browser goes on to the default app.
    let app = url::Url::parse(&ask.app).ok();
    let sources = own_form_action(state, &app.iter().collect::<Vec<_>>());
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    Ok(pages::page(StatusCode::OK, title, &body, &sources))
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
        Err(e) => return store_unavailable(&e),
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

/// Anything the router does not know: a POST to a migrated connection's ACS
/// URL (an alias path kept from another provider, looked up in the store)
/// goes to the same ACS handler as the canonical path; the rest is a 404.
pub async fn fallback(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    if req.method() != axum::http::Method::POST {
        return not_found().await;
    }
    let path = req.uri().path().to_owned();
    let (tenant, connection) = match state.tenants.acs_alias(&path).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found().await,
        Err(e) => return store_unavailable(&e),
    };
    tracing::debug!(reason = "saml.acs_alias", tenant = %tenant, connection = %connection, "ACS alias path");
    crate::telemetry::tag_span(tenant.as_str(), Some(connection.as_str()));
    let mut resp = match <FormPairs as axum::extract::FromRequest<()>>::from_request(req, &()).await {
        Ok(form) => {
            saml_acs(
                State(state),
                None,
                None,
                Path((tenant.to_string(), connection.to_string())),
                form,
            )
            .await
        }
        Err(e) => e.into_response(),
    };
    // Measured as the ACS it is, not as an unmatched path.
    resp.extensions_mut()
        .insert(super::metrics::RouteLabel(super::metrics::ACS_ROUTE));
    resp
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
