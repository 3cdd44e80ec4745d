//! From upstream claims to the uniform [`Identity`], per the connection's mapping.

use super::id_token::Claims;
use crate::upstream::{Identity, UpstreamError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Which upstream claim feeds each uniform attribute. Every field defaults
/// to the standard OIDC claim of the same meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimMapping {
    /// The stable subject (default `sub`). Choose a claim the IdP never reassigns.
    pub subject: String,
    /// Email address (default `email`).
    pub email: String,
    /// Whether the IdP verified the email (default `email_verified`).
    pub email_verified: String,
    /// Display name (default `name`).
    pub name: String,
    /// Given name (default `given_name`).
    pub given_name: String,
    /// Family name (default `family_name`).
    pub family_name: String,
    /// Groups or roles (default `groups`).
    pub groups: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            email: "email".into(),
            email_verified: "email_verified".into(),
            name: "name".into(),
            given_name: "given_name".into(),
            family_name: "family_name".into(),
            groups: "groups".into(),
        }
    }
}

impl ClaimMapping {
    /// The name of the first empty field, if any.
    pub fn empty_field(&self) -> Option<&'static str> {
        [
            ("subject", &self.subject),
            ("email", &self.email),
            ("email_verified", &self.email_verified),
            ("name", &self.name),
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
            ("groups", &self.groups),
        ]
        .into_iter()
        .find(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
    }
}

/// Every value of a claim as strings (arrays flattened, objects as JSON).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(_) => vec![value.to_string()],
    }
}

fn single(claims: &Claims, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds the identity from the merged claims.
pub fn identity(claims: &Claims, mapping: &ClaimMapping) -> Result<Identity, UpstreamError> {
    let subject = single(claims, &mapping.subject).ok_or_else(|| {
        UpstreamError::reject(
            "oidc.missing_subject",
            "The identity provider did not say who you are. Please contact your administrator.",
            format!("claim {:?} (mapped subject) is missing or empty", mapping.subject),
        )
    })?;
    // Some IdPs send the boolean as a string.
    let email_verified = match claims.get(&mapping.email_verified) {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s == "true" => Some(true),
        Some(Value::String(s)) if s == "false" => Some(false),
        _ => None,
    };
    let raw: BTreeMap<String, Vec<String>> = claims
        .iter()
        .map(|(k, v)| (k.clone(), strings(v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    Ok(Identity {
        subject,
        email: single(claims, &mapping.email),
        email_verified,
        name: single(claims, &mapping.name),
        given_name: single(claims, &mapping.given_name),
        family_name: single(claims, &mapping.family_name),
        groups: claims.get(&mapping.groups).map(strings).unwrap_or_default(),
        amr: claims.get("amr").map(strings).unwrap_or_default(),
        acr: claims.get("acr").and_then(Value::as_str).map(str::to_owned),
        raw,
        ..Identity::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_custom_claims_and_flattens_raw() {
        let claims = json!({
            "sub": "u1", "oid": "object-7", "mail": "a@example.com",
            "email_verified": "true", "roles": ["admin", "dev"], "amr": ["pwd", "mfa"],
            "n": 3, "nested": {"x": 1}
        });
        let mapping = ClaimMapping {
            subject: "oid".into(),
            email: "mail".into(),
            groups: "roles".into(),
            ..ClaimMapping::default()
        };
        let id = identity(claims.as_object().unwrap(), &mapping).unwrap();
        assert_eq!(id.subject, "object-7");
        assert_eq!(id.email.as_deref(), Some("a@example.com"));
        assert_eq!(id.email_verified, Some(true));
        assert_eq!(id.groups, vec!["admin", "dev"]);
        assert_eq!(id.amr, vec!["pwd", "mfa"]);
        assert_eq!(id.raw["n"], vec!["3"]);
        assert_eq!(id.raw["nested"], vec![r#"{"x":1}"#]);
    }

    #[test]
    fn missing_subject_is_rejected() {
        let claims = json!({"email": "a@example.com"});
        let err = identity(claims.as_object().unwrap(), &ClaimMapping::default()).unwrap_err();
        assert_eq!(err.code, "oidc.missing_subject");
    }
}
