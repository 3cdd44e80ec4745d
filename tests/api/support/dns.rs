//! A real DNS server for the tests: Debian's `dnsmasq` on a loopback port,
//! answering only the records a test gives it (`--local=/test/`: every other
//! name under `.test` is NXDOMAIN; nothing is forwarded anywhere).
//!
//! Like `redis.rs`, it runs under a tiny `sh` wrapper that kills it when the
//! pipe from this process closes, so it never outlives the test binary.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::ports::{reserve_port, ReservedPort};

const WRAPPER: &str = r#"dnsmasq "$@" </dev/null >/dev/null 2>"$DNSMASQ_LOG" &
pid=$!
echo "$pid"
read _ignored
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;

/// A `dnsmasq` owned by the test.
pub struct DnsServer {
    wrapper: Child,
    pid: u32,
    /// The port it listens on (UDP and TCP, 127.0.0.1).
    pub port: u16,
}

impl DnsServer {
    /// Starts `dnsmasq` on the reserved port with `txt` records (name, value)
    /// and names that exist without a TXT record (`empty`).
    pub fn start(reserved: ReservedPort, txt: &[(&str, &str)], empty: &[&str]) -> DnsServer {
        let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        assert!(
            found,
            "dnsmasq is not installed: run `scripts/setup-system test` (Debian package dnsmasq-base)"
        );
        let port = reserved.port;
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--pid-file=".to_owned(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".to_owned(),
            "--bind-interfaces".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--local=/test/".to_owned(),
            "--cache-size=0".to_owned(),
        ];
        for (name, value) in txt {
            args.push(format!("--txt-record={name},{value}"));
        }
        for name in empty {
            args.push(format!("--host-record={name},127.0.0.2"));
        }
        drop(reserved);
        // Another process may bind the port in the moment between the drop
        // and dnsmasq's bind: then dnsmasq exits, and it is tried again.
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::spawn(port, &args) {
                Ok(server) => return server,
                Err(why) => failures.push(why),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("dnsmasq did not start on port {port}: {failures:?}");
    }

    /// One start: the server once it holds the port, or why it did not.
    fn spawn(port: u16, args: &[String]) -> Result<DnsServer, String> {
        let log = std::env::temp_dir().join(format!("portcullis-dnsmasq-{}-{port}.log", std::process::id()));
        let mut wrapper = Command::new("sh")
            .env(
                "PATH",
                format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("DNSMASQ_LOG", &log)
            .arg("-c")
            .arg(WRAPPER)
            .arg("dnsmasq-wrapper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for dnsmasq");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = line.trim().parse().expect("dnsmasq pid");
        let server = DnsServer { wrapper, pid, port };
        // Up once it holds the port; gone if it could not bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            let gone = !alive() || zombie(pid);
            if gone || Instant::now() >= deadline {
                drop(server);
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let _ = std::fs::remove_file(&log);
                let state = if gone {
                    "exited"
                } else {
                    "still not listening after 10 s"
                };
                return Err(format!("{state}: {}", said.trim()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&log);
        Ok(server)
    }

    /// `127.0.0.1:<port>`, for `[dns] nameservers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): queries go unanswered.
    pub fn freeze(&self) {
        let ok = Command::new("kill")
            .args(["-STOP", &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -STOP {}", self.pid);
    }
}

/// Whether `pid` has exited and waits to be reaped by its parent (the wrapper).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Closing the pipe makes the wrapper kill dnsmasq (SIGKILL works on a stopped process).
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}
