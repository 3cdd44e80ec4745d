//! A tenant's email domains: claim (`POST …/domains`), list, verify by DNS
//! TXT record or by the platform admin's override, remove.

use super::auth::PrincipalKind;
use super::{audit, parse_body, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::ids::TenantId;
use crate::tenant::domains::{DnsOutcome, DomainError, DomainState, VerifiedBy};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The domain routes, merged into `admin::routes()`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants/{id}/domains", post(claim).get(list))
        .route(
            "/tenants/{id}/domains/{domain}",
            delete(remove).get(get_one).patch(assign_connections),
        )
        .route("/tenants/{id}/domains/{domain}/verify", post(verify))
        .route("/tenants/{id}/mfa", put(set_mfa))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaBody {
    required: bool,
}

/// `PUT /tenants/{id}/mfa` `{"required": bool}`: whether the tenant's
/// sign-ins need multi-factor authentication at the IdP.
async fn set_mfa(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let req: MfaBody = parse_body(body)?;
    let tenant = s.tenants.set_require_mfa(&id, req.required).await.map_err(registry)?;
    tracing::info!(reason = "admin.tenant_mfa_set", tenant = %id, required = req.required);
    audit::record(
        &s,
        admin
            .event("tenant.mfa_set", Target::new("tenant", id.as_str()))
            .tenant(&id)
            .after(json!({"require_mfa": req.required})),
    )
    .await?;
    Ok(Json(json!({"required": tenant.settings.require_mfa})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDomain {
    domain: String,
}

/// `PATCH …/domains/{domain}`: the connections the domain's users sign in with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainPatch {
    connections: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default, rename = "override")]
    override_check: bool,
}

/// The JSON answer for one domain.
fn describe(s: &DomainState) -> Value {
    let mut v = json!({
        "domain": s.domain,
        "verified": s.verified,
        "verified_by": s.verified_by,
        "connections": s.connections,
    });
    if let (Some(claim), Some(o)) = (&s.claim, v.as_object_mut()) {
        o.insert(
            "verification".into(),
            json!({"type": "dns-txt", "name": claim.record_name(), "value": claim.token}),
        );
        o.insert("created_at".into(), json!(claim.created_at));
    }
    v
}

fn domain_error(e: DomainError) -> AdminError {
    match e {
        DomainError::Unclaimable(u) => AdminError::field("domain", format!("{}.", super::capitalize(&u.to_string()))),
        DomainError::Taken(d) => AdminError::Conflict {
            field: "domain",
            detail: format!("The domain {d} already belongs to another tenant."),
        },
        DomainError::Unknown(d) => AdminError::NotFound(format!("The tenant has no domain {d:?}.")),
        DomainError::NotVerified(d) => AdminError::Conflict {
            field: "domain",
            detail: format!("The domain {d} is not verified yet: verify it before assigning it to connections."),
        },
        DomainError::UnknownConnection(i, c) => AdminError::field(
            &format!("connections[{i}]"),
            format!("The tenant has no connection {c:?}."),
        ),
        DomainError::TooManyConnections(max) => AdminError::ConflictReason {
            reason: "domain.too_many_assignments",
            detail: format!(
                "The tenant's domains are assigned to at most {max} connections in all (a domain assigned to two counts two): assign fewer."
            ),
        },
        DomainError::Dns(outcome) => AdminError::field("domain", dns_detail(&outcome)),
        DomainError::Registry(r) => registry(r),
    }
}

/// What the DNS check found, in a sentence ending with its reason code.
fn dns_detail(outcome: &DnsOutcome) -> String {
    let what = match outcome {
        DnsOutcome::Match => "The TXT record matches.".to_owned(),
        DnsOutcome::NxDomain => "The name of the TXT record does not exist (NXDOMAIN): publish the record shown when the domain was added.".to_owned(),
        DnsOutcome::NoRecord => "No TXT record was found at that name: publish the record shown when the domain was added, then retry once it has propagated.".to_owned(),
        DnsOutcome::WrongValue(found) => {
            // Values come from the domain's own DNS; only their start is shown.
            let shown: Vec<String> = found.iter().take(3).map(|v| v.chars().take(80).collect()).collect();
            format!("A TXT record was found with another value ({shown:?}): it must be exactly the value shown when the domain was added.")
        }
        DnsOutcome::Timeout => "The DNS resolver did not answer in time: retry later.".to_owned(),
        DnsOutcome::Failed(_) => "The DNS lookup failed: retry later.".to_owned(),
    };
    format!("{what} ({})", outcome.reason())
}

/// A tenant file declares its tenant's domains, and its next sync drops
/// any other (`tenant.file_owned`, as for a PATCH of them): a domain the
/// tenant does not have yet is neither claimed nor verified for it here.
async fn refuse_new_domain_of_file(s: &AppState, id: &TenantId, raw: &str, action: &str) -> Result<(), AdminError> {
    let Some(tenant) = s.tenants.get(id).await.map_err(registry)? else {
        return Ok(());
    };
    let listed = crate::tenant::parse_domain(raw).is_some_and(|d| tenant.domains.contains(&d));
    if !listed {
        super::tenants::refuse_if_file_owned(s, &tenant, action).await?;
    }
    Ok(())
}

/// A tenant admin (API key, setup link) gives its tenant at most `[quotas]
/// domains_per_tenant` domains, verified and claimed together
/// (409, `quota.domains`); claiming one it already has is no new one. The
/// platform admin is not held to it. Checked before the claim is written,
/// so claims at the same moment may each pass it once.
async fn check_domain_quota(s: &AppState, admin: &Admin, id: &TenantId, raw: &str) -> Result<(), AdminError> {
    if !matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. }) {
        return Ok(());
    }
    let Some(tenant) = s.tenants.get(id).await.map_err(registry)? else {
        return Ok(());
    };
    let states = s.tenants.domain_states(&tenant).await.map_err(registry)?;
    let wanted = crate::tenant::parse_domain(raw).unwrap_or_default();
    let max = s.quotas.domains_per_tenant;
    if states.len() >= max && !states.iter().any(|st| st.domain == wanted) {
        tracing::info!(reason = "quota.domains", tenant = %id, max, "a tenant admin's domain claim over the tenant's quota: refused");
        return Err(AdminError::ConflictReason {
            reason: "quota.domains",
            detail: format!(
                "The tenant has reached its quota of {max} domains, verified or claimed, its own admin may give it: remove one first, or ask the platform's operator."
            ),
        });
    }
    Ok(())
}

