//! A scriptable OpenID provider for exact negative cases: discovery, JWKS,
//! token and userinfo endpoints on 127.0.0.1, with RSA keys made here. The
//! test decides what the token endpoint returns, which keys are published and
//! what the metadata advertises. Only for what no real provider will emit
//! (forged or broken ID tokens, odd metadata); everything a real provider can
//! express runs against `oidc-provider` (`oidc_negative`, `oidc_trust`).
//!
//! Its token endpoint checks like a real one: the code must be one it issued
//! (single use), the PKCE verifier must hash to that code's challenge, the
//! redirect URI must match, and the client must authenticate with its secret
//! (HTTP Basic, form-urlencoded parts, or `client_secret_post`). Anything else
//! is an RFC 6749 error answer.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = "portcullis-client";
pub const CLIENT_SECRET: &str = "s3cret:with/odd chars";
pub const ACCESS_TOKEN: &str = "access-token-1";

/// An RSA signing key of the IdP.
#[derive(Clone)]
pub struct IdpKey {
    pub kid: String,
    pub private_pem: Vec<u8>,
    pub public_pem: Vec<u8>,
    pub jwk: Value,
}

impl IdpKey {
    pub fn generate(kid: &str) -> Self {
        let rsa = Rsa::generate(2048).unwrap();
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec()),
        });
        Self {
            kid: kid.into(),
            private_pem: rsa.private_key_to_pem().unwrap(),
            public_pem: rsa.public_key_to_pem().unwrap(),
            jwk,
        }
    }

    /// Signs `claims` with RS256 under this key's kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(Algorithm::RS256, claims)
    }

    /// Signs `claims` with `alg` (an RSA algorithm) under this key's kid;
    /// the JWK verifies it only if its `alg` is `alg` or absent. RS384 and
    /// RS512 are signed with OpenSSL directly, as an IdP would: the crypto
    /// provider the gateway installs for `jsonwebtoken` in this process
    /// signs only the algorithms the gateway issues with.
    pub fn sign_with(&self, alg: Algorithm, claims: &Value) -> String {
        let digest = match alg {
            Algorithm::RS256 => {
                let mut header = Header::new(alg);
                header.kid = Some(self.kid.clone());
                let key = EncodingKey::from_rsa_pem(&self.private_pem).unwrap();
                return jsonwebtoken::encode(&header, claims, &key).unwrap();
            }
            Algorithm::RS384 => openssl::hash::MessageDigest::sha384(),
            Algorithm::RS512 => openssl::hash::MessageDigest::sha512(),
            other => panic!("the fake IdP's RSA key cannot sign {other:?}"),
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = openssl::pkey::PKey::private_key_from_pem(&self.private_pem).unwrap();
        let mut signer = openssl::sign::Signer::new(digest, &key).unwrap();
        signer.update(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signer.sign_to_vec().unwrap()))
    }
}

/// What the IdP does; the test changes it between steps.
pub struct Script {
    pub issuer: String,
    /// The `issuer` the discovery document claims (normally `issuer`).
    pub discovery_issuer: String,
    pub published: Vec<IdpKey>,
    pub iss_parameter_supported: bool,
    pub auth_methods: Option<Vec<String>>,
    /// What the token endpoint returns as `id_token`.
    pub id_token: Option<String>,
    /// The `sub` the userinfo endpoint reports.
    pub userinfo_sub: String,
    pub userinfo_claims: Value,
    // Observations.
    pub discovery_hits: usize,
    pub jwks_hits: usize,
    pub token_requests: Vec<(BTreeMap<String, String>, Option<String>)>,
    /// Codes the IdP issued and not yet redeemed: code → (PKCE S256
    /// challenge, redirect URI).
    pub codes: BTreeMap<String, (String, String)>,
    /// Discovery fields replaced by the test (e.g. a `javascript:` endpoint).
    pub endpoint_override: BTreeMap<String, String>,
    /// The refresh token the IdP issues with the code (and honours); `None`: none.
    pub refresh_token: Option<String>,
    /// The JWKS endpoint answers this status with no keys (an outage).
    pub jwks_failing: Option<u16>,
    /// The token responses' `expires_in` (`null`: left out).
    pub expires_in: Value,
    /// The access token the token endpoint issues (and userinfo expects).
    pub access_token: String,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub script: Arc<Mutex<Script>>,
    pub issuer: String,
}

