//! The `custom_challenge` hook: Cognito's DefineAuthChallenge,
//! CreateAuthChallenge and VerifyAuthChallengeResponse as three steps of
//! one hook, told apart by `step`. Every request carries the sign-in's
//! history so far (`session`: the challenges asked and whether each was
//! answered correctly).
//!
//! `define` (idempotent: retried) — what next?
//! ```json
//! {"version": 1, "kind": "custom_challenge", "step": "define", "tenant": "acme",
//!  "connection": "local", "email": "…", "session": [{"challenge_name": "otp", "challenge_result": true}]}
//! ```
//! answered with exactly one of `{"issue_tokens": true}` (sign-in
//! succeeds), `{"fail_authentication": true}` or `{"challenge_name": "otp"}`
//! (ask that challenge next).
//!
//! `create` (never retried: it may send a code) — the challenge to show:
//! ```json
//! {"version": 1, "kind": "custom_challenge", "step": "create", …, "challenge_name": "otp", "session": […]}
//! ```
//! answered `{"public_challenge_parameters": {"prompt": "…"},
//! "private_challenge_parameters": {"answer": "…"}}` (string maps; the
//! public ones are shown to the person, the private ones stay with the
//! gateway and come back in `verify`).
//!
//! `verify` (idempotent: retried) — is the answer right?
//! ```json
//! {"version": 1, "kind": "custom_challenge", "step": "verify", …, "challenge_name": "otp",
//!  "private_challenge_parameters": {…}, "challenge_answer": "…"}
//! ```
//! answered `{"answer_correct": true|false}`.
//!
//! A sign-in asks at most [`MAX_ROUNDS`] challenges.

use super::{HookConfig, HookError, HookKind, Hooks};
use crate::ids::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The most challenges one sign-in asks.
pub const MAX_ROUNDS: usize = 5;
/// The longest challenge name and parameter value.
const MAX_CHARS: usize = 1024;
/// The most parameters of either kind.
const MAX_PARAMETERS: usize = 20;

/// One challenge asked so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Its name (as `define` chose it).
    pub challenge_name: String,
    /// Whether the person answered it correctly.
    pub challenge_result: bool,
}

/// What `define` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The sign-in succeeds.
    IssueTokens,
    /// The sign-in fails.
    Fail,
    /// Ask this challenge.
    Challenge(String),
}

/// A challenge `create` made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Shown to the person (e.g. a prompt).
    #[serde(default)]
    pub public_challenge_parameters: BTreeMap<String, String>,
    /// Kept by the gateway until `verify` (e.g. the expected answer).
    #[serde(default)]
    pub private_challenge_parameters: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefineAnswer {
    #[serde(default)]
    issue_tokens: bool,
    #[serde(default)]
    fail_authentication: bool,
    #[serde(default)]
    challenge_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyAnswer {
    answer_correct: bool,
}

fn bad(e: impl std::fmt::Display) -> HookError {
    HookError::BadAnswer(super::clip(&e.to_string(), 200))
}

fn check_name(name: &str) -> Result<(), HookError> {
    if name.is_empty() || name.chars().count() > MAX_CHARS || name.chars().any(char::is_control) {
        return Err(bad("challenge_name must be 1 to 1024 printable characters"));
    }
    Ok(())
}

fn check_parameters(p: &BTreeMap<String, String>) -> Result<(), HookError> {
    if p.len() > MAX_PARAMETERS
        || p.iter()
            .any(|(k, v)| k.chars().count() > MAX_CHARS || v.chars().count() > MAX_CHARS)
    {
        return Err(bad("challenge parameters: at most 20, each at most 1024 characters"));
    }
    Ok(())
}

/// Reads a `define` answer: exactly one decision.
pub fn parse_define(answer: Value) -> Result<Next, HookError> {
    let a: DefineAnswer = serde_json::from_value(answer).map_err(bad)?;
    match (a.issue_tokens, a.fail_authentication, a.challenge_name) {
        (true, false, None) => Ok(Next::IssueTokens),
        (false, true, None) => Ok(Next::Fail),
        (false, false, Some(name)) => {
            check_name(&name)?;
            Ok(Next::Challenge(name))
        }
        _ => Err(bad(
            "exactly one of issue_tokens, fail_authentication or challenge_name",
        )),
    }
}

/// Reads a `create` answer.
pub fn parse_create(answer: Value) -> Result<Challenge, HookError> {
    let c: Challenge = serde_json::from_value(answer).map_err(bad)?;
    check_parameters(&c.public_challenge_parameters)?;
    check_parameters(&c.private_challenge_parameters)?;
    Ok(c)
}

/// Reads a `verify` answer.
pub fn parse_verify(answer: Value) -> Result<bool, HookError> {
    serde_json::from_value::<VerifyAnswer>(answer)
        .map(|a| a.answer_correct)
        .map_err(bad)
}

/// Who is signing in, for every step's request.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The local connection.
    pub connection: &'a str,
    /// The account's email.
    pub email: &'a str,
}

