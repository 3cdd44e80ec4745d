//! jsonwebtoken's signature arithmetic done by openssl.
//!
//! jsonwebtoken stays the JWT library (header, claims, base64, compact
//! form); this [`CryptoProvider`] replaces its RustCrypto backend, which
//! re-parses the private key on every signature and is several times slower
//! than openssl on the same keys (see `docs/PERFORMANCE.md`). openssl is
//! linked anyway for xmlsec, so our tokens use one crypto stack.
//!
//! Signing is limited to what the gateway mints: RS256, ES256, EdDSA
//! (Ed25519). Verification also covers the asymmetric algorithms an upstream
//! OpenID provider may be allowed to use (RS384/512, PS256/384/512, ES384),
//! because the upstream connector verifies ID tokens through the same
//! process-wide provider. Everything else, HMAC above all, is refused with an
//! error: our own tokens never reach a verifier for an algorithm other than
//! their key's (`jwt::verify` lets the key, not the header, decide).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, Once};

/// The provider; install it with [`install`].
pub static OPENSSL_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_component_from_private_key,
        compute_digest,
    },
};

/// RSA moduli outside this range are refused: below it is forgeable, above
/// it only costs us (a verifier does the work an attacker chose).
const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// Makes [`OPENSSL_PROVIDER`] jsonwebtoken's process default. Idempotent
/// and cheap after the first call, so every path that reaches jsonwebtoken
/// can call it first. If something installed another provider earlier (only
/// possible before the first call here), that one stays and we log it.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if OPENSSL_PROVIDER.install_default().is_err() {
            tracing::warn!(
                reason = "tokens.crypto_provider_preinstalled",
                "jsonwebtoken already had a crypto provider; the openssl one was not installed"
            );
        }
    });
}

fn ossl(e: openssl::error::ErrorStack) -> signature::Error {
    signature::Error::from_source(e)
}

/// Parsed keys by [`cache_id`]. jsonwebtoken asks for a new signer or
/// verifier per token and hands over key bytes, and with OpenSSL 3 parsing
/// is the dominant cost: a PKCS#8 decode is ~0.4 ms, more than an Ed25519 or
/// P-256 signature, and a fresh RSA key pays its blinding and Montgomery
/// setup on first use (measured, `docs/PERFORMANCE.md`). A gateway uses a
/// handful of keys (active/next/retired, upstream JWKS), so the bound is
/// small; when full the cache is simply emptied.
const CACHE_ENTRIES: usize = 32;
type KeyCache<T> = LazyLock<Mutex<HashMap<[u8; 32], T>>>;
static SIGNING_KEYS: KeyCache<SigningKey> = LazyLock::new(Mutex::default);
static VERIFYING_KEYS: KeyCache<VerifyingKey> = LazyLock::new(Mutex::default);

