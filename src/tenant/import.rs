//! `portcullis import FILE`: tenants and connections from a JSON export, in
//! one step (format: `docs/IMPORT.md`).
//!
//! Two inputs are accepted:
//!
//! * the native format, `{"tenants": [{"id", "name", "domains",
//!   "connections": [<admin API connection bodies>]}]}`;
//! * SAML Jackson / Ory Polis's connection export: a JSON array (or
//!   `{"connections": [...]}`) of connection records, SAML ones with
//!   `rawMetadata` / `encodedRawMetadata` or `metadataUrl`, OIDC ones with
//!   `oidcProvider: {discoveryUrl, clientId, clientSecret}` (or the API's
//!   `oidcDiscoveryUrl`, `oidcClientId`, `oidcClientSecret`). Records with
//!   exactly the same `tenant` make one tenant, whose id is `tenant`
//!   sanitised to our id rules; two different `tenant` values that sanitise
//!   to one id are a problem, never merged (`acme.com` and `ACME.com` may be
//!   different customers, and a connection of one would become an IdP of
//!   the other). `name` is the connection id; `product`, `redirectUrl`,
//!   `defaultRedirectUrl`, `clientID` and `description` have no counterpart
//!   in a connection (apps and their redirect URIs are registered
//!   separately) and are ignored.
//!
//! Everything is validated before anything is created (ids, domains free,
//! tenants new, every connection built, metadata fetched and parsed), and
//! every problem is reported at once with its entry and field. Nothing is
//! created when any problem is found.

use super::TenantRegistry;
use crate::ids::{ConnectionId, TenantId};
use crate::upstream::{Connection, UpstreamContext};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One problem of an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    /// The entry at fault, e.g. `tenants[0].connections[1]` or `[3]`.
    pub entry: String,
    /// The field at fault within it (may be empty).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ImportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.entry.is_empty(), self.field.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.field, self.message),
            (false, true) => write!(f, "{}: {}", self.entry, self.message),
            (false, false) => write!(f, "{}.{}: {}", self.entry, self.field, self.message),
        }
    }
}

/// One tenant of the file, normalised to the native shape.
#[derive(Debug, Clone)]
struct Entry {
    /// Where it came from in the file.
    entry: String,
    /// The Jackson `tenant` value it was made from, exactly as written
    /// (`None` in the native format, whose ids are used as they are).
    source: Option<String>,
    id: String,
    name: String,
    domains: Vec<String>,
    /// (entry path, admin API body)
    connections: Vec<(String, Value)>,
}

/// What was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Tenants created.
    pub tenants: Vec<String>,
    /// Connections created, as `tenant/connection`.
    pub connections: Vec<String>,
}

