//! Second factor for the connections whose first factor Portcullis checks
//! itself (local accounts, and the dev IdP): TOTP (RFC 6238) enrolments per
//! (tenant, user `sub`), one-time recovery codes, and the checks a code
//! passes.
//!
//! - The TOTP seed is random (160 bits), shown once as a QR code and as
//!   text, and stored sealed at rest (`secrets::sealed::sealed_fields`
//!   lists `secret` of `t:<tenant>:mfa` / `enrolment:<sub>` and
//!   `pending:<sub>`).
//! - A pending enrolment belongs to the flow that started it (a sign-in's
//!   MFA step, or the SSO session of a self-service enrolment): another
//!   flow replaces it with a fresh secret rather than show it, and a code
//!   confirms it only in its own flow.
//! - An enrolment is *pending* (TTL [`ENROL_TTL`]) until the person types a
//!   first code; only then it becomes the persistent enrolment, with ten
//!   recovery codes shown once and stored as SHA-256 hashes (80 random bits
//!   each), each usable once.
//! - A time step once accepted for a user is never accepted again, nor any
//!   earlier one (RFC 6238 §5.2): the last accepted step is advanced with a
//!   compare-and-set in the store, so two replicas cannot both accept it.
//! - Every attempt is counted in the store per (tenant, sub) before the
//!   code is looked at: more than [`MAX_ATTEMPTS`] in [`ATTEMPT_WINDOW`] is
//!   refused (`mfa.throttled`) whatever the code, on every replica.
//! - [`MAX_FAILURES`] wrong TOTP codes in a row lock the user's TOTP codes
//!   (`mfa.locked`) until a recovery code passes or an admin resets the
//!   enrolment, so the windows above do not add up to a likely guess.
//! - A sign-in's enrolment ([`AddedFrom::SignIn`], the password alone)
//!   adds only an account's first second factor: it is refused
//!   (`mfa.enrolment_changed`) once the account has a TOTP enrolment or a
//!   passkey, whenever that came; a signed-in user's own page
//!   ([`AddedFrom::Session`]) adds more.

pub mod passkey;
pub mod qr;
pub mod totp;

use crate::clock::SharedClock;
use crate::ids::TenantId;
use crate::store::{Key, SharedStore, StoreError, StoreJson, Write};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// Base32 characters of a recovery code (80 bits).
const RECOVERY_CHARS: usize = 16;
/// Attempts (codes typed, right or wrong) per user and window.
pub const MAX_ATTEMPTS: i64 = 5;
/// The window attempts are counted in.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Wrong TOTP codes in a row (across windows) after which a user's TOTP
/// codes are refused until a right recovery code or an admin's reset
/// (NIST SP 800-63B §5.2.2: at most 100). The attempt windows alone let
/// whoever knows the password try 480 codes a day, each matching one of
/// three steps: a 40 % chance in a year.
pub const MAX_FAILURES: i64 = 100;
/// How long a run of wrong codes is remembered from its first.
const FAILURE_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a started enrolment waits for its first code.
pub const ENROL_TTL: Duration = Duration::from_secs(15 * 60);
/// How long the last accepted step is remembered: longer than any code of
/// that step (or an earlier one) can still match.
const STEP_MEMORY: Duration = Duration::from_secs(10 * 60);
/// Compare-and-set rounds before a contended update is refused.
const CAS_ROUNDS: usize = 4;

/// The key of a user's confirmed enrolment (persistent, sealed).
pub fn enrolment_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("enrolment:{sub}"))
}

/// The tag of a flow that may start an enrolment: the hash of its id (a
/// sign-in's MFA handle, or the SSO session of a self-service enrolment).
/// A pending enrolment is its flow's own: another flow never shows its
/// secret, and its first code confirms it only in its flow, so whoever
/// knows the password cannot read, from a sign-in of their own, the
/// secret the owner is enrolling (nor make the owner enrol theirs).
fn flow_tag(flow: &str) -> String {
    crate::tokens::sha256_base64url(flow.as_bytes())
}

