//! The admin API's OpenAPI 3.1 document: it lists exactly the routes the
//! router serves, it is valid (openapi-spec-validator), and a running
//! gateway keeps to it under property-based testing (schemathesis).

use crate::support::app::{spawn_app, AppOptions, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;

fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails, with how to install them, when the Python modules are missing.
async fn require_python_modules(modules: &[&str]) {
    for m in modules {
        let out = tokio::process::Command::new(python())
            .args(["-c", &format!("import {m}")])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {} (set PORTCULLIS_TEST_PYTHON): {e}", python()));
        assert!(
            out.status.success(),
            "the Python module {m} is missing from {}: install tests/peers/requirements.txt \
             (scripts/test does: python3 -m venv .tmp/venv && .tmp/venv/bin/pip install -r tests/peers/requirements.txt, \
             then PORTCULLIS_TEST_PYTHON=.tmp/venv/bin/python)",
            python()
        );
    }
}

async fn document(app: &TestApp) -> Value {
    // Public: no token.
    let resp = app.client.get(app.url("/admin/v1/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

/// A concrete path for a templated one.
fn concrete(path: &str) -> String {
    path.replace("{identifier}", "https://api.example.test/x")
        .replace("{id}", "acme")
        .replace("{cid}", "okta")
        .replace("{sub}", "someone")
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_the_router_serves() {
    let app = spawn_app(AppOptions::default()).await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("401"),
                "{method} {path} documents the problem+json 401"
            );
        }
    }
    let routes: BTreeSet<(String, String)> = portcullis::admin::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), format!("/admin/v1{p}")))
        .collect();
    assert_eq!(documented, routes, "document vs admin::ROUTES");

    // Without a token every path answers 401 before anything else; with the
    // platform token a listed route is served (its handler answers, never
    // the router's 405 or its "no such admin route") and a method not listed
    // for a path is not (405).
    let all = ["GET", "POST", "PATCH", "PUT", "DELETE"];
    let paths: BTreeSet<&String> = routes.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in all {
            let listed = routes.contains(&(method.to_owned(), path.clone()));
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let anonymous = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .send()
                .await
                .unwrap();
            assert_eq!(
                anonymous.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            let resp = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            if listed {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is listed: {body}"
                );
                assert!(
                    !body.contains("no such admin route"),
                    "{method} {path} is listed: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not listed: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    require_python_modules(&["openapi_spec_validator"]).await;
    let app = spawn_app(AppOptions::default()).await;
    let doc = document(&app).await;
    let dir = tempfile_dir();
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = tokio::process::Command::new(python())
        .args([
            "-c",
            "import json,sys\nfrom openapi_spec_validator import validate\nfrom openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator\nvalidate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\nprint('valid')",
            file.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-openapi-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// schemathesis against a running gateway: no 5xx, every response matches
/// the document (status, content type, body schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    require_python_modules(&["schemathesis"]).await;
    let app = spawn_app(AppOptions::default()).await;
    // Something to read: a tenant and an app.
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let r = url::Url::parse("https://app.example.test/cb").unwrap();
    app.create_client("app-1", "One", &[&r], false).await;
    let url = app.url("/admin/v1/openapi.json");
    let base = app.issuer();
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(python())
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            url.as_str(),
            "--url",
            &base,
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "-H",
            &format!("Authorization: Bearer {}", app.admin_token),
            "--max-examples",
            "12",
            "--seed",
            "7",
            "--phases",
            "examples,coverage,fuzzing",
            // One worker: schemathesis' lazy imports are not thread-safe
            // (a sporadic "AST constructor recursion depth mismatch").
            "--workers",
            "1",
        ])
        // Its cache and crash reports go to a scratch directory, not the checkout.
        .current_dir(tempfile_dir())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("schemathesis took {:?}\n{stdout}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
