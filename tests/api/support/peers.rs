//! Spawning the independent peer implementations (Node.js programs under
//! `tests/peers`): the upstream OpenID Provider (`oidc-provider`) and the
//! relying parties (`openid-client`).
//!
//! Each peer prints `READY <url>` on stdout when it accepts connections; the
//! child is killed when its handle is dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;

/// How long one start of a peer may take to print its READY line (cold
/// `node` start and RSA key generation included; seconds on an idle machine).
const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// How many times a peer that printed nothing in [`READY_TIMEOUT`] is killed
/// and started again before the test fails.
const START_ATTEMPTS: u32 = 3;

/// The password of every default account of the upstream IdP peer.
pub const IDP_PASSWORD: &str = "test-password";

/// The directory holding the peers and their `node_modules`:
/// `PORTCULLIS_TEST_PEERS_DIR`, else the repository's `tests/peers`.
pub fn peers_dir() -> PathBuf {
    match std::env::var_os("PORTCULLIS_TEST_PEERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers"),
    }
}

/// The `node` binary: `PORTCULLIS_TEST_NODE`, else `node` on the PATH.
pub fn node_bin() -> String {
    std::env::var("PORTCULLIS_TEST_NODE").unwrap_or_else(|_| "node".to_owned())
}

/// A running peer process.
pub struct Peer {
    /// Its public base URL, as printed on its READY line.
    pub url: Url,
    name: String,
    _child: Child,
    /// The peer exits when this pipe closes, even if the test process is
    /// killed before `kill_on_drop` can act.
    _lifeline: Option<tokio::process::ChildStdin>,
}

impl Peer {
    /// The peer's name in log lines.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Starts `node <script> <args>` in the peers directory and waits for its
/// READY line. The peer's stderr is forwarded to the test output, prefixed
/// with `name`. A start that prints nothing within [`READY_TIMEOUT`] is
/// reported (the process's state and CPU time, so a stall can be told from
/// slowness), killed and tried again, up to [`START_ATTEMPTS`] times.
pub async fn spawn_node(name: &str, script: &str, args: &[String]) -> Peer {
    let dir = peers_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test does)",
        dir.display()
    );
    let mut stalls = Vec::new();
    for attempt in 1..=START_ATTEMPTS {
        match start_node(name, &dir, script, args).await {
            Ok(peer) => return peer,
            Err(stall) => {
                eprintln!("[{name}] start {attempt} of {START_ATTEMPTS}: {stall}");
                stalls.push(stall);
            }
        }
    }
    panic!(
        "peer {name} printed no READY line within {READY_TIMEOUT:?} in {START_ATTEMPTS} starts: {}",
        stalls.join("; ")
    );
}

/// One start of a peer: the running peer, or what the process was doing
/// when it had printed nothing for [`READY_TIMEOUT`] (it is then killed).
async fn start_node(name: &str, dir: &std::path::Path, script: &str, args: &[String]) -> Result<Peer, String> {
    let started = std::time::Instant::now();
    let mut child = Command::new(node_bin())
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .env("PORTCULLIS_PEER_LIFELINE", "stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node for peer {name}: {e}"));

    let lifeline = child.stdin.take();
    let stderr = child.stderr.take().unwrap();
    let tag = name.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
        }
    });

    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("READY ") {
                return Some(url.trim().to_owned());
            }
            eprintln!("[{name}] {line}");
        }
        None
    })
    .await;
    let ready = match ready {
        Ok(Some(url)) => url,
        Ok(None) => panic!("peer {name} exited before it was ready: {:?}", child.wait().await),
        Err(_) => {
            let state = child.id().map_or_else(|| "no pid".to_owned(), process_state);
            let _ = child.kill().await;
            return Err(format!("nothing after {:?} ({state})", started.elapsed()));
        }
    };
    let took = started.elapsed();
    if took > Duration::from_secs(5) {
        eprintln!("[{name}] ready after {took:?}");
    }

    // Keep draining stdout so the child never blocks on a full pipe.
    let tag = name.to_owned();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
        }
    });

    Ok(Peer {
        url: Url::parse(&ready).unwrap_or_else(|e| panic!("peer {name} READY url {ready:?}: {e}")),
        name: name.to_owned(),
        _child: child,
        _lifeline: lifeline,
    })
}

/// A process's scheduler state, CPU time and wait channel from `/proc`, for
/// the report of a peer that did not start.
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is the first,
    // utime and stime the 12th and 13th (clock ticks).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    match (fields.first(), fields.get(11), fields.get(12)) {
        (Some(state), Some(utime), Some(stime)) => {
            format!("state {state}, user {utime} ticks, system {stime} ticks, waiting in {wchan:?}")
        }
        _ => format!("pid {pid}: /proc unreadable"),
    }
}

