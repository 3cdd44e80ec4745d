//! Whole-store operations of the command line: `portcullis export` writes a
//! backup document, `portcullis import` restores one, `portcullis keys
//! rewrap` seals every secret at rest under the current master key and
//! `portcullis keys status` counts them by key id (`docs/BACKUP.md`,
//! `docs/SECRETS.md`).
//!
//! A backup holds every persistent record of the configuration exactly as
//! stored: tenants (with their incarnations and settings), connections
//! (with their SP key pairs and incarnations, declared-by-file markers,
//! migrated ACS aliases), verified-domain reservations and pending claims,
//! apps (client secret *hashes*), resource servers, API keys (hashes), the
//! users with their identity links (so every `sub` survives), tenants'
//! hook configurations (secrets sealed), and the token-signing keyset. Secrets stay sealed: a backup is no more readable
//! than the Redis it came from, and restoring it needs the master keys.
//! Transient state (SSO sessions, codes, refresh tokens, pending logins,
//! caches) and the audit log are not part of it.

use crate::directory;
use crate::ids::{ConnectionId, TenantId};
use crate::provider::{clients, resources};
use crate::secrets::sealed::{census, sealed_fields, Rewrapped, SealedStore};
use crate::store::{Key, SharedStore, StoreError, Write};
use crate::tenant::{self, Incarnation};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The `format` of a backup document.
pub const FORMAT: &str = "portcullis-backup";
/// The version of the backup format this build writes and reads.
pub const VERSION: u64 = 1;

/// A backup document (`portcullis export`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// The master key ids its sealed values need (the key file that
    /// restores it must hold them).
    pub sealed_with: Vec<String>,
    /// Secret fields in it that are not sealed (stored before encryption
    /// was configured; `portcullis keys rewrap` first to avoid any).
    pub plaintext_secrets: usize,
    /// Every record.
    pub records: Vec<Record>,
}

/// One stored record: its key (hash tag and name, without the deployment's
/// key prefix) and its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The key's hash tag (`t:acme:config`).
    pub tag: String,
    /// The key's name within the tag (`connection:okta`).
    pub name: String,
    /// The value.
    #[serde(flatten)]
    pub value: Payload,
}

/// A stored value as written in a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A JSON record (sealed fields stay envelopes).
    Json(Value),
    /// A short text value (an incarnation, a `sub`, a tenant id).
    Text(String),
    /// Anything else, base64.
    Base64(String),
    /// A set's members.
    Set(Vec<String>),
}

impl Payload {
    fn from_bytes(raw: Vec<u8>) -> Self {
        if let Ok(v) = serde_json::from_slice::<Value>(&raw) {
            if v.is_object() || v.is_array() {
                return Self::Json(v);
            }
        }
        match String::from_utf8(raw) {
            Ok(s) => Self::Text(s),
            Err(e) => Self::Base64(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        }
    }

    fn to_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Json(v) => serde_json::to_vec(v).map(Some).map_err(|e| e.to_string()),
            Self::Text(s) => Ok(Some(s.as_bytes().to_vec())),
            Self::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Some)
                .map_err(|_| "base64 value is not base64".to_owned()),
            Self::Set(_) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Value,
    Set,
}

/// The records [`inventory`] read to find other keys (a tenant's domains,
/// a connection's ACS alias, a user's identity link, a passkey handle), so
/// that an export writes exactly the bytes those keys were derived from: a
/// backup then always names only keys its own records lead to, which is
/// what a restore checks ([`exportable`]), even when a record changed
/// while the export ran.
type Read = BTreeMap<Key, Vec<u8>>;

/// `raw.get(key)`, kept in `read`.
async fn read_kept(raw: &SharedStore, key: &Key, read: &mut Read) -> Result<Option<Vec<u8>>, StoreError> {
    let value = raw.get(key).await?;
    if let Some(v) = &value {
        read.insert(key.clone(), v.clone());
    }
    Ok(value)
}

