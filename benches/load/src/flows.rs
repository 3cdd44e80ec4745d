//! The world the generator sets up through the admin API, and the HTTP
//! flows of each scenario, each checking every answer it gets.

use crate::balance::{Gateway, ReplicaReport};
use crate::engine::{self, Bounds, Mode, Stage, Watched};
use crate::saml_idp::{saml_id, ResponseSpec, SamlIdp};
use crate::upstream::Upstream;
use crate::{Latency, Options, RedisCommand, Scenario, ScenarioReport, StageReport};
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// How many first halves run at once ahead of an open-loop window.
const PREPARE_CONCURRENCY: usize = 16;

/// An app registered at the gateway.
#[derive(Clone)]
struct App {
    id: String,
    secret: String,
}

impl App {
    fn basic(&self) -> String {
        let raw = format!("{}:{}", self.id, self.secret);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// A SAML connection as the admin API describes it.
struct SamlConn {
    id: String,
    acs_url: String,
    /// `acs_url` parsed once.
    acs: Url,
    sp_entity_id: String,
}

/// Tokens from a sign-in.
#[derive(Clone)]
struct Tokens {
    access: String,
    refresh: Option<String>,
}

/// Everything the scenarios share.
pub struct World {
    inner: Arc<Inner>,
    /// The `alg` of the ID tokens the gateway issued during setup.
    pub gateway_alg: Option<String>,
}

/// One tenant the sign-ins use, with its SAML connection (id `saml`) and
/// OIDC connection (id `oidc`).
struct Site {
    tenant: String,
    domain: String,
    saml: SamlConn,
}

struct Inner {
    /// The gateway, behind its replicas (`--replica`).
    http: Gateway,
    base: Url,
    /// The gateway's endpoints, joined to `base` once (a join parses the
    /// address again, host name included, on every request).
    at: Endpoints,
    /// The tenants sign-in *i* goes to `sites[i % len]` (never empty; the
    /// first also has the IdP-initiated connection).
    sites: Vec<Site>,
    redirect_uri: String,
    app: App,
    worker: App,
    api_scope: String,
    idp: SamlIdp,
    /// The size of the metadata the SAML connections were created with.
    idp_metadata_bytes: usize,
    /// The size of one signed SP-initiated Response (`--response-bytes`).
    saml_response_bytes: usize,
    saml_idp_init: SamlConn,
    upstream: Upstream,
    upstream_client_id: String,
    oidc_conn: String,
    users: usize,
    mode: Mode,
    pool: usize,
    /// `code-grant` in closed loop: codes minted per measured window.
    code_pool: usize,
    /// `code-grant`: how long minting ahead may run (90 % of the codes'
    /// lifetime less the window, so the first code outlives the window).
    mint_budget: Duration,
    max_in_flight: usize,
    /// The processes each window's CPU time is read from.
    watched: Watched,
    signers: usize,
    /// Sign-in results the token scenarios use (one refresh chain each).
    tokens: std::sync::OnceLock<Vec<tokio::sync::Mutex<Tokens>>>,
    /// The browser cookies (SSO session) of those sign-ins, by chain: the
    /// `code-grant` scenario mints codes through `/authorize` with them.
    sso: std::sync::OnceLock<Vec<(usize, String)>>,
    /// The measured window per scenario (the warm-up is shorter).
    duration: Duration,
    /// Sign-in scenarios run in rounds of at most this long (`--round`), so
    /// every pending login is answered well within the gateway's login TTL.
    round: Duration,
}

/// The endpoints the timed scenarios call, as absolute URLs.
struct Endpoints {
    authorize: Url,
    token: Url,
    userinfo: Url,
    introspect: Url,
    jwks: Url,
    discovery: Url,
}

impl Endpoints {
    fn of(base: &Url) -> Result<Self, String> {
        let at = |path: &str| base.join(path).map_err(|e| format!("{base} + {path}: {e}"));
        Ok(Self {
            authorize: at("/authorize")?,
            token: at("/token")?,
            userinfo: at("/userinfo")?,
            introspect: at("/introspect")?,
            jwks: at("/jwks")?,
            discovery: at("/.well-known/openid-configuration")?,
        })
    }
}

fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The redirect of a 3xx answer, resolved against `base`.
fn location(resp: &reqwest::Response, base: &Url, what: &str) -> Result<Url, String> {
    if !resp.status().is_redirection() {
        return Err(format!("{what}: HTTP {} (expected a redirect)", resp.status()));
    }
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{what}: redirect without Location"))?;
    base.join(loc).map_err(|e| format!("{what}: bad Location {loc:?}: {e}"))
}

/// The `name=value` pairs of the answer's cookies, as a `Cookie` header.
fn cookies(resp: &reqwest::Response) -> String {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `/authorize` left for the rest of a sign-in.
struct Pending {
    user: usize,
    cookie: String,
    state: String,
    verifier: String,
    /// SAML: the AuthnRequest ID; OIDC: the nonce.
    request_id: String,
    /// SAML: the RelayState.
    relay_state: Option<String>,
    /// OIDC: the state the gateway sent upstream.
    upstream_state: Option<String>,
}

/// A pending login with the IdP's answer made ahead of the timed stage.
struct Answered {
    pending: Pending,
    /// SAML: the ACS form body; OIDC: the upstream code.
    answer: String,
}

impl World {
    /// Sets up a tenant of its own (random id), the IdPs, connections and
    /// apps, and signs in a few users for the token scenarios.
    pub async fn setup(opts: &Options) -> Result<World, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        let base = opts.url.clone();
        let http = Gateway::new(client, base.clone(), &opts.replicas);
        let run = random_hex(8);
        let tenant = format!("load-{run}");
        let domain = format!("{run}.load.test");
        let redirect_uri = "http://127.0.0.1:9/cb".to_owned();
        let admin = Admin {
            http: &http,
            base: &base,
            token: &opts.admin_token,
        };
        admin
            .create(
                "/admin/v1/tenants",
                json!({ "id": tenant, "name": format!("Load {run}"), "domains": [domain] }),
            )
            .await?;
        let api = format!("https://api.load.test/{run}");
        let api_scope = "load:read".to_owned();
        admin
            .create(
                "/admin/v1/resource-servers",
                json!({ "identifier": api, "name": format!("Load API {run}"),
                        "scopes": [{ "name": api_scope, "description": "Load test scope" }] }),
            )
            .await?;
        let app_id = format!("load-app-{run}");
        let created = admin
            .create(
                "/admin/v1/clients",
                json!({ "client_id": app_id, "name": "Load app", "redirect_uris": [redirect_uri], "public": false }),
            )
            .await?;
        let app = App {
            id: app_id,
            secret: str_field(&created, "client_secret")?,
        };
        let worker_id = format!("load-worker-{run}");
        let created = admin
            .create(
                "/admin/v1/clients",
                json!({ "client_id": worker_id, "name": "Load worker", "redirect_uris": [redirect_uri],
                        "public": false, "allowed_scopes": [api_scope], "default_resource": api,
                        "grant_types": ["client_credentials"] }),
            )
            .await?;
        let worker = App {
            id: worker_id,
            secret: str_field(&created, "client_secret")?,
        };
        let mut idp = SamlIdp::generate(&format!("https://idp.load.test/{run}"))
            .and_then(|idp| idp.with_other_certificates(usize::from(opts.idp_certificates.max(1)) - 1))
            .map_err(|e| e.to_string())?;
        // The generator never follows the SSO redirect: it reads the
        // AuthnRequest from it. Loopback, so private networks must be allowed.
        let metadata = idp.metadata("http://127.0.0.1:9/sso");
        let saml = admin
            .saml_connection(
                &tenant,
                json!({ "id": "saml", "kind": "saml", "metadata_xml": metadata }),
            )
            .await?;
        let saml_idp_init = admin
            .saml_connection(
                &tenant,
                json!({ "id": "saml-idp", "kind": "saml", "metadata_xml": metadata,
                        "allow_idp_initiated": true, "default_client_id": app.id, "redirect_uri": redirect_uri }),
            )
            .await?;
        let upstream = Upstream::start().await?;
        let upstream_client_id = format!("gateway-{run}");
        admin
            .create(
                &format!("/admin/v1/tenants/{tenant}/connections"),
                json!({ "id": "oidc", "kind": "oidc", "issuer": upstream.issuer(),
                        "client_id": upstream_client_id, "client_secret": random_hex(32),
                        "scopes": ["openid", "email", "profile"] }),
            )
            .await?;
        let mut sites = vec![Site { tenant, domain, saml }];
        // `--tenants N`: N - 1 more tenants, each with its own SAML and OIDC
        // connection to the same IdPs, created 16 at a time.
        let more: Vec<usize> = (1..opts.tenants.max(1)).collect();
        for batch in more.chunks(16) {
            let mut set = Vec::new();
            for &k in batch {
                let (http, base, token) = (http.clone(), base.clone(), opts.admin_token.clone());
                let (run, metadata, issuer) = (run.clone(), metadata.clone(), upstream.issuer().to_owned());
                let client_id = upstream_client_id.clone();
                set.push(async move {
                    let admin = Admin {
                        http: &http,
                        base: &base,
                        token: &token,
                    };
                    let tenant = format!("load-{run}-{k}");
                    let domain = format!("t{k}.{run}.load.test");
                    admin
                        .create(
                            "/admin/v1/tenants",
                            json!({ "id": tenant, "name": format!("Load {run} {k}"), "domains": [domain] }),
                        )
                        .await?;
                    let saml = admin
                        .saml_connection(
                            &tenant,
                            json!({ "id": "saml", "kind": "saml", "metadata_xml": metadata }),
                        )
                        .await?;
                    admin
                        .create(
                            &format!("/admin/v1/tenants/{tenant}/connections"),
                            json!({ "id": "oidc", "kind": "oidc", "issuer": issuer,
                                    "client_id": client_id, "client_secret": random_hex(32),
                                    "scopes": ["openid", "email", "profile"] }),
                        )
                        .await?;
                    Ok::<Site, String>(Site { tenant, domain, saml })
                });
            }
            for site in futures_join(set).await {
                sites.push(site.map_err(|e| format!("setup of --tenants: {e}"))?);
            }
        }
        let mut saml_response_bytes = probe_response(&idp, &sites[0])?;
        if let Some(bytes) = opts.response_bytes {
            idp.pad_to(usize::try_from(bytes).map_err(|e| e.to_string())?, saml_response_bytes);
            saml_response_bytes = probe_response(&idp, &sites[0])?;
        }
        let signers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let at = Endpoints::of(&base)?;
        let inner = Arc::new(Inner {
            http,
            base,
            at,
            sites,
            redirect_uri,
            app,
            worker,
            api_scope,
            idp_metadata_bytes: metadata.len(),
            saml_response_bytes,
            idp,
            saml_idp_init,
            upstream,
            upstream_client_id,
            oidc_conn: "oidc".into(),
            users: opts.users.max(1),
            mode: opts.mode(),
            pool: opts
                .pool
                .unwrap_or((2000.0 * opts.duration.max(0.0)).ceil() as usize)
                .max(1),
            code_pool: opts
                .code_pool
                .unwrap_or((6000.0 * opts.duration.max(0.0)).ceil() as usize)
                .max(1),
            mint_budget: Duration::from_secs_f64(((opts.code_ttl as f64 - opts.duration.max(0.0)) * 0.9).max(0.5)),
            max_in_flight: opts.max_in_flight.max(1),
            watched: opts.watched(),
            signers,
            tokens: std::sync::OnceLock::new(),
            sso: std::sync::OnceLock::new(),
            duration: opts.window(),
            round: Duration::from_secs_f64(if opts.round.is_finite() {
                opts.round.clamp(0.1, 300.0)
            } else {
                60.0
            }),
        });
        // Refresh chains: enough that concurrent refreshes rarely share one.
        let chains = match opts.mode() {
            Mode::Closed(c) => (2 * c).max(16),
            Mode::Open(r) => ((r / 20.0) as usize).clamp(64, 4096),
        };
        let mut tokens = Vec::with_capacity(chains);
        let mut sso = Vec::with_capacity(chains);
        let mut gateway_alg = None;
        for batch in (0..chains).collect::<Vec<_>>().chunks(16) {
            let mut set = Vec::new();
            for &i in batch {
                let w = inner.clone();
                set.push(async move { w.setup_signin(i).await });
            }
            for (&i, r) in batch.iter().zip(futures_join(set).await) {
                let (t, alg, cookie) = r.map_err(|e| format!("setup sign-in: {e}"))?;
                gateway_alg = gateway_alg.or(alg);
                tokens.push(tokio::sync::Mutex::new(t));
                sso.push((i, cookie));
            }
        }
        if inner.tokens.set(tokens).is_err() || inner.sso.set(sso).is_err() {
            return Err("setup: tokens set twice".into());
        }
        Ok(World { inner, gateway_alg })
    }

    /// Requests sent to each replica so far (empty without `--replica`).
    pub fn replicas(&self) -> Vec<ReplicaReport> {
        self.inner.http.replicas()
    }

    /// With sign-ins spread over several tenants (`--tenants`), one
    /// untimed whole sign-in per tenant over SAML and one over OIDC,
    /// `--concurrency` at a time (at most 16), so that the windows measure
    /// what a long-running replica spends: a connection's first use on a
    /// replica builds its connector (its keys and certificates parsed),
    /// which a warm-up of a few seconds does not reach for every tenant.
    /// Answers how many sign-ins it made.
    pub async fn warm_tenants(&self, saml: bool, oidc: bool, concurrency: usize) -> Result<usize, String> {
        let n = self.inner.sites.len();
        if n <= 1 {
            return Ok(0);
        }
        let mut done = 0;
        for protocol in [saml.then_some(true), oidc.then_some(false)].into_iter().flatten() {
            for batch in (0..n).collect::<Vec<_>>().chunks(concurrency.clamp(1, 16)) {
                let set: Vec<_> = batch
                    .iter()
                    .map(|&i| {
                        let w = self.inner.clone();
                        async move {
                            let pending = w.authorize(i, protocol).await?;
                            let answered = w.answer(pending, protocol)?;
                            w.finish_signin(&answered, protocol).await
                        }
                    })
                    .collect();
                for res in futures_join(set).await {
                    res.map_err(|e| format!("warming the tenants: {e}"))?;
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// Charges the scenarios' windows to `watched` from now on (the
    /// gateway was restarted after the setup: `--pause-after-setup`).
    pub fn watch(&mut self, watched: Watched) -> Result<(), String> {
        let inner = Arc::get_mut(&mut self.inner).ok_or("the setup's state is still shared")?;
        inner.watched = watched;
        Ok(())
    }

    /// The tenants the sign-ins go to, in order.
    pub fn tenants(&self) -> Vec<String> {
        self.inner.sites.iter().map(|s| s.tenant.clone()).collect()
    }

    /// The size of the IdP metadata each SAML connection was created with.
    pub fn idp_metadata_bytes(&self) -> usize {
        self.inner.idp_metadata_bytes
    }

    /// The size of one signed SP-initiated Response, XML bytes before the
    /// binding's base64 (`--response-bytes` pads it).
    pub fn saml_response_bytes(&self) -> usize {
        self.inner.saml_response_bytes
    }

    /// One whole sign-in of user `user`, untimed, calling `mark` with each
    /// stage's name right after that stage's request was answered (SAML:
    /// `authorize`, `acs`, `continue`, `token`; OIDC: `authorize`,
    /// `callback`, `token`; then `refresh`, one rotation of the refresh
    /// token just issued), so a caller can attribute what happened in
    /// between (the store traffic test counts Redis commands per stage).
    pub async fn sign_in_stepwise(
        &self,
        user: usize,
        saml: bool,
        mark: &mut (dyn FnMut(&'static str) + Send),
    ) -> Result<(), String> {
        let w = &self.inner;
        let p = w.authorize(user, saml).await?;
        mark("authorize");
        let a = w.answer(p, saml)?;
        let back = if saml {
            let next = w.post_acs(&w.site(a.pending.user).saml, a.answer.clone()).await?;
            mark("acs");
            w.http.get(next).header(COOKIE, &a.pending.cookie).send().await
        } else {
            let mut cb = w
                .base
                .join(&format!(
                    "/oidc/{}/{}/callback",
                    w.site(a.pending.user).tenant,
                    w.oidc_conn
                ))
                .map_err(|e| e.to_string())?;
            cb.query_pairs_mut()
                .append_pair("code", &a.answer)
                .append_pair("state", a.pending.upstream_state.as_deref().unwrap_or_default());
            w.http.get(cb).header(COOKIE, &a.pending.cookie).send().await
        }
        .map_err(|e| format!("back to the gateway: {e}"))?;
        let what = if saml { "continue" } else { "callback" };
        let to_app = location(&back, &w.base, what)?;
        mark(what);
        if query(&to_app, "state").as_deref() != Some(a.pending.state.as_str()) {
            return Err(format!("{what}: state not returned to the app: {to_app}"));
        }
        let code = query(&to_app, "code").ok_or_else(|| format!("{what}: no code in {to_app}"))?;
        let (t, _) = w.redeem(&code, &a.pending.verifier).await?;
        mark("token");
        let Some(refresh) = t.refresh else {
            return Err("token (code): no refresh_token for offline_access".into());
        };
        // One rotation of the new refresh token (the `refresh` stage).
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh)
            .finish();
        let v = w.token(&w.app, body, "token (refresh)").await?;
        str_field(&v, "refresh_token").map_err(|_| "token (refresh): not rotated".to_owned())?;
        mark("refresh");
        Ok(())
    }

    /// Runs `scenario` for `window` (`record` only labels the warm-up).
    pub async fn scenario(&self, scenario: Scenario, window: Duration, record: bool) -> ScenarioReport {
        let w = &self.inner;
        let mut r = match scenario {
            Scenario::SamlSignin => self.signin(window, true).await,
            Scenario::OidcSignin => self.signin(window, false).await,
            Scenario::SamlAcs => self.saml_acs(window).await,
            Scenario::CodeGrant => self.code_grant(window).await,
            simple => {
                let w2 = self.inner.clone();
                let stage = engine::run(
                    w.mode,
                    Bounds {
                        limit: None,
                        duration: Some(window),
                        max_in_flight: w.max_in_flight,
                    },
                    false,
                    &w.watched,
                    move |i| {
                        let w = w2.clone();
                        async move { w.simple(simple, i).await }
                    },
                )
                .await;
                let mut r = report(scenario, w.mode, 0.0);
                r.stages.push(stage_report(simple.name(), &stage));
                absorb(&mut r, &stage);
                r.latency_ms = Latency::of(&stage.hist);
                r
            }
        };
        r.scenario = scenario;
        if !record {
            r.stages.clear();
        }
        finish(&mut r, &w.watched);
        r
    }

    /// An open-loop sign-in scenario: at `rate` per second each, the
    /// gateway serves first halves (`/authorize`) and second halves (the
    /// IdP's answer onwards) at once, `--rate` being whole sign-ins per
    /// second.
    ///
    /// The IdP's answers are made ahead of the window, as the closed loop
    /// makes them between its rounds: `n` sign-ins' first halves are run
    /// and answered (signed) untimed, while the gateway has nothing else to
    /// do; in the window, sign-in *i*'s second half is due at
    /// `start + think + i / rate`, and a fresh sign-in's `/authorize` at
    /// `start + i / rate` (its answer is never made: the pending login it
    /// leaves expires). So the generator signs nothing while the gateway is
    /// measured, and the IdP's CPU, which in a deployment is the IdP's
    /// machine's, never competes with Redis on the generator's CPUs. A whole
    /// sign-in's latency is the *i*-th `/authorize`'s plus the *i*-th second
    /// half's, both measured in the same window at the same rate: two
    /// sign-ins' halves, which are distributed as one person's two halves
    /// are, since the person's time at the IdP (`think`) already makes the
    /// two waits independent.
    ///
    /// A window longer than `--round` (60 s) runs in rounds of at most that, each
    /// prepared just before it, so every prepared login is answered well
    /// within the gateway's login TTL and the answers held stay bounded; the
    /// scenario's CPU and commands are the rounds' windows' own.
    async fn signin_open(&self, window: Duration, saml: bool, rate: f64) -> ScenarioReport {
        let w = &self.inner;
        let scenario = if saml {
            Scenario::SamlSignin
        } else {
            Scenario::OidcSignin
        };
        let mut r = report(scenario, w.mode, 0.0);
        // The person's time at the IdP.
        let think = Duration::from_secs_f64((window.as_secs_f64() / 10.0).clamp(0.2, 1.0));
        let mut hist = engine::histogram();
        let mut left = window;
        // Sign-in indices used so far (each picks its user and tenant).
        let mut offset = 0usize;
        let mut first_start: Option<f64> = None;
        while left > Duration::from_millis(50) {
            let round = left.min(w.round);
            left = left.saturating_sub(round);
            let n = ((rate * round.as_secs_f64()).ceil() as usize).max(1);
            let bounds = |limit| Bounds {
                limit: Some(limit),
                duration: None,
                max_in_flight: w.max_in_flight,
            };
            // Ahead of the round: the second halves' first halves, and the
            // IdP's answers to them, signed on every CPU the generator may use.
            let prepared = Instant::now();
            let (wp, base) = (w.clone(), offset + n);
            let ahead = engine::run(
                Mode::Closed(PREPARE_CONCURRENCY),
                bounds(n),
                true,
                &Watched::default(),
                move |i| {
                    let w = wp.clone();
                    // Indices past the round's fresh sign-ins: other users.
                    async move { w.authorize(base + i, saml).await }
                },
            )
            .await;
            let mut failed = ahead.samples;
            let (answered, errors) = w.answer_all(ahead.outputs, saml);
            r.prepare_s += prepared.elapsed().as_secs_f64();
            // A sign-in that could not be prepared is an error of the
            // scenario: the round would run fewer second halves than first.
            let unprepared = ahead.errors + ahead.shed + errors.len() as u64;
            if unprepared > 0 {
                r.errors += unprepared;
                failed.extend(errors);
                r.error_samples = failed.into_iter().take(5).collect();
                return r;
            }
            let answered: Arc<Vec<(u64, Answered)>> = Arc::new(answered);
            let measured = w.watched.open().await;
            first_start = first_start.or(engine::monotonic_s());
            let t0 = Instant::now();
            let (wa, fresh) = (w.clone(), offset);
            let unwatched = Watched::default();
            let first = engine::run(
                Mode::Open(rate),
                Bounds {
                    duration: Some(round),
                    ..bounds(n)
                },
                true,
                &unwatched,
                move |i| {
                    let w = wa.clone();
                    async move { w.authorize(fresh + i, saml).await.map(|_pending| ()) }
                },
            );
            let (wb, items) = (w.clone(), answered.clone());
            let count = answered.len();
            let second = async move {
                tokio::time::sleep(think).await;
                engine::run(Mode::Open(rate), bounds(count), true, &Watched::default(), move |i| {
                    let (w, items) = (wb.clone(), items.clone());
                    async move {
                        let (_, item) = items.get(i).ok_or("no such prepared sign-in")?;
                        w.finish_signin(item, saml).await
                    }
                })
                .await
            };
            let (a, b) = tokio::join!(first, second);
            r.elapsed_s += t0.elapsed().as_secs_f64();
            let engine::Used {
                cpu: used,
                commands,
                gateway_tails,
            } = measured.close().await;
            r.stages.push(stage_report("authorize", &a));
            let mut second = stage_report(if saml { "acs+continue+token" } else { "callback+token" }, &b);
            // The halves overlap in one window: the gateway's probes over it
            // go with the half that carries the tail.
            second.gateway_tails = gateway_tails;
            r.stages.push(second);
            add_outcomes(&mut r, &a);
            add_outcomes(&mut r, &b);
            add_used(&mut r, &used, commands.as_ref());
            let firsts: std::collections::HashMap<usize, u64> = a.outputs.iter().map(|(i, (), m)| (*i, *m)).collect();
            for (i, (), micros) in &b.outputs {
                if let Some(first) = firsts.get(i) {
                    let _ignored_out_of_range = hist.record((first + micros).max(1));
                }
            }
            offset += 2 * n;
        }
        // The rounds overlap their halves: the window is the scenario's,
        // around every round (with a longer window, the preparations between
        // rounds fall inside it).
        r.monotonic_window_s = first_start.zip(engine::monotonic_s()).map(|(a, b)| [a, b]);
        r.ok = hist.len();
        r.latency_ms = Latency::of(&hist);
        r
    }

    /// A sign-in scenario in rounds: `/authorize` timed, the IdP's answers
    /// made untimed, then the rest of each sign-in timed. Open loop, the
    /// halves overlap instead ([`Self::signin_open`]).
    async fn signin(&self, window: Duration, saml: bool) -> ScenarioReport {
        let w = &self.inner;
        if let Mode::Open(rate) = w.mode {
            return self.signin_open(window, saml, rate).await;
        }
        let scenario = if saml {
            Scenario::SamlSignin
        } else {
            Scenario::OidcSignin
        };
        let mut r = report(scenario, w.mode, 0.0);
        let mut hist = engine::histogram();
        let mut left = window;
        let mut offset = 0usize;
        // How much longer the second half of the sign-ins took than their
        // `/authorize` in the last round. Closed loop, `/authorize` alone
        // runs much faster than the rest, so its stage gets the share of the
        // window that makes both stages together last about `window`
        // (the first round guesses, with a short stage). Open loop, both
        // stages take count / rate.
        let mut ratio: Option<f64> = match w.mode {
            Mode::Open(_) => Some(1.0),
            Mode::Closed(_) => None,
        };
        while left > Duration::from_millis(50) {
            let round = match ratio {
                Some(k) => left.min(w.round).div_f64(1.0 + k),
                None => left.min(w.round).mul_f64(0.1),
            }
            .max(Duration::from_millis(50));
            let wa = w.clone();
            let a = engine::run(
                w.mode,
                Bounds {
                    limit: None,
                    duration: Some(round),
                    max_in_flight: w.max_in_flight,
                },
                true,
                &w.watched,
                move |i| {
                    let w = wa.clone();
                    async move { w.authorize(offset + i, saml).await }
                },
            )
            .await;
            offset += a.outputs.len() + (a.errors + a.shed) as usize;
            r.stages.push(stage_report("authorize", &a));
            absorb(&mut r, &a);
            let t = Instant::now();
            let (answered, errors) = w.answer_all(a.outputs, saml);
            r.prepare_s += t.elapsed().as_secs_f64();
            r.errors += errors.len() as u64;
            for e in errors {
                if r.error_samples.len() < 5 {
                    r.error_samples.push(e);
                }
            }
            let answered: Arc<Vec<(u64, Answered)>> = Arc::new(answered);
            let wb = w.clone();
            let items = answered.clone();
            let b = engine::run(
                w.mode,
                Bounds {
                    limit: Some(answered.len()),
                    duration: None,
                    max_in_flight: w.max_in_flight,
                },
                true,
                &w.watched,
                move |i| {
                    let (w, items) = (wb.clone(), items.clone());
                    async move {
                        let (_, item) = items.get(i).ok_or("no such item")?;
                        w.finish_signin(item, saml).await
                    }
                },
            )
            .await;
            // A sign-in's latency is what the gateway took for both of its
            // halves; the time the person spends at the IdP is not counted.
            for (i, (), micros) in &b.outputs {
                if let Some((a_micros, _)) = answered.get(*i) {
                    let _ignored_out_of_range = hist.record((a_micros + micros).max(1));
                }
            }
            r.stages.push(stage_report(
                if saml { "acs+continue+token" } else { "callback+token" },
                &b,
            ));
            absorb(&mut r, &b);
            left = left.saturating_sub(a.elapsed + b.elapsed);
            if a.elapsed > Duration::ZERO && b.ok > 0 {
                ratio = Some(b.elapsed.as_secs_f64() / a.elapsed.as_secs_f64());
            }
        }
        // Only whole sign-ins count as done.
        r.ok = hist.len();
        r.latency_ms = Latency::of(&hist);
        r
    }

    /// IdP-initiated Responses signed ahead, posted to the ACS.
    async fn saml_acs(&self, window: Duration) -> ScenarioReport {
        let w = &self.inner;
        let n = w.prepared(window, w.pool);
        let mut r = report(Scenario::SamlAcs, w.mode, 0.0);
        let t = Instant::now();
        let bodies = match w.sign_idp_initiated(n) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                r.errors += 1;
                r.error_samples.push(e);
                return r;
            }
        };
        r.prepare_s = t.elapsed().as_secs_f64();
        let wc = w.clone();
        let items = bodies.clone();
        let stage = engine::run(
            w.mode,
            Bounds {
                limit: Some(bodies.len()),
                duration: Some(window),
                max_in_flight: w.max_in_flight,
            },
            false,
            &w.watched,
            move |i| {
                let (w, items) = (wc.clone(), items.clone());
                async move {
                    let body = items.get(i).ok_or("no such response")?;
                    w.post_acs(&w.saml_idp_init, body.clone()).await.map(|_| ())
                }
            },
        )
        .await;
        w.warn_ran_out(
            &stage,
            window,
            Scenario::SamlAcs,
            (bodies.len(), "pre-signed responses", "--pool"),
        );
        r.stages.push(stage_report("acs", &stage));
        absorb(&mut r, &stage);
        r.latency_ms = Latency::of(&stage.hist);
        r
    }
}

impl World {
    /// `/token` with the code grant alone: codes minted ahead (untimed)
    /// through `/authorize` with the setup sign-ins' SSO sessions, then
    /// redeemed with their PKCE verifiers in the timed window; each answer
    /// must carry an ID token and an access token.
    async fn code_grant(&self, window: Duration) -> ScenarioReport {
        let w = &self.inner;
        let n = w.prepared(window, w.code_pool);
        let mut r = report(Scenario::CodeGrant, w.mode, 0.0);
        let t = Instant::now();
        // Minted with a bounded number in flight, in order, so the oldest
        // code is redeemed first (codes live `[tokens] code_ttl_secs`, 60 s
        // by default).
        let minted = Arc::new(std::sync::Mutex::new(Vec::<Option<(String, String)>>::new()));
        let mut errors = Vec::new();
        for batch in (0..n).collect::<Vec<_>>().chunks(32) {
            if t.elapsed() >= w.mint_budget {
                // The first codes would expire before their turn.
                eprintln!(
                    "portcullis-load: code-grant: minted {} of {n} codes in {:.1} s, the most that stay \
                     unexpired through the window (see --code-ttl); the window ends early if they run out",
                    batch[0],
                    t.elapsed().as_secs_f64()
                );
                break;
            }
            let set: Vec<_> = batch
                .iter()
                .map(|&i| {
                    let w = w.clone();
                    async move { w.sso_code(i).await }
                })
                .collect();
            for res in futures_join(set).await {
                match res {
                    Ok(c) => {
                        if let Ok(mut m) = minted.lock() {
                            m.push(Some(c));
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        r.prepare_s = t.elapsed().as_secs_f64();
        if !errors.is_empty() {
            r.errors += errors.len() as u64;
            r.error_samples.extend(errors.into_iter().take(5));
            return r;
        }
        let count = minted.lock().map(|m| m.len()).unwrap_or(0);
        let wc = w.clone();
        let items = minted.clone();
        let stage = engine::run(
            w.mode,
            Bounds {
                limit: Some(count),
                duration: Some(window),
                max_in_flight: w.max_in_flight,
            },
            false,
            &w.watched,
            move |i| {
                let (w, items) = (wc.clone(), items.clone());
                async move {
                    let item = items
                        .lock()
                        .map_err(|_| "code-grant: lock poisoned".to_owned())?
                        .get_mut(i)
                        .and_then(Option::take)
                        .ok_or("code-grant: no such code")?;
                    w.redeem(&item.0, &item.1).await.map(|_| ())
                }
            },
        )
        .await;
        w.warn_ran_out(
            &stage,
            window,
            Scenario::CodeGrant,
            (count, "minted codes", "--code-pool"),
        );
        r.stages.push(stage_report("token", &stage));
        absorb(&mut r, &stage);
        r.latency_ms = Latency::of(&stage.hist);
        r
    }
}

/// `a` with the cookies of `b` added, a cookie of `b` replacing one of the
/// same name in `a` (as a browser keeps the newest).
fn merge_cookies(a: &str, b: &str) -> String {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in a.split("; ").chain(b.split("; ")).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => out.push((name.to_owned(), value.to_owned())),
        }
    }
    out.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

fn report(scenario: Scenario, mode: Mode, prepare_s: f64) -> ScenarioReport {
    let (m, concurrency, rate) = match mode {
        Mode::Closed(c) => ("closed", Some(c), None),
        Mode::Open(r) => ("open", None, Some(r)),
    };
    ScenarioReport {
        scenario,
        mode: m.into(),
        concurrency,
        rate,
        ok: 0,
        errors: 0,
        shed: 0,
        error_samples: Vec::new(),
        elapsed_s: 0.0,
        throughput_per_s: 0.0,
        latency_ms: Latency::default(),
        gateway_cpu_s: None,
        gateway_cpu_ms_per_op: None,
        gateway_system_cpu_s: None,
        redis_cpu_s: None,
        redis_cpu_ms_per_op: None,
        generator_cpu_s: None,
        generator_cpu_ms_per_op: None,
        gateway_cpus_busy: None,
        generator_cpus_busy: None,
        cpu_ticks: Default::default(),
        waited_s: Default::default(),
        waited_for_cpu_ms_per_op: Default::default(),
        redis_commands_per_op: Default::default(),
        gateway_rss_kib: None,
        gateway_memory: None,
        started_s: None,
        ended_s: None,
        monotonic_window_s: None,
        prepare_s,
        stages: Vec::new(),
    }
}

fn stage_report<T>(name: &str, s: &Stage<T>) -> StageReport {
    StageReport {
        name: name.into(),
        ok: s.ok,
        errors: s.errors,
        shed: s.shed,
        elapsed_s: s.elapsed.as_secs_f64(),
        latency_ms: Latency::of(&s.hist),
        gateway_cpu_s: s.cpu_secs,
        gateway_system_cpu_s: s.system_cpu_secs,
        redis_cpu_s: s.redis_cpu_secs,
        monotonic_s: s.monotonic_s,
        send_lag_ms: (!s.lag.is_empty()).then(|| Latency::of(&s.lag)),
        slowest: s.slowest,
        generator_wake_ms: (!s.wake.is_empty()).then(|| Latency::of(&s.wake)),
        slow_ops: s.slow,
        gateway_tails: s.gateway_tails,
    }
}

/// Adds a stage's counts, time and CPU to the scenario.
fn absorb<T>(r: &mut ScenarioReport, s: &Stage<T>) {
    r.ok = s.ok;
    r.elapsed_s += s.elapsed.as_secs_f64();
    add_outcomes(r, s);
    let cpu = engine::CpuTimes {
        gateway: s.cpu_secs,
        gateway_system: s.system_cpu_secs,
        redis: s.redis_cpu_secs,
        generator: s.generator_cpu_secs,
        gateway_cpus: s.gateway_cpus,
        generator_cpus: s.generator_cpus,
        waited: s.waited,
    };
    add_used(r, &cpu, s.redis_commands.as_ref());
}

/// Adds a stage's errors, sheds and error samples to the scenario's.
fn add_outcomes<T>(r: &mut ScenarioReport, s: &Stage<T>) {
    r.errors += s.errors;
    r.shed += s.shed;
    for e in &s.samples {
        if r.error_samples.len() < 5 {
            r.error_samples.push(e.clone());
        }
    }
}

/// Adds what a window used (CPU seconds, the CPUs' ticks, Redis's
/// commands) to the scenario's totals.
fn add_used(r: &mut ScenarioReport, cpu: &engine::CpuTimes, commands: Option<&engine::CommandStats>) {
    let sum = |total: Option<f64>, more: Option<f64>| match (total, more) {
        (Some(t), Some(m)) => Some(t + m),
        (t, m) => t.or(m),
    };
    r.gateway_cpu_s = sum(r.gateway_cpu_s, cpu.gateway);
    r.gateway_system_cpu_s = sum(r.gateway_system_cpu_s, cpu.gateway_system);
    r.redis_cpu_s = sum(r.redis_cpu_s, cpu.redis);
    r.generator_cpu_s = sum(r.generator_cpu_s, cpu.generator);
    r.add_cpu_load(cpu.gateway_cpus, cpu.generator_cpus);
    r.waited_s = r.waited_s.plus(cpu.waited);
    add_commands(r, commands);
}

/// Adds Redis's commands of a stage to the scenario's (totals until
/// [`finish`] divides them by the operations).
fn add_commands(r: &mut ScenarioReport, ran: Option<&engine::CommandStats>) {
    for (name, &(calls, usec)) in ran.into_iter().flatten() {
        let c = r.redis_commands_per_op.entry(name.clone()).or_default();
        c.calls += calls as f64;
        c.usec += usec as f64;
    }
}

fn finish(r: &mut ScenarioReport, watched: &Watched) {
    if r.elapsed_s > 0.0 {
        r.throughput_per_s = r.ok as f64 / r.elapsed_s;
    }
    let per_op = |cpu: Option<f64>| cpu.filter(|_| r.ok > 0).map(|c| c * 1000.0 / r.ok as f64);
    r.gateway_cpu_ms_per_op = per_op(r.gateway_cpu_s);
    r.redis_cpu_ms_per_op = per_op(r.redis_cpu_s);
    r.generator_cpu_ms_per_op = per_op(r.generator_cpu_s);
    r.gateway_cpus_busy = r.cpu_ticks.0.and_then(engine::CpuLoad::share);
    r.generator_cpus_busy = r.cpu_ticks.1.and_then(engine::CpuLoad::share);
    let ms = |s: Option<f64>| s.filter(|_| r.ok > 0).map(|s| s * 1000.0 / r.ok as f64);
    r.waited_for_cpu_ms_per_op = engine::Waited {
        gateway: ms(r.waited_s.gateway),
        redis: ms(r.waited_s.redis),
        generator: ms(r.waited_s.generator),
    };
    if r.ok == 0 {
        r.redis_commands_per_op.clear();
    }
    let ops = r.ok.max(1) as f64;
    for c in r.redis_commands_per_op.values_mut() {
        *c = RedisCommand {
            calls: c.calls / ops,
            usec: c.usec / ops,
        };
    }
    r.gateway_rss_kib = watched.gateway_rss_kib();
    r.gateway_memory = watched.gateway_memory();
}

fn str_field(v: &Value, name: &str) -> Result<String, String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no {name} in {v}"))
}

struct Admin<'a> {
    http: &'a Gateway,
    base: &'a Url,
    token: &'a str,
}

impl Admin<'_> {
    async fn create(&self, path: &str, body: Value) -> Result<Value, String> {
        let url = self.base.join(path).map_err(|e| e.to_string())?;
        let resp = self
            .http
            .request(Method::POST, url)
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status != StatusCode::CREATED {
            return Err(format!("POST {path}: HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("POST {path}: {e}"))
    }

    async fn saml_connection(&self, tenant: &str, body: Value) -> Result<SamlConn, String> {
        let c = self
            .create(&format!("/admin/v1/tenants/{tenant}/connections"), body)
            .await?;
        Ok(SamlConn {
            id: str_field(&c, "id")?,
            acs: str_field(&c, "acs_url")?.parse().map_err(|e| format!("acs_url: {e}"))?,
            acs_url: str_field(&c, "acs_url")?,
            sp_entity_id: str_field(&c, "sp_entity_id")?,
        })
    }
}

impl Inner {
    /// The tenant sign-in `i` goes to.
    fn site(&self, i: usize) -> &Site {
        // `sites` is never empty.
        &self.sites[i % self.sites.len()]
    }

    fn email(&self, user: usize) -> String {
        format!("user{}@{}", user % self.users, self.site(user).domain)
    }

    /// `GET /authorize` for a new browser (PKCE S256, `offline_access`);
    /// reads what the gateway sent the IdP.
    async fn authorize(&self, i: usize, saml: bool) -> Result<Pending, String> {
        let verifier = b64url(&rand::random::<[u8; 32]>());
        let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
        let state = b64url(&rand::random::<[u8; 12]>());
        let conn = if saml {
            self.site(i).saml.id.as_str()
        } else {
            self.oidc_conn.as_str()
        };
        let mut url = self.at.authorize.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.app.id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid email profile offline_access")
            .append_pair("state", &state)
            .append_pair("nonce", &b64url(&rand::random::<[u8; 12]>()))
            .append_pair("tenant", &self.site(i).tenant)
            .append_pair("connection", conn)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let resp = self.http.get(url).send().await.map_err(|e| format!("authorize: {e}"))?;
        let to_idp = location(&resp, &self.base, "authorize")?;
        let cookie = cookies(&resp);
        if cookie.is_empty() {
            return Err("authorize: no cookie (the login binding)".into());
        }
        let mut pending = Pending {
            user: i,
            cookie,
            state,
            verifier,
            request_id: String::new(),
            relay_state: None,
            upstream_state: None,
        };
        if saml {
            let req = query(&to_idp, "SAMLRequest").ok_or("authorize: no SAMLRequest")?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(req)
                .map_err(|e| format!("authorize: SAMLRequest base64: {e}"))?;
            let mut xml = String::new();
            flate2::read::DeflateDecoder::new(raw.as_slice())
                .read_to_string(&mut xml)
                .map_err(|e| format!("authorize: SAMLRequest deflate: {e}"))?;
            pending.request_id = attr(&xml, "ID").ok_or("authorize: AuthnRequest without ID")?;
            pending.relay_state = query(&to_idp, "RelayState");
        } else {
            if !to_idp.as_str().starts_with(self.upstream.issuer()) {
                return Err(format!("authorize: sent to {to_idp}, not the upstream"));
            }
            pending.request_id = query(&to_idp, "nonce").ok_or("authorize: no nonce upstream")?;
            pending.upstream_state = Some(query(&to_idp, "state").ok_or("authorize: no state upstream")?);
        }
        Ok(pending)
    }

    /// The IdP's answers to `pendings` (signed Responses or minted ID
    /// tokens), made on every CPU the generator may use, untimed. Keeps the
    /// `/authorize` latency of each.
    fn answer_all(&self, pendings: Vec<(usize, Pending, u64)>, saml: bool) -> (Vec<(u64, Answered)>, Vec<String>) {
        let chunk = pendings.len().div_ceil(self.signers).max(1);
        let mut input: Vec<Vec<(usize, Pending, u64)>> = Vec::new();
        let mut it = pendings.into_iter();
        loop {
            let c: Vec<_> = it.by_ref().take(chunk).collect();
            if c.is_empty() {
                break;
            }
            input.push(c);
        }
        let results: Vec<Vec<Result<(u64, Answered), String>>> = std::thread::scope(|s| {
            let handles: Vec<_> = input
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        c.into_iter()
                            .map(|(_, p, micros)| self.answer(p, saml).map(|a| (micros, a)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| vec![Err("signer thread panicked".into())]))
                .collect()
        });
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for r in results.into_iter().flatten() {
            match r {
                Ok(a) => ok.push(a),
                Err(e) => errors.push(e),
            }
        }
        (ok, errors)
    }

    fn answer(&self, pending: Pending, saml: bool) -> Result<Answered, String> {
        let email = self.email(pending.user);
        let answer = if saml {
            let xml = self
                .idp
                .response(&ResponseSpec {
                    acs_url: &self.site(pending.user).saml.acs_url,
                    audience: &self.site(pending.user).saml.sp_entity_id,
                    in_response_to: Some(&pending.request_id),
                    email: &email,
                })
                .map_err(|e| e.to_string())?;
            acs_form(&xml, pending.relay_state.as_deref())
        } else {
            let sub = format!("user{}", pending.user % self.users);
            self.upstream
                .mint(&self.upstream_client_id, &sub, &email, &pending.request_id)?
        };
        Ok(Answered { pending, answer })
    }

    /// `n` IdP-initiated Responses as ACS form bodies, signed on every CPU
    /// the generator may use.
    fn sign_idp_initiated(&self, n: usize) -> Result<Vec<String>, String> {
        let per = n.div_ceil(self.signers).max(1);
        let parts: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.signers)
                .map(|t| {
                    s.spawn(move || {
                        let from = t * per;
                        (from..(from + per).min(n))
                            .map(|i| {
                                let email = self.email(i * self.sites.len());
                                let xml = self
                                    .idp
                                    .response(&ResponseSpec {
                                        acs_url: &self.saml_idp_init.acs_url,
                                        audience: &self.saml_idp_init.sp_entity_id,
                                        in_response_to: None,
                                        email: &email,
                                    })
                                    .map_err(|e| e.to_string())?;
                                Ok(acs_form(&xml, None))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("signer thread panicked".into())))
                .collect()
        });
        let mut out = Vec::with_capacity(n);
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// Posts an ACS form; expects the 303 to the continuation.
    async fn post_acs(&self, conn: &SamlConn, body: String) -> Result<Url, String> {
        let resp = self
            .http
            .post(conn.acs.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("acs: {e}"))?;
        if resp.status() != StatusCode::SEE_OTHER {
            let status = resp.status();
            let text: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
            return Err(format!("acs: HTTP {status} (expected 303): {text}"));
        }
        let next = location(&resp, &self.base, "acs")?;
        if !next.path().ends_with("/continue") {
            return Err(format!("acs: sent to {next}, not the continuation"));
        }
        Ok(next)
    }

    /// The rest of a sign-in: the IdP's answer to the gateway, back to the
    /// app with a code, the code redeemed.
    async fn finish_signin(&self, item: &Answered, saml: bool) -> Result<(), String> {
        let p = &item.pending;
        let back = if saml {
            let next = self.post_acs(&self.site(p.user).saml, item.answer.clone()).await?;
            self.http.get(next).header(COOKIE, &p.cookie).send().await
        } else {
            let mut cb = self
                .base
                .join(&format!(
                    "/oidc/{}/{}/callback",
                    self.site(p.user).tenant,
                    self.oidc_conn
                ))
                .map_err(|e| e.to_string())?;
            cb.query_pairs_mut()
                .append_pair("code", &item.answer)
                .append_pair("state", p.upstream_state.as_deref().unwrap_or_default());
            self.http.get(cb).header(COOKIE, &p.cookie).send().await
        }
        .map_err(|e| format!("back to the gateway: {e}"))?;
        let what = if saml { "continue" } else { "callback" };
        let to_app = location(&back, &self.base, what)?;
        if !to_app.as_str().starts_with(&self.redirect_uri) {
            return Err(format!("{what}: sent to {to_app}, not the app"));
        }
        if query(&to_app, "state").as_deref() != Some(p.state.as_str()) {
            return Err(format!("{what}: state not returned to the app: {to_app}"));
        }
        let code = query(&to_app, "code").ok_or_else(|| format!("{what}: no code in {to_app}"))?;
        self.redeem(&code, &p.verifier).await.map(|_| ())
    }

    /// The code grant with PKCE; returns the tokens and the ID token's `alg`.
    async fn redeem(&self, code: &str, verifier: &str) -> Result<(Tokens, Option<String>), String> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_verifier", verifier)
            .finish();
        let v = self.token(&self.app, body, "token (code)").await?;
        if !v["id_token"].is_string() {
            return Err(format!("token (code): no id_token in {v}"));
        }
        let alg = v["id_token"]
            .as_str()
            .and_then(|t| t.split('.').next())
            .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
            .and_then(|h| h["alg"].as_str().map(str::to_owned));
        Ok((
            Tokens {
                access: str_field(&v, "access_token")?,
                refresh: v["refresh_token"].as_str().map(str::to_owned),
            },
            alg,
        ))
    }

    /// POSTs to `/token` as `app`; expects 200 and an access token.
    async fn token(&self, app: &App, body: String, what: &str) -> Result<Value, String> {
        let resp = self
            .http
            .post(self.at.token.clone())
            .header(AUTHORIZATION, app.basic())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{what}: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!(
                "{what}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{what}: {e}"))?;
        if !v["access_token"].is_string() {
            return Err(format!("{what}: no access_token"));
        }
        Ok(v)
    }

    /// One of the setup's sign-ins (untimed): a sign-in the gateway
    /// answered with "temporarily unavailable" (503) is tried again, up to
    /// three times in all, since a gateway that is still warming up (under
    /// valgrind, translating each new code path on its first run, a store
    /// answer can miss its one-second deadline) refuses some of the first
    /// sixteen concurrent sign-ins; every other error, and a third 503,
    /// ends the run as before.
    async fn setup_signin(self: &Inner, i: usize) -> Result<(Tokens, Option<String>, String), String> {
        let mut attempt = 1;
        loop {
            match self.saml_signin_once(i).await {
                Err(e) if attempt < 3 && e.contains("HTTP 503") => {
                    eprintln!("portcullis-load: setup sign-in {i} (attempt {attempt}) answered 503, trying again: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => return r,
            }
        }
    }

    /// One whole SAML sign-in, untimed (setup); also answers the browser's
    /// cookies after it (its SSO session).
    async fn saml_signin_once(self: &Inner, i: usize) -> Result<(Tokens, Option<String>, String), String> {
        let p = self.authorize(i, true).await?;
        let a = self.answer(p, true)?;
        let next = self.post_acs(&self.site(i).saml, a.answer.clone()).await?;
        let back = self
            .http
            .get(next)
            .header(COOKIE, &a.pending.cookie)
            .send()
            .await
            .map_err(|e| format!("continue: {e}"))?;
        let to_app = location(&back, &self.base, "continue")?;
        let cookie = merge_cookies(&a.pending.cookie, &cookies(&back));
        let code = query(&to_app, "code").ok_or_else(|| format!("continue: no code in {to_app}"))?;
        let (t, alg) = self.redeem(&code, &a.pending.verifier).await?;
        if t.refresh.is_none() {
            return Err("token (code): no refresh_token for offline_access".into());
        }
        Ok((t, alg, cookie))
    }

    /// How many items a scenario prepares ahead of a window: rate × window
    /// in open loop; in closed loop `pool` (per measured window), scaled to
    /// this window (the warm-up is shorter), at least 50.
    fn prepared(&self, window: Duration, pool: usize) -> usize {
        match self.mode {
            Mode::Open(rate) => (rate * window.as_secs_f64()).ceil() as usize,
            Mode::Closed(_) => {
                let share = (window.as_secs_f64() / self.duration.as_secs_f64().max(0.001)).min(1.0);
                ((pool as f64 * share).ceil() as usize).max(50)
            }
        }
    }

    /// Warns when a closed-loop stage of `scenario` used up the `count`
    /// items prepared for it (`what`) before its window ended; `flag` is the
    /// option that raises their number.
    fn warn_ran_out<T>(
        &self,
        stage: &Stage<T>,
        window: Duration,
        scenario: Scenario,
        (count, what, flag): (usize, &str, &str),
    ) {
        if matches!(self.mode, Mode::Closed(_))
            && stage.ok + stage.errors + stage.shed >= count as u64
            && stage.elapsed < window
        {
            eprintln!(
                "portcullis-load: {}: the {count} {what} ran out after {:.1} s (raise {flag})",
                scenario.name(),
                stage.elapsed.as_secs_f64()
            );
        }
    }

    /// An authorization code for the app through `/authorize` with the SSO
    /// session of setup chain `i` (no IdP involved): the code and its PKCE
    /// verifier.
    async fn sso_code(&self, i: usize) -> Result<(String, String), String> {
        let sso = self.sso.get().map(Vec::as_slice).unwrap_or_default();
        let (user, cookie) = sso.get(i % sso.len().max(1)).ok_or("code-grant: no SSO session")?;
        let verifier = b64url(&rand::random::<[u8; 32]>());
        let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
        let state = b64url(&rand::random::<[u8; 12]>());
        let mut url = self.at.authorize.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.app.id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid email profile offline_access")
            .append_pair("state", &state)
            .append_pair("nonce", &b64url(&rand::random::<[u8; 12]>()))
            .append_pair("tenant", &self.site(*user).tenant)
            .append_pair("connection", &self.site(*user).saml.id)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let resp = self
            .http
            .get(url)
            .header(COOKIE, cookie)
            .send()
            .await
            .map_err(|e| format!("authorize (SSO): {e}"))?;
        let to_app = location(&resp, &self.base, "authorize (SSO)")?;
        if !to_app.as_str().starts_with(&self.redirect_uri) || query(&to_app, "state").as_deref() != Some(&state) {
            return Err(format!(
                "authorize (SSO): sent to {to_app}, not back to the app with its state"
            ));
        }
        let code = query(&to_app, "code").ok_or_else(|| format!("authorize (SSO): no code in {to_app}"))?;
        Ok((code, verifier))
    }

    /// One operation of the scenarios that need no preparation.
    async fn simple(&self, s: Scenario, i: usize) -> Result<(), String> {
        let tokens = self.tokens.get().map(Vec::as_slice).unwrap_or_default();
        let pick = |i: usize| tokens.get(i % tokens.len().max(1)).ok_or("no tokens");
        match s {
            Scenario::Jwks | Scenario::Discovery => {
                let (path, url) = if s == Scenario::Jwks {
                    ("/jwks", &self.at.jwks)
                } else {
                    ("/.well-known/openid-configuration", &self.at.discovery)
                };
                let resp = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| format!("{path}: {e}"))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| format!("{path}: {e}"))?;
                if status != StatusCode::OK || body.is_empty() {
                    return Err(format!("{path}: HTTP {status}"));
                }
                Ok(())
            }
            Scenario::Userinfo => {
                let access = pick(i)?.lock().await.access.clone();
                let resp = self
                    .http
                    .get(self.at.userinfo.clone())
                    .bearer_auth(access)
                    .send()
                    .await
                    .map_err(|e| format!("userinfo: {e}"))?;
                let status = resp.status();
                let v: Value = resp.json().await.map_err(|e| format!("userinfo: {e}"))?;
                if status != StatusCode::OK || !v["sub"].is_string() {
                    return Err(format!("userinfo: HTTP {status}: {v}"));
                }
                Ok(())
            }
            Scenario::Introspect => {
                let access = pick(i)?.lock().await.access.clone();
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("token", &access)
                    .finish();
                let resp = self
                    .http
                    .post(self.at.introspect.clone())
                    .header(AUTHORIZATION, self.app.basic())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("introspect: {e}"))?;
                let status = resp.status();
                let v: Value = resp.json().await.map_err(|e| format!("introspect: {e}"))?;
                if status != StatusCode::OK || v["active"] != json!(true) {
                    return Err(format!("introspect: HTTP {status}: {v}"));
                }
                Ok(())
            }
            Scenario::Refresh => {
                let mut chain = pick(i)?.lock().await;
                let refresh = chain.refresh.clone().ok_or("refresh: chain has no refresh token")?;
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", &refresh)
                    .finish();
                let v = self.token(&self.app, body, "token (refresh)").await?;
                let next = str_field(&v, "refresh_token").map_err(|_| "token (refresh): not rotated".to_owned())?;
                *chain = Tokens {
                    access: str_field(&v, "access_token")?,
                    refresh: Some(next),
                };
                Ok(())
            }
            Scenario::ClientCredentials => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("scope", &self.api_scope)
                    .finish();
                self.token(&self.worker, body, "token (client_credentials)")
                    .await
                    .map(|_| ())
            }
            Scenario::SamlSignin | Scenario::SamlAcs | Scenario::OidcSignin | Scenario::CodeGrant => {
                Err(format!("{} is not a simple scenario", s.name()))
            }
        }
    }
}

/// The HTTP-POST binding's form body.
fn acs_form(xml: &str, relay_state: Option<&str>) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    f.append_pair(
        "SAMLResponse",
        &base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
    );
    if let Some(r) = relay_state {
        f.append_pair("RelayState", r);
    }
    f.finish()
}

/// `name="value"` of the first element carrying it (the AuthnRequest's ID).
fn attr(xml: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = xml.find(&needle)? + needle.len();
    let rest = xml.get(start..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// The size of a Response `idp` signs for `site`'s SP-initiated connection,
/// as one of the sign-ins would get it (an AuthnRequest id, the first user).
fn probe_response(idp: &SamlIdp, site: &Site) -> Result<usize, String> {
    let email = format!("user0@{}", site.domain);
    let request_id = saml_id();
    idp.response(&ResponseSpec {
        acs_url: &site.saml.acs_url,
        audience: &site.saml.sp_entity_id,
        in_response_to: Some(&request_id),
        email: &email,
    })
    .map(|xml| xml.len())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measured window runs from the first stage's start to the last
    /// one's end, and is unknown when a stage's is.
    #[test]
    fn the_measured_window_spans_the_timed_stages() {
        let mut r = report(Scenario::SamlSignin, Mode::Closed(1), 0.0);
        let stage = |w: Option<[f64; 2]>| StageReport {
            name: "s".into(),
            ok: 1,
            errors: 0,
            shed: 0,
            elapsed_s: 1.0,
            latency_ms: Latency::default(),
            gateway_cpu_s: None,
            gateway_system_cpu_s: None,
            redis_cpu_s: None,
            monotonic_s: w,
            send_lag_ms: None,
            slowest: None,
            generator_wake_ms: None,
            slow_ops: None,
            gateway_tails: None,
        };
        assert_eq!(r.measured_window(), None);
        r.stages = vec![stage(Some([10.0, 11.0])), stage(Some([11.5, 13.0]))];
        assert_eq!(r.measured_window(), Some([10.0, 13.0]));
        r.stages.push(stage(None));
        assert_eq!(r.measured_window(), None);
    }

    /// A stage of one second with 1,000 successes and no figure read.
    fn second_of_1000() -> Stage<()> {
        Stage {
            hist: engine::histogram(),
            outputs: Vec::new(),
            ok: 1000,
            errors: 0,
            shed: 0,
            samples: Vec::new(),
            elapsed: Duration::from_secs(1),
            cpu_secs: None,
            system_cpu_secs: None,
            redis_cpu_secs: None,
            generator_cpu_secs: None,
            gateway_cpus: None,
            generator_cpus: None,
            redis_commands: None,
            monotonic_s: None,
            waited: Default::default(),
            lag: engine::histogram(),
            slowest: None,
            wake: engine::histogram(),
            slow: None,
            gateway_tails: None,
        }
    }

    #[test]
    fn the_summary_line_gives_the_kernels_share_of_the_gateways_cpu() {
        let mut r = report(Scenario::SamlSignin, Mode::Closed(1), 0.0);
        r.ok = 1000;
        r.elapsed_s = 1.0;
        let s = Stage {
            cpu_secs: Some(1.5),
            system_cpu_secs: Some(0.375),
            ..second_of_1000()
        };
        absorb(&mut r, &s);
        absorb(&mut r, &s);
        finish(&mut r, &Watched::default());
        assert_eq!(r.gateway_system_cpu_s, Some(0.75));
        assert_eq!(r.system_share(), Some(0.25));
        assert!(
            r.line().contains("gateway cpu=3.000 ms/op (25 % system)"),
            "{}",
            r.line()
        );
        // Without the kernel's figure the line says only the whole.
        r.gateway_system_cpu_s = None;
        assert!(r.line().ends_with("gateway cpu=3.000 ms/op"), "{}", r.line());
    }

    #[test]
    fn the_generators_cpu_and_both_sides_cpus_business_are_reported_and_a_busy_generator_flagged() {
        let mut r = report(Scenario::SamlSignin, Mode::Closed(1), 0.0);
        r.ok = 1000;
        r.elapsed_s = 1.0;
        let stage = |generator_busy| Stage {
            cpu_secs: Some(0.6),
            generator_cpu_secs: Some(0.5),
            gateway_cpus: Some(engine::CpuLoad { busy: 90, total: 100 }),
            generator_cpus: Some(engine::CpuLoad {
                busy: generator_busy,
                total: 100,
            }),
            ..second_of_1000()
        };
        absorb(&mut r, &stage(80));
        absorb(&mut r, &stage(90));
        finish(&mut r, &Watched::default());
        assert_eq!(r.generator_cpu_ms_per_op, Some(1.0));
        assert_eq!((r.gateway_cpus_busy, r.generator_cpus_busy), (Some(0.9), Some(0.85)));
        assert!(
            r.line().ends_with(
                "gateway cpu=1.200 ms/op  generator cpu=1.000 ms/op  busy: gateway's cpus 90 %, generator's 85 %"
            ),
            "{}",
            r.line()
        );
        // Under 90 % the generator is not suspected.
        assert_eq!(r.cpu_warning(false), None);
        r.generator_cpus_busy = Some(0.95);
        let apart = r.cpu_warning(false).unwrap_or_default();
        assert!(
            apart.contains("saml-signin: the generator's CPUs were 95 % busy (the generator 1.000 ms/op, Redis n/a)"),
            "{apart}"
        );
        let shared = r.cpu_warning(true).unwrap_or_default();
        assert!(shared.contains("shares CPUs with the gateway"), "{shared}");
        // Without the CPUs' ticks the line has no share and nothing is flagged.
        let mut none = report(Scenario::Refresh, Mode::Closed(1), 0.0);
        none.ok = 1;
        finish(&mut none, &Watched::default());
        assert!(!none.line().contains("busy") && none.cpu_warning(false).is_none());
    }
}
