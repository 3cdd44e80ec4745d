//! Configuration: a TOML file, then `PORTCULLIS_*` environment overrides,
//! validated as a whole before the port is bound.
//!
//! Unknown keys are errors. [`Settings::validate`] reports every problem at
//! once, each naming the file (or variable) and the field it came from.
//! Secrets are [`Secret`]s, so `Debug` never prints them.

pub mod audit;
pub mod hooks;
pub mod local;
pub mod passkeys;
pub mod quotas;
pub mod throttle;

use crate::secret::Secret;
pub use quotas::QuotaSettings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
pub use throttle::{RouteLimit, ThrottleSettings};
use url::Url;

/// Joins `path` (no leading slash) under the public base URL, keeping any
/// path prefix the base has (`https://sso.example.com/gw/` + `token`).
pub fn join_public(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file or environment variable it came from.
    pub source: String,
    /// The field at fault (dotted path), or empty for the whole source.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.field, self.message)
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

/// The whole configuration (the file `config/portcullis.toml` documents each key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Listening address and public URL.
    pub server: ServerSettings,
    /// The state backend.
    pub store: StoreSettings,
    /// The platform admin API.
    pub admin: AdminSettings,
    /// Tokens issued to apps.
    pub tokens: TokenSettings,
    /// Browser sessions (SSO across apps).
    pub sessions: SessionSettings,
    /// Checks on upstream responses.
    pub upstream: UpstreamSettings,
    /// Outbound requests to IdPs.
    pub outbound: OutboundSettings,
    /// `[metadata]`: keeping IdP metadata and tenant files current.
    pub metadata: MetadataSettings,
    /// Development mode: built-in test IdP, demo tenant and demo app.
    pub dev: DevSettings,
    /// The resolver that checks tenants' domain verification TXT records.
    pub dns: DnsSettings,
    /// `[audit]`: the audit log's length and its webhook.
    pub audit: audit::AuditSettings,
    /// `[secrets]`: the master keys that seal secrets at rest.
    pub secrets: SecretsSettings,
    /// `[hooks]`: how tenants' hooks (signed webhooks) are called.
    pub hooks: hooks::HooksSettings,
    /// `[throttle]`: rate limits and trusted proxies.
    pub throttle: ThrottleSettings,
    /// `[quotas]`: what a tenant's own admin may give its tenant or have
    /// the gateway do for it.
    pub quotas: QuotaSettings,
    /// Where declarative tenant files live.
    pub tenants_dir: Option<PathBuf>,
    /// Apps (OIDC clients) declared in the file.
    pub clients: Vec<ClientSettings>,
    /// Resource servers (APIs) declared in the file.
    pub resource_servers: Vec<ResourceServerSettings>,
    /// `[metrics]`: the Prometheus endpoint `/metrics`.
    pub metrics: MetricsSettings,
    /// `[local]`: local accounts (password hashing, lockout).
    pub local: local::LocalSettings,
    /// `[mail]`: how verification and reset codes are sent.
    pub mail: local::MailSettings,
    /// `[passkeys]`: WebAuthn passkeys of local accounts.
    pub passkeys: passkeys::PasskeySettings,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve `/metrics` at all (`PORTCULLIS_METRICS_ENABLED`, default on).
    pub enabled: bool,
    /// Bearer token Prometheus must present (`PORTCULLIS_METRICS_TOKEN`).
    /// Unset: `/metrics` is served without a token, but only on the separate
    /// admin listener (or in dev mode); on the public listener it is absent,
    /// so the list of tenants never leaks to the internet by default.
    pub token: Option<Secret>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind (`PORTCULLIS_LISTEN`).
    pub listen: String,
    /// The issuer and base of every URL handed out (`PORTCULLIS_PUBLIC_URL`).
    pub public_url: String,
    /// A separate address for the admin API, its OpenAPI document and
    /// `/metrics` (`PORTCULLIS_ADMIN_LISTEN`). When set, the main listener
    /// answers 404 for them; unset, everything is served on `listen`.
    pub admin_listen: Option<String>,
    /// PEM certificate chain for serving HTTPS ourselves
    /// (`PORTCULLIS_TLS_CERT_FILE`); with `tls_key_file`, both listeners
    /// speak TLS. Re-read when it changes on disk or on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key matching `tls_cert_file` (`PORTCULLIS_TLS_KEY_FILE`).
    pub tls_key_file: Option<PathBuf>,
    /// How long a SIGTERM/SIGINT drain waits for in-flight requests before
    /// the process exits anyway, seconds (`PORTCULLIS_SHUTDOWN_GRACE_SECS`,
    /// 1 to 3600; default 25, below Kubernetes' default 30 s grace).
    pub shutdown_grace_secs: u64,
    /// How long a drain keeps accepting (while `/readyz` already answers
    /// 503) before it stops, so load balancers notice first, seconds
    /// (`PORTCULLIS_SHUTDOWN_DELAY_SECS`, 0 to 120; default 0). The grace
    /// period starts after it.
    pub shutdown_delay_secs: u64,
    /// The most requests this replica serves at once, over all its
    /// listeners (`PORTCULLIS_MAX_IN_FLIGHT`, 1 to 1,000,000). One more is
    /// refused at once with a 503 and `Retry-After` (`overload.shed`)
    /// instead of waiting in a queue; health probes and `/metrics` are never
    /// refused. Unset: [`DEFAULT_IN_FLIGHT_PER_CPU`] per CPU this process
    /// may run on.
    pub max_in_flight: Option<usize>,
    /// The most requests one client address (an IPv6 client by its /64)
    /// has in flight at once on a listener
    /// (`PORTCULLIS_MAX_IN_FLIGHT_PER_CLIENT`, 0 to 1,000,000; default 32;
    /// 0: no cap). One more is refused at once with a 503 and
    /// `Retry-After` (`overload.client_concurrency`), before its body is
    /// read, so one client cannot take every `max_in_flight` slot. Behind
    /// a proxy, list it in `[throttle] trusted_proxies`, or every client
    /// shares the proxy's address.
    pub max_in_flight_per_client: usize,
    /// The most requests the admin listener (`admin_listen`) serves at
    /// once, a budget of its own apart from `max_in_flight`
    /// (`PORTCULLIS_ADMIN_MAX_IN_FLIGHT`, 1 to 1,000,000; default 64), so a
    /// saturated public listener never sheds the admin API, nor the admin
    /// API the public listener. Without `admin_listen` the admin API shares
    /// `max_in_flight`.
    pub admin_max_in_flight: usize,
    /// How long a client may take to send a request's line and headers,
    /// seconds (`PORTCULLIS_HEADER_TIMEOUT_SECS`, 1 to 3600; default 65).
    /// The same clock runs while a keep-alive connection waits for its next
    /// request, so it is also the idle timeout: keep it above the idle
    /// timeout of the load balancer in front (60 s on AWS ALB and nginx), so
    /// the balancer, not the gateway, closes idle connections.
    pub header_timeout_secs: u64,
    /// How long a client may take to send a request's whole body, from the
    /// moment its headers arrived, seconds (`PORTCULLIS_BODY_TIMEOUT_SECS`,
    /// 1 to 3600; default 30: a 256 KB SAML response at under 10 KB/s). A
    /// body still arriving then is answered 408 (`request.body_timeout`) and
    /// its connection closed, so a slow client cannot hold one of the
    /// `max_in_flight` slots.
    pub body_timeout_secs: u64,
    /// The most connections each listener holds open at once, TLS
    /// handshakes included (`PORTCULLIS_MAX_CONNECTIONS`, 1 to 1,000,000;
    /// default 10,000). Beyond, new connections wait in the kernel's accept
    /// queue until one closes, so clients that only open connections
    /// cannot use up the process's file descriptors (which its store, its
    /// IdPs and its logs need too). Keep it under the process's open-file
    /// limit (`ulimit -n`).
    pub max_connections: usize,
}

