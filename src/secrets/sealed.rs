//! [`SealedStore`]: the store as every other part sees it, with the secret
//! fields of some record kinds sealed at rest.
//!
//! Which fields are sealed is decided here, by the record's store key, so
//! every read and write path (admin API, portal, tenant files, imports,
//! metadata refresh, key rotation, the upstream refresh) goes through it:
//!
//! | record (store key) | sealed fields |
//! | --- | --- |
//! | a connection (`t:<tenant>:config` / `connection:<id>`) | `client_secret`, `sp_private_key_pem`, `sp_next_key.private_key_pem`, `sp_previous_key.private_key_pem` |
//! | an upstream session (`t:<tenant>:sso` / `upstream:<sid>`) | `refresh_token` |
//! | the signing keyset (`g:keys` / `signing`) | `active.private_pem`, `next.private_pem`, `retired[].private_pem` |
//! | a tenant's hook (`t:<tenant>:hooks` / `<kind>`) | `secret`, `url_query` (its URL's query, which may be a credential) |
//! | an MFA enrolment (`t:<tenant>:mfa` / `enrolment:<sub>`, `pending:<sub>`) | `secret` (the TOTP seed) |
//! | a waiting custom challenge (`t:<tenant>:local` / `challenge:<hash>`) | `private` (the hook's private parameters) |
//!
//! Each field is one envelope whose context is `<tag>/<name>#<field path>`,
//! so a sealed value only opens in the record and field it was written to.
//! The rest of a record stays readable JSON (for operators and exports).
//!
//! Reads hand out the opened JSON; writes seal whatever the caller wrote.
//! `compare_and_put` compares the caller's expected (opened) bytes with the
//! opening of what is stored, then swaps the *stored* bytes atomically, so
//! the registries' lost-update protection holds unchanged.
//!
//! A value stored before encryption was configured (a plain string where an
//! envelope belongs) is still read, unless `secrets.refuse_plaintext` is
//! set; the next write of the record, or `portcullis keys rewrap`, seals it.

use super::{Cipher, SecretsError};
use crate::store::{
    IfChanged, Key, RateDecision, Read, Rotate, SharedStore, Store, StoreError, StreamEntry, Taken, Write,
};
use async_trait::async_trait;
use serde_json::Value;
use std::time::Duration;

/// A field path inside a record's JSON; `*` walks every array element.
type FieldPath = &'static [&'static str];

const CONNECTION_FIELDS: &[FieldPath] = &[
    &["client_secret"],
    &["sp_private_key_pem"],
    &["sp_next_key", "private_key_pem"],
    &["sp_previous_key", "private_key_pem"],
];
const UPSTREAM_SESSION_FIELDS: &[FieldPath] = &[&["refresh_token"]];
const HOOK_FIELDS: &[FieldPath] = &[&["secret"], &["url_query"]];
const MFA_ENROLMENT_FIELDS: &[FieldPath] = &[&["secret"]];
const CHALLENGE_FIELDS: &[FieldPath] = &[&["private"]];
const KEYSET_FIELDS: &[FieldPath] = &[
    &["active", "private_pem"],
    &["next", "private_pem"],
    &["retired", "*", "private_pem"],
];

/// The sealed fields of the record at `key`, if it is of a kind that holds
/// secrets.
pub fn sealed_fields(key: &Key) -> Option<&'static [FieldPath]> {
    let (tag, name) = (key.tag(), key.name());
    if tag.starts_with("t:") && tag.ends_with(":config") && name.starts_with("connection:") {
        Some(CONNECTION_FIELDS)
    } else if tag.starts_with("t:") && tag.ends_with(":sso") && name.starts_with("upstream:") {
        Some(UPSTREAM_SESSION_FIELDS)
    } else if tag == "g:keys" && name == "signing" {
        Some(KEYSET_FIELDS)
    } else if tag.starts_with("t:") && tag.ends_with(":hooks") {
        Some(HOOK_FIELDS)
    } else if tag.starts_with("t:")
        && tag.ends_with(":mfa")
        && (name.starts_with("enrolment:") || name.starts_with("pending:"))
    {
        Some(MFA_ENROLMENT_FIELDS)
    } else if tag.starts_with("t:") && tag.ends_with(":local") && name.starts_with("challenge:") {
        Some(CHALLENGE_FIELDS)
    } else {
        None
    }
}