/// Every persistent key of the configuration, found through the indexes
/// (the store has no key scan, and Redis Cluster would make one per node).
/// The records it read on the way are kept in `read`.
async fn inventory(raw: &SharedStore, read: &mut Read) -> Result<BTreeMap<Key, Kind>, StoreError> {
    use Kind::{Set, Value};
    let mut out = BTreeMap::new();
    out.insert(crate::tokens::keyset_key(), Value);
    for (index, record) in [
        (clients::index_key(), clients::client_key as fn(&str) -> Key),
        (resources::index_key(), resources::resource_key as fn(&str) -> Key),
        (
            crate::admin::api_key_index_key(None),
            (|id: &str| crate::admin::api_key_record_key(None, id)) as fn(&str) -> Key,
        ),
    ] {
        for id in raw.set_members(&index).await? {
            out.insert(record(&id), Value);
        }
        out.insert(index, Set);
    }
    out.insert(tenant::files::origin_key(), Set);
    let tenants_index = tenant::index_key();
    for t in raw.set_members(&tenants_index).await? {
        let Ok(tid) = TenantId::parse(&t) else {
            tracing::warn!(reason = "backup.bad_id", tenant = %t, "a tenant index entry is not a tenant id; skipped");
            continue;
        };
        let tenant_key = tenant::tenant_key(&tid);
        if let Some(record) = read_kept(raw, &tenant_key, read).await? {
            if let Ok(record) = serde_json::from_slice::<tenant::Tenant>(&record) {
                for d in &record.domains {
                    out.insert(tenant::domain_key(d), Value);
                }
            }
        }
        out.insert(tenant_key, Value);
        out.insert(tenant::files::owner_key(&tid), Value);
        let connections = tenant::connections_key(&tid);
        for c in raw.set_members(&connections).await? {
            let Ok(cid) = ConnectionId::parse(&c) else {
                continue;
            };
            let key = tenant::connection_key(&tid, &cid);
            // Sealed fields are envelopes, which read as strings: no key needed.
            if let Some(record) = read_kept(raw, &key, read).await? {
                if let Some(path) = serde_json::from_slice::<crate::upstream::Connection>(&record)
                    .ok()
                    .as_ref()
                    .and_then(tenant::acs_alias_path)
                {
                    out.insert(tenant::acs_alias_key(&path), Value);
                }
            }
            out.insert(key, Value);
            out.insert(tenant::connection_incarnation_key(&tid, &cid), Value);
            out.insert(tenant::files::declared_key(&tid, &c), Value);
            // Local accounts of a local connection (codes, counters and
            // locks are transient and not backed up).
            let local_users = crate::local::index_key(&tid, &cid);
            for id in raw.set_members(&local_users).await? {
                out.insert(crate::local::user_key_by_id(&tid, &cid, &id), Value);
            }
            out.insert(local_users, Set);
        }
        out.insert(connections, Set);
        let claims = tenant::domains::claims_key(&tid);
        for d in raw.set_members(&claims).await? {
            out.insert(tenant::domains::claim_key(&tid, &d), Value);
        }
        out.insert(claims, Set);
        let api_keys = crate::admin::api_key_index_key(Some(&tid));
        for id in raw.set_members(&api_keys).await? {
            out.insert(crate::admin::api_key_record_key(Some(&tid), &id), Value);
        }
        out.insert(api_keys, Set);
        let rules = crate::provider::exchange::index_key(&tid);
        for id in raw.set_members(&rules).await? {
            out.insert(crate::provider::exchange::rule_key(&tid, &id), Value);
        }
        out.insert(rules, Set);
        let users = directory::index_key(&tid);
        for sub in raw.set_members(&users).await? {
            let user_key = directory::user_key(&tid, &sub);
            if let Some(record) = read_kept(raw, &user_key, read).await? {
                if let Ok(user) = serde_json::from_slice::<directory::User>(&record) {
                    let inc = Incarnation {
                        tenant: user.tenant_incarnation.clone(),
                        connection: user.connection_incarnation.clone(),
                    };
                    out.insert(
                        directory::link_key(&tid, &user.connection, &inc, &user.upstream_subject),
                        Value,
                    );
                }
            }
            out.insert(user_key, Value);
            out.insert(directory::disabled_key(&tid, &sub), Value);
            out.insert(crate::mfa::enrolment_key(&tid, &sub), Value);
            // Passkeys and the user-handle index of a passwordless sign-in.
            let passkeys = crate::mfa::passkey::passkeys_key(&tid, &sub);
            if let Some(record) = read_kept(raw, &passkeys, read).await? {
                if let Ok(p) = serde_json::from_slice::<crate::mfa::passkey::UserPasskeys>(&record) {
                    out.insert(crate::mfa::passkey::handle_key(&tid, &p.user_handle), Value);
                }
            }
            out.insert(passkeys, Value);
        }
        out.insert(users, Set);
        for kind in crate::hooks::HookKind::ALL {
            out.insert(crate::hooks::hook_key(&tid, kind), Value);
        }
    }
    out.insert(tenants_index, Set);
    Ok(out)
}

