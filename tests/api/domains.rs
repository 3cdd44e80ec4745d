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
        .vouch_email(
            &TenantId::parse(tenant).unwrap(),
            &portcullis::ids::ConnectionId::parse("dev").unwrap(),
            identity,
        )
        .await
        .0
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
        json!([{"domain": "declared.test", "verified": true, "verified_by": "platform_admin", "connections": []}])
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

/// The claims of a JWT (the provider checked its signature where it matters).
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// A domain removed from a tenant (perhaps to be verified by its real owner)
/// stops vouching at once, also for the users who signed in while it was
/// the tenant's: a refresh, userinfo and a sign-in by the SSO session all
/// answer `email_verified: false` (`login.email_not_vouched`), never the
/// verdict provisioning stored.
#[tokio::test]
async fn a_removed_domain_stops_vouching_for_users_signed_in_before() {
    use crate::revocation::{redeem, refresh, register, sign_in, DEMO};
    let (logs, _guard) = crate::support::logs::Captured::start();
    let app = spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await;
    let rp = register(&app, "vouchapp").await;
    let mut browser = Browser::new();
    let code = sign_in(&app, &mut browser, &rp, DEMO, "bob@demo.example").await;
    let tokens = redeem(&app, &rp, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let id = jwt_claims(tokens.body["id_token"].as_str().unwrap());
    assert_eq!(id["email"], "bob@demo.example", "{id}");
    assert_eq!(
        id["email_verified"], true,
        "vouched while the domain is the tenant's: {id}"
    );

    let (status, _) = app
        .admin(Method::DELETE, "/admin/v1/tenants/demo/domains/demo.example", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let again = refresh(&app, &rp, tokens.rt()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let id = jwt_claims(again.body["id_token"].as_str().unwrap());
    assert_eq!(id["email"], "bob@demo.example", "{id}");
    assert_eq!(id["email_verified"], false, "a refresh after the removal: {id}");
    let info: Value = app
        .client
        .get(app.url("/userinfo"))
        .bearer_auth(again.at())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["email_verified"], false, "userinfo after the removal: {info}");

    // The browser's SSO session answers without the IdP: still not vouched.
    let code = sign_in(&app, &mut browser, &rp, DEMO, "bob@demo.example").await;
    let by_sso = redeem(&app, &rp, &code).await;
    assert_eq!(by_sso.status, StatusCode::OK, "{}", by_sso.body);
    let id = jwt_claims(by_sso.body["id_token"].as_str().unwrap());
    assert_eq!(id["email_verified"], false, "a sign-in by the SSO session: {id}");
    assert!(
        !logs.with_reason("login.email_not_vouched").is_empty(),
        "the withheld verdict is logged with its reason"
    );
}

/// A gateway in dev mode whose store can hold one write (`support/held_store.rs`).
async fn app_with_hold(hold: &crate::support::held_store::Hold) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await
}

/// A verification whose tenant is deleted while it records the domain
/// leaves no reservation behind: it answers 404, the domain is free for
/// another tenant, and a tenant created again under the id is not routed to.
#[tokio::test]
async fn a_verification_racing_its_tenants_deletion_leaves_the_domain_free() {
    let hold = crate::support::held_store::Hold::default();
    let app = app_with_hold(&hold).await;
    tenant_with_dev_connection(&app, "racer").await;
    assert_eq!(claim(&app, "racer", "race.test").await.0, StatusCode::CREATED);

    // The verification has reserved the domain and is about to mark its
    // claim verified; the tenant is deleted; the verification goes on.
    let held = hold.arm("domain:race.test");
    let (verified, ()) = tokio::join!(
        verify(&app, "racer", "race.test", Some(json!({"override": true}))),
        async {
            held.arrived.await.unwrap();
            app.delete_tenant("racer").await;
            held.release.send(()).unwrap();
        }
    );
    let (status, p) = verified;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");

    app.create_tenant("heir", "Heir", &[]).await;
    let (status, p) = claim(&app, "heir", "race.test").await;
    assert_eq!(status, StatusCode::CREATED, "the domain is nobody's: {p}");
    tenant_with_dev_connection(&app, "racer").await;
    assert!(routes_nobody(&discover(&app, "bob@race.test").await));
}

/// A tenant's deletion that read the record before a platform PATCH added a
/// domain, and removes the record after it, leaves the domain's reservation
/// naming the id: a tenant created again under the id does not inherit the
/// routing (`domain.unlisted_reservation`).
#[tokio::test]
async fn a_reservation_its_tenants_record_does_not_list_routes_nobody() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let hold = crate::support::held_store::Hold::default();
    let app = app_with_hold(&hold).await;
    tenant_with_dev_connection(&app, "orphan").await;

    // The deletion has read the tenant (no domain yet) and is about to drop
    // it from the tenant list and remove its record; meanwhile the platform
    // admin declares a domain for it.
    let held = hold.arm_removal("index");
    let (deleted, ()) = tokio::join!(app.admin(Method::DELETE, "/admin/v1/tenants/orphan", None), async {
        held.arrived.await.unwrap();
        let (status, p) = app
            .admin(
                Method::PATCH,
                "/admin/v1/tenants/orphan",
                Some(json!({"domains": ["orphan.test"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{p}");
        held.release.send(()).unwrap();
    });
    assert_eq!(deleted.0, StatusCode::NO_CONTENT, "{}", deleted.1);

    tenant_with_dev_connection(&app, "orphan").await;
    assert!(routes_nobody(&discover(&app, "bob@orphan.test").await));
    assert!(
        !logs.with_reason("domain.unlisted_reservation").is_empty(),
        "the stale reservation is logged with its reason"
    );
}

/// A dev-mode gateway whose demo tenant (domain `demo.example`) has a second
/// dev connection, `partner`, beside its own `dev`.
async fn demo_with_partner() -> TestApp {
    let app = spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await;
    app.admin_create(
        "/admin/v1/tenants/demo/connections",
        json!({"id": "partner", "kind": "dev"}),
    )
    .await;
    app
}

async fn assign(app: &TestApp, tenant: &str, domain: &str, connections: Value) -> (StatusCode, Value) {
    app.admin(
        Method::PATCH,
        &format!("/admin/v1/tenants/{tenant}/domains/{domain}"),
        Some(json!({ "connections": connections })),
    )
    .await
}

/// Signs in to the demo tenant as `email` through its dev connection
/// `connection`, in a fresh browser, and redeems the code.
async fn sign_in_through(
    app: &TestApp,
    rp: &crate::revocation::Rp,
    connection: &str,
    email: &str,
) -> crate::revocation::Tokens {
    use crate::revocation::{authorize_url, redeem, submit_login, Code, DEMO};
    let mut browser = Browser::new();
    let verifier = portcullis::tokens::random_token(32);
    let mut url = authorize_url(app, rp, DEMO, &verifier);
    url.query_pairs_mut().append_pair("connection", connection);
    let login = browser.get(&url).await;
    assert!(
        login.url.path().starts_with(&format!("/dev/demo/{connection}/")),
        "the {connection} connection's login: {} {}",
        login.url,
        login.body
    );
    let back = submit_login(&mut browser, rp, &login, email).await.stopped();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {back}"))
        .1
        .into_owned();
    let tokens = redeem(app, rp, &Code { code, verifier }).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    tokens
}

fn id_token_claims(tokens: &crate::revocation::Tokens) -> Value {
    jwt_claims(tokens.body["id_token"].as_str().unwrap())
}

/// A tenant that signs in its own people through one IdP and a partner's
/// through another assigns its domain to its own: from then on only that
/// connection vouches for the domain's addresses. The partner's IdP
/// asserting `bob@demo.example` gets `email_verified: false`
/// (`login.email_other_connection`) at a new sign-in, and a user the
/// partner signed in before the assignment loses the verdict at the next
/// refresh; the tenant's own connection still vouches.
#[tokio::test]
async fn a_domain_assigned_to_a_connection_is_vouched_for_by_it_alone() {
    use crate::revocation::register;
    let (logs, _guard) = crate::support::logs::Captured::start();
    let app = demo_with_partner().await;
    let rp = register(&app, "assignapp").await;

    // Unassigned, as before: any connection of the tenant vouches.
    let before = sign_in_through(&app, &rp, "partner", "bob@demo.example").await;
    assert_eq!(id_token_claims(&before)["email_verified"], true);
    assert!(logs.with_reason("login.email_other_connection").is_empty());

    let (status, view) = assign(&app, "demo", "Demo.Example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["domain"], "demo.example");
    assert_eq!(view["connections"], json!(["dev"]));
    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/demo/domains", None).await;
    assert_eq!(list["domains"][0]["connections"], json!(["dev"]), "{list}");

    let refreshed = crate::revocation::refresh(&app, &rp, before.rt()).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let id = id_token_claims(&refreshed);
    assert_eq!(id["email"], "bob@demo.example", "{id}");
    assert_eq!(
        id["email_verified"], false,
        "the partner's user after the assignment: {id}"
    );

    let partner = sign_in_through(&app, &rp, "partner", "carol@demo.example").await;
    let id = id_token_claims(&partner);
    assert_eq!(id["email"], "carol@demo.example", "{id}");
    assert_eq!(id["email_verified"], false, "a new sign-in through the partner: {id}");
    assert!(
        !logs.with_reason("login.email_other_connection").is_empty(),
        "the withheld verdict is logged with its reason"
    );

    let own = sign_in_through(&app, &rp, "dev", "dave@demo.example").await;
    assert_eq!(
        id_token_claims(&own)["email_verified"],
        true,
        "the tenant's own connection"
    );

    // `[]`: any connection's again.
    let (status, view) = assign(&app, "demo", "demo.example", json!([])).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["connections"], json!([]));
    let again = sign_in_through(&app, &rp, "partner", "erin@demo.example").await;
    assert_eq!(id_token_claims(&again)["email_verified"], true);
}

/// Home-realm discovery within a tenant: with two connections, a
/// `login_hint` in a domain assigned to one goes straight to it, where an
/// unassigned domain shows the choice.
#[tokio::test]
async fn a_login_hint_in_an_assigned_domain_goes_to_its_connection() {
    let app = demo_with_partner().await;
    let (url, body) = discover(&app, "bob@demo.example").await;
    assert!(
        body.contains("Choose how to sign in") && !url.path().starts_with("/dev/"),
        "unassigned: the choice: {url} {body}"
    );

    let (status, view) = assign(&app, "demo", "demo.example", json!(["partner"])).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (url, body) = discover(&app, "bob@demo.example").await;
    assert!(
        url.path().starts_with("/dev/demo/partner/"),
        "assigned: straight to the partner's IdP, landed on {url}: {body}"
    );

    // Assigned to both: the choice again, between them.
    let (status, _) = assign(&app, "demo", "demo.example", json!(["partner", "dev"])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = discover(&app, "bob@demo.example").await;
    assert!(body.contains("Choose how to sign in"), "{body}");
}

/// An assignment names a verified domain of the tenant and connections the
/// tenant has; anything else is refused with the field at fault, and
/// nothing is written.
#[tokio::test]
async fn an_assignment_is_refused_unless_its_domain_and_connections_are_the_tenants() {
    let app = demo_with_partner().await;
    let (status, p) = assign(&app, "demo", "demo.example", json!(["dev", "nope"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "connections[1]", "{p}");
    let (status, p) = assign(&app, "demo", "demo.example", json!(["Not An Id"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "connections[0]", "{p}");
    let (status, p) = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/demo/domains/demo.example",
            Some(json!({"connections": ["dev"], "verified": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an unknown field: {p}");
    let (status, p) = assign(&app, "demo", "elsewhere.example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
    let (status, p) = assign(&app, "nobody", "demo.example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");

    let (status, claimed) = claim(&app, "demo", "pending.example").await;
    assert_eq!(status, StatusCode::CREATED, "{claimed}");
    let (status, p) = assign(&app, "demo", "pending.example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "a claim not verified yet: {p}");
    assert_eq!(p["field"], "domain", "{p}");

    let (_, list) = app.admin(Method::GET, "/admin/v1/tenants/demo/domains", None).await;
    for d in list["domains"].as_array().unwrap() {
        assert_eq!(d["connections"], json!([]), "nothing written: {list}");
    }

    // The map is in the record every sign-in reads: bounded in all.
    let demo = TenantId::parse("demo").unwrap();
    app.state
        .tenants
        .modify_tenant(&demo, |t| {
            t.domains.push("bulk.example".into());
            let many = (0..portcullis::tenant::MAX_DOMAIN_ASSIGNMENTS)
                .map(|i| portcullis::ids::ConnectionId::parse(&format!("c{i}")).unwrap())
                .collect();
            t.domain_connections.insert("bulk.example".into(), many);
            true
        })
        .await
        .unwrap();
    let (status, p) = assign(&app, "demo", "demo.example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["reason"], "domain.too_many_assignments", "{p}");
    app.state
        .tenants
        .modify_tenant(&demo, |t| {
            t.domains.retain(|d| d != "bulk.example");
            t.domain_connections.clear();
            true
        })
        .await
        .unwrap();

    // A domain removed takes its assignment with it.
    let (status, _) = assign(&app, "demo", "demo.example", json!(["dev"])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .admin(Method::DELETE, "/admin/v1/tenants/demo/domains/demo.example", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let tenant = app
        .state
        .tenants
        .get(&TenantId::parse("demo").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(tenant.domain_connections.is_empty(), "{:?}", tenant.domain_connections);
}
