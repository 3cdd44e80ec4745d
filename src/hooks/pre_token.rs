//! The pre-token-generation hook: what it is sent, what it may answer, and
//! how its answer changes the claims of the ID and access tokens.
//!
//! Request (`POST`, signed):
//! ```json
//! {"version": 1, "kind": "pre_token_generation", "tenant": "acme",
//!  "connection": "okta", "client_id": "billing", "scopes": ["openid", "email"],
//!  "resource": "https://api.example.com" | null,
//!  "user": {"sub": "…", "email": "…", "email_verified": true, "name": "…",
//!           "given_name": "…", "family_name": "…", "groups": ["…"]},
//!  "id_token": {…claims about to be issued…} | null,
//!  "access_token": {…claims about to be issued…}}
//! ```
//! Answer (200, every member optional; `{}` changes nothing):
//! ```json
//! {"id_token": {"claims_to_add_or_override": {"plan": "gold"}, "claims_to_suppress": ["groups"]},
//!  "access_token": {"claims_to_add_or_override": {"roles": ["admin"]}, "claims_to_suppress": []}}
//! ```
//! A claim in [`PROTECTED`] can be neither added, overridden nor
//! suppressed: such an answer is refused as a whole (`hook.protected_claim`)
//! and the token request fails; so does an answer that is not exactly this
//! shape (`hook.bad_answer`). Nothing is ever issued half-changed or
//! unchanged after the hook failed.

use super::HookError;
use crate::directory::User;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Claims a hook can never add, override or suppress. The issue's list
/// (`iss`, `sub`, `aud`, `tenant`, `exp`, `iat`, `nbf`, `jti`, `auth_time`,
/// `nonce`, `azp`, `scope`, `client_id`, `amr`, `acr`, `sid`), plus the
/// hashes bound to other tokens, RFC 8693's delegation claims, `cnf`, the
/// connection, and `email`/`email_verified`: apps trust a verified email
/// across tenants, and the gateway vouches for it only for the tenant's
/// own domains (`tenant::vouch_email`), which a tenant's hook must not undo.
pub const PROTECTED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "tenant",
    "exp",
    "iat",
    "nbf",
    "jti",
    "auth_time",
    "nonce",
    "azp",
    "scope",
    "client_id",
    "amr",
    "acr",
    "sid",
    "at_hash",
    "c_hash",
    "s_hash",
    "act",
    "may_act",
    "cnf",
    "connection",
    "email",
    "email_verified",
    "subject_jti",
    "fam",
];

/// The most claims one answer may add or override per token.
pub const MAX_CLAIMS: usize = 100;
/// The longest claim name.
pub const MAX_CLAIM_NAME: usize = 128;

/// The changes of one token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimChanges {
    /// Claims set (added, or replacing the value about to be issued).
    #[serde(default)]
    pub claims_to_add_or_override: Map<String, Value>,
    /// Claims removed.
    #[serde(default)]
    pub claims_to_suppress: Vec<String>,
}

/// The hook's answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Changes of the ID token (ignored when none is issued).
    #[serde(default)]
    pub id_token: Option<ClaimChanges>,
    /// Changes of the access token.
    #[serde(default)]
    pub access_token: Option<ClaimChanges>,
}

/// What the request tells the hook besides the claims.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The user's tenant.
    pub tenant: &'a str,
    /// The connection the user signed in through.
    pub connection: &'a str,
    /// The app.
    pub client_id: &'a str,
    /// The granted scopes.
    pub scopes: &'a [String],
    /// The resource server the access token is for.
    pub resource: Option<&'a str>,
    /// The user.
    pub user: &'a User,
}

/// The request body.
pub fn request(ctx: &Context<'_>, access: &Map<String, Value>, id: Option<&Map<String, Value>>) -> Value {
    let u = ctx.user;
    json!({
        "version": 1,
        "kind": super::HookKind::PreTokenGeneration.as_str(),
        "tenant": ctx.tenant,
        "connection": ctx.connection,
        "client_id": ctx.client_id,
        "scopes": ctx.scopes,
        "resource": ctx.resource,
        "user": {
            "sub": u.sub, "email": u.email, "email_verified": u.email_verified, "name": u.name,
            "given_name": u.given_name, "family_name": u.family_name, "groups": u.groups,
        },
        "id_token": id,
        "access_token": access,
    })
}

/// Reads the hook's answer.
pub fn parse(answer: Value) -> Result<Answer, HookError> {
    serde_json::from_value(answer).map_err(|e| HookError::BadAnswer(super::clip(&e.to_string(), 200)))
}

