//! The portal's domains page: a tenant's IT admin claims the email domains
//! of the organization, proves each with a DNS TXT record, and, when the
//! organization signs people in through more than one identity provider,
//! assigns each verified domain to the connections that own it. Every
//! change goes through the admin API's own routines (`admin::domains`), so
//! the tenant admin's quotas, the tenant file's rule and the audit log
//! apply as they do to a tenant API key.

use super::{csrf_ok, csrf_refused, portal, render, unavailable, Chrome};
use crate::admin::AdminError;
use crate::http::AppState;
use crate::ids::ConnectionId;
use crate::tenant::domains::{DomainState, VerifiedBy};
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

/// One domain as the page shows it.
struct DomainRow {
    domain: String,
    verified: bool,
    /// The TXT record to publish while the claim is pending: name, value.
    record: Option<(String, String)>,
    /// Every connection of the tenant, and whether the domain is assigned to it.
    connections: Vec<(String, bool)>,
    /// No connection is named: the domain is every connection's.
    any: bool,
}

#[derive(Template)]
#[template(path = "portal/domains.html")]
struct DomainsPage {
    chrome: Chrome,
    rows: Vec<DomainRow>,
    error: Option<String>,
}

/// `GET /portal/domains`.
pub(super) async fn page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (session, chrome) = match portal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    show(&s, &session.tenant, chrome, StatusCode::OK, None).await
}

/// The page for `tenant`, with `error` above the list when a change was refused.
async fn show(
    s: &AppState,
    tenant: &crate::ids::TenantId,
    chrome: Chrome,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let record = match s.tenants.get(tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return unavailable(s, format!("tenant {tenant} gone")),
        Err(e) => return unavailable(s, e),
    };
    let (states, ids) = match tokio::try_join!(s.tenants.domain_states(&record), s.tenants.connection_ids(tenant)) {
        Ok(read) => read,
        Err(e) => return unavailable(s, e),
    };
    let rows = states.into_iter().map(|st| row(st, &ids)).collect();
    render(s, status, &DomainsPage { chrome, rows, error })
}

fn row(st: DomainState, ids: &[ConnectionId]) -> DomainRow {
    DomainRow {
        record: st.claim.as_ref().map(|c| (c.record_name(), c.token.clone())),
        connections: ids
            .iter()
            .map(|c| (c.to_string(), st.connections.contains(c)))
            .collect(),
        any: st.connections.is_empty(),
        verified: st.verified,
        domain: st.domain,
    }
}

/// The form's fields, every value of a repeated one (`connection`).
fn fields(body: &Bytes) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A posted form's portal session, its page chrome and its fields, once
/// its CSRF token matches the session's; otherwise the page to show.
async fn posted(
    s: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(super::links::PortalSession, Chrome, Vec<(String, String)>), Response> {
    let (session, chrome) = portal(s, headers).await?;
    let form = fields(body);
    if !csrf_ok(&session, field(&form, "csrf")) {
        return Err(csrf_refused(s, &session));
    }
    Ok((session, chrome, form))
}

/// The tenant admin a portal session acts as: its setup link.
fn admin_of(session: &super::links::PortalSession) -> crate::admin::Admin {
    crate::admin::Admin::new(
        crate::admin::Principal::setup_link(session.tenant.clone(), session.link_id.clone()),
        "portal",
    )
}

/// What a refused change shows on the page: the admin API's own sentence
/// (with its reason code where it has one); a store failure is the outage page.
async fn refused(s: &AppState, session: &super::links::PortalSession, chrome: Chrome, e: AdminError) -> Response {
    let (status, text) = match e {
        AdminError::Invalid { detail, .. } => (StatusCode::BAD_REQUEST, detail),
        AdminError::NotFound(detail) => (StatusCode::NOT_FOUND, detail),
        AdminError::Conflict { detail, .. } => (StatusCode::CONFLICT, detail),
        AdminError::ConflictReason { reason, detail } => {
            (StatusCode::CONFLICT, format!("{detail} (Reason code: {reason})"))
        }
        AdminError::TooMany { reason, detail, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("{detail} (Reason code: {reason})"),
        ),
        other => return unavailable(s, other),
    };
    tracing::info!(reason = "portal.domain_refused", tenant = %session.tenant, status = status.as_u16(), "{text}");
    show(s, &session.tenant, chrome, status, Some(text)).await
}

fn back(s: &AppState) -> Response {
    Redirect::to(s.upstream.public("portal/domains").as_str()).into_response()
}

/// `POST /portal/domains` (`csrf`, `domain`): claims a domain.
pub(super) async fn claim(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (session, chrome, form) = match posted(&s, &headers, &body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let domain = field(&form, "domain").unwrap_or_default().trim().to_owned();
    match crate::admin::domains::claim_as(&s, &admin_of(&session), &session.tenant, &domain).await {
        Ok(_) => back(&s),
        Err(e) => refused(&s, &session, chrome, e).await,
    }
}

/// `POST /portal/domains/{domain}/verify` (`csrf`): checks the TXT record.
pub(super) async fn verify(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Bytes,
) -> Response {
    let (session, chrome, _) = match posted(&s, &headers, &body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let verified =
        crate::admin::domains::verify_as(&s, &admin_of(&session), &session.tenant, &domain, VerifiedBy::Dns).await;
    match verified {
        Ok(_) => back(&s),
        Err(e) => refused(&s, &session, chrome, e).await,
    }
}

/// `POST /portal/domains/{domain}/connections` (`csrf`, `connection`
/// repeated): the connections the domain's users sign in with; none
/// checked makes it every connection's again.
pub(super) async fn assign(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Bytes,
) -> Response {
    let (session, chrome, form) = match posted(&s, &headers, &body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut connections = Vec::new();
    for (_, c) in form.iter().filter(|(k, _)| k == "connection") {
        match ConnectionId::parse(c) {
            Ok(id) => connections.push(id),
            Err(_) => {
                let e = AdminError::field("connection", format!("{c:?} is not a connection of this organization."));
                return refused(&s, &session, chrome, e).await;
            }
        }
    }
    match crate::admin::domains::assign_as(&s, &admin_of(&session), &session.tenant, &domain, connections).await {
        Ok(_) => back(&s),
        Err(e) => refused(&s, &session, chrome, e).await,
    }
}
