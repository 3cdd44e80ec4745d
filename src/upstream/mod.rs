//! Upstream identity providers: the [`Connector`] seam.
//!
//! A connector knows one protocol. It can *begin* a login (send the browser to
//! the IdP) and *complete* it (validate what the IdP sent back) into an
//! [`Identity`]. The broker owns everything around that: pending logins,
//! sessions, provisioning and codes. Later connectors (local accounts) plug in
//! here as one more variant of [`ConnectionKind`].

pub mod dev;
pub mod http;
pub mod local;
pub mod oidc;
pub mod saml;

use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::SharedStore;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

/// A normalized identity asserted by an upstream IdP, before provisioning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The stable subject at the IdP (SAML NameID or configured attribute; OIDC `sub`).
    pub subject: String,
    /// Email address, read in full (never truncated by XML comments).
    pub email: Option<String>,
    /// Whether the IdP vouches for the email address.
    pub email_verified: Option<bool>,
    /// Display name.
    pub name: Option<String>,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Group or role names.
    pub groups: Vec<String>,
    /// Authentication methods (RFC 8176 values where known).
    pub amr: Vec<String>,
    /// The authentication context class the IdP reports: OIDC `acr`, SAML
    /// `AuthnContextClassRef`. `None` when it said nothing.
    #[serde(default)]
    pub acr: Option<String>,
    /// Every attribute or claim received, for the test-connection page and mapping.
    pub raw: BTreeMap<String, Vec<String>>,
    /// The upstream session index (SAML `SessionIndex`), kept for later single logout.
    pub session_index: Option<String>,
    /// When the person really authenticated at the IdP (Unix seconds): OIDC
    /// `auth_time`, SAML `AuthnInstant`. `None` when the IdP did not say.
    #[serde(default)]
    pub auth_time: Option<i64>,
    /// When the IdP says its session ends (Unix seconds): SAML
    /// `SessionNotOnOrAfter`. Caps the SSO session and refresh families.
    #[serde(default)]
    pub session_expires_at: Option<i64>,
    /// The IdP's refresh token (OIDC), kept with the SSO session so the app's
    /// refresh can ask the IdP whether the person may still sign in. Never
    /// serialized with the identity (dev tickets, logs), never shown.
    #[serde(skip)]
    pub upstream_refresh_token: Option<crate::secret::Secret>,
    /// For a local account: the digest of the password hash as the sign-in
    /// found it ([`crate::local::password_digest`]), so the sign-in's later
    /// steps (its ticket's redemption, Portcullis's second factor) end
    /// once the account changed ([`crate::local::account_unchanged`]).
    /// `None` for every other connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_password: Option<String>,
}

/// The longest upstream subject accepted, in bytes. OIDC caps `sub` at 255
/// ASCII characters and SAML a persistent NameID at 256; the margin is for
/// other formats (an X.509 subject name, a configured attribute).
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// The longest email address accepted, in bytes: a 64-byte local part, `@`
/// and a 255-byte domain (RFC 5321 allows less; this only bounds storage).
pub const MAX_EMAIL_BYTES: usize = 320;
/// The longest display name, given or family name, and group name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// The most group names one identity may carry.
pub const MAX_GROUPS: usize = 1000;
/// The most bytes all of an identity's group names may take together.
pub const MAX_GROUPS_BYTES: usize = 64 * 1024;
/// The longest `acr`, SAML `SessionIndex` or single `amr` value, in bytes
/// (each is carried in the SSO session, and `acr`/`amr` in tokens).
pub const MAX_CLAIM_BYTES: usize = 1024;
/// The most `amr` values one identity may carry (RFC 8176 names 21).
pub const MAX_AMR_VALUES: usize = 64;

