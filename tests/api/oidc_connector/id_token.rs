//! ID token checks: claims, signatures, algorithms and key rotation.

use super::*;

/// A P-256 key as the IdP would publish it, and a token signer for it.
fn es256_key(kid: &str) -> (Value, EncodingKey) {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    let mut bn = BigNumContext::new().unwrap();
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut bn)
        .unwrap();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
        "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap()),
    });
    let pem = PKey::from_ec_key(ec).unwrap().private_key_to_pem_pkcs8().unwrap();
    (jwk, EncodingKey::from_ec_pem(&pem).unwrap())
}

#[tokio::test]
async fn wrong_nonce_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["nonce"] = json!("another-nonce");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.nonce_mismatch");

    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims.as_object_mut().unwrap().remove("nonce");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.nonce_mismatch");
}

#[tokio::test]
async fn wrong_issuer_in_id_token_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["iss"] = json!(format!("{}/", f.idp.issuer)); // differs by one byte
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.issuer_mismatch");
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!("someone-else");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.audience_mismatch");
}

#[tokio::test]
async fn azp_must_be_us_with_several_audiences() {
    let f = Fixture::new().await;
    // Several audiences and no azp.
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!([CLIENT_ID, "other-client"]);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.azp_mismatch");
    // Several audiences, azp another client.
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!([CLIENT_ID, "other-client"]);
    claims["azp"] = json!("other-client");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.azp_mismatch");
    // Several audiences with azp = us is accepted.
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!([CLIENT_ID, "other-client"]);
    claims["azp"] = json!(CLIENT_ID);
    f.finish_claims(&login, claims).await.unwrap();
}

#[tokio::test]
async fn expired_id_token_is_rejected_by_the_injected_clock() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login); // exp = now + 300
                                   // Just inside the skew still passes...
    f.clock.advance(Duration::seconds(300 + SKEW));
    f.finish_claims(&login, claims.clone()).await.unwrap();
    // ...one second later it does not.
    let login2 = f.begin().await;
    let mut claims2 = claims;
    claims2["nonce"] = json!(login2.nonce);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(code(f.finish_claims(&login2, claims2).await), "oidc.expired");
}

#[tokio::test]
async fn id_token_issued_in_the_future_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["iat"] = json!(f.clock.unix() + SKEW + 5);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.issued_in_future");
}

#[tokio::test]
async fn bad_signature_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    // Signed by a key the IdP never published, under the published kid.
    let forger = IdpKey::generate("k1");
    let token = forger.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.bad_signature"
    );
    // A valid token with one payload byte changed.
    let login = f.begin().await;
    let token = f.key.sign(&f.claims(&login));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = f.claims(&login);
    claims["sub"] = json!("admin");
    parts[1] = b64(serde_json::to_vec(&claims).unwrap().as_slice());
    let tampered = parts.join(".");
    assert_eq!(
        code(f.finish(&login, tampered, f.callback(&login)).await),
        "oidc.bad_signature"
    );
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let f = Fixture::new().await;
    let header = b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    // The unsigned JWT of RFC 7519 §6 (empty signature) is refused for its algorithm.
    let login = f.begin().await;
    let payload = b64(&serde_json::to_vec(&f.claims(&login)).unwrap());
    let token = format!("{header}.{payload}.");
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.alg_not_allowed"
    );
    // Without the trailing dot it is not even a JWS.
    let login = f.begin().await;
    let payload = b64(&serde_json::to_vec(&f.claims(&login)).unwrap());
    let token = format!("{header}.{payload}");
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.id_token_malformed"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    // The classic key-confusion forgery: HMAC keyed with the IdP's public key
    // (as PEM and as the JWK's modulus bytes).
    for secret in [
        f.key.public_pem.clone(),
        f.key.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        // Signed with RustCrypto's provider directly: the gateway installed
        // its openssl provider process-wide, and that one refuses HMAC.
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&f.claims(&login)).unwrap())
        );
        let signer = (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.signer_factory)(
            &Algorithm::HS256,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        let token = format!("{input}.{}", b64(&signer.try_sign(input.as_bytes()).unwrap()));
        // Each attempt spends the code at the IdP.
        f.idp.issue_code("code-123", &login.url);
        assert_eq!(
            code(f.finish(&login, token, f.callback(&login)).await),
            "oidc.alg_not_allowed"
        );
    }
}

