//! Secrets at rest, from the operator's side, on a real Redis whose dump the
//! test reads: a Redis dump holds no plaintext client secret, upstream
//! refresh token or private key; `portcullis keys rewrap` moves every
//! sealed value to a new master key while sign-ins go on, after which the
//! old key can leave the key file; `portcullis export`, a wiped Redis and
//! `portcullis import` give back a gateway whose JWKS verifies the tokens
//! issued before, whose SP metadata is byte for byte the same, and whose
//! users keep their `sub`.
//!
//! Every gateway of the test announces the same public URL and listens on
//! the same port, one after the other (as a rolling restart would), so the
//! IdP's registered callback and the SP metadata stay the same.

use chrono::Duration;
use portcullis::clock::{Clock, ManualClock, SystemClock};
use portcullis::config::Settings;
use portcullis::secret::Secret;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use url::Url;

use crate::metadata_refresh::{metadata, Key as IdpKey};
use crate::oidc_trust::{jwt_claims, Trust};
use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::oidc_world::{random_token, RawClient, ACME, CONN};
use crate::support::peers::{IdpClient, UpstreamIdp};
use crate::support::redis::free_port;

const K1: &str = "k1 = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "k2 = AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// A private `redis-server` that writes its dump, uncompressed (so that a
/// plaintext string in it would be found verbatim), into a directory of
/// the test's. Killed on drop.
struct DumpingRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl DumpingRedis {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--rdbcompression", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", "dump.rdb"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/setup-system test installs it)");
        // Wait until it accepts connections.
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("Ready to accept connections") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn cmd(&self, name: &str) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd(name).query_async(&mut conn).await.unwrap()
    }

    /// `SAVE`, then the bytes of `dump.rdb`.
    async fn dump(&self) -> Vec<u8> {
        self.cmd("SAVE").await;
        std::fs::read(self.dir.join("dump.rdb")).unwrap()
    }
}

impl Drop for DumpingRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A gateway this test can stop (so the next one takes its port).
struct Running {
    app: TestApp,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).ok();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the gateway stopped")
            .unwrap();
    }
}

struct World {
    redis: DumpingRedis,
    dir: PathBuf,
    port: u16,
    prefix: String,
    admin_token: String,
}