/// Validates `doc` completely, then creates its tenants and connections.
/// Returns every problem found, and creates nothing, when any is found.
pub async fn import(
    ctx: &UpstreamContext,
    tenants: &TenantRegistry,
    doc: &Value,
    dev_enabled: bool,
) -> Result<ImportSummary, Vec<ImportProblem>> {
    let mut problems = Vec::new();
    let entries = normalise(doc, &mut problems);
    let mut planned: Vec<(TenantId, String, Vec<String>, Vec<Connection>)> = Vec::new();
    // Each tenant id with the source value of its first entry.
    let mut seen_tenants: BTreeMap<TenantId, Option<String>> = BTreeMap::new();
    let mut seen_domains = BTreeSet::new();
    for e in entries {
        let bad = |field: &str, message: String| ImportProblem {
            entry: e.entry.clone(),
            field: field.into(),
            message,
        };
        let id = match TenantId::parse(&e.id) {
            Ok(id) => Some(id),
            Err(err) => {
                problems.push(bad("id", format!("{:?} {err}", e.id)));
                None
            }
        };
        if let Some(id) = &id {
            match (seen_tenants.get(id), &e.source) {
                (None, _) => {
                    seen_tenants.insert(id.clone(), e.source.clone());
                }
                // Two Jackson tenants whose names differ only in what the id
                // rules drop: kept apart, so the file cannot be imported as is.
                (Some(Some(first)), Some(this)) => {
                    problems.push(bad(
                        "tenant",
                        format!(
                            "the source tenants {first:?} and {this:?} would both become the tenant {id}; \
                             different source tenants are never merged: rename one of them in the export"
                        ),
                    ));
                }
                (Some(_), _) => problems.push(bad("id", format!("the tenant {id} appears twice in the file"))),
            }
            match tenants.get(id).await {
                Ok(Some(_)) => problems.push(bad("id", format!("the tenant {id} already exists"))),
                Ok(None) => {}
                Err(err) => problems.push(bad("id", format!("cannot check the tenant: {err}"))),
            }
        }
        let mut domains = Vec::new();
        for (i, d) in e.domains.iter().enumerate() {
            let field = format!("domains[{i}]");
            // As the admin API and tenant files: public suffixes and
            // free-mail domains are nobody's, so no tenant's.
            let d = match super::domains::claimable(d) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(bad(&field, e.to_string()));
                    continue;
                }
            };
            if !seen_domains.insert(d.clone()) {
                problems.push(bad(&field, format!("{d} appears twice in the file")));
            }
            match tenants.by_domain(&d).await {
                Ok(Some(owner)) => problems.push(bad(&field, format!("{d} already belongs to tenant {}", owner.id))),
                Ok(None) => {}
                Err(err) => problems.push(bad(&field, format!("cannot check the domain: {err}"))),
            }
            domains.push(d);
        }
        let mut connections = Vec::new();
        let mut seen_connections = BTreeSet::new();
        for (entry, body) in e.connections {
            let Some(id) = &id else { continue };
            let cid = body.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            if !cid.is_empty() && !seen_connections.insert(cid.clone()) {
                problems.push(ImportProblem {
                    entry: entry.clone(),
                    field: "id".into(),
                    message: format!("the connection {cid} appears twice in tenant {id}"),
                });
                continue;
            }
            match crate::tenant::setup::build_connection(ctx, id, body, dev_enabled).await {
                Ok(conn) => match crate::upstream::build(&conn, ctx) {
                    Ok(_) => connections.push(conn),
                    Err(err) => problems.push(ImportProblem {
                        entry,
                        field: String::new(),
                        message: err.message,
                    }),
                },
                Err(err) => problems.push(ImportProblem {
                    entry,
                    field: err.field,
                    message: err.message,
                }),
            }
        }
        if let Some(id) = id {
            let name = if e.name.is_empty() { id.to_string() } else { e.name };
            planned.push((id, name, domains, connections));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut summary = ImportSummary::default();
    for (id, name, domains, connections) in planned {
        // `Err((error, whether this tenant was created here))`.
        let created = match tenants.create(id.clone(), name, domains).await {
            Err(err) => Err((err, false)),
            Ok(_) => {
                let mut added = Ok(());
                for c in &connections {
                    if let Err(err) = tenants.add_connection(c).await {
                        added = Err((err, true));
                        break;
                    }
                }
                added
            }
        };
        if let Err((err, ours)) = created {
            // Something changed between the check and the creation (another
            // admin, a replica): undo everything this import created, and
            // only that (a tenant of this id someone else created meanwhile
            // is theirs).
            for t in summary
                .tenants
                .iter()
                .filter_map(|t| TenantId::parse(t).ok())
                .chain(ours.then(|| id.clone()))
            {
                if let Err(e) = tenants.delete(&t).await {
                    tracing::error!(reason = "import.rollback_failed", tenant = %t, error = %e);
                }
            }
            return Err(vec![ImportProblem {
                entry: String::new(),
                field: String::new(),
                message: format!("nothing was imported: creating tenant {id} failed: {err}"),
            }]);
        }
        for c in &connections {
            summary.connections.push(format!("{id}/{}", c.id));
        }
        tracing::info!(reason = "import.tenant_created", tenant = %id, connections = connections.len());
        summary.tenants.push(id.to_string());
    }
    Ok(summary)
}

