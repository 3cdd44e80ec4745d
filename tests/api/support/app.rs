//! Spawning the gateway in-process on a random port.

use url::Url;

/// How to start the gateway under test.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// A real Redis server; `None` uses the in-memory store.
    pub redis_url: Option<String>,
    /// Key prefix in Redis (each test its own).
    pub redis_prefix: Option<String>,
}

/// A running gateway.
pub struct TestApp {
    /// The public base URL (the issuer), e.g. `http://127.0.0.1:41234`.
    pub base: Url,
    /// The platform admin bearer token.
    pub admin_token: String,
    /// A plain client (no cookies, no redirects) for admin and API calls.
    pub client: reqwest::Client,
}

impl TestApp {
    /// The absolute URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }
}

/// Starts the gateway on 127.0.0.1:0 with `PORTCULLIS_ALLOW_PRIVATE_NETWORKS`
/// semantics on (peers run on loopback). (Stub: the lead implements it.)
pub async fn spawn_app(options: AppOptions) -> TestApp {
    let _ = options;
    unimplemented!("spawn_app is implemented by the lead")
}
