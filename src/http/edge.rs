//! The outermost layer every request passes: who is asking (client address,
//! request id), how big the request may be (URL, headers, body per route),
//! and how often (rate limits per route class, per client address and per
//! tenant, counted in the store so they hold across replicas).
//!
//! * The client address is the socket's peer, unless that peer is one of
//!   `[throttle] trusted_proxies`: then it is the right-most address of
//!   `X-Forwarded-For` that is not a trusted proxy. A forwarded header from
//!   anyone else is ignored, so a client cannot pick its own bucket.
//! * Every response carries `x-request-id`: the caller's (from trusted
//!   proxies, and on the admin API; only a short token of safe characters)
//!   or a fresh random one.
//!   The id is in the request's log span and in audit events.
//! * Over a limit: 429 with `Retry-After` (seconds), in the route's error
//!   format (RFC 6749 JSON, problem+json, or a page), the counter
//!   `portcullis_throttled_total{route}`, a `throttle.exceeded` log line and
//!   an audit event (once per limit window and bucket, so a flood does not
//!   flood the audit log).
//! * A browser signed in to a tenant (a live SSO session of it in its
//!   browser session) passes the tenant's spent budget on `/authorize`:
//!   anyone can spend that budget, and its people already signed in need no
//!   IdP to reach the next app; each session so at most
//!   [`SIGNED_IN_AUTHORIZES_PER_SESSION`] times an hour ([`signed_in_to`]).
//! * A callback counts in its tenant's anonymous bucket; once that is
//!   spent, it goes on only if it is the tenant's own sign-in, in the
//!   tenant's own callback budget ([`OwnFallback`]): strangers naming the
//!   tenant spend only the anonymous bucket.
//! * When the store cannot count, the route class decides (see
//!   [`RouteClass::fail_open`]).
//! * Every 503 carries `Retry-After`.

use super::pages;
use super::AppState;
use crate::broker::session::BrowserLogins;
use crate::broker::PrefetchedCallback;
use crate::config::throttle::{canonical, Cidr};
use crate::config::{RouteLimit, ThrottleSettings};
use crate::ids::TenantId;
use crate::provider::grants::PrefetchedClient;
use crate::store::{Key, RateDecision, StoreError};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize as _;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The longest request target (path and query) accepted, bytes (414 above).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// The most request headers accepted (431 above).
pub const MAX_HEADERS: usize = 64;
/// The most bytes of request headers accepted, names and values (431 above).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The SAML ACS (and a migrated ACS alias): a signed, possibly encrypted
/// response with many attributes, base64-encoded.
pub const MAX_ACS_BODY: usize = 256 * 1024;
/// The admin API and the portal (SAML metadata documents).
pub const MAX_ADMIN_BODY: usize = 512 * 1024;
/// `/token`, `/revoke`, `/introspect`, `/userinfo` and every other form.
pub const MAX_SMALL_BODY: usize = 16 * 1024;
/// `Retry-After` on a 503 (seconds): the store's deadline is two seconds and
/// it reconnects by itself.
pub const UNAVAILABLE_RETRY_SECS: u64 = 5;
/// The longest request id taken from a trusted proxy.
const MAX_REQUEST_ID: usize = 64;

/// The edge's settings, parsed once.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `[throttle]`.
    pub throttle: ThrottleSettings,
    /// `[throttle] trusted_proxies`, parsed.
    pub proxies: Vec<Cidr>,
    /// `[server] body_timeout_secs`: how long a request's body may take.
    pub body_timeout: Duration,
    /// Tenants whose deferred budget (token endpoints, admin API) this
    /// replica saw spent, and until when ([`SpentBudgets`]).
    spent: Arc<SpentBudgets>,
    /// Requests with `X-Forwarded-For` from a peer that is not trusted
    /// ([`EdgeConfig::note_untrusted_forward`]).
    untrusted_forwards: Arc<super::quiet::Quiet>,
}

impl EdgeConfig {
    /// From the validated settings.
    pub fn new(throttle: &ThrottleSettings, body_timeout: Duration) -> Self {
        Self {
            throttle: throttle.clone(),
            proxies: throttle.proxies(),
            body_timeout,
            spent: Arc::default(),
            untrusted_forwards: Arc::new(super::quiet::Quiet::new(UNTRUSTED_FORWARD_LOG_EVERY)),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|p| p.contains(ip))
    }

    /// A request from `peer`, which is not a trusted proxy, carries
    /// `X-Forwarded-For`: most likely a proxy in front of the gateway that
    /// `[throttle] trusted_proxies` does not name, so every client it
    /// forwards shares its rate-limit bucket and its address in the audit
    /// log. Logged at most once a minute (`throttle.forwarded_untrusted`);
    /// the header is still ignored.
    fn note_untrusted_forward(&self, peer: IpAddr) {
        if let Some(requests) = self.untrusted_forwards.due() {
            tracing::warn!(
                reason = "throttle.forwarded_untrusted",
                peer = %peer,
                requests,
                "a request carries X-Forwarded-For from a peer that is not a trusted proxy: the header is ignored, so every client behind that proxy shares its rate-limit bucket; list the proxy in [throttle] trusted_proxies (PORTCULLIS_TRUSTED_PROXIES)"
            );
        }
    }
}

/// How often `throttle.forwarded_untrusted` may be logged.
const UNTRUSTED_FORWARD_LOG_EVERY: Duration = Duration::from_secs(60);

/// The request's id, as an extension (also set as the `x-request-id`
/// request header, which the admin API reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client's address as the edge determined it, as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// What a route is, for limits and for the shape of its error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/authorize`: a page.
    Authorize,
    /// The IdP callbacks (SAML ACS, its continuation (not counted:
    /// [`continues_a_counted_acs`]), OIDC and dev callbacks, a POST to an
    /// unknown path that may be an ACS alias): a page.
    Callback,
    /// `/token`, `/revoke`, `/introspect`, `/userinfo`: RFC 6749 JSON.
    Token,
    /// Setup links and the setup portal: a page.
    Portal,
    /// The admin API: problem+json.
    Admin,
    /// Everything else (discovery, JWKS, metadata, health, logout, demo,
    /// forward auth, which a proxy calls for every API request and which
    /// guesses no secret): not rate limited.
    Other,
}

impl RouteClass {
    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Callback => "callback",
            Self::Token => "token",
            Self::Portal => "portal",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }

    /// Which class `path` (with `method`) belongs to, and the tenant its
    /// path names, if any.
    pub fn of(method: &Method, path: &str) -> (RouteClass, Option<String>) {
        // No allocation: the exact patterns have at most four segments, so
        // a longer path keeps its first six (still longer than any of them)
        // and the prefix patterns see the same first segments.
        let mut segments = [""; 6];
        let mut count = 0;
        for (slot, s) in segments.iter_mut().zip(path.trim_start_matches('/').split('/')) {
            *slot = s;
            count += 1;
        }
        let segments = segments.get(..count).unwrap_or_default();
        match segments {
            ["authorize"] => (Self::Authorize, None),
            ["token" | "revoke" | "introspect" | "userinfo"] => (Self::Token, None),
            ["oidc", t, _, "callback"]
            | ["saml", t, _, "acs" | "continue"]
            | ["dev", t, _, "callback" | "login"]
            | ["local", t, _, _]
            | ["mfa", t, _]
            | ["mfa", t, _, "continue" | "passkey"] => (Self::Callback, Some((*t).to_owned())),
            ["setup", _] => (Self::Portal, None),
            ["portal", ..] => (Self::Portal, None),
            ["admin", "v1", "tenants", t, ..] => (Self::Admin, Some((*t).to_owned())),
            ["admin", ..] => (Self::Admin, None),
            ["saml", _, _, "metadata"]
            | ["jwks" | "healthz" | "readyz" | "logout" | "metrics" | "demo"]
            | ["forward-auth", ..]
            | [".well-known", ..]
            | ["demo", ..] => (Self::Other, None),
            // A POST anywhere else may be a migrated connection's ACS alias.
            _ if method == Method::POST => (Self::Callback, None),
            _ => (Self::Other, None),
        }
    }

    /// The largest body the class accepts.
    pub fn max_body(self, path: &str) -> usize {
        match self {
            Self::Callback
                if !path.ends_with("/continue")
                    && !path.starts_with("/dev/")
                    && !path.starts_with("/local/")
                    && !path.starts_with("/mfa/") =>
            {
                MAX_ACS_BODY
            }
            Self::Admin | Self::Portal => MAX_ADMIN_BODY,
            Self::Authorize | Self::Callback | Self::Token | Self::Other => MAX_SMALL_BODY,
        }
    }

    /// Whether a request is let through when the store cannot count it.
    ///
    /// Only `/authorize` fails open: it guesses no secret, and it needs the
    /// store itself to store the pending login, so it answers 503 on its own
    /// when the store is really down; a store that fails only for the
    /// limiter's key (one Redis Cluster slot) does not stop sign-ins from
    /// starting. Every other class fails closed (503): the token endpoint,
    /// the callbacks, setup links and the admin API are where codes, refresh
    /// tokens, client secrets, setup tokens and API keys are guessed, so
    /// they are never left unlimited.
    pub fn fail_open(self) -> bool {
        matches!(self, Self::Authorize)
    }

    fn limit(self, t: &ThrottleSettings) -> Option<RouteLimit> {
        match self {
            Self::Authorize => Some(t.authorize),
            Self::Callback => Some(t.callback),
            Self::Token => Some(t.token),
            Self::Portal => Some(t.portal),
            Self::Admin => Some(t.admin),
            Self::Other => None,
        }
    }

    fn tenant_override(self, t: &crate::tenant::TenantThrottle) -> Option<crate::tenant::TenantLimit> {
        match self {
            Self::Authorize => t.authorize,
            Self::Callback => t.callback,
            Self::Token => t.token,
            Self::Admin => t.admin,
            Self::Portal | Self::Other => None,
        }
    }
}

