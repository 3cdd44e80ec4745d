//! Rate limits, request limits and request ids at the edge: limits counted in
//! one real Redis hold across two gateway replicas, a tenant's own limits
//! apply, a forged `X-Forwarded-For` picks no bucket, oversized requests are
//! refused in the route's format, every response carries `x-request-id`, a
//! SAML sign-in is counted once, at its ACS, a tenant's budget on the
//! token endpoints is spent only by its apps' own requests, its callback
//! budget only by its own sign-ins (strangers spend its anonymous bucket),
//! and a browser signed in to a tenant passes its spent `/authorize` budget.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use portcullis::config::Settings;
use portcullis::store::Key;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Two gateways on one Redis under one prefix (two replicas of one deployment).
async fn two_replicas(tweak: fn(&mut Settings)) -> (TestApp, TestApp) {
    let url = crate::support::redis::url();
    let prefix = crate::support::redis::prefix();
    let options = AppOptions {
        redis_url: Some(url),
        redis_prefix: Some(prefix),
        tweak: Some(tweak),
        ..AppOptions::default()
    };
    (spawn_app(options.clone()).await, spawn_app(options).await)
}

async fn post_token(app: &TestApp, form: &[(&str, &str)], headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.post(app.url("/token")).form(form);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// A garbage answer at a made-up connection of the demo tenant, from the
/// forwarded address `198.51.100.<i>` (each its own per-address bucket):
/// what a stranger can post naming any tenant.
fn garbage_acs(app: &TestApp, i: usize) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    app.client
        .post(app.url("/saml/demo/made-up/acs"))
        .header("x-forwarded-for", format!("198.51.100.{i}"))
        .form(&[("SAMLResponse", "PHg+"), ("RelayState", "made-up")])
        .send()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {}", resp.status()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The throttling events in the global audit log.
async fn global_throttle_events(app: &TestApp) -> Vec<Value> {
    let raw = app
        .state
        .store
        .stream_rev_range(&Key::global("audit", "events"), None, 100)
        .await
        .unwrap();
    raw.iter()
        .map(|e| serde_json::from_slice::<Value>(&e.value).unwrap())
        .filter(|e| e["action"] == "throttle.exceeded")
        .collect()
}

/// The throttling events in `tenant`'s audit log, read through the admin API.
async fn tenant_throttle_events(app: &TestApp, tenant: &str) -> Vec<Value> {
    app.tenant_audit(tenant, "throttle.exceeded").await
}

#[tokio::test]
async fn a_limit_holds_across_two_replicas_and_answers_429_with_retry_after() {
    let (a, b) = two_replicas(|s| {
        s.throttle.token.per_ip = 5;
        s.throttle.token.window_secs = 60;
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("client_id", "nobody")];
    // Alternating replicas: the five allowed requests reach the handler
    // (and are refused there: no such client), the sixth is throttled.
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        let resp = post_token(app, &form, &[]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "request {i} reaches /token");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
    }
    let resp = post_token(&b, &form, &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the sixth request, on the other replica"
    );
    let wait = retry_after(&resp);
    assert!((1..=12).contains(&wait), "one request per 12 s comes back: {wait}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // The first replica counts the same bucket.
    let resp = post_token(&a, &form, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // The refusal is audited once for the window (a flood adds no events).
    let events = global_throttle_events(&a).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], "system:throttle");
    assert_eq!(events[0]["target"]["kind"], "client_ip");
    assert_eq!(events[0]["target"]["id"], "127.0.0.1");
    assert_eq!(events[0]["after"]["route"], "token");
    assert_eq!(events[0]["after"]["scope"], "ip");
    // Another route class has its own budget.
    let disco = a
        .client
        .get(a.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(disco.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tenant_limit_set_by_the_platform_admin_applies_and_is_audited_to_the_tenant() {
    let (a, b) = two_replicas(|s| {
        s.throttle.callback.per_tenant = 1000;
    })
    .await;
    a.create_tenant("acme", "Acme", &[]).await;
    a.create_tenant("globex", "Globex", &[]).await;
    let (status, body) = a
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"settings": {"throttle": {"callback": {"per_tenant": 3}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"]["throttle"]["callback"]["per_tenant"], 3, "{body}");
    let acs = |app: &TestApp, tenant: &str| {
        app.client
            .post(app.url(&format!("/saml/{tenant}/okta/acs")))
            .form(&[("SAMLResponse", "PHg+")])
            .send()
    };
    // The second spells the tenant percent-encoded, which the handler reads
    // as `acme`: it counts as acme's too.
    for (i, spelled) in ["acme", "%61cme", "acme"].into_iter().enumerate() {
        let app = if i % 2 == 0 { &a } else { &b };
        let resp = acs(app, spelled).await.unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "request {i}");
    }
    let resp = acs(&b, "acme").await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    let page = resp.text().await.unwrap();
    assert!(page.contains("<code>throttle.exceeded</code>"), "{page}");
    // Another tenant keeps the global limit.
    for _ in 0..5 {
        let resp = acs(&a, "globex").await.unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // A tenant that does not exist gets no bucket in the store.
    let resp = acs(&a, "nosuch").await.unwrap();
    assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    for bucket in ["callback", "callback_anonymous"] {
        let key = Key::tenant("nosuch", "rl", bucket);
        assert_eq!(a.state.store.get(&key).await.unwrap(), None, "{bucket}");
    }
    // Garbage answers name no pending login: they count in the tenant's
    // anonymous bucket, never in its own budget.
    let store = &a.state.store;
    assert!(store
        .get(&Key::tenant("globex", "rl", "callback_anonymous"))
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.get(&Key::tenant("globex", "rl", "callback")).await.unwrap(), None);
    // The event is in the tenant's audit log, readable through the admin API.
    let events = tenant_throttle_events(&a, "acme").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["target"]["kind"], "tenant");
    assert_eq!(events[0]["after"]["scope"], "tenant");
    assert_eq!(events[0]["after"]["route"], "callback");
    assert_eq!(events[0]["after"]["bucket"], "callback_anonymous");
}

/// A replica keeps a decoded copy of each tenant's record and counts a
/// request under the copy's limits while it re-validates the record (one
/// store wait for both); a limit changed meanwhile (on another replica)
/// must still apply to the very next request, not one later.
#[tokio::test]
async fn a_lowered_tenant_limit_applies_to_the_next_request_on_a_replica_that_kept_the_old_one() {
    // Ten a minute: the two requests below put the bucket 12 s ahead, so
    // the lowered limit refuses the next one however slow the machine (at
    // 1,000 a minute they were 120 ms ahead, gone on a loaded machine
    // before the next request).
    let (a, b) = two_replicas(|s| {
        s.throttle.callback.per_tenant = 10;
    })
    .await;
    a.create_tenant("acme", "Acme", &[]).await;
    let acs = |app: &TestApp| {
        app.client
            .post(app.url("/saml/acme/okta/acs"))
            .form(&[("SAMLResponse", "PHg+")])
            .send()
    };
    let set_limit = |per_tenant: u64| {
        a.admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"settings": {"throttle": {"callback": {"per_tenant": per_tenant}}}})),
        )
    };
    // b reads (and keeps) acme's record, with the route's limit.
    for i in 0..2 {
        let resp = acs(&b).await.unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "request {i}");
    }
    let (status, body) = set_limit(1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Under the kept copy's limit (10) this request would pass; under the
    // new one (1 per window, two already counted) it is refused.
    let resp = acs(&b).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let page = resp.text().await.unwrap();
    assert!(page.contains("<code>throttle.exceeded</code>"), "{page}");
    // Lifted again: the next request passes on the same replica.
    let (status, body) = set_limit(1000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp = acs(&b).await.unwrap();
    assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_tenant_admin_cannot_lift_its_own_limits() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &[]).await;
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants/acme/api-keys"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let key: Value = resp.json().await.unwrap();
    let key = key["key"].as_str().unwrap();
    let resp = app
        .client
        .patch(app.url("/admin/v1/tenants/acme"))
        .bearer_auth(key)
        .json(&json!({"settings": {"throttle": {"token": {"per_ip": 0}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "settings.throttle", "{problem}");
    // Nor by removing the settings as a whole, once the platform set limits.
    let (status, _) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"settings": {"throttle": {"token": {"per_ip": 5}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for patch in [json!({"settings": null}), json!({"settings": {"throttle": null}})] {
        let resp = app
            .client
            .patch(app.url("/admin/v1/tenants/acme"))
            .bearer_auth(key)
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{patch}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["field"], "settings.throttle", "{patch}: {problem}");
    }
    let (_, tenant) = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(tenant["settings"]["throttle"]["token"]["per_ip"], 5, "{tenant}");
    // Its other settings stay its own to change.
    let resp = app
        .client
        .patch(app.url("/admin/v1/tenants/acme"))
        .bearer_auth(key)
        .json(&json!({"settings": {"require_mfa": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Out-of-range values are refused for the platform admin too.
    let (status, problem) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"settings": {"throttle": {"token": {"per_ip": 10_000_000u64}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "settings.throttle.token.per_ip", "{problem}");
}

#[tokio::test]
async fn a_forged_forwarded_for_picks_no_bucket_without_trusted_proxies() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let app = spawn_app(AppOptions {
        tweak: Some(|s| s.throttle.token.per_ip = 3),
        ..AppOptions::default()
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("client_id", "nobody")];
    for i in 0..3 {
        let forged = format!("198.51.100.{i}");
        let resp = post_token(&app, &form, &[("x-forwarded-for", &forged)]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "request {i}");
    }
    let resp = post_token(&app, &form, &[("x-forwarded-for", "198.51.100.99")]).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a new forged address is still the socket's bucket"
    );
    // An operator whose proxy is not trusted hears of it, once a minute,
    // not once a request.
    let warned = logs.with_reason("throttle.forwarded_untrusted");
    assert_eq!(warned.len(), 1, "{}", logs.text());
    assert_eq!(warned[0]["fields"]["peer"], "127.0.0.1", "{}", logs.text());
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| {
            s.throttle.token.per_ip = 2;
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into()];
        }),
        ..AppOptions::default()
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("client_id", "nobody")];
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..2 {
            // The client forged a left-most entry; the proxy appended its address.
            let xff = format!("203.0.113.66, {client}");
            let resp = post_token(&app, &form, &[("x-forwarded-for", &xff)]).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let resp = post_token(&app, &form, &[("x-forwarded-for", "203.0.113.66, 198.51.100.1")]).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the third from one client"
    );
    // The forged entry never counted as a client of its own.
    let resp = post_token(&app, &form, &[("x-forwarded-for", "203.0.113.66")]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn throttling_can_be_turned_off() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| {
            s.throttle.token.per_ip = 1;
            s.throttle.enabled = false;
        }),
        ..AppOptions::default()
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("client_id", "nobody")];
    for _ in 0..5 {
        assert_eq!(post_token(&app, &form, &[]).await.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_callers_id_only_from_a_trusted_proxy() {
    let app = spawn_app(AppOptions::default()).await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.len() >= 16, "{id}");
    let resp = app
        .client
        .get(app.url("/jwks"))
        .header("x-request-id", "from-the-client")
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers()["x-request-id"],
        "from-the-client",
        "not from an untrusted peer"
    );
    // The admin API keeps its callers' ids (they correlate their changes).
    let resp = app
        .client
        .get(app.url("/admin/v1/tenants"))
        .bearer_auth(&app.admin_token)
        .header("x-request-id", "from-the-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "from-the-admin");
    let resp = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.headers().contains_key("x-request-id"), "404s too");

    let proxied = spawn_app(AppOptions {
        tweak: Some(|s| s.throttle.trusted_proxies = vec!["127.0.0.0/8".into()]),
        ..AppOptions::default()
    })
    .await;
    let resp = proxied
        .client
        .get(proxied.url("/jwks"))
        .header("x-request-id", "trace-4711")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-4711");
    let resp = proxied
        .client
        .get(proxied.url("/jwks"))
        .header("x-request-id", "bad id <with> spaces")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(
        id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "an unsafe id is replaced: {id}"
    );
    // The admin API's audit events carry the same id as the response.
    let resp = proxied
        .client
        .post(proxied.url("/admin/v1/tenants"))
        .bearer_auth(&proxied.admin_token)
        .header("x-request-id", "create-acme-1")
        .json(&json!({"id": "acme", "name": "Acme", "domains": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-request-id"], "create-acme-1");
    let (_, log) = proxied.admin(Method::GET, "/admin/v1/audit", None).await;
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == "create-acme-1"),
        "{log}"
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_in_the_routes_format() {
    let app = spawn_app(AppOptions::default()).await;
    // URL length: 414 page.
    let long = format!("/authorize?state={}", "a".repeat(9000));
    let resp = app.client.get(app.url(&long)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
    assert!(resp.text().await.unwrap().contains("<code>request.url_too_long</code>"));
    // Header count: 431.
    let mut req = app.client.get(app.url("/authorize"));
    for i in 0..70 {
        req = req.header(format!("x-filler-{i}"), "1");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<code>request.headers_too_large</code>"));
    // Header bytes: 431.
    let resp = app
        .client
        .get(app.url("/authorize"))
        .header("cookie", format!("x={}", "c".repeat(40 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The token endpoint takes 16 KiB: 413 as RFC 6749 JSON.
    let big = "x".repeat(20 * 1024);
    let resp = post_token(&app, &[("grant_type", "client_credentials"), ("client_id", &big)], &[]).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    // The SAML ACS takes a real response's size (200 KiB reaches the handler)...
    let saml = "P".repeat(200 * 1024);
    let resp = app
        .client
        .post(app.url("/saml/acme/okta/acs"))
        .form(&[("SAMLResponse", &saml)])
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // ...but not more than 256 KiB.
    let saml = "P".repeat(300 * 1024);
    let resp = app
        .client
        .post(app.url("/saml/acme/okta/acs"))
        .form(&[("SAMLResponse", &saml)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<code>request.body_too_large</code>"));
    // The admin API: problem+json above 512 KiB.
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"id": "acme", "name": "x".repeat(600 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["reason"], "request.body_too_large", "{problem}");
}

#[tokio::test]
async fn authorize_counts_the_tenant_named_in_the_query_or_the_posted_form() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &[]).await;
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"settings": {"throttle": {"authorize": {"per_tenant": 2}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..2 {
        let resp = app
            .client
            .get(app.url("/authorize?client_id=nobody&tenant=acme"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "reaches /authorize");
    }
    let resp = app
        .client
        .post(app.url("/authorize"))
        .form(&[("client_id", "nobody"), ("tenant", "acme")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the posted form names the tenant too"
    );
    assert!(retry_after(&resp) >= 1);
    assert!(resp.text().await.unwrap().contains("<code>throttle.exceeded</code>"));
    // Without the tenant only the address counts.
    let resp = app
        .client
        .get(app.url("/authorize?client_id=nobody"))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_saml_sign_in_is_counted_at_its_acs_and_not_again_at_its_continuation() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| s.throttle.callback.per_ip = 2),
        ..AppOptions::default()
    })
    .await;
    let acs = app.url("/saml/acme/okta/acs");
    let continuation = app.url("/saml/acme/okta/continue?handle=made-up");
    // More continuations than the limit: none counted (each refused on its own).
    for _ in 0..5 {
        let resp = app.client.get(continuation.clone()).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // The ACS still has its whole budget, and still counts.
    let post_acs = || app.client.post(acs.clone()).form(&[("SAMLResponse", "x")]).send();
    for _ in 0..2 {
        assert_ne!(post_acs().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let resp = post_acs().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.text().await.unwrap().contains("<code>throttle.exceeded</code>"));
    // The continuation of a sign-in whose ACS was counted is not refused.
    let resp = app.client.get(continuation).send().await.unwrap();
    assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A `/token` form naming `acme` through a made-up code, for `client`
/// (with `secret`, sent as Basic credentials).
async fn forged_grant(app: &TestApp, client: &str, secret: Option<&str>) -> reqwest::Response {
    let mut req = app.client.post(app.url("/token")).form(&[
        ("grant_type", "authorization_code"),
        ("code", "acme.made-up-code"),
        ("redirect_uri", "https://app.example/cb"),
        ("code_verifier", "v".repeat(43).as_str()),
        ("client_id", client),
    ]);
    if let Some(s) = secret {
        req = req.basic_auth(client, Some(s));
    }
    req.send().await.unwrap()
}

/// On the token endpoints anyone can name a tenant (the prefix of a
/// made-up code), so the tenant's budget there is spent only by its apps'
/// own requests: requests without the app's secret (or, from a public app,
/// without a real code or refresh token) never lock the tenant's apps out.
#[tokio::test]
async fn a_tenants_token_budget_is_spent_only_by_its_apps_own_requests() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| {
            s.throttle.token.per_ip = 1000;
            s.throttle.token.per_tenant = 3;
        }),
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    let cb = reqwest::Url::parse("https://app.example/cb").unwrap();
    let backend = app.create_client("acme-backend", "Backend", &[&cb], false).await;
    let secret = backend.client_secret.unwrap();
    app.create_client("acme-spa", "SPA", &[&cb], true).await;

    // Twelve requests naming acme that are not its apps' own: an unknown
    // app, a public app with a made-up code, the backend with a wrong secret.
    for i in 0..12 {
        let (client, secret, want) = match i % 3 {
            0 => ("nobody", None, StatusCode::UNAUTHORIZED),
            1 => ("acme-spa", None, StatusCode::BAD_REQUEST),
            _ => ("acme-backend", Some("wrong"), StatusCode::UNAUTHORIZED),
        };
        let resp = forged_grant(&app, client, secret).await;
        assert_eq!(resp.status(), want, "request {i} ({client})");
    }
    // The backend's own requests spend it: three (each refused for its
    // made-up code), then 429.
    for i in 0..3 {
        let resp = forged_grant(&app, "acme-backend", Some(&secret)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "own request {i}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    let resp = forged_grant(&app, "acme-backend", Some(&secret)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // Spent for every request naming the tenant, and audited as the tenant's.
    assert_eq!(
        forged_grant(&app, "nobody", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let events = tenant_throttle_events(&app, "acme").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["after"]["scope"], "tenant");
    assert_eq!(events[0]["after"]["route"], "token");
}

/// A public app has no secret: its requests spend its tenant's budget when
/// the code or refresh token they present is real and was issued to it.
#[tokio::test]
async fn a_public_apps_real_codes_and_refresh_tokens_spend_its_tenants_budget() {
    let app = crate::support::local::Gateway {
        smtp: None,
        redis: None,
        shipped_argon2: false,
        clock: None,
        tweak: Some(|s| {
            s.throttle.token.per_ip = 1000;
            s.throttle.token.per_tenant = 3;
        }),
    }
    .spawn()
    .await;
    let world = crate::support::local::World {
        tenant: "budget",
        connection: "local",
        client: "budget-spa",
        scope: "openid offline_access",
    }
    .create(&app, "Budget", "budget.example")
    .await;
    world.account(&app, "ada@budget.example", "correct horse battery").await;
    // The code's redemption is the first of three.
    let tokens = world
        .sign_in(&app, "ada@budget.example", "correct horse battery", None)
        .await;
    let mut refresh_token = tokens["refresh_token"].as_str().expect("a refresh token").to_owned();
    let refresh = |token: String| {
        app.client
            .post(app.url("/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
                ("client_id", "budget-spa"),
            ])
            .send()
    };
    for i in 0..2 {
        let resp = refresh(refresh_token.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "refresh {i}");
        let body: Value = resp.json().await.unwrap();
        refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let resp = refresh(refresh_token).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The budget is one for every replica (counted in the store): what one
/// replica spent, another finds spent at its next charge, and from then on
/// refuses too (having let through the one request that found it spent).
#[tokio::test]
async fn a_tenants_token_budget_spent_on_one_replica_is_spent_on_the_others() {
    let (a, b) = two_replicas(|s| {
        s.throttle.token.per_ip = 1000;
        s.throttle.token.per_tenant = 3;
    })
    .await;
    a.create_tenant("acme", "Acme", &[]).await;
    let cb = reqwest::Url::parse("https://app.example/cb").unwrap();
    let secret = a
        .create_client("acme-backend", "Backend", &[&cb], false)
        .await
        .client_secret
        .unwrap();
    for i in 0..2 {
        let resp = forged_grant(&a, "acme-backend", Some(&secret)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "a: request {i}");
    }
    // b's first takes the last of the budget (b knows it from its charge).
    assert_eq!(
        forged_grant(&b, "acme-backend", Some(&secret)).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        forged_grant(&b, "acme-backend", Some(&secret)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // a learns it at its next charge: that request is through, the next not.
    assert_eq!(
        forged_grant(&a, "acme-backend", Some(&secret)).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        forged_grant(&a, "acme-backend", Some(&secret)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Anyone can spend a tenant's budget on `/authorize` (a person has no
/// credentials there yet). A browser signed in to the tenant passes it,
/// as its SSO session answers without the IdP; everyone else is refused:
/// a browser without a session, one with a made-up session cookie, and one
/// signed in to another tenant only. Before, the signed-in browser was
/// refused too.
#[tokio::test]
async fn a_browser_signed_in_to_a_tenant_passes_its_spent_authorize_budget() {
    use crate::revocation::{authorize_url, dev_app, register, sign_in};
    use crate::support::browser::Browser;
    let app = dev_app().await;
    app.create_tenant("other", "Other", &[]).await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/other/connections",
            Some(json!({"id": "dev", "kind": "dev"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (one, two) = (register(&app, "one").await, register(&app, "two").await);
    let mut ann = Browser::new();
    sign_in(&app, &mut ann, &one, "demo", "ann@demo.example").await;
    let mut bo = Browser::new();
    sign_in(&app, &mut bo, &one, "other", "bo@other.example").await;

    // Requests from anyone spend demo's budget.
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/demo",
            Some(json!({"settings": {"throttle": {"authorize": {"per_tenant": 2}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let anyone = || {
        app.client
            .get(app.url("/authorize?client_id=nobody&tenant=demo"))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(anyone().await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(anyone().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);

    let verifier = portcullis::tokens::random_token(32);
    let at_app = |u: &url::Url| u.host_str().is_some_and(|h| h.ends_with(".example.test"));
    // Ann, signed in to demo, reaches the next app through her SSO session.
    let back = ann
        .get_until(&authorize_url(&app, &two, "demo", &verifier), &at_app)
        .await
        .stopped();
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
    // A browser without a session, and Bo, signed in to another tenant only.
    for browser in [&mut Browser::new(), &mut bo] {
        let page = browser
            .get_until(&authorize_url(&app, &two, "demo", &verifier), &at_app)
            .await
            .page();
        assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
        assert!(page.body.contains("<code>throttle.exceeded</code>"), "{}", page.body);
    }
    // A made-up session cookie.
    let made_up = format!(
        "{}={}",
        app.state.session.cookie_name,
        tower_sessions::session::Id::default()
    );
    let resp = app
        .client
        .get(authorize_url(&app, &two, "demo", &verifier))
        .header("cookie", made_up)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Self sign-up lets anyone hold a live SSO session of a tenant. Once the
/// tenant's `/authorize` budget is spent, one session's cookie, replayed
/// from many addresses, passes at most `SIGNED_IN_AUTHORIZES_PER_SESSION`
/// times (each an SSO answer with a code); after that it is refused as
/// anyone's (429 `throttle.exceeded` on the `authorize` bucket, and
/// `throttle.signed_in_allowance_spent` logged), while another person's
/// session still passes. Before, a signed-in browser passed a spent budget
/// without end.
#[tokio::test]
async fn one_signed_in_session_passes_a_spent_authorize_budget_only_within_its_allowance() {
    use crate::support::browser::Browser;
    use crate::support::local::{far_clock, pkce, Gateway};
    use crate::support::logs::Captured;
    use portcullis::http::edge::SIGNED_IN_AUTHORIZES_PER_SESSION;
    let (logs, _guard) = Captured::start();
    // The injected clock: no bucket refills while the test runs.
    let app = Gateway {
        clock: Some(far_clock()),
        tweak: Some(|s| {
            s.throttle.authorize.per_tenant = 3;
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    // A stranger's account, as self sign-up would make it, and a person's.
    WORLD.account(&app, "mallory@mailbox.example", PASSWORD).await;
    WORLD.account(&app, "bo@acme.example", PASSWORD).await;
    let (mut mallory, mut bo) = (Browser::new(), Browser::new());
    WORLD
        .sign_in_in(&app, &mut mallory, "mallory@mailbox.example", PASSWORD, None)
        .await
        .unwrap();
    WORLD
        .sign_in_in(&app, &mut bo, "bo@acme.example", PASSWORD, None)
        .await
        .unwrap();
    // Strangers spend what is left of acme's budget.
    let anyone = app.url("/authorize?client_id=nobody&tenant=acme");
    let mut i = 0;
    while app.client.get(anyone.clone()).send().await.unwrap().status() != StatusCode::TOO_MANY_REQUESTS {
        i += 1;
        assert!(i < 3, "acme's budget was never spent");
    }

    let p = pkce();
    let authorize = WORLD.authorize_url(&app, &p, WORLD.scope);
    let cookies = mallory.cookies_for(&authorize).unwrap();
    let tries = 2 * SIGNED_IN_AUTHORIZES_PER_SESSION;
    let passed = passes_from_many_addresses(&app, &authorize, &cookies, tries, |i, status, location| {
        let location = location.unwrap_or_default();
        assert!(location.contains("code="), "request {i}: {status} {location}");
    })
    .await;
    assert_eq!(
        passed, SIGNED_IN_AUTHORIZES_PER_SESSION,
        "{passed} of {tries} requests passed"
    );
    let refusals = logs.with_reason("throttle.exceeded");
    assert!(!refusals.is_empty(), "{}", logs.text());
    assert!(
        refusals.iter().all(|l| l["fields"]["bucket"] == "authorize"),
        "{}",
        logs.text()
    );
    let spent = logs.with_reason("throttle.signed_in_allowance_spent");
    assert!(!spent.is_empty(), "{}", logs.text());
    assert!(spent.iter().all(|l| l["fields"]["tenant"] == "acme"), "{}", logs.text());

    // Bo's own session still reaches the next app.
    let back = bo.get_until(&authorize, &crate::support::local::at_app).await.stopped();
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
}

/// Anyone can name a tenant in an admin path. Requests without a valid
/// credential, and those of another tenant's key, count against their
/// address only: however many, they do not lock the tenant's admins (or
/// the platform admin acting on it) out. Requests the admin API let in for
/// the tenant spend its budget, and the next is 429 `throttle.exceeded`.
/// Before, the unauthenticated requests alone spent it.
#[tokio::test]
async fn a_tenants_admin_budget_is_spent_only_by_callers_let_in_for_it() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| s.throttle.admin.per_tenant = 3),
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    app.create_tenant("globex", "Globex", &[]).await;
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants/globex/api-keys"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let globex_key = resp.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();

    let get = |token: Option<String>| {
        let mut req = app.client.get(app.url("/admin/v1/tenants/acme"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for (token, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("made-up".to_owned()), StatusCode::UNAUTHORIZED),
        (Some(globex_key.clone()), StatusCode::NOT_FOUND),
    ] {
        for _ in 0..5 {
            assert_eq!(get(token.clone()).await.unwrap().status(), status);
        }
    }
    // acme's budget is whole: three requests, then 429.
    for _ in 0..3 {
        let resp = get(Some(app.admin_token.clone())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = get(Some(app.admin_token.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    let problem: Value = resp.json().await.unwrap();
    assert!(problem.to_string().contains("throttle.exceeded"), "{problem}");
}

/// Anyone can name a tenant in a callback's path (a made-up connection, a
/// garbage SAML response): such requests, from however many addresses,
/// spend only the tenant's anonymous bucket (`callback_anonymous`, 429
/// `throttle.exceeded` once spent), and a sign-in of the tenant's own still
/// finishes in the tenant's own budget. Before, they spent the tenant's
/// whole callback budget and every sign-in of the tenant got 429.
#[tokio::test]
async fn strangers_cannot_spend_a_tenants_callback_budget() {
    use crate::revocation::{register, sign_in};
    use crate::support::browser::Browser;
    use crate::support::logs::Captured;
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        tweak: Some(|s| {
            s.throttle.callback.per_tenant = 4;
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }),
        ..AppOptions::default()
    })
    .await;
    let rp = register(&app, "one").await;
    // Garbage answers for demo from many addresses, each within its own limit.
    let garbage = |i: usize| garbage_acs(&app, i);
    for i in 0..4 {
        let resp = garbage(i).await.unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "request {i}");
    }
    let resp = garbage(4).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&resp) >= 1);
    assert!(resp.text().await.unwrap().contains("<code>throttle.exceeded</code>"));
    let refusals = logs.with_reason("throttle.exceeded");
    assert!(!refusals.is_empty(), "{}", logs.text());
    for line in &refusals {
        assert_eq!(line["fields"]["bucket"], "callback_anonymous", "{line}");
        assert_eq!(line["fields"]["tenant"], "demo", "{line}");
    }
    // A person of demo signs in (the dev IdP's form, its answer, the
    // callback): every step goes on in demo's own budget.
    let mut ann = Browser::new();
    let code = sign_in(&app, &mut ann, &rp, "demo", "ann@demo.example").await;
    assert!(!code.code.is_empty());
    assert!(
        logs.with_reason("throttle.exceeded")
            .iter()
            .all(|l| l["fields"]["bucket"] == "callback_anonymous"),
        "{}",
        logs.text()
    );
    // Strangers are still refused.
    assert_eq!(garbage(5).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A stranger can start a real sign-in of a tenant in his own browser, and
/// answer it himself: only his first answer naming it counts as the
/// tenant's own (it ends the login, though it fails), not the ones after
/// it, nor any from a browser without the login's binding (which leaves
/// the login alone). So he spends only the tenant's anonymous bucket,
/// however often he names his login. Before, every garbage answer naming
/// it went on in the tenant's own budget.
#[tokio::test]
async fn a_strangers_own_pending_login_counts_as_the_tenants_once() {
    use crate::revocation::{register, sign_in, start};
    use crate::support::browser::{Browser, Nav};
    use crate::support::logs::Captured;
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        tweak: Some(|s| {
            s.throttle.callback.per_tenant = 20;
            s.throttle.callback.per_tenant_anonymous = Some(2);
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }),
        ..AppOptions::default()
    })
    .await;
    let rp = register(&app, "one").await;
    // The anonymous bucket spent, from addresses of their own.
    let garbage = |i: usize| garbage_acs(&app, i);
    for i in 0..2 {
        assert_ne!(garbage(i).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(garbage(2).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);

    // The stranger starts two sign-ins in his browser, each to the dev
    // IdP's page, which names the pending login in `state`.
    let mut stranger = Browser::new();
    let mut states = Vec::new();
    for _ in 0..2 {
        let Nav::Page(page) = start(&app, &mut stranger, &rp, "demo").await.0 else {
            panic!("no dev IdP page:\n{}", stranger.trail());
        };
        let state = page
            .url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        states.push(state);
    }
    let answer = |state: &str| {
        let mut url = app.url("/dev/demo/dev/callback");
        url.query_pairs_mut()
            .append_pair("state", state)
            .append_pair("ticket", "made-up");
        url
    };
    let to_app = |u: &url::Url| u.path() != "/dev/demo/dev/callback";
    // His first garbage answer is the tenant's own (refused for its
    // reason, sent back to the app); the same again is a stranger's.
    let first = stranger.get_until(&answer(&states[0]), &to_app).await.stopped();
    assert!(
        first.query_pairs().any(|(k, v)| k == "error" && v == "access_denied"),
        "{first}"
    );
    for _ in 0..3 {
        let again = stranger.get(&answer(&states[0])).await;
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS, "{}", again.body);
    }
    // From a browser without the binding, his other login is a stranger's
    // from the first answer on.
    for _ in 0..3 {
        let resp = app.client.get(answer(&states[1])).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        logs.with_reason("throttle.exceeded")
            .iter()
            .all(|l| l["fields"]["bucket"] == "callback_anonymous"),
        "{}",
        logs.text()
    );
    // A person of demo still signs in, in demo's own budget.
    let code = sign_in(&app, &mut Browser::new(), &rp, "demo", "ann@demo.example").await;
    assert!(!code.code.is_empty());
}

/// A stranger can start one real sign-in of a tenant with local accounts
/// (within his address's `/authorize` budget) and keep its binding. Once
/// the tenant's anonymous bucket is spent, a local page's request is the
/// tenant's own only through the pending login it names, whose binding the
/// browser holds, and only within that login's allowance
/// (`OWN_REQUESTS_PER_LOGIN`): his binding vouches for no request naming
/// another login or none, and his password guesses on his own login are
/// refused (429 `throttle.exceeded`, bucket `callback_anonymous`) once
/// the allowance is used. A person of the tenant still signs in, in its own
/// budget. Before, any binding of a pending login of the tenant made every
/// local-page request the tenant's own: one started sign-in spent the
/// tenant's whole own budget and its people got 429.
#[tokio::test]
async fn one_pending_login_of_a_stranger_does_not_spend_the_tenants_own_budget_on_local_pages() {
    use crate::support::browser::Browser;
    use crate::support::local::{pkce, Gateway};
    use crate::support::logs::Captured;
    use portcullis::http::edge::OWN_REQUESTS_PER_LOGIN;
    let (logs, _guard) = Captured::start();
    let app = Gateway {
        tweak: Some(|s| {
            s.throttle.callback.per_tenant = 45;
            s.throttle.callback.per_tenant_anonymous = Some(2);
        }),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    WORLD.account(&app, "ann@acme.example", PASSWORD).await;
    // The anonymous bucket spent by pages naming no login.
    let sign_in_page = WORLD.page(&app, "sign-in");
    for _ in 0..2 {
        let resp = app.client.get(sign_in_page.clone()).send().await.unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let resp = app.client.get(sign_in_page.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // The stranger starts one real sign-in: his browser holds its binding.
    let mut stranger = Browser::new();
    let page = WORLD.start(&app, &mut stranger, &pkce()).await;
    let login = page
        .url
        .query_pairs()
        .find(|(k, _)| k == "login")
        .unwrap()
        .1
        .into_owned();
    let cookies = stranger.cookies_for(&page.url).unwrap();
    let guess = |login: Option<&str>| {
        let mut form = vec![("email", "ann@acme.example"), ("password", "guess")];
        form.extend(login.map(|l| ("login", l)));
        app.client
            .post(sign_in_page.clone())
            .header("cookie", cookies.clone())
            .form(&form)
            .send()
    };
    // His binding vouches for no request naming another login, or none.
    for other in [Some("made-up"), None] {
        let resp = guess(other).await.unwrap();
        let status = resp.status();
        assert!(throttled(status, &resp.text().await.unwrap()), "{other:?}: {status}");
    }
    // Guesses naming his own login: within its allowance (the page he
    // opened took one), then refused as a stranger's.
    let mut passed = 0;
    let tries = 2 * OWN_REQUESTS_PER_LOGIN;
    for _ in 0..tries {
        let resp = guess(Some(&login)).await.unwrap();
        let status = resp.status();
        if !throttled(status, &resp.text().await.unwrap()) {
            passed += 1;
        }
    }
    assert!(
        (OWN_REQUESTS_PER_LOGIN - 2..=OWN_REQUESTS_PER_LOGIN).contains(&passed),
        "{passed} of {tries} guesses passed"
    );
    refused_as_strangers(&logs);
    assert!(
        !logs.with_reason("throttle.login_allowance_spent").is_empty(),
        "{}",
        logs.text()
    );
    ann_still_signs_in(&app, &logs).await;
}

/// Where sign-up is open, a stranger with a mailbox signs himself up,
/// confirms and signs in once: his browser then holds a live SSO session
/// of the tenant, which he can replay from many addresses. Once the
/// tenant's anonymous bucket is spent, each session passes at most its
/// allowance (`OWN_REQUESTS_PER_SESSION`) of the tenant's own budget; his
/// requests after it are a stranger's (429 `throttle.exceeded`, bucket
/// `callback_anonymous`, and `throttle.session_allowance_spent` logged).
/// A person of the tenant still signs in, in its own budget. Before, every
/// request of a signed-in browser on the tenant's sign-in pages was the
/// tenant's own: one self-made account spent the tenant's whole own budget
/// and its people got 429.
#[tokio::test]
async fn one_signed_in_strangers_session_does_not_spend_the_tenants_own_budget() {
    use crate::support::browser::Browser;
    use crate::support::local::{at_app, far_clock, link, pkce, Gateway};
    use crate::support::logs::Captured;
    use crate::support::smtp::SmtpServer;
    use portcullis::http::edge::OWN_REQUESTS_PER_SESSION;
    let (logs, _guard) = Captured::start();
    let smtp = SmtpServer::start();
    // The injected clock: no bucket refills while the test runs.
    let app = Gateway {
        smtp: Some(&smtp),
        clock: Some(far_clock()),
        tweak: Some(|s| {
            // Room for the stranger's sign-up, his session's allowance and
            // a person's sign-in, not for twice his allowance.
            s.throttle.callback.per_tenant = 100;
            s.throttle.callback.per_tenant_anonymous = Some(2);
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    WORLD.account(&app, "ann@acme.example", PASSWORD).await;
    // The anonymous bucket spent by pages naming no login.
    let sign_in_page = WORLD.page(&app, "sign-in");
    for i in 0..3 {
        let resp = app
            .client
            .get(sign_in_page.clone())
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status() == StatusCode::TOO_MANY_REQUESTS, i == 2, "request {i}");
    }

    // The stranger signs himself up, confirms and signs in (each page
    // through the login it names), and holds a live session of acme.
    let stranger_email = "mallory@mailbox.example";
    let mut stranger = Browser::new();
    let p = pkce();
    let sign_in = WORLD.start(&app, &mut stranger, &p).await;
    let form = stranger.get(&link(&sign_in, "Create account")).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let confirm = stranger
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", stranger_email),
                ("given_name", "Mallory"),
                ("family_name", "Stranger"),
                ("password", PASSWORD),
                ("password_confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    let code = smtp.wait_for(stranger_email).await.code();
    let confirmed = stranger
        .fill_and_submit(&confirm, None, &[("email", stranger_email), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let again = stranger.get(&sign_in.url).await;
    let mut form = again.form(None);
    form.set("email", stranger_email);
    form.set("password", PASSWORD);
    let back = stranger.submit_until(&again, &form, &at_app).await.stopped();
    WORLD.redeem(&app, &back, &p, None).await;

    // His session cookie, replayed from many addresses on a self-service
    // page: within the session's allowance, then refused as a stranger's.
    let change = WORLD.page(&app, "change-password");
    let cookies = stranger.cookies_for(&change).unwrap();
    let tries = 2 * OWN_REQUESTS_PER_SESSION;
    let passed = passes_from_many_addresses(&app, &change, &cookies, tries, |i, status, _| {
        assert_eq!(status, StatusCode::OK, "request {i}");
    })
    .await;
    assert_eq!(passed, OWN_REQUESTS_PER_SESSION, "{passed} of {tries} requests passed");
    refused_as_strangers(&logs);
    let spent = logs.with_reason("throttle.session_allowance_spent");
    assert!(!spent.is_empty(), "{}", logs.text());
    assert!(spent.iter().all(|l| l["fields"]["tenant"] == "acme"), "{}", logs.text());
    ann_still_signs_in(&app, &logs).await;
}

/// A stranger who signs in (the dev IdP lets anyone) where the tenant
/// requires a second factor holds an answer waiting for it, named by the
/// MFA page's `handle`, for ten minutes. Once the tenant's anonymous bucket
/// is spent, the MFA page of his wait, reloaded with his cookies from many
/// addresses, passes at most the wait's allowance
/// (`OWN_REQUESTS_PER_MFA_WAIT`) of the tenant's own budget; then 429
/// `throttle.exceeded` on `callback_anonymous`, and
/// `throttle.mfa_wait_allowance_spent` logged. A person of the tenant still
/// signs in and enrols, in its own budget. Before, every request naming his
/// wait was the tenant's own until its whole own budget was spent.
#[tokio::test]
async fn one_strangers_wait_for_a_second_factor_does_not_spend_the_tenants_own_budget() {
    use crate::mfa::{clock, dev_sign_in, enrol, set_local_mfa};
    use crate::support::browser::Browser;
    use crate::support::logs::Captured;
    use portcullis::http::edge::OWN_REQUESTS_PER_MFA_WAIT;
    let (logs, _guard) = Captured::start();
    // The injected clock: no bucket refills while the test runs.
    let clock = clock();
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        tweak: Some(|s| {
            // Room for the stranger's sign-in, his wait's allowance and a
            // person's sign-in, not for twice his allowance.
            s.throttle.callback.per_tenant = 50;
            s.throttle.callback.per_tenant_anonymous = Some(2);
            s.throttle.trusted_proxies = vec!["127.0.0.1/32".into(), "::1/128".into()];
        }),
        ..AppOptions::default()
    })
    .await;
    set_local_mfa(&app, "required").await;
    // The anonymous bucket spent, from addresses of their own.
    for i in 0..3 {
        let resp = garbage_acs(&app, i).await.unwrap();
        assert_eq!(resp.status() == StatusCode::TOO_MANY_REQUESTS, i == 2, "request {i}");
    }

    // The stranger signs in (each page through the login it names) and
    // lands on the enrolment page of his waiting answer.
    let mut stranger = Browser::new();
    let page = dev_sign_in(&app, &mut stranger, "mallory@demo.example").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", stranger.trail());
    assert!(page.url.query_pairs().any(|(k, _)| k == "handle"), "{}", page.url);
    let cookies = stranger.cookies_for(&page.url).unwrap();
    let tries = 2 * OWN_REQUESTS_PER_MFA_WAIT;
    let passed = passes_from_many_addresses(&app, &page.url, &cookies, tries, |i, status, _| {
        assert_eq!(status, StatusCode::OK, "request {i}");
    })
    .await;
    // The page he landed on took one.
    assert_eq!(
        passed,
        OWN_REQUESTS_PER_MFA_WAIT - 1,
        "{passed} of {tries} requests passed"
    );
    let refusals = logs.with_reason("throttle.exceeded");
    assert!(!refusals.is_empty(), "{}", logs.text());
    for line in &refusals {
        assert_eq!(line["fields"]["bucket"], "callback_anonymous", "{line}");
        assert_eq!(line["fields"]["tenant"], "demo", "{line}");
    }
    assert!(
        !logs.with_reason("throttle.mfa_wait_allowance_spent").is_empty(),
        "{}",
        logs.text()
    );
    // A person of demo signs in and enrols, in demo's own budget.
    let (_, _, demo) = enrol(&app, &mut Browser::new(), &clock, "ann@demo.example").await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", demo.url);
    assert!(
        logs.with_reason("throttle.exceeded")
            .iter()
            .all(|l| l["fields"]["bucket"] == "callback_anonymous"),
        "{}",
        logs.text()
    );
}

/// The tenant of the tests of strangers' own logins and sessions.
const WORLD: crate::support::local::World = crate::support::local::World {
    tenant: "acme",
    connection: "pw",
    client: "local-app",
    scope: "openid email",
};
/// Every account's password there.
const PASSWORD: &str = "Tangerine-Orbit-42";

/// Whether a local page's answer is the edge's 429 `throttle.exceeded`.
fn throttled(status: StatusCode, body: &str) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS && body.contains("<code>throttle.exceeded</code>")
}

/// `url` requested `tries` times with `cookies`, each from another address
/// (as the test's trusted proxy forwards it): how many were not the edge's
/// 429 `throttle.exceeded`, each of which `passed` checks (the request's
/// number, status and `Location`).
async fn passes_from_many_addresses(
    app: &TestApp,
    url: &url::Url,
    cookies: &str,
    tries: u64,
    passed: impl Fn(u64, StatusCode, Option<String>),
) -> u64 {
    let mut count = 0;
    for i in 0..tries {
        let resp = app
            .client
            .get(url.clone())
            .header("cookie", cookies)
            .header("x-forwarded-for", format!("203.0.113.{}", i % 250))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        if !throttled(status, &resp.text().await.unwrap()) {
            passed(i, status, location);
            count += 1;
        }
    }
    count
}

/// Some requests were refused, each as a stranger's of acme (its anonymous bucket).
fn refused_as_strangers(logs: &crate::support::logs::Captured) {
    let refusals = logs.with_reason("throttle.exceeded");
    assert!(!refusals.is_empty(), "{}", logs.text());
    for line in &refusals {
        assert_eq!(line["fields"]["bucket"], "callback_anonymous", "{line}");
        assert_eq!(line["fields"]["tenant"], "acme", "{line}");
    }
}

/// A person of acme signs in with a login of her own, in acme's own budget,
/// and nothing was refused from it.
async fn ann_still_signs_in(app: &TestApp, logs: &crate::support::logs::Captured) {
    let tokens = WORLD.sign_in(app, "ann@acme.example", PASSWORD, None).await;
    assert!(tokens["access_token"].is_string(), "{tokens}");
    assert!(
        logs.with_reason("throttle.exceeded")
            .iter()
            .all(|l| l["fields"]["bucket"] == "callback_anonymous"),
        "{}",
        logs.text()
    );
}

/// A request is counted against the tenant whose code or token the handler
/// uses: a made-up code of another tenant sent before a refresh token (or
/// a revocation's token) does not take the request past its tenant's spent
/// budget.
#[tokio::test]
async fn a_decoy_code_of_another_tenant_does_not_pass_a_spent_token_budget() {
    let app = spawn_app(AppOptions {
        tweak: Some(|s| {
            s.throttle.token.per_ip = 1000;
            s.throttle.token.per_tenant = 3;
        }),
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    let cb = reqwest::Url::parse("https://app.example/cb").unwrap();
    let backend = app.create_client("acme-backend", "Backend", &[&cb], false).await;
    let secret = backend.client_secret.unwrap();
    for i in 0..3 {
        let resp = forged_grant(&app, "acme-backend", Some(&secret)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "own request {i}");
    }
    assert_eq!(
        forged_grant(&app, "acme-backend", Some(&secret)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for (path, form) in [
        (
            "/token",
            vec![
                ("code", "other.decoy"),
                ("grant_type", "refresh_token"),
                ("refresh_token", "acme.family.secret"),
            ],
        ),
        (
            "/token",
            vec![
                ("refresh_token", "other.f.s"),
                ("grant_type", "authorization_code"),
                ("code", "acme.made-up-code"),
                ("redirect_uri", "https://app.example/cb"),
            ],
        ),
        (
            "/revoke",
            vec![("code", "other.decoy"), ("token", "acme.family.secret")],
        ),
    ] {
        let resp = app
            .client
            .post(app.url(path))
            .basic_auth("acme-backend", Some(&secret))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{path} {form:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    }
}

/// Once the tenant's anonymous bucket is spent, a local page's POST is the
/// tenant's own only through the login its form names, as its handler
/// reads only the form: a login in the query (the stranger's own, whose
/// binding his browser holds) vouches for no POST whose form names none,
/// which the handler would serve without a login. Before, the query's
/// login was credited for such a POST.
#[tokio::test]
async fn a_login_in_the_query_vouches_for_no_posted_local_form() {
    use crate::support::browser::Browser;
    use crate::support::local::{pkce, Gateway};
    let app = Gateway {
        tweak: Some(|s| {
            s.throttle.callback.per_tenant = 45;
            s.throttle.callback.per_tenant_anonymous = Some(2);
        }),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    let sign_in_page = WORLD.page(&app, "sign-in");
    for _ in 0..3 {
        app.client.get(sign_in_page.clone()).send().await.unwrap();
    }
    let mut stranger = Browser::new();
    let page = WORLD.start(&app, &mut stranger, &pkce()).await;
    let login = page
        .url
        .query_pairs()
        .find(|(k, _)| k == "login")
        .unwrap()
        .1
        .into_owned();
    let cookies = stranger.cookies_for(&page.url).unwrap();
    let post = |query_login: bool, form_login: bool| {
        let mut url = WORLD.page(&app, "sign-up");
        url.set_query(None);
        if query_login {
            url.query_pairs_mut().append_pair("login", &login);
        }
        let mut form = vec![("email", "eve@acme.example"), ("password", PASSWORD)];
        if form_login {
            form.push(("login", login.as_str()));
        }
        app.client
            .post(url)
            .header("cookie", cookies.clone())
            .form(&form)
            .send()
    };
    // His login in the form: his own (the handler refuses the form for its
    // missing CSRF token, past the edge).
    let resp = post(false, true).await.unwrap();
    let status = resp.status();
    assert!(!throttled(status, &resp.text().await.unwrap()), "{status}");
    // His login only in the query: a stranger's.
    let resp = post(true, false).await.unwrap();
    let status = resp.status();
    assert!(throttled(status, &resp.text().await.unwrap()), "{status}");
}