/// `[server] max_connections` when unset.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `[server] header_timeout_secs` when unset.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 65;
/// `[server] body_timeout_secs` when unset.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;

/// Requests in flight per CPU when `[server] max_in_flight` is unset. A
/// sign-in costs about 1 ms of CPU, so a saturated core finishes about
/// 1,000 requests a second, and 128 waiting per core is roughly 128 ms of
/// queueing: enough to absorb a burst and to cover the requests that wait
/// on Redis, an IdP or a hook without using CPU, small enough that memory
/// stays bounded and what cannot be served soon is refused at once.
pub const DEFAULT_IN_FLIGHT_PER_CPU: usize = 128;

/// `[server] max_in_flight_per_client` when unset.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CLIENT: usize = 32;

/// `[server] admin_max_in_flight` when unset.
pub const DEFAULT_ADMIN_MAX_IN_FLIGHT: usize = 64;

/// The largest `[server] max_in_flight` accepted.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `"redis"` or `"memory"` (`PORTCULLIS_STORE_BACKEND`). Unset: Redis
    /// when a URL is set, memory in dev mode, otherwise a configuration
    /// error (two replicas on per-process memory would split their state).
    pub backend: Option<String>,
    /// Redis URL (`PORTCULLIS_REDIS_URL`): `redis://`, `rediss://`,
    /// `redis+sentinel://H:P[,H:P]/MASTER`, `redis+cluster://H:P[,H:P]`.
    pub redis_url: Option<Secret>,
    /// PEM CA file for TLS to Redis (`PORTCULLIS_REDIS_CA_FILE`); unset:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for TLS to Redis (`PORTCULLIS_REDIS_CLIENT_CERT_FILE`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM client key for TLS to Redis (`PORTCULLIS_REDIS_CLIENT_KEY_FILE`).
    pub client_key_file: Option<PathBuf>,
    /// Replicas a durable write waits for (`WAIT`; `PORTCULLIS_REDIS_WAIT_REPLICAS`).
    /// Unset: 1 on Sentinel and cluster, 0 on a single server.
    pub wait_replicas: Option<u32>,
    /// How long one `WAIT` may take, milliseconds (1 to 1000).
    pub wait_timeout_ms: u64,
    /// Prefix of every key, so several deployments can share a Redis.
    pub key_prefix: String,
}

/// The state backend the settings choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Per-process memory: one process only (dev mode, or said explicitly).
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

impl StoreSettings {
    /// The backend these settings choose in or out of dev mode, or why none.
    pub fn resolve_backend(&self, dev: bool) -> Result<Backend, String> {
        match (self.backend.as_deref(), &self.redis_url) {
            (Some("memory"), None) => Ok(Backend::Memory),
            (Some("memory"), Some(_)) => Err("is \"memory\" but a Redis URL is set: remove one of them".into()),
            (Some("redis"), Some(_)) | (None, Some(_)) => Ok(Backend::Redis),
            (Some("redis"), None) => Err("is \"redis\" but no Redis URL is set (PORTCULLIS_REDIS_URL or store.redis_url)".into()),
            (None, None) if dev => Ok(Backend::Memory),
            (None, None) => Err("no Redis URL is set (PORTCULLIS_REDIS_URL or store.redis_url): replicas cannot share state without one; set store.backend = \"memory\" (PORTCULLIS_STORE_BACKEND=memory) to run a single process on in-memory state".into()),
            (Some(other), _) => Err(format!("{other:?} is not one of redis, memory")),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token of the platform admin API (`PORTCULLIS_ADMIN_TOKEN`).
    /// Unset disables the admin API.
    pub token: Option<Secret>,
}

/// `[tokens]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// Signing algorithm: `RS256` (default), `ES256` or `EdDSA`.
    pub algorithm: String,
    /// Lifetime of ID tokens, seconds.
    pub id_token_ttl_secs: u64,
    /// Lifetime of access tokens, seconds (at most
    /// [`crate::provider::refresh::MAX_ACCESS_TOKEN_TTL_SECS`], for which
    /// revocation markers are kept, so lowering it is safe).
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token family, seconds (at most
    /// [`crate::provider::refresh::MAX_REFRESH_TOKEN_TTL_SECS`], for which
    /// a deleted app's tombstone is kept).
    pub refresh_token_ttl_secs: u64,
    /// Lifetime of authorization codes, seconds.
    pub code_ttl_secs: u64,
    /// Rotate the signing key after this many days (0: only on demand; at
    /// most [`MAX_KEY_ROTATION_DAYS`]).
    pub key_rotation_days: u64,
}

/// The longest `tokens.key_rotation_days`: ten years.
pub const MAX_KEY_ROTATION_DAYS: u64 = 3650;

/// `[sessions]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// Lifetime of the SSO session, seconds.
    pub ttl_secs: u64,
    /// Lifetime of a pending login (trip to the IdP and back), seconds.
    pub login_ttl_secs: u64,
    /// Name of the session cookie.
    pub cookie_name: String,
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// Allowed clock skew on validity windows, seconds (at most 300).
    pub clock_skew_secs: i64,
    /// How long an upstream (IdP) session is trusted before the app's next
    /// refresh asks the IdP again, seconds (60 to 86400; a connection may
    /// set its own).
    pub refresh_interval_secs: u64,
    /// How many connections' validators (parsed IdP certificates, keys and
    /// endpoints) a replica keeps built, and how many decoded connection
    /// records it keeps (`PORTCULLIS_CACHED_CONNECTIONS`, 1 to 1,000,000).
    /// Past this the least recently used are dropped and built again at
    /// their next sign-in.
    pub cached_connections: usize,
}

/// `[outbound]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Permit IdPs on loopback and private addresses (`PORTCULLIS_ALLOW_PRIVATE_NETWORKS`).
    pub allow_private_networks: bool,
    /// Timeout of one outbound request, seconds.
    pub timeout_secs: u64,
    /// Largest response accepted, bytes.
    pub max_body_bytes: usize,
}

/// `[metadata]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataSettings {
    /// How often SAML metadata fetched from a `metadata_url` is fetched
    /// again, and tenant files are re-read, in seconds (300 to 604800;
    /// default 21600, six hours).
    pub refresh_interval_secs: u64,
}

impl Default for MetadataSettings {
    fn default() -> Self {
        Self {
            refresh_interval_secs: 6 * 3600,
        }
    }
}

/// `[dev]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSettings {
    /// Turns on the built-in test IdP, the demo tenant and the demo app
    /// (`PORTCULLIS_DEV`). Never in production.
    pub enabled: bool,
    /// Lets dev mode start with an https public URL or a Redis store, which
    /// look like production and are refused otherwise (`PORTCULLIS_DEV_FORCE`).
    pub force: bool,
}

/// `[secrets]`: secrets at rest (upstream client secrets and refresh
/// tokens, SP and token-signing private keys) are sealed with AES-256-GCM
/// under a master key (`docs/SECRETS.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// The master key file (`PORTCULLIS_MASTER_KEY_FILE`): one or more keys
    /// with ids, the current one marked. Required with a Redis store
    /// outside dev mode (unless `allow_plaintext`).
    pub master_key_file: Option<PathBuf>,
    /// One master key, `<id>:<base64>` (`PORTCULLIS_MASTER_KEY`; environment
    /// only, never in the file). Prefer the file: it can hold the old key
    /// during a rotation.
    #[serde(skip)]
    pub master_key: Option<Secret>,
    /// Store secrets unencrypted when no master key is configured
    /// (`PORTCULLIS_SECRETS_ALLOW_PLAINTEXT`). Off: a Redis store outside
    /// dev mode without a master key is a configuration error.
    pub allow_plaintext: bool,
    /// Refuse to read a secret stored in plaintext (before encryption was
    /// configured); turn on once `portcullis keys rewrap` has sealed them all.
    pub refuse_plaintext: bool,
}

