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

/// SAML and OIDC connections are stored with a write stamp (a fresh one at every write),
/// which replicas re-validate without reading the rest of the record. A
/// replica of an earlier version writes the record without one: that
/// write (here made straight in Redis, a connection disabled the way such
/// a replica writes it) is a change like any other, seen at the very next
/// request, and the next write through this version stamps it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_written_without_a_stamp_is_seen_at_once() {
    use portcullis::store::redis::{RedisOptions, RedisStore};
    use portcullis::store::{stamp_of, Key, Store};
    let prefix = redis::prefix();
    let a = replica(&prefix).await;
    let raw = RedisStore::connect_with(&RedisOptions::new(&redis::url(), &prefix))
        .await
        .unwrap();
    let key = Key::tenant("stamp", "config", "connection:saml");
    let idp = portcullis_load::saml_idp::SamlIdp::generate("https://idp.stamp.test").unwrap();
    for (path, body) in [
        (
            "/admin/v1/tenants",
            json!({ "id": "stamp", "name": "Stamp", "domains": ["stamp.test"] }),
        ),
        (
            "/admin/v1/clients",
            json!({ "client_id": "cache-app", "name": "Cache app", "redirect_uris": ["http://127.0.0.1:9/cb"], "public": false }),
        ),
        (
            "/admin/v1/tenants/stamp/connections",
            json!({ "id": "saml", "kind": "saml", "metadata_xml": idp.metadata("http://127.0.0.1:9/sso") }),
        ),
    ] {
        let (status, answer) = admin(&a, path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let stored = raw.get(&key).await.unwrap().expect("stored");
    let created = stamp_of(&stored).expect("a connection is stored stamped").to_owned();
    // A local connection is not: its configuration refuses unknown members,
    // so a replica of an earlier version could not read it stamped.
    let (status, answer) = admin(
        &a,
        "/admin/v1/tenants/stamp/connections",
        json!({ "id": "pw", "kind": "local" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let local = raw
        .get(&Key::tenant("stamp", "config", "connection:pw"))
        .await
        .unwrap()
        .expect("stored");
    assert!(stamp_of(&local).is_none() && !String::from_utf8_lossy(&local).contains("\"_w\""));
    for _ in 0..2 {
        let (status, to) = authorize(&a, "stamp", "saml").await;
        assert!(status.is_redirection() && to.contains("SAMLRequest="), "{status}: {to}");
    }
    // Disabled by a replica that does not stamp: its record as it writes it.
    let mut record: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let object = record.as_object_mut().unwrap();
    assert!(object.remove("_w").is_some());
    object.insert("status".into(), json!("disabled"));
    let unstamped = serde_json::to_vec(&record).unwrap();
    assert!(stamp_of(&unstamped).is_none());
    raw.put(&key, &unstamped, None).await.unwrap();
    let (status, body) = authorize(&a, "stamp", "saml").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("authorize.connection_not_active"), "{body}");
    // Enabled through this version: stamped again, with a new stamp, and served.
    let (status, body) = admin(&a, "/admin/v1/tenants/stamp/connections/saml/enable", json!({})).await;
    assert!(status.is_success(), "{status}: {body}");
    let stored = raw.get(&key).await.unwrap().expect("stored");
    let enabled = stamp_of(&stored).expect("stamped again").to_owned();
    assert_ne!(enabled, created);
    let (status, to) = authorize(&a, "stamp", "saml").await;
    assert!(status.is_redirection() && to.contains("SAMLRequest="), "{status}: {to}");
    // Disabled through this version: a fresh stamp, refused at once.
    let (status, body) = admin(&a, "/admin/v1/tenants/stamp/connections/saml/disable", json!({})).await;
    assert!(status.is_success(), "{status}: {body}");
    let stored = raw.get(&key).await.unwrap().expect("stored");
    assert!(![created.as_str(), enabled.as_str()].contains(&stamp_of(&stored).expect("stamped")));
    let (status, body) = authorize(&a, "stamp", "saml").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// The tenant record (kept decoded by each replica and re-validated by the
/// fingerprint read with the request's other configuration) and the
/// connection's incarnation: a tenant changed, a connection deleted and
/// re-created, or a tenant deleted through replica B is seen by replica A's
/// very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_changed_on_another_replica_is_seen_at_once() {
    let prefix = redis::prefix();
    let (a, b) = (replica(&prefix).await, replica(&prefix).await);
    let idp = portcullis_load::saml_idp::SamlIdp::generate("https://idp.tcache.test").unwrap();
    let saml = json!({ "id": "saml", "kind": "saml", "metadata_xml": idp.metadata("http://127.0.0.1:9/sso") });
    for (path, body) in [
        (
            "/admin/v1/tenants",
            json!({ "id": "tcache", "name": "Tenant cache", "domains": ["tcache.test"] }),
        ),
        (
            "/admin/v1/clients",
            json!({ "client_id": "cache-app", "name": "Cache app", "redirect_uris": ["http://127.0.0.1:9/cb"], "public": false }),
        ),
        ("/admin/v1/tenants/tcache/connections", saml.clone()),
    ] {
        let (status, body) = admin(&a, path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let patch = |app: &TestApp, body: serde_json::Value| {
        app.client
            .patch(app.url("/admin/v1/tenants/tcache"))
            .bearer_auth(&app.admin_token)
            .json(&body)
            .send()
    };
    let delete = |app: &TestApp, path: &str| app.client.delete(app.url(path)).bearer_auth(&app.admin_token).send();
    let served = |(status, to): &(StatusCode, String)| status.is_redirection() && to.contains("SAMLRequest=");

    // Served, twice: the second time from the copies replica A keeps.
    for _ in 0..2 {
        let outcome = authorize(&a, "tcache", "saml").await;
        assert!(served(&outcome), "{outcome:?}");
    }
    // The tenant stops using the app through B: A refuses at once.
    let resp = patch(&b, json!({ "settings": { "allowed_clients": ["other-app"] } }))
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let (status, to) = authorize(&a, "tcache", "saml").await;
    assert!(status.is_redirection(), "{status}: {to}");
    assert!(
        to.starts_with("http://127.0.0.1:9/cb") && to.contains("error=access_denied"),
        "authorize.client_not_allowed_by_tenant: back to the app with access_denied: {to}"
    );
    // Allowed again through B: A serves again.
    let resp = patch(&b, json!({ "settings": { "allowed_clients": [] } }))
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let outcome = authorize(&a, "tcache", "saml").await;
    assert!(served(&outcome), "{outcome:?}");

    // The connection deleted and re-created through B: A's next pending
    // login carries the new incarnation (a login A started before is
    // superseded: `callback.login_superseded`, tested with the callback).
    let resp = delete(&b, "/admin/v1/tenants/tcache/connections/saml").await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let (status, to) = authorize(&a, "tcache", "saml").await;
    assert!(
        status.is_redirection() && to.contains("error=invalid_request"),
        "a deleted connection is unknown at once: {status}: {to}"
    );
    let (status, body) = admin(&b, "/admin/v1/tenants/tcache/connections", saml).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let outcome = authorize(&a, "tcache", "saml").await;
    assert!(served(&outcome), "re-created: served again at once: {outcome:?}");

    // The tenant deleted through B: A no longer knows it.
    let resp = delete(&b, "/admin/v1/tenants/tcache").await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let (status, to) = authorize(&a, "tcache", "saml").await;
    assert!(status.is_redirection(), "{status}: {to}");
    assert!(
        to.starts_with("http://127.0.0.1:9/cb") && to.contains("error=invalid_request"),
        "an unknown tenant: back to the app with invalid_request: {to}"
    );
}

/// A replica keeps at most `[upstream] cached_connections` connections
/// built: serving more drops the least recently used, which is built again
/// at its next use and served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_at_most_cached_connections_built() {
    let prefix = redis::prefix();
    let a = spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix),
        tweak: Some(|s| s.upstream.cached_connections = 2),
        ..AppOptions::default()
    })
    .await;
    let connectors = &a.state.broker.connectors;
    assert_eq!(connectors.capacity(), 2);
    for (path, body) in [
        (
            "/admin/v1/tenants",
            json!({ "id": "bound", "name": "Bound", "domains": ["bound.test"] }),
        ),
        (
            "/admin/v1/clients",
            json!({ "client_id": "cache-app", "name": "Cache app", "redirect_uris": ["http://127.0.0.1:9/cb"], "public": false }),
        ),
    ] {
        let (status, answer) = admin(&a, path, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    for c in ["one", "two", "three"] {
        let idp = portcullis_load::saml_idp::SamlIdp::generate(&format!("https://idp.{c}.bound.test")).unwrap();
        let (status, answer) = admin(
            &a,
            "/admin/v1/tenants/bound/connections",
            json!({ "id": c, "kind": "saml", "metadata_xml": idp.metadata("http://127.0.0.1:9/sso") }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    // Each served (and so built); never more than two kept; "one", the least
    // recently used, is dropped and served again, and so on round.
    for round in 0..2 {
        for c in ["one", "two", "three"] {
            let (status, to) = authorize(&a, "bound", c).await;
            assert!(
                status.is_redirection() && to.contains("SAMLRequest="),
                "round {round}, {c}: {status}: {to}"
            );
            assert!(connectors.len() <= 2, "round {round}, {c}: {} kept", connectors.len());
        }
    }
    assert_eq!(connectors.len(), 2);
}
