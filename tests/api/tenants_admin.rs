//! Tenant administration: merge-patch updates, settings, cursor pagination
//! and filters, and validation errors naming the field.

use crate::support::admin::members;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use portcullis::audit::Audit;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::store::Key;
use portcullis::upstream::Identity;
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

/// A dev-mode gateway (demo tenant, dev IdP) on a manual clock.
async fn dev_app(clock: &portcullis::clock::ManualClock) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await
}

fn manual_clock() -> portcullis::clock::ManualClock {
    portcullis::clock::ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .into(),
    )
}

/// `/authorize` for `client_id` at the demo tenant.
fn authorize_url(app: &TestApp, client_id: &str, redirect: &url::Url, verifier: &str) -> url::Url {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect.as_str())
        .append_pair("scope", "openid email offline_access")
        .append_pair("tenant", "demo")
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(verifier.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256");
    url
}

/// The tenant's SSO session lifetime replaces the global one: the session
/// is reused before it ends and not after (the global lifetime is longer).
#[tokio::test]
async fn the_tenants_sso_session_lifetime_ends_the_session() {
    let clock = manual_clock();
    let app = dev_app(&clock).await;
    let (st, t) = patch(
        &app,
        "/admin/v1/tenants/demo",
        MERGE,
        json!({"settings": {"sso_session_ttl_secs": 120}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let mut browser = crate::support::browser::Browser::new();
    let login = browser.get(&app.url("/demo/login")).await;
    assert!(login.url.path().starts_with("/dev/demo/dev/login"), "{}", login.url);
    let done = browser
        .fill_and_submit(&login, None, &[("email", "ada@demo.example")])
        .await;
    assert!(done.url.path().starts_with("/demo/callback"), "{}", done.url);

    clock.advance(chrono::Duration::seconds(100));
    browser.clear_history();
    let again = browser.get(&app.url("/demo/login")).await;
    assert!(
        again.url.path().starts_with("/demo/callback"),
        "reused within 120 s: {}",
        again.url
    );

    clock.advance(chrono::Duration::seconds(30));
    browser.clear_history();
    let later = browser.get(&app.url("/demo/login")).await;
    assert!(
        later.url.path().starts_with("/dev/demo/dev/login"),
        "the tenant's 120 s session has ended (the global lifetime has not): {}",
        later.url
    );
}

/// `allowed_clients` refuses other apps at `/authorize` and at the token
/// endpoint (a code issued before the restriction), and their access
/// tokens at once: `/userinfo` answers 401, `/introspect` `active: false`
/// (they were accepted until they expired).
#[tokio::test]
async fn allowed_clients_refuses_other_apps_at_authorize_and_token() {
    use portcullis::provider::grants::TokenRequest;
    let clock = manual_clock();
    let app = dev_app(&clock).await;
    let redirect = url::Url::parse("https://app.example.test/cb").unwrap();
    let a = app.create_client("app-a", "A", &[&redirect], false).await;
    app.create_client("app-b", "B", &[&redirect], false).await;

    // A code for app-a, issued while every app is allowed.
    let verifier = portcullis::tokens::random_token(32);
    let mut browser = crate::support::browser::Browser::new();
    let login = browser.get(&authorize_url(&app, "app-a", &redirect, &verifier)).await;
    let stop = |u: &url::Url| u.host_str() == Some("app.example.test");
    let form = login.form(None);
    let back = browser.submit_until(&login, &form, &stop).await.stopped();
    let first = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let secret_a = a.client_secret.unwrap();
    let creds = portcullis::provider::grants::ClientCredentials::Secret {
        id: "app-a".into(),
        secret: secret_a.clone(),
    };
    let client = app.state.provider.authenticate_client(&creds).await.unwrap();
    let redeem = |code: String| TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code),
        redirect_uri: Some(redirect.to_string()),
        code_verifier: Some(verifier.clone()),
        ..TokenRequest::default()
    };
    let tokens = app.state.provider.token(&client, &redeem(first)).await.unwrap();
    let refresh_token = tokens.refresh_token.clone().expect("a refresh token");
    let access_token = tokens.access_token.clone();
    let userinfo = || app.client.get(app.url("/userinfo")).bearer_auth(&access_token).send();
    let introspect = || {
        app.client
            .post(app.url("/introspect"))
            .basic_auth("app-a", Some(&secret_a))
            .form(&[("token", access_token.as_str())])
            .send()
    };
    assert_eq!(userinfo().await.unwrap().status(), StatusCode::OK);
    let active: serde_json::Value = introspect().await.unwrap().json().await.unwrap();
    assert_eq!(active["active"], true, "{active}");
    // A second code (SSO), still unredeemed when the tenant restricts its apps.
    let again = browser
        .get_until(&authorize_url(&app, "app-a", &redirect, &verifier), &stop)
        .await
        .stopped();
    let code = again.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();

    let (st, t) = patch(
        &app,
        "/admin/v1/tenants/demo",
        MERGE,
        json!({"settings": {"allowed_clients": ["app-b"]}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");

    // /authorize: app-a is sent back with access_denied, even with an SSO session.
    let resp = app
        .client
        .get(authorize_url(&app, "app-a", &redirect, &verifier))
        .send()
        .await
        .unwrap();
    let to = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("https://app.example.test/cb?"), "{to}");
    assert!(to.contains("error=access_denied"), "{to}");
    assert!(to.contains("does+not+use+this+application"), "{to}");
    let nav = browser
        .get_until(&authorize_url(&app, "app-a", &redirect, &verifier), &stop)
        .await
        .stopped();
    assert!(nav.as_str().contains("error=access_denied"), "{nav}");
    // app-b still signs in.
    let ok = browser
        .get_until(&authorize_url(&app, "app-b", &redirect, &verifier), &stop)
        .await
        .stopped();
    assert!(ok.query_pairs().any(|(k, _)| k == "code"), "{ok}");

    // /token: the earlier code and refresh token of app-a are refused with the reason.
    let err = app.state.provider.token(&client, &redeem(code)).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_grant", "code.client_not_allowed_by_tenant")
    );
    let refresh = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(refresh_token),
        ..TokenRequest::default()
    };
    let err = app.state.provider.token(&client, &refresh).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_grant", "refresh.client_not_allowed_by_tenant")
    );

    // Its access token, at once.
    let err = app.state.provider.check_access_token(&access_token).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_token", "token.client_not_allowed_by_tenant")
    );
    assert_eq!(userinfo().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let inactive: serde_json::Value = introspect().await.unwrap().json().await.unwrap();
    assert_eq!(inactive, json!({"active": false}));
}

