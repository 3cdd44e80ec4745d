//! The setup portal: a tenant's IT admin, holding a setup link, connects
//! their IdP step by step (choose the protocol and IdP, see the values to
//! enter, give the metadata, test, activate) and sees the tenant's recent
//! failed sign-ins. Server-rendered (askama templates under
//! `templates/portal/`, auto-escaped), usable without JavaScript.
//!
//! An edge module like `http/` and `admin/`: it knows axum, and calls the
//! same setup code as the admin API (`tenant::setup`) and the broker (test
//! sign-ins). A portal session (its own cookie, see [`links`]) reaches only
//! its own tenant; every form carries the session's CSRF token.

mod domains;
pub mod guides;
pub mod links;

use crate::http::{flows, pages, AppState};
use crate::ids::{ConnectionId, TenantId};
use crate::tenant::IssuerChange;
use crate::upstream::{Connection, ConnectionKind, ConnectionStatus};
use askama::Template;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use links::{LinkError, LinkKind, NoSession, PortalSession, SetupLinks};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The portal session cookie's name.
pub const COOKIE: &str = "portcullis_portal";

/// The largest metadata document accepted from a form or file.
const MAX_METADATA_BYTES: usize = 256 * 1024;

const STYLESHEET: &str = include_str!("../../templates/portal/portal.css");

/// The portal's routes (`/setup/{token}`, `/portal/...`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/setup/{token}", get(show_link).post(open_link))
        .route("/portal", get(start))
        .route("/portal/portal.css", get(stylesheet))
        .route("/portal/values", get(values))
        .route("/portal/connections", post(create))
        .route("/portal/connections/{cid}", get(connection))
        .route("/portal/connections/{cid}/test", post(test))
        .route("/portal/connections/{cid}/activate", post(activate))
        .route("/portal/failures", get(failures))
        .route("/portal/domains", get(domains::page).post(domains::claim))
        .route("/portal/domains/{domain}/verify", post(domains::verify))
        .route("/portal/domains/{domain}/connections", post(domains::assign))
        .route("/portal/logout", post(logout))
}

fn links(s: &AppState) -> SetupLinks {
    SetupLinks::new(s.store.clone(), s.provider.clock.clone())
}

/// The policy of a portal page: the portal's stylesheet (by exact URL), the
/// tenant's logo (https images), forms to the portal only.
/// `onward`: where a form's redirect may lead (browsers check form-action
/// on redirects too), e.g. the IdP a test sign-in goes to.
fn portal_csp(s: &AppState, onward: &[String]) -> String {
    let css = s.upstream.public("portal/portal.css");
    let own = s.upstream.public("portal/");
    let mut form_action = vec![own.as_str().replace(';', "%3B")];
    form_action.extend(onward.iter().map(|o| o.replace(';', "%3B")));
    format!(
        "default-src 'none'; style-src {}; img-src https:; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        css.as_str().replace(';', "%3B"),
        form_action.join(" ")
    )
}

fn render(s: &AppState, status: StatusCode, t: &impl Template) -> Response {
    render_to(s, status, t, &[])
}

fn render_to(s: &AppState, status: StatusCode, t: &impl Template, onward: &[String]) -> Response {
    match t.render() {
        Ok(html) => {
            let mut resp = (status, pages::no_store(), Html(html)).into_response();
            if let Ok(v) = HeaderValue::from_str(&portal_csp(s, onward)) {
                resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
            }
            resp
        }
        Err(e) => {
            tracing::error!(reason = "portal.render_failed", error = %e);
            pages::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The page could not be shown. Please try again.",
                "portal.render_failed",
            )
        }
    }
}

/// What every page shows in its header.
struct Chrome {
    tenant_name: String,
    logo_url: Option<String>,
    csrf: String,
}

#[derive(Template)]
#[template(path = "portal/message.html")]
struct MessagePage {
    chrome: Chrome,
    title: String,
    message: String,
    reason: String,
}

fn message(s: &AppState, status: StatusCode, title: &str, message: &str, reason: &str) -> Response {
    render(
        s,
        status,
        &MessagePage {
            chrome: Chrome {
                tenant_name: "Single sign-on setup".into(),
                logo_url: None,
                csrf: String::new(),
            },
            title: title.into(),
            message: message.into(),
            reason: reason.into(),
        },
    )
}