/// The client address: the socket's peer, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` address that is not a trusted
/// proxy (the left-most one when every hop is trusted). An entry that is not
/// an address stops the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, config: &EdgeConfig) -> IpAddr {
    let peer = canonical(peer);
    if !config.trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !config.trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// The bucket of a client address: IPv4 by address, IPv6 by /64 (one
/// customer line gets a whole /64).
pub fn ip_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let [a, b, c, d, ..] = s;
            format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
        }
    }
}

/// The caller's request id when it came from a trusted proxy and is a short
/// token of safe characters; otherwise a fresh one.
fn request_id(headers: &HeaderMap, from_trusted_proxy: bool) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|_| from_trusted_proxy)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| crate::tokens::random_token(16), str::to_owned)
}

/// The edge middleware (see the module documentation). It also opens the
/// request's log span ([`super::metrics::request_span`]) and the audit
/// scope of its request id ([`crate::audit::in_request`]): one layer, not
/// three, on every request.
pub async fn layer(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let config = &state.edge;
    // The shedding layer determined it already when it counts addresses.
    let ip = match (req.extensions().get::<ClientIp>(), peer) {
        (Some(known), _) => known.0,
        (None, Some(peer)) => client_ip(peer, req.headers(), config),
        (None, None) => {
            // A server started without `into_make_service_with_connect_info`:
            // a wiring bug. Limits still hold, on one shared bucket.
            tracing::error!(
                reason = "edge.no_peer_address",
                "the server does not pass the peer address"
            );
            IpAddr::from([0, 0, 0, 0])
        }
    };
    if let Some(peer) = peer {
        if ip == canonical(peer) && !config.trusted(ip) && req.headers().contains_key("x-forwarded-for") {
            config.note_untrusted_forward(ip);
        }
    }
    let (class, path_tenant) = RouteClass::of(req.method(), req.uri().path());
    let spa = super::cors::is_spa_path(req.uri().path());
    // A caller's id is taken from a trusted proxy, and on the admin API,
    // whose callers correlate their own changes in the audit log (sanitised
    // either way: a short token of safe characters).
    let id = request_id(
        req.headers(),
        class == RouteClass::Admin || peer.is_some_and(|p| config.trusted(canonical(p))),
    );
    let id_value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &id_value {
        req.headers_mut().insert("x-request-id", v.clone());
    }
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientIp(ip));
    let span = super::metrics::request_span(req.method(), &id, ip);
    let (parts, body) = req.into_parts();
    let (body, deadline) = super::deadline::wrap(body, config.body_timeout);
    let req = Request::from_parts(parts, body);
    let admitted = admit(&state, req, ip, class, path_tenant, &id, next);
    let mut resp = crate::audit::in_request(id.clone(), admitted)
        .instrument(span.clone())
        .await;
    if deadline.is_some_and(|d| d.expired()) {
        // Whatever the reader made of the error (the edge's own form read,
        // an extractor's 400, a handler's page), the client hears that its
        // body was too slow.
        resp = span.in_scope(|| body_timeout(class));
    }
    // The edge's own answers (429, 413...) carry the headers every response
    // does, and on the endpoints for single-page apps the CORS ones.
    pages::security_headers(&mut resp, state.upstream.public_url.scheme() == "https");
    super::cors::add_on_spa_path(spa, &mut resp);
    let headers = resp.headers_mut();
    if let Some(v) = id_value {
        headers.insert("x-request-id", v);
    }
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && !resp.headers().contains_key(header::RETRY_AFTER) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_SECS));
    }
    resp
}

