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

tokio::task_local! {
    /// The span of the request this task serves (set by the edge).
    static REQUEST_SPAN: tracing::Span;
}

/// Runs `f` (a request's handling) with `span` as the request span that
/// [`tag_span`] records on.
pub async fn with_request_span<F: std::future::Future>(span: tracing::Span, f: F) -> F::Output {
    REQUEST_SPAN.scope(span, f).await
}

/// Records `tenant` (and `connection`, when known) on the current request
/// span, which declares both empty (`http::metrics::request_span`), so each
/// log line and exported trace of the request carries them. Ids only: never
/// a user identifier.
pub fn tag_span(tenant: &str, connection: Option<&str>) {
    // Layers inside the edge (the session layer) open spans of their own,
    // so the request span is found through the task, not as the current span.
    let span = REQUEST_SPAN
        .try_with(tracing::Span::clone)
        .unwrap_or_else(|_| tracing::Span::current());
    span.record("tenant", tenant);
    if let Some(c) = connection {
        span.record("connection", c);
    }
}
