//! Turning an admin API body (or a tenant file's table) into a stored
//! [`Connection`]: one code path for both.

use crate::ids::{ConnectionId, TenantId};
use crate::upstream::{self, Connection, ConnectionKind, ConnectionStatus, SetupError, UpstreamContext};
use serde_json::{json, Value};

/// Parses and validates a connection body `{"id","kind",...}` for `tenant`.
/// `dev_enabled` allows the built-in development IdP.
pub async fn build_connection(
    ctx: &UpstreamContext,
    tenant: &TenantId,
    body: Value,
    dev_enabled: bool,
) -> Result<Connection, SetupError> {
    let Value::Object(mut map) = body else {
        return Err(SetupError::new("body", "must be a JSON object"));
    };
    let id = match map.remove("id") {
        Some(Value::String(s)) => ConnectionId::parse(&s).map_err(|e| SetupError::new("id", format!("{s:?} {e}")))?,
        _ => return Err(SetupError::new("id", "is required (a string)")),
    };
    let kind = match map.remove("kind") {
        Some(Value::String(s)) => s,
        _ => return Err(SetupError::new("kind", "is required: \"saml\" or \"oidc\"")),
    };
    let status = match map.remove("status") {
        None | Some(Value::Null) => ConnectionStatus::Active,
        Some(v) => parse_status(v)?,
    };
    let rest = Value::Object(map);
    let kind = match kind.as_str() {
        "oidc" => ConnectionKind::Oidc(upstream::oidc::setup(rest, ctx).await?),
        "saml" => ConnectionKind::Saml(upstream::saml::setup(rest, ctx, tenant, &id).await?),
        "dev" if dev_enabled => {
            ConnectionKind::Dev(serde_json::from_value(rest).map_err(|e| SetupError::new("body", e.to_string()))?)
        }
        "dev" => {
            return Err(SetupError::new(
                "kind",
                "the built-in development IdP is only available in dev mode",
            ))
        }
        "local" => ConnectionKind::Local(local_config(rest)?),
        other => {
            return Err(SetupError::new(
                "kind",
                format!("{other:?} is not \"saml\", \"oidc\" or \"local\""),
            ))
        }
    };
    Ok(Connection {
        id,
        tenant: tenant.clone(),
        revision: rand::random(),
        status,
        disabled_by_platform: false,
        kind,
    })
}

/// Parses and checks a local connection's settings.
fn local_config(body: Value) -> Result<crate::local::LocalConfig, SetupError> {
    let cfg: crate::local::LocalConfig = SetupError::from_json(body)?;
    cfg.check()
        .map_err(|(field, message)| SetupError::new(field, message))?;
    Ok(cfg)
}

fn parse_status(v: Value) -> Result<ConnectionStatus, SetupError> {
    serde_json::from_value(v)
        .map_err(|_| SetupError::new("status", "must be \"pending_test\", \"active\" or \"disabled\""))
}

/// Applies a JSON merge patch (RFC 7396) to `target`: objects merge member
/// by member, `null` removes a member, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(&k);
            } else {
                merge_patch(t.entry(k).or_insert(Value::Null), v);
            }
        }
    }
}

/// Applies an admin's merge patch to a stored connection and validates the
/// result as a whole, exactly like creation. The SP keys, entity id and ACS
/// URL stay (unless the patch sets the latter two); `kind` and `id` cannot
/// change; the revision always changes so every replica rebuilds its
/// connector. Every field a connection takes at creation may be patched.
pub async fn patch_connection(
    ctx: &UpstreamContext,
    existing: &Connection,
    patch: Value,
) -> Result<Connection, SetupError> {
    let Value::Object(mut patch) = patch else {
        return Err(SetupError::new("body", "must be a JSON object (a merge patch)"));
    };
    match patch.remove("id") {
        None => {}
        Some(Value::String(s)) if s == existing.id.as_str() => {}
        Some(_) => return Err(SetupError::new("id", "cannot change")),
    }
    match patch.remove("kind") {
        None => {}
        Some(Value::String(s)) if s == existing.kind.name() => {}
        Some(_) => {
            return Err(SetupError::new(
                "kind",
                format!("cannot change (this is a {} connection)", existing.kind.name()),
            ))
        }
    }
    let status = match patch.remove("status") {
        None => existing.status,
        Some(Value::Null) => ConnectionStatus::Active,
        Some(v) => parse_status(v)?,
    };
    let kind = match &existing.kind {
        ConnectionKind::Saml(cfg) => {
            let mut merged = upstream::saml::request_view(cfg);
            // New metadata replaces the old source entirely: a new
            // metadata_xml drops the stored URL and the other way round.
            merge_patch(&mut merged, Value::Object(patch));
            strip_nulls(&mut merged);
            ConnectionKind::Saml(upstream::saml::setup_patched(merged, ctx, &existing.tenant, &existing.id, cfg).await?)
        }
        ConnectionKind::Oidc(cfg) => {
            // The stored secret is the old issuer's: a new issuer gets it
            // only from the admin, never by default.
            let new_issuer = patch
                .get("issuer")
                .is_some_and(|i| i.as_str() != Some(cfg.issuer.as_str()));
            if new_issuer && cfg.client_secret.is_some() && !patch.contains_key("client_secret") {
                return Err(SetupError::new(
                    "client_secret",
                    "must be given again when the issuer changes (the stored secret is the old issuer's)",
                ));
            }
            let mut merged = serde_json::to_value(cfg).map_err(|e| SetupError::new("body", e.to_string()))?;
            merge_patch(&mut merged, Value::Object(patch));
            strip_nulls(&mut merged);
            ConnectionKind::Oidc(upstream::oidc::setup(merged, ctx).await?)
        }
        ConnectionKind::Dev(cfg) => {
            let mut merged = serde_json::to_value(cfg).map_err(|e| SetupError::new("body", e.to_string()))?;
            merge_patch(&mut merged, Value::Object(patch));
            ConnectionKind::Dev(serde_json::from_value(merged).map_err(|e| SetupError::new("body", e.to_string()))?)
        }
        ConnectionKind::Local(cfg) => {
            let mut merged = serde_json::to_value(cfg).map_err(|e| SetupError::new("body", e.to_string()))?;
            merge_patch(&mut merged, Value::Object(patch));
            strip_nulls(&mut merged);
            ConnectionKind::Local(local_config(merged)?)
        }
    };
    let mut revision = rand::random();
    while revision == existing.revision {
        revision = rand::random();
    }
    Ok(Connection {
        id: existing.id.clone(),
        tenant: existing.tenant.clone(),
        revision,
        status,
        // Stays while the connection stays disabled; the admin edge decides
        // who may change the status of one the platform disabled.
        disabled_by_platform: existing.disabled_by_platform && status == ConnectionStatus::Disabled,
        kind,
    })
}

