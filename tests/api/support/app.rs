//! Spawning the gateway in-process on a random port.

use portcullis::clock::{ManualClock, SharedClock, SystemClock};
use portcullis::config::Settings;
use portcullis::secret::Secret;
use std::sync::Arc;
use url::Url;

/// A settings adjustment that may capture values.
pub type Configure = std::sync::Arc<dyn Fn(&mut Settings) + Send + Sync>;
/// A wrapper put around the store the gateway opened (e.g. one that counts
/// operations), before the gateway is built on it.
pub type WrapStore =
    std::sync::Arc<dyn Fn(portcullis::store::SharedStore) -> portcullis::store::SharedStore + Send + Sync>;
/// The master key of test gateways (`<id>:<base64 of 32 bytes>`).
pub const TEST_MASTER_KEY: &str = "test:dGVzdC1tYXN0ZXIta2V5LW9mLTMyLWJ5dGVzLi4uLi4=";

/// How to start the gateway under test.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// A real Redis server; `None` uses the in-memory store.
    pub redis_url: Option<String>,
    /// Key prefix in Redis (each test its own).
    pub redis_prefix: Option<String>,
    /// Development mode (built-in IdP, demo tenant and app).
    pub dev: bool,
    /// A clock the test controls; `None` uses the system clock.
    pub clock: Option<ManualClock>,
    /// Host name in the public URL (default `127.0.0.1`; `localhost` makes
    /// the gateway a different site from peers on `127.0.0.1`).
    pub public_host: Option<String>,
    /// Adjusts the settings before start.
    pub tweak: Option<fn(&mut Settings)>,
    /// `[dns] nameservers` (`ip:port`), e.g. a `dnsmasq` the test started.
    pub dns_nameservers: Vec<String>,
    /// Adjusts the settings before start, with captured values (e.g. the
    /// Redis TLS files of a topology the test started).
    pub configure: Option<Configure>,
    /// Wraps the opened store (the gateway sees only the wrapper).
    pub wrap_store: Option<WrapStore>,
}

/// A running gateway.
#[derive(Clone)]
pub struct TestApp {
    /// The public base URL (the issuer), e.g. `http://127.0.0.1:41234`.
    pub base: Url,
    /// The platform admin bearer token.
    pub admin_token: String,
    /// A plain client (no cookies, no redirects) for admin and API calls.
    pub client: reqwest::Client,
    /// The application state, for tests that look inside.
    pub state: Arc<portcullis::http::AppState>,
}

impl TestApp {
    /// The absolute URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// GETs `path` and decodes its JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The issuer string (no trailing slash).
    pub fn issuer(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }
}

/// Starts the gateway on 127.0.0.1:0 with private networks allowed (peers
/// run on loopback).
pub async fn spawn_app(options: AppOptions) -> TestApp {
    let host = options.public_host.clone().unwrap_or_else(|| "127.0.0.1".into());
    spawn_listening(options, |port| format!("http://{host}:{port}")).await.0
}

/// Starts the gateway like [`spawn_app`], announcing `public_url(port)` as its
/// public URL; returns it with the address it really listens on.
pub async fn spawn_listening(options: AppOptions, public_url: impl FnOnce(u16) -> String) -> (TestApp, Url) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin_token = portcullis::tokens::random_token(24);
    let mut settings = Settings::default();
    settings.server.listen = format!("127.0.0.1:{port}");
    settings.server.public_url = public_url(port);
    settings.admin.token = Some(Secret::new(admin_token.clone()));
    settings.outbound.allow_private_networks = true;
    settings.dev.enabled = options.dev;
    // Tests say which store they want: memory only when no Redis is given.
    settings.store.backend = Some(if options.redis_url.is_some() { "redis" } else { "memory" }.to_owned());
    // Several tests run the dev IdP over a shared Redis (two replicas).
    settings.dev.force = options.dev;
    if let Some(url) = &options.redis_url {
        settings.store.redis_url = Some(Secret::new(url.clone()));
        settings.store.key_prefix = options
            .redis_prefix
            .clone()
            .unwrap_or_else(|| format!("test-{}", portcullis::tokens::random_token(8)));
    }
    settings.dns.nameservers = options.dns_nameservers.clone();
    // Secrets at rest are sealed in every test, under one key that every
    // replica of a test shares (`secrets_at_rest` uses key files of its own).
    settings.secrets.master_key = Some(Secret::new(TEST_MASTER_KEY));
    if let Some(tweak) = options.tweak {
        tweak(&mut settings);
    }
    if let Some(configure) = &options.configure {
        configure(&mut settings);
    }
    let resolved = settings.validate("test").unwrap();
    let clock: SharedClock = match &options.clock {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(SystemClock),
    };
    let store = portcullis::app::open_store(&settings, clock.clone()).await.unwrap();
    let store = match &options.wrap_store {
        Some(wrap) => wrap(store),
        None => store,
    };
    let state = portcullis::app::build(&settings, &resolved, store, clock)
        .await
        .unwrap();
    let router = portcullis::http::router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let app = TestApp {
        base: Url::parse(&settings.server.public_url).unwrap(),
        admin_token,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        state,
    };
    (app, Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap())
}