#[tokio::test]
async fn key_rotation_at_the_idp_refetches_the_jwks_once() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    // Discovery (at setup and at the connector's first use) brings the keys along.
    let base = f.idp.with(|s| s.jwks_hits);

    // The IdP rotates to k2; our cache still holds only k1.
    let k2 = IdpKey::generate("k2");
    f.idp.with(|s| s.published = vec![k2.clone()]);
    let login = f.begin().await;
    let token = k2.sign(&f.claims(&login));
    f.finish(&login, token, f.callback(&login)).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), base + 1);

    // k2 is cached now: no further fetch.
    let login = f.begin().await;
    let token = k2.sign(&f.claims(&login));
    f.finish(&login, token, f.callback(&login)).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), base + 1);
}

#[tokio::test]
async fn unknown_kid_flood_refetches_at_most_once_per_window() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    let base = f.idp.with(|s| s.jwks_hits);

    let stranger = IdpKey::generate("unknown-kid");
    for i in 0..10 {
        let login = f.begin().await;
        let token = stranger.sign(&f.claims(&login));
        // The first looked and did not find it; the others were not looked
        // for (a transient failure: whether the key exists is not known).
        let expected = if i == 0 {
            "oidc.unknown_kid"
        } else {
            "oidc.jwks_refetch_limited"
        };
        assert_eq!(code(f.finish(&login, token, f.callback(&login)).await), expected);
    }
    assert_eq!(f.idp.with(|s| s.jwks_hits), base + 1, "one refetch for the whole flood");

    // After the window another refetch is allowed.
    f.clock
        .advance(Duration::seconds(oidc::provider::JWKS_REFETCH_WINDOW_SECS as i64 + 1));
    let login = f.begin().await;
    let token = stranger.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.unknown_kid"
    );
    assert_eq!(f.idp.with(|s| s.jwks_hits), base + 2);
}

/// Each replica learns of a rotation itself: replicas do not share their
/// caches, so the refetch one replica makes does not use up the others'
/// (which would refuse the IdP's new key until the window ends, and end
/// the sessions whose upstream refresh brought it).
#[tokio::test]
async fn a_rotation_one_replica_saw_first_is_learned_by_another_within_the_window() {
    let f = Fixture::new().await;
    let ConnectionKind::Oidc(cfg) = &f.connection.kind else {
        panic!("an OIDC connection")
    };
    let other = OidcConnector::new(&f.connection, cfg.clone(), f.ctx.clone()).unwrap();
    let finish_on_other = |login: Login, token: String| {
        let (f, other) = (&f, &other);
        async move {
            f.idp.with(|s| s.id_token = Some(token));
            other.complete(Some(&login.pending), &f.callback(&login)).await
        }
    };
    let login = f.begin().await;
    f.finish_claims(&login, f.claims(&login)).await.unwrap();
    let login = f.begin().await;
    let token = f.key.sign(&f.claims(&login));
    finish_on_other(login, token).await.unwrap();
    let base = f.idp.with(|s| s.jwks_hits);

    let k2 = IdpKey::generate("k2");
    f.idp.with(|s| s.published = vec![k2.clone()]);
    let login = f.begin().await;
    f.finish(&login, k2.sign(&f.claims(&login)), f.callback(&login))
        .await
        .unwrap();
    let login = f.begin().await;
    let token = k2.sign(&f.claims(&login));
    finish_on_other(login, token).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), base + 2, "one refetch on each replica");
}

/// The discovery document and keys are trusted for an hour. Past it, one
/// sign-in fetches them again while the others in flight carry on with the
/// copy the connector has: the IdP sees one discovery and one JWKS request,
/// not one of each per sign-in.
#[tokio::test]
async fn expired_discovery_is_fetched_once_for_sign_ins_in_flight() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    let hits = || f.idp.with(|s| (s.discovery_hits, s.jwks_hits));
    let base = hits();

    f.clock.advance(Duration::seconds(3601));
    let begun = tokio::join!(f.begin(), f.begin(), f.begin(), f.begin(), f.begin(), f.begin());
    assert_eq!(hits(), (base.0 + 1, base.1 + 1), "one fetch of each for six sign-ins");
    drop(begun);
    // The copy fetched is the one used from now on.
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(hits(), (base.0 + 1, base.1 + 1));
}