impl SecretsSettings {
    /// The key source this configuration chooses (see [`crate::secrets::choose`]).
    pub fn choose(
        &self,
        dev: bool,
        persistent_store: bool,
    ) -> Result<crate::secrets::KeyChoice, crate::secrets::SecretsError> {
        crate::secrets::choose(
            self.master_key_file.as_deref(),
            self.master_key.as_ref().map(Secret::expose),
            dev,
            persistent_store,
            self.allow_plaintext,
        )
    }
}

/// `[dns]`: how domain verification TXT records are looked up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Name servers (`ip:port`) asked for TXT records; empty means the
    /// system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// How long one verification may wait for an answer, seconds (1 to 30).
    pub timeout_secs: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_secs: 5,
        }
    }
}

/// `[[clients]]`: an app declared in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// The client id.
    pub client_id: String,
    /// A display name.
    #[serde(default)]
    pub name: String,
    /// The client secret; absent for public clients.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Exact post-logout redirect URIs.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Restrict the app to these tenants (empty: any tenant).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// API scopes (defined by resource servers) the app may be granted.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// Grant types (`authorization_code`, `refresh_token`,
    /// `client_credentials`); absent: `authorization_code` and `refresh_token`.
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// The resource server its access tokens are for when a request names none.
    #[serde(default)]
    pub default_resource: Option<String>,
}

/// `[[resource_servers]]`: an API declared in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerSettings {
    /// Its identifier: an absolute URI (the access token's `aud`).
    pub identifier: String,
    /// A display name.
    #[serde(default)]
    pub name: String,
    /// The scopes it defines.
    #[serde(default)]
    pub scopes: Vec<ResourceScopeSettings>,
    /// `[[resource_servers.routes]]`: per-route scope rules for forward auth.
    #[serde(default)]
    pub routes: Vec<crate::provider::resources::RouteRule>,
}

/// `[[resource_servers.scopes]]`: one scope of a declared API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceScopeSettings {
    /// The scope name apps request.
    pub name: String,
    /// What it allows.
    #[serde(default)]
    pub description: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            admin_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            shutdown_grace_secs: 25,
            shutdown_delay_secs: 0,
            max_in_flight: None,
            max_in_flight_per_client: DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            admin_max_in_flight: DEFAULT_ADMIN_MAX_IN_FLIGHT,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: None,
            redis_url: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            wait_replicas: None,
            wait_timeout_ms: 100,
            key_prefix: "portcullis".into(),
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            algorithm: "RS256".into(),
            id_token_ttl_secs: 3600,
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            code_ttl_secs: 60,
            key_rotation_days: 90,
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            ttl_secs: 8 * 3600,
            login_ttl_secs: 600,
            cookie_name: "portcullis_session".into(),
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            clock_skew_secs: 60,
            refresh_interval_secs: 3600,
            cached_connections: crate::broker::connectors::DEFAULT_CAPACITY,
        }
    }
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            timeout_secs: 10,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Validated, parsed values that the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The address to bind.
    pub listen: SocketAddr,
    /// The public base URL (issuer).
    pub public_url: Url,
    /// The separate admin (and metrics) address, if configured.
    pub admin_listen: Option<SocketAddr>,
    /// Certificate and key files when Portcullis serves HTTPS itself.
    pub tls: Option<TlsFiles>,
    /// The drain deadline after SIGTERM/SIGINT (after the delay).
    pub shutdown_grace: std::time::Duration,
    /// How long a drain keeps accepting while unready.
    pub shutdown_delay: std::time::Duration,
    /// The most requests served at once (`[server] max_in_flight`, or its
    /// default for this machine).
    pub max_in_flight: usize,
    /// The most requests one client address has in flight on a listener
    /// (`[server] max_in_flight_per_client`; 0: no cap).
    pub max_in_flight_per_client: usize,
    /// The admin listener's own budget (`[server] admin_max_in_flight`).
    pub admin_max_in_flight: usize,
    /// How long a request's line and headers may take, and how long a
    /// keep-alive connection may stay idle (`[server] header_timeout_secs`).
    pub header_timeout: std::time::Duration,
    /// How long a request's body may take (`[server] body_timeout_secs`).
    pub body_timeout: std::time::Duration,
    /// The most connections a listener holds at once (`[server] max_connections`).
    pub max_connections: usize,
}

/// The PEM files HTTPS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
}

