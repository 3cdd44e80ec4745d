//! Local accounts: people who sign in with an email and a password kept by
//! Portcullis, for tenants without an IdP (Cognito's user pool).
//!
//! Accounts live per (tenant, local connection), keyed by the SHA-256 of the
//! normalised email (no address in a key name). Sign-up makes an
//! `UNCONFIRMED` account and e-mails a six-digit code (single use, 10-minute
//! TTL, at most 5 attempts, stored salted-hashed); confirming makes it
//! `CONFIRMED`, and only then can it sign in. Failed sign-ins are counted in
//! the store (so every replica sees them) and lock the account with
//! exponential backoff. Answers never tell whether an email has an account:
//! unknown emails are checked against a dummy hash (same work), and sign-up,
//! resend and forgot-password always answer the same; mail goes out in the
//! background so its latency does not show either.
//!
//! Every key of one tenant's accounts shares the hash tag `t:<tenant>:local`.
//!
//! One spelling per address: every request's address goes through
//! [`Accounts::address`], which keys the account, its codes, its lockout
//! and its mail budget by one spelling ([`normalise_email`]: the domain
//! through UTS 46 to A-labels, the local part lower case in NFC with
//! full-width forms mapped), so `josé` with a precomposed or a combining
//! accent, full-width letters, or a Unicode domain and its A-label make one
//! account and one lockout. Mail goes to the account's stored address,
//! never to the spelling a request typed. ASCII addresses are stored as
//! they always were. An account made before addresses had one spelling is
//! stored under its address as typed then (trimmed, lower-cased); it keeps
//! that key and stays reachable: [`Accounts::address`] also looks under
//! the typed spelling's old form, under the one spelling with its domain
//! in Unicode (how a browser sends it) and under both decomposed (NFD), and
//! a sign-up, an admin's create or a migration that finds it there is
//! answered as for a taken address, so no second account is made beside
//! it. Only an old account under a spelling none of those is (full-width,
//! or partly decomposed, as typed then) is found by that spelling alone;
//! the admin listing shows each account's stored spelling.

pub mod challenge;
pub mod password;

use crate::audit::{Actor, Audit, AuditEvent, Outcome, Target};
use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::mail::{MailTemplate, Mailer};
use crate::secret::Secret;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use password::{Hasher, PasswordPolicy, PolicyViolation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Lifetime of a verification or reset code.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// The most attempts at one code; the code is void after that.
pub const CODE_MAX_ATTEMPTS: i64 = 5;
/// The most codes mailed per account and purpose per hour.
pub const CODES_PER_HOUR: u64 = 5;
/// The most wrong answers to mailed codes of one purpose for one account
/// in a row (no right code between them) within [`WRONG_CODES_WINDOW`] of
/// the first (an answer while no code is outstanding guesses nothing and
/// does not count, so strangers cannot lock an owner out):
/// then every code of that purpose is refused (`local.code_locked`) until
/// the window ends or an admin acts (force-reset clears the reset codes'
/// run, delete clears everything). [`CODE_MAX_ATTEMPTS`] bounds the
/// guesses at one code, but a new code can be asked for at any time, and
/// each came with fresh attempts: without this, six-digit codes fall to
/// patience (NIST SP 800-63B §5.2.2).
pub const WRONG_CODES_IN_A_ROW: i64 = 20;
/// How long a run of wrong codes is remembered, from its first.
pub const WRONG_CODES_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How long an account nobody confirmed is kept. Sign-up is open to
/// strangers, so what they leave must expire: an unconfirmed account is
/// stored with this TTL (refreshed by a new sign-up of its address) and
/// kept for good only once it is confirmed (or while an admin keeps it
/// disabled).
/// Someone who confirms later simply signs up again.
pub const UNCONFIRMED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The TTL an account is stored with: [`UNCONFIRMED_TTL`] while it is
/// unconfirmed (and not disabled by an admin), none once it is anything
/// else.
fn ttl_of(user: &LocalUser) -> Option<Duration> {
    (user.status == AccountStatus::Unconfirmed && !user.disabled).then_some(UNCONFIRMED_TTL)
}

/// Whether `key` is a local account's record (`t:<tenant>:local` /
/// `user:<connection>:<id>`).
pub fn is_account_key(key: &Key) -> bool {
    key.tag().starts_with("t:") && key.tag().ends_with(":local") && key.name().starts_with("user:")
}

/// The TTL a restored account record `raw` is written with: what is left
/// of [`UNCONFIRMED_TTL`] since its last write (`updated_at`, which every
/// write of an unconfirmed account renews with its TTL), at least a second,
/// while it is unconfirmed; none once it is anything else. A backup keeps
/// no TTL, so without this a restore would keep for good an account nobody
/// confirmed. `None` too for a record that is not an account (the restore
/// writes what it was given).
pub fn restored_ttl(raw: &[u8], now_unix: i64) -> Option<Duration> {
    let user: LocalUser = serde_json::from_slice(raw).ok()?;
    let ttl = ttl_of(&user)?;
    let age = u64::try_from(now_unix.saturating_sub(user.updated_at)).unwrap_or(0);
    Some(ttl.saturating_sub(Duration::from_secs(age)).max(Duration::from_secs(1)))
}

/// How many index members each new account's sweep looks at
/// ([`Accounts::sweep_index`]): two, so an index at most half gone shrinks
/// by one per sweep on average, as fast as sign-ups grow it.
pub const INDEX_SWEEP: usize = 2;

/// The store group (hash tag suffix) of local accounts.
pub const GROUP: &str = "local";

/// The stored configuration of a local connection (`"kind":"local"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The password policy.
    pub password_policy: PasswordPolicy,
    /// Whether people may sign up themselves (otherwise only admins create accounts).
    #[serde(default = "yes")]
    pub allow_sign_up: bool,
    /// The verification message (`{code}`, `{minutes}`, `{tenant}`); default when unset.
    pub verify_template: Option<MailTemplate>,
    /// The password-reset message; default when unset.
    pub reset_template: Option<MailTemplate>,
    /// How people sign in: with a password (default), or passwordless with
    /// the tenant's `custom_challenge` hook only.
    pub sign_in: SignInMode,
}

/// How a local connection signs people in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignInMode {
    /// Email and password, then the custom challenge when the tenant has one.
    #[default]
    Password,
    /// Email only, then the tenant's `custom_challenge` hook decides alone
    /// (Cognito's CUSTOM_AUTH without SRP); refused without that hook.
    CustomChallenge,
}

fn yes() -> bool {
    true
}

impl LocalConfig {
    /// Checks the values an admin gave; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.password_policy
            .check_settings()
            .map_err(|m| ("password_policy".to_owned(), m))?;
        if let Some(t) = &self.verify_template {
            t.check().map_err(|m| ("verify_template".to_owned(), m))?;
        }
        if let Some(t) = &self.reset_template {
            t.check().map_err(|m| ("reset_template".to_owned(), m))?;
        }
        Ok(())
    }
}

/// The state of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    /// Signed up, email not confirmed yet: cannot sign in.
    Unconfirmed,
    /// Can sign in.
    Confirmed,
    /// An admin asked for a new password: sign-in refused until the person
    /// resets it by a code sent to the address.
    ResetRequired,
    /// Switched off by an admin (answers only: stored as `disabled`).
    Disabled,
}

/// A stored local account. `Debug` redacts the password hash (offline
/// guesses start from it) and the address.
#[derive(Clone, Serialize, Deserialize)]
pub struct LocalUser {
    /// The address in the spelling the account is keyed by: its one
    /// spelling ([`normalise_email`]), or for an account made before
    /// addresses had one, as typed then (trimmed, lower-cased).
    pub email: String,
    /// The stable upstream subject of this account (random; the directory
    /// maps it to the tenant's `sub`).
    pub subject: String,
    /// `UNCONFIRMED`, `CONFIRMED` or `RESET_REQUIRED`.
    pub status: AccountStatus,
    /// Switched off by an admin.
    #[serde(default)]
    pub disabled: bool,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Given name.
    #[serde(default)]
    pub given_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub family_name: Option<String>,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Last change (Unix seconds).
    pub updated_at: i64,
    /// Moved in by the user-migration hook.
    #[serde(default)]
    pub migrated: bool,
    /// More than one sign-up asked for this address before it was
    /// confirmed. Whoever confirms it then also chooses a new password by a
    /// mailed code (it is confirmed as `ResetRequired`): otherwise someone
    /// who signed up first with another person's address would sign in
    /// with their own password once the owner confirmed it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub contested: bool,
    /// The incarnations of the tenant and connection the account was made
    /// for (`<tenant>.<connection>`): a tenant or connection deleted and
    /// created again under the same ids does not see it, whether or not
    /// the deletion's purge removed it. Accounts from before this field are
    /// bound at their next change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// The digest of the secret of the browser that signed the account up
    /// (until it is confirmed). A confirmation from another browser
    /// confirms it as `ResetRequired`: whoever has the mailbox but not the
    /// browser that chose the password chooses a new one by a mailed code,
    /// so an account someone else pre-registered with the owner's address
    /// never keeps their password (account pre-hijacking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_up_in: Option<String>,
}

impl std::fmt::Debug for LocalUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::secret::Redacted;
        f.debug_struct("LocalUser")
            .field("email", &Redacted)
            .field("subject", &self.subject)
            .field("status", &self.status)
            .field("disabled", &self.disabled)
            .field("password_hash", &Redacted)
            .field("given_name", &Redacted::of(&self.given_name))
            .field("family_name", &Redacted::of(&self.family_name))
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("migrated", &self.migrated)
            .field("contested", &self.contested)
            .field("incarnation", &self.incarnation)
            .field("signed_up_in", &self.signed_up_in)
            .finish()
    }
}

