//! Metadata that keeps itself current: a SAML connection created from a
//! `metadata_url` is refreshed on demand (`POST …/refresh`) and on the
//! schedule (`app::metadata_round`), against a metadata server inside the
//! test (axum on port 0, serving from a `Mutex`, with an ETag, able to answer
//! 304, 500 or garbage). Sign-ins are IdP-initiated responses signed by
//! signxml (tests/peers/saml/craft.py) with the IdP's first, then second key.

use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use url::Url;

use crate::saml_common::{confirm_unsolicited, peer};
use crate::saml_crafted::{now, ts};
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;

pub const IDP_ENTITY: &str = "https://idp.refresh.test/entity";
pub const APP_ID: &str = "refresh-app";
pub const APP_CB: &str = "https://app.example.test/callback";
const EMAIL: &str = "ada@acme.test";

/// One IdP signing key (made by craft.py) under the shared entity id.
pub struct Key {
    idp: Value,
}

impl Key {
    pub fn new() -> Self {
        let out = peer(
            "craft.py",
            &json!({ "idp": { "entity_id": IDP_ENTITY, "sso": "https://idp.refresh.test/sso" }, "cases": [] }),
        );
        Self {
            idp: out["idp"].clone(),
        }
    }

    pub fn cert_b64(&self) -> String {
        self.idp["cert_pem"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.contains("CERTIFICATE"))
            .collect()
    }

    /// An IdP-initiated Response for `conn`, the assertion signed with this key.
    fn response(&self, conn: &Value) -> String {
        let case = json!({
            "name": "r",
            "sp_entity_id": conn["sp_entity_id"],
            "acs_url": conn["acs_url"],
            "in_response_to": null,
            "name_id": EMAIL,
            "attributes": { "email": [EMAIL] },
            "issue_instant": ts(Duration::zero()),
            "not_before": ts(Duration::minutes(-1)),
            "not_on_or_after": ts(Duration::minutes(5)),
            "scd_not_on_or_after": ts(Duration::minutes(5)),
            "sign": "assertion",
        });
        let out = peer("craft.py", &json!({ "idp": self.idp, "cases": [case] }));
        out["responses"]["r"].as_str().unwrap().to_owned()
    }
}

/// IdP metadata publishing `certs` as signing certificates.
pub fn metadata(certs: &[String]) -> String {
    let keys: String = certs
        .iter()
        .map(|c| {
            format!(
                "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{c}\
                 </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            )
        })
        .collect();
    format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" \
         xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"{IDP_ENTITY}\">\
         <md:IDPSSODescriptor protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">{keys}\
         <md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" \
         Location=\"https://idp.refresh.test/sso\"/></md:IDPSSODescriptor></md:EntityDescriptor>"
    )
}

/// What the metadata server answers.
#[derive(Clone)]
enum Mode {
    /// The document with its ETag; 304 when `If-None-Match` matches.
    Serve,
    /// HTTP 500.
    Fail,
}

struct Served {
    body: String,
    etag: String,
    mode: Mode,
    /// Requests answered, and the `If-None-Match` of each.
    hits: Vec<Option<String>>,
}

/// A metadata server on 127.0.0.1:0.
#[derive(Clone)]
struct MetadataServer {
    url: Url,
    served: Arc<Mutex<Served>>,
}