fn context(key: &Key, path: FieldPath) -> String {
    format!("{}/{}#{}", key.tag(), key.name(), path.join("."))
}

/// A hook record written before its URL's query had a sealed field of its
/// own keeps the query (which may be a credential, Azure Functions'
/// `?code=`) in `url`, in plaintext. Such a query counts as a plaintext
/// secret ([`census`], `secrets.refuse_plaintext`), and any write of the
/// record, `portcullis keys rewrap` included, moves it to `url_query`,
/// where it is sealed (`hooks::StoredHook` reads both shapes alike).
fn legacy_url_query(fields: &[FieldPath], doc: &Value) -> Option<(String, String)> {
    if fields != HOOK_FIELDS || doc.get("url_query").is_some_and(|q| !q.is_null()) {
        return None;
    }
    let (base, query) = doc.get("url")?.as_str()?.split_once('?')?;
    Some((base.to_owned(), query.to_owned()))
}

/// Moves a legacy record's URL query to `url_query` ([`legacy_url_query`]).
fn lift_url_query(fields: &[FieldPath], doc: &mut Value) {
    if let (Some((base, query)), Some(o)) = (legacy_url_query(fields, doc), doc.as_object_mut()) {
        o.insert("url".into(), Value::String(base));
        o.insert("url_query".into(), Value::String(query));
    }
}

/// Calls `f` on every string at `path` under the record `value`.
///
/// The record must be an object; on the way, each step must find an
/// object (an array where the path says `*`), or null or nothing (an
/// optional part left out); at the end a string, null or nothing. Anything
/// else is refused ([`SecretsError::Misshapen`], naming `ctx`) rather than
/// skipped: serde reads a struct from a JSON array as well, so a record
/// written in array form would otherwise carry a plaintext secret past the
/// sealing, whatever `secrets.refuse_plaintext` says.
fn each_string(
    value: &mut Value,
    path: &[&str],
    ctx: &str,
    f: &mut dyn FnMut(&mut String) -> Result<(), SecretsError>,
) -> Result<(), SecretsError> {
    if !value.is_object() {
        return Err(misshapen(ctx, value));
    }
    walk(value, path, ctx, f)
}

fn walk(
    value: &mut Value,
    path: &[&str],
    ctx: &str,
    f: &mut dyn FnMut(&mut String) -> Result<(), SecretsError>,
) -> Result<(), SecretsError> {
    match (value, path.split_first()) {
        (Value::Null, _) => Ok(()),
        (Value::String(s), None) => f(s),
        (Value::Array(items), Some((&"*", rest))) => {
            for item in items {
                walk(item, rest, ctx, f)?;
            }
            Ok(())
        }
        (Value::Object(map), Some((name, rest))) if *name != "*" => match map.get_mut(*name) {
            Some(v) => walk(v, rest, ctx, f),
            None => Ok(()),
        },
        (other, _) => Err(misshapen(ctx, other)),
    }
}

fn misshapen(ctx: &str, found: &Value) -> SecretsError {
    SecretsError::Misshapen {
        at: ctx.to_owned(),
        found: match found {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        },
    }
}

/// What `keys rewrap` did to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrapped {
    /// No record at the key.
    Absent,
    /// Every secret field was already sealed under the current key.
    Current,
    /// `fields` fields were sealed again under the current key (or sealed
    /// for the first time, from plaintext).
    Rewrapped {
        /// How many fields changed.
        fields: usize,
    },
}

/// How the sealed fields of one stored record stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldCensus {
    /// Plaintext values (stored before encryption was configured).
    pub plaintext: usize,
    /// Envelopes by key id.
    pub by_key: std::collections::BTreeMap<String, usize>,
    /// 1 when the record is not JSON, or holds something other than an
    /// object or a string on the path of a sealed field (every read of it
    /// is refused, `secrets.malformed`); its fields are not counted.
    pub malformed: usize,
}

