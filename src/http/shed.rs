//! Load shedding: a bound on the requests one replica serves at once.
//!
//! An overloaded gateway that accepts everything queues it: every waiting
//! request holds its connection, its body and its task, latency grows for
//! everyone, memory grows with the queue, and by the time a request is
//! served its client has often given up. [`ShedLayer`] is the outermost
//! layer of every listener: it takes a slot from its listener's
//! [`InFlight`] budget (`[server] max_in_flight`) without waiting and
//! answers at once when none is left: 503 with `Retry-After`, in the
//! route's own error format, reason code `overload.shed`, counted in
//! `portcullis_requests_shed_total{route,reason}`.
//!
//! * No waiting room: a slot is taken with `try_acquire` or not at all. A
//!   short bounded wait would only move the queue into the gateway (each
//!   waiter holds a timer, its request and its connection) and add its
//!   length to every answer, while the client, its load balancer or another
//!   replica can retry at once; bursts shorter than the budget are absorbed
//!   by the budget itself.
//! * New sign-ins go first: `/authorize` may use three quarters of the
//!   budget; the last quarter is kept for the IdP callbacks, continuations
//!   and `/token` of sign-ins already under way, whose earlier steps were
//!   work already paid for.
//! * Before anything else: the refusal costs no store round trip (the rate
//!   limiter counts in Redis, so a starved Redis would otherwise hold every
//!   request there before it could be refused), no session and no body read.
//! * Health probes and `/metrics` are never refused, so an orchestrator and
//!   its monitoring still see the replica. `/readyz` does not turn unready
//!   while shedding: when every replica is saturated, a readiness that
//!   follows load takes them all out of rotation at once and sends the
//!   whole load to whichever comes back first; shedding already answers
//!   the excess cheaply, and the in-flight gauge and shed counter are the
//!   operator's signal to scale out.
//! * The slot is held until the handler's response is ready; bodies here
//!   are built in memory, so that is when the request's work is done.
//! * Logging every refusal would add the very work being shed: the first
//!   refusal in each second logs a `reason = "overload.shed"` line with the
//!   number refused since the previous line; the counter has every one.
//! * One client cannot take the whole budget: with
//!   `[server] max_in_flight_per_client`, a client address (an IPv6 client
//!   by its /64; as the edge determines it, [`edge::client_ip`], so behind
//!   `[throttle] trusted_proxies` the forwarded one) holds at most that
//!   many of a budget's slots at once; one more is refused the same way,
//!   reason `overload.client_concurrency`, counted under that reason and
//!   logged once a second under it. This is taken here, before the body
//!   is read and before the rate limiter counts anything: a client
//!   trickling bodies is not counted by the limiter until its body
//!   arrives, and would otherwise take every slot for the body deadline.
//!   The counts live in a small sharded map of the budget's own (a mutex
//!   per shard, taken for an increment and a decrement), with an entry
//!   only while its address has a request in flight, and only for a
//!   request that already holds a budget slot: never more entries than the
//!   budget.
//! * A budget per listener: the admin listener (`[server] admin_listen`)
//!   has its own (`[server] admin_max_in_flight`), so a saturated public
//!   listener never sheds the admin API operators need during the
//!   incident, nor a runaway admin script the public routes.

use super::edge::{self, ClientIp, EdgeConfig, RouteClass};
use super::pages;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The reason code of a shed request.
pub const REASON: &str = "overload.shed";

/// The reason code of a request refused because its client address
/// already has `[server] max_in_flight_per_client` requests in flight.
pub const CLIENT_REASON: &str = "overload.client_concurrency";

/// Shards of the per-client map: enough that concurrent requests rarely
/// wait for one another's lock, few enough to stay small.
const CLIENT_SHARDS: usize = 32;

/// `Retry-After` of a shed request, seconds: overload passes in moments,
/// and the client's next try may well reach a replica with room.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How often at most a refusal is logged (the counter counts every one).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Paths that are never refused: the probes and the metrics scrape.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// A listener's budget of requests in flight (the public listener's is
/// `[server] max_in_flight`, the admin listener's `admin_max_in_flight`),
/// with its share per client address.
#[derive(Debug)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    max: usize,
    /// `[server] max_in_flight_per_client`; `None`: no cap.
    clients: Option<ClientSlots>,
    shed_log: super::quiet::Quiet,
    client_log: super::quiet::Quiet,
}