/// SHA-256 over the algorithm and the length-prefixed key parts: an
/// identical id means identical key material for the same algorithm.
fn cache_id(alg: Algorithm, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(format!("{alg:?}").as_bytes());
    for part in parts {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finish()
}

/// The cached key for `id`, or `parse`'s result (cached if it succeeded).
/// Failures are not cached, and a poisoned lock only costs the cache.
fn cached<T: Clone>(cache: &Mutex<HashMap<[u8; 32], T>>, id: [u8; 32], parse: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(hit) = cache.lock().ok().and_then(|m| m.get(&id).cloned()) {
        return Ok(hit);
    }
    let value = parse()?;
    if let Ok(mut m) = cache.lock() {
        if m.len() >= CACHE_ENTRIES {
            m.clear();
        }
        m.insert(id, value.clone());
    }
    Ok(value)
}

/// openssl key handles are reference-counted: cloning one out of the cache
/// is cheap, and openssl allows concurrent signing with one key.
#[derive(Clone)]
enum SigningKey {
    Rs256(PKey<Private>),
    Es256(EcKey<Private>),
    EdDsa(PKey<Private>),
}

struct OpensslSigner {
    alg: Algorithm,
    key: SigningKey,
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    signable(*alg, key)?;
    let id = cache_id(*alg, &[key.as_bytes()]);
    let signing = cached(&SIGNING_KEYS, id, || parse_signing(*alg, key.as_bytes()))?;
    Ok(Box::new(OpensslSigner {
        alg: *alg,
        key: signing,
    }))
}

/// Whether we sign with `alg` at all, and `key` is of its family.
fn signable(alg: Algorithm, key: &EncodingKey) -> Result<()> {
    match (alg, key.family()) {
        (Algorithm::RS256, AlgorithmFamily::Rsa)
        | (Algorithm::ES256, AlgorithmFamily::Ec)
        | (Algorithm::EdDSA, AlgorithmFamily::Ed) => Ok(()),
        (Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA, _) => Err(ErrorKind::InvalidKeyFormat.into()),
        _ => Err(ErrorKind::UnsupportedAlgorithm.into()),
    }
}

/// One signing key parsed once, for a holder that signs with it many times
/// (the loaded keyset's active key): the same openssl signer that
/// [`OPENSSL_PROVIDER`] hands jsonwebtoken, without looking it up by a hash
/// of the key bytes on every signature.
pub(crate) struct KeySigner(OpensslSigner);

impl KeySigner {
    /// A signer for `alg` from a key already parsed (the keyset's stored
    /// PEM), with the checks the provider's signer factory makes on DER: the
    /// key's type matches `alg`, an RSA modulus within range, the P-256
    /// curve, Ed25519.
    pub(crate) fn from_key(alg: Algorithm, key: &PKey<Private>) -> Result<Self> {
        let key = match alg {
            Algorithm::RS256 => {
                let rsa = key.rsa().map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
                checked_rsa(rsa)?
            }
            Algorithm::ES256 => checked_ec(key.ec_key().map_err(|_| ErrorKind::InvalidEcdsaKey)?)?,
            Algorithm::EdDSA => checked_ed(key.clone())?,
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        };
        Ok(Self(OpensslSigner { alg, key }))
    }

    /// The JWS signature of `msg` (RFC 7515 §5.1 step 5: raw, not encoded).
    pub(crate) fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        signature::Signer::try_sign(&self.0, msg)
    }
}

/// `alg` and the key's family were matched by the caller.
fn parse_signing(alg: Algorithm, bytes: &[u8]) -> Result<SigningKey> {
    match alg {
        // jsonwebtoken hands RSA private keys around as PKCS#1 DER.
        Algorithm::RS256 => {
            checked_rsa(Rsa::private_key_from_der(bytes).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?)
        }
        Algorithm::ES256 => checked_ec(
            PKey::private_key_from_pkcs8(bytes)
                .and_then(|k| k.ec_key())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        ),
        Algorithm::EdDSA => checked_ed(PKey::private_key_from_pkcs8(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?),
        _ => Err(ErrorKind::UnsupportedAlgorithm.into()),
    }
}

fn checked_rsa(rsa: Rsa<Private>) -> Result<SigningKey> {
    if !RSA_BITS.contains(&rsa.n().num_bits().unsigned_abs()) {
        return Err(ErrorKind::InvalidRsaKey("modulus size out of range".into()).into());
    }
    Ok(SigningKey::Rs256(
        PKey::from_rsa(rsa).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
    ))
}

fn checked_ec(ec: EcKey<Private>) -> Result<SigningKey> {
    if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    Ok(SigningKey::Es256(ec))
}

fn checked_ed(key: PKey<Private>) -> Result<SigningKey> {
    if key.id() != Id::ED25519 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    Ok(SigningKey::EdDsa(key))
}

impl signature::Signer<Vec<u8>> for OpensslSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match &self.key {
            SigningKey::Rs256(k) => {
                let mut s = Signer::new(MessageDigest::sha256(), k).map_err(ossl)?;
                s.set_rsa_padding(Padding::PKCS1).map_err(ossl)?;
                s.sign_oneshot_to_vec(msg).map_err(ossl)
            }
            SigningKey::Es256(k) => {
                // The streaming hasher: OpenSSL 3's one-shot `SHA256()`
                // fetches the algorithm by name on every call.
                let mut h = openssl::sha::Sha256::new();
                h.update(msg);
                let digest = h.finish();
                let sig = EcdsaSig::sign(&digest, k).map_err(ossl)?;
                // JWS wants the fixed-width r‖s (RFC 7518 §3.4), not DER.
                let mut out = sig.r().to_vec_padded(32).map_err(ossl)?;
                out.extend(sig.s().to_vec_padded(32).map_err(ossl)?);
                Ok(out)
            }
            SigningKey::EdDsa(k) => {
                let mut s = Signer::new_without_digest(k).map_err(ossl)?;
                s.sign_oneshot_to_vec(msg).map_err(ossl)
            }
        }
    }
}