impl Identity {
    /// Whether what the IdP said fits what is stored for a user: a subject
    /// of 1 to [`MAX_SUBJECT_BYTES`] bytes, an email of at most
    /// [`MAX_EMAIL_BYTES`], names of at most [`MAX_NAME_BYTES`], at most
    /// [`MAX_GROUPS`] groups of at most [`MAX_NAME_BYTES`] each and
    /// [`MAX_GROUPS_BYTES`] in all, an `acr` and session index of at most
    /// [`MAX_CLAIM_BYTES`], at most [`MAX_AMR_VALUES`] `amr` values of at
    /// most [`MAX_CLAIM_BYTES`] each. Every answer passes here before its
    /// identity link is read or anything is provisioned, so an oversized
    /// value is refused with its reason code, never stored, truncated or
    /// hashed into a key. Values are compared byte-wise elsewhere; nothing
    /// here changes them.
    pub fn check_shape(&self) -> Result<(), UpstreamError> {
        const MESSAGE: &str =
            "The identity provider sent an identity this service cannot accept. Please contact your administrator.";
        let refuse = |code: &'static str, detail: String| Err(UpstreamError::reject(code, MESSAGE, detail));
        if self.subject.is_empty() {
            return refuse("identity.subject_empty", "the subject is empty".into());
        }
        if self.subject.len() > MAX_SUBJECT_BYTES {
            return refuse(
                "identity.subject_too_long",
                format!(
                    "the subject has {} bytes (at most {MAX_SUBJECT_BYTES})",
                    self.subject.len()
                ),
            );
        }
        if let Some(n) = self.email.as_deref().map(str::len).filter(|n| *n > MAX_EMAIL_BYTES) {
            return refuse(
                "identity.email_too_long",
                format!("the email has {n} bytes (at most {MAX_EMAIL_BYTES})"),
            );
        }
        for (field, value) in [
            ("name", &self.name),
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
        ] {
            if let Some(n) = value.as_deref().map(str::len).filter(|n| *n > MAX_NAME_BYTES) {
                return refuse(
                    "identity.name_too_long",
                    format!("{field} has {n} bytes (at most {MAX_NAME_BYTES})"),
                );
            }
        }
        let claims = [("acr", &self.acr), ("session_index", &self.session_index)];
        for (field, value) in claims {
            if let Some(n) = value.as_deref().map(str::len).filter(|n| *n > MAX_CLAIM_BYTES) {
                return refuse(
                    "identity.claim_too_long",
                    format!("{field} has {n} bytes (at most {MAX_CLAIM_BYTES})"),
                );
            }
        }
        let longest_amr = self.amr.iter().map(String::len).max().unwrap_or(0);
        if self.amr.len() > MAX_AMR_VALUES || longest_amr > MAX_CLAIM_BYTES {
            return refuse(
                "identity.claim_too_long",
                format!(
                    "amr has {} values, the longest {longest_amr} bytes (at most {MAX_AMR_VALUES} and {MAX_CLAIM_BYTES})",
                    self.amr.len()
                ),
            );
        }
        let total: usize = self.groups.iter().map(String::len).sum();
        let longest = self.groups.iter().map(String::len).max().unwrap_or(0);
        if self.groups.len() > MAX_GROUPS || total > MAX_GROUPS_BYTES || longest > MAX_NAME_BYTES {
            return refuse(
                "identity.too_many_groups",
                format!(
                    "{} groups of {total} bytes, the longest {longest} (at most {MAX_GROUPS}, {MAX_GROUPS_BYTES} and {MAX_NAME_BYTES})",
                    self.groups.len()
                ),
            );
        }
        Ok(())
    }
}

/// How to send the browser to the IdP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpstreamRedirect {
    /// A plain redirect (HTTP-Redirect binding, OIDC authorization request).
    Redirect(Url),
    /// An auto-submitted form (SAML HTTP-POST binding).
    PostForm {
        /// Where the form posts to.
        action: Url,
        /// Hidden fields (e.g. `SAMLRequest`, `RelayState`).
        fields: Vec<(String, String)>,
    },
}

/// What [`Connector::begin`] returns. `Debug` redacts the private state.
#[derive(Clone)]
pub struct BeginLogin {
    /// Where to send the browser.
    pub redirect: UpstreamRedirect,
    /// Connector-private state, stored with the pending login and handed
    /// back to [`Connector::complete`] (request id, nonce, PKCE verifier...).
    pub state: serde_json::Value,
}

impl std::fmt::Debug for BeginLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeginLogin")
            .field("redirect", &self.redirect)
            .field("state", &crate::secret::Redacted)
            .finish()
    }
}

