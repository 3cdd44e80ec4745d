//! Deletion and disabling revoke (trust issue, point 3): deleting a tenant,
//! a connection, an app or a user, or disabling a user, ends its SSO
//! sessions, codes, refresh families and the acceptance of its access
//! tokens; a tenant or connection re-created with the same id never inherits
//! its predecessor's users. Sign-ins go through the built-in dev IdP.
//!
//! Reason codes are asserted where the provider decides them
//! (`state.provider`), next to the HTTP answers apps see.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Nav};
use portcullis::ids::TenantId;
use portcullis::provider::grants::{ClientCredentials, PrefetchedClient, TokenRequest};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use url::Url;

pub const DEMO: &str = "demo";

/// An app registered for the test, with a confidential secret.
pub struct Rp {
    pub client_id: String,
    pub secret: String,
    pub redirect: Url,
}

/// A code at the app's redirect, with its PKCE verifier.
pub struct Code {
    pub code: String,
    pub verifier: String,
}

/// What `/token` answered.
pub struct Tokens {
    pub status: StatusCode,
    pub body: Value,
}

impl Tokens {
    pub fn at(&self) -> &str {
        self.body["access_token"].as_str().unwrap()
    }
    pub fn rt(&self) -> &str {
        self.body["refresh_token"].as_str().unwrap()
    }
    pub fn sub(&self) -> String {
        use base64::Engine;
        let payload = self.at().split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: Value = serde_json::from_slice(&raw).unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    }
    pub fn error(&self) -> Option<&str> {
        self.body["error"].as_str()
    }
    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().unwrap_or_default()
    }
}

pub async fn dev_app() -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await
}

pub async fn register(app: &TestApp, client_id: &str) -> Rp {
    let redirect = Url::parse(&format!("https://{client_id}.example.test/cb")).unwrap();
    let registered = app.create_client(client_id, client_id, &[&redirect], false).await;
    Rp {
        client_id: client_id.to_owned(),
        secret: registered.client_secret.unwrap(),
        redirect,
    }
}

pub fn authorize_url(app: &TestApp, rp: &Rp, tenant: &str, verifier: &str) -> Url {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &rp.client_id)
        .append_pair("redirect_uri", rp.redirect.as_str())
        .append_pair("scope", "openid email offline_access")
        .append_pair("tenant", tenant)
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(verifier.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256");
    url
}

fn code_of(back: &Url) -> String {
    back.query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {back}"))
        .1
        .into_owned()
}

/// Where `/authorize` leads this browser: a code right away (SSO) or a page
/// (the dev IdP's form, an error page).
pub async fn start(app: &TestApp, browser: &mut Browser, rp: &Rp, tenant: &str) -> (Nav, String) {
    let verifier = portcullis::tokens::random_token(32);
    let host = rp.redirect.host_str().unwrap().to_owned();
    let stop = move |u: &Url| u.host_str() == Some(host.as_str());
    (
        browser
            .get_until(&authorize_url(app, rp, tenant, &verifier), &stop)
            .await,
        verifier,
    )
}

/// Signs in as `email` through the dev IdP (or by SSO if the browser has a
/// session) and returns the code.
pub async fn sign_in(app: &TestApp, browser: &mut Browser, rp: &Rp, tenant: &str, email: &str) -> Code {
    let (nav, verifier) = start(app, browser, rp, tenant).await;
    let back = match nav {
        Nav::Stopped(url) => url,
        Nav::Page(login) => submit_login(browser, rp, &login, email).await.stopped(),
    };
    Code {
        code: code_of(&back),
        verifier,
    }
}

pub async fn submit_login(browser: &mut Browser, rp: &Rp, login: &crate::support::browser::Page, email: &str) -> Nav {
    assert!(
        login.url.path().starts_with("/dev/"),
        "not the dev IdP: {} {}",
        login.url,
        login.body
    );
    let mut form = login.form(None);
    for (k, v) in form.fields.iter_mut() {
        if k == "email" {
            *v = email.to_owned();
        }
    }
    let host = rp.redirect.host_str().unwrap().to_owned();
    browser
        .submit_until(login, &form, &move |u: &Url| u.host_str() == Some(host.as_str()))
        .await
}

async fn to_tokens(resp: reqwest::Response) -> Tokens {
    let status = resp.status();
    Tokens {
        status,
        body: resp.json().await.unwrap(),
    }
}

pub async fn redeem(app: &TestApp, rp: &Rp, code: &Code) -> Tokens {
    to_tokens(
        app.client
            .post(app.url("/token"))
            .basic_auth(&rp.client_id, Some(&rp.secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.code.as_str()),
                ("redirect_uri", rp.redirect.as_str()),
                ("code_verifier", code.verifier.as_str()),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
}

pub async fn refresh(app: &TestApp, rp: &Rp, rt: &str) -> Tokens {
    to_tokens(
        app.client
            .post(app.url("/token"))
            .basic_auth(&rp.client_id, Some(&rp.secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The provider's reason for refusing a refresh of `rt` (consumes it).
async fn refresh_reason(app: &TestApp, rp: &Rp, rt: &str) -> &'static str {
    let creds = ClientCredentials::Secret {
        id: rp.client_id.clone(),
        secret: rp.secret.clone(),
    };
    let client = app.state.provider.authenticate_client(&creds).await.unwrap();
    let req = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(rt.into()),
        ..TokenRequest::default()
    };
    app.state.provider.token(&client, &req).await.unwrap_err().reason
}

/// The provider's reason for refusing a code (consumes it).
async fn code_reason(app: &TestApp, rp: &Rp, code: &Code) -> &'static str {
    let creds = ClientCredentials::Secret {
        id: rp.client_id.clone(),
        secret: rp.secret.clone(),
    };
    let client = app.state.provider.authenticate_client(&creds).await.unwrap();
    let req = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code.code.clone()),
        redirect_uri: Some(rp.redirect.to_string()),
        code_verifier: Some(code.verifier.clone()),
        ..TokenRequest::default()
    };
    app.state.provider.token(&client, &req).await.unwrap_err().reason
}

/// The refresh family a redemption of `code` (of the demo tenant) named
/// in the code's "used" marker before it took the code.
pub async fn family_named_by(app: &TestApp, code: &Code) -> String {
    let hash = portcullis::tokens::sha256_base64url(code.code.as_bytes());
    let marker = portcullis::store::Key::tenant(DEMO, "codes", format!("used:{hash}"));
    let raw = app
        .state
        .store
        .get(&marker)
        .await
        .unwrap()
        .expect("the code's used marker");
    let issued: Value = serde_json::from_slice(&raw).unwrap();
    issued["family"].as_str().expect("a family named").to_owned()
}

/// Whether the demo tenant's refresh family `family` has a record, and
/// whether the user `sub`'s index of families names it.
pub async fn family_left(app: &TestApp, family: &str, sub: &str) -> (bool, bool) {
    let record = portcullis::store::Key::tenant(DEMO, &format!("rf:{family}"), "family");
    let index = portcullis::store::Key::tenant(DEMO, "users", format!("families:{sub}"));
    let stored = app.state.store.get(&record).await.unwrap().is_some();
    let indexed = app
        .state
        .store
        .set_members(&index)
        .await
        .unwrap()
        .iter()
        .any(|f| f == family);
    (stored, indexed)
}

/// The provider's reason for refusing an access token.
pub async fn access_reason(app: &TestApp, at: &str) -> &'static str {
    app.state.provider.check_access_token(at).await.unwrap_err().reason
}