/// The file's tenants in the native shape, whichever format it is in.
fn normalise(doc: &Value, problems: &mut Vec<ImportProblem>) -> Vec<Entry> {
    match doc {
        Value::Object(map) if map.contains_key("tenants") => native(map, problems),
        Value::Object(map) if map.contains_key("connections") => match map.get("connections") {
            Some(Value::Array(list)) => jackson(list, "connections", problems),
            _ => {
                problems.push(top("connections", "must be an array of connection records"));
                Vec::new()
            }
        },
        Value::Array(list) => jackson(list, "", problems),
        _ => {
            problems.push(top(
                "",
                "expected {\"tenants\": [...]} or a SAML Jackson connection export (an array)",
            ));
            Vec::new()
        }
    }
}

fn top(field: &str, message: &str) -> ImportProblem {
    ImportProblem {
        entry: String::new(),
        field: field.into(),
        message: message.into(),
    }
}

fn native(map: &Map<String, Value>, problems: &mut Vec<ImportProblem>) -> Vec<Entry> {
    let Some(Value::Array(list)) = map.get("tenants") else {
        problems.push(top("tenants", "must be an array"));
        return Vec::new();
    };
    for key in map.keys().filter(|k| *k != "tenants") {
        problems.push(top(key, "unknown field"));
    }
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let entry = format!("tenants[{i}]");
        let bad = |field: &str, message: &str| ImportProblem {
            entry: entry.clone(),
            field: field.into(),
            message: message.into(),
        };
        let Value::Object(t) = t else {
            problems.push(bad("", "must be an object"));
            continue;
        };
        for key in t
            .keys()
            .filter(|k| !matches!(k.as_str(), "id" | "name" | "domains" | "connections"))
        {
            problems.push(bad(key, "unknown field"));
        }
        let id = match t.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                problems.push(bad("id", "is required (a string)"));
                String::new()
            }
        };
        let name = match t.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                problems.push(bad("name", "must be a string"));
                String::new()
            }
        };
        let domains = match t.get("domains") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ds)) => ds
                .iter()
                .enumerate()
                .filter_map(|(j, d)| match d {
                    Value::String(s) => Some(s.clone()),
                    _ => {
                        problems.push(bad(&format!("domains[{j}]"), "must be a string"));
                        None
                    }
                })
                .collect(),
            Some(_) => {
                problems.push(bad("domains", "must be an array of strings"));
                Vec::new()
            }
        };
        let connections = match t.get("connections") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(cs)) => cs
                .iter()
                .enumerate()
                .map(|(j, c)| (format!("{entry}.connections[{j}]"), c.clone()))
                .collect(),
            Some(_) => {
                problems.push(bad("connections", "must be an array"));
                Vec::new()
            }
        };
        out.push(Entry {
            entry,
            source: None,
            id: if id.is_empty() { format!("#{i}") } else { id },
            name,
            domains,
            connections,
        });
    }
    out
}

/// A Jackson tenant (often a domain or an organisation id) as a tenant id:
/// lower case, runs of other characters as `-`, at most 64 characters.
/// `None` when nothing usable is left.
pub fn sanitise_id(raw: &str) -> Option<String> {
    let mut out = String::new();
    for c in raw.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').chars().take(64).collect::<String>();
    let out = out.trim_end_matches('-').to_owned();
    TenantId::parse(&out).is_ok().then_some(out)
}