/// The inputs of [`Connector::begin`].
#[derive(Debug, Clone)]
pub struct BeginRequest<'a> {
    /// The opaque id of the pending login. The connector carries it through the
    /// IdP (OIDC `state`, SAML `RelayState`); it is a random reference, never data.
    pub login_id: &'a str,
    /// Ask the IdP to authenticate the person again (`prompt=login`, `ForceAuthn`).
    pub force_authn: bool,
    /// A hint of who is signing in (an email address), passed on where the protocol allows.
    pub login_hint: Option<&'a str>,
    /// The app's `max_age` (seconds), forwarded where the protocol allows
    /// (OIDC `max_age`); the broker refuses an answer whose authentication is older.
    pub max_age: Option<i64>,
    /// The tenant or app requires multi-factor authentication: ask the IdP
    /// for it (SAML `RequestedAuthnContext`, OIDC `acr_values`). The broker
    /// still checks the answer ([`shows_mfa`]).
    pub require_mfa: bool,
}

/// Parameters of a callback from the IdP, as received.
#[derive(Debug, Clone, Default)]
pub struct CallbackParams {
    /// Query string parameters.
    pub query: BTreeMap<String, String>,
    /// Form fields (HTTP-POST binding).
    pub form: BTreeMap<String, String>,
}

/// A failed upstream refresh ([`Connector::refresh`]).
#[derive(Debug, Clone)]
pub struct RefreshFailed {
    /// Why: `internal == false` is the IdP's refusal, `true` a transient
    /// failure.
    pub error: UpstreamError,
    /// The refresh token the IdP answered with when the failure came after
    /// its answer (its ID token could not be checked now). At a rotating
    /// IdP the token sent is spent, so this one is kept, although the
    /// session was not confirmed.
    pub rotated: Option<crate::secret::Secret>,
}

impl From<UpstreamError> for RefreshFailed {
    fn from(error: UpstreamError) -> Self {
        Self { error, rotated: None }
    }
}

/// A rejected login. `code` is a stable reason code (for logs and metrics);
/// `message` is safe to show to the person; `detail` goes to the log only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct UpstreamError {
    /// Stable reason code, e.g. `saml.audience_mismatch`.
    pub code: &'static str,
    /// A sentence for the person in the browser. Never contains secrets or tokens.
    pub message: String,
    /// Detail for the operator's log.
    pub detail: String,
    /// True when the failure is ours or the network's (5xx), not the IdP's answer.
    pub internal: bool,
    /// True when the store failed (503, retry later), not the IdP (502).
    pub store: bool,
    /// True when the refusal is about the person's account here (a local
    /// account changed while signing in), not the IdP's answer: shown on a
    /// page, as provisioning's refusal of an inactive user is, rather than
    /// sent to the app.
    pub shown: bool,
    /// What the admin who configured the failing URL may read instead of
    /// `code: detail`, when those say more about the gateway's own network
    /// than a tenant admin may learn (see [`UpstreamError::for_admin`]).
    pub admin_view: Option<String>,
}

impl UpstreamError {
    /// A rejection of what the IdP sent (the person sees `message`).
    pub fn reject(code: &'static str, message: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: detail.into(),
            internal: false,
            store: false,
            shown: false,
            admin_view: None,
        }
    }

    /// A refusal about the person's account, shown to them on a page
    /// (see [`UpstreamError::shown`]).
    pub fn account(code: &'static str, message: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            shown: true,
            ..Self::reject(code, message, detail)
        }
    }

    /// A failure on our side or on the way to the IdP.
    pub fn internal(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            message: "The sign-in service could not complete this request. Please try again later.".into(),
            detail: detail.into(),
            internal: true,
            store: false,
            shown: false,
            admin_view: None,
        }
    }

    /// The failure as the admin who set up the connection reads it (a
    /// connection's set-up, a metadata refresh): `code: detail`, except for
    /// an outbound request whose host name could not be used. There the
    /// detail and code tell a name that does not resolve from one that
    /// resolves only to private addresses, which would make a tenant
    /// admin's set-up a probe of the gateway's internal DNS; both read
    /// `outbound.no_public_address` to the admin, and the log keeps which.
    pub fn for_admin(&self) -> String {
        self.admin_view
            .clone()
            .unwrap_or_else(|| format!("{}: {}", self.code, self.detail))
    }

    /// The store failed on the way: the sign-in may work again in a moment.
    pub fn store(e: &impl std::fmt::Display) -> Self {
        Self {
            store: true,
            ..Self::internal("store.unavailable", e.to_string())
        }
    }
}

