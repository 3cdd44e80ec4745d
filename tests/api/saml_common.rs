//! Shared helpers of the SAML tests: contexts, connections, fixtures, peers.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use portcullis::clock::ManualClock;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::store::memory::MemoryStore;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::saml::{self, SamlConfig, SamlConnector};
use portcullis::upstream::{
    CallbackParams, Connection, ConnectionKind, Connector, Identity, UpstreamContext, UpstreamError,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saml-vendors")
}

pub fn ctx_at(now: DateTime<Utc>) -> (UpstreamContext, ManualClock) {
    let clock = ManualClock::at(now);
    let shared: portcullis::clock::SharedClock = Arc::new(clock.clone());
    let ctx = UpstreamContext {
        http: OutboundHttp::new(OutboundConfig::default()).unwrap(),
        clock: shared.clone(),
        store: Arc::new(MemoryStore::new(shared)),
        public_url: Url::parse("https://sso.example.test/").unwrap(),
        clock_skew_secs: 60,
        saml_in_place_bytes: 0,
    };
    (ctx, clock)
}

pub fn connection(tenant: &str, id: &str, cfg: SamlConfig) -> Connection {
    Connection {
        id: ConnectionId::parse(id).unwrap(),
        tenant: TenantId::parse(tenant).unwrap(),
        revision: 1,
        status: portcullis::upstream::ConnectionStatus::Active,
        disabled_by_platform: false,
        kind: ConnectionKind::Saml(cfg),
    }
}

pub async fn setup(ctx: &UpstreamContext, tenant: &str, id: &str, body: serde_json::Value) -> SamlConfig {
    saml::setup(
        body,
        ctx,
        &TenantId::parse(tenant).unwrap(),
        &ConnectionId::parse(id).unwrap(),
    )
    .await
    .unwrap()
}

pub fn connector(ctx: &UpstreamContext, tenant: &str, id: &str, cfg: SamlConfig) -> SamlConnector {
    let conn = connection(tenant, id, cfg.clone());
    SamlConnector::new(&conn, cfg, ctx.clone()).unwrap()
}

pub fn form(xml: &[u8]) -> CallbackParams {
    let mut p = CallbackParams::default();
    p.form.insert(
        "SAMLResponse".into(),
        base64::engine::general_purpose::STANDARD.encode(xml),
    );
    p
}

pub fn pending(id: &str) -> serde_json::Value {
    serde_json::json!({ "request_id": id })
}

pub async fn complete_xml(
    c: &SamlConnector,
    pending: Option<&serde_json::Value>,
    xml: &[u8],
) -> Result<Identity, UpstreamError> {
    c.complete(pending, &form(xml)).await
}

/// Reads `name="value"` from a captured document (first occurrence).
pub fn attr_value(doc: &str, name: &str) -> Option<String> {
    let start = doc.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = doc.get(start..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// Continues an IdP-initiated sign-in on its confirmation page, as the
/// person would: `body` is the page the continuation answered and
/// `set_cookies` the cookies it set (the browser session holding the
/// form's CSRF token), sent back with the POST of its `confirm` form.
/// Returns the answer, not followed (a 303 to the app with its code).
pub async fn confirm_unsolicited(client: &reqwest::Client, set_cookies: &[String], body: &str) -> reqwest::Response {
    let form = crate::support::html_form::parse_forms(body)
        .into_iter()
        .find(|f| f.id.as_deref() == Some("confirm"))
        .unwrap_or_else(|| panic!("no confirmation form on the page:\n{body}"));
    assert_eq!(form.field("decision"), Some("continue"), "{form:?}");
    let cookies: Vec<&str> = set_cookies.iter().filter_map(|c| c.split(';').next()).collect();
    assert!(!cookies.is_empty(), "the confirmation page set no session cookie");
    client
        .post(&form.action)
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .form(&form.fields)
        .send()
        .await
        .unwrap()
}

pub fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a peer script under `tests/peers/saml/` with a JSON request on stdin,
/// returning its stdout (JSON).
pub fn peer(script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write as _;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/saml")
        .join(script);
    let mut child = std::process::Command::new(python())
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (set PORTCULLIS_TEST_PYTHON): {e}", python()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
