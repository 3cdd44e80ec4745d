//! `deploy/monitoring/`: the alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and the Grafana dashboard and
//! the rules query only metrics the gateway exports (`portcullis::meter::NAMES`,
//! which `metrics::metrics_count_exactly_what_a_scripted_run_did` finds in a
//! real scrape).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// Runs promtool in `deploy/monitoring`; a missing promtool fails the test
/// with how to install it.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package \
                 (scripts/setup-system test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `portcullis_*` metric name in `text`, with the histogram suffixes
/// (`_bucket`, `_count`, `_sum`) taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("portcullis_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "portcullis-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "portcullis-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alert_rules_cover_the_issue_and_query_only_exported_metrics() {
    let rules = std::fs::read_to_string(monitoring().join("portcullis-alerts.yml")).unwrap();
    let names = metric_names(&rules);
    for n in &names {
        assert!(
            portcullis::meter::NAMES.contains(&n.as_str()),
            "the rules query {n}, which is not exported"
        );
    }
    for needed in [
        "portcullis_sign_ins_total",
        "portcullis_throttled_total",
        "portcullis_certificate_expiry_seconds",
        "portcullis_redis_errors_total",
        "portcullis_refresh_reuse_total",
    ] {
        assert!(names.contains(needed), "no alert on {needed}");
    }
}

#[test]
fn the_dashboard_parses_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels {
        assert!(p["title"].is_string(), "{p}");
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    exprs.push(dash["templating"]["list"][0]["definition"].as_str().unwrap().to_owned());
    let names = metric_names(&exprs.join("\n"));
    for n in &names {
        assert!(
            portcullis::meter::NAMES.contains(&n.as_str()),
            "the dashboard queries {n}, which is not exported"
        );
    }
    for needed in [
        "portcullis_sign_ins_total",
        "portcullis_throttled_total",
        "portcullis_tokens_issued_total",
        "portcullis_refresh_reuse_total",
        "portcullis_http_request_duration_seconds",
        "portcullis_redis_errors_total",
        "portcullis_certificate_expiry_seconds",
    ] {
        assert!(names.contains(needed), "no panel shows {needed}");
    }
    // Latency quantiles by route template.
    assert!(exprs
        .iter()
        .any(|e| e.contains("histogram_quantile(0.99") && e.contains("by (le, route)")));
}
