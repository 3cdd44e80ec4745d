//! Connection, tenant and app updates are compare-and-set: two writers that
//! read the same record (two PATCHes on two replicas, a PATCH and a metadata
//! refresh, an app's PATCH and its secret rotation or deletion) never lose
//! an update silently, and a deleted app is never written back. The loser writes nothing and is told so
//! (409 problem+json, `field: "revision"`); the refresh skips its round.
//! Two gateway replicas share one real Redis server.

use portcullis::clock::ManualClock;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::provider::clients::ClientError;
use portcullis::tenant::RegistryError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use url::Url;

use crate::metadata_refresh::{metadata, Key};
use crate::saml_crafted::now;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::held_store::Hold;
use crate::support::redis;

const PATH: &str = "/admin/v1/tenants/acme/connections/corp";

async fn two_replicas() -> (TestApp, TestApp) {
    let options = AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        clock: Some(ManualClock::at(now())),
        ..AppOptions::default()
    };
    (spawn_app(options.clone()).await, spawn_app(options).await)
}

/// The SAML fields of the stored connection, as JSON.
async fn stored(app: &TestApp) -> Value {
    let t = TenantId::parse("acme").unwrap();
    let c = ConnectionId::parse("corp").unwrap();
    let conn = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    serde_json::to_value(&conn).unwrap()
}

/// A field of the SAML configuration (flattened into the record).
fn saml_field(record: &Value, field: &str) -> Value {
    record[field].clone()
}

