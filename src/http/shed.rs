//! Load shedding: a bound on the requests one replica serves at once.
//!
//! An overloaded gateway that accepts everything queues it: every waiting
//! request holds its connection, its body and its task, latency grows for
//! everyone, memory grows with the queue, and by the time a request is
//! served its client has often given up. [`ShedLayer`] is the outermost
//! layer of every listener: it takes a slot from one per-replica
//! [`InFlight`] budget (`[server] max_in_flight`) without waiting and
//! answers at once when none is left: 503 with `Retry-After`, in the
//! route's own error format, reason code `overload.shed`, counted in
//! `portcullis_requests_shed_total{route}`.
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

use super::edge::{self, RouteClass};
use super::pages;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The reason code of a shed request.
pub const REASON: &str = "overload.shed";

/// `Retry-After` of a shed request, seconds: overload passes in moments,
/// and the client's next try may well reach a replica with room.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How often at most a refusal is logged (the counter counts every one).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Paths that are never refused: the probes and the metrics scrape.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The replica's budget of requests in flight, shared by its listeners.
#[derive(Debug)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    max: usize,
    shed_since_log: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl InFlight {
    /// A budget of `max` requests at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            shed_since_log: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
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

    /// Counts a refusal and logs it, at most once per [`LOG_EVERY`].
    fn refused(&self, class: &'static str) {
        crate::meter::shed(class);
        self.shed_since_log.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let due = match self.last_log.try_lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
                if due {
                    *last = Some(now);
                }
                due
            }
            // Another refusal is deciding right now; it logs.
            Err(_) => false,
        };
        if due {
            // This refusal and every one since the previous line.
            let shed = self.shed_since_log.swap(0, Ordering::Relaxed);
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
}

/// The tower layer of [`Shed`] (see the module documentation).
#[derive(Debug, Clone)]
pub struct ShedLayer {
    budget: Arc<InFlight>,
    https: bool,
}

impl ShedLayer {
    /// Sheds over `budget`; `https` adds HSTS to the refusals.
    pub fn new(budget: Arc<InFlight>, https: bool) -> Self {
        Self { budget, https }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            budget: self.budget.clone(),
            https: self.https,
        }
    }
}

/// A service that serves at most its budget of requests at once and
/// refuses the rest at once.
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    budget: Arc<InFlight>,
    https: bool,
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
        match self.budget.try_enter(fresh) {
            Some(slot) => {
                let answer = inner.call(req);
                Box::pin(async move {
                    let resp = answer.await;
                    drop(slot);
                    resp
                })
            }
            None => {
                let (class, label) = shape(req.method(), req.uri().path());
                self.budget.refused(label);
                let resp = refusal(class, self.https);
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}

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

/// The 503 of a shed request: RFC 6749 `temporarily_unavailable` on the
/// OAuth endpoints (and discovery, JWKS), problem+json on the admin API, a
/// page for browsers, and for forward auth a 503 the proxy passes on
/// (never a 401/403, which would read as "this token is bad"). Every one
/// carries `Retry-After`, the security headers and an `x-request-id`.
fn refusal(shape: Shape, https: bool) -> Response {
    let message = "The service is busy. Please try again in a moment.";
    let mut resp = match shape {
        Shape::Class(class) => edge::answer(
            class,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Temporarily unavailable",
            message,
            REASON,
        ),
        Shape::ForwardAuth => {
            let body = json!({"error": "temporarily_unavailable", "error_description": message, "reason": REASON});
            let mut resp = (StatusCode::SERVICE_UNAVAILABLE, pages::no_store(), axum::Json(body)).into_response();
            resp.headers_mut().insert(
                header::HeaderName::from_static(super::forward::REASON_HEADER),
                HeaderValue::from_static(REASON),
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
        let started = Instant::now();
        let token = svc.clone().oneshot(request(Method::POST, "/token")).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "a refusal never waits");
        assert_eq!(token.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(token.headers()[header::RETRY_AFTER], "1");
        assert!(token.headers().contains_key("x-request-id"));
        assert!(token.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        let json: serde_json::Value = serde_json::from_str(&body(token).await).unwrap();
        assert_eq!(json["error"], "temporarily_unavailable");

        let page = svc.clone().oneshot(request(Method::GET, "/authorize")).await.unwrap();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.headers()[header::RETRY_AFTER], "1");
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
