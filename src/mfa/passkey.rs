//! WebAuthn passkeys of local accounts (and dev-IdP users), per (tenant,
//! user `sub`), over kanidm's `webauthn-rs` (OpenSSL underneath).
//!
//! - The relying party id is the host of `server.public_url` and the only
//!   origin is that URL's origin ([`relying_party`]); passkeys are refused at
//!   start-up unless that URL is https or `http://localhost` (browsers refuse
//!   WebAuthn elsewhere, and an IP address cannot be an RP id).
//! - A user's passkeys live in one record `t:<tenant>:mfa` / `passkeys:<sub>`
//!   (public keys, counters, names: nothing secret), with a random WebAuthn
//!   user handle (a UUID, never the `sub`) and an index
//!   `passkey-user:<handle>` → `sub` for the discoverable (passwordless)
//!   sign-in. Both keys are tenant-scoped: a credential registered in one
//!   tenant is unknown in every other.
//! - A ceremony's state (the challenge and the credentials allowed) waits in
//!   the store under a one-time handle (hash as key, [`CEREMONY_TTL`]),
//!   bound to the browser by the hash of a secret its session holds, and is
//!   consumed (`take`) before the browser's answer is checked: a replayed
//!   answer finds nothing (`passkey.unknown_challenge`).
//! - Every authentication attempt is counted against the user's MFA
//!   throttle ([`super::Mfa::count_attempt`]) before it is checked.
//! - After a successful authentication the stored counter and backup state
//!   are updated (compare-and-set); a counter that goes backwards is refused
//!   by `webauthn-rs` (`passkey.possible_clone`).
//! - A registration at a sign-in's enrolment ([`AddedFrom::SignIn`]: the
//!   password alone) adds the account's first second factor only: it is
//!   refused (`mfa.enrolment_changed`) when the account has a passkey or a
//!   TOTP enrolment by then. A signed-in user's page adds more.

use super::{AddedFrom, Mfa};
use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use url::Url;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Uuid,
    WebauthnError,
};

/// How long a started ceremony waits for the browser's answer.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// The most passkeys one user may register.
pub const MAX_PASSKEYS: usize = 10;
/// The longest passkey name kept (characters).
pub const MAX_NAME_CHARS: usize = 64;
/// The longest ceremony handle accepted (handles are 32 random bytes, base64url).
const MAX_HANDLE_LEN: usize = 128;
/// Compare-and-set rounds before a contended update is refused.
const CAS_ROUNDS: usize = 4;

/// The key of a user's passkeys (persistent).
pub fn passkeys_key(t: &TenantId, sub: &str) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("passkeys:{sub}"))
}

/// The key of the index from a WebAuthn user handle to the `sub` (persistent).
pub fn handle_key(t: &TenantId, user_handle: &Uuid) -> Key {
    Key::tenant(t.as_str(), "mfa", format!("passkey-user:{user_handle}"))
}

fn ceremony_key(t: &TenantId, handle: &str) -> Key {
    Key::tenant(
        t.as_str(),
        "login",
        format!("passkey:{}", crate::tokens::sha256_base64url(handle.as_bytes())),
    )
}

pub use crate::config::passkeys::relying_party;

/// One registered passkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// The credential id, base64url (how the page and the admin API name it).
    pub id: String,
    /// The name the person gave it.
    pub name: String,
    /// The connection the person was signed in with when registering: a
    /// passwordless sign-in is accepted on that connection only.
    pub connection: ConnectionId,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
    /// When it was last used (Unix seconds).
    #[serde(default)]
    pub last_used_at: Option<i64>,
    /// The public key, counter and backup state (`webauthn-rs`).
    pub passkey: Passkey,
}

/// A user's passkeys and WebAuthn user handle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserPasskeys {
    /// The WebAuthn user handle: random, stable for the user, never the `sub`.
    pub user_handle: Uuid,
    /// The passkeys.
    #[serde(default)]
    pub passkeys: Vec<StoredPasskey>,
}