/// Authentication context classes that mean multi-factor authentication,
/// asked for and accepted by default: Entra ID's, the SAML 2.0 classes that
/// combine two factors, and the PAPE multi-factor policy OIDC IdPs use as `acr`.
pub const DEFAULT_MFA_CONTEXTS: &[&str] = &[
    "http://schemas.microsoft.com/claims/multipleauthn",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MultiFactor",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
    "http://schemas.openid.net/pape/policies/2007/06/multi-factor",
];

/// The kind of factor an RFC 8176 `amr` value shows: something the person
/// knows (0), has (1) or is (2). Others (`user`, a presence test; `geo`,
/// `rba`, `wia`, `mca`) show no factor of their own.
fn factor_kind(amr: &str) -> Option<usize> {
    match amr {
        "pwd" | "pin" | "kba" => Some(0),
        "otp" | "sms" | "tel" | "hwk" | "swk" | "sc" | "pop" => Some(1),
        "fpt" | "face" | "iris" | "retina" | "vbm" => Some(2),
        _ => None,
    }
}

/// Whether `identity` shows multi-factor authentication: `amr` says `mfa`,
/// or names factors of two different kinds (`pwd` and `otp`; a one-time
/// code or a key alone is one factor), or the `acr` /
/// `AuthnContextClassRef` is among `contexts`.
pub fn shows_mfa(identity: &Identity, contexts: &[String]) -> bool {
    let mut kinds = [false; 3];
    for kind in identity.amr.iter().filter_map(|a| factor_kind(a)) {
        if let Some(seen) = kinds.get_mut(kind) {
            *seen = true;
        }
    }
    identity.amr.iter().any(|a| a == "mfa")
        || kinds.iter().filter(|k| **k).count() >= 2
        || identity
            .acr
            .as_ref()
            .is_some_and(|acr| contexts.iter().any(|c| c == acr))
}

