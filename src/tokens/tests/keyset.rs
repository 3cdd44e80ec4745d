//! Keyset life cycle: signing, JWKS, rotation, replicas, key hygiene.

use super::*;
use crate::store::Store;

#[tokio::test]
async fn sign_and_verify_round_trip_for_each_algorithm() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let claims = env.claims(300);
        let token = m.sign("JWT", &claims).await.unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, alg.jsonwebtoken(), "{alg:?}");
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(env.stored().await.active.kid.as_str()));
        let back: Claims = m.verify(&token, "JWT", ISS).await.unwrap();
        assert_eq!(back, claims, "{alg:?}");

        let at = m.sign("at+jwt", &claims).await.unwrap();
        let back: Claims = m.verify(&at, "at+jwt", ISS).await.unwrap();
        assert_eq!(back, claims);
        // RFC 9068 also allows the full media type.
        let _: Claims = m.verify(&at, "application/at+jwt", ISS).await.unwrap();
    }
}

#[tokio::test]
async fn token_verifies_with_only_its_jwk_from_jwks() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let token = m.sign("JWT", &env.claims(300)).await.unwrap();
        let jwks = m.jwks().await.unwrap();
        let entry = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid_of(&token).as_str())
            .unwrap()
            .clone();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(entry.clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg.jsonwebtoken());
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap();
        assert_eq!(data.claims.sub, "user-1");
        // kid is the RFC 7638 thumbprint, as computed by jsonwebtoken itself.
        let thumb = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
        assert_eq!(entry["kid"], thumb.as_str(), "{alg:?}");
        assert_eq!(entry["use"], "sig");
        assert_eq!(entry["alg"], alg.as_str());
        let members: Vec<&str> = match alg {
            SigningAlgorithm::Rs256 => vec!["n", "e"],
            SigningAlgorithm::Es256 => vec!["x", "y"],
            SigningAlgorithm::EdDsa => vec!["x"],
        };
        for m in members {
            assert!(entry[m].is_string(), "{alg:?} lacks {m}");
        }
        let (kty, crv) = match alg {
            SigningAlgorithm::Rs256 => ("RSA", Value::Null),
            SigningAlgorithm::Es256 => ("EC", json!("P-256")),
            SigningAlgorithm::EdDsa => ("OKP", json!("Ed25519")),
        };
        assert_eq!(entry["kty"], kty);
        assert_eq!(entry["crv"], crv);
        // And a different published key (next) does not verify it.
        let other = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] != entry["kid"])
            .unwrap();
        let other: jsonwebtoken::jwk::Jwk = serde_json::from_value(other.clone()).unwrap();
        let other = jsonwebtoken::DecodingKey::from_jwk(&other).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&token, &other, &v).is_err());
    }
}

#[tokio::test]
async fn jwks_holds_public_members_only() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let jwks = m.jwks().await.unwrap();
        for k in jwks["keys"].as_array().unwrap() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(k.get(private).is_none(), "{alg:?} publishes {private}");
            }
        }
        assert!(!jwks.to_string().contains("PRIVATE"));
    }
}

#[tokio::test]
async fn next_key_is_published_before_it_signs_and_signs_after_rotate() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    let ks = env.stored().await;
    let before = m.sign("JWT", &env.claims(300)).await.unwrap();
    assert_eq!(kid_of(&before), ks.active.kid);
    let kids = jwks_kids(&m.jwks().await.unwrap());
    assert!(kids.contains(&ks.next.kid), "next must be in JWKS");
    assert!(kids.contains(&ks.active.kid));
    assert_ne!(ks.next.kid, ks.active.kid);

    env.advance(60);
    m.rotate().await.unwrap();
    let after = m.sign("JWT", &env.claims(300)).await.unwrap();
    assert_eq!(kid_of(&after), ks.next.kid, "former next signs");
    let now = env.stored().await;
    assert_eq!(now.active.kid, ks.next.kid);
    assert_eq!(now.retired.len(), 1);
    assert_eq!(now.retired[0].kid, ks.active.kid);
    let kids = jwks_kids(&m.jwks().await.unwrap());
    assert_eq!(kids.len(), 3);
    assert!(kids.contains(&now.next.kid));
}

