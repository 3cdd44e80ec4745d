//! A tenant's token-exchange rules (`/tenants/{id}/exchange-rules`): which
//! users may exchange their access token for one scoped to a resource
//! server, with which scopes and extra claims (see
//! [`crate::provider::exchange`]). Create, list, read, delete; a rule is
//! replaced by deleting it and creating it again. Only the rules of the
//! tenant as it is now are listed, read or deleted: one left by a deleted
//! tenant of the same id (another incarnation) is not there for its
//! successor, and a rule created under its id replaces it.

use super::{audit, parse_body, tenant_record, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::http::AppState;
use crate::provider::exchange::{check_rule, ExchangeRule, ExchangeRules, When};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The exchange-rule routes (tenant group).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants/{id}/exchange-rules", post(create).get(list))
        .route("/tenants/{id}/exchange-rules/{rid}", get(read).delete(delete))
}

/// The condition of a new rule.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWhen {
    /// `groups`, `email`, `email_domain`, `connection`, `sub`, `name`,
    /// `given_name` or `family_name`.
    claim: String,
    /// The exact value (for `groups`: a group the user is a member of).
    equals: String,
}

/// The body of `POST /admin/v1/tenants/{id}/exchange-rules`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewExchangeRule {
    /// The rule's id within the tenant.
    id: String,
    /// Absent: every user of the tenant.
    #[serde(default)]
    when: Option<NewWhen>,
    /// The resource server's identifier (the exchanged token's `aud`).
    resource: String,
    /// Scopes of that resource server, or scopes with `${sub}`/`${tenant}`.
    scopes: Vec<String>,
    /// Extra claims; values may hold `${sub}`/`${tenant}`.
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

fn view(r: &ExchangeRule) -> Value {
    json!({
        "id": r.id, "when": r.when, "resource": r.resource, "scopes": r.scopes,
        "claims": r.claims, "created_at": r.created_at,
    })
}

fn rules(s: &AppState) -> ExchangeRules {
    ExchangeRules::new(s.store.clone())
}

async fn create(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    let req: NewExchangeRule = parse_body(body)?;
    let rule = ExchangeRule {
        id: req.id,
        when: req.when.map(|w| When {
            claim: w.claim,
            equals: w.equals,
        }),
        resource: req.resource,
        scopes: req.scopes,
        claims: req.claims,
        created_at: s.provider.clock.now(),
        // Stamped with the tenant's incarnation by `create`.
        tenant_incarnation: None,
    };
    let rs = s.provider.resources.get(&rule.resource).await?;
    check_rule(&rule, rs.as_ref()).map_err(|(field, detail)| AdminError::Invalid { field, detail })?;
    // Read apart from the creation: creations at the same moment may each
    // pass it once. The platform admin is held to it too (the rules are
    // tested at every exchange of the tenant).
    let max = s.quotas.exchange_rules_per_tenant;
    if rules(&s).count(&tenant).await? >= max {
        tracing::info!(reason = "quota.exchange_rules", tenant = %tenant.id, max, "an exchange rule over the tenant's quota: refused");
        return Err(AdminError::ConflictReason {
            reason: "quota.exchange_rules",
            detail: format!("The tenant has reached its quota of {max} exchange rules: delete one first."),
        });
    }
    if !rules(&s).create(&tenant, &rule).await? {
        return Err(AdminError::Conflict {
            field: "id",
            detail: format!("The exchange rule {:?} already exists.", rule.id),
        });
    }
    tracing::info!(reason = "admin.exchange_rule_created", tenant = %tenant.id, rule = %rule.id);
    audit::record(
        &s,
        admin
            .event("exchange_rule.created", Target::new("exchange_rule", &rule.id))
            .tenant(&tenant.id)
            .after(view(&rule)),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&rule))).into_response())
}

async fn list(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    let all: Vec<Value> = rules(&s).all(&tenant).await?.iter().map(view).collect();
    Ok(Json(json!({ "exchange_rules": all })))
}

fn no_rule(rid: &str) -> AdminError {
    AdminError::NotFound(format!("There is no exchange rule {rid:?}."))
}

async fn read(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    let rule = rules(&s).get(&tenant, &rid).await?.ok_or_else(|| no_rule(&rid))?;
    Ok(Json(view(&rule)))
}

async fn delete(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let tenant = tenant_record(&s, &id).await?;
    let rule = rules(&s).get(&tenant, &rid).await?.ok_or_else(|| no_rule(&rid))?;
    rules(&s).delete(&tenant.id, &rid).await?;
    tracing::info!(reason = "admin.exchange_rule_deleted", tenant = %tenant.id, rule = %rid);
    audit::record(
        &s,
        admin
            .event("exchange_rule.deleted", Target::new("exchange_rule", &rid))
            .tenant(&tenant.id)
            .before(view(&rule)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
