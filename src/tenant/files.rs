//! Declarative tenants: one TOML file per tenant under `tenants/`.
//!
//! ```toml
//! id = "acme"
//! name = "Acme Corp"
//! domains = ["acme.com"]
//!
//! [[connections]]
//! id = "okta"
//! kind = "saml"
//! metadata_url = "https://acme.okta.com/app/xyz/sso/saml/metadata"
//! ```
//!
//! A connection table holds the same fields as the admin API's JSON body.

use crate::config::ConfigProblem;
use serde::Deserialize;
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
    /// Where it was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

impl TenantFile {
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
        for (i, c) in file.connections.iter().enumerate() {
            match c.get("id").and_then(|v| v.as_str()) {
                Some(id) if crate::ids::ConnectionId::parse(id).is_ok() => {}
                _ => problems.push(problem(&format!("connections[{i}].id"), "missing or invalid".into())),
            }
            match c.get("kind").and_then(|v| v.as_str()) {
                Some("saml" | "oidc" | "dev") => {}
                _ => problems.push(problem(
                    &format!("connections[{i}].kind"),
                    "must be \"saml\", \"oidc\" or \"dev\"".into(),
                )),
            }
        }
        if problems.len() == before {
            files.push(file);
        }
    }
    (files, problems)
}
