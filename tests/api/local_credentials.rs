//! What a local account's credentials reset does to tokens already issued,
//! and what revoking a token does to the tokens exchanged for it (issue 10):
//! a force-reset, a reset by code or a password change refuses the account's
//! access tokens issued before it (`token.credentials_reset`) at userinfo,
//! introspection, forward auth and token exchange, and its codes and
//! refresh families of an earlier authentication; a token obtained by RFC
//! 8693 exchange is refused once its subject token is revoked
//! (`token.subject_revoked`), also two exchanges deep.

use crate::support::app::TestApp;
use crate::support::local::{Gateway, World};
use portcullis::clock::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FILES: &str = "https://files.example.test";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const PASSWORD: &str = "Tangerine-Orbit-42";

const WORLD: World = World {
    tenant: "acme",
    connection: "pw",
    client: "local-app",
    scope: "openid email files:read offline_access",
};

fn clock() -> ManualClock {
    crate::support::local::far_clock()
}

/// A gateway on a manual clock with the local world, the API `FILES`, the
/// app allowed `files:read` there (its default) and to exchange tokens, an
/// exchange rule for every user, and the account `email`.
async fn world(clock: &ManualClock, email: &str) -> Gw {
    world_on(clock, email, None).await
}

/// [`world`] on the store `redis` (a URL and key prefix; none: memory).
async fn world_on(clock: &ManualClock, email: &str, redis: Option<(String, String)>) -> Gw {
    let app = Gateway {
        clock: Some(clock.clone()),
        redis,
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create_connection(&app, "Acme Corp", "acme.example").await;
    app.admin_create(
        "/admin/v1/resource-servers",
        json!({"identifier": FILES, "scopes": [{"name": "files:read"}]}),
    )
    .await;
    let client = app
        .admin_create(
            "/admin/v1/clients",
            json!({
                "client_id": WORLD.client,
                "redirect_uris": [crate::support::local::REDIRECT],
                "public": false,
                "allowed_scopes": ["files:read"],
                "default_resource": FILES,
                "grant_types": ["authorization_code", "refresh_token", EXCHANGE],
            }),
        )
        .await;
    let secret = client["client_secret"].as_str().unwrap().to_owned();
    app.admin_create(
        &format!("/admin/v1/tenants/{}/exchange-rules", WORLD.tenant),
        json!({"id": "everyone", "resource": FILES, "scopes": ["files:read"]}),
    )
    .await;
    WORLD.account(&app, email, PASSWORD).await;
    Gw { app, secret }
}

/// The gateway and the app's secret.
struct Gw {
    app: TestApp,
    secret: String,
}

impl Gw {
    async fn sign_in(&self, email: &str, password: &str) -> Value {
        WORLD.sign_in(&self.app, email, password, Some(&self.secret)).await
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.app
            .client
            .post(self.app.url(path))
            .basic_auth(WORLD.client, Some(&self.secret))
    }
}

/// Forward auth for `FILES`/`files:read`: the status and `X-Portcullis-Reason`.
async fn forward(app: &TestApp, token: &str) -> (StatusCode, String) {
    let mut url = app.url("/forward-auth");
    url.query_pairs_mut()
        .append_pair("resource", FILES)
        .append_pair("scope", "files:read");
    let resp = app.client.get(url).bearer_auth(token).send().await.unwrap();
    let reason = resp
        .headers()
        .get("x-portcullis-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (resp.status(), reason)
}

/// `/introspect` by the app: whether the token is active.
async fn introspect(gw: &Gw, token: &str) -> bool {
    let resp = gw.post("/introspect").form(&[("token", token)]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    v["active"].as_bool().unwrap()
}

/// `/userinfo` with the token: the status.
async fn userinfo(app: &TestApp, token: &str) -> StatusCode {
    app.client
        .get(app.url("/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// The exchange request for `subject` to `FILES`.
fn exchange_request(subject: &str) -> portcullis::provider::grants::TokenRequest {
    portcullis::provider::grants::TokenRequest {
        grant_type: Some(EXCHANGE.into()),
        subject_token: Some(subject.into()),
        subject_token_type: Some(ACCESS_TOKEN.into()),
        resource: Some(FILES.into()),
        ..Default::default()
    }
}

/// Exchanges `subject` at `/token`: the status and answer.
async fn exchange(gw: &Gw, subject: &str) -> (StatusCode, Value) {
    let resp = gw
        .post("/token")
        .form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("resource", FILES),
        ])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

/// The provider's reason for refusing an exchange of `subject`.
async fn exchange_reason(app: &TestApp, subject: &str) -> &'static str {
    let provider = &app.state.provider;
    let client = provider.clients.get(WORLD.client).await.unwrap().unwrap();
    provider
        .token(&client, &exchange_request(subject))
        .await
        .unwrap_err()
        .reason
}

/// Every endpoint family refuses `token` with `reason`.
async fn refused_everywhere(gw: &Gw, token: &str, reason: &str) {
    let app = &gw.app;
    let provider = &app.state.provider;
    assert_eq!(provider.check_access_token(token).await.unwrap_err().reason, reason);
    assert_eq!(provider.userinfo(token).await.unwrap_err().reason, reason);
    assert_eq!(userinfo(app, token).await, StatusCode::UNAUTHORIZED);
    assert!(!introspect(gw, token).await, "introspection says inactive");
    assert_eq!(forward(app, token).await, (StatusCode::UNAUTHORIZED, reason.to_owned()));
    let (status, body) = exchange(gw, token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(exchange_reason(app, token).await, reason);
}

async fn accepted_everywhere(gw: &Gw, token: &str) {
    let app = &gw.app;
    assert_eq!(userinfo(app, token).await, StatusCode::OK);
    assert!(introspect(gw, token).await);
    assert_eq!(forward(app, token).await.0, StatusCode::OK);
}

async fn refresh(gw: &Gw, rt: &str) -> (StatusCode, Value) {
    let resp = gw
        .post("/token")
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_force_reset_refuses_the_access_tokens_already_issued_at_every_endpoint() {
    let clock = clock();
    let email = "ada@acme.example";
    let gw = world(&clock, email).await;
    let app = &gw.app;
    let tokens = gw.sign_in(email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, exchanged) = exchange(&gw, &access).await;
    assert_eq!(status, StatusCode::OK, "{exchanged}");
    let exchanged = exchanged["access_token"].as_str().unwrap().to_owned();
    accepted_everywhere(&gw, &access).await;
    assert_eq!(forward(app, &exchanged).await.0, StatusCode::OK);

    clock.advance(chrono::Duration::seconds(1));
    let (status, body) = app
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/tenants/{}/connections/{}/users/ada%40acme.example/force-reset",
                WORLD.tenant, WORLD.connection
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused_everywhere(&gw, &access, "token.credentials_reset").await;
    // The exchanged token was issued before the reset too.
    assert_eq!(
        forward(app, &exchanged).await,
        (StatusCode::UNAUTHORIZED, "token.credentials_reset".to_owned())
    );
    // The refresh family ended with the reset.
    let (status, body) = refresh(&gw, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn a_password_change_refuses_earlier_tokens_and_codes_but_not_the_new_sign_ins() {
    let clock = clock();
    let email = "lin@acme.example";
    let gw = world(&clock, email).await;
    let app = &gw.app;
    let before = gw.sign_in(email, PASSWORD).await;
    let before = before["access_token"].as_str().unwrap().to_owned();

    // A code of an authentication before the change, redeemed after it.
    let p = crate::support::local::pkce();
    let mut browser = crate::support::browser::Browser::new();
    let page = WORLD.start(app, &mut browser, &p).await;
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", PASSWORD);
    let back = browser
        .submit_until(&page, &form, &crate::support::local::at_app)
        .await
        .stopped();
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();

    clock.advance(chrono::Duration::seconds(1));
    let new_password = "Marigold-Canyon-77";
    let user = app
        .state
        .accounts
        .change_password(
            &WORLD.t(),
            &WORLD.c(),
            &Default::default(),
            email,
            &portcullis::secret::Secret::new(PASSWORD),
            &portcullis::secret::Secret::new(new_password),
        )
        .await
        .unwrap();
    app.state
        .broker
        .revoke_local_account(&WORLD.t(), &WORLD.c(), &user.subject)
        .await
        .unwrap();
    refused_everywhere(&gw, &before, "token.credentials_reset").await;
    let provider = &app.state.provider;
    let client = provider.clients.get(WORLD.client).await.unwrap().unwrap();
    let redeemed = provider
        .token(
            &client,
            &portcullis::provider::grants::TokenRequest {
                grant_type: Some("authorization_code".into()),
                code: Some(code),
                redirect_uri: Some(crate::support::local::REDIRECT.into()),
                code_verifier: Some(p.verifier.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(redeemed.reason, "code.credentials_reset");

    // A sign-in with the new password in the same second works.
    let after = gw.sign_in(email, new_password).await;
    accepted_everywhere(&gw, after["access_token"].as_str().unwrap()).await;
}

#[tokio::test]
async fn an_exchanged_token_dies_with_its_subject_token_also_two_exchanges_deep() {
    let clock = clock();
    let email = "kim@acme.example";
    let gw = world(&clock, email).await;
    let app = &gw.app;
    let tokens = gw.sign_in(email, PASSWORD).await;
    let subject = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, one) = exchange(&gw, &subject).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let one = one["access_token"].as_str().unwrap().to_owned();
    let (status, two) = exchange(&gw, &one).await;
    assert_eq!(status, StatusCode::OK, "{two}");
    let two = two["access_token"].as_str().unwrap().to_owned();
    for t in [&one, &two] {
        assert_eq!(forward(app, t).await.0, StatusCode::OK);
        assert!(introspect(&gw, t).await);
    }
    // An unrelated token of the same user stays valid.
    let other = gw.sign_in(email, PASSWORD).await;
    let other = other["access_token"].as_str().unwrap().to_owned();

    let resp = gw
        .post("/revoke")
        .form(&[("token", subject.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let provider = &app.state.provider;
    for t in [&one, &two] {
        assert_eq!(
            forward(app, t).await,
            (StatusCode::UNAUTHORIZED, "token.subject_revoked".to_owned())
        );
        assert!(!introspect(&gw, t).await);
        assert_eq!(
            provider.check_access_token(t).await.unwrap_err().reason,
            "token.subject_revoked"
        );
        assert_eq!(exchange_reason(app, t).await, "token.subject_revoked");
    }
    accepted_everywhere(&gw, &other).await;

    // Revoking the middle token ends only what was exchanged for it.
    let (status, three) = exchange(&gw, &other).await;
    assert_eq!(status, StatusCode::OK, "{three}");
    let three = three["access_token"].as_str().unwrap().to_owned();
    let (_, four) = exchange(&gw, &three).await;
    let four = four["access_token"].as_str().unwrap().to_owned();
    let resp = gw
        .post("/revoke")
        .form(&[("token", three.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        forward(app, &four).await,
        (StatusCode::UNAUTHORIZED, "token.subject_revoked".to_owned())
    );
    assert_eq!(forward(app, &other).await.0, StatusCode::OK);
}

/// The revocation after a password change or reset runs to its end even
/// when the request that asked for it is dropped (its client gone) right
/// after the new password was stored: the new password never stands with
/// the old sessions and tokens alive.
#[tokio::test]
async fn the_revocation_after_a_password_change_outlives_its_dropped_request() {
    use crate::support::redis;
    let clock = clock();
    let email = "ada@acme.example";
    // Over Redis, where every store step waits for its answer.
    let server = redis::RedisServer::start();
    let gw = world_on(&clock, email, Some((server.url(), redis::prefix()))).await;
    let app = &gw.app;
    let tokens = gw.sign_in(email, PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    accepted_everywhere(&gw, &access).await;
    clock.advance(chrono::Duration::seconds(1));
    let (t, c) = (WORLD.t(), WORLD.c());
    let account = app.state.accounts.get(&t, &c, email).await.unwrap().unwrap();
    // The request is dropped after its first step, as when its client goes.
    let mut revoking = Box::pin(
        app.state
            .broker
            .revoke_local_account_after_change(&t, &c, &account.subject),
    );
    let first =
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(revoking.as_mut(), cx))).await;
    assert!(first.is_pending(), "finished at once: nothing to show");
    drop(revoking);
    for _ in 0..100 {
        if app.state.provider.check_access_token(&access).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    refused_everywhere(&gw, &access, "token.credentials_reset").await;
    let (status, body) = refresh(&gw, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
}
