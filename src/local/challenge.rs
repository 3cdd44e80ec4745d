//! The tenant's `custom_challenge` hook at local sign-in (Cognito's
//! Define/Create/VerifyAuthChallenge; the hook's wire format is in
//! `hooks::challenge`).
//!
//! After the password is right (and before any ticket is issued), `define`
//! is asked with the challenges so far: `issue_tokens` lets the sign-in
//! continue, `fail_authentication` refuses it (`challenge.failed`), a
//! `challenge_name` makes `create` build the challenge. Its public
//! parameters are shown on a page; its private ones stay in the store under
//! a one-time handle (SHA-256 of the handle as key, tenant-scoped,
//! [`CHALLENGE_TTL`], consumed with `take`) bound to the browser (the hash
//! of a secret the browser's session holds), never in the page. The answer
//! goes to `verify` with the private parameters; the result is appended and
//! `define` is asked again, at most [`MAX_ROUNDS`] rounds. A wrong answer
//! counts against the account lockout like a wrong password, answers are
//! judged one at a time per account like passwords
//! ([`Accounts::one_check_at_a_time`]), and the
//! account's failures are cleared only when the whole sign-in succeeds. A
//! failing hook fails the sign-in closed (its `HookError` reason code).

use super::{key, password_digest, Accounts, LocalError, LocalUser};
use crate::hooks::challenge::{Challenge, Next, Round, Subject, MAX_ROUNDS};
use crate::hooks::{HookConfig, HookKind, Hooks};
use crate::ids::{ConnectionId, TenantId};
use crate::secret::Secret;
use crate::store::{Key, StoreJson};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a challenge waits for its answer.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);

/// The browser-session field holding the secret a waiting challenge is bound to.
pub const CHALLENGE_SESSION_FIELD: &str = "local_challenge_browser";

/// The longest handle accepted (handles are 32 random bytes, base64url).
const MAX_HANDLE_LEN: usize = 128;

/// The longest answer sent to the hook; a longer one is simply wrong.
const MAX_ANSWER_CHARS: usize = 1024;

/// The most challenges `create` may make for one address (per tenant and
/// connection) in an hour, known account or not: a `create` may send a code
/// by mail or SMS, and anyone can start a passwordless sign-in with someone
/// else's address. A smoothed rate (GCRA): ten at once, then one every six
/// minutes.
pub const CHALLENGES_PER_HOUR: u64 = 10;

/// A challenge waiting for its answer (in the store only).
#[derive(Debug, Serialize, Deserialize)]
struct Waiting {
    connection: String,
    /// The pending login the sign-in continues.
    login: String,
    email: String,
    subject: String,
    rounds: Vec<Round>,
    name: String,
    /// The public challenge parameters (shown on the page).
    public: BTreeMap<String, String>,
    /// The private challenge parameters as JSON text: one string field, so
    /// the store seals it at rest (`secrets::sealed::sealed_fields`).
    private: String,
    /// SHA-256 of the browser's secret.
    browser: String,
    /// A passwordless sign-in (no `pwd` in `amr`).
    #[serde(default)]
    passwordless: bool,
    /// A decoy for an email without a usable account (passwordless): the
    /// hook is asked as for a real one, but no answer ever signs in.
    #[serde(default)]
    decoy: bool,
    /// The digest of the password hash the sign-in proved (empty when
    /// passwordless): a password changed or reset meanwhile ends the
    /// sign-in, which the old password began.
    #[serde(default)]
    password: String,
}

impl Waiting {
    /// The challenge as the hook created it, for `verify`.
    fn challenge(&self) -> Result<Challenge, LocalError> {
        let private = serde_json::from_str(&self.private)
            .map_err(|e| LocalError::from(crate::store::StoreError::Corrupt(format!("challenge parameters: {e}"))))?;
        Ok(Challenge {
            public_challenge_parameters: self.public.clone(),
            private_challenge_parameters: private,
        })
    }
}

/// The rate of `create` calls for one address ([`CHALLENGES_PER_HOUR`]).
fn creates_key(t: &TenantId, c: &ConnectionId, email: &str) -> Key {
    key(t, format!("challenge-creates:{c}:{}", super::email_id(email)))
}

fn waiting_key(t: &TenantId, handle: &str) -> Key {
    key(
        t,
        format!("challenge:{}", crate::tokens::sha256_base64url(handle.as_bytes())),
    )
}