pub async fn userinfo_status(app: &TestApp, at: &str) -> StatusCode {
    app.client
        .get(app.url("/userinfo"))
        .bearer_auth(at)
        .send()
        .await
        .unwrap()
        .status()
}

pub async fn introspect(app: &TestApp, rp: &Rp, token: &str) -> Value {
    let resp = app
        .client
        .post(app.url("/introspect"))
        .basic_auth(&rp.client_id, Some(&rp.secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// Asserts that `t`'s access and refresh tokens are dead at userinfo and
/// introspection, and its access token for `reason`.
async fn assert_tokens_dead(app: &TestApp, rp: &Rp, t: &Tokens, reason: &str) {
    assert_eq!(access_reason(app, t.at()).await, reason);
    assert_eq!(userinfo_status(app, t.at()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(introspect(app, rp, t.at()).await, json!({"active": false}));
    assert_eq!(introspect(app, rp, t.rt()).await, json!({"active": false}));
}

/// Asserts the tokens work (the baseline every negative case starts from).
async fn assert_tokens_live(app: &TestApp, rp: &Rp, t: &Tokens) {
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    assert_eq!(userinfo_status(app, t.at()).await, StatusCode::OK);
    assert_eq!(introspect(app, rp, t.at()).await["active"], json!(true));
    assert_eq!(introspect(app, rp, t.rt()).await["active"], json!(true));
}

pub async fn create_dev_connection(app: &TestApp, tenant: &str) {
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/connections"),
            Some(json!({"id": "dev", "kind": "dev"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Deleting the tenant in the registry only (as if the eager clean-up had
/// not run or had failed): nothing of it is accepted any more, and a
/// re-created tenant with the same id gives the same person a new `sub`
/// while the old user, still in the store, stays refused.
#[tokio::test]
async fn a_deleted_tenant_ends_everything_even_before_its_users_are_purged() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let first = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ada@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &first).await;
    // Two more by SSO: one to redeem after the deletion, one family to ask for the reason.
    let pending_code = sign_in(&app, &mut browser, &rp, DEMO, "ada@demo.example").await;
    let second = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ada@demo.example").await,
    )
    .await;
    assert_eq!(second.status, StatusCode::OK);
    let old_sub = first.sub();

    let demo = TenantId::parse(DEMO).unwrap();
    app.state.tenants.delete(&demo).await.unwrap();

    let refused = refresh(&app, &rp, first.rt()).await;
    assert_eq!(refused.error(), Some("invalid_grant"), "{}", refused.body);
    assert_eq!(refused.description(), "The organization no longer exists.");
    assert_eq!(refresh_reason(&app, &rp, second.rt()).await, "refresh.tenant_gone");
    assert_eq!(code_reason(&app, &rp, &pending_code).await, "code.tenant_gone");
    assert_tokens_dead(&app, &rp, &first, "token.tenant_gone").await;

    // The same id again, with a new connection of the same id.
    app.create_tenant(DEMO, "Demo again", &["demo.example"]).await;
    create_dev_connection(&app, DEMO).await;
    assert!(
        app.state
            .provider
            .directory
            .get(&demo, &old_sub)
            .await
            .unwrap()
            .is_some(),
        "the old user is still in the store"
    );
    assert_eq!(access_reason(&app, first.at()).await, "token.user_superseded");
    assert_eq!(userinfo_status(&app, first.at()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(introspect(&app, &rp, first.at()).await, json!({"active": false}));
    // The browser's SSO session belongs to the old tenant: not reused.
    let (nav, verifier) = start(&app, &mut browser, &rp, DEMO).await;
    let login = nav.page();
    assert!(login.url.path().starts_with("/dev/demo/dev/login"), "{}", login.url);
    let back = submit_login(&mut browser, &rp, &login, "ada@demo.example")
        .await
        .stopped();
    let fresh = redeem(
        &app,
        &rp,
        &Code {
            code: code_of(&back),
            verifier,
        },
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    assert_ne!(fresh.sub(), old_sub, "a re-created tenant never inherits a sub");
    // And the old tokens are still refused after the new sign-in.
    assert_eq!(refresh(&app, &rp, first.rt()).await.error(), Some("invalid_grant"));
    assert_eq!(access_reason(&app, first.at()).await, "token.user_superseded");
}

/// Through the admin API: the tenant's users are purged too, its SSO session
/// is not reused, and every token and code of it is refused.
#[tokio::test]
async fn deleting_a_tenant_through_the_admin_api_revokes_and_purges() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "bob@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;
    let pending_code = sign_in(&app, &mut browser, &rp, DEMO, "bob@demo.example").await;
    let old_sub = tokens.sub();

    app.delete_tenant(DEMO).await;
    let demo = TenantId::parse(DEMO).unwrap();
    assert!(app
        .state
        .provider
        .directory
        .get(&demo, &old_sub)
        .await
        .unwrap()
        .is_none());
    assert_eq!(refresh(&app, &rp, tokens.rt()).await.error(), Some("invalid_grant"));
    assert_eq!(redeem(&app, &rp, &pending_code).await.error(), Some("invalid_grant"));
    assert_tokens_dead(&app, &rp, &tokens, "token.tenant_gone").await;
    let (status, p) = app.admin(Method::GET, "/admin/v1/tenants/demo/users", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");

    app.create_tenant(DEMO, "Demo again", &["demo.example"]).await;
    create_dev_connection(&app, DEMO).await;
    let fresh = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "bob@demo.example").await,
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    assert_ne!(fresh.sub(), old_sub);
    assert_eq!(access_reason(&app, tokens.at()).await, "token.user_gone");
}

/// A connection deleted and re-created with the same id: the old user's
/// tokens are refused and the same upstream person gets a new `sub`.
#[tokio::test]
async fn a_recreated_connection_does_not_inherit_users() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "cy@demo.example").await,
    )
    .await;
    let spare = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "cy@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;

    // In the registry only (as if the eager clean-up had not run).
    let demo = TenantId::parse(DEMO).unwrap();
    let dev = portcullis::ids::ConnectionId::parse("dev").unwrap();
    app.state.tenants.delete_connection(&demo, &dev).await.unwrap();
    app.state.broker.connectors.forget(&demo, &dev);
    assert_eq!(refresh_reason(&app, &rp, spare.rt()).await, "refresh.connection_gone");
    assert_tokens_dead(&app, &rp, &tokens, "token.connection_gone").await;

    create_dev_connection(&app, DEMO).await;
    assert_eq!(access_reason(&app, tokens.at()).await, "token.user_superseded");
    let refused = refresh(&app, &rp, tokens.rt()).await;
    assert_eq!(refused.error(), Some("invalid_grant"));
    // The browser's SSO session is of the old connection: not reused.
    let (nav, _) = start(&app, &mut browser, &rp, DEMO).await;
    assert!(nav.page().url.path().starts_with("/dev/demo/dev/login"));
    let fresh = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "cy@demo.example").await,
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    assert_ne!(fresh.sub(), tokens.sub());

    // Through the admin API the users of the deleted connection are purged too.
    let (status, _) = app
        .admin(Method::DELETE, "/admin/v1/tenants/demo/connections/dev", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for sub in [tokens.sub(), fresh.sub()] {
        assert!(app.state.provider.directory.get(&demo, &sub).await.unwrap().is_none());
    }
    assert_tokens_dead(&app, &rp, &fresh, "token.user_gone").await;
}

/// A deleted app: its refresh tokens need its (gone) authentication, its
/// access tokens are refused at userinfo and introspection.
#[tokio::test]
async fn a_deleted_app_loses_its_tokens() {
    let app = dev_app().await;
    let rp = register(&app, "doomed").await;
    let other = register(&app, "other").await;
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "di@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;

    let (status, _) = app.admin(Method::DELETE, "/admin/v1/clients/doomed", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let refused = refresh(&app, &rp, tokens.rt()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error(), Some("invalid_client"));
    assert_eq!(access_reason(&app, tokens.at()).await, "token.client_gone");
    assert_eq!(userinfo_status(&app, tokens.at()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(introspect(&app, &other, tokens.at()).await, json!({"active": false}));
}

/// An app deleted and registered again with the same id does not inherit
/// its predecessor's refresh families or access tokens.
#[tokio::test]
async fn a_reregistered_app_does_not_inherit_tokens() {
    use portcullis::clock::Clock as _;
    let clock = portcullis::clock::ManualClock::at(portcullis::clock::SystemClock.now());
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    let old = register(&app, "phoenix").await;
    let tokens = redeem(
        &app,
        &old,
        &sign_in(&app, &mut Browser::new(), &old, DEMO, "jo@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &old, &tokens).await;
    // A code the old registration was given and never redeemed.
    let unredeemed = sign_in(&app, &mut Browser::new(), &old, DEMO, "jo@demo.example").await;

    let (status, _) = app.admin(Method::DELETE, "/admin/v1/clients/phoenix", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    clock.advance(chrono::Duration::seconds(2));
    let new = register(&app, "phoenix").await;
    assert_eq!(
        refresh_reason(&app, &new, tokens.rt()).await,
        "refresh.client_superseded"
    );
    assert_eq!(refresh(&app, &new, tokens.rt()).await.error(), Some("invalid_grant"));
    assert_tokens_dead(&app, &new, &tokens, "token.client_superseded").await;
    assert_eq!(code_reason(&app, &new, &unredeemed).await, "code.client_superseded");
    // The new registration's own sign-ins work.
    let fresh = redeem(
        &app,
        &new,
        &sign_in(&app, &mut Browser::new(), &new, DEMO, "jo@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &new, &fresh).await;
    assert_eq!(refresh(&app, &new, fresh.rt()).await.status, StatusCode::OK);
}

/// The refresh family is peeked while the client authenticates (one store
/// wait): a client that fails to authenticate is refused as before, learns
/// nothing of the token, and the token keeps working for its own app.
#[tokio::test]
async fn a_refresh_by_a_client_that_fails_to_authenticate_changes_nothing() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let other = register(&app, "app2").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ed@demo.example").await,
    )
    .await;
    let req = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(tokens.rt().into()),
        ..TokenRequest::default()
    };
    // The family as the edge reads it for this token, alongside the limiter.
    let family = app.state.provider.peek_refresh(tokens.rt()).await.unwrap();
    assert!(family.is_some());
    for (creds, reason) in [
        (
            ClientCredentials::Secret {
                id: rp.client_id.clone(),
                secret: "not-the-secret".into(),
            },
            "client.bad_secret",
        ),
        (
            ClientCredentials::Secret {
                id: other.client_id.clone(),
                secret: rp.secret.clone(),
            },
            "client.bad_secret",
        ),
        (
            ClientCredentials::Secret {
                id: "no-such-app".into(),
                secret: rp.secret.clone(),
            },
            "client.unknown",
        ),
    ] {
        let refused = app
            .state
            .provider
            .token_for(&creds, &req, None, None)
            .await
            .unwrap_err();
        assert_eq!(refused.reason, reason);
        // The edge's read of another app's record is not this client's.
        let other_record = PrefetchedClient {
            id: rp.client_id.clone(),
            client: app.state.provider.clients.get(&rp.client_id).await.unwrap(),
            refresh: Some((tokens.rt().to_owned(), family.clone())),
            code: None,
        };
        let refused = app
            .state
            .provider
            .token_for(&creds, &req, None, Some(other_record))
            .await
            .unwrap_err();
        assert_eq!(refused.reason, reason);
    }
    let wrong = app
        .client
        .post(app.url("/token"))
        .basic_auth(&rp.client_id, Some("not-the-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", tokens.rt())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    // Still the current token of its family: it rotates for its own app.
    let rotated = refresh(&app, &rp, tokens.rt()).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_ne!(rotated.rt(), tokens.rt());

    // What the edge read is used only for the token it was read for: a
    // read of another token ("not current") does not refuse this one.
    let creds = ClientCredentials::Secret {
        id: rp.client_id.clone(),
        secret: rp.secret.clone(),
    };
    let req = TokenRequest {
        refresh_token: Some(rotated.rt().into()),
        ..req
    };
    let read_for_another = PrefetchedClient {
        id: rp.client_id.clone(),
        client: app.state.provider.clients.get(&rp.client_id).await.unwrap(),
        refresh: Some((tokens.rt().to_owned(), None)),
        code: None,
    };
    let next = app
        .state
        .provider
        .token_for(&creds, &req, None, Some(read_for_another.clone()))
        .await
        .unwrap();
    // And for its own token it is the answer: read as "not current", the
    // token is refused like one that is not.
    let req = TokenRequest {
        refresh_token: next.refresh_token.clone(),
        ..req
    };
    let read_as_gone = PrefetchedClient {
        refresh: Some((next.refresh_token.clone().unwrap_or_default(), None)),
        ..read_for_another
    };
    let refused = app
        .state
        .provider
        .token_for(&creds, &req, None, Some(read_as_gone))
        .await
        .unwrap_err();
    assert_eq!(refused.reason, "refresh.unknown");
}

/// A refresh token is its app's alone, for no more than it was granted:
/// another app (authenticated as itself) presenting it gets `invalid_grant`
/// (`refresh.wrong_client`) and consumes nothing; asking for a scope the
/// family was not granted is `invalid_scope` (`refresh.scope_widened`) and
/// consumes nothing either; a narrower scope is granted for that refresh
/// only (RFC 6749 §6: the next refresh token keeps the original scope).
#[tokio::test]
async fn a_refresh_token_is_refused_to_another_app_and_for_a_wider_scope_and_stays_its_apps() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let other = register(&app, "app2").await;
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "flo@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;

    // Another app, with its own valid credentials.
    assert_eq!(refresh_reason(&app, &other, tokens.rt()).await, "refresh.wrong_client");
    let refused = refresh(&app, &other, tokens.rt()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.error(), Some("invalid_grant"), "{}", refused.body);
    assert!(refused.body.get("access_token").is_none(), "{}", refused.body);

    // A wider scope than granted.
    let creds = ClientCredentials::Secret {
        id: rp.client_id.clone(),
        secret: rp.secret.clone(),
    };
    let client = app.state.provider.authenticate_client(&creds).await.unwrap();
    let widened = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(tokens.rt().into()),
        scope: Some("openid email profile offline_access".into()),
        ..TokenRequest::default()
    };
    let err = app.state.provider.token(&client, &widened).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_scope", "refresh.scope_widened")
    );

    // Nothing was consumed: the token rotates for its own app, narrowed.
    let narrowed = to_tokens(
        app.client
            .post(app.url("/token"))
            .basic_auth(&rp.client_id, Some(&rp.secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens.rt()),
                ("scope", "openid"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.body);
    assert_eq!(narrowed.body["scope"], "openid", "{}", narrowed.body);
    // The next refresh is granted the family's scope again.
    let next = refresh(&app, &rp, narrowed.rt()).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert_eq!(next.body["scope"], "openid email offline_access", "{}", next.body);
}

/// An app that may no longer serve the tenant cannot refresh, and its
/// access tokens for that tenant are refused.
#[tokio::test]
async fn refresh_is_refused_when_the_app_may_no_longer_serve_the_tenant() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ed@demo.example").await,
    )
    .await;
    let spare = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ed@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;

    let mut client = std::sync::Arc::unwrap_or_clone(app.state.provider.clients.get("app1").await.unwrap().unwrap());
    client.allowed_tenants = vec![TenantId::parse("globex").unwrap()];
    app.state.provider.clients.put(&client).await.unwrap();

    assert_eq!(
        refresh_reason(&app, &rp, spare.rt()).await,
        "refresh.tenant_not_allowed"
    );
    let refused = refresh(&app, &rp, tokens.rt()).await;
    assert_eq!(refused.error(), Some("invalid_grant"), "{}", refused.body);
    assert!(refused.description().contains("organization"), "{}", refused.body);
    assert_eq!(access_reason(&app, tokens.at()).await, "token.tenant_not_allowed");
    assert_eq!(userinfo_status(&app, tokens.at()).await, StatusCode::UNAUTHORIZED);
    // The refusal revoked the family: lifting the restriction does not revive it.
    client.allowed_tenants = vec![];
    app.state.provider.clients.put(&client).await.unwrap();
    assert_eq!(refresh(&app, &rp, tokens.rt()).await.error(), Some("invalid_grant"));
}

/// The users of a tenant through the admin API: list (paginated), read,
/// delete; a deleted user's sessions and tokens end.
#[tokio::test]
async fn deleting_a_user_revokes_its_sessions_and_tokens() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "fay@demo.example").await,
    )
    .await;
    let other = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "gus@demo.example").await,
    )
    .await;
    let pending_code = sign_in(&app, &mut browser, &rp, DEMO, "fay@demo.example").await;
    assert_tokens_live(&app, &rp, &tokens).await;
    let sub = tokens.sub();

    // The list: both users, with the contract's fields, one page at a time.
    let (status, page1) = app
        .admin(Method::GET, "/admin/v1/tenants/demo/users?limit=1", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    let users = page1["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    for field in ["sub", "email", "connection", "disabled", "created_at", "updated_at"] {
        assert!(users[0].get(field).is_some(), "{field} missing in {page1}");
    }
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .admin(
            Method::GET,
            &format!("/admin/v1/tenants/demo/users?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["users"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null(), "{page2}");
    let mut listed = vec![
        users[0]["sub"].as_str().unwrap().to_owned(),
        page2["users"][0]["sub"].as_str().unwrap().to_owned(),
    ];
    listed.sort();
    let mut expected = vec![sub.clone(), other.sub()];
    expected.sort();
    assert_eq!(listed, expected);
    let (status, one) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/demo/users/{sub}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["email"], "fay@demo.example");
    assert_eq!(one["connection"], "dev");
    assert_eq!(one["disabled"], false);

    let (status, _) = app
        .admin(Method::DELETE, &format!("/admin/v1/tenants/demo/users/{sub}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, p) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/demo/users/{sub}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
    assert_eq!(p["status"], 404, "{p}");

    // The family is gone (revoked eagerly), and the code's user is gone.
    assert_eq!(refresh_reason(&app, &rp, tokens.rt()).await, "refresh.unknown");
    assert_eq!(code_reason(&app, &rp, &pending_code).await, "code.user_gone");
    assert_tokens_dead(&app, &rp, &tokens, "token.user_gone").await;
    // The other user is untouched.
    assert_tokens_live(&app, &rp, &other).await;
    // The SSO session ended with the user: the next sign-in goes to the IdP
    // and creates a new user.
    let (nav, _) = start(&app, &mut browser, &rp, DEMO).await;
    assert!(nav.page().url.path().starts_with("/dev/demo/dev/login"));
    let fresh = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "fay@demo.example").await,
    )
    .await;
    assert_ne!(fresh.sub(), sub);
}

/// A disabled user: tokens refused at once, the SSO session not reused, a
/// new sign-in refused with a page naming the reason; enabling restores
/// sign-ins with the same `sub`.
#[tokio::test]
async fn a_disabled_user_cannot_sign_in_and_its_tokens_are_refused() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "hal@demo.example").await,
    )
    .await;
    let spare = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "hal@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;
    let sub = tokens.sub();

    let (status, user) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/demo/users/{sub}/disable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["disabled"], true);

    // Families are revoked eagerly; the check on use would refuse them anyway.
    assert_eq!(refresh_reason(&app, &rp, spare.rt()).await, "refresh.unknown");
    assert_eq!(refresh(&app, &rp, tokens.rt()).await.error(), Some("invalid_grant"));
    assert_tokens_dead(&app, &rp, &tokens, "token.user_disabled").await;

    // The SSO session is not reused; the IdP's answer is refused with a page.
    let (nav, _) = start(&app, &mut browser, &rp, DEMO).await;
    let login = nav.page();
    assert!(login.url.path().starts_with("/dev/demo/dev/login"), "{}", login.url);
    let refused = submit_login(&mut browser, &rp, &login, "hal@demo.example").await.page();
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("<code>login.user_disabled</code>"),
        "{}",
        refused.body
    );

    // Enabled again: sign-ins work, with the same sub.
    let (status, user) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/demo/users/{sub}/enable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["disabled"], false);
    let back = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "hal@demo.example").await,
    )
    .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.sub(), sub);
}

