//! The OIDC upstream connector against a scriptable fake IdP: one test per
//! rejection reason, plus the happy path, key rotation and setup.

mod fake_idp;

use base64::Engine;
use chrono::{Duration, TimeZone, Utc};
use fake_idp::{FakeIdp, IdpKey, CLIENT_ID, CLIENT_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::{Clock, ManualClock};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::secret::Secret;
use portcullis::store::memory::MemoryStore;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::oidc::{self, OidcConnector};
use portcullis::upstream::{
    BeginRequest, CallbackParams, Connection, ConnectionKind, Connector, Identity, UpstreamContext,
    UpstreamError, UpstreamRedirect,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

const SKEW: i64 = 60;

fn context(clock: &ManualClock, allow_private_networks: bool) -> UpstreamContext {
    UpstreamContext {
        http: OutboundHttp::new(OutboundConfig {
            allow_private_networks,
            timeout: std::time::Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
        })
        .unwrap(),
        clock: Arc::new(clock.clone()),
        store: Arc::new(MemoryStore::new(Arc::new(clock.clone()))),
        public_url: Url::parse("https://gw.example.com/").unwrap(),
        clock_skew_secs: SKEW,
    }
}

struct Fixture {
    idp: FakeIdp,
    key: IdpKey,
    clock: ManualClock,
    ctx: UpstreamContext,
    connection: Connection,
    connector: OidcConnector,
}

/// One login in flight.
struct Login {
    login_id: String,
    pending: Value,
    nonce: String,
    url: Url,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_key(IdpKey::generate("k1")).await
    }

    async fn with_key(key: IdpKey) -> Self {
        let idp = FakeIdp::start(key.clone()).await;
        let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
        let ctx = context(&clock, true);
        let cfg = oidc::setup(
            json!({
                "issuer": idp.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scopes": ["email", "profile"],
                "claim_mapping": {"groups": "groups"},
            }),
            &ctx,
        )
        .await
        .unwrap();
        let connection = Connection {
            id: ConnectionId::parse("corp-idp").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            revision: 1,
            kind: ConnectionKind::Oidc(cfg.clone()),
        };
        let connector = OidcConnector::new(&connection, cfg, ctx.clone()).unwrap();
        Self {
            idp,
            key,
            clock,
            ctx,
            connection,
            connector,
        }
    }

    async fn begin(&self) -> Login {
        let login_id = format!("login-{}", rand_suffix());
        let begun = self
            .connector
            .begin(BeginRequest {
                login_id: &login_id,
                force_authn: false,
                login_hint: None,
            })
            .await
            .unwrap();
        let UpstreamRedirect::Redirect(url) = begun.redirect else {
            panic!("expected a redirect")
        };
        let nonce = query(&url, "nonce").unwrap();
        Login {
            login_id,
            pending: begun.state,
            nonce,
            url,
        }
    }

    /// Standard valid claims for `login`.
    fn claims(&self, login: &Login) -> Value {
        let now = self.clock.unix();
        json!({
            "iss": self.idp.issuer,
            "aud": CLIENT_ID,
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "nonce": login.nonce,
            "email": "ada@acme.example",
            "email_verified": true,
            "name": "Ada Lovelace",
            "given_name": "Ada",
            "family_name": "Lovelace",
            "amr": ["pwd", "otp"],
        })
    }

    fn callback(&self, login: &Login) -> CallbackParams {
        let mut query = BTreeMap::new();
        query.insert("state".to_owned(), login.login_id.clone());
        query.insert("code".to_owned(), "code-123".to_owned());
        CallbackParams {
            query,
            form: BTreeMap::new(),
        }
    }

    /// Has the IdP return `id_token` and completes `login` with `params`.
    async fn finish(
        &self,
        login: &Login,
        id_token: String,
        params: CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        self.idp.with(|s| s.id_token = Some(id_token));
        self.connector.complete(Some(&login.pending), &params).await
    }

    /// Completes `login` with an ID token made of `claims`, signed normally.
    async fn finish_claims(&self, login: &Login, claims: Value) -> Result<Identity, UpstreamError> {
        let token = self.key.sign(&claims);
        self.finish(login, token, self.callback(login)).await
    }
}

fn rand_suffix() -> String {
    use rand::RngCore;
    format!("{:x}", rand::rng().next_u64())
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn code(result: Result<Identity, UpstreamError>) -> &'static str {
    match result {
        Ok(id) => panic!("expected a rejection, got {id:?}"),
        Err(e) => {
            assert!(!e.message.is_empty());
            e.code
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn happy_path_maps_identity_with_pkce_and_userinfo() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    // The authorization request.
    assert_eq!(query(&login.url, "response_type").as_deref(), Some("code"));
    assert_eq!(query(&login.url, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(query(&login.url, "state"), Some(login.login_id.clone()));
    assert_eq!(
        query(&login.url, "scope").as_deref(),
        Some("openid email profile")
    );
    assert_eq!(
        query(&login.url, "redirect_uri").as_deref(),
        Some("https://gw.example.com/oidc/acme/corp-idp/callback")
    );
    assert_eq!(
        oidc::redirect_uri(&f.ctx, &f.connection).as_str(),
        "https://gw.example.com/oidc/acme/corp-idp/callback"
    );
    assert_eq!(
        query(&login.url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(query(&login.url, "prompt"), None);
    assert!(login
        .url
        .as_str()
        .starts_with(&format!("{}/authorize?", f.idp.issuer)));

    let claims = f.claims(&login);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.email.as_deref(), Some("ada@acme.example"));
    assert_eq!(id.email_verified, Some(true));
    assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(id.given_name.as_deref(), Some("Ada"));
    assert_eq!(id.family_name.as_deref(), Some("Lovelace"));
    assert_eq!(id.groups, vec!["staff", "admins"]); // from userinfo
    assert_eq!(id.amr, vec!["pwd", "otp"]);
    assert_eq!(id.raw["locale"], vec!["de"]);
    assert_eq!(id.raw["iss"], vec![f.idp.issuer.clone()]);

    // The code exchange: client_secret_basic and the PKCE verifier whose S256
    // is the challenge we sent.
    let (form, auth) = f.idp.with(|s| s.token_requests.last().cloned().unwrap());
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "code-123");
    assert_eq!(
        form["redirect_uri"],
        "https://gw.example.com/oidc/acme/corp-idp/callback"
    );
    assert!(!form.contains_key("client_secret"));
    let verifier = &form["code_verifier"];
    assert_eq!(
        b64(&Sha256::digest(verifier.as_bytes())),
        query(&login.url, "code_challenge").unwrap()
    );
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{CLIENT_ID}:{}",
            url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
        ))
    );
    assert_eq!(auth.as_deref(), Some(expected_basic.as_str()));
}

#[tokio::test]
async fn begin_passes_force_authn_and_login_hint_with_fresh_nonces() {
    let f = Fixture::new().await;
    let begun = f
        .connector
        .begin(BeginRequest {
            login_id: "l-1",
            force_authn: true,
            login_hint: Some("ada@acme.example"),
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begun.redirect else {
        panic!()
    };
    assert_eq!(query(&url, "prompt").as_deref(), Some("login"));
    assert_eq!(
        query(&url, "login_hint").as_deref(),
        Some("ada@acme.example")
    );
    assert_eq!(begun.state["state"], "l-1");
    assert_eq!(
        begun.state["nonce"].as_str(),
        query(&url, "nonce").as_deref()
    );
    let other = f.begin().await;
    assert_ne!(other.nonce, query(&url, "nonce").unwrap());
    assert!(other.nonce.len() >= 43);
}

#[tokio::test]
async fn client_secret_post_when_the_idp_only_supports_it() {
    let f = Fixture::new().await;
    f.idp
        .with(|s| s.auth_methods = Some(vec!["client_secret_post".into()]));
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    let (form, auth) = f.idp.with(|s| s.token_requests.last().cloned().unwrap());
    assert_eq!(auth, None);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
}

#[tokio::test]
async fn missing_state_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.remove("state");
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, params).await),
        "oidc.state_missing"
    );
}