/// What a waiting ceremony is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Purpose {
    /// Registering a passkey for `sub` (signed in, or at the second-factor
    /// enrolment of a sign-in: `mfa_handle` is that sign-in's handle).
    Register {
        /// The user.
        sub: String,
        /// The connection the user signed in with.
        connection: ConnectionId,
        /// The waiting sign-in, when registering during one.
        #[serde(default)]
        mfa_handle: Option<String>,
        /// `webauthn-rs`'s state.
        state: PasskeyRegistration,
    },
    /// A passkey as the second factor of the waiting sign-in `mfa_handle`.
    SecondFactor {
        /// The user.
        sub: String,
        /// The waiting sign-in's handle.
        mfa_handle: String,
        /// `webauthn-rs`'s state.
        state: PasskeyAuthentication,
    },
    /// A passwordless sign-in on `connection` for the pending login `login`.
    Passwordless {
        /// The connection signed in to.
        connection: ConnectionId,
        /// The pending login.
        login: String,
        /// `webauthn-rs`'s state.
        state: DiscoverableAuthentication,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Ceremony {
    purpose: Purpose,
    /// SHA-256 of the browser's secret.
    browser: String,
}

/// A started ceremony: what the page hands the browser.
#[derive(Debug)]
pub struct Started {
    /// The one-time handle of the waiting state.
    pub handle: String,
    /// The options for `navigator.credentials.create`/`get`, as JSON.
    pub options: String,
}

/// A passkey that just authenticated someone.
#[derive(Debug, Clone)]
pub struct Used {
    /// The user.
    pub sub: String,
    /// The credential id.
    pub id: String,
    /// Whether the authenticator verified the person (PIN, biometrics).
    pub user_verified: bool,
}

/// Why a passkey ceremony was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// Passkeys are not enabled on this gateway.
    #[error("passkeys are not enabled")]
    Disabled,
    /// No waiting ceremony under the handle (expired, used, never issued).
    #[error("unknown or used challenge")]
    UnknownChallenge,
    /// The ceremony was started in another browser.
    #[error("another browser's ceremony")]
    BrowserMismatch,
    /// The ceremony is for something else (another sign-in, connection, user).
    #[error("ceremony for something else")]
    Mismatch,
    /// The browser sent no credential (no JavaScript, or it was cancelled).
    #[error("no credential")]
    MissingCredential,
    /// The credential is not valid JSON of the expected shape.
    #[error("malformed credential")]
    Malformed,
    /// The client data names another origin.
    #[error("wrong origin")]
    WrongOrigin,
    /// The client data carries another challenge.
    #[error("wrong challenge")]
    WrongChallenge,
    /// The credential is not one of this user's in this tenant.
    #[error("unknown credential")]
    UnknownCredential,
    /// The authenticator did not verify the person.
    #[error("user not verified")]
    UserNotVerified,
    /// The signature counter went backwards: possibly a cloned authenticator.
    #[error("possible cloned authenticator")]
    PossibleClone,
    /// Any other failed check of `webauthn-rs` (signature, RP id hash, flags).
    #[error("verification failed: {0}")]
    Verification(String),
    /// The credential is already registered for this user.
    #[error("already registered")]
    AlreadyRegistered,
    /// The user has [`MAX_PASSKEYS`] already.
    #[error("too many passkeys")]
    TooMany,
    /// A registration at a sign-in's enrolment found the account with a
    /// second factor by now (a passkey or a TOTP enrolment).
    #[error("the account has a second factor by now")]
    EnrolmentChanged,
    /// No such passkey (removal).
    #[error("no such passkey")]
    NotFound,
    /// Too many attempts in the MFA window.
    #[error("too many attempts")]
    Throttled,
    /// The user's passkeys changed meanwhile (a concurrent update or reset).
    #[error("changed meanwhile")]
    Changed,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PasskeyError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Disabled => "passkey.disabled",
            Self::UnknownChallenge => "passkey.unknown_challenge",
            Self::BrowserMismatch => "passkey.browser_mismatch",
            Self::Mismatch => "passkey.ceremony_mismatch",
            Self::MissingCredential => "passkey.missing_credential",
            Self::Malformed => "passkey.malformed_credential",
            Self::WrongOrigin => "passkey.wrong_origin",
            Self::WrongChallenge => "passkey.wrong_challenge",
            Self::UnknownCredential => "passkey.unknown_credential",
            Self::UserNotVerified => "passkey.user_not_verified",
            Self::PossibleClone => "passkey.possible_clone",
            Self::Verification(_) => "passkey.verification_failed",
            Self::AlreadyRegistered => "passkey.already_registered",
            Self::TooMany => "passkey.too_many",
            Self::EnrolmentChanged => "mfa.enrolment_changed",
            Self::NotFound => "passkey.not_found",
            Self::Throttled => "passkey.throttled",
            Self::Changed => "passkey.changed",
            Self::Store(_) => "store.unavailable",
        }
    }

    fn from_webauthn(e: WebauthnError) -> Self {
        match e {
            WebauthnError::InvalidRPOrigin => Self::WrongOrigin,
            WebauthnError::MismatchedChallenge => Self::WrongChallenge,
            WebauthnError::UserNotVerified => Self::UserNotVerified,
            WebauthnError::CredentialPossibleCompromise => Self::PossibleClone,
            WebauthnError::CredentialNotFound | WebauthnError::InvalidUserUniqueId => Self::UnknownCredential,
            WebauthnError::ParseJSONFailure(_) | WebauthnError::ParseCBORFailure(_) => Self::Malformed,
            other => Self::Verification(other.to_string()),
        }
    }
}

