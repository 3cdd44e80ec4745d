//! The OpenID Connect provider's endpoints: discovery, JWKS, authorize,
//! token, userinfo, revocation, introspection and RP-initiated logout.
//! Errors follow RFC 6749 §5.2 (JSON) and RFC 6750 §3 (`WWW-Authenticate`).

use super::flows::load_sso;
use super::pages::{self, esc};
use super::pairs::{self, FormPairs};
use super::AppState;
use crate::broker::PrefetchedAuthorize;
use crate::provider::clients::GrantType;
use crate::provider::error::rfc6749_description;
use crate::provider::grants::{ClientCredentials, PrefetchedClient, TokenRequest};
use crate::provider::{OAuthError, OAuthErrorCode};
use crate::tenant::FreshTenant;
use crate::tokens::PublishedDoc;
use axum::extract::rejection::RawFormRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_sessions::Session;

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let Some(detail) = &self.detail {
            tracing::error!(reason = self.reason, detail = %detail, "OAuth request failed on our side");
        } else {
            tracing::info!(
                reason = self.reason,
                error = self.code.as_str(),
                "OAuth request refused"
            );
        }
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let description = rfc6749_description(&self.description);
        let body = Json(json!({"error": self.code.as_str(), "error_description": description}));
        let mut resp = (status, pages::no_store(), body).into_response();
        match self.code {
            OAuthErrorCode::InvalidToken => {
                let v = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            OAuthErrorCode::InsufficientScope => {
                let v = format!("Bearer error=\"insufficient_scope\", error_description=\"{description}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            OAuthErrorCode::InvalidClient => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"portcullis\""),
                );
            }
            OAuthErrorCode::InvalidRequest
            | OAuthErrorCode::InvalidGrant
            | OAuthErrorCode::UnauthorizedClient
            | OAuthErrorCode::UnsupportedGrantType
            | OAuthErrorCode::InvalidScope
            | OAuthErrorCode::ServerError
            | OAuthErrorCode::TemporarilyUnavailable
            | OAuthErrorCode::InvalidTarget => {}
        }
        resp
    }
}

/// Collects parameters, refusing any that appear twice (RFC 6749 §3.1).
pub fn single_valued(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v).is_some() {
            return Err(k);
        }
    }
    Ok(out)
}

/// How long a replica serves its discovery document before reading the
/// resource servers again. A change made on this replica shows at once (the
/// registry's generation); one made on another replica within this long.
/// Clients cache the document for five minutes anyway (`Cache-Control`).
pub const DISCOVERY_CACHE_SECS: i64 = 5;

/// The public documents served as pre-serialised bytes: the discovery
/// document (rebuilt when the signing algorithms or the resource servers
/// change, and at least every [`DISCOVERY_CACHE_SECS`]); the JWKS is kept by
/// the key manager ([`crate::tokens::KeyManager::jwks_published`]).
#[derive(Debug, Default)]
pub struct PublishedDocs {
    discovery: std::sync::Mutex<Option<CachedDiscovery>>,
}

#[derive(Debug)]
struct CachedDiscovery {
    algs: Vec<crate::tokens::SigningAlgorithm>,
    generation: u64,
    built_at: i64,
    doc: Arc<PublishedDoc>,
}

impl PublishedDocs {
    fn discovery(
        &self,
        algs: &[crate::tokens::SigningAlgorithm],
        generation: u64,
        now: i64,
    ) -> Option<Arc<PublishedDoc>> {
        let cached = self.discovery.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|c| {
                c.algs == algs
                    && c.generation == generation
                    && now >= c.built_at
                    && now < c.built_at.saturating_add(DISCOVERY_CACHE_SECS)
            })
            .map(|c| c.doc.clone())
    }

    fn keep_discovery(
        &self,
        algs: Vec<crate::tokens::SigningAlgorithm>,
        generation: u64,
        now: i64,
        doc: Arc<PublishedDoc>,
    ) {
        *self.discovery.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedDiscovery {
            algs,
            generation,
            built_at: now,
            doc,
        });
    }
}