/// Size checks, then the limits, then the request itself.
async fn admit(
    state: &AppState,
    req: Request,
    ip: IpAddr,
    class: RouteClass,
    path_tenant: Option<String>,
    request_id: &str,
    next: Next,
) -> Response {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URL_BYTES {
        return refuse(
            class,
            StatusCode::URI_TOO_LONG,
            "request.url_too_long",
            "The address is too long.",
        );
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.as_bytes().len() + 4)
        .sum();
    if req.headers().len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return refuse(
            class,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request.headers_too_large",
            "The request headers are too large.",
        );
    }
    let max_body = class.max_body(req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return refuse(
            class,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.body_too_large",
            "The request body is too large.",
        );
    }
    let (parts, body) = req.into_parts();
    let mut body = axum::body::Body::new(http_body_util::Limited::new(body, max_body));
    // The token endpoint names its tenant inside the body (codes and refresh
    // tokens start with it), a POSTed /authorize in its `tenant` field: read
    // the small form once and hand it on.
    let mut tenant = path_tenant;
    let mut client_id = None;
    let mut client_secret = None;
    let mut refresh_token = None;
    let mut code = None;
    let mut parsed_form = None;
    // What `/authorize` names (its app, tenant and connection), from the
    // pairs its handler reads: the form of a POST, else the query.
    let mut authorize_names = None;
    // What an IdP's answer names: its route's tenant and connection, and
    // the pending login (a SAML ACS's RelayState, a callback's `state`).
    let mut answer_names = None;
    let names_tenant_in_body = matches!(class, RouteClass::Token | RouteClass::Authorize);
    let acs = class == RouteClass::Callback && parts.method == Method::POST && answer_route(parts.uri.path()).is_some();
    if state.edge.throttle.enabled && (names_tenant_in_body || acs) && parts.method == Method::POST {
        let bytes = match axum::body::to_bytes(body, max_body).await {
            Ok(b) => b,
            Err(_) => {
                return refuse(
                    class,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request.body_too_large",
                    "The request body is too large.",
                )
            }
        };
        let form = super::pairs::parse(&bytes);
        if acs {
            answer_names = answer_route(parts.uri.path()).zip(first_value(&form, "RelayState"));
        } else {
            tenant = form_tenant(class, parts.uri.path(), &form);
        }
        if class == RouteClass::Authorize {
            authorize_names = named_by_authorize(&form);
        }
        if class == RouteClass::Token && parts.uri.path() != "/userinfo" {
            let hints = super::oauth::token_hints(&parts.headers, &form);
            (client_id, client_secret, refresh_token, code) =
                (hints.client_id, hints.client_secret, hints.refresh_token, hints.code);
        }
        parsed_form = Some(super::pairs::ParsedForm(form));
        body = axum::body::Body::from(bytes);
    }
    // A GET /authorize names everything in its query; a POST whose form
    // names no tenant may name it there. (Only the limits use these.)
    let get = parts.method == Method::GET;
    if state.edge.throttle.enabled && class == RouteClass::Authorize && (get || tenant.is_none()) {
        let query = super::pairs::parse(parts.uri.query().unwrap_or_default().as_bytes());
        if get {
            authorize_names = named_by_authorize(&query);
        }
        if tenant.is_none() {
            tenant = form_tenant(class, parts.uri.path(), &query);
        }
    }
    if state.edge.throttle.enabled && class == RouteClass::Callback && get {
        if let Some(route) = answer_route(parts.uri.path()) {
            let query = super::pairs::parse(parts.uri.query().unwrap_or_default().as_bytes());
            answer_names = first_value(&query, "state").map(|id| (route, id));
        }
    }
    // The tenant segment as the handler's `Path` will read it: `%61cme` is
    // `acme`, and counts against acme's limit.
    let tenant = tenant.and_then(|t| {
        if t.contains('%') {
            let decoded = percent_encoding::percent_decode_str(&t).decode_utf8().ok()?;
            TenantId::parse(&decoded).ok()
        } else {
            TenantId::parse(&t).ok()
        }
    });
    let mut parts = parts;
    if let Some(form) = parsed_form {
        parts.extensions.insert(form);
    }
    // The tenant's budget on the token endpoints, to charge while the
    // handler runs; on the admin API, once the handler shows the caller
    // authenticated for the tenant (see `TenantCharge`).
    let mut charge = None;
    let mut charge_if_in_scope = None;
    if state.edge.throttle.enabled && !continues_a_counted_acs(parts.uri.path()) {
        if let Some(limit) = class.limit(&state.edge.throttle) {
            // The app the request names, and the family of the refresh
            // token it presents, are read alongside the limiter's work (one
            // store wait for all). Only reads, handed to the handler, which
            // still authenticates the client before using them; a failed
            // read hands nothing on (the handler reads again and answers).
            // Boxed, and only when there is something to read: their
            // futures are large, and this one is moved whole on every
            // request (`docs/performance-log.md`, twenty-second pass).
            let prefetch = client_id.map(|id| {
                Box::pin(async {
                    let peek = async {
                        let token = refresh_token?;
                        let family = state.provider.peek_refresh(&token).await.ok()?;
                        Some((token, family))
                    };
                    // Likewise what a code grants, only read: the grant
                    // still takes the code.
                    let peek_code = async {
                        let code = code?;
                        let authz = state.provider.peek_code(&code).await.ok()?;
                        Some((code, authz))
                    };
                    let (client, refresh, code) = tokio::join!(state.provider.clients.get(&id), peek, peek_code);
                    Some(PrefetchedClient {
                        id,
                        client: client.ok()?,
                        refresh,
                        code,
                    })
                })
            });
            // Likewise what an authorization request reads first: its app
            // and its tenant's configuration.
            let prefetch_authorize = authorize_names.map(|(client_id, tenant, connection)| {
                Box::pin(state.broker.prefetch_authorize(client_id, tenant, connection))
            });
            // Likewise what an IdP's answer reads first: its connection's
            // configuration and its pending login, only peeked.
            let prefetch_answer = answer_names.map(|((tenant, connection), login_id)| {
                Box::pin(state.broker.prefetch_callback(tenant, connection, login_id))
            });
            let (checked, prefetched, prefetched_authorize, prefetched_answer) = tokio::join!(
                check(state, class, limit, ip, tenant.as_ref(), request_id, &parts.headers),
                async {
                    match prefetch {
                        Some(read) => read.await,
                        None => None,
                    }
                },
                async {
                    match prefetch_authorize {
                        Some(read) => read.await,
                        None => None,
                    }
                },
                async {
                    match prefetch_answer {
                        Some(read) => read.await,
                        None => None,
                    }
                }
            );
            let checked = match checked {
                // Rare (a spent anonymous bucket), and boxed: every request
                // moves `admit`'s future, which would otherwise hold this
                // path's reads.
                Ok(Checked::AnonymousSpent(fallback)) => {
                    match Box::pin(settle_anonymous(
                        state,
                        fallback,
                        &parts,
                        (body, max_body),
                        prefetched_answer.as_ref(),
                        request_id,
                    ))
                    .await
                    {
                        Ok((checked, kept)) => {
                            body = kept;
                            checked
                        }
                        Err(refused) => return refused,
                    }
                }
                other => other,
            };
            match checked {
                // Settled just above; never left unsettled.
                Ok(Checked::AnonymousSpent(f)) => return too_many(class, f.refused.retry_after),
                Ok(Checked::Within(record, deferred)) if class == RouteClass::Admin => {
                    charge_if_in_scope = deferred;
                    if let Some(t) = record {
                        parts.extensions.insert(crate::tenant::FreshTenant(t));
                    }
                }
                Ok(Checked::Within(record, deferred)) => {
                    charge = deferred.filter(|d| {
                        prefetched
                            .as_ref()
                            .is_some_and(|p| presents_own_credentials(state, p, client_secret.as_deref(), &d.tenant))
                    });
                    // Read for this request: the handler uses it instead of
                    // reading the tenant again.
                    if let Some(t) = record {
                        parts.extensions.insert(crate::tenant::FreshTenant(t));
                    }
                    if let Some(p) = prefetched {
                        parts.extensions.insert(p);
                    }
                    if let Some(p) = prefetched_authorize {
                        // Shared, not copied, into the handler's future.
                        parts.extensions.insert(std::sync::Arc::new(p));
                    }
                    if let Some(p) = prefetched_answer {
                        parts.extensions.insert(std::sync::Arc::new(p));
                    }
                }
                Ok(Checked::Refused(resp)) => return resp,
                Err(e) if class.fail_open() => {
                    tracing::warn!(reason = "throttle.store_unavailable", route = class.as_str(), error = %e, "not counted; let through");
                }
                Err(e) => {
                    tracing::error!(reason = "throttle.store_unavailable", route = class.as_str(), error = %e, "not counted; refused");
                    return unavailable(class);
                }
            }
        }
    }
    let req = Request::from_parts(parts, body);
    match (charge, charge_if_in_scope) {
        // Counted beside the handler's own store work, so the request
        // waits for nothing more; before the answer leaves, so the next
        // request sees the budget this one spent.
        (Some(charge), _) => tokio::join!(next.run(req), charge.run(state, class)).0,
        // Anyone can name a tenant in an admin path: only a caller the
        // admin API let in for it spends its budget.
        (None, Some(charge)) => {
            let resp = next.run(req).await;
            if resp.extensions().get::<InScope>().is_some() {
                charge.run(state, class).await;
            }
            resp
        }
        (None, None) => next.run(req).await,
    }
}

/// Marks an admin answer whose caller authenticated and was in scope for
/// the route (the admin API's guard sets it): only such a request spends
/// the budget of the tenant its path names.
#[derive(Debug, Clone, Copy)]
pub struct InScope;

/// Whether a token, revocation or introspection request is the app's own
/// (so it may spend the budget of `tenant`, the tenant its code or token
/// names): the app exists and serves `tenant`, and it presented its
/// current secret, or, for a public app (which has none), the code or
/// refresh token it presented exists and was issued to it for `tenant`.
/// Only reads what the edge already read (the app's record, the peeked code
/// or family); the handler still authenticates the client itself.
fn presents_own_credentials(
    state: &AppState,
    prefetched: &PrefetchedClient,
    secret: Option<&str>,
    tenant: &TenantId,
) -> bool {
    let Some(client) = &prefetched.client else {
        return false;
    };
    if !client.allows_tenant(tenant) {
        return false;
    }
    let issued_here =
        |authz: &crate::provider::codes::Authorization| authz.tenant == *tenant && authz.client_id == client.client_id;
    match secret {
        Some(secret) => client.secret_matches(secret, state.provider.clock.now()),
        None => {
            client.is_public()
                && (prefetched
                    .code
                    .as_ref()
                    .and_then(|(_, authz)| authz.as_ref())
                    .is_some_and(issued_here)
                    || prefetched
                        .refresh
                        .as_ref()
                        .and_then(|(_, family)| family.as_ref())
                        .is_some_and(|f| issued_here(&f.authz)))
        }
    }
}

/// Whether `path` is the same-site continuation of a SAML ACS
/// (`/saml/{tenant}/{connection}/continue`, the GET after the ACS and the
/// POST confirming a switch of user): not counted again, since the sign-in
/// was counted at its ACS. It guesses no secret (it takes a single-use
/// handle the ACS minted, and only in the browser the login is bound to)
/// and does nothing costly without one, while counting it cost Redis one
/// rate-limit script per sign-in, dearer than refusing a made-up handle
/// (`docs/performance-log.md`, twenty-first pass).
fn continues_a_counted_acs(path: &str) -> bool {
    // `saml`, a tenant, a connection, `continue`, and nothing after.
    let mut segments = path.trim_start_matches('/').split('/');
    segments.next() == Some("saml") && segments.nth(2) == Some("continue") && segments.next().is_none()
}

/// The `client_id`, `tenant` and `connection` an authorization request's
/// pairs name (the first of each, as the handler refuses repeated ones);
/// `None` without a `client_id`, which the handler refuses too.
fn named_by_authorize(pairs: &[(String, String)]) -> Option<(String, Option<String>, Option<String>)> {
    let first = |name: &str| first_value(pairs, name);
    Some((first("client_id")?, first("tenant"), first("connection")))
}

/// The tenant and connection of an IdP's answer route: a SAML ACS
/// (`/saml/{tenant}/{connection}/acs`), an OIDC or dev IdP callback
/// (`/oidc|dev/{tenant}/{connection}/callback`); the segments as sent
/// (the handler compares them with its own, decoded, path).
fn answer_route(path: &str) -> Option<(String, String)> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let (kind, tenant, connection, end) = (segments.next()?, segments.next()?, segments.next()?, segments.next()?);
    let known = matches!((kind, end), ("saml", "acs") | ("oidc" | "dev", "callback"));
    (known && segments.next().is_none()).then(|| (tenant.to_owned(), connection.to_owned()))
}

