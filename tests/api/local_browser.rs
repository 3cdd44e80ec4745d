//! Local accounts with TOTP in headless Chromium (playwright-core driving
//! Debian's chromium, `tests/peers/browser/local-e2e.mjs`), against a real
//! SMTP server (aiosmtpd) and Redis, with a real OIDC app (openid-client):
//! sign-up → confirm with the code e-mailed → sign-in → TOTP enrolment (the
//! code computed in the browser script from the secret the page shows) →
//! sign-out → sign-in with TOTP. Every page passes axe-core (no serious or
//! critical violations); a screenshot of each step is kept under the test's
//! temp dir (printed).

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
const CONN: &str = "pw";
const EMAIL: &str = "grace@acme.example";
const PASSWORD: &str = "Tangerine-Orbit-42";

async fn gateway(smtp: &SmtpServer) -> TestApp {
    let url = smtp.url();
    spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        configure: Some(Arc::new(move |s| {
            s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
            s.mail.from = Some("Acme sign-in <signin@acme.example>".into());
            s.local.argon2_memory_kib = 8192;
            s.local.argon2_iterations = 1;
        })),
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn sign_up_confirm_sign_in_enrol_totp_sign_out_and_sign_in_with_totp_in_chromium() {
    assert!(
        peers_dir().join("node_modules/axe-core").is_dir(),
        "axe-core is missing in {}: run `npm ci` there (scripts/test does)",
        peers_dir().display()
    );
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    app.create_tenant(TENANT, "Acme Corp", &["acme.example"]).await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections"),
            Some(json!({"id": CONN, "kind": "local"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let (status, body) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/v1/tenants/{TENANT}"),
            Some(json!({"settings": {"local_mfa": "required"}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let rp = RelyingParty::spawn("local-app", &app.base).await;
    let reg = app
        .create_client("local-app", "Local App", &[&rp.redirect_uri()], false)
        .await;
    rp.configure(
        "local-app",
        reg.client_secret.as_deref().unwrap(),
        "basic",
        "openid email profile",
    )
    .await;

    let dir = std::env::temp_dir().join(format!("portcullis-local-e2e-{}", portcullis::tokens::random_token(6)));
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    println!("screenshots in {}", shots.display());

    let mut child = Command::new(node_bin())
        .arg(peers_dir().join("browser/local-e2e.mjs"))
        .args(["--start", rp.login_url(&[("tenant", TENANT)]).as_str()])
        .args(["--done", rp.redirect_uri().as_str()])
        .args(["--email", EMAIL])
        .args(["--password", PASSWORD])
        .args(["--logout", app.url("/logout").as_str()])
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

    // Answer the script's questions (the e-mailed code) until its report.
    let report: Value = tokio::time::timeout(Duration::from_secs(240), async {
        let mut last = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                println!("{line}");
                continue;
            };
            if v["need"] == "code" {
                let mail = smtp.wait_for(EMAIL).await;
                let code = mail.code();
                stdin.write_all(format!("{code}\n").as_bytes()).await.unwrap();
                stdin.flush().await.unwrap();
            } else {
                last = Some(v);
            }
        }
        last
    })
    .await
    .expect("the browser run took too long")
    .unwrap_or_else(|| panic!("no report from the browser script"));
    let _ = child.wait().await;
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
        .await
        .ok();

    for s in report["steps"].as_array().into_iter().flatten() {
        println!(
            "screenshot {}: {}",
            s["name"].as_str().unwrap_or(""),
            s["screenshot"].as_str().unwrap_or("")
        );
    }
    assert_eq!(report["ok"], Value::Bool(true), "{report:#}\n{err}");

    // Every page is accessible, and every screenshot exists.
    let steps = report["steps"].as_array().unwrap();
    for s in steps {
        assert_eq!(s["violations"], json!([]), "{}: {:#}", s["name"], s["violations"]);
        assert!(std::path::Path::new(s["screenshot"].as_str().unwrap()).is_file());
    }
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    for expected in [
        "sign-up",
        "confirm",
        "mfa-enrol",
        "mfa-recovery-codes",
        "sign-out",
        "mfa-challenge",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert_eq!(report["recovery_codes"], 10);

    // Both sign-ins reached the app with the second factor in amr.
    for which in ["first", "second"] {
        let claims = &report[which]["id_token_claims"];
        assert_eq!(claims["email"], EMAIL, "{which}: {report:#}");
        assert_eq!(claims["tenant"], TENANT);
        assert_eq!(claims["connection"], CONN);
        let amr: Vec<&str> = claims["amr"]
            .as_array()
            .unwrap_or_else(|| panic!("{which}: no amr: {claims:#}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for m in ["pwd", "otp", "mfa"] {
            assert!(amr.contains(&m), "{which}: amr {amr:?}");
        }
    }
    // The second sign-in was a new authentication (the first session ended).
    assert_ne!(
        report["first"]["id_token_claims"]["sid"], report["second"]["id_token_claims"]["sid"],
        "{report:#}"
    );
}
