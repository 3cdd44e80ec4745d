//! Minting and verifying JWTs against a loaded keyset.
//!
//! jsonwebtoken does the signature arithmetic only. Everything that decides
//! whether a token is acceptable — which key, which algorithm, `typ`, `iss`,
//! `exp`, `nbf` — is decided here, against the injected clock, before or
//! after the signature check, so the library's own wall-clock and claim
//! defaults never come into play.

use super::keys::{LoadedKey, SigningAlgorithm};
use super::manager::LoadedKeyset;
use super::openssl_provider::KeySigner;
use super::{RejectReason, TokenError};
use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// Clock skew tolerated on `exp` and `nbf` between replicas, in seconds.
/// Tokens are minted and checked by the same fleet, so this stays tiny.
pub const LEEWAY_SECS: i64 = 5;

/// What signing with one key takes, made once when the keyset is loaded:
/// the parsed key, and the encoded headers of the two token types minted on
/// every grant (ID tokens `JWT`, access tokens `at+jwt`).
pub(crate) struct SigningHandle {
    signer: KeySigner,
    id_header: String,
    access_header: String,
}

impl SigningHandle {
    pub(crate) fn new(
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
        alg: SigningAlgorithm,
        kid: &str,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            signer: KeySigner::from_key(alg.jsonwebtoken(), key).map_err(|e| TokenError::Key(e.to_string()))?,
            id_header: encoded_header(alg, kid, "JWT")?,
            access_header: encoded_header(alg, kid, "at+jwt")?,
        })
    }
}

/// The base64url JOSE header of a token of type `typ` signed by `kid`.
fn encoded_header(alg: SigningAlgorithm, kid: &str, typ: &str) -> Result<String, TokenError> {
    let mut header = jsonwebtoken::Header::new(alg.jsonwebtoken());
    header.typ = Some(typ.to_owned());
    header.kid = Some(kid.to_owned());
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Key(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header))
}

/// Signs `claims` with `key`. The claims must be a JSON object with each
/// name once and a numeric `exp` no further than `max_lifetime` from `now`:
/// retired keys are published for exactly that long, so a longer-lived token
/// would outlive its key.
///
/// The claims are serialized once, and those bytes are what is checked and
/// signed (no intermediate `Value` copy of the claim set). The header is the
/// key's own, encoded when the key was loaded (another `typ` is encoded
/// here), and the key's signer was parsed then too: the openssl signer that
/// jsonwebtoken's provider (`openssl_provider`) would hand out for it.
pub(crate) fn sign<C: serde::Serialize>(
    key: &LoadedKey,
    typ: &str,
    claims: &C,
    now: i64,
    max_lifetime: Duration,
) -> Result<String, TokenError> {
    let signing = key
        .signing
        .as_ref()
        .ok_or_else(|| TokenError::Key(format!("key {} cannot sign", key.kid)))?;
    let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Claims(e.to_string()))?;
    let exp = serde_json::from_slice::<ClaimSet>(&payload)
        .map_err(|e| TokenError::Claims(e.to_string()))?
        .exp
        .as_ref()
        .and_then(numeric_date)
        .ok_or_else(|| TokenError::Claims("claims need a numeric exp".into()))?;
    let max = i64::try_from(max_lifetime.as_secs()).unwrap_or(i64::MAX);
    if exp > now.saturating_add(max) {
        return Err(TokenError::Claims("exp is beyond the maximum token lifetime".into()));
    }
    let other;
    let header = match typ {
        "JWT" => &signing.id_header,
        "at+jwt" => &signing.access_header,
        _ => {
            other = encoded_header(key.alg, &key.kid, typ)?;
            &other
        }
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // header.payload.signature; an RSA-4096 signature is 683 characters.
    let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 700);
    token.push_str(header);
    token.push('.');
    b64.encode_string(&payload, &mut token);
    let signature = signing
        .signer
        .sign(token.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    token.push('.');
    b64.encode_string(&signature, &mut token);
    Ok(token)
}

/// What [`sign`] checks of a serialized claim set: a JSON object whose
/// names are unique (a claim named twice would be read differently by
/// different verifiers), and its `exp`. Other values are skipped unread.
struct ClaimSet {
    exp: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for ClaimSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ClaimSetVisitor)
    }
}

struct ClaimSetVisitor;

impl<'de> serde::de::Visitor<'de> for ClaimSetVisitor {
    type Value = ClaimSet;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ClaimSet, A::Error> {
        let mut names: Vec<ClaimName<'de>> = Vec::with_capacity(24);
        let mut exp = None;
        while let Some(name) = map.next_key::<ClaimName<'de>>()? {
            if names.iter().any(|n| n.0 == name.0) {
                return Err(serde::de::Error::custom(format_args!(
                    "claim {:?} appears twice",
                    name.0
                )));
            }
            if name.0 == "exp" {
                exp = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            names.push(name);
        }
        Ok(ClaimSet { exp })
    }
}

