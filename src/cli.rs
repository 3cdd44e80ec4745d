//! The command line: `serve` (the default), `check-config`, `import FILE`,
//! `export FILE`, `keys rewrap`, `keys status`, `--version`.

use crate::clock::Clock as _;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{ConfigProblem, Settings};
use crate::secrets::sealed::SealedStore;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Portcullis, the multi-tenant SSO federation gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// The configuration file (TOML). Environment variables override it.
    #[arg(long, short, env = "PORTCULLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Validate the configuration and the tenant files; report every problem.
    CheckConfig {
        /// Check without contacting any IdP: connections whose check needs
        /// the network (a SAML `metadata_url`, OIDC discovery) are checked
        /// for what can be read locally and skipped for the rest, so one
        /// unreachable IdP cannot stop a start-up (use it in pre-start hooks).
        #[arg(long)]
        offline: bool,
    },
    /// Create tenants and connections from a JSON export (docs/IMPORT.md):
    /// every problem is reported at once, and nothing is created unless
    /// the whole file is valid.
    ///
    /// A backup written by `portcullis export` is restored exactly
    /// (docs/BACKUP.md): into an empty store, unless `--overwrite`.
    Import {
        /// The export file (native format, a SAML Jackson / Ory Polis
        /// export, or a `portcullis export` backup).
        file: PathBuf,
        /// Restoring a backup: replace the records it holds that the store
        /// already has (otherwise any such record stops the restore).
        #[arg(long)]
        overwrite: bool,
    },
    /// Write the whole configuration (tenants, connections, apps, resource
    /// servers, API keys, users, signing keys; secrets still sealed) to
    /// FILE as a backup that `portcullis import` restores (docs/BACKUP.md).
    Export {
        /// Where to write the backup (created with mode 0600; replaced if it exists).
        file: PathBuf,
    },
    /// Master keys of the secrets at rest (docs/SECRETS.md).
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `portcullis keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Seal every secret at rest under the current master key (after a new
    /// key was made current). Idempotent, safe while gateways run.
    Rewrap,
    /// Count the sealed secrets by master key id (and plaintext ones): an
    /// old key can leave the key file once nothing uses it.
    Status,
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")).collect()
}

/// Runs the command line. Returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let source = cli
        .config
        .as_ref()
        .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let settings = match Settings::load(cli.config.as_deref(), &env_map()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { offline } => Ok(check_config(&settings, &source, offline).await),
        Command::Serve => serve(settings, &source).await,
        Command::Import { file, overwrite } => import(settings, &source, &file, overwrite).await,
        Command::Export { file } => export(settings, &source, &file).await,
        Command::Keys { command } => keys(settings, &source, command).await,
    }
}

/// Opens the configured store and its sealing layer, for the commands that
/// read or write records.
async fn open_sealed(settings: &Settings) -> anyhow::Result<Arc<SealedStore>> {
    let clock: SharedClock = Arc::new(SystemClock);
    let raw = crate::app::open_store(settings, clock).await?;
    crate::app::seal_store(settings, raw)
}

/// `portcullis export FILE`: exit 0 with a summary, 1 when the store or the
/// file fails, 2 when the configuration is invalid.
async fn export(settings: Settings, source: &str, file: &std::path::Path) -> anyhow::Result<i32> {
    if let Err(e) = settings.validate(source) {
        eprintln!("{e}");
        return Ok(2);
    }
    let store = open_sealed(&settings).await?;
    let backup = match crate::backup::export(store.raw(), SystemClock.now()).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("export failed: {e}");
            return Ok(1);
        }
    };
    let written = serde_json::to_vec_pretty(&backup)
        .map_err(std::io::Error::other)
        .and_then(|text| write_private(file, &text));
    if let Err(e) = written {
        eprintln!("{}: {e}", file.display());
        return Ok(1);
    }
    tracing::info!(
        reason = "backup.exported",
        records = backup.records.len(),
        plaintext_secrets = backup.plaintext_secrets,
        "export written"
    );
    println!(
        "exported {} record(s) to {}; sealed with master key(s): {}",
        backup.records.len(),
        file.display(),
        if backup.sealed_with.is_empty() {
            "none".to_owned()
        } else {
            backup.sealed_with.join(", ")
        }
    );
    if backup.plaintext_secrets > 0 {
        eprintln!(
            "warning: {} secret(s) in this backup are NOT encrypted (stored before a master key was configured); run `portcullis keys rewrap` and export again",
            backup.plaintext_secrets
        );
    }
    Ok(0)
}

/// Writes `bytes` to `path`, readable by the owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    // `mode` applies only when the file is created: tighten an existing one too.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `portcullis keys rewrap|status`: exit 0 when every secret is sealed
/// under the current key (rewrap) or the counts were printed (status), 1
/// when some record could not be rewrapped or the store failed, 2 when the
/// configuration is invalid.
async fn keys(settings: Settings, source: &str, command: KeysCommand) -> anyhow::Result<i32> {
    if let Err(e) = settings.validate(source) {
        eprintln!("{e}");
        return Ok(2);
    }
    let store = open_sealed(&settings).await?;
    match command {
        KeysCommand::Rewrap => {
            let Some(cipher) = store.cipher() else {
                eprintln!("no master key is configured: set PORTCULLIS_MASTER_KEY_FILE (docs/SECRETS.md)");
                return Ok(2);
            };
            let current = cipher.current_id().to_owned();
            let record_ttl = crate::broker::upstream_refresh::record_ttl(
                settings.tokens.refresh_token_ttl_secs,
                std::time::Duration::from_secs(settings.sessions.ttl_secs),
            );
            match crate::backup::rewrap(&store, record_ttl, SystemClock.unix()).await {
                Ok(r) => {
                    tracing::info!(
                        reason = "secrets.rewrapped",
                        key = %current,
                        rewrapped = r.rewrapped,
                        fields = r.fields,
                        already_current = r.current,
                        failed = r.failed.len(),
                        "keys rewrap"
                    );
                    println!(
                        "rewrapped {} record(s) ({} field(s)) under master key {current}; {} already current; {} failed",
                        r.rewrapped,
                        r.fields,
                        r.current,
                        r.failed.len()
                    );
                    for f in &r.failed {
                        eprintln!("  - {f}");
                    }
                    Ok(i32::from(!r.failed.is_empty()))
                }
                Err(e) => {
                    eprintln!("rewrap failed: {e}");
                    Ok(1)
                }
            }
        }
        KeysCommand::Status => match crate::backup::status(store.raw()).await {
            Ok(status) => {
                if let Some(c) = store.cipher() {
                    println!("current master key: {}", c.current_id());
                }
                for (kid, n) in &status.by_key {
                    println!("sealed under {kid}: {n}");
                }
                println!("plaintext: {}", status.plaintext);
                // Records every read of which is refused (secrets.malformed).
                println!("malformed: {}", status.malformed);
                Ok(0)
            }
            Err(e) => {
                eprintln!("status failed: {e}");
                Ok(1)
            }
        },
    }
}

/// `portcullis import FILE`: exit 0 with a summary, 1 with every problem
/// (nothing created), 2 when the configuration is invalid.
async fn import(settings: Settings, source: &str, file: &std::path::Path, overwrite: bool) -> anyhow::Result<i32> {
    let resolved = match settings.validate(source) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let shown = file.display().to_string();
    let doc: serde_json::Value = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("{shown}: {e}");
            return Ok(1);
        }
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let sealed = open_sealed(&settings).await?;
    if crate::backup::is_backup(&doc) {
        return Ok(
            match crate::backup::restore(&sealed, doc, overwrite, clock.unix()).await {
                Ok(r) => {
                    tracing::info!(
                        reason = "backup.restored",
                        tenants = r.tenants,
                        records = r.values,
                        sets = r.sets,
                        "backup restored"
                    );
                    println!(
                        "restored {} tenant(s): {} record(s) and {} set(s) from {shown}",
                        r.tenants, r.values, r.sets
                    );
                    0
                }
                Err(problems) => {
                    eprintln!("{shown}: nothing was restored ({} problem(s)):", problems.len());
                    for p in problems {
                        eprintln!("  - {shown}: {p}");
                    }
                    1
                }
            },
        );
    }
    if overwrite {
        eprintln!("{shown}: --overwrite applies to backups written by `portcullis export` only");
        return Ok(2);
    }
    let store: crate::store::SharedStore = sealed;
    let ctx = crate::app::upstream_context(&settings, &resolved, store.clone(), clock.clone())?;
    let tenants = crate::tenant::TenantRegistry::new(store, clock);
    match crate::tenant::import::import(&ctx, &tenants, &doc, settings.dev.enabled).await {
        Ok(summary) => {
            println!(
                "imported {} tenant(s) and {} connection(s): {}",
                summary.tenants.len(),
                summary.connections.len(),
                summary.connections.join(", ")
            );
            Ok(0)
        }
        Err(problems) => {
            eprintln!("{shown}: nothing was imported ({} problem(s)):", problems.len());
            for p in problems {
                eprintln!("  - {shown}: {p}");
            }
            Ok(1)
        }
    }
}

/// Whether checking this connection body needs an IdP on the network: a
/// SAML connection with a `metadata_url` and no inline metadata, or any OIDC
/// connection (its discovery document is fetched).
fn needs_network(body: &serde_json::Value) -> bool {
    let has = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    match body.get("kind").and_then(serde_json::Value::as_str) {
        Some("oidc") => true,
        Some("saml") => has("metadata_url") && !has("metadata_xml"),
        _ => false,
    }
}

/// What `check-config --offline` can still refuse of a connection body it
/// does not fetch: a SAML `metadata_url` carrying a user name or password
/// (`saml.metadata_url_credentials`, as set-up refuses it).
fn offline_problem(body: &serde_json::Value) -> Option<String> {
    let url = body.get("metadata_url").and_then(serde_json::Value::as_str)?;
    let url = url::Url::parse(url).ok()?;
    crate::upstream::saml::carries_credentials(&url).then(|| {
        format!(
            "must not carry a user name or password: it is shown, audited and logged as given ({})",
            crate::upstream::saml::METADATA_URL_CREDENTIALS
        )
    })
}

async fn check_config(settings: &Settings, source: &str, offline: bool) -> i32 {
    let (resolved, mut problems): (_, Vec<ConfigProblem>) = match settings.validate(source) {
        Ok(r) => (Some(r), Vec::new()),
        Err(e) => (None, e.0),
    };
    if let Some(files) = resolved.as_ref().and_then(|r| r.tls.as_ref()) {
        if let Err(message) = crate::http::server::load_certified_key(files) {
            problems.push(ConfigProblem {
                source: source.into(),
                field: "server.tls_cert_file".into(),
                message,
            });
        }
    }
    let mut skipped = 0usize;
    if let Some(dir) = &settings.tenants_dir {
        let (files, file_problems) = crate::tenant::files::read_dir(dir);
        problems.extend(file_problems);
        // Each connection goes through the same setup as the admin API
        // (metadata parsed, discovery fetched), against a throwaway store.
        if let Some(resolved) = &resolved {
            let clock: SharedClock = Arc::new(SystemClock);
            let store: crate::store::SharedStore = Arc::new(crate::store::memory::MemoryStore::new(clock.clone()));
            if let Ok(ctx) = crate::app::upstream_context(settings, resolved, store, clock) {
                for f in &files {
                    let Ok(tenant) = crate::ids::TenantId::parse(&f.id) else {
                        continue;
                    };
                    for (i, body) in f.connection_bodies().into_iter().enumerate() {
                        if offline && needs_network(&body) {
                            // A user name or password in a metadata URL needs
                            // no IdP to be refused, as set-up refuses it.
                            if let Some(message) = offline_problem(&body) {
                                problems.push(ConfigProblem {
                                    source: f.path.display().to_string(),
                                    field: format!("connections[{i}].metadata_url"),
                                    message,
                                });
                            } else {
                                skipped += 1;
                            }
                            continue;
                        }
                        if let Err(e) =
                            crate::tenant::setup::build_connection(&ctx, &tenant, body, settings.dev.enabled).await
                        {
                            problems.push(ConfigProblem {
                                source: f.path.display().to_string(),
                                field: format!("connections[{i}].{}", e.field),
                                message: e.message,
                            });
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        if skipped > 0 {
            println!(
                "configuration OK ({source}); offline: {skipped} connection(s) need their IdP to be checked and were not fetched"
            );
        } else {
            println!("configuration OK ({source})");
        }
        0
    } else {
        eprintln!("{}", crate::config::ConfigErrors(problems));
        1
    }
}

async fn serve(settings: Settings, source: &str) -> anyhow::Result<i32> {
    let resolved = match settings.validate(source) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    if let Some(files) = &resolved.tls {
        // Refuse to start on an unusable certificate before touching the store.
        if let Err(e) = crate::http::server::load_certified_key(files) {
            eprintln!("invalid configuration:\n  - {source}: server.tls_cert_file: {e}");
            return Ok(2);
        }
    }
    // Before the store and the listeners open their sockets.
    let listeners = if resolved.admin_listen.is_some() { 2 } else { 1 };
    crate::http::server::fit_open_files(listeners, resolved.max_connections);
    let clock: SharedClock = Arc::new(SystemClock);
    let store = crate::app::open_store(&settings, clock.clone()).await?;
    let state = crate::app::build(&settings, &resolved, store, clock).await?;
    let background = crate::app::spawn_background(state.clone(), &settings);
    // Lives as long as the process serves (dropped after the drain).
    let _wake_probe = crate::wake_probe::start_for_gateway();
    let listeners = crate::http::server::Listeners::bind(&resolved).await?;
    let scheme = if resolved.tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "Portcullis listening on {scheme}://{}{} — {}",
        listeners.main.local_addr()?,
        match &listeners.admin {
            Some(a) => format!(" (admin API and metrics on {scheme}://{})", a.local_addr()?),
            None => String::new(),
        },
        crate::app::describe(&settings, &resolved)
    );
    if settings.dev.enabled {
        tracing::warn!(
            "dev mode: the built-in test IdP is on. Try the demo app at {}",
            state.upstream.public("demo")
        );
    }
    if behind_an_untrusted_proxy(&settings, resolved.tls.is_some()) {
        tracing::warn!(
            reason = "throttle.proxy_untrusted",
            "the public URL is https but this gateway serves plain HTTP, so a proxy in front terminates TLS, and [throttle] trusted_proxies names none: every client behind it shares its rate-limit bucket and the audit log records its address; list it in trusted_proxies (PORTCULLIS_TRUSTED_PROXIES)"
        );
    }
    let ended = crate::http::server::serve(state, &resolved, listeners, shutdown_signal()).await?;
    // The background jobs (metadata refresh, audit delivery) stop after the
    // last request: an event a drained request recorded is still delivered.
    background.stop().await;
    match ended {
        crate::http::server::Ended::Drained => Ok(0),
        // Requests were cut off: say so in the exit status.
        crate::http::server::Ended::GraceExceeded => Ok(1),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). A signal handler that cannot be
/// installed is logged, and the other one still works.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!(reason = "shutdown.signal", "shutting down");
}

/// Whether the gateway looks to run behind a TLS-terminating proxy it does
/// not trust: an https public URL, plain HTTP served, no trusted proxy, not
/// dev mode. The proxy's `X-Forwarded-For` is then ignored, so its clients
/// share one rate-limit bucket (`throttle.proxy_untrusted` at start).
fn behind_an_untrusted_proxy(settings: &Settings, serves_tls: bool) -> bool {
    !settings.dev.enabled
        && !serves_tls
        && settings.server.public_url.starts_with("https://")
        && settings.throttle.trusted_proxies.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_url_served_as_plain_http_without_trusted_proxies_is_behind_an_untrusted_proxy() {
        let mut s = Settings::default();
        s.server.public_url = "https://sso.example.com".into();
        assert!(behind_an_untrusted_proxy(&s, false));
        assert!(!behind_an_untrusted_proxy(&s, true), "it terminates TLS itself");
        s.throttle.trusted_proxies = vec!["10.0.0.0/8".into()];
        assert!(!behind_an_untrusted_proxy(&s, false), "the proxy is trusted");
        s.throttle.trusted_proxies.clear();
        s.server.public_url = "http://127.0.0.1:8080".into();
        assert!(
            !behind_an_untrusted_proxy(&s, false),
            "no TLS anywhere: no proxy implied"
        );
        s.server.public_url = "https://sso.example.com".into();
        s.dev.enabled = true;
        assert!(!behind_an_untrusted_proxy(&s, false), "dev mode");
    }
}
