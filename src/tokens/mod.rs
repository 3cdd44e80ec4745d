//! Token-signing keys and JWT minting/verification for the OpenID Connect
//! provider side (ID tokens and RFC 9068 access tokens for the SaaS's apps).
//!
//! * [`KeyManager`] owns the keyset shared by all replicas in the store:
//!   an `active` key that signs, a `next` key already published in the JWKS,
//!   and `retired` keys published until no token they signed can be valid.
//! * `kid`s are RFC 7638 thumbprints, so they are deterministic and unique.
//! * Verification trusts the key, never the token header, for the algorithm,
//!   and checks time against the injected clock only.
//!
//! Every rejection is a [`TokenError::Invalid`] with a stable
//! [`RejectReason`] code.

mod jwk;
mod jwt;
mod keys;
mod manager;
mod openssl_provider;

#[cfg(test)]
mod tests;

pub use jwt::LEEWAY_SECS;
pub use keys::SigningAlgorithm;
pub(crate) use manager::keyset_key;
pub use manager::{KeyConfig, KeyManager, PublishedDoc, Signer};
pub use openssl_provider::{install as install_crypto_provider, OPENSSL_PROVIDER};

use crate::store::StoreError;
use base64::Engine;
use sha2::Digest;

/// Why a token was refused. Codes are stable: logs and metrics key on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `exp` has passed.
    Expired,
    /// `nbf` is still in the future.
    NotYetValid,
    /// The signature does not verify with the named key.
    BadSignature,
    /// No `kid`, or it names no published key.
    UnknownKid,
    /// The header `alg` is not the algorithm of the named key.
    AlgMismatch,
    /// The header `typ` is not the expected one.
    WrongType,
    /// `iss` is missing or not ours.
    WrongIssuer,
    /// Not a well-formed compact JWS, or claims of the wrong shape.
    Malformed,
}

impl RejectReason {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "token.expired",
            Self::NotYetValid => "token.not_yet_valid",
            Self::BadSignature => "token.bad_signature",
            Self::UnknownKid => "token.unknown_kid",
            Self::AlgMismatch => "token.alg_mismatch",
            Self::WrongType => "token.wrong_type",
            Self::WrongIssuer => "token.wrong_issuer",
            Self::Malformed => "token.malformed",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// An error of the token layer. [`TokenError::Invalid`] is the client's
/// fault (answer 401/400); the others are ours (answer 500/503).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token was refused.
    #[error("token rejected: {0}")]
    Invalid(RejectReason),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key generation, parsing or signing failed, or the stored keyset is
    /// inconsistent.
    #[error("signing key error: {0}")]
    Key(String),
    /// The claims given to sign are unusable (no `exp`, too long-lived,
    /// not serializable).
    #[error("claims cannot be signed: {0}")]
    Claims(String),
    /// Another replica holds the rotation lock.
    #[error("a key rotation is already in progress")]
    RotationInProgress,
}

impl TokenError {
    /// The rejection reason, if this is a rejection.
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            Self::Invalid(r) => Some(*r),
            _ => None,
        }
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `bytes` random bytes from the thread CSPRNG (ChaCha, seeded and
/// periodically reseeded from the OS), base64url without padding.
pub fn random_token(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    b64(&buf)
}

/// base64url (no padding) of SHA-256 of `input`: PKCE `S256` and thumbprints.
pub fn sha256_base64url(input: &[u8]) -> String {
    b64(&sha2::Sha256::digest(input))
}

/// The ID token `at_hash` (and, given a code, `c_hash`): base64url of the
/// left half of the hash of the ASCII value, where the hash is the one of the
/// ID token's `alg` (OIDC Core §3.1.3.6). For `EdDSA` there is no hash in the
/// name; the practice of OIDC implementations (e.g. panva's oidc-token-hash,
/// used by oidc-provider and openid-client) is SHA-512 for Ed25519 — the
/// hash Ed25519 uses internally — so the left 32 bytes of SHA-512 are used.
pub fn at_hash(access_token: &str, alg: SigningAlgorithm) -> String {
    let digest: Vec<u8> = match alg {
        SigningAlgorithm::Rs256 | SigningAlgorithm::Es256 => sha2::Sha256::digest(access_token.as_bytes()).to_vec(),
        SigningAlgorithm::EdDsa => sha2::Sha512::digest(access_token.as_bytes()).to_vec(),
    };
    let half = digest.get(..digest.len() / 2).unwrap_or_default();
    b64(half)
}