/// The key of a user's enrolment waiting for its first code (sealed, TTL
/// [`ENROL_TTL`] from its `created_at`).
pub fn pending_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("pending:{sub}"))
}

fn step_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("step:{sub}"))
}

fn attempts_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("attempts:{sub}"))
}

fn failures_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("failures:{sub}"))
}

/// One recovery code, by hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryCode {
    /// SHA-256 (base64url) of `<tenant>/<sub>/<code>`.
    pub hash: String,
    /// When it was used (Unix seconds); a used code is refused.
    #[serde(default)]
    pub used_at: Option<i64>,
}

/// A user's TOTP enrolment. `Debug` redacts the shared secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Enrolment {
    /// The user.
    pub sub: String,
    /// The shared secret, base32 (sealed at rest).
    pub secret: String,
    /// When the enrolment was started (Unix seconds).
    pub created_at: i64,
    /// When the first code confirmed it (Unix seconds); `None` while pending.
    #[serde(default)]
    pub confirmed_at: Option<i64>,
    /// The recovery codes (empty while pending).
    #[serde(default)]
    pub recovery: Vec<RecoveryCode>,
    /// While pending: the hash of the flow that started it ([`flow_tag`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("sub", &self.sub)
            .field("secret", &crate::secret::Redacted)
            .field("created_at", &self.created_at)
            .field("confirmed_at", &self.confirmed_at)
            .field("recovery", &self.recovery)
            .field("flow", &self.flow)
            .finish()
    }
}

impl Enrolment {
    /// Recovery codes not used yet.
    pub fn recovery_left(&self) -> usize {
        self.recovery.iter().filter(|r| r.used_at.is_none()).count()
    }
}

/// What a second factor was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// A TOTP code.
    Totp,
    /// A recovery code; `remaining` are left.
    Recovery {
        /// Unused recovery codes left.
        remaining: usize,
    },
}

/// Why a code was refused.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// Not the code of any step in the window (nor an unused recovery code).
    #[error("wrong code")]
    BadCode,
    /// The code's time step (or a later one) was already accepted.
    #[error("code already used")]
    CodeReused,
    /// The recovery code was already used.
    #[error("recovery code already used")]
    RecoveryReused,
    /// Too many attempts in the window.
    #[error("too many attempts")]
    Throttled,
    /// [`MAX_FAILURES`] wrong TOTP codes in a row: TOTP codes are refused
    /// until a recovery code passes or an admin resets the enrolment.
    #[error("too many wrong codes in a row")]
    Locked,
    /// The user has no enrolment (or no pending one, when confirming).
    #[error("not enrolled")]
    NotEnrolled,
    /// The enrolment changed meanwhile (a concurrent confirmation or reset),
    /// or a sign-in's enrolment finds the account with a second factor by
    /// now ([`AddedFrom::SignIn`]).
    #[error("enrolment changed meanwhile")]
    Changed,
    /// The pending enrolment is another flow's (started since in another
    /// sign-in or browser).
    #[error("enrolment started elsewhere")]
    StartedElsewhere,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MfaError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadCode => "mfa.bad_code",
            Self::CodeReused => "mfa.code_reused",
            Self::RecoveryReused => "mfa.recovery_reused",
            Self::Throttled => "mfa.throttled",
            Self::Locked => "mfa.locked",
            Self::NotEnrolled => "mfa.not_enrolled",
            Self::Changed => "mfa.enrolment_changed",
            Self::StartedElsewhere => "mfa.enrolment_started_elsewhere",
            Self::Store(_) => "store.unavailable",
        }
    }
}

/// Where a second factor is being added from, which decides what it may be
/// added beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddedFrom {
    /// A sign-in's enrolment step, where only the password was checked: it
    /// adds the account's first second factor only, never one beside a TOTP
    /// enrolment or a passkey the account has by then (the sign-in's step
    /// was decided when its answer started waiting, and the owner may have
    /// enrolled since, elsewhere).
    SignIn,
    /// A signed-in user's own page, from an SSO session the broker let
    /// change the account's factors (recent, and with the second factor
    /// once the account has one): it may add more.
    Session,
}

