//! Domains a tenant really owns: claimed through the admin API, verified by a
//! DNS TXT record served by a real `dnsmasq` on loopback (or by the platform
//! admin's override); until then they route nobody and vouch for no email.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use crate::support::dns::{reserve_port, DnsServer};
use portcullis::ids::TenantId;
use portcullis::upstream::Identity;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A dev-mode gateway whose resolver asks `127.0.0.1:<port>` only, waiting one second.
async fn app_with_dns(port: u16) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        dns_nameservers: vec![format!("127.0.0.1:{port}")],
        tweak: Some(|s| s.dns.timeout_secs = 1),
        ..AppOptions::default()
    })
    .await
}

/// A tenant `id` with no declared domain and a dev connection.
async fn tenant_with_dev_connection(app: &TestApp, id: &str) {
    app.create_tenant(id, id, &[]).await;
    app.admin_create(
        &format!("/admin/v1/tenants/{id}/connections"),
        json!({"id": "dev", "kind": "dev"}),
    )
    .await;
}

async fn claim(app: &TestApp, tenant: &str, domain: &str) -> (StatusCode, Value) {
    app.admin(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant}/domains"),
        Some(json!({ "domain": domain })),
    )
    .await
}

async fn verify(app: &TestApp, tenant: &str, domain: &str, body: Option<Value>) -> (StatusCode, Value) {
    app.admin(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant}/domains/{domain}/verify"),
        body,
    )
    .await
}

/// Where home-realm discovery sends `email`: the page after submitting it.
async fn discover(app: &TestApp, email: &str) -> (url::Url, String) {
    let mut browser = Browser::new();
    let mut url = app.url("/authorize");
    let challenge = portcullis::tokens::sha256_base64url(b"a-verifier-that-is-long-enough-to-be-valid-for-pkce");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "demo")
        .append_pair("redirect_uri", app.url("/demo/callback").as_str())
        .append_pair("scope", "openid")
        .append_pair("state", "s1")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("login_hint", email);
    let page = browser.get(&url).await;
    (page.url.clone(), page.body)
}

fn routes_nobody((url, body): &(url::Url, String)) -> bool {
    body.contains("No organization uses single sign-on for that email domain") && !url.path().starts_with("/dev/")
}

/// What the stored tenant vouches for: `email_verified` of an IdP's assertion.
async fn vouched(app: &TestApp, tenant: &str, email: &str) -> Option<bool> {
    let identity = Identity {
        subject: "s".into(),
        email: Some(email.into()),
        email_verified: Some(true),
        ..Identity::default()
    };
    app.state
        .tenants
        .vouch_email(&TenantId::parse(tenant).unwrap(), identity)
        .await
        .email_verified
}