fn store_corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("passkeys: {e}"))
}

/// A name as kept: trimmed, control characters dropped, at most
/// [`MAX_NAME_CHARS`]; "Passkey" when empty.
pub fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    if cleaned.is_empty() {
        "Passkey".to_owned()
    } else {
        cleaned
    }
}

/// The credential id as the page and admin API show it.
fn id_of(p: &Passkey) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p.cred_id().as_ref())
}

/// The user's passkeys, if any (no `webauthn-rs` needed: a presence check
/// for the second-factor step, the admin list, purges).
pub async fn read(store: &SharedStore, t: &TenantId, sub: &str) -> Result<Option<UserPasskeys>, StoreError> {
    store.get_json(&passkeys_key(t, sub)).await
}

/// Whether the user has at least one passkey.
pub async fn has_any(store: &SharedStore, t: &TenantId, sub: &str) -> Result<bool, StoreError> {
    Ok(read(store, t, sub).await?.is_some_and(|u| !u.passkeys.is_empty()))
}

/// Removes all of the user's passkeys and the user-handle index; returns
/// how many there were.
pub async fn remove_all(store: &SharedStore, t: &TenantId, sub: &str) -> Result<usize, StoreError> {
    let Some(u) = read(store, t, sub).await? else {
        return Ok(0);
    };
    // The index first: should the second delete fail, no passwordless
    // sign-in finds the user any more.
    store.delete(&handle_key(t, &u.user_handle)).await?;
    store.delete(&passkeys_key(t, sub)).await?;
    Ok(u.passkeys.len())
}

/// Passkey ceremonies over the store, the clock and one relying party.
#[derive(Clone)]
pub struct Passkeys {
    store: SharedStore,
    clock: SharedClock,
    webauthn: Arc<webauthn_rs::Webauthn>,
    rp_name: String,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys").field("rp_name", &self.rp_name).finish()
    }
}

impl Passkeys {
    /// The service for the gateway at `public_url` (see [`relying_party`]).
    pub fn new(store: SharedStore, clock: SharedClock, public_url: &Url, rp_name: &str) -> Result<Self, String> {
        let (rp_id, origin) = relying_party(public_url)?;
        let webauthn = webauthn_rs::WebauthnBuilder::new(&rp_id, &origin)
            .and_then(|b| b.rp_name(rp_name).timeout(CEREMONY_TTL).build())
            .map_err(|e| format!("passkeys: relying party {rp_id} at {origin}: {e}"))?;
        Ok(Self {
            store,
            clock,
            webauthn: Arc::new(webauthn),
            rp_name: rp_name.to_owned(),
        })
    }

    fn mfa(&self) -> Mfa {
        Mfa::new(self.store.clone(), self.clock.clone())
    }

    /// Keeps `purpose` waiting under a new handle bound to the browser whose
    /// session holds `browser_secret`.
    async fn wait(
        &self,
        t: &TenantId,
        purpose: Purpose,
        browser_secret: &str,
        options: String,
    ) -> Result<Started, StoreError> {
        let handle = crate::tokens::random_token(32);
        let ceremony = Ceremony {
            purpose,
            browser: crate::tokens::sha256_base64url(browser_secret.as_bytes()),
        };
        self.store
            .put_json(&ceremony_key(t, &handle), &ceremony, Some(CEREMONY_TTL))
            .await?;
        Ok(Started { handle, options })
    }

