//! Security events in the audit log, over a real Redis: sign-ins that
//! succeeded or failed (with their reason codes), code and refresh-token
//! reuse, each with a request id, in the tenant's bounded stream and the
//! admin API, never carrying a secret; and their delivery to a webhook
//! receiver on loopback: signed, retried with backoff, exactly once per event
//! id across two replicas, and taken over from a replica that stopped.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use crate::support::logs::Captured;
use crate::support::oidc_world::{random_token, ClientAuth, OidcWorld, Pkce, ACME, CONN};
use crate::support::peers::IDP_PASSWORD;
use crate::support::redis;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use portcullis::audit::webhook::{self, Delivery, WebhookConfig};
use portcullis::audit::Audit;
use portcullis::config::Settings;
use portcullis::ids::TenantId;
use portcullis::secret::Secret;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The shared HMAC key of the webhook tests (at least 32 characters).
const HOOK_SECRET: &str = "test-webhook-secret-0123456789abcdef";

/// The events of `tenant`'s stream as stored (raw JSON text, oldest first).
async fn stored(app: &TestApp, tenant: Option<&str>) -> Vec<String> {
    let t = tenant.map(|t| TenantId::parse(t).unwrap());
    app.state
        .store
        .stream_range(&Audit::log_key(t.as_ref()), None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.value).unwrap())
        .collect()
}

