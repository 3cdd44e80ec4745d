//! Sign-in in a real browser (Chromium): real cookies, SameSite rules and
//! JavaScript. The IdP runs on `localhost`, the gateway and the apps on
//! `127.0.0.1`, so the IdP's POST back to the gateway is cross-site.
//! Skipped only with `PORTCULLIS_SKIP_BROWSER=1`.

use crate::support::oidc_world::{OidcWorld, ACME};
use crate::support::peers::{IdpClient, RelyingParty, UpstreamIdp, IDP_PASSWORD};
use crate::support::real_browser::{navigations, run_in_browser, skip_browser, BrowserFlow};

/// The harness itself, no gateway: openid-client app -> oidc-provider login
/// page in Chromium -> app callback.
#[tokio::test]
async fn real_browser_harness_signs_in_at_the_oidc_peers() {
    if skip_browser("real_browser_harness_signs_in_at_the_oidc_peers") {
        return;
    }
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
    rp.configure("browser-selftest", "browser-selftest-secret", "basic")
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
    assert_eq!(
        report["body"]["id_token_claims"]["email"],
        "alice@acme.test"
    );
    assert!(navigations(&report)
        .iter()
        .any(|(m, u)| m == "POST" && idp.serves(u)));
}

/// App -> gateway -> upstream OIDC IdP (login form in Chromium) -> gateway
/// callback -> app: the gateway's cookies survive a real browser's rules.
#[tokio::test]
async fn oidc_sign_in_through_the_gateway_in_a_real_browser() {
    if skip_browser("oidc_sign_in_through_the_gateway_in_a_real_browser") {
        return;
    }
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
