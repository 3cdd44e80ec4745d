//! A tenant's hooks (`/tenants/{id}/hooks/{kind}`): configure (`PUT`
//! `{"url", "secret"?, "timeout_ms"?, "sign_answers"?}`), read, list and remove. A secret
//! left out is generated when the hook is created and shown in that answer
//! only; on a replacement without one the stored secret is kept. The secret
//! is never shown again, nor audited, and neither is the URL's query (shown
//! as `?…`: it may be a credential, as Azure Functions' `?code=` is), which
//! is still sent with every call.

use super::{audit, parse_body, registry, tenant_id, Admin, AdminError, JsonBody};
use crate::audit::Target;
use crate::hooks::{HookConfig, HookKind, Hooks};
use crate::http::AppState;
use crate::ids::TenantId;
use crate::secret::Secret;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The hook routes (tenant group).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants/{id}/hooks", get(list))
        .route("/tenants/{id}/hooks/{kind}", get(read).put(put).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookBody {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Left out: as before (off for a new hook).
    #[serde(default)]
    sign_answers: Option<bool>,
}

fn hooks(s: &AppState) -> Result<&Hooks, AdminError> {
    s.provider
        .hooks
        .as_ref()
        .ok_or_else(|| AdminError::Internal("hooks are not set up".into()))
}

fn kind(k: &str) -> Result<HookKind, AdminError> {
    HookKind::parse(k).ok_or_else(|| {
        AdminError::NotFound(format!(
            "There is no hook kind {:?}; the kinds are {}.",
            crate::hooks::clip(k, 64),
            HookKind::ALL.map(HookKind::as_str).join(", ")
        ))
    })
}

/// The public view: never the secret, nor the URL's query, which may be a
/// credential (`?code=`); both are kept out of the audit log this way too.
fn view(h: &HookConfig) -> Value {
    json!({
        "kind": h.kind, "url": crate::hooks::shown_url(&h.url), "timeout_ms": h.timeout_ms, "sign_answers": h.sign_answers,
        "created_at": h.created_at, "updated_at": h.updated_at,
    })
}

/// The tenant, which must exist; with its current incarnation.
async fn existing(s: &AppState, id: &str) -> Result<(TenantId, String), AdminError> {
    let id = tenant_id(id)?;
    let tenant = s
        .tenants
        .get(&id)
        .await
        .map_err(registry)?
        .ok_or_else(|| AdminError::NotFound(format!("There is no tenant {id:?}.")))?;
    Ok((id, tenant.incarnation.clone()))
}

async fn list(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let hooks = hooks(&s)?;
    let mut out = Vec::new();
    for k in HookKind::ALL {
        if let Some(h) = hooks.current(&id, k, &incarnation).await? {
            out.push(view(&h));
        }
    }
    Ok(Json(json!({"hooks": out})))
}

async fn read(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, k)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let k = kind(&k)?;
    let h = hooks(&s)?
        .current(&id, k, &incarnation)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("The tenant has no {k} hook.")))?;
    Ok(Json(view(&h)))
}

async fn put(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, k)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let k = kind(&k)?;
    let req: HookBody = parse_body(body)?;
    let hooks = hooks(&s)?;
    let timeout_ms = hooks
        .check(&req.url, req.secret.as_deref(), req.timeout_ms)
        .map_err(|e| AdminError::field(e.field, e.detail))?;
    let before = hooks.current(&id, k, &incarnation).await?;
    let now = s.provider.clock.now();
    let (secret, generated) = match (req.secret, &before) {
        (Some(given), _) => (Secret::new(given), false),
        (None, Some(old)) => (old.secret.clone(), false),
        (None, None) => (Secret::new(crate::tokens::random_token(32)), true),
    };
    let hook = HookConfig {
        kind: k,
        url: req.url,
        secret,
        timeout_ms,
        tenant_incarnation: incarnation,
        // Turned off only when asked: a replacement never drops it silently.
        sign_answers: req
            .sign_answers
            .unwrap_or_else(|| before.as_ref().is_some_and(|b| b.sign_answers)),
        created_at: before.as_ref().map_or(now, |b| b.created_at),
        updated_at: now,
    };
    hooks.put(&id, &hook).await?;
    let created = before.is_none();
    tracing::info!(reason = if created { "admin.hook_created" } else { "admin.hook_updated" }, tenant = %id, kind = %k);
    let mut event = admin
        .event(
            if created { "hook.created" } else { "hook.updated" },
            Target::new("hook", k.as_str()),
        )
        .tenant(&id)
        .after(view(&hook));
    if let Some(b) = &before {
        event = event.before(view(b));
    }
    audit::record(&s, event).await?;
    let mut answer = view(&hook);
    if generated {
        if let Some(o) = answer.as_object_mut() {
            // Shown this once: the receiver needs it to verify signatures.
            o.insert("secret".into(), json!(hook.secret.expose()));
        }
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(answer)).into_response())
}

async fn remove(
    admin: Admin,
    State(s): State<Arc<AppState>>,
    Path((id, k)): Path<(String, String)>,
) -> Result<StatusCode, AdminError> {
    let (id, incarnation) = existing(&s, &id).await?;
    let k = kind(&k)?;
    let hooks = hooks(&s)?;
    let Some(before) = hooks.current(&id, k, &incarnation).await? else {
        return Err(AdminError::NotFound(format!("The tenant has no {k} hook.")));
    };
    hooks.delete(&id, k).await?;
    tracing::info!(reason = "admin.hook_deleted", tenant = %id, kind = %k);
    audit::record(
        &s,
        admin
            .event("hook.deleted", Target::new("hook", k.as_str()))
            .tenant(&id)
            .before(view(&before)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