/// A code as typed: spaces and dashes dropped, letters upper-cased.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn recovery_hash(t: &TenantId, sub: &str, normalised: &str) -> String {
    crate::tokens::sha256_base64url(format!("{t}/{sub}/{normalised}").as_bytes())
}

/// Random bytes from OpenSSL's generator.
fn random_bytes(n: usize) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf).map_err(|e| StoreError::Unavailable(format!("random bytes: {e}")))?;
    Ok(buf)
}

/// A recovery code as shown: four groups of four base32 characters.
fn new_recovery_code() -> Result<String, StoreError> {
    let raw = totp::base32_encode(&random_bytes(10)?);
    let chars: Vec<char> = raw.chars().take(RECOVERY_CHARS).collect();
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// The MFA enrolments and checks, over the store and the injected clock.
#[derive(Clone)]
pub struct Mfa {
    store: SharedStore,
    clock: SharedClock,
}

impl Mfa {
    /// The service over `store` (the sealing store) and `clock`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// The user's confirmed enrolment, if any.
    pub async fn enrolment(&self, t: &TenantId, sub: &str) -> Result<Option<Enrolment>, StoreError> {
        self.store.get_json(&enrolment_key(t, sub)).await
    }

    /// Whether the user has a confirmed enrolment (presence only).
    pub async fn enrolled(&self, t: &TenantId, sub: &str) -> Result<bool, StoreError> {
        self.store.exists(&enrolment_key(t, sub)).await
    }

    /// The user's pending enrolment for `flow`: the one this flow started
    /// (so a reload shows the same secret), or a new one with a fresh
    /// secret, which replaces one another flow started (its secret is
    /// never shown here, and its page's first code no longer confirms).
    pub async fn start_enrolment(&self, t: &TenantId, sub: &str, flow: &str) -> Result<Enrolment, StoreError> {
        let key = pending_key(t, sub);
        let tag = flow_tag(flow);
        let fresh = Enrolment {
            sub: sub.to_owned(),
            secret: totp::base32_encode(&random_bytes(totp::SECRET_BYTES)?),
            created_at: self.clock.unix(),
            confirmed_at: None,
            recovery: Vec::new(),
            flow: Some(tag.clone()),
        };
        for _ in 0..CAS_ROUNDS {
            match self.store.get_json::<Enrolment>(&key).await? {
                Some(p) if p.flow.as_deref() == Some(tag.as_str()) => return Ok(p),
                Some(_) => {
                    self.store.put_json(&key, &fresh, Some(ENROL_TTL)).await?;
                    return Ok(fresh);
                }
                None => {
                    if self.store.put_json_if_absent(&key, &fresh, Some(ENROL_TTL)).await? {
                        return Ok(fresh);
                    }
                }
            }
        }
        Err(StoreError::Unavailable("pending enrolment contended".into()))
    }

    /// Confirms the pending enrolment with its first code: the enrolment
    /// becomes the user's, and its recovery codes are returned (the only
    /// time they exist in clear). From a sign-in (`from`), refused
    /// (`mfa.enrolment_changed`) when the user has a passkey by now; an
    /// existing TOTP enrolment is never replaced, from anywhere.
    pub async fn confirm(
        &self,
        t: &TenantId,
        sub: &str,
        flow: &str,
        from: AddedFrom,
        code: &str,
    ) -> Result<(Enrolment, Vec<String>), MfaError> {
        self.count_attempt(t, sub).await?;
        let pending_key = pending_key(t, sub);
        let Some(pending_raw) = self.store.get(&pending_key).await? else {
            return Err(MfaError::NotEnrolled);
        };
        let pending: Enrolment =
            serde_json::from_slice(&pending_raw).map_err(|e| StoreError::Corrupt(format!("pending enrolment: {e}")))?;
        if pending.flow.as_deref() != Some(flow_tag(flow).as_str()) {
            return Err(MfaError::StartedElsewhere);
        }
        if from == AddedFrom::SignIn && passkey::has_any(&self.store, t, sub).await? {
            return Err(MfaError::Changed);
        }
        let key = totp::base32_decode(&pending.secret).ok_or(MfaError::NotEnrolled)?;
        let step = totp::matching_step(&key, &normalise(code), self.clock.unix()).ok_or(MfaError::BadCode)?;
        if !self.claim_step(t, sub, step).await? {
            return Err(MfaError::CodeReused);
        }
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            codes.push(new_recovery_code()?);
        }
        let enrolment = Enrolment {
            confirmed_at: Some(self.clock.unix()),
            flow: None,
            recovery: codes
                .iter()
                .map(|c| RecoveryCode {
                    hash: recovery_hash(t, sub, &normalise(c)),
                    used_at: None,
                })
                .collect(),
            ..pending
        };
        // One step: the enrolment is written only while the pending one is
        // still the one whose code was checked (an admin's reset removes
        // it) and no enrolment exists, and the pending one goes with it.
        let enrolment_key = enrolment_key(t, sub);
        let value = serde_json::to_vec(&enrolment).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let written = self
            .store
            .write_many(&[
                Write::RequireValue {
                    key: &pending_key,
                    value: &pending_raw,
                },
                Write::RequireAbsent { key: &enrolment_key },
                Write::Put {
                    key: &enrolment_key,
                    value: &value,
                    ttl: None,
                },
                Write::Delete { key: &pending_key },
            ])
            .await?;
        if !written {
            return Err(if self.store.exists(&enrolment_key).await? {
                MfaError::Changed
            } else {
                // Reset (or set up again) since its code was checked.
                MfaError::NotEnrolled
            });
        }
        self.forget_attempts(t, sub).await;
        Ok((enrolment, codes))
    }

    /// Checks a second factor of an enrolled user: a TOTP code (6 digits)
    /// or one of the recovery codes.
    pub async fn verify(&self, t: &TenantId, sub: &str, code: &str) -> Result<Factor, MfaError> {
        self.count_attempt(t, sub).await?;
        let code = normalise(code);
        let factor = if code.len() == RECOVERY_CHARS {
            self.use_recovery(t, sub, &code).await?
        } else {
            let failures_key = failures_key(t, sub);
            let (enrolment, failures) = tokio::try_join!(self.enrolment(t, sub), self.store.get(&failures_key))?;
            let Some(enrolment) = enrolment else {
                return Err(MfaError::NotEnrolled);
            };
            let failures = failures
                .and_then(|f| std::str::from_utf8(&f).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            if failures >= MAX_FAILURES {
                return Err(MfaError::Locked);
            }
            let key = totp::base32_decode(&enrolment.secret).ok_or(MfaError::NotEnrolled)?;
            let Some(step) = totp::matching_step(&key, &code, self.clock.unix()) else {
                let n = self.store.incr(&failures_key, FAILURE_MEMORY).await?;
                return Err(if n >= MAX_FAILURES {
                    MfaError::Locked
                } else {
                    MfaError::BadCode
                });
            };
            if !self.claim_step(t, sub, step).await? {
                return Err(MfaError::CodeReused);
            }
            Factor::Totp
        };
        self.forget_attempts(t, sub).await;
        Ok(factor)
    }

    /// Removes the user's enrolment (confirmed and pending), passkeys, and
    /// the replay and attempt state: the next sign-in enrols again where MFA
    /// is required. Returns whether there was a confirmed enrolment or a
    /// passkey.
    pub async fn reset(&self, t: &TenantId, sub: &str) -> Result<bool, StoreError> {
        let passkeys = passkey::remove_all(&self.store, t, sub).await?;
        let had = self.store.delete(&enrolment_key(t, sub)).await?;
        self.store.delete(&pending_key(t, sub)).await?;
        self.store.delete(&attempts_key(t, sub)).await?;
        self.store.delete(&failures_key(t, sub)).await?;
        Ok(had || passkeys > 0)
    }

    /// Counts one attempt (a code or a passkey); refuses it beyond the limit.
    pub async fn count_attempt(&self, t: &TenantId, sub: &str) -> Result<(), MfaError> {
        let n = self.store.incr(&attempts_key(t, sub), ATTEMPT_WINDOW).await?;
        if n > MAX_ATTEMPTS {
            return Err(MfaError::Throttled);
        }
        Ok(())
    }

    /// A right code clears the count. Failing to clear it only keeps the
    /// user more restricted (fail closed), so it is logged, not raised.
    pub async fn forget_attempts(&self, t: &TenantId, sub: &str) {
        let (attempts, failures) = (attempts_key(t, sub), failures_key(t, sub));
        let cleared = tokio::try_join!(self.store.delete(&attempts), self.store.delete(&failures));
        if let Err(e) = cleared {
            tracing::warn!(reason = "mfa.attempts_not_cleared", tenant = %t, error = %e);
        }
    }

    /// Clears the window's attempts only (tests: many windows at once).
    #[cfg(test)]
    async fn forget_attempts_in_window(&self, t: &TenantId, sub: &str) {
        let _ = self.store.delete(&attempts_key(t, sub)).await;
    }

    /// Advances the user's last accepted step to `step`; `false` when it is
    /// already there or beyond (a replay), or the update stayed contended.
    async fn claim_step(&self, t: &TenantId, sub: &str, step: u64) -> Result<bool, StoreError> {
        let key = step_key(t, sub);
        let value = step.to_string();
        for _ in 0..CAS_ROUNDS {
            match self.store.get(&key).await? {
                None => {
                    if self
                        .store
                        .put_if_absent(&key, value.as_bytes(), Some(STEP_MEMORY))
                        .await?
                    {
                        return Ok(true);
                    }
                }
                Some(stored) => {
                    let last = std::str::from_utf8(&stored)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| StoreError::Corrupt("mfa step".into()))?;
                    if step <= last {
                        return Ok(false);
                    }
                    if self
                        .store
                        .compare_and_put(&key, &stored, value.as_bytes(), Some(STEP_MEMORY))
                        .await?
                    {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Marks the recovery code `code` (normalised) used, atomically against
    /// the enrolment record as read.
    async fn use_recovery(&self, t: &TenantId, sub: &str, code: &str) -> Result<Factor, MfaError> {
        let key = enrolment_key(t, sub);
        let hash = recovery_hash(t, sub, code);
        for _ in 0..CAS_ROUNDS {
            let Some(stored) = self.store.get(&key).await? else {
                return Err(MfaError::NotEnrolled);
            };
            let mut enrolment: Enrolment =
                serde_json::from_slice(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Every entry is compared, in constant time.
            let mut found = None;
            for (i, r) in enrolment.recovery.iter().enumerate() {
                if bool::from(r.hash.as_bytes().ct_eq(hash.as_bytes())) {
                    found = found.or(Some(i));
                }
            }
            let Some(entry) = found.and_then(|i| enrolment.recovery.get_mut(i)) else {
                return Err(MfaError::BadCode);
            };
            if entry.used_at.is_some() {
                return Err(MfaError::RecoveryReused);
            }
            entry.used_at = Some(self.clock.unix());
            let remaining = enrolment.recovery_left();
            let new = serde_json::to_vec(&enrolment).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if self.store.compare_and_put(&key, &stored, &new, None).await? {
                return Ok(Factor::Recovery { remaining });
            }
        }
        Err(MfaError::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn setup() -> (Mfa, Arc<ManualClock>, TenantId) {
        let clock = Arc::new(ManualClock::at(
            chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ));
        let store: SharedStore = Arc::new(crate::store::memory::MemoryStore::new(clock.clone()));
        (Mfa::new(store, clock.clone()), clock, TenantId::parse("acme").unwrap())
    }

    fn code_now(secret: &str, clock: &ManualClock) -> String {
        use crate::clock::Clock;
        let key = totp::base32_decode(secret).unwrap();
        totp::code_at(totp::Algorithm::Sha1, &key, totp::step_of(clock.unix()).unwrap(), 6).unwrap()
    }

    #[tokio::test]
    async fn enrolment_confirms_with_a_first_code_and_a_used_step_is_refused() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        // A reload shows the same secret.
        assert_eq!(
            mfa.start_enrolment(&t, "u1", "flow").await.unwrap().secret,
            pending.secret
        );
        assert!(!mfa.enrolled(&t, "u1").await.unwrap());
        let code = code_now(&pending.secret, &clock);
        let (_, recovery) = mfa.confirm(&t, "u1", "flow", AddedFrom::Session, &code).await.unwrap();
        assert_eq!(recovery.len(), RECOVERY_CODES);
        assert!(mfa.enrolled(&t, "u1").await.unwrap());
        // The confirming code cannot sign in again.
        assert!(matches!(mfa.verify(&t, "u1", &code).await, Err(MfaError::CodeReused)));
        clock.advance(chrono::Duration::seconds(30));
        let next = code_now(&pending.secret, &clock);
        assert_eq!(mfa.verify(&t, "u1", &next).await.unwrap(), Factor::Totp);
        assert_eq!(
            mfa.verify(&t, "u1", &next).await.unwrap_err().reason(),
            "mfa.code_reused"
        );
    }

    /// A 6-digit code matching no step of the window around now.
    fn wrong_now(secret: &str, clock: &ManualClock) -> String {
        use crate::clock::Clock;
        let key = totp::base32_decode(secret).unwrap();
        let step = totp::step_of(clock.unix()).unwrap();
        let window: Vec<String> = [step - 1, step, step + 1]
            .iter()
            .map(|s| totp::code_at(totp::Algorithm::Sha1, &key, *s, 6).unwrap())
            .collect();
        (0..10)
            .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
            .find(|c| !window.contains(c))
            .unwrap()
    }

    #[tokio::test]
    async fn wrong_codes_in_a_row_across_windows_lock_totp_until_a_recovery_code_or_a_reset() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        let (_, recovery) = mfa
            .confirm(&t, "u1", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        let secret = pending.secret;
        // Each window's attempts, right up to the lock: wrong codes only.
        let mut wrong = 0;
        while wrong < MAX_FAILURES - 1 {
            for _ in 0..MAX_ATTEMPTS {
                if wrong == MAX_FAILURES - 1 {
                    break;
                }
                let e = mfa.verify(&t, "u1", &wrong_now(&secret, &clock)).await.unwrap_err();
                assert_eq!(e.reason(), "mfa.bad_code", "after {wrong} wrong codes");
                wrong += 1;
            }
            clock.advance(chrono::Duration::from_std(ATTEMPT_WINDOW).unwrap());
        }
        // The hundredth wrong code locks; then a right code is refused too.
        let e = mfa.verify(&t, "u1", &wrong_now(&secret, &clock)).await.unwrap_err();
        assert_eq!(e.reason(), "mfa.locked");
        let e = mfa.verify(&t, "u1", &code_now(&secret, &clock)).await.unwrap_err();
        assert_eq!(e.reason(), "mfa.locked");
        // A recovery code still passes, and unlocks.
        assert!(matches!(
            mfa.verify(&t, "u1", &recovery[0]).await,
            Ok(Factor::Recovery { .. })
        ));
        clock.advance(chrono::Duration::seconds(30));
        assert_eq!(
            mfa.verify(&t, "u1", &code_now(&secret, &clock)).await.unwrap(),
            Factor::Totp
        );

        // A right code between wrong ones starts the count again.
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u2", "flow").await.unwrap();
        mfa.confirm(&t, "u2", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            let _ = mfa.verify(&t, "u2", &wrong_now(&pending.secret, &clock)).await;
            mfa.forget_attempts_in_window(&t, "u2").await;
        }
        clock.advance(chrono::Duration::seconds(30));
        assert_eq!(
            mfa.verify(&t, "u2", &code_now(&pending.secret, &clock)).await.unwrap(),
            Factor::Totp
        );
        let e = mfa
            .verify(&t, "u2", &wrong_now(&pending.secret, &clock))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "mfa.bad_code");
        // An admin's reset ends a lock.
        for _ in 0..MAX_FAILURES {
            let _ = mfa.verify(&t, "u2", &wrong_now(&pending.secret, &clock)).await;
            mfa.forget_attempts_in_window(&t, "u2").await;
        }
        let e = mfa
            .verify(&t, "u2", &wrong_now(&pending.secret, &clock))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "mfa.locked");
        assert!(mfa.reset(&t, "u2").await.unwrap());
        assert!(!mfa.store.exists(&failures_key(&t, "u2")).await.unwrap());
    }

    #[tokio::test]
    async fn an_earlier_step_is_refused_after_a_later_one() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        mfa.confirm(&t, "u1", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        clock.advance(chrono::Duration::seconds(60));
        let key = totp::base32_decode(&pending.secret).unwrap();
        use crate::clock::Clock;
        let step = totp::step_of(clock.unix()).unwrap();
        let current = totp::code_at(totp::Algorithm::Sha1, &key, step, 6).unwrap();
        let previous = totp::code_at(totp::Algorithm::Sha1, &key, step - 1, 6).unwrap();
        assert_eq!(mfa.verify(&t, "u1", &current).await.unwrap(), Factor::Totp);
        assert_eq!(
            mfa.verify(&t, "u1", &previous).await.unwrap_err().reason(),
            "mfa.code_reused"
        );
    }

    #[tokio::test]
    async fn wrong_codes_are_throttled_in_the_store() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        mfa.confirm(&t, "u1", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        clock.advance(chrono::Duration::seconds(30));
        let right = code_now(&pending.secret, &clock);
        let wrong = if right == "000000" { "111111" } else { "000000" };
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(mfa.verify(&t, "u1", wrong).await.unwrap_err().reason(), "mfa.bad_code");
        }
        // Even the right code is refused now.
        assert_eq!(
            mfa.verify(&t, "u1", &right).await.unwrap_err().reason(),
            "mfa.throttled"
        );
        clock.advance(chrono::Duration::from_std(ATTEMPT_WINDOW).unwrap());
        let right = code_now(&pending.secret, &clock);
        assert_eq!(mfa.verify(&t, "u1", &right).await.unwrap(), Factor::Totp);
    }

    #[tokio::test]
    async fn recovery_codes_are_single_use_and_stored_hashed() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        let (_, codes) = mfa
            .confirm(&t, "u1", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        let stored = mfa.enrolment(&t, "u1").await.unwrap().unwrap();
        let json = serde_json::to_string(&stored).unwrap();
        for c in &codes {
            assert!(!json.contains(c.as_str()) && !json.contains(&normalise(c)));
        }
        let first = codes[0].to_lowercase();
        assert_eq!(
            mfa.verify(&t, "u1", &first).await.unwrap(),
            Factor::Recovery { remaining: 9 }
        );
        assert_eq!(
            mfa.verify(&t, "u1", &codes[0]).await.unwrap_err().reason(),
            "mfa.recovery_reused"
        );
        assert_eq!(
            mfa.verify(&t, "u1", "AAAA-BBBB-CCCC-DDDD").await.unwrap_err().reason(),
            "mfa.bad_code"
        );
        // Another user's code is not this user's.
        let other = mfa.start_enrolment(&t, "u2", "flow").await.unwrap();
        mfa.confirm(&t, "u2", "flow", AddedFrom::Session, &code_now(&other.secret, &clock))
            .await
            .unwrap();
        assert_eq!(
            mfa.verify(&t, "u2", &codes[1]).await.unwrap_err().reason(),
            "mfa.bad_code"
        );
    }

    #[tokio::test]
    async fn reset_removes_the_enrolment() {
        let (mfa, clock, t) = setup();
        let pending = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        mfa.confirm(&t, "u1", "flow", AddedFrom::Session, &code_now(&pending.secret, &clock))
            .await
            .unwrap();
        assert!(mfa.reset(&t, "u1").await.unwrap());
        assert!(!mfa.enrolled(&t, "u1").await.unwrap());
        assert!(!mfa.reset(&t, "u1").await.unwrap());
        let again = mfa.start_enrolment(&t, "u1", "flow").await.unwrap();
        assert_ne!(again.secret, pending.secret);
    }
}
