//! Shared set-up of the local-account tests (`local_*`, `hooks_local`,
//! `hooks_challenge`): a gateway that mails through a test SMTP server with
//! cheap argon2 parameters, a tenant with a local connection and a public
//! app, PKCE, the authorize URL, the sign-in page, reading the local pages
//! (their reason codes and links) and redeeming a code.

use super::app::{spawn_app, AppOptions, TestApp};
use super::browser::{Browser, Nav, Page};
use super::smtp::SmtpServer;
use portcullis::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use url::Url;

/// Where the test apps are sent back to (nothing listens there).
pub const REDIRECT: &str = "http://127.0.0.1:9/cb";

/// How a local-account gateway is built.
#[derive(Clone, Default)]
pub struct Gateway<'a> {
    /// Mail goes to this server (none: no SMTP configured).
    pub smtp: Option<&'a SmtpServer>,
    /// A Redis URL and key prefix (none: the memory store).
    pub redis: Option<(String, String)>,
    /// The shipped argon2 parameters instead of cheap ones.
    pub shipped_argon2: bool,
    /// An injected clock.
    pub clock: Option<ManualClock>,
    /// Further settings.
    pub tweak: Option<fn(&mut portcullis::config::Settings)>,
}

impl Gateway<'_> {
    /// Spawns the gateway (not in dev mode).
    pub async fn spawn(self) -> TestApp {
        let url = self.smtp.map(SmtpServer::url);
        let cheap = !self.shipped_argon2;
        let tweak = self.tweak;
        spawn_app(AppOptions {
            redis_url: self.redis.as_ref().map(|r| r.0.clone()),
            redis_prefix: self.redis.map(|r| r.1),
            clock: self.clock,
            configure: Some(Arc::new(move |s| {
                if let Some(url) = &url {
                    s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
                    s.mail.from = Some("Sign-in <signin@local.example>".into());
                }
                if cheap {
                    s.local.argon2_memory_kib = 8192;
                    s.local.argon2_iterations = 1;
                }
                s.hooks.retry_backoff_ms = 10;
                if let Some(t) = tweak {
                    t(s);
                }
            })),
            ..AppOptions::default()
        })
        .await
    }
}

/// One tenant with one local connection and one public app.
#[derive(Clone, Copy)]
pub struct World {
    /// The tenant id.
    pub tenant: &'static str,
    /// The local connection's id.
    pub connection: &'static str,
    /// The public app's client id.
    pub client: &'static str,
    /// The scope a sign-in asks for.
    pub scope: &'static str,
}

impl World {
    /// Creates the tenant (named `name`, with `domain`), its local
    /// connection (201 through the admin API) and the public app.
    pub async fn create(self, app: &TestApp, name: &str, domain: &str) -> Self {
        self.create_connection(app, name, domain).await;
        let redirect = Url::parse(REDIRECT).unwrap();
        app.create_client(self.client, "Local app", &[&redirect], true).await;
        self
    }

    /// Creates the tenant and its local connection only.
    pub async fn create_connection(self, app: &TestApp, name: &str, domain: &str) -> Self {
        app.create_tenant(self.tenant, name, &[domain]).await;
        let body = app
            .admin_create(
                &format!("/admin/v1/tenants/{}/connections", self.tenant),
                json!({"id": self.connection, "kind": "local"}),
            )
            .await;
        assert_eq!(body["kind"], "local", "{body}");
        self
    }

    /// The tenant id, parsed.
    pub fn t(self) -> portcullis::ids::TenantId {
        portcullis::ids::TenantId::parse(self.tenant).unwrap()
    }

    /// The connection id, parsed.
    pub fn c(self) -> portcullis::ids::ConnectionId {
        portcullis::ids::ConnectionId::parse(self.connection).unwrap()
    }

    /// A local page of the connection (`sign-in`, `forgot`...).
    pub fn page(self, app: &TestApp, page: &str) -> Url {
        app.url(&format!("/local/{}/{}/{page}", self.tenant, self.connection))
    }

    /// `/authorize` for the public app with PKCE and `scope`.
    pub fn authorize_url(self, app: &TestApp, p: &Pkce, scope: &str) -> Url {
        let mut url = app.url("/authorize");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", self.client)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", scope)
            .append_pair("state", "st")
            .append_pair("nonce", "nn")
            .append_pair("code_challenge", &p.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("tenant", self.tenant);
        url
    }

