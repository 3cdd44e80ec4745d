//! Declarative tenant files kept in sync: an edited file updates its tenant
//! in place (same SP keys, entity id and ACS URL), a removed connection or
//! file removes it, fetched metadata decides whether a connection changed,
//! and a broken file changes nothing.

use portcullis::clock::ManualClock;
use portcullis::tenant::files::sync;
use serde_json::Value;

use crate::metadata_refresh::{metadata, Key};
use crate::saml_crafted::now;
use crate::support::app::{spawn_app, AppOptions, TestApp};

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-files-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn file(name: &str, domains: &[&str], connections: &[(&str, &str)]) -> String {
    let mut s = format!("id = \"acme\"\nname = {name:?}\ndomains = {domains:?}\n");
    for (id, xml) in connections {
        s.push_str(&format!(
            "\n[[connections]]\nid = {id:?}\nkind = \"saml\"\nmetadata_xml = '''{xml}'''\n"
        ));
    }
    s
}

async fn gateway() -> TestApp {
    spawn_app(AppOptions {
        clock: Some(ManualClock::at(now())),
        ..AppOptions::default()
    })
    .await
}

/// One pass over the tenant files in `dir`, with the gateway's purge.
async fn sync_dir(
    app: &TestApp,
    dir: &std::path::Path,
) -> Result<portcullis::tenant::files::SyncReport, Vec<portcullis::config::ConfigProblem>> {
    sync(
        &app.state.tenants,
        &app.state.upstream,
        dir,
        false,
        &app.state.provider.audit,
        app.state.as_ref(),
    )
    .await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, v) = app.admin(reqwest::Method::GET, path, None).await;
    (status.as_u16(), v)
}

async fn revision(app: &TestApp, c: &str) -> u64 {
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse(c).unwrap();
    app.state.tenants.connection(&t, &c).await.unwrap().unwrap().revision
}

#[tokio::test]
async fn an_edited_file_updates_its_tenant_in_place_and_a_removed_file_removes_it() {
    let app = gateway().await;
    let dir = scratch();
    let (k1, k2) = (Key::new(), Key::new());
    let path = dir.join("acme.toml");
    std::fs::write(
        &path,
        file("Acme", &["acme.test"], &[("corp", &metadata(&[k1.cert_b64()]))]),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);
    let report = sync_now().await.unwrap();
    assert_eq!(report.created, vec!["acme"], "{report:?}");
    let (_, before) = get(&app, "/admin/v1/tenants/acme/connections/corp").await;
    let rev = revision(&app, "corp").await;

    // Nothing changed: nothing happens.
    let report = sync_now().await.unwrap();
    assert!(report.updated.is_empty() && report.created.is_empty(), "{report:?}");

    // Only the text changed (whitespace): the built configuration is the
    // same, so the connection is not replaced.
    std::fs::write(
        &path,
        file(
            "Acme",
            &["acme.test"],
            &[("corp", &format!("{}\n", metadata(&[k1.cert_b64()])))],
        ),
    )
    .unwrap();
    let report = sync_now().await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    assert_eq!(
        revision(&app, "corp").await,
        rev,
        "a layout change replaced the connection"
    );

    // Name, domains, a changed connection and a new one.
    std::fs::write(
        &path,
        file(
            "Acme Corp",
            &["acme.test", "acme.example"],
            &[
                ("corp", &metadata(&[k1.cert_b64(), k2.cert_b64()])),
                ("second", &metadata(&[k2.cert_b64()])),
            ],
        ),
    )
    .unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.updated, vec!["acme"], "{report:?}");
    let (_, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(tenant["name"], "Acme Corp", "{tenant}");
    assert_eq!(
        tenant["domains"],
        serde_json::json!(["acme.test", "acme.example"]),
        "{tenant}"
    );
    let (_, after) = get(&app, "/admin/v1/tenants/acme/connections/corp").await;
    assert_eq!(after["sp_entity_id"], before["sp_entity_id"]);
    assert_eq!(after["acs_url"], before["acs_url"]);
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse("corp").unwrap();
    let stored = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(stored["idp_certificates"].as_array().unwrap().len(), 2, "{stored}");
    assert_ne!(revision(&app, "corp").await, rev);
    let (status, _) = get(&app, "/admin/v1/tenants/acme/connections/second").await;
    assert_eq!(status, 200);

    // A broken file changes nothing (and is not read as a removed one).
    std::fs::write(&path, "id = \"acme\"\nname = ").unwrap();
    assert!(sync_now().await.is_err());
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200);

    // A connection dropped from the file is removed.
    std::fs::write(
        &path,
        file(
            "Acme Corp",
            &["acme.test"],
            &[("corp", &metadata(&[k1.cert_b64(), k2.cert_b64()]))],
        ),
    )
    .unwrap();
    sync_now().await.unwrap();
    let (status, _) = get(&app, "/admin/v1/tenants/acme/connections/second").await;
    assert_eq!(status, 404);
    let (_, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(tenant["domains"], serde_json::json!(["acme.test"]), "{tenant}");

    // A tenant created through the API is not the files' to remove.
    app.create_tenant("api-made", "API", &[]).await;
    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.removed, vec!["acme"], "{report:?}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 404);
    let (status, _) = get(&app, "/admin/v1/tenants/api-made").await;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(&dir).ok();
}