fn base(step: &str, who: &Subject<'_>, session: &[Round]) -> Value {
    json!({
        "version": 1, "kind": HookKind::CustomChallenge.as_str(), "step": step,
        "tenant": who.tenant.as_str(), "connection": who.connection, "email": who.email,
        "session": session,
    })
}

impl Hooks {
    /// `define`: what comes next, given the challenges so far. More than
    /// [`MAX_ROUNDS`] rounds fail the sign-in without asking.
    pub async fn challenge_define(
        &self,
        hook: &HookConfig,
        who: &Subject<'_>,
        session: &[Round],
    ) -> Result<Next, HookError> {
        if session.len() >= MAX_ROUNDS {
            tracing::warn!(reason = "hook.challenge_rounds", tenant = %who.tenant, "too many challenges; sign-in fails");
            return Ok(Next::Fail);
        }
        let answer = self
            .call_as(who.tenant, hook, &base("define", who, session), true)
            .await?;
        parse_define(answer)
    }

    /// `create`: the challenge named `name` (never retried).
    pub async fn challenge_create(
        &self,
        hook: &HookConfig,
        who: &Subject<'_>,
        session: &[Round],
        name: &str,
    ) -> Result<Challenge, HookError> {
        let mut body = base("create", who, session);
        if let Some(o) = body.as_object_mut() {
            o.insert("challenge_name".into(), json!(name));
        }
        let answer = self.call_as(who.tenant, hook, &body, false).await?;
        parse_create(answer)
    }

    /// `verify`: whether `answer` is right for `challenge`.
    pub async fn challenge_verify(
        &self,
        hook: &HookConfig,
        who: &Subject<'_>,
        session: &[Round],
        name: &str,
        challenge: &Challenge,
        answer: &str,
    ) -> Result<bool, HookError> {
        let mut body = base("verify", who, session);
        if let Some(o) = body.as_object_mut() {
            o.insert("challenge_name".into(), json!(name));
            o.insert(
                "private_challenge_parameters".into(),
                json!(challenge.private_challenge_parameters),
            );
            o.insert("challenge_answer".into(), json!(answer));
        }
        let answer = self.call_as(who.tenant, hook, &body, true).await?;
        parse_verify(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn define_needs_exactly_one_decision() {
        assert_eq!(parse_define(json!({"issue_tokens": true})).unwrap(), Next::IssueTokens);
        assert_eq!(parse_define(json!({"fail_authentication": true})).unwrap(), Next::Fail);
        assert_eq!(
            parse_define(json!({"challenge_name": "otp"})).unwrap(),
            Next::Challenge("otp".into())
        );
        for bad in [
            json!({}),
            json!({"issue_tokens": true, "challenge_name": "otp"}),
            json!({"issue_tokens": true, "fail_authentication": true}),
            json!({"challenge_name": ""}),
            json!({"issueTokens": true}),
        ] {
            assert_eq!(
                parse_define(bad.clone()).unwrap_err().reason(),
                "hook.bad_answer",
                "{bad}"
            );
        }
    }

    #[test]
    fn create_and_verify_answers_are_read_strictly() {
        let c = parse_create(json!({"public_challenge_parameters": {"prompt": "Code?"},
            "private_challenge_parameters": {"answer": "1234"}}))
        .unwrap();
        assert_eq!(c.private_challenge_parameters["answer"], "1234");
        assert!(parse_create(json!({"public_challenge_parameters": {"n": 1}})).is_err());
        assert!(parse_verify(json!({"answer_correct": true})).unwrap());
        assert!(!parse_verify(json!({"answer_correct": false})).unwrap());
        assert!(parse_verify(json!({"correct": true})).is_err());
        assert!(parse_verify(json!({})).is_err());
    }
}
