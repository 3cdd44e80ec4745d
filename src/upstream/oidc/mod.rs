//! The OpenID Connect upstream connector: authorization code flow with PKCE
//! (S256), nonce, RFC 9207 `iss` checking, ID token validation and userinfo.
//!
//! * [`provider`] — discovery document and JWKS, cached with clock-driven TTLs;
//! * [`id_token`] — signature and claim checks, one reason code each;
//! * [`claims`] — the per-connection claim mapping into [`Identity`];
//! * `token_endpoint` — the guarded client for token requests (a text
//!   `expires_in` of digits read as its number).
//!
//! Every request to the IdP goes through the guarded
//! [`OutboundHttp`](super::http::OutboundHttp).

pub mod claims;
pub mod flow;
pub mod id_token;
pub mod keys;
pub mod provider;
mod token_endpoint;

pub use claims::ClaimMapping;

use super::{
    BeginLogin, BeginRequest, CallbackParams, Connection, Connector, Identity, SetupError, UpstreamContext,
    UpstreamError,
};
use crate::secret::Secret;
use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use url::Url;

/// The ID token algorithms accepted when the connection names none.
pub const DEFAULT_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.iter().map(|s| (*s).to_owned()).collect()
}

fn yes() -> bool {
    true
}

/// Stored configuration of an OIDC connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OidcConfig {
    /// The IdP's issuer identifier, kept exactly as given: it is compared
    /// byte for byte with the discovery document, `iss` parameters and ID tokens.
    pub issuer: String,
    /// Our client id at the IdP.
    pub client_id: String,
    /// Our client secret at the IdP (absent for public clients).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Scopes to request (`openid` is always added).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which upstream claim feeds which identity attribute (boxed to keep
    /// [`ConnectionKind`](super::ConnectionKind) variants of similar size).
    #[serde(default)]
    pub claim_mapping: Box<ClaimMapping>,
    /// Accepted ID token signature algorithms. `none` and HS* are refused:
    /// asymmetric signatures only.
    #[serde(default = "default_algorithms")]
    pub allowed_algorithms: Vec<String>,
    /// Read the userinfo endpoint (when the IdP has one) and merge its claims.
    #[serde(default = "yes")]
    pub userinfo: bool,
    /// Ask for `offline_access`, keep the IdP's refresh token, and refresh
    /// upstream when the app refreshes (so a user removed at the IdP stops
    /// getting tokens). A refresh token the IdP sends unasked is used too.
    #[serde(default)]
    pub refresh_upstream: bool,
    /// How often the app's refresh asks the IdP again (seconds); `None`
    /// uses the global `upstream.refresh_interval_secs`.
    #[serde(default)]
    pub refresh_interval_secs: Option<u64>,
    /// The `acr_values` asked for when MFA is required, which an ID token's
    /// `acr` must then be one of (unless its `amr` shows MFA). Empty: the
    /// defaults ([`crate::upstream::DEFAULT_MFA_CONTEXTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr_values: Vec<String>,
}

/// The body of `POST /admin/v1/tenants/{id}/connections` for `"kind":"oidc"`,
/// without `id` and `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConnectionRequest {
    /// The IdP's issuer identifier.
    pub issuer: String,
    /// Our client id at the IdP.
    pub client_id: String,
    /// Our client secret at the IdP.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim mapping; unnamed attributes keep their standard claim.
    #[serde(default)]
    pub claim_mapping: ClaimMapping,
    /// Accepted ID token algorithms.
    #[serde(default = "default_algorithms")]
    pub allowed_algorithms: Vec<String>,
    /// Whether to read userinfo.
    #[serde(default = "yes")]
    pub userinfo: bool,
    /// Refresh upstream when the app refreshes (requests `offline_access`).
    #[serde(default)]
    pub refresh_upstream: bool,
    /// How often the app's refresh asks the IdP again (seconds, 60 to 86400).
    #[serde(default)]
    pub refresh_interval_secs: Option<u64>,
    /// The `acr_values` that mean MFA at this IdP (asked for when MFA is required).
    #[serde(default)]
    pub acr_values: Vec<String>,
}

/// Parses the algorithm allow-list; the error names the offending entry.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("at least one algorithm is needed".into());
    }
    names
        .iter()
        .map(|name| match name.as_str() {
            "none" => Err("\"none\" is never accepted: ID tokens must be signed".to_owned()),
            n if n.starts_with("HS") => Err(format!(
                "{n} is not accepted: only asymmetric signatures (RS*, PS*, ES256, ES384, EdDSA) are"
            )),
            n if DEFAULT_ALGORITHMS.contains(&n) => n.parse::<Algorithm>().map_err(|e| format!("{n}: {e}")),
            n => Err(format!("{n} is not a supported algorithm")),
        })
        .collect()
}

