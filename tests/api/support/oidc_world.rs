//! The OIDC end-to-end fixture: the gateway over a real Redis, two tenants
//! (`acme`, `globex`) each federating to the same real upstream OpenID
//! Provider (oidc-provider), and two apps (openid-client relying parties,
//! one authenticating with client_secret_basic, one with client_secret_post)
//! plus raw clients for protocol-level tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng as _;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::admin::RegisteredClient;
use super::app::{spawn_app, AppOptions, TestApp};
use super::browser::{Browser, Nav, Page};
use super::peers::{IdpClient, RelyingParty, UpstreamIdp, IDP_PASSWORD};
use super::redis;

/// Tenant A, domain `acme.test` (alice, bob).
pub const ACME: &str = "acme";
/// Tenant B, domain `globex.test` (carol).
pub const GLOBEX: &str = "globex";
/// The connection id used in both tenants.
pub const CONN: &str = "corp-idp";
/// The scope the apps ask the gateway for (every flow expects a refresh
/// token and the groups claim with it).
pub const APP_SCOPE: &str = "openid email profile groups offline_access";
/// Scopes the gateway asks upstream for.
pub const UPSTREAM_SCOPES: &[&str] = &["openid", "email", "profile", "groups"];

/// Everything a flow test needs.
pub struct OidcWorld {
    /// The gateway.
    pub app: TestApp,
    /// The upstream OpenID Provider.
    pub idp: UpstreamIdp,
    /// App one (client `app-one`, client_secret_basic).
    pub app1: RelyingParty,
    /// App two (client `app-two`, client_secret_post).
    pub app2: RelyingParty,
    /// The gateway's discovery document.
    pub discovery: Value,
    /// A confidential raw client (`raw-a`) whose redirect URI is never served.
    pub raw_a: RawClient,
    /// A second confidential raw client (`raw-b`).
    pub raw_b: RawClient,
}

/// A client driven by hand at the protocol level.
#[derive(Debug, Clone)]
pub struct RawClient {
    /// Its registration.
    pub reg: RegisteredClient,
    /// Its only redirect URI (nothing listens there: navigation stops first).
    pub redirect_uri: Url,
}

impl RawClient {
    /// Its secret.
    pub fn secret(&self) -> &str {
        self.reg.client_secret.as_deref().unwrap()
    }
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    /// code_verifier.
    pub verifier: String,
    /// code_challenge (S256).
    pub challenge: String,
}

impl Pkce {
    /// A fresh random pair.
    pub fn new() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self { verifier, challenge }
    }
}

/// A random value for state/nonce.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a raw token-endpoint request authenticates.
pub enum ClientAuth<'a> {
    /// client_secret_basic.
    Basic(&'a str, &'a str),
    /// client_secret_post.
    Post(&'a str, &'a str),
    /// No authentication, `client_id` in the body (public clients).
    None(&'a str),
}

/// An OAuth endpoint's answer.
#[derive(Debug)]
pub struct OAuthResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The JSON body (`Null` if none).
    pub body: Value,
}

impl OAuthResponse {
    /// The RFC 6749 `error` member.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

impl OidcWorld {
    /// Builds the world; every registration asserts its status.
    pub async fn new() -> Self {
        let app = spawn_app(AppOptions {
            redis_url: Some(redis::url()),
            redis_prefix: Some(redis::prefix()),
            ..AppOptions::default()
        })
        .await;
        Self::on(app).await
    }