/// A claim's name, borrowed from the serialized claims unless it had escapes.
struct ClaimName<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for ClaimName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ClaimName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<ClaimName<'de>, E> {
                Ok(ClaimName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClaimName<'de>, E> {
                Ok(ClaimName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The header members we read before choosing a key.
struct RawHeader {
    alg: String,
    kid: String,
    typ: Option<String>,
}

fn reject(reason: RejectReason) -> TokenError {
    tracing::info!(reason = reason.code(), "token rejected");
    TokenError::Invalid(reason)
}

fn parse_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(reject(RejectReason::Malformed));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| reject(RejectReason::Malformed))?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(reject(RejectReason::Malformed));
    };
    // We implement no JWS extensions, so any `crit` header must be refused
    // (RFC 7515 §4.1.11).
    if map.contains_key("crit") {
        return Err(reject(RejectReason::Malformed));
    }
    let Some(alg) = map.get("alg").and_then(Value::as_str) else {
        return Err(reject(RejectReason::Malformed));
    };
    let Some(kid) = map.get("kid").and_then(Value::as_str) else {
        return Err(reject(RejectReason::UnknownKid));
    };
    let typ = match map.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(reject(RejectReason::Malformed)),
    };
    Ok(RawHeader {
        alg: alg.to_owned(),
        kid: kid.to_owned(),
        typ,
    })
}

/// `typ` is a media type: compared case-insensitively, with the optional
/// `application/` prefix dropped (RFC 7515 §4.1.9, RFC 9068 §4).
fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// NumericDate: seconds since the epoch, possibly fractional (RFC 7519 §2).
fn numeric_date(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
}

/// Whether `verify` enforces `exp`/`nbf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeCheck {
    Enforce,
    /// Only for `id_token_hint`, which OIDC RP-Initiated Logout lets be expired.
    Skip,
}

/// Verifies `token` and returns its claims. Checks, in order: shape, `kid`
/// names a published key, header `alg` is that key's algorithm, signature,
/// `typ`, `iss`, `exp`, `nbf`.
pub(crate) fn verify<C: serde::de::DeserializeOwned>(
    keyset: &LoadedKeyset,
    token: &str,
    expected_typ: &str,
    issuer: &str,
    now: i64,
    time: TimeCheck,
) -> Result<C, TokenError> {
    let header = parse_header(token)?;
    let Some(key) = keyset.find(&header.kid, now) else {
        return Err(reject(RejectReason::UnknownKid));
    };
    // The key, not the token, decides the algorithm: this is what shuts out
    // `none`, HS256-keyed-with-the-public-key and RS/ES/EdDSA swaps.
    if SigningAlgorithm::from_jose(&header.alg) != Some(key.alg) {
        return Err(reject(RejectReason::AlgMismatch));
    }
    let mut validation = jsonwebtoken::Validation::new(key.alg.jsonwebtoken());
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => reject(RejectReason::BadSignature),
            ErrorKind::InvalidAlgorithm => reject(RejectReason::AlgMismatch),
            _ => reject(RejectReason::Malformed),
        }
    })?;
    match &header.typ {
        Some(t) if normalize_typ(t) == normalize_typ(expected_typ) => {}
        _ => return Err(reject(RejectReason::WrongType)),
    }
    let claims = data.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(reject(RejectReason::WrongIssuer));
    }
    let Some(exp) = claims.get("exp").and_then(numeric_date) else {
        return Err(reject(RejectReason::Malformed));
    };
    if time == TimeCheck::Skip {
        return finish(claims, key);
    }
    if now >= exp.saturating_add(LEEWAY_SECS) {
        return Err(reject(RejectReason::Expired));
    }
    match claims.get("nbf") {
        None => {}
        Some(v) => match numeric_date(v) {
            Some(nbf) if now.saturating_add(LEEWAY_SECS) >= nbf => {}
            Some(_) => return Err(reject(RejectReason::NotYetValid)),
            None => return Err(reject(RejectReason::Malformed)),
        },
    }
    finish(claims, key)
}

fn finish<C: serde::de::DeserializeOwned>(claims: Value, key: &LoadedKey) -> Result<C, TokenError> {
    let out = serde_json::from_value(claims).map_err(|_| reject(RejectReason::Malformed))?;
    tracing::debug!(reason = "token.valid", kid = %key.kid, "token accepted");
    Ok(out)
}
