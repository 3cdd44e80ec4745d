//! Public JWKs (RFC 7517/7518/8037) and their RFC 7638 thumbprints.
//!
//! The JWK is built from the openssl key itself rather than from stored
//! strings, so a keyset can never publish a public key that does not belong
//! to the private key that signs.

use super::{b64, sha256_base64url, SigningAlgorithm, TokenError};
use openssl::bn::BigNumContext;
use openssl::pkey::{Id, PKey, Private};
use serde_json::{json, Value};

/// The public half of a signing key, in JWK members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicJwk {
    /// `kty: RSA`.
    Rsa { n: String, e: String },
    /// `kty: EC`, `crv: P-256`.
    Ec { x: String, y: String },
    /// `kty: OKP`, `crv: Ed25519`.
    Okp { x: String },
}

fn key_error(what: &str, e: impl std::fmt::Display) -> TokenError {
    TokenError::Key(format!("{what}: {e}"))
}

impl PublicJwk {
    /// Extracts the public members of `key`, which must be of the type
    /// `alg` signs with (RSA ≥ 2048 bits, P-256, Ed25519).
    pub(crate) fn from_private(key: &PKey<Private>, alg: SigningAlgorithm) -> Result<Self, TokenError> {
        match (alg, key.id()) {
            (SigningAlgorithm::Rs256, Id::RSA) => {
                let rsa = key.rsa().map_err(|e| key_error("rsa", e))?;
                if rsa.size() < 256 {
                    return Err(TokenError::Key("RSA key shorter than 2048 bits".into()));
                }
                Ok(Self::Rsa {
                    n: b64(&rsa.n().to_vec()),
                    e: b64(&rsa.e().to_vec()),
                })
            }
            (SigningAlgorithm::Es256, Id::EC) => {
                let ec = key.ec_key().map_err(|e| key_error("ec", e))?;
                if ec.group().curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
                    return Err(TokenError::Key("EC key is not on P-256".into()));
                }
                let mut ctx = BigNumContext::new().map_err(|e| key_error("bn", e))?;
                let mut x = openssl::bn::BigNum::new().map_err(|e| key_error("bn", e))?;
                let mut y = openssl::bn::BigNum::new().map_err(|e| key_error("bn", e))?;
                ec.public_key()
                    .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                    .map_err(|e| key_error("ec point", e))?;
                // RFC 7518 §6.2.1.2: coordinates are the full field size, zero-padded.
                let x = x.to_vec_padded(32).map_err(|e| key_error("ec x", e))?;
                let y = y.to_vec_padded(32).map_err(|e| key_error("ec y", e))?;
                Ok(Self::Ec { x: b64(&x), y: b64(&y) })
            }
            (SigningAlgorithm::EdDsa, Id::ED25519) => {
                let raw = key.raw_public_key().map_err(|e| key_error("ed25519", e))?;
                Ok(Self::Okp { x: b64(&raw) })
            }
            _ => Err(TokenError::Key(format!(
                "key type does not match algorithm {}",
                alg.as_str()
            ))),
        }
    }

    /// The RFC 7638 thumbprint: SHA-256 over the required members in
    /// lexicographic order, no whitespace. Deterministic for a given public
    /// key and distinct for distinct keys, so it serves as the `kid`.
    pub(crate) fn thumbprint(&self) -> String {
        // Every member value is base64url or a fixed name, so none needs JSON
        // escaping and the canonical form can be written directly.
        let canonical = match self {
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            Self::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            Self::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        };
        sha256_base64url(canonical.as_bytes())
    }

    /// The JWK as published in the JWKS document.
    pub(crate) fn to_json(&self, kid: &str, alg: SigningAlgorithm) -> Value {
        let mut v = match self {
            Self::Rsa { n, e } => json!({"kty": "RSA", "n": n, "e": e}),
            Self::Ec { x, y } => json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            Self::Okp { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        };
        if let Some(obj) = v.as_object_mut() {
            obj.insert("kid".into(), Value::from(kid));
            obj.insert("use".into(), Value::from("sig"));
            obj.insert("alg".into(), Value::from(alg.as_str()));
        }
        v
    }

    /// The verification key for jsonwebtoken, built from the same members a
    /// relying party reads from the JWKS.
    pub(crate) fn decoding_key(&self) -> Result<jsonwebtoken::DecodingKey, TokenError> {
        let key = match self {
            Self::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_components(n, e),
            Self::Ec { x, y } => jsonwebtoken::DecodingKey::from_ec_components(x, y),
            Self::Okp { x } => jsonwebtoken::DecodingKey::from_ed_components(x),
        };
        key.map_err(|e| key_error("decoding key", e))
    }
}
