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

const WRAPPER: &str = r#"dnsmasq "$@" </dev/null >/dev/null 2>&1 &
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

/// A free UDP port on 127.0.0.1 (for a server started later on it).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl DnsServer {
    /// Starts `dnsmasq` on `port` with `txt` records (name, value) and
    /// names that exist without a TXT record (`empty`).
    pub fn start(port: u16, txt: &[(&str, &str)], empty: &[&str]) -> DnsServer {
        let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        assert!(
            found,
            "dnsmasq is not installed: run `scripts/setup-system test` (Debian package dnsmasq-base)"
        );
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
        let mut wrapper = Command::new("sh")
            .env(
                "PATH",
                format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .arg("-c")
            .arg(WRAPPER)
            .arg("dnsmasq-wrapper")
            .args(&args)
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
        // Up once it holds the port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "dnsmasq did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
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

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Closing the pipe makes the wrapper kill dnsmasq (SIGKILL works on a stopped process).
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}
