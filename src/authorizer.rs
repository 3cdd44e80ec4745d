//! `portcullis::authorizer`: a tower layer a Rust API puts in front of its
//! routes to accept Portcullis access tokens (RFC 9068) without a round
//! trip per request.
//!
//! It validates the bearer token against the gateway's JWKS, then `typ`
//! (`at+jwt`), `iss`, `aud` (the API's resource identifier), `exp`/`nbf` on
//! the injected clock, and the scopes each route requires (written bare,
//! `read`, or qualified with this API, `<audience>/read`, in the token and
//! the route alike, as forward auth reads them). The identity goes
//! into the request's extensions as an [`Identity`]. Refusals are RFC 6750:
//! 401 with `WWW-Authenticate: Bearer error="invalid_token"`, 403 with
//! `error="insufficient_scope"`, each with its reason code in
//! `X-Portcullis-Reason`.
//!
//! The JWKS is fetched at the first request, cached for
//! [`AuthorizerConfig::cache_ttl`], and fetched again when the cache is
//! stale or a token names an unknown `kid`; never more than once per
//! [`AuthorizerConfig::min_refetch_interval`], whatever the cause, so
//! neither garbage `kid`s nor an unreachable gateway make it hammer the
//! gateway or hold requests behind fetches. One fetch runs at a time. While
//! the keys are stale, a token of a known `kid` is answered from them at once
//! between fetches and while another request's fetch is in flight; only the
//! request that starts a fetch waits for it (up to
//! [`AuthorizerConfig::fetch_timeout`]), so a key the gateway withdrew stops
//! counting as soon as an answering gateway says so; a token whose `kid` the
//! keys lack waits for a fetch in flight, whose answer may hold it. A failed
//! fetch (`authorizer.jwks_unavailable` in the log) keeps the keys known;
//! they serve for at most one more `cache_ttl` (at least
//! `min_refetch_interval`) after they went stale, as the gateway's own
//! caches use an expired copy.
//! Beyond that, or before any fetch succeeded, every token is refused with
//! 503 `authorizer.jwks_unavailable` (no `WWW-Authenticate`: the token was
//! not judged) until a fetch succeeds. A `kid` the usable keys lack is
//! refused 401 `authorizer.unknown_kid`, after a fetch if one is due.
//!
//! What a local check cannot see: a token revoked, or a user disabled,
//! after the token was issued. Tokens are short-lived; an API that must
//! honour revocation at once puts `/forward-auth` (or `/introspect`) in
//! front instead.
//!
//! ```no_run
//! use axum::{routing::get, Extension, Router};
//! use portcullis::authorizer::{Authorizer, AuthorizerConfig, Identity};
//! use std::sync::Arc;
//!
//! async fn me(Extension(who): Extension<Identity>) -> String {
//!     format!("hello {} of {:?}", who.sub, who.tenant)
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let authorizer = Authorizer::new(
//!     AuthorizerConfig::new("https://sso.example.com", "https://api.example.com")?,
//!     Arc::new(portcullis::clock::SystemClock),
//! )?;
//! let app: Router = Router::new()
//!     .route("/me", get(me).layer(authorizer.require(["read"])))
//!     .route("/admin", get(me).layer(authorizer.require(["read", "admin"])));
//! # Ok(())
//! # }
//! ```

use crate::clock::SharedClock;
use crate::tokens::{SigningAlgorithm, LEEWAY_SECS};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{header, HeaderValue, Request, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};
use url::Url;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the gateway is and which API this is.
#[derive(Debug, Clone)]
pub struct AuthorizerConfig {
    /// The gateway's issuer (`iss` of its tokens), without a trailing slash.
    pub issuer: String,
    /// The JWKS URL (default: `{issuer}/jwks`).
    pub jwks_uri: Url,
    /// This API's resource server identifier: the `aud` its tokens carry.
    pub audience: String,
    /// How long fetched keys are used before being fetched again (default
    /// 5 min). While the JWKS cannot be fetched, they are used for one more
    /// `cache_ttl` (at least `min_refetch_interval`), then not at all.
    pub cache_ttl: Duration,
    /// The shortest time between two fetches, whatever caused them: an
    /// unknown `kid`, stale keys, a failed fetch (default 30 s).
    pub min_refetch_interval: Duration,
    /// The timeout of one JWKS fetch (default 5 s).
    pub fetch_timeout: Duration,
    /// Whether `jwks_uri` may be plain http to a host other than loopback
    /// (default `false`): only over a network that is itself trusted (a
    /// service mesh with mutual TLS), since whoever can change the JWKS on
    /// its way can sign any token this API accepts.
    pub allow_http: bool,
}

impl AuthorizerConfig {
    /// A configuration with the defaults, for the gateway `issuer` and the
    /// resource server `audience`.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, AuthorizerError> {
        let issuer = issuer.trim_end_matches('/').to_owned();
        let jwks_uri = Url::parse(&format!("{issuer}/jwks")).map_err(|e| AuthorizerError::Config(e.to_string()))?;
        Ok(Self {
            issuer,
            jwks_uri,
            audience: audience.to_owned(),
            cache_ttl: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            allow_http: false,
        })
    }

    /// Refuses a JWKS URL an attacker on the path could answer: it must be
    /// https, or http to loopback, or http with [`Self::allow_http`].
    fn check_jwks_uri(&self) -> Result<(), AuthorizerError> {
        let loopback = match self.jwks_uri.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        match self.jwks_uri.scheme() {
            "https" => Ok(()),
            "http" if loopback || self.allow_http => Ok(()),
            _ => Err(AuthorizerError::Config(format!(
                "the JWKS URL {} must be https (http only to loopback, or with allow_http)",
                self.jwks_uri
            ))),
        }
    }
}

