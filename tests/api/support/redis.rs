//! A real Redis server for the tests.
//!
//! [`url`] gives the server every test shares: `PORTCULLIS_TEST_REDIS_URL` when
//! set, otherwise one `redis-server` started on first use for the whole test
//! binary. Tests share it safely by rendering their keys under a [`prefix`] of
//! their own. [`RedisServer::start`] gives a private server a test may stop,
//! freeze or restart.
//!
//! Shutdown: Rust never drops statics, so a `Child` alone would outlive the
//! test binary. Each server therefore runs under a tiny `sh` wrapper that
//! blocks reading its stdin, a pipe whose only writer is this process; when
//! the handle is dropped, or the test binary exits or is killed in any way,
//! the kernel closes the pipe, `read` returns and the wrapper SIGKILLs
//! `redis-server`. No persistence is configured, so nothing is left on disk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable naming an external Redis server to use instead.
pub const URL_ENV: &str = "PORTCULLIS_TEST_REDIS_URL";

/// Starts `redis-server` with the given arguments, prints its pid, and kills
/// it once stdin reaches end of file.
const WRAPPER: &str = r#"redis-server "$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
read _ignored
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;

/// How long a freshly spawned server may take to answer PING.
const STARTUP: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by the test binary.
pub struct RedisServer {
    wrapper: Child,
    pid: u32,
    port: u16,
    /// Its data directory, removed with it.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts a private server on a free port of 127.0.0.1.
    pub fn start() -> RedisServer {
        // A port picked free may be taken before redis binds it: try again.
        for _ in 0..5 {
            if let Some(server) = Self::try_start(free_port()) {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed and on PATH?)");
    }

    /// Starts a server on `port` (e.g. to restart one that was stopped).
    pub fn start_on(port: u16) -> RedisServer {
        Self::try_start(port).unwrap_or_else(|| panic!("redis-server did not start on {port}"))
    }

    fn try_start(port: u16) -> Option<RedisServer> {
        Self::try_start_with(port, &[])
    }

    /// Starts a server on `port` with `extra` arguments (replication, TLS,
    /// cluster mode), answering PING on `port` in plain text.
    pub fn start_with(port: u16, extra: &[String]) -> RedisServer {
        Self::try_start_with(port, extra)
            .unwrap_or_else(|| panic!("redis-server did not start on {port} with {extra:?}"))
    }

    /// Starts a Sentinel on `port` from the configuration file `conf`
    /// (Sentinel rewrites it, so each Sentinel needs its own).
    pub fn start_sentinel(port: u16, conf: &std::path::Path) -> RedisServer {
        Self::spawn(&[conf.display().to_string(), "--sentinel".into()], port)
            .unwrap_or_else(|| panic!("redis-sentinel did not start on {port}"))
    }

    fn try_start_with(port: u16, extra: &[String]) -> Option<RedisServer> {
        // A replica writes the RDB it receives to its directory: never the
        // working directory (the checkout).
        let data = scratch("redis-data");
        let dir = data.display().to_string();
        let mut args: Vec<String> = [
            "--dir",
            &dir,
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let server = Self::spawn(&args, port);
        match server {
            Some(mut server) => {
                server.dir = Some(data);
                Some(server)
            }
            None => {
                std::fs::remove_dir_all(&data).ok();
                None
            }
        }
    }

    fn spawn(args: &[String], port: u16) -> Option<RedisServer> {
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("redis-wrapper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for redis-server");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().expect("wrapper stdout"))
            .read_line(&mut line)
            .expect("read redis-server pid");
        let pid = line.trim().parse().expect("redis-server pid");
        let server = RedisServer {
            wrapper,
            pid,
            port,
            dir: None,
        };
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if ping(port) {
                return Some(server);
            }
            if !server.alive() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `redis-server` process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(self) {
        drop(self);
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.pid);
    }

    fn alive(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Closing the wrapper's stdin makes it kill redis-server and exit.
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
        if let Some(dir) = &self.dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// The URL of the Redis server the tests share.
pub fn url() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => SERVER.get_or_init(RedisServer::start).url(),
        })
        .clone()
}

/// A key prefix no other test (in this run or an earlier one against the
/// same external server) uses.
pub fn prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: OnceLock<u32> = OnceLock::new();
    let run = RUN.get_or_init(rand::random::<u32>);
    format!(
        "test-{}-{run:08x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port nothing listens on right now, whose cluster bus port (+10000)
/// is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port + 10_000))).is_ok() {
            return port;
        }
    }
}

/// A port nothing listens on right now, below the kernel's ephemeral range
/// (`support::ports`): no outgoing connection of another test takes it
/// between this choice and the server's bind.
pub fn free_port() -> u16 {
    super::ports::unhanded_port()
}