async fn claim(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let id = tenant_id(&id)?;
    let req: NewDomain = parse_body(body)?;
    let state = claim_as(&s, &admin, &id, &req.domain).await?;
    let status = if state.verified {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(describe(&state))).into_response())
}

/// Claims `raw` for tenant `id` as `admin`, whoever asks (the admin API,
/// the setup portal): the tenant file's rule, the tenant admin's quota, the
/// claim, its log line and its audit event.
pub(crate) async fn claim_as(s: &AppState, admin: &Admin, id: &TenantId, raw: &str) -> Result<DomainState, AdminError> {
    refuse_new_domain_of_file(s, id, raw, "claiming a domain for it").await?;
    check_domain_quota(s, admin, id, raw).await?;
    let state = s.tenants.claim_domain(id, raw).await.map_err(domain_error)?;
    tracing::info!(reason = "admin.domain_claimed", tenant = %id, domain = %state.domain, verified = state.verified);
    audit::record(
        s,
        admin
            .event("domain.claimed", Target::new("domain", state.domain.as_str()))
            .tenant(id)
            .after(describe(&state)),
    )
    .await?;
    Ok(state)
}

async fn list(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let tenant = super::tenant_record(&s, id.as_str()).await?;
    let states = s.tenants.domain_states(&tenant).await.map_err(registry)?;
    Ok(Json(
        json!({"domains": states.iter().map(describe).collect::<Vec<_>>()}),
    ))
}

async fn get_one(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let tenant = super::tenant_record(&s, id.as_str()).await?;
    let wanted = crate::tenant::parse_domain(&domain).unwrap_or_default();
    let states = s.tenants.domain_states(&tenant).await.map_err(registry)?;
    states
        .iter()
        .find(|st| st.domain == wanted)
        .map(|st| Json(describe(st)))
        .ok_or_else(|| AdminError::NotFound(format!("The tenant has no domain {domain:?}.")))
}

