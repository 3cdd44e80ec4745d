//! `/jwks` and the discovery document are served from bytes serialised once
//! per change: each answer carries a strong `ETag` and its `Cache-Control`, a
//! matching `If-None-Match` gets a bodiless 304, and a change (a key
//! rotation, a new resource server) is served at once, with a new `ETag`.

use crate::support::app::{spawn_app, AppOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// GETs `path` (with `If-None-Match`, when given): status, ETag, Cache-Control, body.
async fn get(
    app: &crate::support::app::TestApp,
    path: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, String, String, String) {
    let mut req = app.client.get(app.url(path));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (etag, cache) = (header("etag"), header("cache-control"));
    let status = resp.status();
    (status, etag, cache, resp.text().await.unwrap())
}

#[tokio::test]
async fn jwks_and_discovery_answer_conditional_requests_and_follow_changes() {
    let app = spawn_app(AppOptions::default()).await;
    for (path, cache_control) in [("/jwks", "public, max-age=60"), (DISCOVERY, "public, max-age=300")] {
        let (status, etag, cache, body) = get(&app, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(cache, cache_control, "{path}");
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
            "{path}: {etag}"
        );
        let _: Value = serde_json::from_str(&body).unwrap();
        // Unchanged: the same bytes, the same tag; a matching tag gets a 304.
        let (_, again, _, same) = get(&app, path, None).await;
        assert_eq!(
            (again.as_str(), same.as_str()),
            (etag.as_str(), body.as_str()),
            "{path}"
        );
        let (status, tag, cache, empty) = get(&app, path, Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(
            (tag.as_str(), cache.as_str(), empty.as_str()),
            (etag.as_str(), cache_control, ""),
            "{path}"
        );
        // A different tag (or a weak form of another document) gets the document.
        let (status, _, _, full) = get(&app, path, Some("\"other\", W/\"x\"")).await;
        assert_eq!((status, full.as_str()), (StatusCode::OK, body.as_str()), "{path}");
    }

    // A key rotation changes the JWKS at once.
    let (_, jwks_tag, _, jwks) = get(&app, "/jwks", None).await;
    let (status, body) = app.admin(Method::POST, "/admin/v1/keys/rotate", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, rotated_tag, _, rotated) = get(&app, "/jwks", Some(&jwks_tag)).await;
    assert_eq!(status, StatusCode::OK, "the old tag no longer matches");
    assert_ne!(rotated_tag, jwks_tag);
    let count = |doc: &str| {
        serde_json::from_str::<Value>(doc).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        (count(&jwks), count(&rotated)),
        (2, 3),
        "the retired key stays published"
    );

    // A new resource server's scopes are in the discovery document at once.
    let (_, disco_tag, _, _) = get(&app, DISCOVERY, None).await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(
                json!({"identifier": "https://published-docs.example.test", "name": "docs",
                "scopes": [{"name": "published:read"}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, new_tag, _, doc) = get(&app, DISCOVERY, Some(&disco_tag)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_tag, disco_tag);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(
        doc["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("published:read")),
        "{doc}"
    );
}
