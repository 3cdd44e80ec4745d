//! Parsing and checking an app's authorization request.
//!
//! The order matters (RFC 6749 §4.1.2.1): until the client and its redirect
//! URI are known good, errors go to a page, never to a redirect; after that,
//! errors go back to the app as `error=` parameters.

use crate::provider::clients::Client;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A checked authorization request, stored with the pending login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// The app.
    pub client_id: String,
    /// The requested redirect URI: a registered one, or a registered
    /// loopback IP one with another port (RFC 8252 §7.3).
    pub redirect_uri: String,
    /// Requested scopes (always includes `openid`); once the broker has
    /// decided the grant, the granted ones.
    pub scope: Vec<String>,
    /// RFC 8707 `resource`; once the grant is decided, the target resource
    /// server (the app's default when none was asked for).
    #[serde(default)]
    pub resource: Option<String>,
    /// The app's state, echoed back.
    pub state: Option<String>,
    /// The app's nonce, echoed in the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// `prompt=login`.
    pub prompt_login: bool,
    /// `prompt=none`.
    pub prompt_none: bool,
    /// `max_age`, seconds.
    pub max_age: Option<i64>,
    /// `login_hint`.
    pub login_hint: Option<String>,
    /// `tenant` parameter.
    pub tenant: Option<String>,
    /// `connection` parameter.
    pub connection: Option<String>,
    /// When the app was registered (Unix milliseconds), as read when the
    /// request was checked: its code is for that registration only.
    #[serde(default)]
    pub client_registered_at: Option<i64>,
    /// The `sub` of the request's `id_token_hint` (OIDC Core 3.1.2.1): the
    /// user the app expects, whom a fresh sign-in must turn out to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hinted_sub: Option<String>,
}

impl AuthRequest {
    /// A request with only the client, redirect URI and state: what is known
    /// when answering a bad request, or an IdP-initiated login (default scopes).
    pub fn minimal(client_id: &str, redirect_uri: &str, state: Option<String>, scope: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            resource: None,
            state,
            nonce: None,
            code_challenge: None,
            prompt_login: false,
            prompt_none: false,
            max_age: None,
            login_hint: None,
            tenant: None,
            connection: None,
            client_registered_at: None,
            hinted_sub: None,
        }
    }

    /// The same request, for the registration of the app `client` is.
    pub fn registered(mut self, client: &crate::provider::clients::Client) -> Self {
        self.client_registered_at = Some(client.created_at.timestamp_millis());
        self
    }
}

/// A rejected authorization request.
#[derive(Debug, Clone)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show a page.
    Page {
        /// Reason code.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Send the app an error at its redirect URI.
    Redirect {
        /// RFC 6749 error code.
        error: &'static str,
        /// Reason code.
        reason: &'static str,
        /// `error_description`.
        description: String,
    },
}

/// The longest `state`, `nonce`, `login_hint`, `tenant` or `connection`
/// kept from an authorization request.
const MAX_PARAM_LEN: usize = 2048;

fn redirect_err(error: &'static str, reason: &'static str, description: impl Into<String>) -> AuthorizeError {
    AuthorizeError::Redirect {
        error,
        reason,
        description: description.into(),
    }
}

/// Step one: the client id and redirect URI, checked before anything can be
/// sent back to the app.
pub fn client_and_redirect<'a>(
    params: &'a BTreeMap<String, String>,
    client: Option<&Client>,
) -> Result<&'a str, AuthorizeError> {
    let page = |reason, message: &str| AuthorizeError::Page {
        reason,
        message: message.into(),
    };
    let Some(client) = client else {
        return Err(page(
            "authorize.unknown_client",
            "The application is not registered with this sign-in service.",
        ));
    };
    let Some(uri) = params.get("redirect_uri") else {
        return Err(page(
            "authorize.missing_redirect_uri",
            "The application did not say where to return (redirect_uri).",
        ));
    };
    if !client.redirect_uri_matches(uri) {
        return Err(page(
            "authorize.redirect_uri_not_registered",
            "The application asked to return to an address that is not registered for it.",
        ));
    }
    Ok(uri)
}

