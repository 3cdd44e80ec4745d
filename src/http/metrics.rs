//! `GET /metrics`: the Prometheus text exposition of [`crate::meter`], plus
//! the certificate expiry gauges computed at scrape time, and the middleware
//! that measures every request by its matched route template.
//!
//! Where it is served: on a separate admin listener (`PORTCULLIS_ADMIN_LISTEN`,
//! which mounts [`routes`] next to the admin API) without a token unless
//! `[metrics] token` is set; on the public listener only when a token is set
//! (or in dev mode), because the labels name the tenants and connections.
//! No label carries a user identifier, token or secret.

use super::AppState;
use crate::meter;
use axum::extract::{FromRequestParts as _, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route label of a request no route matched (404s, the fallback).
pub const UNMATCHED: &str = "unmatched";

/// The ACS's route template (also the label of a migrated ACS alias path).
pub const ACS_ROUTE: &str = "/saml/{tenant}/{connection}/acs";

/// A response extension naming the route a request really served, for a
/// handler reached through the fallback (a migrated ACS alias path).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// How long a scrape may spend reading certificate dates from the store.
const CERTIFICATES_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/metrics` route, for whichever listener serves it.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

/// Whether the public listener serves `/metrics`: only with a token (or in
/// dev mode). A separate admin listener mounts [`routes`] regardless.
pub fn on_public_listener(state: &AppState) -> bool {
    state.metrics.enabled && (state.metrics.token.is_some() || state.dev)
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !state.metrics.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(expected) = &state.metrics.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let ok: bool = {
            use subtle::ConstantTimeEq;
            presented.as_bytes().ct_eq(expected.expose().as_bytes()).into()
        };
        if !ok {
            // Anyone who reaches the listener can send these: logged at
            // most once a minute, with their number.
            if let Some(refused) = state.refused_scrapes.due() {
                tracing::warn!(
                    reason = "metrics.unauthorized",
                    refused,
                    "metrics scrape without the right token"
                );
            }
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            )
                .into_response();
        }
    }
    let Some(handle) = meter::handle() else {
        tracing::error!(reason = "metrics.not_installed", "no metrics recorder in this process");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut body = handle.render();
    render_in_flight(&mut body, state.in_flight.current(), state.in_flight.max());
    render_admin_in_flight(&mut body, state.admin_in_flight.current(), state.admin_in_flight.max());
    render_connections(&mut body, &state.connections.listeners());
    let connectors = &state.broker.connectors;
    render_connectors(&mut body, connectors.len(), connectors.capacity());
    match tokio::time::timeout(CERTIFICATES_TIMEOUT, state.tenants.certificate_expiries()).await {
        Ok(Ok(list)) => {
            let now = state.upstream.clock.unix();
            render_certificates(&mut body, &list, now);
        }
        // The rest of the scrape is still worth having; the gap shows on the dashboard.
        Ok(Err(e)) => {
            tracing::warn!(reason = "metrics.certificates_unavailable", error = %e, "certificate expiry not scraped")
        }
        Err(_) => tracing::warn!(
            reason = "metrics.certificates_unavailable",
            "certificate expiry timed out"
        ),
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// The replica's requests in flight and its budget, read at scrape time
/// from this replica's own budget (not moved per request, so serving costs
/// no gauge update). Written here rather than through the process's
/// recorder, which every app in the process shares: a scrape always shows
/// the numbers of the replica that answers it.
fn render_in_flight(out: &mut String, current: usize, max: usize) {
    render_gauges(
        out,
        [
            (
                meter::IN_FLIGHT,
                "Requests being served now, counted against max_in_flight (health probes and /metrics excluded).",
                current,
            ),
            (
                meter::MAX_IN_FLIGHT,
                "The most requests this replica serves at once ([server] max_in_flight).",
                max,
            ),
        ],
    );
}

/// The separate admin listener's requests in flight and its own budget
/// (as [`render_in_flight`]): an operator sees it fill before the admin
/// API sheds.
fn render_admin_in_flight(out: &mut String, current: usize, max: usize) {
    render_gauges(
        out,
        [
            (
                meter::ADMIN_IN_FLIGHT,
                "Requests being served now on the admin listener, counted against admin_max_in_flight (0 without one).",
                current,
            ),
            (
                meter::ADMIN_MAX_IN_FLIGHT,
                "The most requests the admin listener serves at once ([server] admin_max_in_flight).",
                max,
            ),
        ],
    );
}

/// Each listener's open connections, its `max_connections` and how often
/// it was at that cap, read at scrape time from the listeners' own slots
/// (as [`render_in_flight`]).
fn render_connections(out: &mut String, listeners: &[Arc<super::server::ListenerSlots>]) {
    if listeners.is_empty() {
        return;
    }
    type Read = fn(&super::server::ListenerSlots) -> u64;
    let families: [(&str, &str, &str, Read); 3] = [
        (
            meter::CONNECTIONS_OPEN,
            "gauge",
            "Connections open now on the listener, TLS handshakes included.",
            |s| s.open() as u64,
        ),
        (
            meter::CONNECTIONS_MAX,
            "gauge",
            "The most connections the listener holds open at once ([server] max_connections).",
            |s| s.max() as u64,
        ),
        (
            meter::CONNECTIONS_AT_CAP,
            "counter",
            "How often the listener had every slot taken and stopped accepting until one was free.",
            |s| s.at_cap(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for slots in listeners {
            let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", slots.listener(), value(slots));
        }
    }
}

/// The replica's built connection validators and their bound, read at
/// scrape time from this replica's own cache (as [`render_in_flight`]).
fn render_connectors(out: &mut String, cached: usize, max: usize) {
    render_gauges(
        out,
        [
            (
                meter::CONNECTORS_CACHED,
                "Connections' validators this replica keeps built (parsed IdP certificates and keys).",
                cached,
            ),
            (
                meter::CONNECTORS_MAX,
                "The most validators this replica keeps built ([upstream] cached_connections).",
                max,
            ),
        ],
    );
}

/// Unlabelled gauges with their help and type.
fn render_gauges<const N: usize>(out: &mut String, gauges: [(&str, &str, usize); N]) {
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Appends `portcullis_certificate_expiry_seconds` for every certificate.
fn render_certificates(out: &mut String, list: &[crate::tenant::expiry::CertificateExpiry], now: i64) {
    if list.is_empty() {
        return;
    }
    let name = meter::CERTIFICATE_EXPIRY;
    let _ = writeln!(
        out,
        "# HELP {name} Seconds until a certificate expires (negative once expired), by tenant, connection and use."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for c in list {
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{}\",connection=\"{}\",use=\"{}\"}} {}",
            escape(c.tenant.as_str()),
            escape(c.connection.as_str()),
            escape(c.usage),
            c.not_after.saturating_sub(now)
        );
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Middleware: records every request's latency under its matched route
/// template (`/saml/{tenant}/{connection}/acs`), never the raw path, so the
/// label set stays bounded; unmatched requests share [`UNMATCHED`].
///
/// Also records the route, and the `{tenant}` and `{connection}` of the path
/// when it has them, on the request span ([`request_span`]).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_str = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let span = tracing::Span::current();
    // The span is off below INFO (`PORTCULLIS_LOG=warn`): then there is
    // nothing to record, and the path parameters are not collected.
    let req = if span.is_disabled() {
        req
    } else {
        span.record("route", route_str);
        let (mut parts, body) = req.into_parts();
        if let Ok(params) = axum::extract::RawPathParams::from_request_parts(&mut parts, &()).await {
            // The admin API names the tenant `{id}` and the connection `{cid}`.
            let admin_tenant = route_str.starts_with("/admin/v1/tenants/{id}");
            for (k, v) in &params {
                match k {
                    "tenant" | "connection" => span.record(k, v),
                    "id" if admin_tenant => span.record("tenant", v),
                    "cid" if admin_tenant => span.record("connection", v),
                    _ => &span,
                };
            }
        }
        Request::from_parts(parts, body)
    };
    let method = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let resp = crate::telemetry::with_request_span(span.clone(), next.run(req)).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    match resp.extensions().get::<RouteLabel>() {
        Some(RouteLabel(served)) => {
            span.record("route", *served);
            meter::http_request(served, method, status, elapsed);
        }
        None => meter::http_request(route_str, method, status, elapsed),
    }
    resp
}

/// The span of one request (opened by the edge, [`super::edge::layer`]):
/// method, request id, client address, the matched route template, and the
/// tenant and connection once known (recorded by [`track`] and
/// [`crate::telemetry::tag_span`]). Never the raw path or query: they can
/// hold setup-link tokens, codes and handles. At INFO, so exported traces
/// have it.
pub fn request_span(method: &axum::http::Method, request_id: &str, client_ip: std::net::IpAddr) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = method.as_str(),
        request_id,
        client_ip = %client_ip,
        route = tracing::field::Empty,
        tenant = tracing::field::Empty,
        connection = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_time_gauges_are_written_with_their_help_and_type() {
        type Render = fn(&mut String, usize, usize);
        let cases: [(Render, [(&str, usize); 2]); 3] = [
            (
                render_in_flight,
                [
                    ("portcullis_requests_in_flight", 3),
                    ("portcullis_requests_max_in_flight", 256),
                ],
            ),
            (
                render_admin_in_flight,
                [
                    ("portcullis_admin_requests_in_flight", 1),
                    ("portcullis_admin_requests_max_in_flight", 64),
                ],
            ),
            (
                render_connectors,
                [
                    ("portcullis_connectors_cached", 12),
                    ("portcullis_connectors_cached_max", 10_000),
                ],
            ),
        ];
        for (render, gauges) in cases {
            let mut out = String::new();
            render(&mut out, gauges[0].1, gauges[1].1);
            for (name, value) in gauges {
                assert!(out.contains(&format!("# TYPE {name} gauge\n{name} {value}\n")), "{out}");
            }
            assert_eq!(out.matches("# HELP ").count(), 2, "{out}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
