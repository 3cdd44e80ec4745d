//! Declarative tenants: one TOML file per tenant under `tenants/`.
//!
//! ```toml
//! id = "acme"
//! name = "Acme Corp"
//! # adopt = true   # only to hand a tenant made through the admin API to this file
//! domains = ["acme.com"]
//!
//! # Optional: only these connections vouch for the domain's addresses
//! # and take its users' `login_hint`s (the admin API's `PATCH …/domains/{domain}`).
//! [domain_connections]
//! "acme.com" = ["okta"]
//!
//! [[connections]]
//! id = "okta"
//! kind = "saml"
//! metadata_url = "https://acme.okta.com/app/xyz/sso/saml/metadata"
//! ```
//!
//! A connection table holds the same fields as the admin API's JSON body.
//!
//! [`sync`] applies the directory to the store at start-up, on the metadata
//! schedule and on SIGHUP: files added, edited or removed create, update in
//! place or remove their tenants (see `tenants/README.md`).

use super::{IssuerChange, TenantRegistry};
use crate::audit::{Actor, Audit, AuditEvent, Target};
use crate::config::ConfigProblem;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreJson};
use crate::upstream::{ConnectionKind, UpstreamContext};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// One tenant file, parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// The tenant id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Email domains.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Connections, each the admin API body as a TOML table.
    #[serde(default)]
    pub connections: Vec<toml::Table>,
    /// Which connections sign in the users of each of `domains`
    /// ([`super::Tenant::domain_connections`]); a domain not listed is any
    /// connection's.
    #[serde(default)]
    pub domain_connections: std::collections::BTreeMap<String, Vec<String>>,
    /// Hands an existing tenant the file did not create (one made through
    /// the admin API or an import) to the file: from then on it is the
    /// file's, updated by it and deleted with it. Without it such a tenant
    /// is never touched (`tenant_file.not_owned`).
    #[serde(default)]
    pub adopt: bool,
    /// Where it was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

impl TenantFile {
    /// The declared domain assignments, normalized (valid once
    /// [`read_dir`] accepted the file).
    pub fn domain_assignments(&self) -> std::collections::BTreeMap<String, Vec<ConnectionId>> {
        self.domain_connections
            .iter()
            .filter_map(|(d, cs)| {
                let ids: Vec<ConnectionId> = cs.iter().filter_map(|c| ConnectionId::parse(c).ok()).collect();
                Some((super::parse_domain(d)?, ids)).filter(|(_, ids)| !ids.is_empty())
            })
            .collect()
    }

    /// The connections as JSON bodies, as the admin API would receive them.
    pub fn connection_bodies(&self) -> Vec<serde_json::Value> {
        self.connections
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or(serde_json::Value::Null))
            .collect()
    }
}

/// Reads every `*.toml` file in `dir` (sorted). Returns the files that parsed
/// and a problem for each that did not, with its path and field.
pub fn read_dir(dir: &Path) -> (Vec<TenantFile>, Vec<ConfigProblem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(ConfigProblem {
                source: dir.display().to_string(),
                field: String::new(),
                message: format!("cannot read the tenants directory: {e}"),
            });
            return (files, problems);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let source = path.display().to_string();
        let problem = |field: &str, message: String| ConfigProblem {
            source: source.clone(),
            field: field.into(),
            message,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(problem("", format!("cannot read: {e}")));
                continue;
            }
        };
        let mut file: TenantFile = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                problems.push(problem("", e.to_string().trim().replace('\n', " ")));
                continue;
            }
        };
        file.path = path.clone();
        let before = problems.len();
        if crate::ids::TenantId::parse(&file.id).is_err() {
            problems.push(problem("id", format!("{:?} {}", file.id, crate::ids::InvalidId)));
        }
        for (i, d) in file.domains.iter().enumerate() {
            if let Err(e) = super::domains::claimable(d) {
                problems.push(problem(&format!("domains[{i}]"), e.to_string()));
            }
        }
        let declared: Vec<Option<String>> = file.domains.iter().map(|d| super::parse_domain(d)).collect();
        let tables: Vec<&str> = file
            .connections
            .iter()
            .filter_map(|c| c.get("id").and_then(|v| v.as_str()))
            .collect();
        for (d, cs) in &file.domain_connections {
            let field = format!("domain_connections.{d:?}");
            match super::parse_domain(d) {
                Some(n) if declared.contains(&Some(n.clone())) => {}
                _ => problems.push(problem(&field, "is not one of the file's domains".into())),
            }
            for (i, c) in cs.iter().enumerate() {
                if !tables.contains(&c.as_str()) {
                    problems.push(problem(
                        &format!("{field}[{i}]"),
                        format!("{c:?} is not a connection of the file"),
                    ));
                }
            }
        }
        let pairs: usize = file.domain_connections.values().map(Vec::len).sum();
        if pairs > super::MAX_DOMAIN_ASSIGNMENTS {
            problems.push(problem(
                "domain_connections",
                format!(
                    "assigns {pairs} connections in all, more than {}",
                    super::MAX_DOMAIN_ASSIGNMENTS
                ),
            ));
        }
        for (i, c) in file.connections.iter().enumerate() {
            match c.get("id").and_then(|v| v.as_str()) {
                Some(id) if crate::ids::ConnectionId::parse(id).is_ok() => {}
                _ => problems.push(problem(&format!("connections[{i}].id"), "missing or invalid".into())),
            }
            match c.get("kind").and_then(|v| v.as_str()) {
                Some("saml" | "oidc" | "dev" | "local") => {}
                _ => problems.push(problem(
                    &format!("connections[{i}].kind"),
                    "must be \"saml\", \"oidc\", \"local\" or \"dev\"".into(),
                )),
            }
        }
        if problems.len() == before {
            files.push(file);
        }
    }
    (files, problems)
}

