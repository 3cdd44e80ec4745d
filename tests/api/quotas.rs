//! What a tenant admin may make the gateway keep: a tenant's own admin (a
//! tenant API key) is held to the documented caps on connections, domains
//! and allowed apps, answered 409 problem+json with the cap's reason code
//! (or 400 naming the field); the platform admin is not held to the counts.
//! The caps and budgets are the operator's `[quotas]`: a gateway started
//! with other values holds tenant admins to those, and names them.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::logs::Captured;
use portcullis::config::Settings;
use portcullis::tenant::{MAX_ALLOWED_CLIENTS, MAX_CONNECTIONS, MAX_DOMAINS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    if !status.is_success() {
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{status} without problem+json"
        );
    }
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A dev-mode gateway with tenant `acme` and a key of its own admin.
async fn acme_with_key() -> (TestApp, String) {
    acme_with_key_under(None).await
}

/// A tenant admin (`key`) adds the dev connection `id` to `acme`; the answer's
/// status must be `expected`. Returns the answer's body.
async fn add_dev_connection(app: &TestApp, key: &str, id: &str, expected: StatusCode) -> Value {
    let (status, body) = call(
        app,
        Method::POST,
        "/admin/v1/tenants/acme/connections",
        key,
        Some(json!({"id": id, "kind": "dev"})),
    )
    .await;
    assert_eq!(status, expected, "{body}");
    body
}

