//! The edge: the only code that knows axum. Handlers convert a request,
//! call the broker, provider or admin domain, and map the result to HTTP.

pub mod binding;
pub mod cors;
pub mod deadline;
pub mod dev;
pub mod edge;
pub mod flows;
pub mod forward;
pub mod health;
pub mod local;
pub mod metrics;
pub mod mfa;
pub mod oauth;
pub mod pages;
pub mod pairs;
pub mod passkey;
pub mod quiet;
pub mod server;
pub mod shed;

use crate::broker::Broker;
use crate::provider::Provider;
use crate::secret::Secret;
use crate::store::SharedStore;
use crate::tenant::TenantRegistry;
use crate::upstream::UpstreamContext;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The sign-in broker.
    pub broker: Broker,
    /// The OIDC provider.
    pub provider: Provider,
    /// Tenants and connections.
    pub tenants: TenantRegistry,
    /// Connector context (public URL, outbound client, clock, store).
    pub upstream: UpstreamContext,
    /// The store.
    pub store: SharedStore,
    /// The platform admin token; `None` disables the admin API.
    pub admin_token: Option<Secret>,
    /// Development mode (built-in IdP, demo app).
    pub dev: bool,
    /// Browser session settings.
    pub session: SessionConfig,
    /// Checks domain verification TXT records (`[dns]`).
    pub domains: crate::tenant::domains::DomainVerifier,
    /// Draining or serving (`/readyz` turns unready when a drain starts).
    pub lifecycle: server::Lifecycle,
    /// Every listener's connection slots (`[server] max_connections`), for
    /// `/metrics`; filled in when serving starts.
    pub connections: server::Connections,
    /// `[metrics]`: whether and how `/metrics` is served.
    pub metrics: crate::config::MetricsSettings,
    /// Scrapes of `/metrics` refused for a wrong token, logged at most once
    /// a minute (`metrics.unauthorized`).
    pub refused_scrapes: Arc<quiet::Quiet>,
    /// Client addresses, request ids, size and rate limits (`[throttle]`).
    pub edge: Arc<edge::EdgeConfig>,
    /// Local accounts (`"kind":"local"` connections) and their mail.
    pub accounts: crate::local::Accounts,
    /// The public listener's budget of requests in flight (`[server]
    /// max_in_flight`; the only listener's without `admin_listen`), with
    /// its share per client address (`max_in_flight_per_client`).
    pub in_flight: Arc<shed::InFlight>,
    /// The admin listener's own budget (`[server] admin_max_in_flight`),
    /// so neither listener's saturation sheds the other's requests.
    pub admin_in_flight: Arc<shed::InFlight>,
    /// Discovery served from bytes serialised once per change.
    pub published: Arc<oauth::PublishedDocs>,
    /// `[quotas]`: what a tenant's own admin may give its tenant or have
    /// the gateway do for it (the admin API's and the setup portal's checks).
    pub quotas: crate::config::QuotaSettings,
}

/// How browser-session cookies are set.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Cookie name.
    pub cookie_name: String,
    /// Lifetime after the last use.
    pub ttl: Duration,
    /// `Secure` attribute (public URL is https).
    pub secure: bool,
}

/// The browser session cookie's name for the configured `configured`: on
/// an https public URL with the `__Host-` prefix, which browsers accept only
/// from this very host, `Secure`, with `Path=/` and no `Domain`; so neither a
/// sibling nor a parent domain can plant or shadow it, nor the bindings
/// cookie (`<name>_logins`) that shares the prefix. Plain http (dev) cannot
/// use the prefix and keeps the name as configured.
pub fn session_cookie_name(configured: &str, secure: bool) -> String {
    const HOST: &str = "__Host-";
    if secure && !configured.starts_with(HOST) {
        format!("{HOST}{configured}")
    } else {
        configured.to_owned()
    }
}

/// The largest request body accepted anywhere (the admin API and the
/// portal); each route class has its own, smaller or equal, limit
/// ([`edge::RouteClass::max_body`]).
pub const MAX_BODY_BYTES: usize = edge::MAX_ADMIN_BODY;

/// Builds the whole router: everything on one listener (no
/// `[server] admin_listen`): the public routes and the admin ones.
pub fn router(state: Arc<AppState>) -> Router {
    let budget = state.in_flight.clone();
    finish(
        public_routes(&state)
            .merge(admin_routes(&state, metrics::on_public_listener(&state)))
            .fallback(flows::fallback),
        &state,
        budget,
    )
}

/// The router of the public listener when the admin API has its own
/// listener: browsers, apps, IdPs, the setup portal (tenant admins reach it
/// from outside) and the health probes. `/admin/...` and `/metrics` answer 404.
pub fn public_router(state: Arc<AppState>) -> Router {
    let budget = state.in_flight.clone();
    finish(public_routes(&state).fallback(flows::fallback), &state, budget)
}

