//! Configuration: a TOML file, then `PORTCULLIS_*` environment overrides,
//! validated as a whole before the port is bound.
//!
//! Unknown keys are errors. [`Settings::validate`] reports every problem at
//! once, each naming the file (or variable) and the field it came from.
//! Secrets are [`Secret`]s, so `Debug` never prints them.

pub mod throttle;

use crate::secret::Secret;
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
    /// `[throttle]`: rate limits and trusted proxies.
    pub throttle: ThrottleSettings,
    /// Where declarative tenant files live.
    pub tenants_dir: Option<PathBuf>,
    /// Apps (OIDC clients) declared in the file.
    pub clients: Vec<ClientSettings>,
    /// Resource servers (APIs) declared in the file.
    pub resource_servers: Vec<ResourceServerSettings>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind (`PORTCULLIS_LISTEN`).
    pub listen: String,
    /// The issuer and base of every URL handed out (`PORTCULLIS_PUBLIC_URL`).
    pub public_url: String,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Redis URL (`PORTCULLIS_REDIS_URL`); unset means the in-memory store.
    pub redis_url: Option<Secret>,
    /// Prefix of every key, so several deployments can share a Redis.
    pub key_prefix: String,
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
    /// Lifetime of access tokens, seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token family, seconds.
    pub refresh_token_ttl_secs: u64,
    /// Lifetime of authorization codes, seconds.
    pub code_ttl_secs: u64,
    /// Rotate the signing key after this many days (0: only on demand).
    pub key_rotation_days: u64,
}

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
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
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
        flag("PORTCULLIS_THROTTLE_ENABLED", &mut self.throttle.enabled);
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
        if let Some(v) = env.get("PORTCULLIS_REDIS_URL") {
            self.store.redis_url = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_ADMIN_TOKEN") {
            self.admin.token = (!v.is_empty()).then(|| Secret::new(v.clone()));
        }
        if let Some(v) = env.get("PORTCULLIS_TENANTS_DIR") {
            self.tenants_dir = Some(PathBuf::from(v));
        }
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
                86_400,
            ),
            (
                "tokens.refresh_token_ttl_secs",
                self.tokens.refresh_token_ttl_secs,
                300,
                365 * 86_400,
            ),
            ("tokens.code_ttl_secs", self.tokens.code_ttl_secs, 10, 600),
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
        if !(0..=300).contains(&self.upstream.clock_skew_secs) {
            bad("upstream.clock_skew_secs", "must be between 0 and 300".into());
        }
        if self.outbound.max_body_bytes < 1024 || self.outbound.max_body_bytes > 16 * 1024 * 1024 {
            bad("outbound.max_body_bytes", "must be between 1 KiB and 16 MiB".into());
        }
        if self.store.key_prefix.is_empty() || self.store.key_prefix.contains(['{', '}', ' ']) {
            bad("store.key_prefix", "must be non-empty, without braces or spaces".into());
        }
        if let Some(url) = &self.store.redis_url {
            if !url.expose().starts_with("redis://") && !url.expose().starts_with("rediss://") {
                bad("store.redis_url", "must start with redis:// or rediss://".into());
            }
        }
        if let Some(token) = &self.admin.token {
            if token.expose().len() < 16 {
                bad("admin.token", "must be at least 16 characters".into());
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
            (Ok(listen), Ok(public_url)) if problems.is_empty() => Ok(Resolved { listen, public_url }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

fn is_local_host(url: &Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_problem_is_reported_at_once() {
        let mut s = Settings::default();
        s.server.listen = "nope".into();
        s.server.public_url = "ftp://x".into();
        s.tokens.algorithm = "HS256".into();
        let err = s.validate("portcullis.toml").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["server.listen", "server.public_url", "tokens.algorithm"]);
        assert!(err.0.iter().all(|p| p.source == "portcullis.toml"));
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
    fn environment_overrides_the_file() {
        let env: BTreeMap<String, String> = [
            ("PORTCULLIS_LISTEN", "0.0.0.0:9000"),
            ("PORTCULLIS_PUBLIC_URL", "https://sso.example.com"),
            ("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379"),
            ("PORTCULLIS_ADMIN_TOKEN", "0123456789abcdef0123"),
            ("PORTCULLIS_ALLOW_PRIVATE_NETWORKS", "true"),
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
    }
}
