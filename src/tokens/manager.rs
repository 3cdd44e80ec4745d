//! The key manager: one keyset shared by all replicas, cached briefly by
//! each, rotated in three stages (next → active → retired).

use super::jwt;
use super::keys::{Keyset, LoadedKey, SigningAlgorithm, StoredKey};
use super::TokenError;
use crate::clock::SharedClock;
use crate::single_flight::Flight;
use crate::store::{Key, SharedStore, StoreJson};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the provider's signing keys are made and rotated.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Algorithm of newly generated keys. Changing it takes effect through
    /// rotation: the next generated key uses it, existing keys keep theirs.
    pub algorithm: SigningAlgorithm,
    /// Age of the active key after which [`KeyManager::rotate_if_due`]
    /// rotates; `None` disables automatic rotation.
    pub rotation_interval: Option<Duration>,
    /// Longest lifetime of a token this provider signs. [`KeyManager::sign`]
    /// refuses a longer `exp`, and retired keys stay published this long.
    pub max_token_lifetime: Duration,
    /// How long a replica trusts its cached keyset before re-reading it.
    pub cache_for: Duration,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::Rs256,
            rotation_interval: Some(Duration::from_secs(30 * 24 * 3600)),
            max_token_lifetime: Duration::from_secs(3600),
            cache_for: Duration::from_secs(30),
        }
    }
}

/// A keyset parsed for use.
#[derive(Debug)]
pub(crate) struct LoadedKeyset {
    pub active: LoadedKey,
    pub next: LoadedKey,
    pub retired: Vec<LoadedKey>,
    pub active_since: DateTime<Utc>,
    /// A digest of the stored keyset this was parsed from
    /// ([`source_digest`]): a re-read that finds the same document keeps
    /// this parse instead of decoding every key again.
    source: [u8; 32],
}

/// SHA-256 of the keyset document as serialised: equal digests, equal
/// keys and metadata.
fn source_digest(ks: &Keyset) -> Result<[u8; 32], TokenError> {
    use sha2::Digest as _;
    let doc = serde_json::to_vec(ks).map_err(|e| TokenError::Key(format!("keyset digest: {e}")))?;
    Ok(sha2::Sha256::digest(&doc).into())
}

impl LoadedKeyset {
    fn load(ks: &Keyset, source: [u8; 32]) -> Result<Self, TokenError> {
        Ok(Self {
            active: LoadedKey::load(&ks.active, true)?,
            next: LoadedKey::load(&ks.next, false)?,
            retired: ks
                .retired
                .iter()
                .map(|k| LoadedKey::load(k, false))
                .collect::<Result<_, _>>()?,
            active_since: ks.active.activated_at.unwrap_or(ks.active.created_at),
            source,
        })
    }

    /// Keys published at `now` (unix seconds): active, next, and retired keys
    /// whose grace period has not ended.
    pub(crate) fn published(&self, now: i64) -> impl Iterator<Item = &LoadedKey> {
        [&self.active, &self.next].into_iter().chain(
            self.retired
                .iter()
                .filter(move |k| k.published_until.is_some_and(|t| t.timestamp() > now)),
        )
    }

    /// The published key named `kid`.
    pub(crate) fn find(&self, kid: &str, now: i64) -> Option<&LoadedKey> {
        self.published(now).find(|k| k.kid == kid)
    }
}

pub(crate) fn keyset_key() -> Key {
    Key::global("keys", "signing")
}

fn lock_key() -> Key {
    Key::global("keys", "signing-rotation-lock")
}

/// The rotation lock outlives no crashed replica by more than this.
const LOCK_TTL: Duration = Duration::from_secs(30);

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Generates off the async workers: RSA generation takes a noticeable while.
async fn generate(alg: SigningAlgorithm, now: DateTime<Utc>) -> Result<StoredKey, TokenError> {
    tokio::task::spawn_blocking(move || StoredKey::generate(alg, now))
        .await
        .map_err(|e| TokenError::Key(format!("key generation task: {e}")))?
}

/// A public document served as is: its bytes, serialised once, and a
/// strong `ETag` (a digest of the bytes) for conditional requests.
#[derive(Debug, Clone)]
pub struct PublishedDoc {
    /// The JSON body.
    pub body: bytes::Bytes,
    /// `"<base64url of the first 16 bytes of SHA-256(body)>"`, quotes included.
    pub etag: String,
}