/// Checks `changes` without applying them: protected claims, names, sizes.
pub fn check(changes: &ClaimChanges) -> Result<(), HookError> {
    if changes.claims_to_add_or_override.len() > MAX_CLAIMS {
        return Err(HookError::BadAnswer(format!("more than {MAX_CLAIMS} claims to add")));
    }
    let names = changes
        .claims_to_add_or_override
        .keys()
        .chain(changes.claims_to_suppress.iter());
    for name in names {
        if let Some(p) = PROTECTED.iter().find(|p| **p == name.as_str()) {
            return Err(HookError::ProtectedClaim((*p).to_owned()));
        }
        if name.is_empty() || name.chars().count() > MAX_CLAIM_NAME || name.chars().any(char::is_control) {
            return Err(HookError::BadAnswer(format!(
                "a claim name must be 1 to {MAX_CLAIM_NAME} printable characters"
            )));
        }
    }
    for (name, value) in &changes.claims_to_add_or_override {
        if value.is_null() {
            return Err(HookError::BadAnswer(format!(
                "claim {:?} is null (suppress it instead)",
                super::clip(name, 64)
            )));
        }
        if changes.claims_to_suppress.contains(name) {
            return Err(HookError::BadAnswer(format!(
                "claim {:?} is both set and suppressed",
                super::clip(name, 64)
            )));
        }
    }
    Ok(())
}

/// Applies checked `changes` to `claims`.
pub fn apply(changes: ClaimChanges, claims: &mut Map<String, Value>) {
    for name in &changes.claims_to_suppress {
        claims.remove(name);
    }
    for (name, value) in changes.claims_to_add_or_override {
        claims.insert(name, value);
    }
}

/// Checks the whole answer, then applies it to both tokens' claims: either
/// everything applies or nothing does.
pub fn apply_answer(
    answer: Answer,
    access: &mut Map<String, Value>,
    id: Option<&mut Map<String, Value>>,
) -> Result<(), HookError> {
    let access_changes = answer.access_token.unwrap_or_default();
    let id_changes = answer.id_token.unwrap_or_default();
    check(&access_changes)?;
    check(&id_changes)?;
    apply(access_changes, access);
    if let Some(id) = id {
        apply(id_changes, id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Map<String, Value> {
        json!({"sub": "u1", "tenant": "acme", "groups": ["a"], "name": "N"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn adds_overrides_and_suppresses() {
        let answer = parse(json!({
            "id_token": {"claims_to_add_or_override": {"plan": "gold", "name": "M"}, "claims_to_suppress": ["groups"]},
            "access_token": {"claims_to_add_or_override": {"roles": ["admin"]}}
        }))
        .unwrap();
        let (mut at, mut id) = (claims(), claims());
        apply_answer(answer, &mut at, Some(&mut id)).unwrap();
        assert_eq!(id["plan"], "gold");
        assert_eq!(id["name"], "M");
        assert!(!id.contains_key("groups"));
        assert_eq!(at["roles"], json!(["admin"]));
        assert_eq!(at["groups"], json!(["a"]));
    }

    #[test]
    fn protected_claims_refuse_the_whole_answer() {
        for bad in [
            json!({"access_token": {"claims_to_add_or_override": {"sub": "other"}}}),
            json!({"id_token": {"claims_to_suppress": ["tenant"]}}),
            json!({"id_token": {"claims_to_add_or_override": {"email_verified": true}}}),
        ] {
            let (mut at, mut id) = (claims(), claims());
            let e = apply_answer(parse(bad).unwrap(), &mut at, Some(&mut id)).unwrap_err();
            assert_eq!(e.reason(), "hook.protected_claim");
            assert_eq!(at, claims(), "nothing applied");
            assert_eq!(id, claims(), "nothing applied");
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        assert_eq!(parse(json!({"idToken": {}})).unwrap_err().reason(), "hook.bad_answer");
        assert_eq!(
            parse(json!({"id_token": {"claims_to_add_or_override": []}}))
                .unwrap_err()
                .reason(),
            "hook.bad_answer"
        );
        let both =
            parse(json!({"id_token": {"claims_to_add_or_override": {"x": 1}, "claims_to_suppress": ["x"]}})).unwrap();
        assert_eq!(
            apply_answer(both, &mut claims(), None).unwrap_err().reason(),
            "hook.bad_answer"
        );
        let null = parse(json!({"access_token": {"claims_to_add_or_override": {"x": null}}})).unwrap();
        assert_eq!(
            apply_answer(null, &mut claims(), None).unwrap_err().reason(),
            "hook.bad_answer"
        );
        assert!(apply_answer(parse(json!({})).unwrap(), &mut claims(), None).is_ok());
    }
}