/// One upstream protocol, configured for one connection.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Starts a login: builds the request to the IdP.
    async fn begin(&self, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError>;

    /// The pending-login reference the IdP carried back (OIDC `state`, SAML
    /// `RelayState`), if any. It is only a lookup key: the broker still checks
    /// that the pending login belongs to this tenant and connection.
    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str>;

    /// Where an IdP-initiated (unsolicited) login lands: the default app's
    /// client id and redirect URI. `None` when IdP-initiated login is off.
    fn unsolicited_target(&self) -> Option<(String, Url)> {
        None
    }

    /// Asks the IdP whether the person's session still stands, with the
    /// upstream refresh token kept from the login (Dex's `RefreshConnector`);
    /// `subject` is the IdP's `sub` at sign-in, which a refreshed ID token must repeat.
    /// `Ok(Some(token))`: it does; keep `token` (rotated or the same).
    /// `Ok(None)`: this connector cannot tell (the default). An error with
    /// `internal == false` is the IdP's refusal (the user was removed, the grant
    /// revoked); with `internal == true` a transient failure (network, 5xx),
    /// which may come with the token the IdP rotated to ([`RefreshFailed`]).
    async fn refresh(
        &self,
        _refresh_token: &crate::secret::Secret,
        _subject: Option<&str>,
    ) -> Result<Option<crate::secret::Secret>, RefreshFailed> {
        Ok(None)
    }

    /// How often (seconds) the app's refresh asks the IdP again, when the
    /// connection sets it; `None` uses the global `upstream.refresh_interval_secs`.
    fn refresh_interval_secs(&self) -> Option<u64> {
        None
    }

    /// The issuer [`Self::refresh`] sends the upstream refresh token to,
    /// where the connector has one (OIDC): a token kept from another
    /// issuer's sign-in is never sent to it.
    fn refresh_issuer(&self) -> Option<&str> {
        None
    }

    /// The longest an SSO session through this connection may last
    /// (seconds), when the connection sets a maximum; `None`: no cap.
    fn max_session_secs(&self) -> Option<i64> {
        None
    }

    /// The authentication context classes (SAML `AuthnContextClassRef`, OIDC
    /// `acr`) that count as multi-factor for this connection, and that are
    /// asked for when MFA is required.
    fn mfa_contexts(&self) -> Vec<String> {
        DEFAULT_MFA_CONTEXTS.iter().map(|c| (*c).to_owned()).collect()
    }

    /// Completes a login: validates the IdP's answer. `pending` is the state
    /// returned by `begin`, or `None` for an IdP-initiated (unsolicited) login.
    async fn complete(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<Identity, UpstreamError>;

    /// [`Connector::complete`] less its last step, the claim of the
    /// answer's single use (a SAML assertion id in the replay cache), which
    /// is handed back to run: the answer counts as accepted only once the
    /// claim succeeded, and a caller runs it alongside what follows the
    /// validation (provisioning) instead of before it, always to its end
    /// whatever else fails. The default claims nothing (a connector whose
    /// single use is checked inside `complete`, as OIDC's state and nonce).
    async fn complete_unclaimed(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<(Identity, Option<Claim>), UpstreamError> {
        Ok((self.complete(pending, params).await?, None))
    }
}

/// The single-use claim of a validated answer (see
/// [`Connector::complete_unclaimed`]): nothing happens until it is awaited;
/// an error is the answer's rejection (a replay) or the store's failure.
pub type Claim = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), UpstreamError>> + Send>>;

/// What every connector may use: the outbound HTTP client, the clock, the
/// store (replay caches, JWKS rate limits) and the public URL.
#[derive(Clone)]
pub struct UpstreamContext {
    /// Guarded client for discovery, metadata, JWKS, token and userinfo requests.
    pub http: http::OutboundHttp,
    /// The injected clock.
    pub clock: SharedClock,
    /// The shared store.
    pub store: SharedStore,
    /// The public base URL of this gateway (the issuer).
    pub public_url: Url,
    /// Allowed clock skew for validity windows, in seconds.
    pub clock_skew_secs: i64,
    /// SAML responses up to this many bytes (the base64 form value)
    /// validate on the async worker instead of the blocking pool; 0: none
    /// (see [`saml::in_place_bytes_for`]).
    pub saml_in_place_bytes: usize,
}

impl UpstreamContext {
    /// The URL of `path` (no leading slash) under the public base URL.
    pub fn public(&self, path: &str) -> Url {
        crate::config::join_public(&self.public_url, path)
    }
}

/// A problem with a connection's settings, reported by the admin API as
/// `application/problem+json` naming `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SetupError {
    /// The JSON field at fault (e.g. `metadata_xml`).
    pub field: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl SetupError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Deserializes a JSON body; a failure names the exact path of the
    /// field at fault (`scopes[1].name`), found by `serde_path_to_error`
    /// while deserializing, or `body` when the whole body is wrong.
    pub fn from_json<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, Self> {
        serde_path_to_error::deserialize(body).map_err(|e| {
            let parent = e.path().to_string();
            let message = e.into_inner().to_string();
            // A missing field has no path of its own: the path ends at its
            // parent, and serde's `missing_field` names the leaf.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name);
            let field = match (parent.as_str(), missing) {
                (".", Some(name)) => name.to_owned(),
                (".", None) => "body".to_owned(),
                (p, Some(name)) => format!("{p}.{name}"),
                (p, None) => p.to_owned(),
            };
            Self::new(field, message)
        })
    }
}

/// The configuration of one connection, by protocol. Stored as JSON with a
/// `kind` tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// Built once per connection revision and cached with its connector; the size
// of the SAML variant (metadata, keys, mapping) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum ConnectionKind {
    /// OpenID Connect upstream.
    Oidc(oidc::OidcConfig),
    /// SAML 2.0 upstream.
    Saml(saml::SamlConfig),
    /// The built-in development IdP (refused unless dev mode is on).
    Dev(dev::DevConfig),
    /// Local accounts: email and password kept by Portcullis.
    Local(crate::local::LocalConfig),
}