    /// Consumes the ceremony of `handle` (once) and checks it is this
    /// browser's. Consumed before anything else is checked: a failed
    /// answer cannot be retried with the same challenge.
    pub async fn take(
        &self,
        t: &TenantId,
        handle: &str,
        browser_secret: Option<&str>,
    ) -> Result<Purpose, PasskeyError> {
        if handle.is_empty() || handle.len() > MAX_HANDLE_LEN {
            return Err(PasskeyError::UnknownChallenge);
        }
        let Some(c) = self.store.take_json::<Ceremony>(&ceremony_key(t, handle)).await? else {
            return Err(PasskeyError::UnknownChallenge);
        };
        let holds = browser_secret.is_some_and(|s| {
            bool::from(
                crate::tokens::sha256_base64url(s.as_bytes())
                    .as_bytes()
                    .ct_eq(c.browser.as_bytes()),
            )
        });
        if !holds {
            return Err(PasskeyError::BrowserMismatch);
        }
        Ok(c.purpose)
    }

    /// The user's record, created with a fresh user handle when absent.
    async fn user_record(&self, t: &TenantId, sub: &str) -> Result<UserPasskeys, StoreError> {
        let key = passkeys_key(t, sub);
        for _ in 0..CAS_ROUNDS {
            if let Some(u) = self.store.get_json::<UserPasskeys>(&key).await? {
                return Ok(u);
            }
            let fresh = UserPasskeys {
                user_handle: Uuid::from_bytes(random_16()?),
                passkeys: Vec::new(),
            };
            if self.store.put_json_if_absent(&key, &fresh, None).await? {
                self.store
                    .put(&handle_key(t, &fresh.user_handle), sub.as_bytes(), None)
                    .await?;
                return Ok(fresh);
            }
        }
        Err(StoreError::Unavailable("passkeys record contended".into()))
    }