/// A challenge to show.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The one-time handle of the waiting challenge (a form field).
    pub handle: String,
    /// The secret the browser's session must hold
    /// ([`CHALLENGE_SESSION_FIELD`]); never shown.
    pub browser_secret: Secret,
    /// The challenge's name.
    pub name: String,
    /// What the person is shown (the private parameters stay in the store).
    pub public: BTreeMap<String, String>,
    /// Whether the previous answer was wrong.
    pub after_wrong_answer: bool,
    /// The pending login the sign-in continues.
    pub login: String,
}

/// Where a local sign-in stands after the password (or an answer).
#[derive(Debug)]
pub enum SignInStep {
    /// Signed in: issue the ticket for `login`.
    Done {
        /// The account.
        user: LocalUser,
        /// The pending login.
        login: String,
        /// Signed in without a password (the custom challenge alone).
        passwordless: bool,
    },
    /// The tenant's hook asks a challenge first.
    Ask(Asked),
}

/// An answer as [`Accounts::judge`] left it.
struct Judged<'a> {
    w: Waiting,
    /// The account (`None` for a decoy).
    user: Option<LocalUser>,
    hooks: &'a Hooks,
    hook: HookConfig,
    correct: bool,
}

/// The sign-in a decision belongs to.
struct Flow<'a> {
    /// The pending login the sign-in continues.
    login: &'a str,
    /// Whether it started without a password.
    passwordless: bool,
}

fn refused(reason: &'static str, message: &'static str) -> LocalError {
    LocalError::Refused {
        reason,
        message,
        retry_after: None,
    }
}

fn failed() -> LocalError {
    refused(
        "challenge.failed",
        "Your organization's sign-in check did not let this sign-in through.",
    )
}

fn expired() -> LocalError {
    refused(
        "challenge.unknown_handle",
        "This sign-in step has expired or was already used. Please sign in again.",
    )
}

impl Accounts {
    /// The local sign-in: the password ([`Accounts::authenticate`]'s checks)
    /// and then, when the tenant has a `custom_challenge` hook, its first
    /// decision. The account's failure count is cleared only once the
    /// sign-in is done.
    pub async fn sign_in(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
        login: &str,
    ) -> Result<SignInStep, LocalError> {
        let user = self.check_password(t, c, email, password).await?;
        let Some((hooks, hook)) = self.hook(t, HookKind::CustomChallenge).await? else {
            self.clear_failures(t, c, &user.email).await?;
            return Ok(SignInStep::Done {
                user,
                login: login.to_owned(),
                passwordless: false,
            });
        };
        let email = user.email.clone();
        let flow = Flow {
            login,
            passwordless: false,
        };
        self.decide(hooks, &hook, t, c, &email, Some(user), &flow, Vec::new(), false)
            .await
    }

    /// The passwordless local sign-in (`"sign_in":"custom_challenge"`):
    /// the email only, then the tenant's `custom_challenge` hook's rounds
    /// with an empty history. Refused (`local.challenge_not_configured`)
    /// when the tenant has no such hook. An email without a usable account
    /// (unknown, unconfirmed, disabled, reset required) gets a decoy: the
    /// hook is asked exactly as for a real account, the page is the same,
    /// and the waiting record is marked so that no answer ever signs in;
    /// its wrong answers count against that email's lockout like real ones.
    pub async fn sign_in_passwordless(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        login: &str,
    ) -> Result<SignInStep, LocalError> {
        let email = self.address(t, c, email).await?;
        let Some((hooks, hook)) = self.hook(t, HookKind::CustomChallenge).await? else {
            tracing::warn!(reason = "local.challenge_not_configured", tenant = %t, connection = %c);
            return Err(refused(
                "local.challenge_not_configured",
                "This sign-in is not set up yet: your organization has no sign-in check configured. Ask your administrator.",
            ));
        };
        if let Some(e) = self.locked(t, c, &email).await? {
            return Err(e);
        }
        let user = self
            .get(t, c, &email)
            .await?
            .filter(|u| !u.disabled && u.status == super::AccountStatus::Confirmed);
        let flow = Flow {
            login,
            passwordless: true,
        };
        self.decide(hooks, &hook, t, c, &email, user, &flow, Vec::new(), false)
            .await
    }