/// A published document as a `200` with its `ETag` and `Cache-Control`, or
/// a bodiless `304` when the request's `If-None-Match` names that `ETag`.
fn published(headers: &HeaderMap, doc: &PublishedDoc, cache_control: &'static str) -> Response {
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    let etag = HeaderValue::from_str(&doc.etag).ok();
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == doc.etag);
    let mut resp = if matches {
        (StatusCode::NOT_MODIFIED, [cache]).into_response()
    } else {
        (
            [
                cache,
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            ],
            doc.body.clone(),
        )
            .into_response()
    };
    if let Some(etag) = etag {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

/// `GET /.well-known/openid-configuration`
pub async fn discovery(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // The active key's algorithm, and the next key's when a change of
    // algorithm is under way: what ID tokens may be signed with.
    let algs = match state.provider.keys.signing_algorithms().await {
        Ok(a) => a,
        Err(e) => return OAuthError::server("discovery.keys_unavailable", e).into_response(),
    };
    let now = state.provider.clock.unix();
    // Read before the resource servers are: a change made while the
    // document is built leaves a stale generation behind, so it is rebuilt.
    let generation = state.provider.resources.generation();
    if let Some(doc) = state.published.discovery(&algs, generation, now) {
        return published(&headers, &doc, "public, max-age=300");
    }
    let u = |p: &str| state.upstream.public(p).to_string();
    // The OIDC scopes, then the API scope names of every resource server,
    // bare and deduplicated (two APIs may both define `read`): a bare name is
    // requested at whichever API the `resource` parameter names. The
    // qualified forms (`<identifier>/<name>`) are accepted too but not listed.
    let mut scopes: Vec<String> = crate::provider::resources::OIDC_SCOPES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    match state.provider.resources.all().await {
        Ok(all) => {
            let names: std::collections::BTreeSet<String> =
                all.into_iter().flat_map(|rs| rs.scopes).map(|s| s.name).collect();
            scopes.extend(names);
        }
        Err(e) => return OAuthError::from(e).into_response(),
    }
    let alg_names: Vec<&str> = algs.iter().map(|a| a.as_str()).collect();
    let doc = json!({
        "issuer": state.provider.iss(),
        "authorization_endpoint": u("authorize"),
        "token_endpoint": u("token"),
        "userinfo_endpoint": u("userinfo"),
        "jwks_uri": u("jwks"),
        "revocation_endpoint": u("revoke"),
        "introspection_endpoint": u("introspect"),
        "end_session_endpoint": u("logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
            crate::provider::clients::TOKEN_EXCHANGE],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": alg_names,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "tenant", "connection",
            "email", "email_verified", "name", "given_name", "family_name", "groups", "amr", "acr", "at_hash", "azp"],
        // No consent screen and no account chooser: consent and select_account are refused.
        "prompt_values_supported": ["none", "login"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "frontchannel_logout_supported": false,
    });
    let doc = Arc::new(PublishedDoc::new(&doc));
    state.published.keep_discovery(algs, generation, now, doc.clone());
    published(&headers, &doc, "public, max-age=300")
}

/// `GET /jwks`
pub async fn jwks(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.provider.keys.jwks_published().await {
        Ok(doc) => published(&headers, &doc, "public, max-age=60"),
        Err(e) => OAuthError::server("jwks.unavailable", e).into_response(),
    }
}

/// `GET /authorize`
pub async fn authorize_get(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    fresh: Option<Extension<FreshTenant>>,
    prefetched: Option<Extension<Arc<PrefetchedAuthorize>>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    authorize(
        state,
        session,
        &headers,
        fresh.map(|e| e.0),
        prefetched.map(|e| e.0),
        pairs,
    )
    .await
}

/// `POST /authorize` (form-encoded, OIDC Core §3.1.2.1)
pub async fn authorize_post(
    State(state): State<Arc<AppState>>,
    session: Session,
    headers: HeaderMap,
    fresh: Option<Extension<FreshTenant>>,
    prefetched: Option<Extension<Arc<PrefetchedAuthorize>>>,
    FormPairs(pairs): FormPairs,
) -> Response {
    authorize(
        state,
        session,
        &headers,
        fresh.map(|e| e.0),
        prefetched.map(|e| e.0),
        pairs,
    )
    .await
}

/// `fresh` and `prefetched`: what the edge read for this request, if
/// anything (the tenant record; the app and tenant configuration the
/// request names).
async fn authorize(
    state: Arc<AppState>,
    session: Session,
    headers: &HeaderMap,
    fresh: Option<FreshTenant>,
    prefetched: Option<Arc<PrefetchedAuthorize>>,
    pairs: Vec<(String, String)>,
) -> Response {
    let params = match single_valued(pairs) {
        Ok(p) => p,
        Err(k) => {
            return pages::error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in link is not valid",
                &format!("The parameter {k:?} appears more than once."),
                "authorize.duplicate_parameter",
            )
        }
    };
    let sso = load_sso(&session).await;
    let outcome = state
        .broker
        .authorize_with(params, &sso, fresh.as_ref(), prefetched.as_deref())
        .await;
    super::flows::respond_binding(&state, headers, outcome)
}