/// Records one change made by the tenant files in the audit log, as
/// `system:tenant_files`. A failed write is logged (the process log already
/// holds the event, see [`Audit::record`]) and does not undo the change.
async fn audit(audit: &Audit, event: AuditEvent) {
    if let Err(e) = audit.record(event).await {
        tracing::warn!(reason = "audit.write_failed", error = %e, "tenant file change not audited");
    }
}

/// An event of the tenant files doing `action` to `target`.
fn event(action: &str, target: Target) -> AuditEvent {
    AuditEvent::new(&Actor::System("tenant_files".into()), action, target, "tenant_files")
}

/// The set of tenant ids a tenant file created or adopted (only these are
/// changed by their file, and removed when it goes away). A tenant leaves
/// it when it is deleted, whichever way ([`TenantRegistry::delete`]), and
/// a tenant created under its id starts outside it
/// ([`TenantRegistry::create`]).
pub(crate) fn origin_key() -> Key {
    Key::global("tenants", "from-files")
}

/// Which tenant of an id a tenant file created or adopted: its
/// incarnation, in the tenant's own hash tag. The authority on ownership
/// ([`origin_key`] only lists the ids to look at): a tenant created under
/// the id afterwards has another incarnation, and [`TenantRegistry::create`]
/// writes [`NO_FILE`] here in the same atomic step as the record, so a
/// marker an earlier tenant left never hands a new one to the files, even
/// to a sync that read the list before the creation.
pub(crate) fn owner_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "config", "from-file")
}

/// What [`owner_key`] holds for a tenant no file owns (created through the
/// admin API, an import or the dev seed).
pub(crate) const NO_FILE: &[u8] = b"-";

/// Whether `tenant` is a tenant file's. `listed`: whether [`origin_key`]
/// names it; read only for a tenant from before [`owner_key`] existed
/// (no marker at all), which the list alone made a file's.
async fn owns(
    store: &crate::store::SharedStore,
    tenant: &super::Tenant,
    listed: bool,
) -> Result<bool, crate::store::StoreError> {
    Ok(match store.get(&owner_key(&tenant.id)).await? {
        Some(marker) => marker == tenant.incarnation.as_bytes(),
        None => listed,
    })
}

/// Whether `tenant` is a tenant file's (created or adopted by one): the
/// admin API then refuses to delete it (`tenant.file_owned`) or change what
/// the file declares of it.
pub async fn file_owned(tenants: &TenantRegistry, tenant: &super::Tenant) -> Result<bool, crate::store::StoreError> {
    let store = &tenants.store;
    let listed = match store.get(&owner_key(&tenant.id)).await? {
        Some(_) => false,
        None => store
            .set_members(&origin_key())
            .await?
            .iter()
            .any(|t| t == tenant.id.as_str()),
    };
    owns(store, tenant, listed).await
}