#[tokio::test]
async fn retired_key_verifies_until_grace_ends_then_unknown_kid() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    let old_kid = env.stored().await.active.kid;
    // Longest allowed lifetime: the grace period must cover all of it.
    let token = m.sign("JWT", &env.claims(3600)).await.unwrap();
    m.rotate().await.unwrap();
    let _: Claims = m.verify(&token, "JWT", ISS).await.unwrap();

    env.advance(3600 - 1);
    let _: Claims = m.verify(&token, "JWT", ISS).await.unwrap();
    assert!(jwks_kids(&m.jwks().await.unwrap()).contains(&old_kid));

    // Past retired_at + two keyset caches + max_token_lifetime (+ leeway):
    // gone everywhere.
    env.advance(1 + 2 * 30 + LEEWAY_SECS + 1);
    assert!(!jwks_kids(&m.jwks().await.unwrap()).contains(&old_kid));
    assert_eq!(reason(m.verify(&token, "JWT", ISS).await), "token.unknown_kid");

    // And the next rotation drops it from the stored keyset too.
    m.rotate().await.unwrap();
    let ks = env.stored().await;
    assert!(ks.retired.iter().all(|k| k.kid != old_kid));
    assert_eq!(ks.retired.len(), 1);
}

#[tokio::test]
async fn two_managers_on_one_store_agree() {
    let env = Env::new();
    let a = env.manager(SigningAlgorithm::Rs256).await;
    let b = env.manager(SigningAlgorithm::Rs256).await;
    assert_eq!(a.jwks().await.unwrap(), b.jwks().await.unwrap());
    let t = a.sign("JWT", &env.claims(300)).await.unwrap();
    let _: Claims = b.verify(&t, "JWT", ISS).await.unwrap();

    a.rotate().await.unwrap();
    // b still runs on its cache, but already knows a's new active key,
    // because it was published as `next`.
    let t2 = a.sign("JWT", &env.claims(300)).await.unwrap();
    let _: Claims = b.verify(&t2, "JWT", ISS).await.unwrap();
    assert_ne!(a.jwks().await.unwrap(), b.jwks().await.unwrap());
    env.advance(31);
    assert_eq!(a.jwks().await.unwrap(), b.jwks().await.unwrap());
    let t3 = b.sign("JWT", &env.claims(300)).await.unwrap();
    assert_eq!(kid_of(&t3), kid_of(&t2));
}

