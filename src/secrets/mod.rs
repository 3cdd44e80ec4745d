//! Secrets at rest: AES-256-GCM envelopes under master keys.
//!
//! Upstream client secrets, upstream refresh tokens, SP private keys and
//! token-signing private keys are stored as *envelopes*:
//!
//! ```text
//! pcx1.<key id>.<nonce, base64url>.<ciphertext and tag, base64url>
//! ```
//!
//! sealed with AES-256-GCM (OpenSSL, the one crypto stack) under the master
//! key `<key id>`, with a fresh random 96-bit nonce per value. The
//! associated data is `pcx1|<key id>|<context>`, where the context names
//! where the value belongs (the store key, i.e. record kind, tenant and
//! connection or session, and the field): an envelope copied into another
//! record, field or tenant, or relabelled with another key id, does not
//! open.
//!
//! Master keys come from a [`KeySource`]: a key file
//! (`PORTCULLIS_MASTER_KEY_FILE`, several keys with ids, one marked
//! current; format in `docs/SECRETS.md`), one key in the environment
//! (`PORTCULLIS_MASTER_KEY`), or in dev mode a derived, publicly known dev
//! key. A KMS plugs in as another `KeySource` that unwraps its data keys
//! when it is built. New values are sealed under the current key; any key
//! the source knows opens (rotation without downtime, then
//! `portcullis keys rewrap`).
//!
//! [`sealed::SealedStore`] applies this at the storage boundary, by record
//! kind, so no code path can write one of these secrets around it.

pub mod sealed;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The envelope's version tag (and the first part of every envelope).
pub const ENVELOPE_VERSION: &str = "pcx1";
/// Master key length: AES-256.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The id of the derived dev-mode key (never secret: dev mode only).
pub const DEV_KEY_ID: &str = "dev";

/// Why a secret could not be sealed or opened. [`SecretsError::code`] is a
/// stable reason code; the `Display` text names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// Not an envelope of a version we read.
    #[error("not a {ENVELOPE_VERSION} envelope ({0})")]
    Malformed(&'static str),
    /// Sealed under a master key id the key source does not know.
    #[error(
        "sealed with master key id {0:?}, which the key source does not hold: add that key to the master key file"
    )]
    UnknownKey(String),
    /// The authentication tag did not verify: tampered with, moved to
    /// another record or field, or sealed under another key with this id.
    #[error("the sealed value does not authenticate (tampered with, moved from another record, or a different key)")]
    Refused,
    /// OpenSSL failed.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// No master key is configured.
    #[error("no master key is configured")]
    NoKey,
    /// The master key configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// A record of a sealed kind holds, on the path of a sealed field,
    /// something other than an object (an array where the path walks
    /// every element), or at the field something other than a string or
    /// null: a record written in another shape (serde reads a struct from
    /// an array too), which would carry a secret past the sealing. Names
    /// the place and the JSON type found, never the value.
    #[error(
        "{at} holds {found} where only an object on the way to a sealed field, or the sealed string itself, belongs"
    )]
    Misshapen {
        /// `<tag>/<name>#<field path>`.
        at: String,
        /// The JSON type found (`an array`, `a number`, ...).
        found: &'static str,
    },
}

impl SecretsError {
    /// The stable reason code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "secrets.malformed",
            Self::UnknownKey(_) => "secrets.unknown_key",
            Self::Refused => "secrets.refused",
            Self::Crypto(_) => "secrets.crypto",
            Self::NoKey => "secrets.no_key",
            Self::Config(_) => "secrets.config",
            Self::Misshapen { .. } => "secrets.malformed",
        }
    }
}

/// One AES-256 master key with its id. `Debug` shows the id only; the bytes
/// are overwritten when it is dropped (best effort).
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_LEN],
}

impl MasterKey {
    /// A key `id` with `bytes`; the id must be 1–32 of `A-Z a-z 0-9 _ -`
    /// (it travels in every envelope, separated by dots).
    pub fn new(id: &str, bytes: [u8; KEY_LEN]) -> Result<Self, SecretsError> {
        if !valid_id(id) {
            return Err(SecretsError::Config(format!(
                "master key id {id:?} must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -"
            )));
        }
        Ok(Self {
            id: id.to_owned(),
            bytes,
        })
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id != "current"
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where master keys come from. Implementations hold the keys in memory
/// (a KMS implementation unwraps its data keys when it is built), so both
/// methods are cheap and synchronous.
pub trait KeySource: Send + Sync {
    /// The key new values are sealed under.
    fn current(&self) -> &MasterKey;
    /// The key with id `id`, if this source holds it.
    fn key(&self, id: &str) -> Option<&MasterKey>;
    /// Every key id this source holds (for reports).
    fn ids(&self) -> Vec<String>;
    /// Where the keys came from, for logs (never the keys).
    fn describe(&self) -> String;
}

/// Keys held in memory: a key file, the environment, the dev key.
pub struct StaticKeys {
    keys: BTreeMap<String, MasterKey>,
    current: String,
    origin: String,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .field("origin", &self.origin)
            .finish()
    }
}

fn decode_key(value: &str, what: &str) -> Result<[u8; KEY_LEN], SecretsError> {
    let v = value.trim();
    let bytes = STANDARD
        .decode(v)
        .or_else(|_| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')))
        .map_err(|_| SecretsError::Config(format!("{what}: not base64")))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        SecretsError::Config(format!(
            "{what}: must be {KEY_LEN} bytes (base64 of `openssl rand 32`), found {}",
            bytes.len()
        ))
    })
}

