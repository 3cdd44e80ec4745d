//! ID token validation (OpenID Connect Core 1.0 §3.1.3.7) on `openidconnect`'s
//! `IdTokenVerifier`: issuer, audience, algorithm allow-list, signature (with
//! our openssl provider, see [`super::keys`]), expiry and issue time on the
//! injected clock, nonce. Its typed errors map onto our reason codes; what it
//! does not check is checked here: the allow-list before anything else,
//! `azp`, `nbf`, a non-empty `sub`, `at_hash` against the access token of the
//! same token response, and a JWKS refetch on an unknown `kid` (rate-limited
//! through the store).

use super::keys::OpensslJwk;
use super::provider::{KeySet, Provider};
use crate::upstream::{UpstreamContext, UpstreamError};
use base64::Engine;
use jsonwebtoken::Algorithm;
use openidconnect::core::{CoreIdToken, CoreJwsSigningAlgorithm};
use openidconnect::{ClaimsVerificationError, ClientId, IdTokenVerifier, IssuerUrl, Nonce, SignatureVerificationError};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;

/// The claims of a validated ID token.
pub type Claims = Map<String, Value>;

/// What the ID token must match.
pub struct Expected<'a> {
    /// The issuer identifier, exactly.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce sent with the authorization request; `None` for an ID token
    /// from a refresh (OIDC Core §12.2: no nonce was sent).
    pub nonce: Option<&'a str>,
    /// Accepted signature algorithms (never `none` or HS*).
    pub algorithms: &'a [Algorithm],
    /// The access token of the token response the ID token came in, which
    /// its `at_hash`, when present, must match (OIDC Core §3.1.3.8, §12.2).
    pub access_token: &'a str,
}

const UNVERIFIABLE: &str =
    "The identity provider's answer could not be verified. Please try again or contact your administrator.";

/// Marks the issue-time verifier's refusal, which `openidconnect` reports
/// as `Expired` like the expiry check.
const IAT_IN_FUTURE: &str = "iat-in-future";

/// A refusal of the IdP's answer with `code`, in words for the person.
pub(super) fn reject(code: &'static str, detail: impl Into<String>) -> UpstreamError {
    UpstreamError::reject(code, UNVERIFIABLE, detail)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn b64(part: &str) -> Result<Vec<u8>, UpstreamError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| reject("oidc.id_token_malformed", format!("bad base64url: {e}")))
}

/// The header and payload segments of a three-part JWS.
fn segments(token: &str) -> Result<(&str, &str), UpstreamError> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(_), None) => Ok((h, p)),
        _ => Err(reject(
            "oidc.id_token_malformed",
            "the ID token is not a three-part JWS (encrypted ID tokens are not supported)",
        )),
    }
}

/// Why `token` cannot be read as an ID token at all, or `None` when it can
/// (for telling a malformed ID token from a malformed token response):
/// `oidc.at_hash_mismatch` when its `at_hash` is not a string (which
/// `openidconnect` refuses to read), else `oidc.id_token_malformed`.
pub fn unreadable(token: &str) -> Option<&'static str> {
    if CoreIdToken::from_str(token).is_ok() {
        return None;
    }
    let at_hash_not_a_string = segments(token)
        .ok()
        .and_then(|(_, payload)| b64(payload).ok())
        .and_then(|bytes| serde_json::from_slice::<Claims>(&bytes).ok())
        .is_some_and(|claims| claims.get("at_hash").is_some_and(|v| !v.is_string()));
    Some(if at_hash_not_a_string {
        "oidc.at_hash_mismatch"
    } else {
        "oidc.id_token_malformed"
    })
}