impl MetadataServer {
    async fn start(body: String) -> Self {
        let served = Arc::new(Mutex::new(Served {
            body,
            etag: "\"v1\"".into(),
            mode: Mode::Serve,
            hits: Vec::new(),
        }));
        let shared = served.clone();
        let router = axum::Router::new().route(
            "/metadata",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let shared = shared.clone();
                async move {
                    use axum::response::IntoResponse;
                    let mut s = shared.lock().unwrap();
                    let inm = headers.get("if-none-match").map(|v| v.to_str().unwrap().to_owned());
                    s.hits.push(inm.clone());
                    match s.mode {
                        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
                        Mode::Serve if inm.as_deref() == Some(s.etag.as_str()) => {
                            (StatusCode::NOT_MODIFIED, [("etag", s.etag.clone())]).into_response()
                        }
                        Mode::Serve => (
                            StatusCode::OK,
                            [("etag", s.etag.clone()), ("content-type", "application/xml".into())],
                            s.body.clone(),
                        )
                            .into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            url: Url::parse(&format!("http://127.0.0.1:{port}/metadata")).unwrap(),
            served,
        }
    }

    /// Publishes `body` under a new ETag.
    fn publish(&self, body: String) {
        let mut s = self.served.lock().unwrap();
        s.body = body;
        s.etag = format!("\"v{}\"", s.hits.len() + 2);
        s.mode = Mode::Serve;
    }

    fn fail(&self) {
        self.served.lock().unwrap().mode = Mode::Fail;
    }

    fn hits(&self) -> Vec<Option<String>> {
        self.served.lock().unwrap().hits.clone()
    }
}

async fn gateway(clock: &ManualClock) -> TestApp {
    spawn_app(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await
}

/// A tenant, the test app and a SAML connection from `server`'s URL that
/// lands IdP-initiated sign-ins in the app.
async fn connect(app: &TestApp, server: &MetadataServer) -> Value {
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let cb = Url::parse(APP_CB).unwrap();
    app.create_client(APP_ID, "Refresh test app", &[&cb], false).await;
    app.create_saml_connection(
        "acme",
        json!({
            "id": "corp",
            "metadata_url": server.url.as_str(),
            "allow_idp_initiated": true,
            "default_client_id": APP_ID,
            "redirect_uri": APP_CB,
        }),
    )
    .await
}

/// Posts `key`'s response to the ACS and follows the continuation, where
/// the person confirms the IdP-initiated sign-in: `Ok` when the app gets a
/// code, `Err(where it went)` otherwise (a refused IdP-initiated response
/// goes to the app with `error=access_denied`).
pub async fn sign_in(app: &TestApp, conn: &Value, key: &Key) -> Result<(), String> {
    let acs = Url::parse(conn["acs_url"].as_str().unwrap()).unwrap();
    let form = [(
        "SAMLResponse",
        base64::engine::general_purpose::STANDARD.encode(key.response(conn)),
    )];
    let mut resp = app.client.post(acs).form(&form).send().await.unwrap();
    for _ in 0..2 {
        if resp.status() == StatusCode::OK {
            // The confirmation page: the browser signed in nowhere is asked.
            let cookies: Vec<String> = resp
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let page = resp.text().await.unwrap();
            resp = confirm_unsolicited(&app.client, &cookies, &page).await;
        }
        let Some(next) = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned()) else {
            return Err(resp.text().await.unwrap());
        };
        if next.starts_with(&format!("{APP_CB}?")) {
            let to_app = Url::parse(&next).unwrap();
            let has = |k: &str| to_app.query_pairs().any(|(n, _)| n == k);
            return if has("code") && !has("error") {
                Ok(())
            } else {
                Err(next)
            };
        }
        resp = app.client.get(next).send().await.unwrap();
    }
    Err("too many redirects".into())
}

async fn refresh(app: &TestApp) -> (StatusCode, Value) {
    app.admin(
        reqwest::Method::POST,
        "/admin/v1/tenants/acme/connections/corp/refresh",
        None,
    )
    .await
}

async fn stored_revision(app: &TestApp) -> u64 {
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse("corp").unwrap();
    app.state.tenants.connection(&t, &c).await.unwrap().unwrap().revision
}

#[tokio::test]
async fn the_idp_adds_a_second_certificate_signs_with_it_then_drops_the_first_and_no_sign_in_fails() {
    let clock = ManualClock::at(now());
    let (first, second) = (Key::new(), Key::new());
    let server = MetadataServer::start(metadata(&[first.cert_b64()])).await;
    let app = gateway(&clock).await;
    let conn = connect(&app, &server).await;
    sign_in(&app, &conn, &first).await.unwrap();
    assert!(
        sign_in(&app, &conn, &second).await.is_err(),
        "an unpublished key signed in"
    );

    // The IdP publishes its next certificate next to the current one.
    server.publish(metadata(&[first.cert_b64(), second.cert_b64()]));
    let before = stored_revision(&app).await;
    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["sp_entity_id"], conn["sp_entity_id"], "{answer}");
    assert_eq!(answer["acs_url"], conn["acs_url"], "{answer}");
    assert!(answer["metadata_refresh"]["last_success_at"].is_string(), "{answer}");
    assert_eq!(answer["metadata_refresh"]["last_error"], Value::Null, "{answer}");
    assert_ne!(stored_revision(&app).await, before, "the revision did not change");
    sign_in(&app, &conn, &first).await.unwrap();
    // Then signs with it.
    sign_in(&app, &conn, &second).await.unwrap();

    // Then drops the first.
    server.publish(metadata(&[second.cert_b64()]));
    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    sign_in(&app, &conn, &second).await.unwrap();
    let refused = sign_in(&app, &conn, &first).await.unwrap_err();
    assert!(refused.contains("error=access_denied"), "{refused}");
}

#[tokio::test]
async fn unreachable_garbage_or_certificate_less_metadata_is_refused_and_the_last_good_keeps_serving() {
    let clock = ManualClock::at(now());
    let key = Key::new();
    let good = metadata(&[key.cert_b64()]);
    let server = MetadataServer::start(good.clone()).await;
    let app = gateway(&clock).await;
    let conn = connect(&app, &server).await;
    let revision = stored_revision(&app).await;

    let no_cert = good.replace(
        &format!(
            "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}\
             </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>",
            key.cert_b64()
        ),
        "",
    );
    assert_ne!(no_cert, good);
    let other_entity = good.replace(IDP_ENTITY, "https://evil.test/entity");
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: [Case; 5] = [
        ("500", Box::new(|| server.fail()), "metadata.unreachable"),
        (
            "garbage",
            Box::new(|| server.publish("<not xml".into())),
            "metadata.invalid",
        ),
        (
            "dtd",
            Box::new(|| server.publish(format!("<!DOCTYPE x [<!ENTITY e \"e\">]>{good}"))),
            "metadata.invalid",
        ),
        (
            "no signing certificate",
            Box::new(|| server.publish(no_cert.clone())),
            "metadata.invalid",
        ),
        (
            "another entity",
            Box::new(|| server.publish(other_entity.clone())),
            "metadata.invalid",
        ),
    ];
    for (name, setup, code) in cases {
        setup();
        let (status, answer) = refresh(&app).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(code), "{name}: {answer}");
        assert!(detail.contains("still serving"), "{name}: {answer}");
        assert_eq!(answer["field"], "metadata_url", "{name}: {answer}");
        assert_eq!(stored_revision(&app).await, revision, "{name} changed the connection");
        sign_in(&app, &conn, &key)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let state = refresher(&app).state(&tid(), &cid()).await.unwrap();
        assert_eq!(state.last_error.as_ref().map(|e| e.code.as_str()), Some(code), "{name}");
        assert!(state.last_attempt_at.is_some());
    }

