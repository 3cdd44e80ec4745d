//! The setup portal in headless Chromium (`tests/peers/browser/portal-e2e.mjs`):
//! a tenant admin opens a setup link, registers the samlify SAML IdP peer by
//! pasting metadata, tests it first with metadata carrying another
//! certificate (the failure is explained), then with the right one, and
//! activates; a user then signs in through home-realm discovery. Each portal
//! page passes axe-core (no serious or critical violations); a screenshot of
//! each step is saved under the test's temp dir.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::support::app::{spawn_app, AppOptions};
use crate::support::peers::{node_bin, peers_dir, RelyingParty, SamlIdp, IDP_PASSWORD};
use crate::support::real_browser::chromium_bin;
use crate::support::redis;

/// The text of the first `<ds:X509Certificate>` (or unprefixed) element.
fn certificate_of(metadata: &str) -> String {
    let start = metadata.find("X509Certificate>").unwrap() + "X509Certificate>".len();
    let end = start + metadata[start..].find('<').unwrap();
    metadata[start..end].to_owned()
}

#[tokio::test]
async fn a_tenant_admin_connects_a_saml_idp_through_the_portal_in_a_real_browser() {
    assert!(
        peers_dir().join("node_modules/axe-core").is_dir(),
        "axe-core is missing in {}: run `npm ci` there (scripts/test does)",
        peers_dir().display()
    );
    let app = spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme Corp", &["acme.test"]).await;
    let rp = RelyingParty::spawn("portal-app", &app.base).await;
    let reg = app
        .create_client("portal-app", "Portal App", &[&rp.redirect_uri()], false)
        .await;
    rp.configure(
        "portal-app",
        reg.client_secret.as_deref().unwrap(),
        "basic",
        "openid email profile",
    )
    .await;

    // The IdP that signs, and another one whose certificate makes the wrong metadata.
    let idp = SamlIdp::spawn().await;
    let other = SamlIdp::spawn().await;
    let right = idp.metadata_xml().await;
    let wrong = right.replace(&certificate_of(&right), &certificate_of(&other.metadata_xml().await));
    assert_ne!(right, wrong);

    let dir = std::env::temp_dir().join(format!("portcullis-portal-e2e-{}", portcullis::tokens::random_token(6)));
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(dir.join("right.xml"), &right).unwrap();
    std::fs::write(dir.join("wrong.xml"), &wrong).unwrap();

    let link = app
        .admin_create(
            "/admin/v1/tenants/acme/setup-links",
            serde_json::json!({ "ttl_secs": 3600, "kind": "saml" }),
        )
        .await;
    let setup_url = link["url"].as_str().unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(240),
        Command::new(node_bin())
            .arg(peers_dir().join("browser/portal-e2e.mjs"))
            .args(["--setup-url", setup_url])
            .args(["--wrong-metadata", dir.join("wrong.xml").to_str().unwrap()])
            .args(["--right-metadata", dir.join("right.xml").to_str().unwrap()])
            .args(["--idp-origin", idp.peer.url.as_str()])
            .args(["--app-login", rp.login_url(&[]).as_str()])
            .args(["--done", rp.redirect_uri().as_str()])
            .args(["--email", "alice@acme.test"])
            .args(["--username", "alice"])
            .args(["--password", IDP_PASSWORD])
            .args(["--screenshots", shots.to_str().unwrap()])
            .args(["--chromium", &chromium_bin()])
            .current_dir(peers_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the portal browser run took too long")
    .expect("cannot run node for the portal browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    for s in report["steps"].as_array().into_iter().flatten() {
        println!(
            "screenshot {}: {}",
            s["name"].as_str().unwrap_or(""),
            s["screenshot"].as_str().unwrap_or("")
        );
    }
    assert_eq!(report["ok"], Value::Bool(true), "{report:#}");

    // The failure names the check and how to fix it.
    let failed = report["failed_test"].as_str().unwrap();
    assert!(failed.contains("The test sign-in failed"), "{failed}");
    assert!(failed.contains("saml.signature_invalid"), "{failed}");
    assert!(failed.contains("How to fix it"), "{failed}");
    let passed = report["passed_test"].as_str().unwrap();
    assert!(passed.contains("The test sign-in succeeded"), "{passed}");
    assert_eq!(report["status_after_activation"], "active");
    // Every portal page is accessible (axe-core: no serious or critical violations).
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.len() >= 9, "{report:#}");
    for s in steps {
        assert_eq!(
            s["violations"],
            serde_json::json!([]),
            "{}: {:#}",
            s["name"],
            s["violations"]
        );
        assert!(std::path::Path::new(s["screenshot"].as_str().unwrap()).is_file());
    }
    // The user signed in through home-realm discovery.
    let claims = &report["app"]["id_token_claims"];
    assert_eq!(claims["tenant"], "acme", "{report:#}");
    assert_eq!(claims["connection"], "generic-saml");
    assert_eq!(claims["email"], "alice@acme.test");
    // The connection's status after the run.
    let conn = app
        .state
        .tenants
        .connection(
            &portcullis::ids::TenantId::parse("acme").unwrap(),
            &portcullis::ids::ConnectionId::parse("generic-saml").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.status, portcullis::upstream::ConnectionStatus::Active);
}