fn unavailable(s: &AppState, e: impl std::fmt::Display) -> Response {
    tracing::error!(reason = "store.unavailable", error = %e, "portal store failure");
    message(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The setup portal could not reach its storage. Please try again in a moment.",
        "store.unavailable",
    )
}

/// A registry write that did not happen: a concurrent change won (409,
/// to be repeated after reading again), or the store failed (503).
fn not_stored(s: &AppState, e: crate::tenant::RegistryError) -> Response {
    if let crate::tenant::RegistryError::Changed(what) = &e {
        tracing::info!(reason = "portal.connection_changed", what = %what, "changed meanwhile; nothing written");
        return message(
            s,
            StatusCode::CONFLICT,
            "Changed meanwhile",
            "This connection was changed by someone else while you worked on it. Reload the page and try again.",
            "portal.connection_changed",
        );
    }
    unavailable(s, e)
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    crate::http::binding::cookie_value(headers, COOKIE).map(str::to_owned)
}

/// The portal session of the request, or the page to show instead.
async fn portal(s: &AppState, headers: &HeaderMap) -> Result<(PortalSession, Chrome), Response> {
    let session = match cookie_value(headers) {
        Some(token) => links(s).session(&token).await.map_err(|e| unavailable(s, e))?,
        None => Err(NoSession::Absent),
    };
    let session = match session {
        Ok(session) => session,
        Err(NoSession::Absent) => {
            tracing::info!(
                reason = "portal.no_session",
                "portal page without a live portal session"
            );
            return Err(message(
                s,
                StatusCode::UNAUTHORIZED,
                "Your setup session has ended",
                "Open the setup link you were sent again, or ask for a new one if it was already used.",
                "portal.no_session",
            ));
        }
        Err(NoSession::Revoked) => {
            tracing::warn!(
                reason = "portal.link_revoked",
                "portal page with a session whose setup link was revoked"
            );
            return Err(message(
                s,
                StatusCode::UNAUTHORIZED,
                "This setup link was revoked",
                "The application's operator revoked the setup link this session came from. Ask them for a new link if you still need one.",
                "portal.link_revoked",
            ));
        }
    };
    let tenant = s.tenants.get(&session.tenant).await.map_err(|e| unavailable(s, e))?;
    // A session opened for an earlier tenant under this id sees nothing of
    // the one there now.
    let tenant = tenant.filter(|t| session.is_for(&t.incarnation));
    let Some(tenant) = tenant else {
        tracing::info!(reason = "portal.tenant_gone", tenant = %session.tenant);
        return Err(message(
            s,
            StatusCode::NOT_FOUND,
            "This organization no longer exists",
            "The organization this setup link was made for has been removed.",
            "portal.tenant_gone",
        ));
    };
    // The tenant's branding, when set (the logo is https only, checked when saved).
    let branding = &tenant.settings.branding;
    let chrome = Chrome {
        tenant_name: branding.display_name.clone().unwrap_or(tenant.name.clone()),
        logo_url: branding.logo_url.clone(),
        csrf: session.csrf.clone(),
    };
    Ok((session, chrome))
}

/// Checks a form's CSRF token against the session's, in constant time.
fn csrf_ok(session: &PortalSession, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    presented.is_some_and(|p| p.as_bytes().ct_eq(session.csrf.as_bytes()).into())
}

fn csrf_refused(s: &AppState, session: &PortalSession) -> Response {
    tracing::warn!(reason = "portal.csrf_mismatch", tenant = %session.tenant);
    message(
        s,
        StatusCode::FORBIDDEN,
        "This form has expired",
        "Go back, reload the page and submit the form again.",
        "portal.csrf_mismatch",
    )
}