/// The same for the keys an ID token is checked with: one caller fetches
/// the expired set, and the discovery that brings it along is not followed
/// by a second JWKS request.
#[tokio::test]
async fn expired_keys_are_fetched_once_for_concurrent_checks() {
    let f = Fixture::new().await;
    let provider = oidc::provider::Provider::new(f.idp.issuer.clone());
    let hits = || f.idp.with(|s| (s.discovery_hits, s.jwks_hits));
    let base = hits();
    provider.keys(&f.ctx, false).await.unwrap();
    assert_eq!(hits(), (base.0 + 1, base.1 + 1), "discovery brings the keys");

    f.clock.advance(Duration::seconds(3601));
    let keys = tokio::join!(
        provider.keys(&f.ctx, false),
        provider.keys(&f.ctx, false),
        provider.keys(&f.ctx, false),
        provider.keys(&f.ctx, false),
        provider.keys(&f.ctx, false),
    );
    for k in [keys.0, keys.1, keys.2, keys.3, keys.4] {
        assert_eq!(k.unwrap().keys().len(), 1);
    }
    assert_eq!(hits(), (base.0 + 2, base.1 + 2), "one fetch of each for five callers");
    provider.keys(&f.ctx, false).await.unwrap();
    assert_eq!(hits(), (base.0 + 2, base.1 + 2), "fresh again");
}

#[tokio::test]
async fn es256_tokens_verify_and_the_allow_list_is_enforced() {
    let f = Fixture::new().await;
    let (jwk, signer) = es256_key("ec1");
    let mut ec_key = IdpKey::generate("unused");
    ec_key.jwk = jwk;
    f.idp.with(|s| s.published.push(ec_key));
    let es256 = |claims: &Value| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec1".into());
        jsonwebtoken::encode(&header, claims, &signer).unwrap()
    };
    // Accepted under the default allow-list.
    let login = f.begin().await;
    let token = es256(&f.claims(&login));
    let id = f.finish(&login, token, f.callback(&login)).await.unwrap();
    assert_eq!(id.subject, "user-1");

    // A connection that allows only ES256 refuses the IdP's RS256 tokens.
    let mut cfg = match &f.connection.kind {
        ConnectionKind::Oidc(cfg) => cfg.clone(),
        _ => unreachable!(),
    };
    cfg.allowed_algorithms = vec!["ES256".into()];
    let strict = OidcConnector::new(&f.connection, cfg, f.ctx.clone()).unwrap();
    let begun = strict
        .begin(BeginRequest {
            login_id: "strict-1",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begun.redirect else {
        panic!()
    };
    let mut claims = f.claims(&login);
    claims["nonce"] = json!(query(&url, "nonce").unwrap());
    let mut params = CallbackParams::default();
    params.query.insert("state".into(), "strict-1".into());
    params.query.insert("code".into(), "c".into());
    f.idp.issue_code("c", &url);
    f.idp.with(|s| s.id_token = Some(f.key.sign(&claims)));
    let r = strict.complete(Some(&begun.state), &params).await;
    assert_eq!(code(r), "oidc.alg_not_allowed");
    // The same claims signed with ES256 pass the strict connection.
    f.idp.issue_code("c", &url);
    f.idp.with(|s| s.id_token = Some(es256(&claims)));
    strict.complete(Some(&begun.state), &params).await.unwrap();
}

/// A key the IdP publishes for encryption (`use: enc`) never verifies an ID
/// token, even one it signed under the token's own `kid`: only signing keys
/// (or keys of no stated use) are looked at.
#[tokio::test]
async fn a_key_published_for_encryption_never_verifies_an_id_token() {
    let mut key = IdpKey::generate("k1");
    key.jwk["use"] = json!("enc");
    let f = Fixture::with_key(key).await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.unknown_kid");
}

/// Numbers no clock can reach (`exp`, `iat`, `auth_time` beyond what a time
/// holds, either sign; `nbf` at the end of time) are refused with a reason,
/// never a panic or a wrap-around that reads as valid; a missing `exp` is
/// malformed.
#[tokio::test]
async fn out_of_range_numeric_dates_are_refused_not_wrapped() {
    let f = Fixture::new().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("exp", json!(i64::MAX), "oidc.id_token_malformed"),
        ("exp", json!(u64::MAX), "oidc.id_token_malformed"),
        ("exp", json!(1e300), "oidc.id_token_malformed"),
        ("exp", json!(i64::MIN), "oidc.id_token_malformed"),
        ("exp", json!(-1), "oidc.expired"),
        ("iat", json!(i64::MAX), "oidc.id_token_malformed"),
        ("iat", json!(-1e300), "oidc.id_token_malformed"),
        ("nbf", json!(i64::MAX), "oidc.not_yet_valid"),
        ("nbf", json!(1e300), "oidc.not_yet_valid"),
        ("auth_time", json!(i64::MAX), "oidc.id_token_malformed"),
        ("auth_time", json!(u64::MAX), "oidc.id_token_malformed"),
        ("auth_time", json!(-1e300), "oidc.id_token_malformed"),
    ];
    for (name, value, expected) in cases {
        let login = f.begin().await;
        let mut claims = f.claims(&login);
        claims[name] = value.clone();
        assert_eq!(
            code(f.finish_claims(&login, claims).await),
            expected,
            "{name} = {value}"
        );
    }
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.id_token_malformed");
}

