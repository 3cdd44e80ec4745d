//! What we know about the IdP: its discovery document and its signing keys.
//!
//! Discovery and key fetching are `openidconnect`'s
//! (`ProviderMetadata::discover_async`, `JsonWebKeySet::fetch_async`), sent
//! through the guarded client. What that crate does not check is checked here:
//! every endpoint the document names must be `https` (or `http` to a
//! loopback/private host when private networks are allowed), never
//! `javascript:`, `data:` or anything else (`oidc.bad_endpoint_url`).
//!
//! Both are cached in the connector (connectors are rebuilt when the
//! connection changes). Expiry follows the injected clock. Fetching the keys
//! again because a token names an unknown `kid` is rate-limited through the
//! shared store, so a flood of forged tokens cannot turn the gateway fleet
//! into a JWKS hammer.

use super::super::http::{HttpRequest, HttpResponse, OutboundHttp};
use super::super::{UpstreamContext, UpstreamError};
use super::keys::OpensslJwk;
use crate::single_flight::Flight;
use chrono::{DateTime, Duration, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, DiscoveryError, IssuerUrl, JsonWebKeySet};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use url::{Host, Url};

/// How long a discovery document is trusted before it is fetched again.
const METADATA_TTL_SECS: i64 = 3600;
/// How long a key set is trusted before it is fetched again.
const JWKS_TTL_SECS: i64 = 3600;
/// The window in which at most one unknown-`kid` refetch happens per
/// connection on each replica.
pub const JWKS_REFETCH_WINDOW_SECS: u64 = 10;

/// Discovery fields `openidconnect`'s core metadata lacks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    /// RFC 9207: the IdP puts `iss` on every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// RP-initiated logout (checked like the other endpoints).
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

/// The discovery document as `openidconnect` reads it.
pub type Discovered = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The IdP's signing keys, verified with our openssl provider.
pub type KeySet = JsonWebKeySet<OpensslJwk>;

/// A checked discovery document.
#[derive(Debug, Clone)]
pub struct ProviderMetadata {
    /// The document (its issuer equals the configured one exactly).
    pub discovered: Discovered,
}

impl ProviderMetadata {
    /// RFC 9207: whether the IdP puts `iss` on every authorization response.
    pub fn iss_parameter_supported(&self) -> bool {
        self.discovered
            .additional_metadata()
            .authorization_response_iss_parameter_supported
    }

    /// The userinfo endpoint, if any.
    pub fn userinfo_endpoint(&self) -> Option<&Url> {
        self.discovered.userinfo_endpoint().map(|u| u.url())
    }

    /// Whether the token endpoint takes the secret in the form body instead
    /// of HTTP Basic (only when the IdP supports post but not basic).
    pub fn prefers_client_secret_post(&self) -> bool {
        match self.discovered.token_endpoint_auth_methods_supported() {
            None => false,
            Some(methods) => {
                !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && methods.contains(&CoreClientAuthMethod::ClientSecretPost)
            }
        }
    }
}

/// What [`endpoint_allowed`] asks of an issuer, said to whoever set it.
pub const ISSUER_RULE: &str = "the issuer must be an https URL (http only to a loopback or private host, \
     and only with outbound.allow_private_networks on)";

/// Whether an endpoint URL the IdP hands out may be used: `https`, or
/// `http` only when private networks are allowed and the host is loopback or
/// private (the guarded client's rule); never any other scheme.
pub fn endpoint_allowed(url: &Url, allow_private_networks: bool) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" if allow_private_networks => match url.host() {
            Some(Host::Ipv4(ip)) => super::super::http::guard::is_forbidden(ip.into()),
            Some(Host::Ipv6(ip)) => super::super::http::guard::is_forbidden(ip.into()),
            Some(Host::Domain(d)) => {
                d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
            }
            None => false,
        },
        _ => false,
    }
}

fn check_endpoints(meta: &Discovered, allow_private_networks: bool) -> Result<(), UpstreamError> {
    let mut endpoints: Vec<(&str, Option<Url>)> = vec![
        (
            "authorization_endpoint",
            Some(meta.authorization_endpoint().url().clone()),
        ),
        ("token_endpoint", meta.token_endpoint().map(|u| u.url().clone())),
        ("userinfo_endpoint", meta.userinfo_endpoint().map(|u| u.url().clone())),
        ("jwks_uri", Some(meta.jwks_uri().url().clone())),
    ];
    if let Some(raw) = &meta.additional_metadata().end_session_endpoint {
        match Url::parse(raw) {
            Ok(u) => endpoints.push(("end_session_endpoint", Some(u))),
            Err(e) => {
                return Err(UpstreamError::internal(
                    "oidc.bad_endpoint_url",
                    format!("end_session_endpoint is not a URL: {e}"),
                ))
            }
        }
    }
    for (name, url) in endpoints {
        if let Some(url) = url {
            if !endpoint_allowed(&url, allow_private_networks) {
                let scheme = url.scheme().chars().take(16).collect::<String>();
                return Err(UpstreamError::internal(
                    "oidc.bad_endpoint_url",
                    format!("the discovery document's {name} (scheme {scheme:?}) is not an https URL"),
                ));
            }
        }
    }
    if meta.token_endpoint().is_none() {
        return Err(UpstreamError::internal(
            "oidc.discovery",
            "the discovery document has no token_endpoint",
        ));
    }
    Ok(())
}