fn set_cookie(s: &AppState, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if s.upstream.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/portal; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The page a setup link's URL shows (`GET`, and `HEAD`): it says which
/// tenant the link sets up and opens the portal only when its button is
/// pressed (a `POST` to the same URL). Looking spends nothing, so a mail
/// scanner or a link preview that fetches the URL first leaves the link to
/// the person it was sent to. The form needs no CSRF token: the token in
/// its URL is the secret.
#[derive(Template)]
#[template(path = "portal/open.html")]
struct OpenPage {
    chrome: Chrome,
    kind: Option<&'static str>,
    expires_at: String,
}

async fn show_link(State(s): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    match links(&s).peek(&token, &s.tenants).await {
        Ok((link, tenant)) => {
            let branding = &tenant.settings.branding;
            let page = OpenPage {
                chrome: Chrome {
                    tenant_name: branding.display_name.clone().unwrap_or(tenant.name.clone()),
                    logo_url: branding.logo_url.clone(),
                    csrf: String::new(),
                },
                kind: link.kind.map(|k| match k {
                    LinkKind::Saml => "SAML 2.0",
                    LinkKind::Oidc => "OpenID Connect",
                }),
                expires_at: chrono::DateTime::from_timestamp(link.expires_at, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_default(),
            };
            // The form posts to this very URL.
            let own = s.upstream.public("setup/");
            render_to(&s, StatusCode::OK, &page, &[own.as_str().to_owned()])
        }
        Err(e) => link_refused(&s, e),
    }
}

/// `POST /setup/{token}`: the one-time exchange of the link for a portal
/// session (its cookie), then on to the portal.
async fn open_link(State(s): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    match links(&s).exchange(&token, &s.tenants).await {
        Ok((session_token, _)) => {
            let mut resp = Redirect::to(s.upstream.public("portal").as_str()).into_response();
            match set_cookie(&s, &session_token, links::PORTAL_SESSION_MAX.as_secs()) {
                Some(c) => {
                    resp.headers_mut().insert(header::SET_COOKIE, c);
                    resp
                }
                None => unavailable(&s, "cookie encoding"),
            }
        }
        Err(e) => link_refused(&s, e),
    }
}

/// The page of a link that cannot be opened.
fn link_refused(s: &AppState, e: LinkError) -> Response {
    match e {
        LinkError::Store(e) => unavailable(s, e),
        e @ LinkError::Used => message(
            s,
            StatusCode::GONE,
            "This setup link was already used",
            "A setup link opens once. If that was not you, tell the application's operator; otherwise ask them for a new link.",
            e.reason(),
        ),
        e @ LinkError::Revoked => message(
            s,
            StatusCode::GONE,
            "This setup link was revoked",
            "The application's operator revoked this setup link. Ask them for a new one if you still need it.",
            e.reason(),
        ),
        e @ LinkError::Expired => message(
            s,
            StatusCode::GONE,
            "This setup link has expired",
            "Setup links work for a limited time. Ask the application's operator for a new link.",
            e.reason(),
        ),
    }
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

struct ConnectionRow {
    id: String,
    kind: String,
    status: String,
}

fn status_words(s: ConnectionStatus) -> &'static str {
    match s {
        ConnectionStatus::PendingTest => "waiting for a successful test",
        ConnectionStatus::Active => "active",
        ConnectionStatus::Disabled => "disabled",
    }
}

#[derive(Template)]
#[template(path = "portal/start.html")]
struct StartPage {
    chrome: Chrome,
    kinds: Vec<(&'static str, &'static str)>,
    idps: Vec<(&'static str, &'static str)>,
    connections: Vec<ConnectionRow>,
}

fn kinds(session: &PortalSession) -> Vec<(&'static str, &'static str)> {
    [(LinkKind::Saml, "SAML 2.0"), (LinkKind::Oidc, "OpenID Connect")]
        .into_iter()
        .filter(|(k, _)| session.kind.is_none_or(|only| only == *k))
        .map(|(k, label)| (k.name(), label))
        .collect()
}

async fn start(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut connections = Vec::new();
    let ids = match s.tenants.connection_ids(&session.tenant).await {
        Ok(ids) => ids,
        Err(e) => return unavailable(&s, e),
    };
    for id in ids {
        match s.tenants.connection(&session.tenant, &id).await {
            Ok(Some(c)) => connections.push(ConnectionRow {
                id: c.id.to_string(),
                kind: c.kind.name().to_owned(),
                status: status_words(c.status).to_owned(),
            }),
            Ok(None) => {}
            Err(e) => return unavailable(&s, e),
        }
    }
    render(
        &s,
        StatusCode::OK,
        &StartPage {
            chrome,
            kinds: kinds(&session),
            idps: guides::IDPS.iter().map(|i| (i.key, i.name)).collect(),
            connections,
        },
    )
}

#[derive(Deserialize)]
struct Choice {
    kind: Option<String>,
    idp: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/values.html")]
struct ValuesPage {
    chrome: Chrome,
    kind: &'static str,
    idp_key: &'static str,
    idp_name: &'static str,
    steps: &'static [&'static str],
    connection_id: String,
    values: Vec<(&'static str, String)>,
    metadata_url: Option<String>,
    error: Option<String>,
}

fn connection_id_for(kind: &str, idp: &str) -> Option<ConnectionId> {
    ConnectionId::parse(&format!("{idp}-{kind}")).ok()
}

fn values_page(
    s: &AppState,
    session: &PortalSession,
    chrome: Chrome,
    kind: &str,
    idp: &str,
    error: Option<String>,
) -> Response {
    let kind = match kinds(session).into_iter().find(|(k, _)| *k == kind) {
        Some((k, _)) => k,
        None => {
            return message(
                s,
                StatusCode::BAD_REQUEST,
                "Choose a protocol",
                "Go back and choose one of the protocols offered.",
                "portal.bad_kind",
            )
        }
    };
    let (Some(guide), Some(cid)) = (guides::idp(idp), connection_id_for(kind, idp)) else {
        return message(
            s,
            StatusCode::BAD_REQUEST,
            "Choose an identity provider",
            "Go back and choose your identity provider from the list.",
            "portal.bad_idp",
        );
    };
    let base = format!("{}/{}", session.tenant, cid);
    let (values, metadata_url, steps) = if kind == "saml" {
        let md = s.upstream.public(&format!("saml/{base}/metadata"));
        (
            vec![
                (
                    "ACS URL (Reply URL, Single sign-on URL)",
                    s.upstream.public(&format!("saml/{base}/acs")).to_string(),
                ),
                ("SP entity ID (Audience URI, Identifier)", md.to_string()),
                (
                    "NameID format",
                    "EmailAddress (urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress)".to_owned(),
                ),
                (
                    "Required attributes",
                    "email (or NameID as email); optional: given name, family name, groups".to_owned(),
                ),
                ("Signature algorithm", "RSA-SHA256".to_owned()),
            ],
            Some(md.to_string()),
            guide.saml,
        )
    } else {
        (
            vec![
                (
                    "Redirect URI (callback URL)",
                    s.upstream.public(&format!("oidc/{base}/callback")).to_string(),
                ),
                ("Grant type", "Authorization code".to_owned()),
                ("Scopes", "openid email profile".to_owned()),
            ],
            None,
            guide.oidc,
        )
    };
    render(
        s,
        if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        },
        &ValuesPage {
            chrome,
            kind,
            idp_key: guide.key,
            idp_name: guide.name,
            steps,
            connection_id: cid.to_string(),
            values,
            metadata_url,
            error,
        },
    )
}

async fn values(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<Choice>) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    values_page(
        &s,
        &session,
        chrome,
        q.kind.as_deref().unwrap_or_default(),
        q.idp.as_deref().unwrap_or_default(),
        None,
    )
}

/// Reads the multipart form of step 3 (text fields and the metadata file).
async fn read_form(mut form: Multipart) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(format!("The form could not be read: {}", e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("The form could not be read: {}", e.body_text()))?;
        if bytes.len() > MAX_METADATA_BYTES {
            return Err("The metadata is too large (more than 256 KiB).".to_owned());
        }
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| "The uploaded file is not a UTF-8 XML document.".to_owned())?;
        if !text.trim().is_empty() {
            out.insert(name, text);
        }
    }
    Ok(out)
}

