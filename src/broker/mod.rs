//! The broker: an app asks for a sign-in; pick the tenant and connection,
//! reuse the SSO session or send the browser upstream; when the IdP answers,
//! validate (through the connector), provision the user, open the SSO session
//! and hand the app a code.
//!
//! HTTP-free: `http::flows` turns [`Outcome`]s into responses and keeps the
//! browser's [`BrowserSso`] in the tower-sessions session.

pub mod authorize;
mod callback;
pub use callback::{Confirmation, PrefetchedCallback};
pub mod connectors;
mod freshness;
mod mfa;
pub mod passkey;
pub mod second_factor;
pub mod session;
// portal: status enforcement, test sign-ins, failed sign-in records.
pub mod testing;
pub mod upstream_refresh;
mod users;

use crate::ids::{ConnectionId, TenantId};
use crate::provider::clients::GrantType;
use crate::provider::codes::Authorization;
use crate::provider::scopes::Subject;
use crate::provider::OAuthErrorCode;
use crate::provider::Provider;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use crate::tenant::snapshot::ConfigSnapshot;
use crate::tenant::{email_domain, LocalMfa, Tenant, TenantRegistry};
use crate::upstream::{BeginRequest, UpstreamContext, UpstreamError, UpstreamRedirect};
use authorize::{AuthRequest, AuthorizeError};
use serde::{Deserialize, Serialize};
use session::{BrowserSso, SsoSession};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// What the HTTP layer should do next.
#[derive(Debug)]
pub enum Outcome {
    /// Redirect to the app (with a code, or with `error=`).
    App(Url),
    /// Send the browser to the IdP; remember `binding` (login id, secret) in
    /// the browser's session when given.
    Upstream {
        /// Where to send the browser.
        redirect: UpstreamRedirect,
        /// The browser binding of the pending login.
        binding: Option<(String, String)>,
    },
    /// A validated SAML answer waits under a one-time handle: send the
    /// browser (303) to this same-site continuation URL.
    Continue(Url),
    /// An IdP-initiated sign-in (which no browser started, so anyone could
    /// have posted it from this browser) would sign this browser in to the
    /// tenant, or replace its session of another user there: ask the person
    /// first (a form with a CSRF token posting the handle back to the
    /// continuation, to continue or cancel).
    ConfirmSignIn(ToConfirm),
    /// Show a page to the person.
    Page {
        /// HTTP status.
        status: u16,
        /// Page title.
        title: String,
        /// The explanation.
        message: String,
        /// Reason code.
        reason: &'static str,
    },
    /// Ask for the work email (home-realm discovery); re-submit the params.
    ChooseTenant {
        /// The original authorization parameters.
        params: BTreeMap<String, String>,
        /// Why we ask again, if the first answer did not match.
        error: Option<String>,
    },
    /// The answer waits for Portcullis's own second factor: send the browser
    /// to `url` (the MFA page) and keep `secret` in its session (the page
    /// checks that the browser holds it).
    SecondFactor {
        /// The MFA page with its one-time handle.
        url: Url,
        /// The browser secret whose hash the waiting answer stores.
        secret: crate::secret::Secret,
    },
    /// The tenant has several connections: let the person pick one.
    ChooseConnection {
        /// The original authorization parameters.
        params: BTreeMap<String, String>,
        /// The tenant.
        tenant: Arc<Tenant>,
        /// Its connections.
        connections: Vec<ConnectionId>,
    },
}

/// An IdP-initiated sign-in waiting for the person's word, and what its
/// confirmation page says ([`Outcome::ConfirmSignIn`]).
#[derive(Debug)]
pub struct ToConfirm {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// The one-time handle of the waiting sign-in.
    pub handle: String,
    /// Who the new sign-in is (email or name, as the IdP asserted), to show.
    pub who: String,
    /// The app the sign-in lands in (its registered name), to show.
    pub app_name: String,
    /// The organization signing in (the tenant's name), to show.
    pub organization: String,
    /// Whether this browser is signed in to the tenant as another user,
    /// whose session the sign-in would replace.
    pub replaces: bool,
    /// Where the browser goes once confirmed (the app's redirect URI).
    pub app: String,
}

fn page(status: u16, title: &str, message: impl Into<String>, reason: &'static str) -> Outcome {
    Outcome::Page {
        status,
        title: title.into(),
        message: message.into(),
        reason,
    }
}

fn unavailable(e: impl std::fmt::Display) -> Outcome {
    tracing::error!(reason = "store.unavailable", error = %e, "store failed during a sign-in");
    page(
        503,
        "Sign-in is temporarily unavailable",
        "The sign-in service could not reach its storage. Please try again in a moment.",
        "store.unavailable",
    )
}