impl World {
    fn key_file(&self, name: &str, lines: &[&str]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("# test keys\n{}\n", lines.join("\n"))).unwrap();
        path
    }

    fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The configuration every gateway and command of the test uses.
    fn config(&self) -> PathBuf {
        let path = self.dir.join("portcullis.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{}\"\npublic_url = {:?}\n[store]\nredis_url = {:?}\nkey_prefix = {:?}\n[outbound]\nallow_private_networks = true\n",
                self.port,
                self.public_url(),
                self.redis.url(),
                self.prefix
            ),
        )
        .unwrap();
        path
    }

    async fn gateway(&self, key_file: &Path, clock: &ManualClock) -> Running {
        self.try_gateway(Some(key_file), false, clock).await.unwrap()
    }

    /// A gateway with `key_file` (`None`: `secrets.allow_plaintext`),
    /// `secrets.refuse_plaintext` as given; `Err` when it does not start.
    async fn try_gateway(
        &self,
        key_file: Option<&Path>,
        refuse_plaintext: bool,
        clock: &ManualClock,
    ) -> Result<Running, String> {
        let mut settings = Settings::load(Some(&self.config()), &Default::default()).unwrap();
        settings.admin.token = Some(Secret::new(self.admin_token.clone()));
        settings.secrets.master_key_file = key_file.map(Path::to_owned);
        settings.secrets.allow_plaintext = key_file.is_none();
        settings.secrets.refuse_plaintext = refuse_plaintext;
        let resolved = settings.validate("test").unwrap();
        let clock: portcullis::clock::SharedClock = Arc::new(clock.clone());
        let store = portcullis::app::open_store(&settings, clock.clone()).await.unwrap();
        let state = portcullis::app::build(&settings, &resolved, store, clock)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let router = portcullis::http::router(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    stopped.await.ok();
                })
                .await
                .unwrap();
        });
        let app = TestApp {
            base: Url::parse(&self.public_url()).unwrap(),
            admin_token: self.admin_token.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            state,
        };
        Ok(Running { app, stop, task })
    }

    /// Runs the `portcullis` binary with the test's configuration.
    fn run(&self, key_file: &Path, args: &[&str]) -> (i32, String, String) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
            c.env_remove(k);
        }
        let out = c
            .arg("--config")
            .arg(self.config())
            .env("PORTCULLIS_MASTER_KEY_FILE", key_file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The base64 body lines of a PEM (what a search for the key itself finds).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Everything secret that the gateway on `store` holds, read through its
/// sealing layer: the upstream client secret, the kept upstream refresh
/// token of `sid`, the SP private key and every signing private key.
async fn secrets_of(app: &TestApp, sid: &str) -> Vec<(String, String)> {
    use portcullis::store::Key;
    let store = &app.state.store;
    let read = |v: Option<Vec<u8>>| serde_json::from_slice::<Value>(&v.unwrap()).unwrap();
    let oidc = read(
        store
            .get(&Key::tenant(ACME, "config", format!("connection:{CONN}")))
            .await
            .unwrap(),
    );
    let saml = read(
        store
            .get(&Key::tenant(ACME, "config", "connection:corp"))
            .await
            .unwrap(),
    );
    let upstream = read(
        store
            .get(&Key::tenant(ACME, "sso", format!("upstream:{sid}")))
            .await
            .unwrap(),
    );
    let keyset = read(store.get(&Key::global("keys", "signing")).await.unwrap());
    let hook = read(
        store
            .get(&Key::tenant(ACME, "hooks", "post_confirmation"))
            .await
            .unwrap(),
    );
    let mut out = vec![
        ("hook secret".to_owned(), hook["secret"].as_str().unwrap().to_owned()),
        (
            "hook URL query".to_owned(),
            hook["url_query"].as_str().unwrap().to_owned(),
        ),
        (
            "client secret".to_owned(),
            oidc["client_secret"].as_str().unwrap().to_owned(),
        ),
        (
            "upstream refresh token".to_owned(),
            upstream["refresh_token"].as_str().unwrap().to_owned(),
        ),
    ];
    let mut pems = vec![(
        "SP key".to_owned(),
        saml["sp_private_key_pem"].as_str().unwrap().to_owned(),
    )];
    for (name, k) in [("active", &keyset["active"]), ("next", &keyset["next"])]
        .into_iter()
        .chain(keyset["retired"].as_array().unwrap().iter().map(|k| ("retired", k)))
    {
        pems.push((
            format!("{name} signing key"),
            k["private_pem"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(keyset["retired"].as_array().unwrap().len() == 1, "the key was rotated");
    for (name, pem) in pems {
        assert!(pem.contains("BEGIN PRIVATE KEY"), "{name} is a PEM");
        for line in pem_body_lines(&pem) {
            out.push((format!("{name} body"), line));
        }
    }
    out
}

fn assert_none_in(what: &str, bytes: &[u8], secrets: &[(String, String)]) {
    assert!(!contains(bytes, "PRIVATE KEY"), "{what} holds a PEM private key");
    for (name, value) in secrets {
        assert!(value.len() >= 16, "{name} is long enough to search for");
        assert!(!contains(bytes, value), "{what} holds the {name} in plaintext");
    }
}

async fn sp_metadata(app: &TestApp) -> String {
    let r = app
        .client
        .get(app.url("/saml/acme/corp/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Verifies `token`'s signature against the gateway's published JWKS.
async fn verifies_at_jwks(app: &TestApp, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(app.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .unwrap_or_else(|| panic!("kid {:?} is not published", header.kid));
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    validation.set_issuer(&[app.issuer()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims
}

fn trust(
    (app, idp, upstream): (TestApp, UpstreamIdp, IdpClient),
    clock: ManualClock,
    client: RawClient,
    discovery: Value,
) -> Trust {
    Trust {
        app,
        idp,
        upstream,
        clock,
        client,
        discovery,
    }
}

fn count(stdout: &str, prefix: &str) -> Option<usize> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn a_redis_dump_holds_no_secret_and_keys_rotate_back_up_and_restore() {
    let dir = std::env::temp_dir().join(format!("portcullis-secrets-{}", random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = World {
        redis: DumpingRedis::start(&dir),
        dir: dir.clone(),
        port: free_port(),
        prefix: format!("secrets-{}", random_token()),
        admin_token: random_token(),
    };
    let only_k1 = w.key_file("k1.keys", &[K1]);
    let both = w.key_file("k1k2.keys", &[K1, K2, "current = k2"]);
    let only_k2 = w.key_file("k2.keys", &[K2]);
    let clock = ManualClock::at(SystemClock.now());

    // ---- A: the first gateway, master key k1.
    let upstream = IdpClient {
        client_id: "portcullis-acme".into(),
        client_secret: format!("upstream-client-secret-{}", random_token()),
        redirect_uris: vec![Url::parse(&format!("{}/oidc/{ACME}/{CONN}/callback", w.public_url())).unwrap()],
    };
    let idp = UpstreamIdp::spawn_with(0, std::slice::from_ref(&upstream), &[]).await;
    let a = w.gateway(&only_k1, &clock).await;
    a.app.create_tenant(ACME, "Acme Corp", &["acme.test"]).await;
    a.app
        .admin_create(
            &format!("/admin/v1/tenants/{ACME}/connections"),
            json!({"id": CONN, "kind": "oidc", "issuer": idp.issuer(), "client_id": upstream.client_id,
                   "client_secret": upstream.client_secret, "refresh_upstream": true, "refresh_interval_secs": 60,
                   "scopes": ["openid", "email", "profile"]}),
        )
        .await;
    // A tenant's hook secret is sealed too (never called here), and so is
    // its URL's query, which may be a credential (`?code=`).
    let (status, _) = a
        .app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/tenants/{ACME}/hooks/post_confirmation"),
            Some(json!({"url": format!("https://hooks.acme.test/confirmed?{HOOK_QUERY}"), "secret": HOOK_SECRET})),
        )
        .await;
    assert_eq!(status, 201);
    let saml_idp = IdpKey::new();
    a.app
        .create_saml_connection(
            ACME,
            json!({"id": "corp", "metadata_xml": metadata(&[saml_idp.cert_b64()])}),
        )
        .await;
    let redirect_uri = Url::parse("http://127.0.0.1:9/raw/callback").unwrap();
    let reg = a.app.create_client("raw", "Raw", &[&redirect_uri], false).await;
    let client = RawClient { reg, redirect_uri };
    let discovery = a.app.get_json("/.well-known/openid-configuration").await;
    let t = trust(
        (a.app, idp, upstream.clone()),
        clock.clone(),
        client.clone(),
        discovery.clone(),
    );
    let first = t
        .tokens(&mut Browser::new(), &[("connection", CONN)], Some("alice"))
        .await;
    let first_claims = jwt_claims(first["id_token"].as_str().unwrap());
    let sid = first_claims["sid"].as_str().unwrap().to_owned();
    let sub = first_claims["sub"].as_str().unwrap().to_owned();
    let (status, _) = t.app.admin(reqwest::Method::POST, "/admin/v1/keys/rotate", None).await;
    assert_eq!(status, 200);
    let secrets = secrets_of(&t.app, &sid).await;
    assert!(secrets.iter().any(|(_, v)| v == &upstream.client_secret));

    let dump = w.redis.dump().await;
    // The search works: what is not secret is there verbatim.
    assert!(contains(&dump, &upstream.client_id) && contains(&dump, &idp_issuer(&t)));
    assert!(contains(&dump, "pcx1.k1."), "values are sealed under k1");
    assert_none_in("the Redis dump", &dump, &secrets);
    let (code, out, err) = w.run(&only_k1, &["keys", "status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&out, "plaintext:"), Some(0), "{out}");
    // Client secret, SP key, upstream refresh token, three signing keys, the
    // hook secret and its URL's query.
    assert_eq!(count(&out, "sealed under k1:"), Some(8), "{out}");
    let Trust { app, idp, .. } = t;
    let a = Running { app, ..a };
    a.stop().await;

    // ---- B: k2 is added and made current; k1 still opens the old values.
    let b = w.gateway(&both, &clock).await;
    let t = trust(
        (b.app, idp, upstream.clone()),
        clock.clone(),
        client.clone(),
        discovery.clone(),
    );
    clock.advance(Duration::seconds(61));
    let refreshed = t.refresh(first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    assert_eq!(t.idp.stats().await.refresh, 1, "the k1-sealed upstream token was used");
    let (code, out, err) = w.run(&both, &["keys", "rewrap"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("under master key k2"), "{out}");
    assert!(!out.contains("rewrapped 0 record"), "{out}");
    let (code, again, _) = w.run(&both, &["keys", "rewrap"]);
    assert_eq!(code, 0);
    assert!(
        again.contains("rewrapped 0 record(s) (0 field(s))"),
        "idempotent: {again}"
    );
    let (_, status, _) = w.run(&both, &["keys", "status"]);
    assert_eq!(count(&status, "sealed under k1:"), None, "{status}");
    assert_eq!(count(&status, "plaintext:"), Some(0), "{status}");
    let dump = w.redis.dump().await;
    assert!(!contains(&dump, "pcx1.k1.") && contains(&dump, "pcx1.k2."));
    let Trust { app, idp, .. } = t;
    Running { app, ..b }.stop().await;

    // ---- C: k1 has left the key file; sign-in and upstream refresh work.
    let c = w.gateway(&only_k2, &clock).await;
    let t = trust(
        (c.app, idp, upstream.clone()),
        clock.clone(),
        client.clone(),
        discovery.clone(),
    );
    let second = t
        .tokens(&mut Browser::new(), &[("connection", CONN)], Some("alice"))
        .await;
    let second_claims = jwt_claims(second["id_token"].as_str().unwrap());
    assert_eq!(second_claims["sub"], json!(sub));
    clock.advance(Duration::seconds(61));
    let r = t.refresh(second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(t.idp.stats().await.refresh, 2);
    let jwks_before = t.app.get_json("/jwks").await;
    let metadata_before = sp_metadata(&t.app).await;
    let secrets = secrets_of(&t.app, second_claims["sid"].as_str().unwrap()).await;

    // ---- Export, wipe, restore.
    let backup = dir.join("backup.json");
    let (code, out, err) = w.run(&only_k2, &["export", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed with master key(s): k2"), "{out}");
    let text = std::fs::read(&backup).unwrap();
    assert_none_in("the backup", &text, &secrets);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let Trust { app, idp, .. } = t;
    Running { app, ..c }.stop().await;
    w.redis.cmd("FLUSHALL").await;

    // Restoring with a key file that lacks k2 writes nothing.
    let (code, _, err) = w.run(&only_k1, &["import", backup.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nothing was restored") && err.contains("secrets.unknown_key") && err.contains("\"k2\""),
        "{err}"
    );
    assert_eq!(w.redis.cmd("DBSIZE").await, redis::Value::Int(0), "nothing was written");
    let (code, out, err) = w.run(&only_k2, &["import", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 1 tenant(s)"), "{out}");
    // Connections were exported with their write stamp and are restored
    // without one (the backup may have been edited since the stamp was
    // drawn): re-validated by their SHA-1 until their next write.
    let doc: Value = serde_json::from_slice(&text).unwrap();
    let raw = portcullis::store::redis::RedisStore::connect(&w.redis.url(), &w.prefix)
        .await
        .unwrap();
    for id in [CONN, "corp"] {
        let name = format!("connection:{id}");
        let exported = doc["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap();
        assert!(exported["json"]["_w"].is_string(), "exported stamped: {exported}");
        let key = portcullis::store::Key::tenant(ACME, "config", name);
        let restored = portcullis::store::Store::get(&raw, &key).await.unwrap().unwrap();
        assert!(portcullis::store::stamp_of(&restored).is_none(), "{id}");
        assert!(!String::from_utf8_lossy(&restored).contains("\"_w\""), "{id}");
    }
    // Into a store that is not empty: refused, unless --overwrite.
    let (code, _, err) = w.run(&only_k2, &["import", backup.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = w.run(&only_k2, &["import", "--overwrite", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // ---- D: a fresh gateway on the restored store.
    let d = w.gateway(&only_k2, &clock).await;
    assert_eq!(d.app.get_json("/jwks").await, jwks_before);
    for token in [&first["id_token"], &second["id_token"]] {
        let claims = verifies_at_jwks(&d.app, token.as_str().unwrap()).await;
        assert_eq!(claims["sub"], json!(sub));
    }
    assert_eq!(sp_metadata(&d.app).await, metadata_before, "SP metadata is unchanged");
    let hook = d
        .app
        .state
        .provider
        .hooks
        .as_ref()
        .unwrap()
        .get(
            &portcullis::ids::TenantId::parse(ACME).unwrap(),
            portcullis::hooks::HookKind::PostConfirmation,
        )
        .await
        .unwrap()
        .expect("the hook is restored");
    assert_eq!(hook.secret.expose(), HOOK_SECRET, "and its secret opens");
    assert_eq!(
        hook.url,
        format!("https://hooks.acme.test/confirmed?{HOOK_QUERY}"),
        "and its URL's query"
    );
    let t = trust((d.app, idp, upstream.clone()), clock.clone(), client, discovery);
    let third = t
        .tokens(&mut Browser::new(), &[("connection", CONN)], Some("alice"))
        .await;
    assert_eq!(
        jwt_claims(third["id_token"].as_str().unwrap())["sub"],
        json!(sub),
        "the user kept their sub"
    );
    verifies_at_jwks(&t.app, third["id_token"].as_str().unwrap()).await;
    let Trust { app, .. } = t;
    Running { app, ..d }.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A tenant's hook secret (the search for it in dumps and backups must fail).
const HOOK_SECRET: &str = "hook-secret-3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e";
/// The query of the tenant's hook URL, a credential (Azure Functions' kind).
const HOOK_QUERY: &str = "code=hook-query-8d2e6b0a4c9f1e3d5b7a";

fn idp_issuer(t: &Trust) -> String {
    t.idp.issuer()
}

/// Outside dev mode a Redis store needs a master key: `check-config` says
/// so and how to make one; `secrets.allow_plaintext` is the explicit way out.
#[test]
fn a_redis_store_without_a_master_key_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(format!("portcullis-secrets-cfg-{}", random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("portcullis.toml");
    let run = |extra: &str, env: &[(&str, &str)]| {
        std::fs::write(
            &config,
            format!("[store]\nredis_url = \"redis://127.0.0.1:1\"\n{extra}"),
        )
        .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
            c.env_remove(k);
        }
        let out = c
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("secrets.master_key_file") && err.contains("openssl rand"),
        "{err}"
    );
    let (code, err) = run("[secrets]\nallow_plaintext = true\n", &[]);
    assert_eq!(code, Some(0), "{err}");
    let keys = dir.join("master.keys");
    std::fs::write(&keys, "k1 = too-short\n").unwrap();
    let (code, err) = run("", &[("PORTCULLIS_MASTER_KEY_FILE", keys.to_str().unwrap())]);
    assert_eq!(code, Some(1));
    assert!(err.contains("master.keys: line 1"), "{err}");
    std::fs::write(&keys, format!("{K1}\n")).unwrap();
    let (code, err) = run("", &[("PORTCULLIS_MASTER_KEY_FILE", keys.to_str().unwrap())]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A deployment that stored its secrets in plaintext: they stay readable
/// once a master key is configured, `keys rewrap` seals them, and then
/// `secrets.refuse_plaintext` can be turned on (before the rewrap it stops a
/// gateway from starting on the plaintext signing keys).
#[tokio::test]
async fn plaintext_from_before_encryption_is_read_then_sealed_by_rewrap() {
    let dir = std::env::temp_dir().join(format!("portcullis-secrets-up-{}", random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = World {
        redis: DumpingRedis::start(&dir),
        dir: dir.clone(),
        port: free_port(),
        prefix: format!("upgrade-{}", random_token()),
        admin_token: random_token(),
    };
    let k1 = w.key_file("k1.keys", &[K1]);
    let clock = ManualClock::at(SystemClock.now());

    // The old deployment: no master key, plaintext allowed.
    let old = w.try_gateway(None, false, &clock).await.unwrap();
    old.app.create_tenant(ACME, "Acme Corp", &["acme.test"]).await;
    let saml_idp = IdpKey::new();
    old.app
        .create_saml_connection(
            ACME,
            json!({"id": "corp", "metadata_xml": metadata(&[saml_idp.cert_b64()])}),
        )
        .await;
    let metadata_before = sp_metadata(&old.app).await;
    // The dump search finds a plaintext key when there is one.
    assert!(contains(&w.redis.dump().await, "BEGIN PRIVATE KEY"));
    old.stop().await;
    let (code, status, err) = w.run(&k1, &["keys", "status"]);
    assert_eq!(code, 0, "{err}");
    // The SP key, the active and the next signing key.
    assert_eq!(count(&status, "plaintext:"), Some(3), "{status}");

    // Refusing plaintext before the rewrap: the gateway does not start.
    let refused = w.try_gateway(Some(&k1), true, &clock).await.err().unwrap();
    assert!(
        refused.contains("secrets.config") && refused.contains("refuse_plaintext"),
        "{refused}"
    );

    // With the key, the plaintext values are still read.
    let upgraded = w.gateway(&k1, &clock).await;
    assert_eq!(sp_metadata(&upgraded.app).await, metadata_before);
    let (code, out, err) = w.run(&k1, &["keys", "rewrap"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rewrapped 2 record(s) (3 field(s)) under master key k1"),
        "{out}"
    );
    let (_, status, _) = w.run(&k1, &["keys", "status"]);
    assert_eq!(count(&status, "plaintext:"), Some(0), "{status}");
    assert_eq!(count(&status, "sealed under k1:"), Some(3), "{status}");
    assert!(!contains(&w.redis.dump().await, "PRIVATE KEY"));
    assert_eq!(sp_metadata(&upgraded.app).await, metadata_before);
    upgraded.stop().await;

    // Now plaintext can be refused.
    let strict = w.try_gateway(Some(&k1), true, &clock).await.unwrap();
    assert_eq!(sp_metadata(&strict.app).await, metadata_before);
    strict.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// `keys rewrap` is safe while gateways write: on a real Redis, writers
/// that read-modify-write a sealed record (each retrying its
/// compare-and-set until it wins) race a rewrap that runs over and over;
/// no update is lost, and in the end the record is sealed under the new key
/// and its secret opens unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_racing_writers_loses_no_update() {
    use portcullis::secrets::sealed::{census, SealedStore};
    use portcullis::secrets::{Cipher, StaticKeys};
    use portcullis::store::{Key, SharedStore, Store};
    const WRITERS: usize = 20;
    let raw: SharedStore = Arc::new(
        portcullis::store::redis::RedisStore::connect(&crate::support::redis::url(), &crate::support::redis::prefix())
            .await
            .unwrap(),
    );
    let cipher = |text: &str| Some(Cipher::new(Arc::new(StaticKeys::parse(text, "test").unwrap())));
    let key = Key::tenant(ACME, "config", "connection:race");
    let old = SealedStore::new(raw.clone(), cipher(K1), false);
    old.put(&key, br#"{"client_secret":"the-upstream-secret","revision":0}"#, None)
        .await
        .unwrap();
    assert_eq!(
        census(&key, &raw.get(&key).await.unwrap().unwrap()).by_key.get("k1"),
        Some(&1)
    );
    let new = Arc::new(SealedStore::new(
        raw.clone(),
        cipher(&format!("{K1}\n{K2}\ncurrent = k2\n")),
        false,
    ));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rewrapper = {
        let (new, done, key) = (new.clone(), done.clone(), key.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                new.rewrap(&key, &|_| None).await.unwrap();
                rounds += 1;
                tokio::task::yield_now().await;
            }
            rounds
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (new, key) = (new.clone(), key.clone());
            tokio::spawn(async move {
                loop {
                    let read = new.get(&key).await.unwrap().unwrap();
                    let mut v: Value = serde_json::from_slice(&read).unwrap();
                    v["revision"] = json!(v["revision"].as_u64().unwrap() + 1);
                    if new
                        .compare_and_put(&key, &read, &serde_json::to_vec(&v).unwrap(), None)
                        .await
                        .unwrap()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(rewrapper.await.unwrap() > 0);
    new.rewrap(&key, &|_| None).await.unwrap();
    let stored = raw.get(&key).await.unwrap().unwrap();
    let c = census(&key, &stored);
    assert_eq!((c.plaintext, c.by_key.get("k2"), c.by_key.len()), (0, Some(&1), 1));
    let v: Value = serde_json::from_slice(&new.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(v["revision"], json!(WRITERS), "no update was lost");
    assert_eq!(v["client_secret"], json!("the-upstream-secret"));
}

/// `portcullis keys rewrap` reseals TOTP enrolments too, confirmed and
/// pending: after the documented rotation (k2 added and made current,
/// rewrap, status, k1 removed), `keys status` shows nothing under k1 and a
/// user enrolled under k1 still passes the TOTP challenge on a gateway
/// that holds k2 alone (before, every such user was locked out with
/// `secrets.unknown_key`).
#[tokio::test]
async fn rewrap_reseals_totp_enrolments() {
    use crate::mfa::{amr_of, code, dev_sign_in, enrol, set_local_mfa};
    use crate::support::app::{spawn_app, AppOptions};
    use portcullis::secrets::sealed::SealedStore;
    use portcullis::secrets::{Cipher, StaticKeys};
    let clock = crate::mfa::clock();
    let prefix = crate::support::redis::prefix();
    let gateway = |master_key: &'static str| {
        spawn_app(AppOptions {
            dev: true,
            redis_url: Some(crate::support::redis::url()),
            redis_prefix: Some(prefix.clone()),
            clock: Some(clock.clone()),
            configure: Some(Arc::new(move |s: &mut Settings| {
                s.secrets.master_key = Some(Secret::new(master_key));
            })),
            ..AppOptions::default()
        })
    };
    let a = gateway("k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").await;
    set_local_mfa(&a, "required").await;
    let (secret, _, _) = enrol(&a, &mut Browser::new(), &clock, "totp@demo.example").await;
    // Another person's enrolment waits for its first code (pending, TTL).
    let waiting = dev_sign_in(&a, &mut Browser::new(), "waiting@demo.example").await;
    assert!(waiting.url.path().starts_with("/mfa/demo/dev"), "{}", waiting.body);

    let mut settings = Settings::default();
    settings.dev.enabled = true;
    settings.dev.force = true;
    settings.store.backend = Some("redis".into());
    settings.store.redis_url = Some(Secret::new(crate::support::redis::url()));
    settings.store.key_prefix = prefix.clone();
    let shared: portcullis::clock::SharedClock = Arc::new(clock.clone());
    let raw = portcullis::app::open_store(&settings, shared).await.unwrap();
    let keys = StaticKeys::parse(&format!("{K1}\n{K2}\ncurrent = k2\n"), "test").unwrap();
    let both = SealedStore::new(raw.clone(), Some(Cipher::new(Arc::new(keys))), false);
    let report = portcullis::backup::rewrap(&both, std::time::Duration::from_secs(3600), clock.unix())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let status = portcullis::backup::status(&raw).await.unwrap();
    assert_eq!(status.by_key.get("k1"), None, "{status:?}");
    assert_eq!((status.plaintext, status.malformed), (0, 0), "{status:?}");

    // k1 gone: the enrolled person is challenged, and the seed still works.
    let c = gateway("k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=").await;
    let mut browser = Browser::new();
    let challenge = dev_sign_in(&c, &mut browser, "totp@demo.example").await;
    assert!(challenge.body.contains("Two-step verification"), "{}", challenge.body);
    clock.advance(Duration::seconds(30));
    let demo = browser
        .fill_and_submit(&challenge, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
}