#[tokio::test]
async fn wrong_state_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let other = f.begin().await;
    // The callback of `other` presented against `login`'s pending state.
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&other)).await),
        "oidc.state_mismatch"
    );
}

#[tokio::test]
async fn unsolicited_callback_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let r = f.connector.complete(None, &f.callback(&login)).await;
    assert_eq!(code(r), "oidc.unsolicited");
}

#[tokio::test]
async fn idp_access_denied_is_reported() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.remove("code");
    params.query.insert("error".into(), "access_denied".into());
    params
        .query
        .insert("error_description".into(), "User cancelled".into());
    let err = f
        .connector
        .complete(Some(&login.pending), &params)
        .await
        .unwrap_err();
    assert_eq!(err.code, "oidc.idp_error");
    assert!(err.message.contains("denied"), "{}", err.message);
    assert!(!err.internal);
    // Nothing was exchanged.
    assert!(f.idp.with(|s| s.token_requests.is_empty()));
}

#[tokio::test]
async fn wrong_nonce_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["nonce"] = json!("another-nonce");
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.nonce_mismatch"
    );

    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims.as_object_mut().unwrap().remove("nonce");
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.nonce_mismatch"
    );
}

#[tokio::test]
async fn wrong_issuer_in_id_token_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["iss"] = json!(format!("{}/", f.idp.issuer)); // differs by one byte
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.issuer_mismatch"
    );
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!("someone-else");
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.audience_mismatch"
    );
}