/// A login in flight: stored when the browser goes to the IdP, consumed once
/// when it comes back. `Debug` redacts the connector's private state.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// The app's request.
    pub request: AuthRequest,
    /// The connector's private state (request id, nonce, PKCE verifier).
    pub connector_state: serde_json::Value,
    /// SHA-256 of the secret the starting browser keeps in its session.
    #[serde(default)]
    pub browser_binding: Option<String>,
    /// When the browser was sent to the IdP (Unix seconds): with
    /// `prompt=login` or `max_age=0` the IdP's authentication must not be older.
    #[serde(default)]
    pub started_at: i64,
    /// The incarnations of the tenant and connection the login was started
    /// for: an answer arriving after they were deleted and re-created is
    /// refused. `None` (a login stored before incarnations) is refused too.
    #[serde(default)]
    pub incarnation: Option<crate::tenant::Incarnation>,
    /// Set when the login is a test sign-in started from the setup portal:
    /// every check runs, but no user, session or code comes of it.
    #[serde(default)]
    pub test: Option<testing::TestSignIn>,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("tenant", &self.tenant)
            .field("connection", &self.connection)
            .field("request", &self.request)
            .field("connector_state", &crate::secret::Redacted)
            .field("browser_binding", &self.browser_binding)
            .field("started_at", &self.started_at)
            .field("incarnation", &self.incarnation)
            .field("test", &self.test)
            .finish()
    }
}

/// Work of the edge, boxed to run inside the broker's own steps.
pub type EdgeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Work of the edge run alongside opening an SSO session, so it shares the
/// broker's store waits instead of adding its own; neither part runs when
/// no session opens.
pub struct Alongside<'a> {
    /// Polled only once every check of the sign-in passed, together with
    /// the session's own writes (the browser session's id cycle).
    pub with_writes: EdgeFuture<'a>,
    /// Called once those writes all succeeded, with the browser's SSO map
    /// now naming the new session; its future runs together with the
    /// sign-in's audit event (the browser session's save).
    pub once_stored: Box<dyn FnOnce(BrowserSso) -> EdgeFuture<'a> + Send + 'a>,
}

fn pending_key(t: &TenantId, login_id: &str) -> Key {
    Key::tenant(t.as_str(), "login", format!("pending:{login_id}"))
}

/// Builds the app redirect with `params` (and RFC 9207 `iss`).
pub fn app_redirect(redirect_uri: &str, issuer: &str, params: &[(&str, &str)]) -> Option<Url> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", issuer);
    }
    Some(url)
}

fn error_to_app(req: &AuthRequest, issuer: &str, error: &str, description: &str) -> Outcome {
    let clean = crate::provider::error::rfc6749_description(description);
    let mut params = vec![("error", error), ("error_description", clean.as_str())];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    match app_redirect(&req.redirect_uri, issuer, &params) {
        Some(u) => Outcome::App(u),
        None => page(400, "Sign-in failed", description, "authorize.bad_redirect_uri"),
    }
}

/// The broker.
#[derive(Clone)]
pub struct Broker {
    /// The provider (codes, clients, directory).
    pub provider: Provider,
    /// Tenants and connections.
    pub tenants: TenantRegistry,
    /// Connector context.
    pub upstream: UpstreamContext,
    /// Built connectors, cached per revision.
    pub connectors: connectors::ConnectorCache,
    /// The store.
    pub store: SharedStore,
    /// SSO session lifetime.
    pub session_ttl: Duration,
    /// Pending login lifetime.
    pub login_ttl: Duration,
    /// WebAuthn passkeys (`[passkeys] enabled`); `None` when off.
    pub passkeys: Option<crate::mfa::passkey::Passkeys>,
}

/// What an authorization request reads first, the app and the named
/// tenant's configuration, read by the edge alongside its rate limiting
/// (one store wait for all) for the parameters it names. Only reads:
/// [`Broker::authorize_with`] uses them for a request with exactly these
/// parameters and checks them as it checks its own reads; a throttled
/// request discards them unused.
#[derive(Clone, Debug)]
pub struct PrefetchedAuthorize {
    /// The `client_id`, `tenant` and `connection` parameters read for.
    pub names: AuthorizeNames,
    /// The app's record, `None` when no such app exists.
    pub client: Option<Arc<crate::provider::clients::Client>>,
    /// The tenant's configuration (its record included), `None` when the
    /// request names no valid tenant id.
    pub config: Option<ConfigSnapshot>,
}

/// The `client_id`, `tenant` and `connection` parameters of an authorization request.
type AuthorizeNames = (String, Option<String>, Option<String>);

