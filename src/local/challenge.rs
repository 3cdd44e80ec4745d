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
//! counts against the account lockout like a wrong password, and the
//! account's failures are cleared only when the whole sign-in succeeds. A
//! failing hook fails the sign-in closed (its `HookError` reason code).

use super::{key, Accounts, LocalError, LocalUser};
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
    },
    /// The tenant's hook asks a challenge first.
    Ask(Asked),
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
            });
        };
        self.decide(hooks, &hook, t, c, user, login, Vec::new(), false).await
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
        let Some(w) = self.store.take_json::<Waiting>(&waiting_key(t, handle)).await? else {
            return Err(expired());
        };
        if w.connection != c.as_str() {
            return Err(refused(
                "challenge.login_mismatch",
                "This page does not belong to the sign-in that was started.",
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
            return Err(refused(
                "challenge.browser_mismatch",
                "This sign-in was started in another browser or its session has ended. Please sign in again.",
            ));
        }
        if let Some(e) = self.locked(t, c, &w.email).await? {
            return Err(e);
        }
        let user = match self.get(t, c, &w.email).await? {
            Some(u) if u.subject == w.subject && !u.disabled && u.status == super::AccountStatus::Confirmed => u,
            _ => {
                return Err(refused(
                    "challenge.account_changed",
                    "This account changed while signing in. Please sign in again.",
                ))
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
            email: &user.email,
        };
        let correct = answer.chars().count() <= MAX_ANSWER_CHARS
            && hooks
                .challenge_verify(&hook, &who, &w.rounds, &w.name, &w.challenge()?, answer)
                .await?;
        let mut rounds = w.rounds;
        rounds.push(Round {
            challenge_name: w.name,
            challenge_result: correct,
        });
        if !correct {
            tracing::info!(reason = "challenge.wrong_answer", tenant = %t, connection = %c);
            self.record_failure(t, c, &user.email).await?;
            if let Some(e) = self.locked(t, c, &user.email).await? {
                return Err(e);
            }
        }
        self.decide(hooks, &hook, t, c, user, &w.login, rounds, !correct).await
    }

    /// Asks `define` what follows `rounds`, and `create` for a challenge.
    // The hook, who, where and the history: each is needed.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        hooks: &Hooks,
        hook: &HookConfig,
        t: &TenantId,
        c: &ConnectionId,
        user: LocalUser,
        login: &str,
        rounds: Vec<Round>,
        after_wrong_answer: bool,
    ) -> Result<SignInStep, LocalError> {
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
            email: &user.email,
        };
        match hooks.challenge_define(hook, &who, &rounds).await? {
            Next::IssueTokens => {
                tracing::info!(reason = "challenge.passed", tenant = %t, connection = %c, rounds = rounds.len());
                self.clear_failures(t, c, &user.email).await?;
                Ok(SignInStep::Done {
                    user,
                    login: login.to_owned(),
                })
            }
            Next::Fail => {
                tracing::info!(reason = "challenge.failed", tenant = %t, connection = %c, rounds = rounds.len());
                Err(failed())
            }
            Next::Challenge(name) => {
                let challenge = hooks.challenge_create(hook, &who, &rounds, &name).await?;
                let handle = crate::tokens::random_token(32);
                let secret = crate::tokens::random_token(24);
                let public = challenge.public_challenge_parameters.clone();
                let waiting = Waiting {
                    connection: c.as_str().to_owned(),
                    login: login.to_owned(),
                    email: user.email.clone(),
                    subject: user.subject.clone(),
                    rounds,
                    name: name.clone(),
                    private: serde_json::to_string(&challenge.private_challenge_parameters).map_err(|e| {
                        LocalError::from(crate::store::StoreError::Corrupt(format!("challenge parameters: {e}")))
                    })?,
                    public: challenge.public_challenge_parameters,
                    browser: crate::tokens::sha256_base64url(secret.as_bytes()),
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
