//! The two halves of the authorization code flow: [`begin`] builds the
//! authorization request, [`complete`] checks the callback, redeems the code
//! and validates what comes back.

use super::id_token::{self, Claims, Expected};
use super::provider::ProviderMetadata;
use super::token_endpoint::TokenEndpoint;
use super::{claims, OidcConnector};
use crate::secret::Secret;
use crate::upstream::{BeginLogin, BeginRequest, CallbackParams, Identity, UpstreamError, UpstreamRedirect};
use openidconnect::core::{CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreErrorResponseType};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    LoginHint, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardErrorResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// What `begin` hands the broker to keep until the callback (consumed once).
/// `Debug` redacts the state, the nonce and the verifier.
#[derive(Serialize, Deserialize)]
struct Pending {
    /// The `state` we sent (the pending login id).
    state: String,
    /// The nonce the ID token must carry.
    nonce: String,
    /// The PKCE code verifier (RFC 7636).
    pkce_verifier: String,
    /// The issuer the browser was sent to. The answer's code (and the PKCE
    /// verifier) go to no other issuer's token endpoint, should the
    /// connection be re-pointed while the login is in flight. `None`: a
    /// login begun before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::secret::Redacted;
        f.debug_struct("Pending")
            .field("state", &Redacted)
            .field("nonce", &Redacted)
            .field("pkce_verifier", &Redacted)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// 256 bits from the OS-seeded generator, base64url (43 characters): the
/// crate's own `Nonce::new_random` has 128.
fn random_nonce() -> Nonce {
    Nonce::new(crate::tokens::random_token(32))
}

fn eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The `openidconnect` client for this connection and discovery document.
fn client(
    c: &OidcConnector,
    meta: &ProviderMetadata,
) -> CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet> {
    let secret = c
        .cfg
        .client_secret
        .as_ref()
        .map(|s| ClientSecret::new(s.expose().to_owned()));
    let mut client =
        CoreClient::from_provider_metadata(meta.discovered.clone(), ClientId::new(c.cfg.client_id.clone()), secret)
            .set_redirect_uri(RedirectUrl::from_url(c.redirect_uri.clone()));
    if meta.prefers_client_secret_post() {
        client = client.set_auth_type(AuthType::RequestBody);
    }
    client
}

/// Builds the authorization request (`openidconnect`: PKCE S256, nonce, state).
pub async fn begin(c: &OidcConnector, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
    let meta = c.provider.metadata(&c.ctx).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let login_id = req.login_id.to_owned();
    let client = client(c, &meta);
    let mut auth = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(login_id),
            random_nonce,
        )
        .set_pkce_challenge(challenge);
    // `openid` comes first, always.
    for scope in c.cfg.scopes.iter().filter(|s| *s != "openid") {
        auth = auth.add_scope(Scope::new(scope.clone()));
    }
    if c.cfg.refresh_upstream && !c.cfg.scopes.iter().any(|s| s == "offline_access") {
        auth = auth.add_scope(Scope::new("offline_access".into()));
    }
    if req.force_authn {
        auth = auth.add_prompt(CoreAuthPrompt::Login);
    }
    // OIDC Core §3.1.2.1: with max_age the IdP must re-authenticate an
    // older session and must put `auth_time` in the ID token.
    if let Some(max_age) = req.max_age {
        auth = auth.set_max_age(std::time::Duration::from_secs(max_age.max(0).unsigned_abs()));
    }
    if let Some(hint) = req.login_hint {
        auth = auth.set_login_hint(LoginHint::new(hint.to_owned()));
    }
    // MFA required: ask for it (OIDC Core §3.1.2.1 `acr_values`); the
    // broker checks the ID token's `acr` / `amr` afterwards.
    if req.require_mfa {
        for acr in crate::upstream::Connector::mfa_contexts(c) {
            auth = auth.add_auth_context_value(openidconnect::AuthenticationContextClass::new(acr));
        }
    }
    let (url, _state, nonce) = auth.url();
    let state = serde_json::to_value(Pending {
        state: req.login_id.to_owned(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
        issuer: Some(c.cfg.issuer.clone()),
    })
    .map_err(|e| UpstreamError::internal("oidc.pending_invalid", e.to_string()))?;
    Ok(BeginLogin {
        redirect: UpstreamRedirect::Redirect(url),
        state,
    })
}

/// A sentence for an OAuth error code sent back by the IdP (RFC 6749 §4.1.2.1,
/// OIDC Core §3.1.2.6).
fn idp_error_message(code: &str) -> &'static str {
    match code {
        "access_denied" => "Your identity provider denied access or the sign-in was cancelled.",
        "login_required" | "interaction_required" => {
            "Your identity provider requires you to sign in interactively. Please try again."
        }
        "consent_required" => "Your identity provider needs your consent before signing you in.",
        "account_selection_required" => "Your identity provider needs you to choose an account.",
        "temporarily_unavailable" | "server_error" => {
            "Your identity provider is unavailable at the moment. Please try again later."
        }
        "invalid_scope" | "unauthorized_client" | "unsupported_response_type"
        | "invalid_request" | "invalid_request_uri" | "invalid_request_object" => {
            "Your identity provider refused the sign-in request; the connection may be misconfigured. Please contact your administrator."
        }
        _ => "Your identity provider reported an error during sign-in.",
    }
}

