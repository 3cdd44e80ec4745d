//! The error type of the OAuth boundary (RFC 6749 §5.2, RFC 6750 §3.1).

/// The RFC error codes the provider answers with. A closed set, so every
/// decision on it (status, `WWW-Authenticate`, introspection) is an
/// exhaustive `match` and a new code cannot be forgotten somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OAuthErrorCode {
    /// `invalid_request` (RFC 6749 §5.2).
    InvalidRequest,
    /// `invalid_client` (RFC 6749 §5.2), answered with 401.
    InvalidClient,
    /// `invalid_grant` (RFC 6749 §5.2).
    InvalidGrant,
    /// `unauthorized_client` (RFC 6749 §5.2).
    UnauthorizedClient,
    /// `unsupported_grant_type` (RFC 6749 §5.2).
    UnsupportedGrantType,
    /// `invalid_scope` (RFC 6749 §5.2).
    InvalidScope,
    /// `invalid_token` (RFC 6750 §3.1), answered with 401.
    InvalidToken,
    /// `server_error` (RFC 6749 §4.1.2.1), answered with 500.
    ServerError,
    /// `temporarily_unavailable` (RFC 6749 §4.1.2.1), answered with 503.
    TemporarilyUnavailable,
    /// `invalid_target` (RFC 8707 §2): a resource the client may not use.
    InvalidTarget,
    /// `insufficient_scope` (RFC 6750 §3.1), answered with 403: a valid
    /// token that was not granted what the resource requires.
    InsufficientScope,
}

impl OAuthErrorCode {
    /// The `error` value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidToken => "invalid_token",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::InvalidTarget => "invalid_target",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidClient | Self::InvalidToken => 401,
            Self::InsufficientScope => 403,
            Self::ServerError => 500,
            Self::TemporarilyUnavailable => 503,
            Self::InvalidRequest
            | Self::InvalidGrant
            | Self::UnauthorizedClient
            | Self::UnsupportedGrantType
            | Self::InvalidScope
            | Self::InvalidTarget => 400,
        }
    }
}

impl std::fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `description` as RFC 6749 allows an `error_description` (§5.2, §4.1.2.1:
/// `%x20-21 / %x23-5B / %x5D-7E`): `"` becomes `'`, any other character
/// outside the set (a backslash, a control character, anything not ASCII)
/// `?`. Applied where a description leaves: the OAuth error JSON, the
/// `WWW-Authenticate` challenge and the error redirect to the app.
pub fn rfc6749_description(description: &str) -> String {
    description
        .chars()
        .map(|c| match c {
            '"' => '\'',
            ' '..='~' if c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// An OAuth error. `code` is the RFC error code; `description` is safe to
/// send; `reason` is the stable reason code for logs and metrics.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} ({reason}): {description}")]
pub struct OAuthError {
    /// The RFC 6749 `error` value.
    pub code: OAuthErrorCode,
    /// `error_description`, safe to show.
    pub description: String,
    /// Stable reason code.
    pub reason: &'static str,
    /// Log-only detail of a server error.
    pub detail: Option<String>,
}

impl OAuthError {
    fn new(code: OAuthErrorCode, reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            reason,
            detail: None,
        }
    }
    /// `invalid_request`
    pub fn invalid_request(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, reason, d)
    }
    /// `invalid_client` (answered with 401)
    pub fn invalid_client(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, reason, d)
    }
    /// `invalid_grant`
    pub fn invalid_grant(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, reason, d)
    }
    /// `unauthorized_client`
    pub fn unauthorized_client(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::UnauthorizedClient, reason, d)
    }
    /// `unsupported_grant_type`
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::UnsupportedGrantType, "token.unsupported_grant_type", d)
    }
    /// `invalid_scope`
    pub fn invalid_scope(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidScope, reason, d)
    }
    /// `invalid_token` (RFC 6750, answered with 401)
    pub fn invalid_token(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidToken, reason, d)
    }
    /// `temporarily_unavailable` (answered with 503): retrying later may work.
    pub fn temporarily_unavailable(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::TemporarilyUnavailable, reason, d)
    }
    /// `insufficient_scope` (RFC 6750, answered with 403)
    pub fn insufficient_scope(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InsufficientScope, reason, d)
    }
    /// `invalid_target` (RFC 8707 §2)
    pub fn invalid_target(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidTarget, reason, d)
    }
    /// `server_error`: the detail is logged, never sent.
    pub fn server(reason: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            code: OAuthErrorCode::ServerError,
            description: "The server could not complete the request.".into(),
            reason,
            detail: Some(detail.to_string()),
        }
    }
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        Self {
            code: OAuthErrorCode::TemporarilyUnavailable,
            description: "The service is temporarily unavailable.".into(),
            reason: "store.unavailable",
            detail: Some(e.to_string()),
        }
    }
}

impl OAuthError {
    /// An access token that did not verify: only a refusal of the token
    /// itself is `invalid_token` (with its reason, a fixed code); the
    /// signing keys unreadable from the store are the store's
    /// `temporarily_unavailable` (503, no detail sent), anything else a
    /// `server_error` (500) whose detail is logged only. A store outage
    /// must not make a valid token look invalid (introspection would
    /// answer `active: false`) nor put the store's words in an answer.
    pub fn unverified_token(e: crate::tokens::TokenError) -> Self {
        use crate::tokens::TokenError;
        match e {
            TokenError::Invalid(_) => {
                Self::invalid_token("token.invalid", format!("The access token is invalid ({e})."))
            }
            TokenError::Store(s) => s.into(),
            other => Self::server("token.verification_failed", other),
        }
    }
}

impl From<crate::tokens::TokenError> for OAuthError {
    /// As [`OAuthError::unverified_token`] for a refused token or the
    /// store; any other failure (signing, keys) is a `server_error`.
    fn from(e: crate::tokens::TokenError) -> Self {
        use crate::tokens::TokenError;
        match e {
            TokenError::Invalid(_) | TokenError::Store(_) => Self::unverified_token(e),
            other => Self::server("token.signing_failed", other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_render_and_map_to_statuses() {
        assert_eq!(OAuthError::invalid_grant("r", "d").code.as_str(), "invalid_grant");
        assert_eq!(OAuthError::invalid_token("r", "d").status(), 401);
        assert_eq!(OAuthError::invalid_client("r", "d").status(), 401);
        assert_eq!(OAuthError::server("r", "d").status(), 500);
        assert_eq!(OAuthError::invalid_scope("r", "d").status(), 400);
        assert_eq!(
            OAuthErrorCode::TemporarilyUnavailable.as_str(),
            "temporarily_unavailable"
        );
        assert_eq!(OAuthErrorCode::TemporarilyUnavailable.status(), 503);
    }

    #[test]
    fn descriptions_keep_to_the_rfc_6749_character_set() {
        assert_eq!(
            rfc6749_description("grant_type \"fo\"o\u{e9}\" is \\ not\tok\n."),
            "grant_type 'fo'o?' is ? not?ok?."
        );
        let all: String = (0u8..=0x7f).map(char::from).chain(['\u{e9}', '\u{202e}']).collect();
        assert!(rfc6749_description(&all)
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e)));
        assert_eq!(rfc6749_description("Fine: (a) [b] {c} ~!"), "Fine: (a) [b] {c} ~!");
    }
}
