//! A real nginx for the tests: Debian's `nginx` (or `nginx-light`) run as
//! the test's own process (no daemon, no master process, every path under a
//! scratch directory, one loopback port), with `auth_request` sending each
//! request to the gateway's `/forward-auth` before it reaches a test backend.
//!
//! Like `dns.rs`, nginx runs under a tiny `sh` wrapper that kills it when the
//! pipe from this process closes, so it never outlives the test binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRAPPER: &str = r#"nginx "$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
read _ignored
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0"#;

/// One protected location: requests under `prefix` are asked about at
/// `/forward-auth?resource=…&scope=…` and then proxied to the backend.
pub struct Protected<'a> {
    /// The location prefix (`/files/`).
    pub prefix: &'a str,
    /// The resource server identifier.
    pub resource: &'a str,
    /// The scope the proxy asks for (none: only the route rules decide).
    pub scope: Option<&'a str>,
}

/// An nginx owned by the test.
pub struct Nginx {
    wrapper: Child,
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Nginx {
    /// Starts nginx in front of `backend` (`127.0.0.1:PORT`), asking `gateway`
    /// (base URL) about every request to the `protected` locations.
    pub fn start(gateway: &url::Url, backend: &str, protected: &[Protected<'_>]) -> Nginx {
        let binary = nginx_binary().unwrap_or_else(|| {
            panic!("nginx is not installed: run `scripts/setup-system test` (Debian package nginx-light or nginx)")
        });
        let dir = std::env::temp_dir().join(format!(
            "portcullis-nginx-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_tcp_port();
        let gw = format!(
            "{}:{}",
            gateway.host_str().unwrap(),
            gateway.port_or_known_default().unwrap()
        );
        let d = dir.display();
        let mut locations = String::new();
        for (i, p) in protected.iter().enumerate() {
            let mut query = format!("resource={}", enc(p.resource));
            if let Some(s) = p.scope {
                query.push_str(&format!("&scope={}", enc(s)));
            }
            locations.push_str(&format!(
                r#"
    location = /_auth{i} {{
      internal;
      proxy_pass http://{gw}/forward-auth?{query};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location {prefix} {{
      auth_request /_auth{i};
      auth_request_set $p_sub $upstream_http_x_portcullis_sub;
      auth_request_set $p_tenant $upstream_http_x_portcullis_tenant;
      auth_request_set $p_scopes $upstream_http_x_portcullis_scopes;
      auth_request_set $p_reason $upstream_http_x_portcullis_reason;
      add_header X-Portcullis-Reason $p_reason always;
      proxy_set_header X-Portcullis-Sub $p_sub;
      proxy_set_header X-Portcullis-Tenant $p_tenant;
      proxy_set_header X-Portcullis-Scopes $p_scopes;
      proxy_set_header Authorization "";
      proxy_pass http://{backend};
    }}
"#,
                prefix = p.prefix,
            ));
        }
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let test = Command::new(&binary)
            .arg("-t")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .output()
            .unwrap();
        assert!(
            test.status.success(),
            "nginx refused the test configuration: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let mut wrapper = Command::new("sh")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    binary.parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .arg("-c")
            .arg(WRAPPER)
            .arg("nginx-wrapper")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for nginx");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let server = Nginx { wrapper, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start on port {port}: {}",
                std::fs::read_to_string(server.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The URL of `path` through nginx.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