impl PrefetchedAuthorize {
    /// Its reads, when they were made for exactly `names`.
    fn reads_for(
        &self,
        names: &AuthorizeNames,
    ) -> Option<(Option<Arc<crate::provider::clients::Client>>, Option<ConfigSnapshot>)> {
        (self.names == *names).then(|| (self.client.clone(), self.config.clone()))
    }
}

impl Broker {
    /// `/authorize`: decide where the browser goes.
    pub async fn authorize(&self, params: BTreeMap<String, String>, sso: &BrowserSso) -> Outcome {
        self.authorize_with(params, sso, None, None).await
    }

    /// The reads an authorization request naming `client_id`, `tenant` and
    /// `connection` starts with, for the edge to run beside its rate
    /// limiting; `None` when one failed (the handler reads again and
    /// answers). The tenant's record is left out: the edge's limiting reads
    /// it at the same time and hands it on (`FreshTenant`); where it does
    /// not (no such tenant), the handler reads it.
    pub async fn prefetch_authorize(
        &self,
        client_id: String,
        tenant: Option<String>,
        connection: Option<String>,
    ) -> Option<PrefetchedAuthorize> {
        let config = async {
            let id = TenantId::parse(tenant.as_deref()?).ok()?;
            Some(
                self.tenants
                    .read_for_authorize_of(&id, connection.as_deref(), false)
                    .await,
            )
        };
        let (client, config) = tokio::join!(self.provider.clients.get(&client_id), config);
        Some(PrefetchedAuthorize {
            client: client.ok()?,
            config: config.transpose().ok()?,
            names: (client_id, tenant, connection),
        })
    }