/// A code issued by the SSO session before the browser signed out ends
/// with it (`code.session_ended`): redeemed afterwards it gets no tokens
/// and starts no refresh family that would outlive the sign-out, with or
/// without `offline_access` (the family's start or a read of its own looks
/// for the session's end). A session the user's sign-out did not end still
/// redeems its codes.
#[tokio::test]
async fn a_code_issued_before_sign_out_is_refused_after_it() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let kept = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "ivy@demo.example").await,
    )
    .await;
    let sub = kept.sub();
    // Codes of the same SSO session, not redeemed before the sign-out.
    let with_refresh = sign_in(&app, &mut browser, &rp, DEMO, "ivy@demo.example").await;
    let for_reason = sign_in(&app, &mut browser, &rp, DEMO, "ivy@demo.example").await;
    let without_refresh = {
        let verifier = portcullis::tokens::random_token(32);
        let mut url = authorize_url(&app, &rp, DEMO, &verifier);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        url.query_pairs_mut().clear().extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if k == "scope" { "openid email" } else { v.as_str() })),
        );
        let host = rp.redirect.host_str().unwrap().to_owned();
        let back = browser
            .get_until(&url, &move |u: &Url| u.host_str() == Some(host.as_str()))
            .await
            .stopped();
        Code {
            code: code_of(&back),
            verifier,
        }
    };
    // Another browser's session of the same user.
    let mut other = Browser::new();
    let elsewhere = sign_in(&app, &mut other, &rp, DEMO, "ivy@demo.example").await;

    // Sign out in the browser: the question, then its confirmation.
    let ask = browser.get(&app.url("/logout")).await;
    let form = ask.form(Some("logout"));
    let done = browser.submit(&ask, &form).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("You are signed out"), "{}", done.body);

    let refused = redeem(&app, &rp, &with_refresh).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.error(), Some("invalid_grant"), "{}", refused.body);
    assert!(refused.body.get("refresh_token").is_none(), "{}", refused.body);
    let named = family_named_by(&app, &with_refresh).await;
    assert_eq!(family_left(&app, &named, &sub).await, (false, false), "family {named}");
    assert_eq!(code_reason(&app, &rp, &for_reason).await, "code.session_ended");
    assert_eq!(code_reason(&app, &rp, &without_refresh).await, "code.session_ended");
    // The family redeemed before the sign-out ended with it too.
    assert_eq!(refresh_reason(&app, &rp, kept.rt()).await, "refresh.unknown");

    let fine = redeem(&app, &rp, &elsewhere).await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.body);
}

