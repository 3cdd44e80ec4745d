//! A replica keeps app (client) records in memory, re-validated on every
//! use by the fingerprint of the stored record (`Store::fingerprint`, read
//! in the request): a change made through another replica (a deletion, a
//! secret rotation and the end of its overlap, `allowed_tenants`) counts on
//! the next request, never served stale.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;
use portcullis::provider::grants::ClientCredentials;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn replica(prefix: &str) -> TestApp {
    spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix.to_owned()),
        ..AppOptions::default()
    })
    .await
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<serde_json::Value>) -> (StatusCode, String) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(&app.admin_token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// `/authorize` on `app` for the app `ccache-app` and the tenant's SAML
/// connection: the status and the redirect's target, or the body.
async fn authorize(app: &TestApp) -> (StatusCode, String) {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "ccache-app")
        .append_pair("redirect_uri", "http://127.0.0.1:9/cb")
        .append_pair("scope", "openid")
        .append_pair("state", "s")
        .append_pair("tenant", "ccache")
        .append_pair("connection", "saml");
    let resp = app.client.get(url).send().await.unwrap();
    let status = resp.status();
    if let Some(to) = resp.headers().get("location") {
        return (status, to.to_str().unwrap().to_owned());
    }
    (status, resp.text().await.unwrap())
}

/// Client authentication at the token endpoints of `app`: `Ok` or the reason code.
async fn authenticate(app: &TestApp, secret: &str) -> Result<(), &'static str> {
    let creds = ClientCredentials::Secret {
        id: "ccache-app".into(),
        secret: secret.to_owned(),
    };
    app.state
        .provider
        .authenticate_client(&creds)
        .await
        .map(|_| ())
        .map_err(|e| e.reason)
}

fn served(outcome: &(StatusCode, String)) -> bool {
    outcome.0.is_redirection() && outcome.1.contains("SAMLRequest=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_changed_on_another_replica_is_seen_at_once() {
    let prefix = redis::prefix();
    let (a, b) = (replica(&prefix).await, replica(&prefix).await);
    let idp = portcullis_load::saml_idp::SamlIdp::generate("https://idp.ccache.test").unwrap();
    for (path, body) in [
        (
            "/admin/v1/tenants",
            json!({ "id": "ccache", "name": "Client cache", "domains": ["ccache.test"] }),
        ),
        (
            "/admin/v1/tenants/ccache/connections",
            json!({ "id": "saml", "kind": "saml", "metadata_xml": idp.metadata("http://127.0.0.1:9/sso") }),
        ),
    ] {
        let (status, body) = admin(&a, Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = admin(
        &a,
        Method::POST,
        "/admin/v1/clients",
        Some(json!({ "client_id": "ccache-app", "name": "Client cache app", "redirect_uris": ["http://127.0.0.1:9/cb"], "public": false })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = first["client_secret"].as_str().unwrap().to_owned();

    // Served, twice: the second time from the copy replica A keeps.
    for _ in 0..2 {
        let outcome = authorize(&a).await;
        assert!(served(&outcome), "{outcome:?}");
        assert_eq!(authenticate(&a, &first).await, Ok(()));
    }

    // allowed_tenants narrowed through B: A refuses the tenant at once.
    let (status, body) = admin(
        &b,
        Method::PATCH,
        "/admin/v1/clients/ccache-app",
        Some(json!({ "allowed_tenants": ["elsewhere"] })),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, to) = authorize(&a).await;
    assert!(status.is_redirection(), "{status}: {to}");
    assert!(
        to.starts_with("http://127.0.0.1:9/cb") && to.contains("error=access_denied"),
        "authorize.tenant_not_allowed: back to the app with access_denied: {to}"
    );
    // Widened again through B: A serves again.
    let (status, body) = admin(
        &b,
        Method::PATCH,
        "/admin/v1/clients/ccache-app",
        Some(json!({ "allowed_tenants": [] })),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    let outcome = authorize(&a).await;
    assert!(served(&outcome), "{outcome:?}");

    // Secret rotated through B with an overlap: A takes both at once.
    let (status, body) = admin(
        &b,
        Method::POST,
        "/admin/v1/clients/ccache-app/secret/rotate",
        Some(json!({ "overlap_secs": 3600 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated: serde_json::Value = serde_json::from_str(&body).unwrap();
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(authenticate(&a, &first).await, Ok(()), "inside the overlap");
    assert_eq!(authenticate(&a, &second).await, Ok(()));
    // Rotated again through B with no overlap: on A the first secret is
    // refused for good and the second at once.
    let (status, body) = admin(
        &b,
        Method::POST,
        "/admin/v1/clients/ccache-app/secret/rotate",
        Some(json!({ "overlap_secs": 0 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated: serde_json::Value = serde_json::from_str(&body).unwrap();
    let third = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(authenticate(&a, &first).await, Err("client.bad_secret"));
    assert_eq!(authenticate(&a, &second).await, Err("client.bad_secret"));
    assert_eq!(authenticate(&a, &third).await, Ok(()));

    // Deleted through B: A no longer knows it, on /authorize and at the token endpoint.
    let (status, body) = admin(&b, Method::DELETE, "/admin/v1/clients/ccache-app", None).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, body) = authorize(&a).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("authorize.unknown_client"), "{body}");
    assert_eq!(authenticate(&a, &third).await, Err("client.unknown"));
}