    /// [`Self::authorize`], with the tenant record the edge read while
    /// serving this request (used when it is the tenant asked for, instead
    /// of reading it again) and the reads it started for it.
    pub async fn authorize_with(
        &self,
        params: BTreeMap<String, String>,
        sso: &BrowserSso,
        fresh: Option<&crate::tenant::FreshTenant>,
        prefetched: Option<&PrefetchedAuthorize>,
    ) -> Outcome {
        let issuer = self.provider.iss();
        let client_id = params.get("client_id").cloned().unwrap_or_default();
        let (tenant_param, connection_param) = (params.get("tenant").cloned(), params.get("connection").cloned());
        // config: the app, and the configuration of the tenant the request
        // names (see `tenant::snapshot`), read together: one wait on the
        // store, unless the edge read them for these very parameters.
        let names = (client_id.clone(), tenant_param, connection_param);
        let (client, config) = match prefetched.and_then(|p| p.reads_for(&names)) {
            Some(reads) => reads,
            None => {
                let (client, config) = tokio::join!(
                    self.provider.clients.get(&client_id),
                    self.tenants
                        .read_for_authorize(names.1.as_deref(), names.2.as_deref(), fresh)
                );
                let client = match client {
                    Ok(c) => c,
                    Err(e) => return unavailable(e),
                };
                match config.transpose() {
                    Ok(config) => (client, config),
                    Err(e) => return unavailable(e),
                }
            }
        };
        let redirect_uri = match authorize::client_and_redirect(&params, client.as_deref()) {
            Ok(u) => u.to_owned(),
            Err(AuthorizeError::Page { reason, message }) => {
                tracing::info!(reason, client_id = %client_id, "authorization request refused");
                return page(400, "This sign-in link is not valid", message, reason);
            }
            Err(AuthorizeError::Redirect { .. }) => {
                return page(
                    400,
                    "This sign-in link is not valid",
                    "Invalid request.",
                    "authorize.invalid",
                )
            }
        };
        let Some(client) = client else {
            return page(
                400,
                "This sign-in link is not valid",
                "Unknown application.",
                "authorize.unknown_client",
            );
        };
        let req = match authorize::parse(&params, &client, &redirect_uri) {
            Ok(r) => r,
            Err(AuthorizeError::Redirect {
                error,
                reason,
                description,
            }) => {
                tracing::info!(reason, client_id = %client_id, "authorization request refused");
                let state = params.get("state").cloned();
                let stub = AuthRequest::minimal(&client_id, &redirect_uri, state, &[]);
                return error_to_app(&stub, &issuer, error, &description);
            }
            Err(AuthorizeError::Page { reason, message }) => {
                return page(400, "This sign-in link is not valid", message, reason)
            }
        };
        let mut req = req;
        // OIDC Core 3.1.2.1: `id_token_hint`, an ID token this service
        // issued (signature and issuer checked, expiry tolerated), names
        // who the app expects. Its tenant is the request's (or must be);
        // only that user's SSO session answers it, and with prompt=none no
        // other's: `login_required`. A sign-in at the IdP that turns out to
        // be another user is `login_required` too (`callback::accept`).
        let hinted_sub = match params.get("id_token_hint") {
            None => None,
            Some(hint) => match self.hinted(hint, &issuer).await {
                Ok((tenant, sub)) => {
                    match &req.tenant {
                        Some(named) if *named != tenant => {
                            tracing::info!(reason = "authorize.hint_tenant_mismatch", client_id = %client_id, "authorization request refused");
                            return error_to_app(
                                &req,
                                &issuer,
                                "invalid_request",
                                "id_token_hint names another organization than tenant.",
                            );
                        }
                        Some(_) => {}
                        None => req.tenant = Some(tenant),
                    }
                    // A fresh sign-in must turn out to be this user, too.
                    req.hinted_sub = Some(sub.clone());
                    Some(sub)
                }
                Err(None) => {
                    tracing::info!(reason = "authorize.bad_id_token_hint", client_id = %client_id, "authorization request refused");
                    return error_to_app(
                        &req,
                        &issuer,
                        "invalid_request",
                        "id_token_hint is not an ID token of this service.",
                    );
                }
                Err(Some(e)) => return unavailable(e),
            },
        };
        if !client.allows_grant(GrantType::AuthorizationCode) {
            tracing::info!(reason = "authorize.grant_not_allowed", client_id = %client_id, "authorization request refused");
            return error_to_app(
                &req,
                &issuer,
                "unauthorized_client",
                "This application may not sign users in.",
            );
        }
        // RFC 6749 §3.3 and RFC 8707: unknown and unallowed scopes are dropped here; a resource
        // the app may not use is refused.
        match self
            .provider
            .grant_scopes(&client, &req.scope, req.resource.as_deref(), Subject::User)
            .await
        {
            Ok(grant) => {
                req.scope = grant.scope;
                req.resource = grant.resource;
            }
            Err(e) if e.code == OAuthErrorCode::TemporarilyUnavailable => return unavailable(e),
            Err(e) => {
                tracing::info!(reason = e.reason, client_id = %client_id, "authorization request refused");
                return error_to_app(&req, &issuer, e.code.as_str(), &e.description);
            }
        }

        // Which tenant?
        let read_now = config.as_ref().and_then(ConfigSnapshot::fresh_tenant);
        let tenant = match self.resolve_tenant(&req, fresh.or(read_now.as_ref())).await {
            Ok(Some(t)) => t,
            Ok(None) if req.tenant.is_some() => {
                return error_to_app(&req, &issuer, "invalid_request", "Unknown tenant.");
            }
            // prompt=none shows no page (OIDC Core 3.1.2.1), not even a chooser.
            Ok(None) if req.prompt_none => {
                tracing::info!(reason = "authorize.login_required", client_id = %client_id, "prompt=none without a tenant");
                return error_to_app(&req, &issuer, "login_required", "The user is not signed in.");
            }
            Ok(None) => {
                let error = req
                    .login_hint
                    .as_ref()
                    .map(|_| "No organization uses single sign-on for that email domain.".to_owned());
                return Outcome::ChooseTenant { params, error };
            }
            Err(e) => return unavailable(e),
        };
        crate::telemetry::tag_span(tenant.id.as_str(), None);
        if !client.allows_tenant(&tenant.id) {
            tracing::info!(reason = "authorize.tenant_not_allowed", tenant = %tenant.id, client_id = %client_id);
            return error_to_app(
                &req,
                &issuer,
                "access_denied",
                "This application is not available to your organization.",
            );
        }
        if !tenant.settings.allows_client(&client_id) {
            tracing::info!(reason = "authorize.client_not_allowed_by_tenant", tenant = %tenant.id, client_id = %client_id);
            return error_to_app(
                &req,
                &issuer,
                "access_denied",
                "Your organization does not use this application.",
            );
        }

        // Which connection?
        let config = ConfigSnapshot::of(config.as_ref(), &tenant.id);
        let connection_ids = match config.and_then(|read| read.connection_ids.clone()) {
            Some(ids) => ids,
            None => match self.tenants.connection_ids(&tenant.id).await {
                Ok(c) => c,
                Err(e) => return unavailable(e),
            },
        };
        // portal: only active connections serve users (pending_test and
        // disabled ones are neither chosen nor offered). With a connection
        // named, only that one is looked up (its record also re-validates the
        // cached connector below); without, every connection's status. Each
        // record is the stored one, re-validated by its fingerprint read
        // here (`ConnectorCache::record`), not transferred when unchanged.
        let wanted: Vec<ConnectionId> = match &req.connection {
            Some(c) => ConnectionId::parse(c)
                .ok()
                .filter(|c| connection_ids.contains(c))
                .into_iter()
                .collect(),
            None => connection_ids.clone(),
        };
        let mut active = Vec::new();
        for c in &wanted {
            let record = match config.and_then(|read| read.connection(c)) {
                Some(read) => Ok(read.record.clone()),
                None => self.connectors.record(&self.tenants, &tenant.id, c).await,
            };
            match record {
                Ok(Some(record)) if record.status == crate::upstream::ConnectionStatus::Active => active.push(record),
                Ok(_) => {}
                Err(e) => return unavailable(e),
            }
        }
        let active_ids: Vec<ConnectionId> = active.iter().map(|r| r.id.clone()).collect();
        // The active connections a `login_hint`'s domain is assigned to
        // (`Tenant::domain_connections`): home-realm discovery within the tenant.
        let hinted: Vec<ConnectionId> = req
            .login_hint
            .as_deref()
            .and_then(|hint| crate::tenant::connections_for_hint(&tenant, hint))
            .map(|assigned| active_ids.iter().filter(|c| assigned.contains(c)).cloned().collect())
            .unwrap_or_default();
        // `None`: several active connections and none named. A usable SSO
        // session decides (signed in to one app, signed in to the others);
        // without one the person chooses, or, with prompt=none, which shows
        // no page (OIDC Core 3.1.2.1), the app hears `login_required`.
        let connection = match &req.connection {
            Some(c) => match ConnectionId::parse(c).ok().filter(|c| connection_ids.contains(c)) {
                Some(c) if active_ids.contains(&c) => Some(c),
                Some(c) => {
                    tracing::info!(reason = "authorize.connection_not_active", tenant = %tenant.id, connection = %c);
                    // prompt=none shows no page (OIDC Core 3.1.2.1).
                    if req.prompt_none {
                        return error_to_app(&req, &issuer, "login_required", "The user is not signed in.");
                    }
                    return page(
                        403,
                        "This sign-in is not available yet",
                        format!(
                            "{}'s connection {c} is not active yet (it waits for a successful test) or was disabled. Ask your IT administrator.",
                            tenant.name
                        ),
                        "authorize.connection_not_active",
                    );
                }
                None => return error_to_app(&req, &issuer, "invalid_request", "Unknown connection for this tenant."),
            },
            None => match active_ids.as_slice() {
                [] if req.prompt_none => {
                    tracing::info!(reason = "authorize.no_connection", tenant = %tenant.id, "prompt=none without a connection");
                    return error_to_app(&req, &issuer, "login_required", "The user is not signed in.");
                }
                [] => {
                    return page(
                        409,
                        "Single sign-on is not set up yet",
                        format!(
                            "{} has not connected an identity provider yet. Ask your IT administrator.",
                            tenant.name
                        ),
                        "authorize.no_connection",
                    )
                }
                [only] => Some(only.clone()),
                // A `login_hint` in a domain assigned to one of them goes there;
                // otherwise chosen below: the SSO session's connection, or the person's.
                _ => match hinted.as_slice() {
                    [only] => Some(only.clone()),
                    _ => None,
                },
            },
        };

        // Is there a usable SSO session?
        let require_mfa = tenant.settings.require_mfa || client.require_mfa;
        // The connections whose factors Portcullis checks itself, where the
        // tenant's `local_mfa` decides too.
        let own_factor: Vec<&ConnectionId> = active
            .iter()
            .filter(|r| second_factor::own_factor(&r.kind))
            .map(|r| &r.id)
            .collect();
        let reuse = Reuse {
            require_mfa,
            local_mfa: tenant.settings.local_mfa,
            own_factor: &own_factor,
        };
        match self
            .usable_session(sso, &tenant.id, &req, &reuse, hinted_sub.as_deref())
            .await
        {
            Ok(Some(s)) if active_ids.contains(&s.connection) => {
                crate::meter::sign_in_succeeded(tenant.id.as_str(), s.connection.as_str(), "sso.reused");
                tracing::info!(reason = "sso.reused", tenant = %tenant.id, connection = %s.connection, "signed in from the SSO session");
                return self.finish(&req, &s).await;
            }
            Ok(_) => {}
            Err(e) => return unavailable(e),
        }
        if req.prompt_none {
            tracing::info!(reason = "authorize.login_required", tenant = %tenant.id, client_id = %client_id, "prompt=none without a usable SSO session");
            return error_to_app(&req, &issuer, "login_required", "The user is not signed in.");
        }
        let Some(connection) = connection else {
            // Several connections take the hint's domain: the person chooses among those.
            let connections = if hinted.is_empty() { active_ids } else { hinted };
            return Outcome::ChooseConnection {
                params,
                tenant,
                connections,
            };
        };
        let Some(record) = active.into_iter().find(|r| r.id == connection) else {
            // Chosen above among the active records: cannot happen.
            return unavailable(StoreError::Corrupt(format!("connection {connection} vanished")));
        };
        let incarnation = config.and_then(|read| read.incarnation(&tenant, &connection));
        self.begin_upstream(req, &tenant, record, incarnation, require_mfa)
            .await
    }