#[tokio::test]
async fn app_patch_merges_and_validates_as_at_creation() {
    let app = spawn_app(AppOptions::default()).await;
    let r = url::Url::parse("https://app.example.test/cb").unwrap();
    app.create_client("app-1", "One", &[&r], false).await;
    let (st, c) = patch(
        &app,
        "/admin/v1/clients/app-1",
        MERGE,
        json!({"name": "Uno", "redirect_uris": ["https://app.example.test/cb2"], "allowed_tenants": ["acme"],
               "post_logout_redirect_uris": ["https://app.example.test/bye"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["name"], "Uno");
    assert_eq!(c["redirect_uris"], json!(["https://app.example.test/cb2"]));
    assert_eq!(c["allowed_tenants"], json!(["acme"]));
    assert_eq!(c["public"], false, "a patch keeps the secret");
    let stored = app.state.provider.clients.get("app-1").await.unwrap().unwrap();
    assert!(stored.secret_sha256.is_some());
    assert_eq!(stored.post_logout_redirect_uris, ["https://app.example.test/bye"]);
    // null removes an optional member.
    let (st, c) = patch(&app, "/admin/v1/clients/app-1", MERGE, json!({"allowed_tenants": null})).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["allowed_tenants"], json!([]));
    assert_eq!(c["name"], "Uno");

    for (body, field) in [
        (
            json!({"redirect_uris": ["https://ok.test/cb", "http://evil.test/cb"]}),
            "redirect_uris[1]",
        ),
        (json!({"redirect_uris": []}), "redirect_uris"),
        (json!({"redirect_uris": null}), "redirect_uris"),
        (
            json!({"post_logout_redirect_uris": ["not a url"]}),
            "post_logout_redirect_uris[0]",
        ),
        (json!({"allowed_tenants": ["Bad Id"]}), "allowed_tenants[0]"),
        (json!({"grant_types": ["password"]}), "grant_types[0]"),
        (json!({"client_id": "other"}), "client_id"),
        (json!({"secret_sha256": "00"}), "secret_sha256"),
        (json!({"name": ""}), "name"),
    ] {
        let (st, p) = patch(&app, "/admin/v1/clients/app-1", MERGE, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {p}");
        assert_eq!(p["field"], field, "{body} → {p}");
    }
    let (st, _) = patch(&app, "/admin/v1/clients/none", MERGE, json!({"name": "x"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, got) = app.admin(Method::GET, "/admin/v1/clients/app-1", None).await;
    assert_eq!(
        got["redirect_uris"],
        json!(["https://app.example.test/cb2"]),
        "refused patches changed nothing"
    );
}

#[tokio::test]
async fn app_list_pages_client_objects_without_secrets() {
    let app = spawn_app(AppOptions::default()).await;
    let r = url::Url::parse("https://app.example.test/cb").unwrap();
    for i in 0..7 {
        app.create_client(&format!("app-{i}"), "A", &[&r], i % 2 == 0).await;
    }
    let mut seen = Vec::new();
    let mut path = "/admin/v1/clients?limit=3".to_owned();
    loop {
        let (st, page) = app.admin(Method::GET, &path, None).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        for c in page["clients"].as_array().unwrap() {
            assert!(!c.to_string().contains("secret"), "no secret or hash: {c}");
            seen.push(c["client_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cur) => path = format!("/admin/v1/clients?limit=3&cursor={cur}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..7).map(|i| format!("app-{i}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_rotated_secret_keeps_working_until_the_overlap_ends() {
    use portcullis::provider::grants::ClientCredentials;
    let clock = manual_clock();
    let app = spawn_app(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    let r = url::Url::parse("https://app.example.test/cb").unwrap();
    let old = app
        .create_client("app-1", "One", &[&r], false)
        .await
        .client_secret
        .unwrap();
    app.create_client("pub", "Public", &[&r], true).await;
    let auth = |secret: String| {
        let state = app.state.clone();
        async move {
            let creds = ClientCredentials::Secret {
                id: "app-1".into(),
                secret,
            };
            state
                .provider
                .authenticate_client(&creds)
                .await
                .map(|_| ())
                .map_err(|e| e.reason)
        }
    };

    let (st, rot) = app
        .admin(
            Method::POST,
            "/admin/v1/clients/app-1/secret/rotate",
            Some(json!({"overlap_secs": 3600})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{rot}");
    let new = rot["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rot["previous_expires_at"], "2030-01-01T01:00:00Z");
    assert_eq!(auth(old.clone()).await, Ok(()));
    assert_eq!(auth(new.clone()).await, Ok(()));
    clock.advance(chrono::Duration::seconds(3599));
    assert_eq!(auth(old.clone()).await, Ok(()), "still inside the overlap");
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        auth(old.clone()).await,
        Err("client.bad_secret"),
        "the overlap has ended"
    );
    assert_eq!(auth(new.clone()).await, Ok(()));
    // Rotating again retires the first secret for good; the default overlap is 24 h.
    let (st, rot2) = app
        .admin(Method::POST, "/admin/v1/clients/app-1/secret/rotate", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{rot2}");
    assert_eq!(rot2["previous_expires_at"], "2030-01-02T01:00:00Z");
    assert_eq!(auth(old).await, Err("client.bad_secret"));
    assert_eq!(auth(new).await, Ok(()));

    for (path, body, status, field) in [
        (
            "/admin/v1/clients/app-1/secret/rotate",
            json!({"overlap_secs": 2_592_001}),
            StatusCode::BAD_REQUEST,
            Some("overlap_secs"),
        ),
        (
            "/admin/v1/clients/app-1/secret/rotate",
            json!({"overlap_secs": -1}),
            StatusCode::BAD_REQUEST,
            Some("overlap_secs"),
        ),
        (
            "/admin/v1/clients/app-1/secret/rotate",
            json!({"overlap": 1}),
            StatusCode::BAD_REQUEST,
            Some("overlap"),
        ),
        (
            "/admin/v1/clients/pub/secret/rotate",
            json!({}),
            StatusCode::BAD_REQUEST,
            Some("client_id"),
        ),
        (
            "/admin/v1/clients/none/secret/rotate",
            json!({}),
            StatusCode::NOT_FOUND,
            None,
        ),
    ] {
        let (st, p) = app.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(st, status, "{path} {body} → {p}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{path} {body} → {p}");
        }
    }
}

/// A tenant created again under a deleted tenant's id does not see the
/// failed sign-ins of its predecessor: deletion purges them, and should
/// that fail, records older than the tenant are not shown.
#[tokio::test]
async fn a_tenant_created_again_does_not_see_its_predecessors_failed_sign_ins() {
    let clock = manual_clock();
    let app = dev_app(&clock).await;
    let broker = &app.state.broker;
    let acme = portcullis::ids::TenantId::parse("acme").unwrap();
    let failures = || broker.failed_sign_ins(&acme);

    // Deleted through the admin API: purged.
    app.create_tenant("acme", "Acme", &[]).await;
    broker.record_failure(&acme, None, "login.user_inactive").await;
    assert_eq!(failures().await.unwrap().len(), 1);
    let (status, body) = app.admin(reqwest::Method::DELETE, "/admin/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // (In the same second: only the purge hides them here.)
    app.create_tenant("acme", "Acme again", &[]).await;
    assert!(failures().await.unwrap().is_empty());

    // Removed without the purge (as when it failed): older than the tenant.
    broker.record_failure(&acme, None, "login.user_inactive").await;
    app.state.tenants.delete(&acme).await.unwrap();
    clock.advance(chrono::Duration::seconds(5));
    app.create_tenant("acme", "Acme once more", &[]).await;
    assert!(failures().await.unwrap().is_empty());
    broker.record_failure(&acme, None, "login.mfa_required").await;
    let own = failures().await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].reason, "login.mfa_required");
}

/// The resource server the belongings' exchange rule names.
const FILES_API: &str = "https://files.belongings.test";

/// Provisions the user Ada of `tenant` through `connection`, as her first
/// sign-in would.
async fn provision_ada(app: &TestApp, tenant: &str, connection: &str) -> portcullis::directory::User {
    let (user, _) = app
        .state
        .provider
        .directory
        .provision(
            &TenantId::parse(tenant).unwrap(),
            &ConnectionId::parse(connection).unwrap(),
            &Identity {
                subject: "ada".into(),
                email: Some(format!("ada@{tenant}.test")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    user
}

/// Gives `tenant` one of each thing its deletion must purge besides its
/// audit log (which has events already): a user of `connection`, an
/// exchange rule, a failed sign-in and an API key. Asserts they are there.
pub async fn give_belongings(app: &TestApp, tenant: &str, connection: &str) {
    let t = TenantId::parse(tenant).unwrap();
    provision_ada(app, tenant, connection).await;
    app.admin_create(
        "/admin/v1/resource-servers",
        json!({"identifier": FILES_API, "scopes": [{"name": "read"}]}),
    )
    .await;
    app.admin_create(
        &format!("/admin/v1/tenants/{tenant}/exchange-rules"),
        json!({"id": "all", "resource": FILES_API, "scopes": ["read"]}),
    )
    .await;
    app.state.broker.record_failure(&t, None, "login.user_inactive").await;
    app.admin_create(&format!("/admin/v1/tenants/{tenant}/api-keys"), json!({}))
        .await;
    assert_eq!(
        leftovers(app, tenant).await,
        ["users", "exchange_rules", "api_keys", "failed_sign_ins", "audit_log"]
    );
}

/// The parts of `tenant` the store still holds, read in the store itself
/// (not through what the API would show).
pub async fn leftovers(app: &TestApp, tenant: &str) -> Vec<&'static str> {
    let store = &app.state.store;
    let t = TenantId::parse(tenant).unwrap();
    let mut left = Vec::new();
    if !app.state.provider.directory.subs(&t).await.unwrap().is_empty() {
        left.push("users");
    }
    for (part, group) in [("exchange_rules", "exchange"), ("api_keys", "api_keys")] {
        let index = Key::tenant(tenant, group, "index");
        if !store.set_members(&index).await.unwrap().is_empty() {
            left.push(part);
        }
    }
    if store
        .get(&Key::tenant(tenant, "failed", "counter"))
        .await
        .unwrap()
        .is_some()
    {
        left.push("failed_sign_ins");
    }
    if store.stream_len(&Audit::log_key(Some(&t))).await.unwrap() > 0 {
        left.push("audit_log");
    }
    left
}

/// `DELETE /admin/v1/tenants/{id}` purges what the tenant left even when
/// its audit write fails afterwards. The purge used to run after that
/// write, so a failed write answered 500 with the tenant deleted and
/// nothing purged, and a retry found no tenant (404): a tenant created
/// again under the id was left to the second line of defence alone.
#[tokio::test]
async fn a_deleted_tenant_is_purged_even_when_its_audit_write_fails() {
    let clock = manual_clock();
    let app = dev_app(&clock).await;
    app.create_tenant("acme", "Acme", &[]).await;
    app.admin_create(
        "/admin/v1/tenants/acme/connections",
        json!({"id": "main", "kind": "dev"}),
    )
    .await;
    give_belongings(&app, "acme", "main").await;
    // The global log, where `tenant.deleted` goes, cannot be written.
    app.state
        .store
        .put(&Audit::log_key(None), b"not a stream", None)
        .await
        .unwrap();
    let (status, body) = app.admin(Method::DELETE, "/admin/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, _) = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(leftovers(&app, "acme").await, Vec::<&str>::new());
}

/// A tenant created again under a deleted tenant's id sees neither the
/// users nor the audit log of its predecessor through the admin API, even
/// when the deletion did not purge them (deleted in the registry alone, as
/// when the purge failed): users of another incarnation are not listed or
/// read, and the log shows nothing older than the tenant.
#[tokio::test]
async fn a_tenant_created_again_does_not_see_its_predecessors_users_or_audit_log() {
    let clock = manual_clock();
    let app = dev_app(&clock).await;
    let acme = TenantId::parse("acme").unwrap();
    let main = json!({"id": "main", "kind": "dev"});
    app.create_tenant("acme", "Acme", &[]).await;
    app.admin_create("/admin/v1/tenants/acme/connections", main.clone())
        .await;
    let old = provision_ada(&app, "acme", "main").await;
    assert_eq!(app.tenant_audit("acme", "connection.created").await.len(), 1);
    let old_key = app
        .admin_create("/admin/v1/tenants/acme/api-keys", json!({"name": "old ci"}))
        .await;

    app.state.tenants.delete(&acme).await.unwrap();
    clock.advance(chrono::Duration::seconds(5));
    app.create_tenant("acme", "Acme again", &[]).await;
    let directory = &app.state.provider.directory;
    assert!(
        directory.get(&acme, &old.sub).await.unwrap().is_some(),
        "still in the store"
    );

    let (status, users) = app.admin(Method::GET, "/admin/v1/tenants/acme/users", None).await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users, json!({"users": [], "next_cursor": null}));
    let user = format!("/admin/v1/tenants/acme/users/{}", old.sub);
    for (method, path) in [
        (Method::GET, user.clone()),
        (Method::POST, format!("{user}/disable")),
        (Method::DELETE, user.clone()),
    ] {
        let (status, body) = app.admin(method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (status, log) = app.admin(Method::GET, "/admin/v1/tenants/acme/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log, json!({"events": [], "next_cursor": null}));
    // Nor the predecessor's API keys (which authenticate nothing either).
    let (status, keys) = app.admin(Method::GET, "/admin/v1/tenants/acme/api-keys", None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys, json!({"api_keys": []}), "old key {old_key}");

    // The tenant's own users and events are there, and the log's pages end
    // where the tenant began.
    app.admin_create("/admin/v1/tenants/acme/connections", main).await;
    let own = provision_ada(&app, "acme", "main").await;
    assert_ne!(own.sub, old.sub);
    let (_, users) = app.admin(Method::GET, "/admin/v1/tenants/acme/users", None).await;
    assert_eq!(members(&users, "users", "sub"), [own.sub.as_str()], "{users}");
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/acme/users/{}/disable", own.sub),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log = "/admin/v1/tenants/acme/audit?limit=1";
    let (_, first) = app.admin(Method::GET, log, None).await;
    assert_eq!(members(&first, "events", "action"), ["user.disabled"], "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, last) = app.admin(Method::GET, &format!("{log}&cursor={cursor}"), None).await;
    assert_eq!(members(&last, "events", "action"), ["connection.created"], "{last}");
    assert!(
        last["next_cursor"].is_null(),
        "the log ends where the tenant began: {last}"
    );
    // The tenant's own API keys are listed.
    let new_key = app
        .admin_create("/admin/v1/tenants/acme/api-keys", json!({"name": "new ci"}))
        .await;
    let (_, keys) = app.admin(Method::GET, "/admin/v1/tenants/acme/api-keys", None).await;
    assert_eq!(
        members(&keys, "api_keys", "id"),
        [new_key["id"].as_str().unwrap()],
        "{keys}"
    );
}
