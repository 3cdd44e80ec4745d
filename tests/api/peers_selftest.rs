//! The test harness itself, without the gateway: the openid-client relying
//! party signs in directly at the oidc-provider peer through the scripted
//! browser. If this fails, the flow tests' failures say nothing about the
//! gateway.

use crate::support::browser::Browser;
use crate::support::peers::{IdpClient, RelyingParty, UpstreamIdp, IDP_PASSWORD};

#[tokio::test]
async fn relying_party_signs_in_at_upstream_idp_through_scripted_browser() {
    // The RP's port is only known once it runs; the IdP needs its redirect
    // URI up front, so the RP starts first (issuer discovery is lazy).
    let idp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = url::Url::parse(&format!("http://localhost:{idp_port}")).unwrap();
    let rp = RelyingParty::spawn("rp-selftest", &issuer).await;
    let idp = UpstreamIdp::spawn_on(
        idp_port,
        &[IdpClient {
            client_id: "selftest".into(),
            client_secret: "selftest-secret".into(),
            redirect_uris: vec![rp.redirect_uri()],
        }],
    )
    .await;
    assert_eq!(idp.issuer(), issuer.as_str().trim_end_matches('/'));
    rp.configure("selftest", "selftest-secret", "basic").await;

    let mut browser = Browser::new();
    let login = browser
        .get(&rp.login_url(&[("scope", "openid email profile groups")]))
        .await;
    assert!(
        idp.serves(&login.url),
        "expected the IdP login page:\n{}",
        browser.trail()
    );

    // A wrong password is refused and the form is shown again.
    let refused = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", "nope")],
        )
        .await;
    assert_eq!(refused.status, 401);

    let done = browser
        .fill_and_submit(
            &refused,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    assert!(rp.is_callback(&done.url), "{}", browser.trail());
    assert_eq!(done.status, 200, "{}", done.body);
    let body = done.json();
    let claims = &body["id_token_claims"];
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@acme.test");
    assert_eq!(
        claims["groups"],
        serde_json::json!(["engineering", "admins"])
    );
    assert!(body["access_token"].is_string());

    // The RP's wrappers (openid-client) against an independent server.
    let at = body["access_token"].as_str().unwrap();
    let info = rp.userinfo(at, Some("alice")).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_eq!(info.body["email"], "alice@acme.test");
    assert_eq!(rp.introspect(at).await.body["active"], true);
    assert_eq!(rp.revoke(at, Some("access_token")).await.status, 200);
    assert_eq!(rp.introspect(at).await.body["active"], false);
    let bogus = rp.refresh("not-a-refresh-token").await;
    assert_eq!(
        (bogus.status.as_u16(), bogus.error()),
        (400, Some("invalid_grant"))
    );

    let stats = idp.stats().await;
    assert_eq!(
        (stats.authorize, stats.logins, stats.failed_logins),
        (1, 1, 1)
    );
    assert_eq!(stats.token, 2, "code exchange and the refresh attempt");

    // Same browser again: the IdP session signs in without a password.
    browser.clear_history();
    let again = browser.get(&rp.login_url(&[])).await;
    assert!(rp.is_callback(&again.url), "{}", browser.trail());
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(idp.stats().await.logins, 1);

    // prompt=login forces the password form again.
    let forced = browser.get(&rp.login_url(&[("prompt", "login")])).await;
    assert!(idp.serves(&forced.url), "{}", browser.trail());
    assert!(forced.forms().iter().any(|f| f.field("username").is_some()));
}
