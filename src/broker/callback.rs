//! The second half of a sign-in: the IdP's answer comes back (OIDC
//! callback, SAML ACS, dev IdP). Find the pending login, check it belongs
//! to this browser and consume it, let the connector validate, provision
//! the user, open the SSO session and hand the app a code.
//!
//! A pending login is single use, like an OAuth `state`: the first answer
//! that names it ends it, whether or not that answer then validates; a
//! second one gets `callback.unknown_login`. An answer that arrives with
//! the browser's cookies ends it only if its browser holds the login's
//! binding: one from another browser is refused
//! (`callback.browser_mismatch`) and leaves the login to the browser that
//! started it. The SAML ACS, reached without cookies, ends the login its
//! RelayState names (a secret of the browser and the IdP); its binding is
//! checked at the continuation.
//!
//! An answer that arrives as a top-level GET (OIDC, dev IdP) carries the
//! browser's SameSite=Lax session cookie and is finished at once
//! ([`Broker::complete`]). A SAML answer arrives as a cross-site POST without
//! it, so it is finished in two steps: the POST validates and keeps the result
//! under a one-time handle ([`Broker::accept_post`]) and sends the browser to a
//! same-site GET, where the cookie is present, the browser binding is checked
//! and only then the session opened and the code issued ([`Broker::resume`]).
//! Whoever posts a response to the ACS from someone else's browser (login
//! CSRF) thus cannot open a session there.
//!
//! An IdP-initiated answer names no pending login, so no browser binding
//! says who started it: anyone with an account at the tenant's IdP could
//! have posted it from this browser. It opens a session only once the
//! person confirms it on a Portcullis page (a CSRF-protected form, which a
//! cross-site page cannot post with the browser's cookie), unless this
//! browser is already signed in to the tenant as that very user.

use super::session::{self, BrowserLogins, BrowserSso, SsoSession};
use super::{error_to_app, page, pending_key, unavailable, Alongside, Broker, Outcome, PendingLogin};
use crate::broker::authorize::AuthRequest;
use crate::directory::{Inactive, ProvisionError, Provisioned};
use crate::ids::{ConnectionId, TenantId};
use crate::meter;
use crate::store::{Key, StoreJson};
use crate::tenant::FreshTenant;
use crate::upstream::{CallbackParams, Identity};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::Url;

/// The window in which a tenant's audit log gets one refused answer that
/// anyone can send, per connection and reason: without a pending login
/// ([`Broker::no_pending_login`]), or from a browser without the binding of
/// the login it names (`callback.browser_mismatch` at a callback).
const ANONYMOUS_AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// How long the browser has to follow the ACS's redirect to the continuation.
pub const CONTINUE_TTL: Duration = Duration::from_secs(120);

/// How long a person has to confirm (or cancel) an IdP-initiated sign-in.
pub const CONFIRM_TTL: Duration = Duration::from_secs(600);

/// The longest handle accepted (handles are 32 random bytes, base64url).
const MAX_HANDLE_LEN: usize = 128;

/// The longest pending-login id looked up (ids are 32 random bytes, base64url).
const MAX_LOGIN_ID_LEN: usize = 128;

/// The parameter an answer's route names its pending login in: every
/// connector answering at that route names it there (the SAML ACS in
/// `RelayState`, the OIDC, local and dev callbacks in `state`), so the
/// pending login can be taken before the connection is known.
#[derive(Clone, Copy)]
enum LoginIdIn {
    /// The query's `state` (a top-level GET callback).
    Query,
    /// The form's `RelayState` (the SAML ACS).
    RelayState,
}

impl LoginIdIn {
    fn of(self, params: &CallbackParams) -> Option<&str> {
        match self {
            Self::Query => params.query.get("state"),
            Self::RelayState => params.form.get("RelayState"),
        }
        .map(String::as_str)
    }
}

/// Where the browser binding of a pending login is checked.
pub enum BrowserCheck<'a> {
    /// The answer arrived as a top-level GET carrying the session cookie
    /// (OIDC callback, dev IdP): checked before the answer is validated.
    Now(&'a mut BrowserLogins),
    /// The answer arrived as a cross-site POST without the cookie (SAML ACS):
    /// checked at the same-site continuation ([`Broker::resume`]).
    AtContinuation,
}

/// What an IdP's answer reads first, read by the edge beside its rate
/// limiting ([`Broker::prefetch_callback`]): the configuration of the
/// connection its route names, and the pending login it names, only
/// peeked (read, not consumed). The handler uses them when they were read
/// for exactly its route and login id, and then consumes the pending login
/// itself, alongside its next reads (one store wait less per sign-in).
pub struct PrefetchedCallback {
    /// The route's tenant and connection, and the login id, read for.
    names: (String, String, String),
    /// The connection's connector, record and configuration snapshot.
    read: ConnectionRead,
    /// The pending login as peeked, `None` when there is none.
    pending: Option<PendingLogin>,
}

impl PrefetchedCallback {
    /// Whether the answer names a pending login of `tenant` (as peeked)
    /// that it will end: the sign-in of one of the tenant's people, which
    /// the edge lets spend the tenant's own callback budget. `bindings`:
    /// the login bindings the answer's browser presents, for an answer
    /// that arrives with the browser's cookies (a callback), which ends
    /// only a login that browser holds the binding of; `None` for one
    /// without them (the SAML ACS), which ends the login it names whoever
    /// posts it. Either way no second answer naming that login counts:
    /// the first ended it.
    pub fn names_pending_login_of(&self, tenant: &TenantId, bindings: Option<&BrowserLogins>) -> bool {
        let Some(p) = self.pending.as_ref().filter(|_| self.names.0 == tenant.as_str()) else {
            return false;
        };
        match (bindings, &p.browser_binding) {
            (Some(logins), Some(expected)) => logins
                .iter()
                .any(|(id, secret)| *id == self.names.2 && binding_matches(secret, expected)),
            _ => true,
        }
    }
}

/// A callback's connection as [`super::connectors::Connectors::get_with_config`] answers it.
type ConnectionRead = (
    std::sync::Arc<dyn crate::upstream::Connector>,
    std::sync::Arc<crate::upstream::Connection>,
    crate::tenant::snapshot::ConfigSnapshot,
);

/// What the person answered on the confirmation page of an IdP-initiated
/// sign-in ([`Outcome::ConfirmSignIn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// No answer: the browser came straight from the ACS.
    NotAsked,
    /// The person chose to continue on the form (the edge checked its CSRF
    /// token).
    Continue,
}

