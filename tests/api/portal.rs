//! The setup portal's contract: setup links (one-time, expiring, platform
//! admin only), connection status enforced in the broker (a pending_test
//! connection serves nobody), test sign-ins that open no session, and
//! activation only after a successful test.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use portcullis::clock::ManualClock;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::upstream::ConnectionStatus;
use reqwest::StatusCode;
use serde_json::json;

async fn dev_app(clock: Option<ManualClock>) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        clock,
        ..AppOptions::default()
    })
    .await
}

async fn setup_link(app: &TestApp, tenant: &str, ttl: u64) -> url::Url {
    let answer = app
        .admin_create(
            &format!("/admin/v1/tenants/{tenant}/setup-links"),
            json!({ "ttl_secs": ttl }),
        )
        .await;
    assert!(answer["expires_at"].as_str().is_some(), "{answer}");
    url::Url::parse(answer["url"].as_str().unwrap()).unwrap()
}

async fn set_status(app: &TestApp, tenant: &str, connection: &str, status: ConnectionStatus) {
    let (t, c) = (
        TenantId::parse(tenant).unwrap(),
        ConnectionId::parse(connection).unwrap(),
    );
    let mut conn = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    conn.status = status;
    app.state
        .tenants
        .put_connection(&conn, portcullis::tenant::IssuerChange::NewUsers)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_setup_link_opens_once_and_a_used_link_is_refused() {
    let app = dev_app(None).await;
    let link = setup_link(&app, "demo", 3600).await;
    assert_eq!(link.path().split('/').nth(1), Some("setup"));
    let first = open_link(&app, &link).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("portcullis_portal="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let again = open_link(&app, &link).await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.text().await.unwrap().contains("setup.link_used"));
    // Its page says so too.
    let page = app.client.get(link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::GONE);
    assert!(page.text().await.unwrap().contains("setup.link_used"));
}

#[tokio::test]
async fn looking_at_a_setup_link_spends_nothing_and_only_its_form_opens_it() {
    let app = dev_app(None).await;
    let link = setup_link(&app, "demo", 3600).await;
    // A mail scanner, a link preview, the person: HEAD and GET, repeatedly.
    for method in [reqwest::Method::HEAD, reqwest::Method::GET, reqwest::Method::GET] {
        let resp = app.client.request(method.clone(), link.clone()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        assert!(resp.headers().get("set-cookie").is_none(), "{method} set a cookie");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{method}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
        let form_action = app.url("/setup/");
        assert!(
            csp.contains(&format!("form-action {}", app.url("/portal/"))) && csp.contains(form_action.as_str()),
            "{csp}"
        );
        let body = resp.text().await.unwrap();
        if method == reqwest::Method::GET {
            assert!(body.contains("Open the setup portal for"), "{body}");
            assert!(body.contains("<form method=\"post\" id=\"open-portal\">"), "{body}");
        } else {
            assert!(body.is_empty(), "{body}");
        }
    }
    let (status, list) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/demo/setup-links", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["setup_links"][0]["opened"], false, "{list}");
    // The form's POST opens it, once.
    let opened = open_link(&app, &link).await;
    assert_eq!(opened.status(), StatusCode::SEE_OTHER);
    assert_eq!(opened.headers()["location"], app.url("/portal").as_str());
    let cookie = opened.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("portcullis_portal="), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(portal_page(&app, &cookie).await.0, StatusCode::OK);
    let again = open_link(&app, &link).await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert!(again.text().await.unwrap().contains("setup.link_used"));
}

#[tokio::test]
async fn an_expired_or_forged_setup_link_is_refused() {
    let clock = ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let app = dev_app(Some(clock.clone())).await;
    let link = setup_link(&app, "demo", 300).await;
    clock.advance(chrono::TimeDelta::seconds(301));
    for resp in [
        app.client.get(link.clone()).send().await.unwrap(),
        open_link(&app, &link).await,
    ] {
        assert_eq!(resp.status(), StatusCode::GONE);
        assert!(resp.text().await.unwrap().contains("setup.link_expired"));
    }
    // A token of the right shape that was never issued.
    let forged = app.url(&format!("/setup/demo.{}", "A".repeat(43)));
    for resp in [
        app.client.get(forged.clone()).send().await.unwrap(),
        open_link(&app, &forged).await,
    ] {
        assert_eq!(resp.status(), StatusCode::GONE);
        assert!(resp.text().await.unwrap().contains("setup.link_expired"));
    }
}

#[tokio::test]
async fn setup_links_and_portal_sessions_die_with_their_tenant_even_if_its_id_is_created_again() {
    let app = dev_app(None).await;
    app.create_tenant("acme", "Acme", &[]).await;
    let unopened = setup_link(&app, "acme", 3600).await;
    let (cookie, _) = portal_session(&app, "acme").await;
    let portal = |cookie: String| {
        let app = &app;
        async move {
            let resp = app
                .client
                .get(app.url("/portal"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    assert_eq!(portal(cookie.clone()).await.0, StatusCode::OK);

    // Another customer gets the id.
    app.delete_tenant("acme").await;
    let index = portcullis::store::Key::tenant("acme", "setup", "links");
    assert_eq!(
        app.state.store.set_members(&index).await.unwrap(),
        Vec::<String>::new(),
        "the purge left the setup links' index"
    );
    app.create_tenant("acme", "Another Acme", &[]).await;
    let (status, list) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/acme/setup-links", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["setup_links"], json!([]), "{list}");

    let (status, body) = portal(cookie).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("portal.tenant_gone"), "{body}");
    assert!(!body.contains("Another Acme"), "{body}");
    let resp = open_link(&app, &unopened).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.text().await.unwrap().contains("setup.link_expired"));

    // A link made for the new tenant opens as usual.
    let (cookie, _) = portal_session(&app, "acme").await;
    let (status, body) = portal(cookie).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn setup_links_need_the_platform_admin_and_a_bounded_ttl() {
    let app = dev_app(None).await;
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants/demo/setup-links"))
        .json(&json!({ "ttl_secs": 3600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for ttl in [10, 31 * 24 * 3600] {
        let (status, body) = app
            .admin(
                reqwest::Method::POST,
                "/admin/v1/tenants/demo/setup-links",
                Some(json!({ "ttl_secs": ttl })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains("ttl_secs"), "{body}");
    }
    let (status, _) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/nobody/setup-links",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The portal without a session shows nothing of any tenant.
    let resp = app.client.get(app.url("/portal")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.text().await.unwrap().contains("portal.no_session"));
}

/// Opens a setup link as the tenant admin's browser does: the `POST` of the
/// form on the page its URL shows.
async fn open_link(app: &TestApp, link: &url::Url) -> reqwest::Response {
    app.client.post(link.clone()).send().await.unwrap()
}

/// Opens a setup link in the scripted browser: its page, then its button;
/// answers the portal's start page.
async fn open_in(browser: &mut Browser, link: &url::Url) -> crate::support::browser::Page {
    let page = browser.get(link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    browser.submit(&page, &page.form(Some("open-portal"))).await
}

/// The portal's start page with `cookie`: status and body.
async fn portal_page(app: &TestApp, cookie: &str) -> (StatusCode, String) {
    let resp = app
        .client
        .get(app.url("/portal"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn revoked_setup_links_no_longer_open_and_end_their_portal_sessions() {
    let app = dev_app(None).await;
    let path = "/admin/v1/tenants/demo/setup-links";
    let first = app.admin_create(path, json!({ "ttl_secs": 3600 })).await;
    let second = app
        .admin_create(path, json!({ "ttl_secs": 7200, "kind": "saml" }))
        .await;
    let url_of = |link: &serde_json::Value| url::Url::parse(link["url"].as_str().unwrap()).unwrap();
    let opened = open_link(&app, &url_of(&second)).await;
    assert_eq!(opened.status(), StatusCode::SEE_OTHER);
    let cookie = opened.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(portal_page(&app, &cookie).await.0, StatusCode::OK);

    // Both are listed, without their tokens; the second as opened.
    let (status, list) = app.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let links = list["setup_links"].as_array().unwrap();
    assert_eq!(links.len(), 2, "{list}");
    let listed = |link: &serde_json::Value| {
        links
            .iter()
            .find(|l| l["id"] == link["id"])
            .unwrap_or_else(|| panic!("{} not listed: {list}", link["id"]))
            .clone()
    };
    let (one, two) = (listed(&first), listed(&second));
    assert_eq!(one["opened"], false, "{one}");
    assert_eq!(one["expires_at"], first["expires_at"], "{one}");
    assert!(one["created_at"].is_string(), "{one}");
    assert_eq!(two["opened"], true, "{two}");
    assert!(two["opened_at"].is_string(), "{two}");
    assert_eq!(two["kind"], "saml", "{two}");
    for link in [&first, &second] {
        let token = url_of(link).path().rsplit('/').next().unwrap().to_owned();
        assert!(!list.to_string().contains(&token), "a token is listed: {list}");
    }

    // A tenant key neither lists nor revokes them.
    let (status, key) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/demo/api-keys",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    let one_path = format!("{path}/{}", first["id"].as_str().unwrap());
    for (method, target) in [
        (reqwest::Method::GET, path.to_owned()),
        (reqwest::Method::DELETE, one_path.clone()),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(&target))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{method} {target} with a tenant key"
        );
    }

    // The platform admin revokes both.
    for link in [&first, &second] {
        let (status, body) = app
            .admin(
                reqwest::Method::DELETE,
                &format!("{path}/{}", link["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, _) = app.admin(reqwest::Method::DELETE, &one_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked twice");
    let (status, list) = app.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["setup_links"], json!([]), "{list}");
    assert_eq!(app.tenant_audit("demo", "setup_link.revoked").await.len(), 2);

    // The unopened link no longer opens; the opened one's session has ended.
    let resp = open_link(&app, &url_of(&first)).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert!(resp.headers().get("set-cookie").is_none());
    let body = resp.text().await.unwrap();
    assert!(body.contains("setup.link_revoked"), "{body}");
    let (status, body) = portal_page(&app, &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("portal.link_revoked"), "{body}");
}

#[tokio::test]
async fn a_pending_test_connection_serves_nobody() {
    let app = dev_app(None).await;
    // Started while active, answered after the connection left service.
    let mut browser = Browser::new();
    let login = browser.get(&app.url("/demo/login")).await;
    assert!(login.url.path().starts_with("/dev/demo/dev/login"), "{}", login.url);
    set_status(&app, "demo", "dev", ConnectionStatus::PendingTest).await;
    let refused = browser
        .fill_and_submit(&login, None, &[("email", "ada@demo.example")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("callback.connection_not_active"),
        "{}",
        refused.body
    );

    // Not chosen when it is the tenant's only connection.
    let mut browser = Browser::new();
    let page = browser.get(&app.url("/demo/login")).await;
    assert!(page.body.contains("authorize.no_connection"), "{}", page.body);

    // Asked for explicitly: a clear refusal.
    let mut browser = Browser::new();
    let authorize = browser
        .get_until(&app.url("/demo/login"), &|u| u.path() == "/authorize")
        .await
        .stopped();
    let mut explicit = authorize.clone();
    explicit.query_pairs_mut().append_pair("connection", "dev");
    let page = browser.get(&explicit).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("authorize.connection_not_active"), "{}", page.body);

    // Disabled is the same; active again serves again.
    set_status(&app, "demo", "dev", ConnectionStatus::Disabled).await;
    let page = browser.get(&explicit).await;
    assert!(page.body.contains("authorize.connection_not_active"), "{}", page.body);
    set_status(&app, "demo", "dev", ConnectionStatus::Active).await;
    let page = browser.get(&explicit).await;
    assert!(page.url.path().starts_with("/dev/demo/dev/login"), "{}", page.url);

    // The refusal is in the tenant's failed sign-ins, with its reason only.
    let failed = app
        .state
        .broker
        .failed_sign_ins(&TenantId::parse("demo").unwrap())
        .await
        .unwrap();
    assert!(
        failed.iter().any(|f| f.reason == "callback.connection_not_active"),
        "{failed:?}"
    );
}

/// A second, pending dev connection of the demo tenant, `dev-test` (as the
/// portal makes them), and a browser in the portal on its page.
async fn pending_dev_test(app: &TestApp) -> (Browser, crate::support::browser::Page) {
    let (t, c) = (TenantId::parse("demo").unwrap(), ConnectionId::parse("dev").unwrap());
    let mut conn = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    conn.id = ConnectionId::parse("dev-test").unwrap();
    conn.status = ConnectionStatus::PendingTest;
    app.state.tenants.add_connection(&conn).await.unwrap();
    let mut browser = Browser::new();
    let link = setup_link(app, "demo", 3600).await;
    let start = open_in(&mut browser, &link).await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.body);
    assert!(start.body.contains("dev-test"), "{}", start.body);
    let page = browser.get(&app.url("/portal/connections/dev-test")).await;
    (browser, page)
}

#[tokio::test]
async fn activation_needs_a_successful_test_sign_in_which_opens_no_session() {
    let app = dev_app(None).await;
    let (mut browser, page) = pending_dev_test(&app).await;
    let t = TenantId::parse("demo").unwrap();
    let conn_id = ConnectionId::parse("dev-test").unwrap();
    assert!(page.body.contains("waiting for a successful test"), "{}", page.body);
    assert!(!page.body.contains("/activate"), "no activate form before a test");

    // Forcing the activation anyway is refused.
    let csrf = page.form(None).field("csrf").unwrap().to_owned();
    let refused = browser
        .send(
            reqwest::Method::POST,
            &app.url("/portal/connections/dev-test/activate"),
            Some(&[("csrf".to_owned(), csrf.clone())]),
            Some(&page.url),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body.contains("portal.activate_untested"), "{}", refused.body);
    // And without the CSRF token.
    let refused = browser
        .send(
            reqwest::Method::POST,
            &app.url("/portal/connections/dev-test/activate"),
            Some(&[("csrf".to_owned(), "wrong".to_owned())]),
            Some(&page.url),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let stored = app.state.tenants.connection(&t, &conn_id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::PendingTest);

    // The test sign-in: to the IdP and back to the portal, with the claims.
    let idp = browser.submit(&page, &page.form(None)).await;
    assert!(idp.url.path().starts_with("/dev/demo/dev-test/login"), "{}", idp.url);
    let result = browser
        .fill_and_submit(&idp, None, &[("email", "tess@demo.example"), ("given_name", "Tess")])
        .await;
    assert_eq!(result.status, StatusCode::OK, "{}", result.body);
    assert_eq!(result.url.path(), "/portal/connections/dev-test");
    assert!(result.body.contains("The test sign-in succeeded"), "{}", result.body);
    assert!(result.body.contains("tess@demo.example"), "{}", result.body);
    // No user was provisioned by the test.
    let (_, users) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/demo/users", None)
        .await;
    assert!(!users.to_string().contains("tess@demo.example"), "{users}");

    let activate = result
        .forms()
        .into_iter()
        .find(|f| f.action.ends_with("/activate"))
        .expect("an activate form after a successful test");
    let done = browser.submit(&result, &activate).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let stored = app.state.tenants.connection(&t, &conn_id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
}

/// Posts the portal's step-3 form as multipart/form-data (built by hand).
async fn post_setup_form(app: &TestApp, cookie: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
    let boundary = "portcullis-test-boundary";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let resp = app
        .client
        .post(app.url("/portal/connections"))
        .header("cookie", cookie)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn portal_setup_errors_are_explained_and_a_link_limited_to_oidc_cannot_add_saml() {
    let app = dev_app(None).await;
    let answer = app
        .admin_create(
            "/admin/v1/tenants/demo/setup-links",
            json!({ "ttl_secs": 3600, "kind": "oidc" }),
        )
        .await;
    assert_eq!(answer["kind"], "oidc");
    let resp = open_link(&app, &url::Url::parse(answer["url"].as_str().unwrap()).unwrap()).await;
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let start = app
        .client
        .get(app.url("/portal"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!start.contains("kind-saml"), "only OIDC is offered");
    let csrf = start
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .map(|s| s.split('"').next().unwrap().to_owned());
    // The start page has no POST form; take the token from the values page.
    let values = app
        .client
        .get(app.url("/portal/values?kind=oidc&idp=okta"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf.unwrap_or_else(|| {
        values
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    });
    // SAML through an OIDC-only link: refused.
    let (status, page) = post_setup_form(
        &app,
        &cookie,
        &[
            ("csrf", &csrf),
            ("kind", "saml"),
            ("idp", "okta"),
            ("metadata_xml", "<x/>"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("portal.bad_kind"), "{page}");
    // Without the CSRF token: refused.
    let (status, page) = post_setup_form(
        &app,
        &cookie,
        &[("kind", "oidc"), ("idp", "okta"), ("issuer", "https://idp.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("portal.csrf_mismatch"), "{page}");
    // An unreachable issuer: the sentence says what to do.
    let (status, page) = post_setup_form(
        &app,
        &cookie,
        &[
            ("csrf", &csrf),
            ("kind", "oidc"),
            ("idp", "okta"),
            ("issuer", "http://127.0.0.1:1"),
            ("client_id", "x"),
            ("client_secret", "y"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(
        page.contains("could not download the issuer&#39;s discovery document"),
        "{page}"
    );
    let ids = app
        .state
        .tenants
        .connection_ids(&TenantId::parse("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "nothing was created: {ids:?}");
}

/// The connection page of the portal, opened through a fresh setup link.
async fn connection_page(app: &TestApp, tenant: &str, connection: &str) -> String {
    let mut browser = Browser::new();
    let link = setup_link(app, tenant, 3600).await;
    let start = open_in(&mut browser, &link).await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.body);
    let page = browser
        .get(&app.url(&format!("/portal/connections/{connection}")))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body
}

#[tokio::test]
async fn the_connection_page_warns_of_a_certificate_close_to_expiry_or_expired() {
    use crate::metadata_refresh::{metadata, Key};
    let clock = ManualClock::at(crate::saml_crafted::now());
    let app = dev_app(Some(clock.clone())).await;
    let key = Key::new();
    app.create_saml_connection(
        "demo",
        json!({ "id": "corp", "metadata_xml": metadata(&[key.cert_b64()]) }),
    )
    .await;
    let (t, c) = (TenantId::parse("demo").unwrap(), ConnectionId::parse("corp").unwrap());
    let conn = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let expires = portcullis::tenant::refresh::certificate_expiry(&conn).unwrap();

    // Far from expiry: no banner, on the SAML connection or the dev one.
    clock.set(expires - chrono::TimeDelta::days(60));
    let page = connection_page(&app, "demo", "corp").await;
    assert!(!page.contains("certificate-warning"), "{page}");
    let page = connection_page(&app, "demo", "dev").await;
    assert!(!page.contains("certificate-warning"), "{page}");

    // Ten days ahead: the banner, with the date.
    clock.set(expires - chrono::TimeDelta::days(10));
    let page = connection_page(&app, "demo", "corp").await;
    assert!(page.contains("id=\"certificate-warning\""), "{page}");
    let date = expires.format("%Y-%m-%d").to_string();
    assert!(page.contains(&format!("expires on {date}")), "{page}");
    let page = connection_page(&app, "demo", "dev").await;
    assert!(!page.contains("certificate-warning"), "{page}");

    // Expired: the banner says sign-ins fail.
    clock.set(expires + chrono::TimeDelta::days(1));
    let page = connection_page(&app, "demo", "corp").await;
    assert!(page.contains("id=\"certificate-warning\""), "{page}");
    assert!(page.contains(&format!("expired on {date}")), "{page}");
}

/// A portal session on `tenant` (through a fresh setup link): the cookie and
/// the CSRF token of the step-3 form.
async fn portal_session(app: &TestApp, tenant: &str) -> (String, String) {
    let link = setup_link(app, tenant, 3600).await;
    let resp = open_link(app, &link).await;
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let values = app
        .client
        .get(app.url("/portal/values?kind=saml&idp=okta"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = values
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no CSRF token: {values}"))
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

/// Posts the step-3 form with `fields` and, when given, the metadata as an
/// uploaded file (`metadata_file`, with a file name and an XML content type).
async fn post_with_file(
    app: &TestApp,
    cookie: &str,
    fields: &[(&str, &str)],
    file: Option<&str>,
) -> (StatusCode, String) {
    let boundary = "portcullis-upload-boundary";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    if let Some(xml) = file {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata_file\"; filename=\"idp-metadata.xml\"\r\n\
             Content-Type: application/xml\r\n\r\n{xml}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let resp = app
        .client
        .post(app.url("/portal/connections"))
        .header("cookie", cookie)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn stored(app: &TestApp, tenant: &str, connection: &str) -> Option<portcullis::upstream::Connection> {
    let (t, c) = (
        TenantId::parse(tenant).unwrap(),
        ConnectionId::parse(connection).unwrap(),
    );
    app.state.tenants.connection(&t, &c).await.unwrap()
}

#[tokio::test]
async fn uploaded_metadata_creates_a_pending_test_saml_connection() {
    use crate::metadata_refresh::{metadata, Key};
    let app = dev_app(Some(ManualClock::at(crate::saml_crafted::now()))).await;
    let (cookie, csrf) = portal_session(&app, "demo").await;
    let key = Key::new();
    let (status, page) = post_with_file(
        &app,
        &cookie,
        &[("csrf", &csrf), ("kind", "saml"), ("idp", "okta")],
        Some(&metadata(&[key.cert_b64()])),
    )
    .await;
    assert!(status.is_success() || status.is_redirection(), "{status}: {page}");
    let conn = stored(&app, "demo", "okta-saml")
        .await
        .expect("a connection from the file");
    assert_eq!(conn.status, ConnectionStatus::PendingTest);
    let cfg = serde_json::to_value(&conn.kind).unwrap();
    assert!(cfg.to_string().contains(&key.cert_b64()[..40]), "{cfg}");
}

/// Registering again through the portal replaces a connection only while it
/// waits for its test, and keeps its SP identity; a connection the operator
/// disabled stays disabled, as it was.
#[tokio::test]
async fn the_portal_does_not_re_enable_a_disabled_connection_and_keeps_the_sp_identity() {
    use crate::metadata_refresh::{metadata, Key};
    let app = dev_app(Some(ManualClock::at(crate::saml_crafted::now()))).await;
    let (cookie, csrf) = portal_session(&app, "demo").await;
    let register = |key: Key| {
        let (app, cookie, csrf) = (&app, &cookie, &csrf);
        async move {
            post_with_file(
                app,
                cookie,
                &[("csrf", csrf), ("kind", "saml"), ("idp", "okta")],
                Some(&metadata(&[key.cert_b64()])),
            )
            .await
        }
    };
    let (status, page) = register(Key::new()).await;
    assert!(status.is_redirection(), "{status}: {page}");
    // The platform gives it the SP identity of a migration.
    let mut conn = stored(&app, "demo", "okta-saml").await.unwrap();
    let portcullis::upstream::ConnectionKind::Saml(cfg) = &mut conn.kind else {
        panic!("a SAML connection")
    };
    cfg.sp_entity_id = Some("https://sp.example.test/migrated".into());
    app.state
        .tenants
        .put_connection(&conn, portcullis::tenant::IssuerChange::NewUsers)
        .await
        .unwrap();
    let sp_of = |c: &portcullis::upstream::Connection| match &c.kind {
        portcullis::upstream::ConnectionKind::Saml(cfg) => (cfg.sp_entity_id.clone(), cfg.sp_certificate_pem.clone()),
        _ => panic!("a SAML connection"),
    };
    let sp = sp_of(&conn);

    // Waiting for its test: replaced, with the SP identity kept.
    let (status, page) = register(Key::new()).await;
    assert!(status.is_redirection(), "{status}: {page}");
    let replaced = stored(&app, "demo", "okta-saml").await.unwrap();
    assert_eq!(replaced.status, ConnectionStatus::PendingTest);
    assert_eq!(sp_of(&replaced), sp);

    // Disabled by the operator: refused, and nothing changes.
    set_status(&app, "demo", "okta-saml", ConnectionStatus::Disabled).await;
    let before = serde_json::to_value(stored(&app, "demo", "okta-saml").await.unwrap()).unwrap();
    let (status, page) = register(Key::new()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("was disabled by the application"), "{page}");
    let after = serde_json::to_value(stored(&app, "demo", "okta-saml").await.unwrap()).unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_metadata_url_creates_a_pending_test_saml_connection() {
    use crate::metadata_refresh::{metadata, Key};
    let key = Key::new();
    let xml = metadata(&[key.cert_b64()]);
    let router = axum::Router::new().route(
        "/metadata",
        axum::routing::get(move || {
            let xml = xml.clone();
            async move { ([("content-type", "application/xml")], xml) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let url = format!("http://127.0.0.1:{port}/metadata");

    let app = dev_app(Some(ManualClock::at(crate::saml_crafted::now()))).await;
    let (cookie, csrf) = portal_session(&app, "demo").await;
    let (status, page) = post_with_file(
        &app,
        &cookie,
        &[
            ("csrf", &csrf),
            ("kind", "saml"),
            ("idp", "okta"),
            ("metadata_url", &url),
        ],
        None,
    )
    .await;
    assert!(status.is_success() || status.is_redirection(), "{status}: {page}");
    let conn = stored(&app, "demo", "okta-saml")
        .await
        .expect("a connection from the URL");
    assert_eq!(conn.status, ConnectionStatus::PendingTest);
    let cfg = serde_json::to_value(&conn.kind).unwrap();
    assert_eq!(cfg["metadata_url"], url.as_str(), "{cfg}");
    assert!(cfg.to_string().contains(&key.cert_b64()[..40]), "{cfg}");
}

#[tokio::test]
async fn an_oidc_issuer_creates_a_pending_test_oidc_connection() {
    use crate::support::peers::{IdpClient, UpstreamIdp};
    let app = dev_app(None).await;
    let client = IdpClient {
        client_id: "portal-client".into(),
        client_secret: "portal-secret".into(),
        redirect_uris: vec![app.oidc_callback("demo", "okta-oidc")],
    };
    let idp = UpstreamIdp::spawn(std::slice::from_ref(&client)).await;
    let (cookie, csrf) = portal_session(&app, "demo").await;
    let issuer = idp.issuer();
    let (status, page) = post_with_file(
        &app,
        &cookie,
        &[
            ("csrf", &csrf),
            ("kind", "oidc"),
            ("idp", "okta"),
            ("issuer", &issuer),
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
        ],
        None,
    )
    .await;
    assert!(status.is_success() || status.is_redirection(), "{status}: {page}");
    let conn = stored(&app, "demo", "okta-oidc").await.expect("an OIDC connection");
    assert_eq!(conn.status, ConnectionStatus::PendingTest);
    assert_eq!(conn.kind.name(), "oidc");
    let described = app
        .admin(
            reqwest::Method::GET,
            "/admin/v1/tenants/demo/connections/okta-oidc",
            None,
        )
        .await
        .1;
    assert_eq!(described["issuer"], issuer.as_str(), "{described}");
    assert_eq!(described["status"], "pending_test", "{described}");

    // The test sign-in goes through the real IdP and back to the portal.
    let mut browser = Browser::new();
    let link = setup_link(&app, "demo", 3600).await;
    open_in(&mut browser, &link).await;
    let page = browser.get(&app.url("/portal/connections/okta-oidc")).await;
    assert!(page.body.contains("waiting for a successful test"), "{}", page.body);
    let login = browser.submit(&page, &page.form(None)).await;
    assert!(idp.serves(&login.url), "{}: {}", login.url, login.body);
    let mut form = login.form(Some("login"));
    form.set("username", "alice");
    form.set("password", crate::support::peers::IDP_PASSWORD);
    let result = browser.submit(&login, &form).await;
    assert_eq!(result.status, StatusCode::OK, "{}", result.body);
    assert_eq!(
        result.url.path(),
        "/portal/connections/okta-oidc",
        "{}",
        browser.trail()
    );
    assert!(result.body.contains("The test sign-in succeeded"), "{}", result.body);
    // What the IdP sent, as the IdP sent it (only `openid` is asked for by default).
    assert!(
        result.body.contains("<code>sub</code></td><td>alice</td>"),
        "{}",
        result.body
    );
    assert!(result.body.contains(&format!("<td>{issuer}</td>")), "{}", result.body);
    let stored_now = stored(&app, "demo", "okta-oidc").await.unwrap();
    assert_eq!(
        stored_now.status,
        ConnectionStatus::PendingTest,
        "a test does not activate"
    );
}

/// A test sign-in passes only for what a real sign-in would accept: an
/// identity over the bounds (here a 2,000-byte given name) fails the test
/// with its reason (`identity.name_too_long`) and offers no activation.
#[tokio::test]
async fn a_test_sign_in_with_an_oversized_identity_fails_with_its_reason() {
    let app = dev_app(None).await;
    let (mut browser, page) = pending_dev_test(&app).await;
    let idp = browser.submit(&page, &page.form(None)).await;
    assert!(idp.url.path().starts_with("/dev/demo/dev-test/login"), "{}", idp.url);
    let long = "n".repeat(2000);
    let result = browser
        .fill_and_submit(
            &idp,
            None,
            &[("email", "tess@demo.example"), ("given_name", long.as_str())],
        )
        .await;
    assert_eq!(result.url.path(), "/portal/connections/dev-test", "{}", result.body);
    assert!(!result.body.contains("The test sign-in succeeded"), "{}", result.body);
    assert!(result.body.contains("identity.name_too_long"), "{}", result.body);
    assert!(
        result.forms().into_iter().all(|f| !f.action.ends_with("/activate")),
        "no activate form after a failed test"
    );
}

/// The portal names a connection after the form's `idp`, any name: a setup
/// link holder adding ever more of them is held to the tenant's cap as a
/// tenant API key is.
#[tokio::test]
async fn a_setup_link_cannot_give_its_tenant_more_connections_than_the_cap() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let app = dev_app(Some(ManualClock::at(crate::saml_crafted::now()))).await;
    let have = app
        .state
        .tenants
        .connection_ids(&TenantId::parse("demo").unwrap())
        .await
        .unwrap()
        .len();
    // The platform admin is not held to the cap.
    for i in have..portcullis::tenant::MAX_CONNECTIONS {
        app.admin_create(
            "/admin/v1/tenants/demo/connections",
            json!({"id": format!("filler-{i}"), "kind": "dev"}),
        )
        .await;
    }
    saml_set_up_refused(&app, "one-more", "quota.connections").await;
    assert_eq!(logs.with_reason("quota.connections").len(), 1);
}

/// A SAML IdP `idp` registered through the demo tenant's portal is refused
/// on a page (409) naming `reason`, and nothing is kept.
async fn saml_set_up_refused(app: &TestApp, idp: &str, reason: &str) {
    use crate::metadata_refresh::{metadata, Key};
    let (cookie, csrf) = portal_session(app, "demo").await;
    let key = Key::new();
    let (status, page) = post_with_file(
        app,
        &cookie,
        &[("csrf", &csrf), ("kind", "saml"), ("idp", idp)],
        Some(&metadata(&[key.cert_b64()])),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains(reason), "{page}");
    assert!(stored(app, "demo", &format!("{idp}-saml")).await.is_none());
}

/// An operator whose `[quotas]` allow tenant admins no SP key pair a
/// minute: the portal's SAML set-up says so on a page (409,
/// `quota.key_generations`), not as an outage, and keeps nothing.
#[tokio::test]
async fn a_per_minute_quota_of_zero_is_a_page_naming_its_reason() {
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(ManualClock::at(crate::saml_crafted::now())),
        tweak: Some(|s| s.quotas.key_generations_per_minute = 0),
        ..AppOptions::default()
    })
    .await;
    saml_set_up_refused(&app, "none-allowed", "quota.key_generations").await;
}

/// A test sign-in that passes but whose IdP's word on the address is not
/// passed on says why on the page: an address in the tenant's domain
/// assigned to another connection (`login.email_other_connection`), so the
/// admin sees why `email_verified` is false.
#[tokio::test]
async fn a_test_sign_in_says_why_email_verified_is_withheld() {
    let app = dev_app(None).await;
    let (status, view) = app
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/demo/domains/demo.example",
            Some(json!({"connections": ["dev"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (mut browser, page) = pending_dev_test(&app).await;
    let idp = browser.submit(&page, &page.form(None)).await;
    assert!(idp.url.path().starts_with("/dev/demo/dev-test/login"), "{}", idp.url);
    let result = browser
        .fill_and_submit(&idp, None, &[("email", "tess@demo.example")])
        .await;
    assert_eq!(result.url.path(), "/portal/connections/dev-test", "{}", result.body);
    assert!(result.body.contains("The test sign-in succeeded"), "{}", result.body);
    assert!(
        result.body.contains("<code>email_verified</code></td><td>false</td>"),
        "{}",
        result.body
    );
    assert!(result.body.contains("id=\"test-notes\""), "{}", result.body);
    assert!(
        result.body.contains("<code>login.email_other_connection</code>"),
        "{}",
        result.body
    );
}

/// The portal's domains page, as a tenant's IT admin uses it: a domain
/// claimed shows its TXT record, is verified once a real `dnsmasq` serves
/// it, and is assigned to a connection (the tenant record says so); a
/// domain nobody may claim and a connection the tenant lacks are refused
/// on the page (`portal.domain_refused`), a forged form by its CSRF check.
#[tokio::test]
async fn the_portal_claims_verifies_and_assigns_an_email_domain() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let port = crate::support::dns::reserve_port();
    let app = spawn_app(AppOptions {
        dev: true,
        dns_nameservers: vec![format!("127.0.0.1:{}", port.port)],
        tweak: Some(|s| s.dns.timeout_secs = 1),
        ..AppOptions::default()
    })
    .await;
    let mut browser = Browser::new();
    let link = setup_link(&app, "demo", 3600).await;
    open_in(&mut browser, &link).await;
    let page = browser.get(&app.url("/portal/domains")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("demo.example: verified"), "{}", page.body);

    let pending = browser
        .fill_and_submit(&page, Some("add-domain"), &[("domain", "Portal.Example")])
        .await;
    assert_eq!(pending.url.path(), "/portal/domains", "{}", pending.body);
    assert!(
        pending.body.contains("portal.example: waiting for its DNS record"),
        "{}",
        pending.body
    );
    let token = pending
        .body
        .split("<code>")
        .filter_map(|s| s.split("</code>").next())
        .find(|v| v.starts_with("portcullis-verification="))
        .unwrap_or_else(|| panic!("no TXT value shown: {}", pending.body))
        .to_owned();
    let _dns = crate::support::dns::DnsServer::start(port, &[("_portcullis-challenge.portal.example", &token)], &[]);
    let verified = browser
        .submit(&pending, &pending.form(Some("verify-portal.example")))
        .await;
    assert!(verified.body.contains("portal.example: verified"), "{}", verified.body);

    let csrf = verified
        .form(Some("connections-portal.example"))
        .field("csrf")
        .unwrap()
        .to_owned();
    let assign = app.url("/portal/domains/portal.example/connections");
    let form = |c: &str| {
        vec![
            ("csrf".to_owned(), csrf.clone()),
            ("connection".to_owned(), c.to_owned()),
        ]
    };
    let saved = browser
        .send(reqwest::Method::POST, &assign, Some(&form("dev")), Some(&verified.url))
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "back to the page: {}", saved.body);
    let tenant = app
        .state
        .tenants
        .get(&TenantId::parse("demo").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tenant.domain_connections.get("portal.example").map(|cs| cs.len()),
        Some(1),
        "{:?}",
        tenant.domain_connections
    );

    let unknown = browser
        .send(reqwest::Method::POST, &assign, Some(&form("nope")), Some(&verified.url))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    assert!(unknown.body.contains("id=\"domains-error\""), "{}", unknown.body);
    let page = browser.get(&app.url("/portal/domains")).await;
    let free_mail = browser
        .fill_and_submit(&page, Some("add-domain"), &[("domain", "gmail.com")])
        .await;
    assert_eq!(free_mail.status, StatusCode::BAD_REQUEST, "{}", free_mail.body);
    assert!(free_mail.body.contains("id=\"domains-error\""), "{}", free_mail.body);
    assert_eq!(logs.with_reason("portal.domain_refused").len(), 2);

    let forged = browser
        .send(
            reqwest::Method::POST,
            &assign,
            Some(&[("csrf".to_owned(), "wrong".to_owned())]),
            Some(&verified.url),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(forged.body.contains("portal.csrf_mismatch"), "{}", forged.body);
}
