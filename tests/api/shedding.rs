//! Load shedding (`[server] max_in_flight`, `http::shed`) over real Redis:
//! requests are held in flight deterministically (a pre-token-generation
//! hook at the test's receiver that answers only when the test says, or a
//! frozen Redis), and every further request is refused at once with a 503
//! in its boundary's format, `Retry-After` and the reason code
//! `overload.shed`, counted in `portcullis_requests_shed_total`; health,
//! readiness and metrics still answer; once the held requests finish the
//! gateway serves normally again.

use crate::revocation::{redeem, register, sign_in, DEMO};
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use crate::support::hooks::{Behavior, HookServer};
use crate::support::redis::RedisServer;
use portcullis::clock::{SharedClock, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A refusal never waits: well under the store's 2 s deadline and any hook.
const AT_ONCE: Duration = Duration::from_millis(1000);

async fn app_over_redis(server: &RedisServer, max_in_flight: fn(&mut portcullis::config::Settings)) -> TestApp {
    spawn_app(AppOptions {
        redis_url: Some(server.url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        dev: true,
        tweak: Some(max_in_flight),
        ..AppOptions::default()
    })
    .await
}

/// Waits until exactly `n` requests hold a slot of the gateway's budget.
async fn until_in_flight(app: &TestApp, n: usize) {
    let start = Instant::now();
    while app.state.in_flight.current() != n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} in flight, expected {n}",
            app.state.in_flight.current()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `portcullis_requests_shed_total{route=...,reason="overload.shed"}` as
/// this process counts it.
async fn shed_count(app: &TestApp, route: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("portcullis_requests_shed_total{{route=\"{route}\",reason=\"overload.shed\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A request that must be refused at once: 503, `Retry-After`, quickly.
async fn refused_at_once(req: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
    let start = Instant::now();
    let resp = req
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer ({e}): the request was queued, not shed"));
    let took = start.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(resp.headers()["retry-after"], "1", "{what}");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
    assert!(took < AT_ONCE, "{what} took {took:?}");
    resp
}

#[tokio::test]
async fn requests_over_max_in_flight_get_503_in_their_format_at_once_and_the_gateway_recovers() {
    let server = RedisServer::start();
    let app = app_over_redis(&server, |s| s.server.max_in_flight = Some(2)).await;
    let clock: SharedClock = Arc::new(SystemClock);
    let hooks = HookServer::start(clock).await;
    let rp = Arc::new(register(&app, "shed-app").await);
    let (status, answer) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{DEMO}/hooks/pre_token_generation"),
            Some(json!({"url": hooks.url("pre"), "timeout_ms": 10_000})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    hooks.set_secret(answer["secret"].as_str().unwrap());
    let mut browser = Browser::new();
    let first = sign_in(&app, &mut browser, &rp, DEMO, "ada@shed.example").await;
    let second = sign_in(&app, &mut browser, &rp, DEMO, "ada@shed.example").await;
    let later = sign_in(&app, &mut browser, &rp, DEMO, "ada@shed.example").await;
    let before = shed_count(&app, "token").await;

    // Two code grants take the budget of two and wait at the hook.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    hooks.behave("pre", Behavior::Hold(gate.clone()));
    let held = {
        let (a, b, rp, rp2) = (app.clone(), app.clone(), rp.clone(), rp.clone());
        (
            tokio::spawn(async move { redeem(&a, &rp, &first).await }),
            tokio::spawn(async move { redeem(&b, &rp2, &second).await }),
        )
    };
    let start = Instant::now();
    while hooks.calls_to("pre").len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the held grants never reached the hook"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The OAuth endpoints: RFC 6749 JSON.
    let c = &app.client;
    for (what, req) in [
        (
            "token",
            c.post(app.url("/token"))
                .basic_auth(&rp.client_id, Some(&rp.secret))
                .form(&[("grant_type", "client_credentials")]),
        ),
        ("userinfo", c.get(app.url("/userinfo")).bearer_auth("x")),
        ("introspect", c.post(app.url("/introspect")).form(&[("token", "x")])),
        ("revoke", c.post(app.url("/revoke")).form(&[("token", "x")])),
    ] {
        let resp = refused_at_once(req, what).await;
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable", "{what}: {body}");
    }
    // Browser flows: a readable page naming the reason code.
    let resp = refused_at_once(c.get(app.url("/authorize?client_id=shed-app&tenant=demo")), "authorize").await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.headers().contains_key("content-security-policy"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("overload.shed") && page.contains("busy"), "{page}");
    // The admin API: problem+json.
    let resp = refused_at_once(
        c.get(app.url("/admin/v1/tenants")).bearer_auth(&app.admin_token),
        "admin",
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["reason"], "overload.shed");
    // Forward auth: 503, never 401/403, with its reason header.
    let resp = refused_at_once(c.get(app.url("/forward-auth")).bearer_auth("x"), "forward-auth").await;
    assert_eq!(resp.headers()["x-portcullis-reason"], "overload.shed");

    // The orchestrator still sees the replica, and it stays in rotation.
    for path in ["/healthz", "/readyz"] {
        let resp = c
            .get(app.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let metrics = c.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("portcullis_requests_in_flight 2"),
        "the gauge sees the held two"
    );
    assert!(metrics.contains("portcullis_requests_max_in_flight 2"));
    assert!(
        shed_count(&app, "token").await - before >= 4.0,
        "token, userinfo, introspect, revoke counted"
    );

    // The held grants finish with their tokens, and the gateway serves again.
    gate.add_permits(2);
    let (a, b) = (held.0.await.unwrap(), held.1.await.unwrap());
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{} {}",
        a.body,
        b.body
    );
    until_in_flight(&app, 0).await;
    gate.add_permits(1);
    let again = redeem(&app, &rp, &later).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert!(again.body["access_token"].is_string());
    let resp = c
        .get(app.url("/admin/v1/tenants"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_starved_store_holds_at_most_max_in_flight_and_sheds_the_rest_at_once() {
    let server = RedisServer::start();
    let app = app_over_redis(&server, |s| s.server.max_in_flight = Some(3)).await;
    let before = shed_count(&app, "token").await;
    // Redis keeps its connections and answers nothing: each admitted request
    // waits on the store, at most its 2 s operation deadline.
    server.freeze();
    let token = |app: &TestApp| {
        app.client
            .post(app.url("/token"))
            .form(&[("grant_type", "client_credentials"), ("client_id", "x")])
            .timeout(Duration::from_secs(10))
    };
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let req = token(&app);
        waiting.push(tokio::spawn(async move {
            let start = Instant::now();
            let resp = req.send().await.unwrap();
            (
                resp.status(),
                resp.headers().contains_key("retry-after"),
                start.elapsed(),
            )
        }));
    }
    // The three reach the gateway (not asserted here: without a budget
    // nothing counts them, and the refusals below are what must hold).
    let start = Instant::now();
    while app.state.in_flight.current() < 3 && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything else is refused at once instead of joining the backlog.
    for i in 0..10 {
        let resp = refused_at_once(token(&app), &format!("token #{i}")).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    let resp = refused_at_once(app.client.get(app.url("/authorize?tenant=demo")), "authorize").await;
    assert!(resp.text().await.unwrap().contains("overload.shed"));
    let live = app
        .client
        .get(app.url("/healthz"))
        .timeout(AT_ONCE)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // The admitted ones end with the store's own 503 within its deadline.
    for w in waiting {
        let (status, retry_after, took) = w.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry_after);
        assert!(took < Duration::from_secs(5), "a store wait took {took:?}");
    }
    until_in_flight(&app, 0).await;
    server.thaw();
    assert!(shed_count(&app, "token").await - before >= 10.0);
    // Back to normal: the token endpoint decides again (an unknown client).
    let resp = token(&app).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
