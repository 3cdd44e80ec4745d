//! Wiring: builds every part from the settings, seeds declared tenants and
//! apps, and returns the router. Tests call [`build`] and serve it on port 0.

use crate::broker::{connectors::ConnectorCache, Broker};
use crate::clock::SharedClock;
use crate::config::{Backend, Resolved, Settings};
use crate::directory::Directory;
use crate::http::{AppState, SessionConfig};
use crate::ids::{ConnectionId, TenantId};
use crate::provider::clients::{default_grant_types, hash_secret, Client, ClientRegistry, GrantType};
use crate::provider::resources::{check_resource_server, ResourceRegistry, ResourceServer};
use crate::provider::Provider;
use crate::secrets::sealed::SealedStore;
use crate::store::redis::{RedisOptions, RedisStore, RedisTls};
use crate::store::{memory::MemoryStore, metered::MeteredStore, SharedStore};
use crate::tenant::TenantRegistry;
use crate::tokens::{KeyConfig, KeyManager, SigningAlgorithm};
use crate::upstream::http::{OutboundConfig, OutboundHttp};
use crate::upstream::UpstreamContext;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// Opens the configured store: Redis (any topology) or, only when the
/// settings say so (dev mode, `store.backend = "memory"`), memory.
pub async fn open_store(settings: &Settings, clock: SharedClock) -> anyhow::Result<SharedStore> {
    let backend = settings
        .store
        .resolve_backend(settings.dev.enabled)
        .map_err(|m| anyhow::anyhow!("store.backend: {m}"))?;
    match (backend, &settings.store.redis_url) {
        (Backend::Redis, Some(url)) => {
            let read = |path: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
                path.as_ref()
                    .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
                    .transpose()
            };
            let options = RedisOptions {
                url: url.expose().to_owned(),
                prefix: settings.store.key_prefix.clone(),
                tls: RedisTls {
                    ca_pem: read(&settings.store.ca_file)?,
                    client_cert_pem: read(&settings.store.client_cert_file)?,
                    client_key_pem: read(&settings.store.client_key_file)?,
                },
                wait_replicas: settings.store.wait_replicas,
                wait_timeout: Duration::from_millis(settings.store.wait_timeout_ms),
            };
            // Measured: Redis latency and errors at `/metrics`.
            Ok(Arc::new(MeteredStore::new(
                RedisStore::connect_with(&options)
                    .await
                    .context("cannot connect to Redis")?,
            )))
        }
        (Backend::Redis, None) => anyhow::bail!("store.backend: redis needs a Redis URL"),
        (Backend::Memory, _) => Ok(Arc::new(MemoryStore::new(clock))),
    }
}

/// Wraps `store` so that secrets are sealed at rest under the configured
/// master keys (`[secrets]`, [`crate::secrets::sealed`]). Every part of the
/// gateway and every command that writes records uses the wrapped store.
pub fn seal_store(settings: &Settings, store: SharedStore) -> anyhow::Result<Arc<SealedStore>> {
    use crate::secrets::{Cipher, KeyChoice, DEV_KEY_ID};
    let persistent = settings.store.redis_url.is_some();
    let cipher = match settings
        .secrets
        .choose(settings.dev.enabled, persistent)
        .map_err(|e| anyhow::anyhow!("secrets: {e}"))?
    {
        KeyChoice::Keys(source) => {
            if source.current().id() == DEV_KEY_ID && persistent {
                tracing::warn!(
                    reason = "secrets.dev_key",
                    "dev mode: secrets in Redis are sealed under the derived dev key, which is NOT SECRET; set PORTCULLIS_MASTER_KEY_FILE for anything real"
                );
            } else {
                tracing::info!(reason = "secrets.sealed", keys = %source.describe(), "secrets at rest are sealed with AES-256-GCM");
            }
            Some(Cipher::new(source))
        }
        KeyChoice::Plaintext => {
            tracing::warn!(
                reason = "secrets.plaintext",
                "secrets.allow_plaintext: client secrets, refresh tokens and private keys are stored UNENCRYPTED in Redis; set PORTCULLIS_MASTER_KEY_FILE"
            );
            None
        }
    };
    Ok(Arc::new(SealedStore::new(
        store,
        cipher,
        settings.secrets.refuse_plaintext,
    )))
}