#[tokio::test]
async fn azp_must_be_us_with_several_audiences() {
    let f = Fixture::new().await;
    // Several audiences and no azp.
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!([CLIENT_ID, "other-client"]);
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.azp_mismatch"
    );
    // Several audiences, azp another client.
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["aud"] = json!([CLIENT_ID, "other-client"]);
    claims["azp"] = json!("other-client");
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.azp_mismatch"
    );
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
    assert_eq!(
        code(f.finish_claims(&login2, claims2).await),
        "oidc.expired"
    );
}

#[tokio::test]
async fn id_token_issued_in_the_future_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["iat"] = json!(f.clock.unix() + SKEW + 5);
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.issued_in_future"
    );
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
        let token = jsonwebtoken::encode(
            &header,
            &f.claims(&login),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            code(f.finish(&login, token, f.callback(&login)).await),
            "oidc.alg_not_allowed"
        );
    }
}

#[tokio::test]
async fn rfc9207_iss_parameter_mismatch_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params
        .query
        .insert("iss".into(), "https://attacker.example".into());
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, params).await),
        "oidc.iss_mismatch"
    );
    // Nothing was exchanged with the IdP.
    assert!(f.idp.with(|s| s.token_requests.is_empty()));
}

#[tokio::test]
async fn rfc9207_iss_parameter_is_required_when_advertised() {
    let f = Fixture::new().await;
    f.idp.with(|s| s.iss_parameter_supported = true);
    // The connector has not fetched discovery yet, so it sees the flag.
    let login = f.begin().await;
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.iss_missing"
    );
    // With the right iss it is accepted.
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.insert("iss".into(), f.idp.issuer.clone());
    let token = f.key.sign(&f.claims(&login));
    f.finish(&login, token, params).await.unwrap();
}

#[tokio::test]
async fn iss_parameter_is_optional_when_not_advertised() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    // `callback` carries no iss; the IdP does not advertise RFC 9207.
    f.finish_claims(&login, claims).await.unwrap();
}

#[tokio::test]
async fn userinfo_for_another_subject_is_rejected() {
    let f = Fixture::new().await;
    f.idp.with(|s| s.userinfo_sub = "user-2".into());
    let login = f.begin().await;
    let claims = f.claims(&login);
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.userinfo_sub_mismatch"
    );
}

#[tokio::test]
async fn key_rotation_at_the_idp_refetches_the_jwks_once() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), 1);

    // The IdP rotates to k2; our cache still holds only k1.
    let k2 = IdpKey::generate("k2");
    f.idp.with(|s| s.published = vec![k2.clone()]);
    let login = f.begin().await;
    let token = k2.sign(&f.claims(&login));
    f.finish(&login, token, f.callback(&login)).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), 2);

    // k2 is cached now: no further fetch.
    let login = f.begin().await;
    let token = k2.sign(&f.claims(&login));
    f.finish(&login, token, f.callback(&login)).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), 2);
}

#[tokio::test]
async fn unknown_kid_flood_refetches_at_most_once_per_window() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(f.idp.with(|s| s.jwks_hits), 1);

    let stranger = IdpKey::generate("unknown-kid");
    for _ in 0..10 {
        let login = f.begin().await;
        let token = stranger.sign(&f.claims(&login));
        assert_eq!(
            code(f.finish(&login, token, f.callback(&login)).await),
            "oidc.unknown_kid"
        );
    }
    assert_eq!(
        f.idp.with(|s| s.jwks_hits),
        2,
        "one refetch for the whole flood"
    );

    // After the window another refetch is allowed.
    f.clock.advance(Duration::seconds(
        oidc::provider::JWKS_REFETCH_WINDOW_SECS as i64 + 1,
    ));
    let login = f.begin().await;
    let token = stranger.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.unknown_kid"
    );
    assert_eq!(f.idp.with(|s| s.jwks_hits), 3);
}