impl PublishedDoc {
    /// Serialises `doc` and computes its `ETag`.
    pub fn new(doc: &Value) -> Self {
        use sha2::Digest as _;
        let body = bytes::Bytes::from(doc.to_string());
        let digest = sha2::Sha256::digest(&body);
        let etag = format!("\"{}\"", super::b64(digest.get(..16).unwrap_or_default()));
        Self { body, etag }
    }
}

/// The JWKS document as last serialised, and what it was built from: the
/// keyset snapshot (by identity) and the instant the published set changes
/// next (a retired key's grace period ends).
#[derive(Debug)]
struct JwksCache {
    keyset: Arc<LoadedKeyset>,
    valid_until: i64,
    doc: Arc<PublishedDoc>,
}

/// The parsed keyset, and when it was last read from the store.
#[derive(Debug)]
struct Cached {
    keyset: Arc<LoadedKeyset>,
    read_at: DateTime<Utc>,
}

/// Owns the provider's signing keys. Cheap to share behind an `Arc`.
pub struct KeyManager {
    store: SharedStore,
    clock: SharedClock,
    config: KeyConfig,
    cache: Mutex<Cached>,
    /// The one re-read of the keyset in flight.
    rereading: Flight,
    jwks: Mutex<Option<JwksCache>>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A snapshot of the active key, for callers that must know the algorithm
/// before signing (`at_hash`, `c_hash`) and need it to stay the same key.
pub struct Signer {
    keyset: Arc<LoadedKeyset>,
    clock: SharedClock,
    max_token_lifetime: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.keyset.active.kid)
            .field("alg", &self.keyset.active.alg)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The algorithm this signer signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.keyset.active.alg
    }

    /// The `kid` this signer puts in the header.
    pub fn kid(&self) -> &str {
        &self.keyset.active.kid
    }

    /// Signs `claims` as a compact JWS with header `alg`, `kid` and `typ`.
    /// `claims` must contain a numeric `exp` within the maximum lifetime.
    pub fn sign<C: serde::Serialize>(&self, typ: &str, claims: &C) -> Result<String, TokenError> {
        jwt::sign(
            &self.keyset.active,
            typ,
            claims,
            self.clock.unix(),
            self.max_token_lifetime,
        )
    }
}

impl KeyManager {
    /// Loads the shared keyset, creating it if no replica has yet.
    pub async fn init(store: SharedStore, clock: SharedClock, config: KeyConfig) -> Result<Self, TokenError> {
        super::openssl_provider::install();
        let ks = load_or_create(&store, &clock, config.algorithm).await?;
        let loaded = LoadedKeyset::load(&ks, source_digest(&ks)?)?;
        tracing::info!(kid = %loaded.active.kid, alg = loaded.active.alg.as_str(), "signing keys loaded");
        Ok(Self {
            cache: Mutex::new(Cached {
                keyset: Arc::new(loaded),
                read_at: clock.now(),
            }),
            store,
            clock,
            config,
            rereading: Flight::new(),
            jwks: Mutex::new(None),
        })
    }