    // Every certificate expired: refused as unusable (the clock moves past
    // craft.py's 30-year certificate).
    server.publish(good.clone());
    clock.set("2051-01-01T00:00:00Z".parse().unwrap());
    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("metadata.no_usable_certificate"),
        "{answer}"
    );
    assert_eq!(stored_revision(&app).await, revision);
}

fn tid() -> portcullis::ids::TenantId {
    portcullis::ids::TenantId::parse("acme").unwrap()
}
fn cid() -> portcullis::ids::ConnectionId {
    portcullis::ids::ConnectionId::parse("corp").unwrap()
}
fn refresher(app: &TestApp) -> portcullis::tenant::refresh::MetadataRefresher {
    portcullis::tenant::refresh::MetadataRefresher::new(app.state.tenants.clone(), app.state.upstream.clone())
}

#[tokio::test]
async fn an_unchanged_document_is_answered_304_through_its_etag_and_changes_nothing() {
    let clock = ManualClock::at(now());
    let key = Key::new();
    let server = MetadataServer::start(metadata(&[key.cert_b64()])).await;
    let app = gateway(&clock).await;
    connect(&app, &server).await;
    let revision = stored_revision(&app).await;

    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let hits = server.hits();
    // Set-up fetch (no validator), first refresh (none stored yet), then the ETag.
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(hits[2].as_deref(), Some("\"v1\""), "{hits:?}");
    assert_eq!(stored_revision(&app).await, revision, "a 304 changed the connection");
    assert!(answer["metadata_refresh"]["last_success_at"].is_string(), "{answer}");
}

#[tokio::test]
async fn two_replicas_on_one_redis_fetch_once_per_interval() {
    let clock = ManualClock::at(now());
    let key = Key::new();
    let server = MetadataServer::start(metadata(&[key.cert_b64()])).await;
    let options = AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        clock: Some(clock.clone()),
        ..AppOptions::default()
    };
    let a = spawn_app(options.clone()).await;
    let b = spawn_app(options).await;
    connect(&a, &server).await;
    let after_setup = server.hits().len();
    let interval = std::time::Duration::from_secs(3600);
    let (wa, wb) = tokio::join!(
        portcullis::app::metadata_round(&a.state, interval),
        portcullis::app::metadata_round(&b.state, interval)
    );
    assert!(wa.is_empty() && wb.is_empty());
    portcullis::app::metadata_round(&a.state, interval).await;
    assert_eq!(server.hits().len(), after_setup + 1, "{:?}", server.hits());
}