/// Reads every persistent record from `raw` (the store underneath the
/// sealing: values are copied exactly, still sealed) into a backup.
pub async fn export(raw: &SharedStore, now: DateTime<Utc>) -> Result<Backup, StoreError> {
    let mut records = Vec::new();
    let mut keys = BTreeSet::new();
    let mut plaintext = 0;
    let mut read = Read::new();
    for (key, kind) in inventory(raw, &mut read).await? {
        let value = match kind {
            Kind::Value => {
                let bytes = match read.remove(&key) {
                    Some(bytes) => bytes,
                    None => match raw.get(&key).await? {
                        Some(bytes) => bytes,
                        None => continue,
                    },
                };
                let c = census(&key, &bytes);
                plaintext += c.plaintext;
                keys.extend(c.by_key.into_keys());
                Payload::from_bytes(bytes)
            }
            Kind::Set => {
                let members = raw.set_members(&key).await?;
                if members.is_empty() {
                    continue;
                }
                Payload::Set(members)
            }
        };
        records.push(Record {
            tag: key.tag().to_owned(),
            name: key.name().to_owned(),
            value,
        });
    }
    Ok(Backup {
        format: FORMAT.to_owned(),
        version: VERSION,
        created_at: now,
        sealed_with: keys.into_iter().collect(),
        plaintext_secrets: plaintext,
        records,
    })
}

/// Whether a JSON document is a backup (by its `format`).
pub fn is_backup(doc: &Value) -> bool {
    doc.get("format").and_then(Value::as_str) == Some(FORMAT)
}

/// What a restore wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Values written.
    pub values: usize,
    /// Sets written.
    pub sets: usize,
    /// Tenants restored.
    pub tenants: usize,
}

