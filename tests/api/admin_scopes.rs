//! Admin principals and their reach: platform API keys with scopes, tenant
//! API keys limited to their tenant (404 and `admin.out_of_scope` anywhere
//! else, every route tried), keys hashed at rest and dead once deleted, and
//! the audit log (who, what, before/after without secrets, bounded).

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::logs::Captured;
use portcullis::audit::{Actor, Audit, AuditEvent, Target};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::store::memory::MemoryStore;
use portcullis::store::Store;
use portcullis::upstream::Identity;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let problem = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json");
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        assert!(problem, "{status} without problem+json: {text}");
    }
    (status, v)
}

/// Two tenants, each with a dev connection `main` and one user; answers the
/// users' subs.
async fn two_tenants(app: &TestApp) -> (String, String) {
    let mut subs = Vec::new();
    for t in ["acme", "globex"] {
        app.create_tenant(t, t, &[]).await;
        app.admin_create(
            &format!("/admin/v1/tenants/{t}/connections"),
            json!({"id": "main", "kind": "dev"}),
        )
        .await;
        let (user, _) = app
            .state
            .provider
            .directory
            .provision(
                &TenantId::parse(t).unwrap(),
                &ConnectionId::parse("main").unwrap(),
                &Identity {
                    subject: format!("{t}-alice"),
                    email: Some(format!("alice@{t}.test")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        subs.push(user.sub);
    }
    (subs[0].clone(), subs[1].clone())
}

async fn tenant_key(app: &TestApp, tenant: &str) -> (String, String) {
    let resp = app
        .client
        .post(app.url(&format!("/admin/v1/tenants/{tenant}/api-keys")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn platform_key(app: &TestApp, name: &str, scopes: &[&str]) -> (String, String) {
    let v = app
        .admin_create("/admin/v1/api-keys", json!({"name": name, "scopes": scopes}))
        .await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_tenant_key_reaches_its_tenant_and_nothing_else() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    let (acme_sub, globex_sub) = two_tenants(&app).await;
    let (kid, key) = tenant_key(&app, "acme").await;
    let (globex_kid, _) = tenant_key(&app, "globex").await;
    let (pk_id, _) = platform_key(&app, "ops", &["read"]).await;
    app.admin_create(
        "/admin/v1/clients",
        json!({"client_id": "app1", "redirect_uris": ["https://app.test/cb"]}),
    )
    .await;

    // Its own tenant: reads and changes work.
    let own = "/admin/v1/tenants/acme".to_owned();
    assert_eq!(call(&app, Method::GET, &own, &key, None).await.0, StatusCode::OK);
    for path in [
        format!("{own}/connections"),
        format!("{own}/connections/main"),
        format!("{own}/users"),
        format!("{own}/users/{acme_sub}"),
        format!("{own}/audit"),
    ] {
        let (status, body) = call(&app, Method::GET, &path, &key, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    }
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("{own}/connections"),
        &key,
        Some(json!({"id": "second", "kind": "dev"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("{own}/users/{acme_sub}/disable"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Every route with the other tenant's ids, platform routes, and the
    // platform-only routes of its own tenant.
    let g = "/admin/v1/tenants/globex";
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, g.to_owned(), None),
        (Method::DELETE, g.to_owned(), None),
        (Method::GET, format!("{g}/connections"), None),
        (
            Method::POST,
            format!("{g}/connections"),
            Some(json!({"id": "evil", "kind": "dev"})),
        ),
        (Method::GET, format!("{g}/connections/main"), None),
        (Method::DELETE, format!("{g}/connections/main"), None),
        (Method::GET, format!("{g}/users"), None),
        (Method::GET, format!("{g}/users/{globex_sub}"), None),
        (Method::DELETE, format!("{g}/users/{globex_sub}"), None),
        (Method::POST, format!("{g}/users/{globex_sub}/disable"), None),
        (Method::POST, format!("{g}/users/{globex_sub}/enable"), None),
        (Method::GET, format!("{g}/audit"), None),
        (Method::GET, format!("{g}/api-keys"), None),
        (Method::POST, format!("{g}/api-keys"), Some(json!({}))),
        (Method::DELETE, format!("{g}/api-keys/{globex_kid}"), None),
        // The other tenant's id percent-encoded is still the other tenant.
        (Method::GET, "/admin/v1/tenants/%67lobex/connections".to_owned(), None),
        (Method::GET, "/admin/v1/tenants".to_owned(), None),
        (
            Method::POST,
            "/admin/v1/tenants".to_owned(),
            Some(json!({"id": "evil"})),
        ),
        (Method::GET, "/admin/v1/clients".to_owned(), None),
        (
            Method::POST,
            "/admin/v1/clients".to_owned(),
            Some(json!({"client_id": "evil", "redirect_uris": ["https://e.test/cb"]})),
        ),
        (Method::GET, "/admin/v1/clients/app1".to_owned(), None),
        (Method::DELETE, "/admin/v1/clients/app1".to_owned(), None),
        (Method::POST, "/admin/v1/keys/rotate".to_owned(), None),
        (Method::GET, "/admin/v1/resource-servers".to_owned(), None),
        (
            Method::POST,
            "/admin/v1/resource-servers".to_owned(),
            Some(json!({"identifier": "https://api.evil.test"})),
        ),
        (
            Method::GET,
            "/admin/v1/resource-servers/https%3A%2F%2Fapi.test".to_owned(),
            None,
        ),
        (
            Method::DELETE,
            "/admin/v1/resource-servers/https%3A%2F%2Fapi.test".to_owned(),
            None,
        ),
        (Method::GET, "/admin/v1/api-keys".to_owned(), None),
        (
            Method::POST,
            "/admin/v1/api-keys".to_owned(),
            Some(json!({"name": "evil"})),
        ),
        (Method::DELETE, format!("/admin/v1/api-keys/{pk_id}"), None),
        (Method::GET, "/admin/v1/audit".to_owned(), None),
        // Its own tenant's platform-only routes.
        (Method::DELETE, own.clone(), None),
        (Method::GET, format!("{own}/api-keys"), None),
        (Method::POST, format!("{own}/api-keys"), Some(json!({}))),
        (Method::DELETE, format!("{own}/api-keys/{kid}"), None),
    ];
    let before = logs.with_reason("admin.out_of_scope").len();
    for (method, path, body) in &attempts {
        let (status, problem) = call(&app, method.clone(), path, &key, body.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
        assert_eq!(problem["status"], 404);
    }
    let logged = logs.with_reason("admin.out_of_scope");
    assert_eq!(logged.len() - before, attempts.len(), "one log line per attempt");
    for (line, (method, path, _)) in logged[before..].iter().zip(&attempts) {
        assert_eq!(line["fields"]["principal"], format!("tenant_key:{kid}"));
        assert_eq!(line["fields"]["tenant"], "acme");
        assert_eq!(line["fields"]["method"], method.as_str());
        // The route's template, never the path: a path can name a person.
        assert!(line["fields"].get("path").is_none(), "{line}");
        let route = line["fields"]["route"].as_str().unwrap_or_default();
        assert_eq!(route, route_template(path), "{method} {path}");
        // The tenant asked for, where a tenant route named one.
        let asked = line["fields"]["asked_tenant"].as_str().unwrap_or_default();
        assert!(
            asked.is_empty() || (asked == "globex" && path.contains("lobex")),
            "{line}"
        );
    }
    let named = logged[before..]
        .iter()
        .filter(|l| l["fields"]["asked_tenant"] == "globex");
    assert!(named.count() >= 10, "the tenant routes name the tenant asked for");

    // Nothing of globex changed, and the platform state neither.
    let (_, user) = app.admin(Method::GET, &format!("{g}/users/{globex_sub}"), None).await;
    assert_eq!(user["disabled"], false);
    assert_eq!(
        app.admin(Method::GET, &format!("{g}/connections/main"), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/tenants/evil", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/clients/app1", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/tenants/acme", None).await.0,
        StatusCode::OK
    );
    // The key itself still works.
    assert_eq!(call(&app, Method::GET, &own, &key, None).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn a_read_only_platform_key_reads_but_cannot_write() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &[]).await;
    let (ro_id, ro) = platform_key(&app, "dashboards", &["read"]).await;
    let (rw_id, rw) = platform_key(&app, "terraform", &["read", "write"]).await;

    for path in [
        "/admin/v1/tenants",
        "/admin/v1/tenants/acme",
        "/admin/v1/clients",
        "/admin/v1/audit",
    ] {
        assert_eq!(
            call(&app, Method::GET, path, &ro, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let writes = [
        (Method::POST, "/admin/v1/tenants", Some(json!({"id": "ro-made"}))),
        (Method::DELETE, "/admin/v1/tenants/acme", None),
        (Method::POST, "/admin/v1/keys/rotate", None),
        (Method::POST, "/admin/v1/api-keys", Some(json!({"name": "escalate"}))),
        (Method::DELETE, &format!("/admin/v1/api-keys/{rw_id}"), None),
    ];
    for (method, path, body) in writes {
        let (status, problem) = call(&app, method.clone(), path, &ro, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(problem["title"], "Forbidden");
    }
    assert_eq!(logs.with_reason("admin.read_only").len(), 5);
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/tenants/ro-made", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/tenants/acme", None).await.0,
        StatusCode::OK
    );

    // The read-write key writes, and the audit log names it.
    let (status, _) = call(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        &rw,
        Some(json!({"id": "rw-made"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, log) = app.admin(Method::GET, "/admin/v1/audit?limit=1", None).await;
    assert_eq!(log["events"][0]["action"], "tenant.created");
    assert_eq!(log["events"][0]["actor"], format!("platform_key:{rw_id}"));
    // The list shows names and scopes, no secrets.
    let (_, list) = app.admin(Method::GET, "/admin/v1/api-keys", None).await;
    let text = list.to_string();
    assert!(text.contains(&ro_id) && text.contains("dashboards"), "{text}");
    assert!(
        !text.contains(ro.rsplit('.').next().unwrap()) && !text.contains("sha256"),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn deleted_keys_and_keys_of_a_deleted_tenant_stop_working() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &[]).await;
    let (pid, pkey) = platform_key(&app, "ci", &["write"]).await;
    let (tid, tkey) = tenant_key(&app, "acme").await;
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants", &pkey, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants/acme", &tkey, None).await.0,
        StatusCode::OK
    );

    // A wrong secret with a real id is refused.
    let forged = format!("pk.{pid}.{}", portcullis::tokens::random_token(32));
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants", &forged, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A tenant key moved to another tenant's name is refused.
    app.create_tenant("globex", "Globex", &[]).await;
    let moved = tkey.replacen("tk.acme.", "tk.globex.", 1);
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants/globex", &moved, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (status, _) = app
        .admin(Method::DELETE, &format!("/admin/v1/api-keys/{pid}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, p) = call(&app, Method::GET, "/admin/v1/tenants", &pkey, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{p}");
    let (status, _) = app
        .admin(Method::DELETE, &format!("/admin/v1/tenants/acme/api-keys/{tid}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants/acme", &tkey, None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A tenant key dies with its tenant, even if the id is created again.
    let (_, tkey2) = tenant_key(&app, "acme").await;
    app.delete_tenant("acme").await;
    app.create_tenant("acme", "Acme again", &[]).await;
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants/acme", &tkey2, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The new tenant inherits neither the old one's keys nor its audit log.
    let (_, keys) = app.admin(Method::GET, "/admin/v1/tenants/acme/api-keys", None).await;
    assert_eq!(keys["api_keys"], json!([]));
    let (_, log) = app.admin(Method::GET, "/admin/v1/tenants/acme/audit", None).await;
    assert_eq!(log["events"], json!([]));
}

#[tokio::test(flavor = "current_thread")]
async fn keys_are_stored_hashed() {
    let prefix = crate::support::redis::prefix();
    let app = spawn_app(AppOptions {
        redis_url: Some(crate::support::redis::url()),
        redis_prefix: Some(prefix.clone()),
        ..Default::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    let (_, pkey) = platform_key(&app, "ci", &["read"]).await;
    let (_, tkey) = tenant_key(&app, "acme").await;
    assert_eq!(
        call(&app, Method::GET, "/admin/v1/tenants", &pkey, None).await.0,
        StatusCode::OK
    );

    // Every value under the gateway's prefix, whatever its type.
    let client = redis::Client::open(crate::support::redis::url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.contains("api_keys")), "{keys:?}");
    let mut everything = String::new();
    for k in &keys {
        let kind: String = redis::cmd("TYPE").arg(k).query_async(&mut conn).await.unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(k).query_async(&mut conn).await.unwrap()],
            "set" => redis::cmd("SMEMBERS").arg(k).query_async(&mut conn).await.unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            // The audit streams: every field of every entry.
            "stream" => {
                type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
                let entries: Entries = redis::cmd("XRANGE")
                    .arg(k)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entries
                    .into_iter()
                    .flat_map(|(_, fields)| fields.into_iter().map(|(_, v)| v))
                    .collect()
            }
            // Expired between KEYS and TYPE (a rate-limit window).
            "none" => Vec::new(),
            other => panic!("unexpected type {other} at {k}"),
        };
        for v in values {
            everything.push_str(&String::from_utf8_lossy(&v));
        }
        everything.push_str(k);
    }
    for key in [&pkey, &tkey] {
        let secret = key.rsplit('.').next().unwrap();
        assert_eq!(secret.len(), 43, "256 bits, base64url");
        assert!(!everything.contains(secret), "a key's secret is in the store");
        assert!(everything.contains(&portcullis::provider::clients::hash_secret(secret)));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_audit_log_records_each_change_without_secrets() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    let (acme_sub, _) = two_tenants(&app).await;
    let (kid, key) = tenant_key(&app, "acme").await;
    // A change with a request id of the caller's choosing.
    let resp = app
        .client
        .post(app.url("/admin/v1/clients"))
        .bearer_auth(&app.admin_token)
        .header("x-request-id", "req-client-42")
        .json(&json!({"client_id": "billing", "redirect_uris": ["https://billing.test/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-request-id"], "req-client-42");
    let client: Value = resp.json().await.unwrap();
    let client_secret = client["client_secret"].as_str().unwrap().to_owned();
    app.admin_create(
        "/admin/v1/resource-servers",
        json!({"identifier": "https://api.test", "scopes": [{"name": "read"}]}),
    )
    .await;
    assert_eq!(
        app.admin(Method::POST, "/admin/v1/keys/rotate", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.admin(Method::DELETE, "/admin/v1/clients/billing", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.admin(
            Method::DELETE,
            "/admin/v1/resource-servers/https%3A%2F%2Fapi.test",
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    // Changes by the tenant key.
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/admin/v1/tenants/acme/users/{acme_sub}/disable"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/admin/v1/tenants/acme/users/{acme_sub}/enable"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/admin/v1/tenants/acme/connections/main",
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/admin/v1/tenants/acme/users/{acme_sub}"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the user went with its connection");
    app.delete_tenant("globex").await;

    let (_, global) = app.admin(Method::GET, "/admin/v1/audit", None).await;
    let actions: Vec<&str> = global["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.deleted",
            "resource_server.deleted",
            "client.deleted",
            "signing_keys.rotated",
            "resource_server.created",
            "client.created",
            "tenant.created",
            "tenant.created",
        ],
        "newest first"
    );
    let created = &global["events"][5];
    assert_eq!(created["actor"], "platform_token");
    assert_eq!(created["request_id"], "req-client-42");
    assert_eq!(created["target"], json!({"kind": "client", "id": "billing"}));
    assert_eq!(created["after"]["redirect_uris"], json!(["https://billing.test/cb"]));
    assert_eq!(global["events"][2]["before"]["client_id"], "billing");
    assert!(global["events"][0]["before"]["name"] == "globex");

    let (_, tenant_log) = app.admin(Method::GET, "/admin/v1/tenants/acme/audit", None).await;
    let events = tenant_log["events"].as_array().unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "connection.deleted",
            "user.enabled",
            "user.disabled",
            "api_key.created",
            "connection.created"
        ]
    );
    assert_eq!(events[0]["actor"], format!("tenant_key:{kid}"));
    assert_eq!(events[0]["before"]["id"], "main");
    assert_eq!(events[0]["after"], Value::Null);
    assert_eq!(events[2]["target"], json!({"kind": "user", "id": acme_sub}));
    assert_eq!(events[2]["before"]["disabled"], false);
    assert_eq!(events[2]["after"]["disabled"], true);
    assert_eq!(events[3]["actor"], "platform_token");
    // The same events are readable by the tenant's own key.
    let (_, own) = call(&app, Method::GET, "/admin/v1/tenants/acme/audit", &key, None).await;
    assert_eq!(own["events"], tenant_log["events"]);

    // Pages: newest first, one at a time, through the cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/tenants/acme/audit?limit=2&cursor={c}"),
            None => "/admin/v1/tenants/acme/audit?limit=2".to_owned(),
        };
        let (status, page) = app.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["events"].as_array().unwrap() {
            seen.push(e["id"].clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, events.iter().map(|e| e["id"].clone()).collect::<Vec<_>>());
    let (status, p) = app
        .admin(Method::GET, "/admin/v1/tenants/acme/audit?cursor=nonsense", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(p["field"], "cursor");
    let (status, p) = app.admin(Method::GET, "/admin/v1/audit?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(p["field"], "limit");

    // No secret anywhere: not in the stored log, not in the process log.
    let everything = format!("{global}{tenant_log}{}", logs.text());
    assert!(!everything.contains(&client_secret), "the client secret leaked");
    assert!(
        !everything.contains(key.rsplit('.').next().unwrap()),
        "the API key leaked"
    );
    let structured = logs.with_reason("audit");
    assert!(structured.iter().any(|l| l["fields"]["action"] == "client.created"
        && l["fields"]["actor"] == "platform_token"
        && l["fields"]["request_id"] == "req-client-42"));
}

#[tokio::test]
async fn the_audit_log_keeps_only_its_newest_events_and_cursors_survive_new_ones() {
    let clock = ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let shared: SharedClock = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(shared.clone()));
    let audit = Audit::with_max_events(store, shared, 5);
    let acme = TenantId::parse("acme").unwrap();
    let event = |i: usize| {
        AuditEvent::new(
            &Actor::PlatformToken,
            "user.disabled",
            Target::new("user", format!("u{i}")),
            "r",
        )
        .tenant(&acme)
    };
    for i in 0..12 {
        clock.advance(chrono::Duration::seconds(1));
        audit.record(event(i)).await.unwrap();
    }
    let page = audit.list(Some(&acme), None, 100).await.unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| e.target.id.as_str()).collect();
    assert_eq!(ids, ["u11", "u10", "u9", "u8", "u7"]);
    assert!(page.next_cursor.is_none());
    assert!(page.events[0].at > page.events[1].at);
    // Nothing in the global log.
    assert!(audit.list(None, None, 10).await.unwrap().events.is_empty());

    // A cursor stays right while newer events push the list down.
    let first = audit.list(Some(&acme), None, 2).await.unwrap();
    audit.record(event(12)).await.unwrap();
    let second = audit.list(Some(&acme), first.next_cursor.as_deref(), 2).await.unwrap();
    let ids: Vec<&str> = second.events.iter().map(|e| e.target.id.as_str()).collect();
    assert_eq!(ids, ["u9", "u8"]);
    assert!(second.next_cursor.is_none(), "u7 was trimmed: the log ends at u8");
    // A cursor whose event was trimmed away ends the listing.
    for i in 13..20 {
        audit.record(event(i)).await.unwrap();
    }
    let gone = audit.list(Some(&acme), first.next_cursor.as_deref(), 2).await.unwrap();
    assert!(gone.events.is_empty() && gone.next_cursor.is_none());
}

/// A connection the platform admin disabled stays disabled for the
/// tenant's own admin: its API key can neither enable it, nor set its
/// status by PATCH, nor delete it (to create it again, active), each 403
/// with `admin.disabled_by_platform`; one the tenant disabled itself it
/// enables again, and once the platform enables it the tenant manages it
/// as before.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_platform_disabled_stays_disabled_for_the_tenant_admin() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    two_tenants(&app).await;
    let (_, key) = tenant_key(&app, "acme").await;
    let conn = "/admin/v1/tenants/acme/connections/main";
    let platform = app.admin_token.clone();

    let (status, body) = call(&app, Method::POST, &format!("{conn}/disable"), &platform, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "disabled");
    assert_eq!(body["disabled_by"], "platform");
    let attempts = [
        (Method::POST, format!("{conn}/enable"), None),
        (Method::PATCH, conn.to_owned(), Some(json!({"status": "active"}))),
        (Method::DELETE, conn.to_owned(), None),
    ];
    for (method, path, body) in &attempts {
        let (status, problem) = call(&app, method.clone(), path, &key, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
    }
    assert_eq!(logs.with_reason("admin.disabled_by_platform").len(), attempts.len());
    // The tenant's own disable changes nothing of whose switch-off it is.
    let (status, body) = call(&app, Method::POST, &format!("{conn}/disable"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled_by"], "platform");
    let (_, now) = call(&app, Method::GET, conn, &platform, None).await;
    assert_eq!(
        (now["status"].as_str(), now["disabled_by"].as_str()),
        (Some("disabled"), Some("platform"))
    );

    // Enabled by the platform, the connection is the tenant's to manage again.
    let (status, body) = call(&app, Method::POST, &format!("{conn}/enable"), &platform, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("disabled_by").is_none(), "{body}");
    let (status, body) = call(&app, Method::POST, &format!("{conn}/disable"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("disabled_by").is_none(), "{body}");
    let (status, body) = call(&app, Method::POST, &format!("{conn}/enable"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "active");
}

/// The webhook outbox bounds admin changes and security events apart as the
/// log does: with the receiver down, a flood of failed sign-ins from any
/// tenant never drops an admin change from delivery.
#[tokio::test]
async fn a_flood_of_security_events_never_drops_an_admin_change_from_webhook_delivery() {
    let clock = ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let shared: SharedClock = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(shared.clone()));
    let audit = Audit::with_config(
        store.clone(),
        shared,
        portcullis::audit::AuditConfig {
            max_events: 5,
            outbox_max_events: Some(5),
        },
    );
    let acme = TenantId::parse("acme").unwrap();
    audit
        .record(AuditEvent::new(&Actor::PlatformToken, "hook.created", Target::new("hook", "pre"), "r").tenant(&acme))
        .await
        .unwrap();
    for _ in 0..40 {
        clock.advance(chrono::Duration::milliseconds(3));
        audit
            .security(AuditEvent::signin_failed(
                &acme,
                Some("corp"),
                "callback.connection_not_active",
            ))
            .await;
    }
    let queued: Vec<String> = store
        .stream_range(&portcullis::audit::webhook::outbox_key(), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.value).unwrap())
        .collect();
    assert_eq!(queued.len(), 6, "{queued:?}");
    assert!(queued[0].contains("hook.created"), "{}", queued[0]);
    assert!(queued[1..].iter().all(|e| e.contains("callback.connection_not_active")));
    // The tenant's log likewise.
    let page = audit.list(Some(&acme), None, 100).await.unwrap();
    assert_eq!(page.events.len(), 6);
    assert_eq!(page.events[5].action, "hook.created");
}

/// The route template a path of `a_tenant_key_reaches_its_tenant_and_nothing_else`
/// matches: each id in it replaced by its parameter's name.
fn route_template(path: &str) -> String {
    let path = path.replace("%67lobex", "globex");
    let rest = path.trim_start_matches("/admin/v1");
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let mut out = String::from("/admin/v1");
    for (i, seg) in segments.iter().enumerate() {
        let named = match (i, segments.first().copied()) {
            (1, Some("tenants")) | (1, Some("clients")) => "{id}",
            (1, Some("api-keys")) => "{kid}",
            (1, Some("resource-servers")) => "{*identifier}",
            (3, _) if segments.get(2) == Some(&"users") => "{sub}",
            (3, _) if segments.get(2) == Some(&"connections") => "{cid}",
            (3, _) if segments.get(2) == Some(&"api-keys") => "{kid}",
            _ => seg,
        };
        out.push('/');
        out.push_str(named);
    }
    out
}

/// A tenant admin proves a domain by its DNS record only: it declares none
/// (a PATCH of `domains`), overrides no check, claims no domain another
/// tenant has, and reaches no other tenant's domains (404,
/// `admin.out_of_scope`).
#[tokio::test(flavor = "current_thread")]
async fn a_tenant_key_proves_a_domain_by_dns_only_and_never_reaches_another_tenants() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    two_tenants(&app).await;
    let (status, v) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/globex",
            Some(json!({"domains": ["globex.test"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, key) = tenant_key(&app, "acme").await;
    let own = "/admin/v1/tenants/acme";

    let (status, p) = call(&app, Method::PATCH, own, &key, Some(json!({"domains": ["acme.test"]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "domains", "{p}");
    let (status, p) = call(
        &app,
        Method::POST,
        &format!("{own}/domains"),
        &key,
        Some(json!({"domain": "acme.test"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let (status, p) = call(
        &app,
        Method::POST,
        &format!("{own}/domains/acme.test/verify"),
        &key,
        Some(json!({"override": true})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "override", "{p}");
    let (_, list) = call(&app, Method::GET, &format!("{own}/domains"), &key, None).await;
    assert_eq!(list["domains"][0]["verified"], false, "{list}");

    // Another tenant's domain: not claimable, and its routes are not there.
    let (status, p) = call(
        &app,
        Method::POST,
        &format!("{own}/domains"),
        &key,
        Some(json!({"domain": "Globex.test."})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["field"], "domain", "{p}");
    for (method, path, body) in [
        (
            Method::POST,
            "/admin/v1/tenants/globex/domains",
            Some(json!({"domain": "acme.test"})),
        ),
        (Method::GET, "/admin/v1/tenants/globex/domains", None),
        (Method::DELETE, "/admin/v1/tenants/globex/domains/globex.test", None),
        (
            Method::PATCH,
            "/admin/v1/tenants/globex/domains/globex.test",
            Some(json!({"connections": []})),
        ),
        (
            Method::POST,
            "/admin/v1/tenants/globex/domains/globex.test/verify",
            Some(json!({"override": true})),
        ),
    ] {
        let (status, p) = call(&app, method.clone(), path, &key, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {p}");
    }
    assert!(!logs.with_reason("admin.out_of_scope").is_empty());
    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/globex/domains", None).await;
    assert_eq!(
        list["domains"],
        json!([{"domain": "globex.test", "verified": true, "verified_by": "platform_admin", "connections": []}])
    );
}

/// A tenant key stored without the tenant incarnation it was made for (as
/// keys were before incarnations) is no credential for a tenant that does
/// not exist: 401 (`admin.key_tenant_gone`), never a tenant admin of the id.
#[tokio::test(flavor = "current_thread")]
async fn a_tenant_key_without_an_incarnation_opens_nothing_for_a_tenant_that_is_gone() {
    let (logs, _guard) = Captured::start();
    let app = spawn_app(AppOptions::default()).await;
    let (id, secret) = ("0123456789abcdef", "a-secret-of-a-key-stored-before-incarnations");
    let record = json!({
        "id": id, "name": "old", "scopes": ["read", "write"],
        "secret_sha256": portcullis::provider::clients::hash_secret(secret),
        "created_at": "2025-01-01T00:00:00Z",
    });
    app.state
        .store
        .put(
            &portcullis::store::Key::tenant("gone", "api_keys", format!("key:{id}")),
            record.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    let key = format!("tk.gone.{id}.{secret}");
    let (status, p) = call(&app, Method::GET, "/admin/v1/tenants/gone/domains", &key, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{p}");
    assert!(!logs.with_reason("admin.key_tenant_gone").is_empty());
}
