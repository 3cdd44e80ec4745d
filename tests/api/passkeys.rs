//! WebAuthn passkeys of local accounts in headless Chromium with a CDP
//! virtual authenticator (`tests/peers/browser/passkey-e2e.mjs`), against a
//! real SMTP server (aiosmtpd), Redis and a real OIDC app (openid-client):
//! sign-up → confirm → sign-in → register a passkey → sign-out → password +
//! passkey as the second factor → sign-out → passwordless with the passkey;
//! then the refusals, each by its reason code: a session without a second
//! factor changing one once the account has one, a replayed answer, a wrong
//! origin, throttling, another tenant's sign-in, a passkey whose enrolment
//! the admin reset. The gateway's public URL is `http://localhost:PORT`:
//! Chromium refuses WebAuthn with an IP address as the relying party id.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::peers::{node_bin, peers_dir, RelyingParty};
use crate::support::real_browser::chromium_bin;
use crate::support::redis;
use crate::support::smtp::SmtpServer;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const TENANT: &str = "acme";
const OTHER: &str = "globex";
const REQUIRED: &str = "initech";
const EMAIL_REQUIRED: &str = "bo@initech.example";
const CONN: &str = "pw";
const EMAIL: &str = "ada@acme.example";
const PASSWORD: &str = "Marmalade-Comet-73";

async fn gateway(smtp: &SmtpServer, prefix: &str) -> TestApp {
    let url = smtp.url();
    spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix.to_owned()),
        public_host: Some("localhost".into()),
        configure: Some(Arc::new(move |s| {
            s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
            s.mail.from = Some("Acme sign-in <signin@acme.example>".into());
            s.local.argon2_memory_kib = 8192;
            s.local.argon2_iterations = 1;
            s.passkeys.enabled = true;
        })),
        ..AppOptions::default()
    })
    .await
}