/// A continuation handle as taken by [`Broker::take_continuation`]: the
/// validated answer it named (`None`: unknown, used or expired), or the
/// refusal when the store failed. Opaque outside the broker.
pub struct Continuation(Result<Option<Box<Validated>>, Outcome>);

/// An IdP answer that passed every check, with its user provisioned, that is
/// not an SSO session yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validated {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// The app's request (or the default app's, IdP-initiated).
    pub request: AuthRequest,
    /// The provisioned user.
    pub sub: String,
    /// What the IdP asserted.
    pub identity: Identity,
    /// When the person authenticated (the IdP's word, checked against the
    /// app's `max_age` / `prompt=login`).
    pub auth_time: i64,
    /// The SSO session's hard end, if the IdP or the connection sets one.
    #[serde(default)]
    pub session_end: Option<i64>,
    /// The pending login's id and the hash of its browser secret; `None` for
    /// an IdP-initiated login, which no browser started.
    pub login: Option<(String, Option<String>)>,
    /// Whether the IdP's answer showed multi-factor authentication.
    #[serde(default)]
    pub mfa: bool,
    /// The tenant's own SSO session lifetime, from the tenant record read
    /// while validating (`None`: the default lifetime).
    #[serde(default)]
    pub session_ttl_secs: Option<u64>,
    /// Whether Portcullis checks this connection's factors itself (local
    /// accounts, the dev IdP), so its own second factor applies.
    #[serde(default)]
    pub own_factor: bool,
    /// Whether the tenant or the app required MFA when the answer arrived.
    #[serde(default)]
    pub mfa_demanded: bool,
    /// What the confirmation page of an IdP-initiated answer names, as read
    /// while validating; `None` for an answer to a pending login (or one
    /// kept by an earlier version: the page then shows the ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsolicited: Option<UnsolicitedNames>,
}

/// The names a person reads on the confirmation page of an IdP-initiated
/// sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsolicitedNames {
    /// The default app's registered name.
    pub app: String,
    /// The tenant's name.
    pub organization: String,
}

/// What [`Broker::accept`] decided about a validated answer.
struct Accepted {
    sub: String,
    identity: Identity,
    auth_time: i64,
    session_end: Option<i64>,
    mfa: bool,
    own_factor: bool,
    mfa_demanded: bool,
}

/// Where a validated answer waits for the browser: the handle's hash, so the
/// store never holds the handle itself.
fn continue_key(t: &TenantId, handle: &str) -> Key {
    Key::tenant(
        t.as_str(),
        "login",
        format!("continue:{}", crate::tokens::sha256_base64url(handle.as_bytes())),
    )
}

fn browser_mismatch(tenant: &TenantId, connection: &ConnectionId) -> Outcome {
    tracing::warn!(reason = "callback.browser_mismatch", tenant = %tenant, connection = %connection);
    page(
        400,
        "Sign-in failed",
        "This sign-in was started in another browser or its session has ended. Please start again from the application.",
        "callback.browser_mismatch",
    )
}

/// Takes the browser's secret for `login_id` out of `logins` and compares its
/// hash with `expected` in constant time.
fn browser_holds(logins: &mut BrowserLogins, login_id: &str, expected: &str) -> bool {
    let presented = logins
        .iter()
        .position(|(id, _)| id == login_id)
        .map(|i| logins.remove(i).1);
    presented.is_some_and(|s| binding_matches(&s, expected))
}

/// Whether the hash of a browser's `secret` is the binding `expected`
/// (compared in constant time).
fn binding_matches(secret: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    crate::tokens::sha256_base64url(secret.as_bytes())
        .as_bytes()
        .ct_eq(expected.as_bytes())
        .into()
}

impl Broker {
    /// The IdP's answer as a top-level GET with the session cookie (OIDC
    /// callback, dev IdP): validate, open the SSO session, issue the code.
    pub async fn complete(
        &self,
        tenant: &str,
        connection: &str,
        params: CallbackParams,
        sso: &mut BrowserSso,
        logins: &mut BrowserLogins,
        fresh: Option<&FreshTenant>,
    ) -> Outcome {
        self.complete_alongside(tenant, connection, params, sso, logins, fresh, None, None)
            .await
    }