/// Why an authorizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizerError {
    /// The configuration is unusable.
    #[error("authorizer configuration: {0}")]
    Config(String),
}

/// Who a valid token is about; in the request's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user's `sub` (the client id for an app's own token).
    pub sub: String,
    /// The user's tenant (none for an app's own token).
    pub tenant: Option<String>,
    /// The app the token was issued to.
    pub client_id: String,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// Every claim of the token (extra claims of exchanged tokens included).
    pub claims: Value,
}

/// Why a request was refused: status and stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// 401 or 403; 503 when no usable keys could be had
    /// (`authorizer.jwks_unavailable`).
    pub status: StatusCode,
    /// The reason code (`authorizer.no_token`, `authorizer.unknown_kid`...).
    pub reason: &'static str,
}

impl Rejection {
    fn unauthorized(reason: &'static str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let challenge = match (self.status, self.reason) {
            // No keys to judge the token by: an outage, never an invalid token.
            (StatusCode::SERVICE_UNAVAILABLE, _) => None,
            (_, "authorizer.no_token") => Some("Bearer realm=\"portcullis\""),
            (StatusCode::FORBIDDEN, _) => Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\""),
            _ => Some("Bearer realm=\"portcullis\", error=\"invalid_token\""),
        };
        let mut resp = self.status.into_response();
        if let Some(challenge) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        resp.headers_mut()
            .insert("x-portcullis-reason", HeaderValue::from_static(self.reason));
        resp
    }
}

struct CachedKey {
    alg: SigningAlgorithm,
    key: jsonwebtoken::DecodingKey,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<CachedKey>>,
    /// When the keys were fetched (unix seconds), if ever.
    fetched_at: Option<i64>,
    /// When a fetch last started, whatever came of it.
    tried_at: Option<i64>,
}

/// What the cache holds for one `kid` at one instant.
struct Lookup {
    key: Option<Arc<CachedKey>>,
    /// Fetched less than `cache_ttl` ago.
    fresh: bool,
    /// Fresh, or stale within its grace: one more `cache_ttl` (at least
    /// `min_refetch_interval`) while the JWKS cannot be fetched.
    usable: bool,
    /// A fetch may start: none tried within `min_refetch_interval`.
    due: bool,
}

