//! Logging: `tracing` with an env filter (`PORTCULLIS_LOG`, default `info`),
//! text or JSON (`PORTCULLIS_LOG_FORMAT=json`); each request's span carries
//! its route, tenant and connection ([`tag_span`]).
//!
//! Trace export (cargo feature `otlp`, off by default): when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, the same spans go to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), batched on a background thread, with service name
//! `OTEL_SERVICE_NAME` (default `portcullis`); the exporter's other standard
//! `OTEL_EXPORTER_OTLP_*` variables (headers, timeout) apply. Spans hold ids
//! (tenant, connection, route), never tokens, codes or user identifiers.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Whether trace export is asked for (an OTLP endpoint is configured).
fn otlp_requested() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// Installs the global subscriber (and the OTLP exporter, see the module
/// documentation). Safe to call once; later calls change nothing.
pub fn init() {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otlp")]
    let (registry, otlp_problem) = match otlp::layer(otlp_requested()) {
        Ok(layer) => (registry.with(layer), None),
        Err(problem) => (registry.with(None), Some(problem)),
    };
    // A second subscriber (tests start several gateways) is not an error.
    if registry.try_init().is_err() {
        return;
    }
    #[cfg(feature = "otlp")]
    if let Some(problem) = otlp_problem {
        tracing::error!(reason = "telemetry.otlp_unavailable", problem = %problem, "traces are not exported");
    }
    #[cfg(not(feature = "otlp"))]
    if otlp_requested() {
        tracing::warn!(
            reason = "telemetry.otlp_not_built",
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no trace export (cargo feature `otlp`)"
        );
    }
}

/// Flushes the spans not yet exported (call before the process exits).
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::sync::OnceLock;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The layer that exports spans, when `requested`.
    pub fn layer<S>(
        requested: bool,
    ) -> Result<Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>, String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if !requested {
            return Ok(None);
        }
        // The endpoint, headers and timeout come from the standard
        // OTEL_EXPORTER_OTLP_* variables, read by the exporter itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| e.to_string())?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "portcullis".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("portcullis");
        if PROVIDER.set(provider).is_err() {
            return Err("the trace exporter was already installed".into());
        }
        Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
    }

    /// Flushes and stops the exporter.
    pub fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            if let Err(e) = p.shutdown() {
                tracing::warn!(reason = "telemetry.otlp_flush_failed", error = %e, "some spans were not exported");
            }
        }
    }
}

tokio::task_local! {
    /// The span of the request this task serves (set by the edge).
    static REQUEST_SPAN: tracing::Span;
}

/// Runs `f` (a request's handling) with `span` as the request span that
/// [`tag_span`] records on.
///
/// Not an `async fn`, which would keep `f` twice in its state.
pub fn with_request_span<F: std::future::Future>(
    span: tracing::Span,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST_SPAN.scope(span, f)
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