/// Builds the connector context from the settings.
pub fn upstream_context(
    settings: &Settings,
    resolved: &Resolved,
    store: SharedStore,
    clock: SharedClock,
) -> anyhow::Result<UpstreamContext> {
    let http = OutboundHttp::new(OutboundConfig {
        allow_private_networks: settings.outbound.allow_private_networks,
        timeout: Duration::from_secs(settings.outbound.timeout_secs),
        max_body_bytes: settings.outbound.max_body_bytes,
    })
    .map_err(|e| anyhow::anyhow!("outbound client: {}", e.detail))?;
    Ok(UpstreamContext {
        http,
        clock,
        store,
        public_url: resolved.public_url.clone(),
        clock_skew_secs: settings.upstream.clock_skew_secs,
        saml_in_place_bytes: crate::upstream::saml::in_place_bytes_for(
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        ),
    })
}

/// Builds the application state on `store`.
pub async fn build(
    settings: &Settings,
    resolved: &Resolved,
    store: SharedStore,
    clock: SharedClock,
) -> anyhow::Result<Arc<AppState>> {
    // Once per process; later builds (tests run several) share it.
    if settings.metrics.enabled {
        crate::meter::install();
    }
    let store: SharedStore = seal_store(settings, store)?;
    let upstream = upstream_context(settings, resolved, store.clone(), clock.clone())?;
    // `Settings::validate` has already refused any other name.
    let alg = SigningAlgorithm::from_jose(&settings.tokens.algorithm).unwrap_or_default();
    let max_lifetime = settings
        .tokens
        .id_token_ttl_secs
        .max(settings.tokens.access_token_ttl_secs);
    let keys = KeyManager::init(
        store.clone(),
        clock.clone(),
        KeyConfig {
            algorithm: alg,
            rotation_interval: (settings.tokens.key_rotation_days > 0)
                .then(|| Duration::from_secs(settings.tokens.key_rotation_days.saturating_mul(86_400))),
            max_token_lifetime: Duration::from_secs(max_lifetime),
            cache_for: Duration::from_secs(30),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("signing keys: {e}"))?;
    let directory = Directory::new(store.clone(), clock.clone());
    let clients = ClientRegistry::new(store.clone());
    let cached = settings.upstream.cached_connections;
    let tenants = TenantRegistry::new(store.clone(), clock.clone()).keeping_connections(cached);
    let connectors = ConnectorCache::new(cached);
    let refresher = crate::broker::upstream_refresh::UpstreamRefresher::new(
        tenants.clone(),
        upstream.clone(),
        connectors.clone(),
        store.clone(),
        settings.upstream.refresh_interval_secs,
        settings.tokens.refresh_token_ttl_secs,
        Duration::from_secs(settings.sessions.ttl_secs),
    );
    let provider = Provider {
        issuer: resolved.public_url.clone(),
        store: store.clone(),
        clock: clock.clone(),
        ttl: settings.tokens.clone(),
        keys: Arc::new(keys),
        clients,
        resources: ResourceRegistry::new(store.clone()),
        directory,
        upstream: Some(crate::broker::upstream_refresh::hook(refresher)),
        audit: crate::audit::Audit::with_config(store.clone(), clock.clone(), settings.audit.audit_config()),
        hooks: Some(
            crate::hooks::Hooks::new(
                store.clone(),
                clock.clone(),
                settings.hooks.hooks_config(settings.outbound.allow_private_networks),
            )
            .map_err(|e| anyhow::anyhow!("hooks: {e}"))?,
        ),
    };
    let broker = Broker {
        provider: provider.clone(),
        tenants: tenants.clone(),
        upstream: upstream.clone(),
        connectors,
        store: store.clone(),
        session_ttl: Duration::from_secs(settings.sessions.ttl_secs),
        login_ttl: Duration::from_secs(settings.sessions.login_ttl_secs),
        passkeys: if settings.passkeys.enabled {
            Some(
                crate::mfa::passkey::Passkeys::new(
                    store.clone(),
                    clock.clone(),
                    &upstream.public_url,
                    settings.passkeys.rp_name(),
                )
                .map_err(|e| anyhow::anyhow!("passkeys: {e}"))?,
            )
        } else {
            None
        },
    };
    let accounts = local_accounts(settings, &store, &clock, &provider.audit)?
        .with_hooks(provider.hooks.clone())
        .with_tenants(tenants.clone());
    let state = Arc::new(AppState {
        broker,
        provider,
        tenants,
        upstream,
        store,
        admin_token: settings.admin.token.clone(),
        dev: settings.dev.enabled,
        session: SessionConfig {
            cookie_name: crate::http::session_cookie_name(
                &settings.sessions.cookie_name,
                resolved.public_url.scheme() == "https",
            ),
            ttl: Duration::from_secs(settings.sessions.ttl_secs),
            secure: resolved.public_url.scheme() == "https",
        },
        domains: crate::tenant::domains::DomainVerifier::new(
            // Validated as socket addresses by `Settings::validate`.
            settings.dns.nameservers.iter().filter_map(|a| a.parse().ok()).collect(),
            Duration::from_secs(settings.dns.timeout_secs),
        ),
        lifecycle: crate::http::server::Lifecycle::default(),
        connections: crate::http::server::Connections::default(),
        metrics: settings.metrics.clone(),
        quotas: settings.quotas,
        refused_scrapes: Arc::new(crate::http::quiet::Quiet::new(std::time::Duration::from_secs(60))),
        edge: Arc::new(crate::http::edge::EdgeConfig::new(
            &settings.throttle,
            resolved.body_timeout,
        )),
        accounts,
        in_flight: Arc::new(
            crate::http::shed::InFlight::new(resolved.max_in_flight).per_client(resolved.max_in_flight_per_client),
        ),
        admin_in_flight: Arc::new(
            crate::http::shed::InFlight::new(resolved.admin_max_in_flight)
                .per_client(resolved.max_in_flight_per_client),
        ),
        published: Arc::default(),
    });
    seed_resource_servers(&state, settings).await?;
    seed_clients(&state, settings).await?;
    if settings.dev.enabled {
        seed_dev(&state).await?;
    }
    if let Some(dir) = &settings.tenants_dir {
        seed_tenant_files(&state, dir).await?;
    }
    Ok(state)
}

/// Builds the local-accounts service from `[local]` and `[mail]`.
pub fn local_accounts(
    settings: &Settings,
    store: &SharedStore,
    clock: &SharedClock,
    audit: &crate::audit::Audit,
) -> anyhow::Result<crate::local::Accounts> {
    let l = &settings.local;
    let hasher = crate::local::password::Hasher::new(
        l.argon2_memory_kib,
        l.argon2_iterations,
        l.argon2_parallelism,
        l.max_concurrent_hashes,
    )
    .map_err(|e| anyhow::anyhow!("local: {e}"))?;
    let mailer = crate::mail::Mailer::from_settings(&settings.mail, settings.dev.enabled)?;
    Ok(crate::local::Accounts::new(
        store.clone(),
        clock.clone(),
        Arc::new(hasher),
        mailer,
        crate::local::LockoutPolicy {
            threshold: l.lockout_threshold,
            base_secs: l.lockout_base_secs,
            max_secs: l.lockout_max_secs,
            window_secs: l.lockout_window_secs,
        },
        audit.clone(),
    ))
}

/// Loads `[[resource_servers]]` (before the apps that refer to them).
async fn seed_resource_servers(state: &AppState, settings: &Settings) -> anyhow::Result<()> {
    for (i, r) in settings.resource_servers.iter().enumerate() {
        let pairs: Vec<(String, String)> = r
            .scopes
            .iter()
            .map(|s| (s.name.clone(), s.description.clone()))
            .collect();
        let scopes = check_resource_server(&r.identifier, &pairs)
            .map_err(|(f, m)| anyhow::anyhow!("resource_servers[{i}].{f}: {m}"))?;
        crate::provider::resources::check_routes(&r.routes)
            .map_err(|(f, m)| anyhow::anyhow!("resource_servers[{i}].{f}: {m}"))?;
        let rs = ResourceServer {
            identifier: r.identifier.clone(),
            name: if r.name.is_empty() {
                r.identifier.clone()
            } else {
                r.name.clone()
            },
            scopes,
            created_at: state.provider.clock.now(),
            routes: r.routes.clone(),
        };
        state
            .provider
            .resources
            .put(&rs)
            .await
            .map_err(|e| anyhow::anyhow!("resource_servers[{i}]: {e}"))?;
    }
    Ok(())
}

async fn seed_clients(state: &AppState, settings: &Settings) -> anyhow::Result<()> {
    for (i, c) in settings.clients.iter().enumerate() {
        let allowed_tenants = c
            .allowed_tenants
            .iter()
            .map(|t| TenantId::parse(t).map_err(|e| anyhow::anyhow!("clients: allowed tenant {t:?} {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let grant_types = match &c.grant_types {
            None => default_grant_types(),
            Some(list) => list
                .iter()
                .map(|g| GrantType::parse(g).ok_or_else(|| anyhow::anyhow!("clients[{i}].grant_types: unknown {g:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        if let Err((field, m)) = state
            .provider
            .resources
            .check_app_fields(
                c.client_secret.is_none(),
                &grant_types,
                &c.allowed_scopes,
                c.default_resource.as_deref(),
            )
            .await?
        {
            anyhow::bail!("clients[{i}].{field}: {m}");
        }
        let client = Client {
            require_mfa: false,
            client_id: c.client_id.clone(),
            name: if c.name.is_empty() {
                c.client_id.clone()
            } else {
                c.name.clone()
            },
            secret_sha256: c.client_secret.as_ref().map(|s| hash_secret(s.expose())),
            previous_secret: None,
            redirect_uris: c.redirect_uris.clone(),
            post_logout_redirect_uris: c.post_logout_redirect_uris.clone(),
            allowed_tenants,
            allowed_scopes: c.allowed_scopes.clone(),
            grant_types,
            default_resource: c.default_resource.clone(),
            created_at: state.provider.clock.now(),
        };
        state.provider.clients.put(&client).await?;
    }
    Ok(())
}

/// The demo tenant, its development IdP connection and the demo app.
async fn seed_dev(state: &AppState) -> anyhow::Result<()> {
    use crate::http::dev::{DEMO_CLIENT, DEMO_TENANT};
    let tenant = TenantId::parse(DEMO_TENANT).map_err(|e| anyhow::anyhow!("{e}"))?;
    if state.tenants.get(&tenant).await?.is_none() {
        state
            .tenants
            .create(tenant.clone(), "Demo tenant".into(), vec!["demo.example".into()])
            .await?;
    }
    let conn_id = ConnectionId::parse("dev").map_err(|e| anyhow::anyhow!("{e}"))?;
    if state.tenants.connection(&tenant, &conn_id).await?.is_none() {
        let body = serde_json::json!({"id": "dev", "kind": "dev"});
        let conn = crate::tenant::setup::build_connection(&state.upstream, &tenant, body, true)
            .await
            .map_err(|e| anyhow::anyhow!("demo connection: {e}"))?;
        state
            .tenants
            .put_connection(&conn, crate::tenant::IssuerChange::NewUsers)
            .await?;
    }
    let client = Client {
        require_mfa: false,
        client_id: DEMO_CLIENT.into(),
        name: "Demo app".into(),
        secret_sha256: None,
        previous_secret: None,
        redirect_uris: vec![state.upstream.public("demo/callback").to_string()],
        post_logout_redirect_uris: vec![state.upstream.public("demo").to_string()],
        allowed_tenants: vec![],
        allowed_scopes: vec![],
        grant_types: default_grant_types(),
        default_resource: None,
        created_at: state.provider.clock.now(),
    };
    state.provider.clients.put(&client).await?;
    Ok(())
}

/// Loads `tenants/*.toml` at start-up ([`crate::tenant::files::sync`]):
/// any problem stops the start.
async fn seed_tenant_files(state: &AppState, dir: &std::path::Path) -> anyhow::Result<()> {
    let report = crate::tenant::files::sync(&state.tenants, &state.upstream, dir, state.dev, &state.audit(), state)
        .await
        .map_err(|problems| anyhow::anyhow!("{}", crate::config::ConfigErrors(problems)))?;
    if !report.problems.is_empty() {
        anyhow::bail!("tenant files: {}", report.problems.join("; "));
    }
    Ok(())
}

/// Re-reads the tenant files (schedule or SIGHUP); problems are logged and
/// leave what is stored unchanged.
pub async fn reload_tenant_files(state: &AppState, dir: &std::path::Path) {
    match crate::tenant::files::sync(&state.tenants, &state.upstream, dir, state.dev, &state.audit(), state).await {
        Ok(report) => {
            for p in &report.problems {
                tracing::warn!(reason = "tenant_file.refused", problem = %p, "part of a tenant file was not applied");
            }
            tracing::info!(
                reason = "tenant_file.synced",
                created = report.created.len(),
                updated = report.updated.len(),
                adopted = report.adopted.len(),
                removed = report.removed.len(),
                "tenant files re-read"
            );
        }
        Err(problems) => {
            for p in problems {
                tracing::warn!(reason = "tenant_file.refused", problem = %p, "tenant files not applied");
            }
        }
    }
}

/// Background work: rotate signing keys when due; refresh IdP metadata and
/// report certificate expiry every `[metadata] refresh_interval_secs`. Runs
/// until the process ends.
pub fn spawn_background(state: Arc<AppState>, settings: &Settings) -> Background {
    let webhook = settings
        .audit
        .webhook_config(settings.outbound.allow_private_networks)
        .and_then(|config| {
            match crate::audit::webhook::Delivery::new(state.store.clone(), state.upstream.clock.clone(), config) {
                Ok(delivery) => Some(delivery.spawn()),
                Err(e) => {
                    tracing::error!(reason = "audit.webhook_invalid", error = %e, "audit webhook not started");
                    None
                }
            }
        });
    let keys_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match keys_state.provider.keys.rotate_if_due().await {
                Ok(true) => {
                    tracing::info!(reason = "keys.rotated", "signing key rotated");
                    let event = crate::audit::AuditEvent::security(
                        &crate::audit::Actor::System("key_rotation".into()),
                        "signing_keys.rotated",
                        crate::audit::Target::new("signing_keys", "jwks"),
                        crate::audit::Outcome::Success,
                        "keys.rotated",
                    );
                    keys_state.provider.audit.security(event).await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(reason = "keys.rotation_failed", error = %e),
            }
        }
    });
    let interval = Duration::from_secs(settings.metadata.refresh_interval_secs);
    let tenants_dir = settings.tenants_dir.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; start-up has just done this work.
        tick.tick().await;
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let scheduled = tokio::select! {
                _ = tick.tick() => true,
                _ = hup => false,
            };
            if let Some(dir) = &tenants_dir {
                reload_tenant_files(&state, dir).await;
            }
            if scheduled {
                metadata_round(&state, interval).await;
            }
        }
    });
    Background { webhook }
}

/// The background work that must end cleanly at shutdown.
pub struct Background {
    webhook: Option<crate::audit::webhook::DeliveryHandle>,
}

impl Background {
    /// Stops the audit webhook worker (an event it was sending stays pending
    /// and another replica delivers it).
    pub async fn stop(self) {
        if let Some(w) = self.webhook {
            w.stop().await;
        }
    }
}

/// An event of the metadata schedule (`system:metadata_refresh`) about a
/// tenant's connection.
fn metadata_event(action: &str, tenant: &crate::ids::TenantId, connection: &str) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent::new(
        &crate::audit::Actor::System("metadata_refresh".into()),
        action,
        crate::audit::Target::new("connection", connection),
        "job",
    )
    .tenant(tenant)
}

/// One round of the metadata schedule: refresh every SAML connection from a
/// metadata URL (one replica per connection and interval), then log the
/// certificate warnings that became due.
pub async fn metadata_round(state: &AppState, interval: Duration) -> Vec<crate::tenant::refresh::CertificateWarning> {
    let refresher = crate::tenant::refresh::MetadataRefresher::new(state.tenants.clone(), state.upstream.clone());
    let round = refresher.refresh_all(interval).await;
    tracing::debug!(fetched = round.fetched, "metadata refresh round done");
    // New metadata changes which certificates are trusted: each update goes
    // into its tenant's audit log, as an admin's refresh does.
    let audit = state.audit();
    for (before, after) in &round.updated {
        let event = metadata_event("connection.metadata_refreshed", &after.tenant, after.id.as_str())
            .before(crate::tenant::setup::describe(&state.upstream, before))
            .after(crate::tenant::setup::describe(&state.upstream, after));
        if let Err(e) = audit.record(event).await {
            tracing::warn!(reason = "audit.write_failed", error = %e, "metadata refresh not audited");
        }
    }
    match crate::tenant::refresh::expiry_events(&state.tenants, &state.store, state.upstream.clock.now()).await {
        Ok(warnings) => {
            // Each warning once per threshold (the marker above), into the tenant's audit log.
            let audit = state.audit();
            for w in &warnings {
                let event = metadata_event("connection.certificate_expiring", &w.tenant, w.connection.as_str())
                    .after(serde_json::json!({ "not_after": w.not_after, "level": w.level }));
                if let Err(e) = audit.record(event).await {
                    tracing::warn!(reason = "audit.write_failed", error = %e, "certificate warning not audited");
                }
            }
            warnings
        }
        Err(e) => {
            tracing::warn!(reason = "certificate.check_failed", error = %e, "certificate expiry not checked");
            Vec::new()
        }
    }
}

/// Keeps a secret-free summary for the start-up log.
pub fn describe(settings: &Settings, resolved: &Resolved) -> String {
    format!(
        "issuer {} · store {} · admin API {} · dev mode {}",
        resolved.public_url,
        match (
            settings.store.resolve_backend(settings.dev.enabled),
            settings
                .store
                .redis_url
                .as_ref()
                .map(|u| crate::store::redis_url::Topology::parse(u.expose())),
        ) {
            (Ok(Backend::Redis), Some(Ok(t))) => match t.kind() {
                "sentinel" => "redis (sentinel)",
                "cluster" => "redis (cluster)",
                _ => "redis",
            },
            (Ok(Backend::Redis), _) => "redis",
            _ => "in-memory (one process only)",
        },
        if settings.admin.token.is_some() { "on" } else { "off" },
        if settings.dev.enabled {
            "ON (not for production)"
        } else {
            "off"
        },
    )
}