/// Restores a backup into `store`. Everything is checked first and nothing
/// is written unless all of it is good: the format and version, every
/// record's key is one `portcullis export` writes for the records of the
/// backup ([`exportable`]: no session, code, counter or record without its
/// index entry can be planted through a crafted backup), every sealed
/// value opens with the configured master keys (so a wrong key file fails
/// before anything is written), and, unless `overwrite`, no record of the
/// backup exists yet (a restore goes into an empty store; `overwrite`
/// replaces what the backup holds and leaves the rest). Values are written
/// exactly as backed up (still sealed); each set in one atomic step, so an
/// index is never seen empty or half rebuilt. Only local accounts nobody
/// confirmed get a TTL: what is left of theirs at `now_unix`
/// ([`crate::local::restored_ttl`]).
pub async fn restore(store: &SealedStore, doc: Value, overwrite: bool, now_unix: i64) -> Result<Restored, Vec<String>> {
    let backup: Backup = serde_json::from_value(doc).map_err(|e| vec![format!("not a readable backup: {e}")])?;
    if backup.format != FORMAT || backup.version != VERSION {
        return Err(vec![format!(
            "backup format {} version {} is not {FORMAT} version {VERSION}",
            backup.format, backup.version
        )]);
    }
    let raw = store.raw();
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in backup.records.iter().enumerate() {
        let at = format!("records[{i}] ({}/{})", r.tag, r.name);
        if r.tag.is_empty() || r.name.is_empty() || r.tag.contains(['{', '}']) {
            problems.push(format!("{at}: not a key of ours"));
            continue;
        }
        let key = Key::new(r.tag.clone(), r.name.clone());
        if !seen.insert(key.clone()) {
            problems.push(format!("{at}: appears twice"));
            continue;
        }
        match unstamped(&r.value).to_bytes() {
            Ok(bytes) => parsed.push((at, key, bytes, &r.value)),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    let expected = exportable(&parsed, backup.created_at)
        .await
        .map_err(|e| vec![format!("the backup's records could not be listed: {e}")])?;
    let mut plan = Vec::new();
    for (at, key, bytes, value) in parsed {
        match (expected.get(&key), &bytes) {
            (None, _) => {
                problems.push(format!(
                    "{at}: not a record `portcullis export` writes (backup.unexpected_record): restores hold only the configuration records their indexes lead to"
                ));
                continue;
            }
            (Some(Kind::Set), Some(_)) => {
                problems.push(format!(
                    "{at}: a set in every backup, not a value (backup.unexpected_record)"
                ));
                continue;
            }
            (Some(Kind::Value), None) => {
                problems.push(format!(
                    "{at}: a value in every backup, not a set (backup.unexpected_record)"
                ));
                continue;
            }
            (Some(_), _) => {}
        }
        if let Some(refusal) = bytes.as_deref().and_then(|b| refused_connection(&key, b)) {
            problems.push(format!("{at}: {refusal}"));
            continue;
        }
        let exists = match &bytes {
            Some(b) => {
                if sealed_fields(&key).is_some() {
                    if let Err(e) = store.check(&key, b) {
                        problems.push(format!("{at}: {e}"));
                    }
                }
                raw.get(&key).await.map(|v| v.is_some())
            }
            None => raw.set_members(&key).await.map(|m| !m.is_empty()),
        };
        match exists {
            Ok(true) if !overwrite => problems.push(format!(
                "{at}: already exists in the store (restore into an empty store, or pass --overwrite)"
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{at}: {e}")),
        }
        plan.push((key, bytes, value));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut done = Restored::default();
    let fail = |e: StoreError| {
        vec![format!(
            "store failure after a partial restore (run it again with --overwrite): {e}"
        )]
    };
    for (key, bytes, value) in plan {
        match (bytes, value) {
            (Some(b), _) => {
                let ttl = if crate::local::is_account_key(&key) {
                    crate::local::restored_ttl(&b, now_unix)
                } else {
                    None
                };
                raw.put(&key, &b, ttl).await.map_err(fail)?;
                done.values += 1;
                if key.name() == "tenant" && key.tag().ends_with(":config") {
                    done.tenants += 1;
                }
            }
            (None, Payload::Set(members)) => {
                // The set replaced in one step: readers see the old members
                // or the new ones, and a failure leaves the old ones.
                let mut writes = Vec::with_capacity(members.len() + 1);
                writes.push(Write::Delete { key: &key });
                writes.extend(members.iter().map(|m| Write::SetAdd {
                    key: &key,
                    member: m.as_str(),
                    ttl: None,
                }));
                raw.write_many(&writes).await.map_err(fail)?;
                done.sets += 1;
            }
            (None, _) => {}
        }
    }
    Ok(done)
}

/// Why a connection record may not be restored as backed up, if it may
/// not: a SAML `metadata_url` carrying a user name or password
/// (`saml.metadata_url_credentials`), which set-up refuses and a refresh
/// never fetches, because the URL is shown, audited and logged as given.
/// A backup written before set-up refused them may hold one; the restore
/// refuses the whole document rather than write the record without them,
/// since it writes records exactly as backed up or not at all. The message
/// never repeats the URL (it holds a password).
fn refused_connection(key: &Key, bytes: &[u8]) -> Option<String> {
    if !key.tag().ends_with(":config") || !key.name().starts_with("connection:") {
        return None;
    }
    let record: Value = serde_json::from_slice(bytes).ok()?;
    if record.get("kind").and_then(Value::as_str) != Some("saml") {
        return None;
    }
    let url = url::Url::parse(record.get("metadata_url")?.as_str()?).ok()?;
    crate::upstream::saml::carries_credentials(&url).then(|| {
        format!(
            "the SAML connection's metadata_url carries a user name or password ({}): remove them from the record's \
             metadata_url in the backup (or the field, to keep the stored metadata without refreshes) and import again",
            crate::upstream::saml::METADATA_URL_CREDENTIALS
        )
    })
}

/// The keys `portcullis export` would write, and of which kind, were the
/// store to hold exactly `records`: [`inventory`] run over a scratch
/// in-memory copy of them. A backup names only such keys, because an
/// export writes the very bytes its inventory derived keys from
/// ([`Read`]); anything else was not written by `portcullis export`.
///
/// Two rounds, so that a record of the wrong type (a value where the
/// export has a set, or the reverse) is reported rather than failing the
/// listing: the sets alone give every set key (the inventory finds sets
/// through sets only), then the values are added except at those keys,
/// and the sets only at those keys.
async fn exportable(
    records: &[(String, Key, Option<Vec<u8>>, &Payload)],
    created_at: DateTime<Utc>,
) -> Result<BTreeMap<Key, Kind>, StoreError> {
    let sets = inventory(
        &scratch(records, created_at, |_, is_set| is_set).await?,
        &mut Read::new(),
    )
    .await?;
    let is_set_key = |key: &Key| sets.get(key) == Some(&Kind::Set);
    let both = scratch(records, created_at, |key, is_set| is_set == is_set_key(key)).await?;
    inventory(&both, &mut Read::new()).await
}

/// An in-memory store holding the `records` that `keep` keeps (given the
/// key and whether the record is a set).
async fn scratch(
    records: &[(String, Key, Option<Vec<u8>>, &Payload)],
    created_at: DateTime<Utc>,
    keep: impl Fn(&Key, bool) -> bool,
) -> Result<SharedStore, StoreError> {
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::ManualClock::at(created_at));
    let scratch: SharedStore = std::sync::Arc::new(crate::store::memory::MemoryStore::new(clock));
    for (_, key, bytes, value) in records {
        match (bytes, value) {
            (Some(b), _) if keep(key, false) => scratch.put(key, b, None).await?,
            (None, Payload::Set(members)) if keep(key, true) => {
                for m in members {
                    scratch.set_add(key, m, None).await?;
                }
            }
            _ => {}
        }
    }
    Ok(scratch)
}

/// `value` without a write stamp (`store::STAMP_FIELD`): a stamp names the
/// content it was drawn for, and a backup's content may have been edited
/// since, so a restored record is re-validated by its SHA-1 until its next
/// write stamps it afresh.
fn unstamped(value: &Payload) -> std::borrow::Cow<'_, Payload> {
    match value {
        Payload::Json(Value::Object(map)) if map.contains_key(crate::store::STAMP_FIELD) => {
            let mut map = map.clone();
            map.remove(crate::store::STAMP_FIELD);
            std::borrow::Cow::Owned(Payload::Json(Value::Object(map)))
        }
        other => std::borrow::Cow::Borrowed(other),
    }
}

/// What `keys rewrap` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Records sealed again (or for the first time).
    pub rewrapped: usize,
    /// Fields sealed again.
    pub fields: usize,
    /// Records already all under the current key.
    pub current: usize,
    /// Records that could not be rewrapped, with why.
    pub failed: Vec<String>,
}

/// How long a record [`rewrap`] writes again lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// Persistent (configuration).
    Persistent,
    /// A kept upstream session ([`upstream_ttl`]).
    UpstreamSession,
    /// A TOTP enrolment waiting for its first code ([`pending_ttl`]).
    PendingEnrolment,
}

/// The keys of every record with sealed fields: the persistent ones are
/// those of the backup inventory that [`sealed_fields`] names (so what is
/// backed up sealed and what is rewrapped cannot drift apart), then the
/// transient ones found through the users: kept upstream sessions and
/// pending TOTP enrolments. A waiting custom challenge (minutes long, keyed
/// by a hash no index lists) is not among them.
async fn sealed_records(raw: &SharedStore) -> Result<Vec<(Key, Lifetime)>, StoreError> {
    let mut out: Vec<(Key, Lifetime)> = inventory(raw, &mut Read::new())
        .await?
        .into_iter()
        .filter(|(key, kind)| *kind == Kind::Value && sealed_fields(key).is_some())
        .map(|(key, _)| (key, Lifetime::Persistent))
        .collect();
    for t in raw.set_members(&tenant::index_key()).await? {
        let Ok(tid) = TenantId::parse(&t) else {
            continue;
        };
        let mut sids = BTreeSet::new();
        for sub in raw.set_members(&directory::index_key(&tid)).await? {
            out.push((crate::mfa::pending_key(&tid, &sub), Lifetime::PendingEnrolment));
            sids.extend(
                raw.set_members(&crate::broker::session::user_sessions_key(&tid, &sub))
                    .await?,
            );
        }
        for sid in sids {
            out.push((
                crate::broker::upstream_refresh::record_key(tid.as_str(), &sid),
                Lifetime::UpstreamSession,
            ));
        }
    }
    Ok(out)
}

/// The remaining lifetime of a kept upstream session record: it is written
/// with `record_ttl` whenever `refreshed_at` is set.
fn upstream_ttl(raw: &[u8], record_ttl: Duration, now_unix: i64) -> Duration {
    remaining(raw, "refreshed_at", record_ttl, now_unix)
}

/// The remaining lifetime of a pending TOTP enrolment: written with
/// `mfa::ENROL_TTL` when it was started (`created_at`).
fn pending_ttl(raw: &[u8], now_unix: i64) -> Duration {
    remaining(raw, "created_at", crate::mfa::ENROL_TTL, now_unix)
}

/// `ttl` less the age of the record by its Unix-seconds field `since`, at
/// least a second.
fn remaining(raw: &[u8], since: &str, ttl: Duration, now_unix: i64) -> Duration {
    let since = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v.get(since).and_then(Value::as_i64))
        .unwrap_or(now_unix);
    let age = u64::try_from(now_unix.saturating_sub(since)).unwrap_or(0);
    ttl.saturating_sub(Duration::from_secs(age)).max(Duration::from_secs(1))
}

