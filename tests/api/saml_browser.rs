//! Sign-in in a real browser (Chromium): real cookies, SameSite rules and
//! JavaScript. The IdP runs on `localhost`, the gateway and the apps on
//! `127.0.0.1`, so the IdP's POST back to the gateway is cross-site.
//! Never skipped: a missing Chromium fails the test with how to install it.

use serde_json::json;

use crate::support::oidc_world::{OidcWorld, ACME};
use crate::support::peers::{IdpClient, RelyingParty, UpstreamIdp, IDP_PASSWORD};
use crate::support::real_browser::{navigations, run_in_browser, BrowserFlow};
use crate::support::saml_world::{SamlWorld, SAML_CONN, TENANT};

/// The harness itself, no gateway: openid-client app -> oidc-provider login
/// page in Chromium -> app callback.
#[tokio::test]
async fn real_browser_harness_signs_in_at_the_oidc_peers() {
    let idp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let issuer = url::Url::parse(&format!("http://localhost:{idp_port}")).unwrap();
    let rp = RelyingParty::spawn("rp-browser-selftest", &issuer).await;
    let idp = UpstreamIdp::spawn_on(
        idp_port,
        &[IdpClient {
            client_id: "browser-selftest".into(),
            client_secret: "browser-selftest-secret".into(),
            redirect_uris: vec![rp.redirect_uri()],
        }],
    )
    .await;
    rp.configure(
        "browser-selftest",
        "browser-selftest-secret",
        "basic",
        "openid email profile",
    )
    .await;

    let report = run_in_browser(&BrowserFlow {
        start: rp.login_url(&[("scope", "openid email profile groups")]),
        done: rp.redirect_uri(),
        idp_origin: idp.peer.url.clone(),
        username: "alice".into(),
        password: IDP_PASSWORD.into(),
        selectors: None,
    })
    .await;
    assert_eq!(report["status"], 200, "{report:#}");
    assert_eq!(report["body"]["id_token_claims"]["email"], "alice@acme.test");
    assert!(navigations(&report).iter().any(|(m, u)| m == "POST" && idp.serves(u)));
}

/// App -> gateway -> upstream OIDC IdP (login form in Chromium) -> gateway
/// callback -> app: the gateway's cookies survive a real browser's rules.
#[tokio::test]
async fn oidc_sign_in_through_the_gateway_in_a_real_browser() {
    let w = OidcWorld::new().await;
    let report = run_in_browser(&BrowserFlow {
        start: w.app1.login_url(&[("tenant", ACME)]),
        done: w.app1.redirect_uri(),
        idp_origin: w.idp.peer.url.clone(),
        username: "alice".into(),
        password: IDP_PASSWORD.into(),
        selectors: None,
    })
    .await;
    assert_eq!(report["status"], 200, "{report:#}");
    let claims = &report["body"]["id_token_claims"];
    assert_eq!(claims["tenant"], ACME);
    assert_eq!(claims["email"], "alice@acme.test");
    let navs = navigations(&report);
    assert!(navs.iter().any(|(_, u)| u.origin() == w.app.base.origin()
        && u.path().ends_with("/callback")
        && u.path().starts_with("/oidc/")));
}

/// App -> gateway -> SAML IdP login page (HTTP-Redirect binding) -> the
/// IdP's auto-submitted form POSTs the Response to the gateway's ACS from
/// another site (localhost -> 127.0.0.1) -> app callback with a code ->
/// tokens validated by openid-client.
#[tokio::test]
async fn saml_sign_in_in_a_real_browser_with_a_cross_site_post_to_the_acs() {
    let w = SamlWorld::new().await;
    let report = run_in_browser(&BrowserFlow {
        start: w.rp.login_url(&[("tenant", TENANT), ("connection", SAML_CONN)]),
        done: w.rp.redirect_uri(),
        idp_origin: w.idp.peer.url.clone(),
        username: "alice".into(),
        password: IDP_PASSWORD.into(),
        selectors: None,
    })
    .await;
    assert_eq!(report["status"], 200, "{report:#}");
    let claims = &report["body"]["id_token_claims"];
    assert_eq!(claims["tenant"], TENANT);
    assert_eq!(claims["connection"], SAML_CONN);
    assert_eq!(claims["email"], "alice@acme.test");
    assert_eq!(claims["name"], "Alice Liddell");
    assert_eq!(claims["given_name"], "Alice");
    assert_eq!(claims["family_name"], "Liddell");
    assert_eq!(claims["groups"], json!(["engineering", "admins"]));

    // The Response reached the ACS as a POST made from the IdP's page.
    let navs = navigations(&report);
    let acs = w.acs_url();
    let post = navs
        .iter()
        .position(|(m, u)| m == "POST" && u.origin() == acs.origin() && u.path() == acs.path())
        .unwrap_or_else(|| panic!("no POST to the ACS: {report:#}"));
    assert!(post > 0 && w.idp.serves(&navs[post - 1].1), "{report:#}");
    // The ACS sent Chromium on to the same-site continuation (a GET with the
    // session cookie), where the sign-in was finished.
    let (method, next) = &navs[post + 1];
    assert!(
        method == "GET" && next.origin() == acs.origin() && next.path().ends_with("/continue"),
        "{report:#}"
    );
    let stats = w.idp.stats().await;
    assert_eq!((stats.authn_requests, stats.logins, stats.responses), (1, 1, 1));
}

/// The same sign-in with the AuthnRequest sent through the HTTP-POST
/// binding: the gateway's auto-submit page runs under its
/// Content-Security-Policy (the script allowed by its hash, the form allowed
/// to post to the IdP's SSO URL only), and Chromium still submits it.
#[tokio::test]
async fn saml_post_binding_auto_submits_in_a_real_browser_under_the_content_security_policy() {
    let w = SamlWorld::with_post_binding().await;
    let report = run_in_browser(&BrowserFlow {
        start: w.rp.login_url(&[("tenant", TENANT), ("connection", SAML_CONN)]),
        done: w.rp.redirect_uri(),
        idp_origin: w.idp.peer.url.clone(),
        username: "alice".into(),
        password: IDP_PASSWORD.into(),
        selectors: None,
    })
    .await;
    assert_eq!(report["status"], 200, "{report:#}");
    assert_eq!(report["body"]["id_token_claims"]["email"], "alice@acme.test");
    // The AuthnRequest reached the IdP as a POST made from the gateway's page.
    let navs = navigations(&report);
    let post = navs
        .iter()
        .position(|(m, u)| m == "POST" && w.idp.serves(u) && u.path() == "/sso")
        .unwrap_or_else(|| panic!("no POST to the IdP's SSO endpoint: {report:#}"));
    assert!(
        post > 0 && navs[post - 1].1.origin() == w.app.base.origin(),
        "{report:#}"
    );
    let stats = w.idp.stats().await;
    assert_eq!((stats.authn_requests, stats.logins, stats.responses), (1, 1, 1));
}