    async fn resolve_tenant(
        &self,
        req: &AuthRequest,
        fresh: Option<&crate::tenant::FreshTenant>,
    ) -> Result<Option<Arc<Tenant>>, crate::tenant::RegistryError> {
        if let Some(t) = &req.tenant {
            return match TenantId::parse(t) {
                Ok(id) => match crate::tenant::FreshTenant::for_id(fresh, &id) {
                    Some(read) => Ok(Some(read)),
                    None => self.tenants.get(&id).await,
                },
                Err(_) => Ok(None),
            };
        }
        match req.login_hint.as_deref().and_then(email_domain) {
            Some(domain) => self.tenants.by_domain(&domain).await,
            None => Ok(None),
        }
    }

    /// The tenant and `sub` of an `id_token_hint`; `Err(None)` when it is
    /// not an ID token of this service, `Err(Some(_))` when the signing
    /// keys could not be read.
    async fn hinted(&self, hint: &str, issuer: &str) -> Result<(String, String), Option<crate::tokens::TokenError>> {
        let claims = match self
            .provider
            .keys
            .verify_id_token_hint::<serde_json::Value>(hint, issuer)
            .await
        {
            Ok(claims) => claims,
            Err(e @ crate::tokens::TokenError::Invalid(_)) => {
                tracing::debug!(error = %e, "id_token_hint refused");
                return Err(None);
            }
            Err(e) => return Err(Some(e)),
        };
        let claim = |n: &str| claims.get(n).and_then(serde_json::Value::as_str).map(str::to_owned);
        // An access token is signed by the same keys: only an ID token (it
        // names its tenant and has no `scope`) is a hint.
        match (claim("tenant"), claim("sub"), claims.get("scope")) {
            (Some(tenant), Some(sub), None) => Ok((tenant, sub)),
            _ => Err(None),
        }
    }

