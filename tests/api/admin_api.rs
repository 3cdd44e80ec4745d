//! The platform admin API: bearer auth, problem+json errors, tenants,
//! connections and clients, and nothing half-written on failure.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    call(app, method, path, Some(&app.admin_token.clone()), body).await
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_changes_nothing() {
    let app = spawn_app(AppOptions::default()).await;
    let body = json!({"id": "acme", "name": "Acme", "domains": ["acme.test"]});
    let p = problem(
        call(&app, Method::POST, "/admin/v1/tenants", None, Some(body.clone())).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(p["status"], 401);
    let p = problem(
        call(
            &app,
            Method::POST,
            "/admin/v1/tenants",
            Some("wrong-token-xxxxxxxx"),
            Some(body),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(p["title"], "Unauthorized");
    let resp = admin(&app, Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "the refused request must not have created the tenant"
    );
}

#[tokio::test]
async fn tenant_lifecycle() {
    let app = spawn_app(AppOptions::default()).await;
    let resp = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "acme", "name": "Acme", "domains": ["Acme.TEST"]})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let t: Value = resp.json().await.unwrap();
    assert_eq!(t["domains"], json!(["acme.test"]));
    let got: Value = admin(&app, Method::GET, "/admin/v1/tenants/acme", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Acme");
    let dup = admin(&app, Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme"}))).await;
    assert_eq!(problem(dup, StatusCode::CONFLICT).await["field"], "id");
    assert_eq!(
        admin(&app, Method::DELETE, "/admin/v1/tenants/acme", None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin(&app, Method::GET, "/admin/v1/tenants/acme", None).await.status(),
        StatusCode::NOT_FOUND
    );
    // The domain is free again.
    let again = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "other", "domains": ["acme.test"]})),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_taken_domain_is_refused_and_nothing_is_left_behind() {
    let app = spawn_app(AppOptions::default()).await;
    admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "acme", "domains": ["acme.test"]})),
    )
    .await;
    let resp = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "evil", "domains": ["evil.test", "acme.test"]})),
    )
    .await;
    assert_eq!(problem(resp, StatusCode::CONFLICT).await["field"], "domains");
    assert_eq!(
        admin(&app, Method::GET, "/admin/v1/tenants/evil", None).await.status(),
        StatusCode::NOT_FOUND
    );
    // evil.test was reserved first and must have been released.
    let resp = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"id": "fine", "domains": ["evil.test"]})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_fields_are_named() {
    let app = spawn_app(AppOptions::default()).await;
    let p = problem(
        admin(&app, Method::POST, "/admin/v1/tenants", Some(json!({"id": "Bad Id"}))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "id");
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "a", "domains": ["not a domain"]})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "domains[0]");
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "a", "colour": "red"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "colour");
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(resp, StatusCode::BAD_REQUEST).await["field"], "body");
    admin(&app, Method::POST, "/admin/v1/tenants", Some(json!({"id": "acme"}))).await;
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({"id": "x", "kind": "ldap"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "kind");
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({"id": "x", "kind": "dev"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("dev mode"), "{p}");
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/tenants/nope/connections",
            Some(json!({"id": "x", "kind": "oidc"})),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["status"], 404);
}

#[tokio::test]
async fn clients_get_a_secret_once_and_redirect_uris_are_checked() {
    let app = spawn_app(AppOptions::default()).await;
    let resp = admin(
        &app,
        Method::POST,
        "/admin/v1/clients",
        Some(json!({"client_id": "app1", "name": "App 1", "redirect_uris": ["https://app1.example/cb"], "public": false})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let c: Value = resp.json().await.unwrap();
    assert!(c["client_secret"].as_str().unwrap().len() >= 40);
    let got: Value = admin(&app, Method::GET, "/admin/v1/clients/app1", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(got.get("client_secret").is_none(), "the secret is shown only once");
    let public: Value = admin(
        &app,
        Method::POST,
        "/admin/v1/clients",
        Some(json!({"client_id": "spa", "redirect_uris": ["http://localhost:3000/cb"], "public": true})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(public.get("client_secret").is_none());
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "x", "redirect_uris": ["http://evil.example/cb"]})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "redirect_uris[0]");
    let p = problem(
        admin(
            &app,
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "app1", "redirect_uris": ["https://a.example/cb"]})),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["field"], "client_id");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(AppOptions::default()).await;
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        app.client.get(app.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn readiness_follows_redis() {
    let redis = crate::support::redis::RedisServer::start();
    let app = spawn_app(AppOptions {
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    assert_eq!(
        app.client.get(app.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    redis.stop();
    assert_eq!(
        app.client.get(app.url("/readyz")).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

/// Errors quote what was sent, but only a little of it: a huge bad body
/// never comes back whole (it once doubled into a 960 KiB problem+json).
#[tokio::test]
async fn a_huge_bad_body_gets_a_small_error() {
    let app = spawn_app(AppOptions::default()).await;
    let huge = "x".repeat(480 * 1024);
    for body in [
        json!({ "id": huge }),
        json!({ "id": "a", huge.clone(): 1 }),
        json!({ "id": "a", "domains": [huge.clone()] }),
        json!({ "id": ["not", "a", "string", huge.clone()] }),
    ] {
        let resp = admin(&app, Method::POST, "/admin/v1/tenants", Some(body)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let text = resp.text().await.unwrap();
        assert!(text.len() < 1024, "{} bytes: {}", text.len(), &text[..300]);
        let p: Value = serde_json::from_str(&text).unwrap();
        assert!(p["detail"].as_str().unwrap().chars().count() <= 201, "{p}");
    }
    // A bad JSON body with a huge string is capped too.
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/json")
        .body(format!("{{\"id\": \"{huge}\", }}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().len() < 1024);
}

/// When Redis is gone the admin API answers 503 problem+json (retry later),
/// never 500, and says nothing of the cause.
#[tokio::test]
async fn a_store_outage_is_503_not_500() {
    let redis = crate::support::redis::RedisServer::start();
    let app = spawn_app(AppOptions {
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    let (status, _) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "acme", "name": "Acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    redis.stop();
    for (method, path, body) in [
        (Method::GET, "/admin/v1/tenants/acme", None),
        (Method::GET, "/admin/v1/tenants", None),
        (Method::POST, "/admin/v1/tenants", Some(json!({"id": "globex"}))),
        (Method::GET, "/admin/v1/tenants/acme/users", None),
        (Method::GET, "/admin/v1/clients", None),
    ] {
        let resp = admin(&app, method.clone(), path, body).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        assert_eq!(
            resp.headers()[reqwest::header::CONTENT_TYPE],
            "application/problem+json",
            "{method} {path}"
        );
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], 503, "{problem}");
        assert!(
            !problem.to_string().to_lowercase().contains("redis"),
            "the cause stays in the log: {problem}"
        );
    }
}