/// The events of `path` (an audit log route) by the tenant files.
async fn file_events(app: &TestApp, path: &str) -> Vec<Value> {
    let (status, log) = get(app, path).await;
    assert_eq!(status, 200, "{log}");
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "system:tenant_files")
        .cloned()
        .collect()
}

fn has(events: &[Value], action: &str, target: &str) -> bool {
    events
        .iter()
        .any(|e| e["action"] == action && e["target"]["id"] == target)
}

#[tokio::test]
async fn changes_made_by_tenant_files_are_audited_as_the_system() {
    let app = gateway().await;
    let dir = scratch();
    let (k1, k2) = (Key::new(), Key::new());
    let path = dir.join("acme.toml");
    std::fs::write(
        &path,
        file(
            "Acme",
            &["acme.test"],
            &[
                ("corp", &metadata(&[k1.cert_b64()])),
                ("old", &metadata(&[k2.cert_b64()])),
            ],
        ),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);
    sync_now().await.unwrap();
    let global = file_events(&app, "/admin/v1/audit").await;
    assert!(has(&global, "tenant.created", "acme"), "{global:?}");
    let log = file_events(&app, "/admin/v1/tenants/acme/audit").await;
    assert!(has(&log, "connection.created", "corp"), "{log:?}");
    assert!(has(&log, "connection.created", "old"), "{log:?}");

    // The file is edited: renamed, one connection changed, one dropped.
    std::fs::write(
        &path,
        file(
            "Acme Corp",
            &["acme.test"],
            &[("corp", &metadata(&[k1.cert_b64(), k2.cert_b64()]))],
        ),
    )
    .unwrap();
    sync_now().await.unwrap();
    let log = file_events(&app, "/admin/v1/tenants/acme/audit").await;
    let renamed = log
        .iter()
        .find(|e| e["action"] == "tenant.updated")
        .unwrap_or_else(|| panic!("no tenant.updated: {log:?}"));
    assert_eq!(renamed["before"]["name"], "Acme", "{renamed}");
    assert_eq!(renamed["after"]["name"], "Acme Corp", "{renamed}");
    let updated = log
        .iter()
        .find(|e| e["action"] == "connection.updated" && e["target"]["id"] == "corp")
        .unwrap_or_else(|| panic!("no connection.updated: {log:?}"));
    assert_eq!(updated["tenant"], "acme", "{updated}");
    assert_eq!(updated["before"]["id"], "corp", "{updated}");
    assert_eq!(updated["after"]["kind"], "saml", "{updated}");
    assert!(!updated.to_string().contains("PRIVATE KEY"), "no secret: {updated}");
    let deleted = log
        .iter()
        .find(|e| e["action"] == "connection.deleted" && e["target"]["id"] == "old")
        .unwrap_or_else(|| panic!("no connection.deleted: {log:?}"));
    assert_eq!(deleted["before"]["id"], "old", "{deleted}");
    assert!(deleted["after"].is_null(), "{deleted}");

    // An unchanged file records nothing more.
    let count = log.len();
    sync_now().await.unwrap();
    assert_eq!(file_events(&app, "/admin/v1/tenants/acme/audit").await.len(), count);

    // The file is removed: the tenant's deletion is in the global log.
    std::fs::remove_file(&path).unwrap();
    sync_now().await.unwrap();
    let global = file_events(&app, "/admin/v1/audit").await;
    assert!(has(&global, "tenant.deleted", "acme"), "{global:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A removed tenant file purges everything its tenant left, as the admin
/// API's delete does (one routine for both). It used to purge only the
/// tenant's audit log: its users, exchange rules, API keys and failed
/// sign-ins stayed in the store for a tenant created again under its id.
#[tokio::test]
async fn a_removed_tenant_file_purges_everything_its_tenant_left() {
    let app = gateway().await;
    let dir = scratch();
    let path = dir.join("acme.toml");
    let key = Key::new();
    std::fs::write(
        &path,
        file("Acme", &["acme.test"], &[("corp", &metadata(&[key.cert_b64()]))]),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);
    sync_now().await.unwrap();
    crate::tenants_admin::give_belongings(&app, "acme", "corp").await;

    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.removed, vec!["acme"], "{report:?}");
    assert_eq!(crate::tenants_admin::leftovers(&app, "acme").await, Vec::<&str>::new());
    std::fs::remove_dir_all(&dir).ok();
}

/// The stored incarnation of acme's connection `c`.
async fn incarnation(app: &TestApp, c: &str) -> String {
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse(c).unwrap();
    app.state.tenants.connection_incarnation(&t, &c).await.unwrap().unwrap()
}

/// A file that points a connection at another IdP (another entity id)
/// starts its users afresh (a new connection incarnation, audited
/// `connection.users_renewed`), unless its table says
/// `keep_users_on_issuer_change = true`; a new certificate of the same IdP
/// keeps them.
#[tokio::test]
async fn a_file_re_pointing_a_connection_at_another_idp_renews_its_users_unless_it_keeps_them() {
    let app = gateway().await;
    let dir = scratch();
    let (k1, k2) = (Key::new(), Key::new());
    let path = dir.join("acme.toml");
    let sync_now = || sync_dir(&app, &dir);
    let first = metadata(&[k1.cert_b64()]);
    std::fs::write(&path, file("Acme", &["acme.test"], &[("corp", &first)])).unwrap();
    sync_now().await.unwrap();
    let born = incarnation(&app, "corp").await;

    // The same IdP with another certificate: the same users.
    let rotated = metadata(&[k1.cert_b64(), k2.cert_b64()]);
    std::fs::write(&path, file("Acme", &["acme.test"], &[("corp", &rotated)])).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.updated, vec!["acme"], "{report:?}");
    assert_eq!(incarnation(&app, "corp").await, born);

    // Another IdP: new users.
    let other_entity = "https://other-idp.files.test/entity";
    let other = rotated.replace("https://idp.refresh.test/entity", other_entity);
    assert_ne!(other, rotated);
    std::fs::write(&path, file("Acme", &["acme.test"], &[("corp", &other)])).unwrap();
    let report = sync_now().await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let renewed = incarnation(&app, "corp").await;
    assert_ne!(renewed, born, "a new IdP kept the old one's users");
    let log = file_events(&app, "/admin/v1/tenants/acme/audit").await;
    let events: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "connection.users_renewed")
        .collect();
    assert_eq!(events.len(), 1, "{log:?}");
    assert_eq!(events[0]["before"]["issuer"], "https://idp.refresh.test/entity");
    assert_eq!(events[0]["after"]["issuer"], other_entity);

    // Back, keeping the users: the flag is read, never stored.
    let keep = |value: &str| {
        format!(
            "{}keep_users_on_issuer_change = {value}\n",
            file("Acme", &["acme.test"], &[("corp", &rotated)])
        )
    };
    std::fs::write(&path, keep("\"yes\"")).unwrap();
    let report = sync_now().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("keep_users_on_issuer_change")),
        "{report:?}"
    );
    assert_eq!(
        incarnation(&app, "corp").await,
        renewed,
        "a refused file changed the users"
    );
    std::fs::write(&path, keep("true")).unwrap();
    let report = sync_now().await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(incarnation(&app, "corp").await, renewed, "the users were not kept");
    let (_, stored) = get(&app, "/admin/v1/tenants/acme/connections/corp").await;
    assert_eq!(stored["idp_entity_id"], "https://idp.refresh.test/entity", "{stored}");
    assert!(stored.get("keep_users_on_issuer_change").is_none(), "{stored}");
    std::fs::remove_dir_all(&dir).ok();
}

