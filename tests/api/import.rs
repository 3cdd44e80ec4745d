//! `portcullis import`: a native export and a SAML Jackson-shaped export
//! create working connections (a sign-in through one); a bad export reports
//! every problem with its entry and field and creates nothing.

use portcullis::clock::ManualClock;
use serde_json::{json, Value};
use std::process::Command;
use url::Url;

use crate::metadata_refresh::{metadata, sign_in, Key, APP_CB, APP_ID};
use crate::saml_crafted::now;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;

async fn gateway() -> TestApp {
    spawn_app(AppOptions {
        clock: Some(ManualClock::at(now())),
        ..AppOptions::default()
    })
    .await
}

async fn import(app: &TestApp, doc: &Value) -> Result<portcullis::tenant::import::ImportSummary, Vec<String>> {
    portcullis::tenant::import::import(&app.state.upstream, &app.state.tenants, doc, false)
        .await
        .map_err(|ps| ps.iter().map(ToString::to_string).collect())
}

async fn connection(app: &TestApp, tenant: &str, id: &str) -> Value {
    let (status, answer) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{tenant}/connections/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_native_export_creates_tenants_and_connections_that_sign_in() {
    let app = gateway().await;
    let cb = Url::parse(APP_CB).unwrap();
    app.create_client(APP_ID, "Import app", &[&cb], false).await;
    let key = Key::new();
    let doc = json!({"tenants": [{
        "id": "acme", "name": "Acme", "domains": ["acme.test"],
        "connections": [{
            "id": "corp", "kind": "saml", "metadata_xml": metadata(&[key.cert_b64()]),
            "allow_idp_initiated": true, "default_client_id": APP_ID, "redirect_uri": APP_CB,
        }],
    }]});
    let summary = import(&app, &doc).await.unwrap();
    assert_eq!(summary.tenants, vec!["acme"]);
    assert_eq!(summary.connections, vec!["acme/corp"]);
    let (_, tenant) = app.admin(reqwest::Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(tenant["domains"], json!(["acme.test"]), "{tenant}");
    let conn = connection(&app, "acme", "corp").await;
    sign_in(&app, &conn, &key).await.unwrap();
}

#[tokio::test]
async fn a_jackson_export_creates_working_connections() {
    let app = gateway().await;
    let key = Key::new();
    let doc = json!([
        {
            "tenant": "Acme.com", "product": "crm", "name": "Okta SSO", "description": "d",
            "rawMetadata": metadata(&[key.cert_b64()]),
            "defaultRedirectUrl": "https://crm.example/login", "redirectUrl": ["https://crm.example/*"],
            "clientID": "0123abcd", "clientSecret": "s3cret",
        },
        {
            "tenant": "Acme.com", "product": "crm",
            "oidcProvider": {"discoveryUrl": "https://acme.okta.test/.well-known/openid-configuration",
                             "clientId": "cid", "clientSecret": "csecret"},
            "defaultRedirectUrl": "https://crm.example/login", "redirectUrl": ["https://crm.example/*"],
            "clientID": "4567", "clientSecret": "x",
        },
    ]);
    // The OIDC record's discovery URL is unreachable from the test: it is
    // reported, with its entry, and nothing is created.
    let problems = import(&app, &doc).await.unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("[1]"), "{problems:?}");
    assert!(app.state.tenants.list().await.unwrap().is_empty());

    let summary = import(&app, &json!([doc[0].clone()])).await.unwrap();
    assert_eq!(summary.connections, vec!["acme-com/okta-sso"]);
    let conn = connection(&app, "acme-com", "okta-sso").await;
    assert_eq!(conn["kind"], "saml");
    // A Jackson record names no app of ours to land IdP-initiated sign-ins
    // in (its redirect URLs belong to the app registration): the connection
    // serves SP-initiated sign-ins and publishes its SP metadata.
    let md = app
        .client
        .get(conn["sp_metadata_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(md.status(), 200);
}

#[tokio::test]
async fn a_bad_export_reports_every_problem_at_once_and_creates_nothing() {
    let app = gateway().await;
    app.create_tenant("taken", "Taken", &["taken.test"]).await;
    let key = Key::new();
    let good = json!({"id": "corp", "kind": "saml", "metadata_xml": metadata(&[key.cert_b64()])});
    let doc = json!({"tenants": [
        {"id": "fine", "domains": ["fine.test"], "connections": [good]},
        {"id": "Not Valid!", "connections": []},
        {"id": "taken"},
        {"id": "other", "domains": ["taken.test", "not a domain"],
         "connections": [{"id": "x", "kind": "saml", "metadata_xml": "<garbage"}, {"id": "y", "kind": "ldap"}]},
    ]});
    let problems = import(&app, &doc).await.unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "tenants[1].id:",
        "tenants[2].id: the tenant taken already exists",
        "tenants[3].domains[0]: taken.test already belongs to tenant taken",
        "tenants[3].domains[1]:",
        "tenants[3].connections[0].metadata_xml:",
        "tenants[3].connections[1].kind:",
    ] {
        assert!(all.contains(expected), "{expected:?} missing in:\n{all}");
    }
    assert_eq!(problems.len(), 6, "{all}");
    assert_eq!(
        app.state.tenants.list().await.unwrap(),
        vec!["taken"],
        "something was created"
    );
    let jackson = import(&app, &json!([{"tenant": "...", "rawMetadata": "x"}, {"tenant": "ok"}]))
        .await
        .unwrap_err();
    assert!(jackson[0].starts_with("[0].tenant:"), "{jackson:?}");
    assert!(jackson[1].starts_with("[1].rawMetadata:"), "{jackson:?}");
}

/// Jackson tenants are kept apart by their exact value: records of one
/// value share a tenant, but different values that would become the same
/// tenant id (`acme.com`, `ACME.com`, `acme-com`, `acme com`) are reported,
/// each naming both values, and nothing is created. Merged, a connection
/// made by whoever controls a look-alike source tenant would become an IdP
/// of the victim's tenant.
#[tokio::test]
async fn jackson_tenants_that_would_become_one_tenant_are_reported_not_merged() {
    let app = gateway().await;
    let key = Key::new();
    let record = |tenant: &str, name: &str| json!({"tenant": tenant, "product": "crm", "name": name, "rawMetadata": metadata(&[key.cert_b64()])});
    let doc = json!([
        record("acme.com", "Okta"),
        record("ACME.com", "Evil"),
        record("acme.com", "Entra"),
        record("acme-com", "Evil 2"),
        record("acme com", "Evil 3"),
        record("other.org", "Okta"),
    ]);
    let problems = import(&app, &doc).await.unwrap_err();
    assert_eq!(
        problems,
        [
            r#"[1].tenant: the source tenants "acme.com" and "ACME.com" would both become the tenant acme-com; different source tenants are never merged: rename one of them in the export"#,
            r#"[3].tenant: the source tenants "acme.com" and "acme-com" would both become the tenant acme-com; different source tenants are never merged: rename one of them in the export"#,
            r#"[4].tenant: the source tenants "acme.com" and "acme com" would both become the tenant acme-com; different source tenants are never merged: rename one of them in the export"#,
        ],
    );
    assert!(
        app.state.tenants.list().await.unwrap().is_empty(),
        "something was created"
    );

    // Without the look-alikes, records of exactly one value share a tenant.
    let summary = import(&app, &json!([doc[0].clone(), doc[2].clone(), doc[5].clone()]))
        .await
        .unwrap();
    assert_eq!(summary.tenants, vec!["acme-com", "other-org"]);
    assert_eq!(
        summary.connections,
        vec!["acme-com/okta", "acme-com/entra", "other-org/okta"]
    );
}

/// The command itself: against a real Redis, a bad file exits 1 naming the
/// file and every problem; a good one exits 0 and a gateway on the same
/// store signs in through the imported connection.
#[tokio::test]
async fn the_import_command_reports_problems_or_creates_what_a_gateway_then_serves() {
    let prefix = redis::prefix();
    let dir = std::env::temp_dir().join(format!("portcullis-import-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nredis_url = {:?}\nkey_prefix = {prefix:?}\n[outbound]\nallow_private_networks = true\n",
            redis::url()
        ),
    )
    .unwrap();
    let run = |file: &std::path::Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
            c.env_remove(k);
        }
        c.env("PORTCULLIS_MASTER_KEY", crate::support::app::TEST_MASTER_KEY);
        c.arg("--config").arg(&config).arg("import").arg(file).output().unwrap()
    };
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        json!({"tenants": [{"id": "Bad Id"}, {"id": "b", "domains": ["x"]}]}).to_string(),
    )
    .unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.json: tenants[0].id:"), "{stderr}");
    assert!(stderr.contains("bad.json: tenants[1].domains[0]:"), "{stderr}");

    let key = Key::new();
    let good = dir.join("good.json");
    let doc = json!({"tenants": [{"id": "acme", "name": "Acme", "connections": [{
        "id": "corp", "kind": "saml", "metadata_xml": metadata(&[key.cert_b64()]),
        "allow_idp_initiated": true, "default_client_id": APP_ID, "redirect_uri": APP_CB,
    }]}]});
    std::fs::write(&good, doc.to_string()).unwrap();
    let out = run(&good);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let app = spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix),
        clock: Some(ManualClock::at(now())),
        ..AppOptions::default()
    })
    .await;
    let cb = Url::parse(APP_CB).unwrap();
    app.create_client(APP_ID, "Import app", &[&cb], false).await;
    let conn = connection(&app, "acme", "corp").await;
    sign_in(&app, &conn, &key).await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant in an export claims only domains an organization can own, as