async fn create(State(s): State<Arc<AppState>>, headers: HeaderMap, form: Multipart) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let fields = match read_form(form).await {
        Ok(f) => f,
        Err(m) => {
            return message(
                &s,
                StatusCode::BAD_REQUEST,
                "The form could not be read",
                &m,
                "portal.bad_form",
            )
        }
    };
    if !csrf_ok(&session, fields.get("csrf").map(String::as_str)) {
        return csrf_refused(&s, &session);
    }
    let kind = fields.get("kind").cloned().unwrap_or_default();
    let idp = fields.get("idp").cloned().unwrap_or_default();
    let Some(cid) = connection_id_for(&kind, &idp).filter(|_| kinds(&session).iter().any(|(k, _)| *k == kind)) else {
        return message(
            &s,
            StatusCode::BAD_REQUEST,
            "Choose a protocol and identity provider",
            "Start again from the first step.",
            "portal.bad_kind",
        );
    };
    let mut body = serde_json::Map::new();
    body.insert("id".into(), cid.to_string().into());
    body.insert("kind".into(), kind.clone().into());
    let pick = |names: &[&str]| names.iter().find_map(|n| fields.get(*n).cloned());
    if kind == "saml" {
        match (pick(&["metadata_file", "metadata_xml"]), pick(&["metadata_url"])) {
            (Some(xml), _) => {
                body.insert("metadata_xml".into(), xml.into());
            }
            (None, Some(url)) => {
                body.insert("metadata_url".into(), url.trim().to_owned().into());
            }
            (None, None) => {
                return values_page(
                    &s,
                    &session,
                    chrome,
                    &kind,
                    &idp,
                    Some("Give the IdP metadata: paste the XML, upload the file, or enter its URL.".into()),
                )
            }
        }
    } else {
        for f in ["issuer", "client_id", "client_secret"] {
            if let Some(v) = fields.get(f) {
                body.insert(f.into(), v.trim().to_owned().into());
            }
        }
    }
    // The connection's id comes from the form's `idp`, any name: a new one
    // counts against the tenant's connections as through the admin API.
    match s.tenants.connection(&session.tenant, &cid).await {
        Ok(Some(_)) => {}
        Ok(None) => match s
            .tenants
            .room_for_connection(&session.tenant, s.quotas.connections_per_tenant)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let max = s.quotas.connections_per_tenant;
                tracing::info!(reason = "quota.connections", tenant = %session.tenant, link = %session.link_id, max, "a setup link's connection over the tenant's quota: refused");
                return message(
                    &s,
                    StatusCode::CONFLICT,
                    "Too many connections",
                    &format!(
                        "This organization has reached its quota of {max} connections its own set-up may give it. Ask the application's operator to remove one."
                    ),
                    "quota.connections",
                );
            }
            Err(e) => return unavailable(&s, e),
        },
        Err(e) => return unavailable(&s, e),
    }
    let admin = crate::admin::Admin::new(
        crate::admin::Principal::setup_link(session.tenant.clone(), session.link_id.clone()),
        "portal",
    );
    let fetches = body.contains_key("metadata_url") || kind == "oidc";
    let charged = async {
        if fetches {
            crate::admin::charge_outbound(&s, &admin, &session.tenant).await?;
        }
        if kind == "saml" {
            crate::admin::charge_key_generation(&s, &admin, &session.tenant).await?;
        }
        Ok::<(), crate::admin::AdminError>(())
    };
    match charged.await {
        Ok(()) => {}
        Err(crate::admin::AdminError::TooMany { reason, detail, .. }) => {
            return message(&s, StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &detail, reason)
        }
        // A per-minute quota of 0: the operator allows none.
        Err(crate::admin::AdminError::ConflictReason { reason, detail }) => {
            return message(&s, StatusCode::CONFLICT, "Not allowed here", &detail, reason)
        }
        Err(e) => return unavailable(&s, e),
    }
    let built =
        crate::tenant::setup::build_connection(&s.upstream, &session.tenant, serde_json::Value::Object(body), false)
            .await;
    let mut conn = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = "portal.setup_invalid", tenant = %session.tenant, field = %e.field);
            let sentence = guides::setup_error_sentence(&e.field, &e.message);
            return values_page(&s, &session, chrome, &kind, &idp, Some(sentence));
        }
    };
    // A connection made through a setup link serves users only after a
    // successful test.
    conn.status = ConnectionStatus::PendingTest;
    if let Err(e) = crate::upstream::build(&conn, &s.upstream) {
        let sentence = guides::setup_error_sentence("metadata_xml", &e.message);
        return values_page(&s, &session, chrome, &kind, &idp, Some(sentence));
    }
    let replaced = match s.tenants.connection(&session.tenant, &cid).await {
        Ok(existing) => existing,
        Err(e) => return unavailable(&s, e),
    };
    let stored = match replaced {
        // Re-registering keeps the SP keys and identifiers of a connection
        // that waits for its test. A disabled one stays disabled: the
        // operator disabled it, and only they enable it again.
        Some(old) if old.status == ConnectionStatus::PendingTest => {
            conn.kind = keep_sp(old.kind.clone(), conn.kind);
            // Compare-and-set: a concurrent change of this connection wins.
            // Another IdP registered in its place renews its users (the
            // test sign-ins'), as any change of the issuer does.
            s.tenants
                .update_connection(&old, &conn, IssuerChange::NewUsers)
                .await
                .map(|_| ())
        }
        Some(old) => {
            tracing::info!(reason = "portal.connection_exists", tenant = %session.tenant, connection = %cid, status = ?old.status);
            let why = if old.status == ConnectionStatus::Active {
                format!("An active connection {cid} already exists. Ask the application's operator to change it, or disable it first.")
            } else {
                format!(
                    "The connection {cid} was disabled by the application's operator. Ask them to enable or remove it."
                )
            };
            return values_page(&s, &session, chrome, &kind, &idp, Some(why));
        }
        None => s.tenants.add_connection(&conn).await,
    };
    if let Err(e) = stored {
        return not_stored(&s, e);
    }
    tracing::info!(reason = "portal.connection_created", tenant = %session.tenant, connection = %cid, link = %session.link_id, kind = conn.kind.name());
    let view = crate::tenant::setup::describe(&s.upstream, &conn);
    if let Err(resp) = audit(&s, &session, "connection.registered", &cid, view).await {
        return resp;
    }
    Redirect::to(s.upstream.public(&format!("portal/connections/{cid}")).as_str()).into_response()
}

