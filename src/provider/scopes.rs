//! Which scopes an app is granted and which API its access token is for.
//!
//! The rule (RFC 6749 §3.3, RFC 8707); scopes are written bare (`read`) or
//! qualified (`<identifier>/read`), see [`super::resources`]:
//! - The *target* of a request is its `resource` parameter, or else the
//!   app's `default_resource`. An app may target a resource server only if
//!   it is its default resource or defines one of the app's
//!   `allowed_scopes` (a bare one: any server defining that name; a
//!   qualified one: that server); any other `resource` is `invalid_target`.
//! - A requested scope is granted when it is an OIDC scope (`openid`,
//!   `email`, `profile`, `groups`, and `offline_access` for apps that may
//!   use refresh tokens; none of them for `client_credentials`), or when it
//!   names a scope of the target resource server (a bare name it defines,
//!   or a qualified scope with the target's identifier) *and* the app is
//!   allowed that scope there (allowed bare, or qualified with the target's
//!   identifier). A qualified scope of another server is never granted: one
//!   token has one `aud`. Everything else is dropped, and the response's
//!   `scope` says what was granted, each scope written as it was requested.
//! - The access token's `aud` is the target's identifier; without a target
//!   no API scope can be granted and `aud` is the client id.
//!
//! The decision is taken at `/authorize` (stored with the code) and taken
//! again when tokens are minted, so an app that lost a scope, or a resource
//! server that lost it, stops getting it at the next refresh.

use super::clients::{Client, GrantType};
use super::codes::Authorization;
use super::resources::{is_oidc_scope, ResourceServer};
use super::{OAuthError, Provider};

/// Who the tokens will be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A signed-in user (authorization code, refresh token).
    User,
    /// The app itself (`client_credentials`): no OIDC scopes.
    App,
}

/// The outcome: granted scopes and the resource server (the `aud`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Granted scopes, in the order requested, without duplicates.
    pub scope: Vec<String>,
    /// The target resource server's identifier, if any.
    pub resource: Option<String>,
}

/// `invalid_target` (RFC 8707 §2).
pub fn invalid_target(reason: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError::invalid_target(reason, description)
}

impl Provider {
    /// Decides the grant for `requested` scopes aimed at `resource` (the
    /// request's `resource` parameter; the app's default when `None`).
    pub async fn grant_scopes(
        &self,
        client: &Client,
        requested: &[String],
        resource: Option<&str>,
        subject: Subject,
    ) -> Result<Grant, OAuthError> {
        let target = resource.map(str::to_owned).or_else(|| client.default_resource.clone());
        self.decide(client, requested, target, subject).await
    }

    /// The grant of a stored authorization, decided again against the
    /// current app and resource servers (the target is the one decided at
    /// `/authorize`; the app's default is not applied again).
    pub async fn effective_grant(&self, client: &Client, authz: &Authorization) -> Result<Grant, OAuthError> {
        self.decide(client, &authz.scope, authz.resource.clone(), Subject::User)
            .await
    }

    async fn decide(
        &self,
        client: &Client,
        requested: &[String],
        target: Option<String>,
        subject: Subject,
    ) -> Result<Grant, OAuthError> {
        let rs = match &target {
            None => None,
            Some(id) => {
                let Some(rs) = self.resources.get(id).await? else {
                    tracing::info!(reason = "resource.unknown", client_id = %client.client_id, "unknown resource");
                    return Err(invalid_target(
                        "resource.unknown",
                        "The resource is not a registered resource server.",
                    ));
                };
                if !rs.targetable_by(client) {
                    tracing::info!(reason = "resource.not_allowed", client_id = %client.client_id, "resource not allowed");
                    return Err(invalid_target(
                        "resource.not_allowed",
                        "This application may not obtain tokens for that resource.",
                    ));
                }
                Some(rs)
            }
        };
        let mut scope: Vec<String> = Vec::new();
        let mut dropped: Vec<&str> = Vec::new();
        for s in requested {
            if scope.contains(s) {
                continue;
            }
            let granted = if is_oidc_scope(s) {
                subject == Subject::User && (s != "offline_access" || client.allows_grant(GrantType::RefreshToken))
            } else {
                rs.as_ref().is_some_and(|r| api_scope_granted(client, r, s))
            };
            if granted {
                scope.push(s.clone());
            } else {
                dropped.push(s);
            }
        }
        if !dropped.is_empty() {
            tracing::info!(
                reason = "scope.dropped",
                client_id = %client.client_id,
                dropped = %dropped.join(" "),
                "scopes not granted"
            );
        }
        Ok(Grant {
            scope,
            resource: target,
        })
    }
}

/// True if the API scope string `requested` names a scope of `target` (a
/// bare name it defines, or qualified with its identifier) that `client` is
/// allowed there.
fn api_scope_granted(client: &Client, target: &ResourceServer, requested: &str) -> bool {
    target
        .resolve(requested)
        .is_some_and(|name| target.allows(&client.allowed_scopes, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::resources::ResourceScope;
    use chrono::{DateTime, Utc};

    fn rs(id: &str, scopes: &[&str]) -> ResourceServer {
        ResourceServer {
            identifier: id.into(),
            name: id.into(),
            scopes: scopes
                .iter()
                .map(|s| ResourceScope {
                    name: (*s).into(),
                    description: String::new(),
                })
                .collect(),
            created_at: DateTime::<Utc>::MIN_UTC,
            routes: vec![],
        }
    }

    fn app(allowed: &[&str]) -> Client {
        Client {
            require_mfa: false,
            client_id: "app".into(),
            name: "app".into(),
            secret_sha256: None,
            previous_secret: None,
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            allowed_scopes: allowed.iter().map(|s| (*s).to_owned()).collect(),
            grant_types: vec![],
            default_resource: None,
            created_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    #[test]
    fn same_named_scopes_of_two_apis_are_told_apart() {
        let a = rs("https://a.test", &["read", "write"]);
        let b = rs("https://b.test", &["read", "write"]);
        let qualified = app(&["https://a.test/read", "https://b.test/write"]);
        assert!(api_scope_granted(&qualified, &a, "read"));
        assert!(api_scope_granted(&qualified, &a, "https://a.test/read"));
        assert!(!api_scope_granted(&qualified, &b, "read"), "a's read is not b's");
        assert!(
            !api_scope_granted(&qualified, &b, "https://a.test/read"),
            "not the target"
        );
        assert!(!api_scope_granted(&qualified, &b, "https://b.test/read"));
        assert!(api_scope_granted(&qualified, &b, "write"));
        assert!(!api_scope_granted(&qualified, &a, "write"));

        let bare = app(&["read"]);
        for target in [&a, &b] {
            assert!(api_scope_granted(&bare, target, "read"));
            assert!(api_scope_granted(&bare, target, &format!("{}/read", target.identifier)));
            assert!(!api_scope_granted(&bare, target, "write"));
        }
        assert!(!api_scope_granted(&bare, &b, "https://a.test/read"));
        assert!(!api_scope_granted(&bare, &a, "https://a.test/nope"));
    }
}
