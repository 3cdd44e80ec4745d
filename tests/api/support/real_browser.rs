//! Runs a sign-in in a real browser: `tests/peers/browser/saml-e2e.mjs`
//! drives Debian's Chromium (playwright-core) from an app's login URL to its
//! callback, through whatever IdP login page is on the way.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use url::Url;

use super::peers::{node_bin, peers_dir};

/// The whole browser run, Chromium start included.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One browser sign-in.
#[derive(Debug, Clone)]
pub struct BrowserFlow {
    /// Where the browser starts (the app's `/login?...`).
    pub start: Url,
    /// The app's callback: the run ends on the first navigation under it.
    pub done: Url,
    /// The IdP whose login form is filled in.
    pub idp_origin: Url,
    /// Username for the IdP form.
    pub username: String,
    /// Password for the IdP form.
    pub password: String,
    /// CSS selectors (username, password, submit); `None`: `name=username`,
    /// `name=password` and the form's submit button.
    pub selectors: Option<(String, String, String)>,
}

/// The Chromium binary: `PORTCULLIS_TEST_CHROMIUM`, else `/usr/bin/chromium`.
/// A missing binary fails the test with how to install it: a real-browser
/// test is never skipped.
pub fn chromium_bin() -> String {
    let bin = std::env::var("PORTCULLIS_TEST_CHROMIUM")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&bin).exists(),
        "Chromium not found at {bin}: install Debian's `chromium` (scripts/setup-system test) \
         or set PORTCULLIS_TEST_CHROMIUM"
    );
    bin
}

/// Runs `flow` in Chromium and returns the script's JSON report
/// (`final_url`, `status`, `body`: the app's JSON, `navigations`). Panics
/// with the report when the run did not reach the app's callback.
pub async fn run_in_browser(flow: &BrowserFlow) -> Value {
    let mut cmd = Command::new(node_bin());
    cmd.arg(peers_dir().join("browser/saml-e2e.mjs"))
        .args(["--start", flow.start.as_str()])
        .args(["--done", flow.done.as_str()])
        .args(["--idp-origin", flow.idp_origin.as_str()])
        .args(["--username", &flow.username])
        .args(["--password", &flow.password])
        .args(["--chromium", &chromium_bin()]);
    if let Some((user, pass, submit)) = &flow.selectors {
        cmd.args(["--username-selector", user])
            .args(["--password-selector", pass])
            .args(["--submit-selector", submit]);
    }
    let out = tokio::time::timeout(
        RUN_TIMEOUT,
        cmd.current_dir(peers_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("browser run exceeded {RUN_TIMEOUT:?}"))
    .expect("cannot run node for the browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report from the browser script\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        out.status.success() && report["ok"] == Value::Bool(true),
        "browser run failed: {report:#}\nstderr:\n{stderr}"
    );
    report
}

/// The navigations of a report as `METHOD url` lines.
pub fn navigations(report: &Value) -> Vec<(String, Url)> {
    report["navigations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| Some((n["method"].as_str()?.to_owned(), Url::parse(n["url"].as_str()?).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}