/// The client id and secret of `Basic` credentials (RFC 6749 §2.3.1: each
/// form-urlencoded, then joined by a colon and base64-encoded). Each half is
/// decoded as a form value is (`+` a space, `%XX` a byte); a raw `&`, which
/// a conforming client sends as `%26`, is kept as part of the value.
fn basic_credentials(b64: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((pairs::decode(id.as_bytes()), pairs::decode(secret.as_bytes())))
}

/// What a token, revocation or introspection request names, read in one
/// pass over its small form and checking nothing: the client id and secret
/// (`Basic` credentials, else the form's `client_id` and `client_secret`),
/// and the refresh token or code when the form asks for that grant. The
/// edge reads that app's record and that token's family alongside its rate
/// limiting, and charges the tenant's budget only for a client that
/// presents its own credentials (`edge::presents_own_credentials`);
/// [`client_credentials`] still decides how the client authenticates, and
/// the handler checks the form itself (the pairs the edge parsed, handed on
/// with the request).
#[derive(Default, PartialEq, Eq)]
pub(super) struct TokenHints {
    /// The client id the credentials name.
    pub client_id: Option<String>,
    /// The secret presented with it, if any.
    pub client_secret: Option<String>,
    /// The refresh token of a refresh grant.
    pub refresh_token: Option<String>,
    /// The code of an authorization-code grant.
    pub code: Option<String>,
}

impl std::fmt::Debug for TokenHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHints")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "[redacted]"))
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("code", &self.code.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

pub(super) fn token_hints(headers: &HeaderMap, form: &[(String, String)]) -> TokenHints {
    let (mut form_id, mut form_secret, mut grant, mut token, mut code) = (None, None, None, None, None);
    for (k, v) in form {
        let first = match k.as_str() {
            "client_id" => &mut form_id,
            "client_secret" => &mut form_secret,
            "grant_type" => &mut grant,
            "refresh_token" => &mut token,
            "code" => &mut code,
            _ => continue,
        };
        first.get_or_insert(v);
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")));
    let (client_id, client_secret) = match basic {
        Some(b64) => match basic_credentials(b64) {
            Some((id, secret)) => (Some(id), Some(secret)),
            None => (None, None),
        },
        None => (form_id.cloned(), form_secret.cloned()),
    };
    let refresh_token = token
        .filter(|_| grant.map(String::as_str) == Some(GrantType::RefreshToken.as_str()))
        .cloned();
    let code = code
        .filter(|_| grant.map(String::as_str) == Some(GrantType::AuthorizationCode.as_str()))
        .cloned();
    TokenHints {
        client_id,
        client_secret,
        refresh_token,
        code,
    }
}

fn client_credentials(
    headers: &HeaderMap,
    form: &mut BTreeMap<String, String>,
) -> Result<ClientCredentials, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")));
    let form_secret = form.remove("client_secret");
    let form_id = form.remove("client_id");
    if let Some(b64) = basic {
        if form_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "client.two_methods",
                "Use one client authentication method.",
            ));
        }
        let (id, secret) = basic_credentials(b64)
            .ok_or_else(|| OAuthError::invalid_client("client.bad_basic", "Malformed Basic credentials."))?;
        if form_id.as_deref().is_some_and(|f| f != id) {
            return Err(OAuthError::invalid_request(
                "client.id_mismatch",
                "client_id does not match the credentials.",
            ));
        }
        return Ok(ClientCredentials::Secret { id, secret });
    }
    match (form_id, form_secret) {
        (Some(id), Some(secret)) => Ok(ClientCredentials::Secret { id, secret }),
        (Some(id), None) => Ok(ClientCredentials::Public { id }),
        (None, _) => Err(OAuthError::invalid_client(
            "client.missing",
            "Client authentication is required.",
        )),
    }
}