    /// Starts a sign-in at the app: the browser lands on the local sign-in page.
    pub async fn start(self, app: &TestApp, browser: &mut Browser, p: &Pkce) -> Page {
        let page = browser.get(&self.authorize_url(app, p, self.scope)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(
            page.url.path(),
            format!("/local/{}/{}/sign-in", self.tenant, self.connection),
            "{}",
            browser.trail()
        );
        page
    }

    /// Creates a confirmed account with `password` (admin API, 201).
    pub async fn account(self, app: &TestApp, email: &str, password: &str) -> Value {
        app.admin_create(
            &format!(
                "/admin/v1/tenants/{}/connections/{}/users",
                self.tenant, self.connection
            ),
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Signs `email` in with `password` from a fresh sign-in in `browser`:
    /// the token response, or the page that refused.
    pub async fn sign_in_in(
        self,
        app: &TestApp,
        browser: &mut Browser,
        email: &str,
        password: &str,
        secret: Option<&str>,
    ) -> Result<Value, Page> {
        let p = pkce();
        let page = self.start(app, browser, &p).await;
        let mut form = page.form(None);
        form.set("email", email);
        form.set("password", password);
        match browser.submit_until(&page, &form, &at_app).await {
            Nav::Stopped(back) => Ok(self.redeem(app, &back, &p, secret).await),
            Nav::Page(p) => Err(p),
        }
    }

    /// [`Self::sign_in_in`] in a new browser (a confidential app when
    /// `secret` is given); the token response.
    pub async fn sign_in(self, app: &TestApp, email: &str, password: &str, secret: Option<&str>) -> Value {
        let mut browser = Browser::new();
        match self.sign_in_in(app, &mut browser, email, password, secret).await {
            Ok(v) => v,
            Err(p) => panic!("sign-in refused: {}", p.body),
        }
    }

    /// Redeems the code in `back` (the app's redirect URI; a confidential
    /// app authenticates with `secret`); asserts 200.
    pub async fn redeem(self, app: &TestApp, back: &Url, p: &Pkce, secret: Option<&str>) -> Value {
        let code = back
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap_or_else(|| panic!("no code in {back}"))
            .1
            .into_owned();
        let mut req = app.client.post(app.url("/token"));
        if let Some(s) = secret {
            req = req.basic_auth(self.client, Some(s));
        }
        let resp = req
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("client_id", self.client),
                ("code_verifier", p.verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }
}

/// A manual clock far from the machine's (2040-06-01T12:00:00Z).
pub fn far_clock() -> ManualClock {
    ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:00Z")
            .unwrap()
            .to_utc(),
    )
}

/// Whether `u` is the app's redirect URI.
pub fn at_app(u: &Url) -> bool {
    u.as_str().starts_with(REDIRECT)
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    /// The verifier.
    pub verifier: String,
    /// Its challenge.
    pub challenge: String,
}

/// A fresh PKCE pair.
pub fn pkce() -> Pkce {
    let verifier = portcullis::tokens::random_token(32);
    let challenge = portcullis::tokens::sha256_base64url(verifier.as_bytes());
    Pkce { verifier, challenge }
}

/// Asserts a local page's status and the reason code it shows.
pub fn assert_reason(page: &Page, status: u16, reason: &str) {
    assert_eq!(page.status.as_u16(), status, "expected {reason}: {}", page.body);
    assert!(
        page.body.contains(&format!("<code>{reason}</code>")),
        "reason {reason} not on the page: {}",
        page.body
    );
}

/// The href of the link whose text contains `text`.
pub fn link(page: &Page, text: &str) -> Url {
    let href = page
        .body
        .split("<a href=\"")
        .skip(1)
        .find_map(|rest| {
            let (href, after) = rest.split_once('"')?;
            let label = after.split("</a>").next()?;
            label.contains(text).then_some(href)
        })
        .unwrap_or_else(|| panic!("no link {text:?}: {}", page.body));
    page.url.join(&href.replace("&amp;", "&")).unwrap()
}

/// The statuses of the requests `browser` made since `from` (an index into
/// its history), e.g. `[303, 200]` for a POST answered by a redirect.
pub fn statuses_since(browser: &Browser, from: usize) -> Vec<u16> {
    browser.history.iter().skip(from).map(|h| h.status.as_u16()).collect()
}