/// A replica that has not re-read the keyset since another one rotated
/// keeps signing with the retired key for up to its cache time: those
/// tokens verify for their whole lifetime too.
#[tokio::test]
async fn a_token_another_replica_signs_just_before_it_notices_a_rotation_verifies_for_its_whole_life() {
    let env = Env::new();
    let a = env.manager(SigningAlgorithm::Es256).await;
    let b = env.manager(SigningAlgorithm::Es256).await;
    let old_kid = env.stored().await.active.kid;
    a.rotate().await.unwrap();
    env.advance(29);
    let late = b.sign("JWT", &env.claims(3600)).await.unwrap();
    assert_eq!(kid_of(&late), old_kid, "b still signs with the key a retired");
    env.advance(3600 - 1);
    let _: Claims = a.verify(&late, "JWT", ISS).await.unwrap();
    assert!(jwks_kids(&a.jwks().await.unwrap()).contains(&old_kid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inits_create_one_keyset() {
    for _ in 0..3 {
        let env = Env::new();
        let (a, b) = tokio::join!(
            env.manager(SigningAlgorithm::Rs256),
            env.manager(SigningAlgorithm::Rs256)
        );
        let ks = env.stored().await;
        let jwks = a.jwks().await.unwrap();
        assert_eq!(jwks, b.jwks().await.unwrap());
        assert_eq!(jwks_kids(&jwks), vec![ks.active.kid.clone(), ks.next.kid]);
        let ta = a.sign("JWT", &env.claims(60)).await.unwrap();
        let tb = b.sign("JWT", &env.claims(60)).await.unwrap();
        assert_eq!(kid_of(&ta), ks.active.kid);
        assert_eq!(kid_of(&tb), ks.active.kid);
    }
}

#[tokio::test]
async fn rotation_is_refused_while_another_replica_holds_the_lock() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::EdDsa).await;
    let lock = Key::global("keys", "signing-rotation-lock");
    assert!(env
        .store
        .put_if_absent(&lock, b"other", Some(Duration::from_secs(30)))
        .await
        .unwrap());
    let before = env.stored().await.active.kid;
    assert!(matches!(m.rotate().await, Err(TokenError::RotationInProgress)));
    env.advance(2 * 24 * 3600);
    assert!(env.store.get(&lock).await.unwrap().is_none(), "TTL elapsed");
    assert!(env
        .store
        .put_if_absent(&lock, b"other", Some(Duration::from_secs(30)))
        .await
        .unwrap());
    // Due, but locked: no rotation.
    assert!(!m.rotate_if_due().await.unwrap());
    assert_eq!(env.stored().await.active.kid, before);
    // Our failed attempts left the other holder's lock alone.
    assert_eq!(env.store.get(&lock).await.unwrap().unwrap(), b"other");
    env.advance(31);
    assert!(m.rotate_if_due().await.unwrap());
    assert_ne!(env.stored().await.active.kid, before);
    assert!(env.store.get(&lock).await.unwrap().is_none(), "lock released");
}

#[tokio::test]
async fn rotate_if_due_rotates_once_across_replicas() {
    let env = Env::new();
    let a = env.manager(SigningAlgorithm::Es256).await;
    let b = env.manager(SigningAlgorithm::Es256).await;
    assert!(!a.rotate_if_due().await.unwrap());
    env.advance(24 * 3600 - 1);
    assert!(!a.rotate_if_due().await.unwrap());
    env.advance(1);
    assert!(a.rotate_if_due().await.unwrap());
    // b's cache says "due", the store under the lock says "just rotated".
    assert!(!b.rotate_if_due().await.unwrap());
    assert_eq!(env.stored().await.retired.len(), 1);
}

/// A rotation interval past the end of the calendar never comes due: the
/// hourly check answers "not due" instead of panicking on `since + interval`.
#[tokio::test]
async fn a_rotation_interval_past_the_calendar_never_comes_due() {
    let env = Env::new();
    for secs in [u64::MAX, 300_000 * 365 * 86_400] {
        let mut cfg = config(SigningAlgorithm::Es256);
        cfg.rotation_interval = Some(Duration::from_secs(secs));
        let m = KeyManager::init(env.store.clone(), Arc::new(env.clock.clone()), cfg)
            .await
            .unwrap();
        assert!(!m.rotate_if_due().await.unwrap(), "{secs}");
    }
}

#[tokio::test]
async fn sign_refuses_tokens_that_would_outlive_their_key() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    assert!(m.sign("JWT", &env.claims(3600)).await.is_ok());
    assert!(matches!(
        m.sign("JWT", &env.claims(3601)).await,
        Err(TokenError::Claims(_))
    ));
    assert!(matches!(
        m.sign("JWT", &json!({"iss": ISS})).await,
        Err(TokenError::Claims(_))
    ));
}

/// A claim set is signed exactly as serialized, once: the payload is those
/// bytes, names escaped in JSON included, and the signature covers them.
#[tokio::test]
async fn sign_signs_the_claims_as_serialized() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let claims = json!({"iss": ISS, "exp": env.clock.unix() + 60, "we\"ird": "\u{e9}t\u{e9}", "n": 1.5});
        let token = m.sign("JWT", &claims).await.unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        assert_eq!(bytes, serde_json::to_vec(&claims).unwrap(), "{alg:?}");
        let back: Value = m.verify(&token, "JWT", ISS).await.unwrap();
        assert_eq!(back, claims, "{alg:?}");
    }
}