fn param<'p>(params: &'p CallbackParams, name: &str) -> Option<&'p str> {
    params.query.get(name).map(String::as_str)
}

/// Validates the callback and returns the identity.
pub async fn complete(
    c: &OidcConnector,
    pending: Option<&Value>,
    params: &CallbackParams,
) -> Result<Identity, UpstreamError> {
    let Some(pending) = pending else {
        return Err(UpstreamError::reject(
            "oidc.unsolicited",
            "This sign-in was not started here. Please start again from the application.",
            "OIDC callback without a pending login",
        ));
    };
    let pending: Pending = serde_json::from_value(pending.clone())
        .map_err(|e| UpstreamError::internal("oidc.pending_invalid", e.to_string()))?;
    let restart = "This sign-in could not be matched to the one you started. Please start again.";
    match param(params, "state") {
        None => {
            return Err(UpstreamError::reject(
                "oidc.state_missing",
                restart,
                "the callback has no state parameter",
            ))
        }
        Some(s) if !eq(s, &pending.state) => {
            return Err(UpstreamError::reject(
                "oidc.state_mismatch",
                restart,
                "the callback state differs from the pending login's",
            ))
        }
        Some(_) => {}
    }
    // The login was begun at another issuer (the connection was re-pointed
    // since): its code and PKCE verifier are that issuer's, and are sent to
    // no other (a mix-up of the connection's own making).
    if let Some(begun_at) = pending.issuer.as_deref().filter(|i| *i != c.cfg.issuer) {
        return Err(UpstreamError::reject(
            "oidc.issuer_changed",
            restart,
            format!(
                "the login was begun at issuer {begun_at:?}; the connection's issuer is now {:?}",
                c.cfg.issuer
            ),
        ));
    }
    let meta = c.provider.metadata(&c.ctx).await?;
    // RFC 9207: a response from another IdP (mix-up attack) carries another iss.
    match param(params, "iss") {
        Some(iss) if iss != c.cfg.issuer => {
            return Err(UpstreamError::reject(
                "oidc.iss_mismatch",
                restart,
                format!("the callback iss {iss:?} is not the issuer {:?}", c.cfg.issuer),
            ))
        }
        None if meta.iss_parameter_supported() => {
            return Err(UpstreamError::reject(
                "oidc.iss_missing",
                restart,
                "the IdP advertises RFC 9207 but the callback has no iss",
            ))
        }
        _ => {}
    }
    if let Some(error) = param(params, "error") {
        let description: String = param(params, "error_description")
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let error_code: String = error.chars().take(64).collect();
        return Err(UpstreamError::reject(
            "oidc.idp_error",
            idp_error_message(error),
            format!("the IdP answered error={error_code:?} ({description:?})"),
        ));
    }
    let code = param(params, "code")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| UpstreamError::reject("oidc.code_missing", restart, "the callback has no code"))?;
    let tokens = exchange(c, &meta, code, &pending.pkce_verifier).await?;
    let id_token = tokens.id_token.as_deref().ok_or_else(|| {
        UpstreamError::reject(
            "oidc.id_token_missing",
            "The identity provider's answer was incomplete. Please contact your administrator.",
            "the token response has no id_token",
        )
    })?;
    let expected = Expected {
        issuer: &c.cfg.issuer,
        client_id: &c.cfg.client_id,
        nonce: Some(&pending.nonce),
        algorithms: &c.algorithms,
        access_token: &tokens.access_token,
    };
    let mut claims = id_token::validate(id_token, &expected, &c.provider, &c.ctx).await?;
    // Read from the signed ID token only: userinfo must not vouch for when
    // the person authenticated. A fraction rounds down: never fresher than
    // the IdP said.
    let auth_time = id_token::numeric(&claims, "auth_time", id_token::Round::Down)?;
    // `auth_time` is what max_age and prompt=login are judged by: one from
    // the future would make any authentication look fresh (as SAML's
    // AuthnInstant, refused beyond the skew).
    if let Some(at) = auth_time {
        let now = c.ctx.clock.unix();
        if at > now.saturating_add(c.ctx.clock_skew_secs) {
            return Err(id_token::reject(
                "oidc.auth_time_in_future",
                format!(
                    "ID token auth_time {at} is after now {now} plus skew {}s",
                    c.ctx.clock_skew_secs
                ),
            ));
        }
    }
    if c.cfg.userinfo {
        if let Some(endpoint) = meta.userinfo_endpoint() {
            let extra = userinfo(c, endpoint, &tokens.access_token).await?;
            merge_userinfo(&mut claims, extra)?;
        }
    }
    let mut identity = claims::identity(&claims, &c.cfg.claim_mapping)?;
    identity.auth_time = auth_time;
    identity.upstream_refresh_token = tokens.refresh_token.map(crate::secret::Secret::new);
    Ok(identity)
}

