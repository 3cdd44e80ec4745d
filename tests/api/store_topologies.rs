//! Production Redis topologies end to end: full OIDC (oidc-provider
//! upstream) and SAML (samlify IdP) sign-ins through two gateway replicas
//! sharing the store, every request sent to the next replica in turn, on a
//! single server, TLS with a test CA and a client certificate, Sentinel and
//! Redis Cluster; a Sentinel failover and a cluster primary kill mid-run;
//! and the first request after a Redis restart on an idle gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::Settings;
use serde_json::Value;

use crate::support::app::{spawn_app, AppOptions};
use crate::support::browser::Browser;
use crate::support::oidc_world::{s, OidcWorld, ACME};
use crate::support::peers::IDP_PASSWORD;
use crate::support::redis::{self as test_redis, ClusterRedis, RedisServer, SentinelRedis};
use crate::support::round_robin::{spawn_pair, Pair};
use crate::support::saml_world::{SamlWorld, SAML_CONN, TENANT};

/// Options for a replica on the Redis at `url` under a fresh prefix.
fn options(url: String) -> AppOptions {
    AppOptions {
        redis_url: Some(url),
        redis_prefix: Some(test_redis::prefix()),
        ..AppOptions::default()
    }
}

/// Options for a replica on the shared TLS server (CA and client certificate).
fn tls_options() -> AppOptions {
    let tls = test_redis::shared::tls();
    let (ca, cert, key) = (
        tls.ca.path("ca.pem"),
        tls.ca.path("client.pem"),
        tls.ca.path("client.key"),
    );
    AppOptions {
        configure: Some(Arc::new(move |s: &mut Settings| {
            s.store.ca_file = Some(ca.clone());
            s.store.client_cert_file = Some(cert.clone());
            s.store.client_key_file = Some(key.clone());
        })),
        ..options(tls.url())
    }
}

/// A full OIDC sign-in and a refresh through the pair; answers the
/// refresh's tokens (the newest refresh token).
async fn oidc_sign_in_and_refresh(w: &OidcWorld, user: &str) -> Value {
    let signed_in = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some(user))
        .await;
    assert_eq!(s(&signed_in["id_token_claims"], "email"), format!("{user}@acme.test"));
    let refreshed = w.app1.refresh(s(&signed_in, "refresh_token")).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    refreshed.body
}

/// A full SAML sign-in (samlify IdP, HTTP-POST back to the ACS) through the pair.
async fn saml_sign_in(w: &SamlWorld) {
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
    let done = browser.submit(&post_page, &post_page.form(Some("saml-post"))).await;
    assert!(w.rp.is_callback(&done.url), "{}", browser.trail());
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["id_token_claims"]["email"], "alice@acme.test");
}

fn assert_both_served(pair: &Pair) {
    let (a, b) = pair.served();
    assert!(a >= 3 && b >= 3, "both replicas must serve steps: {a} / {b}");
}

async fn oidc_on(options: AppOptions) {
    let pair = spawn_pair(options).await;
    let w = OidcWorld::on(pair.a.clone()).await;
    oidc_sign_in_and_refresh(&w, "alice").await;
    assert_both_served(&pair);
}

