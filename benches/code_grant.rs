//! The token endpoint's authorization-code grant, in process on a
//! `MemoryStore`: `Provider::issue_code` (what the broker does when a sign-in
//! completes), then `authenticate_client` (client_secret_basic) and
//! `Provider::token` (atomic code redemption, PKCE S256, a new refresh-token
//! family, the user read, an access token and an ID token signed, the
//! used-code marker). No HTTP: see `scripts/load` for the served endpoints.

use chrono::TimeZone;
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::config::TokenSettings;
use portcullis::directory::Directory;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::provider::clients::{hash_secret, Client, ClientRegistry};
use portcullis::provider::codes::Authorization;
use portcullis::provider::grants::{ClientCredentials, TokenRequest};
use portcullis::provider::Provider;
use portcullis::store::memory::MemoryStore;
use portcullis::store::SharedStore;
use portcullis::tenant::TenantRegistry;
use portcullis::tokens::{sha256_base64url, KeyConfig, KeyManager, SigningAlgorithm};
use portcullis::upstream::dev::DevConfig;
use portcullis::upstream::{Connection, ConnectionKind, Identity};
use std::sync::Arc;
use std::time::Duration;

const REDIRECT: &str = "https://billing.example.test/cb";
const SECRET: &str = "bench-client-secret-0123456789abcdef";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct World {
    provider: Provider,
    authz: Authorization,
    creds: ClientCredentials,
}

async fn world(alg: SigningAlgorithm, name: &str) -> World {
    let clock: SharedClock = Arc::new(ManualClock::at(
        chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
    ));
    let store: SharedStore = Arc::new(MemoryStore::new(clock.clone()));
    let keys = KeyManager::init(
        store.clone(),
        clock.clone(),
        KeyConfig {
            algorithm: alg,
            cache_for: Duration::from_secs(3600),
            ..KeyConfig::default()
        },
    )
    .await
    .unwrap();
    let provider = Provider {
        issuer: url::Url::parse("https://sso.example.test/").unwrap(),
        store: store.clone(),
        clock: clock.clone(),
        ttl: TokenSettings {
            algorithm: name.into(),
            ..TokenSettings::default()
        },
        keys: Arc::new(keys),
        clients: ClientRegistry::new(store.clone()),
        resources: portcullis::provider::resources::ResourceRegistry::new(store.clone()),
        directory: Directory::new(store.clone(), clock.clone()),
        upstream: None,
        audit: portcullis::audit::Audit::new(store.clone(), clock.clone()),
        hooks: None,
    };
    provider
        .clients
        .create(&Client {
            require_mfa: false,
            client_id: "billing".into(),
            name: "Billing".into(),
            secret_sha256: Some(hash_secret(SECRET)),
            previous_secret: None,
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            allowed_scopes: vec![],
            grant_types: portcullis::provider::clients::default_grant_types(),
            default_resource: None,
            created_at: clock.now(),
        })
        .await
        .unwrap();
    let (tenant, connection) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("okta").unwrap());
    // The user must belong to a live tenant and connection (their incarnations).
    let tenants = TenantRegistry::new(store.clone(), clock.clone());
    tenants
        .create(tenant.clone(), "Acme".into(), vec!["acme.example".into()])
        .await
        .unwrap();
    tenants
        .add_connection(&Connection {
            id: connection.clone(),
            tenant: tenant.clone(),
            revision: 1,
            status: portcullis::upstream::ConnectionStatus::Active,
            disabled_by_platform: false,
            kind: ConnectionKind::Dev(DevConfig {}),
        })
        .await
        .unwrap();
    let identity = Identity {
        subject: "ada@acme.example".into(),
        email: Some("ada@acme.example".into()),
        email_verified: Some(true),
        name: Some("Ada Lovelace".into()),
        given_name: Some("Ada".into()),
        family_name: Some("Lovelace".into()),
        groups: vec!["engineering".into()],
        amr: vec!["pwd".into()],
        ..Identity::default()
    };
    let (user, _) = provider
        .directory
        .provision(&tenant, &connection, &identity)
        .await
        .unwrap();
    let authz = Authorization {
        tenant,
        connection,
        client_id: "billing".into(),
        redirect_uri: REDIRECT.into(),
        // offline_access: the measured grant starts a refresh-token family.
        scope: vec![
            "openid".into(),
            "email".into(),
            "profile".into(),
            "offline_access".into(),
        ],
        nonce: Some("n-0S6_WzA2Mj".into()),
        code_challenge: Some(sha256_base64url(VERIFIER.as_bytes())),
        sub: user.sub,
        sid: "s_bench".into(),
        auth_time: clock.unix() - 5,
        amr: vec!["pwd".into()],
        resource: None,
        session_expires_at: None,
        acr: None,
        upstream_session: None,
        client_registered_at: None,
    };
    let creds = ClientCredentials::Secret {
        id: "billing".into(),
        secret: SECRET.into(),
    };
    World { provider, authz, creds }
}

async fn grant(w: &World) {
    let code = w.provider.issue_code(&w.authz).await.unwrap();
    let client = w.provider.authenticate_client(&w.creds).await.unwrap();
    let req = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code),
        redirect_uri: Some(REDIRECT.into()),
        code_verifier: Some(VERIFIER.into()),
        ..TokenRequest::default()
    };
    let resp = w.provider.token(&client, &req).await.unwrap();
    assert!(resp.id_token.is_some() && resp.refresh_token.is_some());
}

fn bench_code_grant(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("code_grant");
    for (name, alg) in [
        ("RS256", SigningAlgorithm::Rs256),
        ("ES256", SigningAlgorithm::Es256),
        ("EdDSA", SigningAlgorithm::EdDsa),
    ] {
        let w = rt.block_on(world(alg, name));
        group.bench_function(name, |b| b.iter(|| rt.block_on(grant(&w))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench_code_grant
}
criterion_main!(benches);