/// The new configuration with the old SP identity: its key pairs (current,
/// next and previous, so a rotation under way goes on) and the entity id
/// and ACS URL the platform may have set. A re-registration must not change
/// what the IdP was told.
fn keep_sp(old: ConnectionKind, new: ConnectionKind) -> ConnectionKind {
    match (old, new) {
        (ConnectionKind::Saml(old), ConnectionKind::Saml(mut new)) => {
            new.sp_private_key_pem = old.sp_private_key_pem;
            new.sp_certificate_pem = old.sp_certificate_pem;
            new.sp_next_key = old.sp_next_key;
            new.sp_previous_key = old.sp_previous_key;
            new.sp_entity_id = old.sp_entity_id;
            new.acs_url = old.acs_url;
            ConnectionKind::Saml(new)
        }
        (_, new) => new,
    }
}

struct ResultView {
    ok: bool,
    reason: String,
    what: String,
    fix: String,
    message: String,
    attributes: Vec<(String, String)>,
    claims: Vec<(String, String)>,
    /// What a sign-in passes but not at the IdP's word: (reason code, what
    /// it means, what to do).
    notes: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "portal/connection.html")]
struct ConnectionPage {
    chrome: Chrome,
    id: String,
    kind: String,
    status: String,
    active: bool,
    sp_metadata_url: Option<String>,
    result: Option<ResultView>,
    can_activate: bool,
    error: Option<String>,
    /// A warning when a certificate of the connection expires within 30 days.
    expiry_warning: Option<String>,
}