#[tokio::test]
async fn setup_rejects_a_discovery_issuer_mismatch() {
    let key = IdpKey::generate("k1");
    let idp = FakeIdp::start(key).await;
    idp.with(|s| s.discovery_issuer = "https://evil.example".into());
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let err = oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer");
    assert!(err.message.contains("evil.example"), "{}", err.message);
}

#[tokio::test]
async fn setup_validates_fields() {
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let bad = [
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "allowed_algorithms": ["none"]}),
            "allowed_algorithms",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "allowed_algorithms": ["RS256", "HS256"]}),
            "allowed_algorithms",
        ),
        (json!({"issuer": idp.issuer, "client_id": ""}), "client_id"),
        (
            json!({"issuer": "not a url", "client_id": CLIENT_ID}),
            "issuer",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "claim_mapping": {"email": ""}}),
            "claim_mapping.email",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "surprise": 1}),
            "body",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "claim_mapping": {"mail": "x"}}),
            "body",
        ),
    ];
    for (body, field) in bad {
        let err = oidc::setup(body.clone(), &ctx).await.unwrap_err();
        assert_eq!(err.field, field, "{body}: {err}");
    }
    // The stored shape, with defaults filled in.
    let cfg = oidc::setup(
        json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": "x"}),
        &ctx,
    )
    .await
    .unwrap();
    let stored = serde_json::to_value(&cfg).unwrap();
    assert_eq!(
        stored,
        json!({
            "issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": "x", "scopes": [],
            "claim_mapping": {"subject": "sub", "email": "email", "email_verified": "email_verified",
                "name": "name", "given_name": "given_name", "family_name": "family_name", "groups": "groups"},
            "allowed_algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
            "userinfo": true,
        })
    );
    assert_eq!(cfg.client_secret, Some(Secret::new("x")));
}

#[tokio::test]
async fn setup_refuses_loopback_issuers_when_private_networks_are_off() {
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, false);
    let https_issuer = idp.issuer.replace("http://", "https://");
    let err = oidc::setup(
        json!({"issuer": https_issuer, "client_id": CLIENT_ID}),
        &ctx,
    )
    .await
    .unwrap_err();
    assert_eq!(err.field, "issuer");
    assert!(
        err.message.contains("outbound.forbidden_address"),
        "{}",
        err.message
    );
    // Plain http is refused outright in that mode.
    let err = oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer");
}

#[tokio::test]
async fn openidconnect_crate_uses_the_guarded_client() {
    use openidconnect::core::CoreProviderMetadata;
    use openidconnect::IssuerUrl;
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let open = context(&clock, true);
    let meta = CoreProviderMetadata::discover_async(
        IssuerUrl::new(idp.issuer.clone()).unwrap(),
        &open.http,
    )
    .await
    .unwrap();
    assert_eq!(meta.issuer().as_str(), idp.issuer);
    // With private networks off, the same call is refused by the guard.
    let closed = context(&clock, false);
    let err = CoreProviderMetadata::discover_async(
        IssuerUrl::new(idp.issuer.clone()).unwrap(),
        &closed.http,
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("outbound.forbidden_address"),
        "{err:?}"
    );
}

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
    let pem = PKey::from_ec_key(ec)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    (jwk, EncodingKey::from_ec_pem(&pem).unwrap())
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
    f.idp.with(|s| s.id_token = Some(f.key.sign(&claims)));
    let r = strict.complete(Some(&begun.state), &params).await;
    assert_eq!(code(r), "oidc.alg_not_allowed");
    // The same claims signed with ES256 pass the strict connection.
    f.idp.with(|s| s.id_token = Some(es256(&claims)));
    strict.complete(Some(&begun.state), &params).await.unwrap();
}

#[tokio::test]
async fn token_endpoint_failures_and_missing_id_token() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    // The token endpoint returns no id_token (the fake returns null).
    let r = f
        .connector
        .complete(Some(&login.pending), &f.callback(&login))
        .await;
    assert_eq!(code(r), "oidc.id_token_missing");
    // A callback without a code.
    let mut params = f.callback(&login);
    params.query.remove("code");
    let r = f.connector.complete(Some(&login.pending), &params).await;
    assert_eq!(code(r), "oidc.code_missing");
}