    /// The cached keyset and when it was read.
    fn cached(&self) -> (Arc<LoadedKeyset>, DateTime<Utc>) {
        // The guarded value is swapped in one step; a poisoned lock cannot
        // hold a half-written keyset.
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.keyset.clone(), c.read_at)
    }

    /// Caches `ks`, read from the store just now. A document equal to the
    /// cached one keeps its parsed keys (and with them the serialised
    /// JWKS): decoding a PKCS#8 key costs OpenSSL 3 about 0.6 ms.
    fn install(&self, ks: &Keyset) -> Result<Arc<LoadedKeyset>, TokenError> {
        let source = source_digest(ks)?;
        let (held, _) = self.cached();
        let keyset = if held.source == source {
            held
        } else {
            Arc::new(LoadedKeyset::load(ks, source)?)
        };
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Cached {
            keyset: keyset.clone(),
            read_at: self.clock.now(),
        };
        Ok(keyset)
    }

    /// The keyset, re-read from the store once the cache is older than
    /// `cache_for` (or the clock went backwards past the read).
    ///
    /// One caller re-reads; the callers that find the cache stale while it
    /// does keep using the cached keyset, for at most another `cache_for`,
    /// instead of each reading and parsing the same document (under load,
    /// every request in flight when the cache went stale did, and parsing
    /// stalled the worker for tens of milliseconds every `cache_for`).
    async fn current(&self) -> Result<Arc<LoadedKeyset>, TokenError> {
        let (keyset, read_at) = self.cached();
        let now = self.clock.now();
        let within = |periods: i32| {
            now >= read_at
                && to_chrono(self.config.cache_for)
                    .checked_mul(periods)
                    .and_then(|d| read_at.checked_add_signed(d))
                    .is_none_or(|until| now < until)
        };
        if within(1) {
            return Ok(keyset);
        }
        let turn = self.rereading.take();
        if turn.is_none() && within(2) {
            return Ok(keyset);
        }
        let ks = load_or_create(&self.store, &self.clock, self.config.algorithm).await?;
        self.install(&ks)
    }

    /// A snapshot of the active key to sign with.
    pub async fn signer(&self) -> Result<Signer, TokenError> {
        Ok(Signer {
            keyset: self.current().await?,
            clock: self.clock.clone(),
            max_token_lifetime: self.config.max_token_lifetime,
        })
    }

    /// Signs `claims` with the active key; `typ` is `JWT` for ID tokens and
    /// `at+jwt` for RFC 9068 access tokens.
    pub async fn sign<C: serde::Serialize + Sync>(&self, typ: &str, claims: &C) -> Result<String, TokenError> {
        self.signer().await?.sign(typ, claims)
    }

    /// Verifies a token this provider signed and returns its claims.
    /// `aud` and everything beyond `iss`/`exp`/`nbf` is the caller's to check.
    pub async fn verify<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        expected_typ: &str,
        issuer: &str,
    ) -> Result<C, TokenError> {
        let keyset = self.current().await?;
        jwt::verify(
            &keyset,
            token,
            expected_typ,
            issuer,
            self.clock.unix(),
            jwt::TimeCheck::Enforce,
        )
    }

    /// Verifies an `id_token_hint` (typ `JWT`): like [`KeyManager::verify`]
    /// but an expired or not-yet-valid token is accepted, as OIDC
    /// RP-Initiated Logout allows. Key, algorithm, signature, `typ` and `iss`
    /// are still enforced, and a token whose retired key is no longer
    /// published still fails with `token.unknown_kid`.
    pub async fn verify_id_token_hint<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
    ) -> Result<C, TokenError> {
        let keyset = self.current().await?;
        jwt::verify(&keyset, token, "JWT", issuer, self.clock.unix(), jwt::TimeCheck::Skip)
    }

    /// The algorithms of the keys that sign now or will sign next, for the
    /// discovery document's `id_token_signing_alg_values_supported`.
    pub async fn signing_algorithms(&self) -> Result<Vec<SigningAlgorithm>, TokenError> {
        let keyset = self.current().await?;
        let mut algs = vec![keyset.active.alg];
        if keyset.next.alg != keyset.active.alg {
            algs.push(keyset.next.alg);
        }
        Ok(algs)
    }

    /// The JWKS document: `{"keys": [...]}` with public keys only.
    pub async fn jwks(&self) -> Result<Value, TokenError> {
        let keyset = self.current().await?;
        Ok(jwks_of(&keyset, self.clock.unix()))
    }

    /// The JWKS document serialised, as `/jwks` serves it: built once per
    /// keyset read (every `cache_for`, and at every rotation) and again
    /// when a retired key stops being published, so a request only clones
    /// a reference.
    pub async fn jwks_published(&self) -> Result<Arc<PublishedDoc>, TokenError> {
        let keyset = self.current().await?;
        let now = self.clock.unix();
        let mut cache = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if Arc::ptr_eq(&c.keyset, &keyset) && now < c.valid_until {
                return Ok(c.doc.clone());
            }
        }
        // The published set changes when the first still-published retired
        // key's grace period ends.
        let valid_until = keyset
            .retired
            .iter()
            .filter_map(|k| k.published_until.map(|t| t.timestamp()))
            .filter(|t| *t > now)
            .min()
            .unwrap_or(i64::MAX);
        let doc = Arc::new(PublishedDoc::new(&jwks_of(&keyset, now)));
        *cache = Some(JwksCache {
            keyset,
            valid_until,
            doc: doc.clone(),
        });
        Ok(doc)
    }

    /// Rotates now: next becomes active, active is retired, a new next is
    /// generated, expired retired keys are dropped. Fails with
    /// [`TokenError::RotationInProgress`] if another replica is rotating.
    pub async fn rotate(&self) -> Result<(), TokenError> {
        let token = self.lock().await?.ok_or(TokenError::RotationInProgress)?;
        let result = async {
            let ks = load_or_create(&self.store, &self.clock, self.config.algorithm).await?;
            self.rotate_locked(ks).await
        }
        .await;
        self.unlock(&token).await;
        result
    }

    /// Rotates if the active key is older than `rotation_interval`. Returns
    /// whether this call rotated. Safe to run on every replica: the lock and
    /// the re-read under it make exactly one of them rotate.
    pub async fn rotate_if_due(&self) -> Result<bool, TokenError> {
        let Some(interval) = self.config.rotation_interval else {
            return Ok(false);
        };
        // An interval past the end of the calendar never comes due (rather
        // than panicking in the background task that asks every hour).
        let due = |since: DateTime<Utc>| {
            since
                .checked_add_signed(to_chrono(interval))
                .is_some_and(|at| self.clock.now() >= at)
        };
        if !due(self.current().await?.active_since) {
            return Ok(false);
        }
        let Some(token) = self.lock().await? else {
            return Ok(false);
        };
        let result = async {
            let ks = load_or_create(&self.store, &self.clock, self.config.algorithm).await?;
            let since = ks.active.activated_at.unwrap_or(ks.active.created_at);
            if !due(since) {
                // Another replica rotated between our check and our lock.
                self.install(&ks)?;
                return Ok(false);
            }
            self.rotate_locked(ks).await.map(|()| true)
        }
        .await;
        self.unlock(&token).await;
        result
    }

    async fn rotate_locked(&self, ks: Keyset) -> Result<(), TokenError> {
        let now = self.clock.now();
        let new_next = generate(self.config.algorithm, now).await?;
        let mut retired: Vec<StoredKey> = ks
            .retired
            .into_iter()
            .filter(|k| k.publish_until.is_some_and(|t| t > now))
            .collect();
        let mut old = ks.active;
        old.retired_at = Some(now);
        // Other replicas keep signing with it until their cached keyset is
        // re-read: for up to `cache_for`, and up to another `cache_for`
        // while one re-read is in flight. A token one of them mints then
        // lives the maximum lifetime, and is accepted up to LEEWAY_SECS
        // after its exp.
        old.publish_until = Some(
            now + to_chrono(self.config.cache_for) * 2
                + to_chrono(self.config.max_token_lifetime)
                + chrono::Duration::seconds(jwt::LEEWAY_SECS),
        );
        retired.push(old);
        let mut active = ks.next;
        active.activated_at = Some(now);
        let new = Keyset {
            active,
            next: new_next,
            retired,
        };
        self.store.put_json(&keyset_key(), &new, None).await?;
        let loaded = self.install(&new)?;
        tracing::info!(kid = %loaded.active.kid, next = %loaded.next.kid, "signing keys rotated");
        Ok(())
    }

    /// Takes the rotation lock; `None` if another replica holds it.
    async fn lock(&self) -> Result<Option<String>, TokenError> {
        let token = super::random_token(16);
        let won = self
            .store
            .put_if_absent(&lock_key(), token.as_bytes(), Some(LOCK_TTL))
            .await?;
        Ok(won.then_some(token))
    }

    /// Releases the lock if it is still ours. Not atomic (the store has no
    /// compare-and-delete), but rotation finishes far inside the TTL, and a
    /// failed release only delays the next rotation until the TTL ends.
    async fn unlock(&self, token: &str) {
        match self.store.get(&lock_key()).await {
            Ok(Some(v)) if v == token.as_bytes() => {
                if let Err(e) = self.store.delete(&lock_key()).await {
                    tracing::warn!(error = %e, "rotation lock not released");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rotation lock not released"),
        }
    }
}

/// `{"keys": [...]}`: the keys of `keyset` published at `now`.
fn jwks_of(keyset: &LoadedKeyset, now: i64) -> Value {
    let keys: Vec<Value> = keyset.published(now).map(|k| k.public.to_json(&k.kid, k.alg)).collect();
    serde_json::json!({ "keys": keys })
}

/// Reads the keyset, or creates it. Of replicas racing to create, one write
/// wins (`put_if_absent`) and the others adopt it.
async fn load_or_create(store: &SharedStore, clock: &SharedClock, alg: SigningAlgorithm) -> Result<Keyset, TokenError> {
    if let Some(ks) = store.get_json::<Keyset>(&keyset_key()).await? {
        return Ok(ks);
    }
    let now = clock.now();
    let mut active = generate(alg, now).await?;
    active.activated_at = Some(now);
    let next = generate(alg, now).await?;
    let ks = Keyset {
        active,
        next,
        retired: Vec::new(),
    };
    if store.put_json_if_absent(&keyset_key(), &ks, None).await? {
        tracing::info!(kid = %ks.active.kid, "signing keyset created");
        return Ok(ks);
    }
    store
        .get_json::<Keyset>(&keyset_key())
        .await?
        .ok_or_else(|| TokenError::Key("keyset vanished after a lost creation race".into()))
}