impl ConnectionKind {
    /// The protocol name, as in the `kind` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Oidc(_) => "oidc",
            Self::Saml(_) => "saml",
            Self::Dev(_) => "dev",
            Self::Local(_) => "local",
        }
    }

    /// Who vouches for the subjects this connection signs users in with:
    /// the OIDC `issuer` or the SAML IdP's entity id. `None` for the
    /// development IdP and local accounts, whose subjects are Portcullis's
    /// own. A user's identity link names the connection, not this, so a
    /// change of it renews the connection's users unless the admin says
    /// otherwise ([`crate::tenant::IssuerChange`]).
    pub fn upstream_issuer(&self) -> Option<&str> {
        match self {
            Self::Oidc(cfg) => Some(&cfg.issuer),
            Self::Saml(cfg) => Some(&cfg.idp_entity_id),
            Self::Dev(_) | Self::Local(_) => None,
        }
    }
}

/// The lifecycle state of a connection (the admin API's `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Registered, waiting for a successful test sign-in; serves no users.
    PendingTest,
    /// Serves users.
    #[default]
    Active,
    /// Switched off by an admin; serves no users.
    Disabled,
}

/// A configured connection of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// The connection id, unique within the tenant.
    pub id: ConnectionId,
    /// The owning tenant.
    pub tenant: TenantId,
    /// Bumped on every change, so cached connectors are rebuilt.
    #[serde(default)]
    pub revision: u64,
    /// Whether the connection serves users: a connection registered through
    /// a setup link waits for a successful test sign-in (`pending_test`); a
    /// platform admin may disable one. Stored connections without the field
    /// are active.
    #[serde(default)]
    pub status: ConnectionStatus,
    /// Disabled by the platform admin (the operator), not by the tenant's
    /// own admin: only the platform admin enables, re-statuses or deletes
    /// it then (`admin.disabled_by_platform`), so a switch-off of a tenant's
    /// misbehaving IdP holds. Cleared when the connection is enabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled_by_platform: bool,
    /// The protocol configuration.
    #[serde(flatten)]
    pub kind: ConnectionKind,
}

/// Builds the connector for a connection. Parsed certificates and keys live
/// in the returned value, so callers cache it per `(tenant, connection, revision)`.
pub fn build(connection: &Connection, ctx: &UpstreamContext) -> Result<Arc<dyn Connector>, UpstreamError> {
    match &connection.kind {
        ConnectionKind::Oidc(cfg) => Ok(Arc::new(oidc::OidcConnector::new(
            connection,
            cfg.clone(),
            ctx.clone(),
        )?)),
        ConnectionKind::Saml(cfg) => Ok(Arc::new(saml::SamlConnector::new(
            connection,
            cfg.clone(),
            ctx.clone(),
        )?)),
        ConnectionKind::Dev(cfg) => Ok(Arc::new(dev::DevConnector::new(connection, cfg.clone(), ctx.clone()))),
        ConnectionKind::Local(cfg) => Ok(Arc::new(local::LocalConnector::new(
            connection,
            cfg.clone(),
            ctx.clone(),
        ))),
    }
}

#[cfg(test)]
mod setup_error_tests {
    use super::SetupError;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        #[serde(default)]
        n: u8,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        id: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    fn field(v: serde_json::Value) -> String {
        SetupError::from_json::<Outer>(v).unwrap_err().field
    }

    #[test]
    fn the_path_of_the_bad_field_is_named() {
        assert_eq!(field(json!({"id": 3})), "id");
        assert_eq!(field(json!({"id": "a", "colour": 1})), "colour");
        assert_eq!(
            field(json!({"id": "a", "items": [{"name": "x"}, {"name": 1}]})),
            "items[1].name"
        );
        assert_eq!(
            field(json!({"id": "a", "items": [{"name": "x", "n": 300}]})),
            "items[0].n"
        );
        assert_eq!(
            field(json!({"id": "a", "items": [{"name": "x", "extra": 1}]})),
            "items[0].extra"
        );
        assert_eq!(field(json!({"id": "a", "items": [{}]})), "items[0].name");
        assert_eq!(field(json!({})), "id");
        assert_eq!(field(json!("not an object")), "body");
    }
}

#[cfg(test)]
mod mfa_tests {
    use super::{shows_mfa, Identity};

