//! Signing keys: generation, the stored keyset, and its parsed form.
//!
//! The keyset is one JSON document in the shared store so that every replica
//! signs with the same key and publishes the same JWKS. Private keys are kept
//! as PKCS#8 PEM inside [`Secret`], so `Debug` never shows them, and the
//! store's sealing layer (`secrets::sealed`) encrypts them at rest.

use super::jwk::PublicJwk;
use super::TokenError;
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use openssl::pkey::PKey;
use serde::{Deserialize, Serialize};

/// The JWS algorithm of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over a 2048-bit key: what every OIDC
    /// client supports, hence the default.
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl SigningAlgorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Parses a JOSE `alg` name; exact match only (`none`, `HS256` and
    /// case variants are not signing algorithms of ours).
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    pub(crate) fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// One key as stored in the keyset document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    pub alg: SigningAlgorithm,
    /// PKCS#8 PEM.
    pub private_pem: Secret,
    pub created_at: DateTime<Utc>,
    /// When it became the active key; `None` while it is `next`.
    #[serde(default)]
    pub activated_at: Option<DateTime<Utc>>,
    /// When it stopped signing; `Some` only for retired keys.
    #[serde(default)]
    pub retired_at: Option<DateTime<Utc>>,
    /// End of a retired key's publication, fixed when it is retired so that
    /// every replica drops it at the same instant whatever its own config.
    #[serde(default)]
    pub publish_until: Option<DateTime<Utc>>,
}

/// The keyset document under `Key::global("keys", "signing")`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Keyset {
    /// Signs every new token.
    pub active: StoredKey,
    /// Published before it ever signs, so relying parties that cache the
    /// JWKS already know it when it becomes active.
    pub next: StoredKey,
    /// Former active keys, published until no token they signed can still
    /// be valid.
    #[serde(default)]
    pub retired: Vec<StoredKey>,
}

impl StoredKey {
    /// Generates a fresh key with openssl.
    pub(crate) fn generate(alg: SigningAlgorithm, now: DateTime<Utc>) -> Result<Self, TokenError> {
        let key = match alg {
            SigningAlgorithm::Rs256 => openssl::rsa::Rsa::generate(2048).and_then(PKey::from_rsa),
            SigningAlgorithm::Es256 => openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                .and_then(|g| openssl::ec::EcKey::generate(&g))
                .and_then(PKey::from_ec_key),
            SigningAlgorithm::EdDsa => PKey::generate_ed25519(),
        }
        .map_err(|e| TokenError::Key(format!("key generation: {e}")))?;
        let pem = key
            .private_key_to_pem_pkcs8()
            .map_err(|e| TokenError::Key(format!("pem: {e}")))?;
        let pem = String::from_utf8(pem).map_err(|e| TokenError::Key(format!("pem: {e}")))?;
        let kid = PublicJwk::from_private(&key, alg)?.thumbprint();
        Ok(Self {
            kid,
            alg,
            private_pem: Secret::new(pem),
            created_at: now,
            activated_at: None,
            retired_at: None,
            publish_until: None,
        })
    }
}

/// A stored key parsed once per cache refresh.
pub(crate) struct LoadedKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub public: PublicJwk,
    pub decoding: jsonwebtoken::DecodingKey,
    /// Only the active key needs one; parsing the others would be waste.
    pub signing: Option<super::jwt::SigningHandle>,
    /// End of this key's publication (retired keys only).
    pub published_until: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("published_until", &self.published_until)
            .finish_non_exhaustive()
    }
}

impl LoadedKey {
    /// Parses `stored`, re-deriving the public key and checking that the
    /// stored `kid` is its thumbprint (a corrupt or hand-edited keyset fails
    /// closed instead of publishing a mismatched key).
    pub(crate) fn load(stored: &StoredKey, signing: bool) -> Result<Self, TokenError> {
        let key = PKey::private_key_from_pem(stored.private_pem.expose().as_bytes())
            .map_err(|e| TokenError::Key(format!("stored key {}: {e}", stored.kid)))?;
        let public = PublicJwk::from_private(&key, stored.alg)?;
        if public.thumbprint() != stored.kid {
            return Err(TokenError::Key(format!(
                "stored key {} does not match its thumbprint",
                stored.kid
            )));
        }
        let signing = if signing {
            Some(super::jwt::SigningHandle::new(&key, stored.alg, &stored.kid)?)
        } else {
            None
        };
        Ok(Self {
            kid: stored.kid.clone(),
            alg: stored.alg,
            decoding: public.decoding_key()?,
            public,
            signing,
            published_until: stored.publish_until,
        })
    }
}
