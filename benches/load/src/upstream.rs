//! A fast local OIDC upstream: discovery, JWKS and a token endpoint that
//! hands out ID tokens minted ahead of the timed window.
//!
//! The gateway's callback exchanges the code at [`Upstream`]'s token
//! endpoint; the code maps to an ID token the generator signed (RS256,
//! RSA-2048, as most enterprise IdPs sign) with the nonce of the gateway's
//! own authorization request, before timing started. During the timed window
//! the upstream only looks the code up, so it costs the generator almost
//! nothing and the gateway's side (code exchange over HTTP, ID-token
//! verification) is what is measured.

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use openssl::bn::BigNumRef;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const KID: &str = "load-upstream-1";

/// The upstream OIDC provider run by the generator.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    key: PKey<Private>,
    jwks: serde_json::Value,
    codes: Mutex<HashMap<String, String>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn bn(n: &BigNumRef) -> String {
    b64(&n.to_vec())
}

impl Upstream {
    /// Starts the upstream on a free loopback port; returns it once it listens.
    pub async fn start() -> Result<Upstream, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("upstream bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let issuer = format!("http://127.0.0.1:{port}");
        let rsa = Rsa::generate(2048).map_err(|e| e.to_string())?;
        let jwks = serde_json::json!({ "keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": bn(rsa.n()), "e": bn(rsa.e()),
        }]});
        let key = PKey::from_rsa(rsa).map_err(|e| e.to_string())?;
        let up = Upstream {
            inner: Arc::new(Inner {
                issuer,
                key,
                jwks,
                codes: Mutex::new(HashMap::new()),
            }),
        };
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .route("/token", post(token))
            .with_state(up.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("portcullis-load: the OIDC upstream stopped: {e}");
            }
        });
        Ok(up)
    }

    /// The issuer (also the base URL).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Mints an ID token for `sub`/`email` with `nonce`, for the gateway's
    /// client `client_id`, and returns a fresh code that redeems it once.
    pub fn mint(&self, client_id: &str, sub: &str, email: &str, nonce: &str) -> Result<String, String> {
        #[allow(clippy::disallowed_methods)] // A test IdP stamps the real time.
        let now = chrono::Utc::now().timestamp();
        let header = b64(br#"{"alg":"RS256","typ":"JWT","kid":"load-upstream-1"}"#);
        let claims = serde_json::json!({
            "iss": self.inner.issuer, "sub": sub, "aud": client_id, "iat": now, "exp": now + 600,
            "auth_time": now, "nonce": nonce, "email": email, "email_verified": true,
            "given_name": "Ada", "family_name": "Lovelace",
        });
        let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let mut signer = Signer::new(MessageDigest::sha256(), &self.inner.key).map_err(|e| e.to_string())?;
        signer.update(input.as_bytes()).map_err(|e| e.to_string())?;
        let sig = signer.sign_to_vec().map_err(|e| e.to_string())?;
        let id_token = format!("{input}.{}", b64(&sig));
        let code = b64(&rand::random::<[u8; 18]>());
        self.inner
            .codes
            .lock()
            .map_err(|_| "upstream code map poisoned".to_owned())?
            .insert(code.clone(), id_token);
        Ok(code)
    }
}

async fn discovery(State(up): State<Upstream>) -> Json<serde_json::Value> {
    let iss = &up.inner.issuer;
    Json(serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile"],
    }))
}

async fn jwks_handler(State(up): State<Upstream>) -> Json<serde_json::Value> {
    Json(up.inner.jwks.clone())
}

async fn token(State(up): State<Upstream>, Form(form): Form<HashMap<String, String>>) -> Response {
    let id_token = form.get("code").and_then(|code| match up.inner.codes.lock() {
        Ok(mut codes) => codes.remove(code),
        Err(_) => None,
    });
    match id_token {
        Some(id_token) => Json(serde_json::json!({
            "access_token": b64(&rand::random::<[u8; 18]>()),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }))
        .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "invalid_grant" })),
        )
            .into_response(),
    }
}