/// Whether a server on `port` answers PING.
pub fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    conn.write_all(b"PING\r\n").is_ok() && conn.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

/// Runs `redis-cli` with `args` against 127.0.0.1 and returns its output.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli is missing: install the Debian package redis-tools (scripts/setup-system test)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory for configuration, certificates and cluster state.
fn scratch(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `check` holds, or panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test CA with a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the `openssl` command line.
pub struct TestCa {
    /// The directory holding every PEM file.
    pub dir: std::path::PathBuf,
}

impl TestCa {
    /// Makes the CA and both certificates (EC P-256, valid one day).
    pub fn new() -> TestCa {
        let dir = scratch("redis-ca");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is missing: install the Debian package openssl (scripts/setup-system test)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "1",
            "-subj",
            "/CN=Portcullis test CA",
            "-out",
            "ca.pem",
        ]);
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "portcullis", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            run(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &format!("{name}.ec"),
            ]);
            // PKCS#8, which every TLS stack reads.
            run(&[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                &format!("{name}.ec"),
                "-out",
                &format!("{name}.key"),
            ]);
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        TestCa { dir }
    }

    /// The path of `file` in the CA's directory.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    /// The content of `file`.
    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

/// A Redis server with a TLS port that requires a client certificate from
/// the test CA (and a plain port for readiness checks).
pub struct TlsRedis {
    /// The CA that signed the server's and the client's certificates.
    pub ca: TestCa,
    /// The server.
    pub server: RedisServer,
    /// The TLS port.
    pub tls_port: u16,
}

impl TlsRedis {
    /// Starts it.
    pub fn start() -> TlsRedis {
        let ca = TestCa::new();
        let tls_port = free_port();
        let p = |f: &str| ca.path(f).display().to_string();
        let server = RedisServer::start_with(
            free_port(),
            &[
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                p("server.pem"),
                "--tls-key-file".into(),
                p("server.key"),
                "--tls-ca-cert-file".into(),
                p("ca.pem"),
                "--tls-auth-clients".into(),
                "yes".into(),
            ],
        );
        TlsRedis { ca, server, tls_port }
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// The store options: URL, prefix, CA and client certificate.
    pub fn options(&self, prefix: &str) -> portcullis::store::redis::RedisOptions {
        let mut o = portcullis::store::redis::RedisOptions::new(&self.url(), prefix);
        o.tls.ca_pem = Some(self.ca.read("ca.pem"));
        o.tls.client_cert_pem = Some(self.ca.read("client.pem"));
        o.tls.client_key_pem = Some(self.ca.read("client.key"));
        o
    }
}

/// The master name the Sentinel topologies monitor.
pub const MASTER: &str = "portcullis";

/// A primary, a replica and three Sentinels (quorum 2, failover after 1 s).
pub struct SentinelRedis {
    /// The primary first named; `None` once killed.
    pub primary: Option<RedisServer>,
    /// The replica.
    pub replica: RedisServer,
    /// The Sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelRedis {
    /// Starts it and waits until every Sentinel knows the replica and the
    /// other Sentinels (so a failover can happen at once).
    pub fn start() -> SentinelRedis {
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(
            free_port(),
            &["--replicaof".into(), "127.0.0.1".into(), primary.port().to_string()],
        );
        let dir = scratch("sentinel");
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 3000\n\
                         sentinel parallel-syncs {MASTER} 1\n",
                        dir.display(),
                        primary.port()
                    ),
                )
                .unwrap();
                RedisServer::start_sentinel(port, &conf)
            })
            .collect();
        let ports: Vec<String> = sentinels.iter().map(|s| s.port().to_string()).collect();
        wait_for("the replica to sync", Duration::from_secs(20), || {
            cli(&["-p", &replica.port().to_string(), "info", "replication"]).contains("master_link_status:up")
        });
        for p in &ports {
            wait_for(
                "the Sentinels to know each other and the replica",
                Duration::from_secs(30),
                || {
                    cli(&["-p", p, "sentinel", "replicas", MASTER]).contains(&replica.port().to_string())
                        && cli(&["-p", p, "sentinel", "sentinels", MASTER])
                            .matches("127.0.0.1")
                            .count()
                            >= 2
                },
            );
        }
        SentinelRedis {
            primary: Some(primary),
            replica,
            sentinels,
        }
    }

    /// `redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/portcullis`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> u16 {
        let answer = cli(&[
            "-p",
            &self.sentinels[0].port().to_string(),
            "sentinel",
            "get-master-addr-by-name",
            MASTER,
        ]);
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("a primary address")
    }

    /// Kills the primary and returns at once (the Sentinels promote the
    /// replica about 1-3 s later).
    pub fn kill_primary(&mut self) {
        drop(self.primary.take());
    }

    /// Waits until the Sentinels name the replica as primary and it accepts writes.
    pub fn wait_for_promotion(&self) {
        let replica = self.replica.port();
        wait_for("the Sentinels to promote the replica", Duration::from_secs(30), || {
            self.primary_port() == replica
                && cli(&["-p", &replica.to_string(), "info", "replication"]).contains("role:master")
        });
    }
}