/// through the admin API and tenant files: a free-mail provider's domain or
/// a public suffix would make every address there the tenant's (routing by
/// `login_hint`, and its IdP vouching for `email_verified`). Each is a
/// problem naming its field, and nothing is created.
#[tokio::test]
async fn an_export_claiming_free_mail_or_public_suffix_domains_creates_nothing() {
    let app = gateway().await;
    let doc = json!({"tenants": [
        {"id": "evil", "domains": ["evil.test", "gmail.com", "github.io", "mail.yahoo.com"]},
    ]});
    let problems = import(&app, &doc).await.unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "tenants[0].domains[1]: gmail.com is a free email provider's domain",
        "tenants[0].domains[2]: github.io is a public suffix",
        "tenants[0].domains[3]: mail.yahoo.com is a free email provider's domain",
    ] {
        assert!(all.contains(expected), "{expected:?} missing in:\n{all}");
    }
    assert_eq!(problems.len(), 3, "{all}");
    assert!(
        app.state.tenants.list().await.unwrap().is_empty(),
        "something was created"
    );
    let gmail = app.state.tenants.by_domain("gmail.com").await.unwrap();
    assert!(gmail.is_none(), "gmail.com was reserved");
}

/// An import that finds, at creation, a tenant someone else created since
/// its checks (another admin, a replica's tenant files) undoes only what it
/// created itself: the other tenant, its domains and connections stay.
#[tokio::test]
async fn an_imports_rollback_never_deletes_a_tenant_it_did_not_create() {
    let hold = crate::support::held_store::Hold::default();
    let app = spawn_app(AppOptions {
        clock: Some(ManualClock::at(now())),
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await;
    let key = Key::new();
    let doc = json!({"tenants": [
        {"id": "first", "domains": ["first.test"]},
        {"id": "acme", "domains": ["acme-import.test"]},
    ]});
    // The import checked that acme is free; it creates `first`, then, as
    // it writes acme, acme is created elsewhere.
    let first = hold.arm_creation("tenant");
    let importing = {
        let (upstream, tenants) = (app.state.upstream.clone(), app.state.tenants.clone());
        tokio::spawn(async move { portcullis::tenant::import::import(&upstream, &tenants, &doc, false).await })
    };
    first.arrived.await.unwrap();
    let second = hold.arm_creation("tenant");
    drop(first.release);
    second.arrived.await.unwrap();
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    app.create_saml_connection(
        "acme",
        json!({ "id": "corp", "metadata_xml": metadata(&[key.cert_b64()]) }),
    )
    .await;
    drop(second.release);
    let problems = importing.await.unwrap().unwrap_err();
    assert!(
        problems[0].to_string().contains("creating tenant acme failed"),
        "{problems:?}"
    );
    let (status, acme) = app.admin(reqwest::Method::GET, "/admin/v1/tenants/acme", None).await;
    assert_eq!(status, 200, "the other admin's tenant was deleted: {acme}");
    assert_eq!(acme["domains"], json!(["acme.test"]), "{acme}");
    connection(&app, "acme", "corp").await;
    let (status, _) = app.admin(reqwest::Method::GET, "/admin/v1/tenants/first", None).await;
    assert_eq!(status, 404, "what the import created itself is undone");
}