/// A client registered at the upstream IdP (the gateway, for one connection).
#[derive(Debug, Clone)]
pub struct IdpClient {
    /// OAuth client id at the IdP.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Allowed redirect URIs (the gateway's `/oidc/{tenant}/{conn}/callback`).
    pub redirect_uris: Vec<Url>,
}

/// The upstream OpenID Provider peer (`oidc-provider`), with the default
/// accounts `alice`, `bob` (`@acme.test`) and `carol` (`@globex.test`), all
/// with password [`IDP_PASSWORD`].
pub struct UpstreamIdp {
    /// The process; its URL is the issuer.
    pub peer: Peer,
}

/// Counters kept by the upstream IdP peer (`GET /_test/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct IdpStats {
    /// Requests to the authorization endpoint (not counting resumes).
    pub authorize: u64,
    /// Successful password logins.
    pub logins: u64,
    /// Rejected password logins.
    pub failed_logins: u64,
    /// Requests to the token endpoint.
    pub token: u64,
    /// Requests to the userinfo endpoint.
    pub userinfo: u64,
    /// Successful refresh-token grants.
    #[serde(default)]
    pub refresh: u64,
}

impl UpstreamIdp {
    /// Starts the IdP with `clients` registered. Its host name is `localhost`
    /// (the gateway is `127.0.0.1`), so the two are different sites.
    pub async fn spawn(clients: &[IdpClient]) -> Self {
        Self::spawn_on(0, clients).await
    }

    /// Like [`UpstreamIdp::spawn`] on a given port (0: any), for callers
    /// that must know the issuer before the IdP runs.
    pub async fn spawn_on(port: u16, clients: &[IdpClient]) -> Self {
        Self::spawn_with(port, clients, &[]).await
    }