/// Seals every secret at rest under the current master key: every record
/// [`sealed_records`] lists (the signing keyset, connections, hooks, TOTP
/// enrolments, kept upstream sessions and pending enrolments, the last two
/// keeping their remaining lifetime). Idempotent; safe while gateways run (each record
/// is swapped with a compare-and-set against the bytes read).
pub async fn rewrap(
    store: &SealedStore,
    upstream_record_ttl: Duration,
    now_unix: i64,
) -> Result<RewrapReport, StoreError> {
    let mut report = RewrapReport::default();
    for (key, lifetime) in sealed_records(store.raw()).await? {
        let ttl = |raw: &[u8]| match lifetime {
            Lifetime::Persistent => None,
            Lifetime::UpstreamSession => Some(upstream_ttl(raw, upstream_record_ttl, now_unix)),
            Lifetime::PendingEnrolment => Some(pending_ttl(raw, now_unix)),
        };
        match store.rewrap(&key, &ttl).await {
            Ok(Rewrapped::Absent) => {}
            Ok(Rewrapped::Current) => report.current += 1,
            Ok(Rewrapped::Rewrapped { fields }) => {
                report.rewrapped += 1;
                report.fields += fields;
            }
            Err(e) => report.failed.push(format!("{}/{}: {e}", key.tag(), key.name())),
        }
    }
    Ok(report)
}