/// Whether connection `c` of `tenant` is declared by the tenant's file
/// (the file owns the tenant and its last sync applied a table of that id):
/// the admin API then refuses to delete it or change its configuration
/// (`connection.file_declared`).
pub async fn file_declared(
    tenants: &TenantRegistry,
    tenant: &super::Tenant,
    c: &ConnectionId,
) -> Result<bool, crate::store::StoreError> {
    Ok(tenants
        .store
        .get(&declared_key(&tenant.id, c.as_str()))
        .await?
        .is_some()
        && file_owned(tenants, tenant).await?)
}

/// The hash of a connection's declared body, per tenant and connection.
pub(crate) fn declared_key(t: &TenantId, c: &str) -> Key {
    Key::tenant(t.as_str(), "config", format!("declared:{c}"))
}

/// Frees what a deleted tenant leaves beyond its own records (users, local
/// accounts, exchange rules, API keys, hooks, failed sign-ins, its audit
/// log). Those live in parts of the gateway above the tenant registry, so
/// [`sync`] is handed the routine, the one the admin API's delete runs too.
#[async_trait::async_trait]
pub trait TenantPurge: Send + Sync {
    /// Frees what `tenant`, just deleted with `connections` (its connection
    /// ids, read before the deletion), left in the store. Never fails: each
    /// part that cannot be freed is logged.
    async fn purge_deleted_tenant(&self, tenant: &TenantId, connections: &[ConnectionId]);
}

/// What one pass over the tenant files did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Tenants created.
    pub created: Vec<String>,
    /// Tenants whose name, domains or connections changed.
    pub updated: Vec<String>,
    /// Tenants removed with their file.
    pub removed: Vec<String>,
    /// Existing tenants handed to their file by `adopt = true`.
    pub adopted: Vec<String>,
    /// What could not be applied (`file: field: message`); the rest was.
    pub problems: Vec<String>,
}