    /// Builds the world on a gateway already running (e.g. one of two
    /// replicas behind a round-robin proxy).
    pub async fn on(app: TestApp) -> Self {
        app.create_tenant(ACME, "Acme Corp", &["acme.test"]).await;
        app.create_tenant(GLOBEX, "Globex", &["globex.test"]).await;

        let upstream = |tenant: &str| IdpClient {
            client_id: format!("portcullis-{tenant}"),
            client_secret: format!("{tenant}-upstream-secret-{}", random_token()),
            redirect_uris: vec![app.oidc_callback(tenant, CONN)],
        };
        let clients = [upstream(ACME), upstream(GLOBEX)];
        let idp = UpstreamIdp::spawn(&clients).await;
        for (tenant, c) in [ACME, GLOBEX].iter().zip(&clients) {
            app.create_oidc_connection(
                tenant,
                CONN,
                &idp.issuer(),
                &c.client_id,
                &c.client_secret,
                UPSTREAM_SCOPES,
            )
            .await;
        }

        let app1 = RelyingParty::spawn("app-one", &app.base).await;
        let reg1 = app
            .create_client("app-one", "App One", &[&app1.redirect_uri()], false)
            .await;
        app1.configure("app-one", reg1.client_secret.as_deref().unwrap(), "basic", APP_SCOPE)
            .await;
        let app2 = RelyingParty::spawn("app-two", &app.base).await;
        let reg2 = app
            .create_client("app-two", "App Two", &[&app2.redirect_uri()], false)
            .await;
        app2.configure("app-two", reg2.client_secret.as_deref().unwrap(), "post", APP_SCOPE)
            .await;

        let raw = |name: &str| Url::parse(&format!("http://127.0.0.1:9/{name}/callback")).unwrap();
        let raw_a_uri = raw("raw-a");
        let raw_b_uri = raw("raw-b");
        let raw_a = RawClient {
            reg: app.create_client("raw-a", "Raw A", &[&raw_a_uri], false).await,
            redirect_uri: raw_a_uri,
        };
        let raw_b = RawClient {
            reg: app.create_client("raw-b", "Raw B", &[&raw_b_uri], false).await,
            redirect_uri: raw_b_uri,
        };

        let discovery: Value = app.get_json("/.well-known/openid-configuration").await;
        assert_eq!(
            discovery["issuer"].as_str(),
            Some(app.base.as_str().trim_end_matches('/')),
            "issuer is the base URL"
        );

        Self {
            app,
            idp,
            app1,
            app2,
            discovery,
            raw_a,
            raw_b,
        }
    }

    /// An endpoint URL from discovery (`token_endpoint`, ...).
    pub fn endpoint(&self, name: &str) -> Url {
        let s = self.discovery[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} missing from discovery: {}", self.discovery));
        Url::parse(s).unwrap()
    }

    /// The gateway's issuer.
    pub fn issuer(&self) -> &str {
        self.discovery["issuer"].as_str().unwrap()
    }

    /// Signs in at `rp` with `params` through `browser`. When the IdP asks
    /// for credentials, `user` must be given (password [`IDP_PASSWORD`]);
    /// when it is given, the test expects the IdP's login form. Returns the
    /// RP's JSON (tokens and validated ID token claims).
    pub async fn sign_in(
        &self,
        browser: &mut Browser,
        rp: &RelyingParty,
        params: &[(&str, &str)],
        user: Option<&str>,
    ) -> Value {
        let page = browser.get(&rp.login_url(params)).await;
        let page = self.complete_idp_login(browser, page, user).await;
        assert!(
            rp.is_callback(&page.url),
            "did not return to the app:\n{}",
            browser.trail()
        );
        assert_eq!(
            page.status,
            200,
            "app callback failed: {}\n{}",
            page.body,
            browser.trail()
        );
        page.json()
    }

    /// If `page` is the IdP's login form, logs `user` in; asserts that a
    /// login form is shown exactly when `user` is given.
    pub async fn complete_idp_login(&self, browser: &mut Browser, page: Page, user: Option<&str>) -> Page {
        let is_login = self.idp.serves(&page.url) && page.forms().iter().any(|f| f.id.as_deref() == Some("login"));
        match user {
            Some(user) => {
                assert!(is_login, "expected the IdP login form:\n{}", browser.trail());
                browser
                    .fill_and_submit(&page, Some("login"), &[("username", user), ("password", IDP_PASSWORD)])
                    .await
            }
            None => {
                assert!(!is_login, "unexpected IdP login form:\n{}", browser.trail());
                page
            }
        }
    }

