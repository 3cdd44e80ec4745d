//! The app's refresh notices the IdP: before a refresh token rotates, the
//! upstream session behind it is checked (through [`UpstreamSessions`],
//! which the broker implements with the connection's connector). A refusal
//! ends the family and every family of the SSO session; a transient failure
//! fails this refresh with `temporarily_unavailable` and consumes nothing, so
//! the app can simply retry. A refresh of a session another refresh is
//! asking the IdP about waits for that answer; one that waited too long is
//! `temporarily_unavailable` too (`refresh.upstream_in_progress`).

use super::codes::Authorization;
use super::refresh::Family;
use super::{OAuthError, Provider};
use async_trait::async_trait;

/// What the upstream IdP said about the session behind a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCheck {
    /// Nothing to do or the IdP still vouches for the person.
    Fine,
    /// The IdP refused (user removed, grant revoked): end the session.
    Refused,
    /// The IdP or the network failed; try again later.
    Unavailable,
    /// Another refresh of the same session was still asking the IdP when
    /// this one stopped waiting for its answer; try again shortly.
    Busy,
}

/// Checks the upstream session of an authorization (implemented by the broker).
#[async_trait]
pub trait UpstreamSessions: Send + Sync {
    /// Refreshes upstream when the session's last check is older than the
    /// connection's interval; ends the SSO session on a refusal.
    async fn check(&self, authz: &Authorization) -> UpstreamCheck;
}

impl Provider {
    /// Checks the upstream session behind the refresh family `family` (as
    /// peeked, for the app that presents its token), before the token is
    /// rotated.
    pub(super) async fn check_upstream(&self, family: &Family) -> Result<(), OAuthError> {
        let Some(hook) = &self.upstream else {
            return Ok(());
        };
        // A session that kept no upstream refresh token at its opening never
        // gets one later (it is written only then): nothing to read or ask.
        if family.authz.upstream_session == Some(false) {
            return Ok(());
        }
        match hook.check(&family.authz).await {
            UpstreamCheck::Fine => Ok(()),
            UpstreamCheck::Refused => {
                self.revoke_family(&family.authz.tenant, &family.id).await?;
                self.revoke_session_families(&family.authz.tenant, &family.authz.sid)
                    .await?;
                tracing::warn!(
                    reason = "refresh.upstream_refused",
                    tenant = %family.authz.tenant,
                    connection = %family.authz.connection,
                    "the IdP refused the upstream refresh: family and SSO session ended"
                );
                Err(OAuthError::invalid_grant(
                    "refresh.upstream_refused",
                    "The identity provider no longer accepts this session; sign in again.",
                ))
            }
            UpstreamCheck::Unavailable => Err(OAuthError::temporarily_unavailable(
                "refresh.upstream_unavailable",
                "The identity provider could not be reached; try again later.",
            )),
            // Nothing consumed: the same refresh token works on a retry.
            UpstreamCheck::Busy => Err(OAuthError::temporarily_unavailable(
                "refresh.upstream_in_progress",
                "The identity provider is being asked about this session; try again shortly.",
            )),
        }
    }
}