    async fn usable_session(
        &self,
        sso: &BrowserSso,
        tenant: &TenantId,
        req: &AuthRequest,
        reuse: &Reuse<'_>,
        hinted_sub: Option<&str>,
    ) -> Result<Option<SsoSession>, StoreError> {
        if req.prompt_login {
            return Ok(None);
        }
        let Some(s) = session::load(&self.store, sso, tenant).await? else {
            return Ok(None);
        };
        if hinted_sub.is_some_and(|sub| sub != s.sub) {
            tracing::info!(reason = "sso.not_the_hinted_user", tenant = %tenant, "SSO session of another user than id_token_hint names not reused");
            return Ok(None);
        }
        // A session of a deleted, disabled or superseded user is not reused.
        if let Err(why) = self
            .provider
            .directory
            .active_at(tenant, &s.sub, &s.connection, None)
            .await?
            .1
        {
            tracing::info!(reason = "sso.user_inactive", tenant = %tenant, inactive = why.as_str(), "SSO session not reused");
            session::end(&self.store, tenant, &s.sid).await?;
            return Ok(None);
        }
        if req.connection.as_deref().is_some_and(|c| c != s.connection.as_str()) {
            return Ok(None);
        }
        if reuse.require_mfa && !s.mfa {
            tracing::info!(reason = "sso.mfa_required", tenant = %tenant, "SSO session without MFA not reused");
            return Ok(None);
        }
        // Portcullis's own second factor, as a sign-in now would ask for it
        // (`second_factor_step`): a session opened before the tenant set
        // `local_mfa`, or before its user enrolled, is not reused without it.
        if !s.mfa && reuse.own_factor.contains(&&s.connection) {
            let needed = match reuse.local_mfa {
                LocalMfa::Off => false,
                LocalMfa::Required => true,
                LocalMfa::Optional => self.usable_second_factor(tenant, &s.sub).await?,
            };
            if needed {
                tracing::info!(reason = "sso.mfa_required", tenant = %tenant, local_mfa = ?reuse.local_mfa, "SSO session without the second factor not reused");
                return Ok(None);
            }
        }
        let now = self.provider.clock.unix();
        if s.expires_at.is_some_and(|end| now >= end) {
            return Ok(None);
        }
        if let Some(max_age) = req.max_age {
            // max_age=0 is prompt=login (OIDC Core §3.1.2.1), even within the
            // same second; an undated authentication is never fresh enough.
            if max_age == 0 || s.undated || now.saturating_sub(s.auth_time) > max_age {
                tracing::info!(reason = "sso.too_old_for_max_age", tenant = %tenant, undated = s.undated, "SSO session not reused");
                return Ok(None);
            }
        }
        Ok(Some(s))
    }

