//! A replica keeps connection records (and the connectors built from them)
//! in memory, re-validated on every use by the fingerprint of the stored
//! record (`Store::fingerprint`, read in the request): a change made
//! through another replica is seen by the next request, never served stale.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;
use reqwest::StatusCode;
use serde_json::json;

async fn replica(prefix: &str) -> TestApp {
    spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix.to_owned()),
        ..AppOptions::default()
    })
    .await
}

async fn admin(app: &TestApp, path: &str, body: serde_json::Value) -> (StatusCode, String) {
    let resp = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// `/authorize` on `app` for `connection` of `tenant`: the status and the
/// body, or the redirect's target.
async fn authorize(app: &TestApp, tenant: &str, connection: &str) -> (StatusCode, String) {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "cache-app")
        .append_pair("redirect_uri", "http://127.0.0.1:9/cb")
        .append_pair("scope", "openid")
        .append_pair("state", "s")
        .append_pair("tenant", tenant)
        .append_pair("connection", connection);
    let resp = app.client.get(url).send().await.unwrap();
    let status = resp.status();
    if let Some(to) = resp.headers().get("location") {
        return (status, to.to_str().unwrap().to_owned());
    }
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_changed_on_another_replica_is_seen_at_once() {
    let prefix = redis::prefix();
    let (a, b) = (replica(&prefix).await, replica(&prefix).await);
    let idp = portcullis_load::saml_idp::SamlIdp::generate("https://idp.cache.test").unwrap();
    let (status, body) = admin(
        &a,
        "/admin/v1/tenants",
        json!({ "id": "cache", "name": "Cache", "domains": ["cache.test"] }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin(
        &a,
        "/admin/v1/clients",
        json!({ "client_id": "cache-app", "name": "Cache app", "redirect_uris": ["http://127.0.0.1:9/cb"], "public": false }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin(
        &a,
        "/admin/v1/tenants/cache/connections",
        json!({ "id": "saml", "kind": "saml", "metadata_xml": idp.metadata("http://127.0.0.1:9/sso") }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Served, twice: the second time from the copy replica A keeps.
    for _ in 0..2 {
        let (status, to) = authorize(&a, "cache", "saml").await;
        assert!(status.is_redirection() && to.contains("SAMLRequest="), "{status}: {to}");
    }
    // Disabled through replica B: replica A refuses at once.
    let (status, body) = admin(&b, "/admin/v1/tenants/cache/connections/saml/disable", json!({})).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, body) = authorize(&a, "cache", "saml").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("authorize.connection_not_active"), "{body}");
    // Enabled again through B: A serves again.
    let (status, body) = admin(&b, "/admin/v1/tenants/cache/connections/saml/enable", json!({})).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, to) = authorize(&a, "cache", "saml").await;
    assert!(status.is_redirection() && to.contains("SAMLRequest="), "{status}: {to}");
    // Deleted through B: A no longer knows it.
    let resp = b
        .client
        .delete(b.url("/admin/v1/tenants/cache/connections/saml"))
        .bearer_auth(&b.admin_token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let (status, to) = authorize(&a, "cache", "saml").await;
    assert!(status.is_redirection(), "{status}: {to}");
    assert!(
        to.starts_with("http://127.0.0.1:9/cb") && to.contains("error=invalid_request"),
        "back to the app with an error, not to the IdP: {to}"
    );
}