/// As [`acme_with_key`], on a gateway whose settings `tweak` adjusts (its
/// `[quotas]`).
async fn acme_with_key_under(tweak: Option<fn(&mut Settings)>) -> (TestApp, String) {
    let app = spawn_app(AppOptions {
        dev: true,
        tweak,
        ..Default::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants/acme/api-keys"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"name": "acme-admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let key = resp.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    (app, key)
}

#[tokio::test]
async fn a_tenant_admin_cannot_give_its_tenant_more_connections_than_the_cap() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    for i in 0..MAX_CONNECTIONS {
        add_dev_connection(&app, &key, &format!("c{i}"), StatusCode::CREATED).await;
    }
    let body = add_dev_connection(&app, &key, "one-more", StatusCode::CONFLICT).await;
    assert_eq!(body["reason"], "quota.connections");
    assert!(body["detail"].as_str().unwrap().contains(&MAX_CONNECTIONS.to_string()));
    assert_eq!(logs.with_reason("quota.connections").len(), 1);
    let (_, list) = call(&app, Method::GET, "/admin/v1/tenants/acme/connections", &key, None).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), MAX_CONNECTIONS);

    // Deleting one makes room again.
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/admin/v1/tenants/acme/connections/c0",
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/connections",
        &key,
        Some(json!({"id": "one-more", "kind": "dev"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The platform admin is not held to the count.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({"id": "by-platform", "kind": "dev"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_tenant_admin_cannot_claim_more_domains_than_the_cap() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    for i in 0..MAX_DOMAINS {
        let (status, body) = call(
            &app,
            Method::POST,
            "/admin/v1/tenants/acme/domains",
            &key,
            Some(json!({"domain": format!("d{i}.acme-corp.com")})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/domains",
        &key,
        Some(json!({"domain": "one-more.acme-corp.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["reason"], "quota.domains");
    assert_eq!(logs.with_reason("quota.domains").len(), 1);
    let (_, list) = call(&app, Method::GET, "/admin/v1/tenants/acme/domains", &key, None).await;
    assert_eq!(list["domains"].as_array().unwrap().len(), MAX_DOMAINS);

    // Claiming one it already has again is no new domain.
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/domains",
        &key,
        Some(json!({"domain": "d0.acme-corp.com"})),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");

    // The platform admin is not held to the count.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/domains",
            Some(json!({"domain": "by-platform.acme-corp.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_tenant_record_lists_at_most_the_cap_of_allowed_apps() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    let many: Vec<String> = (0..=MAX_ALLOWED_CLIENTS).map(|i| format!("app-{i}")).collect();
    for token in [key.as_str(), app.admin_token.as_str()] {
        let (status, body) = call(
            &app,
            Method::PATCH,
            "/admin/v1/tenants/acme",
            token,
            Some(json!({"settings": {"allowed_clients": many}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], "settings.allowed_clients");
        assert!(body["detail"].as_str().unwrap().contains("quota.allowed_clients"));
    }
    assert_eq!(logs.with_reason("quota.allowed_clients").len(), 2);
    let (status, body) = call(
        &app,
        Method::PATCH,
        "/admin/v1/tenants/acme",
        &key,
        Some(json!({"settings": {"allowed_clients": many[..MAX_ALLOWED_CLIENTS]}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_hook_url_longer_than_the_cap_is_refused() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    let path = "/admin/v1/tenants/acme/hooks/pre_token_generation";
    let long = format!(
        "https://hooks.acme-corp.com/{}",
        "a".repeat(portcullis::hooks::MAX_URL_BYTES)
    );
    let (status, body) = call(&app, Method::PUT, path, &key, Some(json!({"url": long}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "url");
    assert!(body["detail"].as_str().unwrap().contains("hook.url_too_long"));
    assert_eq!(logs.with_reason("hook.url_too_long").len(), 1);
    let (_, list) = call(&app, Method::GET, "/admin/v1/tenants/acme/hooks", &key, None).await;
    assert_eq!(list["hooks"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_tenant_admin_asks_for_at_most_the_budget_of_outbound_calls_a_minute() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    // Each DNS check of an unclaimed domain is refused for itself, after
    // its charge; the budget's next call is refused before any look-up.
    let path = "/admin/v1/tenants/acme/domains/unclaimed.acme-corp.com/verify";
    for _ in 0..portcullis::admin::MAX_OUTBOUND_PER_MINUTE {
        let (status, body) = call(&app, Method::POST, path, &key, None).await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
    let resp = app.client.post(app.url(path)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "quota.outbound");
    assert_eq!(logs.with_reason("quota.outbound").len(), 1);

    // A metadata refresh spends the same budget.
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/connections/any/refresh",
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "quota.outbound");

    // The platform admin is not held to it.
    let (status, body) = app.admin(Method::POST, path, None).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn a_tenant_admin_has_at_most_the_budget_of_passwords_hashed_a_minute() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/connections",
        &key,
        Some(json!({"id": "local", "kind": "local"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path = "/admin/v1/tenants/acme/connections/local/users";
    let password = "correct horse battery staple 42";
    // The budget refills as the minute goes on (one hash a second), and
    // each creation takes a little while: the refusal comes at the budget
    // or a little after it, never before.
    let budget = portcullis::admin::MAX_PASSWORD_HASHES_PER_MINUTE;
    let mut created = 0;
    let (status, body) = loop {
        let (status, body) = call(
            &app,
            Method::POST,
            path,
            &key,
            Some(json!({"email": format!("u{created}@acme-corp.com"), "password": password})),
        )
        .await;
        if status != StatusCode::CREATED || created > 2 * budget {
            break (status, body);
        }
        created += 1;
    };
    assert!(created >= budget, "refused after {created} creations");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "quota.password_hashes");
    assert_eq!(logs.with_reason("quota.password_hashes").len(), 1);

    // An account without a password (reset required) hashes nothing.
    let (status, body) = call(
        &app,
        Method::POST,
        path,
        &key,
        Some(json!({"email": "no-password@acme-corp.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The platform admin is not held to it.
    let (status, body) = app
        .admin(
            Method::POST,
            path,
            Some(json!({"email": "by-platform@acme-corp.com", "password": password})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_tenant_has_at_most_the_cap_of_exchange_rules() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(json!({"identifier": "https://api.acme-corp.com", "name": "API", "scopes": [{"name": "read"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rule = |id: String| json!({"id": id, "resource": "https://api.acme-corp.com", "scopes": ["read"]});
    let path = "/admin/v1/tenants/acme/exchange-rules";
    for i in 0..portcullis::provider::exchange::MAX_RULES {
        let (status, body) = call(&app, Method::POST, path, &key, Some(rule(format!("r{i}")))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for token in [key.as_str(), app.admin_token.as_str()] {
        let (status, body) = call(&app, Method::POST, path, token, Some(rule("one-more".into()))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["reason"], "quota.exchange_rules");
    }
    assert_eq!(logs.with_reason("quota.exchange_rules").len(), 2);
}

#[tokio::test]
async fn a_tenant_admin_has_at_most_the_budget_of_sp_keys_generated_a_minute() {
    use crate::metadata_refresh::{metadata, Key};
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key().await;
    let idp = Key::new();
    // Made by the platform admin, whose key generation is not counted.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({"id": "okta", "kind": "saml", "metadata_xml": metadata(&[idp.cert_b64()])})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let step = |s: &str| format!("/admin/v1/tenants/acme/connections/okta/sp-certificates/{s}");
    let budget = portcullis::admin::MAX_KEY_GENERATIONS_PER_MINUTE;
    let mut rotated = 0;
    let (status, body) = loop {
        let (status, body) = call(&app, Method::POST, &step("rotate"), &key, None).await;
        if status != StatusCode::OK || rotated > 2 * budget {
            break (status, body);
        }
        rotated += 1;
        for s in ["activate", "retire"] {
            let (status, body) = call(&app, Method::POST, &step(s), &key, None).await;
            assert_eq!(status, StatusCode::OK, "{s}: {body}");
        }
    };
    assert!(rotated >= budget, "refused after {rotated} rotations");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "quota.key_generations");
    assert_eq!(logs.with_reason("quota.key_generations").len(), 1);
    // A new SAML connection of the tenant's own admin needs a key too.
    let (status, body) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants/acme/connections",
        &key,
        Some(json!({"id": "entra", "kind": "saml", "metadata_xml": metadata(&[idp.cert_b64()])})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "quota.key_generations");
    // The platform admin is not held to it.
    let (status, body) = app.admin(Method::POST, &step("rotate"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `[quotas] connections_per_tenant = 2`: a tenant admin's third
/// connection is refused with `quota.connections`, the problem naming the
/// configured 2 (not the default 50); the platform admin is not held to it.
#[tokio::test]
async fn a_lowered_connection_quota_holds_a_tenant_admin_to_the_configured_number() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key_under(Some(|s: &mut Settings| s.quotas.connections_per_tenant = 2)).await;
    let path = "/admin/v1/tenants/acme/connections";
    for i in 0..2 {
        add_dev_connection(&app, &key, &format!("c{i}"), StatusCode::CREATED).await;
    }
    let body = add_dev_connection(&app, &key, "third", StatusCode::CONFLICT).await;
    assert_eq!(body["reason"], "quota.connections");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("quota of 2 connections"), "{detail}");
    assert_eq!(logs.with_reason("quota.connections").len(), 1);
    let (status, body) = app
        .admin(Method::POST, path, Some(json!({"id": "by-platform", "kind": "dev"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = call(&app, Method::GET, path, &key, None).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 3);
}

/// `[quotas] key_generations_per_minute = 1`: a tenant admin's second SP
/// key pair within the minute is refused with `quota.key_generations`, the
/// problem naming the configured 1; the platform admin is not held to it.
#[tokio::test]
async fn a_lowered_key_generation_budget_holds_a_tenant_admin_to_the_configured_number() {
    use crate::metadata_refresh::{metadata, Key};
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key_under(Some(|s: &mut Settings| s.quotas.key_generations_per_minute = 1)).await;
    let idp = Key::new();
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({"id": "okta", "kind": "saml", "metadata_xml": metadata(&[idp.cert_b64()])})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let step = |s: &str| format!("/admin/v1/tenants/acme/connections/okta/sp-certificates/{s}");
    let (status, body) = call(&app, Method::POST, &step("rotate"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for s in ["activate", "retire"] {
        let (status, body) = call(&app, Method::POST, &step(s), &key, None).await;
        assert_eq!(status, StatusCode::OK, "{s}: {body}");
    }
    let (status, body) = call(&app, Method::POST, &step("rotate"), &key, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "quota.key_generations");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("quota of 1 times a minute"), "{detail}");
    assert_eq!(logs.with_reason("quota.key_generations").len(), 1);
    let (status, body) = app.admin(Method::POST, &step("rotate"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A quota of 0 lets a tenant admin do none of it: its first connection
/// (`quota.connections`, naming 0) and its first DNS check
/// (`quota.outbound`, 409 without `Retry-After`, as no wait helps, and
/// without a look-up) are
/// refused, while the platform admin does both.
#[tokio::test]
async fn a_quota_of_zero_lets_a_tenant_admin_do_none_of_it() {
    let (logs, _guard) = Captured::start();
    let (app, key) = acme_with_key_under(Some(|s: &mut Settings| {
        s.quotas.connections_per_tenant = 0;
        s.quotas.outbound_per_minute = 0;
    }))
    .await;
    let path = "/admin/v1/tenants/acme/connections";
    let body = add_dev_connection(&app, &key, "first", StatusCode::CONFLICT).await;
    assert_eq!(body["reason"], "quota.connections");
    assert!(
        body["detail"].as_str().unwrap().contains("quota of 0 connections"),
        "{body}"
    );
    let verify = "/admin/v1/tenants/acme/domains/unclaimed.acme-corp.com/verify";
    let resp = app.client.post(app.url(verify)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT, "no wait helps");
    assert!(resp.headers().get("retry-after").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "quota.outbound");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("0 times a minute") && detail.contains("ask the platform's operator"),
        "{detail}"
    );
    assert_eq!(logs.with_reason("quota.outbound").len(), 1);
    let (status, body) = app
        .admin(Method::POST, path, Some(json!({"id": "by-platform", "kind": "dev"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.admin(Method::POST, verify, None).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}