/// Brings the store in line with the tenant files in `dir`:
///
/// * a new file creates its tenant (marked as coming from a file);
/// * a file naming a tenant that exists but did not come from a file (made
///   through the admin API or an import) changes nothing of it and is
///   reported (`tenant_file.not_owned`), unless it says `adopt = true`:
///   then the tenant is marked as coming from the file and updated;
/// * an edited file updates its tenant in place: name and domains, and its
///   declared connections added, changed or removed. A connection whose
///   declared body is unchanged is left alone (its metadata is kept current
///   by the metadata refresh); a changed body is built again, keeps the SP
///   keys, entity id and ACS URL of the stored connection, and replaces it
///   (new `revision`) only when the built configuration — with freshly
///   fetched metadata — differs from the stored one;
/// * a removed file removes its tenant, only for tenants that came from a
///   file, and `purge` frees what the tenant left (before anything else
///   that may fail).
///
/// Every change is recorded in the audit log as `system:tenant_files`
/// (`tenant.created`/`updated`/`deleted`, `connection.created`/`updated`/
/// `deleted`, connections described by [`super::setup::describe`]).
///
/// When any file cannot be read or parsed, nothing is changed (a broken file
/// must never read as a removed one): the problems are returned as `Err`.
/// A connection that cannot be built keeps the stored one and is reported.
pub async fn sync(
    tenants: &TenantRegistry,
    ctx: &UpstreamContext,
    dir: &Path,
    dev_enabled: bool,
    log: &Audit,
    purge: &dyn TenantPurge,
) -> Result<SyncReport, Vec<ConfigProblem>> {
    let (files, problems) = read_dir(dir);
    if !problems.is_empty() {
        return Err(problems);
    }
    let store = &ctx.store;
    let mut report = SyncReport::default();
    let fail = |e: &dyn std::fmt::Display| {
        vec![ConfigProblem {
            source: dir.display().to_string(),
            field: String::new(),
            message: format!("store: {e}"),
        }]
    };
    let owned: std::collections::BTreeSet<String> = store
        .set_members(&origin_key())
        .await
        .map_err(|e| fail(&e))?
        .into_iter()
        .collect();
    let mut declared_ids = std::collections::BTreeSet::new();
    for f in &files {
        let source = f.path.display().to_string();
        let Ok(id) = TenantId::parse(&f.id) else { continue };
        if !declared_ids.insert(id.clone()) {
            report
                .problems
                .push(format!("{source}: id: tenant {id} is declared by another file too"));
            continue;
        }
        let name = if f.name.is_empty() {
            f.id.clone()
        } else {
            f.name.clone()
        };
        let domains: Vec<String> = f.domains.iter().filter_map(|d| super::parse_domain(d)).collect();
        let mut changed = false;
        match tenants.get(&id).await.map_err(|e| fail(&e))? {
            None => {
                let tenant = match tenants.create(id.clone(), name, domains).await {
                    Ok(tenant) => {
                        audit(
                            log,
                            event("tenant.created", Target::new("tenant", id.as_str())).after(json!(tenant)),
                        )
                        .await;
                        tenant
                    }
                    Err(e) => {
                        report.problems.push(format!("{source}: {e}"));
                        continue;
                    }
                };
                // Only once created here: a failure before leaves nothing
                // of another's marked as the file's. The incarnation makes
                // the mark this tenant's only.
                mark_owned(store, &tenant).await.map_err(|e| fail(&e))?;
                report.created.push(id.to_string());
            }
            Some(existing) => {
                let listed = owned.contains(id.as_str());
                if owns(store, &existing, listed).await.map_err(|e| fail(&e))? {
                    // A tenant from before the owner marker: given one.
                    if store.get(&owner_key(&id)).await.map_err(|e| fail(&e))?.is_none() {
                        mark_owned(store, &existing).await.map_err(|e| fail(&e))?;
                    }
                } else {
                    if !f.adopt {
                        tracing::warn!(
                            reason = "tenant_file.not_owned",
                            tenant = %id,
                            file = %source,
                            "a tenant file names a tenant it did not create: nothing of it changed"
                        );
                        report.problems.push(format!(
                            "{source}: id: tenant {id} exists and was not created by a tenant file \
                             (tenant_file.not_owned); nothing of it was changed. Add `adopt = true` \
                             to hand it to this file (it is then deleted with the file)"
                        ));
                        continue;
                    }
                    mark_owned(store, &existing).await.map_err(|e| fail(&e))?;
                    tracing::info!(reason = "tenant_file.tenant_adopted", tenant = %id, file = %source);
                    let adopted = event("tenant.adopted", Target::new("tenant", id.as_str())).tenant(&id);
                    let name = f.path.file_name().map(|n| n.to_string_lossy().into_owned());
                    audit(log, adopted.after(json!({ "file": name }))).await;
                    report.adopted.push(id.to_string());
                }
                changed |= update_tenant(
                    tenants,
                    log,
                    std::sync::Arc::unwrap_or_clone(existing),
                    name,
                    domains,
                    &source,
                    &mut report.problems,
                )
                .await
                .map_err(|e| fail(&e))?;
            }
        }
        let mut in_file = std::collections::BTreeSet::new();
        for body in f.connection_bodies() {
            let cid = body.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            in_file.insert(cid.clone());
            match sync_connection(tenants, ctx, log, &id, &cid, body, dev_enabled).await {
                Ok(c) => changed |= c,
                Err(m) => report.problems.push(format!("{source}: connections[{cid}].{m}")),
            }
        }
        for c in tenants.connection_ids(&id).await.map_err(|e| fail(&e))? {
            let marker = declared_key(&id, c.as_str());
            if in_file.contains(c.as_str()) || store.get(&marker).await.map_err(|e| fail(&e))?.is_none() {
                continue;
            }
            let before = tenants.connection(&id, &c).await.map_err(|e| fail(&e))?;
            tenants.delete_connection(&id, &c).await.map_err(|e| fail(&e))?;
            store.delete(&marker).await.map_err(|e| fail(&e))?;
            tracing::info!(reason = "tenant_file.connection_removed", tenant = %id, connection = %c);
            let mut removed = event("connection.deleted", Target::new("connection", c.as_str())).tenant(&id);
            if let Some(old) = &before {
                removed = removed.before(super::setup::describe(ctx, old));
            }
            audit(log, removed).await;
            changed = true;
        }
        match tenants.replace_domain_connections(&id, f.domain_assignments()).await {
            Ok(Some((before, after))) => {
                tracing::info!(reason = "tenant_file.domain_connections_set", tenant = %id);
                let updated = event("tenant.updated", Target::new("tenant", id.as_str())).tenant(&id);
                audit(
                    log,
                    updated
                        .before(json!({ "domain_connections": before }))
                        .after(json!({ "domain_connections": after })),
                )
                .await;
                changed = true;
            }
            Ok(None) => {}
            Err(e) => report.problems.push(format!("{source}: domain_connections: {e}")),
        }
        if changed && !report.created.contains(&id.to_string()) {
            report.updated.push(id.to_string());
        }
    }
    for t in store.set_members(&origin_key()).await.map_err(|e| fail(&e))? {
        let Ok(id) = TenantId::parse(&t) else { continue };
        if declared_ids.contains(&id) {
            continue;
        }
        let Some(before) = tenants.get(&id).await.map_err(|e| fail(&e))? else {
            // Gone already (deleted another way): nothing is the file's.
            store
                .set_remove(&origin_key(), id.as_str())
                .await
                .map_err(|e| fail(&e))?;
            continue;
        };
        if !owns(store, &before, true).await.map_err(|e| fail(&e))? {
            // Listed by a file's earlier tenant of the id: this one (created
            // through the API, even while this pass ran) is not the file's.
            tracing::warn!(reason = "tenant_file.marker_stale", tenant = %id, "a tenant listed as a file's is not the one the file made: left alone");
            store
                .set_remove(&origin_key(), id.as_str())
                .await
                .map_err(|e| fail(&e))?;
            continue;
        }
        let connections = tenants.connection_ids(&id).await.map_err(|e| fail(&e))?;
        for c in &connections {
            store
                .delete(&declared_key(&id, c.as_str()))
                .await
                .map_err(|e| fail(&e))?;
        }
        // Only the incarnation the file owns: the registry re-reads the
        // record and deletes nothing of another.
        match tenants.delete_incarnation(&id, &before.incarnation).await {
            Ok(()) => {
                // At once: nothing between the deletion and the purge can
                // fail, and a later pass finds the tenant gone.
                purge.purge_deleted_tenant(&id, &connections).await;
                // To the global log, as the admin API does: the tenant's own log went with the purge.
                let deleted = event("tenant.deleted", Target::new("tenant", id.as_str()));
                audit(log, deleted.before(json!(before))).await;
            }
            Err(super::RegistryError::NotFound(_)) => {}
            // Another replica's sync is removing it (logged by the
            // registry): that one reports it; a later pass finds it gone.
            Err(super::RegistryError::DeletionInProgress(_)) => continue,
            Err(e) => return Err(fail(&e)),
        }
        store
            .set_remove(&origin_key(), id.as_str())
            .await
            .map_err(|e| fail(&e))?;
        tracing::info!(reason = "tenant_file.tenant_removed", tenant = %id, "tenant file removed: tenant removed");
        report.removed.push(id.to_string());
    }
    Ok(report)
}