impl JwtSigner for OpensslSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[derive(Clone)]
enum VerifyingKey {
    Rsa {
        key: PKey<Public>,
        md: MessageDigest,
        pss: bool,
    },
    Ecdsa {
        key: EcKey<Public>,
        md: MessageDigest,
        half: usize,
    },
    Ed(PKey<Public>),
}

struct OpensslVerifier {
    alg: Algorithm,
    key: VerifyingKey,
}

fn rsa_public(key: &DecodingKey) -> Result<PKey<Public>> {
    let bad = |e: openssl::error::ErrorStack| ErrorKind::InvalidRsaKey(e.to_string());
    let rsa = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => Rsa::public_key_from_der_pkcs1(der).map_err(bad)?,
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            let n = BigNum::from_slice(n).map_err(bad)?;
            let e = BigNum::from_slice(e).map_err(bad)?;
            Rsa::from_public_components(n, e).map_err(bad)?
        }
    };
    if !RSA_BITS.contains(&rsa.n().num_bits().unsigned_abs()) {
        return Err(ErrorKind::InvalidRsaKey("modulus size out of range".into()).into());
    }
    Ok(PKey::from_rsa(rsa).map_err(bad)?)
}

/// `point` is the SEC1 uncompressed point jsonwebtoken builds from a JWK's
/// `x`/`y` (or takes from a PEM's SubjectPublicKeyInfo).
fn ec_public(key: &DecodingKey, curve: Nid) -> Result<EcKey<Public>> {
    let point = key.try_get_as_bytes()?;
    let group = EcGroup::from_curve_name(curve).map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let mut ctx = BigNumContext::new().map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let point = EcPoint::from_bytes(&group, point, &mut ctx).map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let ec = EcKey::from_public_key(&group, &point).map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    // Refuses the point at infinity and points off the curve.
    ec.check_key().map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    Ok(ec)
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let family = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => AlgorithmFamily::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let id = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => cache_id(*alg, &[b"der", bytes]),
        DecodingKeyKind::RsaModulusExponent { n, e } => cache_id(*alg, &[b"n,e", n, e]),
    };
    let verifying = cached(&VERIFYING_KEYS, id, || parse_verifying(*alg, key))?;
    Ok(Box::new(OpensslVerifier {
        alg: *alg,
        key: verifying,
    }))
}

/// `alg` and the key's family were matched by the caller.
fn parse_verifying(alg: Algorithm, key: &DecodingKey) -> Result<VerifyingKey> {
    let rsa = |md, pss| -> Result<VerifyingKey> {
        Ok(VerifyingKey::Rsa {
            key: rsa_public(key)?,
            md,
            pss,
        })
    };
    let ecdsa = |curve, md, half| -> Result<VerifyingKey> {
        Ok(VerifyingKey::Ecdsa {
            key: ec_public(key, curve)?,
            md,
            half,
        })
    };
    Ok(match alg {
        Algorithm::RS256 => rsa(MessageDigest::sha256(), false)?,
        Algorithm::RS384 => rsa(MessageDigest::sha384(), false)?,
        Algorithm::RS512 => rsa(MessageDigest::sha512(), false)?,
        Algorithm::PS256 => rsa(MessageDigest::sha256(), true)?,
        Algorithm::PS384 => rsa(MessageDigest::sha384(), true)?,
        Algorithm::PS512 => rsa(MessageDigest::sha512(), true)?,
        Algorithm::ES256 => ecdsa(Nid::X9_62_PRIME256V1, MessageDigest::sha256(), 32)?,
        Algorithm::ES384 => ecdsa(Nid::SECP384R1, MessageDigest::sha384(), 48)?,
        Algorithm::EdDSA => {
            let raw = key.try_get_as_bytes()?;
            if raw.len() != 32 {
                return Err(ErrorKind::InvalidEddsaKey.into());
            }
            VerifyingKey::Ed(PKey::public_key_from_raw_bytes(raw, Id::ED25519).map_err(|_| ErrorKind::InvalidEddsaKey)?)
        }
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    })
}