/// Validates `token` and returns its claims.
pub async fn validate(
    token: &str,
    expected: &Expected<'_>,
    provider: &Provider,
    ctx: &UpstreamContext,
) -> Result<Claims, UpstreamError> {
    let (header, payload) = segments(token)?;
    let header: Header = serde_json::from_slice(&b64(header)?)
        .map_err(|e| reject("oidc.id_token_malformed", format!("bad header: {e}")))?;
    // The allow-list is checked before anything else: `none` and HS* (an
    // HMAC keyed with the IdP's public key) never reach verification.
    let allowed: Vec<CoreJwsSigningAlgorithm> = expected
        .algorithms
        .iter()
        .filter_map(|a| serde_json::from_value(Value::String(format!("{a:?}"))).ok())
        .collect();
    if !expected.algorithms.iter().any(|a| format!("{a:?}") == header.alg) {
        return Err(reject(
            "oidc.alg_not_allowed",
            format!("ID token algorithm {:?} is not allowed", header.alg),
        ));
    }
    let id_token = CoreIdToken::from_str(token).map_err(|e| {
        reject(
            unreadable(token).unwrap_or("oidc.id_token_malformed"),
            format!("not an ID token: {e}"),
        )
    })?;
    let keys_read = provider.keys(ctx, false).await?;
    let mut outcome = verify(&id_token, expected, &allowed, &keys_read, ctx);
    let no_key = |o: &Result<(), ClaimsVerificationError>| {
        matches!(
            o,
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
            ))
        )
    };
    if no_key(&outcome) {
        // The IdP may have rotated its keys since we cached them.
        let refetched = provider.may_refetch(ctx);
        let keys = if refetched {
            tracing::info!("oidc: unknown signing key, refetching JWKS");
            provider.keys(ctx, true).await?
        } else {
            // Fetched moments ago, maybe by another check since ours read
            // the cache: what it brought, if anything.
            provider.keys(ctx, false).await?
        };
        if !Arc::ptr_eq(&keys, &keys_read) {
            outcome = verify(&id_token, expected, &allowed, &keys, ctx);
        }
        if !refetched && no_key(&outcome) {
            // Not looked for: the IdP's JWKS was fetched (or failed) moments
            // ago and is not asked again yet. Whether the key exists is not
            // known, so this is not the IdP's fault: a transient failure (an
            // upstream refresh refused this way must not end the session).
            return Err(UpstreamError::internal(
                "oidc.jwks_refetch_limited",
                format!(
                    "the token's key is not in the cached JWKS, which was fetched less than {} s ago",
                    super::provider::JWKS_REFETCH_WINDOW_SECS
                ),
            ));
        }
    }
    outcome.map_err(|e| map_error(e, ctx))?;
    // Verified: the signed payload is read as it was signed.
    let claims: Claims = serde_json::from_slice(&b64(payload)?)
        .map_err(|e| reject("oidc.id_token_malformed", format!("bad claims: {e}")))?;
    check_rest(&claims, expected, ctx)?;
    check_at_hash(&claims, &header.alg, expected.access_token)?;
    Ok(claims)
}

fn verify(
    id_token: &CoreIdToken,
    expected: &Expected<'_>,
    allowed: &[CoreJwsSigningAlgorithm],
    keys: &KeySet,
    ctx: &UpstreamContext,
) -> Result<(), ClaimsVerificationError> {
    let issuer = IssuerUrl::new(expected.issuer.to_owned())
        .map_err(|e| ClaimsVerificationError::InvalidIssuer(format!("configured issuer: {e}")))?;
    let now = ctx.clock.now();
    let skew = chrono::Duration::seconds(ctx.clock_skew_secs);
    let verifier: IdTokenVerifier<'_, OpensslJwk> =
        IdTokenVerifier::new_public_client(ClientId::new(expected.client_id.to_owned()), issuer, keys.clone())
            .set_allowed_algs(allowed.iter().cloned())
            // We never checked `typ`; IdPs disagree on it.
            .allow_all_jose_types()
            // Several audiences are judged by `azp` below, as before.
            .set_other_audience_verifier_fn(|_| true)
            // Expired when now > exp + skew, to the nanosecond (the verifier
            // refuses at `time >= exp`; `exp` keeps its fraction). A whole
            // second taken off here let a token live up to a second past
            // exp + skew on a clock with fractions.
            .set_time_fn(move || now - skew - chrono::Duration::nanoseconds(1))
            .set_issue_time_verifier_fn(move |iat| {
                if iat > now + skew {
                    Err(format!(
                        "{IAT_IN_FUTURE}: ID token iat {iat} is after now {now} plus skew"
                    ))
                } else {
                    Ok(())
                }
            });
    let nonce = |got: Option<&Nonce>| -> Result<(), String> {
        use subtle::ConstantTimeEq;
        match (expected.nonce, got) {
            (None, _) => Ok(()),
            (Some(sent), Some(n)) if bool::from(n.secret().as_bytes().ct_eq(sent.as_bytes())) => Ok(()),
            (Some(_), Some(_)) => Err("the ID token nonce differs from the one we sent".into()),
            (Some(_), None) => Err("the ID token has no nonce".into()),
        }
    };
    id_token.claims(&verifier, nonce).map(|_| ())
}