impl FakeIdp {
    pub async fn start(key: IdpKey) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let script = Arc::new(Mutex::new(Script {
            issuer: issuer.clone(),
            discovery_issuer: issuer.clone(),
            published: vec![key],
            iss_parameter_supported: false,
            auth_methods: None,
            id_token: None,
            userinfo_sub: "user-1".into(),
            userinfo_claims: json!({"groups": ["staff", "admins"], "locale": "de"}),
            discovery_hits: 0,
            jwks_hits: 0,
            token_requests: Vec::new(),
            codes: BTreeMap::new(),
            endpoint_override: BTreeMap::new(),
            refresh_token: None,
            jwks_failing: None,
            expires_in: json!(300),
            access_token: ACCESS_TOKEN.into(),
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(script.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { script, issuer }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.script.lock().unwrap())
    }

    /// Issues `code` for the authorization request `url` (as the IdP would
    /// after the person signed in): it remembers the request's PKCE
    /// challenge and redirect URI.
    pub fn issue_code(&self, code: &str, url: &url::Url) {
        let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge_method"], "S256");
        self.with(|s| {
            s.codes
                .insert(code.into(), (q["code_challenge"].clone(), q["redirect_uri"].clone()))
        });
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// The client authentication a real IdP demands.
fn client_authenticated(headers: &HeaderMap, form: &BTreeMap<String, String>) -> bool {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(CLIENT_ID), enc(CLIENT_SECRET)))
    );
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(h) => h == basic && !form.contains_key("client_secret"),
        None => {
            form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    }
}

type S = State<Arc<Mutex<Script>>>;

async fn discovery(State(s): S) -> Json<Value> {
    let mut s = s.lock().unwrap();
    s.discovery_hits += 1;
    let i = &s.issuer;
    let mut doc = json!({
        "issuer": s.discovery_issuer,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": s.iss_parameter_supported,
    });
    if let Some(m) = &s.auth_methods {
        doc["token_endpoint_auth_methods_supported"] = json!(m);
    }
    for (field, value) in &s.endpoint_override {
        doc[field.as_str()] = json!(value);
    }
    Json(doc)
}

async fn jwks(State(s): S) -> Response {
    let mut s = s.lock().unwrap();
    s.jwks_hits += 1;
    if let Some(status) = s.jwks_failing {
        return axum::http::StatusCode::from_u16(status).unwrap().into_response();
    }
    let keys: Vec<Value> = s.published.iter().map(|k| k.jwk.clone()).collect();
    Json(json!({ "keys": keys })).into_response()
}

async fn token(State(s): S, headers: HeaderMap, Form(form): Form<BTreeMap<String, String>>) -> Response {
    use sha2::{Digest, Sha256};
    let mut s = s.lock().unwrap();
    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
    s.token_requests.push((form.clone(), auth));
    if !client_authenticated(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        if s.refresh_token.is_none() || form.get("refresh_token") != s.refresh_token.as_ref() {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
        // Rotates, as many IdPs do.
        let next = format!("{}+", s.refresh_token.clone().unwrap_or_default());
        s.refresh_token = Some(next.clone());
        let mut body = json!({
            "access_token": s.access_token, "token_type": "Bearer",
            "id_token": s.id_token, "refresh_token": next,
        });
        if !s.expires_in.is_null() {
            body["expires_in"] = s.expires_in.clone();
        }
        return Json(body).into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // Single use, like every real IdP.
    let Some((challenge, redirect_uri)) = form.get("code").and_then(|c| s.codes.remove(c)) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if hashed != challenge || form.get("redirect_uri") != Some(&redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let mut body = json!({
        "access_token": s.access_token,
        "token_type": "Bearer",
        "id_token": s.id_token,
    });
    if !s.expires_in.is_null() {
        body["expires_in"] = s.expires_in.clone();
    }
    if let Some(rt) = &s.refresh_token {
        body["refresh_token"] = json!(rt);
    }
    Json(body).into_response()
}

async fn userinfo(State(s): S, headers: HeaderMap) -> Json<Value> {
    let s = s.lock().unwrap();
    assert_eq!(
        headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {}", s.access_token)
    );
    let mut body = s.userinfo_claims.clone();
    body["sub"] = json!(s.userinfo_sub);
    Json(body)
}
