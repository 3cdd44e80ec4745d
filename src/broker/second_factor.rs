//! Portcullis's own second factor, between provisioning and the SSO session,
//! on the connections whose first factor Portcullis checks itself (local
//! accounts, the dev IdP).
//!
//! When the tenant's `local_mfa` is `required`, or `optional` and the user
//! is enrolled, or the tenant or app requires MFA, a validated answer does
//! not open a session: it waits under a one-time handle (hash as key,
//! tenant-scoped, [`MFA_TTL`]) bound to the browser (a secret in its session
//! whose hash the waiting answer stores), and the browser goes to the MFA
//! page: a challenge (TOTP or recovery code) or, for a user not enrolled
//! where MFA is required, the enrolment (QR code, secret, first code, then
//! the recovery codes once). Only a passed second factor opens the session,
//! with `amr` showing `otp` and `mfa` beside the first factor's, and the
//! session counts as MFA for `require_mfa`.
//!
//! The step is decided when the answer starts waiting, but an enrolment
//! adds a factor only while the account still has none: every enrolment
//! action of a waiting answer (the enrolment page, its first code, the
//! passkey page and registration at the enrolment) looks again, and an
//! account that has a second factor by then is asked for it instead
//! (`mfa.enrolment_changed`, [`Broker::enrolment_still_first`]). A password
//! alone must not add a factor beside the owner's.
//!
//! Nor may a password that is no longer the account's: every action of a
//! waiting answer (the pages, codes and passkeys of the challenge and the
//! enrolment), and the opening of its session, first asks whether the
//! sign-in still stands ([`Broker::sign_in_still_valid`]): its user active,
//! its credentials not reset since it authenticated (the user's "not
//! before" stamp), and for a local account the same account, confirmed,
//! enabled, with the password the sign-in proved. A sign-in begun with a
//! password since reset or changed, or of an account force-reset, disabled
//! or deleted meanwhile, ends there (`mfa.credentials_reset`,
//! `mfa.user_inactive`) and adds no factor.

use super::callback::Validated;
use super::session::{BrowserSso, SsoSession};
use super::{page, unavailable, Broker, Outcome};
use crate::ids::{ConnectionId, TenantId};
use crate::mfa::{AddedFrom, Factor, Mfa, MfaError};
use crate::secret::Redacted;
use crate::store::{Key, StoreJson};
use crate::tenant::LocalMfa;
use crate::upstream::ConnectionKind;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a validated answer waits for its second factor (enrolment
/// included: scanning a QR code takes a moment).
pub const MFA_TTL: Duration = Duration::from_secs(10 * 60);

/// How long after signing in a session may change its user's second
/// factors (enrol TOTP, add or remove passkeys): past it, or when the
/// session does not know when its user authenticated, the person signs in
/// again first (`mfa.reauthentication_required`). A session lasts hours;
/// a browser left signed in should not let whoever sits at it change how
/// the account signs in.
pub const FACTOR_CHANGE_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The browser-session field holding the secret the waiting answer is bound to.
pub const MFA_SESSION_FIELD: &str = "mfa_browser";

/// The longest handle accepted (handles are 32 random bytes, base64url).
const MAX_HANDLE_LEN: usize = 128;

/// Whether Portcullis checks the first factor of connections of this kind
/// itself, so that its own second factor applies.
pub fn own_factor(kind: &ConnectionKind) -> bool {
    matches!(kind, ConnectionKind::Dev(_) | ConnectionKind::Local(_))
}

/// Which second-factor step a waiting answer is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// An enrolled user types a TOTP or recovery code.
    Challenge,
    /// A user who must enrol scans the QR code and types a first code.
    Enrol,
    /// Enrolled just now: the recovery codes were shown; continue.
    Done,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Waiting {
    pub(super) validated: Validated,
    pub(super) step: Step,
    /// SHA-256 of the browser's secret.
    browser: String,
}

pub(super) fn waiting_key(t: &TenantId, handle: &str) -> Key {
    Key::tenant(
        t.as_str(),
        "login",
        format!("mfa:{}", crate::tokens::sha256_base64url(handle.as_bytes())),
    )
}

/// The enrolment part of the page: everything an authenticator app needs.
/// `Debug` shows none of it (each holds the shared secret).
#[derive(Clone)]
pub struct EnrolView {
    /// The secret in base32, in groups of four for typing.
    pub secret: String,
    /// The `otpauth://` URI.
    pub uri: String,
    /// The QR code of the URI as an inline SVG element.
    pub qr_svg: String,
}

impl std::fmt::Debug for EnrolView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolView")
            .field("secret", &Redacted)
            .field("uri", &Redacted)
            .field("qr_svg", &Redacted)
            .finish()
    }
}