fn form_params(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, OAuthError> {
    single_valued(pairs)
        .map_err(|_| OAuthError::invalid_request("request.duplicate_parameter", "A parameter appears more than once."))
}

/// The pairs of a token, revocation or introspection request's body,
/// which RFC 6749 (§3.2, §2.3.1, appendix B) has form-encoded in UTF-8:
/// another media type (JSON, `multipart/form-data`, or none) is refused
/// with `invalid_request` (`request.not_form`), as is another `charset`
/// (`request.charset_unsupported`: its bytes would be read as UTF-8 and
/// turned into U+FFFD), in the RFC 6749 JSON an app reads, not a bare 415.
/// A body that could not be read (over its size, cut off) keeps axum's
/// answer (413, 400), as the edge's own refusals of a body do.
fn form_body(
    headers: &HeaderMap,
    body: Result<FormPairs, RawFormRejection>,
) -> Result<Vec<(String, String)>, NotAForm> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(NotAForm::Refused(OAuthError::invalid_request(
            "request.not_form",
            "The request body must be application/x-www-form-urlencoded.",
        )));
    }
    let foreign_charset = params.filter_map(|p| p.split_once('=')).any(|(name, value)| {
        name.trim().eq_ignore_ascii_case("charset") && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    });
    if foreign_charset {
        return Err(NotAForm::Refused(OAuthError::invalid_request(
            "request.charset_unsupported",
            "The request body must be encoded in UTF-8.",
        )));
    }
    body.map(|FormPairs(pairs)| pairs).map_err(NotAForm::Unread)
}

/// Why [`form_body`] has no pairs: refused (RFC 6749 JSON), or unread.
enum NotAForm {
    Refused(OAuthError),
    Unread(RawFormRejection),
}

impl IntoResponse for NotAForm {
    fn into_response(self) -> Response {
        match self {
            Self::Refused(e) => e.into_response(),
            Self::Unread(e) => e.into_response(),
        }
    }
}

