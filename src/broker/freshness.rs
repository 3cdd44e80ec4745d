//! `max_age`, `prompt=login` and `auth_time` tell the truth (OIDC Core
//! §3.1.2.1): the app's freshness demand is forwarded upstream, and an
//! answer whose authentication is older than the app allows, or whose age
//! the IdP does not state, is refused rather than dressed up as fresh.

use super::{error_to_app, Broker, Outcome, PendingLogin};
use crate::broker::authorize::AuthRequest;
use crate::ids::{ConnectionId, TenantId};
use crate::upstream::{Connector, Identity};

const TOO_OLD: &str =
    "The application asked for a recent sign-in, but your identity provider reused an older one. Please sign in again.";
const UNKNOWN: &str =
    "The application asked for a recent sign-in, but your identity provider did not say when you signed in.";

impl Broker {
    /// The hard end of the SSO session this answer opens: the IdP's
    /// `SessionNotOnOrAfter` and the connection's maximum, whichever is first.
    pub(super) fn session_end(&self, connector: &dyn Connector, identity: &Identity) -> Option<i64> {
        let now = self.provider.clock.unix();
        let by_connection = connector.max_session_secs().map(|m| now.saturating_add(m));
        match (identity.session_expires_at, by_connection) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The `auth_time` of the SSO session this answer opens: the IdP's
    /// (never in the future), or now for connectors that cannot say. Refuses
    /// (`error=login_required` to the app) when the app asked for `max_age` or
    /// `prompt=login` and the authentication is older or of unknown age.
    pub(super) fn auth_time(
        &self,
        pending: Option<&PendingLogin>,
        request: &AuthRequest,
        identity: &Identity,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<i64, Box<Outcome>> {
        let now = self.provider.clock.unix();
        let skew = self.upstream.clock_skew_secs;
        let reauth = request.prompt_login || request.max_age == Some(0);
        let max_age = request.max_age.filter(|m| *m > 0);
        let refuse = |reason: &'static str, message: &str| {
            tracing::warn!(
                reason,
                tenant = %tenant,
                connection = %connection,
                auth_time = identity.auth_time,
                max_age = request.max_age,
                prompt_login = request.prompt_login,
                "authentication older than the app allows"
            );
            // The reason code goes to the app too, so its developers can tell
            // "too old" from "unknown" without our logs.
            Box::new(error_to_app(
                request,
                &self.provider.iss(),
                "login_required",
                &format!("{message} (reason: {reason})"),
            ))
        };
        if reauth || max_age.is_some() {
            let Some(at) = identity.auth_time else {
                return Err(refuse("login.auth_time_unknown", UNKNOWN));
            };
            if let Some(m) = max_age {
                if now.saturating_sub(at) > m.saturating_add(skew) {
                    return Err(refuse("login.auth_too_old", TOO_OLD));
                }
            }
            if reauth {
                // The authentication must have happened after we sent the
                // browser to the IdP (an unsolicited answer has no start).
                let started = pending.map_or(now, |p| p.started_at);
                if at < started.saturating_sub(skew) {
                    return Err(refuse("login.auth_too_old", TOO_OLD));
                }
            }
        }
        Ok(identity.auth_time.map_or(now, |at| at.min(now)))
    }
}