/// The tenant acme with its SAML connection corp, made on `app`.
async fn with_corp(app: &TestApp) {
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let key = Key::new();
    app.create_saml_connection(
        "acme",
        json!({ "id": "corp", "metadata_xml": metadata(&[key.cert_b64()]) }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_on_two_replicas_never_lose_an_update() {
    let (a, b) = two_replicas().await;
    with_corp(&a).await;
    let mut conflicts = 0;
    for round in 0..20u64 {
        let before = stored(&a).await;
        let (skew, session) = (json!(1 + round), json!(600 + round));
        let ((sa, pa), (sb, pb)) = tokio::join!(
            a.admin(Method::PATCH, PATH, Some(json!({ "clock_skew_secs": skew }))),
            b.admin(Method::PATCH, PATH, Some(json!({ "max_session_secs": session }))),
        );
        let after = stored(&a).await;
        for (status, problem, field, value) in [
            (sa, &pa, "clock_skew_secs", &skew),
            (sb, &pb, "max_session_secs", &session),
        ] {
            match status {
                StatusCode::OK => assert_eq!(&saml_field(&after, field), value, "round {round}: {field} lost"),
                StatusCode::CONFLICT => {
                    conflicts += 1;
                    assert_eq!(problem["field"], "revision", "round {round}: {problem}");
                    assert_eq!(
                        saml_field(&after, field),
                        saml_field(&before, field),
                        "round {round}: a refused PATCH wrote {field}"
                    );
                }
                other => panic!("round {round}: {field}: {other} {problem}"),
            }
        }
        assert!(
            sa == StatusCode::OK || sb == StatusCode::OK,
            "round {round}: nobody won"
        );
    }
    eprintln!("conflicts in 20 rounds: {conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_stale_read_is_refused_and_writes_nothing() {
    let (a, b) = two_replicas().await;
    with_corp(&a).await;
    let (t, c) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("corp").unwrap());
    let stale = a.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let (status, body) = b
        .admin(Method::PATCH, PATH, Some(json!({ "max_session_secs": 777 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut late = stale.clone();
    late.status = portcullis::upstream::ConnectionStatus::Disabled;
    let refused = a
        .state
        .tenants
        .update_connection(&stale, &late, portcullis::tenant::IssuerChange::NewUsers)
        .await;
    assert!(matches!(refused, Err(RegistryError::Changed(_))), "{refused:?}");
    let after = stored(&a).await;
    assert_eq!(saml_field(&after, "max_session_secs"), json!(777));
    assert_eq!(after["status"], json!("active"));
    // Tenants too: an update from a stale read is refused.
    let old = a.state.tenants.get(&t).await.unwrap().unwrap();
    let mut renamed = (*old).clone();
    renamed.name = "Acme One".into();
    a.state.tenants.update(&old, &renamed).await.unwrap();
    let mut other = (*old).clone();
    other.name = "Acme Two".into();
    let refused = a.state.tenants.update(&old, &other).await;
    assert!(matches!(refused, Err(RegistryError::Changed(_))), "{refused:?}");
    assert_eq!(a.state.tenants.get(&t).await.unwrap().unwrap().name, "Acme One");
}

/// Re-pointing a connection at another IdP writes its record and a fresh
/// incarnation (its users start afresh) in one compare-and-set: from a
/// stale read neither is written, so a refused change never cuts the users
/// off; from a fresh read both are, and another replica sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_re_pointing_renews_no_users_and_a_won_one_renews_them_with_its_record() {
    use portcullis::tenant::IssuerChange;
    use portcullis::upstream::ConnectionKind;
    let (a, b) = two_replicas().await;
    with_corp(&a).await;
    let (t, c) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("corp").unwrap());
    let incarnation = |app: &TestApp| {
        let (tenants, t, c) = (app.state.tenants.clone(), t.clone(), c.clone());
        async move { tenants.connection_incarnation(&t, &c).await.unwrap().unwrap() }
    };
    let born = incarnation(&a).await;
    let re_pointed = |from: &portcullis::upstream::Connection| {
        let mut to = from.clone();
        let ConnectionKind::Saml(cfg) = &mut to.kind else {
            panic!("a SAML connection")
        };
        cfg.idp_entity_id = "https://other-idp.cas.test/entity".into();
        to.revision += 1;
        to
    };
    let stale = a.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let (status, body) = b
        .admin(Method::PATCH, PATH, Some(json!({ "max_session_secs": 777 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = a
        .state
        .tenants
        .update_connection(&stale, &re_pointed(&stale), IssuerChange::NewUsers)
        .await;
    assert!(matches!(refused, Err(RegistryError::Changed(_))), "{refused:?}");
    assert_eq!(incarnation(&a).await, born, "a refused change cut the users off");
    assert_eq!(incarnation(&b).await, born);
    let after = stored(&a).await;
    assert_eq!(
        saml_field(&after, "idp_entity_id"),
        json!(crate::metadata_refresh::IDP_ENTITY)
    );

    // From a fresh read: the record and a fresh incarnation, together.
    let fresh = a.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let renewed = a
        .state
        .tenants
        .update_connection(&fresh, &re_pointed(&fresh), IssuerChange::NewUsers)
        .await
        .unwrap();
    assert!(renewed);
    let now = incarnation(&b).await;
    assert_ne!(now, born);
    assert_eq!(
        saml_field(&stored(&b).await, "idp_entity_id"),
        json!("https://other-idp.cas.test/entity")
    );
    // Another change that keeps the issuer keeps the users.
    let kept = a.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let mut disabled = kept.clone();
    disabled.status = portcullis::upstream::ConnectionStatus::Disabled;
    let renewed = a
        .state
        .tenants
        .update_connection(&kept, &disabled, IssuerChange::NewUsers)
        .await
        .unwrap();
    assert!(!renewed);
    assert_eq!(incarnation(&a).await, now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_update_from_a_read_before_a_rotation_is_refused_and_keeps_the_new_secret() {
    let (a, b) = two_replicas().await;
    let redirect = Url::parse("https://app.example.com/callback").unwrap();
    let first = a.create_client("web", "Web", &[&redirect], false).await;
    let first = first.client_secret.unwrap();
    let stale = Arc::unwrap_or_clone(a.state.provider.clients.get("web").await.unwrap().unwrap());
    // The secret leaked: replica B rotates it, the old one dead at once.
    let (status, rotated) = b
        .admin(
            Method::POST,
            "/admin/v1/clients/web/secret/rotate",
            Some(json!({ "overlap_secs": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    let mut renamed = stale.clone();
    renamed.name = "Web Renamed".into();
    let refused = a.state.provider.clients.update(&stale, &renamed).await;
    assert!(matches!(refused, Err(ClientError::Changed(_))), "{refused:?}");
    let now = a.state.provider.clock.now();
    let stored = a.state.provider.clients.get("web").await.unwrap().unwrap();
    assert_eq!(stored.name, "Web", "a refused update wrote");
    assert!(stored.secret_matches(&second, now));
    assert!(!stored.secret_matches(&first, now), "the leaked secret came back");
    // From a fresh read the update goes through, with the new secret.
    let fresh = Arc::unwrap_or_clone(stored);
    let mut renamed = fresh.clone();
    renamed.name = "Web Renamed".into();
    a.state.provider.clients.update(&fresh, &renamed).await.unwrap();
    let stored = a.state.provider.clients.get("web").await.unwrap().unwrap();
    assert_eq!(stored.name, "Web Renamed");
    assert!(stored.secret_matches(&second, now));
    // An app deleted meanwhile stays deleted.
    let (status, body) = b.admin(Method::DELETE, "/admin/v1/clients/web", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let mut late = renamed.clone();
    late.name = "Web Again".into();
    let refused = a.state.provider.clients.update(&renamed, &late).await;
    assert!(matches!(refused, Err(ClientError::NotFound(_))), "{refused:?}");
    let refused = a
        .state
        .provider
        .clients
        .modify("web", |c| c.name = "Web Again".into())
        .await;
    assert!(matches!(refused, Err(ClientError::NotFound(_))), "{refused:?}");
    assert!(a.state.provider.clients.get("web").await.unwrap().is_none());
    assert!(!a
        .state
        .provider
        .clients
        .list()
        .await
        .unwrap()
        .contains(&"web".to_owned()));
}

#[tokio::test]
async fn an_app_patch_racing_a_rotation_or_a_delete_undoes_neither() {
    let hold = Hold::default();
    let app = spawn_app(AppOptions {
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await;
    let redirect = Url::parse("https://app.example.com/callback").unwrap();
    let first = app.create_client("web", "Web", &[&redirect], false).await;
    let first = first.client_secret.unwrap();
    let patch = |name: &'static str| {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/admin/v1/clients/web"),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            let resp = client
                .patch(url)
                .bearer_auth(token)
                .header("content-type", "application/merge-patch+json")
                .body(json!({ "name": name }).to_string())
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        })
    };

    // A PATCH has read the app; the leaked secret is rotated; the PATCH writes.
    let held = hold.arm("client:web");
    let patching = patch("Web Renamed");
    held.arrived.await.unwrap();
    let (status, rotated) = app
        .admin(
            Method::POST,
            "/admin/v1/clients/web/secret/rotate",
            Some(json!({ "overlap_secs": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    held.release.send(()).unwrap();
    let (status, problem) = patching.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["field"], "revision", "{problem}");
    let now = app.state.provider.clock.now();
    let stored = app.state.provider.clients.get("web").await.unwrap().unwrap();
    assert!(stored.secret_matches(&second, now));
    assert!(
        !stored.secret_matches(&first, now),
        "the PATCH wrote the leaked secret back"
    );
    assert_eq!(stored.name, "Web");

    // A PATCH has read the app; the app is deleted; the PATCH writes.
    let held = hold.arm("client:web");
    let patching = patch("Web Again");
    held.arrived.await.unwrap();
    let (status, body) = app.admin(Method::DELETE, "/admin/v1/clients/web", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    held.release.send(()).unwrap();
    let (status, problem) = patching.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["field"], "revision", "{problem}");
    let (status, body) = app.admin(Method::GET, "/admin/v1/clients/web", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the deleted app came back: {body}");
    let (status, list) = app.admin(Method::GET, "/admin/v1/clients", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(!list.to_string().contains("\"web\""), "{list}");
    assert!(!app
        .state
        .provider
        .clients
        .list()
        .await
        .unwrap()
        .contains(&"web".to_owned()));
}

/// A metadata server that can hold its answer until the test lets it go,
/// and says when a request arrived.
struct HeldServer {
    url: Url,
    body: Arc<std::sync::Mutex<String>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl HeldServer {
    async fn start(body: String) -> Self {
        let body = Arc::new(std::sync::Mutex::new(body));
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let (b, g) = (body.clone(), gate.clone());
        let router = axum::Router::new().route(
            "/metadata",
            axum::routing::get(move || {
                let (b, g, tx) = (b.clone(), g.clone(), tx.clone());
                async move {
                    tx.send(()).unwrap();
                    let _held = g.lock().await;
                    let body = b.lock().unwrap().clone();
                    ([("content-type", "application/xml")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            url: Url::parse(&format!("http://127.0.0.1:{port}/metadata")).unwrap(),
            body,
            gate,
            arrived,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_a_patch_does_not_overwrite_it() {
    let (a, b) = two_replicas().await;
    let (first, second) = (Key::new(), Key::new());
    let mut server = HeldServer::start(metadata(&[first.cert_b64()])).await;
    a.create_tenant("acme", "Acme", &["acme.test"]).await;
    a.create_saml_connection("acme", json!({ "id": "corp", "metadata_url": server.url.as_str() }))
        .await;
    while server.arrived.try_recv().is_ok() {}
    // The IdP publishes a second certificate: the refresh has something to take.
    *server.body.lock().unwrap() = metadata(&[first.cert_b64(), second.cert_b64()]);

    // On demand: replica B fetches; while the IdP is answering, a PATCH lands on A.
    let held = server.gate.clone().lock_owned().await;
    let refreshing = {
        let b_client = b.client.clone();
        let url = b.url(&format!("{PATH}/refresh"));
        let token = b.admin_token.clone();
        tokio::spawn(async move {
            let resp = b_client.post(url).bearer_auth(token).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        })
    };
    server.arrived.recv().await.unwrap();
    let (status, body) = a
        .admin(Method::PATCH, PATH, Some(json!({ "max_session_secs": 777 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(held);
    let (status, problem) = refreshing.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["field"], "revision", "{problem}");
    let after = stored(&a).await;
    assert_eq!(
        saml_field(&after, "max_session_secs"),
        json!(777),
        "the refresh overwrote the PATCH"
    );
    assert_eq!(saml_field(&after, "idp_certificates").as_array().unwrap().len(), 1);

    // Scheduled: the round that loses is skipped; the PATCH stays.
    let held = server.gate.clone().lock_owned().await;
    let state = b.state.clone();
    let round = tokio::spawn(async move {
        portcullis::app::metadata_round(&state, std::time::Duration::from_secs(3600)).await;
    });
    server.arrived.recv().await.unwrap();
    let (status, body) = a
        .admin(Method::PATCH, PATH, Some(json!({ "max_session_secs": 888 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(held);
    round.await.unwrap();
    let after = stored(&a).await;
    assert_eq!(
        saml_field(&after, "max_session_secs"),
        json!(888),
        "the scheduled refresh overwrote the PATCH"
    );

    // The next refresh starts from the PATCHed connection and takes the new certificate.
    let (status, body) = a.admin(Method::POST, &format!("{PATH}/refresh"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = stored(&a).await;
    assert_eq!(saml_field(&after, "max_session_secs"), json!(888));
    assert_eq!(saml_field(&after, "idp_certificates").as_array().unwrap().len(), 2);
}