/// `POST /token`
pub async fn token(
    State(state): State<Arc<AppState>>,
    fresh: Option<Extension<FreshTenant>>,
    prefetched: Option<Extension<PrefetchedClient>>,
    headers: HeaderMap,
    body: Result<FormPairs, RawFormRejection>,
) -> Response {
    let fresh = fresh.map(|e| e.0);
    let prefetched = prefetched.map(|e| e.0);
    let pairs = match form_body(&headers, body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let result = async {
        let mut form = form_params(pairs)?;
        let creds = client_credentials(&headers, &mut form)?;
        let req = TokenRequest {
            grant_type: form.remove("grant_type"),
            code: form.remove("code"),
            redirect_uri: form.remove("redirect_uri"),
            code_verifier: form.remove("code_verifier"),
            refresh_token: form.remove("refresh_token"),
            scope: form.remove("scope"),
            resource: form.remove("resource"),
            subject_token: form.remove("subject_token"),
            subject_token_type: form.remove("subject_token_type"),
            requested_token_type: form.remove("requested_token_type"),
            audience: form.remove("audience"),
            actor_token: form.remove("actor_token"),
            actor_token_type: form.remove("actor_token_type"),
        };
        state.provider.token_for(&creds, &req, fresh.as_ref(), prefetched).await
    }
    .await;
    match result {
        Ok(resp) => {
            tracing::info!(reason = "token.issued", "tokens issued");
            (pages::no_store(), Json(resp)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET|POST /userinfo` with a Bearer access token.
pub async fn userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = token else {
        let mut r = (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_request"}))).into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    match state.provider.userinfo(token.trim()).await {
        Ok(claims) => (pages::no_store(), Json(claims)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Authenticates the client of a revocation or introspection request and
/// returns it with the `token` parameter. `confidential_only` refuses public clients.
async fn client_and_token(
    state: &AppState,
    headers: &HeaderMap,
    prefetched: Option<Extension<PrefetchedClient>>,
    pairs: Vec<(String, String)>,
    endpoint: &'static str,
    confidential_only: bool,
) -> Result<(std::sync::Arc<crate::provider::clients::Client>, String), OAuthError> {
    let mut form = form_params(pairs)?;
    let creds = client_credentials(headers, &mut form)?;
    if confidential_only && matches!(creds, ClientCredentials::Public { .. }) {
        return Err(OAuthError::invalid_client(
            "client.secret_required",
            "This endpoint requires client authentication.",
        ));
    }
    let client = state
        .provider
        .authenticate_prefetched(&creds, prefetched.map(|e| e.0))
        .await?;
    let token = form
        .remove("token")
        .ok_or_else(|| OAuthError::invalid_request(endpoint, "token is required."))?;
    Ok((client, token))
}

/// `POST /revoke` (RFC 7009)
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    prefetched: Option<Extension<PrefetchedClient>>,
    headers: HeaderMap,
    body: Result<FormPairs, RawFormRejection>,
) -> Response {
    let pairs = match form_body(&headers, body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let result = async {
        let (client, token) =
            client_and_token(&state, &headers, prefetched, pairs, "revoke.missing_token", false).await?;
        state.provider.revoke(&client, &token).await
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, pages::no_store()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /introspect` (RFC 7662); confidential clients only.
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    prefetched: Option<Extension<PrefetchedClient>>,
    headers: HeaderMap,
    body: Result<FormPairs, RawFormRejection>,
) -> Response {
    let pairs = match form_body(&headers, body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let result = async {
        let (client, token) =
            client_and_token(&state, &headers, prefetched, pairs, "introspect.missing_token", true).await?;
        state.provider.introspect(&client, &token).await
    }
    .await;
    match result {
        Ok(v) => (pages::no_store(), Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /logout` (OIDC RP-Initiated Logout). Sessions end at once only when
/// `id_token_hint` names this browser's session; otherwise the person is
/// asked to confirm, so a cross-site link cannot sign them out.
pub async fn logout_get(
    State(state): State<Arc<AppState>>,
    session: Session,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    logout(state, session, pairs, false).await
}

/// `POST /logout`: the confirmation form (with its CSRF token), or an RP's
/// form post whose `id_token_hint` names this browser's session.
pub async fn logout_post(
    State(state): State<Arc<AppState>>,
    session: Session,
    FormPairs(pairs): FormPairs,
) -> Response {
    logout(state, session, pairs, true).await
}

/// The CSRF purpose of the logout confirmation form.
const LOGOUT_CSRF: &str = "logout";

/// Whether the ID token hint's claims name the session of this browser: the
/// same `sid` for its tenant, or, for a hint that has not expired yet, the
/// same `sub` as this browser's session for that tenant. An expired hint
/// of another session asks first: anyone who ever got hold of one of the
/// user's ID tokens (an app's logs) could otherwise sign them out at will.
async fn hint_names_this_browser(
    state: &AppState,
    sso: &crate::broker::session::BrowserSso,
    claims: &serde_json::Value,
) -> Result<bool, crate::store::StoreError> {
    let claim = |n: &str| claims.get(n).and_then(|v| v.as_str());
    let Some(tenant) = claim("tenant").and_then(|t| crate::ids::TenantId::parse(t).ok()) else {
        return Ok(false);
    };
    if claim("sid").is_some_and(|sid| sso.get(tenant.as_str()).is_some_and(|s| s == sid)) {
        return Ok(true);
    }
    let live = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|exp| exp > state.provider.clock.unix());
    let Some(sub) = claim("sub").filter(|_| live) else {
        return Ok(false);
    };
    let current = crate::broker::session::load(&state.store, sso, &tenant).await?;
    Ok(current.is_some_and(|s| s.sub == sub))
}

async fn logout(state: Arc<AppState>, session: Session, pairs: Vec<(String, String)>, is_post: bool) -> Response {
    let bad = |reason: &str, msg: &str| pages::error_page(StatusCode::BAD_REQUEST, "Sign-out failed", msg, reason);
    let Ok(params) = single_valued(pairs) else {
        return bad("logout.duplicate_parameter", "A parameter appears more than once.");
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::error!(reason = "logout.store_unavailable", error = %e);
        pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-out failed",
            "The sign-in service could not reach its storage. Please try again.",
            "store.unavailable",
        )
    };
    // Who is asking? From id_token_hint (signature checked; expiry tolerated) or client_id.
    // Only a hint refused for itself is a bad hint: keys that could not be
    // read are the store's 503 or a 500, their detail logged only.
    let hint = match params.get("id_token_hint") {
        Some(t) => match state
            .provider
            .keys
            .verify_id_token_hint::<serde_json::Value>(t, &state.provider.iss())
            .await
        {
            Ok(c) => Some(c),
            Err(crate::tokens::TokenError::Invalid(_)) => {
                return bad(
                    "logout.bad_id_token_hint",
                    "The sign-out request carries an invalid ID token.",
                )
            }
            Err(crate::tokens::TokenError::Store(e)) => return unavailable(&e),
            Err(e) => {
                tracing::error!(reason = "logout.keys_failed", error = %e, "the signing keys could not be used to check id_token_hint");
                return pages::error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sign-out failed",
                    "The sign-in service could not complete the request. Please try again.",
                    "logout.keys_failed",
                );
            }
        },
        None => None,
    };
    let hint_client = hint
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(|a| a.as_str())
        .map(str::to_owned);
    let client_id = match (params.get("client_id"), hint_client) {
        (Some(a), Some(b)) if a != &b => {
            return bad("logout.client_mismatch", "client_id does not match the ID token.")
        }
        (Some(a), _) => Some(a.clone()),
        (None, b) => b,
    };
    let mut target = None;
    if let Some(uri) = params.get("post_logout_redirect_uri") {
        let client = match &client_id {
            Some(id) => state.provider.clients.get(id).await.ok().flatten(),
            None => None,
        };
        match client {
            Some(c) if c.post_logout_redirect_uris.iter().any(|r| r == uri) => {
                let mut url = match url::Url::parse(uri) {
                    Ok(u) => u,
                    Err(_) => return bad("logout.bad_redirect", "Invalid post_logout_redirect_uri."),
                };
                if let Some(s) = params.get("state") {
                    url.query_pairs_mut().append_pair("state", s);
                }
                target = Some(url);
            }
            _ => {
                return bad(
                    "logout.redirect_not_registered",
                    "The application asked to return to an address that is not registered for it.",
                )
            }
        }
    }
    // Read failing closed: a session that could not be read is not "no
    // session", and nobody is told they are signed out when they may not be.
    let sso = match session
        .get::<crate::broker::session::BrowserSso>(crate::broker::session::SESSION_FIELD)
        .await
    {
        Ok(sso) => sso.unwrap_or_default(),
        Err(e) => return super::flows::session_failed(e),
    };
    if sso.is_empty() && !is_post {
        // Signed in nowhere in this browser: nothing to end and nothing to
        // confirm, so no question, and above all no browser session stored
        // for its CSRF token (a cookieless GET cost the store a session of
        // the full lifetime, from a route no rate limit counts). The app
        // gets its registered return address, as after a sign-out. A POST
        // still needs its token: without a cookie it is refused, unchanged.
        tracing::info!(reason = "logout.no_session", "nothing to sign out of");
        return signed_out(target);
    }
    // The tenant whose session in this browser the hint names, if any.
    let named: Option<String> = match &hint {
        Some(claims) => match hint_names_this_browser(&state, &sso, claims).await {
            Ok(true) => claims.get("tenant").and_then(|t| t.as_str()).map(str::to_owned),
            Ok(false) => None,
            Err(e) => return unavailable(&e),
        },
        None => None,
    };
    if named.is_none() {
        if !is_post {
            // Ask first: a form carrying a single-use CSRF token of this browser.
            let csrf = match super::flows::issue_csrf(&session, LOGOUT_CSRF).await {
                Ok(t) => t,
                Err(r) => return r,
            };
            let inputs: String = params
                .iter()
                .filter(|(k, _)| k.as_str() != super::flows::CSRF_FIELD)
                .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
                .collect();
            let body = format!(
                "<h1>Sign out?</h1><p>Do you want to sign out of all applications?</p>\
<form method=\"post\" action=\"{}\" id=\"logout\">{inputs}<input type=\"hidden\" name=\"{}\" value=\"{}\">\
<button type=\"submit\">Sign out</button></form>",
                esc(state.upstream.public("logout").as_str()),
                super::flows::CSRF_FIELD,
                esc(&csrf),
            );
            // After the POST the browser may go on to the app's logout page.
            let mut sources = vec!["'self'".to_owned()];
            sources.extend(pages::origin_source(&state.upstream.public_url));
            sources.extend(target.as_ref().and_then(pages::origin_source));
            let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
            return pages::page(StatusCode::OK, "Sign out", &body, &sources);
        }
        let presented = params.get(super::flows::CSRF_FIELD).map(String::as_str);
        let refused = |reason: &'static str| {
            tracing::warn!(reason, "sign-out refused");
            pages::error_page(
                StatusCode::FORBIDDEN,
                "Sign-out not confirmed",
                "This sign-out did not come from the confirmation page Portcullis showed in this browser. You are still signed in.",
                reason,
            )
        };
        match super::flows::check_csrf(&session, LOGOUT_CSRF, presented).await {
            Ok(super::flows::Csrf::Valid) => {}
            Ok(super::flows::Csrf::Missing) => return refused("logout.csrf_missing"),
            Ok(super::flows::Csrf::Mismatch) => return refused("logout.csrf_mismatch"),
            Err(r) => return r,
        }
    }
    // A hint ends the session of the tenant it names, in this browser; the
    // browser's sessions at other tenants (other identities, maybe from an
    // app of another tenant that sent the browser here) end only when the
    // person confirms on the form, which signs out of everything.
    let (ending, keeping): (crate::broker::session::BrowserSso, crate::broker::session::BrowserSso) = match &named {
        Some(tenant) => sso.into_iter().partition(|(t, _)| t == tenant),
        None => (sso, Default::default()),
    };
    // The hint's own session may be one the browser replaced by signing in
    // again; the broker ends it with the browser's if both are one user's.
    let hinted = hint.as_ref().and_then(|claims| {
        let claim = |n: &str| claims.get(n).and_then(|v| v.as_str()).map(str::to_owned);
        Some(crate::broker::LogoutHint {
            tenant: claim("tenant")?,
            sid: claim("sid")?,
            sub: claim("sub")?,
        })
    });
    if let Err(e) = state.broker.logout(&ending, hinted.as_ref()).await {
        return unavailable(&e);
    }
    let saved = if keeping.is_empty() {
        session.flush().await
    } else {
        session.insert(crate::broker::session::SESSION_FIELD, &keeping).await
    };
    if let Err(e) = saved {
        return super::flows::session_failed(e);
    }
    tracing::info!(
        reason = "logout.succeeded",
        sessions = ending.len(),
        kept = keeping.len(),
        confirmed = named.is_none(),
        "signed out"
    );
    signed_out(target)
}

/// After a sign-out: the app's registered return address, or a page.
fn signed_out(target: Option<url::Url>) -> Response {
    match target {
        Some(url) => Redirect::to(url.as_str()).into_response(),
        None => pages::page(
            StatusCode::OK,
            "Signed out",
            "<h1>You are signed out</h1><p>You can close this window.</p>",
            &[],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
        );
        h
    }

    #[test]
    fn the_client_id_hint_is_the_id_the_credentials_name() {
        // Basic credentials first (form-urlencoded inside, RFC 6749 §2.3.1).
        assert_eq!(
            token_hints(&basic("app%201", "s"), &pairs::parse(b"client_id=other"))
                .client_id
                .as_deref(),
            Some("app 1")
        );
        assert_eq!(
            token_hints(
                &HeaderMap::new(),
                &pairs::parse(b"grant_type=refresh_token&client_id=app2")
            )
            .client_id
            .as_deref(),
            Some("app2")
        );
        assert_eq!(
            token_hints(&HeaderMap::new(), &pairs::parse(b"grant_type=client_credentials")).client_id,
            None
        );
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"));
        assert_eq!(token_hints(&bad, &pairs::parse(b"client_id=app2")).client_id, None);
        // The secret presented with the id: Basic's, else the form's; never
        // the form's beside Basic credentials.
        let secret = |h: &HeaderMap, body: &[u8]| token_hints(h, &pairs::parse(body)).client_secret;
        assert_eq!(
            secret(&basic("app", "s%3A1"), b"client_secret=other").as_deref(),
            Some("s:1")
        );
        assert_eq!(
            secret(&HeaderMap::new(), b"client_id=app&client_secret=s2").as_deref(),
            Some("s2")
        );
        assert_eq!(secret(&HeaderMap::new(), b"client_id=app"), None);
        assert_eq!(secret(&bad, b"client_id=app&client_secret=s2"), None);
        assert!(!format!("{:?}", token_hints(&basic("app", "hunter2"), &[])).contains("hunter2"));
        // The same id the handler authenticates.
        let mut form = BTreeMap::new();
        match client_credentials(&basic("app%201", "s%3A1"), &mut form).unwrap() {
            ClientCredentials::Secret { id, secret } => assert_eq!((id.as_str(), secret.as_str()), ("app 1", "s:1")),
            ClientCredentials::Public { .. } => panic!("Basic credentials are a secret"),
        }
        // Each half decoded as a form value: `+` a space, `%XX` a byte, a
        // second colon part of the secret, a raw `&` or `=` kept.
        for (id, secret, expected) in [
            ("a+b", "s%2B1", ("a b", "s+1")),
            ("app", "s:1:2", ("app", "s:1:2")),
            ("app", "s&t=u", ("app", "s&t=u")),
            ("app", "%zz%", ("app", "%zz%")),
            ("", "", ("", "")),
        ] {
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            let got = basic_credentials(&v).unwrap();
            assert_eq!((got.0.as_str(), got.1.as_str()), expected, "{id}:{secret}");
        }
        // Not base64, not UTF-8, no colon: no credentials.
        let no_colon = base64::engine::general_purpose::STANDARD.encode("app");
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode(b"app:\xff");
        for v in ["%%%", no_colon.as_str(), not_utf8.as_str()] {
            assert_eq!(basic_credentials(v), None, "{v}");
        }
    }

    #[test]
    fn the_refresh_token_hint_is_named_only_by_a_refresh_grant() {
        let refresh_token_hint = |body: &[u8]| token_hints(&HeaderMap::new(), &pairs::parse(body)).refresh_token;
        assert_eq!(
            refresh_token_hint(b"refresh_token=acme.f%2Eh&grant_type=refresh_token").as_deref(),
            Some("acme.f.h")
        );
        assert_eq!(
            refresh_token_hint(b"grant_type=authorization_code&refresh_token=acme.f.h"),
            None
        );
        assert_eq!(refresh_token_hint(b"grant_type=refresh_token"), None);
        // The first of repeated fields (the handler refuses repeats anyway).
        assert_eq!(
            refresh_token_hint(b"grant_type=refresh_token&refresh_token=a&refresh_token=b").as_deref(),
            Some("a")
        );
    }
}
