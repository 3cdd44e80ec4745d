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
use crate::store::{Key, SharedStore, StoreError};
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

/// Every persistent key of the configuration, found through the indexes
/// (the store has no key scan, and Redis Cluster would make one per node).
async fn inventory(raw: &SharedStore) -> Result<BTreeMap<Key, Kind>, StoreError> {
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
        if let Some(record) = raw.get(&tenant_key).await? {
            if let Ok(record) = serde_json::from_slice::<tenant::Tenant>(&record) {
                for d in &record.domains {
                    out.insert(tenant::domain_key(d), Value);
                }
            }
        }
        out.insert(tenant_key, Value);
        let connections = tenant::connections_key(&tid);
        for c in raw.set_members(&connections).await? {
            let Ok(cid) = ConnectionId::parse(&c) else {
                continue;
            };
            let key = tenant::connection_key(&tid, &cid);
            // Sealed fields are envelopes, which read as strings: no key needed.
            if let Some(record) = raw.get(&key).await? {
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
            if let Some(record) = raw.get(&user_key).await? {
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
            if let Some(record) = raw.get(&passkeys).await? {
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
    for (key, kind) in inventory(raw).await? {
        let value = match kind {
            Kind::Value => {
                let Some(bytes) = raw.get(&key).await? else {
                    continue;
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
/// record's key, every sealed value opens with the configured master keys
/// (so a wrong key file fails before anything is written), and, unless
/// `overwrite`, no record of the backup exists yet (a restore goes into an
/// empty store; `overwrite` replaces what the backup holds and leaves the
/// rest). Values are written exactly as backed up (still sealed).
pub async fn restore(store: &SealedStore, doc: Value, overwrite: bool) -> Result<Restored, Vec<String>> {
    let backup: Backup = serde_json::from_value(doc).map_err(|e| vec![format!("not a readable backup: {e}")])?;
    if backup.format != FORMAT || backup.version != VERSION {
        return Err(vec![format!(
            "backup format {} version {} is not {FORMAT} version {VERSION}",
            backup.format, backup.version
        )]);
    }
    let raw = store.raw();
    let mut problems = Vec::new();
    let mut plan = Vec::new();
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
        let bytes = match unstamped(&r.value).to_bytes() {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
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
        plan.push((key, bytes, &r.value));
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
                raw.put(&key, &b, None).await.map_err(fail)?;
                done.values += 1;
                if key.name() == "tenant" && key.tag().ends_with(":config") {
                    done.tenants += 1;
                }
            }
            (None, Payload::Set(members)) => {
                if overwrite {
                    raw.delete(&key).await.map_err(fail)?;
                }
                for m in members {
                    raw.set_add(&key, m, None).await.map_err(fail)?;
                }
                done.sets += 1;
            }
            (None, _) => {}
        }
    }
    Ok(done)
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

/// The keys of every record with sealed fields, each with how to compute
/// the TTL to keep when it is written again.
async fn sealed_records(raw: &SharedStore) -> Result<Vec<(Key, bool)>, StoreError> {
    let mut out = vec![(crate::tokens::keyset_key(), false)];
    for t in raw.set_members(&tenant::index_key()).await? {
        let Ok(tid) = TenantId::parse(&t) else {
            continue;
        };
        for c in raw.set_members(&tenant::connections_key(&tid)).await? {
            if let Ok(cid) = ConnectionId::parse(&c) {
                out.push((tenant::connection_key(&tid, &cid), false));
            }
        }
        for kind in crate::hooks::HookKind::ALL {
            out.push((crate::hooks::hook_key(&tid, kind), false));
        }
        let mut sids = BTreeSet::new();
        for sub in raw.set_members(&directory::index_key(&tid)).await? {
            sids.extend(
                raw.set_members(&crate::broker::session::user_sessions_key(&tid, &sub))
                    .await?,
            );
        }
        for sid in sids {
            out.push((crate::broker::upstream_refresh::record_key(tid.as_str(), &sid), true));
        }
    }
    Ok(out)
}

/// The remaining lifetime of a kept upstream session record: it is written
/// with `record_ttl` whenever `refreshed_at` is set.
fn upstream_ttl(raw: &[u8], record_ttl: Duration, now_unix: i64) -> Duration {
    let refreshed_at = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v.get("refreshed_at").and_then(Value::as_i64))
        .unwrap_or(now_unix);
    let age = u64::try_from(now_unix.saturating_sub(refreshed_at)).unwrap_or(0);
    record_ttl
        .saturating_sub(Duration::from_secs(age))
        .max(Duration::from_secs(1))
}

/// Seals every secret at rest under the current master key: the signing
/// keyset, every connection, every kept upstream session (keeping its
/// remaining lifetime). Idempotent; safe while gateways run (each record
/// is swapped with a compare-and-set against the bytes read).
pub async fn rewrap(
    store: &SealedStore,
    upstream_record_ttl: Duration,
    now_unix: i64,
) -> Result<RewrapReport, StoreError> {
    let mut report = RewrapReport::default();
    for (key, transient) in sealed_records(store.raw()).await? {
        let ttl = |raw: &[u8]| transient.then(|| upstream_ttl(raw, upstream_record_ttl, now_unix));
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

/// How the secrets at rest stand: sealed fields by key id, and plaintext ones.
pub async fn status(raw: &SharedStore) -> Result<(BTreeMap<String, usize>, usize), StoreError> {
    let mut by_key = BTreeMap::new();
    let mut plaintext = 0;
    for (key, _) in sealed_records(raw).await? {
        if let Some(bytes) = raw.get(&key).await? {
            let c = census(&key, &bytes);
            plaintext += c.plaintext;
            for (k, n) in c.by_key {
                *by_key.entry(k).or_default() += n;
            }
        }
    }
    Ok((by_key, plaintext))
}