fn check_request(req: &OidcConnectionRequest, ctx: &UpstreamContext) -> Result<(), SetupError> {
    let issuer = Url::parse(&req.issuer).map_err(|e| SetupError::new("issuer", format!("not a URL: {e}")))?;
    if !provider::endpoint_allowed(&issuer, ctx.http.config().allow_private_networks) {
        return Err(SetupError::new("issuer", provider::ISSUER_RULE));
    }
    if issuer.query().is_some() || issuer.fragment().is_some() {
        return Err(SetupError::new(
            "issuer",
            "the issuer must not have a query or fragment",
        ));
    }
    // The issuer is shown, audited and named in the log line of every
    // sign-in: a user name or password in it would be too.
    if !issuer.username().is_empty() || issuer.password().is_some() {
        tracing::info!(
            reason = "oidc.issuer_credentials",
            "an issuer carrying a user name or password refused"
        );
        return Err(SetupError::new(
            "issuer",
            "the issuer must not carry a user name or password: it is shown, audited and logged as given \
             (oidc.issuer_credentials)",
        ));
    }
    if req.client_id.trim().is_empty() {
        return Err(SetupError::new("client_id", "the client id is empty"));
    }
    if req.client_secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
        return Err(SetupError::new(
            "client_secret",
            "the client secret is empty (omit it for a public client)",
        ));
    }
    if let Some(bad) = req
        .scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\'))
    {
        return Err(SetupError::new("scopes", format!("{bad:?} is not a valid scope token")));
    }
    if let Some(field) = req.claim_mapping.empty_field() {
        return Err(SetupError::new(
            format!("claim_mapping.{field}"),
            "the claim name is empty",
        ));
    }
    parse_algorithms(&req.allowed_algorithms).map_err(|e| SetupError::new("allowed_algorithms", e))?;
    if req.refresh_interval_secs.is_some_and(|s| !(60..=86_400).contains(&s)) {
        return Err(SetupError::new(
            "refresh_interval_secs",
            "must be between 60 and 86400 seconds",
        ));
    }
    Ok(())
}

/// Validates a connection request (including discovery at the issuer) and
/// returns the configuration to store.
pub async fn setup(request: serde_json::Value, ctx: &UpstreamContext) -> Result<OidcConfig, SetupError> {
    let req: OidcConnectionRequest =
        serde_json::from_value(request).map_err(|e| SetupError::new("body", e.to_string()))?;
    check_request(&req, ctx)?;
    provider::discover(ctx, &req.issuer).await.map_err(|e| {
        tracing::info!(reason = e.code, detail = %e.detail, "OIDC discovery failed for a connection's set-up");
        SetupError::new("issuer", format!("discovery at the issuer failed: {}", e.for_admin()))
    })?;
    Ok(OidcConfig {
        issuer: req.issuer,
        client_id: req.client_id,
        client_secret: req.client_secret,
        scopes: req.scopes,
        claim_mapping: Box::new(req.claim_mapping),
        allowed_algorithms: req.allowed_algorithms,
        userinfo: req.userinfo,
        refresh_upstream: req.refresh_upstream,
        refresh_interval_secs: req.refresh_interval_secs,
        acr_values: req.acr_values,
    })
}

/// The redirect URI to register at the IdP for this connection.
pub fn redirect_uri(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!("oidc/{}/{}/callback", connection.tenant, connection.id))
}

/// The OIDC connector for one connection.
pub struct OidcConnector {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    redirect_uri: Url,
    provider: provider::Provider,
    ctx: UpstreamContext,
}

impl OidcConnector {
    /// Builds the connector. Nothing is fetched until the first login.
    pub fn new(connection: &Connection, cfg: OidcConfig, ctx: UpstreamContext) -> Result<Self, UpstreamError> {
        let algorithms =
            parse_algorithms(&cfg.allowed_algorithms).map_err(|e| UpstreamError::internal("oidc.config", e))?;
        Ok(Self {
            redirect_uri: redirect_uri(&ctx, connection),
            provider: provider::Provider::new(cfg.issuer.clone()),
            algorithms,
            cfg,
            ctx,
        })
    }
}

#[async_trait]
impl Connector for OidcConnector {
    fn mfa_contexts(&self) -> Vec<String> {
        if self.cfg.acr_values.is_empty() {
            crate::upstream::DEFAULT_MFA_CONTEXTS
                .iter()
                .map(|c| (*c).to_owned())
                .collect()
        } else {
            self.cfg.acr_values.clone()
        }
    }

    async fn begin(&self, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        flow::begin(self, req).await
    }

    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.query.get("state").map(String::as_str)
    }

    async fn refresh(
        &self,
        refresh_token: &Secret,
        subject: Option<&str>,
    ) -> Result<Option<Secret>, crate::upstream::RefreshFailed> {
        flow::refresh(self, refresh_token, subject).await.map(Some)
    }

    fn refresh_interval_secs(&self) -> Option<u64> {
        self.cfg.refresh_interval_secs
    }

    fn refresh_issuer(&self) -> Option<&str> {
        Some(&self.cfg.issuer)
    }

    async fn complete(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        let result = flow::complete(self, pending, params).await;
        match &result {
            Ok(id) => {
                // The subject is often an email: logged as a digest, which
                // still tells the same subject's sign-ins apart from others'.
                let subject = crate::tokens::sha256_base64url(id.subject.as_bytes());
                tracing::info!(code = "oidc.accepted", issuer = %self.cfg.issuer, subject_digest = subject.get(..16).unwrap_or_default(), "oidc login accepted")
            }
            Err(e) => {
                tracing::warn!(code = e.code, issuer = %self.cfg.issuer, detail = %e.detail, "oidc login rejected")
            }
        }
        result
    }
}
