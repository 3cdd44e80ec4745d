//! Serving as operators run it: the admin API on its own listener, HTTPS
//! with a certificate re-read from disk, the SIGTERM drain of the real
//! binary (in-flight requests finish, new connections are refused, the
//! grace period bounds it), and `check-config --offline`.

use crate::support::redis;
use portcullis::config::Settings;
use portcullis::http::server::{self, Ended, Listeners};
use portcullis::secret::Secret;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "serving-test-admin-token-0123456789";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A master key file for secrets at rest, which a Redis store outside dev
/// mode needs: the test gateways' key (`support::app::TEST_MASTER_KEY`, as
/// `<id> = <base64>`), so every gateway on the shared test Redis opens what
/// another sealed (the signing keyset above all).
pub fn master_key_file() -> PathBuf {
    let dir = scratch("master-key");
    let path = dir.join("master.keys");
    let (id, key) = crate::support::app::TEST_MASTER_KEY.split_once(':').unwrap();
    std::fs::write(&path, format!("{id} = {key}\n")).unwrap();
    // Readable by its owner only, as the gateway asks.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    path
}

/// Settings for an in-process gateway on the shared test Redis, read the
/// way the binary reads them (environment over defaults).
fn settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
    settings_with_env(&[], tweak)
}

/// [`settings`] with more environment variables (`extra`).
fn settings_with_env(extra: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Settings {
    let env: std::collections::BTreeMap<String, String> = [
        ("PORTCULLIS_LISTEN", "127.0.0.1:0".to_owned()),
        ("PORTCULLIS_PUBLIC_URL", "http://127.0.0.1:8080".to_owned()),
        ("PORTCULLIS_REDIS_URL", redis::url()),
        ("PORTCULLIS_MASTER_KEY_FILE", master_key_file().display().to_string()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, (*v).to_owned())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut s = Settings::load(None, &env).unwrap();
    s.admin.token = Some(Secret::new(TOKEN.to_owned()));
    s.store.key_prefix = redis::prefix();
    tweak(&mut s);
    s
}

/// Starts `settings` in-process through `server::serve` (the code `serve`
/// runs); returns the main and admin addresses and a stop switch.
async fn start(
    settings: Settings,
) -> (
    SocketAddr,
    Option<SocketAddr>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Ended>,
) {
    let resolved = settings.validate("test").unwrap();
    let clock: portcullis::clock::SharedClock = Arc::new(portcullis::clock::SystemClock);
    let store = portcullis::app::open_store(&settings, clock.clone()).await.unwrap();
    let state = portcullis::app::build(&settings, &resolved, store, clock)
        .await
        .unwrap();
    let listeners = Listeners::bind(&resolved).await.unwrap();
    let main = listeners.main.local_addr().unwrap();
    let admin = listeners.admin.as_ref().map(|l| l.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(state, &resolved, listeners, async {
            stopped.await.ok();
        })
        .await
        .unwrap()
    });
    (main, admin, stop, task)
}

async fn status(client: &reqwest::Client, url: String, token: bool) -> u16 {
    let mut req = client.get(url);
    if token {
        req = req.bearer_auth(TOKEN);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_separate_admin_listener_serves_the_admin_api_alone() {
    let (main, admin, stop, task) = start(settings(|s| s.server.admin_listen = Some("127.0.0.1:0".into()))).await;
    let admin = admin.expect("an admin listener");
    let c = reqwest::Client::new();
    // The main listener: the admin API, its document and the metrics are not there.
    for path in ["/admin/v1/tenants", "/admin/v1/openapi.json", "/metrics"] {
        assert_eq!(
            status(&c, format!("http://{main}{path}"), true).await,
            404,
            "{path} on main"
        );
    }
    // Browsers, apps, tenant admins (portal) and probes still are.
    for (path, want) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/.well-known/openid-configuration", 200),
        ("/jwks", 200),
    ] {
        assert_eq!(
            status(&c, format!("http://{main}{path}"), false).await,
            want,
            "{path} on main"
        );
    }
    assert_ne!(
        status(&c, format!("http://{main}/portal"), false).await,
        404,
        "the portal stays public"
    );
    // The admin listener: the admin API, its document and the probes; nothing public.
    assert_eq!(status(&c, format!("http://{admin}/admin/v1/tenants"), true).await, 200);
    assert_eq!(status(&c, format!("http://{admin}/admin/v1/tenants"), false).await, 401);
    assert_eq!(
        status(&c, format!("http://{admin}/admin/v1/openapi.json"), false).await,
        200
    );
    assert_eq!(status(&c, format!("http://{admin}/healthz"), false).await, 200);
    assert_eq!(status(&c, format!("http://{admin}/readyz"), false).await, 200);
    for path in ["/authorize", "/jwks", "/portal", "/.well-known/openid-configuration"] {
        assert_eq!(
            status(&c, format!("http://{admin}{path}"), false).await,
            404,
            "{path} on admin"
        );
    }
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

#[tokio::test]
async fn without_an_admin_listener_everything_is_on_the_main_one() {
    let (main, admin, stop, task) = start(settings(|_| {})).await;
    assert!(admin.is_none());
    let c = reqwest::Client::new();
    assert_eq!(status(&c, format!("http://{main}/admin/v1/tenants"), true).await, 200);
    assert_eq!(
        status(&c, format!("http://{main}/admin/v1/openapi.json"), false).await,
        200
    );
    assert_eq!(status(&c, format!("http://{main}/jwks"), false).await, 200);
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM).
fn self_signed(cn: &str) -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};
    let key =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(rand::random::<u32>() >> 1).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
    (b.build().to_pem().unwrap(), key.private_key_to_pem_pkcs8().unwrap())
}

/// Whether an HTTPS request trusting only `ca` succeeds (a new connection).
async fn trusted_by(ca: &[u8], url: &str) -> bool {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    client.get(url).send().await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn https_is_served_with_the_certificate_on_disk_and_reloaded_when_it_changes() {
    let dir = scratch("tls");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (cert_a, key_a) = self_signed("first");
    std::fs::write(&cert, &cert_a).unwrap();
    std::fs::write(&key, &key_a).unwrap();
    let (main, admin, stop, task) = start(settings(|s| {
        s.server.admin_listen = Some("127.0.0.1:0".into());
        s.server.tls_cert_file = Some(cert.clone());
        s.server.tls_key_file = Some(key.clone());
    }))
    .await;
    let admin = admin.unwrap();
    let main_url = format!("https://127.0.0.1:{}/healthz", main.port());
    let admin_url = format!("https://127.0.0.1:{}/healthz", admin.port());
    assert!(
        trusted_by(&cert_a, &main_url).await,
        "main listener speaks TLS with the first certificate"
    );
    assert!(trusted_by(&cert_a, &admin_url).await, "admin listener too");
    // Plain HTTP on a TLS port gets no answer.
    assert!(reqwest::get(format!("http://{main}/healthz")).await.is_err());

    // A key that does not match the certificate is refused; the old pair keeps serving.
    let (cert_b, key_b) = self_signed("second");
    std::fs::write(&cert, &cert_b).unwrap();
    tokio::time::sleep(server::TLS_POLL_INTERVAL * 2).await;
    assert!(
        trusted_by(&cert_a, &main_url).await,
        "a mismatched pair must not replace the serving one"
    );
    assert!(!trusted_by(&cert_b, &main_url).await);

    // Once the pair matches, new handshakes get it without a restart.
    std::fs::write(&key, &key_b).unwrap();
    let deadline = Instant::now() + server::TLS_POLL_INTERVAL * 4;
    while !trusted_by(&cert_b, &main_url).await {
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !trusted_by(&cert_a, &main_url).await,
        "the old certificate is no longer served"
    );
    assert!(trusted_by(&cert_b, &admin_url).await);
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
    std::fs::remove_dir_all(dir).ok();
}

// ---- the real binary ---------------------------------------------------

struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    fn start(extra: &[(&str, &str)]) -> Gateway {
        Self::start_with_open_files(extra, None)
    }

    /// [`Self::start`], with the limit on open files `soft:hard` set by
    /// util-linux's `prlimit`, which then runs the gateway in its place.
    fn start_with_open_files(extra: &[(&str, &str)], open_files: Option<&str>) -> Gateway {
        let dir = scratch("drain");
        let log = dir.join("gateway.log");
        let port = redis::free_port();
        let mut cmd = match open_files {
            None => Command::new(env!("CARGO_BIN_EXE_portcullis")),
            Some(limits) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limits}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_portcullis"));
                cmd
            }
        };
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
            cmd.env_remove(k);
        }
        cmd.env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("PORTCULLIS_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("PORTCULLIS_REDIS_URL", redis::url())
            .env("PORTCULLIS_ADMIN_TOKEN", TOKEN)
            .env("PORTCULLIS_MASTER_KEY_FILE", master_key_file())
            .env("PORTCULLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let gw = Gateway { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while raw_get(gw.port, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "the gateway did not start:\n{}", gw.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        gw
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit; its exit code and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > limit {
                self.child.kill().ok();
                panic!("the gateway did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One HTTP/1.1 GET on a new connection: status and body, or `None` when
/// the connection is refused or closed.
fn raw_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    parse_response(&out)
}

fn parse_response(raw: &str) -> Option<(u16, String)> {
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts a `POST /token` whose body is only half sent: a request in flight.
fn slow_request(port: u16) -> (TcpStream, &'static str) {
    let rest = "&client_id=nobody";
    let first = "grant_type=authorization_code&code=x.y";
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        first.len() + rest.len()
    )
    .unwrap();
    s.flush().unwrap();
    (s, rest)
}

#[test]
fn sigterm_turns_unready_refuses_new_connections_and_finishes_in_flight_requests() {
    let mut gw = Gateway::start(&[
        ("PORTCULLIS_SHUTDOWN_GRACE_SECS", "15"),
        ("PORTCULLIS_SHUTDOWN_DELAY_SECS", "1"),
    ]);
    assert_eq!(raw_get(gw.port, "/readyz").map(|r| r.0), Some(200));
    let (mut inflight, rest) = slow_request(gw.port);
    std::thread::sleep(Duration::from_millis(200));
    gw.sigterm();
    let signalled = Instant::now();
    std::thread::sleep(Duration::from_millis(300));

    // During the delay: unready (load balancers stop sending), still alive.
    let (code, body) = raw_get(gw.port, "/readyz").expect("still accepting during the delay");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(raw_get(gw.port, "/healthz").map(|r| r.0), Some(200));

    // After the delay: new connections are refused.
    std::thread::sleep(Duration::from_millis(1200));
    let refused = TcpStream::connect(("127.0.0.1", gw.port));
    assert!(
        refused.as_ref().err().map(std::io::Error::kind) == Some(std::io::ErrorKind::ConnectionRefused),
        "a new connection during the drain must be refused: {refused:?}"
    );

    // The request in flight since before the signal still gets its answer.
    inflight.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    inflight.read_to_string(&mut answer).unwrap();
    let (code, body) = parse_response(&answer).expect("a complete response");
    assert_eq!(code, 401, "{answer}");
    assert!(body.contains("invalid_client"), "{body}");

    let (exit, took) = gw.wait_exit(Duration::from_secs(15));
    assert_eq!(exit, Some(0), "a clean drain exits 0:\n{}", gw.log());
    assert!(signalled.elapsed() < Duration::from_secs(10), "took {took:?}");
    let log = gw.log();
    assert!(
        log.contains("shutdown.draining") && log.contains("shutdown.drained"),
        "{log}"
    );
}

#[test]
fn the_grace_period_bounds_the_drain() {
    let mut gw = Gateway::start(&[("PORTCULLIS_SHUTDOWN_GRACE_SECS", "2")]);
    // A client that never finishes its request.
    let (mut stuck, _rest) = slow_request(gw.port);
    std::thread::sleep(Duration::from_millis(200));
    gw.sigterm();
    let (exit, took) = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(exit, Some(1), "cut-off requests show in the exit status:\n{}", gw.log());
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "the drain took {took:?}, not the 2 s grace"
    );
    assert!(gw.log().contains("shutdown.grace_exceeded"), "{}", gw.log());
    // The stuck client's connection is gone with the process.
    let mut buf = [0u8; 16];
    assert!(matches!(stuck.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn the_limit_on_open_files_is_raised_at_start_and_checked_against_max_connections() {
    // A shell's 1,024 under a hard limit of 4,096: raised to 4,096, which
    // the default max_connections (10,000) does not fit, and the log says so.
    let gw = Gateway::start_with_open_files(&[], Some("1024:4096"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    assert_eq!(
        open_files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["4096", "4096"],
        "{open_files}"
    );
    let log = gw.log();
    assert!(log.contains("server.open_files_too_few"), "{log}");
    drop(gw);

    // What fits is said once, at info.
    let gw = Gateway::start_with_open_files(&[("PORTCULLIS_MAX_CONNECTIONS", "2000")], Some("1024:4096"));
    let log = gw.log();
    assert!(
        log.contains("server.open_files") && !log.contains("server.open_files_too_few"),
        "{log}"
    );
}

fn check_config(dir: &Path, offline: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        cmd.env_remove(k);
    }
    // These files name no store: one process on memory, on purpose.
    cmd.env("PORTCULLIS_STORE_BACKEND", "memory");
    cmd.arg("--config").arg(dir.join("portcullis.toml")).arg("check-config");
    if offline {
        cmd.arg("--offline");
    }
    cmd.output().unwrap()
}

/// A scratch configuration whose tenants directory holds `acme.toml`
/// written as `acme`.
fn with_tenant_file(name: &str, acme: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    std::fs::write(
        dir.join("portcullis.toml"),
        format!("tenants_dir = {:?}\n", dir.join("tenants")),
    )
    .unwrap();
    std::fs::write(dir.join("tenants/acme.toml"), acme).unwrap();
    dir
}

#[test]
fn check_config_offline_passes_when_an_idp_is_unreachable() {
    // `.invalid` never resolves (RFC 6761): this IdP is unreachable.
    let dir = with_tenant_file(
        "offline",
        "id = \"acme\"\n[[connections]]\nid = \"okta\"\nkind = \"saml\"\nmetadata_url = \"https://idp.acme.invalid/metadata\"\n[[connections]]\nid = \"entra\"\nkind = \"oidc\"\nissuer = \"https://login.acme.invalid/v2.0\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
    );
    let online = check_config(&dir, false);
    assert_eq!(
        online.status.code(),
        Some(1),
        "online, the unreachable IdP is a problem"
    );
    assert!(String::from_utf8_lossy(&online.stderr).contains("metadata_url"));
    let offline = check_config(&dir, true);
    assert!(
        offline.status.success(),
        "offline, it is not: {}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert!(String::from_utf8_lossy(&offline.stdout).contains("2 connection(s)"));

    // Offline still refuses what it can see locally.
    std::fs::write(dir.join("tenants/bad.toml"), "id = \"Bad Id\"\n").unwrap();
    let bad = check_config(&dir, true);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.toml"));
    std::fs::remove_dir_all(dir).ok();
}

/// A tenant file's metadata URL carrying a password is refused offline
/// too, where nothing is fetched (`saml.metadata_url_credentials`, as the
/// file's sync and set-up refuse it), without repeating the password.
#[test]
fn check_config_offline_refuses_a_metadata_url_carrying_a_password() {
    let dir = with_tenant_file(
        "offline-credentials",
        "id = \"acme\"\n[[connections]]\nid = \"okta\"\nkind = \"saml\"\nmetadata_url = \"https://svc:file-pass-s3cret@idp.acme.invalid/metadata\"\n",
    );
    let offline = check_config(&dir, true);
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert_eq!(offline.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connections[0].metadata_url"), "{stderr}");
    assert!(stderr.contains("saml.metadata_url_credentials"), "{stderr}");
    assert!(!stderr.contains("file-pass-s3cret"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_config_refuses_an_unusable_certificate() {
    let dir = scratch("tlscheck");
    let (cert_a, _) = self_signed("a");
    let (_, key_b) = self_signed("b");
    std::fs::write(dir.join("tls.crt"), &cert_a).unwrap();
    std::fs::write(dir.join("tls.key"), &key_b).unwrap();
    std::fs::write(
        dir.join("portcullis.toml"),
        format!(
            "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            dir.join("tls.crt"),
            dir.join("tls.key")
        ),
    )
    .unwrap();
    let out = check_config(&dir, true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls_cert_file") && err.contains("does not match"),
        "{err}"
    );
    std::fs::write(dir.join("tls.key"), b"not a key").unwrap();
    let err = String::from_utf8_lossy(&check_config(&dir, true).stderr).to_string();
    assert!(err.contains("not a PEM private key"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn forged_host_and_forwarded_headers_change_no_url() {
    let (main, _, stop, task) = start(settings(|s| s.server.public_url = "https://sso.example.com".into())).await;
    let c = reqwest::Client::new();
    for path in ["/.well-known/openid-configuration", "/jwks"] {
        let body = c
            .get(format!("http://{main}{path}"))
            .header("Host", "evil.example")
            .header("X-Forwarded-Host", "evil.example")
            .header("X-Forwarded-Proto", "http")
            .header("Forwarded", "host=evil.example;proto=http")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains("evil.example"),
            "{path} trusted a request header: {body}"
        );
        if path.contains("openid") {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(doc["issuer"], "https://sso.example.com");
            assert_eq!(doc["token_endpoint"], "https://sso.example.com/token");
        }
    }
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

/// A burst of new connections larger than tokio's default accept queue
/// (128) is queued by the kernel, not dropped: with that queue the
/// handshakes past it were dropped (129 of 2,000 connected within 0.7 s),
/// each such client waited a second or more for its SYN to be sent again,
/// and load tests at 32,000 requests a second saw stalls of one to two
/// seconds with the gateway half idle. Nothing accepts here while the
/// burst arrives, as when the gateway's worker is busy with requests.
#[tokio::test]
async fn a_burst_of_2000_connections_waits_in_the_accept_queue() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("/proc/sys/net/core/somaxconn")
        .trim()
        .parse()
        .unwrap();
    let burst = 2_000;
    assert!(
        somaxconn > burst,
        "net.core.somaxconn is {somaxconn}: the kernel caps every accept queue there, so this test \
         needs more than {burst} (the default since Linux 5.4 is 4096)"
    );
    let resolved = settings(|_| {}).validate("test").unwrap();
    let listeners = Listeners::bind(&resolved).await.unwrap();
    let addr = listeners.main.local_addr().unwrap();
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..burst {
        connecting.spawn(async move {
            tokio::time::timeout(Duration::from_millis(700), tokio::net::TcpStream::connect(addr)).await
        });
    }
    let mut open = Vec::with_capacity(burst);
    let mut timed_out = 0;
    while let Some(r) = connecting.join_next().await {
        match r.unwrap() {
            Ok(stream) => open.push(stream.unwrap()),
            Err(_) => timed_out += 1,
        }
    }
    assert_eq!(
        (open.len(), timed_out),
        (burst, 0),
        "connections completed within 0.7 s, and timed out"
    );
    drop(listeners);
}

// ---- slow clients ------------------------------------------------------

/// Sends `head` (and the start of a body) on a new connection and leaves it
/// open, as a client that stalls.
async fn stalled(addr: SocketAddr, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Reads until the server closes the connection (at most `limit`): what it
/// sent, and how long the close took. Panics if it stays open.
async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => (String::from_utf8_lossy(&out).into_owned(), started.elapsed()),
        Err(_) => panic!(
            "the connection was still open after {limit:?}; received so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// A client that sends its headers and then its body a little at a time
/// held one of the replica's `max_in_flight` slots for as long as it liked:
/// a few hundred such clients stopped a replica. Past `body_timeout_secs`
/// the request is answered 408 in its endpoint's format
/// (`request.body_timeout`), the connection closes and the slot is free.
/// One body is read by the edge itself (the token form), one by the admin
/// API's JSON extractor.
#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408_and_frees_its_slot() {
    let (main, _, stop, task) = start(settings(|s| {
        s.server.body_timeout_secs = 1;
        s.server.max_in_flight = Some(1);
    }))
    .await;
    let c = reqwest::Client::new();
    let discovery = format!("http://{main}/.well-known/openid-configuration");

    let mut token = stalled(
        main,
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 60\r\n\r\ngrant_type=authorization_code&code=",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = c.get(&discovery).send().await.unwrap();
    assert_eq!(shed.status(), 503, "the stalled request holds the only slot");

    let (answer, took) = until_closed(&mut token, Duration::from_secs(5)).await;
    let (code, body) = parse_response(&answer).expect("a response");
    assert_eq!(code, 408, "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "invalid_request", "{body}");
    assert_eq!(
        c.get(&discovery).send().await.unwrap().status(),
        200,
        "the slot is free again"
    );

    let mut admin = stalled(
        main,
        &format!(
            "POST /admin/v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 80\r\n\r\n{{\"id\": \"slow\""
        ),
    )
    .await;
    let (answer, _) = until_closed(&mut admin, Duration::from_secs(5)).await;
    let (code, body) = parse_response(&answer).expect("a response");
    assert_eq!(code, 408, "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "request.body_timeout", "{body}");
    let created = c
        .get(format!("http://{main}/admin/v1/tenants/slow"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 404, "nothing was created from half a body");

    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

/// A client that never finishes its headers was kept forever (`axum::serve`
/// runs hyper without a timer); a keep-alive connection that sends no next
/// request likewise. Both now close after `header_timeout_secs`.
#[tokio::test]
async fn headers_sent_too_slowly_and_idle_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let (main, _, stop, task) = start(settings(|s| s.server.header_timeout_secs = 1)).await;

    let mut slow = stalled(main, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    let (answer, took) = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "no response to half a request: {answer}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}, not the 1 s header timeout"
    );

    // A whole request is answered and the connection kept alive; the
    // connection then closes once it has been idle for the timeout.
    let mut idle = stalled(main, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (rest, took) = until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "an idle connection closed after {took:?}"
    );

    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

/// A listener holds at most `max_connections` connections: beyond, new
/// ones wait in the kernel's accept queue (their TCP handshake completes)
/// until one closes. Without a cap, clients that only open connections
/// used up the process's file descriptors, which its store and its IdPs
/// need too.
#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    use tokio::io::AsyncReadExt;
    let (main, admin, stop, task) = start(settings(|s| {
        s.server.max_connections = 2;
        // The metrics are read there, on slots of its own.
        s.server.admin_listen = Some("127.0.0.1:0".into());
    }))
    .await;
    let admin = admin.expect("an admin listener");
    let scrape = || async move {
        reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let first = tokio::net::TcpStream::connect(main).await.unwrap();
    let second = tokio::net::TcpStream::connect(main).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = scrape().await;
    for line in [
        "portcullis_http_connections_open{listener=\"main\"} 2\n",
        "portcullis_http_connections_max{listener=\"main\"} 2\n",
        // Both slots taken: the listener waits for one before its next accept.
        "portcullis_http_connections_at_cap_total{listener=\"main\"} 1\n",
        // The scrape's own connection.
        "portcullis_http_connections_open{listener=\"admin\"} 1\n",
        "# TYPE portcullis_http_connections_at_cap_total counter\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }

    let mut third = stalled(
        main,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served while both slots were taken"
    );
    let metrics = scrape().await;
    assert!(
        metrics.contains("portcullis_http_connections_open{listener=\"main\"} 2\n"),
        "the waiting connection counts as open:\n{metrics}"
    );
    // One closes: the waiting connection is accepted and answered.
    drop(first);
    let (answer, _) = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    drop(second);
    // Both gone (the third closed after its answer): nothing open, and
    // the cap was reached twice (two connections, then the third).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = scrape().await;
        if metrics.contains("portcullis_http_connections_open{listener=\"main\"} 0\n") {
            assert!(
                metrics.contains("portcullis_http_connections_at_cap_total{listener=\"main\"} 2\n"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "connections still counted open:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

// ---- one client, every slot --------------------------------------------

/// A `POST /token` whose headers arrived and whose body never finishes: a
/// request holding a slot until its body deadline.
const STALLED_TOKEN: &str = "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n\r\ngrant_type=authorization_code&code=";

/// Asks `url` every 50 ms until it answers `status` (at most 10 s): the
/// stalled requests before it have reached the gateway and hold their slots.
async fn until_status(client: &reqwest::Client, url: &str, status: u16) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client.get(url).send().await.unwrap();
        if resp.status().as_u16() == status {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers {} instead of {status}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `portcullis_requests_shed_total{route, reason}` as this process counts it.
async fn shed_total(admin: SocketAddr, route: &str, reason: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("portcullis_requests_shed_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One address sending request headers and trickling (here: never
/// finishing) their bodies took every `max_in_flight` slot of a replica:
/// the edge reads a token form before the rate limiter counts it, so
/// nothing counted those requests, and every other client got a 503 shed
/// until the body deadline, again and again. Now an address holds at most
/// `max_in_flight_per_client` slots; its next request is refused at once
/// (503, `Retry-After`, `overload.client_concurrency`, counted and logged),
/// and another address is still served.
#[tokio::test]
async fn one_address_with_stalled_token_requests_holds_only_its_share_and_others_are_served() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let (main, admin, stop, task) = start(settings_with_env(
        &[
            ("PORTCULLIS_MAX_IN_FLIGHT", "8"),
            ("PORTCULLIS_MAX_IN_FLIGHT_PER_CLIENT", "4"),
        ],
        |s| s.server.admin_listen = Some("127.0.0.1:0".into()),
    ))
    .await;
    let admin = admin.expect("an admin listener");
    let before = shed_total(admin, "token", "overload.client_concurrency").await;
    // This client's address is 127.0.0.1, the other's 127.0.0.2 (loopback
    // answers every 127/8 address).
    let c = reqwest::Client::new();
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let discovery = format!("http://{main}/.well-known/openid-configuration");

    let mut stalled_requests = Vec::new();
    for _ in 0..4 {
        stalled_requests.push(stalled(main, STALLED_TOKEN).await);
    }
    // Once the four hold their slots, the address's next request is refused.
    let page = until_status(&c, &format!("http://{main}/authorize?tenant=demo"), 503).await;
    assert_eq!(page.headers()["retry-after"], "1");
    let page = page.text().await.unwrap();
    assert!(page.contains("overload.client_concurrency"), "{page}");

    // A fifth token request of the address: RFC 6749 JSON, at once.
    let started = Instant::now();
    let fifth = c
        .post(format!("http://{main}/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "x")])
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "a refusal never waits");
    assert_eq!(fifth.status(), 503);
    assert_eq!(fifth.headers()["retry-after"], "1");
    let json: serde_json::Value = fifth.json().await.unwrap();
    assert_eq!(json["error"], "temporarily_unavailable", "{json}");
    let forward = c.get(format!("http://{main}/forward-auth")).send().await.unwrap();
    assert_eq!(forward.status(), 503);
    assert_eq!(forward.headers()["x-portcullis-reason"], "overload.client_concurrency");
    // The probes stay exempt, for this address too.
    assert_eq!(status(&c, format!("http://{main}/healthz"), false).await, 200);
    assert_eq!(status(&c, format!("http://{main}/readyz"), false).await, 200);

    // Another address: the budget has room for it.
    let served = other.get(&discovery).send().await.unwrap();
    assert_eq!(served.status(), 200, "another client is served");
    assert_eq!(
        other
            .post(format!("http://{main}/token"))
            .form(&[("grant_type", "client_credentials"), ("client_id", "x")])
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "the token endpoint decides another client's request (an unknown app)"
    );

    // Counted under its reason, and logged with it.
    assert!(shed_total(admin, "token", "overload.client_concurrency").await - before >= 1.0);
    let lines = logs.with_reason("overload.client_concurrency");
    assert!(!lines.is_empty(), "no overload.client_concurrency line");
    assert_eq!(lines[0]["fields"]["client"], "127.0.0.1", "{:?}", lines[0]);

    // The stalled clients go: the address is served again.
    drop(stalled_requests);
    until_status(&c, &discovery, 200).await;
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}

/// The admin listener shared the public listener's budget: clients holding
/// every `max_in_flight` slot shed the admin API too, just when operators
/// needed it. Each listener now has a budget of its own: with the public
/// one exhausted the admin API answers, and with the admin one exhausted
/// the public routes do.
#[tokio::test]
async fn a_saturated_public_listener_never_sheds_the_admin_api_nor_the_admin_listener_the_public_one() {
    let (main, admin, stop, task) = start(settings_with_env(
        &[
            ("PORTCULLIS_MAX_IN_FLIGHT", "2"),
            ("PORTCULLIS_ADMIN_MAX_IN_FLIGHT", "1"),
        ],
        |s| s.server.admin_listen = Some("127.0.0.1:0".into()),
    ))
    .await;
    let admin = admin.expect("an admin listener");
    let c = reqwest::Client::new();
    let discovery = format!("http://{main}/.well-known/openid-configuration");
    let tenants = format!("http://{admin}/admin/v1/tenants");

    // The public listener's two slots, held.
    let public_held = [stalled(main, STALLED_TOKEN).await, stalled(main, STALLED_TOKEN).await];
    let shed = until_status(&c, &format!("http://{main}/authorize?tenant=demo"), 503).await;
    assert!(shed.text().await.unwrap().contains("overload.shed"));
    // The admin API on its own listener still answers.
    let listed = c.get(&tenants).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(listed.status(), 200, "{}", listed.text().await.unwrap());
    drop(public_held);
    until_status(&c, &discovery, 200).await;

    // The admin listener's one slot, held by a half-sent admin request.
    let admin_held = stalled(
        admin,
        &format!(
            "POST /admin/v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 80\r\n\r\n{{\"id\": \"slow\""
        ),
    )
    .await;
    let refused = c.get(&tenants).bearer_auth(TOKEN);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = refused.send().await.unwrap();
    while refused.status() != 503 {
        assert!(Instant::now() < deadline, "the admin slot was never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = c.get(&tenants).bearer_auth(TOKEN).send().await.unwrap();
    }
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["reason"], "overload.shed", "{problem}");
    // The admin listener's gauges show its own budget full, the public one's empty.
    let scrape = c.get(format!("http://{admin}/metrics")).send().await.unwrap();
    let metrics = scrape.text().await.unwrap();
    for line in [
        "portcullis_admin_requests_in_flight 1\n",
        "portcullis_admin_requests_max_in_flight 1\n",
        "portcullis_requests_in_flight 0\n",
        "portcullis_requests_max_in_flight 2\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
    // The public listener still serves.
    assert_eq!(c.get(&discovery).send().await.unwrap().status(), 200);
    drop(admin_held);
    until_status(&c, &tenants, 401).await;

    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap(), Ended::Drained);
}