/// The value of the first pair named `name`.
fn first_value(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The tenant a form names: on `/authorize` its `tenant`; on the token
/// endpoints the prefix (`<tenant>.<…>`) of the one field the handler
/// uses: the `token` of a revocation or introspection, the `code` of a
/// code grant, the `refresh_token` of a refresh grant (none for another
/// grant). Never the first of them whatever the grant: a made-up `code`
/// of another tenant sent before a refresh grant's `refresh_token` would
/// have the request counted against that other tenant, past the spent
/// budget of the tenant whose token it uses.
fn form_tenant(class: RouteClass, path: &str, form: &[(String, String)]) -> Option<String> {
    if class == RouteClass::Authorize {
        return first_value(form, "tenant");
    }
    let field = match path {
        "/revoke" | "/introspect" => "token",
        _ => match first_value(form, "grant_type").as_deref() {
            Some("authorization_code") => "code",
            Some("refresh_token") => "refresh_token",
            _ => return None,
        },
    };
    first_value(form, field).and_then(|v| v.split_once('.').map(|(t, _)| t.to_owned()))
}

/// What [`check`] decided.
enum Checked {
    /// Within the limits, with the tenant record read for its own limits
    /// (when the request names an existing tenant), and the tenant's budget
    /// on the token endpoints, to charge if the request turns out to be
    /// its app's own.
    Within(Option<std::sync::Arc<crate::tenant::Tenant>>, Option<TenantCharge>),
    /// The 429 to answer.
    Refused(Response),
    /// A callback the tenant's anonymous bucket refused: it goes on only if
    /// it is the tenant's own sign-in.
    AnonymousSpent(Box<OwnFallback>),
}

/// A callback refused by its tenant's anonymous bucket, settled
/// ([`OwnFallback::settle`]). The MFA and passkey pages name their waiting
/// answer in `handle`; the tenant's other sign-in pages (local accounts,
/// the dev IdP) name their pending login in `login` (or `state`, at the
/// local callback and the dev IdP's page): in the query of a GET, in the
/// form of a POST, read here (small, and only for such a request) and
/// handed back as the body. `Err`: the answer to send (a body over its
/// bound).
async fn settle_anonymous(
    state: &AppState,
    fallback: Box<OwnFallback>,
    parts: &http::request::Parts,
    (body, max_body): (axum::body::Body, usize),
    answer: Option<&crate::broker::PrefetchedCallback>,
    request_id: &str,
) -> Result<(Result<Checked, StoreError>, axum::body::Body), Response> {
    let mut body = body;
    let path = parts.uri.path();
    let is_answer = answer_route(path).is_some();
    let query = super::pairs::parse(parts.uri.query().unwrap_or_default().as_bytes());
    let mut named = SignInNames::of(&query);
    let sign_in_page = ["/mfa/", "/local/", "/dev/"].iter().any(|p| path.starts_with(p));
    if !is_answer && sign_in_page && parts.method == Method::POST {
        let Ok(bytes) = axum::body::to_bytes(body, max_body).await else {
            return Err(refuse(
                RouteClass::Callback,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request.body_too_large",
                "The request body is too large.",
            ));
        };
        // A POST's handler reads its form only (our pages carry their
        // login and handle in hidden fields): what the form names counts,
        // never a login in the query, which the handler does not read.
        named = SignInNames::of(&super::pairs::parse(&bytes));
        body = axum::body::Body::from(bytes);
    }
    // The answer's own word, as the handler will take it: an IdP answer
    // that arrives with the browser's cookies (a callback) counts as the
    // sign-in of the login it names only if the browser holds that
    // login's binding; the SAML ACS (a cross-site POST without cookies)
    // ends the login it names whoever posts it.
    let answer = answer.map(|a| {
        let bindings = (parts.method != Method::POST).then(|| super::binding::from_cookie(state, &parts.headers));
        (a, bindings)
    });
    // An IdP's answer is the tenant's own through the login it names
    // (above) only, never through a `login` it also carries.
    if is_answer {
        named.login = None;
    }
    let checked = fallback.settle(state, &parts.headers, answer, &named, request_id).await;
    Ok((checked, body))
}

/// What a sign-in page names that may show it to be the tenant's own: the
/// answer waiting for a second factor (`handle`) and the pending login
/// (`login`, else `state`).
#[derive(Default)]
struct SignInNames {
    handle: Option<String>,
    login: Option<String>,
}

impl SignInNames {
    fn of(pairs: &[(String, String)]) -> Self {
        Self {
            handle: first_value(pairs, "handle"),
            login: first_value(pairs, "login").or_else(|| first_value(pairs, "state")),
        }
    }
}

/// How many requests one pending login may pass in its tenant's own
/// callback budget once the anonymous bucket is spent (a burst of this,
/// refilled over the login's lifetime, `[sessions] login_ttl_secs`: at most
/// twice this while it lives). A person's whole local sign-in (sign-in,
/// sign-up, confirm, a resent code, a reset, a few mistyped passwords, the
/// callback) takes about twenty; a stranger who started one real login
/// gets no more than this of the tenant's own budget from it, however many
/// passwords he guesses or accounts he signs up with it.
pub const OWN_REQUESTS_PER_LOGIN: u64 = 30;

/// How many requests one SSO session may pass in its tenant's own callback
/// budget once the anonymous bucket is spent: a burst of this, refilled
/// over [`OWN_SESSION_WINDOW`] (one a minute after the burst). A person's
/// self-service in one session takes about thirty such requests: changing
/// the password (the page, a mistyped current password, the change),
/// enrolling TOTP (the page, a mistyped first code, the code, the recovery
/// codes), two or three passkeys added or removed (the page, the options,
/// the registration, each), a few reloads; signing in to other apps reuses
/// the session at `/authorize` and passes no callback, and a step-up names
/// its own login or second-factor wait. Twice that leaves room for a slow
/// person; yet a stranger who signed himself up and in (`allow_sign_up`)
/// and replays his session cookie from many addresses gets no more than
/// this of the tenant's own budget from it.
pub const OWN_REQUESTS_PER_SESSION: u64 = 60;

/// The window over which [`OWN_REQUESTS_PER_SESSION`] and
/// [`SIGNED_IN_AUTHORIZES_PER_SESSION`] refill.
pub const OWN_SESSION_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How many `/authorize` requests one SSO session may pass once its
/// tenant's `/authorize` budget is spent ([`signed_in_to`]): a burst of
/// this, refilled over [`OWN_SESSION_WINDOW`] (one a minute after the
/// burst). A person signed in reaches each next app through one
/// `/authorize`, and a single-page app renews its tokens silently
/// (`prompt=none`) every few minutes: three such apps renewing every five
/// minutes take about forty an hour. Yet a stranger who signed himself up
/// and in (`allow_sign_up`) and replays his session cookie from many
/// addresses passes no more than this while the tenant's budget is spent.
/// Counted in a bucket of its own, apart from the session's share of the
/// tenant's callback budget ([`OWN_REQUESTS_PER_SESSION`]).
pub const SIGNED_IN_AUTHORIZES_PER_SESSION: u64 = 60;

/// How many requests one answer waiting for its second factor (the MFA and
/// passkey pages' `handle`) may pass in its tenant's own callback budget
/// once the anonymous bucket is spent: a burst of this, refilled over the
/// wait's lifetime ([`crate::broker::second_factor::MFA_TTL`]: at most
/// twice this while it waits). A person's second factor (the page, a few
/// mistyped codes, or an enrolment: the page, the first code, the recovery
/// codes, continue; or a passkey: the page, its options, its answer) takes
/// about fifteen; a stranger's own wait, reloaded from many addresses,
/// gets no more than this.
pub const OWN_REQUESTS_PER_MFA_WAIT: u64 = 30;

/// The name of a tenant's anonymous callback bucket (its key, and the
/// `bucket` of the `throttle.exceeded` log line and audit event).
pub const ANONYMOUS_CALLBACK_BUCKET: &str = "callback_anonymous";

/// A callback refused by its tenant's anonymous bucket, to let through in
/// the tenant's own budget if the request is shown to be its own sign-in:
/// it names a pending login of the tenant that it will end (as the edge
/// peeked it beside its count, [`crate::broker::PrefetchedCallback`]: the
/// first answer naming a login ends it, so a stranger's own login counts
/// once, and an answer from a browser without the login's binding, which
/// leaves it alone, not at all); or, on the tenant's other sign-in pages,
/// it names a pending login of the tenant whose binding its browser holds,
/// within that login's [`OWN_REQUESTS_PER_LOGIN`]; or its browser holds the
/// answer waiting for a second factor it names, within that wait's
/// [`OWN_REQUESTS_PER_MFA_WAIT`], or a live SSO session of the tenant,
/// within that session's [`OWN_REQUESTS_PER_SESSION`]
/// ([`OwnFallback::through_browser`]). Anyone can name a tenant in a
/// callback's path (a made-up connection, a garbage SAML response); only
/// such requests spend the tenant's own budget, so strangers spend only its
/// anonymous bucket, and a stranger's own login, second-factor wait or
/// session (self sign-up lets anyone hold one) only what one may.
/// The browser is looked at only here, when the anonymous bucket is spent:
/// other requests pay nothing for it.
struct OwnFallback {
    record: Option<std::sync::Arc<crate::tenant::Tenant>>,
    tenant: TenantId,
    own_key: Key,
    own_limit: u64,
    anonymous_key: Key,
    anonymous_limit: u64,
    refused: RateDecision,
    window: Duration,
}

impl OwnFallback {
    /// Within the tenant's own budget (a request that is its own), or the
    /// 429 naming the bucket that refused it.
    async fn settle(
        self,
        state: &AppState,
        headers: &HeaderMap,
        answer: Option<(&PrefetchedCallback, Option<BrowserLogins>)>,
        named: &SignInNames,
        request_id: &str,
    ) -> Result<Checked, StoreError> {
        let class = RouteClass::Callback;
        let own = match answer {
            Some((a, bindings)) if a.names_pending_login_of(&self.tenant, bindings.as_ref()) => true,
            _ => {
                self.through_named_login(state, headers, named.login.as_deref()).await?
                    || self.through_browser(state, headers, named.handle.as_deref()).await?
            }
        };
        if !own {
            throttled(
                state,
                class,
                Scope::Tenant(ANONYMOUS_CALLBACK_BUCKET),
                Some(&self.tenant),
                self.anonymous_limit,
                self.window,
                self.refused,
                &self.anonymous_key,
                request_id,
            )
            .await;
            return Ok(Checked::Refused(too_many(class, self.refused.retry_after)));
        }
        if self.own_limit == 0 {
            return Ok(Checked::Within(self.record, None));
        }
        let d = state
            .store
            .rate_limit(&self.own_key, self.own_limit, self.window)
            .await?;
        if d.allowed {
            return Ok(Checked::Within(self.record, None));
        }
        throttled(
            state,
            class,
            Scope::Tenant(class.as_str()),
            Some(&self.tenant),
            self.own_limit,
            self.window,
            d,
            &self.own_key,
            request_id,
        )
        .await;
        Ok(Checked::Refused(too_many(class, d.retry_after)))
    }

    /// Whether the request is the tenant's own through the pending login it
    /// names (`login`): a login of the tenant whose binding the browser
    /// holds, counted against the login's own allowance
    /// ([`OWN_REQUESTS_PER_LOGIN`]), which must still have room. A login
    /// the browser holds but the request does not name counts for nothing.
    async fn through_named_login(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        login: Option<&str>,
    ) -> Result<bool, StoreError> {
        let Some(login) = login else {
            return Ok(false);
        };
        let logins = super::binding::from_cookie(state, headers);
        if !state.broker.binds_login(&self.tenant, login, &logins).await {
            return Ok(false);
        }
        // Keyed by a real pending login bound to this browser (checked
        // just above), so made-up ids create no keys.
        let key = Key::tenant(self.tenant.as_str(), "rl", format!("login:{login}"));
        let d = state
            .store
            .rate_limit(&key, OWN_REQUESTS_PER_LOGIN, state.broker.login_ttl)
            .await?;
        if !d.allowed {
            tracing::info!(
                reason = "throttle.login_allowance_spent",
                tenant = %self.tenant,
                "a pending login passed its share of the tenant's own budget; not counted as the tenant's own"
            );
        }
        Ok(d.allowed)
    }

    /// Whether the request is the tenant's own through its browser: the
    /// browser's session holds the secret of the tenant's answer waiting
    /// for a second factor under `mfa_handle` (the MFA and passkey pages'
    /// `handle`), within that wait's allowance
    /// ([`OWN_REQUESTS_PER_MFA_WAIT`]), or a live SSO session of the
    /// tenant, within that session's ([`OWN_REQUESTS_PER_SESSION`]). Each
    /// allowance is counted in a bucket of its own (`t:<tenant>:rl`,
    /// `mfa:<digest of the handle>` or `session:<digest of the sid>`),
    /// made only once the wait or the session is shown to be real and of
    /// this tenant, so made-up handles and cookies create no keys. A
    /// pending login's binding alone is no sign of it: that counts only for
    /// the login a request names ([`OwnFallback::through_named_login`]).
    async fn through_browser(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        mfa_handle: Option<&str>,
    ) -> Result<bool, StoreError> {
        let Some(record) = browser_session(state, headers).await else {
            return Ok(false);
        };
        // The wait the request names first: it is what the MFA pages are
        // about, even in a browser also signed in (a step-up).
        let secret = record
            .data
            .get(crate::broker::second_factor::MFA_SESSION_FIELD)
            .and_then(|v| v.as_str());
        if let (Some(secret), Some(handle)) = (secret, mfa_handle) {
            if state.broker.waits_for_second_factor(&self.tenant, handle, secret).await {
                let digest = crate::tokens::sha256_base64url(handle.as_bytes());
                let window = crate::broker::second_factor::MFA_TTL;
                if self
                    .within_allowance(state, format!("mfa:{digest}"), OWN_REQUESTS_PER_MFA_WAIT, window)
                    .await?
                {
                    return Ok(true);
                }
                tracing::info!(
                    reason = "throttle.mfa_wait_allowance_spent",
                    tenant = %self.tenant,
                    "an answer waiting for its second factor passed its share of the tenant's own budget; not counted as the tenant's own"
                );
            }
        }
        let Some(sid) = live_sso(state, &record, &self.tenant).await else {
            return Ok(false);
        };
        let digest = crate::tokens::sha256_base64url(sid.as_bytes());
        let allowed = self
            .within_allowance(
                state,
                format!("session:{digest}"),
                OWN_REQUESTS_PER_SESSION,
                OWN_SESSION_WINDOW,
            )
            .await?;
        if !allowed {
            tracing::info!(
                reason = "throttle.session_allowance_spent",
                tenant = %self.tenant,
                "an SSO session passed its share of the tenant's own budget; not counted as the tenant's own"
            );
        }
        Ok(allowed)
    }

    /// Counts one request in the tenant's allowance bucket `name`
    /// (`t:<tenant>:rl`): whether it had room.
    async fn within_allowance(
        &self,
        state: &AppState,
        name: String,
        limit: u64,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let key = Key::tenant(self.tenant.as_str(), "rl", name);
        Ok(state.store.rate_limit(&key, limit, window).await?.allowed)
    }
}

/// The buckets a request is counted in and their limits: the client
/// address's, and the tenant's when the request names one that exists and
/// its limit is not zero.
struct Plan {
    ip_key: Key,
    per_ip: u64,
    /// The tenant's bucket the edge counts in (on the callbacks, its
    /// anonymous bucket), and its limit.
    tenant_key: Option<Key>,
    per_tenant: u64,
    /// The name of that bucket in logs and audit events.
    bucket: &'static str,
    /// On the callbacks: the tenant's own budget and its limit (`0`: not
    /// limited), charged only for a request shown to be the tenant's own
    /// sign-in once the anonymous bucket refused it ([`OwnFallback`]).
    own: Option<(Key, u64)>,
    /// The tenant's limit is charged after the edge's count, and only for
    /// a request that is its own: on the token endpoints, where anyone can
    /// name a tenant (the prefix of a made-up code) and only apps can
    /// authenticate, one of its apps' own; on the admin API, one whose
    /// caller authenticated for the tenant ([`TenantCharge`], [`InScope`]).
    defer_tenant: bool,
}

impl Plan {
    /// The plan for a request naming `tenant`, whose record is `record`
    /// (`None`: no such tenant, which gets no bucket, so a made-up id
    /// creates no keys). A tenant's own limits, where the platform admin set
    /// some, replace the route's.
    fn of(
        class: RouteClass,
        global: RouteLimit,
        bucket: &str,
        tenant: Option<&TenantId>,
        record: Option<&crate::tenant::Tenant>,
    ) -> Self {
        let own = record
            .and_then(|t| t.settings.throttle.as_deref())
            .and_then(|o| class.tenant_override(o));
        let per_tenant = own.and_then(|o| o.per_tenant).unwrap_or(global.per_tenant);
        let tenant = tenant.filter(|_| record.is_some());
        let bucket_of = |name: &str, limit: u64| {
            tenant
                .filter(|_| limit > 0)
                .map(|t| (Key::tenant(t.as_str(), "rl", name), limit))
        };
        // Anyone can name a tenant in a callback's path: every callback
        // counts in the tenant's anonymous bucket; its own budget is kept
        // for the requests shown to be its own sign-ins.
        let (counted, bucket_name, own_budget) = if class == RouteClass::Callback {
            let anonymous = global.per_tenant_anonymous.unwrap_or(per_tenant);
            (
                bucket_of(ANONYMOUS_CALLBACK_BUCKET, anonymous),
                ANONYMOUS_CALLBACK_BUCKET,
                // Always there for an existing tenant: a limit of 0 lets
                // its own sign-ins through uncounted.
                tenant.map(|t| (Key::tenant(t.as_str(), "rl", class.as_str()), per_tenant)),
            )
        } else {
            (bucket_of(class.as_str(), per_tenant), class.as_str(), None)
        };
        let (tenant_key, per_tenant) = counted.map_or((None, per_tenant), |(k, l)| (Some(k), l));
        Self {
            ip_key: Key::new(format!("rl:{}:ip:{bucket}", class.as_str()), "gcra"),
            per_ip: own.and_then(|o| o.per_ip).unwrap_or(global.per_ip),
            tenant_key,
            per_tenant,
            bucket: bucket_name,
            own: own_budget,
            defer_tenant: matches!(class, RouteClass::Token | RouteClass::Admin),
        }
    }

    /// The limits to count, in order: the address first, then (only if
    /// the address is within its limit) the tenant.
    fn limits(&self) -> Vec<(&Key, u64)> {
        let ip = (self.per_ip > 0).then_some((&self.ip_key, self.per_ip));
        let tenant = self
            .tenant_key
            .as_ref()
            .filter(|_| !self.defer_tenant)
            .map(|k| (k, self.per_tenant));
        ip.into_iter().chain(tenant).collect()
    }

    /// Whether the edge counts nothing in the store (a deferred tenant
    /// limit is charged later, if at all).
    fn counts_nothing(&self) -> bool {
        self.per_ip == 0 && (self.tenant_key.is_none() || self.defer_tenant)
    }

    /// Counts the request under [`Self::limits`]: both in one store round
    /// trip when both apply. Decisions as [`decisions`] reads them.
    async fn count(&self, state: &AppState, window: Duration) -> Result<Vec<RateDecision>, StoreError> {
        let store = &state.store;
        Ok(match self.limits().as_slice() {
            [] => Vec::new(),
            [(key, limit)] => vec![store.rate_limit(key, *limit, window).await?],
            [first, second, ..] => {
                let (d, d2) = store.rate_limit_chain(*first, *second, window).await?;
                std::iter::once(d).chain(d2).collect()
            }
        })
    }

    /// The address's and the tenant's decisions, out of the decisions made
    /// for [`Self::limits`] (an address without a limit is within it).
    fn decisions(&self, made: Vec<RateDecision>) -> (RateDecision, Option<RateDecision>) {
        let mut made = made.into_iter();
        let within = RateDecision {
            allowed: true,
            retry_after: Duration::ZERO,
            remaining: 0,
        };
        let ip = if self.per_ip > 0 {
            made.next().unwrap_or(within)
        } else {
            within
        };
        (ip, made.next())
    }
}

/// Counts the request per client address, then per tenant.
///
/// The tenant's record decides the tenant's limits (and whether it has a
/// bucket at all). A replica that has seen the tenant keeps a decoded copy
/// with the fingerprint of its stored bytes: the count under the copy's
/// limits goes to the store with that fingerprint, and the store counts
/// only if the record still has it (`Store::rate_limit_guarded`: one step,
/// so the copy is what the store holds now and is handed on as this
/// request's read). If the record changed or is gone, nothing was counted,
/// and the record is read and the request counted under what it says.
async fn check(
    state: &AppState,
    class: RouteClass,
    global: RouteLimit,
    ip: IpAddr,
    tenant: Option<&TenantId>,
    request_id: &str,
    headers: &HeaderMap,
) -> Result<Checked, StoreError> {
    let window = Duration::from_secs(global.window_secs);
    let bucket = ip_bucket(ip);
    let mut counted = None;
    if let Some((key, fingerprint, kept)) = tenant.and_then(|t| state.tenants.kept_tenant(t)) {
        let plan = Plan::of(class, global, &bucket, tenant, Some(&kept));
        if !plan.counts_nothing() {
            if let Some(made) = state
                .store
                .rate_limit_guarded((&key, &fingerprint), &plan.limits(), window)
                .await?
            {
                counted = Some((Some(kept), plan, made));
            }
        }
    }
    let (record, plan, made) = match counted {
        Some(counted) => counted,
        None => {
            let record = match tenant {
                Some(t) => state
                    .tenants
                    .get(t)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                None => None,
            };
            let plan = Plan::of(class, global, &bucket, tenant, record.as_deref());
            let made = plan.count(state, window).await?;
            (record, plan, made)
        }
    };
    let tenant = tenant.filter(|_| record.is_some());
    let (ip_decision, tenant_decision) = plan.decisions(made);
    let Plan {
        ip_key,
        per_ip,
        tenant_key,
        per_tenant,
        bucket: bucket_name,
        own,
        defer_tenant,
    } = plan;
    if !ip_decision.allowed {
        let scope = Scope::Ip(&bucket);
        throttled(
            state,
            class,
            scope,
            tenant,
            per_ip,
            window,
            ip_decision,
            &ip_key,
            request_id,
        )
        .await;
        return Ok(Checked::Refused(too_many(class, ip_decision.retry_after)));
    }
    if defer_tenant {
        let (Some(key), Some(t)) = (tenant_key, tenant) else {
            return Ok(Checked::Within(record, None));
        };
        // Spent, as far as this replica's last charges saw: refused
        // without counting, as the store refuses.
        if let Some(wait) = state.edge.spent.spent(class, t, now_ms(state)) {
            let refused = RateDecision {
                allowed: false,
                retry_after: wait,
                remaining: 0,
            };
            throttled(
                state,
                class,
                Scope::Tenant(bucket_name),
                Some(t),
                per_tenant,
                window,
                refused,
                &key,
                request_id,
            )
            .await;
            return Ok(Checked::Refused(too_many(class, wait)));
        }
        let charge = TenantCharge {
            tenant: t.clone(),
            key,
            limit: per_tenant,
            window,
        };
        return Ok(Checked::Within(record, Some(charge)));
    }
    if let (Some(key), Some(d)) = (tenant_key, tenant_decision) {
        if !d.allowed {
            if let (RouteClass::Authorize, Some(t)) = (class, tenant) {
                if signed_in_to(state, headers, t).await? {
                    tracing::info!(
                        reason = "throttle.tenant_spent_signed_in",
                        route = class.as_str(),
                        tenant = %t,
                        "the tenant's budget is spent; a browser signed in to it passes"
                    );
                    return Ok(Checked::Within(record, None));
                }
            }
            // A callback shown to be the tenant's own sign-in goes on in
            // the tenant's own budget; the edge decides once it has what
            // the request names ([`OwnFallback::settle`]).
            if let (Some((own_key, own_limit)), Some(t)) = (own, tenant) {
                return Ok(Checked::AnonymousSpent(Box::new(OwnFallback {
                    record,
                    tenant: t.clone(),
                    own_key,
                    own_limit,
                    anonymous_key: key,
                    anonymous_limit: per_tenant,
                    refused: d,
                    window,
                })));
            }
            throttled(
                state,
                class,
                Scope::Tenant(bucket_name),
                tenant,
                per_tenant,
                window,
                d,
                &key,
                request_id,
            )
            .await;
            return Ok(Checked::Refused(too_many(class, d.retry_after)));
        }
    }
    Ok(Checked::Within(record, None))
}

/// Whether the browser that sent `headers` is signed in to `tenant`: its
/// session cookie names a browser session that holds a live SSO session of
/// the tenant. Anyone can spend a tenant's budget on `/authorize` (a person
/// has no credentials there yet); its people already signed in pass it,
/// as their SSO session answers without the IdP. Each session passes so
/// at most [`SIGNED_IN_AUTHORIZES_PER_SESSION`] times per
/// [`OWN_SESSION_WINDOW`], counted in a bucket of its own (`t:<tenant>:rl`,
/// `authorize:<digest of the sid>`), made only once the session is shown
/// to be live and of this tenant, so made-up cookies create no keys: self
/// sign-up lets a stranger hold a session, and its cookie replayed from
/// many addresses passes no more than that. Past it the request is
/// refused as everyone else's is (`throttle.signed_in_allowance_spent`
/// logged). Read only for a request the spent budget would refuse, so it
/// costs the other requests nothing. What the session then allows is still
/// the handler's to decide. A store error while counting is the caller's
/// to settle, as for every other count (the route class decides).
async fn signed_in_to(state: &AppState, headers: &HeaderMap, tenant: &TenantId) -> Result<bool, StoreError> {
    let Some(record) = browser_session(state, headers).await else {
        return Ok(false);
    };
    let Some(sid) = live_sso(state, &record, tenant).await else {
        return Ok(false);
    };
    let digest = crate::tokens::sha256_base64url(sid.as_bytes());
    let key = Key::tenant(tenant.as_str(), "rl", format!("authorize:{digest}"));
    let d = state
        .store
        .rate_limit(&key, SIGNED_IN_AUTHORIZES_PER_SESSION, OWN_SESSION_WINDOW)
        .await?;
    if !d.allowed {
        tracing::info!(
            reason = "throttle.signed_in_allowance_spent",
            tenant = %tenant,
            "an SSO session passed its share of the tenant's spent /authorize budget; refused as anyone's"
        );
    }
    Ok(d.allowed)
}

/// The browser session the request's session cookie names, if it exists.
async fn browser_session(state: &AppState, headers: &HeaderMap) -> Option<tower_sessions::session::Record> {
    use tower_sessions::SessionStore as _;
    let id = super::binding::cookie_value(headers, &state.session.cookie_name)
        .and_then(|v| v.parse::<tower_sessions::session::Id>().ok())?;
    let sessions = crate::store::session::StoreSessionStore::new(
        state.store.clone(),
        state.provider.clock.clone(),
        state.session.ttl,
    );
    sessions.load(&id).await.ok().flatten()
}

/// The id of the live SSO session of `tenant` the browser session `record`
/// holds, if it holds one (stored, of this tenant, not past its end).
async fn live_sso(state: &AppState, record: &tower_sessions::session::Record, tenant: &TenantId) -> Option<String> {
    let sso = record
        .data
        .get(crate::broker::session::SESSION_FIELD)
        .and_then(|v| crate::broker::session::BrowserSso::deserialize(v).ok())?;
    match crate::broker::session::load(&state.store, &sso, tenant).await {
        Ok(Some(s)) if s.expires_at.is_none_or(|end| state.provider.clock.unix() < end) => Some(s.sid),
        _ => None,
    }
}

/// The replica's clock in milliseconds.
fn now_ms(state: &AppState) -> i64 {
    state.upstream.clock.now().timestamp_millis()
}

/// A tenant's budget on the admin API, charged only for a request the
/// admin API let in for the tenant ([`InScope`]), after its handler; on
/// the token endpoints, charged only for a request
/// that is its app's own ([`presents_own_credentials`]): anyone can name a
/// tenant there (the prefix of a made-up code or token), so a budget
/// charged before the client authenticated could be spent by requests from
/// many addresses, each within its own limit, and lock the tenant's apps
/// out of their tokens. The edge's store count covers the address only;
/// this charge runs beside the handler, and its verdict refuses the
/// tenant's next requests on this replica ([`SpentBudgets`]), so a replica
/// lets through at most its requests in flight beyond the limit.
struct TenantCharge {
    tenant: TenantId,
    key: Key,
    limit: u64,
    window: Duration,
}

impl TenantCharge {
    async fn run(self, state: &AppState, class: RouteClass) {
        match state.store.rate_limit(&self.key, self.limit, self.window).await {
            Ok(d) if !d.allowed => {
                let until = now_ms(state).saturating_add(millis(d.retry_after));
                state.edge.spent.mark(class, self.tenant, until, now_ms(state));
            }
            // This request took the last of the budget: the next one would
            // be refused for up to one emission interval.
            Ok(d) if d.remaining == 0 => {
                let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
                let interval = window_ms.div_ceil(self.limit.max(1)).max(1);
                let until = now_ms(state).saturating_add(i64::try_from(interval).unwrap_or(i64::MAX));
                state.edge.spent.mark(class, self.tenant, until, now_ms(state));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                reason = "throttle.store_unavailable",
                route = class.as_str(),
                tenant = %self.tenant,
                error = %e,
                "the tenant's budget was not charged"
            ),
        }
    }
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Tenants whose deferred budget of a route class (token endpoints, admin
/// API) this replica saw spent, each until the moment the store said
/// another request would be allowed (in the replica's clock, milliseconds).
/// Only spent budgets are kept, each for at most its window, and the
/// expired are dropped as the map grows.
#[derive(Debug, Default)]
struct SpentBudgets {
    until: std::sync::Mutex<std::collections::HashMap<(RouteClass, TenantId), i64>>,
}

impl SpentBudgets {
    /// Entries kept before the expired ones are dropped.
    const PRUNE_AT: usize = 1024;

    /// How long `tenant`'s budget on `class` stays spent, if it is spent at `now`.
    fn spent(&self, class: RouteClass, tenant: &TenantId, now: i64) -> Option<Duration> {
        let until = *self.until.lock().ok()?.get(&(class, tenant.clone()))?;
        (until > now).then(|| Duration::from_millis(u64::try_from(until - now).unwrap_or(0)))
    }

    /// Records `tenant`'s budget on `class` as spent until `until`.
    fn mark(&self, class: RouteClass, tenant: TenantId, until: i64, now: i64) {
        let Ok(mut all) = self.until.lock() else {
            return;
        };
        if all.len() >= Self::PRUNE_AT {
            all.retain(|_, u| *u > now);
        }
        let entry = all.entry((class, tenant)).or_insert(until);
        *entry = (*entry).max(until);
    }
}

/// Which limit a request exceeded.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// The client address's (bucket).
    Ip(&'a str),
    /// The tenant's, with the bucket's name (the route class, or
    /// [`ANONYMOUS_CALLBACK_BUCKET`]).
    Tenant(&'static str),
}

/// Everything a refusal leaves behind: the metric, the log line with its
/// reason code, and (once per window and bucket) an audit event. One
/// function, so the audit helper can redirect it to its security-event call.
#[allow(clippy::too_many_arguments)]
async fn throttled(
    state: &AppState,
    class: RouteClass,
    scope: Scope<'_>,
    tenant: Option<&TenantId>,
    limit: u64,
    window: Duration,
    decision: RateDecision,
    key: &Key,
    request_id: &str,
) {
    count_throttled(class);
    let (scope_name, client, bucket) = match scope {
        Scope::Ip(b) => ("ip", b, "ip"),
        Scope::Tenant(bucket) => ("tenant", "", bucket),
    };
    tracing::warn!(
        reason = "throttle.exceeded",
        route = class.as_str(),
        scope = scope_name,
        bucket,
        client = client,
        tenant = tenant.map(TenantId::as_str).unwrap_or(""),
        limit,
        window_secs = window.as_secs(),
        retry_after_secs = retry_secs(decision.retry_after),
        "rate limit exceeded"
    );
    // One audit event per bucket and window: the marker shares the bucket's tag.
    let marker = Key::new(key.tag().to_owned(), "audited");
    match state.store.put_if_absent(&marker, b"1", Some(window)).await {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(reason = "audit.write_failed", error = %e, "throttling not audited");
            return;
        }
    }
    let target = match scope {
        Scope::Ip(b) => crate::audit::Target::new("client_ip", b),
        Scope::Tenant(_) => crate::audit::Target::new("tenant", tenant.map(TenantId::as_str).unwrap_or("")),
    };
    // A security event (type `security`, outcome `failure`): it reaches the
    // tenant's (or the global) log and, when configured, the audit webhook.
    let mut event = crate::audit::AuditEvent::security(
        &crate::audit::Actor::System("throttle".into()),
        "throttle.exceeded",
        target,
        crate::audit::Outcome::Failure,
        "throttle.exceeded",
    )
    .after(json!({
        "route": class.as_str(),
        "scope": scope_name,
        "bucket": bucket,
        "limit": limit,
        "window_secs": window.as_secs(),
    }));
    // The edge runs outside the audit's request scope: the id is passed in.
    event.request_id = request_id.to_owned();
    if let Some(t) = tenant {
        event = event.tenant(t);
    }
    state.provider.audit.security(event).await;
}

/// `portcullis_throttled_total{route}` one up.
fn count_throttled(class: RouteClass) {
    crate::meter::throttled(class.as_str());
}

/// Whole seconds to wait, rounded up, at least one.
fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(u64::MAX)
}

/// The 429 of a route class, with `Retry-After`.
///
/// On the OAuth endpoints the body is RFC 6749 JSON with
/// `temporarily_unavailable`: RFC 6749 has no rate-limit code, and this is
/// the one that means "try again later" to every client library
/// (`slow_down` belongs to the device flow, RFC 8628, and tells a client to
/// change its polling interval, which no client here has).
fn too_many(class: RouteClass, wait: Duration) -> Response {
    let secs = retry_secs(wait);
    let message = format!("Too many requests. Please try again in {secs} seconds.");
    let mut resp = answer(
        class,
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        "Too many requests",
        &message,
        "throttle.exceeded",
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The 503 of a route class whose limit could not be counted.
fn unavailable(class: RouteClass) -> Response {
    let mut resp = answer(
        class,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "Temporarily unavailable",
        "The service is temporarily unavailable. Please try again in a moment.",
        "store.unavailable",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_SECS));
    resp
}

/// A body not received within `[server] body_timeout_secs`: 408 in the
/// route's format, and the connection is closed (the rest of the body may
/// still be on its way).
fn body_timeout(class: RouteClass) -> Response {
    tracing::info!(
        reason = "request.body_timeout",
        route = class.as_str(),
        "the request body was not received in time"
    );
    let mut resp = answer(
        class,
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request",
        "Request timeout",
        "The request body was not received in time.",
        "request.body_timeout",
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A size refusal (413, 414, 431) in the route's format, logged with its reason.
fn refuse(class: RouteClass, status: StatusCode, reason: &'static str, message: &str) -> Response {
    tracing::info!(
        reason,
        route = class.as_str(),
        status = status.as_u16(),
        "request refused"
    );
    answer(class, status, "invalid_request", "Request too large", message, reason)
}

/// An error in the format of `class`: RFC 6749 JSON on the OAuth endpoints,
/// problem+json on the admin API, a page for browsers (also the shape of
/// load shedding's 503, `http::shed`).
pub(crate) fn answer(
    class: RouteClass,
    status: StatusCode,
    oauth_error: &str,
    title: &str,
    message: &str,
    reason: &str,
) -> Response {
    match class {
        RouteClass::Token => (
            status,
            pages::no_store(),
            axum::Json(json!({"error": oauth_error, "error_description": message})),
        )
            .into_response(),
        RouteClass::Admin => (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": message, "reason": reason})
                .to_string(),
        )
            .into_response(),
        RouteClass::Authorize | RouteClass::Callback | RouteClass::Portal | RouteClass::Other => {
            pages::error_page(status, title, message, reason)
        }
    }
}

/// A mark on every response a handler of the browser group produced, set
/// inside the session layer: when tower-sessions cannot save the session
/// after the handler ran, it drops the handler's response and answers a
/// bare 500 of its own, which lacks the mark.
#[derive(Debug, Clone, Copy)]
pub struct FromHandler;

/// Inside the session layer: marks the handler's response.
pub async fn mark_handler_status(mut resp: Response) -> Response {
    resp.extensions_mut().insert(FromHandler);
    resp
}

/// Outside the session layer: the bare 500 of tower-sessions (the session
/// could not be saved: the store is down) becomes the 503 page. What the
/// handler answered (a redirect to the IdP, a code for the app) is already
/// gone, so no sign-in goes on without its browser binding.
pub async fn session_save_failed(resp: Response) -> Response {
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR && resp.extensions().get::<FromHandler>().is_none() {
        return super::flows::session_failed("the session layer could not save the session");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(proxies: &[&str]) -> EdgeConfig {
        EdgeConfig::new(
            &ThrottleSettings {
                trusted_proxies: proxies.iter().map(|p| (*p).to_owned()).collect(),
                ..Default::default()
            },
            Duration::from_secs(30),
        )
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let spoofed = xff(&["198.51.100.1"]);
        assert_eq!(client_ip(peer, &spoofed, &config(&[])), peer, "no proxies: the socket");
        assert_eq!(
            client_ip(peer, &spoofed, &config(&["10.0.0.0/8"])),
            peer,
            "an untrusted peer's header is ignored"
        );
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let cfg = config(&["10.0.0.0/8"]);
        // The client forged a left-most entry; the proxy appended the real one.
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.5"]);
        assert_eq!(client_ip(proxy, &h, &cfg), "198.51.100.7".parse::<IpAddr>().unwrap());
        // Every hop trusted: the left-most.
        assert_eq!(
            client_ip(proxy, &xff(&["10.1.1.1"]), &cfg),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &cfg), proxy);
        // Garbage past a trusted hop stops the walk there.
        assert_eq!(
            client_ip(proxy, &xff(&["nonsense, 10.0.0.9"]), &cfg),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        // Ports and IPv6 brackets.
        assert_eq!(
            client_ip(proxy, &xff(&["[2001:db8::1]:4711"]), &cfg),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    /// One increment: name, labels, value.
    type Increment = (String, Vec<(String, String)>, u64);

    /// Records counter increments by name and labels.
    #[derive(Default)]
    struct Counters(std::sync::Mutex<Vec<Increment>>);

    struct One(Arc<Counters>, String, Vec<(String, String)>);

    impl metrics::CounterFn for One {
        fn increment(&self, value: u64) {
            self.0 .0.lock().unwrap().push((self.1.clone(), self.2.clone(), value));
        }
        fn absolute(&self, _: u64) {}
    }

    struct Recorder(Arc<Counters>);

    impl metrics::Recorder for Recorder {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            metrics::Counter::from_arc(Arc::new(One(self.0.clone(), key.name().to_owned(), labels)))
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn a_refusal_counts_in_the_contract_metric_by_route() {
        let counters = Arc::new(Counters::default());
        let recorder = Recorder(counters.clone());
        metrics::with_local_recorder(&recorder, || {
            count_throttled(RouteClass::Token);
            count_throttled(RouteClass::Callback);
        });
        let seen = counters.0.lock().unwrap().clone();
        let route = |r: &str| vec![("route".to_owned(), r.to_owned())];
        assert_eq!(
            seen,
            vec![
                ("portcullis_throttled_total".to_owned(), route("token"), 1),
                ("portcullis_throttled_total".to_owned(), route("callback"), 1),
            ]
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(ip_bucket("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(ip_bucket("192.0.2.1".parse().unwrap()), "192.0.2.1");
    }

    #[test]
    fn routes_fall_into_classes() {
        let c = |m: Method, p: &str| RouteClass::of(&m, p);
        assert_eq!(c(Method::GET, "/authorize"), (RouteClass::Authorize, None));
        assert_eq!(c(Method::POST, "/token"), (RouteClass::Token, None));
        assert_eq!(
            c(Method::POST, "/saml/acme/okta/acs"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(
            c(Method::GET, "/admin/v1/tenants/acme/connections"),
            (RouteClass::Admin, Some("acme".into()))
        );
        assert_eq!(c(Method::GET, "/setup/abc"), (RouteClass::Portal, None));
        assert_eq!(
            c(Method::POST, "/mfa/acme/local"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(
            c(Method::POST, "/mfa/acme/local/continue"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(RouteClass::Callback.max_body("/mfa/acme/local"), MAX_SMALL_BODY);
        // Passkey answers: throttled per tenant, small bodies.
        assert_eq!(
            c(Method::POST, "/mfa/acme/local/passkey"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(
            c(Method::POST, "/local/acme/pw/passkey"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(
            c(Method::POST, "/mfa/acme/passkeys"),
            (RouteClass::Callback, Some("acme".into()))
        );
        assert_eq!(RouteClass::Callback.max_body("/mfa/acme/local/passkey"), MAX_SMALL_BODY);
        assert_eq!(RouteClass::Callback.max_body("/local/acme/pw/passkey"), MAX_SMALL_BODY);
        assert_eq!(c(Method::GET, "/jwks"), (RouteClass::Other, None));
        assert_eq!(c(Method::POST, "/sso/legacy/acs"), (RouteClass::Callback, None));
        assert_eq!(RouteClass::Callback.max_body("/saml/a/b/acs"), MAX_ACS_BODY);
        assert_eq!(RouteClass::Callback.max_body("/saml/a/b/continue"), MAX_SMALL_BODY);
    }

    #[test]
    fn request_ids_are_taken_only_from_trusted_proxies_and_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("a b<script>"));
        let id = request_id(&h, true);
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
    }

    #[test]
    fn an_authorization_request_names_its_first_app_tenant_and_connection() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(
            named_by_authorize(&pairs(&[
                ("response_type", "code"),
                ("tenant", "acme"),
                ("client_id", "app"),
                ("connection", "okta"),
                ("client_id", "second"),
            ])),
            Some(("app".to_owned(), Some("acme".to_owned()), Some("okta".to_owned())))
        );
        assert_eq!(
            named_by_authorize(&pairs(&[("client_id", "app")])),
            Some(("app".to_owned(), None, None))
        );
        // No app, nothing to read ahead: the handler refuses the request.
        assert_eq!(named_by_authorize(&pairs(&[("tenant", "acme")])), None);
    }

    #[test]
    fn only_the_saml_continuation_is_left_to_its_acs() {
        assert!(continues_a_counted_acs("/saml/acme/okta/continue"));
        for path in [
            "/saml/acme/okta/acs",
            "/saml/acme/okta/continue/x",
            "/saml/acme/continue",
            "/mfa/acme/okta/continue",
            "/oidc/acme/okta/callback",
            "/dev/acme/dev/callback",
        ] {
            assert!(!continues_a_counted_acs(path), "{path}");
        }
    }

    #[test]
    fn the_token_form_names_its_tenant() {
        let tenant = |path: &str, form: &[u8]| form_tenant(RouteClass::Token, path, &crate::http::pairs::parse(form));
        assert_eq!(
            tenant("/token", b"grant_type=authorization_code&code=acme.xyz"),
            Some("acme".into())
        );
        assert_eq!(
            tenant("/token", b"grant_type=refresh_token&refresh_token=t1.f.s"),
            Some("t1".into())
        );
        assert_eq!(tenant("/token", b"grant_type=client_credentials"), None);
        assert_eq!(tenant("/revoke", b"token=acme.f.s"), Some("acme".into()));
        assert_eq!(
            form_tenant(
                RouteClass::Authorize,
                "/authorize",
                &crate::http::pairs::parse(b"client_id=app&tenant=acme")
            ),
            Some("acme".into())
        );
    }

    /// The tenant counted is the one whose code or token the handler uses,
    /// not a decoy of another tenant sent before it in another field.
    #[test]
    fn a_decoy_field_names_no_tenant() {
        let tenant = |path: &str, form: &[u8]| form_tenant(RouteClass::Token, path, &crate::http::pairs::parse(form));
        assert_eq!(
            tenant(
                "/token",
                b"code=other.x&grant_type=refresh_token&refresh_token=acme.f.s"
            ),
            Some("acme".into())
        );
        assert_eq!(
            tenant(
                "/token",
                b"refresh_token=other.f.s&grant_type=authorization_code&code=acme.x"
            ),
            Some("acme".into())
        );
        assert_eq!(
            tenant("/introspect", b"code=other.x&token=acme.f.s"),
            Some("acme".into())
        );
        assert_eq!(tenant("/token", b"code=other.x&grant_type=client_credentials"), None);
    }
}