    /// The answer to a waiting challenge: the handle is consumed (single
    /// use), must belong to this connection and to this browser
    /// (`browser`: the secret its session holds), the account must not be
    /// locked; `verify` judges the answer (a wrong one counts against the
    /// lockout), and `define` decides what follows.
    pub async fn answer_challenge(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        handle: &str,
        browser: Option<&str>,
        answer: &str,
    ) -> Result<SignInStep, LocalError> {
        if handle.is_empty() || handle.len() > MAX_HANDLE_LEN {
            return Err(expired());
        }
        let waiting = waiting_key(t, handle);
        // Read first, consumed only while the account is held: the account
        // is known only from the record, and an answer refused for a busy
        // account must not cost the person their challenge.
        let Some(peek) = self.store.get_json::<Waiting>(&waiting).await? else {
            return Err(expired());
        };
        let holds = browser.is_some_and(|s| {
            use subtle::ConstantTimeEq;
            crate::tokens::sha256_base64url(s.as_bytes())
                .as_bytes()
                .ct_eq(peek.browser.as_bytes())
                .into()
        });
        if peek.connection != c.as_str() || !holds {
            // A handle shown where it does not belong has leaked: spent.
            self.store.delete(&waiting).await?;
        }
        if peek.connection != c.as_str() {
            return Err(refused(
                "challenge.login_mismatch",
                "This page does not belong to the sign-in that was started.",
            ));
        }
        if !holds {
            return Err(refused(
                "challenge.browser_mismatch",
                "This sign-in was started in another browser or its session has ended. Please sign in again.",
            ));
        }
        // One answer or password check of the account at a time, across
        // replicas, as for passwords: answers sent together (one sign-in
        // per answer, each with its own challenge) would otherwise each be
        // judged before any of their failures counted.
        let Judged {
            w,
            user,
            hooks,
            hook,
            correct,
        } = self
            .one_check_at_a_time(t, c, &peek.email, self.judge(t, c, &waiting, answer))
            .await?;
        let rounds = {
            let mut rounds = w.rounds;
            rounds.push(Round {
                challenge_name: w.name,
                challenge_result: correct,
            });
            rounds
        };
        let flow = Flow {
            login: &w.login,
            passwordless: w.passwordless,
        };
        self.decide(hooks, &hook, t, c, &w.email, user, &flow, rounds, !correct)
            .await
    }