    /// [`Self::complete`], running `alongside` with the new SSO session's
    /// writes (see [`Alongside`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_alongside(
        &self,
        tenant: &str,
        connection: &str,
        params: CallbackParams,
        sso: &mut BrowserSso,
        logins: &mut BrowserLogins,
        fresh: Option<&FreshTenant>,
        alongside: Option<Alongside<'_>>,
        prefetched: Option<&PrefetchedCallback>,
    ) -> Outcome {
        match self
            .validate(
                tenant,
                connection,
                params,
                LoginIdIn::Query,
                BrowserCheck::Now(logins),
                fresh,
                prefetched,
            )
            .await
        {
            Ok(v) => self.open(v, sso, alongside).await,
            Err(o) => o,
        }
    }

    /// The reads an IdP's answer at `tenant`/`connection` naming the
    /// pending login `login_id` starts with, for the edge to run beside its
    /// rate limiting: the connection's configuration (without the tenant
    /// record, which the edge's limiting reads and hands on) and the
    /// pending login, peeked. `None` when a name cannot be one or a read
    /// failed: the handler then reads (and takes) as it always did.
    pub async fn prefetch_callback(
        &self,
        tenant: String,
        connection: String,
        login_id: String,
    ) -> Option<PrefetchedCallback> {
        let (Ok(t), Ok(c)) = (TenantId::parse(&tenant), ConnectionId::parse(&connection)) else {
            return None;
        };
        if login_id.is_empty() || login_id.len() > MAX_LOGIN_ID_LEN {
            return None;
        }
        let key = pending_key(&t, &login_id);
        let (read, pending) = tokio::join!(
            self.connectors
                .get_with_config(&self.tenants, &self.upstream, &t, &c, false),
            self.store.get_json::<PendingLogin>(&key)
        );
        Some(PrefetchedCallback {
            names: (tenant, connection, login_id),
            read: read.ok()?,
            pending: pending.ok()?,
        })
    }

    /// Whether `login_id` names a pending login of `tenant` whose binding
    /// the browser holds (`logins`: login id and secret, from its bindings
    /// cookie): the browser started that sign-in of the tenant. Only the
    /// login the request itself names counts, never another the browser
    /// holds. For the edge, only when the tenant's anonymous callback
    /// budget is spent (the pending login is read then, never otherwise).
    pub async fn binds_login(&self, tenant: &TenantId, login_id: &str, logins: &BrowserLogins) -> bool {
        if login_id.is_empty() || login_id.len() > MAX_LOGIN_ID_LEN {
            return false;
        }
        if !logins.iter().any(|(id, _)| id == login_id) {
            return false;
        }
        let Ok(Some(p)) = self
            .store
            .get_json::<PendingLogin>(&pending_key(tenant, login_id))
            .await
        else {
            return false;
        };
        let Some(expected) = p.browser_binding.as_deref() else {
            return false;
        };
        logins
            .iter()
            .any(|(id, secret)| id == login_id && binding_matches(secret, expected))
    }

    /// The SAML ACS (a cross-site POST without the session cookie): validate,
    /// keep the result under a one-time handle and send the browser to the
    /// same-site continuation. Opens no session and issues no code.
    /// `fresh`: the tenant record the edge read for this request, if any;
    /// `prefetched`: what the edge read for it beside its rate limiting.
    pub async fn accept_post(
        &self,
        tenant: &str,
        connection: &str,
        params: CallbackParams,
        fresh: Option<&FreshTenant>,
        prefetched: Option<&PrefetchedCallback>,
    ) -> Outcome {
        let mut v = match self
            .validate(
                tenant,
                connection,
                params,
                LoginIdIn::RelayState,
                BrowserCheck::AtContinuation,
                fresh,
                prefetched,
            )
            .await
        {
            Ok(v) => v,
            Err(o) => return o,
        };
        // Every attribute the IdP sent, as received, served the mapping and
        // provisioning; nothing after the continuation reads them (the
        // session takes `amr` and `acr`, the code the user's id). Kept, a
        // Response with many attributes or groups would carry them all
        // through the store, written here and read back at the continuation
        // (`docs/PERFORMANCE.md`, "How the cost grows").
        v.identity.raw.clear();
        let handle = match self.stash(&v, CONTINUE_TTL).await {
            Ok(h) => h,
            Err(o) => return o,
        };
        let mut url = self
            .upstream
            .public(&format!("saml/{}/{}/continue", v.tenant, v.connection));
        url.query_pairs_mut().append_pair("handle", &handle);
        tracing::info!(reason = "callback.validated", tenant = %v.tenant, connection = %v.connection, "answer validated, continuing in the browser");
        Outcome::Continue(url)
    }

    /// Keeps `v` under a fresh one-time handle; returns the handle.
    async fn stash(&self, v: &Validated, ttl: Duration) -> Result<String, Outcome> {
        let handle = crate::tokens::random_token(32);
        self.store
            .put_json(&continue_key(&v.tenant, &handle), v, Some(ttl))
            .await
            .map_err(unavailable)?;
        Ok(handle)
    }

    /// The same-site continuation of an ACS answer, with the session cookie:
    /// consume the handle, check the browser started this login, and open the
    /// session. An IdP-initiated login (no browser started it) opens a
    /// session only once the person confirmed it, unless this browser is
    /// already signed in to the tenant as that user: otherwise
    /// [`Outcome::ConfirmSignIn`] asks first, and `confirmation` says what
    /// the person answered (the edge checked the form's CSRF token).
    pub async fn resume(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        confirmation: Confirmation,
        sso: &mut BrowserSso,
        logins: &mut BrowserLogins,
    ) -> Outcome {
        let taken = self.take_continuation(tenant, handle).await;
        self.resume_taken(tenant, connection, taken, confirmation, sso, logins, None)
            .await
    }

    /// Ends the sign-in waiting under `handle` for its confirmation without
    /// a session or a code: the person cancelled it on the page, or a
    /// confirmation was refused (`reason`: its CSRF token was missing or
    /// wrong). Consumed either way, so a refused confirmation cannot be
    /// tried again, and each waiting sign-in (one per ACS answer, which is
    /// rate-limited) is audited at most once. A handle naming nothing is
    /// only logged: the continuation is not rate-limited, so made-up
    /// handles must not write audit events.
    pub async fn end_continuation(&self, tenant: &str, handle: &str, reason: &'static str) -> Result<(), Outcome> {
        match self.take_continuation(tenant, handle).await.0? {
            // Found under the route's tenant: its ids are the registry's.
            Some(v) => {
                tracing::warn!(reason, tenant = %v.tenant, connection = %v.connection, "IdP-initiated sign-in not confirmed; no session opened");
                // Counted, audited and listed with the tenant's failed
                // sign-ins, where its admins look for what went wrong.
                self.record_failure(&v.tenant, Some(&v.connection), reason).await;
            }
            None => {
                // The ids come from the URL alone: not logged until known.
                tracing::warn!(reason, "confirmation of an unknown or used sign-in; nothing to end");
            }
        }
        Ok(())
    }

    /// The first step of [`Self::resume`]: consumes the one-time handle
    /// (single use: whatever follows, it is gone). Needs nothing of the
    /// browser's session, so the edge runs it concurrently with reading
    /// that session (one store wait for both).
    pub async fn take_continuation(&self, tenant: &str, handle: &str) -> Continuation {
        let Ok(tenant) = TenantId::parse(tenant) else {
            // `resume_taken` refuses the address.
            return Continuation(Ok(None));
        };
        if handle.is_empty() || handle.len() > MAX_HANDLE_LEN {
            return Continuation(Ok(None));
        }
        match self.store.take_json::<Validated>(&continue_key(&tenant, handle)).await {
            Ok(v) => Continuation(Ok(v.map(Box::new))),
            Err(e) => Continuation(Err(unavailable(e))),
        }
    }

    /// The rest of [`Self::resume`], on the handle taken by
    /// [`Self::take_continuation`], running `alongside` with the new SSO
    /// session's writes (see [`Alongside`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn resume_taken(
        &self,
        tenant: &str,
        connection: &str,
        taken: Continuation,
        confirmation: Confirmation,
        sso: &mut BrowserSso,
        logins: &mut BrowserLogins,
        alongside: Option<Alongside<'_>>,
    ) -> Outcome {
        let (Ok(tenant), Ok(connection)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
            meter::sign_in_failed(meter::UNKNOWN, meter::UNKNOWN, "callback.unknown_connection");
            return page(
                404,
                "Unknown sign-in address",
                "This sign-in address does not exist.",
                "callback.unknown_connection",
            );
        };
        let v = match taken.0 {
            Ok(v) => v.map(|v| *v),
            Err(o) => return o,
        };
        let Some(v) = v else {
            // The ids come from the URL alone: not a label until known, and
            // no audit event either. The continuation is not rate-limited
            // (it follows an ACS that was), so an event per made-up handle
            // would let anyone push a tenant's real events out of its
            // bounded log, or create a log for a tenant that does not exist.
            meter::sign_in_failed(meter::UNKNOWN, meter::UNKNOWN, "callback.unknown_handle");
            tracing::warn!(reason = "callback.unknown_handle", tenant = %tenant, connection = %connection);
            return page(
                400,
                "Sign-in failed",
                "This sign-in has expired or was already used. Please start again from the application.",
                "callback.unknown_handle",
            );
        };
        if v.tenant != tenant || v.connection != connection {
            meter::sign_in_failed(v.tenant.as_str(), v.connection.as_str(), "callback.login_mismatch");
            tracing::warn!(reason = "callback.login_mismatch", tenant = %tenant, connection = %connection);
            self.audit_failure(&tenant, Some(&connection), "callback.login_mismatch")
                .await;
            return page(
                400,
                "Sign-in failed",
                "This answer does not belong to the sign-in that was started.",
                "callback.login_mismatch",
            );
        }
        match &v.login {
            Some((login_id, Some(expected))) => {
                if !browser_holds(logins, login_id, expected) {
                    meter::sign_in_failed(tenant.as_str(), connection.as_str(), "callback.browser_mismatch");
                    self.audit_failure(&tenant, Some(&connection), "callback.browser_mismatch")
                        .await;
                    return browser_mismatch(&tenant, &connection);
                }
            }
            Some((_, None)) => {}
            None if confirmation == Confirmation::Continue => {
                tracing::info!(reason = "callback.unsolicited_confirmed", tenant = %tenant, connection = %connection);
            }
            None => {
                // No browser started this sign-in: whoever holds an account
                // at the tenant's IdP may have posted it from this browser
                // (login CSRF). Only a browser already signed in to the
                // tenant as that very user is not asked: nothing about who
                // is signed in changes.
                let current = match session::load(&self.store, sso, &tenant).await {
                    Ok(s) => s,
                    Err(e) => return unavailable(e),
                };
                let replaces = match current {
                    Some(s) if s.sub == v.sub => None,
                    Some(_) => Some(true),
                    None => Some(false),
                };
                if let Some(replaces) = replaces {
                    return self.ask_confirmation(v, replaces).await;
                }
            }
        }
        self.open(v, sso, alongside).await
    }

    /// Keeps the IdP-initiated answer `v` for its confirmation (a fresh
    /// handle, [`CONFIRM_TTL`]) and asks the person: [`Outcome::ConfirmSignIn`].
    async fn ask_confirmation(&self, v: Validated, replaces: bool) -> Outcome {
        let reason = if replaces {
            "callback.switch_needs_confirmation"
        } else {
            "callback.unsolicited_needs_confirmation"
        };
        tracing::info!(reason, tenant = %v.tenant, connection = %v.connection, "IdP-initiated sign-in waits for the person's confirmation");
        let handle = match self.stash(&v, CONFIRM_TTL).await {
            Ok(h) => h,
            Err(o) => return o,
        };
        let who = v.identity.email.or(v.identity.name).unwrap_or(v.identity.subject);
        let (app_name, organization) = match v.unsolicited {
            Some(names) => (names.app, names.organization),
            None => (v.request.client_id.clone(), v.tenant.to_string()),
        };
        Outcome::ConfirmSignIn(super::ToConfirm {
            tenant: v.tenant,
            connection: v.connection,
            handle,
            who,
            app_name,
            organization,
            replaces,
            app: v.request.redirect_uri,
        })
    }

    /// Takes the pending login the answer refers to, checks it (and, with
    /// [`BrowserCheck::Now`], the browser), lets the connector validate the
    /// answer, and provisions the user.
    #[allow(clippy::too_many_arguments)]
    async fn validate(
        &self,
        tenant: &str,
        connection: &str,
        params: CallbackParams,
        login_id_in: LoginIdIn,
        check: BrowserCheck<'_>,
        fresh: Option<&FreshTenant>,
        prefetched: Option<&PrefetchedCallback>,
    ) -> Result<Validated, Outcome> {
        let (Ok(tenant), Ok(connection)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
            meter::sign_in_failed(meter::UNKNOWN, meter::UNKNOWN, "callback.unknown_connection");
            return Err(page(
                404,
                "Unknown sign-in address",
                "This sign-in address does not exist.",
                "callback.unknown_connection",
            ));
        };
        // The record read here also answers whether the connection is
        // active, below: one read of it per callback.
        // config: the connection record, its incarnation and (unless the
        // edge read it) the tenant record, in one store operation.
        // The pending login is named by the route's own parameter, so it is
        // read while the connection is read (one store wait for both). It
        // is single use: the first answer that names it ends it, whatever
        // follows (the id is a secret of the browser and the IdP), except
        // an answer from a browser that does not hold its binding, which
        // must not end someone else's sign-in. So where the browser is
        // checked now, the login is only peeked here and consumed once the
        // check passed; at the ACS (checked at the continuation) it is
        // taken at once.
        let checks_now = matches!(check, BrowserCheck::Now(_));
        let route_login_id = login_id_in
            .of(&params)
            .filter(|id| id.len() <= MAX_LOGIN_ID_LEN)
            .map(str::to_owned);
        // What the edge read for exactly this route and login id, beside
        // its rate limiting: then the pending login was only peeked, and is
        // owed: consumed alongside the reads that follow the answer's
        // validation, or on the way out whatever else refused the answer.
        let prefetched = prefetched.filter(|p| {
            p.names.0 == tenant.as_str()
                && p.names.1 == connection.as_str()
                && route_login_id.as_deref() == Some(p.names.2.as_str())
        });
        let (read, taken, mut owed) = match prefetched {
            Some(p) => (
                Ok(p.read.clone()),
                Ok(p.pending.clone()),
                p.pending.as_ref().map(|_| pending_key(&tenant, &p.names.2)),
            ),
            None => {
                let key = route_login_id.as_deref().map(|id| pending_key(&tenant, id));
                let (read, taken) = tokio::join!(
                    self.connectors.get_with_config(
                        &self.tenants,
                        &self.upstream,
                        &tenant,
                        &connection,
                        FreshTenant::for_id(fresh, &tenant).is_none(),
                    ),
                    async {
                        match &key {
                            Some(key) if checks_now => self.store.get_json::<PendingLogin>(key).await,
                            Some(key) => self.store.take_json::<PendingLogin>(key).await,
                            None => Ok(None),
                        }
                    }
                );
                let owed = key.filter(|_| checks_now && matches!(taken, Ok(Some(_))));
                (read, taken, owed)
            }
        };
        let validated = self
            .validate_read(
                tenant.clone(),
                connection.clone(),
                params,
                route_login_id.as_deref(),
                check,
                fresh,
                read,
                taken,
                &mut owed,
            )
            .await;
        if let Some(key) = owed {
            // An answer that names a pending login ends it, whatever
            // refused it (only on the way out of a refusal; a browser
            // without the login's binding left it owed to nobody).
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(
                    reason = "callback.login_not_consumed",
                    tenant = %tenant,
                    connection = %connection,
                    error = %e,
                    "the pending login of a refused answer could not be consumed; it expires on its own"
                );
            }
        }
        validated
    }

    /// [`Self::validate`] once the connection and the pending login are
    /// read: the pending login was taken, or only peeked and then `owed`
    /// names it until it is consumed here (or cleared, when the answer's
    /// browser does not hold its binding: the login is left alone).
    #[allow(clippy::too_many_arguments)]
    async fn validate_read(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        params: CallbackParams,
        route_login_id: Option<&str>,
        check: BrowserCheck<'_>,
        fresh: Option<&FreshTenant>,
        read: Result<ConnectionRead, crate::upstream::UpstreamError>,
        taken: Result<Option<PendingLogin>, crate::store::StoreError>,
        owed: &mut Option<Key>,
    ) -> Result<Validated, Outcome> {
        // The browser first, before anything else can refuse the answer
        // (and so end its pending login on the way out): an answer that
        // arrived with the browser's cookies, naming a pending login bound
        // to a browser, ends it only if that browser holds the binding.
        // Otherwise the login is left to the browser that started it.
        let holds = match (check, &taken, route_login_id) {
            (BrowserCheck::Now(logins), Ok(Some(p)), Some(id)) => p
                .browser_binding
                .as_deref()
                .is_none_or(|expected| browser_holds(logins, id, expected)),
            _ => true,
        };
        if !holds {
            *owed = None;
        }
        let (connector, record, config) = match read {
            Ok(c) => c,
            Err(e) => {
                // An id that names no connection stays out of the labels.
                if e.code == "callback.unknown_connection" {
                    meter::sign_in_failed(meter::UNKNOWN, meter::UNKNOWN, e.code);
                } else {
                    meter::sign_in_failed(tenant.as_str(), connection.as_str(), e.code);
                }
                return Err(self.upstream_failed(None, &tenant, &connection, e));
            }
        };
        if !holds {
            // Anyone can send the answer of a login of their own from
            // another browser, as often as the edge lets them: each is
            // counted and logged, the tenant's audit log and failed
            // sign-ins get one per connection and minute.
            self.record_anonymous_failure(&tenant, &connection, "callback.browser_mismatch")
                .await;
            return Err(browser_mismatch(&tenant, &connection));
        }
        // The pending login the IdP's answer refers to, read above. A
        // connector that names its logins in another parameter than the
        // route's (an ACS address of an OIDC connection) has none here (it
        // still ends on the way out: this browser may end it).
        let login_id = connector.login_id(&params).map(str::to_owned);
        let pending = match taken {
            Err(e) => return Err(unavailable(e)),
            Ok(p) if login_id.is_some() && login_id.as_deref() == route_login_id => p,
            Ok(_) => None,
        };
        if let Some(p) = &pending {
            if p.connection != connection || p.tenant != tenant {
                meter::sign_in_failed(tenant.as_str(), connection.as_str(), "callback.login_mismatch");
                tracing::warn!(reason = "callback.login_mismatch", tenant = %tenant, connection = %connection);
                self.audit_failure(&tenant, Some(&connection), "callback.login_mismatch")
                    .await;
                return Err(page(
                    400,
                    "Sign-in failed",
                    "This answer does not belong to the sign-in that was started.",
                    "callback.login_mismatch",
                ));
            }
        }
        // portal: a test sign-in ends here with its result; otherwise a
        // connection that is not active serves nobody. Its login is
        // consumed before the answer is looked at, so that of two answers
        // naming it (even at once) only the first keeps a result.
        if let Some((p, test)) = pending.as_ref().and_then(|p| p.test.as_ref().map(|t| (p, t))) {
            if let Some(key) = owed.take() {
                match self.store.delete(&key).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(self
                            .no_pending_login(
                                &tenant,
                                &connection,
                                "callback.unknown_login",
                                "the test sign-in was consumed by another answer meanwhile",
                            )
                            .await)
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            return Err(self.finish_test(connector, p, test, &params).await);
        }
        if record.status != crate::upstream::ConnectionStatus::Active {
            self.record_failure(&tenant, Some(&connection), "callback.connection_not_active")
                .await;
            return Err(super::testing::not_active(&tenant, &connection));
        }
        let (request, app_name) = match &pending {
            Some(p) => (p.request.clone(), None),
            None => match connector.unsolicited_target() {
                Some((client_id, redirect_uri)) => self
                    .unsolicited_request(&tenant, &client_id, &redirect_uri)
                    .await
                    .map(|(request, name)| (request, Some(name)))
                    .inspect_err(|o| {
                        if let Outcome::Page { reason, .. } = o {
                            meter::sign_in_failed(tenant.as_str(), connection.as_str(), reason);
                        }
                    })?,
                None => {
                    let reason = if login_id.is_some() {
                        "callback.unknown_login"
                    } else {
                        "callback.unsolicited"
                    };
                    return Err(self
                        .no_pending_login(&tenant, &connection, reason, "no pending login for this answer")
                        .await);
                }
            },
        };
        // The tenant, read once for the email vouching, the MFA rule and
        // provisioning: the record the edge read for this request if it
        // did, else read now. Unreadable, the sign-in fails (503): nothing
        // is relaxed.
        let stored_tenant = match FreshTenant::for_id(fresh, &tenant).or_else(|| config.tenant.clone().flatten()) {
            Some(read) => Some(read),
            None => match self.tenants.get(&tenant).await {
                Ok(t) => t,
                Err(e) => return Err(unavailable(e)),
            },
        };
        // A login started for an earlier incarnation of the tenant or the
        // connection (deleted and created again, or re-pointed at another
        // IdP) belongs to the old one: it ends before the current
        // connector looks at the answer, so its code is never redeemed at
        // the new connection's token endpoint. (Checked again after
        // provisioning, against the incarnation provisioning read, when it
        // is not known here.)
        if let (Some(p), Some(current)) = (
            &pending,
            stored_tenant
                .as_deref()
                .and_then(|t| config.incarnation(t, &connection)),
        ) {
            if p.incarnation.as_ref() != Some(&current) {
                return Err(self.login_superseded(&tenant, &connection).await);
            }
        }
        // The answer is validated first (in place on a replica with one
        // CPU, else on the blocking pool); everything that follows its
        // validation then goes out in one store wait.
        let completed = connector
            .complete_unclaimed(pending.as_ref().map(|p| &p.connector_state), &params)
            .await;
        let (identity, claim) = match completed {
            Ok(i) => i,
            Err(e) => {
                // portal: the tenant's admins see why their sign-ins fail.
                self.record_failure(&tenant, Some(&connection), super::testing::reason_of(&e))
                    .await;
                return Err(self.upstream_failed(Some(&request), &tenant, &connection, e));
            }
        };
        // An identity too large to store (a megabyte subject or email) is
        // refused before its link is read or anything is claimed or stored.
        if let Err(e) = identity.check_shape() {
            self.record_failure(&tenant, Some(&connection), e.code).await;
            return Err(self.upstream_failed(Some(&request), &tenant, &connection, e));
        }
        // One wait for: the pending login only peeked (by the edge, or
        // above where the browser was checked), consumed now; whether the tenant or the app requires MFA; the answer's
        // single use (a SAML assertion's id), claimed always to its end, so
        // the answer is consumed whatever else refuses it; and
        // provisioning's first read, the identity link with the user's
        // record and disabled flag (a read: nothing is provisioned before
        // the MFA rule and the claim have allowed it).
        let consume = async {
            match owed.take() {
                Some(key) => Some(self.store.delete(&key).await),
                None => None,
            }
        };
        let claimed = async {
            match claim {
                Some(claim) => claim.await,
                None => Ok(()),
            }
        };
        let link = self.provider.directory.link_for(
            &tenant,
            stored_tenant.as_deref(),
            &record,
            stored_tenant
                .as_deref()
                .and_then(|t| config.incarnation(t, &connection))
                .as_ref(),
            &identity,
        );
        let link_read = async {
            match link {
                Some(link) => Some(self.provider.directory.read_link(link).await),
                None => None,
            }
        };
        let (mfa_rule, consumed, claimed, ahead) = tokio::join!(
            self.mfa_required(stored_tenant.as_deref(), &request.client_id),
            consume,
            claimed,
            link_read
        );
        match consumed {
            Some(Ok(false)) => {
                // Another answer naming it consumed it since it was peeked
                // (this one is refused: the login was single use).
                return Err(self
                    .no_pending_login(
                        &tenant,
                        &connection,
                        "callback.unknown_login",
                        "the pending login was consumed by another answer meanwhile",
                    )
                    .await);
            }
            Some(Err(e)) => return Err(unavailable(e)),
            Some(Ok(true)) | None => {}
        }
        // A refused claim (a replay) is the outcome, whatever else happened.
        if let Err(e) = claimed {
            self.record_failure(&tenant, Some(&connection), super::testing::reason_of(&e))
                .await;
            return Err(self.upstream_failed(Some(&request), &tenant, &connection, e));
        }
        let accepted = self
            .accept(
                &tenant,
                &connection,
                &record,
                &config,
                pending.as_ref(),
                &request,
                stored_tenant.as_deref(),
                connector.as_ref(),
                identity,
                mfa_rule,
                ahead,
            )
            .await;
        let a = accepted?;
        // What an IdP-initiated answer's confirmation page will name, from
        // the records read above (no tenant record: provisioning refused).
        let unsolicited = app_name.map(|app| UnsolicitedNames {
            app,
            organization: stored_tenant
                .as_deref()
                .map_or_else(|| tenant.to_string(), |t| t.name.clone()),
        });
        Ok(Validated {
            login: pending
                .as_ref()
                .zip(login_id)
                .map(|(p, id)| (id, p.browser_binding.clone())),
            tenant,
            connection,
            request,
            sub: a.sub,
            identity: a.identity,
            auth_time: a.auth_time,
            session_end: a.session_end,
            mfa: a.mfa,
            session_ttl_secs: stored_tenant.and_then(|t| t.settings.sso_session_ttl_secs),
            own_factor: a.own_factor,
            mfa_demanded: a.mfa_demanded,
            unsolicited,
        })
    }

    /// The refusal of an answer with no pending login to finish (`reason`:
    /// none named, none found, or consumed by another answer meanwhile):
    /// counted, logged with `why`, audited, and a page for the person.
    /// Anyone can post such an answer, so the tenant's audit log (bounded)
    /// gets at most one of them per connection, reason and minute: a flood
    /// does not push its admin changes out. Each is counted and logged.
    async fn no_pending_login(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        reason: &'static str,
        why: &str,
    ) -> Outcome {
        meter::sign_in_failed(tenant.as_str(), connection.as_str(), reason);
        tracing::warn!(reason, tenant = %tenant, connection = %connection, "{why}");
        if self.first_anonymous_in_window(tenant, connection, reason).await {
            self.audit_failure(tenant, Some(connection), reason).await;
        }
        page(
            400,
            "Sign-in failed",
            "This sign-in has expired, was already used, or was not started here. Please start again from the application.",
            reason,
        )
    }

    /// Whether a refusal that anyone can cause (`reason` at `connection`)
    /// is the first of its kind in the tenant's current
    /// [`ANONYMOUS_AUDIT_WINDOW`]: only that one is audited, so a flood
    /// does not push the tenant's admin changes out of its bounded log. A
    /// store that cannot say keeps the event (fail toward the record).
    async fn first_anonymous_in_window(&self, tenant: &TenantId, connection: &ConnectionId, reason: &str) -> bool {
        let marker = Key::tenant(tenant.as_str(), "audit", format!("anonymous:{connection}:{reason}"));
        self.store
            .put_if_absent(&marker, b"1", Some(ANONYMOUS_AUDIT_WINDOW))
            .await
            .unwrap_or(true)
    }

    /// A refused answer that anyone can send again (`reason`): counted
    /// every time, audited and listed with the tenant's failed sign-ins
    /// once per connection, reason and [`ANONYMOUS_AUDIT_WINDOW`].
    async fn record_anonymous_failure(&self, tenant: &TenantId, connection: &ConnectionId, reason: &'static str) {
        if self.first_anonymous_in_window(tenant, connection, reason).await {
            self.record_failure(tenant, Some(connection), reason).await;
        } else {
            meter::sign_in_failed(tenant.as_str(), connection.as_str(), reason);
        }
    }

    /// What follows the validation of an answer: the tenant's email
    /// vouching, the MFA rule, the authentication's age, provisioning and
    /// the user's state. Runs once the answer's single-use claim succeeded,
    /// with provisioning's first read done alongside the claim (`ahead`).
    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        record: &crate::upstream::Connection,
        config: &crate::tenant::snapshot::ConfigSnapshot,
        pending: Option<&PendingLogin>,
        request: &AuthRequest,
        stored_tenant: Option<&crate::tenant::Tenant>,
        connector: &dyn crate::upstream::Connector,
        identity: Identity,
        mfa_rule: Result<bool, crate::store::StoreError>,
        ahead: Option<crate::directory::LinkRead>,
    ) -> Result<Accepted, Outcome> {
        let identity = match stored_tenant {
            Some(t) => {
                let (identity, withheld) = crate::tenant::vouch_email_why(t, connection, identity);
                if let Some(why) = withheld {
                    meter::email_verified_withheld(tenant.as_str(), connection.as_str(), why.reason());
                }
                identity
            }
            // A tenant gone meanwhile vouches for nothing; provisioning
            // refuses the sign-in below.
            None => Identity {
                email_verified: Some(false),
                ..identity
            },
        };
        // MFA required by the tenant or the app: the answer must show it.
        let mfa = crate::upstream::shows_mfa(&identity, &connector.mfa_contexts());
        // mfa: where Portcullis checks the first factor itself, it asks for
        // the second one too (after provisioning, before the session opens).
        let own_factor = super::second_factor::own_factor(&record.kind);
        let mut mfa_demanded = false;
        match mfa_rule {
            Ok(true) if own_factor => mfa_demanded = true,
            Ok(true) if !mfa => {
                self.record_failure(tenant, Some(connection), "login.mfa_required")
                    .await;
                return Err(self.mfa_refused(request, tenant, connection, &identity));
            }
            Ok(_) => {}
            Err(e) => return Err(unavailable(e)),
        }
        // max_age / prompt=login: refuse an authentication older than the app allows.
        let auth_time = match self.auth_time(pending, request, &identity, tenant, connection) {
            Ok(t) => t,
            Err(refused) => {
                self.record_failure(tenant, Some(connection), "login.auth_too_old")
                    .await;
                return Err(*refused);
            }
        };
        let session_end = self.session_end(connector, &identity);
        // The incarnations read with the configuration: a login started for
        // an earlier one ended before its answer was validated
        // (`validate_read`).
        let known = stored_tenant.and_then(|t| config.incarnation(t, connection));
        // Provisioned against the tenant record read above (its incarnation)
        // and the connection record re-validated above (it exists), with
        // the connection's incarnation read in the same script as it.
        let provisioned = self
            .provider
            .directory
            .provision_in(tenant, stored_tenant, record, known, &identity, ahead)
            .await;
        let (user, provisioned, disabled) = match provisioned {
            Ok(u) => u,
            Err(ProvisionError::Inactive(why)) => {
                self.record_failure(tenant, Some(connection), "login.user_inactive")
                    .await;
                return Err(inactive_page(tenant, connection, why));
            }
            Err(ProvisionError::Store(e)) => return Err(unavailable(e)),
        };
        // A login started before its tenant or connection was re-created
        // belongs to the old one: it ends here.
        if let Some(p) = &pending {
            let current = crate::tenant::Incarnation {
                tenant: user.tenant_incarnation.clone(),
                connection: user.connection_incarnation.clone(),
            };
            if p.incarnation.as_ref() != Some(&current) {
                return Err(self.login_superseded(tenant, connection).await);
            }
        }
        // A disabled user gets no session and no code. What
        // `Directory::active` checks was read in this request by
        // provisioning: the tenant record (above), the connection's
        // incarnation, which the user record as stored now carries, and the
        // disabled flag, read with the user record.
        if disabled {
            self.record_failure(tenant, Some(connection), "login.user_inactive")
                .await;
            return Err(inactive_page(tenant, connection, Inactive::UserDisabled));
        }
        if provisioned == Provisioned::Created {
            tracing::info!(reason = "user.jit_created", tenant = %tenant, connection = %connection, "user provisioned");
        }
        // OIDC Core 3.1.2.1: the app's `id_token_hint` named who it expects;
        // a person who signed in at the IdP as someone else gets no session
        // and the app no code for them.
        if request.hinted_sub.as_deref().is_some_and(|hinted| hinted != user.sub) {
            self.record_failure(tenant, Some(connection), "login.not_the_hinted_user")
                .await;
            tracing::warn!(reason = "login.not_the_hinted_user", tenant = %tenant, connection = %connection, "signed in as another user than id_token_hint names");
            return Err(error_to_app(
                request,
                &self.provider.iss(),
                "login_required",
                "Signed in as another user than id_token_hint names.",
            ));
        }
        Ok(Accepted {
            sub: user.sub,
            identity,
            auth_time,
            session_end,
            mfa,
            own_factor,
            mfa_demanded,
        })
    }

    /// The refusal of a login started for an earlier incarnation of its
    /// tenant or connection, counted, logged and audited.
    async fn login_superseded(&self, tenant: &TenantId, connection: &ConnectionId) -> Outcome {
        meter::sign_in_failed(tenant.as_str(), connection.as_str(), "callback.login_superseded");
        tracing::warn!(reason = "callback.login_superseded", tenant = %tenant, connection = %connection);
        self.audit_failure(tenant, Some(connection), "callback.login_superseded")
            .await;
        page(
            400,
            "Sign-in failed",
            "The sign-in settings changed while you were signing in. Please start again from the application.",
            "callback.login_superseded",
        )
    }

    /// Opens the SSO session of a validated answer and issues the app's
    /// code, unless Portcullis's own second factor applies first: then the
    /// answer waits under a one-time handle for the MFA page.
    async fn open(&self, v: Validated, sso: &mut BrowserSso, alongside: Option<Alongside<'_>>) -> Outcome {
        match self.second_factor_step(&v).await {
            Ok(None) => self.open_session(v, sso, alongside).await,
            Ok(Some(step)) => self.ask_second_factor(v, step).await,
            Err(o) => o,
        }
    }

    /// Opens the SSO session of a validated answer whose every factor
    /// passed, and issues the app's code.
    pub(super) async fn open_session(
        &self,
        v: Validated,
        sso: &mut BrowserSso,
        alongside: Option<Alongside<'_>>,
    ) -> Outcome {
        // A sign-in again in a browser that has a session at the tenant
        // replaces it: the same user's is remembered on the new record, so
        // that signing out ends it too; another user's ends once the new
        // session is stored. Read only then: a first sign-in reads nothing.
        let (replaces, end_now) = match sso.get(v.tenant.as_str()) {
            Some(old_sid) => match session::get(&self.store, &v.tenant, old_sid).await {
                Ok(old) => session::succession(old_sid, old.as_ref(), &v.sub),
                Err(e) => return unavailable(e),
            },
            None => (Vec::new(), Vec::new()),
        };
        let s = SsoSession {
            sid: crate::tokens::random_token(16),
            tenant: v.tenant.clone(),
            connection: v.connection.clone(),
            sub: v.sub.clone(),
            auth_time: v.auth_time,
            amr: v.identity.amr.clone(),
            expires_at: v.session_end,
            acr: v.identity.acr.clone(),
            mfa: v.mfa,
            upstream: Some(v.identity.upstream_refresh_token.is_some()),
            undated: v.identity.auth_time.is_none(),
            replaces,
        };
        // The tenant's own SSO session lifetime, when it sets one: read
        // with the tenant record while validating (a lifetime, not a check;
        // whether the tenant and user may still sign in was decided there).
        let ttl = v.session_ttl_secs.map_or(self.session_ttl, Duration::from_secs);
        let upstream = match self.upstream_session_record(&s, &v.identity) {
            Ok(u) => u,
            Err(e) => return unavailable(e),
        };
        // The session (with the kept upstream session, one script), its
        // user's index and the app's code, sent together: one wait. Any
        // failure fails the sign-in before the `sid` or the code leaves
        // (neither is in the answer), so what the others wrote is inert: a
        // code nobody holds (it expires), a session nobody can present.
        // The edge's first work alongside (the browser session's id cycle)
        // goes out with them.
        let authz = self.authorization(&v.request, &s);
        let writes = async {
            tokio::try_join!(
                session::save(&self.store, &s, ttl, upstream.as_ref()),
                self.provider.issue_code(&authz)
            )
        };
        let (with_writes, once_stored) = match alongside {
            Some(a) => (Some(a.with_writes), Some(a.once_stored)),
            None => (None, None),
        };
        let saved = match with_writes {
            Some(work) => tokio::join!(writes, work).0,
            None => writes.await,
        };
        let code = match saved {
            Ok(((), code)) => code,
            Err(e) => return unavailable(e),
        };
        // Before the browser names the new session: a failure leaves it
        // naming the one it had, which sign-out still ends.
        for sid in &end_now {
            if let Err(e) = self.end_session(&v.tenant, sid).await {
                return unavailable(e);
            }
        }
        if !end_now.is_empty() {
            tracing::info!(reason = "sso.replaced_ended", tenant = %v.tenant, sessions = end_now.len(), "sessions the new sign-in replaced ended");
        }
        sso.insert(v.tenant.to_string(), s.sid.clone());
        meter::sign_in_succeeded(v.tenant.as_str(), v.connection.as_str(), "login.succeeded");
        tracing::info!(reason = "login.succeeded", tenant = %v.tenant, connection = %v.connection, "sign-in succeeded");
        // The session is stored: the edge's browser session may name it now,
        // in the same wait as the audit event.
        let audit = self.provider.audit.security(crate::audit::AuditEvent::signin_succeeded(
            &v.tenant,
            v.connection.as_str(),
            &v.sub,
        ));
        match once_stored {
            Some(edge) => {
                tokio::join!(audit, edge(sso.clone()));
            }
            None => audit.await,
        }
        self.redirect_with_code(&v.request, &code)
    }

    /// The request an IdP-initiated answer stands for: the connection's
    /// default app and redirect URI, checked now; with the app's name.
    async fn unsolicited_request(
        &self,
        tenant: &TenantId,
        client_id: &str,
        redirect_uri: &Url,
    ) -> Result<(AuthRequest, String), Outcome> {
        let client = self.provider.clients.get(client_id).await.map_err(unavailable)?;
        let Some(client) = client.filter(|c| c.redirect_uris.iter().any(|r| r == redirect_uri.as_str())) else {
            return Err(page(
                400,
                "Sign-in failed",
                "The default application of this connection is not registered.",
                "callback.unsolicited_target_invalid",
            ));
        };
        // Checked when the login arrives, so a later change of the app's tenants counts.
        if !client.allows_tenant(tenant) {
            tracing::warn!(reason = "callback.unsolicited_tenant_not_allowed", tenant = %tenant, client_id);
            return Err(page(
                403,
                "Sign-in failed",
                "The default application of this connection is not available to your organization.",
                "callback.unsolicited_tenant_not_allowed",
            ));
        }
        let request = AuthRequest::minimal(
            client_id,
            redirect_uri.as_str(),
            None,
            // No request to ask for scopes: the claims a sign-in released before scopes decided them.
            &["openid", "email", "profile", "groups"],
        )
        .registered(&client);
        Ok((request, client.name.clone()))
    }
}

/// The page for a sign-in whose user may not sign in (any more).
fn inactive_page(tenant: &TenantId, connection: &ConnectionId, why: Inactive) -> Outcome {
    let (reason, status, message) = match why {
        Inactive::UserDisabled => (
            "login.user_disabled",
            403,
            "Your account has been disabled for this application. Ask your IT administrator.",
        ),
        Inactive::TenantGone => (
            "login.tenant_gone",
            404,
            "Your organization no longer uses this sign-in service.",
        ),
        Inactive::ConnectionGone => (
            "login.connection_gone",
            404,
            "This sign-in connection no longer exists. Please start again from the application.",
        ),
        Inactive::UserGone | Inactive::Superseded => (
            "login.user_gone",
            409,
            "Your account changed while you were signing in. Please start again from the application.",
        ),
    };
    tracing::warn!(reason, tenant = %tenant, connection = %connection, "sign-in refused for this user");
    page(status, "Sign-in refused", message, reason)
}
