//! Every rejection, with its reason code.

use super::*;

#[tokio::test]
async fn alg_none_is_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let kid = env.stored().await.active.kid;
    let payload = serde_json::to_value(env.claims(300)).unwrap();
    for sig in [&b""[..], b"x"] {
        let t = forge(&json!({"alg": "none", "kid": kid, "typ": "JWT"}), &payload, sig);
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.alg_mismatch");
    }
    let t = format!(
        "{}.{}.",
        b64j(&json!({"alg": "none", "kid": kid, "typ": "JWT"})),
        b64j(&payload)
    );
    assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.alg_mismatch");
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let jwks = m.jwks().await.unwrap();
    let active = env.stored().await.active.kid;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == active.as_str())
        .unwrap();
    // The classic confusion: the attacker HMACs with public key material.
    for secret in [jwk.to_string(), jwk["n"].as_str().unwrap().to_owned()] {
        // Signed by hand: the installed openssl provider refuses to make HMACs.
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": active});
        let claims = serde_json::to_value(env.claims(300)).unwrap();
        let input = format!("{}.{}", b64j(&header), b64j(&claims));
        let pkey = openssl::pkey::PKey::hmac(secret.as_bytes()).unwrap();
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
        let t = format!(
            "{input}.{}",
            b64(&signer.sign_oneshot_to_vec(input.as_bytes()).unwrap())
        );
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.alg_mismatch");
    }
}

#[tokio::test]
async fn header_alg_of_another_family_is_rejected() {
    let env = Env::new();
    let rsa = env.manager(SigningAlgorithm::Rs256).await;
    let other = Env::new();
    let ec = other.manager(SigningAlgorithm::Es256).await;
    let ec_token = ec.sign("JWT", &other.claims(300)).await.unwrap();
    // An ES256 token relabelled with the RSA key's kid.
    let mut parts = ec_token.split('.');
    let (_, p, s) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let kid = env.stored().await.active.kid;
    let h = b64j(&json!({"alg": "ES256", "kid": kid, "typ": "JWT"}));
    let t = format!("{h}.{p}.{s}");
    assert_eq!(reason(rsa.verify(&t, "JWT", ISS).await), "token.alg_mismatch");
    // And an RS256 header on the EC key's kid.
    let rsa_token = rsa.sign("JWT", &env.claims(300)).await.unwrap();
    let mut parts = rsa_token.split('.');
    let (_, p, s) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let kid = other.stored().await.active.kid;
    let h = b64j(&json!({"alg": "RS256", "kid": kid, "typ": "JWT"}));
    let t = format!("{h}.{p}.{s}");
    assert_eq!(reason(ec.verify(&t, "JWT", ISS).await), "token.alg_mismatch");
}

#[tokio::test]
async fn tampered_payload_and_foreign_key_are_bad_signatures() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let token = m.sign("JWT", &env.claims(300)).await.unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut evil = env.claims(300);
        evil.sub = "admin".into();
        parts[1] = b64j(&serde_json::to_value(&evil).unwrap());
        let t = parts.join(".");
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.bad_signature");

        // Same alg and our kid, signed by a stranger's key.
        let stranger = Env::new().manager(alg).await;
        let foreign = stranger.sign("JWT", &env.claims(300)).await.unwrap();
        let mut fp: Vec<String> = foreign.split('.').map(str::to_owned).collect();
        fp[0] = token.split('.').next().unwrap().to_owned();
        let t = fp.join(".");
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.bad_signature");
    }
}

#[tokio::test]
async fn wrong_or_missing_typ_is_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::EdDsa).await;
    let id = m.sign("JWT", &env.claims(300)).await.unwrap();
    let at = m.sign("at+jwt", &env.claims(300)).await.unwrap();
    assert_eq!(reason(m.verify(&id, "at+jwt", ISS).await), "token.wrong_type");
    assert_eq!(reason(m.verify(&at, "JWT", ISS).await), "token.wrong_type");
    // No typ at all: refused, even though the signature is genuine.
    let ks = env.stored().await;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(ks.active.private_pem.expose().as_bytes()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.typ = None;
    h.kid = Some(ks.active.kid.clone());
    let t = jsonwebtoken::encode(&h, &env.claims(300), &key).unwrap();
    assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.wrong_type");
}