/// How the secrets at rest stand (`portcullis keys status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsStatus {
    /// Sealed fields by master key id.
    pub by_key: BTreeMap<String, usize>,
    /// Fields stored in plaintext.
    pub plaintext: usize,
    /// Records whose shape is refused (`secrets.malformed`: not JSON, or
    /// an array, number or the like where a sealed field or the object on
    /// its path belongs); every read of them fails.
    pub malformed: usize,
}

/// How the secrets at rest stand: sealed fields by key id, plaintext ones,
/// and misshapen records.
pub async fn status(raw: &SharedStore) -> Result<SecretsStatus, StoreError> {
    let mut out = SecretsStatus::default();
    for (key, _) in sealed_records(raw).await? {
        if let Some(bytes) = raw.get(&key).await? {
            let c = census(&key, &bytes);
            out.plaintext += c.plaintext;
            out.malformed += c.malformed;
            for (k, n) in c.by_key {
                *out.by_key.entry(k).or_default() += n;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;
    use serde_json::json;
    use std::sync::Arc;

    /// The tests' time (the stores' clock).
    const NOW: i64 = 1_700_000_000;

    fn store() -> SealedStore {
        store_on(ManualClock::at(DateTime::from_timestamp(NOW, 0).unwrap()))
    }

    fn store_on(clock: ManualClock) -> SealedStore {
        SealedStore::new(Arc::new(MemoryStore::new(Arc::new(clock))), None, false)
    }

    /// Neither the tenant `acme` nor the tenants index was written.
    async fn assert_no_tenant_written(s: &SealedStore) {
        let acme = tenant::tenant_key(&TenantId::parse("acme").unwrap());
        assert!(s.raw().get(&acme).await.unwrap().is_none());
        assert!(s.raw().set_members(&tenant::index_key()).await.unwrap().is_empty());
    }

    fn backup(records: Value) -> Value {
        json!({"format": FORMAT, "version": VERSION, "created_at": "2026-11-30T17:00:00Z",
               "sealed_with": [], "plaintext_secrets": 0, "records": records})
    }

    /// What a real export of one tenant with one user holds.
    fn configuration() -> Vec<Value> {
        vec![
            json!({"tag": "g:tenants", "name": "index", "set": ["acme"]}),
            json!({"tag": "t:acme:config", "name": "tenant", "json": {"id": "acme"}}),
            json!({"tag": "t:acme:users", "name": "index", "set": ["u1"]}),
            json!({"tag": "t:acme:users", "name": "user:u1", "json": {"sub": "u1"}}),
        ]
    }

    /// A crafted backup cannot plant what `portcullis export` never writes:
    /// a browser session, a code (transient records, written here without
    /// their TTL), a platform API key no index lists (invisible to the admin
    /// API, yet a record), a user no index lists, or a value where the
    /// export has a set. Each is a problem naming its record, and nothing
    /// at all is written.
    #[tokio::test]
    async fn restore_refuses_keys_the_export_never_writes() {
        let s = store();
        let crafted = [
            json!({"tag": "g:session:x", "name": "record", "json": {"sub": "u1"}}),
            json!({"tag": "t:acme:codes", "name": "code:x", "json": {"client_id": "app"}}),
            json!({"tag": "g:api_keys", "name": "key:planted", "json": {"hash": "h", "scopes": ["admin"]}}),
            json!({"tag": "t:acme:users", "name": "user:u2", "json": {"sub": "u2"}}),
            json!({"tag": "t:acme:config", "name": "connections", "json": {"okta": true}}),
            json!({"tag": "t:evil{x}:config", "name": "tenant", "json": {}}),
        ];
        let mut records = configuration();
        records.extend(crafted.iter().cloned());
        let problems = restore(&s, backup(Value::Array(records)), false, NOW)
            .await
            .unwrap_err();
        assert_eq!(problems.len(), crafted.len(), "{problems:#?}");
        for (i, r) in crafted.iter().enumerate() {
            let at = format!("({}/{})", r["tag"].as_str().unwrap(), r["name"].as_str().unwrap());
            let p = problems
                .iter()
                .find(|p| p.contains(&at))
                .unwrap_or_else(|| panic!("{at}: {problems:#?}"));
            let reason = if i < 5 {
                "backup.unexpected_record"
            } else {
                "not a key of ours"
            };
            assert!(p.contains(reason), "{p}");
        }
        // Nothing written, not even the good records.
        assert_no_tenant_written(&s).await;
        assert!(s
            .raw()
            .get(&Key::global("api_keys", "key:planted"))
            .await
            .unwrap()
            .is_none());

        // The configuration alone restores; again with --overwrite, each set
        // is replaced as a whole.
        let done = restore(&s, backup(Value::Array(configuration())), false, NOW)
            .await
            .unwrap();
        assert_eq!((done.tenants, done.values, done.sets), (1, 2, 2));
        s.raw().set_add(&tenant::index_key(), "stale", None).await.unwrap();
        restore(&s, backup(Value::Array(configuration())), true, NOW)
            .await
            .unwrap();
        assert_eq!(s.raw().set_members(&tenant::index_key()).await.unwrap(), ["acme"]);
    }

    /// A key the export derives from a record's content (a tenant's domain
    /// reservation) is restored with that record; one no record leads to
    /// is refused.
    #[tokio::test]
    async fn a_backup_restores_the_keys_its_records_lead_to() {
        let s = store();
        let mut records = configuration();
        records[1] = json!({"tag": "t:acme:config", "name": "tenant", "json": {"id": "acme", "name": "Acme",
            "domains": ["acme.test"], "created_at": "2026-11-30T17:00:00Z"}});
        records.push(json!({"tag": "g:domains", "name": "acme.test", "text": "acme"}));
        let mut with_other = records.clone();
        with_other.push(json!({"tag": "g:domains", "name": "other.test", "text": "acme"}));
        let problems = restore(&s, backup(Value::Array(with_other)), false, NOW)
            .await
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("(g:domains/other.test)") && problems[0].contains("backup.unexpected_record"));
        let done = restore(&s, backup(Value::Array(records)), false, NOW).await.unwrap();
        assert_eq!(done.values, 3);
        assert!(s.raw().get(&tenant::domain_key("acme.test")).await.unwrap().is_some());
    }

    /// A SAML connection whose `metadata_url` carries a user name or a
    /// password (written before set-up refused them) is not restored: the
    /// whole backup is refused with `saml.metadata_url_credentials` naming
    /// the record, never the password, and nothing at all is written. The
    /// same backup with the credentials taken out of the URL restores.
    #[tokio::test]
    async fn a_connection_whose_metadata_url_carries_credentials_is_not_restored() {
        let s = store();
        let with_url = |url: &str| {
            let mut records = configuration();
            records.extend([
                json!({"tag": "t:acme:config", "name": "connections", "set": ["okta"]}),
                json!({"tag": "t:acme:config", "name": "connection:okta", "json": {"id": "okta",
                    "tenant": "acme", "kind": "saml", "metadata_url": url, "metadata_xml": "<md/>"}}),
            ]);
            backup(Value::Array(records))
        };
        for url in [
            "https://svc:backup-s3cret@idp.acme.test/metadata",
            "https://svc@idp.acme.test/metadata",
            "https://:backup-s3cret@idp.acme.test/metadata",
        ] {
            let problems = restore(&s, with_url(url), false, NOW).await.unwrap_err();
            assert_eq!(problems.len(), 1, "{url}: {problems:#?}");
            assert!(
                problems[0].contains("(t:acme:config/connection:okta)")
                    && problems[0].contains("saml.metadata_url_credentials"),
                "{}",
                problems[0]
            );
            assert!(
                !problems[0].contains("backup-s3cret") && !problems[0].contains("svc"),
                "{}",
                problems[0]
            );
            assert_no_tenant_written(&s).await;
        }
        let done = restore(&s, with_url("https://idp.acme.test/metadata"), false, NOW)
            .await
            .unwrap();
        assert_eq!((done.tenants, done.values, done.sets), (1, 3, 3));
    }

    /// A backup keeps no TTL: a restored local account nobody confirmed
    /// keeps only what was left of its `UNCONFIRMED_TTL` since its last
    /// write (one signed up two days before the restore goes five days
    /// after it), while a confirmed account, and an unconfirmed one an admin
    /// keeps disabled, stay.
    #[tokio::test]
    async fn a_restored_account_nobody_confirmed_still_expires() {
        let clock = ManualClock::at(DateTime::from_timestamp(NOW, 0).unwrap());
        let s = store_on(clock.clone());
        let days = |n: i64| n * 24 * 3600;
        let account = |id: &str, status: &str, disabled: bool| {
            json!({"tag": "t:acme:local", "name": format!("user:pw:{id}"), "json": {
                "email": format!("{id}@acme.test"), "subject": format!("local|{id}"), "status": status,
                "disabled": disabled, "password_hash": "$argon2id$x", "created_at": NOW - days(2),
                "updated_at": NOW - days(2)}})
        };
        let mut records = configuration();
        records.extend([
            json!({"tag": "t:acme:config", "name": "connections", "set": ["pw"]}),
            json!({"tag": "t:acme:local", "name": "users:pw", "set": ["una", "val", "wes"]}),
            account("una", "UNCONFIRMED", false),
            account("val", "CONFIRMED", false),
            account("wes", "UNCONFIRMED", true),
        ]);
        restore(&s, backup(Value::Array(records)), false, NOW).await.unwrap();
        let kept = |id: &'static str| {
            let s = &s;
            async move {
                s.raw()
                    .get(&Key::tenant("acme", "local", format!("user:pw:{id}")))
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        assert!(kept("una").await && kept("val").await && kept("wes").await);
        let left = chrono::Duration::from_std(crate::local::UNCONFIRMED_TTL).unwrap() - chrono::Duration::days(2);
        clock.advance(left - chrono::Duration::minutes(1));
        assert!(kept("una").await, "kept for what was left of its TTL");
        clock.advance(chrono::Duration::minutes(2));
        assert!(!kept("una").await, "the account nobody confirmed expired");
        assert!(kept("val").await, "a confirmed account stays");
        assert!(kept("wes").await, "an account an admin keeps disabled stays");
    }
}