/// The digest of a browser's sign-up secret ([`LocalUser::signed_up_in`]).
fn browser_digest(secret: &str) -> String {
    crate::tokens::sha256_base64url(secret.as_bytes())
}

impl LocalUser {
    /// The status as answered (disabled wins).
    pub fn effective_status(&self) -> AccountStatus {
        if self.disabled {
            AccountStatus::Disabled
        } else {
            self.status
        }
    }
}

/// The digest of an account's password hash, to tell later whether the
/// password changed since a sign-in proved it (not the hash itself: the
/// records a sign-in leaves on its way, its ticket and its wait for a
/// second factor, are not the place for it).
pub fn password_digest(user: &LocalUser) -> String {
    crate::tokens::sha256_base64url(user.password_hash.as_bytes())
}

/// Whether the account a sign-in began with is still the one stored for
/// `email`: the same `subject` (not deleted, nor deleted and created
/// again), confirmed (no force-reset meanwhile), not disabled, with the
/// password hash whose digest is `password` (no change or reset since).
/// The later steps of a local sign-in (the ticket's redemption,
/// Portcullis's second factor) ask this, so that what the old password
/// began ends with it. Read straight from the store: an account of an
/// earlier incarnation of the tenant or connection has another subject,
/// and such a sign-in is refused by the broker anyway
/// (`callback.login_superseded`).
pub async fn account_unchanged(
    store: &SharedStore,
    t: &TenantId,
    c: &ConnectionId,
    email: &str,
    subject: &str,
    password: &str,
) -> Result<bool, StoreError> {
    use subtle::ConstantTimeEq;
    let Some(user) = store.get_json::<LocalUser>(&user_key(t, c, email)).await? else {
        return Ok(false);
    };
    Ok(user.subject == subject
        && user.effective_status() == AccountStatus::Confirmed
        && bool::from(password_digest(&user).as_bytes().ct_eq(password.as_bytes())))
}

/// The most characters of a given or family name kept on an account
/// (a sign-up's, an admin's).
pub const MAX_NAME_CHARS: usize = 200;

/// Optional profile fields of a new account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
}

impl Profile {
    /// The first field longer than [`MAX_NAME_CHARS`], if any.
    pub fn too_long(&self) -> Option<&'static str> {
        [("given_name", &self.given_name), ("family_name", &self.family_name)]
            .into_iter()
            .find(|(_, v)| v.as_ref().is_some_and(|v| v.chars().count() > MAX_NAME_CHARS))
            .map(|(field, _)| field)
    }

    /// Refuses a name over [`MAX_NAME_CHARS`] (`local.name_too_long`)
    /// before an account is made with it: a stranger's sign-up is kept
    /// whether or not anyone confirms it, and 200 characters stay within
    /// what an identity may carry ([`crate::upstream::MAX_NAME_BYTES`],
    /// checked at every sign-in), so no account is made that could never
    /// sign in.
    fn check(&self) -> Result<(), LocalError> {
        if self.too_long().is_some() {
            tracing::info!(reason = "local.name_too_long", "a name over the limit was refused");
            return Err(LocalError::refused(
                "local.name_too_long",
                "A name may have at most 200 characters.",
            ));
        }
        Ok(())
    }
}

/// A refusal or failure of an account operation.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Refused: `reason` is the stable code; `message` may be shown.
    #[error("{reason}")]
    Refused {
        /// Stable reason code (`local.bad_credentials`...).
        reason: &'static str,
        /// A sentence for the person.
        message: &'static str,
        /// Seconds until a retry may work (lockout).
        retry_after: Option<u64>,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error("{0}")]
    Hash(#[from] password::HashError),
    /// A tenant's hook (user migration, post confirmation) failed: the
    /// operation did not happen (fail closed).
    #[error("{0}")]
    Hook(#[from] crate::hooks::HookError),
}

impl LocalError {
    fn refused(reason: &'static str, message: &'static str) -> Self {
        Self::Refused {
            reason,
            message,
            retry_after: None,
        }
    }

    /// The reason code (for logs and tests).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { reason, .. } => reason,
            Self::Store(_) => "store.unavailable",
            Self::Hash(_) => "local.hash_failed",
            Self::Hook(e) => e.reason(),
        }
    }
}

impl From<PolicyViolation> for LocalError {
    fn from(v: PolicyViolation) -> Self {
        let message = match v {
            PolicyViolation::TooShort => "The password is too short.",
            PolicyViolation::TooLong => "The password is too long.",
            PolicyViolation::TooFewClasses => {
                "The password needs more kinds of characters (lower case, upper case, digits, symbols)."
            }
            PolicyViolation::Breached => {
                "This password appears in lists of breached or common passwords. Please choose another one."
            }
            PolicyViolation::ContainsEmail => "The password must not contain your email address.",
        };
        Self::refused(v.reason(), message)
    }
}

/// What a code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    /// Confirming the email of a new account.
    Verify,
    /// Resetting a forgotten password.
    Reset,
}

impl CodePurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CodeRecord {
    salt: String,
    hash: String,
}

/// How failed sign-ins lock an account.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Failures before the first lock.
    pub threshold: u32,
    /// The first lock (seconds), doubled with each further failure.
    pub base_secs: u64,
    /// The longest lock.
    pub max_secs: u64,
    /// How long failures are remembered.
    pub window_secs: u64,
}

impl LockoutPolicy {
    /// The lock after the `failures`-th failure, if any.
    pub fn lock_secs(&self, failures: i64) -> Option<u64> {
        let over = failures.checked_sub(i64::from(self.threshold))?;
        if over < 0 {
            return None;
        }
        let shift = u32::try_from(over).unwrap_or(u32::MAX).min(30);
        Some(self.base_secs.saturating_mul(1u64 << shift).min(self.max_secs))
    }
}

/// The one spelling of an email address that keys its account, its codes,
/// its lockout and its mail budget, or `None` when it is not an address.
/// Two spellings of one mailbox make one account:
///
/// - The domain goes through UTS 46 ToASCII (`idna`, nontransitional, as
///   browsers do; no STD3 or hyphen rules, which real mail domains break):
///   Unicode labels become their A-labels, full-width letters and dots
///   their ASCII ones, upper case lower. A domain UTS 46 refuses (a label
///   it disallows, a bidi or joiner violation) is no address. The result is
///   how [`crate::tenant::email_domain`] writes the tenant's own domains,
///   which are ASCII, so a local address compares with them as it is.
/// - The local part is mapped as PRECIS's UsernameCaseMapped profile does
///   (RFC 8265 §3.3): full-width and half-width forms to their ordinary
///   characters, then lower case, then Unicode NFC. NFC, not NFKC: RFC 6532
///   §3.1 asks for NFC in addresses and advises against NFKC, which also
///   folds characters (ligatures, superscripts, mathematical letters) that
///   mail systems keep apart, so it would make one account of what can be
///   two mailboxes, and a reset code asked for one spelling would reach
///   the account of the other. PRECIS maps only widths beyond NFC for the
///   same reason.
///
/// An address that is all ASCII is only trimmed and lower-cased, exactly as
/// before this form existed, so no stored ASCII account changes its key (an
/// A-label is taken as written: an invalid one names no domain that a valid
/// Unicode one could be another spelling of). The rules hold on the result:
/// at most 254 bytes, one `@` with something before it, a domain with an
/// inner dot, no whitespace, control character or `<>,;"`.
pub fn normalise_email(raw: &str) -> Option<String> {
    let (local, domain) = raw.trim().split_once('@')?;
    let e = format!("{}@{}", canonical_local_part(local), canonical_domain(domain)?);
    plain_email(&e).then_some(e)
}

/// How [`normalise_email`] read an address before it had one spelling:
/// trimmed and lower-cased only. Accounts made then are stored under this
/// form of what was typed ([`Accounts::address`] finds them).
fn legacy_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    plain_email(&e).then_some(e)
}

/// The address `raw` as a page keeps it for the next form (trimmed and
/// lower-cased as typed, or its one spelling when that is no address),
/// `None` when it is no address. Sent again, it finds the account `raw`
/// found ([`Accounts::address`]); its one spelling might miss an account
/// stored under what was typed.
pub fn as_typed(raw: &str) -> Option<String> {
    let canonical = normalise_email(raw)?;
    Some(legacy_email(raw).unwrap_or(canonical))
}

/// The rules an address keeps whatever its spelling.
fn plain_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && e.len() <= 254
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
        && !domain.contains('@')
}

/// The local part as RFC 8265's UsernameCaseMapped profile prepares it:
/// width mapping, lower case, NFC (see [`normalise_email`]).
fn canonical_local_part(local: &str) -> String {
    if local.is_ascii() {
        return local.to_ascii_lowercase();
    }
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let mut widened = String::with_capacity(local.len());
    for c in local.chars() {
        if is_width_form(c) {
            // The decomposition of a <wide> or <narrow> character is its
            // ordinary one (NFKC of that one character, as PRECIS's width
            // mapping rule says).
            widened.push_str(&nfkc.normalize(c.encode_utf8(&mut [0; 4])));
        } else {
            widened.push(c);
        }
    }
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc()
        .normalize(&widened.to_lowercase())
        .into_owned()
}

/// Whether `c` is a full-width or half-width form (decomposition type
/// `<wide>` or `<narrow>`): the Halfwidth and Fullwidth Forms block and
/// the ideographic space.
fn is_width_form(c: char) -> bool {
    c == '\u{3000}' || ('\u{FF00}'..='\u{FFEF}').contains(&c)
}

