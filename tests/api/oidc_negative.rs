//! The gateway's OAuth endpoints refuse what RFC 6749 / RFC 7636 / OIDC say
//! they must refuse. Driven at the protocol level (raw clients) against the
//! real upstream IdP and Redis.

use reqwest::StatusCode;
use serde_json::json;
use url::Url;

use crate::support::browser::Browser;
use crate::support::oidc_world::{random_token, s, ClientAuth, OidcWorld, Pkce, ACME};

/// The query parameters of `url`.
fn query(url: &Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn code_without_the_pkce_verifier_is_refused() {
    let w = OidcWorld::new().await;
    let pkce = Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    let r = w.redeem(&w.raw_a, &code, None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        matches!(r.error(), Some("invalid_grant" | "invalid_request")),
        "{:?}",
        r.body
    );
    assert!(r.body.get("access_token").is_none());
}

#[tokio::test]
async fn code_with_a_wrong_pkce_verifier_is_refused() {
    let w = OidcWorld::new().await;
    let pkce = Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    let other = Pkce::new();
    let r = w.redeem(&w.raw_a, &code, Some(&other.verifier)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error(), Some("invalid_grant"));
}

#[tokio::test]
async fn code_redeemed_twice_is_refused_and_revokes_the_first_tokens() {
    let w = OidcWorld::new().await;
    let pkce = Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    let first = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let cache = first.headers["cache-control"].to_str().unwrap();
    assert!(cache.contains("no-store"), "RFC 6749 §5.1: {cache}");
    let second = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(second.status, 400, "{:?}", second.body);
    assert_eq!(second.error(), Some("invalid_grant"));

    // RFC 6749 §4.1.2: tokens issued from the replayed code are revoked.
    let at = s(&first.body, "access_token");
    assert_eq!(w.introspect(&w.raw_a, at).await, json!({ "active": false }));
    if let Some(rt) = first.body["refresh_token"].as_str() {
        assert_eq!(w.introspect(&w.raw_a, rt).await, json!({ "active": false }));
    }
}

#[tokio::test]
async fn unregistered_redirect_uri_gets_an_error_page_not_a_redirect() {
    let w = OidcWorld::new().await;
    let mut url = w.endpoint("authorization_endpoint");
    let pkce = Pkce::new();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &w.raw_a.reg.client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:9/attacker/callback")
        .append_pair("scope", "openid")
        .append_pair("state", &random_token())
        .append_pair("tenant", ACME)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    let r = w.app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none(), "must not redirect");
}

#[tokio::test]
async fn unknown_client_is_refused_at_authorize_and_token() {
    let w = OidcWorld::new().await;
    let mut url = w.endpoint("authorization_endpoint");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "no-such-client")
        .append_pair("redirect_uri", w.raw_a.redirect_uri.as_str())
        .append_pair("scope", "openid")
        .append_pair("tenant", ACME);
    let r = w.app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none(), "must not redirect");

    let t = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Basic("no-such-client", "whatever"),
            &[("grant_type", "authorization_code"), ("code", "x")],
        )
        .await;
    assert_eq!(t.status, 401, "{:?}", t.body);
    assert_eq!(t.error(), Some("invalid_client"));
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let w = OidcWorld::new().await;
    let pkce = Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", w.raw_a.redirect_uri.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let basic = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&w.raw_a.reg.client_id, "wrong-secret"),
            &form,
        )
        .await;
    assert_eq!(basic.status, 401, "{:?}", basic.body);
    assert_eq!(basic.error(), Some("invalid_client"));
    assert!(
        basic.headers.contains_key("www-authenticate"),
        "RFC 6749 §5.2: Basic challenge"
    );
    let post = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Post(&w.raw_a.reg.client_id, "wrong-secret"),
            &form,
        )
        .await;
    assert_eq!(post.status, 401, "{:?}", post.body);
    assert_eq!(post.error(), Some("invalid_client"));
    // The code was not spent by the failed attempts.
    let ok = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
}

#[tokio::test]
async fn public_client_without_pkce_is_refused() {
    let w = OidcWorld::new().await;
    let redirect = Url::parse("http://127.0.0.1:9/public/callback").unwrap();
    let reg = w.app.create_client("spa", "SPA", &[&redirect], true).await;
    assert!(reg.client_secret.is_none(), "public clients get no secret");

    let mut url = w.endpoint("authorization_endpoint");
    let state = random_token();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "spa")
        .append_pair("redirect_uri", redirect.as_str())
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("tenant", ACME);
    let mut browser = Browser::new();
    let prefix = redirect.as_str().to_owned();
    let back = browser
        .get_until(&url, &move |u: &Url| u.as_str().starts_with(&prefix))
        .await
        .stopped();
    let q = query(&back);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"), "{back}");
    assert_eq!(q.get("state"), Some(&state));
    assert!(!q.contains_key("code"));
    assert!(
        !browser.visited_origin(&w.idp.peer.url),
        "refused before going upstream:\n{}",
        browser.trail()
    );
}