    fn amr(values: &[&str]) -> Identity {
        Identity {
            amr: values.iter().map(|v| (*v).to_owned()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn one_factor_is_not_mfa_however_strong_and_two_kinds_are() {
        for single in [
            &["otp"][..],
            &["hwk"],
            &["swk", "user"],
            &["pwd"],
            &["pwd", "pin"],
            &["sms", "otp"],
            &[],
        ] {
            assert!(!shows_mfa(&amr(single), &[]), "{single:?}");
        }
        for multi in [
            &["mfa"][..],
            &["pwd", "otp"],
            &["pin", "hwk"],
            &["swk", "fpt"],
            &["pwd", "mfa", "otp"],
        ] {
            assert!(shows_mfa(&amr(multi), &[]), "{multi:?}");
        }
        let acr = Identity {
            acr: Some("urn:example:mfa".into()),
            ..amr(&["otp"])
        };
        assert!(shows_mfa(&acr, &["urn:example:mfa".to_owned()]));
        assert!(!shows_mfa(&acr, &["urn:example:other".to_owned()]));
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    fn code(identity: &Identity) -> Option<&'static str> {
        identity.check_shape().err().map(|e| e.code)
    }

    fn ada() -> Identity {
        Identity {
            subject: "ada".into(),
            email: Some("ada@acme.test".into()),
            name: Some("Ada Lovelace".into()),
            groups: vec!["eng".into()],
            ..Identity::default()
        }
    }

    #[test]
    fn an_identity_within_the_limits_passes_unchanged() {
        assert_eq!(code(&ada()), None);
        let at_limits = Identity {
            subject: "s".repeat(MAX_SUBJECT_BYTES),
            email: Some(format!("{}@acme.test", "a".repeat(MAX_EMAIL_BYTES - 10))),
            family_name: Some("n".repeat(MAX_NAME_BYTES)),
            groups: vec!["g".repeat(64); MAX_GROUPS],
            ..ada()
        };
        assert_eq!(code(&at_limits), None);
    }

    #[test]
    fn a_megabyte_subject_or_email_is_refused_with_its_reason() {
        let mb = "x".repeat(1 << 20);
        let subject = Identity {
            subject: mb.clone(),
            ..ada()
        };
        assert_eq!(code(&subject), Some("identity.subject_too_long"));
        let just_over = Identity {
            subject: "s".repeat(MAX_SUBJECT_BYTES + 1),
            ..ada()
        };
        assert_eq!(code(&just_over), Some("identity.subject_too_long"));
        let email = Identity {
            email: Some(format!("{mb}@acme.test")),
            ..ada()
        };
        assert_eq!(code(&email), Some("identity.email_too_long"));
        let empty = Identity {
            subject: String::new(),
            ..ada()
        };
        assert_eq!(code(&empty), Some("identity.subject_empty"));
    }

    #[test]
    fn oversized_names_and_groups_are_refused_with_their_reason() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        for i in [
            Identity {
                name: Some(long.clone()),
                ..ada()
            },
            Identity {
                given_name: Some(long.clone()),
                ..ada()
            },
            Identity {
                family_name: Some(long.clone()),
                ..ada()
            },
        ] {
            assert_eq!(code(&i), Some("identity.name_too_long"));
        }
        for groups in [
            vec!["g".to_owned(); MAX_GROUPS + 1],
            vec![long.clone()],
            vec!["g".repeat(1000); MAX_GROUPS_BYTES / 1000 + 1],
        ] {
            assert_eq!(code(&Identity { groups, ..ada() }), Some("identity.too_many_groups"));
        }
    }

    #[test]
    fn an_oversized_acr_session_index_or_amr_is_refused_with_its_reason() {
        let long = "c".repeat(MAX_CLAIM_BYTES + 1);
        for i in [
            Identity {
                acr: Some(long.clone()),
                ..ada()
            },
            Identity {
                session_index: Some(long.clone()),
                ..ada()
            },
            Identity {
                amr: vec![long.clone()],
                ..ada()
            },
            Identity {
                amr: vec!["pwd".into(); MAX_AMR_VALUES + 1],
                ..ada()
            },
        ] {
            assert_eq!(code(&i), Some("identity.claim_too_long"));
        }
        let usual = Identity {
            acr: Some("urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport".into()),
            session_index: Some("_be9967abd904ddcae3c0eb4189adbe3f71e327cf93".into()),
            amr: vec!["pwd".into(), "mfa".into()],
            ..ada()
        };
        assert_eq!(code(&usual), None);
    }
}