#[tokio::test]
async fn wrong_or_missing_issuer_is_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    let t = m.sign("JWT", &env.claims(300)).await.unwrap();
    assert_eq!(
        reason(m.verify(&t, "JWT", "https://evil.example.test").await),
        "token.wrong_issuer"
    );
    let t = m
        .sign("JWT", &json!({"sub": "u", "exp": env.clock.unix() + 60}))
        .await
        .unwrap();
    let r: Result<Value, _> = m.verify(&t, "JWT", ISS).await;
    assert_eq!(r.unwrap_err().reason().unwrap().code(), "token.wrong_issuer");
}

#[tokio::test]
async fn expiry_and_nbf_follow_the_injected_clock() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let t = m.sign("JWT", &env.claims(300)).await.unwrap();
    // 2001 is long past for the wall clock; accepted means the injected
    // clock, not jsonwebtoken's, decided.
    let _: Claims = m.verify(&t, "JWT", ISS).await.unwrap();
    env.advance(300 + LEEWAY_SECS - 1);
    let _: Claims = m.verify(&t, "JWT", ISS).await.unwrap();
    env.advance(1);
    assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.expired");

    let mut c = env.claims(300);
    c.nbf = Some(env.clock.unix() + 60);
    let t = m.sign("JWT", &c).await.unwrap();
    assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.not_yet_valid");
    env.advance(60);
    let _: Claims = m.verify(&t, "JWT", ISS).await.unwrap();

    // No exp at all is not a forever-token.
    let ks = env.stored().await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(ks.active.private_pem.expose().as_bytes()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(ks.active.kid.clone());
    let t = jsonwebtoken::encode(&h, &json!({"iss": ISS, "sub": "u"}), &key).unwrap();
    let r: Result<Value, _> = m.verify(&t, "JWT", ISS).await;
    assert_eq!(r.unwrap_err().reason().unwrap().code(), "token.malformed");
}

#[tokio::test]
async fn unknown_or_missing_kid_is_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let t = m.sign("JWT", &env.claims(300)).await.unwrap();
    let mut parts = t.split('.');
    let (_, p, s) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    for h in [
        json!({"alg": "RS256", "kid": "not-a-kid", "typ": "JWT"}),
        json!({"alg": "RS256", "typ": "JWT"}),
    ] {
        let t = format!("{}.{p}.{s}", b64j(&h));
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.unknown_kid");
    }
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    let good = m.sign("JWT", &env.claims(300)).await.unwrap();
    let kid = env.stored().await.active.kid;
    let crit = {
        let mut parts = good.split('.');
        let (_, p, s) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let h = b64j(&json!({"alg": "ES256", "kid": kid, "typ": "JWT", "crit": ["exp"]}));
        format!("{h}.{p}.{s}")
    };
    for t in [
        "".to_owned(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra.parts"),
        "!!!.e30.sig".to_owned(),
        format!("{}.e30.sig", b64(b"[1,2]")),
        crit,
    ] {
        assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.malformed", "{t}");
    }
    // Genuine signature, claims of the wrong shape for the caller.
    #[derive(Debug, Deserialize)]
    struct Needs {
        #[allow(dead_code)]
        nonce: String,
    }
    let r: Result<Needs, _> = m.verify(&good, "JWT", ISS).await;
    assert_eq!(r.unwrap_err().reason().unwrap().code(), "token.malformed");
}

#[tokio::test]
async fn id_token_hint_may_be_expired_but_must_be_genuine() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let t = m.sign("JWT", &env.claims(60)).await.unwrap();
    env.advance(600);
    assert_eq!(reason(m.verify(&t, "JWT", ISS).await), "token.expired");
    let c: Claims = m.verify_id_token_hint(&t, ISS).await.unwrap();
    assert_eq!(c.sub, "user-1");

    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mut evil = env.claims(60);
    evil.sub = "admin".into();
    parts[1] = b64j(&serde_json::to_value(&evil).unwrap());
    let r: Result<Claims, _> = m.verify_id_token_hint(&parts.join("."), ISS).await;
    assert_eq!(reason(r), "token.bad_signature");
    let r: Result<Claims, _> = m.verify_id_token_hint(&t, "https://evil.example.test").await;
    assert_eq!(reason(r), "token.wrong_issuer");
    let at = m.sign("at+jwt", &env.claims(60)).await.unwrap();
    let r: Result<Claims, _> = m.verify_id_token_hint(&at, ISS).await;
    assert_eq!(reason(r), "token.wrong_type");
}