/// The headers encoded when the key was loaded (`JWT`, `at+jwt`) and one
/// encoded per token (any other `typ`) all name the type asked for, the
/// key's algorithm and its `kid`, and verify as that type only.
#[tokio::test]
async fn each_token_type_gets_its_own_header() {
    for alg in ALL {
        let env = Env::new();
        let m = env.manager(alg).await;
        let kid = m.signer().await.unwrap().kid().to_owned();
        let claims = json!({"iss": ISS, "exp": env.clock.unix() + 60});
        for typ in ["JWT", "at+jwt", "logout+jwt"] {
            let token = m.sign(typ, &claims).await.unwrap();
            let header = token.split('.').next().unwrap();
            let header: Value =
                serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
                    .unwrap();
            assert_eq!(
                header,
                json!({"typ": typ, "alg": alg.as_str(), "kid": kid}),
                "{alg:?} {typ}"
            );
            let back: Value = m.verify(&token, typ, ISS).await.unwrap();
            assert_eq!(back, claims, "{alg:?} {typ}");
            let other = if typ == "JWT" { "at+jwt" } else { "JWT" };
            assert!(
                m.verify::<Value>(&token, other, ISS).await.is_err(),
                "{alg:?} {typ} as {other}"
            );
        }
    }
}

/// A claim named twice would be read differently by different verifiers
/// (first or last wins); such a claim set is refused, never signed.
#[tokio::test]
async fn sign_refuses_a_claim_named_twice_or_claims_that_are_no_object() {
    #[derive(Serialize)]
    struct Twice {
        exp: i64,
        sub: &'static str,
        #[serde(flatten)]
        extra: serde_json::Map<String, Value>,
    }
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    let exp = env.clock.unix() + 60;
    let mut extra = serde_json::Map::new();
    extra.insert("tenant".into(), json!("acme"));
    assert!(m
        .sign(
            "JWT",
            &Twice {
                exp,
                sub: "u",
                extra: extra.clone()
            }
        )
        .await
        .is_ok());
    for name in ["sub", "exp"] {
        let mut extra = extra.clone();
        extra.insert(name.into(), json!(exp));
        match m.sign("JWT", &Twice { exp, sub: "u", extra }).await {
            Err(TokenError::Claims(msg)) => assert!(msg.contains("appears twice"), "{name}: {msg}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    for claims in [json!("exp"), json!([{"exp": exp}]), json!(null), json!({"exp": "soon"})] {
        assert!(
            matches!(m.sign("JWT", &claims).await, Err(TokenError::Claims(_))),
            "{claims}"
        );
    }
}

#[tokio::test]
async fn debug_output_never_shows_private_keys() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Rs256).await;
    m.rotate().await.unwrap();
    let ks = env.stored().await;
    let pem = ks.active.private_pem.expose().to_owned();
    assert!(pem.contains("PRIVATE KEY"), "the test needs a real PEM");
    let body: String = pem.lines().nth(1).unwrap().to_owned();
    let signer = m.signer().await.unwrap();
    for dump in [
        format!("{ks:?}"),
        format!("{:?}", ks.active),
        format!("{m:?}"),
        format!("{signer:?}"),
        format!("{:?}", m.jwks().await.unwrap()),
    ] {
        assert!(!dump.contains("PRIVATE KEY"), "{dump}");
        assert!(!dump.contains(&body), "{dump}");
    }
    assert!(format!("{ks:?}").contains("[redacted]"));
}