/// Marks `tenant` (this incarnation of its id) as a tenant file's.
async fn mark_owned(store: &crate::store::SharedStore, tenant: &super::Tenant) -> Result<(), crate::store::StoreError> {
    store
        .put(&owner_key(&tenant.id), tenant.incarnation.as_bytes(), None)
        .await?;
    store.set_add(&origin_key(), tenant.id.as_str(), None).await
}

/// Updates a tenant's name and domains in place; `Ok(true)` when something
/// changed. A domain another tenant owns is reported and left out.
async fn update_tenant(
    tenants: &TenantRegistry,
    log: &Audit,
    mut tenant: super::Tenant,
    name: String,
    domains: Vec<String>,
    source: &str,
    problems: &mut Vec<String>,
) -> Result<bool, super::RegistryError> {
    let store = &tenants.store;
    let mut kept = Vec::new();
    for d in &domains {
        let ours = tenant.domains.contains(d)
            || store
                .put_if_absent(&super::domain_key(d), tenant.id.as_str().as_bytes(), None)
                .await?;
        if ours {
            kept.push(d.clone());
        } else {
            problems.push(format!("{source}: domains: {d} already belongs to another tenant"));
        }
    }
    for d in tenant.domains.iter().filter(|d| !kept.contains(d)) {
        if store.get(&super::domain_key(d)).await?.as_deref() == Some(tenant.id.as_str().as_bytes()) {
            store.delete(&super::domain_key(d)).await?;
        }
    }
    if tenant.name == name && tenant.domains == kept {
        return Ok(false);
    }
    let before = json!(tenant);
    tenant.name = name;
    tenant.domains = kept;
    store.put_json(&super::tenant_key(&tenant.id), &tenant, None).await?;
    tracing::info!(reason = "tenant_file.tenant_updated", tenant = %tenant.id);
    let updated = event("tenant.updated", Target::new("tenant", tenant.id.as_str())).tenant(&tenant.id);
    audit(log, updated.before(before).after(json!(tenant))).await;
    Ok(true)
}