impl StaticKeys {
    /// Parses a master key file (`docs/SECRETS.md`): lines `<id> = <base64
    /// of 32 bytes>`, one `current = <id>` line (optional when there is one
    /// key), `#` comments and blank lines. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SecretsError> {
        let mut keys = BTreeMap::new();
        let mut current = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{origin}: line {}", n + 1);
            let Some((name, value)) = line.split_once('=') else {
                return Err(SecretsError::Config(format!(
                    "{at}: expected `<key id> = <base64 key>` or `current = <key id>`"
                )));
            };
            let (name, value) = (name.trim(), value.trim());
            if name == "current" {
                if current.replace(value.to_owned()).is_some() {
                    return Err(SecretsError::Config(format!("{at}: `current` is set twice")));
                }
                continue;
            }
            let key = MasterKey::new(name, decode_key(value, &at)?).map_err(|e| match e {
                SecretsError::Config(m) => SecretsError::Config(format!("{at}: {m}")),
                other => other,
            })?;
            if keys.insert(name.to_owned(), key).is_some() {
                return Err(SecretsError::Config(format!("{at}: key id {name:?} appears twice")));
            }
        }
        let current = match (current, keys.len()) {
            (Some(c), _) => c,
            (None, 1) => keys.keys().next().cloned().unwrap_or_default(),
            (None, 0) => return Err(SecretsError::Config(format!("{origin}: holds no key"))),
            (None, _) => {
                return Err(SecretsError::Config(format!(
                    "{origin}: several keys and no `current = <key id>` line"
                )))
            }
        };
        if !keys.contains_key(&current) {
            return Err(SecretsError::Config(format!(
                "{origin}: `current = {current}` names no key in the file"
            )));
        }
        Ok(Self {
            keys,
            current,
            origin: origin.to_owned(),
        })
    }

    /// Reads and parses the key file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecretsError::Config(format!("{origin}: cannot read the master key file: {e}")))?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    reason = "secrets.key_file_readable",
                    file = %origin,
                    "the master key file can be read by other users: make it 0400 (Kubernetes: defaultMode 0400)"
                );
            }
        }
        Self::parse(&text, &origin)
    }

    /// One key from the environment: `<id>:<base64>` or just `<base64>`
    /// (id `env`).
    pub fn from_env(value: &str) -> Result<Self, SecretsError> {
        let (id, b64) = value.trim().split_once(':').unwrap_or(("env", value.trim()));
        let key = MasterKey::new(id, decode_key(b64, "PORTCULLIS_MASTER_KEY")?)?;
        Ok(Self::single(key, "PORTCULLIS_MASTER_KEY"))
    }

    /// The dev-mode key: derived from a fixed label, so it is the same on
    /// every start (dev data in Redis stays readable) and known to
    /// everyone. Never protects anything; dev mode warns loudly.
    pub fn dev() -> Self {
        use sha2::Digest;
        let bytes: [u8; KEY_LEN] = sha2::Sha256::digest(b"portcullis dev-mode master key: NOT SECRET").into();
        Self::single(
            MasterKey {
                id: DEV_KEY_ID.to_owned(),
                bytes,
            },
            "the derived dev-mode key (not secret)",
        )
    }

    /// A random key that lives as long as the process (the in-memory store:
    /// nothing outlives it anyway).
    pub fn ephemeral() -> Result<Self, SecretsError> {
        let mut bytes = [0u8; KEY_LEN];
        openssl::rand::rand_bytes(&mut bytes).map_err(|e| SecretsError::Crypto(e.to_string()))?;
        Ok(Self::single(
            MasterKey {
                id: "ephemeral".to_owned(),
                bytes,
            },
            "a per-process random key (in-memory store)",
        ))
    }

    fn single(key: MasterKey, origin: &str) -> Self {
        let current = key.id.clone();
        let mut keys = BTreeMap::new();
        keys.insert(current.clone(), key);
        Self {
            keys,
            current,
            origin: origin.to_owned(),
        }
    }
}

impl KeySource for StaticKeys {
    fn current(&self) -> &MasterKey {
        // `parse` and the constructors guarantee the current id is present;
        // fall back to any key rather than panic.
        match self.keys.get(&self.current) {
            Some(k) => k,
            None => self.keys.values().next().unwrap_or_else(|| unreachable_key()),
        }
    }

    fn key(&self, id: &str) -> Option<&MasterKey> {
        self.keys.get(id)
    }

    fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    fn describe(&self) -> String {
        format!(
            "{} (key ids {}; current {})",
            self.origin,
            self.ids().join(", "),
            self.current
        )
    }
}