/// Disabling a user ends its SSO sessions: a code issued before is
/// refused for the user's state while disabled, and stays refused once the
/// user is enabled again (`code.session_ended`).
#[tokio::test]
async fn a_code_issued_before_a_user_was_disabled_stays_refused_once_enabled() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let first = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut browser, &rp, DEMO, "joe@demo.example").await,
    )
    .await;
    let sub = first.sub();
    let pending = sign_in(&app, &mut browser, &rp, DEMO, "joe@demo.example").await;
    for action in ["disable", "enable"] {
        let (status, body) = app
            .admin(
                Method::POST,
                &format!("/admin/v1/tenants/demo/users/{sub}/{action}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(code_reason(&app, &rp, &pending).await, "code.session_ended");
}

/// A 200 from `/revoke` means the token is revoked (RFC 7009), also when it
/// is refused today for another reason that may pass: the deny-list entry
/// is written, so the token stays dead once its user is enabled again.
#[tokio::test]
async fn an_access_token_revoked_while_its_user_is_disabled_stays_revoked() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "rev@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &rp, &tokens).await;
    let user = format!("/admin/v1/tenants/demo/users/{}", tokens.sub());
    let (status, _) = app.admin(Method::POST, &format!("{user}/disable"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(access_reason(&app, tokens.at()).await, "token.user_disabled");
    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth(&rp.client_id, Some(&rp.secret))
        .form(&[("token", tokens.at())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = app.admin(Method::POST, &format!("{user}/enable"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(access_reason(&app, tokens.at()).await, "token.revoked");
    assert_eq!(userinfo_status(&app, tokens.at()).await, StatusCode::UNAUTHORIZED);
}

/// Unknown tenants and users are problem+json 404s.
#[tokio::test]
async fn unknown_users_and_tenants_are_404() {
    let app = dev_app().await;
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants/nosuch/users"),
        (Method::GET, "/admin/v1/tenants/nosuch/users/u_x"),
        (Method::GET, "/admin/v1/tenants/demo/users/u_nobody"),
        (Method::DELETE, "/admin/v1/tenants/demo/users/u_nobody"),
        (Method::POST, "/admin/v1/tenants/demo/users/u_nobody/disable"),
        (Method::POST, "/admin/v1/tenants/demo/users/u_nobody/enable"),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{path}");
    }
    let (status, p) = app
        .admin(Method::GET, "/admin/v1/tenants/demo/users?limit=0", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    let (status, _) = app
        .client
        .get(app.url("/admin/v1/tenants/demo/users"))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A sign-in started before the tenant was deleted and re-created (same id,
/// same connection id) belongs to the old tenant: the IdP's answer is refused.
#[tokio::test]
async fn a_pending_login_of_a_recreated_tenant_is_refused() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut browser = Browser::new();
    let (nav, _) = start(&app, &mut browser, &rp, DEMO).await;
    let login = nav.page();

    app.delete_tenant(DEMO).await;
    app.create_tenant(DEMO, "Demo again", &["demo.example"]).await;
    create_dev_connection(&app, DEMO).await;

    let refused = submit_login(&mut browser, &rp, &login, "ivy@demo.example").await.page();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(
        refused.body.contains("<code>callback.login_superseded</code>"),
        "{}",
        refused.body
    );
    // Refused before provisioning: the new tenant has no user from it.
    let (status, users) = app.admin(Method::GET, "/admin/v1/tenants/demo/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users["users"], json!([]), "{users}");
    // A login started now works.
    let fresh = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut Browser::new(), &rp, DEMO, "ivy@demo.example").await,
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
}

/// Each grant refusal names its reason even when only the records changed
/// (no eager revocation ran): the checks on use decide on their own.
#[tokio::test]
async fn grant_refusals_name_their_reason_without_eager_revocation() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let demo = TenantId::parse(DEMO).unwrap();
    let directory = &app.state.provider.directory;

    let mut kim = Browser::new();
    let t1 = redeem(&app, &rp, &sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await).await;
    let c1 = sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await;
    let sub = t1.sub();
    assert!(directory
        .set_disabled(&demo, &sub, true, portcullis::directory::DisabledBy::Admin)
        .await
        .unwrap());
    assert_eq!(refresh_reason(&app, &rp, t1.rt()).await, "refresh.user_disabled");
    assert_eq!(code_reason(&app, &rp, &c1).await, "code.user_disabled");
    // The family that redemption started alongside its reads is gone again.
    let named = family_named_by(&app, &c1).await;
    assert_eq!(family_left(&app, &named, &sub).await, (false, false), "family {named}");
    assert!(directory
        .set_disabled(&demo, &sub, false, portcullis::directory::DisabledBy::Admin)
        .await
        .unwrap());

    let t2 = redeem(&app, &rp, &sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await).await;
    let c2 = sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await;
    assert_eq!(t2.sub(), sub);
    assert!(directory.delete(&demo, &sub).await.unwrap().is_some());
    assert_eq!(refresh_reason(&app, &rp, t2.rt()).await, "refresh.user_gone");
    assert_eq!(code_reason(&app, &rp, &c2).await, "code.user_gone");

    let mut lee = Browser::new();
    let t3 = redeem(&app, &rp, &sign_in(&app, &mut lee, &rp, DEMO, "lee@demo.example").await).await;
    let c3 = sign_in(&app, &mut lee, &rp, DEMO, "lee@demo.example").await;
    let c4 = sign_in(&app, &mut lee, &rp, DEMO, "lee@demo.example").await;
    let dev = portcullis::ids::ConnectionId::parse("dev").unwrap();
    app.state.tenants.delete_connection(&demo, &dev).await.unwrap();
    app.state.broker.connectors.forget(&demo, &dev);
    assert_eq!(code_reason(&app, &rp, &c3).await, "code.connection_gone");
    create_dev_connection(&app, DEMO).await;
    assert_eq!(refresh_reason(&app, &rp, t3.rt()).await, "refresh.user_superseded");
    assert_eq!(code_reason(&app, &rp, &c4).await, "code.user_superseded");
}

/// An access token never outlives the refresh family it was minted with
/// (RFC 6749 §4.1.2, RFC 7009 §2.1): a refresh token presented twice, a
/// replayed code, or `/revoke` of the refresh token refuses every access
/// token of the family at once (`token.family_revoked`), not only its
/// refresh tokens; another family of the same user is untouched.
#[tokio::test]
async fn an_access_token_dies_with_its_refresh_family() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let mut kim = Browser::new();

    // A refresh token presented twice.
    let first = redeem(&app, &rp, &sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await).await;
    let other = redeem(&app, &rp, &sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await).await;
    let second = refresh(&app, &rp, first.rt()).await;
    let third = refresh(&app, &rp, second.rt()).await;
    for t in [&first, &other, &second, &third] {
        assert_eq!(userinfo_status(&app, t.at()).await, StatusCode::OK, "{}", t.body);
    }
    assert_eq!(refresh(&app, &rp, first.rt()).await.error(), Some("invalid_grant"));
    for t in [&first, &second, &third] {
        assert_eq!(access_reason(&app, t.at()).await, "token.family_revoked");
        assert_eq!(userinfo_status(&app, t.at()).await, StatusCode::UNAUTHORIZED);
        assert_eq!(introspect(&app, &rp, t.at()).await, json!({"active": false}));
    }
    assert_tokens_live(&app, &rp, &other).await;

    // `/revoke` of the current refresh token.
    let refreshed = refresh(&app, &rp, other.rt()).await;
    assert_tokens_live(&app, &rp, &refreshed).await;
    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth(&rp.client_id, Some(&rp.secret))
        .form(&[("token", refreshed.rt()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for t in [&other, &refreshed] {
        assert_tokens_dead(&app, &rp, t, "token.family_revoked").await;
    }

    // A replayed code: its own access token is denied by `jti`, those its
    // family minted since by the family.
    let code = sign_in(&app, &mut kim, &rp, DEMO, "kim@demo.example").await;
    let redeemed = redeem(&app, &rp, &code).await;
    let later = refresh(&app, &rp, redeemed.rt()).await;
    assert_tokens_live(&app, &rp, &later).await;
    assert_eq!(code_reason(&app, &rp, &code).await, "code.reused");
    assert_eq!(access_reason(&app, redeemed.at()).await, "token.revoked");
    assert_tokens_dead(&app, &rp, &later, "token.family_revoked").await;

    // The claim names the family without a part of its refresh tokens.
    let claims = |at: &str| -> Value {
        use base64::Engine;
        let payload = at.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let fam = claims(later.at())["fam"].as_str().unwrap().to_owned();
    assert_eq!(
        claims(redeemed.at())["fam"].as_str(),
        Some(fam.as_str()),
        "one family, one claim"
    );
    assert!(
        !later.rt().contains(&fam),
        "the claim is not a part of the refresh token"
    );
}

/// A dev gateway on the memory store, with the test's clock, and that
/// store, so [`restarted`] can start the gateway again on it.
async fn restartable(clock: &portcullis::clock::ManualClock) -> (TestApp, portcullis::store::SharedStore) {
    let opened: Arc<Mutex<Option<portcullis::store::SharedStore>>> = Arc::default();
    let keep = opened.clone();
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        wrap_store: Some(Arc::new(move |store| {
            *keep.lock().unwrap() = Some(store.clone());
            store
        })),
        ..AppOptions::default()
    })
    .await;
    let store = opened.lock().unwrap().clone().unwrap();
    (app, store)
}

/// `app` restarted with `configure` applied to its settings (another
/// configuration, the same store, clock and issuer): the store it opens
/// is dropped for `store`. Requests to the answer go to the restarted
/// gateway's listener.
async fn restarted(
    app: &TestApp,
    store: portcullis::store::SharedStore,
    clock: &portcullis::clock::ManualClock,
    configure: fn(&mut portcullis::config::Settings),
) -> TestApp {
    let issuer = app.issuer();
    let replica = crate::support::gateway::spawn_with_public_url(
        AppOptions {
            dev: true,
            clock: Some(clock.clone()),
            configure: Some(Arc::new(configure)),
            wrap_store: Some(Arc::new(move |_| store.clone())),
            ..AppOptions::default()
        },
        |_| issuer,
    )
    .await;
    TestApp {
        base: replica.listen,
        ..replica.app
    }
}

/// The marker of a revoked family outlives every access token minted with
/// it, whatever lifetime it was minted with: an access token minted for an
/// hour, before `access_token_ttl_secs` was lowered to five minutes and the
/// gateway restarted, stays refused (`token.family_revoked`) once its
/// family is revoked after the restart, past the new lifetime (and the
/// minute of margin) while it has not expired.
#[tokio::test]
async fn an_access_token_minted_before_the_ttl_was_lowered_stays_refused_after_its_family_is_revoked() {
    use portcullis::clock::Clock as _;
    let clock = portcullis::clock::ManualClock::at(portcullis::clock::SystemClock.now());
    let (before, store) = restartable(&clock).await;
    let rp = register(&before, "app1").await;
    let first = redeem(
        &before,
        &rp,
        &sign_in(&before, &mut Browser::new(), &rp, DEMO, "kim@demo.example").await,
    )
    .await;
    let second = refresh(&before, &rp, first.rt()).await;
    assert_tokens_live(&before, &rp, &second).await;
    let lifetime = claims_of(second.at())["exp"].as_i64().unwrap() - clock.unix();
    assert_eq!(lifetime, 3600, "minted with the hour of the first configuration");

    let after = restarted(&before, store, &clock, |s| s.tokens.access_token_ttl_secs = 300).await;
    assert_eq!(userinfo_status(&after, second.at()).await, StatusCode::OK);
    // The first refresh token presented again: the restarted gateway
    // revokes the family.
    assert_eq!(refresh(&after, &rp, first.rt()).await.error(), Some("invalid_grant"));
    assert_eq!(access_reason(&after, second.at()).await, "token.family_revoked");

    // Past the new lifetime and its minute, before the token's own expiry.
    clock.advance(chrono::Duration::seconds(300 + 60 + 60));
    assert_eq!(access_reason(&after, second.at()).await, "token.family_revoked");
    assert_eq!(userinfo_status(&after, second.at()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(introspect(&after, &rp, second.at()).await, json!({"active": false}));
    clock.advance(chrono::Duration::seconds(2400));
    assert_eq!(access_reason(&after, second.at()).await, "token.family_revoked");
}

/// A deleted app's tombstone outlives every refresh family issued to it,
/// whatever lifetime the family was started with: a family started for
/// thirty days, before `refresh_token_ttl_secs` was lowered to five minutes
/// and the gateway restarted, is refused to an app registered again with
/// the same id (`refresh.client_superseded`) past the new lifetime.
#[tokio::test]
async fn a_family_started_before_the_refresh_ttl_was_lowered_is_not_inherited_by_a_reregistered_app() {
    use portcullis::clock::Clock as _;
    let clock = portcullis::clock::ManualClock::at(portcullis::clock::SystemClock.now());
    let (before, store) = restartable(&clock).await;
    let old = register(&before, "phoenix").await;
    let tokens = redeem(
        &before,
        &old,
        &sign_in(&before, &mut Browser::new(), &old, DEMO, "jo@demo.example").await,
    )
    .await;
    assert_tokens_live(&before, &old, &tokens).await;

    let after = restarted(&before, store, &clock, |s| s.tokens.refresh_token_ttl_secs = 300).await;
    let (status, _) = after.admin(Method::DELETE, "/admin/v1/clients/phoenix", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Past the new lifetime and the access tokens' (the tombstone was kept
    // for the longer of the two), well within the family's.
    clock.advance(chrono::Duration::seconds(2 * 3600));
    let new = register(&after, "phoenix").await;
    assert_eq!(
        refresh_reason(&after, &new, tokens.rt()).await,
        "refresh.client_superseded"
    );
}

/// The claims of a JWT (not verified: the test's own tokens).
fn claims_of(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Signs in to `rp` in `browser` as `email` again although the browser has
/// a session (`prompt=login`), and redeems the code.
async fn sign_in_again(app: &TestApp, browser: &mut Browser, rp: &Rp, email: &str) -> Tokens {
    let verifier = portcullis::tokens::random_token(32);
    let mut url = authorize_url(app, rp, DEMO, &verifier);
    url.query_pairs_mut().append_pair("prompt", "login");
    let host = rp.redirect.host_str().unwrap().to_owned();
    let login = match browser
        .get_until(&url, &move |u: &Url| u.host_str() == Some(host.as_str()))
        .await
    {
        Nav::Page(login) => login,
        Nav::Stopped(url) => panic!("prompt=login answered from the session: {url}"),
    };
    let back = submit_login(browser, rp, &login, email).await.stopped();
    let tokens = redeem(
        app,
        rp,
        &Code {
            code: code_of(&back),
            verifier,
        },
    )
    .await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    tokens
}

/// Signing in again in the same browser (`prompt=login`; likewise
/// `max_age`, a required MFA, another connection) replaces the browser's
/// SSO session for the tenant, but not what the replaced session issued:
/// signing out ends the replaced session with the new one, whether an
/// app's ID token of the replaced session is the hint or the person
/// confirms on the form. Its refresh family is revoked (`refresh.unknown`,
/// its access tokens `token.family_revoked`), and a code it issued before
/// the sign-out is refused (`code.session_ended`).
#[tokio::test]
async fn a_sign_out_ends_the_session_a_reauthentication_replaced() {
    let app = dev_app().await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    for hinted in [true, false] {
        let email = if hinted { "uma@demo.example" } else { "una@demo.example" };
        let mut browser = Browser::new();
        let first = redeem(&app, &app1, &sign_in(&app, &mut browser, &app1, DEMO, email).await).await;
        assert_tokens_live(&app, &app1, &first).await;
        // A code of the same session, not redeemed before the sign-out.
        let unredeemed = sign_in(&app, &mut browser, &app1, DEMO, email).await;
        let second = sign_in_again(&app, &mut browser, &app2, email).await;
        let sid = |t: &Tokens| claims_of(t.body["id_token"].as_str().unwrap())["sid"].clone();
        assert_ne!(sid(&first), sid(&second), "a new session");
        assert_eq!(first.sub(), second.sub());
        // Until the sign-out, the replaced session's family lives on.
        assert_tokens_live(&app, &app1, &first).await;

        let done = if hinted {
            let mut out = app.url("/logout");
            out.query_pairs_mut()
                .append_pair("id_token_hint", first.body["id_token"].as_str().unwrap());
            browser.get(&out).await
        } else {
            let ask = browser.get(&app.url("/logout")).await;
            let form = ask.form(Some("logout"));
            browser.submit(&ask, &form).await
        };
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert!(done.body.contains("You are signed out"), "{}", done.body);

        assert_eq!(
            access_reason(&app, first.at()).await,
            "token.family_revoked",
            "hinted {hinted}"
        );
        assert_eq!(code_reason(&app, &app1, &unredeemed).await, "code.session_ended");
        assert_eq!(refresh_reason(&app, &app1, first.rt()).await, "refresh.unknown");
        assert_tokens_dead(&app, &app2, &second, "token.family_revoked").await;
    }
}

/// A sign-in as another user in the same browser ends the session it
/// replaces at once (the browser changed hands): the first user's refresh
/// family is revoked and their codes refused (`code.session_ended`), the
/// new user's session and tokens are untouched.
#[tokio::test]
async fn a_sign_in_as_another_user_ends_the_session_it_replaces() {
    let app = dev_app().await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    let mut browser = Browser::new();
    let first = redeem(
        &app,
        &app1,
        &sign_in(&app, &mut browser, &app1, DEMO, "uma@demo.example").await,
    )
    .await;
    assert_tokens_live(&app, &app1, &first).await;
    let unredeemed = sign_in(&app, &mut browser, &app1, DEMO, "uma@demo.example").await;
    let other = sign_in_again(&app, &mut browser, &app2, "vic@demo.example").await;
    assert_ne!(first.sub(), other.sub());

    assert_eq!(access_reason(&app, first.at()).await, "token.family_revoked");
    assert_eq!(code_reason(&app, &app1, &unredeemed).await, "code.session_ended");
    assert_eq!(refresh_reason(&app, &app1, first.rt()).await, "refresh.unknown");
    assert_tokens_live(&app, &app2, &other).await;
    // The browser is the new user's: app1 gets a code of vic's session.
    let now = redeem(
        &app,
        &app1,
        &sign_in(&app, &mut browser, &app1, DEMO, "uma@demo.example").await,
    )
    .await;
    assert_eq!(now.sub(), other.sub());
}

/// A sign-out whose `id_token_hint` names a session this browser never
/// recorded as its own or as replaced: one replaced before sessions listed
/// what they replace (the record holds no `replaces`), or one the same user
/// opened in another browser. The browser is signed in as the hint's user,
/// so the hint's session ends with the browser's, at once (no question):
/// its refresh family is revoked (`refresh.unknown`, its access tokens
/// `token.family_revoked`).
#[tokio::test]
async fn a_sign_out_ends_the_hinted_session_of_its_user_the_browser_never_recorded() {
    use crate::support::logs::Captured;
    let app = dev_app().await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    let demo = TenantId::parse(DEMO).unwrap();
    let sid = |t: &Tokens| {
        claims_of(t.body["id_token"].as_str().unwrap())["sid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for elsewhere in [false, true] {
        let email = if elsewhere {
            "wil@demo.example"
        } else {
            "win@demo.example"
        };
        let mut browser = Browser::new();
        let current = redeem(&app, &app1, &sign_in(&app, &mut browser, &app1, DEMO, email).await).await;
        assert_tokens_live(&app, &app1, &current).await;
        let (hinted, current) = if elsewhere {
            // The same user's session in another browser.
            let mut other = Browser::new();
            let there = redeem(&app, &app2, &sign_in(&app, &mut other, &app2, DEMO, email).await).await;
            (there, current)
        } else {
            // Replaced by signing in again, and forgotten by the record, as
            // a session replaced before the record listed them would be.
            let again = sign_in_again(&app, &mut browser, &app2, email).await;
            let mut record = portcullis::broker::session::get(&app.state.store, &demo, &sid(&again))
                .await
                .unwrap()
                .expect("the browser's session");
            assert_eq!(record.replaces, [sid(&current)]);
            record.replaces.clear();
            portcullis::broker::session::save(&app.state.store, &record, std::time::Duration::from_secs(3600), None)
                .await
                .unwrap();
            (current, again)
        };
        assert_ne!(sid(&hinted), sid(&current));
        assert_eq!(hinted.sub(), current.sub());
        let (hinted_rp, current_rp) = if elsewhere { (&app2, &app1) } else { (&app1, &app2) };
        assert_tokens_live(&app, current_rp, &current).await;
        assert_tokens_live(&app, hinted_rp, &hinted).await;

        let (logs, _guard) = Captured::start();
        let mut out = app.url("/logout");
        out.query_pairs_mut()
            .append_pair("id_token_hint", hinted.body["id_token"].as_str().unwrap());
        let done = browser.get(&out).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert!(
            done.body.contains("You are signed out"),
            "elsewhere {elsewhere}: {}",
            done.body
        );
        let signed_out = logs.with_reason("logout.succeeded");
        assert_eq!(signed_out.len(), 1, "{}", logs.text());
        assert_eq!(signed_out[0]["fields"]["confirmed"], json!(false), "{}", logs.text());

        assert_eq!(
            access_reason(&app, hinted.at()).await,
            "token.family_revoked",
            "elsewhere {elsewhere}"
        );
        assert_eq!(
            refresh_reason(&app, hinted_rp, hinted.rt()).await,
            "refresh.unknown",
            "elsewhere {elsewhere}"
        );
        assert_tokens_dead(&app, current_rp, &current, "token.family_revoked").await;
    }
}

/// A sign-out's `id_token_hint` of another user's session, or of a session
/// at another tenant, ends nothing of it: the browser is not signed in as
/// that user there, so the hint does not even spare the question (the
/// confirmation form), an app's form post of it without the form's token is
/// refused (`logout.csrf_missing`), and confirming signs this browser out
/// while the hinted session's refresh family keeps working.
#[tokio::test]
async fn a_sign_out_hinting_at_another_users_or_tenants_session_ends_nothing_of_it() {
    use crate::support::logs::Captured;
    let app = dev_app().await;
    app.create_tenant("acme", "Acme", &[]).await;
    create_dev_connection(&app, "acme").await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    for tenant in [DEMO, "acme"] {
        let mut browser = Browser::new();
        let mine = redeem(
            &app,
            &app1,
            &sign_in(&app, &mut browser, &app1, DEMO, "xia@demo.example").await,
        )
        .await;
        assert_tokens_live(&app, &app1, &mine).await;
        // Another user of the same tenant, or the same person at another
        // tenant, in another browser.
        let email = if tenant == DEMO {
            "yan@demo.example"
        } else {
            "xia@demo.example"
        };
        let mut other = Browser::new();
        let theirs = redeem(&app, &app2, &sign_in(&app, &mut other, &app2, tenant, email).await).await;
        assert_tokens_live(&app, &app2, &theirs).await;
        assert_ne!(mine.sub(), theirs.sub());
        let hint = theirs.body["id_token"].as_str().unwrap();

        // An app's form post of the hint, even one the browser's cookie
        // comes along with: refused, nothing ended.
        let logout = app.url("/logout");
        let fields = [("id_token_hint".to_owned(), hint.to_owned())];
        let posted = browser
            .send(Method::POST, &logout, Some(&fields), Some(&app.base))
            .await;
        assert!(!posted.cookies_sent.is_empty(), "no cookie sent");
        assert_eq!(posted.status, StatusCode::FORBIDDEN, "{}", posted.body);
        assert!(
            posted.body.contains("<code>logout.csrf_missing</code>"),
            "{}",
            posted.body
        );

        // A link with the hint: the question, which the person confirms.
        let mut out = logout.clone();
        out.query_pairs_mut().append_pair("id_token_hint", hint);
        let ask = browser.get(&out).await;
        assert_eq!(ask.status, StatusCode::OK, "{}", ask.body);
        let form = ask.form(Some("logout"));
        assert_eq!(form.field("id_token_hint"), Some(hint), "{}", ask.body);
        assert_tokens_live(&app, &app1, &mine).await;
        let (logs, _guard) = Captured::start();
        let done = browser.submit(&ask, &form).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert!(done.body.contains("You are signed out"), "{}", done.body);
        let signed_out = logs.with_reason("logout.succeeded");
        assert_eq!(signed_out.len(), 1, "{}", logs.text());
        assert_eq!(signed_out[0]["fields"]["confirmed"], json!(true), "{}", logs.text());

        // This browser's session ended; the hinted one did not.
        assert_eq!(refresh_reason(&app, &app1, mine.rt()).await, "refresh.unknown");
        let refreshed = refresh(&app, &app2, theirs.rt()).await;
        assert_eq!(refreshed.status, StatusCode::OK, "tenant {tenant}: {}", refreshed.body);
        assert_tokens_live(&app, &app2, &refreshed).await;
        assert_eq!(refreshed.sub(), theirs.sub());
        let (nav, _) = start(&app, &mut other, &app2, tenant).await;
        assert!(
            matches!(nav, Nav::Stopped(_)),
            "tenant {tenant}: the hinted browser's SSO session ended"
        );
    }
}