async fn saml_on(options: AppOptions) {
    let pair = spawn_pair(options).await;
    let w = SamlWorld::on(pair.a.clone(), false).await;
    saml_sign_in(&w).await;
    assert_both_served(&pair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_over_two_replicas_on_a_single_redis() {
    oidc_on(options(test_redis::url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_sign_in_over_two_replicas_on_a_single_redis() {
    saml_on(options(test_redis::url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_over_two_replicas_on_tls_redis() {
    oidc_on(tls_options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_sign_in_over_two_replicas_on_tls_redis() {
    saml_on(tls_options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_over_two_replicas_on_sentinel() {
    oidc_on(options(test_redis::shared::sentinel_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_sign_in_over_two_replicas_on_sentinel() {
    saml_on(options(test_redis::shared::sentinel_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_over_two_replicas_on_cluster() {
    oidc_on(options(test_redis::shared::cluster_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_sign_in_over_two_replicas_on_cluster() {
    saml_on(options(test_redis::shared::cluster_url())).await;
}

/// Requests sent while the store is failing over: each answers within the
/// bound (never a hang) and is either a success or a clean 5xx (the gateway
/// keeps serving: no panic took it down).
async fn in_flight_requests_fail_cleanly(w: &OidcWorld) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = w.app.client.clone();
        // /readyz, and /authorize as the app sends the browser there (a
        // pending login and a session written to the store).
        let url = if i % 2 == 0 {
            w.app.url("/readyz")
        } else {
            let to_app = client.get(w.app1.login_url(&[("tenant", ACME)])).send().await.unwrap();
            let location = to_app.headers()["location"].to_str().unwrap().to_owned();
            url::Url::parse(&location).unwrap()
        };
        assert!(url.as_str().starts_with(w.app.base.as_str()), "{url}");
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = client.get(url).timeout(Duration::from_secs(10)).send().await;
            (answer.map(|r| r.status()), sent.elapsed())
        });
    }
    for (answer, took) in tasks.join_all().await {
        let status = answer.expect("the gateway answered");
        eprintln!("in flight: {status} after {took:?}");
        assert!(
            status.is_success() || status.is_redirection() || status.is_server_error(),
            "{status}"
        );
        assert!(took < Duration::from_secs(6), "a request hung for {took:?}");
    }
    eprintln!(
        "in-flight requests during the failover answered within {:?}",
        started.elapsed()
    );
}

/// After the store is back: the refresh token issued before the failover
/// still works, and new sign-ins work, on the same gateways.
async fn after_failover(w: &OidcWorld, before: &Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let refreshed = loop {
        let r = w.app1.refresh(s(before, "refresh_token")).await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        // Still failing over: a transient error, never invalid_grant.
        assert_ne!(r.error(), Some("invalid_grant"), "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        refreshed.status, 200,
        "the pre-failover refresh token: {:?}",
        refreshed.body
    );
    oidc_sign_in_and_refresh(w, "bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_sign_ins_and_refresh_tokens_without_a_restart() {
    let mut topology = SentinelRedis::start();
    let pair = spawn_pair(options(topology.url())).await;
    let w = OidcWorld::on(pair.a.clone()).await;
    // A rotated refresh token, acknowledged by the replica (WAIT) before the kill.
    let before = oidc_sign_in_and_refresh(&w, "alice").await;
    let killed = Instant::now();
    topology.kill_primary();
    in_flight_requests_fail_cleanly(&w).await;
    topology.wait_for_promotion();
    eprintln!("Sentinel promoted the replica {:?} after the kill", killed.elapsed());
    after_failover(&w, &before).await;
    eprintln!(
        "sign-ins and refresh worked again {:?} after the kill",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_kill_keeps_sign_ins_and_refresh_tokens_without_a_restart() {
    let mut topology = ClusterRedis::start();
    let opts = options(topology.url());
    let prefix = opts.redis_prefix.clone().unwrap();
    let pair = spawn_pair(opts).await;
    let w = OidcWorld::on(pair.a.clone()).await;
    let before = oidc_sign_in_and_refresh(&w, "alice").await;
    // The primary serving this tenant's refresh family.
    let family = s(&before, "refresh_token").split('.').nth(1).unwrap().to_owned();
    let family_key = format!("{prefix}:{{t:{ACME}:rf:{family}}}:family");
    let victim = topology.primary_for(&family_key);
    let killed = Instant::now();
    topology.kill(victim);
    in_flight_requests_fail_cleanly(&w).await;
    topology.wait_for_primary_of(&family_key);
    eprintln!("the cluster was ok again {:?} after the kill", killed.elapsed());
    after_failover(&w, &before).await;
    eprintln!(
        "sign-ins and refresh worked again {:?} after the kill",
        killed.elapsed()
    );
}

#[test]
fn outside_dev_mode_a_missing_redis_url_is_a_configuration_error() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        cmd.env_remove(k);
    }
    let out = cmd.arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.backend: no Redis URL is set"), "{err}");
    // Starting refuses too, before binding anything.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.backend"));
    // Dev mode with a Redis store is refused unless forced.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("PORTCULLIS_DEV", "1")
        .env("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dev.enabled: dev mode with a Redis store") && err.contains("PORTCULLIS_DEV_FORCE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_redis_restart_succeeds_on_an_idle_gateway() {
    let server = RedisServer::start();
    let port = server.port();
    let app = spawn_app(options(server.url())).await;
    app.create_tenant("before", "Before", &[]).await;
    server.stop();
    // Idle while Redis is down, long enough for its reconnect attempts to fail.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restarted = RedisServer::start_on(port);
    // The very first request after the restart (a write) succeeds.
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(serde_json::json!({"id": "after", "name": "After"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