    /// Starts registering a passkey for `sub` (`user_name`: what the
    /// authenticator shows, e.g. the email).
    pub async fn start_registration(
        &self,
        t: &TenantId,
        sub: &str,
        connection: &ConnectionId,
        user_name: &str,
        mfa_handle: Option<String>,
        browser_secret: &str,
    ) -> Result<Started, PasskeyError> {
        let u = self.user_record(t, sub).await?;
        if u.passkeys.len() >= MAX_PASSKEYS {
            return Err(PasskeyError::TooMany);
        }
        let exclude = u
            .passkeys
            .iter()
            .map(|p| p.passkey.cred_id().clone())
            .collect::<Vec<_>>();
        let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) = self
            .webauthn
            .start_passkey_registration(u.user_handle, user_name, user_name, Some(exclude))
            .map_err(PasskeyError::from_webauthn)?;
        let options = serde_json::to_string(&ccr).map_err(store_corrupt)?;
        let purpose = Purpose::Register {
            sub: sub.to_owned(),
            connection: connection.clone(),
            mfa_handle,
            state,
        };
        Ok(self.wait(t, purpose, browser_secret, options).await?)
    }

    /// Finishes a registration: checks the browser's answer against the
    /// state and stores the passkey under `name`. From a sign-in (`from`),
    /// refused (`mfa.enrolment_changed`) when the user has a TOTP enrolment
    /// or a passkey by now: the passkeys are checked in the compare-and-set
    /// that adds this one, the TOTP enrolment just before it.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_registration(
        &self,
        t: &TenantId,
        sub: &str,
        connection: &ConnectionId,
        from: AddedFrom,
        state: &PasskeyRegistration,
        credential: &str,
        name: &str,
    ) -> Result<StoredPasskey, PasskeyError> {
        let reg: RegisterPublicKeyCredential = parse(credential)?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(&reg, state)
            .map_err(PasskeyError::from_webauthn)?;
        if from == AddedFrom::SignIn && self.mfa().enrolled(t, sub).await? {
            return Err(PasskeyError::EnrolmentChanged);
        }
        let stored = StoredPasskey {
            id: id_of(&passkey),
            name: clean_name(name),
            connection: connection.clone(),
            created_at: self.clock.unix(),
            last_used_at: None,
            passkey,
        };
        let key = passkeys_key(t, sub);
        for _ in 0..CAS_ROUNDS {
            let Some(raw) = self.store.get(&key).await? else {
                // Reset while the browser was busy: the ceremony's handle is gone.
                return Err(PasskeyError::Changed);
            };
            let mut u: UserPasskeys = serde_json::from_slice(&raw).map_err(store_corrupt)?;
            if from == AddedFrom::SignIn && !u.passkeys.is_empty() {
                return Err(PasskeyError::EnrolmentChanged);
            }
            if u.passkeys.iter().any(|p| p.id == stored.id) {
                return Err(PasskeyError::AlreadyRegistered);
            }
            if u.passkeys.len() >= MAX_PASSKEYS {
                return Err(PasskeyError::TooMany);
            }
            u.passkeys.push(stored.clone());
            let new = serde_json::to_vec(&u).map_err(store_corrupt)?;
            if self.store.compare_and_put(&key, &raw, &new, None).await? {
                return Ok(stored);
            }
        }
        Err(PasskeyError::Changed)
    }

    /// Starts a passkey second factor for `sub`; `None` when the user has
    /// no passkey.
    pub async fn start_second_factor(
        &self,
        t: &TenantId,
        sub: &str,
        mfa_handle: &str,
        browser_secret: &str,
    ) -> Result<Option<Started>, PasskeyError> {
        let Some(u) = read(&self.store, t, sub).await? else {
            return Ok(None);
        };
        if u.passkeys.is_empty() {
            return Ok(None);
        }
        let creds: Vec<Passkey> = u.passkeys.iter().map(|p| p.passkey.clone()).collect();
        let (rcr, state): (RequestChallengeResponse, PasskeyAuthentication) = self
            .webauthn
            .start_passkey_authentication(&creds)
            .map_err(PasskeyError::from_webauthn)?;
        let options = serde_json::to_string(&rcr).map_err(store_corrupt)?;
        let purpose = Purpose::SecondFactor {
            sub: sub.to_owned(),
            mfa_handle: mfa_handle.to_owned(),
            state,
        };
        Ok(Some(self.wait(t, purpose, browser_secret, options).await?))
    }

    /// Checks a passkey second factor of `sub` (counted against the MFA
    /// throttle first) and updates the passkey's counter and backup state.
    pub async fn finish_second_factor(
        &self,
        t: &TenantId,
        sub: &str,
        state: &PasskeyAuthentication,
        credential: &str,
    ) -> Result<Used, PasskeyError> {
        self.count(t, sub).await?;
        let cred: PublicKeyCredential = parse(credential)?;
        let result = self
            .webauthn
            .finish_passkey_authentication(&cred, state)
            .map_err(PasskeyError::from_webauthn)?;
        let used = self.after_use(t, sub, &result, None).await?;
        self.mfa().forget_attempts(t, sub).await;
        Ok(used)
    }

    /// Starts a passwordless (discoverable) sign-in on `connection` for the
    /// pending login `login`.
    pub async fn start_passwordless(
        &self,
        t: &TenantId,
        connection: &ConnectionId,
        login: &str,
        browser_secret: &str,
    ) -> Result<Started, PasskeyError> {
        let (rcr, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(PasskeyError::from_webauthn)?;
        let options = serde_json::to_string(&rcr).map_err(store_corrupt)?;
        let purpose = Purpose::Passwordless {
            connection: connection.clone(),
            login: login.to_owned(),
            state,
        };
        Ok(self.wait(t, purpose, browser_secret, options).await?)
    }

    /// Checks a passwordless answer: the user handle names a user of this
    /// tenant, the credential is one of theirs registered on `connection`,
    /// the attempt is counted against their MFA throttle, the signature and
    /// user verification pass; the counter and backup state are updated.
    pub async fn finish_passwordless(
        &self,
        t: &TenantId,
        connection: &ConnectionId,
        state: DiscoverableAuthentication,
        credential: &str,
    ) -> Result<Used, PasskeyError> {
        let cred: PublicKeyCredential = parse(credential)?;
        let (user_handle, cred_id) = self
            .webauthn
            .identify_discoverable_authentication(&cred)
            .map_err(PasskeyError::from_webauthn)?;
        let Some(sub) = self.store.get(&handle_key(t, &user_handle)).await? else {
            return Err(PasskeyError::UnknownCredential);
        };
        let sub = String::from_utf8(sub).map_err(store_corrupt)?;
        self.count(t, &sub).await?;
        let Some(u) = read(&self.store, t, &sub).await? else {
            return Err(PasskeyError::UnknownCredential);
        };
        if u.user_handle != user_handle {
            return Err(PasskeyError::UnknownCredential);
        }
        let Some(found) = u.passkeys.iter().find(|p| p.passkey.cred_id().as_ref() == cred_id) else {
            return Err(PasskeyError::UnknownCredential);
        };
        if &found.connection != connection {
            return Err(PasskeyError::UnknownCredential);
        }
        let key = DiscoverableKey::from(&found.passkey);
        let result = self
            .webauthn
            .finish_discoverable_authentication(&cred, state, &[key])
            .map_err(PasskeyError::from_webauthn)?;
        if !result.user_verified() {
            return Err(PasskeyError::UserNotVerified);
        }
        let used = self.after_use(t, &sub, &result, Some(connection)).await?;
        self.mfa().forget_attempts(t, &sub).await;
        Ok(used)
    }

    async fn count(&self, t: &TenantId, sub: &str) -> Result<(), PasskeyError> {
        match self.mfa().count_attempt(t, sub).await {
            Ok(()) => Ok(()),
            Err(super::MfaError::Store(e)) => Err(PasskeyError::Store(e)),
            Err(_) => Err(PasskeyError::Throttled),
        }
    }

    /// Records a use: counter, backup state, last use (compare-and-set).
    async fn after_use(
        &self,
        t: &TenantId,
        sub: &str,
        result: &webauthn_rs::prelude::AuthenticationResult,
        connection: Option<&ConnectionId>,
    ) -> Result<Used, PasskeyError> {
        let key = passkeys_key(t, sub);
        for _ in 0..CAS_ROUNDS {
            let Some(raw) = self.store.get(&key).await? else {
                return Err(PasskeyError::UnknownCredential);
            };
            let mut u: UserPasskeys = serde_json::from_slice(&raw).map_err(store_corrupt)?;
            let Some(p) = u.passkeys.iter_mut().find(|p| p.passkey.cred_id() == result.cred_id()) else {
                // Removed while the browser was busy.
                return Err(PasskeyError::UnknownCredential);
            };
            if connection.is_some_and(|c| c != &p.connection) {
                return Err(PasskeyError::UnknownCredential);
            }
            p.passkey.update_credential(result);
            p.last_used_at = Some(self.clock.unix());
            let used = Used {
                sub: sub.to_owned(),
                id: p.id.clone(),
                user_verified: result.user_verified(),
            };
            let new = serde_json::to_vec(&u).map_err(store_corrupt)?;
            if self.store.compare_and_put(&key, &raw, &new, None).await? {
                return Ok(used);
            }
        }
        Err(PasskeyError::Changed)
    }

    /// The user's passkeys.
    pub async fn list(&self, t: &TenantId, sub: &str) -> Result<Vec<StoredPasskey>, StoreError> {
        Ok(read(&self.store, t, sub).await?.map(|u| u.passkeys).unwrap_or_default())
    }

    /// Removes one passkey of the user by id.
    pub async fn remove(&self, t: &TenantId, sub: &str, id: &str) -> Result<StoredPasskey, PasskeyError> {
        remove_one(&self.store, t, sub, id).await
    }
}