#[tokio::test]
async fn tampered_stored_keyset_fails_closed() {
    let env = Env::new();
    let _m = env.manager(SigningAlgorithm::Es256).await;
    let mut ks = env.stored().await;
    let other = env.stored().await.next;
    // A keyset claiming the next key's kid for the active private key.
    ks.active.kid = other.kid;
    env.store
        .put_json(&Key::global("keys", "signing"), &ks, None)
        .await
        .unwrap();
    let r = KeyManager::init(
        env.store.clone(),
        Arc::new(env.clock.clone()),
        config(SigningAlgorithm::Es256),
    )
    .await;
    assert!(matches!(r, Err(TokenError::Key(_))));
}

#[tokio::test]
async fn kid_is_deterministic_per_key() {
    let env = Env::new();
    let a = env.manager(SigningAlgorithm::EdDsa).await;
    let first = a.jwks().await.unwrap();
    env.advance(31);
    // Re-read and re-derived from the stored PEM: same kids.
    assert_eq!(a.jwks().await.unwrap(), first);
}

/// A store whose reads can be held: each `get` first waits for `gate` to
/// open, and the first `barrier` gets also wait for each other after reading
/// (with two, two `init`s are forced to both miss and both try to create).
struct RacingStore {
    inner: MemoryStore,
    barrier: Option<(usize, tokio::sync::Barrier)>,
    gate: tokio::sync::watch::Receiver<bool>,
    gets: std::sync::atomic::AtomicUsize,
    creations: std::sync::Mutex<Vec<bool>>,
}