fn map_error(e: ClaimsVerificationError, ctx: &UpstreamContext) -> UpstreamError {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::SignatureVerification(S::NoMatchingKey) => reject(
            "oidc.unknown_kid",
            "no key in the IdP's JWKS fits the token's kid and alg",
        ),
        C::SignatureVerification(S::AmbiguousKeyId(d)) => reject("oidc.unknown_kid", d),
        C::SignatureVerification(S::DisallowedAlg(d) | S::UnsupportedAlg(d)) => reject("oidc.alg_not_allowed", d),
        C::SignatureVerification(S::NoSignature) => reject("oidc.alg_not_allowed", "the ID token is unsigned"),
        C::SignatureVerification(other) => reject(
            "oidc.bad_signature",
            format!("the ID token signature does not verify: {other}"),
        ),
        C::InvalidIssuer(d) => reject("oidc.issuer_mismatch", format!("ID token iss: {d}")),
        C::InvalidAudience(d) => reject("oidc.audience_mismatch", format!("ID token aud: {d}")),
        C::Expired(d) if d.starts_with(IAT_IN_FUTURE) => reject("oidc.issued_in_future", d),
        C::Expired(d) => UpstreamError::reject(
            "oidc.expired",
            "The sign-in answer has expired. Please sign in again.",
            format!("{d} (skew {}s)", ctx.clock_skew_secs),
        ),
        C::InvalidNonce(d) => reject("oidc.nonce_mismatch", d),
        other => reject("oidc.id_token_malformed", other.to_string()),
    }
}

/// How a NumericDate with a fraction (some IdPs send them) becomes whole
/// seconds: always the way that grants less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Upwards: for an instant before which something does not hold
    /// (`nbf`: never valid earlier than said).
    Up,
    /// Downwards: for an instant whose age counts (`auth_time`: never
    /// fresher than said).
    Down,
}

/// A NumericDate claim in whole seconds, a fraction rounded as `round`
/// says; beyond what an `i64` holds it saturates (for `nbf`, never valid;
/// `auth_time` so far out is already refused by `openidconnect`'s parse). A
/// value that is not a number is `oidc.id_token_malformed`.
pub fn numeric(claims: &Claims, name: &str, round: Round) -> Result<Option<i64>, UpstreamError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(whole), _) => Ok(Some(whole)),
            (None, Some(f)) => Ok(Some(match round {
                Round::Up => f.ceil() as i64,
                Round::Down => f.floor() as i64,
            })),
            (None, None) => Err(reject("oidc.id_token_malformed", format!("{name} is not a time"))),
        },
        Some(_) => Err(reject("oidc.id_token_malformed", format!("{name} is not a number"))),
    }
}

/// The `at_hash` of `access_token` for an ID token signed with `alg` (OIDC
/// Core §3.1.3.6): base64url of the left half of the hash of the token's
/// ASCII octets, the hash the one `alg` names. `EdDSA` is Ed25519 here (the
/// only curve our provider verifies), whose hash is SHA-512. `None` for an
/// algorithm that names no hash.
fn at_hash_of(alg: &str, access_token: &str) -> Option<String> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    let octets = access_token.as_bytes();
    let digest: Vec<u8> = match alg {
        "RS256" | "ES256" | "PS256" => Sha256::digest(octets).to_vec(),
        "RS384" | "ES384" | "PS384" => Sha384::digest(octets).to_vec(),
        "RS512" | "ES512" | "PS512" | "EdDSA" => Sha512::digest(octets).to_vec(),
        _ => return None,
    };
    digest
        .get(..digest.len() / 2)
        .map(|left| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(left))
}

