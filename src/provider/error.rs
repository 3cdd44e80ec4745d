//! The error type of the OAuth boundary (RFC 6749 §5.2, RFC 6750 §3.1).

/// An OAuth error. `code` is the RFC error code; `description` is safe to
/// send; `reason` is the stable reason code for logs and metrics.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} ({reason}): {description}")]
pub struct OAuthError {
    /// The RFC 6749 `error` value.
    pub code: &'static str,
    /// `error_description`, safe to show.
    pub description: String,
    /// Stable reason code.
    pub reason: &'static str,
    /// Log-only detail of a server error.
    pub detail: Option<String>,
}

impl OAuthError {
    fn new(code: &'static str, reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            reason,
            detail: None,
        }
    }
    /// `invalid_request`
    pub fn invalid_request(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("invalid_request", reason, d)
    }
    /// `invalid_client` (answered with 401)
    pub fn invalid_client(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("invalid_client", reason, d)
    }
    /// `invalid_grant`
    pub fn invalid_grant(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("invalid_grant", reason, d)
    }
    /// `unauthorized_client`
    pub fn unauthorized_client(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("unauthorized_client", reason, d)
    }
    /// `unsupported_grant_type`
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new("unsupported_grant_type", "token.unsupported_grant_type", d)
    }
    /// `invalid_scope`
    pub fn invalid_scope(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("invalid_scope", reason, d)
    }
    /// `invalid_token` (RFC 6750, answered with 401)
    pub fn invalid_token(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("invalid_token", reason, d)
    }
    /// `temporarily_unavailable` (answered with 503): retrying later may work.
    pub fn temporarily_unavailable(reason: &'static str, d: impl Into<String>) -> Self {
        Self::new("temporarily_unavailable", reason, d)
    }
    /// `server_error`: the detail is logged, never sent.
    pub fn server(reason: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            code: "server_error",
            description: "The server could not complete the request.".into(),
            reason,
            detail: Some(detail.to_string()),
        }
    }
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self.code {
            "invalid_client" | "invalid_token" => 401,
            "server_error" => 500,
            "temporarily_unavailable" => 503,
            _ => 400,
        }
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        Self {
            code: "temporarily_unavailable",
            description: "The service is temporarily unavailable.".into(),
            reason: "store.unavailable",
            detail: Some(e.to_string()),
        }
    }
}

impl From<crate::tokens::TokenError> for OAuthError {
    fn from(e: crate::tokens::TokenError) -> Self {
        Self::server("token.signing_failed", e)
    }
}