    async fn begin_upstream(
        &self,
        req: AuthRequest,
        tenant_record: &Tenant,
        record: Arc<crate::upstream::Connection>,
        // The incarnations, when read with the record in this request.
        known: Option<crate::tenant::Incarnation>,
        require_mfa: bool,
    ) -> Outcome {
        let tenant = tenant_record.id.clone();
        let connection = record.id.clone();
        let connector = match self.connectors.for_record(&record, &self.upstream) {
            Ok(c) => c,
            Err(e) => return self.upstream_failed(Some(&req), &tenant, &connection, e),
        };
        let login_id = crate::tokens::random_token(24);
        let begin = BeginRequest {
            login_id: &login_id,
            force_authn: req.prompt_login || req.max_age == Some(0),
            login_hint: req.login_hint.as_deref(),
            max_age: req.max_age,
            require_mfa,
        };
        let started = match connector.begin(begin).await {
            Ok(b) => b,
            Err(e) => return self.upstream_failed(Some(&req), &tenant, &connection, e),
        };
        // The tenant record resolved for this request gives the tenant's
        // incarnation, and the connection record re-validated in it shows
        // the connection exists; the connection's incarnation was read in
        // the same script as that record (else it is read now).
        let incarnation = match known {
            Some(inc) => inc,
            None => match self.tenants.incarnation_of_record(tenant_record, &record).await {
                Ok(inc) => inc,
                Err(e) => return unavailable(e),
            },
        };
        // Every answer is finished where the browser's session cookie is
        // present (the OIDC callback, the SAML continuation), so every pending
        // login is bound to the browser that started it.
        let binding = Some((login_id.clone(), crate::tokens::random_token(24)));
        let pending = PendingLogin {
            tenant: tenant.clone(),
            connection: connection.clone(),
            request: req,
            connector_state: started.state,
            browser_binding: binding
                .as_ref()
                .map(|(_, secret)| crate::tokens::sha256_base64url(secret.as_bytes())),
            started_at: self.provider.clock.unix(),
            incarnation: Some(incarnation),
            test: None,
        };
        if let Err(e) = self
            .store
            .put_json(&pending_key(&tenant, &login_id), &pending, Some(self.login_ttl))
            .await
        {
            return unavailable(e);
        }
        crate::telemetry::tag_span(tenant.as_str(), Some(connection.as_str()));
        tracing::info!(reason = "login.started", tenant = %tenant, connection = %connection, "sent to the IdP");
        Outcome::Upstream {
            redirect: started.redirect,
            binding,
        }
    }

    fn upstream_failed(
        &self,
        req: Option<&AuthRequest>,
        tenant: &TenantId,
        connection: &ConnectionId,
        e: UpstreamError,
    ) -> Outcome {
        if e.internal {
            tracing::error!(reason = e.code, tenant = %tenant, connection = %connection, detail = %e.detail, "upstream failure");
        } else {
            tracing::warn!(reason = e.code, tenant = %tenant, connection = %connection, detail = %e.detail, "upstream response rejected");
        }
        let error = if e.internal {
            "temporarily_unavailable"
        } else {
            "access_denied"
        };
        match req {
            // A refusal about the person's account is theirs to read.
            Some(r) if !e.shown => error_to_app(r, &self.provider.iss(), error, &e.message),
            _ if e.store => unavailable(&e.detail),
            _ => page(if e.internal { 502 } else { 400 }, "Sign-in failed", e.message, e.code),
        }
    }

    /// Issues a code for `req` from session `s` and sends the browser to the app.
    async fn finish(&self, req: &AuthRequest, s: &SsoSession) -> Outcome {
        let authz = self.authorization(req, s);
        let code = match self.provider.issue_code(&authz).await {
            Ok(c) => c,
            Err(e) => return unavailable(e),
        };
        self.redirect_with_code(req, &code)
    }

    /// What a code for `req` from session `s` grants.
    fn authorization(&self, req: &AuthRequest, s: &SsoSession) -> Authorization {
        Authorization {
            tenant: s.tenant.clone(),
            connection: s.connection.clone(),
            client_id: req.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            scope: req.scope.clone(),
            nonce: req.nonce.clone(),
            code_challenge: req.code_challenge.clone(),
            sub: s.sub.clone(),
            sid: s.sid.clone(),
            auth_time: s.auth_time,
            amr: s.amr.clone(),
            resource: req.resource.clone(),
            session_expires_at: s.expires_at,
            acr: s.acr.clone(),
            upstream_session: s.upstream,
            client_registered_at: req.client_registered_at,
        }
    }