/// What `give_belongings` gives a tenant, all of which a purge removes.
const BELONGINGS: [&str; 5] = ["users", "exchange_rules", "api_keys", "failed_sign_ins", "audit_log"];

/// Makes `acme` through the admin API with a SAML connection `main` and
/// gives it a user of it and the rest a purge removes.
async fn tenant_made_through_the_api(app: &TestApp, name: &str) {
    app.create_tenant("acme", name, &["acme.test"]).await;
    app.admin_create(
        "/admin/v1/tenants/acme/connections",
        serde_json::json!({"id": "main", "kind": "saml", "metadata_xml": metadata(&[Key::new().cert_b64()])}),
    )
    .await;
    crate::tenants_admin::give_belongings(app, "acme", "main").await;
}

/// A file naming a tenant made through the admin API is refused for it
/// (`tenant_file.not_owned`): nothing of the tenant changes, and removing
/// the file later removes nothing. The file used to update the tenant and
/// mark it as its own, so removing (or renaming) the file deleted the
/// tenant and purged its users, API keys and audit log.
#[tokio::test]
async fn a_file_naming_a_tenant_created_through_the_api_changes_nothing_and_never_deletes_it() {
    let app = gateway().await;
    let dir = scratch();
    tenant_made_through_the_api(&app, "Acme by the API").await;
    let (_, before) = get(&app, "/admin/v1/tenants/acme").await;
    let key = Key::new();
    let path = dir.join("acme.toml");
    std::fs::write(
        &path,
        file(
            "Acme by a file",
            &["acme.example"],
            &[("corp", &metadata(&[key.cert_b64()]))],
        ),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);

    let report = sync_now().await.unwrap();
    assert!(report.created.is_empty() && report.updated.is_empty(), "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("tenant_file.not_owned") && p.contains("adopt = true")),
        "{report:?}"
    );
    let (_, after) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(after, before, "a refused file changed the tenant");
    let (status, _) = get(&app, "/admin/v1/tenants/acme/connections/corp").await;
    assert_eq!(status, 404, "a refused file added a connection");
    assert!(file_events(&app, "/admin/v1/audit").await.is_empty());

    // The file goes (a rename reads the same to the sync): the tenant stays, with all it has.
    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200);
    assert_eq!(crate::tenants_admin::leftovers(&app, "acme").await, BELONGINGS);
    std::fs::remove_dir_all(&dir).ok();
}