/// Drops top-level `null` members, which mean "unset" in a creation body.
fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
    }
}

/// The public description of a connection (no secrets): what the tenant's
/// IT admin needs to configure at the IdP.
pub fn describe(ctx: &UpstreamContext, c: &Connection) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("id".into(), json!(c.id));
    v.insert("tenant".into(), json!(c.tenant));
    v.insert("kind".into(), json!(c.kind.name()));
    v.insert("status".into(), json!(c.status));
    if c.disabled_by_platform {
        v.insert("disabled_by".into(), json!("platform"));
    }
    // A string: a 64-bit number does not survive JSON parsers that use doubles.
    v.insert("revision".into(), json!(c.revision.to_string()));
    match &c.kind {
        ConnectionKind::Oidc(cfg) => {
            v.insert("issuer".into(), json!(cfg.issuer));
            v.insert("client_id".into(), json!(cfg.client_id));
            v.insert("redirect_uri".into(), json!(upstream::oidc::redirect_uri(ctx, c)));
            v.insert("scopes".into(), json!(cfg.scopes));
            v.insert("claim_mapping".into(), json!(cfg.claim_mapping));
            v.insert("allowed_algorithms".into(), json!(cfg.allowed_algorithms));
            v.insert("userinfo".into(), json!(cfg.userinfo));
            v.insert("refresh_upstream".into(), json!(cfg.refresh_upstream));
            v.insert("refresh_interval_secs".into(), json!(cfg.refresh_interval_secs));
            // The client secret is write-only: only whether one is set.
            v.insert("client_secret_set".into(), json!(cfg.client_secret.is_some()));
            // The IdP's keys come from its JWKS, fetched on use: none stored.
            v.insert("certificates".into(), json!([]));
        }
        ConnectionKind::Saml(cfg) => {
            let (entity, acs) = upstream::saml::effective_sp(ctx, c, cfg);
            v.insert("sp_entity_id".into(), json!(entity));
            v.insert("acs_url".into(), json!(acs));
            v.insert("sp_metadata_url".into(), json!(upstream::saml::sp_metadata_url(ctx, c)));
            v.insert("idp_entity_id".into(), json!(cfg.idp_entity_id));
            // Shown, audited and logged: a user name or password one stored
            // before they were refused (`saml.metadata_url_credentials`) is not.
            v.insert(
                "metadata_url".into(),
                json!(cfg.metadata_url.as_ref().map(upstream::http::without_credentials)),
            );
            // Everything a patch may change, as a patch would spell it
            // (no private keys: the view has none).
            if let Value::Object(settings) = upstream::saml::request_view(cfg) {
                for (k, val) in settings {
                    if !matches!(k.as_str(), "sp_entity_id" | "acs_url") {
                        v.insert(k, val);
                    }
                }
            }
            v.insert(
                "certificates".into(),
                json!(upstream::saml::certificates(cfg, ctx.clock.now())),
            );
        }
        ConnectionKind::Dev(_) => {
            v.insert("certificates".into(), json!([]));
        }
        ConnectionKind::Local(cfg) => {
            v.insert("password_policy".into(), json!(cfg.password_policy));
            v.insert("allow_sign_up".into(), json!(cfg.allow_sign_up));
            v.insert("verify_template".into(), json!(cfg.verify_template));
            v.insert("reset_template".into(), json!(cfg.reset_template));
            v.insert("sign_in".into(), json!(cfg.sign_in));
            v.insert(
                "sign_in_url".into(),
                json!(ctx.public(&format!("local/{}/{}/sign-in", c.tenant, c.id))),
            );
            v.insert("certificates".into(), json!([]));
        }
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The RFC's appendix A example.
        let mut target = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"], "content": "This will be unchanged"});
        merge_patch(
            &mut target,
            json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]}),
        );
        assert_eq!(
            target,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut t = json!({"a": "b"});
        merge_patch(&mut t, json!({"a": {"bb": {"ccc": null}}}));
        assert_eq!(t, json!({"a": {"bb": {}}}));
    }
}