/// Every event of the tenant's log through the admin API, newest first,
/// following the cursors with small pages.
async fn listed(app: &TestApp, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=3&cursor={c}"),
            None => format!("{path}?limit=3"),
        };
        let (status, page) = app.admin(reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

fn with_action<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn sign_ins_and_token_reuse_are_security_events_with_reason_codes_and_no_secrets() {
    let (logs, _guard) = Captured::start();
    let w = OidcWorld::new().await;
    let app = &w.app;

    // A successful sign-in, a code, tokens.
    let pkce = Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    let tokens = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.body);
    let refresh = tokens.body["refresh_token"].as_str().unwrap().to_owned();
    let access = tokens.body["access_token"].as_str().unwrap().to_owned();
    let id_token = tokens.body["id_token"].as_str().unwrap().to_owned();
    let sub = {
        let (_, claims) = w.verify_access_token(&access).await;
        claims["sub"].as_str().unwrap().to_owned()
    };

    // The refresh token twice: the second is a reuse.
    let wr = &w;
    let refresh_once = |token: String| async move {
        wr.oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&wr.raw_a.reg.client_id, wr.raw_a.secret()),
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        )
        .await
    };
    let rotated = refresh_once(refresh.clone()).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let reused = refresh_once(refresh.clone()).await;
    assert_eq!(reused.error(), Some("invalid_grant"));

    // The code again (after the refresh, which it revokes): refused, reuse recorded.
    let again = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(again.error(), Some("invalid_grant"));

    // A callback for a sign-in nobody started: refused with its reason
    // code; the request id the gateway answered with is the one recorded. A
    // browser's own `x-request-id` is not taken (only a trusted proxy's).
    let mut bogus = app.oidc_callback(ACME, CONN);
    bogus
        .query_pairs_mut()
        .append_pair("state", &random_token())
        .append_pair("code", "upstream-code-never-issued");
    let resp = app
        .client
        .get(bogus)
        .header("x-request-id", "req-bogus-callback-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let bogus_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(
        bogus_id, "req-bogus-callback-1",
        "a browser does not choose its request id"
    );
    assert!(!bogus_id.is_empty());

    // A disabled user signing in again: refused after the IdP said yes.
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{ACME}/users/{sub}/disable"),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let mut authorize = w.endpoint("authorization_endpoint");
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &w.raw_a.reg.client_id)
        .append_pair("redirect_uri", w.raw_a.redirect_uri.as_str())
        .append_pair("scope", "openid")
        .append_pair("tenant", ACME)
        .append_pair("state", &random_token());
    let mut browser = Browser::new();
    let login = browser.get(&authorize).await;
    let refused = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", browser.trail());
    assert!(refused.body.contains("login.user_disabled"), "{}", refused.body);

    let events = listed(app, &format!("/admin/v1/tenants/{ACME}/audit")).await;
    let ok = with_action(&events, "signin.succeeded");
    assert_eq!(ok.len(), 1, "{events:#?}");
    let ok = ok[0];
    assert_eq!(ok["type"], "security");
    assert_eq!(ok["outcome"], "success");
    assert_eq!(ok["reason"], "login.succeeded");
    assert_eq!(ok["tenant"], ACME);
    assert_eq!(ok["connection"], CONN);
    assert_eq!(ok["subject"], sub.as_str());
    assert_eq!(ok["actor"], format!("user:{sub}"));
    assert!(!ok["request_id"].as_str().unwrap().is_empty());
    assert!(!ok["id"].as_str().unwrap().is_empty());

    let failed = with_action(&events, "signin.failed");
    let reasons: Vec<&str> = failed.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"callback.unknown_login"), "{reasons:?}");
    assert!(reasons.contains(&"login.user_inactive"), "{reasons:?}");
    for f in &failed {
        assert_eq!(f["type"], "security");
        assert_eq!(f["outcome"], "failure");
        assert_eq!(f["actor"], "anonymous");
        assert_eq!(f["connection"], CONN);
        assert!(f.get("subject").is_none(), "no sub for a refused sign-in: {f}");
    }
    let unknown = failed.iter().find(|e| e["reason"] == "callback.unknown_login").unwrap();
    assert_eq!(unknown["request_id"], bogus_id.as_str());

    let code_reuse = with_action(&events, "code.reuse_detected");
    assert_eq!(code_reuse.len(), 1, "{events:#?}");
    assert_eq!(code_reuse[0]["reason"], "code.reused");
    assert_eq!(code_reuse[0]["actor"], format!("client:{}", w.raw_a.reg.client_id));
    let refresh_reuse = with_action(&events, "refresh.reuse_detected");
    assert_eq!(refresh_reuse.len(), 1, "{events:#?}");
    assert_eq!(refresh_reuse[0]["subject"], sub.as_str());
    assert_eq!(refresh_reuse[0]["outcome"], "failure");
    // Unique event ids.
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len());

    // The same events in the process log, one structured line each.
    let lines = logs.with_reason("audit");
    let line = lines
        .iter()
        .find(|l| l["fields"]["event_id"] == unknown["id"])
        .expect("the refused sign-in is in the process log");
    assert_eq!(line["fields"]["event_type"], "security");
    assert_eq!(line["fields"]["action"], "signin.failed");
    assert_eq!(line["fields"]["event_reason"], "callback.unknown_login");
    assert_eq!(line["fields"]["outcome"], "failure");
    assert_eq!(line["fields"]["tenant"], ACME);
    assert_eq!(line["fields"]["connection"], CONN);
    assert_eq!(line["fields"]["request_id"], bogus_id.as_str());
    assert!(lines
        .iter()
        .any(|l| l["fields"]["event_id"] == ok["id"] && l["fields"]["subject"] == sub.as_str()));

    // The admin API's schema names the new members as they are sent.
    let doc: Value = serde_json::from_str(&portcullis::admin::openapi::document()).unwrap();
    let props = &doc["components"]["schemas"]["AuditEventView"]["properties"];
    for member in ["type", "outcome", "reason", "connection", "subject", "request_id"] {
        assert!(props.get(member).is_some(), "{member} missing from {props}");
    }

    // Nothing secret in what is stored, what the admin API shows, or the audit log lines.
    let everything = format!(
        "{}{}{}{}",
        stored(app, Some(ACME)).await.join("\n"),
        stored(app, None).await.join("\n"),
        serde_json::to_string(&events).unwrap(),
        serde_json::to_string(&lines).unwrap(),
    );
    assert_eq!(stored(app, Some(ACME)).await.len(), events.len());
    for (what, secret) in [
        ("client secret", w.raw_a.secret()),
        ("code", code.as_str()),
        ("refresh token", refresh.as_str()),
        ("rotated refresh token", rotated.body["refresh_token"].as_str().unwrap()),
        ("access token", access.as_str()),
        ("id token", id_token.as_str()),
        ("upstream code", "upstream-code-never-issued"),
    ] {
        assert!(!everything.contains(secret), "the {what} reached the audit log");
    }
    // Nor the secret part of the refresh token on its own.
    let secret_part = refresh.rsplit('.').next().unwrap();
    assert!(!everything.contains(secret_part));
}