#[tokio::test]
async fn a_certificate_close_to_expiry_shows_in_the_answer_and_is_reported_once_per_threshold() {
    let clock = ManualClock::at(now());
    let key = Key::new();
    let server = MetadataServer::start(metadata(&[key.cert_b64()])).await;
    let app = gateway(&clock).await;
    connect(&app, &server).await;
    let (_, answer) = refresh(&app).await;
    assert_eq!(answer["certificate_warning"], Value::Null, "{answer}");
    let expires: chrono::DateTime<chrono::Utc> = answer["certificate_expires_at"].as_str().unwrap().parse().unwrap();

    clock.set(expires - Duration::days(10));
    let (_, answer) = refresh(&app).await;
    assert_eq!(answer["certificate_warning"], "14_days", "{answer}");
    let interval = std::time::Duration::from_secs(3600);
    let warnings = portcullis::app::metadata_round(&app.state, interval).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].level.as_str(), "14_days");
    assert_eq!(warnings[0].connection.as_str(), "corp");
    assert!(portcullis::app::metadata_round(&app.state, interval).await.is_empty());

    clock.set(expires - Duration::days(2));
    let warnings = portcullis::app::metadata_round(&app.state, interval).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].level.as_str(), "3_days");
}

/// The schedule's refresh changes which certificates are trusted: each
/// change is in the tenant's audit log as `connection.metadata_refreshed`
/// by `system:metadata_refresh`, with the certificates before and after
/// (before, only an admin's refresh was audited, so a certificate taken
/// from the metadata URL on schedule left no trace there).
#[tokio::test]
async fn a_scheduled_refresh_that_changes_the_certificates_is_audited() {
    let clock = ManualClock::at(now());
    let (first, second) = (Key::new(), Key::new());
    let server = MetadataServer::start(metadata(&[first.cert_b64()])).await;
    let app = gateway(&clock).await;
    connect(&app, &server).await;
    server.publish(metadata(&[first.cert_b64(), second.cert_b64()]));
    portcullis::app::metadata_round(&app.state, std::time::Duration::from_secs(3600)).await;
    sign_in(&app, &connect_answer(&app).await, &second).await.unwrap();

    let refreshed = app.tenant_audit("acme", "connection.metadata_refreshed").await;
    assert_eq!(refreshed.len(), 1, "{refreshed:#?}");
    let event = &refreshed[0];
    assert_eq!(event["actor"], "system:metadata_refresh", "{event:#}");
    assert_eq!(event["target"]["id"], "corp", "{event:#}");
    let fingerprints = |side: &str| -> Vec<String> {
        event[side]["certificates"]
            .as_array()
            .unwrap_or_else(|| panic!("no {side} certificates: {event:#}"))
            .iter()
            .filter(|c| c["use"] == "idp_signing")
            .map(|c| c["fingerprint_sha256"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(fingerprints("before").len(), 1, "{event:#}");
    assert_eq!(fingerprints("after").len(), 2, "{event:#}");
    assert!(fingerprints("after").contains(&fingerprints("before")[0]));
}

/// The stored connection as the admin API describes it.
async fn connect_answer(app: &TestApp) -> Value {
    let (status, conn) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/acme/connections/corp", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{conn}");
    conn
}

/// A refresh's problem is shown to the tenant's admins (the refresh answer,
/// `metadata_refresh.last_error`): a metadata URL whose host name leads to
/// no public address (here re-pointed at loopback, as DNS rebinding would)
/// reads `outbound.no_public_address`, as a name that does not resolve does,
/// and never the guard's word on where the name leads.
#[tokio::test]
async fn a_refresh_of_a_host_name_leading_to_no_public_address_tells_the_admin_no_more() {
    use portcullis::tenant::refresh::{MetadataRefresher, RefreshError, Trigger};
    use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
    let clock = ManualClock::at(now());
    let key = Key::new();
    let server = MetadataServer::start(metadata(&[key.cert_b64()])).await;
    let app = gateway(&clock).await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let url = server.url.as_str().replace("127.0.0.1", "localhost");
    app.create_saml_connection("acme", json!({ "id": "corp", "metadata_url": url }))
        .await;
    // The same gateway with private networks off.
    let mut ctx = app.state.upstream.clone();
    ctx.http = OutboundHttp::new(OutboundConfig::default()).unwrap();
    let refresher = MetadataRefresher::new(app.state.tenants.clone(), ctx);
    let problem = match refresher.refresh(&tid(), &cid(), Trigger::Now).await {
        Err(RefreshError::Refused(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(problem.code, "metadata.unreachable");
    assert!(problem.detail.contains("outbound.no_public_address"), "{problem:?}");
    assert!(!problem.detail.contains("resolves only to"), "{problem:?}");
    let state = refresher.state(&tid(), &cid()).await.unwrap();
    assert_eq!(state.last_error, Some(problem));
}

/// A metadata URL stored with a user name or password before set-up
/// refused them (or restored from a backup, which writes records as they
/// were) is never fetched again: the refresh, asked for or on schedule,
/// refuses it before any request (`saml.metadata_url_credentials`), like
/// any refused refresh (the answer, `metadata_refresh.last_error`, the
/// log), the last good configuration keeps serving, and the password shows
/// nowhere.
#[tokio::test(flavor = "current_thread")]
async fn a_stored_metadata_url_carrying_a_password_is_never_fetched_by_a_refresh() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let clock = ManualClock::at(now());
    let key = Key::new();
    let server = MetadataServer::start(metadata(&[key.cert_b64()])).await;
    let app = gateway(&clock).await;
    let conn = connect(&app, &server).await;
    let mut stored = app.state.tenants.connection(&tid(), &cid()).await.unwrap().unwrap();
    let portcullis::upstream::ConnectionKind::Saml(cfg) = &mut stored.kind else {
        panic!("not SAML")
    };
    let with_password = server.url.as_str().replace("://", "://svc:refresh-pass-s3cret@");
    cfg.metadata_url = Some(Url::parse(&with_password).unwrap());
    app.state
        .tenants
        .put_connection(&stored, portcullis::tenant::IssuerChange::KeepUsers)
        .await
        .unwrap();
    let revision = stored_revision(&app).await;
    let hits = server.hits().len();

    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "metadata_url", "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("saml.metadata_url_credentials"), "{answer}");
    assert!(detail.contains("still serving"), "{answer}");
    portcullis::app::metadata_round(&app.state, std::time::Duration::from_secs(3600)).await;
    assert_eq!(
        server.hits().len(),
        hits,
        "the metadata server was asked: {:?}",
        server.hits()
    );

    let state = refresher(&app).state(&tid(), &cid()).await.unwrap();
    assert_eq!(
        state.last_error.as_ref().map(|e| e.code.as_str()),
        Some("saml.metadata_url_credentials")
    );
    let view = connect_answer(&app).await;
    assert_eq!(
        view["metadata_refresh"]["last_error"]["code"], "saml.metadata_url_credentials",
        "{view}"
    );
    assert_eq!(stored_revision(&app).await, revision);
    sign_in(&app, &conn, &key).await.unwrap();
    assert_eq!(
        logs.with_reason("saml.metadata_url_credentials").len(),
        2,
        "{}",
        logs.text()
    );
    for shown in [answer.to_string(), view.to_string(), format!("{state:?}"), logs.text()] {
        assert!(!shown.contains("refresh-pass-s3cret"), "{shown}");
    }
}

/// The refresh holds fetched metadata to set-up's size limit: a document
/// over `MAX_METADATA_BYTES` (256 KiB, under the outbound client's 1 MiB)
/// is refused (`saml.metadata_too_large`) and the last good configuration
/// keeps serving.
#[tokio::test]
async fn fetched_metadata_over_the_size_limit_is_refused_by_a_refresh() {
    let clock = ManualClock::at(now());
    let key = Key::new();
    let good = metadata(&[key.cert_b64()]);
    let server = MetadataServer::start(good.clone()).await;
    let app = gateway(&clock).await;
    let conn = connect(&app, &server).await;
    let revision = stored_revision(&app).await;
    let limit = portcullis::upstream::saml::MAX_METADATA_BYTES;
    let pad = "x".repeat(limit + 1 - good.len() - "<!---->".len());
    let big = good.replace("<md:IDPSSODescriptor", &format!("<!--{pad}--><md:IDPSSODescriptor"));
    assert_eq!(big.len(), limit + 1);
    server.publish(big);

    let (status, answer) = refresh(&app).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("saml.metadata_too_large"),
        "{answer}"
    );
    let state = refresher(&app).state(&tid(), &cid()).await.unwrap();
    assert_eq!(
        state.last_error.as_ref().map(|e| e.code.as_str()),
        Some("saml.metadata_too_large")
    );
    assert_eq!(stored_revision(&app).await, revision);
    sign_in(&app, &conn, &key).await.unwrap();
}
