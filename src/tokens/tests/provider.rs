//! The openssl CryptoProvider against RustCrypto's (jsonwebtoken's own
//! provider, an independent implementation): each signs what the other
//! verifies, so the wire encodings — PKCS#1 v1.5, PSS, ECDSA r‖s, Ed25519 —
//! are proven, not assumed.

use super::super::openssl_provider::{install, KeySigner, OPENSSL_PROVIDER};
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

const MSG: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL3Nzby5leGFtcGxlLnRlc3QifQ";

struct Pair {
    enc: EncodingKey,
    dec: DecodingKey,
}

fn rsa_pair(bits: u32) -> Pair {
    let rsa = Rsa::generate(bits).unwrap();
    Pair {
        enc: EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap()),
        dec: DecodingKey::from_rsa_raw_components(&rsa.n().to_vec(), &rsa.e().to_vec()),
    }
}

fn ec_pair(nid: Nid, width: i32) -> Pair {
    let group = EcGroup::from_curve_name(nid).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    let mut ctx = BigNumContext::new().unwrap();
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let pkey = PKey::from_ec_key(ec).unwrap();
    Pair {
        enc: EncodingKey::from_ec_der(&pkey.private_key_to_pkcs8().unwrap()),
        dec: DecodingKey::from_ec_components(
            &b64(&x.to_vec_padded(width).unwrap()),
            &b64(&y.to_vec_padded(width).unwrap()),
        )
        .unwrap(),
    }
}

fn ed_pair() -> Pair {
    let key = PKey::generate_ed25519().unwrap();
    Pair {
        enc: EncodingKey::from_ed_der(&key.private_key_to_pkcs8().unwrap()),
        dec: DecodingKey::from_ed_components(&b64(&key.raw_public_key().unwrap())).unwrap(),
    }
}

fn pair(alg: Algorithm) -> Pair {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => rsa_pair(2048),
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => rsa_pair(2048),
        Algorithm::ES256 => ec_pair(Nid::X9_62_PRIME256V1, 32),
        Algorithm::ES384 => ec_pair(Nid::SECP384R1, 48),
        Algorithm::EdDSA => ed_pair(),
        other => panic!("no key for {other:?}"),
    }
}

fn sign(p: &CryptoProvider, alg: Algorithm, key: &EncodingKey, msg: &[u8]) -> Vec<u8> {
    let signer = (p.signer_factory)(&alg, key).unwrap();
    assert_eq!(signer.algorithm(), alg);
    signer.try_sign(msg).unwrap()
}

/// `Ok(true)` verified, `Ok(false)` refused the signature, `Err` refused the key or algorithm.
fn verify(p: &CryptoProvider, alg: Algorithm, key: &DecodingKey, msg: &[u8], sig: &[u8]) -> Result<bool, String> {
    let verifier = (p.verifier_factory)(&alg, key).map_err(|e| e.to_string())?;
    assert_eq!(verifier.algorithm(), alg);
    Ok(verifier.verify(msg, &sig.to_vec()).is_ok())
}

const OURS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

#[test]
fn openssl_signatures_verify_with_rustcrypto_and_fail_when_tampered() {
    for alg in OURS {
        let k = pair(alg);
        let sig = sign(&OPENSSL_PROVIDER, alg, &k.enc, MSG);
        assert_eq!(verify(&RUST_CRYPTO, alg, &k.dec, MSG, &sig), Ok(true), "{alg:?}");
        assert_eq!(verify(&OPENSSL_PROVIDER, alg, &k.dec, MSG, &sig), Ok(true), "{alg:?}");
        assert_eq!(verify(&RUST_CRYPTO, alg, &k.dec, b"other", &sig), Ok(false), "{alg:?}");
        assert_eq!(
            verify(&OPENSSL_PROVIDER, alg, &k.dec, b"other", &sig),
            Ok(false),
            "{alg:?}"
        );
    }
}

#[test]
fn rustcrypto_signatures_verify_with_openssl_including_upstream_algorithms() {
    // RS384..ES384 are never signed by us but may sign an upstream IdP's ID
    // token, which the connector verifies through the same provider.
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let k = pair(alg);
        let sig = sign(&RUST_CRYPTO, alg, &k.enc, MSG);
        assert_eq!(verify(&OPENSSL_PROVIDER, alg, &k.dec, MSG, &sig), Ok(true), "{alg:?}");
        let mut bad = sig.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&OPENSSL_PROVIDER, alg, &k.dec, MSG, &bad), Ok(false), "{alg:?}");
        // A signature by another key of the same kind does not verify.
        let other = sign(&RUST_CRYPTO, alg, &pair(alg).enc, MSG);
        assert_eq!(
            verify(&OPENSSL_PROVIDER, alg, &k.dec, MSG, &other),
            Ok(false),
            "{alg:?}"
        );
    }
}

