//! The IdP's public keys as `openidconnect`'s verifier sees them, with the
//! signature arithmetic done by our openssl provider
//! (`tokens::openssl_provider`) instead of the crate's RustCrypto backend:
//! one crypto stack for every signature the gateway checks.

use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeyType, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyId, SignatureVerificationError};
use serde::{Deserialize, Serialize};

/// One JWK of the IdP: `openidconnect`'s key model (kid, use, type and `alg`
/// matching), verified with openssl.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpensslJwk(pub CoreJsonWebKey);

/// The `jsonwebtoken` algorithm of a JWS algorithm; symmetric ones are
/// refused here too, whatever the allow-list says.
fn algorithm(alg: &CoreJwsSigningAlgorithm) -> Result<jsonwebtoken::Algorithm, SignatureVerificationError> {
    let name = match serde_json::to_value(alg) {
        Ok(serde_json::Value::String(s)) => s,
        _ => return Err(SignatureVerificationError::UnsupportedAlg(format!("{alg:?}"))),
    };
    if name.starts_with("HS") || name == "none" {
        return Err(SignatureVerificationError::DisallowedAlg(name));
    }
    name.parse::<jsonwebtoken::Algorithm>()
        .map_err(|_| SignatureVerificationError::UnsupportedAlg(name))
}

impl JsonWebKey for OpensslJwk {
    type KeyUse = CoreJsonWebKeyUse;
    type SigningAlgorithm = CoreJwsSigningAlgorithm;

    fn key_id(&self) -> Option<&JsonWebKeyId> {
        self.0.key_id()
    }

    fn key_type(&self) -> &CoreJsonWebKeyType {
        self.0.key_type()
    }

    fn key_use(&self) -> Option<&CoreJsonWebKeyUse> {
        self.0.key_use()
    }

    fn signing_alg(&self) -> JsonWebKeyAlgorithm<&CoreJwsSigningAlgorithm> {
        self.0.signing_alg()
    }

    fn new_symmetric(key: Vec<u8>) -> Self {
        Self(CoreJsonWebKey::new_symmetric(key))
    }

    fn verify_signature(
        &self,
        signature_alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureVerificationError> {
        let alg = algorithm(signature_alg)?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::to_value(&self.0)
            .and_then(serde_json::from_value)
            .map_err(|e| SignatureVerificationError::InvalidKey(e.to_string()))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|e| SignatureVerificationError::InvalidKey(e.to_string()))?;
        crate::tokens::install_crypto_provider();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        match jsonwebtoken::crypto::verify(&signature, message, &key, alg) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SignatureVerificationError::CryptoError(
                "the signature does not verify".into(),
            )),
            Err(e) => Err(SignatureVerificationError::CryptoError(e.to_string())),
        }
    }

    fn hash_bytes(&self, bytes: &[u8], alg: &CoreJwsSigningAlgorithm) -> Result<Vec<u8>, String> {
        self.0.hash_bytes(bytes, alg)
    }
}