#[tokio::test]
async fn a_domain_verified_by_its_txt_record_routes_and_vouches_only_then() {
    let port = reserve_port();
    let app = app_with_dns(port.port).await;
    tenant_with_dev_connection(&app, "dnsco").await;

    let (status, claimed) = claim(&app, "dnsco", "DNSco.test").await;
    assert_eq!(status, StatusCode::CREATED, "{claimed}");
    assert_eq!(claimed["domain"], "dnsco.test");
    assert_eq!(claimed["verified"], false);
    assert_eq!(claimed["verification"]["type"], "dns-txt");
    assert_eq!(claimed["verification"]["name"], "_portcullis-challenge.dnsco.test");
    let token = claimed["verification"]["value"].as_str().unwrap().to_owned();
    assert!(token.len() > 30, "{token}");
    // Claiming again keeps the token; another tenant gets its own.
    let (_, again) = claim(&app, "dnsco", "dnsco.test").await;
    assert_eq!(again["verification"]["value"], token.as_str());
    app.create_tenant("other", "Other", &[]).await;
    let (status, other) = claim(&app, "other", "dnsco.test").await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_ne!(other["verification"]["value"], token.as_str(), "tokens are per tenant");

    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/dnsco/domains", None).await;
    assert_eq!(list["domains"][0]["domain"], "dnsco.test");
    assert_eq!(list["domains"][0]["verified"], false);

    // Pending: routes nobody, vouches for nobody.
    assert!(routes_nobody(&discover(&app, "bob@dnsco.test").await));
    assert_eq!(vouched(&app, "dnsco", "bob@dnsco.test").await, Some(false));

    let _dns = DnsServer::start(port, &[("_portcullis-challenge.dnsco.test", &token)], &[]);
    let (status, done) = verify(&app, "dnsco", "dnsco.test", None).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["verified"], true);
    assert_eq!(done["verified_by"], "dns");

    let (url, body) = discover(&app, "bob@dnsco.test").await;
    assert!(
        url.path().starts_with("/dev/dnsco/dev/login"),
        "landed on {url}: {body}"
    );
    assert_eq!(vouched(&app, "dnsco", "bob@dnsco.test").await, Some(true));
    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/dnsco/domains", None).await;
    assert_eq!(list["domains"][0]["verified"], true, "{list}");
    assert_eq!(list["domains"][0]["verified_by"], "dns", "{list}");

    // The other tenant's claim can no longer be verified, even by its own record.
    let (status, p) = verify(&app, "other", "dnsco.test", Some(json!({"override": true}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["field"], "domain");
    let (status, p) = claim(&app, "other", "dnsco.test").await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");

    // Removed: routes nobody again.
    let (status, _) = app
        .admin(Method::DELETE, "/admin/v1/tenants/dnsco/domains/dnsco.test", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(routes_nobody(&discover(&app, "bob@dnsco.test").await));
    assert_eq!(vouched(&app, "dnsco", "bob@dnsco.test").await, Some(false));
}

#[tokio::test]
async fn a_failed_check_says_what_was_found() {
    let port = reserve_port();
    let app = app_with_dns(port.port).await;
    tenant_with_dev_connection(&app, "failco").await;
    for d in ["wrong.test", "empty.test", "absent.test"] {
        assert_eq!(claim(&app, "failco", d).await.0, StatusCode::CREATED);
    }
    let dns = DnsServer::start(
        port,
        &[(
            "_portcullis-challenge.wrong.test",
            "portcullis-verification=not-the-token",
        )],
        &["_portcullis-challenge.empty.test"],
    );
    for (domain, reason) in [
        ("wrong.test", "domain.wrong_value"),
        ("empty.test", "domain.no_record"),
        ("absent.test", "domain.nxdomain"),
    ] {
        let (status, p) = verify(&app, "failco", domain, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{domain}: {p}");
        assert_eq!(p["field"], "domain", "{p}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{domain}: {detail}");
        assert!(
            routes_nobody(&discover(&app, &format!("bob@{domain}")).await),
            "{domain}"
        );
    }
    let (_, p) = verify(&app, "failco", "wrong.test", None).await;
    assert!(
        p["detail"].as_str().unwrap().contains("not-the-token"),
        "says what it found: {p}"
    );

    dns.freeze();
    let (status, p) = verify(&app, "failco", "wrong.test", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("domain.dns_timeout"), "{p}");

    // An unknown domain of the tenant is 404.
    let (status, _) = verify(&app, "failco", "never-claimed.test", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn public_suffixes_and_free_mail_domains_are_refused() {
    let app = spawn_app(AppOptions::default()).await;
    app.create_tenant("psl", "Psl", &[]).await;
    for d in [
        "co.uk",
        "github.io",
        "com.au",
        "gmail.com",
        "Outlook.com",
        "gmx.de",
        "yandex.ru",
        "qq.com",
        "com",
    ] {
        let (status, p) = claim(&app, "psl", d).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{d}: {p}");
        assert_eq!(p["field"], "domain", "{d}: {p}");
    }
    let (_, p) = claim(&app, "psl", "gmail.com").await;
    assert!(p["detail"].as_str().unwrap().contains("free email"), "{p}");
    let (_, p) = claim(&app, "psl", "github.io").await;
    assert!(p["detail"].as_str().unwrap().contains("public suffix"), "{p}");
    // Declared in a tenant body: refused the same way.
    let (status, p) = app
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "freemail", "domains": ["acme.test", "gmail.com"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "domains[1]");
}

#[tokio::test]
async fn the_platform_admin_override_and_declared_domains_count_as_verified() {
    let app = spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await;
    // Declared at creation: verified by the platform admin, routes at once.
    app.create_tenant("declared", "Declared", &["declared.test"]).await;
    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/declared/domains", None).await;
    assert_eq!(
        list["domains"],
        json!([{"domain": "declared.test", "verified": true, "verified_by": "platform_admin"}])
    );
    assert_eq!(vouched(&app, "declared", "bob@declared.test").await, Some(true));
    let (status, p) = claim(&app, "declared", "declared.test").await;
    assert_eq!(status, StatusCode::OK, "already verified: {p}");
    assert_eq!(p["verified"], true);
    app.create_tenant("taker", "Taker", &[]).await;
    let (status, p) = claim(&app, "taker", "declared.test").await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["field"], "domain");

    // Override without any DNS.
    tenant_with_dev_connection(&app, "over").await;
    assert_eq!(claim(&app, "over", "over.test").await.0, StatusCode::CREATED);
    assert!(routes_nobody(&discover(&app, "bob@over.test").await));
    let (status, done) = verify(&app, "over", "over.test", Some(json!({"override": true}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["verified_by"], "platform_admin");
    let (url, body) = discover(&app, "bob@over.test").await;
    assert!(url.path().starts_with("/dev/over/dev/login"), "landed on {url}: {body}");
    let (status, p) = verify(&app, "over", "over.test", Some(json!({"override": "yes"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
}