/// The guarded client for discovery, which checks the document's endpoints
/// as soon as it arrives.
struct DocumentCheck {
    http: OutboundHttp,
    document_url: String,
}

impl<'c> openidconnect::AsyncHttpClient<'c> for DocumentCheck {
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, UpstreamError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let is_document = request.uri().to_string() == self.document_url;
            let response = self.http.execute(request).await?;
            if is_document && response.status().is_success() {
                check_document(response.body(), self.http.config().allow_private_networks)?;
            }
            Ok(response)
        })
    }
}

/// The endpoint rule applied to the raw discovery document (fields that are
/// not strings are left to the typed parse).
fn check_document(body: &[u8], allow_private_networks: bool) -> Result<(), UpstreamError> {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(());
    };
    for name in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "end_session_endpoint",
    ] {
        if let Some(raw) = doc.get(name).and_then(serde_json::Value::as_str) {
            let ok = Url::parse(raw).is_ok_and(|u| endpoint_allowed(&u, allow_private_networks));
            if !ok {
                let scheme: String = raw.split(':').next().unwrap_or("").chars().take(16).collect();
                return Err(UpstreamError::internal(
                    "oidc.bad_endpoint_url",
                    format!("the discovery document's {name} (scheme {scheme:?}) is not an https URL"),
                ));
            }
        }
    }
    Ok(())
}

fn discovery_error(code: &'static str, e: DiscoveryError<UpstreamError>) -> UpstreamError {
    match e {
        DiscoveryError::Request(inner) => inner,
        DiscoveryError::Response(status, _, msg) => {
            UpstreamError::internal("outbound.status", format!("{msg} (status {status})"))
        }
        DiscoveryError::Parse(err) => UpstreamError::internal(code, format!("the document is not valid: {err}")),
        DiscoveryError::Validation(msg) => UpstreamError::internal(code, msg),
        DiscoveryError::UrlParse(err) => UpstreamError::internal(code, format!("bad URL: {err}")),
        other => UpstreamError::internal(code, other.to_string()),
    }
}

/// Fetches and checks the discovery document of `issuer` (and the key set it names).
pub async fn discover(ctx: &UpstreamContext, issuer: &str) -> Result<(ProviderMetadata, KeySet), UpstreamError> {
    let issuer_url = IssuerUrl::new(issuer.to_owned())
        .map_err(|e| UpstreamError::internal("oidc.discovery", format!("the issuer is not a URL: {e}")))?;
    // The issuer names every endpoint, so it follows their rule, checked again
    // here because a stored connection outlives the setting it was made under.
    if !endpoint_allowed(issuer_url.url(), ctx.http.config().allow_private_networks) {
        return Err(UpstreamError::internal("oidc.bad_endpoint_url", ISSUER_RULE));
    }
    let document_url = issuer_url
        .join(".well-known/openid-configuration")
        .map_err(|e| UpstreamError::internal("oidc.discovery", format!("the issuer is not a URL: {e}")))?;
    // The guarded client, plus a look at the document's endpoints before
    // `discover_async` goes on to fetch the JWKS it names.
    let http = DocumentCheck {
        http: ctx.http.clone(),
        document_url: document_url.to_string(),
    };
    let (discovered, elapsed) = crate::meter::timed(Discovered::discover_async(issuer_url, &http)).await;
    crate::meter::upstream("oidc_discovery", elapsed, discovered.is_ok());
    let discovered = discovered.map_err(|e| discovery_error("oidc.discovery", e))?;
    // Byte for byte: IssuerUrl equality alone would forgive spelling differences.
    if discovered.issuer().as_str() != issuer {
        return Err(UpstreamError::internal(
            "oidc.discovery",
            format!(
                "the discovery document names issuer \"{}\", not \"{issuer}\"",
                discovered.issuer().as_str()
            ),
        ));
    }
    check_endpoints(&discovered, ctx.http.config().allow_private_networks)?;
    let keys = wrap(discovered.jwks());
    Ok((ProviderMetadata { discovered }, keys))
}

fn wrap(keys: &JsonWebKeySet<CoreJsonWebKey>) -> KeySet {
    JsonWebKeySet::new(keys.keys().iter().cloned().map(OpensslJwk).collect())
}

struct Cached<T> {
    value: Arc<T>,
    expires: DateTime<Utc>,
}