/// What the MFA page shows. `Debug` redacts the handle and the recovery
/// codes.
#[derive(Clone)]
pub struct MfaPage {
    /// HTTP status.
    pub status: u16,
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// The tenant's display name.
    pub tenant_name: String,
    /// The one-time handle of the waiting answer.
    pub handle: String,
    /// Who is signing in (email or name), to show.
    pub who: String,
    /// Which step.
    pub step: Step,
    /// The enrolment details (step [`Step::Enrol`]).
    pub enrol: Option<EnrolView>,
    /// The recovery codes, shown once (step [`Step::Done`]).
    pub recovery_codes: Vec<String>,
    /// Why the last code was refused (a reason code), if it was.
    pub error: Option<&'static str>,
    /// Where the sign-in goes afterwards (the app's redirect URI; empty
    /// for a self-service enrolment).
    pub app: String,
    /// A signed-in user enrolling on their own (`/mfa/{tenant}/enroll`):
    /// no sign-in continues afterwards.
    pub self_service: bool,
    /// The user has a TOTP enrolment (the challenge asks for a code).
    pub totp: bool,
    /// The user has a passkey (the challenge offers "Use a passkey").
    pub passkey: bool,
    /// Passkeys are enabled (the enrolment offers registering one).
    pub passkeys_enabled: bool,
}

impl std::fmt::Debug for MfaPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaPage")
            .field("status", &self.status)
            .field("tenant", &self.tenant)
            .field("connection", &self.connection)
            .field("tenant_name", &self.tenant_name)
            .field("handle", &Redacted)
            .field("who", &self.who)
            .field("step", &self.step)
            .field("enrol", &self.enrol)
            .field(
                "recovery_codes",
                &self.recovery_codes.iter().map(|_| Redacted).collect::<Vec<_>>(),
            )
            .field("error", &self.error)
            .field("app", &self.app)
            .field("self_service", &self.self_service)
            .field("totp", &self.totp)
            .field("passkey", &self.passkey)
            .field("passkeys_enabled", &self.passkeys_enabled)
            .finish()
    }
}

/// Whose page, and which.
struct PageFor<'a> {
    tenant: &'a TenantId,
    connection: &'a ConnectionId,
    sub: &'a str,
    who: String,
    step: Step,
    handle: &'a str,
    app: &'a str,
    self_service: bool,
    /// The flow a TOTP enrolment shown here belongs to: the sign-in's
    /// handle, or the SSO session of a self-service enrolment.
    flow: &'a str,
}

/// The broker's answer to the MFA page.
#[derive(Debug)]
pub enum MfaAnswer {
    /// Show the page.
    Page(MfaPage),
    /// Done or refused: the usual outcome (a redirect to the app, a page).
    Outcome(Outcome),
}

pub(super) fn refused(status: u16, message: &str, reason: &'static str) -> MfaAnswer {
    MfaAnswer::Outcome(page(status, "Sign-in failed", message, reason))
}

pub(super) fn store_failed(e: impl std::fmt::Display) -> MfaAnswer {
    MfaAnswer::Outcome(unavailable(e))
}