    /// Sends the browser to the app with `code` (and the request's state).
    fn redirect_with_code(&self, req: &AuthRequest, code: &str) -> Outcome {
        let mut params = vec![("code", code)];
        if let Some(st) = &req.state {
            params.push(("state", st));
        }
        match app_redirect(&req.redirect_uri, &self.provider.iss(), &params) {
            Some(u) => Outcome::App(u),
            None => page(
                400,
                "Sign-in failed",
                "The application's address is invalid.",
                "authorize.bad_redirect_uri",
            ),
        }
    }

    /// The app redirect URI a pending login of connection `c` will end at,
    /// read without consuming the login (`None`: no such login, or one of
    /// another connection). For pages of ours whose forms lead back to the
    /// app through redirects (their CSP `form-action`), e.g. local sign-in.
    pub async fn pending_redirect_uri(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        login_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get_json::<PendingLogin>(&pending_key(t, login_id))
            .await?
            .filter(|p| &p.connection == c)
            .map(|p| p.request.redirect_uri))
    }

    /// Ends the browser's SSO sessions (all tenants), with the sessions
    /// each replaced ([`SsoSession::replaces`]) and the one `hint` names
    /// (see [`LogoutHint`]), and revokes their refresh tokens.
    pub async fn logout(&self, sso: &BrowserSso, hint: Option<&LogoutHint>) -> Result<(), StoreError> {
        for (tenant, sid) in sso {
            let Ok(t) = TenantId::parse(tenant) else {
                continue;
            };
            let current = session::get(&self.store, &t, sid).await?;
            let mut ending = vec![sid.clone()];
            if let Some(s) = &current {
                ending.extend(s.replaces.iter().cloned());
            }
            // The hint's own session, when this browser is signed in here
            // as the hint's user and the session (if still stored) is theirs.
            if let Some(h) = hint.filter(|h| h.tenant == *tenant && !ending.contains(&h.sid)) {
                if current.as_ref().is_some_and(|s| s.sub == h.sub)
                    && session::get(&self.store, &t, &h.sid)
                        .await?
                        .is_none_or(|hinted| hinted.sub == h.sub)
                {
                    ending.push(h.sid.clone());
                }
            }
            for sid in &ending {
                self.end_session(&t, sid).await?;
            }
        }
        Ok(())
    }

    /// Ends the SSO session `sid`: its record and the IdP's refresh token
    /// kept for it go and its tombstone is written (one script), before its
    /// families are revoked: a code of the session redeemed since is
    /// refused, and one being redeemed either finds the tombstone or has
    /// listed its family where the revocation finds it.
    pub(crate) async fn end_session(&self, tenant: &TenantId, sid: &str) -> Result<(), StoreError> {
        session::end(&self.store, tenant, sid).await?;
        self.provider.revoke_session_families(tenant, sid).await
    }
}

/// What decides whether an SSO session may answer an authorization
/// request without a sign-in, besides the request itself.
struct Reuse<'a> {
    /// The tenant or the app requires MFA.
    require_mfa: bool,
    /// The tenant's `local_mfa`.
    local_mfa: LocalMfa,
    /// The active connections whose factors Portcullis checks itself.
    own_factor: &'a [&'a ConnectionId],
}

/// What a sign-out's `id_token_hint` says: its tenant, `sid` and `sub`
/// (signature checked). Its session ends with the browser's session at
/// that tenant when both are the same user's: an app's ID token may name a
/// session the browser replaced by signing in again.
#[derive(Debug, Clone)]
pub struct LogoutHint {
    /// The hint's `tenant` claim.
    pub tenant: String,
    /// The hint's `sid` claim.
    pub sid: String,
    /// The hint's `sub` claim.
    pub sub: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_edge_made_serve_only_the_parameters_they_were_made_for() {
        let names = ("app".to_owned(), Some("acme".to_owned()), Some("okta".to_owned()));
        let prefetched = PrefetchedAuthorize {
            names: names.clone(),
            client: None,
            config: None,
        };
        assert!(prefetched.reads_for(&names).is_some());
        let others = [
            ("other".to_owned(), names.1.clone(), names.2.clone()),
            (names.0.clone(), Some("evil".to_owned()), names.2.clone()),
            (names.0.clone(), None, names.2.clone()),
            (names.0.clone(), names.1.clone(), None),
            (names.0.clone(), names.1.clone(), Some("entra".to_owned())),
        ];
        for other in others {
            assert!(prefetched.reads_for(&other).is_none(), "{other:?}");
        }
    }
}