impl Settings {
    /// Reads `path` (if given), then applies environment overrides from `env`.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut settings = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigErrors(vec![ConfigProblem {
                        source: p.display().to_string(),
                        field: String::new(),
                        message: format!("cannot read: {e}"),
                    }])
                })?;
                Self::parse(&text, &p.display().to_string())?
            }
            None => Self::default(),
        };
        settings.apply_env(env)?;
        Ok(settings)
    }

    /// Parses TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                source: source.into(),
                field: String::new(),
                message: e.to_string().trim().replace('\n', " "),
            }])
        })
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigErrors> {
        let mut problems = Vec::new();
        let mut flag = |name: &str, target: &mut bool| {
            if let Some(v) = env.get(name) {
                match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => *target = true,
                    "0" | "false" | "no" | "off" | "" => *target = false,
                    _ => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected true or false, found {v:?}"),
                    }),
                }
            }
        };
        flag(
            "PORTCULLIS_ALLOW_PRIVATE_NETWORKS",
            &mut self.outbound.allow_private_networks,
        );
        flag("PORTCULLIS_DEV", &mut self.dev.enabled);
        flag("PORTCULLIS_DEV_FORCE", &mut self.dev.force);
        flag("PORTCULLIS_METRICS_ENABLED", &mut self.metrics.enabled);
        flag("PORTCULLIS_THROTTLE_ENABLED", &mut self.throttle.enabled);
        flag("PORTCULLIS_SECRETS_ALLOW_PLAINTEXT", &mut self.secrets.allow_plaintext);
        flag(
            "PORTCULLIS_SECRETS_REFUSE_PLAINTEXT",
            &mut self.secrets.refuse_plaintext,
        );
        if let Some(v) = env.get("PORTCULLIS_STORE_BACKEND") {
            self.store.backend = (!v.is_empty()).then(|| v.clone());
        }
        for (name, target) in [
            ("PORTCULLIS_REDIS_CA_FILE", &mut self.store.ca_file),
            ("PORTCULLIS_REDIS_CLIENT_CERT_FILE", &mut self.store.client_cert_file),
            ("PORTCULLIS_REDIS_CLIENT_KEY_FILE", &mut self.store.client_key_file),
        ] {
            if let Some(v) = env.get(name) {
                *target = (!v.is_empty()).then(|| PathBuf::from(v));
            }
        }
        if let Some(v) = env.get("PORTCULLIS_REDIS_WAIT_REPLICAS") {
            match v.parse::<u32>() {
                Ok(n) => self.store.wait_replicas = Some(n),
                Err(_) => problems.push(ConfigProblem {
                    source: "PORTCULLIS_REDIS_WAIT_REPLICAS".into(),
                    field: String::new(),
                    message: format!("expected a number of replicas, found {v:?}"),
                }),
            }
        }
        if let Some(v) = env.get("PORTCULLIS_MASTER_KEY_FILE") {
            self.secrets.master_key_file = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = env.get("PORTCULLIS_MASTER_KEY") {
            self.secrets.master_key = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_TRUSTED_PROXIES") {
            self.throttle.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = env.get("PORTCULLIS_LISTEN") {
            self.server.listen = v.clone();
        }
        if let Some(v) = env.get("PORTCULLIS_PUBLIC_URL") {
            self.server.public_url = v.clone();
        }
        if let Some(v) = env.get("PORTCULLIS_ADMIN_LISTEN") {
            self.server.admin_listen = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = env.get("PORTCULLIS_TLS_CERT_FILE") {
            self.server.tls_cert_file = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = env.get("PORTCULLIS_TLS_KEY_FILE") {
            self.server.tls_key_file = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = env.get("PORTCULLIS_MAX_IN_FLIGHT") {
            match v.parse::<usize>() {
                Ok(n) => self.server.max_in_flight = Some(n),
                Err(_) if v.is_empty() => self.server.max_in_flight = None,
                Err(_) => problems.push(ConfigProblem {
                    source: "PORTCULLIS_MAX_IN_FLIGHT".into(),
                    field: String::new(),
                    message: format!("expected a number of requests, found {v:?}"),
                }),
            }
        }
        for (name, field, what) in [
            (
                "PORTCULLIS_MAX_IN_FLIGHT_PER_CLIENT",
                &mut self.server.max_in_flight_per_client,
                "requests",
            ),
            (
                "PORTCULLIS_ADMIN_MAX_IN_FLIGHT",
                &mut self.server.admin_max_in_flight,
                "requests",
            ),
        ] {
            if let Some(v) = env.get(name) {
                match v.parse::<usize>() {
                    Ok(n) => *field = n,
                    Err(_) => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected a number of {what}, found {v:?}"),
                    }),
                }
            }
        }
        if let Some(v) = env.get("PORTCULLIS_MAX_CONNECTIONS") {
            match v.parse::<usize>() {
                Ok(n) => self.server.max_connections = n,
                Err(_) => problems.push(ConfigProblem {
                    source: "PORTCULLIS_MAX_CONNECTIONS".into(),
                    field: String::new(),
                    message: format!("expected a number of connections, found {v:?}"),
                }),
            }
        }
        if let Some(v) = env.get("PORTCULLIS_CACHED_CONNECTIONS") {
            match v.parse::<usize>() {
                Ok(n) => self.upstream.cached_connections = n,
                Err(_) => problems.push(ConfigProblem {
                    source: "PORTCULLIS_CACHED_CONNECTIONS".into(),
                    field: String::new(),
                    message: format!("expected a number of connections, found {v:?}"),
                }),
            }
        }
        for (name, target) in [
            ("PORTCULLIS_SHUTDOWN_GRACE_SECS", &mut self.server.shutdown_grace_secs),
            ("PORTCULLIS_SHUTDOWN_DELAY_SECS", &mut self.server.shutdown_delay_secs),
            ("PORTCULLIS_HEADER_TIMEOUT_SECS", &mut self.server.header_timeout_secs),
            ("PORTCULLIS_BODY_TIMEOUT_SECS", &mut self.server.body_timeout_secs),
        ] {
            if let Some(v) = env.get(name) {
                match v.parse::<u64>() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(ConfigProblem {
                        source: name.into(),
                        field: String::new(),
                        message: format!("expected a number of seconds, found {v:?}"),
                    }),
                }
            }
        }
        if let Some(v) = env.get("PORTCULLIS_REDIS_URL") {
            self.store.redis_url = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_ADMIN_TOKEN") {
            self.admin.token = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_METRICS_TOKEN") {
            self.metrics.token = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_TENANTS_DIR") {
            self.tenants_dir = Some(PathBuf::from(v));
        }
        self.audit.apply_env(env, &mut problems);
        self.hooks.apply_env(env, &mut problems);
        self.quotas.apply_env(env, &mut problems);
        self.local.apply_env(env, &mut problems);
        self.mail.apply_env(env);
        self.passkeys.apply_env(env, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Checks every value; returns all problems at once. `source` names the file.
    pub fn validate(&self, source: &str) -> Result<Resolved, ConfigErrors> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                source: source.into(),
                field: field.into(),
                message,
            })
        };
        let listen = self.server.listen.parse::<SocketAddr>();
        if let Err(e) = &listen {
            bad(
                "server.listen",
                format!("not a socket address ({e}); e.g. 0.0.0.0:8080"),
            );
        }
        let admin_listen = match self.server.admin_listen.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(a)) if a.port() != 0 && listen.as_ref().is_ok_and(|l| *l == a) => {
                bad(
                    "server.admin_listen",
                    "must differ from server.listen (leave it unset to serve the admin API on the main listener)"
                        .into(),
                );
                None
            }
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                bad(
                    "server.admin_listen",
                    format!("not a socket address ({e}); e.g. 127.0.0.1:9090"),
                );
                None
            }
        };
        let tls = match (&self.server.tls_cert_file, &self.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                bad("server.tls_key_file", "is required with server.tls_cert_file".into());
                None
            }
            (None, Some(_)) => {
                bad("server.tls_cert_file", "is required with server.tls_key_file".into());
                None
            }
        };
        if !(1..=3600).contains(&self.server.shutdown_grace_secs) {
            bad(
                "server.shutdown_grace_secs",
                format!("{} is outside 1..=3600", self.server.shutdown_grace_secs),
            );
        }
        for (field, secs) in [
            ("server.header_timeout_secs", self.server.header_timeout_secs),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                bad(field, format!("{secs} is outside 1..=3600"));
            }
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.server.max_connections) {
            bad(
                "server.max_connections",
                format!("{} is outside 1..={MAX_IN_FLIGHT_LIMIT}", self.server.max_connections),
            );
        }
        if self.server.max_in_flight_per_client > MAX_IN_FLIGHT_LIMIT {
            bad(
                "server.max_in_flight_per_client",
                format!(
                    "{} is outside 0..={MAX_IN_FLIGHT_LIMIT}",
                    self.server.max_in_flight_per_client
                ),
            );
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.server.admin_max_in_flight) {
            bad(
                "server.admin_max_in_flight",
                format!(
                    "{} is outside 1..={MAX_IN_FLIGHT_LIMIT}",
                    self.server.admin_max_in_flight
                ),
            );
        }
        if let Some(n) = self.server.max_in_flight {
            if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&n) {
                bad(
                    "server.max_in_flight",
                    format!("{n} is outside 1..={MAX_IN_FLIGHT_LIMIT}"),
                );
            }
        }
        if self.server.shutdown_delay_secs > 120 {
            bad(
                "server.shutdown_delay_secs",
                format!("{} is outside 0..=120", self.server.shutdown_delay_secs),
            );
        }
        let public_url = Url::parse(&self.server.public_url);
        match &public_url {
            Err(e) => bad("server.public_url", format!("not a URL ({e})")),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                bad("server.public_url", "must be an http or https URL".into())
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                bad("server.public_url", "must not have a query or fragment".into())
            }
            Ok(u) if u.scheme() == "http" && !is_local_host(u) && !self.dev.enabled => bad(
                "server.public_url",
                "must be https (plain http is only allowed for localhost or in dev mode)".into(),
            ),
            Ok(_) => {}
        }
        self.passkeys
            .validate(public_url.as_ref().ok(), &mut |f: &str, m: String| bad(f, m));
        for (i, ns) in self.dns.nameservers.iter().enumerate() {
            if ns.parse::<SocketAddr>().is_err() {
                bad(
                    &format!("dns.nameservers[{i}]"),
                    format!("{ns:?} is not an ip:port address; e.g. 127.0.0.1:53"),
                );
            }
        }
        if !(1..=30).contains(&self.dns.timeout_secs) {
            bad(
                "dns.timeout_secs",
                format!("{} is not between 1 and 30", self.dns.timeout_secs),
            );
        }
        for (field, message) in self.throttle.problems() {
            bad(&field, message);
        }
        if !matches!(self.tokens.algorithm.as_str(), "RS256" | "ES256" | "EdDSA") {
            bad(
                "tokens.algorithm",
                format!("{:?} is not one of RS256, ES256, EdDSA", self.tokens.algorithm),
            );
        }
        for (field, value, min, max) in [
            ("tokens.id_token_ttl_secs", self.tokens.id_token_ttl_secs, 60, 86_400),
            (
                "tokens.access_token_ttl_secs",
                self.tokens.access_token_ttl_secs,
                60,
                crate::provider::refresh::MAX_ACCESS_TOKEN_TTL_SECS,
            ),
            (
                "tokens.refresh_token_ttl_secs",
                self.tokens.refresh_token_ttl_secs,
                300,
                crate::provider::refresh::MAX_REFRESH_TOKEN_TTL_SECS,
            ),
            (
                "tokens.code_ttl_secs",
                self.tokens.code_ttl_secs,
                10,
                crate::provider::codes::MAX_CODE_TTL_SECS,
            ),
            (
                "tokens.key_rotation_days",
                self.tokens.key_rotation_days,
                0,
                MAX_KEY_ROTATION_DAYS,
            ),
            ("sessions.ttl_secs", self.sessions.ttl_secs, 60, 30 * 86_400),
            ("sessions.login_ttl_secs", self.sessions.login_ttl_secs, 60, 3600),
            ("outbound.timeout_secs", self.outbound.timeout_secs, 1, 60),
            (
                "metadata.refresh_interval_secs",
                self.metadata.refresh_interval_secs,
                300,
                7 * 86_400,
            ),
            (
                "upstream.refresh_interval_secs",
                self.upstream.refresh_interval_secs,
                60,
                86_400,
            ),
        ] {
            if value < min || value > max {
                bad(field, format!("{value} is outside {min}..={max}"));
            }
        }
        self.audit
            .validate(self.outbound.allow_private_networks, &mut |f: &str, m: String| {
                bad(f, m)
            });
        self.hooks.validate(&mut |f: &str, m: String| bad(f, m));
        self.quotas.validate(&mut |f: &str, m: String| bad(f, m));
        self.local.validate(&mut |f: &str, m: String| bad(f, m));
        self.mail
            .validate(self.dev.enabled, &mut |f: &str, m: String| bad(f, m));
        if !(0..=300).contains(&self.upstream.clock_skew_secs) {
            bad("upstream.clock_skew_secs", "must be between 0 and 300".into());
        }
        if !(1..=1_000_000).contains(&self.upstream.cached_connections) {
            bad(
                "upstream.cached_connections",
                format!("{} is outside 1..=1000000", self.upstream.cached_connections),
            );
        }
        if self.outbound.max_body_bytes < 1024 || self.outbound.max_body_bytes > 16 * 1024 * 1024 {
            bad("outbound.max_body_bytes", "must be between 1 KiB and 16 MiB".into());
        }
        if self.store.key_prefix.is_empty() || self.store.key_prefix.contains(['{', '}', ' ']) {
            bad("store.key_prefix", "must be non-empty, without braces or spaces".into());
        }
        let backend = self.store.resolve_backend(self.dev.enabled);
        if let Err(m) = &backend {
            bad("store.backend", m.clone());
        }
        let topology = self
            .store
            .redis_url
            .as_ref()
            .map(|url| crate::store::redis_url::Topology::parse(url.expose()));
        if let Some(Err(m)) = &topology {
            // The message never repeats the URL: it may hold a password.
            bad("store.redis_url", m.clone());
        }
        let redis_tls = matches!(&topology, Some(Ok(t)) if t.tls());
        for (field, path) in [
            ("store.ca_file", &self.store.ca_file),
            ("store.client_cert_file", &self.store.client_cert_file),
            ("store.client_key_file", &self.store.client_key_file),
        ] {
            let Some(path) = path else { continue };
            if !redis_tls {
                bad(
                    field,
                    "is only used with a TLS Redis URL (rediss://, rediss+sentinel://, rediss+cluster://)".into(),
                );
            } else if let Err(e) = std::fs::metadata(path) {
                bad(field, format!("cannot read {}: {e}", path.display()));
            }
        }
        if self.store.client_cert_file.is_some() != self.store.client_key_file.is_some() {
            bad(
                "store.client_key_file",
                "a Redis client certificate and its key are set together".into(),
            );
        }
        if !(1..=1000).contains(&self.store.wait_timeout_ms) {
            bad("store.wait_timeout_ms", "must be between 1 and 1000".into());
        }
        if self.store.wait_replicas.is_some_and(|n| n > 16) {
            bad("store.wait_replicas", "must be at most 16".into());
        }
        if self.dev.enabled && !self.dev.force {
            if backend == Ok(Backend::Redis) {
                bad(
                    "dev.enabled",
                    "dev mode with a Redis store looks like production: the built-in test IdP would sign anyone in to shared state; unset the Redis URL, or set dev.force = true (PORTCULLIS_DEV_FORCE=1) if this is really a test".into(),
                );
            }
            if matches!(&public_url, Ok(u) if u.scheme() == "https") {
                bad(
                    "dev.enabled",
                    "dev mode with an https public URL looks like production: the built-in test IdP would sign anyone in; use an http://localhost URL, or set dev.force = true (PORTCULLIS_DEV_FORCE=1) if this is really a test".into(),
                );
            }
        }
        match self.secrets.choose(self.dev.enabled, self.store.redis_url.is_some()) {
            Ok(_) => {}
            Err(crate::secrets::SecretsError::NoKey) => bad(
                "secrets.master_key_file",
                "a master key is required to keep secrets encrypted in Redis: set PORTCULLIS_MASTER_KEY_FILE \
                 (docs/SECRETS.md: `printf 'k1 = %s\\n' \"$(openssl rand -base64 32)\" > master.keys`), \
                 or secrets.allow_plaintext = true to store them unencrypted"
                    .into(),
            ),
            Err(e) => bad("secrets.master_key_file", e.to_string()),
        }
        if self.secrets.refuse_plaintext && self.secrets.allow_plaintext {
            bad(
                "secrets.refuse_plaintext",
                "cannot be on together with secrets.allow_plaintext".into(),
            );
        }
        if let Some(token) = &self.admin.token {
            if token.expose().len() < 16 {
                bad("admin.token", "must be at least 16 characters".into());
            }
        }
        if let Some(token) = &self.metrics.token {
            if token.expose().len() < 16 {
                bad("metrics.token", "must be at least 16 characters".into());
            }
        }
        if self.sessions.cookie_name.is_empty()
            || !self
                .sessions
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bad("sessions.cookie_name", "must be letters, digits, '_' or '-'".into());
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.client_id.is_empty() {
                bad(&format!("clients[{i}].client_id"), "must not be empty".into());
            }
            if c.redirect_uris.is_empty() {
                bad(
                    &format!("clients[{i}].redirect_uris"),
                    "needs at least one redirect URI".into(),
                );
            }
            for (j, u) in c.redirect_uris.iter().chain(&c.post_logout_redirect_uris).enumerate() {
                if let Err(m) = crate::provider::clients::check_redirect_uri(u) {
                    bad(&format!("clients[{i}].redirect_uris[{j}]"), m);
                }
            }
            for (j, g) in c.grant_types.iter().flatten().enumerate() {
                match crate::provider::clients::GrantType::parse(g) {
                    None => bad(
                        &format!("clients[{i}].grant_types[{j}]"),
                        format!("{g:?} is not one of authorization_code, refresh_token, client_credentials"),
                    ),
                    Some(crate::provider::clients::GrantType::ClientCredentials) if c.client_secret.is_none() => bad(
                        &format!("clients[{i}].grant_types[{j}]"),
                        "client_credentials needs a client_secret".into(),
                    ),
                    Some(crate::provider::clients::GrantType::TokenExchange) if c.client_secret.is_none() => bad(
                        &format!("clients[{i}].grant_types[{j}]"),
                        "token exchange needs a client_secret".into(),
                    ),
                    Some(_) => {}
                }
            }
        }
        for (i, r) in self.resource_servers.iter().enumerate() {
            let scopes: Vec<(String, String)> = r
                .scopes
                .iter()
                .map(|s| (s.name.clone(), s.description.clone()))
                .collect();
            if let Err((field, m)) = crate::provider::resources::check_resource_server(&r.identifier, &scopes) {
                bad(&format!("resource_servers[{i}].{field}"), m);
            }
            if let Err((field, m)) = crate::provider::resources::check_routes(&r.routes) {
                bad(&format!("resource_servers[{i}].{field}"), m);
            }
            if self
                .resource_servers
                .iter()
                .take(i)
                .any(|o| o.identifier == r.identifier)
            {
                bad(&format!("resource_servers[{i}].identifier"), "appears twice".into());
            }
        }
        match (listen, public_url) {
            (Ok(listen), Ok(public_url)) if problems.is_empty() => Ok(Resolved {
                listen,
                public_url,
                admin_listen,
                tls,
                shutdown_grace: std::time::Duration::from_secs(self.server.shutdown_grace_secs),
                shutdown_delay: std::time::Duration::from_secs(self.server.shutdown_delay_secs),
                max_in_flight: self.server.max_in_flight.unwrap_or_else(default_max_in_flight),
                max_in_flight_per_client: self.server.max_in_flight_per_client,
                admin_max_in_flight: self.server.admin_max_in_flight,
                header_timeout: std::time::Duration::from_secs(self.server.header_timeout_secs),
                body_timeout: std::time::Duration::from_secs(self.server.body_timeout_secs),
                max_connections: self.server.max_connections,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// [`DEFAULT_IN_FLIGHT_PER_CPU`] for every CPU this process may run on
/// (its affinity mask and cgroup quota count, so a pod limited to one CPU
/// gets 128).
pub fn default_max_in_flight() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    DEFAULT_IN_FLIGHT_PER_CPU.saturating_mul(cpus)
}

fn is_local_host(url: &Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults on the in-memory store (outside dev mode it must be chosen).
    fn memory_settings() -> Settings {
        let mut s = Settings::default();
        s.store.backend = Some("memory".into());
        s
    }

    #[test]
    fn join_keeps_base_path() {
        let base = Url::parse("https://sso.example.com/gw/").unwrap();
        assert_eq!(join_public(&base, "token").as_str(), "https://sso.example.com/gw/token");
        let base = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(join_public(&base, "/jwks").as_str(), "http://127.0.0.1:8080/jwks");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Settings::parse("[server]\nlisten = \"127.0.0.1:1\"\nport = 3\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn resource_server_routes_are_read_and_checked() {
        let text = r#"
[[resource_servers]]
identifier = "https://home.example.test"
scopes = [{ name = "home:read" }]
routes = [
  { path = "/home/${sub}/**", methods = ["GET"], scopes = ["home:read"] },
  { path = "/a/**/b" },
]
"#;
        let mut s = Settings::parse(text, "portcullis.toml").unwrap();
        assert_eq!(s.resource_servers[0].routes[0].path, "/home/${sub}/**");
        s.store.backend = Some("memory".into());
        let err = s.validate("portcullis.toml").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["resource_servers[0].routes[1].path"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = Settings::default();
        s.store.backend = Some("memory".into());
        s.server.listen = "nope".into();
        s.server.public_url = "ftp://x".into();
        s.tokens.algorithm = "HS256".into();
        let err = s.validate("portcullis.toml").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["server.listen", "server.public_url", "tokens.algorithm"]);
        assert!(err.0.iter().all(|p| p.source == "portcullis.toml"));
    }

    /// A rotation interval beyond any sensible key life (here one whose
    /// seconds would not fit a u64, which wrapped in a release build into an
    /// arbitrary interval) is a configuration problem, not a start.
    #[test]
    fn a_key_rotation_interval_beyond_ten_years_is_refused() {
        let mut s = memory_settings();
        for days in [0, 90, MAX_KEY_ROTATION_DAYS] {
            s.tokens.key_rotation_days = days;
            assert!(problems(&s).is_empty(), "{days}: {:?}", problems(&s));
        }
        for days in [MAX_KEY_ROTATION_DAYS + 1, u64::MAX / 86_400 + 1, u64::MAX] {
            s.tokens.key_rotation_days = days;
            assert_eq!(
                problems(&s),
                [format!("tokens.key_rotation_days: {days} is outside 0..=3650")],
                "{days}"
            );
        }
    }

    fn problems(s: &Settings) -> Vec<String> {
        match s.validate("x.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect(),
        }
    }

    #[test]
    fn without_a_redis_url_only_dev_mode_or_an_explicit_memory_backend_start() {
        let s = Settings::default();
        let p = problems(&s);
        assert!(p.iter().any(|p| p.starts_with("store.backend: no Redis URL")), "{p:?}");
        let s = Settings::parse("[store]\nbackend = \"memory\"\n", "x.toml").unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        let s = Settings::parse("[dev]\nenabled = true\n", "x.toml").unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        let s = Settings::parse("[store]\nbackend = \"redis\"\n", "x.toml").unwrap();
        assert!(
            problems(&s).iter().any(|p| p.contains("no Redis URL")),
            "{:?}",
            problems(&s)
        );
        let s = Settings::parse(
            "[store]\nbackend = \"memory\"\nredis_url = \"redis://127.0.0.1:6379\"\n",
            "x.toml",
        )
        .unwrap();
        assert!(
            problems(&s).iter().any(|p| p.starts_with("store.backend")),
            "{:?}",
            problems(&s)
        );
        let s = Settings::parse("[store]\nbackend = \"disk\"\n", "x.toml").unwrap();
        assert!(
            problems(&s).iter().any(|p| p.starts_with("store.backend")),
            "{:?}",
            problems(&s)
        );
    }

    #[test]
    fn every_topology_url_is_accepted_and_a_bad_one_is_not_echoed() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://u:p@redis.example.com:6380",
            "redis+sentinel://:p@10.0.0.1:26379,10.0.0.2:26379/mymaster",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        ] {
            let mut s = Settings::default();
            s.secrets.allow_plaintext = true;
            s.store.redis_url = Some(Secret::new(url.to_owned()));
            assert!(problems(&s).is_empty(), "{url}: {:?}", problems(&s));
        }
        let mut s = Settings::default();
        s.store.redis_url = Some(Secret::new("redis+sentinel://:hunter2@h:1".to_owned()));
        let p = problems(&s);
        assert!(p.iter().any(|p| p.starts_with("store.redis_url")), "{p:?}");
        assert!(!p.concat().contains("hunter2"));
        let mut s = Settings::default();
        s.store.redis_url = Some(Secret::new("http://h:1".to_owned()));
        assert!(problems(&s).iter().any(|p| p.starts_with("store.redis_url")));
    }

    #[test]
    fn tls_files_need_a_tls_url_and_go_together() {
        let mut s = Settings::default();
        s.secrets.allow_plaintext = true;
        s.store.redis_url = Some(Secret::new("redis://127.0.0.1:6379".to_owned()));
        s.store.ca_file = Some(PathBuf::from("Cargo.toml"));
        assert!(problems(&s)
            .iter()
            .any(|p| p.starts_with("store.ca_file: is only used with a TLS")));
        s.store.redis_url = Some(Secret::new("rediss://127.0.0.1:6379".to_owned()));
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        s.store.client_cert_file = Some(PathBuf::from("Cargo.toml"));
        assert!(problems(&s).iter().any(|p| p.starts_with("store.client_key_file")));
        s.store.client_key_file = Some(PathBuf::from("no/such/file.pem"));
        assert!(problems(&s)
            .iter()
            .any(|p| p.starts_with("store.client_key_file: cannot read")));
    }

    #[test]
    fn dev_mode_refuses_production_looks_unless_forced() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let mut s = Settings::default();
        s.apply_env(&env(&[
            ("PORTCULLIS_DEV", "1"),
            ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379"),
        ]))
        .unwrap();
        assert!(problems(&s)
            .iter()
            .any(|p| p.starts_with("dev.enabled: dev mode with a Redis store")));
        let mut s = Settings::default();
        s.apply_env(&env(&[
            ("PORTCULLIS_DEV", "1"),
            ("PORTCULLIS_PUBLIC_URL", "https://sso.example.com"),
        ]))
        .unwrap();
        assert!(problems(&s)
            .iter()
            .any(|p| p.starts_with("dev.enabled: dev mode with an https public URL")));
        s.apply_env(&env(&[
            ("PORTCULLIS_DEV_FORCE", "1"),
            ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379"),
        ]))
        .unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
    }

    #[test]
    fn store_environment_overrides() {
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_STORE_BACKEND", "redis"),
            ("PORTCULLIS_REDIS_URL", "rediss://127.0.0.1:6380"),
            ("PORTCULLIS_REDIS_CA_FILE", "Cargo.toml"),
            ("PORTCULLIS_REDIS_CLIENT_CERT_FILE", "Cargo.toml"),
            ("PORTCULLIS_REDIS_CLIENT_KEY_FILE", "Cargo.lock"),
            ("PORTCULLIS_REDIS_WAIT_REPLICAS", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = Settings::default();
        s.secrets.allow_plaintext = true;
        s.apply_env(&env).unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!(s.store.backend.as_deref(), Some("redis"));
        assert_eq!(s.store.ca_file, Some(PathBuf::from("Cargo.toml")));
        assert_eq!(s.store.client_key_file, Some(PathBuf::from("Cargo.lock")));
        assert_eq!(s.store.wait_replicas, Some(2));
        let bad: BTreeMap<String, String> = [("PORTCULLIS_REDIS_WAIT_REPLICAS".to_string(), "one".to_string())].into();
        assert!(Settings::default().apply_env(&bad).is_err());
    }

    #[test]
    fn upstream_refresh_interval_is_bounded() {
        let s = Settings::parse("[upstream]\nrefresh_interval_secs = 10\n", "x.toml").unwrap();
        let err = s.validate("x.toml").unwrap_err();
        assert!(
            err.0.iter().any(|p| p.field == "upstream.refresh_interval_secs"),
            "{err}"
        );
        let s = Settings::parse("[upstream]\nrefresh_interval_secs = 900\n", "x.toml").unwrap();
        assert_eq!(s.upstream.refresh_interval_secs, 900);
        assert_eq!(Settings::default().upstream.refresh_interval_secs, 3600);
    }

    #[test]
    fn cached_connections_is_bounded() {
        for bad in [0, 1_000_001] {
            let s = Settings::parse(&format!("[upstream]\ncached_connections = {bad}\n"), "x.toml").unwrap();
            let err = s.validate("x.toml").unwrap_err();
            assert!(err.0.iter().any(|p| p.field == "upstream.cached_connections"), "{err}");
        }
        let mut s = Settings::parse("[upstream]\ncached_connections = 500\n", "x.toml").unwrap();
        assert_eq!(s.upstream.cached_connections, 500);
        let env: BTreeMap<String, String> = [("PORTCULLIS_CACHED_CONNECTIONS".to_string(), "2".to_string())].into();
        s.apply_env(&env).unwrap();
        assert_eq!(s.upstream.cached_connections, 2);
        let bad: BTreeMap<String, String> = [("PORTCULLIS_CACHED_CONNECTIONS".to_string(), "many".to_string())].into();
        assert!(Settings::default().apply_env(&bad).is_err());
        assert_eq!(Settings::default().upstream.cached_connections, 10_000);
    }

    #[test]
    fn max_in_flight_defaults_to_the_machine_and_is_bounded() {
        let r = memory_settings().validate("d").unwrap();
        assert_eq!(r.max_in_flight, default_max_in_flight());
        assert!(r.max_in_flight >= DEFAULT_IN_FLIGHT_PER_CPU);
        let s = Settings::parse("[store]\nbackend = \"memory\"\n[server]\nmax_in_flight = 7\n", "x.toml").unwrap();
        assert_eq!(s.validate("x.toml").unwrap().max_in_flight, 7);
        let mut s = memory_settings();
        let env: BTreeMap<String, String> = [("PORTCULLIS_MAX_IN_FLIGHT".to_string(), "0".to_string())].into();
        s.apply_env(&env).unwrap();
        let err = s.validate("d").unwrap_err();
        assert!(err.0.iter().any(|p| p.field == "server.max_in_flight"), "{err}");
        let bad: BTreeMap<String, String> = [("PORTCULLIS_MAX_IN_FLIGHT".to_string(), "lots".to_string())].into();
        assert!(memory_settings().apply_env(&bad).is_err());
    }

    #[test]
    fn the_per_client_cap_and_the_admin_budget_default_small_and_are_bounded() {
        let r = memory_settings().validate("d").unwrap();
        assert_eq!(
            (r.max_in_flight_per_client, r.admin_max_in_flight),
            (DEFAULT_MAX_IN_FLIGHT_PER_CLIENT, DEFAULT_ADMIN_MAX_IN_FLIGHT)
        );
        let s = Settings::parse(
            "[store]\nbackend = \"memory\"\n[server]\nmax_in_flight_per_client = 0\nadmin_max_in_flight = 5\n",
            "x.toml",
        )
        .unwrap();
        let r = s.validate("x.toml").unwrap();
        assert_eq!((r.max_in_flight_per_client, r.admin_max_in_flight), (0, 5), "0: no cap");
        let mut s = memory_settings();
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_MAX_IN_FLIGHT_PER_CLIENT".to_string(), "1000001".to_string()),
            ("PORTCULLIS_ADMIN_MAX_IN_FLIGHT".to_string(), "0".to_string()),
        ]
        .into();
        s.apply_env(&env).unwrap();
        let err = s.validate("d").unwrap_err();
        for field in ["server.max_in_flight_per_client", "server.admin_max_in_flight"] {
            assert!(err.0.iter().any(|p| p.field == field), "{field}: {err}");
        }
        let bad: BTreeMap<String, String> =
            [("PORTCULLIS_MAX_IN_FLIGHT_PER_CLIENT".to_string(), "many".to_string())].into();
        assert!(memory_settings().apply_env(&bad).is_err());
    }

    #[test]
    fn listeners_tls_and_grace_are_checked() {
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:9090"),
            ("PORTCULLIS_TLS_CERT_FILE", "/etc/portcullis/tls.crt"),
            ("PORTCULLIS_TLS_KEY_FILE", "/etc/portcullis/tls.key"),
            ("PORTCULLIS_SHUTDOWN_GRACE_SECS", "7"),
            ("PORTCULLIS_SHUTDOWN_DELAY_SECS", "5"),
            ("PORTCULLIS_HEADER_TIMEOUT_SECS", "90"),
            ("PORTCULLIS_BODY_TIMEOUT_SECS", "12"),
            ("PORTCULLIS_MAX_CONNECTIONS", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = Settings::default();
        s.store.backend = Some("memory".into());
        s.apply_env(&env).unwrap();
        let r = s.validate("env").unwrap();
        assert_eq!(r.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(r.tls.unwrap().key, PathBuf::from("/etc/portcullis/tls.key"));
        assert_eq!(r.shutdown_grace.as_secs(), 7);
        assert_eq!(r.shutdown_delay.as_secs(), 5);
        assert_eq!((r.header_timeout.as_secs(), r.body_timeout.as_secs()), (90, 12));
        assert_eq!(r.max_connections, 500);
        let defaults = memory_settings().validate("d").unwrap();
        assert_eq!(defaults.shutdown_grace.as_secs(), 25);
        assert_eq!(
            (defaults.header_timeout.as_secs(), defaults.body_timeout.as_secs()),
            (65, 30)
        );

        let s = Settings::parse(
            "[store]\nbackend = \"memory\"\n[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\ntls_cert_file = \"c.pem\"\nshutdown_grace_secs = 0\nshutdown_delay_secs = 121\nheader_timeout_secs = 0\nbody_timeout_secs = 3601\nmax_connections = 0\n",
            "x.toml",
        )
        .unwrap();
        let err = s.validate("x.toml").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "server.admin_listen",
                "server.tls_key_file",
                "server.shutdown_grace_secs",
                "server.header_timeout_secs",
                "server.body_timeout_secs",
                "server.max_connections",
                "server.shutdown_delay_secs"
            ]
        );
        let mut s = Settings::default();
        s.server.admin_listen = Some("nowhere".into());
        assert!(s.validate("x").unwrap_err().to_string().contains("server.admin_listen"));
        let env: BTreeMap<String, String> = [("PORTCULLIS_SHUTDOWN_GRACE_SECS".to_string(), "soon".to_string())].into();
        assert!(Settings::default().apply_env(&env).is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_LISTEN", "0.0.0.0:9000"),
            ("PORTCULLIS_PUBLIC_URL", "https://sso.example.com"),
            ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379"),
            ("PORTCULLIS_ADMIN_TOKEN", "0123456789abcdef0123"),
            ("PORTCULLIS_ALLOW_PRIVATE_NETWORKS", "true"),
            (
                "PORTCULLIS_MASTER_KEY",
                "env1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = Settings::default();
        s.apply_env(&env).unwrap();
        let r = s.validate("env").unwrap();
        assert_eq!(r.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(r.public_url.as_str(), "https://sso.example.com/");
        assert_eq!(s.store.redis_url.as_ref().unwrap().expose(), "redis://127.0.0.1:6379");
        assert!(s.outbound.allow_private_networks);
        assert!(s.throttle.enabled, "throttling is on by default");
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_THROTTLE_ENABLED", "false"),
            ("PORTCULLIS_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        s.apply_env(&env).unwrap();
        assert!(!s.throttle.enabled);
        assert_eq!(s.throttle.trusted_proxies, ["10.0.0.0/8", "192.0.2.1"]);
        assert!(
            !format!("{s:?}").contains("0123456789abcdef0123"),
            "secrets must not print"
        );
        assert!(
            !format!("{s:?}").contains("redis://127.0.0.1"),
            "the Redis URL may hold a password"
        );
        assert!(!format!("{s:?}").contains("AQEBAQEB"), "the master key must not print");
    }

    #[test]
    fn a_redis_store_outside_dev_mode_needs_a_master_key_or_an_explicit_plaintext_choice() {
        let redis = "[store]\nredis_url = \"redis://127.0.0.1:6379\"\n";
        let s = Settings::parse(redis, "x.toml").unwrap();
        let err = s.validate("x.toml").unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.field == "secrets.master_key_file" && p.message.contains("openssl rand")),
            "{err}"
        );
        let s = Settings::parse(&format!("{redis}[secrets]\nallow_plaintext = true\n"), "x.toml").unwrap();
        assert!(s.validate("x.toml").is_ok());
        let s = Settings::parse(&format!("{redis}[dev]\nenabled = true\nforce = true\n"), "x.toml").unwrap();
        assert!(s.validate("x.toml").is_ok(), "dev mode derives its key");
        assert!(memory_settings().validate("x").is_ok(), "the memory store needs no key");
        let s = Settings::parse(
            &format!("{redis}[secrets]\nallow_plaintext = true\nrefuse_plaintext = true\n"),
            "x.toml",
        )
        .unwrap();
        assert!(s.validate("x.toml").is_err());
    }

    #[test]
    fn metrics_settings_come_from_the_file_and_the_environment() {
        let s = Settings::parse("[metrics]\nenabled = false\ntoken = \"short\"\n", "x.toml").unwrap();
        assert!(!s.metrics.enabled);
        let err = s.validate("x.toml").unwrap_err();
        assert!(err.0.iter().any(|p| p.field == "metrics.token"), "{err}");
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_METRICS_TOKEN", "scrape-token-0123456789"),
            ("PORTCULLIS_METRICS_ENABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = Settings::default();
        s.store.backend = Some("memory".into());
        assert!(s.metrics.enabled && s.metrics.token.is_none());
        s.apply_env(&env).unwrap();
        s.validate("env").unwrap();
        assert_eq!(s.metrics.token.as_ref().unwrap().expose(), "scrape-token-0123456789");
        assert!(!format!("{s:?}").contains("scrape-token"), "secrets must not print");
    }

    /// `[quotas]` defaults to the caps the code always had, each value
    /// above its bound is refused naming its field (all at once), `0` is
    /// allowed, a file sets them and the environment overrides the file.
    #[test]
    fn quotas_default_to_the_old_caps_are_bounded_and_overridden_by_the_environment() {
        let q = QuotaSettings::default();
        assert_eq!(q.connections_per_tenant, crate::tenant::MAX_CONNECTIONS);
        assert_eq!(q.connections_per_tenant, 50);
        assert_eq!(q.domains_per_tenant, crate::tenant::MAX_DOMAINS);
        assert_eq!(q.exchange_rules_per_tenant, crate::provider::exchange::MAX_RULES);
        assert_eq!(q.outbound_per_minute, crate::admin::MAX_OUTBOUND_PER_MINUTE);
        assert_eq!(
            q.password_hashes_per_minute,
            crate::admin::MAX_PASSWORD_HASHES_PER_MINUTE
        );
        assert_eq!(
            q.key_generations_per_minute,
            crate::admin::MAX_KEY_GENERATIONS_PER_MINUTE
        );
        assert_eq!(memory_settings().quotas, q);
        let shipped = Settings::parse(include_str!("../../config/portcullis.toml"), "portcullis.toml").unwrap();
        assert_eq!(shipped.quotas, q, "the shipped file documents the defaults");
        assert!(problems(&memory_settings()).is_empty());

        let file = "[store]\nbackend = \"memory\"\n[quotas]\nconnections_per_tenant = 1001\ndomains_per_tenant = 501\n\
                    exchange_rules_per_tenant = 501\noutbound_per_minute = 1001\npassword_hashes_per_minute = 1001\n\
                    key_generations_per_minute = 601\n";
        let s = Settings::parse(file, "q.toml").unwrap();
        let found = problems(&s);
        for field in [
            "connections_per_tenant",
            "domains_per_tenant",
            "exchange_rules_per_tenant",
            "outbound_per_minute",
            "password_hashes_per_minute",
            "key_generations_per_minute",
        ] {
            assert!(
                found.iter().any(|p| p.contains(&format!("quotas.{field}"))),
                "{field}: {found:?}"
            );
        }
        assert_eq!(found.len(), 6, "{found:?}");
        assert!(Settings::parse("[quotas]\nconnection_per_tenant = 3\n", "q.toml").is_err());

        let file = "[store]\nbackend = \"memory\"\n[quotas]\nconnections_per_tenant = 80\ndomains_per_tenant = 0\n\
                    key_generations_per_minute = 600\n";
        let mut s = Settings::parse(file, "q.toml").unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!((s.quotas.connections_per_tenant, s.quotas.domains_per_tenant), (80, 0));
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_QUOTAS_CONNECTIONS_PER_TENANT", "5"),
            ("PORTCULLIS_QUOTAS_EXCHANGE_RULES_PER_TENANT", "7"),
            ("PORTCULLIS_QUOTAS_OUTBOUND_PER_MINUTE", "3"),
            ("PORTCULLIS_QUOTAS_PASSWORD_HASHES_PER_MINUTE", "0"),
            ("PORTCULLIS_QUOTAS_KEY_GENERATIONS_PER_MINUTE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        s.apply_env(&env).unwrap();
        assert_eq!(
            s.quotas,
            QuotaSettings {
                connections_per_tenant: 5,
                domains_per_tenant: 0,
                exchange_rules_per_tenant: 7,
                outbound_per_minute: 3,
                password_hashes_per_minute: 0,
                key_generations_per_minute: 1,
            }
        );
        let env: BTreeMap<String, String> = [("PORTCULLIS_QUOTAS_DOMAINS_PER_TENANT", "lots")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = Settings::default().apply_env(&env).unwrap_err().to_string();
        assert!(err.contains("PORTCULLIS_QUOTAS_DOMAINS_PER_TENANT"), "{err}");
        let env: BTreeMap<String, String> = [("PORTCULLIS_QUOTAS_DOMAINS_PER_TENANT", "100000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.apply_env(&env).unwrap();
        let found = problems(&s);
        assert!(
            found.len() == 1 && found[0].contains("quotas.domains_per_tenant"),
            "{found:?}"
        );
    }
}