/// The secret in groups of four characters.
fn grouped(secret: &str) -> String {
    secret
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The refusal of a factor change from session `s`, signed in too long ago
/// (or at an unknown time): the person is asked to sign in again.
fn reauthentication_required(tenant: &TenantId, s: &SsoSession) -> MfaAnswer {
    let reason = "mfa.reauthentication_required";
    tracing::info!(reason, tenant = %tenant, connection = %s.connection, auth_time = s.auth_time, undated = s.undated, "second factors not changed from a session signed in too long ago");
    let minutes = FACTOR_CHANGE_MAX_AGE.as_secs() / 60;
    MfaAnswer::Outcome(page(
        403,
        "Please sign in again",
        format!(
            "For your security, changing how you sign in needs a sign-in from the last {minutes} minutes, and this session is older. Sign out, sign in to the application again, and come back here within {minutes} minutes."
        ),
        reason,
    ))
}

impl Broker {
    pub(super) fn mfa(&self) -> Mfa {
        Mfa::new(self.store.clone(), self.provider.clock.clone())
    }

    /// Whether the validated answer needs Portcullis's second factor, and
    /// which step; a store failure fails the sign-in.
    pub(super) async fn second_factor_step(&self, v: &Validated) -> Result<Option<Step>, Outcome> {
        if !v.own_factor {
            return Ok(None);
        }
        let setting = match self.tenants.get(&v.tenant).await {
            Ok(t) => t.map(|t| t.settings.local_mfa).unwrap_or_default(),
            Err(e) => return Err(unavailable(e)),
        };
        if setting == LocalMfa::Off && !v.mfa_demanded {
            return Ok(None);
        }
        // Already multi-factor: a passwordless passkey sign-in with user
        // verification (the only way an own-factor answer shows MFA).
        if v.mfa {
            return Ok(None);
        }
        let enrolled = self
            .usable_second_factor(&v.tenant, &v.sub)
            .await
            .map_err(unavailable)?;
        Ok(match (enrolled, setting, v.mfa_demanded) {
            (true, _, _) => Some(Step::Challenge),
            (false, LocalMfa::Required, _) | (false, _, true) => Some(Step::Enrol),
            (false, _, false) => None,
        })
    }

    /// Whether the user has a second factor a challenge can ask for: a
    /// confirmed TOTP enrolment, or a passkey while passkeys are enabled.
    pub(super) async fn usable_second_factor(
        &self,
        tenant: &TenantId,
        sub: &str,
    ) -> Result<bool, crate::store::StoreError> {
        if self.passkeys.is_none() {
            return self.mfa().enrolled(tenant, sub).await;
        }
        self.has_second_factor(tenant, sub).await
    }

    /// Before an enrolment action of the waiting answer `w` (at
    /// [`Step::Enrol`]): `Ok` while the account still has no second factor.
    /// Once it has one (the owner enrolled elsewhere since this sign-in
    /// started waiting), the enrolment is refused: the answer waits at
    /// [`Step::Challenge`] from now on, and the page asks for that factor
    /// (`mfa.enrolment_changed`).
    pub(super) async fn enrolment_still_first(
        &self,
        w: &mut Waiting,
        handle: &str,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<(), MfaAnswer> {
        if w.step != Step::Enrol {
            return Ok(());
        }
        if !self
            .usable_second_factor(tenant, &w.validated.sub)
            .await
            .map_err(store_failed)?
        {
            return Ok(());
        }
        Err(self.enrolment_changed(w, handle, tenant, connection).await)
    }

    /// A sign-in's enrolment refused because the account has a second
    /// factor by now: counted as a failed sign-in, the answer moved to the
    /// challenge when a challenge can ask for the factor, and the page shown
    /// with `mfa.enrolment_changed`.
    pub(super) async fn enrolment_changed(
        &self,
        w: &mut Waiting,
        handle: &str,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> MfaAnswer {
        let reason = "mfa.enrolment_changed";
        tracing::warn!(reason, tenant = %tenant, connection = %connection, "the account has a second factor by now: the sign-in's enrolment is refused");
        self.record_failure(tenant, Some(connection), reason).await;
        match self.usable_second_factor(tenant, &w.validated.sub).await {
            Ok(true) => {
                w.step = Step::Challenge;
                if let Err(e) = self
                    .store
                    .put_json(&waiting_key(tenant, handle), &*w, Some(MFA_TTL))
                    .await
                {
                    return store_failed(e);
                }
            }
            Ok(false) => {}
            Err(e) => return store_failed(e),
        }
        self.mfa_page(w, handle, Some(reason), Vec::new()).await
    }

    /// Keeps `v` waiting for its second factor and sends the browser to the
    /// MFA page.
    pub(super) async fn ask_second_factor(&self, v: Validated, step: Step) -> Outcome {
        let handle = crate::tokens::random_token(32);
        let secret = crate::tokens::random_token(24);
        let (tenant, connection) = (v.tenant.clone(), v.connection.clone());
        let waiting = Waiting {
            validated: v,
            step,
            browser: crate::tokens::sha256_base64url(secret.as_bytes()),
        };
        if let Err(e) = self
            .store
            .put_json(&waiting_key(&tenant, &handle), &waiting, Some(MFA_TTL))
            .await
        {
            return unavailable(e);
        }
        let mut url = self.upstream.public(&format!("mfa/{tenant}/{connection}"));
        url.query_pairs_mut().append_pair("handle", &handle);
        let reason = if step == Step::Enrol {
            "mfa.enrolment_required"
        } else {
            "mfa.challenge"
        };
        tracing::info!(reason, tenant = %tenant, connection = %connection, "second factor asked");
        Outcome::SecondFactor {
            url,
            secret: crate::secret::Secret::new(secret),
        }
    }

    /// Whether `handle` names an answer of `tenant` waiting for its second
    /// factor that is bound to the browser holding `browser` (the secret in
    /// its session): the browser is in a sign-in of the tenant. Only reads;
    /// for the edge, when the tenant's anonymous callback budget is spent.
    pub async fn waits_for_second_factor(&self, tenant: &TenantId, handle: &str, browser: &str) -> bool {
        if handle.is_empty() || handle.len() > MAX_HANDLE_LEN {
            return false;
        }
        let Ok(Some(w)) = self.store.get_json::<Waiting>(&waiting_key(tenant, handle)).await else {
            return false;
        };
        use subtle::ConstantTimeEq;
        w.validated.tenant == *tenant
            && bool::from(
                crate::tokens::sha256_base64url(browser.as_bytes())
                    .as_bytes()
                    .ct_eq(w.browser.as_bytes()),
            )
    }

    /// Finds the waiting answer of `handle` and checks it belongs to this
    /// tenant, connection and browser.
    pub(super) async fn waiting(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        browser: Option<&str>,
    ) -> Result<(Waiting, TenantId, ConnectionId), MfaAnswer> {
        let (Ok(tenant), Ok(connection)) = (TenantId::parse(tenant), ConnectionId::parse(connection)) else {
            return Err(refused(
                404,
                "This sign-in address does not exist.",
                "mfa.unknown_handle",
            ));
        };
        let found = if handle.is_empty() || handle.len() > MAX_HANDLE_LEN {
            None
        } else {
            self.store
                .get_json::<Waiting>(&waiting_key(&tenant, handle))
                .await
                .map_err(store_failed)?
        };
        let Some(w) = found else {
            tracing::warn!(reason = "mfa.unknown_handle", tenant = %tenant, connection = %connection);
            return Err(refused(
                400,
                "This sign-in has expired or was already finished. Please start again from the application.",
                "mfa.unknown_handle",
            ));
        };
        if w.validated.tenant != tenant || w.validated.connection != connection {
            tracing::warn!(reason = "mfa.login_mismatch", tenant = %tenant, connection = %connection);
            return Err(refused(
                400,
                "This page does not belong to the sign-in that was started.",
                "mfa.login_mismatch",
            ));
        }
        let holds = browser.is_some_and(|s| {
            use subtle::ConstantTimeEq;
            crate::tokens::sha256_base64url(s.as_bytes())
                .as_bytes()
                .ct_eq(w.browser.as_bytes())
                .into()
        });
        if !holds {
            self.record_failure(&tenant, Some(&connection), "mfa.browser_mismatch")
                .await;
            tracing::warn!(reason = "mfa.browser_mismatch", tenant = %tenant, connection = %connection);
            return Err(refused(
                400,
                "This sign-in was started in another browser or its session has ended. Please start again from the application.",
                "mfa.browser_mismatch",
            ));
        }
        // The sign-in must still stand: a credentials reset or an account
        // change since the password was checked ends it here, whatever
        // the action (the waiting answer is spent).
        if let Err(refusal) = self.sign_in_still_valid(&w).await {
            if let Err(e) = self.store.delete(&waiting_key(&tenant, handle)).await {
                return Err(store_failed(e));
            }
            return Err(refusal);
        }
        Ok((w, tenant, connection))
    }

    /// Whether the sign-in of the waiting answer `w` still stands: its user
    /// is active ([`crate::directory::Directory::active`]; else
    /// `mfa.user_inactive`), its credentials were not reset since it
    /// authenticated (the user's "not before" stamp), and for a local
    /// account the account is still the same subject, confirmed, not
    /// disabled, with the password the sign-in proved
    /// ([`crate::local::account_unchanged`]; else `mfa.credentials_reset`).
    /// Asked by every action of a waiting answer ([`Broker::waiting`]) and
    /// again before its session opens ([`Broker::finish_second_factor`]).
    /// A waiting answer of a local account kept by an earlier version (no
    /// password digest) is judged by the directory alone.
    pub(super) async fn sign_in_still_valid(&self, w: &Waiting) -> Result<(), MfaAnswer> {
        let v = &w.validated;
        let user = match self.provider.directory.active(&v.tenant, &v.sub).await {
            Ok(Ok(user)) => user,
            Ok(Err(why)) => {
                let reason = "mfa.user_inactive";
                tracing::warn!(reason, tenant = %v.tenant, connection = %v.connection, why = why.as_str(), "a waiting sign-in's user is no longer active");
                self.record_failure(&v.tenant, Some(&v.connection), reason).await;
                return Err(refused(
                    403,
                    "This account can no longer sign in. Ask your administrator.",
                    reason,
                ));
            }
            Err(e) => return Err(store_failed(e)),
        };
        let mut unchanged = !crate::provider::grants::credentials_reset_since(&user, v.auth_time);
        if unchanged {
            if let (Some(email), Some(password)) = (v.identity.email.as_deref(), v.identity.local_password.as_deref()) {
                unchanged = crate::local::account_unchanged(
                    &self.store,
                    &v.tenant,
                    &v.connection,
                    email,
                    &v.identity.subject,
                    password,
                )
                .await
                .map_err(store_failed)?;
            }
        }
        if unchanged {
            return Ok(());
        }
        let reason = "mfa.credentials_reset";
        tracing::warn!(reason, tenant = %v.tenant, connection = %v.connection, "the account's credentials changed while its sign-in waited for a second factor");
        self.record_failure(&v.tenant, Some(&v.connection), reason).await;
        Err(refused(
            401,
            "The password of this account was reset or changed (or the account changed) while this sign-in waited. Please sign in again from the application.",
            reason,
        ))
    }

    /// The page of a waiting answer (`error`: why the last code was refused).
    pub(super) async fn mfa_page(
        &self,
        w: &Waiting,
        handle: &str,
        error: Option<&'static str>,
        recovery_codes: Vec<String>,
    ) -> MfaAnswer {
        let v = &w.validated;
        let who = v
            .identity
            .email
            .clone()
            .or_else(|| v.identity.name.clone())
            .unwrap_or_else(|| v.identity.subject.clone());
        let target = PageFor {
            tenant: &v.tenant,
            connection: &v.connection,
            sub: &v.sub,
            who,
            step: w.step,
            handle,
            app: &v.request.redirect_uri,
            self_service: false,
            flow: handle,
        };
        self.build_page(target, error, recovery_codes).await
    }

    async fn build_page(&self, p: PageFor<'_>, error: Option<&'static str>, recovery_codes: Vec<String>) -> MfaAnswer {
        let tenant_name = match self.tenants.get(p.tenant).await {
            Ok(t) => t.map_or_else(|| p.tenant.to_string(), |t| t.name.clone()),
            Err(e) => return store_failed(e),
        };
        let enrol = if p.step == Step::Enrol {
            let pending = match self.mfa().start_enrolment(p.tenant, p.sub, p.flow).await {
                Ok(pending) => pending,
                Err(e) => return store_failed(e),
            };
            let uri = crate::mfa::totp::otpauth_uri(&tenant_name, &p.who, &pending.secret);
            let Some(qr_svg) = crate::mfa::qr::svg(&uri, "QR code to add this account to an authenticator app") else {
                tracing::error!(reason = "mfa.qr_failed", tenant = %p.tenant);
                return refused(
                    500,
                    "The enrolment could not be shown. Please try again.",
                    "mfa.qr_failed",
                );
            };
            Some(EnrolView {
                secret: grouped(&pending.secret),
                uri,
                qr_svg,
            })
        } else {
            None
        };
        let status = match error {
            None => 200,
            Some("mfa.throttled" | "passkey.throttled") => 429,
            Some("mfa.enrolment_changed") => 409,
            Some(_) => 400,
        };
        let passkeys_enabled = self.passkeys.is_some();
        let (totp, passkey) = if p.step == Step::Challenge {
            let totp = match self.mfa().enrolled(p.tenant, p.sub).await {
                Ok(e) => e,
                Err(e) => return store_failed(e),
            };
            let passkey = passkeys_enabled
                && match crate::mfa::passkey::has_any(&self.store, p.tenant, p.sub).await {
                    Ok(h) => h,
                    Err(e) => return store_failed(e),
                };
            (totp, passkey)
        } else {
            (false, false)
        };
        MfaAnswer::Page(MfaPage {
            status,
            tenant: p.tenant.clone(),
            connection: p.connection.clone(),
            tenant_name,
            handle: p.handle.to_owned(),
            who: p.who,
            step: p.step,
            enrol,
            recovery_codes,
            error,
            app: p.app.to_owned(),
            self_service: p.self_service,
            totp,
            passkey,
            passkeys_enabled,
        })
    }

    /// Whether session `s` may change its user's second factors (every
    /// self-service change: TOTP enrolment and its first code, the passkeys
    /// page, adding and removing passkeys): only a recent sign-in
    /// ([`Broker::authenticated_recently`]), and once the user has a second
    /// factor only a session that used it
    /// ([`Broker::second_factor_used_if_any`]), of an active user whose
    /// credentials were not reset since the session authenticated
    /// ([`Broker::session_still_valid`]).
    pub(super) async fn may_change_factors(&self, tenant: &TenantId, s: &SsoSession) -> Result<(), MfaAnswer> {
        self.session_still_valid(tenant, s).await?;
        if !self.authenticated_recently(s) {
            return Err(reauthentication_required(tenant, s));
        }
        self.second_factor_used_if_any(tenant, s).await
    }

    /// Whether session `s` still stands for changing factors: its user is
    /// active (else `mfa.not_signed_in`) and its credentials were not reset
    /// since the session authenticated (else `mfa.credentials_reset`). A
    /// reset ends the user's sessions; this refuses one that outlived it
    /// (an end that failed half-way, or a session opened by a sign-in the
    /// reset overtook).
    async fn session_still_valid(&self, tenant: &TenantId, s: &SsoSession) -> Result<(), MfaAnswer> {
        let user = match self.provider.directory.active(tenant, &s.sub).await {
            Ok(Ok(user)) => user,
            Ok(Err(_)) => {
                return Err(refused(
                    401,
                    "Sign in to the application first, then come back.",
                    "mfa.not_signed_in",
                ))
            }
            Err(e) => return Err(store_failed(e)),
        };
        if !crate::provider::grants::credentials_reset_since(&user, s.auth_time) {
            return Ok(());
        }
        let reason = "mfa.credentials_reset";
        tracing::warn!(reason, tenant = %tenant, connection = %s.connection, "second factors not changed from a session older than the account's credentials reset");
        Err(refused(
            401,
            "The password of this account was reset or changed after this session signed in. Sign out, sign in to the application again, and come back.",
            reason,
        ))
    }

    /// Whether session `s` authenticated its user within
    /// [`FACTOR_CHANGE_MAX_AGE`], by the injected clock. The time counted
    /// from is the session's `auth_time`: on the connections whose factors
    /// Portcullis checks itself (the only ones these pages serve) it is
    /// the moment Portcullis checked the first factor (the password, or a
    /// passwordless passkey), never an upstream IdP's claim, and the session
    /// opens at most [`MFA_TTL`] later, once the second factor passed.
    /// Reusing the session for another app keeps it. A session whose
    /// authentication time is unknown (`undated`) is never recent.
    fn authenticated_recently(&self, s: &SsoSession) -> bool {
        let max_age = i64::try_from(FACTOR_CHANGE_MAX_AGE.as_secs()).unwrap_or(i64::MAX);
        !s.undated && self.provider.clock.unix().saturating_sub(s.auth_time) <= max_age
    }

    /// Whether session `s` may change its user's second factors: always
    /// when the user has none yet (the first one is set up by the password
    /// alone, trust on first use), otherwise only when the session used
    /// one. A password alone must not add a factor an attacker holds, nor
    /// remove the owner's.
    async fn second_factor_used_if_any(&self, tenant: &TenantId, s: &SsoSession) -> Result<(), MfaAnswer> {
        if s.mfa || !self.has_second_factor(tenant, &s.sub).await.map_err(store_failed)? {
            return Ok(());
        }
        tracing::warn!(reason = "mfa.session_without_second_factor", tenant = %tenant, connection = %s.connection, "second factors not changed from a session without one");
        Err(refused(
            403,
            "Your account has a second factor, and this session was opened without it. Sign out, sign in again with your second factor, and come back.",
            "mfa.session_without_second_factor",
        ))
    }

    /// `/mfa/{tenant}/enroll`: a signed-in user of a connection with
    /// Portcullis's own factors enrols on their own (tenant setting
    /// `optional` or `required`), with the browser's SSO session for the
    /// tenant. `code`: the first code typed (`None`: show the enrolment).
    /// An existing enrolment is never replaced here (an admin resets it).
    pub async fn mfa_self_enrol(&self, tenant: &str, sso: &BrowserSso, code: Option<&str>) -> MfaAnswer {
        let Ok(tenant) = TenantId::parse(tenant) else {
            return refused(404, "There is nothing at this address.", "mfa.not_signed_in");
        };
        let signed_in = match super::session::load(&self.store, sso, &tenant).await {
            Ok(s) => s,
            Err(e) => return store_failed(e),
        };
        let Some(s) = signed_in else {
            tracing::info!(reason = "mfa.not_signed_in", tenant = %tenant);
            return refused(
                401,
                "Sign in to the application first, then come back to set up two-step verification.",
                "mfa.not_signed_in",
            );
        };
        match self.provider.directory.active(&tenant, &s.sub).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return refused(
                    401,
                    "Sign in to the application first, then come back to set up two-step verification.",
                    "mfa.not_signed_in",
                )
            }
            Err(e) => return store_failed(e),
        }
        let applies = match (
            self.tenants.get(&tenant).await,
            self.tenants.connection(&tenant, &s.connection).await,
        ) {
            (Ok(Some(t)), Ok(Some(c))) => t.settings.local_mfa != LocalMfa::Off && own_factor(&c.kind),
            (Err(e), _) => return store_failed(e),
            (_, Err(crate::tenant::RegistryError::Store(e))) => return store_failed(e),
            _ => false,
        };
        if !applies {
            tracing::info!(reason = "mfa.not_applicable", tenant = %tenant, connection = %s.connection);
            return refused(
                403,
                "Two-step verification by Portcullis is not used for your sign-in method.",
                "mfa.not_applicable",
            );
        }
        match self.mfa().enrolled(&tenant, &s.sub).await {
            Ok(false) => {}
            Ok(true) => {
                return refused(
                    409,
                    "Two-step verification is already set up for your account. Your administrator can reset it.",
                    "mfa.already_enrolled",
                )
            }
            Err(e) => return store_failed(e),
        }
        // Only a recent sign-in, and an account with a passkey adds TOTP
        // only from a session that used a second factor (as its passkeys
        // are managed). Looked at again for the first code.
        if let Err(refusal) = self.may_change_factors(&tenant, &s).await {
            return refusal;
        }
        let who = match self.provider.directory.get(&tenant, &s.sub).await {
            Ok(u) => u.and_then(|u| u.email).unwrap_or_else(|| s.sub.clone()),
            Err(e) => return store_failed(e),
        };
        let mut target = PageFor {
            tenant: &tenant,
            connection: &s.connection,
            sub: &s.sub,
            who,
            step: Step::Enrol,
            handle: "",
            app: "",
            self_service: true,
            flow: &s.sid,
        };
        let Some(code) = code else {
            return self.build_page(target, None, Vec::new()).await;
        };
        match self
            .mfa()
            .confirm(&tenant, &s.sub, &s.sid, AddedFrom::Session, code)
            .await
        {
            Ok((_, codes)) => {
                tracing::info!(reason = "mfa.enrolled", tenant = %tenant, connection = %s.connection, "TOTP enrolment confirmed");
                self.mfa_audit(&tenant, &s.connection, &s.sub, "mfa.enrolled").await;
                target.step = Step::Done;
                self.build_page(target, None, codes).await
            }
            Err(MfaError::Store(e)) => store_failed(e),
            Err(e) => {
                let reason = e.reason();
                tracing::warn!(reason, tenant = %tenant, connection = %s.connection, "enrolment code refused");
                self.build_page(target, Some(reason), Vec::new()).await
            }
        }
    }

    /// `GET /mfa/{tenant}/{connection}?handle=…`: the challenge or the
    /// enrolment of a waiting answer. `browser` is the secret this
    /// browser's session holds.
    pub async fn mfa_show(&self, tenant: &str, connection: &str, handle: &str, browser: Option<&str>) -> MfaAnswer {
        let (mut w, tenant, connection) = match self.waiting(tenant, connection, handle, browser).await {
            Ok(found) => found,
            Err(a) => return a,
        };
        // The enrolment page starts an enrolment: only while it is the first.
        if let Err(a) = self.enrolment_still_first(&mut w, handle, &tenant, &connection).await {
            return a;
        }
        self.mfa_page(&w, handle, None, Vec::new()).await
    }

    /// A code typed on the MFA page: a TOTP or recovery code for a
    /// challenge, the first TOTP code for an enrolment. A right challenge
    /// code opens the session; a confirmed enrolment shows the recovery
    /// codes once; a wrong code shows the page again with its reason.
    pub async fn mfa_submit(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        browser: Option<&str>,
        code: &str,
        sso: &mut BrowserSso,
    ) -> MfaAnswer {
        let (mut w, tenant, connection) = match self.waiting(tenant, connection, handle, browser).await {
            Ok(found) => found,
            Err(a) => return a,
        };
        let sub = w.validated.sub.clone();
        match w.step {
            Step::Done => self.mfa_page(&w, handle, None, Vec::new()).await,
            Step::Enrol => {
                if let Err(a) = self.enrolment_still_first(&mut w, handle, &tenant, &connection).await {
                    return a;
                }
                self.confirm_sign_in_enrolment(w, handle, &tenant, &connection, code)
                    .await
            }
            Step::Challenge => match self.mfa().verify(&tenant, &sub, code).await {
                Ok(factor) => {
                    if let Factor::Recovery { remaining } = factor {
                        tracing::info!(reason = "mfa.recovery_used", tenant = %tenant, connection = %connection, remaining, "a recovery code was used");
                        self.mfa_audit(&tenant, &connection, &sub, "mfa.recovery_used").await;
                    }
                    self.finish_second_factor(&tenant, &connection, handle, sso, &["otp", "mfa"])
                        .await
                }
                Err(e) => self.second_factor_refused(&w, handle, &tenant, &connection, e).await,
            },
        }
    }

    /// The first code of a sign-in's TOTP enrolment: the recovery codes
    /// once it is confirmed; refused (`mfa.enrolment_changed`, and the
    /// answer asked for the factor) when the account has one by now.
    async fn confirm_sign_in_enrolment(
        &self,
        mut w: Waiting,
        handle: &str,
        tenant: &TenantId,
        connection: &ConnectionId,
        code: &str,
    ) -> MfaAnswer {
        let sub = w.validated.sub.clone();
        match self.mfa().confirm(tenant, &sub, handle, AddedFrom::SignIn, code).await {
            Ok((_, codes)) => {
                tracing::info!(reason = "mfa.enrolled", tenant = %tenant, connection = %connection, "TOTP enrolment confirmed");
                self.mfa_audit(tenant, connection, &sub, "mfa.enrolled").await;
                w.step = Step::Done;
                if let Err(e) = self
                    .store
                    .put_json(&waiting_key(tenant, handle), &w, Some(MFA_TTL))
                    .await
                {
                    return store_failed(e);
                }
                self.mfa_page(&w, handle, None, codes).await
            }
            // A TOTP enrolment or a passkey appeared between the look
            // before and this write.
            Err(MfaError::Changed) => self.enrolment_changed(&mut w, handle, tenant, connection).await,
            Err(e) => self.second_factor_refused(&w, handle, tenant, connection, e).await,
        }
    }

    /// `POST /mfa/{tenant}/{connection}/continue`: after the recovery codes
    /// were shown, open the session.
    pub async fn mfa_continue(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        browser: Option<&str>,
        sso: &mut BrowserSso,
    ) -> MfaAnswer {
        let (w, tenant, connection) = match self.waiting(tenant, connection, handle, browser).await {
            Ok(found) => found,
            Err(a) => return a,
        };
        if w.step != Step::Done {
            tracing::warn!(reason = "mfa.not_done", tenant = %tenant, connection = %connection);
            return self.mfa_page(&w, handle, Some("mfa.not_done"), Vec::new()).await;
        }
        self.finish_second_factor(&tenant, &connection, handle, sso, &["otp", "mfa"])
            .await
    }

    /// Consumes the waiting answer (once: a concurrent second success finds
    /// nothing) and opens the session with the second factor's `methods`
    /// added to `amr`.
    pub(super) async fn finish_second_factor(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        handle: &str,
        sso: &mut BrowserSso,
        methods: &[&str],
    ) -> MfaAnswer {
        let taken = match self.store.take_json::<Waiting>(&waiting_key(tenant, handle)).await {
            Ok(t) => t,
            Err(e) => return store_failed(e),
        };
        let Some(mut w) = taken else {
            tracing::warn!(reason = "mfa.unknown_handle", tenant = %tenant, connection = %connection);
            return refused(
                400,
                "This sign-in was already finished. Please start again from the application.",
                "mfa.unknown_handle",
            );
        };
        // Asked again on the record taken: a reset while the factor was
        // checked opens no session.
        if let Err(refusal) = self.sign_in_still_valid(&w).await {
            return refusal;
        }
        for method in methods {
            if !w.validated.identity.amr.iter().any(|m| m == *method) {
                w.validated.identity.amr.push((*method).to_owned());
            }
        }
        w.validated.mfa = true;
        tracing::info!(reason = "mfa.verified", tenant = %tenant, connection = %connection, "second factor passed");
        MfaAnswer::Outcome(self.open_session(w.validated, sso, None).await)
    }

    async fn second_factor_refused(
        &self,
        w: &Waiting,
        handle: &str,
        tenant: &TenantId,
        connection: &ConnectionId,
        e: MfaError,
    ) -> MfaAnswer {
        let reason = e.reason();
        if let MfaError::Store(e) = e {
            return store_failed(e);
        }
        tracing::warn!(reason, tenant = %tenant, connection = %connection, "second factor refused");
        self.record_failure(tenant, Some(connection), reason).await;
        self.mfa_page(w, handle, Some(reason), Vec::new()).await
    }

    pub(super) async fn mfa_audit(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        sub: &str,
        action: &'static str,
    ) {
        let event = crate::audit::AuditEvent::security(
            &crate::audit::Actor::User(sub.to_owned()),
            action,
            crate::audit::Target::new("user", sub),
            crate::audit::Outcome::Success,
            action,
        )
        .tenant(tenant)
        .connection(connection.as_str())
        .subject(sub);
        self.provider.audit.security(event).await;
    }
}
