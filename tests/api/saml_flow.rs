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
