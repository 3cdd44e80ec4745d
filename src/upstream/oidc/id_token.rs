//! ID token validation (OpenID Connect Core 1.0 §3.1.3.7).
//!
//! Done here rather than by `openidconnect`'s verifier so that every check has
//! its own reason code, time comes from the injected clock, and the key
//! lookup can refetch the JWKS under a shared rate limit. `jsonwebtoken` is
//! used only for the signature primitive.

use super::provider::Provider;
use crate::upstream::{UpstreamContext, UpstreamError};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The claims of a validated ID token.
pub type Claims = Map<String, Value>;

/// What the ID token must match.
pub struct Expected<'a> {
    /// The issuer identifier, exactly.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce sent with the authorization request.
    pub nonce: &'a str,
    /// Accepted signature algorithms (never `none` or HS*).
    pub algorithms: &'a [Algorithm],
}

const UNVERIFIABLE: &str =
    "The identity provider's answer could not be verified. Please try again or contact your administrator.";

fn reject(code: &'static str, detail: impl Into<String>) -> UpstreamError {
    UpstreamError::reject(code, UNVERIFIABLE, detail)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

struct Parts<'t> {
    header: Header,
    message: &'t str,
    signature: &'t str,
    claims: Claims,
}

fn b64(part: &str) -> Result<Vec<u8>, UpstreamError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| reject("oidc.id_token_malformed", format!("bad base64url: {e}")))
}

fn split(token: &str) -> Result<Parts<'_>, UpstreamError> {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(reject(
            "oidc.id_token_malformed",
            "the ID token is not a three-part JWS (encrypted ID tokens are not supported)",
        ));
    };
    let header: Header =
        serde_json::from_slice(&b64(h)?).map_err(|e| reject("oidc.id_token_malformed", format!("bad header: {e}")))?;
    let claims: Claims =
        serde_json::from_slice(&b64(p)?).map_err(|e| reject("oidc.id_token_malformed", format!("bad claims: {e}")))?;
    let message = token
        .get(..h.len() + 1 + p.len())
        .ok_or_else(|| reject("oidc.id_token_malformed", "truncated"))?;
    Ok(Parts {
        header,
        message,
        signature: s,
        claims,
    })
}

/// Validates `token` and returns its claims.
pub async fn validate(
    token: &str,
    expected: &Expected<'_>,
    provider: &Provider,
    ctx: &UpstreamContext,
) -> Result<Claims, UpstreamError> {
    let parts = split(token)?;
    // The allow-list is checked before any key is touched: `none` and HS*
    // (an HMAC keyed with the IdP's public key) never reach verification.
    let alg = expected
        .algorithms
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == parts.header.alg)
        .ok_or_else(|| {
            reject(
                "oidc.alg_not_allowed",
                format!("ID token algorithm {:?} is not allowed", parts.header.alg),
            )
        })?;
    let kid = parts.header.kid.as_deref();
    let keys = provider.keys(ctx, false).await?;
    let mut outcome = check_signature(&parts, alg, kid, &keys);
    if matches!(outcome, Err(SigError::NoKey)) && provider.may_refetch(ctx).await? {
        // The IdP may have rotated its keys since we cached them.
        tracing::info!(kid = kid.unwrap_or("-"), "oidc: unknown signing key, refetching JWKS");
        let keys = provider.keys(ctx, true).await?;
        outcome = check_signature(&parts, alg, kid, &keys);
    }
    match outcome {
        Ok(()) => {}
        Err(SigError::NoKey) => {
            return Err(reject(
                "oidc.unknown_kid",
                format!("no {alg:?} key with kid {kid:?} in the IdP's JWKS"),
            ))
        }
        Err(SigError::Bad) => return Err(reject("oidc.bad_signature", "the ID token signature does not verify")),
    }
    check_claims(&parts.claims, expected, ctx)?;
    Ok(parts.claims)
}

enum SigError {
    NoKey,
    Bad,
}