fn is_pkce_challenge(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Step two: every other parameter.
pub fn parse(
    params: &BTreeMap<String, String>,
    client: &Client,
    redirect_uri: &str,
) -> Result<AuthRequest, AuthorizeError> {
    // OIDC Core 3.1.2.6: each has its own error code.
    if params.contains_key("request") {
        return Err(redirect_err(
            "request_not_supported",
            "authorize.request_object",
            "Request objects are not supported.",
        ));
    }
    if params.contains_key("request_uri") {
        return Err(redirect_err(
            "request_uri_not_supported",
            "authorize.request_object",
            "Request objects by reference are not supported.",
        ));
    }
    match params.get("response_type").map(String::as_str) {
        Some("code") => {}
        Some(_) => {
            return Err(redirect_err(
                "unsupported_response_type",
                "authorize.response_type",
                "Only response_type=code is supported.",
            ))
        }
        None => {
            return Err(redirect_err(
                "invalid_request",
                "authorize.missing_response_type",
                "response_type is required.",
            ))
        }
    }
    if let Some(mode) = params.get("response_mode") {
        if mode != "query" {
            return Err(redirect_err(
                "invalid_request",
                "authorize.response_mode",
                "Only response_mode=query is supported.",
            ));
        }
    }
    let scope: Vec<String> = params
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if !scope.iter().any(|s| s == "openid") {
        return Err(redirect_err(
            "invalid_scope",
            "authorize.scope_without_openid",
            "scope must include openid.",
        ));
    }
    let code_challenge = params.get("code_challenge").cloned();
    match (params.get("code_challenge_method").map(String::as_str), &code_challenge) {
        (Some("S256"), Some(c)) if is_pkce_challenge(c) => {}
        (Some("S256"), Some(_)) => {
            return Err(redirect_err(
                "invalid_request",
                "pkce.bad_challenge",
                "code_challenge is not a S256 challenge.",
            ))
        }
        (None, Some(_)) | (Some("plain"), _) => {
            return Err(redirect_err(
                "invalid_request",
                "pkce.method_not_s256",
                "code_challenge_method must be S256.",
            ))
        }
        (Some(_), _) => {
            return Err(redirect_err(
                "invalid_request",
                "pkce.bad_method",
                "code_challenge_method must be S256.",
            ))
        }
        (None, None) if client.is_public() => {
            return Err(redirect_err(
                "invalid_request",
                "pkce.required",
                "PKCE (S256) is required for public clients.",
            ))
        }
        (None, None) => {}
    }
    let prompts: Vec<&str> = params
        .get("prompt")
        .map(|p| p.split_whitespace().collect())
        .unwrap_or_default();
    let prompt_none = prompts.contains(&"none");
    if prompt_none && prompts.len() > 1 {
        return Err(redirect_err(
            "invalid_request",
            "authorize.prompt_none_combined",
            "prompt=none cannot be combined.",
        ));
    }
    // There is no consent screen (apps are registered by the platform
    // admin, which is the consent) and no account chooser (one account per
    // tenant and browser), so these are refused rather than ignored.
    if prompts.contains(&"consent") {
        return Err(redirect_err(
            "consent_required",
            "authorize.prompt_consent_unsupported",
            "prompt=consent is not supported: this service does not ask users for consent.",
        ));
    }
    if prompts.contains(&"select_account") {
        return Err(redirect_err(
            "invalid_request",
            "authorize.prompt_select_account_unsupported",
            "prompt=select_account is not supported.",
        ));
    }
    if prompts.iter().any(|p| !matches!(*p, "none" | "login")) {
        return Err(redirect_err(
            "invalid_request",
            "authorize.prompt",
            "A prompt value is not supported: only none and login are.",
        ));
    }
    let max_age = match params.get("max_age") {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return Err(redirect_err(
                    "invalid_request",
                    "authorize.max_age",
                    "max_age must be a non-negative integer.",
                ))
            }
        },
    };
    // The app's state and nonce come back to it as sent, or the request is
    // refused: never silently dropped (RFC 6749 4.1.2, OIDC Core 3.1.3.7).
    for name in ["state", "nonce"] {
        if params.get(name).is_some_and(|v| v.len() > MAX_PARAM_LEN) {
            return Err(redirect_err(
                "invalid_request",
                "authorize.param_too_long",
                format!("{name} must be at most {MAX_PARAM_LEN} bytes."),
            ));
        }
    }
    let short = |k: &str| {
        params
            .get(k)
            .filter(|v| !v.is_empty() && v.len() <= MAX_PARAM_LEN)
            .cloned()
    };
    Ok(AuthRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        scope,
        resource: params.get("resource").cloned(),
        // Echoed exactly as sent, an empty one too (RFC 6749 4.1.2).
        state: params.get("state").cloned(),
        nonce: short("nonce"),
        code_challenge,
        prompt_login: prompts.contains(&"login"),
        prompt_none,
        max_age,
        login_hint: short("login_hint"),
        tenant: short("tenant"),
        connection: short("connection"),
        client_registered_at: Some(client.created_at.timestamp_millis()),
        // Set by the broker once the hint's signature is checked.
        hinted_sub: None,
    })
}