/// OIDC Core §3.1.3.8: an `at_hash` in the ID token must be the access
/// token's that came in the same token response (a swapped access token,
/// or a broken IdP, otherwise). The right one passes, an absent one passes
/// (optional in the code flow); another token's, the right token hashed
/// with another hash than the `alg`'s, and one that is not a string are
/// refused as `oidc.at_hash_mismatch`, in the words of every unverifiable
/// answer.
#[tokio::test]
async fn an_at_hash_must_match_the_access_token_of_its_token_response() {
    use sha2::Sha512;
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["at_hash"] = json!(at_hash::<Sha256>(ACCESS_TOKEN));
    f.finish_claims(&login, claims).await.unwrap();

    let login = f.begin().await;
    let claims = f.claims(&login);
    assert!(claims.get("at_hash").is_none());
    f.finish_claims(&login, claims).await.unwrap();

    let unverifiable = {
        let login = f.begin().await;
        let mut claims = f.claims(&login);
        claims["exp"] = json!("soon");
        f.finish_claims(&login, claims).await.unwrap_err().message
    };
    for wrong in [
        json!(at_hash::<Sha256>("another-access-token")),
        json!(at_hash::<Sha512>(ACCESS_TOKEN)),
        json!(at_hash::<Sha256>(ACCESS_TOKEN).to_lowercase()),
        json!(""),
        json!(12345),
        json!([at_hash::<Sha256>(ACCESS_TOKEN)]),
        Value::Null,
    ] {
        let login = f.begin().await;
        let mut claims = f.claims(&login);
        claims["at_hash"] = wrong.clone();
        let err = f.finish_claims(&login, claims).await.unwrap_err();
        assert_eq!(err.code, "oidc.at_hash_mismatch", "{wrong}: {err:?}");
        assert!(!err.internal, "{wrong}");
        assert_eq!(err.message, unverifiable, "{wrong}");
    }

    // The IdP issues another access token: the ID token's at_hash of the
    // usual one no longer fits.
    f.idp.with(|s| s.access_token = "access-token-2".into());
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["at_hash"] = json!(at_hash::<Sha256>(ACCESS_TOKEN));
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.at_hash_mismatch");
}

/// An Ed25519 key as the IdP would publish it, and a token signer for it.
fn ed25519_key(kid: &str) -> (Value, EncodingKey) {
    use openssl::pkey::PKey;
    let key = PKey::generate_ed25519().unwrap();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
        "x": b64(&key.raw_public_key().unwrap()),
    });
    let pem = key.private_key_to_pem_pkcs8().unwrap();
    (jwk, EncodingKey::from_ed_pem(&pem).unwrap())
}