    /// The part of an answer done while its account is held: the challenge
    /// is consumed (single use: of answers sent together with one handle,
    /// one goes on), the lockout read, the account and the hook read again,
    /// the answer judged by `verify`, and a wrong one counted.
    async fn judge(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        waiting: &Key,
        answer: &str,
    ) -> Result<Judged<'_>, LocalError> {
        let Some(w) = self.store.take_json::<Waiting>(waiting).await? else {
            return Err(expired());
        };
        if let Some(e) = self.locked(t, c, &w.email).await? {
            return Err(e);
        }
        // A decoy has no account: it goes on as a real one would, but its
        // answers are never right and it never signs in.
        let user = if w.decoy {
            None
        } else {
            match self.get(t, c, &w.email).await? {
                Some(u)
                    if u.subject == w.subject
                        && !u.disabled
                        && u.status == super::AccountStatus::Confirmed
                        && (w.password.is_empty() || w.password == password_digest(&u)) =>
                {
                    Some(u)
                }
                _ => {
                    return Err(refused(
                        "challenge.account_changed",
                        "This account changed while signing in. Please sign in again.",
                    ))
                }
            }
        };
        // Asked again on every step: a hook removed meanwhile does not wave
        // the sign-in through.
        let Some((hooks, hook)) = self.hook(t, HookKind::CustomChallenge).await? else {
            tracing::warn!(reason = "challenge.hook_removed", tenant = %t, connection = %c);
            return Err(failed());
        };
        let who = Subject {
            tenant: t,
            connection: c.as_str(),
            email: &w.email,
        };
        let verified = answer.chars().count() <= MAX_ANSWER_CHARS
            && hooks
                .challenge_verify(&hook, &who, &w.rounds, &w.name, &w.challenge()?, answer)
                .await?;
        let correct = verified && !w.decoy;
        if !correct {
            tracing::info!(reason = "challenge.wrong_answer", tenant = %t, connection = %c);
            self.record_failure(t, c, &w.email).await?;
            if let Some(e) = self.locked(t, c, &w.email).await? {
                return Err(e);
            }
        }
        Ok(Judged {
            w,
            user,
            hooks,
            hook,
            correct,
        })
    }

    /// Asks `define` what follows `rounds`, and `create` for a challenge.
    // The hook, who, where and the history: each is needed.
    #[allow(clippy::too_many_arguments)]
    /// `user` is `None` for a passwordless decoy (no usable account for
    /// `email`): asked the same way, it never signs in.
    async fn decide(
        &self,
        hooks: &Hooks,
        hook: &HookConfig,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        user: Option<LocalUser>,
        flow: &Flow<'_>,
        rounds: Vec<Round>,
        after_wrong_answer: bool,
    ) -> Result<SignInStep, LocalError> {
        let login = flow.login;
        if rounds.len() >= MAX_ROUNDS {
            tracing::warn!(reason = "challenge.too_many_rounds", tenant = %t, connection = %c);
            return Err(refused(
                "challenge.too_many_rounds",
                "Too many sign-in checks. Please sign in again later.",
            ));
        }
        let who = Subject {
            tenant: t,
            connection: c.as_str(),
            email,
        };
        match hooks.challenge_define(hook, &who, &rounds).await? {
            Next::IssueTokens => {
                let Some(user) = user else {
                    // A decoy never signs in, whatever the hook says.
                    tracing::info!(reason = "challenge.failed", tenant = %t, connection = %c, rounds = rounds.len());
                    return Err(failed());
                };
                tracing::info!(reason = "challenge.passed", tenant = %t, connection = %c, rounds = rounds.len());
                self.clear_failures(t, c, &user.email).await?;
                Ok(SignInStep::Done {
                    user,
                    login: login.to_owned(),
                    passwordless: flow.passwordless,
                })
            }
            Next::Fail => {
                tracing::info!(reason = "challenge.failed", tenant = %t, connection = %c, rounds = rounds.len());
                Err(failed())
            }
            Next::Challenge(name) => {
                // Counted whether or not the address has an account (a
                // decoy's `create` is as real to the hook), so the refusal
                // tells nothing about it.
                let limit = self
                    .store
                    .rate_limit(
                        &creates_key(t, c, email),
                        CHALLENGES_PER_HOUR,
                        Duration::from_secs(3600),
                    )
                    .await?;
                if !limit.allowed {
                    tracing::warn!(reason = "challenge.throttled", tenant = %t, connection = %c);
                    return Err(LocalError::Refused {
                        reason: "challenge.throttled",
                        message: "Too many sign-in checks were sent for this address. Please wait a few minutes and sign in again.",
                        retry_after: Some(limit.retry_after.as_secs().max(1)),
                    });
                }
                let challenge = hooks.challenge_create(hook, &who, &rounds, &name).await?;
                let handle = crate::tokens::random_token(32);
                let secret = crate::tokens::random_token(24);
                let public = challenge.public_challenge_parameters.clone();
                let waiting = Waiting {
                    connection: c.as_str().to_owned(),
                    login: login.to_owned(),
                    email: email.to_owned(),
                    subject: user.as_ref().map(|u| u.subject.clone()).unwrap_or_default(),
                    password: match (&user, flow.passwordless) {
                        (Some(u), false) => password_digest(u),
                        _ => String::new(),
                    },
                    rounds,
                    name: name.clone(),
                    private: serde_json::to_string(&challenge.private_challenge_parameters).map_err(|e| {
                        LocalError::from(crate::store::StoreError::Corrupt(format!("challenge parameters: {e}")))
                    })?,
                    public: challenge.public_challenge_parameters,
                    browser: crate::tokens::sha256_base64url(secret.as_bytes()),
                    passwordless: flow.passwordless,
                    decoy: user.is_none(),
                };
                self.store
                    .put_json(&waiting_key(t, &handle), &waiting, Some(CHALLENGE_TTL))
                    .await?;
                tracing::info!(reason = "challenge.asked", tenant = %t, connection = %c, round = waiting.rounds.len() + 1);
                Ok(SignInStep::Ask(Asked {
                    handle,
                    browser_secret: Secret::new(secret),
                    name,
                    public,
                    after_wrong_answer,
                    login: login.to_owned(),
                }))
            }
        }
    }
}
