//! Logging: `tracing` with an env filter (`PORTCULLIS_LOG`, default `info`),
//! text or JSON (`PORTCULLIS_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once.
pub fn init() {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