#[test]
fn es256_signature_is_raw_r_s_and_der_or_wrong_lengths_are_refused() {
    let k = pair(Algorithm::ES256);
    let sig = sign(&OPENSSL_PROVIDER, Algorithm::ES256, &k.enc, MSG);
    assert_eq!(sig.len(), 64);
    let (r, s) = sig.split_at(32);
    let der = openssl::ecdsa::EcdsaSig::from_private_components(
        BigNum::from_slice(r).unwrap(),
        BigNum::from_slice(s).unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap();
    for wrong in [der, sig[..63].to_vec(), [sig.as_slice(), &[0]].concat(), Vec::new()] {
        assert_eq!(
            verify(&OPENSSL_PROVIDER, Algorithm::ES256, &k.dec, MSG, &wrong),
            Ok(false)
        );
    }
}

#[test]
fn hmac_none_and_algorithms_we_do_not_mint_are_refused_for_signing() {
    let secret = EncodingKey::from_secret(b"public key material");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        assert!((OPENSSL_PROVIDER.signer_factory)(&alg, &secret).is_err(), "{alg:?}");
        let d = DecodingKey::from_secret(b"public key material");
        assert!(verify(&OPENSSL_PROVIDER, alg, &d, MSG, b"x").is_err(), "{alg:?}");
    }
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES384,
    ] {
        let k = pair(alg);
        assert!((OPENSSL_PROVIDER.signer_factory)(&alg, &k.enc).is_err(), "{alg:?}");
    }
    // `none` is not even an algorithm to jsonwebtoken.
    assert!("none".parse::<Algorithm>().is_err());
}

#[test]
fn keys_of_the_wrong_kind_or_size_are_refused() {
    let rsa = pair(Algorithm::RS256);
    let ec = pair(Algorithm::ES256);
    let ed = pair(Algorithm::EdDSA);
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::RS256, &ec.enc).is_err());
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::ES256, &ed.enc).is_err());
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::EdDSA, &rsa.enc).is_err());
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::RS256, &ec.dec, MSG, b"x").is_err());
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::EdDSA, &rsa.dec, MSG, b"x").is_err());
    // A P-384 key under ES256, a P-256 point under ES384.
    let p384 = pair(Algorithm::ES384);
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::ES256, &p384.enc).is_err());
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::ES256, &p384.dec, MSG, b"x").is_err());
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::ES384, &ec.dec, MSG, b"x").is_err());
    // 1024-bit RSA: forgeable, refused both ways.
    let small = rsa_pair(1024);
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::RS256, &small.enc).is_err());
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::RS256, &small.dec, MSG, b"x").is_err());
    // A point not on the curve; garbage key bytes; a short Ed25519 key.
    let off = DecodingKey::from_ec_components(&b64(&[1; 32]), &b64(&[2; 32])).unwrap();
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::ES256, &off, MSG, b"x").is_err());
    assert!((OPENSSL_PROVIDER.signer_factory)(&Algorithm::RS256, &EncodingKey::from_rsa_der(b"junk")).is_err());
    let short = DecodingKey::from_ed_components(&b64(&[9; 31])).unwrap();
    assert!(verify(&OPENSSL_PROVIDER, Algorithm::EdDSA, &short, MSG, b"x").is_err());
}

/// The keyset's signer is built from the key parsed out of its PEM, not
/// from DER: the same refusals as the provider's factory, and what it signs
/// verifies with RustCrypto.
#[test]
fn a_key_signer_from_a_parsed_key_refuses_what_the_factory_refuses_and_signs_alike() {
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let p256 =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let p384 = PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap()).unwrap();
    let ed = PKey::generate_ed25519().unwrap();
    let small = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    for (alg, key) in [
        (Algorithm::RS256, &p256),
        (Algorithm::RS256, &small),
        (Algorithm::ES256, &rsa),
        (Algorithm::ES256, &p384),
        (Algorithm::ES256, &ed),
        (Algorithm::EdDSA, &rsa),
        (Algorithm::EdDSA, &p256),
        (Algorithm::ES384, &p384),
        (Algorithm::HS256, &rsa),
    ] {
        assert!(
            KeySigner::from_key(alg, key).is_err(),
            "{alg:?} with a {:?} key",
            key.id()
        );
    }
    for (alg, key, dec) in [
        (
            Algorithm::RS256,
            &rsa,
            DecodingKey::from_rsa_der(&rsa.rsa().unwrap().public_key_to_der_pkcs1().unwrap()),
        ),
        (
            Algorithm::ES256,
            &p256,
            DecodingKey::from_ec_pem(&p256.public_key_to_pem().unwrap()).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            &ed,
            DecodingKey::from_ed_der(&ed.raw_public_key().unwrap()),
        ),
    ] {
        let sig = KeySigner::from_key(alg, key).unwrap().sign(MSG).unwrap();
        assert_eq!(verify(&RUST_CRYPTO, alg, &dec, MSG, &sig), Ok(true), "{alg:?}");
        assert_eq!(verify(&RUST_CRYPTO, alg, &dec, b"other", &sig), Ok(false), "{alg:?}");
    }
}