/// Counts the sealed fields of the stored bytes `raw` at `key` by state,
/// without opening anything (exports and reports).
pub fn census(key: &Key, raw: &[u8]) -> FieldCensus {
    let mut out = FieldCensus::default();
    let Some(fields) = sealed_fields(key) else {
        return out;
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(raw) else {
        out.malformed = 1;
        return out;
    };
    let mut found = Vec::new();
    for path in fields {
        let walked = each_string(&mut doc, path, &context(key, path), &mut |s| {
            found.push(super::envelope_key_id(s).map(str::to_owned));
            Ok(())
        });
        if walked.is_err() {
            out.malformed = 1;
            return out;
        }
    }
    for kid in found {
        match kid {
            Some(kid) => *out.by_key.entry(kid).or_default() += 1,
            None => out.plaintext += 1,
        }
    }
    if legacy_url_query(fields, &doc).is_some() {
        out.plaintext += 1;
    }
    out
}

/// How many opened configuration records (connections, the keyset) are
/// kept, so that the reads on every token use (`Directory::active` reads
/// the connection) do not parse and decrypt the same bytes again. Keyed by
/// configuration, so bounded by the number of connections; cleared when full.
const OPENED_CACHE: usize = 1024;

/// The store with secret fields sealed at rest (see the module docs).
pub struct SealedStore {
    inner: SharedStore,
    cipher: Option<Cipher>,
    refuse_plaintext: bool,
    /// Stored bytes and their opening, per configuration record: reused
    /// only while the stored bytes are exactly the same.
    opened: std::sync::Mutex<OpenedCache>,
}

/// Per record key: the stored bytes and their opening.
type OpenedCache = std::collections::HashMap<Key, (Vec<u8>, Vec<u8>)>;

impl SealedStore {
    /// Wraps `inner`. `cipher: None` stores secrets in plaintext (only when
    /// the operator allowed it); envelopes found then cannot be opened.
    /// `refuse_plaintext` refuses to read a secret field that is not sealed.
    pub fn new(inner: SharedStore, cipher: Option<Cipher>, refuse_plaintext: bool) -> Self {
        Self {
            inner,
            cipher,
            refuse_plaintext,
            opened: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The store underneath, holding the sealed bytes (exports, restores).
    pub fn raw(&self) -> &SharedStore {
        &self.inner
    }

    /// The cipher, when secrets are sealed.
    pub fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_ref()
    }

    fn failed(key: &Key, e: SecretsError) -> StoreError {
        // The tag names the tenant; no value is logged.
        tracing::error!(reason = e.code(), tag = key.tag(), name = key.name(), error = %e, "a secret at rest could not be used");
        StoreError::Corrupt(format!("{}: {e}", e.code()))
    }

    /// The stored bytes `raw` with every sealed field opened (from the
    /// cache when these exact bytes were opened before).
    fn open(&self, key: &Key, raw: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let Some(fields) = sealed_fields(key) else {
            return Ok(raw);
        };
        // Upstream sessions are many and read rarely: not cached.
        let cacheable = fields != UPSTREAM_SESSION_FIELDS;
        if cacheable {
            if let Ok(cache) = self.opened.lock() {
                if let Some((stored, opened)) = cache.get(key) {
                    if *stored == raw {
                        return Ok(opened.clone());
                    }
                }
            }
        }
        let opened = self.open_fields(key, fields, &raw)?;
        if cacheable {
            if let Ok(mut cache) = self.opened.lock() {
                if cache.len() >= OPENED_CACHE {
                    cache.clear();
                }
                cache.insert(key.clone(), (raw, opened.clone()));
            }
        }
        Ok(opened)
    }

    fn open_fields(&self, key: &Key, fields: &[FieldPath], raw: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut doc: Value = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if self.refuse_plaintext && legacy_url_query(fields, &doc).is_some() {
            return Err(Self::failed(
                key,
                SecretsError::Config(format!(
                    "a plaintext URL query at {}/{}#url is refused (secrets.refuse_plaintext); run `portcullis keys rewrap` with it off",
                    key.tag(),
                    key.name()
                )),
            ));
        }
        let mut changed = false;
        for path in fields {
            let ctx = context(key, path);
            each_string(&mut doc, path, &ctx, &mut |s| {
                if super::is_envelope(s) {
                    let cipher = self.cipher.as_ref().ok_or(SecretsError::NoKey)?;
                    let plain = cipher.open(s, &ctx)?;
                    *s = String::from_utf8(plain).map_err(|_| SecretsError::Malformed("not UTF-8 inside"))?;
                    changed = true;
                } else if self.refuse_plaintext {
                    return Err(SecretsError::Config(format!(
                        "a plaintext value at {ctx} is refused (secrets.refuse_plaintext); run `portcullis keys rewrap` with it off"
                    )));
                }
                Ok(())
            })
            .map_err(|e| Self::failed(key, e))?;
        }
        if !changed {
            // Byte-identical when nothing was sealed (legacy records), so a
            // compare-and-set against these bytes behaves as before.
            return Ok(raw.to_vec());
        }
        serde_json::to_vec(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// `value` with every sealed field sealed under the current key.
    fn seal(&self, key: &Key, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (Some(fields), Some(cipher)) = (sealed_fields(key), &self.cipher) else {
            return Ok(value.to_vec());
        };
        let mut doc: Value = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        lift_url_query(fields, &mut doc);
        for path in fields {
            let ctx = context(key, path);
            each_string(&mut doc, path, &ctx, &mut |s| {
                *s = cipher.seal(s.as_bytes(), &ctx)?;
                Ok(())
            })
            .map_err(|e| Self::failed(key, e))?;
        }
        serde_json::to_vec(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Checks that every sealed field of the stored bytes `raw` at `key`
    /// opens with the configured keys (restores check before writing).
    pub fn check(&self, key: &Key, raw: &[u8]) -> Result<(), StoreError> {
        self.open(key, raw.to_vec()).map(|_| ())
    }

    /// Seals every secret field of the record at `key` under the current
    /// key (plaintext ones too), unless all already are. Safe while
    /// gateways run: a compare-and-set against the bytes read, read again
    /// when a concurrent writer won. `ttl` tells from the bytes read which
    /// TTL to write the record with (`None`: persistent), so a transient
    /// record keeps its remaining lifetime.
    pub async fn rewrap(
        &self,
        key: &Key,
        ttl: &(dyn Fn(&[u8]) -> Option<Duration> + Sync),
    ) -> Result<Rewrapped, StoreError> {
        let Some(cipher) = &self.cipher else {
            return Err(Self::failed(key, SecretsError::NoKey));
        };
        for _ in 0..8 {
            let Some(raw) = self.inner.get(key).await? else {
                return Ok(Rewrapped::Absent);
            };
            // Opened first, so a record that does not open (misshapen,
            // tampered with, under a key not held) is reported, never
            // counted as current.
            let opened = self.open(key, raw.clone())?;
            let census = census(key, &raw);
            let stale = census.plaintext
                + census
                    .by_key
                    .iter()
                    .filter(|(kid, _)| kid.as_str() != cipher.current_id())
                    .map(|(_, n)| n)
                    .sum::<usize>();
            if stale == 0 {
                return Ok(Rewrapped::Current);
            }
            let sealed = self.seal(key, &opened)?;
            if self.inner.compare_and_put(key, &raw, &sealed, ttl(&raw)).await? {
                return Ok(Rewrapped::Rewrapped { fields: stale });
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}/{} kept changing during rewrap; run it again",
            key.tag(),
            key.name()
        )))
    }
}

#[async_trait]
impl Store for SealedStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        match self.inner.get(key).await? {
            Some(raw) => self.open(key, raw).map(Some),
            None => Ok(None),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        // Whether a value is there needs no unsealing.
        self.inner.exists(key).await
    }

    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        // Of the sealed bytes as stored: any write (a new nonce included)
        // changes it, and nothing needs opening.
        self.inner.fingerprint(key).await
    }

    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        // The fingerprint is of the sealed bytes as stored (as
        // `fingerprint`); only a value answered is opened.
        match self.inner.get_if_changed(key, known).await? {
            IfChanged::Value { value, fingerprint } => Ok(IfChanged::Value {
                value: self.open(key, value)?,
                fingerprint,
            }),
            other => Ok(other),
        }
    }

    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // Sealed as `put` seals it; the answer opened as `get` opens it.
        let sealed = self.seal(key, value)?;
        match self.inner.put_then_get(key, &sealed, ttl, read).await? {
            Some(raw) => self.open(read, raw).map(Some),
            None => Ok(None),
        }
    }

    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let answers = self.inner.read_many(keys).await?;
        // Values are opened as `get` opens them; a presence needs no unsealing.
        keys.iter()
            .zip(answers)
            .map(|((key, how), answer)| match (how, answer) {
                (Read::Value, Some(raw)) => self.open(key, raw).map(Some),
                (_, answer) => Ok(answer),
            })
            .collect()
    }

    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let sealed = self.seal(key, value)?;
        self.inner.put(key, &sealed, ttl).await
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        let sealed = self.seal(key, value)?;
        self.inner.put_if_absent(key, &sealed, ttl).await
    }

    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        if sealed_fields(key).is_none() {
            return self.inner.compare_and_put(key, expected, value, ttl).await;
        }
        // The caller read opened bytes; the store holds sealed ones (with
        // random nonces). Compare openings, swap the stored bytes: still one
        // atomic compare-and-set underneath.
        let Some(raw) = self.inner.get(key).await? else {
            return Ok(false);
        };
        if self.open(key, raw.clone())? != expected {
            return Ok(false);
        }
        let sealed = self.seal(key, value)?;
        self.inner.compare_and_put(key, &raw, &sealed, ttl).await
    }

    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        match self.inner.take(key).await? {
            Some(raw) => self.open(key, raw).map(Some),
            None => Ok(None),
        }
    }

    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        match self
            .inner
            .take_and_mark(key, marker_key, marker_value, marker_ttl)
            .await?
        {
            Taken::Value(raw) => self.open(key, raw).map(Taken::Value),
            other => Ok(other),
        }
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }

    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.inner.set_add(key, member, ttl).await
    }

    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.inner.set_remove(key, member).await
    }

    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        self.inner.set_members(key).await
    }

    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError> {
        self.inner.set_sample(key, count).await
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        self.inner.incr(key, ttl).await
    }

    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        self.inner.list_push_capped(key, value, max_len).await
    }

    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.list_range(key, start, count).await
    }

    // Streams hold audit events, which never carry a secret (`audit::redact`).
    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        self.inner.stream_add(key, value, max_len).await
    }
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        self.inner
            .stream_add_classed(key, class, value, class_max, max_len)
            .await
    }

    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_range(key, after, count).await
    }

    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_rev_range(key, before, count).await
    }

    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.inner.stream_len(key).await
    }

    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        self.inner.stream_group_create(key, group).await
    }

    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_group_read(key, group, consumer, count).await
    }

    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.stream_ack(key, group, id).await
    }

    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner.stream_autoclaim(key, group, consumer, min_idle, count).await
    }

    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        self.inner.rate_limit(key, limit, window).await
    }

    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        self.inner.rate_limit_chain(first, second, window).await
    }

    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        // The guard's fingerprint is of the sealed bytes as stored (as
        // `fingerprint`): nothing to open.
        self.inner.rate_limit_guarded(guard, limits, window).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn read_many_if_changed(
        &self,
        keys: &[(&Key, crate::store::Probe<'_>)],
    ) -> Result<Vec<crate::store::Probed>, StoreError> {
        use crate::store::Probed;
        let answers = self.inner.read_many_if_changed(keys).await?;
        // As `get_if_changed`: the fingerprint is of the sealed bytes as
        // stored, and only a value answered is opened; presence and set
        // members are never sealed.
        keys.iter()
            .zip(answers)
            .map(|((key, _), answer)| match answer {
                Probed::Read(IfChanged::Value { value, fingerprint }) => Ok(Probed::Read(IfChanged::Value {
                    value: self.open(key, value)?,
                    fingerprint,
                })),
                other => Ok(other),
            })
            .collect()
    }

    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        // Each value sealed as `put` seals it. A required value of a sealed
        // record is compared as `compare_and_put` compares it: the caller's
        // opened bytes against the opening of what is stored, then the
        // stored bytes are required, so the whole stays one atomic
        // compare-and-set underneath.
        let mut sealed: Vec<Option<Vec<u8>>> = Vec::with_capacity(writes.len());
        for w in writes {
            sealed.push(match w {
                Write::Put { key, value, .. } => Some(self.seal(key, value)?),
                Write::RequireValue { key, value } if sealed_fields(key).is_some() => {
                    let Some(raw) = self.inner.get(key).await? else {
                        return Ok(false);
                    };
                    if self.open(key, raw.clone())? != *value {
                        return Ok(false);
                    }
                    Some(raw)
                }
                Write::SetAdd { .. }
                | Write::Delete { .. }
                | Write::RequireAbsent { .. }
                | Write::RequireValue { .. } => None,
            });
        }
        let forwarded: Vec<Write<'_>> = writes
            .iter()
            .zip(&sealed)
            .map(|(w, s)| match (w, s) {
                (Write::Put { key, ttl, .. }, Some(value)) => Write::Put {
                    key,
                    value: value.as_slice(),
                    ttl: *ttl,
                },
                (Write::RequireValue { key, .. }, Some(stored)) => Write::RequireValue {
                    key,
                    value: stored.as_slice(),
                },
                (other, _) => *other,
            })
            .collect();
        self.inner.write_many(&forwarded).await
    }

    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        // The next value sealed as `put` seals it; the taken one opened as
        // `take_and_mark` opens it (a marker is never sealed).
        let next = self.seal(r.next_key, r.next_value)?;
        let forwarded = Rotate {
            next_value: next.as_slice(),
            ..*r
        };
        match self.inner.rotate(&forwarded).await? {
            Taken::Value(raw) => self.open(r.key, raw).map(Taken::Value),
            other => Ok(other),
        }
    }

    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        let Some((raw, answers)) = self.inner.read_through(pointer, reads).await? else {
            return Ok(None);
        };
        // Each value opened as `get` opens it, the pointer's too.
        let keys = crate::store::through_keys(pointer, &raw, reads)?;
        let value = self.open(pointer, raw)?;
        let answers = keys
            .iter()
            .zip(reads)
            .zip(answers)
            .map(|((key, (_, how)), answer)| match (how, answer) {
                (Read::Value, Some(raw)) => self.open(key, raw).map(Some),
                (_, answer) => Ok(answer),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((value, answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::secrets::StaticKeys;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    fn keys(text: &str) -> Cipher {
        Cipher::new(Arc::new(StaticKeys::parse(text, "test").unwrap()))
    }
    const K1: &str = "k1 = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n";
    const K12: &str =
        "k1 = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\nk2 = AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\ncurrent = k2\n";

    fn conn_key(t: &str) -> Key {
        Key::tenant(t, "config", "connection:okta")
    }

    fn raw_store() -> SharedStore {
        Arc::new(MemoryStore::new(Arc::new(ManualClock::at(
            chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ))))
    }

    #[tokio::test]
    async fn secret_fields_are_sealed_and_the_rest_stays_readable() {
        let raw = raw_store();
        let s = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        let doc = serde_json::json!({"id": "okta", "kind": "oidc", "client_secret": "s3cr3t",
            "sp_next_key": {"private_key_pem": "-----BEGIN PRIVATE KEY-----", "certificate_pem": "C"}});
        s.put(&conn_key("acme"), &serde_json::to_vec(&doc).unwrap(), None)
            .await
            .unwrap();
        let stored = String::from_utf8(raw.get(&conn_key("acme")).await.unwrap().unwrap()).unwrap();
        assert!(!stored.contains("s3cr3t") && !stored.contains("BEGIN"), "{stored}");
        assert!(stored.contains("\"certificate_pem\":\"C\"") && stored.contains("pcx1.k1."));
        let back: Value = serde_json::from_slice(&s.get(&conn_key("acme")).await.unwrap().unwrap()).unwrap();
        assert_eq!(back, doc);
        // Other records are untouched.
        s.put(
            &Key::tenant("acme", "config", "tenant"),
            b"{\"client_secret\":\"x\"}",
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            raw.get(&Key::tenant("acme", "config", "tenant"))
                .await
                .unwrap()
                .unwrap(),
            b"{\"client_secret\":\"x\"}"
        );
    }

    #[tokio::test]
    async fn an_opening_is_reused_only_while_the_stored_bytes_are_the_same() {
        let raw = raw_store();
        let replica_a = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        let replica_b = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        let k = conn_key("acme");
        replica_a.put(&k, br#"{"client_secret":"one"}"#, None).await.unwrap();
        let first = replica_a.get(&k).await.unwrap().unwrap();
        assert_eq!(replica_a.get(&k).await.unwrap().unwrap(), first);
        // Another replica changes the record: the next read sees it.
        replica_b.put(&k, br#"{"client_secret":"two"}"#, None).await.unwrap();
        let now: Value = serde_json::from_slice(&replica_a.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(now["client_secret"], "two");
        // Tampered bytes are never served from the cache.
        let mut stored = raw.get(&k).await.unwrap().unwrap();
        let at = stored.len() - 10;
        stored[at] ^= 1;
        raw.put(&k, &stored, None).await.unwrap();
        assert!(replica_a.get(&k).await.is_err());
        raw.delete(&k).await.unwrap();
        assert!(replica_a.get(&k).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_sealed_value_moved_to_another_tenant_does_not_open() {
        let raw = raw_store();
        let s = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        s.put(&conn_key("acme"), br#"{"client_secret":"s3cr3t"}"#, None)
            .await
            .unwrap();
        let stolen = raw.get(&conn_key("acme")).await.unwrap().unwrap();
        raw.put(&conn_key("evil"), &stolen, None).await.unwrap();
        let e = s.get(&conn_key("evil")).await.unwrap_err();
        assert!(e.to_string().contains("secrets.refused"), "{e}");
    }

    #[tokio::test]
    async fn compare_and_put_compares_openings_and_swaps_atomically() {
        let s = SealedStore::new(raw_store(), Some(keys(K1)), false);
        let k = conn_key("acme");
        s.put(&k, br#"{"client_secret":"a","revision":1}"#, None).await.unwrap();
        let read = s.get(&k).await.unwrap().unwrap();
        assert!(s
            .compare_and_put(&k, &read, br#"{"client_secret":"b","revision":2}"#, None)
            .await
            .unwrap());
        // A second writer holding the old reading loses.
        assert!(!s
            .compare_and_put(&k, &read, br#"{"client_secret":"c","revision":2}"#, None)
            .await
            .unwrap());
        let now: Value = serde_json::from_slice(&s.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(now["client_secret"], "b");
    }

    /// serde reads a struct from a JSON array too: a keyset or a
    /// connection written in array form (or with an object where a sealed
    /// string belongs) would carry a plaintext private key past the
    /// sealing, even with `secrets.refuse_plaintext`. Such a record is
    /// refused with or without it (`secrets.malformed`, naming the field,
    /// never the value), counted as malformed, and never rewrapped; left
    /// out parts (null, absent) still read.
    #[tokio::test]
    async fn a_secret_in_array_form_is_refused() {
        const PEM: &str = "-----BEGIN PRIVATE KEY-----attacker";
        let raw = raw_store();
        let keyset = Key::global("keys", "signing");
        // No private key in it: nothing to open on the way to the misshapen part.
        let active = serde_json::json!({"kid": "k", "alg": "RS256", "created_at": "2026-01-01T00:00:00Z"});
        let cases: Vec<(Key, Value, &str)> = vec![
            (
                keyset.clone(),
                serde_json::json!({"active": ["evil", "RS256", PEM, "2026-01-01T00:00:00Z"], "next": active, "retired": []}),
                "g:keys/signing#active.private_pem holds an array",
            ),
            (
                keyset.clone(),
                serde_json::json!({"active": active, "next": active, "retired": [["evil", "RS256", PEM, "2026-01-01T00:00:00Z"]]}),
                "g:keys/signing#retired.*.private_pem holds an array",
            ),
            (
                keyset.clone(),
                serde_json::json!([["evil", "RS256", PEM, "2026-01-01T00:00:00Z"], active, []]),
                "g:keys/signing#active.private_pem holds an array",
            ),
            (
                conn_key("acme"),
                serde_json::json!({"id": "corp", "kind": "saml", "sp_next_key": [PEM, "CERT"]}),
                "t:acme:config/connection:okta#sp_next_key.private_key_pem holds an array",
            ),
            (
                conn_key("acme"),
                serde_json::json!({"id": "okta", "kind": "oidc", "client_secret": {"0": PEM}}),
                "t:acme:config/connection:okta#client_secret holds an object",
            ),
        ];
        for refuse_plaintext in [false, true] {
            let s = SealedStore::new(raw.clone(), Some(keys(K1)), refuse_plaintext);
            for (key, doc, expected) in &cases {
                let bytes = serde_json::to_vec(doc).unwrap();
                raw.put(key, &bytes, None).await.unwrap();
                let e = s.get(key).await.unwrap_err().to_string();
                assert!(e.contains("secrets.malformed") && e.contains(expected), "{e}");
                assert!(!e.contains("BEGIN"), "the value is never in the error: {e}");
                assert!(s.check(key, &bytes).is_err());
                assert_eq!(census(key, &bytes).malformed, 1, "{doc}");
                assert!(s.rewrap(key, &|_| None).await.is_err(), "{doc}");
                assert_eq!(raw.get(key).await.unwrap().unwrap(), bytes, "left as it was");
            }
        }
        // Parts left out (null or absent) are no secret and still read.
        let s = SealedStore::new(raw.clone(), Some(keys(K1)), true);
        let legit = br#"{"id":"okta","kind":"oidc","client_secret":null,"sp_next_key":null}"#;
        raw.put(&conn_key("acme"), legit, None).await.unwrap();
        assert_eq!(s.get(&conn_key("acme")).await.unwrap().unwrap(), legit.to_vec());
        assert_eq!(census(&conn_key("acme"), legit), FieldCensus::default());
    }

    /// A hook written before its URL's query had a field of its own: the
    /// query counts as plaintext, strict reading refuses it, and rewrap
    /// moves it to `url_query`, sealed, the URL read back the same.
    #[tokio::test]
    async fn a_hook_url_query_kept_in_its_url_is_sealed_by_rewrap() {
        let raw = raw_store();
        let k = Key::tenant("acme", "hooks", "user_migration");
        let legacy = br#"{"kind":"user_migration","url":"https://fn.example.net/api/x?code=abc123secret&x=1","secret":"s3cr3t-hook-secret-of-thirty-two-chars","timeout_ms":2000,"tenant_incarnation":"i1","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
        raw.put(&k, legacy, None).await.unwrap();
        assert_eq!(census(&k, legacy).plaintext, 2, "the secret and the URL's query");
        let strict = SealedStore::new(raw.clone(), Some(keys(K1)), true);
        let refused = strict.get(&k).await.unwrap_err().to_string();
        assert!(refused.contains("refuse_plaintext"), "{refused}");
        let s = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        assert_eq!(
            s.rewrap(&k, &|_| None).await.unwrap(),
            Rewrapped::Rewrapped { fields: 2 }
        );
        let stored = String::from_utf8(raw.get(&k).await.unwrap().unwrap()).unwrap();
        assert!(!stored.contains("abc123secret"), "{stored}");
        assert_eq!(census(&k, stored.as_bytes()).plaintext, 0);
        assert_eq!(census(&k, stored.as_bytes()).by_key.get("k1"), Some(&2));
        assert_eq!(s.rewrap(&k, &|_| None).await.unwrap(), Rewrapped::Current);
        let hook: crate::hooks::HookConfig = serde_json::from_slice(&strict.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(hook.url, "https://fn.example.net/api/x?code=abc123secret&x=1");
    }

    #[tokio::test]
    async fn legacy_plaintext_is_read_then_sealed_by_rewrap_and_rotation_moves_every_value() {
        let raw = raw_store();
        let k = Key::global("keys", "signing");
        let legacy = br#"{"active":{"private_pem":"A"},"next":{"private_pem":"N"},"retired":[{"private_pem":"R1"},{"private_pem":"R2"}]}"#;
        raw.put(&k, legacy, None).await.unwrap();
        let s1 = SealedStore::new(raw.clone(), Some(keys(K1)), false);
        assert_eq!(s1.get(&k).await.unwrap().unwrap(), legacy.to_vec());
        let strict = SealedStore::new(raw.clone(), Some(keys(K1)), true);
        assert!(strict
            .get(&k)
            .await
            .unwrap_err()
            .to_string()
            .contains("refuse_plaintext"));
        assert_eq!(
            s1.rewrap(&k, &|_| None).await.unwrap(),
            Rewrapped::Rewrapped { fields: 4 }
        );
        assert_eq!(s1.rewrap(&k, &|_| None).await.unwrap(), Rewrapped::Current);
        assert_eq!(
            census(&k, &raw.get(&k).await.unwrap().unwrap()).by_key.get("k1"),
            Some(&4)
        );
        assert!(strict.get(&k).await.is_ok());
        // Rotate: k2 current, k1 still opens; rewrap moves all to k2.
        let s2 = SealedStore::new(raw.clone(), Some(keys(K12)), false);
        assert!(s2.get(&k).await.is_ok());
        assert_eq!(
            s2.rewrap(&k, &|_| None).await.unwrap(),
            Rewrapped::Rewrapped { fields: 4 }
        );
        let c = census(&k, &raw.get(&k).await.unwrap().unwrap());
        assert_eq!((c.plaintext, c.by_key.get("k2"), c.by_key.len()), (0, Some(&4), 1));
        let back: Value = serde_json::from_slice(&s2.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(legacy).unwrap());
        // Once k1 is gone from the file, k2 alone reads everything.
        let only_k2 = "k2 = AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n";
        assert!(SealedStore::new(raw.clone(), Some(keys(only_k2)), false)
            .get(&k)
            .await
            .is_ok());
        // Without the key the envelopes do not open: a clear error.
        let e = SealedStore::new(raw, Some(keys(K1)), false).get(&k).await.unwrap_err();
        assert!(e.to_string().contains("secrets.unknown_key"), "{e}");
    }
}
