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
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("redis-wrapper")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
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
        let server = RedisServer { wrapper, pid, port };
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

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether a server on `port` answers PING.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    conn.write_all(b"PING\r\n").is_ok() && conn.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}
