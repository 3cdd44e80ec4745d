//! Two gateway replicas behind one public URL: a tiny HTTP proxy that sends
//! each request to the next replica in turn, as a load balancer without
//! stickiness would. Every step of a flow (browser, app back-channel, admin
//! calls) lands on either replica.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use url::Url;

use super::app::{spawn_listening, AppOptions, TestApp};

/// The proxy's state: where to send requests, and how many went where.
#[derive(Clone)]
struct Proxy {
    backends: Arc<Vec<Url>>,
    next: Arc<AtomicUsize>,
    served: Arc<Vec<AtomicUsize>>,
    http: reqwest::Client,
}

/// Two replicas on one store behind one round-robin public URL.
pub struct Pair {
    /// Replica A; its `base` is the proxy's URL, so its client and every
    /// URL it builds go through the proxy.
    pub a: TestApp,
    /// Replica B (same public URL, same store).
    pub b: TestApp,
    served: Arc<Vec<AtomicUsize>>,
}

impl Pair {
    /// Requests each replica served so far.
    pub fn served(&self) -> (usize, usize) {
        let n = |i: usize| self.served.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        (n(0), n(1))
    }
}

/// `options` with one admin token for every replica, as one deployment
/// has; returns the token.
fn one_admin_token(options: &mut AppOptions) -> String {
    assert!(options.redis_url.is_some() && options.redis_prefix.is_some());
    let token = portcullis::tokens::random_token(24);
    let (shared, inner) = (token.clone(), options.configure.take());
    options.configure = Some(Arc::new(move |s: &mut portcullis::config::Settings| {
        s.admin.token = Some(portcullis::secret::Secret::new(shared.clone()));
        if let Some(inner) = &inner {
            inner(s);
        }
    }));
    token
}

/// Starts two replicas with `options` (which must name a shared Redis and
/// prefix) behind a round-robin proxy on 127.0.0.1.
pub async fn spawn_pair(mut options: AppOptions) -> Pair {
    let token = one_admin_token(&mut options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (a, a_listen) = spawn_listening(options.clone(), |_| public.clone()).await;
    let (mut b, b_listen) = spawn_listening(options, |_| public.clone()).await;
    let mut a = a;
    a.admin_token = token.clone();
    b.admin_token = token;
    let served = Arc::new(vec![AtomicUsize::new(0), AtomicUsize::new(0)]);
    let proxy = Proxy {
        backends: Arc::new(vec![a_listen, b_listen]),
        next: Arc::new(AtomicUsize::new(0)),
        served: served.clone(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Pair { a, b, served }
}

/// Two replicas on one store with no proxy in front, for a client that
/// spreads its requests itself (the load generator's `--replica`): both
/// have replica A's own address as their public URL and one admin token.
/// Returns them with the addresses they listen on.
pub async fn spawn_unproxied_pair(mut options: AppOptions) -> (TestApp, TestApp, [std::net::SocketAddr; 2]) {
    let token = one_admin_token(&mut options);
    let (mut a, a_listen) = spawn_listening(options.clone(), |port| format!("http://127.0.0.1:{port}")).await;
    let public = format!("http://127.0.0.1:{}", a_listen.port().unwrap());
    let (mut b, b_listen) = spawn_listening(options, |_| public).await;
    a.admin_token = token.clone();
    b.admin_token = token;
    let addr = |u: &Url| {
        let host = u.host_str().unwrap();
        format!("{host}:{}", u.port().unwrap()).parse().unwrap()
    };
    let listen = [addr(&a_listen), addr(&b_listen)];
    (a, b, listen)
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let i = proxy.next.fetch_add(1, Ordering::Relaxed) % proxy.backends.len();
    proxy.served[i].fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let mut url = proxy.backends[i].clone();
    url.set_path(parts.uri.path());
    url.set_query(parts.uri.query());
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap();
    let mut outbound = proxy.http.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            outbound = outbound.header(name, value);
        }
    }
    match outbound.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONTENT_LENGTH {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            response.body(Body::from(bytes)).unwrap()
        }
        // The replica did not answer at all (a test that stops one).
        Err(e) => Response::builder()
            .status(502)
            .body(Body::from(format!("proxy: {e}")))
            .unwrap(),
    }
}
