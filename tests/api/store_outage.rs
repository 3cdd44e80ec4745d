//! A store outage, on a real Redis the test stops and starts again: every
//! browser route answers a fast 503 page with `Retry-After`, the OAuth
//! endpoints RFC 6749 `temporarily_unavailable` JSON, the admin API
//! problem+json; no sign-in goes on half-written (no redirect to the IdP
//! without a stored pending login and a saved session); `/readyz` is unready
//! while `/healthz` stays live; and the gateway recovers by itself.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis::RedisServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The most a request may take while the store is down or frozen: each
/// store operation has a 2 s deadline (a retry included), and the slowest
/// route, `/authorize`, makes two before it gives up (the rate limiter, which
/// fails open there, then the pending login's write).
const FAST: Duration = Duration::from_millis(4500);

async fn timed(req: reqwest::RequestBuilder) -> reqwest::Response {
    let start = Instant::now();
    let resp = req.send().await.unwrap();
    assert!(start.elapsed() < FAST, "answered after {:?}", start.elapsed());
    resp
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on {}", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// A 503 page with `Retry-After`, no redirect, naming `reason`.
async fn unavailable_page(resp: reqwest::Response, what: &str, reason: &str) {
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(resp.headers().contains_key("retry-after"), "{what}: Retry-After");
    assert!(resp.headers().get("location").is_none(), "{what}: no redirect");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{what}: a page"
    );
    let page = resp.text().await.unwrap();
    assert!(page.contains(&format!("<code>{reason}</code>")), "{what}: {page}");
    assert!(
        !page.contains("Redis") && !page.contains("Connection refused"),
        "{what}: no detail sent"
    );
}

/// A 503 `temporarily_unavailable` with `Retry-After` and nothing of the
/// store's words: not in the body, not in any header (no
/// `WWW-Authenticate`: nothing was refused).
async fn unavailable_json(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(resp.headers().contains_key("retry-after"), "{what}: Retry-After");
    assert!(
        resp.headers().get("www-authenticate").is_none(),
        "{what}: {:?}",
        resp.headers().get("www-authenticate")
    );
    let detail = |s: &str| {
        ["Redis", "WRONGTYPE", "store unavailable", "Connection refused"]
            .iter()
            .any(|w| s.contains(w))
    };
    for (name, value) in resp.headers() {
        let v = value.to_str().unwrap_or_default();
        assert!(!detail(v), "{what}: {name}: {v}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{what}: {body}");
    assert!(!detail(&body.to_string()), "{what}: no detail sent: {body}");
}

async fn outage_answers(app: &TestApp, authorize: &str, what: &str) {
    let c = &app.client;
    // Liveness stays, readiness goes.
    let live = timed(c.get(app.url("/healthz"))).await;
    assert_eq!(live.status(), StatusCode::OK, "{what}");
    let ready = timed(c.get(app.url("/readyz"))).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    // A sign-in cannot start: the pending login cannot be stored, so the
    // browser is not sent to the IdP.
    let resp = timed(c.get(authorize)).await;
    unavailable_page(resp, &format!("{what} /authorize"), "store.unavailable").await;
    // The demo app's session cannot be saved: 503, not the redirect.
    let resp = timed(c.get(app.url("/demo/login"))).await;
    unavailable_page(resp, &format!("{what} /demo/login"), "session.save_failed").await;
    // The IdP callbacks.
    let resp = timed(c.get(app.url("/oidc/demo/dev/callback?state=s&code=c"))).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what} OIDC callback");
    assert!(resp.headers().contains_key("retry-after"));
    let resp = timed(c.post(app.url("/saml/demo/dev/acs")).form(&[("SAMLResponse", "PHg+")])).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what} ACS");
    assert!(resp.headers().contains_key("retry-after"));
    // A POST to an unknown path may be a migrated ACS alias: looked up in the store.
    let resp = timed(c.post(app.url("/sso/legacy/acs")).form(&[("SAMLResponse", "PHg+")])).await;
    unavailable_page(resp, &format!("{what} ACS alias"), "store.unavailable").await;
    // SP metadata reads the connection.
    let resp = timed(c.get(app.url("/saml/demo/dev/metadata"))).await;
    unavailable_page(resp, &format!("{what} SP metadata"), "store.unavailable").await;
    // The OAuth endpoints: RFC 6749 JSON.
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "demo"),
        ("code", "demo.xyz"),
        ("redirect_uri", "http://x/"),
        ("code_verifier", "v"),
    ];
    unavailable_json(
        timed(c.post(app.url("/token")).form(&form)).await,
        &format!("{what} /token"),
    )
    .await;
    let refresh = [
        ("grant_type", "refresh_token"),
        ("client_id", "demo"),
        ("refresh_token", "demo.f.s"),
    ];
    unavailable_json(
        timed(c.post(app.url("/token")).form(&refresh)).await,
        &format!("{what} refresh"),
    )
    .await;
    // The admin API: problem+json.
    let resp = timed(
        c.request(Method::GET, app.url("/admin/v1/tenants"))
            .bearer_auth(&app.admin_token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what} admin");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_store_outage_answers_fast_503s_and_the_gateway_recovers() {
    let server = RedisServer::start();
    let port = server.port();
    let options = AppOptions {
        redis_url: Some(server.url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        dev: true,
        ..AppOptions::default()
    };
    let app = spawn_app(options.clone()).await;
    // The same without rate limits, so the handlers' own answers show too
    // (the limiter fails closed in front of most routes).
    let bare = spawn_app(AppOptions {
        tweak: Some(|s| s.throttle.enabled = false),
        ..options.clone()
    })
    .await;

    // While the store is up, a sign-in starts: /authorize sends the browser to the dev IdP.
    let demo = app.client.get(app.url("/demo/login")).send().await.unwrap();
    assert_eq!(demo.status(), StatusCode::SEE_OTHER);
    let authorize = location(&demo);
    let resp = app.client.get(&authorize).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert!(location(&resp).contains("/dev/demo/dev/login"), "{}", location(&resp));

    server.stop();
    outage_answers(&app, &authorize, "throttled").await;
    outage_answers(&bare, &authorize, "unthrottled").await;

    // Redis comes back (empty: the test server keeps nothing); a replica
    // starting now seeds the demo tenant and app again.
    let _server = RedisServer::start_on(port);
    let _seeder = spawn_app(options.clone()).await;
    for app in [&app, &bare] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
            if ready.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let resp = app.client.get(&authorize).send().await.unwrap();
        assert!(resp.status().is_redirection(), "{}", resp.status());
        assert!(location(&resp).contains("/dev/demo/dev/login"), "{}", location(&resp));
        let demo = app.client.get(app.url("/demo/login")).send().await.unwrap();
        assert_eq!(demo.status(), StatusCode::SEE_OTHER, "sessions are saved again");
    }
}