impl InFlight {
    /// A budget of `max` requests at once (at least one), with no cap per
    /// client address.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            clients: None,
            shed_log: super::quiet::Quiet::new(LOG_EVERY),
            client_log: super::quiet::Quiet::new(LOG_EVERY),
        }
    }

    /// The same budget, of which one client address holds at most
    /// `per_client` slots at once (0: no cap).
    pub fn per_client(mut self, per_client: usize) -> Self {
        self.clients = (per_client > 0).then(|| ClientSlots::new(per_client));
        self
    }

    /// Client addresses holding a slot now (the entries of the per-client
    /// map; never more than the requests in flight).
    pub fn clients(&self) -> usize {
        self.clients.as_ref().map_or(0, ClientSlots::len)
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests holding a slot now.
    pub fn current(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// A slot, if one is free; never waits. A request that starts a new
    /// sign-in (`fresh`) gets one only while more than a quarter of the
    /// budget is free: the last quarter is kept for sign-ins already under
    /// way (IdP callbacks, the continuation, `/token`), so that under
    /// overload the gateway finishes the sign-ins it started instead of
    /// starting new ones it then cannot finish.
    fn try_enter(&self, fresh: bool) -> Option<OwnedSemaphorePermit> {
        if fresh && self.slots.available_permits() <= self.reserved() {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Slots new sign-ins may not take (a quarter of the budget; none of a
    /// budget below four).
    fn reserved(&self) -> usize {
        self.max / 4
    }

    /// A slot for a request of `client`, if its address holds fewer than
    /// its share; `Ok(None)` when there is no cap. Taken only by a request
    /// that holds a budget slot, so the map never has more entries than
    /// the budget has slots.
    fn try_enter_client(self: &Arc<Self>, client: IpAddr) -> Result<Option<ClientSlot>, ()> {
        let Some(clients) = &self.clients else {
            return Ok(None);
        };
        let key = ClientSlots::key(client);
        let shard = clients.shard(key);
        if !clients.try_take(key, shard) {
            return Err(());
        }
        Ok(Some(ClientSlot {
            budget: self.clone(),
            key,
            shard,
        }))
    }

    /// Counts a refusal and logs it, at most once per [`LOG_EVERY`] and
    /// reason.
    fn refused(&self, class: &'static str) {
        crate::meter::shed(class, REASON);
        if let Some(shed) = self.shed_log.due() {
            // This refusal and every one since the previous line.
            tracing::warn!(
                reason = REASON,
                route = class,
                shed,
                in_flight = self.current(),
                max_in_flight = self.max,
                "over capacity: requests refused at once (503) instead of queued"
            );
        }
    }

    /// Counts a refusal for the client's share and logs it, at most once
    /// per [`LOG_EVERY`] (naming the address refused then).
    fn refused_client(&self, class: &'static str, client: IpAddr) {
        crate::meter::shed(class, CLIENT_REASON);
        if let Some(shed) = self.client_log.due() {
            tracing::warn!(
                reason = CLIENT_REASON,
                route = class,
                shed,
                client = %client,
                max_in_flight_per_client = self.clients.as_ref().map_or(0, |c| c.cap),
                in_flight = self.current(),
                "a client address at its share of the requests in flight: refused at once (503)"
            );
        }
    }
}

/// Requests in flight per client address: a map sharded by the address's
/// hash, an entry only while its count is above zero.
#[derive(Debug)]
struct ClientSlots {
    cap: u32,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl ClientSlots {
    fn new(cap: usize) -> Self {
        Self {
            cap: u32::try_from(cap).unwrap_or(u32::MAX),
            hasher: RandomState::new(),
            shards: (0..CLIENT_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The address a count is kept under: an IPv4 address, an IPv6 one's
    /// /64 (one customer line gets a whole /64, as in the rate limits).
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        }
    }

    fn shard(&self, key: IpAddr) -> usize {
        // The remainder is below the shard count, so the cast keeps it.
        (self.hasher.hash_one(key) % CLIENT_SHARDS as u64) as usize
    }

    /// The shard's map; a poisoned lock (nothing here panics while holding
    /// it) still holds consistent counts.
    fn lock(&self, shard: usize) -> Option<std::sync::MutexGuard<'_, HashMap<IpAddr, u32>>> {
        self.shards
            .get(shard)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn try_take(&self, key: IpAddr, shard: usize) -> bool {
        let Some(mut map) = self.lock(shard) else {
            return true;
        };
        let count = map.entry(key).or_insert(0);
        if *count >= self.cap {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, key: IpAddr, shard: usize) {
        let Some(mut map) = self.lock(shard) else {
            return;
        };
        if let Some(count) = map.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&key);
            }
        }
    }

    fn len(&self) -> usize {
        (0..self.shards.len())
            .filter_map(|i| self.lock(i).map(|m| m.len()))
            .sum()
    }
}

/// A client address's slot, given back when the request is done (or
/// dropped half way).
struct ClientSlot {
    budget: Arc<InFlight>,
    key: IpAddr,
    shard: usize,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(clients) = &self.budget.clients {
            clients.release(self.key, self.shard);
        }
    }
}

/// The tower layer of [`Shed`] (see the module documentation).
#[derive(Debug, Clone)]
pub struct ShedLayer {
    budget: Arc<InFlight>,
    edge: Option<Arc<EdgeConfig>>,
    https: bool,
}

impl ShedLayer {
    /// Sheds over `budget`; `https` adds HSTS to the refusals.
    pub fn new(budget: Arc<InFlight>, https: bool) -> Self {
        Self {
            budget,
            edge: None,
            https,
        }
    }

    /// Tells client addresses apart as the edge does (`[throttle]
    /// trusted_proxies`), for the budget's share per client; without it a
    /// budget's per-client cap has no address to count.
    pub fn client_addresses(mut self, edge: Arc<EdgeConfig>) -> Self {
        self.edge = Some(edge);
        self
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            budget: self.budget.clone(),
            edge: self.edge.clone(),
            https: self.https,
        }
    }
}

/// A service that serves at most its budget of requests at once, and at
/// most a client address's share to one address, and refuses the rest at
/// once.
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    budget: Arc<InFlight>,
    edge: Option<Arc<EdgeConfig>>,
    https: bool,
}

impl<S> Shed<S> {
    /// The client address of `req` when the budget caps addresses (`None`
    /// otherwise, or without the peer's address, which the edge reports).
    fn client(&self, req: &Request) -> Option<IpAddr> {
        self.budget.clients.as_ref()?;
        let edge = self.edge.as_deref()?;
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(edge::client_ip(peer, req.headers(), edge))
    }
}

impl<S> tower::Service<Request> for Shed<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone is ready-less; keep the one polled ready for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if EXEMPT.contains(&req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let fresh = RouteClass::of(req.method(), req.uri().path()).0 == RouteClass::Authorize;
        let Some(slot) = self.budget.try_enter(fresh) else {
            let (class, label) = shape(req.method(), req.uri().path());
            self.budget.refused(label);
            let mut resp = refusal(class, self.https, REASON, BUSY);
            super::cors::add_on_spa_path(super::cors::is_spa_path(req.uri().path()), &mut resp);
            return Box::pin(std::future::ready(Ok(resp)));
        };
        let mut req = req;
        let client_slot = match self.client(&req) {
            Some(client) => match self.budget.try_enter_client(client) {
                Ok(taken) => {
                    // The edge takes the address from here, not again
                    // from the headers.
                    req.extensions_mut().insert(ClientIp(client));
                    taken
                }
                Err(()) => {
                    drop(slot);
                    let (class, label) = shape(req.method(), req.uri().path());
                    self.budget.refused_client(label, client);
                    let mut resp = refusal(class, self.https, CLIENT_REASON, CLIENT_BUSY);
                    super::cors::add_on_spa_path(super::cors::is_spa_path(req.uri().path()), &mut resp);
                    return Box::pin(std::future::ready(Ok(resp)));
                }
            },
            None => None,
        };
        let answer = inner.call(req);
        Box::pin(async move {
            let resp = answer.await;
            drop(client_slot);
            drop(slot);
            resp
        })
    }
}