/// A Redis Cluster of three primaries, each with one replica
/// (`cluster-node-timeout` 1 s).
pub struct ClusterRedis {
    /// The nodes, in the order given to `redis-cli --cluster create`
    /// (the first three become primaries).
    pub nodes: Vec<Option<RedisServer>>,
}

impl ClusterRedis {
    /// Starts six nodes, creates the cluster and waits until it is `ok`
    /// everywhere.
    pub fn start() -> ClusterRedis {
        let dir = scratch("cluster");
        let nodes: Vec<RedisServer> = (0..6)
            .map(|i| {
                RedisServer::start_with(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{i}.conf"),
                        "--cluster-node-timeout".into(),
                        "1000".into(),
                        "--dir".into(),
                        dir.display().to_string(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cli(&args);
        assert!(out.contains("All 16384 slots covered"), "cluster create: {out}");
        for n in &nodes {
            let port = n.port().to_string();
            wait_for("the cluster to be ok", Duration::from_secs(30), || {
                cli(&["-p", &port, "cluster", "info"]).contains("cluster_state:ok")
            });
        }
        for n in nodes.iter().skip(3) {
            let port = n.port().to_string();
            wait_for("the cluster replicas to sync", Duration::from_secs(30), || {
                cli(&["-p", &port, "info", "replication"]).contains("master_link_status:up")
            });
        }
        ClusterRedis {
            nodes: nodes.into_iter().map(Some).collect(),
        }
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The port of the node serving `key`'s slot as primary now.
    pub fn primary_for(&self, key: &str) -> u16 {
        self.try_primary_for(key)
            .unwrap_or_else(|| panic!("no primary serves {key}"))
    }

    /// Like [`ClusterRedis::primary_for`], `None` while no live primary serves it.
    pub fn try_primary_for(&self, key: &str) -> Option<u16> {
        let any = self
            .nodes
            .iter()
            .flatten()
            .next()
            .expect("a live node")
            .port()
            .to_string();
        let slot = cli(&["-p", &any, "cluster", "keyslot", key])
            .trim()
            .parse::<u16>()
            .unwrap();
        // Ask each live primary whether it serves the slot.
        for n in self.nodes.iter().flatten() {
            let port = n.port().to_string();
            let role = cli(&["-p", &port, "role"]);
            if role.starts_with("master") {
                let nodes = cli(&["-p", &port, "cluster", "nodes"]);
                let myself = nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .unwrap_or_default()
                    .to_owned();
                for range in myself.split_whitespace().skip(8) {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                        if (a..=b).contains(&slot) {
                            return Some(n.port());
                        }
                    }
                }
            }
        }
        None
    }

    /// Kills the node on `port`.
    pub fn kill(&mut self, port: u16) {
        for n in &mut self.nodes {
            if n.as_ref().is_some_and(|s| s.port() == port) {
                drop(n.take());
            }
        }
    }

    /// Waits until a live node serves `key`'s slot as primary (a replica
    /// took over from a killed one), then until the cluster is `ok` again.
    pub fn wait_for_primary_of(&self, key: &str) {
        wait_for("a replica to take over the slot", Duration::from_secs(30), || {
            self.try_primary_for(key).is_some()
        });
        self.wait_ok();
    }

    /// Waits until every live node reports the cluster `ok` again.
    pub fn wait_ok(&self) {
        for n in self.nodes.iter().flatten() {
            let port = n.port().to_string();
            wait_for("the cluster to be ok again", Duration::from_secs(30), || {
                cli(&["-p", &port, "cluster", "info"]).contains("cluster_state:ok")
            });
        }
    }
}

/// The topologies the conformance suite shares, started once per test binary.
pub mod shared {
    use super::*;

    /// The shared TLS server.
    pub fn tls() -> &'static TlsRedis {
        static TLS: OnceLock<TlsRedis> = OnceLock::new();
        TLS.get_or_init(TlsRedis::start)
    }

    /// The shared Sentinel topology.
    pub fn sentinel() -> &'static SentinelRedis {
        static SENTINEL: OnceLock<SentinelRedis> = OnceLock::new();
        SENTINEL.get_or_init(SentinelRedis::start)
    }

    /// The shared Sentinel topology's URL.
    pub fn sentinel_url() -> String {
        sentinel().url()
    }

    /// The shared cluster's URL.
    pub fn cluster_url() -> String {
        static CLUSTER: OnceLock<ClusterRedis> = OnceLock::new();
        CLUSTER.get_or_init(ClusterRedis::start).url()
    }
}