fn last_test_key(t: &TenantId, c: &ConnectionId) -> crate::store::Key {
    crate::store::Key::tenant(t.as_str(), "portal", format!("last_test:{c}"))
}

async fn own_connection(s: &AppState, session: &PortalSession, cid: &str) -> Result<Connection, Response> {
    let found = match ConnectionId::parse(cid) {
        Ok(c) => s
            .tenants
            .connection(&session.tenant, &c)
            .await
            .map_err(|e| unavailable(s, e))?,
        Err(_) => None,
    };
    found.ok_or_else(|| {
        message(
            s,
            StatusCode::NOT_FOUND,
            "No such connection",
            "This connection does not exist.",
            "portal.unknown_connection",
        )
    })
}

/// The latest test of `c` and its result, if any.
async fn last_result(s: &AppState, c: &Connection) -> Result<Option<crate::broker::testing::TestResult>, Response> {
    use crate::store::StoreJson;
    let id: Option<String> = s
        .store
        .get_json(&last_test_key(&c.tenant, &c.id))
        .await
        .map_err(|e| unavailable(s, e))?;
    match id {
        Some(id) => s
            .broker
            .test_result(&c.tenant, &id)
            .await
            .map(|r| r.filter(|r| r.connection == c.id && r.revision == c.revision))
            .map_err(|e| unavailable(s, e)),
        None => Ok(None),
    }
}

