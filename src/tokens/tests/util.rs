//! Hash and random helpers.

use super::*;

#[test]
fn sha256_base64url_matches_rfc7636_example() {
    assert_eq!(
        sha256_base64url(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn at_hash_matches_oidc_example_and_uses_sha512_for_eddsa() {
    let at = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
    // OIDC Core appendix A example value.
    assert_eq!(at_hash(at, SigningAlgorithm::Rs256), "77QmUPtjPfzWtF2AnpK9RQ");
    assert_eq!(at_hash(at, SigningAlgorithm::Es256), "77QmUPtjPfzWtF2AnpK9RQ");
    // Left 32 bytes of SHA-512; the same value as Python hashlib and as the
    // npm peer oidc-token-hash 5 (`generate(t, 'EdDSA', 'Ed25519')`).
    assert_eq!(
        at_hash(at, SigningAlgorithm::EdDsa),
        "q7nS86GgvvFaZkzALLWqJYaJIKw2wCDAVfCAsm5CrBM"
    );
}

#[test]
fn random_tokens_are_base64url_of_the_right_length_and_distinct() {
    let a = random_token(32);
    let b = random_token(32);
    assert_ne!(a, b);
    assert_eq!(a.len(), 43);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&a).unwrap();
    assert_eq!(raw.len(), 32);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
}

#[test]
fn algorithm_serde_names() {
    for (alg, name) in [
        (SigningAlgorithm::Rs256, "RS256"),
        (SigningAlgorithm::Es256, "ES256"),
        (SigningAlgorithm::EdDsa, "EdDSA"),
    ] {
        assert_eq!(serde_json::to_value(alg).unwrap(), name);
        assert_eq!(serde_json::from_value::<SigningAlgorithm>(json!(name)).unwrap(), alg);
        assert_eq!(SigningAlgorithm::from_jose(name), Some(alg));
    }
    assert_eq!(SigningAlgorithm::default(), SigningAlgorithm::Rs256);
    assert_eq!(SigningAlgorithm::from_jose("none"), None);
    assert_eq!(SigningAlgorithm::from_jose("rs256"), None);
}
