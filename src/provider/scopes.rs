//! Which scopes an app is granted and which API its access token is for.
//!
//! The rule (RFC 6749 §3.3, RFC 8707):
//! - The *target* of a request is its `resource` parameter, or else the
//!   app's `default_resource`. An app may target a resource server only if
//!   it is its default resource or defines one of the app's
//!   `allowed_scopes`; any other `resource` is `invalid_target`.
//! - A requested scope is granted when it is an OIDC scope (`openid`,
//!   `email`, `profile`, `groups`, and `offline_access` for apps that may
//!   use refresh tokens; none of them for `client_credentials`), or when
//!   the app is allowed it *and* the target resource server defines it.
//!   Everything else is dropped, and the response's `scope` says what was
//!   granted.
//! - The access token's `aud` is the target's identifier; without a target
//!   no API scope can be granted and `aud` is the client id.
//!
//! The decision is taken at `/authorize` (stored with the code) and taken
//! again when tokens are minted, so an app that lost a scope, or a resource
//! server that lost it, stops getting it at the next refresh.

use super::clients::{Client, GrantType};
use super::codes::Authorization;
use super::resources::is_oidc_scope;
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
    OAuthError {
        code: "invalid_target",
        description: description.into(),
        reason,
        detail: None,
    }
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
                let usable = client.default_resource.as_deref() == Some(id.as_str())
                    || client.allowed_scopes.iter().any(|s| rs.defines(s));
                if !usable {
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
                client.allowed_scopes.contains(s) && rs.as_ref().is_some_and(|r| r.defines(s))
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