impl RacingStore {
    /// A store whose gate is open, and the sender that closes or opens it.
    fn new(clock: SharedClock, barrier: usize) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (open, gate) = tokio::sync::watch::channel(true);
        let store = Self {
            inner: MemoryStore::new(clock),
            barrier: (barrier > 0).then(|| (barrier, tokio::sync::Barrier::new(barrier))),
            gate,
            gets: Default::default(),
            creations: Default::default(),
        };
        (store, open)
    }

    fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl crate::store::StoreLayer for RacingStore {
    // `exists`, `fingerprint` and the chained and guarded rate limits are
    // made of this store's own calls (`Store`'s default bodies).
    const FORWARD_DEFAULTED: bool = false;

    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        let n = self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.gate.clone().wait_for(|open| *open).await;
        let r = self.inner.get(key).await;
        if let Some((_, b)) = self.barrier.as_ref().filter(|(parties, _)| n < *parties) {
            b.wait().await;
        }
        r
    }
    async fn put_if_absent(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, crate::store::StoreError> {
        let won = self.inner.put_if_absent(key, value, ttl).await?;
        self.creations.lock().unwrap().push(won);
        Ok(won)
    }
    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_race_loser_adopts_the_winners_keyset() {
    let clock = clock();
    let shared: SharedClock = Arc::new(clock.clone());
    let racing = Arc::new(RacingStore::new(shared.clone(), 2).0);
    let store: SharedStore = racing.clone();
    let (a, b) = tokio::join!(
        KeyManager::init(store.clone(), shared.clone(), config(SigningAlgorithm::Es256)),
        KeyManager::init(store.clone(), shared.clone(), config(SigningAlgorithm::Es256)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut creations = racing.creations.lock().unwrap().clone();
    creations.sort();
    assert_eq!(creations, vec![false, true], "both tried, one won");
    assert_eq!(a.jwks().await.unwrap(), b.jwks().await.unwrap());
    let t = b
        .sign(
            "JWT",
            &Env {
                store: store.clone(),
                clock: clock.clone(),
            }
            .claims(60),
        )
        .await
        .unwrap();
    let _: Claims = a.verify(&t, "JWT", ISS).await.unwrap();
}

#[tokio::test]
async fn signing_algorithms_follow_the_keys_through_an_algorithm_change() {
    let env = Env::new();
    let rsa = env.manager(SigningAlgorithm::Rs256).await;
    assert_eq!(rsa.signing_algorithms().await.unwrap(), vec![SigningAlgorithm::Rs256]);
    // Reconfigured to EdDSA: the existing next (RSA) becomes active, the new
    // next is Ed25519; one more rotation and EdDSA signs.
    let ed = env.manager(SigningAlgorithm::EdDsa).await;
    ed.rotate().await.unwrap();
    assert_eq!(
        ed.signing_algorithms().await.unwrap(),
        vec![SigningAlgorithm::Rs256, SigningAlgorithm::EdDsa]
    );
    let t = ed.sign("JWT", &env.claims(60)).await.unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().alg,
        jsonwebtoken::Algorithm::RS256
    );
    ed.rotate().await.unwrap();
    let t = ed.sign("JWT", &env.claims(60)).await.unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    let _: Claims = ed.verify(&t, "JWT", ISS).await.unwrap();
    env.advance(31);
    let _: Claims = rsa.verify(&t, "JWT", ISS).await.unwrap();
}

#[tokio::test]
async fn manager_is_shareable_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    send_sync(&m);
    let c = env.claims(60);
    send(&m.sign("JWT", &c));
    send(&m.verify::<Claims>("x", "JWT", ISS));
    send(&m.jwks());
    send(&m.rotate_if_due());
    send(&m.signer());
}

/// The serialised JWKS (`/jwks`) is built once and then shared, and follows
/// every change of the published set: a rotation, and a retired key's end of
/// grace even when the keyset itself was not re-read.
#[tokio::test]
async fn published_jwks_bytes_follow_rotation_and_the_end_of_grace() {
    let env = Env::new();
    // A keyset cache longer than the grace period: the end of grace must be
    // seen without a re-read of the keyset.
    let m = KeyManager::init(
        env.store.clone(),
        Arc::new(env.clock.clone()),
        KeyConfig {
            cache_for: Duration::from_secs(100_000),
            ..config(SigningAlgorithm::Es256)
        },
    )
    .await
    .unwrap();
    let kids_of =
        |doc: &crate::tokens::PublishedDoc| jwks_kids(&serde_json::from_slice::<serde_json::Value>(&doc.body).unwrap());
    let first = m.jwks_published().await.unwrap();
    let again = m.jwks_published().await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "built once, then shared");
    assert_eq!(kids_of(&first), jwks_kids(&m.jwks().await.unwrap()));
    assert!(first.etag.starts_with('"') && first.etag.ends_with('"') && first.etag.len() > 2);

    let old_kid = env.stored().await.active.kid;
    m.rotate().await.unwrap();
    let rotated = m.jwks_published().await.unwrap();
    assert_ne!(rotated.etag, first.etag, "a rotation changes the document and its ETag");
    assert_eq!(kids_of(&rotated).len(), 3);
    assert!(kids_of(&rotated).contains(&old_kid));

    // Past the retired key's grace (two keyset caches, the longest token
    // and the leeway): gone from the bytes too.
    env.advance(2 * 100_000 + 3600 + LEEWAY_SECS + 2);
    let later = m.jwks_published().await.unwrap();
    assert!(!kids_of(&later).contains(&old_kid), "{:?}", kids_of(&later));
    assert_eq!(kids_of(&later), jwks_kids(&m.jwks().await.unwrap()));
}