/// What the receiver saw of one event id.
#[derive(Debug, Default, Clone)]
struct Seen {
    attempts: usize,
    accepted: usize,
    bad_signatures: usize,
    bodies: Vec<String>,
}

/// A webhook receiver on loopback: verifies each signature, answers 500 to
/// the first `fail_first` attempts of every event id (all attempts while
/// `down`), then 200.
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    fail_first: usize,
    down: Arc<std::sync::atomic::AtomicBool>,
    url: url::Url,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
        let r = Receiver {
            seen: Arc::default(),
            fail_first,
            down: Arc::default(),
            url,
        };
        let state = r.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.receive(&headers, &body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        r
    }

    fn receive(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let id = headers
            .get(webhook::EVENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let parsed: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed["id"], id.as_str(), "the header names the body's event");
        let signature = headers
            .get(webhook::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock).timestamp();
        let valid = webhook::verify(HOOK_SECRET.as_bytes(), signature, body, now, 300);
        let mut seen = self.seen.lock().unwrap();
        let s = seen.entry(id).or_default();
        s.attempts += 1;
        s.bodies.push(String::from_utf8(body.to_vec()).unwrap());
        if !valid {
            s.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) || s.attempts <= self.fail_first {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        s.accepted += 1;
        StatusCode::OK
    }

    fn seen(&self) -> HashMap<String, Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until every id in `ids` was accepted at least once.
    async fn wait_for(&self, ids: &[String]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.seen();
            if ids.iter().all(|id| seen.get(id).is_some_and(|s| s.accepted > 0)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not all events delivered: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Turns the webhook outbox on (the worker itself is started by the test,
/// as `app::spawn_background` does, pointed at the receiver).
fn outbox_on(s: &mut Settings) {
    s.audit.webhook.url = Some("http://127.0.0.1:9/unused".into());
    s.audit.webhook.secret = Some(Secret::new(HOOK_SECRET));
}

fn hook_config(receiver: &Receiver, claim_idle: Duration) -> WebhookConfig {
    WebhookConfig {
        url: receiver.url.clone(),
        secret: Secret::new(HOOK_SECRET),
        timeout: Duration::from_secs(1),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        claim_idle,
        poll_interval: Duration::from_millis(50),
        batch: 5,
        allow_private_networks: true,
    }
}

async fn replica(prefix: &str) -> TestApp {
    spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix.to_owned()),
        tweak: Some(outbox_on),
        ..AppOptions::default()
    })
    .await
}

fn worker(app: &TestApp, config: WebhookConfig) -> Delivery {
    Delivery::new(app.state.store.clone(), app.state.upstream.clock.clone(), config).unwrap()
}

/// The ids of every event in the global log and the given tenants' logs.
async fn all_event_ids(app: &TestApp, tenants: &[&str]) -> Vec<String> {
    let mut texts = stored(app, None).await;
    for t in tenants {
        texts.extend(stored(app, Some(t)).await);
    }
    texts
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn two_replicas_deliver_each_event_once_with_valid_signatures_after_two_failures() {
    let prefix = redis::prefix();
    let a = replica(&prefix).await;
    let b = replica(&prefix).await;
    let receiver = Receiver::start(2).await;
    let hooks = [
        worker(&a, hook_config(&receiver, Duration::from_secs(5))).spawn(),
        worker(&b, hook_config(&receiver, Duration::from_secs(5))).spawn(),
    ];

    // Events through either replica: tenants, and an app with a secret.
    for i in 0..8 {
        let app = if i % 2 == 0 { &a } else { &b };
        app.create_tenant(&format!("hook{i}"), "Hooked", &[]).await;
    }
    let secret = a
        .create_client(
            "hooked-app",
            "Hooked app",
            &[&url::Url::parse("https://app.example.test/cb").unwrap()],
            false,
        )
        .await
        .client_secret
        .unwrap();
    let ids = all_event_ids(&a, &[]).await;
    assert_eq!(ids.len(), 9, "8 tenants and an app");
    receiver.wait_for(&ids).await;
    // Longer than the claim time: a second delivery would have happened by now.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let seen = receiver.seen();
    assert_eq!(seen.len(), ids.len(), "only these events: {seen:#?}");
    for id in &ids {
        let s = &seen[id];
        assert_eq!(s.accepted, 1, "event {id} accepted exactly once: {s:?}");
        assert_eq!(s.attempts, 3, "two failures, then the success: {s:?}");
        assert_eq!(s.bad_signatures, 0, "{s:?}");
        // The body is the event as stored, every time.
        assert!(s.bodies.iter().all(|b| b == &s.bodies[0]));
    }
    let bodies: String = seen.values().flat_map(|s| s.bodies.clone()).collect();
    assert!(!bodies.contains(&secret), "the app's secret reached the webhook");
    // Everything acknowledged: nothing left to claim.
    let leftover = a
        .state
        .store
        .stream_autoclaim(&webhook::outbox_key(), webhook::GROUP, "probe", Duration::ZERO, 100)
        .await
        .unwrap();
    assert!(leftover.is_empty(), "{leftover:?}");
    for h in hooks {
        h.stop().await;
    }
}

#[tokio::test]
async fn events_a_stopped_replica_was_sending_are_taken_over_and_delivered_once() {
    let prefix = redis::prefix();
    let a = replica(&prefix).await;
    let b = replica(&prefix).await;
    let receiver = Receiver::start(0).await;
    receiver.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let claim_idle = Duration::from_secs(3);
    let hook_a = worker(&a, hook_config(&receiver, claim_idle)).spawn();
    for i in 0..3 {
        a.create_tenant(&format!("over{i}"), "Taken over", &[]).await;
    }
    let ids = all_event_ids(&a, &[]).await;
    assert_eq!(ids.len(), 3);
    // A has taken them all and is failing on them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ids.iter().all(|id| receiver.seen().contains_key(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never tried: {:?}",
            receiver.seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A dies mid-retry; the receiver comes back; B takes over after the claim time.
    hook_a.stop().await;
    receiver.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let hook_b = worker(&b, hook_config(&receiver, claim_idle)).spawn();
    receiver.wait_for(&ids).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    tokio::time::sleep(claim_idle + Duration::from_secs(1)).await;
    let seen = receiver.seen();
    for id in &ids {
        assert_eq!(seen[id].accepted, 1, "{:?}", seen[id]);
        assert!(seen[id].attempts >= 2, "{:?}", seen[id]);
    }
    hook_b.stop().await;
}

fn small_log(s: &mut Settings) {
    s.audit.max_events = 10;
}

#[tokio::test]
async fn each_log_keeps_only_its_bound_and_pages_by_cursor() {
    let app = spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        tweak: Some(small_log),
        ..AppOptions::default()
    })
    .await;
    for i in 0..15 {
        app.create_tenant(&format!("bound{i:02}"), "Bounded", &[]).await;
    }
    let key = Audit::log_key(None);
    assert_eq!(app.state.store.stream_len(&key).await.unwrap(), 10);
    // Without a webhook nothing is queued for one.
    assert_eq!(app.state.store.stream_len(&webhook::outbox_key()).await.unwrap(), 0);
    let events = listed(&app, "/admin/v1/audit").await;
    let targets: Vec<&str> = events.iter().map(|e| e["target"]["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (5..15).rev().map(|i| format!("bound{i:02}")).collect();
    assert_eq!(targets, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(events
        .iter()
        .all(|e| e["type"] == "admin" && e["action"] == "tenant.created"));
    // A cursor that is not one this log gave out is refused, naming the field.
    let (status, body) = app
        .admin(reqwest::Method::GET, "/admin/v1/audit?cursor=3.abcdef", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("cursor"), "{body}");
}
