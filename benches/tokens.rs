//! JWT signing and verification per algorithm, through `KeyManager` (the
//! path every ID and access token takes): claims serialization, the cached
//! keyset lookup, the signature, and on verify the header, key, `typ`,
//! `iss`, `exp` and `nbf` checks.
//!
//! `openssl_reference/*` signs and verifies the same signing input with
//! openssl directly (already linked for xmlsec) and keys of the same kind:
//! the floor the `jwt_*` path (jsonwebtoken with our openssl provider) adds
//! its JSON, base64, key lookup and claim checks to.

use chrono::TimeZone;
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::store::memory::MemoryStore;
use portcullis::tokens::{KeyConfig, KeyManager, SigningAlgorithm};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const ISS: &str = "https://sso.example.test";

/// The shape of an RFC 9068 access token, so the payload size is realistic.
#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    jti: String,
    client_id: String,
    scope: String,
    tenant: String,
    auth_time: i64,
    sid: String,
}

fn bench_tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: SharedClock = Arc::new(ManualClock::at(
        chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
    ));
    let now = clock.unix();
    let claims = Claims {
        iss: ISS.into(),
        sub: "u_3q2-7wJ1cZ0Jq4m0z9xk3A".into(),
        aud: "billing".into(),
        exp: now + 600,
        iat: now,
        jti: "Jx1k0m2rQ8yW4t6uV9aB3c".into(),
        client_id: "billing".into(),
        scope: "openid email profile".into(),
        tenant: "acme".into(),
        auth_time: now - 30,
        sid: "s_4fJ0n2kq8cR7yT1wZ5bX9g".into(),
    };
    let mut sign = c.benchmark_group("jwt_sign");
    let mut tokens = Vec::new();
    let mut managers = Vec::new();
    for (name, alg) in [
        ("RS256", SigningAlgorithm::Rs256),
        ("ES256", SigningAlgorithm::Es256),
        ("EdDSA", SigningAlgorithm::EdDsa),
    ] {
        let store = Arc::new(MemoryStore::new(clock.clone()));
        let config = KeyConfig {
            algorithm: alg,
            // The keyset cache outlives the run: the store is not read per token.
            cache_for: Duration::from_secs(3600),
            ..KeyConfig::default()
        };
        let m = rt.block_on(KeyManager::init(store, clock.clone(), config)).unwrap();
        sign.bench_function(name, |b| b.iter(|| rt.block_on(m.sign("at+jwt", &claims)).unwrap()));
        tokens.push((name, rt.block_on(m.sign("at+jwt", &claims)).unwrap()));
        managers.push(m);
    }
    sign.finish();
    let mut verify = c.benchmark_group("jwt_verify");
    for ((name, token), m) in tokens.iter().zip(&managers) {
        verify.bench_function(*name, |b| {
            b.iter(|| rt.block_on(m.verify::<Claims>(token, "at+jwt", ISS)).unwrap())
        });
    }
    verify.finish();

    // The first token's header.payload is the signing input of every JWT here.
    let input = tokens[0].1.rsplit_once('.').unwrap().0.as_bytes().to_vec();
    let rsa = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let ec = openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let sha256 = openssl::hash::MessageDigest::sha256();
    let mut reference = c.benchmark_group("openssl_reference");
    for (name, key) in [("RS256", &rsa), ("ES256", &ec)] {
        let sign_once = || {
            let mut s = openssl::sign::Signer::new(sha256, key).unwrap();
            s.sign_oneshot_to_vec(&input).unwrap()
        };
        let sig = sign_once();
        reference.bench_function(format!("sign_{name}"), |b| b.iter(sign_once));
        reference.bench_function(format!("verify_{name}"), |b| {
            b.iter(|| {
                let mut v = openssl::sign::Verifier::new(sha256, key).unwrap();
                assert!(v.verify_oneshot(&sig, &input).unwrap());
            })
        });
    }
    reference.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench_tokens
}
criterion_main!(benches);