async fn local_tenant(app: &TestApp, id: &str, name: &str, domain: &str, local_mfa: &str) {
    app.create_tenant(id, name, &[domain]).await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{id}/connections"),
            Some(json!({"id": CONN, "kind": "local"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let (status, body) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/v1/tenants/{id}"),
            Some(json!({"settings": {"local_mfa": local_mfa}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
}

fn amr(claims: &Value) -> Vec<String> {
    claims["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr: {claims:#}"))
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn register_a_passkey_use_it_as_second_factor_and_passwordless_and_refusals_in_chromium() {
    assert!(
        peers_dir().join("node_modules/axe-core").is_dir(),
        "axe-core is missing in {}: run `npm ci` there (scripts/test does)",
        peers_dir().display()
    );
    let smtp = SmtpServer::start();
    let prefix = redis::prefix();
    let app = gateway(&smtp, &prefix).await;
    assert_eq!(app.base.host_str(), Some("localhost"));
    local_tenant(&app, TENANT, "Acme Corp", "acme.example", "optional").await;
    local_tenant(&app, OTHER, "Globex", "globex.example", "optional").await;
    local_tenant(&app, REQUIRED, "Initech", "initech.example", "required").await;
    let rp = RelyingParty::spawn("passkey-app", &app.base).await;
    let reg = app
        .create_client("passkey-app", "Passkey App", &[&rp.redirect_uri()], false)
        .await;
    rp.configure(
        "passkey-app",
        reg.client_secret.as_deref().unwrap(),
        "basic",
        "openid email profile",
    )
    .await;

    let dir = std::env::temp_dir().join(format!(
        "portcullis-passkey-e2e-{}",
        portcullis::tokens::random_token(6)
    ));
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    println!("screenshots in {}", shots.display());

    let mut child = Command::new(node_bin())
        .arg(peers_dir().join("browser/passkey-e2e.mjs"))
        .args(["--start", rp.login_url(&[("tenant", TENANT)]).as_str()])
        .args(["--start-other", rp.login_url(&[("tenant", OTHER)]).as_str()])
        .args(["--start-required", rp.login_url(&[("tenant", REQUIRED)]).as_str()])
        .args(["--email-required", EMAIL_REQUIRED])
        .args(["--done", rp.redirect_uri().as_str()])
        .args(["--email", EMAIL])
        .args(["--password", PASSWORD])
        .args(["--logout", app.url("/logout").as_str()])
        .args(["--passkeys", app.url(&format!("/mfa/{TENANT}/passkeys")).as_str()])
        .args(["--screenshots", shots.to_str().unwrap()])
        .args(["--chromium", &chromium_bin()])
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run node for the browser script");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();

    let mut sub = None::<String>;
    let report: Option<Value> = tokio::time::timeout(Duration::from_secs(300), async {
        let mut last = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                println!("{line}");
                continue;
            };
            if v["need"] == "code" {
                let mail = smtp.wait_for(v["email"].as_str().unwrap_or(EMAIL)).await;
                stdin.write_all(format!("{}\n", mail.code()).as_bytes()).await.unwrap();
                stdin.flush().await.unwrap();
            } else if v["need"] == "disable" || v["need"] == "enable" {
                let what = v["need"].as_str().unwrap();
                let (status, body) = app
                    .admin(
                        reqwest::Method::POST,
                        &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users/{EMAIL}/{what}"),
                        None,
                    )
                    .await;
                assert!(status.is_success(), "{what}: {status} {body}");
                stdin.write_all(b"done\n").await.unwrap();
                stdin.flush().await.unwrap();
            } else if v["need"] == "reset" {
                // The admin's MFA reset removes the user's passkeys.
                let (status, users) = app
                    .admin(reqwest::Method::GET, &format!("/admin/v1/tenants/{TENANT}/users"), None)
                    .await;
                assert_eq!(status, reqwest::StatusCode::OK, "{users}");
                let s = users["users"][0]["sub"].as_str().expect("the user").to_owned();
                sub = Some(s.clone());
                // The admin sees the passkey (no key material) ...
                let (status, list) = app
                    .admin(
                        reqwest::Method::GET,
                        &format!("/admin/v1/tenants/{TENANT}/users/{s}/passkeys"),
                        None,
                    )
                    .await;
                assert_eq!(status, reqwest::StatusCode::OK, "{list}");
                assert_eq!(list["passkeys"][0]["name"], "Laptop", "{list}");
                assert_eq!(list["passkeys"][0]["connection"], CONN, "{list}");
                assert!(list["passkeys"][0]["last_used_at"].is_string(), "{list}");
                assert!(!list.to_string().contains("cred"), "{list}");
                let (status, body) = app
                    .admin(
                        reqwest::Method::DELETE,
                        &format!("/admin/v1/tenants/{TENANT}/users/{s}/passkeys/nope"),
                        None,
                    )
                    .await;
                assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{body}");
                let (status, body) = app
                    .admin(
                        reqwest::Method::DELETE,
                        &format!("/admin/v1/tenants/{TENANT}/users/{s}/mfa"),
                        None,
                    )
                    .await;
                assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{body}");
                // ... and after the reset, none.
                let (_, list) = app
                    .admin(
                        reqwest::Method::GET,
                        &format!("/admin/v1/tenants/{TENANT}/users/{s}/passkeys"),
                        None,
                    )
                    .await;
                assert_eq!(list["passkeys"], json!([]), "{list}");
                stdin.write_all(b"done\n").await.unwrap();
                stdin.flush().await.unwrap();
            } else if v.get("need").is_none() && v.get("ok").is_none() {
                println!("{line}");
            } else {
                last = Some(v);
            }
        }
        last
    })
    .await
    .expect("the browser run took too long");
    let _ = child.wait().await;
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
        .await
        .ok();
    let report = report.unwrap_or_else(|| panic!("no report from the browser script; its stderr:\n{err}"));
    for s in report["steps"].as_array().into_iter().flatten() {
        println!(
            "screenshot {}: {}",
            s["name"].as_str().unwrap_or(""),
            s["screenshot"].as_str().unwrap_or("")
        );
    }
    assert_eq!(report["ok"], Value::Bool(true), "{report:#}\n{err}");

    // Every page of ours is accessible; every screenshot exists.
    for s in report["steps"].as_array().unwrap() {
        assert_eq!(s["violations"], json!([]), "{}: {:#}", s["name"], s["violations"]);
        assert!(std::path::Path::new(s["screenshot"].as_str().unwrap()).is_file());
    }

    // The passkey was registered under its name, as a discoverable credential for `localhost`.
    assert_eq!(report["registered"], json!(["Laptop"]), "{report:#}");
    assert_eq!(report["credentials"][0]["isResidentCredential"], true, "{report:#}");
    assert_eq!(report["credentials"][0]["rpId"], "localhost");

    // First sign-in: the password only (MFA optional, nothing enrolled yet).
    let first = amr(&report["first"]["id_token_claims"]);
    assert_eq!(first, vec!["pwd".to_owned()], "{report:#}");
    // Second: the password and the passkey (RFC 8176 `hwk`; the
    // authenticator verified the person: `user`; together `mfa`).
    let second = amr(&report["second"]["id_token_claims"]);
    for m in ["pwd", "hwk", "user", "mfa"] {
        assert!(second.contains(&m.to_owned()), "second: {second:?}");
    }
    // Third: the passkey alone, no password.
    let third = amr(&report["third"]["id_token_claims"]);
    assert!(!third.contains(&"pwd".to_owned()), "third: {third:?}");
    for m in ["hwk", "user", "mfa"] {
        assert!(third.contains(&m.to_owned()), "third: {third:?}");
    }
    for which in ["first", "second", "third"] {
        let claims = &report[which]["id_token_claims"];
        assert_eq!(claims["email"], EMAIL, "{which}");
        assert_eq!(claims["tenant"], TENANT, "{which}");
        assert_eq!(claims["connection"], CONN, "{which}");
        assert_eq!(claims["sub"].as_str(), sub.as_deref(), "{which}");
    }

    // Where MFA is required, a passkey registered at the enrolment of the
    // first sign-in is then used as its second factor.
    let fourth = &report["fourth"]["id_token_claims"];
    assert_eq!(fourth["tenant"], REQUIRED, "{report:#}");
    assert_eq!(fourth["email"], EMAIL_REQUIRED);
    let fourth = amr(fourth);
    for m in ["pwd", "hwk", "user", "mfa"] {
        assert!(fourth.contains(&m.to_owned()), "fourth: {fourth:?}");
    }

    // Every refusal by its reason code.
    let refusals = &report["refusals"];
    // The session that registered the first passkey used no second factor:
    // it then changes none (passkeys, TOTP); the next, which used the
    // passkey, manages them.
    assert_eq!(
        refusals["manage_without_factor"], "mfa.session_without_second_factor",
        "{report:#}"
    );
    assert_eq!(
        refusals["enrol_without_factor"], "mfa.session_without_second_factor",
        "{report:#}"
    );
    assert_eq!(report["managed"], json!(["Laptop"]), "{report:#}");
    assert_eq!(refusals["replay"], "passkey.unknown_challenge", "{report:#}");
    assert_eq!(refusals["disabled"], "passkey.account_unusable", "{report:#}");
    assert_eq!(refusals["origin"], "passkey.wrong_origin", "{report:#}");
    assert_eq!(refusals["throttled"], "passkey.throttled", "{report:#}");
    assert_eq!(refusals["other_tenant"], "passkey.unknown_credential", "{report:#}");
    assert_eq!(refusals["removed"], "passkey.unknown_credential", "{report:#}");

    // Registration and the admin reset are audited; refusals are counted
    // as failed sign-ins with their reasons.
    let (status, audit) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{TENANT}/audit?limit=200"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let events = audit["events"].as_array().unwrap();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    for r in ["passkey.registered", "passkey.wrong_origin", "passkey.throttled"] {
        assert!(reasons.contains(&r), "{r}: {reasons:?}");
    }
    assert!(events.iter().any(|e| e["action"] == "user.mfa_reset"), "{audit:#}");

    // The initech user's passkey and its user-handle index are in the backup.
    let mut settings = portcullis::config::Settings::default();
    settings.dev.enabled = true;
    settings.dev.force = true;
    settings.store.backend = Some("redis".into());
    settings.store.redis_url = Some(portcullis::secret::Secret::new(redis::url()));
    settings.store.key_prefix = prefix.clone();
    let clock: portcullis::clock::SharedClock = Arc::new(portcullis::clock::SystemClock);
    let raw = portcullis::app::open_store(&settings, clock.clone()).await.unwrap();
    let backup = portcullis::backup::export(&raw, portcullis::clock::Clock::now(clock.as_ref()))
        .await
        .unwrap();
    let doc = serde_json::to_value(&backup).unwrap();
    let names: Vec<&str> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tag"] == format!("t:{REQUIRED}:mfa"))
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("passkeys:")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("passkey-user:")), "{names:?}");
}

/// The value of the hidden field `name` in a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

async fn local_only(app: &TestApp) {
    app.create_tenant(TENANT, "Acme Corp", &["acme.example"]).await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections"),
            Some(json!({"id": CONN, "kind": "local"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn passkey_pages_refuse_when_off_without_a_session_a_csrf_token_a_ceremony_or_a_credential_and_under_a_challenge_hook(
) {
    let browser = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    // Passkeys off (the default): no link, and the page does not exist.
    let off = spawn_app(AppOptions::default()).await;
    local_only(&off).await;
    let page = browser()
        .get(off.url(&format!("/local/{TENANT}/{CONN}/sign-in?login=abc")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Create account") && !page.contains("passkey"), "{page}");
    let r = browser()
        .get(off.url(&format!("/local/{TENANT}/{CONN}/passkey?login=abc")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("passkey.disabled"));

    // On, at http://localhost.
    let app = spawn_app(AppOptions {
        public_host: Some("localhost".into()),
        configure: Some(Arc::new(|s| s.passkeys.enabled = true)),
        ..AppOptions::default()
    })
    .await;
    local_only(&app).await;
    let b = browser();
    let page = b
        .get(app.url(&format!("/local/{TENANT}/{CONN}/sign-in?login=abc")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign in with a passkey"), "{page}");
    // The passkeys page needs a signed-in user.
    let r = b.get(app.url(&format!("/mfa/{TENANT}/passkeys"))).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("passkey.not_signed_in"));
    // Every form needs its CSRF token.
    let r = b
        .post(app.url(&format!("/mfa/{TENANT}/passkeys")))
        .form(&[("action", "remove"), ("id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("passkey.csrf_missing"));
    // The passwordless page: its script only, by URL; a ceremony per view.
    let r = b
        .get(app.url(&format!("/local/{TENANT}/{CONN}/passkey?login=abc")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains(&format!("script-src {}", app.url("/mfa/passkey.js"))),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    let script = b.get(app.url("/mfa/passkey.js")).send().await.unwrap();
    assert_eq!(script.status(), reqwest::StatusCode::OK);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    // An unknown ceremony.
    let r = b
        .post(app.url(&format!("/local/{TENANT}/{CONN}/passkey")))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("login", "abc"),
            ("ceremony", "not-a-ceremony"),
            ("credential", "{}"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let html = r.text().await.unwrap();
    assert!(html.contains("passkey.unknown_challenge"), "{html}");
    // The right ceremony, but no credential (no JavaScript): refused, and
    // the ceremony is spent.
    let ceremony = hidden(&html, "ceremony");
    let r = b
        .post(app.url(&format!("/local/{TENANT}/{CONN}/passkey")))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("login", "abc"),
            ("ceremony", ceremony.as_str()),
            ("credential", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let html = r.text().await.unwrap();
    assert!(html.contains("passkey.missing_credential"), "{html}");
    // Another browser cannot answer this browser's ceremony.
    let ceremony = hidden(&html, "ceremony");
    let other = browser();
    let theirs = other
        .get(app.url(&format!("/local/{TENANT}/{CONN}/passkey?login=abc")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = other
        .post(app.url(&format!("/local/{TENANT}/{CONN}/passkey")))
        .form(&[
            ("csrf", hidden(&theirs, "csrf").as_str()),
            ("login", "abc"),
            ("ceremony", ceremony.as_str()),
            ("credential", "{}"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("passkey.browser_mismatch"));
    // A ceremony of another sign-in (login) is refused.
    let theirs = other
        .get(app.url(&format!("/local/{TENANT}/{CONN}/passkey?login=abc")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ceremony = hidden(&theirs, "ceremony");
    let r = other
        .post(app.url(&format!("/local/{TENANT}/{CONN}/passkey")))
        .form(&[
            ("csrf", hidden(&theirs, "csrf").as_str()),
            ("login", "another"),
            ("ceremony", ceremony.as_str()),
            ("credential", "{}"),
        ])
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("passkey.ceremony_mismatch"), "{body}");

    // A tenant whose sign-in asks a custom challenge: no passkey shortcut.
    let (status, body) = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/tenants/{TENANT}/hooks/custom_challenge"),
            Some(json!({"url": "http://127.0.0.1:9/challenge", "timeout_ms": 500})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let r = b
        .get(app.url(&format!("/local/{TENANT}/{CONN}/passkey?login=abc")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("passkey.challenge_hook"));
}

/// A dev-mode gateway at `http://localhost:PORT` with passkeys, on `clock`.
async fn dev_gateway(clock: &portcullis::clock::ManualClock) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        public_host: Some("localhost".into()),
        configure: Some(Arc::new(|s| s.passkeys.enabled = true)),
        ..AppOptions::default()
    })
    .await
}

/// The passkey step of the waiting sign-in whose MFA page is at `mfa_page`.
fn passkey_step(app: &TestApp, mfa_page: &url::Url) -> url::Url {
    let handle = mfa_page
        .query_pairs()
        .find(|(k, _)| k == "handle")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no handle in {mfa_page}"));
    let mut url = app.url("/mfa/demo/dev/passkey");
    url.query_pairs_mut().append_pair("handle", &handle);
    url
}

/// Answers the registration form of a passkey page with a software passkey.
async fn register_soft_passkey(
    app: &TestApp,
    browser: &mut crate::support::browser::Browser,
    page: &crate::support::browser::Page,
    name: &str,
) -> crate::support::browser::Page {
    crate::support::soft_passkey::register_on_page(browser, page, &app.base, name).await
}

pub(crate) async fn passkey_names(app: &TestApp, sub: &str) -> Vec<String> {
    passkey_names_in(app, "demo", sub).await
}

/// The names of `sub`'s passkeys in `tenant`, as the admin API lists them.
async fn passkey_names_in(app: &TestApp, tenant: &str, sub: &str) -> Vec<String> {
    let (status, list) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant}/users/{sub}/passkeys"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{list}");
    list["passkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The passkey variant of a sign-in parked at the enrolment: the attacker,
/// with the password alone, opened the passkey registration of a sign-in
/// waiting at the enrolment; the owner then enrolled TOTP in another
/// browser. The attacker's passkey is refused (`mfa.enrolment_changed`,
/// 409), none is stored, the sign-in asks for the owner's factor, and no
/// session opens. A first passkey at the enrolment (nothing enrolled) is
/// registered as before.
#[tokio::test]
async fn a_sign_in_parked_at_the_enrolment_registers_no_passkey_once_the_owner_enrolled_totp() {
    use crate::mfa::{assert_reason, dev_sign_in, enrol, set_local_mfa, sub_of};
    use crate::support::browser::Browser;
    let clock = crate::mfa::clock();
    let app = dev_gateway(&clock).await;
    set_local_mfa(&app, "required").await;
    let email = "parked-passkey@demo.example";

    let mut attacker = Browser::new();
    let parked = dev_sign_in(&app, &mut attacker, email).await;
    assert!(parked.url.path().starts_with("/mfa/demo/dev"), "{}", attacker.trail());
    let register = attacker.get(&passkey_step(&app, &parked.url)).await;
    assert_eq!(register.status, reqwest::StatusCode::OK, "{}", register.body);

    let mut owner = Browser::new();
    enrol(&app, &mut owner, &clock, email).await;

    let refused = register_soft_passkey(&app, &mut attacker, &register, "Attacker").await;
    assert_reason(&refused, 409, "mfa.enrolment_changed");
    assert!(refused.body.contains("Two-step verification"), "{}", refused.body);
    let sub = sub_of(&app, email).await;
    assert_eq!(passkey_names(&app, &sub).await, Vec::<String>::new());
    // Opened again, the passkey step registers nothing: it asks for a
    // passkey the account does not have.
    let again = attacker.get(&passkey_step(&app, &parked.url)).await;
    assert!(!again.body.contains("data-passkey=\"create\""), "{}", again.body);
    assert_reason(
        &attacker.get(&app.url("/mfa/demo/enroll")).await,
        401,
        "mfa.not_signed_in",
    );

    // Nothing enrolled yet: the passkey is the account's first factor.
    let mut newcomer = Browser::new();
    let page = dev_sign_in(&app, &mut newcomer, "newcomer@demo.example").await;
    let register = newcomer.get(&passkey_step(&app, &page.url)).await;
    let registered = register_soft_passkey(&app, &mut newcomer, &register, "Laptop").await;
    assert_eq!(registered.status, reqwest::StatusCode::OK, "{}", registered.body);
    assert!(registered.body.contains("data-passkey=\"get\""), "{}", registered.body);
    let sub = sub_of(&app, "newcomer@demo.example").await;
    assert_eq!(passkey_names(&app, &sub).await, ["Laptop"]);
}

/// The other way round: the owner registers a passkey at the enrolment of
/// their own sign-in while the attacker's sign-in waits at its TOTP
/// enrolment. The attacker's first TOTP code is refused
/// (`mfa.enrolment_changed`, 409): no TOTP enrolment is added beside the
/// owner's passkey, and no session opens.
#[tokio::test]
async fn a_sign_in_parked_at_the_enrolment_confirms_no_totp_once_the_owner_registered_a_passkey() {
    use crate::mfa::{assert_reason, code, dev_sign_in, set_local_mfa, shown_secret, sub_of};
    use crate::support::browser::Browser;
    let clock = crate::mfa::clock();
    let app = dev_gateway(&clock).await;
    set_local_mfa(&app, "required").await;
    let email = "parked-totp@demo.example";

    let mut attacker = Browser::new();
    let parked = dev_sign_in(&app, &mut attacker, email).await;
    let attackers_secret = shown_secret(&parked);

    // The owner goes straight to the passkey step of their sign-in's
    // enrolment (the attacker's pending TOTP enrolment stays as it is).
    let mut owner = Browser::new();
    let login = owner.get(&app.url("/demo/login")).await;
    let mut form = login.form(None);
    form.set("email", email);
    let at_mfa = owner
        .submit_until(&login, &form, &|u: &url::Url| u.path().starts_with("/mfa/"))
        .await
        .stopped();
    let register = owner.get(&passkey_step(&app, &at_mfa)).await;
    assert_eq!(register.status, reqwest::StatusCode::OK, "{}", register.body);
    let registered = register_soft_passkey(&app, &mut owner, &register, "Owner's key").await;
    assert_eq!(registered.status, reqwest::StatusCode::OK, "{}", registered.body);
    let sub = sub_of(&app, email).await;
    assert_eq!(passkey_names(&app, &sub).await, ["Owner's key"]);

    let refused = attacker
        .fill_and_submit(&parked, None, &[("code", &code(&attackers_secret, &clock, 0))])
        .await;
    assert_reason(&refused, 409, "mfa.enrolment_changed");
    assert!(refused.body.contains("Use a passkey"), "{}", refused.body);
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse("demo").unwrap(), &sub);
    assert!(
        !app.state.store.exists(&key).await.unwrap(),
        "a TOTP enrolment was added"
    );
    assert_reason(
        &attacker.get(&app.url("/mfa/demo/enroll")).await,
        401,
        "mfa.not_signed_in",
    );
}

/// A gateway at `http://localhost:PORT` on `clock` with passkeys: tenant
/// `acme` with the local connection `pw`, a public app, `local_mfa` set to
/// `local_mfa`, and the confirmed account `email` (password `PASSWORD`).
async fn local_gateway(
    clock: &portcullis::clock::ManualClock,
    local_mfa: &str,
    email: &str,
) -> (TestApp, crate::support::local::World) {
    let app = spawn_app(AppOptions {
        clock: Some(clock.clone()),
        public_host: Some("localhost".into()),
        configure: Some(Arc::new(|s| {
            s.passkeys.enabled = true;
            s.local.argon2_memory_kib = 8192;
            s.local.argon2_iterations = 1;
        })),
        ..AppOptions::default()
    })
    .await;
    let world = crate::support::local::World {
        tenant: TENANT,
        connection: CONN,
        client: "local-app",
        scope: "openid email",
    }
    .create(&app, "Acme Corp", "acme.example")
    .await;
    let (status, body) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/v1/tenants/{TENANT}"),
            Some(json!({"settings": {"local_mfa": local_mfa}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    world.account(&app, email, PASSWORD).await;
    (app, world)
}

/// A local sign-in of `email` with `PASSWORD` in `browser`, from the app:
/// the page it lands on (the MFA page when a second factor applies).
async fn local_sign_in(
    app: &TestApp,
    world: crate::support::local::World,
    browser: &mut crate::support::browser::Browser,
    email: &str,
) -> crate::support::browser::Page {
    let page = world.start(app, browser, &crate::support::local::pkce()).await;
    browser
        .fill_and_submit(&page, None, &[("email", email), ("password", PASSWORD)])
        .await
}

/// The `sub` of `email` in tenant `acme`.
async fn acme_sub(app: &TestApp, email: &str) -> String {
    let (status, users) = app
        .admin(reqwest::Method::GET, &format!("/admin/v1/tenants/{TENANT}/users"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{users}");
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .unwrap_or_else(|| panic!("no user {email}: {users}"))["sub"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The account's passkeys in tenant `acme`, by name.
async fn acme_passkeys(app: &TestApp, sub: &str) -> Vec<String> {
    passkey_names_in(app, TENANT, sub).await
}

/// A sign-in begun with a password the owner (or an admin) has reset since
/// adds no factor. The attacker, with a phished password, parks two
/// sign-ins at the enrolment (`local_mfa` required, nothing enrolled): one
/// at the passkey registration, one at the TOTP enrolment. The admin then
/// force-resets the account and resets its MFA. Registering the passkey,
/// or typing the first TOTP code, with the parked handles is refused
/// (`mfa.credentials_reset`, 401): no passkey or TOTP enrolment is stored,
/// no session opens, and the handle is spent.
#[tokio::test]
async fn a_sign_in_parked_at_the_enrolment_adds_no_factor_after_a_reset() {
    use crate::mfa::{assert_reason, code, shown_secret};
    use crate::support::browser::Browser;
    let clock = crate::mfa::clock();
    let (app, world) = local_gateway(&clock, "required", EMAIL).await;

    let mut with_passkey = Browser::new();
    let parked = local_sign_in(&app, world, &mut with_passkey, EMAIL).await;
    assert_eq!(parked.url.path(), "/mfa/acme/pw", "{}", with_passkey.trail());
    let mut step = parked.url.clone();
    step.set_path("/mfa/acme/pw/passkey");
    let register = with_passkey.get(&step).await;
    assert_eq!(register.status, reqwest::StatusCode::OK, "{}", register.body);
    assert!(register.body.contains("data-passkey=\"create\""), "{}", register.body);

    let mut with_totp = Browser::new();
    let parked_totp = local_sign_in(&app, world, &mut with_totp, EMAIL).await;
    assert_eq!(parked_totp.url.path(), "/mfa/acme/pw", "{}", with_totp.trail());
    let secret = shown_secret(&parked_totp);

    // The owner tells the admin: force-reset and MFA reset.
    clock.advance(chrono::Duration::seconds(1));
    let sub = acme_sub(&app, EMAIL).await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users/ada%40acme.example/force-reset"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let (status, body) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{TENANT}/users/{sub}/mfa"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");

    let refused = register_soft_passkey(&app, &mut with_passkey, &register, "Attacker").await;
    assert_reason(&refused, 401, "mfa.credentials_reset");
    assert_eq!(acme_passkeys(&app, &sub).await, Vec::<String>::new());
    assert_reason(&with_passkey.get(&parked.url).await, 400, "mfa.unknown_handle");

    let refused = with_totp
        .fill_and_submit(&parked_totp, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_reason(&refused, 401, "mfa.credentials_reset");
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse(TENANT).unwrap(), &sub);
    assert!(
        !app.state.store.exists(&key).await.unwrap(),
        "a TOTP enrolment was added"
    );
    for browser in [&mut with_passkey, &mut with_totp] {
        assert_reason(
            &browser.get(&app.url("/mfa/acme/passkeys")).await,
            401,
            "passkey.not_signed_in",
        );
    }
}

/// The same with the account's own password change, the clock not moved:
/// the sign-in's password is no longer the account's, and the sign-in
/// parked at the passkey registration adds nothing
/// (`mfa.credentials_reset`).
#[tokio::test]
async fn a_sign_in_parked_at_the_enrolment_adds_no_passkey_after_a_password_change() {
    use crate::mfa::assert_reason;
    use crate::support::browser::Browser;
    let clock = crate::mfa::clock();
    let (app, world) = local_gateway(&clock, "required", EMAIL).await;
    let mut attacker = Browser::new();
    let parked = local_sign_in(&app, world, &mut attacker, EMAIL).await;
    let mut step = parked.url.clone();
    step.set_path("/mfa/acme/pw/passkey");
    let register = attacker.get(&step).await;
    assert_eq!(register.status, reqwest::StatusCode::OK, "{}", register.body);
    let sub = acme_sub(&app, EMAIL).await;

    // The password changes (the account's own change, without the
    // revocation that follows it: the account itself tells), in the same
    // second.
    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    let c = portcullis::ids::ConnectionId::parse(CONN).unwrap();
    let account = app
        .state
        .accounts
        .get(&t, &c, EMAIL)
        .await
        .unwrap()
        .expect("the account");
    app.state
        .accounts
        .set_changed_password(&t, &c, &account, &portcullis::secret::Secret::new("Quince-Harbour-58"))
        .await
        .unwrap();

    let refused = register_soft_passkey(&app, &mut attacker, &register, "Attacker").await;
    assert_reason(&refused, 401, "mfa.credentials_reset");
    assert_eq!(acme_passkeys(&app, &sub).await, Vec::<String>::new());
}

/// Defence in depth for a session that outlived its user's credentials
/// reset (the reset's end of sessions failed half-way): it changes no
/// factor (`mfa.credentials_reset`). Signed in (`local_mfa` optional,
/// nothing enrolled: no second factor asked), the passkeys page opens;
/// once the user's "not before" stamp is later than the session's
/// sign-in, it does not, nor does the TOTP enrolment.
#[tokio::test]
async fn a_session_opened_before_a_reset_changes_no_factor() {
    use crate::mfa::assert_reason;
    use crate::support::browser::Browser;
    let clock = crate::mfa::clock();
    let (app, world) = local_gateway(&clock, "optional", EMAIL).await;
    let mut browser = Browser::new();
    let p = crate::support::local::pkce();
    let page = world.start(&app, &mut browser, &p).await;
    let mut form = page.form(None);
    form.set("email", EMAIL);
    form.set("password", PASSWORD);
    browser
        .submit_until(&page, &form, &crate::support::local::at_app)
        .await
        .stopped();
    let passkeys = app.url("/mfa/acme/passkeys");
    let shown = browser.get(&passkeys).await;
    assert_eq!(shown.status, reqwest::StatusCode::OK, "{}", shown.body);

    clock.advance(chrono::Duration::seconds(1));
    let sub = acme_sub(&app, EMAIL).await;
    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    use portcullis::clock::Clock;
    assert!(app
        .state
        .provider
        .directory
        .set_not_before(&t, &sub, clock.unix())
        .await
        .unwrap());
    assert_reason(&browser.get(&passkeys).await, 401, "mfa.credentials_reset");
    assert_reason(
        &browser.get(&app.url("/mfa/acme/enroll")).await,
        401,
        "mfa.credentials_reset",
    );
}

/// Registers a software passkey for `sub` through the store-level service
/// (`mfa_handle`: a sign-in's enrolment, or `None` for a signed-in user).
async fn register_at_store(
    pk: &portcullis::mfa::passkey::Passkeys,
    sub: &str,
    from: portcullis::mfa::AddedFrom,
) -> Result<(), String> {
    use portcullis::mfa::passkey::Purpose;
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse("pw").unwrap();
    let handle = (from == portcullis::mfa::AddedFrom::SignIn).then(|| "sign-in".to_owned());
    let started = pk
        .start_registration(&t, sub, &c, "a@acme.example", handle, "s")
        .await
        .unwrap();
    let Purpose::Register { state, .. } = pk.take(&t, &started.handle, Some("s")).await.unwrap() else {
        panic!("not a registration");
    };
    let credential =
        crate::support::soft_passkey::SoftPasskey::new().register(&started.options, "http://localhost:8080");
    pk.finish_registration(&t, sub, &c, from, &state, &credential, "Key")
        .await
        .map(|_| ())
        .map_err(|e| e.reason().to_owned())
}

/// Defence in depth below the broker's look: the store-level services
/// refuse a sign-in's enrolment beside any factor the account has
/// (`Mfa::confirm` beside a passkey, `Passkeys::finish_registration` beside
/// a TOTP enrolment or a passkey: `mfa.enrolment_changed`), and still add
/// more from a signed-in user's page.
#[tokio::test]
async fn the_stores_refuse_a_sign_ins_enrolment_beside_a_factor_and_add_more_from_a_session() {
    use portcullis::mfa::passkey::{read, Passkeys};
    use portcullis::mfa::{AddedFrom, Mfa};
    let clock = crate::mfa::clock();
    let shared: portcullis::clock::SharedClock = Arc::new(clock.clone());
    let store: portcullis::store::SharedStore = Arc::new(portcullis::store::memory::MemoryStore::new(shared.clone()));
    let url = url::Url::parse("http://localhost:8080").unwrap();
    let pk = Passkeys::new(store.clone(), shared.clone(), &url, "Portcullis").unwrap();
    let mfa = Mfa::new(store.clone(), shared);
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let count = |sub: &'static str| {
        let (store, t) = (store.clone(), t.clone());
        async move { read(&store, &t, sub).await.unwrap().map_or(0, |u| u.passkeys.len()) }
    };

    // TOTP first (a sign-in's, the first factor): then a sign-in's passkey
    // is refused, a signed-in user's is added.
    let pending = mfa.start_enrolment(&t, "u1", "h1").await.unwrap();
    mfa.confirm(
        &t,
        "u1",
        "h1",
        AddedFrom::SignIn,
        &crate::mfa::code(&pending.secret, &clock, 0),
    )
    .await
    .unwrap();
    assert_eq!(
        register_at_store(&pk, "u1", AddedFrom::SignIn).await.unwrap_err(),
        "mfa.enrolment_changed"
    );
    assert_eq!(count("u1").await, 0);
    register_at_store(&pk, "u1", AddedFrom::Session).await.unwrap();
    assert_eq!(count("u1").await, 1);

    // A passkey first (a sign-in's, the first factor): then a sign-in's
    // TOTP enrolment and a second sign-in's passkey are refused; from a
    // signed-in user's page both are added.
    register_at_store(&pk, "u2", AddedFrom::SignIn).await.unwrap();
    let pending = mfa.start_enrolment(&t, "u2", "h2").await.unwrap();
    let first = crate::mfa::code(&pending.secret, &clock, 0);
    assert_eq!(
        mfa.confirm(&t, "u2", "h2", AddedFrom::SignIn, &first)
            .await
            .unwrap_err()
            .reason(),
        "mfa.enrolment_changed"
    );
    assert!(!mfa.enrolled(&t, "u2").await.unwrap());
    assert_eq!(
        register_at_store(&pk, "u2", AddedFrom::SignIn).await.unwrap_err(),
        "mfa.enrolment_changed"
    );
    assert_eq!(count("u2").await, 1);
    mfa.confirm(&t, "u2", "h2", AddedFrom::Session, &first).await.unwrap();
    assert!(mfa.enrolled(&t, "u2").await.unwrap());
    register_at_store(&pk, "u2", AddedFrom::Session).await.unwrap();
    assert_eq!(count("u2").await, 2);
}