fn view(r: &crate::broker::testing::TestResult) -> ResultView {
    let reason = r.reason.clone().unwrap_or_default();
    let (what, fix) = guides::reason_in_words(&reason);
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ResultView {
        ok: r.ok,
        what: what.to_owned(),
        fix: fix.to_owned(),
        reason,
        message: r.message.clone().unwrap_or_default(),
        attributes: r.attributes.iter().map(|(k, v)| (k.clone(), v.join(", "))).collect(),
        claims: r.claims.iter().map(|(k, v)| (k.clone(), show(v))).collect(),
        notes: r
            .notes
            .iter()
            .map(|n| {
                let (what, fix) = guides::reason_in_words(n);
                (n.clone(), what.to_owned(), fix.to_owned())
            })
            .collect(),
    }
}

async fn connection_page(s: &AppState, chrome: Chrome, c: Connection, error: Option<String>) -> Response {
    let result = match last_result(s, &c).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let sp_metadata_url = matches!(c.kind, ConnectionKind::Saml(_))
        .then(|| crate::upstream::saml::sp_metadata_url(&s.upstream, &c).to_string());
    // The test form's redirect goes to the IdP: its SSO endpoints (SAML), or
    // any https authorization endpoint (OIDC discovery decides it).
    let onward: Vec<String> = match &c.kind {
        ConnectionKind::Saml(cfg) => [&cfg.sso_redirect_url, &cfg.sso_post_url]
            .into_iter()
            .flatten()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| pages::origin_source(&u))
            .collect(),
        ConnectionKind::Oidc(_) => vec!["https:".to_owned()],
        ConnectionKind::Dev(_) | ConnectionKind::Local(_) => Vec::new(),
    };
    render_to(
        s,
        if error.is_some() {
            StatusCode::CONFLICT
        } else {
            StatusCode::OK
        },
        &ConnectionPage {
            chrome,
            id: c.id.to_string(),
            kind: c.kind.name().to_owned(),
            status: status_words(c.status).to_owned(),
            active: c.status == ConnectionStatus::Active,
            sp_metadata_url,
            can_activate: c.status != ConnectionStatus::Active && result.as_ref().is_some_and(|r| r.ok),
            result: result.as_ref().map(view),
            error,
            expiry_warning: expiry_warning(s, &c),
        },
        &onward,
    )
}

async fn connection(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let c = match own_connection(&s, &session, &cid).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    connection_page(&s, chrome, c, None).await
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn test(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(cid): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    use crate::store::StoreJson;
    let (session, _) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return csrf_refused(&s, &session);
    }
    let c = match own_connection(&s, &session, &cid).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let return_to = s.upstream.public(&format!("portal/connections/{}", c.id));
    match s.broker.begin_test(&c.tenant, &c.id, &return_to).await {
        Ok((test_id, outcome)) => {
            if let Err(e) = s
                .store
                .put_json(
                    &last_test_key(&c.tenant, &c.id),
                    &test_id,
                    Some(crate::broker::testing::TEST_RESULT_TTL),
                )
                .await
            {
                return unavailable(&s, e);
            }
            flows::respond(&s, outcome)
        }
        Err(outcome) => flows::respond(&s, outcome),
    }
}