/// Under load every request in flight when the cached keyset went stale used
/// to re-read and re-parse it (about 0.6 ms of OpenSSL per key each), which
/// stalled a busy worker every `cache_for`. Now one caller re-reads while the
/// others keep signing with the cached keys; a lone caller still re-reads
/// before it signs.
#[tokio::test]
async fn a_stale_keyset_is_reread_by_one_caller_while_the_others_use_the_cached_one() {
    let clock = clock();
    let shared: SharedClock = Arc::new(clock.clone());
    let (racing, open) = RacingStore::new(shared.clone(), 0);
    let racing = Arc::new(racing);
    let store: SharedStore = racing.clone();
    let m = KeyManager::init(store.clone(), shared.clone(), config(SigningAlgorithm::Es256))
        .await
        .unwrap();
    let env = Env { store, clock };
    let before = racing.gets();
    let kid = kid_of(&m.sign("JWT", &env.claims(60)).await.unwrap());
    assert_eq!(racing.gets(), before, "a fresh cache reads nothing");

    // Stale, and the store slow to answer: the first caller waits for it,
    // the fifteen after it sign at once with the cached key.
    env.advance(31);
    open.send_replace(false);
    let claims = env.claims(60);
    let first = m.sign("JWT", &claims);
    tokio::pin!(first);
    assert!(
        poll_once(first.as_mut()).await.is_none(),
        "the re-reader waits for the store"
    );
    for _ in 0..15 {
        let other = m.sign("JWT", &claims);
        tokio::pin!(other);
        let signed = poll_once(other.as_mut())
            .await
            .expect("signed without waiting for the store");
        assert_eq!(kid_of(&signed.unwrap()), kid);
    }
    assert_eq!(racing.gets(), before + 1, "one read of the keyset for sixteen callers");
    open.send_replace(true);
    assert_eq!(kid_of(&first.await.unwrap()), kid);
    assert_eq!(racing.gets(), before + 1);

    // Read again: the next caller finds the cache fresh.
    m.sign("JWT", &env.claims(60)).await.unwrap();
    assert_eq!(racing.gets(), before + 1);

    // A stale cache is used meanwhile for at most one more `cache_for`:
    // past that, a caller reads the keyset itself even while another does.
    env.advance(61);
    open.send_replace(false);
    let first = m.sign("JWT", &claims);
    tokio::pin!(first);
    assert!(poll_once(first.as_mut()).await.is_none());
    let second = m.sign("JWT", &claims);
    tokio::pin!(second);
    assert!(poll_once(second.as_mut()).await.is_none(), "too stale to use meanwhile");
    assert_eq!(racing.gets(), before + 3);
    open.send_replace(true);
    first.await.unwrap();
    second.await.unwrap();
}

/// Polls `f` once: its output if it finished, `None` if it waits.
async fn poll_once<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// A re-read that finds the document it parsed last keeps that parse (and
/// the JWKS serialised from it) instead of decoding every key again; one
/// that finds another replica's rotation parses the new keyset.
#[tokio::test]
async fn a_reread_of_an_unchanged_keyset_keeps_its_parsed_keys() {
    let env = Env::new();
    let a = env.manager(SigningAlgorithm::Es256).await;
    let b = env.manager(SigningAlgorithm::Es256).await;
    let doc = b.jwks_published().await.unwrap();
    env.advance(31);
    let again = b.jwks_published().await.unwrap();
    assert!(
        Arc::ptr_eq(&doc, &again),
        "same keyset re-read: same parse, same document"
    );

    a.rotate().await.unwrap();
    let new_kid = env.stored().await.active.kid;
    env.advance(31);
    let rotated = b.jwks_published().await.unwrap();
    assert_ne!(rotated.etag, doc.etag, "the rotation is seen");
    let token = b.sign("JWT", &env.claims(60)).await.unwrap();
    assert_eq!(kid_of(&token), new_kid);
    let _: Claims = a.verify(&token, "JWT", ISS).await.unwrap();
}

/// The comparison covers the keys themselves, not only their names: a
/// re-read that finds another private key under the same `kid` parses it,
/// and fails closed on the mismatch instead of keeping the earlier parse.
#[tokio::test]
async fn a_reread_keyset_with_a_replaced_key_under_the_same_kid_fails_closed() {
    let env = Env::new();
    let m = env.manager(SigningAlgorithm::Es256).await;
    m.sign("JWT", &env.claims(60)).await.unwrap();
    let mut ks = env.stored().await;
    ks.active.private_pem = ks.next.private_pem.clone();
    env.store
        .put_json(&Key::global("keys", "signing"), &ks, None)
        .await
        .unwrap();
    env.advance(31);
    assert!(matches!(m.sign("JWT", &env.claims(60)).await, Err(TokenError::Key(_))));
    assert!(matches!(m.sign("JWT", &env.claims(60)).await, Err(TokenError::Key(_))));
}