/// The domain in ASCII by UTS 46 ToASCII; an ASCII one only lower-cased
/// (see [`normalise_email`]). `None` when UTS 46 refuses it.
fn canonical_domain(domain: &str) -> Option<String> {
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    idna::uts46::Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            idna::uts46::AsciiDenyList::EMPTY,
            idna::uts46::Hyphens::Allow,
            idna::uts46::DnsLength::Ignore,
        )
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// The canonical address `canonical` with its A-labels as Unicode, as
/// people typed it before addresses had one spelling (`None` when it has
/// no A-label).
fn unicode_spelling(canonical: &str) -> Option<String> {
    let (local, domain) = canonical.split_once('@')?;
    if !domain.split('.').any(|l| l.starts_with("xn--")) {
        return None;
    }
    let (unicode, checked) = idna::domain_to_unicode(domain);
    checked.ok()?;
    legacy_email(&format!("{local}@{unicode}"))
}

/// Every spelling under which an account of the address `raw` may be
/// stored: its one spelling ([`normalise_email`]), then the ones accounts
/// made before it had one may have: `raw` as it was read then (trimmed,
/// lower-cased), the canonical address with its domain in Unicode, and
/// both decomposed (NFD); at most four.
/// `older` is empty for an address written as it is stored now (every ASCII
/// address without an A-label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spellings {
    /// The one spelling new accounts are stored under.
    pub canonical: String,
    /// Earlier spellings of the same address, most specific first.
    pub older: Vec<String>,
}

impl Spellings {
    /// The spellings of `raw`, or `None` when it is not an address.
    pub fn of(raw: &str) -> Option<Self> {
        let canonical = normalise_email(raw)?;
        let unicode = unicode_spelling(&canonical);
        // Decomposed too: text some systems hand over (macOS file names,
        // some input methods) is NFD throughout.
        let nfd = |e: &str| legacy_email(&icu_normalizer::DecomposingNormalizerBorrowed::new_nfd().normalize(e));
        let decomposed = [Some(canonical.as_str()), unicode.as_deref()].map(|e| e.and_then(nfd));
        let mut older: Vec<String> = Vec::new();
        for s in [legacy_email(raw), unicode].into_iter().chain(decomposed).flatten() {
            if s != canonical && !older.contains(&s) {
                older.push(s);
            }
        }
        Some(Self { canonical, older })
    }
}

fn email_id(email: &str) -> String {
    hex::encode(sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        email.as_bytes(),
    )))
}

fn key(t: &TenantId, name: String) -> Key {
    Key::tenant(t.as_str(), GROUP, name)
}

/// The key of the account `email` of connection `c`.
pub fn user_key(t: &TenantId, c: &ConnectionId, email: &str) -> Key {
    key(t, format!("user:{c}:{}", email_id(email)))
}

/// The index of a connection's accounts (members: email ids).
pub fn index_key(t: &TenantId, c: &ConnectionId) -> Key {
    key(t, format!("users:{c}"))
}

/// The key of an account given its email id (as in the index).
pub fn user_key_by_id(t: &TenantId, c: &ConnectionId, id: &str) -> Key {
    key(t, format!("user:{c}:{id}"))
}

fn code_key(t: &TenantId, c: &ConnectionId, p: CodePurpose, email: &str) -> Key {
    key(t, format!("code:{}:{c}:{}", p.as_str(), email_id(email)))
}

fn attempts_key(t: &TenantId, c: &ConnectionId, p: CodePurpose, email: &str) -> Key {
    key(t, format!("code-attempts:{}:{c}:{}", p.as_str(), email_id(email)))
}

/// The run of wrong answers to mailed codes of one purpose since the last
/// right code ([`WRONG_CODES_IN_A_ROW`]); it outlives every single code.
fn code_run_key(t: &TenantId, c: &ConnectionId, p: CodePurpose, email: &str) -> Key {
    key(t, format!("code-run:{}:{c}:{}", p.as_str(), email_id(email)))
}

fn mail_limit_key(t: &TenantId, c: &ConnectionId, p: CodePurpose, email: &str) -> Key {
    key(t, format!("code-mails:{}:{c}:{}", p.as_str(), email_id(email)))
}

fn fails_key(t: &TenantId, c: &ConnectionId, email: &str) -> Key {
    key(t, format!("fails:{c}:{}", email_id(email)))
}

/// Held while one password check of the account runs.
fn checking_key(t: &TenantId, c: &ConnectionId, email: &str) -> Key {
    key(t, format!("checking:{c}:{}", email_id(email)))
}

/// How long a password check or a challenge answer may hold its account,
/// beyond the one hook call it may make (a replica that dies mid-check
/// frees it then): the password hash and the store's waits.
const CHECK_HOLD: Duration = Duration::from_secs(10);

fn lock_key(t: &TenantId, c: &ConnectionId, email: &str) -> Key {
    key(t, format!("lock:{c}:{}", email_id(email)))
}

fn code_hash(salt: &str, code: &str) -> String {
    crate::tokens::sha256_base64url(format!("{salt}.{code}").as_bytes())
}

/// The refusal of a sign-in whose email and password do not make a usable
/// account, the same whatever the reason: the address has no account, the
/// password is wrong, or the account is not confirmed yet.
fn bad_credentials() -> LocalError {
    LocalError::refused(
        "local.bad_credentials",
        "The email or password is wrong, or the address is not confirmed yet (use the code we mailed).",
    )
}

/// The hold of one check of an account ([`Accounts::one_check_at_a_time`])
/// while its future runs. Dropped before the hold was released, the
/// request was cancelled: a check that had not finished counts as a
/// failure, and the hold ends, both in the background (`Drop` cannot wait).
struct HoldGuard {
    accounts: Accounts,
    t: TenantId,
    c: ConnectionId,
    email: String,
    checking: Key,
    /// The check finished (and counted itself if it failed).
    checked: bool,
    /// The hold was released.
    released: bool,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (accounts, t, c, email, checking) = (
            self.accounts.clone(),
            self.t.clone(),
            self.c.clone(),
            std::mem::take(&mut self.email),
            self.checking.clone(),
        );
        let unfinished = !self.checked;
        runtime.spawn(async move {
            if unfinished {
                tracing::warn!(reason = "local.check_cancelled", tenant = %t, connection = %c, "a password or answer check was abandoned by its request; counted as a failure");
                if let Err(e) = accounts.record_failure(&t, &c, &email).await {
                    tracing::error!(reason = "local.check_cancelled_not_counted", tenant = %t, connection = %c, error = %e);
                }
            }
            if let Err(e) = accounts.store.delete(&checking).await {
                tracing::warn!(reason = "local.hold_not_released", tenant = %t, connection = %c, error = %e, "the hold ends on its own");
            }
        });
    }
}

/// The local-accounts service (cheap to clone).
#[derive(Clone)]
pub struct Accounts {
    store: SharedStore,
    clock: SharedClock,
    hasher: Arc<Hasher>,
    mailer: Mailer,
    lockout: LockoutPolicy,
    audit: Audit,
    hooks: Option<crate::hooks::Hooks>,
    tenants: Option<crate::tenant::TenantRegistry>,
}

/// Which accounts of a connection are its own now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bound {
    /// Those made for these incarnations (`incarnation`:
    /// `<tenant>.<connection>`), and those from before accounts were bound
    /// (no stamp) where one may still be the connection's own: only if the
    /// tenant and the connection are older than stamping
    /// ([`crate::tenant::mints_stamped_accounts`]) and the account is not
    /// older than the tenant (`unstamped_since`, Unix seconds). Any other
    /// was left by a predecessor of the same ids.
    Live {
        incarnation: String,
        unstamped_since: Option<i64>,
    },
    /// None: the tenant or the connection is gone.
    Gone,
    /// Every one (a service built without the tenant registry: unit tests).
    Unchecked,
}

impl Bound {
    fn admits(&self, u: &LocalUser) -> bool {
        self.admits_stamp(u.incarnation.as_deref(), u.created_at)
    }

    /// Whether an account stamped `stamp` (`None`: from before stamping),
    /// made at `created_at` (Unix seconds), is the connection's own.
    fn admits_stamp(&self, stamp: Option<&str>, created_at: i64) -> bool {
        match self {
            Self::Live {
                incarnation,
                unstamped_since,
            } => match stamp {
                Some(i) => i == incarnation,
                None => unstamped_since.is_some_and(|since| created_at >= since),
            },
            Self::Gone => false,
            Self::Unchecked => true,
        }
    }

    fn stamp(&self) -> Option<String> {
        match self {
            Self::Live { incarnation, .. } => Some(incarnation.clone()),
            Self::Gone | Self::Unchecked => None,
        }
    }
}

/// Where a sign-in stands after the password was checked.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The account.
    pub user: LocalUser,
}