/// `PATCH /tenants/{id}/domains/{domain}` `{"connections": [...]}`: the
/// connections the verified domain's users sign in with. Only they vouch
/// for `email_verified` on its addresses (`login.email_other_connection`
/// for the others), and a `login_hint` in it goes straight to them; `[]`
/// makes it any connection's again. A tenant file declares its tenant's
/// assignments (`tenant.file_owned`).
async fn assign_connections(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let req: DomainPatch = parse_body(body)?;
    let mut connections = Vec::with_capacity(req.connections.len());
    for (i, c) in req.connections.iter().enumerate() {
        let parsed = crate::ids::ConnectionId::parse(c)
            .map_err(|e| AdminError::field(&format!("connections[{i}]"), format!("{c:?} {e}.")))?;
        connections.push(parsed);
    }
    let state = assign_as(&s, &admin, &id, &domain, connections).await?;
    Ok(Json(describe(&state)))
}

/// Assigns the verified `domain` of tenant `id` to `connections` as
/// `admin`, whoever asks (the admin API, the setup portal): the tenant
/// file's rule, the assignment, its log line and its audit event.
pub(crate) async fn assign_as(
    s: &AppState,
    admin: &Admin,
    id: &TenantId,
    domain: &str,
    connections: Vec<crate::ids::ConnectionId>,
) -> Result<DomainState, AdminError> {
    let tenant = super::tenant_record(s, id.as_str()).await?;
    super::tenants::refuse_if_file_owned(s, &tenant, "assigning its domain to connections").await?;
    let before = tenant
        .domains
        .iter()
        .find(|d| crate::tenant::parse_domain(domain).as_ref() == Some(*d))
        .map(|d| json!({"domain": d, "connections": tenant.domain_connections.get(d).cloned().unwrap_or_default()}));
    let state = s
        .tenants
        .set_domain_connections(id, domain, connections)
        .await
        .map_err(domain_error)?;
    tracing::info!(reason = "admin.domain_connections_set", tenant = %id, domain = %state.domain, connections = ?state.connections);
    let mut event = admin
        .event("domain.connections_set", Target::new("domain", state.domain.as_str()))
        .tenant(id)
        .after(json!({"domain": state.domain, "connections": state.connections}));
    if let Some(before) = before {
        event = event.before(before);
    }
    audit::record(s, event).await?;
    Ok(state)
}

async fn verify(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = tenant_id(&id)?;
    let req: VerifyBody = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyBody::default()
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| AdminError::field("body", e.to_string()))?;
        parse_body(v)?
    };
    // The override is the platform admin's: a tenant admin proves ownership by DNS.
    if req.override_check && matches!(admin.principal.kind, PrincipalKind::TenantAdmin { .. }) {
        return Err(AdminError::field(
            "override",
            "only the platform admin may verify a domain without its DNS record.",
        ));
    }
    let by = if req.override_check {
        VerifiedBy::PlatformAdmin
    } else {
        VerifiedBy::Dns
    };
    let state = verify_as(&s, &admin, &id, &domain, by).await?;
    Ok(Json(describe(&state)))
}

/// Verifies the claimed `domain` of tenant `id` as `admin` (by DNS, or
/// `by` the platform admin's override, which the caller allows), whoever
/// asks: the tenant file's rule, the outbound budget, the check, its log
/// line and its audit event.
pub(crate) async fn verify_as(
    s: &AppState,
    admin: &Admin,
    id: &TenantId,
    domain: &str,
    by: VerifiedBy,
) -> Result<DomainState, AdminError> {
    refuse_new_domain_of_file(s, id, domain, "verifying a domain for it").await?;
    super::charge_outbound(s, admin, id).await?;
    let state = s
        .tenants
        .verify_domain(id, domain, &s.domains, by)
        .await
        .map_err(domain_error)?;
    tracing::info!(reason = "admin.domain_verified", tenant = %id, domain = %state.domain, verified_by = ?by);
    audit::record(
        s,
        admin
            .event("domain.verified", Target::new("domain", state.domain.as_str()))
            .tenant(id)
            .after(describe(&state)),
    )
    .await?;
    Ok(state)
}

async fn remove(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let id = tenant_id(&id)?;
    if let Some(tenant) = s.tenants.get(&id).await.map_err(registry)? {
        super::tenants::refuse_if_file_owned(&s, &tenant, "removing its domain").await?;
    }
    s.tenants.remove_domain(&id, &domain).await.map_err(domain_error)?;
    tracing::info!(reason = "admin.domain_removed", tenant = %id, domain = %domain);
    audit::record(
        &s,
        admin
            .event("domain.removed", Target::new("domain", domain.as_str()))
            .tenant(&id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