/// The per-connector cache of metadata and keys.
///
/// When a copy expires, one caller fetches it again ([`Flight`]); the callers
/// that find it expired meanwhile use the expired copy, for at most another
/// TTL, instead of all sending the same requests to the IdP at once. A copy
/// never fetched, or expired for longer, is fetched by whoever needs it.
pub struct Provider {
    issuer: String,
    /// When this replica last fetched the keys for an unknown `kid`.
    last_refetch: Mutex<Option<DateTime<Utc>>>,
    metadata: Mutex<Option<Cached<ProviderMetadata>>>,
    jwks: Mutex<Option<Cached<KeySet>>>,
    discovering: Flight,
    fetching_keys: Flight,
}

impl Provider {
    /// An empty cache for `issuer`.
    pub fn new(issuer: String) -> Self {
        Self {
            issuer,
            last_refetch: Mutex::new(None),
            metadata: Mutex::new(None),
            jwks: Mutex::new(None),
            discovering: Flight::new(),
            fetching_keys: Flight::new(),
        }
    }

    /// The discovery document, fetched when absent or stale (with the keys).
    pub async fn metadata(&self, ctx: &UpstreamContext) -> Result<Arc<ProviderMetadata>, UpstreamError> {
        let now = ctx.clock.now();
        if let Some(hit) = fresh(&self.metadata, now) {
            return Ok(hit);
        }
        let turn = self.discovering.take();
        if turn.is_none() {
            if let Some(meanwhile) = expired_within(&self.metadata, now, METADATA_TTL_SECS) {
                return Ok(meanwhile);
            }
        }
        let (meta, keys) = discover(ctx, &self.issuer).await?;
        let meta = Arc::new(meta);
        store(&self.metadata, meta.clone(), now + Duration::seconds(METADATA_TTL_SECS));
        store(&self.jwks, Arc::new(keys), now + Duration::seconds(JWKS_TTL_SECS));
        Ok(meta)
    }

    /// The signing keys; fetched when absent, stale or `refresh` is set.
    pub async fn keys(&self, ctx: &UpstreamContext, refresh: bool) -> Result<Arc<KeySet>, UpstreamError> {
        let now = ctx.clock.now();
        if !refresh {
            if let Some(hit) = fresh(&self.jwks, now) {
                return Ok(hit);
            }
        }
        let turn = self.fetching_keys.take();
        if !refresh && turn.is_none() {
            if let Some(meanwhile) = expired_within(&self.jwks, now, JWKS_TTL_SECS) {
                return Ok(meanwhile);
            }
        }
        let meta = self.metadata(ctx).await?;
        if !refresh {
            // Discovering again brought the keys along.
            if let Some(hit) = fresh(&self.jwks, now) {
                return Ok(hit);
            }
        }
        let (keys, elapsed) = crate::meter::timed(JsonWebKeySet::<CoreJsonWebKey>::fetch_async(
            meta.discovered.jwks_uri(),
            &ctx.http,
        ))
        .await;
        crate::meter::upstream("oidc_jwks", elapsed, keys.is_ok());
        let keys = keys.map_err(|e| discovery_error("oidc.jwks", e))?;
        let keys = Arc::new(wrap(&keys));
        store(&self.jwks, keys.clone(), now + Duration::seconds(JWKS_TTL_SECS));
        Ok(keys)
    }

    /// Whether a refetch for an unknown `kid` may happen now: at most once
    /// per window on this replica. Per replica, not shared: the keys one
    /// replica fetches land in its own cache only, so a window shared by all
    /// would leave the others refusing the IdP's new key until it ends (and
    /// an upstream refresh refused that way ends the user's session).
    pub fn may_refetch(&self, ctx: &UpstreamContext) -> bool {
        let now = ctx.clock.now();
        let mut last = self.last_refetch.lock().unwrap_or_else(|e| e.into_inner());
        let window = Duration::seconds(i64::try_from(JWKS_REFETCH_WINDOW_SECS).unwrap_or(i64::MAX));
        if last.is_some_and(|at| now < at + window) {
            return false;
        }
        *last = Some(now);
        true
    }
}

fn fresh<T>(slot: &Mutex<Option<Cached<T>>>, now: DateTime<Utc>) -> Option<Arc<T>> {
    let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().filter(|c| c.expires > now).map(|c| c.value.clone())
}

/// The copy in `slot` if it expired no more than `grace_secs` ago.
fn expired_within<T>(slot: &Mutex<Option<Cached<T>>>, now: DateTime<Utc>, grace_secs: i64) -> Option<Arc<T>> {
    let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .filter(|c| c.expires + Duration::seconds(grace_secs) > now)
        .map(|c| c.value.clone())
}

fn store<T>(slot: &Mutex<Option<Cached<T>>>, value: Arc<T>, expires: DateTime<Utc>) {
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    *guard = Some(Cached { value, expires });
}