impl Lookup {
    /// A known key of a usable set: served without waiting for a fetch.
    fn servable(&self) -> bool {
        self.usable && self.key.is_some()
    }

    /// The answer without another fetch.
    fn settle(self) -> Result<Arc<CachedKey>, Rejection> {
        match (self.usable, self.key) {
            (true, Some(k)) => Ok(k),
            (true, None) => {
                tracing::info!(
                    reason = "authorizer.unknown_kid",
                    "kid not among the gateway's keys known"
                );
                Err(Rejection::unauthorized("authorizer.unknown_kid"))
            }
            (false, _) => {
                tracing::warn!(
                    reason = "authorizer.jwks_unavailable",
                    "no usable keys: the JWKS could not be fetched within the cache's grace"
                );
                Err(Rejection {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "authorizer.jwks_unavailable",
                })
            }
        }
    }
}

struct Inner {
    config: AuthorizerConfig,
    clock: SharedClock,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time; a request that needs its answer waits for it.
    fetching: Mutex<()>,
    fetches: AtomicU64,
}

/// Validates Portcullis access tokens for one API; cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl Authorizer {
    /// An authorizer; the keys are fetched at the first request.
    pub fn new(config: AuthorizerConfig, clock: SharedClock) -> Result<Self, AuthorizerError> {
        config.check_jwks_uri()?;
        crate::tokens::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthorizerError::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clock,
                http,
                cache: RwLock::new(Cache::default()),
                fetching: Mutex::new(()),
                fetches: AtomicU64::new(0),
            }),
        })
    }

    /// A layer requiring a valid token holding every one of `scopes`.
    pub fn require<I, S>(&self, scopes: I) -> AuthorizerLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AuthorizerLayer {
            authorizer: self.clone(),
            scopes: scopes.into_iter().map(Into::into).collect::<Vec<_>>().into(),
        }
    }

    /// How many JWKS fetches were attempted (for monitoring and tests).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Validates `authorization` (the header's value) and checks `scopes`.
    pub async fn authorize(&self, authorization: Option<&str>, scopes: &[String]) -> Result<Identity, Rejection> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Rejection::unauthorized("authorizer.no_token"))?;
        let identity = self.verify(token).await?;
        // A scope is written bare (`read`) or qualified with this API
        // (`<audience>/read`), in the token and in `require` alike: the same
        // scope of the same API, as forward auth reads it. A scope qualified
        // with another API stays as written, and matches only itself.
        fn bare<'s>(scope: &'s str, audience: &str) -> &'s str {
            match scope.strip_prefix(audience).and_then(|r| r.strip_prefix('/')) {
                Some(name) if !name.is_empty() && !name.contains('/') => name,
                _ => scope,
            }
        }
        let audience = self.inner.config.audience.as_str();
        let held = |s: &String| {
            let wanted = bare(s, audience);
            identity.scopes.iter().any(|h| bare(h, audience) == wanted)
        };
        if let Some(missing) = scopes.iter().find(|s| !held(s)) {
            tracing::info!(reason = "authorizer.missing_scope", scope = %missing, "request refused");
            return Err(Rejection {
                status: StatusCode::FORBIDDEN,
                reason: "authorizer.missing_scope",
            });
        }
        Ok(identity)
    }

    async fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let (alg, kid, typ) = header(token).ok_or(Rejection::unauthorized("authorizer.malformed"))?;
        if !typ.to_ascii_lowercase().trim_start_matches("application/").eq("at+jwt") {
            return Err(Rejection::unauthorized("authorizer.wrong_type"));
        }
        let key = self.key(&kid).await?;
        if SigningAlgorithm::from_jose(&alg) != Some(key.alg) {
            return Err(Rejection::unauthorized("authorizer.alg_mismatch"));
        }
        let mut validation = jsonwebtoken::Validation::new(key.alg.jsonwebtoken());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    Rejection::unauthorized("authorizer.bad_signature")
                }
                _ => Rejection::unauthorized("authorizer.malformed"),
            })?
            .claims;
        let config = &self.inner.config;
        if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return Err(Rejection::unauthorized("authorizer.wrong_issuer"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == config.audience,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(config.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(Rejection::unauthorized("authorizer.wrong_audience"));
        }
        let now = self.inner.clock.unix();
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if now < exp.saturating_add(LEEWAY_SECS) => {}
            Some(_) => return Err(Rejection::unauthorized("authorizer.expired")),
            None => return Err(Rejection::unauthorized("authorizer.malformed")),
        }
        if claims
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf)
        {
            return Err(Rejection::unauthorized("authorizer.not_yet_valid"));
        }
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(sub), Some(client_id)) = (text("sub"), text("client_id")) else {
            return Err(Rejection::unauthorized("authorizer.malformed"));
        };
        Ok(Identity {
            sub,
            tenant: text("tenant"),
            client_id,
            scopes: text("scope")
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            claims,
        })
    }

    /// The key `kid`: from the cache while fresh; otherwise after a fetch,
    /// at most one per `min_refetch_interval` whatever caused it. Between
    /// fetches, and while another request's fetch is in flight, a known
    /// `kid` is served from keys within their grace without waiting.
    async fn key(&self, kid: &str) -> Result<Arc<CachedKey>, Rejection> {
        let now = self.inner.clock.unix();
        let seen = self.look_up(kid, now).await;
        if let (true, Some(k)) = (seen.fresh, &seen.key) {
            return Ok(k.clone());
        }
        let _one = if seen.servable() {
            if !seen.due {
                return seen.settle();
            }
            match self.inner.fetching.try_lock() {
                Ok(turn) => turn,
                // Another request is fetching: the keys within their grace serve meanwhile.
                Err(_) => return seen.settle(),
            }
        } else {
            // Waits only behind a fetch in flight, whose answer may hold the key.
            self.inner.fetching.lock().await
        };
        // Another request may have fetched while this one waited.
        let mut seen = self.look_up(kid, now).await;
        if seen.due {
            self.fetch(now).await;
            seen = self.look_up(kid, now).await;
        }
        seen.settle()
    }

    /// What the cache holds for `kid` at `now`.
    async fn look_up(&self, kid: &str, now: i64) -> Lookup {
        let config = &self.inner.config;
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let (ttl, min_gap) = (secs(config.cache_ttl), secs(config.min_refetch_interval));
        // At least one fetch is due within the grace, so a refetch interval
        // longer than the TTL never leaves an answering gateway's keys unused.
        let grace = ttl.max(min_gap);
        let cache = self.inner.cache.read().await;
        let age = cache.fetched_at.map(|t| now.saturating_sub(t));
        Lookup {
            key: cache.keys.get(kid).cloned(),
            fresh: age.is_some_and(|a| a < ttl),
            usable: age.is_some_and(|a| a < ttl.saturating_add(grace)),
            due: cache.tried_at.is_none_or(|t| now >= t.saturating_add(min_gap)),
        }
    }

    /// Fetches the JWKS; a failure keeps the keys already known. The attempt
    /// counts from its start, so one abandoned half-way (a cancelled
    /// request) still spends its turn.
    async fn fetch(&self, now: i64) {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        self.inner.cache.write().await.tried_at = Some(now);
        let result = self.fetch_keys().await;
        match result {
            Ok(keys) => {
                let mut cache = self.inner.cache.write().await;
                cache.keys = keys;
                cache.fetched_at = Some(now);
            }
            Err(e) => {
                tracing::warn!(reason = "authorizer.jwks_unavailable", error = %e, "JWKS fetch failed; keeping the keys known");
            }
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, Arc<CachedKey>>, String> {
        let resp = self
            .inner
            .http
            .get(self.inner.config.jwks_uri.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        if resp.content_length().is_some_and(|l| l > MAX_JWKS_BYTES as u64) {
            return Err("JWKS too large".into());
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS too large".into());
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for jwk in doc.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let s = |k: &str| jwk.get(k).and_then(Value::as_str);
            let (Some(kid), Some(alg)) = (s("kid"), s("alg").and_then(SigningAlgorithm::from_jose)) else {
                continue;
            };
            let key = match (alg, s("kty"), s("crv")) {
                (SigningAlgorithm::Rs256, Some("RSA"), _) => match (s("n"), s("e")) {
                    (Some(n), Some(e)) => jsonwebtoken::DecodingKey::from_rsa_components(n, e).ok(),
                    _ => None,
                },
                (SigningAlgorithm::Es256, Some("EC"), Some("P-256")) => match (s("x"), s("y")) {
                    (Some(x), Some(y)) => jsonwebtoken::DecodingKey::from_ec_components(x, y).ok(),
                    _ => None,
                },
                (SigningAlgorithm::EdDsa, Some("OKP"), Some("Ed25519")) => {
                    s("x").and_then(|x| jsonwebtoken::DecodingKey::from_ed_components(x).ok())
                }
                _ => None,
            };
            if let Some(key) = key {
                out.insert(kid.to_owned(), Arc::new(CachedKey { alg, key }));
            }
        }
        Ok(out)
    }
}

/// The JOSE header's `alg`, `kid` and `typ`, if the token is a compact JWS.
fn header(token: &str) -> Option<(String, String, String)> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    if v.get("crit").is_some() {
        return None;
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Some((s("alg")?, s("kid")?, s("typ")?))
}

/// The layer of [`Authorizer::require`].
#[derive(Clone)]
pub struct AuthorizerLayer {
    authorizer: Authorizer,
    scopes: Arc<[String]>,
}

impl<S> tower::Layer<S> for AuthorizerLayer {
    type Service = AuthorizerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizerService {
            inner,
            authorizer: self.authorizer.clone(),
            scopes: self.scopes.clone(),
        }
    }
}

/// The service of [`AuthorizerLayer`].
#[derive(Clone)]
pub struct AuthorizerService<S> {
    inner: S,
    authorizer: Authorizer,
    scopes: Arc<[String]>,
}

impl<S, B> tower::Service<Request<B>> for AuthorizerService<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorizer = self.authorizer.clone();
        let scopes = self.scopes.clone();
        Box::pin(async move {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match authorizer.authorize(authorization.as_deref(), &scopes).await {
                Ok(identity) => {
                    req.extensions_mut().insert(identity);
                    inner.call(req).await
                }
                Err(rejection) => {
                    tracing::info!(reason = rejection.reason, "request refused by the authorizer");
                    Ok(rejection.into_response())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_jwks(uri: &str, allow_http: bool) -> Result<(), AuthorizerError> {
        let mut c = AuthorizerConfig::new("https://sso.example.test", "https://api.example.test")
            .map_err(|e| AuthorizerError::Config(e.to_string()))?;
        c.jwks_uri = Url::parse(uri).map_err(|e| AuthorizerError::Config(e.to_string()))?;
        c.allow_http = allow_http;
        c.check_jwks_uri()
    }

    #[test]
    fn a_jwks_url_anyone_on_the_path_could_answer_is_refused() {
        assert!(with_jwks("https://sso.example.test/jwks", false).is_ok());
        for loopback in [
            "http://127.0.0.1:8080/jwks",
            "http://[::1]:8080/jwks",
            "http://localhost/jwks",
        ] {
            assert!(with_jwks(loopback, false).is_ok(), "{loopback}");
        }
        for exposed in [
            "http://sso.example.test/jwks",
            "http://10.0.0.7/jwks",
            "ftp://sso.example.test/jwks",
        ] {
            let e = with_jwks(exposed, false).unwrap_err().to_string();
            assert!(e.contains("must be https"), "{exposed}: {e}");
        }
        assert!(with_jwks("http://portcullis.mesh.internal/jwks", true).is_ok());
        assert!(with_jwks("ftp://sso.example.test/jwks", true).is_err());
        // The default, from the issuer.
        let c = AuthorizerConfig::new("http://sso.example.test/", "https://api.example.test").unwrap();
        assert!(Authorizer::new(c, std::sync::Arc::new(crate::clock::SystemClock)).is_err());
    }
}
