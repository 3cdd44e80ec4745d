//! The two halves of the authorization code flow: [`begin`] builds the
//! authorization request, [`complete`] checks the callback, redeems the code
//! and validates what comes back.

use super::id_token::{self, Claims, Expected};
use super::{claims, OidcConnector};
use crate::upstream::{BeginLogin, BeginRequest, CallbackParams, Identity, UpstreamError, UpstreamRedirect};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What `begin` hands the broker to keep until the callback (consumed once).
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// The `state` we sent (the pending login id).
    state: String,
    /// The nonce the ID token must carry.
    nonce: String,
    /// The PKCE code verifier (RFC 7636).
    pkce_verifier: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// 256 bits from the OS-seeded generator, base64url (43 characters, within
/// PKCE's 43..128 verifier length).
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    b64url(&bytes)
}

fn eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Builds the authorization request.
pub async fn begin(c: &OidcConnector, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
    let meta = c.provider.metadata(&c.ctx).await?;
    let nonce = random_token();
    let verifier = random_token();
    let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
    let mut scopes = vec!["openid"];
    scopes.extend(c.cfg.scopes.iter().map(String::as_str).filter(|s| *s != "openid"));
    let mut url = meta.authorization_endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &c.cfg.client_id)
            .append_pair("redirect_uri", c.redirect_uri.as_str())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", req.login_id)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if req.force_authn {
            q.append_pair("prompt", "login");
        }
        // OIDC Core §3.1.2.1: with max_age the IdP must re-authenticate an
        // older session and must put `auth_time` in the ID token.
        if let Some(max_age) = req.max_age {
            q.append_pair("max_age", &max_age.max(0).to_string());
        }
        if let Some(hint) = req.login_hint {
            q.append_pair("login_hint", hint);
        }
    }
    let state = serde_json::to_value(Pending {
        state: req.login_id.to_owned(),
        nonce,
        pkce_verifier: verifier,
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
        None if meta.authorization_response_iss_parameter_supported => {
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
        nonce: &pending.nonce,
        algorithms: &c.algorithms,
    };
    let mut claims = id_token::validate(id_token, &expected, &c.provider, &c.ctx).await?;
    // Read from the signed ID token only: userinfo must not vouch for when
    // the person authenticated.
    let auth_time = id_token::numeric(&claims, "auth_time")?;
    if c.cfg.userinfo {
        if let (Some(endpoint), Some(access_token)) = (&meta.userinfo_endpoint, &tokens.access_token) {
            let extra = userinfo(c, endpoint, access_token).await?;
            merge_userinfo(&mut claims, extra)?;
        }
    }
    let mut identity = claims::identity(&claims, &c.cfg.claim_mapping)?;
    identity.auth_time = auth_time;
    Ok(identity)
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

async fn exchange(
    c: &OidcConnector,
    meta: &super::provider::ProviderMetadata,
    code: &str,
    verifier: &str,
) -> Result<TokenResponse, UpstreamError> {
    let endpoint = meta.token_endpoint()?;
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", c.redirect_uri.as_str()),
        ("code_verifier", verifier),
    ];
    let secret = c.cfg.client_secret.as_ref().map(|s| s.expose());
    let basic = match secret {
        Some(secret) if !meta.prefers_client_secret_post() => Some((c.cfg.client_id.as_str(), secret)),
        Some(secret) => {
            fields.push(("client_id", &c.cfg.client_id));
            fields.push(("client_secret", secret));
            None
        }
        None => {
            fields.push(("client_id", &c.cfg.client_id));
            None
        }
    };
    let resp = c.ctx.http.post_form(endpoint, &fields, basic).await?;
    let status = resp.status();
    if status.is_success() {
        return serde_json::from_slice(resp.body())
            .map_err(|e| UpstreamError::internal("oidc.token_response_invalid", format!("token response: {e}")));
    }
    match serde_json::from_slice::<OAuthError>(resp.body()) {
        Ok(err) if status.is_client_error() => Err(UpstreamError::reject(
            "oidc.token_rejected",
            "Your identity provider refused to complete the sign-in. Please sign in again.",
            format!(
                "token endpoint answered {status}: {:?} ({:?})",
                err.error.chars().take(64).collect::<String>(),
                err.error_description
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        )),
        _ => Err(UpstreamError::internal(
            "oidc.token_endpoint",
            format!("token endpoint answered {status}"),
        )),
    }
}

async fn userinfo(c: &OidcConnector, endpoint: &url::Url, access_token: &str) -> Result<Claims, UpstreamError> {
    let resp = c.ctx.http.get_bearer(endpoint, access_token).await?;
    serde_json::from_slice::<Claims>(resp.body()).map_err(|e| {
        UpstreamError::internal(
            "oidc.userinfo_invalid",
            format!("userinfo is not a JSON object (signed userinfo is not supported): {e}"),
        )
    })
}

/// Adds userinfo claims the ID token lacks. The ID token's (signed) values
/// win; a userinfo answer about another subject is refused (OIDC Core §5.3.2).
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
        claims.entry(k).or_insert(v);
    }
    Ok(())
}
