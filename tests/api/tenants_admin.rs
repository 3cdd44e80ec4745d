//! Tenant administration: merge-patch updates, settings, cursor pagination
//! and filters, and validation errors naming the field.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sends a merge patch with the given content type.
async fn patch(app: &TestApp, path: &str, ctype: &str, body: Value) -> (StatusCode, Value) {
    let resp = app
        .client
        .patch(app.url(path))
        .bearer_auth(&app.admin_token)
        .header("content-type", ctype)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const MERGE: &str = "application/merge-patch+json";

#[tokio::test]
async fn patch_changes_name_domains_and_settings_with_merge_semantics() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    app.create_tenant("other", "Other", &["other.test"]).await;

    let (st, t) = patch(
        &app,
        "/admin/v1/tenants/acme",
        MERGE,
        json!({"name": "Acme Corp", "domains": ["acme.test", "Acme.Example"],
               "settings": {"sso_session_ttl_secs": 600, "require_mfa": true,
                            "allowed_clients": ["app-1"],
                            "branding": {"display_name": "ACME", "logo_url": "https://cdn.acme.test/l.png", "primary_color": "#12abEF"}}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["name"], "Acme Corp");
    assert_eq!(t["domains"], json!(["acme.test", "acme.example"]));
    assert_eq!(t["settings"]["sso_session_ttl_secs"], 600);
    assert_eq!(t["settings"]["require_mfa"], true);
    assert_eq!(t["settings"]["branding"]["primary_color"], "#12abEF");

    // The new domain routes to the tenant; a removed one is released.
    let (st, t) = patch(
        &app,
        "/admin/v1/tenants/acme",
        "application/json",
        json!({"domains": ["acme.example"], "settings": {"sso_session_ttl_secs": null, "branding": {"logo_url": null}}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert!(
        t["settings"].get("sso_session_ttl_secs").is_none(),
        "null removes a setting: {t}"
    );
    assert!(t["settings"]["branding"].get("logo_url").is_none(), "{t}");
    assert_eq!(
        t["settings"]["branding"]["display_name"], "ACME",
        "untouched members stay: {t}"
    );
    assert_eq!(t["settings"]["require_mfa"], true);
    assert_eq!(t["name"], "Acme Corp");
    let (_, got) = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(got["domains"], json!(["acme.example"]));
    let tenant = app.state.tenants.by_domain("acme.example").await.unwrap().unwrap();
    assert_eq!(tenant.id.as_str(), "acme");
    assert!(
        app.state.tenants.by_domain("acme.test").await.unwrap().is_none(),
        "released"
    );
    // The released domain can be taken by another tenant.
    let (st, _) = patch(
        &app,
        "/admin/v1/tenants/other",
        MERGE,
        json!({"domains": ["other.test", "acme.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);

    // A domain of another tenant: 409 naming `domains`, nothing changed.
    let (st, p) = patch(
        &app,
        "/admin/v1/tenants/acme",
        MERGE,
        json!({"domains": ["acme.example", "new.test", "other.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["field"], "domains");
    assert!(
        app.state.tenants.by_domain("new.test").await.unwrap().is_none(),
        "no half-made change"
    );
    let (_, got) = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(got["domains"], json!(["acme.example"]));

    // Unknown tenant: 404.
    let (st, _) = patch(&app, "/admin/v1/tenants/nobody", MERGE, json!({"name": "x"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_validation_errors_name_the_field() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let cases = [
        (json!({"name": null}), "name"),
        (json!({"name": " "}), "name"),
        (json!({"id": "other"}), "id"),
        (json!({"domains": ["ok.test", "not a domain"]}), "domains[1]"),
        (
            json!({"settings": {"sso_session_ttl_secs": 5}}),
            "settings.sso_session_ttl_secs",
        ),
        (
            json!({"settings": {"sso_session_ttl_secs": 99999999}}),
            "settings.sso_session_ttl_secs",
        ),
        (
            json!({"settings": {"sso_session_ttl_secs": "long"}}),
            "settings.sso_session_ttl_secs",
        ),
        (
            json!({"settings": {"allowed_clients": ["ok", "bad id"]}}),
            "settings.allowed_clients[1]",
        ),
        (json!({"settings": {"require_mfa": "yes"}}), "settings.require_mfa"),
        (json!({"settings": {"colour": 1}}), "settings.colour"),
        (
            json!({"settings": {"branding": {"logo_url": "http://cdn.acme.test/l.png"}}}),
            "settings.branding.logo_url",
        ),
        (
            json!({"settings": {"branding": {"logo_url": "javascript:alert(1)"}}}),
            "settings.branding.logo_url",
        ),
        (
            json!({"settings": {"branding": {"primary_color": "red"}}}),
            "settings.branding.primary_color",
        ),
        (
            json!({"settings": {"branding": {"primary_color": "#12345g"}}}),
            "settings.branding.primary_color",
        ),
        (
            json!({"settings": {"branding": {"display_name": ""}}}),
            "settings.branding.display_name",
        ),
    ];
    for (body, field) in cases {
        let (st, p) = patch(&app, "/admin/v1/tenants/acme", MERGE, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {p}");
        assert_eq!(p["field"], field, "{body} → {p}");
    }
    // Wrong content type and a body that is not an object.
    let (st, p) = patch(&app, "/admin/v1/tenants/acme", "text/plain", json!({"name": "x"})).await;
    assert_eq!((st, p["field"].as_str()), (StatusCode::BAD_REQUEST, Some("body")));
    let (st, p) = patch(&app, "/admin/v1/tenants/acme", MERGE, json!(["name"])).await;
    assert_eq!((st, p["field"].as_str()), (StatusCode::BAD_REQUEST, Some("body")));
    // Nothing changed.
    let (_, got) = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(got["name"], "Acme");
    assert_eq!(got["settings"]["require_mfa"], false);
}

#[tokio::test]
async fn pagination_walks_every_tenant_exactly_once() {
    let app = spawn_app(AppOptions::default()).await;
    let mut ids: Vec<String> = (0..23).map(|i| format!("t{:02}", (i * 7) % 23)).collect();
    for id in &ids {
        app.create_tenant(id, &format!("Name {id}"), &[&format!("{id}.test")])
            .await;
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/tenants?limit=5&cursor={c}"),
            None => "/admin/v1/tenants?limit=5".into(),
        };
        let (st, page) = app.admin(Method::GET, &path, None).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let items = page["tenants"].as_array().unwrap();
        assert!(items.len() <= 5);
        for t in items {
            assert!(t["name"].is_string(), "tenant objects, not ids: {t}");
            seen.push(t["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every tenant once, ordered by id");
    assert_eq!(pages, 5);
    // Default page size 50 holds all of them.
    let (_, all) = app.admin(Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(all["tenants"].as_array().unwrap().len(), 23);
    assert!(all["next_cursor"].is_null());
    // Bad limits and forged cursors name the parameter.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("cursor=t05", "cursor"),
        ("domain=not%20a%20domain", "domain"),
    ] {
        let (st, p) = app.admin(Method::GET, &format!("/admin/v1/tenants?{q}"), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {p}");
        assert_eq!(p["field"], field, "{q}: {p}");
    }
}

#[tokio::test]
async fn list_filters_by_domain_name_prefix_and_query() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("acme", "Acme Corp", &["acme.test"]).await;
    app.create_tenant("acorn", "Acorn Ltd", &["acorn.test"]).await;
    app.create_tenant("globex", "Globex", &["globex.test", "gx.test"]).await;
    let ids = |v: &Value| -> Vec<String> {
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, v) = app.admin(Method::GET, "/admin/v1/tenants?domain=GX.test", None).await;
    assert_eq!(ids(&v), ["globex"]);
    let (_, v) = app.admin(Method::GET, "/admin/v1/tenants?domain=none.test", None).await;
    assert!(ids(&v).is_empty());
    let (_, v) = app.admin(Method::GET, "/admin/v1/tenants?name_prefix=ac", None).await;
    assert_eq!(ids(&v), ["acme", "acorn"]);
    let (_, v) = app.admin(Method::GET, "/admin/v1/tenants?q=corp", None).await;
    assert_eq!(ids(&v), ["acme"]);
    let (_, v) = app
        .admin(Method::GET, "/admin/v1/tenants?q=acorn.test&limit=1", None)
        .await;
    assert_eq!(ids(&v), ["acorn"]);
    // A filtered walk with a small page still visits each match once.
    let (_, p1) = app
        .admin(Method::GET, "/admin/v1/tenants?name_prefix=a&limit=1", None)
        .await;
    assert_eq!(ids(&p1), ["acme"]);
    let c = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = app
        .admin(
            Method::GET,
            &format!("/admin/v1/tenants?name_prefix=a&limit=1&cursor={c}"),
            None,
        )
        .await;
    assert_eq!(ids(&p2), ["acorn"]);
}