fn jackson(list: &[Value], prefix: &str, problems: &mut Vec<ImportProblem>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, record) in list.iter().enumerate() {
        let entry = format!("{prefix}[{i}]");
        let bad = |field: &str, message: String| ImportProblem {
            entry: entry.clone(),
            field: field.into(),
            message,
        };
        let Value::Object(r) = record else {
            problems.push(bad("", "must be an object".into()));
            continue;
        };
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(raw_tenant) = s("tenant") else {
            problems.push(bad("tenant", "is required (a string)".into()));
            continue;
        };
        let Some(tenant) = sanitise_id(&raw_tenant) else {
            problems.push(bad(
                "tenant",
                format!("{raw_tenant:?} cannot be turned into a tenant id (letters, digits, '-' or '_')"),
            ));
            continue;
        };
        let oidc = r.get("oidcProvider").and_then(Value::as_object);
        let discovery = oidc
            .and_then(|o| o.get("discoveryUrl"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| s("oidcDiscoveryUrl"));
        let mut body = if let Some(discovery) = discovery {
            let client_id = oidc
                .and_then(|o| o.get("clientId"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| s("oidcClientId"));
            let secret = oidc
                .and_then(|o| o.get("clientSecret"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| s("oidcClientSecret"));
            let issuer = discovery
                .trim_end_matches('/')
                .trim_end_matches("/.well-known/openid-configuration")
                .to_owned();
            let mut body = json!({"kind": "oidc", "issuer": issuer, "client_id": client_id});
            if let (Some(secret), Value::Object(map)) = (secret, &mut body) {
                map.insert("client_secret".into(), json!(secret));
            }
            body
        } else if let Some(xml) = s("rawMetadata") {
            json!({"kind": "saml", "metadata_xml": xml})
        } else if let Some(encoded) = s("encodedRawMetadata") {
            match base64::engine::general_purpose::STANDARD
                .decode(encoded.trim().as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(xml) => json!({"kind": "saml", "metadata_xml": xml}),
                None => {
                    problems.push(bad("encodedRawMetadata", "is not base64 of UTF-8 XML".into()));
                    continue;
                }
            }
        } else if let Some(url) = s("metadataUrl") {
            json!({"kind": "saml", "metadata_url": url})
        } else {
            problems.push(bad(
                "rawMetadata",
                "a SAML record needs rawMetadata, encodedRawMetadata or metadataUrl; an OIDC one oidcProvider.discoveryUrl"
                    .into(),
            ));
            continue;
        };
        let kind = body.get("kind").and_then(Value::as_str).unwrap_or("saml").to_owned();
        // Grouped by the exact source value, not the sanitised id: look-alike
        // source tenants stay apart (and are reported by `import`).
        let existing = out
            .iter()
            .position(|e| e.source.as_deref() == Some(raw_tenant.as_str()));
        let n = existing.and_then(|p| out.get(p)).map_or(0, |e| e.connections.len());
        let cid = s("name")
            .and_then(|n| sanitise_id(&n))
            .filter(|c| ConnectionId::parse(c).is_ok())
            .unwrap_or_else(|| {
                if n == 0 {
                    kind.clone()
                } else {
                    format!("{kind}-{}", n + 1)
                }
            });
        if let Value::Object(map) = &mut body {
            map.insert("id".into(), json!(cid));
        }
        match existing.and_then(|p| out.get_mut(p)) {
            Some(e) => e.connections.push((entry, body)),
            None => out.push(Entry {
                entry: entry.clone(),
                source: Some(raw_tenant.clone()),
                id: tenant.clone(),
                name: raw_tenant,
                domains: Vec::new(),
                connections: vec![(entry, body)],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jackson_tenants_are_sanitised_or_refused() {
        assert_eq!(sanitise_id("Acme.COM").as_deref(), Some("acme-com"));
        assert_eq!(sanitise_id("  boxyhq.com  ").as_deref(), Some("boxyhq-com"));
        assert_eq!(sanitise_id("org_123").as_deref(), Some("org_123"));
        assert_eq!(sanitise_id("..."), None);
        assert_eq!(sanitise_id("ü ö"), None);
    }
}