impl signature::Verifier<Vec<u8>> for OpensslVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let ok = match &self.key {
            VerifyingKey::Rsa { key, md, pss } => {
                let mut v = Verifier::new(*md, key).map_err(ossl)?;
                if *pss {
                    // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
                    v.set_rsa_padding(Padding::PKCS1_PSS).map_err(ossl)?;
                    v.set_rsa_mgf1_md(*md).map_err(ossl)?;
                    v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).map_err(ossl)?;
                } else {
                    v.set_rsa_padding(Padding::PKCS1).map_err(ossl)?;
                }
                v.verify_oneshot(sig, msg).map_err(ossl)?
            }
            VerifyingKey::Ecdsa { key, md, half } => {
                if sig.len() != half.saturating_mul(2) {
                    return Err(signature::Error::new());
                }
                let (r, s) = sig.split_at(*half);
                let sig = BigNum::from_slice(r)
                    .and_then(|r| BigNum::from_slice(s).map(|s| (r, s)))
                    .and_then(|(r, s)| EcdsaSig::from_private_components(r, s))
                    .map_err(ossl)?;
                let digest = openssl::hash::hash(*md, msg).map_err(ossl)?;
                sig.verify(&digest, key).map_err(ossl)?
            }
            VerifyingKey::Ed(key) => {
                let mut v = Verifier::new_without_digest(key).map_err(ossl)?;
                v.verify_oneshot(sig, msg).map_err(ossl)?
            }
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for OpensslVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let rsa = Rsa::private_key_from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok((rsa.n().to_vec(), rsa.e().to_vec()))
}

fn rsa_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let rsa = Rsa::public_key_from_der_pkcs1(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok((rsa.n().to_vec(), rsa.e().to_vec()))
}

fn ec_components_from_private_key(der: &[u8], alg: Algorithm) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (curve, nid, width) = match alg {
        Algorithm::ES256 => (EllipticCurve::P256, Nid::X9_62_PRIME256V1, 32),
        Algorithm::ES384 => (EllipticCurve::P384, Nid::SECP384R1, 48),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let ec = PKey::private_key_from_pkcs8(der)
        .and_then(|k| k.ec_key())
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    if ec.group().curve_name() != Some(nid) {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let (x, y) = affine_coordinates(&ec, width).map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    Ok((curve, x, y))
}

/// The public point's `x` and `y`, each left-padded to the curve's width as
/// a JWK wants them (RFC 7518 §6.2.1.2).
fn affine_coordinates(
    ec: &EcKey<Private>,
    width: i32,
) -> std::result::Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
    let mut ctx = BigNumContext::new()?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    ec.public_key()
        .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
    Ok((x.to_vec_padded(width)?, y.to_vec_padded(width)?))
}

fn ed_component_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = PKey::private_key_from_pkcs8(der).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    if key.id() != Id::ED25519 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    Ok(key.raw_public_key().map_err(|_| ErrorKind::InvalidEddsaKey)?)
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let md = match hash {
        ThumbprintHash::SHA256 => MessageDigest::sha256(),
        ThumbprintHash::SHA384 => MessageDigest::sha384(),
        ThumbprintHash::SHA512 => MessageDigest::sha512(),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    let digest = openssl::hash::hash(md, data).map_err(|e| ErrorKind::Provider(e.to_string()))?;
    Ok(digest.to_vec())
}