/// The key of a connection table that keeps the connection's users across
/// a change of its upstream issuer (the admin API's `keep_users=true`).
/// Read by the file, never stored with the connection.
const KEEP_USERS: &str = "keep_users_on_issuer_change";

/// Applies one declared connection; `Ok(true)` when the stored connection
/// changed. The error is `field: message`. A changed upstream issuer
/// renews the connection's users unless the table says
/// `keep_users_on_issuer_change = true` ([`IssuerChange`]).
async fn sync_connection(
    tenants: &TenantRegistry,
    ctx: &UpstreamContext,
    log: &Audit,
    id: &TenantId,
    cid: &str,
    body: serde_json::Value,
    dev_enabled: bool,
) -> Result<bool, String> {
    let store = &ctx.store;
    let declared = crate::tokens::sha256_base64url(body.to_string().as_bytes());
    let marker = declared_key(id, cid);
    if store.get(&marker).await.map_err(|e| format!("id: {e}"))?.as_deref() == Some(declared.as_bytes()) {
        return Ok(false);
    }
    let mut body = body;
    let users = match body.as_object_mut().and_then(|o| o.remove(KEEP_USERS)) {
        None | Some(serde_json::Value::Bool(false)) => IssuerChange::NewUsers,
        Some(serde_json::Value::Bool(true)) => IssuerChange::KeepUsers,
        Some(_) => return Err(format!("{KEEP_USERS}: must be true or false")),
    };
    let mut conn = super::setup::build_connection(ctx, id, body, dev_enabled)
        .await
        .map_err(|e| format!("{}: {}", e.field, e.message))?;
    let existing = tenants.connection(id, &conn.id).await.map_err(|e| format!("id: {e}"))?;
    let changed = match &existing {
        Some(old) => {
            conn.status = old.status;
            if let (ConnectionKind::Saml(old_cfg), ConnectionKind::Saml(new_cfg)) = (&old.kind, &mut conn.kind) {
                // The SP side is the customer's IdP configuration: never regenerated.
                new_cfg.sp_private_key_pem = old_cfg.sp_private_key_pem.clone();
                new_cfg.sp_certificate_pem = old_cfg.sp_certificate_pem.clone();
                new_cfg.sp_entity_id = old_cfg.sp_entity_id.clone();
                new_cfg.acs_url = old_cfg.acs_url.clone();
                // What the metadata says decides, not how its text is laid out.
                if !crate::upstream::saml::idp_part_differs(old_cfg, new_cfg) {
                    new_cfg.metadata_xml = old_cfg.metadata_xml.clone();
                }
            }
            let same = serde_json::to_value(&old.kind).ok() == serde_json::to_value(&conn.kind).ok();
            conn.revision = if same {
                old.revision
            } else {
                old.revision.wrapping_add(1)
            };
            !same
        }
        None => true,
    };
    if changed {
        crate::upstream::build(&conn, ctx).map_err(|e| format!("kind: {}", e.message))?;
        let renewed = tenants
            .put_connection(&conn, users)
            .await
            .map_err(|e| format!("id: {e}"))?;
        tracing::info!(reason = "tenant_file.connection_loaded", tenant = %id, connection = %cid);
        let target = Target::new("connection", conn.id.as_str());
        let mut changed_event = match &existing {
            Some(old) => event("connection.updated", target).before(super::setup::describe(ctx, old)),
            None => event("connection.created", target),
        };
        changed_event = changed_event.tenant(id).after(super::setup::describe(ctx, &conn));
        audit(log, changed_event).await;
        if let (true, Some(old)) = (renewed, &existing) {
            let renewed_event = event("connection.users_renewed", Target::new("connection", conn.id.as_str()))
                .tenant(id)
                .before(json!({"issuer": old.kind.upstream_issuer()}))
                .after(json!({"issuer": conn.kind.upstream_issuer()}));
            audit(log, renewed_event).await;
        }
    }
    store
        .put(&marker, declared.as_bytes(), None)
        .await
        .map_err(|e| format!("id: {e}"))?;
    Ok(changed)
}
