//! The command line: `serve` (the default), `check-config`, `import FILE`,
//! `--version`.

use crate::clock::{SharedClock, SystemClock};
use crate::config::{ConfigProblem, Settings};
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
    CheckConfig,
    /// Create tenants and connections from a JSON export (docs/IMPORT.md):
    /// every problem is reported at once, and nothing is created unless
    /// the whole file is valid.
    Import {
        /// The export file (native format or a SAML Jackson / Ory Polis export).
        file: PathBuf,
    },
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
        Command::CheckConfig => Ok(check_config(&settings, &source).await),
        Command::Serve => serve(settings, &source).await,
        Command::Import { file } => import(settings, &source, &file).await,
    }
}

/// `portcullis import FILE`: exit 0 with a summary, 1 with every problem
/// (nothing created), 2 when the configuration is invalid.
async fn import(settings: Settings, source: &str, file: &std::path::Path) -> anyhow::Result<i32> {
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
    let store = crate::app::open_store(&settings, clock.clone()).await?;
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

async fn check_config(settings: &Settings, source: &str) -> i32 {
    let (resolved, mut problems): (_, Vec<ConfigProblem>) = match settings.validate(source) {
        Ok(r) => (Some(r), Vec::new()),
        Err(e) => (None, e.0),
    };
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
        println!("configuration OK ({source})");
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
    let clock: SharedClock = Arc::new(SystemClock);
    let store = crate::app::open_store(&settings, clock.clone()).await?;
    let state = crate::app::build(&settings, &resolved, store, clock).await?;
    crate::app::spawn_background(state.clone(), &settings);
    let listener = tokio::net::TcpListener::bind(resolved.listen).await?;
    tracing::info!(
        "Portcullis listening on {} — {}",
        listener.local_addr()?,
        crate::app::describe(&settings, &resolved)
    );
    if settings.dev.enabled {
        tracing::warn!(
            "dev mode: the built-in test IdP is on. Try the demo app at {}",
            state.upstream.public("demo")
        );
    }
    // The peer address is the client's (or its proxy's): rate limits count by it.
    axum::serve(
        listener,
        crate::http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(0)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