/// What the code exchange yields.
pub(crate) struct Tokens {
    /// The ID token, compact form.
    pub(crate) id_token: Option<String>,
    /// The access token (for userinfo, and the ID token's `at_hash`).
    pub(crate) access_token: String,
    /// The refresh token, when the IdP issued one.
    pub(crate) refresh_token: Option<String>,
}

/// Redeems the code with its PKCE verifier (`openidconnect`'s
/// `exchange_code(...).set_pkce_verifier(...)`), through the guarded client
/// ([`TokenEndpoint`]: a text `expires_in` of digits is read as its number).
async fn exchange(
    c: &OidcConnector,
    meta: &ProviderMetadata,
    code: &str,
    verifier: &str,
) -> Result<Tokens, UpstreamError> {
    let client = client(c, meta);
    let request = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| UpstreamError::internal("oidc.discovery", format!("the IdP has no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
    let (answer, elapsed) = crate::meter::timed(request.request_async(&TokenEndpoint(c.ctx.http.clone()))).await;
    crate::meter::upstream("oidc_token", elapsed, answer.is_ok());
    match answer {
        Ok(resp) => Ok(Tokens {
            id_token: resp.id_token().map(ToString::to_string),
            access_token: resp.access_token().secret().clone(),
            refresh_token: resp.refresh_token().map(|t| t.secret().clone()),
        }),
        Err(e) => Err(token_error(e)),
    }
}

/// Refreshes at the IdP (`exchange_refresh_token`). `invalid_grant` is the
/// IdP's refusal (`oidc.refresh_refused`, not internal); anything else
/// (network, 5xx, other errors) is transient.
pub async fn refresh(
    c: &OidcConnector,
    refresh_token: &Secret,
    subject: Option<&str>,
) -> Result<Secret, crate::upstream::RefreshFailed> {
    let meta = c.provider.metadata(&c.ctx).await?;
    let client = client(c, &meta);
    let token = RefreshToken::new(refresh_token.expose().to_owned());
    let request = client
        .exchange_refresh_token(&token)
        .map_err(|e| UpstreamError::internal("oidc.discovery", format!("the IdP has no token endpoint: {e}")))?;
    let (answer, elapsed) = crate::meter::timed(request.request_async(&TokenEndpoint(c.ctx.http.clone()))).await;
    crate::meter::upstream("oidc_refresh", elapsed, answer.is_ok());
    match answer {
        Ok(resp) => {
            let rotated = resp.refresh_token().map(|t| Secret::new(t.secret().clone()));
            // OIDC Core §12.2: an ID token on refresh is verified like the
            // first, and must be about the same person.
            if let Some(token) = resp.id_token() {
                let expected = Expected {
                    issuer: &c.cfg.issuer,
                    client_id: &c.cfg.client_id,
                    nonce: None,
                    algorithms: &c.algorithms,
                    access_token: resp.access_token().secret(),
                };
                let claims = match id_token::validate(&token.to_string(), &expected, &c.provider, &c.ctx).await {
                    Ok(claims) => claims,
                    // Not checked now (the IdP's keys could not be fetched):
                    // the session is not confirmed, but the IdP has already
                    // spent the token we sent, so its new one is handed on.
                    Err(error) if error.internal => return Err(crate::upstream::RefreshFailed { error, rotated }),
                    Err(error) => return Err(error.into()),
                };
                let sub = claims.get("sub").and_then(Value::as_str);
                if subject.is_some_and(|s| Some(s) != sub) {
                    return Err(UpstreamError::reject(
                        "oidc.refresh_subject_changed",
                        "Your identity provider answered for someone else. Please sign in again.",
                        "the refreshed ID token names another sub",
                    )
                    .into());
                }
            }
            // Rotated, or the same token again when the IdP does not rotate.
            Ok(rotated.unwrap_or_else(|| refresh_token.clone()))
        }
        Err(RequestTokenError::ServerResponse(err)) if *err.error() == CoreErrorResponseType::InvalidGrant => {
            Err(UpstreamError::reject(
                "oidc.refresh_refused",
                "Your identity provider no longer accepts this session. Please sign in again.",
                format!(
                    "the IdP refused the refresh: {:?}",
                    err.error_description()
                        .map(|d| d.chars().take(300).collect::<String>())
                        .unwrap_or_default()
                ),
            )
            .into())
        }
        Err(e) => {
            let e = token_error(e);
            Err(UpstreamError::internal("oidc.refresh_unavailable", format!("{}: {}", e.code, e.detail)).into())
        }
    }
}

/// Maps the token endpoint's failure onto our reason codes.
pub(crate) fn token_error(
    e: RequestTokenError<UpstreamError, StandardErrorResponse<CoreErrorResponseType>>,
) -> UpstreamError {
    match e {
        RequestTokenError::ServerResponse(err) => UpstreamError::reject(
            "oidc.token_rejected",
            "Your identity provider refused to complete the sign-in. Please sign in again.",
            format!(
                "token endpoint answered {:?} ({:?})",
                err.error().as_ref().chars().take(64).collect::<String>(),
                err.error_description()
                    .map(|d| d.chars().take(300).collect::<String>())
                    .unwrap_or_default()
            ),
        ),
        RequestTokenError::Request(inner) => inner,
        RequestTokenError::Parse(err, body) => {
            // A response that only fails because its ID token is unreadable
            // is the ID token's fault.
            let id_token = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("id_token").and_then(Value::as_str).map(str::to_owned));
            match id_token.as_deref().and_then(id_token::unreadable) {
                Some(code) => id_token::reject(code, format!("the ID token cannot be read: {err}")),
                None => UpstreamError::internal("oidc.token_response_invalid", format!("token response: {err}")),
            }
        }
        RequestTokenError::Other(detail) => UpstreamError::internal("oidc.token_endpoint", detail),
    }
}

async fn userinfo(c: &OidcConnector, endpoint: &url::Url, access_token: &str) -> Result<Claims, UpstreamError> {
    let (resp, elapsed) = crate::meter::timed(c.ctx.http.get_bearer(endpoint, access_token)).await;
    crate::meter::upstream("oidc_userinfo", elapsed, resp.is_ok());
    let resp = resp?;
    serde_json::from_slice::<Claims>(resp.body()).map_err(|e| {
        UpstreamError::internal(
            "oidc.userinfo_invalid",
            format!("userinfo is not a JSON object (signed userinfo is not supported): {e}"),
        )
    })
}

/// Claims only the signed ID token may carry (OIDC Core §2, §3.1.3.6):
/// how and when the person authenticated and what the token is for. A
/// userinfo answer, unsigned here, never supplies them: its `acr` or `amr`
/// could otherwise satisfy `require_mfa`.
const ID_TOKEN_ONLY: [&str; 13] = [
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "azp",
    "auth_time",
    "acr",
    "amr",
    "at_hash",
    "c_hash",
    "sid",
];

/// Adds userinfo claims the ID token lacks, except [`ID_TOKEN_ONLY`]. The
/// ID token's (signed) values win; a userinfo answer about another subject
/// is refused (OIDC Core §5.3.2).
fn merge_userinfo(claims: &mut Claims, extra: Claims) -> Result<(), UpstreamError> {
    let token_sub = claims.get("sub").and_then(Value::as_str);
    let info_sub = extra.get("sub").and_then(Value::as_str);
    if token_sub.is_none() || token_sub != info_sub {
        return Err(UpstreamError::reject(
            "oidc.userinfo_sub_mismatch",
            "The identity provider's answer could not be verified. Please try again or contact your administrator.",
            format!("userinfo sub {info_sub:?} differs from the ID token's {token_sub:?}"),
        ));
    }
    for (k, v) in extra {
        if ID_TOKEN_ONLY.contains(&k.as_str()) {
            continue;
        }
        claims.entry(k).or_insert(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_of_a_login_in_flight_shows_no_state_nonce_or_verifier() {
        let pending = super::Pending {
            state: "s3cret-state".into(),
            nonce: "s3cret-nonce".into(),
            pkce_verifier: "s3cret-verifier".into(),
            issuer: Some("https://idp.example".into()),
        };
        let text = format!("{pending:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("https://idp.example"), "{text}");
    }
}