impl Accounts {
    /// Builds the service.
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        hasher: Arc<Hasher>,
        mailer: Mailer,
        lockout: LockoutPolicy,
        audit: Audit,
    ) -> Self {
        Self {
            store,
            clock,
            hasher,
            mailer,
            lockout,
            audit,
            hooks: None,
            tenants: None,
        }
    }

    /// The registry whose incarnations bind accounts to their tenant and
    /// connection (see [`LocalUser::incarnation`]).
    pub fn with_tenants(mut self, tenants: crate::tenant::TenantRegistry) -> Self {
        self.tenants = Some(tenants);
        self
    }

    /// Which accounts of `c` are its own now.
    async fn bound(&self, t: &TenantId, c: &ConnectionId) -> Result<Bound, StoreError> {
        let Some(tenants) = &self.tenants else {
            return Ok(Bound::Unchecked);
        };
        match tenants.incarnation_with_tenant(t, c).await {
            Ok((Some(tenant), crate::tenant::Liveness::Live(i))) => {
                let stamped = [&i.tenant, &i.connection]
                    .iter()
                    .any(|inc| crate::tenant::mints_stamped_accounts(inc));
                Ok(Bound::Live {
                    incarnation: format!("{}.{}", i.tenant, i.connection),
                    unstamped_since: (!stamped).then(|| tenant.created_at.timestamp()),
                })
            }
            Ok(_) => Ok(Bound::Gone),
            Err(crate::tenant::RegistryError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Corrupt(format!("incarnation of {t}/{c}: {e}"))),
        }
    }

    /// The tenants' hooks this service calls: `user_migration` at the
    /// sign-in of an unknown email, `post_confirmation` before an account is
    /// marked confirmed.
    pub fn with_hooks(mut self, hooks: Option<crate::hooks::Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// The tenant's hook of `kind`, if it has one.
    async fn hook(
        &self,
        t: &TenantId,
        kind: crate::hooks::HookKind,
    ) -> Result<Option<(&crate::hooks::Hooks, crate::hooks::HookConfig)>, LocalError> {
        let Some(hooks) = &self.hooks else {
            return Ok(None);
        };
        Ok(hooks.configured(t, kind).await?.map(|h| (hooks, h)))
    }

    /// Asks the tenant's user-migration hook about an email this connection
    /// does not know. On `migrate` the account is created (confirmed, the
    /// password re-hashed) and returned; on `refuse`, or without a hook,
    /// `None`. A failing hook is an error and creates nothing.
    async fn migrate(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
    ) -> Result<Option<LocalUser>, LocalError> {
        let Some(profile) = self.vouched_profile(t, c, email, password).await? else {
            return Ok(None);
        };
        let user = match self.create_migrated(t, c, email, password, profile).await {
            Ok(u) => u,
            // A concurrent sign-in migrated it first: use that account.
            Err(LocalError::Refused {
                reason: "local.exists", ..
            }) => return Ok(self.get(t, c, email).await?),
            Err(e) => return Err(e),
        };
        tracing::info!(reason = "hook.user_migrated", tenant = %t, connection = %c);
        self.audit_migrated(t, c, &user, "hook.user_migrated").await;
        Ok(Some(user))
    }

    /// The profile the tenant's user-migration hook vouches for with these
    /// credentials; `None` when it refuses or there is no hook. A failing
    /// hook is an error.
    async fn vouched_profile(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
    ) -> Result<Option<Profile>, LocalError> {
        let Some((hooks, hook)) = self.hook(t, crate::hooks::HookKind::UserMigration).await? else {
            return Ok(None);
        };
        match hooks.migrate_user(t, &hook, c.as_str(), email, password).await? {
            crate::hooks::kinds::Migration::Refuse => {
                tracing::info!(reason = "hook.migration_refused", tenant = %t, connection = %c);
                Ok(None)
            }
            crate::hooks::kinds::Migration::Migrate(p) => Ok(Some(Profile {
                given_name: p.given_name,
                family_name: p.family_name,
            })),
        }
    }

    /// [`Self::migrate`] for an address whose account nobody has confirmed
    /// yet (`squat`): the account the hook vouches for replaces it, only if
    /// it is still that unconfirmed account (compare-and-set).
    async fn migrate_over(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
        squat: &LocalUser,
    ) -> Result<Option<LocalUser>, LocalError> {
        let Some(profile) = self.vouched_profile(t, c, email, password).await? else {
            return Ok(None);
        };
        let hash = self.hasher.hash(password.expose()).await?;
        let migrated = LocalUser {
            migrated: true,
            ..self.new_user(squat.email.clone(), hash, AccountStatus::Confirmed, profile)
        };
        let replaced = self
            .update(t, c, email, |u| {
                if u.subject == squat.subject && u.status == AccountStatus::Unconfirmed {
                    *u = LocalUser {
                        incarnation: u.incarnation.clone(),
                        ..migrated.clone()
                    };
                }
            })
            .await?
            .filter(|u| u.subject == migrated.subject);
        let Some(user) = replaced else {
            // Confirmed or replaced meanwhile: the password decides as usual.
            return Ok(None);
        };
        tracing::info!(reason = "hook.user_migrated_over_unconfirmed", tenant = %t, connection = %c, "an unconfirmed sign-up of the address was replaced by the migrated account");
        self.audit_migrated(t, c, &user, "hook.user_migrated_over_unconfirmed")
            .await;
        Ok(Some(user))
    }

    /// The `local.migrated` security event of an account the migration
    /// hook vouched for.
    async fn audit_migrated(&self, t: &TenantId, c: &ConnectionId, user: &LocalUser, reason: &'static str) {
        self.audit_account(t, c, user, "local.migrated", reason).await;
    }

    /// A successful `action` of the account `user` as a security event.
    async fn audit_account(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        user: &LocalUser,
        action: &'static str,
        reason: &'static str,
    ) {
        self.audit
            .security(
                AuditEvent::security(
                    &Actor::User(user.subject.clone()),
                    action,
                    Target::new("connection", c.as_str()),
                    Outcome::Success,
                    reason,
                )
                .tenant(t)
                .connection(c.as_str()),
            )
            .await;
    }

    /// Whether codes can be mailed at all.
    pub fn mail_configured(&self) -> bool {
        self.mailer.configured()
    }

    /// Reads an account.
    pub async fn get(&self, t: &TenantId, c: &ConnectionId, email: &str) -> Result<Option<LocalUser>, StoreError> {
        // Read together: one wait.
        let key = user_key(t, c, email);
        let (user, bound) = tokio::try_join!(self.store.get_json::<LocalUser>(&key), self.bound(t, c))?;
        Ok(user.filter(|u| bound.admits(u)))
    }

    /// The spelling the account of the address `raw` is stored under, by
    /// which everything of the account is keyed (its record, codes, lockout
    /// and mail budget): of the address's [`Spellings`], `raw`'s own from
    /// before addresses had one spelling if an account is stored under it
    /// (every account made then stays reachable as it was), else the
    /// canonical one if an account is stored under it, else another earlier
    /// one that has an account, else the canonical one, where a new account
    /// goes. So a sign-up finds an account made under an earlier spelling
    /// (answered as a taken address) instead of making a second, and every
    /// spelling counts against that account's one lockout. The reads are
    /// the same whatever is stored (the answer's time tells nothing), and
    /// there are none for an address written as it is stored now (every
    /// ASCII address without an A-label). `local.bad_email` when `raw` is
    /// no address.
    pub async fn address(&self, t: &TenantId, c: &ConnectionId, raw: &str) -> Result<String, LocalError> {
        let Spellings { canonical, older } = Spellings::of(raw).ok_or_else(Self::bad_email)?;
        if older.is_empty() {
            return Ok(canonical);
        }
        let read = |e: Option<&String>| {
            let key = e.map(|e| user_key(t, c, e));
            async move {
                match key {
                    Some(k) => self.store.get_json::<LocalUser>(&k).await,
                    None => Ok(None),
                }
            }
        };
        // Read together: one wait.
        let (now, first, second, third, fourth, bound) = tokio::try_join!(
            read(Some(&canonical)),
            read(older.first()),
            read(older.get(1)),
            read(older.get(2)),
            read(older.get(3)),
            self.bound(t, c)
        )?;
        let stored = |u: &Option<LocalUser>| u.as_ref().is_some_and(|u| bound.admits(u));
        let typed = legacy_email(raw);
        let earlier: Vec<&String> = older
            .iter()
            .zip([&first, &second, &third, &fourth])
            .filter(|(_, u)| stored(u))
            .map(|(e, _)| e)
            .collect();
        let chosen = match earlier.iter().find(|e| typed.as_ref() == Some(**e)) {
            Some(own) => Some(*own),
            None if stored(&now) => None,
            None => earlier.first().copied(),
        };
        Ok(match chosen {
            Some(e) => {
                tracing::info!(reason = "local.earlier_spelling", tenant = %t, connection = %c, "the account is stored under a spelling of its address from before addresses had one");
                e.clone()
            }
            None => canonical,
        })
    }

    /// Every account of a connection (admin list, backup), by email.
    pub async fn list(&self, t: &TenantId, c: &ConnectionId) -> Result<Vec<LocalUser>, StoreError> {
        let bound = self.bound(t, c).await?;
        let mut out = Vec::new();
        for id in self.store.set_members(&index_key(t, c)).await? {
            if let Some(u) = self.store.get_json::<LocalUser>(&user_key_by_id(t, c, &id)).await? {
                if bound.admits(&u) {
                    out.push(u);
                }
            }
        }
        out.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(out)
    }

    /// Stores a new account, stamped with its connection's incarnations;
    /// `false` when the address has an account of this connection already
    /// (or the connection is gone). A leftover of a deleted tenant or
    /// connection of the same ids is replaced.
    async fn insert(&self, t: &TenantId, c: &ConnectionId, user: &LocalUser) -> Result<bool, StoreError> {
        let bound = self.bound(t, c).await?;
        if bound == Bound::Gone {
            return Ok(false);
        }
        let user = LocalUser {
            incarnation: bound.stamp(),
            ..user.clone()
        };
        let k = user_key(t, c, &user.email);
        if !self.store.put_json_if_absent(&k, &user, ttl_of(&user)).await? {
            let Some(before) = self.store.get(&k).await? else {
                return Ok(false);
            };
            let existing: LocalUser =
                serde_json::from_slice(&before).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if bound.admits(&existing) {
                return Ok(false);
            }
            let after = serde_json::to_vec(&user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !self.store.compare_and_put(&k, &before, &after, ttl_of(&user)).await? {
                return Ok(false);
            }
            tracing::info!(reason = "local.leftover_replaced", tenant = %t, connection = %c, "an account of an earlier tenant or connection of these ids was replaced");
        }
        self.store
            .set_add(&index_key(t, c), &email_id(&user.email), None)
            .await?;
        Ok(true)
    }

    /// Drops from the connection's index up to [`INDEX_SWEEP`] members,
    /// picked at random, whose account is gone (an unconfirmed account
    /// expires, see [`UNCONFIRMED_TTL`], but its index member would stay).
    /// Run after every sign-up that made an account (after its answer,
    /// with the rest that differs by address), so the index stays within
    /// about twice the accounts that exist however many strangers sign up:
    /// with half its members gone, each sweep drops one on average, as
    /// much as the sign-up added. Returns how many it dropped.
    ///
    /// A member is removed, then its account looked at again and the
    /// member put back if the account is there: a sign-up of the address
    /// stores the account before it indexes it, so one racing the sweep is
    /// either seen by the second look or indexes itself after the removal.
    pub async fn sweep_index(&self, t: &TenantId, c: &ConnectionId) -> Result<usize, StoreError> {
        let index = index_key(t, c);
        let mut dropped = 0;
        for id in self.store.set_sample(&index, INDEX_SWEEP).await? {
            let account = user_key_by_id(t, c, &id);
            if self.store.exists(&account).await? {
                continue;
            }
            self.store.set_remove(&index, &id).await?;
            if self.store.exists(&account).await? {
                self.store.set_add(&index, &id, None).await?;
            } else {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    async fn update(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        change: impl Fn(&mut LocalUser),
    ) -> Result<Option<LocalUser>, StoreError> {
        let k = user_key(t, c, email);
        let bound = self.bound(t, c).await?;
        for _ in 0..5 {
            let Some(before) = self.store.get(&k).await? else {
                return Ok(None);
            };
            let mut user: LocalUser =
                serde_json::from_slice(&before).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if !bound.admits(&user) {
                return Ok(None);
            }
            // An account from before accounts were bound is bound now.
            if user.incarnation.is_none() {
                user.incarnation = bound.stamp();
            }
            change(&mut user);
            user.updated_at = self.clock.unix();
            let after = serde_json::to_vec(&user).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if self.store.compare_and_put(&k, &before, &after, ttl_of(&user)).await? {
                return Ok(Some(user));
            }
        }
        Err(StoreError::Unavailable(
            "local account: too many concurrent updates".into(),
        ))
    }

    fn new_user(&self, email: String, hash: String, status: AccountStatus, profile: Profile) -> LocalUser {
        let now = self.clock.unix();
        LocalUser {
            email,
            subject: format!("local|{}", crate::tokens::random_token(18)),
            status,
            disabled: false,
            password_hash: hash,
            given_name: profile.given_name.filter(|s| !s.trim().is_empty()),
            family_name: profile.family_name.filter(|s| !s.trim().is_empty()),
            created_at: now,
            updated_at: now,
            migrated: false,
            contested: false,
            // Stamped by `insert`.
            incarnation: None,
            signed_up_in: None,
        }
    }

    fn bad_email() -> LocalError {
        LocalError::refused("local.bad_email", "Enter a valid email address.")
    }

    /// Sign-up (Cognito's SignUp). Always answers `Ok` for a valid email and
    /// password, whether or not the address already has an account; a new
    /// account gets a verification code by mail, an unconfirmed one a fresh
    /// code, a confirmed one nothing.
    // The tenant, connection and its settings, the address, the password and
    // the profile: each is needed, and a struct for one call would only move them.
    #[allow(clippy::too_many_arguments)]
    pub async fn sign_up(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        password: &Secret,
        profile: Profile,
        // The secret of the browser signing up (`None`: no browser, as for
        // a caller of the library).
        browser: Option<&Secret>,
    ) -> Result<(), LocalError> {
        if !cfg.allow_sign_up {
            return Err(LocalError::refused(
                "local.sign_up_disabled",
                "Sign-up is not open here. Ask your administrator for an account.",
            ));
        }
        let email = self.address(t, c, email).await?;
        profile.check()?;
        cfg.password_policy.check(password.expose(), &email)?;
        if !self.mailer.configured() {
            return Err(LocalError::refused(
                "local.mail_unavailable",
                "Sign-up is not available: this service cannot send email.",
            ));
        }
        // Hashed whatever happens next: the same work for every address.
        let hash = self.hasher.hash(password.expose()).await?;
        let user = LocalUser {
            signed_up_in: browser.map(|b| browser_digest(b.expose())),
            ..self.new_user(email.clone(), hash, AccountStatus::Unconfirmed, profile)
        };
        let inserted = self.insert(t, c, &user).await?;
        // What follows differs with the address (a new account's audit
        // event and code; an unconfirmed one's contest and new code; a
        // confirmed one's nothing): after the answer, which therefore comes
        // after the same work and the same store waits for every address.
        // Awaited, a new address answered some round trips later than a
        // taken one, and a failing code write only for a new one.
        let accounts = self.clone();
        let (t, c, tenant_name, cfg) = (t.clone(), c.clone(), tenant_name.to_owned(), cfg.clone());
        let after = async move {
            if let Err(e) = accounts
                .after_sign_up(&t, &tenant_name, &c, &cfg, &email, inserted.then_some(&user))
                .await
            {
                tracing::error!(reason = "local.sign_up_incomplete", tenant = %t, connection = %c, error = %e, "a sign-up's code or record was not written; a new code can be asked for");
            }
            // The account is stored and indexed: a sweep that fails loses
            // nothing but some tidying, left to the next sign-up.
            if inserted {
                if let Err(e) = accounts.sweep_index(&t, &c).await {
                    tracing::warn!(reason = "local.index_sweep_failed", tenant = %t, connection = %c, error = %e);
                }
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(after));
        Ok(())
    }

    /// The part of [`Self::sign_up`] after its answer: for the account it
    /// made (`made`), its audit event and verification code; for an address
    /// that had an account, a contest and a new code when that account is
    /// unconfirmed, nothing otherwise.
    async fn after_sign_up(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        made: Option<&LocalUser>,
    ) -> Result<(), LocalError> {
        if let Some(user) = made {
            tracing::info!(reason = "local.signed_up", tenant = %t, connection = %c);
            self.audit_account(t, c, user, "local.sign_up", "local.signed_up").await;
            return self.send_code(t, tenant_name, c, cfg, CodePurpose::Verify, email).await;
        }
        match self.get(t, c, email).await? {
            Some(existing) if existing.status == AccountStatus::Unconfirmed && !existing.disabled => {
                tracing::info!(reason = "local.sign_up_existing_unconfirmed", tenant = %t, connection = %c);
                // Nobody has shown the mailbox is theirs yet, and two sign-ups
                // chose passwords: neither password is kept past confirmation.
                self.update(t, c, email, |u| {
                    if u.status == AccountStatus::Unconfirmed {
                        u.contested = true;
                        // Nor either sign-up's name: the first may be
                        // someone else's choice ("IT Support"), the
                        // second unproven too. The owner's account starts
                        // without one.
                        u.given_name = None;
                        u.family_name = None;
                    }
                })
                .await?;
                self.send_code(t, tenant_name, c, cfg, CodePurpose::Verify, email)
                    .await?;
            }
            _ => {
                // Same answer; the owner's account is untouched.
                tracing::info!(reason = "local.sign_up_existing", tenant = %t, connection = %c);
            }
        }
        Ok(())
    }

    /// Makes, stores and mails a fresh code (replacing any earlier one and
    /// its attempt count). Mail goes out in the background; at most
    /// [`CODES_PER_HOUR`] per account and purpose.
    async fn send_code(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        purpose: CodePurpose,
        email: &str,
    ) -> Result<(), LocalError> {
        let limit = self
            .store
            .rate_limit(
                &mail_limit_key(t, c, purpose, email),
                CODES_PER_HOUR,
                Duration::from_secs(3600),
            )
            .await?;
        if !limit.allowed {
            tracing::warn!(reason = "local.code_mail_throttled", tenant = %t, connection = %c);
            return Ok(());
        }
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let salt = crate::tokens::random_token(12);
        let record = CodeRecord {
            hash: code_hash(&salt, &code),
            salt,
        };
        self.store.delete(&attempts_key(t, c, purpose, email)).await?;
        self.store
            .put_json(&code_key(t, c, purpose, email), &record, Some(CODE_TTL))
            .await?;
        let template = match purpose {
            CodePurpose::Verify => cfg.verify_template.clone().unwrap_or_else(MailTemplate::default_verify),
            CodePurpose::Reset => cfg.reset_template.clone().unwrap_or_else(MailTemplate::default_reset),
        };
        let rendered = template.render(&code, CODE_TTL.as_secs() / 60, tenant_name);
        let mailer = self.mailer.clone();
        let to = email.to_owned();
        let (tenant, connection) = (t.clone(), c.clone());
        // In the background: how long the SMTP server takes must not tell
        // whether the address has an account.
        tokio::spawn(async move {
            match mailer.send(&to, &rendered).await {
                Ok(()) => {
                    tracing::info!(reason = "mail.sent", tenant = %tenant, connection = %connection, purpose = purpose.as_str())
                }
                Err(e) => {
                    tracing::error!(reason = e.code, tenant = %tenant, connection = %connection, error = %e.detail, "code not mailed")
                }
            }
        });
        Ok(())
    }

    /// Checks a code: counted (at most [`CODE_MAX_ATTEMPTS`] at one code,
    /// [`WRONG_CODES_IN_A_ROW`] across codes), compared in constant time,
    /// consumed on success (single use). The code's attempt is counted
    /// before the comparison, atomically, so attempts sent together cannot
    /// pass its bound. Only a wrong answer to a code that was mailed counts
    /// in the run across codes: with no code outstanding there is nothing
    /// to guess, so a stranger's attempts never lock the owner out of the
    /// codes mailed to them later.
    async fn check_code(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        purpose: CodePurpose,
        email: &str,
        code: &str,
    ) -> Result<(), LocalError> {
        let (run_key, attempts_key) = (code_run_key(t, c, purpose, email), attempts_key(t, c, purpose, email));
        let ck = code_key(t, c, purpose, email);
        let (attempts, record, run) = tokio::try_join!(
            self.store.incr(&attempts_key, CODE_TTL),
            self.store.get_json::<CodeRecord>(&ck),
            self.store.get(&run_key)
        )?;
        let run = run
            .and_then(|r| String::from_utf8(r).ok())
            .and_then(|r| r.parse::<i64>().ok())
            .unwrap_or(0);
        let locked = || {
            tracing::warn!(reason = "local.code_locked", tenant = %t, connection = %c, purpose = purpose.as_str());
            LocalError::refused(
                "local.code_locked",
                "Too many wrong codes were entered for this address, so codes are refused for up to a day. Your administrator can lift this.",
            )
        };
        if run >= WRONG_CODES_IN_A_ROW {
            return Err(locked());
        }
        let invalid = || LocalError::refused("local.code_invalid", "The code is wrong or has expired.");
        let Some(record) = record else {
            // Nothing outstanding: nothing counts against the address (the
            // attempts counted here are cleared when a code is mailed). As
            // many waits as a wrong answer, so the answer's time does not
            // tell whether a code was mailed.
            self.store.exists(&run_key).await?;
            return Err(invalid());
        };
        if attempts > CODE_MAX_ATTEMPTS {
            // Void: a new code has to be asked for.
            self.store.delete(&ck).await?;
            return Err(LocalError::refused(
                "local.code_attempts_exceeded",
                "Too many wrong codes. Ask for a new code.",
            ));
        }
        let code = code.trim();
        let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        let same: bool = well_formed
            && subtle::ConstantTimeEq::ct_eq(code_hash(&record.salt, code).as_bytes(), record.hash.as_bytes()).into();
        if !same {
            self.store.incr(&run_key, WRONG_CODES_WINDOW).await?;
            return Err(invalid());
        }
        // Single use: of two concurrent right answers only one takes it.
        match self.store.take_json::<CodeRecord>(&ck).await? {
            Some(taken) if taken.hash == record.hash => {
                // A right code ends the run.
                tokio::try_join!(self.store.delete(&attempts_key), self.store.delete(&run_key))?;
                Ok(())
            }
            _ => Err(invalid()),
        }
    }

    /// Confirms a sign-up with the mailed code (Cognito's ConfirmSignUp).
    pub async fn confirm(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        code: &str,
        browser: Option<&Secret>,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        self.check_code(t, c, CodePurpose::Verify, &email, code).await?;
        let this_browser = browser.map(|b| browser_digest(b.expose()));
        // hooks: post confirmation — told before the account is marked
        // confirmed, so a failing hook leaves it unconfirmed (a new code
        // confirms it later) and never half done.
        if let Some((hooks, hook)) = self.hook(t, crate::hooks::HookKind::PostConfirmation).await? {
            let pending = self
                .get(t, c, &email)
                .await?
                .is_some_and(|u| u.status == AccountStatus::Unconfirmed);
            if pending {
                hooks.post_confirmation(t, &hook, c.as_str(), &email).await?;
            }
        }
        let user = self
            .update(t, c, &email, |u| {
                if u.status == AccountStatus::Unconfirmed {
                    // A contested sign-up, or one made in another browser
                    // than this confirmation: the mailbox's owner chooses
                    // the password now, by a reset code.
                    let elsewhere = u
                        .signed_up_in
                        .as_ref()
                        .is_some_and(|d| this_browser.as_ref() != Some(d));
                    u.status = if u.contested || elsewhere {
                        AccountStatus::ResetRequired
                    } else {
                        AccountStatus::Confirmed
                    };
                    u.contested = false;
                    u.signed_up_in = None;
                }
            })
            .await?
            .ok_or_else(|| LocalError::refused("local.code_invalid", "The code is wrong or has expired."))?;
        tracing::info!(reason = "local.confirmed", tenant = %t, connection = %c);
        self.audit_account(t, c, &user, "local.confirm", "local.confirmed")
            .await;
        Ok(user)
    }

    /// Sends a new verification code to an unconfirmed account. Always `Ok`
    /// for a valid address, after the same read whatever the address (the
    /// code is made and stored after the answer).
    pub async fn resend(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
    ) -> Result<(), LocalError> {
        let email = self.address(t, c, email).await?;
        if let Some(u) = self.get(t, c, &email).await? {
            if u.status == AccountStatus::Unconfirmed && !u.disabled {
                self.send_code_after_answering(t, tenant_name, c, cfg, CodePurpose::Verify, &email);
            }
        }
        Ok(())
    }

    /// Forgot password: mails a reset code to a confirmed (or reset-required)
    /// account. Always `Ok` for a valid address, after the same read whatever
    /// the address (the code is made and stored after the answer).
    pub async fn forgot(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
    ) -> Result<(), LocalError> {
        let email = self.address(t, c, email).await?;
        if let Some(u) = self.get(t, c, &email).await? {
            if matches!(u.status, AccountStatus::Confirmed | AccountStatus::ResetRequired) && !u.disabled {
                self.send_code_after_answering(t, tenant_name, c, cfg, CodePurpose::Reset, &email);
            }
        }
        Ok(())
    }

    /// [`Self::send_code`] in the background, for the requests whose answer
    /// must not tell whether the address has an account (resend, forgot):
    /// they answer after the one read every address costs, and the code's
    /// own store waits (its mail limit, its attempts reset, the code) come
    /// after. Awaited, they made a known address answer three round trips
    /// later than an unknown one. A failure is logged (`local.code_not_sent`);
    /// the person asks again, as when a mail is lost.
    fn send_code_after_answering(
        &self,
        t: &TenantId,
        tenant_name: &str,
        c: &ConnectionId,
        cfg: &LocalConfig,
        purpose: CodePurpose,
        email: &str,
    ) {
        let accounts = self.clone();
        let (t, c, tenant_name, cfg, email) = (
            t.clone(),
            c.clone(),
            tenant_name.to_owned(),
            cfg.clone(),
            email.to_owned(),
        );
        let sending = async move {
            if let Err(e) = accounts.send_code(&t, &tenant_name, &c, &cfg, purpose, &email).await {
                tracing::error!(reason = "local.code_not_sent", tenant = %t, connection = %c, purpose = purpose.as_str(), error = %e, "no code sent");
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(sending));
    }

    /// Sets a new password with a reset code; ends any lockout.
    pub async fn reset(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        code: &str,
        new_password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        cfg.password_policy.check(new_password.expose(), &email)?;
        self.check_code(t, c, CodePurpose::Reset, &email, code).await?;
        let hash = self.hasher.hash(new_password.expose()).await?;
        let user = self
            .update(t, c, &email, |u| {
                u.password_hash = hash.clone();
                u.status = AccountStatus::Confirmed;
            })
            .await?
            .ok_or_else(|| LocalError::refused("local.code_invalid", "The code is wrong or has expired."))?;
        self.clear_failures(t, c, &email).await?;
        self.audit_password_change(t, c, &user, "local.password_reset").await;
        Ok(user)
    }

    /// Changes the password of an account that signs in with `old`
    /// ([`Self::check_password_change`], then [`Self::set_changed_password`]).
    pub async fn change_password(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        old: &Secret,
        new_password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let user = self.check_password_change(t, c, cfg, email, old, new_password).await?;
        self.set_changed_password(t, c, &user, new_password).await
    }

    /// The checks of a password change: the new password meets the policy
    /// and the current one signs in (counted toward the lockout like a
    /// sign-in). The account, for the caller's own checks before
    /// [`Self::set_changed_password`].
    pub async fn check_password_change(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        old: &Secret,
        new_password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        cfg.password_policy.check(new_password.expose(), &email)?;
        Ok(self.authenticate(t, c, &email, old).await?.user)
    }

    /// Sets the new password of `user`, checked by
    /// [`Self::check_password_change`]: only while the address is still
    /// that account (not deleted and created again meanwhile).
    pub async fn set_changed_password(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        user: &LocalUser,
        new_password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let hash = self.hasher.hash(new_password.expose()).await?;
        let changed = self
            .update(t, c, &user.email, |u| {
                if u.subject == user.subject {
                    u.password_hash = hash.clone();
                }
            })
            .await?
            .filter(|u| u.subject == user.subject && u.password_hash == hash)
            .ok_or_else(bad_credentials)?;
        self.audit_password_change(t, c, &changed, "local.password_changed")
            .await;
        Ok(changed)
    }

    async fn audit_password_change(&self, t: &TenantId, c: &ConnectionId, user: &LocalUser, reason: &'static str) {
        tracing::info!(reason, tenant = %t, connection = %c);
        self.audit_account(t, c, user, "local.password", reason).await;
    }

    /// Checks an email and password (the sign-in). A lock is checked first;
    /// an unknown email costs the same hash as a known one and counts
    /// failures the same way, so neither the answer, the timing nor the
    /// lockout tells whether the address has an account.
    pub async fn authenticate(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
    ) -> Result<SignedIn, LocalError> {
        let user = self.check_password(t, c, email, password).await?;
        self.clear_failures(t, c, &user.email).await?;
        Ok(SignedIn { user })
    }

    /// The refusal of a locked account, if `email` is locked now.
    async fn locked(&self, t: &TenantId, c: &ConnectionId, email: &str) -> Result<Option<LocalError>, StoreError> {
        let now = self.clock.unix();
        Ok(match self.store.get_json::<i64>(&lock_key(t, c, email)).await? {
            Some(until) if until > now => Some(LocalError::Refused {
                reason: "local.locked",
                message: "Too many failed sign-ins. Wait a moment and try again, or reset your password.",
                retry_after: u64::try_from(until - now).ok(),
            }),
            _ => None,
        })
    }

    /// [`Self::authenticate`]'s checks without clearing the failure count
    /// (a sign-in with a custom challenge clears it only once it is done).
    async fn check_password(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        if let Some(e) = self.locked(t, c, &email).await? {
            return Err(e);
        }
        self.one_check_at_a_time(t, c, &email, self.check_password_held(t, c, &email, password))
            .await
    }

    /// Runs `check` (a password check, a challenge answer) while holding
    /// the account, across replicas; a second check of the same account
    /// meanwhile is refused (`local.busy`, 429). The lockout is read when a
    /// request arrives and a failure counted only once its check is done
    /// (a hash, a hook's verdict), so guesses sent together would otherwise
    /// all be checked however many failed. The hold ends with the check,
    /// or after [`CHECK_HOLD`] plus the longest hook call when its replica
    /// died meanwhile.
    pub(crate) async fn one_check_at_a_time<T>(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        check: impl std::future::Future<Output = Result<T, LocalError>>,
    ) -> Result<T, LocalError> {
        let checking = checking_key(t, c, email);
        let hold = CHECK_HOLD.saturating_add(self.hooks.as_ref().map_or(Duration::ZERO, |h| h.longest_call()));
        if !self.store.put_if_absent(&checking, b"1", Some(hold)).await? {
            tracing::warn!(reason = "local.busy", tenant = %t, connection = %c, "a check of this account is under way");
            return Err(LocalError::Refused {
                reason: "local.busy",
                message: "Another sign-in to this account is being checked. Try again in a moment.",
                retry_after: Some(1),
            });
        }
        // A request dropped meanwhile (its client gone) drops `check` with
        // it: the guard then counts the check as a failure and ends the
        // hold, so a check begun and abandoned is no free way to hold an
        // account (every `local.busy` for its owner) without ever counting.
        let mut guard = HoldGuard {
            accounts: self.clone(),
            t: t.clone(),
            c: c.clone(),
            email: email.to_owned(),
            checking: checking.clone(),
            checked: false,
            released: false,
        };
        let checked = check.await;
        guard.checked = true;
        self.store.delete(&checking).await?;
        guard.released = true;
        checked
    }

    /// [`Self::check_password`] while it holds the account.
    async fn check_password_held(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
    ) -> Result<LocalUser, LocalError> {
        let too_long = password.expose().chars().count() > password::MAX_PASSWORD_CHARS;
        // Whether the tenant's user-migration hook was asked: a failure
        // that did not ask it replays one of its recent calls, so a known
        // address fails as slowly, and as an unknown one would while the
        // hook is down (`hooks::recent`).
        let mut asked = false;
        let user = match self.get(t, c, email).await? {
            Some(u) => Some(u),
            // hooks: user migration — an unknown email asks the tenant's
            // user-migration hook (email + password); a migrated account is
            // then checked below like any other (its new hash).
            None if !too_long => {
                asked = true;
                let migrated = self.migrate(t, c, email, password).await;
                self.counted(t, c, email, migrated).await?
            }
            None => None,
        };
        let mut ok = !too_long
            && self
                .hasher
                .verify(password.expose(), user.as_ref().map(|u| u.password_hash.as_str()))
                .await?;
        // An account nobody confirmed yet may be someone else's sign-up of a
        // legacy user's address: it must not keep the legacy user from
        // migrating. The hook is asked as for an unknown address, and the
        // account it vouches for replaces the unconfirmed one.
        let user = match user {
            Some(squat) if !ok && !too_long && squat.status == AccountStatus::Unconfirmed && !squat.migrated => {
                asked = true;
                let migrated = self.migrate_over(t, c, email, password, &squat).await;
                match self.counted(t, c, email, migrated).await? {
                    Some(migrated) => {
                        ok = true;
                        Some(migrated)
                    }
                    None => Some(squat),
                }
            }
            other => other,
        };
        let Some(user) = user.filter(|_| ok) else {
            self.record_failure(t, c, email).await?;
            if !asked && !too_long {
                self.replay_migration(t, c).await?;
            }
            return Err(bad_credentials());
        };
        // An unconfirmed account answers as a wrong password does, and
        // counts like one: otherwise anyone could sign up with an address
        // and a password of their own, sign in with it, and learn from
        // "confirm first" (the sign-up took) against "wrong password" (an
        // account was there already) whether the address had an account.
        if user.status == AccountStatus::Unconfirmed {
            tracing::info!(reason = "local.unconfirmed", tenant = %t, connection = %c, "the right password of an unconfirmed account; answered as a wrong one");
            self.record_failure(t, c, email).await?;
            if !asked {
                self.replay_migration(t, c).await?;
            }
            return Err(bad_credentials());
        }
        if user.disabled {
            return Err(LocalError::refused(
                "local.disabled",
                "This account is disabled. Ask your administrator.",
            ));
        }
        match user.status {
            AccountStatus::ResetRequired => {
                return Err(LocalError::refused(
                    "local.reset_required",
                    "You need to choose a new password: use \"Forgot password\" to get a code.",
                ))
            }
            AccountStatus::Unconfirmed | AccountStatus::Confirmed | AccountStatus::Disabled => {}
        }
        if self.hasher.outdated(&user.password_hash) {
            let hash = self.hasher.hash(password.expose()).await?;
            // The account as stored now, with its new hash (a custom
            // challenge that follows remembers which hash was proved).
            if let Some(rehashed) = self.update(t, c, email, |u| u.password_hash = hash.clone()).await? {
                return Ok(rehashed);
            }
        }
        Ok(user)
    }

    /// A migration hook's failure during a password check, counted as a
    /// failed sign-in (then returned): a known address's wrong password
    /// counts and fails as such a call did ([`Self::replay_migration`]), so
    /// an unknown one must count too, or the lockout that follows the one
    /// and never the other would tell them apart.
    async fn counted<T>(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        checked: Result<T, LocalError>,
    ) -> Result<T, LocalError> {
        if let Err(LocalError::Hook(_)) = &checked {
            self.record_failure(t, c, email).await?;
        }
        checked
    }

    /// For a failed password check that did not ask the tenant's
    /// user-migration hook: as long a wait, and the same failure, as one of
    /// its recent calls ([`crate::hooks::Hooks::replay_migration`]). Reads
    /// the hook's configuration as asking it does. Nothing without a hook.
    async fn replay_migration(&self, t: &TenantId, c: &ConnectionId) -> Result<(), LocalError> {
        let Some((hooks, _)) = self.hook(t, crate::hooks::HookKind::UserMigration).await? else {
            return Ok(());
        };
        hooks.replay_migration(t).await.map_err(|e| {
            tracing::info!(reason = e.reason(), tenant = %t, connection = %c, "a failed sign-in answered as the migration hook's recent call did");
            LocalError::Hook(e)
        })
    }

    async fn record_failure(&self, t: &TenantId, c: &ConnectionId, email: &str) -> Result<(), StoreError> {
        let failures = self
            .store
            .incr(&fails_key(t, c, email), Duration::from_secs(self.lockout.window_secs))
            .await?;
        if let Some(secs) = self.lockout.lock_secs(failures) {
            let until = self
                .clock
                .unix()
                .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
            self.store
                .put_json(&lock_key(t, c, email), &until, Some(Duration::from_secs(secs)))
                .await?;
            tracing::warn!(reason = "local.locked", tenant = %t, connection = %c, failures, lock_secs = secs);
            self.audit
                .security(
                    AuditEvent::security(
                        &Actor::Anonymous,
                        "local.lockout",
                        Target::new("connection", c.as_str()),
                        Outcome::Failure,
                        "local.locked",
                    )
                    .tenant(t)
                    .connection(c.as_str()),
                )
                .await;
        }
        Ok(())
    }

    async fn clear_failures(&self, t: &TenantId, c: &ConnectionId, email: &str) -> Result<(), StoreError> {
        self.store.delete(&fails_key(t, c, email)).await?;
        self.store.delete(&lock_key(t, c, email)).await?;
        Ok(())
    }

    /// Creates a confirmed account for a user moved in by the user-migration
    /// hook, with `password` (already checked by the legacy system) re-hashed
    /// with argon2id. Not checked against the policy: the legacy password is
    /// what the person knows. Refused (`local.exists`) when the account exists.
    pub async fn create_migrated(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        password: &Secret,
        profile: Profile,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        profile.check()?;
        let hash = self.hasher.hash(password.expose()).await?;
        let mut user = self.new_user(email, hash, AccountStatus::Confirmed, profile);
        user.migrated = true;
        if !self.insert(t, c, &user).await? {
            return Err(LocalError::refused(
                "local.exists",
                "An account with this email exists.",
            ));
        }
        Ok(user)
    }

    /// Admin: creates an account. With a password it is `CONFIRMED`; without
    /// one it is `RESET_REQUIRED` with a random password, and the person
    /// sets one through "forgot password".
    pub async fn admin_create(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        cfg: &LocalConfig,
        email: &str,
        password: Option<&Secret>,
        profile: Profile,
    ) -> Result<LocalUser, LocalError> {
        let email = self.address(t, c, email).await?;
        profile.check()?;
        let (hash, status) = match password {
            Some(p) => {
                cfg.password_policy.check(p.expose(), &email)?;
                (self.hasher.hash(p.expose()).await?, AccountStatus::Confirmed)
            }
            None => (
                self.hasher.hash(&crate::tokens::random_token(24)).await?,
                AccountStatus::ResetRequired,
            ),
        };
        let user = self.new_user(email, hash, status, profile);
        if !self.insert(t, c, &user).await? {
            return Err(LocalError::refused(
                "local.exists",
                "An account with this email exists.",
            ));
        }
        Ok(user)
    }

    /// Admin: disables or enables an account.
    pub async fn set_disabled(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
        disabled: bool,
    ) -> Result<Option<LocalUser>, StoreError> {
        self.update(t, c, email, |u| u.disabled = disabled).await
    }

    /// Admin: requires a new password (sign-in refused until reset by code).
    pub async fn force_reset(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        email: &str,
    ) -> Result<Option<LocalUser>, StoreError> {
        let user = self
            .update(t, c, email, |u| {
                if u.status == AccountStatus::Confirmed {
                    u.status = AccountStatus::ResetRequired;
                }
            })
            .await?;
        // The owner must now reset by code: an attacker's run of wrong
        // reset codes must not stand in the way.
        if user.is_some() {
            self.store
                .delete(&code_run_key(t, c, CodePurpose::Reset, email))
                .await?;
        }
        Ok(user)
    }

    /// Deletes every account of a deleted connection, so a connection
    /// re-created with the same id starts empty. Codes, counters and locks
    /// expire on their own.
    pub async fn purge_connection(&self, t: &TenantId, c: &ConnectionId) -> Result<usize, StoreError> {
        let index = index_key(t, c);
        let ids = self.store.set_members(&index).await?;
        for id in &ids {
            self.store.delete(&user_key_by_id(t, c, id)).await?;
        }
        self.store.delete(&index).await?;
        Ok(ids.len())
    }

    /// Admin: deletes an account and its codes and counters.
    pub async fn delete(&self, t: &TenantId, c: &ConnectionId, email: &str) -> Result<bool, StoreError> {
        let existed = self.store.delete(&user_key(t, c, email)).await?;
        self.store.set_remove(&index_key(t, c), &email_id(email)).await?;
        for p in [CodePurpose::Verify, CodePurpose::Reset] {
            self.store.delete(&code_key(t, c, p, email)).await?;
            self.store.delete(&attempts_key(t, c, p, email)).await?;
            self.store.delete(&code_run_key(t, c, p, email)).await?;
        }
        self.clear_failures(t, c, email).await?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_the_connections_own_only_under_its_incarnations() {
        let old = Bound::Live {
            incarnation: "t.c".into(),
            unstamped_since: Some(1_000),
        };
        let new = Bound::Live {
            incarnation: "t.c".into(),
            unstamped_since: None,
        };
        for bound in [&old, &new] {
            assert!(bound.admits_stamp(Some("t.c"), 5));
            assert!(!bound.admits_stamp(Some("t.other"), 5_000), "another incarnation's");
        }
        // Unstamped: only under a tenant and connection older than
        // stamping, and only if not older than the tenant.
        assert!(old.admits_stamp(None, 1_000));
        assert!(!old.admits_stamp(None, 999), "older than the tenant");
        assert!(
            !new.admits_stamp(None, 5_000),
            "its tenant or connection stamps every account"
        );
        assert!(!Bound::Gone.admits_stamp(Some("t.c"), 5));
        assert!(Bound::Unchecked.admits_stamp(None, 0));
    }

    #[test]
    fn emails_normalise_and_bad_ones_are_refused() {
        assert_eq!(
            normalise_email("  Jane.Doe@Acme.Example "),
            Some("jane.doe@acme.example".into())
        );
        for bad in [
            "",
            "jane",
            "@acme.example",
            "jane@acme",
            "jane@.example",
            "a b@c.d",
            "j@a@b.c",
            "<j@a.b>",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_ascii_address_keeps_the_spelling_it_was_stored_under() {
        // Every account stored before addresses had one spelling under an
        // ASCII address keeps its key: the one spelling of an ASCII address
        // is what trimming and lower-casing made of it.
        for raw in [
            "  Jane.Doe@Acme.Example ",
            "o'neil+tag@sub.acme.co.uk",
            "JO@XN--EXMPLE-CUA.COM",
            "jo@xn--zz.example",
            "jo@my_host.acme.example",
            "x@a..b.example",
            "!#$%&*+/=?^_`{|}~-@acme.example",
        ] {
            assert_eq!(normalise_email(raw), legacy_email(raw), "{raw}");
            assert!(normalise_email(raw).is_some(), "{raw}");
        }
        let plain = Spellings::of(" Jane.Doe@Acme.Example").unwrap();
        assert_eq!(plain.canonical, "jane.doe@acme.example");
        assert!(plain.older.is_empty(), "nothing else to look for: {plain:?}");
    }

    #[test]
    fn canonically_equivalent_local_parts_are_one_address() {
        let nfc = "jos\u{e9}@acme.example";
        for raw in [
            nfc,
            "jose\u{301}@acme.example",
            "JOS\u{c9}@ACME.example",
            "JOSE\u{301}@acme.example",
        ] {
            assert_eq!(normalise_email(raw).as_deref(), Some(nfc), "{raw:?}");
        }
    }

    #[test]
    fn full_width_letters_and_dots_are_their_ordinary_ones() {
        for raw in [
            "\u{ff4a}\u{ff4f}@acme.example",
            "\u{ff2a}\u{ff2f}@\u{ff41}\u{ff43}\u{ff4d}\u{ff45}\u{ff0e}example",
            "jo@acme\u{3002}example",
        ] {
            assert_eq!(normalise_email(raw).as_deref(), Some("jo@acme.example"), "{raw:?}");
        }
        // Half-width katakana and its voiced mark compose as the ordinary
        // ones do.
        assert_eq!(
            normalise_email("\u{ff76}\u{ff9e}@acme.example"),
            normalise_email("\u{30ac}@acme.example")
        );
        // NFC, not NFKC: a ligature or a mathematical letter is another
        // mailbox, not another spelling (RFC 6532 §3.1).
        assert_eq!(
            normalise_email("\u{fb01}@acme.example").as_deref(),
            Some("\u{fb01}@acme.example")
        );
        assert_ne!(
            normalise_email("\u{1d423}o@acme.example").as_deref(),
            Some("jo@acme.example")
        );
        // A full-width `@` or `<` is one, and refused where one is.
        assert_eq!(normalise_email("a\u{ff20}b@acme.example"), None);
        assert_eq!(normalise_email("a\u{ff1c}b@acme.example"), None);
    }

    #[test]
    fn a_unicode_domain_and_its_a_label_are_one_address() {
        let a_label = "jo@xn--exmple-cua.example";
        for raw in [
            "jo@ex\u{e4}mple.example",
            "jo@EX\u{c4}MPLE.example",
            "jo@exa\u{308}mple.example",
            "jo@ex\u{e4}mple\u{ff0e}example",
            a_label,
            "JO@XN--EXMPLE-CUA.EXAMPLE",
        ] {
            assert_eq!(normalise_email(raw).as_deref(), Some(a_label), "{raw:?}");
        }
        // Where an account made before may be: as typed, and with the
        // domain in Unicode.
        let typed = Spellings::of("Jo@Exa\u{308}mple.example").unwrap();
        assert_eq!(typed.canonical, a_label);
        assert_eq!(
            typed.older,
            ["jo@exa\u{308}mple.example", "jo@ex\u{e4}mple.example"],
            "{typed:?}"
        );
        assert_eq!(
            Spellings::of(a_label).unwrap().older,
            ["jo@ex\u{e4}mple.example", "jo@exa\u{308}mple.example"]
        );
        // A decomposed local part, as NFD text stored it.
        let nfc = Spellings::of("Jos\u{e9}@acme.example").unwrap();
        assert_eq!(nfc.canonical, "jos\u{e9}@acme.example");
        assert_eq!(nfc.older, ["jose\u{301}@acme.example"], "{nfc:?}");
    }

    #[test]
    fn a_domain_uts46_refuses_is_no_address() {
        for raw in [
            // A label beginning with a combining mark.
            "jo@\u{301}example.example",
            // A zero-width joiner outside the context it is allowed in.
            "jo@exa\u{200d}mple.example",
            // A private-use character.
            "jo@ex\u{e000}mple.example",
            // Left-to-right and right-to-left letters in one label.
            "jo@a\u{5d0}.example",
            // An A-label that is no Punycode, beside a Unicode label.
            "jo@xn--a.ex\u{e4}mple.example",
        ] {
            assert_eq!(normalise_email(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn the_length_limit_holds_for_the_one_spelling() {
        // 90 full-width letters are 270 bytes as typed, 90 as stored.
        let wide = format!("{}@acme.example", "\u{ff4a}".repeat(90));
        assert!(wide.len() > 254);
        assert_eq!(normalise_email(&wide), Some(format!("{}@acme.example", "j".repeat(90))));
        // A domain within the limit in Unicode but not as A-labels.
        let label = "a\u{e4}b\u{f6}c\u{fc}d\u{e9}e\u{e8}";
        let domain = [label; 12].join(".");
        let raw = format!("jo@{domain}.example");
        assert!(raw.len() <= 254, "{}", raw.len());
        assert_eq!(
            normalise_email(&raw),
            None,
            "{:?}",
            canonical_domain(&domain).map(|d| d.len())
        );
    }

    #[test]
    fn lockout_doubles_from_the_threshold_up_to_the_cap() {
        let p = LockoutPolicy {
            threshold: 5,
            base_secs: 30,
            max_secs: 3600,
            window_secs: 86_400,
        };
        assert_eq!(p.lock_secs(4), None);
        assert_eq!(p.lock_secs(5), Some(30));
        assert_eq!(p.lock_secs(6), Some(60));
        assert_eq!(p.lock_secs(8), Some(240));
        assert_eq!(p.lock_secs(20), Some(3600));
        assert_eq!(p.lock_secs(i64::MAX), Some(3600));
    }
}