/// The router of the admin listener (`[server] admin_listen`): the admin
/// API with its OpenAPI document, `/metrics` and the health probes, on a
/// budget of its own (`[server] admin_max_in_flight`).
pub fn admin_router(state: Arc<AppState>) -> Router {
    let budget = state.admin_in_flight.clone();
    finish(
        admin_routes(&state, true)
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            // Only the admin API here: no migrated ACS aliases.
            .fallback(flows::not_found),
        &state,
        budget,
    )
}

/// What only operators need: the admin API (and its OpenAPI document) and,
/// with `with_metrics`, `/metrics`. The one place operator-only routes are
/// added. The admin listener always serves the metrics; a shared listener
/// only with a `[metrics] token` or in dev mode (`metrics::on_public_listener`),
/// because their labels name the tenants.
fn admin_routes(state: &Arc<AppState>, with_metrics: bool) -> Router<Arc<AppState>> {
    let routes = Router::new().nest("/admin/v1", crate::admin::routes(state));
    if with_metrics && state.metrics.enabled {
        routes.merge(metrics::routes())
    } else {
        routes
    }
}

/// A browser request with a record of what it writes of its session
/// ([`crate::store::session::request_scope`]).
async fn session_scope(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    crate::store::session::request_scope(next.run(req)).await
}

/// Everything browsers, apps and IdPs reach.
fn public_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let sessions = SessionManagerLayer::new(crate::store::session::StoreSessionStore::new(
        state.store.clone(),
        state.provider.clock.clone(),
        state.session.ttl,
    ))
    .with_name(state.session.cookie_name.clone())
    .with_http_only(true)
    .with_same_site(SameSite::Lax)
    .with_secure(state.session.secure)
    .with_path("/")
    .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::seconds(
        i64::try_from(state.session.ttl.as_secs()).unwrap_or(3600),
    )));

    let mut browser = Router::new()
        .route("/authorize", get(oauth::authorize_get).post(oauth::authorize_post))
        .route("/logout", get(oauth::logout_get).post(oauth::logout_post))
        .route("/oidc/{tenant}/{connection}/callback", get(flows::oidc_callback))
        .route(
            "/saml/{tenant}/{connection}/continue",
            get(flows::saml_continue).post(flows::saml_continue_confirmed),
        )
        .merge(mfa::routes())
        .merge(passkey::routes());
    browser = browser.merge(local::routes());
    if state.dev {
        browser = browser.merge(dev::routes());
    }
    // tower-sessions answers 500 when it cannot save the session after the
    // handler ran; the two maps around it turn that into the 503 page.
    let browser = browser
        .layer(axum::middleware::map_response(edge::mark_handler_status))
        .layer(sessions)
        // Outside the session layer: its save after the handler skips a
        // record the handler already wrote unchanged.
        .layer(axum::middleware::from_fn(session_scope))
        .layer(axum::middleware::map_response(edge::session_save_failed));

    // What single-page apps call from their own origin: readable from any
    // origin (`cors.rs`, whose headers the edge adds by path); nothing else is.
    let spa = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(oauth::discovery).options(cors::preflight),
        )
        .route("/jwks", get(oauth::jwks).options(cors::preflight))
        .route("/token", post(oauth::token).options(cors::preflight))
        .route(
            "/userinfo",
            get(oauth::userinfo).post(oauth::userinfo).options(cors::preflight),
        )
        .route("/revoke", post(oauth::revoke).options(cors::preflight));
    let api = Router::new()
        .merge(spa)
        .route("/introspect", post(oauth::introspect))
        // Any method: nginx's auth_request sends the original request's.
        .route("/forward-auth", axum::routing::any(forward::forward_auth))
        // Envoy ext_authz appends the original path to its prefix.
        .route(
            "/forward-auth/{*original}",
            axum::routing::any(forward::forward_auth_prefixed),
        )
        // The ACS is reached by a cross-site POST without the session cookie:
        // outside the session layer, it cannot create or replace one.
        .route(metrics::ACS_ROUTE, post(flows::saml_acs))
        .route("/saml/{tenant}/{connection}/metadata", get(flows::saml_metadata))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));

    Router::new().merge(browser).merge(api).merge(crate::portal::routes())
}

/// The layers every listener shares: load shedding over the listener's
/// `budget`, per client address too (outermost), the edge (client address,
/// request id, the request's span and audit scope, size and rate limits,
/// the security headers of every response), the body limit and the route
/// metrics.
fn finish(routes: Router<Arc<AppState>>, state: &Arc<AppState>, budget: Arc<shed::InFlight>) -> Router {
    // The shedding layer sits outside the edge, so it sets the security
    // headers of its own 503s.
    let https = state.upstream.public_url.scheme() == "https";
    routes
        // Inside the router's layers, so the matched route template is known.
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge::layer))
        // Outermost: a request over the listener's budget, or over its
        // client address's share, is refused before any work, above all
        // before its body is read and the rate limiter's store round trip.
        .layer(shed::ShedLayer::new(budget, https).client_addresses(state.edge.clone()))
        .with_state(state.clone())
}