/// The hash of `at_hash` is the one the ID token's `alg` names: SHA-384
/// for RS384, SHA-512 for RS512 and for EdDSA (Ed25519); the same token
/// hashed with SHA-256 does not fit them.
#[tokio::test]
async fn the_at_hash_hash_follows_the_id_tokens_algorithm() {
    use sha2::{Sha384, Sha512};
    let mut key = IdpKey::generate("k1");
    key.jwk.as_object_mut().unwrap().remove("alg");
    let f = Fixture::with_key(key.clone()).await;
    let (ed_jwk, ed_signer) = ed25519_key("ed1");
    let mut ed_key = IdpKey::generate("unused");
    ed_key.jwk = ed_jwk;
    f.idp.with(|s| s.published.push(ed_key));
    let eddsa = |claims: &Value| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed1".into());
        jsonwebtoken::encode(&header, claims, &ed_signer).unwrap()
    };
    let sign = |alg: Algorithm, claims: &Value| match alg {
        Algorithm::EdDSA => eddsa(claims),
        rsa => key.sign_with(rsa, claims),
    };
    let cases = [
        (Algorithm::RS384, at_hash::<Sha384>(ACCESS_TOKEN)),
        (Algorithm::RS512, at_hash::<Sha512>(ACCESS_TOKEN)),
        (Algorithm::EdDSA, at_hash::<Sha512>(ACCESS_TOKEN)),
    ];
    for (alg, right) in cases {
        let login = f.begin().await;
        let mut claims = f.claims(&login);
        claims["at_hash"] = json!(right);
        let token = sign(alg, &claims);
        f.finish(&login, token, f.callback(&login))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));

        let login = f.begin().await;
        let mut claims = f.claims(&login);
        claims["at_hash"] = json!(at_hash::<Sha256>(ACCESS_TOKEN));
        let token = sign(alg, &claims);
        assert_eq!(
            code(f.finish(&login, token, f.callback(&login)).await),
            "oidc.at_hash_mismatch",
            "{alg:?}"
        );
    }
}

/// Fractional NumericDates are read the way that grants less: `nbf` rounds
/// up (never valid earlier than said), so half a second beyond the skew is
/// not yet valid where a truncated one passed; half a second within it
/// passes.
#[tokio::test]
async fn a_fractional_nbf_rounds_up() {
    let f = Fixture::new().await;
    let now = f.clock.unix() as f64;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["nbf"] = json!(now + SKEW as f64 + 0.5);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.not_yet_valid");

    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["nbf"] = json!(now + SKEW as f64 - 0.5);
    f.finish_claims(&login, claims).await.unwrap();
}

/// `auth_time` rounds down (never fresher than said).
#[tokio::test]
async fn a_fractional_auth_time_rounds_down() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["auth_time"] = json!(f.clock.unix() as f64 - 42.5);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.auth_time, Some(f.clock.unix() - 43));
}

/// `exp` counts to the instant it names, its fraction included, and no
/// longer than the skew after it: on a clock with fractions, a token used
/// to live up to a second past exp + skew. `iat` is compared to the
/// instant as well.
#[tokio::test]
async fn a_fractional_exp_counts_to_the_instant_it_names() {
    let f = Fixture::new().await;
    let now = f.clock.unix();
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["exp"] = json!(now as f64 + 300.5);
    // exp + skew exactly: still valid.
    f.clock.advance(Duration::milliseconds((300 + SKEW) * 1000 + 500));
    f.finish_claims(&login, claims.clone()).await.unwrap();
    // A millisecond later: expired.
    f.clock.advance(Duration::milliseconds(1));
    let login = f.begin().await;
    claims["nonce"] = json!(login.nonce);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.expired");

    // A whole exp, half a second past it plus the skew.
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login); // exp = now + 300
    f.clock.advance(Duration::milliseconds((300 + SKEW) * 1000 + 500));
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.expired");

    // iat half a second beyond now plus the skew.
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["iat"] = json!(f.clock.unix() as f64 + SKEW as f64 + 0.5);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.issued_in_future");
}