/// A key whose bytes are all zero, under an id no envelope can carry
/// (`current` is reserved): only reachable if a `StaticKeys` were built
/// empty, which its constructors refuse; sealing under it is harmless and
/// nothing else opens it.
fn unreachable_key() -> &'static MasterKey {
    static EMPTY: std::sync::OnceLock<MasterKey> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| MasterKey {
        id: "current".to_owned(),
        bytes: [0u8; KEY_LEN],
    })
}

/// Seals and opens envelopes with the keys of a [`KeySource`].
#[derive(Clone)]
pub struct Cipher {
    source: Arc<dyn KeySource>,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher({})", self.source.describe())
    }
}

fn aad(kid: &str, context: &str) -> Vec<u8> {
    format!("{ENVELOPE_VERSION}|{kid}|{context}").into_bytes()
}

/// Whether `value` looks like an envelope (it may still fail to open).
pub fn is_envelope(value: &str) -> bool {
    value.starts_with("pcx1.")
}

/// The key id an envelope names, if `value` is one.
pub fn envelope_key_id(value: &str) -> Option<&str> {
    let mut parts = value.split('.');
    (parts.next() == Some(ENVELOPE_VERSION)).then(|| parts.next()).flatten()
}

impl Cipher {
    /// A cipher over `source`.
    pub fn new(source: Arc<dyn KeySource>) -> Self {
        Self { source }
    }

    /// The id of the key new values are sealed under.
    pub fn current_id(&self) -> &str {
        self.source.current().id()
    }

    /// The key source (for reports).
    pub fn source(&self) -> &Arc<dyn KeySource> {
        &self.source
    }

    /// Seals `plaintext` for `context` under the current key.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, SecretsError> {
        let key = self.source.current();
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| SecretsError::Crypto(e.to_string()))?;
        let mut tag = [0u8; TAG_LEN];
        let mut sealed = openssl::symm::encrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &key.bytes,
            Some(&nonce),
            &aad(&key.id, context),
            plaintext,
            &mut tag,
        )
        .map_err(|e| SecretsError::Crypto(e.to_string()))?;
        sealed.extend_from_slice(&tag);
        Ok(format!(
            "{ENVELOPE_VERSION}.{}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens an envelope sealed for `context`. Fails closed: a malformed
    /// envelope, an unknown key id, a changed byte, another context or
    /// another key with the same id is an error, never a plaintext.
    pub fn open(&self, envelope: &str, context: &str) -> Result<Vec<u8>, SecretsError> {
        let mut parts = envelope.split('.');
        let (Some(version), Some(kid), Some(nonce), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretsError::Malformed("expected four dot-separated parts"));
        };
        if version != ENVELOPE_VERSION {
            return Err(SecretsError::Malformed("unknown version"));
        }
        let key = self
            .source
            .key(kid)
            .ok_or_else(|| SecretsError::UnknownKey(kid.to_owned()))?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| SecretsError::Malformed("nonce is not base64url"))?;
        if nonce.len() != NONCE_LEN {
            return Err(SecretsError::Malformed("nonce is not 96 bits"));
        }
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SecretsError::Malformed("ciphertext is not base64url"))?;
        let Some(split) = body.len().checked_sub(TAG_LEN) else {
            return Err(SecretsError::Malformed("shorter than the tag"));
        };
        let (ciphertext, tag) = body.split_at(split);
        openssl::symm::decrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &key.bytes,
            Some(&nonce),
            &aad(kid, context),
            ciphertext,
            tag,
        )
        .map_err(|_| SecretsError::Refused)
    }
}

/// What the configuration says about master keys (`[secrets]`).
pub enum KeyChoice {
    /// Seal under these keys.
    Keys(Arc<dyn KeySource>),
    /// Store secrets in plaintext (`secrets.allow_plaintext`, no key).
    Plaintext,
}

/// Chooses the key source from the configuration: the key file, else the
/// environment key, else the derived dev key in dev mode, else a random
/// per-process key for the in-memory store, else plaintext when the
/// operator explicitly allowed it; otherwise a configuration error.
pub fn choose(
    key_file: Option<&Path>,
    env_key: Option<&str>,
    dev: bool,
    persistent_store: bool,
    allow_plaintext: bool,
) -> Result<KeyChoice, SecretsError> {
    match (key_file, env_key) {
        (Some(_), Some(_)) => Err(SecretsError::Config(
            "set either PORTCULLIS_MASTER_KEY_FILE or PORTCULLIS_MASTER_KEY, not both".into(),
        )),
        (Some(path), None) => Ok(KeyChoice::Keys(Arc::new(StaticKeys::from_file(path)?))),
        (None, Some(v)) => Ok(KeyChoice::Keys(Arc::new(StaticKeys::from_env(v)?))),
        (None, None) if dev => Ok(KeyChoice::Keys(Arc::new(StaticKeys::dev()))),
        (None, None) if !persistent_store => Ok(KeyChoice::Keys(Arc::new(StaticKeys::ephemeral()?))),
        (None, None) if allow_plaintext => Ok(KeyChoice::Plaintext),
        (None, None) => Err(SecretsError::NoKey),
    }
}

#[cfg(test)]
mod tests;