#[tokio::test]
async fn a_frozen_store_answers_503_within_the_deadline_and_recovers() {
    let server = RedisServer::start();
    let options = AppOptions {
        redis_url: Some(server.url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        dev: true,
        ..AppOptions::default()
    };
    let app = spawn_app(options).await;
    let demo = app.client.get(app.url("/demo/login")).send().await.unwrap();
    let authorize = location(&demo);
    // Connections stay open, nothing answers.
    server.freeze();
    let c = &app.client;
    for (what, req) in [
        ("authorize", c.get(&authorize)),
        (
            "token",
            c.post(app.url("/token"))
                .form(&[("grant_type", "client_credentials"), ("client_id", "x")]),
        ),
        (
            "acs",
            c.post(app.url("/saml/demo/dev/acs")).form(&[("SAMLResponse", "PHg+")]),
        ),
        ("readyz", c.get(app.url("/readyz"))),
    ] {
        let start = Instant::now();
        let resp = req.send().await.unwrap();
        println!("{what}: {} after {:?}", resp.status(), start.elapsed());
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert!(resp.headers().contains_key("retry-after"), "{what}");
        assert!(start.elapsed() < FAST, "{what} took {:?}", start.elapsed());
    }
    let live = timed(c.get(app.url("/healthz"))).await;
    assert_eq!(live.status(), StatusCode::OK);
    server.thaw();
    let resp = c.get(&authorize).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
}

/// A signing keyset the store cannot answer is an outage, not an invalid
/// token: once the cached keyset is too old to use (past two cache
/// periods on the injected clock), `/userinfo`, `/introspect` and forward
/// auth answer a valid token 503 `temporarily_unavailable` with no detail,
/// never 401 `invalid_token` with the store's error text, nor an
/// introspection's `active: false`. First with only the keyset's key
/// unreadable (the rest of the store answers, so the token's check is what
/// fails), then with Redis stopped.
#[tokio::test]
async fn a_keyset_the_store_cannot_read_is_an_outage_not_an_invalid_token() {
    let server = RedisServer::start();
    let prefix = crate::support::redis::prefix();
    let clock = portcullis::clock::ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let app = spawn_app(AppOptions {
        redis_url: Some(server.url()),
        redis_prefix: Some(prefix.clone()),
        dev: true,
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    const API: &str = "https://api.example.test";
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(serde_json::json!({"identifier": API, "scopes": [{"name": "api:read"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rp = crate::revocation::register(&app, "app1").await;
    let mut browser = crate::support::browser::Browser::new();
    let code = crate::revocation::sign_in(&app, &mut browser, &rp, crate::revocation::DEMO, "kay@demo.example").await;
    let tokens = crate::revocation::redeem(&app, &rp, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let at = tokens.at().to_owned();
    let c = &app.client;
    let ask = |what: &'static str| {
        let at = at.clone();
        let (userinfo, introspect, forward) = (
            c.get(app.url("/userinfo")).bearer_auth(&at),
            c.post(app.url("/introspect"))
                .basic_auth(&rp.client_id, Some(&rp.secret))
                .form(&[("token", at.as_str())]),
            c.get(app.url(&format!(
                "/forward-auth?resource={}",
                url::form_urlencoded::byte_serialize(API.as_bytes()).collect::<String>()
            )))
            .bearer_auth(&at),
        );
        async move {
            for (name, req) in [
                ("/userinfo", userinfo),
                ("/introspect", introspect),
                ("forward auth", forward),
            ] {
                unavailable_json(timed(req).await, &format!("{what} {name}")).await;
            }
        }
    };
    // While the keyset is readable, the token is fine.
    let resp = c.get(app.url("/userinfo")).bearer_auth(&at).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Only the keyset's key unreadable: a value of another type answers
    // every read of it with an error (WRONGTYPE).
    let mut con = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    let keyset = portcullis::store::Key::global("keys", "signing").render(&prefix);
    let _: () = redis::cmd("DEL").arg(&keyset).query(&mut con).unwrap();
    let _: () = redis::cmd("RPUSH").arg(&keyset).arg("x").query(&mut con).unwrap();
    clock.advance(chrono::Duration::seconds(61));
    ask("keyset unreadable:").await;

    // The whole store gone.
    server.stop();
    clock.advance(chrono::Duration::seconds(61));
    ask("Redis stopped:").await;
}