/// What a shed request is told.
const BUSY: &str = "The service is busy. Please try again in a moment.";

/// What a request over its address's share is told.
const CLIENT_BUSY: &str =
    "Too many requests from your address are in progress. Please try again when one has finished.";

/// The format a refusal takes on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The edge's format of this route class.
    Class(RouteClass),
    /// `/forward-auth`: JSON with `X-Portcullis-Reason`, as its other answers.
    ForwardAuth,
}

/// The shape of the refusal and the `route` label of the counter.
fn shape(method: &Method, path: &str) -> (Shape, &'static str) {
    if path == "/forward-auth" || path.starts_with("/forward-auth/") {
        return (Shape::ForwardAuth, "forward_auth");
    }
    let (class, _) = RouteClass::of(method, path);
    // Discovery and the JWKS are read by programs: JSON, as on /token.
    let machine = path == "/jwks" || path.starts_with("/.well-known/");
    match class {
        RouteClass::Other if machine => (Shape::Class(RouteClass::Token), "other"),
        c => (Shape::Class(c), c.as_str()),
    }
}

/// The 503 of a shed request (`reason`: `overload.shed`, or
/// `overload.client_concurrency` over an address's share): RFC 6749 `temporarily_unavailable` on the
/// OAuth endpoints (and discovery, JWKS), problem+json on the admin API, a
/// page for browsers, and for forward auth a 503 the proxy passes on
/// (never a 401/403, which would read as "this token is bad"). Every one
/// carries `Retry-After`, the security headers and an `x-request-id`.
fn refusal(shape: Shape, https: bool, reason: &'static str, message: &str) -> Response {
    let mut resp = match shape {
        Shape::Class(class) => edge::answer(
            class,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Temporarily unavailable",
            message,
            reason,
        ),
        Shape::ForwardAuth => {
            let body = json!({"error": "temporarily_unavailable", "error_description": message, "reason": reason});
            let mut resp = (StatusCode::SERVICE_UNAVAILABLE, pages::no_store(), axum::Json(body)).into_response();
            resp.headers_mut().insert(
                header::HeaderName::from_static(super::forward::REASON_HEADER),
                HeaderValue::from_static(reason),
            );
            resp
        }
    };
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    if let Ok(id) = HeaderValue::from_str(&crate::tokens::random_token(16)) {
        headers.insert("x-request-id", id);
    }
    pages::security_headers(&mut resp, https);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::{Service, ServiceExt};

    /// A service whose `/token` answers 200 only once `gate` has a permit
    /// for it, so requests can be held in flight for as long as a test needs.
    fn held(gate: Arc<Semaphore>) -> axum::Router {
        axum::Router::new()
            .route(
                "/token",
                axum::routing::post(move || {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.unwrap().forget();
                        "done"
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(|| async { "ready" }))
            .route("/metrics", axum::routing::get(|| async { "# metrics" }))
            .route("/authorize", axum::routing::get(|| async { "page" }))
            .route("/admin/v1/tenants", axum::routing::get(|| async { "[]" }))
            .route("/forward-auth", axum::routing::any(|| async { "ok" }))
            .route("/jwks", axum::routing::get(|| async { "{}" }))
    }

    fn request(method: Method, path: &str) -> Request {
        Request::builder().method(method).uri(path).body(Body::empty()).unwrap()
    }

    async fn body(resp: Response) -> String {
        String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
    }

    /// Waits until `n` requests hold a slot.
    async fn until_in_flight(budget: &InFlight, n: usize) {
        for _ in 0..1000 {
            if budget.current() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{} in flight, expected {n}", budget.current());
    }

    #[tokio::test]
    async fn over_the_budget_requests_are_refused_at_once_in_their_format_and_served_again_after() {
        let release = Arc::new(Semaphore::new(0));
        let budget = Arc::new(InFlight::new(2));
        let svc = tower::ServiceBuilder::new()
            .layer(ShedLayer::new(budget.clone(), true))
            .service(held(release.clone()));

        // Two requests take the two slots and wait.
        let first = tokio::spawn(svc.clone().oneshot(request(Method::POST, "/token")));
        let second = tokio::spawn(svc.clone().oneshot(request(Method::POST, "/token")));
        until_in_flight(&budget, 2).await;

        // The third, on every boundary, is refused without waiting.
        let started = std::time::Instant::now();
        let token = svc.clone().oneshot(request(Method::POST, "/token")).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "a refusal never waits");
        assert_eq!(token.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(token.headers()[header::RETRY_AFTER], "1");
        assert!(token.headers().contains_key("x-request-id"));
        assert!(token.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        // A single-page app may read why, and when to come back.
        assert_eq!(token.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let json: serde_json::Value = serde_json::from_str(&body(token).await).unwrap();
        assert_eq!(json["error"], "temporarily_unavailable");

        let page = svc.clone().oneshot(request(Method::GET, "/authorize")).await.unwrap();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.headers()[header::RETRY_AFTER], "1");
        assert!(!page.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(body(page).await.contains("overload.shed"));

        let admin = svc
            .clone()
            .oneshot(request(Method::GET, "/admin/v1/tenants"))
            .await
            .unwrap();
        assert_eq!(admin.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(admin.headers()[header::CONTENT_TYPE], "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body(admin).await).unwrap();
        assert_eq!(
            (problem["status"].as_u64(), problem["reason"].as_str()),
            (Some(503), Some(REASON))
        );

        let forward = svc
            .clone()
            .oneshot(request(Method::GET, "/forward-auth"))
            .await
            .unwrap();
        assert_eq!(forward.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(forward.headers()[super::super::forward::REASON_HEADER], REASON);
        assert_eq!(forward.headers()[header::RETRY_AFTER], "1");

        let jwks = svc.clone().oneshot(request(Method::GET, "/jwks")).await.unwrap();
        assert_eq!(jwks.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body(jwks).await).unwrap();
        assert_eq!(json["error"], "temporarily_unavailable");

        // The probes and the scrape are never refused.
        for path in ["/healthz", "/readyz", "/metrics"] {
            let resp = svc.clone().oneshot(request(Method::GET, path)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
        }
        assert_eq!(budget.current(), 2, "refusals and probes take no slot");

        // Once the held requests finish, their slots serve again.
        release.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(budget.current(), 0);
        let page = svc.clone().oneshot(request(Method::GET, "/authorize")).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_slot_is_returned_when_the_request_is_dropped_half_way() {
        // A client that disconnects drops the request's future: its slot
        // must come back, or disconnects would shrink the budget for good.
        let release = Arc::new(Semaphore::new(0));
        let budget = Arc::new(InFlight::new(1));
        let mut svc = ShedLayer::new(budget.clone(), false).layer_service(held(release));
        let pending = svc.ready().await.unwrap().call(request(Method::POST, "/token"));
        let task = tokio::spawn(pending);
        until_in_flight(&budget, 1).await;
        task.abort();
        let _ = task.await;
        until_in_flight(&budget, 0).await;
    }

    #[tokio::test]
    async fn the_last_quarter_of_the_budget_is_kept_for_sign_ins_under_way() {
        let release = Arc::new(Semaphore::new(0));
        let budget = Arc::new(InFlight::new(4));
        let svc = tower::ServiceBuilder::new()
            .layer(ShedLayer::new(budget.clone(), false))
            .service(held(release.clone()));
        let held: Vec<_> = (0..3)
            .map(|_| tokio::spawn(svc.clone().oneshot(request(Method::POST, "/token"))))
            .collect();
        until_in_flight(&budget, 3).await;
        // One slot is free, but it is the reserved one: no new sign-in...
        let page = svc.clone().oneshot(request(Method::GET, "/authorize")).await.unwrap();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(page).await.contains(REASON));
        // ...while a sign-in under way still gets it.
        let last = tokio::spawn(svc.clone().oneshot(request(Method::POST, "/token")));
        until_in_flight(&budget, 4).await;
        release.add_permits(4);
        for h in held {
            assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(last.await.unwrap().unwrap().status(), StatusCode::OK);
        let page = svc.clone().oneshot(request(Method::GET, "/authorize")).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
    }

    /// A request from `client` as the server passes it on: with its peer address.
    fn from(client: &str, method: Method, path: &str) -> Request {
        let mut req = request(method, path);
        let peer: SocketAddr = format!("{client}:4711")
            .parse()
            .unwrap_or_else(|_| format!("[{client}]:4711").parse().unwrap());
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    }

    #[tokio::test]
    async fn one_client_address_holds_at_most_its_share_and_its_entry_goes_with_its_last_request() {
        let release = Arc::new(Semaphore::new(0));
        let budget = Arc::new(InFlight::new(8).per_client(2));
        let edge = Arc::new(EdgeConfig::new(&Default::default(), Duration::from_secs(30)));
        let svc = tower::ServiceBuilder::new()
            .layer(ShedLayer::new(budget.clone(), false).client_addresses(edge))
            .service(held(release.clone()));
        // Two of one address, two of one IPv6 /64 (two addresses in it).
        let mut held = Vec::new();
        for client in ["192.0.2.1", "192.0.2.1", "2001:db8:1:2::1", "2001:db8:1:2::ffff"] {
            held.push(tokio::spawn(svc.clone().oneshot(from(client, Method::POST, "/token"))));
        }
        until_in_flight(&budget, 4).await;
        assert_eq!(budget.clients(), 2, "one entry per address, an IPv6 client by its /64");

        // Their next request is refused at once, in its format, with its reason...
        for client in ["192.0.2.1", "2001:db8:1:2::2"] {
            let token = svc.clone().oneshot(from(client, Method::POST, "/token")).await.unwrap();
            assert_eq!(token.status(), StatusCode::SERVICE_UNAVAILABLE, "{client}");
            assert_eq!(token.headers()[header::RETRY_AFTER], "1");
            let json: serde_json::Value = serde_json::from_str(&body(token).await).unwrap();
            assert_eq!(json["error"], "temporarily_unavailable");
        }
        let page = svc
            .clone()
            .oneshot(from("192.0.2.1", Method::GET, "/authorize"))
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(page).await.contains(CLIENT_REASON));
        let admin = svc
            .clone()
            .oneshot(from("192.0.2.1", Method::GET, "/admin/v1/tenants"))
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_str(&body(admin).await).unwrap();
        assert_eq!(problem["reason"], CLIENT_REASON);
        // ...and takes no slot; its probes still answer.
        assert_eq!(budget.current(), 4);
        let probe = svc
            .clone()
            .oneshot(from("192.0.2.1", Method::GET, "/healthz"))
            .await
            .unwrap();
        assert_eq!(probe.status(), StatusCode::OK);

        // Another address (another /64) is served from the same budget.
        for client in ["192.0.2.2", "2001:db8:1:3::1"] {
            let page = svc
                .clone()
                .oneshot(from(client, Method::GET, "/authorize"))
                .await
                .unwrap();
            assert_eq!(page.status(), StatusCode::OK, "{client}");
        }

        // Done: every slot back, no entry left behind.
        release.add_permits(4);
        for h in held {
            assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        until_in_flight(&budget, 0).await;
        assert_eq!(
            budget.clients(),
            0,
            "an address without a request in flight has no entry"
        );
        let again = svc
            .clone()
            .oneshot(from("192.0.2.1", Method::GET, "/authorize"))
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_client_slot_is_returned_when_the_request_is_dropped_half_way() {
        let release = Arc::new(Semaphore::new(0));
        let budget = Arc::new(InFlight::new(4).per_client(1));
        let edge = Arc::new(EdgeConfig::new(&Default::default(), Duration::from_secs(30)));
        let mut svc = ShedLayer::new(budget.clone(), false)
            .client_addresses(edge)
            .layer_service(held(release));
        let pending = svc
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.1", Method::POST, "/token"));
        let task = tokio::spawn(pending);
        until_in_flight(&budget, 1).await;
        assert_eq!(budget.clients(), 1);
        task.abort();
        let _ = task.await;
        until_in_flight(&budget, 0).await;
        assert_eq!(budget.clients(), 0);
    }

    #[test]
    fn refusals_are_counted_by_route_class() {
        assert_eq!(shape(&Method::POST, "/token").1, "token");
        assert_eq!(shape(&Method::POST, "/saml/acme/okta/acs").1, "callback");
        assert_eq!(shape(&Method::GET, "/forward-auth/api/x").0, Shape::ForwardAuth);
        assert_eq!(
            shape(&Method::GET, "/.well-known/openid-configuration").0,
            Shape::Class(RouteClass::Token)
        );
        assert_eq!(shape(&Method::GET, "/logout").0, Shape::Class(RouteClass::Other));
        assert_eq!(InFlight::new(0).max(), 1, "a budget of nothing would refuse everything");
    }

    trait LayerService {
        fn layer_service(&self, inner: axum::Router) -> Shed<axum::Router>;
    }

    impl LayerService for ShedLayer {
        fn layer_service(&self, inner: axum::Router) -> Shed<axum::Router> {
            tower::Layer::layer(self, inner)
        }
    }
}
