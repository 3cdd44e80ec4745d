//! `/metrics` counts exactly what a scripted run did. The gateway runs as
//! its own process (the real binary, on a private Redis), so its
//! process-wide recorder holds only this test's counts: no other test in
//! this binary can add to `portcullis_tokens_issued_total` meanwhile. The
//! tests that look only at which labels exist (made-up names add none)
//! read the in-process recorder this binary's gateways share, since no
//! other test can add a made-up name's label to it either.
//! Responses are signed by signxml (tests/peers/saml/craft.py) with the key
//! whose certificate is in the metadata the admin registered.

use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::{Clock as _, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use url::Url;

use crate::saml_common::{attr_value, peer};
use crate::support::browser::Browser;
use crate::support::redis::{free_port, RedisServer};

const IDP_HOST: &str = "idp.metrics.test";
const IDP_ENTITY: &str = "https://idp.metrics.test/entity";
const APP_ID: &str = "metrics-app";
const APP_CB: &str = "https://app.metrics.test/callback";
const ADMIN_TOKEN: &str = "metrics-test-admin-token-0123456789";
const METRICS_TOKEN: &str = "metrics-test-scrape-token-0123456789";

/// The gateway binary, running until dropped.
struct Gateway {
    child: Child,
    base: Url,
    http: reqwest::Client,
    /// Where the gateway's JSON log lines go.
    log: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `portcullis serve` on a free port over `redis_url` and waits
    /// until `/healthz` answers.
    async fn start(redis_url: &str) -> Gateway {
        let port = free_port();
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("metrics-gateway-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let base = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .arg("serve")
            .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("PORTCULLIS_PUBLIC_URL", base.as_str().trim_end_matches('/'))
            .env("PORTCULLIS_REDIS_URL", redis_url)
            .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PORTCULLIS_MASTER_KEY", crate::support::app::TEST_MASTER_KEY)
            .env("PORTCULLIS_METRICS_TOKEN", METRICS_TOKEN)
            .env("PORTCULLIS_ALLOW_PRIVATE_NETWORKS", "true")
            .env("PORTCULLIS_LOG", "info")
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the portcullis binary");
        let gw = Gateway {
            child,
            log,
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        for _ in 0..200 {
            if let Ok(r) = gw.http.get(gw.url("/healthz")).send().await {
                if r.status() == StatusCode::OK {
                    return gw;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the gateway did not answer /healthz within 10 s");
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// The JSON log lines written so far.
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// Scrapes `/metrics` with the token; asserts the Prometheus text format.
    async fn scrape(&self) -> Scrape {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Scrape::parse(&resp.text().await.unwrap())
    }
}

/// One scrape: every sample by its name and sorted labels.
pub struct Scrape {
    /// The text as served.
    pub text: String,
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    /// Parses the Prometheus text format (enough of it for our own output).
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.insert((name.to_owned(), labels), value.parse::<f64>().unwrap());
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample `name` whose labels include `labels`,
    /// summed over the other labels; 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// The label sets of the samples named `name`.
    pub fn label_sets(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples.keys().filter(|(n, _)| n == name).map(|(_, l)| l).collect()
    }

    /// The metric family names present.
    pub fn families(&self) -> std::collections::BTreeSet<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}

/// The IdP: a key pair made by craft.py and its metadata.
struct Idp {
    idp: Value,
    metadata: String,
}

fn ts(d: Duration) -> String {
    (SystemClock.now() + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Idp {
    fn new() -> Self {
        let sso = format!("https://{IDP_HOST}/sso");
        let out = peer(
            "craft.py",
            &json!({ "idp": { "entity_id": IDP_ENTITY, "sso": sso }, "cases": [] }),
        );
        Self {
            idp: out["idp"].clone(),
            metadata: out["metadata"].as_str().unwrap().to_owned(),
        }
    }

    /// A signed Response for `conn` answering `in_response_to`, for `email`,
    /// valid now (or, with `expired`, one whose windows ended minutes ago).
    fn response(&self, conn: &Value, in_response_to: &str, email: &str, expired: bool) -> String {
        let shift = if expired {
            Duration::minutes(-20)
        } else {
            Duration::zero()
        };
        let case = json!({
            "name": "r",
            "sp_entity_id": conn["sp_entity_id"],
            "acs_url": conn["acs_url"],
            "in_response_to": in_response_to,
            "name_id": email,
            "attributes": { "email": [email], "firstName": ["Ada"], "lastName": ["Lovelace"] },
            "issue_instant": ts(shift),
            "not_before": ts(shift + Duration::minutes(-1)),
            "not_on_or_after": ts(shift + Duration::minutes(5)),
            "scd_not_on_or_after": ts(shift + Duration::minutes(5)),
            "sign": "assertion",
        });
        let out = peer("craft.py", &json!({ "idp": self.idp, "cases": [case] }));
        out["responses"]["r"].as_str().unwrap().to_owned()
    }
}

/// A tenant with a SAML connection and a confidential app, on a fresh gateway.
struct World {
    gw: Gateway,
    idp: Idp,
    conn: Value,
    secret: String,
    tenant: &'static str,
}

impl World {
    async fn new(redis_url: &str) -> World {
        let gw = Gateway::start(redis_url).await;
        let tenant = "metrics-acme";
        gw.admin(
            Method::POST,
            "/admin/v1/tenants",
            json!({ "id": tenant, "name": "Acme", "domains": ["metrics-acme.test"] }),
        )
        .await;
        let app = gw
            .admin(
                Method::POST,
                "/admin/v1/clients",
                json!({ "client_id": APP_ID, "name": "Metrics app", "redirect_uris": [APP_CB], "public": false }),
            )
            .await;
        let idp = Idp::new();
        let conn = gw
            .admin(
                Method::POST,
                &format!("/admin/v1/tenants/{tenant}/connections"),
                json!({ "id": "corp", "kind": "saml", "metadata_xml": idp.metadata, "trust_email_verified": true }),
            )
            .await;
        World {
            gw,
            idp,
            conn,
            secret: app["client_secret"].as_str().unwrap().to_owned(),
            tenant,
        }
    }

    /// One SP-initiated sign-in in a fresh browser: `/authorize`, the IdP's
    /// signed answer at the ACS, the continuation. Returns the final
    /// redirect to the app.
    async fn sign_in(&self, email: &str, expired: bool) -> Url {
        let mut browser = Browser::new();
        let mut authorize = self.gw.url("/authorize");
        authorize
            .query_pairs_mut()
            .append_pair("client_id", APP_ID)
            .append_pair("redirect_uri", APP_CB)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email offline_access")
            .append_pair("state", "s")
            .append_pair("tenant", self.tenant)
            .append_pair("connection", "corp");
        let at_idp = browser
            .get_until(&authorize, &|u: &Url| u.host_str() == Some(IDP_HOST))
            .await
            .stopped();
        let q = |k: &str| {
            at_idp
                .query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(q("SAMLRequest"))
            .unwrap();
        let mut request = String::new();
        std::io::Read::read_to_string(&mut flate2::read::DeflateDecoder::new(&raw[..]), &mut request).unwrap();
        let id = attr_value(&request, "ID").unwrap();
        let xml = self.idp.response(&self.conn, &id, email, expired);
        self.post_acs(&mut browser, &xml, &q("RelayState"), &at_idp).await
    }

    /// Posts `xml` to the ACS from the IdP's page and follows the gateway's
    /// redirects until the browser leaves for the app (or a page stops it).
    async fn post_acs(&self, browser: &mut Browser, xml: &str, relay: &str, from: &Url) -> Url {
        let acs = Url::parse(self.conn["acs_url"].as_str().unwrap()).unwrap();
        let form = vec![
            (
                "SAMLResponse".to_owned(),
                base64::engine::general_purpose::STANDARD.encode(xml),
            ),
            ("RelayState".to_owned(), relay.to_owned()),
        ];
        let mut ex = browser.send(Method::POST, &acs, Some(&form), Some(from)).await;
        let mut at = acs;
        while let Some(next) = ex.location(&at).filter(|l| l.host_str() != Some("app.metrics.test")) {
            ex = browser.send(Method::GET, &next, None, Some(from)).await;
            at = next;
        }
        ex.location(&at)
            .unwrap_or_else(|| panic!("no redirect to the app: {} {}", ex.status, ex.body))
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .gw
            .http
            .post(self.gw.url("/token"))
            .basic_auth(APP_ID, Some(&self.secret))
            .form(form)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }
}

fn param(u: &Url, name: &str) -> Option<String> {
    u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_scripted_run_did() {
    let redis = RedisServer::start();
    let w = World::new(&redis.url()).await;
    let t = w.tenant;

    // Three people sign in (each a JIT sign-up) and their apps redeem the
    // codes; the IdP vouches for every address, the tenant for the two in
    // its own domain only.
    let mut refresh_tokens = Vec::new();
    for email in [
        "ada@metrics-acme.test",
        "grace@metrics-acme.test",
        "edsger@elsewhere.test",
    ] {
        let back = w.sign_in(email, false).await;
        let code = param(&back, "code").unwrap_or_else(|| panic!("no code: {back}"));
        let (status, tokens) = w
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_CB),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        refresh_tokens.push(tokens["refresh_token"].as_str().unwrap().to_owned());
    }
    // Two answers the IdP issued twenty minutes ago: refused as expired.
    for _ in 0..2 {
        let back = w.sign_in("late@metrics-acme.test", true).await;
        assert_eq!(param(&back, "error").as_deref(), Some("access_denied"), "{back}");
    }
    // A post to a connection that does not exist: counted, but its made-up
    // ids never become label values.
    let resp =
        w.gw.http
            .post(w.gw.url(&format!("/saml/{t}/made-up-connection/acs")))
            .form(&[("SAMLResponse", "x")])
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // One refresh, then the used refresh token again: reuse.
    let rt = refresh_tokens[0].clone();
    let (status, body) = w
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = w
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    // Without the token, no metrics.
    let resp = w.gw.http.get(w.gw.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp =
        w.gw.http
            .get(w.gw.url("/metrics"))
            .bearer_auth("not-the-metrics-token-at-all")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let m = w.gw.scrape().await;
    let sign_ins = "portcullis_sign_ins_total";
    assert_eq!(
        m.sum(
            sign_ins,
            &[
                ("tenant", t),
                ("connection", "corp"),
                ("result", "success"),
                ("reason", "login.succeeded")
            ]
        ),
        3.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            sign_ins,
            &[
                ("tenant", t),
                ("connection", "corp"),
                ("result", "failure"),
                ("reason", "saml.expired")
            ]
        ),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum(sign_ins, &[("result", "failure")]), 3.0, "{}", m.text);
    // The one connection was built once, at its first use, and is kept
    // (the made-up one was never built); the bound is the default.
    assert_eq!(m.sum("portcullis_connector_builds_total", &[]), 1.0, "{}", m.text);
    assert_eq!(m.sum("portcullis_connectors_cached", &[]), 1.0, "{}", m.text);
    assert_eq!(m.sum("portcullis_connectors_cached_max", &[]), 10_000.0, "{}", m.text);
    assert_eq!(m.sum("portcullis_connector_evictions_total", &[]), 0.0, "{}", m.text);
    assert_eq!(
        m.sum(
            sign_ins,
            &[
                ("tenant", "_unknown"),
                ("connection", "_unknown"),
                ("result", "failure"),
                ("reason", "callback.unknown_connection")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
    for labels in m.label_sets(sign_ins) {
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["connection", "reason", "result", "tenant"]);
        assert_ne!(labels["connection"], "made-up-connection");
    }
    assert_eq!(
        m.sum("portcullis_sign_ups_total", &[("tenant", t), ("connection", "corp")]),
        3.0
    );
    assert_eq!(
        m.sum("portcullis_tokens_issued_total", &[("grant", "authorization_code")]),
        3.0
    );
    assert_eq!(
        m.sum("portcullis_tokens_issued_total", &[("grant", "refresh_token")]),
        1.0
    );
    assert_eq!(m.sum("portcullis_tokens_issued_total", &[]), 4.0);
    assert_eq!(
        m.sum(
            "portcullis_email_verified_withheld_total",
            &[
                ("tenant", t),
                ("connection", "corp"),
                ("reason", "login.email_not_vouched")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum("portcullis_email_verified_withheld_total", &[]), 1.0);
    assert_eq!(m.sum("portcullis_refresh_successes_total", &[]), 1.0);
    assert_eq!(m.sum("portcullis_refresh_reuse_total", &[]), 1.0);

    // Request latency by route template, never by raw path.
    let duration = "portcullis_http_request_duration_seconds_count";
    assert_eq!(
        m.sum(
            duration,
            &[("route", "/saml/{tenant}/{connection}/acs"), ("method", "POST")]
        ),
        6.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum(duration, &[("route", "/token"), ("status", "200")]), 4.0);
    assert_eq!(m.sum(duration, &[("route", "/token"), ("status", "400")]), 1.0);
    for labels in m.label_sets(duration) {
        assert!(!labels["route"].contains(t), "a raw path as a label: {labels:?}");
    }
    // Upstream latency of the six ACS validations (three good, two expired, one unreadable never got there).
    assert_eq!(
        m.sum("portcullis_upstream_duration_seconds_count", &[("op", "saml_acs")]),
        5.0,
        "{}",
        m.text
    );
    assert!(m.sum("portcullis_redis_operation_duration_seconds_count", &[]) > 0.0);
    assert_eq!(m.sum("portcullis_redis_errors_total", &[]), 0.0);
    assert_eq!(m.sum("portcullis_build_info", &[]), 1.0);

    // Certificate expiry, computed at scrape time: the IdP's and our SP's.
    let idp = m.sum(
        "portcullis_certificate_expiry_seconds",
        &[("tenant", t), ("connection", "corp"), ("use", "idp_signing")],
    );
    assert!(idp > 86_400.0, "{}", m.text);
    let sp = m.sum(
        "portcullis_certificate_expiry_seconds",
        &[("tenant", t), ("connection", "corp"), ("use", "sp")],
    );
    assert!(sp > 86_400.0, "{}", m.text);

    // No user identifier anywhere in the output.
    for secretish in [
        "ada@",
        "grace@",
        "edsger@",
        "metrics-acme.test",
        &rt,
        ADMIN_TOKEN,
        METRICS_TOKEN,
    ] {
        assert!(!m.text.contains(secretish), "{secretish} in /metrics");
    }
    // Every metric family we define (except those this run cannot cause) is
    // present; nothing outside our namespace is.
    for f in m.families() {
        assert!(f.starts_with("portcullis_"), "{f}");
    }
    for name in portcullis::meter::NAMES {
        let expected_here = ![
            portcullis::meter::THROTTLED,
            portcullis::meter::REDIS_ERRORS,
            portcullis::meter::METADATA_REFRESHES,
            portcullis::meter::HOOK_CALLS,
            // Nothing in this run is over the in-flight budget.
            portcullis::meter::SHED,
            // Nor over the bound of built connections.
            portcullis::meter::CONNECTOR_EVICTIONS,
        ]
        .contains(name);
        if expected_here {
            assert!(m.families().contains(*name), "{name} missing in {}", m.text);
        }
    }

    // The request spans carry tenant and connection (and the route template).
    let lines = w.gw.log_lines();
    let span_of = |reason: &str| -> Value {
        lines
            .iter()
            .find(|l| l["fields"]["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} line"))["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "request")
            .unwrap()
            .clone()
    };
    let started = span_of("login.started");
    assert_eq!(started["route"], "/authorize", "{started}");
    assert_eq!(started["tenant"], t, "{started}");
    assert_eq!(started["connection"], "corp", "{started}");
    let succeeded = span_of("login.succeeded");
    assert_eq!(
        succeeded["route"], "/saml/{tenant}/{connection}/continue",
        "{succeeded}"
    );
    assert_eq!(succeeded["tenant"], t, "{succeeded}");
    assert_eq!(succeeded["connection"], "corp", "{succeeded}");
    let expired = span_of("saml.expired");
    assert_eq!(expired["route"], "/saml/{tenant}/{connection}/acs", "{expired}");
    assert_eq!(expired["connection"], "corp", "{expired}");
    drop(w);
    redis.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_are_counted_while_the_store_is_down() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&redis.url()).await;
    let before = gw.scrape().await.sum("portcullis_redis_errors_total", &[]);
    assert_eq!(before, 0.0);
    redis.stop();
    for _ in 0..3 {
        let resp = gw.http.get(gw.url("/readyz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let after = gw.scrape().await;
    let errors = after.sum("portcullis_redis_errors_total", &[]);
    assert!(errors >= 3.0, "{}", after.text);
    assert!(
        after.sum("portcullis_redis_operation_duration_seconds_count", &[("op", "ping")]) >= 3.0,
        "{}",
        after.text
    );
}

#[tokio::test]
async fn without_a_token_metrics_stay_off_the_public_listener() {
    let app = crate::support::app::spawn_app(crate::support::app::AppOptions::default()).await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// The in-process recorder's output (shared by every gateway this test
/// binary runs, so only increases are compared).
fn in_process() -> Scrape {
    Scrape::parse(&portcullis::meter::handle().expect("installed by app::build").render())
}

#[tokio::test]
async fn oidc_discovery_with_its_jwks_and_the_token_call_are_timed() {
    use crate::support::oidc_world::{OidcWorld, ACME};
    let w = OidcWorld::new().await;
    let count = "portcullis_upstream_duration_seconds_count";
    let before = in_process();
    w.sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let after = in_process();
    for op in ["oidc_discovery", "oidc_token"] {
        let labels = [("op", op), ("result", "ok")];
        assert!(
            after.sum(count, &labels) >= before.sum(count, &labels) + 1.0,
            "{op} not timed:\n{}",
            after.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_acs_alias_is_measured_as_the_acs_and_unknown_paths_share_one_label() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&redis.url()).await;
    gw.admin(
        Method::POST,
        "/admin/v1/tenants",
        json!({ "id": "alias-acme", "name": "Acme", "domains": [] }),
    )
    .await;
    let alias = gw.url("/api/oauth/saml");
    gw.admin(
        Method::POST,
        "/admin/v1/tenants/alias-acme/connections",
        json!({ "id": "corp", "kind": "saml", "metadata_xml": Idp::new().metadata, "acs_url": alias.as_str() }),
    )
    .await;
    let resp = gw
        .http
        .post(alias)
        .form(&[("SAMLResponse", "not a response")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    for path in ["/no/such/path-1", "/no/such/path-2"] {
        let resp = gw.http.post(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let m = gw.scrape().await;
    let count = "portcullis_http_request_duration_seconds_count";
    assert_eq!(
        m.sum(
            count,
            &[("route", "/saml/{tenant}/{connection}/acs"), ("status", "400")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(count, &[("route", "unmatched"), ("method", "POST")]),
        2.0,
        "{}",
        m.text
    );
    assert!(
        !m.text.contains("/api/oauth/saml") && !m.text.contains("/no/such"),
        "{}",
        m.text
    );
}

/// Anyone who reaches a listener serving `/metrics` with a token can send
/// scrapes with a wrong one: each is refused (401), and the log hears of
/// them once a minute with their number, not once a scrape.
#[tokio::test]
async fn refused_scrapes_are_logged_once_a_minute_with_their_number() {
    use crate::support::app::{spawn_app, AppOptions};
    const TOKEN: &str = "a-metrics-token-long-enough-to-pass";
    let (logs, _guard) = crate::support::logs::Captured::start();
    let app = spawn_app(AppOptions {
        tweak: Some(|s| s.metrics.token = Some(portcullis::secret::Secret::new(TOKEN.to_owned()))),
        ..AppOptions::default()
    })
    .await;
    for _ in 0..20 {
        let resp = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("not-the-metrics-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let lines = logs.with_reason("metrics.unauthorized");
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert_eq!(lines[0]["fields"]["refused"], 1, "{}", logs.text());
    let resp = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Anyone can name a tenant, a connection, an app or a path that does not
/// exist on every public route: none of those names becomes a label, so
/// made-up names never grow the recorder (memory, and every scrape).
#[tokio::test]
async fn made_up_tenants_connections_and_apps_on_every_public_route_add_no_label() {
    let app = crate::support::app::spawn_app(crate::support::app::AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    let suffix = crate::support::oidc_world::random_token()
        .to_lowercase()
        .replace(['-', '_'], "x");
    let (t, c, client) = (
        format!("ghosttenant{suffix}"),
        format!("ghostconn{suffix}"),
        format!("ghostapp{suffix}"),
    );
    let mut gets = vec![
        format!("/authorize?response_type=code&client_id={client}&redirect_uri=https://x.test/cb&scope=openid&tenant={t}"),
        format!("/authorize?response_type=code&client_id=demo-app&redirect_uri=http://localhost/cb&scope=openid&tenant={t}&connection={c}"),
        format!("/saml/{t}/{c}/metadata"),
        format!("/mfa/{t}/enroll"),
        format!("/mfa/{t}/passkeys"),
        format!("/{t}/{c}"),
        format!("/setup/{t}"),
        "/forward-auth".to_owned(),
    ];
    for tenant in [t.as_str(), "demo"] {
        for page in ["sign-in", "sign-up", "forgot", "reset", "confirm", "resend", "passkey"] {
            gets.push(format!("/local/{tenant}/{c}/{page}"));
        }
        gets.push(format!("/oidc/{tenant}/{c}/callback?state={t}&code={c}"));
        gets.push(format!("/dev/{tenant}/{c}/login"));
        gets.push(format!("/dev/{tenant}/{c}/callback?ticket={t}"));
        gets.push(format!("/mfa/{tenant}/{c}"));
        gets.push(format!("/mfa/{tenant}/{c}/passkey"));
    }
    for path in &gets {
        let resp = app
            .client
            .get(app.url(path))
            .header("x-portcullis-resource", format!("https://{t}.test/{c}"))
            .header("x-forwarded-uri", format!("/{t}"))
            .send()
            .await
            .unwrap();
        assert!(!resp.status().is_server_error(), "GET {path}: {}", resp.status());
    }
    let mut posts: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for tenant in [t.as_str(), "demo"] {
        posts.push((
            format!("/saml/{tenant}/{c}/acs"),
            vec![
                ("SAMLResponse".into(), "PHNhbWw+".into()),
                ("RelayState".into(), t.clone()),
            ],
        ));
        posts.push((
            format!("/saml/{tenant}/{c}/continue"),
            vec![("handle".into(), t.clone())],
        ));
        for page in [
            "sign-in",
            "sign-up",
            "forgot",
            "reset",
            "confirm",
            "resend",
            "challenge",
        ] {
            posts.push((
                format!("/local/{tenant}/{c}/{page}"),
                vec![("email".into(), format!("{t}@x.test")), ("password".into(), c.clone())],
            ));
        }
        posts.push((format!("/mfa/{tenant}/{c}"), vec![("code".into(), "123456".into())]));
    }
    for grant in [
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", format!("{t}.{c}")),
        ],
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", format!("{t}.{c}.{c}")),
        ],
        vec![("grant_type", "client_credentials".to_owned())],
        vec![("grant_type", c.clone())],
    ] {
        let mut form: Vec<(String, String)> = grant.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        form.push(("client_id".into(), client.clone()));
        form.push(("client_secret".into(), c.clone()));
        posts.push(("/token".into(), form));
    }
    for endpoint in ["/revoke", "/introspect"] {
        posts.push((
            endpoint.to_owned(),
            vec![
                ("token".into(), format!("{t}.{c}.{c}")),
                ("client_id".into(), client.clone()),
                ("client_secret".into(), c.clone()),
            ],
        ));
    }
    for (path, form) in &posts {
        let resp = app.client.post(app.url(path)).form(form).send().await.unwrap();
        assert!(!resp.status().is_server_error(), "POST {path}: {}", resp.status());
    }
    for path in [
        format!("/admin/v1/tenants/{t}"),
        format!("/admin/v1/tenants/demo/connections/{c}"),
    ] {
        let (status, _) = app.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let scrape = in_process();
    for made_up in [&t, &c, &client, &suffix] {
        assert!(
            !scrape.text.contains(made_up.as_str()),
            "{made_up} became a label:\n{}",
            scrape
                .text
                .lines()
                .filter(|l| l.contains(made_up.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