#[test]
fn key_utils_agree_with_rustcrypto() {
    let (o, r) = (&OPENSSL_PROVIDER.key_utils, &RUST_CRYPTO.key_utils);
    let rsa = Rsa::generate(2048).unwrap();
    let der = rsa.private_key_to_der().unwrap();
    let (n, e) = (o.rsa_pub_components_from_private_key)(&der).unwrap();
    assert_eq!(
        (n.clone(), e.clone()),
        (r.rsa_pub_components_from_private_key)(&der).unwrap()
    );
    assert_eq!((n, e), (rsa.n().to_vec(), rsa.e().to_vec()));
    let pub_der = rsa.public_key_to_der_pkcs1().unwrap();
    assert_eq!(
        (o.rsa_pub_components_from_public_key)(&pub_der).unwrap(),
        (r.rsa_pub_components_from_public_key)(&pub_der).unwrap()
    );
    for (alg, nid) in [
        (Algorithm::ES256, Nid::X9_62_PRIME256V1),
        (Algorithm::ES384, Nid::SECP384R1),
    ] {
        // Enough keys that some coordinate has a leading zero byte to pad.
        for _ in 0..20 {
            let ec = EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap();
            let der = PKey::from_ec_key(ec).unwrap().private_key_to_pkcs8().unwrap();
            let ours = (o.ec_pub_components_from_private_key)(&der, alg).unwrap();
            let theirs = (r.ec_pub_components_from_private_key)(&der, alg).unwrap();
            assert_eq!((ours.1.clone(), ours.2.clone()), (theirs.1, theirs.2));
            assert_eq!(ours.0, theirs.0);
        }
    }
    let p256 = PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
        .unwrap()
        .private_key_to_pkcs8()
        .unwrap();
    assert!((o.ec_pub_components_from_private_key)(&p256, Algorithm::ES384).is_err());
    let ed = PKey::generate_ed25519().unwrap();
    let ed_der = ed.private_key_to_pkcs8().unwrap();
    assert_eq!(
        (o.ed_pub_components_from_private_key)(&ed_der, &EllipticCurve::Ed25519).unwrap(),
        ed.raw_public_key().unwrap()
    );
    assert!((o.ed_pub_components_from_private_key)(&ed_der, &EllipticCurve::P256).is_err());
    for h in [ThumbprintHash::SHA256, ThumbprintHash::SHA384, ThumbprintHash::SHA512] {
        assert_eq!(
            (o.compute_digest)(b"abc", h.clone()).unwrap(),
            (r.compute_digest)(b"abc", h).unwrap()
        );
    }
}

#[test]
fn the_key_cache_never_answers_with_another_keys_material() {
    // More keys than the cache holds, each used twice (parse, then hit) and
    // checked against its neighbour's public key.
    let keys: Vec<Pair> = (0..40).map(|_| ed_pair()).collect();
    for round in 0..2 {
        for (i, k) in keys.iter().enumerate() {
            let sig = sign(&OPENSSL_PROVIDER, Algorithm::EdDSA, &k.enc, MSG);
            assert_eq!(
                verify(&RUST_CRYPTO, Algorithm::EdDSA, &k.dec, MSG, &sig),
                Ok(true),
                "{round} {i}"
            );
            assert_eq!(verify(&OPENSSL_PROVIDER, Algorithm::EdDSA, &k.dec, MSG, &sig), Ok(true));
            let neighbour = &keys[(i + 1) % keys.len()];
            assert_eq!(
                verify(&OPENSSL_PROVIDER, Algorithm::EdDSA, &neighbour.dec, MSG, &sig),
                Ok(false)
            );
        }
    }
    // The same bytes under another algorithm are a separate entry, and refused.
    let ec = pair(Algorithm::ES256);
    sign(&OPENSSL_PROVIDER, Algorithm::ES256, &ec.enc, MSG);
    assert!(
        (OPENSSL_PROVIDER.signer_factory)(&Algorithm::EdDSA, &EncodingKey::from_ed_der(ec.enc.as_bytes())).is_err()
    );
}

#[test]
fn install_is_idempotent_and_makes_openssl_the_default() {
    install();
    install();
    // Through jsonwebtoken's public API: HS256 signing is refused, which the
    // RustCrypto default would have done.
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    let hs = jsonwebtoken::encode(&header, &serde_json::json!({}), &EncodingKey::from_secret(b"k"));
    assert!(hs.is_err());
    let k = pair(Algorithm::ES256);
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::ES256),
        &serde_json::json!({"a": 1}),
        &k.enc,
    )
    .unwrap();
    let (input, sig) = t.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(
        verify(&RUST_CRYPTO, Algorithm::ES256, &k.dec, input.as_bytes(), &sig),
        Ok(true)
    );
}

use base64::Engine;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