async fn activate(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(cid): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return csrf_refused(&s, &session);
    }
    let mut c = match own_connection(&s, &session, &cid).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if c.status == ConnectionStatus::Disabled {
        tracing::info!(reason = "portal.activate_disabled", tenant = %c.tenant, connection = %c.id);
        return connection_page(
            &s,
            chrome,
            c,
            Some("This connection was disabled by the application's operator; only they can enable it again. (Reason code: portal.activate_disabled)".into()),
        )
        .await;
    }
    let tested = match last_result(&s, &c).await {
        Ok(r) => r.is_some_and(|r| r.ok),
        Err(resp) => return resp,
    };
    if !tested {
        tracing::info!(reason = "portal.activate_untested", tenant = %c.tenant, connection = %c.id);
        return connection_page(
            &s,
            chrome,
            c,
            Some("Run a successful test sign-in first: a connection is activated only after it has worked once. (Reason code: portal.activate_untested)".into()),
        )
        .await;
    }
    let before = c.clone();
    c.status = ConnectionStatus::Active;
    // Compare-and-set: an operator's change (a disable) made meanwhile wins.
    if let Err(e) = s.tenants.update_connection(&before, &c, IssuerChange::NewUsers).await {
        return not_stored(&s, e);
    }
    tracing::info!(reason = "portal.connection_activated", tenant = %c.tenant, connection = %c.id, link = %session.link_id);
    let view = crate::tenant::setup::describe(&s.upstream, &c);
    if let Err(resp) = audit(&s, &session, "connection.activated", &c.id, view).await {
        return resp;
    }
    Redirect::to(s.upstream.public(&format!("portal/connections/{}", c.id)).as_str()).into_response()
}

struct FailureRow {
    at: String,
    connection: String,
    reason: String,
    what: String,
    fix: String,
}

#[derive(Template)]
#[template(path = "portal/failures.html")]
struct FailuresPage {
    chrome: Chrome,
    rows: Vec<FailureRow>,
}

async fn failures(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let list = match s.broker.failed_sign_ins(&session.tenant).await {
        Ok(l) => l,
        Err(e) => return unavailable(&s, e),
    };
    let rows = list
        .into_iter()
        .map(|f| {
            let (what, fix) = guides::reason_in_words(&f.reason);
            FailureRow {
                at: chrono::DateTime::from_timestamp(f.at, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
                connection: f.connection.map(|c| c.to_string()).unwrap_or_default(),
                reason: f.reason,
                what: what.to_owned(),
                fix: fix.to_owned(),
            }
        })
        .collect();
    render(&s, StatusCode::OK, &FailuresPage { chrome, rows })
}

async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let (session, _) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return csrf_refused(&s, &session);
    }
    if let Some(token) = cookie_value(&headers) {
        if let Err(e) = links(&s).end(&token).await {
            return unavailable(&s, e);
        }
    }
    let mut resp = message(
        &s,
        StatusCode::OK,
        "Signed out of the setup portal",
        "You can close this window.",
        "portal.signed_out",
    );
    if let Some(c) = set_cookie(&s, "", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Records a change made through the portal in the tenant's audit log, with
/// the setup link as the actor.
async fn audit(
    s: &AppState,
    session: &links::PortalSession,
    action: &str,
    connection: &crate::ids::ConnectionId,
    after: serde_json::Value,
) -> Result<(), Response> {
    let event = crate::audit::AuditEvent::new(
        &crate::audit::Actor::SetupLink(session.link_id.clone()),
        action,
        crate::audit::Target::new("connection", connection.as_str()),
        "portal",
    )
    .tenant(&session.tenant)
    .after(after);
    s.audit().record(event).await.map_err(|e| unavailable(s, e))
}

/// The banner shown 30, 14 and 3 days before a certificate of the
/// connection expires (and once it has).
fn expiry_warning(s: &AppState, c: &Connection) -> Option<String> {
    use crate::tenant::refresh::{certificate_expiry, ExpiryLevel};
    let not_after = certificate_expiry(c)?;
    let level = ExpiryLevel::at(not_after, s.upstream.clock.now())?;
    let when = not_after.format("%Y-%m-%d %H:%M UTC");
    Some(match level {
        ExpiryLevel::Expired => format!(
            "A certificate of this connection expired on {when}: sign-ins fail until your identity provider publishes a new one and the metadata is updated."
        ),
        _ => format!(
            "A certificate of this connection expires on {when}. Publish the new certificate in your identity provider's metadata before then (Portcullis takes it up from the metadata URL by itself, or paste the new metadata here)."
        ),
    })
}