/// An `at_hash` the ID token carries must be the one of the access token
/// that came with it (OIDC Core §3.1.3.8, §3.2.2.9): otherwise the access
/// token was swapped, or the IdP is broken. Absent is fine (optional in the
/// code flow). Compared without a shortcut on the first differing byte.
fn check_at_hash(claims: &Claims, alg: &str, access_token: &str) -> Result<(), UpstreamError> {
    use subtle::ConstantTimeEq;
    let claimed = match claims.get("at_hash") {
        None => return Ok(()),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(reject(
                "oidc.at_hash_mismatch",
                "the ID token's at_hash is not a string",
            ))
        }
    };
    let Some(computed) = at_hash_of(alg, access_token) else {
        return Err(reject(
            "oidc.at_hash_mismatch",
            format!("no at_hash is defined for ID token algorithm {alg:?}"),
        ));
    };
    if bool::from(claimed.as_bytes().ct_eq(computed.as_bytes())) {
        Ok(())
    } else {
        Err(reject(
            "oidc.at_hash_mismatch",
            "the ID token's at_hash does not match the access token of its token response",
        ))
    }
}

/// The checks `openidconnect` leaves to the client: `azp` (it defers them),
/// `nbf`, and a non-empty `sub`.
fn check_rest(claims: &Claims, expected: &Expected<'_>, ctx: &UpstreamContext) -> Result<(), UpstreamError> {
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(expected.client_id) {
        return Err(reject(
            "oidc.azp_mismatch",
            format!("ID token azp {azp:?} is not our client id (aud {audiences:?})"),
        ));
    }
    let now = ctx.clock.unix();
    let skew = ctx.clock_skew_secs;
    if let Some(nbf) = numeric(claims, "nbf", Round::Up)? {
        if nbf > now.saturating_add(skew) {
            return Err(reject(
                "oidc.not_yet_valid",
                format!("ID token nbf {nbf} is after now {now} plus skew {skew}s"),
            ));
        }
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(reject("oidc.id_token_malformed", "the ID token has no sub")),
    }
}

#[cfg(test)]
mod tests {
    use super::{at_hash_of, check_at_hash, numeric, Claims, Round};
    use serde_json::json;

    fn claims(value: serde_json::Value) -> Claims {
        match value {
            serde_json::Value::Object(map) => map,
            _ => Claims::new(),
        }
    }

    /// `nbf` is never earlier than said, `auth_time` never fresher: a
    /// fraction rounds up for one and down for the other, negative
    /// instants too (a cast alone truncates towards zero).
    #[test]
    fn fractional_numeric_dates_round_the_way_that_grants_less() {
        let c = claims(json!({"a": 100.5, "b": -100.5, "c": 100, "d": 100.0}));
        assert_eq!(numeric(&c, "a", Round::Up).ok(), Some(Some(101)));
        assert_eq!(numeric(&c, "a", Round::Down).ok(), Some(Some(100)));
        assert_eq!(numeric(&c, "b", Round::Up).ok(), Some(Some(-100)));
        assert_eq!(numeric(&c, "b", Round::Down).ok(), Some(Some(-101)));
        for round in [Round::Up, Round::Down] {
            assert_eq!(numeric(&c, "c", round).ok(), Some(Some(100)));
            assert_eq!(numeric(&c, "d", round).ok(), Some(Some(100)));
            assert_eq!(numeric(&c, "missing", round).ok(), Some(None));
        }
    }

    /// OIDC Core Appendix A.3's example: this access token's RS256 at_hash.
    #[test]
    fn at_hash_matches_the_specifications_example() {
        let token = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
        assert_eq!(at_hash_of("RS256", token).as_deref(), Some("77QmUPtjPfzWtF2AnpK9RQ"));
        assert_eq!(at_hash_of("ES256", token), at_hash_of("PS256", token));
        // Half of SHA-384 and of SHA-512, base64url without padding.
        assert_eq!(at_hash_of("RS384", token).map(|h| h.len()), Some(32));
        assert_eq!(at_hash_of("EdDSA", token).map(|h| h.len()), Some(43));
        assert_eq!(at_hash_of("EdDSA", token), at_hash_of("ES512", token));
        assert_eq!(at_hash_of("HS256", token), None);
        let ok = claims(json!({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}));
        assert!(check_at_hash(&ok, "RS256", token).is_ok());
        let err = check_at_hash(&ok, "RS384", token).err().map(|e| e.code);
        assert_eq!(err, Some("oidc.at_hash_mismatch"));
        let err = check_at_hash(&ok, "HS256", token).err().map(|e| e.code);
        assert_eq!(err, Some("oidc.at_hash_mismatch"));
    }
}