    /// Runs `/authorize` for a raw client by hand and returns the URL the
    /// gateway redirected back to (with `code` or `error`), signing `user`
    /// in at the IdP when asked. `extra` is added to the request.
    pub async fn raw_authorize(
        &self,
        browser: &mut Browser,
        client: &RawClient,
        extra: &[(&str, &str)],
        user: Option<&str>,
    ) -> Url {
        let mut url = self.endpoint("authorization_endpoint");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.reg.client_id)
            .append_pair("redirect_uri", client.redirect_uri.as_str())
            .append_pair("scope", APP_SCOPE)
            .extend_pairs(extra);
        let prefix = client.redirect_uri.as_str().to_owned();
        let stop = move |u: &Url| u.as_str().starts_with(&prefix);
        match browser.get_until(&url, &stop).await {
            Nav::Stopped(back) => back,
            Nav::Page(page) => {
                let user = user.unwrap_or_else(|| panic!("IdP asked for a login:\n{}", browser.trail()));
                assert!(
                    self.idp.serves(&page.url),
                    "unexpected page {}:\n{}",
                    page.url,
                    page.body
                );
                let mut form = page.form(Some("login"));
                form.set("username", user);
                form.set("password", IDP_PASSWORD);
                browser.submit_until(&page, &form, &stop).await.stopped()
            }
        }
    }

    /// A fresh code for `client` (tenant acme, user alice) with PKCE.
    pub async fn raw_code(&self, client: &RawClient, pkce: &Pkce) -> String {
        let mut browser = Browser::new();
        let state = random_token();
        let back = self
            .raw_authorize(
                &mut browser,
                client,
                &[
                    ("tenant", ACME),
                    ("state", &state),
                    ("nonce", &random_token()),
                    ("code_challenge", &pkce.challenge),
                    ("code_challenge_method", "S256"),
                ],
                Some("alice"),
            )
            .await;
        let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
        assert_eq!(q.get("state"), Some(&state), "state echoed: {back}");
        q.get("code").cloned().unwrap_or_else(|| panic!("no code in {back}"))
    }

    /// A POST to an OAuth endpoint (token, revocation, introspection).
    pub async fn oauth_post(&self, endpoint: &str, auth: ClientAuth<'_>, form: &[(&str, &str)]) -> OAuthResponse {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.app.client.post(self.endpoint(endpoint));
        match auth {
            ClientAuth::Basic(id, secret) => req = req.basic_auth(id, Some(secret)),
            ClientAuth::Post(id, secret) => {
                fields.push(("client_id", id));
                fields.push(("client_secret", secret));
            }
            ClientAuth::None(id) => fields.push(("client_id", id)),
        }
        let resp = req.form(&fields).send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        OAuthResponse {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// Redeems `code` for `client` with `verifier` (None: no code_verifier).
    pub async fn redeem(&self, client: &RawClient, code: &str, verifier: Option<&str>) -> OAuthResponse {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", client.redirect_uri.as_str()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        self.oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&client.reg.client_id, client.secret()),
            &form,
        )
        .await
    }

    /// Introspects `token` as `client` (RFC 7662) and returns the body.
    pub async fn introspect(&self, client: &RawClient, token: &str) -> Value {
        let r = self
            .oauth_post(
                "introspection_endpoint",
                ClientAuth::Basic(&client.reg.client_id, client.secret()),
                &[("token", token)],
            )
            .await;
        assert_eq!(r.status, 200, "introspection: {:?}", r.body);
        r.body
    }

    /// Verifies an access token's signature against the gateway's JWKS and
    /// its issuer, and returns header and claims.
    pub async fn verify_access_token(&self, token: &str) -> (jsonwebtoken::Header, Value) {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .app
            .client
            .get(self.endpoint("jwks_uri"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kid = header.kid.clone().expect("access token has a kid");
        let jwk = jwks.find(&kid).expect("access token kid is in the JWKS");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_aud = false;
        validation.set_issuer(&[self.issuer()]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
        (header, data.claims)
    }
}

/// A string member of a JSON value (panics with the value when absent).
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing or not a string in {v}"))
}