    /// Like [`UpstreamIdp::spawn_on`] with extra command-line flags (e.g.
    /// `--ignore-reauth`).
    pub async fn spawn_with(port: u16, clients: &[IdpClient], extra: &[&str]) -> Self {
        let mut args = vec!["--port".to_owned(), port.to_string()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        for c in clients {
            args.push("--client".to_owned());
            args.push(
                json!({
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "redirect_uris": c.redirect_uris.iter().map(Url::as_str).collect::<Vec<_>>(),
                })
                .to_string(),
            );
        }
        Self {
            peer: spawn_node("upstream-idp", "oidc/upstream-idp.mjs", &args).await,
        }
    }

    /// The issuer identifier (no trailing slash), as the IdP itself spells it.
    pub fn issuer(&self) -> String {
        self.peer.url.as_str().trim_end_matches('/').to_owned()
    }

    /// Whether `url` is served by this IdP (same origin).
    pub fn serves(&self, url: &Url) -> bool {
        url.origin() == self.peer.url.origin()
    }

    /// Removes `account` at the IdP, as an admin would: its refresh tokens
    /// stop working.
    pub async fn remove_account(&self, account: &str) {
        let url = self
            .peer
            .url
            .join(&format!("/_test/remove-account?id={account}"))
            .unwrap();
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// Makes the IdP's next token request fail with `status`.
    pub async fn fail_next_token(&self, status: u16) {
        let url = self
            .peer
            .url
            .join(&format!("/_test/fail-token?status={status}"))
            .unwrap();
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// The IdP's request counters.
    pub async fn stats(&self) -> IdpStats {
        reqwest::get(self.peer.url.join("/_test/stats").unwrap())
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// An application (relying party) peer built on `openid-client`.
pub struct RelyingParty {
    /// The process; `{url}/callback` is its redirect URI.
    pub peer: Peer,
    http: reqwest::Client,
}

/// A JSON answer from the relying party peer.
#[derive(Debug, Clone)]
pub struct RpResponse {
    /// HTTP status the RP answered with (200, or 400 with an `error`).
    pub status: reqwest::StatusCode,
    /// The JSON body.
    pub body: Value,
}

impl RpResponse {
    /// The `error` member, if any.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

impl RelyingParty {
    /// Starts an RP whose issuer is `issuer` (the gateway). Give it its
    /// client credentials with [`RelyingParty::configure`] once registered.
    pub async fn spawn(name: &str, issuer: &Url) -> Self {
        let issuer = issuer.as_str().trim_end_matches('/').to_owned();
        Self {
            peer: spawn_node(name, "oidc/relying-party.mjs", &["--issuer".to_owned(), issuer]).await,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// The redirect URI to register at the gateway.
    pub fn redirect_uri(&self) -> Url {
        self.peer.url.join("/callback").unwrap()
    }

    /// Sets the client credentials (`auth_method`: `basic`, `post`, `none`)
    /// and the scope its sign-ins ask for.
    pub async fn configure(&self, client_id: &str, client_secret: &str, auth_method: &str, scope: &str) {
        let r = self
            .http
            .post(self.peer.url.join("/configure").unwrap())
            .json(&json!({
                "client_id": client_id,
                "client_secret": client_secret,
                "auth_method": auth_method,
                "scope": scope,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "configure RP {}", self.peer.name());
    }

    /// The URL that starts a sign-in; `params` go to the gateway's
    /// `/authorize` unchanged (tenant, connection, login_hint, prompt, ...).
    pub fn login_url(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.peer.url.join("/login").unwrap();
        url.query_pairs_mut().extend_pairs(params);
        url
    }

    /// Whether `url` is this RP's redirect URI (path `/callback`).
    pub fn is_callback(&self, url: &Url) -> bool {
        url.origin() == self.peer.url.origin() && url.path() == "/callback"
    }

    async fn post(&self, path: &str, body: Value) -> RpResponse {
        let r = self
            .http
            .post(self.peer.url.join(path).unwrap())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        RpResponse {
            status,
            body: r.json().await.unwrap(),
        }
    }

    /// Refresh grant through openid-client.
    pub async fn refresh(&self, refresh_token: &str) -> RpResponse {
        self.post("/refresh", json!({ "refresh_token": refresh_token })).await
    }

    /// Userinfo request through openid-client (checks `sub` when given).
    pub async fn userinfo(&self, access_token: &str, sub: Option<&str>) -> RpResponse {
        self.post("/userinfo", json!({ "access_token": access_token, "sub": sub }))
            .await
    }

    /// RFC 7009 revocation through openid-client.
    pub async fn revoke(&self, token: &str, hint: Option<&str>) -> RpResponse {
        self.post("/revoke", json!({ "token": token, "token_type_hint": hint }))
            .await
    }

    /// RFC 7662 introspection through openid-client.
    pub async fn introspect(&self, token: &str) -> RpResponse {
        self.post("/introspect", json!({ "token": token })).await
    }

    /// The URL that sends the browser to the gateway's end_session endpoint.
    pub fn logout_url(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.peer.url.join("/logout").unwrap();
        url.query_pairs_mut().extend_pairs(params);
        url
    }
}

/// The upstream SAML IdP peer (`samlify`), same accounts and password as
/// [`UpstreamIdp`]. It runs on `localhost` (the gateway on `127.0.0.1`), so
/// its POST to the gateway's ACS is cross-site.
pub struct SamlIdp {
    /// The process; `{url}/metadata` is its metadata and entity ID.
    pub peer: Peer,
}

/// Counters kept by the SAML IdP peer (`GET /_test/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct SamlIdpStats {
    /// AuthnRequests received.
    pub authn_requests: u64,
    /// Successful password logins.
    pub logins: u64,
    /// Rejected password logins.
    pub failed_logins: u64,
    /// Responses issued.
    pub responses: u64,
}

impl SamlIdp {
    /// Starts the IdP.
    pub async fn spawn() -> Self {
        Self {
            peer: spawn_node("saml-idp", "saml/samlify-idp.mjs", &[]).await,
        }
    }

    /// Its metadata URL (also its entity ID).
    pub fn metadata_url(&self) -> Url {
        self.peer.url.join("/metadata").unwrap()
    }

    /// Its metadata document.
    pub async fn metadata_xml(&self) -> String {
        let r = reqwest::get(self.metadata_url()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Registers a service provider (the gateway's SP metadata); returns its
    /// entity ID as the IdP read it.
    pub async fn register_sp(&self, metadata_xml: &str) -> String {
        let r = reqwest::Client::new()
            .post(self.peer.url.join("/_test/sp").unwrap())
            .json(&json!({ "metadata_xml": metadata_xml }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "SP metadata refused by the SAML IdP: {body}");
        body["entity_id"].as_str().unwrap().to_owned()
    }

    /// Whether `url` is served by this IdP.
    pub fn serves(&self, url: &Url) -> bool {
        url.origin() == self.peer.url.origin()
    }

    /// The IdP's counters.
    pub async fn stats(&self) -> SamlIdpStats {
        reqwest::get(self.peer.url.join("/_test/stats").unwrap())
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