/// Removes the passkey `id` of `sub` (compare-and-set against the record).
pub async fn remove_one(store: &SharedStore, t: &TenantId, sub: &str, id: &str) -> Result<StoredPasskey, PasskeyError> {
    let key = passkeys_key(t, sub);
    for _ in 0..CAS_ROUNDS {
        let Some(raw) = store.get(&key).await? else {
            return Err(PasskeyError::NotFound);
        };
        let mut u: UserPasskeys = serde_json::from_slice(&raw).map_err(store_corrupt)?;
        let Some(i) = u.passkeys.iter().position(|p| p.id == id) else {
            return Err(PasskeyError::NotFound);
        };
        let removed = u.passkeys.remove(i);
        let new = serde_json::to_vec(&u).map_err(store_corrupt)?;
        if store.compare_and_put(&key, &raw, &new, None).await? {
            return Ok(removed);
        }
    }
    Err(PasskeyError::Changed)
}

fn random_16() -> Result<[u8; 16], StoreError> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(|e| StoreError::Unavailable(format!("random bytes: {e}")))?;
    Ok(b)
}

/// Parses the browser's credential JSON.
fn parse<T: serde::de::DeserializeOwned>(credential: &str) -> Result<T, PasskeyError> {
    if credential.trim().is_empty() {
        return Err(PasskeyError::MissingCredential);
    }
    serde_json::from_str(credential).map_err(|_| PasskeyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relying_party_is_the_public_host_and_needs_https_or_localhost() {
        let (id, origin) = relying_party(&Url::parse("https://Login.Example.com/sso/").unwrap()).unwrap();
        assert_eq!(id, "login.example.com");
        assert_eq!(origin.as_str(), "https://login.example.com/");
        let (id, origin) = relying_party(&Url::parse("http://localhost:8080").unwrap()).unwrap();
        assert_eq!(id, "localhost");
        assert_eq!(origin.as_str(), "http://localhost:8080/");
        assert!(relying_party(&Url::parse("http://login.example.com").unwrap())
            .unwrap_err()
            .contains("https"));
        assert!(relying_party(&Url::parse("https://127.0.0.1:8443").unwrap())
            .unwrap_err()
            .contains("IP address"));
        assert!(relying_party(&Url::parse("http://[::1]:8080").unwrap()).is_err());
    }

    #[test]
    fn names_are_cleaned_and_bounded() {
        assert_eq!(clean_name("  My key\u{7}  "), "My key");
        assert_eq!(clean_name(""), "Passkey");
        assert_eq!(clean_name(&"x".repeat(200)).chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn webauthn_errors_map_to_reason_codes() {
        assert_eq!(
            PasskeyError::from_webauthn(WebauthnError::InvalidRPOrigin).reason(),
            "passkey.wrong_origin"
        );
        assert_eq!(
            PasskeyError::from_webauthn(WebauthnError::MismatchedChallenge).reason(),
            "passkey.wrong_challenge"
        );
        assert_eq!(
            PasskeyError::from_webauthn(WebauthnError::CredentialPossibleCompromise).reason(),
            "passkey.possible_clone"
        );
        assert_eq!(
            PasskeyError::from_webauthn(WebauthnError::UserNotVerified).reason(),
            "passkey.user_not_verified"
        );
        assert_eq!(
            parse::<PublicKeyCredential>("").unwrap_err().reason(),
            "passkey.missing_credential"
        );
        assert_eq!(
            parse::<PublicKeyCredential>("{\"id\":1}").unwrap_err().reason(),
            "passkey.malformed_credential"
        );
    }

    fn service() -> (Passkeys, SharedStore, TenantId) {
        let clock = Arc::new(crate::clock::ManualClock::at(
            chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ));
        let store: SharedStore = Arc::new(crate::store::memory::MemoryStore::new(clock.clone()));
        let p = Passkeys::new(
            store.clone(),
            clock,
            &Url::parse("http://localhost:8080").unwrap(),
            "Portcullis",
        )
        .unwrap();
        (p, store, TenantId::parse("acme").unwrap())
    }

    #[tokio::test]
    async fn a_ceremony_is_single_use_and_bound_to_its_browser() {
        let (p, _, t) = service();
        let c = ConnectionId::parse("pw").unwrap();
        let started = p
            .start_registration(&t, "u1", &c, "a@acme.example", None, "secret-1")
            .await
            .unwrap();
        let options: serde_json::Value = serde_json::from_str(&started.options).unwrap();
        assert_eq!(options["publicKey"]["rp"]["id"], "localhost");
        assert_eq!(
            options["publicKey"]["authenticatorSelection"]["userVerification"],
            "required"
        );
        // Another browser's secret: refused, and the ceremony is spent.
        assert_eq!(
            p.take(&t, &started.handle, Some("secret-2"))
                .await
                .unwrap_err()
                .reason(),
            "passkey.browser_mismatch"
        );
        assert_eq!(
            p.take(&t, &started.handle, Some("secret-1"))
                .await
                .unwrap_err()
                .reason(),
            "passkey.unknown_challenge"
        );
        let again = p
            .start_registration(&t, "u1", &c, "a@acme.example", None, "secret-1")
            .await
            .unwrap();
        assert!(matches!(
            p.take(&t, &again.handle, Some("secret-1")).await.unwrap(),
            Purpose::Register { ref sub, .. } if sub == "u1"
        ));
        assert_eq!(
            p.take(&t, &again.handle, Some("secret-1")).await.unwrap_err().reason(),
            "passkey.unknown_challenge"
        );
        // Another tenant does not see the ceremony.
        let other = TenantId::parse("globex").unwrap();
        let third = p
            .start_registration(&t, "u1", &c, "a@acme.example", None, "s")
            .await
            .unwrap();
        assert_eq!(
            p.take(&other, &third.handle, Some("s")).await.unwrap_err().reason(),
            "passkey.unknown_challenge"
        );
    }

    #[tokio::test]
    async fn the_user_handle_is_stable_random_and_indexed_per_tenant() {
        let (p, store, t) = service();
        let c = ConnectionId::parse("pw").unwrap();
        p.start_registration(&t, "u1", &c, "a", None, "s").await.unwrap();
        let first = read(&store, &t, "u1").await.unwrap().unwrap();
        p.start_registration(&t, "u1", &c, "a", None, "s").await.unwrap();
        let second = read(&store, &t, "u1").await.unwrap().unwrap();
        assert_eq!(first.user_handle, second.user_handle);
        assert_ne!(first.user_handle.to_string(), "u1");
        assert_eq!(
            store.get(&handle_key(&t, &first.user_handle)).await.unwrap().unwrap(),
            b"u1".to_vec()
        );
        let other = TenantId::parse("globex").unwrap();
        assert!(store
            .get(&handle_key(&other, &first.user_handle))
            .await
            .unwrap()
            .is_none());
        // No passkey yet: no second factor offered, nothing to remove.
        assert!(!has_any(&store, &t, "u1").await.unwrap());
        assert!(p.start_second_factor(&t, "u1", "h", "s").await.unwrap().is_none());
        assert_eq!(
            p.remove(&t, "u1", "nope").await.unwrap_err().reason(),
            "passkey.not_found"
        );
        assert_eq!(remove_all(&store, &t, "u1").await.unwrap(), 0);
        assert!(read(&store, &t, "u1").await.unwrap().is_none());
        assert!(store.get(&handle_key(&t, &first.user_handle)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_forged_registration_is_refused_with_its_reason() {
        let (p, _, t) = service();
        let c = ConnectionId::parse("pw").unwrap();
        let started = p.start_registration(&t, "u1", &c, "a", None, "s").await.unwrap();
        let Purpose::Register { state, .. } = p.take(&t, &started.handle, Some("s")).await.unwrap() else {
            panic!("not a registration");
        };
        assert_eq!(
            p.finish_registration(&t, "u1", &c, AddedFrom::Session, &state, "", "k")
                .await
                .unwrap_err()
                .reason(),
            "passkey.missing_credential"
        );
        // Client data for another origin (with the right challenge) and
        // an attestation object that is not one: refused before anything
        // is stored (the browser test drives the origin check itself).
        let options: serde_json::Value = serde_json::from_str(&started.options).unwrap();
        let challenge = options["publicKey"]["challenge"].as_str().unwrap();
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let client_data = serde_json::json!({
            "type": "webauthn.create",
            "challenge": challenge,
            "origin": "http://evil.localhost:8080",
        });
        let cred = serde_json::json!({
            "id": "AAAA",
            "rawId": "AAAA",
            "type": "public-key",
            "response": {
                "attestationObject": b64(b"\xa0"),
                "clientDataJSON": b64(client_data.to_string().as_bytes()),
            },
            "extensions": {},
        });
        assert_eq!(
            p.finish_registration(&t, "u1", &c, AddedFrom::Session, &state, &cred.to_string(), "k")
                .await
                .unwrap_err()
                .reason(),
            "passkey.malformed_credential"
        );
        assert!(read(&p.store, &t, "u1").await.unwrap().unwrap().passkeys.is_empty());
    }
}