/// `adopt = true` (top level, a boolean) hands a tenant made through the
/// admin API to its file: updated by it (audited `tenant.adopted` once),
/// then deleted and purged when the file goes, as a tenant the file made.
#[tokio::test]
async fn a_file_that_adopts_a_tenant_created_through_the_api_takes_it_over() {
    let app = gateway().await;
    let dir = scratch();
    tenant_made_through_the_api(&app, "Acme by the API").await;
    let key = Key::new();
    let path = dir.join("acme.toml");
    let body = file(
        "Acme by a file",
        &["acme.test"],
        &[("corp", &metadata(&[key.cert_b64()]))],
    );
    let sync_now = || sync_dir(&app, &dir);

    // Not a boolean: the file is refused as a whole, like any bad field.
    std::fs::write(&path, format!("adopt = \"yes\"\n{body}")).unwrap();
    let problems = sync_now().await.unwrap_err();
    assert!(problems.iter().any(|p| p.message.contains("adopt")), "{problems:?}");
    let (_, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(tenant["name"], "Acme by the API", "{tenant}");

    std::fs::write(&path, format!("adopt = true\n{body}")).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.updated, vec!["acme"], "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    let (_, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(tenant["name"], "Acme by a file", "{tenant}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme/connections/corp").await;
    assert_eq!(status, 200);
    // Its connection made through the API is not one the file declared: kept.
    let (status, _) = get(&app, "/admin/v1/tenants/acme/connections/main").await;
    assert_eq!(status, 200);
    // Adopted once; the next pass finds it the file's already.
    sync_now().await.unwrap();
    let log = file_events(&app, "/admin/v1/tenants/acme/audit").await;
    let adopted = log.iter().filter(|e| e["action"] == "tenant.adopted").count();
    assert_eq!(adopted, 1, "{log:?}");

    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.removed, vec!["acme"], "{report:?}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 404);
    assert_eq!(crate::tenants_admin::leftovers(&app, "acme").await, Vec::<&str>::new());
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant a file made, deleted another way (the registry's deletion,
/// as an import's rollback runs it; the admin API refuses, see below) and
/// made again through the API, is not the file's: the deletion forgets the
/// file's markers (tenant and connections). The marker used to stay, so the
/// next sync without the file deleted the new tenant and purged what it had.
#[tokio::test]
async fn a_tenant_deleted_and_created_again_through_the_api_is_not_the_files() {
    let app = gateway().await;
    let dir = scratch();
    let key = Key::new();
    let path = dir.join("acme.toml");
    let body = file("Acme", &["acme.test"], &[("corp", &metadata(&[key.cert_b64()]))]);
    std::fs::write(&path, &body).unwrap();
    let sync_now = || sync_dir(&app, &dir);
    let report = sync_now().await.unwrap();
    assert_eq!(report.created, vec!["acme"], "{report:?}");

    delete_behind_the_api(&app).await;
    tenant_made_through_the_api(&app, "Acme again").await;

    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200);
    assert_eq!(crate::tenants_admin::leftovers(&app, "acme").await, BELONGINGS);
    // Nor is a connection of the id the file's.
    let declared = portcullis::store::Key::tenant("acme", "config", "declared:corp");
    assert_eq!(
        app.state.store.get(&declared).await.unwrap(),
        None,
        "a connection marker stayed"
    );

    // The file back: it no longer owns the tenant.
    std::fs::write(&path, &body).unwrap();
    let report = sync_now().await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("tenant_file.not_owned")),
        "{report:?}"
    );
    let (_, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(tenant["name"], "Acme again", "{tenant}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A marker of file ownership left without its tenant (a deletion from
/// before deletions removed it) does not make a tenant created under the
/// id the files': creating a tenant drops it.
#[tokio::test]
async fn a_marker_left_by_an_earlier_tenant_does_not_hand_a_new_one_to_the_files() {
    let app = gateway().await;
    let dir = scratch();
    let origin = portcullis::store::Key::global("tenants", "from-files");
    app.state.store.set_add(&origin, "acme", None).await.unwrap();
    app.create_tenant("acme", "Acme", &[]).await;
    let report = sync_dir(&app, &dir).await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let (status, _) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(&dir).ok();
}

/// Deletes `acme` as the admin API's deletion would, without its checks:
/// the registry's deletion and the one purge.
async fn delete_behind_the_api(app: &TestApp) {
    use portcullis::tenant::files::TenantPurge;
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let connections = app.state.tenants.connection_ids(&t).await.unwrap();
    app.state.tenants.delete(&t).await.unwrap();
    app.state.purge_deleted_tenant(&t, &connections).await;
}

/// An admin request answered with problem+json: status and body (asserts
/// the content type).
async fn problem(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(&app.admin_token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    assert_eq!(ctype, "application/problem+json", "{status} {text}");
    (status, serde_json::from_str(&text).unwrap())
}

/// The declared marker of acme's connection `c`.
async fn declared(app: &TestApp, c: &str) -> Option<Vec<u8>> {
    let key = portcullis::store::Key::tenant("acme", "config", format!("declared:{c}"));
    app.state.store.get(&key).await.unwrap()
}

/// A connection a file declares is the file's: the admin API refuses to
/// delete it or change its configuration (409, `connection.file_declared`),
/// and nothing changes; its status stays the API's, as does a connection
/// the API added beside the file's. The API's deletion used to go through
/// and leave the file's marker, so the next sync took the unchanged table
/// as applied and never made the connection again (and would have deleted
/// one created again under its id once the file dropped the table).
#[tokio::test]
async fn a_connection_a_file_declares_is_not_deleted_or_changed_through_the_api() {
    let app = gateway().await;
    let dir = scratch();
    let (k1, k2) = (Key::new(), Key::new());
    std::fs::write(
        dir.join("acme.toml"),
        file("Acme", &["acme.test"], &[("corp", &metadata(&[k1.cert_b64()]))]),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);
    sync_now().await.unwrap();
    let rev = revision(&app, "corp").await;
    let marker = declared(&app, "corp").await;
    assert!(marker.is_some());

    let path = "/admin/v1/tenants/acme/connections/corp";
    let (status, p) = problem(&app, reqwest::Method::DELETE, path, None).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "connection.file_declared", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("tenants/"), "{p}");
    let patch = serde_json::json!({"metadata_xml": metadata(&[k2.cert_b64()])});
    let (status, p) = problem(&app, reqwest::Method::PATCH, path, Some(patch)).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "connection.file_declared", "{p}");
    let (status, _) = get(&app, path).await;
    assert_eq!(status, 200, "the file's connection was deleted");
    assert_eq!(revision(&app, "corp").await, rev, "the file's connection was changed");
    assert_eq!(declared(&app, "corp").await, marker);
    assert!(
        app.tenant_audit("acme", "connection.deleted").await.is_empty(),
        "a refusal was audited as a deletion"
    );

    // Its status is not the file's: switched off and on through the API.
    let (status, v) = app.admin(reqwest::Method::POST, &format!("{path}/disable"), None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = app.admin(reqwest::Method::POST, &format!("{path}/enable"), None).await;
    assert_eq!(status, 200, "{v}");
    // A connection the API added to the file's tenant is the API's.
    app.admin_create(
        "/admin/v1/tenants/acme/connections",
        serde_json::json!({"id": "extra", "kind": "saml", "metadata_xml": metadata(&[k2.cert_b64()])}),
    )
    .await;
    let (status, v) = app
        .admin(
            reqwest::Method::DELETE,
            "/admin/v1/tenants/acme/connections/extra",
            None,
        )
        .await;
    assert_eq!(status, 204, "{v}");

    // Deleted another way (the registry's deletion), its marker goes with
    // it: the next sync makes it again from its unchanged table.
    let t = portcullis::ids::TenantId::parse("acme").unwrap();
    let c = portcullis::ids::ConnectionId::parse("corp").unwrap();
    app.state.tenants.delete_connection(&t, &c).await.unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.updated, vec!["acme"], "{report:?}");
    let (status, _) = get(&app, path).await;
    assert_eq!(status, 200, "the declared connection was not made again");
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant a file owns is the file's to delete: the admin API refuses
/// (409, `tenant.file_owned`, pointing at the file), as it refuses a change
/// of its name or domains, and nothing of it goes. The deletion used to go
/// through, and the next sync made the tenant again, afresh (new users).
#[tokio::test]
async fn a_tenant_a_file_owns_is_not_deleted_through_the_api() {
    let app = gateway().await;
    let dir = scratch();
    let key = Key::new();
    let path = dir.join("acme.toml");
    std::fs::write(
        &path,
        file("Acme", &["acme.test"], &[("corp", &metadata(&[key.cert_b64()]))]),
    )
    .unwrap();
    let sync_now = || sync_dir(&app, &dir);
    sync_now().await.unwrap();
    crate::tenants_admin::give_belongings(&app, "acme", "corp").await;
    let (_, before) = get(&app, "/admin/v1/tenants/acme").await;

    let (status, p) = problem(&app, reqwest::Method::DELETE, "/admin/v1/tenants/acme", None).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("tenants/"), "{p}");
    let rename = serde_json::json!({"name": "Renamed"});
    let (status, p) = problem(&app, reqwest::Method::PATCH, "/admin/v1/tenants/acme", Some(rename)).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");
    let (status, after) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200, "the file's tenant was deleted");
    assert_eq!(after, before, "a refused request changed the tenant");
    assert_eq!(crate::tenants_admin::leftovers(&app, "acme").await, BELONGINGS);
    let report = sync_now().await.unwrap();
    assert_eq!(report, Default::default(), "the sync found something to do");

    // Removing the file is the way.
    std::fs::remove_file(&path).unwrap();
    let report = sync_now().await.unwrap();
    assert_eq!(report.removed, vec!["acme"], "{report:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant created through the API while a sync on another replica reads
/// a marker an earlier tenant of the id left (here: the creation has
/// written its record and not yet dropped the marker) is not taken for the
/// file's: the creation marks it as no file's in the same step as its
/// record, and the sync removes only the incarnation a file made. The sync
/// used to delete it under the creation's feet.
#[tokio::test]
async fn a_tenant_created_through_the_api_during_a_sync_that_read_a_stale_marker_stays() {
    let hold = crate::support::held_store::Hold::default();
    let app = spawn_app(AppOptions {
        clock: Some(ManualClock::at(now())),
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await;
    let dir = scratch();
    let origin = portcullis::store::Key::global("tenants", "from-files");
    app.state.store.set_add(&origin, "acme", None).await.unwrap();

    let held = hold.arm_removal("from-files");
    let creating = app.create_tenant("acme", "Acme", &["acme.test"]);
    let syncing = async {
        held.arrived.await.unwrap();
        let report = sync_dir(&app, &dir).await.unwrap();
        let _ = held.release.send(());
        report
    };
    let (_, report) = tokio::join!(creating, syncing);
    assert!(report.removed.is_empty(), "{report:?}");
    let (status, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200, "the sync deleted a tenant created through the API");
    assert_eq!(tenant["domains"], serde_json::json!(["acme.test"]), "{tenant}");
    let report = sync_dir(&app, &dir).await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant's deletion spans several steps and key groups (connections,
/// domains, the tenant list, the record). Two deletions of one tenant at
/// once (two replicas' file syncs, a doubled DELETE) used to both run: the
/// second finished first, the tenant was created again under its id, and
/// the first's later steps removed the new tenant's list entry and record,
/// leaving its domain pointing at nothing. Now a deletion holds the
/// tenant's lease: while it runs, a second deletion and a creation under
/// the id are refused (409 `tenant.deletion_in_progress`, logged), and the
/// tenant made after it stays whole.
#[tokio::test]
async fn a_second_deletion_or_a_creation_during_a_tenants_deletion_is_refused_and_the_tenant_made_after_it_stays() {
    use crate::support::logs::Captured;
    use reqwest::Method;
    let (logs, _guard) = Captured::start();
    let hold = crate::support::held_store::Hold::default();
    let app = spawn_app(AppOptions {
        clock: Some(ManualClock::at(now())),
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;

    // The first deletion is held after it released the domains, before it
    // takes the tenant off the list and removes the record.
    let held = hold.arm_removal("index");
    let first = app.admin(Method::DELETE, "/admin/v1/tenants/acme", None);
    let meanwhile = async {
        held.arrived.await.unwrap();
        let (status, second) = app.admin(Method::DELETE, "/admin/v1/tenants/acme", None).await;
        assert_eq!(status, 409, "{second}");
        assert_eq!(second["reason"], "tenant.deletion_in_progress", "{second}");
        let again = serde_json::json!({"id": "acme", "name": "Acme again", "domains": ["acme.test"]});
        let (status, created) = app.admin(Method::POST, "/admin/v1/tenants", Some(again)).await;
        assert_eq!(status, 409, "{created}");
        assert_eq!(created["reason"], "tenant.deletion_in_progress", "{created}");
        let _ = held.release.send(());
    };
    let ((status, body), ()) = tokio::join!(first, meanwhile);
    assert_eq!(status, 204, "{body}");
    let refused = logs.with_reason("tenant.deletion_in_progress");
    assert_eq!(refused.len(), 2, "{}", logs.text());
    assert!(
        refused.iter().all(|l| l["fields"]["tenant"] == "acme"),
        "{}",
        logs.text()
    );

    // Once it ended, the id is free, and the tenant made then stays whole.
    app.create_tenant("acme", "Acme again", &["acme.test"]).await;
    let (status, tenant) = get(&app, "/admin/v1/tenants/acme").await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["name"], "Acme again", "{tenant}");
    let owner = app.state.tenants.by_domain("acme.test").await.unwrap().unwrap();
    assert_eq!(owner.name, "Acme again");
    let (_, list) = get(&app, "/admin/v1/tenants").await;
    assert!(list.to_string().contains("\"acme\""), "{list}");
    // And it can be deleted (the lease was given back).
    app.delete_tenant("acme").await;
}

/// A file declares its tenant's domains: the admin API neither removes one
/// nor claims or verifies another for it (409, `tenant.file_owned`), as it
/// refuses a PATCH of them. Removed through the API, a declared domain was
/// free for any tenant until the next sync put it back (and a domain added
/// through the API was dropped by that sync).
#[tokio::test]
async fn a_tenant_a_file_owns_gets_no_domain_removed_claimed_or_verified_through_the_api() {
    let app = gateway().await;
    let dir = scratch();
    std::fs::write(dir.join("acme.toml"), file("Acme", &["acme.test"], &[])).unwrap();
    sync_dir(&app, &dir).await.unwrap();

    let (status, p) = problem(
        &app,
        reqwest::Method::DELETE,
        "/admin/v1/tenants/acme/domains/acme.test",
        None,
    )
    .await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");
    let claim = serde_json::json!({"domain": "more.test"});
    let (status, p) = problem(
        &app,
        reqwest::Method::POST,
        "/admin/v1/tenants/acme/domains",
        Some(claim),
    )
    .await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");
    let (status, p) = problem(
        &app,
        reqwest::Method::POST,
        "/admin/v1/tenants/acme/domains/more.test/verify",
        Some(serde_json::json!({"override": true})),
    )
    .await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");
    // What the tenant already has is answered as before.
    let (status, v) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/acme/domains",
            Some(serde_json::json!({"domain": "acme.test"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{v}");
    let (_, list) = get(&app, "/admin/v1/tenants/acme/domains").await;
    assert_eq!(
        list["domains"],
        serde_json::json!([{"domain": "acme.test", "verified": true, "verified_by": "platform_admin", "connections": []}])
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant file declares which connections sign in each of its domains
/// (`[domain_connections]`): applied by the sync, changed or dropped with
/// the file, refused when it names a domain or a connection the file does
/// not declare, and not changed through the admin API (`tenant.file_owned`).
#[tokio::test]
async fn a_file_assigns_its_domains_to_its_connections() {
    let app = gateway().await;
    let dir = scratch();
    let (k1, k2) = (Key::new(), Key::new());
    let path = dir.join("acme.toml");
    let two = file(
        "Acme",
        &["acme.test", "partner.test"],
        &[
            ("corp", &metadata(&[k1.cert_b64()])),
            ("partner", &metadata(&[k2.cert_b64()])),
        ],
    );
    let assigned = |table: &str| format!("{two}\n[domain_connections]\n{table}\n");
    let tenant = || async {
        app.state
            .tenants
            .get(&portcullis::ids::TenantId::parse("acme").unwrap())
            .await
            .unwrap()
            .unwrap()
    };

    std::fs::write(&path, assigned("\"acme.test\" = [\"corp\"]")).unwrap();
    sync_dir(&app, &dir).await.unwrap();
    let names = |t: &std::sync::Arc<portcullis::tenant::Tenant>| {
        t.domain_connections
            .iter()
            .map(|(d, cs)| format!("{d}={}", cs.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&tenant().await), ["acme.test=corp"]);
    let (status, p) = app
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/acme/domains/acme.test",
            Some(serde_json::json!({"connections": []})),
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{p}");
    assert_eq!(p["reason"], "tenant.file_owned", "{p}");

    std::fs::write(&path, assigned("\"partner.test\" = [\"partner\", \"corp\"]")).unwrap();
    let report = sync_dir(&app, &dir).await.unwrap();
    assert_eq!(report.updated, ["acme"], "{report:?}");
    assert_eq!(names(&tenant().await), ["partner.test=partner,corp"]);

    for (table, field) in [
        ("\"other.test\" = [\"corp\"]", "domain_connections.\"other.test\""),
        ("\"acme.test\" = [\"nope\"]", "domain_connections.\"acme.test\"[0]"),
    ] {
        std::fs::write(&path, assigned(table)).unwrap();
        let problems = sync_dir(&app, &dir).await.unwrap_err();
        assert!(problems.iter().any(|p| p.field == field), "{table}: {problems:?}");
        assert_eq!(names(&tenant().await), ["partner.test=partner,corp"], "nothing applied");
    }

    std::fs::write(&path, &two).unwrap();
    sync_dir(&app, &dir).await.unwrap();
    assert!(tenant().await.domain_connections.is_empty());
}
