//! SAML sign-in end to end with the scripted (non-JavaScript) browser: the
//! samlify IdP's HTTP-POST form is submitted like a browser without
//! JavaScript would, and a replayed Response is refused.

use serde_json::json;

use crate::support::browser::Browser;
use crate::support::peers::IDP_PASSWORD;
use crate::support::saml_world::{SamlWorld, SAML_CONN, TENANT};

#[tokio::test]
async fn saml_sign_in_yields_mapped_claims_and_a_replayed_response_is_refused() {
    let w = SamlWorld::new().await;
    let mut browser = Browser::new();
    let login = browser
        .get(&w.rp.login_url(&[("tenant", TENANT), ("connection", SAML_CONN)]))
        .await;
    assert!(w.idp.serves(&login.url), "{}", browser.trail());
    let post_page = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    let saml_post = post_page.form(Some("saml-post"));
    assert_eq!(saml_post.method, "POST");
    assert_eq!(saml_post.action, w.acs_url().as_str());
    assert!(saml_post.field("SAMLResponse").is_some());

    let done = browser.submit(&post_page, &saml_post).await;
    assert!(w.rp.is_callback(&done.url), "{}", browser.trail());
    // The IdP (localhost) posted to the ACS (127.0.0.1) cross-site: no Lax
    // cookie went with it. The ACS sent the browser on to the same-site
    // continuation, a top-level GET that carries the login binding cookie.
    let acs = browser
        .history
        .iter()
        .position(|h| h.method == reqwest::Method::POST && h.url.path() == w.acs_url().path())
        .unwrap_or_else(|| panic!("no POST to the ACS:\n{}", browser.trail()));
    let (post, next) = (&browser.history[acs], &browser.history[acs + 1]);
    assert!(!post.same_site && post.cookies_sent.is_empty(), "{post:?}");
    assert_eq!(post.status, 303, "{post:?}");
    assert!(next.url.path().ends_with("/continue"), "{}", browser.trail());
    assert!(
        next.cookies_sent.iter().any(|c| c == "portcullis_session_logins"),
        "{next:?}"
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let claims = &done.json()["id_token_claims"];
    assert_eq!(claims["tenant"], TENANT);
    assert_eq!(claims["connection"], SAML_CONN);
    assert_eq!(claims["email"], "alice@acme.test");
    assert_eq!(claims["groups"], json!(["engineering", "admins"]));

    // The same Response posted again (replay) does not sign anyone in.
    let mut attacker = Browser::new();
    let replay = attacker.submit(&post_page, &saml_post).await;
    let code_delivered = attacker
        .history
        .iter()
        .any(|h| w.rp.is_callback(&h.url) && h.url.query_pairs().any(|(k, _)| k == "code"));
    assert!(
        !code_delivered,
        "replayed Response produced a code:\n{}",
        attacker.trail()
    );
    if !w.rp.is_callback(&replay.url) {
        assert!(replay.status.is_client_error(), "{} {}", replay.status, replay.body);
    }
}

/// The AuthnRequest through the HTTP-POST binding: the gateway's auto-submit
/// page carries its Content-Security-Policy (its one script by hash, the form
/// allowed to post to the IdP's SSO URL only), and the sign-in completes
/// when a browser without JavaScript presses its button.
#[tokio::test]
async fn saml_post_binding_page_carries_its_policy_and_the_sign_in_completes() {
    let w = SamlWorld::with_post_binding().await;
    let mut browser = Browser::new();
    let auto = browser
        .get(&w.rp.login_url(&[("tenant", TENANT), ("connection", SAML_CONN)]))
        .await;
    assert_eq!(auto.url.origin(), w.app.base.origin(), "{}", browser.trail());
    let form = auto.form(Some("f"));
    assert_eq!(form.method, "POST");
    let form_action = crate::browser_security::assert_page_headers(&auto.headers, &auto.body, true);
    assert_eq!(form_action, form.action, "{}", auto.body);
    assert!(w.idp.serves(&url::Url::parse(&form.action).unwrap()));

    let login = browser.submit(&auto, &form).await;
    assert!(w.idp.serves(&login.url), "{}", browser.trail());
    let post_page = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    let done = browser.submit(&post_page, &post_page.form(Some("saml-post"))).await;
    assert!(w.rp.is_callback(&done.url), "{}", browser.trail());
    assert_eq!(done.json()["id_token_claims"]["email"], "alice@acme.test");
}

#[tokio::test]
async fn a_saml_connections_maximum_caps_the_refresh_family() {
    let w = SamlWorld::new().await;
    // The connection now allows sessions of ten minutes at most.
    let (status, answer) = w
        .app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections"),
            Some(json!({
                "id": "capped", "kind": "saml",
                "metadata_xml": w.idp.metadata_xml().await,
                "max_session_secs": 600,
            })),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let sp_metadata = w
        .app
        .client
        .get(answer["sp_metadata_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    w.idp.register_sp(&sp_metadata).await;
    let (status, bad) = w
        .app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections"),
            Some(json!({
                "id": "capped-bad", "kind": "saml",
                "metadata_xml": w.idp.metadata_xml().await,
                "max_session_secs": 5,
            })),
        )
        .await;
    assert_eq!(status, 400, "{bad}");

    let mut browser = Browser::new();
    let login = browser
        .get(&w.rp.login_url(&[("tenant", TENANT), ("connection", "capped")]))
        .await;
    let post_page = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    let saml_post = post_page.form(Some("saml-post"));
    let done = browser.submit(&post_page, &saml_post).await;
    assert_eq!(done.status, 200, "{}\n{}", done.body, browser.trail());
    let out = done.json();
    let refresh_token = out["refresh_token"].as_str().expect("a refresh token");
    let introspected = w.rp.introspect(refresh_token).await;
    let body = &introspected.body;
    let exp = body["exp"].as_i64().unwrap_or_else(|| panic!("{body}"));
    let iat = out["id_token_claims"]["iat"].as_i64().unwrap();
    assert!(
        exp <= iat + 600 + 5 && exp >= iat + 600 - 5,
        "exp {exp}, iat {iat}: {body}"
    );
}
