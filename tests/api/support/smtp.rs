//! A real SMTP server on loopback: `aiosmtpd` (PyPI, in
//! `tests/peers/requirements.txt`) run by `PORTCULLIS_TEST_PYTHON`, storing
//! every message it receives as a JSON file in a temporary folder. Tests
//! point the gateway at it (`[mail] smtp_url`, i.e. `PORTCULLIS_SMTP_URL`)
//! and wait for the message sent to an address.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server, stopped when dropped.
pub struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile_dir::Dir,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The `Subject` header.
    pub subject: String,
    /// The body (after the headers), transfer encoding undone where it was
    /// quoted-printable.
    pub body: String,
    /// The whole message as received.
    pub raw: String,
}

impl Mail {
    /// The six-digit numbers in the body.
    pub fn six_digit_numbers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut run = String::new();
        for c in self.body.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                run.push(c);
            } else {
                if run.len() == 6 {
                    found.push(run.clone());
                }
                run.clear();
            }
        }
        found
    }

    /// The code: the one six-digit number in the body (panics unless exactly one).
    pub fn code(&self) -> String {
        let found = self.six_digit_numbers();
        assert_eq!(
            found.len(),
            1,
            "the body must hold exactly one 6-digit number: {}",
            self.body
        );
        found[0].clone()
    }
}

const SERVER: &str = r#"
import json, os, sys, threading
from aiosmtpd.controller import Controller
out, port = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
count = [0]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with lock:
            count[0] += 1
            n = count[0]
        data = envelope.content.decode("utf-8", "replace") if isinstance(envelope.content, bytes) else envelope.content
        tmp = os.path.join(out, "%06d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos, "data": data}, f)
        os.rename(tmp, os.path.join(out, "%06d.json" % n))
        return "250 Message accepted for delivery"
c = Controller(Handler(), hostname="127.0.0.1", port=port)
c.start()
print("READY", flush=True)
sys.stdin.read()
c.stop()
"#;

/// A temporary folder removed on drop (no extra crate).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                portcullis::tokens::random_token(6)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("PORTCULLIS_TEST_PYTHON is not set: run scripts/test (it makes a venv with tests/peers/requirements.txt, including aiosmtpd)")
    })
}

impl SmtpServer {
    /// Starts aiosmtpd on a free loopback port and waits until it accepts.
    pub fn start() -> SmtpServer {
        let dir = tempfile_dir::Dir::new("portcullis-smtp");
        let port = super::redis::free_port();
        let mut child = Command::new(python())
            .arg("-c")
            .arg(SERVER)
            .arg(dir.path())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (set PORTCULLIS_TEST_PYTHON): {e}", python()));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "aiosmtpd did not start (pip install -r tests/peers/requirements.txt into PORTCULLIS_TEST_PYTHON's venv)"
        );
        SmtpServer { child, port, dir }
    }

    /// `smtp://127.0.0.1:PORT`, for `[mail] smtp_url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| parse(&std::fs::read_to_string(p).unwrap()))
            .collect()
    }

    /// The messages sent to `to` so far (envelope recipient, case-insensitive).
    pub fn messages_to(&self, to: &str) -> Vec<Mail> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .collect()
    }

    /// Waits (up to 10 s) until there are more than `seen` messages to `to`
    /// and returns the newest.
    pub async fn wait_for_after(&self, to: &str, seen: usize) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.messages_to(to);
            if got.len() > seen {
                return got.last().cloned().unwrap();
            }
            assert!(Instant::now() < deadline, "no message to {to} within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) for the first message to `to`.
    pub async fn wait_for(&self, to: &str) -> Mail {
        self.wait_for_after(to, 0).await
    }

    /// Waits `quiet` and asserts that nothing more than `seen` messages reached `to`.
    pub async fn assert_none_after(&self, to: &str, seen: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let got = self.messages_to(to);
        assert_eq!(got.len(), seen, "unexpected message to {to}: {got:?}");
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(json: &str) -> Mail {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let raw = v["data"].as_str().unwrap().replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
    // Unfolded headers.
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let qp = header("Content-Transfer-Encoding").eq_ignore_ascii_case("quoted-printable");
    let body = if qp { unquote(body) } else { body.to_owned() };
    Mail {
        from: v["from"].as_str().unwrap_or_default().to_owned(),
        to: v["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect(),
        subject: header("Subject"),
        body,
        raw: raw.clone(),
    }
}

fn unquote(s: &str) -> String {
    let s = s.replace("=\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