fn check_signature(parts: &Parts<'_>, alg: Algorithm, kid: Option<&str>, keys: &[Jwk]) -> Result<(), SigError> {
    let candidates: Vec<&Jwk> = keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.common.key_id.as_deref() == Some(kid)))
        .filter(|k| key_fits(k, alg))
        .collect();
    if candidates.is_empty() {
        return Err(SigError::NoKey);
    }
    crate::tokens::install_crypto_provider();
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if jsonwebtoken::crypto::verify(parts.signature, parts.message.as_bytes(), &key, alg).unwrap_or(false) {
            return Ok(());
        }
    }
    Err(SigError::Bad)
}

/// Whether `jwk` may verify `alg`: same family, matching curve, and the key's
/// own `alg` (when it states one) equal to the token's.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(key_alg) = jwk.common.key_algorithm {
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return false;
        }
    }
    match (&jwk.algorithm, alg.family()) {
        (AlgorithmParameters::RSA(_), AlgorithmFamily::Rsa) => true,
        (AlgorithmParameters::EllipticCurve(p), AlgorithmFamily::Ec) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        (AlgorithmParameters::OctetKeyPair(p), AlgorithmFamily::Ed) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    }
}

/// A NumericDate claim (some IdPs send fractions); a value that is not a
/// number is `oidc.id_token_malformed`.
pub fn numeric(claims: &Claims, name: &str) -> Result<Option<i64>, UpstreamError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| reject("oidc.id_token_malformed", format!("{name} is not a time"))),
        Some(_) => Err(reject("oidc.id_token_malformed", format!("{name} is not a number"))),
    }
}

fn check_claims(claims: &Claims, expected: &Expected<'_>, ctx: &UpstreamContext) -> Result<(), UpstreamError> {
    let iss = claims.get("iss").and_then(Value::as_str);
    if iss != Some(expected.issuer) {
        return Err(reject(
            "oidc.issuer_mismatch",
            format!("ID token iss {iss:?}, expected {:?}", expected.issuer),
        ));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expected.client_id) {
        return Err(reject(
            "oidc.audience_mismatch",
            format!("ID token aud {audiences:?} does not contain our client id"),
        ));
    }
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(expected.client_id) {
        return Err(reject(
            "oidc.azp_mismatch",
            format!("ID token azp {azp:?} is not our client id (aud {audiences:?})"),
        ));
    }
    let now = ctx.clock.unix();
    let skew = ctx.clock_skew_secs;
    let exp = numeric(claims, "exp")?.ok_or_else(|| reject("oidc.id_token_malformed", "the ID token has no exp"))?;
    if now > exp.saturating_add(skew) {
        return Err(UpstreamError::reject(
            "oidc.expired",
            "The sign-in answer has expired. Please sign in again.",
            format!("ID token expired at {exp}, now {now}, skew {skew}s"),
        ));
    }
    let iat = numeric(claims, "iat")?.ok_or_else(|| reject("oidc.id_token_malformed", "the ID token has no iat"))?;
    if iat > now.saturating_add(skew) {
        return Err(reject(
            "oidc.issued_in_future",
            format!("ID token iat {iat} is after now {now} plus skew {skew}s"),
        ));
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if nbf > now.saturating_add(skew) {
            return Err(reject(
                "oidc.not_yet_valid",
                format!("ID token nbf {nbf} is after now {now} plus skew {skew}s"),
            ));
        }
    }
    let nonce = claims.get("nonce").and_then(Value::as_str);
    let nonce_ok = nonce.is_some_and(|n| {
        use subtle::ConstantTimeEq;
        bool::from(n.as_bytes().ct_eq(expected.nonce.as_bytes()))
    });
    if !nonce_ok {
        return Err(reject(
            "oidc.nonce_mismatch",
            if nonce.is_some() {
                "the ID token nonce differs from the one we sent"
            } else {
                "the ID token has no nonce"
            },
        ));
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(reject("oidc.id_token_malformed", "the ID token has no sub")),
    }
}
